#include "state_file.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "idgen/error.hpp"

namespace idgen::detail {
namespace {

constexpr std::string_view header = "idgen-state 1 ";

Error io_error(const std::filesystem::path& path, const std::string& what) {
  return Error(ErrorCode::io, "state file " + path.string() + ": " + what);
}

std::string errno_text() {
  return std::strerror(errno);
}

// Closes a descriptor when leaving scope.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() noexcept {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

}  // namespace

StateFile::StateFile(std::filesystem::path path) : path_(std::move(path)) {
  const std::string lock_path = path_.string() + ".lock";
  FileDescriptor fd(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (fd.get() < 0)
    throw io_error(path_, "cannot open lock file " + lock_path + ": " + errno_text());
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      throw io_error(path_, "in use by another generator (" + lock_path + " is locked)");
    }
    throw io_error(path_, "cannot lock " + lock_path + ": " + errno_text());
  }
  lock_fd_ = fd.release();
}

StateFile::~StateFile() noexcept {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // closing releases the flock
}

std::optional<std::int64_t> StateFile::read() const {
  FileDescriptor fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return std::nullopt;
    throw io_error(path_, "cannot open: " + errno_text());
  }
  char buffer[128];
  std::size_t length = 0;
  while (length < sizeof buffer) {
    const ssize_t count = ::read(fd.get(), buffer + length, sizeof buffer - length);
    if (count < 0 && errno == EINTR) continue;
    if (count < 0) throw io_error(path_, "cannot read: " + errno_text());
    if (count == 0) break;
    length += static_cast<std::size_t>(count);
  }
  std::string_view text(buffer, length);
  if (text.size() == sizeof buffer || text.substr(0, header.size()) != header) {
    throw io_error(path_, "not an idgen state file (expected '" + std::string(header) +
                              "<unix ms>'); remove it only if no generator used it");
  }
  text.remove_prefix(header.size());
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  std::int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 0) {
    throw io_error(path_, "corrupt high-water mark '" + std::string(text) + "'");
  }
  return value;
}

void StateFile::write(std::int64_t unix_ms) const {
  const std::string temporary = path_.string() + ".tmp";
  const std::string content = std::string(header) + std::to_string(unix_ms) + "\n";
  {
    FileDescriptor fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) throw io_error(path_, "cannot create " + temporary + ": " + errno_text());
    std::size_t written = 0;
    while (written < content.size()) {
      const ssize_t count = ::write(fd.get(), content.data() + written, content.size() - written);
      if (count < 0 && errno == EINTR) continue;
      if (count < 0) throw io_error(path_, "cannot write " + temporary + ": " + errno_text());
      written += static_cast<std::size_t>(count);
    }
    if (::fsync(fd.get()) != 0) throw io_error(path_, "fsync failed: " + errno_text());
  }
  if (::rename(temporary.c_str(), path_.c_str()) != 0) {
    throw io_error(path_, "cannot replace with " + temporary + ": " + errno_text());
  }
  std::filesystem::path directory = path_.parent_path();
  if (directory.empty()) directory = ".";
  FileDescriptor dir_fd(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() < 0 || ::fsync(dir_fd.get()) != 0) {
    throw io_error(path_, "cannot fsync directory " + directory.string() + ": " + errno_text());
  }
}

}  // namespace idgen::detail
