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
// Errors: the constructor throws std::runtime_error for a malformed endpoint
// or unusable CURVE keys; everything the broker or the network does later is
// reported as values through the Sink interface.
#pragma once

#include <memory>
#include <optional>
#include <string>

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
  std::optional<std::string> open_session(std::chrono::milliseconds timeout) override;
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

}  // namespace relay
