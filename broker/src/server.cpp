#include "broker/server.hpp"

#include <sys/eventfd.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <span>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <zmq.hpp>

#include "broker/metrics.hpp"
#include "broker/store.hpp"
#include "metrics/log_fields.hpp"
#include "outbox/error.hpp"
#include "wire/zmq_io.hpp"

namespace broker {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint8_t kFirstProtocolVersion = 1;
// Routing id, tag, command, body, and one more to tell "too many" apart.
constexpr std::size_t kMaxReceivedFrames = 5;

std::string trim(std::string text) {
  auto not_space = [](unsigned char c) { return !std::isspace(c); };
  text.erase(text.begin(), std::find_if(text.begin(), text.end(), not_space));
  text.erase(std::find_if(text.rbegin(), text.rend(), not_space).base(), text.end());
  return text;
}

std::vector<std::string> key_lines(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw outbox::Error(outbox::ErrorKind::io, "cannot read key file " + path.string());
  std::vector<std::string> keys;
  std::string line;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    if (line.size() != 40) {
      throw outbox::Error(outbox::ErrorKind::io,
                          "key file " + path.string() +
                              ": expected 40-character Z85 keys, got a line of " +
                              std::to_string(line.size()) + " characters");
    }
    keys.push_back(line);
  }
  return keys;
}

std::string z85_to_binary(const std::string& z85, const char* what) {
  std::string binary(32, '\0');
  if (z85.size() != 40 ||
      zmq_z85_decode(reinterpret_cast<std::uint8_t*>(binary.data()), z85.c_str()) == nullptr) {
    throw outbox::Error(outbox::ErrorKind::io, std::string(what) + " is not a valid Z85 CURVE key");
  }
  return binary;
}

std::string binary_to_z85(std::string_view binary) {
  if (binary.size() != 32) return {};
  char text[41] = {};
  if (zmq_z85_encode(text, reinterpret_cast<const std::uint8_t*>(binary.data()), 32) == nullptr) {
    return {};
  }
  return std::string(text, 40);
}

// Counts the ROUTER's open connections from ZeroMQ's socket monitor events
// (accepted / disconnected), on its own thread so that the loop is untouched.
// Only started when metrics are wanted.
class ConnectionWatcher {
 public:
  ConnectionWatcher() = default;
  ConnectionWatcher(const ConnectionWatcher&) = delete;
  ConnectionWatcher& operator=(const ConnectionWatcher&) = delete;
  ~ConnectionWatcher() noexcept { stop(); }

  // Called on the socket's own thread (zmq_socket_monitor requires it).
  void start(zmq::context_t& context, zmq::socket_t& socket, metrics::Gauge& connections) {
    static std::atomic<unsigned> next_id{0};
    std::string address = "inproc://outbox-broker-monitor-" + std::to_string(next_id++);
    if (zmq_socket_monitor(socket.handle(), address.c_str(),
                           ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0) {
      throw outbox::Error(outbox::ErrorKind::io, std::string("cannot monitor the broker socket: ") +
                                                     zmq_strerror(zmq_errno()));
    }
    zmq::socket_t pair(context, zmq::socket_type::pair);
    pair.set(zmq::sockopt::linger, 0);
    pair.connect(address);
    thread_ = std::thread([this, pair = std::move(pair), &connections]() mutable {
      std::int64_t open = 0;
      while (!stop_.load(std::memory_order_relaxed)) {
        zmq::pollitem_t item{pair.handle(), 0, ZMQ_POLLIN, 0};
        if (zmq::poll(&item, 1, std::chrono::milliseconds(100)) == 0) continue;
        zmq::message_t event, address_frame;
        if (!pair.recv(event, zmq::recv_flags::dontwait)) continue;
        if (event.more()) (void)pair.recv(address_frame, zmq::recv_flags::dontwait);
        if (event.size() < 2) continue;
        std::uint16_t id = 0;
        std::memcpy(&id, event.data(), sizeof id);
        if (id == ZMQ_EVENT_ACCEPTED) ++open;
        if (id == ZMQ_EVENT_DISCONNECTED && open > 0) --open;
        connections.set(static_cast<double>(open));
      }
    });
  }

  void stop() noexcept {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

std::string reject_text(RejectReason reason) {
  return std::string(to_string(reason));
}

// The bytes of one peer's replies that ZeroMQ holds (its queue to the peer
// and the one being written). Reply bodies are handed over without a copy;
// ZeroMQ calls release_reply_body on its I/O thread once a body is written to
// the kernel or dropped with its connection, which is the only way to see how
// much a ROUTER still holds for one peer.
struct OutgoingAccount {
  std::atomic<std::size_t> bytes{0};
  // Set while the loop has work held back for this peer: the next release
  // wakes it through `wake_fd` (an eventfd polled next to the socket).
  std::atomic<bool> wake_wanted{false};
  int wake_fd = -1;
};

struct ReplyBody {
  std::string bytes;
  std::shared_ptr<OutgoingAccount> account;
};

void release_reply_body(void* /*data*/, void* hint) noexcept {
  auto* body = static_cast<ReplyBody*>(hint);
  body->account->bytes.fetch_sub(body->bytes.size(), std::memory_order_acq_rel);
  if (body->account->wake_wanted.exchange(false, std::memory_order_acq_rel)) {
    std::uint64_t one = 1;
    [[maybe_unused]] auto written = ::write(body->account->wake_fd, &one, sizeof one);
  }
  delete body;
}

// Owns the eventfd; declared before the ZeroMQ context in Impl so that it
// outlives the I/O threads that may still release reply bodies.
class WakeFd {
 public:
  WakeFd() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) throw outbox::Error(outbox::ErrorKind::io, "cannot create an eventfd");
  }
  ~WakeFd() noexcept { ::close(fd_); }
  WakeFd(const WakeFd&) = delete;
  WakeFd& operator=(const WakeFd&) = delete;
  int fd() const noexcept { return fd_; }
  void drain() noexcept {
    std::uint64_t value = 0;
    [[maybe_unused]] auto got = ::read(fd_, &value, sizeof value);
  }

 private:
  int fd_;
};

}  // namespace

std::string read_curve_key_file(const std::filesystem::path& path) {
  auto keys = key_lines(path);
  if (keys.empty())
    throw outbox::Error(outbox::ErrorKind::io, "key file " + path.string() + " holds no key");
  z85_to_binary(keys.front(), ("key in " + path.string()).c_str());
  return keys.front();
}

std::vector<std::string> read_allowed_clients_file(const std::filesystem::path& path) {
  auto keys = key_lines(path);
  for (const auto& key : keys) z85_to_binary(key, ("key in " + path.string()).c_str());
  return keys;
}

struct Server::Impl {
  // A session belongs to one connection. A connection holds one session, or
  // one per origin when its HELLOs say "one of several" (a relay forwarding
  // many databases over few connections): PUBLISH names its session by id.
  struct Session {
    std::uint64_t id = 0;
    std::string routing_id;  // its connection
    bool failed = false;
    std::string producer;
    Clock::time_point last_active;
    std::string origin;  // the producer database's origin id; empty: not fenced
    std::uint64_t epoch = 0;
    // (topic, key) pairs with a CONFLICT or REJECTED message in this session:
    // later messages of them are answered BLOCKED, not stored.
    std::unordered_set<std::string> refused_keys;
    // Batch ids of a session are consecutive: the first after WELCOME is any
    // id, each later one the previous + 1; a gap or a reorder fails the session.
    bool has_batch = false;
    std::uint64_t last_batch_id = 0;
    // The ACKs of a relay session's latest stored batches, oldest first and
    // consecutive, for a RESUME from the relay's next session after this
    // connection broke (retain_ack bounds them). Without them the relay
    // resends everything it had in flight: behind a proxy cutting every
    // 2 KB-400 KB that was half of all it sent, each answered DUPLICATE.
    std::deque<wire::Ack> retained_acks;
    std::size_t retained_ack_bytes = 0;
  };

  // Per relay session, a few windows of acknowledgements (11 bytes a
  // message: 8,000 in flight take 88 KiB); in total, a fixed budget.
  static constexpr std::size_t kRetainedAckBytesPerSession = 256 * 1024;
  static constexpr std::size_t kRetainedAckBytesTotal = 64 * 1024 * 1024;

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
    std::size_t pending_reply_bytes = 0;  // what their ACKs may take (an upper estimate)
    bool dropping = false;                // its requests are being dropped (logged once)
  };

  struct PendingBatch {
    std::string routing_id;
    std::uint64_t session_id = 0;
    std::uint64_t batch_id = 0;
    // Per message of the batch: its index in `incoming`, or kBlocked.
    std::vector<std::uint32_t> slots;
    std::unique_ptr<wire::Received> frames;  // the views in `incoming` point into these
  };

  struct WaitingFetch {
    std::string routing_id;
    wire::Fetch request;  // from_offset resolved, limits clamped
    Clock::time_point deadline;
  };

  Impl(Store& store_ref, ServerOptions opts)
      : store(store_ref),
        options(std::move(opts)),
        logger(options.logger ? options.logger : metrics::null_logger("broker")),
        wake(),
        context(1),
        router(context, zmq::socket_type::router) {
    next_session_id =
        options.first_session_id != 0
            ? options.first_session_id - 1
            : static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::system_clock::now().time_since_epoch())
                                             .count())
                  << 16;
    router.set(zmq::sockopt::router_mandatory, 1);
    router.set(zmq::sockopt::rcvhwm, options.receive_high_water_mark);
    router.set(zmq::sockopt::sndhwm, options.send_high_water_mark);
    router.set(zmq::sockopt::linger, 0);
    // A frame above the largest body we decode (plus slack for the other
    // frames) disconnects the peer inside ZeroMQ before it costs memory.
    router.set(zmq::sockopt::maxmsgsize,
               static_cast<std::int64_t>(options.limits.max_body_bytes + 1024));
    if (options.curve) setup_curve(*options.curve);
    try {
      router.bind(options.bind_endpoint);
    } catch (const zmq::error_t& error) {
      throw outbox::Error(outbox::ErrorKind::io,
                          "cannot bind " + options.bind_endpoint + ": " + error.what());
    }
    endpoint = router.get(zmq::sockopt::last_endpoint);
    if (options.metrics) connection_watcher.start(context, router, options.metrics->connections);
    if (!options.endpoint_file.empty()) write_endpoint_file();
    logger->info("listening on {}", endpoint);
  }

  void setup_curve(const CurveServerConfig& curve) {
    if (!zmq_has("curve"))
      throw outbox::Error(outbox::ErrorKind::io, "this libzmq was built without CURVE");
    auto secret = z85_to_binary(curve.secret_key, "the CURVE secret key");
    for (const auto& key : curve.allowed_client_keys) {
      allowed_clients.push_back(z85_to_binary(key, "an allowed client key"));
    }
    zap = zmq::socket_t(context, zmq::socket_type::rep);
    zap->set(zmq::sockopt::linger, 0);
    zap->bind("inproc://zeromq.zap.01");
    router.set(zmq::sockopt::curve_server, 1);
    router.set(zmq::sockopt::curve_secretkey, zmq::buffer(secret.data(), secret.size()));
    router.set(zmq::sockopt::zap_domain, "outbox");
    logger->info("CURVE on, {} allowed client keys{}", allowed_clients.size(),
                 allowed_clients.empty() ? " (any client key accepted)" : "");
  }

  void write_endpoint_file() {
    auto temporary = options.endpoint_file;
    temporary += ".tmp";
    {
      std::ofstream out(temporary, std::ios::trunc);
      out << endpoint << '\n';
      if (!out) throw outbox::Error(outbox::ErrorKind::io, "cannot write " + temporary.string());
    }
    std::filesystem::rename(temporary, options.endpoint_file);
  }

  // ---- replies ----------------------------------------------------------------

  Peer& peer_for(const std::string& routing_id) {
    Peer& peer = peers[routing_id];
    if (!peer.account) {
      peer.account = std::make_shared<OutgoingAccount>();
      peer.account->wake_fd = wake.fd();
    }
    return peer;
  }

  Peer* find_peer(const std::string& routing_id) {
    auto found = peers.find(routing_id);
    return found == peers.end() ? nullptr : &found->second;
  }

  // Bytes of replies the broker holds for the peer: in ZeroMQ and its own backlog.
  static std::size_t queued_bytes(const Peer& peer) {
    return peer.account->bytes.load(std::memory_order_acquire) + peer.backlog_bytes;
  }

  bool over_cap(const Peer& peer) const {
    return !peer.backlog.empty() || queued_bytes(peer) >= options.max_outgoing_bytes;
  }

  // What a reply to this peer may still take (FETCH replies are sized by it).
  std::size_t outgoing_room(const std::string& routing_id) {
    Peer* peer = find_peer(routing_id);
    if (peer == nullptr) return options.max_outgoing_bytes;
    auto queued = queued_bytes(*peer);
    return queued >= options.max_outgoing_bytes ? 0 : options.max_outgoing_bytes - queued;
  }

  enum class SendResult { sent, full, gone };

  // Queues one reply in ZeroMQ without blocking; the body is handed over
  // without a copy and counted in the peer's account until ZeroMQ frees it.
  SendResult send_now(const std::string& routing_id, Peer& peer, wire::Frames& frames) {
    try {
      if (!router.send(zmq::buffer(routing_id.data(), routing_id.size()),
                       zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
        return SendResult::full;
      }
      // Once the routing id is queued ZeroMQ takes the rest of the message.
      router.send(zmq::buffer(frames.tag.data(), frames.tag.size()), zmq::send_flags::sndmore);
      router.send(zmq::buffer(frames.command.data(), frames.command.size()),
                  zmq::send_flags::sndmore);
      auto size = frames.body.size();
      auto* body = new ReplyBody{std::move(frames.body), peer.account};
      peer.account->bytes.fetch_add(size, std::memory_order_acq_rel);
      zmq::message_t message(body->bytes.data(), size, &release_reply_body, body);
      router.send(message, zmq::send_flags::none);
      return SendResult::sent;
    } catch (const zmq::error_t& error) {
      // EHOSTUNREACH: the peer is gone. EINTR before anything was queued: try later.
      if (error.num() == EINTR) return SendResult::full;
      logger->debug("reply dropped: {}", error.what());
      return SendResult::gone;
    }
  }

  void reply(const std::string& routing_id, const wire::AnyMessage& message) {
    reply_frames(routing_id, wire::encode(message));
  }

  void reply_frames(const std::string& routing_id, wire::Frames frames) {
    Peer& peer = peer_for(routing_id);
    if (peer.backlog.empty()) {
      switch (send_now(routing_id, peer, frames)) {
        case SendResult::sent:
          return;
        case SendResult::gone:
          ++counters.replies_dropped;
          forget_gone_peer(routing_id);
          return;
        case SendResult::full:
          break;
      }
    }
    // Held here in order until ZeroMQ has room; the peer gets no more work
    // meanwhile, so this stays within about one cap.
    if (peer.backlog_bytes + frames.body.size() > 2 * options.max_outgoing_bytes) {
      ++counters.replies_dropped;
      return;
    }
    peer.backlog_bytes += frames.body.size();
    peer.backlog.push_back(std::move(frames));
    held_back.insert(routing_id);
  }

  // Replies are sent in arrival order per connection: before anything is
  // answered, this peer's batches in the group commit being collected are
  // committed and acknowledged.
  void answer(const std::string& routing_id, const wire::AnyMessage& message) {
    if (Peer* peer = find_peer(routing_id); peer != nullptr && peer->pending_batches > 0) {
      commit_pending();
    }
    reply(routing_id, message);
  }

  void reply_error(const std::string& routing_id, std::uint64_t request_id, wire::ErrorCode code,
                   std::string message) {
    answer(routing_id, wire::ErrorReply{request_id, code, std::move(message)});
  }

  // A version 1 peer can read ERROR (its layout did not change) only in a
  // version 1 frame: tell it in its own version why it is refused.
  void refuse_first_version(const std::string& routing_id) {
    ++counters.malformed;
    auto frames = wire::encode(
        wire::ErrorReply{0, wire::ErrorCode::unsupported_version,
                         "protocol version " + std::to_string(kFirstProtocolVersion) +
                             " is not supported: this broker speaks version " +
                             std::to_string(wire::kProtocolVersion) + " (upgrade the client)"});
    frames.tag = wire::encode_tag(kFirstProtocolVersion);
    reply_frames(routing_id, std::move(frames));
  }

  void malformed(const std::string& routing_id, std::uint64_t request_id,
                 const wire::Error& error) {
    ++counters.malformed;
    logger->debug("malformed input: {}", error.message);
    reply_error(routing_id, request_id, error.code, error.message);
  }

  // The connection is closed: what it still had waiting is never answered.
  // (Peers are erased only by sweep_peers, so a Peer& stays valid meanwhile.)
  void forget_gone_peer(const std::string& routing_id) {
    if (Peer* peer = find_peer(routing_id)) {
      counters.replies_dropped += peer->backlog.size() + peer->parked.size();
      peer->backlog.clear();
      peer->backlog_bytes = 0;
      peer->parked.clear();
      peer->parked_bytes = 0;
    }
  }

  // Moves backlogs into ZeroMQ as it makes room and serves parked requests of
  // peers back under their cap. Called when a reply body was released.
  void serve_held_back() {
    std::vector<std::string> ids(held_back.begin(), held_back.end());
    bool served = false;
    for (const auto& routing_id : ids) {
      Peer* found = find_peer(routing_id);
      if (found == nullptr) {
        held_back.erase(routing_id);
        continue;
      }
      Peer& peer = *found;
      while (!peer.backlog.empty()) {
        auto size = peer.backlog.front().body.size();
        auto result = send_now(routing_id, peer, peer.backlog.front());
        if (result == SendResult::full) break;
        if (result == SendResult::gone) {
          ++counters.replies_dropped;
          forget_gone_peer(routing_id);
          break;
        }
        peer.backlog_bytes -= size;
        peer.backlog.pop_front();
      }
      while (!peer.parked.empty() && has_room(peer)) {
        auto request = std::move(peer.parked.front());
        peer.parked.pop_front();
        peer.parked_bytes -= received_bytes(*request);
        served = true;
        dispatch(routing_id, std::move(request));
      }
      if (peer.backlog.empty() && peer.parked.empty()) {
        peer.dropping = false;
        held_back.erase(routing_id);
      } else {
        want_wake(peer);
      }
    }
    if (served) commit_pending();
  }

  // Whether the peer may be given more work. ACKs are made when the group
  // commit ends: before they could take the peer past its cap, commit, so that
  // the cap is weighed against real bytes.
  bool has_room(Peer& peer) {
    if (peer.pending_batches > 0 &&
        queued_bytes(peer) + peer.pending_reply_bytes >= options.max_outgoing_bytes) {
      commit_pending();
    }
    return !over_cap(peer);
  }

  void want_wake(Peer& peer) {
    peer.account->wake_wanted.store(true, std::memory_order_release);
    // Released meanwhile: no wake-up will come, so look again at once.
    if (!over_cap(peer) || peer.account->bytes.load(std::memory_order_acquire) == 0) {
      wake_now = true;
    }
  }

  static std::size_t received_bytes(const wire::Received& received) {
    std::size_t total = 0;
    for (const auto& frame : received.frames) total += frame.size();
    return total;
  }

  // ---- input ------------------------------------------------------------------

  // Reads what is waiting (up to one group commit's worth), then commits it.
  // Returns whether anything was read.
  bool read_round() {
    bool any = false;
    while (incoming.size() < options.max_commit_messages &&
           pending_bytes < options.max_commit_bytes) {
      std::optional<wire::Received> received;
      try {
        received = wire::receive_frames(router, zmq::recv_flags::dontwait, kMaxReceivedFrames);
      } catch (const zmq::error_t& error) {
        if (error.num() == EINTR) break;
        throw;
      }
      if (!received) break;
      any = true;
      handle(std::make_unique<wire::Received>(std::move(*received)));
    }
    commit_pending();
    return any;
  }

  void handle(std::unique_ptr<wire::Received> received) {
    if (received->frames.empty()) return;
    std::string routing_id(static_cast<const char*>(received->frames[0].data()),
                           received->frames[0].size());
    Peer* peer = find_peer(routing_id);
    if (peer != nullptr && (!peer->parked.empty() || !has_room(*peer))) {
      return hold_back(routing_id, *peer, std::move(received));
    }
    dispatch(routing_id, std::move(received));
  }

  // A peer over its outgoing cap gets no more work until it has read enough:
  // its requests wait, in order, up to a small bound; beyond it they are
  // dropped (counted in requests_dropped) and its session fails, so that
  // nothing of it is stored past a dropped batch.
  void hold_back(const std::string& routing_id, Peer& peer,
                 std::unique_ptr<wire::Received> received) {
    auto size = received_bytes(*received);
    if (peer.parked.size() < options.max_parked_requests &&
        peer.parked_bytes + size <= options.max_parked_bytes) {
      peer.parked_bytes += size;
      peer.parked.push_back(std::move(received));
      held_back.insert(routing_id);
      want_wake(peer);
      return;
    }
    ++counters.requests_dropped;
    if (!peer.dropping) {
      peer.dropping = true;
      // The connection's first session names it (each one's failure is
      // logged with its own id below).
      const Session* session = first_session(routing_id);
      metrics::log(*logger, spdlog::level::warn,
                   {{"event", "peer_not_reading"},
                    {"queued_bytes", queued_bytes(peer)},
                    {"session", session != nullptr ? session->id : 0},
                    {"producer", session != nullptr ? session->producer : std::string()}},
                   "a peer does not read its replies ({} bytes queued for it): dropping its "
                   "requests until it does",
                   queued_bytes(peer));
    }
    fail_sessions(routing_id, "its requests were dropped while it did not read its replies");
  }

  void fail_session(Session& session, std::string_view why) {
    if (session.failed) return;
    session.failed = true;
    metrics::log(*logger, spdlog::level::warn,
                 {{"event", "session_failed"},
                  {"session", session.id},
                  {"producer", session.producer},
                  {"reason", why}},
                 "session {} ({}) failed: {}", session.id, session.producer, why);
  }

  // Every session of the connection: its requests were dropped, whichever
  // session they belonged to.
  void fail_sessions(const std::string& routing_id, std::string_view why) {
    auto found = peer_sessions.find(routing_id);
    if (found == peer_sessions.end()) return;
    for (auto id : found->second) fail_session(sessions.at(id), why);
  }

  // A malformed PUBLISH fails the session its body names, when that can be
  // read and is one of the connection's; else every session of the
  // connection (with one session per connection: that session either way).
  void fail_publishing_session(const std::string& routing_id, std::string_view body,
                               std::string_view why) {
    if (body.size() >= 8) {
      std::uint64_t id = 0;
      for (std::size_t i = 0; i < 8; ++i) {
        id |= static_cast<std::uint64_t>(static_cast<std::uint8_t>(body[i])) << (8 * i);
      }
      if (Session* session = find_session(routing_id, id)) return fail_session(*session, why);
    }
    fail_sessions(routing_id, why);
  }

  static bool is_publish_frame(const zmq::message_t& frame) {
    return frame.size() == 1 && static_cast<const std::uint8_t*>(frame.data())[0] ==
                                    static_cast<std::uint8_t>(wire::Command::publish);
  }

  void dispatch(const std::string& routing_id, std::unique_ptr<wire::Received> received) {
    // A message whose command frame says PUBLISH fails the session whatever
    // else is wrong with it, so no later batch is stored past it.
    bool publish = received->frames.size() >= 3 && is_publish_frame(received->frames[2]);
    auto refuse = [&](std::uint64_t request_id, const wire::Error& error) {
      if (publish) {
        fail_publishing_session(
            routing_id,
            received->frames.size() >= 4 ? received->views(3).front() : std::string_view(),
            error.message);
      }
      malformed(routing_id, request_id, error);
    };
    if (received->too_many_frames || received->frames.size() != 4) {
      auto request_id =
          publish && received->frames.size() >= 4
              ? wire::peek_request_id(wire::Command::publish, received->views(3).front())
              : 0;
      return refuse(request_id, {wire::ErrorCode::bad_frame_count,
                                 "expected 3 frames (tag, command, body), got " +
                                     (received->too_many_frames
                                          ? std::string("more than 4")
                                          : std::to_string(received->frames.size() - 1))});
    }
    auto views = received->views(1);
    if (auto tag = wire::decode_tag(views[0]); !tag) {
      if (tag.error().code == wire::ErrorCode::unsupported_version &&
          static_cast<std::uint8_t>(views[0][3]) == kFirstProtocolVersion) {
        if (publish) fail_publishing_session(routing_id, views[2], tag.error().message);
        return refuse_first_version(routing_id);
      }
      return refuse(publish ? wire::peek_request_id(wire::Command::publish, views[2]) : 0,
                    tag.error());
    }
    auto command = wire::decode_command(views[1]);
    if (!command) return refuse(0, command.error());
    switch (*command) {
      case wire::Command::publish:
        return handle_publish(routing_id, std::move(received));
      case wire::Command::welcome:
      case wire::Command::ack:
      case wire::Command::messages:
      case wire::Command::offset_committed:
      case wire::Command::pong:
      case wire::Command::stats_reply:
      case wire::Command::resumed:
        return malformed(
            routing_id, 0,
            {wire::ErrorCode::unexpected_command,
             std::string(wire::command_name(*command)) + " is not a request the broker serves"});
      default:
        break;
    }
    // Arrival order: this peer's earlier batches are acknowledged first (and
    // what they stored is visible to its FETCH).
    if (Peer* peer = find_peer(routing_id); peer != nullptr && peer->pending_batches > 0) {
      commit_pending();
    }
    auto decoded = wire::decode_body(*command, views[2], options.limits);
    if (!decoded) {
      return malformed(routing_id, wire::peek_request_id(*command, views[2]), decoded.error());
    }
    std::visit([&](auto& message) { on_message(routing_id, message); }, decoded.value());
  }

  // The connection's earliest open session, if any.
  const Session* first_session(const std::string& routing_id) const {
    auto peer = peer_sessions.find(routing_id);
    if (peer == peer_sessions.end() || peer->second.empty()) return nullptr;
    return &sessions.at(peer->second.front());
  }

  // The session `id` if it is one of the connection's.
  Session* find_session(const std::string& routing_id, std::uint64_t id) {
    auto found = sessions.find(id);
    if (found == sessions.end() || found->second.routing_id != routing_id) return nullptr;
    return &found->second;
  }

  // Every path that ends a session comes here: HELLO replacing it, a newer
  // session of its origin, eviction of the oldest, RESUME by the next
  // session; its retained ACKs go with it.
  void erase_session(std::uint64_t id) {
    auto found = sessions.find(id);
    if (found == sessions.end()) return;
    retained_ack_bytes -= found->second.retained_ack_bytes;
    auto forget = [id](auto& index, const std::string& key) {
      auto entry = index.find(key);
      if (entry == index.end()) return;
      std::erase(entry->second, id);
      if (entry->second.empty()) index.erase(entry);
    };
    forget(peer_sessions, found->second.routing_id);
    if (!found->second.origin.empty()) forget(origin_sessions, found->second.origin);
    sessions.erase(found);
  }

  // A new session of an origin ends the earlier ones of that origin, on any
  // connection, but two: the latest of its own lease epoch (a RESUME from the
  // new session may still ask about it, or it is the relay's live session
  // next to which it opened a spare), and the latest of an older epoch that
  // published, else the latest of an older epoch (its relay, if still
  // running, learns from stale_epoch that it lost the lease). Without this, the sessions of broken
  // connections and of databases a relay closed and opened again would stay until evicted as the
  // least recently active under the session maximum.
  void end_older_sessions(const std::string& origin, std::uint64_t epoch) {
    auto entry = origin_sessions.find(origin);
    if (entry == origin_sessions.end()) return;
    std::uint64_t keep_same = 0, keep_older = 0;
    bool older_published = false;
    for (auto id : entry->second) {
      const Session& session = sessions.at(id);
      if (session.epoch == epoch) keep_same = id;
      if (session.epoch < epoch && (session.has_batch || !older_published)) {
        keep_older = id;
        older_published = session.has_batch;
      }
    }
    std::vector<std::uint64_t> ended;
    for (auto id : entry->second) {
      if (id != keep_same && id != keep_older) ended.push_back(id);
    }
    for (auto id : ended) erase_session(id);
  }

  // What a HELLO replaces: with "one of several", the connection's session
  // for the same origin; without, every session of the connection.
  void end_replaced_sessions(const std::string& routing_id, const wire::Hello& hello) {
    auto peer = peer_sessions.find(routing_id);
    if (peer == peer_sessions.end()) return;
    std::vector<std::uint64_t> replaced;
    for (auto id : peer->second) {
      if ((hello.flags & wire::kHelloOneOfSeveral) == 0 || sessions.at(id).origin == hello.origin) {
        replaced.push_back(id);
      }
    }
    for (auto id : replaced) erase_session(id);
  }

  void handle_publish(const std::string& routing_id, std::unique_ptr<wire::Received> received) {
    auto views = received->views(1);
    auto view = wire::decode_publish_view(views[2], options.limits);
    if (!view) {
      fail_publishing_session(routing_id, views[2], view.error().message);
      return malformed(routing_id, wire::peek_request_id(wire::Command::publish, views[2]),
                       view.error());
    }
    Session* session = find_session(routing_id, view->session_id);
    if (session == nullptr) {
      ++counters.refused_batches;
      return reply_error(
          routing_id, view->batch_id, wire::ErrorCode::no_session,
          "no session " + std::to_string(view->session_id) + " on this connection; send HELLO");
    }
    session->last_active = Clock::now();
    if (!session->failed && !session->origin.empty()) {
      // A newer relay of the same outbox opened a session since: this one
      // is stale and must not store anything more.
      std::uint64_t highest = 0;
      try {
        highest = store.origin_epoch(session->origin);
      } catch (const std::exception& error) {
        session->failed = true;
        ++counters.storage_failures;
        return reply_error(routing_id, view->batch_id, wire::ErrorCode::storage_failure,
                           std::string("cannot read the lease epoch: ") + error.what());
      }
      if (highest > session->epoch) {
        session->failed = true;
        ++counters.refused_batches;
        ++counters.stale_epochs;
        metrics::log(*logger, spdlog::level::warn,
                     {{"event", "session_refused"},
                      {"session", session->id},
                      {"producer", session->producer},
                      {"origin", session->origin},
                      {"epoch", session->epoch},
                      {"newest_epoch", highest},
                      {"error_code", "stale_epoch"}},
                     "session {} ({}) refused: {}", session->id, session->producer,
                     stale_epoch_text(session->origin, session->epoch, highest));
        return reply_error(routing_id, view->batch_id, wire::ErrorCode::stale_epoch,
                           stale_epoch_text(session->origin, session->epoch, highest));
      }
    }
    if (session->failed) {
      ++counters.refused_batches;
      return reply_error(
          routing_id, view->batch_id, wire::ErrorCode::session_failed,
          "an earlier batch of session " + std::to_string(session->id) +
              " failed; send HELLO and resend from the first unacknowledged message");
    }
    if (session->has_batch && view->batch_id != session->last_batch_id + 1) {
      ++counters.refused_batches;
      auto why = "batch " + std::to_string(view->batch_id) + " follows batch " +
                 std::to_string(session->last_batch_id) +
                 ": batch ids of a session must be consecutive";
      fail_session(*session, why);
      return reply_error(routing_id, view->batch_id, wire::ErrorCode::invalid_value,
                         why + "; send HELLO and resend from the first unacknowledged message");
    }
    session->has_batch = true;
    session->last_batch_id = view->batch_id;
    PendingBatch batch;
    batch.routing_id = routing_id;
    batch.session_id = session->id;
    batch.batch_id = view->batch_id;
    batch.slots.reserve(view->messages.size());
    for (const auto& message : view->messages) {
      if (!session->refused_keys.empty() &&
          session->refused_keys.count(refusal_key(message.topic, message.key)) > 0) {
        batch.slots.push_back(kBlocked);
        continue;
      }
      if (!message.violation.empty()) {
        // A field above its limit: REJECTED here, and its key blocked for the
        // rest of the session like any refused message.
        batch.slots.push_back(kRejectedSlotBase + static_cast<std::uint32_t>(violations.size()));
        violations.push_back(message.violation);
        session->refused_keys.insert(refusal_key(message.topic, message.key));
        continue;
      }
      // The session is the order group: inside one group commit the store
      // blocks later messages of a key after a refused one.
      batch.slots.push_back(static_cast<std::uint32_t>(incoming.size()));
      incoming.push_back(IncomingMessage{message.msg_id, message.topic, message.key,
                                         message.headers, message.payload, session->id});
    }
    // Whole frames: what the round holds is what the next read is weighed against.
    pending_bytes += views[2].size();
    Peer& peer = peer_for(routing_id);
    ++peer.pending_batches;
    peer.pending_reply_bytes += kAckHeaderBytes + batch.slots.size() * kAckEntryEstimateBytes;
    batch.frames = std::move(received);
    pending.push_back(std::move(batch));
  }

  void commit_pending() {
    if (pending.empty()) return;
    for (const auto& batch : pending) {
      if (Peer* peer = find_peer(batch.routing_id); peer != nullptr && peer->pending_batches > 0) {
        --peer->pending_batches;
        peer->pending_reply_bytes = 0;
      }
    }
    if (pending_bytes >= kTrimAfterBytes) trim_due = true;
    bool ok = false;
    try {
      auto started = Clock::now();
      if (incoming.empty()) {
        outcomes.clear();
      } else {
        store.append(incoming, outcomes);
      }
      auto took = Clock::now() - started;
      counters.append_nanoseconds += static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(took).count());
      ok = true;
      if (options.metrics && !incoming.empty()) {
        options.metrics->group_commit_messages.observe(static_cast<double>(incoming.size()));
        options.metrics->group_commit_seconds.observe(std::chrono::duration<double>(took).count());
        options.metrics->store_writable.set(1);
      }
    } catch (const std::exception& error) {
      ++counters.storage_failures;
      if (options.metrics) options.metrics->store_writable.set(0);
      metrics::log(*logger, spdlog::level::err,
                   {{"event", "store_write_failed"},
                    {"db", store.path().string()},
                    {"messages", incoming.size()},
                    {"error", error.what()}},
                   "group commit of {} messages failed: {}", incoming.size(), error.what());
      for (const auto& batch : pending) {
        if (auto* session = find_session(batch.routing_id, batch.session_id)) {
          session->failed = true;
        }
        reply(batch.routing_id, wire::ErrorReply{batch.batch_id, wire::ErrorCode::storage_failure,
                                                 std::string("batch not stored: ") + error.what()});
      }
    }
    if (ok) {
      ++counters.group_commits;
      counters.batches += pending.size();
      counters.messages += incoming.size();
      touched_topics.clear();
      for (const auto& batch : pending) {
        wire::Ack ack;
        ack.batch_id = batch.batch_id;
        ack.entries.reserve(batch.slots.size());
        Session* session = find_session(batch.routing_id, batch.session_id);
        for (auto slot : batch.slots) {
          wire::AckEntry entry;
          if (slot == kBlocked) {
            ++counters.blocked;
            entry.status = wire::AckStatus::blocked;
            entry.reason = kBlockedReason;
            ack.entries.push_back(std::move(entry));
            continue;
          }
          if (slot >= kRejectedSlotBase) {
            ++counters.rejected_on_decode;
            entry.status = wire::AckStatus::rejected;
            entry.reason = std::string(violations[slot - kRejectedSlotBase]);
            ack.entries.push_back(std::move(entry));
            continue;
          }
          auto i = static_cast<std::size_t>(slot);
          const auto& outcome = outcomes[i];
          if ((outcome.status == AppendStatus::conflict ||
               outcome.status == AppendStatus::rejected ||
               outcome.status == AppendStatus::blocked) &&
              session != nullptr) {
            session->refused_keys.insert(refusal_key(incoming[i].topic, incoming[i].partition_key));
          }
          entry.offset = outcome.offset;
          switch (outcome.status) {
            case AppendStatus::stored:
              entry.status = wire::AckStatus::stored;
              note_topic(incoming[i].topic);
              break;
            case AppendStatus::duplicate:
              entry.status = wire::AckStatus::duplicate;
              break;
            case AppendStatus::conflict:
              entry.status = wire::AckStatus::conflict;
              entry.reason = outcome.detail;
              break;
            case AppendStatus::rejected:
              entry.status = wire::AckStatus::rejected;
              entry.reason = reject_text(outcome.reason);
              break;
            case AppendStatus::blocked:
              ++counters.blocked;
              entry.status = wire::AckStatus::blocked;
              entry.reason = kBlockedReason;
              break;
          }
          ack.entries.push_back(std::move(entry));
        }
        reply(batch.routing_id, ack);
        if (session != nullptr && !session->origin.empty()) retain_ack(*session, std::move(ack));
      }
    }
    pending.clear();
    incoming.clear();
    violations.clear();
    pending_bytes = 0;
    if (ok && !waiting.empty()) wake_fetches();
  }

  static std::size_t ack_wire_bytes(const wire::Ack& ack) {
    std::size_t bytes = 12;
    for (const auto& entry : ack.entries) bytes += 11 + entry.reason.size();
    return bytes;
  }

  // Keeps `ack` (of a batch just stored) for a RESUME, dropping the session's
  // oldest ones beyond its share. Over the total budget, the session keeps
  // none: its relay then resends what it had in flight, as without RESUME.
  void retain_ack(Session& session, wire::Ack ack) {
    auto bytes = ack_wire_bytes(ack);
    session.retained_acks.push_back(std::move(ack));
    session.retained_ack_bytes += bytes;
    retained_ack_bytes += bytes;
    while (!session.retained_acks.empty() &&
           (session.retained_ack_bytes > kRetainedAckBytesPerSession ||
            retained_ack_bytes > kRetainedAckBytesTotal)) {
      auto oldest = ack_wire_bytes(session.retained_acks.front());
      session.retained_acks.pop_front();
      session.retained_ack_bytes -= oldest;
      retained_ack_bytes -= oldest;
    }
  }

  static std::string refusal_key(std::string_view topic, std::string_view key) {
    std::string text;
    text.reserve(topic.size() + 1 + key.size());
    text.append(topic);
    text.push_back('\0');
    text.append(key);
    return text;
  }

  void note_topic(std::string_view topic) {
    if (std::find(touched_topics.begin(), touched_topics.end(), topic) == touched_topics.end()) {
      touched_topics.emplace_back(topic);
    }
  }

  // ---- other commands ---------------------------------------------------------

  static std::string stale_epoch_text(const std::string& origin, std::uint64_t epoch,
                                      std::uint64_t highest) {
    return "lease epoch " + std::to_string(epoch) + " of origin " + origin +
           " is older than epoch " + std::to_string(highest) +
           " already seen: another relay holds that outbox's lease";
  }

  void on_message(const std::string& routing_id, wire::Hello& hello) {
    if (!hello.origin.empty()) {
      // A refused HELLO also ends what it would have replaced.
      auto refuse = [&](wire::ErrorCode code, const std::string& text) {
        end_replaced_sessions(routing_id, hello);
        reply_error(routing_id, hello.hello_id, code, text);
      };
      std::uint64_t highest = 0;
      try {
        highest = store.advance_origin_epoch(hello.origin, hello.epoch);
      } catch (const std::invalid_argument& error) {
        ++counters.malformed;
        return refuse(wire::ErrorCode::invalid_value, std::string("HELLO: ") + error.what());
      } catch (const std::exception& error) {
        ++counters.storage_failures;
        return refuse(wire::ErrorCode::storage_failure,
                      std::string("cannot record the lease epoch: ") + error.what());
      }
      if (highest > hello.epoch) {
        ++counters.stale_epochs;
        metrics::log(*logger, spdlog::level::warn,
                     {{"event", "session_refused"},
                      {"producer", hello.producer},
                      {"origin", hello.origin},
                      {"epoch", hello.epoch},
                      {"newest_epoch", highest},
                      {"error_code", "stale_epoch"}},
                     "HELLO from '{}' refused: {}", hello.producer,
                     stale_epoch_text(hello.origin, hello.epoch, highest));
        return refuse(wire::ErrorCode::stale_epoch,
                      stale_epoch_text(hello.origin, hello.epoch, highest));
      }
    }
    end_replaced_sessions(routing_id, hello);
    if (sessions.size() >= options.max_sessions) {
      auto oldest = std::min_element(sessions.begin(), sessions.end(), [](auto& a, auto& b) {
        return a.second.last_active < b.second.last_active;
      });
      if (oldest != sessions.end()) erase_session(oldest->first);
    }
    const auto id = ++next_session_id;
    Session& session = sessions[id];
    session.id = id;
    session.routing_id = routing_id;
    session.producer = hello.producer;
    session.last_active = Clock::now();
    session.origin = hello.origin;
    session.epoch = hello.epoch;
    peer_sessions[routing_id].push_back(id);
    if (!hello.origin.empty()) {
      end_older_sessions(hello.origin, hello.epoch);
      origin_sessions[hello.origin].push_back(id);
    }
    ++counters.sessions_opened;
    if (hello.origin.empty()) {
      metrics::log(
          *logger, spdlog::level::info,
          {{"event", "session_opened"}, {"session", session.id}, {"producer", hello.producer}},
          "session {} opened by '{}'", session.id, hello.producer);
    } else {
      metrics::log(*logger, spdlog::level::info,
                   {{"event", "session_opened"},
                    {"session", session.id},
                    {"producer", hello.producer},
                    {"origin", hello.origin},
                    {"epoch", hello.epoch}},
                   "session {} opened by '{}' for origin {} at lease epoch {}", session.id,
                   hello.producer, hello.origin, hello.epoch);
    }
    auto welcome = wire::welcome_for(session.id, store.options().max_message_bytes,
                                     options.broker_name, options.limits);
    welcome.hello_id = hello.hello_id;
    answer(routing_id, welcome);
  }

  // The relay's new session asks which batches of its previous one (whose
  // connection broke) were stored: their ACKs again, consecutive from the
  // first batch it has no ACK for. Only for the same origin and lease epoch,
  // so a session learns nothing about another relay's batches. The previous
  // session is over afterwards: a late batch of it on a connection that is
  // still open somewhere is not applied (no_session), so nothing of it can be
  // stored behind what the new session resends.
  void on_message(const std::string& routing_id, wire::Resume& resume) {
    Session* session = find_session(routing_id, resume.session_id);
    if (session == nullptr) {
      return reply_error(routing_id, 0, wire::ErrorCode::no_session,
                         "RESUME: no session " + std::to_string(resume.session_id) +
                             " on this connection; send HELLO");
    }
    session->last_active = Clock::now();
    wire::Resumed resumed{resume.previous_session_id, {}};
    // By id, on whichever connection it was: a relay carrying several
    // databases over a connection resumes each database's session on its own.
    auto previous = sessions.find(resume.previous_session_id);
    if (previous != sessions.end()) {
      const Session& other = previous->second;
      if (other.id == session->id || other.origin.empty() || other.origin != session->origin ||
          other.epoch != session->epoch) {
        previous = sessions.end();
      }
    }
    if (previous != sessions.end()) {
      // Its batches read in this round count: stored now, they need no resend.
      const bool previous_pending =
          std::any_of(pending.begin(), pending.end(), [&](const PendingBatch& batch) {
            return batch.session_id == resume.previous_session_id;
          });
      if (previous_pending) commit_pending();
      auto& acks = previous->second.retained_acks;
      auto next = std::find_if(acks.begin(), acks.end(), [&](const wire::Ack& ack) {
        return ack.batch_id == resume.from_batch_id;
      });
      for (auto expected = resume.from_batch_id; next != acks.end() && next->batch_id == expected;
           ++next, ++expected) {
        resumed.acks.push_back(std::move(*next));
      }
      erase_session(previous->first);
    }
    ++counters.resumes;
    counters.resumed_batches += resumed.acks.size();
    logger->debug("session {} resumed {} batches of session {} from batch {}", session->id,
                  resumed.acks.size(), resume.previous_session_id, resume.from_batch_id);
    answer(routing_id, resumed);
  }

  void on_message(const std::string& routing_id, wire::Fetch& fetch) {
    ++counters.fetches;
    if (fetch.topic.empty()) {
      return reply_error(routing_id, fetch.request_id, wire::ErrorCode::invalid_value,
                         "FETCH needs a topic");
    }
    if (fetch.use_group_offset) {
      if (fetch.group.empty()) {
        return reply_error(routing_id, fetch.request_id, wire::ErrorCode::invalid_value,
                           "FETCH from the group offset needs a group");
      }
      try {
        // A group that never committed (or committed 0) starts at from_offset.
        auto committed = store.committed_offset(fetch.group, fetch.topic);
        if (committed > 0) fetch.from_offset = committed + 1;
      } catch (const std::exception& error) {
        return reply_error(routing_id, fetch.request_id, wire::ErrorCode::storage_failure,
                           error.what());
      }
    }
    fetch.from_offset = std::max<std::uint64_t>(fetch.from_offset, 1);
    fetch.max_messages = fetch.max_messages == 0
                             ? options.default_fetch_messages
                             : std::min(fetch.max_messages, options.max_fetch_messages);
    fetch.max_bytes = static_cast<std::uint32_t>(
        fetch.max_bytes == 0 ? options.max_fetch_bytes
                             : std::min<std::size_t>(fetch.max_bytes, options.max_fetch_bytes));
    fetch.wait_ms = std::min(fetch.wait_ms, options.max_fetch_wait_ms);
    if (fetch.wait_ms == 0 || store.last_offset(fetch.topic) >= fetch.from_offset ||
        waiting.size() >= options.max_waiting_fetches) {
      return answer_fetch(routing_id, fetch);
    }
    waiting.push_back(
        WaitingFetch{routing_id, fetch, Clock::now() + std::chrono::milliseconds(fetch.wait_ms)});
  }

  void answer_fetch(const std::string& routing_id, const wire::Fetch& fetch) {
    wire::Messages reply_message;
    reply_message.request_id = fetch.request_id;
    reply_message.topic = fetch.topic;
    try {
      // Sized to what the peer can still take: with no room left the reply
      // carries no messages (next_offset = from_offset), and the first message
      // of a reply may exceed the room by at most one message.
      auto room = outgoing_room(routing_id);
      auto max_bytes = std::min<std::size_t>(fetch.max_bytes, room);
      auto max_messages = room == 0 ? 0 : fetch.max_messages;
      if (fetch.max_bytes >= kTrimAfterBytes) trim_due = true;
      auto result = store.fetch(fetch.topic, fetch.from_offset, max_messages, max_bytes);
      reply_message.next_offset = result.next_offset;
      reply_message.last_offset = result.last_offset;
      reply_message.messages.reserve(result.messages.size());
      for (auto& stored : result.messages) {
        wire::StoredMessage message;
        message.offset = stored.offset;
        message.timestamp_ms = stored.stored_at_ms;
        message.msg_id = std::move(stored.msg_id);
        message.key = std::move(stored.partition_key);
        auto headers = wire::decode_headers(stored.headers, options.limits);
        if (headers) message.headers = std::move(headers.value());
        message.payload = std::move(stored.payload);
        reply_message.messages.push_back(std::move(message));
      }
    } catch (const std::exception& error) {
      return reply_error(routing_id, fetch.request_id, wire::ErrorCode::storage_failure,
                         error.what());
    }
    answer(routing_id, reply_message);
  }

  void wake_fetches() {
    auto ready = [&](const WaitingFetch& entry) {
      if (std::find(touched_topics.begin(), touched_topics.end(), entry.request.topic) ==
          touched_topics.end()) {
        return false;
      }
      return store.last_offset(entry.request.topic) >= entry.request.from_offset;
    };
    answer_waiting_if(ready);
  }

  template <typename Predicate>
  void answer_waiting_if(Predicate predicate) {
    std::vector<WaitingFetch> still;
    still.reserve(waiting.size());
    std::vector<WaitingFetch> due;
    for (auto& entry : waiting) {
      (predicate(entry) ? due : still).push_back(std::move(entry));
    }
    waiting = std::move(still);
    for (const auto& entry : due) answer_fetch(entry.routing_id, entry.request);
  }

  void on_message(const std::string& routing_id, wire::CommitOffset& commit) {
    if (commit.topic.empty() || commit.group.empty()) {
      return reply_error(routing_id, commit.request_id, wire::ErrorCode::invalid_value,
                         "COMMIT_OFFSET needs a topic and a group");
    }
    try {
      store.commit_offset(commit.group, commit.topic, commit.offset);
    } catch (const std::invalid_argument& error) {
      return reply_error(routing_id, commit.request_id, wire::ErrorCode::invalid_value,
                         error.what());
    } catch (const std::exception& error) {
      return reply_error(routing_id, commit.request_id, wire::ErrorCode::storage_failure,
                         error.what());
    }
    answer(routing_id,
           wire::OffsetCommitted{commit.request_id, commit.topic, commit.group, commit.offset});
  }

  void on_message(const std::string& routing_id, wire::Ping& ping) {
    answer(routing_id, wire::Pong{ping.nonce});
  }

  std::uint64_t outgoing_bytes() const {
    std::uint64_t total = 0;
    for (const auto& [id, peer] : peers) total += queued_bytes(peer);
    return total;
  }

  std::uint64_t requests_waiting() const {
    std::uint64_t total = 0;
    for (const auto& [id, peer] : peers) total += peer.parked.size();
    return total;
  }

  void on_message(const std::string& routing_id, wire::StatsRequest& request) {
    wire::StatsReply stats;
    stats.request_id = request.request_id;
    try {
      auto store_stats = store.stats();
      stats.counters = {
          {"stored", store_stats.stored},
          {"duplicates", store_stats.duplicates},
          {"conflicts", store_stats.conflicts},
          {"rejected", store_stats.rejected + counters.rejected_on_decode},
          {"dedup_entries", store_stats.dedup_entries},
          {"malformed", counters.malformed},
          {"refused_batches", counters.refused_batches},
          {"stale_epochs", counters.stale_epochs},
          {"blocked", counters.blocked},
          {"storage_failures", counters.storage_failures},
          {"group_commits", counters.group_commits},
          {"batches", counters.batches},
          {"fetches", counters.fetches},
          {"sessions_opened", counters.sessions_opened},
          {"sessions_active", sessions.size()},
          {"waiting_fetches", waiting.size()},
          {"replies_dropped", counters.replies_dropped},
          {"curve_refused", counters.curve_refused},
          {"resumes", counters.resumes},
          {"resumed_batches", counters.resumed_batches},
          // 0: forever. Clients compare it with how late they may resend.
          {"dedup_window_ms", static_cast<std::uint64_t>(store.options().dedup_window.count())},
          {"requests_dropped", counters.requests_dropped},
          {"peers_held_back", held_back.size()},
          {"outgoing_bytes", outgoing_bytes()},
          {"retained_ack_bytes", retained_ack_bytes},
          {"requests_waiting", requests_waiting()},
      };
      for (auto& topic : store_stats.topics) {
        stats.topics.push_back({std::move(topic.topic), topic.message_count, topic.last_offset});
      }
    } catch (const std::exception& error) {
      return reply_error(routing_id, request.request_id, wire::ErrorCode::storage_failure,
                         error.what());
    }
    answer(routing_id, stats);
  }

  void on_message(const std::string&, wire::ErrorReply& error) {
    logger->debug("peer reported error {}: {}", wire::error_code_name(error.code), error.message);
  }
  // Broker-to-client commands arriving at the broker.
  template <typename Other>
  void on_message(const std::string& routing_id, Other& message) {
    malformed(routing_id, 0,
              {wire::ErrorCode::unexpected_command,
               std::string(wire::command_name(wire::command_of(wire::AnyMessage(message)))) +
                   " is not a request the broker serves"});
  }

  // ---- ZAP (CURVE authorisation) ----------------------------------------------

  void serve_zap() {
    while (true) {
      auto request = wire::receive_frames(*zap, zmq::recv_flags::dontwait, 10);
      if (!request) return;
      auto frames = request->views();
      std::string request_id = frames.size() > 1 ? std::string(frames[1]) : std::string();
      bool allowed = false;
      std::string client_key;
      if (frames.size() >= 7 && frames[0] == "1.0" && frames[5] == "CURVE") {
        client_key = std::string(frames[6]);
        allowed = allowed_clients.empty() ||
                  std::find(allowed_clients.begin(), allowed_clients.end(), client_key) !=
                      allowed_clients.end();
      }
      if (!allowed) {
        ++counters.curve_refused;
        const auto key = binary_to_z85(client_key);
        metrics::log(*logger, spdlog::level::warn,
                     {{"event", "curve_refused"}, {"client_key", key}}, "refused CURVE client {}",
                     key);
      }
      std::string_view reply_frames[] = {
          "1.0", request_id, allowed ? "200" : "400", allowed ? "OK" : "client key not allowed",
          "",    ""};
      for (std::size_t i = 0; i < std::size(reply_frames); ++i) {
        auto flags =
            i + 1 < std::size(reply_frames) ? zmq::send_flags::sndmore : zmq::send_flags::none;
        zap->send(zmq::buffer(reply_frames[i].data(), reply_frames[i].size()), flags);
      }
    }
  }

  // ---- loop -------------------------------------------------------------------

  std::chrono::milliseconds next_timeout(Clock::time_point now) const {
    auto deadline = now + std::chrono::milliseconds(100);  // re-check the stop flag
    for (const auto& entry : waiting) deadline = std::min(deadline, entry.deadline);
    if (maintenance_enabled()) deadline = std::min(deadline, next_maintenance);
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    return std::max(wait, std::chrono::milliseconds(0));
  }

  bool maintenance_enabled() const {
    return store.options().retention.count() > 0 || store.options().dedup_window.count() > 0;
  }

  void maintain(Clock::time_point now) {
    if (!maintenance_enabled() || now < next_maintenance) return;
    next_maintenance = now + options.maintenance_interval;
    try {
      auto result = store.run_maintenance();
      if (result.bodies_deleted > 0 || result.dedup_entries_deleted > 0) {
        logger->debug("maintenance removed {} bodies, {} dedup entries", result.bodies_deleted,
                      result.dedup_entries_deleted);
      }
      if (result.more) next_maintenance = now;
    } catch (const std::exception& error) {
      metrics::log(
          *logger, spdlog::level::err,
          {{"event", "maintenance_failed"}, {"db", store.path().string()}, {"error", error.what()}},
          "maintenance failed: {}", error.what());
    }
  }

  // Copies the loop's counters and the store's figures into the metrics, once
  // per second: nothing per message.
  void refresh_metrics(Clock::time_point now) {
    if (!options.metrics || now < next_metrics_refresh) return;
    next_metrics_refresh = now + std::chrono::seconds(1);
    auto& m = *options.metrics;
    m.malformed_frames.set(counters.malformed);
    m.refused_batches.set(counters.refused_batches);
    m.stale_epochs.set(counters.stale_epochs);
    m.curve_refused.set(counters.curve_refused);
    m.storage_failures.set(counters.storage_failures);
    m.sessions_opened.set(counters.sessions_opened);
    m.fetches.set(counters.fetches);
    m.messages_blocked.set(counters.blocked);
    m.sessions.set(static_cast<double>(sessions.size()));
    std::size_t outgoing = 0;
    for (const auto& [routing_id, peer] : peers) {
      outgoing += peer.account->bytes.load(std::memory_order_relaxed) + peer.backlog_bytes;
    }
    m.outgoing_bytes.set(static_cast<double>(outgoing));
    std::error_code ignored;
    auto bytes = std::filesystem::file_size(store.path(), ignored);
    auto wal_bytes = std::filesystem::file_size(store.path().string() + "-wal", ignored);
    m.database_bytes.set(static_cast<double>((bytes == std::uintmax_t(-1) ? 0 : bytes) +
                                             (wal_bytes == std::uintmax_t(-1) ? 0 : wal_bytes)));
    try {
      auto stats = store.stats();
      m.messages_stored.set(stats.stored);
      m.messages_duplicate.set(stats.duplicates);
      m.messages_conflict.set(stats.conflicts);
      m.messages_rejected.set(stats.rejected + counters.rejected_on_decode);
      m.dedup_entries.set(static_cast<double>(stats.dedup_entries));
      std::vector<ServerMetrics::TopicOffset> topics;
      for (std::size_t i = 0; i < stats.topics.size() && i < m.max_topic_series; ++i) {
        topics.push_back({stats.topics[i].topic, stats.topics[i].last_offset});
      }
      auto left_out = stats.topics.size() - topics.size();
      auto offsets = store.group_offsets(m.max_group_series + 1);
      bool groups_left_out = offsets.size() > m.max_group_series;
      if (groups_left_out) offsets.pop_back();
      std::vector<ServerMetrics::GroupLag> groups;
      for (auto& offset : offsets) {
        auto last = store.last_offset(offset.topic);
        groups.push_back({std::move(offset.group), std::move(offset.topic), offset.committed_offset,
                          last > offset.committed_offset ? last - offset.committed_offset : 0});
      }
      m.publish(std::move(topics), left_out, std::move(groups), groups_left_out);
    } catch (const std::exception& error) {
      logger->debug("could not read the store's figures for the metrics: {}", error.what());
    }
  }

  void run() {
    logger->info("serving on {}", endpoint);
    if (options.metrics) options.metrics->serving.set(1);
    while (!stop.load(std::memory_order_relaxed)) {
      auto now = Clock::now();
      std::vector<zmq::pollitem_t> items = {{router.handle(), 0, ZMQ_POLLIN, 0},
                                            {nullptr, wake.fd(), ZMQ_POLLIN, 0}};
      if (zap) items.push_back({zap->handle(), 0, ZMQ_POLLIN, 0});
      auto timeout = wake_now ? std::chrono::milliseconds(0) : next_timeout(now);
      try {
        zmq::poll(items, timeout);
      } catch (const zmq::error_t& error) {
        if (error.num() != EINTR) throw;
        continue;
      }
      bool idle = true;
      if (zap && (items[2].revents & ZMQ_POLLIN) != 0) serve_zap();
      if ((items[1].revents & ZMQ_POLLIN) != 0 || wake_now) {
        wake.drain();
        wake_now = false;
        idle = false;
        serve_held_back();
      }
      if ((items[0].revents & ZMQ_POLLIN) != 0) idle = !read_round() && idle;
      now = Clock::now();
      if (!waiting.empty()) {
        answer_waiting_if([now](const WaitingFetch& entry) { return entry.deadline <= now; });
      }
      maintain(now);
      refresh_metrics(now);
      if (now >= next_peer_sweep) {
        next_peer_sweep = now + std::chrono::seconds(1);
        sweep_peers();
      }
      if (idle) return_memory();
    }
    shutdown();
  }

  // Server::serve: one request handled as read_round() handles what it receives.
  void serve(std::string_view routing_id, std::span<const std::string_view> frames) {
    auto received = std::make_unique<wire::Received>();
    received->frames.emplace_back(routing_id.data(), routing_id.size());
    for (auto frame : frames) {
      if (received->frames.size() == kMaxReceivedFrames) {
        received->too_many_frames = true;
        break;
      }
      received->frames.emplace_back(frame.data(), frame.size());
    }
    handle(std::move(received));
    commit_pending();
  }

  // Connections whose replies were all written cost nothing here.
  void sweep_peers() {
    for (auto it = peers.begin(); it != peers.end();) {
      const Peer& peer = it->second;
      if (peer.backlog.empty() && peer.parked.empty() && peer.pending_batches == 0 &&
          peer.account->bytes.load(std::memory_order_acquire) == 0) {
        it = peers.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Freed buffers of large batches and replies go back to the system when
  // the loop has nothing to do, so a burst does not leave the process large.
  void return_memory() {
    if (!trim_due) return;
    trim_due = false;
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
  }

  void shutdown() {
    if (options.metrics) options.metrics->serving.set(0);
    logger->info("stopping: committing and acknowledging what was received");
    // Bounded: a peer that keeps sending cannot keep the broker alive.
    for (int round = 0; round < 20 && read_round(); ++round) {
    }
    answer_waiting_if([](const WaitingFetch&) { return true; });
    serve_held_back();  // what fits in ZeroMQ now goes out during the linger
    router.set(zmq::sockopt::linger, static_cast<int>(options.shutdown_linger.count()));
    router.close();
    if (zap) zap->close();
    logger->info("stopped after {} group commits, {} messages", counters.group_commits,
                 counters.messages);
  }

  static constexpr std::uint32_t kBlocked = 0xffffffffu;
  // An ACK: batch id and count, then per message status, offset and a reason
  // (empty for STORED and DUPLICATE, up to ~70 bytes for BLOCKED).
  static constexpr std::size_t kAckHeaderBytes = 12;
  static constexpr std::size_t kAckEntryEstimateBytes = 11 + 80;
  // Slots from here on index `violations` (messages refused while decoding).
  static constexpr std::uint32_t kRejectedSlotBase = 0x80000000u;
  // A group commit or a peer's queue this large leaves freed memory worth
  // returning to the system once the loop is idle.
  static constexpr std::size_t kTrimAfterBytes = std::size_t{8} << 20;
  static constexpr const char* kBlockedReason =
      "an earlier message of this topic and key was refused in this session";

  Store& store;
  ServerOptions options;
  std::shared_ptr<spdlog::logger> logger;
  WakeFd wake;  // before the context: outlives its I/O threads
  zmq::context_t context;
  zmq::socket_t router;
  std::optional<zmq::socket_t> zap;
  ConnectionWatcher connection_watcher;  // after the context: stopped before it ends
  Clock::time_point next_metrics_refresh{};
  std::vector<std::string> allowed_clients;  // binary 32-byte keys
  std::string endpoint;
  std::atomic<bool> stop{false};
  ServerCounters counters;

  std::unordered_map<std::uint64_t, Session> sessions;  // by session id
  // The session ids of each connection that has any, in opening order.
  std::unordered_map<std::string, std::vector<std::uint64_t>> peer_sessions;
  // The session ids of each origin that has any, in opening order (at most
  // three: see end_older_sessions).
  std::unordered_map<std::string, std::vector<std::uint64_t>> origin_sessions;
  std::size_t retained_ack_bytes = 0;  // Session::retained_acks of all sessions
  std::uint64_t next_session_id = 0;
  std::vector<PendingBatch> pending;
  std::vector<IncomingMessage> incoming;
  std::vector<AppendOutcome> outcomes;
  std::vector<std::string_view> violations;  // REJECTED reasons of the batches in `pending`
  std::unordered_map<std::string, Peer> peers;
  std::unordered_set<std::string> held_back;  // peers with a backlog or parked requests
  bool wake_now = false;
  Clock::time_point next_peer_sweep{};
  bool trim_due = false;
  std::size_t pending_bytes = 0;
  std::vector<std::string> touched_topics;
  std::vector<WaitingFetch> waiting;
  Clock::time_point next_maintenance{};
};

static_assert(std::atomic<bool>::is_always_lock_free, "request_stop must be signal-safe");

Server::Server(Store& store, ServerOptions options)
    : impl_(std::make_unique<Impl>(store, std::move(options))) {}

Server::~Server() noexcept = default;

const std::string& Server::endpoint() const noexcept {
  return impl_->endpoint;
}

void Server::run() {
  impl_->run();
}

void Server::request_stop() noexcept {
  impl_->stop.store(true, std::memory_order_relaxed);
}

void Server::serve(std::string_view routing_id, std::span<const std::string_view> frames) {
  impl_->serve(routing_id, frames);
}

ServerCounters Server::counters() const {
  return impl_->counters;
}

}  // namespace broker
