// Shared by the tests of outbox-relay run --db-dir: tenant databases written
// from the test process, a directory of them next to a broker.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "relay_harness.hpp"

namespace relay_test {

// A tenant database written from this process. UUID v7 ids: the default for
// databases forwarded together (docs/architecture.md, "Ids across tenants").
inline outbox::Options uuid_v7_ids() {
  outbox::Options options;
  options.id_kind = outbox::IdKind::uuid_v7;
  return options;
}

struct Tenant {
  Tenant(const std::filesystem::path& path, const std::string& name)
      : box(outbox::Outbox::open(path / (name + ".db"), uuid_v7_ids())),
        writer(box, 3, 200, name + "-") {}
  outbox::Outbox box;
  OrderWriter writer;
};

inline std::vector<std::unique_ptr<Tenant>> make_tenants(const std::filesystem::path& path,
                                                         int count,
                                                         const std::string& prefix = "t") {
  std::vector<std::unique_ptr<Tenant>> tenants;
  for (int i = 0; i < count; ++i) {
    tenants.push_back(std::make_unique<Tenant>(path, prefix + std::to_string(i)));
  }
  return tenants;
}

inline long committed(const std::vector<std::unique_ptr<Tenant>>& tenants) {
  long total = 0;
  for (const auto& tenant : tenants) total += tenant->writer.committed();
  return total;
}

inline bool wait_stored(const std::string& endpoint, long expected,
                        std::chrono::milliseconds timeout = 120s) {
  return test_support::wait_until(
      [&] { return static_cast<long>(broker_counter(endpoint, "stored")) >= expected; }, timeout,
      50ms);
}

// A directory for tenant databases and a broker, in a temporary directory.
struct TenantDirectory {
  explicit TenantDirectory(const std::string& prefix)
      : dir(prefix), path(created(dir / "tenants")), broker(dir.path(), dir / "broker.db") {}
  static std::filesystem::path created(const std::filesystem::path& path) {
    std::filesystem::create_directories(path);
    return path;
  }
  test_support::TempDir dir;
  std::filesystem::path path;
  BrokerProcess broker;
};

}  // namespace relay_test
