// Opens outbox databases on a few threads of its own while MultiRelay's loop
// forwards the open ones.
//
// Opening a database costs far more than forwarding a small backlog from it:
// SQLite parses the schema, the relay checks it, and on disk the WAL and
// shared-memory files are created again (SQLite removed them when the
// producer closed its last connection) and the first write syncs the new
// WAL's header. An opener does all of that, reads the backlog and, when
// something is pending, claims the lease under the holder name the
// database's Relay will use (its first write), so that the loop only builds
// the Relay, hands it the lease (Relay::adopt_lease) and sends.
//
// With no threads, submit() opens the database itself before it returns (the
// result waits for take() all the same).
//
// Thread safety: submit(), take() and descriptor() on the loop's thread;
// the workers own a store only until take() hands it over. Bounded: the
// caller submits at most as many databases as it may keep open.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "outbox/relay_store.hpp"

namespace relay {

struct OpenRequest {
  std::uint64_t ticket = 0;  // the caller's: names the request in its result
  std::filesystem::path path;
  // Claims the lease under this holder when something is pending; empty: never.
  std::string lease_holder;
  std::chrono::milliseconds lease_ttl{10'000};
};

struct OpenResult {
  std::uint64_t ticket = 0;
  std::unique_ptr<outbox::RelayStore> store;  // null when `error` or nothing pending
  outbox::Backlog backlog;
  std::string origin;                  // outbox_meta's origin_id (created if missing)
  std::optional<outbox::Lease> lease;  // claimed for the request's holder
  // The steady clock read before the claim: the lease holds until then plus
  // its ttl (Relay::adopt_lease()).
  std::chrono::steady_clock::time_point lease_claimed_at{};
  std::optional<std::string> error;  // the database cannot be forwarded: why
};

class DatabaseOpener {
 public:
  DatabaseOpener(std::size_t threads, outbox::RelayOptions options);
  ~DatabaseOpener() noexcept;  // stops the workers; results not taken are closed
  DatabaseOpener(const DatabaseOpener&) = delete;
  DatabaseOpener& operator=(const DatabaseOpener&) = delete;

  void submit(OpenRequest request);
  // The finished opens, in no particular order.
  std::vector<OpenResult> take();
  // Readable (an eventfd) while finished opens wait for take().
  int descriptor() const noexcept { return event_fd_; }

 private:
  void work();
  void finished(OpenResult result);
  OpenResult open(const OpenRequest& request) const;
  static void claim_lease(outbox::RelayStore& store, const OpenRequest& request,
                          OpenResult& result);

  outbox::RelayOptions options_;
  int event_fd_ = -1;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<OpenRequest> requests_;
  std::vector<OpenResult> results_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace relay
