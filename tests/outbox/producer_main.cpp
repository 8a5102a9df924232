// Test producer: commits `count` business rows, each with one outbox message,
// from its own process.
//
//   outbox_test_producer DB COUNT TAG [START_FILE]
//
// Waits for START_FILE to exist (so several producers start together), then
// for n in 1..COUNT: BEGIN IMMEDIATE; INSERT INTO events(tag, n); enqueue
// {topic "events", key TAG, payload "TAG:n"}; COMMIT. Prints the worker id.
// With --inbox it is a consumer instead (see run_inbox).
#include <sqlite3.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>

#include "outbox/inbox.hpp"
#include "outbox/outbox.hpp"

namespace {

void wait_for_start(const char* start_file) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!std::filesystem::exists(start_file)) {
    if (std::chrono::steady_clock::now() > deadline) {
      throw std::runtime_error("start file never appeared");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// outbox_test_producer --inbox DB COUNT TAG START_FILE: consumes msg_ids
// m-0..m-COUNT-1 through outbox::Inbox, recording each one it processed in
// shipments(msg_id, tag); claims c-0..c-COUNT-1 with begin()/complete().
int run_inbox(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: outbox_test_producer --inbox DB COUNT TAG START_FILE\n");
    return 2;
  }
  const std::string tag = argv[4];
  const long count = std::strtol(argv[3], nullptr, 10);
  auto inbox = outbox::Inbox::open(argv[2]);
  std::printf("ready\n");
  std::fflush(stdout);
  wait_for_start(argv[5]);
  long processed = 0, claimed = 0;
  for (long i = 0; i < count; ++i) {
    const std::string id = "m-" + std::to_string(i);
    auto result = inbox.process_once(id, [&](sqlite3* db) {
      const std::string sql =
          "INSERT INTO shipments(msg_id, tag) VALUES ('" + id + "', '" + tag + "')";
      if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
        throw std::runtime_error(sqlite3_errmsg(db));
      }
    });
    if (result == outbox::ProcessResult::processed) ++processed;
    const std::string claim = "c-" + std::to_string(i);
    auto held = inbox.begin(claim, std::chrono::minutes(5));
    if (held.claimed() && inbox.complete(claim, held.token) == outbox::ClaimResult::ok) {
      ++claimed;
    }
  }
  std::printf("processed %ld claimed %ld\n", processed, claimed);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--inbox") {
    try {
      return run_inbox(argc, argv);
    } catch (const std::exception& error) {
      std::fprintf(stderr, "outbox_test_producer: %s\n", error.what());
      return 1;
    }
  }
  if (argc < 4) {
    std::fprintf(stderr, "usage: outbox_test_producer DB COUNT TAG [START_FILE]\n");
    return 2;
  }
  const std::string tag = argv[3];
  const long count = std::strtol(argv[2], nullptr, 10);
  try {
    auto box = outbox::Outbox::open(argv[1]);
    std::printf("worker %u\n", box.worker_id());
    std::fflush(stdout);
    if (argc > 4) wait_for_start(argv[4]);
    sqlite3_stmt* insert = nullptr;
    if (sqlite3_prepare_v2(box.db(), "INSERT INTO events(tag, n) VALUES (?1, ?2)", -1, &insert,
                           nullptr) != SQLITE_OK) {
      std::fprintf(stderr, "prepare: %s\n", sqlite3_errmsg(box.db()));
      return 1;
    }
    for (long n = 1; n <= count; ++n) {
      outbox::Transaction tx(box);
      sqlite3_bind_text(insert, 1, tag.c_str(), -1, SQLITE_STATIC);
      sqlite3_bind_int64(insert, 2, n);
      int rc = sqlite3_step(insert);
      sqlite3_reset(insert);
      if (rc != SQLITE_DONE) {
        std::fprintf(stderr, "insert: %s\n", sqlite3_errmsg(box.db()));
        sqlite3_finalize(insert);
        return 1;
      }
      outbox::Message message;
      message.topic = "events";
      message.key = tag;
      message.payload = tag + ":" + std::to_string(n);
      tx.enqueue(message);
      tx.commit();
    }
    sqlite3_finalize(insert);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "outbox_test_producer: %s\n", error.what());
    return 1;
  }
  std::printf("done\n");
  return 0;
}
