// Schema versioning: creation, migration from version 1, refusal of newer
// schemas and of databases without the schema.
#include <atomic>
#include <future>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "outbox/inbox.hpp"
#include "outbox/outbox.hpp"
#include "outbox/relay_store.hpp"
#include "outbox/schema.hpp"
#include "outbox_test_util.hpp"
#include "test_support.hpp"

using outbox_test::exec;
using outbox_test::query_int;

namespace {

// The version 1 schema exactly as released (docs/schema.md, "Version history").
constexpr const char* schema_v1 = R"sql(
CREATE TABLE outbox_meta(
  key   TEXT PRIMARY KEY,
  value ANY
) WITHOUT ROWID;
CREATE TABLE outbox_messages(
  seq           INTEGER PRIMARY KEY,
  msg_id        TEXT    NOT NULL UNIQUE,
  topic         TEXT    NOT NULL CHECK (length(topic) > 0),
  partition_key TEXT,
  payload       BLOB    NOT NULL,
  created_at_ms INTEGER NOT NULL
                DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
CREATE TABLE outbox_lease(
  name           TEXT PRIMARY KEY,
  holder         TEXT    NOT NULL,
  epoch          INTEGER NOT NULL,
  acquired_at_ms INTEGER NOT NULL,
  expires_at_ms  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO outbox_meta(key, value) VALUES ('schema_version', 1);
)sql";

}  // namespace

TEST_CASE("a new database gets the current schema and the app's user_version is untouched") {
  test_support::TempDir dir;
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open((dir / "app.db").c_str(), &db) == SQLITE_OK);
  exec(db, "PRAGMA user_version = 7");
  sqlite3_close_v2(db);

  auto box = outbox::Outbox::open(dir / "app.db");
  CHECK(query_int(box.db(), "SELECT value FROM outbox_meta WHERE key = 'schema_version'") ==
        outbox::schema_version);
  CHECK(query_int(box.db(), "PRAGMA user_version") == 7);
  // The producer's commit path: the table and the msg_id index, nothing else.
  CHECK(query_int(box.db(),
                  "SELECT count(*) FROM sqlite_master WHERE tbl_name = 'outbox_messages' "
                  "AND type = 'index'") == 1);
  CHECK(query_int(box.db(), "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'") ==
        0);
}

TEST_CASE("a version 1 database is migrated forward and keeps its messages") {
  test_support::TempDir dir;
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open((dir / "app.db").c_str(), &db) == SQLITE_OK);
    exec(db, schema_v1);
    exec(db,
         "INSERT INTO outbox_messages(msg_id, topic, partition_key, payload) "
         "VALUES ('old-1', 'orders', 'k', x'01'), ('old-2', 'orders', 'k', x'02')");
    sqlite3_close_v2(db);
  }
  auto box = outbox::Outbox::open(dir / "app.db");
  CHECK(query_int(box.db(), "SELECT value FROM outbox_meta WHERE key = 'schema_version'") ==
        outbox::schema_version);
  {
    outbox::Transaction tx(box);
    outbox::Message message;
    message.topic = "orders";
    message.key = "k";
    message.payload = "new";
    message.headers = {{"h", "v"}};
    CHECK(tx.enqueue(message).seq == 3);
    tx.commit();
  }
  auto store = outbox::RelayStore::open(dir / "app.db");
  auto pending = store.read_pending(10);
  REQUIRE(pending.size() == 3);
  CHECK(pending[0].msg_id == "old-1");
  CHECK(pending[1].msg_id == "old-2");
  CHECK(pending[2].headers.size() == 1);
  CHECK(store.stats().pending == 3);
}

TEST_CASE("a database with a newer schema is refused and left unchanged") {
  test_support::TempDir dir;
  { auto box = outbox::Outbox::open(dir / "app.db"); }
  {
    outbox_test::RawDb raw((dir / "app.db").string());
    exec(raw.get(), "UPDATE outbox_meta SET value = 99 WHERE key = 'schema_version'");
    exec(raw.get(), "PRAGMA wal_checkpoint(TRUNCATE)");
  }
  auto before = test_support::read_file(dir / "app.db");
  try {
    outbox::Outbox::open(dir / "app.db");
    FAIL("opened a newer schema");
  } catch (const outbox::Error& error) {
    CHECK_THAT(error.what(), Catch::Contains("newer than this library"));
  }
  CHECK_THROWS_WITH(outbox::RelayStore::open(dir / "app.db"), Catch::Contains("newer"));
  CHECK_THROWS_WITH(outbox::Inbox::open(dir / "app.db"), Catch::Contains("newer"));
  outbox_test::RawDb raw((dir / "app.db").string());
  CHECK(query_int(raw.get(), "SELECT value FROM outbox_meta WHERE key = 'schema_version'") == 99);
  CHECK(raw.count("outbox_messages") == 0);
  CHECK(test_support::read_file(dir / "app.db") == before);
}

TEST_CASE("the relay side refuses a database without the outbox schema") {
  test_support::TempDir dir;
  CHECK_THROWS_WITH(outbox::RelayStore::open(dir / "missing.db"),
                    Catch::Contains("does not exist"));
  CHECK_FALSE(std::filesystem::exists(dir / "missing.db"));
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open((dir / "plain.db").c_str(), &db) == SQLITE_OK);
  exec(db, "CREATE TABLE accounts(id INTEGER PRIMARY KEY)");
  sqlite3_close_v2(db);
  CHECK_THROWS_WITH(outbox::RelayStore::open(dir / "plain.db"),
                    Catch::Contains("has no outbox schema"));
  outbox_test::RawDb raw((dir / "plain.db").string());
  CHECK(query_int(raw.get(), "SELECT count(*) FROM sqlite_master WHERE name LIKE 'outbox_%'") == 0);
}

TEST_CASE("producers opening a new database while a reader polls it all succeed") {
  // Found by the fault suite (tests/faults): a producer opening a fresh
  // database while others opened it and a tool read it failed with "database
  // is locked" from PRAGMA journal_mode=WAL, for which SQLite does not always
  // call the busy handler. A race, so the test runs it many times.
  test_support::TempDir dir;
  int failures = 0;
  std::string first_error;
  for (int round = 0; round < 150; ++round) {
    auto path = dir / ("app-" + std::to_string(round) + ".db");
    std::atomic<bool> done{false};
    std::thread reader([&] {
      while (!done.load()) {
        sqlite3* db = nullptr;
        if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
          sqlite3_busy_timeout(db, 5000);
          sqlite3_exec(db, "SELECT count(*) FROM outbox_meta", nullptr, nullptr, nullptr);
        }
        sqlite3_close(db);
      }
    });
    std::vector<std::future<std::string>> producers;
    for (int i = 0; i < 3; ++i) {
      producers.push_back(std::async(std::launch::async, [&]() -> std::string {
        try {
          auto box = outbox::Outbox::open(path);
          outbox::Transaction tx(box);
          tx.enqueue({.topic = "orders", .payload = "x"});
          tx.commit();
          return {};
        } catch (const outbox::Error& error) {
          return error.what();
        }
      }));
    }
    for (auto& producer : producers) {
      auto error = producer.get();
      if (!error.empty()) {
        ++failures;
        if (first_error.empty()) first_error = error;
      }
    }
    done.store(true);
    reader.join();
  }
  INFO(first_error);
  CHECK(failures == 0);
}
