// order_service: a producer that takes orders. Each order is one SQLite
// transaction holding the business row (table `orders`) and its
// `order.created` message (the outbox), so the message exists if and only if
// the order does. Run outbox-relay on the same database to publish the
// messages to outbox-broker.
//
//   order_service --db shop.db --count 1000 --rate 200
//   order_service --db shop.db --count 10 --crash-after 5 --crash-at before-commit
//
// --crash-after N aborts the process while order N+1 is half done: with
// --crash-at after-insert the order row is written but its message is not,
// with before-commit both are written but not committed. Either way SQLite
// rolls the transaction back when the database is next opened: no order
// without its message, no message without its order.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <outbox/outbox.hpp>

namespace {

std::atomic<bool> stop_requested{false};

extern "C" void request_stop(int) {
  stop_requested.store(true);
}

enum class CrashPoint { none, after_insert, before_commit };

struct Settings {
  std::string db = "shop.db";
  long count = 1000;
  double rate = 0;  // orders per second; 0: as fast as possible
  int customers = 100;
  long crash_after = -1;
  CrashPoint crash_at = CrashPoint::none;
};

// sqlite3_stmt owned by a unique_ptr: prepared once, reset after each use.
struct FinalizeStatement {
  void operator()(sqlite3_stmt* statement) const noexcept { sqlite3_finalize(statement); }
};
using Statement = std::unique_ptr<sqlite3_stmt, FinalizeStatement>;

[[noreturn]] void fail(sqlite3* db, const std::string& what) {
  throw std::runtime_error(what + ": " + sqlite3_errmsg(db));
}

Statement prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* statement = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &statement, nullptr) != SQLITE_OK) fail(db, "prepare");
  return Statement(statement);
}

[[noreturn]] void crash(const char* where, std::int64_t order_id) {
  std::fprintf(stderr, "order_service: crashing %s of order %lld (nothing of it is committed)\n",
               where, static_cast<long long>(order_id));
  std::fflush(stderr);
  std::abort();
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int run(const Settings& settings) {
  auto box = outbox::Outbox::open(settings.db);
  if (sqlite3_exec(box.db(),
                   "CREATE TABLE IF NOT EXISTS orders("
                   "  id            INTEGER PRIMARY KEY,"
                   "  customer      TEXT    NOT NULL,"
                   "  amount_cents  INTEGER NOT NULL,"
                   "  created_at_ms INTEGER NOT NULL)",
                   nullptr, nullptr, nullptr) != SQLITE_OK) {
    fail(box.db(), "create table orders");
  }
  Statement insert_order = prepare(
      box.db(), "INSERT INTO orders(customer, amount_cents, created_at_ms) VALUES (?1, ?2, ?3)");

  std::mt19937_64 random(std::random_device{}());
  std::uniform_int_distribution<int> pick_customer(1, settings.customers);
  std::uniform_int_distribution<int> pick_amount(100, 50'000);

  const auto started = std::chrono::steady_clock::now();
  long committed = 0;
  std::int64_t first_id = 0, last_id = 0;
  for (long n = 0; n < settings.count && !stop_requested.load(); ++n) {
    if (settings.rate > 0) {
      std::this_thread::sleep_until(started +
                                    std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::duration<double>(n / settings.rate)));
    }
    const std::string customer = "customer-" + std::to_string(pick_customer(random));
    const int amount_cents = pick_amount(random);
    const std::int64_t created_at_ms = now_ms();
    const bool crash_now = settings.crash_at != CrashPoint::none && n == settings.crash_after;

    outbox::Transaction tx(box);  // BEGIN IMMEDIATE; rolled back unless committed
    sqlite3_stmt* insert = insert_order.get();
    sqlite3_bind_text(insert, 1, customer.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(insert, 2, amount_cents);
    sqlite3_bind_int64(insert, 3, created_at_ms);
    const int rc = sqlite3_step(insert);
    sqlite3_reset(insert);
    if (rc != SQLITE_DONE) fail(tx.db(), "insert order");
    const std::int64_t order_id = sqlite3_last_insert_rowid(tx.db());
    if (crash_now && settings.crash_at == CrashPoint::after_insert) {
      crash("after the insert", order_id);
    }

    // The customer is the partition key: one customer's orders reach the
    // broker in the order they were committed.
    const std::string payload = "{\"order_id\":" + std::to_string(order_id) + ",\"customer\":\"" +
                                customer + "\",\"amount_cents\":" + std::to_string(amount_cents) +
                                ",\"created_at_ms\":" + std::to_string(created_at_ms) + "}";
    tx.enqueue({.topic = "order.created", .key = customer, .payload = payload});
    if (crash_now && settings.crash_at == CrashPoint::before_commit) {
      crash("before the commit", order_id);
    }
    tx.commit();  // the order and its message, or neither

    if (committed == 0) first_id = order_id;
    last_id = order_id;
    ++committed;
  }

  if (committed == 0) {
    std::printf("committed 0 orders to %s\n", settings.db.c_str());
  } else {
    std::printf("committed %ld orders to %s (order ids %lld..%lld)\n", committed,
                settings.db.c_str(), static_cast<long long>(first_id),
                static_cast<long long>(last_id));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  CLI::App app{
      "order_service: takes orders; each order and its order.created message are "
      "committed in one transaction"};
  app.add_option("--db", settings.db, "SQLite database of the service (created if missing)")
      ->capture_default_str();
  app.add_option("--count", settings.count, "How many orders to take")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--rate", settings.rate, "Orders per second (0: as fast as possible)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--customers", settings.customers,
                 "How many different customers (the messages' partition keys)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  auto* crash_after =
      app.add_option("--crash-after", settings.crash_after,
                     "Abort while the order after this many committed ones is half done")
          ->check(CLI::NonNegativeNumber);
  std::string crash_at;
  app.add_option("--crash-at", crash_at,
                 "Where to abort: after-insert (order row written, message not) or "
                 "before-commit (both written, not committed; the default)")
      ->check(CLI::IsMember({"after-insert", "before-commit"}))
      ->needs(crash_after);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error) == 0 ? 0 : 2;
  }

  if (*crash_after) {
    settings.crash_at =
        crash_at == "after-insert" ? CrashPoint::after_insert : CrashPoint::before_commit;
  }
  if (settings.crash_at != CrashPoint::none && settings.crash_after >= settings.count) {
    std::fprintf(stderr, "order_service: --crash-after must be below --count (%ld)\n",
                 settings.count);
    return 2;
  }

  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  try {
    return run(settings);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "order_service: %s\n", error.what());
    return 1;
  }
}
