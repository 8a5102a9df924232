#include "broker/store.hpp"

namespace broker {

std::string_view to_string(AppendStatus status) noexcept {
  switch (status) {
    case AppendStatus::stored: return "stored";
    case AppendStatus::duplicate: return "duplicate";
    case AppendStatus::conflict: return "conflict";
    case AppendStatus::rejected: return "rejected";
  }
  return "unknown";
}

}  // namespace broker
