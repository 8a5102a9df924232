#include "sqlite/sqlite.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <system_error>
#include <thread>

namespace sqlite {
namespace {

// SQLite's own busy handler (sqlite3_busy_timeout) sleeps 1, 2, 5, 10, ...
// 100 ms between attempts. Writers on an outbox hold the lock for tens of
// microseconds (one producer transaction) up to a few milliseconds (one relay
// batch), so those sleeps cost far more than the waits themselves: with a
// producer committing 10,000 times a second, the relay's bookkeeping write
// lost 1-25 ms per collision and stalled forwarding (commit-to-stored p99
// ~70 ms). This handler retries after 10 us, doubling up to 500 us, until the
// busy timeout (carried in the context pointer, in ms) has passed. Used for
// the relay's connection (OpenOptions::short_busy_sleeps); a producer's
// connection keeps SQLite's handler, whose PRAGMA busy_timeout the
// application can read and change.
int short_sleep_busy_handler(void* timeout_ms, int attempt) {
  using SteadyClock = std::chrono::steady_clock;
  // One busy wait at a time per thread: a connection is used by one thread at
  // a time and the handler runs inside that thread's blocked call.
  thread_local SteadyClock::time_point started;
  auto now = SteadyClock::now();
  if (attempt == 0) started = now;
  auto limit = std::chrono::milliseconds(reinterpret_cast<std::intptr_t>(timeout_ms));
  if (now - started >= limit) return 0;
  auto delay = std::chrono::microseconds(std::min(500, 10 << std::min(attempt, 6)));
  std::this_thread::sleep_for(delay);
  return 1;
}

}  // namespace

void set_busy_timeout(sqlite3* db, std::chrono::milliseconds timeout, bool short_sleeps) {
  check(db,
        short_sleeps && timeout.count() > 0
            ? sqlite3_busy_handler(
                  db, short_sleep_busy_handler,
                  reinterpret_cast<void*>(static_cast<std::intptr_t>(timeout.count())))
            : sqlite3_busy_timeout(db, static_cast<int>(timeout.count())),
        "setting busy timeout");
}

void throw_error(sqlite3* db, int rc, std::string_view context) {
  int extended = rc;
  std::string message;
  // The connection's last error may belong to an earlier call when `rc` did
  // not come from it (e.g. SQLITE_MISUSE from a call that records nothing).
  if (db != nullptr) {
    extended = sqlite3_extended_errcode(db);
    if ((extended & 0xff) != (rc & 0xff)) extended = rc;
    message = sqlite3_errmsg(db);
  } else {
    message = sqlite3_errstr(rc);
  }
  throw Error(ErrorKind::database, std::string(context) + ": " + message, extended);
}

void exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, &error);
  if (rc != SQLITE_OK) {
    std::string message = error != nullptr ? error : sqlite3_errstr(rc);
    sqlite3_free(error);
    int extended = sqlite3_extended_errcode(db);
    if ((extended & 0xff) != (rc & 0xff)) extended = rc;
    throw Error(ErrorKind::database, message, extended);
  }
}

Statement::Statement(sqlite3* db, std::string_view sql) : db_(db), sql_(sql) {
  compile();
}

Statement Statement::deferred(sqlite3* db, std::string_view sql) {
  Statement statement;
  statement.db_ = db;
  statement.sql_ = sql;
  return statement;
}

void Statement::compile() {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql_.data(), static_cast<int>(sql_.size()),
                              SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
  stmt_.reset(raw);
  if (rc != SQLITE_OK) throw_error(db_, rc, "preparing statement");
}

Statement::Use::~Use() noexcept {
  // The result of reset repeats the error of the last step, which step()
  // already reported, and clear_bindings cannot fail: nothing more to check.
  sqlite3_reset(statement_->stmt_.get());
  sqlite3_clear_bindings(statement_->stmt_.get());
}

Statement::Use& Statement::Use::bind(int index, std::int64_t value) {
  check(statement_->db_, sqlite3_bind_int64(statement_->stmt_.get(), index, value), "binding");
  return *this;
}

namespace {
// SQLite binds NULL for a null pointer: an empty value must still be '' or an
// empty blob, so it gets a non-null one.
const char* non_null(std::string_view value) {
  static const char empty = 0;
  return value.data() != nullptr ? value.data() : &empty;
}
}  // namespace

Statement::Use& Statement::Use::bind_text(int index, std::string_view value) {
  check(statement_->db_,
        sqlite3_bind_text64(statement_->stmt_.get(), index, non_null(value), value.size(),
                            SQLITE_STATIC, SQLITE_UTF8),
        "binding");
  return *this;
}

Statement::Use& Statement::Use::bind_blob(int index, std::string_view value) {
  const char* data = non_null(value);
  check(statement_->db_,
        sqlite3_bind_blob64(statement_->stmt_.get(), index, data, value.size(), SQLITE_STATIC),
        "binding");
  return *this;
}

Statement::Use& Statement::Use::bind_null(int index) {
  check(statement_->db_, sqlite3_bind_null(statement_->stmt_.get(), index), "binding");
  return *this;
}

Statement::Use& Statement::Use::bind_optional_text(int index,
                                                   const std::optional<std::string>& value) {
  return value ? bind_text(index, *value) : bind_null(index);
}

bool Statement::Use::step() {
  int rc = sqlite3_step(statement_->stmt_.get());
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  throw_error(statement_->db_, rc, "executing statement");
}

void Statement::Use::run() {
  while (step()) {
  }
}

int Statement::Use::column_count() const {
  return sqlite3_column_count(statement_->stmt_.get());
}

std::int64_t Statement::Use::column_int64(int index) const {
  return sqlite3_column_int64(statement_->stmt_.get(), index);
}

bool Statement::Use::column_is_null(int index) const {
  return sqlite3_column_type(statement_->stmt_.get(), index) == SQLITE_NULL;
}

std::string Statement::Use::column_text(int index) const {
  auto* text = sqlite3_column_text(statement_->stmt_.get(), index);
  int size = sqlite3_column_bytes(statement_->stmt_.get(), index);
  if (text == nullptr) return {};
  return std::string(reinterpret_cast<const char*>(text), static_cast<std::size_t>(size));
}

std::string Statement::Use::column_blob(int index) const {
  auto* data = sqlite3_column_blob(statement_->stmt_.get(), index);
  int size = sqlite3_column_bytes(statement_->stmt_.get(), index);
  if (data == nullptr) return {};
  return std::string(static_cast<const char*>(data), static_cast<std::size_t>(size));
}

std::optional<std::string> Statement::Use::column_optional_text(int index) const {
  if (column_is_null(index)) return std::nullopt;
  return column_text(index);
}

std::string_view Statement::Use::column_text_view(int index) const {
  const auto* data =
      reinterpret_cast<const char*>(sqlite3_column_text(statement_->stmt_.get(), index));
  auto size = static_cast<std::size_t>(sqlite3_column_bytes(statement_->stmt_.get(), index));
  return data != nullptr ? std::string_view(data, size) : std::string_view();
}

std::string_view Statement::Use::column_blob_view(int index) const {
  const auto* data = static_cast<const char*>(sqlite3_column_blob(statement_->stmt_.get(), index));
  auto size = static_cast<std::size_t>(sqlite3_column_bytes(statement_->stmt_.get(), index));
  return data != nullptr ? std::string_view(data, size) : std::string_view();
}

std::int64_t query_int64(sqlite3* db, const char* sql) {
  Statement statement(db, sql);
  auto use = statement.use();
  if (!use.step()) throw Error(ErrorKind::database, std::string("no result from: ") + sql);
  return use.column_int64(0);
}

ConnectionPtr open_file(const std::string& path, int flags, std::string_view what) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
                           nullptr);
  ConnectionPtr db(raw);
  if (rc != SQLITE_OK) {
    throw Error(ErrorKind::database,
                "cannot open " + std::string(what) + " '" + path +
                    "': " + (raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)),
                raw != nullptr ? sqlite3_extended_errcode(raw) : rc);
  }
  check(raw, sqlite3_extended_result_codes(raw, 1), "enabling extended result codes");
  return db;
}

ConnectionPtr open_connection(const std::filesystem::path& path, const OpenOptions& options) {
  const std::string name = path.string();
  if (name.empty()) throw Error(ErrorKind::database, "database path is empty");
  std::error_code ec;
  auto parent = path.parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec)) {
    throw Error(
        ErrorKind::database,
        "cannot open database '" + name + "': directory '" + parent.string() + "' does not exist",
        SQLITE_CANTOPEN);
  }
  bool exists = std::filesystem::exists(path, ec);
  if (exists && std::filesystem::is_directory(path, ec)) {
    throw Error("cannot open database '" + name + "': it is a directory", SQLITE_CANTOPEN);
  }
  if (!exists && !options.create_if_missing) {
    throw Error("cannot open database '" + name + "': file does not exist", SQLITE_CANTOPEN);
  }
  int flags = 0;
  if (options.read_only) {
    flags |= SQLITE_OPEN_READONLY;
  } else {
    flags |= SQLITE_OPEN_READWRITE;
    if (options.create_if_missing) flags |= SQLITE_OPEN_CREATE;
  }
  ConnectionPtr db = open_file(name, flags);
  // Before the first access: another process may hold a lock right now (a
  // producer creating the schema, switching to WAL), and reads must wait for it.
  set_busy_timeout(db.get(), options.busy_timeout, options.short_busy_sleeps);
  verify_readable(db.get(), name);
  if (options.wal && !options.read_only) {
    // Switching a database into WAL takes an exclusive lock, and SQLite does
    // not call the busy handler for it: a reader holding a shared lock at that
    // moment (another process opening the new file, a status tool) makes the
    // pragma fail at once with SQLITE_BUSY. Retry it within the busy timeout.
    const auto deadline = std::chrono::steady_clock::now() + options.busy_timeout;
    Statement journal(db.get(), "PRAGMA journal_mode=WAL");
    std::string mode;
    for (int attempt = 0;; ++attempt) {
      try {
        auto use = journal.use();
        if (use.step()) mode = use.column_text(0);
        break;
      } catch (const Error& error) {
        if ((error.extended_code() & 0xff) != SQLITE_BUSY ||
            std::chrono::steady_clock::now() >= deadline) {
          throw;
        }
      }
      std::this_thread::sleep_for(
          std::chrono::microseconds(std::min(2000, 50 << std::min(attempt, 6))));
    }
    if (mode != "wal")
      throw Error(ErrorKind::database, "cannot switch database '" + name + "' to WAL journal mode");
  }
  exec(db.get(),
       options.synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
  if (options.cache_kib > 0) {
    exec(db.get(), ("PRAGMA cache_size=-" + std::to_string(options.cache_kib)).c_str());
  }
  return db;
}

void verify_readable(sqlite3* db, const std::string& path_for_errors) {
  // Reading the schema is the first access to the file: a file that is not a
  // database fails here, before any pragma could write to it.
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &raw, nullptr);
  StatementPtr statement(raw);
  if (rc == SQLITE_OK) rc = sqlite3_step(raw);
  if (rc == SQLITE_ROW || rc == SQLITE_DONE) return;
  int extended = sqlite3_extended_errcode(db);
  if ((rc & 0xff) == SQLITE_NOTADB) {
    throw Error("'" + path_for_errors + "' is not a SQLite database", extended);
  }
  throw Error("cannot read database '" + path_for_errors + "': " + sqlite3_errmsg(db), extended);
}

TransactionStatements::TransactionStatements(sqlite3* db)
    : begin(db, "BEGIN IMMEDIATE"), commit(db, "COMMIT"), rollback(db, "ROLLBACK") {}

Transaction::Transaction(sqlite3* db, bool immediate) : db_(db) {
  exec(db_, immediate ? "BEGIN IMMEDIATE" : "BEGIN");
  open_ = true;
}

void run_begin(Statement& begin, std::chrono::milliseconds patience,
               const std::function<void(const Error&)>& on_retry) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  while (true) {
    try {
      begin.use().run();
      return;
    } catch (const Error& error) {
      if ((error.extended_code() & 0xff) != SQLITE_PROTOCOL ||
          std::chrono::steady_clock::now() >= deadline) {
        throw;
      }
      if (on_retry) on_retry(error);
    }
    // SQLite's own tries took seconds; a short pause before the next.
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

Transaction::Transaction(sqlite3* db, TransactionStatements& statements)
    : db_(db), statements_(&statements) {
  run_begin(statements_->begin, statements_->protocol_patience);
  open_ = true;
}

Transaction::~Transaction() noexcept {
  if (!open_ || sqlite3_get_autocommit(db_) != 0) return;
  // A failed COMMIT may already have rolled back; a failed rollback leaves
  // nothing more to do: SQLite rolls back itself when the connection closes
  // or the next transaction begins.
  if (statements_ == nullptr) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return;
  }
  try {
    statements_->rollback.use().run();
  } catch (const Error&) {
  }
}

void Transaction::commit() {
  if (statements_ != nullptr) {
    statements_->commit.use().run();
  } else {
    exec(db_, "COMMIT");
  }
  open_ = false;
}

}  // namespace sqlite
