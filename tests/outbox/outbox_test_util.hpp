// Small helpers shared by the outbox tests: raw SQL on a connection, a
// manually advanced clock.
#pragma once

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "outbox/clock.hpp"
#include "sqlite/sqlite.hpp"

namespace outbox_test {

inline void exec(sqlite3* db, const std::string& sql) {
  sqlite::exec(db, sql.c_str());
}

// The first column of the first row, -1 when there is no row.
inline std::int64_t query_int(sqlite3* db, const std::string& sql) {
  sqlite::Statement statement(db, sql);
  auto use = statement.use();
  return use.step() ? use.column_int64(0) : -1;
}

// A separate plain connection, for looking at a database from outside.
class RawDb {
 public:
  explicit RawDb(const std::string& path) : db_(sqlite::open_file(path, SQLITE_OPEN_READWRITE)) {
    sqlite3_busy_timeout(db_.get(), 5000);
  }
  sqlite3* get() const { return db_.get(); }
  std::int64_t count(const std::string& table) {
    return query_int(db_.get(), "SELECT count(*) FROM " + table);
  }

 private:
  sqlite::ConnectionPtr db_;
};

// A clock tests move by hand.
class ManualClock {
 public:
  explicit ManualClock(std::int64_t start_ms = 1'800'000'000'000)
      : now_ms_(std::make_shared<std::atomic<std::int64_t>>(start_ms)) {}
  outbox::TimeSource clock() const {
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
