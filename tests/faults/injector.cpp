#include "run.hpp"

#include <algorithm>
#include <csignal>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace faults {

void Run::inject_one() {
  // kill -9 or SIGTERM of a random process; it comes back after a short pause.
  struct Choice {
    const char* kind;
    int weight;
    Managed* target;
    int sig;
  };
  Managed* producer =
      producers_[std::uniform_int_distribution<std::size_t>(0, producers_.size() - 1)(random_)]
          .get();
  Managed* relay =
      std::uniform_int_distribution<int>(0, 1)(random_) == 0 ? relay_.get() : standby_relay_.get();
  Managed* consumer = consumer2_ && std::uniform_int_distribution<int>(0, 1)(random_) == 1
                          ? consumer2_.get()
                          : consumer_.get();
  std::vector<Choice> choices;
  if (jetstream()) {
    choices = {
        {"relay_kill9", 28, relay, SIGKILL},      {"relay_term", 10, relay, SIGTERM},
        {"relay_pause", 6, relay, SIGSTOP},       {"nats_pause", 6, nats_.get(), SIGSTOP},
        {"nats_kill9", 22, nats_.get(), SIGKILL}, {"nats_term", 10, nats_.get(), SIGTERM},
        {"producer_kill9", 8, producer, SIGKILL},
    };
    if (consumer != nullptr) {
      choices.push_back({"consumer_kill9", 16, consumer, SIGKILL});
      choices.push_back({"consumer_term", 5, consumer, SIGTERM});
    }
  } else {
    choices = {
        {"relay_kill9", 28, relay, SIGKILL},
        {"relay_term", 10, relay, SIGTERM},
        // On a directory of databases a pause is what makes the other relay
        // take over database by database while the paused one still
        // believes it holds them: more of them there.
        {"relay_pause", multi() ? 18 : 6, relay, SIGSTOP},
        {"broker_pause", 4, broker_.get(), SIGSTOP},
        {"broker_kill9", 20, broker_.get(), SIGKILL},
        {"broker_term", 8, broker_.get(), SIGTERM},
        // Two consumers in Redis inbox mode: kill them more often.
        {"consumer_kill9", redis_inbox() ? 40 : 22, consumer, SIGKILL},
        {"consumer_term", 4, consumer, SIGTERM},
        // Longer than the Redis inbox's 1 s lease: the other consumer takes
        // the claim over, and the paused one's complete() finds it lost.
        {"consumer_pause", redis_inbox() ? 4 : 0, consumer, SIGSTOP},
        // redis-server with its append-only file fsynced on every write:
        // killed, nothing completed is forgotten; paused past the inbox's
        // 2 s command timeout, calls fail and may still take effect later.
        {"redis_kill9", redis_inbox() ? 6 : 0, redis_.get(), SIGKILL},
        {"redis_pause", redis_inbox() ? 2 : 0, redis_.get(), SIGSTOP},
        {"producer_kill9", 8, producer, SIGKILL},
        {"operator_replay", 8, nullptr, 0},
        {"operator_drop", 8, nullptr, 0},
        {"disk_full", disk_ != nullptr ? 8 : 0, nullptr, 0},
    };
  }
  int total = 0;
  for (const auto& choice : choices) total += choice.weight;
  int pick = std::uniform_int_distribution<int>(0, total - 1)(random_);
  for (const auto& choice : choices) {
    if (pick >= choice.weight) {
      pick -= choice.weight;
      continue;
    }
    if (choice.target == nullptr) {
      if (std::string(choice.kind) == "disk_full") {
        if (!fill_disk()) return;
      } else if (disk_ != nullptr && disk_->full()) {
        return;  // the operator's commands would fail for want of space too
      } else if (!resolve_one_dead(std::string(choice.kind) == "operator_drop")) {
        // The operator's commands, while the relays run at full speed.
        return;
      }
      ++fault_kinds_[choice.kind];
      ++process_faults_;
      return;
    }
    if (!choice.target->running()) return;  // already down: try again next time
    // A daemon killed before it finished starting is a valid fault too, but
    // give each incarnation a moment so the pipeline makes progress.
    if (SteadyClock::now() - choice.target->started_at() < 100ms || choice.target->paused()) return;
    if (choice.sig == SIGSTOP) {
      // Longer than the relay's lease and ack timeout (1 s each).
      choice.target->pause_until(SteadyClock::now() + between(300, 2500));
    } else {
      choice.target->signal(choice.sig);
    }
    ++fault_kinds_[choice.kind];
    ++process_faults_;
    return;
  }
}

std::map<Managed*, std::size_t> Run::disk_reports(const std::vector<Managed*>& processes) {
  std::map<Managed*, std::size_t> reports;
  for (auto* process : processes) {
    auto text = process->current_stderr();
    std::size_t count = 0;
    for (const char* needle :
         {"full disk or I/O error", "failed with SQLITE_FULL", "failed with SQLITE_IOERR"}) {
      for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
        ++count;
      }
    }
    reports[process] = count;
  }
  return reports;
}

std::vector<Managed*> Run::producer_processes() {
  std::vector<Managed*> all;
  for (auto& producer : producers_) all.push_back(producer.get());
  return all;
}

std::vector<Managed*> Run::relay_processes() {
  return {relay_.get(), standby_relay_.get()};
}

bool Run::reported_since(const std::vector<Managed*>& processes,
                         std::map<Managed*, std::size_t>& before) {
  for (const auto& [process, count] : disk_reports(processes)) {
    if (count > before[process]) return true;
  }
  return false;
}

bool Run::fill_disk() {
  if (disk_->full()) return false;
  producer_reports_before_ = disk_reports(producer_processes());
  relay_reports_before_ = disk_reports(relay_processes());
  auto filled = disk_->fill();
  append_file(dir_ / "logs" / "disk.log", "filled with " + std::to_string(filled) + " bytes\n");
  producer_saw_full_ = relay_saw_full_ = false;
  disk_full_until_ = SteadyClock::now() + 5s;
  return true;
}

void Run::free_disk_when_due(bool now_anyway) {
  if (disk_ == nullptr || !disk_->full()) return;
  auto now = SteadyClock::now();
  if (!now_anyway && now < next_disk_check_) return;
  next_disk_check_ = now + 50ms;  // the logs are read anew each time
  if (!producer_saw_full_ && reported_since(producer_processes(), producer_reports_before_)) {
    producer_saw_full_ = true;
    disk_full_until_ = std::min(disk_full_until_, now + 2s);
  }
  if (!relay_saw_full_ && reported_since(relay_processes(), relay_reports_before_)) {
    relay_saw_full_ = true;
  }
  if (producer_saw_full_ && relay_saw_full_ && !disk_free_soon_) {
    disk_free_soon_ = true;
    disk_full_until_ = std::min(disk_full_until_, now + between(0, 300));
  }
  if (!now_anyway && now < disk_full_until_) return;
  disk_->free_space();
  disk_free_soon_ = false;
  if (producer_saw_full_) ++disk_full_producer_bites_;
  if (relay_saw_full_) ++disk_full_relay_bites_;
  append_file(dir_ / "logs" / "disk.log", std::string("freed; seen full by a producer: ") +
                                              (producer_saw_full_ ? "yes" : "no") +
                                              ", by a relay: " + (relay_saw_full_ ? "yes" : "no") +
                                              "\n");
}

Run::Takeovers Run::count_takeovers() {
  const std::string marker = ": active: holding the relay lease as '";
  std::map<std::string, std::map<long, std::string>> acquired;  // database, epoch: relay
  for (const std::string relay : {"relay", "relay-b"}) {
    auto path = dir_ / "logs" / (relay + ".log");
    if (!fs::exists(path)) continue;
    for (const auto& line : test_support::lines(test_support::read_file(path))) {
      auto at = line.find(marker);
      if (at == std::string::npos) continue;
      auto name_at = line.rfind("database ", at);
      auto epoch_at = line.find("(epoch ", at);
      if (name_at == std::string::npos || epoch_at == std::string::npos) continue;
      auto name = line.substr(name_at + 9, at - name_at - 9);
      acquired[name][std::atol(line.c_str() + epoch_at + 7)] = relay;
    }
  }
  Takeovers takeovers;
  for (const auto& [name, epochs] : acquired) {
    std::string previous;
    bool taken = false;
    for (const auto& [epoch, relay] : epochs) {
      if (!previous.empty() && relay != previous) {
        ++takeovers.count;
        taken = true;
      }
      previous = relay;
    }
    if (taken) ++takeovers.databases;
  }
  return takeovers;
}

long Run::count_in_logs(const std::vector<std::string>& names, const std::string& text) {
  long count = 0;
  for (const auto& name : names) {
    auto path = dir_ / "logs" / (name + ".log");
    if (!fs::exists(path)) continue;
    for (const auto& line : test_support::lines(test_support::read_file(path))) {
      if (line.find(text) != std::string::npos) ++count;
    }
  }
  return count;
}

}  // namespace faults
