// A Sink in front of another that warns once when a database forwarded
// together with others sends a msg_id shaped like a snowflake id: those are
// unique per database only, and the broker deduplicates across all of them
// (docs/architecture.md, "Ids across tenants"). Private to the relay library.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "relay/sink.hpp"

namespace spdlog {
class logger;
}

namespace relay {

// Whether `msg_id` is written as outbox::IdKind::snowflake writes its ids:
// the decimal digits of a 64-bit number, without leading zeros.
bool snowflake_shaped(std::string_view msg_id);

// Passes every call to `inner` unchanged. The first batch that carries a
// snowflake-shaped msg_id is logged on `log` (one warning naming `db` and that
// msg_id) and sets `warned`; while `warned` is set nothing more is looked at,
// so a caller that keeps the flag per database warns once per database
// however often it makes a new sink for it.
//
// Ownership: `inner` and `warned` must outlive the sink. Thread safety: as
// `inner`. Errors: those of `inner`.
class SnowflakeWarningSink final : public Sink {
 public:
  SnowflakeWarningSink(Sink& inner, std::shared_ptr<spdlog::logger> log, std::string db,
                       bool& warned);

  void set_lease(SinkLease lease) override { inner_.set_lease(std::move(lease)); }
  SessionResult open_session(std::chrono::milliseconds timeout) override {
    return inner_.open_session(timeout);
  }
  bool resume(std::uint64_t first_batch_id) override { return inner_.resume(first_batch_id); }
  bool prepare_session() override { return inner_.prepare_session(); }
  bool session_answered() const override { return inner_.session_answered(); }
  bool send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) override;
  std::optional<SinkEvent> poll(std::chrono::milliseconds timeout) override {
    return inner_.poll(timeout);
  }
  std::string describe() const override { return inner_.describe(); }
  SinkLimits limits() const override { return inner_.limits(); }

 private:
  Sink& inner_;
  std::shared_ptr<spdlog::logger> log_;
  std::string db_;
  bool& warned_;
};

}  // namespace relay
