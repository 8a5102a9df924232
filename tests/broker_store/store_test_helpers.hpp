// Small builders shared by the store tests.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "broker/store.hpp"

namespace store_test {

// Owns the bytes an IncomingMessage views.
struct Message {
  Message(std::string id, std::string topic_name, std::string payload_bytes, std::string key = {},
          std::string header_bytes = {})
      : msg_id(std::move(id)),
        topic(std::move(topic_name)),
        payload(std::move(payload_bytes)),
        partition_key(std::move(key)),
        headers(std::move(header_bytes)) {}

  std::string msg_id;
  std::string topic;
  std::string payload;
  std::string partition_key;
  std::string headers;

  broker::IncomingMessage view() const {
    return broker::IncomingMessage{msg_id, topic, partition_key, headers, payload};
  }
};

inline std::vector<broker::AppendOutcome> append(broker::Store& store,
                                                 const std::vector<Message>& messages) {
  std::vector<broker::IncomingMessage> views;
  for (const auto& message : messages) views.push_back(message.view());
  return store.append(views);
}

inline broker::AppendOutcome append_one(broker::Store& store, const Message& message) {
  return append(store, {message}).at(0);
}

inline broker::AppendOutcome stored(std::uint64_t offset) {
  return {broker::AppendStatus::stored, offset, broker::RejectReason::none, {}};
}
inline broker::AppendOutcome duplicate(std::uint64_t offset) {
  return {broker::AppendStatus::duplicate, offset, broker::RejectReason::none, {}};
}
inline broker::AppendOutcome conflict(std::uint64_t offset) {
  return {broker::AppendStatus::conflict, offset, broker::RejectReason::none, {}};
}
inline broker::AppendOutcome rejected(broker::RejectReason reason) {
  return {broker::AppendStatus::rejected, 0, reason, {}};
}

}  // namespace store_test
