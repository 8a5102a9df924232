// The outbox-broker command line: stats and tail output, config file, exit codes.
#include <catch2/catch.hpp>

#include <fstream>

#include "broker_process.hpp"

using namespace broker_test;
using test_support::run;

TEST_CASE("stats --json and tail --json show what was stored") {
  test_support::TempDir dir("broker-cli");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());
  std::vector<wire::OutgoingMessage> batch = {
      message("cli-1", "hello \"world\"", "orders", "k1"),
      message("cli-2", std::string("\x00\xff\x10", 3), "orders", "k2")};
  REQUIRE(client->publish(1, batch, 20s).ok());
  REQUIRE(client->publish(2, batch, 20s).ok());

  auto stats = run(broker_binary(), {"stats", "--connect", broker.endpoint(), "--json"});
  INFO(stats.err);
  REQUIRE(stats.status.code == 0);
  auto& json = stats.out;
  CHECK_THAT(json, Catch::Contains("\"stored\":2"));
  CHECK_THAT(json, Catch::Contains("\"duplicates\":2"));
  CHECK_THAT(json, Catch::Contains("\"conflicts\":0"));
  CHECK_THAT(json, Catch::Contains("\"rejected\":0"));
  CHECK_THAT(json, Catch::Contains("\"malformed\":0"));
  CHECK_THAT(json, Catch::Contains("\"orders\":{\"messages\":2,\"last_offset\":2}"));

  auto tail =
      run(broker_binary(), {"tail", "--connect", broker.endpoint(), "--topic", "orders", "--json"});
  INFO(tail.err);
  REQUIRE(tail.status.code == 0);
  auto lines = test_support::lines(tail.out);
  REQUIRE(lines.size() == 2);
  CHECK_THAT(lines[0], Catch::StartsWith("{\"topic\":\"orders\",\"offset\":1,\"msg_id\":\"cli-1\","
                                         "\"key\":\"k1\""));
  CHECK_THAT(lines[0], Catch::Contains("\"payload\":\"hello \\\"world\\\"\""));
  CHECK_THAT(lines[1], Catch::Contains("\"payload_base64\":\"AP8Q\""));

  // With a group: the second run starts where the first one stopped.
  auto first = run(broker_binary(), {"tail", "--connect", broker.endpoint(), "--topic", "orders",
                                     "--group", "g", "--max", "1", "--json"});
  REQUIRE(first.status.code == 0);
  CHECK_THAT(first.out, Catch::Contains("\"offset\":1"));
  auto second = run(broker_binary(), {"tail", "--connect", broker.endpoint(), "--topic", "orders",
                                      "--group", "g", "--json"});
  REQUIRE(second.status.code == 0);
  REQUIRE(test_support::lines(second.out).size() == 1);
  CHECK_THAT(second.out, Catch::Contains("\"offset\":2"));
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
    auto result = run(broker_binary(), {"serve", "--config", (dir / "bad.toml").string()});
    CHECK(result.status.code == 2);
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
  CHECK_THAT(stats.out, Catch::Contains("\"stored\":0"));
  // The broker's own key is not an allowed client key.
  auto refused =
      run(broker_binary(), {"stats", "--connect", broker.endpoint(), "--timeout-ms", "1000",
                            "--curve-server-public-key-file", (dir / "server.public").string(),
                            "--curve-secret-key-file", (dir / "server.secret").string()});
  CHECK(refused.status.code == 5);
}
