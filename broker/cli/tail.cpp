// outbox-broker tail: the consumer loop. Fetches a topic page by page from an
// offset or a group's position, prints each message, commits the group's
// offset after each page, and with --follow waits (long-poll) for more.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>

#include "cli/args.hpp"
#include "cli/process.hpp"
#include "client_commands.hpp"
#include "format.hpp"

namespace broker::cli_commands {

void add_tail_options(CLI::App* tail_command, ClientSettings& client_settings) {
  tail_command->add_option("--topic", client_settings.topic, "topic to read")->required();
  tail_command
      ->add_option("--from", client_settings.from,
                   "first offset (default: the group's position, else 1)")
      ->check(cli::count_check());
  tail_command->add_option("--group", client_settings.group,
                           "consumer group: resume from and commit its offset");
  tail_command
      ->add_option("--max", client_settings.max, "stop after this many messages (0: no limit)")
      ->check(cli::count_check());
  tail_command->add_flag("--follow", client_settings.follow,
                         "keep waiting for new messages until interrupted");
}

int tail(const ClientSettings& settings) {
  auto client = make_client(settings);
  auto timeout = std::chrono::milliseconds(settings.timeout_ms);
  wire::Fetch fetch;
  fetch.topic = settings.topic;
  fetch.group = settings.group;
  fetch.from_offset = settings.from;
  fetch.use_group_offset = settings.from == 0 && !settings.group.empty();
  std::uint64_t printed = 0;
  while (!cli::stop_requested()) {
    fetch.max_messages = 1000;
    if (settings.max > 0) {
      fetch.max_messages =
          static_cast<std::uint32_t>(std::min<std::uint64_t>(1000, settings.max - printed));
    }
    fetch.wait_ms = settings.follow ? 1000 : 0;
    auto reply = client->fetch(fetch, timeout);
    if (!reply) return report(reply.error(), settings.connect);
    for (const auto& message : reply->messages) {
      std::cout << (settings.json ? broker::message_to_json(settings.topic, message)
                                  : broker::message_to_text(message))
                << "\n";
    }
    std::cout.flush();
    printed += reply->messages.size();
    fetch.use_group_offset = false;
    fetch.from_offset = reply->next_offset;
    if (!settings.group.empty() && !reply->messages.empty()) {
      auto committed = client->commit_offset(settings.topic, settings.group,
                                             reply->messages.back().offset, timeout);
      if (!committed) return report(committed.error(), settings.connect);
    }
    if (settings.max > 0 && printed >= settings.max) break;
    if (!settings.follow && (reply->messages.empty() || reply->next_offset > reply->last_offset)) {
      break;
    }
  }
  return cli::exit_ok;
}

}  // namespace broker::cli_commands
