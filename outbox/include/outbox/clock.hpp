// Time as the outbox library sees it: milliseconds since the Unix epoch, read
// through an injectable time source so that leases, retries and expiry can be
// tested without waiting.
#pragma once

#include <chrono>
#include <functional>

namespace outbox {

using TimePoint = std::chrono::sys_time<std::chrono::milliseconds>;

// Returns the current wall time. Must be callable from the threads that use
// the object it is given to. (Not a clock object like idgen::Clock: a plain
// function, so that a test passes a lambda.)
using TimeSource = std::function<TimePoint()>;

// The wall clock (std::chrono::system_clock, truncated to milliseconds).
inline TimePoint system_now() {
  return std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now());
}

inline TimeSource system_time_source() {
  return &system_now;
}

// The names of earlier releases.
using Clock [[deprecated("renamed outbox::TimeSource")]] = TimeSource;
[[deprecated("renamed outbox::system_time_source")]] inline TimeSource system_clock() {
  return system_time_source();
}

}  // namespace outbox
