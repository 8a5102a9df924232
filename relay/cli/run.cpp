// outbox-relay run: one database (--db) or a directory of them (--db-dir),
// forwarded until SIGINT/SIGTERM.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include <spdlog/spdlog.h>

#include "broker/curve_keys.hpp"
#include "cli/process.hpp"
#include "commands.hpp"
#include "outbox/error.hpp"
#include "relay/broker_sink.hpp"
#include "relay/filesystem.hpp"
#include "relay/metrics.hpp"
#include "relay/multi_relay.hpp"
#include "relay/relay.hpp"
#if OUTBOX_RELAY_WITH_JETSTREAM
#include "relay/jetstream_sink.hpp"
#endif

namespace relay::commands {
namespace {

relay::Relay* running_relay = nullptr;
relay::MultiRelay* running_multi_relay = nullptr;

// Points the stop handler at a relay while it runs.
template <typename Running>
class RunningGuard {
 public:
  RunningGuard(Running*& slot, Running& running) : slot_(slot) { slot_ = &running; }
  ~RunningGuard() { slot_ = nullptr; }
  RunningGuard(const RunningGuard&) = delete;
  RunningGuard& operator=(const RunningGuard&) = delete;

 private:
  Running*& slot_;
};

void print_error(const std::string& message) {
  std::fprintf(stderr, "outbox-relay: %s\n", message.c_str());
}

// `error` with `context` (the flag it came from) before its message.
outbox::Error in_context(const std::string& context, const outbox::Error& error) {
  return outbox::Error(error.kind(), context + ": " + error.what(), error.extended_code());
}

// The broker sink's options. Throws outbox::Error (kind io) when a CURVE key
// file cannot be read.
relay::BrokerSinkOptions broker_sink_options(const RunSettings& settings) {
  relay::BrokerSinkOptions sink_options;
  sink_options.endpoint = settings.broker;
  sink_options.producer = settings.holder;
  if (!settings.curve_server_public_key_file.empty() || !settings.curve_secret_key_file.empty()) {
    if (settings.curve_server_public_key_file.empty() || settings.curve_secret_key_file.empty()) {
      throw cli::UsageError(
          "CURVE needs both --curve-server-public-key-file and --curve-secret-key-file");
    }
    sink_options.curve =
        relay::BrokerCurveKeys{broker::read_curve_key_file(settings.curve_server_public_key_file),
                               broker::read_curve_key_file(settings.curve_secret_key_file)};
  }
  return sink_options;
}

relay::RelayConfig relay_config(const RunSettings& settings,
                                std::shared_ptr<spdlog::logger> logger) {
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
  config.logger = std::move(logger);
  return config;
}

// What no single flag's validator can see: flags that only make sense together.
void check_combinations(const RunSettings& settings) {
  if (settings.backoff_max < settings.backoff_initial) {
    throw cli::UsageError("--backoff-max must not be below --backoff-initial");
  }
  if (settings.batch_size == 0 || settings.in_flight == 0) {
    throw cli::UsageError("--batch-size and --in-flight must be at least 1");
  }
}

void check_sink_combinations(const RunSettings& settings) {
  if (settings.db.empty() == settings.db_dir.empty()) {
    throw cli::UsageError("run needs --db (one database) or --db-dir (a directory of them)");
  }
  if (settings.sink == SinkKind::jetstream) {
#if !OUTBOX_RELAY_WITH_JETSTREAM
    throw cli::UsageError(
        "--sink jetstream: this outbox-relay was built without the JetStream sink "
        "(libnats-dev was not found, or OUTBOX_WITH_NATS=OFF)");
#endif
    if (settings.stream.empty()) {
      throw cli::UsageError(
          "--sink jetstream needs --stream (the stream the messages must land in)");
    }
  }
}

// False (after a line on stderr) when the database is on a network filesystem.
bool database_filesystem_usable(const std::string& db, spdlog::logger& logger) {
  auto filesystem = relay::database_filesystem(db);
  if (!filesystem) return true;
  if (filesystem->kind == relay::FilesystemKind::network) {
    print_error("database '" + db + "' is on a network filesystem (" + filesystem->name +
                "); SQLite's WAL and the relay lease need every relay and producer on the host "
                "whose local disk holds the file (docs/operations.md)");
    return false;
  }
  if (filesystem->kind == relay::FilesystemKind::unknown) {
    logger.warn(
        "database {} is on a filesystem of type {}; if it is shared over a network or with a "
        "VM, run every relay and producer on one host only (docs/operations.md)",
        db, filesystem->name);
  }
  return true;
}

#if OUTBOX_RELAY_WITH_JETSTREAM
relay::JetStreamSinkOptions jetstream_options(const RunSettings& settings,
                                              const relay::RelayConfig& config) {
  relay::JetStreamSinkOptions options;
  options.url = settings.nats_url;
  options.stream = settings.stream;
  options.subject_prefix = settings.subject_prefix;
  options.client_name = "outbox-relay " + settings.holder;
  options.max_pending = config.batch_size * config.max_in_flight_batches;
  options.retry_horizon = relay::retry_horizon(config);
  options.allow_short_dedup_window = settings.allow_short_dedup_window;
  options.logger = config.logger;
  return options;
}
#endif

// With --sink jetstream: every database's sessions over one NATS connection.
void use_jetstream(const RunSettings& settings, relay::MultiRelayConfig& multi) {
#if OUTBOX_RELAY_WITH_JETSTREAM
  relay::SharedJetStreamOptions options;
  options.sink = jetstream_options(settings, multi.relay);
  options.sink.max_pending_bytes = multi.relay.batch_bytes * multi.relay.max_in_flight_batches;
  // A server that stops answering is noticed by libnats' pings (two missed
  // PONGs close the connection); until then a database whose acknowledgement
  // timed out opens its next session on the same connection.
  options.sink.ping_interval = std::max(multi.relay.ack_timeout / 2, 1000ms);
  options.max_total_pending_bytes = static_cast<std::size_t>(settings.nats_pending_bytes);
  try {
    relay::SharedJetStreamConnection check(options);  // a bad URL or stream name: usage error
  } catch (const std::invalid_argument& error) {
    throw cli::UsageError(error.what());
  }
  multi.connections = 1;
  multi.make_connection = [options] {
    return std::make_unique<relay::SharedJetStreamConnection>(options);
  };
#else
  (void)settings;
  (void)multi;
#endif
}

// The sink --sink names. Throws outbox::Error (kind io, the flag named) when
// it cannot be used, cli::UsageError for a bad combination of options.
std::unique_ptr<relay::Sink> make_sink(const RunSettings& settings,
                                       [[maybe_unused]] const relay::RelayConfig& config) {
  if (settings.sink == SinkKind::jetstream) {
#if OUTBOX_RELAY_WITH_JETSTREAM
    try {
      return std::make_unique<relay::JetStreamSink>(jetstream_options(settings, config));
    } catch (const std::invalid_argument& error) {
      throw cli::UsageError(error.what());
    }
#endif
  }
  auto sink_options = broker_sink_options(settings);
  try {
    return std::make_unique<relay::BrokerSink>(std::move(sink_options));
  } catch (const outbox::Error& error) {
    throw in_context("--broker " + settings.broker, error);
  }
}

int refusal_exit_code(const relay::SinkRefusal& refusal) {
  return refusal.reason() == relay::SinkRefusal::Reason::not_found ? cli::exit_not_found
                                                                   : cli::exit_refused;
}

// Starts the metrics endpoint; false (after a line on stderr) when it cannot
// bind: exit_endpoint.
bool start_metrics(const RunSettings& settings, metrics::Registry& registry,
                   std::function<cli::Readiness()> readiness, spdlog::logger& logger,
                   std::unique_ptr<cli::MetricsServer>& server) {
  try {
    server = cli::start_metrics_server(settings.metrics, registry, std::move(readiness), logger);
  } catch (const std::exception& error) {
    print_error(error.what());
    return false;
  }
  return true;
}

// run --db-dir: every outbox database of a directory from one process.
int run_directory(const RunSettings& settings, relay::RelayConfig config) {
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
  if (!settings.batch_size_given) config.batch_size = kDirectoryBatchSize;
  if (!settings.in_flight_given) config.max_in_flight_batches = kDirectoryInFlight;
  auto logger = config.logger;
  multi.relay = std::move(config);
  multi.store.synchronous_full = settings.synchronous_full;
  multi.store.on_dead = settings.on_dead;
  if (settings.sink == SinkKind::jetstream) {
    use_jetstream(settings, multi);
  } else {
    multi.broker = broker_sink_options(settings);
  }
  std::unique_ptr<relay::MultiRelay> relay;
  try {
    relay = std::make_unique<relay::MultiRelay>(std::move(multi));
  } catch (const outbox::Error& error) {
    throw in_context(settings.sink == SinkKind::jetstream ? "--nats-url " + settings.nats_url
                                                          : "--broker " + settings.broker,
                     error);
  }
  std::unique_ptr<cli::MetricsServer> metrics_server;
  if (directory_metrics) {
    directory_metrics->collect(*relay);
    auto readiness = [multi_relay = relay.get(), lag = settings.ready_max_lag] {
      auto state = relay::directory_readiness(multi_relay->counters(), lag);
      return cli::Readiness{state.ready, std::move(state.reason)};
    };
    if (!start_metrics(settings, registry, readiness, *logger, metrics_server)) {
      return cli::exit_endpoint;
    }
  }
  RunningGuard guard(running_multi_relay, *relay);
  if (cli::stop_requested()) relay->request_stop();  // SIGTERM while starting up
  try {
    relay->run();
  } catch (const relay::SinkRefusal& refusal) {
    print_error(refusal.what());
    return refusal_exit_code(refusal);
  } catch (const outbox::Error& error) {
    print_error(error.what());
    return cli::exit_code_for(error);
  } catch (const std::runtime_error& error) {
    // The directory itself (cannot be listed or watched).
    print_error(error.what());
    return cli::exit_storage;
  }
  auto counters = relay->counters();
  logger->info("outbox-relay: stopped; {} databases, stored {}, duplicates {}, dead {}",
               counters.databases, counters.stored, counters.duplicates, counters.dead);
  return cli::exit_ok;
}

// run --db: one database.
int run_database(const RunSettings& settings, relay::RelayConfig config) {
  auto& logger = *config.logger;
  if (!database_filesystem_usable(settings.db, logger)) return cli::exit_storage;
  auto store = outbox::RelayStore::open(settings.db, {.synchronous_full = settings.synchronous_full,
                                                      .on_dead = settings.on_dead,
                                                      .logger = config.logger});
  auto sink = make_sink(settings, config);
  // The registry outlives everything that reports into it or serves it.
  metrics::Registry registry;
  std::unique_ptr<relay::BacklogProbe> backlog_probe;
  if (!settings.metrics.bind.empty()) {
    config.metrics = std::make_shared<relay::RelayMetrics>(registry);
    backlog_probe = std::make_unique<relay::BacklogProbe>(registry, settings.db);
  }
  relay::Relay relay(store, *sink, config);
  std::unique_ptr<cli::MetricsServer> metrics_server;
  auto readiness = [metrics = config.metrics.get(), probe = backlog_probe.get(),
                    lag = settings.ready_max_lag] {
    auto state = relay::relay_readiness(*metrics, probe->read(), lag);
    return cli::Readiness{state.ready, std::move(state.reason)};
  };
  if (!start_metrics(settings, registry, readiness, logger, metrics_server)) {
    return cli::exit_endpoint;
  }
  RunningGuard guard(running_relay, relay);
  if (cli::stop_requested()) relay.request_stop();  // SIGTERM while starting up
  logger.info(
      "outbox-relay: forwarding {} to {} as '{}' (batch {} messages / {} bytes, {} in flight, on "
      "dead: {})",
      settings.db, sink->describe(), relay.lease_holder(), config.batch_size, config.batch_bytes,
      config.max_in_flight_batches,
      settings.on_dead == outbox::DeadPolicy::skip ? "skip" : "block");
  try {
    relay.run();
  } catch (const relay::SinkRefusal& refusal) {
    print_error(refusal.what());
    return refusal_exit_code(refusal);
  }
  auto counters = relay.counters();
  logger.info("outbox-relay: stopped; sent {}, stored {}, duplicates {}, dead {}",
              counters.sent_messages, counters.stored, counters.duplicates, counters.dead);
  return cli::exit_ok;
}

}  // namespace

void stop_running_relay() noexcept {
  if (running_relay != nullptr) running_relay->request_stop();
  if (running_multi_relay != nullptr) running_multi_relay->request_stop();
}

int run(const RunSettings& settings) {
  cli::install_stop_handlers(&stop_running_relay);  // also when flags came before `run`
  cli::raise_descriptor_limit();
  check_combinations(settings);
  std::shared_ptr<spdlog::logger> logger;
  try {
    logger = cli::make_stderr_logger("outbox-relay", settings.log_level, settings.log_format);
  } catch (const std::invalid_argument& error) {
    throw cli::UsageError(std::string("--log-level: ") + error.what());
  }
  check_sink_combinations(settings);
  auto config = relay_config(settings, std::move(logger));
  if (!settings.db_dir.empty()) return run_directory(settings, std::move(config));
  return run_database(settings, std::move(config));
}

}  // namespace relay::commands
