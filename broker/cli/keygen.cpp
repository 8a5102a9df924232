// outbox-broker keygen: a new CURVE key pair in two files.
#include <zmq.h>

#include <filesystem>
#include <iostream>
#include <string>
#include <system_error>

#include "cli/files.hpp"
#include "cli/process.hpp"
#include "commands.hpp"

namespace broker::commands {

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
        throw cli::UsageError(file +
                              " exists; keygen does not overwrite keys (--force replaces it)");
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
    throw cli::UsageError("cannot write " + error.path1().string() + ": " + error.code().message());
  }
  std::cout << public_key << "\n";
  return cli::exit_ok;
}

}  // namespace broker::commands
