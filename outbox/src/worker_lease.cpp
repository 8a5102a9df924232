#include "worker_lease.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <spdlog/logger.h>

#include "common.hpp"
#include "ids.hpp"

namespace outbox::detail {
namespace {

// Rows whose holder starts with this are alive exactly as long as the lock
// byte is held; others (older libraries) by their expiry.
constexpr std::string_view lock_holder_prefix = "lock:";

std::string make_holder_name(bool lock_based) {
  char host[128] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  std::random_device device;
  std::uint64_t nonce = (static_cast<std::uint64_t>(device()) << 32) ^ device();
  char buffer[256];
  std::snprintf(buffer, sizeof buffer, "%s%s:%ld:%016llx", lock_based ? "lock:" : "", host,
                static_cast<long>(::getpid()), static_cast<unsigned long long>(nonce));
  return buffer;
}

std::int64_t wall_clock_ms() {
  // The clock idgen stamps ids with, whatever clock the Options inject.
  return to_ms(system_now());
}

struct WorkerRow {
  std::string holder;
  std::int64_t expires_at_ms = 0;
  std::int64_t reserved_until_ms = 0;
};

}  // namespace

WorkerLease::WorkerLease(sqlite3* db, const std::string& path, TimeSource clock,
                         std::chrono::milliseconds lease, std::shared_ptr<spdlog::logger> logger)
    : db_(db), clock_(std::move(clock)), lease_(lease), logger_(std::move(logger)) {
  if (!path.empty()) {
    lock_path_ = path + "-outbox-workers.lock";
    struct stat database {};
    const mode_t mode = ::stat(path.c_str(), &database) == 0 ? (database.st_mode & 0666) : 0644;
    lock_fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, mode);
    if (lock_fd_ < 0) {
      throw Error(ErrorKind::io, "outbox: cannot open the worker id lock file '" + lock_path_ +
                                     "': " + std::strerror(errno));
    }
  }
  holder_ = make_holder_name(lock_fd_ >= 0);
  renew_ = sqlite::Statement(db_,
                             "UPDATE outbox_workers SET expires_at_ms = ?1, reserved_until_ms = ?2 "
                             "WHERE worker_id = ?3 AND holder = ?4");
}

WorkerLease::~WorkerLease() noexcept {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // drops every lock of this description
}

bool WorkerLease::try_lock(std::uint32_t id) {
  if (lock_fd_ < 0) return true;
  // OFD locks belong to the open file description, not the process: two
  // Outbox objects of one process exclude each other, and closing some other
  // descriptor of the file does not drop them (classic POSIX locks would).
  struct flock range {};
  range.l_type = F_WRLCK;
  range.l_whence = SEEK_SET;
  range.l_start = static_cast<off_t>(id);
  range.l_len = 1;
  if (::fcntl(lock_fd_, F_OFD_SETLK, &range) == 0) return true;
  if (errno == EAGAIN || errno == EACCES) return false;
  throw Error(ErrorKind::io, "outbox: locking worker id " + std::to_string(id) + " in '" +
                                 lock_path_ + "': " + std::strerror(errno));
}

void WorkerLease::unlock(std::uint32_t id) {
  if (lock_fd_ < 0) return;
  struct flock range {};
  range.l_type = F_UNLCK;
  range.l_whence = SEEK_SET;
  range.l_start = static_cast<off_t>(id);
  range.l_len = 1;
  ::fcntl(lock_fd_, F_OFD_SETLK, &range);  // cannot fail for a range we may hold
}

WorkerLease::Claim WorkerLease::claim() {
  const auto now_ms = to_ms(clock_());
  const auto wall_ms = wall_clock_ms();
  const auto max_id = IdSource::max_worker_id();
  std::vector<std::optional<WorkerRow>> rows(max_id + std::size_t{1});
  {
    sqlite::Statement select(db_,
                             "SELECT worker_id, holder, expires_at_ms, reserved_until_ms "
                             "FROM outbox_workers WHERE worker_id BETWEEN 0 AND ?1");
    auto use = select.use();
    use.bind(1, max_id);
    while (use.step()) {
      rows[static_cast<std::size_t>(use.column_int64(0))] =
          WorkerRow{use.column_text(1), use.column_int64(2), use.column_int64(3)};
    }
  }
  // The id this holder has now (a takeover is being handled), or -1.
  const std::int64_t previous = holding_ ? std::int64_t{worker_} : -1;
  const auto release_unless_kept = [&](std::uint32_t id) {
    if (std::int64_t{id} != previous) unlock(id);
  };
  std::optional<std::uint32_t> chosen;
  std::optional<std::uint32_t> earliest;  // free, but its mark is still ahead
  std::int64_t chosen_mark = 0, earliest_mark = 0;
  for (std::uint32_t id = 0; id <= max_id; ++id) {
    const auto& row = rows[id];
    const bool judged_by_lock =
        lock_fd_ >= 0 && (!row || row->holder.starts_with(lock_holder_prefix));
    if (row && !judged_by_lock && row->expires_at_ms > now_ms) continue;
    if (!try_lock(id)) continue;  // a live process holds it
    const std::int64_t mark = row ? row->reserved_until_ms : 0;
    if (mark <= wall_ms) {
      chosen = id;
      chosen_mark = mark;
      break;
    }
    if (!earliest || mark < earliest_mark) {
      if (earliest) release_unless_kept(*earliest);
      earliest = id;
      earliest_mark = mark;
    } else {
      release_unless_kept(id);
    }
  }
  if (!chosen && earliest) {
    chosen = earliest;
    chosen_mark = earliest_mark;
  } else if (earliest) {
    release_unless_kept(*earliest);
  }
  if (!chosen) {
    throw Error("outbox: all " + std::to_string(max_id + 1) +
                " snowflake worker ids of this database are held by running producers; set "
                "Options::worker_id or use IdKind::uuid_v7");
  }
  if (previous >= 0 && previous != std::int64_t{*chosen})
    unlock(static_cast<std::uint32_t>(previous));
  holding_ = false;

  const std::int64_t reserved = std::max(chosen_mark, wall_ms) + reservation_step.count();
  const TimePoint expires = from_ms(now_ms) + lease_;
  sqlite::Statement write(
      db_,
      "INSERT INTO outbox_workers(worker_id, holder, expires_at_ms, reserved_until_ms) "
      "VALUES (?1, ?2, ?3, ?4) ON CONFLICT(worker_id) DO UPDATE SET "
      "holder = excluded.holder, expires_at_ms = excluded.expires_at_ms, "
      "reserved_until_ms = excluded.reserved_until_ms");
  {
    auto use = write.use();
    use.bind(1, *chosen).bind_text(2, holder_).bind(3, to_ms(expires)).bind(4, reserved).run();
  }
  worker_ = *chosen;
  holding_ = true;
  issued_below_ms_ = chosen_mark;
  last_id_ms_ = 0;
  // Nothing counts until this transaction commits: a rolled-back claim must
  // make the next cover() write (and find the row not ours).
  reserved_until_ms_ = 0;
  expires_at_ = TimePoint{};
  pending_reserved_until_ms_ = reserved;
  pending_expires_at_ = expires;
  logger_->debug("outbox: leased snowflake worker id {} (ids from {} ms)", worker_, chosen_mark);
  return Claim{worker_, chosen_mark};
}

std::optional<WorkerLease::Claim> WorkerLease::cover(std::int64_t id_timestamp_ms) {
  last_id_ms_ = std::max(last_id_ms_, id_timestamp_ms);
  const auto reserved = pending_reserved_until_ms_.value_or(reserved_until_ms_);
  const auto expires = pending_expires_at_.value_or(expires_at_);
  const auto now = clock_();
  const auto half_step = reservation_step.count() / 2;
  if (id_timestamp_ms + half_step < reserved && now + lease_ / 2 < expires) return std::nullopt;

  const std::int64_t new_reserved = std::max(reserved, id_timestamp_ms + reservation_step.count());
  const TimePoint new_expires = now + lease_;
  {
    auto use = renew_.use();
    use.bind(1, to_ms(new_expires)).bind(2, new_reserved).bind(3, worker_).bind_text(4, holder_);
    use.run();
  }
  if (sqlite3_changes(db_) == 0) {
    // Someone took the row over (an older library after the expiry, or a
    // hand edit): this id must not be used. Lease another.
    const auto lost = worker_;
    auto next = claim();
    logger_->warn("outbox: worker id {} was taken over; now using {}", lost, next.worker_id);
    return next;
  }
  pending_reserved_until_ms_ = new_reserved;
  pending_expires_at_ = new_expires;
  return std::nullopt;
}

void WorkerLease::committed() noexcept {
  if (pending_reserved_until_ms_) reserved_until_ms_ = *pending_reserved_until_ms_;
  if (pending_expires_at_) expires_at_ = *pending_expires_at_;
  pending_reserved_until_ms_.reset();
  pending_expires_at_.reset();
}

void WorkerLease::rolled_back() noexcept {
  pending_reserved_until_ms_.reset();
  pending_expires_at_.reset();
}

void WorkerLease::release() noexcept {
  if (!holding_ || sqlite3_get_autocommit(db_) == 0) return;
  try {
    // Every id this holder issued is below the new mark. The expiry two
    // milliseconds ahead keeps older libraries, which do not read the mark,
    // out of this holder's last millisecond.
    const std::int64_t mark = std::max(issued_below_ms_, last_id_ms_ + 1);
    sqlite::Statement release(db_,
                              "UPDATE outbox_workers SET expires_at_ms = ?1, reserved_until_ms = "
                              "min(reserved_until_ms, ?2) WHERE worker_id = ?3 AND holder = ?4");
    auto use = release.use();
    use.bind(1, to_ms(clock_()) + 2).bind(2, mark).bind(3, worker_).bind_text(4, holder_).run();
  } catch (const std::exception& error) {
    logger_->warn("outbox: releasing worker id {} failed: {}", worker_, error.what());
  }
  unlock(worker_);
  holding_ = false;
}

}  // namespace outbox::detail
