#include "cli/process.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <stdexcept>

#include <spdlog/formatter.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli/json.hpp"
#include "cli/time.hpp"
#include "metrics/log_fields.hpp"

namespace cli {
namespace {

// A process-directed signal runs its handler on whichever thread does not
// block it (an HTTP worker, a checkpointer), not only the main thread: the
// flag is a lock-free atomic, which a handler may write and any thread read
// (a volatile sig_atomic_t is only safe within one thread; TSan reported the
// race when SIGTERM reached an outbox-broker HTTP worker).
std::atomic<int> stop_flag{0};
static_assert(std::atomic<int>::is_always_lock_free);
std::atomic<StopFunction> stop_function{nullptr};

extern "C" void on_stop_signal(int) {
  stop_flag.store(1);
  if (auto function = stop_function.load()) function();
}

// One JSON object per record, for log collectors: time, level, component,
// pid, message, then the record's structured fields (metrics::LogFields) as
// members of their own. Every string goes through json_escape, so any bytes
// in it (a msg_id from a client) still parse. A field named like one of the
// fixed members is written with a "field_" prefix, so no key appears twice.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& record, spdlog::memory_buf_t& out) override {
    const auto time = format_utc_time(record.time);
    auto level = spdlog::level::to_string_view(record.level);
    std::string line =
        std::string("{\"time\":\"") + time + "\",\"level\":\"" +
        std::string(level.data(), level.size()) + "\",\"component\":" +
        json_escape(std::string_view(record.logger_name.data(), record.logger_name.size())) +
        ",\"pid\":" + std::to_string(::getpid()) + ",\"message\":" +
        json_escape(std::string_view(record.payload.data(), record.payload.size()));
    for (const auto& field : metrics::LogFields::current()) {
      const auto name = field.name();
      const bool fixed = name == "time" || name == "level" || name == "component" ||
                         name == "pid" || name == "message";
      line += ',';
      line += json_escape(fixed ? "field_" + std::string(name) : std::string(name));
      line += ':';
      line += field.is_number() ? std::string(field.value()) : json_escape(field.value());
    }
    line += "}\n";
    out.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

// %* in the text log's pattern: the message through log_text_escape.
class EscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& record, const std::tm&,
              spdlog::memory_buf_t& out) override {
    auto text = log_text_escape(std::string_view(record.payload.data(), record.payload.size()));
    out.append(text.data(), text.data() + text.size());
  }
  std::unique_ptr<spdlog::custom_flag_formatter> clone() const override {
    return std::make_unique<EscapedMessage>();
  }
};

}  // namespace

std::string log_text_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t at = 0; at < text.size();) {
    const auto byte = static_cast<unsigned char>(text[at]);
    if ((byte >= 0x20 && byte < 0x7F) || byte == '\t') {
      out += static_cast<char>(byte);
      ++at;
      continue;
    }
    if (byte >= 0x80) {
      if (auto length = utf8_sequence_length(text, at); length > 0) {
        out.append(text.substr(at, length));
        at += length;
        continue;
      }
    }
    static constexpr char kHex[] = "0123456789abcdef";
    out += "\\x";
    out += kHex[byte >> 4];
    out += kHex[byte & 0x0F];
    ++at;
  }
  return out;
}

std::shared_ptr<spdlog::logger> make_stderr_logger(const std::string& name,
                                                   const std::string& level,
                                                   const std::string& format) {
  if (format != "text" && format != "json") {
    throw std::invalid_argument("unknown log format '" + format + "' (text, json)");
  }
  auto parsed = spdlog::level::from_str(level);
  // from_str() maps anything unknown to "off"; only the word itself means off.
  if (parsed == spdlog::level::off && level != "off") {
    throw std::invalid_argument("unknown log level '" + level +
                                "' (trace, debug, info, warn, error, critical, off)");
  }
  auto logger = std::make_shared<spdlog::logger>(
      name, std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  if (format == "json") {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<EscapedMessage>('*').set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %*");
    logger->set_formatter(std::move(formatter));
  }
  logger->set_level(parsed);
  logger->flush_on(spdlog::level::info);
  return logger;
}

void install_stop_handlers(StopFunction on_stop) {
  stop_function.store(on_stop);
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

ExitCode exit_code_for(const outbox::Error& error) noexcept {
  switch (error.kind()) {
    case outbox::ErrorKind::usage:
      return exit_usage;
    case outbox::ErrorKind::database:
      return exit_storage;
    case outbox::ErrorKind::io:
      return exit_endpoint;
    case outbox::ErrorKind::protocol:
      return exit_refused;
  }
  return exit_failure;
}

bool stop_requested() noexcept {
  return stop_flag.load() != 0;
}

long raise_descriptor_limit() noexcept {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur == RLIM_INFINITY ? -1 : static_cast<long>(limit.rlim_cur);
}

}  // namespace cli
