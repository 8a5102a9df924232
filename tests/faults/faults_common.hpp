// What every part of outbox-faults shares: its settings (the flags), the
// error that ends a run that cannot be carried out, the stop flag, and small
// helpers for files and report lines.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace faults {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Set by SIGINT/SIGTERM (outbox-faults' handler): the run stops at its next step.
extern std::atomic<bool> interrupted;

const std::vector<std::string> kTopics = {"orders", "payments"};

struct Settings {
  std::uint64_t seed = 0;
  long faults = 250;
  std::optional<milliseconds> duration;
  milliseconds max_load_time = 10min;
  int producers = 3;
  // More than 0: that many tenant databases in one directory, forwarded by
  // two outbox-relay run --db-dir processes (the producers share them out).
  int databases = 0;
  double rate = 100;  // transactions per second per producer
  int keys = 12;
  milliseconds drain_timeout = 180s;
  double proxy_rate = 1.0;
  // Fraction of messages too large for the broker (broker sink only).
  double oversize_rate = 0.002;
  // The producer that writes plain SQL (broker sink only; 0: none), and the
  // fraction of its messages that can never be delivered.
  double sql_rate = 30;
  double poison_rate = 0.05;
  bool hostile_order = false;
  // In front of each message-level proxy, a TCP proxy that cuts every
  // connection after a random number of bytes ("off": none).
  std::string cut_every = "2K-400K";
  double freeze = 0.05;  // share of those cuts that go silent instead
  bool keep = false;
  std::string sink = "broker";  // or "jetstream"
  // The JetStream consumers' --max-ack-pending (and fetch size); only 1 keeps
  // per-key order through their crashes.
  int consumer_max_ack_pending = 1;
  // "redis": two consumers share one Redis inbox (redis-server started here).
  std::string inbox = "sqlite";
  double self_kill_rate = 0.0005;  // --inbox redis: per claim and window
  // app.db on a tmpfs that the injector fills up now and then (needs mount).
  bool full_disk = true;
  std::uint64_t disk_bytes = 64ull << 20;
  std::string nats_server_binary;
  fs::path work_dir;
  std::string relay_binary = OUTBOX_BIN_OUTBOX_RELAY;
  std::string broker_binary = OUTBOX_BIN_OUTBOX_BROKER;
  std::string proxy_binary = OUTBOX_BIN_FAULT_PROXY;
  std::string producer_binary = OUTBOX_BIN_FAULTS_PRODUCER;
  std::string sql_producer_binary = OUTBOX_BIN_FAULTS_SQL_PRODUCER;
  std::string consumer_binary = OUTBOX_BIN_FAULTS_CONSUMER;
#ifdef OUTBOX_BIN_JETSTREAM_CONSUMER
  std::string jetstream_consumer_binary = OUTBOX_BIN_JETSTREAM_CONSUMER;
#endif
};

class HarnessError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string describe(const test_support::ExitStatus& status);

void append_file(const fs::path& to, const std::string& text);

std::string tail_lines(const std::string& text, std::size_t count);

std::string read_endpoint(const fs::path& file);

std::map<std::string, long> read_counts(const fs::path& file);

// A msg_id short enough for a report line.
std::string shown(const std::string& msg_id);

// Who holds which of the WAL index's locks on `db` (its -shm file), from
// /proc/locks: one line per lock with the process's pid and name, for a report
// on a read that SQLite gave up with SQLITE_PROTOCOL.
std::string wal_lock_holders(const fs::path& db);

}  // namespace faults
