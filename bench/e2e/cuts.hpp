// outbox-bench cuts: how fast an outbox drains when the relay's connection to
// the broker is cut at random, next to the same drain without cuts.
//
// Per round, against one outbox-broker: N messages are committed to an outbox
// first (not timed), and outbox-relay drains it through tests/faults'
// fault_proxy in its cutting mode (a plain TCP proxy) with cutting off; then
// N other messages drain the same way through a proxy that cuts every
// connection after a random 2 KB-400 KB (--cut-every). Which of the two goes
// first alternates between rounds. Each figure is the time from starting
// outbox-relay until the broker has stored the last message; the ratio is the
// rate under cuts over the rate without. Both topics are read back: every
// message exactly once, with its payload, in per-key commit order. The
// relay's resends per cut are its sent-message counter beyond N, over the cuts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dataset.hpp"
#include "jetstream.hpp"
#include "outbox_e2e.hpp"

namespace bench {

struct CutsSettings {
  OutboxSettings outbox;  // daemons, sync level, relay batch and in-flight
  // Also drain through the same proxy into JetStream (publish_via in
  // jetstream.hpp), without and under cuts, with these settings.
  bool jetstream = false;
  JetStreamSettings js;
  std::filesystem::path proxy_binary;
  std::string cut_every = "2K-400K";
  std::uint64_t seed = 1;  // of the proxy's cuts
};

struct CutsResult {
  std::size_t messages = 0;
  double plain_seconds = 0;
  double plain_msgs_per_sec = 0;
  double cut_seconds = 0;
  double cut_msgs_per_sec = 0;
  double ratio = 0;        // cut rate / plain rate
  std::uint64_t cuts = 0;  // connections the proxy cut during the cut drain
  // Under cuts: messages the relay sent beyond the N (its resends), per cut
  // (outbox_relay_sent_messages_total from its /metrics endpoint).
  double resent_per_cut = 0;
  // Under cuts: the relay's waits before a new session (a backoff, not an
  // immediate reconnect), counted from its log, and their sum.
  std::uint64_t backoffs = 0;
  std::uint64_t backoff_ms = 0;
  // CPU time (ms, all threads, /proc/PID/task/*/schedstat) of each process
  // over each drain: the relay from its start, the broker and the proxy from
  // the relay's start, all until the broker has the last message.
  struct Cpu {
    double relay_ms = 0, broker_ms = 0, proxy_ms = 0;
  };
  Cpu plain_cpu, cut_cpu;
  // The same through the same kind of proxy into JetStream (CutsSettings::
  // jetstream): time from the first publish to the last PubAck; resends are
  // publishes beyond N; CPU of the publishing process (relay_ms), nats-server
  // (broker_ms) and the proxy.
  struct JetStream {
    bool ran = false;
    double plain_seconds = 0, plain_msgs_per_sec = 0;
    double cut_seconds = 0, cut_msgs_per_sec = 0;
    double ratio = 0;
    std::uint64_t cuts = 0;
    double resent_per_cut = 0;
    std::uint64_t reordered = 0;  // under cuts: stored after a later message of their key
    Cpu plain_cpu, cut_cpu;
  } jetstream;
  std::vector<std::string> problems;
};

// One round: `plain` drains without cuts, `cut` (other msg_ids) under cuts.
// Throws on infrastructure failures (a daemon does not start, a drain takes
// longer than its bounded timeout); wrong results go to CutsResult::problems.
CutsResult run_cuts(const CutsSettings& settings, const Dataset& plain, const Dataset& cut,
                    bool cut_first);

}  // namespace bench
