#include <algorithm>
#include <set>
#include <thread>

#include <catch2/catch.hpp>

#include "idgen/uuid.hpp"

namespace {

std::uint64_t unix_ms_field(const boost::uuids::uuid& uuid) {
  std::uint64_t value = 0;
  for (int i = 0; i < 6; ++i) value = value << 8 | uuid.data[i];
  return value;
}

bool byte_less(const boost::uuids::uuid& a, const boost::uuids::uuid& b) {
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
}

}  // namespace

TEST_CASE("UUID v7 follows RFC 9562's bit layout", "[idgen][uuid]") {
  const std::int64_t now = 1767225600123;  // 2026-01-01T00:00:00.123Z
  idgen::UuidV7Generator generator(std::make_shared<idgen::ManualClock>(now));
  const auto uuid = generator.next();
  CHECK(unix_ms_field(uuid) == static_cast<std::uint64_t>(now));
  CHECK(uuid.data[6] >> 4 == 7);         // version
  CHECK((uuid.data[8] & 0xc0) == 0x80);  // variant 10
  CHECK(uuid.variant() == boost::uuids::uuid::variant_rfc_4122);
  CHECK(idgen::uuid_v7_unix_ms(uuid) == now);
  // The counter in rand_a starts below 2048, leaving room to count.
  CHECK(((uuid.data[6] & 0x0f) << 8 | uuid.data[7]) < 2048);
  CHECK(idgen::to_string(uuid).substr(0, 15) == "019b76da-a87b-7");
}

TEST_CASE("UUID v7 from one generator is strictly increasing", "[idgen][uuid]") {
  auto clock = std::make_shared<idgen::ManualClock>(1767225600000);
  idgen::UuidV7Generator generator(clock);
  std::vector<boost::uuids::uuid> uuids;
  SECTION("many in one millisecond, carrying into the timestamp when the counter fills") {
    for (int i = 0; i < 10'000; ++i) uuids.push_back(generator.next());
    CHECK(unix_ms_field(uuids.back()) > unix_ms_field(uuids.front()));
  }
  SECTION("across a clock step backwards") {
    for (int i = 0; i < 100; ++i) uuids.push_back(generator.next());
    clock->advance(-5000);
    for (int i = 0; i < 100; ++i) uuids.push_back(generator.next());
    clock->advance(10'000);
    for (int i = 0; i < 100; ++i) uuids.push_back(generator.next());
    CHECK(unix_ms_field(uuids.back()) == 1767225605000);
  }
  SECTION("from several threads, each seeing increasing UUIDs, none repeated") {
    clock->advance(1);
    std::vector<std::vector<boost::uuids::uuid>> per_thread(4);
    std::vector<std::thread> threads;
    for (auto& mine : per_thread) {
      threads.emplace_back([&generator, &mine] {
        for (int i = 0; i < 5'000; ++i) mine.push_back(generator.next());
      });
    }
    for (auto& thread : threads) thread.join();
    std::set<boost::uuids::uuid> distinct;
    for (const auto& mine : per_thread) {
      CHECK(std::is_sorted(mine.begin(), mine.end(), byte_less));
      distinct.insert(mine.begin(), mine.end());
    }
    CHECK(distinct.size() == 20'000);
    return;
  }
  for (std::size_t i = 1; i < uuids.size(); ++i) {
    REQUIRE(byte_less(uuids[i - 1], uuids[i]));
    REQUIRE(uuids[i].data[6] >> 4 == 7);
    REQUIRE((uuids[i].data[8] & 0xc0) == 0x80);
  }
}

TEST_CASE("UUID v7 from the system clock carries the current time", "[idgen][uuid]") {
  idgen::UuidV7Generator generator;
  const auto wall = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
  CHECK(std::abs(idgen::uuid_v7_unix_ms(generator.next()) - wall) < 2'000);
}

TEST_CASE("UUID v4 is random with version 4 and variant 10", "[idgen][uuid]") {
  std::set<boost::uuids::uuid> seen;
  for (int i = 0; i < 1000; ++i) {
    const auto uuid = idgen::uuid_v4();
    CHECK(uuid.version() == boost::uuids::uuid::version_random_number_based);
    CHECK((uuid.data[8] & 0xc0) == 0x80);
    seen.insert(uuid);
  }
  CHECK(seen.size() == 1000);
  CHECK_THROWS_WITH(idgen::uuid_v7_unix_ms(idgen::uuid_v4()), Catch::Contains("not 7"));
}

TEST_CASE("UUID text round-trips and bad text is named", "[idgen][uuid]") {
  const auto uuid = idgen::uuid_v4();
  const std::string text = idgen::to_string(uuid);
  CHECK(text.size() == 36);
  CHECK(idgen::parse_uuid(text) == uuid);
  std::string upper = text;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  CHECK(idgen::parse_uuid(upper) == uuid);
  CHECK_THROWS_WITH(idgen::parse_uuid("0190f5c2-8a4b-7c3d-9e2f-0123456789a"),
                    Catch::Contains("length 35"));
  CHECK_THROWS_WITH(idgen::parse_uuid("0190f5c2-8a4b-7c3d-9e2f-0123456789ag"),
                    Catch::Contains("'g' at position 36"));
  CHECK_THROWS_WITH(idgen::parse_uuid("0190f5c2x8a4b-7c3d-9e2f-0123456789ab"),
                    Catch::Contains("'-' at position 9"));
}
