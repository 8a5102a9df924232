// examples/jetstream_consumer against a real nats-server -js on loopback:
// order_service -> outbox-relay --sink jetstream -> stream -> jetstream_consumer,
// with the consumer killed at its crash points, and the layered guarantee: a
// producer database restored from a backup resends every message after the
// stream's duplicate window, JetStream stores each a second time, and the
// consumer's inbox applies each once; and two consumers sharing one durable and
// one Redis inbox (--inbox redis://...), one of them killed. Skipped with a
// warning without nats-server.
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "examples_support.hpp"
#include "fetch.hpp"
#include "jetstream_harness.hpp"
#include "test_support.hpp"
#ifdef OUTBOX_REDIS_SERVER
#include "redis_server.hpp"
#endif

namespace {

using namespace std::chrono_literals;
using examples_test::delivered_total;
using examples_test::exec_sql;
using examples_test::json_number;
using examples_test::query_number;
using jetstream_test::NatsClient;
using jetstream_test::NatsCluster;
using jetstream_test::NatsServer;
namespace fs = std::filesystem;

const std::string kStream = "OUTBOX";

bool have_nats_server() {
  if (!jetstream_test::nats_server_binary().empty()) return true;
  WARN("nats-server is not installed (Debian: apt-get install nats-server); skipping");
  return false;
}

void produce_orders(const fs::path& db, long count) {
  auto result = test_support::run(
      OUTBOX_BIN_ORDER_SERVICE,
      {"--db", db.string(), "--count", std::to_string(count), "--customers", "7"}, 120s);
  INFO(result.err);
  REQUIRE(result.status.code == 0);
}

std::vector<std::string> relay_args(const fs::path& db, const std::string& url,
                                    std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"run",       "--db",          db.string(), "--sink",
                                   "jetstream", "--nats-url",    url,         "--stream",
                                   kStream,     "--lease",       "1s",        "--backoff-initial",
                                   "20ms",      "--backoff-max", "500ms"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// Stops a daemon with SIGTERM; it must exit 0.
void stop(test_support::ChildProcess& process) {
  INFO(process.stderr_text());
  process.signal(SIGTERM);
  auto status = process.wait_for(30s);
  REQUIRE(status.has_value());
  CHECK(status->exited);
  CHECK(status->code == 0);
}

// outbox-relay run --sink jetstream until every row of `db` is delivered, then SIGTERM.
void relay_everything(const fs::path& dir, const fs::path& db, const std::string& url,
                      long expected, std::vector<std::string> extra = {}) {
  test_support::ChildProcess relay(OUTBOX_BIN_OUTBOX_RELAY, relay_args(db, url, extra), dir);
  INFO(relay.stderr_text());
  REQUIRE(test_support::wait_until([&] { return delivered_total(db) == expected; }, 60s, 20ms));
  stop(relay);
}

std::vector<std::string> consumer_args(const std::string& url, const fs::path& db,
                                       std::vector<std::string> extra) {
  std::vector<std::string> args = {"--nats-url", url,          "--stream", kStream,
                                   "run",        "--durable",  "shipping", "--db",
                                   db.string(),  "--ack-wait", "1",        "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// Waits until the consumer says it has bound to its durable (so the effects
// table exists); false if it ended first.
bool bound(test_support::ChildProcess& consumer) {
  return test_support::wait_until(
             [&] {
               return !consumer.running() ||
                      consumer.stderr_text().find("jetstream_consumer: durable ") !=
                          std::string::npos;
             },
             30s, 10ms) &&
         consumer.running();
}

// Runs the consumer until the durable has nothing left to hand out or to be
// acknowledged, then stops it with SIGTERM (it must exit 0); returns its
// output (the summary on stdout).
test_support::RunResult consume_everything(const fs::path& dir, NatsClient& client,
                                           const std::string& url, const fs::path& db) {
  test_support::ChildProcess consumer(OUTBOX_BIN_JETSTREAM_CONSUMER, consumer_args(url, db, {}),
                                      dir);
  INFO(consumer.stderr_text());
  // The durable exists once the consumer says it has bound to it.
  REQUIRE(bound(consumer));
  REQUIRE(test_support::wait_until(
      [&] { return !consumer.running() || client.consumer_backlog(kStream, "shipping") == 0; }, 60s,
      20ms));
  REQUIRE(consumer.running());
  stop(consumer);
  return {*consumer.wait_for(0ms), consumer.stdout_text(), consumer.stderr_text()};
}

// Effects per subject in the order they were applied must follow stream order.
long effects_out_of_order(const fs::path& db) {
  return query_number(db,
                      "SELECT count(*) FROM effects a JOIN effects b ON a.subject = b.subject "
                      "AND a.id < b.id AND a.stream_sequence > b.stream_sequence");
}

}  // namespace

TEST_CASE("jetstream_consumer applies every order once through kills after and before applying",
          "[examples][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("jetstream-consumer");
  NatsServer server(dir.path(), dir / "nats-store");
  NatsClient client(server.url());
  client.add_stream(kStream, {"outbox.>"});
  const auto shop = dir / "shop.db";
  const auto shipping = dir / "shipping.db";
  constexpr long orders = 400;
  produce_orders(shop, orders);
  relay_everything(dir.path(), shop, server.url(), orders);

  // Killed right after applying the 150th message, before acknowledging it.
  auto crashed =
      test_support::run(OUTBOX_BIN_JETSTREAM_CONSUMER,
                        consumer_args(server.url(), shipping, {"--crash-after", "150"}), 120s);
  INFO(crashed.err);
  CHECK(crashed.status.signal == SIGKILL);
  CHECK(crashed.err.find("after applying message 150") != std::string::npos);
  CHECK(query_number(shipping, "SELECT count(*) FROM effects") == 150);

  // The next run gets the unacknowledged 150th again (after the 1 s ack wait)
  // and the inbox recognises it: 99 new effects, no second one for it. It is
  // killed before applying its 100th, which it had received.
  crashed =
      test_support::run(OUTBOX_BIN_JETSTREAM_CONSUMER,
                        consumer_args(server.url(), shipping, {"--crash-before", "100"}), 120s);
  CHECK(crashed.status.signal == SIGKILL);
  CHECK(crashed.err.find("before applying message 100") != std::string::npos);
  CHECK(query_number(shipping, "SELECT count(*) FROM effects") == 249);
  CHECK(query_number(shipping, "SELECT count(DISTINCT msg_id) FROM effects") == 249);

  // The last run gets that message again and applies it and the rest.
  auto summary = consume_everything(dir.path(), client, server.url(), shipping).out;
  INFO(summary);
  CHECK(json_number(summary, "applied") == orders - 249);
  CHECK(json_number(summary, "skipped") == 0);
  CHECK(json_number(summary, "effects_in_db") == orders);
  CHECK(query_number(shipping, "SELECT count(DISTINCT msg_id) FROM effects") == orders);
  CHECK(effects_out_of_order(shipping) == 0);
  // Every order of the producer, by msg_id.
  CHECK(query_number(
            shop, "SELECT count(*) FROM outbox_messages m JOIN shipping.effects e USING (msg_id)",
            shipping) == orders);
}

TEST_CASE(
    "after the duplicate window JetStream stores a resent message twice and the inbox applies it "
    "once",
    "[examples][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("jetstream-layers");
  NatsServer server(dir.path(), dir / "nats-store");
  NatsClient client(server.url());
  // A one-second window, on a test stream; probe.> tells the test when it has passed.
  client.add_stream(kStream, {"outbox.>", "probe.>"}, 1s);
  const auto shop = dir / "shop.db";
  const auto backup = dir / "shop-backup.db";
  const auto shipping = dir / "shipping.db";
  constexpr long orders = 200;
  produce_orders(shop, orders);
  // Yesterday's backup: every message still pending in it.
  exec_sql(shop, "VACUUM INTO '" + backup.string() + "'");
  const std::vector<std::string> short_window = {"--allow-short-dedup-window"};
  relay_everything(dir.path(), shop, server.url(), orders, short_window);
  auto first = consume_everything(dir.path(), client, server.url(), shipping).out;
  CHECK(json_number(first, "applied") == orders);

  // Wait until the window has passed for everything stored so far: a probe
  // published after the orders is answered as a duplicate until then.
  CHECK_FALSE(client.publish("probe.window", "", "probe"));
  REQUIRE(test_support::wait_until([&] { return !client.publish("probe.window", "", "probe"); },
                                   60s, 100ms));

  // The backup comes back and its relay resends every message, same msg_ids.
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(shop.string() + suffix);
  fs::copy_file(backup, shop);
  relay_everything(dir.path(), shop, server.url(), orders, short_window);

  // JetStream stored each order twice...
  std::map<std::string, int> copies;
  for (const auto& message : client.read_all(kStream)) {
    if (message.subject.rfind("outbox.", 0) == 0) ++copies[message.msg_id];
  }
  CHECK(copies.size() == static_cast<std::size_t>(orders));
  CHECK(std::all_of(copies.begin(), copies.end(),
                    [](const auto& entry) { return entry.second == 2; }));
  // ...and the consumer applied each once: the second copies were all skipped.
  auto second = consume_everything(dir.path(), client, server.url(), shipping).out;
  INFO(second);
  CHECK(json_number(second, "applied") == 0);
  CHECK(json_number(second, "skipped") == orders);
  CHECK(query_number(shipping, "SELECT count(*) FROM effects WHERE subject LIKE 'outbox.%'") ==
        orders);
  CHECK(query_number(shipping,
                     "SELECT count(DISTINCT msg_id) FROM effects WHERE subject LIKE 'outbox.%'") ==
        orders);
}

TEST_CASE("jetstream_consumer refuses a message without Nats-Msg-Id and a missing stream",
          "[examples][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("jetstream-refusals");
  NatsServer server(dir.path(), dir / "nats-store");
  NatsClient client(server.url());
  const auto shipping = dir / "shipping.db";

  auto missing = test_support::run(OUTBOX_BIN_JETSTREAM_CONSUMER,
                                   consumer_args(server.url(), shipping, {}), 60s);
  CHECK(missing.status.code == 7);
  CHECK(missing.err.find("stream OUTBOX does not exist") != std::string::npos);

  // create-stream makes it; running it again with the same settings is fine.
  for (int round = 0; round < 2; ++round) {
    auto created =
        test_support::run(OUTBOX_BIN_JETSTREAM_CONSUMER,
                          {"--nats-url", server.url(), "--stream", kStream, "create-stream",
                           "--subjects", "outbox.>", "--dupe-window", "60"},
                          60s);
    INFO(created.err);
    CHECK(created.status.code == 0);
  }
  client.publish("outbox.orders.k1", "first", "id-1");
  {
    // A publisher that sets no Nats-Msg-Id.
    natsConnection* connection = nullptr;
    REQUIRE(natsConnection_ConnectTo(&connection, server.url().c_str()) == NATS_OK);
    jsCtx* js = nullptr;
    REQUIRE(natsConnection_JetStream(&js, connection, nullptr) == NATS_OK);
    jsPubAck* ack = nullptr;
    REQUIRE(js_Publish(&ack, js, "outbox.orders.k1", "anonymous", 9, nullptr, nullptr) == NATS_OK);
    jsPubAck_Destroy(ack);
    jsCtx_Destroy(js);
    natsConnection_Destroy(connection);
  }
  client.publish("outbox.orders.k1", "third", "id-3");

  // The message without an id is terminated, so nothing is left to hand out.
  auto consumed = consume_everything(dir.path(), client, server.url(), shipping);
  INFO(consumed.err);
  CHECK(consumed.err.find("stream sequence 2 on outbox.orders.k1 has no Nats-Msg-Id") !=
        std::string::npos);
  CHECK(json_number(consumed.out, "refused") == 1);
  CHECK(json_number(consumed.out, "applied") == 2);
  CHECK(query_number(shipping, "SELECT count(*) FROM effects WHERE msg_id IN ('id-1', 'id-3')") ==
        2);
}

// libnats before 3.9.0 overflows its message array in a fetch of more than
// one message that starts with more than half a batch left in the
// subscription by an earlier pull request that is still being served
// (examples/jetstream_consumer/fetch.hpp). Here: 99 messages of an earlier
// request wait in the subscription, another request for 50 waits on the
// server, and when the 1 s ack wait passes the server redelivers to both while
// the fetch of 100 runs. The old library returns 150 messages in an array of 100
// (and glibc aborts sooner or later); jetstream_consumer's fetch returns at most 100.
TEST_CASE(
    "jetstream_consumer's fetch keeps to its batch when an earlier pull request left messages in "
    "the subscription",
    "[examples][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("jetstream-fetch");
  NatsServer server(dir.path(), dir / "nats-store");
  NatsClient client(server.url());
  client.add_stream(kStream, {"outbox.>"});
  constexpr int batch = 100;
  for (int i = 0; i < batch - 1; ++i) {
    client.publish("outbox.orders.k1", "order", "order-" + std::to_string(i));
  }

  natsConnection* raw_connection = nullptr;
  jetstream_test::check_nats(natsConnection_ConnectTo(&raw_connection, server.url().c_str()),
                             "natsConnection_ConnectTo");
  std::unique_ptr<natsConnection, void (*)(natsConnection*)> connection(raw_connection,
                                                                        natsConnection_Destroy);
  jsCtx* raw_js = nullptr;
  jetstream_test::check_nats(natsConnection_JetStream(&raw_js, connection.get(), nullptr),
                             "natsConnection_JetStream");
  std::unique_ptr<jsCtx, void (*)(jsCtx*)> js(raw_js, jsCtx_Destroy);
  jsConsumerConfig config;
  jsConsumerConfig_Init(&config);
  config.Durable = "fetch";
  config.AckPolicy = js_AckExplicit;
  config.AckWait = std::chrono::nanoseconds(1s).count();
  config.MaxAckPending = batch - 1;  // the server holds the second request until the ack wait
  jsConsumerInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  jetstream_test::check_nats(
      js_AddConsumer(&info, js.get(), kStream.c_str(), &config, nullptr, &code), "js_AddConsumer");
  jsConsumerInfo_Destroy(info);
  jsSubOptions options;
  jsSubOptions_Init(&options);
  options.Stream = kStream.c_str();
  options.Consumer = "fetch";
  natsSubscription* raw_subscription = nullptr;
  jetstream_test::check_nats(
      js_PullSubscribe(&raw_subscription, js.get(), "outbox.>", "fetch", nullptr, &options, &code),
      "js_PullSubscribe");
  std::unique_ptr<natsSubscription, void (*)(natsSubscription*)> subscription(
      raw_subscription, natsSubscription_Destroy);

  // Pull requests on the subscription's own inbox, as earlier fetches send them.
  const std::string next = "$JS.API.CONSUMER.MSG.NEXT." + kStream + ".fetch";
  const char* inbox = natsSubscription_GetSubject(subscription.get());
  jetstream_test::check_nats(
      natsConnection_PublishRequestString(connection.get(), next.c_str(), inbox, "{\"batch\":99}"),
      "pull request");
  REQUIRE(test_support::wait_until(
      [&] {
        int messages = 0, bytes = 0;
        natsSubscription_GetPending(subscription.get(), &messages, &bytes);
        return messages == batch - 1;
      },
      10s));
  jetstream_test::check_nats(
      natsConnection_PublishRequestString(connection.get(), next.c_str(), inbox,
                                          "{\"batch\":50,\"expires\":20000000000}"),
      "pull request");
  jetstream_test::check_nats(natsConnection_Flush(connection.get()), "natsConnection_Flush");

  // Every delivery reaches the subscription: the 99, then 51 redelivered
  // after the ack wait (50 for the waiting request, 1 for the fetch's own).
  int received = 0;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (received < 150 && std::chrono::steady_clock::now() < deadline) {
    natsMsgList list{nullptr, 0};
    const natsStatus status =
        jetstream_consumer::fetch_messages(&list, subscription.get(), batch, 5000, &code);
    const int count = list.Count;
    natsMsgList_Destroy(&list);
    if (status == NATS_TIMEOUT) continue;
    REQUIRE(status == NATS_OK);
    REQUIRE(count <= batch);
    received += count;
  }
  CHECK(received >= 150);
}

// The cluster steps of docs/jetstream.md's scale-out walkthrough: three
// nodes, the stream with three replicas, the relay and the consumer given
// every node's URL; then the stream's leader is killed (kill -9) while both
// run and more orders come.
TEST_CASE(
    "a three-node JetStream cluster loses its stream leader under the relay and the consumer: "
    "every order stored once and applied once",
    "[examples][jetstream][cluster]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("jetstream-cluster");
  NatsCluster cluster(dir.path());
  const auto shop = dir / "shop.db";
  const auto shipping = dir / "shipping.db";
  auto created =
      test_support::run(OUTBOX_BIN_JETSTREAM_CONSUMER,
                        {"--nats-url", cluster.urls(), "--stream", kStream, "create-stream",
                         "--subjects", "outbox.>", "--replicas", "3", "--dupe-window", "600"},
                        60s);
  INFO(created.err);
  REQUIRE(created.status.code == 0);
  CHECK(created.out.find("3 replica(s)") != std::string::npos);

  constexpr long before = 300, after = 600;
  produce_orders(shop, before);
  test_support::ChildProcess relay(OUTBOX_BIN_OUTBOX_RELAY,
                                   relay_args(shop, cluster.urls(), {"--ack-timeout", "2s"}),
                                   dir.path());
  test_support::ChildProcess consumer(
      OUTBOX_BIN_JETSTREAM_CONSUMER,
      consumer_args(cluster.urls(), shipping, {"--expect", std::to_string(before + after)}),
      dir.path());
  INFO(relay.stderr_text());
  INFO(consumer.stderr_text());
  REQUIRE(bound(consumer));
  REQUIRE(test_support::wait_until(
      [&] {
        return delivered_total(shop) == before &&
               query_number(shipping, "SELECT count(*) FROM effects") == before;
      },
      30s, 20ms));

  // More orders, 100 a second; once the relay has published a hundred of them,
  // the node that leads the stream dies.
  const int leader = [&] {
    NatsClient client(cluster.url(0));
    return cluster.node_named(client.stream_leader(kStream));
  }();
  test_support::ChildProcess producer(OUTBOX_BIN_ORDER_SERVICE,
                                      {"--db", shop.string(), "--count", std::to_string(after),
                                       "--customers", "7", "--rate", "100"},
                                      dir.path());
  REQUIRE(
      test_support::wait_until([&] { return delivered_total(shop) >= before + 100; }, 30s, 5ms));
  cluster.kill9(leader);
  CHECK(delivered_total(shop) < before + after);
  const auto producer_status = producer.wait_for(60s);
  REQUIRE(producer_status.has_value());
  CHECK(producer_status->code == 0);

  // The two other nodes elect a new leader; the relay resends what it had not
  // seen acknowledged, the consumer applies everything and exits (--expect).
  REQUIRE(
      test_support::wait_until([&] { return delivered_total(shop) == before + after; }, 45s, 20ms));
  const auto consumer_status = consumer.wait_for(45s);
  REQUIRE(consumer_status.has_value());
  CHECK(consumer_status->code == 0);
  stop(relay);

  // Stored once: every order, each msg_id at one stream sequence.
  NatsClient survivor(cluster.url((leader + 1) % NatsCluster::kNodes));
  CHECK(cluster.node_named(survivor.stream_leader(kStream)) != leader);
  std::map<std::string, int> copies;
  for (const auto& message : survivor.read_all(kStream)) ++copies[message.msg_id];
  CHECK(copies.size() == static_cast<std::size_t>(before + after));
  CHECK(std::all_of(copies.begin(), copies.end(),
                    [](const auto& entry) { return entry.second == 1; }));
  // Applied once: one effect per order of the producer, each key in order.
  CHECK(query_number(shipping, "SELECT count(*) FROM effects") == before + after);
  CHECK(query_number(shipping, "SELECT count(DISTINCT msg_id) FROM effects") == before + after);
  CHECK(query_number(
            shop, "SELECT count(*) FROM outbox_messages m JOIN shipping.effects e USING (msg_id)",
            shipping) == before + after);
  CHECK(effects_out_of_order(shipping) == 0);
}

#ifdef OUTBOX_REDIS_SERVER
TEST_CASE(
    "jetstream_consumer --inbox redis: two consumers on one durable apply every order once "
    "through a kill",
    "[examples][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("jetstream-redis-inbox");
  NatsServer server(dir.path(), dir / "nats-store");
  NatsClient client(server.url());
  client.add_stream(kStream, {"outbox.>"});
  inbox_test::RedisServer redis;
  const auto shop = dir / "shop.db";
  const auto shipping = dir / "shipping.db";
  constexpr long orders = 300;
  produce_orders(shop, orders);
  relay_everything(dir.path(), shop, server.url(), orders);

  // Every process: the same durable, the same Redis inbox, the same effects
  // table; each runs until that table holds `expect` effects (from all of them).
  auto consumer = [&](std::vector<std::string> extra, long expect) {
    extra.insert(extra.end(), {"--inbox", redis.endpoint(), "--expect", std::to_string(expect)});
    return std::make_unique<test_support::ChildProcess>(
        OUTBOX_BIN_JETSTREAM_CONSUMER, consumer_args(server.url(), shipping, extra), dir.path());
  };
  // Two consumers take turns on the durable; one is killed right after its 40th
  // effect, its record completed in Redis and the message not acknowledged.
  auto crashing = consumer({"--crash-after", "40"}, orders);
  auto surviving = consumer({}, orders);
  auto crashed = crashing->wait_for(120s);
  INFO(crashing->stderr_text());
  REQUIRE(crashed.has_value());
  CHECK(crashed->signal == SIGKILL);
  CHECK(crashing->stderr_text().find("after applying message 40") != std::string::npos);
  // A new process takes its place; both run until every order has its effect.
  auto restarted = consumer({}, orders);
  long applied = 40;
  long skipped = 0;
  for (auto* process : {surviving.get(), restarted.get()}) {
    auto status = process->wait_for(120s);
    INFO(process->stderr_text());
    REQUIRE(status.has_value());
    CHECK(status->exited);
    CHECK(status->code == 0);
    const auto summary = process->stdout_text();
    INFO(summary);
    CHECK(json_number(summary, "effects_in_db") == orders);
    applied += json_number(summary, "applied");
    skipped += json_number(summary, "skipped");
  }
  // The killed one's last message came again and its completed record was
  // recognised: no second effect for it, nor for any other.
  CHECK(applied == orders);
  CHECK(skipped >= 1);
  CHECK(query_number(shipping, "SELECT count(*) FROM effects") == orders);
  CHECK(query_number(shipping, "SELECT count(DISTINCT msg_id) FROM effects") == orders);
  CHECK(query_number(
            shop, "SELECT count(*) FROM outbox_messages m JOIN shipping.effects e USING (msg_id)",
            shipping) == orders);
  CHECK(effects_out_of_order(shipping) == 0);
  // The records are in Redis, one per order and each completed; none in SQLite.
  CHECK(query_number(shipping, "SELECT count(*) FROM outbox_inbox") == 0);
  CHECK(redis.command({"DBSIZE"}) == std::to_string(orders));
  CHECK(redis.command({"EVAL",
                       "local n = 0 for _, key in ipairs(redis.call('KEYS', 'outbox:inbox:*')) "
                       "do if redis.call('HGET', key, 'state') == 'completed' then n = n + 1 end "
                       "end return n",
                       "0"}) == std::to_string(orders));

  // Redis goes away under a running consumer: the messages that arrive then
  // are not acknowledged, and once Redis is back they come again and are applied.
  constexpr long late = 5;
  auto waiting = consumer({}, orders + late);
  INFO(waiting->stderr_text());
  REQUIRE(bound(*waiting));
  redis.kill();
  for (long i = 1; i <= late; ++i) {
    client.publish("outbox.orders.late", "late", "late-" + std::to_string(i));
  }
  REQUIRE(test_support::wait_until(
      [&] {
        return !waiting->running() ||
               waiting->stderr_text().find("msg_id late-1 not acknowledged, it comes again") !=
                   std::string::npos;
      },
      30s, 10ms));
  CHECK(query_number(shipping, "SELECT count(*) FROM effects") == orders);
  redis.restart();
  auto waited = waiting->wait_for(120s);
  REQUIRE(waited.has_value());
  CHECK(waited->code == 0);
  CHECK(query_number(shipping, "SELECT count(*) FROM effects") == orders + late);
  CHECK(query_number(shipping, "SELECT count(DISTINCT msg_id) FROM effects") == orders + late);

  // A bad endpoint is a bad flag (2); an unreachable Redis a failure (1).
  auto bad = test_support::run(
      OUTBOX_BIN_JETSTREAM_CONSUMER,
      consumer_args(server.url(), shipping, {"--inbox", "redis://host:port"}), 60s);
  CHECK(bad.status.code == 2);
  CHECK(bad.err.find("--inbox") != std::string::npos);
  redis.kill();
  auto away =
      test_support::run(OUTBOX_BIN_JETSTREAM_CONSUMER,
                        consumer_args(server.url(), shipping, {"--inbox", redis.endpoint()}), 60s);
  CHECK(away.status.code == 1);
  CHECK(away.err.find(redis.endpoint()) != std::string::npos);
}
#endif
