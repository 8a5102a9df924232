// The broker's storage engine: a persistent, per-topic append-only message log
// with a msg_id dedup index, consumer-group offsets and retention.
//
// The broker daemon owns one Store. For every group of PUBLISH batches that
// arrived together it calls append() once: the whole call is one durable
// transaction (group commit), and only after it returns may the daemon send the
// acks. Each message gets an outcome: STORED(offset) for a new msg_id,
// DUPLICATE(original offset) for a msg_id already persisted with the same
// identity, CONFLICT for a msg_id persisted with another identity,
// REJECTED(reason) for a message that can never be stored. A message's
// identity is its topic, partition key, header block (the encoded bytes as
// sent: names, values and their order) and payload; the store keeps hashes
// of them (XXH64), not copies. Entries written by stores of schema version 1
// (opened and upgraded by this version) recorded topic and payload only, so
// for those msg_ids only topic and payload are compared.
//
//   broker::Store store("/var/lib/outbox/broker.db", {.sync = broker::SyncMode::normal});
//   std::vector<broker::IncomingMessage> batch = ...;  // views into frame memory
//   auto outcomes = store.append(batch);                // durable when it returns
//   auto page = store.fetch("orders", 1, 100, 1 << 20);
//
// Offsets start at 1 in every topic and grow by one per stored message; 0 means
// "none" (an empty topic's last offset, a group that never committed). A topic
// holds up to 2^40 - 1 offsets and a store up to 2^23 - 1 topics; beyond that
// append() throws outbox::Error (SQLITE_FULL).
//
// Durability. With SyncMode::full append() returns only after everything it
// wrote is fsync'ed: an acknowledged message survives a power loss. With
// SyncMode::normal (SQLite WAL, synchronous=NORMAL) an acknowledged message
// survives a crash or kill of the process, but the last commits may be lost on
// a power loss or kernel crash (the store stays consistent: a lost message
// loses its dedup entry with it, so a resend is stored again, not refused).
// In both modes a msg_id is never visible as seen before its message is
// written in the same committed transaction, and a failed append() leaves
// nothing half-applied.
//
// Errors. Expected outcomes (duplicate, conflict, rejected) are values.
// Failures of the database (disk full, I/O error, corrupt file, locked by
// another process) throw outbox::Error of kind database (outbox/error.hpp),
// which keeps SQLite's extended result code;
// after a failed append() the store is unchanged and may be used again. Invalid
// options throw std::invalid_argument.
//
// Thread safety. A Store is not thread-safe: all calls, including fetch() and
// the const accessors, must come from one thread at a time (the daemon's loop
// thread). One Store per database file: the file is locked while the Store is
// open (an OFD lock on a byte SQLite never uses), and a second Store (in any
// process) fails to open with outbox::Error (SQLITE_BUSY); other SQLite
// connections may read the file meanwhile. Each Store owns one background
// thread with a second connection of its own: it copies the WAL back into the
// database (checkpoints, asked for by the writer every 64 MiB of WAL, so that
// append() does not wait for their fsyncs) and, with SyncMode::normal, writes
// the WAL to disk every 20 ms. Should it fall behind, append() checkpoints
// itself once the WAL holds 256 MiB.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "outbox/error.hpp"

namespace spdlog {
class logger;
}

namespace broker {

enum class SyncMode : std::uint8_t {
  full,    // fsync on every commit: acknowledged messages survive power loss
  normal,  // WAL without fsync per commit: survives process crashes only
};

struct StoreOptions {
  SyncMode sync = SyncMode::full;
  // Limit on partition key + headers + payload bytes of one message; larger
  // messages are REJECTED(too_large).
  std::size_t max_message_bytes = 1024 * 1024;
  // How long a msg_id is remembered, counted from when it was first stored.
  // Zero (the default) means forever. Entries younger than the window are never
  // removed; older ones are removed by run_maintenance(), after which the same
  // msg_id would be STORED again.
  std::chrono::milliseconds dedup_window{0};
  // How long message bodies are kept. Zero (the default) means forever.
  // run_maintenance() deletes older bodies; it never touches the dedup index.
  std::chrono::milliseconds retention{0};
  // Page cache for the database connection. With time-ordered msg_ids
  // (snowflake, UUID v7) only the recent end of the dedup index is hot, so
  // this need not hold the whole index; random ids (UUID v4) touch all of it.
  std::size_t cache_bytes = std::size_t{256} * 1024 * 1024;
  // Upper bound on the database file size; zero means no limit. A write that
  // would grow the file beyond it fails with outbox::Error (SQLITE_FULL).
  std::uint64_t max_database_bytes = 0;
  // Run PRAGMA quick_check when opening: it reads the whole file once (about
  // a second per few GiB), and a corrupt file fails to open with outbox::Error
  // (SQLITE_CORRUPT) naming the first problem. Switch off for huge stores
  // whose open time matters more.
  bool integrity_check = true;
  // Logger for open/recovery/maintenance messages; null means a null sink.
  std::shared_ptr<spdlog::logger> logger;
  // Source of "now" for stored-at times, dedup expiry and retention. Empty
  // means std::chrono::system_clock::now. Tests substitute a fake clock.
  std::function<std::chrono::system_clock::time_point()> clock;
};

// One message as received from a producer. Views only: the caller keeps the
// memory alive for the duration of append(), nothing is retained afterwards.
struct IncomingMessage {
  std::string_view msg_id;         // 1..255 bytes, printable ASCII without spaces
  std::string_view topic;          // 1..249 bytes of [A-Za-z0-9._-]
  std::string_view partition_key;  // may be empty
  std::string_view headers;        // opaque bytes, stored and returned verbatim
  std::string_view payload;        // may be empty
  // Messages of one ordered stream (the daemon passes the session id; 0: none).
  // Once a message of (order_group, topic, partition_key) is refused in a call
  // (conflict or rejected), later messages of the same triple in that call are
  // not written and come back blocked, so nothing of a key overtakes a refused
  // message inside one group commit.
  std::uint64_t order_group = 0;
};

enum class AppendStatus : std::uint8_t {
  stored,
  duplicate,
  conflict,
  rejected,
  blocked,  // not written: an earlier message of its order group, topic and key was refused
};

enum class RejectReason : std::uint8_t {
  none,
  too_large,  // key + headers + payload exceed max_message_bytes
  empty_msg_id,
  invalid_msg_id,  // too long or contains bytes outside printable ASCII
  empty_topic,
  invalid_topic,  // too long or contains bytes outside [A-Za-z0-9._-]
};

struct AppendOutcome {
  AppendStatus status = AppendStatus::rejected;
  // stored: the new offset. duplicate and conflict: the offset the msg_id was
  // first stored at (its topic may differ for a conflict). rejected: 0.
  std::uint64_t offset = 0;
  RejectReason reason = RejectReason::none;  // set only for rejected
  // conflict: one line naming what differs from the stored copy, both values
  // (each cut after 48 bytes), e.g. "msg_id 4711 is already stored in orders
  // at offset 1 with key 'order-1'; this message has key 'order-2'". Text for
  // people: not part of the outcome's equality.
  std::string detail;

  friend bool operator==(const AppendOutcome& a, const AppendOutcome& b) noexcept {
    return a.status == b.status && a.offset == b.offset && a.reason == b.reason;
  }
};

std::string_view to_string(AppendStatus status) noexcept;
std::string_view to_string(RejectReason reason) noexcept;
std::string_view to_string(SyncMode mode) noexcept;
// Parses "full" or "normal"; empty if neither.
std::optional<SyncMode> parse_sync_mode(std::string_view text) noexcept;

struct StoredMessage {
  std::uint64_t offset = 0;
  std::string msg_id;
  std::string partition_key;
  std::string headers;
  std::string payload;
  std::int64_t stored_at_ms = 0;  // Unix time in milliseconds
};

struct FetchResult {
  std::vector<StoredMessage> messages;  // ascending offsets
  // Where the next fetch should start: one past the last returned message, or
  // from_offset (moved past bodies removed by retention) when none returned.
  std::uint64_t next_offset = 0;
  std::uint64_t last_offset = 0;  // the topic's last offset at the time of the fetch
};

struct TopicStats {
  std::string topic;
  std::uint64_t message_count = 0;  // messages whose bodies are still retained
  std::uint64_t first_offset = 0;   // first retained offset, 0 if none
  std::uint64_t last_offset = 0;    // last offset ever assigned, 0 if none
};

struct GroupOffset {
  std::string group;
  std::string topic;
  std::uint64_t committed_offset = 0;
};

struct StoreStats {
  // Outcome counters since the database was created; persisted with every append.
  std::uint64_t stored = 0;
  std::uint64_t duplicates = 0;
  std::uint64_t conflicts = 0;
  std::uint64_t rejected = 0;
  std::uint64_t dedup_entries = 0;  // msg_ids currently remembered
  std::vector<TopicStats> topics;   // sorted by topic name
};

struct MaintenanceResult {
  std::size_t bodies_deleted = 0;
  std::size_t dedup_entries_deleted = 0;
  bool more = false;  // true when another call right away would find more to delete
};

// One lease epoch of an origin to record (Store::advance_origin_epochs);
// the views must stay valid for the call.
struct OriginEpoch {
  std::string_view origin;
  std::uint64_t epoch = 0;
};

class Store {
 public:
  // Opens (creating if needed) the store at `path`. Throws outbox::Error when the
  // file cannot be opened or is not a store, std::invalid_argument for bad options.
  explicit Store(const std::filesystem::path& path, StoreOptions options = {});
  ~Store() noexcept;
  Store(Store&&) noexcept;
  Store& operator=(Store&&) noexcept;
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Applies a batch in order in one durable transaction and returns one outcome
  // per message, in the same order. A msg_id appearing twice in the batch is
  // stored once; the later copy is a DUPLICATE (or CONFLICT) of the first.
  // Throws outbox::Error if the transaction fails; then nothing was applied.
  std::vector<AppendOutcome> append(std::span<const IncomingMessage> batch);
  // Same, writing into `outcomes` (resized to batch.size()) to reuse its memory.
  void append(std::span<const IncomingMessage> batch, std::vector<AppendOutcome>& outcomes);

  // Messages of `topic` with offset >= from_offset, at most max_count of them
  // and at most max_bytes of payload + headers + key + msg_id, except that the
  // first message is returned even if it alone exceeds max_bytes. An unknown
  // topic gives an empty result.
  FetchResult fetch(std::string_view topic, std::uint64_t from_offset, std::size_t max_count,
                    std::size_t max_bytes) const;

  // The topic's last assigned offset, 0 for an unknown or empty topic. Cheap
  // (in memory): the daemon can compare it with a waiting consumer's position.
  std::uint64_t last_offset(std::string_view topic) const;

  // Consumer-group offsets: `offset` is the last offset the group has
  // processed; a restarted consumer fetches from committed_offset() + 1.
  // Committing a lower offset than before rewinds the group. Durable on return.
  // Throws std::invalid_argument for an empty or over-long (> 255 bytes) group,
  // an invalid topic name, a topic that has no messages yet, or an offset past
  // the topic's last offset (a group must never skip messages not yet stored).
  void commit_offset(std::string_view group, std::string_view topic, std::uint64_t offset);
  // 0 when the group never committed for this topic.
  std::uint64_t committed_offset(std::string_view group, std::string_view topic) const;
  // Every (group, topic) with a committed offset, ordered by group then topic,
  // at most `limit` of them (the metrics list the first ones).
  std::vector<GroupOffset> group_offsets(std::size_t limit) const;

  StoreStats stats() const;

  // Fencing of stale relays. `origin` names a producer database (its origin
  // id); the epoch is its relay lease epoch, which grows by one each time
  // another relay takes the lease over. origin_epoch() is the highest epoch a
  // session of the origin was opened with, 0 when the origin is unknown.
  std::uint64_t origin_epoch(std::string_view origin) const;
  // Records `epoch` for `origin` if it is higher than the one known, durable
  // on return, and returns the highest epoch known afterwards: a result above
  // `epoch` means the caller's lease is stale. Throws std::invalid_argument
  // for an origin that is not 1 to 255 bytes of printable ASCII without
  // spaces (like a msg_id) or an epoch above 2^63 - 1, outbox::Error if the
  // write fails.
  std::uint64_t advance_origin_epoch(std::string_view origin, std::uint64_t epoch);
  // The same for several (origin, epoch) entries, applied in order in one
  // durable transaction (none of them if it throws): `highest[i]` (resized to
  // entries.size()) is the highest epoch known for entry i's origin once
  // entries 0..i were applied. Validates every entry before writing anything.
  // Returns whether anything was written (an entry raised its origin's epoch).
  bool advance_origin_epochs(std::span<const OriginEpoch> entries,
                             std::vector<std::uint64_t>& highest);
  // Throws std::invalid_argument, naming the field, for what
  // advance_origin_epoch() refuses; writes nothing.
  static void check_origin_epoch(std::string_view origin, std::uint64_t epoch);

  // Deletes message bodies older than the retention and dedup entries older
  // than the dedup window, about `max_rows` of each per call so the writer
  // thread is never blocked for long: bodies go in whole units of the messages
  // one append() call stored on one topic (up to ~64 KiB, at least one unit
  // per call); the dedup index is swept in key order, resuming where the last
  // call stopped, looking at up to 4 * max_rows entries. Call it periodically
  // (e.g. every second, and again right away while `more` is true).
  MaintenanceResult run_maintenance(std::size_t max_rows = 10000);

  const std::filesystem::path& path() const noexcept;
  const StoreOptions& options() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace broker
