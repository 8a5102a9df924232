#include "cli/process.hpp"

#include <atomic>
#include <csignal>
#include <stdexcept>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace cli {
namespace {

volatile std::sig_atomic_t stop_flag = 0;
std::atomic<StopFunction> stop_function{nullptr};

extern "C" void on_stop_signal(int) {
  stop_flag = 1;
  if (auto function = stop_function.load()) function();
}

}  // namespace

std::shared_ptr<spdlog::logger> make_stderr_logger(const std::string& name,
                                                   const std::string& level) {
  auto parsed = spdlog::level::from_str(level);
  // from_str() maps anything unknown to "off"; only the word itself means off.
  if (parsed == spdlog::level::off && level != "off") {
    throw std::invalid_argument("unknown log level '" + level +
                                "' (trace, debug, info, warn, error, critical, off)");
  }
  auto logger = std::make_shared<spdlog::logger>(
      name, std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
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

bool stop_requested() noexcept {
  return stop_flag != 0;
}

}  // namespace cli
