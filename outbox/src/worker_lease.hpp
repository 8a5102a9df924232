// Snowflake worker ids leased from the database (table outbox_workers, see
// docs/schema.md "outbox_workers").
//
// Liveness comes from the operating system, not from a timer: every producer
// of one database runs on one host (WAL needs shared memory), so a holder
// keeps an OFD lock on byte `worker_id` of the sidecar file
// "<database>-outbox-workers.lock" for as long as it lives. The kernel drops
// the lock when the process dies, however it dies, so the id of a killed
// producer is free at once. Rows whose holder does not take locks (written by
// an older library, or for a database without a file) are free when their
// expiry has passed, as before.
//
// Reuse is safe because of a high-water mark kept in the same row:
// `reserved_until_ms` is above the timestamp of every id the holder may have
// committed. It is written inside the producer's own transaction before an id
// past it is used (at most once per half reservation step), so a message
// never commits without the mark that covers it; the next holder of the id
// issues ids at or after the mark only.
//
// Thread safety: like the connection it uses, one thread at a time.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "outbox/clock.hpp"
#include "sqlite/sqlite.hpp"

namespace spdlog {
class logger;
}

namespace outbox::detail {

class WorkerLease {
 public:
  // How far ahead of an id's timestamp the mark is written.
  static constexpr std::chrono::milliseconds reservation_step{1000};

  struct Claim {
    std::uint32_t worker_id = 0;
    // Ids issued before with this worker id are all below this (Unix ms).
    std::int64_t issued_below_unix_ms = 0;
  };

  // `path` is the database file; empty for a database without a file (no
  // other process can share it, so no lock is needed). `clock` times the
  // expiry of rows that are not lock-held. Opens (creating) the lock file.
  // Throws outbox::Error naming the file if it cannot be opened.
  WorkerLease(sqlite3* db, const std::string& path, TimeSource clock,
              std::chrono::milliseconds lease, std::shared_ptr<spdlog::logger> logger);
  ~WorkerLease() noexcept;  // drops the lock
  WorkerLease(const WorkerLease&) = delete;
  WorkerLease& operator=(const WorkerLease&) = delete;

  // Inside a write transaction: takes the smallest free id whose mark has
  // passed (or, if every free id has a mark ahead, the one with the earliest
  // mark) and records this holder. Throws outbox::Error if every id is held.
  Claim claim();

  // Inside the transaction that is about to use an id with this timestamp
  // (Unix ms): makes sure the row still names this holder and its mark
  // covers the id. Returns a new claim if the row was taken over meanwhile
  // (the caller must then make ids for the new worker id and call again).
  std::optional<Claim> cover(std::int64_t id_timestamp_ms);

  // The transaction that ran claim()/cover() committed, or rolled back.
  void committed() noexcept;
  void rolled_back() noexcept;

  // In autocommit mode: frees the row for the next holder, lowering the mark
  // to what was really issued. Best effort (logs a warning on failure).
  void release() noexcept;

  std::uint32_t worker_id() const { return worker_; }
  const std::string& holder() const { return holder_; }

 private:
  bool try_lock(std::uint32_t id);
  void unlock(std::uint32_t id);

  sqlite3* db_;
  std::string lock_path_;
  int lock_fd_ = -1;
  TimeSource clock_;
  std::chrono::milliseconds lease_;
  std::shared_ptr<spdlog::logger> logger_;
  std::string holder_;
  sqlite::Statement renew_;

  std::uint32_t worker_ = 0;
  bool holding_ = false;
  std::int64_t issued_below_ms_ = 0;  // the mark the claim started from
  std::int64_t last_id_ms_ = 0;       // timestamp of the last id covered
  std::int64_t reserved_until_ms_ = 0;
  TimePoint expires_at_{};
  std::optional<std::int64_t> pending_reserved_until_ms_;
  std::optional<TimePoint> pending_expires_at_;
};

}  // namespace outbox::detail
