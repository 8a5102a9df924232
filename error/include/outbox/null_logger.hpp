// The logger a library of the toolkit (outbox, broker, relay) writes to when
// its caller gave none: it drops every record. Libraries never create global
// loggers.
//
// Ownership: a new object on each call, owned by the caller (shared_ptr).
// Thread safety: the logger is safe to use from any thread.
#pragma once

#include <memory>
#include <string>

#include <spdlog/logger.h>

namespace outbox {

// A logger named `name` that drops every record.
std::shared_ptr<spdlog::logger> null_logger(const std::string& name);

// `logger` when it is set, null_logger(name) otherwise.
std::shared_ptr<spdlog::logger> logger_or_null(std::shared_ptr<spdlog::logger> logger,
                                               const std::string& name);

}  // namespace outbox
