// Shared by the relay integration tests: starts outbox-relay processes,
// commits messages with relay_test_producer, and reads back everything the
// broker stored to check exactly-once and per-key order.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "broker/client.hpp"
#include "broker_process.hpp"
#include "broker_topic.hpp"
#include "outbox/outbox.hpp"
#include "sqlite/sqlite.hpp"
#include "test_support.hpp"

namespace relay_test {

using namespace std::chrono_literals;
using broker_test::BrokerProcess;

inline std::string relay_binary() {
  return OUTBOX_BIN_OUTBOX_RELAY;
}

// Commits `count` orders (one message each) over `keys` keys; every
// `rollback_every`-th transaction is rolled back; payloads are padded to
// `payload_bytes`. Returns the committed count.
inline long produce(const std::filesystem::path& db, long count, long keys, long rollback_every = 0,
                    long payload_bytes = 0) {
  auto result = test_support::run(OUTBOX_BIN_RELAY_TEST_PRODUCER,
                                  {db.string(), std::to_string(count), std::to_string(keys),
                                   std::to_string(rollback_every), std::to_string(payload_bytes)},
                                  120s);
  INFO(result.err);
  REQUIRE(result.status.exited);
  REQUIRE(result.status.code == 0);
  long committed = 0, rolled_back = 0;
  REQUIRE(std::sscanf(result.out.c_str(), "committed %ld rolled-back %ld", &committed,
                      &rolled_back) == 2);
  return committed;
}

#ifdef OUTBOX_SQL_PRODUCER
// Commits rows through the SQL contract alone, as a producer in another
// language would (tests/relay/sql_producer.py: one JSON object per row).
inline void sql_produce(const std::filesystem::path& db, const std::vector<std::string>& rows) {
  std::vector<std::string> args = {db.string()};
  args.insert(args.end(), rows.begin(), rows.end());
  auto result = test_support::run(OUTBOX_SQL_PRODUCER, args, 120s);
  INFO(result.err);
  REQUIRE(result.status.exited);
  REQUIRE(result.status.code == 0);
}
#endif

// A producer running in the background while the relay forwards; with
// `oversize_every`, every such message is too large for a broker started with
// --max-message-bytes 1k (see relay_test_producer.cpp).
class BackgroundProducer {
 public:
  BackgroundProducer(const std::filesystem::path& dir, const std::filesystem::path& db, long count,
                     long keys, long oversize_every = 0)
      : process_(OUTBOX_BIN_RELAY_TEST_PRODUCER,
                 {db.string(), std::to_string(count), std::to_string(keys), "0", "0",
                  std::to_string(oversize_every)},
                 dir) {}

  bool running() { return process_.running(); }

  long wait_committed() {
    auto exit = process_.wait_for(120s);
    INFO(process_.stderr_text());
    REQUIRE(exit.has_value());
    REQUIRE(exit->code == 0);
    long committed = 0, rolled_back = 0;
    REQUIRE(std::sscanf(process_.stdout_text().c_str(), "committed %ld rolled-back %ld", &committed,
                        &rolled_back) == 2);
    return committed;
  }

 private:
  test_support::ChildProcess process_;
};

// One message on topic "orders" in its own transaction; returns its msg_id.
inline std::string enqueue_one(outbox::Outbox& box, const std::string& key,
                               const std::string& payload) {
  outbox::Transaction tx(box);
  auto result = tx.enqueue({.topic = "orders", .key = key, .payload = payload});
  tx.commit();
  return result.msg_id;
}

// The W3C trace context the trace tests follow from enqueue to a consumer.
inline const std::string kTraceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
inline const std::string kTracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

// Commits in one transaction, on topic "orders" and key "k", the payload
// "traced" with that trace context, "untraced" without one, then `more`.
inline void commit_traced_orders(const std::filesystem::path& db,
                                 const std::vector<outbox::Message>& more = {}) {
  auto box = outbox::Outbox::open(db);
  outbox::Transaction tx(box);
  tx.enqueue({.topic = "orders",
              .key = "k",
              .payload = "traced",
              .traceparent = kTraceparent,
              .tracestate = kTracestate});
  tx.enqueue({.topic = "orders", .key = "k", .payload = "untraced"});
  for (const auto& message : more) tx.enqueue(message);
  tx.commit();
}

class RelayProcess {
 public:
  // `environment` adds "NAME=value" entries to the relay's environment.
  RelayProcess(const std::filesystem::path& dir, const std::filesystem::path& db,
               const std::string& broker_endpoint, std::vector<std::string> extra = {},
               const std::vector<std::string>& environment = {}) {
    std::vector<std::string> args = {"run",
                                     "--db",
                                     db.string(),
                                     "--broker",
                                     broker_endpoint,
                                     "--log-level",
                                     "debug",
                                     "--backoff-initial",
                                     "20ms",
                                     "--backoff-max",
                                     "500ms",
                                     "--summary-interval",
                                     "1s"};
    args.insert(args.end(), extra.begin(), extra.end());
    process_ = std::make_unique<test_support::ChildProcess>(relay_binary(), args, dir, environment);
  }

  // `outbox-relay run --db-dir DIR --broker ENDPOINT` with the common test
  // flags and `extra`.
  static std::unique_ptr<RelayProcess> for_directory(const std::filesystem::path& dir,
                                                     const std::filesystem::path& db_dir,
                                                     const std::string& broker_endpoint,
                                                     const std::vector<std::string>& extra = {}) {
    std::vector<std::string> flags = {"--db-dir", db_dir.string(), "--broker", broker_endpoint};
    flags.insert(flags.end(), extra.begin(), extra.end());
    return with_flags(dir, {}, flags);
  }

  // `outbox-relay run --db DB` with the common test flags and `flags`, but
  // no --broker: for the other sinks (--sink jetstream ...). An empty `db`
  // leaves --db out.
  static std::unique_ptr<RelayProcess> with_flags(const std::filesystem::path& dir,
                                                  const std::filesystem::path& db,
                                                  const std::vector<std::string>& flags) {
    std::vector<std::string> args = {"run",  "--log-level",   "debug", "--backoff-initial",
                                     "20ms", "--backoff-max", "500ms", "--summary-interval",
                                     "1s"};
    if (!db.empty()) args.insert(args.end(), {"--db", db.string()});
    args.insert(args.end(), flags.begin(), flags.end());
    std::unique_ptr<RelayProcess> relay(new RelayProcess());
    relay->process_ = std::make_unique<test_support::ChildProcess>(relay_binary(), args, dir);
    return relay;
  }

  test_support::ChildProcess& process() { return *process_; }
  std::string log() const { return process_->stderr_text(); }

  void kill9() {
    process_->signal(SIGKILL);
    REQUIRE(process_->wait_for(10s).has_value());
  }

  test_support::ExitStatus stop() {
    process_->signal(SIGTERM);
    auto status = process_->wait_for(30s);
    INFO(log());
    REQUIRE(status.has_value());
    return *status;
  }

 private:
  RelayProcess() = default;
  std::unique_ptr<test_support::ChildProcess> process_;
};

// What `outbox-relay status --json` says, as numbers.
struct Status {
  long pending = -1;
  long delivered_total = -1;
  long delivered_kept = -1;  // delivered rows not yet removed by retention
  long dead = -1;
  std::string lease_holder;
  bool lease_expired = false;
  bool session_up = false;
  std::string last_error;  // empty: none reported
};

inline Status outbox_status(const std::filesystem::path& db) {
  auto result = test_support::run(relay_binary(), {"status", "--db", db.string(), "--json"}, 30s);
  INFO(result.err);
  REQUIRE(result.status.code == 0);
  const auto json = nlohmann::json::parse(result.out);
  Status s;
  s.pending = json.at("pending").get<long>();
  s.delivered_total = json.at("delivered_total").get<long>();
  s.delivered_kept = json.at("delivered").get<long>();
  s.dead = json.at("dead").get<long>();
  const auto& lease = json.at("lease");
  const auto& relay = json.at("relay");
  s.lease_expired = !lease.is_null() && lease.at("expired").get<bool>();
  s.session_up = json.at("session_up").get<bool>();
  if (!relay.is_null() && relay.at("last_error").is_string()) {
    s.last_error = relay.at("last_error").get<std::string>();
  }
  // The lease's holder; before any lease, the holder the relay reported.
  if (!lease.is_null()) {
    s.lease_holder = lease.at("holder").get<std::string>();
  } else if (!relay.is_null()) {
    s.lease_holder = relay.at("holder").get<std::string>();
  }
  return s;
}

// The lines of `outbox-relay dead --json` output, parsed: one object per dead message.
inline std::vector<nlohmann::json> json_lines(const std::string& output) {
  std::vector<nlohmann::json> parsed;
  for (const auto& line : test_support::lines(output))
    parsed.push_back(nlohmann::json::parse(line));
  return parsed;
}

// Whether the lease is held as "<name>:<8 hex digits>", the name a relay was
// given (--holder) followed by its instance id; an empty name accepts the
// default one, host:pid.
inline bool holds_lease_as(const Status& status, const std::string& name) {
  const auto& holder = status.lease_holder;
  auto instance_at = holder.rfind(':');
  if (instance_at == std::string::npos || holder.size() - instance_at - 1 != 8) return false;
  if (holder.find_first_not_of("0123456789abcdef", instance_at + 1) != std::string::npos) {
    return false;
  }
  auto given = holder.substr(0, instance_at);
  return name.empty() ? given.find(':') != std::string::npos : given == name;
}

// Waits until a producer has created the outbox tables (the relay refuses a
// database without them).
inline bool wait_schema(const std::filesystem::path& db, std::chrono::milliseconds timeout = 30s) {
  return test_support::wait_until(
      [&] {
        return test_support::run(relay_binary(), {"status", "--db", db.string()}).status.code == 0;
      },
      timeout, 10ms);
}

// Waits until the outbox has delivered `expected` messages in all.
inline bool wait_delivered(const std::filesystem::path& db, long expected,
                           std::chrono::milliseconds timeout = 120s) {
  return test_support::wait_until([&] { return outbox_status(db).delivered_total >= expected; },
                                  timeout, 50ms);
}

// Everything the broker stored on a topic, in offset order.
inline std::vector<wire::StoredMessage> fetch_all(const std::string& endpoint,
                                                  const std::string& topic = "orders",
                                                  broker::ClientOptions options = {}) {
  return test_support::fetch_topic(endpoint, topic, options);
}

inline std::vector<wire::StoredMessage> fetch_all_curve(const std::string& endpoint,
                                                        const std::string& server_public,
                                                        const std::string& client_public,
                                                        const std::string& client_secret) {
  broker::ClientOptions options;
  options.curve = broker::CurveClientConfig{server_public, client_public, client_secret};
  return fetch_all(endpoint, "orders", options);
}

// Checks the broker's copy of the orders topic against what the producers
// committed: every message exactly once, nothing rolled back, and within each
// key the payload counters 1, 2, 3, ... in offset order. `dropped` names the
// "<key>:<i>" payloads an operator dropped: they must be missing, and only they.
inline void check_exactly_once_in_order(const std::vector<wire::StoredMessage>& stored,
                                        long committed, const std::set<std::string>& dropped = {}) {
  std::set<std::string> ids;
  std::map<std::string, long> last_per_key;
  long duplicates = 0, phantoms = 0, out_of_order = 0;
  for (const auto& message : stored) {
    if (!ids.insert(message.msg_id).second) ++duplicates;
    if (message.payload.rfind("rolled-back:", 0) == 0) {
      ++phantoms;
      continue;
    }
    auto colon = message.payload.find(':');
    auto key = message.payload.substr(0, colon);
    auto n = std::stol(message.payload.substr(colon + 1));
    auto expected = last_per_key[key] + 1;
    while (dropped.count(key + ":" + std::to_string(expected)) != 0) ++expected;
    if (key != message.key || n != expected) {
      if (out_of_order == 0) UNSCOPED_INFO("first out of order: " << message.payload);
      ++out_of_order;
    }
    last_per_key[key] = n;
  }
  CHECK(duplicates == 0);
  CHECK(phantoms == 0);
  CHECK(out_of_order == 0);
  CHECK(static_cast<long>(stored.size()) == committed - static_cast<long>(dropped.size()));
}

// Commits orders through the library in this process, numbered per key the
// way check_exactly_once_in_order() expects ("<key>:<n>:", padded). Keys are
// "<key_prefix>k<i>" (a prefix per database keeps several databases' keys apart).
class OrderWriter {
 public:
  explicit OrderWriter(outbox::Outbox& box, long keys = 3, std::size_t payload_bytes = 1000,
                       std::string key_prefix = "")
      : box_(box), keys_(keys), payload_bytes_(payload_bytes), key_prefix_(std::move(key_prefix)) {}

  // `count` orders in one transaction. Throws outbox::Error (with SQLite's
  // code) when the database refuses it; nothing of it counts then.
  void commit(long count) {
    std::map<std::string, long> next = per_key_;
    outbox::Transaction tx(box_);
    for (long i = 0; i < count; ++i) {
      std::string key = key_prefix_ + "k" + std::to_string((committed_ + i) % keys_);
      auto payload = key + ":" + std::to_string(++next[key]) + ":";
      payload.resize(std::max(payload.size(), payload_bytes_), 'x');
      tx.enqueue({.topic = "orders", .key = key, .payload = payload});
    }
    tx.commit();
    per_key_ = std::move(next);
    committed_ += count;
  }

  long committed() const { return committed_; }

 private:
  outbox::Outbox& box_;
  long keys_;
  std::size_t payload_bytes_;
  std::string key_prefix_;
  std::map<std::string, long> per_key_;
  long committed_ = 0;
};

// The relay lease row as "holder epoch": unchanged across a test means the
// relay kept its lease throughout (a lease that lapsed and was claimed again
// has a new epoch).
inline std::string lease_holder_and_epoch(const std::filesystem::path& db) {
  auto handle = sqlite::open_file(db.string(), SQLITE_OPEN_READONLY);
  sqlite3_busy_timeout(handle.get(), 10000);
  sqlite::Statement statement(handle.get(), "SELECT holder, epoch FROM outbox_lease");
  auto use = statement.use();
  if (!use.step()) return {};
  return use.column_text(0) + " " + std::to_string(use.column_int64(1));
}

inline void exec_sql(const std::filesystem::path& db, const std::string& sql) {
  auto handle = sqlite::open_file(db.string(), SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  sqlite3_busy_timeout(handle.get(), 10000);
  sqlite::exec(handle.get(), sql.c_str());
}

inline std::uint64_t broker_counter(const std::string& endpoint, const std::string& name) {
  broker::Client client(endpoint);
  auto stats = client.stats(20s);
  REQUIRE(stats.ok());
  return broker_test::counter(*stats, name);
}

}  // namespace relay_test
