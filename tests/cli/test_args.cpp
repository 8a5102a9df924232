#include <catch2/catch.hpp>

#include "cli/args.hpp"
#include "cli/json.hpp"

namespace {

// What a validator says about `text` (empty: accepted).
std::string check(const CLI::Validator& validator, std::string text) {
  return validator(text);
}

}  // namespace

TEST_CASE("durations need a unit and sizes parse with units") {
  using std::chrono::milliseconds;
  CHECK(cli::parse_duration("forever") == milliseconds(0));
  CHECK(cli::parse_duration("0") == milliseconds(0));
  CHECK(cli::parse_duration("1500ms") == milliseconds(1500));
  CHECK(cli::parse_duration("30s") == milliseconds(30'000));
  CHECK(cli::parse_duration("15m") == milliseconds(900'000));
  CHECK(cli::parse_duration("7d") == milliseconds(604'800'000));
  // "2" could be seconds or hours: a dedup window read the wrong way duplicates messages.
  CHECK_FALSE(cli::parse_duration("2"));
  CHECK_FALSE(cli::parse_duration("30"));
  CHECK_FALSE(cli::parse_duration("-1s"));
  CHECK_FALSE(cli::parse_duration("soon"));
  CHECK_FALSE(cli::parse_duration("5 parsecs"));
  CHECK_FALSE(cli::parse_duration("99999999999999999999d"));
  CHECK(cli::format_duration(milliseconds(86'400'000)) == "1d");
  CHECK(cli::format_duration(milliseconds(1500)) == "1500ms");
  CHECK(cli::format_duration(milliseconds(0), "forever") == "forever");
  CHECK(cli::parse_size("1k") == 1024u);
  CHECK(cli::parse_size("2MiB") == 2u * 1024 * 1024);
  CHECK(cli::parse_size("100") == 100u);
  CHECK_FALSE(cli::parse_size("-1"));
  CHECK_FALSE(cli::parse_size("1x"));
  CHECK(cli::format_size(256u * 1024 * 1024) == "256m");
}

TEST_CASE("validators name the problem and suggest the fix") {
  using namespace std::chrono_literals;
  auto duration = cli::duration_check();
  CHECK(check(duration, "10s").empty());
  CHECK_THAT(check(duration, "2"),
             Catch::Contains("no unit") && Catch::Contains("2s") && Catch::Contains("2h"));
  CHECK_THAT(check(duration, "forever"), Catch::Contains("not a duration here"));
  CHECK_THAT(check(cli::duration_check(cli::at_least(1s)), "1ms"),
             Catch::Contains("shorter than the minimum 1s"));
  CHECK(check(cli::duration_check(cli::at_least(0ms, "forever")), "forever").empty());
  for (const char* zero : {"0", "0s", "0ms"}) {
    INFO(zero);
    CHECK_THAT(check(cli::duration_check(cli::at_least(0ms, "forever")), zero),
               Catch::Contains("would mean forever here: write forever"));
  }
  CHECK_FALSE(check(duration, "0").empty());
  CHECK_THAT(check(cli::non_empty_check("a pattern such as *.db"), ""),
             Catch::Contains("must not be empty: a pattern such as *.db"));
  CHECK(check(cli::non_empty_check("x"), "*.db").empty());

  auto count = cli::count_check();
  CHECK(check(count, "0").empty());
  CHECK(check(count, "42").empty());
  for (const char* bad : {"-1", "1.5", "1e3", "", "12abc", "99999999999999999999"}) {
    INFO(bad);
    CHECK_THAT(check(count, bad), Catch::Contains("not a whole number"));
  }
  CHECK_FALSE(check(cli::count_check(1, 10), "11").empty());

  cli::SizeLimits memory;
  memory.within_physical_memory = true;
  CHECK(check(cli::size_check(memory), "1m").empty());
  CHECK_THAT(check(cli::size_check(memory), "999999g"), Catch::Contains("memory"));
  CHECK_THAT(check(cli::size_check(), "lots"), Catch::Contains("not a size"));

  auto bind = cli::bind_endpoint_check();
  CHECK(check(bind, "tcp://127.0.0.1:*").empty());
  CHECK(check(bind, "tcp://*:7750").empty());
  CHECK(check(bind, "tcp://127.0.0.1:65535").empty());
  CHECK(check(bind, "ipc:///tmp/broker.sock").empty());
  for (const char* bad : {"tcp://127.0.0.1:99999", "tcp://127.0.0.1:0", "tcp://127.0.0.1:-1",
                          "tcp://127.0.0.1:", "tcp://127.0.0.1", "127.0.0.1:7750"}) {
    INFO(bad);
    CHECK_FALSE(check(bind, bad).empty());
  }
  CHECK_THAT(check(bind, "tcp://127.0.0.1:99999"), Catch::Contains("1-65535"));
  auto connect = cli::connect_endpoint_check();
  CHECK(check(connect, "tcp://127.0.0.1:7750").empty());
  CHECK_FALSE(check(connect, "tcp://127.0.0.1:*").empty());
}

TEST_CASE("a choice option stores the value of the word given and refuses any other word") {
  enum class Policy { block, skip };
  Policy policy = Policy::block;
  CLI::App app{"test"};
  cli::add_choice_option(app.add_subcommand("run"), "--on-dead", policy,
                         {{"block", Policy::block}, {"skip", Policy::skip}}, "what to do");
  auto* run = app.get_subcommand("run");
  CHECK_THAT(run->help(), Catch::Contains("{block,skip}=block"));
  app.parse(std::vector<std::string>{"skip", "--on-dead", "run"});
  CHECK(policy == Policy::skip);
  policy = Policy::block;
  CHECK_THROWS_WITH(app.parse(std::vector<std::string>{"maybe", "--on-dead", "run"}),
                    Catch::Contains("--on-dead") && Catch::Contains("maybe"));
  CHECK(policy == Policy::block);
}

TEST_CASE("loopback endpoints are told apart from reachable ones") {
  CHECK(cli::is_loopback_endpoint("tcp://127.0.0.1:7750"));
  CHECK(cli::is_loopback_endpoint("tcp://127.0.0.2:7750"));
  CHECK(cli::is_loopback_endpoint("tcp://[::1]:7750"));
  CHECK(cli::is_loopback_endpoint("tcp://localhost:7750"));
  CHECK(cli::is_loopback_endpoint("ipc:///run/outbox.sock"));
  CHECK_FALSE(cli::is_loopback_endpoint("tcp://0.0.0.0:7750"));
  CHECK_FALSE(cli::is_loopback_endpoint("tcp://*:7750"));
  CHECK_FALSE(cli::is_loopback_endpoint("tcp://10.1.2.3:7750"));
  CHECK_FALSE(cli::is_loopback_endpoint("tcp://[::]:7750"));
}

TEST_CASE("JSON output escapes text and marks bytes that are not text") {
  CHECK(cli::json_escape("a\"b\\c\n\x01") == "\"a\\\"b\\\\c\\n\\u0001\"");
  CHECK(cli::base64_encode("") == "");
  CHECK(cli::base64_encode("f") == "Zg==");
  CHECK(cli::base64_encode("fo") == "Zm8=");
  CHECK(cli::base64_encode("foo") == "Zm9v");
  CHECK(cli::is_printable_text("héllo\n"));
  CHECK_FALSE(cli::is_printable_text(std::string("\x00", 1)));
  CHECK_FALSE(cli::is_printable_text("\xff\xfe"));
  // Strict UTF-8: overlong forms, surrogates and truncated sequences are not text.
  CHECK(cli::is_valid_utf8("h\xc3\xa9llo \xf0\x9f\x98\x80"));
  CHECK_FALSE(cli::is_valid_utf8("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(cli::is_valid_utf8("\xed\xa0\x80"));      // a surrogate
  CHECK_FALSE(cli::is_valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  CHECK_FALSE(cli::is_valid_utf8("\xe2\x82"));          // cut short
  // json_escape never writes bytes that are not UTF-8.
  CHECK(cli::json_escape("a\xff"
                         "b") ==
        "\"a\xef\xbf\xbd"
        "b\"");
  CHECK(cli::json_bytes("k\xc3\xa9") == "\"k\xc3\xa9\"");
  CHECK(cli::json_bytes("\xff\xfe") == "{\"base64\":\"//4=\"}");
  CHECK(cli::json_bytes("tab\there", cli::BytesAs::any_text) == "\"tab\\there\"");
  CHECK(cli::json_bytes(std::string("\x00\x01", 2), cli::BytesAs::printable_text) ==
        "{\"base64\":\"AAE=\"}");
}
