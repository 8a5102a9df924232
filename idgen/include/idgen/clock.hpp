// Clocks for the id generators, and UTC time as text.
//
// Generators read wall time through an idgen::Clock so that tests (yours and
// ours) can move time by hand with ManualClock. The default SystemClock reads
// the wall clock once and then advances it with the steady clock, so small NTP
// steps are absorbed; it re-reads the wall clock every second and follows it
// when the difference exceeds a tolerance (forward at once, backward only for
// steps larger than the tolerance, which the generator's ClockPolicy handles).
// After an absorbed backward step its readings stay ahead of the wall clock by
// that step (at most the tolerance) until a later forward step; a tolerance of
// zero follows every step and leaves each one to the ClockPolicy.
//
// Thread safety: all clocks here are safe to call from many threads at once.
// Ownership: generators hold clocks by std::shared_ptr; share one freely.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace idgen {

// Milliseconds since 1970-01-01T00:00:00Z.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::int64_t now_unix_ms() const noexcept = 0;
  // The same time with finer resolution, used only to sleep until the next
  // tick; clocks without it report whole milliseconds.
  virtual std::int64_t now_unix_ns() const noexcept { return now_unix_ms() * 1'000'000; }
};

// Wall time anchored on the steady clock (see the header comment).
class SystemClock final : public Clock {
 public:
  // `backward_tolerance`: backward steps of the wall clock up to this size are
  // ignored (ids keep their steady pace); larger ones are followed.
  explicit SystemClock(
      std::chrono::milliseconds backward_tolerance = std::chrono::milliseconds(1000),
      std::chrono::milliseconds resync_interval = std::chrono::milliseconds(1000));
  std::int64_t now_unix_ms() const noexcept override;
  std::int64_t now_unix_ns() const noexcept override;

  // The process-wide default instance.
  static std::shared_ptr<SystemClock> shared();

 private:
  void resync(std::int64_t steady_ns) const noexcept;

  std::int64_t backward_tolerance_ns_;
  std::int64_t resync_interval_ns_;
  // wall time minus steady time, in nanoseconds
  mutable std::atomic<std::int64_t> offset_ns_;
  mutable std::atomic<std::int64_t> next_resync_steady_ns_;
};

// A clock that only moves when told to. For tests.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(std::int64_t unix_ms) : now_ms_(unix_ms) {}
  std::int64_t now_unix_ms() const noexcept override {
    reads_.fetch_add(1, std::memory_order_relaxed);
    return now_ms_.load(std::memory_order_acquire);
  }
  void set(std::int64_t unix_ms) noexcept { now_ms_.store(unix_ms, std::memory_order_release); }
  void advance(std::int64_t delta_ms) noexcept {
    now_ms_.fetch_add(delta_ms, std::memory_order_acq_rel);
  }
  // How many times the clock has been read: lets a test see that a generator
  // is waiting for time to move.
  std::uint64_t reads() const noexcept { return reads_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::int64_t> now_ms_;
  mutable std::atomic<std::uint64_t> reads_{0};
};

// "2026-01-01T00:00:00.000Z" (always UTC, always milliseconds).
// Years outside 0000..9999 are written with a sign, e.g. "+12000-01-01T...".
std::string format_utc(std::int64_t unix_ms);

// Parses an ISO-8601 date-time: "YYYY-MM-DDTHH:MM:SS[.fff]" followed by "Z" or
// an offset "+HH:MM"/"-HH:MM" (a space may replace the "T"; a date alone means
// midnight UTC). At most millisecond precision. Throws idgen::Error naming the
// problem.
std::int64_t parse_utc(std::string_view text);

}  // namespace idgen
