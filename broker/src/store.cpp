// Storage layout (one SQLite database in WAL mode, 16 KiB pages):
//
//   chunks(id INTEGER PRIMARY KEY, last_offset, stored_at, data)
//       id = topic_id << 40 | first offset. A chunk holds consecutive messages
//       of one topic from one append() call, up to about 64 KiB (see
//       store_chunk.hpp), so the bodies cost one B-tree insert per few hundred
//       messages. Each topic's log is a contiguous, append-only key range of
//       one rowid table: appends touch only the right edge of each topic's
//       range and a fetch is one range scan. No secondary index.
//   dedup(msg_id TEXT PRIMARY KEY, message_id, payload_hash, seen_at, envelope_hash)
//       WITHOUT ROWID
//       the only other B-tree written per message. Time-ordered msg_ids
//       (snowflake, UUID v7) land near its right edge, which keeps the working
//       set small however many ids are retained. A message's identity is its
//       topic (in message_id), payload (payload_hash) and partition key plus
//       header block (envelope_hash). Entries written by schema version 1
//       have no envelope_hash (NULL): for them only topic and payload count.
//   topics, counters, group_offsets, store_meta: one small row each, rewritten
//       once per transaction, not once per message.
//   origin_epochs(origin TEXT PRIMARY KEY, epoch, updated_at) WITHOUT ROWID
//       the highest relay lease epoch seen per producer database; written
//       when a session opens with a higher epoch, never per message.
//
// A batch is one IMMEDIATE transaction: the dedup row and the message row of a
// new msg_id are written together, so a msg_id is never seen without its
// message. In-memory mirrors (topic offsets, counters) change only after COMMIT
// succeeded; a failed call restores them.
#include "broker/store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <spdlog/logger.h>

#include "outbox/null_logger.hpp"
#include "sqlite/sqlite.hpp"
#include "store_chunk.hpp"
#include "store_hash.hpp"
#include "wire/protocol.hpp"

namespace broker {

std::string_view to_string(AppendStatus status) noexcept {
  switch (status) {
    case AppendStatus::stored:
      return "stored";
    case AppendStatus::duplicate:
      return "duplicate";
    case AppendStatus::conflict:
      return "conflict";
    case AppendStatus::rejected:
      return "rejected";
    case AppendStatus::blocked:
      return "blocked";
  }
  return "unknown";
}

std::string_view to_string(RejectReason reason) noexcept {
  switch (reason) {
    case RejectReason::none:
      return "none";
    case RejectReason::too_large:
      return "too large";
    case RejectReason::empty_msg_id:
      return "empty msg_id";
    case RejectReason::invalid_msg_id:
      return "invalid msg_id";
    case RejectReason::empty_topic:
      return "empty topic";
    case RejectReason::invalid_topic:
      return "invalid topic";
  }
  return "unknown";
}

std::string_view to_string(SyncMode mode) noexcept {
  return mode == SyncMode::full ? "full" : "normal";
}

std::optional<SyncMode> parse_sync_mode(std::string_view text) noexcept {
  if (text == "full") return SyncMode::full;
  if (text == "normal") return SyncMode::normal;
  return std::nullopt;
}

namespace {

constexpr int offset_bits = 40;
constexpr std::uint64_t max_offset = (std::uint64_t{1} << offset_bits) - 1;
constexpr std::uint64_t max_topic_id = (std::uint64_t{1} << (63 - offset_bits)) - 1;
constexpr std::size_t max_msg_id_bytes = 255;
constexpr std::size_t max_topic_bytes = 249;
constexpr std::int64_t schema_version = 2;
// Version 1 stores lack dedup.envelope_hash; opening one adds the column.
constexpr std::int64_t oldest_upgradable_version = 1;
constexpr const char* store_format = "outbox-broker-store";
constexpr std::size_t max_conflicts_described_per_call = 64;

std::int64_t message_key(std::uint64_t topic_id, std::uint64_t offset) {
  return static_cast<std::int64_t>((topic_id << offset_bits) | offset);
}
std::uint64_t key_topic(std::int64_t key) {
  return static_cast<std::uint64_t>(key) >> offset_bits;
}
std::uint64_t key_offset(std::int64_t key) {
  return static_cast<std::uint64_t>(key) & max_offset;
}

bool valid_msg_id(std::string_view msg_id) {
  if (msg_id.size() > max_msg_id_bytes) return false;
  return std::all_of(msg_id.begin(), msg_id.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

bool valid_topic(std::string_view topic) {
  if (topic.size() > max_topic_bytes) return false;
  return std::all_of(topic.begin(), topic.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

RejectReason validate(const IncomingMessage& message, std::size_t max_message_bytes) {
  if (message.msg_id.empty()) return RejectReason::empty_msg_id;
  if (!valid_msg_id(message.msg_id)) return RejectReason::invalid_msg_id;
  if (message.topic.empty()) return RejectReason::empty_topic;
  if (!valid_topic(message.topic)) return RejectReason::invalid_topic;
  // Summed as sizes, each below SIZE_MAX / 3 in practice; the check cannot wrap.
  if (message.partition_key.size() + message.headers.size() + message.payload.size() >
      max_message_bytes) {
    return RejectReason::too_large;
  }
  return RejectReason::none;
}

// Identity beyond topic and payload: the partition key and the header block
// exactly as sent, hashed in sequence (the key's hash seeds the headers'), so
// bytes moving between the two never hash alike by construction.
std::uint64_t envelope_hash(const IncomingMessage& message) {
  constexpr std::uint64_t seed = 0x6f6278'6b6579ULL;  // "obxkey"
  return payload_hash(message.headers, payload_hash(message.partition_key, seed));
}

// Which parts of a message's identity differ from the stored copy.
struct Difference {
  bool topic = false;
  bool payload = false;
  bool envelope = false;  // key or headers
  bool any() const { return topic || payload || envelope; }
};

// A value for a one-line reason: printable ASCII as is, other bytes as \xNN,
// cut after 48 bytes with the full size named.
std::string shown(std::string_view value) {
  constexpr std::size_t shown_bytes = 48;
  static constexpr char hex[] = "0123456789abcdef";
  std::string text = "'";
  for (std::size_t i = 0; i < value.size() && i < shown_bytes; ++i) {
    auto byte = static_cast<unsigned char>(value[i]);
    if (byte >= 0x20 && byte < 0x7f && byte != '\\' && byte != '\'') {
      text.push_back(static_cast<char>(byte));
    } else {
      text += "\\x";
      text.push_back(hex[byte >> 4]);
      text.push_back(hex[byte & 0x0f]);
    }
  }
  text.push_back('\'');
  if (value.size() > shown_bytes) text += "... (" + std::to_string(value.size()) + " bytes)";
  return text;
}

std::string shown_key(std::string_view key) {
  return key.empty() ? std::string("no key") : "key " + shown(key);
}

// Header blocks as "name=value, ..." (no headers: "no headers").
std::string shown_headers(std::string_view encoded) {
  auto headers = wire::decode_header_block(encoded);
  if (!headers) return "headers of " + std::to_string(encoded.size()) + " bytes";
  if (headers->empty()) return "no headers";
  std::string text;
  for (const auto& header : *headers) {
    text += text.empty() ? "" : ", ";
    text += header.name + "=" + header.value;
  }
  return "headers " + shown(text);
}

std::string shown_payload(std::string_view payload) {
  return "payload " + shown(payload);
}

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view text) const noexcept {
    return std::hash<std::string_view>{}(text);
  }
};

struct Counters {
  std::uint64_t stored = 0;
  std::uint64_t duplicates = 0;
  std::uint64_t conflicts = 0;
  std::uint64_t rejected = 0;
  std::uint64_t dedup_entries = 0;
};

struct Topic {
  std::uint64_t id = 0;
  std::string name;
  std::uint64_t last_offset = 0;
  std::uint64_t message_count = 0;
  std::uint64_t touched_in_call = 0;  // call number of the last append that changed it
  std::string chunk;                  // encoded messages of the current call, not yet written
  std::uint64_t chunk_first = 0;      // offset of the first message in `chunk`
};

// Saved state of a topic before the current call changed it.
struct TopicUndo {
  std::uint64_t id;
  std::uint64_t last_offset;
  std::uint64_t message_count;
};

// Holds the store for one process: an open file description lock (OFD, so
// that SQLite's own POSIX locks on other descriptors of the same file neither
// release nor conflict with it) on a byte far past any page SQLite uses. A
// second Store on the same file, in this process or another, fails at open
// instead of writing the file behind the first one's back.
class OwnerLock {
 public:
  OwnerLock() = default;
  explicit OwnerLock(const std::filesystem::path& database) {
    fd_ = ::open(database.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);  // as SQLite creates it
    if (fd_ < 0) {
      throw outbox::Error(
          outbox::ErrorKind::database,
          "cannot open store database " + database.string() + ": " + std::strerror(errno),
          SQLITE_CANTOPEN);
    }
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_start = kOwnerByte;
    lock.l_len = 1;
    if (::fcntl(fd_, F_OFD_SETLK, &lock) != 0) {
      const int error = errno;
      ::close(fd_);
      fd_ = -1;
      throw outbox::Error(
          outbox::ErrorKind::database,
          database.string() +
              (error == EAGAIN || error == EACCES
                   ? std::string(" is in use by another broker (one process owns a store)")
                   : ": cannot lock the store: " + std::string(std::strerror(error))),
          SQLITE_BUSY);
    }
  }
  ~OwnerLock() noexcept {
    if (fd_ >= 0) ::close(fd_);
  }
  OwnerLock(OwnerLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  OwnerLock& operator=(OwnerLock&& other) noexcept {
    if (this != &other) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }

 private:
  static constexpr off_t kOwnerByte = off_t{1} << 62;
  int fd_ = -1;
};

// Checkpoints on its own thread and connection, and (with synchronous=NORMAL)
// writes the WAL's dirty pages to disk every few milliseconds.
//
// A checkpoint run inside a commit (SQLite's auto-checkpoint) ends with an
// fsync of the WAL and one of the database file; under a steady stream of
// small commits (10,000 msg/s) it came every 250-300 ms and held the group
// commit for 8-80 ms on a busy disk: the tail of commit-to-stored latency
// (outbox-bench e2e, p99 20-100 ms). A PASSIVE checkpoint from a second
// connection blocks neither the writer nor readers, so commits go on while
// it copies and syncs. The commit path only asks for one (the WAL hook);
// should the checkpointer fall behind, the writer checkpoints itself past a
// hard limit, so the WAL stays bounded.
//
// The flush: with synchronous=NORMAL the checkpoint's first fsync of the WAL
// had to write out everything since the previous one; flushed ahead, it
// finds little left. fdatasync through a second descriptor only adds
// durability; it never changes what SQLite writes or when a commit is
// acknowledged.
class BackgroundSync {
 public:
  BackgroundSync(std::filesystem::path database, SyncMode sync,
                 std::shared_ptr<spdlog::logger> logger)
      : database_(std::move(database)),
        wal_path_(database_.string() + "-wal"),
        sync_(sync),
        logger_(std::move(logger)),
        thread_([this] { run(); }) {}
  ~BackgroundSync() noexcept {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
    if (fd_ >= 0) ::close(fd_);
  }
  BackgroundSync(const BackgroundSync&) = delete;
  BackgroundSync& operator=(const BackgroundSync&) = delete;

  // Asks for a checkpoint soon; never blocks on the database.
  void request_checkpoint() {
    {
      std::lock_guard lock(mutex_);
      if (checkpoint_requested_) return;
      checkpoint_requested_ = true;
    }
    wake_.notify_one();
  }

 private:
  static constexpr std::chrono::milliseconds interval{20};

  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      auto woken = [&] { return stop_ || checkpoint_requested_; };
      // Nothing to flush with synchronous=FULL: every commit synced the WAL.
      if (sync_ == SyncMode::full) {
        wake_.wait(lock, woken);
      } else {
        wake_.wait_for(lock, interval, woken);
      }
      if (stop_) return;
      const bool checkpoint_due = std::exchange(checkpoint_requested_, false);
      lock.unlock();
      if (sync_ != SyncMode::full) flush();
      if (checkpoint_due) checkpoint();
      lock.lock();
    }
  }

  void flush() {
    struct stat info {};
    // The WAL appears with the first write and may be replaced when the
    // database is reopened: (re)open it when missing or unlinked.
    if (fd_ >= 0 && (::fstat(fd_, &info) != 0 || info.st_nlink == 0)) {
      ::close(fd_);
      fd_ = -1;
    }
    if (fd_ < 0) fd_ = ::open(wal_path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ >= 0) ::fdatasync(fd_);
  }

  void checkpoint() {
    try {
      if (!connection_) {
        connection_ = sqlite::open_file(
            database_.string(), SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, "store database");
        // The checkpointing connection's level decides its fsyncs.
        sqlite::exec(connection_.get(), sync_ == SyncMode::full ? "PRAGMA synchronous = FULL"
                                                                : "PRAGMA synchronous = NORMAL");
      }
      int rc = sqlite3_wal_checkpoint_v2(connection_.get(), "main", SQLITE_CHECKPOINT_PASSIVE,
                                         nullptr, nullptr);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
        sqlite::throw_error(connection_.get(), rc, "checkpoint");
      }
    } catch (const std::exception& error) {
      // Not fatal: the writer checkpoints itself past its hard limit.
      logger_->warn("background checkpoint of {} failed: {}", database_.string(), error.what());
      connection_.reset();
    }
  }

  std::filesystem::path database_;
  std::filesystem::path wal_path_;
  SyncMode sync_;
  std::shared_ptr<spdlog::logger> logger_;
  sqlite::ConnectionPtr connection_;  // the checkpointer's own, opened on first use
  int fd_ = -1;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool checkpoint_requested_ = false;
  std::thread thread_;  // last: starts once everything above is ready
};

}  // namespace

struct Store::Impl {
  std::filesystem::path path;
  StoreOptions options;
  std::shared_ptr<spdlog::logger> logger;
  OwnerLock owner;  // taken before the database is opened, released after it is closed
  sqlite::ConnectionPtr db;

  std::vector<Topic> topics;  // index = topic id - 1
  std::unordered_map<std::string, std::uint64_t, StringHash, std::equal_to<>> topic_ids;
  Counters counters;
  std::uint64_t call_number = 0;
  std::size_t conflicts_described_in_call = 0;
  std::string dedup_sweep_cursor;  // msg_id where the expiry sweep resumes

  sqlite::TransactionStatements transaction_statements;
  sqlite::Statement insert_dedup, select_dedup, insert_chunk;
  sqlite::Statement insert_topic, update_topic, update_counters;
  sqlite::Statement chunk_at_or_before, scan_chunks, first_chunk;
  sqlite::Statement upsert_group_offset, select_group_offset, scan_group_offsets;
  sqlite::Statement scan_dedup, delete_dedup, scan_chunk_times, delete_chunks;
  sqlite::Statement select_origin_epoch, raise_origin_epoch;
  // Epochs read from or written to origin_epochs, so that admitting a batch
  // does not query the table: one process owns the store (OwnerLock) and only
  // advance_origin_epochs() writes it, after whose commit this is updated.
  // A read per batch was 4.5 % of the broker's CPU at 10,000 one-message
  // batches a second. Bounded: emptied when it reaches kMaxKnownOrigins (a
  // flood of HELLOs with new origins), then filled again from the table.
  static constexpr std::size_t kMaxKnownOrigins = 65'536;
  std::unordered_map<std::string, std::uint64_t, StringHash, std::equal_to<>> known_origins;
  std::unique_ptr<BackgroundSync> background;  // destroyed first: closes its connection before `db`

  Impl(const std::filesystem::path& store_path, StoreOptions store_options)
      : path(store_path), options(std::move(store_options)) {
    logger = outbox::logger_or_null(options.logger, "broker.store");
    if (options.max_message_bytes == 0) {
      throw std::invalid_argument("max_message_bytes must be greater than zero");
    }
    if (options.dedup_window.count() < 0)
      throw std::invalid_argument("dedup_window must not be negative");
    if (options.retention.count() < 0)
      throw std::invalid_argument("retention must not be negative");
    if (options.max_message_bytes > std::size_t{1} << 30) {
      throw std::invalid_argument("max_message_bytes must be at most 1 GiB");
    }
    open_database();
  }

  std::int64_t now_ms() const {
    auto now = options.clock ? options.clock() : std::chrono::system_clock::now();
    return std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  }

  void open_database() {
    owner = OwnerLock(path);
    db = sqlite::open_file(path.string(), SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                           "store database");
    sqlite3* handle = db.get();
    // Page size only takes effect before the first table exists.
    sqlite::exec(handle, "PRAGMA page_size = 16384");
    {
      sqlite::Statement journal(handle, "PRAGMA journal_mode = WAL");
      auto use = journal.use();
      if (!use.step() || use.column_text_view(0) != "wal") {
        throw outbox::Error("cannot switch " + path.string() + " to WAL mode", SQLITE_ERROR);
      }
    }
    sqlite::exec(handle, options.sync == SyncMode::full ? "PRAGMA synchronous = FULL"
                                                        : "PRAGMA synchronous = NORMAL");
    auto cache_kib = std::to_string(std::max<std::size_t>(options.cache_bytes / 1024, 1024));
    sqlite::exec(handle, ("PRAGMA cache_size = -" + cache_kib).c_str());
    sqlite::exec(handle, "PRAGMA temp_store = MEMORY");
    // Checkpoints run on the background connection (see BackgroundSync); this
    // hook replaces SQLite's auto-checkpoint on the writer.
    background = std::make_unique<BackgroundSync>(path, options.sync, logger);
    sqlite3_wal_hook(handle, &Impl::on_wal_commit, this);
    if (options.max_database_bytes > 0) {
      auto page_size = static_cast<std::uint64_t>(sqlite::query_int64(handle, "PRAGMA page_size"));
      auto pages = std::max<std::uint64_t>(options.max_database_bytes / page_size, 1);
      sqlite::exec(handle, ("PRAGMA max_page_count = " + std::to_string(pages)).c_str());
    }

    if (options.integrity_check) check_integrity();

    transaction_statements = sqlite::TransactionStatements(handle);
    create_or_check_schema();
    prepare_statements();
    load_state();
    logger->info("opened store {} (sync {}, {} topics, {} dedup entries)", path.string(),
                 to_string(options.sync), topics.size(), counters.dedup_entries);
  }

  // Checkpoints copy the WAL into the database. Asked for every 64 MiB of WAL
  // rather than every 4 MiB keeps the WAL's restarts rare; past four times
  // that the background checkpointer has fallen behind (or fails) and the
  // writer copies the WAL back itself.
  static constexpr int kCheckpointPages = 4096;
  static constexpr int kWriterCheckpointPages = 4 * kCheckpointPages;
  static int on_wal_commit(void* self, sqlite3* connection, const char* database, int pages) {
    auto* impl = static_cast<Impl*>(self);
    if (pages >= kWriterCheckpointPages) {
      int rc = sqlite3_wal_checkpoint_v2(connection, database, SQLITE_CHECKPOINT_PASSIVE, nullptr,
                                         nullptr);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
        impl->logger->warn("checkpoint of {} failed: {}", impl->path.string(),
                           sqlite3_errmsg(connection));
      }
    } else if (pages >= kCheckpointPages) {
      impl->background->request_checkpoint();
    }
    return SQLITE_OK;
  }

  // PRAGMA quick_check reads every page once (O(size), no index cross-checks);
  // only its first finding is kept so a badly damaged file costs no more.
  void check_integrity() {
    sqlite::Statement check(db.get(), "PRAGMA quick_check(1)");
    std::string finding;
    {
      auto use = check.use();
      finding = use.step() ? use.column_text(0) : "no result";
    }
    // Its report spans lines ("*** in database main ***\nPage 7: ..."); keep one.
    for (auto& c : finding) c = c == '\n' ? ' ' : c;
    if (finding != "ok") {
      throw outbox::Error(path.string() + " is corrupt (quick_check: " + finding +
                              "); see the repair steps in docs/operations.md",
                          SQLITE_CORRUPT);
    }
  }

  void create_or_check_schema() {
    sqlite3* handle = db.get();
    sqlite::Transaction transaction(handle, transaction_statements);
    bool has_meta = sqlite::query_int64(
                        handle, "SELECT count(*) FROM sqlite_schema WHERE name = 'store_meta'") > 0;
    if (!has_meta) {
      if (sqlite::query_int64(handle, "SELECT count(*) FROM sqlite_schema") > 0) {
        throw outbox::Error(path.string() + " is a SQLite database but not a broker store",
                            SQLITE_ERROR);
      }
      sqlite::exec(handle, R"sql(
        CREATE TABLE store_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
        CREATE TABLE topics(
          topic_id INTEGER PRIMARY KEY,
          name TEXT NOT NULL UNIQUE,
          last_offset INTEGER NOT NULL,
          message_count INTEGER NOT NULL);
        CREATE TABLE chunks(
          id INTEGER PRIMARY KEY,
          last_offset INTEGER NOT NULL,
          stored_at INTEGER NOT NULL,
          data BLOB NOT NULL);
        CREATE TABLE dedup(
          msg_id TEXT PRIMARY KEY,
          message_id INTEGER NOT NULL,
          payload_hash INTEGER NOT NULL,
          seen_at INTEGER NOT NULL,
          envelope_hash INTEGER) WITHOUT ROWID;
        CREATE TABLE counters(
          id INTEGER PRIMARY KEY CHECK (id = 1),
          stored INTEGER NOT NULL,
          duplicates INTEGER NOT NULL,
          conflicts INTEGER NOT NULL,
          rejected INTEGER NOT NULL,
          dedup_entries INTEGER NOT NULL);
        INSERT INTO counters VALUES (1, 0, 0, 0, 0, 0);
        CREATE TABLE group_offsets(
          group_name TEXT NOT NULL,
          topic TEXT NOT NULL,
          committed_offset INTEGER NOT NULL,
          PRIMARY KEY (group_name, topic)) WITHOUT ROWID;
      )sql");
      create_origin_epochs(handle);
      sqlite::Statement insert(handle, "INSERT INTO store_meta(key, value) VALUES (?, ?)");
      insert.use().bind_text(1, "format").bind_text(2, store_format).run();
      insert.use().bind_text(1, "schema_version").bind(2, schema_version).run();
      logger->info("created store {}", path.string());
    } else {
      sqlite::Statement select(handle, "SELECT value FROM store_meta WHERE key = ?");
      bool ok = false;
      {
        auto use = select.use();
        use.bind_text(1, "format");
        ok = use.step() && use.column_text_view(0) == store_format;
      }
      if (!ok) throw outbox::Error(path.string() + " is not a broker store", SQLITE_ERROR);
      std::int64_t version = 0;
      {
        auto use = select.use();
        use.bind_text(1, "schema_version");
        if (use.step()) version = use.column_int64(0);
      }
      if (version >= oldest_upgradable_version && version < schema_version) {
        // Adding a nullable column rewrites only the schema, not the rows:
        // old entries keep comparing topic and payload (documented).
        sqlite::exec(handle, "ALTER TABLE dedup ADD COLUMN envelope_hash INTEGER");
        create_origin_epochs(handle);
        sqlite::Statement update(handle,
                                 "UPDATE store_meta SET value = ? WHERE key = 'schema_version'");
        update.use().bind(1, schema_version).run();
        logger->info("upgraded store {} from schema version {} to {}", path.string(), version,
                     schema_version);
        version = schema_version;
      }
      if (version != schema_version) {
        throw outbox::Error(path.string() + " has store schema version " + std::to_string(version) +
                                ", this build reads version " + std::to_string(schema_version),
                            SQLITE_ERROR);
      }
    }
    transaction.commit();
  }

  static void create_origin_epochs(sqlite3* handle) {
    sqlite::exec(handle, R"sql(
      CREATE TABLE origin_epochs(
        origin TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL,
        updated_at INTEGER NOT NULL) WITHOUT ROWID;
    )sql");
  }

  void prepare_statements() {
    sqlite3* handle = db.get();
    insert_dedup = sqlite::Statement(
        handle,
        "INSERT INTO dedup(msg_id, message_id, payload_hash, seen_at, envelope_hash) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(msg_id) DO NOTHING");
    select_dedup = sqlite::Statement(
        handle,
        "SELECT message_id, payload_hash, envelope_hash IS NULL, envelope_hash FROM dedup "
        "WHERE msg_id = ?");
    insert_chunk = sqlite::Statement(
        handle, "INSERT INTO chunks(id, last_offset, stored_at, data) VALUES (?, ?, ?, ?)");
    insert_topic = sqlite::Statement(
        handle,
        "INSERT INTO topics(topic_id, name, last_offset, message_count) VALUES (?, ?, 0, 0)");
    update_topic = sqlite::Statement(
        handle, "UPDATE topics SET last_offset = ?, message_count = ? WHERE topic_id = ?");
    update_counters = sqlite::Statement(
        handle,
        "UPDATE counters SET stored = ?, duplicates = ?, conflicts = ?, rejected = ?, "
        "dedup_entries = ? WHERE id = 1");
    chunk_at_or_before = sqlite::Statement(
        handle, "SELECT id FROM chunks WHERE id BETWEEN ? AND ? ORDER BY id DESC LIMIT 1");
    scan_chunks = sqlite::Statement(
        handle,
        "SELECT id, last_offset, stored_at, data FROM chunks WHERE id BETWEEN ? AND ? ORDER BY id");
    first_chunk = sqlite::Statement(
        handle, "SELECT id FROM chunks WHERE id BETWEEN ? AND ? ORDER BY id LIMIT 1");
    upsert_group_offset = sqlite::Statement(
        handle,
        "INSERT INTO group_offsets(group_name, topic, committed_offset) VALUES (?, ?, ?) "
        "ON CONFLICT(group_name, topic) DO UPDATE SET committed_offset = "
        "excluded.committed_offset");
    select_group_offset = sqlite::Statement(
        handle, "SELECT committed_offset FROM group_offsets WHERE group_name = ? AND topic = ?");
    scan_group_offsets = sqlite::Statement(
        handle,
        "SELECT group_name, topic, committed_offset FROM group_offsets ORDER BY group_name, topic "
        "LIMIT ?");
    scan_dedup = sqlite::Statement(
        handle, "SELECT msg_id, seen_at FROM dedup WHERE msg_id > ? ORDER BY msg_id LIMIT ?");
    delete_dedup = sqlite::Statement(handle, "DELETE FROM dedup WHERE msg_id = ?");
    scan_chunk_times = sqlite::Statement(
        handle,
        "SELECT id, last_offset, stored_at FROM chunks WHERE id BETWEEN ? AND ? ORDER BY id");
    delete_chunks = sqlite::Statement(handle, "DELETE FROM chunks WHERE id BETWEEN ? AND ?");
    select_origin_epoch =
        sqlite::Statement(handle, "SELECT epoch FROM origin_epochs WHERE origin = ?");
    raise_origin_epoch =
        sqlite::Statement(handle,
                          "INSERT INTO origin_epochs(origin, epoch, updated_at) VALUES (?, ?, ?) "
                          "ON CONFLICT(origin) DO UPDATE SET epoch = excluded.epoch, updated_at = "
                          "excluded.updated_at WHERE excluded.epoch > origin_epochs.epoch");
  }

  void load_state() {
    sqlite3* handle = db.get();
    sqlite::Statement select_topics(
        handle, "SELECT topic_id, name, last_offset, message_count FROM topics ORDER BY topic_id");
    auto topics_use = select_topics.use();
    while (topics_use.step()) {
      Topic topic;
      topic.id = static_cast<std::uint64_t>(topics_use.column_int64(0));
      topic.name = topics_use.column_text(1);
      topic.last_offset = static_cast<std::uint64_t>(topics_use.column_int64(2));
      topic.message_count = static_cast<std::uint64_t>(topics_use.column_int64(3));
      if (topic.id != topics.size() + 1) {
        throw outbox::Error(path.string() + ": topic ids are not contiguous (corrupt store)",
                            SQLITE_CORRUPT);
      }
      topic_ids.emplace(topic.name, topic.id);
      topics.push_back(std::move(topic));
    }
    sqlite::Statement select_counters(
        handle,
        "SELECT stored, duplicates, conflicts, rejected, dedup_entries FROM counters WHERE id = 1");
    auto counters_use = select_counters.use();
    if (!counters_use.step()) {
      throw outbox::Error(path.string() + ": counters row missing (corrupt store)", SQLITE_CORRUPT);
    }
    counters.stored = static_cast<std::uint64_t>(counters_use.column_int64(0));
    counters.duplicates = static_cast<std::uint64_t>(counters_use.column_int64(1));
    counters.conflicts = static_cast<std::uint64_t>(counters_use.column_int64(2));
    counters.rejected = static_cast<std::uint64_t>(counters_use.column_int64(3));
    counters.dedup_entries = static_cast<std::uint64_t>(counters_use.column_int64(4));
  }

  const Topic* find_topic(std::string_view name) const {
    auto found = topic_ids.find(name);
    return found == topic_ids.end() ? nullptr : &topics[found->second - 1];
  }

  void write_counters() {
    update_counters.use()
        .bind(1, static_cast<std::int64_t>(counters.stored))
        .bind(2, static_cast<std::int64_t>(counters.duplicates))
        .bind(3, static_cast<std::int64_t>(counters.conflicts))
        .bind(4, static_cast<std::int64_t>(counters.rejected))
        .bind(5, static_cast<std::int64_t>(counters.dedup_entries))
        .run();
  }

  void write_topic(const Topic& topic) {
    update_topic.use()
        .bind(1, static_cast<std::int64_t>(topic.last_offset))
        .bind(2, static_cast<std::int64_t>(topic.message_count))
        .bind(3, static_cast<std::int64_t>(topic.id))
        .run();
  }

  // The topic for a message of this call, created (inside the transaction) if new.
  Topic& topic_for_append(std::string_view name, std::vector<TopicUndo>& undo) {
    auto found = topic_ids.find(name);
    if (found == topic_ids.end()) {
      if (topics.size() >= max_topic_id) throw outbox::Error("too many topics", SQLITE_FULL);
      Topic topic;
      topic.id = topics.size() + 1;
      topic.name = std::string(name);
      insert_topic.use()
          .bind(1, static_cast<std::int64_t>(topic.id))
          .bind_text(2, topic.name)
          .run();
      found = topic_ids.emplace(topic.name, topic.id).first;
      topics.push_back(std::move(topic));
    }
    Topic& topic = topics[found->second - 1];
    if (topic.touched_in_call != call_number) {
      undo.push_back(TopicUndo{topic.id, topic.last_offset, topic.message_count});
      topic.touched_in_call = call_number;
    }
    return topic;
  }

  std::optional<std::int64_t> known_message_key(std::string_view msg_id) {
    auto use = select_dedup.use();
    use.bind_text(1, msg_id);
    if (!use.step()) return std::nullopt;
    return use.column_int64(0);
  }

  void flush_chunk(Topic& topic, std::int64_t now) {
    if (topic.chunk.empty()) return;
    insert_chunk.use()
        .bind(1, message_key(topic.id, topic.chunk_first))
        .bind(2, static_cast<std::int64_t>(topic.last_offset))
        .bind(3, now)
        .bind_blob(4, topic.chunk)
        .run();
    topic.chunk.clear();
  }

  // CONFLICT for `message`, whose msg_id is stored at `original_key`; the
  // detail names each differing part with both values when the stored body
  // is still there (retention may have removed it).
  AppendOutcome conflict_outcome(const IncomingMessage& message, std::int64_t original_key,
                                 const Difference& difference, std::int64_t now) {
    const std::uint64_t original_offset = key_offset(original_key);
    Topic& original_topic = topics[key_topic(original_key) - 1];
    // The original may sit in this call's chunk, not yet written.
    if (!original_topic.chunk.empty() && original_offset >= original_topic.chunk_first) {
      flush_chunk(original_topic, now);
    }
    std::string detail = "msg_id " + std::string(message.msg_id) + " is already stored in " +
                         original_topic.name + " at offset " + std::to_string(original_offset);
    // Reading the original costs a chunk (up to ~64 KiB) per conflict: a
    // batch full of conflicts gets the first ones described in full.
    FetchResult page;
    std::string unread = "its body is no longer retained";
    if (conflicts_described_in_call < max_conflicts_described_per_call) {
      ++conflicts_described_in_call;
      page = fetch(original_topic.name, original_offset, 1, 0);
    } else {
      unread = "its body was not read (more than 64 conflicts in one commit)";
    }
    const StoredMessage* original =
        page.messages.empty() || page.messages[0].offset != original_offset ? nullptr
                                                                            : &page.messages[0];
    std::vector<std::pair<std::string, std::string>> parts;  // stored, this message's
    if (difference.topic)
      parts.emplace_back("topic " + original_topic.name, "topic " + std::string(message.topic));
    if (original == nullptr) {
      if (difference.envelope) parts.emplace_back("another key or headers", "");
      if (difference.payload) parts.emplace_back("another payload", "");
      detail += " with ";
      for (std::size_t i = 0; i < parts.size(); ++i) {
        detail += (i == 0 ? "" : ", ") + parts[i].first;
      }
      if (difference.topic) detail += " (this message: " + parts[0].second + ")";
      detail += "; " + unread;
    } else {
      if (original->partition_key != message.partition_key) {
        parts.emplace_back(shown_key(original->partition_key), shown_key(message.partition_key));
      }
      if (original->headers != message.headers) {
        parts.emplace_back(shown_headers(original->headers), shown_headers(message.headers));
      }
      if (original->payload != message.payload) {
        parts.emplace_back(shown_payload(original->payload), shown_payload(message.payload));
      }
      std::string stored_text, this_text;
      for (std::size_t i = 0; i < parts.size(); ++i) {
        stored_text += (i == 0 ? "" : ", ") + parts[i].first;
        this_text += (i == 0 ? "" : ", ") + parts[i].second;
      }
      // A hash collision would land here with nothing to show.
      if (parts.empty()) stored_text = this_text = "an identity hash that differs";
      detail += " with " + stored_text + "; this message has " + this_text;
    }
    return AppendOutcome{AppendStatus::conflict, original_offset, RejectReason::none,
                         std::move(detail)};
  }

  // Appends one valid-or-not message inside the open transaction of append().
  AppendOutcome append_one(const IncomingMessage& message, std::int64_t now,
                           std::vector<TopicUndo>& undo) {
    RejectReason reason = validate(message, options.max_message_bytes);
    if (reason != RejectReason::none) {
      ++counters.rejected;
      return AppendOutcome{AppendStatus::rejected, 0, reason, {}};
    }
    // A known msg_id sent to a topic that does not exist yet is a conflict;
    // checking first keeps such a message from creating an empty topic.
    if (topic_ids.find(message.topic) == topic_ids.end()) {
      if (auto original_key = known_message_key(message.msg_id)) {
        ++counters.conflicts;
        return conflict_outcome(message, *original_key, Difference{.topic = true}, now);
      }
    }
    Topic& topic = topic_for_append(message.topic, undo);
    if (topic.last_offset >= max_offset)
      throw outbox::Error("topic " + topic.name + " is out of offsets", SQLITE_FULL);
    const std::uint64_t offset = topic.last_offset + 1;
    const std::int64_t key = message_key(topic.id, offset);
    const auto hash = static_cast<std::int64_t>(payload_hash(message.payload));
    const auto envelope = static_cast<std::int64_t>(envelope_hash(message));

    insert_dedup.use()
        .bind_text(1, message.msg_id)
        .bind(2, key)
        .bind(3, hash)
        .bind(4, now)
        .bind(5, envelope)
        .run();
    if (sqlite3_changes(db.get()) == 1) {
      // The body is written with its chunk before COMMIT, in this transaction.
      if (topic.chunk.empty()) {
        topic.chunk_first = offset;
        topic.chunk.reserve(chunk::target_bytes + 512);
      }
      chunk::append_message(topic.chunk, message);
      topic.last_offset = offset;
      if (topic.chunk.size() >= chunk::target_bytes) flush_chunk(topic, now);
      ++topic.message_count;
      ++counters.stored;
      ++counters.dedup_entries;
      return AppendOutcome{AppendStatus::stored, offset, RejectReason::none, {}};
    }
    // Already known, from an earlier call or earlier in this batch.
    Difference difference;
    std::int64_t original_key = 0;
    {
      auto use = select_dedup.use();
      use.bind_text(1, message.msg_id);
      if (!use.step()) {
        throw outbox::Error("dedup entry for " + std::string(message.msg_id) + " vanished",
                            SQLITE_CORRUPT);
      }
      original_key = use.column_int64(0);
      difference.topic = key_topic(original_key) != topic.id;
      difference.payload = use.column_int64(1) != hash;
      // NULL: an entry from schema version 1, which did not record key and headers.
      difference.envelope = use.column_int64(2) == 0 && use.column_int64(3) != envelope;
    }
    if (!difference.any()) {
      ++counters.duplicates;
      return AppendOutcome{
          AppendStatus::duplicate, key_offset(original_key), RejectReason::none, {}};
    }
    ++counters.conflicts;
    return conflict_outcome(message, original_key, difference, now);
  }

  void append(std::span<const IncomingMessage> batch, std::vector<AppendOutcome>& outcomes) {
    outcomes.assign(batch.size(), AppendOutcome{});
    if (batch.empty()) return;  // nothing to make durable, not even a counter
    ++call_number;
    conflicts_described_in_call = 0;
    const Counters saved_counters = counters;
    const std::size_t saved_topic_count = topics.size();
    std::vector<TopicUndo> undo;
    // (order group, topic, key) of messages refused in this call; small, and
    // usually empty, so the common path costs one emptiness check.
    std::unordered_set<std::string> refused_streams;
    auto stream_of = [](const IncomingMessage& message) {
      std::string stream(reinterpret_cast<const char*>(&message.order_group),
                         sizeof message.order_group);
      stream.append(message.topic).push_back('\0');
      stream.append(message.partition_key);
      return stream;
    };
    try {
      const std::int64_t now = now_ms();
      sqlite::Transaction transaction(db.get(), transaction_statements);
      for (std::size_t i = 0; i < batch.size(); ++i) {
        const IncomingMessage& message = batch[i];
        AppendOutcome& outcome = outcomes[i];
        if (!refused_streams.empty() && message.order_group != 0 &&
            refused_streams.count(stream_of(message)) > 0) {
          outcome = AppendOutcome{AppendStatus::blocked, 0, RejectReason::none, {}};
          continue;
        }
        outcome = append_one(message, now, undo);
        if (message.order_group != 0 && (outcome.status == AppendStatus::conflict ||
                                         outcome.status == AppendStatus::rejected)) {
          refused_streams.insert(stream_of(message));
        }
      }
      for (const TopicUndo& entry : undo) {
        Topic& topic = topics[entry.id - 1];
        flush_chunk(topic, now);
        // Buffers are not kept between calls: with many topics they would add up.
        std::string().swap(topic.chunk);
        write_topic(topic);
      }
      write_counters();
      transaction.commit();
    } catch (...) {
      counters = saved_counters;
      for (const TopicUndo& entry : undo) std::string().swap(topics[entry.id - 1].chunk);
      for (const TopicUndo& entry : undo) {
        if (entry.id > saved_topic_count) continue;
        Topic& topic = topics[entry.id - 1];
        topic.last_offset = entry.last_offset;
        topic.message_count = entry.message_count;
      }
      while (topics.size() > saved_topic_count) {
        topic_ids.erase(topics.back().name);
        topics.pop_back();
      }
      throw;
    }
  }

  FetchResult fetch(std::string_view topic_name, std::uint64_t from_offset, std::size_t max_count,
                    std::size_t max_bytes) {
    FetchResult result;
    from_offset = std::max<std::uint64_t>(from_offset, 1);
    result.next_offset = from_offset;
    const Topic* topic = find_topic(topic_name);
    if (topic == nullptr) return result;
    result.last_offset = topic->last_offset;
    if (max_count == 0 || from_offset > topic->last_offset) return result;

    // Start with the chunk holding from_offset: the last one starting at or before it.
    std::int64_t start_key = message_key(topic->id, from_offset);
    {
      auto use = chunk_at_or_before.use();
      use.bind(1, message_key(topic->id, 1)).bind(2, start_key);
      if (use.step()) start_key = use.column_int64(0);
    }
    auto scan = scan_chunks.use();
    scan.bind(1, start_key).bind(2, message_key(topic->id, max_offset));
    std::size_t bytes = 0;
    bool full = false;
    while (!full && scan.step()) {
      std::uint64_t offset = key_offset(scan.column_int64(0));
      const auto chunk_last = static_cast<std::uint64_t>(scan.column_int64(1));
      const std::int64_t stored_at = scan.column_int64(2);
      if (chunk_last < from_offset) continue;
      chunk::Reader reader(scan.column_blob_view(3));
      chunk::MessageView view;
      for (; !reader.done(); ++offset) {
        if (!reader.next(view) || offset > chunk_last) throw corrupt_chunk(*topic, offset);
        if (offset < from_offset) continue;
        std::size_t size = view.msg_id.size() + view.partition_key.size() + view.headers.size() +
                           view.payload.size();
        if (result.messages.size() >= max_count ||
            (!result.messages.empty() && bytes + size > max_bytes)) {
          full = true;
          break;
        }
        bytes += size;
        StoredMessage message;
        message.offset = offset;
        message.msg_id = std::string(view.msg_id);
        message.partition_key = std::string(view.partition_key);
        message.headers = std::string(view.headers);
        message.payload = std::string(view.payload);
        message.stored_at_ms = stored_at;
        result.messages.push_back(std::move(message));
      }
      if (!full && offset != chunk_last + 1) throw corrupt_chunk(*topic, offset);
    }
    if (!result.messages.empty()) {
      result.next_offset = result.messages.back().offset + 1;
    } else {
      // Everything from from_offset to the end was removed by retention.
      result.next_offset = topic->last_offset + 1;
    }
    return result;
  }

  outbox::Error corrupt_chunk(const Topic& topic, std::uint64_t offset) const {
    return outbox::Error(path.string() + ": malformed message chunk in topic " + topic.name +
                             " at offset " + std::to_string(offset),
                         SQLITE_CORRUPT);
  }

  std::uint64_t first_retained_offset(const Topic& topic) {
    if (topic.message_count == 0) return 0;
    auto use = first_chunk.use();
    use.bind(1, message_key(topic.id, 1)).bind(2, message_key(topic.id, max_offset));
    return use.step() ? key_offset(use.column_int64(0)) : 0;
  }

  void commit_offset(std::string_view group, std::string_view topic, std::uint64_t offset) {
    if (group.empty() || group.size() > max_msg_id_bytes) {
      throw std::invalid_argument("consumer group must be 1 to 255 bytes");
    }
    if (topic.empty() || !valid_topic(topic)) throw std::invalid_argument("invalid topic name");
    if (offset > max_offset) throw std::invalid_argument("offset out of range");
    // A commit past the end would make the group skip messages not yet stored.
    const Topic* found = find_topic(topic);
    if (found == nullptr) {
      throw std::invalid_argument("unknown topic '" + std::string(topic) + "'");
    }
    if (offset > found->last_offset) {
      throw std::invalid_argument("offset " + std::to_string(offset) + " is past the last offset " +
                                  std::to_string(found->last_offset) + " of topic '" +
                                  std::string(topic) + "'");
    }
    upsert_group_offset.use()
        .bind_text(1, group)
        .bind_text(2, topic)
        .bind(3, static_cast<std::int64_t>(offset))
        .run();
  }

  std::uint64_t committed_offset(std::string_view group, std::string_view topic) {
    auto use = select_group_offset.use();
    use.bind_text(1, group).bind_text(2, topic);
    return use.step() ? static_cast<std::uint64_t>(use.column_int64(0)) : 0;
  }

  std::vector<GroupOffset> group_offsets(std::size_t limit) {
    std::vector<GroupOffset> result;
    auto use = scan_group_offsets.use();
    use.bind(1, static_cast<std::int64_t>(std::min<std::size_t>(limit, INT64_MAX)));
    while (use.step()) {
      result.push_back(GroupOffset{use.column_text(0), use.column_text(1),
                                   static_cast<std::uint64_t>(use.column_int64(2))});
    }
    return result;
  }

  std::uint64_t origin_epoch(std::string_view origin) {
    if (auto known = known_origins.find(origin); known != known_origins.end()) {
      return known->second;
    }
    auto use = select_origin_epoch.use();
    use.bind_text(1, origin);
    const auto epoch = use.step() ? static_cast<std::uint64_t>(use.column_int64(0)) : 0;
    remember_origin(origin, epoch);
    return epoch;
  }

  void remember_origin(std::string_view origin, std::uint64_t epoch) {
    if (known_origins.size() >= kMaxKnownOrigins) known_origins.clear();
    known_origins.insert_or_assign(std::string(origin), epoch);
  }

  // Records the entries in order, in one durable transaction: a flood of
  // new origins costs one commit per group, not one each. Each entry is
  // answered with the highest epoch known once it was applied, so an older
  // epoch after a newer one of its origin is stale.
  bool advance_origin_epochs(std::span<const OriginEpoch> entries,
                             std::vector<std::uint64_t>& highest) {
    for (const OriginEpoch& entry : entries) Store::check_origin_epoch(entry.origin, entry.epoch);
    highest.assign(entries.size(), 0);
    std::map<std::string_view, std::uint64_t> known;
    bool raises = false;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      auto [at, inserted] = known.try_emplace(entries[i].origin, 0);
      if (inserted) at->second = origin_epoch(entries[i].origin);
      if (entries[i].epoch > at->second) {
        raises = true;
        at->second = entries[i].epoch;
      }
      highest[i] = at->second;
    }
    if (!raises) return false;
    sqlite::Transaction transaction(db.get(), transaction_statements);
    const std::int64_t now = now_ms();
    for (const auto& [origin, epoch] : known) {
      raise_origin_epoch.use()
          .bind_text(1, origin)
          .bind(2, static_cast<std::int64_t>(epoch))
          .bind(3, now)
          .run();
    }
    transaction.commit();
    for (const auto& [origin, epoch] : known) remember_origin(origin, epoch);
    return true;
  }

  StoreStats stats() {
    StoreStats result;
    result.stored = counters.stored;
    result.duplicates = counters.duplicates;
    result.conflicts = counters.conflicts;
    result.rejected = counters.rejected;
    result.dedup_entries = counters.dedup_entries;
    for (const Topic& topic : topics) {
      result.topics.push_back(TopicStats{topic.name, topic.message_count,
                                         first_retained_offset(topic), topic.last_offset});
    }
    std::sort(result.topics.begin(), result.topics.end(),
              [](const TopicStats& a, const TopicStats& b) { return a.topic < b.topic; });
    return result;
  }

  // Deletes expired bodies, oldest first per topic, whole chunks at a time,
  // stopping once `budget` messages are deleted (at least one chunk).
  std::size_t expire_bodies(std::int64_t cutoff, std::size_t budget) {
    std::size_t deleted = 0;
    for (Topic& topic : topics) {
      if (deleted >= budget) break;
      if (topic.message_count == 0) continue;
      std::int64_t last_expired = -1;
      std::uint64_t count = 0;
      {
        auto use = scan_chunk_times.use();
        use.bind(1, message_key(topic.id, 1)).bind(2, message_key(topic.id, max_offset));
        // Offsets follow store time, so the first young chunk ends the scan.
        while (deleted + count < budget && use.step() && use.column_int64(2) < cutoff) {
          last_expired = use.column_int64(0);
          count += static_cast<std::uint64_t>(use.column_int64(1)) - key_offset(last_expired) + 1;
        }
      }
      if (count == 0) continue;
      delete_chunks.use().bind(1, message_key(topic.id, 1)).bind(2, last_expired).run();
      topic.message_count -= std::min<std::uint64_t>(topic.message_count, count);
      write_topic(topic);
      deleted += static_cast<std::size_t>(count);
    }
    return deleted;
  }

  // Sweeps the dedup index in key order from where the last call stopped and
  // deletes entries older than `cutoff`; scans at most 4 entries per deletion
  // allowed so a call stays short even when little has expired.
  std::size_t expire_dedup(std::int64_t cutoff, std::size_t budget) {
    std::vector<std::string> expired;
    std::size_t scanned = 0;
    const std::size_t scan_limit = budget * 4;
    std::string last_seen;
    {
      auto use = scan_dedup.use();
      use.bind_text(1, dedup_sweep_cursor).bind(2, static_cast<std::int64_t>(scan_limit));
      while (expired.size() < budget && use.step()) {
        ++scanned;
        last_seen = use.column_text(0);
        if (use.column_int64(1) < cutoff) expired.push_back(last_seen);
      }
    }
    for (const std::string& msg_id : expired) {
      delete_dedup.use().bind_text(1, msg_id).run();
    }
    counters.dedup_entries -= std::min<std::uint64_t>(counters.dedup_entries, expired.size());
    // A short scan reached the end of the index: the next pass starts over.
    dedup_sweep_cursor =
        (scanned < scan_limit && expired.size() < budget) ? std::string() : last_seen;
    return expired.size();
  }

  MaintenanceResult run_maintenance(std::size_t max_rows) {
    MaintenanceResult result;
    if (max_rows == 0) return result;
    bool expire_bodies_now = options.retention.count() > 0;
    bool expire_dedup_now = options.dedup_window.count() > 0;
    if (!expire_bodies_now && !expire_dedup_now) return result;
    const std::int64_t now = now_ms();
    const Counters saved_counters = counters;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> saved_counts;
    for (const Topic& topic : topics) saved_counts.emplace_back(topic.id, topic.message_count);
    const std::string saved_cursor = dedup_sweep_cursor;
    try {
      sqlite::Transaction transaction(db.get(), transaction_statements);
      if (expire_bodies_now) {
        result.bodies_deleted = expire_bodies(now - options.retention.count(), max_rows);
      }
      if (expire_dedup_now) {
        result.dedup_entries_deleted = expire_dedup(now - options.dedup_window.count(), max_rows);
      }
      write_counters();
      transaction.commit();
    } catch (...) {
      counters = saved_counters;
      for (const auto& [id, count] : saved_counts) topics[id - 1].message_count = count;
      dedup_sweep_cursor = saved_cursor;
      throw;
    }
    result.more = result.bodies_deleted >= max_rows || result.dedup_entries_deleted >= max_rows;
    if (result.bodies_deleted > 0 || result.dedup_entries_deleted > 0) {
      logger->debug("maintenance deleted {} bodies and {} dedup entries", result.bodies_deleted,
                    result.dedup_entries_deleted);
    }
    return result;
  }
};

Store::Store(const std::filesystem::path& path, StoreOptions options)
    : impl_(std::make_unique<Impl>(path, std::move(options))) {}

Store::~Store() noexcept = default;
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&&) noexcept = default;

std::vector<AppendOutcome> Store::append(std::span<const IncomingMessage> batch) {
  std::vector<AppendOutcome> outcomes;
  impl_->append(batch, outcomes);
  return outcomes;
}

void Store::append(std::span<const IncomingMessage> batch, std::vector<AppendOutcome>& outcomes) {
  impl_->append(batch, outcomes);
}

FetchResult Store::fetch(std::string_view topic, std::uint64_t from_offset, std::size_t max_count,
                         std::size_t max_bytes) const {
  return impl_->fetch(topic, from_offset, max_count, max_bytes);
}

std::uint64_t Store::last_offset(std::string_view topic) const {
  const Topic* found = impl_->find_topic(topic);
  return found == nullptr ? 0 : found->last_offset;
}

void Store::commit_offset(std::string_view group, std::string_view topic, std::uint64_t offset) {
  impl_->commit_offset(group, topic, offset);
}

std::uint64_t Store::committed_offset(std::string_view group, std::string_view topic) const {
  return impl_->committed_offset(group, topic);
}

std::vector<GroupOffset> Store::group_offsets(std::size_t limit) const {
  return impl_->group_offsets(limit);
}

StoreStats Store::stats() const {
  return impl_->stats();
}

std::uint64_t Store::origin_epoch(std::string_view origin) const {
  return impl_->origin_epoch(origin);
}

void Store::check_origin_epoch(std::string_view origin, std::uint64_t epoch) {
  if (origin.empty() || !valid_msg_id(origin)) {
    throw std::invalid_argument("origin must be 1 to 255 bytes of printable ASCII without spaces");
  }
  if (epoch > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    throw std::invalid_argument("epoch out of range");
  }
}

std::uint64_t Store::advance_origin_epoch(std::string_view origin, std::uint64_t epoch) {
  std::vector<std::uint64_t> highest;
  const OriginEpoch entry{origin, epoch};
  impl_->advance_origin_epochs(std::span(&entry, 1), highest);
  return highest.front();
}

bool Store::advance_origin_epochs(std::span<const OriginEpoch> entries,
                                  std::vector<std::uint64_t>& highest) {
  return impl_->advance_origin_epochs(entries, highest);
}

MaintenanceResult Store::run_maintenance(std::size_t max_rows) {
  return impl_->run_maintenance(max_rows);
}

const std::filesystem::path& Store::path() const noexcept {
  return impl_->path;
}
const StoreOptions& Store::options() const noexcept {
  return impl_->options;
}

}  // namespace broker
