#include "database_opener.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "outbox/error.hpp"

namespace relay {

DatabaseOpener::DatabaseOpener(std::size_t threads, outbox::RelayOptions options)
    : options_(std::move(options)) {
  event_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd_ < 0) {
    throw outbox::Error(
        outbox::ErrorKind::io,
        std::string("cannot create an eventfd for the database openers: ") + std::strerror(errno));
  }
  workers_.reserve(threads);
  for (std::size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

DatabaseOpener::~DatabaseOpener() noexcept {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
  // A lease claimed for a relay that will not be built is given back, so
  // that a standby need not wait for it to lapse.
  for (auto& result : results_) {
    if (!result.store || !result.lease) continue;
    try {
      result.store->release_lease(*result.lease);
    } catch (const std::exception&) {
      // it lapses by itself
    }
  }
  ::close(event_fd_);
}

void DatabaseOpener::submit(OpenRequest request) {
  if (workers_.empty()) {  // no threads: opened here, at once
    finished(open(request));
    return;
  }
  {
    std::lock_guard lock(mutex_);
    requests_.push_back(std::move(request));
  }
  wake_.notify_one();
}

std::vector<OpenResult> DatabaseOpener::take() {
  std::uint64_t count = 0;
  (void)!::read(event_fd_, &count, sizeof count);  // EAGAIN: nothing signalled
  std::lock_guard lock(mutex_);
  return std::exchange(results_, {});
}

void DatabaseOpener::work() {
  for (;;) {
    OpenRequest request;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !requests_.empty(); });
      if (stopping_) return;
      request = std::move(requests_.front());
      requests_.pop_front();
    }
    finished(open(request));
  }
}

void DatabaseOpener::finished(OpenResult result) {
  {
    std::lock_guard lock(mutex_);
    results_.push_back(std::move(result));
  }
  const std::uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof one);
}

OpenResult DatabaseOpener::open(const OpenRequest& request) const {
  OpenResult result;
  result.ticket = request.ticket;
  try {
    auto store =
        std::make_unique<outbox::RelayStore>(outbox::RelayStore::open(request.path, options_));
    // Nothing pending is not worth a lease: the next commit wakes it. A read
    // writes nothing, so it makes no directory event of its own.
    result.backlog = store->backlog();
    if (result.backlog.pending == 0) return result;
    result.origin = store->origin_id();
    claim_lease(*store, request, result);
    result.store = std::move(store);
  } catch (const outbox::Error& error) {
    result.error = error.what();
  } catch (const std::exception& error) {
    result.error = std::string("cannot open it: ") + error.what();
  }
  return result;
}

void DatabaseOpener::claim_lease(outbox::RelayStore& store, const OpenRequest& request,
                                 OpenResult& result) {
  if (request.lease_holder.empty()) return;
  try {
    result.lease_claimed_at = std::chrono::steady_clock::now();
    result.lease = store.claim_lease(request.lease_holder, request.lease_ttl);
  } catch (const outbox::Error&) {
    // Busy, or a transient failure: the relay claims it and reports what fails.
  }
}

}  // namespace relay
