// The relay and the broker killed mid-stream, lost acknowledgements, a
// standby relay, and connections cut or gone silent under the relay:
// afterwards the broker holds every msg_id exactly once, in per-key commit
// order.
#include <cstdio>
#include <cstdlib>
#include <map>

#include "cutting_proxy.hpp"
#include "relay_harness.hpp"

using namespace relay_test;

namespace {

// From a relay's "session_failed" log line ("...; retrying in N ms (attempt
// A, ..."): A and N, or -1 when the line has none.
int failure_attempt(const std::string& line) {
  auto at = line.find("(attempt ");
  return at == std::string::npos ? -1 : std::atoi(line.c_str() + at + 9);
}
std::int64_t retry_delay_ms(const std::string& line) {
  auto at = line.find("retrying in ");
  return at == std::string::npos ? -1 : std::atoll(line.c_str() + at + 12);
}

// `count` messages of `payload_bytes` over `keys` keys, committed first, then
// drained by a relay through a proxy that cuts every connection after 2 KB-400
// KB: every one arrives exactly once, in per-key order.
struct CutDrain {
  CutDrain(const char* name, long count, long keys, long payload_bytes)
      : dir(name), broker(dir.path(), dir / "broker.db") {
    const auto db = dir / "app.db";
    REQUIRE(produce(db, count, keys, 0, payload_bytes) == count);
    broker_test::CuttingProxy proxy(dir.path(), broker.endpoint(), {"--cut-every", "2K-400K"});
    INFO("cutting proxy seed " << proxy.seed());
    RelayProcess relay(dir.path(), db, proxy.endpoint());
    // Bounded, not timed: how fast it drains is a benchmark figure (outbox-bench cuts).
    const bool drained = wait_delivered(db, count, 240s);
    log = relay.log();
    INFO(log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
    REQUIRE(drained);
    check_exactly_once_in_order(fetch_all(broker.endpoint()), count);
    // The proxy writes its counts every 100 ms, and a drain can take less.
    CHECK(test_support::wait_until([&] { return proxy.counts()["cut"] > 0; }, 10s));
  }
  test_support::TempDir dir;
  BrokerProcess broker;
  std::string log;  // the relay's
};

const std::vector<std::string> kSmallBatches = {"--batch-size", "100", "--in-flight",   "4",
                                                "--lease",      "1s",  "--ack-timeout", "1s"};

}  // namespace

TEST_CASE("kill -9 of the relay mid-stream loses and duplicates nothing", "[relay][recovery]") {
  test_support::TempDir dir("relay-kill");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  BackgroundProducer producer(dir.path(), db, 10000, 16);
  REQUIRE(wait_schema(db));
  {
    RelayProcess first(dir.path(), db, broker.endpoint(), kSmallBatches);
    INFO(first.log());
    REQUIRE(test_support::wait_until([&] { return outbox_status(db).delivered_total >= 1000; }, 60s,
                                     5ms));
    first.kill9();
  }
  RelayProcess second(dir.path(), db, broker.endpoint(), kSmallBatches);
  auto committed = producer.wait_committed();
  INFO(second.log());
  REQUIRE(wait_delivered(db, committed));
  check_exactly_once_in_order(fetch_all(broker.endpoint()), committed);
  CHECK(broker_counter(broker.endpoint(), "stored") == static_cast<std::uint64_t>(committed));
}

TEST_CASE("kill -9 of the broker mid-stream loses and duplicates nothing", "[relay][recovery]") {
  test_support::TempDir dir("relay-broker-kill");
  auto db = dir / "app.db";
  auto broker_db = dir / "broker.db";
  auto broker = std::make_unique<BrokerProcess>(dir.path(), broker_db);
  auto endpoint = broker->endpoint();
  BackgroundProducer producer(dir.path(), db, 10000, 16);
  REQUIRE(wait_schema(db));
  RelayProcess relay(dir.path(), db, endpoint, kSmallBatches);
  INFO(relay.log());
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).delivered_total >= 1000; }, 60s,
                                   5ms));
  broker->process().signal(SIGKILL);
  REQUIRE(broker->process().wait_for(10s).has_value());
  broker.reset();
  // Same database, same endpoint: the relay reconnects by itself.
  broker =
      std::make_unique<BrokerProcess>(dir.path(), broker_db, std::vector<std::string>{}, endpoint);
  auto committed = producer.wait_committed();
  REQUIRE(wait_delivered(db, committed));
  check_exactly_once_in_order(fetch_all(endpoint), committed);
  CHECK(relay.process().running());
}

TEST_CASE("a lost acknowledgement makes a resend the broker answers DUPLICATE",
          "[relay][recovery]") {
  test_support::TempDir dir("relay-lost-ack");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  REQUIRE(produce(db, 2000, 8) == 2000);
  {
    RelayProcess relay(dir.path(), db, broker.endpoint());
    INFO(relay.log());
    REQUIRE(wait_delivered(db, 2000));
    CHECK(relay.stop().code == 0);
  }
  // Forget every acknowledgement, as if they had been lost before being recorded.
  exec_sql(db,
           "DELETE FROM outbox_delivery;"
           "UPDATE outbox_relay_cursor SET settled_through_seq = 0, delivered_total = 0;");
  CHECK(outbox_status(db).pending == 2000);

  RelayProcess relay(dir.path(), db, broker.endpoint());
  INFO(relay.log());
  REQUIRE(wait_delivered(db, 2000));
  CHECK(broker_counter(broker.endpoint(), "stored") == 2000);
  CHECK(broker_counter(broker.endpoint(), "duplicates") == 2000);
  check_exactly_once_in_order(fetch_all(broker.endpoint()), 2000);
}

TEST_CASE("two relays on one database: one forwards, the standby takes over", "[relay][recovery]") {
  test_support::TempDir dir("relay-standby");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  REQUIRE(produce(db, 1000, 4) == 1000);
  // The standby takes over within one lease after the kill. A lease of 3 s
  // (renewed every second) is not lost by an active relay that a loaded
  // machine (a sanitizer build, tests in parallel) keeps off the CPU or
  // behind the producers' write lock for a moment; with 1 s, 0.7 s was enough.
  const std::vector<std::string> lease = {"--lease", "3s"};

  auto active_args = lease;
  active_args.insert(active_args.end(), {"--holder", "relay-a"});
  auto standby_args = lease;
  standby_args.insert(standby_args.end(), {"--holder", "relay-b"});

  RelayProcess active(dir.path(), db, broker.endpoint(), active_args);
  REQUIRE(wait_delivered(db, 1000));
  CHECK(holds_lease_as(outbox_status(db), "relay-a"));

  RelayProcess standby(dir.path(), db, broker.endpoint(), standby_args);
  REQUIRE(test_support::wait_until(
      [&] { return standby.log().find("standby") != std::string::npos; }, 30s));
  REQUIRE(produce(db, 1000, 4) == 1000);
  REQUIRE(wait_delivered(db, 2000));
  CHECK(holds_lease_as(outbox_status(db), "relay-a"));
  CHECK(standby.log().find("active:") == std::string::npos);

  active.kill9();
  REQUIRE(produce(db, 1000, 4) == 1000);
  INFO(standby.log());
  REQUIRE(wait_delivered(db, 3000));
  CHECK(holds_lease_as(outbox_status(db), "relay-b"));
  CHECK(standby.log().find("active:") != std::string::npos);
  // Each producer run numbers its keys from 1 again, so check counts here;
  // per-key order within one run is covered by the tests above.
  auto stored = fetch_all(broker.endpoint());
  std::set<std::string> ids;
  for (const auto& message : stored) ids.insert(message.msg_id);
  CHECK(stored.size() == 3000);
  CHECK(ids.size() == 3000);
}

TEST_CASE("connections cut every 2 KB-400 KB: 50,000 messages arrive exactly once, in order",
          "[relay][recovery][cuts]") {
  CutDrain drain("relay-cuts", 50000, 64, 256);
  auto& broker = drain.broker;
  const auto& log = drain.log;
  INFO(log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
  // After a cut the new session asked which batches in flight were stored
  // (RESUME) and got some of them back instead of resending them.
  CHECK(broker_counter(broker.endpoint(), "resumes") > 0);
  CHECK(broker_counter(broker.endpoint(), "resumed_batches") > 0);
  // Each cut was noticed from the socket, never by waiting out the ack timeout.
  CHECK(log.find(" lost (closed, reset, or silent past the heartbeat timeout)") !=
        std::string::npos);
  CHECK(log.find("no acknowledgement for batch") == std::string::npos);
  // A session that had opened is reopened at once after a cut, even one that
  // came before its first acknowledgement: only a ninth failure in a row
  // without progress waits for a backoff.
  std::size_t cuts_retried_at_once = 0;
  for (const auto& line : test_support::lines(log)) {
    if (line.find(" lost (closed, reset") == std::string::npos) continue;
    if (failure_attempt(line) > 8) continue;
    if (retry_delay_ms(line) == 0) {
      ++cuts_retried_at_once;
    } else {
      FAIL_CHECK("backed off after a cut of an open session: " << line);
    }
  }
  CHECK(cuts_retried_at_once > 0);
}

TEST_CASE("messages of 16 KB behind connections cut every 2 KB-400 KB all arrive",
          "[relay][recovery][cuts]") {
  // A first window of 64 such messages goes out as batches of 1 MiB, more
  // than any connection carries here: only a window counted in bytes, halved
  // at each cut, gets a batch through whole.
  CutDrain drain("relay-cuts-large", 300, 4, 16 * 1024);
}

TEST_CASE("connections cut before their first acknowledgement: eight at once, then a backoff",
          "[relay][recovery][cuts]") {
  test_support::TempDir dir("relay-early-cuts");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  REQUIRE(produce(db, 500, 4, 0, 256) == 500);
  // Every connection carries its HELLO and WELCOME (well under 3 KB), then
  // breaks inside its first batch (64 messages of 256 B): nothing is ever
  // stored, so every failure is one more in a row without progress.
  broker_test::CuttingProxy proxy(dir.path(), broker.endpoint(), {"--cut-every", "3K-4K"});
  INFO("cutting proxy seed " << proxy.seed());
  RelayProcess relay(dir.path(), db, proxy.endpoint(), {"--backoff-initial", "50ms"});
  REQUIRE(test_support::wait_until(
      [&] { return relay.log().find("(attempt 10,") != std::string::npos; }, 60s));
  auto log = relay.log();
  INFO(log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
  std::map<int, std::int64_t> delay_by_attempt;
  for (const auto& line : test_support::lines(log)) {
    if (line.find("retrying in") == std::string::npos) continue;
    // Nothing is ever stored, so the run never ends: each attempt number
    // comes once.
    delay_by_attempt.emplace(failure_attempt(line), retry_delay_ms(line));
  }
  for (int attempt = 1; attempt <= 8; ++attempt) {
    INFO("attempt " << attempt);
    REQUIRE(delay_by_attempt.count(attempt) == 1);
    CHECK(delay_by_attempt[attempt] == 0);
  }
  // The backoff then starts from its first step (25-50 ms), not from the
  // ninth (6.4-12.8 s); the tenth waits longer.
  REQUIRE(delay_by_attempt.count(9) == 1);
  CHECK(delay_by_attempt[9] >= 25);
  CHECK(delay_by_attempt[9] <= 50);
  REQUIRE(delay_by_attempt.count(10) == 1);
  CHECK(delay_by_attempt[10] >= 50);
  CHECK(delay_by_attempt[10] <= 100);
  CHECK(outbox_status(db).delivered_total == 0);
}

TEST_CASE("a connection that goes silent is given up by heartbeat, not by the ack timeout",
          "[relay][recovery][cuts]") {
  test_support::TempDir dir("relay-silent");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto committed = produce(db, 2000, 16, 0, 256);
  // Every connection stops forwarding after 100-200 KB without closing.
  broker_test::CuttingProxy proxy(dir.path(), broker.endpoint(),
                                  {"--cut-every", "100K-200K", "--freeze", "1"});
  INFO("cutting proxy seed " << proxy.seed());
  RelayProcess relay(dir.path(), db, proxy.endpoint(), {"--ack-timeout", "600s"});
  bool drained = wait_delivered(db, committed, 200s);
  auto log = relay.log();
  INFO(log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
  REQUIRE(drained);
  check_exactly_once_in_order(fetch_all(broker.endpoint()), committed);
  CHECK(test_support::wait_until([&] { return proxy.counts()["freeze"] > 0; }, 10s));
  CHECK(log.find(" lost (closed, reset, or silent past the heartbeat timeout)") !=
        std::string::npos);
  CHECK(log.find("no acknowledgement for batch") == std::string::npos);
}

TEST_CASE("two relays with the same host and pid never share the lease", "[relay][recovery]") {
  test_support::TempDir dir("relay-same-name");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  REQUIRE(produce(db, 500, 4) == 500);
  // Both present themselves as pid 1 on host "box", as two containers on host
  // networking would with the default name.
  // A lease of 3 s, as in the standby test above.
  const std::vector<std::string> same_name = {"--holder", "box:1", "--lease", "3s"};

  RelayProcess first(dir.path(), db, broker.endpoint(), same_name);
  REQUIRE(wait_delivered(db, 500));
  auto first_holder = outbox_status(db).lease_holder;
  CHECK(holds_lease_as(outbox_status(db), "box:1"));

  RelayProcess second(dir.path(), db, broker.endpoint(), same_name);
  INFO(second.log());
  REQUIRE(test_support::wait_until(
      [&] { return second.log().find("standby") != std::string::npos; }, 30s));
  REQUIRE(produce(db, 500, 4) == 500);
  REQUIRE(wait_delivered(db, 1000));
  CHECK(outbox_status(db).lease_holder == first_holder);
  CHECK(second.log().find("active:") == std::string::npos);

  first.kill9();
  REQUIRE(test_support::wait_until(
      [&] { return second.log().find("active:") != std::string::npos; }, 30s));
  auto after = outbox_status(db);
  CHECK(holds_lease_as(after, "box:1"));
  CHECK(after.lease_holder != first_holder);
}
