// outbox-broker stats and tail: a client of a running broker.
#include <zmq.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>

#include "broker/client.hpp"
#include "broker/curve_keys.hpp"
#include "cli/process.hpp"
#include "commands.hpp"
#include "format.hpp"

namespace broker::commands {
namespace {

std::string curve_public_of(const std::string& secret) {
  char public_key[41] = {};
  if (zmq_curve_public(public_key, secret.c_str()) != 0) {
    throw cli::UsageError("cannot derive a CURVE public key from the secret key");
  }
  return std::string(public_key, 40);
}

std::unique_ptr<broker::Client> make_client(const ClientSettings& settings) {
  broker::ClientOptions options;
  if (!settings.curve_server_public_key_file.empty() || !settings.curve_secret_key_file.empty()) {
    if (settings.curve_server_public_key_file.empty() || settings.curve_secret_key_file.empty()) {
      throw cli::UsageError(
          "CURVE needs both --curve-server-public-key-file and --curve-secret-key-file");
    }
    // A key file that cannot be read or holds no key: outbox::Error of kind
    // io, exit 4 (cli::exit_code_for), as for outbox-relay.
    broker::CurveClientConfig curve;
    curve.server_public_key = broker::read_curve_key_file(settings.curve_server_public_key_file);
    curve.secret_key = broker::read_curve_key_file(settings.curve_secret_key_file);
    curve.public_key = curve_public_of(curve.secret_key);
    options.curve = std::move(curve);
  }
  try {
    return std::make_unique<broker::Client>(settings.connect, options);
  } catch (const zmq::error_t& error) {
    throw cli::UsageError("cannot connect to '" + settings.connect + "': " + error.what());
  }
}

int report(const wire::Error& error, const std::string& endpoint) {
  std::cerr << "outbox-broker: " << endpoint << ": " << error.message << "\n";
  return error.code == wire::ErrorCode::timeout || error.code == wire::ErrorCode::disconnected
             ? cli::exit_unreachable
             : cli::exit_refused;
}

}  // namespace

int stats(const ClientSettings& settings) {
  auto client = make_client(settings);
  auto reply = client->stats(std::chrono::milliseconds(settings.timeout_ms));
  if (!reply) return report(reply.error(), settings.connect);
  std::cout << (settings.json ? broker::stats_to_json(*reply) + "\n"
                              : broker::stats_to_text(*reply));
  return cli::exit_ok;
}

int tail(const ClientSettings& settings) {
  auto client = make_client(settings);
  auto timeout = std::chrono::milliseconds(settings.timeout_ms);
  wire::Fetch fetch;
  fetch.topic = settings.topic;
  fetch.group = settings.group;
  fetch.from_offset = settings.from;
  fetch.use_group_offset = settings.from == 0 && !settings.group.empty();
  std::uint64_t printed = 0;
  while (!cli::stop_requested()) {
    fetch.max_messages = 1000;
    if (settings.max > 0) {
      fetch.max_messages =
          static_cast<std::uint32_t>(std::min<std::uint64_t>(1000, settings.max - printed));
    }
    fetch.wait_ms = settings.follow ? 1000 : 0;
    auto reply = client->fetch(fetch, timeout);
    if (!reply) return report(reply.error(), settings.connect);
    for (const auto& message : reply->messages) {
      std::cout << (settings.json ? broker::message_to_json(settings.topic, message)
                                  : broker::message_to_text(message))
                << "\n";
    }
    std::cout.flush();
    printed += reply->messages.size();
    fetch.use_group_offset = false;
    fetch.from_offset = reply->next_offset;
    if (!settings.group.empty() && !reply->messages.empty()) {
      auto committed = client->commit_offset(settings.topic, settings.group,
                                             reply->messages.back().offset, timeout);
      if (!committed) return report(committed.error(), settings.connect);
    }
    if (settings.max > 0 && printed >= settings.max) break;
    if (!settings.follow && (reply->messages.empty() || reply->next_offset > reply->last_offset)) {
      break;
    }
  }
  return cli::exit_ok;
}

}  // namespace broker::commands
