// Relay-side throughput of the outbox library: how fast pending messages can
// be read and their outcomes recorded, in batches, with no broker involved.
// The relay's end-to-end figure is bounded by these. Before the drain, with
// every message pending, it also times what a metrics scrape reads
// (RelayStore::backlog(), through a read-only connection of its own as
// outbox-relay's BacklogProbe does) next to `outbox-relay status`'s exact
// count (stats()).
//
//   bench_outbox_relay_side [--dir DIR] [--messages N] [--batch N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include <CLI/CLI.hpp>

#include "cli/args.hpp"
#include "outbox/outbox.hpp"
#include "outbox/relay_store.hpp"

namespace {

template <class Function>
double median_seconds(int runs, Function&& function) {
  std::vector<double> seconds;
  for (int run = 0; run < runs; ++run) {
    auto start = std::chrono::steady_clock::now();
    function();
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir = std::filesystem::temp_directory_path();
  long messages = 200'000;
  std::size_t batch = 1000;
  CLI::App app{"bench_outbox_relay_side: the relay's reads, outcome writes and retention",
               "bench_outbox_relay_side"};
  app.add_option("--dir", dir, "Where the database goes (a subdirectory, removed after)")
      ->capture_default_str();
  app.add_option("--messages", messages, "Rows in the outbox")
      ->capture_default_str()
      ->check(cli::count_check(1));
  app.add_option("--batch", batch, "Rows per read and per outcome write")
      ->capture_default_str()
      ->check(cli::count_check(1));
  if (auto code = cli::parse_command_line(app, "bench_outbox_relay_side",
                                          std::vector<std::string>(argv + 1, argv + argc))) {
    return *code;
  }
  using SteadyClock = std::chrono::steady_clock;
  auto work = dir / ("outbox-relay-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(work);
  int status = 0;
  try {
    auto box = outbox::Outbox::open(work / "app.db");
    const std::string payload(256, 'p');
    for (long done = 0; done < messages;) {
      outbox::Transaction tx(box);
      for (int m = 0; m < 1000 && done < messages; ++m, ++done) {
        outbox::Message message;
        message.topic = "orders";
        message.key = "k" + std::to_string(done % 64);
        message.payload = payload;
        tx.enqueue(message);
      }
      tx.commit();
    }
    {
      outbox::RelayOptions read_only;
      read_only.read_only = true;
      auto probe = outbox::RelayStore::open(work / "app.db", read_only);
      std::printf("backlog() with %ld pending:  %9.1f us (median of 21)\n", messages,
                  median_seconds(21, [&] { (void)probe.backlog(); }) * 1e6);
      std::printf("stats() with %ld pending:    %9.1f us (median of 5)\n", messages,
                  median_seconds(5, [&] { (void)probe.stats(); }) * 1e6);
    }
    auto store = outbox::RelayStore::open(work / "app.db");
    auto lease = store.claim_lease("bench", std::chrono::seconds(60));
    if (!lease) throw outbox::Error("lease not available");
    double read_seconds = 0, record_seconds = 0;
    std::int64_t after = 0, offset = 0;
    long total = 0;
    std::vector<outbox::Outcome> outcomes;
    for (;;) {
      auto start = SteadyClock::now();
      auto pending = store.read_pending(batch, after);
      read_seconds += std::chrono::duration<double>(SteadyClock::now() - start).count();
      if (pending.empty()) break;
      outcomes.clear();
      for (const auto& message : pending) {
        outcomes.push_back(outbox::Outcome::delivered(message.seq, ++offset));
      }
      start = SteadyClock::now();
      store.record_outcomes(outcomes, *lease);
      record_seconds += std::chrono::duration<double>(SteadyClock::now() - start).count();
      after = pending.back().seq;
      total += static_cast<long>(pending.size());
    }
    auto start = SteadyClock::now();
    auto deleted = store.delete_delivered(std::chrono::milliseconds(0), 500);
    double delete_seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
    std::printf("read_pending, %zu per batch:     %9.0f msg/s\n", batch, total / read_seconds);
    std::printf("record_outcomes, %zu per batch:  %9.0f msg/s\n", batch, total / record_seconds);
    std::printf("delete_delivered, 500 per txn:   %9.0f msg/s (%zu rows)\n",
                static_cast<double>(deleted) / delete_seconds, deleted);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "bench: %s\n", error.what());
    status = 1;
  }
  std::filesystem::remove_all(work);
  return status;
}
