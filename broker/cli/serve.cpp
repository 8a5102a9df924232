// outbox-broker serve: opens the store, binds the server, serves until stopped.
#include <chrono>
#include <iostream>
#include <limits>
#include <memory>
#include <string>

#include "broker/metrics.hpp"
#include "broker/server.hpp"
#include "broker/store.hpp"
#include "cli/args.hpp"
#include "cli/process.hpp"
#include "commands.hpp"

namespace broker::cli_commands {
namespace {

using namespace std::chrono_literals;

// Shorter dedup windows need --allow-short-dedup-window.
constexpr std::chrono::milliseconds kShortestSafeDedupWindow = 1h;

broker::Server* running_server = nullptr;

}  // namespace

void stop_running_server() noexcept {
  if (running_server != nullptr) running_server->request_stop();
}

void add_serve_options(CLI::App* serve_command, ServeSettings& serve_settings,
                       std::string& log_format) {
  serve_command->add_option("--db", serve_settings.db, "broker database file (created if missing)")
      ->required();
  serve_command
      ->add_option("--bind", serve_settings.bind,
                   "ZeroMQ endpoint to listen on; tcp://127.0.0.1:* picks a free port")
      ->check(cli::bind_endpoint_check())
      ->capture_default_str();
  serve_command->add_option(
      "--endpoint-file", serve_settings.endpoint_file,
      "write the bound endpoint (with the real port) to this file once listening");
  serve_command
      ->add_option("--sync", serve_settings.sync,
                   "full: fsync every group commit (survives power loss); normal: WAL "
                   "without fsync per commit (survives process crashes)")
      ->check(CLI::IsMember({"full", "normal"}))
      ->capture_default_str();
  cli::add_size_option(
      serve_command, "--max-message-bytes", serve_settings.max_message_bytes,
      "largest key + headers + payload stored; larger ones are REJECTED "
      "(accepts k, m suffixes)",
      {1, wire::max_message_bytes_in_frame(broker::ServerOptions::default_limits()),
       "what one " + std::to_string(broker::ServerOptions::default_limits().max_body_bytes) +
           "-byte PUBLISH frame carries",
       false});
  cli::add_duration_option(
      serve_command, "--dedup-window", serve_settings.dedup_window,
      "how long a msg_id is remembered, with a unit (e.g. 7d, 24h) or 'forever'; below 1h "
      "needs --allow-short-dedup-window",
      cli::at_least(0ms, "forever"));
  serve_command->add_flag(
      "--allow-short-dedup-window", serve_settings.allow_short_dedup_window,
      "accept a --dedup-window shorter than 1h. A msg_id resent after the window has passed "
      "is stored again and consumers see it twice, and resends come late: a relay retries "
      "until acknowledged (its retry horizon: ack-timeout + connect-timeout + backoff-max + "
      "lease, and much longer while the broker is down), and a producer database restored "
      "from a backup resends everything delivered after that backup");
  cli::add_duration_option(serve_command, "--retention", serve_settings.retention,
                           "how long message bodies are kept (e.g. 7d; 'forever'); never "
                           "shortens the dedup window",
                           cli::at_least(0ms, "forever"));
  cli::add_size_option(serve_command, "--cache", serve_settings.cache_bytes,
                       "database page cache (e.g. 256m), at most this machine's memory",
                       {0, std::numeric_limits<std::uint64_t>::max(), "", true});
  cli::add_size_option(serve_command, "--max-database-size", serve_settings.max_database_bytes,
                       "refuse writes that would grow the database beyond this (e.g. 50g; 0: "
                       "no limit); refused batches get ERROR storage_failure");
  serve_command
      ->add_option("--max-commit-messages", serve_settings.max_commit_messages,
                   "most messages written in one group commit")
      ->check(cli::count_check(1, 1'000'000))
      ->capture_default_str();
  cli::add_size_option(
      serve_command, "--max-outgoing-bytes", serve_settings.max_outgoing_bytes,
      "replies held for one connection at most (e.g. 64m); a peer at this cap "
      "gets no more work until it reads, FETCH replies are sized to fit",
      {std::uint64_t{1} << 20, std::numeric_limits<std::uint64_t>::max(), "", true});
  serve_command
      ->add_option("--log-format", log_format,
                   "text, or json: one JSON object per line (time, level, component, pid, message)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  cli::add_metrics_options(serve_command, serve_settings.metrics);
  serve_command
      ->add_option("--metrics-max-topics", serve_settings.metrics_max_topics,
                   "topics with their own outbox_broker_topic_last_offset series (first in name "
                   "order; the rest are counted in outbox_broker_topics_unlisted)")
      ->check(cli::count_check(0, 100'000))
      ->capture_default_str();
  serve_command
      ->add_option("--metrics-max-groups", serve_settings.metrics_max_groups,
                   "(consumer group, topic) pairs with their own offset and lag series (first "
                   "in name order)")
      ->check(cli::count_check(0, 100'000))
      ->capture_default_str();
  serve_command->add_flag(
      "--skip-integrity-check", serve_settings.skip_integrity_check,
      "do not run PRAGMA quick_check when opening the database (it reads the whole file; "
      "a corrupt database is otherwise refused with exit 3)");
  serve_command
      ->add_option("--curve-secret-key-file", serve_settings.curve_secret_key_file,
                   "enable CURVE: file with the broker's Z85 secret key")
      ->check(CLI::ExistingFile);
  serve_command
      ->add_option("--allowed-clients-file", serve_settings.allowed_clients_file,
                   "with CURVE: Z85 public keys of allowed clients, one per line")
      ->check(CLI::ExistingFile);
}

int serve(const ServeSettings& settings, const std::shared_ptr<spdlog::logger>& logger) {
  broker::StoreOptions store_options;
  auto sync = broker::parse_sync_mode(settings.sync);
  if (!sync) throw UsageError("--sync must be full or normal, got '" + settings.sync + "'");
  store_options.sync = *sync;
  store_options.max_message_bytes = settings.max_message_bytes;
  store_options.integrity_check = !settings.skip_integrity_check;
  if (settings.dedup_window.count() > 0 && settings.dedup_window < kShortestSafeDedupWindow &&
      !settings.allow_short_dedup_window) {
    throw UsageError("--dedup-window " + cli::format_duration(settings.dedup_window) +
                     " is shorter than " + cli::format_duration(kShortestSafeDedupWindow) +
                     ": a resend after it (a relay still retrying, a producer database restored "
                     "from a backup) is stored twice; pass --allow-short-dedup-window to accept "
                     "that");
  }
  store_options.dedup_window = settings.dedup_window;
  store_options.retention = settings.retention;
  store_options.cache_bytes = settings.cache_bytes;
  store_options.max_database_bytes = settings.max_database_bytes;
  store_options.logger = logger;

  // Declared before everything that reports into it: destroyed last.
  metrics::Registry registry;
  broker::ServerOptions server_options;
  if (!settings.metrics.bind.empty()) {
    server_options.metrics = std::make_shared<broker::ServerMetrics>(
        registry, settings.metrics_max_topics, settings.metrics_max_groups);
  }
  server_options.bind_endpoint = settings.bind;
  server_options.endpoint_file = settings.endpoint_file;
  server_options.logger = logger;
  server_options.max_commit_messages = settings.max_commit_messages;
  server_options.limits = broker::ServerOptions::default_limits();
  server_options.max_outgoing_bytes = settings.max_outgoing_bytes;

  if (!settings.curve_secret_key_file.empty()) {
    broker::CurveServerConfig curve;
    try {
      curve.secret_key = broker::read_curve_key_file(settings.curve_secret_key_file);
      if (!settings.allowed_clients_file.empty()) {
        curve.allowed_client_keys =
            broker::read_allowed_clients_file(settings.allowed_clients_file);
      }
    } catch (const std::exception& error) {
      logger->error("{}", error.what());
      return cli::exit_endpoint;
    }
    server_options.curve = std::move(curve);
  } else if (!settings.allowed_clients_file.empty()) {
    throw UsageError("--allowed-clients-file needs --curve-secret-key-file");
  }

  std::unique_ptr<broker::Store> store;
  try {
    store = std::make_unique<broker::Store>(settings.db, store_options);
  } catch (const std::exception& error) {
    logger->error("cannot open database {}: {}", settings.db, error.what());
    return cli::exit_storage;
  }
  std::unique_ptr<broker::Server> server;
  try {
    server = std::make_unique<broker::Server>(*store, server_options);
  } catch (const std::exception& error) {
    logger->error("{}", error.what());
    return cli::exit_endpoint;
  }
  logger->info("outbox-broker serving {} on {} (sync {}, max message {} bytes)", settings.db,
               server->endpoint(), settings.sync, store_options.max_message_bytes);
  if (settings.dedup_window.count() == 0) {
    logger->info("dedup window forever: every msg_id is remembered for good");
  } else {
    logger->info(
        "dedup window {}: a msg_id resent more than {} after it was stored is stored "
        "again",
        cli::format_duration(settings.dedup_window), cli::format_duration(settings.dedup_window));
  }
  if (!server_options.curve && !cli::is_loopback_endpoint(server->endpoint())) {
    logger->warn(
        "{} is reachable from other machines and CURVE is off: anyone who can connect "
        "can publish, read and commit offsets (see --curve-secret-key-file)",
        server->endpoint());
  }
  std::unique_ptr<cli::MetricsServer> metrics_server;
  try {
    metrics_server = cli::start_metrics_server(
        settings.metrics, registry,
        [metrics = server_options.metrics.get()] {
          if (metrics->serving.value() == 0) {
            return cli::Readiness{false, "the broker loop is not serving (starting or stopping)"};
          }
          if (metrics->store_writable.value() == 0) {
            return cli::Readiness{false,
                                  "the last group commit failed to write the store (see the log)"};
          }
          return cli::Readiness{true, "serving, the store accepts writes"};
        },
        *logger);
  } catch (const std::exception& error) {
    logger->error("{}", error.what());
    return cli::exit_endpoint;
  }
  // One line on stdout with the real endpoint, for scripts that bind port *.
  std::cout << "listening on " << server->endpoint() << std::endl;
  running_server = server.get();
  if (cli::stop_requested()) server->request_stop();
  server->run();
  running_server = nullptr;
  return cli::exit_ok;
}

}  // namespace broker::cli_commands
