// Retention of message bodies and expiry of dedup entries, driven by a fake clock.
#include <catch2/catch.hpp>

#include <memory>

#include "broker/store.hpp"
#include "store_test_helpers.hpp"
#include "test_support.hpp"

using store_test::append;
using store_test::append_one;
using store_test::conflict;
using store_test::duplicate;
using store_test::Message;
using store_test::stored;
using namespace std::chrono_literals;

namespace {

// A clock the test moves by hand; shared with the store through the options.
struct FakeClock {
  std::shared_ptr<std::chrono::system_clock::time_point> now =
      std::make_shared<std::chrono::system_clock::time_point>(
          std::chrono::milliseconds(1'800'000'000'000));
  void advance(std::chrono::milliseconds by) const { *now += by; }
  std::function<std::chrono::system_clock::time_point()> function() const {
    return [now = now] { return *now; };
  }
};

broker::StoreOptions options_with(const FakeClock& clock, std::chrono::milliseconds retention,
                                  std::chrono::milliseconds dedup_window) {
  broker::StoreOptions options;
  options.sync = broker::SyncMode::normal;
  options.clock = clock.function();
  options.retention = retention;
  options.dedup_window = dedup_window;
  return options;
}

std::vector<Message> numbered(const std::string& prefix, int count,
                              const std::string& topic = "orders") {
  std::vector<Message> messages;
  for (int i = 0; i < count; ++i)
    messages.push_back({prefix + std::to_string(i), topic, "payload"});
  return messages;
}

// Runs maintenance until it reports nothing more to do right away.
broker::MaintenanceResult maintain(broker::Store& store, std::size_t max_rows) {
  broker::MaintenanceResult total;
  for (int round = 0; round < 10'000; ++round) {
    auto result = store.run_maintenance(max_rows);
    total.bodies_deleted += result.bodies_deleted;
    total.dedup_entries_deleted += result.dedup_entries_deleted;
    if (!result.more) break;
  }
  return total;
}

}  // namespace

TEST_CASE("without retention or dedup window maintenance deletes nothing") {
  test_support::TempDir dir("broker-store");
  FakeClock clock;
  broker::Store store(dir / "broker.db", options_with(clock, 0ms, 0ms));
  append(store, numbered("id-", 10));
  clock.advance(std::chrono::hours(24 * 365 * 10));
  auto result = store.run_maintenance();
  CHECK(result.bodies_deleted == 0);
  CHECK(result.dedup_entries_deleted == 0);
  CHECK(store.fetch("orders", 1, 100, 1 << 20).messages.size() == 10);
  CHECK(append_one(store, {"id-3", "orders", "payload"}) == duplicate(4));
}

TEST_CASE("retention deletes old bodies in small batches and keeps their dedup entries") {
  test_support::TempDir dir("broker-store");
  FakeClock clock;
  // Bodies are kept 1 hour, msg_ids remembered forever.
  broker::Store store(dir / "broker.db", options_with(clock, 1h, 0ms));
  // Bodies are deleted in whole append() calls' worth: five calls of five.
  auto old_messages = numbered("old-", 25);
  for (std::size_t first = 0; first < old_messages.size(); first += 5) {
    append(store, std::vector<Message>(old_messages.begin() + static_cast<long>(first),
                                       old_messages.begin() + static_cast<long>(first + 5)));
  }
  append(store, numbered("other-", 5, "payments"));
  clock.advance(30min);
  append(store, numbered("new-", 5));

  // Not old enough yet.
  clock.advance(30min);
  CHECK(store.run_maintenance(10).bodies_deleted == 0);

  clock.advance(1min);
  auto first = store.run_maintenance(10);
  CHECK(first.bodies_deleted == 10);
  CHECK(first.dedup_entries_deleted == 0);
  CHECK(first.more);
  auto rest = maintain(store, 10);
  CHECK(rest.bodies_deleted == 20);  // 15 more in orders, 5 in payments

  auto page = store.fetch("orders", 1, 100, 1 << 20);
  REQUIRE(page.messages.size() == 5);
  CHECK(page.messages.front().offset == 26);
  CHECK(page.messages.front().msg_id == "new-0");
  CHECK(store.fetch("payments", 1, 100, 1 << 20).messages.empty());
  CHECK(store.fetch("payments", 1, 100, 1 << 20).next_offset == 6);

  auto stats = store.stats();
  CHECK(stats.topics[0].topic == "orders");
  CHECK(stats.topics[0].message_count == 5);
  CHECK(stats.topics[0].first_offset == 26);
  CHECK(stats.topics[0].last_offset == 30);
  CHECK(stats.topics[1].message_count == 0);
  CHECK(stats.topics[1].first_offset == 0);
  CHECK(stats.dedup_entries == 35);

  // The deleted messages are still known: a resend is a duplicate of the
  // original offset, and offsets are never reused.
  CHECK(append_one(store, {"old-7", "orders", "payload"}) == duplicate(8));
  CHECK(append_one(store, {"other-4", "payments", "payload"}) == duplicate(5));
  CHECK(append_one(store, {"another", "payments", "payload"}) == stored(6));
}

TEST_CASE("retention never deletes dedup entries younger than the dedup window") {
  test_support::TempDir dir("broker-store");
  FakeClock clock;
  // Bodies kept 1 minute, msg_ids remembered for a day.
  broker::Store store(dir / "broker.db", options_with(clock, 1min, 24h));
  append(store, numbered("id-", 50));
  clock.advance(23h);
  auto result = maintain(store, 7);
  CHECK(result.bodies_deleted == 50);
  CHECK(result.dedup_entries_deleted == 0);
  CHECK(store.stats().dedup_entries == 50);
  auto outcomes = append(store, numbered("id-", 50));
  for (std::size_t i = 0; i < outcomes.size(); ++i) CHECK(outcomes[i] == duplicate(i + 1));
}

TEST_CASE("dedup entries older than the window are removed, younger ones kept") {
  test_support::TempDir dir("broker-store");
  FakeClock clock;
  broker::Store store(dir / "broker.db", options_with(clock, 0ms, 1h));
  append(store, numbered("early-", 40));
  clock.advance(40min);
  append(store, numbered("late-", 40));

  clock.advance(20min);  // early ones are exactly 1 hour old: still inside
  CHECK(maintain(store, 16).dedup_entries_deleted == 0);

  clock.advance(1ms);
  auto result = maintain(store, 16);
  // The sweep may need a few calls to cover the index; keep calling until all are seen.
  std::size_t deleted = result.dedup_entries_deleted;
  for (int round = 0; round < 10 && deleted < 40; ++round)
    deleted += maintain(store, 16).dedup_entries_deleted;
  CHECK(deleted == 40);
  CHECK(result.bodies_deleted == 0);
  CHECK(store.stats().dedup_entries == 40);

  // A forgotten msg_id is a new message again; a remembered one is not.
  CHECK(append_one(store, {"early-1", "orders", "payload"}) == stored(81));
  CHECK(append_one(store, {"late-1", "orders", "payload"}) == duplicate(42));
  // Bodies have no retention here: all 81 messages are still there.
  CHECK(store.stats().topics[0].message_count == 81);
}

TEST_CASE("counters and topic counts after maintenance survive a restart") {
  test_support::TempDir dir("broker-store");
  FakeClock clock;
  {
    broker::Store store(dir / "broker.db", options_with(clock, 1h, 2h));
    append(store, numbered("id-", 20));
    clock.advance(3h);
    maintain(store, 100);
    for (int round = 0; round < 10 && store.stats().dedup_entries > 0; ++round)
      maintain(store, 100);
  }
  broker::Store store(dir / "broker.db", options_with(clock, 1h, 2h));
  auto stats = store.stats();
  CHECK(stats.stored == 20);
  CHECK(stats.dedup_entries == 0);
  CHECK(stats.topics[0].message_count == 0);
  CHECK(stats.topics[0].last_offset == 20);
  CHECK(append_one(store, {"id-0", "orders", "payload"}) == stored(21));
}

TEST_CASE("a conflict with a message whose body retention removed names what differs") {
  test_support::TempDir dir("broker-store");
  FakeClock clock;
  broker::Store store(dir / "broker.db", options_with(clock, 1h, 0ms));
  REQUIRE(append_one(store, {"4711", "orders", "{}", "order-1"}) == stored(1));
  clock.advance(2h);
  REQUIRE(maintain(store, 100).bodies_deleted == 1);
  auto outcome = append_one(store, {"4711", "orders", "{}", "order-2"});
  CHECK(outcome == conflict(1));
  CHECK(outcome.detail ==
        "msg_id 4711 is already stored in orders at offset 1 with another key or headers; its "
        "body is no longer retained");
  CHECK(append_one(store, {"4711", "orders", "{}", "order-1"}) == duplicate(1));
}
