// The toolkit's one layer over the SQLite C API, internal to this tree (the
// outbox library, the broker store, tests and benchmarks use it; it is not
// part of the installed API): owned connections, statements prepared once and
// reset after each use, transactions that roll back unless committed, and
// result checking that turns every failure into outbox::Error of kind
// database carrying SQLite's extended result code.
//
// Thread safety: as SQLite's own with SQLITE_OPEN_NOMUTEX: a connection and
// its statements are used by one thread at a time.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "outbox/error.hpp"

namespace sqlite {

struct ConnectionCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using ConnectionPtr = std::unique_ptr<sqlite3, ConnectionCloser>;

struct StatementFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};
using StatementPtr = std::unique_ptr<sqlite3_stmt, StatementFinalizer>;

using outbox::Error;
using outbox::ErrorKind;

// Throws Error (kind database) "<context>: <sqlite message>" with the
// connection's extended result code (`rc` itself when the connection's last
// error is another one, or db is null).
[[noreturn]] void throw_error(sqlite3* db, int rc, std::string_view context);
// Throws as above unless rc is one of the success codes.
inline void check(sqlite3* db, int rc, std::string_view context) {
  if (rc != SQLITE_OK && rc != SQLITE_ROW && rc != SQLITE_DONE) throw_error(db, rc, context);
}

// Runs SQL without results (may hold several statements).
void exec(sqlite3* db, const char* sql);

// A prepared statement, prepared once and reused. Every use goes through a
// Use guard, which resets the statement and clears its bindings when it goes
// out of scope so no read transaction stays open behind the caller's back.
class Statement {
 public:
  Statement() = default;
  Statement(sqlite3* db, std::string_view sql);
  // Compiled on its first use(), not now: for a connection that may need
  // only a few of the statements it could run (a relay store opened to find
  // nothing pending). A bad statement then throws from use().
  static Statement deferred(sqlite3* db, std::string_view sql);

  class Use {
   public:
    explicit Use(Statement& statement) : statement_(&statement) {}
    ~Use() noexcept;
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;

    Use& bind(int index, std::int64_t value);
    // Bound text and blobs are not copied (SQLITE_STATIC): their memory must
    // stay valid while this Use lives. An empty value binds '' or an empty
    // blob, never NULL.
    Use& bind_text(int index, std::string_view value);
    Use& bind_blob(int index, std::string_view value);
    Use& bind_null(int index);
    Use& bind_optional_text(int index, const std::optional<std::string>& value);

    // Steps once: true when a row is available, false when done.
    bool step();
    // Steps to completion, for statements without results.
    void run();

    int column_count() const;
    std::int64_t column_int64(int index) const;
    bool column_is_null(int index) const;
    std::string column_text(int index) const;
    std::string column_blob(int index) const;
    std::optional<std::string> column_optional_text(int index) const;
    // Without a copy: valid until the next step() or the end of this Use.
    std::string_view column_text_view(int index) const;
    std::string_view column_blob_view(int index) const;

   private:
    Statement* statement_;
  };

  // Throws Error when a deferred statement does not compile.
  Use use() {
    if (!stmt_) compile();
    return Use(*this);
  }
  sqlite3* db() const { return db_; }
  bool valid() const { return stmt_ != nullptr; }

 private:
  void compile();
  sqlite3* db_ = nullptr;
  StatementPtr stmt_;
  std::string sql_;
};

// Runs a single-value query, e.g. "PRAGMA data_version"; throws when it
// returns no row.
std::int64_t query_int64(sqlite3* db, const char* sql);

// Opens `path` with sqlite3_open_v2 and `flags` (SQLITE_OPEN_NOMUTEX and
// SQLITE_OPEN_EXRESCODE added) with extended result codes on, and nothing
// else: no busy handler, no pragma, no read. Throws Error "cannot open
// <what> '<path>': <reason>" with SQLite's code.
ConnectionPtr open_file(const std::string& path, int flags, std::string_view what = "database");

struct OpenOptions {
  bool create_if_missing = true;
  bool read_only = false;
  bool synchronous_full = false;
  bool wal = true;
  std::chrono::milliseconds busy_timeout{5000};
  // Wait for locks with sleeps of 10-500 us instead of SQLite's 1-100 ms
  // (PRAGMA busy_timeout then reads 0; the timeout still applies).
  bool short_busy_sleeps = false;
  std::int64_t cache_kib = 0;  // 0: SQLite's default
};

// Opens a database file with clear one-line errors for the usual mistakes
// (missing directory, missing file when creation is off, not a SQLite file).
ConnectionPtr open_connection(const std::filesystem::path& path, const OpenOptions& options);

// How long a statement of `db` waits for another connection's lock before it
// fails with SQLITE_BUSY, with short sleeps (OpenOptions::short_busy_sleeps)
// or SQLite's own handler. Throws Error if SQLite refuses it.
void set_busy_timeout(sqlite3* db, std::chrono::milliseconds timeout, bool short_sleeps);

// Sets the busy timeout and checks that the connection can read the file
// (which detects "file is not a database" before anything is written).
void verify_readable(sqlite3* db, const std::string& path_for_errors);

// Runs `begin`, a prepared BEGIN IMMEDIATE, and retries SQLITE_PROTOCOL until
// `patience` has passed since the first try. SQLite returns SQLITE_PROTOCOL
// when it could not start a read of a WAL database within its own retries
// (about 10 s with SQLite 3.40; https://sqlite.org/rescode.html#protocol): another process
// was stopped while it held one of the WAL index's locks (SIGSTOP, a debugger's
// breakpoint), a state that ends when it runs again, like
// SQLITE_BUSY's. Nothing is read or written before BEGIN succeeds.
// `on_retry`, when set, is called with each SQLITE_PROTOCOL that is retried,
// to log it.
// Throws Error for any other failure, and for SQLITE_PROTOCOL once `patience`
// is over (0: never retried).
void run_begin(Statement& begin, std::chrono::milliseconds patience,
               const std::function<void(const Error&)>& on_retry = {});

// BEGIN IMMEDIATE, COMMIT and ROLLBACK prepared once, for a connection that
// runs many transactions (the broker's group commits, the inbox): a prepared
// BEGIN/COMMIT is not parsed again each time.
struct TransactionStatements {
  TransactionStatements() = default;
  explicit TransactionStatements(sqlite3* db);
  Statement begin;
  Statement commit;
  Statement rollback;
  // How long BEGIN retries SQLITE_PROTOCOL (run_begin); the connection's busy
  // timeout is the natural value.
  std::chrono::milliseconds protocol_patience{0};
};

// A write transaction: begins on construction, rolls back in the destructor
// unless commit() succeeded (a failed rollback leaves nothing more to do:
// SQLite rolls back itself when the connection closes or the next
// transaction begins). Throws Error when BEGIN or COMMIT fails.
class Transaction {
 public:
  // Runs BEGIN IMMEDIATE (BEGIN when `immediate` is false) through sqlite3_exec.
  explicit Transaction(sqlite3* db, bool immediate = true);
  // Runs the prepared statements; they must outlive the transaction.
  Transaction(sqlite3* db, TransactionStatements& statements);
  ~Transaction() noexcept;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  sqlite3* db_;
  TransactionStatements* statements_ = nullptr;
  bool open_ = false;
};

}  // namespace sqlite
