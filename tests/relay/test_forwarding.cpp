// outbox-relay forwarding an outbox to a real outbox-broker.
#include <fstream>

#include <zmq.h>

#include <nlohmann/json.hpp>
#include <outbox/outbox.hpp>

#include "relay_harness.hpp"

using namespace relay_test;

TEST_CASE("ten thousand committed messages are stored exactly once, in per-key order", "[relay]") {
  test_support::TempDir dir("relay-forward");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  REQUIRE(produce(db, 10000, 16) == 10000);

  RelayProcess relay(dir.path(), db, broker.endpoint());
  INFO(relay.log());
  REQUIRE(wait_delivered(db, 10000));
  auto after = outbox_status(db);
  CHECK(after.pending == 0);
  CHECK(after.dead == 0);
  CHECK(holds_lease_as(after, ""));  // host:pid:instance by default

  check_exactly_once_in_order(fetch_all(broker.endpoint()), 10000);
  CHECK(broker_counter(broker.endpoint(), "stored") == 10000);
  CHECK(broker_counter(broker.endpoint(), "duplicates") == 0);

  CHECK_FALSE(after.lease_expired);
  auto exit = relay.stop();
  CHECK(exit.exited);
  CHECK(exit.code == 0);
  CHECK(outbox_status(db).lease_expired);  // released on the way out: a standby need not wait
}

TEST_CASE("a relay stopped right after an acknowledgement has written its outcome", "[relay]") {
  test_support::TempDir dir("relay-stop-outcome");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  broker::Client observer(broker.endpoint());
  // The outcome of an acknowledged message may wait in memory for a few
  // milliseconds, to be written with the next ones. Stopped (SIGTERM) as soon
  // as the broker has stored the message, the relay still leaves nothing
  // pending for the next relay to resend.
  for (long round = 1; round <= 5; ++round) {
    REQUIRE(produce(db, 1, 1) == 1);
    RelayProcess relay(dir.path(), db, broker.endpoint());
    REQUIRE(test_support::wait_until(
        [&] {
          auto stats = observer.stats(20s);
          return stats.ok() &&
                 broker_test::counter(*stats, "stored") == static_cast<std::uint64_t>(round);
        },
        60s, 1ms));
    CHECK(relay.stop().code == 0);
    INFO(relay.log());
    CHECK(outbox_status(db).pending == 0);
  }
  CHECK(broker_counter(broker.endpoint(), "duplicates") == 0);
}

TEST_CASE("rolled-back transactions never reach the broker", "[relay]") {
  test_support::TempDir dir("relay-rollback");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  REQUIRE(produce(db, 0, 1) == 0);  // the schema, so the relay can start first
  RelayProcess relay(dir.path(), db, broker.endpoint());
  // Every third transaction rolls back; the relay runs while they commit.
  auto committed = produce(db, 3000, 5, 3);
  REQUIRE(committed == 2000);
  INFO(relay.log());
  REQUIRE(wait_delivered(db, committed));
  check_exactly_once_in_order(fetch_all(broker.endpoint()), committed);
}

TEST_CASE("a refused message is dead and holds back its key until dropped", "[relay]") {
  test_support::TempDir dir("relay-dead");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db", {"--max-message-bytes", "1k"});
  std::string too_large;
  {
    auto box = outbox::Outbox::open(db);
    enqueue_one(box, "a", "a:1");
    too_large = enqueue_one(box, "a", std::string(4096, 'x'));  // above the broker's limit
    enqueue_one(box, "a", "a:2");
    enqueue_one(box, "b", "b:1");
  }
  RelayProcess relay(dir.path(), db, broker.endpoint());
  INFO(relay.log());
  REQUIRE(wait_delivered(db, 2));  // a:1 and b:1; a:2 waits behind the dead message
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).dead == 1; }, 30s, 20ms));
  CHECK(outbox_status(db).pending == 1);

  auto dead = test_support::run(relay_binary(), {"dead", "--db", db.string(), "--json"});
  CHECK(dead.status.code == 0);
  const auto dead_lines = json_lines(dead.out);
  REQUIRE(dead_lines.size() == 1);
  CHECK(dead_lines[0].at("msg_id") == too_large);
  // Checked before sending.
  CHECK_THAT(dead_lines[0].at("reason").get<std::string>(),
             Catch::Contains("UNDELIVERABLE: too large"));

  // Replaying it changes nothing (it is dead again at once)...
  auto replay =
      test_support::run(relay_binary(), {"replay", "--db", db.string(), "--msg-id", too_large});
  CHECK(replay.status.code == 0);
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).dead == 1; }, 30s, 20ms));
  // ...dropping it lets a:2 go.
  auto drop =
      test_support::run(relay_binary(), {"drop", "--db", db.string(), "--msg-id", too_large});
  CHECK(drop.status.code == 0);
  REQUIRE(wait_delivered(db, 3));

  auto stored = fetch_all(broker.endpoint());
  std::vector<std::string> payloads;
  for (const auto& message : stored) payloads.push_back(message.payload);
  CHECK(payloads == std::vector<std::string>{"a:1", "b:1", "a:2"});
  CHECK(outbox_status(db).dead == 0);
}

TEST_CASE("with --on-dead skip later messages of a dead message's key go on", "[relay]") {
  test_support::TempDir dir("relay-skip");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db", {"--max-message-bytes", "1k"});
  {
    auto box = outbox::Outbox::open(db);
    enqueue_one(box, "a", "a:1");
    enqueue_one(box, "a", std::string(4096, 'x'));
    enqueue_one(box, "a", "a:2");
  }
  RelayProcess relay(dir.path(), db, broker.endpoint(), {"--on-dead", "skip"});
  INFO(relay.log());
  REQUIRE(wait_delivered(db, 2));
  CHECK(outbox_status(db).dead == 1);
  CHECK(outbox_status(db).pending == 0);
}

TEST_CASE("delivered rows past the retention time are deleted, the newest kept", "[relay]") {
  test_support::TempDir dir("relay-retention");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  REQUIRE(produce(db, 3000, 4) == 3000);
  RelayProcess relay(dir.path(), db, broker.endpoint(),
                     {"--retention", "1ms", "--cleanup-interval", "50ms"});
  INFO(relay.log());
  REQUIRE(wait_delivered(db, 3000));
  // The newest row stays so that seq values are never reused.
  REQUIRE(
      test_support::wait_until([&] { return outbox_status(db).delivered_kept == 1; }, 60s, 20ms));
  auto after = outbox_status(db);
  CHECK(after.delivered_total == 3000);
  CHECK(after.pending == 0);
  // New commits still get new seqs and are forwarded after the cleanup.
  REQUIRE(produce(db, 10, 2) == 10);
  REQUIRE(wait_delivered(db, 3010));
  CHECK(broker_counter(broker.endpoint(), "stored") == 3010);
}

TEST_CASE("settings can come from a config file", "[relay]") {
  test_support::TempDir dir("relay-config");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  REQUIRE(produce(db, 500, 3) == 500);
  {
    std::ofstream config(dir / "relay.toml");
    config << "# outbox-relay settings\n"
           << "[run]\n"
           << "db = \"" << db.string() << "\"\n"
           << "broker = \"" << broker.endpoint() << "\"\n"
           << "batch-size = 64\n"
           << "in-flight = 2\n"
           << "holder = \"from-config\"\n";
  }
  test_support::ChildProcess relay(relay_binary(),
                                   {"run", "--config", (dir / "relay.toml").string()}, dir.path());
  INFO(relay.stderr_text());
  REQUIRE(wait_delivered(db, 500));
  CHECK(holds_lease_as(outbox_status(db), "from-config"));
  check_exactly_once_in_order(fetch_all(broker.endpoint()), 500);
}

TEST_CASE("with CURVE the relay forwards only with a key the broker allows", "[relay]") {
  if (!zmq_has("curve")) {
    WARN("libzmq without CURVE: not tested");
    return;
  }
  test_support::TempDir dir("relay-curve");
  char server_public[41], server_secret[41], relay_public[41], relay_secret[41], other_public[41],
      other_secret[41];
  REQUIRE(zmq_curve_keypair(server_public, server_secret) == 0);
  REQUIRE(zmq_curve_keypair(relay_public, relay_secret) == 0);
  REQUIRE(zmq_curve_keypair(other_public, other_secret) == 0);
  std::ofstream(dir / "server.secret") << server_secret << "\n";
  std::ofstream(dir / "server.public") << server_public << "\n";
  std::ofstream(dir / "allowed") << "# relays\n" << relay_public << "\n";
  std::ofstream(dir / "relay.secret") << relay_secret << "\n";
  std::ofstream(dir / "other.secret") << other_secret << "\n";
  BrokerProcess broker(dir.path(), dir / "broker.db",
                       {"--curve-secret-key-file", (dir / "server.secret").string(),
                        "--allowed-clients-file", (dir / "allowed").string()});
  auto db = dir / "app.db";
  REQUIRE(produce(db, 200, 2) == 200);

  {
    RelayProcess intruder(
        dir.path(), db, broker.endpoint(),
        {"--curve-server-public-key-file", (dir / "server.public").string(),
         "--curve-secret-key-file", (dir / "other.secret").string(), "--connect-timeout", "200ms"});
    REQUIRE(test_support::wait_until(
        [&] { return intruder.log().find("retrying in") != std::string::npos; }, 30s));
    CHECK(outbox_status(db).delivered_total == 0);
    CHECK(intruder.stop().code == 0);
  }

  RelayProcess relay(dir.path(), db, broker.endpoint(),
                     {"--curve-server-public-key-file", (dir / "server.public").string(),
                      "--curve-secret-key-file", (dir / "relay.secret").string()});
  INFO(relay.log());
  REQUIRE(wait_delivered(db, 200));
  check_exactly_once_in_order(
      fetch_all_curve(broker.endpoint(), server_public, relay_public, relay_secret), 200);
}
