#include "faults_common.hpp"

#include <fstream>

namespace faults {

std::atomic<bool> interrupted{false};

std::string describe(const test_support::ExitStatus& status) {
  return status.exited ? "exit " + std::to_string(status.code)
                       : "signal " + std::to_string(status.signal);
}

void append_file(const fs::path& to, const std::string& text) {
  std::ofstream out(to, std::ios::app | std::ios::binary);
  out << text;
}

std::string tail_lines(const std::string& text, std::size_t count) {
  auto all = test_support::lines(text);
  std::string out;
  for (std::size_t i = all.size() > count ? all.size() - count : 0; i < all.size(); ++i) {
    out += "    " + all[i] + "\n";
  }
  return out;
}

std::string read_endpoint(const fs::path& file) {
  auto text = test_support::read_file(file);
  return text.substr(0, text.find('\n'));
}

std::map<std::string, long> read_counts(const fs::path& file) {
  std::map<std::string, long> counts;
  for (const auto& line : test_support::lines(test_support::read_file(file))) {
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    counts[line.substr(0, eq)] = std::stol(line.substr(eq + 1));
  }
  return counts;
}

std::string shown(const std::string& msg_id) {
  if (msg_id.size() <= 60) return msg_id;
  return msg_id.substr(0, 40) + "...(" + std::to_string(msg_id.size()) + " bytes)";
}

}  // namespace faults
