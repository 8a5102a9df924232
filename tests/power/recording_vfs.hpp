// A test-only SQLite VFS that records what reaches a directory's files, so
// that the state a power loss could leave behind can be rebuilt for any moment
// of a run (crash_image.hpp). Never part of a product: the power-loss test
// program installs it as the default VFS before it opens any database, and the
// code under test (broker::Store, outbox::Outbox) opens its files through it
// unchanged.
//
// It wraps the VFS that was the default (unix) and passes every call through,
// so the run itself behaves exactly as without it; while recording it also
// appends to a log, in the order they happened, every write (offset and
// bytes), truncate and xSync of a file in the recorded directory, each file
// created or deleted there, and each fsync of the directory the unix VFS makes
// (at the first xSync of a WAL or journal it created, and with xDelete's
// syncDir). The program adds its own events between them (a batch
// acknowledged, a transaction committed). Shared memory (-shm) is not
// recorded: SQLite rebuilds it from the WAL after a restart.
//
// Files are told apart by generation, not by name: a file deleted and created
// again under the same name is a new generation, as it is a new inode on disk.
//
// Thread safety: the log is guarded by a mutex, so SQLite may call in from any
// thread; start(), stop() and take_log() are meant for the test's main thread
// between runs. Errors: start() throws std::runtime_error when the directory
// cannot be read; the VFS methods return SQLite's codes as the wrapped VFS did.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace power {

struct Operation {
  enum class Kind : std::uint8_t {
    create,    // a new generation of `name` appeared (not yet durable in the directory)
    write,     // `data` written at `offset`
    truncate,  // size set to `offset`
    sync,      // xSync: everything written to the generation so far is durable
    remove,    // `name` unlinked (not yet durable in the directory)
    dir_sync,  // the directory was fsync'ed: every create and remove so far is durable
    event,     // the program's own marker (`event` is its number)
  };
  Kind kind = Kind::event;
  std::string name;         // file name inside the recorded directory
  int generation = -1;      // which file (create, write, truncate, sync, remove)
  std::int64_t offset = 0;  // write: where; truncate: the new size
  std::string data;         // write: the bytes
  std::uint64_t event = 0;  // event: the program's number
};

// The directory as it was when recording started: the first generations.
struct Baseline {
  std::map<std::string, std::string> files;  // name -> content
};

struct Recording {
  Baseline baseline;
  // Generation g < baseline size is the baseline file of that rank (map order).
  std::vector<Operation> log;
};

// Installs the recording VFS as SQLite's default (once per process; later
// calls return at once). Call before any database is opened.
void install_recording_vfs();

// Makes the randomness the VFS gives SQLite (WAL salts, temporary names) a
// function of `seed` from now on and reseeds SQLite's generator with it, so a
// run is replayed byte for byte.
void seed_randomness(std::uint64_t seed);

// Starts recording the files of `directory` (its current content is the
// baseline; -shm files are left out). Only one directory at a time.
void start_recording(const std::filesystem::path& directory);
// Adds a marker to the log (between the operations before and after it).
void record_event(std::uint64_t event);
// Stops recording and hands over what was recorded.
Recording stop_recording();

}  // namespace power
