#include "cli/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <random>
#include <string>
#include <system_error>

namespace cli {
namespace {

[[noreturn]] void fail(const char* what, const std::filesystem::path& path, int error) {
  throw std::filesystem::filesystem_error(what, path,
                                          std::error_code(error, std::generic_category()));
}

// Writes everything and flushes it to disk; closes `fd` in every case.
void write_and_close(int fd, std::string_view content, const std::filesystem::path& path) {
  std::size_t written = 0;
  while (written < content.size()) {
    auto n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int error = errno;
      ::close(fd);
      fail("cannot write", path, error);
    }
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    int error = errno;
    ::close(fd);
    fail("cannot flush", path, error);
  }
  if (::close(fd) != 0) fail("cannot close", path, errno);
}

int create_exclusive(const std::filesystem::path& path, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) fail("cannot create", path, errno);
  // The umask may have taken bits away; never add any beyond `mode`.
  if (::fchmod(fd, mode) != 0) {
    int error = errno;
    ::close(fd);
    ::unlink(path.c_str());
    fail("cannot set the permissions of", path, error);
  }
  return fd;
}

}  // namespace

void write_new_file(const std::filesystem::path& path, std::string_view content, mode_t mode,
                    Overwrite overwrite) {
  if (overwrite == Overwrite::refuse) {
    int fd = create_exclusive(path, mode);
    try {
      write_and_close(fd, content, path);
    } catch (...) {
      ::unlink(path.c_str());
      throw;
    }
    return;
  }
  auto temporary = path;
  temporary += ".tmp-" + std::to_string(std::random_device{}());
  int fd = create_exclusive(temporary, mode);
  try {
    write_and_close(fd, content, temporary);
    if (::rename(temporary.c_str(), path.c_str()) != 0) fail("cannot replace", path, errno);
  } catch (...) {
    ::unlink(temporary.c_str());
    throw;
  }
}

}  // namespace cli
