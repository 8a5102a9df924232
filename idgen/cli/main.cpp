// idgen: make and inspect ids from the command line. Parses flags, sets up
// logging and calls the commands; see `idgen --help`.
#include <cstdio>
#include <exception>
#include <memory>

#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "idgen/error.hpp"

namespace {

int exit_status_for(idgen::ErrorCode code) {
  switch (code) {
    case idgen::ErrorCode::invalid_argument:
      return idgen::cli::exit_usage;
    case idgen::ErrorCode::clock_moved_backwards:
      return idgen::cli::exit_clock;
    case idgen::ErrorCode::layout_exhausted:
      return idgen::cli::exit_layout;
    case idgen::ErrorCode::io:
      return idgen::cli::exit_failure;
  }
  return idgen::cli::exit_failure;
}

void print_error(const char* message) {
  std::fprintf(stderr, "idgen: error: %s\n", message);
}

}  // namespace

int main(int argc, char** argv) {
  namespace cli = idgen::cli;
  auto logger =
      std::make_shared<spdlog::logger>("idgen", std::make_shared<spdlog::sinks::stderr_sink_st>());
  logger->set_pattern("idgen: %l: %v");

  CLI::App app{
      "Make and inspect snowflake ids and UUIDs.\n"
      "Exit status: 0 ok, 1 I/O failure, 2 bad usage or input, 3 clock moved backwards "
      "beyond the policy, 4 layout expired or exhausted.",
      "idgen"};
  app.require_subcommand(1);
  app.fallthrough(false);
  const std::string layout_help =
      "Layout: standard (default), snowflake, sonyflake, or a spec "
      "time=41,worker=10,seq=12[,epoch=ISO|ms][,tick=1ms][,order=tws|tsw]";
  const std::string format_help = "Id text form: dec (default), hex, base62, base32";

  cli::GenOptions gen;
  auto* gen_command = app.add_subcommand("gen", "Print new snowflake ids, one per line");
  gen_command->add_option("-n,--count", gen.count, "How many ids to print (default 1)");
  gen_command->add_option("-w,--worker", gen.worker,
                          "Worker id, unique per running generator; else $IDGEN_WORKER_ID, else 0 "
                          "with a warning");
  gen_command->add_option("-l,--layout", gen.layout, layout_help);
  gen_command->add_option("-f,--format", gen.format, format_help);
  gen_command->add_option("--clock-policy", gen.clock_policy,
                          "When the clock steps back: wait (default, up to --max-backward-wait), "
                          "fail, or borrow (count on from the last id)");
  gen_command->add_option("--max-backward-wait", gen.max_backward_wait_ms,
                          "Milliseconds the wait policy waits for the clock (default 5)");
  gen_command->add_option(
      "--state-file", gen.state_file,
      "Persist a high-water mark here so a restart after a clock rollback never "
      "reissues ids");
  gen_command->add_flag("--json", gen.json, "Print a JSON array of id strings");

  cli::DecodeOptions decode;
  auto* decode_command = app.add_subcommand(
      "decode", "Show the time, worker and sequence of an id (or the version and time of a UUID)");
  decode_command->add_option("id", decode.id, "The id (decimal unless --format says otherwise)")
      ->required();
  decode_command->add_option("-l,--layout", decode.layout, layout_help);
  decode_command->add_option("-f,--format", decode.format, format_help);
  decode_command->add_flag("--json", decode.json,
                           "Print one JSON object (timestamp_ms, time, worker, sequence)");

  cli::ComposeOptions compose;
  auto* compose_command =
      app.add_subcommand("compose", "Build the id for a time, worker and sequence");
  compose_command
      ->add_option("-t,--time", compose.time, "ISO-8601 time, e.g. 2026-03-01T12:00:00.000Z")
      ->required();
  compose_command->add_option("-w,--worker", compose.worker, "Worker id")->required();
  compose_command->add_option("-s,--seq", compose.sequence, "Sequence within the tick (default 0)");
  compose_command->add_option("-l,--layout", compose.layout, layout_help);
  compose_command->add_option("-f,--format", compose.format, format_help);
  compose_command->add_flag("--json", compose.json, "Print one JSON object");

  cli::LayoutOptions layout;
  auto* layout_command =
      app.add_subcommand("layout", "Show a layout: bits, epoch, tick, max ids/s, expiry date");
  layout_command->add_option("layout", layout.layout, layout_help);
  layout_command->add_flag("--json", layout.json, "Print one JSON object");

  cli::UuidOptions uuid;
  auto* uuid_command = app.add_subcommand("uuid", "Print UUIDs (version 7 unless --v4)");
  uuid_command->add_flag("--v4", uuid.v4, "Random UUIDs (version 4)");
  uuid_command->add_flag("--v7", uuid.v7, "Time-ordered UUIDs (version 7, RFC 9562; default)");
  uuid_command->add_option("-n,--count", uuid.count, "How many (default 1)");
  uuid_command->add_flag("--json", uuid.json, "Print a JSON array of strings");

  cli::BenchOptions bench;
  auto* bench_command = app.add_subcommand(
      "bench", "Measure ids/s of one generator against its layout's limit for one worker");
  bench_command->add_option("-t,--threads", bench.threads,
                            "Threads sharing the generator (default 1)");
  bench_command->add_option("-s,--seconds", bench.seconds, "How long to measure (default 2)");
  bench_command->add_option("-l,--layout", bench.layout, layout_help);
  bench_command->add_flag("--json", bench.json,
                          "Print one JSON object (ids_per_sec, limit_per_sec)");

  // CLI11 would only say "a subcommand is required"; name the unknown one.
  const auto is_command = [&app](const std::string& name) {
    for (const auto* command : app.get_subcommands({})) {
      if (command->check_name(name)) return true;
    }
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !is_command(argv[1])) {
    print_error((std::string("unknown command '") + argv[1] +
                 "' (commands: gen, decode, compose, layout, uuid, bench; see idgen --help)")
                    .c_str());
    return cli::exit_usage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    if (error.get_exit_code() == 0) return app.exit(error);  // --help
    print_error((std::string(error.what()) + " (see idgen --help)").c_str());
    return cli::exit_usage;
  }

  try {
    if (*gen_command) return cli::run_gen(gen, logger);
    if (*decode_command) return cli::run_decode(decode);
    if (*compose_command) return cli::run_compose(compose);
    if (*layout_command) return cli::run_layout(layout);
    if (*uuid_command) return cli::run_uuid(uuid);
    if (*bench_command) return cli::run_bench(bench, logger);
  } catch (const idgen::Error& error) {
    print_error(error.what());
    return exit_status_for(error.code());
  } catch (const std::exception& error) {
    print_error(error.what());
    return cli::exit_failure;
  }
  return cli::exit_usage;
}
