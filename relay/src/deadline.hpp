// Time left until a steady-clock deadline, as the relay's waits take it.
// Private to the relay library.
#pragma once

#include <algorithm>
#include <chrono>

namespace relay::detail {

// Milliseconds from now until `deadline`, rounded up, never negative. Rounded
// up because a wait for a deadline less than a millisecond away must not be 0:
// a loop that waits until a deadline would then poll without waiting until it
// passed (a busy wait of up to a millisecond per timed-out wait).
inline std::chrono::milliseconds until(std::chrono::steady_clock::time_point deadline) {
  auto left =
      std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  return std::max(left, std::chrono::milliseconds(0));
}

}  // namespace relay::detail
