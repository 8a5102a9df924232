// outbox-faults: attacks a running pipeline and checks afterwards that
// nothing was lost, duplicated, reordered or invented.
//
// It starts, on loopback and in a temporary directory, several producer
// processes sharing one outbox database, two outbox-relay processes (active
// and standby), outbox-broker, a fault proxy between the relays and the
// broker, and a consumer that applies every message once through
// outbox::Inbox (behind a second proxy). While the producers commit, a
// seeded injector kills (SIGKILL), stops (SIGTERM) and pauses (SIGSTOP, then
// SIGCONT) the relays, the broker, the consumer and producers at random
// moments and starts them again, and the proxies drop, delay, duplicate and
// reorder messages and cut connections; in front of them TCP proxies cut the
// relays' and the consumer's connections every 2 KB-400 KB or make them go
// silent (tests/faults/README.md). Some messages are too large for the broker
// and become dead; as an operator would, the injector drops them, or strips
// them and replays them, with outbox-relay drop / replay while the relays run.
// A producer that writes plain SQL (docs/schema.md) commits, among legal rows,
// rows that can never be delivered; each must become dead with a reason that
// names its field while everything else flows. app.db lives on a tmpfs of its
// own that the injector fills to the last block now and then (SQLITE_FULL for
// producers and relays) and frees again.
// When enough faults were injected (--faults) or the time is up (--duration),
// faults stop, the producers finish, everything drains (the remaining dead
// messages dropped or replayed), and the checker compares the producers'
// database, the broker and the consumer's database; dropped messages are
// expected nowhere.
//
// With --databases N, the producers write to N tenant databases in one
// directory (UUID v7 ids, the default for databases forwarded together), two
// outbox-relay run --db-dir processes share them database by database (each
// takes over the other's databases when their leases lapse), and the checker
// holds every database to the same promises, order per (database, topic,
// key); the SQL producer and the full disk are left out, and the summary
// ends with takeovers=T, the leases taken by the other relay process.
//
// With --sink jetstream, nats-server -js takes the broker's place (no proxy):
// the relays publish to a stream covering outbox.>, the injector kills, stops
// and pauses nats-server as it does the broker, two examples/jetstream_consumer
// processes apply the stream through one durable consumer and one inbox
// database and are killed too (also at their own crash points, right before
// and right after a side effect), and the checker reads the stream back and
// compares producers, stream and side effects. With --inbox redis, two consumers share one
// Redis inbox (redis-server started here, killed and paused too) and kill
// themselves around their side effects; the checker allows exactly the
// repeats the Redis inbox's contract allows. The last line is the summary:
//
//   faults=N lost=0 duplicated=0 reordered=0 phantom=0 dead=D
//
// where D counts the messages dead at the end, every one listed before it with
// its reason, and every one a row written to be undeliverable.
//
// Exit code 0 when every check passed, 1 when one failed (the seed and the
// first offending msg_ids are printed to replay it), 2 for bad flags, 3 when
// the run itself could not be carried out, 4 when --sink jetstream or --inbox
// redis cannot run here (no nats-server, libnats, hiredis or redis-server).
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "broker_topic.hpp"
#include "cli/args.hpp"
#include "outbox/relay_store.hpp"
#include "sqlite/sqlite.hpp"
#include "test_support.hpp"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#ifdef OUTBOX_FAULTS_REDIS_SERVER
#include <hiredis/hiredis.h>
#endif

#ifdef OUTBOX_RELAY_WITH_JETSTREAM
#include <nats/nats.h>

#include "relay/jetstream_sink.hpp"
#endif

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::atomic<bool> interrupted{false};
extern "C" void on_interrupt(int) {
  interrupted.store(true);
}

const std::vector<std::string> kTopics = {"orders", "payments"};

struct Settings {
  std::uint64_t seed = 0;
  long faults = 250;
  std::optional<milliseconds> duration;
  milliseconds max_load_time = 10min;
  int producers = 3;
  // More than 0: that many tenant databases in one directory, forwarded by
  // two outbox-relay run --db-dir processes (the producers share them out).
  int databases = 0;
  double rate = 100;  // transactions per second per producer
  int keys = 12;
  milliseconds drain_timeout = 180s;
  double proxy_rate = 1.0;
  // Fraction of messages too large for the broker (broker sink only).
  double oversize_rate = 0.002;
  // The producer that writes plain SQL (broker sink only; 0: none), and the
  // fraction of its messages that can never be delivered.
  double sql_rate = 30;
  double poison_rate = 0.05;
  bool hostile_order = false;
  // In front of each message-level proxy, a TCP proxy that cuts every
  // connection after a random number of bytes ("off": none).
  std::string cut_every = "2K-400K";
  double freeze = 0.05;  // share of those cuts that go silent instead
  bool keep = false;
  std::string sink = "broker";  // or "jetstream"
  // The JetStream consumers' --max-ack-pending (and fetch size); only 1 keeps
  // per-key order through their crashes.
  int consumer_max_ack_pending = 1;
  // "redis": two consumers share one Redis inbox (redis-server started here).
  std::string inbox = "sqlite";
  double self_kill_rate = 0.0005;  // --inbox redis: per claim and window
  // app.db on a tmpfs that the injector fills up now and then (needs mount).
  bool full_disk = true;
  std::uint64_t disk_bytes = 64ull << 20;
  std::string nats_server_binary;
  fs::path work_dir;
  std::string relay_binary = OUTBOX_BIN_OUTBOX_RELAY;
  std::string broker_binary = OUTBOX_BIN_OUTBOX_BROKER;
  std::string proxy_binary = OUTBOX_BIN_FAULT_PROXY;
  std::string producer_binary = OUTBOX_BIN_FAULTS_PRODUCER;
  std::string sql_producer_binary = OUTBOX_BIN_FAULTS_SQL_PRODUCER;
  std::string consumer_binary = OUTBOX_BIN_FAULTS_CONSUMER;
#ifdef OUTBOX_BIN_JETSTREAM_CONSUMER
  std::string jetstream_consumer_binary = OUTBOX_BIN_JETSTREAM_CONSUMER;
#endif
};

class HarnessError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string describe(const test_support::ExitStatus& status) {
  return status.exited ? "exit " + std::to_string(status.code)
                       : "signal " + std::to_string(status.signal);
}

void append_file(const fs::path& to, const std::string& text) {
  std::ofstream out(to, std::ios::app | std::ios::binary);
  out << text;
}

std::string tail_lines(const std::string& text, std::size_t count) {
  auto all = test_support::lines(text);
  std::string out;
  for (std::size_t i = all.size() > count ? all.size() - count : 0; i < all.size(); ++i) {
    out += "    " + all[i] + "\n";
  }
  return out;
}

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
  void pause_until(Clock::time_point resume_at) {
    if (state_ != State::running || paused_) return;
    process_->signal(SIGSTOP);
    paused_ = true;
    resume_at_ = resume_at;
  }
  void resume_if_due(Clock::time_point now, bool force = false) {
    if (!paused_ || (!force && now < resume_at_)) return;
    if (process_) process_->signal(SIGCONT);
    paused_ = false;
  }

  void start() {
    process_ = starter_();
    state_ = State::running;
    started_at_ = Clock::now();
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
    stopping_since_ = last_term_ = Clock::now();
    reported_slow_stop_ = false;
  }

  // A signal that does not end the process (the proxy's SIGUSR1).
  void notify(int sig) {
    if (state_ == State::running) process_->signal(sig);
  }

  // Call often: reaps exits, returns a line describing anything unexpected.
  std::optional<std::string> poll(Clock::time_point restart_at_if_down) {
    if (state_ == State::down || !process_) return std::nullopt;
    if (process_->running()) {
      auto now = Clock::now();
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

  bool due_for_restart(Clock::time_point now) const {
    return state_ == State::down && restart_enabled_ && now >= restart_at_;
  }
  // A process stopped for good (producers at the end of the load) stays down.
  void stay_down() { restart_enabled_ = false; }
  void set_restart_at(Clock::time_point at) { restart_at_ = at; }
  std::optional<test_support::ExitStatus> last_status() const { return last_status_; }
  pid_t last_pid() const { return last_pid_; }
  // The last exit was a SIGKILL the process sent itself (accept_self_kill).
  bool last_self_killed() const { return last_self_killed_; }
  // A SIGKILL the process sends itself after saying "kill -9 of itself" on
  // stderr is a fault it injects, not a problem.
  void accept_self_kill() { self_kill_ok_ = true; }
  const std::string& last_log_tail() const { return last_log_tail_; }
  std::string stdout_text() const { return last_stdout_; }
  Clock::time_point started_at() const { return started_at_; }
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
  Clock::time_point stopping_since_{}, restart_at_{}, started_at_{};
  std::optional<test_support::ExitStatus> last_status_;
  std::string last_log_tail_, last_stdout_;
  bool restart_enabled_ = true;
  bool paused_ = false;
  bool reported_slow_stop_ = false;
  bool self_kill_ok_ = false, last_self_killed_ = false;
  pid_t last_pid_ = -1;
  Clock::time_point resume_at_{}, last_term_{};
  std::function<bool(int)> exit_code_ok_ = [](int) { return false; };
  std::function<bool(int)> term_exit_code_ok_ = [](int code) { return code == 0; };
};

std::string read_endpoint(const fs::path& file) {
  auto text = test_support::read_file(file);
  return text.substr(0, text.find('\n'));
}

std::map<std::string, long> read_counts(const fs::path& file) {
  std::map<std::string, long> counts;
  for (const auto& line : test_support::lines(test_support::read_file(file))) {
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    counts[line.substr(0, eq)] = std::stol(line.substr(eq + 1));
  }
  return counts;
}

// --- a disk that fills up (--full-disk) ------------------------------------

// The producers' database on a file system of its own, a tmpfs, so that the
// suite can fill it to the last block and free it again, as a disk filled by
// logs or a runaway job would be. Mounting needs root (or CAP_SYS_ADMIN);
// without it mounted() is false and why_not() says why.
class SmallDisk {
 public:
  SmallDisk(fs::path dir, std::uint64_t bytes) : dir_(std::move(dir)), bytes_(bytes) {
    fs::create_directories(dir_);
    if (::mount("outbox-faults", dir_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
                options(bytes_).c_str()) != 0) {
      why_not_ = "mount -t tmpfs " + dir_.string() + ": " + std::strerror(errno);
      return;
    }
    mounted_ = true;
  }
  ~SmallDisk() noexcept {
    if (!mounted_) return;
    free_space();
    if (keep_) {
      // The tmpfs goes away with the mount: copy what it holds next to it.
      std::error_code ignored;
      fs::copy(dir_, fs::path(dir_.string() + ".kept"), fs::copy_options::recursive, ignored);
    }
    ::umount2(dir_.c_str(), MNT_DETACH);
  }
  SmallDisk(const SmallDisk&) = delete;
  SmallDisk& operator=(const SmallDisk&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& why_not() const { return why_not_; }
  const fs::path& dir() const { return dir_; }
  bool full() const { return full_; }
  void keep_contents() { keep_ = true; }

  // Writes a file until no block is left. Grows the file system first when the
  // data on it takes more than half, so that freeing the filler always leaves
  // room. Returns the bytes the filler took.
  std::uint64_t fill() {
    if (full_) return 0;
    struct statvfs stats {};
    if (::statvfs(dir_.c_str(), &stats) == 0) {
      auto used = static_cast<std::uint64_t>(stats.f_blocks - stats.f_bfree) * stats.f_frsize;
      if (used * 2 > bytes_ &&
          ::mount("outbox-faults", dir_.c_str(), "tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV,
                  options(bytes_ * 2).c_str()) == 0) {
        bytes_ *= 2;
      }
    }
    int fd = ::open(filler().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
      throw HarnessError("cannot create " + filler().string() + ": " + std::strerror(errno));
    full_ = true;
    std::uint64_t written = 0;
    std::string block(1 << 20, 'f');
    for (std::size_t size : {std::size_t{1} << 20, std::size_t{4096}, std::size_t{512}}) {
      for (;;) {
        auto n = ::write(fd, block.data(), size);
        if (n <= 0) break;  // ENOSPC (or a short write before it)
        written += static_cast<std::uint64_t>(n);
      }
    }
    ::close(fd);
    return written;
  }

  void free_space() noexcept {
    if (!full_) return;
    ::unlink(filler().c_str());
    full_ = false;
  }

 private:
  static std::string options(std::uint64_t bytes) {
    return "size=" + std::to_string(bytes) + ",mode=0700";
  }
  fs::path filler() const { return dir_ / "filler"; }

  fs::path dir_;
  std::uint64_t bytes_;
  bool mounted_ = false, full_ = false, keep_ = false;
  std::string why_not_;
};

// --- reading the three databases -----------------------------------------

class Database {
 public:
  explicit Database(const fs::path& path) {
    try {
      db_ = sqlite::open_file(path.string(), SQLITE_OPEN_READONLY);
    } catch (const outbox::Error& error) {
      throw HarnessError(error.what());
    }
    sqlite3_busy_timeout(db_.get(), 10000);
  }
  // One read transaction around several queries, so they see one snapshot.
  void begin() { rows("BEGIN"); }
  bool has_table(const std::string& name) {
    return !rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '" + name + "'")
                .empty();
  }

  // Every row as text columns.
  std::vector<std::vector<std::string>> rows(const std::string& sql) {
    try {
      sqlite::Statement statement(db_.get(), sql);
      auto use = statement.use();
      std::vector<std::vector<std::string>> result;
      while (use.step()) {
        std::vector<std::string> row;
        for (int i = 0; i < use.column_count(); ++i) row.push_back(use.column_text(i));
        result.push_back(std::move(row));
      }
      return result;
    } catch (const outbox::Error& error) {
      throw HarnessError(std::string("query failed: ") + error.what() + ": " + sql);
    }
  }

 private:
  sqlite::ConnectionPtr db_;
};

struct BrokerCopy {
  std::string topic;
  std::uint64_t offset = 0;
  std::string msg_id;
  std::string key;
};

// The rows faults_sql_producer made undeliverable on purpose, by msg_id.
struct Poison {
  std::string kind, expected_reason;
};
std::map<std::string, Poison> read_poison(Database& app) {
  std::map<std::string, Poison> poison;
  if (!app.has_table("poison")) return poison;
  for (auto& row : app.rows("SELECT msg_id, kind, expected_reason FROM poison")) {
    poison[row[0]] = {row[1], row[2]};
  }
  return poison;
}

// Every topic the broker may hold a message of: ours, and any other topic a
// row names that the broker accepts (1-249 of A-Z a-z 0-9 . _ -); a poison
// row's topic outside those cannot be stored there at all.
std::vector<std::string> broker_topics(const std::vector<fs::path>& app_dbs) {
  std::set<std::string> topics(kTopics.begin(), kTopics.end());
  for (const auto& app_db : app_dbs) {
    Database app(app_db);
    for (auto& row : app.rows("SELECT DISTINCT topic FROM outbox_messages"
                              " WHERE length(CAST(topic AS BLOB)) BETWEEN 1 AND 249"
                              " AND topic NOT GLOB '*[^A-Za-z0-9._-]*'")) {
      topics.insert(row[0]);
    }
  }
  return {topics.begin(), topics.end()};
}

// A msg_id short enough for a report line.
std::string shown(const std::string& msg_id) {
  if (msg_id.size() <= 60) return msg_id;
  return msg_id.substr(0, 40) + "...(" + std::to_string(msg_id.size()) + " bytes)";
}

std::vector<BrokerCopy> fetch_everything(const std::string& endpoint,
                                         const std::vector<std::string>& topics) {
  std::vector<BrokerCopy> all;
  for (const auto& topic : topics) {
    for (auto& message : test_support::fetch_topic(endpoint, topic)) {
      all.push_back({topic, message.offset, message.msg_id, message.key});
    }
  }
  return all;
}

// --- Redis (--inbox redis) ------------------------------------------------

// A Redis inbox record (docs/redis_inbox.md): "completed" or "processing", and
// the token of the claim that wrote it.
struct InboxRecord {
  std::string state, token;
};

#ifdef OUTBOX_FAULTS_REDIS_SERVER
const char* const kInboxKeyPrefix = "outbox:inbox:";

// One hiredis connection to the suite's redis-server.
class RedisReader {
 public:
  explicit RedisReader(int port) : context_(redisConnectWithTimeout("127.0.0.1", port, {2, 0})) {}
  ~RedisReader() {
    if (context_ != nullptr) redisFree(context_);
  }
  RedisReader(const RedisReader&) = delete;
  RedisReader& operator=(const RedisReader&) = delete;

  bool ping() {
    if (context_ == nullptr || context_->err != 0) return false;
    auto* reply = static_cast<redisReply*>(redisCommand(context_, "PING"));
    bool pong = reply != nullptr && reply->type == REDIS_REPLY_STATUS &&
                std::string(reply->str, reply->len) == "PONG";
    if (reply != nullptr) freeReplyObject(reply);
    return pong;
  }

  // The record of each msg_id (pipelined HMGET); a missing one has empty fields.
  std::map<std::string, InboxRecord> records(const std::vector<std::string>& msg_ids) {
    std::map<std::string, InboxRecord> found;
    if (context_ == nullptr || context_->err != 0) throw HarnessError("cannot connect to Redis");
    constexpr std::size_t kPipeline = 1000;
    for (std::size_t from = 0; from < msg_ids.size(); from += kPipeline) {
      auto to = std::min(msg_ids.size(), from + kPipeline);
      for (auto i = from; i < to; ++i) {
        auto key = kInboxKeyPrefix + msg_ids[i];
        redisAppendCommand(context_, "HMGET %b state token", key.data(), key.size());
      }
      for (auto i = from; i < to; ++i) {
        void* raw = nullptr;
        if (redisGetReply(context_, &raw) != REDIS_OK || raw == nullptr) {
          throw HarnessError(std::string("reading the Redis inbox: ") + context_->errstr);
        }
        auto* reply = static_cast<redisReply*>(raw);
        InboxRecord record;
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
          for (std::size_t field = 0; field < 2; ++field) {
            auto* value = reply->element[field];
            if (value->type == REDIS_REPLY_STRING) {
              (field == 0 ? record.state : record.token) = std::string(value->str, value->len);
            }
          }
        }
        freeReplyObject(reply);
        found[msg_ids[i]] = record;
      }
    }
    return found;
  }

 private:
  redisContext* context_;
};
#endif

// --- JetStream (--sink jetstream) -----------------------------------------

// The stream the relays publish to, and its duplicate window: far above the
// relays' retry horizon (ack-timeout 1s + connect-timeout 2s + backoff-max
// 500ms + lease 1s = 4.5 s) and above every pause the run injects.
const char* const kStream = "OUTBOX";

#ifdef OUTBOX_RELAY_WITH_JETSTREAM

constexpr auto kDuplicateWindow = 60s;

// $OUTBOX_NATS_SERVER if set, else nats-server on PATH or in /usr/sbin and
// /usr/bin; empty when there is none.
std::string find_nats_server() {
  if (const char* chosen = std::getenv("OUTBOX_NATS_SERVER"); chosen != nullptr) {
    return ::access(chosen, X_OK) == 0 ? std::string(chosen) : std::string();
  }
  std::string entries = std::getenv("PATH") != nullptr ? std::getenv("PATH") : "";
  entries += ":/usr/sbin:/usr/bin:/sbin:/usr/local/sbin:/usr/local/bin";
  std::size_t start = 0;
  while (start <= entries.size()) {
    auto end = entries.find(':', start);
    if (end == std::string::npos) end = entries.size();
    auto candidate = fs::path(entries.substr(start, end - start)) / "nats-server";
    std::error_code error;
    if (!candidate.parent_path().empty() && fs::is_regular_file(candidate, error) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate.string();
    }
    start = end + 1;
  }
  return {};
}

std::string nats_error(natsStatus status) {
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  return std::string(natsStatus_GetText(status)) +
         (detail != nullptr ? std::string(" ") + detail : "");
}

// One libnats connection with a JetStream context; no automatic reconnect.
class JetStreamClient {
 public:
  // Empty when the server does not answer (yet).
  static std::unique_ptr<JetStreamClient> connect(const std::string& url) {
    auto client = std::unique_ptr<JetStreamClient>(new JetStreamClient());
    natsOptions* options = nullptr;
    if (natsOptions_Create(&options) != NATS_OK) return nullptr;
    natsOptions_SetURL(options, url.c_str());
    natsOptions_SetAllowReconnect(options, false);
    natsOptions_SetTimeout(options, 2000);
    auto status = natsConnection_Connect(&client->connection_, options);
    natsOptions_Destroy(options);
    if (status != NATS_OK) return nullptr;
    jsOptions js_options;
    jsOptions_Init(&js_options);
    js_options.Wait = 10000;
    if (natsConnection_JetStream(&client->js_, client->connection_, &js_options) != NATS_OK)
      return nullptr;
    // JetStream answers once the server has recovered its store.
    jsAccountInfo* account = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    status = js_GetAccountInfo(&account, client->js_, nullptr, &code);
    if (account != nullptr) jsAccountInfo_Destroy(account);
    if (status != NATS_OK) return nullptr;
    return client;
  }
  ~JetStreamClient() {
    if (js_ != nullptr) jsCtx_Destroy(js_);
    if (connection_ != nullptr) natsConnection_Destroy(connection_);
  }
  JetStreamClient(const JetStreamClient&) = delete;
  JetStreamClient& operator=(const JetStreamClient&) = delete;

  void add_stream(const std::string& name, const std::string& subject,
                  std::chrono::nanoseconds duplicate_window) {
    jsStreamConfig config;
    jsStreamConfig_Init(&config);
    config.Name = name.c_str();
    const char* subjects[] = {subject.c_str()};
    config.Subjects = subjects;
    config.SubjectsLen = 1;
    config.Storage = js_FileStorage;
    config.Duplicates = duplicate_window.count();
    jsStreamInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    auto status = js_AddStream(&info, js_, &config, nullptr, &code);
    if (info != nullptr) jsStreamInfo_Destroy(info);
    if (status != NATS_OK)
      throw HarnessError("creating stream " + name + ": " + nats_error(status));
  }

  // Every message of the stream as (topic, stream sequence, msg_id, key),
  // topic and key decoded from the subject outbox.<topic>.<key>.
  std::vector<BrokerCopy> read_all(const std::string& stream) {
    jsStreamInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    auto status = js_GetStreamInfo(&info, js_, stream.c_str(), nullptr, &code);
    if (status != NATS_OK) throw HarnessError("reading stream info: " + nats_error(status));
    auto first = info->State.FirstSeq, last = info->State.LastSeq;
    jsStreamInfo_Destroy(info);
    std::vector<BrokerCopy> all;
    for (auto sequence = std::max<std::uint64_t>(first, 1); last > 0 && sequence <= last;
         ++sequence) {
      natsMsg* msg = nullptr;
      status = js_GetMsg(&msg, js_, stream.c_str(), sequence, nullptr, &code);
      if (status != NATS_OK) {
        throw HarnessError("reading stream sequence " + std::to_string(sequence) + ": " +
                           nats_error(status));
      }
      BrokerCopy copy;
      copy.offset = sequence;
      std::string subject = natsMsg_GetSubject(msg);
      const char* id = nullptr;
      if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id != nullptr) copy.msg_id = id;
      natsMsg_Destroy(msg);
      // outbox.<topic>.<key>, one token each; anything else keeps the raw
      // subject as its topic, so that the checker reports it.
      auto first_dot = subject.find('.');
      auto second_dot =
          first_dot == std::string::npos ? first_dot : subject.find('.', first_dot + 1);
      std::optional<std::string> topic, key;
      if (second_dot != std::string::npos && subject.substr(0, first_dot) == "outbox" &&
          subject.find('.', second_dot + 1) == std::string::npos) {
        topic = relay::decode_subject_token(
            std::string_view(subject).substr(first_dot + 1, second_dot - first_dot - 1));
        auto key_token = std::string_view(subject).substr(second_dot + 1);
        key = key_token == "_" ? std::optional<std::string>("")
                               : relay::decode_subject_token(key_token);
      }
      if (topic && key) {
        copy.topic = *topic;
        copy.key = *key;
      } else {
        copy.topic = "subject " + subject;
      }
      all.push_back(std::move(copy));
    }
    return all;
  }

 private:
  JetStreamClient() = default;
  natsConnection* connection_ = nullptr;
  jsCtx* js_ = nullptr;
};

#endif  // OUTBOX_RELAY_WITH_JETSTREAM

// --- the checker ----------------------------------------------------------

struct Finding {
  explicit Finding(std::string name_in) : name(std::move(name_in)) {}
  std::string name;
  long count = 0;
  std::vector<std::string> examples{};
  void add(const std::string& example) {
    ++count;
    if (examples.size() < 5) examples.push_back(example);
  }
};

struct Report {
  Finding lost{"lost"}, duplicated{"duplicated"}, reordered{"reordered"}, phantom{"phantom"};
  Finding no_message{"business row without its message"};
  Finding no_business{"message without its business row"};
  Finding undelivered{"outbox rows not delivered"};
  Finding wrong_offset{"delivered with another offset than the broker's"};
  Finding effect_missing{"consumer side effect missing"};
  Finding effect_twice{"consumer side effect applied more than once"};
  Finding effect_unknown{"consumer side effect for a message the broker does not have"};
  Finding dropped_stored{"dropped by the operator but stored by the broker"};
  Finding legal_dead{"a legal message ended dead"};
  Finding poison_delivered{"a row that can never be delivered is marked delivered"};
  Finding wrong_reason{"dead with a reason that does not name the field"};
  Finding inbox_unfinished{"Redis inbox record not completed for a stored message"};
  Finding collided{"msg_id committed in more than one database"};
  long committed = 0, stored = 0, effects = 0, dropped = 0, poison = 0, poison_dropped = 0;
  std::vector<std::string> dead;  // every dead message at the end, with its reason
  // --inbox redis: side effects repeated within the contract's at-least-once
  // window, by what allowed each.
  long repeated_after_kill = 0, repeated_after_claim_lost = 0, repeated_after_error = 0;

  std::vector<Finding*> all() {
    return {&lost,           &duplicated,       &reordered,      &phantom,
            &no_message,     &no_business,      &undelivered,    &wrong_offset,
            &effect_missing, &effect_twice,     &effect_unknown, &dropped_stored,
            &legal_dead,     &poison_delivered, &wrong_reason,   &inbox_unfinished,
            &collided};
  }
  bool passed() {
    for (auto* finding : all()) {
      if (finding->count != 0) return false;
    }
    return true;
  }
};

// What the checker needs to know of a Redis inbox shared by the consumers.
struct RedisInboxView {
  std::map<std::string, InboxRecord> records;  // of every stored msg_id
  std::set<long> killed_pids;                  // consumer processes that ended by SIGKILL
};

// With --inbox redis a side effect may repeat, as docs/redis_inbox.md says,
// only after its claim never completed: its consumer was killed (between the
// side effect and complete()), its complete() found the claim taken over
// (claim_lost) or failed. Exactly one effect per stored message carries the
// token of the claim the record shows completed; every other one must have
// one of those causes.
void check_redis_effects(Report& report, Database& consumer,
                         const std::map<std::string, const BrokerCopy*>& first_copy,
                         const RedisInboxView& redis) {
  struct Effect {
    std::string token;
    long pid;
  };
  std::map<std::string, std::vector<Effect>> effects;
  for (auto& row : consumer.rows("SELECT msg_id, claim_token, consumer FROM effects")) {
    auto dash = row[2].rfind('-');
    long pid = dash == std::string::npos ? -1 : std::atol(row[2].c_str() + dash + 1);
    effects[row[0]].push_back({row[1], pid});
    ++report.effects;
  }
  std::map<std::pair<std::string, std::string>, std::string> outcomes;
  for (auto& row : consumer.rows("SELECT msg_id, claim_token, outcome FROM claim_outcomes")) {
    outcomes[{row[0], row[1]}] = row[2];
  }
  for (const auto& [id, copy] : first_copy) {
    auto found = redis.records.find(id);
    auto record = found != redis.records.end() ? found->second : InboxRecord{};
    if (record.state != "completed") {
      report.inbox_unfinished.add(id + " (state '" + record.state + "')");
    }
    long winners = 0;
    for (const auto& effect : effects[id]) {
      if (!record.token.empty() && effect.token == record.token) {
        ++winners;
        continue;
      }
      auto outcome = outcomes.find({id, effect.token});
      if (outcome != outcomes.end()) {
        ++(outcome->second == "claim_lost" ? report.repeated_after_claim_lost
                                           : report.repeated_after_error);
      } else if (redis.killed_pids.count(effect.pid) != 0) {
        ++report.repeated_after_kill;
      } else {
        report.effect_twice.add(id + " (again by consumer pid " + std::to_string(effect.pid) +
                                ", whose claim was neither lost nor ended by a kill)");
      }
    }
    if (winners == 0) report.effect_missing.add(id + " (no effect under the completed claim)");
    if (winners > 1) {
      report.effect_twice.add(id + " (" + std::to_string(winners) +
                              " effects under the completed claim)");
    }
  }
  for (const auto& [id, list] : effects) {
    if (!first_copy.count(id)) report.effect_unknown.add(id);
  }
}

// What the producers committed: business rows (by msg_id), and the outbox
// rows by msg_id with their database (its number) and commit order there.
struct OutboxRow {
  std::size_t db;
  long seq;
  std::string topic, key;
};
struct Committed {
  std::set<std::string> business;
  std::map<std::string, OutboxRow> outbox;
};

// Adds what database number `db` committed to `committed`; a msg_id another
// database committed too is added to `collided` (when given) and kept once.
void read_committed(Database& app, std::size_t db, Committed& committed,
                    Finding* collided = nullptr) {
  for (auto& row : app.rows("SELECT msg_id FROM business")) committed.business.insert(row[0]);
  for (auto& row :
       app.rows("SELECT seq, msg_id, topic, coalesce(partition_key, '') FROM outbox_messages")) {
    auto [it, fresh] =
        committed.outbox.try_emplace(row[1], OutboxRow{db, std::stol(row[0]), row[2], row[3]});
    if (!fresh && collided != nullptr) {
      collided->add(shown(row[1]) + " (databases " + std::to_string(it->second.db + 1) + " and " +
                    std::to_string(db + 1) + ")");
    }
  }
}

// The name of database number `db` in a report line: nothing with one
// database, "tenant-0007.db " with several.
std::string database_label(const std::vector<fs::path>& app_dbs, std::size_t db) {
  return app_dbs.size() > 1 ? app_dbs[db].filename().string() + " " : std::string();
}

// Without a consumer database (no consumer ran) the consumer checks are left
// out. With several outbox databases, order is checked per (database, topic,
// key): the order contract is per database.
Report check(const std::vector<fs::path>& app_dbs, const std::optional<fs::path>& consumer_db,
             const std::vector<BrokerCopy>& stored, const RedisInboxView* redis) {
  Report report;
  Committed committed;
  std::map<std::string, Poison> poison;
  // Dropped by the operator (state 3): settled without being sent, so
  // expected neither at the broker nor at the consumer. Dead (state 2) at the
  // end: only rows written to be undeliverable, each with a reason that names
  // what is wrong with it.
  std::set<std::string> dropped;
  std::vector<std::pair<std::string, std::string>> delivered;  // msg_id, recorded offset
  for (std::size_t db = 0; db < app_dbs.size(); ++db) {
    Database app(app_dbs[db]);
    app.begin();
    read_committed(app, db, committed, &report.collided);
    auto poison_here = read_poison(app);
    const auto label = database_label(app_dbs, db);
    for (auto& row : app.rows(
             "SELECT m.msg_id, coalesce(d.state, -1), coalesce(d.broker_offset, -1),"
             " m.seq <= coalesce((SELECT settled_through_seq FROM outbox_relay_cursor), 0),"
             " m.seq, coalesce(d.last_error, '')"
             " FROM outbox_messages m LEFT JOIN outbox_delivery d USING (seq) ORDER BY m.seq")) {
      bool settled = row[3] == "1";
      auto found = poison_here.find(row[0]);
      if (row[1] == "3") {
        dropped.insert(row[0]);
        if (found != poison_here.end()) ++report.poison_dropped;
      } else if (row[1] == "2") {
        auto line = label + "seq " + row[4] + " msg_id " + shown(row[0]) + " (" +
                    (found != poison_here.end() ? found->second.kind : "legal") + "): " + row[5];
        report.dead.push_back(line);
        if (found == poison_here.end()) {
          report.legal_dead.add(line);
        } else if (row[5].find(found->second.expected_reason) == std::string::npos) {
          report.wrong_reason.add(line + " (expected to mention '" + found->second.expected_reason +
                                  "')");
        }
      } else if (row[1] == "1" && found != poison_here.end()) {
        report.poison_delivered.add(label + shown(row[0]) + " (" + found->second.kind + ")");
      } else if (row[1] != "1" && !(settled && row[1] == "-1")) {
        report.undelivered.add(label + shown(row[0]) + " (state " + row[1] + ")");
      }
    }
    for (auto& row : app.rows("SELECT m.msg_id, d.broker_offset FROM outbox_messages m"
                              " JOIN outbox_delivery d USING (seq) WHERE d.state = 1")) {
      delivered.emplace_back(row[0], row[1]);
    }
    poison.merge(poison_here);
  }
  const auto& [business, outbox] = committed;
  report.committed = static_cast<long>(business.size());
  for (const auto& id : business) {
    if (!outbox.count(id)) report.no_message.add(id);
  }
  for (const auto& [id, row] : outbox) {
    if (!business.count(id)) report.no_business.add(id);
  }
  report.poison = static_cast<long>(poison.size());
  report.dropped = static_cast<long>(dropped.size());

  // What the broker stored.
  std::map<std::string, const BrokerCopy*> first_copy;
  std::map<std::tuple<std::size_t, std::string, std::string>, std::vector<const BrokerCopy*>>
      per_key;
  for (const auto& copy : stored) {
    auto [it, fresh] = first_copy.emplace(copy.msg_id, &copy);
    if (!fresh) {
      report.duplicated.add(copy.msg_id + " (" + copy.topic + " offsets " +
                            std::to_string(it->second->offset) + " and " +
                            std::to_string(copy.offset) + ")");
    }
    auto committed_row = outbox.find(copy.msg_id);
    if (committed_row == outbox.end() || poison.count(copy.msg_id)) {
      report.phantom.add(shown(copy.msg_id) + " (" + copy.topic + " offset " +
                         std::to_string(copy.offset) +
                         (poison.count(copy.msg_id) ? ", can never be delivered" : "") + ")");
      continue;
    }
    per_key[{committed_row->second.db, copy.topic, copy.key}].push_back(&copy);
  }
  report.stored = static_cast<long>(stored.size());
  for (const auto& id : business) {
    if (first_copy.count(id) == 0 && dropped.count(id) == 0 && poison.count(id) == 0)
      report.lost.add(id);
  }
  for (const auto& id : dropped) {
    if (first_copy.count(id) != 0) report.dropped_stored.add(id);
  }
  // Per (database, topic, key), offsets must follow commit order (seq).
  for (auto& [db_topic_key, copies] : per_key) {
    std::sort(copies.begin(), copies.end(),
              [](const BrokerCopy* a, const BrokerCopy* b) { return a->offset < b->offset; });
    const auto label = database_label(app_dbs, std::get<0>(db_topic_key));
    long highest_seq = 0;
    std::string highest_id;
    for (const auto* copy : copies) {
      const auto& row = outbox.at(copy->msg_id);
      if (row.topic != copy->topic || row.key != copy->key) {
        report.reordered.add(copy->msg_id + " (stored under " + copy->topic + "/" + copy->key +
                             ", committed under " + label + row.topic + "/" + row.key + ")");
        continue;
      }
      if (row.seq < highest_seq) {
        report.reordered.add(copy->msg_id + " (" + label + "seq " + std::to_string(row.seq) +
                             " at " + copy->topic + " offset " + std::to_string(copy->offset) +
                             ", after " + highest_id + " seq " + std::to_string(highest_seq) +
                             ", key " + copy->key + ")");
      } else {
        highest_seq = row.seq;
        highest_id = copy->msg_id;
      }
    }
  }
  for (const auto& [id, offset] : delivered) {
    auto found = first_copy.find(id);
    if (found == first_copy.end()) continue;  // counted as lost
    if (offset != std::to_string(found->second->offset)) {
      report.wrong_offset.add(id + " (outbox says " + offset + ", broker " +
                              std::to_string(found->second->offset) + ")");
    }
  }

  // What the consumer did.
  if (!consumer_db) return report;
  Database consumer(*consumer_db);
  if (redis != nullptr) {
    check_redis_effects(report, consumer, first_copy, *redis);
    return report;
  }
  std::map<std::string, long> effects;
  for (auto& row : consumer.rows("SELECT msg_id, count(*) FROM effects GROUP BY msg_id")) {
    effects[row[0]] = std::stol(row[1]);
    report.effects += std::stol(row[1]);
  }
  for (const auto& [id, copy] : first_copy) {
    auto found = effects.find(id);
    if (found == effects.end())
      report.effect_missing.add(id);
    else if (found->second > 1)
      report.effect_twice.add(id + " (" + std::to_string(found->second) + " times)");
  }
  for (const auto& [id, times] : effects) {
    if (!first_copy.count(id)) report.effect_unknown.add(id);
  }
  return report;
}

long count_effects(const fs::path& consumer_db) {
  if (!fs::exists(consumer_db)) return 0;
  try {
    Database consumer(consumer_db);
    auto rows = consumer.rows("SELECT count(DISTINCT msg_id) FROM effects");
    return rows.empty() ? 0 : std::stol(rows[0][0]);
  } catch (const HarnessError&) {
    return 0;  // the table is not there yet
  }
}

// The consumers' side effects against what the producers committed, by
// msg_id (--sink jetstream): each committed message applied once, none that
// was not committed, and per (topic, key) applied in commit (seq) order.
struct EffectsReport {
  Finding lost{"side effects lost"}, duplicated{"side effects duplicated"},
      reordered{"side effects reordered"}, phantom{"side effects phantom"};
  std::vector<Finding*> all() { return {&lost, &duplicated, &reordered, &phantom}; }
};

EffectsReport check_effects(const fs::path& app_db, const fs::path& consumer_db) {
  EffectsReport report;
  Database app(app_db);
  app.begin();
  Committed committed;
  read_committed(app, 0, committed);
  const auto& [business, outbox] = committed;
  Database consumer(consumer_db);
  std::map<std::string, long> times;
  std::map<std::pair<std::string, std::string>, std::pair<long, std::string>> highest;
  for (auto& row : consumer.rows("SELECT msg_id FROM effects ORDER BY id")) {
    const auto& id = row[0];
    if (++times[id] == 2) report.duplicated.add(id);
    auto found = outbox.find(id);
    if (found == outbox.end() || !business.count(id)) {
      report.phantom.add(id);
      continue;
    }
    auto& [seq, last_id] = highest[{found->second.topic, found->second.key}];
    if (found->second.seq < seq) {
      report.reordered.add(id + " (seq " + std::to_string(found->second.seq) + " applied after " +
                           last_id + " seq " + std::to_string(seq) + ", key " + found->second.key +
                           ")");
    } else {
      seq = found->second.seq;
      last_id = id;
    }
  }
  for (const auto& id : business) {
    if (!times.count(id)) report.lost.add(id);
  }
  return report;
}

// --- the run --------------------------------------------------------------

class Run {
 public:
  // `disk`: where app.db lives when the full-disk fault is on (null: off).
  Run(Settings settings, SmallDisk* disk)
      : settings_(std::move(settings)), random_(settings_.seed), disk_(disk) {
    dir_ = settings_.work_dir;
    fs::create_directories(dir_ / "logs");
    app_db_ = (disk_ != nullptr ? disk_->dir() : dir_) / "app.db";
    if (multi()) {
      tenant_dir_ = dir_ / "tenants";
      fs::create_directories(tenant_dir_);
      for (int i = 1; i <= settings_.databases; ++i) {
        char name[32];
        std::snprintf(name, sizeof name, "tenant-%04d.db", i);
        app_dbs_.push_back(tenant_dir_ / name);
      }
    } else {
      app_dbs_ = {app_db_};
    }
    broker_db_ = dir_ / "broker.db";
    // --inbox redis: the side effects of both consumers, as another service's store.
    consumer_db_ = dir_ / (redis_inbox() ? "effects.db" : "consumer.db");
    proxy_stats_ = dir_ / "proxy.stats";
    consumer_proxy_stats_ = dir_ / "consumer-proxy.stats";
    relay_cutter_stats_ = dir_ / "relay-cutter.stats";
    consumer_cutter_stats_ = dir_ / "consumer-cutter.stats";
  }

  bool jetstream() const { return settings_.sink == "jetstream"; }
  bool redis_inbox() const { return settings_.inbox == "redis"; }
  bool multi() const { return settings_.databases > 0; }
  bool cutting() const { return !jetstream() && settings_.cut_every != "off"; }

  std::vector<std::pair<std::string, fs::path>> proxy_stats() const {
    return {{"proxy_", proxy_stats_},
            {"consumer_proxy_", consumer_proxy_stats_},
            {"relay_cutter_", relay_cutter_stats_},
            {"consumer_cutter_", consumer_cutter_stats_}};
  }

  int execute() {
    auto started = Clock::now();
    start_everything();
    load_with_faults();
    auto load_seconds = std::chrono::duration<double>(Clock::now() - started).count();
    say("load phase over after " + std::to_string(static_cast<long>(load_seconds)) +
        " s; draining");
    bool drained = drain();
    auto stored = read_destination();
    // The Redis inbox's records, read while redis-server still runs.
    std::optional<RedisInboxView> redis;
    if (redis_inbox()) {
      std::vector<std::string> ids;
      for (const auto& copy : stored) ids.push_back(copy.msg_id);
      redis = RedisInboxView{read_inbox_records(ids), {}};
    }
    stop_everything();
    if (redis) redis->killed_pids = killed_consumer_pids_;
    const bool consumers_ran = consumer_ != nullptr;
    auto report =
        check(app_dbs_, consumers_ran ? std::optional<fs::path>(consumer_db_) : std::nullopt,
              stored, redis ? &*redis : nullptr);
    std::optional<EffectsReport> effects;
    if (jetstream() && consumers_ran) effects = check_effects(app_db_, consumer_db_);
    long total_faults = process_faults_ + proxy_faults();

    std::ostringstream kinds;
    for (const auto& [kind, n] : fault_kinds_) kinds << ' ' << kind << '=' << n;
    for (const auto& [prefix, stats] : proxy_stats()) {
      if (!fs::exists(stats)) continue;
      for (const auto& [kind, n] : read_counts(stats)) {
        if (kind != "total" && kind != "faults_on" && kind.rfind("forwarded", 0) != 0) {
          kinds << ' ' << prefix << kind << '=' << n;
        }
      }
    }
    std::printf(
        "seed=%llu elapsed=%.0fs committed=%ld stored=%ld effects=%ld "
        "producer_duplicates_reported=%ld\n",
        static_cast<unsigned long long>(settings_.seed),
        std::chrono::duration<double>(Clock::now() - started).count(), report.committed,
        report.stored, report.effects, duplicates_reported_);
    std::printf("injected:%s\n", kinds.str().c_str());
    if (!jetstream()) {
      std::printf("dead messages: %ld replayed, %ld dropped (%ld dropped rows in the outbox)\n",
                  replayed_, dropped_, report.dropped);
      std::printf(
          "undeliverable rows from the SQL producer: %ld committed, %ld replayed unchanged (dead "
          "again), %ld dropped, %ld left dead\n",
          report.poison, replayed_poison_, report.poison_dropped,
          report.poison - report.poison_dropped);
    }
    for (const auto& line : report.dead) std::printf("dead: %s\n", line.c_str());
    Takeovers takeovers;
    if (multi()) {
      takeovers = count_takeovers();
      std::printf(
          "databases: %d in one directory, forwarded by 2 outbox-relay run --db-dir; lease "
          "takeovers: %ld (a database's lease taken by the other relay process) in %ld databases\n",
          settings_.databases, takeovers.count, takeovers.databases);
    }
    if (disk_ != nullptr) {
      std::vector<std::string> producers;
      for (auto& producer : producers_) producers.push_back(producer->name());
      std::printf(
          "full disk: app.db's tmpfs filled %ld times, seen full (SQLITE_FULL or SQLITE_IOERR) by "
          "a producer during %ld of them, by a relay during %ld; first failures reported by "
          "producers %ld, by relays %ld (SQLITE_FULL) + %ld (SQLITE_IOERR)\n",
          fault_kinds_["disk_full"], disk_full_producer_bites_, disk_full_relay_bites_,
          count_in_logs(producers, "full disk or I/O error"),
          count_in_logs({"relay", "relay-b"}, "failed with SQLITE_FULL"),
          count_in_logs({"relay", "relay-b"}, "failed with SQLITE_IOERR"));
    }
    if (redis_inbox()) {
      std::vector<std::string> consumers = {"consumer", "consumer-b"};
      std::printf(
          "redis inbox: 2 consumers, %ld side effects, %ld repeated as the contract allows (%ld "
          "after a kill -9 between side effect and complete, %ld after a lost claim, %ld after a "
          "failed complete); consumers killed themselves %ld times: %ld after begin before the "
          "side effect, %ld between the side effect and complete, %ld after complete before the "
          "offset commit\n",
          report.effects,
          report.repeated_after_kill + report.repeated_after_claim_lost +
              report.repeated_after_error,
          report.repeated_after_kill, report.repeated_after_claim_lost, report.repeated_after_error,
          consumer_self_kills_, count_in_logs(consumers, "kill -9 of itself after begin"),
          count_in_logs(consumers, "kill -9 of itself between the side effect"),
          count_in_logs(consumers, "kill -9 of itself after complete"));
    }
    if (jetstream() && !consumers_ran) {
      std::printf(
          "sink=jetstream stream=%s: consumer side effects not checked (no consumer runs)\n",
          kStream);
    }
    std::vector<Finding*> findings = report.all();
    if (effects) {
      for (auto* finding : effects->all()) findings.push_back(finding);
      std::printf("side effects: lost=%ld duplicated=%ld reordered=%ld phantom=%ld\n",
                  effects->lost.count, effects->duplicated.count, effects->reordered.count,
                  effects->phantom.count);
    }
    bool findings_clear = true;
    for (auto* finding : findings) {
      if (finding->count == 0) continue;
      findings_clear = false;
      std::printf("FAILED %s: %ld, first:", finding->name.c_str(), finding->count);
      for (const auto& example : finding->examples) std::printf(" %s;", example.c_str());
      std::printf("\n");
    }
    for (const auto& anomaly : anomalies_) std::printf("FAILED process: %s\n", anomaly.c_str());
    bool passed = report.passed() && findings_clear && anomalies_.empty() && drained;
    if (!drained)
      std::printf("FAILED drain: the pipeline did not drain within %lld ms\n",
                  static_cast<long long>(settings_.drain_timeout.count()));
    if (!passed) {
      const std::string pending =
          settings_.consumer_max_ack_pending == 1
              ? ""
              : " --consumer-max-ack-pending " + std::to_string(settings_.consumer_max_ack_pending);
      std::printf(
          "replay with: outbox-faults --seed %llu --faults %ld%s%s%s%s%s --keep   (logs in %s)\n",
          static_cast<unsigned long long>(settings_.seed), settings_.faults,
          multi() ? (" --databases " + std::to_string(settings_.databases)).c_str() : "",
          settings_.hostile_order ? " --hostile-order" : "", jetstream() ? " --sink jetstream" : "",
          redis_inbox() ? " --inbox redis" : "", pending.c_str(), (dir_ / "logs").c_str());
    }
    std::printf("faults=%ld lost=%ld duplicated=%ld reordered=%ld phantom=%ld dead=%zu%s\n",
                total_faults, report.lost.count, report.duplicated.count, report.reordered.count,
                report.phantom.count, report.dead.size(),
                multi() ? (" takeovers=" + std::to_string(takeovers.count)).c_str() : "");
    std::fflush(stdout);
    return passed ? 0 : 1;
  }

 private:
  void say(const std::string& line) { std::fprintf(stderr, "outbox-faults: %s\n", line.c_str()); }

  milliseconds between(int low, int high) {
    return milliseconds(std::uniform_int_distribution<int>(low, high)(random_));
  }

  std::map<std::string, InboxRecord> read_inbox_records(const std::vector<std::string>& ids) {
#ifdef OUTBOX_FAULTS_REDIS_SERVER
    return RedisReader(redis_port_).records(ids);
#else
    (void)ids;
    return {};
#endif
  }

  // redis-server on 127.0.0.1, a port the system picked, append-only file
  // fsynced on every write, in the work directory.
  void start_redis() {
#ifdef OUTBOX_FAULTS_REDIS_SERVER
    auto data = dir_ / "redis";
    fs::create_directories(data);
    // Should another program take the port before redis-server binds it, try a new one.
    for (int attempt = 0; attempt < 5; ++attempt) {
      if (redis_) {
        redis_->stay_down();
        redis_->signal(SIGKILL);
        redis_->poll(Clock::now());
      }
      redis_port_ = test_support::free_loopback_port();
      redis_ = std::make_unique<Managed>(
          "redis-server", dir_ / "logs" / "redis-server.log", [this, data] {
            return std::make_unique<test_support::ChildProcess>(
                OUTBOX_FAULTS_REDIS_SERVER,
                std::vector<std::string>{"--bind", "127.0.0.1", "--port",
                                         std::to_string(redis_port_), "--dir", data.string(),
                                         "--save", "", "--appendonly", "yes", "--appendfsync",
                                         "always", "--daemonize", "no", "--logfile", ""},
                dir_);
          });
      redis_->start();
      bool up = test_support::wait_until(
          [&] {
            redis_->poll(Clock::now());  // a lost bind race ends it
            return !redis_->running() || RedisReader(redis_port_).ping();
          },
          20s, 20ms);
      if (up && redis_->running()) {
        say("redis-server at redis://127.0.0.1:" + std::to_string(redis_port_));
        return;
      }
    }
    throw HarnessError("redis-server did not start on 127.0.0.1 (see logs/redis-server.log)");
#endif
  }

  std::vector<BrokerCopy> read_destination() {
    if (!jetstream()) return fetch_everything(broker_endpoint_, broker_topics(app_dbs_));
#ifdef OUTBOX_RELAY_WITH_JETSTREAM
    auto client = wait_for_nats(30s);
    if (!client) throw HarnessError("nats-server does not answer; cannot read the stream");
    return client->read_all(kStream);
#else
    return {};
#endif
  }

#ifdef OUTBOX_RELAY_WITH_JETSTREAM
  // A JetStream connection once the server answers (it may be restarting).
  std::unique_ptr<JetStreamClient> wait_for_nats(milliseconds timeout) {
    std::unique_ptr<JetStreamClient> client;
    test_support::wait_until(
        [&] {
          client = JetStreamClient::connect(nats_url_);
          return client != nullptr;
        },
        timeout, 20ms);
    return client;
  }
#endif

  // nats-server -js on 127.0.0.1, a port the system picked; restarts use the
  // same port and store directory. Then the stream covering outbox.>.
  void start_nats() {
#ifdef OUTBOX_RELAY_WITH_JETSTREAM
    auto store = dir_ / "nats-store";
    fs::create_directories(store);
    std::unique_ptr<JetStreamClient> client;
    // Should another program take the port before nats-server binds it, try a new one.
    for (int attempt = 0; attempt < 5 && !client; ++attempt) {
      if (nats_) {
        nats_->stay_down();
        nats_->signal(SIGKILL);
        nats_->poll(Clock::now());
      }
      nats_port_ = test_support::free_loopback_port();
      nats_url_ = "nats://127.0.0.1:" + std::to_string(nats_port_);
      nats_ = std::make_unique<Managed>(
          "nats-server", dir_ / "logs" / "nats-server.log", [this, store] {
            return std::make_unique<test_support::ChildProcess>(
                settings_.nats_server_binary,
                std::vector<std::string>{"-js", "-a", "127.0.0.1", "-p", std::to_string(nats_port_),
                                         "-sd", store.string()},
                dir_);
          });
      // nats-server ends with exit code 1 after a clean shutdown on SIGTERM.
      nats_->accept_term_exit_codes([](int code) { return code == 0 || code == 1; });
      nats_->start();
      client = wait_for_nats(20s);
    }
    if (!client)
      throw HarnessError("nats-server did not start on 127.0.0.1 (see logs/nats-server.log)");
    client->add_stream(kStream, "outbox.>", kDuplicateWindow);
    say("nats-server at " + nats_url_ + ", stream " + kStream + " on outbox.>");
#endif
  }

  void start_everything() {
    if (jetstream()) {
      start_nats();
    } else {
      start_broker_and_proxies();
      if (redis_inbox()) start_redis();
    }
    start_producers_and_relays();
  }

  void start_broker_and_proxies() {
    // Broker first, on a port the system picks; restarts bind the same endpoint.
    broker_ = std::make_unique<Managed>("broker", dir_ / "logs" / "broker.log", [this] {
      auto endpoint_file = dir_ / ("broker-endpoint-" + std::to_string(++broker_starts_));
      return std::make_unique<test_support::ChildProcess>(
          settings_.broker_binary,
          std::vector<std::string>{
              "serve", "--db", broker_db_.string(), "--bind",
              broker_endpoint_.empty() ? "tcp://127.0.0.1:*" : broker_endpoint_, "--endpoint-file",
              endpoint_file.string(), "--sync", "normal", "--max-message-bytes", "16k",
              "--log-level", "info"},
          dir_);
    });
    // Exit code 4: the port of the killed broker is not free yet; start again.
    broker_->accept_exit_codes([](int code) { return code == 4; });
    broker_->start();
    auto first_endpoint_file = dir_ / "broker-endpoint-1";
    if (!test_support::wait_until([&] { return fs::exists(first_endpoint_file); }, 20s)) {
      throw HarnessError("outbox-broker did not start listening");
    }
    broker_endpoint_ = read_endpoint(first_endpoint_file);

    // One faulty network between the relays and the broker, one between the
    // consumer and the broker.
    std::vector<std::string> message_faults = {"--rate", std::to_string(settings_.proxy_rate)};
    if (settings_.hostile_order) message_faults.push_back("--hostile-order");
    proxy_ = start_proxy("proxy", proxy_stats_, settings_.seed ^ 0x5bd1e995u, broker_endpoint_,
                         message_faults, proxy_endpoint_);
    consumer_proxy_ =
        start_proxy("consumer-proxy", consumer_proxy_stats_, settings_.seed ^ 0x2545f491u,
                    broker_endpoint_, message_faults, consumer_proxy_endpoint_);
    relay_entry_ = proxy_endpoint_;
    consumer_entry_ = consumer_proxy_endpoint_;
    if (!cutting()) return;
    // In front of each, the TCP connection itself is cut at random (or goes
    // silent), as by a NAT or load balancer: relays and consumer must notice
    // from their sockets and carry on over a new connection.
    std::vector<std::string> cuts = {"--cut-every", settings_.cut_every, "--freeze",
                                     std::to_string(settings_.freeze)};
    relay_cutter_ = start_proxy("relay-cutter", relay_cutter_stats_, settings_.seed ^ 0x9e3779b9u,
                                proxy_endpoint_, cuts, relay_entry_);
    consumer_cutter_ =
        start_proxy("consumer-cutter", consumer_cutter_stats_, settings_.seed ^ 0x7f4a7c15u,
                    consumer_proxy_endpoint_, cuts, consumer_entry_);
  }

  void start_producers_and_relays() {
    // One database: every producer writes to it. Several: producer i writes
    // to databases i, i + P, i + 2P, ...
    const int producers =
        multi() ? std::min(settings_.producers, settings_.databases) : settings_.producers;
    for (int i = 0; i < producers; ++i) {
      auto name = "producer-" + std::to_string(i + 1);
      auto seed = settings_.seed * 1000003u + static_cast<std::uint64_t>(i);
      std::vector<std::string> args;
      const auto first = multi() ? static_cast<std::size_t>(i) : 0;
      const auto step = multi() ? static_cast<std::size_t>(producers) : 1;
      for (auto db = first; db < app_dbs_.size(); db += step) {
        args.push_back("--db");
        args.push_back(app_dbs_[db].string());
      }
      for (const auto& arg :
           {std::string("--name"), name, std::string("--seed"), std::to_string(seed),
            std::string("--rate"), std::to_string(settings_.rate), std::string("--keys"),
            std::to_string(settings_.keys), std::string("--oversize-rate"),
            std::to_string(jetstream() ? 0 : settings_.oversize_rate)}) {
        args.push_back(arg);
      }
      // Databases forwarded together: ids unique across them (docs/operations.md).
      if (multi()) {
        args.push_back("--ids");
        args.push_back("uuid_v7");
      }
      producers_.push_back(
          std::make_unique<Managed>(name, dir_ / "logs" / (name + ".log"), [this, args] {
            return std::make_unique<test_support::ChildProcess>(settings_.producer_binary, args,
                                                                dir_);
          }));
      producers_.back()->start();
    }
    // The relay refuses a database without the outbox tables (and the checker
    // reads every one): wait for the producers to create them.
    for (const auto& app_db : app_dbs_) {
      if (!test_support::wait_until(
              [&] {
                tend(true);
                try {
                  outbox::RelayOptions options;
                  options.read_only = true;
                  outbox::RelayStore::open(app_db, options);
                  return true;
                } catch (const outbox::Error&) {
                  return false;
                }
              },
              30s, 10ms)) {
        throw HarnessError("no producer created the outbox schema in " + app_db.string());
      }
    }
    if (!jetstream() && !multi() && settings_.sql_rate > 0) {
      // Another language's producer: plain SQL on the tables the C++ one created.
      auto seed = settings_.seed * 1000003u + 999u;
      producers_.push_back(std::make_unique<Managed>(
          "sql-producer", dir_ / "logs" / "sql-producer.log", [this, seed] {
            return std::make_unique<test_support::ChildProcess>(
                settings_.sql_producer_binary,
                std::vector<std::string>{"--db", app_db_.string(), "--name", "sql", "--seed",
                                         std::to_string(seed), "--rate",
                                         std::to_string(settings_.sql_rate), "--keys",
                                         std::to_string(settings_.keys), "--poison-rate",
                                         std::to_string(settings_.poison_rate)},
                dir_);
          }));
      producers_.back()->start();
    }

    auto relay_starter = [this] {
      std::vector<std::string> args = {"run"};
      args.push_back(multi() ? "--db-dir" : "--db");
      args.push_back(multi() ? tenant_dir_.string() : app_db_.string());
      if (jetstream()) {
        for (const auto& arg :
             {std::string("--sink"), std::string("jetstream"), std::string("--nats-url"), nats_url_,
              std::string("--stream"), std::string(kStream)}) {
          args.push_back(arg);
        }
      } else {
        args.push_back("--broker");
        args.push_back(relay_entry_);
      }
      for (const char* arg : {"--lease", "1s", "--ack-timeout", "1s", "--backoff-initial", "20ms",
                              "--backoff-max", "500ms", "--log-level", "info"}) {
        args.emplace_back(arg);
      }
      return std::make_unique<test_support::ChildProcess>(settings_.relay_binary, args, dir_);
    };
    // Two relays on one outbox: one active, one standby that takes over when
    // the active one's lease lapses (it was killed or paused). On a directory
    // of databases, each holds the leases of some databases and is the
    // standby of the others, taking them over database by database.
    relay_ = std::make_unique<Managed>("relay", dir_ / "logs" / "relay.log", relay_starter);
    relay_->start();
    standby_relay_ =
        std::make_unique<Managed>("relay-b", dir_ / "logs" / "relay-b.log", relay_starter);
    standby_relay_->start();
    if (jetstream()) {
      start_jetstream_consumers();
      return;
    }

    consumer_ = make_consumer("consumer", 1);
    // --inbox redis: a second consumer of the same group shares the records.
    if (redis_inbox()) consumer2_ = make_consumer("consumer-b", 2);
  }

  // Two jetstream_consumer processes (examples/) on one durable pull consumer
  // and one inbox database, as the example recommends for per-key order: max
  // ack pending 1. Each incarnation may get a crash point, where it kills
  // itself right before applying a message or right after, before the ack.
  void start_jetstream_consumers() {
#ifdef OUTBOX_BIN_JETSTREAM_CONSUMER
    auto starter = [this] {
      const auto pending = std::to_string(settings_.consumer_max_ack_pending);
      std::vector<std::string> args = {"--nats-url",
                                       nats_url_,
                                       "--stream",
                                       kStream,
                                       "run",
                                       "--durable",
                                       "faults",
                                       "--filter-subject",
                                       "outbox.>",
                                       "--db",
                                       consumer_db_.string(),
                                       "--ack-wait",
                                       "1",
                                       "--max-ack-pending",
                                       pending,
                                       "--batch",
                                       pending};
      // One incarnation in four: every crash costs the ack wait before the
      // message comes again, and the consumers apply a few hundred a second.
      const int draw = std::uniform_int_distribution<int>(0, 7)(random_);
      if (draw < 2) {
        args.push_back(draw == 0 ? "--crash-after" : "--crash-before");
        args.push_back(std::to_string(std::uniform_int_distribution<int>(1, 2000)(random_)));
      }
      return std::make_unique<test_support::ChildProcess>(settings_.jetstream_consumer_binary, args,
                                                          dir_);
    };
    for (auto* slot : {&consumer_, &consumer2_}) {
      auto name = slot == &consumer_ ? std::string("consumer") : std::string("consumer-b");
      *slot = std::make_unique<Managed>(name, dir_ / "logs" / (name + ".log"), starter);
      (*slot)->accept_self_kill();  // its crash points
      (*slot)->start();
    }
#endif
  }

  std::unique_ptr<Managed> make_consumer(const std::string& name, int number) {
    auto consumer =
        std::make_unique<Managed>(name, dir_ / "logs" / (name + ".log"), [this, number] {
          std::vector<std::string> args = {
              "--broker", consumer_entry_, "--db", consumer_db_.string(), "--group", "faults"};
          for (const auto& topic : kTopics) {
            args.push_back("--topic");
            args.push_back(topic);
          }
          if (redis_inbox()) {
            for (const auto& arg :
                 {std::string("--inbox"), "redis://127.0.0.1:" + std::to_string(redis_port_),
                  std::string("--lease-ms"), std::string("1000"), std::string("--self-kill-rate"),
                  std::to_string(settings_.self_kill_rate), std::string("--seed"),
                  std::to_string(settings_.seed + static_cast<std::uint64_t>(number))}) {
              args.push_back(arg);
            }
          }
          return std::make_unique<test_support::ChildProcess>(settings_.consumer_binary, args,
                                                              dir_);
        });
    if (redis_inbox()) consumer->accept_self_kill();
    consumer->start();
    return consumer;
  }

  std::unique_ptr<Managed> start_proxy(const std::string& name, const fs::path& stats,
                                       std::uint64_t seed, const std::string& upstream,
                                       const std::vector<std::string>& faults,
                                       std::string& endpoint) {
    auto endpoint_file = dir_ / (name + "-endpoint");
    std::vector<std::string> args = {"--broker",          upstream,          "--bind",
                                     "tcp://127.0.0.1:*", "--endpoint-file", endpoint_file.string(),
                                     "--stats-file",      stats.string(),    "--seed",
                                     std::to_string(seed)};
    args.insert(args.end(), faults.begin(), faults.end());
    auto proxy = std::make_unique<Managed>(name, dir_ / "logs" / (name + ".log"), [this, args] {
      return std::make_unique<test_support::ChildProcess>(settings_.proxy_binary, args, dir_);
    });
    proxy->start();
    if (!test_support::wait_until([&] { return fs::exists(endpoint_file); }, 20s)) {
      throw HarnessError(name + " did not start listening");
    }
    endpoint = read_endpoint(endpoint_file);
    return proxy;
  }

  std::vector<Managed*> everything() {
    std::vector<Managed*> all;
    for (auto* managed : {nats_.get(), redis_.get(), broker_.get(), proxy_.get(),
                          consumer_proxy_.get(), relay_cutter_.get(), consumer_cutter_.get(),
                          relay_.get(), standby_relay_.get(), consumer_.get(), consumer2_.get()}) {
      if (managed != nullptr) all.push_back(managed);
    }
    for (auto& producer : producers_) all.push_back(producer.get());
    return all;
  }

  // Reaps exits and restarts what is due (unless `restart` is false); what
  // went down comes back after 0-300 ms.
  void tend(bool restart) {
    if (interrupted.load()) throw HarnessError("interrupted");
    auto now = Clock::now();
    for (auto* managed : everything()) {
      managed->resume_if_due(now, !restart);
      bool was_up = managed->state() != Managed::State::down;
      if (auto problem = managed->poll(now + between(0, 300))) {
        anomalies_.push_back(*problem);
        say("PROBLEM: " + *problem + "\n" + managed->last_log_tail());
      }
      if (was_up && managed->state() == Managed::State::down &&
          (managed == consumer_.get() || managed == consumer2_.get()) && managed->last_status() &&
          !managed->last_status()->exited && managed->last_status()->signal == SIGKILL) {
        killed_consumer_pids_.insert(managed->last_pid());
        if (managed->last_self_killed()) {
          ++consumer_self_kills_;
          ++fault_kinds_["consumer_self_kill9"];
          ++process_faults_;
        }
      }
      if (was_up && managed->state() == Managed::State::down && managed == broker_.get() &&
          managed->last_status() && managed->last_status()->exited &&
          managed->last_status()->code == 4) {
        // Exit code 4: the killed broker's port is not free yet; start again soon.
        managed->set_restart_at(now + 20ms);
        if (++bind_retries_ > 2000) throw HarnessError("the broker's port never became free again");
      }
      if (restart && managed->due_for_restart(now)) {
        if (managed == proxy_.get() || managed == consumer_proxy_.get() ||
            managed == relay_cutter_.get() || managed == consumer_cutter_.get()) {
          throw HarnessError(managed->name() + " exited");
        }
        managed->start();
      }
    }
  }

  void inject_one() {
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
    Managed* relay = std::uniform_int_distribution<int>(0, 1)(random_) == 0 ? relay_.get()
                                                                            : standby_relay_.get();
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
      if (Clock::now() - choice.target->started_at() < 100ms || choice.target->paused()) return;
      if (choice.sig == SIGSTOP) {
        // Longer than the relay's lease and ack timeout (1 s each).
        choice.target->pause_until(Clock::now() + between(300, 2500));
      } else {
        choice.target->signal(choice.sig);
      }
      ++fault_kinds_[choice.kind];
      ++process_faults_;
      return;
    }
  }

  // How often each of `processes` has reported a full disk or an I/O error on
  // stderr so far (its current incarnation): the producers' "full disk or I/O
  // error" lines, the relays' "failed with SQLITE_FULL" (or SQLITE_IOERR).
  static std::map<Managed*, std::size_t> disk_reports(const std::vector<Managed*>& processes) {
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

  std::vector<Managed*> producer_processes() {
    std::vector<Managed*> all;
    for (auto& producer : producers_) all.push_back(producer.get());
    return all;
  }
  std::vector<Managed*> relay_processes() {
    return {relay_.get(), standby_relay_.get()};
  }

  // Whether one of `processes` reported a full disk since `before`.
  static bool reported_since(const std::vector<Managed*>& processes,
                             std::map<Managed*, std::size_t>& before) {
    for (const auto& [process, count] : disk_reports(processes)) {
      if (count > before[process]) return true;
    }
    return false;
  }

  // Fills app.db's file system to the last block. It stays full until a
  // producer and a relay have reported the failure and 0-300 ms more, or 2 s
  // after only a producer did, at most 5 s (a producer at 100 transactions a
  // second meets it at once, unless SQLite still finds room in its WAL file; a
  // relay when it next records outcomes or renews its lease); then
  // free_disk_when_due frees it.
  bool fill_disk() {
    if (disk_->full()) return false;
    producer_reports_before_ = disk_reports(producer_processes());
    relay_reports_before_ = disk_reports(relay_processes());
    auto filled = disk_->fill();
    append_file(dir_ / "logs" / "disk.log", "filled with " + std::to_string(filled) + " bytes\n");
    producer_saw_full_ = relay_saw_full_ = false;
    disk_full_until_ = Clock::now() + 5s;
    return true;
  }

  void free_disk_when_due(bool now_anyway) {
    if (disk_ == nullptr || !disk_->full()) return;
    auto now = Clock::now();
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
    append_file(dir_ / "logs" / "disk.log",
                std::string("freed; seen full by a producer: ") +
                    (producer_saw_full_ ? "yes" : "no") +
                    ", by a relay: " + (relay_saw_full_ ? "yes" : "no") + "\n");
  }

  // Lease takeovers on a directory of databases, from the relays' archived
  // logs: per database, which relay process (relay or relay-b) acquired each
  // lease epoch; a takeover is an epoch acquired by the other process than
  // the epoch before it (a relay that comes back after kill -9 and claims
  // the lease again is not one).
  struct Takeovers {
    long count = 0, databases = 0;
  };
  Takeovers count_takeovers() {
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

  // Lines in the archived logs of `names` that contain `text`.
  long count_in_logs(const std::vector<std::string>& names, const std::string& text) {
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

  struct DeadRow {
    fs::path db;
    std::string msg_id;
    bool poison;      // written to be undeliverable: no fix exists
    bool holds_back;  // a later message of its (topic, key) exists
  };

  // The dead messages of every outbox database, of those in `among` only when given.
  std::vector<DeadRow> dead_rows(const std::vector<fs::path>* among = nullptr) {
    std::vector<DeadRow> dead;
    for (const auto& db : among != nullptr ? *among : app_dbs_) {
      Database app(db);
      bool poison_known = app.has_table("poison");
      for (auto& row :
           app.rows("SELECT m.msg_id, " +
                    std::string(poison_known
                                    ? "EXISTS (SELECT 1 FROM poison p WHERE p.msg_id = m.msg_id)"
                                    : "0") +
                    ", EXISTS (SELECT 1 FROM outbox_messages later WHERE later.seq > m.seq"
                    " AND later.topic = m.topic"
                    " AND coalesce(later.partition_key, '') = coalesce(m.partition_key, ''))"
                    " FROM outbox_delivery d JOIN outbox_messages m USING (seq)"
                    " WHERE d.state = 2 ORDER BY d.seq")) {
        dead.push_back({db, row[0], row[1] == "1", row[2] == "1"});
      }
    }
    return dead;
  }

  // Plays the operator for one dead message, chosen at random: drops it, or
  // strips its padding (the cause fixed) and replays it, through the
  // outbox-relay CLI. A row that can never be delivered has no fix: "replay"
  // sends it back as it is, and it must go dead again. Returns whether there
  // was one.
  bool resolve_one_dead(bool drop) {
    auto dead = dead_rows();
    if (dead.empty()) return false;
    const auto& row = dead[std::uniform_int_distribution<std::size_t>(0, dead.size() - 1)(random_)];
    operator_command(drop, row);
    return true;
  }

  // At the end of the load: every message that can be fixed is dropped or
  // replayed fixed, and every undeliverable row that holds back later
  // messages of its key is dropped; the others stay dead, as an operator may
  // leave them. Returns how many dead messages still need the operator.
  std::size_t resolve_dead_for_drain(const std::vector<fs::path>& among) {
    std::size_t left = 0;
    for (const auto& row : dead_rows(&among)) {
      if (row.poison && !row.holds_back) continue;
      ++left;
      operator_command(row.poison || std::uniform_int_distribution<int>(0, 1)(random_) == 0, row);
    }
    return left;
  }

  void operator_command(bool drop, const DeadRow& row) {
    const auto& msg_id = row.msg_id;
    if (!drop && !row.poison) strip_padding(row.db, msg_id);
    auto result = test_support::run(
        settings_.relay_binary,
        {drop ? "drop" : "replay", "--db", row.db.string(), "--msg-id", msg_id}, 30s);
    append_file(dir_ / "logs" / "operator.log", std::string(drop ? "drop " : "replay ") + msg_id +
                                                    ": " + describe(result.status) + "\n" +
                                                    result.out + result.err);
    if (!result.status.exited || result.status.code != 0) {
      anomalies_.push_back("outbox-relay " + std::string(drop ? "drop" : "replay") + " of " +
                           shown(msg_id) + " ended with " + describe(result.status) + ": " +
                           result.err);
      return;
    }
    ++(drop ? dropped_ : replayed_);
    if (!drop && row.poison) ++replayed_poison_;
  }

  void strip_padding(const fs::path& app_db, const std::string& msg_id) {
    try {
      auto db = sqlite::open_file(app_db.string(), SQLITE_OPEN_READWRITE);
      sqlite3_busy_timeout(db.get(), 10000);
      sqlite::Statement update(
          db.get(),
          "UPDATE outbox_messages SET payload = substr(payload, 1, length(payload) - 20001) "
          "WHERE msg_id = ?1 AND length(payload) > 20001");
      update.use().bind_text(1, msg_id).run();
    } catch (const outbox::Error& error) {
      throw HarnessError("repairing " + msg_id + " in " + app_db.string() +
                         " failed: " + error.what());
    }
  }

  long proxy_faults() {
    long total = 0;
    for (const auto& [prefix, stats] : proxy_stats()) {
      if (fs::exists(stats)) total += read_counts(stats)["total"];
    }
    return total;
  }

  void load_with_faults() {
    auto start = Clock::now();
    auto next_fault = start + between(100, 400);
    auto next_report = start + 10s;
    while (!interrupted.load()) {
      auto now = Clock::now();
      if (settings_.duration) {
        if (now - start >= *settings_.duration) break;
      } else {
        if (process_faults_ + proxy_faults() >= settings_.faults) break;
        if (now - start >= settings_.max_load_time) {
          say("the fault budget was not reached within --max-load-time; stopping the load");
          break;
        }
      }
      tend(true);
      free_disk_when_due(false);
      if (now >= next_fault) {
        inject_one();
        next_fault = now + between(60, 450);
      }
      if (now >= next_report) {
        say("faults so far: " + std::to_string(process_faults_) + " process, " +
            std::to_string(proxy_faults()) + " network");
        next_report = now + 10s;
      }
      std::this_thread::sleep_for(5ms);  // the injector's tick
    }
    if (interrupted.load()) throw HarnessError("interrupted");
  }

  bool all_running() {
    for (auto* managed : everything()) {
      if (!managed->running() || managed->paused()) return false;
    }
    return true;
  }

  bool drain() {
    free_disk_when_due(true);
    // No more network faults.
    for (auto* proxy :
         {proxy_.get(), consumer_proxy_.get(), relay_cutter_.get(), consumer_cutter_.get()}) {
      if (proxy != nullptr) proxy->notify(SIGUSR1);
    }
    auto deadline = Clock::now() + settings_.drain_timeout;
    auto left = [&] { return std::chrono::duration_cast<milliseconds>(deadline - Clock::now()); };
    // Everything that is down comes back.
    if (!test_support::wait_until(
            [&] {
              tend(true);
              return all_running();
            },
            left(), 5ms)) {
      say("not every process came back in time");
      return false;
    }
    say("all processes up; stopping the producers");
    // Producers finish their last transaction.
    for (auto& producer : producers_) {
      producer->stay_down();
      producer->signal(SIGTERM);
    }
    if (!test_support::wait_until(
            [&] {
              tend(false);
              return std::all_of(producers_.begin(), producers_.end(),
                                 [](auto& p) { return p->state() == Managed::State::down; });
            },
            left(), 5ms)) {
      say("producers did not stop");
      return false;
    }
    say("producers stopped; waiting for the outbox to drain");
    for (auto& producer : producers_) {
      long committed = 0, rolled_back = 0, duplicates = 0;
      if (std::sscanf(producer->stdout_text().c_str(),
                      "committed %ld rolled-back %ld duplicates-reported %ld", &committed,
                      &rolled_back, &duplicates) == 3) {
        duplicates_reported_ += duplicates;
      }
    }
    // The relays deliver everything. A database with nothing pending and
    // nothing dead stays so (the producers stopped): it is not read again.
    std::vector<fs::path> undrained = app_dbs_;
    std::int64_t pending = 0, dead = 0;
    if (!test_support::wait_until(
            [&] {
              tend(true);
              pending = dead = 0;
              std::vector<fs::path> with_dead, still;
              for (const auto& app_db : undrained) {
                outbox::RelayOptions options;
                options.read_only = true;
                auto stats = outbox::RelayStore::open(app_db, options).stats();
                pending += stats.pending;
                dead += stats.dead;
                if (stats.dead > 0) with_dead.push_back(app_db);
                if (stats.pending > 0 || stats.dead > 0) still.push_back(app_db);
              }
              undrained = std::move(still);
              std::size_t need_operator = 0;
              if (!with_dead.empty() && !jetstream()) {
                need_operator = resolve_dead_for_drain(with_dead);
              }
              return pending == 0 && need_operator == 0;
            },
            left(), 20ms)) {
      say("the outbox did not drain: pending " + std::to_string(pending) + ", dead " +
          std::to_string(dead) + " (" + std::to_string(undrained.size()) + " databases)");
      return false;
    }
    if (!consumer_) return true;  // --sink jetstream built without examples/jetstream_consumer
    // The consumers apply everything the broker has (in JetStream mode every
    // outbox row: nothing is dropped there, and the outbox drained).
    std::vector<BrokerCopy> copies;
    if (!jetstream()) copies = fetch_everything(broker_endpoint_, broker_topics(app_dbs_));
    long stored = jetstream() ? outbox_rows() : static_cast<long>(copies.size());
    say("outbox drained; waiting for the consumer to apply " + std::to_string(stored) +
        " messages");
    if (!test_support::wait_until(
            [&] {
              tend(true);
              return count_effects(consumer_db_) >= stored;
            },
            left(), 20ms)) {
      say("the consumer did not catch up: " + std::to_string(count_effects(consumer_db_)) + " of " +
          std::to_string(stored));
      return false;
    }
    if (!redis_inbox()) return true;
    // A claim whose consumer was killed after its side effect is completed by
    // the other consumer once its lease has passed.
    std::vector<std::string> ids;
    for (const auto& copy : copies) ids.push_back(copy.msg_id);
    long unfinished = 0;
    if (!test_support::wait_until(
            [&] {
              tend(true);
              unfinished = 0;
              for (const auto& [id, record] : read_inbox_records(ids)) {
                if (record.state != "completed") ++unfinished;
              }
              return unfinished == 0;
            },
            left(), 200ms)) {
      say("the consumers did not complete " + std::to_string(unfinished) + " claims");
      return false;
    }
    return true;
  }

  long outbox_rows() {
    Database app(app_db_);
    return std::stol(app.rows("SELECT count(*) FROM outbox_messages")[0][0]);
  }

  void stop_everything() {
    // SIGTERM, as an operator would; each must exit 0.
    for (auto* managed : everything()) {
      managed->stay_down();
      managed->signal(SIGTERM);
    }
    test_support::wait_until(
        [&] {
          tend(false);
          for (auto* managed : everything()) {
            if (managed->state() != Managed::State::down) return false;
          }
          return true;
        },
        60s, 5ms);
  }

 public:
  Settings settings_;
  std::mt19937_64 random_;
  fs::path dir_, app_db_, broker_db_, consumer_db_, proxy_stats_, consumer_proxy_stats_,
      relay_cutter_stats_, consumer_cutter_stats_;
  // Every outbox database: app.db alone, or the tenant databases in tenant_dir_.
  std::vector<fs::path> app_dbs_;
  fs::path tenant_dir_;
  std::string broker_endpoint_, proxy_endpoint_, consumer_proxy_endpoint_;
  std::string relay_entry_, consumer_entry_;  // where relays and consumer connect
  SmallDisk* disk_;
  Clock::time_point disk_full_until_{};
  // Fills during which a producer, a relay saw the disk full.
  long disk_full_producer_bites_ = 0, disk_full_relay_bites_ = 0;
  bool producer_saw_full_ = false, relay_saw_full_ = false, disk_free_soon_ = false;
  std::map<Managed*, std::size_t> producer_reports_before_, relay_reports_before_;
  Clock::time_point next_disk_check_{};
  std::unique_ptr<Managed> nats_, redis_, broker_, proxy_, consumer_proxy_, relay_cutter_,
      consumer_cutter_, relay_, standby_relay_, consumer_, consumer2_;
  int nats_port_ = 0, redis_port_ = 0;
  std::set<long> killed_consumer_pids_;  // --inbox redis: consumers that ended by SIGKILL
  long consumer_self_kills_ = 0;
  std::string nats_url_;
  std::vector<std::unique_ptr<Managed>> producers_;
  std::map<std::string, long> fault_kinds_;
  long process_faults_ = 0;
  long duplicates_reported_ = 0;
  long replayed_ = 0, dropped_ = 0;  // dead messages the operator acted on
  long replayed_poison_ = 0;         // of those, undeliverable rows replayed as they were
  long bind_retries_ = 0;
  int broker_starts_ = 0;
  std::vector<std::string> anomalies_;
};

milliseconds parse_duration(const std::string& text) {
  auto parsed = cli::parse_duration(text);
  if (!parsed || parsed->count() == 0) {
    throw std::invalid_argument("'" + text + "' is not a duration with a unit (e.g. 90s, 10m)");
  }
  return *parsed;
}

int usage(const std::string& message) {
  std::fprintf(stderr, "outbox-faults: %s\n", message.c_str());
  std::fprintf(stderr,
               "usage: outbox-faults [--seed N] [--faults N | --duration 10m] [--producers 3]\n"
               "                     [--databases N]\n"
               "                     [--rate 100] [--keys 12] [--drain-timeout 180s]\n"
               "                     [--max-load-time 10m] [--proxy-rate 1.0] [--hostile-order]\n"
               "                     [--cut-every 2K-400K|off] [--freeze 0.05]\n"
               "                     [--oversize-rate 0.002] [--sql-rate 30] [--poison-rate 0.05]\n"
               "                     [--sink broker|jetstream] [--inbox sqlite|redis]\n"
               "                     [--consumer-max-ack-pending 1]\n"
               "                     [--self-kill-rate 0.0005] [--full-disk on|off]\n"
               "                     [--work-dir DIR] [--keep]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  settings.seed =
      std::random_device{}() | (static_cast<std::uint64_t>(std::random_device{}()) << 32);
  bool work_dir_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    try {
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
        return argv[++i];
      };
      if (flag == "--seed")
        settings.seed = std::stoull(value());
      else if (flag == "--faults")
        settings.faults = std::stol(value());
      else if (flag == "--duration")
        settings.duration = parse_duration(value());
      else if (flag == "--max-load-time")
        settings.max_load_time = parse_duration(value());
      else if (flag == "--producers")
        settings.producers = std::stoi(value());
      else if (flag == "--databases")
        settings.databases = std::stoi(value());
      else if (flag == "--rate")
        settings.rate = std::stod(value());
      else if (flag == "--keys")
        settings.keys = std::stoi(value());
      else if (flag == "--drain-timeout")
        settings.drain_timeout = parse_duration(value());
      else if (flag == "--proxy-rate")
        settings.proxy_rate = std::stod(value());
      else if (flag == "--oversize-rate")
        settings.oversize_rate = std::stod(value());
      else if (flag == "--sql-rate")
        settings.sql_rate = std::stod(value());
      else if (flag == "--poison-rate")
        settings.poison_rate = std::stod(value());
      else if (flag == "--hostile-order")
        settings.hostile_order = true;
      else if (flag == "--cut-every")
        settings.cut_every = value();
      else if (flag == "--freeze")
        settings.freeze = std::stod(value());
      else if (flag == "--sink")
        settings.sink = value();
      else if (flag == "--consumer-max-ack-pending")
        settings.consumer_max_ack_pending = std::stoi(value());
      else if (flag == "--full-disk") {
        auto choice = value();
        if (choice != "on" && choice != "off")
          throw std::invalid_argument("--full-disk is on or off");
        settings.full_disk = choice == "on";
      } else if (flag == "--inbox")
        settings.inbox = value();
      else if (flag == "--self-kill-rate")
        settings.self_kill_rate = std::stod(value());
      else if (flag == "--work-dir") {
        settings.work_dir = value();
        work_dir_given = true;
      } else if (flag == "--keep")
        settings.keep = true;
      else if (flag == "--help" || flag == "-h")
        return usage("fault-injection run of the whole pipeline");
      else
        return usage("unknown flag " + flag);
    } catch (const std::exception& error) {
      return usage(error.what());
    }
  }
  if (settings.producers < 1 || settings.keys < 1 || settings.rate <= 0 || settings.faults < 0) {
    return usage("--producers, --keys and --rate must be positive");
  }
  if (settings.sql_rate < 0 || settings.poison_rate < 0 || settings.poison_rate > 1) {
    return usage("--sql-rate must be 0 or more, --poison-rate between 0 and 1");
  }
  if (settings.consumer_max_ack_pending < 1 || settings.consumer_max_ack_pending > 10000) {
    return usage("--consumer-max-ack-pending is 1 to 10000");
  }
  if (settings.databases < 0 || settings.databases > 100000) {
    return usage("--databases is 0 (one database) to 100000");
  }
  if (settings.databases > 0 && (settings.sink != "broker" || settings.inbox != "sqlite")) {
    return usage("--databases runs with --sink broker and --inbox sqlite only");
  }
  if (settings.sink != "broker" && settings.sink != "jetstream") {
    return usage("--sink is broker or jetstream");
  }
  if (settings.inbox != "sqlite" && settings.inbox != "redis") {
    return usage("--inbox is sqlite or redis");
  }
  if (settings.inbox == "redis") {
#ifndef OUTBOX_FAULTS_REDIS_SERVER
    std::fprintf(stderr,
                 "outbox-faults: built without the Redis inbox or redis-server; --inbox redis is "
                 "not available\n");
    return 4;
#endif
    if (settings.sink != "broker") return usage("--inbox redis needs the broker sink's consumers");
  }
  if (settings.sink == "jetstream") {
#ifdef OUTBOX_RELAY_WITH_JETSTREAM
    settings.nats_server_binary = find_nats_server();
    if (settings.nats_server_binary.empty()) {
      std::fprintf(stderr, "outbox-faults: --sink jetstream needs nats-server (not found)\n");
      return 4;
    }
    if (settings.hostile_order) return usage("--hostile-order needs the broker sink's proxy");
#else
    std::fprintf(stderr,
                 "outbox-faults: built without libnats; --sink jetstream is not available\n");
    return 4;
#endif
  }
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);

  std::unique_ptr<test_support::TempDir> temporary;
  if (!work_dir_given) {
    temporary = std::make_unique<test_support::TempDir>("outbox-faults");
    settings.work_dir = temporary->path();
  }
  std::fprintf(stderr, "outbox-faults: seed %llu, work dir %s\n",
               static_cast<unsigned long long>(settings.seed), settings.work_dir.c_str());
  // Declared after the work dir, so unmounted before it is removed.
  std::unique_ptr<SmallDisk> disk;
  if (settings.full_disk && settings.sink == "broker" && settings.databases == 0) {
    disk = std::make_unique<SmallDisk>(settings.work_dir / "disk", settings.disk_bytes);
    if (disk->mounted()) {
      std::fprintf(stderr,
                   "outbox-faults: app.db on a tmpfs of its own (%s) for full-disk faults\n",
                   disk->dir().c_str());
    } else {
      std::printf("full disk: not injected (%s; needs root or CAP_SYS_ADMIN)\n",
                  disk->why_not().c_str());
      disk.reset();
    }
  }
  int result = 3;
  {
    try {
      Run run(settings, disk.get());
      result = run.execute();
    } catch (const std::exception& error) {
      std::fprintf(stderr, "outbox-faults: %s (seed %llu)\n", error.what(),
                   static_cast<unsigned long long>(settings.seed));
      result = 3;
    }
  }
  if (disk && (result != 0 || settings.keep)) {
    disk->free_space();
    disk->keep_contents();
  }
  if (temporary && (result != 0 || settings.keep)) {
    // Keep the evidence: copy the logs and databases next to the temp dir.
    auto kept = fs::temp_directory_path() / ("outbox-faults-seed-" + std::to_string(settings.seed));
    std::error_code ignored;
    fs::remove_all(kept, ignored);
    fs::copy(settings.work_dir, kept, fs::copy_options::recursive, ignored);
    std::fprintf(stderr, "outbox-faults: logs and databases kept in %s\n", kept.c_str());
  }
  return result;
}
