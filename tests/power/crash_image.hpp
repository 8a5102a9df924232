// What a directory holds after a power loss at a chosen moment of a recorded
// run (recording_vfs.hpp), in the spirit of SQLite's crash VFS (src/test6.c)
// and Jepsen's LazyFS: written data that no xSync covered is gone.
//
// A crash point is a position in the log: the operations before it completed,
// the one at it (if any) was under way when the power went. After the crash:
//   - a file holds what its generation had when it was last synced (its
//     baseline content, then every write and truncate before its last xSync
//     before the crash point); later writes and truncates are lost;
//   - a name points to the generation it pointed to at the last directory
//     fsync (creates and deletes since then are lost: a deleted file comes
//     back with its synced content, a created one is missing);
//   - with Cut::torn, in addition, the most recent unsynced write (the one
//     under way, or else the last one before it) of a file that survives is
//     torn: a random part of its 512-byte sectors reached the disk, the rest
//     did not (at least one of each when it spans two sectors or more);
//   - with Cut::reordered, instead, the page cache wrote back what it liked:
//     every sector that unsynced writes touched (the one under way included)
//     holds one of the versions it had since the last xSync, chosen at
//     random sector by sector. Unsynced truncates stay lost.
// Writes are sector-granular and never damage bytes outside their range (the
// powersafe-overwrite property SQLite's unix VFS assumes by default).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "recording_vfs.hpp"

namespace power {

enum class Cut : std::uint8_t {
  discard,    // every unsynced write is lost
  torn,       // the last unsynced write survives in part
  reordered,  // each unsynced sector holds any of its versions since the last sync
};

struct CrashImage {
  std::map<std::string, std::string> files;  // name -> content
  // Cut::torn: which write was torn and how many of its sectors survived;
  // Cut::reordered: how many unsynced sectors hold a newer version. Empty
  // when there was nothing unsynced to cut.
  std::string note;
};

// The positions worth cutting at: before every operation that touches a file
// or the directory, and after the last one. (Cutting right before one of the
// program's own events leaves the same disk state as cutting at the next file
// operation, with one fewer event seen.)
std::vector<std::size_t> crash_points(const Recording& recording);

// The directory's content after a power loss at `crash_point` (0 ..
// log.size()). `seed` chooses which sectors of a torn write survive.
CrashImage crash_image(const Recording& recording, std::size_t crash_point, Cut cut,
                       std::uint64_t seed);

// Writes the image's files into `directory` (which must exist and be empty).
void write_image(const CrashImage& image, const std::filesystem::path& directory);

}  // namespace power
