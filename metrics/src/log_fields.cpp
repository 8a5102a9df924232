#include "metrics/log_fields.hpp"

namespace metrics {
namespace {

thread_local std::span<const LogField> current_fields;

}  // namespace

LogFields::LogFields(std::span<const LogField> fields) noexcept : previous_(current_fields) {
  current_fields = fields;
}

LogFields::~LogFields() noexcept {
  current_fields = previous_;
}

std::span<const LogField> LogFields::current() noexcept {
  return current_fields;
}

}  // namespace metrics
