// Test producer for the relay tests: commits orders and their messages from
// its own process, the way an application would.
//
//   relay_test_producer DB COUNT KEYS [ROLLBACK_EVERY [PAYLOAD_BYTES [OVERSIZE_EVERY]]]
//
// For n in 1..COUNT: BEGIN IMMEDIATE; INSERT INTO orders; enqueue a message on
// topic "orders" with key "k<n % KEYS>"; COMMIT -- except every ROLLBACK_EVERY-th
// transaction, which is rolled back. Committed payloads are "<key>:<i>" where i
// counts that key's committed messages from 1, so a reader can check per-key
// order; rolled-back payloads start with "rolled-back:". With PAYLOAD_BYTES
// every payload is padded with '.' to that size. Every OVERSIZE_EVERY-th
// message carries kOversizePadding more bytes (":" and "x"s) after its
// "<key>:<i>", enough for a broker started with --max-message-bytes 1k to
// refuse it. Prints "committed N rolled-back M" and exits 0.
#include <sqlite3.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "outbox/outbox.hpp"

namespace {

void exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::string text = error != nullptr ? error : "unknown error";
    sqlite3_free(error);
    throw std::runtime_error(text);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: relay_test_producer DB COUNT KEYS [ROLLBACK_EVERY [PAYLOAD_BYTES "
                 "[OVERSIZE_EVERY]]]\n");
    return 2;
  }
  const long count = std::strtol(argv[2], nullptr, 10);
  const long keys = std::strtol(argv[3], nullptr, 10);
  const long rollback_every = argc > 4 ? std::strtol(argv[4], nullptr, 10) : 0;
  const long payload_bytes = argc > 5 ? std::strtol(argv[5], nullptr, 10) : 0;
  const long oversize_every = argc > 6 ? std::strtol(argv[6], nullptr, 10) : 0;
  if (count < 0 || keys < 1 || rollback_every < 0 || payload_bytes < 0 ||
      payload_bytes > (1 << 20) || oversize_every < 0) {
    std::fprintf(stderr, "relay_test_producer: bad numbers\n");
    return 2;
  }
  long committed = 0, rolled_back = 0;
  try {
    auto box = outbox::Outbox::open(argv[1]);
    exec(box.db(),
         "CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, key TEXT, n INTEGER)");
    sqlite3_stmt* insert = nullptr;
    if (sqlite3_prepare_v2(box.db(), "INSERT INTO orders(key, n) VALUES (?1, ?2)", -1, &insert,
                           nullptr) != SQLITE_OK) {
      throw std::runtime_error(sqlite3_errmsg(box.db()));
    }
    std::map<std::string, long> per_key;
    for (long n = 1; n <= count; ++n) {
      std::string key = "k";  // appended: GCC 12 -O3 warns about "k" + std::string
      key += std::to_string(n % keys);
      bool roll_back = rollback_every > 0 && n % rollback_every == 0;
      outbox::Transaction tx(box);
      sqlite3_bind_text(insert, 1, key.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_int64(insert, 2, n);
      int rc = sqlite3_step(insert);
      sqlite3_reset(insert);
      if (rc != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(box.db()));
      std::string payload = roll_back ? "rolled-back:" + std::to_string(n)
                                      : key + ":" + std::to_string(per_key[key] + 1);
      if (oversize_every > 0 && n % oversize_every == 0) {
        constexpr std::size_t kOversizePadding = 2001;
        payload += ":" + std::string(kOversizePadding - 1, 'x');
      }
      if (payload.size() < static_cast<std::size_t>(payload_bytes)) {
        payload.resize(static_cast<std::size_t>(payload_bytes), '.');
      }
      tx.enqueue({.topic = "orders", .key = key, .payload = payload});
      if (roll_back) {
        tx.rollback();
        ++rolled_back;
      } else {
        tx.commit();
        ++per_key[key];
        ++committed;
      }
    }
    sqlite3_finalize(insert);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "relay_test_producer: %s\n", error.what());
    return 1;
  }
  std::printf("committed %ld rolled-back %ld\n", committed, rolled_back);
  return 0;
}
