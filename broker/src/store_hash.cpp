#include "store_hash.hpp"

#include <xxhash.h>

namespace broker {

std::uint64_t payload_hash(std::string_view text, std::uint64_t seed) noexcept {
  return XXH64(text.data(), text.size(), seed);
}

}  // namespace broker
