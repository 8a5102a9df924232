#include "relay/metrics.hpp"

#include <cstdio>

namespace relay {
namespace {

constexpr const char* kAcknowledged = "outbox_relay_acknowledged_total";
constexpr const char* kAcknowledgedHelp =
    "Messages the destination answered, by outcome (stored, duplicate, conflict, rejected, "
    "blocked).";
constexpr const char* kFailures = "outbox_relay_session_failures_total";
constexpr const char* kFailuresHelp =
    "Sessions that failed and were retried, by cause (connect, ack_timeout, destination, "
    "protocol, database).";

}  // namespace

RelayMetrics::RelayMetrics(metrics::Registry& registry)
    : sent_messages(registry.counter("outbox_relay_sent_messages_total",
                                     "Messages sent to the destination (resends included).")),
      acknowledged_stored(
          registry.counter(kAcknowledged, kAcknowledgedHelp, {{"outcome", "stored"}})),
      acknowledged_duplicate(
          registry.counter(kAcknowledged, kAcknowledgedHelp, {{"outcome", "duplicate"}})),
      acknowledged_conflict(
          registry.counter(kAcknowledged, kAcknowledgedHelp, {{"outcome", "conflict"}})),
      acknowledged_rejected(
          registry.counter(kAcknowledged, kAcknowledgedHelp, {{"outcome", "rejected"}})),
      acknowledged_blocked(
          registry.counter(kAcknowledged, kAcknowledgedHelp, {{"outcome", "blocked"}})),
      undeliverable(registry.counter(
          "outbox_relay_undeliverable_total",
          "Messages made dead by the relay's own checks (over the destination's limits or "
          "malformed rows), never sent.")),
      failure_connect(registry.counter(kFailures, kFailuresHelp, {{"cause", "connect"}})),
      failure_ack_timeout(registry.counter(kFailures, kFailuresHelp, {{"cause", "ack_timeout"}})),
      failure_destination(registry.counter(kFailures, kFailuresHelp, {{"cause", "destination"}})),
      failure_protocol(registry.counter(kFailures, kFailuresHelp, {{"cause", "protocol"}})),
      failure_database(registry.counter(kFailures, kFailuresHelp, {{"cause", "database"}})),
      sessions_opened(registry.counter("outbox_relay_sessions_opened_total",
                                       "Sessions opened with the destination (reconnects).")),
      lease_held(registry.gauge("outbox_relay_lease_held",
                                "1 while this relay holds the database's relay lease.")),
      lease_epoch(registry.gauge("outbox_relay_lease_epoch",
                                 "Epoch of the lease this relay holds (0 without it).")),
      standby(registry.gauge("outbox_relay_standby",
                             "1 while another relay holds the lease and this one waits.")),
      session_up(registry.gauge("outbox_relay_session_up",
                                "1 while a session with the destination is open.")),
      batches_in_flight(registry.gauge("outbox_relay_batches_in_flight",
                                       "Batches sent and not yet acknowledged.")),
      last_error_time(registry.gauge("outbox_relay_last_error_time_seconds",
                                     "Unix time of the last session or database failure (0: none "
                                     "since start).")),
      send_to_ack_seconds(registry.histogram("outbox_relay_send_to_ack_seconds",
                                             "Time from sending a batch to its acknowledgement.",
                                             metrics::latency_buckets())),
      commit_to_ack_seconds(registry.histogram(
          "outbox_relay_commit_to_ack_seconds",
          "Time from a message's commit (its created_at) to its acknowledgement as stored or "
          "duplicate.",
          metrics::latency_buckets())) {}

BacklogProbe::BacklogProbe(metrics::Registry& registry, const std::filesystem::path& database,
                           std::chrono::milliseconds max_age)
    : store_(outbox::RelayStore::open(database,
                                      [] {
                                        outbox::RelayOptions options;
                                        options.read_only = true;
                                        return options;
                                      }())),
      max_age_(max_age) {
  registry.add_collector([this](metrics::Exposition& out) {
    auto reading = read();
    if (!reading.backlog) return;  // the error shows in /readyz and the relay's log
    const auto& backlog = *reading.backlog;
    out.family("outbox_relay_pending_messages",
               "Messages in the outbox not yet delivered or dead (scheduled retries included).",
               metrics::Type::gauge);
    out.sample("outbox_relay_pending_messages", {}, static_cast<double>(backlog.pending));
    out.family("outbox_relay_retrying_messages", "Pending messages waiting for a scheduled retry.",
               metrics::Type::gauge);
    out.sample("outbox_relay_retrying_messages", {}, static_cast<double>(backlog.retrying));
    out.family("outbox_relay_dead_messages",
               "Dead messages (kept until replayed or dropped; later messages of their key wait).",
               metrics::Type::gauge);
    out.sample("outbox_relay_dead_messages", {}, static_cast<double>(backlog.dead));
    out.family("outbox_relay_oldest_pending_age_seconds",
               "Age of the oldest pending message since its commit (0 when none is pending).",
               metrics::Type::gauge);
    out.sample("outbox_relay_oldest_pending_age_seconds", {},
               std::chrono::duration<double>(
                   backlog.oldest_pending_age.value_or(std::chrono::milliseconds(0)))
                   .count());
  });
}

BacklogProbe::~BacklogProbe() noexcept = default;

BacklogProbe::Reading BacklogProbe::read() {
  std::lock_guard lock(mutex_);
  auto now = std::chrono::steady_clock::now();
  if (read_at_ != std::chrono::steady_clock::time_point{} && now - read_at_ < max_age_)
    return last_;
  read_at_ = now;
  try {
    last_ = Reading{store_.backlog(), {}};
  } catch (const std::exception& error) {
    last_ =
        Reading{std::nullopt, "cannot read the backlog of " + store_.path() + ": " + error.what()};
  }
  return last_;
}

RelayReadiness relay_readiness(const RelayMetrics& metrics, const BacklogProbe::Reading& backlog,
                               std::chrono::milliseconds max_lag) {
  const bool holder = metrics.lease_held.value() > 0;
  if (!holder && metrics.standby.value() == 0) {
    return {false, "holds no relay lease and is no standby behind a live holder"};
  }
  if (holder && metrics.session_up.value() == 0) {
    return {false, "holds the lease but has no session with its destination"};
  }
  if (!backlog.backlog) return {false, backlog.error};
  auto age = backlog.backlog->oldest_pending_age.value_or(std::chrono::milliseconds(0));
  if (age > max_lag) {
    char text[160];
    std::snprintf(text, sizeof text, "the oldest pending message is %.1f s old (limit %.1f s)",
                  std::chrono::duration<double>(age).count(),
                  std::chrono::duration<double>(max_lag).count());
    return {false, text};
  }
  return {true, holder ? "delivering (holds the lease, session up)"
                       : "standby behind a live lease holder"};
}

}  // namespace relay
