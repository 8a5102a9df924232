// The consumer's inbox: process each msg_id once although the broker delivers
// at least once. Lives in the consumer's own SQLite database (table
// outbox_inbox).
//
// Transactional handlers (all effects in the same database) use process_once:
// the msg_id is recorded and the handler runs in one transaction, so either
// both happen or neither does.
//
//   auto inbox = outbox::Inbox::open("consumer.db");
//   auto result = inbox.process_once(msg.msg_id, [&](sqlite3* db) {
//     // Check every result: throwing rolls back both the effects and the msg_id.
//     if (sqlite3_exec(db, "UPDATE stock SET ...", nullptr, nullptr, nullptr) != SQLITE_OK) {
//       throw std::runtime_error(sqlite3_errmsg(db));
//     }
//   });
//   if (result == outbox::ProcessResult::already_done) { /* a redelivery */ }
//
// A handler that continues the producer's trace takes the message's trace
// context too (the W3C traceparent and tracestate the producer enqueued with
// it, carried unchanged by the relay and the broker):
//
//   inbox.process_once(message, [&](sqlite3* db, const outbox::TraceContext& trace) {
//     // trace.traceparent: "00-<trace id>-<parent id>-<flags>", or empty
//   });
//
// Handlers with effects outside the database (an e-mail, an HTTP call) use the
// claim state machine instead. begin() hands out a claim token; only the
// holder of that token can complete, release (fail) or extend the claim:
//
//   auto claim = inbox.begin(msg_id, std::chrono::minutes(5));
//   switch (claim.result) {
//     case outbox::BeginResult::claimed:                // ours: do the work, then
//       send_email(...); inbox.complete(msg_id, claim.token); break;  // or fail()
//     case outbox::BeginResult::in_progress_elsewhere:  // someone is on it: retry later
//     case outbox::BeginResult::already_done: break;    // ack the redelivery
//   }
//
// A claim ("processing") older than its lease may be taken over by the next
// begin(), so a consumer that crashed mid-way does not block the message
// forever; the cost is that the work may run twice in that case, which is why
// such effects should themselves be idempotent where possible. The old holder
// learns it from ClaimResult::claim_lost and changes nothing; long work calls
// extend() before the lease runs out. Until another begin() takes it over, an
// expired claim still belongs to its holder.
//
// outbox::RedisInbox (outbox/redis_inbox.hpp, target outbox::redis_inbox) has
// the same begin/complete/fail/extend contract for consumers that keep no
// SQLite database.
//
// Completed entries are kept for `retention` (Options), then removed by
// expire() in small batches. A msg_id redelivered after its entry expired is
// processed again: choose the retention longer than the broker's redelivery
// horizon.
//
// Thread safety: an Inbox owns one connection; use it from one thread at a
// time. Several Inboxes (threads, processes) may share one database: claims
// are serialised by SQLite's write lock (BEGIN IMMEDIATE + busy timeout).
// Errors: outbox::Error (database failures, bad input); handler exceptions
// propagate after the rollback.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "outbox/clock.hpp"
#include "outbox/error.hpp"
#include "outbox/message.hpp"

namespace spdlog {
class logger;
}

namespace outbox {

enum class ProcessResult {
  processed,     // the handler ran and its transaction committed with the msg_id
  already_done,  // the msg_id was processed before; the handler did not run
  in_progress,   // a begin() claim on this msg_id is live; the handler did not run
  claim_lost,    // RedisInbox only: the handler ran, but longer than the lease, and
                 // another consumer took the claim over meanwhile (it may run again)
};

enum class BeginResult {
  claimed,                // the caller holds the claim: do the work, then complete() or fail()
  in_progress_elsewhere,  // another consumer holds a live claim
  already_done,           // completed before
};

// What begin() returns: the outcome and, when `result` is claimed, the claim
// token that complete(), fail() and extend() require. The token is a random
// UUID, unique per begin(); keep it with the work it belongs to.
struct Claim {
  BeginResult result = BeginResult::in_progress_elsewhere;
  std::string token{};  // empty unless claimed

  bool claimed() const { return result == BeginResult::claimed; }
};

// What complete(), fail() and extend() return.
enum class ClaimResult {
  ok,          // done: the caller's claim was completed, released or extended
  claim_lost,  // the token no longer holds this msg_id (taken over after its lease,
               // released, completed by another holder, or never claimed); nothing
               // was changed
};

struct InboxOptions {
  // How long a write waits for another connection's lock (SQLITE_BUSY), and
  // how long its BEGIN retries SQLITE_PROTOCOL (docs/schema.md).
  std::chrono::milliseconds busy_timeout{5000};
  bool synchronous_full = false;
  // How long completed msg_ids are remembered.
  std::chrono::milliseconds retention{std::chrono::hours(24 * 7)};
  TimeSource clock = system_time_source();
  std::shared_ptr<spdlog::logger> logger{};
};

class Inbox {
 public:
  // Opens or creates the consumer database (WAL, busy timeout) and the
  // outbox tables. Same errors as Outbox::open.
  static Inbox open(const std::filesystem::path& path, InboxOptions options = {});

  Inbox(Inbox&&) noexcept;
  Inbox& operator=(Inbox&&) noexcept;
  ~Inbox() noexcept;

  sqlite3* db() const;

  // Records msg_id and runs `handler` in one IMMEDIATE transaction. If the
  // handler throws, both are rolled back and the exception propagates. A live
  // begin() claim on the msg_id gives in_progress; a stale one is taken over.
  // The handler must not end the transaction. If it did, or SQLite rolled it
  // back after an error the handler ignored (disk full, I/O error), the call
  // throws outbox::Error without recording the msg_id or committing anything:
  // while the handler runs, any commit on this connection (the handler's
  // COMMIT, or a statement it runs after such a rollback) is turned into a
  // rollback (a commit hook; do not install your own on db()). Handlers
  // should still check every result, as in the example above.
  ProcessResult process_once(const std::string& msg_id,
                             const std::function<void(sqlite3*)>& handler);
  // The same for a handler that continues the message's trace: it also gets
  // the message's trace context (empty when it carries none).
  ProcessResult process_once(const std::string& msg_id, const TraceContext& trace,
                             const std::function<void(sqlite3*, const TraceContext&)>& handler);
  // The same for a received message taken as it is: its msg_id, and the trace
  // context read from its headers (trace_context_of, which drops a malformed
  // one):
  //
  //   inbox.process_once(message, [&](sqlite3* db, const outbox::TraceContext& trace) {
  //     auto span = start_span("ship order", trace.traceparent, trace.tracestate);
  //     ...
  //   });
  template <ReceivedMessage Received>
  ProcessResult process_once(const Received& message,
                             const std::function<void(sqlite3*, const TraceContext&)>& handler) {
    return process_once(message.msg_id, trace_context_of(message.headers), handler);
  }

  // Claims msg_id for `lease` under a new token. A stale claim (past its
  // lease) is taken over: its old holder gets claim_lost from then on.
  // Throws outbox::Error for an empty msg_id or a lease that is not positive.
  Claim begin(const std::string& msg_id, std::chrono::milliseconds lease);
  // Marks the claim held by `token` done. Repeating a complete() that
  // succeeded answers ok again; any other token gets claim_lost.
  ClaimResult complete(const std::string& msg_id, const std::string& token);
  // Releases the claim held by `token` so the next delivery starts afresh.
  // A completed msg_id is never released (claim_lost).
  ClaimResult fail(const std::string& msg_id, const std::string& token);
  // Moves the claim's expiry to now + `lease` (also for a claim past its lease
  // that nobody took over yet). Throws outbox::Error for a lease that is not
  // positive.
  ClaimResult extend(const std::string& msg_id, const std::string& token,
                     std::chrono::milliseconds lease);

  // Removes completed entries older than the retention, `batch_size` per
  // transaction, at most `max_batches` batches. Returns how many were removed.
  std::size_t expire(std::size_t batch_size = 500, std::size_t max_batches = SIZE_MAX);

 private:
  struct Impl;
  explicit Inbox(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_{};
};

}  // namespace outbox
