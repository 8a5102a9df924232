// One W3C trace context from the producer's commit to the consumer's handler:
// enqueue, outbox-relay, outbox-broker, FETCH, and the inbox callbacks of
// outbox::Inbox and (when its tests are built) outbox::RedisInbox.
#include <outbox/inbox.hpp>
#include <outbox/outbox.hpp>

#include "relay_harness.hpp"
#if OUTBOX_TEST_REDIS_INBOX
#include <outbox/redis_inbox.hpp>

#include "redis_server.hpp"
#endif

using namespace relay_test;

namespace {

// After the traced and the untraced message, one whose traceparent header a
// producer wrote by hand in a shape that is not W3C's.
const outbox::Message kMalformed{
    .topic = "orders",
    .key = "k",
    .payload = "malformed",
    .headers = {{"traceparent", "01-not-a-trace"}, {"tracestate", "a=b"}}};

}  // namespace

TEST_CASE(
    "the inbox handlers get the trace context the producer enqueued, through relay and "
    "broker",
    "[relay][trace]") {
  test_support::TempDir dir("relay-trace-inbox");
  BrokerProcess broker(dir.path(), dir / "broker.db");
  commit_traced_orders(dir / "app.db", {kMalformed});
  RelayProcess relay(dir.path(), dir / "app.db", broker.endpoint());
  REQUIRE(wait_delivered(dir / "app.db", 3));
  auto fetched = fetch_all(broker.endpoint());
  REQUIRE(fetched.size() == 3);
  const std::vector<outbox::TraceContext> expected{
      {kTraceparent, kTracestate}, {}, {}};  // the malformed one is dropped, tracestate too

  auto inbox = outbox::Inbox::open(dir / "consumer.db");
  std::vector<outbox::TraceContext> seen;
  for (const auto& message : fetched) {
    auto result = inbox.process_once(
        message, [&](sqlite3*, const outbox::TraceContext& trace) { seen.push_back(trace); });
    CHECK(result == outbox::ProcessResult::processed);
  }
  CHECK(seen == expected);
  // A redelivery does not run the handler.
  CHECK(inbox.process_once(fetched[0], [&](sqlite3*, const outbox::TraceContext&) {
    FAIL("handler ran for a redelivery");
  }) == outbox::ProcessResult::already_done);

#if OUTBOX_TEST_REDIS_INBOX
  inbox_test::RedisServer redis;
  outbox::RedisInboxOptions options;
  options.endpoint = redis.endpoint();
  auto redis_inbox = outbox::RedisInbox::connect(options);
  seen.clear();
  for (const auto& message : fetched) {
    auto result = redis_inbox.process_once(
        message, [&](const outbox::TraceContext& trace) { seen.push_back(trace); });
    CHECK(result == outbox::ProcessResult::processed);
  }
  CHECK(seen == expected);
#else
  WARN("RedisInbox not built or redis-server not installed: its handler is not checked here");
#endif
  CHECK(relay.stop().code == 0);
}

TEST_CASE("trace_context_of checks what it reads from headers", "[trace]") {
  outbox::Headers headers{
      {"traceparent", kTraceparent},
      {"traceparent", "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-00"},
      {"tracestate", kTracestate}};
  CHECK(outbox::trace_context_of(headers) == outbox::TraceContext{kTraceparent, kTracestate});
  CHECK(outbox::trace_context_of(outbox::Headers{}).empty());
  CHECK(outbox::trace_context_of(outbox::Headers{{"tracestate", kTracestate}}).empty());
  CHECK(outbox::trace_context(kTraceparent, std::string(outbox::kMaxTracestateBytes + 1, 'x')) ==
        outbox::TraceContext{kTraceparent, ""});
  CHECK(
      outbox::trace_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01", kTracestate)
          .empty());
}
