// What the benchmark needs to run other programs: a temporary directory that
// removes itself, a child process started with fork/exec and stopped by pid,
// a free loopback port, and bounded waiting. Every wait checks the stop flag
// set by SIGINT/SIGTERM, so Ctrl-C unwinds through the destructors (children
// killed, directories removed).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

// Thrown by waits once SIGINT/SIGTERM arrived.
struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted") {}
};

// Throws Interrupted if a stop signal arrived.
void check_interrupted();

class TempDir {
 public:
  explicit TempDir(const std::string& prefix);
  ~TempDir() noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

struct ExitStatus {
  bool exited = false;  // normal exit with `code`
  int code = -1;
  int signal = 0;  // the terminating signal otherwise
  std::string describe() const;
};

// A program started with fork/exec; stdout and stderr go to <log_dir>/<name>.log.
// The child gets SIGKILL if the benchmark dies (PR_SET_PDEATHSIG); the
// destructor kills it by pid (SIGKILL) if it is still running, and reaps it.
class ChildProcess {
 public:
  ChildProcess(const std::string& name, const std::string& program,
               const std::vector<std::string>& args, const std::filesystem::path& log_dir);
  ~ChildProcess() noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  bool running();
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns how it ended.
  ExitStatus stop(std::chrono::milliseconds grace = std::chrono::seconds(10));
  // The last `max_bytes` of its log, for error messages.
  std::string log_tail(std::size_t max_bytes = 2000) const;

 private:
  std::optional<ExitStatus> reap(bool block);
  std::string name_;
  pid_t pid_ = -1;
  std::optional<ExitStatus> status_;
  std::filesystem::path log_path_;
};

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and closed).
int free_loopback_port();

// Polls `condition` every `poll` until it holds (true) or `timeout` passes
// (false). Throws Interrupted on a stop signal.
bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
                std::chrono::microseconds poll = std::chrono::milliseconds(1));

// Nanoseconds the threads of process `pid` have spent runnable but waiting
// for a CPU (/proc/<pid>/task/*/schedstat); 0 if the kernel does not say.
std::int64_t cpu_wait_ns(pid_t pid);
// Nanoseconds the threads of process `pid` have run on a CPU (same source).
std::int64_t cpu_run_ns(pid_t pid);
// The same for its main thread alone (/proc/<pid>/task/<pid>/schedstat).
std::int64_t main_thread_cpu_run_ns(pid_t pid);

// The directory holding the running executable (/proc/self/exe).
std::filesystem::path executable_dir();

}  // namespace bench
