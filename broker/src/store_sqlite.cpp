#include "store_sqlite.hpp"

#include <string>

namespace broker::sqlite {

void throw_error(sqlite3* db, int code, std::string_view what) {
  int extended = db != nullptr ? sqlite3_extended_errcode(db) : code;
  // The connection's last error may belong to an earlier call when `code` did
  // not come from it (e.g. a result of sqlite3_open_v2 without a handle).
  if (db == nullptr || (extended & 0xff) != (code & 0xff)) extended = code;
  std::string message(what);
  message += ": ";
  message += db != nullptr && extended != SQLITE_MISUSE ? sqlite3_errmsg(db) : sqlite3_errstr(code);
  message += " (SQLite error " + std::to_string(extended) + ")";
  throw StoreError(message, extended);
}

DatabaseHandle open_database(const std::string& path) {
  sqlite3* raw = nullptr;
  int code = sqlite3_open_v2(
      path.c_str(), &raw,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
      nullptr);
  DatabaseHandle db(raw);
  if (code != SQLITE_OK) {
    std::string message = "cannot open store database " + path + ": " +
                          (raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(code));
    throw StoreError(message, raw != nullptr ? sqlite3_extended_errcode(raw) : code);
  }
  check(raw, sqlite3_extended_result_codes(raw, 1), "enabling extended result codes");
  return db;
}

void execute(sqlite3* db, const char* sql) {
  char* error = nullptr;
  int code = sqlite3_exec(db, sql, nullptr, nullptr, &error);
  if (code != SQLITE_OK) {
    std::string message = std::string("executing \"") + sql + "\"";
    sqlite3_free(error);
    throw_error(db, code, message);
  }
}

std::int64_t query_integer(sqlite3* db, const char* sql) {
  Statement statement(db, sql);
  std::int64_t value = statement.step() ? statement.column_integer(0) : 0;
  statement.reset();
  return value;
}

Statement::Statement(sqlite3* db, std::string_view sql) : db_(db) {
  sqlite3_stmt* raw = nullptr;
  int code = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
  statement_.reset(raw);
  if (code != SQLITE_OK) throw_error(db, code, "preparing \"" + std::string(sql) + "\"");
}

void Statement::bind(int index, std::int64_t value) {
  check(db_, sqlite3_bind_int64(statement_.get(), index, value), "binding an integer");
}

void Statement::bind_text(int index, std::string_view value) {
  // A non-null pointer even for an empty view, so SQLite stores '' and not NULL.
  const char* data = value.data() != nullptr ? value.data() : "";
  check(db_,
        sqlite3_bind_text(statement_.get(), index, data, static_cast<int>(value.size()),
                          SQLITE_STATIC),
        "binding text");
}

void Statement::bind_blob(int index, std::string_view value) {
  const char* data = value.data() != nullptr ? value.data() : "";
  check(db_,
        sqlite3_bind_blob(statement_.get(), index, data, static_cast<int>(value.size()),
                          SQLITE_STATIC),
        "binding a blob");
}

bool Statement::step() {
  int code = sqlite3_step(statement_.get());
  if (code == SQLITE_ROW) return true;
  if (code == SQLITE_DONE) return false;
  throw_error(db_, code, std::string("executing \"") + sqlite3_sql(statement_.get()) + "\"");
}

void Statement::run() {
  ResetGuard guard(*this);
  step();
}

void Statement::reset() noexcept {
  // Both return the last step's error, which step() has already reported.
  sqlite3_reset(statement_.get());
  sqlite3_clear_bindings(statement_.get());
}

std::int64_t Statement::column_integer(int column) const {
  return sqlite3_column_int64(statement_.get(), column);
}

std::string_view Statement::column_text(int column) const {
  const auto* data = reinterpret_cast<const char*>(sqlite3_column_text(statement_.get(), column));
  auto size = static_cast<std::size_t>(sqlite3_column_bytes(statement_.get(), column));
  return data != nullptr ? std::string_view(data, size) : std::string_view();
}

std::string_view Statement::column_blob(int column) const {
  const auto* data = static_cast<const char*>(sqlite3_column_blob(statement_.get(), column));
  auto size = static_cast<std::size_t>(sqlite3_column_bytes(statement_.get(), column));
  return data != nullptr ? std::string_view(data, size) : std::string_view();
}

Transaction::Transaction(sqlite3* db, Statement& begin, Statement& commit, Statement& rollback)
    : db_(db), commit_(commit), rollback_(rollback) {
  begin.run();
}

Transaction::~Transaction() noexcept {
  if (open_ && sqlite3_get_autocommit(db_) == 0) {
    // A failed COMMIT may already have rolled back; ROLLBACK then has nothing to do.
    try {
      rollback_.run();
    } catch (const StoreError&) {
      // Nothing more can be done here; the connection reports the error on its next use.
    }
  }
}

void Transaction::commit() {
  commit_.run();
  open_ = false;
}

}  // namespace broker::sqlite
