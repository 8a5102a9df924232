// Transient failures of the outbox database itself (another writer holding
// the lock past the busy timeout, I/O errors) never end the relay: one line
// naming the database, the operation and SQLite's code, a backoff, the lease
// kept, and every message delivered exactly once after the condition clears.
// Real outbox-relay and outbox-broker processes. (A full disk: test_liveness.)
#include <cstdlib>
#include <fstream>

#include "relay_harness.hpp"

using namespace relay_test;

namespace {

// The relay's report of a transient database failure: the whole line, which
// must name the database and SQLite's code, with the operation in between.
std::string database_error_line(const std::string& log, const std::filesystem::path& db,
                                const std::string& code) {
  auto at = log.find("failed with " + code);
  if (at == std::string::npos) return {};
  auto begin = log.rfind('\n', at);
  begin = begin == std::string::npos ? 0 : begin + 1;
  auto line = log.substr(begin, log.find('\n', at) - begin);
  auto named = line.find("database '" + db.string() + "': ");
  if (named == std::string::npos) return {};
  auto operation_at = named + db.string().size() + 13;
  if (line.find(" failed with " + code) <= operation_at) return {};  // no operation named
  return line;
}

// Commits more orders and holds the relay to the condition until it has
// reported it; then clears it and checks the relay delivered everything once.
struct Scenario {
  std::filesystem::path db;
  BrokerProcess& broker;
  RelayProcess& relay;
  OrderWriter& writer;

  void before_condition() {
    writer.commit(100);
    INFO(relay.log());
    REQUIRE(wait_delivered(db, writer.committed(), 60s));
  }

  void expect_reported(const std::string& code) {
    REQUIRE(test_support::wait_until(
        [&] { return !database_error_line(relay.log(), db, code).empty(); }, 60s, 20ms));
    INFO(database_error_line(relay.log(), db, code));
    CHECK(database_error_line(relay.log(), db, code).find("keeping the lease") !=
          std::string::npos);
    CHECK(relay.process().running());
  }

  void after_condition(const std::string& lease_before) {
    INFO(relay.log());
    REQUIRE(wait_delivered(db, writer.committed(), 120s));
    CHECK(relay.log().find("works again") != std::string::npos);
    CHECK(relay.process().running());
    CHECK(lease_holder_and_epoch(db) == lease_before);
    check_exactly_once_in_order(fetch_all(broker.endpoint()), writer.committed());
    auto exit = relay.stop();
    CHECK(exit.exited);
    CHECK(exit.code == 0);
  }
};

}  // namespace

TEST_CASE("another writer holding app.db's write lock past the busy timeout does not end the relay",
          "[relay][liveness]") {
  test_support::TempDir dir("relay-busy");
  auto db = std::filesystem::weakly_canonical(dir / "app.db");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto box = outbox::Outbox::open(db);
  OrderWriter writer(box);
  RelayProcess relay(dir.path(), db, broker.endpoint(), {"--lease", "60s"});
  Scenario scenario{db, broker, relay, writer};
  scenario.before_condition();
  const auto lease_before = lease_holder_and_epoch(db);
  REQUIRE_FALSE(lease_before.empty());

  // Many batches to settle, and a writer that takes the lock right after
  // committing them and keeps it past the relay's 5 s busy timeout.
  writer.commit(20'000);
  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &other) == SQLITE_OK);
  sqlite3_busy_timeout(other, 30'000);
  REQUIRE(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  scenario.expect_reported("SQLITE_BUSY");
  REQUIRE(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(other);

  scenario.after_condition(lease_before);
}

TEST_CASE("I/O errors writing app.db do not end the relay", "[relay][liveness]") {
  test_support::TempDir dir("relay-ioerr");
  auto db = std::filesystem::weakly_canonical(dir / "app.db");
  const auto fault_switch = dir / "io-faults-on";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto box = outbox::Outbox::open(db);
  OrderWriter writer(box);
  // Only the relay's writes fail (tests/relay/io_fault_shim.cpp); this
  // process, the producer, writes as usual. An instrumented build must
  // accept a preloaded library next to its sanitizer runtime.
  const char* asan = std::getenv("ASAN_OPTIONS");
  RelayProcess relay(
      dir.path(), db, broker.endpoint(), {"--lease", "60s"},
      {std::string("LD_PRELOAD=") + OUTBOX_BIN_IO_FAULT_SHIM,
       "OUTBOX_TEST_IO_FAULT_PATH=" + db.string(),
       "OUTBOX_TEST_IO_FAULT_SWITCH=" + fault_switch.string(),
       "ASAN_OPTIONS=" + std::string(asan != nullptr ? asan : "") + ":verify_asan_link_order=0"});
  Scenario scenario{db, broker, relay, writer};
  scenario.before_condition();
  const auto lease_before = lease_holder_and_epoch(db);
  REQUIRE_FALSE(lease_before.empty());

  std::ofstream(fault_switch).put('1');
  writer.commit(2'000);
  scenario.expect_reported("SQLITE_IOERR");
  CHECK(outbox_status(db).pending > 0);  // nothing the relay settled could be recorded
  std::filesystem::remove(fault_switch);

  scenario.after_condition(lease_before);
}
