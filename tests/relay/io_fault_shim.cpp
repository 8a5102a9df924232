// Test-only LD_PRELOAD library: writes to one database fail with EIO on
// demand, so that a test can watch a real process meet SQLITE_IOERR. Nothing
// in the product links it; a test starts a program with
//
//   LD_PRELOAD=<this library>
//   OUTBOX_TEST_IO_FAULT_PATH=<absolute database path>   (also matches its -wal,
//                                                         -shm and -journal files)
//   OUTBOX_TEST_IO_FAULT_SWITCH=<file>                   (fail while it exists)
//
// and creates or removes the switch file. write, pwrite, pwrite64, fsync and
// fdatasync on a descriptor whose file name starts with the path then fail
// with EIO; everything else goes to the C library unchanged.
#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

template <typename Function>
Function next_definition(const char* name) {
  return reinterpret_cast<Function>(dlsym(RTLD_NEXT, name));
}

bool should_fail(int fd) {
  const char* path = std::getenv("OUTBOX_TEST_IO_FAULT_PATH");
  const char* on_switch = std::getenv("OUTBOX_TEST_IO_FAULT_SWITCH");
  if (path == nullptr || on_switch == nullptr || fd < 0) return false;
  const int saved_errno = errno;
  bool fail = false;
  if (::access(on_switch, F_OK) == 0) {
    char link[64];
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    char target[PATH_MAX];
    auto length = ::readlink(link, target, sizeof target - 1);
    if (length > 0) {
      target[length] = '\0';
      fail = std::strncmp(target, path, std::strlen(path)) == 0;
    }
  }
  errno = saved_errno;
  return fail;
}

// True (with errno EIO) when the call on `fd` is to fail.
bool refuse(int fd) {
  if (!should_fail(fd)) return false;
  errno = EIO;
  return true;
}

}  // namespace

extern "C" {

ssize_t write(int fd, const void* buffer, size_t count) {
  static auto real = next_definition<ssize_t (*)(int, const void*, size_t)>("write");
  if (refuse(fd)) return -1;
  return real(fd, buffer, count);
}

ssize_t pwrite(int fd, const void* buffer, size_t count, off_t offset) {
  static auto real = next_definition<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite");
  if (refuse(fd)) return -1;
  return real(fd, buffer, count, offset);
}

ssize_t pwrite64(int fd, const void* buffer, size_t count, off64_t offset) {
  static auto real = next_definition<ssize_t (*)(int, const void*, size_t, off64_t)>("pwrite64");
  if (refuse(fd)) return -1;
  return real(fd, buffer, count, offset);
}

int fsync(int fd) {
  static auto real = next_definition<int (*)(int)>("fsync");
  if (refuse(fd)) return -1;
  return real(fd);
}

int fdatasync(int fd) {
  static auto real = next_definition<int (*)(int)>("fdatasync");
  if (refuse(fd)) return -1;
  return real(fd);
}

}  // extern "C"
