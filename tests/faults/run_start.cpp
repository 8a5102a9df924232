#include "run.hpp"

#include <algorithm>
#include <csignal>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "outbox/relay_store.hpp"

namespace faults {

std::map<std::string, InboxRecord> Run::read_inbox_records(const std::vector<std::string>& ids) {
#ifdef OUTBOX_FAULTS_REDIS_SERVER
  return RedisReader(redis_port_).records(ids);
#else
  (void)ids;
  return {};
#endif
}

void Run::start_redis() {
#ifdef OUTBOX_FAULTS_REDIS_SERVER
  auto data = dir_ / "redis";
  fs::create_directories(data);
  // Should another program take the port before redis-server binds it, try a new one.
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (redis_) {
      redis_->stay_down();
      redis_->signal(SIGKILL);
      redis_->poll(SteadyClock::now());
    }
    redis_port_ = test_support::free_loopback_port();
    redis_ =
        std::make_unique<Managed>("redis-server", dir_ / "logs" / "redis-server.log", [this, data] {
          return std::make_unique<test_support::ChildProcess>(
              OUTBOX_FAULTS_REDIS_SERVER,
              std::vector<std::string>{"--bind", "127.0.0.1", "--port", std::to_string(redis_port_),
                                       "--dir", data.string(), "--save", "", "--appendonly", "yes",
                                       "--appendfsync", "always", "--daemonize", "no", "--logfile",
                                       ""},
              dir_);
        });
    redis_->start();
    bool up = test_support::wait_until(
        [&] {
          redis_->poll(SteadyClock::now());  // a lost bind race ends it
          return !redis_->running() || RedisReader(redis_port_).ping();
        },
        20s, 20ms);
    if (up && redis_->running()) {
      say("redis-server at redis://127.0.0.1:" + std::to_string(redis_port_));
      return;
    }
  }
  throw HarnessError("redis-server did not start on 127.0.0.1 (see logs/redis-server.log)");
#endif
}

std::vector<BrokerCopy> Run::read_destination() {
  if (!jetstream()) return fetch_everything(broker_endpoint_, broker_topics(app_dbs_));
#ifdef OUTBOX_RELAY_WITH_JETSTREAM
  auto client = wait_for_nats(30s);
  if (!client) throw HarnessError("nats-server does not answer; cannot read the stream");
  return client->read_all(kStream);
#else
  return {};
#endif
}

#ifdef OUTBOX_RELAY_WITH_JETSTREAM
std::unique_ptr<JetStreamClient> Run::wait_for_nats(milliseconds timeout) {
  std::unique_ptr<JetStreamClient> client;
  test_support::wait_until(
      [&] {
        client = JetStreamClient::connect(nats_url_);
        return client != nullptr;
      },
      timeout, 20ms);
  return client;
}
#endif

void Run::start_nats() {
#ifdef OUTBOX_RELAY_WITH_JETSTREAM
  auto store = dir_ / "nats-store";
  fs::create_directories(store);
  std::unique_ptr<JetStreamClient> client;
  // Should another program take the port before nats-server binds it, try a new one.
  for (int attempt = 0; attempt < 5 && !client; ++attempt) {
    if (nats_) {
      nats_->stay_down();
      nats_->signal(SIGKILL);
      nats_->poll(SteadyClock::now());
    }
    nats_port_ = test_support::free_loopback_port();
    nats_url_ = "nats://127.0.0.1:" + std::to_string(nats_port_);
    nats_ =
        std::make_unique<Managed>("nats-server", dir_ / "logs" / "nats-server.log", [this, store] {
          return std::make_unique<test_support::ChildProcess>(
              settings_.nats_server_binary,
              std::vector<std::string>{"-js", "-a", "127.0.0.1", "-p", std::to_string(nats_port_),
                                       "-sd", store.string()},
              dir_);
        });
    // nats-server ends with exit code 1 after a clean shutdown on SIGTERM.
    nats_->accept_term_exit_codes([](int code) { return code == 0 || code == 1; });
    nats_->start();
    client = wait_for_nats(20s);
  }
  if (!client)
    throw HarnessError("nats-server did not start on 127.0.0.1 (see logs/nats-server.log)");
  client->add_stream(kStream, "outbox.>", kDuplicateWindow);
  say("nats-server at " + nats_url_ + ", stream " + kStream + " on outbox.>");
#endif
}

void Run::start_everything() {
  if (jetstream()) {
    start_nats();
  } else {
    start_broker_and_proxies();
    if (redis_inbox()) start_redis();
  }
  start_producers_and_relays();
}

void Run::start_broker_and_proxies() {
  // Broker first, on a port the system picks; restarts bind the same endpoint.
  broker_ = std::make_unique<Managed>("broker", dir_ / "logs" / "broker.log", [this] {
    auto endpoint_file = dir_ / ("broker-endpoint-" + std::to_string(++broker_starts_));
    return std::make_unique<test_support::ChildProcess>(
        settings_.broker_binary,
        std::vector<std::string>{"serve", "--db", broker_db_.string(), "--bind",
                                 broker_endpoint_.empty() ? "tcp://127.0.0.1:*" : broker_endpoint_,
                                 "--endpoint-file", endpoint_file.string(), "--sync", "normal",
                                 "--max-message-bytes", "16k", "--log-level", "info"},
        dir_);
  });
  // Exit code 4: the port of the killed broker is not free yet; start again.
  broker_->accept_exit_codes([](int code) { return code == 4; });
  broker_->start();
  auto first_endpoint_file = dir_ / "broker-endpoint-1";
  if (!test_support::wait_until([&] { return fs::exists(first_endpoint_file); }, 20s)) {
    throw HarnessError("outbox-broker did not start listening");
  }
  broker_endpoint_ = read_endpoint(first_endpoint_file);

  // One faulty network between the relays and the broker, one between the
  // consumer and the broker.
  std::vector<std::string> message_faults = {"--rate", std::to_string(settings_.proxy_rate)};
  if (settings_.hostile_order) message_faults.push_back("--hostile-order");
  proxy_ = start_proxy("proxy", proxy_stats_, settings_.seed ^ 0x5bd1e995u, broker_endpoint_,
                       message_faults, proxy_endpoint_);
  consumer_proxy_ =
      start_proxy("consumer-proxy", consumer_proxy_stats_, settings_.seed ^ 0x2545f491u,
                  broker_endpoint_, message_faults, consumer_proxy_endpoint_);
  relay_entry_ = proxy_endpoint_;
  consumer_entry_ = consumer_proxy_endpoint_;
  if (!cutting()) return;
  // In front of each, the TCP connection itself is cut at random (or goes
  // silent), as by a NAT or load balancer: relays and consumer must notice
  // from their sockets and carry on over a new connection.
  std::vector<std::string> cuts = {"--cut-every", settings_.cut_every, "--freeze",
                                   std::to_string(settings_.freeze)};
  relay_cutter_ = start_proxy("relay-cutter", relay_cutter_stats_, settings_.seed ^ 0x9e3779b9u,
                              proxy_endpoint_, cuts, relay_entry_);
  consumer_cutter_ =
      start_proxy("consumer-cutter", consumer_cutter_stats_, settings_.seed ^ 0x7f4a7c15u,
                  consumer_proxy_endpoint_, cuts, consumer_entry_);
}

void Run::start_producers_and_relays() {
  // One database: every producer writes to it. Several: producer i writes
  // to databases i, i + P, i + 2P, ...
  const int producers =
      multi() ? std::min(settings_.producers, settings_.databases) : settings_.producers;
  for (int i = 0; i < producers; ++i) {
    auto name = "producer-" + std::to_string(i + 1);
    auto seed = settings_.seed * 1000003u + static_cast<std::uint64_t>(i);
    std::vector<std::string> args;
    const auto first = multi() ? static_cast<std::size_t>(i) : 0;
    const auto step = multi() ? static_cast<std::size_t>(producers) : 1;
    for (auto db = first; db < app_dbs_.size(); db += step) {
      args.push_back("--db");
      args.push_back(app_dbs_[db].string());
    }
    for (const auto& arg :
         {std::string("--name"), name, std::string("--seed"), std::to_string(seed),
          std::string("--rate"), std::to_string(settings_.rate), std::string("--keys"),
          std::to_string(settings_.keys), std::string("--oversize-rate"),
          std::to_string(jetstream() ? 0 : settings_.oversize_rate)}) {
      args.push_back(arg);
    }
    // Databases forwarded together: ids unique across them (docs/operations.md).
    if (multi()) {
      args.push_back("--ids");
      args.push_back("uuid_v7");
    }
    producers_.push_back(
        std::make_unique<Managed>(name, dir_ / "logs" / (name + ".log"), [this, args] {
          return std::make_unique<test_support::ChildProcess>(settings_.producer_binary, args,
                                                              dir_);
        }));
    producers_.back()->start();
  }
  // The relay refuses a database without the outbox tables (and the checker
  // reads every one): wait for the producers to create them.
  for (const auto& app_db : app_dbs_) {
    if (!test_support::wait_until(
            [&] {
              tend(true);
              try {
                outbox::RelayOptions options;
                options.read_only = true;
                outbox::RelayStore::open(app_db, options);
                return true;
              } catch (const outbox::Error&) {
                return false;
              }
            },
            30s, 10ms)) {
      throw HarnessError("no producer created the outbox schema in " + app_db.string());
    }
  }
  if (!jetstream() && !multi() && settings_.sql_rate > 0) {
    // Another language's producer: plain SQL on the tables the C++ one created.
    auto seed = settings_.seed * 1000003u + 999u;
    producers_.push_back(
        std::make_unique<Managed>("sql-producer", dir_ / "logs" / "sql-producer.log", [this, seed] {
          return std::make_unique<test_support::ChildProcess>(
              settings_.sql_producer_binary,
              std::vector<std::string>{"--db", app_db_.string(), "--name", "sql", "--seed",
                                       std::to_string(seed), "--rate",
                                       std::to_string(settings_.sql_rate), "--keys",
                                       std::to_string(settings_.keys), "--poison-rate",
                                       std::to_string(settings_.poison_rate)},
              dir_);
        }));
    producers_.back()->start();
  }

  auto relay_starter = [this] {
    std::vector<std::string> args = {"run"};
    args.push_back(multi() ? "--db-dir" : "--db");
    args.push_back(multi() ? tenant_dir_.string() : app_db_.string());
    if (jetstream()) {
      for (const auto& arg :
           {std::string("--sink"), std::string("jetstream"), std::string("--nats-url"), nats_url_,
            std::string("--stream"), std::string(kStream)}) {
        args.push_back(arg);
      }
    } else {
      args.push_back("--broker");
      args.push_back(relay_entry_);
    }
    for (const char* arg : {"--lease", "1s", "--ack-timeout", "1s", "--backoff-initial", "20ms",
                            "--backoff-max", "500ms", "--log-level", "info"}) {
      args.emplace_back(arg);
    }
    return std::make_unique<test_support::ChildProcess>(settings_.relay_binary, args, dir_);
  };
  // Two relays on one outbox: one active, one standby that takes over when
  // the active one's lease lapses (it was killed or paused). On a directory
  // of databases, each holds the leases of some databases and is the
  // standby of the others, taking them over database by database.
  relay_ = std::make_unique<Managed>("relay", dir_ / "logs" / "relay.log", relay_starter);
  relay_->start();
  standby_relay_ =
      std::make_unique<Managed>("relay-b", dir_ / "logs" / "relay-b.log", relay_starter);
  standby_relay_->start();
  if (jetstream()) {
    start_jetstream_consumers();
    return;
  }

  consumer_ = make_consumer("consumer", 1);
  // --inbox redis: a second consumer of the same group shares the records.
  if (redis_inbox()) consumer2_ = make_consumer("consumer-b", 2);
}

void Run::start_jetstream_consumers() {
#ifdef OUTBOX_BIN_JETSTREAM_CONSUMER
  auto starter = [this] {
    const auto pending = std::to_string(settings_.consumer_max_ack_pending);
    std::vector<std::string> args = {"--nats-url",
                                     nats_url_,
                                     "--stream",
                                     kStream,
                                     "run",
                                     "--durable",
                                     "faults",
                                     "--filter-subject",
                                     "outbox.>",
                                     "--db",
                                     consumer_db_.string(),
                                     "--ack-wait",
                                     "1",
                                     "--max-ack-pending",
                                     pending,
                                     "--batch",
                                     pending};
    // One incarnation in four: every crash costs the ack wait before the
    // message comes again, and the consumers apply a few hundred a second.
    const int draw = std::uniform_int_distribution<int>(0, 7)(random_);
    if (draw < 2) {
      args.push_back(draw == 0 ? "--crash-after" : "--crash-before");
      args.push_back(std::to_string(std::uniform_int_distribution<int>(1, 2000)(random_)));
    }
    return std::make_unique<test_support::ChildProcess>(settings_.jetstream_consumer_binary, args,
                                                        dir_);
  };
  for (auto* slot : {&consumer_, &consumer2_}) {
    auto name = slot == &consumer_ ? std::string("consumer") : std::string("consumer-b");
    *slot = std::make_unique<Managed>(name, dir_ / "logs" / (name + ".log"), starter);
    (*slot)->accept_self_kill();  // its crash points
    (*slot)->start();
  }
#endif
}

std::unique_ptr<Managed> Run::make_consumer(const std::string& name, int number) {
  auto consumer = std::make_unique<Managed>(name, dir_ / "logs" / (name + ".log"), [this, number] {
    std::vector<std::string> args = {"--broker", consumer_entry_, "--db", consumer_db_.string(),
                                     "--group",  "faults"};
    for (const auto& topic : kTopics) {
      args.push_back("--topic");
      args.push_back(topic);
    }
    if (redis_inbox()) {
      for (const auto& arg :
           {std::string("--inbox"), "redis://127.0.0.1:" + std::to_string(redis_port_),
            std::string("--lease-ms"), std::string("1000"), std::string("--self-kill-rate"),
            std::to_string(settings_.self_kill_rate), std::string("--seed"),
            std::to_string(settings_.seed + static_cast<std::uint64_t>(number))}) {
        args.push_back(arg);
      }
    }
    return std::make_unique<test_support::ChildProcess>(settings_.consumer_binary, args, dir_);
  });
  if (redis_inbox()) consumer->accept_self_kill();
  consumer->start();
  return consumer;
}

}  // namespace faults
