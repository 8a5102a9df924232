// Small helpers shared by the outbox tests: raw SQL on a connection, a
// manually advanced clock.
#pragma once

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "outbox/clock.hpp"

namespace outbox_test {

inline void exec(sqlite3* db, const std::string& sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error != nullptr ? error : "?";
    sqlite3_free(error);
    throw std::runtime_error(sql + ": " + message);
  }
}

inline std::int64_t query_int(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
    throw std::runtime_error(sql + ": " + sqlite3_errmsg(db));
  }
  std::int64_t value = -1;
  int rc = sqlite3_step(stmt);
  if (rc == SQLITE_ROW) value = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) throw std::runtime_error(sql + ": step failed");
  return value;
}

// A separate plain connection, for looking at a database from outside.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
      std::string message = db_ != nullptr ? sqlite3_errmsg(db_) : "open failed";
      sqlite3_close_v2(db_);
      throw std::runtime_error(message);
    }
    sqlite3_busy_timeout(db_, 5000);
  }
  ~RawDb() { sqlite3_close_v2(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;
  sqlite3* get() const { return db_; }
  std::int64_t count(const std::string& table) {
    return query_int(db_, "SELECT count(*) FROM " + table);
  }

 private:
  sqlite3* db_ = nullptr;
};

// A clock tests move by hand.
class ManualClock {
 public:
  explicit ManualClock(std::int64_t start_ms = 1'800'000'000'000)
      : now_ms_(std::make_shared<std::atomic<std::int64_t>>(start_ms)) {}
  outbox::Clock clock() const {
    auto now = now_ms_;
    return [now] { return outbox::TimePoint(std::chrono::milliseconds(now->load())); };
  }
  void advance(std::chrono::milliseconds by) { *now_ms_ += by.count(); }
  outbox::TimePoint now() const {
    return outbox::TimePoint(std::chrono::milliseconds(now_ms_->load()));
  }

 private:
  std::shared_ptr<std::atomic<std::int64_t>> now_ms_;
};

}  // namespace outbox_test
