// Relay-side API: lease, pending reads in commit order, outcomes, blocking
// by key, retries, dead-message handling, statistics and retention.
#include <catch2/catch.hpp>

#include <random>

#include "outbox/outbox.hpp"
#include "outbox/relay_store.hpp"
#include "outbox_test_util.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using outbox_test::exec;
using outbox_test::query_int;

namespace {

struct Fixture {
  test_support::TempDir dir;
  outbox_test::ManualClock clock;
  outbox::Outbox box;
  outbox::RelayStore store;

  explicit Fixture(outbox::DeadPolicy policy = outbox::DeadPolicy::block)
      : box(open_box()), store(open_store(policy)) {}

  outbox::Outbox open_box() {
    outbox::Options options;
    options.clock = clock.clock();
    return outbox::Outbox::open(dir / "app.db", options);
  }
  outbox::RelayStore open_store(outbox::DeadPolicy policy) {
    outbox::RelayOptions options;
    options.clock = clock.clock();
    options.on_dead = policy;
    return outbox::RelayStore::open(dir / "app.db", options);
  }

  // Enqueues one committed message per key; returns the seqs.
  std::vector<std::int64_t> enqueue(const std::vector<std::string>& keys,
                                    const std::string& topic = "orders") {
    std::vector<std::int64_t> seqs;
    outbox::Transaction tx(box);
    for (const auto& key : keys) {
      outbox::Message message;
      message.topic = topic;
      message.key = key;
      message.payload = "payload of " + key;
      seqs.push_back(tx.enqueue(message).seq);
    }
    tx.commit();
    return seqs;
  }

  outbox::Lease lease() {
    auto lease = store.claim_lease("relay-a", 10s);
    REQUIRE(lease);
    return *lease;
  }

  // Schedules retries as a tool writing through the SQL contract would
  // (docs/schema.md, state 0): each message stays pending, due at
  // `not_before`, with one more attempt counted and `error` remembered.
  void schedule_retry(const std::vector<std::int64_t>& seqs, const std::string& error,
                      outbox::TimePoint not_before) {
    auto ms = [](outbox::TimePoint at) {
      return std::to_string(
          std::chrono::duration_cast<std::chrono::milliseconds>(at.time_since_epoch()).count());
    };
    for (auto seq : seqs) {
      exec(box.db(),
           "INSERT INTO outbox_delivery(seq, state, attempts, next_attempt_ms, last_error, "
           "updated_at_ms) VALUES (" +
               std::to_string(seq) + ", 0, 1, " + ms(not_before) + ", '" + error + "', " +
               ms(clock.now()) +
               ") ON CONFLICT(seq) DO UPDATE SET attempts = attempts + 1, "
               "next_attempt_ms = excluded.next_attempt_ms, last_error = excluded.last_error, "
               "updated_at_ms = excluded.updated_at_ms WHERE outbox_delivery.state = 0");
    }
  }
};

std::vector<std::int64_t> seqs_of(const std::vector<outbox::PendingMessage>& messages) {
  std::vector<std::int64_t> seqs;
  for (const auto& message : messages) seqs.push_back(message.seq);
  return seqs;
}

using Seqs = std::vector<std::int64_t>;

}  // namespace

TEST_CASE("pending messages come in seq order, in batches") {
  Fixture f;
  f.enqueue({"a", "b", "c"});
  f.enqueue({"a", "d"});
  CHECK(seqs_of(f.store.read_pending(2)) == Seqs{1, 2});
  CHECK(seqs_of(f.store.read_pending(2, 2)) == Seqs{3, 4});
  CHECK(seqs_of(f.store.read_pending(100, 4)) == Seqs{5});
  CHECK(f.store.read_pending(100, 5).empty());
  auto first = f.store.read_pending(1).at(0);
  CHECK(first.topic == "orders");
  CHECK(first.partition_key == "a");
  CHECK(first.payload == "payload of a");
  CHECK(first.attempts == 0);
}

TEST_CASE("outcomes are recorded per batch and advance the cursor") {
  Fixture f;
  f.enqueue({"a", "b", "c", "d"});
  auto lease = f.lease();
  std::vector<outbox::Outcome> outcomes{outbox::Outcome::delivered(1, 100),
                                        outbox::Outcome::delivered(2, 101)};
  f.store.record_outcomes(outcomes, lease);
  auto stats = f.store.stats();
  CHECK(stats.pending == 2);
  CHECK(stats.delivered == 2);
  CHECK(stats.delivered_total == 2);
  CHECK(stats.settled_through_seq == 2);
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{3, 4});
  CHECK(query_int(f.store.db(), "SELECT broker_offset FROM outbox_delivery WHERE seq = 2") == 101);

  // Out of order: 4 before 3; the cursor waits for 3.
  std::vector<outbox::Outcome> later{outbox::Outcome::delivered(4, 103)};
  f.store.record_outcomes(later, lease);
  CHECK(f.store.stats().settled_through_seq == 2);
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{3});
  std::vector<outbox::Outcome> last{outbox::Outcome::delivered(3, 102),
                                    outbox::Outcome::delivered(3, 999)};  // repeated ack
  f.store.record_outcomes(last, lease);
  stats = f.store.stats();
  CHECK(stats.pending == 0);
  CHECK(stats.delivered_total == 4);
  CHECK(stats.settled_through_seq == 4);
  CHECK_FALSE(stats.oldest_pending_age);
  CHECK(query_int(f.store.db(), "SELECT broker_offset FROM outbox_delivery WHERE seq = 3") == 102);
}

TEST_CASE("a run of consecutive outcomes is recorded as each would be on its own") {
  // Seqs and broker offsets rising together are written by one statement per
  // run; what each row ends up as must not depend on that.
  Fixture f;
  f.enqueue({"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"});  // seqs 1..10
  auto lease = f.lease();
  std::vector<outbox::Outcome> earlier{outbox::Outcome::delivered(3, 50)};
  f.store.record_outcomes(earlier, lease);
  f.schedule_retry({7}, "broker timeout", f.clock.now());
  exec(f.box.db(), "DELETE FROM outbox_messages WHERE seq = 5");  // gone meanwhile

  std::vector<outbox::Outcome> outcomes;
  for (std::int64_t seq = 1; seq <= 7; ++seq) {
    outcomes.push_back(outbox::Outcome::delivered(seq, 99 + seq));  // offsets 100..106
  }
  outcomes.push_back(outbox::Outcome::delivered(8, 200));  // the offsets jump: a new run
  outcomes.push_back(outbox::Outcome::delivered(9, 201));
  outcomes.push_back(outbox::Outcome::dead(10, "REJECTED(too large)"));
  f.store.record_outcomes(outcomes, lease);

  auto offset_of = [&](int seq) {
    return query_int(f.store.db(),
                     "SELECT broker_offset FROM outbox_delivery WHERE state = 1 AND seq = " +
                         std::to_string(seq));
  };
  CHECK(offset_of(1) == 100);
  CHECK(offset_of(2) == 101);
  CHECK(offset_of(3) == 50);  // settled before: a repeated ack changes nothing
  CHECK(offset_of(4) == 103);
  CHECK(offset_of(6) == 105);
  CHECK(offset_of(7) == 106);
  CHECK(offset_of(8) == 200);
  CHECK(offset_of(9) == 201);
  CHECK(query_int(f.store.db(), "SELECT count(*) FROM outbox_delivery WHERE seq = 5") == 0);
  CHECK(query_int(f.store.db(),
                  "SELECT attempts = 1 AND last_error = 'broker timeout' FROM outbox_delivery "
                  "WHERE seq = 7") == 1);
  CHECK(query_int(f.store.db(),
                  "SELECT state = 2 AND last_error = 'REJECTED(too large)' FROM outbox_delivery "
                  "WHERE seq = 10") == 1);
  auto stats = f.store.stats();
  CHECK(stats.delivered_total == 8);  // 3 once, then 1, 2, 4, 6, 7, 8, 9
  CHECK(stats.delivered == 8);
  CHECK(stats.dead == 1);
  CHECK(stats.settled_through_seq == 10);
}

TEST_CASE("pending reads skip settled rows past the cursor across many rows") {
  // Acknowledgements can settle messages past the cursor (out of order); a
  // read from the cursor walks the messages and their delivery rows together.
  Fixture f;
  std::vector<std::string> keys;
  for (int i = 1; i <= 200; ++i) keys.push_back(test_support::concat("k", i));
  f.enqueue(keys);  // seqs 1..200
  auto lease = f.lease();
  std::vector<outbox::Outcome> evens;
  for (std::int64_t seq = 2; seq <= 200; seq += 2) {
    evens.push_back(outbox::Outcome::delivered(seq, seq));
  }
  f.store.record_outcomes(evens, lease);
  std::vector<std::int64_t> retry{101, 103};
  f.schedule_retry(retry, "broker timeout", f.clock.now() + 5s);
  f.clock.advance(5s);
  f.schedule_retry(std::vector<std::int64_t>{103}, "broker timeout",
                   f.clock.now() + 5s);  // 101 due, 103 not yet
  CHECK(f.store.stats().settled_through_seq == 0);

  CHECK(seqs_of(f.store.read_pending(3)) == Seqs{1, 3, 5});
  auto pending = f.store.read_pending(1000);
  Seqs expected;
  for (std::int64_t seq = 1; seq <= 199; seq += 2) {
    if (seq != 103) expected.push_back(seq);
  }
  CHECK(seqs_of(pending) == expected);
  for (const auto& message : pending) {
    CHECK(message.attempts == (message.seq == 101 ? 1 : 0));
  }
  CHECK(seqs_of(f.store.read_pending(2, 150)) == Seqs{151, 153});
}

TEST_CASE("a dead message blocks later messages of its key until replayed or dropped") {
  Fixture f;
  f.enqueue({"a", "b", "a", "b", "a"});  // seqs 1..5
  auto lease = f.lease();
  std::vector<outbox::Outcome> outcomes{outbox::Outcome::dead(1, "REJECTED(too_large)"),
                                        outbox::Outcome::delivered(2, 7)};
  f.store.record_outcomes(outcomes, lease);
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{4});
  auto dead = f.store.list_dead();
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].seq == 1);
  CHECK(dead[0].reason == "REJECTED(too_large)");
  CHECK(dead[0].partition_key == "a");
  auto stats = f.store.stats();
  CHECK(stats.dead == 1);
  CHECK(stats.pending == 3);

  SECTION("replay makes it pending again, first in line") {
    CHECK(f.store.replay_dead(dead[0].msg_id));
    CHECK_FALSE(f.store.replay_dead(dead[0].msg_id));
    CHECK(seqs_of(f.store.read_pending(10)) == Seqs{1, 3, 4, 5});
    CHECK(f.store.stats().dead == 0);
    CHECK(f.store.stats().settled_through_seq == 0);
  }
  SECTION("replay all") {
    CHECK(f.store.replay_all_dead() == 1);
    CHECK(f.store.replay_all_dead() == 0);
    CHECK(seqs_of(f.store.read_pending(10)) == Seqs{1, 3, 4, 5});
  }
  SECTION("drop settles it without sending") {
    CHECK(f.store.drop_dead(dead[0].msg_id));
    CHECK_FALSE(f.store.drop_dead(dead[0].msg_id));
    CHECK_FALSE(f.store.drop_dead("no-such-id"));
    CHECK(seqs_of(f.store.read_pending(10)) == Seqs{3, 4, 5});
    CHECK(f.store.list_dead().empty());
  }
}

TEST_CASE("replay and drop change the delivery generation a relay reads with pending rows") {
  Fixture f;
  f.enqueue({"a", "a", "b", "a"});  // seqs 1..4
  auto lease = f.lease();
  std::vector<outbox::Outcome> outcomes{outbox::Outcome::dead(1, "REJECTED(too_large)"),
                                        outbox::Outcome::dead(2, "REJECTED(too_large)")};
  f.store.record_outcomes(outcomes, lease);
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{3});
  const auto before = f.store.delivery_generation();
  // The relay's own outcomes leave it alone: only changes made outside it count.
  f.store.record_outcomes(std::vector{outbox::Outcome::delivered(3, 1)}, lease);
  CHECK(f.store.read_pending(10).empty());
  CHECK(f.store.delivery_generation() == before);

  // Another connection (the operator's CLI) replays one and drops the other.
  auto operator_store = f.open_store(outbox::DeadPolicy::block);
  CHECK(operator_store.replay_dead(f.store.list_dead().at(0).msg_id));
  CHECK(f.store.delivery_generation() == before);  // seen only with the next read
  // A pipelining relay reading on from seq 3 would see nothing of seq 1.
  CHECK(seqs_of(f.store.read_pending(10, 3)).empty());
  CHECK(f.store.delivery_generation() == before + 1);
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{1});

  CHECK(operator_store.drop_dead(f.store.list_dead().at(0).msg_id));
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{1, 4});
  CHECK(f.store.delivery_generation() == before + 2);
  CHECK(operator_store.replay_all_dead() == 0);  // nothing dead: nothing changes
  f.store.read_pending(10);
  CHECK(f.store.delivery_generation() == before + 2);
}

TEST_CASE("a read that found the end of the outbox still sees every later commit") {
  // After a read that reached the end, an empty read is answered without
  // reading the tables while nothing changed: these check that every kind of
  // change is still seen.
  Fixture f;
  f.enqueue({"a"});
  auto lease = f.lease();
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{1});
  CHECK(f.store.read_pending(10, 1).empty());
  f.enqueue({"b"});  // another connection commits
  CHECK(seqs_of(f.store.read_pending(10, 1)) == Seqs{2});
  CHECK(f.store.read_pending(10, 2).empty());

  // Delivered outcomes settle what was read: a read from the cursor finds nothing ...
  f.store.record_outcomes(
      std::vector{outbox::Outcome::delivered(1, 10), outbox::Outcome::delivered(2, 11)}, lease);
  CHECK(f.store.read_pending(10).empty());
  CHECK(f.store.read_pending(10).empty());
  // ... until another commit.
  f.enqueue({"c"});
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{3});

  // A read that stopped at its limit did not reach the end.
  f.enqueue({"d", "e"});
  CHECK(seqs_of(f.store.read_pending(1, 3)) == Seqs{4});
  CHECK(seqs_of(f.store.read_pending(10, 4)) == Seqs{5});
}

TEST_CASE("a read that found the end of the outbox sees this connection's own changes") {
  Fixture f(outbox::DeadPolicy::skip);
  f.enqueue({"a", "b"});
  auto lease = f.lease();
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{1, 2});
  f.store.record_outcomes(
      std::vector{outbox::Outcome::dead(1, "CONFLICT"), outbox::Outcome::delivered(2, 7)}, lease);
  CHECK(f.store.read_pending(10).empty());
  // A replay through the relay's own connection (no other connection commits).
  CHECK(f.store.replay_dead(f.store.list_dead().at(0).msg_id));
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{1});
  CHECK(f.store.read_pending(10, 1).empty());
  // A row written through the store's own handle, as a tool sharing it could.
  exec(f.store.db(), "DELETE FROM outbox_delivery WHERE seq = 2");
  exec(f.store.db(), "UPDATE outbox_relay_cursor SET settled_through_seq = 0");
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{1, 2});
}

TEST_CASE("with DeadPolicy::skip later messages of a dead key go on") {
  Fixture f(outbox::DeadPolicy::skip);
  f.enqueue({"a", "a", "b"});
  auto lease = f.lease();
  std::vector<outbox::Outcome> outcomes{outbox::Outcome::dead(1, "CONFLICT")};
  f.store.record_outcomes(outcomes, lease);
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{2, 3});
  CHECK(f.store.stats().dead == 1);
}

TEST_CASE("keys are per topic, and messages without a key group by topic") {
  Fixture f;
  f.enqueue({"a"}, "orders");
  f.enqueue({"a"}, "payments");
  f.enqueue({"", ""}, "audit");  // seqs 3, 4: no key
  auto lease = f.lease();
  std::vector<outbox::Outcome> outcomes{outbox::Outcome::dead(1, "CONFLICT"),
                                        outbox::Outcome::dead(3, "CONFLICT")};
  f.store.record_outcomes(outcomes, lease);
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{2});
}

TEST_CASE("a NULL and an empty partition key are one key") {
  Fixture f;
  // Another language's producer may write either; both mean "no key".
  exec(f.box.db(),
       "INSERT INTO outbox_messages(msg_id, topic, partition_key, payload) VALUES "
       "('empty-1', 'audit', '', x'01'), ('null-2', 'audit', NULL, x'02')");
  auto pending = f.store.read_pending(10);
  REQUIRE(pending.size() == 2);
  CHECK_FALSE(pending[0].partition_key);
  CHECK_FALSE(pending[1].partition_key);
  auto lease = f.lease();
  std::vector<outbox::Outcome> outcomes{outbox::Outcome::dead(pending[0].seq, "CONFLICT")};
  f.store.record_outcomes(outcomes, lease);
  CHECK(f.store.read_pending(10).empty());  // the NULL-key message waits behind it
}

TEST_CASE("retries wait for their time and hold back their key") {
  Fixture f;
  f.enqueue({"a", "a", "b"});
  auto lease = f.lease();
  std::vector<std::int64_t> retry{1};
  f.schedule_retry(retry, "broker timeout", f.clock.now() + 5s);
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{3});
  auto stats = f.store.stats();
  CHECK(stats.pending == 3);
  CHECK(stats.retrying == 1);
  CHECK(stats.dead == 0);
  f.clock.advance(5s);
  auto pending = f.store.read_pending(10);
  CHECK(seqs_of(pending) == Seqs{1, 2, 3});
  CHECK(pending[0].attempts == 1);
  f.schedule_retry(retry, "broker timeout", f.clock.now() + 1s);
  f.clock.advance(1s);
  CHECK(f.store.read_pending(1).at(0).attempts == 2);
  std::vector<outbox::Outcome> outcomes{outbox::Outcome::delivered(1, 1)};
  f.store.record_outcomes(outcomes, lease);
  CHECK(f.store.stats().retrying == 0);
  CHECK(f.store.stats().settled_through_seq == 1);
}

TEST_CASE("one relay holds the lease and another takes over when it lapses") {
  Fixture f;
  auto other = f.open_store(outbox::DeadPolicy::block);
  auto a = f.store.claim_lease("relay-a", 10s);
  REQUIRE(a);
  CHECK_FALSE(other.claim_lease("relay-b", 10s));
  auto info = other.lease_info();
  REQUIRE(info);
  CHECK(info->holder == "relay-a");
  CHECK_FALSE(info->expired);
  CHECK(other.stats().lease->holder == "relay-a");

  f.clock.advance(5s);
  CHECK(f.store.renew_lease(*a, 10s));
  f.clock.advance(9s);
  CHECK_FALSE(other.claim_lease("relay-b", 10s));  // renewed: still valid
  f.clock.advance(2s);
  auto b = other.claim_lease("relay-b", 10s);
  REQUIRE(b);
  CHECK(b->epoch == a->epoch + 1);

  // The old holder is fenced off: nothing it writes lands.
  f.enqueue({"a"});
  std::vector<outbox::Outcome> outcomes{outbox::Outcome::delivered(1, 1)};
  CHECK_THROWS_AS(f.store.record_outcomes(outcomes, *a), outbox::LeaseLost);
  CHECK_FALSE(f.store.renew_lease(*a, 10s));
  CHECK(f.store.stats().pending == 1);
  other.record_outcomes(outcomes, *b);
  CHECK(f.store.stats().pending == 0);

  // Releasing lets a standby in at once.
  other.release_lease(*b);
  auto c = f.store.claim_lease("relay-a", 10s);
  REQUIRE(c);
  CHECK(c->epoch == b->epoch + 1);
}

TEST_CASE("retention also removes delivered rows behind a blocked key") {
  Fixture f;
  f.enqueue({"a", "a", "b", "b", "b"});
  auto lease = f.lease();
  std::vector<outbox::Outcome> outcomes{
      outbox::Outcome::dead(1, "REJECTED"), outbox::Outcome::delivered(3, 1),
      outbox::Outcome::delivered(4, 2), outbox::Outcome::delivered(5, 3)};
  f.store.record_outcomes(outcomes, lease);
  CHECK(f.store.stats().settled_through_seq == 1);  // seq 2 waits behind dead seq 1
  CHECK(f.store.backlog().pending == 1);
  f.clock.advance(2h);
  CHECK(f.store.delete_delivered(1h) == 2);  // 3 and 4; 5 is the newest
  // backlog() counts seqs: the deleted 3 and 4 count as pending next to 2
  // until the key moves on; stats() counts rows.
  CHECK(f.store.stats().pending == 1);
  CHECK(f.store.backlog().pending == 3);
  CHECK(seqs_of(f.store.read_pending(10)).empty());
  CHECK(f.store.drop_dead(f.store.list_dead().at(0).msg_id));
  CHECK(seqs_of(f.store.read_pending(10)) == Seqs{2});
  std::vector<outbox::Outcome> last{outbox::Outcome::delivered(2, 4)};
  f.store.record_outcomes(last, lease);
  auto stats = f.store.stats();
  CHECK(stats.settled_through_seq == 5);
  CHECK(stats.pending == 0);
  CHECK(f.store.backlog().pending == 0);
}

TEST_CASE("stats show the oldest pending age") {
  Fixture f;
  f.enqueue({"a"});
  f.clock.advance(1500ms);
  f.enqueue({"b"});
  f.clock.advance(500ms);
  auto stats = f.store.stats();
  CHECK(stats.pending == 2);
  CHECK(stats.last_seq == 2);
  REQUIRE(stats.oldest_pending_age);
  CHECK(*stats.oldest_pending_age == 2000ms);
  CHECK_FALSE(stats.lease);
}

TEST_CASE(
    "backlog() agrees with the row count of stats() while acks, retries and deaths come "
    "out of order") {
  Fixture f;
  f.enqueue({"a", "b", "c", "d", "e", "f", "g", "h"});
  f.clock.advance(3s);
  auto lease = f.lease();
  auto agree = [&](std::int64_t pending, std::int64_t retrying, std::int64_t dead) {
    auto backlog = f.store.backlog();
    auto stats = f.store.stats();
    CHECK(stats.pending == pending);
    CHECK(backlog.pending == pending);
    CHECK(backlog.retrying == retrying);
    CHECK(backlog.dead == dead);
    CHECK(backlog.oldest_pending_age == stats.oldest_pending_age);
  };
  agree(8, 0, 0);
  REQUIRE(f.store.backlog().oldest_pending_age == 3000ms);
  // Acknowledged past the first one: the cursor stays before seq 1.
  std::vector<outbox::Outcome> acked{outbox::Outcome::delivered(2, 1),
                                     outbox::Outcome::delivered(4, 2),
                                     outbox::Outcome::dead(5, "REJECTED")};
  f.store.record_outcomes(acked, lease);
  std::vector<std::int64_t> retry{1, 3};
  f.schedule_retry(retry, "broker timeout", f.clock.now() + 5s);
  agree(5, 2, 1);
  std::vector<outbox::Outcome> first{outbox::Outcome::delivered(1, 3)};
  f.store.record_outcomes(first, lease);
  agree(4, 1, 1);
  f.enqueue({"i"});
  agree(5, 1, 1);
  std::vector<outbox::Outcome> rest{
      outbox::Outcome::delivered(3, 4), outbox::Outcome::delivered(6, 5),
      outbox::Outcome::delivered(7, 6), outbox::Outcome::delivered(8, 7),
      outbox::Outcome::delivered(9, 8)};
  f.store.record_outcomes(rest, lease);
  agree(0, 0, 1);
  CHECK_FALSE(f.store.backlog().oldest_pending_age);
}

TEST_CASE("retention deletes old delivered rows in batches and keeps the newest") {
  Fixture f;
  std::vector<std::string> keys(25, "k");
  f.enqueue(keys);  // seqs 1..25
  auto lease = f.lease();
  std::vector<outbox::Outcome> outcomes;
  for (std::int64_t seq = 1; seq <= 20; ++seq)
    outcomes.push_back(outbox::Outcome::delivered(seq, seq));
  f.store.record_outcomes(outcomes, lease);
  f.clock.advance(2h);
  outcomes.clear();
  for (std::int64_t seq = 21; seq <= 25; ++seq)
    outcomes.push_back(outbox::Outcome::delivered(seq, seq));
  f.store.record_outcomes(outcomes, lease);

  CHECK(f.store.delete_delivered(1h, 7, 2) == 14);  // two batches of 7
  CHECK(f.store.delete_delivered(1h, 7) == 6);      // the rest of the old ones
  CHECK(query_int(f.store.db(), "SELECT count(*) FROM outbox_messages") == 5);
  f.clock.advance(2h);
  CHECK(f.store.delete_delivered(1h, 100) == 4);  // never the newest row
  CHECK(query_int(f.store.db(), "SELECT min(seq) FROM outbox_messages") == 25);
  CHECK(f.store.stats().delivered_total == 25);
  // seq values are not reused.
  CHECK(f.enqueue({"k"}).at(0) == 26);
}

TEST_CASE("the relay side checkpoints the WAL without the producer") {
  Fixture f;
  std::vector<std::string> keys(200, "k");
  f.enqueue(keys);
  f.store.checkpoint();
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(f.box.db(), "PRAGMA wal_checkpoint(PASSIVE)", -1, &stmt, nullptr) ==
          SQLITE_OK);
  REQUIRE(sqlite3_step(stmt) == SQLITE_ROW);
  const auto log_frames = sqlite3_column_int(stmt, 1);
  const auto checkpointed = sqlite3_column_int(stmt, 2);
  sqlite3_finalize(stmt);
  CHECK(log_frames > 0);
  CHECK(checkpointed == log_frames);

  outbox::RelayOptions read_only;
  read_only.read_only = true;
  auto viewer = outbox::RelayStore::open(f.dir / "app.db", read_only);
  CHECK(viewer.stats().pending == 200);
  CHECK_THROWS_AS(viewer.checkpoint(), outbox::Error);
}

TEST_CASE("the origin id is created once, kept in outbox_meta, and the same for every reader") {
  Fixture f;
  outbox::RelayOptions read_only;
  read_only.read_only = true;
  CHECK(outbox::RelayStore::open(f.dir / "app.db", read_only).origin_id().empty());

  auto origin = f.store.origin_id();
  CHECK(origin.size() == 36);  // a UUID
  CHECK(f.store.origin_id() == origin);
  CHECK(outbox::RelayStore::open(f.dir / "app.db").origin_id() == origin);
  CHECK(outbox::RelayStore::open(f.dir / "app.db", read_only).origin_id() == origin);

  // Another database has another one.
  test_support::TempDir other_dir("relay-store-origin");
  outbox::Outbox::open(other_dir / "app.db");
  CHECK(outbox::RelayStore::open(other_dir / "app.db").origin_id() != origin);
}

TEST_CASE("a sweep finds the rows reads never see: a seq of their own and no outcome") {
  Fixture f;
  std::vector<std::string> keys;
  for (int i = 1; i <= 10; ++i) keys.push_back(test_support::concat("k", i));
  f.enqueue(keys);
  auto lease = f.lease();
  std::vector<outbox::Outcome> outcomes;
  for (std::int64_t seq = 1; seq <= 10; ++seq) {
    outcomes.push_back(outbox::Outcome::delivered(seq, seq));
  }
  f.store.record_outcomes(outcomes, lease);
  // Seqs 3 and 7 gone as retention deletes them (both tables), then written
  // again by another program with those seqs, and one at -1; one more pending
  // above the cursor.
  exec(f.box.db(), "DELETE FROM outbox_messages WHERE seq IN (3, 7)");
  exec(f.box.db(), "DELETE FROM outbox_delivery WHERE seq IN (3, 7)");
  exec(f.box.db(),
       "INSERT INTO outbox_messages(seq, msg_id, topic, partition_key, payload) VALUES "
       "(3, 'again-3', 'orders', 'x', X'00'), (7, 'again-7', 'orders', NULL, X'00'), "
       "(-1, 'negative', 'orders', 'n', X'00')");
  f.enqueue({"pending"});

  // The row at -1 comes with every step; the positive seqs are swept.
  auto first = f.store.unread(0, 4, 100);
  CHECK(first.cursor == 10);
  REQUIRE(seqs_of(first.rows) == Seqs{-1, 3});
  CHECK(first.rows[0].msg_id == "negative");
  CHECK(first.rows[1].msg_id == "again-3");
  CHECK(first.rows[1].topic == "orders");
  CHECK(first.rows[1].partition_key == "x");
  CHECK(first.next_after == 4);  // rows 1, 2, 3 and 4 looked at
  auto second = f.store.unread(first.next_after, 4, 100);
  REQUIRE(seqs_of(second.rows) == Seqs{-1, 7});
  CHECK_FALSE(second.rows[1].partition_key);
  CHECK(second.next_after == 8);
  auto third = f.store.unread(second.next_after, 4, 100);
  CHECK(seqs_of(third.rows) == Seqs{-1});  // 9 and 10; 11 is above the cursor (pending)
  CHECK(third.next_after == 0);
  // One step over everything, and `limit`.
  CHECK(seqs_of(f.store.unread(0, 1000, 100).rows) == Seqs{-1, 3, 7});
  auto limited = f.store.unread(0, 1000, 2);
  CHECK(seqs_of(limited.rows) == Seqs{-1, 3});
  CHECK(limited.next_after == 3);  // the next step finds 7
  CHECK(seqs_of(f.store.unread(limited.next_after, 1000, 2).rows) == Seqs{-1, 7});
  auto filled_below_zero = f.store.unread(5, 1000, 1);
  CHECK(seqs_of(filled_below_zero.rows) == Seqs{-1});
  CHECK(filled_below_zero.next_after == 5);  // the sweep waits where it was
  // Once dead, they have an outcome.
  std::vector<outbox::Outcome> dead{outbox::Outcome::dead(-1, "UNDELIVERABLE: below"),
                                    outbox::Outcome::dead(3, "UNDELIVERABLE: below"),
                                    outbox::Outcome::dead(7, "UNDELIVERABLE: below")};
  f.store.record_outcomes(dead, lease);
  CHECK(f.store.unread(0, 1000, 100).rows.empty());
}
