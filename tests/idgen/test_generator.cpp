#include <algorithm>
#include <atomic>
#include <future>
#include <set>
#include <sstream>
#include <thread>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>
#include <catch2/catch.hpp>

#include "idgen/snowflake.hpp"
#include "test_support.hpp"

using idgen::ClockPolicy;
using idgen::Generator;
using idgen::GeneratorOptions;
using idgen::Layout;
using idgen::ManualClock;

namespace {

constexpr auto deadline = std::chrono::seconds(10);

GeneratorOptions manual(const std::shared_ptr<ManualClock>& clock,
                        ClockPolicy policy = ClockPolicy::wait) {
  GeneratorOptions options;
  options.clock = clock;
  options.clock_policy = policy;
  return options;
}

std::int64_t start_ms() {
  return Layout::standard().epoch_unix_ms + 1'000'000;
}

// Waits until `generator_call` is visibly polling the clock (it keeps reading
// it without returning), so the test can move time knowing the call waits.
void wait_until_polling(const ManualClock& clock, const std::future<std::uint64_t>& pending) {
  const auto reads_before = clock.reads();
  REQUIRE(test_support::wait_until([&] { return clock.reads() > reads_before + 20; }, deadline,
                                   std::chrono::milliseconds(1)));
  REQUIRE(pending.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);
}

}  // namespace

TEST_CASE("ids from one generator strictly increase and carry the worker id",
          "[idgen][generator]") {
  Generator generator(Layout::standard(), 77);
  std::uint64_t previous = 0;
  for (int i = 0; i < 200'000; ++i) {
    const std::uint64_t id = generator.next();
    REQUIRE(id > previous);
    previous = id;
  }
  const auto parts = idgen::decode(generator.layout(), previous);
  CHECK(parts.worker == 77);
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  CHECK(std::abs(parts.timestamp_unix_ms - now) < 5'000);
}

TEST_CASE("threads sharing a generator never get the same id", "[idgen][generator]") {
  Generator generator(Layout::standard(), 3);
  constexpr int thread_count = 4;
  constexpr int per_thread = 250'000;
  std::vector<std::vector<std::uint64_t>> results(thread_count);
  std::vector<std::thread> threads;
  for (int t = 0; t < thread_count; ++t) {
    threads.emplace_back([&generator, &ids = results[static_cast<std::size_t>(t)]] {
      ids.reserve(per_thread);
      for (int i = 0; i < per_thread; ++i) ids.push_back(generator.next());
    });
  }
  for (auto& thread : threads) thread.join();
  std::vector<std::uint64_t> all;
  for (const auto& ids : results) {
    CHECK(std::is_sorted(ids.begin(), ids.end()));
    all.insert(all.end(), ids.begin(), ids.end());
  }
  std::sort(all.begin(), all.end());
  CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
  CHECK(all.size() == std::size_t{thread_count} * per_thread);
}

TEST_CASE("threads preempted between calls never see a false clock step",
          "[idgen][generator][clock]") {
  // A thread that read the clock and then lost its CPU while other threads
  // issued later ids must not take that for the clock moving backwards. This
  // clock stalls after taking some of its readings, as a preempted thread would.
  class StallingClock final : public idgen::Clock {
   public:
    std::int64_t now_unix_ms() const noexcept override {
      const std::int64_t reading = idgen::SystemClock::shared()->now_unix_ms();
      if (calls_.fetch_add(1, std::memory_order_relaxed) % 512 == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(3));  // simulated preemption
      }
      return reading;
    }

   private:
    mutable std::atomic<std::uint64_t> calls_{0};
  };
  idgen::GeneratorOptions options;
  options.clock_policy = ClockPolicy::fail;
  options.clock = std::make_shared<StallingClock>();
  Generator generator(Layout::standard(), 2, options);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      try {
        for (int i = 0; i < 20'000; ++i) generator.next();
      } catch (const idgen::ClockMovedBackwardsError&) {
        ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(failures.load() == 0);
}

TEST_CASE("a worker id outside the layout's range is refused, naming the range",
          "[idgen][generator]") {
  CHECK_THROWS_WITH(Generator(Layout::standard(), 1024), Catch::Contains("out of range 0..1023"));
  CHECK_THROWS_WITH(Generator(Layout::sonyflake(), 65536), Catch::Contains("0..65535"));
  CHECK_NOTHROW(Generator(Layout::sonyflake(), 65535));
}

TEST_CASE("a used-up sequence waits for the next tick", "[idgen][generator]") {
  auto clock = std::make_shared<ManualClock>(start_ms());
  const Layout layout = Layout::parse("time=51,worker=10,seq=2");  // 4 ids per tick
  Generator generator(layout, 5, manual(clock));
  for (std::uint64_t sequence = 0; sequence < 4; ++sequence) {
    const auto parts = idgen::decode(layout, generator.next());
    CHECK(parts.timestamp_unix_ms == start_ms());
    CHECK(parts.sequence == sequence);
  }
  auto pending = std::async(std::launch::async, [&] { return generator.next(); });
  wait_until_polling(*clock, pending);
  clock->advance(1);
  REQUIRE(pending.wait_for(deadline) == std::future_status::ready);
  const auto parts = idgen::decode(layout, pending.get());
  CHECK(parts.timestamp_unix_ms == start_ms() + 1);
  CHECK(parts.sequence == 0);
  CHECK(parts.worker == 5);
}

TEST_CASE("clock rollback, policy wait: waits for the clock to catch up within the bound",
          "[idgen][generator][clock]") {
  auto clock = std::make_shared<ManualClock>(start_ms());
  auto options = manual(clock, ClockPolicy::wait);
  options.max_backward_wait = std::chrono::seconds(30);  // the test moves the clock, not real time
  Generator generator(Layout::standard(), 1, options);
  const std::uint64_t before = generator.next();
  clock->advance(-3);
  auto pending = std::async(std::launch::async, [&] { return generator.next(); });
  wait_until_polling(*clock, pending);
  clock->advance(3);
  REQUIRE(pending.wait_for(deadline) == std::future_status::ready);
  CHECK(pending.get() > before);
}

TEST_CASE("clock rollback, policy wait: fails beyond the bound", "[idgen][generator][clock]") {
  auto clock = std::make_shared<ManualClock>(start_ms());
  Generator generator(Layout::standard(), 1, manual(clock, ClockPolicy::wait));
  generator.next();

  SECTION("a step back larger than the bound fails at once") {
    clock->advance(-100);
    try {
      generator.next();
      FAIL("no error");
    } catch (const idgen::ClockMovedBackwardsError& error) {
      CHECK(error.code() == idgen::ErrorCode::clock_moved_backwards);
      CHECK_THAT(error.what(), Catch::Contains("100 ms") && Catch::Contains("5 ms"));
    }
  }
  SECTION("a small step back that the clock does not recover from in time fails") {
    clock->advance(-3);
    CHECK_THROWS_AS(generator.next(), idgen::ClockMovedBackwardsError);
  }
  SECTION("after the failure the generator works again once the clock is back") {
    clock->advance(-100);
    CHECK_THROWS_AS(generator.next(), idgen::ClockMovedBackwardsError);
    clock->advance(101);
    CHECK_NOTHROW(generator.next());
  }
}

TEST_CASE("clock rollback, policy fail: throws at once", "[idgen][generator][clock]") {
  auto clock = std::make_shared<ManualClock>(start_ms());
  Generator generator(Layout::standard(), 1, manual(clock, ClockPolicy::fail));
  const std::uint64_t before = generator.next();
  clock->advance(-1);
  CHECK_THROWS_AS(generator.next(), idgen::ClockMovedBackwardsError);
  clock->advance(1);
  CHECK(generator.next() > before);  // same tick as before: the sequence goes on
}

TEST_CASE("clock rollback, policy borrow: keeps counting from the last timestamp",
          "[idgen][generator][clock]") {
  auto clock = std::make_shared<ManualClock>(start_ms());
  const Layout layout = Layout::parse("time=51,worker=10,seq=2");  // 4 ids per tick
  Generator generator(layout, 9, manual(clock, ClockPolicy::borrow));
  std::uint64_t previous = generator.next();
  clock->advance(-1000);
  // 10 ids while the clock is a second behind: a logical clock, carrying into
  // later ticks when a tick's sequence is used up.
  for (int i = 0; i < 10; ++i) {
    const std::uint64_t id = generator.next();
    REQUIRE(id > previous);
    previous = id;
  }
  auto parts = idgen::decode(layout, previous);
  CHECK(parts.timestamp_unix_ms == start_ms() + 2);
  CHECK(parts.worker == 9);
  // When the wall clock passes the borrowed time, ids follow it again.
  clock->set(start_ms() + 50);
  const std::uint64_t caught_up = generator.next();
  CHECK(caught_up > previous);
  parts = idgen::decode(layout, caught_up);
  CHECK(parts.timestamp_unix_ms == start_ms() + 50);
  CHECK(parts.sequence == 0);
}

TEST_CASE("an expired layout cannot make a generator", "[idgen][generator][expiry]") {
  // 2^20 ms after 1970: expired long ago.
  const Layout layout = Layout::parse("time=20,worker=10,seq=33,epoch=0");
  try {
    Generator generator(layout, 0);
    FAIL("no error");
  } catch (const idgen::LayoutExhaustedError& error) {
    CHECK(error.code() == idgen::ErrorCode::layout_exhausted);
    CHECK_THAT(error.what(), Catch::Contains("expired"));
  }
}

TEST_CASE("less than 5 years left logs a warning, and running out fails next()",
          "[idgen][generator][expiry]") {
  const Layout layout = Layout::standard();
  auto clock = std::make_shared<ManualClock>(layout.expires_unix_ms() - 365LL * 86'400'000);
  std::ostringstream log;
  auto options = manual(clock);
  options.logger = std::make_shared<spdlog::logger>(
      "test", std::make_shared<spdlog::sinks::ostream_sink_st>(log));
  Generator generator(layout, 0, options);
  CHECK_THAT(log.str(), Catch::Contains("runs out of timestamp bits on 2095-09-07"));
  CHECK_NOTHROW(generator.next());
  clock->set(layout.expires_unix_ms());
  CHECK_THROWS_AS(generator.next(), idgen::LayoutExhaustedError);

  std::ostringstream quiet_log;
  options.logger = std::make_shared<spdlog::logger>(
      "quiet", std::make_shared<spdlog::sinks::ostream_sink_st>(quiet_log));
  options.clock = std::make_shared<ManualClock>(layout.expires_unix_ms() - 6 * 366LL * 86'400'000);
  Generator healthy(layout, 0, options);
  CHECK(quiet_log.str().empty());
}

TEST_CASE("a clock before the layout's epoch is refused", "[idgen][generator]") {
  auto clock = std::make_shared<ManualClock>(Layout::standard().epoch_unix_ms - 1);
  CHECK_THROWS_WITH(Generator(Layout::standard(), 0, manual(clock)),
                    Catch::Contains("before the epoch"));
}

TEST_CASE("the system clock follows the wall clock", "[idgen][clock]") {
  const auto wall = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
  CHECK(std::abs(idgen::SystemClock::shared()->now_unix_ms() - wall) < 2'000);
  idgen::SystemClock clock;
  std::int64_t previous = clock.now_unix_ms();
  for (int i = 0; i < 100'000; ++i) {
    const std::int64_t now = clock.now_unix_ms();
    REQUIRE(now >= previous);
    previous = now;
  }
}

TEST_CASE("a caller's high-water mark: ids start at it, a mark far ahead is a clock rollback",
          "[idgen][generator][clock]") {
  auto clock = std::make_shared<ManualClock>(start_ms());
  auto options = manual(clock);
  const Layout layout = Layout::standard();

  SECTION("a mark in the past changes nothing") {
    options.issued_below_unix_ms = start_ms() - 1000;
    Generator generator(layout, 3, options);
    CHECK(idgen::decode(layout, generator.next()).timestamp_unix_ms == start_ms());
  }
  SECTION("a mark a little ahead: the generator waits for it") {
    options.issued_below_unix_ms = start_ms() + 200;
    options.state_write_ahead = std::chrono::milliseconds(1000);
    auto pending = std::async(std::launch::async, [&] {
      Generator generator(layout, 3, options);
      return generator.next();
    });
    wait_until_polling(*clock, pending);
    clock->advance(200);
    REQUIRE(pending.wait_for(deadline) == std::future_status::ready);
    CHECK(idgen::decode(layout, pending.get()).timestamp_unix_ms >= start_ms() + 200);
  }
  SECTION("a mark further ahead than state_write_ahead is refused") {
    options.issued_below_unix_ms = start_ms() + 5000;
    options.state_write_ahead = std::chrono::milliseconds(1000);
    CHECK_THROWS_AS(Generator(layout, 3, options), idgen::ClockMovedBackwardsError);
  }
  SECTION("with the borrow policy ids continue from the mark at once") {
    options.clock_policy = ClockPolicy::borrow;
    options.issued_below_unix_ms = start_ms() + 5000;
    Generator generator(layout, 3, options);
    CHECK(idgen::decode(layout, generator.next()).timestamp_unix_ms == start_ms() + 5000);
  }
}
