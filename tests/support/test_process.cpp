// The support library's child processes: what the tests, the fault suite and
// the benchmarks rely on to leave nothing behind.
#include <catch2/catch.hpp>

#include <csignal>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

#include "test_support.hpp"

using namespace std::chrono_literals;
using test_support::ChildProcess;

namespace {

// Gone, or a zombie nobody has reaped yet: either way no longer running.
bool ended(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string pid_field, command, state;
  if (!(stat >> pid_field >> command >> state)) return true;
  return state == "Z" || state == "X";
}

}  // namespace

TEST_CASE("a child gets SIGKILL when the process that started it is killed", "[support]") {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t parent = ::fork();
  REQUIRE(parent >= 0);
  if (parent == 0) {
    // The process that gets killed: starts a long sleep, says its pid, waits.
    ::close(pipe_fds[0]);
    try {
      ChildProcess sleeper("/bin/sleep", {"60"});
      const pid_t pid = sleeper.pid();
      if (::write(pipe_fds[1], &pid, sizeof pid) != sizeof pid) ::_exit(3);
      for (;;) ::pause();
    } catch (...) {
      ::_exit(2);
    }
  }
  ::close(pipe_fds[1]);
  pid_t sleeper = -1;
  const auto got = ::read(pipe_fds[0], &sleeper, sizeof sleeper);
  ::close(pipe_fds[0]);
  ::kill(parent, SIGKILL);
  int status = 0;
  ::waitpid(parent, &status, 0);
  REQUIRE(got == static_cast<ssize_t>(sizeof sleeper));
  const bool gone = test_support::wait_until([&] { return ended(sleeper); }, 10s);
  if (!gone) ::kill(sleeper, SIGKILL);  // our own grandchild: leave nothing behind
  CHECK(gone);
}

TEST_CASE("a kept log holds stdout and stderr and stays after the child", "[support]") {
  test_support::TempDir dir("outbox-support-test");
  std::filesystem::path log = dir / "talker.log";
  {
    ChildProcess talker("/bin/sh", {"-c", "echo to-stdout; echo to-stderr >&2; exec sleep 60"},
                        test_support::KeptLog{"talker", dir.path()});
    CHECK(talker.name() == "talker");
    REQUIRE(test_support::wait_until(
        [&] {
          auto text = talker.log_tail();
          return text.find("to-stdout") != std::string::npos &&
                 text.find("to-stderr") != std::string::npos;
        },
        20s));
    auto status = talker.stop(10s);
    CHECK_FALSE(status.exited);
    CHECK(status.signal == SIGTERM);
    CHECK(status.describe() == std::string("signal ") + ::strsignal(SIGTERM));
    CHECK_FALSE(talker.running());
  }
  CHECK(std::filesystem::exists(log));
}

TEST_CASE("a program that cannot run is refused with its path", "[support]") {
  try {
    ChildProcess missing("/nonexistent/outbox-program", {});
    FAIL("started a program that does not exist");
  } catch (const std::runtime_error& error) {
    CHECK(std::string(error.what()).find("/nonexistent/outbox-program") != std::string::npos);
  }
}

TEST_CASE("run captures the exit code and both streams", "[support]") {
  auto result = test_support::run("/bin/sh", {"-c", "echo out; echo err >&2; exit 3"}, 30s);
  CHECK(result.status.exited);
  CHECK(result.status.code == 3);
  CHECK(result.status.describe() == "exit code 3");
  CHECK(result.out == "out\n");
  CHECK(result.err == "err\n");
}

TEST_CASE("pause() returns once the child has stopped, and false for an ended child", "[support]") {
  ChildProcess sleeper("/bin/sleep", {"60"});
  REQUIRE(sleeper.pause());
  std::ifstream stat("/proc/" + std::to_string(sleeper.pid()) + "/stat");
  std::string pid_field, command, state;
  REQUIRE(stat >> pid_field >> command >> state);
  CHECK(state == "T");
  sleeper.signal(SIGCONT);
  sleeper.signal(SIGKILL);
  REQUIRE(sleeper.wait_for(10s).has_value());
  CHECK_FALSE(sleeper.pause());
}
