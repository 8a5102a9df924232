// outbox-bench metrics: what serving metrics costs the relay's drain.
//
// Per round, against one outbox-broker: N messages are committed to an outbox
// first (not timed) and outbox-relay drains it without metrics; N other
// messages drain the same way with --metrics-bind while a scraper reads
// /metrics every `scrape_interval` (a much shorter interval than Prometheus'
// usual 15 s, so the cost of a scrape shows). Which of the two goes first
// alternates between rounds. Each figure is the time from starting
// outbox-relay until the broker has stored the last message; the ratio is the
// rate with metrics over the rate without. Both topics are read back: every
// message exactly once, in per-key commit order.
//
// On a shared machine the rates swing with other work far more than metrics
// move them, so each drain also records the CPU time outbox-relay's threads
// ran (schedstat, the metrics endpoint's threads included) per message: what
// metrics cost the relay, without the time it waited for a CPU; and the time
// the scrapes took per message, the most that serving metrics can have added.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dataset.hpp"
#include "outbox_e2e.hpp"

namespace bench {

struct OverheadSettings {
  OutboxSettings outbox;  // daemons, sync level, relay batch and in-flight
  std::chrono::milliseconds scrape_interval{1000};
};

struct OverheadResult {
  std::size_t messages = 0;
  double off_seconds = 0;
  double off_msgs_per_sec = 0;
  double on_seconds = 0;
  double on_msgs_per_sec = 0;
  double ratio = 0;                   // with metrics / without
  double off_cpu_us_per_message = 0;  // outbox-relay's CPU time per message
  double on_cpu_us_per_message = 0;
  double cpu_ratio = 0;  // with metrics / without (above 1: metrics cost CPU)
  // The same CPU time without the relay loop's own (main) thread: ZeroMQ's
  // I/O threads in both drains, and the metrics endpoint's threads in the
  // drain with metrics, whose work (scrapes, backlog readings) is all that
  // serving metrics adds; the difference is that cost per message.
  double off_other_threads_us_per_message = 0;
  double on_other_threads_us_per_message = 0;
  double other_threads_added_us_per_message = 0;
  // The scrapes' round trips during the drain with metrics, per message: an
  // upper bound of what serving them took from the relay's CPUs.
  double scrape_us_per_message = 0;
  std::uint64_t scrapes = 0;  // successful GET /metrics during the drain with metrics
  std::vector<std::string> problems;
};

// One round: `off` drains without metrics, `on` (other msg_ids) with them.
// Throws on infrastructure failures; wrong results go to problems.
OverheadResult run_overhead(const OverheadSettings& settings, const Dataset& off, const Dataset& on,
                            bool on_first);

}  // namespace bench
