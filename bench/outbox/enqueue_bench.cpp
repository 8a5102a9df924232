// Enqueue benchmark: what adding one outbox message costs a business
// transaction, and how fast batched enqueue is.
//
//   bench_outbox_enqueue [--dir DIR] [--rounds N] [--txns-per-round N] [--batches N]
//                        [--checkpoint-pages N] [--checkpoints relay|producer]
//                        [--limits check|none|trigger]
//
// Reference: BEGIN IMMEDIATE; INSERT one row into `orders` (one secondary
// index); COMMIT. With enqueue: the same plus one 256-byte message. Both run on
// the same connection (WAL, synchronous NORMAL, the library's defaults),
// interleaved in rounds after a warm-up into the steady state; the figures are
// medians over rounds, so the occasional round that runs a WAL checkpoint
// (done by the relay in a deployment) does not decide them. Batched: 1,000
// messages per transaction, total time including everything. For comparison
// the same measurement runs against a naive outbox table (AUTOINCREMENT,
// delivery state in the row with a partial pending index, unique msg_id).
// --limits prices the field limits checked at INSERT: the schema's CHECK
// constraints (default), none, or the same rules as a BEFORE INSERT trigger.
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "outbox/outbox.hpp"
#include "outbox/relay_store.hpp"

namespace {

using Clock = std::chrono::steady_clock;

void exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::fprintf(stderr, "bench: %s: %s\n", sql, error != nullptr ? error : "?");
    std::exit(1);
  }
}

struct OrderInsert {
  sqlite3_stmt* stmt = nullptr;
  explicit OrderInsert(sqlite3* db) {
    if (sqlite3_prepare_v3(db,
                           "INSERT INTO orders(customer, amount, created_at) VALUES (?1, ?2, ?3)",
                           -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) != SQLITE_OK) {
      std::fprintf(stderr, "bench: prepare: %s\n", sqlite3_errmsg(db));
      std::exit(1);
    }
  }
  ~OrderInsert() { sqlite3_finalize(stmt); }
  OrderInsert(const OrderInsert&) = delete;
  OrderInsert& operator=(const OrderInsert&) = delete;

  void run(sqlite3* db, std::int64_t i) {
    char customer[32];
    std::snprintf(customer, sizeof customer, "customer-%06lld",
                  static_cast<long long>((i * 7919) % 100000));
    sqlite3_bind_text(stmt, 1, customer, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(stmt, 2, 1000 + i % 5000);
    sqlite3_bind_int64(stmt, 3, i);
    if (sqlite3_step(stmt) != SQLITE_DONE) {
      std::fprintf(stderr, "bench: insert order: %s\n", sqlite3_errmsg(db));
      std::exit(1);
    }
    sqlite3_reset(stmt);
  }
};

// As in a deployment, the relay's connection checkpoints the WAL in the
// background (--checkpoints producer makes the producer do it inline instead).
class BackgroundCheckpoints {
 public:
  BackgroundCheckpoints(const std::filesystem::path& db, bool enabled) {
    if (!enabled) return;
    thread_ = std::thread([this, db] {
      auto store = outbox::RelayStore::open(db);
      while (!stop_.load()) {
        store.checkpoint();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
  }
  ~BackgroundCheckpoints() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  BackgroundCheckpoints(const BackgroundCheckpoints&) = delete;
  BackgroundCheckpoints& operator=(const BackgroundCheckpoints&) = delete;

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The field limits of outbox_messages in one of three forms (docs/schema.md,
// "Field limits checked at INSERT"), on a database with no messages yet: the
// schema's CHECK constraints, none, or the same rules as a trigger.
void apply_limits(sqlite3* db, const std::string& mode) {
  if (mode == "check") return;  // what the schema creates
  exec(db,
       "DROP TABLE outbox_messages;"
       "CREATE TABLE outbox_messages("
       "  seq INTEGER PRIMARY KEY,"
       "  msg_id TEXT NOT NULL UNIQUE,"
       "  topic TEXT NOT NULL,"
       "  partition_key TEXT,"
       "  payload BLOB NOT NULL,"
       "  created_at_ms INTEGER NOT NULL"
       "    DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),"
       "  headers BLOB)");
  if (mode == "none") return;
  exec(db,
       "CREATE TRIGGER outbox_messages_field_limits BEFORE INSERT ON outbox_messages BEGIN"
       "  SELECT RAISE(ABORT, 'msg_id_limits') WHERE length(CAST(NEW.msg_id AS BLOB))"
       "    NOT BETWEEN 1 AND 255 OR NEW.msg_id GLOB '*[^!-~]*';"
       "  SELECT RAISE(ABORT, 'topic_limits') WHERE length(CAST(NEW.topic AS BLOB))"
       "    NOT BETWEEN 1 AND 249 OR NEW.topic GLOB '*[^A-Za-z0-9._-]*';"
       "  SELECT RAISE(ABORT, 'partition_key_limits')"
       "    WHERE length(CAST(NEW.partition_key AS BLOB)) > 4096;"
       "END");
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir = std::filesystem::temp_directory_path();
  int rounds = 41;
  int txns_per_round = 500;
  int batches = 200;
  int checkpoint_pages = outbox::Options{}.wal_autocheckpoint_pages;
  bool background_checkpoints = false;
  std::string limits = "check";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--dir") {
      dir = value();
    } else if (arg == "--rounds") {
      rounds = std::max(1, std::atoi(value().c_str()));
    } else if (arg == "--txns-per-round") {
      txns_per_round = std::max(1, std::atoi(value().c_str()));
    } else if (arg == "--checkpoint-pages") {
      checkpoint_pages = std::atoi(value().c_str());
    } else if (arg == "--checkpoints") {
      auto mode = value();
      if (mode != "relay" && mode != "producer") {
        std::fprintf(stderr, "bench: --checkpoints is relay or producer\n");
        return 2;
      }
      background_checkpoints = mode == "relay";
    } else if (arg == "--limits") {
      limits = value();
      if (limits != "trigger" && limits != "none" && limits != "check") {
        std::fprintf(stderr, "bench: --limits is check, none or trigger\n");
        return 2;
      }
    } else if (arg == "--batches") {
      batches = std::max(1, std::atoi(value().c_str()));
    } else {
      std::fprintf(stderr,
                   "usage: bench_outbox_enqueue [--dir DIR] [--rounds N] [--txns-per-round N] "
                   "[--batches N] [--checkpoint-pages N] [--checkpoints relay|producer] "
                   "[--limits check|none|trigger]\n");
      return 2;
    }
  }
  auto work = dir / ("outbox-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(work);
  const std::string payload(256, 'p');
  double reference_us = 0, enqueue_us = 0, batched_rate = 0;
  double naive_reference_us = 0, naive_us = 0;
  try {
    // Runs the reference transaction and the same transaction plus `extra`
    // on one connection to `file`; returns their median times in us.
    auto measure = [&](const std::string& file, const char* setup_sql,
                       const std::function<void(outbox::Transaction&, std::int64_t)>& extra) {
      auto box = outbox::Outbox::open(work / file, {.wal_autocheckpoint_pages = checkpoint_pages});
      exec(box.db(),
           "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
           "amount INTEGER NOT NULL, created_at INTEGER NOT NULL);"
           "CREATE INDEX orders_customer ON orders(customer);");
      apply_limits(box.db(), limits);
      exec(box.db(), setup_sql);
      OrderInsert order(box.db());
      BackgroundCheckpoints checkpoints(work / file, background_checkpoints);
      std::int64_t counter = 0;
      int per_round = txns_per_round;
      auto round = [&](bool with_extra) {
        auto start = Clock::now();
        for (int t = 0; t < per_round; ++t) {
          outbox::Transaction tx(box);
          order.run(tx.db(), ++counter);
          if (with_extra) extra(tx, counter);
          tx.commit();
        }
        return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / per_round;
      };
      // Warm up into the steady state: page cache filled, and the WAL grown
      // to its full size and recycled once, so the timed rounds overwrite it
      // instead of extending the file.
      round(false);
      per_round = std::max(txns_per_round, 3000);
      round(true);
      per_round = txns_per_round;
      std::vector<double> reference, with_extra;
      // Interleaved, alternating which goes first, so background load and
      // WAL growth affect both alike.
      for (int r = 0; r < rounds; ++r) {
        if (r % 2 == 0) {
          reference.push_back(round(false));
          with_extra.push_back(round(true));
        } else {
          with_extra.push_back(round(true));
          reference.push_back(round(false));
        }
      }
      return std::pair{median(reference), median(with_extra)};
    };

    std::tie(reference_us, enqueue_us) =
        measure("app.db", "SELECT 1", [&](outbox::Transaction& tx, std::int64_t) {
          tx.enqueue({.topic = "orders", .key = "customer", .payload = payload});
        });

    // For comparison, the naive outbox table: AUTOINCREMENT, delivery state
    // in the row with a partial "pending" index, a unique msg_id.
    sqlite3_stmt* naive_insert = nullptr;
    std::tie(naive_reference_us, naive_us) = measure(
        "naive.db",
        "CREATE TABLE naive_outbox(id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "msg_id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL, partition_key TEXT, "
        "payload BLOB NOT NULL, created_at INTEGER NOT NULL, status INTEGER NOT NULL DEFAULT 0, "
        "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, broker_offset INTEGER);"
        "CREATE INDEX naive_pending ON naive_outbox(id) WHERE status = 0;",
        [&](outbox::Transaction& tx, std::int64_t n) {
          if (naive_insert == nullptr &&
              sqlite3_prepare_v3(tx.db(),
                                 "INSERT INTO naive_outbox(msg_id, topic, partition_key, payload, "
                                 "created_at) VALUES (?1, 'orders', 'customer', ?2, ?3)",
                                 -1, SQLITE_PREPARE_PERSISTENT, &naive_insert,
                                 nullptr) != SQLITE_OK) {
            throw std::runtime_error(sqlite3_errmsg(tx.db()));
          }
          const auto id = std::to_string(119000000000000000LL + n);
          sqlite3_bind_text(naive_insert, 1, id.c_str(), -1, SQLITE_TRANSIENT);
          sqlite3_bind_blob(naive_insert, 2, payload.data(), static_cast<int>(payload.size()),
                            SQLITE_STATIC);
          sqlite3_bind_int64(naive_insert, 3, n);
          int rc = sqlite3_step(naive_insert);
          sqlite3_reset(naive_insert);
          if (rc != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(tx.db()));
        });
    sqlite3_finalize(naive_insert);
    {
      auto box =
          outbox::Outbox::open(work / "batched.db", {.wal_autocheckpoint_pages = checkpoint_pages});
      apply_limits(box.db(), limits);
      BackgroundCheckpoints checkpoints(work / "batched.db", background_checkpoints);
      constexpr int per_txn = 1000;
      std::vector<double> rates;
      auto start = Clock::now();
      for (int b = 0; b < batches; ++b) {
        auto batch_start = Clock::now();
        outbox::Transaction tx(box);
        for (int m = 0; m < per_txn; ++m) {
          tx.enqueue({.topic = "orders", .key = "k" + std::to_string(m % 64), .payload = payload});
        }
        tx.commit();
        rates.push_back(per_txn /
                        std::chrono::duration<double>(Clock::now() - batch_start).count());
      }
      double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      batched_rate = static_cast<double>(batches) * per_txn / seconds;
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "bench: %s\n", error.what());
    std::filesystem::remove_all(work);
    return 1;
  }
  std::filesystem::remove_all(work);
  const double ratio = enqueue_us / reference_us;
  std::printf(
      "WAL checkpoints: %s, every %d pages; %d rounds x %d txns, medians; field limits: %s\n",
      background_checkpoints ? "relay connection in the background, producer" : "producer inline",
      checkpoint_pages, rounds, txns_per_round, limits.c_str());
  std::printf("reference business txn (1 row, 1 index):  %8.1f us\n", reference_us);
  std::printf("same txn + 1 enqueue (256 B payload):      %8.1f us\n", enqueue_us);
  std::printf("ratio:                                     %8.2f   (target <= 1.8)\n", ratio);
  std::printf("naive outbox table, for comparison:        %8.2f   (%.1f us vs %.1f us)\n",
              naive_us / naive_reference_us, naive_us, naive_reference_us);
  std::printf("batched enqueue, 1000 msgs/txn:            %8.0f msg/s (target >= 300000)\n",
              batched_rate);
  return 0;
}
