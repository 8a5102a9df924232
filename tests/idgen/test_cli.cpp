// Runs the real `idgen` binary and checks exit statuses and output.
#include <algorithm>
#include <charconv>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "idgen/encoding.hpp"
#include "idgen/snowflake.hpp"
#include "test_support.hpp"

using test_support::lines;
using test_support::run;

namespace {

const std::string idgen_bin = OUTBOX_BIN_IDGEN_CLI;

std::uint64_t to_number(const std::string& text) {
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  REQUIRE(ec == std::errc());
  REQUIRE(end == text.data() + text.size());
  return value;
}

// The "one-line error, exit 2" contract for bad input.
void check_usage_error(const std::vector<std::string>& args, const std::string& mentions) {
  INFO("idgen " << [&] {
    std::string joined;
    for (const auto& arg : args) joined += arg + " ";
    return joined;
  }());
  const auto result = run(idgen_bin, args, std::chrono::seconds(30), {"IDGEN_WORKER_ID=1"});
  CHECK(result.status.exited);
  CHECK(result.status.code == 2);
  CHECK(result.out.empty());
  const auto error_lines = lines(result.err);
  REQUIRE(error_lines.size() == 1);
  CHECK_THAT(error_lines[0], Catch::StartsWith("idgen: error: ") && Catch::Contains(mentions));
}

}  // namespace

TEST_CASE("idgen gen: 1,000,000 ids are unique and strictly increasing", "[idgen][cli]") {
  const auto result = run(idgen_bin, {"gen", "-n", "1000000", "--worker", "17"});
  REQUIRE(result.status.exited);
  REQUIRE(result.status.code == 0);
  CHECK(result.err.empty());
  const auto ids = lines(result.out);
  REQUIRE(ids.size() == 1'000'000);
  std::uint64_t previous = 0;
  for (const auto& text : ids) {
    const std::uint64_t id = to_number(text);
    REQUIRE(id > previous);  // strictly increasing, hence unique
    previous = id;
  }
  CHECK(idgen::decode(idgen::Layout::standard(), previous).worker == 17);
}

TEST_CASE("idgen gen: worker from --worker, else IDGEN_WORKER_ID, else 0 with a warning",
          "[idgen][cli]") {
  const auto layout = idgen::Layout::standard();
  auto from_env =
      run(idgen_bin, {"gen", "-n", "3"}, std::chrono::seconds(30), {"IDGEN_WORKER_ID=12"});
  REQUIRE(from_env.status.code == 0);
  CHECK(from_env.err.empty());
  for (const auto& id : lines(from_env.out))
    CHECK(idgen::decode(layout, to_number(id)).worker == 12);

  auto flag_wins =
      run(idgen_bin, {"gen", "--worker", "5"}, std::chrono::seconds(30), {"IDGEN_WORKER_ID=12"});
  REQUIRE(flag_wins.status.code == 0);
  CHECK(idgen::decode(layout, to_number(lines(flag_wins.out).at(0))).worker == 5);

  auto defaulted = run(idgen_bin, {"gen"}, std::chrono::seconds(30), {"IDGEN_WORKER_ID="});
  // An empty variable is a bad value, not "unset".
  CHECK(defaulted.status.code == 2);
  CHECK_THAT(defaulted.err, Catch::Contains("IDGEN_WORKER_ID"));
}

TEST_CASE("idgen gen: without any worker setting, warns once and uses 0", "[idgen][cli]") {
  // ChildProcess passes our environment on; make sure the variable is absent
  // by running through env -u.
  const auto result = run("/usr/bin/env", {"-u", "IDGEN_WORKER_ID", idgen_bin, "gen", "-n", "2"});
  REQUIRE(result.status.code == 0);
  const auto warnings = lines(result.err);
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0], Catch::Contains("warning") && Catch::Contains("worker 0"));
  CHECK(idgen::decode(idgen::Layout::standard(), to_number(lines(result.out).at(0))).worker == 0);
}

TEST_CASE("idgen gen: formats, layouts and JSON strings", "[idgen][cli]") {
  for (const std::string format : {"hex", "base62", "base32", "dec"}) {
    const auto result = run(idgen_bin, {"gen", "-n", "50", "-w", "3", "--format", format});
    REQUIRE(result.status.code == 0);
    const auto encoding = *idgen::parse_encoding(format);
    std::uint64_t previous = 0;
    for (const auto& text : lines(result.out)) {
      const auto id = idgen::decode(text, encoding);
      CHECK(id > previous);
      previous = id;
    }
  }
  const auto sony = run(idgen_bin, {"gen", "-n", "3", "-w", "65000", "--layout", "sonyflake"});
  REQUIRE(sony.status.code == 0);
  CHECK(idgen::decode(idgen::Layout::sonyflake(), to_number(lines(sony.out).at(2))).worker ==
        65000);

  const auto json = run(idgen_bin, {"gen", "-n", "2", "-w", "1", "--json"});
  REQUIRE(json.status.code == 0);
  const auto json_lines = lines(json.out);
  REQUIRE(json_lines.size() == 2);
  CHECK_THAT(json_lines[0], Catch::Matches(R"(\["[0-9]+",)"));
  CHECK_THAT(json_lines[1], Catch::Matches(R"("[0-9]+"\])"));
  const auto ids = nlohmann::json::parse(json.out);
  REQUIRE(ids.is_array());
  CHECK(ids.size() == 2);
}

TEST_CASE("idgen decode and compose are inverses", "[idgen][cli]") {
  const auto composed = run(
      idgen_bin, {"compose", "--time", "2026-03-01T12:00:00.123Z", "--worker", "7", "--seq", "5"});
  REQUIRE(composed.status.code == 0);
  const std::string id = lines(composed.out).at(0);
  CHECK(to_number(id) == idgen::compose(idgen::Layout::standard(),
                                        {idgen::parse_utc("2026-03-01T12:00:00.123Z"), 7, 5}));

  const auto decoded = run(idgen_bin, {"decode", id, "--json"});
  REQUIRE(decoded.status.code == 0);
  const auto parts = nlohmann::json::parse(decoded.out);
  CHECK(parts.at("timestamp_ms") == 1772366400123);
  CHECK(parts.at("time") == "2026-03-01T12:00:00.123Z");
  CHECK(parts.at("worker") == 7);
  CHECK(parts.at("sequence") == 5);
  CHECK(parts.at("id") == id);
  CHECK(lines(decoded.out).size() == 1);

  const auto text = run(idgen_bin, {"decode", id});
  REQUIRE(text.status.code == 0);
  CHECK_THAT(text.out,
             Catch::Contains("2026-03-01T12:00:00.123Z") && Catch::Contains("worker        7"));

  const auto hex = run(idgen_bin, {"compose", "-t", "2026-03-01T12:00:00Z", "-w", "1", "--layout",
                                   "sonyflake", "--format", "hex"});
  REQUIRE(hex.status.code == 0);
  const auto back = run(idgen_bin, {"decode", lines(hex.out).at(0), "--format", "hex", "--layout",
                                    "sonyflake", "--json"});
  REQUIRE(back.status.code == 0);
  const auto back_parts = nlohmann::json::parse(back.out);
  CHECK(back_parts.at("time") == "2026-03-01T12:00:00.000Z");
  CHECK(back_parts.at("worker") == 1);
}

TEST_CASE("idgen decode shows the time in a UUID v7", "[idgen][cli]") {
  const auto made = run(idgen_bin, {"uuid"});
  REQUIRE(made.status.code == 0);
  const std::string uuid = lines(made.out).at(0);
  const auto decoded = run(idgen_bin, {"decode", uuid, "--json"});
  REQUIRE(decoded.status.code == 0);
  const auto parts = nlohmann::json::parse(decoded.out);
  CHECK(parts.at("version") == 7);
  CHECK(parts.at("timestamp_ms").is_number_integer());
  const auto v4 = run(idgen_bin, {"decode", "9d3395fc-1ac1-4929-bb9a-1741e17c0cca"});
  REQUIRE(v4.status.code == 0);
  CHECK_THAT(v4.out, Catch::Contains("version       4"));
  check_usage_error({"decode", "9d3395fc-1ac1-4929-bb9a-1741e17c0cxa"}, "'x' at position 35");
}

TEST_CASE("idgen layout shows bits, epoch, tick, max rate and expiry", "[idgen][cli]") {
  const auto standard = run(idgen_bin, {"layout"});
  REQUIRE(standard.status.code == 0);
  CHECK_THAT(standard.out, Catch::Contains("time 41, worker 10, sequence 12"));
  CHECK_THAT(standard.out, Catch::Contains("2026-01-01T00:00:00.000Z"));
  CHECK_THAT(standard.out, Catch::Contains("4,096,000 per worker"));
  CHECK_THAT(standard.out, Catch::Contains("expires       2095-09-07"));

  const auto custom = run(idgen_bin, {"layout", "time=39,worker=14,seq=10,tick=10ms", "--json"});
  REQUIRE(custom.status.code == 0);
  const auto layout = nlohmann::json::parse(custom.out);
  CHECK(layout.at("max_ids_per_sec") == 102400);
  CHECK(layout.at("tick_ms") == 10);
}

TEST_CASE("idgen uuid prints v7 by default and v4 on request", "[idgen][cli]") {
  const auto v7 = run(idgen_bin, {"uuid", "-n", "1000"});
  REQUIRE(v7.status.code == 0);
  const auto v7_lines = lines(v7.out);
  REQUIRE(v7_lines.size() == 1000);
  CHECK(std::is_sorted(v7_lines.begin(), v7_lines.end()));
  CHECK(std::adjacent_find(v7_lines.begin(), v7_lines.end()) == v7_lines.end());
  for (const auto& line : v7_lines) {
    REQUIRE(line.size() == 36);
    REQUIRE(line[14] == '7');
  }
  const auto v4 = run(idgen_bin, {"uuid", "--v4", "-n", "3"});
  REQUIRE(v4.status.code == 0);
  for (const auto& line : lines(v4.out)) CHECK(line[14] == '4');
}

TEST_CASE("idgen bench --json reports ids_per_sec and limit_per_sec", "[idgen][cli]") {
  // Only the report's shape is checked; speed is measured, not asserted.
  const auto result = run(idgen_bin, {"bench", "--threads", "2", "--seconds", "0.2", "--json"});
  REQUIRE(result.status.code == 0);
  CHECK(lines(result.out).size() == 1);
  const auto report = nlohmann::json::parse(result.out);
  CHECK(report.at("ids_per_sec").is_number_integer());
  CHECK(report.at("ids_per_sec") >= 0);
  CHECK(report.at("limit_per_sec") == 4096000);
}

TEST_CASE("bad input gets a one-line error naming it and exit status 2", "[idgen][cli]") {
  check_usage_error({"decode", "abc"}, "'a' at position 1");
  check_usage_error({"gen", "--worker", "5000"}, "--worker 5000 is out of range 0..1023");
  check_usage_error({"gen", "-n", "-1"}, "-n");
  check_usage_error({"gen", "-n", "0"}, "-n");
  check_usage_error({"gen", "--layout", "time=41,worker=10,seq=13"}, "sum to 63");
  check_usage_error({"layout", "time=41,worker=10"}, "missing seq");
  check_usage_error({"gen", "--frobnicate"}, "--frobnicate");
  check_usage_error({"gen", "--format", "octal"}, "--format 'octal'");
  check_usage_error({"decode"}, "id is required");
  check_usage_error({"decode", "9223372036854775808"}, "sign bit");
  check_usage_error({"compose", "--time", "noon", "--worker", "1"}, "--time");
  check_usage_error({"compose", "--time", "2020-01-01T00:00:00Z", "--worker", "1"},
                    "before the layout's epoch");
  check_usage_error({"uuid", "--v4", "--v7"}, "exclude");
  check_usage_error({"bench", "--threads", "0"}, "--threads");
  check_usage_error({"bench", "--seconds", "forever"}, "--seconds");
  check_usage_error({}, "subcommand");
  check_usage_error({"mint"}, "mint");
}

TEST_CASE("idgen exit status 4 for an expired layout", "[idgen][cli]") {
  const auto result =
      run(idgen_bin, {"gen", "-w", "1", "--layout", "time=20,worker=10,seq=33,epoch=0"});
  CHECK(result.status.code == 4);
  CHECK(lines(result.err).size() == 1);
  CHECK_THAT(result.err, Catch::Contains("expired"));
}

TEST_CASE("idgen exit status 3 when the state file shows a clock rollback", "[idgen][cli]") {
  test_support::TempDir dir("idgen-cli");
  const auto state = (dir / "worker.state").string();
  // A mark an hour ahead of now: as if the clock had been rolled back an hour.
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  {
    std::FILE* file = std::fopen(state.c_str(), "w");
    REQUIRE(file != nullptr);
    std::fprintf(file, "idgen-state 1 %lld\n", static_cast<long long>(now + 3'600'000));
    std::fclose(file);
  }
  const auto refused = run(idgen_bin, {"gen", "-w", "1", "--state-file", state});
  CHECK(refused.status.code == 3);
  CHECK(lines(refused.err).size() == 1);
  CHECK_THAT(refused.err, Catch::Contains("clock moved backwards"));

  const auto borrowed = run(
      idgen_bin, {"gen", "-w", "1", "-n", "5", "--state-file", state, "--clock-policy", "borrow"});
  REQUIRE(borrowed.status.code == 0);
  const auto first = idgen::decode(idgen::Layout::standard(), to_number(lines(borrowed.out).at(0)));
  CHECK(first.timestamp_unix_ms >= now + 3'600'000);
}

TEST_CASE("idgen --help explains the commands and exits 0", "[idgen][cli]") {
  const auto help = run(idgen_bin, {"--help"});
  CHECK(help.status.code == 0);
  CHECK_THAT(help.out,
             Catch::Contains("gen") && Catch::Contains("decode") && Catch::Contains("bench"));
  const auto gen_help = run(idgen_bin, {"gen", "--help"});
  CHECK(gen_help.status.code == 0);
  CHECK_THAT(gen_help.out, Catch::Contains("IDGEN_WORKER_ID") && Catch::Contains("--layout"));
}
