// Private RAII layer over the SQLite C API: owned connections, prepared
// statements that reset themselves after each use, and result checking that
// turns every failure into outbox::Error with the extended result code.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "outbox/error.hpp"

namespace outbox::detail {

struct ConnectionCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using ConnectionPtr = std::unique_ptr<sqlite3, ConnectionCloser>;

struct StatementFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};
using StatementPtr = std::unique_ptr<sqlite3_stmt, StatementFinalizer>;

// Throws outbox::Error "<context>: <sqlite message>" unless rc is one of the
// success codes.
[[noreturn]] void throw_sqlite(sqlite3* db, int rc, std::string_view context);
inline void check(sqlite3* db, int rc, std::string_view context) {
  if (rc != SQLITE_OK && rc != SQLITE_ROW && rc != SQLITE_DONE) throw_sqlite(db, rc, context);
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
    Use& bind_text(int index, std::string_view value);
    Use& bind_blob(int index, std::string_view value);
    Use& bind_null(int index);
    Use& bind_optional_text(int index, const std::optional<std::string>& value);

    // Steps once: true when a row is available, false when done.
    bool step();
    // Steps to completion, for statements without results.
    void run();

    std::int64_t column_int64(int index) const;
    bool column_is_null(int index) const;
    std::string column_text(int index) const;
    std::string column_blob(int index) const;
    std::optional<std::string> column_optional_text(int index) const;

   private:
    Statement* statement_;
  };

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

// Runs a single-value query, e.g. "PRAGMA data_version".
std::int64_t query_int64(sqlite3* db, const char* sql);

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

// Sets the busy timeout and checks that the connection can read the file
// (which detects "file is not a database" before anything is written).
void verify_readable(sqlite3* db, const std::string& path_for_errors);

// Transaction with rollback in the destructor, for the library's own writes.
class ScopedTransaction {
 public:
  ScopedTransaction(sqlite3* db, bool immediate = true);
  ~ScopedTransaction() noexcept;
  ScopedTransaction(const ScopedTransaction&) = delete;
  ScopedTransaction& operator=(const ScopedTransaction&) = delete;
  void commit();

 private:
  sqlite3* db_;
  bool open_ = false;
};

}  // namespace outbox::detail
