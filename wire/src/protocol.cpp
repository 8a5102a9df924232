#include "wire/protocol.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>

namespace wire {
namespace {

// ---- little-endian writer -------------------------------------------------------

template <typename Int>
void put(std::string& out, Int value) {
  using Unsigned = std::make_unsigned_t<Int>;
  auto bits = static_cast<Unsigned>(value);
  char bytes[sizeof(Int)];
  for (std::size_t i = 0; i < sizeof(Int); ++i) {
    bytes[i] = static_cast<char>(static_cast<std::uint8_t>(bits >> (8 * i)));
  }
  out.append(bytes, sizeof(Int));
}

void put_str16(std::string& out, std::string_view text) {
  if (text.size() > std::numeric_limits<std::uint16_t>::max()) {
    throw std::length_error("wire: string longer than 65535 bytes");
  }
  put<std::uint16_t>(out, static_cast<std::uint16_t>(text.size()));
  out.append(text);
}

void put_bytes32(std::string& out, std::string_view bytes) {
  if (bytes.size() > std::numeric_limits<std::uint32_t>::max()) {
    throw std::length_error("wire: field longer than 4 GiB");
  }
  put<std::uint32_t>(out, static_cast<std::uint32_t>(bytes.size()));
  out.append(bytes);
}

std::uint32_t count32(std::size_t count) {
  if (count > std::numeric_limits<std::uint32_t>::max()) {
    throw std::length_error("wire: too many elements");
  }
  return static_cast<std::uint32_t>(count);
}

void put_headers(std::string& out, std::span<const Header> headers) {
  if (headers.size() > std::numeric_limits<std::uint16_t>::max()) {
    throw std::length_error("wire: too many headers");
  }
  put<std::uint16_t>(out, static_cast<std::uint16_t>(headers.size()));
  for (const auto& header : headers) {
    put_str16(out, header.name);
    put_bytes32(out, header.value);
  }
}

// ---- bounds-checked reader --------------------------------------------------------

// Reads fields front to back; the first failure is remembered and every later
// read returns a zero value, so decoders check once at the end of a section.
class Reader {
 public:
  Reader(std::string_view body, const Limits& limits) : data_(body), limits_(limits) {}

  bool failed() const { return error_.code != ErrorCode::none; }
  Error take_error() { return std::move(error_); }
  std::size_t remaining() const { return data_.size() - position_; }
  std::size_t position() const { return position_; }

  template <typename Int>
  Int get(const char* field) {
    if (failed()) return Int{};
    if (remaining() < sizeof(Int)) {
      fail(ErrorCode::truncated, std::string(field) + " needs " + std::to_string(sizeof(Int)) +
                                     " bytes, " + std::to_string(remaining()) + " left");
      return Int{};
    }
    using Unsigned = std::make_unsigned_t<Int>;
    Unsigned bits = 0;
    for (std::size_t i = 0; i < sizeof(Int); ++i) {
      bits |= static_cast<Unsigned>(static_cast<std::uint8_t>(data_[position_ + i])) << (8 * i);
    }
    position_ += sizeof(Int);
    return static_cast<Int>(bits);
  }

  std::string_view take(std::size_t length, std::size_t maximum, const char* field) {
    if (failed()) return {};
    if (length > maximum) {
      fail(ErrorCode::limit_exceeded, std::string(field) + " length " + std::to_string(length) +
                                          " exceeds the maximum " + std::to_string(maximum));
      return {};
    }
    if (length > remaining()) {
      fail(ErrorCode::truncated, std::string(field) + " length " + std::to_string(length) +
                                     " but only " + std::to_string(remaining()) + " bytes left");
      return {};
    }
    auto view = data_.substr(position_, length);
    position_ += length;
    return view;
  }

  // Like take(), but a length above `maximum` is not a failure of the frame:
  // the bytes are taken (when present) and `over` is set, so that one message
  // of a batch can be refused while the rest of the batch is read.
  std::string_view take_lenient(std::size_t length, std::size_t maximum, const char* field,
                                bool& over) {
    if (failed()) return {};
    if (length > remaining()) {
      fail(ErrorCode::truncated, std::string(field) + " length " + std::to_string(length) +
                                     " but only " + std::to_string(remaining()) + " bytes left");
      return {};
    }
    over = over || length > maximum;
    auto view = data_.substr(position_, length);
    position_ += length;
    return view;
  }

  std::string str16(std::size_t maximum, const char* field) {
    auto length = get<std::uint16_t>(field);
    return std::string(take(length, maximum, field));
  }

  std::string bytes32(std::size_t maximum, const char* field) {
    auto length = get<std::uint32_t>(field);
    return std::string(take(length, maximum, field));
  }

  // A count of elements that each take at least `min_element_bytes`: checked
  // against the maximum and against what the remaining bytes could hold, so an
  // absurd count never drives an allocation.
  std::size_t count(std::uint64_t value, std::size_t maximum, std::size_t min_element_bytes,
                    const char* field) {
    if (failed()) return 0;
    if (value > maximum) {
      fail(ErrorCode::limit_exceeded, std::string(field) + " " + std::to_string(value) +
                                          " exceeds the maximum " + std::to_string(maximum));
      return 0;
    }
    if (min_element_bytes > 0 && value > remaining() / min_element_bytes) {
      fail(ErrorCode::truncated, std::string(field) + " " + std::to_string(value) +
                                     " cannot fit in the " + std::to_string(remaining()) +
                                     " bytes left");
      return 0;
    }
    return static_cast<std::size_t>(value);
  }

  void fail(ErrorCode code, std::string message) {
    if (!failed()) error_ = Error{code, std::move(message)};
  }

  void expect_end() {
    if (!failed() && remaining() != 0) {
      fail(ErrorCode::trailing_bytes,
           std::to_string(remaining()) + " unexpected bytes after the last field");
    }
  }

  const Limits& limits() const { return limits_; }

 private:
  std::string_view data_;
  std::size_t position_ = 0;
  const Limits& limits_;
  Error error_;
};

std::vector<Header> read_headers(Reader& in) {
  std::vector<Header> headers;
  auto count =
      in.count(in.get<std::uint16_t>("header count"), in.limits().max_headers, 6, "header count");
  headers.reserve(count);
  for (std::size_t i = 0; i < count && !in.failed(); ++i) {
    Header header;
    header.name = in.str16(in.limits().max_msg_id_bytes, "header name");
    header.value = in.bytes32(in.limits().max_header_value_bytes, "header value");
    headers.push_back(std::move(header));
  }
  return headers;
}

// ---- per-command bodies ---------------------------------------------------------

void encode_into(std::string& out, const Hello& m) {
  put<std::uint32_t>(out, m.flags);
  put_str16(out, m.producer);
  put_str16(out, m.origin);
  put<std::uint64_t>(out, m.epoch);
  if ((m.flags & kHelloWithId) != 0) put<std::uint64_t>(out, m.hello_id);
}
void encode_into(std::string& out, const Welcome& m) {
  put<std::uint64_t>(out, m.session_id);
  put<std::uint32_t>(out, m.max_message_bytes);
  put<std::uint32_t>(out, m.max_batch_messages);
  put_str16(out, m.broker_name);
  for (auto limit :
       {m.max_body_bytes, m.max_msg_id_bytes, m.max_name_bytes, m.max_key_bytes, m.max_headers,
        m.max_header_name_bytes, m.max_header_value_bytes, m.max_payload_bytes}) {
    put<std::uint32_t>(out, limit);
  }
  if (m.hello_id != 0) put<std::uint64_t>(out, m.hello_id);
}
void encode_into(std::string& out, const Publish& m) {
  begin_publish_body(out, m.session_id, m.batch_id);
  for (const auto& message : m.messages) {
    append_publish_message(out, message.msg_id, message.topic, message.key, message.headers,
                           message.payload);
  }
  finish_publish_body(out, count32(m.messages.size()));
}
void encode_into(std::string& out, const Ack& m) {
  put<std::uint64_t>(out, m.batch_id);
  put<std::uint32_t>(out, count32(m.entries.size()));
  for (const auto& entry : m.entries) {
    put<std::uint8_t>(out, static_cast<std::uint8_t>(entry.status));
    put<std::uint64_t>(out, entry.offset);
    put_str16(out, entry.reason);
  }
}
void encode_into(std::string& out, const Resume& m) {
  put<std::uint64_t>(out, m.session_id);
  put<std::uint64_t>(out, m.previous_session_id);
  put<std::uint64_t>(out, m.from_batch_id);
}
void encode_into(std::string& out, const Resumed& m) {
  put<std::uint64_t>(out, m.previous_session_id);
  put<std::uint32_t>(out, count32(m.acks.size()));
  for (const auto& ack : m.acks) encode_into(out, ack);
}
void encode_into(std::string& out, const Fetch& m) {
  put<std::uint64_t>(out, m.request_id);
  put_str16(out, m.topic);
  put_str16(out, m.group);
  put<std::uint64_t>(out, m.from_offset);
  put<std::uint8_t>(out, m.use_group_offset ? 1 : 0);
  put<std::uint32_t>(out, m.max_messages);
  put<std::uint32_t>(out, m.max_bytes);
  put<std::uint32_t>(out, m.wait_ms);
}
void encode_into(std::string& out, const Messages& m) {
  put<std::uint64_t>(out, m.request_id);
  put_str16(out, m.topic);
  put<std::uint64_t>(out, m.next_offset);
  put<std::uint64_t>(out, m.last_offset);
  put<std::uint32_t>(out, count32(m.messages.size()));
  for (const auto& message : m.messages) {
    put<std::uint64_t>(out, message.offset);
    put<std::int64_t>(out, message.timestamp_ms);
    put_str16(out, message.msg_id);
    put_str16(out, message.key);
    put_headers(out, message.headers);
    put_bytes32(out, message.payload);
  }
}
void encode_into(std::string& out, const CommitOffset& m) {
  put<std::uint64_t>(out, m.request_id);
  put_str16(out, m.topic);
  put_str16(out, m.group);
  put<std::uint64_t>(out, m.offset);
}
void encode_into(std::string& out, const OffsetCommitted& m) {
  put<std::uint64_t>(out, m.request_id);
  put_str16(out, m.topic);
  put_str16(out, m.group);
  put<std::uint64_t>(out, m.offset);
}
void encode_into(std::string& out, const Ping& m) {
  put<std::uint64_t>(out, m.nonce);
}
void encode_into(std::string& out, const Pong& m) {
  put<std::uint64_t>(out, m.nonce);
}
void encode_into(std::string& out, const StatsRequest& m) {
  put<std::uint64_t>(out, m.request_id);
}
void encode_into(std::string& out, const StatsReply& m) {
  put<std::uint64_t>(out, m.request_id);
  put<std::uint32_t>(out, count32(m.counters.size()));
  for (const auto& [name, value] : m.counters) {
    put_str16(out, name);
    put<std::uint64_t>(out, value);
  }
  put<std::uint32_t>(out, count32(m.topics.size()));
  for (const auto& topic : m.topics) {
    put_str16(out, topic.topic);
    put<std::uint64_t>(out, topic.message_count);
    put<std::uint64_t>(out, topic.last_offset);
  }
}
void encode_into(std::string& out, const ErrorReply& m) {
  put<std::uint64_t>(out, m.request_id);
  put<std::uint16_t>(out, static_cast<std::uint16_t>(m.code));
  put_str16(out, m.message);
}

AnyMessage decode_hello(Reader& in) {
  Hello m;
  m.flags = in.get<std::uint32_t>("hello flags");
  m.producer = in.str16(in.limits().max_name_bytes, "producer name");
  m.origin = in.str16(in.limits().max_name_bytes, "origin");
  m.epoch = in.get<std::uint64_t>("lease epoch");
  if (!in.failed() && (m.flags & ~(kHelloOneOfSeveral | kHelloWithId)) != 0) {
    in.fail(ErrorCode::invalid_value, "unknown hello flags (only bits 0 and 1 are defined)");
  }
  if (!in.failed() && (m.flags & kHelloWithId) != 0) {
    m.hello_id = in.get<std::uint64_t>("hello id");
    if (!in.failed() && m.hello_id == 0) in.fail(ErrorCode::invalid_value, "hello id 0");
  }
  if (!in.failed() && (m.flags & kHelloOneOfSeveral) != 0 && m.origin.empty()) {
    in.fail(ErrorCode::invalid_value, "hello flag 'one of several' needs an origin");
  }
  return m;
}
AnyMessage decode_welcome(Reader& in) {
  Welcome m;
  m.session_id = in.get<std::uint64_t>("session id");
  m.max_message_bytes = in.get<std::uint32_t>("max message bytes");
  m.max_batch_messages = in.get<std::uint32_t>("max batch messages");
  m.broker_name = in.str16(in.limits().max_name_bytes, "broker name");
  m.max_body_bytes = in.get<std::uint32_t>("max body bytes");
  m.max_msg_id_bytes = in.get<std::uint32_t>("max msg_id bytes");
  m.max_name_bytes = in.get<std::uint32_t>("max name bytes");
  m.max_key_bytes = in.get<std::uint32_t>("max key bytes");
  m.max_headers = in.get<std::uint32_t>("max headers");
  m.max_header_name_bytes = in.get<std::uint32_t>("max header name bytes");
  m.max_header_value_bytes = in.get<std::uint32_t>("max header value bytes");
  m.max_payload_bytes = in.get<std::uint32_t>("max payload bytes");
  // Present only in answer to a HELLO with an id: older brokers never send it.
  if (!in.failed() && in.remaining() > 0) {
    m.hello_id = in.get<std::uint64_t>("hello id");
    if (!in.failed() && m.hello_id == 0) in.fail(ErrorCode::invalid_value, "hello id 0");
  }
  return m;
}
AnyMessage decode_publish(Reader& in) {
  Publish m;
  m.session_id = in.get<std::uint64_t>("session id");
  m.batch_id = in.get<std::uint64_t>("batch id");
  // Smallest message: three empty strings, no headers, empty payload = 12 bytes.
  auto count = in.count(in.get<std::uint32_t>("message count"), in.limits().max_batch_messages, 12,
                        "message count");
  m.messages.reserve(count);
  const auto& limits = in.limits();
  for (std::size_t i = 0; i < count && !in.failed(); ++i) {
    OutgoingMessage message;
    message.msg_id = in.str16(limits.max_msg_id_bytes, "msg_id");
    message.topic = in.str16(limits.max_name_bytes, "topic");
    message.key = in.str16(limits.max_key_bytes, "partition key");
    message.headers = read_headers(in);
    message.payload = in.bytes32(limits.max_payload_bytes, "payload");
    m.messages.push_back(std::move(message));
  }
  return m;
}
Ack decode_ack_fields(Reader& in) {
  Ack m;
  m.batch_id = in.get<std::uint64_t>("batch id");
  auto count =
      in.count(in.get<std::uint32_t>("ack count"), in.limits().max_batch_messages, 11, "ack count");
  m.entries.reserve(count);
  for (std::size_t i = 0; i < count && !in.failed(); ++i) {
    AckEntry entry;
    auto status = in.get<std::uint8_t>("ack status");
    if (!in.failed() && status > static_cast<std::uint8_t>(AckStatus::blocked)) {
      in.fail(ErrorCode::invalid_value, "ack status " + std::to_string(status) + " is unknown");
    }
    entry.status = static_cast<AckStatus>(status);
    entry.offset = in.get<std::uint64_t>("ack offset");
    entry.reason = in.str16(in.limits().max_reason_bytes, "ack reason");
    m.entries.push_back(std::move(entry));
  }
  return m;
}
AnyMessage decode_ack(Reader& in) {
  return decode_ack_fields(in);
}
AnyMessage decode_resume(Reader& in) {
  Resume m;
  m.session_id = in.get<std::uint64_t>("session id");
  m.previous_session_id = in.get<std::uint64_t>("previous session id");
  m.from_batch_id = in.get<std::uint64_t>("from batch id");
  return m;
}
AnyMessage decode_resumed(Reader& in) {
  Resumed m;
  m.previous_session_id = in.get<std::uint64_t>("previous session id");
  auto count = in.count(in.get<std::uint32_t>("resumed ack count"), in.limits().max_batch_messages,
                        12, "resumed ack count");
  m.acks.reserve(count);
  for (std::size_t i = 0; i < count && !in.failed(); ++i) m.acks.push_back(decode_ack_fields(in));
  return m;
}
AnyMessage decode_fetch(Reader& in) {
  Fetch m;
  m.request_id = in.get<std::uint64_t>("request id");
  m.topic = in.str16(in.limits().max_name_bytes, "topic");
  m.group = in.str16(in.limits().max_name_bytes, "consumer group");
  m.from_offset = in.get<std::uint64_t>("from offset");
  auto flags = in.get<std::uint8_t>("fetch flags");
  if (!in.failed() && flags > 1) in.fail(ErrorCode::invalid_value, "unknown fetch flags");
  m.use_group_offset = (flags & 1) != 0;
  m.max_messages = in.get<std::uint32_t>("max messages");
  m.max_bytes = in.get<std::uint32_t>("max bytes");
  m.wait_ms = in.get<std::uint32_t>("wait ms");
  return m;
}
AnyMessage decode_messages(Reader& in) {
  Messages m;
  m.request_id = in.get<std::uint64_t>("request id");
  m.topic = in.str16(in.limits().max_name_bytes, "topic");
  m.next_offset = in.get<std::uint64_t>("next offset");
  m.last_offset = in.get<std::uint64_t>("last offset");
  auto count = in.count(in.get<std::uint32_t>("message count"), in.limits().max_batch_messages, 26,
                        "message count");
  m.messages.reserve(count);
  const auto& limits = in.limits();
  for (std::size_t i = 0; i < count && !in.failed(); ++i) {
    StoredMessage message;
    message.offset = in.get<std::uint64_t>("offset");
    message.timestamp_ms = in.get<std::int64_t>("timestamp");
    message.msg_id = in.str16(limits.max_msg_id_bytes, "msg_id");
    message.key = in.str16(limits.max_key_bytes, "partition key");
    message.headers = read_headers(in);
    message.payload = in.bytes32(limits.max_payload_bytes, "payload");
    m.messages.push_back(std::move(message));
  }
  return m;
}
template <typename OffsetMessage>
AnyMessage decode_offset(Reader& in) {
  OffsetMessage m;
  m.request_id = in.get<std::uint64_t>("request id");
  m.topic = in.str16(in.limits().max_name_bytes, "topic");
  m.group = in.str16(in.limits().max_name_bytes, "consumer group");
  m.offset = in.get<std::uint64_t>("offset");
  return m;
}
AnyMessage decode_stats_reply(Reader& in) {
  StatsReply m;
  m.request_id = in.get<std::uint64_t>("request id");
  auto counters = in.count(in.get<std::uint32_t>("counter count"), in.limits().max_stats_entries,
                           10, "counter count");
  m.counters.reserve(counters);
  for (std::size_t i = 0; i < counters && !in.failed(); ++i) {
    auto name = in.str16(in.limits().max_name_bytes, "counter name");
    auto value = in.get<std::uint64_t>("counter value");
    m.counters.emplace_back(std::move(name), value);
  }
  auto topics = in.count(in.get<std::uint32_t>("topic count"), in.limits().max_stats_entries, 18,
                         "topic count");
  m.topics.reserve(topics);
  for (std::size_t i = 0; i < topics && !in.failed(); ++i) {
    TopicStats topic;
    topic.topic = in.str16(in.limits().max_name_bytes, "topic");
    topic.message_count = in.get<std::uint64_t>("topic message count");
    topic.last_offset = in.get<std::uint64_t>("topic last offset");
    m.topics.push_back(std::move(topic));
  }
  return m;
}
AnyMessage decode_error(Reader& in) {
  ErrorReply m;
  m.request_id = in.get<std::uint64_t>("request id");
  auto code = in.get<std::uint16_t>("error code");
  if (!in.failed() && (code == 0 || code > static_cast<std::uint16_t>(ErrorCode::stale_epoch))) {
    // A newer peer may send codes this side does not know: keep them as internal.
    code = static_cast<std::uint16_t>(ErrorCode::internal);
  }
  m.code = static_cast<ErrorCode>(code);
  m.message = in.str16(in.limits().max_reason_bytes, "error message");
  return m;
}

}  // namespace

std::string_view command_name(Command command) noexcept {
  switch (command) {
    case Command::hello:
      return "HELLO";
    case Command::welcome:
      return "WELCOME";
    case Command::publish:
      return "PUBLISH";
    case Command::ack:
      return "ACK";
    case Command::fetch:
      return "FETCH";
    case Command::messages:
      return "MESSAGES";
    case Command::commit_offset:
      return "COMMIT_OFFSET";
    case Command::offset_committed:
      return "OFFSET_COMMITTED";
    case Command::ping:
      return "PING";
    case Command::pong:
      return "PONG";
    case Command::stats:
      return "STATS";
    case Command::stats_reply:
      return "STATS_REPLY";
    case Command::error:
      return "ERROR";
    case Command::resume:
      return "RESUME";
    case Command::resumed:
      return "RESUMED";
  }
  return "UNKNOWN";
}

std::string_view error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::none:
      return "none";
    case ErrorCode::bad_frame_count:
      return "bad_frame_count";
    case ErrorCode::bad_tag:
      return "bad_tag";
    case ErrorCode::unsupported_version:
      return "unsupported_version";
    case ErrorCode::unknown_command:
      return "unknown_command";
    case ErrorCode::truncated:
      return "truncated";
    case ErrorCode::trailing_bytes:
      return "trailing_bytes";
    case ErrorCode::limit_exceeded:
      return "limit_exceeded";
    case ErrorCode::invalid_value:
      return "invalid_value";
    case ErrorCode::unexpected_command:
      return "unexpected_command";
    case ErrorCode::no_session:
      return "no_session";
    case ErrorCode::session_failed:
      return "session_failed";
    case ErrorCode::storage_failure:
      return "storage_failure";
    case ErrorCode::shutting_down:
      return "shutting_down";
    case ErrorCode::busy:
      return "busy";
    case ErrorCode::internal:
      return "internal";
    case ErrorCode::stale_epoch:
      return "stale_epoch";
    case ErrorCode::timeout:
      return "timeout";
    case ErrorCode::disconnected:
      return "disconnected";
  }
  return "unknown";
}

std::string_view ack_status_name(AckStatus status) noexcept {
  switch (status) {
    case AckStatus::stored:
      return "STORED";
    case AckStatus::duplicate:
      return "DUPLICATE";
    case AckStatus::conflict:
      return "CONFLICT";
    case AckStatus::rejected:
      return "REJECTED";
    case AckStatus::blocked:
      return "BLOCKED";
  }
  return "UNKNOWN";
}

Command command_of(const AnyMessage& message) noexcept {
  static constexpr Command table[] = {
      Command::hello, Command::welcome,  Command::publish,       Command::ack,
      Command::fetch, Command::messages, Command::commit_offset, Command::offset_committed,
      Command::ping,  Command::pong,     Command::stats,         Command::stats_reply,
      Command::error, Command::resume,   Command::resumed};
  static_assert(std::size(table) == std::variant_size_v<AnyMessage>);
  return table[message.index()];
}

std::string encode_tag(std::uint8_t version) {
  std::string tag(kTagMagic, sizeof kTagMagic);
  tag.push_back(static_cast<char>(version));
  return tag;
}

std::string encode_body(const AnyMessage& message) {
  std::string body;
  std::visit([&body](const auto& m) { encode_into(body, m); }, message);
  return body;
}

Frames encode(const AnyMessage& message) {
  return Frames{encode_tag(), std::string(1, static_cast<char>(command_of(message))),
                encode_body(message)};
}

Welcome welcome_for(std::uint64_t session_id, std::size_t max_message_bytes,
                    std::string broker_name, const Limits& limits) {
  auto u32 = [](std::size_t value) {
    return static_cast<std::uint32_t>(std::min<std::size_t>(value, UINT32_MAX));
  };
  Welcome welcome;
  welcome.session_id = session_id;
  welcome.max_message_bytes = u32(max_message_bytes);
  welcome.max_batch_messages = u32(limits.max_batch_messages);
  welcome.broker_name = std::move(broker_name);
  welcome.max_body_bytes = u32(limits.max_body_bytes);
  welcome.max_msg_id_bytes = u32(limits.max_msg_id_bytes);
  welcome.max_name_bytes = u32(limits.max_name_bytes);
  welcome.max_key_bytes = u32(limits.max_key_bytes);
  welcome.max_headers = u32(limits.max_headers);
  welcome.max_header_name_bytes = u32(limits.max_msg_id_bytes);  // the decoder's header name limit
  welcome.max_header_value_bytes = u32(limits.max_header_value_bytes);
  welcome.max_payload_bytes = u32(limits.max_payload_bytes);
  return welcome;
}

void begin_publish_body(std::string& body, std::uint64_t session_id, std::uint64_t batch_id) {
  body.clear();
  put<std::uint64_t>(body, session_id);
  put<std::uint64_t>(body, batch_id);
  put<std::uint32_t>(body, 0);  // message count, patched by finish_publish_body
}

void append_publish_message(std::string& body, std::string_view msg_id, std::string_view topic,
                            std::string_view key, std::span<const Header> headers,
                            std::string_view payload) {
  put_str16(body, msg_id);
  put_str16(body, topic);
  put_str16(body, key);
  put_headers(body, headers);
  put_bytes32(body, payload);
}

void finish_publish_body(std::string& body, std::uint32_t message_count) {
  if (body.size() < 20) throw std::logic_error("wire: finish_publish_body without begin");
  for (std::size_t i = 0; i < 4; ++i) {
    body[16 + i] = static_cast<char>(static_cast<std::uint8_t>(message_count >> (8 * i)));
  }
}

Result<std::uint8_t> decode_tag(std::string_view tag) {
  if (tag.size() != kTagSize || std::memcmp(tag.data(), kTagMagic, sizeof kTagMagic) != 0) {
    return Error{ErrorCode::bad_tag, "first frame is not an OBX protocol tag"};
  }
  auto version = static_cast<std::uint8_t>(tag[3]);
  if (version != kProtocolVersion) {
    return Error{ErrorCode::unsupported_version,
                 "protocol version " + std::to_string(version) +
                     " is not supported (this side speaks version " +
                     std::to_string(kProtocolVersion) + ")"};
  }
  return version;
}

Result<Command> decode_command(std::string_view command) {
  if (command.size() != 1) {
    return Error{ErrorCode::unknown_command,
                 "command frame must be 1 byte, got " + std::to_string(command.size())};
  }
  auto value = static_cast<std::uint8_t>(command[0]);
  if (value < static_cast<std::uint8_t>(Command::hello) ||
      value > static_cast<std::uint8_t>(Command::resumed)) {
    return Error{ErrorCode::unknown_command, "unknown command " + std::to_string(value)};
  }
  return static_cast<Command>(value);
}

Result<AnyMessage> decode_body(Command command, std::string_view body, const Limits& limits) {
  if (body.size() > limits.max_body_bytes) {
    return Error{ErrorCode::limit_exceeded, "body of " + std::to_string(body.size()) +
                                                " bytes exceeds the maximum " +
                                                std::to_string(limits.max_body_bytes)};
  }
  Reader in(body, limits);
  AnyMessage message;
  switch (command) {
    case Command::hello:
      message = decode_hello(in);
      break;
    case Command::welcome:
      message = decode_welcome(in);
      break;
    case Command::publish:
      message = decode_publish(in);
      break;
    case Command::ack:
      message = decode_ack(in);
      break;
    case Command::fetch:
      message = decode_fetch(in);
      break;
    case Command::messages:
      message = decode_messages(in);
      break;
    case Command::commit_offset:
      message = decode_offset<CommitOffset>(in);
      break;
    case Command::offset_committed:
      message = decode_offset<OffsetCommitted>(in);
      break;
    case Command::ping:
      message = Ping{in.get<std::uint64_t>("nonce")};
      break;
    case Command::pong:
      message = Pong{in.get<std::uint64_t>("nonce")};
      break;
    case Command::stats:
      message = StatsRequest{in.get<std::uint64_t>("request id")};
      break;
    case Command::stats_reply:
      message = decode_stats_reply(in);
      break;
    case Command::error:
      message = decode_error(in);
      break;
    case Command::resume:
      message = decode_resume(in);
      break;
    case Command::resumed:
      message = decode_resumed(in);
      break;
    default:
      return Error{ErrorCode::unknown_command, "unknown command"};
  }
  in.expect_end();
  if (in.failed()) {
    auto error = in.take_error();
    error.message = std::string(command_name(command)) + ": " + error.message;
    return error;
  }
  return message;
}

Result<AnyMessage> decode(std::span<const std::string_view> frames, const Limits& limits) {
  if (frames.size() != 3) {
    return Error{ErrorCode::bad_frame_count,
                 "expected 3 frames (tag, command, body), got " + std::to_string(frames.size())};
  }
  auto version = decode_tag(frames[0]);
  if (!version) return version.error();
  auto command = decode_command(frames[1]);
  if (!command) return command.error();
  return decode_body(*command, frames[2], limits);
}

Result<PublishView> decode_publish_view(std::string_view body, const Limits& limits) {
  if (body.size() > limits.max_body_bytes) {
    return Error{ErrorCode::limit_exceeded, "PUBLISH: body of " + std::to_string(body.size()) +
                                                " bytes exceeds the maximum " +
                                                std::to_string(limits.max_body_bytes)};
  }
  Reader in(body, limits);
  PublishView view;
  view.session_id = in.get<std::uint64_t>("session id");
  view.batch_id = in.get<std::uint64_t>("batch id");
  auto count = in.count(in.get<std::uint32_t>("message count"), limits.max_batch_messages, 12,
                        "message count");
  view.messages.reserve(count);
  // Field limits are per message: a field above its limit whose bytes are all
  // there refuses that message (`violation`), not the batch.
  for (std::size_t i = 0; i < count && !in.failed(); ++i) {
    MessageView message;
    bool over = false;
    message.msg_id =
        in.take_lenient(in.get<std::uint16_t>("msg_id"), limits.max_msg_id_bytes, "msg_id", over);
    if (over) message.violation = kViolationMsgId;
    over = false;
    message.topic =
        in.take_lenient(in.get<std::uint16_t>("topic"), limits.max_name_bytes, "topic", over);
    if (over && message.violation.empty()) message.violation = kViolationTopic;
    over = false;
    message.key = in.take_lenient(in.get<std::uint16_t>("partition key"), limits.max_key_bytes,
                                  "partition key", over);
    if (over && message.violation.empty()) message.violation = kViolationKey;
    auto headers_start = in.position();
    std::size_t header_count = in.get<std::uint16_t>("header count");
    over = header_count > limits.max_headers;
    for (std::size_t h = 0; h < header_count && !in.failed(); ++h) {
      in.take_lenient(in.get<std::uint16_t>("header name"), limits.max_msg_id_bytes, "header name",
                      over);
      in.take_lenient(in.get<std::uint32_t>("header value"), limits.max_header_value_bytes,
                      "header value", over);
    }
    if (over && message.violation.empty()) message.violation = kViolationHeaders;
    over = false;
    if (!in.failed()) message.headers = body.substr(headers_start, in.position() - headers_start);
    message.payload = in.take_lenient(in.get<std::uint32_t>("payload"), limits.max_payload_bytes,
                                      "payload", over);
    if (over && message.violation.empty()) message.violation = kViolationPayload;
    view.messages.push_back(message);
  }
  in.expect_end();
  if (in.failed()) {
    auto error = in.take_error();
    error.message = "PUBLISH: " + error.message;
    return error;
  }
  return view;
}

std::uint64_t peek_request_id(Command command, std::string_view body) noexcept {
  std::size_t at = 0;
  switch (command) {
    case Command::publish:
      at = 8;  // after the session id
      break;
    case Command::fetch:
    case Command::commit_offset:
    case Command::stats:
    case Command::ping:
      break;
    default:
      return 0;
  }
  if (body.size() < at + 8) return 0;
  std::uint64_t id = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    id |= static_cast<std::uint64_t>(static_cast<std::uint8_t>(body[at + i])) << (8 * i);
  }
  return id;
}

std::optional<std::uint64_t> peek_publish_session_id(std::string_view body) noexcept {
  if (body.size() < 8) return std::nullopt;
  std::uint64_t id = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    id |= static_cast<std::uint64_t>(static_cast<std::uint8_t>(body[i])) << (8 * i);
  }
  return id;
}

std::optional<std::uint8_t> peek_tag_version(std::string_view tag) noexcept {
  if (tag.size() != kTagSize || std::memcmp(tag.data(), kTagMagic, sizeof kTagMagic) != 0) {
    return std::nullopt;
  }
  return static_cast<std::uint8_t>(tag[3]);
}

bool is_command_frame(std::string_view frame, Command command) noexcept {
  return frame.size() == 1 &&
         static_cast<std::uint8_t>(frame[0]) == static_cast<std::uint8_t>(command);
}

std::size_t ack_body_bytes(const Ack& ack) noexcept {
  std::size_t bytes = kAckFixedBytes;
  for (const auto& entry : ack.entries) bytes += kAckEntryFixedBytes + entry.reason.size();
  return bytes;
}

std::size_t max_message_bytes_in_frame(const Limits& limits) noexcept {
  // One message alone in a PUBLISH: the batch header, msg_id and topic at
  // their longest, the key and payload length fields; key, headers and payload
  // are what max_message_bytes counts.
  std::size_t overhead =
      8 + 8 + 4 + (2 + limits.max_msg_id_bytes) + (2 + limits.max_name_bytes) + 2 + 4;
  return limits.max_body_bytes > overhead ? limits.max_body_bytes - overhead : 0;
}

std::string encode_header_block(std::span<const Header> headers) {
  std::string out;
  put_headers(out, headers);
  return out;
}

Result<std::vector<Header>> decode_header_block(std::string_view encoded, const Limits& limits) {
  if (encoded.empty()) return std::vector<Header>{};
  Reader in(encoded, limits);
  auto headers = read_headers(in);
  in.expect_end();
  if (in.failed()) {
    auto error = in.take_error();
    error.message = "headers: " + error.message;
    return error;
  }
  return headers;
}

std::optional<std::string_view> header_value(std::span<const Header> headers,
                                             std::string_view name) noexcept {
  for (const auto& header : headers) {
    if (header.name == name) return std::string_view(header.value);
  }
  return std::nullopt;
}

}  // namespace wire
