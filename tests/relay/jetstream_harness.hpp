// Shared by the JetStream relay tests: a real `nats-server -js` on loopback
// (a port the system picked, a temporary store directory), and a libnats
// client that creates streams and reads every message of a stream back.
#pragma once

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nats/nats.h>

#include <catch2/catch.hpp>

#include "find_program.hpp"
#include "test_support.hpp"

namespace jetstream_test {

using namespace std::chrono_literals;

// $OUTBOX_NATS_SERVER if set (empty when it is not an executable), else
// nats-server on PATH or in /usr/sbin (where Debian installs it, not on every PATH).
inline std::string nats_server_binary() {
  return test_support::find_program("nats-server", "OUTBOX_NATS_SERVER");
}

inline void check_nats(natsStatus status, const char* what) {
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  INFO(what << ": " << natsStatus_GetText(status) << " " << (detail != nullptr ? detail : ""));
  REQUIRE(status == NATS_OK);
}

// One message of a stream as the test reads it back.
struct StreamMessage {
  std::uint64_t sequence = 0;
  std::string subject;
  std::string msg_id;
  std::string payload;
  std::vector<std::pair<std::string, std::string>> headers;  // other than Nats-Msg-Id
};

// A test's own connection: creates streams, reads them back.
class NatsClient {
 public:
  explicit NatsClient(const std::string& url) {
    natsOptions* options = nullptr;
    check_nats(natsOptions_Create(&options), "natsOptions_Create");
    std::unique_ptr<natsOptions, void (*)(natsOptions*)> guard(options, natsOptions_Destroy);
    check_nats(natsOptions_SetURL(options, url.c_str()), "natsOptions_SetURL");
    check_nats(natsOptions_SetAllowReconnect(options, false), "natsOptions_SetAllowReconnect");
    check_nats(natsConnection_Connect(&connection_, options), "natsConnection_Connect");
    jsOptions js_options;
    jsOptions_Init(&js_options);
    js_options.Wait = 10000;
    check_nats(natsConnection_JetStream(&js_, connection_, &js_options),
               "natsConnection_JetStream");
  }
  ~NatsClient() {
    if (js_ != nullptr) jsCtx_Destroy(js_);
    if (connection_ != nullptr) natsConnection_Destroy(connection_);
  }
  NatsClient(const NatsClient&) = delete;
  NatsClient& operator=(const NatsClient&) = delete;

  void add_stream(const std::string& name, const std::vector<std::string>& subjects,
                  std::chrono::nanoseconds duplicate_window = 2min,
                  std::int32_t max_msg_size = -1) {
    jsStreamConfig config;
    jsStreamConfig_Init(&config);
    config.Name = name.c_str();
    std::vector<const char*> raw;
    for (const auto& subject : subjects) raw.push_back(subject.c_str());
    config.Subjects = raw.data();
    config.SubjectsLen = static_cast<int>(raw.size());
    config.Storage = js_FileStorage;
    config.Duplicates = duplicate_window.count();
    config.MaxMsgSize = max_msg_size;
    jsStreamInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    check_nats(js_AddStream(&info, js_, &config, nullptr, &code), "js_AddStream");
    jsStreamInfo_Destroy(info);
  }

  void delete_stream(const std::string& name) {
    jsErrCode code = static_cast<jsErrCode>(0);
    check_nats(js_DeleteStream(js_, name.c_str(), nullptr, &code), "js_DeleteStream");
  }

  std::uint64_t message_count(const std::string& stream) {
    jsStreamInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    check_nats(js_GetStreamInfo(&info, js_, stream.c_str(), nullptr, &code), "js_GetStreamInfo");
    auto count = info->State.Msgs;
    jsStreamInfo_Destroy(info);
    return count;
  }

  // The name of the cluster node that leads the stream (empty on a single server).
  std::string stream_leader(const std::string& stream) {
    jsStreamInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    check_nats(js_GetStreamInfo(&info, js_, stream.c_str(), nullptr, &code), "js_GetStreamInfo");
    std::string leader;
    if (info->Cluster != nullptr && info->Cluster->Leader != nullptr)
      leader = info->Cluster->Leader;
    jsStreamInfo_Destroy(info);
    return leader;
  }

  // Messages a durable consumer has not handed out yet plus those handed out
  // and not acknowledged: 0 once its reader has acknowledged everything.
  std::uint64_t consumer_backlog(const std::string& stream, const std::string& durable) {
    jsConsumerInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    check_nats(js_GetConsumerInfo(&info, js_, stream.c_str(), durable.c_str(), nullptr, &code),
               "js_GetConsumerInfo");
    auto backlog = info->NumPending + static_cast<std::uint64_t>(info->NumAckPending);
    jsConsumerInfo_Destroy(info);
    return backlog;
  }

  // Publishes one message with a Nats-Msg-Id; true if JetStream answered it
  // as a duplicate (the id is still inside the stream's duplicate window).
  bool publish(const std::string& subject, const std::string& payload, const std::string& msg_id) {
    jsPubOptions options;
    jsPubOptions_Init(&options);
    options.MsgId = msg_id.c_str();
    jsPubAck* ack = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    check_nats(js_Publish(&ack, js_, subject.c_str(), payload.data(),
                          static_cast<int>(payload.size()), &options, &code),
               "js_Publish");
    bool duplicate = ack->Duplicate;
    jsPubAck_Destroy(ack);
    return duplicate;
  }

  // Every message of the stream, in stream order.
  std::vector<StreamMessage> read_all(const std::string& stream) {
    jsStreamInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    check_nats(js_GetStreamInfo(&info, js_, stream.c_str(), nullptr, &code), "js_GetStreamInfo");
    auto first = info->State.FirstSeq, last = info->State.LastSeq;
    jsStreamInfo_Destroy(info);
    std::vector<StreamMessage> all;
    for (auto sequence = std::max<std::uint64_t>(first, 1); sequence <= last && last > 0;
         ++sequence) {
      natsMsg* msg = nullptr;
      check_nats(js_GetMsg(&msg, js_, stream.c_str(), sequence, nullptr, &code), "js_GetMsg");
      StreamMessage message;
      message.sequence = sequence;
      message.subject = natsMsg_GetSubject(msg);
      message.payload.assign(natsMsg_GetData(msg),
                             static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
      const char* id = nullptr;
      if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id != nullptr)
        message.msg_id = id;
      const char** keys = nullptr;
      int count = 0;
      if (natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK) {
        for (int i = 0; i < count; ++i) {
          if (std::string(keys[i]) == "Nats-Msg-Id") continue;
          const char* value = nullptr;
          if (natsMsgHeader_Get(msg, keys[i], &value) == NATS_OK) {
            message.headers.emplace_back(keys[i], value != nullptr ? value : "");
          }
        }
        std::free(static_cast<void*>(keys));
      }
      natsMsg_Destroy(msg);
      all.push_back(std::move(message));
    }
    return all;
  }

 private:
  natsConnection* connection_ = nullptr;
  jsCtx* js_ = nullptr;
};

// Whether a NATS server at `url` accepts a connection and its JetStream
// answers (after recovering its store; in a cluster, once a meta leader is elected).
inline bool jetstream_answers(const std::string& url) {
  natsConnection* connection = nullptr;
  if (natsConnection_ConnectTo(&connection, url.c_str()) != NATS_OK) return false;
  jsCtx* js = nullptr;
  bool ready = false;
  if (natsConnection_JetStream(&js, connection, nullptr) == NATS_OK) {
    jsAccountInfo* account = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    ready = js_GetAccountInfo(&account, js, nullptr, &code) == NATS_OK;
    if (account != nullptr) jsAccountInfo_Destroy(account);
    jsCtx_Destroy(js);
  }
  natsConnection_Destroy(connection);
  return ready;
}

// nats-server -js on 127.0.0.1, storing under `store_dir`. A restart passes
// the port of the previous process, so that clients find it again.
class NatsServer {
 public:
  NatsServer(const std::filesystem::path& dir, const std::filesystem::path& store_dir, int port = 0)
      : binary_(nats_server_binary()) {
    REQUIRE(!binary_.empty());
    // A port picked by the system; should another program take it before
    // nats-server binds, start again on a new one (not on a restart).
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = port != 0 ? port : test_support::free_loopback_port();
      process_ = std::make_unique<test_support::ChildProcess>(
          binary_,
          std::vector<std::string>{"-js", "-a", "127.0.0.1", "-p", std::to_string(port_), "-sd",
                                   store_dir.string()},
          dir);
      if (wait_ready()) return;
      process_.reset();
      if (port != 0 && attempt >= 1) break;
    }
    FAIL("nats-server did not start on 127.0.0.1");
  }

  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  test_support::ChildProcess& process() { return *process_; }
  std::string log() const { return process_ ? process_->stderr_text() : std::string(); }

  void kill9() {
    process_->signal(SIGKILL);
    REQUIRE(process_->wait_for(10s).has_value());
  }

 private:
  bool wait_ready() {
    return test_support::wait_until(
               [&] { return !process_->running() || jetstream_answers(url()); }, 30s, 10ms) &&
           process_->running();
  }

  std::string binary_;
  int port_ = 0;
  std::unique_ptr<test_support::ChildProcess> process_;
};

// Three nats-server -js nodes on 127.0.0.1, clustered by routes (cluster
// "outbox", nodes "nats-1" to "nats-3"), each with its own store under `dir`,
// client and route ports picked by the system. Ready once every node answers
// JetStream (a meta leader is elected).
class NatsCluster {
 public:
  static constexpr int kNodes = 3;

  explicit NatsCluster(const std::filesystem::path& dir) : binary_(nats_server_binary()) {
    REQUIRE(!binary_.empty());
    // Should another program take a picked port first, start again on new ones.
    for (int attempt = 0; attempt < 3; ++attempt) {
      if (start(dir)) return;
      for (auto& node : nodes_) node.process.reset();
    }
    FAIL("a three-node nats-server cluster did not start on 127.0.0.1");
  }

  std::string name(int node) const { return "nats-" + std::to_string(node + 1); }
  std::string url(int node) const {
    return "nats://127.0.0.1:" + std::to_string(nodes_[node].client_port);
  }
  // Every node's URL, comma-separated, as --nats-url takes a cluster.
  std::string urls() const {
    std::string all;
    for (int node = 0; node < kNodes; ++node) all += (node == 0 ? "" : ",") + url(node);
    return all;
  }
  int node_named(const std::string& node_name) const {
    for (int node = 0; node < kNodes; ++node) {
      if (name(node) == node_name) return node;
    }
    FAIL("no cluster node is named '" << node_name << "'");
    return -1;
  }
  test_support::ChildProcess& process(int node) { return *nodes_[node].process; }

  void kill9(int node) {
    nodes_[node].process->signal(SIGKILL);
    REQUIRE(nodes_[node].process->wait_for(10s).has_value());
  }

 private:
  struct Node {
    int client_port = 0;
    int route_port = 0;
    std::unique_ptr<test_support::ChildProcess> process;
  };

  bool start(const std::filesystem::path& dir) {
    for (auto& node : nodes_) {
      node.client_port = test_support::free_loopback_port();
      node.route_port = test_support::free_loopback_port();
    }
    for (int node = 0; node < kNodes; ++node) {
      std::string routes;
      for (int other = 0; other < kNodes; ++other) {
        if (other == node) continue;
        routes += (routes.empty() ? "" : ",") + std::string("nats://127.0.0.1:") +
                  std::to_string(nodes_[other].route_port);
      }
      nodes_[node].process = std::make_unique<test_support::ChildProcess>(
          binary_,
          std::vector<std::string>{
              "-js", "-a", "127.0.0.1", "-p", std::to_string(nodes_[node].client_port), "-sd",
              (dir / (name(node) + "-store")).string(), "-n", name(node), "--cluster_name",
              "outbox", "--cluster", "nats://127.0.0.1:" + std::to_string(nodes_[node].route_port),
              "--routes", routes},
          dir);
    }
    for (int node = 0; node < kNodes; ++node) {
      auto& process = *nodes_[node].process;
      if (!test_support::wait_until(
              [&] { return !process.running() || jetstream_answers(url(node)); }, 30s, 20ms) ||
          !process.running()) {
        return false;
      }
    }
    return true;
  }

  std::string binary_;
  Node nodes_[kNodes];
};

}  // namespace jetstream_test
