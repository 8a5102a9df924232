// Is an outbox database on a filesystem the relay can safely share with its
// producers and standbys? SQLite's WAL mode keeps its index in shared memory
// (the -shm file, mapped by every process) and coordinates readers, writers,
// the relay lease and its fencing through POSIX advisory locks. Both work only
// between processes on the host that has the file on a local disk: over
// NFS, SMB and the like the mapping is not shared and the locks are
// unreliable, and the database can be corrupted.
//
//   auto verdict = relay::database_filesystem("app.db");
//   if (verdict && verdict->kind == relay::FilesystemKind::network) { refuse }
//
// Linux only (statfs f_type). Thread safety: free functions without state.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace relay {

enum class FilesystemKind : std::uint8_t {
  local,    // a local disk or memory filesystem: safe
  network,  // known to be shared over a network (or a VM boundary): refuse
  unknown,  // cannot tell (FUSE, virtiofs, a type this build does not know): warn
};

struct FilesystemVerdict {
  FilesystemKind kind = FilesystemKind::unknown;
  std::string name;  // "nfs", "ext4", "fuse", or the magic number in hex
};

// Classifies a statfs() f_type magic number.
FilesystemVerdict classify_filesystem(std::uint64_t statfs_type);

// statfs() of `database` (or of its directory when the file does not exist
// yet); empty when neither can be read (the caller's open reports that).
std::optional<FilesystemVerdict> database_filesystem(const std::filesystem::path& database);

}  // namespace relay
