#include "faults_common.hpp"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <fstream>
#include <sstream>

namespace faults {

std::atomic<bool> interrupted{false};

std::string describe(const test_support::ExitStatus& status) {
  return status.exited ? "exit " + std::to_string(status.code)
                       : "signal " + std::to_string(status.signal);
}

void append_file(const fs::path& to, const std::string& text) {
  std::ofstream out(to, std::ios::app | std::ios::binary);
  out << text;
}

std::string tail_lines(const std::string& text, std::size_t count) {
  auto all = test_support::lines(text);
  std::string out;
  for (std::size_t i = all.size() > count ? all.size() - count : 0; i < all.size(); ++i) {
    out += "    " + all[i] + "\n";
  }
  return out;
}

std::string read_endpoint(const fs::path& file) {
  auto text = test_support::read_file(file);
  return text.substr(0, text.find('\n'));
}

std::map<std::string, long> read_counts(const fs::path& file) {
  std::map<std::string, long> counts;
  for (const auto& line : test_support::lines(test_support::read_file(file))) {
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    counts[line.substr(0, eq)] = std::stol(line.substr(eq + 1));
  }
  return counts;
}

std::string shown(const std::string& msg_id) {
  if (msg_id.size() <= 60) return msg_id;
  return msg_id.substr(0, 40) + "...(" + std::to_string(msg_id.size()) + " bytes)";
}

std::string wal_lock_holders(const fs::path& db) {
  struct stat shm {};
  const auto shm_path = db.string() + "-shm";
  if (::stat(shm_path.c_str(), &shm) != 0) return "    (no " + shm_path + ")\n";
  // /proc/locks names a file as MAJOR:MINOR:INODE, the device in hex.
  char file_id[64];
  std::snprintf(file_id, sizeof file_id, "%02x:%02x:%lu", major(shm.st_dev), minor(shm.st_dev),
                static_cast<unsigned long>(shm.st_ino));
  // The WAL index's lock bytes (SQLite's wal.c): 120 write, 121 checkpoint,
  // 122 recovery, 123-127 read slots 0-4, 128 the dead-man switch.
  static const char* const kNames[] = {"write",  "checkpoint", "recover", "read-0", "read-1",
                                       "read-2", "read-3",     "read-4",  "dms"};
  std::ifstream locks("/proc/locks");
  std::string line, out;
  while (std::getline(locks, line)) {
    std::istringstream fields(line);
    // "N: [-> ]POSIX ADVISORY READ|WRITE PID MAJOR:MINOR:INODE START END",
    // "->" for a process waiting for the lock.
    std::string number, kind, mode, access, pid, file, start, end;
    fields >> number >> kind;
    const bool waiting = kind == "->";
    if (waiting) fields >> kind;
    fields >> mode >> access >> pid >> file >> start >> end;
    if (file != file_id) continue;
    long from = std::atol(start.c_str()), to = std::atol(end.c_str());
    std::string what;
    for (long byte = from; byte <= to && byte >= 120 && byte <= 128; ++byte) {
      what += std::string(what.empty() ? "" : ",") + kNames[byte - 120];
    }
    // /proc/PID/stat: "PID (NAME) STATE ...", STATE T for a stopped process.
    std::ifstream stat_file("/proc/" + pid + "/stat");
    std::string stat_line;
    std::getline(stat_file, stat_line);
    auto paren = stat_line.rfind(')');
    std::string name =
        paren != std::string::npos && stat_line.find('(') != std::string::npos
            ? stat_line.substr(stat_line.find('(') + 1, paren - stat_line.find('(') - 1)
            : "?";
    std::string state = paren != std::string::npos && paren + 2 < stat_line.size()
                            ? stat_line.substr(paren + 2, 1)
                            : "?";
    out += "    " + access + " " + (what.empty() ? start + "-" + end : what) + " by pid " + pid +
           " (" + name + ", state " + state + ")" + (waiting ? ", waiting" : "") + "\n";
  }
  return out.empty() ? "    (no lock held)\n" : out;
}

}  // namespace faults
