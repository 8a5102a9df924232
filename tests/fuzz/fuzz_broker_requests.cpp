// The broker's request handling in-process: each input is a conversation of up to
// 64 requests from three connections (a connection byte, then the request's frames,
// fuzz_input.hpp), served by a fresh broker::Server through Server::serve, with no
// peer on the socket. Session ids start at 1, so the fuzzer can name them. One store
// per process (sync normal, in a temporary directory) keeps what earlier inputs
// stored, so resends meet the dedup index. Any crash, leak, sanitizer report or
// exception out of serve() is a finding: malformed input is answered, not thrown.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>

#include "broker/server.hpp"
#include "broker/store.hpp"
#include "fuzz_input.hpp"

namespace {

class ScratchStore {
 public:
  ScratchStore() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "outbox-fuzz-broker-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    directory_ = pattern;
    broker::StoreOptions options;
    options.sync = broker::SyncMode::normal;
    options.cache_bytes = std::size_t{8} << 20;
    options.integrity_check = false;
    store_ = std::make_unique<broker::Store>(directory_ / "broker.db", options);
  }
  ~ScratchStore() {
    store_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(directory_, ignored);
  }
  ScratchStore(const ScratchStore&) = delete;
  ScratchStore& operator=(const ScratchStore&) = delete;

  broker::Store& store() { return *store_; }

 private:
  std::filesystem::path directory_;
  std::unique_ptr<broker::Store> store_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ScratchStore scratch;
  broker::ServerOptions options;
  options.bind_endpoint = "inproc://fuzz-broker";
  options.first_session_id = 1;
  options.max_commit_messages = 1000;
  broker::Server server(scratch.store(), options);
  static const std::string connections[] = {"connection-a", "connection-b", "connection-c"};
  fuzz::Input input(data, size);
  for (int request = 0; request < 64 && !input.empty(); ++request) {
    const auto& connection = connections[input.byte() % 3];
    auto frames = input.frames();
    server.serve(connection, frames);
  }
  return 0;
}
