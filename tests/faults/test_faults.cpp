// The bounded fault-injection run: at least 200 faults against the real
// processes, then the exactly-once checks. A random seed each run (printed,
// so a failure replays with outbox-faults --seed N); OUTBOX_FAULTS_SEED
// fixes it.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <catch2/catch.hpp>

#include "test_support.hpp"

using namespace std::chrono_literals;

TEST_CASE("the pipeline stays exactly-once under 200+ injected faults", "[faults]") {
  std::vector<std::string> args = {"--faults",        "400", "--max-load-time", "150s",
                                   "--drain-timeout", "90s"};
  if (const char* seed = std::getenv("OUTBOX_FAULTS_SEED")) {
    args.push_back("--seed");
    args.push_back(seed);
  }
  auto result = test_support::run(OUTBOX_BIN_OUTBOX_FAULTS, args, 285s);
  INFO(result.err);
  INFO(result.out);
  auto lines = test_support::lines(result.out);
  REQUIRE(!lines.empty());
  const auto& summary = lines.back();
  std::printf("%s\n", summary.c_str());  // shown by ctest -V
  long faults = -1, lost = -1, duplicated = -1, reordered = -1, phantom = -1;
  REQUIRE(std::sscanf(summary.c_str(),
                      "faults=%ld lost=%ld duplicated=%ld reordered=%ld phantom=%ld", &faults,
                      &lost, &duplicated, &reordered, &phantom) == 5);
  CHECK(faults >= 200);
  CHECK(lost == 0);
  CHECK(duplicated == 0);
  CHECK(reordered == 0);
  CHECK(phantom == 0);
  CHECK(result.status.exited);
  CHECK(result.status.code == 0);
}
