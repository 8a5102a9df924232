// outbox-relay dead, replay and drop: what an operator does with messages
// that can never be delivered as they are.
#include <cstdio>
#include <iostream>
#include <string>

#include "cli/json.hpp"
#include "cli/process.hpp"
#include "cli/time.hpp"
#include "commands.hpp"
#include "relay/sink.hpp"

namespace relay::commands {

namespace {

void print_dead_json(const outbox::DeadMessage& message) {
  const cli::Json line = {
      {"seq", message.seq},
      {"msg_id", cli::json_value(message.msg_id)},
      {"topic", cli::json_value(message.topic)},
      {"key", message.partition_key ? cli::json_value(*message.partition_key) : cli::Json(nullptr)},
      {"reason", cli::json_text(message.reason)},
      {"attempts", message.attempts},
      {"created_at", cli::format_utc_time(message.created_at)},
      {"died_at", cli::format_utc_time(message.died_at)}};
  std::cout << line.dump() << "\n";
}

void print_dead_text(const outbox::DeadMessage& message) {
  std::cout << "seq " << message.seq << "  msg_id " << relay::printable_field(message.msg_id)
            << "  topic " << relay::printable_field(message.topic) << "  key "
            << (message.partition_key ? relay::printable_field(*message.partition_key) : "-")
            << "  died " << cli::format_utc_time(message.died_at) << "  " << message.reason << "\n";
}

int no_such_dead_message(const std::string& msg_id) {
  std::fprintf(stderr, "outbox-relay: no dead message with msg_id '%s'\n", msg_id.c_str());
  return cli::exit_not_found;
}

}  // namespace

int list_dead(const DeadListSettings& settings) {
  auto store = outbox::RelayStore::open(settings.db, {.read_only = true});
  auto dead = store.list_dead(settings.limit);
  for (const auto& message : dead) {
    if (settings.json) {
      print_dead_json(message);
    } else {
      print_dead_text(message);
    }
  }
  if (!settings.json && dead.empty()) std::cout << "no dead messages\n";
  return cli::exit_ok;
}

int replay(const RepairSettings& settings) {
  if (settings.all == !settings.msg_id.empty()) {
    throw cli::UsageError("replay needs exactly one of --msg-id or --all");
  }
  auto store = outbox::RelayStore::open(settings.db, {});
  if (settings.all) {
    std::cout << "replayed " << store.replay_all_dead() << " dead messages\n";
    return cli::exit_ok;
  }
  if (!store.replay_dead(settings.msg_id)) return no_such_dead_message(settings.msg_id);
  std::cout << "replayed " << settings.msg_id << "\n";
  return cli::exit_ok;
}

int drop(const RepairSettings& settings) {
  auto store = outbox::RelayStore::open(settings.db, {});
  if (!store.drop_dead(settings.msg_id)) return no_such_dead_message(settings.msg_id);
  std::cout << "dropped " << settings.msg_id << "\n";
  return cli::exit_ok;
}

}  // namespace relay::commands
