// outbox-relay: forwards one outbox database (or every outbox database of a
// directory) to outbox-broker or to a NATS JetStream stream, and the operator commands that inspect
// and repair that database. Parses flags (and a config file), sets up logging and signals, and
// hands over to the relay and outbox libraries.
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "broker/curve_keys.hpp"
#include "cli/args.hpp"
#include "cli/config.hpp"
#include "cli/json.hpp"
#include "cli/metrics_server.hpp"
#include "cli/process.hpp"
#include "outbox/relay_store.hpp"
#include "relay/broker_sink.hpp"
#include "relay/filesystem.hpp"
#include "relay/metrics.hpp"
#include "relay/multi_relay.hpp"
#include "relay/relay.hpp"
#if OUTBOX_RELAY_WITH_JETSTREAM
#include "relay/jetstream_sink.hpp"
#endif

namespace {

using namespace std::chrono_literals;

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

relay::Relay* running_relay = nullptr;
relay::MultiRelay* running_multi_relay = nullptr;

void stop_running_relay() noexcept {
  if (running_relay != nullptr) running_relay->request_stop();
  if (running_multi_relay != nullptr) running_multi_relay->request_stop();
}

std::string default_holder() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "localhost");
  return std::string(host) + ":" + std::to_string(::getpid());
}

std::string iso_time(outbox::TimePoint time) {
  auto seconds = std::chrono::floor<std::chrono::seconds>(time);
  auto millis = (time - seconds).count();
  std::time_t t = std::chrono::system_clock::to_time_t(seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(millis));
  return buffer;
}

outbox::RelayStore open_store(const std::string& db, bool read_only, bool sync_full = false,
                              outbox::DeadPolicy on_dead = outbox::DeadPolicy::block,
                              std::shared_ptr<spdlog::logger> logger = nullptr) {
  outbox::RelayOptions options;
  options.read_only = read_only;
  options.synchronous_full = sync_full;
  options.on_dead = on_dead;
  options.logger = std::move(logger);
  return outbox::RelayStore::open(db, options);
}

struct RunSettings {
  std::string db;
  std::string db_dir;
  std::string glob = "*.db";
  std::size_t connections = 2;
  std::size_t max_open_databases = 256;
  std::size_t opener_threads = 4;
  std::chrono::milliseconds idle_release = 30s;
  std::chrono::milliseconds rescan_interval = 30s;
  std::chrono::milliseconds idle_poll = 1s;
  std::size_t metrics_max_databases = 20;
  // Whether --batch-size / --in-flight were given (flag or config file):
  // --db-dir has smaller defaults of its own.
  bool batch_size_given = false;
  bool in_flight_given = false;
  std::string sink = "broker";
  std::string broker = "tcp://127.0.0.1:7750";
  std::string nats_url = "nats://127.0.0.1:4222";
  std::string stream;
  std::string subject_prefix = "outbox";
  bool allow_short_dedup_window = false;
  std::size_t batch_size = 1000;
  std::uint64_t batch_bytes = std::uint64_t{1} << 20;
  std::size_t in_flight = 8;
  std::chrono::milliseconds ack_timeout = 10s;
  std::chrono::milliseconds connect_timeout = 2s;
  std::chrono::milliseconds backoff_initial = 100ms;
  std::chrono::milliseconds backoff_max = 30s;
  std::chrono::milliseconds lease = 10s;
  std::chrono::milliseconds retention = 24h;  // 0: never
  std::string on_dead = "block";
  std::string holder = default_holder();
  std::string sync = "normal";
  std::chrono::milliseconds summary_interval = 5s;
  std::chrono::milliseconds cleanup_interval = 10s;
  std::chrono::milliseconds drain_timeout = 5s;
  std::string curve_server_public_key_file;
  std::string curve_secret_key_file;
  std::string log_level = "info";
  std::string log_format = "text";
  cli::MetricsSettings metrics;
  std::chrono::milliseconds ready_max_lag = 60s;
};

// The broker sink's options; empty (after a line on stderr) when the CURVE
// key files cannot be read.
std::optional<relay::BrokerSinkOptions> broker_sink_options(const RunSettings& settings) {
  relay::BrokerSinkOptions sink_options;
  sink_options.endpoint = settings.broker;
  sink_options.producer = settings.holder;
  if (!settings.curve_server_public_key_file.empty() || !settings.curve_secret_key_file.empty()) {
    if (settings.curve_server_public_key_file.empty() || settings.curve_secret_key_file.empty()) {
      throw UsageError(
          "CURVE needs both --curve-server-public-key-file and --curve-secret-key-file");
    }
    try {
      sink_options.curve =
          relay::BrokerCurveKeys{broker::read_curve_key_file(settings.curve_server_public_key_file),
                                 broker::read_curve_key_file(settings.curve_secret_key_file)};
    } catch (const std::runtime_error& error) {
      std::fprintf(stderr, "outbox-relay: %s\n", error.what());
      return std::nullopt;
    }
  }
  return sink_options;
}

constexpr std::size_t kDirectoryBatchSize = 256;
constexpr std::size_t kDirectoryInFlight = 2;

// run --db-dir: every outbox database of a directory from one process.
int run_directory(const RunSettings& settings, relay::RelayConfig config,
                  const std::shared_ptr<spdlog::logger>& logger) {
  if (settings.sink != "broker") {
    throw UsageError(
        "--db-dir forwards to outbox-broker only (--sink broker); --sink jetstream forwards one "
        "database (--db)");
  }
  relay::MultiRelayConfig multi;
  multi.directory = settings.db_dir;
  multi.glob = settings.glob;
  multi.connections = settings.connections;
  multi.max_open_databases = settings.max_open_databases;
  multi.opener_threads = settings.opener_threads;
  multi.idle_release = settings.idle_release;
  multi.rescan_interval = settings.rescan_interval;
  // The registry outlives everything that reports into it or serves it.
  metrics::Registry registry;
  std::optional<relay::DirectoryMetrics> directory_metrics;
  if (!settings.metrics.bind.empty()) {
    directory_metrics.emplace(registry);
    config.metrics = directory_metrics->relay_metrics();
    multi.backlog_interval = 1s;
    multi.listed_databases = settings.metrics_max_databases;
  }
  config.idle_wait = settings.idle_poll;
  // Small windows per database: what one database has queued on a shared
  // connection is what another database's next batch or HELLO waits behind.
  if (!settings.batch_size_given) config.batch_size = kDirectoryBatchSize;
  if (!settings.in_flight_given) config.max_in_flight_batches = kDirectoryInFlight;
  multi.relay = std::move(config);
  multi.store.synchronous_full = settings.sync == "full";
  multi.store.on_dead =
      settings.on_dead == "skip" ? outbox::DeadPolicy::skip : outbox::DeadPolicy::block;
  auto sink_options = broker_sink_options(settings);
  if (!sink_options) return cli::exit_endpoint;
  multi.broker = std::move(*sink_options);
  std::unique_ptr<relay::MultiRelay> relay;
  try {
    relay = std::make_unique<relay::MultiRelay>(std::move(multi));
  } catch (const std::runtime_error& error) {
    std::fprintf(stderr, "outbox-relay: --broker %s: %s\n", settings.broker.c_str(), error.what());
    return cli::exit_endpoint;
  }
  std::unique_ptr<cli::MetricsServer> metrics_server;
  if (directory_metrics) {
    directory_metrics->collect(*relay);
    try {
      metrics_server = cli::start_metrics_server(
          settings.metrics, registry,
          [multi_relay = relay.get(), lag = settings.ready_max_lag] {
            auto state = relay::directory_readiness(multi_relay->counters(), lag);
            return cli::Readiness{state.ready, std::move(state.reason)};
          },
          *logger);
    } catch (const std::exception& error) {
      std::fprintf(stderr, "outbox-relay: %s\n", error.what());
      return cli::exit_endpoint;
    }
  }
  running_multi_relay = relay.get();
  if (cli::stop_requested()) relay->request_stop();  // SIGTERM while starting up
  try {
    relay->run();
  } catch (const relay::SinkRefusal& refusal) {
    running_multi_relay = nullptr;
    std::fprintf(stderr, "outbox-relay: %s\n", refusal.what());
    return cli::exit_refused;
  } catch (const std::runtime_error& error) {
    running_multi_relay = nullptr;
    std::fprintf(stderr, "outbox-relay: %s\n", error.what());
    return cli::exit_storage;
  }
  running_multi_relay = nullptr;
  auto counters = relay->counters();
  logger->info("outbox-relay: stopped; {} databases, stored {}, duplicates {}, dead {}",
               counters.databases, counters.stored, counters.duplicates, counters.dead);
  return cli::exit_ok;
}

int run_relay(const RunSettings& settings) {
  cli::install_stop_handlers(&stop_running_relay);  // also when flags came before `run`
  relay::RelayConfig config;
  config.holder = settings.holder;
  config.batch_size = settings.batch_size;
  config.batch_bytes = static_cast<std::size_t>(settings.batch_bytes);
  config.max_in_flight_batches = settings.in_flight;
  config.ack_timeout = settings.ack_timeout;
  config.connect_timeout = settings.connect_timeout;
  config.backoff.initial = settings.backoff_initial;
  config.backoff.max = settings.backoff_max;
  config.lease_ttl = settings.lease;
  config.retention = settings.retention;
  config.summary_interval = settings.summary_interval;
  config.retention_interval = settings.cleanup_interval;
  config.drain_timeout = settings.drain_timeout;
  if (config.backoff.max < config.backoff.initial) {
    throw UsageError("--backoff-max must not be below --backoff-initial");
  }
  if (settings.batch_size == 0 || settings.in_flight == 0) {
    throw UsageError("--batch-size and --in-flight must be at least 1");
  }
  std::shared_ptr<spdlog::logger> logger;
  try {
    logger = cli::make_stderr_logger("outbox-relay", settings.log_level, settings.log_format);
  } catch (const std::invalid_argument& error) {
    throw UsageError(std::string("--log-level: ") + error.what());
  }
  config.logger = logger;
  if (settings.db.empty() == settings.db_dir.empty()) {
    throw UsageError("run needs --db (one database) or --db-dir (a directory of them)");
  }
  if (!settings.db_dir.empty()) return run_directory(settings, config, logger);

  if (settings.sink == "jetstream") {
#if !OUTBOX_RELAY_WITH_JETSTREAM
    throw UsageError(
        "--sink jetstream: this outbox-relay was built without the JetStream sink "
        "(libnats-dev was not found, or OUTBOX_WITH_NATS=OFF)");
#endif
    if (settings.stream.empty()) {
      throw UsageError("--sink jetstream needs --stream (the stream the messages must land in)");
    }
  }
  if (auto filesystem = relay::database_filesystem(settings.db)) {
    if (filesystem->kind == relay::FilesystemKind::network) {
      std::fprintf(stderr,
                   "outbox-relay: database '%s' is on a network filesystem (%s); SQLite's WAL "
                   "and the relay lease need every relay and producer on the host whose local "
                   "disk holds the file (docs/operations.md)\n",
                   settings.db.c_str(), filesystem->name.c_str());
      return cli::exit_storage;
    }
    if (filesystem->kind == relay::FilesystemKind::unknown) {
      logger->warn(
          "database {} is on a filesystem of type {}; if it is shared over a network or with a "
          "VM, run every relay and producer on one host only (docs/operations.md)",
          settings.db, filesystem->name);
    }
  }
  auto on_dead = settings.on_dead == "skip" ? outbox::DeadPolicy::skip : outbox::DeadPolicy::block;
  auto store = open_store(settings.db, false, settings.sync == "full", on_dead, logger);
  std::unique_ptr<relay::Sink> sink;
  if (settings.sink == "jetstream") {
#if OUTBOX_RELAY_WITH_JETSTREAM
    relay::JetStreamSinkOptions options;
    options.url = settings.nats_url;
    options.stream = settings.stream;
    options.subject_prefix = settings.subject_prefix;
    options.client_name = "outbox-relay " + settings.holder;
    options.max_pending = config.batch_size * config.max_in_flight_batches;
    options.retry_horizon = relay::retry_horizon(config);
    options.allow_short_dedup_window = settings.allow_short_dedup_window;
    options.logger = logger;
    try {
      sink = std::make_unique<relay::JetStreamSink>(options);
    } catch (const std::invalid_argument& error) {
      throw UsageError(error.what());
    }
#endif
  } else {
    auto sink_options = broker_sink_options(settings);
    if (!sink_options) return cli::exit_endpoint;
    try {
      sink = std::make_unique<relay::BrokerSink>(*sink_options);
    } catch (const std::runtime_error& error) {
      std::fprintf(stderr, "outbox-relay: --broker %s: %s\n", settings.broker.c_str(),
                   error.what());
      return cli::exit_endpoint;
    }
  }
  // The registry outlives everything that reports into it or serves it.
  metrics::Registry registry;
  std::unique_ptr<relay::BacklogProbe> backlog_probe;
  if (!settings.metrics.bind.empty()) {
    config.metrics = std::make_shared<relay::RelayMetrics>(registry);
    backlog_probe = std::make_unique<relay::BacklogProbe>(registry, settings.db);
  }
  relay::Relay relay(store, *sink, config);
  std::unique_ptr<cli::MetricsServer> metrics_server;
  try {
    metrics_server = cli::start_metrics_server(
        settings.metrics, registry,
        [metrics = config.metrics.get(), probe = backlog_probe.get(),
         lag = settings.ready_max_lag] {
          auto state = relay::relay_readiness(*metrics, probe->read(), lag);
          return cli::Readiness{state.ready, std::move(state.reason)};
        },
        *logger);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "outbox-relay: %s\n", error.what());
    return cli::exit_endpoint;
  }
  running_relay = &relay;
  if (cli::stop_requested()) relay.request_stop();  // SIGTERM while starting up
  logger->info(
      "outbox-relay: forwarding {} to {} as '{}' (batch {} messages / {} bytes, {} in flight, on "
      "dead: {})",
      settings.db, sink->describe(), relay.lease_holder(), config.batch_size, config.batch_bytes,
      config.max_in_flight_batches, settings.on_dead);
  try {
    relay.run();
  } catch (const relay::SinkRefusal& refusal) {
    running_relay = nullptr;
    std::fprintf(stderr, "outbox-relay: %s\n", refusal.what());
    return refusal.reason() == relay::SinkRefusal::Reason::not_found ? cli::exit_not_found
                                                                     : cli::exit_refused;
  }
  running_relay = nullptr;
  auto counters = relay.counters();
  logger->info("outbox-relay: stopped; sent {}, stored {}, duplicates {}, dead {}",
               counters.sent_messages, counters.stored, counters.duplicates, counters.dead);
  return cli::exit_ok;
}

// A session counts as up only while the relay that reported it still holds a
// valid lease: a relay killed with its session open leaves session_up behind.
bool session_up(const std::optional<outbox::RelayStatus>& status,
                const std::optional<outbox::LeaseInfo>& lease) {
  return status && status->session_up && lease && !lease->expired &&
         lease->holder == status->holder;
}

cli::Json json_time(const std::optional<outbox::TimePoint>& time) {
  return time ? cli::Json(iso_time(*time)) : cli::Json(nullptr);
}

// The lease as JSON: holder, epoch, expiry; null when never claimed.
cli::Json lease_json(const std::optional<outbox::LeaseInfo>& lease) {
  if (!lease) return nullptr;
  return {{"holder", cli::json_text(lease->holder)},
          {"epoch", lease->epoch},
          {"expires_at", iso_time(lease->expires_at)},
          {"expired", lease->expired}};
}

// status --db-dir: one line (or JSON entry) per database with the cheap
// figures (no count of the delivered rows kept), then the totals. Databases
// that share an origin id (one is a copy of another) are named: a relay
// forwards only one of them.
int show_directory_status(const std::string& directory, const std::string& glob, bool json) {
  std::vector<std::string> names;
  try {
    names = relay::database_files(directory, glob);
  } catch (const std::runtime_error& error) {
    std::fprintf(stderr, "outbox-relay: --db-dir: %s\n", error.what());
    return cli::exit_storage;
  }
  struct Entry {
    std::string name;
    outbox::Backlog backlog;
    std::optional<outbox::LeaseInfo> lease;
    std::string origin;
    std::optional<std::string> error;
  };
  std::vector<Entry> read;
  std::map<std::string, std::vector<std::string>> by_origin;
  for (const auto& name : names) {
    auto& entry = read.emplace_back(Entry{name, {}, {}, {}, {}});
    try {
      auto store = open_store((std::filesystem::path(directory) / name).string(), true);
      entry.backlog = store.backlog();
      entry.lease = store.lease_info();
      entry.origin = store.origin_id();
      if (!entry.origin.empty()) by_origin[entry.origin].push_back(name);
    } catch (const outbox::Error& error) {
      entry.error = error.what();
    }
  }
  // The other databases of the same origin id.
  auto copies = [&](const Entry& entry) {
    std::vector<std::string> others;
    if (entry.origin.empty()) return others;
    for (const auto& name : by_origin.at(entry.origin)) {
      if (name != entry.name) others.push_back(name);
    }
    return others;
  };
  std::int64_t pending = 0, dead = 0, oldest = 0, active = 0, unreadable = 0, shared = 0;
  std::ostringstream entries;
  std::ostringstream warnings;
  cli::Json databases = cli::Json::array();
  for (const auto& entry : read) {
    const auto& name = entry.name;
    if (entry.error) {
      ++unreadable;
      if (json) {
        databases.push_back(
            {{"db", cli::json_text(name)}, {"error", cli::json_text(*entry.error)}});
      } else {
        entries << name << ": " << *entry.error << "\n";
      }
      continue;
    }
    const auto& backlog = entry.backlog;
    const auto& lease = entry.lease;
    auto age = backlog.oldest_pending_age ? backlog.oldest_pending_age->count() : 0;
    pending += backlog.pending;
    dead += backlog.dead;
    oldest = std::max<std::int64_t>(oldest, age);
    if (lease && !lease->expired) ++active;
    auto others = copies(entry);
    if (!others.empty()) ++shared;
    if (json) {
      cli::Json same = cli::Json::array();
      for (const auto& other : others) same.push_back(cli::json_text(other));
      databases.push_back({{"db", cli::json_text(name)},
                           {"pending", backlog.pending},
                           {"retrying", backlog.retrying},
                           {"dead", backlog.dead},
                           {"oldest_pending_age_ms", age},
                           {"lease", lease_json(lease)},
                           {"origin_id", cli::json_text(entry.origin)},
                           {"same_origin_as", std::move(same)},
                           {"error", nullptr}});
    } else {
      char line[512];
      std::snprintf(line, sizeof line, "%-32s %9lld %12s %6lld  %s\n", name.c_str(),
                    static_cast<long long>(backlog.pending),
                    backlog.oldest_pending_age ? (std::to_string(age) + " ms").c_str() : "-",
                    static_cast<long long>(backlog.dead),
                    !lease           ? "none"
                    : lease->expired ? ("expired (" + lease->holder + ")").c_str()
                                     : lease->holder.c_str());
      entries << line;
      if (!others.empty() && others.front() > name) {
        warnings << "same origin id '" << entry.origin << "': " << name;
        for (const auto& other : others) warnings << ", " << other;
        warnings << " (copies of one database): a relay forwards only one of them; give each "
                    "copy a new origin id (docs/operations.md)\n";
      }
    }
  }
  if (json) {
    const cli::Json totals = {{"databases", names.size()},
                              {"unreadable", unreadable},
                              {"pending", pending},
                              {"dead", dead},
                              {"oldest_pending_age_ms", oldest},
                              {"leases_held", active},
                              {"same_origin", shared}};
    const cli::Json status = {{"db_dir", cli::json_text(directory)},
                              {"databases", std::move(databases)},
                              {"totals", totals}};
    std::cout << status.dump() << "\n";
    return cli::exit_ok;
  }
  char header[256];
  std::snprintf(header, sizeof header, "%-32s %9s %12s %6s  %s\n", "database", "pending", "oldest",
                "dead", "lease");
  std::cout << header << entries.str() << warnings.str() << "total: " << names.size()
            << " databases (" << unreadable << " unreadable, " << shared
            << " sharing an origin id), pending " << pending << ", oldest " << oldest
            << " ms, dead " << dead << ", leases held " << active << "\n";
  return cli::exit_ok;
}

int show_status(const std::string& db, bool json) {
  auto store = open_store(db, true);
  auto stats = store.stats();
  auto relay_status = store.read_status();
  const bool up = session_up(relay_status, stats.lease);
  auto age = stats.oldest_pending_age ? stats.oldest_pending_age->count() : 0;
  if (json) {
    cli::Json relay = nullptr;
    if (relay_status) {
      relay = {{"holder", cli::json_text(relay_status->holder)},
               {"destination", cli::json_text(relay_status->destination)},
               {"session_up", up},
               {"session_changed_at", json_time(relay_status->session_changed_at)},
               {"last_error", relay_status->last_error.empty()
                                  ? cli::Json(nullptr)
                                  : cli::json_text(relay_status->last_error)},
               {"last_error_at", json_time(relay_status->last_error_at)},
               {"last_progress_at", json_time(relay_status->last_progress_at)},
               {"updated_at", json_time(relay_status->updated_at)}};
    }
    const cli::Json status = {{"db", cli::json_text(db)},
                              {"pending", stats.pending},
                              {"retrying", stats.retrying},
                              {"delivered", stats.delivered},
                              {"delivered_total", stats.delivered_total},
                              {"dead", stats.dead},
                              {"last_seq", stats.last_seq},
                              {"settled_through_seq", stats.settled_through_seq},
                              {"oldest_pending_age_ms", age},
                              {"lease", lease_json(stats.lease)},
                              {"session_up", up},
                              {"relay", std::move(relay)}};
    std::cout << status.dump() << "\n";
    return cli::exit_ok;
  }
  std::cout << "outbox:            " << db << "\n"
            << "pending:           " << stats.pending << " (" << stats.retrying
            << " waiting for a retry)\n"
            << "oldest pending:    "
            << (stats.oldest_pending_age ? std::to_string(age) + " ms" : "-") << "\n"
            << "delivered:         " << stats.delivered << " kept, " << stats.delivered_total
            << " in all\n"
            << "dead:              " << stats.dead << "\n"
            << "last seq:          " << stats.last_seq << " (settled through "
            << stats.settled_through_seq << ")\n";
  if (stats.lease) {
    std::cout << "lease:             " << stats.lease->holder << " (epoch " << stats.lease->epoch
              << ", " << (stats.lease->expired ? "expired " : "expires ")
              << iso_time(stats.lease->expires_at) << ")\n";
  } else {
    std::cout << "lease:             none (no relay has run yet)\n";
  }
  if (relay_status) {
    std::cout << "session:           " << (up ? "up" : "down") << " with "
              << relay_status->destination << " (since "
              << iso_time(relay_status->session_changed_at) << ")\n"
              << "last error:        "
              << (relay_status->last_error.empty()
                      ? std::string("-")
                      : relay_status->last_error + " (at " +
                            iso_time(relay_status->last_error_at.value_or(outbox::TimePoint{})) +
                            ")")
              << "\n"
              << "last progress:     "
              << (relay_status->last_progress_at ? iso_time(*relay_status->last_progress_at) : "-")
              << "\n";
  } else {
    std::cout << "session:           - (no relay has reported)\n";
  }
  return cli::exit_ok;
}

int list_dead(const std::string& db, bool json, std::size_t limit) {
  auto store = open_store(db, true);
  auto dead = store.list_dead(limit);
  for (const auto& message : dead) {
    if (json) {
      const cli::Json line = {
          {"seq", message.seq},
          {"msg_id", cli::json_value(message.msg_id)},
          {"topic", cli::json_value(message.topic)},
          {"key",
           message.partition_key ? cli::json_value(*message.partition_key) : cli::Json(nullptr)},
          {"reason", cli::json_text(message.reason)},
          {"attempts", message.attempts},
          {"created_at", iso_time(message.created_at)},
          {"died_at", iso_time(message.died_at)}};
      std::cout << line.dump() << "\n";
    } else {
      std::cout << "seq " << message.seq << "  msg_id " << relay::printable_field(message.msg_id)
                << "  topic " << relay::printable_field(message.topic) << "  key "
                << (message.partition_key ? relay::printable_field(*message.partition_key) : "-")
                << "  died " << iso_time(message.died_at) << "  " << message.reason << "\n";
    }
  }
  if (!json && dead.empty()) std::cout << "no dead messages\n";
  return cli::exit_ok;
}

int replay(const std::string& db, const std::string& msg_id, bool all) {
  if (all == !msg_id.empty()) throw UsageError("replay needs exactly one of --msg-id or --all");
  auto store = open_store(db, false);
  if (all) {
    std::cout << "replayed " << store.replay_all_dead() << " dead messages\n";
    return cli::exit_ok;
  }
  if (!store.replay_dead(msg_id)) {
    std::fprintf(stderr, "outbox-relay: no dead message with msg_id '%s'\n", msg_id.c_str());
    return cli::exit_not_found;
  }
  std::cout << "replayed " << msg_id << "\n";
  return cli::exit_ok;
}

int drop(const std::string& db, const std::string& msg_id) {
  auto store = open_store(db, false);
  if (!store.drop_dead(msg_id)) {
    std::fprintf(stderr, "outbox-relay: no dead message with msg_id '%s'\n", msg_id.c_str());
    return cli::exit_not_found;
  }
  std::cout << "dropped " << msg_id << "\n";
  return cli::exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
#if defined(__GLIBC__)
  // Each batch's PUBLISH (up to --batch-bytes, 1 MiB by default) is copied
  // into a ZeroMQ message that is freed once sent. With glibc's defaults these
  // buffers went back to the system and came in again on fresh pages, faulted
  // in and zeroed per batch (a tenth of the relay's time in a drain). Buffers
  // under 4 MiB come from the heap, and up to 16 MiB of free heap is kept.
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
#endif
  // First of all: a SIGTERM while the relay starts (opening the database,
  // connecting to NATS) must end in a clean stop, not kill it half-started.
  cli::install_stop_handlers(&stop_running_relay);
  CLI::App app{
      "outbox-relay: forwards an outbox database to outbox-broker or to a NATS "
      "JetStream stream, in commit order, until every message is acknowledged."};
  app.require_subcommand(1);
  app.fallthrough();  // --config may follow the subcommand
  app.set_config("--config", "",
                 "Read settings from a TOML file: a [run] section with the long flag "
                 "names as keys (batch-size = 500, lease = \"10s\"); flags given on the command "
                 "line win");
  cli::use_strict_config(app);
  // A flag given twice: the last one wins, as with most Unix tools.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.footer(
      "Exit codes: 0 ok, 1 unexpected error, 2 bad flag/config/value, 3 database problem "
      "(missing, not an outbox, newer schema, on a network filesystem), 4 unusable broker "
      "endpoint or CURVE keys, 6 the JetStream stream's duplicate window is shorter than the "
      "relay's retry horizon, "
      "7 no such dead message, or (run --sink jetstream) no such stream or no stream subject "
      "for a message.");

  RunSettings run;
  auto* run_cmd = app.add_subcommand("run",
                                     "Forward pending messages to the broker until stopped "
                                     "(SIGINT/SIGTERM: finish in-flight work, exit 0)");
  run_cmd->add_option("--db", run.db, "Outbox database (the producer's SQLite file)");
  run_cmd->add_option("--db-dir", run.db_dir,
                      "Forward every outbox database in this directory (not its subdirectories) "
                      "from this one process, over a few broker connections; databases that "
                      "appear or go while it runs are picked up or dropped (--sink broker)");
  run_cmd->add_option("--glob", run.glob, "With --db-dir: which file names are databases")
      ->capture_default_str();
  run_cmd
      ->add_option("--connections", run.connections,
                   "With --db-dir: broker connections carrying the databases' sessions")
      ->capture_default_str()
      ->check(cli::count_check(1, 64));
  run_cmd
      ->add_option("--max-open-databases", run.max_open_databases,
                   "With --db-dir: databases open at once (three file descriptors each); the "
                   "least recently busy idle one is closed beyond it")
      ->capture_default_str()
      ->check(cli::count_check(1, 100000));
  run_cmd
      ->add_option("--opener-threads", run.opener_threads,
                   "With --db-dir: threads that open databases (schema check, backlog, lease) "
                   "while the others are forwarded; 0: the forwarding loop opens each itself")
      ->capture_default_str()
      ->check(cli::count_check(0, 64));
  cli::add_duration_option(run_cmd, "--idle-release", run.idle_release,
                           "With --db-dir: a database idle this long gives its lease up and is "
                           "closed until its next commit",
                           cli::at_least(1s));
  cli::add_duration_option(run_cmd, "--rescan-interval", run.rescan_interval,
                           "With --db-dir: how often to list the directory again, besides "
                           "watching it (inotify)",
                           cli::at_least(100ms));
  cli::add_duration_option(run_cmd, "--idle-poll", run.idle_poll,
                           "With --db-dir: shortest time between two fallback looks for commits "
                           "(PRAGMA data_version) at one open idle database; commits wake it at "
                           "once (inotify), and the looks are paced at 100 a second in all",
                           cli::at_least(10ms));
  run_cmd
      ->add_option("--metrics-max-databases", run.metrics_max_databases,
                   "With --db-dir and --metrics-bind: how many databases, those with the "
                   "largest backlogs, get outbox_relay_database_* series of their own (the "
                   "totals cover every database)")
      ->capture_default_str()
      ->check(cli::count_check(0, 10000));
  run_cmd
      ->add_option("--sink", run.sink,
                   "Where messages go: broker (outbox-broker, --broker) or jetstream (a NATS "
                   "JetStream stream, --nats-url and --stream)")
      ->capture_default_str()
      ->check(CLI::IsMember({"broker", "jetstream"}));
  run_cmd->add_option("--broker", run.broker, "Broker endpoint (--sink broker)")
      ->capture_default_str()
      ->check(cli::connect_endpoint_check());
  run_cmd
      ->add_option("--nats-url", run.nats_url,
                   "NATS server URL, or a comma-separated list of a cluster's nodes (--sink "
                   "jetstream)")
      ->capture_default_str();
  run_cmd->add_option("--stream", run.stream,
                      "JetStream stream the messages must land in (required with --sink "
                      "jetstream); the relay refuses to start when it does not exist");
  run_cmd
      ->add_option("--subject-prefix", run.subject_prefix,
                   "Subjects are <prefix>.<topic>.<key>, topic and key escaped as one token "
                   "each (%XX), '_' for no key; an empty prefix leaves it out "
                   "(--sink jetstream)")
      ->capture_default_str();
  run_cmd->add_flag("--allow-short-dedup-window", run.allow_short_dedup_window,
                    "Run even when the stream's duplicate window is shorter than the relay's "
                    "retry horizon (ack-timeout + connect-timeout + backoff-max + lease). Risk: "
                    "a message whose PubAck was lost and that is resent after the window has "
                    "passed is stored twice, so consumers see it twice (--sink jetstream)");
  auto* batch_size_option = run_cmd
                                ->add_option("--batch-size", run.batch_size,
                                             "Messages per PUBLISH batch (with --db-dir default " +
                                                 std::to_string(kDirectoryBatchSize) + ")")
                                ->capture_default_str();
  batch_size_option->check(cli::count_check(1, 100000));
  cli::add_size_option(run_cmd, "--batch-bytes", run.batch_bytes,
                       "Bytes per batch (as encoded in a PUBLISH, e.g. 512k, 4m); lowered to the "
                       "broker's frame limit. A larger message goes alone; one above the "
                       "broker's limits is dead",
                       {1024, std::uint64_t{1} << 30, "", false});
  auto* in_flight_option =
      run_cmd
          ->add_option("--in-flight", run.in_flight,
                       "Batches sent before their acknowledgements (bounds memory; with "
                       "--db-dir per database, default " +
                           std::to_string(kDirectoryInFlight) + ")")
          ->capture_default_str();
  in_flight_option->check(cli::count_check(1, 1024));
  // Durations need a unit (500ms, 10s, 5m, 24h, 7d): a bare "2" is refused.
  cli::add_duration_option(run_cmd, "--ack-timeout", run.ack_timeout,
                           "No acknowledgement this long: reconnect and resend");
  cli::add_duration_option(run_cmd, "--connect-timeout", run.connect_timeout,
                           "How long to wait for the broker to open a session");
  cli::add_duration_option(run_cmd, "--backoff-initial", run.backoff_initial,
                           "First delay after a failure (doubles each time, with jitter)");
  cli::add_duration_option(run_cmd, "--backoff-max", run.backoff_max,
                           "Longest delay between attempts");
  cli::add_duration_option(run_cmd, "--lease", run.lease,
                           "Relay lease time, at least 1s: a standby takes over this long after "
                           "the active relay dies (it is renewed every third of it)",
                           cli::at_least(1s));
  cli::add_duration_option(run_cmd, "--retention", run.retention,
                           "Delete delivered rows older than this (never: keep them)",
                           cli::at_least(0ms, "never"));
  run_cmd
      ->add_option("--on-dead", run.on_dead,
                   "block: a dead message holds back later messages of its key until replayed "
                   "or dropped (safe default); skip: they go on without it")
      ->capture_default_str()
      ->check(CLI::IsMember({"block", "skip"}));
  run_cmd->add_option("--holder", run.holder,
                      "Name of this relay for people (default host:pid); the lease is held as "
                      "NAME:INSTANCE, INSTANCE being random per process");
  run_cmd->add_option("--sync", run.sync, "SQLite synchronous level for the relay's bookkeeping")
      ->capture_default_str()
      ->check(CLI::IsMember({"normal", "full"}));
  cli::add_duration_option(
      run_cmd, "--cleanup-interval", run.cleanup_interval,
      "How often to delete delivered rows past --retention (in batches of 500)");
  cli::add_duration_option(run_cmd, "--summary-interval", run.summary_interval,
                           "How often to log a one-line summary while there is traffic");
  cli::add_duration_option(run_cmd, "--drain-timeout", run.drain_timeout,
                           "On SIGINT/SIGTERM, how long to wait for in-flight acknowledgements "
                           "(0: do not wait; with --db-dir, for all databases together)",
                           cli::at_least(0ms));
  run_cmd->add_option("--curve-server-public-key-file", run.curve_server_public_key_file,
                      "Broker's CURVE public key (Z85), enables encryption");
  run_cmd->add_option("--curve-secret-key-file", run.curve_secret_key_file,
                      "This relay's CURVE secret key (Z85)");
  run_cmd
      ->add_option("--log-level", run.log_level, "trace, debug, info, warn, error, critical or off")
      ->capture_default_str();
  run_cmd
      ->add_option("--log-format", run.log_format,
                   "text, or json: one JSON object per line (time, level, component, pid, message)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  cli::add_metrics_options(run_cmd, run.metrics);
  cli::add_duration_option(run_cmd, "--ready-max-lag", run.ready_max_lag,
                           "/readyz answers 503 while the oldest pending message is older than "
                           "this (with --metrics-bind)");

  std::string db;
  std::string db_dir;
  std::string glob = "*.db";
  bool json = false;
  std::size_t limit = 1000;
  std::string msg_id;
  bool all = false;
  auto* status_cmd = app.add_subcommand("status",
                                        "Backlog, oldest pending age, dead count and "
                                        "lease holder of an outbox (no broker needed)");
  status_cmd->add_option("--db", db, "Outbox database");
  status_cmd->add_option("--db-dir", db_dir,
                         "Every outbox database in this directory: one line each, then totals "
                         "(pending, oldest pending age, dead, lease)");
  status_cmd->add_option("--glob", glob, "With --db-dir: which file names are databases")
      ->capture_default_str();
  status_cmd->add_flag("--json", json, "One JSON object");
  auto* dead_cmd = app.add_subcommand("dead", "List dead messages with their reasons");
  dead_cmd->add_option("--db", db, "Outbox database")->required();
  dead_cmd->add_flag("--json", json, "One JSON object per line");
  dead_cmd->add_option("--limit", limit, "At most this many")
      ->capture_default_str()
      ->check(cli::count_check(1));
  auto* replay_cmd = app.add_subcommand("replay", "Make dead messages pending again");
  replay_cmd->add_option("--db", db, "Outbox database")->required();
  replay_cmd->add_option("--msg-id", msg_id, "The dead message to replay");
  replay_cmd->add_flag("--all", all, "Replay every dead message");
  auto* drop_cmd = app.add_subcommand("drop", "Give up a dead message for good (unblocks its key)");
  drop_cmd->add_option("--db", db, "Outbox database")->required();
  drop_cmd->add_option("--msg-id", msg_id, "The dead message to drop")->required();

  if (argc > 1 && argv[1][0] != '-') {
    std::string command = argv[1];
    if (command != "run" && command != "status" && command != "dead" && command != "replay" &&
        command != "drop") {
      std::fprintf(stderr, "outbox-relay: unknown command '%s' (run, status, dead, replay, drop)\n",
                   command.c_str());
      return cli::exit_usage;
    }
  }
  app.name("outbox-relay");
  if (auto code = cli::parse_command_line(app, "outbox-relay",
                                          std::vector<std::string>(argv + 1, argv + argc))) {
    return *code;
  }

  run.batch_size_given = batch_size_option->count() > 0;
  run.in_flight_given = in_flight_option->count() > 0;
  try {
    if (*run_cmd) return run_relay(run);
    if (*status_cmd) {
      if (db.empty() == db_dir.empty()) {
        throw UsageError("status needs --db (one database) or --db-dir (a directory of them)");
      }
      return db_dir.empty() ? show_status(db, json) : show_directory_status(db_dir, glob, json);
    }
    if (*dead_cmd) return list_dead(db, json, limit);
    if (*replay_cmd) return replay(db, msg_id, all);
    if (*drop_cmd) return drop(db, msg_id);
  } catch (const UsageError& error) {
    std::fprintf(stderr, "outbox-relay: %s\n", error.what());
    return cli::exit_usage;
  } catch (const outbox::Error& error) {
    std::fprintf(stderr, "outbox-relay: %s\n", error.what());
    return cli::exit_storage;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "outbox-relay: unexpected error: %s\n", error.what());
    return cli::exit_failure;
  }
  return cli::exit_usage;
}
