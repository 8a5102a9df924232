// The payload hash kept in the dedup index: XXH64 (seed 0), a fast, stable,
// well-specified 64-bit hash. It only tells a resend from a different message
// under the same msg_id; it is not a security boundary.
#pragma once

#include <cstdint>
#include <string_view>

namespace broker {

std::uint64_t payload_hash(std::string_view bytes, std::uint64_t seed = 0) noexcept;

}  // namespace broker
