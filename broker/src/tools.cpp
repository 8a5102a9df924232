#include "broker/tools.hpp"

#include <cctype>
#include <charconv>
#include <cstdio>
#include <limits>

namespace broker {
namespace {

std::string lower(std::string_view text) {
  std::string out(text);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Splits "15m" into 15 and "m"; empty when the number part is missing or overflows.
std::optional<std::pair<std::uint64_t, std::string>> number_and_unit(std::string_view text) {
  std::uint64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end == text.data()) return std::nullopt;
  return std::pair{value, lower(std::string_view(end, text.data() + text.size() - end))};
}

bool multiply(std::uint64_t& value, std::uint64_t factor) {
  if (factor != 0 && value > std::numeric_limits<std::uint64_t>::max() / factor) return false;
  value *= factor;
  return true;
}

}  // namespace

std::optional<std::chrono::milliseconds> parse_duration(std::string_view text) {
  auto lowered = lower(text);
  if (lowered == "forever" || lowered == "never") return std::chrono::milliseconds(0);
  auto parsed = number_and_unit(text);
  if (!parsed) return std::nullopt;
  auto [value, unit] = *parsed;
  std::uint64_t factor = 0;
  if (unit == "ms")
    factor = 1;
  else if (unit.empty() || unit == "s")
    factor = 1000;
  else if (unit == "m" || unit == "min")
    factor = 60'000;
  else if (unit == "h")
    factor = 3'600'000;
  else if (unit == "d")
    factor = 86'400'000;
  else
    return std::nullopt;
  if (!multiply(value, factor) ||
      value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(value));
}

std::optional<std::uint64_t> parse_size(std::string_view text) {
  auto parsed = number_and_unit(text);
  if (!parsed) return std::nullopt;
  auto [value, unit] = *parsed;
  std::uint64_t factor = 0;
  if (unit.empty() || unit == "b")
    factor = 1;
  else if (unit == "k" || unit == "kib" || unit == "kb")
    factor = 1024;
  else if (unit == "m" || unit == "mib" || unit == "mb")
    factor = 1024 * 1024;
  else if (unit == "g" || unit == "gib" || unit == "gb")
    factor = 1024ull * 1024 * 1024;
  else
    return std::nullopt;
  if (!multiply(value, factor)) return std::nullopt;
  return value;
}

std::string json_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out.push_back('"');
  for (unsigned char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buffer[8];
          std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
          out += buffer;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
  return out;
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

bool is_printable_text(std::string_view bytes) {
  std::size_t i = 0;
  while (i < bytes.size()) {
    auto c = static_cast<unsigned char>(bytes[i]);
    if (c < 0x80) {
      if ((c < 0x20 && c != '\n' && c != '\r' && c != '\t') || c == 0x7f) return false;
      ++i;
      continue;
    }
    std::size_t length = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (length == 0 || i + length > bytes.size()) return false;
    for (std::size_t k = 1; k < length; ++k) {
      if ((static_cast<unsigned char>(bytes[i + k]) & 0xc0) != 0x80) return false;
    }
    i += length;
  }
  return true;
}

std::string stats_to_json(const wire::StatsReply& stats) {
  std::string out = "{";
  for (const auto& [name, value] : stats.counters) {
    out += json_escape(name) + ":" + std::to_string(value) + ",";
  }
  out += "\"topics\":{";
  bool first = true;
  for (const auto& topic : stats.topics) {
    if (!first) out += ",";
    first = false;
    out += json_escape(topic.topic) + ":{\"messages\":" + std::to_string(topic.message_count) +
           ",\"last_offset\":" + std::to_string(topic.last_offset) + "}";
  }
  out += "}}";
  return out;
}

std::string stats_to_text(const wire::StatsReply& stats) {
  std::string out;
  for (const auto& [name, value] : stats.counters) {
    out += name + std::string(name.size() < 20 ? 20 - name.size() : 1, ' ') +
           std::to_string(value) + "\n";
  }
  for (const auto& topic : stats.topics) {
    out += "topic " + topic.topic + ": " + std::to_string(topic.message_count) +
           " messages, last offset " + std::to_string(topic.last_offset) + "\n";
  }
  return out;
}

std::string message_to_json(std::string_view topic, const wire::StoredMessage& message) {
  std::string out =
      "{\"topic\":" + json_escape(topic) + ",\"offset\":" + std::to_string(message.offset) +
      ",\"msg_id\":" + json_escape(message.msg_id) + ",\"key\":" + json_escape(message.key) +
      ",\"timestamp_ms\":" + std::to_string(message.timestamp_ms);
  if (!message.headers.empty()) {
    out += ",\"headers\":{";
    for (std::size_t i = 0; i < message.headers.size(); ++i) {
      if (i > 0) out += ",";
      const auto& header = message.headers[i];
      out += json_escape(header.name) + ":" +
             (is_printable_text(header.value) ? json_escape(header.value)
                                              : json_escape(base64_encode(header.value)));
    }
    out += "}";
  }
  if (is_printable_text(message.payload)) {
    out += ",\"payload\":" + json_escape(message.payload);
  } else {
    out += ",\"payload_base64\":" + json_escape(base64_encode(message.payload));
  }
  out += "}";
  return out;
}

std::string message_to_text(const wire::StoredMessage& message) {
  std::string payload = is_printable_text(message.payload)
                            ? message.payload
                            : "base64:" + base64_encode(message.payload);
  return std::to_string(message.offset) + " " + message.msg_id + " key=" + message.key + " " +
         payload;
}

}  // namespace broker
