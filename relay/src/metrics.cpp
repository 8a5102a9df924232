#include "relay/metrics.hpp"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <vector>

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

// The backlog gauges of one outbox, or of every outbox of a directory.
void write_backlog(metrics::Exposition& out, double pending, double retrying, double dead,
                   double oldest_pending_age_seconds) {
  out.family("outbox_relay_pending_messages",
             "Messages in the outbox not yet delivered or dead (scheduled retries included).",
             metrics::Type::gauge);
  out.sample("outbox_relay_pending_messages", {}, pending);
  out.family("outbox_relay_retrying_messages", "Pending messages waiting for a scheduled retry.",
             metrics::Type::gauge);
  out.sample("outbox_relay_retrying_messages", {}, retrying);
  out.family("outbox_relay_dead_messages",
             "Dead messages (kept until replayed or dropped; later messages of their key wait).",
             metrics::Type::gauge);
  out.sample("outbox_relay_dead_messages", {}, dead);
  out.family("outbox_relay_oldest_pending_age_seconds",
             "Age of the oldest pending message since its commit (0 when none is pending).",
             metrics::Type::gauge);
  out.sample("outbox_relay_oldest_pending_age_seconds", {}, oldest_pending_age_seconds);
}

double seconds_since(const std::optional<std::chrono::steady_clock::time_point>& since,
                     std::chrono::steady_clock::time_point now) {
  if (!since) return 0;
  return std::max(0.0, std::chrono::duration<double>(now - *since).count());
}

// One gauge or counter family with a sample per listed database.
template <class Value>
void write_per_database(metrics::Exposition& out, const char* name, const char* help,
                        metrics::Type type, const std::vector<DatabaseCounters>& databases,
                        Value value, const metrics::Labels& more = {}) {
  out.family(name, help, type);
  for (const auto& database : databases) {
    metrics::Labels labels = {{"database", database.name}};
    labels.insert(labels.end(), more.begin(), more.end());
    out.sample(name, labels, value(database));
  }
}

}  // namespace

RelayMetrics::RelayMetrics(metrics::Registry& registry) : RelayMetrics(registry, registry) {}

RelayMetrics::RelayMetrics(metrics::Registry& registry, metrics::Registry& relay_state)
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
      lease_held(relay_state.gauge("outbox_relay_lease_held",
                                   "1 while this relay holds the database's relay lease.")),
      lease_epoch(relay_state.gauge("outbox_relay_lease_epoch",
                                    "Epoch of the lease this relay holds (0 without it).")),
      standby(relay_state.gauge("outbox_relay_standby",
                                "1 while another relay holds the lease and this one waits.")),
      session_up(relay_state.gauge("outbox_relay_session_up",
                                   "1 while a session with the destination is open.")),
      batches_in_flight(relay_state.gauge("outbox_relay_batches_in_flight",
                                          "Batches sent and not yet acknowledged.")),
      window_bytes(relay_state.gauge(
          "outbox_relay_window_bytes",
          "Bytes the relay may have sent and not had acknowledged: the full window (batch bytes x "
          "in-flight batches) on a link that has not broken, halved when a connection breaks with "
          "batches unacknowledged, growing back as acknowledgements arrive.")),
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
    write_backlog(out, static_cast<double>(backlog.pending), static_cast<double>(backlog.retrying),
                  static_cast<double>(backlog.dead),
                  std::chrono::duration<double>(
                      backlog.oldest_pending_age.value_or(std::chrono::milliseconds(0)))
                      .count());
  });
}

DirectoryMetrics::DirectoryMetrics(metrics::Registry& registry)
    : registry_(registry), relay_metrics_(std::make_shared<RelayMetrics>(registry, relay_state_)) {}

void DirectoryMetrics::collect(const MultiRelay& relay) {
  registry_.add_collector([&relay](metrics::Exposition& out) {
    const auto counters = relay.counters();
    const auto now = std::chrono::steady_clock::now();
    write_backlog(out, static_cast<double>(counters.pending),
                  static_cast<double>(counters.retrying),
                  static_cast<double>(counters.dead_messages),
                  seconds_since(counters.oldest_pending_since, now));
    auto gauge = [&out](const char* name, const char* help, double value) {
      out.family(name, help, metrics::Type::gauge);
      out.sample(name, {}, value);
    };
    gauge("outbox_relay_databases", "Outbox databases known in the directory.",
          static_cast<double>(counters.databases));
    gauge("outbox_relay_databases_open", "Databases open now (three file descriptors each).",
          static_cast<double>(counters.open));
    gauge("outbox_relay_databases_leased", "Databases whose relay lease this process holds.",
          static_cast<double>(counters.active));
    gauge("outbox_relay_sessions_up", "Databases with a session with the destination open.",
          static_cast<double>(counters.sessions_up));
    gauge("outbox_relay_databases_unread",
          "Databases whose backlog has not been read (not yet, or unreadable): not in the "
          "backlog totals.",
          static_cast<double>(counters.unread));
    gauge("outbox_relay_databases_unlisted",
          "Databases without outbox_relay_database_* series of their own (beyond the largest "
          "backlogs listed).",
          static_cast<double>(counters.databases - counters.largest.size()));
    const auto& listed = counters.largest;
    using Database = DatabaseCounters;
    write_per_database(out, "outbox_relay_database_pending_messages",
                       "Pending messages of one of the databases with the largest backlogs.",
                       metrics::Type::gauge, listed,
                       [](const Database& d) { return static_cast<double>(d.pending); });
    write_per_database(
        out, "outbox_relay_database_oldest_pending_age_seconds",
        "Age of the oldest pending message of one of the databases with the largest backlogs.",
        metrics::Type::gauge, listed,
        [now](const Database& d) { return seconds_since(d.oldest_pending_since, now); });
    write_per_database(out, "outbox_relay_database_dead_messages",
                       "Dead messages of one of the databases with the largest backlogs.",
                       metrics::Type::gauge, listed,
                       [](const Database& d) { return static_cast<double>(d.dead); });
    write_per_database(out, "outbox_relay_database_lease_held",
                       "1 while this process holds the database's relay lease.",
                       metrics::Type::gauge, listed,
                       [](const Database& d) { return d.active ? 1.0 : 0.0; });
    write_per_database(out, "outbox_relay_database_session_up",
                       "1 while the database's session with the destination is open.",
                       metrics::Type::gauge, listed,
                       [](const Database& d) { return d.session_up ? 1.0 : 0.0; });
    write_per_database(out, "outbox_relay_database_sent_messages_total",
                       "Messages of the database sent to the destination (resends included).",
                       metrics::Type::counter, listed, [](const Database& d) {
                         return static_cast<double>(d.counters.sent_messages);
                       });
    const char* acknowledged = "outbox_relay_database_acknowledged_total";
    out.family(acknowledged,
               "Messages of the database the destination stored or found duplicate, by outcome.",
               metrics::Type::counter);
    for (const auto& database : listed) {
      out.sample(acknowledged, {{"database", database.name}, {"outcome", "stored"}},
                 static_cast<double>(database.counters.stored));
      out.sample(acknowledged, {{"database", database.name}, {"outcome", "duplicate"}},
                 static_cast<double>(database.counters.duplicates));
    }
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

RelayReadiness directory_readiness(const MultiRelayCounters& counters,
                                   std::chrono::milliseconds max_lag) {
  auto age = seconds_since(counters.oldest_pending_since, std::chrono::steady_clock::now());
  const auto limit = std::chrono::duration<double>(max_lag).count();
  char text[512];
  if (age > limit) {
    std::snprintf(text, sizeof text,
                  "the oldest pending message (database %s) is %.1f s old (limit %.1f s)",
                  printable_field(counters.oldest_pending_database).c_str(), age, limit);
    return {false, text};
  }
  if (counters.active > 0 && counters.sessions_up == 0) {
    std::snprintf(text, sizeof text,
                  "holds the lease of %llu databases but none has a session with its destination",
                  static_cast<unsigned long long>(counters.active));
    return {false, text};
  }
  std::snprintf(text, sizeof text,
                "delivering: %llu databases, %llu leased, %llu with a session, oldest pending "
                "message %.1f s old",
                static_cast<unsigned long long>(counters.databases),
                static_cast<unsigned long long>(counters.active),
                static_cast<unsigned long long>(counters.sessions_up), age);
  return {true, text};
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
