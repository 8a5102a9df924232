#include "recording_vfs.hpp"

#include <sqlite3.h>
#include <unistd.h>

#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string_view>

#include "test_support.hpp"

namespace power {
namespace {

struct Recorder {
  std::mutex mutex;
  bool active = false;
  std::string directory;  // with a trailing '/'
  Recording recording;
  std::map<std::string, int> current;  // name -> generation the name points to now
  int next_generation = 0;

  // The name inside the recorded directory, or empty when `path` is elsewhere.
  std::optional<std::string> name_of(const char* path) const {
    if (!active || path == nullptr) return std::nullopt;
    std::string_view full(path);
    if (!full.starts_with(directory)) return std::nullopt;
    full.remove_prefix(directory.size());
    if (full.empty() || full.find('/') != std::string_view::npos || full.ends_with("-shm"))
      return std::nullopt;
    return std::string(full);
  }

  void add(Operation operation) { recording.log.push_back(std::move(operation)); }

  // Adds an operation on the generation `name` points to; files that are not
  // in the namespace (never seen) get one as if they had been created now.
  void add_file_operation(Operation::Kind kind, const std::string& name, std::int64_t offset,
                          std::string data) {
    auto found = current.find(name);
    if (found == current.end()) {
      found = current.emplace(name, next_generation++).first;
      add({Operation::Kind::create, name, found->second, 0, {}, 0});
    }
    add({kind, name, found->second, offset, std::move(data), 0});
  }
};

Recorder& recorder() {
  static Recorder instance;
  return instance;
}

sqlite3_vfs* wrapped_vfs = nullptr;
std::mutex randomness_mutex;
std::uint64_t randomness_state = 0;

// splitmix64: a small generator whose whole state is one seedable word.
std::uint64_t next_random() {
  std::uint64_t z = (randomness_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
sqlite3_vfs recording_vfs{};

// A file of the recording VFS: ours first, the wrapped VFS's right behind it.
struct File {
  sqlite3_file base;
  sqlite3_file* wrapped;
  std::string path;  // empty for temporary files (no name)
  bool directory_sync_pending = false;
};

constexpr std::size_t file_header_bytes = (sizeof(File) + 15) / 16 * 16;

File* as_file(sqlite3_file* file) {
  return reinterpret_cast<File*>(file);
}
sqlite3_file* wrapped(sqlite3_file* file) {
  return as_file(file)->wrapped;
}

int file_close(sqlite3_file* file) {
  File* self = as_file(file);
  int code = self->wrapped->pMethods != nullptr ? self->wrapped->pMethods->xClose(self->wrapped)
                                                : SQLITE_OK;
  self->~File();
  return code;
}

int file_read(sqlite3_file* file, void* buffer, int amount, sqlite3_int64 offset) {
  return wrapped(file)->pMethods->xRead(wrapped(file), buffer, amount, offset);
}

int file_write(sqlite3_file* file, const void* buffer, int amount, sqlite3_int64 offset) {
  int code = wrapped(file)->pMethods->xWrite(wrapped(file), buffer, amount, offset);
  if (code != SQLITE_OK) return code;
  auto& state = recorder();
  std::lock_guard lock(state.mutex);
  if (auto name = state.name_of(as_file(file)->path.c_str())) {
    state.add_file_operation(
        Operation::Kind::write, *name, offset,
        std::string(static_cast<const char*>(buffer), static_cast<std::size_t>(amount)));
  }
  return SQLITE_OK;
}

int file_truncate(sqlite3_file* file, sqlite3_int64 size) {
  int code = wrapped(file)->pMethods->xTruncate(wrapped(file), size);
  if (code != SQLITE_OK) return code;
  auto& state = recorder();
  std::lock_guard lock(state.mutex);
  if (auto name = state.name_of(as_file(file)->path.c_str())) {
    state.add_file_operation(Operation::Kind::truncate, *name, size, {});
  }
  return SQLITE_OK;
}

int file_sync(sqlite3_file* file, int flags) {
  int code = wrapped(file)->pMethods->xSync(wrapped(file), flags);
  if (code != SQLITE_OK) return code;
  File* self = as_file(file);
  auto& state = recorder();
  std::lock_guard lock(state.mutex);
  if (auto name = state.name_of(self->path.c_str())) {
    state.add_file_operation(Operation::Kind::sync, *name, 0, {});
    // The unix VFS fsyncs the directory right after the file, once per file
    // it opened to create a WAL or journal (os_unix.c, UNIXFILE_DIRSYNC).
    if (self->directory_sync_pending) state.add({Operation::Kind::dir_sync, {}, -1, 0, {}, 0});
  }
  self->directory_sync_pending = false;
  return SQLITE_OK;
}

int file_size(sqlite3_file* file, sqlite3_int64* size) {
  return wrapped(file)->pMethods->xFileSize(wrapped(file), size);
}
int file_lock(sqlite3_file* file, int level) {
  return wrapped(file)->pMethods->xLock(wrapped(file), level);
}
int file_unlock(sqlite3_file* file, int level) {
  return wrapped(file)->pMethods->xUnlock(wrapped(file), level);
}
int file_check_reserved_lock(sqlite3_file* file, int* result) {
  return wrapped(file)->pMethods->xCheckReservedLock(wrapped(file), result);
}
int file_control(sqlite3_file* file, int op, void* argument) {
  return wrapped(file)->pMethods->xFileControl(wrapped(file), op, argument);
}
int file_sector_size(sqlite3_file* file) {
  return wrapped(file)->pMethods->xSectorSize(wrapped(file));
}
int file_device_characteristics(sqlite3_file* file) {
  return wrapped(file)->pMethods->xDeviceCharacteristics(wrapped(file));
}
int file_shm_map(sqlite3_file* file, int region, int region_size, int extend,
                 void volatile** memory) {
  return wrapped(file)->pMethods->xShmMap(wrapped(file), region, region_size, extend, memory);
}
int file_shm_lock(sqlite3_file* file, int offset, int count, int flags) {
  return wrapped(file)->pMethods->xShmLock(wrapped(file), offset, count, flags);
}
void file_shm_barrier(sqlite3_file* file) {
  wrapped(file)->pMethods->xShmBarrier(wrapped(file));
}
int file_shm_unmap(sqlite3_file* file, int delete_flag) {
  return wrapped(file)->pMethods->xShmUnmap(wrapped(file), delete_flag);
}
int file_fetch(sqlite3_file* file, sqlite3_int64 offset, int amount, void** pointer) {
  return wrapped(file)->pMethods->xFetch(wrapped(file), offset, amount, pointer);
}
int file_unfetch(sqlite3_file* file, sqlite3_int64 offset, void* pointer) {
  return wrapped(file)->pMethods->xUnfetch(wrapped(file), offset, pointer);
}

const sqlite3_io_methods file_methods = {
    3,
    file_close,
    file_read,
    file_write,
    file_truncate,
    file_sync,
    file_size,
    file_lock,
    file_unlock,
    file_check_reserved_lock,
    file_control,
    file_sector_size,
    file_device_characteristics,
    file_shm_map,
    file_shm_lock,
    file_shm_barrier,
    file_shm_unmap,
    file_fetch,
    file_unfetch,
};

int vfs_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* file, int flags, int* out_flags) {
  auto* self = new (file) File{};
  self->base.pMethods = nullptr;
  self->wrapped =
      reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(file) + file_header_bytes);
  self->wrapped->pMethods = nullptr;
  if (name != nullptr) self->path = name;
  bool existed = name != nullptr && ::access(name, F_OK) == 0;
  int code = wrapped_vfs->xOpen(wrapped_vfs, name, self->wrapped, flags, out_flags);
  if (code != SQLITE_OK) {
    // SQLite calls xClose only when pMethods is set; close the wrapped file
    // here if its VFS left it open.
    if (self->wrapped->pMethods != nullptr) self->wrapped->pMethods->xClose(self->wrapped);
    self->~File();
    file->pMethods = nullptr;
    return code;
  }
  self->base.pMethods = &file_methods;
  constexpr int journal_kinds =
      SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_SUPER_JOURNAL | SQLITE_OPEN_WAL;
  self->directory_sync_pending = (flags & SQLITE_OPEN_CREATE) != 0 && (flags & journal_kinds) != 0;
  auto& state = recorder();
  std::lock_guard lock(state.mutex);
  if (auto recorded = state.name_of(name); recorded && !existed) {
    int generation = state.next_generation++;
    state.current[*recorded] = generation;
    state.add({Operation::Kind::create, *recorded, generation, 0, {}, 0});
  }
  return SQLITE_OK;
}

int vfs_delete(sqlite3_vfs*, const char* name, int sync_directory) {
  int code = wrapped_vfs->xDelete(wrapped_vfs, name, sync_directory);
  if (code != SQLITE_OK) return code;
  auto& state = recorder();
  std::lock_guard lock(state.mutex);
  if (auto recorded = state.name_of(name)) {
    auto found = state.current.find(*recorded);
    if (found != state.current.end()) {
      state.add({Operation::Kind::remove, *recorded, found->second, 0, {}, 0});
      state.current.erase(found);
    }
    if (sync_directory != 0) state.add({Operation::Kind::dir_sync, {}, -1, 0, {}, 0});
  }
  return SQLITE_OK;
}

int vfs_access(sqlite3_vfs*, const char* name, int flags, int* result) {
  return wrapped_vfs->xAccess(wrapped_vfs, name, flags, result);
}
int vfs_full_pathname(sqlite3_vfs*, const char* name, int size, char* out) {
  return wrapped_vfs->xFullPathname(wrapped_vfs, name, size, out);
}
void* vfs_dl_open(sqlite3_vfs*, const char* name) {
  return wrapped_vfs->xDlOpen(wrapped_vfs, name);
}
void vfs_dl_error(sqlite3_vfs*, int size, char* out) {
  wrapped_vfs->xDlError(wrapped_vfs, size, out);
}
void (*vfs_dl_sym(sqlite3_vfs*, void* handle, const char* symbol))(void) {
  return wrapped_vfs->xDlSym(wrapped_vfs, handle, symbol);
}
void vfs_dl_close(sqlite3_vfs*, void* handle) {
  wrapped_vfs->xDlClose(wrapped_vfs, handle);
}
int vfs_randomness(sqlite3_vfs*, int size, char* out) {
  std::lock_guard lock(randomness_mutex);
  for (int i = 0; i < size; ++i) out[i] = static_cast<char>(next_random() & 0xff);
  return size;
}
int vfs_sleep(sqlite3_vfs*, int microseconds) {
  return wrapped_vfs->xSleep(wrapped_vfs, microseconds);
}
int vfs_current_time(sqlite3_vfs*, double* now) {
  return wrapped_vfs->xCurrentTime(wrapped_vfs, now);
}
int vfs_get_last_error(sqlite3_vfs*, int size, char* out) {
  return wrapped_vfs->xGetLastError(wrapped_vfs, size, out);
}
int vfs_current_time_int64(sqlite3_vfs*, sqlite3_int64* now) {
  return wrapped_vfs->xCurrentTimeInt64(wrapped_vfs, now);
}
int vfs_set_system_call(sqlite3_vfs*, const char* name, sqlite3_syscall_ptr call) {
  return wrapped_vfs->xSetSystemCall(wrapped_vfs, name, call);
}
sqlite3_syscall_ptr vfs_get_system_call(sqlite3_vfs*, const char* name) {
  return wrapped_vfs->xGetSystemCall(wrapped_vfs, name);
}
const char* vfs_next_system_call(sqlite3_vfs*, const char* name) {
  return wrapped_vfs->xNextSystemCall(wrapped_vfs, name);
}

}  // namespace

void install_recording_vfs() {
  if (wrapped_vfs != nullptr) return;
  wrapped_vfs = sqlite3_vfs_find(nullptr);
  if (wrapped_vfs == nullptr || wrapped_vfs->iVersion < 3)
    throw std::runtime_error("the default SQLite VFS is missing or older than version 3");
  recording_vfs = sqlite3_vfs{
      3,
      static_cast<int>(file_header_bytes) + wrapped_vfs->szOsFile,
      wrapped_vfs->mxPathname,
      nullptr,
      "power-recording",
      nullptr,
      vfs_open,
      vfs_delete,
      vfs_access,
      vfs_full_pathname,
      vfs_dl_open,
      vfs_dl_error,
      vfs_dl_sym,
      vfs_dl_close,
      vfs_randomness,
      vfs_sleep,
      vfs_current_time,
      vfs_get_last_error,
      vfs_current_time_int64,
      vfs_set_system_call,
      vfs_get_system_call,
      vfs_next_system_call,
  };
  int code = sqlite3_vfs_register(&recording_vfs, 1);
  if (code != SQLITE_OK)
    throw std::runtime_error(std::string("cannot register the recording VFS: ") +
                             sqlite3_errstr(code));
}

void seed_randomness(std::uint64_t seed) {
  {
    std::lock_guard lock(randomness_mutex);
    randomness_state = seed;
  }
  // A null buffer makes SQLite reseed its generator from the default VFS.
  sqlite3_randomness(0, nullptr);
}

void start_recording(const std::filesystem::path& directory) {
  auto& state = recorder();
  std::lock_guard lock(state.mutex);
  state.recording = {};
  state.current.clear();
  state.next_generation = 0;
  state.directory = std::filesystem::canonical(directory).string() + "/";
  for (const auto& entry : std::filesystem::directory_iterator(directory)) {
    auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.ends_with("-shm")) continue;
    state.recording.baseline.files.emplace(name, test_support::read_file(entry.path()));
  }
  for (const auto& [name, content] : state.recording.baseline.files)
    state.current.emplace(name, state.next_generation++);
  state.active = true;
}

void record_event(std::uint64_t event) {
  auto& state = recorder();
  std::lock_guard lock(state.mutex);
  if (state.active) state.add({Operation::Kind::event, {}, -1, 0, {}, event});
}

Recording stop_recording() {
  auto& state = recorder();
  std::lock_guard lock(state.mutex);
  state.active = false;
  return std::move(state.recording);
}

}  // namespace power
