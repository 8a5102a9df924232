// The full-disk fault (--full-disk): a tmpfs of its own for app.db.
#pragma once

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include "faults_common.hpp"

namespace faults {

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

}  // namespace faults
