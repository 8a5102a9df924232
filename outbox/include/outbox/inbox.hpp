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
// Handlers with effects outside the database (an e-mail, an HTTP call) use the
// claim state machine instead:
//
//   switch (inbox.begin(msg_id, std::chrono::minutes(5))) {
//     case outbox::BeginResult::start:        // ours: do the work, then
//       send_email(...); inbox.complete(msg_id); break;   // or fail(msg_id) on error
//     case outbox::BeginResult::in_progress:  // someone else is on it: retry later
//     case outbox::BeginResult::already_done: break;      // ack the redelivery
//   }
//
// A claim ("processing") older than its lease may be taken over by the next
// begin(), so a consumer that crashed mid-way does not block the message
// forever; the cost is that the work may run twice in that case, which is why
// such effects should themselves be idempotent where possible.
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

namespace spdlog {
class logger;
}

namespace outbox {

enum class ProcessResult {
  processed,     // the handler ran and its transaction committed with the msg_id
  already_done,  // the msg_id was processed before; the handler did not run
  in_progress,   // a begin() claim on this msg_id is live; the handler did not run
};

enum class BeginResult {
  start,         // the caller holds the claim: do the work, then complete() or fail()
  in_progress,   // another consumer holds a live claim
  already_done,  // completed before
};

struct InboxOptions {
  std::chrono::milliseconds busy_timeout{5000};
  bool synchronous_full = false;
  // How long completed msg_ids are remembered.
  std::chrono::milliseconds retention{std::chrono::hours(24 * 7)};
  Clock clock = system_clock();
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

  // Claims msg_id for `lease`. A stale claim (older than its lease) is taken over.
  BeginResult begin(const std::string& msg_id, std::chrono::milliseconds lease);
  // Marks a claimed msg_id done. False if there was no claim to complete
  // (never begun, failed, or already complete).
  bool complete(const std::string& msg_id);
  // Forgets a claim so the next delivery starts afresh. False if none.
  bool fail(const std::string& msg_id);

  // Removes completed entries older than the retention, `batch_size` per
  // transaction, at most `max_batches` batches. Returns how many were removed.
  std::size_t expire(std::size_t batch_size = 500, std::size_t max_batches = SIZE_MAX);

  struct Impl;

 private:
  explicit Inbox(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_{};
};

}  // namespace outbox
