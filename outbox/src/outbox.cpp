#include "outbox/outbox.hpp"

#include <chrono>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "common.hpp"
#include "ids.hpp"
#include "notify.hpp"
#include "schema.hpp"
#include "sqlite/sqlite.hpp"
#include "wal_restart.hpp"
#include "worker_lease.hpp"

namespace outbox {

using detail::to_ms;
using sqlite::Statement;

namespace {

constexpr std::size_t max_msg_id_bytes = 255;  // the wire limit, also a CHECK constraint

// The message's headers with its trace context added as the `traceparent`
// and `tracestate` headers, after checking it (Message::traceparent).
Headers with_trace_context(const Message& message) {
  if (!message.traceparent.empty() && !valid_traceparent(message.traceparent)) {
    throw Error("outbox: traceparent '" + message.traceparent.substr(0, 80) +
                "' is not 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>");
  }
  if (message.traceparent.empty()) throw Error("outbox: tracestate given without a traceparent");
  if (message.tracestate.size() > kMaxTracestateBytes) {
    throw Error("outbox: tracestate of " + std::to_string(message.tracestate.size()) +
                " bytes is over the 512 allowed");
  }
  Headers headers = message.headers;
  for (const auto& header : headers) {
    if (header.name == kTraceparentHeader || header.name == kTracestateHeader) {
      throw Error("outbox: header '" + header.name +
                  "' given both in Message::headers and as Message::" + header.name);
    }
  }
  headers.push_back({std::string(kTraceparentHeader), message.traceparent});
  if (!message.tracestate.empty()) {
    headers.push_back({std::string(kTracestateHeader), message.tracestate});
  }
  return headers;
}

}  // namespace

struct Outbox::Impl {
  // Connections with an Outbox, for the free function enqueue(sqlite3*, ...).
  static inline std::mutex registry_mutex;
  static std::unordered_map<sqlite3*, Impl*>& registry() {
    static std::unordered_map<sqlite3*, Impl*> connections;
    return connections;
  }

  sqlite::ConnectionPtr owned;
  sqlite3* db = nullptr;
  std::string path;
  Options options;
  std::shared_ptr<spdlog::logger> logger;

  Statement insert;
  Statement begin;
  Statement commit;
  Statement rollback;

  std::unique_ptr<detail::WorkerLease> lease;  // null: fixed worker id or UUIDs
  std::uint32_t worker = 0;
  std::unique_ptr<detail::IdSource> ids;

  std::unique_ptr<detail::WakeSender> wake;
  bool notify_pending = false;

  // The WAL restart (restart_wal): a connection of its own, opened on first use.
  sqlite::ConnectionPtr restarter;
  int synchronous_level = 1;      // the connection's PRAGMA synchronous, for the restarter
  detail::WalRestart restart{1};  // its step is set in setup()
  bool restarter_unavailable = false;

  ~Impl() noexcept {
    restarter.reset();  // before the application's connection: never the last one
    {
      std::lock_guard lock(registry_mutex);
      auto found = registry().find(db);
      if (found != registry().end() && found->second == this) registry().erase(found);
    }
    if (db == nullptr) return;
    sqlite3_wal_hook(db, nullptr, nullptr);
    sqlite3_rollback_hook(db, nullptr, nullptr);
    if (lease) lease->release();
  }

  void setup() {
    logger = outbox::logger_or_null(options.logger, "outbox");
    {
      std::lock_guard lock(registry_mutex);
      if (registry().count(db) != 0) {
        db = nullptr;  // not ours: the destructor must leave it alone
        throw Error("outbox: this connection already has an outbox::Outbox");
      }
    }
    if (!options.clock) options.clock = system_time_source();
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

    std::uint32_t worker_for_ids = 0;
    std::int64_t issued_below_ms = 0;
    if (options.id_kind == IdKind::snowflake) {
      if (options.worker_id) {
        if (*options.worker_id > detail::IdSource::max_worker_id()) {
          throw Error("outbox: worker id " + std::to_string(*options.worker_id) +
                      " is out of range 0.." + std::to_string(detail::IdSource::max_worker_id()));
        }
        worker_for_ids = *options.worker_id;
      } else {
        if (options.worker_lease.count() <= 0) throw Error("outbox: worker_lease must be positive");
        lease = std::make_unique<detail::WorkerLease>(db, path, options.clock, options.worker_lease,
                                                      logger);
        sqlite::Transaction transaction(db, true);
        auto claim = lease->claim();
        transaction.commit();
        lease->committed();
        worker_for_ids = claim.worker_id;
        issued_below_ms = claim.issued_below_unix_ms;
      }
    }
    worker = worker_for_ids;
    ids = std::make_unique<detail::IdSource>(options.id_kind, worker_for_ids, issued_below_ms);

    synchronous_level = static_cast<int>(sqlite::query_int64(db, "PRAGMA synchronous"));
    restart = detail::WalRestart(options.wal_autocheckpoint_pages / 4);
    if (options.notify_relay && !path.empty()) wake = std::make_unique<detail::WakeSender>(path);
    sqlite3_wal_hook(db, &Impl::on_wal_commit, this);
    sqlite3_rollback_hook(db, &Impl::on_rollback, this);

    std::lock_guard lock(registry_mutex);
    registry().emplace(db, this);
  }

  // Inside the caller's transaction: a new msg_id, covered by the worker
  // id's lease and high-water mark in that same transaction.
  std::string next_msg_id() {
    std::int64_t timestamp_ms = 0;
    auto msg_id = ids->next(timestamp_ms);
    if (!lease) return msg_id;
    while (auto claim = lease->cover(timestamp_ms)) {
      // The old worker id was taken over: the id just made is dropped unused.
      ids = std::make_unique<detail::IdSource>(options.id_kind, claim->worker_id,
                                               claim->issued_below_unix_ms);
      worker = claim->worker_id;
      msg_id = ids->next(timestamp_ms);
    }
    return msg_id;
  }

  void on_committed() noexcept {
    if (lease) lease->committed();
    if (notify_pending) {
      notify_pending = false;
      if (wake) wake->notify();
    }
  }

  void on_rolled_back() noexcept {
    if (lease) lease->rolled_back();
    notify_pending = false;
  }

  static int on_wal_commit(void* self, sqlite3* connection, const char* database, int pages) {
    auto* impl = static_cast<Impl*>(self);
    impl->checkpoint_after_commit(connection, database, pages);
    impl->on_committed();
    return SQLITE_OK;
  }

  void checkpoint_after_commit(sqlite3* connection, const char* database, int pages) noexcept {
    const int limit = options.wal_autocheckpoint_pages;
    if (limit <= 0) return;
    if (pages >= 2 * limit) {
      if (restart_wal(pages)) return;
    } else {
      restart.reset();  // below twice the limit: the WAL started over since any try
    }
    if (pages < limit) return;
    // Same as SQLite's own auto-checkpoint, which this hook replaces; a busy
    // checkpoint is simply retried after a later commit.
    int rc = sqlite3_wal_checkpoint_v2(connection, database, SQLITE_CHECKPOINT_PASSIVE, nullptr,
                                       nullptr);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
      logger->warn("outbox: checkpoint of {} failed: {}", path, sqlite3_errmsg(connection));
    }
  }

  // Past twice the limit, where PASSIVE checkpoints do not catch up with
  // other producers committing back to back (wal_restart.hpp), a RESTART
  // checkpoint on a connection of its own: the application's connection keeps
  // its busy handler, this one waits in short sleeps for at most
  // WalRestart::kWait. Refused at once because another connection is
  // checkpointing (most likely another producer restarting the WAL, whose
  // wait for the write lock this producer's next BEGIN IMMEDIATE would win
  // again and again, so that the WAL still grew to thousands of pages), this
  // producer yields kYieldToRestart: its next commit would wait for that
  // restart anyway. Returns false when it cannot run (no file, or its
  // connection could not be opened: logged once), and the PASSIVE
  // checkpoints go on. Never throws.
  static constexpr std::chrono::milliseconds kYieldToRestart{1};
  bool restart_wal(int pages) noexcept {
    if (path.empty() || restarter_unavailable) return false;
    try {
      if (!restarter) {
        sqlite::OpenOptions open_options;
        open_options.create_if_missing = false;
        open_options.wal = false;  // the application's connection chose the journal mode
        open_options.busy_timeout = detail::WalRestart::kWait;
        open_options.short_busy_sleeps = true;
        restarter = sqlite::open_connection(path, open_options);
        sqlite3_db_config(restarter.get(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
        // The checkpointing connection's level decides the checkpoint's fsyncs.
        sqlite::exec(restarter.get(),
                     ("PRAGMA synchronous=" + std::to_string(synchronous_level)).c_str());
      }
    } catch (const std::exception& error) {
      restarter.reset();
      restarter_unavailable = true;
      logger->warn("outbox: cannot open a connection to restart the WAL of {}: {}", path,
                   error.what());
      return false;
    }
    const auto result = restart.run(restarter.get(), pages);
    if (result == detail::WalRestart::Result::failed) {
      logger->warn("outbox: restarting the WAL of {} failed: {}", path,
                   sqlite3_errmsg(restarter.get()));
    }
    if (result == detail::WalRestart::Result::refused_at_once) {
      std::this_thread::sleep_for(kYieldToRestart);
    }
    return true;
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
      result.msg_id = next_msg_id();
    } else {
      result.msg_id = message.msg_id;
    }
    std::string headers;
    if (!message.traceparent.empty() || !message.tracestate.empty()) {
      headers = encode_headers_blob(with_trace_context(message));
    } else if (!message.headers.empty()) {
      headers = encode_headers_blob(message.headers);
    }
    {
      auto use = insert.use();
      use.bind_text(1, result.msg_id).bind_text(2, message.topic);
      if (message.key.empty()) {
        use.bind_null(3);
      } else {
        use.bind_text(3, message.key);
      }
      if (headers.empty()) {
        use.bind_null(4);
      } else {
        use.bind_blob(4, headers);
      }
      use.bind_blob(5, message.payload).bind(6, to_ms(now));
      try {
        use.run();
      } catch (const Error& error) {
        // Disk full, I/O errors, out of memory: SQLite may have rolled the
        // whole transaction back. Say so; the business rows are gone too.
        std::string text = "outbox: enqueue into '" + path + "': " + error.what();
        if (sqlite3_get_autocommit(db) != 0) {
          on_rolled_back();
          text += " (SQLite rolled the transaction back)";
        }
        throw Error(error.kind(), text, error.extended_code());
      }
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
  sqlite::OpenOptions open_options;
  open_options.synchronous_full = options.durability == Durability::full;
  open_options.busy_timeout = options.busy_timeout;
  open_options.cache_kib = options.cache_kib;
  auto impl = std::make_unique<Impl>();
  impl->owned = sqlite::open_connection(path, open_options);
  impl->db = impl->owned.get();
  if (!options.checkpoint_on_close &&
      sqlite3_db_config(impl->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr) != SQLITE_OK) {
    throw Error(ErrorKind::database, "outbox: cannot turn off the checkpoint on close of '" +
                                         path.string() + "': " + sqlite3_errmsg(impl->db));
  }
  impl->options = std::move(options);
  impl->setup();
  return Outbox(std::move(impl));
}

Outbox Outbox::attach(sqlite3* db, Options options) {
  if (db == nullptr) throw Error("outbox: attach needs a connection, got a null sqlite3*");
  const char* filename = sqlite3_db_filename(db, "main");
  sqlite::verify_readable(db, filename != nullptr && *filename ? filename : ":memory:");
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
    std::lock_guard lock(Outbox::Impl::registry_mutex);
    auto found = Outbox::Impl::registry().find(db);
    if (found != Outbox::Impl::registry().end()) impl = found->second;
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
  try {
    auto& impl = *box_->impl_;
    sqlite::run_begin(impl.begin, impl.options.busy_timeout, [&impl](const Error& error) {
      impl.logger->warn(
          "outbox: begin on '{}': {} (SQLite code {}): a process that has the database open "
          "holds the WAL index's locks, most likely stopped; retrying within the busy timeout",
          impl.path, error.what(), error.extended_code());
    });
  } catch (const Error& error) {
    // Typically SQLITE_BUSY: another connection held the write lock past the
    // busy timeout. Nothing was written.
    throw Error(
        error.kind(),
        "outbox: begin on '" + box_->impl_->path + "': " + error.what() + " (nothing was written)",
        error.extended_code());
  }
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
  } catch (const Error& error) {
    try {
      rollback();
    } catch (...) {
      // The commit's error is the one to report. A failed ROLLBACK leaves
      // nothing committed; SQLite rolls back when the connection closes.
    }
    throw Error(error.kind(),
                "outbox: commit on '" + box_->impl_->path + "': " + error.what() +
                    " (rolled back: neither the rows nor the messages were written)",
                error.extended_code());
  } catch (...) {
    try {
      rollback();
    } catch (...) {
      // The commit's error is the one to report. A failed ROLLBACK leaves
      // nothing committed; SQLite rolls back when the connection closes.
    }
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
