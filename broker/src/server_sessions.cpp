#include "server_sessions.hpp"

#include <algorithm>
#include <stdexcept>

#include "server_impl.hpp"

#include "metrics/log_fields.hpp"

namespace broker::detail {

Sessions::Sessions(std::size_t max_sessions, std::uint64_t first_session_id, spdlog::logger& logger)
    : max_sessions_(max_sessions), logger_(logger) {
  next_session_id_ =
      first_session_id != 0
          ? first_session_id - 1
          : static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::system_clock::now().time_since_epoch())
                                           .count())
                << 16;
}

Session* Sessions::find(const std::string& routing_id, std::uint64_t id) {
  auto found = sessions_.find(id);
  if (found == sessions_.end() || found->second.routing_id != routing_id) return nullptr;
  return &found->second;
}

const Session* Sessions::first(const std::string& routing_id) const {
  auto peer = peer_sessions_.find(routing_id);
  if (peer == peer_sessions_.end() || peer->second.empty()) return nullptr;
  return &sessions_.at(peer->second.front());
}

// Every path that ends a session comes here: HELLO replacing it, a newer
// session of its origin, eviction of the oldest, RESUME by the next
// session; its retained ACKs go with it.
void Sessions::erase(std::uint64_t id) {
  auto found = sessions_.find(id);
  if (found == sessions_.end()) return;
  retained_ack_bytes_ -= found->second.retained_ack_bytes;
  recency_.erase(found->second.recency);
  auto forget = [id](auto& index, const std::string& key) {
    auto entry = index.find(key);
    if (entry == index.end()) return;
    std::erase(entry->second, id);
    if (entry->second.empty()) index.erase(entry);
  };
  forget(peer_sessions_, found->second.routing_id);
  if (!found->second.origin.empty()) forget(origin_sessions_, found->second.origin);
  sessions_.erase(found);
}

// A new session of an origin ends the earlier ones of that origin, on any
// connection, but two: the latest of its own lease epoch (a RESUME from the
// new session may still ask about it, or it is the relay's live session
// next to which it opened a spare), and the latest of an older epoch that
// published, else the latest of an older epoch (its relay, if still
// running, learns from stale_epoch that it lost the lease). Without this, the sessions of broken
// connections and of databases a relay closed and opened again would stay until evicted as the
// least recently active under the session maximum.
void Sessions::end_older(const std::string& origin, std::uint64_t epoch) {
  auto entry = origin_sessions_.find(origin);
  if (entry == origin_sessions_.end()) return;
  std::uint64_t keep_same = 0, keep_older = 0;
  bool older_published = false;
  for (auto id : entry->second) {
    const Session& session = sessions_.at(id);
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
  for (auto id : ended) erase(id);
}

void Sessions::end_replaced(const std::string& routing_id, const wire::Hello& hello) {
  std::vector<std::uint64_t> replaced;
  if ((hello.flags & wire::kHelloOneOfSeveral) == 0) {
    auto peer = peer_sessions_.find(routing_id);
    if (peer == peer_sessions_.end()) return;
    replaced = peer->second;
  } else {
    // Through the origin's few sessions, not the connection's many.
    auto origin = origin_sessions_.find(hello.origin);
    if (origin == origin_sessions_.end()) return;
    for (auto id : origin->second) {
      if (sessions_.at(id).routing_id == routing_id) replaced.push_back(id);
    }
  }
  for (auto id : replaced) erase(id);
}

Session& Sessions::open(const std::string& routing_id, const wire::Hello& hello) {
  end_replaced(routing_id, hello);
  if (sessions_.size() >= max_sessions_ && !recency_.empty()) erase(recency_.front());
  const auto id = ++next_session_id_;
  Session& session = sessions_[id];
  session.id = id;
  session.routing_id = routing_id;
  session.producer = hello.producer;
  session.recency = recency_.insert(recency_.end(), id);
  session.origin = hello.origin;
  session.epoch = hello.epoch;
  peer_sessions_[routing_id].push_back(id);
  if (!hello.origin.empty()) {
    end_older(hello.origin, hello.epoch);
    origin_sessions_[hello.origin].push_back(id);
  }
  if (hello.origin.empty()) {
    metrics::log(
        logger_, spdlog::level::info,
        {{"event", "session_opened"}, {"session", session.id}, {"producer", hello.producer}},
        "session {} opened by '{}'", session.id, hello.producer);
  } else {
    metrics::log(logger_, spdlog::level::info,
                 {{"event", "session_opened"},
                  {"session", session.id},
                  {"producer", hello.producer},
                  {"origin", hello.origin},
                  {"epoch", hello.epoch}},
                 "session {} opened by '{}' for origin {} at lease epoch {}", session.id,
                 hello.producer, hello.origin, hello.epoch);
  }
  return session;
}

void Sessions::fail(Session& session, std::string_view why) {
  if (session.failed) return;
  session.failed = true;
  metrics::log(logger_, spdlog::level::warn,
               {{"event", "session_failed"},
                {"session", session.id},
                {"producer", session.producer},
                {"reason", why}},
               "session {} ({}) failed: {}", session.id, session.producer, why);
}

void Sessions::fail_all(const std::string& routing_id, std::string_view why) {
  auto found = peer_sessions_.find(routing_id);
  if (found == peer_sessions_.end()) return;
  for (auto id : found->second) fail(sessions_.at(id), why);
}

void Sessions::fail_publishing(const std::string& routing_id, std::string_view body,
                               std::string_view why) {
  if (auto id = wire::peek_publish_session_id(body)) {
    if (Session* session = find(routing_id, *id)) return fail(*session, why);
  }
  fail_all(routing_id, why);
}

void Sessions::retain_ack(Session& session, wire::Ack ack) {
  auto bytes = wire::ack_body_bytes(ack);
  session.retained_acks.push_back(std::move(ack));
  session.retained_ack_bytes += bytes;
  retained_ack_bytes_ += bytes;
  while (!session.retained_acks.empty() &&
         (session.retained_ack_bytes > kRetainedAckBytesPerSession ||
          retained_ack_bytes_ > kRetainedAckBytesTotal)) {
    auto oldest = wire::ack_body_bytes(session.retained_acks.front());
    session.retained_acks.pop_front();
    session.retained_ack_bytes -= oldest;
    retained_ack_bytes_ -= oldest;
  }
}

const Session* Sessions::resumable(const Session& session, std::uint64_t previous_id) const {
  auto previous = sessions_.find(previous_id);
  if (previous == sessions_.end()) return nullptr;
  const Session& other = previous->second;
  if (other.id == session.id || other.origin.empty() || other.origin != session.origin ||
      other.epoch != session.epoch) {
    return nullptr;
  }
  return &other;
}

std::vector<wire::Ack> Sessions::take_acks(std::uint64_t previous_id, std::uint64_t from_batch_id) {
  std::vector<wire::Ack> taken;
  auto previous = sessions_.find(previous_id);
  if (previous == sessions_.end()) return taken;
  auto& acks = previous->second.retained_acks;
  auto next = std::find_if(acks.begin(), acks.end(),
                           [&](const wire::Ack& ack) { return ack.batch_id == from_batch_id; });
  for (auto expected = from_batch_id; next != acks.end() && next->batch_id == expected;
       ++next, ++expected) {
    taken.push_back(std::move(*next));
  }
  erase(previous_id);
  return taken;
}

}  // namespace broker::detail

// ---- HELLO and RESUME ----------------------------------------------------------

namespace broker {

std::string Server::Impl::stale_epoch_text(const std::string& origin, std::uint64_t epoch,
                                           std::uint64_t highest) {
  return "lease epoch " + std::to_string(epoch) + " of origin " + origin + " is older than epoch " +
         std::to_string(highest) + " already seen: another relay holds that outbox's lease";
}

// A HELLO whose epoch is higher than the one stored for its origin waits
// for the round's group commit: its epoch is written there with the others
// (one transaction for a burst of new origins, as when a relay carrying many
// databases starts) and it is answered after that. So are the later HELLOs
// of its connection, whatever their epoch, so that they take effect in
// arrival order. The peer's batches before it are committed and answered
// first; its requests after it, batches too, settle it first
// (commit_before_reply, handle_publish), so replies keep their order and a
// batch sees the sessions as the HELLOs before it left them.
void Server::Impl::on_message(const std::string& routing_id, wire::Hello& hello) {
  const detail::Peer* peer = peers_.find(routing_id);
  const bool behind_hellos = peer != nullptr && peer->pending_hellos > 0;
  if (hello.origin.empty()) {
    commit_before_reply(routing_id);
    return reply(routing_id, open_session(routing_id, hello));
  }
  // A refused HELLO also ends what it would have replaced.
  auto refuse = [&](const wire::ErrorReply& error) {
    commit_before_reply(routing_id);
    sessions_.end_replaced(routing_id, hello);
    reply(routing_id, error);
  };
  std::uint64_t stored = 0;
  try {
    Store::check_origin_epoch(hello.origin, hello.epoch);
    stored = store_.origin_epoch(hello.origin);
  } catch (const std::invalid_argument& error) {
    ++counters_.malformed;
    return refuse(
        {hello.hello_id, wire::ErrorCode::invalid_value, std::string("HELLO: ") + error.what()});
  } catch (const std::exception& error) {
    ++counters_.storage_failures;
    return refuse({hello.hello_id, wire::ErrorCode::storage_failure,
                   std::string("cannot read the lease epoch: ") + error.what()});
  }
  if (hello.epoch > stored || behind_hellos) {
    if (peer != nullptr && peer->pending_batches > 0) commit_pending();
    auto& highest = round_.hello_epochs[hello.origin];
    highest = std::max(highest, hello.epoch);
    ++peers_.get(routing_id).pending_hellos;
    round_.hellos.push_back(DeferredHello{routing_id, std::move(hello)});
    return;
  }
  // A newer relay's HELLO waiting for this round's commit counts.
  auto deferred = round_.hello_epochs.find(hello.origin);
  const std::uint64_t pending = deferred == round_.hello_epochs.end() ? 0 : deferred->second;
  if (const auto highest = std::max(stored, pending); highest > hello.epoch) {
    return refuse(refuse_stale_hello(hello, highest));
  }
  commit_before_reply(routing_id);
  reply(routing_id, open_session(routing_id, hello));
}

wire::ErrorReply Server::Impl::refuse_stale_hello(const wire::Hello& hello, std::uint64_t highest) {
  ++counters_.stale_epochs;
  metrics::log(*logger_, spdlog::level::warn,
               {{"event", "session_refused"},
                {"producer", hello.producer},
                {"origin", hello.origin},
                {"epoch", hello.epoch},
                {"newest_epoch", highest},
                {"error_code", "stale_epoch"}},
               "HELLO from '{}' refused: {}", hello.producer,
               stale_epoch_text(hello.origin, hello.epoch, highest));
  return wire::ErrorReply{hello.hello_id, wire::ErrorCode::stale_epoch,
                          stale_epoch_text(hello.origin, hello.epoch, highest)};
}

wire::Welcome Server::Impl::open_session(const std::string& routing_id, const wire::Hello& hello) {
  const detail::Session& session = sessions_.open(routing_id, hello);
  ++counters_.sessions_opened;
  auto welcome = wire::welcome_for(session.id, store_.options().max_message_bytes,
                                   options_.broker_name, options_.limits);
  welcome.hello_id = hello.hello_id;
  return welcome;
}

// Writes the epochs of the round's deferred HELLOs, then answers them in
// arrival order. Called by commit_pending() before the batches: every batch
// of a peer in the round arrived after that peer's deferred HELLOs.
void Server::Impl::settle_hellos() {
  if (round_.hellos.empty()) return;
  auto hellos = std::move(round_.hellos);
  round_.hellos.clear();
  round_.hello_epochs.clear();
  std::vector<OriginEpoch> entries;
  entries.reserve(hellos.size());
  for (const auto& deferred : hellos) {
    if (detail::Peer* peer = peers_.find(deferred.routing_id);
        peer != nullptr && peer->pending_hellos > 0) {
      --peer->pending_hellos;
    }
    entries.push_back(OriginEpoch{deferred.hello.origin, deferred.hello.epoch});
  }
  std::vector<std::uint64_t> highest;
  try {
    if (store_.advance_origin_epochs(entries, highest)) ++counters_.epoch_commits;
  } catch (const std::exception& error) {
    counters_.storage_failures += hellos.size();
    for (const auto& deferred : hellos) {
      // Refused: it still ends what it would have replaced.
      sessions_.end_replaced(deferred.routing_id, deferred.hello);
      reply(deferred.routing_id,
            wire::ErrorReply{deferred.hello.hello_id, wire::ErrorCode::storage_failure,
                             std::string("cannot record the lease epoch: ") + error.what()});
    }
    return;
  }
  // reply(), not answer(): this runs inside the group commit, whose batches
  // are answered after these.
  for (std::size_t i = 0; i < hellos.size(); ++i) {
    const auto& [routing_id, hello] = hellos[i];
    if (highest[i] > hello.epoch) {
      sessions_.end_replaced(routing_id, hello);
      reply(routing_id, refuse_stale_hello(hello, highest[i]));
    } else {
      reply(routing_id, open_session(routing_id, hello));
    }
  }
}

// The relay's new session asks which batches of its previous one (whose
// connection broke) were stored: their ACKs again, consecutive from the
// first batch it has no ACK for. Only for the same origin and lease epoch,
// so a session learns nothing about another relay's batches. The previous
// session is over afterwards: a late batch of it on a connection that is
// still open somewhere is not applied (no_session), so nothing of it can be
// stored behind what the new session resends.
void Server::Impl::on_message(const std::string& routing_id, wire::Resume& resume) {
  detail::Session* session = sessions_.find(routing_id, resume.session_id);
  if (session == nullptr) {
    return reply_error(routing_id, 0, wire::ErrorCode::no_session,
                       "RESUME: no session " + std::to_string(resume.session_id) +
                           " on this connection; send HELLO");
  }
  sessions_.touch(*session);
  wire::Resumed resumed{resume.previous_session_id, {}};
  // By id, on whichever connection it was: a relay carrying several
  // databases over a connection resumes each database's session on its own.
  if (sessions_.resumable(*session, resume.previous_session_id) != nullptr) {
    // Its batches read in this round count: stored now, they need no resend.
    const bool previous_pending = std::any_of(
        round_.pending.begin(), round_.pending.end(),
        [&](const PendingBatch& batch) { return batch.session_id == resume.previous_session_id; });
    if (previous_pending) commit_pending();
    resumed.acks = sessions_.take_acks(resume.previous_session_id, resume.from_batch_id);
  }
  ++counters_.resumes;
  counters_.resumed_batches += resumed.acks.size();
  logger_->debug("session {} resumed {} batches of session {} from batch {}", session->id,
                 resumed.acks.size(), resume.previous_session_id, resume.from_batch_id);
  answer(routing_id, resumed);
}

}  // namespace broker
