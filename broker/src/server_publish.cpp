// PUBLISH and the group commit: the batches read in one round are written
// with one Store::append and acknowledged only after it returned (durable).

#include <algorithm>
#include <chrono>

#include "broker/metrics.hpp"
#include "metrics/log_fields.hpp"
#include "server_impl.hpp"

namespace broker {
namespace {

constexpr const char* kBlockedReason =
    "an earlier message of this topic and key was refused in this session";

}  // namespace

void Server::Impl::handle_publish(const std::string& routing_id,
                                  std::unique_ptr<wire::Received> received) {
  auto views = received->views(1);
  auto view = wire::decode_publish_view(views[2], options_.limits);
  if (!view) {
    sessions_.fail_publishing(routing_id, views[2], view.error().message);
    return malformed(routing_id, wire::peek_request_id(wire::Command::publish, views[2]),
                     view.error());
  }
  // HELLOs of this connection before it (waiting for their epoch write) may
  // end or open sessions: they take effect first.
  if (const detail::Peer* peer = peers_.find(routing_id);
      peer != nullptr && peer->pending_hellos > 0) {
    commit_pending();
  }
  detail::Session* session = sessions_.find(routing_id, view->session_id);
  if (session == nullptr) {
    ++counters_.refused_batches;
    return reply_error(
        routing_id, view->batch_id, wire::ErrorCode::no_session,
        "no session " + std::to_string(view->session_id) + " on this connection; send HELLO");
  }
  sessions_.touch(*session);
  if (!admit(routing_id, *session, view->batch_id)) return;
  session->has_batch = true;
  session->last_batch_id = view->batch_id;
  PendingBatch batch;
  batch.routing_id = routing_id;
  batch.session_id = session->id;
  batch.batch_id = view->batch_id;
  batch.slots.reserve(view->messages.size());
  for (const auto& message : view->messages) {
    if (session->blocks(message.topic, message.key)) {
      batch.slots.push_back(kBlocked);
      continue;
    }
    if (!message.violation.empty()) {
      // A field above its limit: REJECTED here, and its key blocked for the
      // rest of the session like any refused message.
      batch.slots.push_back(kRejectedSlotBase +
                            static_cast<std::uint32_t>(round_.violations.size()));
      round_.violations.push_back(message.violation);
      session->refuse_key(message.topic, message.key);
      continue;
    }
    // The session is the order group: inside one group commit the store
    // blocks later messages of a key after a refused one.
    batch.slots.push_back(static_cast<std::uint32_t>(round_.incoming.size()));
    round_.incoming.push_back(IncomingMessage{message.msg_id, message.topic, message.key,
                                              message.headers, message.payload, session->id});
  }
  // Whole frames: what the round holds is what the next read is weighed against.
  round_.bytes += views[2].size();
  detail::Peer& peer = peers_.get(routing_id);
  ++peer.pending_batches;
  peer.pending_reply_bytes += wire::kAckFixedBytes + batch.slots.size() * kAckEntryEstimateBytes;
  batch.frames = std::move(received);
  round_.pending.push_back(std::move(batch));
}

bool Server::Impl::admit(const std::string& routing_id, detail::Session& session,
                         std::uint64_t batch_id) {
  if (!session.failed && !session.origin.empty()) {
    // A newer relay of the same outbox opened a session since: this one
    // is stale and must not store anything more.
    std::uint64_t highest = 0;
    try {
      highest = store_.origin_epoch(session.origin);
      // A HELLO of a newer relay waiting for this round's commit counts.
      if (auto deferred = round_.hello_epochs.find(session.origin);
          deferred != round_.hello_epochs.end()) {
        highest = std::max(highest, deferred->second);
      }
    } catch (const std::exception& error) {
      session.failed = true;
      ++counters_.storage_failures;
      reply_error(routing_id, batch_id, wire::ErrorCode::storage_failure,
                  std::string("cannot read the lease epoch: ") + error.what());
      return false;
    }
    if (highest > session.epoch) {
      session.failed = true;
      ++counters_.refused_batches;
      ++counters_.stale_epochs;
      metrics::log(*logger_, spdlog::level::warn,
                   {{"event", "session_refused"},
                    {"session", session.id},
                    {"producer", session.producer},
                    {"origin", session.origin},
                    {"epoch", session.epoch},
                    {"newest_epoch", highest},
                    {"error_code", "stale_epoch"}},
                   "session {} ({}) refused: {}", session.id, session.producer,
                   stale_epoch_text(session.origin, session.epoch, highest));
      reply_error(routing_id, batch_id, wire::ErrorCode::stale_epoch,
                  stale_epoch_text(session.origin, session.epoch, highest));
      return false;
    }
  }
  if (session.failed) {
    ++counters_.refused_batches;
    reply_error(routing_id, batch_id, wire::ErrorCode::session_failed,
                "an earlier batch of session " + std::to_string(session.id) +
                    " failed; send HELLO and resend from the first unacknowledged message");
    return false;
  }
  if (session.has_batch && batch_id != session.last_batch_id + 1) {
    ++counters_.refused_batches;
    auto why = "batch " + std::to_string(batch_id) + " follows batch " +
               std::to_string(session.last_batch_id) +
               ": batch ids of a session must be consecutive";
    sessions_.fail(session, why);
    reply_error(routing_id, batch_id, wire::ErrorCode::invalid_value,
                why + "; send HELLO and resend from the first unacknowledged message");
    return false;
  }
  return true;
}

void Server::Impl::commit_pending() {
  settle_hellos();
  if (round_.pending.empty()) return;
  for (const auto& batch : round_.pending) {
    if (detail::Peer* peer = peers_.find(batch.routing_id);
        peer != nullptr && peer->pending_batches > 0) {
      --peer->pending_batches;
      peer->pending_reply_bytes = 0;
    }
  }
  if (round_.bytes >= kTrimAfterBytes) trim_due_ = true;
  bool ok = false;
  try {
    auto started = detail::SteadyClock::now();
    if (round_.incoming.empty()) {
      round_.outcomes.clear();
    } else {
      store_.append(round_.incoming, round_.outcomes);
    }
    auto took = detail::SteadyClock::now() - started;
    counters_.append_nanoseconds += static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(took).count());
    ok = true;
    if (options_.metrics && !round_.incoming.empty()) {
      options_.metrics->group_commit_messages.observe(static_cast<double>(round_.incoming.size()));
      options_.metrics->group_commit_seconds.observe(std::chrono::duration<double>(took).count());
      options_.metrics->store_writable.set(1);
    }
  } catch (const std::exception& error) {
    ++counters_.storage_failures;
    if (options_.metrics) options_.metrics->store_writable.set(0);
    metrics::log(*logger_, spdlog::level::err,
                 {{"event", "store_write_failed"},
                  {"db", store_.path().string()},
                  {"messages", round_.incoming.size()},
                  {"error", error.what()}},
                 "group commit of {} messages failed: {}", round_.incoming.size(), error.what());
    for (const auto& batch : round_.pending) {
      if (auto* session = sessions_.find(batch.routing_id, batch.session_id)) {
        session->failed = true;
      }
      reply(batch.routing_id, wire::ErrorReply{batch.batch_id, wire::ErrorCode::storage_failure,
                                               std::string("batch not stored: ") + error.what()});
    }
  }
  if (ok) {
    ++counters_.group_commits;
    counters_.batches += round_.pending.size();
    counters_.messages += round_.incoming.size();
    round_.touched_topics.clear();
    for (const auto& batch : round_.pending) {
      detail::Session* session = sessions_.find(batch.routing_id, batch.session_id);
      auto ack = acknowledge(batch, session);
      reply(batch.routing_id, ack);
      if (session != nullptr && !session->origin.empty()) {
        sessions_.retain_ack(*session, std::move(ack));
      }
    }
  }
  round_.pending.clear();
  round_.incoming.clear();
  round_.violations.clear();
  round_.bytes = 0;
  if (ok && !waiting_.empty()) wake_fetches();
}

// The ACK of one committed batch; a CONFLICT, REJECTED or BLOCKED message
// blocks its (topic, key) for the rest of the session.
wire::Ack Server::Impl::acknowledge(const PendingBatch& batch, detail::Session* session) {
  wire::Ack ack;
  ack.batch_id = batch.batch_id;
  ack.entries.reserve(batch.slots.size());
  for (auto slot : batch.slots) {
    wire::AckEntry entry;
    if (slot == kBlocked) {
      ++counters_.blocked;
      entry.status = wire::AckStatus::blocked;
      entry.reason = kBlockedReason;
      ack.entries.push_back(std::move(entry));
      continue;
    }
    if (slot >= kRejectedSlotBase) {
      ++counters_.rejected_on_decode;
      entry.status = wire::AckStatus::rejected;
      entry.reason = std::string(round_.violations[slot - kRejectedSlotBase]);
      ack.entries.push_back(std::move(entry));
      continue;
    }
    auto i = static_cast<std::size_t>(slot);
    const auto& outcome = round_.outcomes[i];
    const auto& message = round_.incoming[i];
    if ((outcome.status == AppendStatus::conflict || outcome.status == AppendStatus::rejected ||
         outcome.status == AppendStatus::blocked) &&
        session != nullptr) {
      session->refuse_key(message.topic, message.partition_key);
    }
    entry.offset = outcome.offset;
    switch (outcome.status) {
      case AppendStatus::stored:
        entry.status = wire::AckStatus::stored;
        note_topic(message.topic);
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
        entry.reason = std::string(to_string(outcome.reason));
        break;
      case AppendStatus::blocked:
        ++counters_.blocked;
        entry.status = wire::AckStatus::blocked;
        entry.reason = kBlockedReason;
        break;
    }
    ack.entries.push_back(std::move(entry));
  }
  return ack;
}

void Server::Impl::note_topic(std::string_view topic) {
  auto& topics = round_.touched_topics;
  if (std::find(topics.begin(), topics.end(), topic) == topics.end()) topics.emplace_back(topic);
}

}  // namespace broker
