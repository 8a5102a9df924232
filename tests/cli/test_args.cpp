#include <catch2/catch.hpp>

#include "cli/args.hpp"
#include "cli/json.hpp"

TEST_CASE("durations and sizes parse with units") {
  using std::chrono::milliseconds;
  CHECK(cli::parse_duration("forever") == milliseconds(0));
  CHECK(cli::parse_duration("0") == milliseconds(0));
  CHECK(cli::parse_duration("30") == milliseconds(30'000));
  CHECK(cli::parse_duration("1500ms") == milliseconds(1500));
  CHECK(cli::parse_duration("15m") == milliseconds(900'000));
  CHECK(cli::parse_duration("7d") == milliseconds(604'800'000));
  CHECK_FALSE(cli::parse_duration("soon"));
  CHECK_FALSE(cli::parse_duration("5 parsecs"));
  CHECK_FALSE(cli::parse_duration("99999999999999999999d"));
  CHECK(cli::parse_size("1k") == 1024u);
  CHECK(cli::parse_size("2MiB") == 2u * 1024 * 1024);
  CHECK(cli::parse_size("100") == 100u);
  CHECK_FALSE(cli::parse_size("-1"));
  CHECK_FALSE(cli::parse_size("1x"));
}

TEST_CASE("JSON output escapes text and base64-encodes binary payloads") {
  CHECK(cli::json_escape("a\"b\\c\n\x01") == "\"a\\\"b\\\\c\\n\\u0001\"");
  CHECK(cli::base64_encode("") == "");
  CHECK(cli::base64_encode("f") == "Zg==");
  CHECK(cli::base64_encode("fo") == "Zm8=");
  CHECK(cli::base64_encode("foo") == "Zm9v");
  CHECK(cli::is_printable_text("héllo\n"));
  CHECK_FALSE(cli::is_printable_text(std::string("\x00", 1)));
  CHECK_FALSE(cli::is_printable_text("\xff\xfe"));
}
