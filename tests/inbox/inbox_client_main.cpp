// outbox_test_inbox_client: a consumer process for the inbox contract tests.
//
//   outbox_test_inbox_client STORE race PREFIX COUNT START_FILE
//     waits for START_FILE, then for i in 0..COUNT-1 calls begin(PREFIX-i)
//     and completes what it claimed; prints "<i> <outcome>" per msg_id.
//   outbox_test_inbox_client STORE hold MSG_ID LEASE_MS
//     claims MSG_ID, prints "claimed <token>" and waits to be killed.
//
// STORE is sqlite:<path> or a Redis endpoint.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "inbox_backends.hpp"

namespace {

const char* outcome(outbox::BeginResult result) {
  switch (result) {
    case outbox::BeginResult::claimed:
      return "claimed";
    case outbox::BeginResult::in_progress_elsewhere:
      return "in_progress_elsewhere";
    case outbox::BeginResult::already_done:
      return "already_done";
  }
  return "?";
}

template <class Inbox>
int race(Inbox& inbox, const std::string& prefix, long count, const std::string& start_file) {
  std::printf("ready\n");
  std::fflush(stdout);
  if (!test_support::wait_until([&] { return std::filesystem::exists(start_file); },
                                std::chrono::seconds(60), std::chrono::milliseconds(1))) {
    std::fprintf(stderr, "no start file %s\n", start_file.c_str());
    return 1;
  }
  for (long i = 0; i < count; ++i) {
    const std::string msg_id = prefix + "-" + std::to_string(i);
    auto claim = inbox.begin(msg_id, std::chrono::minutes(1));
    if (claim.claimed() && inbox.complete(msg_id, claim.token) != outbox::ClaimResult::ok) {
      std::printf("%ld lost\n", i);
      continue;
    }
    std::printf("%ld %s\n", i, outcome(claim.result));
  }
  std::fflush(stdout);
  return 0;
}

template <class Inbox>
int hold(Inbox& inbox, const std::string& msg_id, long lease_ms) {
  auto claim = inbox.begin(msg_id, std::chrono::milliseconds(lease_ms));
  std::printf("%s %s\n", outcome(claim.result), claim.token.c_str());
  std::fflush(stdout);
  if (!claim.claimed()) return 1;
  while (true) ::pause();  // "processing" until killed
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 2 ? argv[2] : "";
    if (mode == "race" && argc == 6) {
      return inbox_test::with_inbox(argv[1], [&](auto& inbox) {
        return race(inbox, argv[3], std::strtol(argv[4], nullptr, 10), argv[5]);
      });
    }
    if (mode == "hold" && argc == 5) {
      return inbox_test::with_inbox(argv[1], [&](auto& inbox) {
        return hold(inbox, argv[3], std::strtol(argv[4], nullptr, 10));
      });
    }
    std::fprintf(stderr,
                 "usage: outbox_test_inbox_client STORE race PREFIX COUNT START_FILE\n"
                 "       outbox_test_inbox_client STORE hold MSG_ID LEASE_MS\n");
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "outbox_test_inbox_client: %s\n", error.what());
    return 1;
  }
}
