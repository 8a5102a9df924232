// The bounded fault-injection run against NATS JetStream: outbox-faults
// --sink jetstream starts nats-server instead of outbox-broker, kills,
// stops and pauses it and the relays, then reads the stream back and runs
// the exactly-once checks. A random seed each run (printed); OUTBOX_FAULTS_SEED
// fixes it. Skipped with a warning without nats-server or libnats.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <catch2/catch.hpp>

#include "test_support.hpp"

using namespace std::chrono_literals;

TEST_CASE("the pipeline into JetStream stays exactly-once under 100+ injected faults",
          "[faults][jetstream]") {
#ifndef OUTBOX_FAULTS_WITH_NATS
  WARN("built without libnats (Debian: libnats-dev); skipping");
  return;
#else
  std::vector<std::string> args = {"--sink",          "jetstream", "--faults",        "120",
                                   "--max-load-time", "75s",       "--drain-timeout", "45s"};
  if (const char* seed = std::getenv("OUTBOX_FAULTS_SEED")) {
    args.push_back("--seed");
    args.push_back(seed);
  }
  auto result = test_support::run(OUTBOX_BIN_OUTBOX_FAULTS, args, 170s);
  if (result.status.exited && result.status.code == 4 &&
      result.err.find("needs nats-server") != std::string::npos) {
    WARN(
        "nats-server is not installed (Debian: apt-get install nats-server) or OUTBOX_NATS_SERVER "
        "names no program; skipping");
    return;
  }
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
  CHECK(faults >= 100);
  CHECK(lost == 0);
  CHECK(duplicated == 0);
  CHECK(reordered == 0);
  CHECK(phantom == 0);
  CHECK(result.status.exited);
  CHECK(result.status.code == 0);
#endif
}
