// What every daemon's main() needs besides flags: exit codes shared by the
// toolkit's programs, a stderr logger, and SIGINT/SIGTERM handling that only
// sets a flag (and calls one async-signal-safe stop function).
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include <spdlog/logger.h>

#include "outbox/error.hpp"

namespace cli {

// Exit codes shared by the daemons and their tools (idgen keeps the codes its
// own documentation lists).
enum ExitCode : int {
  exit_ok = 0,
  exit_failure = 1,      // unexpected error
  exit_usage = 2,        // bad flag, config file or value
  exit_storage = 3,      // a database cannot be opened, is not what it should be, or fails
  exit_endpoint = 4,     // an endpoint cannot be bound or used, bad keys
  exit_unreachable = 5,  // no answer from the broker
  exit_refused = 6,      // the broker answered with an error
  exit_not_found = 7,    // the named thing (a msg_id, ...) does not exist
};

// The exit code for a failure the toolkit's libraries reported, from its kind
// (docs/architecture.md, Errors): usage -> exit_usage, database ->
// exit_storage, io -> exit_endpoint, protocol -> exit_refused (the peer
// answered, not as the protocol says). The programs choose codes for
// outbox::Error here and nowhere else.
ExitCode exit_code_for(const outbox::Error& error) noexcept;

// A combination of flags or values that cannot work, found after parsing: the
// program prints "program: message" on one line and exits with exit_usage.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A logger named `name` writing to stderr, one line per record. Format "text":
//   2026-11-25T15:04:05.123 info message
// Format "json", one object per line (docs/operations.md, Logs):
//   {"time":"2026-11-25T15:04:05.123Z","level":"info","component":"outbox-relay","pid":42,"message":"...",
//    ...the structured fields of the record (metrics/log_fields.hpp), e.g. "seq":17}
// Throws std::invalid_argument for an unknown level or format name.
std::shared_ptr<spdlog::logger> make_stderr_logger(const std::string& name,
                                                   const std::string& level,
                                                   const std::string& format = "text");

// A record's message as the text log writes it: control bytes (a newline,
// a carriage return, an escape sequence, NUL...) and bytes that are not UTF-8
// (strict, as cli::is_valid_utf8) become "\xNN", so that text from a peer or a database (a topic, a
// reason) can neither end a line nor forge the next one. Tabs and UTF-8 stay as they are.
std::string log_text_escape(std::string_view text);

// Installs SIGINT/SIGTERM handlers that set stop_requested() and call `on_stop`
// (which must be async-signal-safe, e.g. an atomic store). Once per process.
using StopFunction = void (*)() noexcept;
void install_stop_handlers(StopFunction on_stop = nullptr);
bool stop_requested() noexcept;

// Raises the soft limit on open descriptors to the hard limit (a daemon holds
// one per peer connection and per database; the usual soft limit is 1,024,
// and libzmq spins in accept() at the limit). Returns the soft limit now in
// force (-1: unlimited or unreadable); never throws, and a limit that cannot
// be raised stays as it was.
long raise_descriptor_limit() noexcept;

}  // namespace cli
