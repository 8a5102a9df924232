#include "idgen/clock.hpp"

#include <cstdio>

#include "idgen/error.hpp"

namespace idgen {
namespace {

std::int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::int64_t system_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Floor division, correct for negative numerators.
std::int64_t floor_div(std::int64_t value, std::int64_t divisor) noexcept {
  std::int64_t quotient = value / divisor;
  if ((value % divisor != 0) && ((value < 0) != (divisor < 0))) --quotient;
  return quotient;
}

// Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian).
std::int64_t days_from_civil(std::int64_t year, unsigned month, unsigned day) noexcept {
  year -= month <= 2 ? 1 : 0;
  const std::int64_t era = floor_div(year, 400);
  const auto year_of_era = static_cast<unsigned>(year - era * 400);
  const unsigned day_of_year = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
  const unsigned day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  return era * 146097 + static_cast<std::int64_t>(day_of_era) - 719468;
}

struct Civil {
  std::int64_t year;
  unsigned month;
  unsigned day;
};

Civil civil_from_days(std::int64_t days) noexcept {
  days += 719468;
  const std::int64_t era = floor_div(days, 146097);
  const auto day_of_era = static_cast<unsigned>(days - era * 146097);
  const unsigned year_of_era =
      (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
  const unsigned day_of_year =
      day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
  const unsigned shifted_month = (5 * day_of_year + 2) / 153;
  const unsigned day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
  const unsigned month = shifted_month < 10 ? shifted_month + 3 : shifted_month - 9;
  const std::int64_t year =
      static_cast<std::int64_t>(year_of_era) + era * 400 + (month <= 2 ? 1 : 0);
  return {year, month, day};
}

bool is_leap(std::int64_t year) noexcept {
  return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
}

unsigned days_in_month(std::int64_t year, unsigned month) noexcept {
  static constexpr unsigned lengths[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return month == 2 && is_leap(year) ? 29 : lengths[month - 1];
}

// Reads exactly `width` digits at `pos`.
bool read_digits(std::string_view text, std::size_t& pos, std::size_t width, unsigned& value) {
  if (pos + width > text.size()) return false;
  value = 0;
  for (std::size_t i = 0; i < width; ++i) {
    const char c = text[pos + i];
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  pos += width;
  return true;
}

}  // namespace

SystemClock::SystemClock(std::chrono::milliseconds backward_tolerance,
                         std::chrono::milliseconds resync_interval)
    : backward_tolerance_ns_(
          std::chrono::duration_cast<std::chrono::nanoseconds>(backward_tolerance).count()),
      resync_interval_ns_(
          std::chrono::duration_cast<std::chrono::nanoseconds>(resync_interval).count()),
      offset_ns_(system_now_ns() - steady_now_ns()),
      next_resync_steady_ns_(steady_now_ns() + resync_interval_ns_) {}

std::shared_ptr<SystemClock> SystemClock::shared() {
  static const auto instance = std::make_shared<SystemClock>();
  return instance;
}

std::int64_t SystemClock::now_unix_ns() const noexcept {
  const std::int64_t steady = steady_now_ns();
  if (steady >= next_resync_steady_ns_.load(std::memory_order_relaxed)) resync(steady);
  return steady + offset_ns_.load(std::memory_order_relaxed);
}

std::int64_t SystemClock::now_unix_ms() const noexcept {
  return floor_div(now_unix_ns(), 1'000'000);
}

void SystemClock::resync(std::int64_t steady_ns) const noexcept {
  std::int64_t due = next_resync_steady_ns_.load(std::memory_order_relaxed);
  // One caller per interval does the work; the others keep the old offset.
  if (steady_ns < due || !next_resync_steady_ns_.compare_exchange_strong(
                             due, steady_ns + resync_interval_ns_, std::memory_order_relaxed)) {
    return;
  }
  const std::int64_t wall_offset = system_now_ns() - steady_now_ns();
  const std::int64_t current = offset_ns_.load(std::memory_order_relaxed);
  const std::int64_t drift = wall_offset - current;
  // Forward: follow at once (time only moves on). Backward: absorb small steps
  // so ids keep their pace; follow big ones and let the generator's policy act.
  if (drift > 1'000'000 || drift < -backward_tolerance_ns_) {
    offset_ns_.store(wall_offset, std::memory_order_relaxed);
  }
}

std::string format_utc(std::int64_t unix_ms) {
  const std::int64_t days = floor_div(unix_ms, 86'400'000);
  const std::int64_t ms_of_day = unix_ms - days * 86'400'000;
  const Civil civil = civil_from_days(days);
  const auto hours = static_cast<int>(ms_of_day / 3'600'000);
  const auto minutes = static_cast<int>(ms_of_day / 60'000 % 60);
  const auto seconds = static_cast<int>(ms_of_day / 1000 % 60);
  const auto millis = static_cast<int>(ms_of_day % 1000);
  char buffer[64];
  const char* year_format = (civil.year >= 0 && civil.year <= 9999) ? "%04lld" : "%+lld";
  int length =
      std::snprintf(buffer, sizeof buffer, year_format, static_cast<long long>(civil.year));
  std::snprintf(buffer + length, sizeof buffer - static_cast<std::size_t>(length),
                "-%02u-%02uT%02d:%02d:%02d.%03dZ", civil.month, civil.day, hours, minutes, seconds,
                millis);
  return buffer;
}

std::int64_t parse_utc(std::string_view text) {
  const auto fail = [text](const char* why) {
    return Error("invalid time '" + std::string(text) + "': " + why +
                 " (expected ISO-8601 like 2026-01-01T00:00:00.000Z)");
  };
  std::size_t pos = 0;
  unsigned year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0, millis = 0;
  if (!read_digits(text, pos, 4, year)) throw fail("bad year");
  if (pos >= text.size() || text[pos++] != '-' || !read_digits(text, pos, 2, month)) {
    throw fail("bad month");
  }
  if (pos >= text.size() || text[pos++] != '-' || !read_digits(text, pos, 2, day)) {
    throw fail("bad day");
  }
  if (month < 1 || month > 12) throw fail("month out of range");
  if (day < 1 || day > days_in_month(year, month)) throw fail("day out of range");
  std::int64_t offset_minutes = 0;
  if (pos < text.size()) {
    if (text[pos] != 'T' && text[pos] != 't' && text[pos] != ' ')
      throw fail("expected 'T' after the date");
    ++pos;
    if (!read_digits(text, pos, 2, hour)) throw fail("bad hour");
    if (pos >= text.size() || text[pos++] != ':' || !read_digits(text, pos, 2, minute)) {
      throw fail("bad minute");
    }
    if (pos >= text.size() || text[pos++] != ':' || !read_digits(text, pos, 2, second)) {
      throw fail("bad second");
    }
    if (hour > 23 || minute > 59 || second > 59) throw fail("time of day out of range");
    if (pos < text.size() && (text[pos] == '.' || text[pos] == ',')) {
      ++pos;
      std::size_t digits = 0;
      while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
        if (digits == 3) throw fail("more than millisecond precision");
        millis = millis * 10 + static_cast<unsigned>(text[pos] - '0');
        ++digits;
        ++pos;
      }
      if (digits == 0) throw fail("missing fraction digits");
      for (; digits < 3; ++digits) millis *= 10;
    }
    if (pos >= text.size()) throw fail("missing time zone ('Z' or +HH:MM)");
    const char zone = text[pos++];
    if (zone == 'Z' || zone == 'z') {
      // UTC
    } else if (zone == '+' || zone == '-') {
      unsigned offset_hours = 0, offset_mins = 0;
      if (!read_digits(text, pos, 2, offset_hours)) throw fail("bad zone offset");
      if (pos < text.size() && text[pos] == ':') ++pos;
      if (!read_digits(text, pos, 2, offset_mins)) throw fail("bad zone offset");
      if (offset_hours > 23 || offset_mins > 59) throw fail("zone offset out of range");
      offset_minutes = static_cast<std::int64_t>(offset_hours) * 60 + offset_mins;
      if (zone == '-') offset_minutes = -offset_minutes;
    } else {
      throw fail("bad time zone");
    }
    if (pos != text.size()) throw fail("unexpected text after the time zone");
  }
  const std::int64_t days = days_from_civil(year, month, day);
  return days * 86'400'000 + static_cast<std::int64_t>(hour) * 3'600'000 +
         static_cast<std::int64_t>(minute) * 60'000 + static_cast<std::int64_t>(second) * 1000 +
         millis - offset_minutes * 60'000;
}

}  // namespace idgen
