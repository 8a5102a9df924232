// idgen_usage: time-ordered 64-bit ids from C++.
//
//   idgen_usage [STATE_FILE] [WORKER_ID] [COUNT]
//
// A Generator issues strictly increasing ids for one (layout, worker id).
// Give each running generator its own worker id. The state file records how
// far ahead the generator has issued ids, so a restart (even after the clock
// was set back) never issues an id it issued before: run this twice with the
// same state file and the second run's ids are all larger than the first's.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include <idgen/encoding.hpp>
#include <idgen/snowflake.hpp>
#include <idgen/uuid.hpp>

int main(int argc, char** argv) {
  if (argc > 4 || (argc > 1 && std::string(argv[1]).starts_with("-"))) {
    std::fprintf(stderr, "usage: idgen_usage [STATE_FILE] [WORKER_ID] [COUNT]\n");
    return 2;
  }
  try {
    const std::filesystem::path state_file = argc > 1 ? argv[1] : "idgen_usage.state";
    const auto worker_id = static_cast<std::uint32_t>(argc > 2 ? std::stoul(argv[2]) : 1);
    const long count = argc > 3 ? std::stol(argv[3]) : 5;

    idgen::GeneratorOptions options;
    options.state_file = state_file;  // locked while the generator lives
    idgen::Generator generator(idgen::Layout::standard(), worker_id, options);

    std::uint64_t first = 0, last = 0;
    for (long i = 0; i < count; ++i) {
      last = generator.next();
      if (i == 0) first = last;
      // Decimal is what the outbox stores as msg_id; base62 is shorter for URLs.
      std::printf("%llu  %s\n", static_cast<unsigned long long>(last),
                  idgen::encode(last, idgen::Encoding::base62).c_str());
    }
    if (count > 0) {
      const idgen::Parts parts = idgen::decode(generator.layout(), last);
      std::printf("last id: unix ms %lld, worker %u, sequence %llu\n",
                  static_cast<long long>(parts.timestamp_unix_ms), parts.worker,
                  static_cast<unsigned long long>(parts.sequence));
      std::printf("first..last: %llu..%llu (state file %s)\n",
                  static_cast<unsigned long long>(first), static_cast<unsigned long long>(last),
                  state_file.string().c_str());
    }

    // No worker id to coordinate: a UUID v7 (time-ordered, 128 bits).
    idgen::UuidV7Generator uuids;
    std::printf("uuid v7: %s\n", idgen::to_string(uuids.next()).c_str());
    return 0;
  } catch (const idgen::Error& error) {
    std::fprintf(stderr, "idgen_usage: %s\n", error.what());
    return 1;
  } catch (const std::exception& error) {  // std::stoul and friends on bad arguments
    std::fprintf(stderr, "idgen_usage: bad argument (%s)\n", error.what());
    return 2;
  }
}
