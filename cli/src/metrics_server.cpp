#include "cli/metrics_server.hpp"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <charconv>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <httplib.h>

#include "cli/files.hpp"
#include "metrics/metrics.hpp"

namespace cli {

std::optional<BindAddress> parse_bind_address(std::string_view text) {
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size()) return {};
  BindAddress result;
  result.host = std::string(text.substr(0, colon));
  auto port_text = text.substr(colon + 1);
  auto [end, error] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), result.port);
  if (error != std::errc() || end != port_text.data() + port_text.size() || result.port < 0 ||
      result.port > 65535) {
    return {};
  }
  in_addr address{};
  if (result.host != "localhost" && ::inet_pton(AF_INET, result.host.c_str(), &address) != 1) {
    return {};
  }
  return result;
}

CLI::Validator bind_address_check() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        if (parse_bind_address(value)) return {};
        return "'" + value + "' is not HOST:PORT (an IPv4 address or localhost, port 0-65535)";
      },
      "HOST:PORT");
}

struct MetricsServer::Impl {
  httplib::Server server;
  std::string address;
  std::thread thread;
  std::mutex mutex;
  std::condition_variable finished_changed;
  bool finished = false;  // the accept loop has returned (under mutex)
};

MetricsServer::MetricsServer(const std::string& bind, const metrics::Registry& registry,
                             std::function<Readiness()> readiness)
    : impl_(std::make_unique<Impl>()) {
  auto parsed = parse_bind_address(bind);
  if (!parsed) throw std::runtime_error("metrics address '" + bind + "' is not HOST:PORT");
  auto& server = impl_->server;
  // A connection holds a worker until its request is read or the read
  // timeout passes: with two workers, two clients that never finished a
  // request held /healthz back for 5 s at a time (an orchestrator's probe
  // would restart a healthy daemon). Eight idle threads cost little; a
  // client that opens more connections than that waits in the listen queue
  // rather than costing threads.
  server.new_task_queue = [] { return new httplib::ThreadPool(8); };
  // SO_REUSEADDR only: cpp-httplib's default adds SO_REUSEPORT, with which a
  // second daemon given the same address would share the port and split the
  // scrapes between them instead of failing to start.
  server.set_socket_options([](socket_t socket) {
    int yes = 1;
    ::setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  server.set_payload_max_length(0);
  server.set_read_timeout(std::chrono::seconds(5));
  server.set_write_timeout(std::chrono::seconds(5));
  server.set_keep_alive_max_count(100);
  server.Get("/metrics", [&registry](const httplib::Request&, httplib::Response& response) {
    response.set_content(registry.render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server.Get("/healthz", [](const httplib::Request&, httplib::Response& response) {
    response.set_content("ok\n", "text/plain");
  });
  server.Get("/readyz", [readiness = std::move(readiness)](const httplib::Request&,
                                                           httplib::Response& response) {
    auto state = readiness ? readiness() : Readiness{true, "ready"};
    response.status = state.ready ? 200 : 503;
    std::string body = state.ready ? "ready" : "not ready";
    if (!state.reason.empty()) body += ": " + state.reason;
    response.set_content(body + "\n", "text/plain");
  });
  int port = parsed->port;
  if (port == 0) {
    port = server.bind_to_any_port(parsed->host);
    if (port < 0) throw std::runtime_error("cannot bind the metrics address " + bind);
  } else if (!server.bind_to_port(parsed->host, port)) {
    throw std::runtime_error("cannot bind the metrics address " + bind +
                             " (in use, or not an address of this machine)");
  }
  impl_->address = parsed->host + ":" + std::to_string(port);
  impl_->thread = std::thread([impl = impl_.get()] {
    impl->server.listen_after_bind();
    const std::lock_guard<std::mutex> lock(impl->mutex);
    impl->finished = true;
    impl->finished_changed.notify_all();
  });
}

MetricsServer::~MetricsServer() noexcept {
  // cpp-httplib's stop() does nothing until the accept loop has begun (it
  // acts only once is_running() is true), so a stop right after the start
  // would leave the loop serving and the join waiting forever: stop again
  // until the loop has returned.
  {
    std::unique_lock<std::mutex> lock(impl_->mutex);
    while (!impl_->finished) {
      impl_->server.stop();
      impl_->finished_changed.wait_for(lock, std::chrono::milliseconds(5));
    }
  }
  if (impl_->thread.joinable()) impl_->thread.join();
}

const std::string& MetricsServer::address() const noexcept {
  return impl_->address;
}

void add_metrics_options(CLI::App* command, MetricsSettings& settings) {
  auto* bind =
      command
          ->add_option("--metrics-bind", settings.bind,
                       "serve /metrics (Prometheus), /healthz and /readyz over HTTP on HOST:PORT, "
                       "e.g. 127.0.0.1:9464 (port 0: any free port); off when not given")
          ->check(bind_address_check());
  command
      ->add_option("--metrics-address-file", settings.address_file,
                   "write the metrics address actually bound (HOST:PORT) to this file")
      ->needs(bind);
}

std::unique_ptr<MetricsServer> start_metrics_server(const MetricsSettings& settings,
                                                    const metrics::Registry& registry,
                                                    std::function<Readiness()> readiness,
                                                    spdlog::logger& logger) {
  if (settings.bind.empty()) return nullptr;
  auto server = std::make_unique<MetricsServer>(settings.bind, registry, std::move(readiness));
  if (!settings.address_file.empty()) {
    write_new_file(settings.address_file, server->address() + "\n", 0644, Overwrite::replace);
  }
  logger.info("metrics on http://{}/metrics (health /healthz, readiness /readyz)",
              server->address());
  return server;
}

}  // namespace cli
