#include "broker_topic.hpp"

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <utility>

namespace test_support {

void for_each_stored(const std::string& endpoint, const std::string& topic,
                     const std::function<void(std::span<const wire::StoredMessage>)>& page,
                     const broker::ClientOptions& options) {
  broker::Client client(endpoint, options);
  std::uint64_t from = 1;
  for (int round = 0; round < 100000; ++round) {
    wire::Fetch request;
    request.topic = topic;
    request.from_offset = from;
    request.max_messages = 10000;
    auto reply = client.fetch(request, std::chrono::seconds(20));
    if (!reply) {
      throw std::runtime_error("fetching " + topic + " failed: " + reply.error().message);
    }
    if (reply->messages.empty()) break;
    page(reply->messages);
    from = reply->next_offset;
  }
}

std::vector<wire::StoredMessage> fetch_topic(const std::string& endpoint, const std::string& topic,
                                             const broker::ClientOptions& options) {
  std::vector<wire::StoredMessage> all;
  for_each_stored(
      endpoint, topic,
      [&](std::span<const wire::StoredMessage> messages) {
        all.insert(all.end(), messages.begin(), messages.end());
      },
      options);
  return all;
}

}  // namespace test_support
