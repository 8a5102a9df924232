// Exponential backoff with full jitter, for the relay's transient failures
// (a broker that does not answer, a database that is busy or full).
//
// A plain value: copyable, no state of its own; delay() is thread-safe as long
// as each thread passes its own random engine. Throws nothing.
#pragma once

#include <chrono>
#include <random>

namespace relay {

struct BackoffPolicy {
  std::chrono::milliseconds initial{100};
  std::chrono::milliseconds max{30000};
  double multiplier = 2.0;
  // Delay before attempt number `attempt` (1 = first retry): a random value
  // in [base/2, base] where base = min(max, initial * multiplier^(attempt-1)).
  std::chrono::milliseconds delay(int attempt, std::mt19937_64& random) const;
};

}  // namespace relay
