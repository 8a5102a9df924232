// msg_id generation: snowflake ids (decimal text) or UUID v7 (canonical text),
// from the idgen component.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "outbox/outbox.hpp"

namespace outbox::detail {

class IdSource {
 public:
  // Snowflake ids with `worker_id`, all at or after `issued_below_unix_ms`
  // (the worker id's high-water mark; waits for the clock to pass it).
  IdSource(IdKind kind, std::uint32_t worker_id, std::int64_t issued_below_unix_ms = 0);
  ~IdSource() noexcept;
  IdSource(const IdSource&) = delete;
  IdSource& operator=(const IdSource&) = delete;

  // The next msg_id; `timestamp_ms` receives the Unix ms stamped into it.
  std::string next(std::int64_t& timestamp_ms);
  std::uint32_t worker_id() const { return worker_id_; }

  // Largest worker id of the snowflake layout in use.
  static std::uint32_t max_worker_id();

 private:
  struct Generators;
  IdKind kind_;
  std::uint32_t worker_id_;
  std::unique_ptr<Generators> generators_;
};

}  // namespace outbox::detail
