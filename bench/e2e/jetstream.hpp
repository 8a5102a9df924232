// The peer: NATS JetStream doing the same work. The benchmark starts
// nats-server -js on a free loopback port with file storage in a temporary
// directory, creates a file-backed stream with a duplicate window, and
// publishes through the NATS C client (libnats):
//   publish  the same msg_ids (as Nats-Msg-Id) and payloads as the outbox
//            drain, asynchronously with a bounded number in flight; time from
//            the first publish to the last PubAck
//   latency  (optional) publishes at a fixed rate; per message, the time from
//            the publish call to its PubAck (stored by the server)
//   resend   every msg_id published again: each PubAck must say duplicate
// and the stream must hold each message once.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "dataset.hpp"

namespace test_support {
class ChildProcess;
}

namespace bench {

struct JetStreamSettings {
  std::string server_binary = "nats-server";  // looked up in PATH when not a path
  std::size_t max_pending = 4000;             // async publishes in flight
  double rate = 10'000;                       // latency pass, msg/s; 0 skips it
  double latency_seconds = 5;
  std::size_t payload_bytes = 256;
  std::int64_t duplicate_window_seconds = 600;
  std::uint64_t seed = 1;
};

struct JetStreamResult {
  std::string server_version;
  std::size_t messages = 0;
  double publish_seconds = 0;
  double publish_msgs_per_sec = 0;

  double latency_offered_rate = 0;
  double latency_achieved_rate = 0;
  std::vector<std::int64_t> latency_ns;
  Percentiles latency;

  double resend_seconds = 0;
  double resend_msgs_per_sec = 0;
  std::uint64_t resend_duplicates = 0;  // PubAcks with the duplicate flag
  bool resend_all_duplicate = false;

  std::uint64_t stream_messages = 0;  // what the stream holds at the end
  std::vector<std::string> problems;  // empty: every check passed
};

bool jetstream_available();  // false when built without libnats

// The version nats-server reports (empty if it cannot be run).
std::string nats_server_version(const std::string& server_binary);

JetStreamResult run_jetstream(const JetStreamSettings& settings, const Dataset& data);

// nats-server -js on loopback (as run_jetstream starts it) with one
// file-backed stream, JetStreamTarget::kStream, covering `subjects`: where
// outbox-relay --sink jetstream forwards in `outbox-bench tenants --sink
// jetstream`. Throws std::runtime_error when it cannot start (or without
// libnats).
class JetStreamTarget {
 public:
  static constexpr const char* kStream = "BENCH";
  JetStreamTarget(const JetStreamSettings& settings, const std::filesystem::path& dir,
                  const std::string& subjects);
  ~JetStreamTarget();
  JetStreamTarget(const JetStreamTarget&) = delete;
  JetStreamTarget& operator=(const JetStreamTarget&) = delete;
  std::string url() const;
  std::uint64_t stream_messages();  // what the stream holds now
  test_support::ChildProcess& process();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// JetStream's side of `outbox-bench cuts`: publishes `data` to `target`'s
// stream on subject "bench.drain" through `url` (nats://..., e.g. a proxy in
// front of target.url() that cuts connections), the way an application that
// needs what outbox-relay gives (every message stored once, in per-key order)
// has to use libnats, and as outbox-relay's JetStream sink does:
// - asynchronous publishes with Nats-Msg-Id, at most settings.max_pending in
//   flight; the stream's duplicate window absorbs resends;
// - no automatic reconnection: libnats would send what it still held from
//   the old connection ahead of what the application publishes again, and
//   per-key order would be lost (measured: 150-180 of 50,000 messages per run
//   behind a proxy cutting every 2 KB-400 KB). A lost connection (or a publish
//   answered with an error) is closed; a new one is opened at once and every
//   message without a PubAck is published again, oldest first, before
//   anything new.
// Returns when every msg_id has a PubAck (or after `timeout`, with a problem);
// a message stored after a later one of its key is a problem too.
struct JetStreamViaResult {
  double seconds = 0;            // first publish to the last PubAck
  std::uint64_t published = 0;   // publish calls accepted, resends included
  std::uint64_t reconnects = 0;  // connections opened after the first
  // Messages stored after a later message of their key (from the PubAcks'
  // stream sequences); 0 unless the order was lost.
  std::uint64_t reordered = 0;
  double client_cpu_ms = 0;  // this process (the publisher and libnats's threads)
  std::vector<std::string> problems;
};
JetStreamViaResult publish_via(const JetStreamSettings& settings, JetStreamTarget& target,
                               const std::string& url, const Dataset& data,
                               std::chrono::milliseconds timeout);

// nats_Close() once at program exit (no-op without libnats).
void jetstream_shutdown();

}  // namespace bench
