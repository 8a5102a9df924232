// Schema versioning: creation, migration from version 1, refusal of newer
// schemas and of databases without the schema.
#include <algorithm>
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

// Writes a version 1 database with `rows_sql`, then opens it with the
// library, which migrates it to the current version.
outbox::Outbox open_version_1_database(const std::filesystem::path& path,
                                       const std::string& rows_sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  exec(db, schema_v1);
  exec(db, rows_sql);
  sqlite3_close_v2(db);
  auto box = outbox::Outbox::open(path);
  CHECK(query_int(box.db(), "SELECT value FROM outbox_meta WHERE key = 'schema_version'") ==
        outbox::schema_version);
  return box;
}

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
  auto box = open_version_1_database(dir / "app.db",
                                     "INSERT INTO outbox_messages(msg_id, topic, partition_key, "
                                     "payload) VALUES ('old-1', 'orders', 'k', x'01'), "
                                     "('old-2', 'orders', 'k', x'02')");
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

namespace {

// The script under "## Creating the tables" in docs/schema.md.
std::string documented_ddl() {
  const auto doc = test_support::read_file(OUTBOX_SOURCE_DIR "/docs/schema.md");
  const auto section = doc.find("\n## Creating the tables\n");
  REQUIRE(section != std::string::npos);
  const auto start = doc.find("```sql\n", section);
  REQUIRE(start != std::string::npos);
  const auto end = doc.find("\n```", start + 7);
  REQUIRE(end != std::string::npos);
  return doc.substr(start + 7, end - start - 7);
}

std::string rows_of(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK);
  std::string text;
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    for (int i = 0; i < sqlite3_column_count(stmt); ++i) {
      auto* value = sqlite3_column_text(stmt, i);
      text += value != nullptr ? reinterpret_cast<const char*>(value) : "NULL";
      text += '|';
    }
    text += '\n';
  }
  sqlite3_finalize(stmt);
  return text;
}

// Tables, their columns (name, type, not null, default, key), indexes with
// their columns, and the SQL of triggers, indexes and outbox_messages (whose
// CHECK constraints are the field limits).
std::string schema_fingerprint(sqlite3* db) {
  std::string text = rows_of(db,
                             "SELECT type, name, tbl_name, CASE WHEN type IN ('trigger', 'index') "
                             "OR name = 'outbox_messages' THEN sql END FROM sqlite_master "
                             "WHERE name LIKE 'outbox%' ORDER BY name");
  // A table rebuilt by a migration is stored as CREATE TABLE "name"(...).
  text.erase(std::remove(text.begin(), text.end(), '"'), text.end());
  for (const auto& line : test_support::lines(
           rows_of(db,
                   "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'outbox%' "
                   "ORDER BY name"))) {
    const auto table = line.substr(0, line.find('|'));
    text +=
        table + ":\n" +
        rows_of(db,
                "SELECT name, type, \"notnull\", dflt_value, pk FROM "
                "pragma_table_info('" +
                    table + "')") +
        rows_of(db, "SELECT il.name, il.\"unique\", il.partial, ii.name FROM pragma_index_list('" +
                        table + "') il, pragma_index_info(il.name) ii ORDER BY il.name, ii.seqno");
  }
  return text + rows_of(db, "SELECT * FROM outbox_meta ORDER BY key") +
         rows_of(db, "SELECT * FROM outbox_relay_cursor");
}

}  // namespace

TEST_CASE("the DDL in docs/schema.md creates what the library creates") {
  test_support::TempDir dir;
  auto box = outbox::Outbox::open(dir / "library.db");
  sqlite3* documented = nullptr;
  REQUIRE(sqlite3_open((dir / "documented.db").c_str(), &documented) == SQLITE_OK);
  exec(documented, documented_ddl());
  CHECK(schema_fingerprint(documented) == schema_fingerprint(box.db()));
  sqlite3_close_v2(documented);
  // And the library accepts it as its own.
  auto from_doc = outbox::Outbox::open(dir / "documented.db");
  outbox::Transaction tx(from_doc);
  CHECK(tx.enqueue({.topic = "orders", .payload = "x"}).inserted());
}

TEST_CASE("the field limits refuse an impossible row at INSERT, inside the transaction") {
  test_support::TempDir dir;
  auto box = outbox::Outbox::open(dir / "app.db");
  const auto refused = [&](const std::string& values) {
    try {
      exec(box.db(), "INSERT INTO outbox_messages(msg_id, topic, partition_key, payload) VALUES (" +
                         values + ")");
      return std::string();
    } catch (const std::runtime_error& error) {
      return std::string(error.what());
    }
  };
  CHECK(refused("'ok-1', 'orders.v1_x-y', NULL, x''").empty());
  const auto repeat = [](const std::string& piece, int times) {
    std::string text;
    for (int i = 0; i < times; ++i) text += piece;
    return "'" + text + "'";
  };
  CHECK(refused("'~!' || char(126), 'T', " + repeat("k", 4096) + ", x'00'").empty());
  CHECK_THAT(refused("'', 'orders', NULL, x''"), Catch::Contains("msg_id_limits"));
  CHECK_THAT(refused(repeat("a", 256) + ", 'orders', NULL, x''"), Catch::Contains("msg_id_limits"));
  CHECK_THAT(refused("'has space', 'orders', NULL, x''"), Catch::Contains("msg_id_limits"));
  CHECK_THAT(refused("'caf' || char(233), 'orders', NULL, x''"), Catch::Contains("msg_id_limits"));
  CHECK_THAT(refused("'tab' || char(9), 'orders', NULL, x''"), Catch::Contains("msg_id_limits"));
  CHECK_THAT(refused("'t-1', " + repeat("t", 250) + ", NULL, x''"),
             Catch::Contains("topic_limits"));
  CHECK_THAT(refused("'t-2', 'a/b', NULL, x''"), Catch::Contains("topic_limits"));
  CHECK_THAT(refused("'t-3', 'orders', " + repeat("k", 4097) + ", x''"),
             Catch::Contains("partition_key_limits"));
  // 2,000 two-byte characters: 4,000 bytes, fine; 2,049 of them: 4,098 bytes.
  CHECK(refused("'k-1', 'orders', " + repeat("\u00e9", 2000) + ", x''").empty());
  CHECK_THAT(refused("'k-2', 'orders', " + repeat("\u00e9", 2049) + ", x''"),
             Catch::Contains("partition_key_limits"));
  CHECK(query_int(box.db(), "SELECT count(*) FROM outbox_messages") == 3);
  // Through the library the refusal is an outbox::Error with SQLite's code.
  outbox::Transaction tx(box);
  try {
    tx.enqueue({.topic = "orders", .payload = "x", .msg_id = "two words"});
    FAIL("enqueued an invalid msg_id");
  } catch (const outbox::Error& error) {
    CHECK(error.extended_code() == SQLITE_CONSTRAINT_CHECK);
    CHECK_THAT(error.what(), Catch::Contains("msg_id_limits"));
  }
  CHECK(tx.active());
}

TEST_CASE("the field limits come to an older database with its rows, seqs and bad rows") {
  test_support::TempDir dir;
  auto box = open_version_1_database(dir / "app.db",
                                     "INSERT INTO outbox_messages(seq, msg_id, topic, payload) "
                                     "VALUES (5, 'fine', 'orders', x'01'), "
                                     "(9, 'not fine', 'orders', x'02')");
  CHECK(query_int(box.db(), "SELECT count(*) FROM outbox_messages WHERE seq IN (5, 9)") == 2);
  CHECK(query_int(box.db(), "PRAGMA ignore_check_constraints") == 0);
  CHECK_THROWS_WITH(
      exec(box.db(),
           "INSERT INTO outbox_messages(msg_id, topic, payload) VALUES ('also not', 'o', x'')"),
      Catch::Contains("msg_id_limits"));
  outbox::Transaction tx(box);
  CHECK(tx.enqueue({.topic = "orders", .payload = "new"}).seq == 10);
  tx.commit();
  auto store = outbox::RelayStore::open(dir / "app.db");
  auto pending = store.read_pending(10);
  REQUIRE(pending.size() == 3);
  CHECK(pending[1].msg_id == "not fine");
}

TEST_CASE("the relay side repairs a missing cursor row") {
  test_support::TempDir dir;
  { auto box = outbox::Outbox::open(dir / "app.db"); }
  {
    outbox_test::RawDb raw((dir / "app.db").string());
    exec(raw.get(), "DELETE FROM outbox_relay_cursor");
    exec(raw.get(),
         "INSERT INTO outbox_messages(msg_id, topic, payload) VALUES ('m-1', 'o', x'01')");
  }
  auto store = outbox::RelayStore::open(dir / "app.db");
  CHECK(store.read_pending(10).size() == 1);
  CHECK(query_int(store.db(), "SELECT settled_through_seq FROM outbox_relay_cursor") == 0);
}
