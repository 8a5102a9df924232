#pragma once

#include <cstdint>
#include <memory>

#include "outbox/clock.hpp"
#include "outbox/null_logger.hpp"

namespace outbox::detail {

inline std::int64_t to_ms(TimePoint time) {
  return time.time_since_epoch().count();
}
inline TimePoint from_ms(std::int64_t ms) {
  return TimePoint(std::chrono::milliseconds(ms));
}

}  // namespace outbox::detail
