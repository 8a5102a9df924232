// Memory of outbox-broker under peers that do not play along. Starts the real
// daemon (a fresh one per scenario, so its peak is that scenario's), drives it
// over TCP loopback and prints the daemon's peak resident memory (VmHWM) and
// what it still holds after the peers have gone (VmRSS):
//
//   fetch    3 connections, each sends 300 FETCHes of up to 8 MiB and never reads
//   publish  4 connections publish batches of the largest frame the broker
//            takes (32 MiB) and never read their acks
//   idle     1,000 connections that open a session and then stay idle
//   consumers  100 connections, each sends 40 FETCHes of 900 KB messages and
//            never reads (all of them together, past --max-total-outgoing-bytes)
//   hellos   one connection sends 20,000 HELLOs with new origins without
//            waiting (each raises a lease epoch: a durable write) while another
//            publishes one message at a time; prints the broker's CPU, its
//            epoch commits and the other peer's publish latency
//
//   broker-stress --dir /tmp/broker-stress [--scenario all] [--broker PATH]
//
// Not installed. The clients set ZMQ_RCVHWM to 1 and a small kernel receive
// buffer, so "never reads" really stops reading instead of letting ZeroMQ's
// I/O thread take everything into the client.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wnull-dereference"
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <zmq.hpp>

#include "bench_support.hpp"
#include "broker/client.hpp"
#include "broker/server.hpp"
#include "non_reading_peer.hpp"
#include "wire/protocol.hpp"
#include "wire/zmq_io.hpp"

namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::size_t kMiB = std::size_t{1} << 20;

struct Settings {
  std::string broker = OUTBOX_BROKER_PATH;
  std::string dir = "/tmp/broker-stress";
  std::string scenario = "all";
  int fetch_connections = 3;
  int fetches = 300;
  int publishers = 4;
  int batches = 12;
  int idle_connections = 1000;
  int consumers = 100;
  int hellos = 20'000;
  double observe_seconds = 30;
};

// The daemon, a fresh one per scenario, stopped with SIGTERM.
class Daemon {
 public:
  Daemon(const Settings& settings, const std::string& name) {
    fs::create_directories(settings.dir);
    auto db = fs::path(settings.dir) / (name + ".db");
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(db.string() + suffix);
    auto endpoint_file = fs::path(settings.dir) / (name + ".endpoint");
    fs::remove(endpoint_file);
    process_ = std::make_unique<bench::ChildProcess>(
        settings.broker,
        std::vector<std::string>{"serve", "--db", db.string(), "--bind", "tcp://127.0.0.1:*",
                                 "--endpoint-file", endpoint_file.string(), "--sync", "normal",
                                 "--log-level", "warn"},
        bench::KeptLog{name, settings.dir});
    if (!bench::wait_until([&] { return fs::exists(endpoint_file) || !process_->running(); },
                           30s) ||
        !process_->running()) {
      throw std::runtime_error("the broker did not start: " + process_->log_tail());
    }
    std::ifstream in(endpoint_file);
    std::getline(in, endpoint_);
  }
  ~Daemon() { process_->stop(); }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  const std::string& endpoint() const { return endpoint_; }

  // User + system CPU seconds so far (/proc/<pid>/stat).
  double cpu_seconds() const {
    std::ifstream stat("/proc/" + std::to_string(process_->pid()) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    std::istringstream fields(text.substr(text.rfind(')') + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
      if (i == 14) utime = std::stoull(field);
      if (i == 15) stime = std::stoull(field);
    }
    return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }

  // A field of /proc/<pid>/status in KiB (VmHWM: peak, VmRSS: now).
  long kib(const std::string& field) const {
    std::ifstream status("/proc/" + std::to_string(process_->pid()) + "/status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
    }
    return -1;
  }

 private:
  std::unique_ptr<bench::ChildProcess> process_;
  std::string endpoint_;
};

bool send(zmq::socket_t& socket, const wire::AnyMessage& message) {
  return wire::send_message(socket, message);
}

// Opens a session on a raw socket and returns its id (reads only the WELCOME).
std::uint64_t open_session(zmq::socket_t& socket) {
  send(socket, wire::Hello{"broker-stress", 0, "", 0});
  socket.set(zmq::sockopt::rcvtimeo, 20000);
  auto reply = wire::receive_message(socket);
  if (!reply || !reply->ok() || !std::holds_alternative<wire::Welcome>(reply->value())) {
    throw std::runtime_error("no WELCOME from the broker");
  }
  return std::get<wire::Welcome>(reply->value()).session_id;
}

wire::StatsReply stats(const Daemon& daemon) {
  broker::Client client(daemon.endpoint());
  auto reply = client.stats(20s);
  if (!reply) throw std::runtime_error("STATS failed: " + reply.error().message);
  return *reply;
}

std::uint64_t counter(const wire::StatsReply& reply, const std::string& name) {
  for (const auto& [counter_name, value] : reply.counters) {
    if (counter_name == name) return value;
  }
  return 0;
}

struct Figures {
  long peak_kib = 0;
  long after_kib = 0;
  std::string notes;
};

// Samples the daemon while the peers do their worst, then closes them and
// samples what is left.
template <typename ClosePeers>
Figures observe(const Daemon& daemon, const Settings& settings, ClosePeers close_peers) {
  auto until = SteadyClock::now() + std::chrono::duration<double>(settings.observe_seconds);
  while (SteadyClock::now() < until) std::this_thread::sleep_for(100ms);
  Figures figures;
  figures.peak_kib = daemon.kib("VmHWM");
  close_peers();
  std::this_thread::sleep_for(3s);  // the broker trims when idle
  figures.after_kib = daemon.kib("VmRSS");
  return figures;
}

Figures fetch_scenario(const Settings& settings) {
  Daemon daemon(settings, "fetch");
  {
    // 24 messages of (almost) 1 MiB: every FETCH of 8 MiB gets a full reply.
    broker::Client producer(daemon.endpoint());
    if (!producer.hello("broker-stress", 20s)) throw std::runtime_error("no session");
    std::vector<wire::OutgoingMessage> batch;
    for (int i = 0; i < 24; ++i) {
      batch.push_back({"big-" + std::to_string(i), "big", "k", {}, std::string(kMiB - 64, 'x')});
    }
    auto ack = producer.publish(1, batch, 60s);
    if (!ack) throw std::runtime_error("publish failed: " + ack.error().message);
  }
  zmq::context_t context(1);
  std::vector<zmq::socket_t> sockets;
  for (int c = 0; c < settings.fetch_connections; ++c) {
    sockets.push_back(test_support::non_reading_dealer(context, daemon.endpoint()));
    for (int i = 0; i < settings.fetches; ++i) {
      wire::Fetch fetch;
      fetch.request_id = static_cast<std::uint64_t>(i + 1);
      fetch.topic = "big";
      fetch.from_offset = 1;
      fetch.max_bytes = 8 * kMiB;
      send(sockets.back(), fetch);
    }
  }
  auto figures = observe(daemon, settings, [&] { sockets.clear(); });
  auto after = stats(daemon);
  figures.notes = "requests_dropped=" + std::to_string(counter(after, "requests_dropped")) +
                  " outgoing_bytes_after=" + std::to_string(counter(after, "outgoing_bytes"));
  return figures;
}

Figures publish_scenario(const Settings& settings) {
  Daemon daemon(settings, "publish");
  zmq::context_t context(2);
  std::vector<zmq::socket_t> sockets;
  std::vector<std::uint64_t> sessions;
  for (int c = 0; c < settings.publishers; ++c) {
    sockets.push_back(test_support::non_reading_dealer(context, daemon.endpoint()));
    sessions.push_back(open_session(sockets.back()));
  }
  // The largest body the broker takes, filled with messages just under the
  // default --max-message-bytes (1 MiB), so all of them are stored.
  auto limits = broker::ServerOptions::default_limits();
  std::atomic<int> sent{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < settings.publishers; ++c) {
    threads.emplace_back([&, c] {
      auto& socket = sockets[static_cast<std::size_t>(c)];
      socket.set(zmq::sockopt::sndtimeo, 60000);
      for (int b = 0; b < settings.batches; ++b) {
        std::string body;
        auto batch_id = static_cast<std::uint64_t>(b + 1);
        wire::begin_publish_body(body, sessions[static_cast<std::size_t>(c)], batch_id);
        std::uint32_t count = 0;
        std::string payload(kMiB - 64, static_cast<char>('a' + c));
        while (body.size() + payload.size() + 64 <= limits.max_body_bytes) {
          // Appended piece by piece: GCC 12 at -O3 warns (-Wrestrict, a false
          // positive) about the same id built with operator+.
          std::string id = "p";
          id.append(std::to_string(c)).append("-").append(std::to_string(b)).append("-");
          id.append(std::to_string(count));
          wire::append_publish_message(body, id, "load", id, {}, payload);
          ++count;
        }
        wire::finish_publish_body(body, count);
        wire::Frames frames{wire::encode_tag(), std::string(1, '\x03'), std::move(body)};
        if (!wire::send_frames(socket, frames)) return;
        ++sent;
      }
    });
  }
  auto figures = observe(daemon, settings, [&] {
    for (auto& thread : threads) thread.join();
    sockets.clear();
  });
  auto after = stats(daemon);
  figures.notes = "batch_bytes=" + std::to_string(limits.max_body_bytes) +
                  " batches_sent=" + std::to_string(sent.load()) +
                  " stored=" + std::to_string(counter(after, "stored")) +
                  " requests_dropped=" + std::to_string(counter(after, "requests_dropped"));
  return figures;
}

// Many consumers that stop reading: together they may hold only the total
// cap, each its share of it.
Figures consumers_scenario(const Settings& settings) {
  Daemon daemon(settings, "consumers");
  {
    broker::Client producer(daemon.endpoint());
    if (!producer.hello("broker-stress", 20s)) throw std::runtime_error("no session");
    std::vector<wire::OutgoingMessage> batch;
    for (int i = 0; i < 30; ++i) {
      batch.push_back({"big-" + std::to_string(i), "big", "k", {}, std::string(900'000, 'x')});
    }
    auto ack = producer.publish(1, batch, 60s);
    if (!ack) throw std::runtime_error("publish failed: " + ack.error().message);
  }
  zmq::context_t context(1);
  context.set(zmq::ctxopt::max_sockets, settings.consumers + 16);
  std::vector<zmq::socket_t> sockets;
  for (int c = 0; c < settings.consumers; ++c) {
    sockets.push_back(test_support::non_reading_dealer(context, daemon.endpoint()));
    for (int i = 0; i < 40; ++i) {
      wire::Fetch fetch;
      fetch.request_id = static_cast<std::uint64_t>(i + 1);
      fetch.topic = "big";
      fetch.from_offset = 1;
      send(sockets.back(), fetch);
    }
  }
  std::uint64_t held = 0;
  auto figures = observe(daemon, settings, [&] {
    held = counter(stats(daemon), "outgoing_bytes");
    sockets.clear();
  });
  figures.notes = "outgoing_bytes_held=" + std::to_string(held);
  return figures;
}

// A HELLO flood beside a publisher: the epochs of the HELLOs read together
// are written in one transaction, and the publisher is not held behind them.
Figures hellos_scenario(const Settings& settings) {
  Daemon daemon(settings, "hellos");
  broker::Client publisher(daemon.endpoint());
  if (!publisher.hello("broker-stress", 20s)) throw std::runtime_error("no session");
  zmq::context_t context(1);
  zmq::socket_t flooder(context, zmq::socket_type::dealer);
  flooder.set(zmq::sockopt::linger, 0);
  flooder.set(zmq::sockopt::sndhwm, 0);
  flooder.set(zmq::sockopt::rcvhwm, 0);
  flooder.connect(daemon.endpoint());
  const double cpu_before = daemon.cpu_seconds();
  const auto started = SteadyClock::now();
  std::atomic<bool> flooding{true};
  std::thread flood([&] {
    for (int i = 0; i < settings.hellos; ++i) {
      send(flooder, wire::Hello{"flood", wire::kHelloOneOfSeveral, "origin-" + std::to_string(i),
                                static_cast<std::uint64_t>(i + 1)});
    }
    flooder.set(zmq::sockopt::rcvtimeo, 60000);
    for (int i = 0; i < settings.hellos; ++i) {
      if (!wire::receive_message(flooder)) break;
    }
    flooding = false;
  });
  std::vector<double> latencies_ms;
  for (std::uint64_t batch = 1; flooding; ++batch) {
    auto sent = SteadyClock::now();
    const std::vector<wire::OutgoingMessage> message = {
        {"p-" + std::to_string(batch), "other", "k", {}, std::string(100, 'p')}};
    auto ack = publisher.publish(batch, message, 60s);
    if (!ack) throw std::runtime_error("publish failed: " + ack.error().message);
    latencies_ms.push_back(
        std::chrono::duration<double, std::milli>(SteadyClock::now() - sent).count());
    std::this_thread::sleep_for(10ms);
  }
  flood.join();
  const double seconds = std::chrono::duration<double>(SteadyClock::now() - started).count();
  const double cpu = daemon.cpu_seconds() - cpu_before;
  auto after = stats(daemon);
  std::sort(latencies_ms.begin(), latencies_ms.end());
  auto at = [&](double q) {
    return latencies_ms.empty() ? 0.0
                                : latencies_ms[static_cast<std::size_t>(
                                      q * static_cast<double>(latencies_ms.size() - 1))];
  };
  char notes[256];
  std::snprintf(notes, sizeof notes,
                "hellos=%d in %.2f s, broker CPU %.2f s, epoch_commits=%llu; other peer's "
                "publish ms: median %.1f max %.1f (%zu)",
                settings.hellos, seconds, cpu,
                static_cast<unsigned long long>(counter(after, "epoch_commits")), at(0.5), at(1.0),
                latencies_ms.size());
  Figures figures;
  figures.peak_kib = daemon.kib("VmHWM");
  figures.after_kib = daemon.kib("VmRSS");
  figures.notes = notes;
  return figures;
}

Figures idle_scenario(const Settings& settings) {
  Daemon daemon(settings, "idle");
  zmq::context_t context(1);
  context.set(zmq::ctxopt::max_sockets, settings.idle_connections + 16);
  std::vector<zmq::socket_t> sockets;
  for (int c = 0; c < settings.idle_connections; ++c) {
    sockets.push_back(test_support::non_reading_dealer(context, daemon.endpoint()));
    open_session(sockets.back());
  }
  auto figures = observe(daemon, settings, [&] { sockets.clear(); });
  auto after = stats(daemon);
  figures.notes = "sessions_active=" + std::to_string(counter(after, "sessions_active"));
  return figures;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  CLI::App app{"broker-stress: peak memory of outbox-broker under peers that do not read"};
  app.add_option("--broker", settings.broker, "outbox-broker binary")->capture_default_str();
  app.add_option("--dir", settings.dir, "scratch directory (databases, logs)")
      ->capture_default_str();
  app.add_option("--scenario", settings.scenario, "all, fetch, publish, idle, consumers or hellos")
      ->check(CLI::IsMember({"all", "fetch", "publish", "idle", "consumers", "hellos"}))
      ->capture_default_str();
  app.add_option("--publish-batches", settings.batches, "largest batches per publisher")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--observe-seconds", settings.observe_seconds,
                 "how long each scenario runs before its peers go")
      ->check(CLI::Range(1.0, 600.0))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  struct Scenario {
    const char* name;
    const char* what;
    Figures (*run)(const Settings&);
  };
  const Scenario scenarios[] = {
      {"fetch", "3 connections x 300 unread FETCHes of 8 MiB", fetch_scenario},
      {"publish", "4 clients publishing 32 MiB batches, acks unread", publish_scenario},
      {"idle", "1,000 idle connections with a session", idle_scenario},
      {"consumers", "100 connections x 40 unread FETCHes of 900 KB", consumers_scenario},
      {"hellos", "20,000 HELLOs with new origins beside a publisher", hellos_scenario},
  };
  std::printf("%-8s %-50s %14s %16s  %s\n", "scenario", "", "peak RSS MiB", "after peers MiB",
              "notes");
  for (const auto& scenario : scenarios) {
    if (settings.scenario != "all" && settings.scenario != scenario.name) continue;
    try {
      auto figures = scenario.run(settings);
      std::printf("%-8s %-50s %14.1f %16.1f  %s\n", scenario.name, scenario.what,
                  static_cast<double>(figures.peak_kib) / 1024.0,
                  static_cast<double>(figures.after_kib) / 1024.0, figures.notes.c_str());
      std::fflush(stdout);
    } catch (const std::exception& error) {
      std::fprintf(stderr, "broker-stress: %s: %s\n", scenario.name, error.what());
      return 1;
    }
  }
  return 0;
}
