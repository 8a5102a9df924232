// What the benchmark needs to run other programs, on top of the support
// library it shares with the tests (tests/support/test_support.hpp: temporary
// directories, child processes stopped by pid, a free loopback port): waits
// that give up on Ctrl-C, and what the kernel says about a process's CPU time.
// Every wait checks the stop flag set by SIGINT/SIGTERM, so Ctrl-C unwinds
// through the destructors (children killed, directories removed).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <stdexcept>

#include "test_support.hpp"

namespace bench {

using test_support::ChildProcess;
using test_support::ExitStatus;
using test_support::free_loopback_port;
using test_support::KeptLog;
using test_support::TempDir;

// Thrown by waits once SIGINT/SIGTERM arrived.
struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted") {}
};

// Throws Interrupted if a stop signal arrived.
void check_interrupted();

// test_support::wait_until that also throws Interrupted on a stop signal.
bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
                std::chrono::microseconds poll = std::chrono::milliseconds(1));

// Nanoseconds the threads of process `pid` have spent runnable but waiting
// for a CPU (/proc/<pid>/task/*/schedstat); 0 if the kernel does not say.
std::int64_t cpu_wait_ns(pid_t pid);
// Nanoseconds the threads of process `pid` have run on a CPU (same source).
std::int64_t cpu_run_ns(pid_t pid);
// The same for its main thread alone (/proc/<pid>/task/<pid>/schedstat).
std::int64_t main_thread_cpu_run_ns(pid_t pid);

// Context switches of all threads of process `pid` so far
// (/proc/<pid>/task/*/status): voluntary ones are a thread blocking (a wait
// for an event, a lock, I/O), involuntary ones the scheduler taking its CPU.
struct ContextSwitches {
  std::int64_t voluntary = 0;
  std::int64_t involuntary = 0;
};
ContextSwitches context_switches(pid_t pid);

// Bytes process `pid` has passed to write(2)-like calls so far (`wchar` of
// /proc/<pid>/io: page cache included, before any reaches the disk); 0 if the
// kernel does not say.
std::int64_t bytes_written(pid_t pid);

// The machine's CPU time so far, all CPUs together, in clock ticks (the
// first line of /proc/stat); all zero if the kernel does not say. `steal` is
// time the hypervisor ran something else while a virtual CPU of this machine
// had work: on a shared virtual machine it comes on top of the processes'
// own wait for a CPU, and the latency tail follows it.
struct MachineCpu {
  std::int64_t busy = 0;  // user, nice, system, irq, softirq
  std::int64_t idle = 0;  // idle and iowait
  std::int64_t steal = 0;
  std::int64_t total() const { return busy + idle + steal; }
  // Share of the CPUs' time since `before` that went to steal, 0..1 (-1 if
  // the kernel says nothing).
  double steal_share_since(const MachineCpu& before) const;
};
MachineCpu machine_cpu();

// Nanoseconds the calling thread has run on a CPU (CLOCK_THREAD_CPUTIME_ID):
// for threads that end before their process is read.
std::int64_t thread_cpu_ns();

// User + system CPU seconds this process has used so far (getrusage).
double cpu_seconds();

// The directory holding the running executable (/proc/self/exe).
std::filesystem::path executable_dir();

}  // namespace bench
