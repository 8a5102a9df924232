// The bounded fault-injection run on a directory of tenant databases: two
// outbox-relay run --db-dir processes share 40 databases lease by lease while
// they are killed and paused, producers write to all of them, and the checker
// requires every message of every database stored once, in commit order per
// (database, topic, key). A random seed each run (printed, so a failure
// replays with outbox-faults --databases 40 --seed N); OUTBOX_FAULTS_SEED
// fixes it.
#include "faults_summary.hpp"

using namespace std::chrono_literals;

TEST_CASE("many databases on two relays stay exactly-once under 200+ injected faults", "[faults]") {
  // Bounded by time: 45 s of load make 800-900 faults here, most of them in
  // the network, 100-150 kills, pauses and stops of processes.
  auto args =
      faults_test::with_seed({"--databases", "40", "--duration", "45s", "--drain-timeout", "90s"});
  auto result = test_support::run(OUTBOX_BIN_OUTBOX_FAULTS, args, 285s);
  faults_test::check_summary(result, 200);
  // The standby path ran: some database's lease went to the other relay.
  CHECK(faults_test::summary_field(result, "takeovers") > 0);
}
