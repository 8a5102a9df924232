// The metrics registry's text format, the readiness rules of the relay and
// the --metrics-bind parser, without daemons.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "cli/metrics_server.hpp"
#include "metrics/metrics.hpp"
#include "relay/metrics.hpp"
#include "scrape.hpp"
#include "test_support.hpp"

using metrics_test::sample;

TEST_CASE("counters, gauges and labels render in the Prometheus text format") {
  metrics::Registry registry;
  auto& stored = registry.counter("x_messages_total", "Messages.", {{"outcome", "stored"}});
  auto& duplicate = registry.counter("x_messages_total", "Messages.", {{"outcome", "duplicate"}});
  auto& backlog = registry.gauge("x_backlog", "Back\\log\nsecond line.");
  stored.add(3);
  duplicate.add();
  backlog.set(2.5);
  CHECK(&registry.counter("x_messages_total", "Messages.", {{"outcome", "stored"}}) == &stored);
  auto text = registry.render();
  CHECK(text.find("# HELP x_messages_total Messages.\n# TYPE x_messages_total counter\n") !=
        std::string::npos);
  CHECK(text.find("# HELP x_backlog Back\\\\log\\nsecond line.\n# TYPE x_backlog gauge\n") !=
        std::string::npos);
  CHECK(sample(text, "x_messages_total{outcome=\"stored\"}") == 3);
  CHECK(sample(text, "x_messages_total{outcome=\"duplicate\"}") == 1);
  CHECK(sample(text, "x_backlog") == 2.5);
  // One HELP/TYPE per family, however many series.
  CHECK(text.find("# TYPE x_messages_total") == text.rfind("# TYPE x_messages_total"));
}

TEST_CASE("label values are escaped") {
  metrics::Registry registry;
  registry.gauge("x_topic", "T.", {{"topic", "a\"b\\c\nd"}}).set(1);
  CHECK(registry.render().find("x_topic{topic=\"a\\\"b\\\\c\\nd\"} 1\n") != std::string::npos);
}

TEST_CASE("histograms count cumulative buckets, sum and count") {
  metrics::Registry registry;
  auto& latency = registry.histogram("x_seconds", "Latency.", {0.1, 1, 10});
  for (double value : {0.05, 0.1, 0.5, 5.0, 50.0}) latency.observe(value);
  auto text = registry.render();
  CHECK(text.find("# TYPE x_seconds histogram\n") != std::string::npos);
  CHECK(sample(text, "x_seconds_bucket{le=\"0.1\"}") == 2);  // bounds are inclusive
  CHECK(sample(text, "x_seconds_bucket{le=\"1\"}") == 3);
  CHECK(sample(text, "x_seconds_bucket{le=\"10\"}") == 4);
  CHECK(sample(text, "x_seconds_bucket{le=\"+Inf\"}") == 5);
  CHECK(sample(text, "x_seconds_count") == 5);
  CHECK(sample(text, "x_seconds_sum") == Approx(55.65));
}

TEST_CASE("updates from many threads are all counted") {
  metrics::Registry registry;
  auto& counter = registry.counter("x_total", "X.");
  auto& histogram = registry.histogram("x_size", "X.", metrics::power_of_two_buckets(8));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10'000; ++i) {
        counter.add();
        histogram.observe(3);
      }
    });
  }
  std::string during = registry.render();  // renders while the values change
  for (auto& thread : threads) thread.join();
  CHECK(counter.value() == 40'000);
  CHECK(sample(registry.render(), "x_size_count") == 40'000);
  CHECK(sample(registry.render(), "x_size_bucket{le=\"4\"}") == 40'000);
  CHECK(sample(registry.render(), "x_size_bucket{le=\"2\"}") == 0);
  CHECK(!during.empty());
}

TEST_CASE("collectors add their samples after the registered series") {
  metrics::Registry registry;
  registry.gauge("x_first", "F.").set(1);
  registry.add_collector([](metrics::Exposition& out) {
    out.family("x_collected", "C.", metrics::Type::gauge);
    out.sample("x_collected", {{"topic", "orders"}}, 7);
  });
  auto text = registry.render();
  CHECK(sample(text, "x_collected{topic=\"orders\"}") == 7);
  CHECK(text.find("x_first") < text.find("x_collected"));
}

TEST_CASE("invalid names and a type clash are refused") {
  metrics::Registry registry;
  CHECK_THROWS_AS(registry.counter("9lives", "X."), std::invalid_argument);
  CHECK_THROWS_AS(registry.counter("x-y", "X."), std::invalid_argument);
  CHECK_THROWS_AS(registry.gauge("x_ok", "X.", {{"le", "1"}}), std::invalid_argument);
  CHECK_THROWS_AS(registry.gauge("x_ok", "X.", {{"__reserved", "1"}}), std::invalid_argument);
  registry.counter("x_total", "X.");
  CHECK_THROWS_AS(registry.gauge("x_total", "X."), std::invalid_argument);
  CHECK_THROWS_AS(registry.histogram("x_h", "X.", {1, 1}), std::invalid_argument);
}

TEST_CASE("relay readiness: lease, session and the age of the oldest pending message") {
  metrics::Registry registry;
  relay::RelayMetrics relay_metrics(registry);
  relay::BacklogProbe::Reading young{outbox::Backlog{5, 0, 0, std::chrono::seconds(2)}, {}};
  relay::BacklogProbe::Reading old{outbox::Backlog{5, 0, 0, std::chrono::seconds(90)}, {}};
  relay::BacklogProbe::Reading unreadable{std::nullopt, "cannot read the backlog of x.db: locked"};
  const auto lag = std::chrono::seconds(60);

  // Starting: no lease, not a standby.
  auto state = relay::relay_readiness(relay_metrics, young, lag);
  CHECK_FALSE(state.ready);
  CHECK(state.reason.find("no relay lease") != std::string::npos);

  relay_metrics.standby.set(1);
  CHECK(relay::relay_readiness(relay_metrics, young, lag).ready);
  CHECK_FALSE(relay::relay_readiness(relay_metrics, old, lag).ready);

  relay_metrics.standby.set(0);
  relay_metrics.lease_held.set(1);
  state = relay::relay_readiness(relay_metrics, young, lag);
  CHECK_FALSE(state.ready);
  CHECK(state.reason.find("no session") != std::string::npos);

  relay_metrics.session_up.set(1);
  CHECK(relay::relay_readiness(relay_metrics, young, lag).ready);
  state = relay::relay_readiness(relay_metrics, old, lag);
  CHECK_FALSE(state.ready);
  CHECK(state.reason == "the oldest pending message is 90.0 s old (limit 60.0 s)");
  state = relay::relay_readiness(relay_metrics, unreadable, lag);
  CHECK_FALSE(state.ready);
  CHECK(state.reason == unreadable.error);
}

TEST_CASE("the metrics address is HOST:PORT with an IPv4 address or localhost") {
  CHECK(cli::parse_bind_address("127.0.0.1:9464"));
  CHECK(cli::parse_bind_address("0.0.0.0:0"));
  CHECK(cli::parse_bind_address("localhost:9464")->port == 9464);
  for (const char* bad : {"", "9464", ":9464", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
                          "127.0.0.1:94x", "example.com:9464", "tcp://127.0.0.1:9464"}) {
    INFO(bad);
    CHECK_FALSE(cli::parse_bind_address(bad));
  }
}

// A daemon told to stop right after it started must not hang in the metrics
// server's destructor (the HTTP library's stop() does nothing until its
// accept loop has begun). Run on a thread with a deadline, so that a hang is
// reported as a failure instead of a test that never ends.
TEST_CASE("a metrics server destroyed right after it started stops at once") {
  constexpr int kServers = 200;
  static metrics::Registry registry;  // outlives the thread, even a hung one
  static std::atomic<int> stopped{0};
  std::thread([] {
    for (int i = 0; i < kServers; ++i) {
      {
        cli::MetricsServer server("127.0.0.1:0", registry, [] { return cli::Readiness{true, ""}; });
      }
      stopped.fetch_add(1);
    }
  }).detach();
  if (!test_support::wait_until([] { return stopped.load() == kServers; },
                                std::chrono::seconds(60))) {
    std::fprintf(stderr, "metrics server %d of %d did not stop within 60 s\n", stopped.load() + 1,
                 kServers);
    std::_Exit(1);  // the hung thread cannot be joined
  }
  CHECK(stopped.load() == kServers);
}

namespace {

// A TCP connection to `address` (127.0.0.1:PORT) that sends the start of a
// request and nothing more, as a slow or stuck client does.
int half_request(const std::string& address) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port =
      htons(static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1))));
  peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&peer), sizeof peer) == 0);
  const std::string start = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n";
  REQUIRE(::write(fd, start.data(), start.size()) == static_cast<ssize_t>(start.size()));
  return fd;
}

// Whether the server still holds the connection open (nothing to read yet).
bool still_open(int fd) {
  char byte = 0;
  return ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) < 0 &&
         (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace

// Each connection takes one of the server's workers until its request is read
// or the read timeout (5 s) passes. With two workers, two clients that never
// finish a request held /healthz back for 5 s at a time, long enough for an
// orchestrator's probe to restart a healthy daemon.
TEST_CASE("a few clients that never finish a request do not hold /healthz back") {
  metrics::Registry registry;
  cli::MetricsServer server("127.0.0.1:0", registry, [] { return cli::Readiness{true, ""}; });
  std::vector<int> stuck;
  for (int i = 0; i < 4; ++i) stuck.push_back(half_request(server.address()));
  auto reply = metrics_test::http_get(server.address(), "/healthz");
  CHECK(reply.status == 200);
  // Answered while every stuck client still held its connection, so not by
  // waiting for one of them to time out.
  for (int fd : stuck) CHECK(still_open(fd));
  for (int fd : stuck) ::close(fd);
}
