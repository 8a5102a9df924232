#include "cli/json.hpp"

#include <cstdint>

namespace cli {

std::size_t utf8_sequence_length(std::string_view bytes, std::size_t at) {
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(bytes[at + k]); };
  auto c = byte(0);
  if (c < 0x80) return 1;
  std::size_t length = 0;
  unsigned char low = 0x80;
  unsigned char high = 0xbf;  // the allowed range of the second byte
  if (c >= 0xc2 && c <= 0xdf) {
    length = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    length = 3;
    if (c == 0xe0) low = 0xa0;   // overlong
    if (c == 0xed) high = 0x9f;  // surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    length = 4;
    if (c == 0xf0) low = 0x90;   // overlong
    if (c == 0xf4) high = 0x8f;  // above U+10FFFF
  } else {
    return 0;
  }
  if (at + length > bytes.size()) return 0;
  if (byte(1) < low || byte(1) > high) return 0;
  for (std::size_t k = 2; k < length; ++k) {
    if ((byte(k) & 0xc0) != 0x80) return 0;
  }
  return length;
}

std::string to_valid_utf8(std::string_view text) {
  if (is_valid_utf8(text)) return std::string(text);
  std::string valid;
  valid.reserve(text.size() + 2);
  for (std::size_t i = 0; i < text.size();) {
    const auto length = utf8_sequence_length(text, i);
    if (length == 0) {
      valid += "\xef\xbf\xbd";  // U+FFFD
      ++i;
    } else {
      valid.append(text.substr(i, length));
      i += length;
    }
  }
  return valid;
}

Json json_text(std::string_view text) {
  return to_valid_utf8(text);
}

std::string json_escape(std::string_view text) {
  return json_text(text).dump();
}

std::string base64_encode(std::string_view bytes) {
  static constexpr char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    std::uint32_t n = (static_cast<std::uint8_t>(bytes[i]) << 16) |
                      (static_cast<std::uint8_t>(bytes[i + 1]) << 8) |
                      static_cast<std::uint8_t>(bytes[i + 2]);
    out.push_back(alphabet[(n >> 18) & 63]);
    out.push_back(alphabet[(n >> 12) & 63]);
    out.push_back(alphabet[(n >> 6) & 63]);
    out.push_back(alphabet[n & 63]);
  }
  if (i < bytes.size()) {
    std::uint32_t n = static_cast<std::uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) n |= static_cast<std::uint8_t>(bytes[i + 1]) << 8;
    out.push_back(alphabet[(n >> 18) & 63]);
    out.push_back(alphabet[(n >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? alphabet[(n >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

bool is_valid_utf8(std::string_view bytes) {
  for (std::size_t i = 0; i < bytes.size();) {
    auto length = utf8_sequence_length(bytes, i);
    if (length == 0) return false;
    i += length;
  }
  return true;
}

bool is_printable_text(std::string_view bytes) {
  for (std::size_t i = 0; i < bytes.size();) {
    auto length = utf8_sequence_length(bytes, i);
    if (length == 0) return false;
    auto c = static_cast<unsigned char>(bytes[i]);
    if (length == 1 && ((c < 0x20 && c != '\n' && c != '\r' && c != '\t') || c == 0x7f)) {
      return false;
    }
    i += length;
  }
  return true;
}

Json json_value(std::string_view bytes, BytesAs as) {
  bool text = as == BytesAs::any_text ? is_valid_utf8(bytes) : is_printable_text(bytes);
  if (text) return std::string(bytes);
  return Json{{"base64", base64_encode(bytes)}};
}

std::string json_bytes(std::string_view bytes, BytesAs as) {
  return json_value(bytes, as).dump();
}

}  // namespace cli
