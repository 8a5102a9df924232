#include "store_hash.hpp"

namespace broker {
namespace {

constexpr std::uint64_t prime1 = 0x9E3779B185EBCA87ULL;
constexpr std::uint64_t prime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr std::uint64_t prime3 = 0x165667B19E3779F9ULL;
constexpr std::uint64_t prime4 = 0x85EBCA77C2B2AE63ULL;
constexpr std::uint64_t prime5 = 0x27D4EB2F165667C5ULL;

constexpr std::uint64_t rotate_left(std::uint64_t value, int bits) noexcept {
  return (value << bits) | (value >> (64 - bits));
}

// Little-endian loads regardless of the host, so stored hashes are portable.
std::uint64_t load64(const unsigned char* bytes) noexcept {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

std::uint32_t load32(const unsigned char* bytes) noexcept {
  std::uint32_t value = 0;
  for (int i = 3; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

constexpr std::uint64_t round(std::uint64_t accumulator, std::uint64_t input) noexcept {
  accumulator += input * prime2;
  accumulator = rotate_left(accumulator, 31);
  return accumulator * prime1;
}

constexpr std::uint64_t merge_round(std::uint64_t accumulator, std::uint64_t value) noexcept {
  accumulator ^= round(0, value);
  return accumulator * prime1 + prime4;
}

}  // namespace

std::uint64_t payload_hash(std::string_view text, std::uint64_t seed) noexcept {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t length = text.size();
  const unsigned char* end = bytes + length;
  std::uint64_t hash = 0;

  if (length >= 32) {
    std::uint64_t v1 = seed + prime1 + prime2;
    std::uint64_t v2 = seed + prime2;
    std::uint64_t v3 = seed;
    std::uint64_t v4 = seed - prime1;
    const unsigned char* limit = end - 32;
    do {
      v1 = round(v1, load64(bytes));
      v2 = round(v2, load64(bytes + 8));
      v3 = round(v3, load64(bytes + 16));
      v4 = round(v4, load64(bytes + 24));
      bytes += 32;
    } while (bytes <= limit);
    hash = rotate_left(v1, 1) + rotate_left(v2, 7) + rotate_left(v3, 12) + rotate_left(v4, 18);
    hash = merge_round(hash, v1);
    hash = merge_round(hash, v2);
    hash = merge_round(hash, v3);
    hash = merge_round(hash, v4);
  } else {
    hash = seed + prime5;
  }
  hash += static_cast<std::uint64_t>(length);

  while (bytes + 8 <= end) {
    hash ^= round(0, load64(bytes));
    hash = rotate_left(hash, 27) * prime1 + prime4;
    bytes += 8;
  }
  if (bytes + 4 <= end) {
    hash ^= static_cast<std::uint64_t>(load32(bytes)) * prime1;
    hash = rotate_left(hash, 23) * prime2 + prime3;
    bytes += 4;
  }
  while (bytes < end) {
    hash ^= static_cast<std::uint64_t>(*bytes) * prime5;
    hash = rotate_left(hash, 11) * prime1;
    ++bytes;
  }
  hash ^= hash >> 33;
  hash *= prime2;
  hash ^= hash >> 29;
  hash *= prime3;
  hash ^= hash >> 32;
  return hash;
}

}  // namespace broker
