// Starting an outbox database's WAL over when checkpoints cannot catch up.
//
// SQLite starts the WAL over only when a writer finds it wholly copied back
// and no reader in it. A PASSIVE checkpoint copies what was committed when it
// began; with two or more producers committing back to back the others have
// always committed more by then, so the WAL grew without end (117-849 MiB
// after 2 s of bench_outbox_enqueue --producers-only, bench/README.md). A
// RESTART checkpoint takes the write lock, copies the rest back and waits for
// readers to leave the WAL, so that the next commit starts it over.
//
// Used by C++ producers past twice Options::wal_autocheckpoint_pages, in
// commit(). Internal; one instance per connection that checkpoints, used by
// one thread at a time.
#pragma once

#include <sqlite3.h>

#include <chrono>

namespace outbox::detail {

class WalRestart {
 public:
  // The longest a RESTART waits for the write lock and for readers: the busy
  // timeout of the connection it runs on.
  static constexpr std::chrono::milliseconds kWait{100};

  enum class Result {
    restarted,        // the next commit starts the WAL over
    refused_at_once,  // another connection is checkpointing; try after the next commit
    waited_out,       // a writer or reader stayed past kWait; tried again later
    failed,           // an error other than busy (logged by the caller)
    not_due,          // not tried: the WAL has not grown enough since a wait ran out
  };

  // `step_pages`: how much the WAL must grow after a wait ran out before the
  // next try (then twice that, and so on), so that a reader that stays (a
  // report, a backup) delays writers ever more rarely.
  explicit WalRestart(int step_pages) : first_step_(step_pages > 0 ? step_pages : 1) {}

  // Runs a RESTART checkpoint of `connection`'s main database, whose WAL
  // holds `pages` frames, unless an earlier try that waited out asks for more
  // growth first. Never throws.
  Result run(sqlite3* connection, int pages);

  // The WAL started over (it was seen below the restart threshold).
  void reset() {
    again_at_ = 0;
    step_ = 0;
  }

 private:
  int first_step_;
  int again_at_ = 0;
  int step_ = 0;
};

}  // namespace outbox::detail
