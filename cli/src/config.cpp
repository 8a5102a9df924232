#include "cli/config.hpp"

#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <utility>

namespace cli {
namespace {

bool is_bare_key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

void append_utf8(std::string& out, std::uint32_t code_point) {
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out.push_back(static_cast<char>(0xc0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  } else if (code_point < 0x10000) {
    out.push_back(static_cast<char>(0xe0 | (code_point >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3f)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  } else {
    out.push_back(static_cast<char>(0xf0 | (code_point >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3f)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3f)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  }
}

// Reads one line; every problem is thrown as "FILE:LINE: ...".
class LineReader {
 public:
  LineReader(std::string_view text, std::string where) : text_(text), where_(std::move(where)) {}

  [[noreturn]] void fail(const std::string& message) const {
    throw CLI::ConfigError(where_ + ": " + message);
  }

  void skip_spaces() {
    while (at_ < text_.size() && (text_[at_] == ' ' || text_[at_] == '\t')) ++at_;
  }
  bool done() const { return at_ >= text_.size(); }
  char peek() const { return done() ? '\0' : text_[at_]; }
  bool at_comment_or_end() {
    skip_spaces();
    return done() || peek() == '#';
  }

  std::string bare_word() {
    auto start = at_;
    while (!done() && is_bare_key_char(peek())) ++at_;
    return std::string(text_.substr(start, at_ - start));
  }

  // The value after "key =": strings lose their quotes, escapes are resolved.
  void value(const std::string& key, ConfigEntry& entry) {
    skip_spaces();
    if (done() || peek() == '#') fail("key '" + key + "' has no value");
    if (peek() == '[') {
      ++at_;
      entry.is_array = true;
      while (true) {
        skip_spaces();
        if (peek() == ']') {
          ++at_;
          return;
        }
        if (done()) fail("key '" + key + "': the array is not closed with ] on this line");
        entry.values.push_back(scalar(key, entry));
        skip_spaces();
        if (peek() == ',') {
          ++at_;
        } else if (peek() != ']') {
          fail("key '" + key + "': expected , or ] in the array");
        }
      }
    }
    entry.values.push_back(scalar(key, entry));
  }

 private:
  std::string scalar(const std::string& key, ConfigEntry& entry) {
    if (peek() == '"') {
      if (text_.substr(at_, 3) == "\"\"\"")
        fail("key '" + key + "': multi-line strings are not supported");
      return basic_string(key);
    }
    if (peek() == '\'') {
      auto close = text_.find('\'', at_ + 1);
      if (close == std::string_view::npos) {
        fail("key '" + key + "': the string is not closed (a ' is missing)");
      }
      auto out = std::string(text_.substr(at_ + 1, close - at_ - 1));
      at_ = close + 1;
      return out;
    }
    auto start = at_;
    while (!done() && peek() != ',' && peek() != ']' && peek() != '#' && peek() != ' ' &&
           peek() != '\t') {
      ++at_;
    }
    auto word = std::string(text_.substr(start, at_ - start));
    if (word == "true" || word == "false") {
      entry.is_boolean = true;
      return word;
    }
    if (is_number(word)) {
      std::string digits;
      for (char c : word) {
        if (c != '_') digits.push_back(c);
      }
      return digits;
    }
    fail("key '" + key + "': '" + word +
         "' is not a TOML value (text goes in double quotes: \"...\")");
  }

  static bool is_number(const std::string& word) {
    std::size_t i = 0;
    if (i < word.size() && (word[i] == '+' || word[i] == '-')) ++i;
    auto digits = [&] {
      auto start = i;
      while (i < word.size() &&
             ((word[i] >= '0' && word[i] <= '9') || (word[i] == '_' && i > start)))
        ++i;
      return i > start && word[i - 1] != '_';
    };
    if (!digits()) return false;
    if (i < word.size() && word[i] == '.') {
      ++i;
      if (!digits()) return false;
    }
    if (i < word.size() && (word[i] == 'e' || word[i] == 'E')) {
      ++i;
      if (i < word.size() && (word[i] == '+' || word[i] == '-')) ++i;
      if (!digits()) return false;
    }
    return i == word.size();
  }

  std::string basic_string(const std::string& key) {
    std::string out;
    ++at_;  // the opening quote
    while (true) {
      if (done()) fail("key '" + key + "': the string is not closed (a \" is missing)");
      char c = text_[at_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20 && c != '\t') {
        fail("key '" + key + "': a control character in a string must be escaped");
      }
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (done()) fail("key '" + key + "': the string is not closed (a \" is missing)");
      char escape = text_[at_++];
      switch (escape) {
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u':
        case 'U': {
          std::size_t length = escape == 'u' ? 4 : 8;
          if (at_ + length > text_.size())
            fail("key '" + key + "': \\" + escape + " needs " + std::to_string(length) +
                 " hex digits");
          std::uint32_t code_point = 0;
          for (std::size_t k = 0; k < length; ++k) {
            char h = text_[at_ + k];
            std::uint32_t digit =
                (h >= '0' && h <= '9')   ? static_cast<std::uint32_t>(h - '0')
                : (h >= 'a' && h <= 'f') ? static_cast<std::uint32_t>(h - 'a' + 10)
                : (h >= 'A' && h <= 'F') ? static_cast<std::uint32_t>(h - 'A' + 10)
                                         : 16;
            if (digit == 16) fail("key '" + key + "': \\" + escape + " needs hex digits");
            code_point = code_point * 16 + digit;
          }
          at_ += length;
          if (code_point > 0x10ffff || (code_point >= 0xd800 && code_point <= 0xdfff)) {
            fail("key '" + key + "': \\" + escape + " names no Unicode character");
          }
          append_utf8(out, code_point);
          break;
        }
        default:
          fail("key '" + key + "': unknown escape \\" + std::string(1, escape) +
               " (a Windows path? use 'single quotes' or \\\\)");
      }
    }
  }

  std::string_view text_;
  std::string where_;
  std::size_t at_ = 0;
};

// Checks each value against the flag's own validators, so that a bad value in
// the file is reported with its line like a syntax error.
void check_value(CLI::Option& option, const ConfigEntry& entry, const std::string& where) {
  auto prefix = where + ": key '" + entry.key + "': ";
  if (option.get_expected_min() == 0) {  // a flag
    if (!entry.is_boolean || entry.is_array) {
      throw CLI::ConfigError(prefix + "'" + entry.values.front() + "' is not true or false");
    }
    return;
  }
  if (entry.is_array && option.get_items_expected_max() <= 1) {
    throw CLI::ConfigError(prefix + "takes one value, not an array");
  }
  for (auto value : entry.values) {
    for (int index = 0;; ++index) {
      CLI::Validator* validator = nullptr;
      try {
        validator = option.get_validator(index);
      } catch (const CLI::OptionNotFound&) {
        break;
      }
      auto problem = (*validator)(value);
      if (!problem.empty()) throw CLI::ConfigError(prefix + problem);
    }
  }
}

class StrictConfig : public CLI::Config {
 public:
  explicit StrictConfig(CLI::App* app) : app_(app) {}

  std::string to_config(const CLI::App* app, bool default_also, bool write_description,
                        std::string prefix) const override {
    return CLI::ConfigTOML().to_config(app, default_also, write_description, std::move(prefix));
  }

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    auto file = config_file_name();
    std::vector<CLI::ConfigItem> checked;
    for (const auto& entry : read_config(input, file)) {
      auto where = file + ":" + std::to_string(entry.line);
      if (entry.section.empty()) {
        throw CLI::ConfigError(where + ": key '" + entry.key +
                               "' is outside a section; put it under [" + first_subcommand() + "]");
      }
      CLI::App* command = nullptr;
      try {
        command = app_->get_subcommand(entry.section);
      } catch (const CLI::OptionNotFound&) {
      }
      if (command == nullptr) {
        throw CLI::ConfigError(where + ": unknown section [" + entry.section +
                               "] (sections: " + subcommand_names() + ")");
      }
      if (entry.key.empty()) continue;  // the [section] line itself
      auto* option = command->get_option_no_throw("--" + entry.key);
      if (option == nullptr || !option->get_configurable()) {
        throw CLI::ConfigError(where + ": unknown key '" + entry.key + "' in [" + entry.section +
                               "] (keys are the long flags of '" + app_->get_name() + " " +
                               entry.section + "' without the dashes, see --help)");
      }
      check_value(*option, entry, where);
      checked.push_back(CLI::ConfigItem{{entry.section}, entry.key, entry.values});
    }
    return checked;
  }

 private:
  std::string config_file_name() const {
    auto* option = app_->get_config_ptr();
    if (option == nullptr || option->results().empty()) return "config file";
    return option->results().back();
  }
  std::string subcommand_names() const {
    std::string names;
    for (const auto* command : app_->get_subcommands({})) {
      if (!names.empty()) names += ", ";
      names += command->get_name();
    }
    return names;
  }
  std::string first_subcommand() const {
    auto commands = app_->get_subcommands({});
    return commands.empty() ? "section" : commands.front()->get_name();
  }

  CLI::App* app_;
};

}  // namespace

std::vector<ConfigEntry> read_config(std::istream& input, const std::string& file_name) {
  std::vector<ConfigEntry> entries;
  std::map<std::pair<std::string, std::string>, int> seen_keys;
  std::map<std::string, int> seen_sections;
  std::string section;
  std::string line;
  int number = 0;
  while (std::getline(input, line)) {
    ++number;
    if (number == 1 && line.rfind("\xef\xbb\xbf", 0) == 0) line.erase(0, 3);  // UTF-8 BOM
    if (!line.empty() && line.back() == '\r') line.pop_back();
    auto where = file_name + ":" + std::to_string(number);
    LineReader reader(line, where);
    if (reader.at_comment_or_end()) continue;
    if (reader.peek() == '[') {
      if (line.find("[[") != std::string::npos)
        reader.fail("arrays of tables ([[...]]) are not supported");
      LineReader header(std::string_view(line).substr(line.find('[') + 1), where);
      header.skip_spaces();
      auto name = header.bare_word();
      header.skip_spaces();
      if (name.empty() || header.peek() != ']') {
        reader.fail("a section header is [name] with letters, digits, - and _");
      }
      LineReader after(std::string_view(line).substr(line.find(']') + 1), where);
      if (!after.at_comment_or_end()) reader.fail("unexpected text after [" + name + "]");
      auto [previous, inserted] = seen_sections.emplace(name, number);
      if (!inserted) {
        reader.fail("section [" + name + "] appears twice (first on line " +
                    std::to_string(previous->second) + ")");
      }
      section = name;
      ConfigEntry header_entry;
      header_entry.section = name;
      header_entry.line = number;
      entries.push_back(std::move(header_entry));
      continue;
    }
    auto key = reader.bare_word();
    if (key.empty()) {
      reader.fail("expected 'key = value' with a key of letters, digits, - and _");
    }
    reader.skip_spaces();
    if (reader.peek() != '=') reader.fail("key '" + key + "' is not followed by =");
    LineReader value_reader(std::string_view(line).substr(line.find('=') + 1), where);
    ConfigEntry entry;
    entry.section = section;
    entry.key = key;
    entry.line = number;
    value_reader.value(key, entry);
    if (!value_reader.at_comment_or_end()) {
      reader.fail("key '" + key + "': unexpected text after the value");
    }
    auto [previous, inserted] = seen_keys.emplace(std::pair{section, key}, number);
    if (!inserted) {
      reader.fail("duplicate key '" + key + "'" + (section.empty() ? "" : " in [" + section + "]") +
                  " (first set on line " + std::to_string(previous->second) + ")");
    }
    entries.push_back(std::move(entry));
  }
  return entries;
}

void use_strict_config(CLI::App& app) {
  app.config_formatter(std::make_shared<StrictConfig>(&app));
}

}  // namespace cli
