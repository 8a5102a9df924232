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
// Every label value is fixed here: the relay adds no series at run time
// (DirectoryMetrics below: a bounded number per database directory).
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
#include "relay/multi_relay.hpp"

namespace relay {

struct RelayMetrics {
  explicit RelayMetrics(metrics::Registry& registry);
  // For one RelayMetrics shared by the relays of many databases (MultiRelay):
  // the counters, the histograms and last_error_time add up over them in
  // `registry`; the gauges of one relay's state (lease_held, lease_epoch,
  // standby, session_up, batches_in_flight, window_bytes), which they would overwrite in
  // turn, go to `relay_state`, a registry the caller does not serve.
  RelayMetrics(metrics::Registry& registry, metrics::Registry& relay_state);

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
  // Bytes the relay may have unacknowledged: batch_bytes x in-flight batches
  // (lowered to the destination's limit) until a connection breaks with
  // batches unacknowledged, then half of those, growing back as acks arrive.
  metrics::Gauge& window_bytes;
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

// The metrics of a MultiRelay (outbox-relay run --db-dir) in one registry,
// for the whole process, with a bounded number of series whatever the
// directory holds:
// - the counters and histograms of RelayMetrics, added up over every
//   database (relay_metrics() goes in MultiRelayConfig::relay.metrics), and
//   last_error_time of any database;
// - the single relay's backlog gauges (pending, retrying, dead, oldest
//   pending age) summed over the databases (the oldest of them all), as the
//   MultiRelay last read them (MultiRelayConfig::backlog_interval), and
//   gauges of the databases known, open, leased and with a session;
// - outbox_relay_database_*{database="NAME"} series for the databases of
//   MultiRelayCounters::largest only (MultiRelayConfig::listed_databases):
//   a database that leaves that list loses its series.
// docs/operations.md lists the series.
//
//   metrics::Registry registry;
//   relay::DirectoryMetrics directory_metrics(registry);
//   config.relay.metrics = directory_metrics.relay_metrics();
//   relay::MultiRelay relay(config);
//   directory_metrics.collect(relay);  // then serve the registry
//
// Ownership: borrows the registry and, after collect(), the MultiRelay; both
// must outlive the registry's last render() (destroy the server first).
// Thread safety: render() from any thread (MultiRelay::counters() is).
class DirectoryMetrics {
 public:
  explicit DirectoryMetrics(metrics::Registry& registry);
  std::shared_ptr<RelayMetrics> relay_metrics() const { return relay_metrics_; }
  // Adds the collector that writes `relay`'s figures on every render().
  void collect(const MultiRelay& relay);

 private:
  metrics::Registry& registry_;
  metrics::Registry relay_state_;  // the per-relay gauges, not served
  std::shared_ptr<RelayMetrics> relay_metrics_;
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

// For a MultiRelay: ready while the oldest pending message of every database
// (as last read) is at most `max_lag` old (else the reason names the
// database), and, when it holds leases, while at least one of those databases
// has a session with its destination.
RelayReadiness directory_readiness(const MultiRelayCounters& counters,
                                   std::chrono::milliseconds max_lag);

}  // namespace relay
