// Thin RAII layer over the SQLite C API for the store: a connection, prepared
// statements, and a transaction guard. Every call checks its result and turns a
// failure into broker::StoreError carrying SQLite's extended result code.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <sqlite3.h>

#include "broker/store.hpp"

namespace broker::sqlite {

[[noreturn]] void throw_error(sqlite3* db, int code, std::string_view what);

inline void check(sqlite3* db, int code, std::string_view what) {
  if (code != SQLITE_OK) throw_error(db, code, what);
}

struct DatabaseCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using DatabaseHandle = std::unique_ptr<sqlite3, DatabaseCloser>;

DatabaseHandle open_database(const std::string& path);
void execute(sqlite3* db, const char* sql);
// Runs a statement returning one integer (e.g. a PRAGMA); 0 if no row.
std::int64_t query_integer(sqlite3* db, const char* sql);

// A statement prepared once and reused: bind, step, reset.
class Statement {
 public:
  Statement() = default;
  Statement(sqlite3* db, std::string_view sql);
  Statement(Statement&&) noexcept = default;
  Statement& operator=(Statement&&) noexcept = default;

  // Bound text and blobs are not copied: the memory must stay valid until
  // reset() (or the next bind of the same parameter).
  void bind(int index, std::int64_t value);
  void bind_text(int index, std::string_view value);
  void bind_blob(int index, std::string_view value);
  // Returns true when a row is available, false when done.
  bool step();
  // Steps a statement that returns no rows.
  void run();
  // Resets and clears bindings; never throws (errors surface from step()).
  void reset() noexcept;

  std::int64_t column_integer(int column) const;
  std::string_view column_text(int column) const;
  std::string_view column_blob(int column) const;

 private:
  struct Finalizer {
    void operator()(sqlite3_stmt* statement) const noexcept { sqlite3_finalize(statement); }
  };
  sqlite3* db_ = nullptr;
  std::unique_ptr<sqlite3_stmt, Finalizer> statement_;
};

// Resets a statement when leaving a scope, so a thrown step() never leaves it
// holding a read transaction or stale bindings.
class ResetGuard {
 public:
  explicit ResetGuard(Statement& statement) noexcept : statement_(statement) {}
  ~ResetGuard() noexcept { statement_.reset(); }
  ResetGuard(const ResetGuard&) = delete;
  ResetGuard& operator=(const ResetGuard&) = delete;

 private:
  Statement& statement_;
};

// BEGIN IMMEDIATE on construction; ROLLBACK in the destructor unless commit()
// succeeded.
class Transaction {
 public:
  Transaction(sqlite3* db, Statement& begin, Statement& commit, Statement& rollback);
  ~Transaction() noexcept;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  sqlite3* db_;
  Statement& commit_;
  Statement& rollback_;
  bool open_ = true;
};

}  // namespace broker::sqlite
