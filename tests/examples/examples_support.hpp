// Shared by the example tests: reading the programs' databases and their
// JSON output, and the relay's delivered count.
#pragma once

#include <sqlite3.h>

#include <filesystem>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "test_support.hpp"

namespace examples_test {

// One number from `sql` on `db`; `attach`, when given, is attached as "shipping".
inline long query_number(const std::filesystem::path& db, const std::string& sql,
                         const std::filesystem::path& attach = {}) {
  sqlite3* handle = nullptr;
  REQUIRE(sqlite3_open_v2(db.c_str(), &handle, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
  sqlite3_busy_timeout(handle, 10000);
  if (!attach.empty()) {
    const std::string attach_sql = "ATTACH '" + attach.string() + "' AS shipping";
    REQUIRE(sqlite3_exec(handle, attach_sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  sqlite3_stmt* statement = nullptr;
  long value = -1;
  if (sqlite3_prepare_v2(handle, sql.c_str(), -1, &statement, nullptr) == SQLITE_OK &&
      sqlite3_step(statement) == SQLITE_ROW) {
    value = static_cast<long>(sqlite3_column_int64(statement, 0));
  }
  const std::string error = sqlite3_errmsg(handle);
  sqlite3_finalize(statement);
  sqlite3_close(handle);
  INFO(sql << ": " << error);
  REQUIRE(value >= 0);
  return value;
}

inline void exec_sql(const std::filesystem::path& db, const std::string& sql) {
  sqlite3* handle = nullptr;
  REQUIRE(sqlite3_open_v2(db.c_str(), &handle, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
  sqlite3_busy_timeout(handle, 10000);
  char* error = nullptr;
  const int rc = sqlite3_exec(handle, sql.c_str(), nullptr, nullptr, &error);
  const std::string text = error != nullptr ? error : "";
  sqlite3_free(error);
  sqlite3_close(handle);
  INFO(text);
  REQUIRE(rc == SQLITE_OK);
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
