#include "outbox/outbox.hpp"

#include <unistd.h>

#include <cstdio>
#include <mutex>
#include <random>
#include <unordered_map>

#include "common.hpp"
#include "ids.hpp"
#include "notify.hpp"
#include "schema.hpp"
#include "sqlite.hpp"

namespace outbox {

using detail::Statement;
using detail::to_ms;

namespace {

constexpr std::size_t max_msg_id_bytes = 256;

std::string make_holder_name() {
  char host[128] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  std::random_device device;
  std::uint64_t nonce = (static_cast<std::uint64_t>(device()) << 32) ^ device();
  char buffer[256];
  std::snprintf(buffer, sizeof buffer, "%s:%ld:%016llx", host, static_cast<long>(::getpid()),
                static_cast<unsigned long long>(nonce));
  return buffer;
}

// Connections with an Outbox, for the free function enqueue(sqlite3*, ...).
std::mutex registry_mutex;
std::unordered_map<sqlite3*, Outbox::Impl*>& registry() {
  static std::unordered_map<sqlite3*, Outbox::Impl*> connections;
  return connections;
}

}  // namespace

struct Outbox::Impl {
  detail::ConnectionPtr owned;
  sqlite3* db = nullptr;
  std::string path;
  Options options;
  std::shared_ptr<spdlog::logger> logger;

  Statement insert;
  Statement begin;
  Statement commit;
  Statement rollback;
  Statement renew_worker;

  bool worker_leased = false;
  std::string holder;
  std::uint32_t worker = 0;
  TimePoint worker_confirmed_until{};
  std::optional<TimePoint> worker_pending_until;
  std::unique_ptr<detail::IdSource> ids;

  std::unique_ptr<detail::WakeSender> wake;
  bool notify_pending = false;

  ~Impl() noexcept {
    {
      std::lock_guard lock(registry_mutex);
      auto found = registry().find(db);
      if (found != registry().end() && found->second == this) registry().erase(found);
    }
    if (db == nullptr) return;
    sqlite3_wal_hook(db, nullptr, nullptr);
    sqlite3_rollback_hook(db, nullptr, nullptr);
    if (worker_leased && sqlite3_get_autocommit(db) != 0) {
      try {
        // Free in two milliseconds rather than now, so the next holder's
        // snowflake ids cannot share a millisecond with this one's last ids.
        Statement release(db,
                          "UPDATE outbox_workers SET expires_at_ms = ?3 "
                          "WHERE worker_id = ?1 AND holder = ?2");
        auto use = release.use();
        use.bind(1, worker).bind_text(2, holder).bind(3, to_ms(options.clock()) + 2).run();
      } catch (const std::exception& error) {
        logger->warn("outbox: releasing worker id {} failed: {}", worker, error.what());
      }
    }
  }

  void setup() {
    logger = detail::logger_or_null(options.logger);
    {
      std::lock_guard lock(registry_mutex);
      if (registry().count(db) != 0) {
        db = nullptr;  // not ours: the destructor must leave it alone
        throw Error("outbox: this connection already has an outbox::Outbox");
      }
    }
    if (!options.clock) options.clock = system_clock();
    const char* filename = sqlite3_db_filename(db, "main");
    path = filename != nullptr ? filename : "";
    detail::ensure_schema(db, path.empty() ? ":memory:" : path,
                          detail::SchemaMode::create_or_migrate);
    insert =
        Statement(db,
                  "INSERT INTO outbox_messages(msg_id, topic, partition_key, headers, payload, "
                  "created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
                  "ON CONFLICT(msg_id) DO NOTHING");
    begin = Statement(db, "BEGIN IMMEDIATE");
    commit = Statement(db, "COMMIT");
    rollback = Statement(db, "ROLLBACK");
    renew_worker = Statement(db,
                             "UPDATE outbox_workers SET expires_at_ms = ?1 "
                             "WHERE worker_id = ?2 AND holder = ?3");

    std::uint32_t worker_for_ids = 0;
    if (options.id_kind == IdKind::snowflake) {
      if (options.worker_id) {
        if (*options.worker_id > detail::IdSource::max_worker_id()) {
          throw Error("outbox: worker id " + std::to_string(*options.worker_id) +
                      " is out of range 0.." + std::to_string(detail::IdSource::max_worker_id()));
        }
        worker_for_ids = *options.worker_id;
      } else {
        if (options.worker_lease.count() <= 0) throw Error("outbox: worker_lease must be positive");
        holder = make_holder_name();
        detail::ScopedTransaction transaction(db, true);
        worker = claim_worker();
        transaction.commit();
        worker_leased = true;
        worker_confirmed_until = options.clock() + options.worker_lease;
        worker_for_ids = worker;
        logger->debug("outbox: leased snowflake worker id {} for {}", worker, path);
      }
    }
    worker = worker_for_ids;
    ids = std::make_unique<detail::IdSource>(options.id_kind, worker_for_ids);

    if (options.notify_relay && !path.empty()) wake = std::make_unique<detail::WakeSender>(path);
    sqlite3_wal_hook(db, &Impl::on_wal_commit, this);
    sqlite3_rollback_hook(db, &Impl::on_rollback, this);

    std::lock_guard lock(registry_mutex);
    registry().emplace(db, this);
  }

  // Inside a write transaction: takes the smallest worker id that is free or
  // whose lease has expired. Returns it; the caller commits.
  std::uint32_t claim_worker() {
    const auto now = to_ms(options.clock());
    const auto max_id = detail::IdSource::max_worker_id();
    Statement taken(db,
                    "SELECT worker_id FROM outbox_workers WHERE expires_at_ms > ?1 "
                    "ORDER BY worker_id");
    std::uint32_t candidate = 0;
    {
      auto use = taken.use();
      use.bind(1, now);
      while (use.step()) {
        auto id = use.column_int64(0);
        if (id == candidate) {
          ++candidate;
        } else if (id > candidate) {
          break;
        }
      }
    }
    if (candidate > max_id) {
      throw Error("outbox: all " + std::to_string(max_id + 1) +
                  " snowflake worker ids of this database are leased; set Options::worker_id "
                  "or use IdKind::uuid_v7");
    }
    Statement claim(db,
                    "INSERT INTO outbox_workers(worker_id, holder, expires_at_ms) "
                    "VALUES (?1, ?2, ?3) ON CONFLICT(worker_id) DO UPDATE SET "
                    "holder = excluded.holder, expires_at_ms = excluded.expires_at_ms");
    auto use = claim.use();
    use.bind(1, candidate).bind_text(2, holder).bind(3, now + options.worker_lease.count()).run();
    return candidate;
  }

  // Called inside the caller's transaction before an id is generated: makes
  // sure the database still says this Outbox holds its worker id. The new
  // expiry counts only once the transaction is seen to commit.
  void ensure_worker_lease(TimePoint now) {
    if (!worker_leased || worker_pending_until) return;
    if (now + options.worker_lease / 2 < worker_confirmed_until) return;
    const auto until = now + options.worker_lease;
    {
      auto use = renew_worker.use();
      use.bind(1, to_ms(until)).bind(2, worker).bind_text(3, holder).run();
    }
    if (sqlite3_changes(db) == 0) {
      auto claimed = claim_worker();
      if (claimed != worker || !ids) {
        logger->warn("outbox: worker id {} lease lapsed and was taken; now using {}", worker,
                     claimed);
        ids = std::make_unique<detail::IdSource>(options.id_kind, claimed);
        worker = claimed;
      }
    }
    worker_pending_until = until;
  }

  void on_committed() noexcept {
    if (worker_pending_until) {
      worker_confirmed_until = *worker_pending_until;
      worker_pending_until.reset();
    }
    if (notify_pending) {
      notify_pending = false;
      if (wake) wake->notify();
    }
  }

  void on_rolled_back() noexcept {
    worker_pending_until.reset();
    notify_pending = false;
  }

  static int on_wal_commit(void* self, sqlite3* connection, const char* database, int pages) {
    auto* impl = static_cast<Impl*>(self);
    if (impl->options.wal_autocheckpoint_pages > 0 &&
        pages >= impl->options.wal_autocheckpoint_pages) {
      // Same as SQLite's own auto-checkpoint, which this hook replaces; a
      // busy checkpoint is simply retried after a later commit.
      int rc = sqlite3_wal_checkpoint_v2(connection, database, SQLITE_CHECKPOINT_PASSIVE,
                                         nullptr, nullptr);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
        impl->logger->warn("outbox: checkpoint of {} failed: {}", impl->path,
                           sqlite3_errmsg(connection));
      }
    }
    impl->on_committed();
    return SQLITE_OK;
  }

  static void on_rollback(void* self) { static_cast<Impl*>(self)->on_rolled_back(); }

  EnqueueResult enqueue(const Message& message) {
    if (message.topic.empty()) throw Error("outbox: message topic is empty");
    if (message.payload.size() > options.max_payload_bytes) {
      throw Error("outbox: payload of " + std::to_string(message.payload.size()) +
                  " bytes exceeds the maximum of " + std::to_string(options.max_payload_bytes) +
                  " bytes (Options::max_payload_bytes)");
    }
    if (message.msg_id.size() > max_msg_id_bytes) {
      throw Error("outbox: msg_id longer than " + std::to_string(max_msg_id_bytes) + " bytes");
    }
    if (sqlite3_get_autocommit(db) != 0) {
      throw Error(
          "outbox: enqueue needs an open transaction (outbox::Transaction or BEGIN...COMMIT): a "
          "message written in autocommit mode would not be tied to the business change");
    }
    const auto now = options.clock();
    EnqueueResult result;
    if (message.msg_id.empty()) {
      if (options.id_kind == IdKind::snowflake) ensure_worker_lease(now);
      result.msg_id = ids->next();
    } else {
      result.msg_id = message.msg_id;
    }
    std::string headers;
    if (!message.headers.empty()) headers = encode_headers(message.headers);
    {
      auto use = insert.use();
      use.bind_text(1, result.msg_id).bind_text(2, message.topic);
      if (message.key.empty()) {
        use.bind_null(3);
      } else {
        use.bind_text(3, message.key);
      }
      if (message.headers.empty()) {
        use.bind_null(4);
      } else {
        use.bind_blob(4, headers);
      }
      use.bind_blob(5, message.payload).bind(6, to_ms(now));
      use.run();
    }
    if (sqlite3_changes(db) == 0) {
      result.status = EnqueueStatus::duplicate;
      return result;
    }
    result.seq = sqlite3_last_insert_rowid(db);
    notify_pending = true;
    return result;
  }
};

Outbox::Outbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Outbox::Outbox(Outbox&&) noexcept = default;
Outbox& Outbox::operator=(Outbox&&) noexcept = default;
Outbox::~Outbox() noexcept = default;

Outbox Outbox::open(const std::filesystem::path& path, Options options) {
  detail::OpenOptions open_options;
  open_options.synchronous_full = options.durability == Durability::full;
  open_options.busy_timeout = options.busy_timeout;
  open_options.cache_kib = options.cache_kib;
  auto impl = std::make_unique<Impl>();
  impl->owned = detail::open_connection(path, open_options);
  impl->db = impl->owned.get();
  impl->options = std::move(options);
  impl->setup();
  return Outbox(std::move(impl));
}

Outbox Outbox::attach(sqlite3* db, Options options) {
  if (db == nullptr) throw Error("outbox: attach needs a connection, got a null sqlite3*");
  const char* filename = sqlite3_db_filename(db, "main");
  detail::verify_readable(db, filename != nullptr && *filename ? filename : ":memory:");
  auto impl = std::make_unique<Impl>();
  impl->db = db;
  impl->options = std::move(options);
  impl->setup();
  return Outbox(std::move(impl));
}

sqlite3* Outbox::db() const {
  return impl_->db;
}

EnqueueResult Outbox::enqueue(const Message& message) {
  return impl_->enqueue(message);
}

std::uint32_t Outbox::worker_id() const {
  return impl_->worker;
}

EnqueueResult enqueue(sqlite3* db, const Message& message) {
  Outbox::Impl* impl = nullptr;
  {
    std::lock_guard lock(registry_mutex);
    auto found = registry().find(db);
    if (found != registry().end()) impl = found->second;
  }
  if (impl == nullptr) {
    throw Error(
        "outbox: this connection has no outbox; call outbox::Outbox::attach(db) once first");
  }
  return impl->enqueue(message);
}

Transaction::Transaction(Outbox& box) : box_(&box), db_(box.db()) {
  if (sqlite3_get_autocommit(db_) == 0) {
    throw Error("outbox: a transaction is already open on this connection");
  }
  auto use = box_->impl_->begin.use();
  use.run();
  active_ = true;
}

Transaction::~Transaction() noexcept {
  if (active_) {
    try {
      rollback();
    } catch (...) {
      // Nothing more can be done in a destructor; SQLite rolls the
      // transaction back when the connection closes or the next BEGIN runs.
    }
  }
}

EnqueueResult Transaction::enqueue(const Message& message) {
  if (!active_) throw Error("outbox: enqueue on a transaction that already ended");
  return box_->impl_->enqueue(message);
}

void Transaction::commit() {
  if (!active_) throw Error("outbox: commit on a transaction that already ended");
  try {
    auto use = box_->impl_->commit.use();
    use.run();
  } catch (...) {
    rollback();
    throw;
  }
  active_ = false;
  box_->impl_->on_committed();
}

void Transaction::rollback() {
  if (!active_) return;
  active_ = false;
  if (sqlite3_get_autocommit(db_) != 0) {
    box_->impl_->on_rolled_back();
    return;
  }
  auto use = box_->impl_->rollback.use();
  use.run();
}

}  // namespace outbox
