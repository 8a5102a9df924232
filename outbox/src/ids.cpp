#include "ids.hpp"

#include <charconv>
#include <exception>

#include "idgen/snowflake.hpp"
#include "idgen/uuid.hpp"

namespace outbox::detail {

struct IdSource::Generators {
  std::unique_ptr<idgen::Generator> snowflake;
  std::unique_ptr<idgen::UuidV7Generator> uuid;
};

IdSource::IdSource(IdKind kind, std::uint32_t worker_id)
    : kind_(kind), worker_id_(worker_id), generators_(std::make_unique<Generators>()) {
  try {
    if (kind_ == IdKind::snowflake) {
      generators_->snowflake =
          std::make_unique<idgen::Generator>(idgen::Layout::standard(), worker_id);
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

std::string IdSource::next() {
  try {
    if (kind_ == IdKind::snowflake) {
      char buffer[24];
      auto id = generators_->snowflake->next();
      auto result = std::to_chars(buffer, buffer + sizeof buffer, id);
      return std::string(buffer, result.ptr);
    }
    return idgen::to_string(generators_->uuid->next());
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    throw Error(std::string("outbox: generating a msg_id: ") + error.what());
  }
}

}  // namespace outbox::detail
