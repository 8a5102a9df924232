// Consumer inbox: each msg_id processed once, transactional and claim-based.
#include <catch2/catch.hpp>

#include <atomic>
#include <stdexcept>
#include <thread>

#include "outbox/inbox.hpp"
#include "outbox_test_util.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using outbox_test::exec;
using outbox_test::query_int;

namespace {

void create_stock(sqlite3* db) {
  exec(db, "CREATE TABLE IF NOT EXISTS shipments(msg_id TEXT NOT NULL)");
}

}  // namespace

TEST_CASE("process_once runs the handler once per msg_id") {
  test_support::TempDir dir;
  auto inbox = outbox::Inbox::open(dir / "consumer.db");
  create_stock(inbox.db());
  int runs = 0;
  auto handler = [&](sqlite3* db) {
    ++runs;
    exec(db, "INSERT INTO shipments(msg_id) VALUES ('m-1')");
  };
  CHECK(inbox.process_once("m-1", handler) == outbox::ProcessResult::processed);
  CHECK(inbox.process_once("m-1", handler) == outbox::ProcessResult::already_done);
  CHECK(runs == 1);
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM shipments") == 1);
  CHECK_THROWS_AS(inbox.process_once("", handler), outbox::Error);
}

TEST_CASE("a throwing handler rolls back its work and the msg_id") {
  test_support::TempDir dir;
  auto inbox = outbox::Inbox::open(dir / "consumer.db");
  create_stock(inbox.db());
  CHECK_THROWS_WITH(inbox.process_once("m-1",
                                       [](sqlite3* db) {
                                         exec(db, "INSERT INTO shipments(msg_id) VALUES ('m-1')");
                                         throw std::runtime_error("warehouse offline");
                                       }),
                    "warehouse offline");
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM shipments") == 0);
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM outbox_inbox") == 0);
  // The redelivery is processed.
  CHECK(inbox.process_once("m-1", [](sqlite3* db) {
    exec(db, "INSERT INTO shipments(msg_id) VALUES ('m-1')");
  }) == outbox::ProcessResult::processed);
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM shipments") == 1);
}

TEST_CASE("a handler that ignores an error after which SQLite rolled back fails the call") {
  test_support::TempDir dir;
  auto inbox = outbox::Inbox::open(dir / "consumer.db");
  create_stock(inbox.db());
  // While the warehouse is "full", writing the audit row makes SQLite roll
  // back the whole transaction, as it does itself after SQLITE_FULL or an I/O error.
  exec(inbox.db(),
       "CREATE TABLE warehouse_full(flag INTEGER);"
       "INSERT INTO warehouse_full VALUES (1);"
       "CREATE TABLE audit(msg_id TEXT);"
       "CREATE TRIGGER audit_full BEFORE INSERT ON audit "
       "WHEN EXISTS (SELECT 1 FROM warehouse_full) "
       "BEGIN SELECT RAISE(ROLLBACK, 'warehouse full'); END;");
  int runs = 0;
  auto careless_handler = [&](sqlite3* db) {
    ++runs;
    exec(db, "INSERT INTO shipments(msg_id) VALUES ('m-1')");
    // The error is swallowed; the statements after it would autocommit.
    sqlite3_exec(db, "INSERT INTO audit(msg_id) VALUES ('m-1')", nullptr, nullptr, nullptr);
    sqlite3_exec(db, "INSERT INTO shipments(msg_id) VALUES ('m-1 again')", nullptr, nullptr,
                 nullptr);
  };
  CHECK_THROWS_WITH(inbox.process_once("m-1", careless_handler),
                    Catch::Contains("ended inside the handler") && Catch::Contains("m-1"));
  CHECK(sqlite3_get_autocommit(inbox.db()) != 0);
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM outbox_inbox") == 0);
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM shipments") == 0);

  // The redelivery, once the cause is gone, is processed once.
  exec(inbox.db(), "DELETE FROM warehouse_full");
  CHECK(inbox.process_once("m-1", careless_handler) == outbox::ProcessResult::processed);
  CHECK(inbox.process_once("m-1", careless_handler) == outbox::ProcessResult::already_done);
  CHECK(runs == 2);
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM shipments") == 2);  // its two inserts
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM audit") == 1);
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM outbox_inbox") == 1);

  // A handler that ends the transaction itself fails the same way.
  auto committing_handler = [](sqlite3* db) {
    exec(db, "INSERT INTO shipments(msg_id) VALUES ('m-2')");
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  };
  CHECK_THROWS_WITH(inbox.process_once("m-2", committing_handler),
                    Catch::Contains("ended inside the handler"));
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM shipments WHERE msg_id = 'm-2'") == 0);
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM outbox_inbox WHERE msg_id = 'm-2'") == 0);
}

TEST_CASE("begin, complete and fail") {
  test_support::TempDir dir;
  outbox_test::ManualClock clock;
  outbox::InboxOptions options;
  options.clock = clock.clock();
  auto inbox = outbox::Inbox::open(dir / "consumer.db", options);
  using outbox::BeginResult;
  using outbox::ClaimResult;

  auto first = inbox.begin("m-1", 1min);
  REQUIRE(first.result == BeginResult::claimed);
  CHECK(first.token.size() == 36);
  CHECK(inbox.begin("m-1", 1min).result == BeginResult::in_progress_elsewhere);
  CHECK(inbox.process_once("m-1", [](sqlite3*) { FAIL("ran during a claim"); }) ==
        outbox::ProcessResult::in_progress);
  CHECK(inbox.complete("m-1", "not-the-token") == ClaimResult::claim_lost);
  CHECK(inbox.complete("m-1", first.token) == ClaimResult::ok);
  CHECK(inbox.complete("m-1", first.token) == ClaimResult::ok);      // a repeat is answered ok
  CHECK(inbox.fail("m-1", first.token) == ClaimResult::claim_lost);  // done is never released
  CHECK(inbox.begin("m-1", 1min).result == BeginResult::already_done);

  auto second = inbox.begin("m-2", 1min);
  REQUIRE(second.claimed());
  CHECK(second.token != first.token);
  CHECK(inbox.fail("m-2", second.token) == ClaimResult::ok);
  CHECK(inbox.fail("m-2", second.token) == ClaimResult::claim_lost);
  CHECK(inbox.begin("m-2", 1min).claimed());
  CHECK(inbox.fail("never-seen", second.token) == ClaimResult::claim_lost);
  CHECK_THROWS_AS(inbox.complete("m-2", ""), outbox::Error);
  CHECK_THROWS_AS(inbox.begin("m-3", 0ms), outbox::Error);
  CHECK_THROWS_AS(inbox.extend("m-2", second.token, -1ms), outbox::Error);
}

TEST_CASE("a stale processing claim is taken over and its old holder loses it") {
  test_support::TempDir dir;
  outbox_test::ManualClock clock;
  outbox::InboxOptions options;
  options.clock = clock.clock();
  auto crashed = outbox::Inbox::open(dir / "consumer.db", options);
  auto survivor = outbox::Inbox::open(dir / "consumer.db", options);
  using outbox::BeginResult;
  using outbox::ClaimResult;

  auto old_claim = crashed.begin("m-1", 30s);
  REQUIRE(old_claim.claimed());
  // ... and the consumer stalls before complete() or fail().
  clock.advance(29s);
  CHECK(survivor.begin("m-1", 30s).result == BeginResult::in_progress_elsewhere);
  clock.advance(1s);
  auto new_claim = survivor.begin("m-1", 30s);
  REQUIRE(new_claim.claimed());
  CHECK(crashed.begin("m-1", 30s).result == BeginResult::in_progress_elsewhere);
  // The old holder wakes up: whatever it tries changes nothing.
  CHECK(crashed.extend("m-1", old_claim.token, 1h) == ClaimResult::claim_lost);
  CHECK(crashed.fail("m-1", old_claim.token) == ClaimResult::claim_lost);
  CHECK(crashed.complete("m-1", old_claim.token) == ClaimResult::claim_lost);
  CHECK(crashed.begin("m-1", 30s).result == BeginResult::in_progress_elsewhere);
  CHECK(survivor.complete("m-1", new_claim.token) == ClaimResult::ok);
  CHECK(crashed.begin("m-1", 30s).result == BeginResult::already_done);

  // A transactional redelivery also takes over a stale claim.
  auto stale = crashed.begin("m-2", 30s);
  REQUIRE(stale.claimed());
  int runs = 0;
  CHECK(survivor.process_once("m-2", [&](sqlite3*) { ++runs; }) ==
        outbox::ProcessResult::in_progress);
  clock.advance(30s);
  CHECK(survivor.process_once("m-2", [&](sqlite3*) { ++runs; }) ==
        outbox::ProcessResult::processed);
  CHECK(runs == 1);
  CHECK(crashed.begin("m-2", 30s).result == BeginResult::already_done);
  CHECK(crashed.complete("m-2", stale.token) == ClaimResult::claim_lost);
}

TEST_CASE("extend keeps a long claim, also past its lease until someone takes it over") {
  test_support::TempDir dir;
  outbox_test::ManualClock clock;
  outbox::InboxOptions options;
  options.clock = clock.clock();
  auto worker = outbox::Inbox::open(dir / "consumer.db", options);
  auto other = outbox::Inbox::open(dir / "consumer.db", options);
  auto claim = worker.begin("m-1", 10s);
  REQUIRE(claim.claimed());
  clock.advance(9s);
  CHECK(worker.extend("m-1", claim.token, 10s) == outbox::ClaimResult::ok);
  clock.advance(9s);  // 18 s after begin: beyond the first lease, within the extension
  CHECK(other.begin("m-1", 10s).result == outbox::BeginResult::in_progress_elsewhere);
  clock.advance(5s);  // expired, but nobody took it over yet: still the worker's
  CHECK(worker.extend("m-1", claim.token, 10s) == outbox::ClaimResult::ok);
  CHECK(other.begin("m-1", 10s).result == outbox::BeginResult::in_progress_elsewhere);
  CHECK(other.extend("m-1", "someone-else", 10s) == outbox::ClaimResult::claim_lost);
  CHECK(worker.complete("m-1", claim.token) == outbox::ClaimResult::ok);
  CHECK(worker.extend("m-1", claim.token, 10s) == outbox::ClaimResult::claim_lost);
}

TEST_CASE("two concurrent consumers of the same msg_ids process each one once") {
  test_support::TempDir dir;
  {
    auto setup = outbox::Inbox::open(dir / "consumer.db");
    create_stock(setup.db());
  }
  constexpr int messages = 200;
  // Catch2's assertions are not thread-safe: the consumers count, the test
  // thread checks.
  std::atomic<int> processed{0}, skipped{0}, claims{0}, completes_refused{0};
  auto consume = [&] {
    auto inbox = outbox::Inbox::open(dir / "consumer.db");
    for (int i = 0; i < messages; ++i) {
      auto id = "m-" + std::to_string(i);
      auto result = inbox.process_once(id, [&](sqlite3* db) {
        exec(db, "INSERT INTO shipments(msg_id) VALUES ('" + id + "')");
      });
      (result == outbox::ProcessResult::processed ? processed : skipped)++;
      auto claim_id = "c-" + std::to_string(i);
      auto claim = inbox.begin(claim_id, 1min);
      if (claim.claimed()) {
        claims++;
        if (inbox.complete(claim_id, claim.token) != outbox::ClaimResult::ok) completes_refused++;
      }
    }
  };
  std::thread first(consume), second(consume);
  first.join();
  second.join();
  CHECK(processed == messages);
  CHECK(skipped == messages);
  CHECK(claims == messages);
  CHECK(completes_refused == 0);
  auto inbox = outbox::Inbox::open(dir / "consumer.db");
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM shipments") == messages);
  CHECK(query_int(inbox.db(), "SELECT count(DISTINCT msg_id) FROM shipments") == messages);
}

TEST_CASE("completed entries expire after the retention, in batches") {
  test_support::TempDir dir;
  outbox_test::ManualClock clock;
  outbox::InboxOptions options;
  options.clock = clock.clock();
  options.retention = 1h;
  auto inbox = outbox::Inbox::open(dir / "consumer.db", options);
  for (int i = 0; i < 10; ++i) {
    inbox.process_once("old-" + std::to_string(i), [](sqlite3*) {});
  }
  CHECK(inbox.begin("claimed", 10h).claimed());
  clock.advance(2h);
  inbox.process_once("new", [](sqlite3*) {});
  CHECK(inbox.expire(4, 1) == 4);
  CHECK(inbox.expire(4) == 6);
  CHECK(inbox.expire(4) == 0);
  CHECK(query_int(inbox.db(), "SELECT count(*) FROM outbox_inbox") == 2);
  // An expired msg_id is processed again when redelivered.
  CHECK(inbox.process_once("old-1", [](sqlite3*) {}) == outbox::ProcessResult::processed);
  CHECK(inbox.process_once("new", [](sqlite3*) {}) == outbox::ProcessResult::already_done);
}

TEST_CASE("a claim written before claim tokens existed is taken over after its lease") {
  test_support::TempDir dir;
  outbox_test::ManualClock clock;
  outbox::InboxOptions options;
  options.clock = clock.clock();
  auto inbox = outbox::Inbox::open(dir / "consumer.db", options);
  // What a schema version 2 claim looks like after the migration: no token.
  const auto until = (clock.now() + 30s).time_since_epoch().count();
  exec(inbox.db(), "INSERT INTO outbox_inbox(msg_id, state, claimed_until_ms) VALUES ('m-1', 1, " +
                       std::to_string(until) + ")");
  CHECK(inbox.begin("m-1", 1min).result == outbox::BeginResult::in_progress_elsewhere);
  CHECK(inbox.complete("m-1", "any-token") == outbox::ClaimResult::claim_lost);
  clock.advance(30s);
  auto claim = inbox.begin("m-1", 1min);
  REQUIRE(claim.claimed());
  CHECK(inbox.complete("m-1", claim.token) == outbox::ClaimResult::ok);
}
