// The payload hash kept in the dedup index: XXH64 (seed 0), a fast, stable,
// well-specified 64-bit hash, from libxxhash. Its values are stored on disk:
// they must never change (tests/broker_store/test_store_hash.cpp pins them).
// It only tells a resend from a different message under the same msg_id; it
// is not a security boundary.
#pragma once

#include <cstdint>
#include <string_view>

namespace broker {

std::uint64_t payload_hash(std::string_view bytes, std::uint64_t seed = 0) noexcept;

}  // namespace broker
