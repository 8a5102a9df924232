// How outbox-broker's stats and tail commands print what the broker sends.
// Pure functions; safe from any thread.
#pragma once

#include <string>
#include <string_view>

#include "wire/protocol.hpp"

namespace broker {

// One object: every counter by name, and "topics": {name: {"messages", "last_offset"}}.
std::string stats_to_json(const wire::StatsReply& stats);
std::string stats_to_text(const wire::StatsReply& stats);
// One line: topic, offset, msg_id, key, timestamp_ms, headers, and payload as
// text ("payload") or base64 ("payload_base64").
std::string message_to_json(std::string_view topic, const wire::StoredMessage& message);
std::string message_to_text(const wire::StoredMessage& message);

}  // namespace broker
