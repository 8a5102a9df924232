// The broker under peers that do not play along: replies held in bytes per
// connection, requests of a peer over its cap held back (then dropped), and
// offsets that cannot skip messages.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include <catch2/catch.hpp>

#include "broker_process.hpp"
#include "non_reading_peer.hpp"
#include "wire/zmq_io.hpp"

using namespace broker_test;

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

// `count` messages of `size` bytes on topic "big", one batch.
void publish_big(const std::string& endpoint, int count, std::size_t size) {
  auto producer = connect(endpoint);
  std::vector<wire::OutgoingMessage> batch;
  for (int i = 0; i < count; ++i) {
    batch.push_back(message("big-" + std::to_string(i), std::string(size, 'x'), "big"));
  }
  REQUIRE(producer->publish(1, batch, 20s).ok());
}

wire::StatsReply stats_of(broker::Client& client) {
  auto stats = client.stats(20s);
  REQUIRE(stats.ok());
  return *stats;
}

// FETCHes 1..count of pages of `page_bytes` from the start of topic "big".
void send_fetches(zmq::socket_t& socket, std::uint64_t count, std::size_t page_bytes) {
  for (std::uint64_t id = 1; id <= count; ++id) {
    REQUIRE(wire::send_message(socket, wire::Fetch{id, "big", "", 1, false, 0,
                                                   static_cast<std::uint32_t>(page_bytes), 0}));
  }
}

// The STATS once every FETCH sent arrived: answered, waiting or dropped.
wire::StatsReply stats_once_fetches_arrived(broker::Client& observer, std::uint64_t sent) {
  wire::StatsReply stats;
  REQUIRE(test_support::wait_until(
      [&] {
        stats = stats_of(observer);
        return counter(stats, "fetches") + counter(stats, "requests_waiting") +
                   counter(stats, "requests_dropped") ==
               sent;
      },
      60s));
  return stats;
}

}  // namespace

TEST_CASE("a peer that does not read its FETCH replies is held at its outgoing cap") {
  test_support::TempDir dir("broker-bounds");
  // More FETCHes than a held-back peer may have waiting (1024) plus what the
  // kernel's socket buffers (up to 4 MiB) and the cap take before it is held
  // back, each for a page of two messages. The sanitizer trees move about a
  // tenth of the bytes: 32 KiB messages, 64 KiB pages, the smallest cap (1 MiB),
  // and 1,300 FETCHes, as about 80 pages pass before the peer is held back.
  const std::size_t message_bytes = test_support::scaled(kMiB / 2, kMiB / 32);
  const std::size_t page_bytes = 2 * message_bytes;
  const std::size_t cap = test_support::scaled(4 * kMiB, kMiB);
  BrokerProcess broker(dir.path(), dir / "broker.db",
                       {"--max-outgoing-bytes", std::to_string(cap)});
  publish_big(broker.endpoint(), 8, message_bytes);

  zmq::context_t context(1);
  auto hostile = test_support::non_reading_dealer(context, broker.endpoint());
  const std::uint64_t kFetches = test_support::scaled<std::uint64_t>(1100, 1300);
  send_fetches(hostile, kFetches, page_bytes);
  // The broker holds at most the cap (plus one message) for it, keeps the
  // rest of its requests waiting, drops those beyond the waiting bound, and
  // goes on serving everyone else.
  broker::Client observer(broker.endpoint());
  auto stats = stats_once_fetches_arrived(observer, kFetches);
  CHECK(counter(stats, "peers_held_back") == 1);
  CHECK(counter(stats, "requests_dropped") > 0);
  CHECK(counter(stats, "outgoing_bytes") <= cap + page_bytes);
  CHECK(counter(stats, "outgoing_bytes") >= cap / 2);
  REQUIRE(observer.ping(20s).ok());

  // Once it reads, what was held back is answered, in the order it was sent.
  hostile.set(zmq::sockopt::rcvtimeo, 20000);
  std::uint64_t last_id = 0;
  std::uint64_t answered = 0;
  auto dropped = counter(stats, "requests_dropped");
  while (answered + dropped < kFetches) {
    auto reply = wire::receive_message(hostile, zmq::recv_flags::none,
                                       broker::ClientOptions::client_limits());
    REQUIRE(reply.has_value());
    REQUIRE(reply->ok());
    auto* page = std::get_if<wire::Messages>(&reply->value());
    REQUIRE(page != nullptr);
    CHECK(page->request_id > last_id);
    last_id = page->request_id;
    ++answered;
  }
  REQUIRE(test_support::wait_until(
      [&] {
        stats = stats_of(observer);
        return counter(stats, "peers_held_back") == 0 && counter(stats, "outgoing_bytes") == 0;
      },
      30s));
  CHECK(answered >= 1024);
  CHECK(broker.stop().code == 0);
}

TEST_CASE("peers that do not read share a total outgoing cap and a reader is still served",
          "[broker][bounds]") {
  test_support::TempDir dir("broker-bounds-total");
  // Each hostile peer could hold its own cap (4 MiB; 1 MiB in the sanitizer
  // trees) on top of the kernel's buffers (up to 4 MiB), 24 MiB (6 MiB) in
  // all. Together they may hold what they took while the total (8 MiB; 2 MiB)
  // had room, at most the total, and what each took up to its share once it
  // was reached, at most the total again: twice the total, plus one message
  // over each reply's room (docs/protocol.md, "Limits and memory"). How much
  // of the first part the kernel's buffers take off varies from run to run;
  // the total plus one page each was passed by 5 KB in one run of the
  // sanitizer tree.
  const std::size_t message_bytes = test_support::scaled(kMiB / 4, kMiB / 32);
  const std::size_t page_bytes = 2 * message_bytes;
  const std::size_t cap = test_support::scaled(4 * kMiB, kMiB);
  const std::size_t total = 2 * cap;
  constexpr std::size_t kHostile = 6;
  BrokerProcess broker(dir.path(), dir / "broker.db",
                       {"--max-outgoing-bytes", std::to_string(cap), "--max-total-outgoing-bytes",
                        std::to_string(total)});
  publish_big(broker.endpoint(), 8, message_bytes);

  zmq::context_t context(1);
  std::vector<zmq::socket_t> hostile;
  const std::uint64_t kFetches = (8 * kMiB + cap) / page_bytes + 24;
  for (std::size_t peer = 0; peer < kHostile; ++peer) {
    hostile.push_back(test_support::non_reading_dealer(context, broker.endpoint()));
    send_fetches(hostile.back(), kFetches, page_bytes);
  }
  broker::Client observer(broker.endpoint());
  auto stats = stats_once_fetches_arrived(observer, kHostile * kFetches);
  CHECK(counter(stats, "peers_held_back") == kHostile);
  CHECK(counter(stats, "outgoing_bytes") <= 2 * total + kHostile * page_bytes);
  CHECK(counter(stats, "outgoing_bytes") >= total / 2);
  // A consumer that reads gets whole pages meanwhile (its share is the
  // total over the 8 connections: two messages and their ids fit).
  auto page = observer.fetch(
      wire::Fetch{1, "big", "", 1, false, 2, static_cast<std::uint32_t>(page_bytes + 4096), 0},
      20s);
  REQUIRE(page.ok());
  CHECK(page->messages.size() == 2);
  for (auto& socket : hostile) socket.close();
  CHECK(broker.stop().code == 0);
}

// libzmq 4.3 aborts the whole process (Assertion failed: !_io_error,
// stream_engine_base.cpp) when a connection whose input was stopped by a full
// receive queue ends, and a ZMTP PING it had read before is processed once the
// queue has room. With one message per connection, a relay's heartbeats and a
// broker loop stalled past the relay's heartbeat timeout (a slow disk, a paused
// process) were enough; so was any peer asking for it on purpose.
TEST_CASE("a connection ending while the broker is stalled cannot abort it",
          "[broker][bounds][cuts]") {
  test_support::TempDir dir("broker-stall");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  zmq::context_t context(1);
  zmq::socket_t peer(context, zmq::socket_type::dealer);
  peer.set(zmq::sockopt::linger, 0);
  peer.set(zmq::sockopt::heartbeat_ivl, 20);
  peer.set(zmq::sockopt::heartbeat_timeout, 1000);
  REQUIRE(zmq_socket_monitor(peer.handle(), "inproc://stalled-broker-peer",
                             ZMQ_EVENT_DISCONNECTED) == 0);
  zmq::socket_t events(context, zmq::socket_type::pair);
  events.set(zmq::sockopt::rcvtimeo, 20'000);
  events.connect("inproc://stalled-broker-peer");
  peer.connect(broker.endpoint());
  peer.set(zmq::sockopt::rcvtimeo, 20'000);
  REQUIRE(wire::send_message(peer, wire::Hello{"stall", 0, "", 0, 0}));
  auto welcome =
      wire::receive_message(peer, zmq::recv_flags::none, broker::ClientOptions::client_limits());
  REQUIRE(welcome.has_value());
  REQUIRE(welcome->ok());
  const auto session = std::get<wire::Welcome>(welcome->value()).session_id;

  // Small batches sent while the broker is stopped wait in its socket with
  // the peer's PINGs between them, as a relay forwarding a trickle sends them;
  // unanswered, the peer gives the connection up. The pauses only shape the
  // stream (a PING between batches); nothing waits on them.
  REQUIRE(broker.process().pause());
  for (std::uint64_t batch = 1; batch <= 24; ++batch) {
    REQUIRE(wire::send_message(
        peer, wire::Publish{session, batch, {message("stall-" + std::to_string(batch), "x")}}));
    std::this_thread::sleep_for(25ms);
  }
  zmq::message_t event;
  const bool disconnected = events.recv(event).has_value();
  broker.process().signal(SIGCONT);
  REQUIRE(disconnected);
  peer.close();

  // The broker reads what waited, finds the connection gone, and goes on.
  broker::Client client(broker.endpoint());
  auto pong = client.ping(20s);
  INFO(broker.process().stderr_text());
  CHECK(pong.ok());
  CHECK(broker.process().running());
  CHECK(broker.stop().code == 0);
}

namespace {

// Sockets the process has open (Linux /proc: descriptors linked to
// "socket:[inode]"; its files and ZeroMQ's eventfds do not count).
std::size_t open_sockets(pid_t pid) {
  std::size_t count = 0;
  std::error_code error;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", error)) {
    auto target = std::filesystem::read_symlink(entry.path(), error);
    if (!error && target.string().rfind("socket:", 0) == 0) ++count;
  }
  return count;
}

// A TCP connection to `endpoint` (tcp://127.0.0.1:PORT) that, with
// `handshake`, goes through the ZMTP 3.0 NULL handshake as a DEALER and sends
// the first frame of a message announcing more; then it says nothing.
int silent_peer(const std::string& endpoint, bool handshake) {
  const auto port = std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
  if (!handshake) return fd;
  std::string greeting(64, '\0');
  greeting[0] = '\xff';
  greeting[9] = '\x7f';
  greeting[10] = 3;  // ZMTP 3.0
  greeting.replace(12, 4, "NULL");
  REQUIRE(::write(fd, greeting.data(), greeting.size()) == 64);
  char answer[64];
  std::size_t got = 0;
  while (got < sizeof answer) {
    auto n = ::read(fd, answer + got, sizeof answer - got);
    REQUIRE(n > 0);
    got += static_cast<std::size_t>(n);
  }
  const std::string body =
      std::string("\x05READY\x0bSocket-Type") + std::string("\0\0\0\x06", 4) + "DEALER";
  std::string frames = std::string("\x04") + static_cast<char>(body.size()) + body;
  frames += std::string("\x01\x04OBX\x02", 6);  // a first frame, "more" set, and no second
  REQUIRE(::write(fd, frames.data(), frames.size()) == static_cast<ssize_t>(frames.size()));
  return fd;
}

// Opens 16 silent peers (see silent_peer) and checks that the broker closes
// every one within `within` and still serves `client`.
void check_silent_peers_dropped(BrokerProcess& broker, broker::Client& client, bool handshake,
                                std::chrono::seconds within) {
  const pid_t pid = broker.process().pid();
  const auto before = open_sockets(pid);
  std::vector<int> peers;
  for (int i = 0; i < 16; ++i) peers.push_back(silent_peer(broker.endpoint(), handshake));
  CHECK(test_support::wait_until([&] { return open_sockets(pid) >= before + 16; }, 20s));
  const bool dropped =
      test_support::wait_until([&] { return open_sockets(pid) <= before; }, within, 100ms);
  INFO("sockets: " << before << " before, " << open_sockets(pid) << " now");
  CHECK(dropped);
  CHECK(client.ping(20s).ok());
  for (int fd : peers) ::close(fd);
}

}  // namespace

// A peer that connected and never finished its ZMTP handshake was kept for
// libzmq's 30 s: a thousand of them took every descriptor of a broker under
// the usual limit of 1,024 and locked everyone else out.
TEST_CASE("peers that connect and never finish the handshake are dropped", "[broker][bounds]") {
  test_support::TempDir dir("broker-silent-peers");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto client = connect(broker.endpoint());
  REQUIRE(client->ping(20s).ok());
  // Dropped after the 10 s handshake timeout (libzmq's own is 30 s).
  check_silent_peers_dropped(broker, *client, false, 25s);
  CHECK(broker.stop().code == 0);
}

// A peer that finished its handshake, sent the first frame of a message and
// went silent was held until it closed: nothing of it reached the broker's
// loop, and ZeroMQ waits for the rest of the message for ever.
TEST_CASE("peers that go silent halfway through a message are dropped", "[broker][bounds]") {
  test_support::TempDir dir("broker-half-messages");
  BrokerProcess broker(dir.path(), dir / "broker.db", {"--peer-timeout", "3s"});
  auto client = connect(broker.endpoint());
  REQUIRE(client->ping(20s).ok());
  // Dropped once nothing arrived for 3 s after a PING (sent every 1 s); the
  // client, whose ZeroMQ answers the PINGs, is kept.
  check_silent_peers_dropped(broker, *client, true, 30s);
  CHECK(broker.stop().code == 0);
}

// The long-poll places (10,000) were shared by all: one connection could
// take every one, and every other consumer's FETCH was then answered at once,
// empty, which turns its long-poll into busy polling.
TEST_CASE("one connection cannot take every waiting FETCH place", "[broker][bounds]") {
  test_support::TempDir dir("broker-waiting-fetches");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  zmq::context_t context(1);
  zmq::socket_t greedy(context, zmq::socket_type::dealer);
  greedy.set(zmq::sockopt::linger, 0);
  greedy.set(zmq::sockopt::rcvtimeo, 20'000);
  greedy.connect(broker.endpoint());
  constexpr std::uint64_t kFetches = 150;
  for (std::uint64_t id = 1; id <= kFetches; ++id) {
    REQUIRE(wire::send_message(greedy, wire::Fetch{id, "quiet", "", 1, false, 0, 0, 60'000}));
  }
  // Past its 100 places the connection's FETCHes are answered at once, empty.
  for (std::uint64_t answered = 0; answered < kFetches - 100; ++answered) {
    auto reply = wire::receive_message(greedy, zmq::recv_flags::none,
                                       broker::ClientOptions::client_limits());
    REQUIRE(reply.has_value());
    REQUIRE(reply->ok());
    auto* page = std::get_if<wire::Messages>(&reply->value());
    REQUIRE(page != nullptr);
    CHECK(page->messages.empty());
    CHECK(page->request_id > 100);
  }
  broker::Client observer(broker.endpoint());
  CHECK(counter(stats_of(observer), "waiting_fetches") == 100);
  // Another consumer's long-poll still waits, and is answered by a message.
  broker::Client consumer(broker.endpoint());
  std::optional<wire::Result<wire::Messages>> page;
  std::thread waiting([&] {
    page = consumer.fetch(wire::Fetch{0, "other", "", 1, false, 0, 0, 30'000}, 60s);
  });
  CHECK(test_support::wait_until(
      [&] { return counter(stats_of(observer), "waiting_fetches") == 101; }, 20s));
  auto producer = connect(broker.endpoint());
  std::vector<wire::OutgoingMessage> batch{message("other-1", "x", "other")};
  CHECK(producer->publish(1, batch, 20s).ok());
  waiting.join();
  REQUIRE(page.has_value());
  REQUIRE(page->ok());
  CHECK(page->value().messages.size() == 1);
  CHECK(broker.stop().code == 0);
}

TEST_CASE("a publisher that does not read its acks gets no more work done") {
  test_support::TempDir dir("broker-bounds");
  BrokerProcess broker(dir.path(), dir / "broker.db", {"--max-outgoing-bytes", "1m"});
  zmq::context_t context(1);
  auto hostile = test_support::non_reading_dealer(context, broker.endpoint());
  hostile.set(zmq::sockopt::rcvtimeo, 20000);
  REQUIRE(wire::send_message(hostile, wire::Hello{"hostile", 0, "", 0}));
  auto welcome = wire::receive_message(hostile);
  REQUIRE(welcome.has_value());
  REQUIRE(welcome->ok());
  auto session = std::get<wire::Welcome>(welcome->value()).session_id;
  // 10,000 messages with an empty msg_id, each its own key: a 170 KB batch. Its
  // ACK is 230 KB the first time (REJECTED each), 790 KB after that (the keys
  // are blocked for the session: BLOCKED with its reason).
  constexpr std::uint64_t kBatches = 60;
  for (std::uint64_t batch_id = 1; batch_id <= kBatches; ++batch_id) {
    std::string body;
    wire::begin_publish_body(body, session, batch_id);
    for (int i = 0; i < 10'000; ++i) {
      wire::append_publish_message(body, "", "t", std::to_string(i), {}, "");
    }
    wire::finish_publish_body(body, 10'000);
    REQUIRE(wire::send_frames(hostile, {wire::encode_tag(), std::string(1, '\x03'), body}));
  }
  broker::Client observer(broker.endpoint());
  wire::StatsReply stats;
  // Every batch arrived: applied, waiting, dropped, or refused. A held-back
  // batch is refused when it is served after all: ZeroMQ handing the replies
  // to the kernel's socket buffers makes room again, and by then the session
  // has failed at the first dropped batch.
  const bool arrived = test_support::wait_until(
      [&] {
        stats = stats_of(observer);
        return counter(stats, "batches") + counter(stats, "refused_batches") +
                   counter(stats, "requests_waiting") + counter(stats, "requests_dropped") ==
               kBatches;
      },
      30s);
  INFO("batches " << counter(stats, "batches") << ", refused " << counter(stats, "refused_batches")
                  << ", waiting " << counter(stats, "requests_waiting") << ", dropped "
                  << counter(stats, "requests_dropped") << ", outgoing bytes "
                  << counter(stats, "outgoing_bytes"));
  REQUIRE(arrived);
  const auto applied = counter(stats, "batches");
  const auto dropped = counter(stats, "requests_dropped");
  CHECK(applied < kBatches);
  CHECK(dropped > 0);
  // Held back before the drops: still waiting, or refused since.
  CHECK(counter(stats, "requests_waiting") + counter(stats, "refused_batches") > 0);
  // At most the cap plus the one ACK that crossed it.
  CHECK(counter(stats, "outgoing_bytes") <= kMiB + 790'012);
  // Once it reads: ACKs for its first batches, in order, then only
  // session_failed ERRORs, in order (its session failed at the first drop),
  // so nothing is applied past a dropped batch. A dropped batch gets no reply.
  std::uint64_t acked = 0;
  std::uint64_t last_refused = 0;
  for (std::uint64_t replies = 0; replies + dropped < kBatches; ++replies) {
    auto reply = wire::receive_message(hostile, zmq::recv_flags::none,
                                       broker::ClientOptions::client_limits());
    REQUIRE(reply.has_value());
    REQUIRE(reply->ok());
    if (auto* ack = std::get_if<wire::Ack>(&reply->value())) {
      CHECK(last_refused == 0);
      CHECK(ack->batch_id == ++acked);
    } else {
      auto& error = std::get<wire::ErrorReply>(reply->value());
      CHECK(error.code == wire::ErrorCode::session_failed);
      CHECK(error.request_id > std::max(acked, last_refused));
      last_refused = error.request_id;
    }
  }
  CHECK(acked == applied);
  CHECK(observer.ping(20s).ok());
}

TEST_CASE("FETCH replies are sized to what the connection can still take") {
  test_support::TempDir dir("broker-bounds");
  BrokerProcess broker(dir.path(), dir / "broker.db", {"--max-outgoing-bytes", "2m"});
  publish_big(broker.endpoint(), 12, kMiB / 4);
  // Asked for 8 MiB, the reply stays within the 2 MiB cap (plus one message).
  broker::Client consumer(broker.endpoint());
  auto page = consumer.fetch(wire::Fetch{0, "big", "", 1, false, 0, 8 << 20, 0}, 20s);
  REQUIRE(page.ok());
  std::size_t bytes = 0;
  for (const auto& stored : page->messages) bytes += stored.payload.size();
  CHECK(page->messages.size() >= 7);
  CHECK(page->messages.size() < 12);
  CHECK(bytes <= 2 * kMiB + kMiB / 4);
}

TEST_CASE("COMMIT_OFFSET cannot skip messages and a group's first FETCH honours from_offset") {
  test_support::TempDir dir("broker-offsets");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  auto producer = connect(broker.endpoint());
  std::vector<wire::OutgoingMessage> batch;
  for (int i = 1; i <= 40; ++i) batch.push_back(message("o-" + std::to_string(i), "p"));
  REQUIRE(producer->publish(1, batch, 20s).ok());

  broker::Client consumer(broker.endpoint());
  auto past_end = consumer.commit_offset("orders", "billing", 1000, 20s);
  REQUIRE_FALSE(past_end.ok());
  CHECK(past_end.error().code == wire::ErrorCode::invalid_value);
  CHECK_THAT(past_end.error().message, Catch::Contains("past the last offset 40"));
  auto unknown = consumer.commit_offset("nothing-here", "billing", 1, 20s);
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().code == wire::ErrorCode::invalid_value);
  CHECK_THAT(unknown.error().message, Catch::Contains("unknown topic"));

  // Never committed: from_offset is where it starts.
  auto first = consumer.fetch(wire::Fetch{0, "orders", "billing", 30, true, 5, 0, 0}, 20s);
  REQUIRE(first.ok());
  REQUIRE_FALSE(first->messages.empty());
  CHECK(first->messages.front().offset == 30);
  // The refused commits changed nothing; a valid one is where the group resumes.
  REQUIRE(consumer.commit_offset("orders", "billing", 40, 20s).ok());
  auto resumed = consumer.fetch(wire::Fetch{0, "orders", "billing", 30, true, 5, 0, 0}, 20s);
  REQUIRE(resumed.ok());
  CHECK(resumed->messages.empty());
  CHECK(resumed->next_offset == 41);
  REQUIRE(consumer.commit_offset("orders", "billing", 3, 20s).ok());
  auto rewound = consumer.fetch(wire::Fetch{0, "orders", "billing", 30, true, 5, 0, 0}, 20s);
  REQUIRE(rewound.ok());
  REQUIRE_FALSE(rewound->messages.empty());
  CHECK(rewound->messages.front().offset == 4);
}
