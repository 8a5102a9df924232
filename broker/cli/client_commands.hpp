// What outbox-broker's client commands (stats, tail) share: the connection
// to the broker and how a failed request becomes an exit code.
#pragma once

#include <memory>
#include <string>

#include "broker/client.hpp"
#include "commands.hpp"

namespace broker::cli_commands {

// Throws UsageError for a bad endpoint or CURVE key file.
std::unique_ptr<broker::Client> make_client(const ClientSettings& settings);
// Prints "outbox-broker: ENDPOINT: MESSAGE" on stderr; 5 when the broker did
// not answer (timeout, disconnect), 6 when it answered with an error.
int report(const wire::Error& error, const std::string& endpoint);

}  // namespace broker::cli_commands
