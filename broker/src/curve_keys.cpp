#include "broker/curve_keys.hpp"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <fstream>
#include <stdexcept>

#include <zmq.h>

#include "outbox/error.hpp"

namespace broker {
namespace {

std::string trim(std::string text) {
  auto not_space = [](unsigned char c) { return !std::isspace(c); };
  text.erase(text.begin(), std::find_if(text.begin(), text.end(), not_space));
  text.erase(std::find_if(text.rbegin(), text.rend(), not_space).base(), text.end());
  return text;
}

std::vector<std::string> key_lines(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw outbox::Error(outbox::ErrorKind::io, "cannot read key file " + path.string());
  std::vector<std::string> keys;
  std::string line;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    if (line.size() != 40) {
      throw outbox::Error(outbox::ErrorKind::io,
                          "key file " + path.string() +
                              ": expected 40-character Z85 keys, got a line of " +
                              std::to_string(line.size()) + " characters");
    }
    keys.push_back(line);
  }
  return keys;
}

}  // namespace

std::string curve_key_to_binary(std::string_view z85, std::string_view what) {
  std::string binary(32, '\0');
  const std::string text(z85);
  if (text.size() != 40 ||
      zmq_z85_decode(reinterpret_cast<std::uint8_t*>(binary.data()), text.c_str()) == nullptr) {
    throw outbox::Error(outbox::ErrorKind::io, std::string(what) + " is not a valid Z85 CURVE key");
  }
  return binary;
}

std::string curve_key_to_z85(std::string_view binary) {
  if (binary.size() != 32) return {};
  char text[41] = {};
  if (zmq_z85_encode(text, reinterpret_cast<const std::uint8_t*>(binary.data()), 32) == nullptr) {
    return {};
  }
  return std::string(text, 40);
}

std::string read_curve_key_file(const std::filesystem::path& path) {
  auto keys = key_lines(path);
  if (keys.empty())
    throw outbox::Error(outbox::ErrorKind::io, "key file " + path.string() + " holds no key");
  curve_key_to_binary(keys.front(), "key in " + path.string());
  return keys.front();
}

std::vector<std::string> read_allowed_clients_file(const std::filesystem::path& path) {
  auto keys = key_lines(path);
  for (const auto& key : keys) curve_key_to_binary(key, "key in " + path.string());
  return keys;
}

}  // namespace broker
