// The relay loop: forwards one outbox database to a Sink, in commit order,
// pipelined, until every message is acknowledged.
//
//   auto store = outbox::RelayStore::open("app.db");
//   relay::BrokerSink sink({.endpoint = "tcp://127.0.0.1:7750"});
//   relay::Relay relay(store, sink, {.holder = "relay@host"});
//   relay.run();            // until request_stop(), e.g. from a signal handler
//
// What run() does:
// - Takes the database's relay lease (one active relay per outbox) as
//   lease_holder(): the configured holder name followed by ":" and a random
//   instance id drawn when the Relay is constructed, so two relays never share
//   a lease by accident, even with equal names. Without the lease the relay is
//   a standby that retries every lease_ttl / 4 and takes over once the active
//   relay's lease lapses or is released. The sink gets the database's origin
//   id and the lease epoch (Sink::set_lease) so that the destination can refuse
//   a relay that lost its lease while paused; after any failed session the
//   relay checks its lease before the next one (an immediate reconnect after
//   a broken connection leaves that to the destination, which refuses a
//   HELLO with a stale epoch).
// - Reads pending messages in seq order and sends them in batches of at most
//   batch_size messages and batch_bytes bytes (lowered to what the
//   destination announced), up to max_in_flight_batches at once: memory stays
//   flat whatever the backlog. A message larger than batch_bytes on its own
//   travels alone when the destination can take it.
// - Checks every message against the destination's limits and the SQL
//   contract's format before sending (undeliverable_reason() in sink.hpp). A
//   message that can never be delivered is dead at once with a reason naming
//   the field, its size and the limit; the rest of its batch goes on.
// - Per acknowledged message: stored or duplicate -> delivered with the
//   destination's offset; conflict or rejected -> dead with the reason. All
//   outcomes of one batch are recorded in one transaction.
// - On any transient failure (no ack within ack_timeout, a refused batch, a
//   broken connection, which the sink reports as soon as its socket notices)
//   it opens a new session and resends from the first unacknowledged message
//   with the same msg_ids: at once after a session that made progress, after
//   an exponential backoff with jitter when attempts fail in a row (a
//   session that opened and then lost its connection is retried at once up
//   to eight times in a row without progress; past that the backoff starts
//   from its first step). A new session starts with a small window of
//   unacknowledged messages that doubles each round trip. The next batches
//   are sent before the outcomes just acknowledged are written to the
//   database. Transient failures never make a message dead.
// - Sleeps on the outbox's commit notification when idle (about a millisecond
//   from commit to send), polling as a fallback.
// - Deletes delivered rows older than `retention` in small batches.
// - Transient database failures (SQLITE_BUSY past the busy timeout,
//   SQLITE_LOCKED, SQLITE_FULL, SQLITE_IOERR, SQLITE_PROTOCOL) are logged in
//   one line naming the database, the operation and SQLite's code; the relay
//   keeps its lease, backs off like after a failed session and resumes when
//   the condition clears. Unrecorded outcomes are resent (DUPLICATE).
// - Records its session state, last error and last progress in the database
//   (RelayStore::write_status) for `outbox-relay status`, and logs a warning
//   naming the cause when messages are pending but nothing has been settled
//   for stall_ack_timeouts ack timeouts.
// - request_stop(): stops reading, waits up to drain_timeout for in-flight
//   acknowledgements, records them, releases the lease and returns.
//
// Ownership: the Relay borrows the store and the sink; both must outlive it.
// Thread safety: run() on one thread; request_stop() from any thread or a
// signal handler; counters() from any thread.
// Errors: database failures other than the transient ones above
// (outbox::Error: a file that is no outbox any more, a newer schema, a
// corrupt database) propagate out of run(); a lost lease is not an error (the
// relay goes back to standby).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "outbox/relay_store.hpp"
#include "relay/backoff.hpp"
#include "relay/sink.hpp"

namespace spdlog {
class logger;
}

namespace relay {

struct RelayMetrics;

struct RelayConfig {
  // Names the relay for people (outbox-relay uses host:pid); the lease holder
  // is this name plus ":" and the instance id, e.g. "db1:4242:1a2b3c4d".
  std::string holder = "outbox-relay";
  // The lease holder's instance id; empty: a random one. A program that
  // claims the lease before it builds the relay (MultiRelay opens databases
  // on other threads) sets it, so that the relay carries on with that lease.
  std::string instance_id{};
  std::size_t batch_size = 1000;
  // Bytes of one batch as counted by message_bytes() (a PUBLISH body); the
  // destination's announced frame limit lowers it further. 1 MiB: a batch of
  // 1,000 messages of 256 B (~290 KB) is never cut by it; larger batches
  // drained large messages no faster on the 2-core development machine
  // (outbox-bench e2e under load, medians of 2-4 noisy runs: 70 KB 1m ~1,160
  // msg/s, 2m ~1,350, 4m ~840, 8m ~490; 900 KB 1m 80-94, 4m 69-70), and the
  // relay's in-flight memory is batch_bytes x max_in_flight_batches.
  std::size_t batch_bytes = std::size_t{1} << 20;
  std::size_t max_in_flight_batches = 8;
  // A new session's window of unacknowledged messages starts at 64 and
  // doubles each round trip (slow start: a connection that breaks early costs
  // little). With this set it starts at one whole batch: for a program that
  // forwards many small databases with small windows (MultiRelay), where a
  // database's whole backlog is often less than a batch and each round trip
  // is a round of turns over every database.
  bool first_window_one_batch = false;
  std::chrono::milliseconds ack_timeout{10'000};
  std::chrono::milliseconds connect_timeout{2'000};
  BackoffPolicy backoff{};
  std::chrono::milliseconds lease_ttl{10'000};
  std::chrono::milliseconds retention{std::chrono::hours(24)};
  std::chrono::milliseconds retention_interval{10'000};
  // Longest sleep waiting for a commit notification before looking again.
  std::chrono::milliseconds idle_wait{250};
  std::chrono::milliseconds summary_interval{5'000};
  std::chrono::milliseconds drain_timeout{5'000};
  // Pending messages but nothing settled for this many ack timeouts: warn.
  int stall_ack_timeouts = 3;
  std::shared_ptr<spdlog::logger> logger;  // null: a null sink
  // Where the relay reports its metrics (relay/metrics.hpp); null: nowhere.
  std::shared_ptr<RelayMetrics> metrics;
};

// Monotonic counters since run() started; readable from other threads.
struct RelayCounters {
  std::uint64_t sent_messages = 0;
  std::uint64_t stored = 0;
  std::uint64_t duplicates = 0;
  std::uint64_t dead = 0;
  std::uint64_t blocked = 0;
  std::uint64_t sessions = 0;
  std::uint64_t failures = 0;
  std::uint64_t deleted = 0;
  std::uint64_t undeliverable = 0;    // of `dead`: refused by the relay's own checks
  std::uint64_t database_errors = 0;  // transient database failures survived
  bool active = false;                // holds the lease
  bool session_up = false;            // has a session with its destination
};

// What Relay::step() did, and when it wants to run again.
struct StepResult {
  enum class State : std::uint8_t {
    busy,     // sent, handled or recorded something: step again in the next round
    waiting,  // batches in flight and nothing more to send now: step on a reply
    idle,     // nothing pending: step on a commit
    standby,  // another relay holds the lease (or it was just lost)
  };
  State state = State::idle;
  // Step again by then even without an event: housekeeping, the lease, an
  // acknowledgement's deadline, the end of a backoff or of the holder's lease.
  std::chrono::steady_clock::time_point call_again_by{};
};

class Relay {
 public:
  Relay(outbox::RelayStore& store, Sink& sink, RelayConfig config);
  ~Relay() noexcept;
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  void run();
  void request_stop() noexcept;

  // For a program that forwards many databases from one thread (MultiRelay):
  // one turn of run()'s loop without blocking, sending at most one batch,
  // polling the sink without waiting and never waiting for commits (the
  // caller watches for them). Errors as for run(). finish() then waits up to
  // drain_timeout for what is in flight, records it and releases the lease,
  // as run() does when stopped. Use either run() or step()/finish().
  // finish(deadline) waits until `deadline` instead: a program finishing
  // many relays one after another gives them all one deadline, so that
  // stopping takes one drain_timeout, not one per relay.
  StepResult step();
  void finish();
  void finish(std::chrono::steady_clock::time_point deadline);
  // Carries on with a lease claimed under lease_holder() before the relay was
  // built (MultiRelay's opener threads claim it with the database's first
  // write), read from the clock before that claim: the first step takes it
  // as its own instead of claiming again; finish() gives it back if no step
  // took it. Before the first step only. Throws std::invalid_argument when
  // the lease names another holder.
  void adopt_lease(outbox::Lease lease, std::chrono::steady_clock::time_point claimed_at);
  bool holds_lease() const noexcept;
  // The name this instance holds (or waits for) the lease under.
  const std::string& lease_holder() const noexcept;
  RelayCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace relay
