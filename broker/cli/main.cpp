// outbox-broker: the dedup broker daemon and its two inspection commands.
// Parses flags (and a config file), sets up signals, and hands over to the
// commands in this folder (serve, stats, tail, keygen).
#include <exception>
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
#include "outbox/error.hpp"

namespace {

int run_command(const broker::commands::CommandLine& line) {
  namespace commands = broker::commands;
  try {
    if (*line.serve_command) return commands::serve(line.serve, line.log_level);
    if (*line.stats_command) return commands::stats(line.client);
    if (*line.tail_command) return commands::tail(line.client);
    if (*line.keygen_command) return commands::keygen(line.keygen);
  } catch (const cli::UsageError& error) {
    std::cerr << "outbox-broker: " << error.what() << "\n";
    return cli::exit_usage;
  } catch (const outbox::Error& error) {
    std::cerr << "outbox-broker: " << error.what() << "\n";
    return cli::exit_code_for(error);
  } catch (const std::exception& error) {
    std::cerr << "outbox-broker: " << error.what() << "\n";
    return cli::exit_failure;
  }
  return cli::exit_failure;
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
  app.fallthrough();  // --config may follow the subcommand
  // The config file belongs to the top-level app (CLI11 reads it there); the
  // serve settings live in its [serve] section, one key per flag.
  app.set_config("--config", "",
                 "read settings from a TOML file: a [serve] section with the long flag names as "
                 "keys (dedup-window = \"7d\"); flags given on the command line win");
  cli::use_strict_config(app);
  broker::commands::CommandLine line;
  line.add_to(app);

  if (auto code = cli::parse_command_line(app, "outbox-broker",
                                          std::vector<std::string>(argv + 1, argv + argc))) {
    return *code;
  }

  cli::install_stop_handlers(&broker::commands::stop_running_server);
  cli::raise_descriptor_limit();
  return run_command(line);
}
