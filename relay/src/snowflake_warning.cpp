#include "snowflake_warning.hpp"

#include <charconv>
#include <cstdint>

#include <spdlog/logger.h>

#include "metrics/log_fields.hpp"

namespace relay {

bool snowflake_shaped(std::string_view msg_id) {
  if (msg_id.empty() || msg_id.size() > 20 || (msg_id[0] == '0' && msg_id.size() > 1)) {
    return false;
  }
  std::uint64_t value = 0;
  auto [end, error] = std::from_chars(msg_id.data(), msg_id.data() + msg_id.size(), value);
  return error == std::errc() && end == msg_id.data() + msg_id.size();
}

SnowflakeWarningSink::SnowflakeWarningSink(Sink& inner, std::shared_ptr<spdlog::logger> log,
                                           std::string db, bool& warned)
    : inner_(inner), log_(std::move(log)), db_(std::move(db)), warned_(warned) {}

bool SnowflakeWarningSink::send(std::uint64_t batch_id,
                                std::span<const outbox::PendingMessage> messages) {
  if (!warned_) {
    for (const auto& message : messages) {
      if (!snowflake_shaped(message.msg_id)) continue;
      warned_ = true;
      metrics::log(*log_, spdlog::level::warn,
                   {{"event", "snowflake_ids"}, {"db", db_}, {"msg_id", message.msg_id}},
                   "msg_id {} looks like a snowflake id: snowflake ids are unique per database "
                   "only, and the broker deduplicates msg_ids across every database forwarded "
                   "together, so two databases can hand out the same id (CONFLICT, or a message "
                   "taken for a DUPLICATE and not stored); producers of databases forwarded "
                   "together should use UUID v7 ids (outbox::IdKind::uuid_v7) or their own ids "
                   "unique across databases",
                   message.msg_id);
      break;
    }
  }
  return inner_.send(batch_id, messages);
}

}  // namespace relay
