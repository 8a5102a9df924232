// The text log's message escaping: what a peer or a database put in a topic
// or a reason cannot end a log line or forge the next one.
#include <catch2/catch.hpp>

#include "cli/process.hpp"

TEST_CASE("the text log shows control bytes and bytes that are not UTF-8 as hex escapes") {
  CHECK(cli::log_text_escape("topic orders.eu, key k\tv") == "topic orders.eu, key k\tv");
  CHECK(cli::log_text_escape("t\n2026-11-27T00:00:00.000 critical FORGED") ==
        "t\\x0a2026-11-27T00:00:00.000 critical FORGED");
  CHECK(cli::log_text_escape("a\rb\x1b[31mc") == "a\\x0db\\x1b[31mc");
  CHECK(cli::log_text_escape(std::string("nul\0end", 7)) == "nul\\x00end");
  CHECK(cli::log_text_escape("del\x7f") == "del\\x7f");
  // UTF-8 stays readable; a byte that starts or continues no sequence does not.
  CHECK(cli::log_text_escape("Zürich – 東京 🙂") == "Zürich – 東京 🙂");
  CHECK(cli::log_text_escape("t\xff\"}") == "t\\xff\"}");
  CHECK(cli::log_text_escape("cut \xe6\x9d") == "cut \\xe6\\x9d");
  CHECK(cli::log_text_escape("\xc0\xaf") == "\\xc0\\xaf");
  CHECK(cli::log_text_escape("\xed\xa0\x80") == "\\xed\\xa0\\x80");  // a surrogate
  CHECK(cli::log_text_escape("") == "");
}
