#include "bench_support.hpp"

#include <fstream>
#include <string>
#include <string_view>

#include <sys/resource.h>
#include <time.h>

#include "cli/process.hpp"

namespace bench {

namespace fs = std::filesystem;

void check_interrupted() {
  if (cli::stop_requested()) throw Interrupted();
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
                std::chrono::microseconds poll) {
  return test_support::wait_until(
      [&] {
        if (condition()) return true;
        check_interrupted();
        return false;
      },
      timeout, poll);
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

ContextSwitches context_switches(pid_t pid) {
  ContextSwitches total;
  std::error_code error;
  for (const auto& task : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", error)) {
    std::ifstream in(task.path() / "status");
    std::string line;
    while (std::getline(in, line)) {
      auto value = [&](std::string_view name) { return std::stoll(line.substr(name.size())); };
      if (line.starts_with("voluntary_ctxt_switches:")) {
        total.voluntary += value("voluntary_ctxt_switches:");
      } else if (line.starts_with("nonvoluntary_ctxt_switches:")) {
        total.involuntary += value("nonvoluntary_ctxt_switches:");
      }
    }
  }
  return total;
}

std::int64_t bytes_written(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/io");
  std::string name;
  long long value = 0;
  while (in >> name >> value) {
    if (name == "wchar:") return value;
  }
  return 0;
}

MachineCpu machine_cpu() {
  std::ifstream in("/proc/stat");
  std::string label;
  long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (!(in >> label >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal) ||
      label != "cpu") {
    return {};
  }
  return {user + nice + system + irq + softirq, idle + iowait, steal};
}

double MachineCpu::steal_share_since(const MachineCpu& before) const {
  const auto elapsed = total() - before.total();
  if (before.total() == 0 || elapsed <= 0) return -1;
  return static_cast<double>(steal - before.steal) / static_cast<double>(elapsed);
}

std::int64_t thread_cpu_ns() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

fs::path executable_dir() {
  std::error_code error;
  auto self = fs::read_symlink("/proc/self/exe", error);
  if (error) return fs::current_path();
  return self.parent_path();
}

}  // namespace bench
