// The outbox-broker command line: stats and tail output, config file, exit codes.
#include <catch2/catch.hpp>

#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "broker_process.hpp"

using namespace broker_test;
using test_support::run;

namespace {

// A bad flag, value or config file: exit 2 and one line on stderr naming it.
void check_usage_error(const std::vector<std::string>& args,
                       const std::vector<std::string>& needles, int code = 2) {
  auto result = run(broker_binary(), args);
  INFO(result.err);
  CHECK(result.status.exited);
  CHECK(result.status.code == code);
  CHECK(test_support::lines(result.err).size() == 1);
  for (const auto& needle : needles) CHECK_THAT(result.err, Catch::Contains(needle));
}

// Each line of `text` parses as JSON for Python's own parser.
void check_json_lines(const test_support::TempDir& dir, const std::string& text) {
#ifdef OUTBOX_PYTHON3
  std::ofstream(dir / "lines.json") << text;
  auto parsed =
      run(OUTBOX_PYTHON3, {"-m", "json.tool", "--json-lines", (dir / "lines.json").string()});
  INFO(text);
  INFO(parsed.err);
  CHECK(parsed.status.code == 0);
  CHECK(test_support::lines(parsed.out).size() >= test_support::lines(text).size());
#else
  (void)dir;
  (void)text;
  WARN("python3 not found: tail --json output not checked with json.tool");
#endif
}

}  // namespace

TEST_CASE("stats --json and tail --json show what was stored") {
  test_support::TempDir dir("broker-cli");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());
  std::vector<wire::OutgoingMessage> batch = {
      message("cli-1", "hello \"world\"", "orders", "k1"),
      message("cli-2", std::string("\x00\xff\x10", 3), "orders", "k2")};
  // A key that is not UTF-8, a binary header value, a payload with a control character.
  batch.push_back(
      {"cli-3", "orders", "\xff\xfe", {{"trace", std::string("\x01\x02", 2)}}, "tab\tbell\x07"});
  REQUIRE(client->publish(1, batch, 20s).ok());
  REQUIRE(client->publish(2, batch, 20s).ok());

  auto stats = run(broker_binary(), {"stats", "--connect", broker.endpoint(), "--json"});
  INFO(stats.err);
  REQUIRE(stats.status.code == 0);
  const auto json = nlohmann::json::parse(stats.out);
  CHECK(json.at("stored") == 3);
  CHECK(json.at("duplicates") == 3);
  CHECK(json.at("dedup_window_ms") == 0);  // forever
  CHECK(json.at("curve_refused") == 0);
  CHECK(json.at("conflicts") == 0);
  CHECK(json.at("rejected") == 0);
  CHECK(json.at("malformed") == 0);
  CHECK(json.at("topics").at("orders") == nlohmann::json{{"messages", 3}, {"last_offset", 3}});
  check_json_lines(dir, stats.out);

  auto tail =
      run(broker_binary(), {"tail", "--connect", broker.endpoint(), "--topic", "orders", "--json"});
  INFO(tail.err);
  REQUIRE(tail.status.code == 0);
  auto lines = test_support::lines(tail.out);
  REQUIRE(lines.size() == 3);
  // Fields in the documented order: topic, offset, msg_id, key, ...
  const auto first_line = nlohmann::ordered_json::parse(lines[0]);
  std::vector<std::string> keys;
  for (const auto& item : first_line.items()) keys.push_back(item.key());
  REQUIRE(keys.size() >= 4);
  CHECK(std::vector<std::string>(keys.begin(), keys.begin() + 4) ==
        std::vector<std::string>{"topic", "offset", "msg_id", "key"});
  CHECK(first_line.at("topic") == "orders");
  CHECK(first_line.at("offset") == 1);
  CHECK(first_line.at("msg_id") == "cli-1");
  CHECK(first_line.at("key") == "k1");
  CHECK(first_line.at("payload") == "hello \"world\"");
  const auto second_line = nlohmann::json::parse(lines[1]);
  CHECK(second_line.at("payload") == nlohmann::json{{"base64", "AP8Q"}});
  const auto third_line = nlohmann::json::parse(lines[2]);
  CHECK(third_line.at("key") == nlohmann::json{{"base64", "//4="}});
  CHECK(third_line.at("headers") == nlohmann::json{{"trace", {{"base64", "AQI="}}}});
  CHECK(third_line.at("payload").contains("base64"));
  check_json_lines(dir, tail.out);

  // With a group: the second run starts where the first one stopped.
  auto first = run(broker_binary(), {"tail", "--connect", broker.endpoint(), "--topic", "orders",
                                     "--group", "g", "--max", "1", "--json"});
  REQUIRE(first.status.code == 0);
  CHECK(nlohmann::json::parse(first.out).at("offset") == 1);
  auto second = run(broker_binary(), {"tail", "--connect", broker.endpoint(), "--topic", "orders",
                                      "--group", "g", "--json"});
  REQUIRE(second.status.code == 0);
  const auto second_lines = test_support::lines(second.out);
  REQUIRE(second_lines.size() == 2);
  CHECK(nlohmann::json::parse(second_lines[0]).at("offset") == 2);
}

TEST_CASE("serve reads its settings from a config file") {
  test_support::TempDir dir("broker-config");
  auto endpoint_file = dir / "endpoint";
  std::ofstream(dir / "broker.toml") << "[serve]\n"
                                     << "db = \"" << (dir / "broker.db").string() << "\"\n"
                                     << "bind = \"tcp://127.0.0.1:*\"\n"
                                     << "endpoint-file = \"" << endpoint_file.string() << "\"\n"
                                     << "sync = \"normal\"\n"
                                     << "max-message-bytes = \"2k\"\n";
  test_support::ChildProcess process(
      broker_binary(), {"serve", "--config", (dir / "broker.toml").string()}, dir.path());
  REQUIRE(test_support::wait_until(
      [&] { return std::filesystem::exists(endpoint_file) || !process.running(); }, 20s));
  INFO(process.stderr_text());
  REQUIRE(process.running());
  auto text = test_support::read_file(endpoint_file);
  auto endpoint = text.substr(0, text.find('\n'));
  auto client = connect(endpoint);
  auto ack = client->publish(1, std::vector{message("c-1", std::string(3000, 'x'))}, 20s);
  REQUIRE(ack.ok());
  CHECK(ack->entries[0].status == wire::AckStatus::rejected);
  process.signal(SIGTERM);
  auto status = process.wait_for(30s);
  REQUIRE(status.has_value());
  CHECK(status->code == 0);
  CHECK_THAT(process.stdout_text(), Catch::Contains("listening on " + endpoint));
}

TEST_CASE("bad input gives distinct exit codes and one-line errors") {
  test_support::TempDir dir("broker-exit");
  SECTION("unknown flag") {
    auto result = run(broker_binary(), {"serve", "--db", (dir / "b.db").string(), "--bogus"});
    CHECK(result.status.code == 2);
  }
  SECTION("bad value") {
    auto result =
        run(broker_binary(), {"serve", "--db", (dir / "b.db").string(), "--dedup-window", "soon"});
    CHECK(result.status.code == 2);
    CHECK_THAT(result.err, Catch::Contains("--dedup-window"));
  }
  SECTION("malformed config file") {
    std::ofstream(dir / "bad.toml") << "[serve]\nno-such-setting = 1\n";
    check_usage_error({"serve", "--config", (dir / "bad.toml").string()},
                      {"bad.toml:2: unknown key 'no-such-setting' in [serve]"});
  }
  SECTION("database that cannot be opened") {
    std::filesystem::create_directories(dir / "not-a-file");
    auto result = run(broker_binary(), {"serve", "--db", (dir / "not-a-file").string(), "--bind",
                                        "tcp://127.0.0.1:*"});
    CHECK(result.status.code == 3);
  }
  SECTION("endpoint already in use") {
    BrokerProcess broker(dir.path(), dir / "first.db");
    auto result = run(broker_binary(),
                      {"serve", "--db", (dir / "second.db").string(), "--bind", broker.endpoint()});
    CHECK(result.status.code == 4);
    CHECK_THAT(result.err, Catch::Contains("cannot bind"));
  }
  SECTION("no broker to answer") {
    // Bind and close a port so that nothing listens there.
    std::string endpoint;
    {
      BrokerProcess broker(dir.path(), dir / "gone.db");
      endpoint = broker.endpoint();
      CHECK(broker.stop().code == 0);
    }
    auto result = run(broker_binary(), {"stats", "--connect", endpoint, "--timeout-ms", "300"});
    CHECK(result.status.code == 5);
    CHECK_THAT(result.err, Catch::Contains(endpoint));
  }
}

TEST_CASE("numbers, durations and endpoints are checked where they are read") {
  test_support::TempDir dir("broker-values");
  auto db = (dir / "b.db").string();
  // A bare number is not a duration: "2" silently meant 2 seconds.
  check_usage_error({"serve", "--db", db, "--dedup-window", "2"},
                    {"--dedup-window", "'2' has no unit", "2s", "2h"});
  check_usage_error({"serve", "--db", db, "--retention", "30"}, {"--retention", "30s"});
  check_usage_error({"serve", "--db", db, "--dedup-window", "soon"}, {"--dedup-window", "soon"});
  // Zero meant forever, while 30m was refused as too short.
  check_usage_error({"serve", "--db", db, "--dedup-window", "0s"},
                    {"--dedup-window", "'0s' would mean forever here", "write forever"});
  // Short windows are refused unless the risk is accepted by name.
  check_usage_error({"serve", "--db", db, "--dedup-window", "30m"},
                    {"--dedup-window 30m", "shorter than 1h", "--allow-short-dedup-window"});
  check_usage_error({"serve", "--db", db, "--bind", "tcp://127.0.0.1:99999"},
                    {"--bind", "99999", "1-65535"});
  check_usage_error({"serve", "--db", db, "--bind", "tcp://127.0.0.1:0"}, {"--bind"});
  check_usage_error({"serve", "--db", db, "--cache", "999999g"}, {"--cache", "memory"});
  check_usage_error({"serve", "--db", db, "--max-message-bytes", "0"}, {"--max-message-bytes"});
  check_usage_error({"serve", "--db", db, "--max-commit-messages", "-1"},
                    {"--max-commit-messages", "-1"});
  check_usage_error({"tail", "--topic", "t", "--from", "-1"}, {"--from", "'-1'"});
  check_usage_error({"tail", "--topic", "t", "--max", "-1"}, {"--max", "'-1'"});
  check_usage_error({"stats", "--connect", "tcp://127.0.0.1:70000"}, {"--connect", "70000"});
  check_usage_error({"stats", "--timeout-ms", "0"}, {"--timeout-ms"});
  CHECK_FALSE(std::filesystem::exists(dir / "b.db"));  // nothing was started
}

TEST_CASE("config files: one line with the file, the line and the key") {
  test_support::TempDir dir("broker-config-errors");
  auto config = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return std::vector<std::string>{"serve", "--config", (dir / name).string()};
  };
  auto db = "db = \"" + (dir / "b.db").string() + "\"\n";
  // An unterminated quote used to become part of the file name.
  check_usage_error(config("quote.toml", "[serve]\ndb = \"b.db\n"),
                    {"quote.toml:2: key 'db': the string is not closed"});
  check_usage_error(config("twice.toml", "[serve]\n" + db + "sync = \"full\"\n" + db),
                    {"twice.toml:4: duplicate key 'db' in [serve] (first set on line 2)"});
  check_usage_error(config("unknown.toml", "[serve]\n" + db + "bogus = 1\n"),
                    {"unknown.toml:3: unknown key 'bogus' in [serve]"});
  check_usage_error(config("window.toml", "[serve]\n" + db + "dedup-window = 2\n"),
                    {"window.toml:3: key 'dedup-window': '2' has no unit"});
  check_usage_error(config("port.toml", "[serve]\n" + db + "bind = \"tcp://127.0.0.1:99999\"\n"),
                    {"port.toml:3: key 'bind'", "1-65535"});
  check_usage_error(config("section.toml", "[srve]\n" + db),
                    {"section.toml:1: unknown section [srve]"});
  check_usage_error({"serve", "--config", (dir / "missing.toml").string()}, {"missing.toml"});
  CHECK_FALSE(std::filesystem::exists(dir / "b.db"));
}

TEST_CASE("the dedup window is logged at startup and reported by STATS") {
  test_support::TempDir dir("broker-window");
  BrokerProcess broker(dir.path(), dir / "broker.db",
                       {"--dedup-window", "30m", "--allow-short-dedup-window"});
  auto stats = run(broker_binary(), {"stats", "--connect", broker.endpoint(), "--json"});
  INFO(stats.err);
  REQUIRE(stats.status.code == 0);
  CHECK(nlohmann::json::parse(stats.out).at("dedup_window_ms") == 1800000);
  auto text = run(broker_binary(), {"stats", "--connect", broker.endpoint()});
  CHECK_THAT(text.out, Catch::Contains("dedup_window_ms"));
  CHECK_THAT(broker.process().stderr_text(), Catch::Contains("dedup window 30m"));
  // Bound to loopback: no exposure warning.
  CHECK_THAT(broker.process().stderr_text(), !Catch::Contains("reachable from other machines"));
  CHECK(broker.stop().code == 0);
}

TEST_CASE("keygen never overwrites a key or writes through a symlink unless forced") {
  test_support::TempDir dir("broker-keygen-safe");
  auto secret = (dir / "k.secret").string();
  auto public_file = (dir / "k.public").string();
  auto first =
      run(broker_binary(), {"keygen", "--secret-file", secret, "--public-file", public_file});
  REQUIRE(first.status.code == 0);
  CHECK(test_support::file_mode(secret) == 0600);
  auto original = test_support::read_file(secret);

  check_usage_error({"keygen", "--secret-file", secret, "--public-file", public_file},
                    {secret, "exists", "--force"});
  CHECK(test_support::read_file(secret) == original);
  // Neither file is written when the other one exists.
  check_usage_error(
      {"keygen", "--secret-file", (dir / "new.secret").string(), "--public-file", public_file},
      {public_file, "exists"});
  CHECK_FALSE(std::filesystem::exists(dir / "new.secret"));

  // A symlink planted where the key goes is not followed.
  std::ofstream(dir / "elsewhere") << "not a key\n";
  std::filesystem::create_symlink(dir / "elsewhere", dir / "link.secret");
  std::filesystem::create_symlink(dir / "created-through-link", dir / "dangling.secret");
  check_usage_error({"keygen", "--secret-file", (dir / "link.secret").string(), "--public-file",
                     (dir / "link.public").string()},
                    {"link.secret", "exists"});
  check_usage_error({"keygen", "--secret-file", (dir / "dangling.secret").string(), "--public-file",
                     (dir / "dangling.public").string()},
                    {"dangling.secret", "exists"});
  CHECK_FALSE(std::filesystem::exists(dir / "created-through-link"));

  auto forced = run(broker_binary(), {"keygen", "--secret-file", (dir / "link.secret").string(),
                                      "--public-file", public_file, "--force"});
  INFO(forced.err);
  REQUIRE(forced.status.code == 0);
  CHECK_FALSE(std::filesystem::is_symlink(dir / "link.secret"));
  CHECK(test_support::file_mode(dir / "link.secret") == 0600);
  CHECK(test_support::read_file(dir / "elsewhere") == "not a key\n");
  CHECK_THAT(test_support::read_file(public_file),
             Catch::Contains(test_support::lines(forced.out).at(0)));
}

TEST_CASE("keygen writes CURVE keys that serve and stats use") {
  test_support::TempDir dir("broker-keygen");
  auto server = run(broker_binary(), {"keygen", "--secret-file", (dir / "server.secret").string(),
                                      "--public-file", (dir / "server.public").string()});
  REQUIRE(server.status.code == 0);
  auto client = run(broker_binary(), {"keygen", "--secret-file", (dir / "client.secret").string(),
                                      "--public-file", (dir / "client.public").string()});
  REQUIRE(client.status.code == 0);
  auto client_public = test_support::lines(client.out).at(0);
  CHECK(client_public.size() == 40);
  BrokerProcess broker(dir.path(), dir / "broker.db",
                       {"--curve-secret-key-file", (dir / "server.secret").string(),
                        "--allowed-clients-file", (dir / "client.public").string()});
  auto stats =
      run(broker_binary(), {"stats", "--connect", broker.endpoint(), "--json",
                            "--curve-server-public-key-file", (dir / "server.public").string(),
                            "--curve-secret-key-file", (dir / "client.secret").string()});
  INFO(stats.err);
  CHECK(stats.status.code == 0);
  CHECK(nlohmann::json::parse(stats.out).at("stored") == 0);
  // The broker's own key is not an allowed client key.
  auto refused =
      run(broker_binary(), {"stats", "--connect", broker.endpoint(), "--timeout-ms", "1000",
                            "--curve-server-public-key-file", (dir / "server.public").string(),
                            "--curve-secret-key-file", (dir / "server.secret").string()});
  CHECK(refused.status.code == 5);
  // The refused handshake is counted.
  auto after =
      run(broker_binary(), {"stats", "--connect", broker.endpoint(), "--json",
                            "--curve-server-public-key-file", (dir / "server.public").string(),
                            "--curve-secret-key-file", (dir / "client.secret").string()});
  REQUIRE(after.status.code == 0);
  CHECK(nlohmann::json::parse(after.out).at("curve_refused") > 0);
}
