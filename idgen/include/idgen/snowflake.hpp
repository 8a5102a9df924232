// Snowflake-style 64-bit ids: time-ordered, unique per (layout, worker), made
// without coordination.
//
// An id packs three fields below a zero sign bit: a timestamp counted in ticks
// since the layout's epoch, a worker id, and a sequence number within the tick.
// A Layout is plain data describing the widths, the epoch and the tick; the
// presets are Twitter's snowflake, Sony's sonyflake and our `standard` default
// (41/10/12 bits, 1 ms ticks, epoch 2026-01-01T00:00:00Z). Any other layout is a
// spec string, see Layout::parse.
//
//   idgen::Generator generator(idgen::Layout::standard(), /*worker_id=*/7);
//   std::uint64_t id = generator.next();          // strictly increasing
//   idgen::Parts parts = idgen::decode(generator.layout(), id);
//
// Uniqueness holds as long as no two live generators share a layout and a
// worker id; giving each process its own worker id is the caller's job.
//
// Thread safety: Layout, decode and compose are plain values and functions.
// Generator::next() may be called from any number of threads at once; it is a
// single compare-and-swap on one 64-bit word except when it must wait (the
// tick's sequence is used up, or the clock went backwards) or extend the state
// file's reservation (once per write-ahead step).
//
// Errors: invalid input throws idgen::Error with ErrorCode::invalid_argument;
// a clock that moved back beyond the ClockPolicy throws
// ClockMovedBackwardsError; an expired layout throws LayoutExhaustedError (see
// idgen/error.hpp). A generator never returns an id it has returned before.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "idgen/clock.hpp"
#include "idgen/error.hpp"

namespace spdlog {
class logger;
}

namespace idgen {

namespace detail {
class StateFile;
}

// Where the worker and sequence fields sit below the timestamp.
enum class FieldOrder {
  time_worker_sequence,  // snowflake, standard: time | worker | sequence
  time_sequence_worker,  // sonyflake:           time | sequence | worker
};

// Bit widths, epoch and tick of an id. A value type; compare with ==.
struct Layout {
  std::string name = "standard";  // preset name, or "custom"
  unsigned timestamp_bits = 41;
  unsigned worker_bits = 10;
  unsigned sequence_bits = 12;
  std::int64_t epoch_unix_ms = 1767225600000;  // 2026-01-01T00:00:00Z
  std::int64_t tick_ms = 1;
  FieldOrder order = FieldOrder::time_worker_sequence;

  // Twitter: 41/10/12 bits, 1 ms ticks, epoch 1288834974657 (2010-11-04).
  static Layout snowflake();
  // Sony: 39-bit time in 10 ms ticks, 8-bit sequence, 16-bit machine id,
  // epoch 2014-09-01T00:00:00Z, field order time | sequence | machine.
  static Layout sonyflake();
  // Our default: 41/10/12 bits, 1 ms ticks, epoch 2026-01-01T00:00:00Z.
  static Layout standard();

  // A preset name ("standard" or "default", "snowflake" or "twitter",
  // "sonyflake") or a spec of comma-separated key=value pairs:
  //   time=41,worker=10,seq=12[,epoch=2026-01-01T00:00:00Z][,tick=1ms][,order=tws|tsw]
  // epoch is ISO-8601 or Unix milliseconds (default: standard's), tick is
  // "<n>ms" or "<n>s" (default 1ms), order tws = time|worker|seq (default),
  // tsw = time|seq|worker. The three widths must sum to 63.
  // Throws idgen::Error with the reason when the text is not a valid layout.
  static Layout parse(std::string_view name_or_spec);

  // Throws idgen::Error with the reason if the fields do not form a valid layout.
  void validate() const;

  // The spec string that parses back to this layout.
  std::string spec() const;

  std::uint32_t max_worker_id() const noexcept;
  std::uint64_t max_sequence() const noexcept;
  // Ids one worker can issue per second: 2^sequence_bits per tick.
  double max_ids_per_second() const noexcept;
  // First Unix millisecond the timestamp field cannot represent.
  std::int64_t expires_unix_ms() const noexcept;

  bool operator==(const Layout&) const = default;
};

// The fields of one id. timestamp_unix_ms is the start of the id's tick.
struct Parts {
  std::int64_t timestamp_unix_ms = 0;
  std::uint32_t worker = 0;
  std::uint64_t sequence = 0;

  bool operator==(const Parts&) const = default;
};

// Splits an id. Throws idgen::Error if the sign bit is set.
Parts decode(const Layout& layout, std::uint64_t id);
// Builds an id. Throws idgen::Error naming the field that does not fit (a time
// before the epoch, after expiry or not on a tick boundary, a worker or
// sequence too large). decode(layout, compose(layout, parts)) == parts.
std::uint64_t compose(const Layout& layout, const Parts& parts);

// What next() does when the clock reads earlier than the last id's timestamp.
enum class ClockPolicy {
  wait,    // wait for the clock to catch up, at most max_backward_wait, else fail
  fail,    // throw ClockMovedBackwardsError at once
  borrow,  // keep counting from the last timestamp (a logical clock) until the clock catches up
};

struct GeneratorOptions {
  ClockPolicy clock_policy = ClockPolicy::wait;
  std::chrono::milliseconds max_backward_wait{5};
  // Optional persisted high-water mark. The generator reserves time ahead in
  // steps of `state_write_ahead` and records the reservation (atomically, with
  // fsync) before issuing ids in it; a restart reads it back and never issues
  // an id at or below anything issued before, even after the clock was rolled
  // back. Restarting inside the reserved window waits out the rest of it (or,
  // with ClockPolicy::borrow, continues from it); a restart with the clock
  // further back than one step is a rollback and follows the policy. The file
  // is locked while the generator lives: one generator per state file.
  std::optional<std::filesystem::path> state_file;
  std::chrono::milliseconds state_write_ahead{250};
  // A high-water mark kept by the caller instead of a state file (for
  // example in a database, next to the lease of the worker id): every id
  // issued before with this worker id has a timestamp below it. The generator
  // issues ids at or after it, and waits for the clock like a restart from a
  // state file (at most state_write_ahead, else ClockMovedBackwardsError).
  // When both are given, the later mark counts.
  std::optional<std::int64_t> issued_below_unix_ms;
  // Time source; null means SystemClock::shared().
  std::shared_ptr<Clock> clock;
  // Receives the "layout expires in less than 5 years" warning; null means
  // nothing is logged. The library never registers loggers globally.
  std::shared_ptr<spdlog::logger> logger;
};

// Issues strictly increasing, never repeating ids for one (layout, worker).
// Thread-safe; not copyable or movable (threads hold references to it).
class Generator {
 public:
  // Throws idgen::Error if the layout is invalid or the worker id is outside
  // 0..layout.max_worker_id(), LayoutExhaustedError if the layout has expired,
  // ClockMovedBackwardsError if the state file proves the clock was rolled back
  // beyond the policy, and Error(ErrorCode::io) if the state file cannot be
  // used. Logs a warning when the layout expires in less than 5 years.
  Generator(Layout layout, std::uint32_t worker_id, GeneratorOptions options = {});
  ~Generator() noexcept;
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // The next id. Waits for the next tick when this tick's sequence is used up.
  // Throws ClockMovedBackwardsError or LayoutExhaustedError (see above), or
  // Error(ErrorCode::io) if extending the state file's reservation fails.
  std::uint64_t next();

  const Layout& layout() const noexcept { return layout_; }
  std::uint32_t worker_id() const noexcept { return worker_id_; }

 private:
  std::int64_t tick_of(std::int64_t unix_ms) const noexcept;
  std::int64_t tick_start_ms(std::int64_t tick) const noexcept;
  void wait_for_tick_after(std::int64_t tick) const;
  void wait_for_clock_to_reach(std::int64_t tick, std::int64_t now_ms) const;
  // Whether the clock reached target_ms before the (real-time) deadline.
  bool wait_for_clock(std::int64_t target_ms, std::chrono::steady_clock::time_point deadline) const;
  void recover_from_state_file();
  // Continues after `mark_ms` (see GeneratorOptions::issued_below_unix_ms);
  // `source` names where the mark came from, for errors.
  void resume_after(std::int64_t mark_ms, const std::string& source);
  void reserve_through(std::uint64_t tick);
  std::uint64_t to_id(std::uint64_t state) const noexcept;

  Layout layout_;
  std::uint32_t worker_id_;
  GeneratorOptions options_;
  std::shared_ptr<Clock> clock_;
  std::uint64_t max_tick_;
  std::uint64_t sequence_mask_;
  std::uint64_t worker_part_;  // worker id already shifted into place
  unsigned time_shift_;
  unsigned sequence_shift_;

  // tick << sequence_bits | sequence of the last id issued: the whole mutable
  // state, on its own cache line.
  alignas(64) std::atomic<std::uint64_t> state_;
  // First tick not covered by the state file's reservation (max when unused).
  alignas(64) std::atomic<std::uint64_t> reserved_until_tick_;
  std::mutex reserve_mutex_;
  std::unique_ptr<detail::StateFile> state_file_;
};

}  // namespace idgen
