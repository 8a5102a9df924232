// Config files: the strict reader and the CLI11 formatter built on it.
#include <catch2/catch.hpp>

#include <chrono>
#include <fstream>
#include <sstream>

#include "cli/args.hpp"
#include "cli/config.hpp"
#include "test_support.hpp"

namespace {

std::vector<cli::ConfigEntry> read(const std::string& text) {
  std::istringstream input(text);
  return cli::read_config(input, "test.toml");
}

// The one-line message read_config gives for `text`.
std::string error_of(const std::string& text) {
  try {
    read(text);
  } catch (const CLI::ConfigError& error) {
    return error.what();
  }
  FAIL("accepted: " << text);
  return {};
}

}  // namespace

TEST_CASE("the config reader takes the TOML the documentation shows") {
  auto entries = read(
      "\xef\xbb\xbf# broker settings\n"
      "\n"
      "[serve]\n"
      "db = \"/var/lib/outbox/broker.db\"   # a comment\n"
      "path = 'C:\\literal'\n"
      "escaped = \"tab\\there \\u00e9 \\\"q\\\"\"\n"
      "batch-size = 1_000\n"
      "ratio = -1.5e3\n"
      "on = true\n"
      "list = [\"a\", 'b', 3,]\n"
      "\r\n");
  REQUIRE(entries.size() == 8);
  CHECK(entries[0].section == "serve");
  CHECK(entries[0].key.empty());  // the [serve] line
  CHECK(entries[0].line == 3);
  entries.erase(entries.begin());
  CHECK(entries[0].section == "serve");
  CHECK(entries[0].key == "db");
  CHECK(entries[0].values == std::vector<std::string>{"/var/lib/outbox/broker.db"});
  CHECK(entries[0].line == 4);
  CHECK(entries[1].values.front() == "C:\\literal");
  CHECK(entries[2].values.front() == "tab\there \xc3\xa9 \"q\"");
  CHECK(entries[3].values.front() == "1000");
  CHECK(entries[4].values.front() == "-1.5e3");
  CHECK(entries[5].is_boolean);
  CHECK(entries[6].is_array);
  CHECK(entries[6].values == std::vector<std::string>{"a", "b", "3"});
}

TEST_CASE("config syntax errors name the file, the line and the key") {
  // An unterminated quote used to become part of the value (a file named "b.db).
  CHECK(error_of("[serve]\ndb = \"b.db\n") ==
        "test.toml:2: key 'db': the string is not closed (a \" is missing)");
  CHECK(error_of("[serve]\ndb = 'b.db\n") ==
        "test.toml:2: key 'db': the string is not closed (a ' is missing)");
  CHECK(error_of("[serve]\ndb = \"a\"\n\ndb = \"b\"\n") ==
        "test.toml:4: duplicate key 'db' in [serve] (first set on line 2)");
  CHECK_THAT(error_of("[serve]\nbatch-size = many\n"),
             Catch::StartsWith("test.toml:2: key 'batch-size': 'many' is not a TOML value"));
  CHECK_THAT(error_of("[serve]\ndb = \"a\" trailing\n"),
             Catch::StartsWith("test.toml:2: key 'db': unexpected text"));
  CHECK_THAT(error_of("[serve]\ndb\n"),
             Catch::StartsWith("test.toml:2: key 'db' is not followed by ="));
  CHECK_THAT(error_of("[serve]\ndb =\n"), Catch::StartsWith("test.toml:2: key 'db' has no value"));
  CHECK_THAT(error_of("[serve\n"), Catch::StartsWith("test.toml:1: a section header"));
  CHECK_THAT(error_of("[serve]\n[serve]\n"),
             Catch::StartsWith("test.toml:2: section [serve] appears twice"));
  CHECK_THAT(error_of("[serve]\npath = \"C:\\data\"\n"),
             Catch::StartsWith("test.toml:2: key 'path': unknown escape \\d"));
  CHECK_THAT(error_of("[serve]\nlist = [1, 2\n"), Catch::StartsWith("test.toml:2: key 'list'"));
  CHECK_THAT(error_of("= 1\n"), Catch::StartsWith("test.toml:1: expected 'key = value'"));
}

TEST_CASE("a CLI11 app with the strict config checks keys and values by line") {
  test_support::TempDir dir("cli-config");
  auto parse = [&](const std::string& text) -> std::string {
    std::ofstream(dir / "app.toml") << text;
    CLI::App app("test");
    app.name("test");
    app.set_config("--config");
    cli::use_strict_config(app);
    auto* serve = app.add_subcommand("serve");
    std::string db;
    std::chrono::milliseconds window{0};
    bool flag = false;
    serve->add_option("--db", db);
    cli::add_duration_option(serve, "--dedup-window", window, "window",
                             cli::at_least(std::chrono::milliseconds(0), "forever"));
    serve->add_flag("--flag", flag);
    try {
      app.parse(std::vector<std::string>{"serve", (dir / "app.toml").string(), "--config"});
    } catch (const CLI::ParseError& error) {
      return error.what();
    }
    return "ok " + db + " " + std::to_string(window.count()) + (flag ? " flag" : "");
  };
  auto file = (dir / "app.toml").string();
  CHECK(parse("[serve]\ndb = \"b.db\"\ndedup-window = \"2h\"\nflag = true\n") ==
        "ok b.db 7200000 flag");
  CHECK(parse("[serve]\nbogus = 1\n") ==
        file +
            ":2: unknown key 'bogus' in [serve] (keys are the long flags of 'test serve' "
            "without the dashes, see --help)");
  CHECK_THAT(parse("[serve]\ndedup-window = \"2\"\n"),
             Catch::StartsWith(file + ":2: key 'dedup-window': '2' has no unit"));
  CHECK_THAT(parse("[serve]\ndedup-window = 2\n"),
             Catch::StartsWith(file + ":2: key 'dedup-window': '2' has no unit"));
  CHECK_THAT(parse("[serve]\nflag = \"yes\"\n"),
             Catch::StartsWith(file + ":2: key 'flag': 'yes' is not true or false"));
  CHECK_THAT(parse("db = \"b.db\"\n"),
             Catch::StartsWith(file + ":1: key 'db' is outside a section; put it under [serve]"));
  CHECK_THAT(parse("[srve]\n"), Catch::StartsWith(file + ":1: unknown section [srve]"));
}
