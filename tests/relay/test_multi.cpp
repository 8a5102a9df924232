// outbox-relay run --db-dir: one process forwards a directory of outbox
// databases over shared broker connections; databases appear and go while it
// runs; two processes share a directory and one takes over from the other.
#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include "cutting_proxy.hpp"
#include "multi_harness.hpp"
#include "outbox/relay_store.hpp"
#include "relay/relay.hpp"
#include "relay/sink.hpp"
#include "sqlite/sqlite.hpp"

using namespace relay_test;

TEST_CASE("one relay process forwards a directory of databases as they come and go",
          "[integration]") {
  TenantDirectory setup("relay-multi");
  auto& [dir, tenants_dir, broker] = setup;

  auto tenants = make_tenants(tenants_dir, 20);
  for (auto& tenant : tenants) tenant->writer.commit(25);
  // Not an outbox: logged and skipped, the rest goes on.
  std::ofstream(tenants_dir / "notes.db") << "not a database";

  auto relay = RelayProcess::for_directory(dir.path(), tenants_dir, broker.endpoint(),
                                           {"--connections", "2", "--rescan-interval", "1s"});
  REQUIRE(wait_stored(broker.endpoint(), committed(tenants)));

  // More commits everywhere, one large backlog, and a database that appears.
  for (auto& tenant : tenants) tenant->writer.commit(10);
  tenants[3]->writer.commit(2000);
  tenants.push_back(std::make_unique<Tenant>(tenants_dir, "late"));
  tenants.back()->writer.commit(30);
  REQUIRE(wait_stored(broker.endpoint(), committed(tenants)));

  // A database that goes away is no longer forwarded.
  auto gone_path = tenants_dir / "t19.db";
  tenants.erase(tenants.begin() + 19);
  for (const char* suffix : {"", "-wal", "-shm", "-outbox-workers.lock"}) {
    std::filesystem::remove(gone_path.string() + suffix);
  }
  CHECK(test_support::wait_until(
      [&] { return relay->log().find("database t19.db: gone") != std::string::npos; }, 30s));

  INFO(relay->log());
  CHECK(relay->stop().code == 0);
  auto stored = fetch_all(broker.endpoint());
  check_exactly_once_in_order(stored, committed(tenants) + 35);  // t19's 35 stay stored
  CHECK(broker_counter(broker.endpoint(), "conflicts") == 0);
  const auto log = relay->log();
  CHECK(log.find("over 2 connections") != std::string::npos);
  CHECK(log.find("database late.db: found") != std::string::npos);
  CHECK(log.find("database notes.db: ") != std::string::npos);

  // status --db-dir: every database and the totals, the file that is no outbox named.
  auto json = test_support::run(relay_binary(),
                                {"status", "--db-dir", tenants_dir.string(), "--json"}, 60s);
  INFO(json.err);
  REQUIRE(json.status.code == 0);
  const auto status = nlohmann::json::parse(json.out);
  const auto& totals = status.at("totals");
  CHECK(totals.at("databases") == 21);
  CHECK(totals.at("unreadable") == 1);
  CHECK(totals.at("pending") == 0);
  CHECK(totals.at("dead") == 0);
  std::map<std::string, nlohmann::json> databases;
  for (const auto& entry : status.at("databases"))
    databases[entry.at("db").get<std::string>()] = entry;
  REQUIRE(databases.count("late.db") == 1);
  CHECK(databases.at("late.db").at("pending") == 0);
  REQUIRE(databases.count("notes.db") == 1);
  CHECK(databases.at("notes.db").at("error").is_string());
  CHECK(databases.count("t19.db") == 0);
  CHECK(json.out.find("t19.db") == std::string::npos);
  auto text = test_support::run(relay_binary(), {"status", "--db-dir", tenants_dir.string()}, 60s);
  REQUIRE(text.status.code == 0);
  CHECK(text.out.find("total: 21 databases (1 unreadable, 0 sharing an origin id), pending 0") !=
        std::string::npos);
  auto both = test_support::run(relay_binary(),
                                {"status", "--db-dir", tenants_dir.string(), "--db", "x.db"}, 60s);
  CHECK(both.status.code == 2);
}

TEST_CASE("two relay processes share a directory, and after kill -9 of one the other takes over",
          "[integration]") {
  TenantDirectory setup("relay-multi-takeover");
  auto& [dir, tenants_dir, broker] = setup;
  auto tenants = make_tenants(tenants_dir, 10);
  for (auto& tenant : tenants) tenant->writer.commit(20);

  const std::vector<std::string> flags = {"--lease", "1s", "--rescan-interval", "500ms"};
  auto with_holder = [&](const std::string& holder) {
    auto all = flags;
    all.insert(all.end(), {"--holder", holder});
    return RelayProcess::for_directory(dir.path(), tenants_dir, broker.endpoint(), all);
  };
  auto first = with_holder("first");
  REQUIRE(wait_stored(broker.endpoint(), committed(tenants)));
  auto second = with_holder("second");

  // Commits keep coming while the first process holds the leases it took.
  for (int round = 0; round < 5; ++round) {
    for (auto& tenant : tenants) tenant->writer.commit(5);
  }
  int held_by_first = 0;
  for (int i = 0; i < 10; ++i) {
    if (holds_lease_as(outbox_status(tenants_dir / test_support::concat("t", i, ".db")), "first")) {
      ++held_by_first;
    }
  }
  INFO(first->log());
  REQUIRE(held_by_first > 0);
  first->kill9();
  for (int round = 0; round < 5; ++round) {
    for (auto& tenant : tenants) tenant->writer.commit(5);
  }
  REQUIRE(wait_stored(broker.endpoint(), committed(tenants)));

  // Every database is forwarded by the second process now.
  for (int i = 0; i < 10; ++i) {
    auto db = tenants_dir / test_support::concat("t", i, ".db");
    CHECK(
        test_support::wait_until([&] { return holds_lease_as(outbox_status(db), "second"); }, 30s));
  }
  INFO(second->log());
  CHECK(second->stop().code == 0);
  check_exactly_once_in_order(fetch_all(broker.endpoint()), committed(tenants));
  CHECK(broker_counter(broker.endpoint(), "conflicts") == 0);
}

TEST_CASE("a database with one message is not held back by another's large backlog",
          "[integration]") {
  TenantDirectory setup("relay-multi-fair");
  auto& [dir, tenants_dir, broker] = setup;
  Tenant big(tenants_dir, "big");
  Tenant small(tenants_dir, "small");
  for (int i = 0; i < 12; ++i) big.writer.commit(5000);

  // Batches of 100: draining the backlog takes hundreds of rounds.
  auto relay = RelayProcess::for_directory(dir.path(), tenants_dir, broker.endpoint(),
                                           {"--batch-size", "100", "--connections", "1"});
  REQUIRE(test_support::wait_until([&] { return broker_counter(broker.endpoint(), "stored") > 0; },
                                   60s, 1ms));
  small.writer.commit(1);
  REQUIRE(wait_stored(broker.endpoint(), big.writer.committed() + 1));

  // The small database's message went in while the backlog was draining,
  // not after it: messages of the large backlog were stored after it.
  auto stored = fetch_all(broker.endpoint());
  check_exactly_once_in_order(stored, big.writer.committed() + 1);
  std::uint64_t small_offset = 0, big_last_offset = 0;
  for (const auto& message : stored) {
    if (message.key.rfind("small-", 0) == 0) small_offset = message.offset;
    if (message.key.rfind("big-", 0) == 0) big_last_offset = message.offset;
  }
  INFO("small at offset " << small_offset << ", last of the backlog at " << big_last_offset);
  REQUIRE(small_offset > 0);
  CHECK(small_offset < big_last_offset);
  auto status = relay->stop();
  INFO(relay->log());
  CHECK(status.code == 0);
}

TEST_CASE("stopping a directory relay waits one drain timeout in all and not one per database",
          "[integration]") {
  TenantDirectory setup("relay-multi-stop");
  auto& [dir, tenants_dir, broker] = setup;
  // A plain forwarder between relay and broker: it keeps the relay's
  // connection alive (ZMTP heartbeats answered) while the broker behind it is
  // stopped, so batches go out and no acknowledgement comes back.
  broker_test::CuttingProxy forwarder(dir.path(), broker.endpoint(), {"--faults-off"});
  constexpr int kTenants = 8;
  auto tenants = make_tenants(tenants_dir, kTenants);
  for (auto& tenant : tenants) tenant->writer.commit(1);
  auto relay = RelayProcess::for_directory(
      dir.path(), tenants_dir, forwarder.endpoint(),
      {"--connections", "1", "--drain-timeout", "2s", "--ack-timeout", "60s", "--lease", "30s"});
  REQUIRE(wait_stored(broker.endpoint(), committed(tenants)));

  REQUIRE(broker.process().pause());
  struct Continue {
    test_support::ChildProcess& process;
    ~Continue() { process.signal(SIGCONT); }
  } continue_broker{broker.process()};
  const auto sent_before = forwarder.fresh_counts()["forwarded_up"];
  for (auto& tenant : tenants) tenant->writer.commit(1);
  // Every database's batch is on its way to the stopped broker.
  REQUIRE(test_support::wait_until(
      [&] { return forwarder.counts()["forwarded_up"] >= sent_before + kTenants; }, 60s));
  const auto stopping = std::chrono::steady_clock::now();
  const auto status = relay->stop();
  const auto took = std::chrono::steady_clock::now() - stopping;
  INFO(relay->log());
  CHECK(status.code == 0);
  // A bound, not a speed: one drain timeout (2 s) for all the databases
  // together, where waiting one each took 8 x 2 s. The bound leaves a loaded
  // machine (sanitizers, parallel tests) 10 s over the one drain timeout.
  CHECK(took < std::chrono::seconds(12));

  // Nothing is lost: the next relay sends the unacknowledged batches again.
  broker.process().signal(SIGCONT);
  auto again = RelayProcess::for_directory(dir.path(), tenants_dir, broker.endpoint(),
                                           {"--connections", "1"});
  REQUIRE(wait_stored(broker.endpoint(), committed(tenants)));
  // The broker may have stored the batches on its own once continued: stop
  // the relay only once it is running (its SIGTERM handler installed).
  REQUIRE(test_support::wait_until(
      [&] { return again->log().find("forwarding the outbox databases") != std::string::npos; },
      60s));
  CHECK(again->stop().code == 0);
  check_exactly_once_in_order(fetch_all(broker.endpoint()), committed(tenants));
}

namespace {

// A sink whose queue is full for the first send (a shared connection carrying
// other databases' batches): it refuses it, then takes and acknowledges
// every batch at once.
// With `session_ends` false: a sink whose queue is full for the first send
// (a shared connection carrying other databases' batches). With it true: a
// sink whose session ended before the first send while nothing was in flight
// (a shared connection that broke): it refuses every send of that session and
// says why in a failure event for no batch. Either way it then takes and
// acknowledges every batch at once.
class FullOnceSink final : public relay::Sink {
 public:
  explicit FullOnceSink(bool session_ends = false) : session_ends_(session_ends) {}
  void set_lease(relay::SinkLease) override {}
  relay::SessionResult open_session(std::chrono::milliseconds) override {
    ++sessions;
    return relay::SessionResult::opened();
  }
  bool send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) override {
    ++sends;
    if (session_ends_ && sessions == 1) {
      if (sends == 1) {
        relay::SinkEvent ended;
        ended.kind = relay::SinkEvent::Kind::failed;
        ended.error = "connection lost";
        events.push_back(std::move(ended));
      }
      return false;
    }
    if (!session_ends_ && sends == 1) return false;
    relay::SinkEvent event;
    event.batch_id = batch_id;
    for (std::size_t i = 0; i < messages.size(); ++i) {
      event.deliveries.push_back({relay::DeliveryStatus::stored, ++offset, {}});
    }
    events.push_back(std::move(event));
    return true;
  }
  std::optional<relay::SinkEvent> poll(std::chrono::milliseconds) override {
    if (events.empty()) return std::nullopt;
    auto event = std::move(events.front());
    events.erase(events.begin());
    return event;
  }
  std::string describe() const override { return "full-once sink"; }

  int sends = 0;
  int sessions = 0;
  std::uint64_t offset = 0;
  std::vector<relay::SinkEvent> events;

 private:
  bool session_ends_;
};

// A database in `dir` with one message pending, opened for a relay.
outbox::RelayStore store_with_one_message(const test_support::TempDir& dir) {
  {
    auto box = outbox::Outbox::open(dir / "tenant.db", uuid_v7_ids());
    outbox::Transaction tx(box);
    tx.enqueue({.topic = "t", .key = "k", .payload = "one"});
    tx.commit();
  }
  return outbox::RelayStore::open(dir / "tenant.db");
}

}  // namespace

TEST_CASE("a stepped relay whose batch the sink refused is not idle and sends it again soon",
          "[relay][multi]") {
  test_support::TempDir dir("relay-full-once");
  auto store = store_with_one_message(dir);
  FullOnceSink sink;
  relay::Relay relay(store, sink, {});
  relay::StepResult result;
  for (int step = 0; step < 10 && sink.sends == 0; ++step) result = relay.step();
  REQUIRE(sink.sends == 1);  // refused
  // Idle would let a directory close it with the message pending.
  CHECK(result.state != relay::StepResult::State::idle);
  CHECK(result.call_again_by <= std::chrono::steady_clock::now() + std::chrono::seconds(1));
  for (int step = 0; step < 10 && store.backlog().pending > 0; ++step) relay.step();
  CHECK(sink.sends == 2);
  CHECK(store.backlog().pending == 0);
}

TEST_CASE("a relay handed the lease its opener claimed carries on with it and gives it back",
          "[relay][multi]") {
  test_support::TempDir dir("relay-adopted-lease");
  auto store = store_with_one_message(dir);
  FullOnceSink sink;
  relay::RelayConfig config;
  config.holder = "directory";
  config.instance_id = "0badcafe";
  config.lease_ttl = std::chrono::seconds(10);
  relay::Relay relay(store, sink, config);
  // Claimed for a longer time than the relay's own ttl: a second claim by the
  // relay would bring the expiry down to ten seconds from now.
  const auto claimed_at = std::chrono::steady_clock::now();
  auto lease = store.claim_lease(relay.lease_holder(), std::chrono::minutes(10));
  REQUIRE(lease);
  CHECK_THROWS_AS(relay.adopt_lease({"someone-else", lease->epoch, lease->expires_at}, claimed_at),
                  std::invalid_argument);
  relay.adopt_lease(*lease, claimed_at);
  for (int step = 0; step < 10 && store.backlog().pending > 0; ++step) relay.step();
  CHECK(store.backlog().pending == 0);
  CHECK(relay.holds_lease());
  auto info = store.lease_info();
  REQUIRE(info);
  CHECK(info->holder == "directory:0badcafe");
  CHECK(info->epoch == lease->epoch);
  CHECK(info->expires_at > outbox::system_now() + std::chrono::minutes(5));
  relay.finish();
  CHECK_FALSE(relay.holds_lease());
  CHECK(store.lease_info()->expired);

  // A relay handed a lease and never stepped gives it back when it finishes,
  // so that a standby takes over at once.
  relay::Relay unused(store, sink, {});
  auto second = store.claim_lease(unused.lease_holder(), std::chrono::minutes(10));
  REQUIRE(second);
  unused.adopt_lease(*second, std::chrono::steady_clock::now());
  CHECK_FALSE(store.lease_info()->expired);
  unused.finish();
  CHECK(store.lease_info()->expired);
}

TEST_CASE("a stepped relay whose session ended with nothing in flight opens another and sends",
          "[relay][multi]") {
  test_support::TempDir dir("relay-session-ended");
  auto store = store_with_one_message(dir);
  FullOnceSink sink(/*session_ends=*/true);
  relay::Relay relay(store, sink, {});
  // Before, every send of the ended session was refused as if the queue were
  // full, the failure was never read (nothing in flight, nothing awaited), and
  // the message waited for ever.
  for (int step = 0; step < 50 && store.backlog().pending > 0; ++step) {
    auto result = relay.step();
    if (store.backlog().pending > 0) {
      std::this_thread::sleep_until(std::min(
          result.call_again_by, std::chrono::steady_clock::now() + std::chrono::milliseconds(50)));
    }
  }
  CHECK(sink.sessions == 2);
  CHECK(store.backlog().pending == 0);
}

// A relay carrying many databases steps them on one thread: each attempt on
// a database another process keeps locked costs that thread its busy
// timeout. Stepped again before its backoff ended (a commit, the directory's
// fallback check), it used to try again at once, and a database held with
// BEGIN EXCLUSIVE delayed the others' messages by up to 13 s.
TEST_CASE("a stepped relay of a database another process keeps locked waits out its backoff",
          "[relay][multi]") {
  test_support::TempDir dir("relay-locked");
  auto store = store_with_one_message(dir);
  store.set_busy_timeout(std::chrono::milliseconds(20));
  FullOnceSink sink;
  relay::RelayConfig config;
  config.lease_ttl = std::chrono::milliseconds(300);  // renewed every 100 ms
  config.backoff.initial = std::chrono::seconds(2);
  relay::Relay relay(store, sink, config);
  for (int step = 0; step < 10 && store.backlog().pending > 0; ++step) relay.step();
  REQUIRE(store.backlog().pending == 0);

  auto locker = sqlite::open_connection(dir / "tenant.db", {});
  sqlite::exec(locker.get(), "BEGIN EXCLUSIVE");
  relay::StepResult result;
  auto step_started = std::chrono::steady_clock::now();
  const auto deadline = step_started + std::chrono::seconds(20);
  while (relay.counters().database_errors == 0 && std::chrono::steady_clock::now() < deadline) {
    step_started = std::chrono::steady_clock::now();
    result = relay.step();
    std::this_thread::sleep_until(std::min(
        result.call_again_by, std::chrono::steady_clock::now() + std::chrono::milliseconds(50)));
  }
  REQUIRE(relay.counters().database_errors == 1);  // renewing the lease failed
  // Not called again before the backoff (at least half its first step, 1 s,
  // from the failed step: measured from its start, not from now, so that a
  // test thread kept off the CPU for a while cannot fail this)...
  CHECK(result.call_again_by >= step_started + std::chrono::milliseconds(1000));
  // ...and stepped anyway, it does not touch the database.
  for (int step = 0; step < 5; ++step) relay.step();
  CHECK(relay.counters().database_errors == 1);

  sqlite::exec(locker.get(), "ROLLBACK");
  std::this_thread::sleep_until(result.call_again_by);
  relay.step();
  CHECK(relay.counters().database_errors == 1);
  CHECK(relay.holds_lease());
  relay.finish();
}

TEST_CASE("a stepped relay of a database that commits rarely warns of no stall", "[relay][multi]") {
  test_support::TempDir dir("relay-rare-commits");
  auto store = store_with_one_message(dir);
  FullOnceSink sink;
  std::ostringstream lines;
  auto logger = std::make_shared<spdlog::logger>(
      "relay", std::make_shared<spdlog::sinks::ostream_sink_mt>(lines));
  relay::RelayConfig config;
  config.logger = logger;
  config.ack_timeout = std::chrono::milliseconds(200);
  config.stall_ack_timeouts = 1;
  relay::Relay relay(store, sink, config);
  auto step_until_delivered = [&] {
    for (int step = 0; step < 50 && store.backlog().pending > 0; ++step) {
      auto result = relay.step();
      if (store.backlog().pending > 0) {
        std::this_thread::sleep_until(
            std::min(result.call_again_by,
                     std::chrono::steady_clock::now() + std::chrono::milliseconds(50)));
      }
    }
    REQUIRE(store.backlog().pending == 0);
  };
  step_until_delivered();
  // Idle for five stall times (what is tested is time passing, not a wait
  // for something), then one commit: it has waited for nothing yet.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  {
    auto box = outbox::Outbox::open(dir / "tenant.db", uuid_v7_ids());
    outbox::Transaction tx(box);
    tx.enqueue({.topic = "t", .key = "k", .payload = "two"});
    tx.commit();
  }
  const auto committed_at = std::chrono::steady_clock::now();
  step_until_delivered();
  const auto took = std::chrono::steady_clock::now() - committed_at;
  INFO(lines.str());
  // A delivery that itself took the stall time (this thread kept off a loaded
  // machine's CPU) may rightly be reported; the idle second before it never is.
  if (took < config.ack_timeout) CHECK(lines.str().find("no progress") == std::string::npos);
}

TEST_CASE(
    "a database copied from another in the directory is refused, naming both, until it "
    "gets an origin id of its own",
    "[integration]") {
  TenantDirectory setup("relay-multi-copy");
  auto& [dir, tenants_dir, broker] = setup;
  auto tenants = make_tenants(tenants_dir, 3);
  for (auto& tenant : tenants) tenant->writer.commit(20);
  auto relay = RelayProcess::for_directory(dir.path(), tenants_dir, broker.endpoint(),
                                           {"--lease", "1s", "--rescan-interval", "1s"});
  REQUIRE(wait_stored(broker.endpoint(), committed(tenants)));

  // t0's copy (its origin id included), made outside and moved in whole.
  auto copy_path = tenants_dir / "copy.db";
  exec_sql(tenants_dir / "t0.db", "VACUUM INTO '" + (dir.path() / "copy.db").string() + "'");
  std::filesystem::rename(dir.path() / "copy.db", copy_path);
  Tenant copy(tenants_dir, "copy");
  copy.writer.commit(20);
  for (auto& tenant : tenants) tenant->writer.commit(10);
  REQUIRE(wait_stored(broker.endpoint(), committed(tenants)));
  const std::string refusal = "database copy.db: has the same origin id '";
  REQUIRE(test_support::wait_until([&] { return relay->log().find(refusal) != std::string::npos; },
                                   30s));
  const auto log = relay->log();
  INFO(log);
  const auto line =
      log.substr(log.find(refusal), log.find('\n', log.find(refusal)) - log.find(refusal));
  CHECK(line.find((tenants_dir / "t0.db").string()) != std::string::npos);
  CHECK(line.find(copy_path.string()) != std::string::npos);
  CHECK(broker_counter(broker.endpoint(), "stored") ==
        static_cast<std::uint64_t>(committed(tenants)));

  // status --db-dir names the two of them.
  auto json = test_support::run(relay_binary(),
                                {"status", "--db-dir", tenants_dir.string(), "--json"}, 60s);
  REQUIRE(json.status.code == 0);
  auto status = nlohmann::json::parse(json.out);
  std::map<std::string, nlohmann::json> databases;
  for (const auto& entry : status.at("databases"))
    databases[entry.at("db").get<std::string>()] = entry;
  REQUIRE(databases.count("copy.db") == 1);
  REQUIRE(databases.count("t0.db") == 1);
  CHECK(databases.at("copy.db").at("pending") == 20);
  CHECK(databases.at("copy.db").at("same_origin_as") == nlohmann::json::array({"t0.db"}));
  CHECK(databases.at("t0.db").at("same_origin_as") == nlohmann::json::array({"copy.db"}));
  CHECK(databases.at("copy.db").at("origin_id") == databases.at("t0.db").at("origin_id"));
  CHECK(status.at("totals").at("same_origin") == 2);
  auto text = test_support::run(relay_binary(), {"status", "--db-dir", tenants_dir.string()}, 60s);
  CHECK(text.out.find("same origin id '") != std::string::npos);
  CHECK(text.out.find(": copy.db, t0.db (copies of one database)") != std::string::npos);

  // A new origin id for the copy (docs/operations.md): it is forwarded too.
  exec_sql(copy_path, "DELETE FROM outbox_meta WHERE key = 'origin_id'");
  copy.writer.commit(5);
  REQUIRE(wait_stored(broker.endpoint(), committed(tenants) + copy.writer.committed()));
  CHECK(relay->stop().code == 0);
  CHECK(broker_counter(broker.endpoint(), "conflicts") == 0);
  check_exactly_once_in_order(fetch_all(broker.endpoint()),
                              committed(tenants) + copy.writer.committed());
}
