// A faulty network between outbox-relay and outbox-broker, for the fault
// suite. Two modes.
//
// Message mode (the default): it binds a ROUTER that relays connect to and
// opens one DEALER to the broker per relay connection, so the broker sees one
// connection (and so one session) per relay connection, as without the
// proxy. Messages are forwarded opaquely, frame for frame; a seeded random
// generator decides which of them meet a fault:
//
//   relay -> broker
//     delay      the message (and everything behind it) waits a few ms
//     duplicate  a copy follows the original a little later
//     drop       the message is lost and the broker-side connection is cut,
//                as when a TCP connection breaks: what follows goes on a new
//                connection (ZeroMQ reconnects by itself), where the broker
//                knows no session
//     stall      the connection hangs for longer than the relay's ack
//                timeout; the relay gives up and reconnects, and what was
//                held is delivered afterwards on the old connection: stale
//                batches reach the broker after the new session's
//     cut        the broker-side connection is closed
//   broker -> relay
//     drop, delay, duplicate, reorder (a reply overtaken by later ones)
//   both
//     reset      the listening socket is closed and bound again: every relay
//                connection breaks
//
// Within one relay-to-broker connection the proxy keeps order and never
// loses a message in the middle of the stream (a loss ends the connection),
// because TCP and ZeroMQ give that guarantee and the protocol builds on it.
// --hostile-order also reorders and drops PUBLISH batches inside one
// connection, which the protocol does not claim to survive (see the README).
//
// Cutting mode (--cut-every MIN-MAX): a plain TCP proxy that knows nothing of
// ZeroMQ, as a NAT, a load balancer or a flaky link would be. Each accepted
// connection gets its own connection to the broker; the bytes of both
// directions are forwarded unchanged, and after a random number of bytes in
// [MIN, MAX] (both directions counted, drawn anew for every connection) the
// connection is cut in the middle of whatever it carried: both sockets are
// closed, at random with a FIN or a RST. With --freeze P a share P of the
// cuts instead leaves both sockets open and silently discards everything
// from then on (a peer that died without closing, a black-holing route):
// only heartbeats or timeouts can notice that.
//
//   fault_proxy --broker tcp://127.0.0.1:7750 --bind tcp://127.0.0.1:*
//               --endpoint-file F --stats-file S --seed N [--rate 1.0]
//               [--hostile-order]
//   fault_proxy --cut-every 2K-400K [--freeze 0.05] --broker ... --bind ...
//               --endpoint-file F --stats-file S --seed N
//
// SIGUSR1 turns fault injection off (messages still in the delay queues are
// delivered; the cutting mode stops cutting), and --faults-off starts with it
// off (a plain forwarder, to compare with); SIGTERM/SIGINT exit 0. The
// fault counts are written to the stats file (replaced atomically) every
// 100 ms and at exit, one "name=value" per line.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <zmq.hpp>

namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::atomic<bool> stop_requested{false};
std::atomic<bool> quiet_requested{false};

extern "C" void on_stop_signal(int) {
  stop_requested.store(true);
}
extern "C" void on_quiet_signal(int) {
  quiet_requested.store(true);
}

struct Settings {
  std::string broker;
  std::string bind = "tcp://127.0.0.1:*";
  std::string endpoint_file;
  std::string stats_file;
  std::uint64_t seed = 1;
  double rate = 1.0;  // scales every fault probability
  bool hostile_order = false;
  // Cutting mode: bytes per connection before its cut, 0 = message mode.
  std::uint64_t cut_min = 0;
  std::uint64_t cut_max = 0;
  double freeze_share = 0;  // of the cuts, left open and silent instead
};

using Frames = std::vector<std::string>;

struct Queued {
  SteadyClock::time_point release_at;
  Frames frames;
};

struct Counts {
  std::map<std::string, std::uint64_t> by_kind;
  std::uint64_t forwarded_up = 0;
  std::uint64_t forwarded_down = 0;
  std::uint64_t total() const {
    std::uint64_t sum = 0;
    for (const auto& [kind, count] : by_kind) sum += count;
    return sum;
  }
};

void write_stats_file(const std::string& path, const Counts& counts, bool faults_on) {
  if (path.empty()) return;
  std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    for (const auto& [kind, value] : counts.by_kind) out << kind << '=' << value << '\n';
    out << "total=" << counts.total() << '\n';
    out << "forwarded_up=" << counts.forwarded_up << '\n';
    out << "forwarded_down=" << counts.forwarded_down << '\n';
    out << "faults_on=" << (faults_on ? 1 : 0) << '\n';
  }
  std::filesystem::rename(temporary, path);
}

// One relay connection and the broker connection that serves it.
struct Pair {
  std::string routing_id;
  std::unique_ptr<zmq::socket_t> dealer;  // null once cut; recreated on the next message
  std::deque<Queued> up;                  // to the broker, release times non-decreasing
  std::vector<Queued> down;               // to the relay, any order
  SteadyClock::time_point last_activity = SteadyClock::now();
};

class Proxy {
 public:
  explicit Proxy(Settings settings)
      : settings_(std::move(settings)), random_(settings_.seed), context_(1) {
    bind_frontend(settings_.bind);
  }

  void run() {
    auto next_stats = SteadyClock::now();
    while (!stop_requested.load()) {
      if (quiet_requested.load()) faults_on_ = false;
      poll_once();
      release_due();
      forget_idle_pairs();
      if (SteadyClock::now() >= next_stats) {
        write_stats();
        next_stats = SteadyClock::now() + milliseconds(100);
      }
    }
    write_stats();
  }

 private:
  // --- randomness ---------------------------------------------------------
  bool chance(double probability) {
    if (!faults_on_) return false;
    return std::uniform_real_distribution<double>(0, 1)(random_) < probability * settings_.rate;
  }
  milliseconds between(int low, int high) {
    return milliseconds(std::uniform_int_distribution<int>(low, high)(random_));
  }
  void count(const std::string& kind) { ++counts_.by_kind[kind]; }

  // --- sockets ------------------------------------------------------------
  void bind_frontend(const std::string& endpoint) {
    frontend_ = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::router);
    frontend_->set(zmq::sockopt::linger, 0);
    frontend_->set(zmq::sockopt::sndhwm, 10000);
    frontend_->set(zmq::sockopt::rcvhwm, 10000);
    // A reset binds the port the relays know again; the old listener closes
    // in ZeroMQ's I/O thread, so the port may be busy for a moment.
    auto deadline = SteadyClock::now() + std::chrono::seconds(5);
    while (true) {
      try {
        frontend_->bind(endpoint);
        break;
      } catch (const zmq::error_t& error) {
        if (error.num() != EADDRINUSE || SteadyClock::now() >= deadline) throw;
        std::this_thread::sleep_for(milliseconds(5));  // retrying a busy port, bounded
      }
    }
    endpoint_ = frontend_->get(zmq::sockopt::last_endpoint);
  }

  void open_dealer(Pair& pair) {
    pair.dealer = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::dealer);
    pair.dealer->set(zmq::sockopt::linger, 0);
    pair.dealer->set(zmq::sockopt::sndhwm, 10000);
    pair.dealer->set(zmq::sockopt::rcvhwm, 10000);
    pair.dealer->connect(settings_.broker);
  }

  // Closes the broker side of a relay connection: the broker drops the
  // session; anything held for either direction is lost with it.
  void cut(Pair& pair) {
    pair.dealer.reset();
    pair.up.clear();
    pair.down.clear();
  }

  void reset_frontend() {
    for (auto& [id, pair] : pairs_) cut(*pair);
    pairs_.clear();
    frontend_.reset();
    bind_frontend(endpoint_);
  }

  // --- forwarding ---------------------------------------------------------
  static bool receive_all(zmq::socket_t& socket, Frames& frames) {
    frames.clear();
    while (true) {
      zmq::message_t part;
      auto got = socket.recv(part, zmq::recv_flags::dontwait);
      if (!got) return !frames.empty();
      frames.emplace_back(static_cast<const char*>(part.data()), part.size());
      if (!part.more()) return true;
    }
  }

  static void send_all(zmq::socket_t& socket, const Frames& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore | zmq::send_flags::dontwait
                                         : zmq::send_flags::dontwait;
      // A full queue drops the message, as ZeroMQ itself would on a ROUTER.
      if (!socket.send(zmq::buffer(frames[i]), flags)) return;
    }
  }

  static bool is_publish(const Frames& frames) {
    return frames.size() == 3 && frames[1].size() == 1 && frames[1][0] == 0x03;
  }

  void from_relay(Frames frames) {
    if (frames.size() < 2) return;
    std::string routing_id = frames.front();
    frames.erase(frames.begin());
    auto& slot = pairs_[routing_id];
    if (!slot) {
      slot = std::make_unique<Pair>();
      slot->routing_id = routing_id;
    }
    Pair& pair = *slot;
    pair.last_activity = SteadyClock::now();
    if (chance(0.004)) {
      count("reset");
      reset_frontend();
      return;
    }
    if (chance(0.006)) {
      count("cut");
      cut(pair);
      return;  // the message went down with the connection
    }
    if (chance(0.006)) {
      count("drop");
      cut(pair);
      return;
    }
    if (!pair.dealer) open_dealer(pair);
    auto now = SteadyClock::now();
    auto release = pair.up.empty() ? now : std::max(now, pair.up.back().release_at);
    if (chance(0.004)) {
      // Longer than the relay's ack timeout (1 s in the suite): the relay
      // reconnects while this connection still holds its batches.
      count("stall");
      release = std::max(release, now + between(1200, 2500));
    } else if (chance(0.03)) {
      count("delay");
      release = std::max(release, now + between(1, 150));
    }
    if (settings_.hostile_order && is_publish(frames) && !pair.up.empty() && chance(0.02)) {
      // Not a network fault TCP can produce: a batch overtakes the one before
      // it inside one connection.
      count("hostile_reorder");
      pair.up.insert(pair.up.end() - 1, Queued{pair.up.back().release_at, std::move(frames)});
      return;
    }
    if (settings_.hostile_order && is_publish(frames) && chance(0.01)) {
      count("hostile_drop");  // a gap inside one connection
      return;
    }
    bool duplicate = chance(0.02);
    pair.up.push_back(Queued{release, frames});
    if (duplicate) {
      count("duplicate");
      pair.up.push_back(Queued{release + between(0, 50), std::move(frames)});
    }
  }

  void from_broker(Pair& pair, Frames frames) {
    pair.last_activity = SteadyClock::now();
    if (chance(0.01)) {
      count("lost_reply");
      return;
    }
    auto now = SteadyClock::now();
    SteadyClock::time_point release = now;
    for (const auto& held : pair.down) release = std::max(release, held.release_at);
    if (chance(0.02)) {
      count("reorder");
      // Held back alone: replies that arrive after it may overtake it.
      pair.down.push_back(Queued{now + between(5, 200), std::move(frames)});
      return;
    }
    if (chance(0.03)) {
      count("delay");
      release = release + between(1, 150);
    }
    bool duplicate = chance(0.02);
    pair.down.push_back(Queued{release, frames});
    if (duplicate) {
      count("duplicate");
      pair.down.push_back(Queued{release + between(0, 50), std::move(frames)});
    }
  }

  void poll_once() {
    std::vector<zmq::pollitem_t> items;
    std::vector<Pair*> owners;
    items.push_back({frontend_->handle(), 0, ZMQ_POLLIN, 0});
    owners.push_back(nullptr);
    for (auto& [id, pair] : pairs_) {
      if (!pair->dealer) continue;
      items.push_back({pair->dealer->handle(), 0, ZMQ_POLLIN, 0});
      owners.push_back(pair.get());
    }
    try {
      zmq::poll(items.data(), items.size(), next_wait());
    } catch (const zmq::error_t& error) {
      if (error.num() != EINTR) throw;
      return;
    }
    Frames frames;
    // Read a bounded number per socket and round, so no side starves the other.
    for (std::size_t i = 1; i < items.size(); ++i) {
      if ((items[i].revents & ZMQ_POLLIN) == 0) continue;
      Pair* pair = owners[i];
      for (int n = 0; n < 100 && pair->dealer && receive_all(*pair->dealer, frames); ++n) {
        from_broker(*pair, std::move(frames));
      }
    }
    if ((items[0].revents & ZMQ_POLLIN) != 0) {
      for (int n = 0; n < 100 && frontend_ && receive_all(*frontend_, frames); ++n) {
        from_relay(std::move(frames));
      }
    }
  }

  milliseconds next_wait() const {
    auto soonest = SteadyClock::now() + milliseconds(50);
    for (const auto& [id, pair] : pairs_) {
      if (!pair->up.empty()) soonest = std::min(soonest, pair->up.front().release_at);
      for (const auto& held : pair->down) soonest = std::min(soonest, held.release_at);
    }
    auto wait = std::chrono::duration_cast<milliseconds>(soonest - SteadyClock::now());
    return std::clamp(wait, milliseconds(0), milliseconds(50));
  }

  void release_due() {
    auto now = SteadyClock::now();
    for (auto& [id, pair] : pairs_) {
      while (!pair->up.empty() && pair->up.front().release_at <= now) {
        if (pair->dealer) send_all(*pair->dealer, pair->up.front().frames);
        ++counts_.forwarded_up;
        pair->up.pop_front();
      }
      // Replies in release order; equal times keep arrival order.
      std::stable_sort(pair->down.begin(), pair->down.end(), [](const Queued& a, const Queued& b) {
        return a.release_at < b.release_at;
      });
      std::size_t sent = 0;
      while (sent < pair->down.size() && pair->down[sent].release_at <= now) {
        Frames out;
        out.reserve(pair->down[sent].frames.size() + 1);
        out.push_back(pair->routing_id);
        for (auto& frame : pair->down[sent].frames) out.push_back(std::move(frame));
        send_all(*frontend_, out);
        ++counts_.forwarded_down;
        ++sent;
      }
      pair->down.erase(pair->down.begin(), pair->down.begin() + static_cast<long>(sent));
    }
  }

  // Relays reconnect with a new routing id after every failure; broker
  // connections of ids not heard of for a while are closed (not a fault:
  // the relay left them).
  void forget_idle_pairs() {
    auto now = SteadyClock::now();
    for (auto it = pairs_.begin(); it != pairs_.end();) {
      auto& pair = *it->second;
      if (pair.up.empty() && pair.down.empty() &&
          now - pair.last_activity > std::chrono::seconds(30)) {
        it = pairs_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void write_stats() { write_stats_file(settings_.stats_file, counts_, faults_on_); }

 public:
  const std::string& endpoint() const { return endpoint_; }

 private:
  Settings settings_;
  std::mt19937_64 random_;
  zmq::context_t context_;
  std::unique_ptr<zmq::socket_t> frontend_;
  std::string endpoint_;
  std::map<std::string, std::unique_ptr<Pair>> pairs_;
  Counts counts_;
  bool faults_on_ = true;
};

// --- cutting mode -----------------------------------------------------------

// "tcp://127.0.0.1:7750" -> an IPv4 address; "*" or "0" as the port means any.
sockaddr_in parse_tcp_endpoint(const std::string& endpoint) {
  const std::string prefix = "tcp://";
  auto colon = endpoint.rfind(':');
  if (endpoint.rfind(prefix, 0) != 0 || colon == std::string::npos || colon < prefix.size()) {
    throw std::invalid_argument("'" + endpoint + "' is not tcp://ADDRESS:PORT");
  }
  auto host = endpoint.substr(prefix.size(), colon - prefix.size());
  auto port_text = endpoint.substr(colon + 1);
  if (host == "localhost") host = "127.0.0.1";
  sockaddr_in address{};
  address.sin_family = AF_INET;
  if (::inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1) {
    throw std::invalid_argument("'" + endpoint + "': the cutting mode needs an IPv4 address");
  }
  int port = port_text == "*" ? 0 : std::stoi(port_text);
  if (port < 0 || port > 65535) throw std::invalid_argument("'" + endpoint + "': bad port");
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  return address;
}

// "2K-400K" -> {2048, 409600}; K and M are binary multiples.
std::pair<std::uint64_t, std::uint64_t> parse_byte_range(const std::string& text) {
  auto bytes = [&](const std::string& part) {
    std::size_t used = 0;
    auto value = std::stoull(part, &used);
    auto unit = part.substr(used);
    if (unit == "K" || unit == "k") return value << 10;
    if (unit == "M" || unit == "m") return value << 20;
    if (unit.empty()) return value;
    throw std::invalid_argument("'" + text + "' is not a byte range like 2K-400K");
  };
  auto dash = text.find('-');
  if (dash == std::string::npos) throw std::invalid_argument("'" + text + "' has no '-'");
  std::pair range{bytes(text.substr(0, dash)), bytes(text.substr(dash + 1))};
  if (range.first == 0 || range.second < range.first) {
    throw std::invalid_argument("'" + text + "': need 0 < MIN <= MAX");
  }
  return range;
}

class CuttingProxy {
 public:
  CuttingProxy(Settings settings)
      : settings_(std::move(settings)),
        random_(settings_.seed),
        broker_(parse_tcp_endpoint(settings_.broker)) {
    auto address = parse_tcp_endpoint(settings_.bind);
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int on = 1;
    ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    socklen_t length = sizeof address;
    if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        ::listen(listener_, 128) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      throw std::runtime_error("cannot listen on " + settings_.bind + ": " + std::strerror(errno));
    }
    char host[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &address.sin_addr, host, sizeof host);
    endpoint_ = "tcp://" + std::string(host) + ":" + std::to_string(ntohs(address.sin_port));
  }

  ~CuttingProxy() {
    for (auto& link : links_) close_link(link, false);
    if (listener_ >= 0) ::close(listener_);
  }
  CuttingProxy(const CuttingProxy&) = delete;
  CuttingProxy& operator=(const CuttingProxy&) = delete;

  const std::string& endpoint() const { return endpoint_; }

  void run() {
    auto next_stats = SteadyClock::now();
    std::vector<pollfd> fds;
    while (!stop_requested.load()) {
      if (quiet_requested.load()) faults_on_ = false;
      fds.clear();
      fds.push_back({listener_, POLLIN, 0});
      for (auto& link : links_) {
        fds.push_back({link.relay, link_events(link, true), 0});
        fds.push_back({link.broker, link_events(link, false), 0});
      }
      if (::poll(fds.data(), fds.size(), 50) < 0 && errno != EINTR) {
        throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
      }
      for (std::size_t i = 0; i < links_.size(); ++i) {
        serve(links_[i], fds[1 + 2 * i].revents, fds[2 + 2 * i].revents);
      }
      links_.erase(std::remove_if(links_.begin(), links_.end(),
                                  [](const Link& link) { return link.relay < 0; }),
                   links_.end());
      if ((fds[0].revents & POLLIN) != 0) accept_all();
      if (SteadyClock::now() >= next_stats) {
        write_stats_file(settings_.stats_file, counts_, faults_on_);
        next_stats = SteadyClock::now() + milliseconds(100);
      }
    }
    write_stats_file(settings_.stats_file, counts_, faults_on_);
  }

 private:
  static constexpr std::size_t kBufferBytes = 256 * 1024;  // per direction and link

  // Bytes waiting to be written to one side.
  struct Pending {
    std::vector<char> bytes;
    std::size_t offset = 0;
    std::size_t size() const { return bytes.size() - offset; }
  };

  struct Link {
    int relay = -1;
    int broker = -1;
    bool connecting = true;    // the broker side's non-blocking connect is under way
    bool frozen = false;       // everything is read and discarded
    std::uint64_t budget = 0;  // bytes left before the cut
    Pending to_broker, to_relay;
  };

  short link_events(const Link& link, bool relay_side) const {
    if (link.frozen) return POLLIN;
    if (relay_side) {
      short events = link.to_relay.size() > 0 ? POLLOUT : 0;
      if (link.to_broker.size() < kBufferBytes) events |= POLLIN;
      return events;
    }
    if (link.connecting) return POLLOUT;
    short events = link.to_broker.size() > 0 ? POLLOUT : 0;
    if (link.to_relay.size() < kBufferBytes) events |= POLLIN;
    return events;
  }

  void accept_all() {
    while (true) {
      int relay = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (relay < 0) return;  // EAGAIN, or a connection that went away before accept
      int broker = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (broker < 0) {
        ::close(relay);
        continue;
      }
      int on = 1;
      ::setsockopt(relay, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
      ::setsockopt(broker, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
      if (::connect(broker, reinterpret_cast<const sockaddr*>(&broker_), sizeof broker_) != 0 &&
          errno != EINPROGRESS) {
        ::close(broker);
        ::close(relay);  // as a proxy whose backend refuses would
        continue;
      }
      Link link;
      link.relay = relay;
      link.broker = broker;
      link.budget = std::uniform_int_distribution<std::uint64_t>(settings_.cut_min,
                                                                 settings_.cut_max)(random_);
      links_.push_back(std::move(link));
    }
  }

  // Reads what `fd` has into `into` (up to the buffer bound); false at EOF or error.
  static bool read_into(int fd, Pending& into) {
    char chunk[64 * 1024];
    while (into.size() < kBufferBytes) {
      auto room = std::min(sizeof chunk, kBufferBytes - into.size());
      auto got = ::read(fd, chunk, room);
      if (got > 0) {
        if (into.offset > 0 && into.offset == into.bytes.size()) {
          into.bytes.clear();
          into.offset = 0;
        }
        into.bytes.insert(into.bytes.end(), chunk, chunk + got);
        continue;
      }
      if (got == 0) return false;
      return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    }
    return true;
  }

  static bool discard(int fd) {
    char chunk[64 * 1024];
    while (true) {
      auto got = ::read(fd, chunk, sizeof chunk);
      if (got > 0) continue;
      if (got == 0) return false;
      return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    }
  }

  // Writes from `from` to `fd`, no further than the link's budget; false on error.
  bool write_from(Link& link, int fd, Pending& from, std::uint64_t& forwarded) {
    while (from.size() > 0) {
      std::size_t allowed = from.size();
      if (faults_on_)
        allowed = static_cast<std::size_t>(std::min<std::uint64_t>(allowed, link.budget));
      if (allowed == 0) break;
      auto wrote = ::write(fd, from.bytes.data() + from.offset, allowed);
      if (wrote < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
      from.offset += static_cast<std::size_t>(wrote);
      forwarded += static_cast<std::uint64_t>(wrote);
      if (faults_on_) link.budget -= static_cast<std::uint64_t>(wrote);
    }
    if (from.offset > kBufferBytes / 2 || from.size() == 0) {
      from.bytes.erase(from.bytes.begin(), from.bytes.begin() + static_cast<long>(from.offset));
      from.offset = 0;
    }
    return true;
  }

  void serve(Link& link, short relay_events, short broker_events) {
    if (link.relay < 0) return;
    if (link.frozen) {
      // A black hole: nothing goes through, and nothing is closed unless
      // the relay gives up on the connection.
      if (relay_events != 0 && !discard(link.relay)) return close_link(link, false);
      if (broker_events != 0 && !discard(link.broker)) {
        ::close(link.broker);
        link.broker = -1;
      }
      return;
    }
    bool ok = true;
    if (link.connecting && broker_events != 0) {
      int error = 0;
      socklen_t length = sizeof error;
      ::getsockopt(link.broker, SOL_SOCKET, SO_ERROR, &error, &length);
      if (error != 0) return close_link(link, false);  // the broker is down
      link.connecting = false;
    }
    if ((relay_events & (POLLIN | POLLHUP | POLLERR)) != 0)
      ok = read_into(link.relay, link.to_broker);
    if (ok && !link.connecting && (broker_events & (POLLIN | POLLHUP | POLLERR)) != 0) {
      ok = read_into(link.broker, link.to_relay);
    }
    if (ok && !link.connecting)
      ok = write_from(link, link.broker, link.to_broker, counts_.forwarded_up);
    if (ok) ok = write_from(link, link.relay, link.to_relay, counts_.forwarded_down);
    if (!ok) return close_link(link, false);  // one side closed: so does the other
    if (faults_on_ && link.budget == 0) fault(link);
  }

  void fault(Link& link) {
    if (std::uniform_real_distribution<double>(0, 1)(random_) < settings_.freeze_share) {
      ++counts_.by_kind["freeze"];
      link.frozen = true;
      link.to_broker = {};
      link.to_relay = {};
      return;
    }
    ++counts_.by_kind["cut"];
    close_link(link, std::uniform_int_distribution<int>(0, 1)(random_) == 0);
  }

  // With `reset` the sockets close with a RST (SO_LINGER 0), else with a FIN.
  static void close_link(Link& link, bool reset) {
    for (int* fd : {&link.relay, &link.broker}) {
      if (*fd < 0) continue;
      if (reset) {
        linger option{1, 0};
        ::setsockopt(*fd, SOL_SOCKET, SO_LINGER, &option, sizeof option);
      }
      ::close(*fd);
      *fd = -1;
    }
  }

  Settings settings_;
  std::mt19937_64 random_;
  sockaddr_in broker_;
  int listener_ = -1;
  std::string endpoint_;
  std::vector<Link> links_;
  Counts counts_;
  bool faults_on_ = true;
};

int usage(const char* message) {
  std::fprintf(stderr, "fault_proxy: %s\n", message);
  std::fprintf(stderr,
               "usage: fault_proxy --broker ENDPOINT [--bind ENDPOINT] [--endpoint-file FILE]\n"
               "                   [--stats-file FILE] [--seed N] [--rate X] [--hostile-order]\n"
               "                   [--cut-every MIN-MAX [--freeze SHARE]] [--faults-off]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
      return argv[++i];
    };
    try {
      if (flag == "--broker")
        settings.broker = value();
      else if (flag == "--bind")
        settings.bind = value();
      else if (flag == "--endpoint-file")
        settings.endpoint_file = value();
      else if (flag == "--stats-file")
        settings.stats_file = value();
      else if (flag == "--seed")
        settings.seed = std::stoull(value());
      else if (flag == "--rate")
        settings.rate = std::stod(value());
      else if (flag == "--hostile-order")
        settings.hostile_order = true;
      else if (flag == "--cut-every")
        std::tie(settings.cut_min, settings.cut_max) = parse_byte_range(value());
      else if (flag == "--freeze")
        settings.freeze_share = std::stod(value());
      else if (flag == "--faults-off")
        quiet_requested.store(true);  // as after SIGUSR1: a plain forwarder
      else
        return usage(("unknown flag " + flag).c_str());
    } catch (const std::exception& error) {
      return usage(error.what());
    }
  }
  if (settings.broker.empty()) return usage("--broker is required");
  if (settings.freeze_share < 0 || settings.freeze_share > 1) {
    return usage("--freeze is a share between 0 and 1");
  }
  if (settings.cut_max > 0 && settings.hostile_order) {
    return usage("--hostile-order is a message-mode fault; the cutting mode sees only bytes");
  }
  // A cut or freeze kills the relay's connection, never the proxy.
  std::signal(SIGPIPE, SIG_IGN);

  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGUSR1, on_quiet_signal);
  try {
    auto serve = [&](auto& proxy) {
      std::printf("listening on %s\n", proxy.endpoint().c_str());
      std::fflush(stdout);
      if (!settings.endpoint_file.empty()) {
        std::string temporary = settings.endpoint_file + ".tmp";
        std::ofstream(temporary, std::ios::trunc) << proxy.endpoint() << '\n';
        std::filesystem::rename(temporary, settings.endpoint_file);
      }
      proxy.run();
    };
    if (settings.cut_max > 0) {
      CuttingProxy proxy(settings);
      serve(proxy);
    } else {
      Proxy proxy(settings);
      serve(proxy);
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "fault_proxy: %s\n", error.what());
    return 1;
  }
  return 0;
}
