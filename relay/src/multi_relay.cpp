#include "relay/multi_relay.hpp"

#include <fnmatch.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <utility>
#include <vector>

#include <spdlog/logger.h>
#include <spdlog/sinks/base_sink.h>
#include <zmq.hpp>

#include "database_opener.hpp"
#include "deadline.hpp"
#include "metrics/log_fields.hpp"
#include "metrics/metrics.hpp"
#include "outbox/null_logger.hpp"
#include "relay/metrics.hpp"
#include "snowflake_warning.hpp"

namespace relay {
namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr auto kNever = SteadyClock::time_point::max();

// Writes each line to the program's sinks with "database NAME: " in front and
// a `database` field next to the line's own fields, so that every line a
// database's Relay logs says which database it is about, in text and in
// structured logs. The sinks are synchronous: the fields reach them on the
// logging thread (metrics/log_fields.hpp).
class PrefixSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  PrefixSink(std::string name, std::vector<spdlog::sink_ptr> targets)
      : name_(std::move(name)), prefix_("database " + name_ + ": "), targets_(std::move(targets)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& message) override {
    std::string text = prefix_;
    text.append(message.payload.data(), message.payload.size());
    spdlog::details::log_msg copy(message.time, message.source, message.logger_name, message.level,
                                  text);
    auto own = metrics::LogFields::current();
    fields_.assign(own.begin(), own.end());
    if (std::none_of(own.begin(), own.end(),
                     [](const metrics::LogField& field) { return field.name() == "database"; })) {
      fields_.emplace_back("database", name_);
    }
    metrics::LogFields scope(fields_);
    for (auto& target : targets_) {
      if (target->should_log(copy.level)) target->log(copy);
    }
  }
  void flush_() override {
    for (auto& target : targets_) target->flush();
  }

 private:
  std::string name_;
  std::string prefix_;
  std::vector<spdlog::sink_ptr> targets_;
  std::vector<metrics::LogField> fields_;  // of the line being written (under the sink's mutex)
};

std::shared_ptr<spdlog::logger> database_logger(const std::shared_ptr<spdlog::logger>& base,
                                                const std::string& name) {
  auto logger = std::make_shared<spdlog::logger>(base->name(),
                                                 std::make_shared<PrefixSink>(name, base->sinks()));
  logger->set_level(base->level());
  logger->flush_on(base->flush_level());
  return logger;
}

// Files SQLite and the outbox keep next to a database: never databases
// themselves, whatever the glob says.
bool companion_file(const std::string& name) {
  for (const char* suffix : {"-wal", "-shm", "-journal", "-outbox-workers.lock"}) {
    auto length = std::strlen(suffix);
    if (name.size() >= length && name.compare(name.size() - length, length, suffix) == 0) {
      return true;
    }
  }
  return false;
}

// What a database's files looked like: a rescan looks again at a closed
// database only when its file or its WAL changed since it was last found
// with nothing to do (a commit appends to the WAL, or rewrites it from its
// start after a checkpoint, and sets its modification time either way).
struct FileSignature {
  struct File {
    ino_t inode = 0;
    off_t size = -1;
    std::int64_t modified_ns = 0;
    bool operator==(const File&) const = default;
  };
  File database, wal;
  bool operator==(const FileSignature&) const = default;
};

FileSignature::File file_signature(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) return {};
  return {info.st_ino, info.st_size,
          static_cast<std::int64_t>(info.st_mtim.tv_sec) * 1'000'000'000 + info.st_mtim.tv_nsec};
}

// Now on the clock that stamps file modification times.
std::int64_t wall_clock_ns() {
  struct timespec now {};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

FileSignature signature(const std::filesystem::path& database) {
  return {file_signature(database.string()), file_signature(database.string() + "-wal")};
}

bool database_name(const std::string& name, const std::string& glob) {
  return !companion_file(name) && ::fnmatch(glob.c_str(), name.c_str(), 0) == 0;
}

RelayCounters& operator+=(RelayCounters& total, const RelayCounters& more) {
  total.sent_messages += more.sent_messages;
  total.stored += more.stored;
  total.duplicates += more.duplicates;
  total.dead += more.dead;
  total.blocked += more.blocked;
  total.sessions += more.sessions;
  total.failures += more.failures;
  total.deleted += more.deleted;
  total.undeliverable += more.undeliverable;
  total.database_errors += more.database_errors;
  return total;
}

}  // namespace

std::vector<std::string> database_files(const std::filesystem::path& directory,
                                        const std::string& glob) {
  std::error_code error;
  std::vector<std::string> names;
  for (std::filesystem::directory_iterator entry(directory, error), end; !error && entry != end;
       entry.increment(error)) {
    auto name = entry->path().filename().string();
    std::error_code kind_error;
    if (database_name(name, glob) && entry->is_regular_file(kind_error)) names.push_back(name);
  }
  if (error) throw std::runtime_error("cannot list " + directory.string() + ": " + error.message());
  std::sort(names.begin(), names.end());
  return names;
}

struct MultiRelay::Impl {
  struct Database {
    std::filesystem::path path;
    std::uint32_t slot = 0;  // on its connection, while open
    std::size_t connection = 0;
    std::unique_ptr<outbox::RelayStore> store;
    // Its session on the shared connection; `sink` is the channel behind the
    // check of the msg_ids it sends (snowflake_warning.hpp).
    std::unique_ptr<Sink> channel;
    std::unique_ptr<Sink> sink;
    std::unique_ptr<Relay> relay;  // with store and sink: the database is open
    // Being opened by an opener thread (its ticket), or opened and waiting
    // for its relay to be built at its next step.
    std::uint64_t opening = 0;
    std::optional<OpenResult> opened;
    FileSignature opening_files{};       // taken before the opener read it
    std::int64_t opening_looked_ns = 0;  // wall clock (as file times) when they were taken
    std::string instance_id;             // of the lease holder the opener claimed for
    bool woken_while_opening = false;    // an event the opener's read may have missed
    // Its origin id as last opened; `copy_of`: the database that forwards the
    // same origin id, while this one is refused for it.
    std::string origin;
    std::string copy_of;
    bool due = true;  // an event says: look at it in the next round
    SteadyClock::time_point call_again_by = kNever;
    SteadyClock::time_point last_busy{};
    StepResult::State state = StepResult::State::idle;
    std::string last_problem;       // logged once until it changes
    RelayCounters closed_counters;  // of this database's relays closed before
    // Once per database, not once per relay it is opened with.
    bool warned_snowflake_ids = false;
    // Its backlog as last read (config.backlog_interval), and when.
    std::optional<outbox::Backlog> backlog;
    SteadyClock::time_point backlog_read_at{};

    std::string name() const { return path.filename().string(); }
    RelayCounters counters() const {
      auto total = closed_counters;
      if (!relay) return total;
      auto now = relay->counters();
      total += now;
      total.active = now.active;
      total.session_up = now.session_up;
      return total;
    }
    // Closed with nothing to do (or failing): its files then. A rescan opens
    // it again only when they changed (default: never looked at).
    FileSignature seen{};
    SteadyClock::time_point last_poll{};  // its last fallback commit check
    // A commit's event can come before the commit is visible (SQLite writes
    // the WAL, then its index): a database woken by an event that found
    // nothing looks at data_version once more shortly after.
    SteadyClock::time_point recheck_at = kNever;
  };

  explicit Impl(MultiRelayConfig config_in)
      : config(std::move(config_in)), log(outbox::logger_or_null(config.relay.logger, "relay")) {
    config.connections = std::max<std::size_t>(config.connections, 1);
    config.max_open_databases = std::max<std::size_t>(config.max_open_databases, 1);
    // Databases are closed and opened again all the time: closing must not
    // cost a checkpoint with two fsyncs (and the WAL's removal) each.
    config.store.checkpoint_on_close = false;
    // Without a registry of the caller's, the relays of every database share
    // one nobody reads: building a registry and its series for each relay
    // was a fixed cost of every open.
    if (!config.relay.metrics) {
      config.relay.metrics = std::make_shared<RelayMetrics>(unserved_metrics, unserved_state);
    }
    for (std::size_t i = 0; i < config.connections; ++i) {
      connections.push_back(config.make_connection
                                ? config.make_connection()
                                : std::make_unique<SharedBrokerConnection>(config.broker));
    }
    opener = std::make_unique<DatabaseOpener>(config.opener_threads, config.store);
  }

  ~Impl() {
    if (inotify_fd >= 0) ::close(inotify_fd);
  }

  // Where the relays count when the caller gave no RelayMetrics; declared
  // first, so that they outlive every relay.
  metrics::Registry unserved_metrics;
  metrics::Registry unserved_state;
  MultiRelayConfig config;
  std::shared_ptr<spdlog::logger> log;
  std::vector<std::unique_ptr<SharedConnection>> connections;
  std::uint64_t unmatched_answers_logged = 0;
  std::map<std::string, Database> databases;  // by file name
  std::vector<Database*> open_databases;      // the fallback check goes round them
  std::size_t next_poll_index = 0;
  SteadyClock::time_point next_poll{};
  std::uint32_t next_slot = 1;
  // Open, being opened or opened and waiting for their relay.
  std::size_t open_count = 0;
  std::unique_ptr<DatabaseOpener> opener;
  std::map<std::uint64_t, std::string> opening_names;  // by ticket
  // Which database forwards each origin id: the broker keeps one relay
  // session per origin, so two databases of one origin (a file copied from
  // another) would end each other's sessions.
  std::map<std::string, std::string> origin_owners;
  std::uint64_t next_ticket = 1;
  std::mt19937 random{std::random_device{}()};
  int inotify_fd = -1;
  SteadyClock::time_point next_rescan{};
  SteadyClock::time_point next_counters{};
  std::atomic<bool> stop{false};
  RelayCounters removed_counters;        // of databases gone from the directory
  std::vector<const Database*> listing;  // publish_counters()' scratch space
  mutable std::mutex counters_mutex;
  MultiRelayCounters published;

  bool matches(const std::string& name) const { return database_name(name, config.glob); }

  Database& add(const std::string& name) {
    auto [found, added] = databases.try_emplace(name);
    if (added) {
      auto& database = found->second;
      database.path = config.directory / name;
      metrics::log(*log, spdlog::level::info, {{"event", "database_found"}, {"database", name}},
                   "database {}: found in {}", name, config.directory.string());
    }
    return found->second;
  }

  // Reads the database's backlog (an open one's store) when it is due, or
  // always with `now`. A failed reading keeps the last one: the relay's step
  // reports the failure.
  void read_backlog(Database& database, bool now = false) {
    if (config.backlog_interval.count() == 0 || !database.store) return;
    auto clock = SteadyClock::now();
    if (!now && database.backlog && clock - database.backlog_read_at < config.backlog_interval) {
      return;
    }
    try {
      note_backlog(database, database.store->backlog(), clock);
    } catch (const std::exception&) {
    }
  }

  static void note_backlog(Database& database, const outbox::Backlog& backlog,
                           SteadyClock::time_point at) {
    database.backlog = backlog;
    database.backlog_read_at = at;
  }

  // With `finish`, waits for what is in flight until `deadline` (default:
  // one drain timeout from now) and releases the lease.
  void close(Database& database, bool finish,
             std::optional<SteadyClock::time_point> deadline = std::nullopt) {
    if (!database.relay) return;
    if (finish) {
      try {
        if (deadline) {
          database.relay->finish(*deadline);
        } else {
          database.relay->finish();
        }
      } catch (const std::exception& error) {
        metrics::log(*log, spdlog::level::warn, {{"database", database.name()}},
                     "database {}: could not finish cleanly ({}); its lease lapses by itself",
                     database.name(), error.what());
      }
    }
    if (finish) read_backlog(database, true);
    // An idle database's last read found nothing pending. Its files as they
    // are now, after what finishing wrote, hold nothing more if no other
    // connection committed since that read, which data_version (read after
    // the files) tells; then the events of closing it end at a stat().
    database.seen = {};
    if (finish && database.state == StepResult::State::idle) {
      auto files = signature(database.path);
      try {
        if (!database.store->committed_since_last_look()) database.seen = files;
      } catch (const outbox::Error&) {
        // unknown: the next event or rescan looks
      }
    }
    database.closed_counters += database.relay->counters();
    database.relay.reset();
    database.sink.reset();
    database.channel.reset();
    database.store.reset();
    --open_count;
    auto at = std::find(open_databases.begin(), open_databases.end(), &database);
    if (at != open_databases.end()) {
      *at = open_databases.back();
      open_databases.pop_back();
    }
  }

  // Closes a database that has nothing to do (or fails) until an event or a
  // rescan finds its files changed.
  void close_until_changed(Database& database, bool finish) {
    close(database, finish);
    database.call_again_by = kNever;
  }

  void remove(const std::string& name) {
    auto found = databases.find(name);
    if (found == databases.end()) return;
    close(found->second, false);  // the file is gone: nothing to write to
    forget_open(found->second);
    disown_origin(found->second);
    removed_counters += found->second.closed_counters;
    metrics::log(*log, spdlog::level::info, {{"event", "database_gone"}, {"database", name}},
                 "database {}: gone from {}; no longer forwarded", name, config.directory.string());
    databases.erase(found);
  }

  void rescan() {
    next_rescan = SteadyClock::now() + config.rescan_interval;
    std::vector<std::string> present;
    try {
      present = database_files(config.directory, config.glob);
    } catch (const std::runtime_error& error) {
      log->error("{}; trying again in {} ms", error.what(), config.rescan_interval.count());
      return;
    }
    std::vector<std::string> gone;
    for (auto& [name, database] : databases) {
      if (!std::binary_search(present.begin(), present.end(), name)) gone.push_back(name);
    }
    for (const auto& name : gone) remove(name);
    // A closed database whose files changed since it was last looked at is
    // looked at again (commits whose events were lost); an unchanged one
    // costs two stat() calls, not an open.
    for (const auto& name : present) {
      auto& database = add(name);
      if (!database.relay && signature(database.path) != database.seen) database.due = true;
    }
  }

  void watch_directory() {
    std::error_code error;
    if (!std::filesystem::is_directory(config.directory, error)) {
      throw std::runtime_error("--db-dir " + config.directory.string() +
                               ": no such directory (or not a directory)");
    }
    inotify_fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (inotify_fd < 0) {
      throw std::runtime_error(std::string("cannot watch directories (inotify): ") +
                               std::strerror(errno));
    }
    // A commit appends to "<db>-wal" (IN_MODIFY): one descriptor wakes every database.
    constexpr std::uint32_t kEvents =
        IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_MODIFY | IN_CLOSE_WRITE;
    if (::inotify_add_watch(inotify_fd, config.directory.c_str(), kEvents) < 0) {
      throw std::runtime_error("cannot watch " + config.directory.string() +
                               " (inotify): " + std::strerror(errno));
    }
  }

  void read_directory_events() {
    alignas(inotify_event) char buffer[16384];
    for (;;) {
      auto length = ::read(inotify_fd, buffer, sizeof buffer);
      if (length <= 0) return;  // EAGAIN: nothing more for now
      for (char* at = buffer; at < buffer + length;) {
        auto* event = reinterpret_cast<inotify_event*>(at);
        at += sizeof(inotify_event) + event->len;
        if ((event->mask & IN_Q_OVERFLOW) != 0) {
          log->warn("missed directory events in {} (inotify queue overflow); rescanning",
                    config.directory.string());
          next_rescan = SteadyClock::now();
          continue;
        }
        if (event->len == 0) continue;
        std::string name(event->name);
        constexpr std::string_view kWal = "-wal";
        if (name.size() > kWal.size() && name.ends_with(kWal)) {
          auto found = databases.find(name.substr(0, name.size() - kWal.size()));
          if (found != databases.end()) found->second.due = true;
          continue;
        }
        if (!matches(name)) continue;
        if ((event->mask & (IN_DELETE | IN_MOVED_FROM)) != 0) {
          remove(name);
        } else {
          add(name).due = true;
        }
      }
    }
  }

  // Closes the least recently busy open database that has nothing in
  // flight (idle or standby); false if every open database is busy.
  bool make_room() {
    Database* oldest = nullptr;
    for (auto* database : open_databases) {
      if (database->state != StepResult::State::idle &&
          database->state != StepResult::State::standby) {
        continue;
      }
      if (oldest == nullptr || database->last_busy < oldest->last_busy) oldest = database;
    }
    if (oldest == nullptr) return false;
    if (oldest->state == StepResult::State::standby) {
      close(*oldest, false);  // looked at again when the holder's lease ends
    } else {
      close_until_changed(*oldest, true);  // its next commit wakes it
    }
    return true;
  }

  void note_problem(Database& database, const std::string& problem) {
    if (database.last_problem == problem) return;
    database.last_problem = problem;
    metrics::log(*log, spdlog::level::warn,
                 {{"event", "database_skipped"}, {"database", database.name()}, {"error", problem}},
                 "database {}: {}; looking again when it changes", database.name(), problem);
  }

  // Hands a database that may have work to an opener thread; its step
  // after the open builds its relay (open()).
  void request_open(Database& database) {
    auto now = SteadyClock::now();
    database.call_again_by = kNever;
    // Taken before the read: a commit after it changes the files again.
    // Unchanged since a read found nothing pending: still nothing (the
    // events of closing our own connections end here, at two stat() calls).
    auto files = signature(database.path);
    if (files == database.seen) return;
    if (open_count >= config.max_open_databases && !make_room()) {
      database.call_again_by = now + milliseconds(100);  // every open one is busy
      return;
    }
    char instance[9];
    std::snprintf(instance, sizeof instance, "%08x", static_cast<unsigned>(random()));
    database.instance_id = instance;
    database.opening = next_ticket++;
    database.opening_files = files;
    database.opening_looked_ns = wall_clock_ns();
    opening_names.emplace(database.opening, database.name());
    ++open_count;
    opener->submit({database.opening, database.path, config.relay.holder + ":" + instance,
                    config.relay.lease_ttl});
  }

  // The opens the opener threads finished: a database with work is stepped
  // at once; one without (or failing) waits until its files change.
  void take_opened() {
    for (auto& result : opener->take()) {
      auto name = opening_names.find(result.ticket);
      if (name == opening_names.end()) {
        release_unused(result);  // gone from the directory meanwhile
        continue;
      }
      auto& database = databases.at(name->second);
      opening_names.erase(name);
      database.opening = 0;
      // Its files changed after the opener looked: look again (unchanged: at two stat()s).
      database.due = std::exchange(database.woken_while_opening, false);
      if (result.error) {
        --open_count;
        note_problem(database, *result.error);
        wait_until_changed(database);
        continue;
      }
      note_backlog(database, result.backlog, SteadyClock::now());
      database.last_problem.clear();
      if (!result.store) {
        --open_count;
        wait_until_changed(database);
        continue;
      }
      if (!own_origin(database, result.origin)) {
        --open_count;
        release_unused(result);
        database.seen = database.opening_files;
        continue;
      }
      database.opened = std::move(result);
      database.due = true;
    }
  }

  // An open that found nothing to do (or failed) waits for the files to
  // change. Not when they changed shortly before it looked: the clock that
  // stamps modification times ticks coarsely (4-10 ms), so a commit right
  // after the look can leave size and time as they were; and the files it
  // saw may hold a commit its read could not see yet (SQLite writes the
  // WAL, then its index, and a writer descheduled in between on a loaded
  // machine leaves that gap open for as long as it waits for a CPU). Such a
  // database is looked at again when its files have been still for twice
  // as long (at least kRacyWindow), until they have been still for
  // kSettledAfter: a handful of extra looks per burst of changes.
  void wait_until_changed(Database& database) {
    const auto& files = database.opening_files;
    const auto newest = std::max(files.database.modified_ns, files.wal.modified_ns);
    const auto still = std::chrono::nanoseconds(database.opening_looked_ns - newest);
    if (still < kSettledAfter) {
      database.seen = {};
      database.call_again_by =
          SteadyClock::now() + std::max<std::chrono::nanoseconds>(kRacyWindow, still);
    } else {
      database.seen = files;
    }
  }

  // Records that `database` forwards `origin`; false (logged once) if another
  // database of the directory does: the one opened first keeps it.
  bool own_origin(Database& database, const std::string& origin) {
    if (origin != database.origin) disown_origin(database);
    database.origin = origin;
    if (origin.empty()) return true;
    auto [owner, added] = origin_owners.try_emplace(origin, database.name());
    if (added || owner->second == database.name()) {
      database.copy_of.clear();
      return true;
    }
    database.copy_of = owner->second;
    note_problem(database, "has the same origin id '" + origin + "' as " +
                               (config.directory / owner->second).string() + " (" +
                               database.path.string() +
                               " is a copy of it, or it of this one); not forwarded while that "
                               "one is, give the copy a new origin id (docs/operations.md)");
    return false;
  }

  // `database` no longer forwards its origin: a copy refused for it is
  // looked at again.
  void disown_origin(Database& database) {
    auto owner = origin_owners.find(database.origin);
    if (owner == origin_owners.end() || owner->second != database.name()) return;
    origin_owners.erase(owner);
    for (auto& [name, other] : databases) {
      if (other.copy_of != database.name()) continue;
      other.copy_of.clear();
      other.seen = {};
      other.due = true;
    }
  }

  static void release_unused(OpenResult& result) {
    if (!result.store || !result.lease) return;
    try {
      result.store->release_lease(*result.lease);
    } catch (const outbox::Error&) {
      // it lapses by itself
    }
  }

  // A database gone from the directory (or at the end of run()) is not
  // opened any more: what an opener has of it is dropped.
  void forget_open(Database& database) {
    if (database.opening != 0) {
      opening_names.erase(database.opening);
      database.opening = 0;
      --open_count;
    }
    if (database.opened) {
      release_unused(*database.opened);
      database.opened.reset();
      --open_count;
    }
  }

  // Builds the relay of a database an opener found work in; false while it
  // is not opened (request_open()).
  bool open(Database& database) {
    if (database.opening != 0) return false;
    if (!database.opened) {
      request_open(database);
      return false;
    }
    auto now = SteadyClock::now();
    auto opened = std::move(*database.opened);
    database.opened.reset();
    database.store = std::move(opened.store);
    database.store->set_busy_timeout(
        std::min(config.stepped_busy_timeout, config.store.busy_timeout));
    auto relay_config = config.relay;
    relay_config.instance_id = database.instance_id;
    relay_config.logger = database_logger(log, database.name());
    // An idle database is not stepped to look for commits: inotify wakes it,
    // and the fallback check is paced over all databases (poll_open()).
    relay_config.idle_wait = std::chrono::hours(1);
    relay_config.first_window_one_batch = true;
    // A fresh slot each time: late replies to a closed relay's batches never
    // reach the next relay of the database, whose batch ids start at 1 again.
    database.slot = next_slot++;
    database.connection = database.slot % connections.size();
    database.channel = connections[database.connection]->channel(database.slot);
    database.sink = std::make_unique<SnowflakeWarningSink>(*database.channel, relay_config.logger,
                                                           database.path.string(),
                                                           database.warned_snowflake_ids);
    database.relay = std::make_unique<Relay>(*database.store, *database.sink, relay_config);
    // The opener claimed the lease with the database's first write: the
    // relay carries on with it rather than writing it again.
    if (opened.lease)
      database.relay->adopt_lease(std::move(*opened.lease), opened.lease_claimed_at);
    database.last_busy = now;
    database.last_poll = now;
    database.state = StepResult::State::busy;  // not to be closed before its first step
    open_databases.push_back(&database);
    return true;
  }

  void step(Database& database) {
    const bool woken = database.due;
    database.due = false;
    database.recheck_at = kNever;
    if (database.opening != 0) {
      database.woken_while_opening = database.woken_while_opening || woken;
      return;
    }
    if (!database.relay && !open(database)) return;
    StepResult result;
    try {
      result = database.relay->step();
    } catch (const SinkRefusal&) {
      throw;
    } catch (const std::exception& error) {
      // A database that fails for good (no outbox any more, corrupt, a newer
      // schema) stops only itself.
      note_problem(database, error.what());
      close_until_changed(database, false);
      return;
    }
    read_backlog(database);
    auto now = SteadyClock::now();
    database.state = result.state;
    database.call_again_by = result.call_again_by;
    if (woken && result.state == StepResult::State::idle) schedule_recheck(database, now);
    if (result.state == StepResult::State::busy) {
      database.due = true;
      database.last_busy = now;
    } else if (result.state == StepResult::State::idle &&
               now - database.last_busy >= config.idle_release) {
      metrics::log(*log, spdlog::level::debug,
                   {{"event", "database_released"}, {"database", database.name()}},
                   "database {}: idle; lease released and closed until its next commit",
                   database.name());
      close_until_changed(database, true);
    }
  }

  static constexpr milliseconds kRecheckDelay{2};
  static constexpr std::chrono::nanoseconds kRacyWindow = milliseconds(20);
  static constexpr std::chrono::nanoseconds kSettledAfter = milliseconds(1000);
  static void schedule_recheck(Database& database, SteadyClock::time_point now) {
    database.recheck_at = now + kRecheckDelay;
  }

  // The look at data_version that schedule_recheck asked for.
  void recheck(Database& database, SteadyClock::time_point now) {
    if (!database.relay || now < database.recheck_at) return;
    database.recheck_at = kNever;
    try {
      if (database.store->committed_since_last_look()) database.due = true;
    } catch (const outbox::Error&) {
      database.due = true;  // its step says what is wrong
    }
  }

  // The fallback for commits inotify did not report (a writer on another
  // machine of a network file system): PRAGMA data_version of one open idle
  // database at a time, at most config.fallback_checks_per_second in all and
  // no database more often than config.relay.idle_wait, so that its cost
  // does not grow with the number of databases.
  void poll_open() {
    auto now = SteadyClock::now();
    if (now < next_poll || open_databases.empty()) return;
    next_poll = now + std::chrono::microseconds(
                          1'000'000 / std::max<std::size_t>(config.fallback_checks_per_second, 1));
    for (std::size_t looked = 0; looked < open_databases.size(); ++looked) {
      auto& database = *open_databases[next_poll_index++ % open_databases.size()];
      if (database.due || database.state != StepResult::State::idle ||
          now - database.last_poll < config.relay.idle_wait) {
        continue;
      }
      database.last_poll = now;
      try {
        if (database.store->committed_since_last_look()) database.due = true;
      } catch (const outbox::Error&) {
        database.due = true;  // its step says what is wrong
      }
      return;
    }
  }

  void publish_counters(bool now) {
    auto clock = SteadyClock::now();
    if (!now && clock < next_counters) return;
    next_counters = clock + milliseconds(100);
    log_unmatched_answers();
    MultiRelayCounters counters;
    counters.databases = databases.size();
    counters.open = open_count;
    auto total = removed_counters;
    auto& listed = listing;
    listed.clear();
    for (auto& [name, database] : databases) {
      auto database_total = database.counters();
      total += database_total;
      if (database.relay && database_total.active) ++counters.active;
      if (database.relay && database_total.session_up) ++counters.sessions_up;
      if (config.backlog_interval.count() == 0) continue;
      if (!database.backlog) {
        ++counters.unread;
        continue;
      }
      const auto& backlog = *database.backlog;
      counters.pending += backlog.pending;
      counters.retrying += backlog.retrying;
      counters.dead_messages += backlog.dead;
      if (auto since = oldest_pending_since(database);
          since && (!counters.oldest_pending_since || *since < *counters.oldest_pending_since)) {
        counters.oldest_pending_since = since;
        counters.oldest_pending_database = name;
      }
      listed.push_back(&database);
    }
    counters.stored = total.stored;
    counters.duplicates = total.duplicates;
    counters.dead = total.dead;
    counters.sent_messages = total.sent_messages;
    // The largest backlogs: most pending, then most dead, then by name.
    auto first = [](const Database* a, const Database* b) {
      const auto &x = *a->backlog, &y = *b->backlog;
      if (x.pending != y.pending) return x.pending > y.pending;
      if (x.dead != y.dead) return x.dead > y.dead;
      return a->path < b->path;
    };
    auto count = std::min(listed.size(), config.listed_databases);
    std::partial_sort(listed.begin(), listed.begin() + static_cast<std::ptrdiff_t>(count),
                      listed.end(), first);
    for (const auto* database : std::span(listed).first(count)) {
      const auto database_total = database->counters();
      DatabaseCounters entry;
      entry.name = database->name();
      entry.pending = database->backlog->pending;
      entry.retrying = database->backlog->retrying;
      entry.dead = database->backlog->dead;
      entry.oldest_pending_since = oldest_pending_since(*database);
      entry.counters = database_total;
      entry.open = database->relay != nullptr;
      entry.active = entry.open && database_total.active;
      entry.session_up = entry.open && database_total.session_up;
      counters.largest.push_back(std::move(entry));
    }
    std::lock_guard lock(counters_mutex);
    published = std::move(counters);
  }

  // Answers to HELLOs that named none in flight were dropped (a duplicated
  // reply); said once per 100 ms at most, with how many.
  void log_unmatched_answers() {
    std::uint64_t unmatched = 0;
    for (const auto& connection : connections) unmatched += connection->unmatched_answers();
    if (unmatched == unmatched_answers_logged) return;
    log->warn(
        "{}: {} answer(s) naming no HELLO in flight ignored ({} in all): a reply duplicated on "
        "the way, or one that came after its HELLO was given up",
        config.broker.endpoint, unmatched - unmatched_answers_logged, unmatched);
    unmatched_answers_logged = unmatched;
  }

  static std::optional<SteadyClock::time_point> oldest_pending_since(const Database& database) {
    if (!database.backlog || database.backlog->pending == 0 ||
        !database.backlog->oldest_pending_age) {
      return std::nullopt;
    }
    return database.backlog_read_at - *database.backlog->oldest_pending_age;
  }

  // Sleeps until a reply, a directory event or `deadline`, whichever is first.
  void await(SteadyClock::time_point deadline) {
    std::vector<zmq::pollitem_t> items;
    items.push_back({nullptr, inotify_fd, ZMQ_POLLIN, 0});
    items.push_back({nullptr, opener->descriptor(), ZMQ_POLLIN, 0});
    for (auto& connection : connections) {
      auto readable = connection->readable();
      items.push_back({readable.socket, readable.descriptor, ZMQ_POLLIN, 0});
    }
    // Connection events (a broken connection) are read with the replies:
    // look at least every 100 ms.
    auto wait = std::min(detail::until(deadline), milliseconds(100));
    try {
      zmq::poll(items.data(), items.size(), wait);
    } catch (const zmq::error_t& error) {
      if (error.num() != EINTR) throw;  // a signal (SIGTERM): the loop looks at stop
    }
  }

  void run() {
    watch_directory();
    rescan();
    log->info("forwarding the outbox databases in {} matching '{}' ({} found) over {} connections",
              config.directory.string(), config.glob, databases.size(), connections.size());
    while (!stop.load()) {
      read_directory_events();
      take_opened();
      if (SteadyClock::now() >= next_rescan) rescan();
      for (auto& connection : connections) connection->pump(milliseconds(0));
      poll_open();
      auto next = SteadyClock::now() + milliseconds(1000);
      if (!open_databases.empty()) next = std::min(next, next_poll);
      bool busy = false;
      for (auto& [name, database] : databases) {
        if (stop.load()) break;
        auto now = SteadyClock::now();
        recheck(database, now);
        bool replies =
            database.relay && connections[database.connection]->has_events(database.slot);
        if (database.due || replies || now >= database.call_again_by) step(database);
        busy = busy || database.due;
        next = std::min({next, database.call_again_by, database.recheck_at});
      }
      publish_counters(false);
      if (!busy) await(next);
    }
    // One drain timeout for all of them, not one each: the databases'
    // replies keep arriving while the first ones wait, and a reply that never
    // comes (a connection that went silent) costs the timeout once.
    const auto deadline = SteadyClock::now() + config.relay.drain_timeout;
    for (auto& [name, database] : databases) {
      close(database, true, deadline);
      forget_open(database);
    }
    opener.reset();  // an open under way finishes; its lease is given back
    publish_counters(true);
  }
};

MultiRelay::MultiRelay(MultiRelayConfig config)
    : impl_(std::make_unique<Impl>(std::move(config))) {}

MultiRelay::~MultiRelay() noexcept = default;

void MultiRelay::run() {
  impl_->run();
}

void MultiRelay::request_stop() noexcept {
  impl_->stop.store(true);
}

MultiRelayCounters MultiRelay::counters() const {
  std::lock_guard lock(impl_->counters_mutex);
  return impl_->published;
}

}  // namespace relay
