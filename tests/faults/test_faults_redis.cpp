// The bounded fault-injection run with two consumers sharing one Redis inbox
// (outbox-faults --inbox redis): both are killed with SIGKILL at random and
// kill themselves before a side effect, between a side effect and complete(),
// and after complete(); the checker allows exactly the repeats the Redis
// inbox's contract allows (docs/redis_inbox.md) and nothing else. A random
// seed each run (printed); OUTBOX_FAULTS_SEED fixes it. Skipped with a warning
// without the Redis inbox or redis-server.
#include "faults_summary.hpp"

using namespace std::chrono_literals;

TEST_CASE("two consumers sharing a Redis inbox apply each message once under 120+ faults",
          "[faults][redis]") {
#ifndef OUTBOX_FAULTS_WITH_REDIS
  WARN("built without the Redis inbox (hiredis) or redis-server not found; skipping");
  return;
#else
  auto args = faults_test::with_seed(
      {"--inbox", "redis", "--faults", "150", "--max-load-time", "60s", "--drain-timeout", "60s"});
  auto result = test_support::run(OUTBOX_BIN_OUTBOX_FAULTS, args, 170s);
  faults_test::check_summary(result, 120);
  // The line before the summary counts the repeats and what allowed each.
  CHECK(result.out.find("redis inbox: ") != std::string::npos);
#endif
}
