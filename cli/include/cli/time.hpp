// Points in time as the programs print them: UTC, ISO 8601, milliseconds,
// "2026-11-25T15:04:05.123Z" (status output, --json fields, JSON log lines).
// Pure function; safe from any thread.
#pragma once

#include <chrono>
#include <string>

namespace cli {

// Any time point on the system clock, cut to the millisecond below (times
// before 1970 too).
std::string format_utc_time(std::chrono::sys_time<std::chrono::milliseconds> time);

template <typename Duration>
std::string format_utc_time(std::chrono::sys_time<Duration> time) {
  return format_utc_time(std::chrono::floor<std::chrono::milliseconds>(time));
}

}  // namespace cli
