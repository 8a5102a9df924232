// A consumer for the fault suite: reads topics from outbox-broker as a
// consumer group and applies each message's side effect once, through
// outbox::Inbox, in its own SQLite database. It is killed at random by the
// suite; after a restart the group resumes at its committed offset, so some
// messages come again and the inbox must recognise them.
//
//   faults_consumer --broker ENDPOINT --db CONSUMER.DB --group G --topic T [--topic T2 ...]
//
// Side effects are rows in `effects` (msg_id, topic, broker offset), with no
// unique constraint: a message applied twice shows up as two rows. Pages are
// committed to the group after they were applied, as a consumer does.
// SIGTERM: finish the current page and exit 0.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "broker/client.hpp"
#include "outbox/inbox.hpp"

namespace {

using namespace std::chrono_literals;

std::atomic<bool> stop_requested{false};
extern "C" void on_stop_signal(int) {
  stop_requested.store(true);
}

}  // namespace

int main(int argc, char** argv) {
  std::string endpoint, db_path, group = "faults";
  std::vector<std::string> topics;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--broker")
      endpoint = value;
    else if (flag == "--db")
      db_path = value;
    else if (flag == "--group")
      group = value;
    else if (flag == "--topic")
      topics.push_back(value);
    else {
      std::fprintf(stderr, "faults_consumer: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (endpoint.empty() || db_path.empty() || topics.empty()) {
    std::fprintf(stderr, "usage: faults_consumer --broker E --db DB --group G --topic T ...\n");
    return 2;
  }
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);

  long applied = 0, redelivered = 0, failures = 0;
  try {
    auto inbox = outbox::Inbox::open(db_path);
    char* error = nullptr;
    if (sqlite3_exec(inbox.db(),
                     "CREATE TABLE IF NOT EXISTS effects("
                     " id INTEGER PRIMARY KEY, msg_id TEXT NOT NULL, topic TEXT NOT NULL,"
                     " broker_offset INTEGER NOT NULL)",
                     nullptr, nullptr, &error) != SQLITE_OK) {
      std::string text = error != nullptr ? error : "?";
      sqlite3_free(error);
      throw std::runtime_error(text);
    }
    sqlite3_stmt* insert = nullptr;
    if (sqlite3_prepare_v2(inbox.db(),
                           "INSERT INTO effects(msg_id, topic, broker_offset) VALUES (?1, ?2, ?3)",
                           -1, &insert, nullptr) != SQLITE_OK) {
      throw std::runtime_error(sqlite3_errmsg(inbox.db()));
    }
    broker::Client client(endpoint);
    auto trouble = [&](const wire::Error& what) {
      // The broker restarts under us: start a fresh connection and go on.
      ++failures;
      std::fprintf(stderr, "faults_consumer: %s; reconnecting\n", what.message.c_str());
      client.reconnect();
      std::this_thread::sleep_for(20ms);  // backoff before the next attempt
    };
    while (!stop_requested.load()) {
      for (const auto& topic : topics) {
        if (stop_requested.load()) break;
        wire::Fetch request;
        request.topic = topic;
        request.group = group;
        request.use_group_offset = true;
        request.max_messages = 200;
        request.wait_ms = 50;
        auto page = client.fetch(request, 2s);
        if (!page) {
          trouble(page.error());
          continue;
        }
        if (page->messages.empty()) continue;
        for (const auto& message : page->messages) {
          auto result = inbox.process_once(message.msg_id, [&](sqlite3* db) {
            sqlite3_bind_text(insert, 1, message.msg_id.c_str(), -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(insert, 2, topic.c_str(), -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(insert, 3, static_cast<sqlite3_int64>(message.offset));
            int rc = sqlite3_step(insert);
            sqlite3_reset(insert);
            if (rc != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(db));
          });
          if (result == outbox::ProcessResult::processed)
            ++applied;
          else
            ++redelivered;
        }
        auto committed = client.commit_offset(topic, group, page->messages.back().offset, 2s);
        if (!committed) trouble(committed.error());
      }
    }
    sqlite3_finalize(insert);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "faults_consumer: %s\n", error.what());
    return 1;
  }
  std::printf("applied %ld redelivered %ld failures %ld\n", applied, redelivered, failures);
  return 0;
}
