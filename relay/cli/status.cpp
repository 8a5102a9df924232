// outbox-relay status: the backlog, the lease and the relay's last report
// of one database, or the cheap figures of every database of a directory.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli/json.hpp"
#include "cli/process.hpp"
#include "cli/time.hpp"
#include "commands.hpp"
#include "relay/multi_relay.hpp"

namespace relay::commands {
namespace {

// A session counts as up only while the relay that reported it still holds a
// valid lease: a relay killed with its session open leaves session_up behind.
bool session_up(const std::optional<outbox::RelayStatus>& status,
                const std::optional<outbox::LeaseInfo>& lease) {
  return status && status->session_up && lease && !lease->expired &&
         lease->holder == status->holder;
}

cli::Json json_time(const std::optional<outbox::TimePoint>& time) {
  return time ? cli::Json(cli::format_utc_time(*time)) : cli::Json(nullptr);
}

// The lease as JSON: holder, epoch, expiry; null when never claimed.
cli::Json lease_json(const std::optional<outbox::LeaseInfo>& lease) {
  if (!lease) return nullptr;
  return {{"holder", cli::json_text(lease->holder)},
          {"epoch", lease->epoch},
          {"expires_at", cli::format_utc_time(lease->expires_at)},
          {"expired", lease->expired}};
}

// ---- status --db-dir ------------------------------------------------------------

// What status reads of one database of the directory.
struct DirectoryEntry {
  std::string name;
  outbox::Backlog backlog;
  std::optional<outbox::LeaseInfo> lease;
  std::string origin;
  std::optional<std::string> error;
  std::vector<std::string> same_origin_as;  // the other databases with this origin id
};

std::vector<DirectoryEntry> read_directory(const std::string& directory,
                                           const std::vector<std::string>& names) {
  std::vector<DirectoryEntry> entries;
  std::map<std::string, std::vector<std::string>> by_origin;
  for (const auto& name : names) {
    auto& entry = entries.emplace_back(DirectoryEntry{name, {}, {}, {}, {}, {}});
    try {
      auto store = outbox::RelayStore::open((std::filesystem::path(directory) / name).string(),
                                            {.read_only = true});
      entry.backlog = store.backlog();
      entry.lease = store.lease_info();
      entry.origin = store.origin_id();
      if (!entry.origin.empty()) by_origin[entry.origin].push_back(name);
    } catch (const outbox::Error& error) {
      entry.error = error.what();
    }
  }
  for (auto& entry : entries) {
    if (entry.error || entry.origin.empty()) continue;
    for (const auto& name : by_origin.at(entry.origin)) {
      if (name != entry.name) entry.same_origin_as.push_back(name);
    }
  }
  return entries;
}

std::int64_t age_ms(const outbox::Backlog& backlog) {
  return backlog.oldest_pending_age ? backlog.oldest_pending_age->count() : 0;
}

struct DirectoryTotals {
  std::int64_t pending = 0, dead = 0, oldest = 0, active = 0, unreadable = 0, shared = 0;

  void add(const DirectoryEntry& entry) {
    if (entry.error) {
      ++unreadable;
      return;
    }
    pending += entry.backlog.pending;
    dead += entry.backlog.dead;
    oldest = std::max<std::int64_t>(oldest, age_ms(entry.backlog));
    if (entry.lease && !entry.lease->expired) ++active;
    if (!entry.same_origin_as.empty()) ++shared;
  }
};

cli::Json directory_entry_json(const DirectoryEntry& entry) {
  if (entry.error) {
    return {{"db", cli::json_text(entry.name)}, {"error", cli::json_text(*entry.error)}};
  }
  cli::Json same = cli::Json::array();
  for (const auto& other : entry.same_origin_as) same.push_back(cli::json_text(other));
  return {{"db", cli::json_text(entry.name)},
          {"pending", entry.backlog.pending},
          {"retrying", entry.backlog.retrying},
          {"dead", entry.backlog.dead},
          {"oldest_pending_age_ms", age_ms(entry.backlog)},
          {"lease", lease_json(entry.lease)},
          {"origin_id", cli::json_text(entry.origin)},
          {"same_origin_as", std::move(same)},
          {"error", nullptr}};
}

void print_directory_json(const std::string& directory, const std::vector<DirectoryEntry>& entries,
                          const DirectoryTotals& totals) {
  cli::Json databases = cli::Json::array();
  for (const auto& entry : entries) databases.push_back(directory_entry_json(entry));
  const cli::Json totals_json = {{"databases", entries.size()},
                                 {"unreadable", totals.unreadable},
                                 {"pending", totals.pending},
                                 {"dead", totals.dead},
                                 {"oldest_pending_age_ms", totals.oldest},
                                 {"leases_held", totals.active},
                                 {"same_origin", totals.shared}};
  const cli::Json status = {{"db_dir", cli::json_text(directory)},
                            {"databases", std::move(databases)},
                            {"totals", totals_json}};
  std::cout << status.dump() << "\n";
}

std::string directory_entry_line(const DirectoryEntry& entry) {
  if (entry.error) return entry.name + ": " + *entry.error + "\n";
  const auto& backlog = entry.backlog;
  const auto& lease = entry.lease;
  char line[512];
  std::snprintf(
      line, sizeof line, "%-32s %9lld %12s %6lld  %s\n", entry.name.c_str(),
      static_cast<long long>(backlog.pending),
      backlog.oldest_pending_age ? (std::to_string(age_ms(backlog)) + " ms").c_str() : "-",
      static_cast<long long>(backlog.dead),
      !lease           ? "none"
      : lease->expired ? ("expired (" + lease->holder + ")").c_str()
                       : lease->holder.c_str());
  return line;
}

void print_directory_text(const std::vector<DirectoryEntry>& entries,
                          const DirectoryTotals& totals) {
  std::ostringstream lines;
  std::ostringstream warnings;
  for (const auto& entry : entries) {
    lines << directory_entry_line(entry);
    // One warning per group of copies, under the name that sorts first.
    const auto& others = entry.same_origin_as;
    if (!entry.error && !others.empty() && others.front() > entry.name) {
      warnings << "same origin id '" << entry.origin << "': " << entry.name;
      for (const auto& other : others) warnings << ", " << other;
      warnings << " (copies of one database): a relay forwards only one of them; give each "
                  "copy a new origin id (docs/operations.md)\n";
    }
  }
  char header[256];
  std::snprintf(header, sizeof header, "%-32s %9s %12s %6s  %s\n", "database", "pending", "oldest",
                "dead", "lease");
  std::cout << header << lines.str() << warnings.str() << "total: " << entries.size()
            << " databases (" << totals.unreadable << " unreadable, " << totals.shared
            << " sharing an origin id), pending " << totals.pending << ", oldest " << totals.oldest
            << " ms, dead " << totals.dead << ", leases held " << totals.active << "\n";
}

// status --db-dir: one line (or JSON entry) per database with the cheap
// figures (no count of the delivered rows kept), then the totals. Databases
// that share an origin id (one is a copy of another) are named: a relay
// forwards only one of them.
int show_directory_status(const std::string& directory, const std::string& glob, bool json) {
  std::vector<std::string> names;
  try {
    names = relay::database_files(directory, glob);
  } catch (const std::runtime_error& error) {
    std::fprintf(stderr, "outbox-relay: --db-dir: %s\n", error.what());
    return cli::exit_storage;
  }
  auto entries = read_directory(directory, names);
  DirectoryTotals totals;
  for (const auto& entry : entries) totals.add(entry);
  if (json) {
    print_directory_json(directory, entries, totals);
  } else {
    print_directory_text(entries, totals);
  }
  return cli::exit_ok;
}

// ---- status --db ----------------------------------------------------------------

cli::Json relay_report_json(const std::optional<outbox::RelayStatus>& report, bool up) {
  if (!report) return nullptr;
  return {{"holder", cli::json_text(report->holder)},
          {"destination", cli::json_text(report->destination)},
          {"session_up", up},
          {"session_changed_at", json_time(report->session_changed_at)},
          {"last_error",
           report->last_error.empty() ? cli::Json(nullptr) : cli::json_text(report->last_error)},
          {"last_error_at", json_time(report->last_error_at)},
          {"last_progress_at", json_time(report->last_progress_at)},
          {"updated_at", json_time(report->updated_at)}};
}

void print_database_json(const std::string& db, const outbox::Stats& stats,
                         const std::optional<outbox::RelayStatus>& report, bool up) {
  const cli::Json status = {
      {"db", cli::json_text(db)},
      {"pending", stats.pending},
      {"retrying", stats.retrying},
      {"delivered", stats.delivered},
      {"delivered_total", stats.delivered_total},
      {"dead", stats.dead},
      {"last_seq", stats.last_seq},
      {"settled_through_seq", stats.settled_through_seq},
      {"oldest_pending_age_ms", stats.oldest_pending_age ? stats.oldest_pending_age->count() : 0},
      {"lease", lease_json(stats.lease)},
      {"session_up", up},
      {"relay", relay_report_json(report, up)}};
  std::cout << status.dump() << "\n";
}

void print_database_text(const std::string& db, const outbox::Stats& stats,
                         const std::optional<outbox::RelayStatus>& report, bool up) {
  std::cout << "outbox:            " << db << "\n"
            << "pending:           " << stats.pending << " (" << stats.retrying
            << " waiting for a retry)\n"
            << "oldest pending:    "
            << (stats.oldest_pending_age ? std::to_string(stats.oldest_pending_age->count()) + " ms"
                                         : "-")
            << "\n"
            << "delivered:         " << stats.delivered << " kept, " << stats.delivered_total
            << " in all\n"
            << "dead:              " << stats.dead << "\n"
            << "last seq:          " << stats.last_seq << " (settled through "
            << stats.settled_through_seq << ")\n";
  if (stats.lease) {
    std::cout << "lease:             " << stats.lease->holder << " (epoch " << stats.lease->epoch
              << ", " << (stats.lease->expired ? "expired " : "expires ")
              << cli::format_utc_time(stats.lease->expires_at) << ")\n";
  } else {
    std::cout << "lease:             none (no relay has run yet)\n";
  }
  if (!report) {
    std::cout << "session:           - (no relay has reported)\n";
    return;
  }
  std::cout
      << "session:           " << (up ? "up" : "down") << " with " << report->destination
      << " (since " << cli::format_utc_time(report->session_changed_at) << ")\n"
      << "last error:        "
      << (report->last_error.empty()
              ? std::string("-")
              : report->last_error + " (at " +
                    cli::format_utc_time(report->last_error_at.value_or(outbox::TimePoint{})) + ")")
      << "\n"
      << "last progress:     "
      << (report->last_progress_at ? cli::format_utc_time(*report->last_progress_at) : "-") << "\n";
}

int show_database_status(const std::string& db, bool json) {
  outbox::Stats stats;
  std::optional<outbox::RelayStatus> report;
  try {
    auto store = outbox::RelayStore::open(db, {.read_only = true});
    stats = store.stats();
    report = store.read_status();
  } catch (const outbox::Error& error) {
    // A read that fails (a corrupt page) says only what SQLite says.
    if (std::string_view(error.what()).find(db) != std::string_view::npos) throw;
    throw outbox::Error(error.kind(), "database '" + db + "': " + error.what(),
                        error.extended_code());
  }
  const bool up = session_up(report, stats.lease);
  if (json) {
    print_database_json(db, stats, report, up);
  } else {
    print_database_text(db, stats, report, up);
  }
  return cli::exit_ok;
}

}  // namespace

int show_status(const StatusSettings& settings) {
  if (settings.db.empty() == settings.db_dir.empty()) {
    throw cli::UsageError("status needs --db (one database) or --db-dir (a directory of them)");
  }
  return settings.db_dir.empty()
             ? show_database_status(settings.db, settings.json)
             : show_directory_status(settings.db_dir, settings.glob, settings.json);
}

}  // namespace relay::commands
