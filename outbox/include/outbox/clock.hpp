// Time as the outbox library sees it: milliseconds since the Unix epoch, read
// through an injectable clock so that leases, retries and expiry can be tested
// without waiting.
#pragma once

#include <chrono>
#include <functional>

namespace outbox {

using TimePoint = std::chrono::sys_time<std::chrono::milliseconds>;

// Returns the current time. Must be callable from the threads that use the
// object it is given to.
using Clock = std::function<TimePoint()>;

// The wall clock (std::chrono::system_clock, truncated to milliseconds).
inline TimePoint system_now() {
  return std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now());
}

inline Clock system_clock() {
  return &system_now;
}

}  // namespace outbox
