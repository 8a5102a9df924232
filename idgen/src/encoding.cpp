#include "idgen/encoding.hpp"

#include <array>
#include <limits>

#include "idgen/error.hpp"

namespace idgen {
namespace {

constexpr std::string_view hex_digits = "0123456789abcdef";
constexpr std::string_view base62_digits =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr std::string_view base32_digits = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

// Fixed widths: enough digits for 2^64 - 1.
constexpr std::size_t hex_width = 16;
constexpr std::size_t base62_width = 11;
constexpr std::size_t base32_width = 13;

std::string encode_fixed(std::uint64_t id, std::string_view digits, std::size_t width) {
  std::string text(width, digits[0]);
  const std::uint64_t base = digits.size();
  for (std::size_t i = width; i-- > 0 && id != 0;) {
    text[i] = digits[id % base];
    id /= base;
  }
  return text;
}

// Digit value of `c` in `encoding`, or -1.
int digit_value(char c, Encoding encoding) {
  switch (encoding) {
    case Encoding::decimal:
      return c >= '0' && c <= '9' ? c - '0' : -1;
    case Encoding::hex:
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    case Encoding::base62:
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'Z') return c - 'A' + 10;
      if (c >= 'a' && c <= 'z') return c - 'a' + 36;
      return -1;
    case Encoding::base32: {
      if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
      if (c == 'O') return 0;
      if (c == 'I' || c == 'L') return 1;
      const std::size_t index = base32_digits.find(c);
      return index == std::string_view::npos ? -1 : static_cast<int>(index);
    }
  }
  return -1;
}

std::uint64_t base_of(Encoding encoding) {
  switch (encoding) {
    case Encoding::decimal:
      return 10;
    case Encoding::hex:
      return 16;
    case Encoding::base62:
      return 62;
    case Encoding::base32:
      return 32;
  }
  return 10;
}

std::string printable(char c) {
  if (c >= 0x20 && c < 0x7f) return std::string("'") + c + "'";
  static constexpr char hex[] = "0123456789abcdef";
  const auto byte = static_cast<unsigned char>(c);
  return std::string("byte 0x") + hex[byte >> 4] + hex[byte & 0x0f];
}

}  // namespace

std::string encode(std::uint64_t id, Encoding encoding) {
  switch (encoding) {
    case Encoding::decimal:
      return std::to_string(id);
    case Encoding::hex:
      return encode_fixed(id, hex_digits, hex_width);
    case Encoding::base62:
      return encode_fixed(id, base62_digits, base62_width);
    case Encoding::base32:
      return encode_fixed(id, base32_digits, base32_width);
  }
  return std::to_string(id);
}

std::uint64_t decode(std::string_view text, Encoding encoding) {
  const auto fail = [&](const std::string& why) {
    return Error("invalid " + std::string(encoding_name(encoding)) + " id '" + std::string(text) +
                 "': " + why);
  };
  std::string_view digits = text;
  std::size_t offset = 0;
  if (encoding == Encoding::hex && digits.size() > 2 && digits[0] == '0' &&
      (digits[1] == 'x' || digits[1] == 'X')) {
    digits.remove_prefix(2);
    offset = 2;
  }
  const std::uint64_t base = base_of(encoding);
  std::uint64_t value = 0;
  std::size_t digit_count = 0;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    const char c = digits[i];
    if (encoding == Encoding::base32 && c == '-') continue;
    const int digit = digit_value(c, encoding);
    if (digit < 0) {
      throw fail("unexpected character " + printable(c) + " at position " +
                 std::to_string(offset + i + 1));
    }
    const auto add = static_cast<std::uint64_t>(digit);
    if (value > (std::numeric_limits<std::uint64_t>::max() - add) / base) {
      throw fail("value does not fit in 64 bits");
    }
    value = value * base + add;
    ++digit_count;
  }
  if (digit_count == 0) throw fail("no digits");
  return value;
}

std::optional<Encoding> parse_encoding(std::string_view name) {
  if (name == "dec" || name == "decimal") return Encoding::decimal;
  if (name == "hex") return Encoding::hex;
  if (name == "base62") return Encoding::base62;
  if (name == "base32" || name == "crockford") return Encoding::base32;
  return std::nullopt;
}

std::string_view encoding_name(Encoding encoding) {
  switch (encoding) {
    case Encoding::decimal:
      return "decimal";
    case Encoding::hex:
      return "hex";
    case Encoding::base62:
      return "base62";
    case Encoding::base32:
      return "base32";
  }
  return "decimal";
}

}  // namespace idgen
