// What a producer puts into the outbox, and what comes back from enqueue.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace outbox {

struct Header {
  std::string name{};
  std::string value{};
  friend bool operator==(const Header&, const Header&) = default;
};
using Headers = std::vector<Header>;

// One message to publish. Only `topic` and `payload` are required.
//
//   tx.enqueue({.topic = "orders", .key = order_id, .payload = json});
struct Message {
  // Broker topic; must not be empty.
  std::string topic{};
  // Partition key: messages with the same (topic, key) reach the broker in
  // commit order. Empty means "no key" (stored as NULL).
  std::string key{};
  // Opaque bytes (binary safe), at most Options::max_payload_bytes.
  std::string payload{};
  // Optional name/value pairs, forwarded with the message.
  Headers headers{};
  // Idempotency key. Empty: the library generates one (a snowflake id by
  // default, see Options::id_kind). Give your own when the message stands for
  // a business event that already has a unique key, so that re-running the
  // same business operation cannot publish it twice. 1-255 bytes of printable
  // ASCII without spaces ('!'..'~'); the topic is 1-249 of [A-Za-z0-9._-] and
  // the key at most 4,096 bytes (docs/schema.md): enqueue() refuses others.
  std::string msg_id{};
  // W3C trace context (https://www.w3.org/TR/trace-context/) of the operation
  // that enqueues the message, e.g. of the current span: stored as the headers
  // `traceparent` and `tracestate`, which the relay, the broker and the
  // JetStream sink carry unchanged and consumers read back (wire::header_value,
  // `outbox-broker tail --json`). Plain strings: no tracing SDK needed here.
  // Empty: none. enqueue() refuses a traceparent that is not
  // "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>" (lowercase, ids not
  // all zeros), a tracestate over 512 bytes or without a traceparent, and
  // either one given both here and in `headers`.
  std::string traceparent{};
  std::string tracestate{};
};

inline constexpr std::string_view kTraceparentHeader = "traceparent";
inline constexpr std::string_view kTracestateHeader = "tracestate";
inline constexpr std::size_t kMaxTracestateBytes = 512;  // the W3C limit
// True for a version-00 traceparent as described at Message::traceparent.
bool valid_traceparent(std::string_view text);

// The W3C trace context a received message carries, for a consumer's handler
// to continue the producer's trace (e.g. as the parent of its own span).
// Both empty: the message carries none.
struct TraceContext {
  std::string traceparent{};
  std::string tracestate{};

  bool empty() const noexcept { return traceparent.empty(); }
  friend bool operator==(const TraceContext&, const TraceContext&) = default;
};

// The trace context from the values of a message's `traceparent` and
// `tracestate` headers. They come from other processes, so they are checked
// as W3C Trace Context asks of a receiver: a traceparent that is not valid
// (valid_traceparent) gives an empty context, and a tracestate over
// kMaxTracestateBytes is dropped.
TraceContext trace_context(std::string_view traceparent, std::string_view tracestate);

// The same from a message's header list: any range of headers with `name` and
// `value` members, such as outbox::Headers or wire::StoredMessage::headers.
// The first header of each name counts.
template <class HeaderRange>
TraceContext trace_context_of(const HeaderRange& headers) {
  std::string_view traceparent, tracestate;
  bool have_traceparent = false, have_tracestate = false;
  for (const auto& header : headers) {
    if (!have_traceparent && header.name == kTraceparentHeader) {
      traceparent = header.value;
      have_traceparent = true;
    } else if (!have_tracestate && header.name == kTracestateHeader) {
      tracestate = header.value;
      have_tracestate = true;
    }
  }
  return trace_context(traceparent, tracestate);
}

// A received message the inbox can take as it is: a msg_id and a header list
// (wire::StoredMessage, or a consumer's own type with these members).
template <class T>
concept ReceivedMessage = requires(const T& message) {
  { message.msg_id } -> std::convertible_to<const std::string&>;
  trace_context_of(message.headers);
};

enum class EnqueueStatus : std::uint8_t {
  inserted,   // the message is part of the transaction
  duplicate,  // a message with this msg_id is already in the outbox; nothing inserted
};

struct EnqueueResult {
  EnqueueStatus status = EnqueueStatus::inserted;
  // The msg_id used: the caller's, or the generated one.
  std::string msg_id{};
  // Position in the outbox (commit order); 0 for a duplicate.
  std::int64_t seq = 0;

  bool inserted() const { return status == EnqueueStatus::inserted; }
  bool duplicate() const { return status == EnqueueStatus::duplicate; }
};

// The `headers` column format (docs/schema.md, "The headers blob"): for each
// header, a 4-byte big-endian name length, the name, a 4-byte big-endian value
// length, the value. No headers is stored as NULL. Not the wire protocol's
// header block (wire::encode_header_block), which is laid out differently.
std::string encode_headers_blob(const Headers& headers);
// Throws outbox::Error if the bytes are not in that format.
Headers decode_headers_blob(std::string_view bytes);

// The names of earlier releases.
[[deprecated("renamed outbox::encode_headers_blob")]] inline std::string encode_headers(
    const Headers& headers) {
  return encode_headers_blob(headers);
}
[[deprecated("renamed outbox::decode_headers_blob")]] inline Headers decode_headers(
    std::string_view bytes) {
  return decode_headers_blob(bytes);
}

}  // namespace outbox
