// outbox-broker stats and keygen, and what every client command shares: its
// flags, the connection (with CURVE keys) and how a failed request is reported.
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include <zmq.h>

#include "broker/client.hpp"
#include "broker/curve_keys.hpp"
#include "cli/args.hpp"
#include "cli/files.hpp"
#include "cli/process.hpp"
#include "client_commands.hpp"
#include "format.hpp"

namespace broker::cli_commands {
namespace {

std::string curve_public_of(const std::string& secret) {
  char public_key[41] = {};
  if (zmq_curve_public(public_key, secret.c_str()) != 0) {
    throw UsageError("cannot derive a CURVE public key from the secret key");
  }
  return std::string(public_key, 40);
}

}  // namespace

void add_client_options(CLI::App* command, ClientSettings& client_settings) {
  command->add_option("--connect", client_settings.connect, "broker endpoint")
      ->check(cli::connect_endpoint_check())
      ->capture_default_str();
  command
      ->add_option("--curve-server-public-key-file", client_settings.curve_server_public_key_file,
                   "with a CURVE broker: file with the broker's Z85 public key")
      ->check(CLI::ExistingFile);
  command
      ->add_option("--curve-secret-key-file", client_settings.curve_secret_key_file,
                   "with a CURVE broker: file with this client's Z85 secret key")
      ->check(CLI::ExistingFile);
  command->add_flag("--json", client_settings.json, "print JSON (one object per line)");
  command->add_option("--timeout-ms", client_settings.timeout_ms, "how long to wait for answers")
      ->check(cli::count_check(1, 3'600'000))
      ->capture_default_str();
}

void add_keygen_options(CLI::App* keygen_command, KeygenSettings& keygen_settings) {
  keygen_command->add_option("--secret-file", keygen_settings.secret_file, "secret key file")
      ->required();
  keygen_command->add_option("--public-file", keygen_settings.public_file, "public key file")
      ->required();
  keygen_command->add_flag("--force", keygen_settings.force,
                           "replace existing key files (a new file is written and renamed over "
                           "the old one)");
}

std::unique_ptr<broker::Client> make_client(const ClientSettings& settings) {
  broker::ClientOptions options;
  if (!settings.curve_server_public_key_file.empty() || !settings.curve_secret_key_file.empty()) {
    if (settings.curve_server_public_key_file.empty() || settings.curve_secret_key_file.empty()) {
      throw UsageError(
          "CURVE needs both --curve-server-public-key-file and --curve-secret-key-file");
    }
    try {
      broker::CurveClientConfig curve;
      curve.server_public_key = broker::read_curve_key_file(settings.curve_server_public_key_file);
      curve.secret_key = broker::read_curve_key_file(settings.curve_secret_key_file);
      curve.public_key = curve_public_of(curve.secret_key);
      options.curve = std::move(curve);
    } catch (const std::runtime_error& error) {
      throw UsageError(error.what());
    }
  }
  try {
    return std::make_unique<broker::Client>(settings.connect, options);
  } catch (const zmq::error_t& error) {
    throw UsageError("cannot connect to '" + settings.connect + "': " + error.what());
  }
}

int report(const wire::Error& error, const std::string& endpoint) {
  std::cerr << "outbox-broker: " << endpoint << ": " << error.message << "\n";
  return error.code == wire::ErrorCode::timeout || error.code == wire::ErrorCode::disconnected
             ? cli::exit_unreachable
             : cli::exit_refused;
}

// Writes a new CURVE key pair as Z85 text; the secret file is created with mode
// 0600 (never through a symlink, never over an existing file without --force).
int keygen(const KeygenSettings& settings) {
  char public_key[41] = {};
  char secret_key[41] = {};
  if (zmq_curve_keypair(public_key, secret_key) != 0) {
    std::cerr << "outbox-broker: this libzmq cannot generate CURVE keys\n";
    return cli::exit_failure;
  }
  if (!settings.force) {
    // Checked for both before either is written; O_EXCL below closes the race.
    for (const auto& file : {settings.secret_file, settings.public_file}) {
      std::error_code error;
      if (std::filesystem::symlink_status(file, error).type() !=
          std::filesystem::file_type::not_found) {
        throw UsageError(file + " exists; keygen does not overwrite keys (--force replaces it)");
      }
    }
  }
  auto overwrite = settings.force ? cli::Overwrite::replace : cli::Overwrite::refuse;
  try {
    cli::write_new_file(settings.secret_file,
                        std::string("# CURVE secret key (keep private)\n") + secret_key + "\n",
                        0600, overwrite);
    cli::write_new_file(settings.public_file,
                        std::string("# CURVE public key\n") + public_key + "\n", 0644, overwrite);
  } catch (const std::filesystem::filesystem_error& error) {
    throw UsageError("cannot write " + error.path1().string() + ": " + error.code().message());
  }
  std::cout << public_key << "\n";
  return cli::exit_ok;
}

int stats(const ClientSettings& settings) {
  auto client = make_client(settings);
  auto reply = client->stats(std::chrono::milliseconds(settings.timeout_ms));
  if (!reply) return report(reply.error(), settings.connect);
  std::cout << (settings.json ? broker::stats_to_json(*reply) + "\n"
                              : broker::stats_to_text(*reply));
  return cli::exit_ok;
}

}  // namespace broker::cli_commands
