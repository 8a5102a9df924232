// The producer side of the transactional outbox: write business rows and the
// messages they cause in one SQLite transaction, so a message exists if and
// only if its transaction committed.
//
//   auto box = outbox::Outbox::open("/var/lib/shop/app.db");
//   {
//     outbox::Transaction tx(box);                 // BEGIN IMMEDIATE
//     sqlite3_exec(tx.db(), "INSERT INTO orders ...", nullptr, nullptr, nullptr);
//     auto sent = tx.enqueue({.topic = "orders", .key = "customer-42", .payload = body});
//     tx.commit();                                 // both rows, or neither
//   }                                              // no commit(): rolled back
//
// The relay (outbox-relay) forwards committed messages to the broker in commit
// order; see relay_store.hpp for its side of the same tables.
//
// msg_id. Every message carries a unique msg_id, the broker's dedup key. By
// default the library generates a snowflake id (idgen) whose worker id comes
// from Options::worker_id or, when none is given, is leased from the database
// itself (table outbox_workers), so processes sharing one outbox never share a
// worker id. A holder keeps an OS lock on "<db>-outbox-workers.lock" while it
// lives, so the id of a crashed or killed producer is free again at once, and
// a high-water mark in the same row keeps its next holder from repeating any
// of its ids (docs/schema.md, "outbox_workers"). Ids from *different* databases are unique only if
// their worker ids are: give each database's producers disjoint worker ids (or use UUID v7). If two
// producers ever do collide, the broker answers CONFLICT for the second payload and the relay marks
// that message dead: the collision is exposed, no message is silently lost.
//
// Ownership. open() owns its connection and closes it in the destructor.
// attach() borrows the application's sqlite3*, which must outlive the Outbox;
// it installs the connection's wal_hook and rollback_hook (to wake the relay
// after a commit and run WAL auto-checkpoints), replacing hooks the
// application set before.
//
// Thread safety. An Outbox and its Transactions are used by one thread at a
// time, like the sqlite3 connection under them. Use one Outbox per thread (each
// with its own connection) for concurrent producers; they may share a file.
//
// Errors. Bad input and database failures throw outbox::Error (one line, with
// SQLite's extended result code, e.g. SQLITE_FULL or SQLITE_IOERR_WRITE: test
// `extended_code() & 0xff`). A duplicate msg_id is a value in the result.
// A throwing enqueue() writes nothing. The transaction stays usable, except
// when SQLite itself rolled it back (it may on SQLITE_FULL, SQLITE_IOERR,
// SQLITE_NOMEM): then the message ends with "(SQLite rolled the transaction
// back)", the business rows written so far are gone as well, and commit()
// throws; never continue such a transaction's work in autocommit mode. A
// commit() that fails rolls back: neither rows nor messages are written.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>

#include "outbox/clock.hpp"
#include "outbox/error.hpp"
#include "outbox/message.hpp"

namespace spdlog {
class logger;
}

namespace outbox {

enum class Durability : std::uint8_t {
  normal,  // WAL + synchronous=NORMAL: a commit survives a process crash
  full,    // synchronous=FULL: a commit also survives power loss (slower)
};

enum class IdKind : std::uint8_t {
  snowflake,  // 64-bit time-ordered id, decimal text (default; fastest index inserts)
  uuid_v7,    // time-ordered UUID, canonical text; no worker id needed
};

struct Options {
  // Used by open() only; attach() leaves the application's settings alone.
  Durability durability = Durability::normal;
  std::chrono::milliseconds busy_timeout{5000};
  // Page cache of the connection open() creates, in KiB (0: SQLite default).
  std::int64_t cache_kib = 0;
  // Whether closing the connection open() created checkpoints. SQLite's
  // default is to checkpoint when the last connection to a database closes:
  // two fsyncs, then the -wal and -shm files are deleted, so the next opener
  // (the relay, the next producer) creates them again and its first write
  // syncs a new WAL header. false (the default): the connection closes
  // without that; the WAL and its index stay next to the database, every
  // commit in them (as durable as at commit), the relay checkpoints them in
  // the background and the next opener carries on. Copy a database with its
  // -wal file (or SQLite's backup API); never delete a -wal file.
  bool checkpoint_on_close = false;

  // Largest accepted payload; larger ones are refused with outbox::Error.
  std::size_t max_payload_bytes = std::size_t{1} << 20;

  IdKind id_kind = IdKind::snowflake;
  // Snowflake worker id. Empty: lease a free one from outbox_workers.
  std::optional<std::uint32_t> worker_id{};
  // Expiry written with a leased worker id and renewed by enqueues. A live
  // holder keeps its id regardless (it holds the id's lock); the expiry only
  // matters to older libraries sharing the database, which go by it.
  std::chrono::milliseconds worker_lease{std::chrono::minutes(10)};

  // Wake the relay of this database after each commit that enqueued messages.
  bool notify_relay = true;
  // Checkpoints copy the WAL back into the database file and fsync it: a few
  // milliseconds that would otherwise land inside a business transaction every
  // few hundred commits. The relay (RelayStore) checkpoints in the background,
  // so a producer only checkpoints itself when the WAL has grown past this
  // many pages (no relay running, or one that is stuck). 0 disables it. This
  // replaces SQLite's auto-checkpoint on the connection (see "Ownership").
  // Past twice this many pages (producers committing back to back, whose
  // checkpoints never catch up) commit() restarts the WAL instead: it copies
  // the rest back and waits up to 100 ms for readers to leave the WAL, on a
  // connection of its own, so that the WAL stays near that size.
  int wal_autocheckpoint_pages = 10000;

  // Time for created_at_ms and worker-id leases (tests inject their own).
  TimeSource clock = system_time_source();
  // Null: a null sink. Never a global logger.
  std::shared_ptr<spdlog::logger> logger{};
};

class Outbox {
 public:
  // Opens or creates the database at `path` (its directory must exist), sets
  // WAL, the busy timeout and the synchronous level, and creates or migrates
  // the outbox tables. Throws outbox::Error: missing directory, not a SQLite
  // database, schema newer than this library, the worker id lock file cannot
  // be created, every worker id held by a running producer.
  static Outbox open(const std::filesystem::path& path, Options options = {});

  // Uses the application's connection `db` (not owned; must outlive the
  // Outbox and be in autocommit mode now). Creates or migrates the tables.
  static Outbox attach(sqlite3* db, Options options = {});

  Outbox(Outbox&&) noexcept;
  Outbox& operator=(Outbox&&) noexcept;
  ~Outbox() noexcept;  // releases a leased worker id (best effort)

  // The connection, for the application's own SQL.
  sqlite3* db() const;

  // Adds `message` to the transaction that is open on db(). Throws if db() is
  // in autocommit mode: a message outside a transaction would break the
  // guarantee that it exists if and only if the business change committed.
  EnqueueResult enqueue(const Message& message);

  // The snowflake worker id in use (leased or configured).
  std::uint32_t worker_id() const;

 private:
  struct Impl;
  friend class Transaction;
  friend EnqueueResult enqueue(sqlite3* db, const Message& message);
  explicit Outbox(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_{};
};

// For applications that run their own BEGIN/COMMIT on a connection given to
// Outbox::open() or Outbox::attach(): enqueues on that connection. Throws if
// `db` has no Outbox, or is in autocommit mode.
EnqueueResult enqueue(sqlite3* db, const Message& message);

// RAII transaction: BEGIN IMMEDIATE in the constructor (so the write lock is
// taken up front and the business SQL never fails with SQLITE_BUSY halfway),
// ROLLBACK in the destructor unless commit() ran. When another connection
// holds the write lock past Options::busy_timeout, the constructor throws
// outbox::Error with SQLITE_BUSY (extended_code()) naming the database, and
// nothing is written. SQLITE_PROTOCOL (a process stopped while it holds the
// WAL index's locks, docs/schema.md) comes after about 10 s of SQLite's own
// tries; it is tried again until busy_timeout has passed since the first try,
// each retry logged as a warning, then thrown the same way (with the default
// busy_timeout of 5 s: at once).
class Transaction {
 public:
  explicit Transaction(Outbox& box);
  ~Transaction() noexcept;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  sqlite3* db() const { return db_; }
  EnqueueResult enqueue(const Message& message);
  // Commits; afterwards the guard is inert. Throws outbox::Error if COMMIT
  // fails (the transaction is then rolled back).
  void commit();
  // Rolls back now; afterwards the guard is inert.
  void rollback();
  bool active() const { return active_; }

 private:
  Outbox* box_;
  sqlite3* db_;
  bool active_ = false;
};

}  // namespace outbox
