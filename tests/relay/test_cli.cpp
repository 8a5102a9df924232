// outbox-relay's command line: bad input gets a one-line error and a
// distinct exit code; an unreachable broker is retried, not fatal.
#include <fstream>

#include <zmq.hpp>

#include "relay_harness.hpp"

using namespace relay_test;

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitStorage = 3;
constexpr int kExitNotFound = 7;

test_support::RunResult relay_cli(const std::vector<std::string>& args) {
  return test_support::run(relay_binary(), args, 30s);
}

void check_one_line_error(const test_support::RunResult& result, int code,
                          const std::string& needle) {
  INFO(result.err);
  CHECK(result.status.exited);
  CHECK(result.status.code == code);
  CHECK(result.err.find(needle) != std::string::npos);
  CHECK(test_support::lines(result.err).size() == 1);
}

// A loopback endpoint nobody listens on: bind a port the system picks, then free it.
std::string unused_endpoint() {
  zmq::context_t context;
  zmq::socket_t socket(context, zmq::socket_type::router);
  socket.bind("tcp://127.0.0.1:*");
  auto endpoint = socket.get(zmq::sockopt::last_endpoint);
  socket.close();
  return endpoint;
}

}  // namespace

TEST_CASE("outbox-relay refuses bad flags and values with exit code 2", "[relay][cli]") {
  test_support::TempDir dir("relay-cli");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--no-such-flag"}), kExitUsage,
                       "--no-such-flag");
  check_one_line_error(relay_cli({"run"}), kExitUsage, "--db");
  check_one_line_error(relay_cli({"frobnicate"}), kExitUsage, "frobnicate");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--on-dead", "maybe"}), kExitUsage,
                       "--on-dead");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--batch-size", "0"}), kExitUsage,
                       "--batch-size");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--db-dir", dir.path().string()}),
                       kExitUsage, "--db-dir");
  check_one_line_error(relay_cli({"run", "--db-dir", dir.path().string(), "--sink", "jetstream"}),
                       kExitUsage, "--stream");
  check_one_line_error(relay_cli({"run", "--db-dir", dir.path().string(), "--sink", "jetstream",
                                  "--stream", "s", "--nats-pending-bytes", "1k"}),
                       kExitUsage, "--nats-pending-bytes");
  check_one_line_error(relay_cli({"run", "--db-dir", dir.path().string(), "--metrics-bind",
                                  "127.0.0.1:0", "--metrics-max-databases", "lots"}),
                       kExitUsage, "--metrics-max-databases");
  check_one_line_error(relay_cli({"run", "--db-dir", (dir / "missing").string()}), kExitStorage,
                       "no such directory");
  check_one_line_error(relay_cli({"status", "--db-dir", (dir / "missing").string()}), kExitStorage,
                       "missing");
  check_one_line_error(relay_cli({"status"}), kExitUsage, "--db-dir");
  check_one_line_error(relay_cli({"run", "--db-dir", dir.path().string(), "--glob", ""}),
                       kExitUsage, "--glob: must not be empty");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--retention", "0s"}), kExitUsage,
                       "--retention: '0s' would mean never here: write never if that is meant");

  produce(dir / "app.db", 1, 1);
  check_one_line_error(
      relay_cli({"run", "--db", (dir / "app.db").string(), "--ack-timeout", "soon"}), kExitUsage,
      "--ack-timeout");
  check_one_line_error(relay_cli({"replay", "--db", (dir / "app.db").string()}), kExitUsage,
                       "--msg-id");
  check_one_line_error(relay_cli({"drop", "--db", (dir / "app.db").string(), "--msg-id", "nope"}),
                       kExitNotFound, "nope");

  // A page that cannot be read: the error names the database.
  {
    std::fstream file(dir / "app.db", std::ios::in | std::ios::out | std::ios::binary);
    for (std::streamoff page = 1; page < 8; ++page) {
      file.seekp(page * 4096);
      file << std::string(4096, '\x5a');
    }
  }
  check_one_line_error(relay_cli({"status", "--db", (dir / "app.db").string()}), kExitStorage,
                       "database '" + (dir / "app.db").string() + "'");

  auto help = relay_cli({"run", "--help"});
  CHECK(help.status.code == 0);
  CHECK(help.out.find("--on-dead") != std::string::npos);
  CHECK(help.out.find("--retention") != std::string::npos);
}

TEST_CASE("durations need a unit and numbers are checked, in every flag", "[relay][cli]") {
  for (const char* flag :
       {"--ack-timeout", "--connect-timeout", "--backoff-initial", "--backoff-max", "--lease",
        "--retention", "--cleanup-interval", "--summary-interval", "--drain-timeout"}) {
    INFO(flag);
    // "2" could be seconds or hours: the message says which spellings mean what.
    check_one_line_error(relay_cli({"run", "--db", "x.db", flag, "2"}), kExitUsage,
                         std::string(flag) + ": '2' has no unit: write 2s for seconds or 2h");
  }
  // Three relays with a 1 ms lease took the lease from each other thousands of times.
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--lease", "1ms"}), kExitUsage,
                       "--lease: '1ms' is shorter than the minimum 1s");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--lease", "0"}), kExitUsage, "--lease");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--ack-timeout", "forever"}), kExitUsage,
                       "--ack-timeout");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--broker", "tcp://127.0.0.1:99999"}),
                       kExitUsage,
                       "--broker: 'tcp://127.0.0.1:99999': port '99999' is not 1-65535");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--in-flight", "-1"}), kExitUsage,
                       "--in-flight");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--batch-size", "1.5"}), kExitUsage,
                       "--batch-size");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--batch-bytes", "512"}), kExitUsage,
                       "--batch-bytes: '512' is below the minimum 1k");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--batch-bytes", "2g"}), kExitUsage,
                       "--batch-bytes: '2g' is above the maximum 1g");
  check_one_line_error(relay_cli({"run", "--db", "x.db", "--batch-bytes", "lots"}), kExitUsage,
                       "--batch-bytes: 'lots' is not a size");
  check_one_line_error(relay_cli({"dead", "--db", "x.db", "--limit", "-1"}), kExitUsage,
                       "--limit: '-1'");
  CHECK_FALSE(std::filesystem::exists("x.db"));
}

TEST_CASE("config file mistakes name the file, the line and the key", "[relay][cli]") {
  test_support::TempDir dir("relay-config-lines");
  auto config = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return std::vector<std::string>{"run", "--config", (dir / name).string()};
  };
  check_one_line_error(relay_cli(config("quote.toml", "[run]\ndb = \"b.db\n")), kExitUsage,
                       "quote.toml:2: key 'db': the string is not closed");
  check_one_line_error(
      relay_cli(config("twice.toml", "[run]\ndb = \"a.db\"\nbatch-size = 10\nbatch-size = 20\n")),
      kExitUsage, "twice.toml:4: duplicate key 'batch-size' in [run] (first set on line 3)");
  check_one_line_error(relay_cli(config("lease.toml", "[run]\ndb = \"a.db\"\nlease = \"1ms\"\n")),
                       kExitUsage,
                       "lease.toml:3: key 'lease': '1ms' is shorter than the minimum 1s");
  check_one_line_error(relay_cli(config("bare.toml", "[run]\ndb = \"a.db\"\nack-timeout = 10\n")),
                       kExitUsage, "bare.toml:3: key 'ack-timeout': '10' has no unit");
  check_one_line_error(
      relay_cli(config("bytes.toml", "[run]\ndb = \"a.db\"\nbatch-bytes = \"100\"\n")), kExitUsage,
      "bytes.toml:3: key 'batch-bytes': '100' is below the minimum 1k");
  // A good size passes the strict reader: the run gets as far as the database.
  check_one_line_error(relay_cli(config("good.toml", "[run]\ndb = \"" + (dir / "none.db").string() +
                                                         "\"\nbatch-bytes = \"4m\"\n")),
                       kExitStorage, "none.db");
  check_one_line_error(
      relay_cli(config("flag.toml", "[run]\nallow-short-dedup-window = \"yes\"\n")), kExitUsage,
      "flag.toml:2: key 'allow-short-dedup-window'");
  check_one_line_error(relay_cli(config("outside.toml", "db = \"a.db\"\n")), kExitUsage,
                       "outside.toml:1: key 'db' is outside a section; put it under [run]");
  CHECK_FALSE(std::filesystem::exists(dir / "b.db"));
  CHECK_FALSE(std::filesystem::exists(dir / "\"b.db"));
}

TEST_CASE("a schema_version that is not an integer is refused with exit code 3", "[relay][cli]") {
  test_support::TempDir dir("relay-schema-version");
  auto db = dir / "app.db";
  REQUIRE(produce(db, 1, 1) == 1);
  // SQLite itself would read '2abc' as 2.
  exec_sql(db, "UPDATE outbox_meta SET value = '2abc' WHERE key = 'schema_version'");
  for (const auto& command : {"run", "status"}) {
    INFO(command);
    check_one_line_error(relay_cli({command, "--db", db.string()}), kExitStorage,
                         "schema_version '2abc' (text), not a positive integer");
  }
  exec_sql(db, "UPDATE outbox_meta SET value = 2.5 WHERE key = 'schema_version'");
  check_one_line_error(relay_cli({"status", "--db", db.string()}), kExitStorage, "(real)");
}

TEST_CASE("a malformed config file is refused with exit code 2", "[relay][cli]") {
  test_support::TempDir dir("relay-config-bad");
  {
    std::ofstream config(dir / "bad.toml");
    config << "[run]\ndb = \"x.db\"\nbatch-size = many\n";
  }
  auto result = relay_cli({"run", "--config", (dir / "bad.toml").string()});
  INFO(result.err);
  CHECK(result.status.code == kExitUsage);
  CHECK(result.err.find("batch-size") != std::string::npos);

  {
    std::ofstream config(dir / "unknown.toml");
    config << "[run]\ndb = \"x.db\"\nbatch_sise = 10\n";
  }
  check_one_line_error(relay_cli({"run", "--config", (dir / "unknown.toml").string()}), kExitUsage,
                       "unknown.toml:3: unknown key 'batch_sise' in [run]");

  auto missing = relay_cli({"run", "--config", (dir / "missing.toml").string()});
  CHECK(missing.status.code == kExitUsage);
  CHECK(missing.err.find("missing.toml") != std::string::npos);
}

TEST_CASE("a database without the outbox schema is refused with exit code 3", "[relay][cli]") {
  test_support::TempDir dir("relay-no-schema");
  auto db = dir / "plain.db";
  exec_sql(db, "CREATE TABLE orders(id INTEGER PRIMARY KEY)");
  for (const auto& command : {"run", "status"}) {
    auto result = relay_cli({command, "--db", db.string()});
    check_one_line_error(result, kExitStorage, "outbox");
  }
  check_one_line_error(relay_cli({"status", "--db", (dir / "missing.db").string()}), kExitStorage,
                       "missing.db");
  {
    std::ofstream garbage(dir / "garbage.db");
    garbage << "this is not a database, just some text that is long enough to look like a header";
  }
  check_one_line_error(relay_cli({"status", "--db", (dir / "garbage.db").string()}), kExitStorage,
                       "garbage.db");
}

TEST_CASE("an operator command that cannot get the write lock says so, naming the database",
          "[relay][cli]") {
  test_support::TempDir dir("relay-locked");
  auto db = dir / "app.db";
  REQUIRE(produce(db, 3, 1) == 3);
  // Another connection inside a write transaction for longer than the
  // command's busy timeout (5 s).
  auto holder = sqlite::open_file(db.string(), SQLITE_OPEN_READWRITE);
  sqlite::exec(holder.get(), "BEGIN IMMEDIATE");
  for (const auto& command : {"drop", "replay"}) {
    check_one_line_error(
        relay_cli({command, "--db", db.string(), "--msg-id", "m-1"}), kExitStorage,
        "outbox-relay " + std::string(command) + ": " + db.string() +
            ": database is locked (another connection held its write lock past the busy "
            "timeout of 5s: ");
  }
  sqlite::exec(holder.get(), "ROLLBACK");
  // Free again: the same command gets to the question it was asked.
  check_one_line_error(relay_cli({"drop", "--db", db.string(), "--msg-id", "m-1"}), kExitNotFound,
                       "m-1");
}

TEST_CASE("an unreachable broker is retried and logged while the backlog shows in status",
          "[relay][cli]") {
  test_support::TempDir dir("relay-unreachable");
  auto db = dir / "app.db";
  REQUIRE(produce(db, 50, 2) == 50);
  RelayProcess relay(dir.path(), db, unused_endpoint(),
                     {"--connect-timeout", "100ms", "--backoff-max", "200ms"});
  auto retries = [&] {
    auto log = relay.log();
    std::size_t count = 0;
    for (auto at = log.find("retrying in"); at != std::string::npos;
         at = log.find("retrying in", at + 1)) {
      ++count;
    }
    return count;
  };
  bool retried = test_support::wait_until([&] { return retries() >= 3; }, 30s);
  INFO(relay.log());
  REQUIRE(retried);
  CHECK(relay.process().running());
  auto backlog = outbox_status(db);
  CHECK(backlog.pending == 50);
  CHECK(backlog.delivered_total == 0);
  auto exit = relay.stop();
  CHECK(exit.exited);
  CHECK(exit.code == 0);
}
