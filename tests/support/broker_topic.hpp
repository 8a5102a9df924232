// Reading back what a running outbox-broker stored, for tests and the fault
// suite that check a whole topic against what was produced.
#pragma once

#include <string>
#include <vector>

#include "broker/client.hpp"
#include "wire/protocol.hpp"

namespace test_support {

// Everything the broker at `endpoint` stored on `topic`, in offset order, read
// in pages of up to 10,000 messages until a page comes back empty (at most
// 100,000 pages). Opens its own client with `options`. Throws
// std::runtime_error naming the topic and the broker's error when a fetch
// fails.
std::vector<wire::StoredMessage> fetch_topic(const std::string& endpoint, const std::string& topic,
                                             const broker::ClientOptions& options = {});

}  // namespace test_support
