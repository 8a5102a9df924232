// The checker: compares what the producers committed, what the broker (or
// the stream) stored and what the consumers applied, after a run, and names
// every message lost, duplicated, reordered or invented.
#pragma once

#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "faults_common.hpp"
#include "readers.hpp"

namespace faults {

struct Finding {
  explicit Finding(std::string name_in) : name(std::move(name_in)) {}
  std::string name;
  long count = 0;
  std::vector<std::string> examples{};
  void add(const std::string& example) {
    ++count;
    if (examples.size() < 5) examples.push_back(example);
  }
};

struct Report {
  Finding lost{"lost"}, duplicated{"duplicated"}, reordered{"reordered"}, phantom{"phantom"};
  Finding no_message{"business row without its message"};
  Finding no_business{"message without its business row"};
  Finding undelivered{"outbox rows not delivered"};
  Finding wrong_offset{"delivered with another offset than the broker's"};
  Finding effect_missing{"consumer side effect missing"};
  Finding effect_twice{"consumer side effect applied more than once"};
  Finding effect_unknown{"consumer side effect for a message the broker does not have"};
  Finding dropped_stored{"dropped by the operator but stored by the broker"};
  Finding legal_dead{"a legal message ended dead"};
  Finding poison_delivered{"a row that can never be delivered is marked delivered"};
  Finding wrong_reason{"dead with a reason that does not name the field"};
  Finding inbox_unfinished{"Redis inbox record not completed for a stored message"};
  Finding collided{"msg_id committed in more than one database"};
  long committed = 0, stored = 0, effects = 0, dropped = 0, poison = 0, poison_dropped = 0;
  std::vector<std::string> dead;  // every dead message at the end, with its reason
  // --inbox redis: side effects repeated within the contract's at-least-once
  // window, by what allowed each.
  long repeated_after_kill = 0, repeated_after_claim_lost = 0, repeated_after_error = 0;

  std::vector<Finding*> all() {
    return {&lost,           &duplicated,       &reordered,      &phantom,
            &no_message,     &no_business,      &undelivered,    &wrong_offset,
            &effect_missing, &effect_twice,     &effect_unknown, &dropped_stored,
            &legal_dead,     &poison_delivered, &wrong_reason,   &inbox_unfinished,
            &collided};
  }
  bool passed() {
    for (auto* finding : all()) {
      if (finding->count != 0) return false;
    }
    return true;
  }
};

// What the checker needs to know of a Redis inbox shared by the consumers.
struct RedisInboxView {
  std::map<std::string, InboxRecord> records;  // of every stored msg_id
  std::set<long> killed_pids;                  // consumer processes that ended by SIGKILL
};

// With --inbox redis a side effect may repeat, as docs/redis_inbox.md says,
// only after its claim never completed: its consumer was killed (between the
// side effect and complete()), its complete() found the claim taken over
// (claim_lost) or failed. Exactly one effect per stored message carries the
// token of the claim the record shows completed; every other one must have
// one of those causes.
void check_redis_effects(Report& report, Database& consumer,
                         const std::map<std::string, const BrokerCopy*>& first_copy,
                         const RedisInboxView& redis);

// What the producers committed: business rows (by msg_id), and the outbox
// rows by msg_id with their database (its number) and commit order there.
struct OutboxRow {
  std::size_t db;
  long seq;
  std::string topic, key;
};
struct Committed {
  std::set<std::string> business;
  std::map<std::string, OutboxRow> outbox;
};

// Adds what database number `db` committed to `committed`; a msg_id another
// database committed too is added to `collided` (when given) and kept once.
void read_committed(Database& app, std::size_t db, Committed& committed,
                    Finding* collided = nullptr);

// The name of database number `db` in a report line: nothing with one
// database, "tenant-0007.db " with several.
std::string database_label(const std::vector<fs::path>& app_dbs, std::size_t db);

// Without a consumer database (no consumer ran) the consumer checks are left
// out. With several outbox databases, order is checked per (database, topic,
// key): the order contract is per database.
Report check(const std::vector<fs::path>& app_dbs, const std::optional<fs::path>& consumer_db,
             const std::vector<BrokerCopy>& stored, const RedisInboxView* redis);

long count_effects(const fs::path& consumer_db);

// The consumers' side effects against what the producers committed, by
// msg_id (--sink jetstream): each committed message applied once, none that
// was not committed, and per (topic, key) applied in commit (seq) order.
struct EffectsReport {
  Finding lost{"side effects lost"}, duplicated{"side effects duplicated"},
      reordered{"side effects reordered"}, phantom{"side effects phantom"};
  std::vector<Finding*> all() { return {&lost, &duplicated, &reordered, &phantom}; }
};

EffectsReport check_effects(const fs::path& app_db, const fs::path& consumer_db);

}  // namespace faults
