#include "find_program.hpp"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <system_error>

namespace test_support {

std::string find_program(const std::string& name, const char* override_variable) {
  if (override_variable != nullptr) {
    if (const char* chosen = std::getenv(override_variable); chosen != nullptr) {
      return ::access(chosen, X_OK) == 0 ? std::string(chosen) : std::string();
    }
  }
  const char* path = std::getenv("PATH");
  std::string entries = path != nullptr ? path : "/usr/bin:/bin";
  entries += ":/usr/sbin:/usr/bin:/sbin:/usr/local/sbin:/usr/local/bin";
  std::size_t start = 0;
  while (start <= entries.size()) {
    auto end = entries.find(':', start);
    if (end == std::string::npos) end = entries.size();
    auto candidate = std::filesystem::path(entries.substr(start, end - start)) / name;
    std::error_code error;
    if (!candidate.parent_path().empty() && std::filesystem::is_regular_file(candidate, error) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate.string();
    }
    start = end + 1;
  }
  return {};
}

}  // namespace test_support
