// Debian's prometheus server scrapes the real daemons and answers queries for
// the backlog, the stored count and a consumer group's lag; it loads the
// shipped alert rules. Skipped with a warning when prometheus is not installed.
#include <cctype>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "broker_process.hpp"
#include "relay_harness.hpp"
#include "scrape.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using broker_test::BrokerProcess;
using metrics_test::http_get;
using metrics_test::wait_for_address;
using relay_test::RelayProcess;

std::string percent_encode(const std::string& text) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) != 0 || c == '_' || c == '-' || c == '.') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

class PrometheusServer {
 public:
  PrometheusServer(const std::filesystem::path& dir, const std::string& config) {
    auto config_file = dir / "prometheus.yml";
    std::ofstream(config_file) << config;
    // prometheus cannot report a port it picked: take a free one, and another
    // if something else grabbed it first.
    for (int attempt = 0; attempt < 5 && !process_; ++attempt) {
      address_ = "127.0.0.1:" + std::to_string(test_support::free_loopback_port());
      auto process = std::make_unique<test_support::ChildProcess>(
          OUTBOX_PROMETHEUS,
          std::vector<std::string>{"--config.file=" + config_file.string(),
                                   "--storage.tsdb.path=" + (dir / "tsdb").string(),
                                   "--web.listen-address=" + address_, "--log.level=warn"},
          dir);
      bool ready = test_support::wait_until(
          [&] { return !process->running() || http_get(address_, "/-/ready").status == 200; }, 60s,
          50ms);
      if (ready && process->running()) process_ = std::move(process);
    }
    REQUIRE(process_);
  }

  ~PrometheusServer() {
    if (process_ && process_->running()) {
      process_->signal(SIGTERM);
      process_->wait_for(30s);
    }
  }

  // The value of an instant query that returns one sample; empty otherwise.
  std::optional<double> query(const std::string& promql) {
    auto reply = http_get(address_, "/api/v1/query?query=" + percent_encode(promql));
    if (reply.status != 200) return std::nullopt;
    // {"status":"success","data":{"resultType":"vector","result":[{"metric":{...},
    // "value":[<time>,"<value>"]}]}}
    const auto body = nlohmann::json::parse(reply.body, nullptr, /*allow_exceptions=*/false);
    if (!body.is_object() || !body.contains("data")) return std::nullopt;
    const auto& result = body.at("data").value("result", nlohmann::json::array());
    if (!result.is_array() || result.empty() || !result.at(0).contains("value")) {
      return std::nullopt;
    }
    return std::stod(result.at(0).at("value").at(1).get<std::string>());
  }

  bool wait_for(const std::string& promql, double expected) {
    return test_support::wait_until([&] { return query(promql) == expected; }, 60s, 100ms);
  }

  const std::string& address() const { return address_; }
  test_support::ChildProcess& process() { return *process_; }

 private:
  std::string address_;
  std::unique_ptr<test_support::ChildProcess> process_;
};

// The "expr" strings of the shipped Grafana dashboard (JSON escapes undone).
std::vector<std::string> dashboard_queries() {
  auto text = test_support::read_file(OUTBOX_SOURCE_DIR "/docs/prometheus/outbox-dashboard.json");
  std::vector<std::string> queries;
  const std::string key = "\"expr\": \"";
  for (auto at = text.find(key); at != std::string::npos; at = text.find(key, at)) {
    std::string query;
    for (at += key.size(); at < text.size() && text[at] != '"'; ++at) {
      if (text[at] == '\\') ++at;
      query += text[at];
    }
    queries.push_back(query);
  }
  return queries;
}

// The queries of the README's ```promql block.
std::vector<std::string> readme_queries() {
  auto lines = test_support::lines(test_support::read_file(OUTBOX_SOURCE_DIR "/README.md"));
  std::vector<std::string> queries;
  bool inside = false;
  for (const auto& line : lines) {
    if (line == "```promql") {
      inside = true;
    } else if (inside && line == "```") {
      break;
    } else if (inside && !line.empty() && line[0] != '#') {
      queries.push_back(line);
    }
  }
  return queries;
}

}  // namespace

TEST_CASE("a real Prometheus scrapes the backlog, the stored count and a consumer group's lag",
          "[integration]") {
  if (std::string(OUTBOX_PROMETHEUS).empty()) {
    WARN("prometheus is not installed (Debian: prometheus): skipped");
    return;
  }
  test_support::TempDir dir("metrics-prometheus");
  // Where the broker will listen (for ZeroMQ and for metrics), with no broker yet.
  auto first = std::make_unique<BrokerProcess>(
      dir.path(), dir / "broker.db",
      std::vector<std::string>{"--metrics-bind", "127.0.0.1:0", "--metrics-address-file",
                               (dir / "broker.address").string()});
  const auto endpoint = first->endpoint();
  const auto broker_metrics = wait_for_address(first->process(), dir / "broker.address");
  REQUIRE(first->stop().code == 0);
  first.reset();

  const auto db = dir / "app.db";
  REQUIRE(relay_test::produce(db, 300, 3) == 300);
  RelayProcess relay(dir.path(), db, endpoint,
                     {"--metrics-bind", "127.0.0.1:0", "--metrics-address-file",
                      (dir / "relay.address").string(), "--connect-timeout", "200ms"});
  const auto relay_metrics = wait_for_address(relay.process(), dir / "relay.address");
  INFO(relay.log());

  PrometheusServer prometheus(dir.path(),
                              "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                              "rule_files: ['" OUTBOX_SOURCE_DIR
                              "/docs/prometheus/outbox.rules.yml']\n"
                              "scrape_configs:\n"
                              "  - job_name: orders-relay\n"
                              "    static_configs: [{targets: ['" +
                                  relay_metrics +
                                  "']}]\n"
                                  "  - job_name: outbox-broker\n"
                                  "    static_configs: [{targets: ['" +
                                  broker_metrics + "']}]\n");
  INFO(prometheus.process().stderr_text());
  // The backlog while no broker answers.
  CHECK(prometheus.wait_for("outbox_relay_pending_messages{job=\"orders-relay\"}", 300));
  CHECK(prometheus.wait_for("up{job=\"outbox-broker\"}", 0));
  CHECK(prometheus.wait_for("sum by (job) (outbox_relay_lease_held)", 1));

  BrokerProcess broker(dir.path(), dir / "broker.db", {"--metrics-bind", broker_metrics}, endpoint);
  CHECK(prometheus.wait_for("outbox_relay_pending_messages{job=\"orders-relay\"}", 0));
  CHECK(prometheus.wait_for("outbox_broker_messages_total{outcome=\"stored\"}", 300));
  CHECK(prometheus.wait_for(
      "outbox_relay_acknowledged_total{job=\"orders-relay\",outcome=\"stored\"}", 300));

  auto client = broker_test::connect(broker.endpoint());
  REQUIRE(client->commit_offset("orders", "billing", 100, 20s).ok());
  CHECK(prometheus.wait_for("outbox_broker_group_lag_messages{group=\"billing\",topic=\"orders\"}",
                            200));

  // Every query the README and the dashboard show is valid PromQL for this Prometheus.
  auto queries = dashboard_queries();
  CHECK(queries.size() >= 12);
  auto from_readme = readme_queries();
  CHECK(from_readme.size() == 5);
  queries.insert(queries.end(), from_readme.begin(), from_readme.end());
  for (const auto& query : queries) {
    INFO(query);
    auto reply = http_get(prometheus.address(), "/api/v1/query?query=" + percent_encode(query));
    CHECK(reply.status == 200);
    CHECK(nlohmann::json::parse(reply.body).at("status") == "success");
  }

  // The shipped rules are loaded.
  auto rules = http_get(prometheus.address(), "/api/v1/rules");
  CHECK(rules.status == 200);
  std::set<std::string> rule_names;
  const auto rules_reply = nlohmann::json::parse(rules.body);
  for (const auto& group : rules_reply.at("data").at("groups")) {
    for (const auto& rule : group.at("rules"))
      rule_names.insert(rule.at("name").get<std::string>());
  }
  CHECK(rule_names.count("OutboxNoRelayHoldsLease") == 1);
  CHECK(rule_names.count("OutboxConsumerLagGrowing") == 1);

  CHECK(relay.stop().code == 0);
  CHECK(broker.stop().code == 0);
}
