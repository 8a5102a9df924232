#include <filesystem>
#include <fstream>

#include <catch2/catch.hpp>

#include "idgen/snowflake.hpp"
#include "test_support.hpp"

using idgen::ClockPolicy;
using idgen::Generator;
using idgen::GeneratorOptions;
using idgen::Layout;
using idgen::ManualClock;

namespace {

std::int64_t state_start_ms() {
  return Layout::standard().epoch_unix_ms + 5'000'000;
}

GeneratorOptions with_state(const std::filesystem::path& path,
                            const std::shared_ptr<ManualClock>& clock, ClockPolicy policy) {
  GeneratorOptions options;
  options.state_file = path;
  options.clock = clock;
  options.clock_policy = policy;
  options.state_write_ahead = std::chrono::milliseconds(250);
  return options;
}

// Runs a generator for a while, moving the clock 400 ms forward, and returns
// the largest id it issued. With `crash`, the state file is left as it was
// while the generator ran (as after a kill), not as a clean shutdown leaves it.
std::uint64_t run_first_life(const std::filesystem::path& path, bool crash) {
  auto clock = std::make_shared<ManualClock>(state_start_ms());
  std::uint64_t largest = 0;
  std::string on_disk;
  {
    Generator generator(Layout::standard(), 4, with_state(path, clock, ClockPolicy::wait));
    for (int step = 0; step <= 400; step += 10) {
      for (int i = 0; i < 100; ++i) largest = std::max(largest, generator.next());
      clock->advance(10);
    }
    on_disk = test_support::read_file(path);
  }
  if (crash) std::ofstream(path, std::ios::trunc) << on_disk;
  return largest;
}

}  // namespace

TEST_CASE("the state file records a high-water mark ahead of the issued ids", "[idgen][state]") {
  test_support::TempDir dir("idgen-state");
  const auto path = dir / "worker-4.state";
  auto clock = std::make_shared<ManualClock>(state_start_ms());
  Generator generator(Layout::standard(), 4, with_state(path, clock, ClockPolicy::wait));
  const auto first = idgen::decode(Layout::standard(), generator.next());
  const std::string text = test_support::read_file(path);
  REQUIRE_THAT(text, Catch::StartsWith("idgen-state 1 "));
  const std::int64_t mark = std::stoll(text.substr(14));
  CHECK(mark > first.timestamp_unix_ms);
  CHECK(mark <= first.timestamp_unix_ms + 251);
}

TEST_CASE("restart after a clock rollback never reissues ids", "[idgen][state][clock]") {
  test_support::TempDir dir("idgen-state");
  const auto path = dir / "worker-4.state";
  const bool crash = GENERATE(false, true);
  INFO((crash ? "after a crash" : "after a clean shutdown"));
  const std::uint64_t largest = run_first_life(path, crash);

  SECTION("policy borrow continues above everything issued before") {
    // The clock was rolled back a whole second.
    auto clock = std::make_shared<ManualClock>(state_start_ms() - 1000);
    Generator generator(Layout::standard(), 4, with_state(path, clock, ClockPolicy::borrow));
    std::uint64_t previous = largest;
    for (int i = 0; i < 20'000; ++i) {
      const std::uint64_t id = generator.next();
      REQUIRE(id > previous);
      previous = id;
    }
  }
  SECTION("policy wait refuses to start") {
    auto clock = std::make_shared<ManualClock>(state_start_ms() - 1000);
    CHECK_THROWS_AS(Generator(Layout::standard(), 4, with_state(path, clock, ClockPolicy::wait)),
                    idgen::ClockMovedBackwardsError);
  }
  SECTION("policy fail refuses to start") {
    auto clock = std::make_shared<ManualClock>(state_start_ms());
    CHECK_THROWS_AS(Generator(Layout::standard(), 4, with_state(path, clock, ClockPolicy::fail)),
                    idgen::ClockMovedBackwardsError);
  }
  SECTION("a restart with the clock past the mark just goes on") {
    auto clock = std::make_shared<ManualClock>(state_start_ms() + 10'000);
    Generator generator(Layout::standard(), 4, with_state(path, clock, ClockPolicy::wait));
    CHECK(generator.next() > largest);
  }
}

TEST_CASE("a restart inside the write-ahead window waits for the clock to pass the mark",
          "[idgen][state]") {
  test_support::TempDir dir("idgen-state");
  const auto path = dir / "worker-4.state";
  const std::uint64_t largest = run_first_life(path, true);
  // Real time moves the clock here: a clock that follows the steady clock
  // from just below the recorded mark.
  class FollowingClock final : public idgen::Clock {
   public:
    explicit FollowingClock(std::int64_t start)
        : start_(start), began_(std::chrono::steady_clock::now()) {}
    std::int64_t now_unix_ms() const noexcept override {
      return start_ + std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now() - began_)
                          .count();
    }

   private:
    std::int64_t start_;
    std::chrono::steady_clock::time_point began_;
  };
  const std::int64_t mark = std::stoll(test_support::read_file(path).substr(14));
  GeneratorOptions options;
  options.state_file = path;
  options.clock = std::make_shared<FollowingClock>(mark - 20);
  Generator generator(Layout::standard(), 4, options);
  CHECK(generator.next() > largest);
}

TEST_CASE("one state file serves one generator at a time", "[idgen][state]") {
  test_support::TempDir dir("idgen-state");
  const auto path = dir / "shared.state";
  auto clock = std::make_shared<ManualClock>(state_start_ms());
  Generator first(Layout::standard(), 1, with_state(path, clock, ClockPolicy::wait));
  try {
    Generator second(Layout::standard(), 2, with_state(path, clock, ClockPolicy::wait));
    FAIL("second generator started");
  } catch (const idgen::Error& error) {
    CHECK(error.code() == idgen::ErrorCode::io);
    CHECK_THAT(error.what(), Catch::Contains("in use"));
  }
}

TEST_CASE("a corrupt state file is refused, not ignored", "[idgen][state]") {
  test_support::TempDir dir("idgen-state");
  const auto path = dir / "bad.state";
  std::ofstream(path) << "hello\n";
  auto clock = std::make_shared<ManualClock>(state_start_ms());
  try {
    Generator generator(Layout::standard(), 1, with_state(path, clock, ClockPolicy::wait));
    FAIL("accepted");
  } catch (const idgen::Error& error) {
    CHECK(error.code() == idgen::ErrorCode::io);
    CHECK_THAT(error.what(), Catch::Contains("bad.state"));
  }
  std::ofstream(path, std::ios::trunc) << "idgen-state 1 12x\n";
  CHECK_THROWS_WITH(Generator(Layout::standard(), 1, with_state(path, clock, ClockPolicy::wait)),
                    Catch::Contains("corrupt"));
}
