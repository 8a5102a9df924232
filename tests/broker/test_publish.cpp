// Publishing to the real daemon: outcomes per message, sessions, restarts,
// SIGTERM with batches in flight, CURVE.
#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <optional>
#include <set>

#include <zmq.h>

#include "broker_process.hpp"
#include "wire/zmq_io.hpp"

using namespace broker_test;

TEST_CASE("new msg_ids are STORED, resends DUPLICATE, changed payloads CONFLICT") {
  test_support::TempDir dir("broker-publish");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());

  std::vector<wire::OutgoingMessage> batch = {message("id-1", "one"), message("id-2", "two")};
  auto ack = client->publish(1, batch, 20s);
  REQUIRE(ack.ok());
  CHECK(ack->batch_id == 1);
  REQUIRE(ack->entries.size() == 2);
  CHECK(ack->entries[0].status == wire::AckStatus::stored);
  CHECK(ack->entries[0].offset == 1);
  CHECK(ack->entries[1].status == wire::AckStatus::stored);
  CHECK(ack->entries[1].offset == 2);

  auto resend = client->publish(2, batch, 20s);
  REQUIRE(resend.ok());
  CHECK(resend->entries[0].status == wire::AckStatus::duplicate);
  CHECK(resend->entries[0].offset == 1);
  CHECK(resend->entries[1].status == wire::AckStatus::duplicate);
  CHECK(resend->entries[1].offset == 2);

  // In the same batch (so the same group commit): another key goes on, while
  // the conflicting message's own key is held back behind it.
  std::vector<wire::OutgoingMessage> changed = {
      message("id-1", "ONE"), message("id-3", "three", "orders", "other"), message("id-4", "four")};
  auto conflict = client->publish(3, changed, 20s);
  REQUIRE(conflict.ok());
  REQUIRE(conflict->entries.size() == 3);
  CHECK(conflict->entries[0].status == wire::AckStatus::conflict);
  CHECK_FALSE(conflict->entries[0].reason.empty());
  CHECK(conflict->entries[1].status == wire::AckStatus::stored);
  CHECK(conflict->entries[1].offset == 3);
  CHECK(conflict->entries[2].status == wire::AckStatus::blocked);

  auto stats = client->stats(20s);
  REQUIRE(stats.ok());
  CHECK(counter(*stats, "stored") == 3);
  CHECK(counter(*stats, "duplicates") == 2);
  CHECK(counter(*stats, "conflicts") == 1);
  CHECK(broker.stop().code == 0);
}

TEST_CASE("a message above --max-message-bytes is REJECTED, other keys go on") {
  test_support::TempDir dir("broker-large");
  BrokerProcess broker(dir.path(), dir / "broker.db", {"--max-message-bytes", "1k"});
  auto client = connect(broker.endpoint());
  std::vector<wire::OutgoingMessage> batch = {message("small-1", "ok", "orders", "a"),
                                              message("big", std::string(4000, 'x'), "orders", "b"),
                                              message("small-2", "ok too", "orders", "c"),
                                              message("", "no id", "orders", "d")};
  auto ack = client->publish(7, batch, 20s);
  REQUIRE(ack.ok());
  REQUIRE(ack->entries.size() == 4);
  CHECK(ack->entries[0].status == wire::AckStatus::stored);
  CHECK(ack->entries[1].status == wire::AckStatus::rejected);
  CHECK_THAT(ack->entries[1].reason, Catch::Contains("too large"));
  CHECK(ack->entries[2].status == wire::AckStatus::stored);
  CHECK(ack->entries[3].status == wire::AckStatus::rejected);
  // A rejection is an outcome, not a session failure: other keys go on.
  auto next = client->publish(8, std::vector{message("small-3", "fine", "orders", "a")}, 20s);
  REQUIRE(next.ok());
  CHECK(next->entries[0].status == wire::AckStatus::stored);
  auto stats = client->stats(20s);
  REQUIRE(stats.ok());
  CHECK(counter(*stats, "rejected") == 2);
}

TEST_CASE("after a refused message, later messages of its key in the session are BLOCKED") {
  test_support::TempDir dir("broker-blocked");
  BrokerProcess broker(dir.path(), dir / "broker.db", {"--max-message-bytes", "1k"});
  auto client = connect(broker.endpoint());
  REQUIRE(client->publish(1, std::vector{message("c-1", "original", "orders", "conflicted")}, 20s)
              .ok());

  std::vector<wire::OutgoingMessage> batch = {
      message("k-1", "first", "orders", "key-a"),
      message("k-2", std::string(4000, 'x'), "orders", "key-a"),  // REJECTED
      message("k-3", "after the refused one", "orders", "key-a"),
      message("k-4", "other key", "orders", "key-b"),
      message("c-1", "changed", "orders", "conflicted"),  // CONFLICT
      message("k-5", "same key, other topic", "payments", "key-a")};
  // A rejection is known before the write, so it blocks its key even later in
  // the same group commit; a conflict is known only after the write, so it
  // blocks the key from the next group commit on: wait for the ack first.
  auto first_ack = client->publish(2, batch, 20s);
  REQUIRE(first_ack.ok());
  std::vector<wire::OutgoingMessage> later = {message("k-6", "later", "orders", "key-a"),
                                              message("k-7", "later", "orders", "conflicted"),
                                              message("k-8", "later", "orders", "key-b")};
  auto second_ack = client->publish(3, later, 20s);
  REQUIRE(second_ack.ok());
  std::map<std::uint64_t, wire::Ack> acks = {{2, *first_ack}, {3, *second_ack}};
  const auto& first = acks.at(2).entries;
  REQUIRE(first.size() == 6);
  CHECK(first[0].status == wire::AckStatus::stored);
  CHECK(first[1].status == wire::AckStatus::rejected);
  CHECK(first[2].status == wire::AckStatus::blocked);
  CHECK(first[3].status == wire::AckStatus::stored);
  CHECK(first[4].status == wire::AckStatus::conflict);
  CHECK(first[5].status == wire::AckStatus::stored);
  const auto& second = acks.at(3).entries;
  REQUIRE(second.size() == 3);
  CHECK(second[0].status == wire::AckStatus::blocked);
  CHECK(second[1].status == wire::AckStatus::blocked);
  CHECK(second[2].status == wire::AckStatus::stored);

  // A new session starts with no blocked keys.
  REQUIRE(client->hello("test", 20s).ok());
  auto again = client->publish(
      4, std::vector{message("k-3", "after the refused one", "orders", "key-a")}, 20s);
  REQUIRE(again.ok());
  CHECK(again->entries[0].status == wire::AckStatus::stored);
  auto stats = client->stats(20s);
  REQUIRE(stats.ok());
  CHECK(counter(*stats, "blocked") == 3);
}

TEST_CASE("a restarted broker still knows every msg_id it acknowledged") {
  test_support::TempDir dir("broker-restart");
  std::vector<wire::OutgoingMessage> batch;
  for (int i = 0; i < 500; ++i) batch.push_back(message("restart-" + std::to_string(i), "p"));
  std::vector<std::uint64_t> offsets;
  {
    BrokerProcess broker(dir.path(), dir / "broker.db");
    auto client = connect(broker.endpoint());
    auto ack = client->publish(1, batch, 20s);
    REQUIRE(ack.ok());
    for (const auto& entry : ack->entries) {
      REQUIRE(entry.status == wire::AckStatus::stored);
      offsets.push_back(entry.offset);
    }
    CHECK(broker.stop().code == 0);
  }
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());
  auto ack = client->publish(1, batch, 20s);
  REQUIRE(ack.ok());
  REQUIRE(ack->entries.size() == batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i) {
    CHECK(ack->entries[i].status == wire::AckStatus::duplicate);
    CHECK(ack->entries[i].offset == offsets[i]);
  }
}

TEST_CASE("after a failed batch the session is refused until a new HELLO") {
  test_support::TempDir dir("broker-session");
  BrokerProcess broker(dir.path(), dir / "broker.db");

  SECTION("PUBLISH without HELLO is refused") {
    broker::Client client(broker.endpoint());
    auto ack = client.publish(1, std::vector{message("x", "y")}, 20s);
    REQUIRE_FALSE(ack.ok());
    CHECK(ack.error().code == wire::ErrorCode::no_session);
  }

  SECTION("a malformed batch fails the session; later pipelined batches are refused") {
    auto client = connect(broker.endpoint());
    REQUIRE(client->send_publish(1, std::vector{message("s-1", "a")}));
    // Batch 2: a valid header naming two messages but carrying only one.
    std::string body;
    wire::begin_publish_body(body, client->session_id(), 2);
    wire::append_publish_message(body, "s-2", "orders", "k", {}, "b");
    wire::finish_publish_body(body, 2);
    std::vector<std::string> frames = {wire::encode_tag(), std::string(1, '\x03'), body};
    REQUIRE(client->send_raw(frames));
    REQUIRE(client->send_publish(3, std::vector{message("s-3", "c")}));

    std::map<std::uint64_t, wire::AnyMessage> replies;
    for (int i = 0; i < 3; ++i) {
      auto reply = client->receive(20s);
      REQUIRE(reply.has_value());
      REQUIRE(reply->ok());
      auto& value = reply->value();
      if (auto* ack = std::get_if<wire::Ack>(&value)) replies[ack->batch_id] = value;
      if (auto* error = std::get_if<wire::ErrorReply>(&value)) replies[error->request_id] = value;
    }
    REQUIRE(std::holds_alternative<wire::Ack>(replies[1]));
    CHECK(std::get<wire::Ack>(replies[1]).entries[0].status == wire::AckStatus::stored);
    REQUIRE(std::holds_alternative<wire::ErrorReply>(replies[2]));
    CHECK(std::get<wire::ErrorReply>(replies[2]).code == wire::ErrorCode::truncated);
    REQUIRE(std::holds_alternative<wire::ErrorReply>(replies[3]));
    CHECK(std::get<wire::ErrorReply>(replies[3]).code == wire::ErrorCode::session_failed);

    // Still refused...
    auto refused = client->publish(4, std::vector{message("s-3", "c")}, 20s);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code == wire::ErrorCode::session_failed);
    // ...until a new session.
    REQUIRE(client->hello("test", 20s).ok());
    auto ack = client->publish(5, std::vector{message("s-3", "c")}, 20s);
    REQUIRE(ack.ok());
    CHECK(ack->entries[0].status == wire::AckStatus::stored);
    CHECK(ack->entries[0].offset == 2);  // s-3 was never stored before

    auto stats = client->stats(20s);
    REQUIRE(stats.ok());
    CHECK(counter(*stats, "malformed") == 1);
    CHECK(counter(*stats, "refused_batches") == 2);
  }
}

TEST_CASE("a storage failure refuses the rest of the session, nothing of the batch is stored") {
  test_support::TempDir dir("broker-full-disk");
  BrokerProcess broker(dir.path(), dir / "broker.db", {"--max-database-size", "2m"});
  auto client = connect(broker.endpoint());
  std::string payload(8000, 'x');
  std::uint64_t batch_id = 0;
  std::optional<wire::Error> failure;
  std::uint64_t stored = 0;
  // Fill the database until the size guard refuses a batch.
  for (int round = 0; round < 1000 && !failure; ++round) {
    std::vector<wire::OutgoingMessage> batch;
    for (int i = 0; i < 20; ++i) {
      batch.push_back(message("fill-" + std::to_string(round) + "-" + std::to_string(i), payload));
    }
    auto ack = client->publish(++batch_id, batch, 20s);
    if (ack.ok()) {
      stored += ack->entries.size();
    } else {
      failure = ack.error();
    }
  }
  REQUIRE(failure.has_value());
  CHECK(failure->code == wire::ErrorCode::storage_failure);
  auto refused = client->publish(++batch_id, std::vector{message("after-failure", "small")}, 20s);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == wire::ErrorCode::session_failed);
  auto stats = client->stats(20s);
  REQUIRE(stats.ok());
  CHECK(counter(*stats, "storage_failures") == 1);
  CHECK(counter(*stats, "stored") == stored);  // the failed batch left nothing behind
  // A new session works again (a small message may still fit).
  REQUIRE(client->hello("test", 20s).ok());
  CHECK(client->ping(20s).ok());
  CHECK(broker.stop().code == 0);
}

TEST_CASE("SIGTERM with batches in flight: everything acknowledged is kept") {
  test_support::TempDir dir("broker-sigterm");
  constexpr int kBatches = 300;
  constexpr int kPerBatch = 100;
  auto batch_of = [](int b) {
    std::vector<wire::OutgoingMessage> batch;
    for (int i = 0; i < kPerBatch; ++i) {
      batch.push_back(message("term-" + std::to_string(b) + "-" + std::to_string(i),
                              std::string(256, static_cast<char>('a' + i % 26)), "orders",
                              "key-" + std::to_string(i % 7)));
    }
    return batch;
  };
  std::map<std::string, std::uint64_t> acknowledged;  // msg_id -> offset
  {
    BrokerProcess broker(dir.path(), dir / "broker.db");
    auto client = connect(broker.endpoint());
    auto record = [&](const wire::Result<wire::AnyMessage>& reply) {
      REQUIRE(reply.ok());
      if (auto* ack = std::get_if<wire::Ack>(&reply.value())) {
        auto batch = batch_of(static_cast<int>(ack->batch_id));
        REQUIRE(ack->entries.size() == batch.size());
        for (std::size_t i = 0; i < batch.size(); ++i) {
          REQUIRE(ack->entries[i].status == wire::AckStatus::stored);
          acknowledged[batch[i].msg_id] = ack->entries[i].offset;
        }
      }
    };
    int sent = 0;
    // Pipeline batches until the first ack comes back, then stop the broker
    // while the rest are still in flight.
    while (acknowledged.empty()) {
      while (sent < kBatches &&
             client->send_publish(static_cast<std::uint64_t>(sent), batch_of(sent))) {
        ++sent;
      }
      auto reply = client->receive(20s);
      REQUIRE(reply.has_value());
      record(*reply);
    }
    broker.process().signal(SIGTERM);
    while (sent < kBatches &&
           client->send_publish(static_cast<std::uint64_t>(sent), batch_of(sent))) {
      ++sent;
    }
    auto status = broker.process().wait_for(30s);
    INFO(broker.process().stderr_text());
    REQUIRE(status.has_value());
    CHECK(status->exited);
    CHECK(status->code == 0);
    // Collect the acks the broker flushed before it exited (the client also
    // reports the connection's end, as ErrorCode::disconnected).
    while (auto reply = client->receive(500ms)) {
      if (!reply->ok() && reply->error().code == wire::ErrorCode::disconnected) continue;
      record(*reply);
    }
    INFO(acknowledged.size() << " of " << kBatches * kPerBatch << " acknowledged before exit");
    CHECK_FALSE(acknowledged.empty());
  }
  REQUIRE_FALSE(acknowledged.empty());
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());
  std::size_t duplicates = 0;
  for (int b = 0; b < kBatches; ++b) {
    auto batch = batch_of(b);
    auto ack = client->publish(static_cast<std::uint64_t>(b), batch, 20s);
    REQUIRE(ack.ok());
    for (std::size_t i = 0; i < batch.size(); ++i) {
      auto found = acknowledged.find(batch[i].msg_id);
      if (found != acknowledged.end()) {
        REQUIRE(ack->entries[i].status == wire::AckStatus::duplicate);
        REQUIRE(ack->entries[i].offset == found->second);
        ++duplicates;
      } else {
        REQUIRE((ack->entries[i].status == wire::AckStatus::stored ||
                 ack->entries[i].status == wire::AckStatus::duplicate));
      }
    }
  }
  CHECK(duplicates == acknowledged.size());
  auto stats = client->stats(20s);
  REQUIRE(stats.ok());
  REQUIRE(stats->topics.size() == 1);
  CHECK(stats->topics[0].message_count == static_cast<std::uint64_t>(kBatches * kPerBatch));
  CHECK(stats->topics[0].last_offset == static_cast<std::uint64_t>(kBatches * kPerBatch));
}

TEST_CASE("with CURVE only allowed client keys get a session") {
  if (!zmq_has("curve")) {
    WARN("libzmq without CURVE: not tested");
    return;
  }
  test_support::TempDir dir("broker-curve");
  char server_public[41], server_secret[41], allowed_public[41], allowed_secret[41],
      other_public[41], other_secret[41];
  REQUIRE(zmq_curve_keypair(server_public, server_secret) == 0);
  REQUIRE(zmq_curve_keypair(allowed_public, allowed_secret) == 0);
  REQUIRE(zmq_curve_keypair(other_public, other_secret) == 0);
  std::ofstream(dir / "server.key") << "# broker secret key\n" << server_secret << "\n";
  std::ofstream(dir / "clients") << "# allowed\n" << allowed_public << "\n";
  BrokerProcess broker(dir.path(), dir / "broker.db",
                       {"--curve-secret-key-file", (dir / "server.key").string(),
                        "--allowed-clients-file", (dir / "clients").string()});

  broker::ClientOptions allowed;
  allowed.curve = broker::CurveClientConfig{server_public, allowed_public, allowed_secret};
  broker::Client good(broker.endpoint(), allowed);
  REQUIRE(good.hello("allowed", 20s).ok());
  auto ack = good.publish(1, std::vector{message("curve-1", "secret")}, 20s);
  REQUIRE(ack.ok());
  CHECK(ack->entries[0].status == wire::AckStatus::stored);

  broker::ClientOptions refused;
  refused.curve = broker::CurveClientConfig{server_public, other_public, other_secret};
  broker::Client bad(broker.endpoint(), refused);
  auto welcome = bad.hello("intruder", 20s);
  REQUIRE_FALSE(welcome.ok());
  // The refusal ends the handshake, and the client says so (no waiting for a reply).
  CHECK(welcome.error().code == wire::ErrorCode::disconnected);
  CHECK(welcome.error().message.find("refused this client's credentials") != std::string::npos);
  CHECK(test_support::wait_until(
      [&] {
        return broker.process().stderr_text().find("refused CURVE client") != std::string::npos;
      },
      20s));

  broker::Client plain(broker.endpoint());
  CHECK_FALSE(plain.hello("plaintext", 1500ms).ok());
}

TEST_CASE("a reused msg_id with another key or headers is CONFLICT naming both values") {
  test_support::TempDir dir("broker-identity");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());
  auto first = message("4711", "{}", "orders", "order-1");
  first.headers = {{"trace", "abc"}};
  REQUIRE(client->publish(1, std::vector{first}, 20s).ok());

  auto other_key = message("4711", "{}", "orders", "order-2");
  other_key.headers = first.headers;
  auto other_headers = first;
  other_headers.headers = {{"trace", "xyz"}};
  auto reordered = first;
  reordered.headers = {{"a", "1"}, {"b", "2"}};
  // Separate batches: a refused message blocks its key for the session.
  auto ack = client->publish(2, std::vector{other_key}, 20s);
  REQUIRE(ack.ok());
  CHECK(ack->entries[0].status == wire::AckStatus::conflict);
  CHECK(ack->entries[0].offset == 1);
  CHECK(ack->entries[0].reason ==
        "msg_id 4711 is already stored in orders at offset 1 with key 'order-1'; this message "
        "has key 'order-2'");
  client = connect(broker.endpoint());
  ack = client->publish(3, std::vector{other_headers}, 20s);
  REQUIRE(ack.ok());
  CHECK(ack->entries[0].status == wire::AckStatus::conflict);
  CHECK(ack->entries[0].reason ==
        "msg_id 4711 is already stored in orders at offset 1 with headers 'trace=abc'; this "
        "message has headers 'trace=xyz'");

  // Only the same topic, key, headers and payload is a resend.
  client = connect(broker.endpoint());
  ack = client->publish(4, std::vector{first}, 20s);
  REQUIRE(ack.ok());
  CHECK(ack->entries[0].status == wire::AckStatus::duplicate);

  auto stats = client->stats(20s);
  REQUIRE(stats.ok());
  CHECK(counter(*stats, "stored") == 1);
  CHECK(counter(*stats, "conflicts") == 2);
  CHECK(counter(*stats, "duplicates") == 1);
  CHECK(broker.stop().code == 0);
}

namespace {

wire::Result<wire::Welcome> hello_as(broker::Client& client, const std::string& origin,
                                     std::uint64_t epoch) {
  return client.hello(wire::Hello{"relay", 0, origin, epoch}, 20s);
}

}  // namespace

TEST_CASE("sessions and batches under an older lease epoch of an origin are refused") {
  test_support::TempDir dir("broker-epoch");
  std::optional<BrokerProcess> broker;
  broker.emplace(dir.path(), dir / "broker.db");
  broker::Client old_relay(broker->endpoint());
  REQUIRE(hello_as(old_relay, "origin-a", 4).ok());
  REQUIRE(old_relay.publish(1, std::vector{message("m-1", "1")}, 20s).ok());

  // A newer relay of the same outbox: from now on the old session is stale.
  broker::Client new_relay(broker->endpoint());
  REQUIRE(hello_as(new_relay, "origin-a", 5).ok());
  auto refused = old_relay.publish(2, std::vector{message("m-2", "2")}, 20s);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == wire::ErrorCode::stale_epoch);
  CHECK(refused.error().message ==
        "lease epoch 4 of origin origin-a is older than epoch 5 already seen: another relay "
        "holds that outbox's lease");
  // Nor can it open a new session with its old epoch.
  auto again = hello_as(old_relay, "origin-a", 4);
  REQUIRE_FALSE(again.ok());
  CHECK(again.error().code == wire::ErrorCode::stale_epoch);
  CHECK(new_relay.publish(1, std::vector{message("m-2", "2")}, 20s).ok());

  // Other origins, the same epoch again (a reconnect) and unfenced clients go on.
  broker::Client other(broker->endpoint());
  CHECK(hello_as(other, "origin-b", 1).ok());
  CHECK(hello_as(other, "origin-a", 5).ok());
  CHECK(hello_as(other, "", 0).ok());

  // The highest epoch survives a restart of the broker.
  CHECK(broker->stop().code == 0);
  broker.reset();
  broker.emplace(dir.path(), dir / "broker.db");
  broker::Client after_restart(broker->endpoint());
  auto stale = hello_as(after_restart, "origin-a", 4);
  REQUIRE_FALSE(stale.ok());
  CHECK(stale.error().code == wire::ErrorCode::stale_epoch);
  auto stats = after_restart.stats(20s);
  REQUIRE(stats.ok());
  CHECK(counter(*stats, "stale_epochs") == 1);
  CHECK(counter(*stats, "stored") == 2);
  CHECK(broker->stop().code == 0);
}

TEST_CASE(
    "one connection carries a session per origin, and each fails, is fenced and is replaced "
    "alone") {
  test_support::TempDir dir("broker-several");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  broker::Client relay(broker.endpoint());
  auto open = [&](broker::Client& client, const std::string& origin, std::uint64_t epoch) {
    return client.hello(wire::Hello{"relay", wire::kHelloOneOfSeveral, origin, epoch}, 20s);
  };
  std::map<std::string, std::uint64_t> session;
  for (const std::string origin : {"db-a", "db-b", "db-c"}) {
    auto welcome = open(relay, origin, 1);
    REQUIRE(welcome.ok());
    session[origin] = welcome->session_id;
  }
  REQUIRE(std::set<std::uint64_t>{session["db-a"], session["db-b"], session["db-c"]}.size() == 3);

  // Pipelined batches of the three sessions, interleaved on the one
  // connection: every session numbers its batches from 1.
  std::map<std::uint64_t, std::string> waiting;  // batch id -> expected msg_id
  for (std::uint64_t batch = 1; batch <= 3; ++batch) {
    for (const auto& [origin, id] : session) {
      auto msg_id = origin + "-" + std::to_string(batch);
      REQUIRE(relay.send_publish(id, batch, std::vector{message(msg_id, "x", "t", origin)}));
    }
  }
  std::size_t stored = 0;
  while (stored < 9) {
    auto reply = relay.receive(20s);
    REQUIRE(reply.has_value());
    REQUIRE(reply->ok());
    auto* ack = std::get_if<wire::Ack>(&reply->value());
    REQUIRE(ack != nullptr);
    REQUIRE(ack->entries.size() == 1);
    CHECK(ack->entries[0].status == wire::AckStatus::stored);
    ++stored;
  }

  // A new HELLO for db-a replaces db-a's session only.
  auto replaced = open(relay, "db-a", 1);
  REQUIRE(replaced.ok());
  auto gone =
      relay.publish(session["db-a"], 4, std::vector{message("db-a-4", "x", "t", "db-a")}, 20s);
  REQUIRE_FALSE(gone.ok());
  CHECK(gone.error().code == wire::ErrorCode::no_session);
  CHECK(
      relay.publish(replaced->session_id, 1, std::vector{message("db-a-4", "x", "t", "db-a")}, 20s)
          .ok());

  // A newer relay of db-b (another connection) fences db-b's session only.
  broker::Client newer(broker.endpoint());
  REQUIRE(open(newer, "db-b", 2).ok());
  auto fenced =
      relay.publish(session["db-b"], 4, std::vector{message("db-b-4", "x", "t", "db-b")}, 20s);
  REQUIRE_FALSE(fenced.ok());
  CHECK(fenced.error().code == wire::ErrorCode::stale_epoch);
  auto next =
      relay.publish(session["db-c"], 4, std::vector{message("db-c-4", "x", "t", "db-c")}, 20s);
  REQUIRE(next.ok());
  CHECK(next->entries[0].status == wire::AckStatus::stored);

  // Without the flag a HELLO needs no origin and ends every session of the connection.
  auto plain = relay.hello("tool", 20s);
  REQUIRE(plain.ok());
  auto ended =
      relay.publish(session["db-c"], 5, std::vector{message("db-c-5", "x", "t", "db-c")}, 20s);
  REQUIRE_FALSE(ended.ok());
  CHECK(ended.error().code == wire::ErrorCode::no_session);
  auto no_origin = relay.hello(wire::Hello{"relay", wire::kHelloOneOfSeveral, "", 0}, 20s);
  REQUIRE_FALSE(no_origin.ok());
  CHECK(no_origin.error().code == wire::ErrorCode::invalid_value);

  auto stats = relay.stats(20s);
  REQUIRE(stats.ok());
  CHECK(counter(*stats, "stored") == 11);
  CHECK(broker.stop().code == 0);
}

TEST_CASE(
    "a new session of an origin ends its older ones on any connection but the latest, and their "
    "retained ACKs with them") {
  test_support::TempDir dir("broker-origin-sessions");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto open = [](broker::Client& client, const std::string& origin) {
    auto welcome = client.hello(wire::Hello{"relay", wire::kHelloOneOfSeveral, origin, 1}, 20s);
    REQUIRE(welcome.ok());
    return welcome->session_id;
  };
  auto stat = [&](const std::string& name) {
    broker::Client tool(broker.endpoint());
    auto stats = tool.stats(20s);
    REQUIRE(stats.ok());
    return counter(*stats, name);
  };
  // Each connection stands for one a relay used and lost (or a database it
  // closed and opened again on another connection).
  broker::Client first(broker.endpoint()), second(broker.endpoint()), third(broker.endpoint());
  broker::Client other(broker.endpoint());
  const auto other_session = open(other, "db-other");
  const auto first_session = open(first, "db-a");
  REQUIRE(first.publish(first_session, 1, std::vector{message("a-1", "x", "t", "db-a")}, 20s).ok());
  const auto kept = stat("retained_ack_bytes");
  CHECK(kept > 0);

  // The second session keeps the first: a RESUME from it may ask about that one.
  const auto second_session = open(second, "db-a");
  CHECK(stat("sessions_active") == 3);
  CHECK(stat("retained_ack_bytes") == kept);

  // The third ends the first (and its ACKs), and keeps the second.
  const auto third_session = open(third, "db-a");
  CHECK(stat("sessions_active") == 3);
  CHECK(stat("retained_ack_bytes") == 0);
  auto ended = first.publish(first_session, 2, std::vector{message("a-2", "x", "t", "db-a")}, 20s);
  REQUIRE_FALSE(ended.ok());
  CHECK(ended.error().code == wire::ErrorCode::no_session);
  REQUIRE(
      second.publish(second_session, 1, std::vector{message("a-2", "x", "t", "db-a")}, 20s).ok());
  CHECK(stat("retained_ack_bytes") > 0);

  // RESUME of the kept one works and ends it.
  REQUIRE(third.send_resume(second_session, 1));
  auto resumed = third.receive(20s);
  REQUIRE(resumed.has_value());
  REQUIRE(resumed->ok());
  auto* answer = std::get_if<wire::Resumed>(&resumed->value());
  REQUIRE(answer != nullptr);
  CHECK(answer->acks.size() == 1);
  CHECK(stat("sessions_active") == 2);
  CHECK(stat("retained_ack_bytes") == 0);

  // The other origin's session was never touched.
  CHECK(
      other.publish(other_session, 1, std::vector{message("o-1", "x", "t", "db-other")}, 20s).ok());
  CHECK(third.publish(third_session, 1, std::vector{message("a-3", "x", "t", "db-a")}, 20s).ok());
  CHECK(broker.stop().code == 0);
}

TEST_CASE("a version 1 client is told, in a version 1 frame, which version the broker speaks") {
  test_support::TempDir dir("broker-version");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  zmq::context_t context(1);
  zmq::socket_t socket(context, zmq::socket_type::dealer);
  socket.set(zmq::sockopt::linger, 0);
  socket.set(zmq::sockopt::rcvtimeo, 20000);
  socket.connect(broker.endpoint());
  // A version 1 HELLO: flags, producer.
  wire::Frames frames{wire::encode_tag(1), std::string(1, '\x01'),
                      std::string("\0\0\0\0\x02\0v1", 8)};
  REQUIRE(wire::send_frames(socket, frames));
  auto received = wire::receive_frames(socket);
  REQUIRE(received.has_value());
  auto views = received->views();
  REQUIRE(views.size() == 3);
  CHECK(views[0] == std::string("OBX\x01", 4));
  CHECK(views[1] == std::string(1, '\x0D'));
  // ERROR's body is the same in both versions.
  auto error = wire::decode_body(wire::Command::error, views[2]);
  REQUIRE(error.ok());
  const auto& reply = std::get<wire::ErrorReply>(error.value());
  CHECK(reply.code == wire::ErrorCode::unsupported_version);
  CHECK(reply.message ==
        "protocol version 1 is not supported: this broker speaks version 2 (upgrade the client)");
  CHECK(broker.stop().code == 0);
}
