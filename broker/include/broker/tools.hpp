// Small helpers behind the outbox-broker command line: parsing durations and
// sizes given as flags, and printing stats and messages as JSON lines.
// Pure functions; safe from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "wire/protocol.hpp"

namespace broker {

// "0", "forever" -> 0; "1500ms", "30s", "15m", "24h", "7d"; a bare number is seconds.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);
// "1048576", "512k", "1m", "1g" (binary multiples; KiB/MiB/GiB spellings too).
std::optional<std::uint64_t> parse_size(std::string_view text);

std::string json_escape(std::string_view text);
std::string base64_encode(std::string_view bytes);
// True when the bytes are valid UTF-8 without control characters other than
// tab, newline and carriage return: such payloads print as JSON strings.
bool is_printable_text(std::string_view bytes);

// One object: every counter by name, and "topics": {name: {"messages", "last_offset"}}.
std::string stats_to_json(const wire::StatsReply& stats);
std::string stats_to_text(const wire::StatsReply& stats);
// One line: topic, offset, msg_id, key, timestamp_ms, headers, and payload as
// text ("payload") or base64 ("payload_base64").
std::string message_to_json(std::string_view topic, const wire::StoredMessage& message);
std::string message_to_text(const wire::StoredMessage& message);

}  // namespace broker
