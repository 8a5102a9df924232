#include "format.hpp"

#include <utility>
#include <vector>

#include "cli/json.hpp"

namespace broker {
namespace {

// An object's members: names (valid UTF-8) and values already printed as JSON.
using Members = std::vector<std::pair<std::string, std::string>>;

// The object, with names printed by nlohmann::json. Written out here because a
// message's header names may repeat, which nlohmann::json's objects cannot hold.
std::string object_text(const Members& members) {
  std::string out = "{";
  for (const auto& [name, value] : members) {
    if (out.size() > 1) out += ",";
    out += cli::Json(name).dump() + ":" + value;
  }
  return out + "}";
}

}  // namespace

using cli::base64_encode;
using cli::is_printable_text;

std::string stats_to_json(const wire::StatsReply& stats) {
  cli::Json out = cli::Json::object();
  for (const auto& [name, value] : stats.counters) out[cli::to_valid_utf8(name)] = value;
  cli::Json topics = cli::Json::object();
  for (const auto& topic : stats.topics) {
    topics[cli::to_valid_utf8(topic.topic)] = {{"messages", topic.message_count},
                                               {"last_offset", topic.last_offset}};
  }
  out["topics"] = std::move(topics);
  return out.dump();
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
  using cli::json_value;
  Members line = {{"topic", json_value(topic).dump()},
                  {"offset", cli::Json(message.offset).dump()},
                  {"msg_id", json_value(message.msg_id).dump()},
                  {"key", json_value(message.key).dump()},
                  {"timestamp_ms", cli::Json(message.timestamp_ms).dump()}};
  if (!message.headers.empty()) {
    // Names are keys, so they are always strings (bytes that are not UTF-8 read
    // as U+FFFD); a repeated name appears twice, as it was sent.
    Members headers;
    for (const auto& header : message.headers) {
      headers.emplace_back(cli::to_valid_utf8(header.name),
                           json_value(header.value, BytesAs::printable_text).dump());
    }
    line.emplace_back("headers", object_text(headers));
  }
  line.emplace_back("payload", json_value(message.payload, BytesAs::printable_text).dump());
  return object_text(line);
}

std::string message_to_text(const wire::StoredMessage& message) {
  std::string payload = is_printable_text(message.payload)
                            ? message.payload
                            : "base64:" + base64_encode(message.payload);
  return std::to_string(message.offset) + " " + message.msg_id + " key=" + message.key + " " +
         payload;
}

}  // namespace broker
