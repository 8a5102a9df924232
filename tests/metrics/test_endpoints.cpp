// The metrics endpoints of the real outbox-relay and outbox-broker: what they
// report after traffic, readiness that follows the relay's session and the
// broker's store, and the flags' errors.
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "broker_process.hpp"
#include "relay_harness.hpp"
#include "scrape.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using broker_test::BrokerProcess;
using metrics_test::http_get;
using metrics_test::sample;
using metrics_test::scrape;
using metrics_test::wait_for_address;
using relay_test::RelayProcess;

std::vector<std::string> metrics_flags(const std::filesystem::path& address_file) {
  return {"--metrics-bind", "127.0.0.1:0", "--metrics-address-file", address_file.string()};
}

bool wait_for_sample(const std::string& address, const std::string& series, double expected,
                     std::chrono::milliseconds timeout = 60s) {
  return test_support::wait_until([&] { return scrape(address, series) == expected; }, timeout,
                                  50ms);
}

// The records of a --log-format json log as python3's json module reads
// them: per line one map from member name to the member's value in JSON
// (strings quoted). A line that is not one JSON object fails the test.
using LogRecord = std::map<std::string, std::string>;
std::vector<LogRecord> json_log_records(const std::filesystem::path& dir, const std::string& log) {
  const auto file = dir / "log.jsonl";
  {
    std::ofstream out(file);
    out << log;
  }
  const char* script =
      "import json, sys\n"
      "for line in open(sys.argv[1], encoding='utf-8'):\n"
      "    record = json.loads(line)\n"
      "    assert isinstance(record, dict), line\n"
      "    for name, value in record.items():\n"
      "        print(name + '\\t' + json.dumps(value, ensure_ascii=False))\n"
      "    print()\n";
  auto parsed = test_support::run(OUTBOX_PYTHON3, {"-c", script, file.string()});
  INFO(log);
  INFO(parsed.err);
  REQUIRE(parsed.status.code == 0);
  std::vector<LogRecord> records(1);
  for (const auto& line : test_support::lines(parsed.out)) {
    if (line.empty()) {
      records.emplace_back();
      continue;
    }
    auto tab = line.find('\t');
    REQUIRE(tab != std::string::npos);
    REQUIRE(records.back().emplace(line.substr(0, tab), line.substr(tab + 1)).second);
  }
  records.pop_back();  // after the last record's blank line
  return records;
}

std::optional<LogRecord> find_event(const std::vector<LogRecord>& records,
                                    const std::string& event) {
  for (const auto& record : records) {
    if (auto it = record.find("event"); it != record.end() && it->second == "\"" + event + "\"")
      return record;
  }
  return std::nullopt;
}

}  // namespace

TEST_CASE("relay and broker metrics after a delivered backlog and a consumer commit",
          "[integration]") {
  test_support::TempDir dir("metrics-delivered");
  BrokerProcess broker(dir.path(), dir / "broker.db", metrics_flags(dir / "broker.address"));
  auto broker_metrics = wait_for_address(broker.process(), dir / "broker.address");
  const auto db = dir / "app.db";
  auto committed = relay_test::produce(db, 200, 4);
  REQUIRE(committed == 200);

  RelayProcess relay(dir.path(), db, broker.endpoint(), metrics_flags(dir / "relay.address"));
  auto relay_metrics = wait_for_address(relay.process(), dir / "relay.address");
  INFO(relay.log());
  REQUIRE(
      wait_for_sample(relay_metrics, "outbox_relay_acknowledged_total{outcome=\"stored\"}", 200));
  CHECK(wait_for_sample(relay_metrics, "outbox_relay_pending_messages", 0));
  auto text = http_get(relay_metrics, "/metrics").body;
  CHECK(sample(text, "outbox_relay_lease_held") == 1);
  CHECK(sample(text, "outbox_relay_lease_epoch") >= 1);
  CHECK(sample(text, "outbox_relay_standby") == 0);
  CHECK(sample(text, "outbox_relay_session_up") == 1);
  CHECK(sample(text, "outbox_relay_dead_messages") == 0);
  CHECK(sample(text, "outbox_relay_oldest_pending_age_seconds") == 0);
  CHECK(sample(text, "outbox_relay_sent_messages_total") >= 200);
  CHECK(sample(text, "outbox_relay_acknowledged_total{outcome=\"duplicate\"}") == 0);
  CHECK(sample(text, "outbox_relay_sessions_opened_total") >= 1);
  // A link that never broke: the window in bytes is the full one, 8 batches of 1 MiB.
  CHECK(sample(text, "outbox_relay_window_bytes") == 8 * 1024 * 1024);
  // Every stored message was timed from its commit, every batch from its send.
  CHECK(sample(text, "outbox_relay_commit_to_ack_seconds_count") == 200);
  CHECK(sample(text, "outbox_relay_commit_to_ack_seconds_bucket{le=\"+Inf\"}") == 200);
  CHECK(sample(text, "outbox_relay_send_to_ack_seconds_count") >= 1);
  CHECK(sample(text, "outbox_relay_last_error_time_seconds") == 0);
  auto ready = http_get(relay_metrics, "/readyz");
  CHECK(ready.status == 200);
  CHECK(ready.body.rfind("ready", 0) == 0);
  CHECK(http_get(relay_metrics, "/healthz").status == 200);

  // A consumer group that processed 150 of the 200 messages is 50 behind.
  auto client = broker_test::connect(broker.endpoint());
  REQUIRE(client->commit_offset("orders", "billing", 150, 20s).ok());
  CHECK(wait_for_sample(
      broker_metrics, "outbox_broker_group_lag_messages{group=\"billing\",topic=\"orders\"}", 50));
  text = http_get(broker_metrics, "/metrics").body;
  CHECK(sample(text, "outbox_broker_messages_total{outcome=\"stored\"}") == 200);
  CHECK(sample(text, "outbox_broker_messages_total{outcome=\"conflict\"}") == 0);
  CHECK(sample(text, "outbox_broker_topic_last_offset{topic=\"orders\"}") == 200);
  CHECK(sample(text, "outbox_broker_group_committed_offset{group=\"billing\",topic=\"orders\"}") ==
        150);
  CHECK(sample(text, "outbox_broker_topics_unlisted") == 0);
  CHECK(sample(text, "outbox_broker_dedup_entries") == 200);
  CHECK(sample(text, "outbox_broker_sessions") >= 1);
  CHECK(sample(text, "outbox_broker_connections") >= 2);  // the relay and this client
  CHECK(sample(text, "outbox_broker_database_bytes") > 0);
  CHECK(sample(text, "outbox_broker_store_writable") == 1);
  CHECK(sample(text, "outbox_broker_group_commit_messages_sum") == 200);
  CHECK(sample(text, "outbox_broker_group_commit_seconds_count") >= 1);
  CHECK(http_get(broker_metrics, "/readyz").status == 200);
  CHECK(http_get(broker_metrics, "/nothing-here").status == 404);

  // The client's connection closes: the broker counts it from ZeroMQ's events.
  auto with_client = scrape(broker_metrics, "outbox_broker_connections");
  client.reset();
  CHECK(wait_for_sample(broker_metrics, "outbox_broker_connections", with_client - 1, 20s));

  CHECK(relay.stop().code == 0);
  CHECK(broker.stop().code == 0);
}

TEST_CASE("the relay is ready only with a session, and again once the broker is back",
          "[integration]") {
  test_support::TempDir dir("metrics-readiness");
  const auto db = dir / "app.db";
  relay_test::produce(db, 10, 2);
  // The broker's address, then no broker behind it.
  auto first = std::make_unique<BrokerProcess>(dir.path(), dir / "broker.db");
  const auto endpoint = first->endpoint();
  REQUIRE(first->stop().code == 0);
  first.reset();

  RelayProcess relay(dir.path(), db, endpoint,
                     {"--metrics-bind", "127.0.0.1:0", "--metrics-address-file",
                      (dir / "relay.address").string(), "--connect-timeout", "200ms"});
  auto address = wait_for_address(relay.process(), dir / "relay.address");
  INFO(relay.log());
  REQUIRE(test_support::wait_until(
      [&] {
        return scrape(address, "outbox_relay_session_failures_total{cause=\"connect\"}") >= 1;
      },
      60s, 50ms));
  auto ready = http_get(address, "/readyz");
  CHECK(ready.status == 503);
  CHECK(ready.body == "not ready: holds the lease but has no session with its destination\n");
  CHECK(scrape(address, "outbox_relay_lease_held") == 1);
  CHECK(scrape(address, "outbox_relay_pending_messages") == 10);
  CHECK(scrape(address, "outbox_relay_oldest_pending_age_seconds") > 0);
  CHECK(scrape(address, "outbox_relay_last_error_time_seconds") > 0);

  BrokerProcess broker(dir.path(), dir / "broker.db", {}, endpoint);
  CHECK(test_support::wait_until([&] { return http_get(address, "/readyz").status == 200; }, 60s,
                                 50ms));
  CHECK(wait_for_sample(address, "outbox_relay_pending_messages", 0));
  CHECK(relay.stop().code == 0);
}

TEST_CASE(
    "a standby is ready behind a live holder, unless the backlog is older than "
    "--ready-max-lag",
    "[integration]") {
  test_support::TempDir dir("metrics-standby");
  const auto db = dir / "app.db";
  relay_test::produce(db, 5, 1);
  // The active relay has no destination: the messages stay pending and age.
  RelayProcess active(dir.path(), db, "tcp://127.0.0.1:1",
                      {"--metrics-bind", "127.0.0.1:0", "--metrics-address-file",
                       (dir / "active.address").string(), "--connect-timeout", "100ms"});
  auto active_address = wait_for_address(active.process(), dir / "active.address");
  REQUIRE(test_support::wait_until(
      [&] { return scrape(active_address, "outbox_relay_lease_held") == 1; }, 20s, 20ms));
  auto standby_with = [&](const std::string& name, const std::string& max_lag) {
    auto address_file = dir / (name + ".address");
    auto relay = std::make_unique<RelayProcess>(
        dir.path(), db, "tcp://127.0.0.1:1",
        std::vector<std::string>{"--metrics-bind", "127.0.0.1:0", "--metrics-address-file",
                                 address_file.string(), "--ready-max-lag", max_lag});
    auto address = wait_for_address(relay->process(), address_file);
    INFO(relay->log());
    REQUIRE(test_support::wait_until([&] { return scrape(address, "outbox_relay_standby") == 1; },
                                     20s, 20ms));
    CHECK(scrape(address, "outbox_relay_lease_held") == 0);
    auto ready = http_get(address, "/readyz");
    CHECK(relay->stop().code == 0);
    return ready;
  };
  auto patient = standby_with("patient", "1h");
  CHECK(patient.status == 200);
  CHECK(patient.body == "ready: standby behind a live lease holder\n");
  auto strict = standby_with("strict", "1ms");
  CHECK(strict.status == 503);
  CHECK(strict.body.rfind("not ready: the oldest pending message is ", 0) == 0);
  CHECK(active.stop().code == 0);
}

// The samples of one family in an exposition, by their labels ("" for none).
std::map<std::string, double> samples_of(const std::string& exposition, const std::string& name) {
  std::map<std::string, double> found;
  for (const auto& line : test_support::lines(exposition)) {
    if (line.rfind(name, 0) != 0 || line.size() <= name.size()) continue;
    auto rest = line.substr(name.size());
    if (rest[0] != '{' && rest[0] != ' ') continue;  // another family with this prefix
    auto space = rest.rfind(' ');
    found[rest.substr(0, space)] = std::stod(rest.substr(space + 1));
  }
  return found;
}

TEST_CASE("run --db-dir serves totals over every database and series for the largest backlogs only",
          "[integration]") {
  test_support::TempDir dir("metrics-directory");
  const auto tenants = dir / "tenants";
  std::filesystem::create_directories(tenants);
  // t0 .. t4 with 10, 20, ... 50 pending messages; UUID v7 ids, as for
  // databases forwarded together.
  outbox::Options options;
  options.id_kind = outbox::IdKind::uuid_v7;
  for (int i = 0; i < 5; ++i) {
    auto box = outbox::Outbox::open(tenants / test_support::concat("t", i, ".db"), options);
    relay_test::OrderWriter(box, 2, 100, test_support::concat("t", i, "-")).commit(10 * (i + 1));
  }
  // The broker's address, then no broker behind it: the backlogs stay.
  auto first = std::make_unique<BrokerProcess>(dir.path(), dir / "broker.db");
  const auto endpoint = first->endpoint();
  REQUIRE(first->stop().code == 0);
  first.reset();

  auto flags = metrics_flags(dir / "relay.address");
  flags.insert(flags.end(), {"--metrics-max-databases", "3", "--connect-timeout", "200ms",
                             "--log-format", "json"});
  auto relay = RelayProcess::for_directory(dir.path(), tenants, endpoint, flags);
  auto address = wait_for_address(relay->process(), dir / "relay.address");
  INFO(relay->log());
  REQUIRE(wait_for_sample(address, "outbox_relay_pending_messages", 150));
  auto text = http_get(address, "/metrics").body;
  INFO(text);
  CHECK(sample(text, "outbox_relay_databases") == 5);
  CHECK(sample(text, "outbox_relay_databases_unlisted") == 2);
  CHECK(sample(text, "outbox_relay_databases_unread") == 0);
  CHECK(sample(text, "outbox_relay_dead_messages") == 0);
  CHECK(sample(text, "outbox_relay_oldest_pending_age_seconds") > 0);
  // The per-relay state gauges mean nothing summed: not served.
  CHECK_FALSE(sample(text, "outbox_relay_lease_held"));
  // The three largest backlogs, and only them, in every per-database family.
  const std::map<std::string, double> largest = {
      {"{database=\"t4.db\"}", 50}, {"{database=\"t3.db\"}", 40}, {"{database=\"t2.db\"}", 30}};
  CHECK(samples_of(text, "outbox_relay_database_pending_messages") == largest);
  for (const char* family :
       {"outbox_relay_database_oldest_pending_age_seconds", "outbox_relay_database_dead_messages",
        "outbox_relay_database_lease_held", "outbox_relay_database_session_up",
        "outbox_relay_database_sent_messages_total"}) {
    INFO(family);
    CHECK(samples_of(text, family).size() == 3);
  }
  CHECK(samples_of(text, "outbox_relay_database_acknowledged_total").size() == 6);
  auto ready = http_get(address, "/readyz");
  CHECK(ready.status == 503);
  CHECK(ready.body.find("none has a session") != std::string::npos);

  // The broker comes: everything is delivered; the totals count every
  // database, and the list follows the backlogs (all empty now: by name).
  BrokerProcess broker(dir.path(), dir / "broker.db", {}, endpoint);
  REQUIRE(wait_for_sample(address, "outbox_relay_acknowledged_total{outcome=\"stored\"}", 150));
  REQUIRE(wait_for_sample(address, "outbox_relay_pending_messages", 0));
  CHECK(http_get(address, "/readyz").status == 200);
  REQUIRE(test_support::wait_until(
      [&] {
        return samples_of(http_get(address, "/metrics").body,
                          "outbox_relay_database_pending_messages")
            .contains("{database=\"t0.db\"}");
      },
      30s, 50ms));
  text = http_get(address, "/metrics").body;
  CHECK(sample(text, "outbox_relay_sent_messages_total") >= 150);
  CHECK(sample(text, "outbox_relay_commit_to_ack_seconds_count") >= 150);
  CHECK(sample(text, "outbox_relay_oldest_pending_age_seconds") == 0);
  // t0, t1 and t2 now, each with its own deliveries (one answer per message
  // stored, as the broker stored each once).
  auto acknowledged = samples_of(text, "outbox_relay_database_acknowledged_total");
  CHECK(acknowledged.size() == 6);
  CHECK(acknowledged["{database=\"t0.db\",outcome=\"stored\"}"] == 10);
  CHECK(acknowledged["{database=\"t1.db\",outcome=\"stored\"}"] == 20);
  CHECK(acknowledged["{database=\"t2.db\",outcome=\"stored\"}"] == 30);
  CHECK(samples_of(text, "outbox_relay_database_pending_messages").size() == 3);
  CHECK(sample(text, "outbox_relay_database_pending_messages{database=\"t4.db\"}") == std::nullopt);
  CHECK(relay->stop().code == 0);
  CHECK(broker.stop().code == 0);

  // Every log line about one database names it: in its text and as a field.
  if (std::string(OUTBOX_PYTHON3).empty()) {
    WARN("python3 is not installed: the JSON log lines are not parsed");
    return;
  }
  int about_databases = 0;
  for (const auto& record : json_log_records(dir.path(), relay->log())) {
    const auto& message = record.at("message");
    if (message.rfind("\"database t", 0) != 0) continue;
    ++about_databases;
    auto name = message.substr(std::string("\"database ").size(), 5);
    INFO(message);
    CHECK(record.count("database") == 1);
    if (record.count("database") == 1) CHECK(record.at("database") == "\"" + name + "\"");
  }
  CHECK(about_databases >= 10);  // found, then active, for each of the five
  auto acquired = find_event(json_log_records(dir.path(), relay->log()), "lease_acquired");
  REQUIRE(acquired);
  CHECK(acquired->count("database") == 1);
}

TEST_CASE("the broker is not ready while its store refuses writes", "[integration]") {
  test_support::TempDir dir("metrics-store-full");
  BrokerProcess broker(dir.path(), dir / "broker.db",
                       {"--max-database-size", "2m", "--metrics-bind", "127.0.0.1:0",
                        "--metrics-address-file", (dir / "broker.address").string()});
  auto address = wait_for_address(broker.process(), dir / "broker.address");
  REQUIRE(wait_for_sample(address, "outbox_broker_serving", 1, 20s));
  CHECK(http_get(address, "/readyz").status == 200);
  auto client = broker_test::connect(broker.endpoint());
  std::string payload(8000, 'x');
  bool refused = false;
  for (int round = 0; round < 1000 && !refused; ++round) {
    std::vector<wire::OutgoingMessage> batch;
    for (int i = 0; i < 20; ++i) {
      batch.push_back(
          broker_test::message("fill-" + std::to_string(round) + "-" + std::to_string(i), payload));
    }
    refused = !client->publish(static_cast<std::uint64_t>(round) + 1, batch, 20s).ok();
  }
  REQUIRE(refused);
  auto ready = http_get(address, "/readyz");
  CHECK(ready.status == 503);
  CHECK(ready.body == "not ready: the last group commit failed to write the store (see the log)\n");
  CHECK(wait_for_sample(address, "outbox_broker_store_writable", 0, 20s));
  CHECK(test_support::wait_until(
      [&] { return scrape(address, "outbox_broker_storage_failures_total") >= 1; }, 20s, 20ms));
  CHECK(broker.stop().code == 0);
}

TEST_CASE("a bad metrics address and an address in use are refused", "[integration]") {
  test_support::TempDir dir("metrics-flags");
  auto bad = test_support::run(
      relay_test::relay_binary(),
      {"run", "--db", (dir / "app.db").string(), "--metrics-bind", "127.0.0.1:99999"});
  CHECK(bad.status.code == 2);
  CHECK(bad.err.find("--metrics-bind") != std::string::npos);
  auto orphan = test_support::run(broker_test::broker_binary(),
                                  {"serve", "--db", (dir / "broker.db").string(),
                                   "--metrics-address-file", (dir / "x").string()});
  CHECK(orphan.status.code == 2);
  CHECK(orphan.err.find("--metrics-bind") != std::string::npos);

  BrokerProcess broker(dir.path(), dir / "broker.db", metrics_flags(dir / "broker.address"));
  auto taken = wait_for_address(broker.process(), dir / "broker.address");
  auto second = test_support::run(broker_test::broker_binary(),
                                  {"serve", "--db", (dir / "other.db").string(), "--bind",
                                   "tcp://127.0.0.1:*", "--metrics-bind", taken},
                                  20s);
  CHECK(second.status.code == 4);
  CHECK(second.err.find(taken) != std::string::npos);
  CHECK(broker.stop().code == 0);
}

TEST_CASE("with --log-format json every log line is one JSON object with the fields it is about",
          "[integration]") {
  if (std::string(OUTBOX_PYTHON3).empty()) {
    WARN("python3 is not installed: the JSON log lines are not parsed");
    return;
  }
  test_support::TempDir dir("metrics-json-log");
  BrokerProcess broker(dir.path(), dir / "broker.db",
                       {"--log-format", "json", "--max-message-bytes", "1k"});
  const auto db = dir / "app.db";
  std::string too_large;
  {
    auto box = outbox::Outbox::open(db);
    relay_test::enqueue_one(box, "a", "a:1");
    too_large = relay_test::enqueue_one(box, "a", std::string(4096, 'x'));
    relay_test::enqueue_one(box, "b", "b:1");
  }
  RelayProcess relay(dir.path(), db, broker.endpoint(), {"--log-format", "json"});
  REQUIRE(relay_test::wait_delivered(db, 2));
  REQUIRE(
      test_support::wait_until([&] { return relay_test::outbox_status(db).dead == 1; }, 30s, 20ms));
  CHECK(relay.stop().code == 0);
  CHECK(broker.stop().code == 0);

  auto relay_records = json_log_records(dir.path(), relay.log());
  auto broker_records = json_log_records(dir.path(), broker.process().stderr_text());
  for (auto [component, records] :
       {std::pair{"outbox-relay", &relay_records}, std::pair{"outbox-broker", &broker_records}}) {
    REQUIRE(records->size() >= 2);
    for (const auto& record : *records) {
      CHECK(record.at("time").rfind("\"20", 0) == 0);
      CHECK(record.count("level") == 1);
      CHECK(record.at("component") == std::string("\"") + component + "\"");
      CHECK(record.count("pid") == 1);
      CHECK(record.count("message") == 1);
    }
  }
  auto acquired = find_event(relay_records, "lease_acquired");
  REQUIRE(acquired);
  CHECK(acquired->at("db") == test_support::concat("\"", db.string(), "\""));
  CHECK(acquired->at("epoch") == "1");
  CHECK(acquired->at("holder").size() > 2);
  auto dead = find_event(relay_records, "message_dead");
  REQUIRE(dead);
  CHECK(dead->at("level") == "\"error\"");
  CHECK(dead->at("msg_id") == "\"" + too_large + "\"");
  CHECK(dead->at("seq") == "2");
  CHECK(dead->at("topic") == "\"orders\"");
  CHECK(dead->at("reason").rfind("\"UNDELIVERABLE: too large", 0) == 0);
  CHECK(dead->at("db") == test_support::concat("\"", db.string(), "\""));
  auto opened = find_event(broker_records, "session_opened");
  REQUIRE(opened);
  CHECK(opened->at("session").find_first_not_of("0123456789") == std::string::npos);
  CHECK(opened->at("session") != "0");
  CHECK(opened->at("epoch") == "1");
  CHECK(opened->count("producer") == 1);
  CHECK(opened->count("origin") == 1);

  auto bad = test_support::run(relay_test::relay_binary(),
                               {"run", "--db", db.string(), "--log-format", "yaml"});
  CHECK(bad.status.code == 2);
  CHECK(bad.err.find("--log-format") != std::string::npos);
}
