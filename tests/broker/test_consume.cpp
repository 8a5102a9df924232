// Consumers against the real daemon: FETCH pages, consumer-group offsets that
// survive a restart, and long-poll FETCH woken by a commit.
#include <catch2/catch.hpp>

#include "broker_process.hpp"

using namespace broker_test;

namespace {

// `batch_id`: batch ids of a session are consecutive.
void publish_range(broker::Client& client, std::uint64_t batch_id, const std::string& topic,
                   int first, int count) {
  std::vector<wire::OutgoingMessage> batch;
  for (int i = first; i < first + count; ++i) {
    auto m = message(topic + "-" + std::to_string(i), "payload-" + std::to_string(i), topic,
                     "key-" + std::to_string(i % 3));
    m.headers = {{"n", std::to_string(i)}};
    batch.push_back(m);
  }
  auto ack = client.publish(batch_id, batch, 20s);
  REQUIRE(ack.ok());
  for (const auto& entry : ack->entries) REQUIRE(entry.status == wire::AckStatus::stored);
}

}  // namespace

TEST_CASE("FETCH pages through a topic and group offsets resume a consumer") {
  test_support::TempDir dir("broker-fetch");
  auto db = dir / "broker.db";
  {
    BrokerProcess broker(dir.path(), db);
    auto producer = connect(broker.endpoint());
    publish_range(*producer, 1, "orders", 0, 10);
    publish_range(*producer, 2, "payments", 0, 3);

    broker::Client consumer(broker.endpoint());
    wire::Fetch fetch;
    fetch.topic = "orders";
    fetch.from_offset = 1;
    fetch.max_messages = 4;
    auto page = consumer.fetch(fetch, 20s);
    REQUIRE(page.ok());
    REQUIRE(page->messages.size() == 4);
    CHECK(page->messages[0].offset == 1);
    CHECK(page->messages[0].msg_id == "orders-0");
    CHECK(page->messages[0].key == "key-0");
    CHECK(page->messages[0].payload == "payload-0");
    REQUIRE(page->messages[0].headers.size() == 1);
    CHECK(page->messages[0].headers[0] == wire::Header{"n", "0"});
    CHECK(page->next_offset == 5);
    CHECK(page->last_offset == 10);

    auto committed = consumer.commit_offset("orders", "billing", 4, 20s);
    REQUIRE(committed.ok());
    CHECK(committed->offset == 4);

    auto unknown = consumer.fetch(wire::Fetch{0, "nothing-here", "", 1, false, 10, 0, 0}, 20s);
    REQUIRE(unknown.ok());
    CHECK(unknown->messages.empty());

    auto bad = consumer.fetch(wire::Fetch{0, "", "", 1, false, 10, 0, 0}, 20s);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code == wire::ErrorCode::invalid_value);
    CHECK(broker.stop().code == 0);
  }
  BrokerProcess broker(dir.path(), db);
  broker::Client consumer(broker.endpoint());
  wire::Fetch resume;
  resume.topic = "orders";
  resume.group = "billing";
  resume.use_group_offset = true;
  auto page = consumer.fetch(resume, 20s);
  REQUIRE(page.ok());
  REQUIRE(page->messages.size() == 6);
  CHECK(page->messages.front().offset == 5);
  CHECK(page->messages.front().msg_id == "orders-4");
  CHECK(page->messages.back().offset == 10);
  // Redelivery keeps the msg_id: fetching the same range again gives the same ids.
  auto again = consumer.fetch(resume, 20s);
  REQUIRE(again.ok());
  CHECK(again->messages.front().msg_id == "orders-4");
}

TEST_CASE("a long-poll FETCH is answered when a commit stores to its topic") {
  test_support::TempDir dir("broker-longpoll");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  broker::Client consumer(broker.endpoint());
  wire::Fetch fetch{77, "events", "", 1, false, 100, 0, 30'000};
  REQUIRE(consumer.send_request(fetch));
  // The fetch is parked before the message exists: wait until the broker says so.
  auto observer = std::make_unique<broker::Client>(broker.endpoint());
  REQUIRE(test_support::wait_until(
      [&] {
        auto stats = observer->stats(20s);
        return stats.ok() && counter(*stats, "waiting_fetches") == 1;
      },
      20s));
  auto producer = connect(broker.endpoint());
  publish_range(*producer, 1, "events", 0, 2);
  auto reply = consumer.receive(20s);
  REQUIRE(reply.has_value());
  REQUIRE(reply->ok());
  auto* messages = std::get_if<wire::Messages>(&reply->value());
  REQUIRE(messages != nullptr);
  CHECK(messages->request_id == 77);
  REQUIRE(messages->messages.size() == 2);
  CHECK(messages->messages[0].msg_id == "events-0");

  // A long-poll with nothing arriving ends empty when its wait is over.
  auto empty = consumer.fetch(wire::Fetch{0, "quiet", "", 1, false, 10, 0, 50}, 20s);
  REQUIRE(empty.ok());
  CHECK(empty->messages.empty());
}

TEST_CASE("retention removes bodies but a resend is still a DUPLICATE") {
  test_support::TempDir dir("broker-retention");
  BrokerProcess broker(dir.path(), dir / "broker.db", {"--retention", "1ms"});
  auto producer = connect(broker.endpoint());
  publish_range(*producer, 1, "old", 0, 5);
  // Maintenance runs about once a second: wait until the bodies are gone.
  REQUIRE(test_support::wait_until(
      [&] {
        auto stats = producer->stats(20s);
        return stats.ok() && stats->topics.size() == 1 && stats->topics[0].message_count == 0;
      },
      30s));
  broker::Client consumer(broker.endpoint());
  auto page = consumer.fetch(wire::Fetch{0, "old", "", 1, false, 10, 0, 0}, 20s);
  REQUIRE(page.ok());
  CHECK(page->messages.empty());
  CHECK(page->last_offset == 5);
  std::vector<wire::OutgoingMessage> again;
  for (int i = 0; i < 5; ++i) {
    auto m = message("old-" + std::to_string(i), "payload-" + std::to_string(i), "old",
                     "key-" + std::to_string(i % 3));
    m.headers = {{"n", std::to_string(i)}};
    again.push_back(m);
  }
  auto ack = producer->publish(2, again, 20s);
  REQUIRE(ack.ok());
  for (const auto& entry : ack->entries) CHECK(entry.status == wire::AckStatus::duplicate);
}
