// The relay's backoff between failed attempts.
#include <catch2/catch.hpp>

#include <random>

#include "relay/backoff.hpp"

using namespace std::chrono_literals;

TEST_CASE("backoff grows exponentially with jitter, up to the maximum") {
  relay::BackoffPolicy policy{100ms, 2000ms, 2.0};
  std::mt19937_64 random(42);
  for (int i = 0; i < 100; ++i) {
    auto first = policy.delay(1, random);
    CHECK(first >= 50ms);
    CHECK(first <= 100ms);
    auto fourth = policy.delay(4, random);
    CHECK(fourth >= 400ms);
    CHECK(fourth <= 800ms);
    auto late = policy.delay(30, random);
    CHECK(late >= 1000ms);
    CHECK(late <= 2000ms);
  }
}
