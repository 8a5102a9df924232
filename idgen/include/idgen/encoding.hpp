// Text forms of 64-bit ids: decimal, hexadecimal, base62 and Crockford base32.
//
// Hex (16 characters), base62 (11) and base32 (13) are fixed width, zero
// padded, and use alphabets in ASCII order, so sorting the strings sorts the
// ids; decimal is the plain number. Every encoding round-trips:
// decode(encode(id, f), f) == id.
//
//   hex      0-9 a-f (decoding accepts upper case and a leading "0x")
//   base62   0-9 A-Z a-z
//   base32   Crockford: 0-9 A-Z without I L O U; decoding ignores case and
//            hyphens and reads I and L as 1, O as 0
//
// Decoding accepts shorter (unpadded) input and throws idgen::Error naming the
// first bad character and its position, or saying the value is out of range.
// All functions are pure and thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace idgen {

enum class Encoding { decimal, hex, base62, base32 };

std::string encode(std::uint64_t id, Encoding encoding);
std::uint64_t decode(std::string_view text, Encoding encoding);

// "dec"/"decimal", "hex", "base62", "base32"/"crockford"; empty if unknown.
std::optional<Encoding> parse_encoding(std::string_view name);
std::string_view encoding_name(Encoding encoding);

}  // namespace idgen
