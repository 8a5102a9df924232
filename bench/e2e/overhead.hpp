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
  double ratio = 0;           // with metrics / without
  std::uint64_t scrapes = 0;  // successful GET /metrics during the drain with metrics
  std::vector<std::string> problems;
};

// One round: `off` drains without metrics, `on` (other msg_ids) with them.
// Throws on infrastructure failures; wrong results go to problems.
OverheadResult run_overhead(const OverheadSettings& settings, const Dataset& off, const Dataset& on,
                            bool on_first);

}  // namespace bench
