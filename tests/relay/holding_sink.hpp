// A Sink that forwards to a real one but holds the relay's thread inside its
// first send() until the test releases it: the relay has read a batch and is
// paused (SIGSTOP, a frozen VM) before the batch goes out. Deterministic
// where a signal would have to hit that instant.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <spdlog/logger.h>
#include <spdlog/sinks/base_sink.h>
#include <catch2/catch.hpp>

#include "relay/relay.hpp"
#include "relay/sink.hpp"
#include "test_support.hpp"

namespace relay_test {

class HoldingSink final : public relay::Sink {
 public:
  explicit HoldingSink(relay::Sink& inner) : inner_(inner) {}

  void set_lease(relay::SinkLease lease) override { inner_.set_lease(std::move(lease)); }
  relay::SessionResult open_session(std::chrono::milliseconds timeout) override {
    return inner_.open_session(timeout);
  }
  bool send(std::uint64_t batch_id, std::span<const outbox::PendingMessage> messages) override {
    {
      std::unique_lock lock(mutex_);
      if (!held_) {
        held_ = holding_ = true;
        changed_.notify_all();
        changed_.wait(lock, [&] { return !holding_; });
      }
    }
    return inner_.send(batch_id, messages);
  }
  std::optional<relay::SinkEvent> poll(std::chrono::milliseconds timeout) override {
    return inner_.poll(timeout);
  }
  std::string describe() const override { return inner_.describe(); }

  // Waits until the relay's thread is held inside send().
  bool wait_holding(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return holding_; });
  }
  void release() {
    std::lock_guard lock(mutex_);
    holding_ = false;
    changed_.notify_all();
  }

 private:
  relay::Sink& inner_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool held_ = false;
  bool holding_ = false;
};

// Keeps what a logger wrote; readable while the logger writes.
class CapturedLog final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string text() {
    std::lock_guard lock(mutex_);
    return text_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& message) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(message, formatted);
    text_.append(formatted.data(), formatted.size());
  }
  void flush_() override {}

 private:
  std::string text_;
};

// Runs a Relay over a HoldingSink on its own thread and logs into a string. Stopping also releases
// the sink, so a test that fails while the relay is held still ends.
class RelayThread {
 public:
  RelayThread(outbox::RelayStore& store, HoldingSink& sink, relay::RelayConfig config)
      : sink_(sink),
        log_(std::make_shared<CapturedLog>()),
        relay_(store, sink, with_logger(std::move(config), log_)),
        thread_([this] {
          try {
            relay_.run();
          } catch (const std::exception& error) {
            failure_ = error.what();
          }
        }) {}
  ~RelayThread() {
    if (thread_.joinable()) stop();
  }

  relay::Relay& relay() { return relay_; }
  // What it logged so far.
  std::string log() { return log_->text(); }
  // Stops and joins the relay; returns its log (and any exception it threw).
  std::string stop() {
    relay_.request_stop();
    sink_.release();
    thread_.join();
    return log_->text() + failure_;
  }

 private:
  static relay::RelayConfig with_logger(relay::RelayConfig config,
                                        std::shared_ptr<spdlog::sinks::sink> sink) {
    config.logger = std::make_shared<spdlog::logger>("relay", std::move(sink));
    config.logger->set_level(spdlog::level::debug);
    return config;
  }

  HoldingSink& sink_;
  std::shared_ptr<CapturedLog> log_;
  relay::Relay relay_;
  std::string failure_;
  std::thread thread_;  // last: starts once everything above is ready
};

// A relay named `holder` with a one-second lease that reads everything
// pending in one batch and retries quickly.
inline relay::RelayConfig short_lease_config(const std::string& holder) {
  relay::RelayConfig config;
  config.holder = holder;
  config.lease_ttl = std::chrono::seconds(1);
  config.batch_size = 1000;
  config.backoff.initial = std::chrono::milliseconds(20);
  config.backoff.max = std::chrono::milliseconds(200);
  return config;
}

// Lets the held relay go on, waits until it gave its lease up, stops it and
// returns its log. Waits for the log line, not for `active` to read false: a
// relay that lost its lease may take it again at once (the other relay's
// one-second lease lapsing on a loaded machine), and a poll can miss the
// moment between.
inline std::string release_until_standby(HoldingSink& sink, RelayThread& held) {
  sink.release();
  bool lost_lease = test_support::wait_until(
      [&] { return held.log().find("lost the relay lease") != std::string::npos; },
      std::chrono::seconds(30));
  auto log = held.stop();
  INFO(log);
  CHECK(lost_lease);
  return log;
}

}  // namespace relay_test
