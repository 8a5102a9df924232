#include "checker.hpp"

#include <algorithm>
#include <tuple>

namespace faults {

void check_redis_effects(Report& report, Database& consumer,
                         const std::map<std::string, const BrokerCopy*>& first_copy,
                         const RedisInboxView& redis) {
  struct Effect {
    std::string token;
    long pid;
  };
  std::map<std::string, std::vector<Effect>> effects;
  for (auto& row : consumer.rows("SELECT msg_id, claim_token, consumer FROM effects")) {
    auto dash = row[2].rfind('-');
    long pid = dash == std::string::npos ? -1 : std::atol(row[2].c_str() + dash + 1);
    effects[row[0]].push_back({row[1], pid});
    ++report.effects;
  }
  std::map<std::pair<std::string, std::string>, std::string> outcomes;
  for (auto& row : consumer.rows("SELECT msg_id, claim_token, outcome FROM claim_outcomes")) {
    outcomes[{row[0], row[1]}] = row[2];
  }
  for (const auto& [id, copy] : first_copy) {
    auto found = redis.records.find(id);
    auto record = found != redis.records.end() ? found->second : InboxRecord{};
    if (record.state != "completed") {
      report.inbox_unfinished.add(id + " (state '" + record.state + "')");
    }
    long winners = 0;
    for (const auto& effect : effects[id]) {
      if (!record.token.empty() && effect.token == record.token) {
        ++winners;
        continue;
      }
      auto outcome = outcomes.find({id, effect.token});
      if (outcome != outcomes.end()) {
        ++(outcome->second == "claim_lost" ? report.repeated_after_claim_lost
                                           : report.repeated_after_error);
      } else if (redis.killed_pids.count(effect.pid) != 0) {
        ++report.repeated_after_kill;
      } else {
        report.effect_twice.add(id + " (again by consumer pid " + std::to_string(effect.pid) +
                                ", whose claim was neither lost nor ended by a kill)");
      }
    }
    if (winners == 0) report.effect_missing.add(id + " (no effect under the completed claim)");
    if (winners > 1) {
      report.effect_twice.add(id + " (" + std::to_string(winners) +
                              " effects under the completed claim)");
    }
  }
  for (const auto& [id, list] : effects) {
    if (!first_copy.count(id)) report.effect_unknown.add(id);
  }
}

void read_committed(Database& app, std::size_t db, Committed& committed, Finding* collided) {
  for (auto& row : app.rows("SELECT msg_id FROM business")) committed.business.insert(row[0]);
  for (auto& row :
       app.rows("SELECT seq, msg_id, topic, coalesce(partition_key, '') FROM outbox_messages")) {
    auto [it, fresh] =
        committed.outbox.try_emplace(row[1], OutboxRow{db, std::stol(row[0]), row[2], row[3]});
    if (!fresh && collided != nullptr) {
      collided->add(shown(row[1]) + " (databases " + std::to_string(it->second.db + 1) + " and " +
                    std::to_string(db + 1) + ")");
    }
  }
}

std::string database_label(const std::vector<fs::path>& app_dbs, std::size_t db) {
  return app_dbs.size() > 1 ? app_dbs[db].filename().string() + " " : std::string();
}

Report check(const std::vector<fs::path>& app_dbs, const std::optional<fs::path>& consumer_db,
             const std::vector<BrokerCopy>& stored, const RedisInboxView* redis) {
  Report report;
  Committed committed;
  std::map<std::string, Poison> poison;
  // Dropped by the operator (state 3): settled without being sent, so
  // expected neither at the broker nor at the consumer. Dead (state 2) at the
  // end: only rows written to be undeliverable, each with a reason that names
  // what is wrong with it.
  std::set<std::string> dropped;
  std::vector<std::pair<std::string, std::string>> delivered;  // msg_id, recorded offset
  for (std::size_t db = 0; db < app_dbs.size(); ++db) {
    Database app(app_dbs[db]);
    app.begin();
    read_committed(app, db, committed, &report.collided);
    auto poison_here = read_poison(app);
    const auto label = database_label(app_dbs, db);
    for (auto& row : app.rows(
             "SELECT m.msg_id, coalesce(d.state, -1), coalesce(d.broker_offset, -1),"
             " m.seq <= coalesce((SELECT settled_through_seq FROM outbox_relay_cursor), 0),"
             " m.seq, coalesce(d.last_error, '')"
             " FROM outbox_messages m LEFT JOIN outbox_delivery d USING (seq) ORDER BY m.seq")) {
      bool settled = row[3] == "1";
      auto found = poison_here.find(row[0]);
      if (row[1] == "3") {
        dropped.insert(row[0]);
        if (found != poison_here.end()) ++report.poison_dropped;
      } else if (row[1] == "2") {
        auto line = label + "seq " + row[4] + " msg_id " + shown(row[0]) + " (" +
                    (found != poison_here.end() ? found->second.kind : "legal") + "): " + row[5];
        report.dead.push_back(line);
        if (found == poison_here.end()) {
          report.legal_dead.add(line);
        } else if (row[5].find(found->second.expected_reason) == std::string::npos) {
          report.wrong_reason.add(line + " (expected to mention '" + found->second.expected_reason +
                                  "')");
        }
      } else if (row[1] == "1" && found != poison_here.end()) {
        report.poison_delivered.add(label + shown(row[0]) + " (" + found->second.kind + ")");
      } else if (row[1] != "1" && !(settled && row[1] == "-1")) {
        report.undelivered.add(label + shown(row[0]) + " (state " + row[1] + ")");
      }
    }
    for (auto& row : app.rows("SELECT m.msg_id, d.broker_offset FROM outbox_messages m"
                              " JOIN outbox_delivery d USING (seq) WHERE d.state = 1")) {
      delivered.emplace_back(row[0], row[1]);
    }
    poison.merge(poison_here);
  }
  const auto& [business, outbox] = committed;
  report.committed = static_cast<long>(business.size());
  for (const auto& id : business) {
    if (!outbox.count(id)) report.no_message.add(id);
  }
  for (const auto& [id, row] : outbox) {
    if (!business.count(id)) report.no_business.add(id);
  }
  report.poison = static_cast<long>(poison.size());
  report.dropped = static_cast<long>(dropped.size());

  // What the broker stored.
  std::map<std::string, const BrokerCopy*> first_copy;
  std::map<std::tuple<std::size_t, std::string, std::string>, std::vector<const BrokerCopy*>>
      per_key;
  for (const auto& copy : stored) {
    auto [it, fresh] = first_copy.emplace(copy.msg_id, &copy);
    if (!fresh) {
      report.duplicated.add(copy.msg_id + " (" + copy.topic + " offsets " +
                            std::to_string(it->second->offset) + " and " +
                            std::to_string(copy.offset) + ")");
    }
    auto committed_row = outbox.find(copy.msg_id);
    if (committed_row == outbox.end() || poison.count(copy.msg_id)) {
      report.phantom.add(shown(copy.msg_id) + " (" + copy.topic + " offset " +
                         std::to_string(copy.offset) +
                         (poison.count(copy.msg_id) ? ", can never be delivered" : "") + ")");
      continue;
    }
    per_key[{committed_row->second.db, copy.topic, copy.key}].push_back(&copy);
  }
  report.stored = static_cast<long>(stored.size());
  for (const auto& id : business) {
    if (first_copy.count(id) == 0 && dropped.count(id) == 0 && poison.count(id) == 0)
      report.lost.add(id);
  }
  for (const auto& id : dropped) {
    if (first_copy.count(id) != 0) report.dropped_stored.add(id);
  }
  // Per (database, topic, key), offsets must follow commit order (seq).
  for (auto& [db_topic_key, copies] : per_key) {
    std::sort(copies.begin(), copies.end(),
              [](const BrokerCopy* a, const BrokerCopy* b) { return a->offset < b->offset; });
    const auto label = database_label(app_dbs, std::get<0>(db_topic_key));
    long highest_seq = 0;
    std::string highest_id;
    for (const auto* copy : copies) {
      const auto& row = outbox.at(copy->msg_id);
      if (row.topic != copy->topic || row.key != copy->key) {
        report.reordered.add(copy->msg_id + " (stored under " + copy->topic + "/" + copy->key +
                             ", committed under " + label + row.topic + "/" + row.key + ")");
        continue;
      }
      if (row.seq < highest_seq) {
        report.reordered.add(copy->msg_id + " (" + label + "seq " + std::to_string(row.seq) +
                             " at " + copy->topic + " offset " + std::to_string(copy->offset) +
                             ", after " + highest_id + " seq " + std::to_string(highest_seq) +
                             ", key " + copy->key + ")");
      } else {
        highest_seq = row.seq;
        highest_id = copy->msg_id;
      }
    }
  }
  for (const auto& [id, offset] : delivered) {
    auto found = first_copy.find(id);
    if (found == first_copy.end()) continue;  // counted as lost
    if (offset != std::to_string(found->second->offset)) {
      report.wrong_offset.add(id + " (outbox says " + offset + ", broker " +
                              std::to_string(found->second->offset) + ")");
    }
  }

  // What the consumer did.
  if (!consumer_db) return report;
  Database consumer(*consumer_db);
  if (redis != nullptr) {
    check_redis_effects(report, consumer, first_copy, *redis);
    return report;
  }
  std::map<std::string, long> effects;
  for (auto& row : consumer.rows("SELECT msg_id, count(*) FROM effects GROUP BY msg_id")) {
    effects[row[0]] = std::stol(row[1]);
    report.effects += std::stol(row[1]);
  }
  for (const auto& [id, copy] : first_copy) {
    auto found = effects.find(id);
    if (found == effects.end())
      report.effect_missing.add(id);
    else if (found->second > 1)
      report.effect_twice.add(id + " (" + std::to_string(found->second) + " times)");
  }
  for (const auto& [id, times] : effects) {
    if (!first_copy.count(id)) report.effect_unknown.add(id);
  }
  return report;
}

long count_effects(const fs::path& consumer_db) {
  if (!fs::exists(consumer_db)) return 0;
  try {
    Database consumer(consumer_db);
    auto rows = consumer.rows("SELECT count(DISTINCT msg_id) FROM effects");
    return rows.empty() ? 0 : std::stol(rows[0][0]);
  } catch (const HarnessError&) {
    return 0;  // the table is not there yet
  }
}

EffectsReport check_effects(const fs::path& app_db, const fs::path& consumer_db) {
  EffectsReport report;
  Database app(app_db);
  app.begin();
  Committed committed;
  read_committed(app, 0, committed);
  const auto& [business, outbox] = committed;
  Database consumer(consumer_db);
  std::map<std::string, long> times;
  std::map<std::pair<std::string, std::string>, std::pair<long, std::string>> highest;
  for (auto& row : consumer.rows("SELECT msg_id FROM effects ORDER BY id")) {
    const auto& id = row[0];
    if (++times[id] == 2) report.duplicated.add(id);
    auto found = outbox.find(id);
    if (found == outbox.end() || !business.count(id)) {
      report.phantom.add(id);
      continue;
    }
    auto& [seq, last_id] = highest[{found->second.topic, found->second.key}];
    if (found->second.seq < seq) {
      report.reordered.add(id + " (seq " + std::to_string(found->second.seq) + " applied after " +
                           last_id + " seq " + std::to_string(seq) + ", key " + found->second.key +
                           ")");
    } else {
      seq = found->second.seq;
      last_id = id;
    }
  }
  for (const auto& id : business) {
    if (!times.count(id)) report.lost.add(id);
  }
  return report;
}

}  // namespace faults
