// examples/jetstream_consumer against a real nats-server -js on loopback:
// order_service -> outbox-relay --sink jetstream -> stream -> jetstream_consumer,
// with the consumer killed at its crash points, and the layered guarantee: a
// producer database restored from a backup resends every message after the
// stream's duplicate window, JetStream stores each a second time, and the
// consumer's inbox applies each once; and two consumers sharing one durable and
// one Redis inbox (--inbox redis://...), one of them killed. Skipped with a
// warning without nats-server.
#include <sqlite3.h>

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

// outbox-relay run --sink jetstream until every row of `db` is delivered, then SIGTERM.
void relay_everything(const fs::path& dir, const fs::path& db, const std::string& url,
                      long expected, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"run",       "--db",          db.string(), "--sink",
                                   "jetstream", "--nats-url",    url,         "--stream",
                                   kStream,     "--lease",       "1s",        "--backoff-initial",
                                   "20ms",      "--backoff-max", "500ms"};
  args.insert(args.end(), extra.begin(), extra.end());
  test_support::ChildProcess relay(OUTBOX_BIN_OUTBOX_RELAY, args, dir);
  INFO(relay.stderr_text());
  REQUIRE(test_support::wait_until([&] { return delivered_total(db) == expected; }, 60s, 20ms));
  relay.signal(SIGTERM);
  auto status = relay.wait_for(30s);
  REQUIRE(status.has_value());
  CHECK(status->code == 0);
}

std::vector<std::string> consumer_args(const std::string& url, const fs::path& db,
                                       std::vector<std::string> extra) {
  std::vector<std::string> args = {"--nats-url", url,          "--stream", kStream,
                                   "run",        "--durable",  "shipping", "--db",
                                   db.string(),  "--ack-wait", "1",        "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
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
  REQUIRE(test_support::wait_until(
      [&] {
        return !consumer.running() ||
               consumer.stderr_text().find("jetstream_consumer: durable shipping on stream") !=
                   std::string::npos;
      },
      30s, 10ms));
  REQUIRE(test_support::wait_until(
      [&] { return !consumer.running() || client.consumer_backlog(kStream, "shipping") == 0; }, 60s,
      20ms));
  REQUIRE(consumer.running());
  consumer.signal(SIGTERM);
  auto status = consumer.wait_for(30s);
  REQUIRE(status.has_value());
  CHECK(status->exited);
  CHECK(status->code == 0);
  return {*status, consumer.stdout_text(), consumer.stderr_text()};
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
  REQUIRE(test_support::wait_until(
      [&] {
        return !waiting->running() ||
               waiting->stderr_text().find("durable shipping on stream") != std::string::npos;
      },
      30s, 10ms));
  REQUIRE(waiting->running());
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
