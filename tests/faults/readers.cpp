#include "readers.hpp"

#include <set>

#include "broker_topic.hpp"
#include "find_program.hpp"

namespace faults {

std::map<std::string, Poison> read_poison(Database& app) {
  std::map<std::string, Poison> poison;
  if (!app.has_table("poison")) return poison;
  for (auto& row : app.rows("SELECT msg_id, kind, expected_reason FROM poison")) {
    poison[row[0]] = {row[1], row[2]};
  }
  return poison;
}

std::vector<std::string> broker_topics(const std::vector<fs::path>& app_dbs) {
  std::set<std::string> topics(kTopics.begin(), kTopics.end());
  for (const auto& app_db : app_dbs) {
    Database app(app_db);
    for (auto& row : app.rows("SELECT DISTINCT topic FROM outbox_messages"
                              " WHERE length(CAST(topic AS BLOB)) BETWEEN 1 AND 249"
                              " AND topic NOT GLOB '*[^A-Za-z0-9._-]*'")) {
      topics.insert(row[0]);
    }
  }
  return {topics.begin(), topics.end()};
}

std::vector<BrokerCopy> fetch_everything(const std::string& endpoint,
                                         const std::vector<std::string>& topics) {
  std::vector<BrokerCopy> all;
  for (const auto& topic : topics) {
    for (auto& message : test_support::fetch_topic(endpoint, topic)) {
      all.push_back({topic, message.offset, message.msg_id, message.key});
    }
  }
  return all;
}

#ifdef OUTBOX_RELAY_WITH_JETSTREAM
std::string find_nats_server() {
  return test_support::find_program("nats-server", "OUTBOX_NATS_SERVER");
}

std::string nats_error(natsStatus status) {
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  return std::string(natsStatus_GetText(status)) +
         (detail != nullptr ? std::string(" ") + detail : "");
}

#endif  // OUTBOX_RELAY_WITH_JETSTREAM

}  // namespace faults
