#include <algorithm>
#include <limits>
#include <thread>

#include <spdlog/logger.h>

#include "idgen/snowflake.hpp"
#include "state_file.hpp"

namespace idgen {
namespace {

constexpr std::uint64_t no_reservation = std::numeric_limits<std::uint64_t>::max();
constexpr std::int64_t five_years_ms = 5LL * 36525 * 86'400'000 / 100;

std::string describe(const Layout& layout) {
  return layout.name == "custom" ? layout.spec() : layout.name;
}

}  // namespace

Generator::Generator(Layout layout, std::uint32_t worker_id, GeneratorOptions options)
    : layout_(std::move(layout)),
      worker_id_(worker_id),
      options_(std::move(options)),
      clock_(options_.clock ? options_.clock : SystemClock::shared()),
      state_(0),
      reserved_until_tick_(no_reservation) {
  layout_.validate();
  if (worker_id_ > layout_.max_worker_id()) {
    throw Error("worker id " + std::to_string(worker_id_) + " is out of range 0.." +
                std::to_string(layout_.max_worker_id()) + " for layout " + describe(layout_));
  }
  if (options_.max_backward_wait.count() < 0) throw Error("max_backward_wait must not be negative");
  if (options_.state_write_ahead.count() < 1)
    throw Error("state_write_ahead must be at least 1 ms");
  max_tick_ = (std::uint64_t{1} << layout_.timestamp_bits) - 1;
  sequence_mask_ = layout_.max_sequence();
  time_shift_ = layout_.worker_bits + layout_.sequence_bits;
  if (layout_.order == FieldOrder::time_worker_sequence) {
    worker_part_ = std::uint64_t{worker_id_} << layout_.sequence_bits;
    sequence_shift_ = 0;
  } else {
    worker_part_ = worker_id_;
    sequence_shift_ = layout_.worker_bits;
  }

  const std::int64_t now_ms = clock_->now_unix_ms();
  const std::int64_t expires_ms = layout_.expires_unix_ms();
  if (now_ms >= expires_ms) {
    throw LayoutExhaustedError(
        "layout " + describe(layout_) + " expired on " + format_utc(expires_ms) + ": its " +
        std::to_string(layout_.timestamp_bits) + " timestamp bits cannot hold the current time");
  }
  if (now_ms < layout_.epoch_unix_ms) {
    throw Error("the clock reads " + format_utc(now_ms) + ", before the epoch " +
                format_utc(layout_.epoch_unix_ms) + " of layout " + describe(layout_));
  }
  if (options_.logger && expires_ms - now_ms < five_years_ms) {
    options_.logger->warn("layout {} runs out of timestamp bits on {} ({} days from now)",
                          describe(layout_), format_utc(expires_ms),
                          (expires_ms - now_ms) / 86'400'000);
  }
  if (options_.state_file) recover_from_state_file();
  if (options_.issued_below_unix_ms)
    resume_after(*options_.issued_below_unix_ms, "the caller's high-water mark");
}

Generator::~Generator() noexcept {
  if (!state_file_) return;
  // Shrink the reservation to what was really issued, so a quick restart does
  // not have to wait out the rest of the write-ahead window.
  try {
    const std::uint64_t last_tick = state_.load(std::memory_order_acquire) >> layout_.sequence_bits;
    const std::uint64_t reserved = reserved_until_tick_.load(std::memory_order_acquire);
    if (last_tick + 1 < reserved)
      state_file_->write(tick_start_ms(static_cast<std::int64_t>(last_tick) + 1));
  } catch (...) {
    // The larger reservation on disk is still correct, only less tight.
  }
}

void Generator::recover_from_state_file() {
  state_file_ = std::make_unique<detail::StateFile>(*options_.state_file);
  reserved_until_tick_.store(0, std::memory_order_relaxed);
  const std::optional<std::int64_t> mark_ms = state_file_->read();
  if (mark_ms) resume_after(*mark_ms, "state file " + state_file_->path().string());
}

void Generator::resume_after(std::int64_t mark_ms, const std::string& source) {
  // Every id issued before has a tick below the first tick at or after the mark.
  std::int64_t mark_tick = tick_of(mark_ms);
  if (tick_start_ms(mark_tick) < mark_ms) ++mark_tick;
  if (mark_tick <= 0) return;
  if (static_cast<std::uint64_t>(mark_tick) > max_tick_) {
    throw LayoutExhaustedError(source + " records ids up to the end of layout " +
                               describe(layout_));
  }
  // Resume just below the mark: the next id is at the mark's tick or later.
  const std::uint64_t resume_state =
      (static_cast<std::uint64_t>(mark_tick) << layout_.sequence_bits) - 1;
  if (resume_state <= state_.load(std::memory_order_relaxed)) return;  // an earlier mark was later
  state_.store(resume_state, std::memory_order_relaxed);
  if (state_file_) {
    reserved_until_tick_.store(std::max(reserved_until_tick_.load(std::memory_order_relaxed),
                                        static_cast<std::uint64_t>(mark_tick)),
                               std::memory_order_relaxed);
  }

  const std::int64_t now_ms = clock_->now_unix_ms();
  const std::int64_t gap_ms = mark_ms - now_ms;
  if (gap_ms <= 0 || options_.clock_policy == ClockPolicy::borrow) return;
  // A restart inside the write-ahead window is normal: wait it out. Further
  // back than that, the clock was rolled back.
  const std::int64_t allowed_ms = std::max<std::int64_t>(options_.state_write_ahead.count(),
                                                         options_.max_backward_wait.count());
  if (gap_ms > allowed_ms) {
    throw ClockMovedBackwardsError(
        "clock moved backwards: " + source + " shows ids issued up to " + format_utc(mark_ms) +
        " but the clock reads " + format_utc(now_ms) + " (" + std::to_string(gap_ms) +
        " ms earlier); refusing to reissue them (use the borrow clock policy to continue)");
  }
  // The deadline only guards against a clock that has stopped; it is generous
  // so a busy machine does not turn a normal restart into a failure.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(gap_ms) +
                        options_.max_backward_wait + std::chrono::seconds(1);
  if (!wait_for_clock(mark_ms, deadline)) {
    throw ClockMovedBackwardsError("clock did not reach the mark " + format_utc(mark_ms) + " of " +
                                   source + " in time");
  }
}

std::int64_t Generator::tick_of(std::int64_t unix_ms) const noexcept {
  const std::int64_t since_epoch = unix_ms - layout_.epoch_unix_ms;
  if (layout_.tick_ms == 1) return since_epoch;
  std::int64_t tick = since_epoch / layout_.tick_ms;
  if (since_epoch % layout_.tick_ms < 0) --tick;
  return tick;
}

std::int64_t Generator::tick_start_ms(std::int64_t tick) const noexcept {
  return layout_.epoch_unix_ms + tick * layout_.tick_ms;
}

std::uint64_t Generator::to_id(std::uint64_t state) const noexcept {
  const std::uint64_t tick = state >> layout_.sequence_bits;
  const std::uint64_t sequence = state & sequence_mask_;
  return tick << time_shift_ | worker_part_ | sequence << sequence_shift_;
}

std::uint64_t Generator::next() {
  for (;;) {
    // State first, clock second: a clock read older than the state (this
    // thread was preempted while others issued ids) would look like the clock
    // moving backwards.
    std::uint64_t previous = state_.load(std::memory_order_acquire);
    const std::int64_t now_ms = clock_->now_unix_ms();
    const std::int64_t now_tick = tick_of(now_ms);
    const auto previous_tick = static_cast<std::int64_t>(previous >> layout_.sequence_bits);
    std::uint64_t candidate = 0;
    if (now_tick > previous_tick) {
      if (static_cast<std::uint64_t>(now_tick) > max_tick_) {
        throw LayoutExhaustedError("layout " + describe(layout_) + " expired on " +
                                   format_utc(layout_.expires_unix_ms()) +
                                   ": no timestamp left to issue ids");
      }
      candidate = static_cast<std::uint64_t>(now_tick) << layout_.sequence_bits;
    } else if (now_tick == previous_tick) {
      if ((previous & sequence_mask_) == sequence_mask_) {
        wait_for_tick_after(previous_tick);
        continue;
      }
      candidate = previous + 1;
    } else {
      switch (options_.clock_policy) {
        case ClockPolicy::fail:
          throw ClockMovedBackwardsError(
              "clock moved backwards by " + std::to_string(tick_start_ms(previous_tick) - now_ms) +
              " ms (clock policy fail): it reads " + format_utc(now_ms) + ", the last id is from " +
              format_utc(tick_start_ms(previous_tick)));
        case ClockPolicy::wait:
          wait_for_clock_to_reach(previous_tick, now_ms);
          continue;
        case ClockPolicy::borrow:
          // A logical clock: keep counting from the last id, carrying into the
          // next tick when the sequence is used up.
          candidate = previous + 1;
          if ((candidate >> layout_.sequence_bits) > max_tick_) {
            throw LayoutExhaustedError("layout " + describe(layout_) +
                                       " has no timestamp left to borrow");
          }
          break;
      }
    }
    const std::uint64_t candidate_tick = candidate >> layout_.sequence_bits;
    if (candidate_tick >= reserved_until_tick_.load(std::memory_order_acquire)) {
      reserve_through(candidate_tick);
    }
    bool won = false;
    while (!(won = state_.compare_exchange_weak(previous, candidate, std::memory_order_acq_rel,
                                                std::memory_order_acquire))) {
      // Lost a race. If the winner stayed in our tick with sequence to spare,
      // take the next one without reading the clock again; otherwise start over.
      if ((previous >> layout_.sequence_bits) != candidate_tick ||
          (previous & sequence_mask_) == sequence_mask_) {
        break;
      }
      candidate = previous + 1;
    }
    if (won) return to_id(candidate);
  }
}

void Generator::wait_for_tick_after(std::int64_t tick) const {
  // At most one tick. Sleep until the tick ends rather than spin or yield: on a
  // busy machine a thread that yields loses its CPU for whole scheduler slices,
  // while a sleeper is woken promptly, and a 4096-id tick needs only a fraction
  // of its millisecond. A clock that steps back meanwhile ends the wait too;
  // next() then applies the clock policy.
  const std::int64_t next_tick_ns = tick_start_ms(tick + 1) * 1'000'000;
  while (tick_of(clock_->now_unix_ms()) == tick) {
    const std::int64_t remaining_ns = next_tick_ns - clock_->now_unix_ns();
    std::this_thread::sleep_for(std::chrono::nanoseconds(
        std::clamp<std::int64_t>(remaining_ns, 10'000, layout_.tick_ms * 1'000'000)));
  }
}

void Generator::wait_for_clock_to_reach(std::int64_t tick, std::int64_t now_ms) const {
  const std::int64_t target_ms = tick_start_ms(tick);
  const std::int64_t behind_ms = target_ms - now_ms;
  const std::int64_t allowed_ms = options_.max_backward_wait.count();
  const auto fail = [&](const std::string& detail) {
    return ClockMovedBackwardsError("clock moved backwards by " + std::to_string(behind_ms) +
                                    " ms, " + detail + ": it reads " + format_utc(now_ms) +
                                    ", the last id is from " + format_utc(target_ms));
  };
  if (behind_ms > allowed_ms) {
    throw fail("more than the " + std::to_string(allowed_ms) + " ms the wait clock policy allows");
  }
  const auto deadline =
      std::chrono::steady_clock::now() + options_.max_backward_wait + std::chrono::milliseconds(1);
  if (!wait_for_clock(target_ms, deadline)) {
    throw fail("and did not catch up within the " + std::to_string(allowed_ms) +
               " ms the wait clock policy allows");
  }
}

bool Generator::wait_for_clock(std::int64_t target_ms,
                               std::chrono::steady_clock::time_point deadline) const {
  for (;;) {
    if (clock_->now_unix_ms() >= target_ms) return true;
    if (std::chrono::steady_clock::now() > deadline) {
      // Look once more: this thread may have lost its CPU past the deadline
      // while the clock caught up.
      return clock_->now_unix_ms() >= target_ms;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void Generator::reserve_through(std::uint64_t tick) {
  std::lock_guard lock(reserve_mutex_);
  if (tick < reserved_until_tick_.load(std::memory_order_relaxed)) return;
  const auto step_ticks = static_cast<std::uint64_t>(
      std::max<std::int64_t>(1, options_.state_write_ahead.count() / layout_.tick_ms));
  const std::uint64_t until = std::min(tick + step_ticks, max_tick_ + 1);
  state_file_->write(tick_start_ms(static_cast<std::int64_t>(until)));
  reserved_until_tick_.store(until, std::memory_order_release);
}

}  // namespace idgen
