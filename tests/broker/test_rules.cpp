// docs/protocol.md rule by rule against the real daemon: per-message REJECTED
// for fields above their limits, replies in arrival order, consecutive batch
// ids, request ids echoed in ERROR, broker-to-client commands refused, and a
// PUBLISH malformed before its body failing the session.
#include <catch2/catch.hpp>

#include "broker_process.hpp"

using namespace broker_test;

namespace {

const std::string kPublish(1, '\x03');

std::vector<std::string> frames_of(const wire::AnyMessage& message) {
  auto frames = wire::encode(message);
  return {frames.tag, frames.command, frames.body};
}

// The next reply, which must be a `Reply`.
template <typename Reply>
Reply next(broker::Client& client) {
  auto reply = client.receive(20s);
  REQUIRE(reply.has_value());
  REQUIRE(reply->ok());
  auto* typed = std::get_if<Reply>(&reply->value());
  INFO("reply is " << wire::command_name(wire::command_of(reply->value())));
  REQUIRE(typed != nullptr);
  return *typed;
}

wire::ErrorReply next_error(broker::Client& client) {
  return next<wire::ErrorReply>(client);
}

}  // namespace

TEST_CASE("a field above its limit REJECTS that message, not the batch") {
  test_support::TempDir dir("broker-rules");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());
  std::vector<wire::Header> many_headers(65, wire::Header{"h", "v"});
  std::vector<wire::OutgoingMessage> batch = {
      message("ok-1", "a", "orders", "k1"),
      message(std::string(256, 'm'), "b", "orders", "k2"),
      message("after-long-id", "c", "orders", "k2"),  // same key: blocked
      message("long-topic", "d", std::string(256, 't'), "k3"),
      message("long-key", "e", "orders", std::string(4097, 'k')),
      wire::OutgoingMessage{"many-headers", "orders", "k4", many_headers, "f"},
      message("ok-2", "g", "orders", "k5"),
  };
  auto ack = client->publish(1, batch, 20s);
  REQUIRE(ack.ok());
  REQUIRE(ack->entries.size() == batch.size());
  CHECK(ack->entries[0].status == wire::AckStatus::stored);
  CHECK(ack->entries[1].status == wire::AckStatus::rejected);
  CHECK(ack->entries[1].reason == "invalid msg_id");
  CHECK(ack->entries[2].status == wire::AckStatus::blocked);
  CHECK(ack->entries[3].status == wire::AckStatus::rejected);
  CHECK(ack->entries[3].reason == "invalid topic");
  CHECK(ack->entries[4].status == wire::AckStatus::rejected);
  CHECK(ack->entries[4].reason == "key too long");
  CHECK(ack->entries[5].status == wire::AckStatus::rejected);
  CHECK(ack->entries[5].reason == "invalid headers");
  CHECK(ack->entries[6].status == wire::AckStatus::stored);
  CHECK(ack->entries[6].offset == 2);
  // The refused key stays blocked for the session.
  auto later = client->publish(2, std::vector{message("k2-later", "h", "orders", "k2")}, 20s);
  REQUIRE(later.ok());
  CHECK(later->entries[0].status == wire::AckStatus::blocked);
  auto stats = client->stats(20s);
  REQUIRE(stats.ok());
  CHECK(counter(*stats, "rejected") == 4);
  CHECK(counter(*stats, "malformed") == 0);
}

TEST_CASE("replies come back in arrival order, errors included") {
  test_support::TempDir dir("broker-rules");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());
  std::uint64_t stored = 0;
  for (int round = 0; round < 20; ++round) {
    REQUIRE(client->hello("test", 20s).ok());
    auto base = static_cast<std::uint64_t>(round) * 10;
    auto id = "order-" + std::to_string(round);
    REQUIRE(client->send_publish(base + 1, std::vector{message(id, "a")}));
    // A header naming two messages but carrying one: malformed, fails the session.
    std::string body;
    wire::begin_publish_body(body, client->session_id(), base + 2);
    wire::append_publish_message(body, id + "-x", "orders", "k", {}, "b");
    wire::finish_publish_body(body, 2);
    REQUIRE(client->send_raw(std::vector<std::string>{wire::encode_tag(), kPublish, body}));
    REQUIRE(client->send_publish(base + 3, std::vector{message(id + "-y", "c")}));
    REQUIRE(client->send_raw(frames_of(wire::Ping{base + 4})));

    auto ack = next<wire::Ack>(*client);
    CHECK(ack.batch_id == base + 1);
    stored += ack.entries.at(0).status == wire::AckStatus::stored ? 1 : 0;
    auto malformed = next_error(*client);
    CHECK(malformed.request_id == base + 2);
    CHECK(malformed.code == wire::ErrorCode::truncated);
    auto refused = next_error(*client);
    CHECK(refused.request_id == base + 3);
    CHECK(refused.code == wire::ErrorCode::session_failed);
    CHECK(next<wire::Pong>(*client).nonce == base + 4);
  }
  CHECK(stored == 20);
}

TEST_CASE("batch ids of a session are consecutive and a gap or a reorder fails the session") {
  test_support::TempDir dir("broker-rules");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());

  SECTION("the first batch after WELCOME may carry any id, then each one more") {
    REQUIRE(client->publish(1000, std::vector{message("c-1", "a")}, 20s).ok());
    REQUIRE(client->publish(1001, std::vector{message("c-2", "a")}, 20s).ok());
    auto gap = client->publish(1003, std::vector{message("c-3", "a")}, 20s);
    REQUIRE_FALSE(gap.ok());
    CHECK(gap.error().code == wire::ErrorCode::invalid_value);
    CHECK_THAT(gap.error().message, Catch::Contains("consecutive"));
    // The session failed: even the id that would have been next is refused.
    auto next = client->publish(1002, std::vector{message("c-3", "a")}, 20s);
    REQUIRE_FALSE(next.ok());
    CHECK(next.error().code == wire::ErrorCode::session_failed);
    REQUIRE(client->hello("test", 20s).ok());
    auto fresh = client->publish(7, std::vector{message("c-3", "a")}, 20s);
    REQUIRE(fresh.ok());
    CHECK(fresh->entries[0].status == wire::AckStatus::stored);
    CHECK(fresh->entries[0].offset == 3);
  }
  SECTION("a pipelined reorder stores nothing past the gap") {
    REQUIRE(client->send_publish(1, std::vector{message("r-1", "a")}));
    REQUIRE(client->send_publish(3, std::vector{message("r-3", "a")}));
    REQUIRE(client->send_publish(2, std::vector{message("r-2", "a")}));
    CHECK(next<wire::Ack>(*client).batch_id == 1);
    auto reordered = next_error(*client);
    CHECK(reordered.request_id == 3);
    CHECK(reordered.code == wire::ErrorCode::invalid_value);
    auto refused = next_error(*client);
    CHECK(refused.request_id == 2);
    CHECK(refused.code == wire::ErrorCode::session_failed);
    auto stats = client->stats(20s);
    REQUIRE(stats.ok());
    CHECK(counter(*stats, "stored") == 1);
  }
}

TEST_CASE("ERROR names the request it answers whenever its id is readable") {
  test_support::TempDir dir("broker-rules");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  broker::Client client(broker.endpoint());
  auto with_trailing_byte = [](const wire::AnyMessage& message) {
    auto frames = frames_of(message);
    frames[2].push_back('\0');
    return frames;
  };
  REQUIRE(client.send_raw(with_trailing_byte(wire::Fetch{41, "orders", "", 1, false, 0, 0, 0})));
  auto fetch = next_error(client);
  CHECK(fetch.request_id == 41);
  CHECK(fetch.code == wire::ErrorCode::trailing_bytes);
  REQUIRE(client.send_raw(with_trailing_byte(wire::StatsRequest{42})));
  auto stats = next_error(client);
  CHECK(stats.request_id == 42);
  CHECK(stats.code == wire::ErrorCode::trailing_bytes);
  REQUIRE(client.send_raw(frames_of(wire::CommitOffset{43, std::string(300, 't'), "g", 1})));
  auto commit = next_error(client);
  CHECK(commit.request_id == 43);
  CHECK(commit.code == wire::ErrorCode::limit_exceeded);
  REQUIRE(client.send_raw(with_trailing_byte(wire::Ping{44})));
  auto ping = next_error(client);
  CHECK(ping.request_id == 44);
  CHECK(ping.code == wire::ErrorCode::trailing_bytes);
  // HELLO carries no id.
  REQUIRE(client.send_raw(with_trailing_byte(wire::Hello{"x", 0, "", 0})));
  CHECK(next_error(client).request_id == 0);
}

TEST_CASE("commands only the broker sends are refused with unexpected_command") {
  test_support::TempDir dir("broker-rules");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  broker::Client client(broker.endpoint());
  const wire::AnyMessage refused[] = {wire::Pong{7}, wire::Welcome{1, 2, 3, "b"}, wire::Ack{1, {}},
                                      wire::StatsReply{}};
  for (const auto& message : refused) {
    INFO(wire::command_name(wire::command_of(message)));
    REQUIRE(client.send_raw(frames_of(message)));
    auto error = next_error(client);
    CHECK(error.code == wire::ErrorCode::unexpected_command);
  }
  // Even with a body that would not decode.
  REQUIRE(
      client.send_raw(std::vector<std::string>{wire::encode_tag(), std::string(1, '\x0A'), ""}));
  CHECK(next_error(client).code == wire::ErrorCode::unexpected_command);
}

TEST_CASE("a PUBLISH malformed before its body is read fails the session") {
  test_support::TempDir dir("broker-rules");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());
  std::string body;
  wire::begin_publish_body(body, client->session_id(), 5);
  wire::append_publish_message(body, "m-1", "orders", "k", {}, "a");
  wire::finish_publish_body(body, 1);

  SECTION("an extra frame") {
    REQUIRE(client->send_raw(std::vector<std::string>{wire::encode_tag(), kPublish, body, "x"}));
    auto error = next_error(*client);
    CHECK(error.code == wire::ErrorCode::bad_frame_count);
    CHECK(error.request_id == 5);
  }
  SECTION("a protocol version the broker does not speak") {
    REQUIRE(client->send_raw(std::vector<std::string>{wire::encode_tag(9), kPublish, body}));
    auto error = next_error(*client);
    CHECK(error.code == wire::ErrorCode::unsupported_version);
    CHECK(error.request_id == 5);
  }
  auto after = client->publish(6, std::vector{message("m-2", "b")}, 20s);
  REQUIRE_FALSE(after.ok());
  CHECK(after.error().code == wire::ErrorCode::session_failed);
}

TEST_CASE("a max-message-bytes above what one frame carries is refused at startup") {
  test_support::TempDir dir("broker-rules");
  for (const char* size : {"1g", "64m"}) {
    auto result =
        test_support::run(broker_binary(), {"serve", "--db", (dir / "broker.db").string(), "--bind",
                                            "tcp://127.0.0.1:*", "--max-message-bytes", size});
    INFO(result.err);
    CHECK(result.status.code == 2);
    CHECK_THAT(result.err, Catch::Contains("--max-message-bytes"));
    CHECK_THAT(result.err, Catch::Contains("-byte PUBLISH frame carries"));
  }
}

TEST_CASE("a corrupt database is refused at startup with exit 3 and one line") {
  test_support::TempDir dir("broker-rules");
  auto db = dir / "broker.db";
  {
    BrokerProcess broker(dir.path(), db);
    auto client = connect(broker.endpoint());
    std::vector<wire::OutgoingMessage> batch;
    for (int i = 0; i < 2000; ++i) {
      batch.push_back(message("c-" + std::to_string(i), std::string(200, 'p')));
    }
    REQUIRE(client->publish(1, batch, 20s).ok());
    REQUIRE(broker.stop().code == 0);
  }
  {
    std::fstream file(db, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(3 * 16384);
    std::string garbage(4 * 16384, '\x5a');
    file.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
    REQUIRE(file.good());
  }
  auto result = test_support::run(broker_binary(), {"serve", "--db", db.string(), "--bind",
                                                    "tcp://127.0.0.1:*", "--log-level", "warn"});
  INFO(result.err);
  CHECK(result.status.code == 3);
  CHECK_THAT(result.err, Catch::Contains("is corrupt (quick_check:"));
  CHECK(test_support::lines(result.err).size() == 1);
}
