// The broker daemon's loop: a ZeroMQ ROUTER socket in front of a Store.
//
//   broker::Store store(path, store_options);
//   broker::Server server(store, {.bind_endpoint = "tcp://127.0.0.1:*"});
//   std::string endpoint = server.endpoint();   // the real port
//   server.run();                               // until request_stop()
//
// What it does per peer connection (one DEALER = one routing id):
// - HELLO opens a session (a new one replaces the old); WELCOME carries the id.
// - PUBLISH batches are collected from every connection while the previous
//   group commit was running, written with one Store::append (group commit),
//   and acknowledged only after append() returned, i.e. when durable.
// - After any failure in a session (malformed PUBLISH, wrong session id, a
//   storage error) every later PUBLISH of that session gets ERROR
//   session_failed until the peer sends HELLO again, so nothing overtakes a
//   failed batch. STORED/DUPLICATE/CONFLICT/REJECTED outcomes are not failures,
//   but after a CONFLICT or REJECTED message, later messages of the same
//   (topic, key) in that session are answered BLOCKED and not stored.
// - FETCH answers at once when messages are there, else waits (long-poll) until
//   a commit stores to the topic or wait_ms passes. Every other request is
//   answered in arrival order per connection, after the ACKs of that
//   connection's earlier batches (errors included). Batch ids of a session
//   are consecutive; a gap or a reorder fails the session.
// - Anything malformed is answered with ERROR (echoing the request id when it
//   is readable), counted in `malformed`, and never stops the loop. A field
//   above its limit in a well-formed PUBLISH is REJECTED for that message only.
//
// Memory is bounded in bytes: ZeroMQ holds what a connection sent while the
// loop was committing (receive_high_water_mark below says why that is not one
// message); the replies
// held for a connection are counted until ZeroMQ has written them, and a
// connection at max_outgoing_bytes gets no more work until it reads (its
// requests wait within max_parked_requests / max_parked_bytes, then are
// dropped); one group commit holds about max_commit_bytes; the session and
// long-poll tables have maximums. Freed memory is returned to the system
// (malloc_trim) when the loop goes idle after large batches or replies.
//
// Thread safety: construct, run() and counters() on one thread; request_stop()
// may be called from any thread and from a signal handler.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/logger.h>

#include "broker/curve_keys.hpp"
#include "wire/protocol.hpp"

namespace broker {

class Store;
struct ServerMetrics;

// CURVE keys are Z85 text (40 characters), as zmq_curve_keypair() prints them.
struct CurveServerConfig {
  std::string secret_key;
  // Z85 public keys of the clients that may connect. Empty: any client that
  // completes the CURVE handshake (encryption without authorisation).
  std::vector<std::string> allowed_client_keys;
};

// The key files behind CurveServerConfig: broker/curve_keys.hpp.

struct ServerOptions {
  std::string bind_endpoint = "tcp://127.0.0.1:7750";
  // When set, the bound endpoint (with the real port) is written here once the
  // socket listens: tests and scripts bind tcp://127.0.0.1:* and read it back.
  std::filesystem::path endpoint_file;
  std::string broker_name = "outbox-broker";
  // Decoder limits for incoming frames. The payload limit stays above the
  // store's max_message_bytes so that a large message is REJECTED(too_large),
  // not treated as malformed.
  wire::Limits limits = default_limits();
  // One group commit takes at most this many messages / PUBLISH body bytes
  // (it stops reading once either is reached, so it may hold one frame more);
  // more waiting input goes into the next one.
  std::size_t max_commit_messages = 50'000;
  std::size_t max_commit_bytes = std::size_t{32} << 20;
  // Per-connection ZeroMQ queues, in messages (0: no limit). Incoming: no
  // limit by default, because libzmq 4.3 aborts the process (Assertion failed:
  // !_io_error, stream_engine_base.cpp) when a connection whose input a full
  // queue had stopped ends and a ZMTP PING it had already read is handled
  // afterwards: a broker loop stalled past a relay's heartbeat timeout (a slow
  // disk, a paused process) with one message queued per connection was enough,
  // and so is a peer doing it on purpose. What ZeroMQ holds for a connection
  // is then what the peer sent while the loop was busy: a relay has at most
  // its window unacknowledged (8 MiB by default), and the loop reads on
  // between group commits (see "Memory is bounded" above).
  int receive_high_water_mark = 0;
  int send_high_water_mark = 1024;
  // Bytes of replies the broker holds for one connection (in ZeroMQ and its
  // own queue). A peer at this cap gets no more work until it reads: its
  // requests wait (up to max_parked_requests / max_parked_bytes, then they
  // are dropped and its session fails), FETCH replies are sized to the room
  // left under the cap.
  std::size_t max_outgoing_bytes = std::size_t{64} << 20;
  // Bytes of replies held for all connections together. Past it, a
  // connection holding more than its fair share (this / connections with
  // anything held) is treated as at its cap, and FETCH replies are sized to
  // what the total or the share leaves; a connection under its share is
  // served as before. So many consumers that do not read cannot take the
  // broker's memory, nor the room of one that does. (Those that took more
  // than their share while the total had room keep it: all together hold at
  // most about twice this, plus one message each.)
  std::size_t max_total_outgoing_bytes = std::size_t{256} << 20;
  std::size_t max_parked_requests = 1024;
  std::size_t max_parked_bytes = std::size_t{1} << 20;
  std::size_t max_sessions = 10'000;  // least recently active evicted beyond it
  std::size_t max_waiting_fetches = 10'000;
  // Of those, one connection's at most (a consumer has one FETCH waiting per
  // topic it reads); a FETCH past either maximum is answered at once.
  std::size_t max_waiting_fetches_per_connection = 100;
  std::uint32_t default_fetch_messages = 1000;
  std::uint32_t max_fetch_messages = 10'000;
  std::size_t max_fetch_bytes = std::size_t{8} << 20;
  std::uint32_t max_fetch_wait_ms = 60'000;
  std::chrono::milliseconds maintenance_interval{1000};
  // On stop: how long to keep flushing acknowledgements to peers.
  std::chrono::milliseconds shutdown_linger{5000};
  // A peer that has not finished its ZMTP handshake after handshake_timeout
  // is dropped: one that connected and never spoke no longer holds a
  // descriptor for good. The broker also sends every connection a ZMTP PING
  // every peer_heartbeat_interval and drops one from which nothing at all
  // (no message, no answer to the PING) arrives for peer_heartbeat_timeout
  // after it: a peer that sent half a message and went silent no longer
  // holds a descriptor for good either. A peer that does not read its
  // replies cannot answer a PING (its ZeroMQ stops reading with its queue
  // full), so one that neither reads nor sends for that long is dropped too;
  // the timeout is long for that reason (a sanitizer build took more than 6 s
  // to apply the 60 batches of a publisher waiting for their acks). 0 turns
  // each off.
  std::chrono::milliseconds peer_heartbeat_interval{10'000};
  std::chrono::milliseconds peer_heartbeat_timeout{60'000};
  std::chrono::milliseconds handshake_timeout{10'000};
  std::optional<CurveServerConfig> curve;
  std::shared_ptr<spdlog::logger> logger;  // null: a null sink
  // The id of the first session, then one more per HELLO. 0 (the default): taken
  // from the clock, so that a session id from before a restart does not match a
  // session after it. Fuzzers set 1 to make the ids predictable.
  std::uint64_t first_session_id = 0;
  // Where the loop reports its metrics (broker/metrics.hpp); null: nowhere.
  std::shared_ptr<ServerMetrics> metrics;

  static wire::Limits default_limits() {
    wire::Limits limits;
    // 32 MiB frames: four publishers each with one of the largest batches
    // unacknowledged cost 128 MiB in ZeroMQ next to the page cache.
    limits.max_body_bytes = std::size_t{32} << 20;
    limits.max_payload_bytes = std::size_t{32} << 20;
    limits.max_batch_messages = 100'000;
    return limits;
  }
};

// Counters kept by the loop (the store keeps stored/duplicates/... itself).
struct ServerCounters {
  std::uint64_t malformed = 0;         // frames that failed to decode
  std::uint64_t refused_batches = 0;   // PUBLISH answered with no_session / session_failed
  std::uint64_t stale_epochs = 0;      // HELLO or PUBLISH refused: an older lease epoch
  std::uint64_t blocked = 0;           // messages answered BLOCKED
  std::uint64_t storage_failures = 0;  // group commits that threw
  std::uint64_t group_commits = 0;
  std::uint64_t batches = 0;
  std::uint64_t messages = 0;  // messages in committed batches
  std::uint64_t sessions_opened = 0;
  std::uint64_t epoch_commits = 0;  // transactions recording HELLOs' new lease epochs
  std::uint64_t fetches = 0;
  std::uint64_t replies_dropped = 0;     // the peer was gone (or its backlog overflowed)
  std::uint64_t requests_dropped = 0;    // from peers over their cap that did not read
  std::uint64_t rejected_on_decode = 0;  // messages REJECTED for a field above its limit
  std::uint64_t curve_refused = 0;       // CURVE handshakes refused (client key not allowed)
  std::uint64_t resumes = 0;             // RESUME requests answered
  std::uint64_t resumed_batches = 0;     // acknowledgements they carried again
  std::uint64_t append_nanoseconds = 0;  // wall time inside Store::append (for benchmarks)
};

class Server {
 public:
  // Binds the socket (and the ZAP handler for CURVE). Throws outbox::Error of
  // kind io with a clear message when the endpoint cannot be bound or a key is invalid.
  Server(Store& store, ServerOptions options);
  ~Server() noexcept;
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The endpoint actually bound (tcp://127.0.0.1:41234 for tcp://127.0.0.1:*).
  const std::string& endpoint() const noexcept;

  // Serves until request_stop(). Then stops reading new input beyond what is
  // already queued, commits and acknowledges it, answers waiting fetches,
  // flushes replies for up to shutdown_linger and returns.
  void run();

  // Async-signal-safe.
  void request_stop() noexcept;

  ServerCounters counters() const;

  // Handles one request as though it had arrived from the connection
  // `routing_id` (frames: what follows the routing id; tag, command and body when
  // well formed), then commits and acknowledges what it collected, as run() does
  // after reading. Replies go to the socket; for a routing id that no connected
  // peer has they are dropped (counted in replies_dropped). Lets fuzzers and
  // tests drive the request handling without a peer. On run()'s thread, not
  // while run() is running.
  void serve(std::string_view routing_id, std::span<const std::string_view> frames);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace broker
