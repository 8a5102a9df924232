// broker::Client notices a broken connection from its socket: a TCP
// connection cut under it, or one that goes silent (ZMTP heartbeats), comes
// back as ErrorCode::disconnected at once instead of a timeout, and a new
// session after reconnect() works.
#include <ctime>
#include <string>
#include <vector>

#include "broker_process.hpp"
#include "cutting_proxy.hpp"

using namespace broker_test;

namespace {

// About 40 KB: more than the proxy lets through before its fault.
std::vector<wire::OutgoingMessage> big_batch(const std::string& prefix) {
  std::vector<wire::OutgoingMessage> batch;
  for (int i = 0; i < 40; ++i) {
    batch.push_back(message(prefix + std::to_string(i), std::string(1000, 'x')));
  }
  return batch;
}

// CPU time of the calling thread.
std::chrono::nanoseconds thread_cpu_time() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return std::chrono::seconds(now.tv_sec) + std::chrono::nanoseconds(now.tv_nsec);
}

}  // namespace

TEST_CASE("waiting for a reply sleeps until the deadline instead of polling towards it",
          "[broker][client]") {
  test_support::TempDir dir("client-idle-wait");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  broker::Client client(broker.endpoint());
  REQUIRE(client.hello("idle", 20s).ok());
  // Nothing is asked, so every receive waits its whole timeout. A wait that
  // rounded the time left down to whole milliseconds polled without sleeping
  // for the last fraction of one: here, for all of each 1 ms wait (its CPU
  // time was its wall time). Asleep, the thread uses a few percent of it.
  const auto cpu_before = thread_cpu_time();
  const auto wall_before = std::chrono::steady_clock::now();
  for (int i = 0; i < 200; ++i) REQUIRE_FALSE(client.receive(1ms).has_value());
  const auto cpu = thread_cpu_time() - cpu_before;
  const auto wall = std::chrono::steady_clock::now() - wall_before;
  INFO("thread CPU " << cpu.count() / 1000 << " us over " << wall.count() / 1000 << " us");
  CHECK(wall >= 200ms);
  CHECK(cpu < wall / 4);
}

TEST_CASE("a cut connection is reported as disconnected, and a new session works",
          "[broker][client][cuts]") {
  test_support::TempDir dir("client-cut");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  CuttingProxy proxy(dir.path(), broker.endpoint(), {"--cut-every", "8K-8K"});
  broker::Client client(proxy.endpoint());
  REQUIRE(client.hello("cut", 20s).ok());
  // A deadline far beyond the test's: only the connection event can end the wait.
  auto ack = client.publish(1, big_batch("cut-"), 10min);
  REQUIRE_FALSE(ack.ok());
  CHECK(ack.error().code == wire::ErrorCode::disconnected);
  CHECK(test_support::wait_until([&] { return proxy.counts()["cut"] >= 1; }, 20s));

  client.reconnect();
  REQUIRE(client.hello("cut", 20s).ok());
  auto small = client.publish(1, std::vector{message("after-cut", "ok")}, 20s);
  REQUIRE(small.ok());
  CHECK(small->entries[0].status == wire::AckStatus::stored);
}

TEST_CASE("a connection that goes silent is reported as disconnected by heartbeat",
          "[broker][client][cuts]") {
  test_support::TempDir dir("client-silent");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  CuttingProxy proxy(dir.path(), broker.endpoint(), {"--cut-every", "8K-8K", "--freeze", "1"});
  // The timeout is far below the publish's 10 minutes, so only the heartbeat can
  // end it, and far above what a loaded machine (or a sanitizer build) needs to
  // answer a ping: 500 ms lost the connection during HELLO under TSan.
  broker::ClientOptions options;
  options.heartbeat_interval = 250ms;
  options.heartbeat_timeout = 5s;
  broker::Client client(proxy.endpoint(), options);
  auto hello = client.hello("silent", 20s);
  INFO((hello.ok() ? std::string() : hello.error().message));
  REQUIRE(hello.ok());
  auto ack = client.publish(1, big_batch("silent-"), 10min);
  REQUIRE_FALSE(ack.ok());
  CHECK(ack.error().code == wire::ErrorCode::disconnected);
  CHECK(test_support::wait_until([&] { return proxy.counts()["freeze"] >= 1; }, 20s));
  CHECK(proxy.counts()["cut"] == 0);
}

TEST_CASE("a fetch whose connection is cut fails at once and is answered when sent again",
          "[broker][client][cuts]") {
  test_support::TempDir dir("client-fetch-cut");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  {
    auto publisher = connect(broker.endpoint());
    REQUIRE(publisher->publish(1, big_batch("fetch-"), 20s).ok());
  }
  CuttingProxy proxy(dir.path(), broker.endpoint(), {"--cut-every", "8K-8K"});
  broker::Client consumer(proxy.endpoint());
  wire::Fetch request;
  request.topic = "orders";
  request.from_offset = 1;
  request.max_messages = 40;
  auto page = consumer.fetch(request, 10min);  // the reply is cut in the middle
  REQUIRE_FALSE(page.ok());
  CHECK(page.error().code == wire::ErrorCode::disconnected);
  // No session needed: the same request on whatever connection comes next.
  request.max_messages = 2;
  auto again = consumer.fetch(request, 20s);
  INFO((again.ok() ? std::string() : again.error().message));
  REQUIRE(again.ok());
  CHECK(again->messages.size() == 2);
}
