// Helpers shared by the test programs, the fault suite (outbox-faults) and
// the benchmarks: temporary directories that clean up after themselves, child
// processes started and stopped by pid, a free loopback port, and waiting on
// a condition with a deadline (tests never sleep to synchronise). No test
// framework here: the benchmarks link it too.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <sys/types.h>

namespace test_support {

// A fresh directory under the system temp dir, removed with everything in it
// when the object goes out of scope (also when the test fails).
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "outbox-test");
  ~TempDir() noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Result of a finished child process.
struct ExitStatus {
  bool exited = false;  // true: normal exit with `code`
  int code = -1;        // exit code when `exited`
  int signal = 0;       // terminating signal when !exited
  // "exit code 3" or "signal Killed", for messages.
  std::string describe() const;
};

// Where a child's output goes when one log should stay after it: stdout and
// stderr both to <dir>/<name>.log (the benchmarks keep their daemons' logs).
struct KeptLog {
  std::string name;
  std::filesystem::path dir;
};

// A program started with fork/exec, with stdin from /dev/null and the default
// signal mask. By default stdout and stderr go to two files of their own in
// `log_dir` (the system temp dir if empty), removed with the object, so a test
// can read what it printed; with a KeptLog both go to that one file, which
// stays. The destructor kills the process (SIGKILL, by pid) if it is still
// running and reaps it. The child also gets SIGKILL when the thread that
// started it ends (PR_SET_PDEATHSIG), so a test or benchmark that is killed
// leaves no daemon behind: start children from a thread that outlives them.
// Not thread-safe: one thread owns a ChildProcess. Throws std::runtime_error
// when `program` is not executable or fork fails.
class ChildProcess {
 public:
  ChildProcess(const std::string& program, const std::vector<std::string>& args,
               const std::filesystem::path& log_dir = {},
               const std::vector<std::string>& extra_env = {});
  ChildProcess(const std::string& program, const std::vector<std::string>& args,
               const KeptLog& log);
  ~ChildProcess() noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // The KeptLog's name, else the program's file name.
  const std::string& name() const { return name_; }
  bool running();
  void signal(int sig);  // only ever to our own child, by pid
  // SIGSTOP, then waits up to `timeout` until every thread of the process has
  // stopped. The signal stops one thread, which then stops the others: until
  // it has run, a thread woken by a request may still answer it. Returns
  // whether they all stopped (false when the process is not running).
  bool pause(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Waits up to `timeout` for the process to exit; empty if still running.
  std::optional<ExitStatus> wait_for(std::chrono::milliseconds timeout);
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns how it ended.
  ExitStatus stop(std::chrono::milliseconds grace = std::chrono::seconds(10));
  // What it printed so far (with a KeptLog, both return the one log).
  std::string stdout_text() const;
  std::string stderr_text() const;
  // The last `max_bytes` of stderr (of the KeptLog), for error messages.
  std::string log_tail(std::size_t max_bytes = 2000) const;

 private:
  void start(const std::string& program, const std::vector<std::string>& args,
             const std::vector<std::string>& extra_env);
  std::optional<ExitStatus> reap(bool block);

  std::string name_;
  pid_t pid_ = -1;
  std::optional<ExitStatus> status_;
  std::filesystem::path stdout_path_;
  std::filesystem::path stderr_path_;
  bool keep_logs_ = false;
};

// Runs a program to completion (bounded by `timeout`) and captures its output.
struct RunResult {
  ExitStatus status;
  std::string out;
  std::string err;
};
RunResult run(const std::string& program, const std::vector<std::string>& args,
              std::chrono::milliseconds timeout = std::chrono::seconds(60),
              const std::vector<std::string>& extra_env = {});

// Polls `condition` every `poll` until it holds or `timeout` passes.
// Returns whether it held.
bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
                std::chrono::microseconds poll = std::chrono::milliseconds(5));

std::string read_file(const std::filesystem::path& path);

// Its arguments, strings and integers, one after the other: concat("t", 3, ".db")
// is "t3.db". Built by appending: GCC 12 at -O3 (the Release build) reports
// false -Wrestrict / -Wstringop-overflow warnings for "t" + std::to_string(3).
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::string joined;
  auto add = [&joined](const auto& part) {
    if constexpr (std::is_integral_v<std::decay_t<decltype(part)>>) {
      joined += std::to_string(part);
    } else {
      joined += part;
    }
  };
  (add(parts), ...);
  return joined;
}

// The permission bits of `path` itself (a symlink is not followed), e.g. 0600;
// throws std::system_error when it cannot be read.
unsigned file_mode(const std::filesystem::path& path);

// Splits text into lines (without the newline characters).
std::vector<std::string> lines(const std::string& text);

// A port the kernel just handed out on 127.0.0.1 (bound, read, closed), for
// servers that cannot bind port 0 and report it back (nats-server,
// redis-server, prometheus). Another program may take it first: a server that
// then fails to start should be retried on another. Throws
// std::runtime_error, with the reason, when no socket can be bound.
int free_loopback_port();

// The size of the expensive tests (thousands of connections, requests or
// messages): full, or reduced in the sanitizer trees (compiled with
// OUTBOX_TEST_REDUCED_SCALE), where every process runs 5 to 15 times slower.
// A reduced test makes the same checks on fewer items; it never skips one.
// The environment variable OUTBOX_TEST_SCALE=full or =reduced overrides the
// tree's default; any other value throws std::invalid_argument naming it.
bool reduced_scale();

// `full`, or `reduced` when reduced_scale().
template <class T>
T scaled(T full, T reduced) {
  return reduced_scale() ? reduced : full;
}

}  // namespace test_support
