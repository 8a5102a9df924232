// A producer for the fault suite that knows nothing of our C++ library: it
// writes outbox rows with plain SQL, following docs/schema.md alone, as an
// application in another language would. Among its legal rows it commits
// rows that can never be delivered ("poison"): a msg_id over 255 bytes or with
// a space, a topic over 255 bytes or with a character the broker refuses, a
// partition key over 4,096 bytes, more than 64 headers, a header name or value
// over its limit, a headers blob that is not in the documented format. The
// schema's CHECK constraints would refuse some of them at INSERT; rows written
// before those constraints existed still reach the relay, so this producer
// writes with `PRAGMA ignore_check_constraints = ON`.
//
//   faults_sql_producer --db APP.DB --name S --seed N [--rate 30] [--keys 12]
//                       [--poison-rate 0.05]
//
// Each transaction inserts one `business` row and its message (same table as
// faults_producer's), and for a poison row also a row in `poison` (msg_id,
// kind, a piece of text the relay's dead reason must contain), so that the
// checker knows which msg_ids can never arrive. About one transaction in ten
// is rolled back on purpose. Most poison rows get a partition key of their
// own; a quarter share a key with legal messages and hold those back until an
// operator drops them.
//
// Errors a disk or a lock can cause (SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY)
// roll the transaction back and are retried, as an application would; the
// first of each series is printed with SQLite's code. On SIGTERM the current
// transaction finishes, the process prints "committed N rolled-back M poison P
// busy B full F" and exits 0.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "faults_flags.hpp"

namespace {

std::atomic<bool> stop_requested{false};
extern "C" void on_stop_signal(int) {
  stop_requested.store(true);
}

// An SQLite failure with its extended code.
struct SqlError : std::runtime_error {
  SqlError(const std::string& what, int code_in) : std::runtime_error(what), code(code_in) {}
  int code;
};

void exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::string text = error != nullptr ? error : "unknown error";
    sqlite3_free(error);
    throw SqlError(std::string(sql).substr(0, 40) + ": " + text, sqlite3_extended_errcode(db));
  }
}

// A prepared statement bound anew for every row.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &handle_, nullptr) != SQLITE_OK) {
      throw SqlError(sqlite3_errmsg(db), sqlite3_extended_errcode(db));
    }
  }
  ~Statement() { sqlite3_finalize(handle_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& text(int index, const std::optional<std::string>& value) {
    if (value)
      sqlite3_bind_text(handle_, index, value->data(), static_cast<int>(value->size()),
                        SQLITE_TRANSIENT);
    else
      sqlite3_bind_null(handle_, index);
    return *this;
  }
  Statement& blob(int index, const std::optional<std::string>& value) {
    if (value)
      sqlite3_bind_blob(handle_, index, value->data(), static_cast<int>(value->size()),
                        SQLITE_TRANSIENT);
    else
      sqlite3_bind_null(handle_, index);
    return *this;
  }
  void run() {
    int rc = sqlite3_step(handle_);
    sqlite3_reset(handle_);
    sqlite3_clear_bindings(handle_);
    if (rc != SQLITE_DONE) throw SqlError(sqlite3_errmsg(db_), sqlite3_extended_errcode(db_));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* handle_ = nullptr;
};

struct Row {
  std::string msg_id, topic;
  std::optional<std::string> key, headers;
  std::string payload;
  // Poison rows: what kind, and what the relay's dead reason must mention.
  std::string poison_kind, expected_reason;
};

// One header in the blob format of docs/schema.md: 4-byte big-endian lengths.
std::string header_entry(const std::string& name, const std::string& value) {
  auto length = [](std::size_t n) {
    std::string bytes(4, '\0');
    for (int i = 0; i < 4; ++i) bytes[3 - i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return bytes;
  };
  return length(name.size()) + name + length(value.size()) + value;
}

// Turns a legal row into one that can never be delivered, of a kind chosen by
// `pick` (0-9).
void poison(Row& row, int pick, const std::string& tag) {
  struct Kind {
    const char* name;
    const char* expected;
  };
  static const Kind kinds[] = {
      {"msg_id_over_255", "msg_id is 3"},
      {"msg_id_with_space", "msg_id has byte 0x20"},
      {"topic_over_255", "topic is 3"},
      {"topic_bad_character", "invalid topic"},
      {"key_over_4096", "partition key is 5000"},
      {"headers_over_64", "header count is 65"},
      {"header_value_over_65535", "value is 70000"},
      {"header_name_over_255", "name is 300"},
      {"headers_blob_ffffffff", "malformed headers"},
      {"headers_blob_0102", "malformed headers"},
  };
  const auto& kind = kinds[pick];
  row.poison_kind = kind.name;
  row.expected_reason = kind.expected;
  switch (pick) {
    case 0:
      row.msg_id = "poison-" + tag + "-" + std::string(300 - 8 - tag.size(), 'm');
      break;
    case 1:
      row.msg_id = "poison " + tag;
      break;
    case 2:
      row.topic = "orders" + std::string(300 - 6, 't');
      break;
    case 3:
      row.topic = "orders!";
      break;
    case 4:
      row.key = std::string(5000, 'K');
      break;
    case 5: {
      std::string blob;
      for (int i = 0; i < 65; ++i) blob += header_entry("h" + std::to_string(i), "v");
      row.headers = blob;
      break;
    }
    case 6:
      row.headers = header_entry("trace", std::string(70000, 'v'));
      break;
    case 7:
      row.headers = header_entry(std::string(300, 'n'), "v");
      break;
    case 8:
      row.headers = std::string(4, '\xff');
      break;
    default:
      row.headers = std::string("\x01\x02", 2);
      break;
  }
}

}  // namespace

int main(int argc, char** argv) {
  auto flags =
      faults::Flags::parse(argc, argv, "faults_sql_producer",
                           {"--db", "--name", "--seed", "--rate", "--keys", "--poison-rate"});
  if (!flags) return 2;
  const std::string db_path = flags->text("--db"), name = flags->text("--name", "sql-producer");
  const auto seed = std::stoull(flags->text("--seed", "1"));
  const double rate = flags->number("--rate", 30),
               poison_rate = flags->number("--poison-rate", 0.05);
  const int keys = static_cast<int>(flags->number("--keys", 12));
  if (db_path.empty() || keys < 1 || rate <= 0) {
    std::fprintf(stderr,
                 "usage: faults_sql_producer --db APP.DB --name S --seed N [--rate R] [--keys K] "
                 "[--poison-rate P]\n");
    return 2;
  }
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);

  std::mt19937_64 random(seed ^ (static_cast<std::uint64_t>(::getpid()) << 20));
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(random) < p; };
  const std::string incarnation = name + "-" + std::to_string(::getpid());
  long committed = 0, rolled_back = 0, poisoned = 0, busy = 0, full = 0;

  sqlite3* db = nullptr;
  // The outbox tables exist already (docs/schema.md: created once, by whoever
  // comes first); this producer only inserts.
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    std::fprintf(stderr, "faults_sql_producer: cannot open %s: %s\n", db_path.c_str(),
                 db != nullptr ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    return 1;
  }
  sqlite3_busy_timeout(db, 5000);
  int result = 0;
  try {
    exec(db, "PRAGMA synchronous = NORMAL");
    exec(db, "PRAGMA ignore_check_constraints = ON");
    // Retried like every write: the disk may be full right now.
    for (bool ready = false; !ready && !stop_requested.load();) {
      try {
        exec(db,
             "CREATE TABLE IF NOT EXISTS business("
             " id INTEGER PRIMARY KEY, msg_id TEXT NOT NULL, producer TEXT NOT NULL,"
             " topic TEXT NOT NULL, partition_key TEXT NOT NULL);"
             "CREATE TABLE IF NOT EXISTS poison("
             " msg_id TEXT PRIMARY KEY, kind TEXT NOT NULL, expected_reason TEXT NOT NULL)");
        ready = true;
      } catch (const SqlError& error) {
        if ((error.code & 0xff) != SQLITE_FULL && (error.code & 0xff) != SQLITE_IOERR &&
            (error.code & 0xff) != SQLITE_BUSY)
          throw;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // backoff, then retry
      }
    }
    Statement insert_message(db,
                             "INSERT INTO outbox_messages(msg_id, topic, partition_key, headers, "
                             "payload) VALUES (?1, ?2, ?3, ?4, ?5)");
    Statement insert_business(db,
                              "INSERT INTO business(msg_id, producer, topic, partition_key) "
                              "VALUES (?1, ?2, ?3, coalesce(?4, ''))");
    Statement insert_poison(
        db, "INSERT INTO poison(msg_id, kind, expected_reason) VALUES (?1, ?2, ?3)");
    auto pace = std::chrono::duration<double>(1.0 / rate);
    auto next = std::chrono::steady_clock::now();
    int failing = 0;  // SQLite code of the current series of failures, 0: none
    for (long n = 1; !stop_requested.load(); ++n) {
      // Pacing the load, not synchronising with anything.
      next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(pace);
      std::this_thread::sleep_until(next);

      Row row;
      const auto tag = incarnation + "-" + std::to_string(n);
      row.msg_id = "sql-" + tag;
      row.topic = chance(0.5) ? "orders" : "payments";
      if (!chance(0.05))  // else NULL: "no key"
        row.key = "k" + std::to_string(std::uniform_int_distribution<int>(0, keys - 1)(random));
      if (chance(0.3)) row.headers = header_entry("traceparent", "00-" + tag + "-01");
      row.payload = tag;
      if (chance(poison_rate)) {
        poison(row, std::uniform_int_distribution<int>(0, 9)(random), tag);
        // Most hold back only a key of their own; the others a shared key's
        // later messages, until the operator drops them.
        if (row.poison_kind != "key_over_4096" && !chance(0.25)) row.key = "poison-" + tag;
      }
      const bool roll_back = chance(0.1);
      try {
        exec(db, "BEGIN IMMEDIATE");
        try {
          insert_message.text(1, row.msg_id)
              .text(2, row.topic)
              .text(3, row.key)
              .blob(4, row.headers)
              .blob(5, row.payload)
              .run();
          insert_business.text(1, row.msg_id)
              .text(2, incarnation)
              .text(3, row.topic)
              .text(4, row.key)
              .run();
          if (!row.poison_kind.empty()) {
            insert_poison.text(1, row.msg_id)
                .text(2, row.poison_kind)
                .text(3, row.expected_reason)
                .run();
          }
          exec(db, roll_back ? "ROLLBACK" : "COMMIT");
        } catch (const SqlError&) {
          // A failed COMMIT may leave the transaction open: end it.
          if (sqlite3_get_autocommit(db) == 0)
            sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
          throw;
        }
        if (failing != 0) {
          std::fprintf(stderr, "faults_sql_producer: writing again after SQLite code %d\n",
                       failing);
          failing = 0;
        }
      } catch (const SqlError& error) {
        int primary = error.code & 0xff;
        // SQLITE_PROTOCOL: a process stopped while it held the WAL index's
        // locks (docs/schema.md, "Connection settings").
        const bool locked = primary == SQLITE_BUSY || primary == SQLITE_PROTOCOL;
        if (!locked && primary != SQLITE_FULL && primary != SQLITE_IOERR) throw;
        // Nothing of the transaction stays; the application tries again.
        (locked ? busy : full) += 1;
        if (failing == 0) {
          std::fprintf(stderr, "faults_sql_producer: %s%s (SQLite code %d); retrying\n",
                       locked ? "" : "full disk or I/O error: ", error.what(), error.code);
          failing = error.code;
        }
        continue;
      }
      if (roll_back) {
        ++rolled_back;
      } else {
        ++committed;
        if (!row.poison_kind.empty()) ++poisoned;
      }
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "faults_sql_producer: %s\n", error.what());
    result = 1;
  }
  sqlite3_close(db);
  if (result == 0) {
    std::printf("committed %ld rolled-back %ld poison %ld busy %ld full %ld\n", committed,
                rolled_back, poisoned, busy, full);
  }
  return result;
}
