// Reading back what a running outbox-broker stored, for tests, the fault
// suite and the benchmarks that check a whole topic against what was produced.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "broker/client.hpp"
#include "wire/protocol.hpp"

namespace test_support {

// Hands everything the broker at `endpoint` stored on `topic` to `page`, in
// offset order, a page of up to 10,000 messages at a time, until a page comes
// back empty (at most 100,000 pages): a whole topic without holding it in
// memory. Opens its own client with `options`. Throws std::runtime_error
// naming the topic and the broker's error when a fetch fails; whatever `page`
// throws goes through.
void for_each_stored(const std::string& endpoint, const std::string& topic,
                     const std::function<void(std::span<const wire::StoredMessage>)>& page,
                     const broker::ClientOptions& options = {});

// Everything the broker at `endpoint` stored on `topic`, in offset order, read
// in pages of up to 10,000 messages until a page comes back empty (at most
// 100,000 pages). Opens its own client with `options`. Throws
// std::runtime_error naming the topic and the broker's error when a fetch
// fails.
std::vector<wire::StoredMessage> fetch_topic(const std::string& endpoint, const std::string& topic,
                                             const broker::ClientOptions& options = {});

}  // namespace test_support
