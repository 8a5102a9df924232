// Kills a process in the middle of appending (SIGKILL, no chance to clean up)
// and checks what it left: every acknowledged message is present exactly once,
// and every batch is either wholly present or wholly absent.
#include <catch2/catch.hpp>

#include <csignal>
#include <map>
#include <set>

#include "broker/store.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;

namespace {

long acked_batches(const test_support::ChildProcess& child) {
  long count = 0;
  for (const auto& line : test_support::lines(child.stdout_text())) {
    if (line.rfind("acked ", 0) == 0) count = std::stol(line.substr(6)) + 1;
  }
  return count;
}

void check_store_after_crash(const std::filesystem::path& db, long acked, int batch_size) {
  broker::Store store(db);
  std::map<std::string, int> copies;       // msg_id -> times present
  std::map<long, int> messages_per_batch;  // batch -> messages present
  std::uint64_t total = 0;
  for (const char* topic : {"t0", "t1", "t2"}) {
    std::uint64_t next = 1;
    std::uint64_t expected_offset = 1;
    while (true) {
      auto page = store.fetch(topic, next, 1000, 1 << 24);
      if (page.messages.empty()) break;
      for (const auto& message : page.messages) {
        // Offsets are dense: nothing half-written leaves a hole.
        CHECK(message.offset == expected_offset++);
        CHECK(message.payload == "payload of " + message.msg_id + std::string(200, '.'));
        ++copies[message.msg_id];
        auto dash = message.msg_id.find('-');
        ++messages_per_batch[std::stol(message.msg_id.substr(1, dash - 1))];
        ++total;
      }
      next = page.next_offset;
    }
    CHECK(store.last_offset(topic) == expected_offset - 1);
  }
  for (const auto& [msg_id, count] : copies) {
    INFO(msg_id);
    CHECK(count == 1);
  }
  // Acknowledged batches are complete; at most one batch after them may have
  // committed without its ack being printed; the rest are absent.
  for (long batch = 0; batch < acked; ++batch) {
    INFO("batch " << batch);
    CHECK(messages_per_batch[batch] == batch_size);
  }
  for (const auto& [batch, count] : messages_per_batch) {
    INFO("batch " << batch);
    CHECK(batch <= acked);
    CHECK(count == batch_size);
  }
  auto stats = store.stats();
  CHECK(stats.stored == total);
  CHECK(stats.dedup_entries == total);
  std::uint64_t retained = 0;
  for (const auto& topic : stats.topics) retained += topic.message_count;
  CHECK(retained == total);

  // Resending every acknowledged message finds each one already stored.
  std::vector<std::string> ids, payloads, topics;
  for (long batch = 0; batch < acked; ++batch) {
    for (int i = 0; i < batch_size; ++i) {
      ids.push_back(test_support::concat("b", batch, "-", i));
      payloads.push_back("payload of " + ids.back() + std::string(200, '.'));
      topics.push_back(test_support::concat("t", std::hash<std::string>{}(ids.back()) % 3));
    }
  }
  std::vector<broker::IncomingMessage> resend;
  for (std::size_t i = 0; i < ids.size(); ++i)
    resend.push_back({ids[i], topics[i], "key", "", payloads[i]});
  for (const auto& outcome : store.append(resend))
    CHECK(outcome.status == broker::AppendStatus::duplicate);
}

}  // namespace

TEST_CASE("a store killed mid-append keeps every acknowledged message exactly once") {
  const int batch_size = 400;
  auto sync = GENERATE(std::string("normal"), std::string("full"));
  auto kill_after = GENERATE(1L, 7L, 25L);
  INFO("sync " << sync << ", kill after " << kill_after << " acked batches");
  test_support::TempDir dir("broker-store-crash");
  long acked = 0;
  {
    test_support::ChildProcess child(
        OUTBOX_BIN_BROKER_STORE_CRASH_WRITER,
        {(dir / "broker.db").string(), sync, std::to_string(batch_size)}, dir.path());
    bool reached = test_support::wait_until(
        [&] { return acked_batches(child) >= kill_after || !child.running(); }, 120s);
    REQUIRE(reached);
    REQUIRE(child.running());
    child.signal(SIGKILL);
    auto status = child.wait_for(30s);
    REQUIRE(status.has_value());
    CHECK(status->signal == SIGKILL);
    acked = acked_batches(child);
    INFO(child.stderr_text());
  }
  REQUIRE(acked >= kill_after);
  check_store_after_crash(dir / "broker.db", acked, batch_size);
}
