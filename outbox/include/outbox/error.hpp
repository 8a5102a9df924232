// Errors reported by the outbox library.
//
// Programming and configuration errors (a missing directory, a file that is not
// a SQLite database, an empty topic, an oversized payload, a schema written by a
// newer version, enqueueing outside a transaction) and database failures (disk
// full, I/O error, lock timeout) throw outbox::Error. Its message is one line
// that names what was wrong; extended_code() keeps SQLite's extended result code
// when the failure came from SQLite (0 otherwise), so callers can tell
// SQLITE_BUSY from SQLITE_FULL without parsing text.
//
// Expected outcomes are values, never exceptions: a duplicate msg_id, an inbox
// message already processed, a lease held by someone else.
#pragma once

#include <stdexcept>
#include <string>

namespace outbox {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, int extended_code = 0)
      : std::runtime_error(message), extended_code_(extended_code) {}

  // SQLite's extended result code (for example SQLITE_BUSY_SNAPSHOT), or 0
  // when the error did not come from SQLite.
  int extended_code() const noexcept { return extended_code_; }

 private:
  int extended_code_;
};

// Thrown by relay-side writes that were fenced with a lease when the lease is
// no longer held by the caller (it expired and another relay took it over).
// Nothing of the failed call was written.
class LeaseLost : public Error {
 public:
  using Error::Error;
};

}  // namespace outbox
