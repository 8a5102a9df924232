// The commands of outbox-broker, one function each, and the flags each one
// adds to its CLI11 subcommand. main.cpp only builds the app and dispatches.
//
// Errors: bad usage (a flag, a key file, a config value) is thrown as
// UsageError (exit 2); other outcomes are the exit codes of cli/process.hpp,
// returned. Thread safety: one command per process, on the main thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include <spdlog/logger.h>
#include <CLI/CLI.hpp>

#include "cli/metrics_server.hpp"

namespace broker::cli_commands {

class UsageError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

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

// serve: the daemon (serve.cpp). stop_running_server() is the stop handler
// (async-signal-safe).
void add_serve_options(CLI::App* serve_command, ServeSettings& serve_settings,
                       std::string& log_format);
int serve(const ServeSettings& settings, const std::shared_ptr<spdlog::logger>& logger);
void stop_running_server() noexcept;

// stats and tail: clients of a running broker (client_commands.cpp, tail.cpp).
void add_client_options(CLI::App* command, ClientSettings& client_settings);
void add_tail_options(CLI::App* tail_command, ClientSettings& client_settings);
int stats(const ClientSettings& settings);
int tail(const ClientSettings& settings);

// keygen: a new CURVE key pair (client_commands.cpp).
void add_keygen_options(CLI::App* keygen_command, KeygenSettings& keygen_settings);
int keygen(const KeygenSettings& settings);

}  // namespace broker::cli_commands
