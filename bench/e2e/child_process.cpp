#include "child_process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "cli/process.hpp"

namespace bench {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

void check_interrupted() {
  if (cli::stop_requested()) throw Interrupted();
}

TempDir::TempDir(const std::string& prefix) {
  std::random_device random;
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto candidate = fs::temp_directory_path() /
                     (prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(random()));
    std::error_code error;
    if (fs::create_directory(candidate, error)) {
      path_ = candidate;
      return;
    }
  }
  throw std::runtime_error("cannot create a temporary directory under " +
                           fs::temp_directory_path().string());
}

TempDir::~TempDir() noexcept {
  std::error_code error;
  fs::remove_all(path_, error);
}

std::string ExitStatus::describe() const {
  if (exited) return "exit code " + std::to_string(code);
  return std::string("signal ") + ::strsignal(signal);
}

ChildProcess::ChildProcess(const std::string& name, const std::string& program,
                           const std::vector<std::string>& args, const fs::path& log_dir)
    : name_(name), log_path_(log_dir / (name + ".log")) {
  if (::access(program.c_str(), X_OK) != 0) {
    throw std::runtime_error("cannot run " + program + ": " + std::strerror(errno));
  }
  std::vector<std::string> storage;
  storage.push_back(program);
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& arg : storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  auto log = log_path_.string();
  pid_t parent = ::getpid();

  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
  if (pid_ == 0) {
    // Child: only async-signal-safe calls until exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
    }
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    // The child starts with default signal dispositions and an empty mask.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
}

ChildProcess::~ChildProcess() noexcept {
  if (pid_ > 0 && !status_) {
    ::kill(pid_, SIGKILL);
    try {
      reap(true);
    } catch (...) {
    }
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
  ExitStatus status;
  if (result < 0) {
    status.exited = true;  // already reaped elsewhere: treat as gone
  } else if (WIFEXITED(raw)) {
    status.exited = true;
    status.code = WEXITSTATUS(raw);
  } else if (WIFSIGNALED(raw)) {
    status.signal = WTERMSIG(raw);
  }
  status_ = status;
  return status_;
}

bool ChildProcess::running() {
  return !reap(false).has_value();
}

ExitStatus ChildProcess::stop(std::chrono::milliseconds grace) {
  if (auto done = reap(false)) return *done;
  ::kill(pid_, SIGTERM);
  auto deadline = Clock::now() + grace;
  while (Clock::now() < deadline) {
    if (auto done = reap(false)) return *done;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid_, SIGKILL);
  return *reap(true);
}

std::string ChildProcess::log_tail(std::size_t max_bytes) const {
  std::ifstream in(log_path_, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  auto text = buffer.str();
  if (text.size() > max_bytes) text = "..." + text.substr(text.size() - max_bytes);
  return text;
}

int free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket failed: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    int error = errno;
    ::close(fd);
    throw std::runtime_error(std::string("cannot bind a loopback port: ") + std::strerror(error));
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
                std::chrono::microseconds poll) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    check_interrupted();
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(poll);
  }
}

namespace {

std::int64_t schedstat_sum(pid_t pid, int field) {
  std::int64_t total = 0;
  std::error_code error;
  for (const auto& task : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", error)) {
    std::ifstream in(task.path() / "schedstat");
    long long on_cpu = 0, waiting = 0;
    if (in >> on_cpu >> waiting) total += field == 0 ? on_cpu : waiting;
  }
  return total;
}

}  // namespace

std::int64_t cpu_wait_ns(pid_t pid) {
  return schedstat_sum(pid, 1);
}
std::int64_t cpu_run_ns(pid_t pid) {
  return schedstat_sum(pid, 0);
}
std::int64_t main_thread_cpu_run_ns(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/schedstat");
  long long on_cpu = 0;
  return in >> on_cpu ? on_cpu : 0;
}

fs::path executable_dir() {
  std::error_code error;
  auto self = fs::read_symlink("/proc/self/exe", error);
  if (error) return fs::current_path();
  return self.parent_path();
}

}  // namespace bench
