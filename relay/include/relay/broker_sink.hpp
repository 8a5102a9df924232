// The Sink for outbox-broker: one DEALER connection carries the session,
// PUBLISH batches pipelined on it, one ACK per batch. A broken connection
// (seen by broker::Client's socket monitor and heartbeats) comes out of
// poll() at once as a failed event, and every session opens on a fresh
// connection. Once a session is open, a second connection opens the next
// session ahead of need (HELLO sent, nothing else), so that after a broken
// connection the next open_session() costs no new socket and no handshake:
// the broker sees two sessions per relay, one of them idle. resume() sends
// RESUME naming the session the unacknowledged batches went out on, and the
// broker's RESUMED answer comes out of poll() as their ACKs and a `resumed`
// event (a broker without RESUME answers ERROR: nothing resumed).
//
//   relay::BrokerSink sink({.endpoint = "tcp://127.0.0.1:7750"});
//
// Ownership: owns its ZeroMQ contexts and sockets. Thread safety: one thread.
// Errors: the constructor throws outbox::Error of kind io for a malformed
// endpoint or unusable CURVE keys; everything the broker or the network does later is
// reported as values through the Sink interface.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "outbox/error.hpp"
#include "relay/shared_connection.hpp"
#include "relay/sink.hpp"

namespace relay {

struct BrokerCurveKeys {
  std::string server_public_key;  // the broker's public key, Z85 (40 characters)
  std::string client_secret_key;  // this relay's secret key, Z85; the public key is derived
};

struct BrokerSinkOptions {
  std::string endpoint = "tcp://127.0.0.1:7750";
  std::string producer = "outbox-relay";  // shown in the broker's logs
  std::optional<BrokerCurveKeys> curve;
  int send_high_water_mark = 64;  // batches queued in the socket
};

class BrokerSink final : public Sink {
 public:
  explicit BrokerSink(BrokerSinkOptions options);
  ~BrokerSink() noexcept override;

  void set_lease(SinkLease lease) override;
  SessionResult open_session(std::chrono::milliseconds timeout) override;
  bool resume(std::uint64_t first_batch_id) override;
  bool send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) override;
  std::optional<SinkEvent> poll(std::chrono::milliseconds timeout) override;
  std::string describe() const override;
  // From the broker's WELCOME (docs/protocol.md).
  SinkLimits limits() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One broker connection carrying the sessions of many outbox databases (the
// HELLO flag "one of several", docs/protocol.md): each database gets its own
// Sink through channel(), with its own session, origin and lease epoch, its
// own batch order, failures and fencing, as if it had the connection alone.
//
//   relay::SharedBrokerConnection connection({.endpoint = "tcp://127.0.0.1:7750"});
//   auto sink = connection.channel(7);   // a Sink for one database
//   relay::Relay relay(store, *sink, config);
//
// Replies are routed by batch id: a channel's batch ids go out with its slot
// in the high 32 bits (the relay's own ids stay below 2^32); WELCOMEs and
// refused HELLOs by the hello_id each HELLO carries and its answer names
// (with a broker older than hello ids: by the order of the HELLOs), each
// HELLO followed by a PING whose PONG fences its answer. An answer naming
// no HELLO in flight (a duplicated reply) is dropped and counted
// (unmatched_answers()). prepare_session() sends the HELLO without
// waiting, so that many channels' handshakes are in flight together, and
// session_answered() says when open_session() would no longer wait for it. A
// channel's poll() reads the connection and keeps what belongs to the other
// channels for them; pump() does the same for a caller that waits on
// socket_handle() itself. A broken
// connection fails the session of every channel (each resends, as after any
// cut: channels keep Sink::resume()'s default and resend everything in
// flight) and the next sessions go on a fresh connection. While the broker does
// not answer a HELLO, the other channels' open_session() fail at once for the
// same timeout instead of waiting in turn.
//
// Ownership: channels share the connection's state; each channel must be
// destroyed before the next one with its slot is made. Thread safety: the
// connection and all its channels on one thread. Errors: as BrokerSink.
class SharedBrokerConnection final : public SharedConnection {
 public:
  explicit SharedBrokerConnection(BrokerSinkOptions options);
  ~SharedBrokerConnection() noexcept override;
  SharedBrokerConnection(const SharedBrokerConnection&) = delete;
  SharedBrokerConnection& operator=(const SharedBrokerConnection&) = delete;

  // A Sink for one database. Throws std::invalid_argument if `slot` is in use.
  std::unique_ptr<Sink> channel(std::uint32_t slot) override;
  // Reads the replies that arrive within `timeout` (and whatever follows
  // them at once) into their channels; how many.
  std::size_t pump(std::chrono::milliseconds timeout) override;
  // Whether the channel `slot` has replies waiting for its poll().
  bool has_events(std::uint32_t slot) const override;
  // The DEALER socket's libzmq handle, to wait on with zmq_poll (ZMQ_POLLIN)
  // in an event loop; valid until the next call on the connection or a channel.
  void* socket_handle();
  Readable readable() override { return {socket_handle(), -1}; }
  std::string describe() const override;
  // WELCOMEs and refused HELLOs that named no HELLO in flight (a reply the
  // network or a proxy duplicated, or one for a HELLO already given up),
  // dropped since the connection was made.
  std::uint64_t unmatched_answers() const noexcept override;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace relay
