// Operator commands (outbox-relay replay / drop) run against a busy outbox:
// the running relay notices them and per-key order at the broker still
// follows commit order.
#include <utility>

#include "relay_harness.hpp"

using namespace relay_test;

namespace {

struct DeadRow {
  std::string msg_id;
  std::string prefix;  // "<key>:<i>", the payload without the producer's padding
};

// Dead messages, read with the SQL the schema documents (docs/schema.md).
std::vector<DeadRow> dead_rows(const std::filesystem::path& db) {
  auto handle = sqlite::open_file(db.string(), SQLITE_OPEN_READONLY);
  sqlite3_busy_timeout(handle.get(), 10000);
  sqlite::Statement select(handle.get(),
                           "SELECT m.msg_id, m.payload FROM outbox_delivery d "
                           "JOIN outbox_messages m ON m.seq = d.seq WHERE d.state = 2 "
                           "ORDER BY d.seq");
  auto use = select.use();
  std::vector<DeadRow> rows;
  while (use.step()) {
    std::string payload = use.column_blob(1);
    auto second_colon = payload.find(':', payload.find(':') + 1);
    rows.push_back({use.column_text(0), payload.substr(0, second_colon)});
  }
  return rows;
}

}  // namespace

TEST_CASE("replay and drop of dead messages on a busy outbox keep per-key order",
          "[relay][operator]") {
  test_support::TempDir dir("relay-operator");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db", {"--max-message-bytes", "1k"});
  // Every 701st message is too large for the broker: it becomes dead and holds
  // back its key. The producer commits as fast as it can, and starts with a
  // head start so that the relay works through a backlog with its pipeline
  // full rather than catching up and emptying it between commits.
  BackgroundProducer producer(dir.path(), db, 30000, 8, 701);
  REQUIRE(wait_schema(db));
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).pending >= 3000; }, 60s, 5ms));
  RelayProcess relay(dir.path(), db, broker.endpoint(),
                     {"--batch-size", "50", "--in-flight", "16"});
  INFO(relay.log());

  // Alternately drop a dead message, or fix its payload (as an operator who
  // found the cause would) and replay it, while the producer keeps committing.
  std::set<std::string> dropped;
  long replayed = 0;
  bool drop_next = true;
  auto deadline = std::chrono::steady_clock::now() + 180s;
  while (std::chrono::steady_clock::now() < deadline) {
    bool producing = producer.running();
    auto dead = dead_rows(db);
    for (const auto& row : dead) {
      if (drop_next) {
        auto drop = test_support::run(relay_binary(),
                                      {"drop", "--db", db.string(), "--msg-id", row.msg_id});
        INFO(drop.err);
        REQUIRE(drop.status.code == 0);
        dropped.insert(row.prefix);
      } else {
        exec_sql(db, "UPDATE outbox_messages SET payload = CAST('" + row.prefix +
                         "' AS BLOB) WHERE msg_id = '" + row.msg_id + "'");
        auto replay = test_support::run(relay_binary(),
                                        {"replay", "--db", db.string(), "--msg-id", row.msg_id});
        INFO(replay.err);
        REQUIRE(replay.status.code == 0);
        ++replayed;
      }
      drop_next = !drop_next;
    }
    if (!producing && dead.empty() && outbox_status(db).pending == 0) break;
    if (dead.empty()) {
      test_support::wait_until([&] { return !dead_rows(db).empty() || !producer.running(); }, 2s,
                               5ms);
    }
  }
  auto committed = producer.wait_committed();
  REQUIRE(wait_delivered(db, committed - static_cast<long>(dropped.size())));
  CHECK(outbox_status(db).dead == 0);
  // 30000 / 701 messages were refused; both operator commands ran on most.
  CHECK(dropped.size() >= 10);
  CHECK(replayed >= 10);
  check_exactly_once_in_order(fetch_all(broker.endpoint()), committed, dropped);
}
