// outbox-relay --sink jetstream against a real nats-server -js: exactly once
// and per-key order through kills of the relay and of the server, resends
// answered as duplicates, and the refusals at start (no stream, no subject,
// a duplicate window shorter than the relay's retry horizon); the same for a
// directory of databases over one NATS connection (--db-dir).
#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>
#include <outbox/outbox.hpp>

#include "holding_sink.hpp"
#include "jetstream_harness.hpp"
#include "multi_harness.hpp"
#include "relay/jetstream_sink.hpp"
#include "relay/multi_relay.hpp"
#include "relay_harness.hpp"

using namespace relay_test;
using jetstream_test::NatsClient;
using jetstream_test::NatsServer;
using jetstream_test::StreamMessage;

namespace {

constexpr const char* kStream = "OUTBOX";

// Every test starts its own server; without one installed they are skipped.
bool have_nats_server() {
  if (!jetstream_test::nats_server_binary().empty()) return true;
  WARN(
      "nats-server is not installed (Debian: apt-get install nats-server) or OUTBOX_NATS_SERVER "
      "names no program; skipping");
  return false;
}

std::vector<std::string> jetstream_flags(const NatsServer& server,
                                         std::vector<std::string> extra = {}) {
  std::vector<std::string> flags = {"--sink",     "jetstream", "--nats-url",
                                    server.url(), "--stream",  kStream};
  flags.insert(flags.end(), extra.begin(), extra.end());
  return flags;
}

// The stream's copy of the "orders" topic against what the producer
// committed: each msg_id once, nothing rolled back, subjects that name the
// message's key, and within each key the counters 1, 2, 3, ... in stream order.
void check_stream_exactly_once_in_order(const std::vector<StreamMessage>& stored, long committed) {
  std::set<std::string> ids;
  std::map<std::string, long> last_per_key;
  long duplicates = 0, phantoms = 0, out_of_order = 0, wrong_subject = 0;
  for (const auto& message : stored) {
    if (!ids.insert(message.msg_id).second) ++duplicates;
    if (message.payload.rfind("rolled-back:", 0) == 0) {
      ++phantoms;
      continue;
    }
    auto colon = message.payload.find(':');
    auto key = message.payload.substr(0, colon);
    auto n = std::stol(message.payload.substr(colon + 1));
    if (message.subject != relay::subject_for("outbox", "orders", key)) ++wrong_subject;
    if (n != last_per_key[key] + 1) ++out_of_order;
    last_per_key[key] = n;
  }
  CHECK(duplicates == 0);
  CHECK(phantoms == 0);
  CHECK(wrong_subject == 0);
  CHECK(out_of_order == 0);
  CHECK(static_cast<long>(stored.size()) == committed);
}

const std::vector<std::string> kSmallBatches = {"--batch-size",      "100",  "--in-flight",   "4",
                                                "--lease",           "1s",   "--ack-timeout", "1s",
                                                "--connect-timeout", "500ms"};

// Runs `outbox-relay run` to its exit (it is expected to refuse to start).
test_support::RunResult run_refused(const std::filesystem::path& db,
                                    const std::vector<std::string>& flags) {
  std::vector<std::string> args = {"run",  "--db",          db.string(), "--backoff-initial",
                                   "20ms", "--backoff-max", "200ms"};
  args.insert(args.end(), flags.begin(), flags.end());
  return test_support::run(relay_binary(), args, 60s);
}

std::string last_line(const std::string& text) {
  auto lines = test_support::lines(text);
  return lines.empty() ? std::string() : lines.back();
}

}  // namespace

TEST_CASE("subjects are <prefix>.<topic>.<key> with one escaped token each", "[relay][jetstream]") {
  CHECK(relay::subject_for("outbox", "orders", std::string("k1")) == "outbox.orders.k1");
  CHECK(relay::subject_for("", "orders", std::string("k1")) == "orders.k1");
  CHECK(relay::subject_for("outbox", "orders", std::nullopt) == "outbox.orders._");
  CHECK(relay::subject_for("outbox", "orders", std::string("_")) == "outbox.orders.%5F");
  CHECK(relay::subject_for("outbox", "orders", std::string()) == "outbox.orders.%");
  CHECK(relay::subject_for("a.b", "eu.orders", std::string("user 7.*>%")) ==
        "a.b.eu%2Eorders.user%207%2E%2A%3E%25");
  CHECK(relay::decode_subject_token("user%207%2E%2A%3E%25") ==
        std::optional<std::string>("user 7.*>%"));
  CHECK(relay::decode_subject_token("%5F") == std::optional<std::string>("_"));
  CHECK(relay::decode_subject_token("%") == std::optional<std::string>(""));
  CHECK_FALSE(relay::decode_subject_token("_").has_value());
  CHECK_FALSE(relay::decode_subject_token("%4").has_value());
  CHECK_FALSE(relay::decode_subject_token("%zz").has_value());

  CHECK(relay::subject_matches("outbox.>", "outbox.orders.k1"));
  CHECK(relay::subject_matches("outbox.*.*", "outbox.orders.k1"));
  CHECK(relay::subject_matches("outbox.orders.k1", "outbox.orders.k1"));
  CHECK_FALSE(relay::subject_matches("outbox.>", "outbox"));
  CHECK_FALSE(relay::subject_matches("outbox.*", "outbox.orders.k1"));
  CHECK_FALSE(relay::subject_matches("other.>", "outbox.orders.k1"));

  relay::RelayConfig config;  // 10s + 2s + 30s + 10s
  CHECK(relay::retry_horizon(config) == std::chrono::seconds(52));
}

TEST_CASE("ten thousand messages reach a JetStream stream exactly once, in per-key order",
          "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-forward");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"});
  REQUIRE(produce(db, 10000, 16) == 10000);

  auto relay = RelayProcess::with_flags(dir.path(), db, jetstream_flags(server));
  INFO(relay->log());
  REQUIRE(wait_delivered(db, 10000));
  auto after = outbox_status(db);
  CHECK(after.pending == 0);
  CHECK(after.dead == 0);

  NatsClient client(server.url());
  CHECK(client.message_count(kStream) == 10000);
  check_stream_exactly_once_in_order(client.read_all(kStream), 10000);
  auto exit = relay->stop();
  CHECK(exit.exited);
  CHECK(exit.code == 0);
  CHECK(outbox_status(db).lease_expired);
}

TEST_CASE("keys, topics and headers reach JetStream intact", "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-subjects");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"app.>"});
  {
    auto box = outbox::Outbox::open(db);
    outbox::Transaction tx(box);
    tx.enqueue({.topic = "orders",
                .key = "user 7.eu*>",
                .payload = "first",
                .headers = {{"Trace-Id", "abc"}, {"Content-Type", "text/plain"}}});
    tx.enqueue({.topic = "eu.orders", .key = "", .payload = "second"});  // no key
    tx.enqueue({.topic = "orders", .key = "_", .payload = "third"});
    tx.commit();
  }
  auto relay = RelayProcess::with_flags(dir.path(), db,
                                        jetstream_flags(server, {"--subject-prefix", "app"}));
  INFO(relay->log());
  REQUIRE(wait_delivered(db, 3));
  auto stored = NatsClient(server.url()).read_all(kStream);
  REQUIRE(stored.size() == 3);
  CHECK(stored[0].subject == "app.orders.user%207%2Eeu%2A%3E");
  CHECK(stored[0].payload == "first");
  // NATS keeps headers in a map: compare them in name order.
  auto headers = stored[0].headers;
  std::sort(headers.begin(), headers.end());
  CHECK(headers == std::vector<std::pair<std::string, std::string>>{{"Content-Type", "text/plain"},
                                                                    {"Trace-Id", "abc"}});
  CHECK(stored[1].subject == "app.eu%2Eorders._");
  CHECK(stored[2].subject == "app.orders.%5F");
  for (const auto& message : stored) CHECK(message.msg_id.size() > 10);
}

TEST_CASE("a traceparent set at enqueue reaches consumers unchanged through both sinks",
          "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-trace-context");
  const std::string& traceparent = kTraceparent;
  const std::string& tracestate = kTracestate;

  // Through the broker: FETCH (wire::StoredMessage) and `outbox-broker tail --json`.
  BrokerProcess broker(dir.path(), dir / "broker.db");
  commit_traced_orders(dir / "to-broker.db");
  RelayProcess to_broker(dir.path(), dir / "to-broker.db", broker.endpoint());
  REQUIRE(wait_delivered(dir / "to-broker.db", 2));
  auto fetched = fetch_all(broker.endpoint());
  REQUIRE(fetched.size() == 2);
  CHECK(wire::header_value(fetched[0].headers, "traceparent") ==
        std::optional<std::string_view>(traceparent));
  CHECK(wire::header_value(fetched[0].headers, "tracestate") ==
        std::optional<std::string_view>(tracestate));
  CHECK_FALSE(wire::header_value(fetched[1].headers, "traceparent").has_value());
  auto tail = test_support::run(
      broker_test::broker_binary(),
      {"tail", "--connect", broker.endpoint(), "--topic", "orders", "--max", "1", "--json"});
  CHECK(tail.status.code == 0);
  CHECK(nlohmann::json::parse(tail.out).at("headers").at("traceparent") == traceparent);
  CHECK(to_broker.stop().code == 0);

  // Through JetStream: NATS headers of the same names.
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"});
  commit_traced_orders(dir / "to-nats.db");
  auto to_nats = RelayProcess::with_flags(dir.path(), dir / "to-nats.db", jetstream_flags(server));
  INFO(to_nats->log());
  REQUIRE(wait_delivered(dir / "to-nats.db", 2));
  auto streamed = NatsClient(server.url()).read_all(kStream);
  REQUIRE(streamed.size() == 2);
  auto headers = streamed[0].headers;
  std::sort(headers.begin(), headers.end());
  CHECK(headers == std::vector<std::pair<std::string, std::string>>{{"traceparent", traceparent},
                                                                    {"tracestate", tracestate}});
  CHECK(streamed[1].headers.empty());
  CHECK(to_nats->stop().code == 0);
}

TEST_CASE("a resend after lost acknowledgements is answered duplicate by JetStream",
          "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-lost-ack");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"});
  REQUIRE(produce(db, 2000, 8) == 2000);
  {
    auto relay = RelayProcess::with_flags(dir.path(), db, jetstream_flags(server));
    INFO(relay->log());
    REQUIRE(wait_delivered(db, 2000));
    CHECK(relay->stop().code == 0);
  }
  // Forget every acknowledgement, as if they had been lost before being recorded.
  exec_sql(db,
           "DELETE FROM outbox_delivery;"
           "UPDATE outbox_relay_cursor SET settled_through_seq = 0, delivered_total = 0;");
  REQUIRE(outbox_status(db).pending == 2000);

  auto relay = RelayProcess::with_flags(dir.path(), db, jetstream_flags(server));
  REQUIRE(wait_delivered(db, 2000));
  CHECK(relay->stop().code == 0);
  INFO(relay->log());
  CHECK(relay->log().find("stored 0, duplicates 2000") != std::string::npos);
  NatsClient client(server.url());
  CHECK(client.message_count(kStream) == 2000);
  check_stream_exactly_once_in_order(client.read_all(kStream), 2000);
}

TEST_CASE("kill -9 of the relay mid-stream: JetStream holds each msg_id once, in order",
          "[relay][jetstream][recovery]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-kill");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"});
  BackgroundProducer producer(dir.path(), db, 10000, 16);
  REQUIRE(wait_schema(db));
  {
    auto first = RelayProcess::with_flags(dir.path(), db, jetstream_flags(server, kSmallBatches));
    INFO(first->log());
    REQUIRE(test_support::wait_until([&] { return outbox_status(db).delivered_total >= 1000; }, 60s,
                                     5ms));
    first->kill9();
  }
  auto second = RelayProcess::with_flags(dir.path(), db, jetstream_flags(server, kSmallBatches));
  auto committed = producer.wait_committed();
  INFO(second->log());
  REQUIRE(wait_delivered(db, committed));
  NatsClient client(server.url());
  CHECK(client.message_count(kStream) == static_cast<std::uint64_t>(committed));
  check_stream_exactly_once_in_order(client.read_all(kStream), committed);
}

TEST_CASE(
    "kill -9 of nats-server mid-stream: after its restart each msg_id is there once, in order",
    "[relay][jetstream][recovery]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-server-kill");
  auto db = dir / "app.db";
  auto store = dir / "jetstream";
  auto server = std::make_unique<NatsServer>(dir.path(), store);
  auto port = server->port();
  auto url = server->url();
  NatsClient(url).add_stream(kStream, {"outbox.>"});
  BackgroundProducer producer(dir.path(), db, 10000, 16);
  REQUIRE(wait_schema(db));
  auto relay = RelayProcess::with_flags(dir.path(), db, jetstream_flags(*server, kSmallBatches));
  INFO(relay->log());
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).delivered_total >= 1000; }, 60s,
                                   5ms));
  server->kill9();
  server.reset();
  // While it is down the relay keeps retrying and says so.
  REQUIRE(test_support::wait_until(
      [&] { return relay->log().find("cannot connect to NATS") != std::string::npos; }, 30s));
  // Same port, same store: the relay reconnects by itself.
  server = std::make_unique<NatsServer>(dir.path(), store, port);
  auto committed = producer.wait_committed();
  REQUIRE(wait_delivered(db, committed));
  CHECK(relay->process().running());
  CHECK(relay->log().find("session open again") != std::string::npos);
  NatsClient client(url);
  CHECK(client.message_count(kStream) == static_cast<std::uint64_t>(committed));
  check_stream_exactly_once_in_order(client.read_all(kStream), committed);
}

TEST_CASE("a nats-server that stops answering: PubAck timeouts, reconnects, resends in order",
          "[relay][jetstream][recovery]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-stall");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"});
  BackgroundProducer producer(dir.path(), db, 5000, 8);
  REQUIRE(wait_schema(db));
  auto relay = RelayProcess::with_flags(
      dir.path(), db,
      jetstream_flags(server, {"--batch-size", "100", "--in-flight", "4", "--ack-timeout", "500ms",
                               "--connect-timeout", "300ms"}));
  INFO(relay->log());
  REQUIRE(
      test_support::wait_until([&] { return outbox_status(db).delivered_total >= 500; }, 60s, 5ms));
  // Frozen, the server keeps its sockets open but answers nothing.
  REQUIRE(server.process().pause());
  bool timed_out = test_support::wait_until(
      [&] { return relay->log().find("no acknowledgement for batch") != std::string::npos; }, 30s);
  bool retried =
      timed_out &&
      test_support::wait_until(
          [&] { return relay->log().find("cannot connect to NATS") != std::string::npos; }, 30s);
  server.process().signal(SIGCONT);
  CHECK(timed_out);
  CHECK(retried);
  auto committed = producer.wait_committed();
  REQUIRE(wait_delivered(db, committed));
  NatsClient client(server.url());
  CHECK(client.message_count(kStream) == static_cast<std::uint64_t>(committed));
  check_stream_exactly_once_in_order(client.read_all(kStream), committed);
}

TEST_CASE("a duplicate window shorter than the retry horizon is refused unless allowed",
          "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-window");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"}, 20s);
  REQUIRE(produce(db, 100, 4) == 100);

  // Defaults: 10s ack timeout + 2s connect + 30s backoff max + 10s lease = 52s > 20s.
  auto refused = run_refused(db, {"--sink", "jetstream", "--nats-url", server.url(), "--stream",
                                  kStream, "--backoff-max", "30s"});
  INFO(refused.err);
  CHECK(refused.status.exited);
  CHECK(refused.status.code == 6);
  auto line = last_line(refused.err);
  CHECK(line.find("outbox-relay: stream 'OUTBOX' remembers msg_ids for 20s") == 0);
  CHECK(line.find("up to 52s") != std::string::npos);
  CHECK(line.find("--allow-short-dedup-window") != std::string::npos);
  CHECK(outbox_status(db).pending == 100);
  CHECK(outbox_status(db).lease_expired);  // released on the way out
  CHECK(NatsClient(server.url()).message_count(kStream) == 0);

  // Settings whose horizon fits (4s + 1s + 5s + 5s = 15s) run.
  auto fits = RelayProcess::with_flags(
      dir.path(), db,
      jetstream_flags(server, {"--ack-timeout", "4s", "--connect-timeout", "1s", "--backoff-max",
                               "5s", "--lease", "5s"}));
  {
    INFO(fits->log());
    REQUIRE(wait_delivered(db, 100));
    CHECK(fits->stop().code == 0);
  }

  // The flag accepts the risk, and the log says so.
  REQUIRE(produce(db, 100, 4) == 100);
  auto allowed = RelayProcess::with_flags(
      dir.path(), db,
      jetstream_flags(server, {"--backoff-max", "30s", "--allow-short-dedup-window"}));
  INFO(allowed->log());
  REQUIRE(wait_delivered(db, 200));
  CHECK(allowed->log().find("running anyway (--allow-short-dedup-window)") != std::string::npos);
  CHECK(allowed->stop().code == 0);
  CHECK(NatsClient(server.url()).message_count(kStream) == 200);
}

TEST_CASE("a missing stream or a subject no stream covers is refused at start",
          "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-missing");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  REQUIRE(produce(db, 10, 2) == 10);

  SECTION("no such stream") {
    auto refused = run_refused(db, jetstream_flags(server));
    INFO(refused.err);
    CHECK(refused.status.code == 7);
    CHECK(last_line(refused.err) == "outbox-relay: JetStream stream 'OUTBOX' does not exist on " +
                                        server.url() +
                                        " (create it, or name another with --stream)");
  }
  SECTION("the stream covers other subjects") {
    NatsClient(server.url()).add_stream(kStream, {"other.>"});
    auto refused = run_refused(db, jetstream_flags(server));
    INFO(refused.err);
    CHECK(refused.status.code == 7);
    CHECK(last_line(refused.err)
              .find("outbox-relay: no subject of stream 'OUTBOX' covers 'outbox.orders.k") == 0);
    CHECK(NatsClient(server.url()).message_count(kStream) == 0);
  }
  SECTION("--stream is required") {
    auto refused = run_refused(db, {"--sink", "jetstream", "--nats-url", server.url()});
    CHECK(refused.status.code == 2);
    CHECK(refused.err.find("--stream") != std::string::npos);
  }
  CHECK(outbox_status(db).pending == 10);
}

TEST_CASE("the JetStream settings can come from a config file", "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-config");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream("EVENTS", {"shop.>"});
  REQUIRE(produce(db, 300, 3) == 300);
  {
    std::ofstream config(dir / "relay.toml");
    config << "[run]\n"
           << "db = \"" << db.string() << "\"\n"
           << "sink = \"jetstream\"\n"
           << "nats-url = \"" << server.url() << "\"\n"
           << "stream = \"EVENTS\"\n"
           << "subject-prefix = \"shop\"\n"
           << "allow-short-dedup-window = false\n"
           << "batch-size = 50\n";
  }
  test_support::ChildProcess relay(relay_binary(),
                                   {"run", "--config", (dir / "relay.toml").string()}, dir.path());
  INFO(relay.stderr_text());
  REQUIRE(wait_delivered(db, 300));
  auto stored = NatsClient(server.url()).read_all("EVENTS");
  REQUIRE(stored.size() == 300);
  CHECK(stored.front().subject.rfind("shop.orders.k", 0) == 0);
  relay.signal(SIGTERM);
  auto exit = relay.wait_for(30s);
  REQUIRE(exit.has_value());
  CHECK(exit->code == 0);
}

TEST_CASE("a message above the stream's size limit is dead and holds back its key",
          "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-dead");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"}, 2min, 1024);
  std::string too_large;
  {
    auto box = outbox::Outbox::open(db);
    enqueue_one(box, "a", "a:1");
    too_large = enqueue_one(box, "a", std::string(4096, 'x'));
    enqueue_one(box, "a", "a:2");
    enqueue_one(box, "b", "b:1");
  }
  auto relay = RelayProcess::with_flags(dir.path(), db, jetstream_flags(server));
  INFO(relay->log());
  REQUIRE(wait_delivered(db, 2));  // a:1 and b:1; a:2 waits behind the dead message
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).dead == 1; }, 30s, 20ms));
  CHECK(outbox_status(db).pending == 1);
  auto dead = test_support::run(relay_binary(), {"dead", "--db", db.string(), "--json"});
  CHECK(dead.out.find(too_large) != std::string::npos);
  CHECK(dead.out.find("max message size") != std::string::npos);

  auto dropped =
      test_support::run(relay_binary(), {"drop", "--db", db.string(), "--msg-id", too_large});
  CHECK(dropped.status.code == 0);
  REQUIRE(wait_delivered(db, 3));
  std::vector<std::string> payloads;
  for (const auto& message : NatsClient(server.url()).read_all(kStream))
    payloads.push_back(message.payload);
  CHECK(payloads == std::vector<std::string>{"a:1", "b:1", "a:2"});
}

TEST_CASE("rows with a malformed headers blob or msg_id are dead and the rest reaches JetStream",
          "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-poison");
  auto db = dir / "app.db";
  outbox::Outbox::open(db);  // the schema; every row comes from the SQL producer
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"});
  sql_produce(db, {
                      R"({"key": "a", "payload": "a:1"})",
                      R"({"key": "a", "headers_hex": "FFFFFFFF"})",
                      R"({"key": "a", "payload": "a:2"})",
                      R"({"key": "b", "headers_hex": "0102"})",
                      R"({"key": "c", "msg_id": "has space"})",
                      R"({"key": "d", "payload": "d:1"})",
                  });
  auto relay = RelayProcess::with_flags(dir.path(), db, jetstream_flags(server));
  INFO(relay->log());
  REQUIRE(wait_delivered(db, 2));  // a:1 and d:1; a:2 waits behind the dead row of key "a"
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).dead == 3; }, 30s, 20ms));
  CHECK(outbox_status(db).pending == 1);
  CHECK(relay->process().running());
  auto dead = test_support::run(relay_binary(), {"dead", "--db", db.string(), "--json"});
  CHECK(dead.out.find("malformed headers: length exceeds the data") != std::string::npos);
  CHECK(dead.out.find("malformed headers: truncated length field") != std::string::npos);
  CHECK(dead.out.find("msg_id has byte 0x20") != std::string::npos);
  std::vector<std::string> payloads;
  for (const auto& message : NatsClient(server.url()).read_all(kStream))
    payloads.push_back(message.payload);
  CHECK(payloads == std::vector<std::string>{"a:1", "d:1"});
}

TEST_CASE("a stream deleted while the relay runs stops it with exit code 7", "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-deleted");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"});
  REQUIRE(produce(db, 100, 4) == 100);
  auto relay = RelayProcess::with_flags(dir.path(), db, jetstream_flags(server));
  INFO(relay->log());
  REQUIRE(wait_delivered(db, 100));
  NatsClient(server.url()).delete_stream(kStream);
  REQUIRE(produce(db, 100, 4) == 100);
  // The publish finds no stream (no responders), the next session finds none either.
  auto exit = relay->process().wait_for(60s);
  REQUIRE(exit.has_value());
  INFO("signal " << exit->signal << "\n" << relay->log());
  CHECK(exit->code == 7);
  CHECK(relay->log().find("no responders") != std::string::npos);
  CHECK(last_line(relay->log()).find("outbox-relay: JetStream stream 'OUTBOX' does not exist") ==
        0);
  CHECK(outbox_status(db).pending == 100);
}

TEST_CASE("the sink counts a message's size as nats-server does: header block and payload",
          "[relay][jetstream]") {
  outbox::PendingMessage message;
  message.msg_id = "4711";
  message.payload = std::string(100, 'x');
  // "NATS/1.0\r\n" + "Nats-Msg-Id: 4711\r\n" + "\r\n" + payload.
  CHECK(relay::nats_message_size(message) == 10 + 19 + 2 + 100);
  message.headers = {{"Trace-Id", "abc"}, {"Nats-Msg-Id", "ignored: the msg_id wins"}};
  CHECK(relay::nats_message_size(message) == 10 + 15 + 19 + 2 + 100);  // + "Trace-Id: abc\r\n"
}

TEST_CASE(
    "headers count against the stream's size limit: an oversize message is dead before "
    "anything after it of its key is published",
    "[relay][jetstream]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-header-size");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  constexpr std::size_t kLimit = 1024;
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"}, 2min, kLimit);

  // A message of `key` whose size as the sink publishes it is exactly `size`:
  // the payload fills what the headers leave.
  auto sized = [](const std::string& msg_id, const std::string& key, outbox::Headers headers,
                  std::size_t size) {
    outbox::PendingMessage probe;
    probe.msg_id = msg_id;
    probe.headers = headers;
    auto overhead = relay::nats_message_size(probe);
    REQUIRE(size >= overhead);
    return outbox::Message{.topic = "orders",
                           .key = key,
                           .payload = std::string(size - overhead, 'x'),
                           .headers = std::move(headers),
                           .msg_id = msg_id};
  };
  std::vector<std::string> dead_ids;
  {
    auto box = outbox::Outbox::open(db);
    outbox::Transaction tx(box);
    tx.enqueue({.topic = "orders", .key = "a", .payload = "a:1"});
    // The reported case: a 1,000-byte payload fits, its headers push it over.
    tx.enqueue({.topic = "orders",
                .key = "a",
                .payload = std::string(1000, 'y'),
                .headers = {{"Trace-Id", "00-4bf92f3577b34da6a3ce929d0e0e4736-01"}},
                .msg_id = "big-a"});
    tx.enqueue({.topic = "orders", .key = "a", .payload = "a:2"});
    tx.enqueue({.topic = "orders", .key = "b", .payload = "b:1"});
    // Headers alone above the limit.
    tx.enqueue({.topic = "orders",
                .key = "h",
                .payload = "h:1",
                .headers = {{"Blob", std::string(kLimit, 'z')}},
                .msg_id = "headers-alone"});
    // Exactly at the limit is stored; one byte more is dead, refused by the
    // relay's own count (the server's refusal reads differently).
    tx.enqueue(sized("at-limit", "c", {{"Trace-Id", "abc"}}, kLimit));
    tx.enqueue(sized("over-limit", "d", {{"Trace-Id", "abc"}}, kLimit + 1));
    tx.enqueue({.topic = "orders", .key = "d", .payload = "d:2"});
    tx.commit();
    dead_ids = {"big-a", "headers-alone", "over-limit"};
  }
  auto relay = RelayProcess::with_flags(dir.path(), db, jetstream_flags(server));
  INFO(relay->log());
  REQUIRE(wait_delivered(db, 3));  // a:1, b:1, at-limit
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).dead == 3; }, 30s, 20ms));
  auto status = outbox_status(db);
  CHECK(status.pending == 2);  // a:2 and d:2 wait behind their dead messages

  auto dead = test_support::run(relay_binary(), {"dead", "--db", db.string(), "--json"});
  for (const auto& id : dead_ids) CHECK(dead.out.find(id) != std::string::npos);
  CHECK(dead.out.find("above the stream's max message size (1024)") != std::string::npos);
  CHECK(dead.out.find("message size exceeds maximum allowed") == std::string::npos);

  std::vector<std::string> stored_ids;
  for (const auto& message : NatsClient(server.url()).read_all(kStream)) {
    stored_ids.push_back(message.payload.size() < 8 ? message.payload : message.msg_id);
  }
  CHECK(stored_ids == std::vector<std::string>{"a:1", "b:1", "at-limit"});
  CHECK(relay->stop().code == 0);
}

TEST_CASE("a relay held past its lease between reading and publishing publishes nothing",
          "[relay][jetstream][recovery]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-fencing");
  auto db = dir / "app.db";
  NatsServer server(dir.path(), dir / "jetstream");
  // A one-second duplicate window: JetStream cannot catch a late resend.
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"}, 1s);
  REQUIRE(produce(db, 200, 4) == 200);

  auto store = outbox::RelayStore::open(db);
  relay::JetStreamSinkOptions sink_options;
  sink_options.url = server.url();
  sink_options.stream = kStream;
  sink_options.client_name = "paused";
  sink_options.allow_short_dedup_window = true;
  relay::JetStreamSink js(sink_options);
  HoldingSink sink(js);
  RelayThread paused(store, sink, short_lease_config("paused"));
  REQUIRE(sink.wait_holding(30s));  // it read the 200 messages and holds the lease

  auto standby = RelayProcess::with_flags(
      dir.path(), db,
      jetstream_flags(server,
                      {"--lease", "1s", "--holder", "standby", "--allow-short-dedup-window"}));
  INFO(standby->log());
  REQUIRE(wait_delivered(db, 200));
  CHECK(outbox_status(db).lease_holder.starts_with("standby:"));
  // Wait until the stream has forgotten msg_ids published after the last delivery.
  NatsClient probe(server.url());
  REQUIRE_FALSE(probe.publish("outbox.probe._", "probe", "probe-id"));
  REQUIRE(test_support::wait_until(
      [&] { return !probe.publish("outbox.probe._", "probe", "probe-id"); }, 60s, 100ms));

  // It goes on, with a lease that ran out long ago.
  auto log = release_until_standby(sink, paused);
  INFO(log);
  CHECK(log.find("may have lapsed") != std::string::npos);

  std::set<std::string> ids;
  long orders = 0;
  for (const auto& message : NatsClient(server.url()).read_all(kStream)) {
    if (message.subject == "outbox.probe._") continue;
    ++orders;
    ids.insert(message.msg_id);
  }
  CHECK(orders == 200);
  CHECK(ids.size() == 200);
}

namespace {

// `outbox-relay run --db-dir DIR --sink jetstream` with the common test flags and `extra`.
std::unique_ptr<RelayProcess> directory_relay(const test_support::TempDir& dir,
                                              const std::filesystem::path& tenants_dir,
                                              const NatsServer& server,
                                              std::vector<std::string> extra = {}) {
  std::vector<std::string> flags = {"--db-dir", tenants_dir.string(), "--rescan-interval", "1s"};
  flags.insert(flags.end(), extra.begin(), extra.end());
  return RelayProcess::with_flags(dir.path(), {}, jetstream_flags(server, flags));
}

// A directory for tenant databases next to a nats-server holding the stream
// kStream (messages up to `max_msg_size` bytes; -1: any).
struct JetStreamTenants {
  explicit JetStreamTenants(const std::string& prefix, std::int32_t max_msg_size = -1)
      : dir(prefix),
        tenants_dir(TenantDirectory::created(dir / "tenants")),
        server(dir.path(), dir / "jetstream"),
        client(server.url()) {
    client.add_stream(kStream, {"outbox.>"}, 2min, max_msg_size);
  }
  test_support::TempDir dir;
  std::filesystem::path tenants_dir;
  NatsServer server;
  NatsClient client;
};

bool wait_stream_count(NatsClient& client, long expected,
                       std::chrono::milliseconds timeout = 120s) {
  return test_support::wait_until(
      [&] { return static_cast<long>(client.message_count(kStream)) >= expected; }, timeout, 50ms);
}

}  // namespace

TEST_CASE("run --db-dir --sink jetstream: every database drains over one connection, in order",
          "[relay][jetstream][multi]") {
  if (!have_nats_server()) return;
  // Messages above 1 KiB cannot be stored: such a row is dead.
  JetStreamTenants setup("relay-js-dir", 1024);
  auto& [dir, tenants_dir, server, client] = setup;

  auto tenants = make_tenants(tenants_dir, 12);
  for (auto& tenant : tenants) tenant->writer.commit(40);
  // t0 has a row no stream takes, ahead of more of its key and of other keys.
  auto too_large = enqueue_one(tenants[0]->box, "t0-k0", std::string(4096, 'x'));
  tenants[0]->writer.commit(10);

  auto relay = directory_relay(dir, tenants_dir, server);
  INFO(relay->log());
  // Everything but t0's key t0-k0 after the dead row (t0 commits 50 over 3 keys: k0 gets 17,
  // 14 of them before the dead row).
  const long held_back = 3;
  REQUIRE(wait_stream_count(client, committed(tenants) - held_back));

  // A database that appears while it runs, and more commits everywhere.
  tenants.push_back(std::make_unique<Tenant>(tenants_dir, "late"));
  for (auto& tenant : tenants) tenant->writer.commit(20);
  const long expected = committed(tenants) - held_back - 7;  // 7 more of t0-k0
  REQUIRE(wait_stream_count(client, expected));

  // Stored in the stream is recorded in the database a moment later.
  CHECK(test_support::wait_until(
      [&] {
        const auto t0 = outbox_status(setup.tenants_dir / "t0.db");
        return t0.dead == 1 && t0.pending == held_back + 7;
      },
      30s, 20ms));
  auto dead = test_support::run(relay_binary(),
                                {"dead", "--db", (tenants_dir / "t0.db").string(), "--json"});
  CHECK(dead.out.find(too_large) != std::string::npos);
  CHECK(dead.out.find("max message size") != std::string::npos);
  // Dropping the dead row lets the rest of its key through, in order.
  CHECK(test_support::run(relay_binary(),
                          {"drop", "--db", (tenants_dir / "t0.db").string(), "--msg-id", too_large})
            .status.code == 0);
  REQUIRE(wait_stream_count(client, committed(tenants)));

  CHECK(relay->stop().code == 0);
  const auto log = relay->log();
  CHECK(log.find("over 1 connections") != std::string::npos);
  CHECK(log.find("database late.db: found") != std::string::npos);
  CHECK(client.message_count(kStream) == static_cast<std::uint64_t>(committed(tenants)));
  check_stream_exactly_once_in_order(client.read_all(kStream), committed(tenants));
  for (const auto& name : relay::database_files(tenants_dir, "*.db")) {
    CHECK(outbox_status(tenants_dir / name).pending == 0);
  }
}

TEST_CASE(
    "run --db-dir --sink jetstream: kill -9 of the relay, then a new one: no loss, no duplicate",
    "[relay][jetstream][multi][recovery]") {
  if (!have_nats_server()) return;
  JetStreamTenants setup("relay-js-dir-kill");
  auto& [dir, tenants_dir, server, client] = setup;
  auto tenants = make_tenants(tenants_dir, 10);
  for (auto& tenant : tenants) tenant->writer.commit(1000);

  // Small batches, one in flight: the kill comes long before the last message.
  const std::vector<std::string> flags = {"--lease", "1s",          "--batch-size",
                                          "10",      "--in-flight", "1"};
  {
    auto first = directory_relay(dir, tenants_dir, server, flags);
    INFO(first->log());
    REQUIRE(test_support::wait_until([&] { return setup.client.message_count(kStream) >= 500; },
                                     60s, 1ms));
    first->kill9();
  }
  REQUIRE(client.message_count(kStream) < static_cast<std::uint64_t>(committed(tenants)));
  auto second = directory_relay(dir, tenants_dir, server, flags);
  INFO(second->log());
  // Commits while the second one takes the leases over.
  for (auto& tenant : tenants) tenant->writer.commit(20);
  for (std::size_t i = 0; i < tenants.size(); ++i) {
    REQUIRE(wait_delivered(tenants_dir / ("t" + std::to_string(i) + ".db"),
                           tenants[i]->writer.committed()));
  }
  CHECK(second->stop().code == 0);
  CHECK(client.message_count(kStream) == static_cast<std::uint64_t>(committed(tenants)));
  check_stream_exactly_once_in_order(client.read_all(kStream), committed(tenants));
}

namespace {

// `count` messages of key `key`, each of `payload_bytes` bytes.
std::vector<outbox::PendingMessage> pending_messages(const std::string& key, int count,
                                                     std::size_t payload_bytes) {
  std::vector<outbox::PendingMessage> messages;
  for (int i = 1; i <= count; ++i) {
    outbox::PendingMessage message;
    message.seq = i;
    message.msg_id = key + "-" + std::to_string(i);
    message.topic = "orders";
    message.partition_key = key;
    message.payload = key + ":" + std::to_string(i) + ":";
    message.payload.resize(payload_bytes, 'x');
    messages.push_back(std::move(message));
  }
  return messages;
}

}  // namespace

TEST_CASE("one NATS connection for many databases: pending bytes bounded, a lost server fails all",
          "[relay][jetstream][multi]") {
  if (!have_nats_server()) return;
  test_support::TempDir dir("relay-js-shared");
  NatsServer server(dir.path(), dir / "jetstream");
  NatsClient(server.url()).add_stream(kStream, {"outbox.>"});

  relay::SharedJetStreamOptions options;
  options.sink.url = server.url();
  options.sink.stream = kStream;
  options.sink.max_pending_bytes = 3000;  // per database
  options.max_total_pending_bytes = 5000;
  relay::SharedJetStreamConnection connection(options);
  auto a = connection.channel(1), b = connection.channel(2), c = connection.channel(3);
  CHECK_THROWS_AS(connection.channel(2), std::invalid_argument);
  for (auto* sink : {a.get(), b.get(), c.get()}) REQUIRE(sink->open_session(5s).ok());
  REQUIRE(connection.readable().socket == nullptr);
  REQUIRE(connection.readable().descriptor >= 0);

  // Two messages of ~1,060 bytes each (headers and Nats-Msg-Id counted).
  const auto a1 = pending_messages("a", 2, 1000), a2 = pending_messages("a2", 2, 1000);
  const auto b1 = pending_messages("b", 2, 1000), c1 = pending_messages("c", 2, 1000);
  REQUIRE(relay::nats_message_size(a1[0]) > 1000);
  REQUIRE(relay::nats_message_size(a1[0]) * 4 < 5000);

  // With the server stopped no PubAck comes back: what is published stays pending.
  REQUIRE(server.process().pause());
  CHECK(a->send(1, a1));
  CHECK_FALSE(a->send(2, a2));  // a would hold more than 3,000 bytes
  CHECK(b->send(1, b1));
  CHECK_FALSE(c->send(1, c1));  // all would hold more than 5,000 bytes
  CHECK_FALSE(connection.has_events(1));
  server.process().signal(SIGCONT);

  auto acked = [&](relay::Sink& sink, std::uint32_t slot, std::uint64_t batch_id) {
    REQUIRE(test_support::wait_until([&] { return connection.has_events(slot); }, 30s, 1ms));
    connection.pump(0ms);
    auto event = sink.poll(0ms);
    REQUIRE(event);
    CHECK(event->kind == relay::SinkEvent::Kind::acked);
    CHECK(event->batch_id == batch_id);
    REQUIRE(event->deliveries.size() == 2);
    for (const auto& delivery : event->deliveries)
      CHECK(delivery.status == relay::DeliveryStatus::stored);
  };
  acked(*a, 1, 1);
  acked(*b, 2, 1);
  REQUIRE(c->send(1, c1));
  acked(*c, 3, 1);
  REQUIRE(a->send(2, a2));
  acked(*a, 1, 2);
  CHECK(NatsClient(server.url()).message_count(kStream) == 8);

  // The server goes away with a batch of a's in flight: libnats reports the
  // connection lost, a's session fails; b, with nothing in flight, learns it
  // at its next send.
  REQUIRE(server.process().pause());
  REQUIRE(a->send(3, pending_messages("a3", 2, 100)));
  server.kill9();
  REQUIRE(test_support::wait_until([&] { return connection.has_events(1); }, 30s, 1ms));
  auto failed = a->poll(0ms);
  REQUIRE(failed);
  CHECK(failed->kind == relay::SinkEvent::Kind::failed);
  CHECK_FALSE(failed->error.empty());
  CHECK_FALSE(connection.has_events(1));  // reported once
  CHECK_FALSE(connection.has_events(2));
  REQUIRE(b->send(2, pending_messages("b2", 1, 100)));
  auto b_failed = b->poll(0ms);
  REQUIRE(b_failed);
  CHECK(b_failed->kind == relay::SinkEvent::Kind::failed);
  // No server: a new session cannot open.
  auto session = a->open_session(500ms);
  REQUIRE_FALSE(session.ok());
  CHECK(session.error().find("cannot connect to NATS") != std::string::npos);
}
