#include <algorithm>
#include <random>

#include <catch2/catch.hpp>

#include "idgen/encoding.hpp"
#include "idgen/error.hpp"

using idgen::Encoding;

namespace {

const std::vector<Encoding> all_encodings = {Encoding::decimal, Encoding::hex, Encoding::base62,
                                             Encoding::base32};

}  // namespace

TEST_CASE("every encoding round-trips", "[idgen][encoding]") {
  std::mt19937_64 random(7);
  std::vector<std::uint64_t> values = {0,
                                       1,
                                       9,
                                       10,
                                       31,
                                       32,
                                       61,
                                       62,
                                       63,
                                       64,
                                       (std::uint64_t{1} << 63) - 1,
                                       std::uint64_t{1} << 63,
                                       ~std::uint64_t{0}};
  for (int i = 0; i < 20'000; ++i) values.push_back(random() >> (random() % 64));
  for (const Encoding encoding : all_encodings) {
    INFO(idgen::encoding_name(encoding));
    for (const std::uint64_t value : values) {
      REQUIRE(idgen::decode(idgen::encode(value, encoding), encoding) == value);
    }
  }
}

TEST_CASE("encodings have the documented forms", "[idgen][encoding]") {
  CHECK(idgen::encode(255, Encoding::decimal) == "255");
  CHECK(idgen::encode(255, Encoding::hex) == "00000000000000ff");
  CHECK(idgen::encode(61, Encoding::base62) == "0000000000z");
  CHECK(idgen::encode(62, Encoding::base62) == "00000000010");
  CHECK(idgen::encode(31, Encoding::base32) == "000000000000Z");
  CHECK(idgen::encode(~std::uint64_t{0}, Encoding::hex) == "ffffffffffffffff");
  CHECK(idgen::encode(~std::uint64_t{0}, Encoding::base62) == "LygHa16AHYF");
  CHECK(idgen::encode(~std::uint64_t{0}, Encoding::base32) == "FZZZZZZZZZZZZ");
  CHECK(idgen::encode(~std::uint64_t{0}, Encoding::decimal) == "18446744073709551615");
}

TEST_CASE("fixed-width encodings sort like the numbers", "[idgen][encoding]") {
  std::mt19937_64 random(11);
  std::vector<std::uint64_t> values;
  for (int i = 0; i < 5'000; ++i) values.push_back(random() >> (random() % 64));
  std::sort(values.begin(), values.end());
  for (const Encoding encoding : {Encoding::hex, Encoding::base62, Encoding::base32}) {
    std::vector<std::string> texts;
    for (const auto value : values) texts.push_back(idgen::encode(value, encoding));
    CHECK(std::is_sorted(texts.begin(), texts.end()));
  }
}

TEST_CASE("decoding is lenient where the encodings say so", "[idgen][encoding]") {
  CHECK(idgen::decode("FF", Encoding::hex) == 255);
  CHECK(idgen::decode("0xff", Encoding::hex) == 255);
  CHECK(idgen::decode("0001", Encoding::decimal) == 1);
  CHECK(idgen::decode("z", Encoding::base32) == 31);
  CHECK(idgen::decode("1O-iL", Encoding::base32) == idgen::decode("10-11", Encoding::base32));
  CHECK(idgen::decode("10-11", Encoding::base32) == idgen::decode("1011", Encoding::base32));
}

TEST_CASE("bad text names the character, its position, or the overflow", "[idgen][encoding]") {
  CHECK_THROWS_WITH(
      idgen::decode("abc", Encoding::decimal),
      Catch::Contains("invalid decimal id 'abc'") && Catch::Contains("'a' at position 1"));
  CHECK_THROWS_WITH(idgen::decode("12g4", Encoding::hex), Catch::Contains("'g' at position 3"));
  CHECK_THROWS_WITH(idgen::decode("12-4", Encoding::base62), Catch::Contains("'-' at position 3"));
  CHECK_THROWS_WITH(idgen::decode("0U", Encoding::base32), Catch::Contains("'U' at position 2"));
  CHECK_THROWS_WITH(idgen::decode("", Encoding::decimal), Catch::Contains("no digits"));
  CHECK_THROWS_WITH(idgen::decode("-1", Encoding::decimal), Catch::Contains("'-' at position 1"));
  CHECK_THROWS_WITH(idgen::decode("18446744073709551616", Encoding::decimal),
                    Catch::Contains("does not fit in 64 bits"));
  CHECK_THROWS_WITH(idgen::decode("LygHa16AHYG", Encoding::base62), Catch::Contains("64 bits"));
  CHECK_THROWS_WITH(idgen::decode(std::string("1\x01", 2), Encoding::decimal),
                    Catch::Contains("byte 0x01"));
  CHECK_THROWS_AS(idgen::decode("x", Encoding::hex), idgen::Error);
}

TEST_CASE("encoding names parse", "[idgen][encoding]") {
  CHECK(idgen::parse_encoding("dec") == Encoding::decimal);
  CHECK(idgen::parse_encoding("decimal") == Encoding::decimal);
  CHECK(idgen::parse_encoding("hex") == Encoding::hex);
  CHECK(idgen::parse_encoding("base62") == Encoding::base62);
  CHECK(idgen::parse_encoding("base32") == Encoding::base32);
  CHECK(idgen::parse_encoding("crockford") == Encoding::base32);
  CHECK_FALSE(idgen::parse_encoding("octal"));
}
