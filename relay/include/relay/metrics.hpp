// The relay loop's metrics: what a running Relay updates in a
// metrics::Registry (pass it in RelayConfig::metrics). docs/operations.md
// explains every series; the database-side gauges (pending, oldest pending
// age, dead) are read when scraped, by whoever serves the registry
// (outbox-relay does, from its own read-only connection).
//
//   metrics::Registry registry;
//   auto relay_metrics = std::make_shared<relay::RelayMetrics>(registry);
//   relay::Relay relay(store, sink, {.metrics = relay_metrics});
//
// Every label value is fixed here: the relay adds no series at run time.
// Ownership: the references point into the registry, which must outlive this.
// Thread safety: as metrics::Registry (updates from the relay's thread, reads
// from any).
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "metrics/metrics.hpp"
#include "outbox/relay_store.hpp"

namespace relay {

struct RelayMetrics {
  explicit RelayMetrics(metrics::Registry& registry);

  metrics::Counter& sent_messages;
  // outbox_relay_acknowledged_total{outcome=...}
  metrics::Counter& acknowledged_stored;
  metrics::Counter& acknowledged_duplicate;
  metrics::Counter& acknowledged_conflict;
  metrics::Counter& acknowledged_rejected;
  metrics::Counter& acknowledged_blocked;
  metrics::Counter& undeliverable;  // made dead by the relay's own checks
  // outbox_relay_session_failures_total{cause=...}
  metrics::Counter& failure_connect;      // a session could not be opened
  metrics::Counter& failure_ack_timeout;  // no acknowledgement in time
  metrics::Counter& failure_destination;  // an error reply or a broken connection
  metrics::Counter& failure_protocol;     // an acknowledgement that does not fit
  metrics::Counter& failure_database;     // a transient database failure
  metrics::Counter& sessions_opened;
  metrics::Gauge& lease_held;   // 0/1
  metrics::Gauge& lease_epoch;  // of the lease held, else 0
  metrics::Gauge& standby;      // 0/1: another relay holds the lease
  metrics::Gauge& session_up;   // 0/1
  metrics::Gauge& batches_in_flight;
  metrics::Gauge& last_error_time;            // Unix seconds, 0 if none
  metrics::Histogram& send_to_ack_seconds;    // per batch
  metrics::Histogram& commit_to_ack_seconds;  // per message stored or duplicate
};

// The database side of the relay's metrics: pending messages, retries, dead
// messages and the age of the oldest pending message (RelayStore::backlog()),
// read from the outbox through a read-only connection of its own when someone
// scrapes or asks for readiness, at most once per `max_age`. A reading is a
// few index lookups (tens of microseconds, however large the backlog), so a scrape
// costs the relay's drain nothing measurable; `max_age` only keeps a scrape
// storm to one reading per interval.
// Thread safety: read() and the registry's collector from any thread (one
// mutex). Errors: the constructor throws outbox::Error when the database
// cannot be opened; read() returns the error text instead of throwing.
class BacklogProbe {
 public:
  BacklogProbe(metrics::Registry& registry, const std::filesystem::path& database,
               std::chrono::milliseconds max_age = std::chrono::seconds(1));
  ~BacklogProbe() noexcept;
  BacklogProbe(const BacklogProbe&) = delete;
  BacklogProbe& operator=(const BacklogProbe&) = delete;

  struct Reading {
    std::optional<outbox::Backlog> backlog;  // empty when it could not be read
    std::string error;                       // why, when empty
  };
  Reading read();

 private:
  std::mutex mutex_;
  outbox::RelayStore store_;
  std::chrono::milliseconds max_age_;
  std::chrono::steady_clock::time_point read_at_{};
  Reading last_;
};

struct RelayReadiness {
  bool ready = false;
  std::string reason;  // one line: why not, or what ready means now
};

// Ready means delivering: this relay holds the lease with a session open, or
// is a standby behind a live holder; and the oldest pending message is at
// most `max_lag` old.
RelayReadiness relay_readiness(const RelayMetrics& metrics, const BacklogProbe::Reading& backlog,
                               std::chrono::milliseconds max_lag);

}  // namespace relay
