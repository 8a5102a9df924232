#include "outbox/error.hpp"

namespace outbox {

std::string_view to_string(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::usage:
      return "usage";
    case ErrorKind::database:
      return "database";
    case ErrorKind::io:
      return "io";
    case ErrorKind::protocol:
      return "protocol";
  }
  return "unknown";
}

}  // namespace outbox
