// The bounded fault-injection run against NATS JetStream: outbox-faults
// --sink jetstream starts nats-server instead of outbox-broker, kills,
// stops and pauses it, the relays and the JetStream consumers, then reads the
// stream and the consumers' database back and runs the exactly-once checks.
// A random seed each run (printed); OUTBOX_FAULTS_SEED fixes it. Skipped with
// a warning without nats-server or libnats.
#include "faults_summary.hpp"

using namespace std::chrono_literals;

TEST_CASE("the pipeline into JetStream stays exactly-once under 100+ injected faults",
          "[faults][jetstream]") {
#ifndef OUTBOX_FAULTS_WITH_NATS
  WARN("built without libnats (Debian: libnats-dev); skipping");
  return;
#else
  auto args = faults_test::with_seed({"--sink", "jetstream", "--faults", "120", "--max-load-time",
                                      "75s", "--drain-timeout", "45s"});
  auto result = test_support::run(OUTBOX_BIN_OUTBOX_FAULTS, args, 170s);
  if (result.status.exited && result.status.code == 4 &&
      result.err.find("needs nats-server") != std::string::npos) {
    WARN(
        "nats-server is not installed (Debian: apt-get install nats-server) or OUTBOX_NATS_SERVER "
        "names no program; skipping");
    return;
  }
  faults_test::check_summary(result, 100);
#ifdef OUTBOX_FAULTS_WITH_JETSTREAM_CONSUMER
  // The consumers' side effects against the producers: each once, in per-key order.
  INFO(result.out);
  CHECK(result.out.find("side effects: lost=0 duplicated=0 reordered=0 phantom=0") !=
        std::string::npos);
#endif
#endif
}
