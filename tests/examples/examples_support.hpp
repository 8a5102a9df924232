// Shared by the example tests: reading the programs' databases and their
// JSON output, and the relay's delivered count.
#pragma once

#include <sqlite3.h>

#include <filesystem>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "sqlite/sqlite.hpp"
#include "test_support.hpp"

namespace examples_test {

// One number from `sql` on `db`; `attach`, when given, is attached as "shipping".
inline long query_number(const std::filesystem::path& db, const std::string& sql,
                         const std::filesystem::path& attach = {}) {
  auto handle = sqlite::open_file(db.string(), SQLITE_OPEN_READWRITE);
  sqlite3_busy_timeout(handle.get(), 10000);
  if (!attach.empty()) {
    sqlite::exec(handle.get(), ("ATTACH '" + attach.string() + "' AS shipping").c_str());
  }
  sqlite::Statement statement(handle.get(), sql);
  auto use = statement.use();
  long value = use.step() ? static_cast<long>(use.column_int64(0)) : -1;
  INFO(sql);
  REQUIRE(value >= 0);
  return value;
}

inline void exec_sql(const std::filesystem::path& db, const std::string& sql) {
  auto handle = sqlite::open_file(db.string(), SQLITE_OPEN_READWRITE);
  sqlite3_busy_timeout(handle.get(), 10000);
  sqlite::exec(handle.get(), sql.c_str());
}

// The number `name` of the first line of `output` that is a JSON object with
// it, -1 if there is none.
inline long json_number(const std::string& output, const std::string& name) {
  for (const auto& line : test_support::lines(output)) {
    const auto object = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (object.is_object() && object.contains(name) && object.at(name).is_number_integer()) {
      return object.at(name).get<long>();
    }
  }
  return -1;
}

inline long delivered_total(const std::filesystem::path& db) {
  auto result =
      test_support::run(OUTBOX_BIN_OUTBOX_RELAY, {"status", "--db", db.string(), "--json"});
  INFO(result.err);
  REQUIRE(result.status.exited);
  REQUIRE(result.status.code == 0);
  return json_number(result.out, "delivered_total");
}

}  // namespace examples_test
