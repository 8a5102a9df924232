// The idgen command-line tool's commands. main.cpp parses flags into these
// option structs; each command returns the process exit status and reports
// failures by throwing (idgen::Error carries the exit status through its code).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace spdlog {
class logger;
}

namespace idgen::cli {

// Exit statuses of the tool.
inline constexpr int exit_ok = 0;
inline constexpr int exit_failure = 1;  // I/O or unexpected internal failure
inline constexpr int exit_usage = 2;    // bad usage or bad input
inline constexpr int exit_clock = 3;    // clock moved backwards beyond the policy
inline constexpr int exit_layout = 4;   // layout expired or exhausted

struct GenOptions {
  std::string count = "1";
  std::optional<std::string> worker;
  std::string layout = "standard";
  std::string format = "dec";
  std::string clock_policy = "wait";
  std::string max_backward_wait_ms = "5";
  std::optional<std::string> state_file;
  bool json = false;
};

struct DecodeOptions {
  std::string id;
  std::string layout = "standard";
  std::string format = "dec";
  bool json = false;
};

struct ComposeOptions {
  std::string time;
  std::string worker;
  std::string sequence = "0";
  std::string layout = "standard";
  std::string format = "dec";
  bool json = false;
};

struct LayoutOptions {
  std::string layout = "standard";
  bool json = false;
};

struct UuidOptions {
  bool v4 = false;
  bool v7 = false;
  std::string count = "1";
  bool json = false;
};

struct BenchOptions {
  std::string threads = "1";
  std::string seconds = "2";
  std::string layout = "standard";
  bool json = false;
};

int run_gen(const GenOptions& options, const std::shared_ptr<spdlog::logger>& logger);
int run_decode(const DecodeOptions& options);
int run_compose(const ComposeOptions& options);
int run_layout(const LayoutOptions& options);
int run_uuid(const UuidOptions& options);
int run_bench(const BenchOptions& options, const std::shared_ptr<spdlog::logger>& logger);

}  // namespace idgen::cli
