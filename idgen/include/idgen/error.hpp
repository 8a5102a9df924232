// Errors raised by the idgen library.
//
// Every failure is an idgen::Error (a std::runtime_error) whose what() is a
// one-line message naming the bad value, and whose code() says which kind of
// failure it is, so a program can map it to an exit status without parsing text:
//   ErrorCode::invalid_argument       bad layout spec, worker id, encoded id, time
//   ErrorCode::clock_moved_backwards  the clock went back further than the policy allows
//   ErrorCode::layout_exhausted       the layout's timestamp bits have run out
//   ErrorCode::io                     the state file could not be read or written
// Subclasses exist for the two runtime conditions a caller may want to catch
// on their own: ClockMovedBackwardsError and LayoutExhaustedError.
#pragma once

#include <stdexcept>
#include <string>

namespace idgen {

enum class ErrorCode {
  invalid_argument,
  clock_moved_backwards,
  layout_exhausted,
  io,
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  explicit Error(const std::string& message) : Error(ErrorCode::invalid_argument, message) {}

  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// The clock moved backwards and the generator's ClockPolicy refused to continue.
class ClockMovedBackwardsError : public Error {
 public:
  explicit ClockMovedBackwardsError(const std::string& message)
      : Error(ErrorCode::clock_moved_backwards, message) {}
};

// The layout's timestamp field cannot represent the current time (it expired),
// so no further id can be issued.
class LayoutExhaustedError : public Error {
 public:
  explicit LayoutExhaustedError(const std::string& message)
      : Error(ErrorCode::layout_exhausted, message) {}
};

}  // namespace idgen
