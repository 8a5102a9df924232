// Shared by the bounded fault-injection tests: runs outbox-faults and checks
// the summary line it prints last.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "test_support.hpp"

namespace faults_test {

// Adds --seed from OUTBOX_FAULTS_SEED (so a failure replays) to `args`.
inline std::vector<std::string> with_seed(std::vector<std::string> args) {
  if (const char* seed = std::getenv("OUTBOX_FAULTS_SEED")) {
    args.push_back("--seed");
    args.push_back(seed);
  }
  return args;
}

// Requires "faults=N lost=0 duplicated=0 reordered=0 phantom=0 dead=D" with N
// at least `min_faults` and D at least `min_dead` (the checker has already
// made sure that every dead message is one written to be undeliverable), and a
// clean exit.
inline void check_summary(const test_support::RunResult& result, long min_faults,
                          long min_dead = 0) {
  auto lines = test_support::lines(result.out);
  // First what ended the run, so that a cut log still shows it.
  auto err_lines = test_support::lines(result.err);
  INFO("outbox-faults ended with " << result.status.describe() << "; its last words: "
                                   << (err_lines.empty() ? "(none)" : err_lines.back()));
  INFO(result.out);
  INFO(result.err);
  REQUIRE(!lines.empty());
  const auto& summary = lines.back();
  std::printf("%s\n", summary.c_str());  // shown by ctest -V
  long faults = -1, lost = -1, duplicated = -1, reordered = -1, phantom = -1, dead = -1;
  REQUIRE(std::sscanf(summary.c_str(),
                      "faults=%ld lost=%ld duplicated=%ld reordered=%ld phantom=%ld dead=%ld",
                      &faults, &lost, &duplicated, &reordered, &phantom, &dead) == 6);
  CHECK(faults >= min_faults);
  CHECK(lost == 0);
  CHECK(duplicated == 0);
  CHECK(reordered == 0);
  CHECK(phantom == 0);
  CHECK(dead >= min_dead);
  CHECK(result.status.exited);
  CHECK(result.status.code == 0);
}

// The value of `name`=N in the summary line, -1 when it is not there.
inline long summary_field(const test_support::RunResult& result, const std::string& name) {
  auto lines = test_support::lines(result.out);
  if (lines.empty()) return -1;
  auto at = (" " + lines.back()).find(" " + name + "=");
  if (at == std::string::npos) return -1;
  return std::atol(lines.back().c_str() + at + name.size() + 1);
}

}  // namespace faults_test
