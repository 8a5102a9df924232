// The workloads the power-loss test records, and the checks that judge a
// crash image of them with the real code (outbox-power-loss, and the model's
// own tests).
//
// Broker: broker::Store appends batches of 1-16 messages over three topics,
// some of them resends of earlier msg_ids (DUPLICATE), payloads from a byte to
// past a 16 KiB page. Producer: outbox::Transaction commits one business row
// and 1-3 messages per transaction. Payload, key and topic follow from the
// msg_id, so a checker knows what every stored message must hold. The same
// seed writes the same bytes (fixed clocks, a configured worker id, the
// recording VFS's seeded randomness).
//
// Not thread-safe; one workload at a time (the recording VFS records one
// directory). Errors: a workload that does not behave as it should (a batch
// not acknowledged as expected) throws std::runtime_error; what a crash image
// gets wrong is reported in Found/Verdict, never thrown.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "recording_vfs.hpp"

namespace power {

struct Workload {
  std::string subject = "broker";  // broker (broker::Store) or producer (outbox::Outbox)
  std::string sync = "full";       // full or normal
  std::uint64_t commits = 24;      // batches or transactions per run
  // Producer: Options::wal_autocheckpoint_pages; empty keeps the library's default.
  std::optional<int> checkpoint_pages;
};

// One acknowledged batch (broker) or committed transaction (producer): the
// msg_ids it made new. The program records event i right after commit i returned.
struct Commit {
  std::vector<std::string> msg_ids;
};

struct Run {
  std::uint64_t number = 0;
  std::uint64_t seed = 0;
  Recording recording;
  std::vector<Commit> commits;
};

// What a crash image holds, as the real code reads it.
struct Found {
  std::map<std::string, std::uint64_t> commit_of;  // msg_id found -> its commit
  std::set<std::uint64_t> business_rows;           // producer: order ids found
  std::vector<std::string> problems;               // one line each
};

struct Verdict {
  std::uint64_t acked = 0;          // commits acknowledged before the crash point
  std::uint64_t commits_lost = 0;   // of those, missing after the crash
  std::uint64_t messages_lost = 0;  // their msg_ids
  std::vector<std::string> problems;
};

// The seed of run `number` of a test seeded with `seed`.
std::uint64_t run_seed(std::uint64_t seed, std::uint64_t number);

// Runs the workload in `directory` (empty) and records it: the database is
// created first, then recording starts, then the commits run and the
// database is closed. The recording VFS must be installed.
Run record_run(const Workload& workload, std::uint64_t seed, std::uint64_t number,
               const std::filesystem::path& directory);

// Opens the database in `directory` with the real code and reads everything
// back: broker::Store (its quick_check at open, fetch of every topic, stats,
// a resend of every message found, which must come back DUPLICATE at its
// offset, then of every message of the run not found, which must be STORED:
// no dedup entry outlives its message) or outbox::Outbox (business rows, outbox rows in seq order);
// then PRAGMA integrity_check.
Found inspect(const Workload& workload, const Run& run, const std::filesystem::path& directory);

// Judges what was found after a crash at `crash_point`: every commit all
// there or not at all, none there that had not started, lost ones only at the
// end (no hole) and none acknowledged before the last sync of a WAL. With
// `durable_required` (synchronous=FULL promises it) any lost acknowledged
// commit is a problem too.
Verdict judge(const Run& run, std::size_t crash_point, const Found& found, bool durable_required);

// `count` crash points of the run chosen by its seed, always with the one
// after everything; all of them when there are not more.
std::vector<std::size_t> choose_points(const Run& run, std::uint64_t count);

}  // namespace power
