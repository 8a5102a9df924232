// The one exception type of the toolkit's libraries (outbox, broker, relay).
//
// Expected outcomes are values, never exceptions: a duplicate msg_id, an inbox
// message already processed, a lease held by someone else, a broker's
// DUPLICATE/CONFLICT/REJECTED answers. Failures throw outbox::Error, whose
// message is one line that names what was wrong, and which carries
//
//  - kind(): what failed, so that a program can choose its exit code or retry
//    policy without parsing text (ErrorKind below);
//  - extended_code(): SQLite's extended result code when SQLite reported the
//    failure (for example SQLITE_BUSY_SNAPSHOT or SQLITE_FULL), or a code the
//    library assigned for a database that is not what it should be
//    (SQLITE_CORRUPT, SQLITE_NOTADB); 0 for failures that are not SQLite's.
//
// Thread safety: an Error is an immutable value; copying it does not throw
// beyond std::runtime_error's own copy.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace outbox {

enum class ErrorKind {
  // The caller broke a documented precondition: an empty topic, an oversized
  // payload, a negative lease time, enqueue outside a transaction.
  usage,
  // SQLite failed, or a database file is not what it should be: missing
  // directory, not a SQLite file, a schema of a newer version, corrupt,
  // locked by another process. extended_code() says which.
  database,
  // A file, lock, descriptor, socket, endpoint or key file of the operating
  // system or of ZeroMQ could not be used.
  io,
  // A peer sent or answered something the protocol does not allow.
  protocol,
};

// "usage", "database", "io", "protocol".
std::string_view to_string(ErrorKind kind) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message, int extended_code = 0)
      : std::runtime_error(message), kind_(kind), extended_code_(extended_code) {}
  // Kind database when a SQLite code is given, usage otherwise.
  explicit Error(const std::string& message, int extended_code = 0)
      : Error(extended_code != 0 ? ErrorKind::database : ErrorKind::usage, message, extended_code) {
  }

  ErrorKind kind() const noexcept { return kind_; }
  // SQLite's extended result code, or 0 when the error did not come from SQLite.
  int extended_code() const noexcept { return extended_code_; }

 private:
  ErrorKind kind_;
  int extended_code_;
};

// Thrown by relay-side writes that were fenced with a lease when the lease is
// no longer held by the caller (it expired and another relay took it over).
// Nothing of the failed call was written. Kind database.
class LeaseLost : public Error {
 public:
  explicit LeaseLost(const std::string& message, int extended_code = 0)
      : Error(ErrorKind::database, message, extended_code) {}
};

}  // namespace outbox
