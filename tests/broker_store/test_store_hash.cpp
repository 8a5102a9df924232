#include <catch2/catch.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <sqlite3.h>

#include "broker/store.hpp"
#include "store_test_helpers.hpp"
#include "test_support.hpp"

using store_test::Message;

namespace {

struct StoredHashes {
  std::int64_t payload = 0;
  std::int64_t envelope = 0;
};

// The dedup index's hash columns, by msg_id, read straight from the file.
std::map<std::string, StoredHashes> dedup_hashes(const std::filesystem::path& file) {
  sqlite3* raw = nullptr;
  REQUIRE(sqlite3_open_v2(file.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* statement = nullptr;
  REQUIRE(sqlite3_prepare_v2(raw, "SELECT msg_id, payload_hash, envelope_hash FROM dedup", -1,
                             &statement, nullptr) == SQLITE_OK);
  std::map<std::string, StoredHashes> hashes;
  while (sqlite3_step(statement) == SQLITE_ROW) {
    hashes[reinterpret_cast<const char*>(sqlite3_column_text(statement, 0))] = {
        sqlite3_column_int64(statement, 1), sqlite3_column_int64(statement, 2)};
  }
  sqlite3_finalize(statement);
  sqlite3_close(raw);
  return hashes;
}

}  // namespace

// Stores written by earlier versions hold these numbers in dedup.payload_hash and
// dedup.envelope_hash (XXH64, seed 0 for the payload; the envelope chains the key's
// hash, seeded with "obxkey", into the headers'). A resend to an existing store is
// a DUPLICATE only while the same bytes hash to the same numbers, so they must
// never change. The inputs cover every branch of XXH64: empty, 1-3 bytes, 4-7,
// 8-31, exactly 32, and 32-byte stripes with a tail.
TEST_CASE("the dedup index keeps the hash values existing stores hold") {
  test_support::TempDir dir("broker-store");
  const std::string key = "customer-42";
  const std::string headers = "traceparent=00-abc";  // opaque bytes to the store
  const std::vector<Message> messages = {
      {"empty", "orders", "", key, headers},
      {"one", "orders", "a", key, headers},
      {"three", "orders", "abc", key, headers},
      {"four", "orders", "abcd", key, headers},
      {"twelve", "orders", "hello, world", key, headers},
      {"thirty-one", "orders", "0123456789abcdef0123456789abcde", key, headers},
      {"thirty-two", "orders", "0123456789abcdef0123456789abcdef", key, headers},
      {"long", "orders", std::string(100, 'x') + "tail-57", key, headers},
      {"bare", "orders", "a"},
  };
  {
    broker::Store store(dir / "broker.db");
    store_test::append(store, messages);
  }
  const std::int64_t envelope = 5059306216459213489;
  const std::map<std::string, StoredHashes> pinned = {
      {"empty", {-1205034819632174695, envelope}},  // 0xef46db3751d8e999
      {"one", {-3292477735350538661, envelope}},
      {"three", {4952883123889572249, envelope}},
      {"four", {-2449070131962342708, envelope}},
      {"twelve", {-5532047282782137790, envelope}},
      {"thirty-one", {2296772312821464551, envelope}},
      {"thirty-two", {7217744722875508421, envelope}},
      {"long", {7494231115750691066, envelope}},
      {"bare", {-3292477735350538661, -6059342637070309829}},
  };
  const auto stored = dedup_hashes(dir / "broker.db");
  REQUIRE(stored.size() == pinned.size());
  for (const auto& [msg_id, hashes] : pinned) {
    INFO("msg_id " << msg_id);
    REQUIRE(stored.count(msg_id) == 1);
    CHECK(stored.at(msg_id).payload == hashes.payload);
    CHECK(stored.at(msg_id).envelope == hashes.envelope);
  }
}
