#include "metrics/log_fields.hpp"

#include <spdlog/sinks/null_sink.h>

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

std::shared_ptr<spdlog::logger> null_logger(const std::string& name) {
  return std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::null_sink_mt>());
}

}  // namespace metrics
