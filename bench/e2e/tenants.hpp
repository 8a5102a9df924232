// outbox-bench tenants: one outbox-relay forwarding a directory of outbox
// databases (`outbox-relay run --db-dir`), in three parts, each against its
// own outbox-broker:
//
//   drain    per round: `databases` databases of `per_database` messages
//            each drain against one database holding all those messages,
//            alternating which goes first; the ratio is the rate of the many
//            over the rate of the one (what per-database work costs)
//   latency  one database with a backlog of `backlog` messages drains while
//            a producer commits one message every `commit_every` to one of
//            `small_tenants` other databases in turn; a consumer stamps each
//            small tenant's message as it arrives (commit -> stored, an
//            upper bound: it includes the FETCH reply)
//   idle     `idle_databases` databases, one message each: once all are
//            stored and `settle` has passed (the relay closes databases idle
//            for its --idle-release), the relay's CPU time, resident memory
//            and open descriptors over `idle_seconds`
//
// Every message is read back: exactly once, with its payload, in per-key
// commit order (the keys name their database).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dataset.hpp"
#include "jetstream.hpp"
#include "outbox_e2e.hpp"

namespace bench {

struct TenantsSettings {
  OutboxSettings outbox;  // daemons, sync level, relay batch and in-flight
  std::size_t databases = 1000;
  std::size_t per_database = 200;
  std::size_t backlog = 1'000'000;
  std::size_t small_tenants = 10;
  std::chrono::milliseconds commit_every{20};
  std::size_t idle_databases = 5000;
  std::chrono::milliseconds settle{35'000};
  double idle_seconds = 60;
};

// One round of the drain part.
struct TenantsDrainResult {
  std::size_t databases = 0;
  std::size_t messages = 0;  // in all, the same on both sides
  double one_seconds = 0;
  double one_msgs_per_sec = 0;
  double many_seconds = 0;
  double many_msgs_per_sec = 0;
  double ratio = 0;            // many / one
  double one_cpu_seconds = 0;  // outbox-relay's threads on a CPU during the drain
  double many_cpu_seconds = 0;
  std::vector<std::string> problems;
};

struct TenantsLatencyResult {
  std::size_t backlog = 0;
  double backlog_seconds = 0;  // from starting outbox-relay to the backlog stored
  double backlog_msgs_per_sec = 0;
  std::size_t small_messages = 0;  // committed while the backlog drained
  Percentiles latency;
  // Commit (wall clock) to the broker's own stored timestamp (ms
  // resolution): what of `latency` is before the message is stored, as
  // opposed to the consumer's FETCH.
  Percentiles stored_latency;
  // While the small tenants committed: how long each process's threads were
  // runnable but waiting for a CPU (schedstat), which includes the time a
  // real-time process is held back by the kernel's RT throttling
  // (kernel.sched_rt_runtime_us): when they all wait at once, a message waits too.
  double cpu_wait_broker_ms = 0;
  double cpu_wait_relay_ms = 0;
  double cpu_wait_bench_ms = 0;
  std::vector<std::string> problems;
};

struct TenantsIdleResult {
  std::size_t databases = 0;
  double setup_seconds = 0;  // from starting outbox-relay to every message stored
  double measured_seconds = 0;
  double cpu_percent = 0;           // of one core, all of outbox-relay's threads
  double rss_mib = 0;               // at the end
  std::size_t descriptors = 0;      // open at the end
  std::size_t max_descriptors = 0;  // most seen, sampled every 100 ms from the start
  std::vector<std::string> problems;
};

// Throw on infrastructure failures (a daemon does not start, a pass takes
// longer than its bounded timeout); wrong results go to problems.
TenantsDrainResult run_tenants_drain(const TenantsSettings& settings, const Dataset& one,
                                     const Dataset& many, bool many_first);
// The drain part into a NATS JetStream stream (outbox-relay --sink
// jetstream, one nats-server for both sides): `many` over `databases`
// databases against `one` in one database, timed until the stream holds
// each side's messages; the stream's count must match exactly.
TenantsDrainResult run_tenants_drain_jetstream(const TenantsSettings& settings,
                                               const JetStreamSettings& nats, const Dataset& one,
                                               const Dataset& many, bool many_first);
TenantsLatencyResult run_tenants_latency(const TenantsSettings& settings);
TenantsIdleResult run_tenants_idle(const TenantsSettings& settings);

}  // namespace bench
