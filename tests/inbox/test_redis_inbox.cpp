// outbox::RedisInbox beyond the shared contract: restarts with and without
// persistence, an unreachable or stalled server, retention, options, and
// records that are not what the inbox wrote.
#include <catch2/catch.hpp>
#include <string>

#include "inbox_backends.hpp"

using namespace std::chrono_literals;
using inbox_test::RedisServer;
using inbox_test::RedisServerOptions;
using outbox::BeginResult;
using outbox::ClaimResult;

namespace {

outbox::RedisInbox connect(const RedisServer& server, outbox::RedisInboxOptions options = {}) {
  options.endpoint = server.endpoint();
  return outbox::RedisInbox::connect(options);
}

// begin() and complete() of a msg_id nobody holds.
void process(outbox::RedisInbox& inbox, const std::string& msg_id) {
  auto claim = inbox.begin(msg_id, 1min);
  REQUIRE(claim.claimed());
  REQUIRE(inbox.complete(msg_id, claim.token) == ClaimResult::ok);
}

}  // namespace

TEST_CASE("with AOF fsynced on every write a killed Redis forgets nothing completed", "[redis]") {
  RedisServer server({.append_only = true, .unix_socket = true});
  auto inbox = connect(server);
  constexpr int messages = 200;
  for (int i = 0; i < messages; ++i) process(inbox, "m-" + std::to_string(i));
  auto in_flight = inbox.begin("in-flight", 1h);
  REQUIRE(in_flight.claimed());

  server.restart();  // SIGKILL: no shutdown save

  // The same inbox reconnects by itself on its next call.
  for (int i = 0; i < messages; ++i) {
    INFO("msg_id m-" << i);
    CHECK(inbox.begin("m-" + std::to_string(i), 1min).result == BeginResult::already_done);
  }
  auto other = connect(server);
  CHECK(other.begin("in-flight", 1min).result == BeginResult::in_progress_elsewhere);
  CHECK(inbox.complete("in-flight", in_flight.token) == ClaimResult::ok);
}

TEST_CASE("without persistence a restart forgets the records (documented: they repeat)",
          "[redis]") {
  RedisServer server({.append_only = false, .unix_socket = true});
  auto inbox = connect(server);
  process(inbox, "m-1");
  server.restart();
  // The msg_id is processed again: what docs/redis_inbox.md warns about.
  CHECK(inbox.begin("m-1", 1min).claimed());
}

TEST_CASE("an unreachable Redis is an error, never already_done, and the inbox reconnects",
          "[redis]") {
  RedisServer server({.append_only = true, .unix_socket = true});
  outbox::RedisInboxOptions options;
  options.connect_timeout = 1s;
  options.command_timeout = 1s;
  auto inbox = connect(server, options);
  auto claim = inbox.begin("m-1", 1min);
  REQUIRE(inbox.complete("m-1", claim.token) == ClaimResult::ok);

  server.kill();
  CHECK_THROWS_AS(inbox.begin("m-1", 1min), outbox::RedisError);
  CHECK_THROWS_AS(inbox.begin("m-2", 1min), outbox::RedisError);
  CHECK_THROWS_WITH(inbox.complete("m-1", claim.token),
                    Catch::Contains(server.endpoint()) && Catch::Contains("complete 'm-1'"));
  int runs = 0;
  CHECK_THROWS_AS(inbox.process_once("m-3", [&] { ++runs; }), outbox::RedisError);
  CHECK(runs == 0);
  options.endpoint = server.endpoint();
  CHECK_THROWS_WITH(outbox::RedisInbox::connect(options), Catch::Contains("connect"));

  server.restart();  // AOF on: the completed record is back
  CHECK(inbox.begin("m-1", 1min).result == BeginResult::already_done);
  CHECK(inbox.begin("m-2", 1min).claimed());
}

TEST_CASE("a Redis that stops answering times out with an error naming the call", "[redis]") {
  RedisServer server;
  outbox::RedisInboxOptions options;
  options.command_timeout = 300ms;
  options.connect_timeout = 300ms;
  auto inbox = connect(server, options);
  server.pause();
  CHECK_THROWS_WITH(inbox.begin("m-1", 100ms), Catch::Contains("begin 'm-1'"));
  server.resume();
  // The timed-out begin() may still run once Redis reads it: a claim whose
  // token nobody knows, taken over after its lease. Never "already done".
  auto after = inbox.begin("m-1", 1min);
  CHECK(after.result != BeginResult::already_done);
  CHECK(test_support::wait_until(
      [&] { return after.claimed() || (after = inbox.begin("m-1", 1min)).claimed(); }, 30s));
  CHECK(inbox.complete("m-1", after.token) == ClaimResult::ok);
}

TEST_CASE(
    "completed records expire after the retention, processing ones after lease plus retention",
    "[redis]") {
  RedisServer server;
  const std::string key = "outbox:inbox:m-1";
  {
    auto inbox = connect(server);  // default retention: 7 days
    auto claim = inbox.begin("m-1", 1min);
    const long processing_ttl = std::stol(server.command({"PTTL", key}));
    CHECK(processing_ttl > 7L * 24 * 3600 * 1000);  // lease + retention
    CHECK(processing_ttl <= 7L * 24 * 3600 * 1000 + 60'000);
    REQUIRE(inbox.complete("m-1", claim.token) == ClaimResult::ok);
    const long completed_ttl = std::stol(server.command({"PTTL", key}));
    CHECK(completed_ttl > 0);
    CHECK(completed_ttl <= 7L * 24 * 3600 * 1000);
    CHECK(server.command({"HGET", key, "state"}) == "completed");
  }
  outbox::RedisInboxOptions short_lived;
  short_lived.retention = 200ms;
  short_lived.redelivery_horizon = 100ms;
  auto inbox = connect(server, short_lived);
  process(inbox, "m-2");
  CHECK(test_support::wait_until([&] { return inbox.begin("m-2", 1min).claimed(); }, 30s));
}

TEST_CASE("a retention shorter than the redelivery horizon is refused unless allowed", "[redis]") {
  outbox::RedisInboxOptions options;
  options.endpoint = "redis://127.0.0.1:1";  // never reached: the options are refused first
  options.retention = std::chrono::hours(1);
  options.redelivery_horizon = std::chrono::hours(24);
  CHECK_THROWS_WITH(outbox::RedisInbox::connect(options),
                    Catch::Contains("shorter than the redelivery horizon"));
  options.retention = 0ms;
  CHECK_THROWS_WITH(outbox::RedisInbox::connect(options), Catch::Contains("retention"));

  RedisServer server;
  options.endpoint = server.endpoint();
  options.retention = std::chrono::hours(1);
  options.allow_retention_below_redelivery_horizon = true;
  auto inbox = outbox::RedisInbox::connect(options);
  CHECK(inbox.begin("m-1", 1min).claimed());
}

TEST_CASE("bad endpoints are refused with the endpoint named", "[redis]") {
  for (const std::string endpoint :
       {"http://127.0.0.1:6379", "redis://", "redis://host:0", "redis://host:99999",
        "redis://host:port", "redis://host/x", "unix://relative.sock", "redis://user@host"}) {
    outbox::RedisInboxOptions options;
    options.endpoint = endpoint;
    INFO(endpoint);
    CHECK_THROWS_WITH(outbox::RedisInbox::connect(options), Catch::Contains(endpoint));
  }
}

TEST_CASE("records the inbox did not write are refused with their key named", "[redis]") {
  RedisServer server;
  auto inbox = connect(server);
  server.command({"SET", "outbox:inbox:a-string", "hello"});
  CHECK_THROWS_AS(inbox.begin("a-string", 1min), outbox::RedisError);
  server.command({"HSET", "outbox:inbox:odd-state", "state", "maybe"});
  CHECK_THROWS_WITH(inbox.begin("odd-state", 1min), Catch::Contains("outbox:inbox:odd-state"));
  server.command({"HSET", "outbox:inbox:no-state", "token", "x"});
  CHECK_THROWS_WITH(inbox.complete("no-state", "x"), Catch::Contains("no state field"));
  // The inbox keeps working for everything else.
  CHECK(inbox.begin("m-1", 1min).claimed());
  outbox::RedisInboxOptions options;
  options.max_msg_id_bytes = 8;
  auto strict = connect(server, options);
  CHECK_THROWS_AS(strict.begin("a-long-msg-id", 1min), outbox::Error);
}

TEST_CASE("process_once runs the handler once and releases the claim when it throws", "[redis]") {
  RedisServer server;
  auto inbox = connect(server);
  int runs = 0;
  CHECK(inbox.process_once("m-1", [&] { ++runs; }) == outbox::ProcessResult::processed);
  CHECK(inbox.process_once("m-1", [&] { ++runs; }) == outbox::ProcessResult::already_done);
  CHECK(runs == 1);
  CHECK_THROWS_WITH(inbox.process_once("m-2", [] { throw std::runtime_error("api down"); }),
                    "api down");
  CHECK(inbox.process_once("m-2", [&] { ++runs; }) == outbox::ProcessResult::processed);
  CHECK(runs == 2);
  auto held = inbox.begin("m-3", 1min);
  CHECK(inbox.process_once("m-3", [&] { ++runs; }) == outbox::ProcessResult::in_progress);
  CHECK(runs == 2);

  // A handler that outlives its lease and is taken over meanwhile.
  outbox::RedisInboxOptions options;
  options.process_lease = 1ms;
  auto slow = connect(server, options);
  auto fast = connect(server);
  CHECK(slow.process_once("m-4", [&] {
    auto claim = fast.begin("m-4", 1min);
    REQUIRE(test_support::wait_until(
        [&] { return claim.claimed() || (claim = fast.begin("m-4", 1min)).claimed(); }, 30s));
    REQUIRE(fast.complete("m-4", claim.token) == ClaimResult::ok);
  }) == outbox::ProcessResult::claim_lost);
  CHECK(fast.begin("m-4", 1min).result == BeginResult::already_done);
  CHECK(held.claimed());
}
