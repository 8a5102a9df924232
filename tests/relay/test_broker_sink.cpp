// relay::BrokerSink against a real outbox-broker: the next session is opened
// ahead of need, so that a broken connection costs no handshake.
#include "relay/broker_sink.hpp"
#include "relay_harness.hpp"
#include "wire/zmq_io.hpp"

using namespace relay_test;

namespace {

std::vector<outbox::PendingMessage> one_message(const std::string& msg_id, const std::string& key) {
  std::vector<outbox::PendingMessage> batch(1);
  batch[0].seq = 1;
  batch[0].msg_id = msg_id;
  batch[0].topic = "orders";
  batch[0].partition_key = key;
  batch[0].payload = key + ":1:";
  return batch;
}

// The next event of `sink`, waiting up to 20 s.
relay::SinkEvent next_event(relay::Sink& sink) {
  std::optional<relay::SinkEvent> event;
  REQUIRE(test_support::wait_until(
      [&] {
        event = sink.poll(50ms);
        return event.has_value();
      },
      20s, 0ms));
  return std::move(*event);
}

// A broker stand-in on a ROUTER socket of the test: it reads what one
// connection sends and answers as the test says, in any order.
struct ScriptedBroker {
  ScriptedBroker() {
    socket.set(zmq::sockopt::linger, 0);
    socket.set(zmq::sockopt::rcvtimeo, 20'000);
    socket.bind("tcp://127.0.0.1:*");
    endpoint = socket.get(zmq::sockopt::last_endpoint);
  }
  // The next message of the kind `Message` (others, such as PINGs, are skipped).
  template <typename Message>
  Message next() {
    for (;;) {
      auto received = wire::receive_frames(socket);
      REQUIRE(received.has_value());
      peer = received->frames.at(0).to_string();
      auto views = received->views(1);
      auto decoded = wire::decode(views);
      REQUIRE(decoded.ok());
      if (auto* message = std::get_if<Message>(&decoded.value())) return std::move(*message);
    }
  }
  void send(const wire::AnyMessage& message) {
    REQUIRE(wire::send_message(socket, message, zmq::send_flags::none, peer));
  }
  static wire::Welcome welcome(std::uint64_t session_id, std::uint64_t hello_id) {
    auto welcome = wire::welcome_for(session_id, 1 << 20, "scripted", wire::Limits{});
    welcome.hello_id = hello_id;
    return welcome;
  }

  zmq::context_t context;
  zmq::socket_t socket{context, zmq::socket_type::router};
  std::string endpoint;
  std::string peer;  // routing id of the connection
};

}  // namespace

TEST_CASE("the broker sink opens its next session ahead of need and uses it on the next open",
          "[relay][cuts]") {
  test_support::TempDir dir("relay-spare-session");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  const auto& endpoint = broker.endpoint();
  relay::BrokerSinkOptions options;
  options.endpoint = endpoint;
  relay::BrokerSink sink(options);
  auto sessions_opened = [&] { return broker_counter(endpoint, "sessions_opened"); };

  REQUIRE(sink.open_session(10s).ok());
  CHECK(sessions_opened() == 1);
  // The first poll after a session opened sends the spare connection's HELLO.
  CHECK_FALSE(sink.poll(0ms).has_value());
  REQUIRE(test_support::wait_until([&] { return sessions_opened() == 2; }, 20s, 5ms));

  // The next session (as after a broken connection) is the spare's: no HELLO
  // goes out for it, and it carries batches.
  REQUIRE(sink.open_session(10s).ok());
  CHECK(sessions_opened() == 2);
  REQUIRE(sink.send(1, one_message("spare-session-1", "k")));
  auto event = next_event(sink);
  INFO(event.error);
  REQUIRE(event.kind == relay::SinkEvent::Kind::acked);
  REQUIRE(event.deliveries.size() == 1);
  CHECK(event.deliveries[0].status == relay::DeliveryStatus::stored);
  // ... and a new spare is on its way, made at a poll that finds no reply
  // waiting (on a loaded machine the ACK may have been there at the first).
  REQUIRE(test_support::wait_until(
      [&] {
        CHECK_FALSE(sink.poll(0ms).has_value());
        return sessions_opened() == 3;
      },
      20s, 5ms));
}

TEST_CASE("databases sharing a broker connection each get their own session and replies",
          "[relay]") {
  test_support::TempDir dir("relay-shared-connection");
  std::optional<BrokerProcess> broker;
  broker.emplace(dir.path(), dir / "broker.db");
  relay::BrokerSinkOptions options;
  options.endpoint = broker->endpoint();
  relay::SharedBrokerConnection connection(options);
  auto a = connection.channel(1);
  auto b = connection.channel(2);
  CHECK_THROWS_AS(connection.channel(1), std::invalid_argument);
  a->set_lease({"origin-a", 1, {}});
  b->set_lease({"origin-b", 1, {}});
  REQUIRE(a->open_session(10s).ok());
  REQUIRE(b->open_session(10s).ok());
  CHECK(broker_counter(broker->endpoint(), "sessions_opened") == 2);

  // Both number their batches from 1; each reply reaches its own channel,
  // whichever channel reads the connection.
  REQUIRE(a->send(1, one_message("shared-a-1", "a")));
  REQUIRE(b->send(1, one_message("shared-b-1", "b")));
  auto from_b = next_event(*b);
  CHECK(from_b.batch_id == 1);
  REQUIRE(from_b.kind == relay::SinkEvent::Kind::acked);
  CHECK(connection.has_events(1));
  auto from_a = next_event(*a);
  CHECK(from_a.batch_id == 1);
  REQUIRE(from_a.kind == relay::SinkEvent::Kind::acked);
  CHECK(from_a.deliveries.at(0).status == relay::DeliveryStatus::stored);

  // A session of one origin that is fenced fails that channel only.
  broker::Client newer(broker->endpoint());
  REQUIRE(newer.hello(wire::Hello{"newer", wire::kHelloOneOfSeveral, "origin-a", 2}, 20s).ok());
  // The broker's WELCOME names a HELLO that carries an id.
  auto named = newer.hello(
      wire::Hello{"newer", wire::kHelloOneOfSeveral | wire::kHelloWithId, "origin-n", 1, 77}, 20s);
  REQUIRE(named.ok());
  CHECK(named->hello_id == 77);
  REQUIRE(a->send(2, one_message("shared-a-2", "a")));
  REQUIRE(b->send(2, one_message("shared-b-2", "b")));
  auto fenced = next_event(*a);
  CHECK(fenced.kind == relay::SinkEvent::Kind::failed);
  CHECK(fenced.batch_id == 2);
  CHECK(fenced.error.find("stale_epoch") != std::string::npos);
  auto still_open = next_event(*b);
  CHECK(still_open.kind == relay::SinkEvent::Kind::acked);
  auto refused = a->open_session(10s);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().find("stale_epoch") != std::string::npos);

  // The broker goes away: every channel with a session hears of it.
  broker->process().signal(SIGKILL);
  REQUIRE(broker->process().wait_for(10s).has_value());
  auto broke = next_event(*b);
  CHECK(broke.kind == relay::SinkEvent::Kind::failed);
  CHECK(broke.batch_id == 0);
}

TEST_CASE("a shared connection takes each WELCOME for the HELLO it names and drops the others",
          "[relay]") {
  ScriptedBroker broker;
  relay::BrokerSinkOptions options;
  options.endpoint = broker.endpoint;
  relay::SharedBrokerConnection connection(options);
  auto a = connection.channel(1);
  auto b = connection.channel(2);
  a->set_lease({"origin-a", 1, {}});
  b->set_lease({"origin-b", 1, {}});
  REQUIRE(a->prepare_session());
  REQUIRE(b->prepare_session());
  auto hello_a = broker.next<wire::Hello>();
  auto hello_b = broker.next<wire::Hello>();
  REQUIRE(hello_a.origin == "origin-a");
  REQUIRE(hello_b.origin == "origin-b");
  CHECK((hello_a.flags & wire::kHelloWithId) != 0);
  CHECK((hello_b.flags & wire::kHelloWithId) != 0);
  REQUIRE(hello_a.hello_id != hello_b.hello_id);

  // Out of order, b's twice (a reply duplicated on the way), one naming no HELLO.
  broker.send(ScriptedBroker::welcome(22, hello_b.hello_id));
  broker.send(ScriptedBroker::welcome(22, hello_b.hello_id));
  broker.send(ScriptedBroker::welcome(99, hello_a.hello_id + hello_b.hello_id));
  broker.send(ScriptedBroker::welcome(11, hello_a.hello_id));
  REQUIRE(test_support::wait_until(
      [&] {
        connection.pump(10ms);
        return a->session_answered() && b->session_answered() &&
               connection.unmatched_answers() == 2;
      },
      20s, 0ms));
  REQUIRE(a->open_session(1s).ok());
  REQUIRE(b->open_session(1s).ok());
  REQUIRE(a->send(1, one_message("scripted-a-1", "a")));
  CHECK(broker.next<wire::Publish>().session_id == 11);
  REQUIRE(b->send(1, one_message("scripted-b-1", "b")));
  CHECK(broker.next<wire::Publish>().session_id == 22);

  // A broker older than hello ids refuses the flag (naming no request): the
  // connection sends HELLOs without it from then on, matched by their order.
  auto c = connection.channel(3);
  c->set_lease({"origin-c", 1, {}});
  REQUIRE(c->prepare_session());
  REQUIRE((broker.next<wire::Hello>().flags & wire::kHelloWithId) != 0);
  broker.send(wire::ErrorReply{0, wire::ErrorCode::invalid_value,
                               "unknown hello flags (only bit 0 is defined)"});
  auto refused = c->open_session(10s);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().find("unknown hello flags") != std::string::npos);
  REQUIRE(c->prepare_session());
  auto plain = broker.next<wire::Hello>();
  CHECK(plain.flags == wire::kHelloOneOfSeveral);
  CHECK(plain.hello_id == 0);
  broker.send(ScriptedBroker::welcome(33, 0));
  REQUIRE(c->open_session(10s).ok());
  REQUIRE(c->send(1, one_message("scripted-c-1", "c")));
  CHECK(broker.next<wire::Publish>().session_id == 33);
  CHECK(connection.unmatched_answers() == 2);
}
