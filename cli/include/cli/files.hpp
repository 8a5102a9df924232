// Writing small files that matter (keys, endpoints) without the usual traps:
// never through a symlink, never readable by others for a moment, never half
// written. Safe from any thread (each call works on its own path).
#pragma once

#include <filesystem>
#include <string_view>

#include <sys/types.h>

namespace cli {

enum class Overwrite { refuse, replace };

// Writes `content` to `path` with permission bits `mode` (e.g. 0600) from the
// first byte on. With Overwrite::refuse the file must not exist (opened with
// O_CREAT|O_EXCL|O_NOFOLLOW, so a symlink in its place is refused too); with
// Overwrite::replace a new file is written next to it, flushed to disk and
// renamed over it (a symlink at `path` is replaced, not followed). Throws
// std::filesystem::filesystem_error naming the path and the reason
// (errc::file_exists when refusing an existing file).
void write_new_file(const std::filesystem::path& path, std::string_view content, mode_t mode,
                    Overwrite overwrite);

}  // namespace cli
