#include "crash_image.hpp"

#include <algorithm>
#include <fstream>
#include <random>
#include <stdexcept>

namespace power {
namespace {

constexpr std::int64_t sector_bytes = 512;

void apply_write(std::string& content, std::int64_t offset, std::string_view data) {
  auto start = static_cast<std::size_t>(offset);
  if (content.size() < start + data.size()) content.resize(start + data.size(), '\0');
  std::copy(data.begin(), data.end(), content.begin() + static_cast<std::ptrdiff_t>(start));
}

void apply(std::string& content, const Operation& operation) {
  if (operation.kind == Operation::Kind::write)
    apply_write(content, operation.offset, operation.data);
  if (operation.kind == Operation::Kind::truncate)
    content.resize(static_cast<std::size_t>(operation.offset), '\0');
}

// Writes a random part of `operation`'s sectors into `content`; returns how
// many of how many survived.
std::pair<std::size_t, std::size_t> tear(std::string& content, const Operation& operation,
                                         std::mt19937_64& random) {
  std::int64_t end = operation.offset + static_cast<std::int64_t>(operation.data.size());
  std::vector<std::pair<std::int64_t, std::int64_t>> sectors;  // [from, to) inside the write
  for (std::int64_t from = operation.offset; from < end;) {
    std::int64_t to = std::min(end, (from / sector_bytes + 1) * sector_bytes);
    sectors.emplace_back(from, to);
    from = to;
  }
  std::vector<bool> survives(sectors.size(), true);
  if (sectors.size() > 1) {
    do {
      for (std::size_t i = 0; i < sectors.size(); ++i) survives[i] = (random() & 1) != 0;
    } while (std::all_of(survives.begin(), survives.end(), [](bool b) { return b; }) ||
             std::none_of(survives.begin(), survives.end(), [](bool b) { return b; }));
  }
  std::size_t kept = 0;
  for (std::size_t i = 0; i < sectors.size(); ++i) {
    if (!survives[i]) continue;
    auto [from, to] = sectors[i];
    apply_write(content, from,
                std::string_view(operation.data)
                    .substr(static_cast<std::size_t>(from - operation.offset),
                            static_cast<std::size_t>(to - from)));
    ++kept;
  }
  return {kept, sectors.size()};
}

// Calls visit(sector) for each 512-byte sector a write touches.
template <typename Visit>
void for_each_sector(const Operation& operation, Visit visit) {
  if (operation.kind != Operation::Kind::write || operation.data.empty()) return;
  std::int64_t last = operation.offset + static_cast<std::int64_t>(operation.data.size()) - 1;
  for (std::int64_t sector = operation.offset / sector_bytes; sector <= last / sector_bytes;
       ++sector)
    visit(sector);
}

// Cut::reordered for one file: each sector the unsynced operations wrote holds
// one of the versions it had since the last sync (the synced one included),
// chosen at random. Returns how many sectors got a newer version, of how many.
std::pair<std::size_t, std::size_t> scramble(std::string& content,
                                             const std::vector<const Operation*>& unsynced,
                                             std::mt19937_64& random) {
  std::map<std::int64_t, std::size_t> versions;  // sector -> writes that touched it
  for (const auto* operation : unsynced)
    for_each_sector(*operation, [&](std::int64_t sector) { ++versions[sector]; });
  std::map<std::int64_t, std::size_t> chosen;  // sector -> which write's version (0: synced)
  for (const auto& [sector, count] : versions) chosen[sector] = random() % (count + 1);
  std::map<std::int64_t, std::size_t> seen;
  std::string progress = content;  // the file as the program saw it, write by write
  std::size_t newer = 0;
  for (const auto* operation : unsynced) {
    apply(progress, *operation);
    for_each_sector(*operation, [&](std::int64_t sector) {
      if (++seen[sector] != chosen[sector]) return;
      auto from = static_cast<std::size_t>(sector * sector_bytes);
      auto to = std::min(from + static_cast<std::size_t>(sector_bytes), progress.size());
      if (from < to)
        apply_write(content, sector * sector_bytes,
                    std::string_view(progress).substr(from, to - from));
      ++newer;
    });
  }
  return {newer, versions.size()};
}

}  // namespace

std::vector<std::size_t> crash_points(const Recording& recording) {
  std::vector<std::size_t> points;
  for (std::size_t i = 0; i < recording.log.size(); ++i)
    if (recording.log[i].kind != Operation::Kind::event) points.push_back(i);
  points.push_back(recording.log.size());
  return points;
}

CrashImage crash_image(const Recording& recording, std::size_t crash_point, Cut cut,
                       std::uint64_t seed) {
  const auto& log = recording.log;
  if (crash_point > log.size()) throw std::out_of_range("crash point past the end of the log");

  // Generations: the baseline files first, in name order.
  std::vector<std::string> content;
  std::map<std::string, int> current;
  for (const auto& [name, bytes] : recording.baseline.files) {
    current.emplace(name, static_cast<int>(content.size()));
    content.push_back(bytes);
  }
  auto durable_names = current;
  std::vector<std::ptrdiff_t> last_sync(content.size(), -1);
  auto grow = [&](int generation) {
    if (static_cast<std::size_t>(generation) >= content.size()) {
      content.resize(static_cast<std::size_t>(generation) + 1);
      last_sync.resize(content.size(), -1);
    }
  };

  for (std::size_t i = 0; i < crash_point; ++i) {
    const auto& operation = log[i];
    switch (operation.kind) {
      case Operation::Kind::create:
        grow(operation.generation);
        current[operation.name] = operation.generation;
        break;
      case Operation::Kind::remove:
        current.erase(operation.name);
        break;
      case Operation::Kind::dir_sync:
        durable_names = current;
        break;
      case Operation::Kind::sync:
        grow(operation.generation);
        last_sync[static_cast<std::size_t>(operation.generation)] = static_cast<std::ptrdiff_t>(i);
        break;
      default:
        break;
    }
  }
  // What each generation holds on disk: the writes its last sync covered.
  for (std::size_t i = 0; i < crash_point; ++i) {
    const auto& operation = log[i];
    if (operation.generation < 0) continue;
    auto generation = static_cast<std::size_t>(operation.generation);
    if (static_cast<std::ptrdiff_t>(i) < last_sync[generation])
      apply(content[generation], operation);
  }

  CrashImage image;
  for (const auto& [name, generation] : durable_names)
    image.files.emplace(name, content[static_cast<std::size_t>(generation)]);

  if (cut == Cut::torn) {
    std::size_t end = std::min(crash_point + 1, log.size());
    for (std::size_t i = end; i-- > 0;) {
      const auto& operation = log[i];
      if (operation.kind != Operation::Kind::write) continue;
      auto generation = static_cast<std::size_t>(operation.generation);
      if (generation < last_sync.size() && static_cast<std::ptrdiff_t>(i) < last_sync[generation])
        continue;  // synced
      auto named = std::find_if(durable_names.begin(), durable_names.end(), [&](const auto& entry) {
        return entry.second == operation.generation;
      });
      if (named == durable_names.end()) continue;  // its file does not survive
      std::mt19937_64 random(seed ^ (0x9e3779b97f4a7c15ULL * (crash_point + 1)));
      auto [kept, total] = tear(image.files[named->first], operation, random);
      image.note = named->first + " write of " + std::to_string(operation.data.size()) +
                   " bytes at " + std::to_string(operation.offset) + " (log position " +
                   std::to_string(i) + "): " + std::to_string(kept) + " of " +
                   std::to_string(total) + " sectors kept";
      break;
    }
  }
  if (cut == Cut::reordered) {
    std::mt19937_64 random(seed ^ (0x9e3779b97f4a7c15ULL * (crash_point + 1)));
    std::size_t newer = 0, touched = 0;
    for (const auto& [name, generation] : durable_names) {
      auto index = static_cast<std::size_t>(generation);
      std::vector<const Operation*> unsynced;  // the one under way at the crash included
      for (std::size_t i = 0; i < std::min(crash_point + 1, log.size()); ++i) {
        const auto& operation = log[i];
        if (operation.generation == generation && static_cast<std::ptrdiff_t>(i) > last_sync[index])
          unsynced.push_back(&operation);
      }
      auto [kept, total] = scramble(image.files[name], unsynced, random);
      newer += kept;
      touched += total;
    }
    if (touched > 0)
      image.note = std::to_string(newer) + " of " + std::to_string(touched) +
                   " unsynced sectors hold a newer version";
  }
  return image;
}

void write_image(const CrashImage& image, const std::filesystem::path& directory) {
  for (const auto& [name, bytes] : image.files) {
    std::ofstream out(directory / name, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + (directory / name).string());
  }
}

}  // namespace power
