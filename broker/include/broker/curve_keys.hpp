// CURVE key files, as the broker and its clients read them: Z85 text (40
// characters), as zmq_curve_keypair() prints them, one key a line.
//
// Errors: outbox::Error of kind io with a one-line message naming the file (or
// `what`) and what was wrong. Thread safety: free functions without state.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace broker {

// Reads a key file: the first line that is 40 Z85 characters (blank lines and
// lines starting with '#' are skipped). Throws outbox::Error of kind io naming the file.
std::string read_curve_key_file(const std::filesystem::path& path);
// One Z85 public key per line ('#' comments and blank lines skipped).
std::vector<std::string> read_allowed_clients_file(const std::filesystem::path& path);

// The 32 bytes of a Z85 key; throws outbox::Error of kind io "<what> is not a valid
// Z85 CURVE key" for anything else.
std::string curve_key_to_binary(std::string_view z85, std::string_view what);
// The Z85 text of 32 key bytes; empty for any other size.
std::string curve_key_to_z85(std::string_view binary);

}  // namespace broker
