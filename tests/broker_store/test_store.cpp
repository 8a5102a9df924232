#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>
#include <sqlite3.h>

#include "broker/store.hpp"
#include "store_test_helpers.hpp"
#include "test_support.hpp"
#include "wire/protocol.hpp"

using broker::AppendStatus;
using broker::RejectReason;
using store_test::append;
using store_test::append_one;
using store_test::conflict;
using store_test::duplicate;
using store_test::Message;
using store_test::rejected;
using store_test::stored;

namespace {

broker::StoreOptions normal_sync() {
  broker::StoreOptions options;
  options.sync = broker::SyncMode::normal;
  return options;
}

}  // namespace

TEST_CASE("new msg_ids are stored at consecutive per-topic offsets starting at 1") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  CHECK(store.last_offset("orders") == 0);

  auto outcomes =
      append(store, {{"id-1", "orders", "a"}, {"id-2", "orders", "b"}, {"id-3", "payments", "c"}});
  CHECK(outcomes == std::vector{stored(1), stored(2), stored(1)});
  CHECK(append_one(store, {"id-4", "orders", "d"}) == stored(3));
  CHECK(store.last_offset("orders") == 3);
  CHECK(store.last_offset("payments") == 1);
  CHECK(store.last_offset("unknown") == 0);
}

TEST_CASE("a resend with the same payload is a duplicate of the original offset") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  REQUIRE(append_one(store, {"id-1", "orders", "a"}) == stored(1));
  REQUIRE(append_one(store, {"id-2", "orders", "b"}) == stored(2));

  CHECK(append_one(store, {"id-1", "orders", "a"}) == duplicate(1));
  CHECK(append_one(store, {"id-2", "orders", "b"}) == duplicate(2));
  // Nothing new was stored: the next new message continues at 3.
  CHECK(append_one(store, {"id-3", "orders", "c"}) == stored(3));
  CHECK(store.fetch("orders", 1, 100, 1 << 20).messages.size() == 3);
}

TEST_CASE("the same msg_id with another payload or topic is a conflict") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  REQUIRE(append_one(store, {"id-1", "orders", "original"}) == stored(1));

  CHECK(append_one(store, {"id-1", "orders", "changed"}) == conflict(1));
  CHECK(append_one(store, {"id-1", "payments", "original"}) == conflict(1));
  CHECK(store.last_offset("payments") == 0);
  // The conflicting message did not create the topic.
  CHECK(store.stats().topics.size() == 1);
  REQUIRE(append_one(store, {"id-2", "payments", "p"}) == stored(1));
  CHECK(append_one(store, {"id-1", "payments", "original"}) == conflict(1));
  CHECK(store.stats().conflicts == 3);
  auto fetched = store.fetch("orders", 1, 100, 1 << 20);
  REQUIRE(fetched.messages.size() == 1);
  CHECK(fetched.messages[0].payload == "original");
}

TEST_CASE("after a refused message, later messages of its order group and key are blocked") {
  test_support::TempDir dir("broker-store");
  broker::StoreOptions options = normal_sync();
  options.max_message_bytes = 64;
  broker::Store store(dir / "broker.db", options);
  REQUIRE(append_one(store, {"id-1", "orders", "original", "k"}) == stored(1));

  // One call, as one group commit of two sessions (groups 7 and 8) and a
  // message without a group.
  std::vector<Message> messages = {
      {"id-1", "orders", "changed", "k"},              // conflict: blocks (7, orders, k)
      {"id-2", "orders", "after", "k"},                // blocked
      {"id-3", "orders", "other key", "j"},            // another key goes on
      {"id-4", "orders", "other group", "k"},          // another group goes on
      {"id-5", "orders", "no group", "k"},             // no group: not ordered, goes on
      {"id-6", "orders", std::string(100, 'x'), "r"},  // rejected: blocks (7, orders, r)
      {"id-7", "orders", "after reject", "r"},         // blocked
  };
  std::vector<std::uint64_t> groups = {7, 7, 7, 8, 0, 7, 7};
  std::vector<broker::IncomingMessage> views;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    views.push_back(messages[i].view());
    views.back().order_group = groups[i];
  }
  auto outcomes = store.append(views);
  REQUIRE(outcomes.size() == 7);
  CHECK(outcomes[0] == conflict(1));
  CHECK(outcomes[1].status == AppendStatus::blocked);
  CHECK(outcomes[2] == stored(2));
  CHECK(outcomes[3] == stored(3));
  CHECK(outcomes[4] == stored(4));
  CHECK(outcomes[5] == rejected(RejectReason::too_large));
  CHECK(outcomes[6].status == AppendStatus::blocked);
  // Blocked messages took no offset and left no dedup entry: a resend stores them.
  CHECK(append_one(store, {"id-2", "orders", "after", "k"}) == stored(5));
  CHECK(append_one(store, {"id-7", "orders", "after reject", "r"}) == stored(6));
}

TEST_CASE("a msg_id repeated inside one batch is stored once") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  auto outcomes = append(store, {{"id-1", "orders", "a"},
                                 {"id-2", "orders", "b"},
                                 {"id-1", "orders", "a"},
                                 {"id-2", "orders", "other"},
                                 {"id-3", "orders", "c"}});
  CHECK(outcomes == std::vector{stored(1), stored(2), duplicate(1), conflict(2), stored(3)});
  auto stats = store.stats();
  CHECK(stats.stored == 3);
  CHECK(stats.duplicates == 1);
  CHECK(stats.conflicts == 1);
  CHECK(stats.dedup_entries == 3);
}

TEST_CASE("invalid messages are rejected with a reason and take no offset") {
  test_support::TempDir dir("broker-store");
  broker::StoreOptions options = normal_sync();
  options.max_message_bytes = 100;
  broker::Store store(dir / "broker.db", options);

  Message too_large{"id-big", "orders", std::string(90, 'x'), "key", std::string(8, 'h')};
  auto outcomes = append(store, {
                                    {"", "orders", "a"},
                                    {"has space", "orders", "a"},
                                    {std::string(256, 'i'), "orders", "a"},
                                    {"id-1", "", "a"},
                                    {"id-1", "bad topic", "a"},
                                    {"id-1", std::string(250, 't'), "a"},
                                    too_large,
                                    {"id-ok", "orders", std::string(100, 'x')},
                                });
  CHECK(outcomes ==
        std::vector{rejected(RejectReason::empty_msg_id), rejected(RejectReason::invalid_msg_id),
                    rejected(RejectReason::invalid_msg_id), rejected(RejectReason::empty_topic),
                    rejected(RejectReason::invalid_topic), rejected(RejectReason::invalid_topic),
                    rejected(RejectReason::too_large), stored(1)});
  // A rejected message leaves no dedup entry behind.
  too_large.payload = "small";
  CHECK(append_one(store, too_large) == stored(2));
  auto stats = store.stats();
  CHECK(stats.rejected == 7);
  CHECK(stats.stored == 2);
  CHECK(broker::to_string(RejectReason::too_large) == "too large");
}

TEST_CASE("an empty batch and empty payloads are fine") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  CHECK(store.append(std::span<const broker::IncomingMessage>{}).empty());
  CHECK(append_one(store, {"id-1", "orders", ""}) == stored(1));
  CHECK(append_one(store, {"id-1", "orders", ""}) == duplicate(1));
  auto fetched = store.fetch("orders", 1, 10, 1000);
  REQUIRE(fetched.messages.size() == 1);
  CHECK(fetched.messages[0].payload.empty());
}

TEST_CASE("fetched messages carry every field as appended") {
  test_support::TempDir dir("broker-store");
  broker::StoreOptions options = normal_sync();
  options.clock = [] {
    return std::chrono::system_clock::time_point(std::chrono::milliseconds(1'700'000'000'123));
  };
  broker::Store store(dir / "broker.db", options);
  std::string binary("\0\x01\xff payload", 11);
  std::string headers("\x02\0\0\0k1v1", 8);
  REQUIRE(append_one(store, {"id-1", "orders", binary, "customer-7", headers}) == stored(1));

  auto fetched = store.fetch("orders", 0, 10, 1 << 20);
  REQUIRE(fetched.messages.size() == 1);
  const auto& message = fetched.messages[0];
  CHECK(message.offset == 1);
  CHECK(message.msg_id == "id-1");
  CHECK(message.partition_key == "customer-7");
  CHECK(message.headers == headers);
  CHECK(message.payload == binary);
  CHECK(message.stored_at_ms == 1'700'000'000'123);
  CHECK(fetched.next_offset == 2);
  CHECK(fetched.last_offset == 1);
}

TEST_CASE("fetch pages through a topic by count and by bytes") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  std::vector<Message> messages;
  for (int i = 1; i <= 25; ++i) {
    messages.push_back({"id-" + std::to_string(i), "orders", std::string(100, 'p')});
    messages.push_back({"other-" + std::to_string(i), "payments", "x"});
  }
  append(store, messages);

  SECTION("by count") {
    std::uint64_t next = 1;
    std::vector<std::uint64_t> seen;
    while (true) {
      auto page = store.fetch("orders", next, 10, 1 << 20);
      if (page.messages.empty()) break;
      CHECK(page.messages.size() <= 10);
      for (const auto& message : page.messages) seen.push_back(message.offset);
      next = page.next_offset;
    }
    REQUIRE(seen.size() == 25);
    for (std::size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == i + 1);
    CHECK(next == 26);
  }
  SECTION("by bytes") {
    // Each message counts msg_id + payload bytes: 104 or 105.
    auto page = store.fetch("orders", 1, 100, 350);
    CHECK(page.messages.size() == 3);
    CHECK(page.next_offset == 4);
    // The first message is returned even when it alone exceeds max_bytes.
    page = store.fetch("orders", 4, 100, 10);
    REQUIRE(page.messages.size() == 1);
    CHECK(page.messages[0].offset == 4);
  }
  SECTION("past the end, zero count, unknown topic") {
    auto page = store.fetch("orders", 26, 10, 1 << 20);
    CHECK(page.messages.empty());
    CHECK(page.next_offset == 26);
    CHECK(page.last_offset == 25);
    CHECK(store.fetch("orders", 1, 0, 1 << 20).messages.empty());
    auto unknown = store.fetch("nobody", 1, 10, 1 << 20);
    CHECK(unknown.messages.empty());
    CHECK(unknown.last_offset == 0);
  }
  SECTION("topics do not mix") {
    auto page = store.fetch("payments", 1, 100, 1 << 20);
    REQUIRE(page.messages.size() == 25);
    CHECK(page.messages.front().msg_id == "other-1");
    CHECK(page.messages.back().offset == 25);
  }
}

TEST_CASE("consumer-group offsets are kept per group and topic") {
  test_support::TempDir dir("broker-store");
  {
    broker::Store store(dir / "broker.db", normal_sync());
    // Nothing stored yet: a commit would let the group skip what comes later.
    CHECK_THROWS_AS(store.commit_offset("billing", "orders", 0), std::invalid_argument);
    std::vector<Message> messages;
    for (int i = 1; i <= 12; ++i) messages.push_back({"o-" + std::to_string(i), "orders", "x"});
    for (int i = 1; i <= 3; ++i) messages.push_back({"p-" + std::to_string(i), "payments", "x"});
    append(store, messages);
    CHECK(store.committed_offset("billing", "orders") == 0);
    CHECK_THROWS_AS(store.commit_offset("billing", "orders", 13), std::invalid_argument);
    CHECK_THROWS_AS(store.commit_offset("billing", "nobody", 1), std::invalid_argument);
    CHECK(store.committed_offset("billing", "orders") == 0);
    store.commit_offset("billing", "orders", 10);
    store.commit_offset("billing", "payments", 3);
    store.commit_offset("audit", "orders", 7);
    CHECK(store.committed_offset("billing", "orders") == 10);
    CHECK(store.committed_offset("billing", "payments") == 3);
    CHECK(store.committed_offset("audit", "orders") == 7);
    store.commit_offset("billing", "orders", 12);
    CHECK(store.committed_offset("billing", "orders") == 12);
    // A lower offset rewinds the group.
    store.commit_offset("audit", "orders", 2);
    CHECK(store.committed_offset("audit", "orders") == 2);
    CHECK_THROWS_AS(store.commit_offset("", "orders", 1), std::invalid_argument);
    CHECK_THROWS_AS(store.commit_offset("billing", "bad topic", 1), std::invalid_argument);
  }
  broker::Store reopened(dir / "broker.db", normal_sync());
  CHECK(reopened.committed_offset("billing", "orders") == 12);
  CHECK(reopened.committed_offset("audit", "orders") == 2);
  CHECK(reopened.committed_offset("audit", "payments") == 0);
}

TEST_CASE("a restarted store keeps every dedup entry, the offsets and the counters") {
  test_support::TempDir dir("broker-store");
  std::vector<Message> first;
  for (int i = 0; i < 1000; ++i)
    first.push_back({test_support::concat("id-", i), i % 2 ? "orders" : "payments",
                     test_support::concat("p", i)});
  {
    broker::Store store(dir / "broker.db", normal_sync());
    append(store, first);
    append(store, {{"id-1", "orders", "p1"}, {"id-1", "orders", "changed"}, {"", "orders", "x"}});
  }
  // First reopen with sync full: everything from the first run is there.
  {
    broker::StoreOptions options;
    options.sync = broker::SyncMode::full;
    broker::Store store(dir / "broker.db", options);
    auto stats = store.stats();
    CHECK(stats.stored == 1000);
    CHECK(stats.duplicates == 1);
    CHECK(stats.conflicts == 1);
    CHECK(stats.rejected == 1);
    CHECK(stats.dedup_entries == 1000);
    REQUIRE(stats.topics.size() == 2);
    CHECK(stats.topics[0].topic == "orders");
    CHECK(stats.topics[0].message_count == 500);
    CHECK(stats.topics[0].first_offset == 1);
    CHECK(stats.topics[0].last_offset == 500);
    CHECK(stats.topics[1].topic == "payments");
    CHECK(store.last_offset("orders") == 500);
    // Every earlier msg_id is still known.
    auto outcomes = append(store, first);
    for (std::size_t i = 0; i < outcomes.size(); ++i) CHECK(outcomes[i] == duplicate(i / 2 + 1));
    // Offsets continue after a restart instead of starting over.
    CHECK(append_one(store, {"id-new", "orders", "n"}) == stored(501));
  }
  // Second reopen: the counters of the second run were persisted too.
  broker::Store store(dir / "broker.db", normal_sync());
  auto stats = store.stats();
  CHECK(stats.stored == 1001);
  CHECK(stats.duplicates == 1001);
  CHECK(stats.conflicts == 1);
  CHECK(stats.rejected == 1);
  CHECK(stats.dedup_entries == 1001);
  CHECK(store.last_offset("orders") == 501);
  CHECK(append_one(store, {"id-new", "orders", "n"}) == duplicate(501));
}

TEST_CASE("opening something that is not a store fails with a clear error") {
  test_support::TempDir dir("broker-store");
  {
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open((dir / "other.db").c_str(), &raw) == SQLITE_OK);
    REQUIRE(sqlite3_exec(raw, "CREATE TABLE business(x)", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(raw);
  }
  CHECK_THROWS_AS(broker::Store(dir / "other.db"), outbox::Error);

  {
    std::FILE* file = std::fopen((dir / "garbage.db").c_str(), "wb");
    REQUIRE(file != nullptr);
    std::string garbage(4096, 'g');
    std::fwrite(garbage.data(), 1, garbage.size(), file);
    std::fclose(file);
  }
  try {
    broker::Store store(dir / "garbage.db");
    FAIL("opened a garbage file");
  } catch (const outbox::Error& error) {
    CHECK((error.extended_code() & 0xff) == SQLITE_NOTADB);
  }
  CHECK_THROWS_AS(broker::Store(dir / "missing-dir" / "broker.db"), outbox::Error);
}

TEST_CASE("invalid options are refused") {
  test_support::TempDir dir("broker-store");
  broker::StoreOptions options;
  options.max_message_bytes = 0;
  CHECK_THROWS_AS(broker::Store(dir / "broker.db", options), std::invalid_argument);
  options = {};
  options.dedup_window = std::chrono::milliseconds(-1);
  CHECK_THROWS_AS(broker::Store(dir / "broker.db", options), std::invalid_argument);
  CHECK(broker::parse_sync_mode("full") == broker::SyncMode::full);
  CHECK(broker::parse_sync_mode("normal") == broker::SyncMode::normal);
  CHECK_FALSE(broker::parse_sync_mode("fast").has_value());
}

TEST_CASE("a second store on the same file is refused while the first is open") {
  test_support::TempDir dir("broker-store");
  { broker::Store create(dir / "broker.db"); }
  // Locked from the moment it is open, before any append.
  broker::Store first(dir / "broker.db");
  try {
    broker::Store second(dir / "broker.db");
    FAIL("opened a store that is in use");
  } catch (const outbox::Error& error) {
    CHECK((error.extended_code() & 0xff) == SQLITE_BUSY);
    CHECK_THAT(error.what(), Catch::Matchers::Contains("in use by another broker"));
  }
  CHECK(append_one(first, {"id-2", "orders", "b"}) == stored(1));
  // Other connections may read the file meanwhile (a backup, sqlite3), and
  // the store goes on writing.
  {
    sqlite3* reader = nullptr;
    REQUIRE(sqlite3_open_v2((dir / "broker.db").c_str(), &reader, SQLITE_OPEN_READONLY, nullptr) ==
            SQLITE_OK);
    sqlite3_stmt* count = nullptr;
    REQUIRE(sqlite3_prepare_v2(reader, "SELECT count(*) FROM dedup", -1, &count, nullptr) ==
            SQLITE_OK);
    REQUIRE(sqlite3_step(count) == SQLITE_ROW);
    CHECK(sqlite3_column_int(count, 0) == 1);
    sqlite3_finalize(count);
    sqlite3_close(reader);
  }
  CHECK(append_one(first, {"id-3", "orders", "c"}) == stored(2));
}

TEST_CASE("a failed append applies nothing and the store stays usable") {
  test_support::TempDir dir("broker-store");
  broker::StoreOptions options = normal_sync();
  options.max_database_bytes = 2 * 1024 * 1024;
  auto orders_of = [](const broker::StoreStats& stats) {
    for (const auto& topic : stats.topics) {
      if (topic.topic == "orders") return topic;
    }
    FAIL("no orders topic");
    return broker::TopicStats{};
  };
  std::vector<Message> failed_batch;
  std::string failed_topic;
  broker::StoreStats before;
  {
    broker::Store store(dir / "broker.db", options);
    REQUIRE(append_one(store, {"keep-1", "orders", "a"}) == stored(1));
    int batch_number = 0;
    bool failed = false;
    while (!failed && batch_number < 1000) {
      // Each batch also creates a topic of its own.
      std::string fresh_topic = "fresh-" + std::to_string(batch_number);
      std::vector<Message> batch{{test_support::concat("f", batch_number), fresh_topic, "f"}};
      for (int i = 0; i < 200; ++i) {
        batch.push_back(
            {test_support::concat("b", batch_number, "-", i), "orders", std::string(1000, 'x')});
      }
      before = store.stats();
      auto last_before = store.last_offset("orders");
      try {
        append(store, batch);
      } catch (const outbox::Error& error) {
        CHECK((error.extended_code() & 0xff) == SQLITE_FULL);
        failed = true;
        failed_batch = batch;
        failed_topic = fresh_topic;
        CHECK(store.last_offset("orders") == last_before);
      }
      ++batch_number;
    }
    REQUIRE(failed);
    auto after = store.stats();
    CHECK(after.stored == before.stored);
    CHECK(after.dedup_entries == before.dedup_entries);
    CHECK(after.topics.size() == before.topics.size());
    CHECK(store.last_offset(failed_topic) == 0);
    CHECK(orders_of(after).last_offset == orders_of(before).last_offset);
    CHECK(orders_of(after).message_count == orders_of(before).message_count);
    // Still usable: duplicates need no space beyond the counters row.
    CHECK(append_one(store, {"keep-1", "orders", "a"}) == duplicate(1));
  }
  // Without the size limit the failed batch goes in whole: none of its ids
  // was left behind as seen, and its new topic starts at offset 1.
  broker::Store store(dir / "broker.db", normal_sync());
  auto outcomes = append(store, failed_batch);
  REQUIRE(outcomes.size() == failed_batch.size());
  CHECK(outcomes[0] == stored(1));
  for (std::size_t i = 1; i < outcomes.size(); ++i) {
    CHECK(outcomes[i] == stored(orders_of(before).last_offset + i));
  }
  CHECK(store.stats().topics.size() == before.topics.size() + 1);
}

TEST_CASE("a store can be moved") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  REQUIRE(append_one(store, {"id-1", "orders", "a"}) == stored(1));
  broker::Store moved(std::move(store));
  CHECK(append_one(moved, {"id-1", "orders", "a"}) == duplicate(1));
  CHECK(moved.path() == dir / "broker.db");
  CHECK(moved.options().sync == broker::SyncMode::normal);
}

TEST_CASE("fetch reads across many chunks and from any offset inside one") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  // 3000 messages of ~1 KiB in one call span dozens of chunks; a few very
  // large ones get chunks of their own; later calls add small chunks.
  std::vector<Message> first;
  for (int i = 1; i <= 3000; ++i) {
    std::size_t size = i % 1000 == 0 ? 300'000 : 1000 + static_cast<std::size_t>(i % 7);
    first.push_back(
        {"m-" + std::to_string(i), "orders", std::string(size, static_cast<char>('a' + i % 26))});
  }
  append(store, first);
  for (int call = 0; call < 20; ++call) {
    std::vector<Message> small;
    for (int i = 0; i < 10; ++i) {
      int n = 3001 + call * 10 + i;
      small.push_back(
          {"m-" + std::to_string(n), "orders", std::string(10, static_cast<char>('a' + n % 26))});
    }
    append(store, small);
  }
  const std::uint64_t last = 3200;
  REQUIRE(store.last_offset("orders") == last);

  auto expected_payload = [](std::uint64_t offset) {
    std::size_t size = offset > 3000 ? 10 : (offset % 1000 == 0 ? 300'000 : 1000 + offset % 7);
    return std::string(size, static_cast<char>('a' + offset % 26));
  };
  for (std::uint64_t from : {1ULL, 2ULL, 63ULL, 64ULL, 65ULL, 999ULL, 1000ULL, 1001ULL, 2999ULL,
                             3000ULL, 3001ULL, 3005ULL, 3199ULL, 3200ULL}) {
    INFO("from " << from);
    auto page = store.fetch("orders", from, 7, 1 << 20);
    REQUIRE_FALSE(page.messages.empty());
    CHECK(page.messages.size() == std::min<std::uint64_t>(7, last - from + 1));
    for (std::size_t i = 0; i < page.messages.size(); ++i) {
      const auto& message = page.messages[i];
      CHECK(message.offset == from + i);
      CHECK(message.msg_id == "m-" + std::to_string(from + i));
      CHECK(message.payload == expected_payload(from + i));
    }
    CHECK(page.next_offset == from + page.messages.size());
  }
  // Reading everything in pages of 100 sees each offset once, in order.
  std::uint64_t next = 1;
  std::uint64_t expected = 1;
  while (true) {
    auto page = store.fetch("orders", next, 100, 256 * 1024);
    if (page.messages.empty()) break;
    for (const auto& message : page.messages) CHECK(message.offset == expected++);
    next = page.next_offset;
  }
  CHECK(expected == last + 1);
}

TEST_CASE("a damaged message chunk is reported as corruption, not returned") {
  test_support::TempDir dir("broker-store");
  {
    broker::Store store(dir / "broker.db", normal_sync());
    append(store, {{"id-1", "orders", "a"}, {"id-2", "orders", "b"}});
  }
  {
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open((dir / "broker.db").c_str(), &raw) == SQLITE_OK);
    // A length that runs past the end of the chunk.
    CHECK(sqlite3_exec(raw, "UPDATE chunks SET data = x'04696432ff'", nullptr, nullptr, nullptr) ==
          SQLITE_OK);
    sqlite3_close(raw);
  }
  broker::Store store(dir / "broker.db", normal_sync());
  try {
    store.fetch("orders", 1, 10, 1 << 20);
    FAIL("fetched from a damaged chunk");
  } catch (const outbox::Error& error) {
    CHECK(error.extended_code() == SQLITE_CORRUPT);
  }
}

TEST_CASE("the store logs through the logger it is given") {
  test_support::TempDir dir("broker-store");
  std::ostringstream log;
  auto logger = std::make_shared<spdlog::logger>(
      "store-test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  logger->set_level(spdlog::level::info);
  broker::StoreOptions options = normal_sync();
  options.logger = logger;
  { broker::Store store(dir / "broker.db", options); }
  CHECK(log.str().find("created store") != std::string::npos);
  CHECK(log.str().find("opened store") != std::string::npos);
}

TEST_CASE("a reused msg_id with another key or headers is a conflict naming both values") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  // The header block as PUBLISH carries it.
  const std::vector<wire::Header> trace_abc = {{"trace", "abc"}}, trace_xyz = {{"trace", "xyz"}};
  const std::string headers = wire::encode_header_block(trace_abc);
  const std::string other_headers = wire::encode_header_block(trace_xyz);
  REQUIRE(append_one(store, {"4711", "orders", "{}", "order-1", headers}) == stored(1));

  auto key = append_one(store, {"4711", "orders", "{}", "order-2", headers});
  CHECK(key == conflict(1));
  CHECK(key.detail ==
        "msg_id 4711 is already stored in orders at offset 1 with key 'order-1'; this message "
        "has key 'order-2'");
  auto header = append_one(store, {"4711", "orders", "{}", "order-1", other_headers});
  CHECK(header == conflict(1));
  CHECK(header.detail ==
        "msg_id 4711 is already stored in orders at offset 1 with headers 'trace=abc'; this "
        "message has headers 'trace=xyz'");
  auto none = append_one(store, {"4711", "orders", "{}", "", ""});
  CHECK(none.detail ==
        "msg_id 4711 is already stored in orders at offset 1 with key 'order-1', headers "
        "'trace=abc'; this message has no key, no headers");
  // Long and binary values are cut and escaped; the reason stays one short line.
  auto long_key = append_one(store, {"4711", "orders", std::string("\x01\xff", 2) + "payload",
                                     std::string(300, 'k'), headers});
  CHECK(long_key == conflict(1));
  CHECK(long_key.detail.find("this message has key '" + std::string(48, 'k') +
                             "'... (300 bytes), payload '\\x01\\xffpayload'") != std::string::npos);
  CHECK(long_key.detail.find("with key 'order-1', payload '{}'") != std::string::npos);
  CHECK(long_key.detail.size() < 400);

  CHECK(append_one(store, {"4711", "orders", "{}", "order-1", headers}) == duplicate(1));
  CHECK(store.stats().conflicts == 4);
  CHECK(store.fetch("orders", 1, 10, 1 << 20).messages.size() == 1);
}

TEST_CASE("a conflict inside one batch names the copy stored earlier in the same batch") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  auto outcomes = append(store, {{"4711", "orders", "{}", "order-1"},
                                 {"4711", "orders", "{}", "order-2"},
                                 {"4712", "orders", "x", "order-3"}});
  REQUIRE(outcomes.size() == 3);
  CHECK(outcomes[0] == stored(1));
  CHECK(outcomes[1] == conflict(1));
  CHECK(outcomes[1].detail.find("with key 'order-1'; this message has key 'order-2'") !=
        std::string::npos);
  CHECK(outcomes[2] == stored(2));
  auto fetched = store.fetch("orders", 1, 10, 1 << 20);
  REQUIRE(fetched.messages.size() == 2);
  CHECK(fetched.messages[1].payload == "x");
}

TEST_CASE(
    "a store of schema version 1 is upgraded, and its old entries compare topic and payload") {
  test_support::TempDir dir("broker-store");
  {
    broker::Store store(dir / "broker.db", normal_sync());
    append(store, {{"old-1", "orders", "{}", "order-1"}});
  }
  {
    // What a version 1 store looks like: no envelope hash, no epoch table.
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open((dir / "broker.db").c_str(), &raw) == SQLITE_OK);
    CHECK(sqlite3_exec(raw,
                       "ALTER TABLE dedup DROP COLUMN envelope_hash; DROP TABLE origin_epochs; "
                       "UPDATE store_meta SET value = 1 WHERE key = 'schema_version'",
                       nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(raw);
  }
  std::ostringstream log;
  auto options = normal_sync();
  options.logger = std::make_shared<spdlog::logger>(
      "test", std::make_shared<spdlog::sinks::ostream_sink_st>(log));
  broker::Store store(dir / "broker.db", options);
  CHECK(log.str().find("from schema version 1 to 2") != std::string::npos);
  // The old entry recorded no key: only its topic and payload count.
  CHECK(append_one(store, {"old-1", "orders", "{}", "order-2"}) == duplicate(1));
  CHECK(append_one(store, {"old-1", "orders", "[]", "order-1"}) == conflict(1));
  // New entries compare everything.
  REQUIRE(append_one(store, {"new-1", "orders", "{}", "order-1"}) == stored(2));
  CHECK(append_one(store, {"new-1", "orders", "{}", "order-2"}) == conflict(2));
  CHECK(store.advance_origin_epoch("origin", 3) == 3);
}

TEST_CASE("the highest lease epoch per origin only grows and survives reopening") {
  test_support::TempDir dir("broker-store");
  {
    broker::Store store(dir / "broker.db", normal_sync());
    CHECK(store.origin_epoch("a") == 0);
    CHECK(store.advance_origin_epoch("a", 2) == 2);
    CHECK(store.advance_origin_epoch("a", 1) == 2);  // stale: the caller sees the newer one
    CHECK(store.advance_origin_epoch("a", 2) == 2);
    CHECK(store.advance_origin_epoch("b", 7) == 7);
    CHECK_THROWS_AS(store.advance_origin_epoch("", 1), std::invalid_argument);
    CHECK_THROWS_AS(store.advance_origin_epoch(std::string(256, 'o'), 1), std::invalid_argument);
    CHECK_THROWS_AS(store.advance_origin_epoch("a", ~std::uint64_t{0}), std::invalid_argument);
  }
  broker::Store store(dir / "broker.db", normal_sync());
  CHECK(store.origin_epoch("a") == 2);
  CHECK(store.origin_epoch("b") == 7);
  CHECK(store.advance_origin_epoch("a", 3) == 3);
}

TEST_CASE("several lease epochs are recorded in order in one transaction") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  REQUIRE(store.advance_origin_epoch("a", 4) == 4);
  std::vector<std::uint64_t> highest;
  const std::vector<broker::OriginEpoch> entries = {{"a", 3}, {"b", 2}, {"b", 5},
                                                    {"b", 4}, {"c", 1}, {"a", 6}};
  CHECK(store.advance_origin_epochs(entries, highest));
  // Each entry sees the entries before it: b at 4 is stale behind b at 5.
  CHECK(highest == std::vector<std::uint64_t>{4, 2, 5, 5, 1, 6});
  CHECK(store.origin_epoch("a") == 6);
  CHECK(store.origin_epoch("b") == 5);
  CHECK(store.origin_epoch("c") == 1);
  // Nothing to raise: no write.
  const std::vector<broker::OriginEpoch> known = {{"a", 6}, {"b", 1}};
  CHECK_FALSE(store.advance_origin_epochs(known, highest));
  CHECK(highest == std::vector<std::uint64_t>{6, 5});
  // One invalid entry: none is written.
  const std::vector<broker::OriginEpoch> invalid = {{"d", 1}, {"has space", 1}};
  CHECK_THROWS_AS(store.advance_origin_epochs(invalid, highest), std::invalid_argument);
  CHECK(store.origin_epoch("d") == 0);
}

TEST_CASE("lease epochs stay right for more origins than the store keeps in memory") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  // 70,000 origins: more than the store remembers (65,536) before it starts over
  // from the table.
  std::vector<broker::OriginEpoch> entries;
  std::vector<std::string> names;
  names.reserve(70'000);
  for (int i = 0; i < 70'000; ++i) names.push_back("origin-" + std::to_string(i));
  for (int i = 0; i < 70'000; ++i) entries.push_back({names[i], static_cast<std::uint64_t>(i + 1)});
  std::vector<std::uint64_t> highest;
  REQUIRE(store.advance_origin_epochs(entries, highest));
  for (int i : {0, 1, 65'535, 65'536, 69'999}) {
    INFO(names[i]);
    CHECK(store.origin_epoch(names[i]) == static_cast<std::uint64_t>(i + 1));
    // Stale after a raise, whether the store still remembered the origin or not.
    CHECK(store.advance_origin_epoch(names[i], static_cast<std::uint64_t>(i + 100'000)) ==
          static_cast<std::uint64_t>(i + 100'000));
    CHECK(store.advance_origin_epoch(names[i], static_cast<std::uint64_t>(i + 1)) ==
          static_cast<std::uint64_t>(i + 100'000));
  }
  for (int i = 2; i < 65'535; i += 4'099) {
    INFO(names[i]);
    CHECK(store.origin_epoch(names[i]) == static_cast<std::uint64_t>(i + 1));
  }
}

TEST_CASE("a commit full of conflicts reads the stored copies of the first 64 only") {
  test_support::TempDir dir("broker-store");
  broker::Store store(dir / "broker.db", normal_sync());
  std::vector<Message> originals, conflicting;
  for (int i = 0; i < 70; ++i) {
    originals.push_back({"id-" + std::to_string(i), "orders", "{}", "a"});
    conflicting.push_back({"id-" + std::to_string(i), "orders", "{}", "b"});
  }
  append(store, originals);
  auto outcomes = append(store, conflicting);
  REQUIRE(outcomes.size() == 70);
  CHECK(outcomes[63].detail.find("with key 'a'; this message has key 'b'") != std::string::npos);
  CHECK(outcomes[64] == conflict(65));
  CHECK(outcomes[64].detail ==
        "msg_id id-64 is already stored in orders at offset 65 with another key or headers; its "
        "body was not read (more than 64 conflicts in one commit)");
}

TEST_CASE("a corrupt store is refused when it opens, naming the damage") {
  test_support::TempDir dir("broker-store");
  auto path = dir / "broker.db";
  {
    broker::Store store(path, normal_sync());
    std::vector<Message> messages;
    for (int i = 0; i < 2000; ++i) {
      messages.push_back({"c-" + std::to_string(i), "orders", std::string(200, 'p')});
    }
    append(store, messages);
  }
  auto size = std::filesystem::file_size(path);
  REQUIRE(size > 8 * 16384);
  {
    // Overwrite pages in the middle of the file (page 1, the schema, stays intact).
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(3 * 16384));
    std::string garbage(4 * 16384, '\x5a');
    file.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
    REQUIRE(file.good());
  }
  try {
    broker::Store store(path, normal_sync());
    FAIL("a corrupt store opened");
  } catch (const outbox::Error& error) {
    CHECK(error.extended_code() == SQLITE_CORRUPT);
    CHECK_THAT(error.what(), Catch::Contains("is corrupt (quick_check:"));
    CHECK_THAT(error.what(), Catch::Contains("docs/operations.md"));
  }
}
