// outbox-relay run --db-dir with many tenant databases: their ids never meet
// at the broker with the default for databases forwarded together (UUID v7),
// while snowflake ids of two databases do (and the relay says so); the
// broker's sessions stay bounded as databases are released and opened again;
// a broker that is not there yet holds up no database.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "multi_harness.hpp"

using namespace relay_test;

namespace {

// 1,000 tenant databases; 200 in the sanitizer trees, several times slower
// (test_support::scaled).
const int kTenants = test_support::scaled(1000, 200);

// Runs work(0) ... work(count - 1) on `threads` threads at once; the first
// exception's text, empty if none.
std::string on_threads(int count, int threads, const std::function<void(int)>& work) {
  std::atomic<int> next{0};
  std::mutex mutex;
  std::string first_error;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = next++; i < count; i = next++) {
        try {
          work(i);
        } catch (const std::exception& error) {
          std::lock_guard lock(mutex);
          if (first_error.empty()) first_error = error.what();
        }
      }
    });
  }
  for (auto& thread : pool) thread.join();
  return first_error;
}

std::size_t occurrences(const std::string& text, const std::string& part) {
  std::size_t count = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++count;
  return count;
}

constexpr const char* kSnowflakeWarning = "looks like a snowflake id";

}  // namespace

TEST_CASE("ids of a thousand databases producing at once never meet at the broker",
          "[integration][tenants]") {
  TenantDirectory setup("relay-tenant-ids");
  auto& [dir, tenants_dir, broker] = setup;
  // Eight connections and a short idle release: each round the databases are
  // released and opened again, mostly on another connection than before.
  auto relay = RelayProcess::for_directory(
      dir.path(), tenants_dir, broker.endpoint(),
      {"--connections", "8", "--max-open-databases", "2000", "--idle-release", "1s",
       "--rescan-interval", "1s", "--ack-timeout", "60s"});

  // Round 0 creates the databases while the relay discovers them, 3 to 16
  // messages each; three more rounds commit one message into each, after the
  // relay released every database as idle: 5 to 19 messages a database.
  std::vector<std::unique_ptr<Tenant>> tenants(kTenants);
  constexpr int kRounds = 4;
  for (int round = 0; round < kRounds; ++round) {
    auto error = on_threads(kTenants, 8, [&](int i) {
      if (!tenants[i]) tenants[i] = std::make_unique<Tenant>(tenants_dir, "t" + std::to_string(i));
      const int messages = round == 0 ? 3 + i % 14 : 1;
      for (int m = 0; m < messages; ++m) tenants[i]->writer.commit(1);
    });
    REQUIRE(error.empty());
    INFO("round " << round);
    REQUIRE(wait_stored(broker.endpoint(), committed(tenants), 120s));
    if (round + 1 < kRounds) {
      REQUIRE(test_support::wait_until(
          [&] {
            return occurrences(relay->log(), "idle; lease released") >=
                   static_cast<std::size_t>(kTenants * (round + 1));
          },
          60s, 50ms));
    }
  }

  broker::Client client(broker.endpoint());
  auto stats = client.stats(20s);
  REQUIRE(stats.ok());
  CHECK(broker_test::counter(*stats, "conflicts") == 0);
  CHECK(broker_test::counter(*stats, "duplicates") == 0);
  CHECK(static_cast<long>(broker_test::counter(*stats, "stored")) == committed(tenants));
  // Each database has at most its latest session and the one before (a new
  // session of an origin ends the older ones), however often it was opened.
  CHECK(broker_test::counter(*stats, "sessions_active") <=
        2 * static_cast<std::uint64_t>(kTenants));
  CHECK(broker_test::counter(*stats, "sessions_opened") >=
        static_cast<std::uint64_t>(kRounds * kTenants));

  INFO(relay->log().substr(0, 4000));
  CHECK(relay->stop().code == 0);
  check_exactly_once_in_order(fetch_all(broker.endpoint()), committed(tenants));
  CHECK(relay->log().find(kSnowflakeWarning) == std::string::npos);
}

TEST_CASE("snowflake ids of two databases meet at the broker and the relay warns once per database",
          "[integration]") {
  TenantDirectory setup("relay-tenant-snowflake");
  auto& [dir, tenants_dir, broker] = setup;
  // The library's default: snowflake ids, worker ids leased per database, so
  // two new databases lease the same one.
  auto a = outbox::Outbox::open(tenants_dir / "a.db");
  auto b = outbox::Outbox::open(tenants_dir / "b.db");
  REQUIRE(a.worker_id() == b.worker_id());

  // Both commit at once (a key per message: a CONFLICT blocks nothing else)
  // until the two have handed out some of the same ids.
  std::set<std::string> ids_a, ids_b;
  auto commit_both = [&](int messages) {
    std::latch start(2);
    auto commit = [&](outbox::Outbox& box, const std::string& name, std::set<std::string>& ids) {
      start.arrive_and_wait();
      outbox::Transaction tx(box);
      for (int m = 0; m < messages; ++m) {
        auto key = name + "-" + std::to_string(ids.size());
        ids.insert(tx.enqueue({.topic = "orders", .key = key, .payload = key}).msg_id);
      }
      tx.commit();
    };
    std::thread other([&] { commit(b, "b", ids_b); });
    commit(a, "a", ids_a);
    other.join();
  };
  auto common = [&] {
    std::vector<std::string> both;
    std::set_intersection(ids_a.begin(), ids_a.end(), ids_b.begin(), ids_b.end(),
                          std::back_inserter(both));
    return both.size();
  };
  for (int round = 0; round < 200 && common() == 0; ++round) commit_both(100);
  REQUIRE(common() > 0);

  auto relay = RelayProcess::for_directory(dir.path(), tenants_dir, broker.endpoint(),
                                           {"--idle-release", "1s", "--batch-size", "50"});
  std::uint64_t stored = 0, conflicts = 0;
  auto settled = [&] {
    return test_support::wait_until(
        [&] {
          stored = broker_counter(broker.endpoint(), "stored");
          conflicts = broker_counter(broker.endpoint(), "conflicts");
          return stored + conflicts >= ids_a.size() + ids_b.size();
        },
        120s, 50ms);
  };
  auto require_settled = [&] {
    if (settled()) return;
    FAIL("stored " << stored << ", conflicts " << conflicts << " of " << ids_a.size() << " + "
                   << ids_b.size() << " ids, " << common() << " in both\n"
                   << relay->log());
  };
  require_settled();
  // Released when idle, opened again by the next commits: still one warning each.
  REQUIRE(test_support::wait_until(
      [&] {
        auto log = relay->log();
        return log.find("database a.db: idle") != std::string::npos &&
               log.find("database b.db: idle") != std::string::npos;
      },
      60s, 20ms));
  commit_both(100);
  require_settled();

  // Every id both handed out is stored once and refused once: the later
  // database's message is lost to its consumers (dead as CONFLICT here; with
  // the same payload it would have been a false DUPLICATE).
  CHECK(broker_counter(broker.endpoint(), "conflicts") == common());
  CHECK(broker_counter(broker.endpoint(), "duplicates") == 0);
  CHECK(broker_counter(broker.endpoint(), "stored") == ids_a.size() + ids_b.size() - common());
  INFO(relay->log());
  CHECK(relay->stop().code == 0);
  const auto log = relay->log();
  CHECK(occurrences(log, kSnowflakeWarning) == 2);
  CHECK(occurrences(log, "database a.db: msg_id ") == 1);
  CHECK(occurrences(log, "database b.db: msg_id ") == 1);
  CHECK(log.find("outbox::IdKind::uuid_v7") != std::string::npos);
}

TEST_CASE("a database waiting for a broker that is not there yet holds up no other",
          "[integration]") {
  test_support::TempDir dir("relay-tenant-no-broker");
  auto tenants_dir = TenantDirectory::created(dir / "tenants");
  const auto endpoint = "tcp://127.0.0.1:" + std::to_string(test_support::free_loopback_port());
  // A connect timeout far beyond this test: were a database's wait for its
  // WELCOME to hold up the loop, nothing else would happen meanwhile.
  auto relay = RelayProcess::for_directory(dir.path(), tenants_dir, endpoint,
                                           {"--connect-timeout", "1h", "--rescan-interval", "1h"});
  Tenant busy(tenants_dir, "busy");
  busy.writer.commit(1);
  // It holds its lease; its HELLO went out with it and stays unanswered.
  if (!test_support::wait_until(
          [&] { return relay->log().find("database busy.db: active") != std::string::npos; },
          60s)) {
    FAIL("busy.db never became active; the relay's log:\n" << relay->log());
  }

  // Commits keep waking that database while another one appears: it is
  // found (inotify) and its HELLO goes out too.
  std::atomic<bool> writing{true};
  std::atomic<long> written{0};
  std::thread writer([&] {
    for (int i = 0; i < 20'000 && writing.load(); ++i) {
      busy.writer.commit(1);
      ++written;
    }
  });
  REQUIRE(test_support::wait_until([&] { return written.load() >= 100; }, 60s, 1ms));
  Tenant late(tenants_dir, "late");
  late.writer.commit(1);
  auto found = test_support::wait_until(
      [&] { return relay->log().find("database late.db: found") != std::string::npos; }, 60s);
  writing.store(false);
  writer.join();
  INFO(relay->log());
  REQUIRE(found);

  // The broker comes: every database's session opens and everything is stored.
  BrokerProcess broker(dir.path(), dir / "broker.db", {}, endpoint);
  CHECK(wait_stored(broker.endpoint(), busy.writer.committed() + late.writer.committed()));
  CHECK(relay->stop().code == 0);
  CHECK(broker_counter(broker.endpoint(), "stored") ==
        static_cast<std::uint64_t>(busy.writer.committed() + late.writer.committed()));
}
