#include "wal_restart.hpp"

#include <algorithm>

namespace outbox::detail {

WalRestart::Result WalRestart::run(sqlite3* connection, int pages) {
  if (pages < again_at_) return Result::not_due;
  const auto started = std::chrono::steady_clock::now();
  const int rc =
      sqlite3_wal_checkpoint_v2(connection, "main", SQLITE_CHECKPOINT_RESTART, nullptr, nullptr);
  if (rc == SQLITE_OK) {
    reset();
    return Result::restarted;
  }
  // The checkpoint lock is taken without the busy handler: held by another
  // connection's checkpoint, SQLITE_BUSY comes back at once.
  if (rc == SQLITE_BUSY && std::chrono::steady_clock::now() - started < kWait / 2) {
    again_at_ = pages + 1;
    return Result::refused_at_once;
  }
  step_ = step_ == 0 ? first_step_ : std::min(step_, 1 << 24) * 2;
  again_at_ = pages + step_;
  return rc == SQLITE_BUSY || rc == SQLITE_LOCKED ? Result::waited_out : Result::failed;
}

}  // namespace outbox::detail
