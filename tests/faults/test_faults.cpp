// The bounded fault-injection run: at least 200 faults against the real
// processes, then the exactly-once checks. A random seed each run (printed,
// so a failure replays with outbox-faults --seed N); OUTBOX_FAULTS_SEED
// fixes it.
#include "faults_summary.hpp"

using namespace std::chrono_literals;

TEST_CASE("the pipeline stays exactly-once under 200+ injected faults", "[faults]") {
  auto args = faults_test::with_seed(
      {"--faults", "400", "--max-load-time", "150s", "--drain-timeout", "90s"});
  auto result = test_support::run(OUTBOX_BIN_OUTBOX_FAULTS, args, 285s);
  // The SQL producer's undeliverable rows: some stay dead (the checker lists
  // each with its reason and fails the run if a legal message is among them).
  faults_test::check_summary(result, 200, 1);
}
