// What the broker holds for each connection (peer) on its way out: replies
// in ZeroMQ and in a backlog behind it, counted in bytes, and the requests
// held back while the peer is over its outgoing cap (ServerOptions,
// max_outgoing_bytes / max_parked_*).
//
// Ownership: owns the peers and the eventfd that wakes the loop when ZeroMQ
// has written a reply body; the ROUTER stays the caller's. Thread safety:
// the loop's thread only, except that ZeroMQ's I/O threads release reply
// bodies (atomics in OutgoingAccount) and write to the eventfd.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <spdlog/logger.h>
#include <zmq.hpp>

#include "broker/server.hpp"
#include "wire/protocol.hpp"
#include "wire/zmq_io.hpp"

namespace broker::detail {

// The bytes of one peer's replies that ZeroMQ holds (its queue to the peer
// and the one being written). Reply bodies are handed over without a copy;
// ZeroMQ releases each on its I/O thread once it is written to the kernel or
// dropped with its connection, which is the only way to see how much a
// ROUTER still holds for one peer.
struct OutgoingAccount {
  std::atomic<std::size_t> bytes{0};
  // Every peer's bytes together (shared by all accounts: bodies may be
  // released after the Peers table is gone).
  std::shared_ptr<std::atomic<std::size_t>> total;
  // Set while the loop has work held back for this peer: the next release
  // wakes it through `wake_fd` (an eventfd polled next to the socket).
  std::atomic<bool> wake_wanted{false};
  int wake_fd = -1;
};

// Outgoing and held-back work of one connection, kept only while there is
// some (an idle connection costs nothing here).
struct Peer {
  std::shared_ptr<OutgoingAccount> account;
  // Replies ZeroMQ's queue to the peer had no room for (send high-water
  // mark reached), in order, with their body sizes.
  std::deque<wire::Frames> backlog;
  std::size_t backlog_bytes = 0;
  // Requests received while the peer was over its outgoing cap: served, in
  // order, once it has read enough.
  std::deque<std::unique_ptr<wire::Received>> parked;
  std::size_t parked_bytes = 0;
  std::size_t pending_batches = 0;      // its batches in the group commit being collected
  std::size_t pending_hellos = 0;       // its HELLOs waiting for that commit's epoch write
  std::size_t pending_reply_bytes = 0;  // what their ACKs may take (an upper estimate)
  bool dropping = false;                // its requests are being dropped (logged once)
};

// Owns the eventfd; declared before the ZeroMQ context so that it outlives
// the I/O threads that may still release reply bodies.
class WakeFd {
 public:
  WakeFd();
  ~WakeFd() noexcept;
  WakeFd(const WakeFd&) = delete;
  WakeFd& operator=(const WakeFd&) = delete;
  int fd() const noexcept { return fd_; }
  void drain() noexcept;

 private:
  int fd_;
};

class Peers {
 public:
  // `wake_fd` must outlive every reply body handed to ZeroMQ (see WakeFd).
  Peers(zmq::socket_t& router, const ServerOptions& options, int wake_fd, spdlog::logger& logger,
        ServerCounters& counters);

  Peer& get(const std::string& routing_id);  // made when missing
  Peer* find(const std::string& routing_id);

  // Queues one reply without blocking, behind the peer's backlog; with no
  // room in ZeroMQ it joins the backlog (up to twice the cap, then dropped,
  // as it is when the peer is gone: counted in replies_dropped).
  void send(const std::string& routing_id, wire::Frames frames);

  // Bytes of replies held for the peer: in ZeroMQ and its own backlog.
  static std::size_t queued_bytes(const Peer& peer);
  // At its own cap, or holding more than its share while all peers together
  // are over max_total_outgoing_bytes.
  bool over_cap(const Peer& peer) const;
  // What a reply to this peer may still take (FETCH replies are sized by it).
  std::size_t room(const std::string& routing_id);

  // Parks a request of a peer over its cap; false when its bounds are full.
  bool park(const std::string& routing_id, Peer& peer, std::unique_ptr<wire::Received>& received);
  // The peers with a backlog or parked requests.
  std::vector<std::string> held_back() const;
  // Moves the peer's backlog into ZeroMQ as far as it has room.
  void flush(const std::string& routing_id, Peer& peer);
  // After flush and serving its parked requests: a peer with nothing left
  // is no longer held back, else the loop is woken when ZeroMQ writes.
  void settle(const std::string& routing_id, Peer& peer);
  void release(const std::string& routing_id) { held_back_.erase(routing_id); }
  // Set when a release happened before the wake-up was wanted: look again at once.
  bool take_wake_now() noexcept;
  bool wake_now() const noexcept { return wake_now_; }

  // Connections whose replies were all written cost nothing here.
  void sweep();

  // Reply bytes held for all peers: in ZeroMQ and in backlogs.
  std::uint64_t outgoing_bytes() const;
  std::uint64_t requests_waiting() const;
  std::size_t held_back_count() const noexcept { return held_back_.size(); }

  static std::size_t received_bytes(const wire::Received& received);

 private:
  enum class SendResult { sent, full, gone };
  SendResult send_now(const std::string& routing_id, Peer& peer, wire::Frames& frames);
  void want_wake(Peer& peer);
  // The connection is closed: what it still had waiting is never answered.
  // (Peers are erased only by sweep, so a Peer& stays valid meanwhile.)
  void forget_gone(const std::string& routing_id);

  zmq::socket_t& router_;
  const ServerOptions& options_;
  int wake_fd_;
  spdlog::logger& logger_;
  ServerCounters& counters_;
  std::unordered_map<std::string, Peer> peers_;
  std::unordered_set<std::string> held_back_;  // peers with a backlog or parked requests
  // Reply bytes in ZeroMQ of all peers (OutgoingAccount::total); backlogs
  // are added up in backlog_bytes_.
  std::shared_ptr<std::atomic<std::size_t>> total_ = std::make_shared<std::atomic<std::size_t>>(0);
  std::size_t backlog_bytes_ = 0;
  std::size_t fair_share() const;
  bool wake_now_ = false;
};

}  // namespace broker::detail
