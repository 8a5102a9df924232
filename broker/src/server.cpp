#include "broker/server.hpp"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <utility>

#include "broker/metrics.hpp"
#include "metrics/log_fields.hpp"
#include "outbox/error.hpp"
#include "outbox/null_logger.hpp"
#include "server_impl.hpp"

namespace broker {
namespace {

using detail::SteadyClock;

constexpr std::uint8_t kFirstProtocolVersion = 1;
// Routing id, tag, command, body, and one more to tell "too many" apart.
constexpr std::size_t kMaxReceivedFrames = 5;

}  // namespace

Server::Impl::Impl(Store& store, ServerOptions options)
    : store_(store),
      options_(std::move(options)),
      logger_(outbox::logger_or_null(options_.logger, "broker")),
      wake_(),
      context_(1),
      router_(context_, zmq::socket_type::router),
      sessions_(options_.max_sessions, options_.first_session_id, *logger_),
      peers_(router_, options_, wake_.fd(), *logger_, counters_) {
  router_.set(zmq::sockopt::router_mandatory, 1);
  router_.set(zmq::sockopt::rcvhwm, options_.receive_high_water_mark);
  router_.set(zmq::sockopt::sndhwm, options_.send_high_water_mark);
  router_.set(zmq::sockopt::linger, 0);
  if (options_.peer_heartbeat_interval.count() > 0) {
    router_.set(zmq::sockopt::heartbeat_ivl,
                static_cast<int>(options_.peer_heartbeat_interval.count()));
    router_.set(zmq::sockopt::heartbeat_timeout,
                static_cast<int>(options_.peer_heartbeat_timeout.count()));
  }
  router_.set(zmq::sockopt::handshake_ivl, static_cast<int>(options_.handshake_timeout.count()));
  // A frame above the largest body we decode (plus slack for the other
  // frames) disconnects the peer inside ZeroMQ before it costs memory.
  router_.set(zmq::sockopt::maxmsgsize,
              static_cast<std::int64_t>(options_.limits.max_body_bytes + 1024));
  if (options_.curve) auth_.emplace(context_, router_, *options_.curve, *logger_);
  try {
    router_.bind(options_.bind_endpoint);
  } catch (const zmq::error_t& error) {
    throw outbox::Error(outbox::ErrorKind::io,
                        "cannot bind " + options_.bind_endpoint + ": " + error.what());
  }
  endpoint_ = router_.get(zmq::sockopt::last_endpoint);
  if (options_.metrics) connection_watcher_.start(context_, router_, options_.metrics->connections);
  if (!options_.endpoint_file.empty()) write_endpoint_file();
  logger_->info("listening on {}", endpoint_);
}

void Server::Impl::write_endpoint_file() {
  auto temporary = options_.endpoint_file;
  temporary += ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << endpoint_ << '\n';
    if (!out) throw outbox::Error(outbox::ErrorKind::io, "cannot write " + temporary.string());
  }
  std::filesystem::rename(temporary, options_.endpoint_file);
}

// ---- replies ------------------------------------------------------------------

void Server::Impl::reply(const std::string& routing_id, const wire::AnyMessage& message) {
  peers_.send(routing_id, wire::encode(message));
}

// Replies are sent in arrival order per connection: before anything is
// answered, this peer's batches in the group commit being collected are
// committed and acknowledged (and what they stored is visible to its FETCH).
void Server::Impl::commit_before_reply(const std::string& routing_id) {
  if (detail::Peer* peer = peers_.find(routing_id);
      peer != nullptr && (peer->pending_batches > 0 || peer->pending_hellos > 0)) {
    commit_pending();
  }
}

void Server::Impl::answer(const std::string& routing_id, const wire::AnyMessage& message) {
  commit_before_reply(routing_id);
  reply(routing_id, message);
}

void Server::Impl::reply_error(const std::string& routing_id, std::uint64_t request_id,
                               wire::ErrorCode code, std::string message) {
  answer(routing_id, wire::ErrorReply{request_id, code, std::move(message)});
}

// A version 1 peer can read ERROR (its layout did not change) only in a
// version 1 frame: tell it in its own version why it is refused.
void Server::Impl::refuse_first_version(const std::string& routing_id) {
  ++counters_.malformed;
  auto frames = wire::encode(
      wire::ErrorReply{0, wire::ErrorCode::unsupported_version,
                       "protocol version " + std::to_string(kFirstProtocolVersion) +
                           " is not supported: this broker speaks version " +
                           std::to_string(wire::kProtocolVersion) + " (upgrade the client)"});
  frames.tag = wire::encode_tag(kFirstProtocolVersion);
  peers_.send(routing_id, std::move(frames));
}

void Server::Impl::malformed(const std::string& routing_id, std::uint64_t request_id,
                             const wire::Error& error) {
  ++counters_.malformed;
  logger_->debug("malformed input: {}", error.message);
  reply_error(routing_id, request_id, error.code, error.message);
}

// Moves backlogs into ZeroMQ as it makes room and serves parked requests of
// peers back under their cap. Called when a reply body was released.
void Server::Impl::serve_held_back() {
  bool served = false;
  for (const auto& routing_id : peers_.held_back()) {
    detail::Peer* peer = peers_.find(routing_id);
    if (peer == nullptr) {
      peers_.release(routing_id);
      continue;
    }
    peers_.flush(routing_id, *peer);
    while (!peer->parked.empty() && has_room(*peer)) {
      auto request = std::move(peer->parked.front());
      peer->parked.pop_front();
      peer->parked_bytes -= detail::Peers::received_bytes(*request);
      served = true;
      dispatch(routing_id, std::move(request));
    }
    peers_.settle(routing_id, *peer);
  }
  if (served) commit_pending();
}

// Whether the peer may be given more work. ACKs are made when the group
// commit ends: before they could take the peer past its cap, commit, so that
// the cap is weighed against real bytes.
bool Server::Impl::has_room(detail::Peer& peer) {
  if (peer.pending_batches > 0 &&
      detail::Peers::queued_bytes(peer) + peer.pending_reply_bytes >= options_.max_outgoing_bytes) {
    commit_pending();
  }
  return !peers_.over_cap(peer);
}

// ---- input --------------------------------------------------------------------

// Reads what is waiting (up to one group commit's worth), then commits it.
// Returns whether anything was read.
bool Server::Impl::read_round() {
  bool any = false;
  while (round_.incoming.size() < options_.max_commit_messages &&
         round_.bytes < options_.max_commit_bytes && round_.hellos.size() < kMaxDeferredHellos) {
    std::optional<wire::Received> received;
    try {
      received = wire::receive_frames(router_, zmq::recv_flags::dontwait, kMaxReceivedFrames);
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

void Server::Impl::handle(std::unique_ptr<wire::Received> received) {
  if (received->frames.empty()) return;
  std::string routing_id(static_cast<const char*>(received->frames[0].data()),
                         received->frames[0].size());
  detail::Peer* peer = peers_.find(routing_id);
  if (peer != nullptr && (!peer->parked.empty() || !has_room(*peer))) {
    return hold_back(routing_id, *peer, std::move(received));
  }
  dispatch(routing_id, std::move(received));
}

// A peer over its outgoing cap gets no more work until it has read enough:
// its requests wait, in order, up to a small bound; beyond it they are
// dropped (counted in requests_dropped) and its session fails, so that
// nothing of it is stored past a dropped batch.
void Server::Impl::hold_back(const std::string& routing_id, detail::Peer& peer,
                             std::unique_ptr<wire::Received> received) {
  if (peers_.park(routing_id, peer, received)) return;
  ++counters_.requests_dropped;
  if (!peer.dropping) {
    peer.dropping = true;
    // The connection's first session names it (each one's failure is
    // logged with its own id below).
    const detail::Session* session = sessions_.first(routing_id);
    const auto queued = detail::Peers::queued_bytes(peer);
    metrics::log(*logger_, spdlog::level::warn,
                 {{"event", "peer_not_reading"},
                  {"queued_bytes", queued},
                  {"session", session != nullptr ? session->id : 0},
                  {"producer", session != nullptr ? session->producer : std::string()}},
                 "a peer does not read its replies ({} bytes queued for it): dropping its "
                 "requests until it does",
                 queued);
  }
  sessions_.fail_all(routing_id, "its requests were dropped while it did not read its replies");
}

void Server::Impl::dispatch(const std::string& routing_id,
                            std::unique_ptr<wire::Received> received) {
  // A message whose command frame says PUBLISH fails the session whatever
  // else is wrong with it, so no later batch is stored past it.
  const auto frame_count = received->frames.size();
  const bool publish =
      frame_count >= 3 &&
      wire::is_command_frame(std::string_view(static_cast<const char*>(received->frames[2].data()),
                                              received->frames[2].size()),
                             wire::Command::publish);
  auto refuse = [&](std::uint64_t request_id, const wire::Error& error) {
    if (publish) {
      sessions_.fail_publishing(routing_id,
                                frame_count >= 4 ? received->views(3).front() : std::string_view(),
                                error.message);
    }
    malformed(routing_id, request_id, error);
  };
  if (received->too_many_frames || frame_count != 4) {
    auto request_id =
        publish && frame_count >= 4
            ? wire::peek_request_id(wire::Command::publish, received->views(3).front())
            : 0;
    return refuse(request_id, {wire::ErrorCode::bad_frame_count,
                               "expected 3 frames (tag, command, body), got " +
                                   (received->too_many_frames ? std::string("more than 4")
                                                              : std::to_string(frame_count - 1))});
  }
  auto views = received->views(1);
  if (auto tag = wire::decode_tag(views[0]); !tag) {
    if (tag.error().code == wire::ErrorCode::unsupported_version &&
        wire::peek_tag_version(views[0]) == kFirstProtocolVersion) {
      if (publish) sessions_.fail_publishing(routing_id, views[2], tag.error().message);
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
  // what they stored is visible to its FETCH). A HELLO sees to it itself: one
  // that raises an epoch joins the group commit after those batches.
  if (*command != wire::Command::hello) commit_before_reply(routing_id);
  auto decoded = wire::decode_body(*command, views[2], options_.limits);
  if (!decoded) {
    return malformed(routing_id, wire::peek_request_id(*command, views[2]), decoded.error());
  }
  std::visit([&](auto& message) { on_message(routing_id, message); }, decoded.value());
}

void Server::Impl::on_message(const std::string& routing_id, wire::Ping& ping) {
  answer(routing_id, wire::Pong{ping.nonce});
}

void Server::Impl::on_message(const std::string&, wire::ErrorReply& error) {
  logger_->debug("peer reported error {}: {}", wire::error_code_name(error.code), error.message);
}

// Broker-to-client commands arriving at the broker.
template <typename Other>
void Server::Impl::on_message(const std::string& routing_id, Other& message) {
  malformed(routing_id, 0,
            {wire::ErrorCode::unexpected_command,
             std::string(wire::command_name(wire::command_of(wire::AnyMessage(message)))) +
                 " is not a request the broker serves"});
}

// ---- loop ---------------------------------------------------------------------

std::chrono::milliseconds Server::Impl::next_timeout(SteadyClock::time_point now) const {
  auto deadline =
      waiting_.earliest(now + std::chrono::milliseconds(100));  // re-check the stop flag
  if (maintenance_enabled()) deadline = std::min(deadline, next_maintenance_);
  // Rounded up, so the loop does not poll without waiting until a deadline
  // less than a millisecond away has passed.
  auto wait = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
  return std::max(wait, std::chrono::milliseconds(0));
}

bool Server::Impl::maintenance_enabled() const {
  return store_.options().retention.count() > 0 || store_.options().dedup_window.count() > 0;
}

void Server::Impl::maintain(SteadyClock::time_point now) {
  if (!maintenance_enabled() || now < next_maintenance_) return;
  next_maintenance_ = now + options_.maintenance_interval;
  try {
    auto result = store_.run_maintenance();
    if (result.bodies_deleted > 0 || result.dedup_entries_deleted > 0) {
      logger_->debug("maintenance removed {} bodies, {} dedup entries", result.bodies_deleted,
                     result.dedup_entries_deleted);
    }
    if (result.more) next_maintenance_ = now;
  } catch (const std::exception& error) {
    metrics::log(
        *logger_, spdlog::level::err,
        {{"event", "maintenance_failed"}, {"db", store_.path().string()}, {"error", error.what()}},
        "maintenance failed: {}", error.what());
  }
}

void Server::Impl::run() {
  logger_->info("serving on {}", endpoint_);
  if (options_.metrics) options_.metrics->serving.set(1);
  while (!stop_.load(std::memory_order_relaxed)) {
    auto now = SteadyClock::now();
    std::vector<zmq::pollitem_t> items = {{router_.handle(), 0, ZMQ_POLLIN, 0},
                                          {nullptr, wake_.fd(), ZMQ_POLLIN, 0}};
    if (auth_) items.push_back({auth_->poll_handle(), 0, ZMQ_POLLIN, 0});
    auto timeout = peers_.wake_now() ? std::chrono::milliseconds(0) : next_timeout(now);
    try {
      zmq::poll(items, timeout);
    } catch (const zmq::error_t& error) {
      if (error.num() != EINTR) throw;
      continue;
    }
    bool idle = true;
    if (auth_ && (items[2].revents & ZMQ_POLLIN) != 0) counters_.curve_refused += auth_->serve();
    const bool woken = peers_.take_wake_now();
    if ((items[1].revents & ZMQ_POLLIN) != 0 || woken) {
      wake_.drain();
      idle = false;
      serve_held_back();
    }
    if ((items[0].revents & ZMQ_POLLIN) != 0) idle = !read_round() && idle;
    now = SteadyClock::now();
    if (!waiting_.empty()) {
      answer_waiting_if([now](const detail::WaitingFetch& entry) { return entry.deadline <= now; });
    }
    maintain(now);
    refresh_metrics(now);
    if (now >= next_peer_sweep_) {
      next_peer_sweep_ = now + std::chrono::seconds(1);
      peers_.sweep();
    }
    if (idle) return_memory();
  }
  shutdown();
}

// Server::serve: one request handled as read_round() handles what it receives.
void Server::Impl::serve(std::string_view routing_id, std::span<const std::string_view> frames) {
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

// Freed buffers of large batches and replies go back to the system when
// the loop has nothing to do, so a burst does not leave the process large.
void Server::Impl::return_memory() {
  if (!trim_due_) return;
  trim_due_ = false;
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

void Server::Impl::shutdown() {
  if (options_.metrics) options_.metrics->serving.set(0);
  logger_->info("stopping: committing and acknowledging what was received");
  // Bounded: a peer that keeps sending cannot keep the broker alive.
  for (int round = 0; round < 20 && read_round(); ++round) {
  }
  answer_waiting_if([](const detail::WaitingFetch&) { return true; });
  serve_held_back();  // what fits in ZeroMQ now goes out during the linger
  router_.set(zmq::sockopt::linger, static_cast<int>(options_.shutdown_linger.count()));
  router_.close();
  if (auth_) auth_->close();
  logger_->info("stopped after {} group commits, {} messages", counters_.group_commits,
                counters_.messages);
}

static_assert(std::atomic<bool>::is_always_lock_free, "request_stop must be signal-safe");

Server::Server(Store& store, ServerOptions options)
    : impl_(std::make_unique<Impl>(store, std::move(options))) {}

Server::~Server() noexcept = default;

const std::string& Server::endpoint() const noexcept {
  return impl_->endpoint();
}

void Server::run() {
  impl_->run();
}

void Server::request_stop() noexcept {
  impl_->request_stop();
}

void Server::serve(std::string_view routing_id, std::span<const std::string_view> frames) {
  impl_->serve(routing_id, frames);
}

ServerCounters Server::counters() const {
  return impl_->counters();
}

}  // namespace broker
