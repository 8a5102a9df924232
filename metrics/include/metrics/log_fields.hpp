// Structured fields for log lines: what a line is about (a seq, a msg_id, a
// topic, a database, an error code, a peer) as named values next to the
// message text, for log collectors. The logs' counterpart of the metrics:
// the toolkit's libraries attach fields to their important lines, and the
// daemons' `--log-format json` writes them as members of the line's JSON
// object (docs/operations.md, Logs). Any other formatter ignores them, so a
// library user's own logger prints exactly the text it printed before.
//
//   metrics::log(*logger, spdlog::level::err,
//                {{"msg_id", message.msg_id}, {"seq", message.seq}, {"topic", message.topic}},
//                "message {} (seq {}) is dead: {}", message.msg_id, message.seq, reason);
//
// The text stays complete on its own: fields repeat what it says, never
// replace it.
//
// Ownership: the fields (names and string values are views) live for the one
// call that logs them; a formatter reads them through LogFields::current()
// while that call formats the record.
// Thread safety: the fields belong to the calling thread, so they reach
// synchronous sinks only (the daemons' loggers are synchronous; an
// spdlog::async_logger formats on another thread and sees none).
#pragma once

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <spdlog/logger.h>

namespace metrics {

// One field: a name and a string or an integer. Strings are views (of the
// caller's values, alive for the call that logs them); an integer is kept as
// its decimal digits, whatever its type.
class LogField {
 public:
  LogField(std::string_view field_name, std::string_view text) : name_(field_name), text_(text) {}
  LogField(std::string_view field_name, const std::string& text) : name_(field_name), text_(text) {}
  LogField(std::string_view field_name, const char* text) : name_(field_name), text_(text) {}
  template <class Integer>
  requires(std::is_integral_v<Integer> && !std::is_same_v<Integer, bool>)
      LogField(std::string_view field_name, Integer number)
      : name_(field_name), is_number_(true) {
    auto end = std::to_chars(digits_, digits_ + sizeof digits_, number).ptr;
    digit_count_ = static_cast<std::size_t>(end - digits_);
  }

  std::string_view name() const noexcept { return name_; }
  bool is_number() const noexcept { return is_number_; }
  // The string, or the number's decimal digits ('-' first when negative).
  std::string_view value() const noexcept {
    return is_number_ ? std::string_view(digits_, digit_count_) : text_;
  }

 private:
  std::string_view name_;
  std::string_view text_{};
  bool is_number_ = false;
  char digits_[24]{};  // any 64-bit integer
  std::size_t digit_count_ = 0;
};

// Sets the calling thread's fields for its lifetime (the previous ones
// come back after it). Nested scopes replace, not merge.
class LogFields {
 public:
  explicit LogFields(std::span<const LogField> fields) noexcept;
  ~LogFields() noexcept;
  LogFields(const LogFields&) = delete;
  LogFields& operator=(const LogFields&) = delete;

  // The fields of the record the calling thread is logging (empty outside a
  // scope).
  static std::span<const LogField> current() noexcept;

 private:
  std::span<const LogField> previous_;
};

// logger.log(level, format, args...) with `fields` attached to the record.
template <class... Args>
void log(spdlog::logger& logger, spdlog::level::level_enum level,
         std::initializer_list<LogField> fields, spdlog::format_string_t<Args...> format,
         Args&&... args) {
  if (!logger.should_log(level)) return;
  LogFields scope(std::span<const LogField>(fields.begin(), fields.size()));
  logger.log(level, format, std::forward<Args>(args)...);
}

}  // namespace metrics
