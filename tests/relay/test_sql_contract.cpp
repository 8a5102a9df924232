// The SQL contract on its own: a producer in another language (Python's
// sqlite3 module) creates the outbox tables from the DDL printed in
// docs/schema.md and enqueues with plain SQL; the real relay forwards to the
// real broker.
#include "relay_harness.hpp"

using namespace relay_test;

namespace {

const std::string sql_producer = OUTBOX_SOURCE_DIR "/tests/relay/sql_contract_producer.py";
const std::string schema_page = OUTBOX_SOURCE_DIR "/docs/schema.md";

const std::string python = OUTBOX_PYTHON3;

}  // namespace

TEST_CASE("a Python producer using only docs/schema.md is forwarded exactly once", "[relay]") {
  if (python.empty()) {
    WARN("skipped: python3 is not installed");
    return;
  }
  test_support::TempDir dir("relay-sql-contract");
  const auto db = dir / "app.db";
  auto created = test_support::run(python, {sql_producer, "create", db.string(), schema_page});
  INFO(created.err);
  REQUIRE(created.status.code == 0);
  // A creator that skipped the relay's own row: the relay makes it itself.
  exec_sql(db, "DELETE FROM outbox_relay_cursor");

  BrokerProcess broker(dir.path(), dir / "broker.db");
  RelayProcess relay(dir.path(), db, broker.endpoint());
  constexpr long count = 2000;
  auto produced = test_support::run(
      python, {sql_producer, "enqueue", db.string(), std::to_string(count), "8"}, 120s);
  INFO(produced.err << relay.log());
  REQUIRE(produced.status.code == 0);
  CHECK(produced.out == "committed 2000 locked 0\n");
  REQUIRE(wait_delivered(db, count));

  auto stored = fetch_all(broker.endpoint());
  check_exactly_once_in_order(stored, count);
  REQUIRE_FALSE(stored.empty());
  REQUIRE(stored.front().headers.size() == 1);
  CHECK(stored.front().headers.front().name == "traceparent");
  CHECK(stored.front().headers.front().value.rfind("00-py-", 0) == 0);
  auto status = outbox_status(db);
  CHECK(status.pending == 0);
  CHECK(status.dead == 0);
  CHECK(relay.stop().code == 0);
}
