// The relay's side of an outbox database: who may forward it (the lease), what
// is pending (in commit order), what happened to each message (delivered with
// its broker offset, or dead with a reason), retries, statistics, dead-message
// handling and retention. outbox-relay's forwarding loop and its operator
// subcommands (status, dead, replay, drop) are thin layers over this class.
//
//   auto store = outbox::RelayStore::open("app.db");
//   auto lease = store.claim_lease("relay@host", std::chrono::seconds(10));
//   if (!lease) { /* another relay is active: stay standby, retry later */ }
//   for (;;) {
//     auto batch = store.read_pending(1000, last_sent_seq);
//     if (batch.empty()) { store.wait_for_work(std::chrono::milliseconds(500)); continue; }
//     ... send, collect acks ...
//     store.record_outcomes(outcomes, *lease);   // one transaction per batch
//   }
//
// Bookkeeping lives in relay-owned tables, never on the producer's commit path:
// outbox_delivery (one row per message the relay has settled or rescheduled)
// and outbox_relay_cursor (every seq at or below it is settled). A message is
// *pending* until it has an outcome; *delivered* once the broker stored it (or
// answered DUPLICATE); *dead* after a permanent refusal (CONFLICT, REJECTED)
// until an operator replays it (pending again) or drops it (settled, never
// sent).
//
// Ordering. read_pending() returns messages in seq (commit) order and never
// returns a message while an earlier message with the same (topic, partition
// key) is blocked: scheduled for a retry that is not yet due, or dead under
// DeadPolicy::block (the default). Messages without a key form one group per
// topic.
//
// Costs. read_pending() scans from max(after_seq, cursor); while a blocked
// message holds the cursor back, a read from a small after_seq (a restart)
// walks over the settled rows behind it once. Each fenced write holds SQLite's
// write lock for the length of one batch, during which producers wait (busy
// timeout): keep batches to a few thousand messages. The store also runs WAL
// checkpoints (RelayOptions::checkpoint_pages), which never block producers.
//
// Ownership and thread safety. A RelayStore owns its own connection; use it
// from one thread at a time. Any number of RelayStores (other processes, the
// operator CLI) may open the same database; the lease decides which relay
// forwards, and writes fenced with a Lease throw LeaseLost once another relay
// holds it.
//
// Errors. Database failures and bad input throw outbox::Error (one line, with
// SQLite's extended result code); every write is one transaction, so a failed
// call leaves nothing half-applied. A lease held by someone else, an unknown
// msg_id, an empty batch are values, not exceptions.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "outbox/clock.hpp"
#include "outbox/error.hpp"
#include "outbox/message.hpp"

namespace spdlog {
class logger;
}

namespace outbox {

enum class DeadPolicy : std::uint8_t {
  block,  // a dead message holds back later messages of its (topic, key)
  skip,   // later messages of the key go on without it
};

struct RelayOptions {
  std::chrono::milliseconds busy_timeout{5000};
  bool synchronous_full = false;
  DeadPolicy on_dead = DeadPolicy::block;
  // How often wait_for_work() checks PRAGMA data_version when no wake-up
  // arrives (commits from producers that could not notify, other machines'
  // tools, a missed datagram).
  std::chrono::milliseconds poll_interval{50};
  // The relay keeps the WAL short: after its own commits, and when
  // wait_for_work() finds nothing to do, it runs a PASSIVE checkpoint once the
  // WAL holds at least this many pages (0: never). Producers then never pay
  // for checkpoints on their commits (see Options::wal_autocheckpoint_pages).
  int checkpoint_pages = 1000;
  // Whether closing the store, when it holds the database's last
  // connection, copies the WAL back and removes it (SQLite's default: two
  // fsyncs and an unlink). A program that closes and reopens many databases
  // in turn turns it off: the WAL stays, and the next opener, producer or
  // relay, carries on with it; nothing committed is lost either way.
  bool checkpoint_on_close = true;
  // Open the file read-only (status and listing tools); writes then throw.
  bool read_only = false;
  TimeSource clock = system_time_source();
  std::shared_ptr<spdlog::logger> logger{};  // null: a null sink
};

// Proof of holding the relay lease; pass it to fenced writes.
struct Lease {
  std::string holder{};
  std::int64_t epoch = 0;  // grows by one each time the lease changes hands
  TimePoint expires_at{};
};

struct LeaseInfo {
  std::string holder{};
  std::int64_t epoch = 0;
  TimePoint acquired_at{};
  TimePoint expires_at{};
  bool expired = false;  // as of the store's clock when read
};

struct PendingMessage {
  std::int64_t seq = 0;
  std::string msg_id{};
  std::string topic{};
  std::optional<std::string> partition_key{};
  Headers headers{};
  std::string payload{};
  TimePoint created_at{};
  int attempts = 0;  // earlier attempts of a retry row (docs/schema.md, state 0)
  // Non-empty when the row breaks the SQL contract's format so that it cannot
  // be read as a message (a malformed headers blob): why, in one line. Such a
  // message can never be sent; `headers` is then empty.
  std::string format_error{};
};

// The result of sending one message.
struct Outcome {
  enum class Kind : std::uint8_t { delivered, dead };
  std::int64_t seq = 0;
  Kind kind = Kind::delivered;
  std::int64_t broker_offset = 0;  // delivered: where the broker stored it
  std::string reason{};            // dead: why (CONFLICT, REJECTED(...))

  static Outcome delivered(std::int64_t seq, std::int64_t broker_offset) {
    return {seq, Kind::delivered, broker_offset, {}};
  }
  static Outcome dead(std::int64_t seq, std::string reason) {
    return {seq, Kind::dead, 0, std::move(reason)};
  }
};

struct Stats {
  std::int64_t pending = 0;          // not yet settled (includes scheduled retries)
  std::int64_t retrying = 0;         // pending with a retry scheduled
  std::int64_t delivered = 0;        // delivered rows still kept (before retention)
  std::int64_t delivered_total = 0;  // delivered since the outbox was created
  std::int64_t dead = 0;
  std::int64_t last_seq = 0;  // highest seq in the outbox
  std::int64_t settled_through_seq = 0;
  std::optional<std::chrono::milliseconds> oldest_pending_age{};  // empty: nothing pending
  std::optional<LeaseInfo> lease{};                               // empty: never claimed
};

// The part of Stats that stays cheap however large the backlog and however
// many delivered rows are kept: what a running relay logs every few seconds
// and what its metrics show. `pending` counts seqs, not rows (see backlog()).
struct Backlog {
  std::int64_t pending = 0;
  std::int64_t retrying = 0;
  std::int64_t dead = 0;
  std::optional<std::chrono::milliseconds> oldest_pending_age;
};

struct DeadMessage {
  std::int64_t seq = 0;
  std::string msg_id{};
  std::string topic{};
  std::optional<std::string> partition_key{};
  std::string reason{};
  int attempts = 0;
  TimePoint created_at{};
  TimePoint died_at{};
};

// What the active relay last reported about itself, for `outbox-relay status`
// (another process): whether it has a session with its destination, the last
// error and when, and when it last made progress. Written by the relay when
// its session opens or fails and every few seconds while it runs.
struct RelayStatus {
  std::string holder{};       // the lease holder that wrote it
  std::string destination{};  // "broker tcp://127.0.0.1:7750"
  bool session_up = false;
  TimePoint session_changed_at{};
  std::string last_error{};  // empty: none recorded
  std::optional<TimePoint> last_error_at{};
  std::optional<TimePoint> last_progress_at{};  // last acknowledged or dead message
  TimePoint updated_at{};
};

class RelayStore {
 public:
  // Opens an existing outbox database (migrating an older schema forward).
  // Throws outbox::Error if the file does not exist, is not a SQLite database,
  // has no outbox schema, or has a newer one.
  static RelayStore open(const std::filesystem::path& path, RelayOptions options = {});

  RelayStore(RelayStore&&) noexcept;
  RelayStore& operator=(RelayStore&&) noexcept;
  ~RelayStore() noexcept;

  // --- Lease: one active relay per database -------------------------------
  // Takes the lease if it is free, expired, or already ours (then renews it).
  // Empty when another holder's lease is still valid. `holder` must be unique
  // to one relay instance (for example "host:pid:start-time"): two instances
  // with the same name would both count as the owner.
  std::optional<Lease> claim_lease(const std::string& holder, std::chrono::milliseconds ttl);
  // Extends our lease; false (nothing written) if it was lost meanwhile.
  bool renew_lease(Lease& lease, std::chrono::milliseconds ttl);
  // Gives the lease up so a standby can take over at once; no-op if lost.
  void release_lease(const Lease& lease);
  std::optional<LeaseInfo> lease_info();
  // This database's origin id: a random UUID created the first time a relay
  // asks (kept in outbox_meta, key 'origin_id') and never changed. The broker
  // records the highest lease epoch per origin and refuses sends from an
  // older one. Empty for a read-only store of a database that has none.
  std::string origin_id();

  // Changes RelayOptions::busy_timeout for the calls that follow (a relay
  // stepping many databases on one thread waits less for each).
  void set_busy_timeout(std::chrono::milliseconds timeout);

  // --- Reading ------------------------------------------------------------
  // Up to `limit` pending messages with seq > after_seq, in seq order,
  // skipping blocked keys (see "Ordering" above) and retries not yet due.
  // Pipelining relays pass the last seq they already sent as after_seq.
  // Stops before a message that would take the messages' bytes (msg_id,
  // topic, key, headers blob and payload, plus 16 per message) above
  // `max_bytes`; the first message is always returned, however large, so
  // that the caller can decide about it. A row whose headers blob is
  // malformed comes back with `format_error` set instead of throwing.
  std::vector<PendingMessage> read_pending(std::size_t limit, std::int64_t after_seq = 0,
                                           std::size_t max_bytes = SIZE_MAX);
  // One step of a sweep for the rows read_pending() never returns: those at
  // or below the cursor with no outcome. Every settled seq has an
  // outbox_delivery row (the cursor moves in the transaction that writes
  // them, retention deletes a message with its row), so such a row was
  // inserted by another program with a seq of its own: at 0 or below, or
  // after the cursor had passed it. Every step returns the rows at 0 or below
  // (a seek on the rowid range); of the positive seqs it looks at up to
  // `max_rows` rows above `after_seq`, in seq order. Returns up to `limit`
  // rows, lowest seq first (msg_id, topic and key set; payload and headers
  // are not read), and where the next step starts (`next_after`: 0 once the
  // step reached the cursor; the last row found when `limit` stopped it).
  // One read transaction; the cost is about half a microsecond per row
  // looked at. Throws Error as the other calls do.
  struct UnreadStep {
    std::vector<PendingMessage> rows{};
    std::int64_t next_after = 0;
    std::int64_t cursor = 0;  // settled_through_seq as the step read it
  };
  UnreadStep unread(std::int64_t after_seq, std::size_t max_rows, std::size_t limit);
  // The delivery generation (outbox_relay_cursor.generation) as the last
  // read_pending() saw it, in the same transaction as the rows it returned.
  // replay_dead(), replay_all_dead() and drop_dead() add one in their own
  // transaction; so must any other tool that changes delivery state. A
  // pipelining relay that sees it change must not read past after_seq any
  // more: it settles what it has in flight, then reads from the cursor again
  // (after_seq 0), since a message behind after_seq may be pending again.
  std::int64_t delivery_generation() const;

  // --- Recording outcomes (one transaction per call) ----------------------
  // Marks each message delivered or dead and advances the cursor. Fenced: if
  // `lease` no longer holds the lease, throws LeaseLost and writes nothing.
  // Outcomes for messages already settled or no longer present are ignored.
  void record_outcomes(std::span<const Outcome> outcomes, const Lease& lease);

  // --- Inspection and operator actions (not fenced) -----------------------
  // replay and drop add one to the delivery generation, so that a running
  // relay notices them (see delivery_generation()).
  // Everything status shows, pending counted row by row; counting the
  // pending messages and the delivered rows kept for retention reads all of
  // them.
  Stats stats();
  // Pending, retrying, dead and oldest pending age only, for frequent use by a
  // running relay and its metrics: index lookups whose cost does not grow
  // with the backlog (tens of microseconds; counting 100,000 pending rows
  // as stats() does took 160 ms on a loaded 2-core machine).
  // `pending` is the seqs past the cursor that are not settled: the same as
  // stats().pending, which counts the rows, except when rows past the cursor
  // are gone (retention removed delivered messages behind a key blocked by a
  // dead message for longer than the retention time, or a writer gave
  // explicit seqs with gaps); then it also counts those.
  Backlog backlog();
  std::vector<DeadMessage> list_dead(std::size_t limit = 1000);
  // Makes a dead message pending again (attempts reset). False if `msg_id` is
  // not a dead message.
  bool replay_dead(const std::string& msg_id);
  // Replays every dead message; returns how many.
  std::size_t replay_all_dead();
  // Settles a dead message without sending it, unblocking its key. False if
  // `msg_id` is not a dead message. The row stays until retention removes it.
  bool drop_dead(const std::string& msg_id);

  // --- Relay status (not fenced) ------------------------------------------
  // Replaces the stored status with `status`, keeping the stored last error
  // when `status.last_error` is empty. One small transaction.
  void write_status(const RelayStatus& status);
  // Empty when no relay has reported yet.
  std::optional<RelayStatus> read_status();

  // --- Retention ----------------------------------------------------------
  // Deletes delivered (and dropped) messages settled more than `retention`
  // ago, `batch_size` rows per transaction so producers are never blocked for
  // long, stopping after `max_batches` batches. Returns the number deleted.
  // The newest message is always kept, so seq values are never reused.
  std::size_t delete_delivered(std::chrono::milliseconds retention, std::size_t batch_size = 500,
                               std::size_t max_batches = SIZE_MAX);

  // --- WAL maintenance ----------------------------------------------------
  // Runs a PASSIVE checkpoint now: copies committed WAL pages back into the
  // database file without blocking producers. The store already does this
  // after its own commits and from wait_for_work(); a program that uses a
  // RelayStore only for maintenance can call it on a timer.
  void checkpoint();

  // --- Waiting for commits ------------------------------------------------
  // Returns true as soon as another connection commits to the database (a
  // producer's wake-up, or a change of PRAGMA data_version seen by polling
  // every poll_interval), false when `timeout` passes without one. Spurious
  // true returns are possible; read_pending() decides.
  bool wait_for_work(std::chrono::milliseconds timeout);

  // Whether another connection committed to the database since the last
  // read_pending() or call of this (PRAGMA data_version), without waiting and
  // without the wake-up socket: for a program that watches many databases and
  // paces these checks itself. The first call only takes note (false).
  // Spurious true returns are possible; read_pending() decides.
  bool committed_since_last_look();

  sqlite3* db() const;
  const std::string& path() const;

 private:
  struct Impl;
  explicit RelayStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_{};
};

// "delivered" or "dead", for logs and operator output.
const char* to_string(Outcome::Kind kind);

}  // namespace outbox
