// The example programs, run the way the README and scripts/demo run them:
// order_service -> outbox-relay -> outbox-broker -> shipping_consumer, with
// real processes on loopback, a relay killed with SIGKILL, a full resend and
// a consumer that crashes between shipping and committing its offset.
#include <sqlite3.h>
#include <sys/resource.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "broker/client.hpp"
#include "broker_process.hpp"
#include "examples_support.hpp"
#include "test_support.hpp"
#ifdef OUTBOX_REDIS_SERVER
#include "redis_server.hpp"
#endif

namespace {

using namespace std::chrono_literals;
using broker_test::BrokerProcess;
using examples_test::delivered_total;
using examples_test::exec_sql;
using examples_test::json_number;
using examples_test::query_number;
namespace fs = std::filesystem;

// The examples crash on purpose; no core files from that.
void no_core_files() {
  rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
}

std::uint64_t broker_counter(const std::string& endpoint, const std::string& name) {
  broker::Client client(endpoint);
  auto stats = client.stats(20s);
  REQUIRE(stats.ok());
  return broker_test::counter(*stats, name);
}

class Relay {
 public:
  Relay(const fs::path& dir, const fs::path& db, const std::string& endpoint)
      : process_(std::make_unique<test_support::ChildProcess>(
            OUTBOX_BIN_OUTBOX_RELAY,
            std::vector<std::string>{"run", "--db", db.string(), "--broker", endpoint, "--lease",
                                     "1s", "--backoff-initial", "20ms", "--backoff-max", "500ms"},
            dir)) {}
  test_support::ChildProcess& process() { return *process_; }
  std::string log() const { return process_->stderr_text(); }

 private:
  std::unique_ptr<test_support::ChildProcess> process_;
};

test_support::RunResult order_service(const fs::path& db, std::vector<std::string> extra) {
  std::vector<std::string> args = {"--db", db.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return test_support::run(OUTBOX_BIN_ORDER_SERVICE, args, 120s);
}

test_support::RunResult shipping_consumer(const std::string& endpoint, const fs::path& db,
                                          std::vector<std::string> extra) {
  std::vector<std::string> args = {"--broker", endpoint,   "--db",  db.string(),
                                   "--group",  "shipping", "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  return test_support::run(OUTBOX_BIN_SHIPPING_CONSUMER, args, 120s);
}

}  // namespace

TEST_CASE("order_service: a crash at either step leaves neither the order nor its message",
          "[examples]") {
  no_core_files();
  test_support::TempDir dir("examples-crash");
  const auto db = dir / "shop.db";

  auto crashed =
      order_service(db, {"--count", "10", "--crash-after", "5", "--crash-at", "after-insert"});
  INFO(crashed.err);
  CHECK_FALSE(crashed.status.exited);
  CHECK(crashed.status.signal == SIGABRT);
  CHECK(query_number(db, "SELECT count(*) FROM orders") == 5);
  CHECK(query_number(db, "SELECT count(*) FROM outbox_messages") == 5);

  crashed = order_service(db, {"--count", "10", "--crash-after", "3"});  // before-commit
  CHECK(crashed.status.signal == SIGABRT);
  CHECK(crashed.err.find("before the commit") != std::string::npos);
  CHECK(query_number(db, "SELECT count(*) FROM orders") == 8);
  CHECK(query_number(db, "SELECT count(*) FROM outbox_messages") == 8);

  auto finished = order_service(db, {"--count", "7", "--customers", "3"});
  INFO(finished.err);
  REQUIRE(finished.status.exited);
  CHECK(finished.status.code == 0);
  CHECK(finished.out.find("committed 7 orders") != std::string::npos);
  CHECK(query_number(db, "SELECT count(*) FROM orders") == 15);
  CHECK(query_number(db, "SELECT count(*) FROM outbox_messages WHERE topic = 'order.created'") ==
        15);
  // Every message names its order, and is keyed by the order's customer.
  CHECK(query_number(db,
                     "SELECT count(*) FROM orders o JOIN outbox_messages m ON "
                     "CAST(m.payload AS TEXT) LIKE '{\"order_id\":' || o.id || ',\"customer\":\"' "
                     "|| o.customer "
                     "|| '\"%' AND m.partition_key = o.customer") == 15);

  auto bad = order_service(db, {"--count", "3", "--crash-after", "3"});
  CHECK(bad.status.code == 2);
  bad = order_service(db, {"--crash-at", "before-commit"});
  CHECK(bad.status.code == 2);
}

TEST_CASE(
    "orders reach shipping exactly once through a relay SIGKILL, a resend and a consumer "
    "crash",
    "[examples]") {
  no_core_files();
  test_support::TempDir dir("examples-e2e");
  const auto shop = dir / "shop.db";
  const auto shipping = dir / "shipping.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  const std::string endpoint = broker.endpoint();
  constexpr long orders = 3000;

  // The consumer waits for orders that do not exist yet.
  test_support::ChildProcess first_consumer(OUTBOX_BIN_SHIPPING_CONSUMER,
                                            {"--broker", endpoint, "--db", shipping.string(),
                                             "--group", "shipping", "--crash-after", "1000"},
                                            dir.path());

  auto produced = order_service(shop, {"--count", std::to_string(orders), "--customers", "20"});
  INFO(produced.err);
  REQUIRE(produced.status.code == 0);

  auto relay = std::make_unique<Relay>(dir.path(), shop, endpoint);
  REQUIRE(test_support::wait_until([&] { return delivered_total(shop) >= 500; }, 60s, 5ms));
  relay->process().signal(SIGKILL);
  REQUIRE(relay->process().wait_for(10s).has_value());
  relay = std::make_unique<Relay>(dir.path(), shop, endpoint);
  {
    INFO(relay->log());
    REQUIRE(test_support::wait_until([&] { return delivered_total(shop) == orders; }, 60s, 20ms));
  }
  CHECK(broker_counter(endpoint, "stored") == orders);

  // Shipped but not acknowledged when it crashed: the next run gets them again.
  auto crash = first_consumer.wait_for(60s);
  INFO(first_consumer.stderr_text());
  REQUIRE(crash.has_value());
  REQUIRE(crash->signal == SIGABRT);
  long unacknowledged = -1;
  const auto crash_log = first_consumer.stderr_text();
  const auto at = crash_log.find("the last ");
  REQUIRE(at != std::string::npos);
  unacknowledged = std::stol(crash_log.substr(at + 9));
  CHECK(unacknowledged >= 1);
  CHECK(query_number(shipping, "SELECT count(*) FROM shipments") == 1000);

  // Every acknowledgement forgotten: the relay sends all of it again and the
  // broker answers DUPLICATE, storing nothing twice.
  relay->process().signal(SIGTERM);
  REQUIRE(relay->process().wait_for(30s).has_value());
  const auto duplicates_before = broker_counter(endpoint, "duplicates");
  exec_sql(shop,
           "DELETE FROM outbox_delivery;"
           "UPDATE outbox_relay_cursor SET settled_through_seq = 0, delivered_total = 0;");
  relay = std::make_unique<Relay>(dir.path(), shop, endpoint);
  REQUIRE(test_support::wait_until([&] { return delivered_total(shop) == orders; }, 60s, 20ms));
  CHECK(broker_counter(endpoint, "duplicates") - duplicates_before >= orders);
  CHECK(broker_counter(endpoint, "stored") == orders);

  auto second = shipping_consumer(endpoint, shipping, {"--expect", std::to_string(orders)});
  INFO(second.err);
  REQUIRE(second.status.exited);
  REQUIRE(second.status.code == 0);
  CHECK(json_number(second.out, "shipped") == orders - 1000);
  CHECK(json_number(second.out, "skipped") == unacknowledged);
  CHECK(json_number(second.out, "malformed") == 0);
  CHECK(json_number(second.out, "shipments_in_db") == orders);

  // Each order shipped once, and every committed order shipped.
  CHECK(query_number(shipping, "SELECT count(*) FROM shipments") == orders);
  CHECK(query_number(shipping, "SELECT count(DISTINCT order_id) FROM shipments") == orders);
  CHECK(query_number(shipping, "SELECT count(DISTINCT msg_id) FROM shipments") == orders);
  CHECK(query_number(shipping, "SELECT count(*) FROM outbox_inbox") == orders);
  CHECK(query_number(shop,
                     "SELECT count(*) FROM orders WHERE id NOT IN "
                     "(SELECT order_id FROM shipping.shipments)",
                     shipping) == 0);

  // The group's offset is committed through the end: a new run finds nothing
  // to do, waits in a long-poll, and exits 0 on SIGTERM.
  test_support::ChildProcess idle(
      OUTBOX_BIN_SHIPPING_CONSUMER,
      {"--broker", endpoint, "--db", shipping.string(), "--group", "shipping", "--json"},
      dir.path());
  REQUIRE(test_support::wait_until([&] { return broker_counter(endpoint, "waiting_fetches") >= 1; },
                                   30s, 10ms));
  idle.signal(SIGTERM);
  auto stopped = idle.wait_for(30s);
  INFO(idle.stderr_text());
  REQUIRE(stopped.has_value());
  CHECK(stopped->exited);
  CHECK(stopped->code == 0);
  CHECK(json_number(idle.stdout_text(), "shipped") == 0);
  CHECK(json_number(idle.stdout_text(), "skipped") == 0);
}

TEST_CASE("shipping_consumer: refuses bad flags, ships nothing from a malformed message",
          "[examples]") {
  test_support::TempDir dir("examples-consumer");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto bad = shipping_consumer(broker.endpoint(), dir / "shipping.db", {"--batch", "0"});
  CHECK(bad.status.code == 2);

  auto client = broker_test::connect(broker.endpoint());
  std::vector<wire::OutgoingMessage> messages = {
      broker_test::message("m-1", "not json", "order.created", "c"),
      broker_test::message("m-2", R"({"order_id":7,"customer":"c"})", "order.created", "c")};
  auto ack = client->publish(1, messages, 20s);
  REQUIRE(ack.ok());

  auto run = shipping_consumer(broker.endpoint(), dir / "shipping.db", {"--expect", "1"});
  INFO(run.err);
  REQUIRE(run.status.code == 0);
  CHECK(json_number(run.out, "shipped") == 1);
  CHECK(json_number(run.out, "malformed") == 1);
  CHECK(run.err.find("not an order") != std::string::npos);
}

#ifdef OUTBOX_REDIS_SERVER
TEST_CASE("shipping_consumer --inbox redis: two consumers sharing one Redis ship each order once",
          "[examples]") {
  no_core_files();
  test_support::TempDir dir("examples-redis-inbox");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  inbox_test::RedisServer redis;
  constexpr int orders = 300;
  auto client = broker_test::connect(broker.endpoint());
  std::vector<wire::OutgoingMessage> messages;
  for (int i = 1; i <= orders; ++i) {
    messages.push_back(broker_test::message(
        "order-" + std::to_string(i), R"({"order_id":)" + std::to_string(i) + R"(,"customer":"c"})",
        "order.created", "c"));
  }
  REQUIRE(client->publish(1, messages, 20s).ok());

  const auto shipping = dir / "shipping.db";
  auto consumer = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {
        "--broker", broker.endpoint(), "--db",           shipping.string(), "--group",
        "shipping", "--inbox",         redis.endpoint(), "--batch",         "50",
        "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    return std::make_unique<test_support::ChildProcess>(OUTBOX_BIN_SHIPPING_CONSUMER, args,
                                                        dir.path());
  };
  // A consumer aborts after 40 shipments (completed in Redis, offset not
  // committed): that batch comes again, and the records make it a no-op.
  auto crashing = consumer({"--crash-after", "40"});
  auto crashed = crashing->wait_for(120s);
  REQUIRE(crashed.has_value());
  CHECK(crashed->signal == SIGABRT);
  CHECK(query_number(shipping, "SELECT count(*) FROM shipments") == 40);
  // Two consumers of the same group race for every message of the rest.
  auto first = consumer({"--expect", std::to_string(orders)});
  auto second = consumer({"--expect", std::to_string(orders)});
  for (auto* process : {first.get(), second.get()}) {
    auto status = process->wait_for(120s);
    INFO(process->stderr_text());
    REQUIRE(status.has_value());
    CHECK(status->exited);
    CHECK(status->code == 0);
  }
  CHECK(query_number(shipping, "SELECT count(*) FROM shipments") == orders);
  CHECK(query_number(shipping, "SELECT count(DISTINCT order_id) FROM shipments") == orders);
  // The records are in Redis, not in the consumer's database.
  CHECK(query_number(shipping, "SELECT count(*) FROM outbox_inbox") == 0);
  CHECK(redis.command({"HGET", "outbox:inbox:order-1", "state"}) == "completed");

  // A bad endpoint is a bad flag (2); an unreachable Redis a failure (1).
  auto bad = shipping_consumer(broker.endpoint(), shipping, {"--inbox", "redis://host:port"});
  CHECK(bad.status.code == 2);
  CHECK(bad.err.find("--inbox") != std::string::npos);
  redis.kill();
  auto away = shipping_consumer(broker.endpoint(), shipping, {"--inbox", redis.endpoint()});
  CHECK(away.status.code == 1);
  CHECK(away.err.find(redis.endpoint()) != std::string::npos);
}
#endif

TEST_CASE("idgen_usage: a restart with the same state file continues above the last id",
          "[examples]") {
  test_support::TempDir dir("examples-idgen");
  const auto state = (dir / "worker-3.state").string();
  auto range = [&](const test_support::RunResult& result) {
    unsigned long long first = 0, last = 0;
    const auto at = result.out.find("first..last: ");
    REQUIRE(at != std::string::npos);
    REQUIRE(std::sscanf(result.out.c_str() + at, "first..last: %llu..%llu", &first, &last) == 2);
    return std::pair{first, last};
  };
  auto first_run = test_support::run(OUTBOX_BIN_IDGEN_USAGE, {state, "3", "100"});
  INFO(first_run.err);
  REQUIRE(first_run.status.code == 0);
  auto second_run = test_support::run(OUTBOX_BIN_IDGEN_USAGE, {state, "3", "100"});
  REQUIRE(second_run.status.code == 0);
  const auto [first_a, last_a] = range(first_run);
  const auto [first_b, last_b] = range(second_run);
  CHECK(first_a < last_a);
  CHECK(last_a < first_b);
  CHECK(first_b < last_b);
  CHECK(second_run.out.find("worker 3,") != std::string::npos);
}

TEST_CASE("idgen_shell.sh runs against the idgen CLI", "[examples]") {
  auto result =
      test_support::run("/bin/bash", {OUTBOX_EXAMPLES_DIR "/idgen_shell.sh", OUTBOX_BIN_IDGEN_CLI});
  INFO(result.out << result.err);
  REQUIRE(result.status.exited);
  CHECK(result.status.code == 0);
  CHECK(examples_test::json_number(result.out, "worker") == 9);
}
