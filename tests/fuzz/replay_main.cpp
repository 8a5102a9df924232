// Runs a fuzz target's entry point over files and directories of inputs, for
// builds without libFuzzer (GCC, the sanitizer trees): every build replays the
// seed corpus and the inputs of past findings.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    std::filesystem::path path(argv[i]);
    if (std::filesystem::is_directory(path)) {
      for (const auto& entry : std::filesystem::directory_iterator(path)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
      }
    } else {
      files.push_back(path);
    }
  }
  if (files.empty()) {
    std::fprintf(stderr, "error: no inputs in the given paths\n");
    return 1;
  }
  for (const auto& file : files) {
    // stdio rather than istreambuf_iterator, which GCC 12's -Wnull-dereference
    // flags inside libstdc++ at -O2.
    std::string bytes;
    std::FILE* in = std::fopen(file.c_str(), "rb");
    bool ok = in != nullptr;
    char buffer[65536];
    while (ok) {
      std::size_t got = std::fread(buffer, 1, sizeof buffer, in);
      bytes.append(buffer, got);
      if (got < sizeof buffer) {
        ok = std::ferror(in) == 0;
        break;
      }
    }
    if (in != nullptr) std::fclose(in);
    if (!ok) {
      std::fprintf(stderr, "error: cannot read %s\n", file.c_str());
      return 1;
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  }
  std::printf("%zu inputs replayed\n", files.size());
  return 0;
}
