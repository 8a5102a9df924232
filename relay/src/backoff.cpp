#include "relay/backoff.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace relay {

std::chrono::milliseconds BackoffPolicy::delay(int attempt, std::mt19937_64& random) const {
  if (attempt < 1) attempt = 1;
  double base = static_cast<double>(initial.count()) * std::pow(multiplier, attempt - 1);
  base = std::min(base, static_cast<double>(max.count()));
  std::uniform_real_distribution<double> jitter(base / 2, base);
  return std::chrono::milliseconds(static_cast<std::int64_t>(jitter(random)));
}

}  // namespace relay
