// outbox-relay: forwards one outbox database (or every outbox database of a
// directory) to outbox-broker or to a NATS JetStream stream, and the operator commands that inspect
// and repair that database. Parses flags (and a config file), sets up signals, and hands over to
// the commands in cli/ (run, status, dead, replay, drop).
#include <malloc.h>
#include <sqlite3.h>

#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/config.hpp"
#include "cli/process.hpp"
#include "outbox/relay_store.hpp"

namespace {

constexpr const char* kCommands[] = {"run", "status", "dead", "replay", "drop"};

// A first word that is no flag must name a command: "outbox-relay frobnicate"
// gets one line that lists them rather than CLI11's text about extra arguments.
bool known_command(const std::string& word) {
  for (const char* command : kCommands) {
    if (word == command) return true;
  }
  return false;
}

// " drop: app.db" for an operator command on one database, so that the line
// of `error` names what it was doing and where (the database only when the
// message does not already); empty for run, which names both in its own
// messages.
std::string operator_context(const relay::commands::CommandLine& line, const std::string& error) {
  auto on = [&error](const char* command, const std::string& db) {
    std::string context = " " + std::string(command);
    if (!db.empty() && error.find(db) == std::string::npos) context += ": " + db;
    return context;
  };
  if (*line.status_command) return on("status", line.status.db);
  if (*line.dead_command) return on("dead", line.dead.db);
  if (*line.replay_command) return on("replay", line.replay.db);
  if (*line.drop_command) return on("drop", line.drop.db);
  return "";
}

int run_command(const relay::commands::CommandLine& line) {
  namespace commands = relay::commands;
  try {
    if (*line.run_command) return commands::run(line.run);
    if (*line.status_command) return commands::show_status(line.status);
    if (*line.dead_command) return commands::list_dead(line.dead);
    if (*line.replay_command) return commands::replay(line.replay);
    if (*line.drop_command) return commands::drop(line.drop);
  } catch (const cli::UsageError& error) {
    std::fprintf(stderr, "outbox-relay: %s\n", error.what());
    return cli::exit_usage;
  } catch (const outbox::Error& error) {
    const auto context = operator_context(line, error.what());
    // The operator commands wait RelayOptions' default busy timeout for a lock.
    const bool busy = !context.empty() && (error.extended_code() & 0xff) == SQLITE_BUSY;
    const auto explanation = " (another connection held its write lock past the busy timeout of " +
                             cli::format_duration(outbox::RelayOptions{}.busy_timeout) +
                             ": a producer's or a relay's transaction, a backup; try again)";
    std::fprintf(stderr, "outbox-relay%s: %s%s\n", context.c_str(), error.what(),
                 busy ? explanation.c_str() : "");
    return cli::exit_code_for(error);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "outbox-relay: unexpected error: %s\n", error.what());
    return cli::exit_failure;
  }
  return cli::exit_usage;
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
  cli::install_stop_handlers(&relay::commands::stop_running_relay);
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
  relay::commands::CommandLine line;
  line.add_to(app);

  if (argc > 1 && argv[1][0] != '-' && !known_command(argv[1])) {
    std::fprintf(stderr, "outbox-relay: unknown command '%s' (run, status, dead, replay, drop)\n",
                 argv[1]);
    return cli::exit_usage;
  }
  app.name("outbox-relay");
  if (auto code = cli::parse_command_line(app, "outbox-relay",
                                          std::vector<std::string>(argv + 1, argv + argc))) {
    return *code;
  }
  line.finish_parse();
  return run_command(line);
}
