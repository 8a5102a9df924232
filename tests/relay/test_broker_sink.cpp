// relay::BrokerSink against a real outbox-broker: the next session is opened
// ahead of need, so that a broken connection costs no handshake.
#include "relay/broker_sink.hpp"
#include "relay_harness.hpp"

using namespace relay_test;

TEST_CASE("the broker sink opens its next session ahead of need and uses it on the next open",
          "[relay][cuts]") {
  test_support::TempDir dir("relay-spare-session");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  const auto& endpoint = broker.endpoint();
  relay::BrokerSinkOptions options;
  options.endpoint = endpoint;
  relay::BrokerSink sink(options);
  auto sessions_opened = [&] { return broker_counter(endpoint, "sessions_opened"); };

  REQUIRE_FALSE(sink.open_session(10s).has_value());
  CHECK(sessions_opened() == 1);
  // The first poll after a session opened sends the spare connection's HELLO.
  CHECK_FALSE(sink.poll(0ms).has_value());
  REQUIRE(test_support::wait_until([&] { return sessions_opened() == 2; }, 20s, 5ms));

  // The next session (as after a broken connection) is the spare's: no HELLO
  // goes out for it, and it carries batches.
  REQUIRE_FALSE(sink.open_session(10s).has_value());
  CHECK(sessions_opened() == 2);
  std::vector<outbox::PendingMessage> batch(1);
  batch[0].seq = 1;
  batch[0].msg_id = "spare-session-1";
  batch[0].topic = "orders";
  batch[0].payload = "k:1:";
  REQUIRE(sink.send(1, batch));
  std::optional<relay::SinkEvent> event;
  REQUIRE(test_support::wait_until(
      [&] {
        event = sink.poll(50ms);
        return event.has_value();
      },
      20s, 0ms));
  INFO(event->error);
  REQUIRE(event->kind == relay::SinkEvent::Kind::acked);
  REQUIRE(event->deliveries.size() == 1);
  CHECK(event->deliveries[0].status == relay::DeliveryStatus::stored);
  // ... and a new spare is on its way, made at a poll that finds no reply
  // waiting (on a loaded machine the ACK may have been there at the first).
  REQUIRE(test_support::wait_until(
      [&] {
        CHECK_FALSE(sink.poll(0ms).has_value());
        return sessions_opened() == 3;
      },
      20s, 5ms));
}
