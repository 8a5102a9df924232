// The daemons' HTTP endpoint for operators, on cpp-httplib:
//   GET /metrics  the registry in the Prometheus text format 0.0.4
//   GET /healthz  200 "ok" while the process serves requests (liveness)
//   GET /readyz   200 "ready", or 503 and the reason in one line (readiness)
// Anything else is 404; only GET (and HEAD) are served, request bodies are
// refused, and two worker threads answer, so a scrape storm costs at most two
// threads and the size of the registry's text.
//
// Ownership: the server borrows the registry, which must outlive it.
// Thread safety: the readiness callback runs on the server's threads; it must
// be safe to call from them while the daemon works.
// Errors: the constructor throws std::runtime_error naming the address when it
// cannot be bound.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <spdlog/logger.h>
#include <CLI/CLI.hpp>

namespace metrics {
class Registry;
}

namespace cli {

struct Readiness {
  bool ready = false;
  std::string reason;  // why not ready (or what "ready" means now), one line
};

// "HOST:PORT": an IPv4 address or "localhost" and a port 0-65535 (0: the system
// picks one). Empty on anything else.
struct BindAddress {
  std::string host;
  int port = 0;
};
std::optional<BindAddress> parse_bind_address(std::string_view text);
// CLI11 validator for --metrics-bind.
CLI::Validator bind_address_check();

class MetricsServer {
 public:
  MetricsServer(const std::string& bind, const metrics::Registry& registry,
                std::function<Readiness()> readiness);
  ~MetricsServer() noexcept;  // stops serving and joins its threads
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The address bound, with the real port: "127.0.0.1:41234".
  const std::string& address() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The flags both daemons share: --metrics-bind and --metrics-address-file
// (also as config file keys metrics-bind / metrics-address-file).
struct MetricsSettings {
  std::string bind;          // empty: no endpoint
  std::string address_file;  // where the bound address goes (tests bind port 0)
};
void add_metrics_options(CLI::App* command, MetricsSettings& settings);

// Starts the endpoint when settings.bind is set (else returns null), writes
// the bound address to settings.address_file and logs it. Throws
// std::runtime_error naming the address or the file.
std::unique_ptr<MetricsServer> start_metrics_server(const MetricsSettings& settings,
                                                    const metrics::Registry& registry,
                                                    std::function<Readiness()> readiness,
                                                    spdlog::logger& logger);

}  // namespace cli
