#include "relay/filesystem.hpp"

#include <sys/vfs.h>

#include <array>
#include <cstdio>

namespace relay {
namespace {

struct KnownFilesystem {
  std::uint64_t magic;
  const char* name;
  FilesystemKind kind;
};

// Magic numbers from linux/magic.h and the filesystems' own sources.
constexpr std::array known_filesystems{
    // Network filesystems: locks and the WAL mapping are not shared reliably.
    KnownFilesystem{0x6969, "nfs", FilesystemKind::network},
    KnownFilesystem{0x517B, "smb", FilesystemKind::network},
    KnownFilesystem{0xFF534D42, "cifs", FilesystemKind::network},
    KnownFilesystem{0xFE534D42, "smb2", FilesystemKind::network},
    KnownFilesystem{0x564C, "ncp", FilesystemKind::network},
    KnownFilesystem{0x73757245, "coda", FilesystemKind::network},
    KnownFilesystem{0x5346414F, "afs", FilesystemKind::network},
    KnownFilesystem{0x6B414653, "kafs", FilesystemKind::network},
    KnownFilesystem{0x00C36400, "ceph", FilesystemKind::network},
    KnownFilesystem{0x0BD00BD0, "lustre", FilesystemKind::network},
    KnownFilesystem{0x47504653, "gpfs", FilesystemKind::network},
    KnownFilesystem{0x01161970, "gfs2", FilesystemKind::network},
    KnownFilesystem{0x7461636F, "ocfs2", FilesystemKind::network},
    // 9p: host directories in QEMU guests and WSL2's Windows drives; its locks
    // are not forwarded to the host by default.
    KnownFilesystem{0x01021997, "9p", FilesystemKind::network},
    // Cannot tell: FUSE may be sshfs (network) or a local overlay; virtiofs
    // shares a host directory with a VM, safe only if every process runs in
    // the same guest.
    KnownFilesystem{0x65735546, "fuse", FilesystemKind::unknown},
    KnownFilesystem{0x6A656A63, "virtiofs", FilesystemKind::unknown},
    // Local.
    KnownFilesystem{0xEF53, "ext4", FilesystemKind::local},  // also ext2, ext3
    KnownFilesystem{0x58465342, "xfs", FilesystemKind::local},
    KnownFilesystem{0x9123683E, "btrfs", FilesystemKind::local},
    KnownFilesystem{0x2FC12FC1, "zfs", FilesystemKind::local},
    KnownFilesystem{0xF2F52010, "f2fs", FilesystemKind::local},
    KnownFilesystem{0xCA451A4E, "bcachefs", FilesystemKind::local},
    KnownFilesystem{0x52654973, "reiserfs", FilesystemKind::local},
    KnownFilesystem{0x3153464A, "jfs", FilesystemKind::local},
    KnownFilesystem{0x3434, "nilfs", FilesystemKind::local},
    KnownFilesystem{0x01021994, "tmpfs", FilesystemKind::local},
    KnownFilesystem{0x858458F6, "ramfs", FilesystemKind::local},
    KnownFilesystem{0x794C7630, "overlayfs", FilesystemKind::local},
    KnownFilesystem{0xF15F, "ecryptfs", FilesystemKind::local},
    KnownFilesystem{0x4D44, "vfat", FilesystemKind::local},
    KnownFilesystem{0x2011BAB0, "exfat", FilesystemKind::local},
    KnownFilesystem{0x5346544E, "ntfs", FilesystemKind::local},
    KnownFilesystem{0x7366746E, "ntfs3", FilesystemKind::local},
    KnownFilesystem{0x482B, "hfsplus", FilesystemKind::local},
};

}  // namespace

FilesystemVerdict classify_filesystem(std::uint64_t statfs_type) {
  // f_type is a signed word on some ABIs: compare the low 32 bits.
  const auto magic = statfs_type & 0xFFFFFFFFu;
  for (const auto& known : known_filesystems) {
    if (known.magic == magic) return {known.kind, known.name};
  }
  char name[16];
  std::snprintf(name, sizeof name, "0x%llx", static_cast<unsigned long long>(magic));
  return {FilesystemKind::unknown, name};
}

std::optional<FilesystemVerdict> database_filesystem(const std::filesystem::path& database) {
  struct statfs info {};
  if (::statfs(database.c_str(), &info) != 0) {
    auto directory =
        database.parent_path().empty() ? std::filesystem::path(".") : database.parent_path();
    if (::statfs(directory.c_str(), &info) != 0) return std::nullopt;
  }
  return classify_filesystem(static_cast<std::uint64_t>(info.f_type));
}

}  // namespace relay
