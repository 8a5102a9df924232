// The outbox side of the comparison: real outbox-broker and outbox-relay
// processes over loopback, producers using the outbox library in this process.
//
// Passes, in order, against one broker in a temporary directory:
//   drain    N messages committed beforehand (batched transactions, not timed);
//            time from starting outbox-relay to the broker having stored the last
//   live     producer threads commit N messages, one per transaction, while a
//            running relay forwards; time from the first commit to the last stored
//   latency  one producer commits at a fixed rate; a consumer long-polls FETCH on
//            the topic and stamps each message's arrival on the steady clock
//   resend   the drain outbox's delivery bookkeeping is reset so the relay sends
//            every message again; all must come back DUPLICATE
// then every topic is read back and checked: each msg_id stored exactly once,
// with its payload, nothing else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dataset.hpp"

namespace bench {

struct OutboxSettings {
  std::filesystem::path broker_binary;
  std::filesystem::path relay_binary;
  std::string sync = "normal";  // broker and relay bookkeeping: normal | full
  std::size_t live_messages = 100'000;
  int producers = 2;
  // Outbox databases the live pass's producers write to (producer p to
  // database p % live_databases), forwarded by one outbox-relay: --db for
  // one, --db-dir for several.
  int live_databases = 1;
  double rate = 10'000;  // offered rate of the latency pass, msg/s
  double latency_seconds = 5;
  std::size_t payload_bytes = 256;
  int keys = 64;
  std::size_t setup_batch = 5000;  // messages per transaction when filling the drain outbox
  std::size_t relay_batch = 0;     // 0: outbox-relay's default
  std::string relay_batch_bytes;   // empty: outbox-relay's default
  std::size_t relay_in_flight = 0;
  std::uint64_t seed = 1;
  // When set, the latency pass writes one CSV line per message here.
  std::string latency_dump;
  // The latency pass commits the next message only once the consumer saw the previous one.
  bool latency_one_at_a_time = false;
};

struct OutboxResult {
  std::size_t drain_messages = 0;
  double drain_seconds = 0;
  double drain_msgs_per_sec = 0;
  double setup_msgs_per_sec = 0;  // bulk commits into the outbox (not part of any figure)

  std::size_t live_messages = 0;
  int producers = 0;
  double live_seconds = 0;
  double live_msgs_per_sec = 0;         // first commit to last stored
  double live_commit_msgs_per_sec = 0;  // producers alone: first to last commit
  int live_databases = 0;
  // CPU per message over the live pass: the broker, the relay (both from
  // /proc/<pid>/task/*/schedstat) and the producer threads (their own CPU clocks).
  double live_cpu_broker_us = 0;
  double live_cpu_relay_us = 0;
  double live_cpu_producers_us = 0;
  // The producers' transactions from BEGIN IMMEDIATE returning (the write
  // lock taken) to commit() returning, summed over producers and databases,
  // over the pass's duration and the number of databases: an upper bound of
  // the share of each database's time its producers held the lock, since
  // commit() returns after the WAL hook that runs once the lock is released.
  double live_producer_span_share = 0;

  double latency_offered_rate = 0;
  double latency_achieved_rate = 0;  // commits per second actually made
  // Time spent runnable but waiting for a CPU during the latency pass, per
  // process (all threads summed): how much the machine's other work got in the way.
  double latency_cpu_wait_broker_ms = 0;
  double latency_cpu_wait_relay_ms = 0;
  double latency_cpu_wait_bench_ms = 0;
  // Share of the machine's CPU time the hypervisor took during the pass
  // (steal, MachineCpu), -1 if unknown.
  double latency_steal_share = -1;
  double latency_cpu_used_ms = 0;  // on a CPU, broker + relay + producer and consumer
  // What each process spent per message committed in the latency pass: CPU
  // time and context switches, figures that waiting for a CPU does not change.
  struct CostPerMessage {
    double cpu_us = 0;
    double voluntary_switches = 0;
    double involuntary_switches = 0;
    double bytes_written = 0;  // write(2)-like calls: SQLite's WAL, sockets, logs
  };
  CostPerMessage latency_broker_cost, latency_relay_cost, latency_bench_cost;
  std::vector<std::int64_t> latency_ns;
  Percentiles latency;

  std::size_t resend_messages = 0;
  double resend_seconds = 0;
  double resend_msgs_per_sec = 0;
  std::uint64_t resend_duplicates = 0;  // broker `duplicates` counter growth
  std::uint64_t resend_stored = 0;      // broker `stored` counter growth: must be 0
  bool resend_all_duplicate = false;

  std::uint64_t broker_stored = 0;  // broker counters at the end
  std::uint64_t broker_duplicates = 0;
  std::uint64_t broker_conflicts = 0;
  std::uint64_t broker_rejected = 0;
  std::size_t verified_messages = 0;  // read back and matched
  std::vector<std::string> problems;  // empty: every check passed
};

// Runs all passes on `data` (the drain and resend messages). Throws on
// infrastructure failures (a daemon does not start, a pass times out);
// wrong results are reported in OutboxResult::problems.
OutboxResult run_outbox(const OutboxSettings& settings, const Dataset& data);

}  // namespace bench
