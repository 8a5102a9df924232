// Per-message checks before sending: a message the destination can never take
// becomes dead on its own instead of failing the batch it would travel in.
#include <cstdio>
#include <string_view>

#include "relay/sink.hpp"
#include "wire/protocol.hpp"

namespace relay {
namespace {

std::size_t header_block(const outbox::PendingMessage& message) {
  std::size_t text = 0;
  for (const auto& header : message.headers) text += header.name.size() + header.value.size();
  return wire::header_block_bytes(message.headers.size(), text);
}

// "topic is 300 bytes, above the limit of 255"
std::string over(std::string_view what, std::size_t size, std::size_t limit,
                 std::string_view unit = "bytes") {
  return std::string(what) + " is " + std::to_string(size) + " " + std::string(unit) +
         ", above the limit of " + std::to_string(limit);
}

bool above(std::size_t size, std::size_t limit) {
  return limit != 0 && size > limit;
}

// The msg_id character set of the SQL contract and the wire protocol:
// printable ASCII without spaces, so that it can be a header value or a log
// token anywhere.
std::optional<std::string> msg_id_problem(std::string_view msg_id) {
  if (msg_id.empty()) return "msg_id is empty";
  for (std::size_t i = 0; i < msg_id.size(); ++i) {
    auto byte = static_cast<unsigned char>(msg_id[i]);
    if (byte <= 0x20 || byte >= 0x7f) {
      char text[96];
      std::snprintf(text, sizeof text,
                    "msg_id has byte 0x%02X at position %zu (allowed: printable ASCII "
                    "0x21-0x7E)",
                    byte, i);
      return std::string(text);
    }
  }
  return std::nullopt;
}

}  // namespace

std::string printable_field(std::string_view text, std::size_t max) {
  std::string out;
  for (std::size_t i = 0; i < text.size() && i < max; ++i) {
    auto byte = static_cast<unsigned char>(text[i]);
    if (byte >= 0x20 && byte < 0x7f && byte != '\\') {
      out.push_back(static_cast<char>(byte));
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", byte);
      out += hex;
    }
  }
  if (text.size() > max) out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

std::size_t message_bytes(const outbox::PendingMessage& message) {
  return wire::publish_message_bytes(message.msg_id.size(), message.topic.size(),
                                     message.partition_key.value_or(std::string()).size(),
                                     header_block(message), message.payload.size());
}

std::size_t message_size(const outbox::PendingMessage& message) {
  return message.partition_key.value_or(std::string()).size() + header_block(message) +
         message.payload.size();
}

std::optional<std::string> undeliverable_reason(const outbox::PendingMessage& message,
                                                const SinkLimits& limits) {
  if (!message.format_error.empty()) return message.format_error;
  if (above(message.msg_id.size(), limits.max_msg_id_bytes)) {
    return over("msg_id", message.msg_id.size(), limits.max_msg_id_bytes);
  }
  if (auto problem = msg_id_problem(message.msg_id)) return problem;
  if (above(message.topic.size(), limits.max_topic_bytes)) {
    return over("topic", message.topic.size(), limits.max_topic_bytes);
  }
  auto key_size = message.partition_key ? message.partition_key->size() : 0;
  if (above(key_size, limits.max_key_bytes)) {
    return over("partition key", key_size, limits.max_key_bytes);
  }
  if (above(message.headers.size(), limits.max_headers)) {
    return over("header count", message.headers.size(), limits.max_headers, "headers");
  }
  for (std::size_t i = 0; i < message.headers.size(); ++i) {
    const auto& header = message.headers[i];
    auto which = "header " + std::to_string(i + 1);
    if (above(header.name.size(), limits.max_header_name_bytes)) {
      return over(which + " name", header.name.size(), limits.max_header_name_bytes);
    }
    if (above(header.value.size(), limits.max_header_value_bytes)) {
      return over(which + " ('" + printable_field(header.name, 64) + "') value",
                  header.value.size(), limits.max_header_value_bytes);
    }
  }
  if (above(message.payload.size(), limits.max_payload_bytes)) {
    return over("payload", message.payload.size(), limits.max_payload_bytes);
  }
  if (above(message_size(message), limits.max_message_bytes)) {
    return "too large: key + headers + payload is " + std::to_string(message_size(message)) +
           " bytes, above the destination's limit of " + std::to_string(limits.max_message_bytes);
  }
  auto alone = wire::kPublishFixedBytes + message_bytes(message);
  if (above(alone, limits.max_batch_bytes)) {
    return "too large: the message alone is a batch of " + std::to_string(alone) +
           " bytes, above the destination's frame limit of " +
           std::to_string(limits.max_batch_bytes);
  }
  return std::nullopt;
}

}  // namespace relay
