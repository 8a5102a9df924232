#include "server_peers.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>

#include "outbox/error.hpp"

namespace broker::detail {
namespace {

struct ReplyBody {
  std::string bytes;
  std::shared_ptr<OutgoingAccount> account;
};

// Called by ZeroMQ on its I/O thread once the body is written or dropped.
void release_reply_body(void* /*data*/, void* hint) noexcept {
  auto* body = static_cast<ReplyBody*>(hint);
  body->account->bytes.fetch_sub(body->bytes.size(), std::memory_order_acq_rel);
  body->account->total->fetch_sub(body->bytes.size(), std::memory_order_acq_rel);
  if (body->account->wake_wanted.exchange(false, std::memory_order_acq_rel)) {
    std::uint64_t one = 1;
    [[maybe_unused]] auto written = ::write(body->account->wake_fd, &one, sizeof one);
  }
  delete body;
}

}  // namespace

WakeFd::WakeFd() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (fd_ < 0) throw outbox::Error(outbox::ErrorKind::io, "cannot create an eventfd");
}

WakeFd::~WakeFd() noexcept {
  ::close(fd_);
}

void WakeFd::drain() noexcept {
  std::uint64_t value = 0;
  [[maybe_unused]] auto got = ::read(fd_, &value, sizeof value);
}

Peers::Peers(zmq::socket_t& router, const ServerOptions& options, int wake_fd,
             spdlog::logger& logger, ServerCounters& counters)
    : router_(router), options_(options), wake_fd_(wake_fd), logger_(logger), counters_(counters) {}

Peer& Peers::get(const std::string& routing_id) {
  Peer& peer = peers_[routing_id];
  if (!peer.account) {
    peer.account = std::make_shared<OutgoingAccount>();
    peer.account->wake_fd = wake_fd_;
    peer.account->total = total_;
  }
  return peer;
}

Peer* Peers::find(const std::string& routing_id) {
  auto found = peers_.find(routing_id);
  return found == peers_.end() ? nullptr : &found->second;
}

std::size_t Peers::queued_bytes(const Peer& peer) {
  return peer.account->bytes.load(std::memory_order_acquire) + peer.backlog_bytes;
}

std::uint64_t Peers::outgoing_bytes() const {
  return total_->load(std::memory_order_acquire) + backlog_bytes_;
}

// Idle peers are swept within a second, so the table is about the peers
// that hold or are owed something.
std::size_t Peers::fair_share() const {
  return options_.max_total_outgoing_bytes / std::max<std::size_t>(1, peers_.size());
}

bool Peers::over_cap(const Peer& peer) const {
  if (!peer.backlog.empty()) return true;
  const auto queued = queued_bytes(peer);
  if (queued >= options_.max_outgoing_bytes) return true;
  return outgoing_bytes() >= options_.max_total_outgoing_bytes && queued >= fair_share();
}

std::size_t Peers::room(const std::string& routing_id) {
  Peer* peer = find(routing_id);
  const auto queued = peer == nullptr ? 0 : queued_bytes(*peer);
  if (queued >= options_.max_outgoing_bytes) return 0;
  const auto own = options_.max_outgoing_bytes - queued;
  // Whatever the total leaves, and at least what brings it to its share.
  const auto total = outgoing_bytes();
  const auto left =
      total >= options_.max_total_outgoing_bytes ? 0 : options_.max_total_outgoing_bytes - total;
  const auto share = fair_share();
  return std::min(own, std::max(left, share > queued ? share - queued : 0));
}

// The body is handed over without a copy and counted in the peer's account
// until ZeroMQ frees it.
Peers::SendResult Peers::send_now(const std::string& routing_id, Peer& peer, wire::Frames& frames) {
  try {
    if (!router_.send(zmq::buffer(routing_id.data(), routing_id.size()),
                      zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
      return SendResult::full;
    }
    // Once the routing id is queued ZeroMQ takes the rest of the message.
    router_.send(zmq::buffer(frames.tag.data(), frames.tag.size()), zmq::send_flags::sndmore);
    router_.send(zmq::buffer(frames.command.data(), frames.command.size()),
                 zmq::send_flags::sndmore);
    auto size = frames.body.size();
    auto* body = new ReplyBody{std::move(frames.body), peer.account};
    peer.account->bytes.fetch_add(size, std::memory_order_acq_rel);
    total_->fetch_add(size, std::memory_order_acq_rel);
    zmq::message_t message(body->bytes.data(), size, &release_reply_body, body);
    router_.send(message, zmq::send_flags::none);
    return SendResult::sent;
  } catch (const zmq::error_t& error) {
    // EHOSTUNREACH: the peer is gone. EINTR before anything was queued: try later.
    if (error.num() == EINTR) return SendResult::full;
    logger_.debug("reply dropped: {}", error.what());
    return SendResult::gone;
  }
}

void Peers::send(const std::string& routing_id, wire::Frames frames) {
  Peer& peer = get(routing_id);
  if (peer.backlog.empty()) {
    switch (send_now(routing_id, peer, frames)) {
      case SendResult::sent:
        return;
      case SendResult::gone:
        ++counters_.replies_dropped;
        forget_gone(routing_id);
        return;
      case SendResult::full:
        break;
    }
  }
  // Held here in order until ZeroMQ has room; the peer gets no more work
  // meanwhile, so this stays within about one cap.
  if (peer.backlog_bytes + frames.body.size() > 2 * options_.max_outgoing_bytes) {
    ++counters_.replies_dropped;
    return;
  }
  peer.backlog_bytes += frames.body.size();
  backlog_bytes_ += frames.body.size();
  peer.backlog.push_back(std::move(frames));
  held_back_.insert(routing_id);
}

void Peers::forget_gone(const std::string& routing_id) {
  if (Peer* peer = find(routing_id)) {
    counters_.replies_dropped += peer->backlog.size() + peer->parked.size();
    peer->backlog.clear();
    backlog_bytes_ -= peer->backlog_bytes;
    peer->backlog_bytes = 0;
    peer->parked.clear();
    peer->parked_bytes = 0;
  }
}

bool Peers::park(const std::string& routing_id, Peer& peer,
                 std::unique_ptr<wire::Received>& received) {
  auto size = received_bytes(*received);
  if (peer.parked.size() >= options_.max_parked_requests ||
      peer.parked_bytes + size > options_.max_parked_bytes) {
    return false;
  }
  peer.parked_bytes += size;
  peer.parked.push_back(std::move(received));
  held_back_.insert(routing_id);
  want_wake(peer);
  return true;
}

std::vector<std::string> Peers::held_back() const {
  return {held_back_.begin(), held_back_.end()};
}

void Peers::flush(const std::string& routing_id, Peer& peer) {
  while (!peer.backlog.empty()) {
    auto size = peer.backlog.front().body.size();
    auto result = send_now(routing_id, peer, peer.backlog.front());
    if (result == SendResult::full) break;
    if (result == SendResult::gone) {
      ++counters_.replies_dropped;
      forget_gone(routing_id);
      break;
    }
    peer.backlog_bytes -= size;
    backlog_bytes_ -= size;
    peer.backlog.pop_front();
  }
}

void Peers::settle(const std::string& routing_id, Peer& peer) {
  if (peer.backlog.empty() && peer.parked.empty()) {
    peer.dropping = false;
    held_back_.erase(routing_id);
  } else {
    want_wake(peer);
  }
}

void Peers::want_wake(Peer& peer) {
  peer.account->wake_wanted.store(true, std::memory_order_release);
  // Released meanwhile: no wake-up will come, so look again at once.
  if (!over_cap(peer) || peer.account->bytes.load(std::memory_order_acquire) == 0) {
    wake_now_ = true;
  }
}

bool Peers::take_wake_now() noexcept {
  bool wake = wake_now_;
  wake_now_ = false;
  return wake;
}

void Peers::sweep() {
  for (auto it = peers_.begin(); it != peers_.end();) {
    const Peer& peer = it->second;
    if (peer.backlog.empty() && peer.parked.empty() && peer.pending_batches == 0 &&
        peer.pending_hellos == 0 && peer.account->bytes.load(std::memory_order_acquire) == 0) {
      it = peers_.erase(it);
    } else {
      ++it;
    }
  }
}

std::uint64_t Peers::requests_waiting() const {
  std::uint64_t total = 0;
  for (const auto& [id, peer] : peers_) total += peer.parked.size();
  return total;
}

std::size_t Peers::received_bytes(const wire::Received& received) {
  std::size_t total = 0;
  for (const auto& frame : received.frames) total += frame.size();
  return total;
}

}  // namespace broker::detail
