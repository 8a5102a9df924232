// A broker client over one DEALER socket: what the relay, the CLI tools, the
// tests and the benchmark use to talk to outbox-broker.
//
//   broker::Client client("tcp://127.0.0.1:7750");
//   auto welcome = client.hello("billing-relay", 2s);          // opens a session
//   client.send_publish(1, messages);                           // pipelined, no wait
//   client.send_publish(2, more_messages);
//   while (auto reply = client.receive(1s)) { ... wire::Ack per batch ... }
//
// The blocking helpers (hello, publish, fetch, commit_offset, stats, ping)
// send one request and wait for its answer; replies to other requests that
// arrive meanwhile (acks of pipelined batches) are kept and handed out by
// receive() in order. Errors are values: a wire::Error with the broker's
// ERROR code and message, ErrorCode::timeout when nothing came in time, or
// ErrorCode::disconnected as soon as the connection breaks.
//
// A broken connection is noticed by events, not by the deadline: the client
// watches its socket (ZeroMQ's socket monitor reports the TCP connection
// closing, reset, or failing its handshake) and sends ZMTP heartbeats, so a
// peer that vanished without closing (a dead host, a black-holing route) is
// noticed after heartbeat_timeout. Whatever was in flight on that connection
// may or may not have reached the broker, and the session is gone with it
// (ZeroMQ reconnects by itself, but the broker sees a new peer): after a
// timeout or a disconnect call reconnect(), which drops everything in flight,
// then hello() again and resend what was not acknowledged. Requests that need
// no session (fetch, commit_offset, stats, ping) may simply be sent again.
//
// Not thread-safe: one thread per Client. zmq::error_t from the socket itself
// (e.g. a malformed endpoint in the constructor) propagates as an exception.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include <zmq.hpp>

#include "wire/protocol.hpp"

namespace broker {

struct CurveClientConfig {
  std::string server_public_key;  // Z85, 40 characters
  std::string public_key;         // this client's key pair, Z85
  std::string secret_key;
};

struct ClientOptions {
  int send_high_water_mark = 1024;
  int receive_high_water_mark = 1024;
  // ZMTP heartbeats (ZMQ_HEARTBEAT_IVL / _TIMEOUT / _TTL): a PING every
  // interval; no traffic from the broker within the timeout after one closes
  // the connection (reported as ErrorCode::disconnected). The broker's
  // ZeroMQ answers PINGs itself, however busy its loop is, and drops this
  // connection after the same timeout without traffic from us. 0 turns them off.
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{3000};
  wire::Limits limits = client_limits();  // for decoding replies
  std::optional<CurveClientConfig> curve;

  static wire::Limits client_limits() {
    wire::Limits limits;
    limits.max_body_bytes = std::size_t{256} << 20;
    limits.max_payload_bytes = std::size_t{64} << 20;
    return limits;
  }
};

class Client {
 public:
  // Connects asynchronously (ZeroMQ reconnects by itself); nothing is sent yet.
  explicit Client(std::string endpoint, ClientOptions options = {});
  ~Client() noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Opens a session; later PUBLISH batches carry its id. With
  // wire::kHelloOneOfSeveral in the request's flags the connection keeps one
  // session per origin (docs/protocol.md, HELLO): session_id() is then the
  // last one opened, and the overloads taking a session id publish under any.
  wire::Result<wire::Welcome> hello(const std::string& producer, std::chrono::milliseconds timeout);
  // Same for a relay: `request` carries the producer database's origin id and
  // the relay's lease epoch, and the broker answers ERROR stale_epoch when it
  // has seen a newer epoch for that origin.
  wire::Result<wire::Welcome> hello(const wire::Hello& request, std::chrono::milliseconds timeout);
  // hello() in two halves, for a caller that opens a session ahead of need
  // (the relay keeps one ready on a second connection, so that a broken
  // connection costs no handshake): send_hello() queues the HELLO and returns
  // at once (false if the send queue is full; ZeroMQ sends it when connected),
  // await_welcome() waits for the answer like hello() does.
  bool send_hello(const wire::Hello& request);
  wire::Result<wire::Welcome> await_welcome(std::chrono::milliseconds timeout);
  std::uint64_t session_id() const noexcept { return session_id_; }

  // Pipelined publishing: queue a batch and return at once. False when the
  // socket's send queue is full (wait for acks, then retry).
  bool send_publish(std::uint64_t batch_id, std::span<const wire::OutgoingMessage> messages);
  bool send_publish(std::uint64_t session_id, std::uint64_t batch_id,
                    std::span<const wire::OutgoingMessage> messages);
  // Same with a body built by wire::begin_publish_body / append_publish_message /
  // finish_publish_body (its session id must be session_id()).
  bool send_publish_body(const std::string& body);
  // Queues a RESUME in this session (docs/protocol.md): the broker answers
  // RESUMED with the ACKs of `previous_session_id`'s batches from
  // `from_batch_id` on that it stored. False if the send queue is full.
  bool send_resume(std::uint64_t previous_session_id, std::uint64_t from_batch_id);
  // The next reply of any kind, kept replies first. Empty when none came
  // within `timeout`; a reply that failed to decode comes back as an Error.
  std::optional<wire::Result<wire::AnyMessage>> receive(std::chrono::milliseconds timeout);

  // Sends one batch and waits for its ACK (or ERROR naming the batch).
  wire::Result<wire::Ack> publish(std::uint64_t batch_id,
                                  std::span<const wire::OutgoingMessage> messages,
                                  std::chrono::milliseconds timeout);
  wire::Result<wire::Ack> publish(std::uint64_t session_id, std::uint64_t batch_id,
                                  std::span<const wire::OutgoingMessage> messages,
                                  std::chrono::milliseconds timeout);

  wire::Result<wire::Messages> fetch(wire::Fetch request, std::chrono::milliseconds timeout);
  wire::Result<wire::OffsetCommitted> commit_offset(const std::string& topic,
                                                    const std::string& group, std::uint64_t offset,
                                                    std::chrono::milliseconds timeout);
  wire::Result<wire::StatsReply> stats(std::chrono::milliseconds timeout);
  wire::Result<wire::Pong> ping(std::chrono::milliseconds timeout);

  // Queues one request as it is (its request id, nonce or hello id as the
  // caller set them) without waiting: its reply comes out of receive(). For a
  // caller that keeps several requests in flight, e.g. a long-poll FETCH next
  // to other traffic, or a PING fencing a HELLO. False if the send queue is full.
  bool send_request(const wire::AnyMessage& request);
  // Sends raw frames (tests use it to send garbage). False if it would block.
  bool send_raw(std::span<const std::string> frames);

  // The DEALER socket's libzmq handle, only to wait for input on with zmq_poll
  // (ZMQ_POLLIN) next to other sockets; read and write through this Client.
  // Valid until reconnect() or destruction.
  void* poll_handle() noexcept { return socket_.handle(); }

  // A fresh socket (and so a fresh connection and routing id): drops anything
  // in flight, the session and connection events not yet reported.
  void reconnect();

  const std::string& endpoint() const noexcept { return endpoint_; }

 private:
  void open_socket();
  // Waits for the reply matching `matches`, keeping the others for receive().
  template <typename Reply, typename Matches>
  wire::Result<Reply> await(Matches matches, std::uint64_t request_id,
                            std::chrono::milliseconds timeout);
  std::optional<wire::Result<wire::AnyMessage>> receive_from_socket(
      std::chrono::milliseconds timeout);
  // Reads the socket monitor's pending events; an error if the connection broke.
  std::optional<wire::Error> read_connection_events();
  // Before a request that does not depend on an earlier one: a connection
  // that broke before it was sent is none of its business (ZeroMQ
  // reconnects by itself and the request goes on the new connection).
  void forget_connection_events() { (void)read_connection_events(); }
  void close_socket() noexcept;

  std::string endpoint_;
  ClientOptions options_;
  zmq::context_t context_;
  zmq::socket_t socket_;
  zmq::socket_t monitor_;  // PAIR receiving socket_'s connection events
  std::uint64_t monitors_opened_ = 0;
  std::uint64_t session_id_ = 0;
  std::uint64_t next_request_id_ = 1;
  std::deque<wire::Result<wire::AnyMessage>> kept_;
};

}  // namespace broker
