// Test producer: commits `count` business rows, each with one outbox message,
// from its own process.
//
//   outbox_test_producer DB COUNT TAG [START_FILE]
//
// Waits for START_FILE to exist (so several producers start together), then
// for n in 1..COUNT: BEGIN IMMEDIATE; INSERT INTO events(tag, n); enqueue
// {topic "events", key TAG, payload "TAG:n"}; COMMIT. Prints the worker id.
#include <sqlite3.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "outbox/outbox.hpp"

int main(int argc, char** argv) {
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
    if (argc > 4) {
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (!std::filesystem::exists(argv[4])) {
        if (std::chrono::steady_clock::now() > deadline) {
          std::fprintf(stderr, "start file never appeared\n");
          return 3;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
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
