// The claim contract both inboxes keep (outbox::Inbox on SQLite and
// outbox::RedisInbox): one winner per msg_id among racing threads and
// processes, a killed holder's claim taken over once, the old holder's token
// powerless after a takeover, extend. Each case runs once per backend.
#include <signal.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <latch>
#include <map>
#include <memory>
#include <sstream>
#include <thread>
#include <vector>

#include "inbox_backends.hpp"

using namespace std::chrono_literals;
using outbox::BeginResult;
using outbox::ClaimResult;

namespace {

// Polls begin() until the claim is ours or the msg_id is done: how a consumer
// retries a message that is in progress elsewhere.
template <class Inbox>
outbox::Claim begin_when_free(Inbox& inbox, const std::string& msg_id,
                              std::chrono::milliseconds lease) {
  outbox::Claim claim;
  const bool settled = test_support::wait_until(
      [&] {
        claim = inbox.begin(msg_id, lease);
        return claim.result != BeginResult::in_progress_elsewhere;
      },
      30s);
  REQUIRE(settled);
  return claim;
}

}  // namespace

TEMPLATE_TEST_CASE("claims belong to the token begin() returned", "[inbox]",
                   OUTBOX_INBOX_BACKENDS) {
  TestType backend;
  auto inbox = backend.open();
  auto other = backend.open();

  auto claim = inbox.begin("m-1", 1min);
  REQUIRE(claim.claimed());
  CHECK_FALSE(claim.token.empty());
  CHECK(other.begin("m-1", 1min).result == BeginResult::in_progress_elsewhere);
  CHECK(other.complete("m-1", "someone-else") == ClaimResult::claim_lost);
  CHECK(other.fail("m-1", "someone-else") == ClaimResult::claim_lost);
  CHECK(other.extend("m-1", "someone-else", 1min) == ClaimResult::claim_lost);
  CHECK(inbox.complete("m-1", claim.token) == ClaimResult::ok);
  CHECK(inbox.complete("m-1", claim.token) == ClaimResult::ok);  // a repeat
  CHECK(inbox.fail("m-1", claim.token) == ClaimResult::claim_lost);
  CHECK(inbox.extend("m-1", claim.token, 1min) == ClaimResult::claim_lost);
  CHECK(other.begin("m-1", 1min).result == BeginResult::already_done);

  auto released = inbox.begin("m-2", 1min);
  REQUIRE(released.claimed());
  CHECK(inbox.fail("m-2", released.token) == ClaimResult::ok);
  CHECK(inbox.complete("m-2", released.token) == ClaimResult::claim_lost);
  auto again = other.begin("m-2", 1min);
  REQUIRE(again.claimed());
  CHECK(again.token != released.token);
  CHECK(other.complete("m-2", again.token) == ClaimResult::ok);

  CHECK(inbox.complete("never-begun", claim.token) == ClaimResult::claim_lost);
  CHECK_THROWS_AS(inbox.begin("", 1min), outbox::Error);
  CHECK_THROWS_AS(inbox.begin("m-3", 0ms), outbox::Error);
  CHECK_THROWS_AS(inbox.complete("m-3", ""), outbox::Error);
}

TEMPLATE_TEST_CASE("threads racing for each msg_id: exactly one claims it", "[inbox]",
                   OUTBOX_INBOX_BACKENDS) {
  TestType backend;
  constexpr int threads = 6;
  constexpr int messages = 40;
  std::vector<std::atomic<int>> claims(messages);
  std::atomic<int> lost{0};
  std::latch start(threads);
  auto consume = [&] {
    auto inbox = backend.open();
    start.arrive_and_wait();
    for (int i = 0; i < messages; ++i) {
      const std::string msg_id = "m-" + std::to_string(i);
      auto claim = inbox.begin(msg_id, 1min);
      if (!claim.claimed()) continue;
      claims[static_cast<std::size_t>(i)]++;
      if (inbox.complete(msg_id, claim.token) != ClaimResult::ok) lost++;
    }
  };
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) workers.emplace_back(consume);
  for (auto& worker : workers) worker.join();
  for (int i = 0; i < messages; ++i) {
    INFO("msg_id m-" << i);
    CHECK(claims[static_cast<std::size_t>(i)] == 1);
  }
  CHECK(lost == 0);
  auto inbox = backend.open();
  CHECK(inbox.begin("m-0", 1min).result == BeginResult::already_done);
}

TEMPLATE_TEST_CASE("processes racing for each msg_id: exactly one claims it", "[inbox]",
                   OUTBOX_INBOX_BACKENDS) {
  TestType backend;
  backend.open();  // creates the store (the SQLite schema) before the race
  test_support::TempDir dir;
  constexpr int processes = 3;
  constexpr int messages = 60;
  const auto start_file = dir / "start";
  std::vector<std::unique_ptr<test_support::ChildProcess>> children;
  for (int p = 0; p < processes; ++p) {
    auto log_dir = dir / ("consumer-" + std::to_string(p));
    std::filesystem::create_directories(log_dir);
    children.push_back(std::make_unique<test_support::ChildProcess>(
        OUTBOX_BIN_OUTBOX_TEST_INBOX_CLIENT,
        std::vector<std::string>{backend.store(), "race", "m", std::to_string(messages),
                                 start_file.string()},
        log_dir));
  }
  for (auto& child : children) {
    REQUIRE(test_support::wait_until(
        [&] { return child->stdout_text().starts_with("ready\n") || !child->running(); }, 60s));
  }
  std::ofstream(start_file).put('\n');
  std::map<std::string, int> claimed;
  for (auto& child : children) {
    auto status = child->wait_for(120s);
    REQUIRE(status);
    INFO(child->stderr_text());
    REQUIRE(status->exited);
    REQUIRE(status->code == 0);
    for (const auto& line : test_support::lines(child->stdout_text())) {
      std::istringstream fields(line);
      std::string index, outcome;
      fields >> index >> outcome;
      CHECK(outcome != "lost");
      if (outcome == "claimed") claimed[index]++;
    }
  }
  REQUIRE(claimed.size() == static_cast<std::size_t>(messages));
  for (const auto& [index, count] : claimed) {
    INFO("msg_id m-" << index);
    CHECK(count == 1);
  }
}

TEMPLATE_TEST_CASE("a consumer killed while processing: another takes the claim over once",
                   "[inbox]", OUTBOX_INBOX_BACKENDS) {
  TestType backend;
  backend.open();
  test_support::TempDir dir;
  test_support::ChildProcess holder(OUTBOX_BIN_OUTBOX_TEST_INBOX_CLIENT,
                                    {backend.store(), "hold", "m-1", "1000"}, dir.path());
  REQUIRE(test_support::wait_until(
      [&] { return holder.stdout_text().ends_with("\n") || !holder.running(); }, 60s));
  const std::string printed = holder.stdout_text();
  REQUIRE(printed.starts_with("claimed "));
  const std::string dead_token = printed.substr(8, printed.size() - 9);
  holder.signal(SIGKILL);
  REQUIRE(holder.wait_for(30s));

  // Two survivors retry the redelivered message; once the lease has passed,
  // exactly one of them gets it.
  std::atomic<int> claimed{0}, completed{0};
  auto survive = [&] {
    auto inbox = backend.open();
    auto claim = begin_when_free(inbox, "m-1", 1min);
    if (claim.claimed()) {
      claimed++;
      if (inbox.complete("m-1", claim.token) == ClaimResult::ok) completed++;
    }
  };
  std::thread first(survive), second(survive);
  first.join();
  second.join();
  CHECK(claimed == 1);
  CHECK(completed == 1);
  auto inbox = backend.open();
  CHECK(inbox.begin("m-1", 1min).result == BeginResult::already_done);
  CHECK(inbox.complete("m-1", dead_token) == ClaimResult::claim_lost);
}

TEMPLATE_TEST_CASE("after a takeover the old holder's claim is lost and changes nothing", "[inbox]",
                   OUTBOX_INBOX_BACKENDS) {
  TestType backend;
  auto slow = backend.open();
  auto fast = backend.open();
  auto old_claim = slow.begin("m-1", 1min);
  REQUIRE(old_claim.claimed());
  CHECK(fast.begin("m-1", 1min).result == BeginResult::in_progress_elsewhere);
  // The slow holder lets its lease run out (a 1 ms extension), as a stalled
  // process would; the next begin() takes the claim over.
  REQUIRE(slow.extend("m-1", old_claim.token, 1ms) == ClaimResult::ok);
  auto new_claim = begin_when_free(fast, "m-1", 1min);
  REQUIRE(new_claim.claimed());
  CHECK(slow.extend("m-1", old_claim.token, 1min) == ClaimResult::claim_lost);
  CHECK(slow.complete("m-1", old_claim.token) == ClaimResult::claim_lost);
  CHECK(slow.fail("m-1", old_claim.token) == ClaimResult::claim_lost);
  // Nothing changed: the new claim is still live and completes.
  CHECK(slow.begin("m-1", 1min).result == BeginResult::in_progress_elsewhere);
  CHECK(fast.complete("m-1", new_claim.token) == ClaimResult::ok);
  CHECK(slow.complete("m-1", old_claim.token) == ClaimResult::claim_lost);
  CHECK(slow.begin("m-1", 1min).result == BeginResult::already_done);
}

TEMPLATE_TEST_CASE("extend keeps a claim, also one past its lease that nobody took over", "[inbox]",
                   OUTBOX_INBOX_BACKENDS) {
  TestType backend;
  auto worker = backend.open();
  auto other = backend.open();
  auto claim = worker.begin("m-1", 1ms);
  REQUIRE(claim.claimed());
  // The 1 ms lease has (or soon will have) passed; nobody has taken it over.
  REQUIRE(worker.extend("m-1", claim.token, 1min) == ClaimResult::ok);
  CHECK(other.begin("m-1", 1min).result == BeginResult::in_progress_elsewhere);
  CHECK(worker.extend("m-1", claim.token, 2min) == ClaimResult::ok);
  CHECK(other.begin("m-1", 1min).result == BeginResult::in_progress_elsewhere);
  CHECK(worker.complete("m-1", claim.token) == ClaimResult::ok);
  CHECK(other.begin("m-1", 1min).result == BeginResult::already_done);
}
