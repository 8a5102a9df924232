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
  IdSource(IdKind kind, std::uint32_t worker_id);
  ~IdSource() noexcept;
  IdSource(const IdSource&) = delete;
  IdSource& operator=(const IdSource&) = delete;

  std::string next();
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
