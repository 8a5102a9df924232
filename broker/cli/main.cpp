// outbox-broker: the dedup broker daemon and its two inspection commands.
// Parses flags (and a config file), sets up logging and signals, and hands
// over to the broker library.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "broker/client.hpp"
#include "broker/metrics.hpp"
#include "broker/server.hpp"
#include "broker/store.hpp"
#include "cli/args.hpp"
#include "cli/config.hpp"
#include "cli/files.hpp"
#include "cli/metrics_server.hpp"
#include "cli/process.hpp"
#include "format.hpp"

namespace {

using namespace std::chrono_literals;

// Shorter dedup windows need --allow-short-dedup-window.
constexpr std::chrono::milliseconds kShortestSafeDedupWindow = 1h;

// Exit codes are the toolkit's shared ones (cli/process.hpp), documented in
// --help and docs/protocol.md.
broker::Server* running_server = nullptr;

void stop_running_server() noexcept {
  if (running_server != nullptr) running_server->request_stop();
}

struct ServeSettings {
  std::string db;
  std::string bind = "tcp://127.0.0.1:7750";
  std::string endpoint_file;
  std::string sync = "full";
  std::uint64_t max_message_bytes = 1024 * 1024;
  std::chrono::milliseconds dedup_window{0};  // 0: forever
  bool allow_short_dedup_window = false;
  std::chrono::milliseconds retention{0};  // 0: forever
  std::uint64_t cache_bytes = 256 * 1024 * 1024;
  std::uint64_t max_database_bytes = 0;  // 0: no limit
  std::string curve_secret_key_file;
  std::string allowed_clients_file;
  std::size_t max_commit_messages = 50'000;
  std::uint64_t max_outgoing_bytes = 64 * 1024 * 1024;
  bool skip_integrity_check = false;
  cli::MetricsSettings metrics;
  std::size_t metrics_max_topics = 100;
  std::size_t metrics_max_groups = 100;
};

struct ClientSettings {
  std::string connect = "tcp://127.0.0.1:7750";
  bool json = false;
  int timeout_ms = 5000;
  std::string topic;
  std::uint64_t from = 0;
  std::string group;
  std::uint64_t max = 0;
  bool follow = false;
  std::string curve_server_public_key_file;
  std::string curve_secret_key_file;
};

struct KeygenSettings {
  std::string secret_file;
  std::string public_file;
  bool force = false;
};

class UsageError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

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

std::string curve_public_of(const std::string& secret) {
  char public_key[41] = {};
  if (zmq_curve_public(public_key, secret.c_str()) != 0) {
    throw UsageError("cannot derive a CURVE public key from the secret key");
  }
  return std::string(public_key, 40);
}

std::unique_ptr<broker::Client> make_client(const ClientSettings& settings) {
  broker::ClientOptions options;
  if (!settings.curve_server_public_key_file.empty() || !settings.curve_secret_key_file.empty()) {
    if (settings.curve_server_public_key_file.empty() || settings.curve_secret_key_file.empty()) {
      throw UsageError(
          "CURVE needs both --curve-server-public-key-file and --curve-secret-key-file");
    }
    try {
      broker::CurveClientConfig curve;
      curve.server_public_key = broker::read_curve_key_file(settings.curve_server_public_key_file);
      curve.secret_key = broker::read_curve_key_file(settings.curve_secret_key_file);
      curve.public_key = curve_public_of(curve.secret_key);
      options.curve = std::move(curve);
    } catch (const std::runtime_error& error) {
      throw UsageError(error.what());
    }
  }
  try {
    return std::make_unique<broker::Client>(settings.connect, options);
  } catch (const zmq::error_t& error) {
    throw UsageError("cannot connect to '" + settings.connect + "': " + error.what());
  }
}

int report(const wire::Error& error, const std::string& endpoint) {
  std::cerr << "outbox-broker: " << endpoint << ": " << error.message << "\n";
  return error.code == wire::ErrorCode::timeout || error.code == wire::ErrorCode::disconnected
             ? cli::exit_unreachable
             : cli::exit_refused;
}

// Writes a new CURVE key pair as Z85 text; the secret file is created with mode
// 0600 (never through a symlink, never over an existing file without --force).
int keygen(const KeygenSettings& settings) {
  char public_key[41] = {};
  char secret_key[41] = {};
  if (zmq_curve_keypair(public_key, secret_key) != 0) {
    std::cerr << "outbox-broker: this libzmq cannot generate CURVE keys\n";
    return cli::exit_failure;
  }
  if (!settings.force) {
    // Checked for both before either is written; O_EXCL below closes the race.
    for (const auto& file : {settings.secret_file, settings.public_file}) {
      std::error_code error;
      if (std::filesystem::symlink_status(file, error).type() !=
          std::filesystem::file_type::not_found) {
        throw UsageError(file + " exists; keygen does not overwrite keys (--force replaces it)");
      }
    }
  }
  auto overwrite = settings.force ? cli::Overwrite::replace : cli::Overwrite::refuse;
  try {
    cli::write_new_file(settings.secret_file,
                        std::string("# CURVE secret key (keep private)\n") + secret_key + "\n",
                        0600, overwrite);
    cli::write_new_file(settings.public_file,
                        std::string("# CURVE public key\n") + public_key + "\n", 0644, overwrite);
  } catch (const std::filesystem::filesystem_error& error) {
    throw UsageError("cannot write " + error.path1().string() + ": " + error.code().message());
  }
  std::cout << public_key << "\n";
  return cli::exit_ok;
}

int stats(const ClientSettings& settings) {
  auto client = make_client(settings);
  auto reply = client->stats(std::chrono::milliseconds(settings.timeout_ms));
  if (!reply) return report(reply.error(), settings.connect);
  std::cout << (settings.json ? broker::stats_to_json(*reply) + "\n"
                              : broker::stats_to_text(*reply));
  return cli::exit_ok;
}

int tail(const ClientSettings& settings) {
  auto client = make_client(settings);
  auto timeout = std::chrono::milliseconds(settings.timeout_ms);
  wire::Fetch fetch;
  fetch.topic = settings.topic;
  fetch.group = settings.group;
  fetch.from_offset = settings.from;
  fetch.use_group_offset = settings.from == 0 && !settings.group.empty();
  std::uint64_t printed = 0;
  while (!cli::stop_requested()) {
    fetch.max_messages = 1000;
    if (settings.max > 0) {
      fetch.max_messages =
          static_cast<std::uint32_t>(std::min<std::uint64_t>(1000, settings.max - printed));
    }
    fetch.wait_ms = settings.follow ? 1000 : 0;
    auto reply = client->fetch(fetch, timeout);
    if (!reply) return report(reply.error(), settings.connect);
    for (const auto& message : reply->messages) {
      std::cout << (settings.json ? broker::message_to_json(settings.topic, message)
                                  : broker::message_to_text(message))
                << "\n";
    }
    std::cout.flush();
    printed += reply->messages.size();
    fetch.use_group_offset = false;
    fetch.from_offset = reply->next_offset;
    if (!settings.group.empty() && !reply->messages.empty()) {
      auto committed = client->commit_offset(settings.topic, settings.group,
                                             reply->messages.back().offset, timeout);
      if (!committed) return report(committed.error(), settings.connect);
    }
    if (settings.max > 0 && printed >= settings.max) break;
    if (!settings.follow && (reply->messages.empty() || reply->next_offset > reply->last_offset)) {
      break;
    }
  }
  return cli::exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
#if defined(__GLIBC__)
  // Buffers of 1 MiB and more (frames, replies, fetch results) are mapped and
  // unmapped one by one rather than kept in the heap: a fixed threshold turns
  // off glibc's growing one, which would otherwise keep every freed 64 MiB
  // batch in the process after its peer has gone.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  // Fixed, that threshold also fixes the one for giving the heap's free top
  // back to the system at 128 KiB: every PUBLISH of a few hundred KiB then
  // came in on fresh pages to fault in and zero (6 % of the broker's time in
  // a drain). Up to 16 MiB of free heap is kept for the next frames instead.
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
#endif
  CLI::App app{
      "outbox-broker: stores each msg_id once and serves consumers.\n"
      "Exit codes: 0 ok, 1 unexpected error, 2 bad usage or config, 3 database error,\n"
      "4 cannot bind or bad keys, 5 broker unreachable, 6 broker refused the request."};
  app.name("outbox-broker");
  app.require_subcommand(1);
  std::string log_level = "info";
  std::string log_format = "text";

  ServeSettings serve_settings;
  auto* serve_command = app.add_subcommand("serve", "run the broker daemon");
  // The config file belongs to the top-level app (CLI11 reads it there); the
  // serve settings live in its [serve] section, one key per flag.
  app.set_config("--config", "",
                 "read settings from a TOML file: a [serve] section with the long flag names as "
                 "keys (dedup-window = \"7d\"); flags given on the command line win");
  cli::use_strict_config(app);
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

  ClientSettings client_settings;
  auto* stats_command = app.add_subcommand("stats", "print a running broker's counters");
  auto* tail_command = app.add_subcommand("tail", "print messages of a topic");
  for (auto* command : {stats_command, tail_command}) {
    command->add_option("--connect", client_settings.connect, "broker endpoint")
        ->check(cli::connect_endpoint_check())
        ->capture_default_str();
    command
        ->add_option("--curve-server-public-key-file", client_settings.curve_server_public_key_file,
                     "with a CURVE broker: file with the broker's Z85 public key")
        ->check(CLI::ExistingFile);
    command
        ->add_option("--curve-secret-key-file", client_settings.curve_secret_key_file,
                     "with a CURVE broker: file with this client's Z85 secret key")
        ->check(CLI::ExistingFile);
    command->add_flag("--json", client_settings.json, "print JSON (one object per line)");
    command->add_option("--timeout-ms", client_settings.timeout_ms, "how long to wait for answers")
        ->check(cli::count_check(1, 3'600'000))
        ->capture_default_str();
  }
  tail_command->add_option("--topic", client_settings.topic, "topic to read")->required();
  tail_command
      ->add_option("--from", client_settings.from,
                   "first offset (default: the group's position, else 1)")
      ->check(cli::count_check());
  tail_command->add_option("--group", client_settings.group,
                           "consumer group: resume from and commit its offset");
  tail_command
      ->add_option("--max", client_settings.max, "stop after this many messages (0: no limit)")
      ->check(cli::count_check());
  tail_command->add_flag("--follow", client_settings.follow,
                         "keep waiting for new messages until interrupted");

  KeygenSettings keygen_settings;
  auto* keygen_command =
      app.add_subcommand("keygen", "write a new CURVE key pair (prints the public key)");
  keygen_command->add_option("--secret-file", keygen_settings.secret_file, "secret key file")
      ->required();
  keygen_command->add_option("--public-file", keygen_settings.public_file, "public key file")
      ->required();
  keygen_command->add_flag("--force", keygen_settings.force,
                           "replace existing key files (a new file is written and renamed over "
                           "the old one)");

  for (auto* command : {serve_command, stats_command, tail_command}) {
    command->add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
        ->capture_default_str();
  }

  // CLI11 2.1 reads a config file only for an option of the top-level app, so
  // `serve --config FILE` is parsed as `--config FILE serve`.
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) {
      std::vector<std::string> moved = {args[i], args[i + 1]};
      args.erase(args.begin() + static_cast<long>(i), args.begin() + static_cast<long>(i) + 2);
      args.insert(args.begin(), moved.begin(), moved.end());
      break;
    }
    if (args[i].rfind("--config=", 0) == 0) {
      auto option = args[i];
      args.erase(args.begin() + static_cast<long>(i));
      args.insert(args.begin(), option);
      break;
    }
  }
  if (auto code = cli::parse_command_line(app, "outbox-broker", std::move(args))) return *code;

  cli::install_stop_handlers(&stop_running_server);
  try {
    if (*serve_command) {
      auto logger = cli::make_stderr_logger("outbox-broker", log_level, log_format);
      try {
        return serve(serve_settings, logger);
      } catch (const UsageError& error) {
        logger->error("{}", error.what());
        return cli::exit_usage;
      }
    }
    if (*stats_command) return stats(client_settings);
    if (*tail_command) return tail(client_settings);
    if (*keygen_command) return keygen(keygen_settings);
  } catch (const UsageError& error) {
    std::cerr << "outbox-broker: " << error.what() << "\n";
    return cli::exit_usage;
  } catch (const std::exception& error) {
    std::cerr << "outbox-broker: " << error.what() << "\n";
    return cli::exit_failure;
  }
  return cli::exit_failure;
}
