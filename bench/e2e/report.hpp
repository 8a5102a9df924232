// Turning results into the text table, the JSON object and the results file.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "cuts.hpp"
#include "jetstream.hpp"
#include "outbox_e2e.hpp"
#include "overhead.hpp"
#include "tenants.hpp"

namespace bench {

struct Machine {
  unsigned cores = 0;
  std::string cpu_model;
  std::string kernel;
  double memory_gib = 0;
  std::string load_average;  // /proc/loadavg's first three fields: other work on the machine
};
Machine describe_machine();
// /proc/loadavg's first three fields ("" if unreadable).
std::string load_average();

// What a run was asked to do, echoed in the output.
struct RunInfo {
  std::string subcommand;
  std::string command_line;
  std::string started_at;     // UTC, ISO 8601
  std::string source_commit;  // git describe of the source tree, "+dirty" when modified
  std::size_t messages = 0;
  std::size_t payload_bytes = 0;
  std::string sync;
  double rate = 0;
  double latency_seconds = 0;
  int rounds = 1;
  std::string cut_every;  // outbox-bench cuts
  Machine machine;
  std::string load_average_at_end;  // when the last round finished
};

// The figures of one subcommand run; the compare figures are medians over rounds
// and the latency percentiles are over the samples of all rounds.
struct Summary {
  std::vector<OutboxResult> outbox;
  std::vector<JetStreamResult> jetstream;
  std::vector<CutsResult> cuts;          // outbox-bench cuts
  std::vector<OverheadResult> overhead;  // outbox-bench metrics
  // outbox-bench tenants: drain rounds, and the parts run once
  std::vector<TenantsDrainResult> tenants_drain;
  std::optional<TenantsLatencyResult> tenants_latency;
  std::optional<TenantsIdleResult> tenants_idle;
  std::vector<std::string> problems;  // from every round
  bool ok() const { return problems.empty(); }
};

std::string text_report(const RunInfo& info, const Summary& summary);
std::string json_report(const RunInfo& info, const Summary& summary);

// Writes `json` to <dir>/<timestamp>-<subcommand>.json; returns the path.
std::filesystem::path write_results_file(const std::filesystem::path& dir, const RunInfo& info,
                                         const std::string& json);

std::string utc_now_iso();

// `git describe --always --dirty` of the source tree the benchmark was built
// from (empty when git or the tree is not there).
std::string source_commit();

}  // namespace bench
