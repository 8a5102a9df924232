// outbox-broker: the dedup broker daemon and its inspection commands.
// Builds the command line (CLI11 subcommands, a config file), sets up logging
// and signals, and hands over to one command (commands.hpp).
#include <iostream>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <CLI/CLI.hpp>

#include "cli/args.hpp"
#include "cli/config.hpp"
#include "cli/process.hpp"
#include "commands.hpp"

using namespace broker::cli_commands;

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
  app.fallthrough();  // --config may follow the subcommand
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
  add_serve_options(serve_command, serve_settings, log_format);

  ClientSettings client_settings;
  auto* stats_command = app.add_subcommand("stats", "print a running broker's counters");
  auto* tail_command = app.add_subcommand("tail", "print messages of a topic");
  for (auto* command : {stats_command, tail_command}) add_client_options(command, client_settings);
  add_tail_options(tail_command, client_settings);

  KeygenSettings keygen_settings;
  auto* keygen_command =
      app.add_subcommand("keygen", "write a new CURVE key pair (prints the public key)");
  add_keygen_options(keygen_command, keygen_settings);

  for (auto* command : {serve_command, stats_command, tail_command}) {
    command->add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
        ->capture_default_str();
  }

  if (auto code = cli::parse_command_line(app, "outbox-broker",
                                          std::vector<std::string>(argv + 1, argv + argc))) {
    return *code;
  }

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
