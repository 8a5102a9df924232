// Liveness of the relay: a row that can never be delivered, large messages, a
// full disk and an absent broker never stop the rest of an outbox, and status
// says what is going on. Real outbox-relay and outbox-broker processes.
#include <sys/mount.h>

#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "holding_sink.hpp"
#include "relay/broker_sink.hpp"
#include "relay_harness.hpp"
#include "sqlite/sqlite.hpp"

using namespace relay_test;

namespace {

// Legal messages "key:n" next to one row per way of breaking a limit or the
// format, all in one transaction (so in one batch). The last poison row
// shares key "a" with a:3, which must wait behind it under --on-dead block.
std::vector<std::string> poison_scenario() {
  return {
      R"({"key": "a", "payload": "a:1"})",
      R"({"key": "p1", "msg_id": {"repeat": "m", "count": 300}})",
      R"({"key": "b", "payload": "b:1"})",
      R"({"key": "p2", "topic": {"repeat": "t", "count": 300}})",
      R"({"key": {"repeat": "k", "count": 5000}})",
      R"({"key": "a", "payload": "a:2"})",
      R"({"key": "p4", "headers": {"count": 65}})",
      R"({"key": "p5", "headers": {"count": 1, "value_bytes": 70000}})",
      R"({"key": "p6", "headers_hex": "FFFFFFFF"})",
      R"({"key": "p7", "headers_hex": "0102"})",
      R"({"key": "p8", "msg_id": "has space"})",
      R"({"key": "b", "payload": "b:2"})",
      R"({"key": "a", "payload": {"repeat": "x", "count": 2000000}})",
      R"({"key": "a", "payload": "a:3"})",
      R"({"key": "c", "payload": "c:1"})",
  };
}

// What each poison row's dead reason must name: the field, its size, the limit.
const std::vector<std::string> kPoisonReasons = {
    "msg_id is 300 bytes, above the limit of 255",
    "topic is 300 bytes, above the limit of 255",
    "partition key is 5000 bytes, above the limit of 4096",
    "header count is 65 headers, above the limit of 64",
    "value is 70000 bytes, above the limit of 65535",
    "malformed headers: truncated length field (headers blob of 2 bytes)",
    "malformed headers: length exceeds the data (headers blob of 4 bytes)",
    "msg_id has byte 0x20 at position 3",
    "too large: key + headers + payload is 2000003 bytes, above the destination's limit of "
    "1048576",
};

std::vector<std::string> payloads_in_order(const std::string& endpoint) {
  std::vector<std::string> payloads;
  for (const auto& message : fetch_all(endpoint)) payloads.push_back(message.payload);
  return payloads;
}

// Runs `sql` on `db` as another program writing through the SQL contract would.
void exec_sql(const std::filesystem::path& db, const char* sql) {
  auto raw = sqlite::open_connection(db, {});
  sqlite::exec(raw.get(), sql);
}

void check_poison_reasons(const std::filesystem::path& db) {
  auto dead = test_support::run(relay_binary(), {"dead", "--db", db.string(), "--json"});
  REQUIRE(dead.status.code == 0);
  auto lines = test_support::lines(dead.out);
  CHECK(lines.size() == kPoisonReasons.size());
  for (const auto& reason : kPoisonReasons) {
    INFO(reason << "\n" << dead.out);
    CHECK(dead.out.find(reason) != std::string::npos);
  }
  for (const auto& line : lines) {
    CHECK_THAT(nlohmann::json::parse(line).at("reason").get<std::string>(),
               Catch::StartsWith("UNDELIVERABLE: "));
  }
  // The text listing names seq, msg_id and reason, long fields cut short.
  auto text = test_support::run(relay_binary(), {"dead", "--db", db.string()});
  CHECK(text.out.find("seq 2  msg_id mmmm") != std::string::npos);
  CHECK(text.out.find("... (300 bytes)") != std::string::npos);
}

}  // namespace

TEST_CASE("rows that break a limit or the headers format are dead one by one while the rest flows",
          "[relay][liveness]") {
  test_support::TempDir dir("relay-poison");
  auto db = dir / "app.db";
  outbox::Outbox::open(db);  // the schema; every row comes from the SQL producer
  BrokerProcess broker(dir.path(), dir / "broker.db");
  sql_produce(db, poison_scenario());

  RelayProcess relay(dir.path(), db, broker.endpoint());
  INFO(relay.log());
  REQUIRE(wait_delivered(db, 5, 60s));
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).dead == 9; }, 30s, 20ms));
  auto status = outbox_status(db);
  CHECK(status.pending == 1);  // a:3, behind the dead 2 MB message of key "a"
  CHECK(status.session_up);
  CHECK(relay.process().running());
  CHECK(payloads_in_order(broker.endpoint()) ==
        std::vector<std::string>{"a:1", "b:1", "a:2", "b:2", "c:1"});
  check_poison_reasons(db);
  // Each one logged once, naming seq and msg_id.
  CHECK(relay.log().find("(seq 9, topic 'orders', key 'p6') can never be delivered") !=
        std::string::npos);

  auto exit = relay.stop();
  CHECK(exit.exited);
  CHECK(exit.code == 0);
}

// The relay reads seqs above its cursor (0 at first): a row another program
// inserted with a seq of its own at 0 or below was never read, never dead and
// reported nowhere.
TEST_CASE("rows inserted with a seq of 0 or below are made dead, naming the seq",
          "[relay][liveness]") {
  test_support::TempDir dir("relay-seq-below-one");
  auto db = dir / "app.db";
  outbox::Outbox::open(db);
  BrokerProcess broker(dir.path(), dir / "broker.db");
  exec_sql(db,
           "INSERT INTO outbox_messages(seq, msg_id, topic, partition_key, payload) VALUES "
           "(-5, 'below-5', 'orders', 'n', X'00'), (0, 'zero', 'orders', 'z', X'00');"
           "INSERT INTO outbox_messages(msg_id, topic, partition_key, payload) VALUES "
           "('ok-1', 'orders', 'k', CAST('ok-1' AS BLOB)), "
           "('n-later', 'orders', 'n', CAST('n-later' AS BLOB));");
  RelayProcess relay(dir.path(), db, broker.endpoint(), {"--cleanup-interval", "200ms"});
  INFO(relay.log());
  REQUIRE(wait_delivered(db, 1, 60s));
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).dead == 2; }, 30s, 20ms));
  auto dead = test_support::run(relay_binary(), {"dead", "--db", db.string()});
  CHECK_THAT(dead.out, Catch::Contains("UNDELIVERABLE: seq -5 is not above 0") &&
                           Catch::Contains("UNDELIVERABLE: seq 0 is not above 0") &&
                           Catch::Contains("insert the message again without a seq"));
  // n-later waits behind its key's dead row, until that is dropped.
  CHECK(outbox_status(db).pending == 1);
  REQUIRE(test_support::run(relay_binary(), {"drop", "--db", db.string(), "--msg-id", "below-5"})
              .status.code == 0);
  REQUIRE(wait_delivered(db, 2, 60s));
  CHECK(payloads_in_order(broker.endpoint()) == std::vector<std::string>{"ok-1", "n-later"});
  CHECK(relay.stop().code == 0);
}

// Every settled seq has a delivery row, so a row at a positive seq at or below
// the cursor with none was inserted with a seq of its own after the cursor had
// passed it (a copy of rows from another database, a tool that picks seqs):
// it was never read, never dead and reported nowhere. It is made dead, and a
// replay sends it.
TEST_CASE("a row inserted below the cursor with a seq of its own is made dead and can be replayed",
          "[relay][liveness]") {
  test_support::TempDir dir("relay-below-cursor");
  auto db = dir / "app.db";
  outbox::Outbox::open(db);
  BrokerProcess broker(dir.path(), dir / "broker.db");
  exec_sql(db,
           "INSERT INTO outbox_messages(seq, msg_id, topic, partition_key, payload) VALUES "
           "(10, 's10', 'orders', 'a', CAST('s10' AS BLOB)), "
           "(20, 's20', 'orders', 'b', CAST('s20' AS BLOB));");
  RelayProcess relay(dir.path(), db, broker.endpoint(), {"--cleanup-interval", "200ms"});
  INFO(relay.log());
  REQUIRE(wait_delivered(db, 2, 60s));
  exec_sql(db,
           "INSERT INTO outbox_messages(seq, msg_id, topic, partition_key, payload) VALUES "
           "(15, 's15', 'orders', 'a', CAST('s15' AS BLOB));"
           "INSERT INTO outbox_messages(msg_id, topic, partition_key, payload) VALUES "
           "('c-after', 'orders', 'c', CAST('c-after' AS BLOB));");
  REQUIRE(wait_delivered(db, 3, 60s));
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).dead == 1; }, 30s, 20ms));
  exec_sql(db,
           "INSERT INTO outbox_messages(msg_id, topic, partition_key, payload) VALUES "
           "('a-after', 'orders', 'a', CAST('a-after' AS BLOB)), "
           "('b-after', 'orders', 'b', CAST('b-after' AS BLOB));");
  REQUIRE(wait_delivered(db, 4, 60s));
  auto dead = test_support::run(relay_binary(), {"dead", "--db", db.string()});
  CHECK_THAT(dead.out, Catch::Contains("s15") &&
                           Catch::Contains("UNDELIVERABLE: seq 15 is at or below the relay's "
                                           "cursor") &&
                           Catch::Contains("replay it to send it now"));
  CHECK(relay.log().find("(seq 15, topic 'orders', key 'a') was inserted below the cursor") !=
        std::string::npos);
  // a-after waits behind its key's dead row; the replay sends both, in order.
  CHECK(outbox_status(db).pending == 1);
  REQUIRE(test_support::run(relay_binary(), {"replay", "--db", db.string(), "--msg-id", "s15"})
              .status.code == 0);
  REQUIRE(wait_delivered(db, 6, 60s));
  CHECK(outbox_status(db).dead == 0);
  CHECK(payloads_in_order(broker.endpoint()) ==
        std::vector<std::string>{"s10", "s20", "c-after", "b-after", "s15", "a-after"});
  CHECK(relay.stop().code == 0);
}

TEST_CASE("with --on-dead skip no poison row holds anything back", "[relay][liveness]") {
  test_support::TempDir dir("relay-poison-skip");
  auto db = dir / "app.db";
  outbox::Outbox::open(db);
  BrokerProcess broker(dir.path(), dir / "broker.db");
  sql_produce(db, poison_scenario());

  RelayProcess relay(dir.path(), db, broker.endpoint(), {"--on-dead", "skip"});
  INFO(relay.log());
  REQUIRE(wait_delivered(db, 6, 60s));
  auto status = outbox_status(db);
  CHECK(status.dead == 9);
  CHECK(status.pending == 0);
  CHECK(payloads_in_order(broker.endpoint()) ==
        std::vector<std::string>{"a:1", "b:1", "a:2", "b:2", "a:3", "c:1"});
  check_poison_reasons(db);
}

TEST_CASE("1500 messages of 70 KB and 100 of 900 KB drain with the default flags",
          "[relay][liveness]") {
  test_support::TempDir dir("relay-large");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  // 1,000 messages of 70 KB are one 70 MB PUBLISH by count alone, above the
  // broker's 64 MiB frame: only a byte bound on batches lets them through. The
  // sanitizer trees send 1,000 of them instead of 1,500 (still one such batch).
  auto enqueue = [&](long count, std::size_t bytes) {
    auto box = outbox::Outbox::open(db);
    OrderWriter writer(box, 7, bytes);
    while (writer.committed() < count) writer.commit(std::min(100L, count - writer.committed()));
  };
  auto [count, bytes] =
      GENERATE(std::pair<long, std::size_t>{test_support::scaled(1500L, 1000L), 70 * 1000},
               std::pair<long, std::size_t>{100, 900 * 1000});
  enqueue(count, bytes);
  RelayProcess relay(dir.path(), db, broker.endpoint());
  INFO(relay.log());
  REQUIRE(wait_delivered(db, count, 300s));
  CHECK(outbox_status(db).dead == 0);
  check_exactly_once_in_order(fetch_all(broker.endpoint()), count);
}

TEST_CASE(
    "while the broker is away status shows the session down with its last error and a stall is "
    "logged",
    "[relay][liveness]") {
  test_support::TempDir dir("relay-stall");
  auto db = dir / "app.db";
  REQUIRE(produce(db, 40, 2) == 40);
  std::string endpoint;
  {
    BrokerProcess gone(dir.path(), dir / "gone.db");
    endpoint = gone.endpoint();
  }  // killed: nothing listens there now
  RelayProcess relay(dir.path(), db, endpoint,
                     {"--connect-timeout", "100ms", "--ack-timeout", "1s"});
  INFO(relay.log());
  REQUIRE(test_support::wait_until(
      [&] { return relay.log().find("no progress for") != std::string::npos; }, 30s, 20ms));
  CHECK(relay.log().find("40 messages pending") != std::string::npos);
  CHECK(relay.log().find("no session with broker " + endpoint) != std::string::npos);
  auto away = outbox_status(db);
  CHECK_FALSE(away.session_up);
  CHECK(away.last_error.find("no answer from the broker") != std::string::npos);
  CHECK(away.pending == 40);

  BrokerProcess broker(dir.path(), dir / "broker.db", {}, endpoint);
  REQUIRE(wait_delivered(db, 40, 60s));
  REQUIRE(test_support::wait_until([&] { return outbox_status(db).session_up; }, 30s, 20ms));
  CHECK_FALSE(outbox_status(db).last_error.empty());  // kept: the last one still tells a story

  relay.stop();
  CHECK_FALSE(outbox_status(db).session_up);  // released on a clean stop
}

namespace {

// A small tmpfs that a test can fill up; unmounted (lazily) on destruction.
class SmallTmpfs {
 public:
  SmallTmpfs(const std::filesystem::path& where, const std::string& size) : path_(where) {
    std::filesystem::create_directories(where);
    mounted_ = ::mount("tmpfs", where.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
  }
  ~SmallTmpfs() {
    if (mounted_) ::umount2(path_.c_str(), MNT_DETACH);
  }
  SmallTmpfs(const SmallTmpfs&) = delete;
  SmallTmpfs& operator=(const SmallTmpfs&) = delete;
  bool mounted() const { return mounted_; }

 private:
  std::filesystem::path path_;
  bool mounted_ = false;
};

// Writes `file` until the file system is full.
void fill(const std::filesystem::path& file) {
  std::ofstream out(file, std::ios::binary);
  std::string chunk(64 * 1024, 'f');
  for (int i = 0; i < 100000 && out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
       ++i) {
    out.flush();
  }
}

}  // namespace

TEST_CASE("a full disk under the outbox makes the relay wait and resume instead of exiting",
          "[relay][liveness]") {
  test_support::TempDir dir("relay-disk-full");
  SmallTmpfs disk(dir / "disk", "16m");
  if (!disk.mounted()) {
    WARN("skipped: mounting a tmpfs needs root (CAP_SYS_ADMIN)");
    return;
  }
  auto db = dir / "disk" / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto box = outbox::Outbox::open(db);
  OrderWriter writer(box);
  // One message per transaction; false when the disk refused it.
  auto enqueue_next = [&] {
    try {
      writer.commit(1);
    } catch (const outbox::Error& error) {
      INFO(error.what());
      CHECK((error.extended_code() & 0xff) == SQLITE_FULL);
      return false;
    }
    return true;
  };
  for (int i = 0; i < 200; ++i) REQUIRE(enqueue_next());
  RelayProcess relay(dir.path(), db, broker.endpoint(), {"--lease", "3s"});
  INFO(relay.log());
  REQUIRE(wait_delivered(db, writer.committed(), 60s));

  fill(dir / "disk" / "filler");
  // Whatever still fits in the WAL goes in; then the producer is refused too.
  bool refused = false;
  for (int i = 0; i < 100000 && !refused; ++i) refused = !enqueue_next();
  REQUIRE(refused);
  REQUIRE(test_support::wait_until(
      [&] { return relay.log().find("failed with SQLITE_FULL") != std::string::npos; }, 60s, 20ms));
  CHECK(relay.log().find("app.db': ") != std::string::npos);
  CHECK(relay.process().running());

  std::filesystem::remove(dir / "disk" / "filler");
  for (int i = 0; i < 200; ++i) REQUIRE(enqueue_next());
  REQUIRE(wait_delivered(db, writer.committed(), 120s));
  CHECK(relay.log().find("works again") != std::string::npos);
  CHECK(relay.process().running());
  check_exactly_once_in_order(fetch_all(broker.endpoint()), writer.committed());
  auto exit = relay.stop();
  CHECK(exit.exited);
  CHECK(exit.code == 0);
}

namespace {

// Forwards to a real BrokerSink, but the first acknowledgement it passes on
// names a batch that was never sent, as a destination that mislabels its
// answers would.
class MislabelingSink final : public relay::Sink {
 public:
  explicit MislabelingSink(relay::Sink& inner) : inner_(inner) {}

  void set_lease(relay::SinkLease lease) override { inner_.set_lease(std::move(lease)); }
  relay::SessionResult open_session(std::chrono::milliseconds timeout) override {
    return inner_.open_session(timeout);
  }
  bool resume(std::uint64_t first_batch_id) override { return inner_.resume(first_batch_id); }
  bool send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) override {
    return inner_.send(batch_id, messages);
  }
  std::optional<relay::SinkEvent> poll(std::chrono::milliseconds timeout) override {
    auto event = inner_.poll(timeout);
    if (event && event->kind == relay::SinkEvent::Kind::acked && !mislabeled_) {
      mislabeled_ = true;
      event->batch_id += 1'000'000;
    }
    return event;
  }
  std::string describe() const override { return inner_.describe(); }
  relay::SinkLimits limits() const override { return inner_.limits(); }

 private:
  relay::Sink& inner_;
  bool mislabeled_ = false;
};

}  // namespace

TEST_CASE(
    "an acknowledgement for a batch never sent ends the session at once, not at the ack "
    "timeout",
    "[relay][liveness]") {
  test_support::TempDir dir("relay-mislabeled-ack");
  auto db = dir / "app.db";
  BrokerProcess broker(dir.path(), dir / "broker.db");
  REQUIRE(produce(db, 300, 4) == 300);

  auto store = outbox::RelayStore::open(db);
  relay::BrokerSinkOptions sink_options;
  sink_options.endpoint = broker.endpoint();
  sink_options.producer = "mislabeled";
  relay::BrokerSink broker_sink(sink_options);
  MislabelingSink sink(broker_sink);
  relay::RelayConfig config;
  config.holder = "mislabeled";
  config.batch_size = 100;
  // Were the mislabeled answer ignored, its batch would wait this long.
  config.ack_timeout = std::chrono::minutes(10);
  auto log = std::make_shared<relay_test::CapturedLog>();
  config.logger = std::make_shared<spdlog::logger>("relay", log);
  relay::Relay relay(store, sink, config);
  std::thread thread([&] { relay.run(); });

  bool delivered = wait_delivered(db, 300, 60s);
  relay.request_stop();
  thread.join();
  INFO(log->text());
  CHECK(delivered);
  CHECK(log->text().find("acknowledgement for batch 1000001, which was never sent") !=
        std::string::npos);
  CHECK(relay.counters().sessions >= 2);
  auto stored = fetch_all(broker.endpoint());
  std::set<std::string> ids;
  for (const auto& message : stored) ids.insert(message.msg_id);
  CHECK(stored.size() == 300);
  CHECK(ids.size() == 300);
}
