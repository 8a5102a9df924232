// The wire protocol spoken between the broker (a ZeroMQ ROUTER) and its clients
// (relays, consumers and tools, each a DEALER). docs/protocol.md describes every
// byte; this header is the C++ view of the same thing.
//
// Every message is three ZeroMQ frames: a 4-byte protocol tag with the version,
// a 1-byte command, and a little-endian binary body with explicit lengths. The
// `encode_*` functions build bodies; `decode` turns received frames into one of
// the command structs. Decoders never throw on what a peer sent: every length
// and count is checked against the bytes present and against `Limits`, and a
// bad frame comes back as an `Error` value naming what was wrong.
//
// Thread-safety: all functions are pure; the structs are plain values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace wire {

// Frame 0 is 'O' 'B' 'X' followed by the version byte.
// Version 2 added the origin and lease epoch to HELLO; a broker answers a
// version 1 peer with ERROR unsupported_version in a version 1 frame, whose
// ERROR layout is the same.
inline constexpr std::uint8_t kProtocolVersion = 2;
inline constexpr std::size_t kTagSize = 4;
inline constexpr char kTagMagic[3] = {'O', 'B', 'X'};

enum class Command : std::uint8_t {
  hello = 0x01,             // client -> broker: open a session
  welcome = 0x02,           // broker -> client: session opened, broker limits
  publish = 0x03,           // client -> broker: a batch of messages
  ack = 0x04,               // broker -> client: one outcome per message of a batch
  fetch = 0x05,             // client -> broker: read a topic from an offset (long-poll)
  messages = 0x06,          // broker -> client: the answer to FETCH
  commit_offset = 0x07,     // client -> broker: a consumer group is done up to an offset
  offset_committed = 0x08,  // broker -> client: the answer to COMMIT_OFFSET
  ping = 0x09,
  pong = 0x0A,
  stats = 0x0B,        // client -> broker: ask for counters
  stats_reply = 0x0C,  // broker -> client: counters and per-topic figures
  error = 0x0D,        // either way: a request could not be served
  resume = 0x0E,       // client -> broker: which batches of my previous session were stored?
  resumed = 0x0F,      // broker -> client: the answer to RESUME, the ACKs of those batches
};

std::string_view command_name(Command command) noexcept;

// Why a frame could not be decoded, or why the broker refused a request.
// Values are part of the protocol (ERROR body); never renumber.
enum class ErrorCode : std::uint16_t {
  none = 0,
  bad_frame_count = 1,      // not exactly tag, command, body
  bad_tag = 2,              // frame 0 is not "OBX" + version
  unsupported_version = 3,  // right magic, a version this side does not speak
  unknown_command = 4,      // command byte not in the table
  truncated = 5,            // a length or count points past the end of the body
  trailing_bytes = 6,       // the body is longer than its fields
  limit_exceeded = 7,       // a length or count above the configured maximum
  invalid_value = 8,        // a field holds a value outside its domain
  unexpected_command = 9,   // well-formed, but not one this side accepts
  no_session = 10,          // PUBLISH before HELLO
  session_failed = 11,      // a previous batch of the session failed; send HELLO again
  storage_failure = 12,     // the broker could not make the batch durable
  shutting_down = 13,       // the broker is stopping; retry elsewhere or later
  busy = 14,                // too many pending requests; retry later
  internal = 15,
  stale_epoch = 16,  // HELLO or PUBLISH under a lease epoch older than one the broker has
                     // seen for the same origin: another relay holds that outbox's lease
  // Never sent on the wire: a client-side "no reply within the deadline".
  timeout = 100,
  // Never sent on the wire: the client's connection to the broker broke (its
  // session and every reply still owed on it are gone).
  disconnected = 101,
};

std::string_view error_code_name(ErrorCode code) noexcept;

// Maximums a decoder enforces on top of the bytes present. Both ends may use
// different values; the broker announces its own in WELCOME.
struct Limits {
  std::size_t max_body_bytes = 64u << 20;    // one frame
  std::size_t max_batch_messages = 100'000;  // messages in PUBLISH or MESSAGES
  std::size_t max_msg_id_bytes = 255;        // also: header name
  std::size_t max_name_bytes = 255;          // topic, consumer group, producer, broker name
  std::size_t max_key_bytes = 4096;          // partition key
  std::size_t max_headers = 64;              // per message
  std::size_t max_header_value_bytes = 65'535;
  std::size_t max_payload_bytes = 16u << 20;  // per message
  std::size_t max_reason_bytes = 4096;        // REJECTED reason, ERROR message
  std::size_t max_stats_entries = 100'000;    // counters + topics in STATS_REPLY
};

// A decoding failure or a refusal reported by the peer.
struct Error {
  ErrorCode code = ErrorCode::none;
  std::string message;  // one line naming what was wrong
};

// A value or an Error; what every decoder returns.
template <typename T>
class Result {
 public:
  Result(T value) : state_(std::move(value)) {}      // NOLINT: implicit on purpose
  Result(Error error) : state_(std::move(error)) {}  // NOLINT
  bool ok() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & { return std::get<0>(state_); }
  const T& value() const& { return std::get<0>(state_); }
  T&& value() && { return std::get<0>(std::move(state_)); }
  const Error& error() const { return std::get<1>(state_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Error> state_;
};

using Bytes = std::string;  // payloads are arbitrary bytes; std::string owns them cheaply

struct Header {
  std::string name;
  Bytes value;
  bool operator==(const Header&) const = default;
};

// ---- commands -------------------------------------------------------------

inline constexpr std::uint32_t kHelloOneOfSeveral = 1;
inline constexpr std::uint32_t kHelloWithId = 2;

struct Hello {
  std::string producer;  // who is publishing (for logs and stats), may be empty
  // Bit 0 (kHelloOneOfSeveral): this session is one of several on the
  // connection, one per origin; it replaces only the connection's session for
  // the same origin (needs an origin). Without it a HELLO replaces every
  // session of the connection. Bit 1 (kHelloWithId): the body ends with
  // hello_id, and the answer names it (WELCOME's hello_id, ERROR's
  // request_id), so that a client with several HELLOs in flight on one
  // connection matches answers exactly. Other bits: reserved, 0.
  std::uint32_t flags = 0;
  // The producer database this session forwards (its origin id, outbox_meta
  // 'origin_id') and the relay's lease epoch for it. The broker refuses
  // sessions and batches whose epoch is below the highest it has seen for
  // the origin. Empty origin: not fenced (tools, consumers).
  std::string origin;
  std::uint64_t epoch = 0;
  std::uint64_t hello_id = 0;  // with kHelloWithId: chosen by the client, not 0
  bool operator==(const Hello&) const = default;
};

// The session id and the broker's limits: a client checks each message
// against them before sending, so that one message the broker can never take
// does not cost a whole batch (docs/protocol.md, WELCOME).
struct Welcome {
  std::uint64_t session_id = 0;
  std::uint32_t max_message_bytes = 0;   // key + encoded headers + payload above this: REJECTED
  std::uint32_t max_batch_messages = 0;  // largest PUBLISH the broker decodes
  std::string broker_name;
  // Decoder limits: a PUBLISH breaking one of them is malformed and fails the
  // whole session, so a client never sends such a message.
  std::uint32_t max_body_bytes = 0;  // one frame (a whole PUBLISH body)
  std::uint32_t max_msg_id_bytes = 0;
  std::uint32_t max_name_bytes = 0;  // topic
  std::uint32_t max_key_bytes = 0;
  std::uint32_t max_headers = 0;  // per message
  std::uint32_t max_header_name_bytes = 0;
  std::uint32_t max_header_value_bytes = 0;
  std::uint32_t max_payload_bytes = 0;
  // The hello_id of the HELLO it answers when that HELLO had kHelloWithId;
  // 0: not on the wire (a HELLO without it, or a broker older than it).
  std::uint64_t hello_id = 0;
  bool operator==(const Welcome&) const = default;
};

// The WELCOME a broker decoding with `limits` announces (values above 2^32 - 1
// are announced as 2^32 - 1).
Welcome welcome_for(std::uint64_t session_id, std::size_t max_message_bytes,
                    std::string broker_name, const Limits& limits);

struct OutgoingMessage {
  std::string msg_id;
  std::string topic;
  std::string key;  // partition key, may be empty
  std::vector<Header> headers;
  Bytes payload;
  bool operator==(const OutgoingMessage&) const = default;
};

struct Publish {
  std::uint64_t session_id = 0;  // from WELCOME
  std::uint64_t batch_id = 0;    // chosen by the client, echoed in ACK
  std::vector<OutgoingMessage> messages;
  bool operator==(const Publish&) const = default;
};

enum class AckStatus : std::uint8_t {
  stored = 0,     // offset: where it was stored
  duplicate = 1,  // offset: where the first copy was stored
  conflict = 2,   // msg_id already stored with a different payload
  rejected = 3,   // permanent refusal; reason says why
  blocked = 4,    // not applied: an earlier message with the same topic and key was
                  // refused (CONFLICT/REJECTED) in this session; resend in a new session
};

std::string_view ack_status_name(AckStatus status) noexcept;

struct AckEntry {
  AckStatus status = AckStatus::stored;
  std::uint64_t offset = 0;  // meaningful for stored and duplicate (and conflict: the original)
  std::string reason;        // meaningful for rejected and conflict
  bool operator==(const AckEntry&) const = default;
};

struct Ack {
  std::uint64_t batch_id = 0;
  std::vector<AckEntry> entries;  // one per message of the batch, same order
  bool operator==(const Ack&) const = default;
};

// Sent in a new session after the connection of the previous one broke:
// asks for the acknowledgements of the previous session's batches from
// `from_batch_id` on that the broker stored durably, so that the client
// resends only what was not stored (docs/protocol.md, RESUME).
struct Resume {
  std::uint64_t session_id = 0;           // the session this is sent in (from WELCOME)
  std::uint64_t previous_session_id = 0;  // the session whose batches are in doubt
  std::uint64_t from_batch_id = 0;        // its first unacknowledged batch
  bool operator==(const Resume&) const = default;
};

// The ACKs of consecutive batches of the previous session from
// `from_batch_id` on, as the broker sent (or would have sent) them: every
// batch listed was stored durably; the first batch not listed and everything
// after it must be resent. Empty when the broker holds none of them.
struct Resumed {
  std::uint64_t previous_session_id = 0;
  std::vector<Ack> acks;
  bool operator==(const Resumed&) const = default;
};

// Offset 0 in `from_offset` with `use_group_offset` set means "resume where the
// group left off"; offsets start at 1 in every topic.
struct Fetch {
  std::uint64_t request_id = 0;
  std::string topic;
  std::string group;  // may be empty (no group)
  std::uint64_t from_offset = 0;
  bool use_group_offset = false;
  std::uint32_t max_messages = 0;
  std::uint32_t max_bytes = 0;  // soft limit on the payload bytes of one reply, 0: broker default
  std::uint32_t wait_ms = 0;    // long-poll: wait up to this long for the first message
  bool operator==(const Fetch&) const = default;
};

struct StoredMessage {
  std::uint64_t offset = 0;
  std::int64_t timestamp_ms = 0;  // when the broker stored it (Unix ms)
  std::string msg_id;
  std::string key;
  std::vector<Header> headers;
  Bytes payload;
  bool operator==(const StoredMessage&) const = default;
};

struct Messages {
  std::uint64_t request_id = 0;
  std::string topic;
  std::uint64_t next_offset = 0;  // where the next FETCH should start
  std::uint64_t last_offset = 0;  // the topic's newest offset (0: empty topic)
  std::vector<StoredMessage> messages;
  bool operator==(const Messages&) const = default;
};

// `offset` is the last offset the group has processed; a consumer that resumes
// with FETCH use_group_offset starts at offset + 1.
struct CommitOffset {
  std::uint64_t request_id = 0;
  std::string topic;
  std::string group;
  std::uint64_t offset = 0;
  bool operator==(const CommitOffset&) const = default;
};

struct OffsetCommitted {
  std::uint64_t request_id = 0;
  std::string topic;
  std::string group;
  std::uint64_t offset = 0;
  bool operator==(const OffsetCommitted&) const = default;
};

struct Ping {
  std::uint64_t nonce = 0;
  bool operator==(const Ping&) const = default;
};

struct Pong {
  std::uint64_t nonce = 0;
  bool operator==(const Pong&) const = default;
};

struct StatsRequest {
  std::uint64_t request_id = 0;
  bool operator==(const StatsRequest&) const = default;
};

struct TopicStats {
  std::string topic;
  std::uint64_t message_count = 0;
  std::uint64_t last_offset = 0;
  bool operator==(const TopicStats&) const = default;
};

// Counters are named so either side can add some without a version change.
struct StatsReply {
  std::uint64_t request_id = 0;
  std::vector<std::pair<std::string, std::uint64_t>> counters;
  std::vector<TopicStats> topics;
  bool operator==(const StatsReply&) const = default;
};

struct ErrorReply {
  std::uint64_t request_id = 0;  // batch id or request id it answers; 0 when unknown
  ErrorCode code = ErrorCode::internal;
  std::string message;
  bool operator==(const ErrorReply&) const = default;
};

using AnyMessage =
    std::variant<Hello, Welcome, Publish, Ack, Fetch, Messages, CommitOffset, OffsetCommitted, Ping,
                 Pong, StatsRequest, StatsReply, ErrorReply, Resume, Resumed>;

Command command_of(const AnyMessage& message) noexcept;

// ---- encoding -----------------------------------------------------------------

// The three frames of one message. Encoding never fails for values within
// Limits; strings longer than a length field can hold are a programming error
// and throw std::length_error.
struct Frames {
  std::string tag;
  std::string command;
  std::string body;
};

std::string encode_tag(std::uint8_t version = kProtocolVersion);
std::string encode_body(const AnyMessage& message);
Frames encode(const AnyMessage& message);

// Appends one PUBLISH message to a body under construction; lets a client
// build a batch without copying messages into a Publish first. Call
// `begin_publish_body` first and `finish_publish_body` with the count at the end.
void begin_publish_body(std::string& body, std::uint64_t session_id, std::uint64_t batch_id);
void append_publish_message(std::string& body, std::string_view msg_id, std::string_view topic,
                            std::string_view key, std::span<const Header> headers,
                            std::string_view payload);
void finish_publish_body(std::string& body, std::uint32_t message_count);

// Exact sizes on the wire, so that a client can cut batches by bytes and check
// a message against WELCOME's limits before encoding it.
inline constexpr std::size_t kPublishFixedBytes = 20;  // session id, batch id, count
// The header block of `count` headers whose names and values add up to `text_bytes`.
constexpr std::size_t header_block_bytes(std::size_t count, std::size_t text_bytes) {
  return 2 + count * 6 + text_bytes;
}
// One message of a PUBLISH body, given its field sizes and its header block.
constexpr std::size_t publish_message_bytes(std::size_t msg_id_bytes, std::size_t topic_bytes,
                                            std::size_t key_bytes, std::size_t header_block,
                                            std::size_t payload_bytes) {
  return 2 + msg_id_bytes + 2 + topic_bytes + 2 + key_bytes + header_block + 4 + payload_bytes;
}

// ---- decoding -----------------------------------------------------------------

// Checks frame 0. Distinguishes a foreign tag from a known tag with another version.
Result<std::uint8_t> decode_tag(std::string_view tag);
Result<Command> decode_command(std::string_view command);

// Decodes a body known to belong to `command`.
Result<AnyMessage> decode_body(Command command, std::string_view body, const Limits& limits = {});

// Decodes a whole multipart message (without any ROUTER routing id frame).
Result<AnyMessage> decode(std::span<const std::string_view> frames, const Limits& limits = {});

// ---- zero-copy PUBLISH ----------------------------------------------------------
// The broker's hot path: the same checks as decode_body(Command::publish), but
// the fields are views into `body`, which the caller keeps alive. `headers` is
// the encoded header block (count and entries) exactly as on the wire, so it
// can be stored verbatim and turned back into Headers with decode_header_block().
//
// A field above its limit in Limits (msg_id, topic, key, header count, name or
// value, payload) does not fail the batch when the frame itself is
// well-formed: the message comes back with `violation` set to the REJECTED
// reason (one of the kViolation* texts) and the caller refuses that message
// alone. decode_body(Command::publish) stays strict (limit_exceeded).
inline constexpr std::string_view kViolationMsgId = "invalid msg_id";
inline constexpr std::string_view kViolationTopic = "invalid topic";
inline constexpr std::string_view kViolationKey = "key too long";
inline constexpr std::string_view kViolationHeaders = "invalid headers";
inline constexpr std::string_view kViolationPayload = "too large";

struct MessageView {
  std::string_view msg_id;
  std::string_view topic;
  std::string_view key;
  std::string_view headers;
  std::string_view payload;
  std::string_view violation;  // empty: every field within its limit
};

struct PublishView {
  std::uint64_t session_id = 0;
  std::uint64_t batch_id = 0;
  std::vector<MessageView> messages;
};

Result<PublishView> decode_publish_view(std::string_view body, const Limits& limits = {});

// The id a request carries, read without decoding the rest of the body: the
// batch_id of PUBLISH, the request_id of FETCH, COMMIT_OFFSET and STATS, the
// nonce of PING. 0 for other commands or a body too short to hold it. Lets a
// receiver echo the id in the ERROR for a request it cannot decode.
std::uint64_t peek_request_id(Command command, std::string_view body) noexcept;
// The session id a PUBLISH body names (its bytes 0-7), read without decoding
// the rest; empty for a body too short to hold it. Lets a receiver fail the
// session of a PUBLISH it cannot decode.
std::optional<std::uint64_t> peek_publish_session_id(std::string_view body) noexcept;
// The version byte of a frame 0 that carries the OBX magic, whatever the
// version; empty for a frame that is no OBX tag. Lets a receiver answer a peer
// of another version in that peer's own version.
std::optional<std::uint8_t> peek_tag_version(std::string_view tag) noexcept;
// Whether a command frame names `command` (without checking anything else).
bool is_command_frame(std::string_view frame, Command command) noexcept;

// Exact size of an ACK body: batch id and count, then per message its status,
// offset and reason (str16).
inline constexpr std::size_t kAckFixedBytes = 12;
inline constexpr std::size_t kAckEntryFixedBytes = 11;
std::size_t ack_body_bytes(const Ack& ack) noexcept;

// The largest key + headers + payload that one PUBLISH frame of
// `limits.max_body_bytes` can carry (the batch header and the longest msg_id
// and topic take the rest). A receiver must not announce a larger
// max_message_bytes.
std::size_t max_message_bytes_in_frame(const Limits& limits) noexcept;

// The header block of one message (docs/protocol.md): u16 count, then per
// header str16 name and bytes32 value. An empty header list encodes as two
// zero bytes; an empty string_view decodes as no headers. Not the outbox's
// `headers` column (outbox::encode_headers_blob), which is laid out differently.
std::string encode_header_block(std::span<const Header> headers);
Result<std::vector<Header>> decode_header_block(std::string_view encoded,
                                                const Limits& limits = {});

// The names of earlier releases.
[[deprecated("renamed wire::encode_header_block")]] inline std::string encode_headers(
    std::span<const Header> headers) {
  return encode_header_block(headers);
}
[[deprecated("renamed wire::decode_header_block")]] inline Result<std::vector<Header>>
decode_headers(std::string_view encoded, const Limits& limits = {}) {
  return decode_header_block(encoded, limits);
}

// The value of the first header named exactly `name`, if any. W3C trace
// context travels as the headers "traceparent" and "tracestate", unchanged
// from the producer's commit to every consumer (docs/protocol.md, Trace
// context): header_value(message.headers, "traceparent").
std::optional<std::string_view> header_value(std::span<const Header> headers,
                                             std::string_view name) noexcept;

}  // namespace wire
