// Where a relay delivers messages. The relay's loop (lease, ordering,
// batching, retries, dead letters, status) is the same for every destination;
// a Sink only knows how to open a session with one destination, send batches
// on it in order, and report the outcome of each message.
//
// Contract a sink must keep for the relay's ordering guarantee:
// - Batches sent on one session are applied by the destination in send order.
// - After a batch fails (SinkEvent::Kind::failed), nothing later of the same
//   session is stored: the relay opens a new session and resends from the
//   first unacknowledged message.
// - After a message is refused permanently (conflict, rejected), later
//   messages of the same (topic, key) in the same session are not stored
//   either; they come back as DeliveryStatus::blocked.
// - Nothing is sent under a lease the relay may have lost (see SinkLease).
//
// Thread safety: a Sink is used by the relay's one thread.
// Errors: transient problems (no answer, connection refused, destination
// busy) are values (SinkEvent failed, open_session() returning a failed
// SessionResult); exceptions are for configuration errors found at construction.
// A destination that answers but can never take the relay's messages as
// configured (a JetStream stream that does not exist, a duplicate window
// shorter than the relay's retry horizon) is not transient: open_session()
// or send() throw SinkRefusal, and Relay::run() releases its lease and
// lets it propagate, so the program stops with a clear error instead of
// retrying forever.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "outbox/relay_store.hpp"

namespace relay {

enum class DeliveryStatus : std::uint8_t {
  stored,     // newly stored; `offset` is where
  duplicate,  // already stored before (a resend); `offset` is the original
  conflict,   // the msg_id is stored with a different payload (permanent)
  rejected,   // refused permanently; `reason` says why
  blocked,    // not stored because an earlier message of its key failed in this
              // session; send it again in a new session (transient)
};

const char* to_string(DeliveryStatus status) noexcept;

// The destination refuses the relay's configuration for good; retrying cannot help.
class SinkRefusal : public std::runtime_error {
 public:
  enum class Reason : std::uint8_t {
    not_found,     // the named destination (stream, subject) does not exist
    incompatible,  // it exists but cannot keep the relay's guarantee as configured
  };
  SinkRefusal(Reason reason, const std::string& message)
      : std::runtime_error(message), reason_(reason) {}
  Reason reason() const noexcept { return reason_; }

 private:
  Reason reason_;
};

// What a destination can take, as it announced when the session opened
// (outbox-broker's WELCOME). The relay checks every message against these
// before sending: a message that breaks one can never be delivered and becomes
// dead on its own, instead of failing the batch it would travel in. 0 means
// "no limit known" for that field.
struct SinkLimits {
  std::size_t max_batch_messages = 0;
  std::size_t max_batch_bytes = 0;  // one batch, counted with message_bytes() (+ 20 bytes)
  std::size_t max_msg_id_bytes = 0;
  std::size_t max_topic_bytes = 0;
  std::size_t max_key_bytes = 0;
  std::size_t max_headers = 0;  // per message
  std::size_t max_header_name_bytes = 0;
  std::size_t max_header_value_bytes = 0;
  std::size_t max_payload_bytes = 0;
  std::size_t max_message_bytes = 0;  // key + encoded headers + payload (message_size())
};

// Bytes `message` takes in a batch: its size in an outbox-broker PUBLISH
// body (docs/protocol.md). The relay cuts batches by this for every sink.
std::size_t message_bytes(const outbox::PendingMessage& message);
// Key + header block + payload as the broker counts them against
// max_message_bytes.
std::size_t message_size(const outbox::PendingMessage& message);

// Why `message` can never be delivered under `limits`, in one line naming
// the field, its size and the limit (or the format rule it breaks); empty when
// it can be sent. Checks the row's own format too (a malformed headers blob, a
// msg_id outside printable ASCII), whatever the limits.
std::optional<std::string> undeliverable_reason(const outbox::PendingMessage& message,
                                                const SinkLimits& limits);

// A field of a row any program may have written (msg_id, topic, key), safe
// for a one-line log or text output: bytes outside printable ASCII (and the
// backslash) as \xNN, cut after `max` bytes with the full size named.
std::string printable_field(std::string_view text, std::size_t max = 80);

struct Delivery {
  DeliveryStatus status = DeliveryStatus::stored;
  std::uint64_t offset = 0;
  std::string reason;
};

// The relay lease the sink sends under. A destination that can fence (the
// broker) carries origin and epoch in its session and refuses sends from an
// older epoch than it has seen for the origin; one that cannot (JetStream)
// calls `still_valid` immediately before each publish and publishes nothing
// once it returns false, failing the session. After any failed session the
// relay checks its lease before it sends again.
struct SinkLease {
  std::string origin;  // the outbox database's origin id (RelayStore::origin_id())
  std::int64_t epoch = 0;
  std::function<bool()> still_valid;  // called on the relay's thread; empty: always
};

// The outcome of Sink::open_session(): the session is open, or it is not and
// error() says why in one line (no answer in time, the destination refused
// the session). A value, not an exception: a destination that is away is an
// outcome the relay expects, and it retries.
class SessionResult {
 public:
  static SessionResult opened() { return SessionResult(); }
  static SessionResult failed(std::string error) { return SessionResult(std::move(error)); }

  bool ok() const noexcept { return !error_.has_value(); }
  explicit operator bool() const noexcept { return ok(); }
  // Why the session did not open; only when !ok().
  const std::string& error() const { return error_.value(); }

 private:
  SessionResult() = default;
  explicit SessionResult(std::string error) : error_(std::move(error)) {}
  std::optional<std::string> error_;
};

struct SinkEvent {
  enum class Kind : std::uint8_t {
    acked,    // `deliveries` has one entry per message of the batch, in order
    failed,   // the batch (and so the session) failed; `error` says why
    resumed,  // the answer to resume() is complete (see Sink::resume)
  };
  Kind kind = Kind::acked;
  std::uint64_t batch_id = 0;
  std::vector<Delivery> deliveries;
  std::string error;
};

class Sink {
 public:
  virtual ~Sink() = default;

  // The lease for the sessions opened from now on; the relay sets it each
  // time it takes the lease, before open_session().
  virtual void set_lease(SinkLease lease) = 0;

  // Opens a fresh session, forgetting everything in flight on the old one.
  // Fails (a value, see SessionResult) when the destination cannot be
  // reached in `timeout` or refuses the session.
  virtual SessionResult open_session(std::chrono::milliseconds timeout) = 0;

  // Right after open_session(), when the previous session ended with batches
  // unacknowledged: asks the destination which of them, from `first_batch_id`
  // on, it stored. True when asked: poll() then returns the acknowledgements
  // of the batches it stored (consecutive, from `first_batch_id`, under their
  // own batch ids), then one event of kind `resumed`; the relay resends from
  // the first batch not acknowledged, and sends nothing before that event.
  // False (the default: a destination that cannot tell): resend everything.
  virtual bool resume(std::uint64_t first_batch_id) {
    (void)first_batch_id;
    return false;
  }

  // Starts opening the next session without waiting (under the lease set
  // last), so that a caller forwarding many databases from one thread has
  // their handshakes in flight together; open_session() then finishes it.
  // False when the sink cannot (the default): open_session() does it all.
  virtual bool prepare_session() { return false; }

  // After prepare_session() returned true: whether the destination has
  // answered (or the attempt failed), so that open_session() returns
  // without waiting. A caller stepping many relays on one thread asks this
  // first and looks again later rather than wait in open_session(), which
  // would hold up every other relay while the destination is away. True by
  // default (a sink that prepares nothing never waits for an answer).
  virtual bool session_answered() const { return true; }

  // Queues a batch on the open session without waiting for its outcome.
  // False if the sink cannot take it now (queue full); nothing was sent.
  virtual bool send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) = 0;

  // The next outcome, waiting up to `timeout`; empty if none arrived.
  virtual std::optional<SinkEvent> poll(std::chrono::milliseconds timeout) = 0;

  // For logs: "broker tcp://127.0.0.1:7750".
  virtual std::string describe() const = 0;

  // The limits of the open session's destination (after open_session()
  // succeeded); the default knows none.
  virtual SinkLimits limits() const { return {}; }
};

}  // namespace relay
