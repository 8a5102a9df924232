// outbox-broker serve: the broker daemon, until SIGINT/SIGTERM.
#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "broker/metrics.hpp"
#include "broker/server.hpp"
#include "broker/store.hpp"
#include "cli/args.hpp"
#include "cli/process.hpp"
#include "commands.hpp"
#include "outbox/error.hpp"

namespace broker::commands {
namespace {

using namespace std::chrono_literals;

// Shorter dedup windows need --allow-short-dedup-window.
constexpr std::chrono::milliseconds kShortestSafeDedupWindow = 1h;

// The server a stop signal asks to stop. The signal's handler may run on any
// thread (cli/src/process.cpp), so both are atomics, and the server outlives
// every handler that read it: stops_in_progress counts the handlers between
// reading running_server and returning, and serve_with() waits for none after
// clearing it, before the server is destroyed.
std::atomic<broker::Server*> running_server{nullptr};
std::atomic<int> stops_in_progress{0};
static_assert(std::atomic<broker::Server*>::is_always_lock_free &&
              std::atomic<int>::is_always_lock_free);

broker::StoreOptions store_options(const ServeSettings& settings,
                                   std::shared_ptr<spdlog::logger> logger) {
  if (settings.dedup_window.count() > 0 && settings.dedup_window < kShortestSafeDedupWindow &&
      !settings.allow_short_dedup_window) {
    throw cli::UsageError(
        "--dedup-window " + cli::format_duration(settings.dedup_window) + " is shorter than " +
        cli::format_duration(kShortestSafeDedupWindow) +
        ": a resend after it (a relay still retrying, a producer database restored "
        "from a backup) is stored twice; pass --allow-short-dedup-window to accept "
        "that");
  }
  broker::StoreOptions options;
  options.sync = settings.sync;
  options.max_message_bytes = settings.max_message_bytes;
  options.integrity_check = !settings.skip_integrity_check;
  options.dedup_window = settings.dedup_window;
  options.retention = settings.retention;
  options.cache_bytes = settings.cache_bytes;
  options.max_database_bytes = settings.max_database_bytes;
  options.logger = std::move(logger);
  return options;
}

broker::ServerOptions server_options(const ServeSettings& settings, metrics::Registry& registry,
                                     std::shared_ptr<spdlog::logger> logger) {
  broker::ServerOptions options;
  if (!settings.metrics.bind.empty()) {
    options.metrics = std::make_shared<broker::ServerMetrics>(registry, settings.metrics_max_topics,
                                                              settings.metrics_max_groups);
  }
  options.bind_endpoint = settings.bind;
  options.endpoint_file = settings.endpoint_file;
  options.logger = std::move(logger);
  options.max_commit_messages = settings.max_commit_messages;
  options.limits = broker::ServerOptions::default_limits();
  options.max_outgoing_bytes = settings.max_outgoing_bytes;
  options.max_total_outgoing_bytes = settings.max_total_outgoing_bytes;
  options.peer_heartbeat_timeout = settings.peer_timeout;
  // Six PINGs a timeout, at least one a second.
  options.peer_heartbeat_interval =
      std::max(std::min(settings.peer_timeout / 6, std::chrono::milliseconds(10'000)),
               std::min(settings.peer_timeout, std::chrono::milliseconds(1000)));
  return options;
}

// The CURVE keys of --curve-secret-key-file and --allowed-clients-file into
// `options`. Throws outbox::Error (kind io) when a file cannot be read.
void read_curve_keys(const ServeSettings& settings, broker::ServerOptions& options) {
  if (settings.curve_secret_key_file.empty()) {
    if (!settings.allowed_clients_file.empty()) {
      throw cli::UsageError("--allowed-clients-file needs --curve-secret-key-file");
    }
    return;
  }
  broker::CurveServerConfig curve;
  curve.secret_key = broker::read_curve_key_file(settings.curve_secret_key_file);
  if (!settings.allowed_clients_file.empty()) {
    curve.allowed_client_keys = broker::read_allowed_clients_file(settings.allowed_clients_file);
  }
  options.curve = std::move(curve);
}

void log_start(const ServeSettings& settings, const broker::Server& server, bool curve,
               spdlog::logger& logger) {
  logger.info("outbox-broker serving {} on {} (sync {}, max message {} bytes)", settings.db,
              server.endpoint(), settings.sync == broker::SyncMode::full ? "full" : "normal",
              settings.max_message_bytes);
  if (settings.dedup_window.count() == 0) {
    logger.info("dedup window forever: every msg_id is remembered for good");
  } else {
    logger.info(
        "dedup window {}: a msg_id resent more than {} after it was stored is stored "
        "again",
        cli::format_duration(settings.dedup_window), cli::format_duration(settings.dedup_window));
  }
  if (!curve && !cli::is_loopback_endpoint(server.endpoint())) {
    logger.warn(
        "{} is reachable from other machines and CURVE is off: anyone who can connect "
        "can publish, read and commit offsets (see --curve-secret-key-file)",
        server.endpoint());
  }
}

cli::Readiness readiness(const broker::ServerMetrics& metrics) {
  if (metrics.serving.value() == 0) {
    return cli::Readiness{false, "the broker loop is not serving (starting or stopping)"};
  }
  if (metrics.store_writable.value() == 0) {
    return cli::Readiness{false, "the last group commit failed to write the store (see the log)"};
  }
  return cli::Readiness{true, "serving, the store accepts writes"};
}

int serve_with(const ServeSettings& settings, const std::shared_ptr<spdlog::logger>& logger) {
  auto store_settings = store_options(settings, logger);
  // Declared before everything that reports into it: destroyed last.
  metrics::Registry registry;
  auto options = server_options(settings, registry, logger);
  try {
    read_curve_keys(settings, options);
  } catch (const outbox::Error& error) {
    logger->error("{}", error.what());
    return cli::exit_code_for(error);
  }
  std::unique_ptr<broker::Store> store;
  try {
    store = std::make_unique<broker::Store>(settings.db, store_settings);
  } catch (const outbox::Error& error) {
    logger->error("cannot open database {}: {}", settings.db, error.what());
    return cli::exit_code_for(error);
  }
  std::unique_ptr<broker::Server> server;
  try {
    server = std::make_unique<broker::Server>(*store, options);
  } catch (const outbox::Error& error) {
    logger->error("{}", error.what());
    return cli::exit_code_for(error);
  }
  log_start(settings, *server, options.curve.has_value(), *logger);
  std::unique_ptr<cli::MetricsServer> metrics_server;
  try {
    metrics_server = cli::start_metrics_server(
        settings.metrics, registry,
        [metrics = options.metrics.get()] { return readiness(*metrics); }, *logger);
  } catch (const std::exception& error) {
    logger->error("{}", error.what());
    return cli::exit_endpoint;
  }
  // One line on stdout with the real endpoint, for scripts that bind port *.
  std::cout << "listening on " << server->endpoint() << std::endl;
  // Cleared however run() ends, before `server` is destroyed.
  struct Running {
    explicit Running(broker::Server* server) { running_server.store(server); }
    ~Running() {
      running_server.store(nullptr);
      while (stops_in_progress.load() != 0) std::this_thread::yield();
    }
    Running(const Running&) = delete;
    Running& operator=(const Running&) = delete;
  } running(server.get());
  if (cli::stop_requested()) server->request_stop();
  server->run();
  return cli::exit_ok;
}

}  // namespace

void stop_running_server() noexcept {
  stops_in_progress.fetch_add(1);
  if (auto* server = running_server.load()) server->request_stop();
  stops_in_progress.fetch_sub(1);
}

int serve(const ServeSettings& settings, const std::string& log_level) {
  auto logger = cli::make_stderr_logger("outbox-broker", log_level, settings.log_format);
  try {
    return serve_with(settings, logger);
  } catch (const cli::UsageError& error) {
    logger->error("{}", error.what());
    return cli::exit_usage;
  }
}

}  // namespace broker::commands
