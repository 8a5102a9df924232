// The supervisor's unit: one process outbox-faults owns (a daemon, a
// producer, a consumer or a proxy), started, signalled, paused and restarted
// by pid, with every incarnation's output kept in logs/<name>.log.
#pragma once

#include <csignal>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

#include "faults_common.hpp"
#include "test_support.hpp"

namespace faults {

// One daemon or worker the harness owns: started, signalled and restarted
// by pid only; its output is appended to logs/<name>.log at every exit.
class Managed {
 public:
  using Starter = std::function<std::unique_ptr<test_support::ChildProcess>()>;
  enum class State { running, stopping, down };

  Managed(std::string name, fs::path log_file, Starter starter)
      : name_(std::move(name)), log_file_(std::move(log_file)), starter_(std::move(starter)) {}

  const std::string& name() const { return name_; }
  State state() const { return state_; }
  bool running() const { return state_ == State::running; }
  bool paused() const { return paused_; }

  // SIGSTOP now, SIGCONT at `resume_at` (from resume_if_due): a process that
  // hangs, as under a long GC pause or a swapped-out machine, then goes on.
  void pause_until(SteadyClock::time_point resume_at) {
    if (state_ != State::running || paused_) return;
    process_->signal(SIGSTOP);
    paused_ = true;
    resume_at_ = resume_at;
  }
  void resume_if_due(SteadyClock::time_point now, bool force = false) {
    if (!paused_ || (!force && now < resume_at_)) return;
    if (process_) process_->signal(SIGCONT);
    paused_ = false;
  }

  void start() {
    process_ = starter_();
    state_ = State::running;
    started_at_ = SteadyClock::now();
  }

  // Sends `sig` and, for SIGKILL, reaps at once.
  void signal(int sig) {
    if (state_ != State::running) return;
    process_->signal(sig);
    if (paused_) {
      process_->signal(SIGCONT);  // a stopped process acts on SIGTERM only once continued
      paused_ = false;
    }
    expected_signal_ = sig;
    state_ = State::stopping;
    stopping_since_ = last_term_ = SteadyClock::now();
    reported_slow_stop_ = false;
  }

  // A signal that does not end the process (the proxy's SIGUSR1).
  void notify(int sig) {
    if (state_ == State::running) process_->signal(sig);
  }

  // Call often: reaps exits, returns a line describing anything unexpected.
  std::optional<std::string> poll(SteadyClock::time_point restart_at_if_down) {
    if (state_ == State::down || !process_) return std::nullopt;
    if (process_->running()) {
      auto now = SteadyClock::now();
      if (state_ == State::stopping && expected_signal_ == SIGTERM && now - last_term_ >= 1s) {
        // A SIGTERM that lands between fork and exec meets the harness's own
        // handler in the child and is lost: say it again.
        process_->signal(SIGTERM);
        last_term_ = now;
      }
      if (state_ == State::stopping && now - stopping_since_ > 40s && !reported_slow_stop_) {
        reported_slow_stop_ = true;
        return name_ + " did not exit within 40 s of SIGTERM";
      }
      return std::nullopt;
    }
    auto status = *process_->wait_for(0ms);
    last_status_ = status;
    last_pid_ = process_->pid();
    archive(status);
    std::optional<std::string> problem;
    // On purpose, and it said so first (also while it was stopping).
    last_self_killed_ = self_kill_ok_ && !status.exited && status.signal == SIGKILL &&
                        process_->stderr_text().find("kill -9 of itself") != std::string::npos;
    if (state_ == State::running) {
      problem = name_ + " exited by itself (" + describe(status) + ")";
      if (status.exited && exit_code_ok_(status.code)) problem.reset();
    } else if (expected_signal_ == SIGTERM && !(status.exited && term_exit_code_ok_(status.code)) &&
               !killed_while_starting(status)) {
      problem = name_ + " did not exit 0 after SIGTERM (" + describe(status) + ")";
    }
    if (last_self_killed_) problem.reset();
    if (problem) last_log_tail_ = tail_lines(process_->stderr_text(), 15);
    process_.reset();
    state_ = State::down;
    restart_at_ = restart_at_if_down;
    return problem;
  }

  bool due_for_restart(SteadyClock::time_point now) const {
    return state_ == State::down && restart_enabled_ && now >= restart_at_;
  }
  // A process stopped for good (producers at the end of the load) stays down.
  void stay_down() { restart_enabled_ = false; }
  void set_restart_at(SteadyClock::time_point at) { restart_at_ = at; }
  std::optional<test_support::ExitStatus> last_status() const { return last_status_; }
  pid_t last_pid() const { return last_pid_; }
  // The last exit was a SIGKILL the process sent itself (accept_self_kill).
  bool last_self_killed() const { return last_self_killed_; }
  // A SIGKILL the process sends itself after saying "kill -9 of itself" on
  // stderr is a fault it injects, not a problem.
  void accept_self_kill() { self_kill_ok_ = true; }
  const std::string& last_log_tail() const { return last_log_tail_; }
  std::string stdout_text() const { return last_stdout_; }
  SteadyClock::time_point started_at() const { return started_at_; }
  // What the running incarnation printed on stderr so far.
  std::string current_stderr() const { return process_ ? process_->stderr_text() : std::string(); }
  // Exit codes that are not a problem when the process ends by itself.
  void accept_exit_codes(std::function<bool(int)> ok) { exit_code_ok_ = std::move(ok); }
  // Exit codes that count as a clean stop after SIGTERM (0 unless told).
  void accept_term_exit_codes(std::function<bool(int)> ok) { term_exit_code_ok_ = std::move(ok); }

  ~Managed() noexcept {
    if (process_) {
      process_->signal(SIGKILL);
      if (auto status = process_->wait_for(10s)) archive(*status);
    }
  }

 private:
  // Ended by SIGTERM's default action before writing a single line: the
  // signal arrived after exec but before the program installed its handler
  // (the daemons log their first line after that), so nothing was in flight.
  // On a loaded machine that window can outlast the injector's 100 ms grace.
  bool killed_while_starting(const test_support::ExitStatus& status) const {
    return !status.exited && status.signal == SIGTERM && process_->stderr_text().empty() &&
           process_->stdout_text().empty();
  }

  void archive(const test_support::ExitStatus& status) {
    last_stdout_ = process_->stdout_text();
    std::ostringstream header;
    header << "----- " << name_ << " pid " << process_->pid() << " ended: " << describe(status)
           << "\n";
    append_file(log_file_, header.str() + process_->stderr_text() + last_stdout_);
  }

  std::string name_;
  fs::path log_file_;
  Starter starter_;
  std::unique_ptr<test_support::ChildProcess> process_;
  State state_ = State::down;
  int expected_signal_ = 0;
  SteadyClock::time_point stopping_since_{}, restart_at_{}, started_at_{};
  std::optional<test_support::ExitStatus> last_status_;
  std::string last_log_tail_, last_stdout_;
  bool restart_enabled_ = true;
  bool paused_ = false;
  bool reported_slow_stop_ = false;
  bool self_kill_ok_ = false, last_self_killed_ = false;
  pid_t last_pid_ = -1;
  SteadyClock::time_point resume_at_{}, last_term_{};
  std::function<bool(int)> exit_code_ok_ = [](int) { return false; };
  std::function<bool(int)> term_exit_code_ok_ = [](int code) { return code == 0; };
};

}  // namespace faults
