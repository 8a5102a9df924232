// Config files for the daemons: a strict reader for the subset of TOML they
// use, and a CLI11 config formatter built on it, so that each setting is still
// defined once (as a flag) and a file is checked as carefully as a command line.
//
// The subset: `# comments`, `[section]` headers (one per subcommand), and
// `key = value` lines whose value is a "basic string", a 'literal string', an
// integer or float, true/false, or a one-line [array] of those. Anything else,
// a key given twice in a section, a section given twice, an unknown section or
// key, or a value a flag's validator refuses is a ConfigError whose message
// is one line: "FILE:LINE: key 'name' ...". Pure functions; safe from any thread.
#pragma once

#include <istream>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace cli {

// One `key = value` line, or (with an empty key) one `[section]` line.
struct ConfigEntry {
  std::string section;  // "" before the first [section]
  std::string key;
  std::vector<std::string> values;  // one for a scalar; strings without their quotes
  bool is_array = false;
  bool is_boolean = false;
  int line = 0;
};

// Reads `input` strictly; throws CLI::ConfigError "FILE:LINE: ..." on a syntax
// error or a duplicate key or section. `file_name` is only used in messages.
std::vector<ConfigEntry> read_config(std::istream& input, const std::string& file_name);

// Makes `app` (the top-level app, which owns --config) read its config file
// with read_config and check every key against the subcommand its section
// names and every value against that flag's validators, before CLI11 applies
// them (flags on the command line still win). Call after set_config().
void use_strict_config(CLI::App& app);

}  // namespace cli
