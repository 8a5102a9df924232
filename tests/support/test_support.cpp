#include "test_support.hpp"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace test_support {
namespace fs = std::filesystem;

TempDir::TempDir(const std::string& prefix) {
  std::string pattern = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed: " + std::string(std::strerror(errno)));
  }
  path_ = pattern;
}

TempDir::~TempDir() noexcept {
  std::error_code ignored;
  fs::remove_all(path_, ignored);
}

std::string ExitStatus::describe() const {
  if (exited) return "exit code " + std::to_string(code);
  return std::string("signal ") + ::strsignal(signal);
}

namespace {

ExitStatus decode_status(int raw) {
  ExitStatus status;
  if (WIFEXITED(raw)) {
    status.exited = true;
    status.code = WEXITSTATUS(raw);
  } else if (WIFSIGNALED(raw)) {
    status.signal = WTERMSIG(raw);
  }
  return status;
}

fs::path unique_log_path(const fs::path& dir, const std::string& stem, const char* suffix) {
  static std::mt19937_64 rng{std::random_device{}()};
  return dir / (stem + "-" + std::to_string(rng() % 1000000000) + suffix);
}

}  // namespace

ChildProcess::ChildProcess(const std::string& program, const std::vector<std::string>& args,
                           const fs::path& log_dir, const std::vector<std::string>& extra_env)
    : name_(fs::path(program).filename().string()) {
  fs::path dir = log_dir.empty() ? fs::temp_directory_path() : log_dir;
  stdout_path_ = unique_log_path(dir, name_, ".out");
  stderr_path_ = unique_log_path(dir, name_, ".err");
  start(program, args, extra_env);
}

ChildProcess::ChildProcess(const std::string& program, const std::vector<std::string>& args,
                           const KeptLog& log)
    : name_(log.name),
      stdout_path_(log.dir / (log.name + ".log")),
      stderr_path_(stdout_path_),
      keep_logs_(true) {
  start(program, args, {});
}

void ChildProcess::start(const std::string& program, const std::vector<std::string>& args,
                         const std::vector<std::string>& extra_env) {
  if (::access(program.c_str(), X_OK) != 0) {
    throw std::runtime_error("cannot run " + program + ": " + std::strerror(errno));
  }
  std::vector<std::string> argv_storage;
  argv_storage.push_back(program);
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& arg : argv_storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  // The environment is built before fork: only async-signal-safe calls after it.
  std::vector<std::string> env_storage;
  auto overridden = [&extra_env](const std::string& entry) {
    auto name = entry.substr(0, entry.find('=') + 1);
    for (const auto& extra : extra_env) {
      if (extra.compare(0, name.size(), name) == 0) return true;
    }
    return false;
  };
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (!overridden(*entry)) env_storage.emplace_back(*entry);
  }
  env_storage.insert(env_storage.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> envp;
  for (auto& assignment : env_storage) envp.push_back(assignment.data());
  envp.push_back(nullptr);
  const bool one_log = stdout_path_ == stderr_path_;
  const pid_t parent = ::getpid();

  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed: " + std::string(std::strerror(errno)));
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
    int out = ::open(stdout_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int err = one_log
                  ? out
                  : ::open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (out >= 0) ::dup2(out, STDOUT_FILENO);
    if (err >= 0) ::dup2(err, STDERR_FILENO);
    if (in >= 0) ::dup2(in, STDIN_FILENO);
    // Default signal mask: a parent that blocks signals does not pass that on.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(program.c_str(), argv.data(), envp.data());
    const char message[] = "exec failed\n";
    [[maybe_unused]] auto written = ::write(STDERR_FILENO, message, sizeof message - 1);
    ::_exit(127);
  }
}

ChildProcess::~ChildProcess() noexcept {
  if (pid_ > 0 && !status_) {
    ::kill(pid_, SIGKILL);
    reap(true);
  }
  if (!keep_logs_) {
    std::error_code ignored;
    fs::remove(stdout_path_, ignored);
    fs::remove(stderr_path_, ignored);
  }
}

std::optional<ExitStatus> ChildProcess::reap(bool block) {
  if (status_) return status_;
  int raw = 0;
  pid_t result;
  do {
    result = ::waitpid(pid_, &raw, block ? 0 : WNOHANG);
  } while (result < 0 && errno == EINTR);
  if (result == 0) return std::nullopt;
  if (result < 0) {
    status_ = ExitStatus{true, -1, 0};  // already reaped elsewhere: gone
  } else {
    status_ = decode_status(raw);
  }
  return status_;
}

bool ChildProcess::running() {
  return !reap(false).has_value();
}

void ChildProcess::signal(int sig) {
  if (running()) ::kill(pid_, sig);
}

namespace {

// Whether every thread of `pid` is in a stopped state (`T`, or `t` when traced),
// from the state field of /proc/PID/task/TID/stat, after the command's ")".
bool all_threads_stopped(pid_t pid) {
  std::error_code error;
  std::filesystem::directory_iterator tasks("/proc/" + std::to_string(pid) + "/task", error);
  if (error) return false;
  bool any = false;
  for (const auto& task : tasks) {
    std::ifstream stat(task.path() / "stat");
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    if (close == std::string::npos || close + 2 >= line.size()) continue;  // gone meanwhile
    const char state = line[close + 2];
    if (state != 'T' && state != 't') return false;
    any = true;
  }
  return any;
}

}  // namespace

bool ChildProcess::pause(std::chrono::milliseconds timeout) {
  if (!running()) return false;
  ::kill(pid_, SIGSTOP);
  return wait_until([this] { return all_threads_stopped(pid_); }, timeout,
                    std::chrono::milliseconds(1));
}

std::optional<ExitStatus> ChildProcess::wait_for(std::chrono::milliseconds timeout) {
  wait_until([this] { return !running(); }, timeout, std::chrono::milliseconds(2));
  return status_;
}

ExitStatus ChildProcess::stop(std::chrono::milliseconds grace) {
  signal(SIGTERM);
  if (auto status = wait_for(grace)) return *status;
  signal(SIGKILL);
  return *reap(true);
}

std::string ChildProcess::stdout_text() const {
  return read_file(stdout_path_);
}
std::string ChildProcess::stderr_text() const {
  return read_file(stderr_path_);
}

std::string ChildProcess::log_tail(std::size_t max_bytes) const {
  auto text = stderr_text();
  if (text.size() > max_bytes) text = "..." + text.substr(text.size() - max_bytes);
  return text;
}

RunResult run(const std::string& program, const std::vector<std::string>& args,
              std::chrono::milliseconds timeout, const std::vector<std::string>& extra_env) {
  ChildProcess child(program, args, {}, extra_env);
  auto status = child.wait_for(timeout);
  if (!status) {
    child.signal(SIGKILL);
    throw std::runtime_error(program + " did not finish within " + std::to_string(timeout.count()) +
                             " ms");
  }
  return RunResult{*status, child.stdout_text(), child.stderr_text()};
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
                std::chrono::microseconds poll) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(poll);  // polling interval of a deadline-bounded wait
  }
}

unsigned file_mode(const fs::path& path) {
  struct stat status {};
  if (::lstat(path.c_str(), &status) != 0) {
    throw std::system_error(errno, std::generic_category(), "lstat " + path.string());
  }
  return status.st_mode & 07777;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> result;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) result.push_back(line);
  return result;
}

int free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket failed: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    const int error = errno;
    ::close(fd);
    throw std::runtime_error(std::string("cannot bind 127.0.0.1:0: ") + std::strerror(error));
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

bool reduced_scale() {
#ifdef OUTBOX_TEST_REDUCED_SCALE
  constexpr bool tree_default = true;
#else
  constexpr bool tree_default = false;
#endif
  const char* value = std::getenv("OUTBOX_TEST_SCALE");
  if (value == nullptr || *value == '\0') return tree_default;
  const std::string scale(value);
  if (scale == "full") return false;
  if (scale == "reduced") return true;
  throw std::invalid_argument("OUTBOX_TEST_SCALE=" + scale + ": expected full or reduced");
}

}  // namespace test_support
