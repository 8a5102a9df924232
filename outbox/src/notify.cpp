#include "notify.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace outbox::detail {
namespace {

std::uint64_t fnv1a(const std::string& text) {
  std::uint64_t hash = 1469598103934665603ULL;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  return hash;
}

socklen_t fill_address(const std::string& name, sockaddr_un& address) {
  std::memset(&address, 0, sizeof address);
  address.sun_family = AF_UNIX;
  // Abstract namespace: a leading NUL byte, no file to clean up.
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

}  // namespace

std::string wake_name_for(const std::string& database_filename) {
  if (database_filename.empty() || database_filename == ":memory:") return {};
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "outbox-wake-%016llx",
                static_cast<unsigned long long>(fnv1a(database_filename)));
  return buffer;
}

WakeSender::WakeSender(const std::string& database_filename) {
  auto name = wake_name_for(database_filename);
  if (name.empty()) return;
  fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ >= 0) address_length_ = fill_address(name, address_);
}

WakeSender::~WakeSender() noexcept {
  if (fd_ >= 0) ::close(fd_);
}

void WakeSender::notify() noexcept {
  if (fd_ < 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (now < quiet_until_) return;
  char byte = 1;
  // Errors are expected and harmless: nobody listening (the relay's polling
  // finds the commit), or its queue full (it is awake already).
  if (::sendto(fd_, &byte, 1, MSG_DONTWAIT | MSG_NOSIGNAL,
               reinterpret_cast<const sockaddr*>(&address_), address_length_) < 0 &&
      errno == ECONNREFUSED) {
    quiet_until_ = now + std::chrono::milliseconds(5);
  }
}

WakeReceiver::WakeReceiver(const std::string& database_filename) {
  auto name = wake_name_for(database_filename);
  if (name.empty()) return;
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  sockaddr_un address{};
  socklen_t length = fill_address(name, address);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&address), length) != 0) {
    ::close(fd);
    return;
  }
  fd_ = fd;
}

WakeReceiver::~WakeReceiver() noexcept {
  if (fd_ >= 0) ::close(fd_);
}

bool WakeReceiver::wait(std::chrono::milliseconds timeout) noexcept {
  if (fd_ < 0) return false;
  pollfd entry{fd_, POLLIN, 0};
  int ready = ::poll(&entry, 1, static_cast<int>(timeout.count()));
  if (ready <= 0) return false;
  char buffer[64];
  while (::recv(fd_, buffer, sizeof buffer, MSG_DONTWAIT) > 0) {
  }
  return true;
}

}  // namespace outbox::detail
