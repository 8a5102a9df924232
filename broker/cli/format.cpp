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
