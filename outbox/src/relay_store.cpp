#include "outbox/relay_store.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "common.hpp"
#include "idgen/uuid.hpp"
#include "notify.hpp"
#include "outbox/schema.hpp"
#include "schema.hpp"
#include "sqlite/sqlite.hpp"

namespace outbox {

using detail::from_ms;
using detail::to_ms;
using sqlite::Statement;

namespace {

constexpr const char* lease_name = "relay";

using KeyGroup = std::pair<std::string, std::optional<std::string>>;

// Runs PASSIVE checkpoints on its own thread and connection. A checkpoint
// ends with an fsync of the database file (milliseconds on real disks); run on
// the relay's thread, right after its bookkeeping commit, it stalled
// forwarding once per batch while producers kept the WAL above the threshold
// (commit-to-stored p99 of tens of milliseconds at 10,000 msg/s). A PASSIVE
// checkpoint from another connection blocks no reader or writer.
class BackgroundCheckpointer {
 public:
  BackgroundCheckpointer(sqlite::ConnectionPtr connection, std::string path,
                         std::shared_ptr<spdlog::logger> logger)
      : connection_(std::move(connection)),
        path_(std::move(path)),
        logger_(std::move(logger)),
        thread_([this] { run(); }) {}

  ~BackgroundCheckpointer() noexcept {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }

  BackgroundCheckpointer(const BackgroundCheckpointer&) = delete;
  BackgroundCheckpointer& operator=(const BackgroundCheckpointer&) = delete;

  // Asks for a checkpoint soon; never blocks on the database.
  void request() {
    {
      std::lock_guard lock(mutex_);
      requested_ = true;
    }
    wake_.notify_one();
  }

 private:
  // Back to back requests (every relay commit while the WAL stays long) are
  // merged: at most one checkpoint per interval.
  static constexpr std::chrono::milliseconds min_interval{20};

  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || requested_; });
      if (stop_) return;
      requested_ = false;
      lock.unlock();
      int rc = sqlite3_wal_checkpoint_v2(connection_.get(), "main", SQLITE_CHECKPOINT_PASSIVE,
                                         nullptr, nullptr);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
        // Not fatal for the relay: the producer's own threshold still bounds the WAL.
        logger_->warn("outbox: checkpoint of {} failed: {}", path_,
                      sqlite3_errmsg(connection_.get()));
      }
      lock.lock();
      wake_.wait_for(lock, min_interval, [&] { return stop_; });
      if (stop_) return;
    }
  }

  sqlite::ConnectionPtr connection_;
  std::string path_;
  std::shared_ptr<spdlog::logger> logger_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool requested_ = false;
  bool stop_ = false;
  std::thread thread_;  // last: starts once everything above is ready
};

}  // namespace

const char* to_string(Outcome::Kind kind) {
  return kind == Outcome::Kind::delivered ? "delivered" : "dead";
}

struct RelayStore::Impl {
  // Backlog figures (defined below, next to backlog()).
  void read_unsettled(std::int64_t settled, Backlog& backlog);
  std::int64_t pending_by_seq(std::int64_t settled);
  std::int64_t pending_by_count(std::int64_t settled);

  sqlite::ConnectionPtr connection;
  sqlite3* db = nullptr;
  std::string path;
  RelayOptions options;
  std::shared_ptr<spdlog::logger> logger;

  Statement read_lease;
  Statement insert_lease;
  Statement update_lease;
  Statement read_cursor;
  Statement update_cursor;
  Statement read_generation;
  Statement bump_generation;
  Statement select_pending;
  Statement select_delivery_after;
  Statement select_blockers;
  Statement mark;
  Statement mark_delivered_run;
  Statement first_unsettled;
  Statement max_seq;
  Statement data_version;

  std::unique_ptr<detail::WakeReceiver> wake;
  std::int64_t last_data_version = -1;
  std::int64_t generation_read = 0;  // by the last read_pending()

  // What the last read_pending() that reached the end of the outbox proved:
  // no row past `through` was pending, none before it either except those it
  // returned, and nothing it saw depended on the time (no retry, no blocked
  // key). That stays true until another connection commits (`data_version`
  // moves) or this one writes anything (`changes` moves) other than delivered
  // outcomes, which only settle rows. A read starting at or past `through`
  // then returns nothing without a read transaction: at 10,000 commits a
  // second, one message per commit, the relay read the outbox four times per
  // message (before the send, after it, after the ACK and from the cursor
  // once idle), and three of them were this empty read.
  struct ReadToEnd {
    bool valid = false;
    std::int64_t data_version = 0;
    std::int64_t changes = 0;
    std::int64_t through = 0;
    std::int64_t cursor = -1;  // settled_through_seq as this connection last wrote it, -1 unknown
  } read_to_end;

  std::int64_t own_changes() const { return sqlite3_total_changes64(db); }

  // Whether a read from max(after_seq, cursor) surely returns nothing.
  bool nothing_pending_after(std::int64_t after_seq) {
    if (!read_to_end.valid || read_to_end.changes != own_changes()) return false;
    if (std::max(after_seq, read_to_end.cursor) < read_to_end.through) return false;
    return current_data_version() == read_to_end.data_version;
  }
  int wal_pages_seen = 0;
  std::chrono::steady_clock::time_point last_checkpoint{};
  // Empty until the first checkpoint is due, when checkpoints are off, the
  // store is read-only, or the second connection could not be opened (then
  // checkpoints run on `db`). Opened on demand: a program that opens
  // thousands of small outboxes in turn pays for the connection and its
  // thread only where the WAL grows.
  std::unique_ptr<BackgroundCheckpointer> checkpointer;
  bool checkpointer_tried = false;
  sqlite::OpenOptions open_options;
  std::filesystem::path file;

  void start_checkpointer() {
    checkpointer_tried = true;
    try {
      auto second = sqlite::open_connection(file, open_options);
      if (!options.checkpoint_on_close) {
        sqlite3_db_config(second.get(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
      }
      checkpointer = std::make_unique<BackgroundCheckpointer>(std::move(second), path, logger);
    } catch (const Error& error) {
      logger->warn("outbox: checkpoints of {} run on the relay's connection: {}", path,
                   error.what());
    }
  }

  // Runs after each commit of this connection with the WAL's size in pages.
  static int on_wal_commit(void* self, sqlite3*, const char*, int pages) {
    static_cast<Impl*>(self)->wal_pages_seen = pages;
    return SQLITE_OK;
  }

  // Checkpoints outside of any transaction of ours, never blocking writers.
  void maybe_checkpoint(bool force_probe) {
    if (options.checkpoint_pages <= 0 || options.read_only) return;
    if (!force_probe && wal_pages_seen < options.checkpoint_pages) return;
    if (!checkpointer_tried) start_checkpointer();
    if (checkpointer) {
      checkpointer->request();
      wal_pages_seen = 0;
      last_checkpoint = std::chrono::steady_clock::now();
      return;
    }
    if (sqlite3_get_autocommit(db) == 0) return;
    int log_frames = 0, checkpointed = 0;
    int rc = sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &log_frames,
                                       &checkpointed);
    wal_pages_seen = 0;
    last_checkpoint = std::chrono::steady_clock::now();
    if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
      // Not fatal for the relay: the producer's own threshold still bounds the WAL.
      logger->warn("outbox: checkpoint of {} failed: {}", path, sqlite3_errmsg(db));
    }
  }

  // Each compiled on its first use: a store opened to find nothing pending
  // compiles two of them.
  void prepare() {
    read_lease =
        Statement::deferred(db,
                            "SELECT holder, epoch, acquired_at_ms, expires_at_ms FROM outbox_lease "
                            "WHERE name = ?1");
    insert_lease =
        Statement::deferred(db,
                            "INSERT INTO outbox_lease(name, holder, epoch, acquired_at_ms, "
                            "expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
    update_lease =
        Statement::deferred(db,
                            "UPDATE outbox_lease SET holder = ?2, epoch = ?3, acquired_at_ms = ?4, "
                            "expires_at_ms = ?5 WHERE name = ?1");
    read_cursor = Statement::deferred(
        db, "SELECT settled_through_seq, delivered_total FROM outbox_relay_cursor WHERE id = 1");
    update_cursor = Statement::deferred(db,
                                        "UPDATE outbox_relay_cursor SET settled_through_seq = ?1, "
                                        "delivered_total = delivered_total + ?2 WHERE id = 1");
    read_generation =
        Statement::deferred(db, "SELECT generation FROM outbox_relay_cursor WHERE id = 1");
    bump_generation = Statement::deferred(
        db, "UPDATE outbox_relay_cursor SET generation = generation + 1 WHERE id = 1");
    // The rows after a seq and their delivery rows, read side by side in seq
    // order (a merge) rather than joined: a join looks up outbox_delivery
    // once per message, where past the last message sent there is usually
    // no delivery row at all.
    select_pending = Statement::deferred(
        db,
        "SELECT seq, msg_id, topic, nullif(partition_key, ''), headers, payload, created_at_ms "
        "FROM outbox_messages WHERE seq > ?1 ORDER BY seq LIMIT ?2");
    select_delivery_after = Statement::deferred(
        db,
        "SELECT seq, state, attempts, next_attempt_ms FROM outbox_delivery WHERE seq > ?1 "
        "ORDER BY seq");
    select_blockers = Statement::deferred(
        db, detail::with_states(
                "SELECT d.seq, d.state, d.next_attempt_ms, m.topic, nullif(m.partition_key, '') "
                "FROM outbox_delivery d JOIN outbox_messages m ON m.seq = d.seq "
                "WHERE d.state <> {delivered}"));
    // One statement for both outcomes. Only a message that exists and is not
    // settled yet changes: a late or repeated outcome is ignored.
    mark = Statement::deferred(
        db, detail::with_states(
                "INSERT INTO outbox_delivery(seq, state, attempts, next_attempt_ms, last_error, "
                "broker_offset, updated_at_ms) "
                "SELECT ?1, ?2, 0, 0, ?3, ?4, ?5 "
                "WHERE EXISTS (SELECT 1 FROM outbox_messages WHERE seq = ?1) "
                "ON CONFLICT(seq) DO UPDATE SET state = excluded.state, "
                "last_error = coalesce(excluded.last_error, last_error), "
                "broker_offset = excluded.broker_offset, updated_at_ms = excluded.updated_at_ms "
                "WHERE outbox_delivery.state = {retry}"));
    // The same for a run of delivered messages with consecutive seqs stored
    // at consecutive offsets (a batch of one topic, the usual case): one
    // statement per run instead of one per message. Every seq of the range
    // is in the run, so the range names exactly its messages; a seq whose
    // row is gone is skipped, as the EXISTS above skips it.
    mark_delivered_run = Statement::deferred(
        db, detail::with_states(
                "INSERT INTO outbox_delivery(seq, state, attempts, next_attempt_ms, last_error, "
                "broker_offset, updated_at_ms) "
                "SELECT seq, {delivered}, 0, 0, NULL, seq + ?3, ?4 FROM outbox_messages "
                "WHERE seq BETWEEN ?1 AND ?2 "
                "ON CONFLICT(seq) DO UPDATE SET state = excluded.state, "
                "broker_offset = excluded.broker_offset, updated_at_ms = excluded.updated_at_ms "
                "WHERE outbox_delivery.state = {retry}"));
    first_unsettled = Statement::deferred(
        db, detail::with_states("SELECT m.seq FROM outbox_messages m "
                                "LEFT JOIN outbox_delivery d ON d.seq = m.seq "
                                "WHERE m.seq > ?1 AND (d.seq IS NULL OR d.state = {retry}) "
                                "ORDER BY m.seq LIMIT 1"));
    max_seq = Statement::deferred(db, "SELECT coalesce(max(seq), 0) FROM outbox_messages");
    data_version = Statement::deferred(db, "PRAGMA data_version");
  }

  TimePoint now() const { return options.clock(); }

  std::pair<std::int64_t, std::int64_t> cursor() {
    auto use = read_cursor.use();
    if (!use.step()) return {0, 0};  // not created yet: nothing settled
    return {use.column_int64(0), use.column_int64(1)};
  }

  // Tells a running relay that delivery state changed under it (see
  // delivery_generation()); part of the caller's transaction.
  void changed_delivery_state() {
    auto use = bump_generation.use();
    use.run();
  }

  std::int64_t last_seq() {
    auto use = max_seq.use();
    use.step();
    return use.column_int64(0);
  }

  std::optional<LeaseInfo> lease_row() {
    auto use = read_lease.use();
    use.bind_text(1, lease_name);
    if (!use.step()) return std::nullopt;
    LeaseInfo info;
    info.holder = use.column_text(0);
    info.epoch = use.column_int64(1);
    info.acquired_at = from_ms(use.column_int64(2));
    info.expires_at = from_ms(use.column_int64(3));
    info.expired = info.expires_at <= now();
    return info;
  }

  void fence(const Lease& lease) {
    auto row = lease_row();
    if (!row || row->holder != lease.holder || row->epoch != lease.epoch) {
      throw LeaseLost("outbox: relay lease of '" + lease.holder + "' (epoch " +
                      std::to_string(lease.epoch) + ") is lost" +
                      (row ? "; now held by '" + row->holder + "'" : std::string()));
    }
  }

  // Returns the cursor's new settled_through_seq.
  std::int64_t advance_cursor(std::int64_t delivered_added) {
    auto [settled, total] = cursor();
    (void)total;
    std::optional<std::int64_t> first;
    {
      auto use = first_unsettled.use();
      use.bind(1, settled);
      if (use.step()) first = use.column_int64(0);
    }
    const std::int64_t next = first ? *first - 1 : last_seq();
    auto use = update_cursor.use();
    use.bind(1, std::max(settled, next)).bind(2, delivered_added).run();
    return std::max(settled, next);
  }

  void lower_cursor(std::int64_t below_seq) {
    Statement lower(db,
                    "UPDATE outbox_relay_cursor SET settled_through_seq = "
                    "min(settled_through_seq, ?1) WHERE id = 1");
    auto use = lower.use();
    use.bind(1, below_seq - 1).run();
  }

  std::optional<std::int64_t> seq_of(const std::string& msg_id) {
    Statement find(db, "SELECT seq FROM outbox_messages WHERE msg_id = ?1");
    auto use = find.use();
    use.bind_text(1, msg_id);
    if (!use.step()) return std::nullopt;
    return use.column_int64(0);
  }

  std::int64_t current_data_version() {
    auto use = data_version.use();
    use.step();
    return use.column_int64(0);
  }
};

RelayStore::RelayStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RelayStore::RelayStore(RelayStore&&) noexcept = default;
RelayStore& RelayStore::operator=(RelayStore&&) noexcept = default;
RelayStore::~RelayStore() noexcept = default;

RelayStore RelayStore::open(const std::filesystem::path& path, RelayOptions options) {
  sqlite::OpenOptions open_options;
  open_options.create_if_missing = false;
  open_options.read_only = options.read_only;
  open_options.synchronous_full = options.synchronous_full;
  open_options.busy_timeout = options.busy_timeout;
  // The relay's bookkeeping write waits for producers' transactions (tens of
  // microseconds each); millisecond sleeps would stall forwarding.
  open_options.short_busy_sleeps = true;
  // The relay never changes the journal mode: the producer chose it.
  open_options.wal = false;
  auto impl = std::make_unique<Impl>();
  impl->connection = sqlite::open_connection(path, open_options);
  impl->db = impl->connection.get();
  impl->options = std::move(options);
  if (!impl->options.clock) impl->options.clock = system_time_source();
  impl->logger = outbox::logger_or_null(impl->options.logger, "outbox");
  const char* filename = sqlite3_db_filename(impl->db, "main");
  impl->path = filename != nullptr ? filename : path.string();
  if (impl->options.read_only) {
    int version = detail::read_schema_version(impl->db, path.string());
    if (version == 0) {
      throw Error(ErrorKind::database, "database '" + path.string() +
                                           "' has no outbox schema (table outbox_meta is missing)");
    }
    if (version != schema_version) {
      throw Error(ErrorKind::database,
                  "database '" + path.string() + "' has outbox schema version " +
                      std::to_string(version) + "; this library reads version " +
                      std::to_string(schema_version) + " (open it read-write once to migrate)");
    }
  } else {
    detail::ensure_schema(impl->db, impl->path, detail::SchemaMode::require_existing);
    detail::repair_relay_state(impl->db);
  }
  impl->prepare();
  if (!impl->options.read_only) sqlite3_wal_hook(impl->db, &Impl::on_wal_commit, impl.get());
  if (!impl->options.checkpoint_on_close) {
    sqlite3_db_config(impl->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
  }
  impl->open_options = open_options;
  impl->file = path;
  return RelayStore(std::move(impl));
}

sqlite3* RelayStore::db() const {
  return impl_->db;
}
const std::string& RelayStore::path() const {
  return impl_->path;
}

std::optional<Lease> RelayStore::claim_lease(const std::string& holder,
                                             std::chrono::milliseconds ttl) {
  if (holder.empty()) throw Error("outbox: relay lease holder name is empty");
  if (ttl.count() <= 0) throw Error("outbox: relay lease time must be positive");
  auto& impl = *impl_;
  sqlite::Transaction transaction(impl.db, true);
  const auto now = impl.now();
  auto row = impl.lease_row();
  Lease lease{holder, 1, now + ttl};
  if (!row) {
    auto use = impl.insert_lease.use();
    use.bind_text(1, lease_name)
        .bind_text(2, holder)
        .bind(3, lease.epoch)
        .bind(4, to_ms(now))
        .bind(5, to_ms(lease.expires_at))
        .run();
  } else if (row->holder == holder || row->expires_at <= now) {
    const bool same = row->holder == holder;
    lease.epoch = same ? row->epoch : row->epoch + 1;
    auto use = impl.update_lease.use();
    use.bind_text(1, lease_name)
        .bind_text(2, holder)
        .bind(3, lease.epoch)
        .bind(4, same ? to_ms(row->acquired_at) : to_ms(now))
        .bind(5, to_ms(lease.expires_at))
        .run();
    if (!same) {
      impl.logger->info("outbox: relay lease taken over by '{}' from '{}' (epoch {})", holder,
                        row->holder, lease.epoch);
    }
  } else {
    return std::nullopt;
  }
  transaction.commit();
  return lease;
}

bool RelayStore::renew_lease(Lease& lease, std::chrono::milliseconds ttl) {
  if (ttl.count() <= 0) throw Error("outbox: relay lease time must be positive");
  auto& impl = *impl_;
  sqlite::Transaction transaction(impl.db, true);
  auto row = impl.lease_row();
  if (!row || row->holder != lease.holder || row->epoch != lease.epoch) return false;
  const auto expires = impl.now() + ttl;
  {
    auto use = impl.update_lease.use();
    use.bind_text(1, lease_name)
        .bind_text(2, lease.holder)
        .bind(3, lease.epoch)
        .bind(4, to_ms(row->acquired_at))
        .bind(5, to_ms(expires))
        .run();
  }
  transaction.commit();
  lease.expires_at = expires;
  return true;
}

void RelayStore::release_lease(const Lease& lease) {
  auto& impl = *impl_;
  sqlite::Transaction transaction(impl.db, true);
  auto row = impl.lease_row();
  if (!row || row->holder != lease.holder || row->epoch != lease.epoch) return;
  {
    // Expire it now but keep the epoch, so the next holder's epoch is higher.
    auto use = impl.update_lease.use();
    use.bind_text(1, lease_name)
        .bind_text(2, lease.holder)
        .bind(3, lease.epoch)
        .bind(4, to_ms(row->acquired_at))
        .bind(5, 0)
        .run();
  }
  transaction.commit();
}

std::optional<LeaseInfo> RelayStore::lease_info() {
  return impl_->lease_row();
}

std::int64_t RelayStore::delivery_generation() const {
  return impl_->generation_read;
}

std::vector<PendingMessage> RelayStore::read_pending(std::size_t limit, std::int64_t after_seq,
                                                     std::size_t max_bytes) {
  auto& impl = *impl_;
  std::vector<PendingMessage> result;
  std::size_t bytes = 0;
  bool full = false;
  if (limit == 0) return result;
  if (impl.nothing_pending_after(after_seq)) {
    impl.last_data_version = impl.read_to_end.data_version;
    return result;
  }
  impl.read_to_end.valid = false;
  // One read transaction so the cursor, the blockers and the rows agree.
  sqlite::Transaction transaction(impl.db, false);
  impl.last_data_version = impl.current_data_version();
  const auto now_ms = to_ms(impl.now());
  const auto cursor = impl.cursor().first;
  auto start = std::max(after_seq, cursor);
  const auto first_start = start;
  bool saw_retry = false;  // a retry (due or not) makes the result depend on the time
  {
    auto use = impl.read_generation.use();
    if (use.step()) impl.generation_read = use.column_int64(0);
  }

  std::map<KeyGroup, std::int64_t> blocked_from;  // key group -> lowest blocking seq
  {
    auto use = impl.select_blockers.use();
    while (use.step()) {
      const auto state = use.column_int64(1);
      if (state == detail::state_retry) saw_retry = true;
      const bool blocks =
          (state == detail::state_retry && use.column_int64(2) > now_ms) ||
          (state == detail::state_dead && impl.options.on_dead == DeadPolicy::block);
      if (!blocks) continue;
      KeyGroup group{use.column_text(3), use.column_optional_text(4)};
      const auto seq = use.column_int64(0);
      auto [it, inserted] = blocked_from.emplace(std::move(group), seq);
      if (!inserted) it->second = std::min(it->second, seq);
    }
  }

  // Delivery rows after `start`, in seq order, stepped along with the messages.
  {
    auto delivery = impl.select_delivery_after.use();
    delivery.bind(1, start);
    // A plain flag and value, not an optional: GCC 12 at -O1 (the sanitizer
    // builds) takes the optional's value for maybe-uninitialized.
    bool delivery_left = delivery.step();
    std::int64_t delivery_seq = delivery_left ? delivery.column_int64(0) : 0;

    const std::int64_t chunk = static_cast<std::int64_t>(std::max<std::size_t>(limit, 64));
    for (;;) {
      std::int64_t rows = 0;
      auto use = impl.select_pending.use();
      use.bind(1, start).bind(2, chunk);
      while (use.step()) {
        ++rows;
        const auto seq = use.column_int64(0);
        start = seq;
        while (delivery_left && delivery_seq < seq) {
          delivery_left = delivery.step();
          if (delivery_left) delivery_seq = delivery.column_int64(0);
        }
        int attempts = 0;
        if (delivery_left && delivery_seq == seq) {
          const auto state = delivery.column_int64(1);
          if (state == detail::state_retry) saw_retry = true;
          if (state != detail::state_retry || delivery.column_int64(3) > now_ms) continue;
          attempts = static_cast<int>(delivery.column_int64(2));
        }
        std::string topic = use.column_text(2);
        auto key = use.column_optional_text(3);
        if (!blocked_from.empty()) {
          auto found = blocked_from.find(KeyGroup{topic, key});
          if (found != blocked_from.end() && found->second < seq) continue;
        }
        PendingMessage message;
        message.seq = seq;
        message.msg_id = use.column_text(1);
        message.topic = std::move(topic);
        message.partition_key = std::move(key);
        std::size_t headers_bytes = 0;
        if (!use.column_is_null(4)) {
          auto blob = use.column_blob(4);
          headers_bytes = blob.size();
          try {
            message.headers = decode_headers_blob(blob);
          } catch (const Error& error) {
            // A row another program wrote: the relay makes it dead, the rest flows.
            message.format_error = std::string(error.what()) + " (headers blob of " +
                                   std::to_string(blob.size()) + " bytes)";
          }
        }
        message.payload = use.column_blob(5);
        message.created_at = from_ms(use.column_int64(6));
        message.attempts = attempts;
        const std::size_t message_bytes = message.msg_id.size() + message.topic.size() +
                                          message.partition_key.value_or("").size() +
                                          headers_bytes + message.payload.size() + 16;
        if (!result.empty() && bytes + message_bytes > max_bytes) {
          full = true;
          break;
        }
        bytes += message_bytes;
        result.push_back(std::move(message));
        if (result.size() == limit) break;
      }
      if (full || result.size() == limit || rows < chunk) break;
    }
  }
  transaction.commit();
  if (!full && result.size() < limit && blocked_from.empty() && !saw_retry) {
    impl.read_to_end = {.valid = true,
                        .data_version = impl.last_data_version,
                        .changes = impl.own_changes(),
                        .through = result.empty() ? first_start : result.back().seq,
                        .cursor = cursor};
  }
  return result;
}

namespace {

// How many outcomes from the first one are delivered, with seqs and broker
// offsets both rising by one from each to the next.
std::size_t delivered_run(std::span<const Outcome> outcomes) {
  std::size_t length = 0;
  while (length < outcomes.size()) {
    const auto& outcome = outcomes[length];
    if (outcome.kind != Outcome::Kind::delivered) break;
    if (length > 0) {
      const auto& previous = outcomes[length - 1];
      if (outcome.seq != previous.seq + 1 || outcome.broker_offset != previous.broker_offset + 1) {
        break;
      }
    }
    ++length;
  }
  return length;
}

}  // namespace

void RelayStore::record_outcomes(std::span<const Outcome> outcomes, const Lease& lease) {
  if (outcomes.empty()) return;
  auto& impl = *impl_;
  // Delivered outcomes only settle rows: what the last read to the end
  // proved still holds after them (see ReadToEnd), with the cursor this
  // transaction writes.
  const bool keeps_read_to_end =
      impl.read_to_end.valid && impl.read_to_end.changes == impl.own_changes() &&
      std::all_of(outcomes.begin(), outcomes.end(),
                  [](const Outcome& outcome) { return outcome.kind == Outcome::Kind::delivered; });
  impl.read_to_end.valid = false;
  sqlite::Transaction transaction(impl.db, true);
  impl.fence(lease);
  const auto now_ms = to_ms(impl.now());
  std::int64_t delivered = 0;
  for (std::size_t i = 0; i < outcomes.size();) {
    const auto run = delivered_run(outcomes.subspan(i));
    if (run > 1) {
      const auto& first = outcomes[i];
      auto use = impl.mark_delivered_run.use();
      use.bind(1, first.seq)
          .bind(2, first.seq + static_cast<std::int64_t>(run) - 1)
          .bind(3, first.broker_offset - first.seq)
          .bind(4, now_ms)
          .run();
      delivered += sqlite3_changes(impl.db);
      i += run;
      continue;
    }
    const auto& outcome = outcomes[i++];
    auto use = impl.mark.use();
    use.bind(1, outcome.seq);
    if (outcome.kind == Outcome::Kind::delivered) {
      use.bind(2, detail::state_delivered).bind_null(3).bind(4, outcome.broker_offset);
    } else {
      use.bind(2, detail::state_dead)
          .bind_text(3, outcome.reason.empty() ? std::string_view("dead") : outcome.reason)
          .bind_null(4);
    }
    use.bind(5, now_ms).run();
    if (outcome.kind == Outcome::Kind::delivered) delivered += sqlite3_changes(impl.db);
  }
  const auto cursor = impl.advance_cursor(delivered);
  transaction.commit();
  if (keeps_read_to_end) {
    impl.read_to_end.valid = true;
    impl.read_to_end.changes = impl.own_changes();
    impl.read_to_end.cursor = cursor;
  }
  impl.maybe_checkpoint(false);
}

// Retrying and dead counts come from the unsettled-state index; the oldest
// pending message is the first unsettled one past the cursor. Both cost index
// lookups, never a pass over the backlog or the delivered rows kept for
// retention.
void RelayStore::Impl::read_unsettled(std::int64_t settled, Backlog& backlog) {
  Impl& impl = *this;
  {
    auto first = impl.first_unsettled.use();
    first.bind(1, settled);
    if (first.step()) {
      Statement created(impl.db, "SELECT created_at_ms FROM outbox_messages WHERE seq = ?1");
      auto created_use = created.use();
      created_use.bind(1, first.column_int64(0));
      if (created_use.step()) {
        auto age = impl.now() - from_ms(created_use.column_int64(0));
        backlog.oldest_pending_age = std::max(std::chrono::milliseconds(0), age);
      }
    }
  }
  Statement counts(impl.db,
                   detail::with_states(
                       "SELECT coalesce(sum(state = {retry}), 0), coalesce(sum(state = {dead}), 0) "
                       "FROM outbox_delivery WHERE state <> {delivered}"));
  auto use = counts.use();
  use.step();
  backlog.retrying = use.column_int64(0);
  backlog.dead = use.column_int64(1);
}

// The pending count without visiting the pending rows: every seq past the
// cursor up to the largest one, less those already settled (delivery rows
// past the cursor: the messages acknowledged out of order, a pipeline's
// worth, or the other keys' messages behind a blocked one). Seqs are
// consecutive (SQLite assigns max + 1 and the newest row is never deleted),
// so this is the exact count unless rows past the cursor are gone: retention
// deleting delivered messages behind a key blocked for longer than the
// retention time, or rows inserted with explicit seqs. Then it counts those
// too. Measured with bench_outbox_relay_side (2 cores, load average 10):
// 18 us with 100,000 messages pending, where counting them (stats()) took
// 163 ms.
std::int64_t RelayStore::Impl::pending_by_seq(std::int64_t settled) {
  Impl& impl = *this;
  Statement settled_past(
      impl.db, detail::with_states(
                   "SELECT count(*) FROM outbox_delivery WHERE seq > ?1 AND state <> {retry}"));
  auto use = settled_past.use();
  use.bind(1, settled);
  use.step();
  return std::max<std::int64_t>(0, impl.last_seq() - settled - use.column_int64(0));
}

// The exact pending count: one pass over the messages past the cursor.
std::int64_t RelayStore::Impl::pending_by_count(std::int64_t settled) {
  Impl& impl = *this;
  Statement pending(
      impl.db, detail::with_states("SELECT count(*) FROM outbox_messages m "
                                   "LEFT JOIN outbox_delivery d ON d.seq = m.seq "
                                   "WHERE m.seq > ?1 AND (d.seq IS NULL OR d.state = {retry})"));
  auto use = pending.use();
  use.bind(1, settled);
  use.step();
  return use.column_int64(0);
}

Backlog RelayStore::backlog() {
  auto& impl = *impl_;
  Backlog backlog;
  sqlite::Transaction transaction(impl.db, false);
  const auto settled = impl.cursor().first;
  backlog.pending = impl.pending_by_seq(settled);
  impl.read_unsettled(settled, backlog);
  transaction.commit();
  return backlog;
}

Stats RelayStore::stats() {
  auto& impl = *impl_;
  Stats stats;
  sqlite::Transaction transaction(impl.db, false);
  auto [settled, total] = impl.cursor();
  stats.settled_through_seq = settled;
  stats.delivered_total = total;
  stats.last_seq = impl.last_seq();
  Backlog backlog;
  backlog.pending = impl.pending_by_count(settled);
  impl.read_unsettled(settled, backlog);
  stats.pending = backlog.pending;
  stats.retrying = backlog.retrying;
  stats.dead = backlog.dead;
  stats.oldest_pending_age = backlog.oldest_pending_age;
  {
    Statement delivered(
        impl.db,
        detail::with_states("SELECT count(*) FROM outbox_delivery WHERE state = {delivered}"));
    auto use = delivered.use();
    use.step();
    stats.delivered = use.column_int64(0);
  }
  stats.lease = impl.lease_row();
  transaction.commit();
  return stats;
}

RelayStore::UnreadStep RelayStore::unread(std::int64_t after_seq, std::size_t max_rows,
                                          std::size_t limit) {
  auto& impl = *impl_;
  sqlite::Transaction transaction(impl.db, false);
  UnreadStep step;
  step.cursor = impl.cursor().first;
  std::vector<std::int64_t> found;
  // seq <= 0 is a range of the rowid: a seek, then only such rows.
  {
    Statement at_or_below_zero(
        impl.db,
        "SELECT m.seq FROM outbox_messages m WHERE m.seq <= min(?1, 0) "
        "AND NOT EXISTS (SELECT 1 FROM outbox_delivery d WHERE d.seq = m.seq) "
        "ORDER BY m.seq LIMIT ?2");
    auto use = at_or_below_zero.use();
    use.bind(1, step.cursor);
    use.bind(2, static_cast<std::int64_t>(std::min<std::size_t>(limit, INT64_MAX)));
    while (use.step()) found.push_back(use.column_int64(0));
  }
  std::size_t looked_at = 0;
  std::int64_t last = after_seq;
  bool full = found.size() >= limit;  // the next step goes on after the last found
  {
    Statement positive(impl.db,
                       "SELECT m.seq, EXISTS (SELECT 1 FROM outbox_delivery d WHERE d.seq = "
                       "m.seq) FROM outbox_messages m WHERE m.seq > ?1 AND m.seq <= ?2 "
                       "ORDER BY m.seq LIMIT ?3");
    auto use = positive.use();
    use.bind(1, std::max<std::int64_t>(after_seq, 0));
    use.bind(2, step.cursor);
    use.bind(3, static_cast<std::int64_t>(std::min<std::size_t>(max_rows, INT64_MAX)));
    while (!full && use.step()) {
      ++looked_at;
      last = use.column_int64(0);
      if (use.column_int64(1) != 0) continue;
      found.push_back(last);
      full = found.size() >= limit;
    }
  }
  step.next_after = full || looked_at >= max_rows ? last : 0;
  Statement row(impl.db, "SELECT msg_id, topic, partition_key FROM outbox_messages WHERE seq = ?1");
  for (auto seq : found) {
    auto use = row.use();
    use.bind(1, seq);
    if (!use.step()) continue;
    PendingMessage message;
    message.seq = seq;
    message.msg_id = use.column_text(0);
    message.topic = use.column_text(1);
    message.partition_key = use.column_optional_text(2);
    step.rows.push_back(std::move(message));
  }
  transaction.commit();
  return step;
}

std::vector<DeadMessage> RelayStore::list_dead(std::size_t limit) {
  auto& impl = *impl_;
  std::vector<DeadMessage> result;
  Statement select(
      impl.db, detail::with_states(
                   "SELECT d.seq, m.msg_id, m.topic, m.partition_key, d.last_error, d.attempts, "
                   "m.created_at_ms, d.updated_at_ms FROM outbox_delivery d "
                   "JOIN outbox_messages m ON m.seq = d.seq "
                   "WHERE d.state <> {delivered} AND d.state = {dead} ORDER BY d.seq LIMIT ?1"));
  auto use = select.use();
  use.bind(1, static_cast<std::int64_t>(std::min<std::size_t>(limit, INT64_MAX)));
  while (use.step()) {
    DeadMessage dead;
    dead.seq = use.column_int64(0);
    dead.msg_id = use.column_text(1);
    dead.topic = use.column_text(2);
    dead.partition_key = use.column_optional_text(3);
    dead.reason = use.column_text(4);
    dead.attempts = static_cast<int>(use.column_int64(5));
    dead.created_at = from_ms(use.column_int64(6));
    dead.died_at = from_ms(use.column_int64(7));
    result.push_back(std::move(dead));
  }
  return result;
}

bool RelayStore::replay_dead(const std::string& msg_id) {
  auto& impl = *impl_;
  sqlite::Transaction transaction(impl.db, true);
  auto seq = impl.seq_of(msg_id);
  if (!seq) return false;
  {
    Statement remove(impl.db, detail::with_states(
                                  "DELETE FROM outbox_delivery WHERE seq = ?1 AND state = {dead}"));
    auto use = remove.use();
    use.bind(1, *seq).run();
  }
  if (sqlite3_changes(impl.db) == 0) return false;
  impl.lower_cursor(*seq);
  impl.changed_delivery_state();
  transaction.commit();
  impl.logger->info("outbox: replaying dead message {} (seq {})", msg_id, *seq);
  return true;
}

std::size_t RelayStore::replay_all_dead() {
  auto& impl = *impl_;
  sqlite::Transaction transaction(impl.db, true);
  std::int64_t lowest = 0;
  {
    Statement lowest_dead(
        impl.db,
        detail::with_states(
            "SELECT min(seq) FROM outbox_delivery WHERE state <> {delivered} AND state = {dead}"));
    auto use = lowest_dead.use();
    use.step();
    if (use.column_is_null(0)) return 0;
    lowest = use.column_int64(0);
  }
  {
    Statement remove(
        impl.db, detail::with_states(
                     "DELETE FROM outbox_delivery WHERE state <> {delivered} AND state = {dead}"));
    auto use = remove.use();
    use.run();
  }
  auto replayed = static_cast<std::size_t>(sqlite3_changes(impl.db));
  impl.lower_cursor(lowest);
  impl.changed_delivery_state();
  transaction.commit();
  impl.logger->info("outbox: replaying {} dead messages", replayed);
  return replayed;
}

bool RelayStore::drop_dead(const std::string& msg_id) {
  auto& impl = *impl_;
  sqlite::Transaction transaction(impl.db, true);
  auto seq = impl.seq_of(msg_id);
  if (!seq) return false;
  {
    Statement drop(impl.db, detail::with_states(
                                "UPDATE outbox_delivery SET state = {dropped}, updated_at_ms = ?2 "
                                "WHERE seq = ?1 AND state = {dead}"));
    auto use = drop.use();
    use.bind(1, *seq).bind(2, to_ms(impl.now())).run();
  }
  if (sqlite3_changes(impl.db) == 0) return false;
  impl.changed_delivery_state();
  transaction.commit();
  impl.logger->info("outbox: dropped dead message {} (seq {})", msg_id, *seq);
  return true;
}

void RelayStore::write_status(const RelayStatus& status) {
  auto& impl = *impl_;
  Statement upsert(impl.db,
                   "INSERT INTO outbox_relay_status(id, holder, destination, session_up, "
                   "session_changed_at_ms, last_error, last_error_at_ms, last_progress_at_ms, "
                   "updated_at_ms) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
                   "ON CONFLICT(id) DO UPDATE SET holder = excluded.holder, "
                   "destination = excluded.destination, session_up = excluded.session_up, "
                   "session_changed_at_ms = excluded.session_changed_at_ms, "
                   "last_error = coalesce(excluded.last_error, last_error), "
                   "last_error_at_ms = coalesce(excluded.last_error_at_ms, last_error_at_ms), "
                   "last_progress_at_ms = coalesce(excluded.last_progress_at_ms, "
                   "last_progress_at_ms), updated_at_ms = excluded.updated_at_ms");
  auto use = upsert.use();
  use.bind_text(1, status.holder)
      .bind_text(2, status.destination)
      .bind(3, std::int64_t{status.session_up ? 1 : 0})
      .bind(4, to_ms(status.session_changed_at));
  if (status.last_error.empty()) {
    use.bind_null(5).bind_null(6);
  } else {
    use.bind_text(5, status.last_error)
        .bind(6, to_ms(status.last_error_at.value_or(status.updated_at)));
  }
  if (status.last_progress_at) {
    use.bind(7, to_ms(*status.last_progress_at));
  } else {
    use.bind_null(7);
  }
  use.bind(8, to_ms(impl.now())).run();
}

std::optional<RelayStatus> RelayStore::read_status() {
  auto& impl = *impl_;
  Statement select(impl.db,
                   "SELECT holder, destination, session_up, session_changed_at_ms, last_error, "
                   "last_error_at_ms, last_progress_at_ms, updated_at_ms "
                   "FROM outbox_relay_status WHERE id = 1");
  auto use = select.use();
  if (!use.step()) return std::nullopt;
  RelayStatus status;
  status.holder = use.column_text(0);
  status.destination = use.column_text(1);
  status.session_up = use.column_int64(2) != 0;
  status.session_changed_at = from_ms(use.column_int64(3));
  status.last_error = use.column_optional_text(4).value_or("");
  if (!use.column_is_null(5)) status.last_error_at = from_ms(use.column_int64(5));
  if (!use.column_is_null(6)) status.last_progress_at = from_ms(use.column_int64(6));
  status.updated_at = from_ms(use.column_int64(7));
  return status;
}

std::size_t RelayStore::delete_delivered(std::chrono::milliseconds retention,
                                         std::size_t batch_size, std::size_t max_batches) {
  if (batch_size == 0) throw Error("outbox: retention batch size must be positive");
  auto& impl = *impl_;
  Statement scan(impl.db,
                 "SELECT seq, state, updated_at_ms FROM outbox_delivery WHERE seq <= ?1 "
                 "ORDER BY seq");
  Statement delete_message(impl.db, "DELETE FROM outbox_messages WHERE seq = ?1");
  Statement delete_delivery(impl.db, "DELETE FROM outbox_delivery WHERE seq = ?1");
  std::size_t deleted = 0;
  for (std::size_t batch = 0; batch < max_batches; ++batch) {
    sqlite::Transaction transaction(impl.db, true);
    const auto cutoff = to_ms(impl.now() - retention);
    // Never the newest message: without AUTOINCREMENT its seq would be reused.
    // Delivered rows past the cursor (behind a blocked key) may go too: the
    // cursor only needs the rows that are still unsettled.
    const auto limit_seq = impl.last_seq() - 1;
    std::vector<std::int64_t> seqs;
    {
      auto use = scan.use();
      use.bind(1, limit_seq);
      while (seqs.size() < batch_size && use.step()) {
        const auto state = use.column_int64(1);
        if (state != detail::state_delivered && state != detail::state_dropped) continue;
        // Rows are settled roughly in seq order: the first one still inside
        // the retention time ends the batch, keeping each pass short.
        if (use.column_int64(2) > cutoff) break;
        seqs.push_back(use.column_int64(0));
      }
    }
    for (auto seq : seqs) {
      {
        auto use = delete_message.use();
        use.bind(1, seq).run();
      }
      auto use = delete_delivery.use();
      use.bind(1, seq).run();
    }
    transaction.commit();
    deleted += seqs.size();
    if (seqs.size() < batch_size) break;
  }
  return deleted;
}

void RelayStore::checkpoint() {
  auto& impl = *impl_;
  if (impl.options.read_only) throw Error("outbox: checkpoint on a read-only store");
  if (sqlite3_get_autocommit(impl.db) == 0) return;
  int rc = sqlite3_wal_checkpoint_v2(impl.db, "main", SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
  impl.wal_pages_seen = 0;
  impl.last_checkpoint = std::chrono::steady_clock::now();
  if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
    sqlite::throw_error(impl.db, rc, "checkpoint of '" + impl.path + "'");
  }
}

bool RelayStore::committed_since_last_look() {
  auto& impl = *impl_;
  auto version = impl.current_data_version();
  const bool changed = impl.last_data_version >= 0 && version != impl.last_data_version;
  impl.last_data_version = version;
  return changed;
}

bool RelayStore::wait_for_work(std::chrono::milliseconds timeout) {
  auto& impl = *impl_;
  // A relay that is busy forwarding commits often and checkpoints from its
  // WAL hook; one that is not (broker down) still probes once a second.
  if (std::chrono::steady_clock::now() - impl.last_checkpoint > std::chrono::seconds(1)) {
    impl.maybe_checkpoint(true);
  }
  if (!impl.wake || !impl.wake->listening()) {
    // Retried on every call: when the relay that listened before dies, its
    // successor picks the address up on its next wait.
    impl.wake = std::make_unique<detail::WakeReceiver>(impl.path);
    if (!impl.wake->listening()) {
      impl.logger->debug("outbox: another process listens for commits on {}; polling", impl.path);
    }
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto version = impl.current_data_version();
    if (impl.last_data_version < 0) impl.last_data_version = version;
    if (version != impl.last_data_version) {
      impl.last_data_version = version;
      return true;
    }
    auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (remaining.count() <= 0) {
      // Idle: a good moment to copy the WAL back (cheap when there is nothing to do).
      impl.maybe_checkpoint(true);
      return false;
    }
    auto step = std::min(remaining, impl.options.poll_interval);
    if (impl.wake->listening()) {
      if (impl.wake->wait(step)) {
        impl.last_data_version = impl.current_data_version();
        return true;
      }
    } else {
      std::this_thread::sleep_for(step);
    }
  }
}

void RelayStore::set_busy_timeout(std::chrono::milliseconds timeout) {
  sqlite::set_busy_timeout(impl_->db, timeout, true);
  impl_->options.busy_timeout = timeout;
}

std::string RelayStore::origin_id() {
  auto& impl = *impl_;
  auto read = [&] {
    Statement select(impl.db, "SELECT value FROM outbox_meta WHERE key = 'origin_id'");
    auto use = select.use();
    return use.step() ? use.column_text(0) : std::string();
  };
  if (auto known = read(); !known.empty() || impl.options.read_only) return known;
  sqlite::Transaction transaction(impl.db, true);
  {
    // Another relay may create it at the same moment: the first one wins.
    Statement insert(impl.db,
                     "INSERT INTO outbox_meta(key, value) VALUES ('origin_id', ?1) "
                     "ON CONFLICT(key) DO NOTHING");
    insert.use().bind_text(1, idgen::to_string(idgen::uuid_v4())).run();
  }
  transaction.commit();
  return read();
}

}  // namespace outbox
