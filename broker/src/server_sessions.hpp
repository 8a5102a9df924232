// The broker's session table (docs/protocol.md, HELLO and RESUME): which
// sessions each connection and each origin holds, which of them failed, the
// (topic, key) pairs each one blocks, and the ACKs kept for a RESUME.
//
// Ownership: owns the sessions; pointers and references to a Session stay
// valid until that session is erased (open() may erase others). Thread
// safety: the loop's thread only.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <spdlog/logger.h>

#include "wire/protocol.hpp"

namespace broker::detail {

using SteadyClock = std::chrono::steady_clock;

// A session belongs to one connection. A connection holds one session, or
// one per origin when its HELLOs say "one of several" (a relay forwarding
// many databases over few connections): PUBLISH names its session by id.
struct Session {
  std::uint64_t id = 0;
  std::string routing_id;  // its connection
  bool failed = false;
  std::string producer;
  std::list<std::uint64_t>::iterator recency;  // its place in Sessions' activity order
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
  // connection broke (Sessions::retain_ack bounds them). Without them the relay
  // resends everything it had in flight: behind a proxy cutting every
  // 2 KB-400 KB that was half of all it sent, each answered DUPLICATE.
  std::deque<wire::Ack> retained_acks;
  std::size_t retained_ack_bytes = 0;

  // Per message of every batch: no string is built while nothing is refused.
  bool blocks(std::string_view topic, std::string_view key) const {
    return !refused_keys.empty() && refused_keys.count(refusal_key(topic, key)) > 0;
  }
  void refuse_key(std::string_view topic, std::string_view key) {
    refused_keys.insert(refusal_key(topic, key));
  }

  static std::string refusal_key(std::string_view topic, std::string_view key) {
    std::string text;
    text.reserve(topic.size() + 1 + key.size());
    text.append(topic);
    text.push_back('\0');
    text.append(key);
    return text;
  }
};

class Sessions {
 public:
  // Ids start after `first_session_id` - 1, or (0) after one taken from the
  // clock, so that an id from before a restart matches no session after it.
  Sessions(std::size_t max_sessions, std::uint64_t first_session_id, spdlog::logger& logger);

  // The session `id` if it is one of the connection's.
  Session* find(const std::string& routing_id, std::uint64_t id);
  // The connection's earliest open session, if any.
  const Session* first(const std::string& routing_id) const;

  // What a HELLO replaces: with "one of several", the connection's session
  // for the same origin; without, every session of the connection.
  void end_replaced(const std::string& routing_id, const wire::Hello& hello);
  // Opens a session for an accepted HELLO: ends what it replaces, evicts the
  // least recently active session beyond the maximum and ends the older
  // sessions of its origin (end_older).
  Session& open(const std::string& routing_id, const wire::Hello& hello);

  // The session was just active (a batch, a RESUME): the last to be evicted.
  void touch(Session& session) { recency_.splice(recency_.end(), recency_, session.recency); }

  // Marks the session failed (logged once): its later batches are refused.
  void fail(Session& session, std::string_view why);
  // Every session of the connection: its requests were dropped, whichever
  // session they belonged to.
  void fail_all(const std::string& routing_id, std::string_view why);
  // A malformed PUBLISH fails the session its body names, when that can be
  // read and is one of the connection's; else every session of the
  // connection (with one session per connection: that session either way).
  void fail_publishing(const std::string& routing_id, std::string_view body, std::string_view why);

  // Keeps `ack` (of a batch just stored) for a RESUME, dropping the session's
  // oldest ones beyond its share. Over the total budget, the session keeps
  // none: its relay then resends what it had in flight, as without RESUME.
  void retain_ack(Session& session, wire::Ack ack);
  // The session a RESUME from `session` may ask about: `previous_id` when it
  // is another session of the same origin and lease epoch (on any
  // connection), so that a session learns nothing about another relay's batches.
  const Session* resumable(const Session& session, std::uint64_t previous_id) const;
  // The retained ACKs of `previous_id`, consecutive from `from_batch_id`; the
  // previous session ends with it, so that a late batch of it is not applied.
  std::vector<wire::Ack> take_acks(std::uint64_t previous_id, std::uint64_t from_batch_id);

  std::size_t size() const noexcept { return sessions_.size(); }
  std::size_t retained_ack_bytes() const noexcept { return retained_ack_bytes_; }

 private:
  void erase(std::uint64_t id);
  void end_older(const std::string& origin, std::uint64_t epoch);

  // Per relay session, a few windows of acknowledgements (11 bytes a
  // message: 8,000 in flight take 88 KiB); in total, a fixed budget.
  static constexpr std::size_t kRetainedAckBytesPerSession = 256 * 1024;
  static constexpr std::size_t kRetainedAckBytesTotal = 64 * 1024 * 1024;

  std::size_t max_sessions_;
  spdlog::logger& logger_;
  std::uint64_t next_session_id_ = 0;
  std::unordered_map<std::uint64_t, Session> sessions_;  // by session id
  // The session ids of each connection that has any, in opening order.
  std::unordered_map<std::string, std::vector<std::uint64_t>> peer_sessions_;
  // The session ids of each origin that has any, in opening order (at most
  // three: see end_older).
  std::unordered_map<std::string, std::vector<std::uint64_t>> origin_sessions_;
  std::size_t retained_ack_bytes_ = 0;  // Session::retained_acks of all sessions
  // Session ids, least recently active first: eviction takes the front in
  // constant time (a flood of HELLOs at the maximum made a scan per HELLO
  // the broker's main cost).
  std::list<std::uint64_t> recency_;
};

}  // namespace broker::detail
