#include <catch2/catch.hpp>

#include "idgen/clock.hpp"
#include "idgen/error.hpp"

TEST_CASE("UTC times format and parse", "[idgen][time]") {
  CHECK(idgen::format_utc(0) == "1970-01-01T00:00:00.000Z");
  CHECK(idgen::format_utc(1767225600000) == "2026-01-01T00:00:00.000Z");
  CHECK(idgen::format_utc(1288834974657) == "2010-11-04T01:42:54.657Z");
  CHECK(idgen::format_utc(-1) == "1969-12-31T23:59:59.999Z");
  CHECK(idgen::format_utc(951782400000) == "2000-02-29T00:00:00.000Z");
  CHECK(idgen::parse_utc("2026-01-01T00:00:00Z") == 1767225600000);
  CHECK(idgen::parse_utc("2026-01-01T00:00:00.5Z") == 1767225600500);
  CHECK(idgen::parse_utc("2026-01-01 01:00:00.123+01:00") == 1767225600123);
  CHECK(idgen::parse_utc("2025-12-31T19:00:00-0500") == 1767225600000);
  CHECK(idgen::parse_utc("2026-01-01") == 1767225600000);
  for (const std::int64_t ms : {std::int64_t{0}, std::int64_t{1767225600123},
                                std::int64_t{4102444799999}, std::int64_t{951868799999}}) {
    CHECK(idgen::parse_utc(idgen::format_utc(ms)) == ms);
  }
}

TEST_CASE("bad times are refused with the reason", "[idgen][time]") {
  CHECK_THROWS_WITH(idgen::parse_utc("yesterday"), Catch::Contains("bad year"));
  CHECK_THROWS_WITH(idgen::parse_utc("2026-13-01T00:00:00Z"),
                    Catch::Contains("month out of range"));
  CHECK_THROWS_WITH(idgen::parse_utc("2025-02-29T00:00:00Z"), Catch::Contains("day out of range"));
  CHECK_THROWS_WITH(idgen::parse_utc("2026-01-01T24:00:00Z"), Catch::Contains("time of day"));
  CHECK_THROWS_WITH(idgen::parse_utc("2026-01-01T00:00:00"), Catch::Contains("time zone"));
  CHECK_THROWS_WITH(idgen::parse_utc("2026-01-01T00:00:00.1234Z"), Catch::Contains("millisecond"));
  CHECK_THROWS_WITH(idgen::parse_utc("2026-01-01T00:00:00Zjunk"),
                    Catch::Contains("after the time zone"));
  CHECK_THROWS_AS(idgen::parse_utc("2026-01-01T00:00Z"), idgen::Error);
}
