#pragma once

#include <spdlog/logger.h>
#include <spdlog/sinks/null_sink.h>

#include <cstdint>
#include <memory>

#include "outbox/clock.hpp"

namespace outbox::detail {

inline std::shared_ptr<spdlog::logger> logger_or_null(std::shared_ptr<spdlog::logger> logger) {
  if (logger) return logger;
  return std::make_shared<spdlog::logger>("outbox",
                                          std::make_shared<spdlog::sinks::null_sink_mt>());
}

inline std::int64_t to_ms(TimePoint time) {
  return time.time_since_epoch().count();
}
inline TimePoint from_ms(std::int64_t ms) {
  return TimePoint(std::chrono::milliseconds(ms));
}

}  // namespace outbox::detail
