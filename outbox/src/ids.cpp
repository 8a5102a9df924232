#include "ids.hpp"

#include <charconv>
#include <exception>

#include "idgen/snowflake.hpp"
#include "idgen/uuid.hpp"
#include "worker_lease.hpp"

namespace outbox::detail {

struct IdSource::Generators {
  std::unique_ptr<idgen::Generator> snowflake;
  std::unique_ptr<idgen::UuidV7Generator> uuid;
};

IdSource::IdSource(IdKind kind, std::uint32_t worker_id, std::int64_t issued_below_unix_ms)
    : kind_(kind), worker_id_(worker_id), generators_(std::make_unique<Generators>()) {
  try {
    if (kind_ == IdKind::snowflake) {
      idgen::GeneratorOptions options;
      if (issued_below_unix_ms > 0) {
        options.issued_below_unix_ms = issued_below_unix_ms;
        // A mark up to one reservation step ahead is a normal takeover, to be
        // waited out; further ahead, the clock was set back.
        options.state_write_ahead = 2 * WorkerLease::reservation_step;
      }
      generators_->snowflake =
          std::make_unique<idgen::Generator>(idgen::Layout::standard(), worker_id, options);
    } else {
      generators_->uuid = std::make_unique<idgen::UuidV7Generator>();
    }
  } catch (const std::exception& error) {
    throw Error(std::string("outbox: cannot create the msg_id generator: ") + error.what());
  }
}

IdSource::~IdSource() noexcept = default;

std::uint32_t IdSource::max_worker_id() {
  return idgen::Layout::standard().max_worker_id();
}

std::string IdSource::next(std::int64_t& timestamp_ms) {
  try {
    if (kind_ == IdKind::snowflake) {
      char buffer[24];
      auto id = generators_->snowflake->next();
      timestamp_ms = idgen::decode(generators_->snowflake->layout(), id).timestamp_unix_ms;
      auto result = std::to_chars(buffer, buffer + sizeof buffer, id);
      return std::string(buffer, result.ptr);
    }
    timestamp_ms = 0;
    return idgen::to_string(generators_->uuid->next());
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    throw Error(std::string("outbox: generating a msg_id: ") + error.what());
  }
}

}  // namespace outbox::detail
