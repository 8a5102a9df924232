// Flags of the fault suite's worker programs (producers, consumer): only
// "--name value" pairs, started by outbox-faults, so a small parser suffices.
#pragma once

#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace faults {

class Flags {
 public:
  // Every value given for each of `known`; empty (after printing a line that
  // names the flag) when a flag is unknown or lacks its value.
  static std::optional<Flags> parse(int argc, char** argv, const char* program,
                                    const std::set<std::string>& known) {
    Flags flags;
    for (int i = 1; i < argc; i += 2) {
      std::string flag = argv[i];
      if (known.count(flag) == 0 || i + 1 >= argc) {
        std::fprintf(stderr, "%s: %s flag %s\n", program,
                     known.count(flag) == 0 ? "unknown" : "no value for", flag.c_str());
        return std::nullopt;
      }
      flags.values_[flag].push_back(argv[i + 1]);
    }
    return flags;
  }

  // The last value given for `flag`, or `fallback`.
  std::string text(const std::string& flag, const std::string& fallback = "") const {
    auto found = values_.find(flag);
    return found == values_.end() ? fallback : found->second.back();
  }
  double number(const std::string& flag, double fallback) const {
    auto found = values_.find(flag);
    return found == values_.end() ? fallback : std::stod(found->second.back());
  }
  std::vector<std::string> all(const std::string& flag) const {
    auto found = values_.find(flag);
    return found == values_.end() ? std::vector<std::string>{} : found->second;
  }

 private:
  std::map<std::string, std::vector<std::string>> values_;
};

}  // namespace faults
