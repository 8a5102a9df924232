// Enqueue benchmark: what adding one outbox message costs a business
// transaction, and how fast batched enqueue is.
//
//   bench_outbox_enqueue [--dir DIR] [--rounds N] [--txns-per-round N] [--batches N]
//                        [--checkpoint-pages N] [--checkpoints relay|producer]
//                        [--limits check|none|trigger] [--producers N] [--producer-ms MS]
//                        [--producer-rounds N] [--producers-only]
//
// Reference: BEGIN IMMEDIATE; INSERT one row into `orders` (one secondary
// index); COMMIT. With enqueue: the same plus one 256-byte message. Both run on
// the same connection (WAL, synchronous NORMAL, the library's defaults),
// interleaved in rounds after a warm-up into the steady state; the figures are
// medians over rounds, so the occasional round that runs a WAL checkpoint
// (done by the relay in a deployment) does not decide them; each ratio is
// also given as the 10th-90th percentile of its per-round ratios. Every time
// is reported as wall clock and as the thread's CPU time (user + system),
// which does not grow while the thread waits for a core on a loaded machine.
//
// The user path is the transaction as applications write it: the business
// INSERT as SQL text through sqlite3_exec into orders(id, customer, amount)
// with an index on (customer, amount), tx.enqueue() of a 256-byte message
// with a generated msg_id, tx.commit(). Its floor leg runs the library's own
// INSERT statement directly instead of tx.enqueue(), so enqueue minus floor is
// what the library adds on top of SQLite. Batched: 1,000
// messages per transaction, total time including everything. For comparison
// the same measurement runs against a naive outbox table (AUTOINCREMENT,
// delivery state in the row with a partial pending index, unique msg_id).
// --limits prices the field limits checked at INSERT: the schema's CHECK
// constraints (default), none, or the same rules as a BEFORE INSERT trigger.
// --producers N adds passes of concurrent producer threads, one connection
// each, committing one message (or only the business row) per transaction on
// one database for --producer-ms, --producer-rounds times: transactions per
// second, how long each held the write lock (until commit() returned, which
// includes the WAL hook after SQLite released it), the WAL's size at the end and the
// page cache misses per transaction; --producers-only runs only those.
#include <sqlite3.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/args.hpp"
#include "outbox/outbox.hpp"
#include "outbox/relay_store.hpp"

namespace {

using SteadyClock = std::chrono::steady_clock;

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

// The library's INSERT (outbox/src/outbox.cpp), for the floor leg.
constexpr const char* outbox_insert_sql =
    "INSERT INTO outbox_messages(msg_id, topic, partition_key, headers, payload, created_at_ms) "
    "VALUES (?1, 'orders', 'customer', NULL, ?2, ?3) ON CONFLICT(msg_id) DO NOTHING";
// Counter-made msg_ids as long as snowflake ids; like generated ones they
// only grow, so each lands at the end of its range of the msg_id index.
constexpr std::int64_t raw_msg_id_base = 119000000000000000LL;

sqlite3_stmt* prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) != SQLITE_OK) {
    throw std::runtime_error(sqlite3_errmsg(db));
  }
  return stmt;
}

void run_insert(sqlite3* db, sqlite3_stmt* stmt, const std::string& msg_id,
                const std::string& payload, std::int64_t n) {
  sqlite3_bind_text(stmt, 1, msg_id.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_blob(stmt, 2, payload.data(), static_cast<int>(payload.size()), SQLITE_STATIC);
  sqlite3_bind_int64(stmt, 3, n);
  int rc = sqlite3_step(stmt);
  sqlite3_reset(stmt);
  if (rc != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(db));
}

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

// Time per transaction of one round, in microseconds: wall clock, and CPU
// time of the measuring thread (user + system), which waiting for a core on a
// loaded machine does not inflate.
struct Figures {
  double wall_us = 0;
  double cpu_us = 0;
};

double thread_cpu_us() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) * 1e6 + static_cast<double>(now.tv_nsec) / 1e3;
}

// Median and the 10th and 90th percentiles of a sample.
struct Spread {
  double median = 0, low = 0, high = 0;
};

Spread spread(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const auto at = [&](double q) {
    return values[static_cast<std::size_t>(q * static_cast<double>(values.size() - 1) + 0.5)];
  };
  return {at(0.5), at(0.1), at(0.9)};
}

// One leg against the reference: medians of its rounds, and the spread of the
// ratio of each round to the reference round next to it.
struct LegSummary {
  Spread wall_us, cpu_us, wall_ratio, cpu_ratio;
};

LegSummary summarize(const std::vector<Figures>& leg, const std::vector<Figures>& reference) {
  std::vector<double> wall, cpu, wall_ratio, cpu_ratio;
  for (std::size_t r = 0; r < leg.size(); ++r) {
    wall.push_back(leg[r].wall_us);
    cpu.push_back(leg[r].cpu_us);
    wall_ratio.push_back(leg[r].wall_us / reference[r].wall_us);
    cpu_ratio.push_back(leg[r].cpu_us / reference[r].cpu_us);
  }
  return {spread(wall), spread(cpu), spread(wall_ratio), spread(cpu_ratio)};
}

// Waits for the write lock with sleeps of 10-500 us (the relay's connection
// does the same) instead of SQLite's built-in busy_timeout handler, whose
// first sleep is a whole millisecond; counts the sleeps.
int short_sleep_busy_handler(void* sleeps, int attempt) {
  static_cast<std::atomic<long>*>(sleeps)->fetch_add(1);
  if (attempt > 20000) return 0;
  std::this_thread::sleep_for(std::chrono::microseconds(std::min(500, 10 << std::min(attempt, 6))));
  return 1;
}

// Concurrent producers: `threads` threads, each with its own Outbox on one
// file, commit one business row and (with `enqueue`) one message per
// transaction for `duration`. Each thread also times how long it holds the
// write lock per transaction: from BEGIN IMMEDIATE returning (the lock is
// taken) to COMMIT returning (released), on the wall clock and in the
// thread's CPU time. With one database there is one writer at a time, so the
// threads' wall times of holding the lock add up to at most the duration:
// 1 / (wall time held per transaction) is the ceiling of transactions per
// second, however many producers write.
struct ProducerFigures {
  double msgs_per_sec = 0;
  double held_wall_us = 0;  // per transaction, mean over every thread's
  double held_cpu_us = 0;
  double held_share = 0;  // the threads' time holding the lock over the duration
  long sleeps = 0;        // busy waits of the short-sleep handler, when used
  // The WAL file at the end: its size is the most it held since the last
  // time a writer could start it over (a checkpoint had copied every frame).
  double wal_mib = 0;
  // Pages each transaction read from outside its connection's page cache
  // (SQLITE_DBSTATUS_CACHE_MISS): SQLite drops a connection's cache when
  // another connection wrote to the database since its last transaction.
  double cache_misses = 0;
};

ProducerFigures concurrent_producers(const std::filesystem::path& file, int threads,
                                     bool short_sleeps, bool enqueue, int checkpoint_pages,
                                     std::chrono::milliseconds duration,
                                     const std::string& payload) {
  {
    auto box = outbox::Outbox::open(file, {.wal_autocheckpoint_pages = checkpoint_pages});
    exec(box.db(),
         "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
         "amount INTEGER NOT NULL, created_at INTEGER NOT NULL);"
         "CREATE INDEX orders_customer ON orders(customer);");
  }
  std::atomic<long> busy_sleeps{0};
  std::atomic<long> committed{0};
  std::atomic<long> cache_misses{0};
  std::atomic<bool> go{false}, stop{false};
  std::vector<double> held_wall_us(static_cast<std::size_t>(threads), 0);
  std::vector<double> held_cpu_us(static_cast<std::size_t>(threads), 0);
  std::vector<std::thread> producers;
  for (int t = 0; t < threads; ++t) {
    producers.emplace_back([&, t] {
      auto box = outbox::Outbox::open(file, {.wal_autocheckpoint_pages = checkpoint_pages});
      if (short_sleeps) sqlite3_busy_handler(box.db(), short_sleep_busy_handler, &busy_sleeps);
      OrderInsert order(box.db());
      std::int64_t n = static_cast<std::int64_t>(t) << 40;
      while (!go.load()) std::this_thread::yield();
      long mine = 0;
      std::chrono::nanoseconds wall{0};
      double cpu_us = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        outbox::Transaction tx(box);
        const auto locked = SteadyClock::now();
        const double locked_cpu = thread_cpu_us();
        order.run(tx.db(), ++n);
        if (enqueue) tx.enqueue({.topic = "orders", .key = "customer", .payload = payload});
        tx.commit();
        wall += SteadyClock::now() - locked;
        cpu_us += thread_cpu_us() - locked_cpu;
        ++mine;
      }
      held_wall_us[static_cast<std::size_t>(t)] =
          std::chrono::duration<double, std::micro>(wall).count();
      held_cpu_us[static_cast<std::size_t>(t)] = cpu_us;
      committed += mine;
      int misses = 0, highest = 0;
      sqlite3_db_status(box.db(), SQLITE_DBSTATUS_CACHE_MISS, &misses, &highest, 0);
      cache_misses += misses;
    });
  }
  const auto start = SteadyClock::now();
  go = true;
  std::this_thread::sleep_for(duration);  // the measured interval itself, not a synchronisation
  stop = true;
  for (auto& producer : producers) producer.join();
  const double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  double wall_us = 0, cpu_us = 0;
  for (int t = 0; t < threads; ++t) {
    wall_us += held_wall_us[static_cast<std::size_t>(t)];
    cpu_us += held_cpu_us[static_cast<std::size_t>(t)];
  }
  const auto transactions = static_cast<double>(std::max(committed.load(), 1L));
  std::error_code no_wal;
  const auto wal_bytes = std::filesystem::file_size(file.string() + "-wal", no_wal);
  return {static_cast<double>(committed.load()) / seconds,
          wall_us / transactions,
          cpu_us / transactions,
          wall_us / 1e6 / seconds,
          busy_sleeps.load(),
          no_wal ? 0.0 : static_cast<double>(wal_bytes) / (1 << 20),
          static_cast<double>(cache_misses.load()) / transactions};
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir = std::filesystem::temp_directory_path();
  int rounds = 41;
  int txns_per_round = 500;
  int batches = 200;
  int producers = 2;
  int producer_ms = 2000;
  int checkpoint_pages = outbox::Options{}.wal_autocheckpoint_pages;
  bool background_checkpoints = false;
  std::string limits = "check";
  CLI::App app{"bench_outbox_enqueue: what one enqueue adds to a business transaction",
               "bench_outbox_enqueue"};
  app.add_option("--dir", dir, "Where the databases go (a subdirectory, removed after)")
      ->capture_default_str();
  app.add_option("--rounds", rounds, "Interleaved rounds")
      ->capture_default_str()
      ->check(cli::count_check(1));
  app.add_option("--txns-per-round", txns_per_round, "Transactions per round and leg")
      ->capture_default_str()
      ->check(cli::count_check(1));
  app.add_option("--batches", batches, "Batched enqueues measured")
      ->capture_default_str()
      ->check(cli::count_check(1));
  app.add_option("--checkpoint-pages", checkpoint_pages, "WAL autocheckpoint pages")
      ->capture_default_str();
  std::string checkpointer = "producer";
  app.add_option("--checkpoints", checkpointer, "Who checkpoints the WAL: relay or producer")
      ->capture_default_str()
      ->check(CLI::IsMember({"relay", "producer"}));
  app.add_option("--limits", limits, "Field limits: check, none or trigger")
      ->capture_default_str()
      ->check(CLI::IsMember({"check", "none", "trigger"}));
  app.add_option("--producers", producers, "Concurrent producer threads (0: none)")
      ->capture_default_str()
      ->check(cli::count_check());
  app.add_option("--producer-ms", producer_ms, "How long each producer run lasts, in ms")
      ->capture_default_str()
      ->check(cli::count_check(1));
  int producer_rounds = 3;
  app.add_option("--producer-rounds", producer_rounds, "Rounds of the concurrent-producer passes")
      ->capture_default_str()
      ->check(cli::count_check(1));
  bool producers_only = false;
  app.add_flag("--producers-only", producers_only,
               "Run only the concurrent-producer passes (no single-connection legs, no batches)");
  if (auto code = cli::parse_command_line(app, "bench_outbox_enqueue",
                                          std::vector<std::string>(argv + 1, argv + argc))) {
    return *code;
  }
  background_checkpoints = checkpointer == "relay";
  auto work = dir / ("outbox-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(work);
  const std::string payload(256, 'p');
  double batched_rate = 0;
  // The concurrent-producer passes: label, threads, short sleeps, enqueue.
  struct ProducerPass {
    std::string label;
    int threads;
    bool short_sleeps;
    bool enqueue;
    std::vector<ProducerFigures> rounds;
  };
  std::vector<ProducerPass> producer_passes;
  std::vector<LegSummary> bench_path, user_path, naive;
  try {
    if (!producers_only) {
      // Runs the reference transaction and the same transaction plus `extra`
      // on one connection to `file`; returns their median times in us.
      using Business = std::function<void(sqlite3*, std::int64_t)>;
      // Runs the reference transaction (legs[0] is empty) and the same
      // transaction plus each further leg on one connection to `file`; returns
      // the median wall and CPU time per transaction of each leg.
      using Extra = std::function<void(outbox::Transaction&, std::int64_t)>;
      auto measure = [&](const std::string& file, std::initializer_list<const char*> setup_sql,
                         const auto& make_business, const std::vector<Extra>& legs) {
        auto box =
            outbox::Outbox::open(work / file, {.wal_autocheckpoint_pages = checkpoint_pages});
        apply_limits(box.db(), limits);
        for (const char* sql : setup_sql) exec(box.db(), sql);
        Business business = make_business(box.db());
        BackgroundCheckpoints checkpoints(work / file, background_checkpoints);
        std::int64_t counter = 0;
        int per_round = txns_per_round;
        auto round = [&](const Extra& extra) {
          const auto start = SteadyClock::now();
          const double cpu_start = thread_cpu_us();
          for (int t = 0; t < per_round; ++t) {
            outbox::Transaction tx(box);
            business(tx.db(), ++counter);
            if (extra) extra(tx, counter);
            tx.commit();
          }
          return Figures{
              std::chrono::duration<double, std::micro>(SteadyClock::now() - start).count() /
                  per_round,
              (thread_cpu_us() - cpu_start) / per_round};
        };
        // Warm up into the steady state: page cache filled, and the WAL grown
        // to its full size and recycled once, so the timed rounds overwrite it
        // instead of extending the file.
        round(legs.front());
        per_round = std::max(txns_per_round, 3000);
        round(legs.at(1));
        per_round = txns_per_round;
        std::vector<std::vector<Figures>> samples(legs.size());
        // Interleaved, rotating which goes first, so background load and WAL
        // growth affect all legs alike.
        for (int r = 0; r < rounds; ++r) {
          for (std::size_t i = 0; i < legs.size(); ++i) {
            const std::size_t leg = (i + static_cast<std::size_t>(r)) % legs.size();
            samples[leg].push_back(round(legs[leg]));
          }
        }
        std::vector<LegSummary> summaries;
        for (const auto& leg : samples) summaries.push_back(summarize(leg, samples.front()));
        return summaries;
      };

      // The benchmark's business row: one prepared INSERT, one secondary index.
      const char* prepared_orders =
          "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
          "amount INTEGER NOT NULL, created_at INTEGER NOT NULL);"
          "CREATE INDEX orders_customer ON orders(customer);";
      auto prepared_business = [](sqlite3* db) {
        auto order = std::make_shared<OrderInsert>(db);
        return Business(
            [order](sqlite3* connection, std::int64_t i) { order->run(connection, i); });
      };
      auto enqueue_one = [&](outbox::Transaction& tx, std::int64_t) {
        tx.enqueue({.topic = "orders", .key = "customer", .payload = payload});
      };
      bench_path = measure("app.db", {prepared_orders}, prepared_business, {nullptr, enqueue_one});

      // The same as an application usually writes it: the business INSERT as
      // SQL text through sqlite3_exec (parsed on every call), an index on
      // (customer, amount), and an enqueue with a generated msg_id. The third
      // leg is the floor: the library's INSERT statement run directly, with a
      // msg_id made by a counter, so the difference to it is what the library
      // adds (id generation, checks, hooks) on top of SQLite's own work.
      sqlite3_stmt* raw_insert = nullptr;
      user_path = measure(
          "user.db",
          {"CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
           "amount INTEGER NOT NULL);"
           "CREATE INDEX orders_customer_amount ON orders(customer, amount);"},
          [](sqlite3*) {
            return Business([](sqlite3* db, std::int64_t i) {
              char sql[128];
              std::snprintf(sql, sizeof sql,
                            "INSERT INTO orders(customer, amount) VALUES ('customer-%06lld', %lld)",
                            static_cast<long long>((i * 7919) % 100000),
                            static_cast<long long>(1000 + i % 5000));
              exec(db, sql);
            });
          },
          {nullptr, enqueue_one, [&](outbox::Transaction& tx, std::int64_t n) {
             if (raw_insert == nullptr) raw_insert = prepare(tx.db(), outbox_insert_sql);
             const auto id = std::to_string(raw_msg_id_base + n);
             run_insert(tx.db(), raw_insert, id, payload, n);
           }});
      sqlite3_finalize(raw_insert);

      // For comparison, the naive outbox table: AUTOINCREMENT, delivery state
      // in the row with a partial "pending" index, a unique msg_id.
      sqlite3_stmt* naive_insert = nullptr;
      naive = measure(
          "naive.db",
          {prepared_orders,
           "CREATE TABLE naive_outbox(id INTEGER PRIMARY KEY AUTOINCREMENT, "
           "msg_id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL, partition_key TEXT, "
           "payload BLOB NOT NULL, created_at INTEGER NOT NULL, status INTEGER NOT NULL DEFAULT 0, "
           "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, broker_offset INTEGER);"
           "CREATE INDEX naive_pending ON naive_outbox(id) WHERE status = 0;"},
          prepared_business, {nullptr, [&](outbox::Transaction& tx, std::int64_t n) {
                                if (naive_insert == nullptr) {
                                  naive_insert =
                                      prepare(tx.db(),
                                              "INSERT INTO naive_outbox(msg_id, topic, "
                                              "partition_key, payload, created_at) "
                                              "VALUES (?1, 'orders', 'customer', ?2, ?3)");
                                }
                                const auto id = std::to_string(raw_msg_id_base + n);
                                run_insert(tx.db(), naive_insert, id, payload, n);
                              }});
      sqlite3_finalize(naive_insert);
      {
        auto box = outbox::Outbox::open(work / "batched.db",
                                        {.wal_autocheckpoint_pages = checkpoint_pages});
        apply_limits(box.db(), limits);
        BackgroundCheckpoints checkpoints(work / "batched.db", background_checkpoints);
        constexpr int per_txn = 1000;
        std::vector<double> rates;
        auto start = SteadyClock::now();
        for (int b = 0; b < batches; ++b) {
          auto batch_start = SteadyClock::now();
          outbox::Transaction tx(box);
          for (int m = 0; m < per_txn; ++m) {
            tx.enqueue(
                {.topic = "orders", .key = "k" + std::to_string(m % 64), .payload = payload});
          }
          tx.commit();
          rates.push_back(per_txn /
                          std::chrono::duration<double>(SteadyClock::now() - batch_start).count());
        }
        double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
        batched_rate = static_cast<double>(batches) * per_txn / seconds;
      }
    }
    if (producers > 0) {
      // The passes in turn, each on a fresh file, `producer_rounds` times.
      const std::chrono::milliseconds duration(producer_ms);
      const auto many = std::to_string(producers) + " producers";
      producer_passes = {
          {"1 producer, business row only", 1, false, false, {}},
          {"1 producer, business row + message", 1, false, true, {}},
          {many + ", business row only", producers, false, false, {}},
          {many + ", + message, SQLite's busy handler", producers, false, true, {}},
          {many + ", + message, busy sleeps 10-500 us", producers, true, true, {}},
      };
      for (int r = 0; r < producer_rounds; ++r) {
        for (std::size_t p = 0; p < producer_passes.size(); ++p) {
          auto& pass = producer_passes[p];
          const auto file =
              work / ("producers-" + std::to_string(p) + "-" + std::to_string(r) + ".db");
          pass.rounds.push_back(concurrent_producers(file, pass.threads, pass.short_sleeps,
                                                     pass.enqueue, checkpoint_pages, duration,
                                                     payload));
          std::filesystem::remove(file);
        }
      }
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "bench: %s\n", error.what());
    std::filesystem::remove_all(work);
    return 1;
  }
  std::filesystem::remove_all(work);
  if (!producers_only) {
    std::printf(
        "WAL checkpoints: %s, every %d pages; %d rounds x %d txns; field limits: %s\n",
        background_checkpoints ? "relay connection in the background, producer" : "producer inline",
        checkpoint_pages, rounds, txns_per_round, limits.c_str());
    std::printf("%-50s %7s %7s  %-17s %-17s\n", "per transaction, median of rounds", "wall us",
                "cpu us", "ratio wall p10-p90", "ratio cpu p10-p90");
    auto line = [](const char* label, const LegSummary& leg) {
      std::printf("%-50s %7.1f %7.1f  %4.2f %4.2f-%4.2f    %4.2f %4.2f-%4.2f\n", label,
                  leg.wall_us.median, leg.cpu_us.median, leg.wall_ratio.median, leg.wall_ratio.low,
                  leg.wall_ratio.high, leg.cpu_ratio.median, leg.cpu_ratio.low, leg.cpu_ratio.high);
    };
    line("business txn, prepared INSERT (1 row, 1 index)", bench_path[0]);
    line("  + 1 enqueue (256 B payload)        target <= 1.8", bench_path[1]);
    line("user path: business INSERT via sqlite3_exec", user_path[0]);
    line("  + 1 enqueue, generated msg_id      target <= 1.6", user_path[1]);
    line("  + the same INSERT without the library (floor)", user_path[2]);
    line("naive outbox table: business txn", naive[0]);
    line("  + 1 row in the naive outbox table", naive[1]);
    std::printf("batched enqueue, 1000 msgs/txn: %.0f msg/s (target >= 300000)\n", batched_rate);
  }
  if (producers > 0) {
    std::printf(
        "one message per transaction, no relay, %d ms each, median (min-max) of %d rounds:\n",
        producer_ms, producer_rounds);
    std::printf("%-42s %-24s %-20s %-20s %-18s\n", "", "txn/s", "lock held wall us",
                "lock held cpu us", "lock held share");
    for (const auto& pass : producer_passes) {
      std::vector<double> rate, wall, cpu, share;
      for (const auto& round : pass.rounds) {
        rate.push_back(round.msgs_per_sec);
        wall.push_back(round.held_wall_us);
        cpu.push_back(round.held_cpu_us);
        share.push_back(round.held_share);
      }
      const auto range = [](std::vector<double> values) {
        std::sort(values.begin(), values.end());
        return std::make_tuple(values[values.size() / 2], values.front(), values.back());
      };
      const auto [rate_median, rate_low, rate_high] = range(rate);
      const auto [wall_median, wall_low, wall_high] = range(wall);
      const auto [cpu_median, cpu_low, cpu_high] = range(cpu);
      const auto [share_median, share_low, share_high] = range(share);
      std::printf(
          "%-42s %6.0f (%6.0f-%6.0f)   %5.1f (%5.1f-%5.1f)   %5.1f (%5.1f-%5.1f)   %4.2f "
          "(%4.2f-%4.2f)",
          pass.label.c_str(), rate_median, rate_low, rate_high, wall_median, wall_low, wall_high,
          cpu_median, cpu_low, cpu_high, share_median, share_low, share_high);
      std::vector<double> wal;
      for (const auto& round : pass.rounds) wal.push_back(round.wal_mib);
      const auto [wal_median, wal_low, wal_high] = range(wal);
      std::vector<double> misses;
      for (const auto& round : pass.rounds) misses.push_back(round.cache_misses);
      const auto [misses_median, misses_low, misses_high] = range(misses);
      std::printf("   WAL %.0f (%.0f-%.0f) MiB, cache misses/txn %.1f (%.1f-%.1f)", wal_median,
                  wal_low, wal_high, misses_median, misses_low, misses_high);
      if (pass.short_sleeps) {
        long sleeps = 0;
        for (const auto& round : pass.rounds) sleeps += round.sleeps;
        std::printf("  %ld sleeps", sleeps / static_cast<long>(pass.rounds.size()));
      }
      std::printf("\n");
    }
  }
  return 0;
}
