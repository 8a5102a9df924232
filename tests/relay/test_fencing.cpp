// Fencing a stale relay: a relay paused between reading messages and sending
// them, past its lease, while a standby takes over and delivers, must not
// store anything when it goes on, even where the broker has long forgotten
// the msg_ids (a finite dedup window). The broker refuses its lease epoch;
// the relay notices it lost the lease and goes standby.
#include <set>

#include <nlohmann/json.hpp>
#include <outbox/outbox.hpp>

#include "holding_sink.hpp"
#include "relay/broker_sink.hpp"
#include "relay_harness.hpp"

using namespace relay_test;

TEST_CASE("a relay paused past its lease between reading and sending stores nothing",
          "[relay][recovery]") {
  test_support::TempDir dir("relay-fencing");
  auto db = dir / "app.db";
  // The broker forgets msg_ids after a second: dedup alone cannot catch a late resend.
  BrokerProcess broker(dir.path(), dir / "broker.db",
                       {"--dedup-window", "1s", "--allow-short-dedup-window"});
  REQUIRE(produce(db, 200, 4) == 200);

  auto store = outbox::RelayStore::open(db);
  relay::BrokerSinkOptions sink_options;
  sink_options.endpoint = broker.endpoint();
  sink_options.producer = "paused";
  relay::BrokerSink broker_sink(sink_options);
  HoldingSink sink(broker_sink);
  RelayThread paused(store, sink, short_lease_config("paused"));
  REQUIRE(sink.wait_holding(30s));  // it read the 200 messages and holds epoch 1
  CHECK(paused.relay().counters().active);
  CHECK(outbox_status(db).lease_holder.starts_with("paused:"));

  RelayProcess standby(dir.path(), db, broker.endpoint(), {"--lease", "1s", "--holder", "standby"});
  INFO(standby.log());
  REQUIRE(wait_delivered(db, 200));
  CHECK(outbox_status(db).lease_holder.starts_with("standby:"));
  REQUIRE(test_support::wait_until(
      [&] { return broker_counter(broker.endpoint(), "dedup_entries") == 0; }, 60s, 50ms));

  // It goes on: sends its 200 messages on its epoch 1 session. The broker
  // refuses them (stale_epoch). The relay learns that it lost the lease from
  // that refusal or from its own renewal, whichever it sees first (the
  // refusal takes a round trip, the renewal is due at once after the pause),
  // so its log need not name stale_epoch; the broker's counter must.
  auto log = release_until_standby(sink, paused);
  INFO(log);
  CHECK(test_support::wait_until(
      [&] { return broker_counter(broker.endpoint(), "stale_epochs") >= 1; }, 30s, 20ms));

  auto stored = fetch_all(broker.endpoint());
  std::set<std::string> ids;
  for (const auto& message : stored) ids.insert(message.msg_id);
  CHECK(stored.size() == 200);
  CHECK(ids.size() == 200);
  CHECK(broker_counter(broker.endpoint(), "stored") == 200);
  CHECK(outbox_status(db).lease_holder.starts_with("standby:"));
}

TEST_CASE("two outboxes reusing msg_id 4711 with other keys: one stored, the other dead",
          "[relay]") {
  test_support::TempDir dir("relay-collision");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  // Two producer databases whose snowflake generators shared a worker id.
  auto first = dir / "first.db", second = dir / "second.db";
  for (const auto& [db, key] : {std::pair{first, "order-1"}, std::pair{second, "order-2"}}) {
    auto box = outbox::Outbox::open(db);
    outbox::Transaction tx(box);
    tx.enqueue({.topic = "orders", .key = key, .payload = "{}", .msg_id = "4711"});
    tx.commit();
  }
  {
    RelayProcess relay(dir.path(), first, broker.endpoint());
    INFO(relay.log());
    REQUIRE(wait_delivered(first, 1));
    CHECK(relay.stop().code == 0);
  }
  RelayProcess relay(dir.path(), second, broker.endpoint());
  INFO(relay.log());
  REQUIRE(test_support::wait_until([&] { return outbox_status(second).dead == 1; }, 30s, 20ms));
  CHECK(outbox_status(second).delivered_total == 0);

  auto dead = test_support::run(relay_binary(), {"dead", "--db", second.string(), "--json"});
  INFO(dead.out);
  std::string reasons;
  for (const auto& line : json_lines(dead.out)) reasons += line.at("reason").get<std::string>();
  CHECK_THAT(reasons, Catch::Contains("CONFLICT: msg_id 4711 is already stored in orders at offset "
                                      "1 with key 'order-1'; this message has key 'order-2'"));
  auto stored = fetch_all(broker.endpoint());
  REQUIRE(stored.size() == 1);
  CHECK(stored[0].key == "order-1");
  CHECK(broker_counter(broker.endpoint(), "conflicts") == 1);
  CHECK(broker_counter(broker.endpoint(), "duplicates") == 0);
}
