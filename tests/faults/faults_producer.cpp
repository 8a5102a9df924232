// A producer for the fault suite: an application process that commits
// business rows and their messages in one transaction, until SIGTERM.
//
//   faults_producer --db APP.DB [--db TENANT2.DB ...] --name P1 --seed N
//                   [--rate 150] [--keys 16] [--oversize-rate 0]
//                   [--ids snowflake|uuid_v7]
//
// Each transaction inserts one row into `business` (msg_id, producer, topic,
// partition key) and enqueues its message on topic "orders" or "payments".
// Given several databases (tenants forwarded together by one relay), each
// transaction goes to one of them drawn at random, and `--ids uuid_v7` makes
// the generated msg_ids unique across them (docs/operations.md).
// About one in ten transactions is rolled back on purpose. Some messages carry
// a business event id as msg_id instead of a generated one; a few of those are
// enqueued twice in the same transaction, and a few later transactions retry
// an event that was already committed: the library must answer "duplicate"
// for both, and the retried business operation is then rolled back. A
// missing duplicate report ends the process with exit code 3. With
// --oversize-rate R, that fraction of messages carries kOversizePadding more
// bytes (":" and "x"s) after its payload: too large for a broker started with
// --max-message-bytes 16k, so it becomes dead until an operator drops it, or
// strips the padding and replays it.
//
// A full disk or an I/O error (SQLITE_FULL, SQLITE_IOERR) reaches it as
// outbox::Error with SQLite's code; the transaction is rolled back as a whole
// and the operation retried, as an application would. The first failure of
// each series is printed ("full disk or I/O error: ..."), and so is the first
// success after it.
//
// On SIGTERM the current transaction finishes, the process prints
// "committed N rolled-back M duplicates-reported D busy B full F" and exits 0.
// It may also be killed at any moment: an unfinished transaction leaves
// nothing behind.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "faults_flags.hpp"
#include "outbox/outbox.hpp"

namespace {

std::atomic<bool> stop_requested{false};
extern "C" void on_stop_signal(int) {
  stop_requested.store(true);
}

void exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::string text = error != nullptr ? error : "unknown error";
    sqlite3_free(error);
    throw outbox::Error(text, sqlite3_extended_errcode(db));
  }
}

bool disk_trouble(int extended_code) {
  return (extended_code & 0xff) == SQLITE_FULL || (extended_code & 0xff) == SQLITE_IOERR;
}

// Runs `step` until it succeeds, retrying what a full disk, an I/O error or a
// lock held too long makes fail.
template <typename Step>
auto retrying(Step step) {
  for (int attempt = 1;; ++attempt) {
    try {
      return step();
    } catch (const outbox::Error& error) {
      int primary = error.extended_code() & 0xff;
      if ((!disk_trouble(error.extended_code()) && primary != SQLITE_BUSY &&
           primary != SQLITE_PROTOCOL) ||
          attempt >= 6000)
        throw;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // backoff, then retry
  }
}

struct Statement {
  Statement(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &handle, nullptr) != SQLITE_OK) {
      throw std::runtime_error(sqlite3_errmsg(db));
    }
  }
  ~Statement() { sqlite3_finalize(handle); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  sqlite3_stmt* handle = nullptr;
};

}  // namespace

int main(int argc, char** argv) {
  auto flags = faults::Flags::parse(
      argc, argv, "faults_producer",
      {"--db", "--name", "--seed", "--rate", "--keys", "--oversize-rate", "--ids"});
  if (!flags) return 2;
  const auto db_paths = flags->all("--db");
  const std::string name = flags->text("--name", "producer"),
                    ids = flags->text("--ids", "snowflake");
  const auto seed = std::stoull(flags->text("--seed", "1"));
  const double rate = flags->number("--rate", 150),
               oversize_rate = flags->number("--oversize-rate", 0);
  const int keys = static_cast<int>(flags->number("--keys", 16));
  if (db_paths.empty() || keys < 1 || rate <= 0 || (ids != "snowflake" && ids != "uuid_v7")) {
    std::fprintf(stderr,
                 "usage: faults_producer --db APP.DB [--db ...] --name P --seed N [--rate R] "
                 "[--keys K] [--ids snowflake|uuid_v7]\n");
    return 2;
  }
  outbox::Options options;
  options.id_kind = ids == "uuid_v7" ? outbox::IdKind::uuid_v7 : outbox::IdKind::snowflake;
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);

  // Restarted producers get a new stream of event ids and choices.
  std::mt19937_64 random(seed ^ (static_cast<std::uint64_t>(::getpid()) << 20));
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(random) < p; };
  const std::string incarnation = name + "-" + std::to_string(::getpid());
  long committed = 0, rolled_back = 0, duplicates_reported = 0, busy_retries = 0, full_retries = 0;
  int failing = 0;  // SQLite code of the current series of disk failures, 0: none

  try {
    // One outbox (and its business table and statement) per database.
    struct Tenant {
      outbox::Outbox box;
      std::unique_ptr<Statement> insert;
      std::vector<outbox::Message> committed_events;  // for business retries
    };
    std::vector<Tenant> tenants;
    for (const auto& db_path : db_paths) {
      auto box = [&] {
        try {
          return retrying([&] { return outbox::Outbox::open(db_path, options); });
        } catch (const outbox::Error& error) {
          throw outbox::Error("opening the outbox " + db_path + ": " + error.what(),
                              error.extended_code());
        }
      }();
      retrying([&] {
        exec(box.db(),
             "CREATE TABLE IF NOT EXISTS business("
             " id INTEGER PRIMARY KEY, msg_id TEXT NOT NULL, producer TEXT NOT NULL,"
             " topic TEXT NOT NULL, partition_key TEXT NOT NULL)");
      });
      auto insert = std::make_unique<Statement>(
          box.db(),
          "INSERT INTO business(msg_id, producer, topic, partition_key) VALUES (?1, ?2, ?3, ?4)");
      tenants.push_back({std::move(box), std::move(insert), {}});
    }
    auto pace = std::chrono::duration<double>(1.0 / rate);
    auto next = std::chrono::steady_clock::now();
    for (long n = 1; !stop_requested.load(); ++n) {
      // Pacing the load, not synchronising with anything.
      next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(pace);
      std::this_thread::sleep_until(next);

      auto& tenant =
          tenants[std::uniform_int_distribution<std::size_t>(0, tenants.size() - 1)(random)];
      auto& box = tenant.box;
      auto& committed_events = tenant.committed_events;
      auto& insert = *tenant.insert;
      outbox::Message message;
      message.topic = chance(0.5) ? "orders" : "payments";
      message.key = "k" + std::to_string(std::uniform_int_distribution<int>(0, keys - 1)(random));
      message.payload = incarnation + ":" + std::to_string(n) + ":" + message.key;
      if (oversize_rate > 0 && chance(oversize_rate)) {
        constexpr std::size_t kOversizePadding = 20001;
        message.payload += ":" + std::string(kOversizePadding - 1, 'x');
      }
      const bool event_id = chance(0.3);
      if (event_id) message.msg_id = "evt-" + incarnation + "-" + std::to_string(n);
      try {
        outbox::Transaction tx(box);
        if (!committed_events.empty() && chance(0.03)) {
          // A business operation that runs again: its event is already in the outbox.
          const auto& again = committed_events[std::uniform_int_distribution<std::size_t>(
              0, committed_events.size() - 1)(random)];
          auto result = tx.enqueue(again);
          if (!result.duplicate()) {
            std::fprintf(stderr, "faults_producer: retry of %s was not reported as duplicate\n",
                         again.msg_id.c_str());
            return 3;
          }
          ++duplicates_reported;
          tx.rollback();
          ++rolled_back;
          continue;
        }
        auto sent = tx.enqueue(message);
        if (!sent.inserted()) {
          std::fprintf(stderr, "faults_producer: fresh msg_id %s reported as duplicate\n",
                       sent.msg_id.c_str());
          return 3;
        }
        if (event_id && chance(0.15)) {
          auto again = tx.enqueue(message);
          if (!again.duplicate()) {
            std::fprintf(stderr, "faults_producer: second enqueue of %s was not a duplicate\n",
                         message.msg_id.c_str());
            return 3;
          }
          ++duplicates_reported;
        }
        sqlite3_bind_text(insert.handle, 1, sent.msg_id.c_str(), -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(insert.handle, 2, incarnation.c_str(), -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(insert.handle, 3, message.topic.c_str(), -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(insert.handle, 4, message.key.c_str(), -1, SQLITE_TRANSIENT);
        int rc = sqlite3_step(insert.handle);
        sqlite3_reset(insert.handle);
        if (rc != SQLITE_DONE)
          throw outbox::Error(sqlite3_errmsg(box.db()), sqlite3_extended_errcode(box.db()));
        if (chance(0.1)) {
          tx.rollback();
          ++rolled_back;
          continue;
        }
        tx.commit();
        ++committed;
        if (failing != 0) {
          std::fprintf(stderr, "faults_producer: committing again after SQLite code %d\n", failing);
          failing = 0;
        }
        if (event_id && committed_events.size() < 1000) committed_events.push_back(message);
      } catch (const outbox::Error& error) {
        // A lock held too long by another process, a full disk, an I/O error:
        // the transaction was rolled back as a whole; the application would
        // retry its operation.
        if (disk_trouble(error.extended_code())) {
          ++full_retries;
          if (failing == 0) {
            std::fprintf(stderr,
                         "faults_producer: full disk or I/O error: %s (SQLite code %d); retrying\n",
                         error.what(), error.extended_code());
            failing = error.extended_code();
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(10));  // backoff
          continue;
        }
        // SQLITE_PROTOCOL: the library's BEGIN met a process stopped while it
        // held the WAL index's locks for longer than the busy timeout.
        const int primary = error.extended_code() & 0xff;
        if (primary != SQLITE_BUSY && primary != SQLITE_PROTOCOL) throw;
        ++busy_retries;
      }
    }
  } catch (const outbox::Error& error) {
    std::fprintf(stderr, "faults_producer: %s (SQLite code %d)\n", error.what(),
                 error.extended_code());
    return 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "faults_producer: %s\n", error.what());
    return 1;
  }
  std::printf("committed %ld rolled-back %ld duplicates-reported %ld busy %ld full %ld\n",
              committed, rolled_back, duplicates_reported, busy_retries, full_retries);
  return 0;
}
