// The generator's persisted high-water mark: one small text file, replaced
// atomically (write a temporary, fsync, rename, fsync the directory), plus a
// lock file held for the generator's lifetime so two generators cannot share it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

namespace idgen::detail {

class StateFile {
 public:
  // Locks `path` (through "<path>.lock"). Throws Error(ErrorCode::io) naming
  // the file if it cannot be locked, e.g. another generator holds it.
  explicit StateFile(std::filesystem::path path);
  ~StateFile() noexcept;
  StateFile(const StateFile&) = delete;
  StateFile& operator=(const StateFile&) = delete;

  // The recorded mark in Unix ms, empty if the file does not exist yet.
  // Throws Error(ErrorCode::io) if it exists but cannot be read or parsed.
  std::optional<std::int64_t> read() const;
  // Durably records `unix_ms`. Throws Error(ErrorCode::io) on failure.
  void write(std::int64_t unix_ms) const;

  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
  int lock_fd_ = -1;
};

}  // namespace idgen::detail
