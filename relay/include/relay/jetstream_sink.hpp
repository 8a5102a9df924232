// The Sink for NATS JetStream: one NATS connection per relay session (for
// many databases over one connection, SharedJetStreamConnection below),
// asynchronous publishes with `Nats-Msg-Id` set to the msg_id, so JetStream
// answers a resend inside the stream's duplicate window as a duplicate.
//
//   relay::JetStreamSink sink({.url = "nats://127.0.0.1:4222", .stream = "ORDERS",
//                              .retry_horizon = std::chrono::seconds(52)});
//
// Subjects: a message goes to `<prefix>.<topic>.<key>` (just `<topic>.<key>`
// when the prefix is empty). Topic and key are each one subject token: bytes
// other than A-Z a-z 0-9 '-' '_' are written as %XX (upper-case hex), so
// '.', '*', '>', spaces and '%' never change the subject's shape. A message
// without a key uses the token `_` (a key that is exactly "_" is written %5F,
// an empty key %). subject_for() and decode_subject_token() are the mapping.
//
// At the start of every session the sink reads the stream's configuration:
// a stream that does not exist throws SinkRefusal(not_found); a duplicate
// window shorter than `retry_horizon` throws SinkRefusal(incompatible) unless
// `allow_short_dedup_window`. A message whose subject none of the stream's
// subjects covers throws SinkRefusal(not_found) from send(), before anything
// of its batch is published.
//
// Outcomes: a PubAck is stored (offset = stream sequence) or, with
// Duplicate=true, duplicate (offset = the original's sequence). A message
// whose headers and payload (nats_message_size()) are above the server's
// max_payload or the stream's max message size is rejected before anything
// of it is published, as is a
// header NATS cannot carry, is rejected; later messages of its (topic, key)
// in the same session come back blocked. Any other publish error, a lost
// connection and (through the relay's ack timeout) a missing PubAck fail the
// batch; the relay then opens a new session (a new connection) and resends
// from the first unacknowledged message with the same msg_ids.
//
// Fencing: JetStream cannot refuse a stale relay, so the sink asks the
// relay's lease (SinkLease::still_valid) immediately before each publish and
// fails the session instead of publishing once it ran out; docs/jetstream.md
// states the window that remains.
//
// Ownership: owns its NATS connection. Thread safety: used by one thread;
// PubAcks arrive on a libnats thread and are handed over through a queue.
// Errors: SinkRefusal as above; std::invalid_argument from the constructor
// for an empty URL or stream name; everything else is a value.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "relay/relay.hpp"
#include "relay/shared_connection.hpp"
#include "relay/sink.hpp"

namespace spdlog {
class logger;
}

namespace relay {

struct JetStreamSinkOptions {
  // One NATS URL, or several comma-separated (the nodes of a cluster), tried in turn.
  std::string url = "nats://127.0.0.1:4222";
  std::string stream;  // required: the stream the messages must land in
  std::string subject_prefix = "outbox";
  std::string client_name = "outbox-relay";  // shown by the server's monitoring
  // Most messages, and bytes (nats_message_size(); 0: no bound), published
  // and not yet acknowledged per session (the relay's credit, batch size ×
  // batches in flight, already bounds this).
  std::size_t max_pending = 8000;
  std::size_t max_pending_bytes = 0;
  // How often libnats pings the server; a server that misses two PONGs is
  // taken for gone (the connection closes, its sessions fail). 0: libnats'
  // default (2 minutes).
  std::chrono::milliseconds ping_interval{0};
  // The longest time between a message's first publish and a resend of it
  // (see docs/jetstream.md); the stream's duplicate window must cover it.
  std::chrono::milliseconds retry_horizon{0};
  bool allow_short_dedup_window = false;
  std::shared_ptr<spdlog::logger> logger;  // null: a null sink
};

class JetStreamSink final : public Sink {
 public:
  explicit JetStreamSink(JetStreamSinkOptions options);
  ~JetStreamSink() noexcept override;
  JetStreamSink(const JetStreamSink&) = delete;
  JetStreamSink& operator=(const JetStreamSink&) = delete;

  void set_lease(SinkLease lease) override;
  SessionResult open_session(std::chrono::milliseconds timeout) override;
  bool send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) override;
  std::optional<SinkEvent> poll(std::chrono::milliseconds timeout) override;
  std::string describe() const override;

  // The stream's duplicate window as read by the last session (0 before).
  std::chrono::nanoseconds duplicate_window() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One NATS connection carrying the sessions of many outbox databases
// (outbox-relay run --db-dir DIR --sink jetstream): each database gets its
// own Sink through channel(), which behaves as JetStreamSink does for that
// database alone: its own session, batches, failures, refused keys and lease
// check before each publish.
//
//   relay::SharedJetStreamConnection connection({.sink = {.url = url, .stream = "ORDERS"}});
//   auto sink = connection.channel(7);   // a Sink for one database
//
// The connection is made by the first channel that opens a session and
// shared by every later session; the stream's configuration is read once per
// connection (again after a publish found no stream). When libnats reports it
// lost (its disconnected or closed callback; reconnecting inside libnats is
// off, as for JetStreamSink), the session of every channel on it fails, each
// database resends from its first unacknowledged message, and the next
// session makes a new connection. While a connect fails, other channels'
// open_session() fail at once with the same error for one connect timeout
// instead of each waiting for it in turn. All channels publish through one
// JetStream context: one subscription for every PubAck, routed to its
// channel by the message it answers.
//
// Bounds: sink.max_pending and sink.max_pending_bytes per channel, and
// max_total_pending and max_total_pending_bytes over all channels: send()
// returns false (the relay sends it after acknowledgements) beyond either;
// a channel with nothing pending is held back only by the total.
//
// PubAcks arrive on libnats' threads: readable() is an eventfd that becomes
// readable when a channel has an outcome for its poll(); pump() clears it and
// has_events() says which channel.
//
// Ownership: owns its connection; channels share its state and may outlive
// it. Thread safety: the connection and its channels on one thread.
// Errors: as JetStreamSink (std::invalid_argument from the constructor,
// SinkRefusal from a channel's open_session() or send()).
struct SharedJetStreamOptions {
  JetStreamSinkOptions sink;  // its max_pending and max_pending_bytes apply per channel
  std::size_t max_total_pending = 65536;
  std::size_t max_total_pending_bytes = std::size_t{64} << 20;  // 0: no bound
};

class SharedJetStreamConnection final : public SharedConnection {
 public:
  explicit SharedJetStreamConnection(SharedJetStreamOptions options);
  ~SharedJetStreamConnection() noexcept override;
  SharedJetStreamConnection(const SharedJetStreamConnection&) = delete;
  SharedJetStreamConnection& operator=(const SharedJetStreamConnection&) = delete;

  std::unique_ptr<Sink> channel(std::uint32_t slot) override;
  std::size_t pump(std::chrono::milliseconds timeout) override;
  bool has_events(std::uint32_t slot) const override;
  Readable readable() override;
  std::string describe() const override;

  // The stream's duplicate window as last read (0 before).
  std::chrono::nanoseconds duplicate_window() const;
  // Closes the connection (failing every session on it); the next session
  // makes a new one.
  void reconnect_next_session();

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// The longest time the relay may take between publishing a message and
// resending it while the destination answers: a lost PubAck is noticed after
// ack_timeout, the next session starts after at most backoff.max and opens
// within connect_timeout; if the relay dies instead, a standby takes over
// within lease_ttl. The sum bounds one such round:
//   ack_timeout + connect_timeout + backoff.max + lease_ttl
// A destination unreachable for longer than the window is not covered by any
// setting: size the stream's duplicate window for the outages to ride out.
std::chrono::milliseconds retry_horizon(const RelayConfig& config);

// The subject a message is published on (see above).
std::string subject_for(std::string_view prefix, std::string_view topic,
                        const std::optional<std::string>& key);

// One subject token back to the topic or key it came from; empty for the
// no-key token `_` or a malformed token.
std::optional<std::string> decode_subject_token(std::string_view token);

// Whether a NATS subject pattern ('*' one token, '>' the rest) covers `subject`.
bool subject_matches(std::string_view pattern, std::string_view subject);

// The bytes nats-server counts against its max_payload and a stream's max
// message size for this message as the sink publishes it: the header block
// ("NATS/1.0\r\n", "Name: value\r\n" per header including Nats-Msg-Id,
// "\r\n") plus the payload. The subject is not counted.
std::size_t nats_message_size(const outbox::PendingMessage& message);

}  // namespace relay
