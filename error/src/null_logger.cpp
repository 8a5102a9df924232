#include "outbox/null_logger.hpp"

#include <spdlog/sinks/null_sink.h>

#include <utility>

namespace outbox {

std::shared_ptr<spdlog::logger> null_logger(const std::string& name) {
  return std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::null_sink_mt>());
}

std::shared_ptr<spdlog::logger> logger_or_null(std::shared_ptr<spdlog::logger> logger,
                                               const std::string& name) {
  if (logger) return logger;
  return null_logger(name);
}

}  // namespace outbox
