#include "format.hpp"

#include "cli/json.hpp"

namespace broker {

using cli::base64_encode;
using cli::is_printable_text;
using cli::json_escape;

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
  using cli::BytesAs;
  using cli::json_bytes;
  std::string out =
      "{\"topic\":" + json_bytes(topic) + ",\"offset\":" + std::to_string(message.offset) +
      ",\"msg_id\":" + json_bytes(message.msg_id) + ",\"key\":" + json_bytes(message.key) +
      ",\"timestamp_ms\":" + std::to_string(message.timestamp_ms);
  if (!message.headers.empty()) {
    // Names are keys, so they are always strings (bytes that are not UTF-8 read as U+FFFD).
    out += ",\"headers\":{";
    for (std::size_t i = 0; i < message.headers.size(); ++i) {
      if (i > 0) out += ",";
      const auto& header = message.headers[i];
      out +=
          cli::json_escape(header.name) + ":" + json_bytes(header.value, BytesAs::printable_text);
    }
    out += "}";
  }
  out += ",\"payload\":" + json_bytes(message.payload, BytesAs::printable_text) + "}";
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
