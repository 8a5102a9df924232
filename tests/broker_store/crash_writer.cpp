// Appends batches to a store until killed, printing "acked <batch>" after each
// append() returns (what the broker would acknowledge). Used by the crash test.
//   broker_store_crash_writer <db> <full|normal> <batch size>
// Batch b holds msg_ids "b<b>-<i>" on topics t0..t2; from the second batch on it
// also resends the first message of the previous batch (a duplicate).
#include <cstdio>
#include <string>
#include <vector>

#include <unistd.h>

#include "broker/store.hpp"

namespace {

std::string payload_for(const std::string& msg_id) {
  std::string payload = "payload of ";
  payload += msg_id;
  payload.append(200, '.');
  return payload;
}

// Built with += rather than operator+ chains, which trip a false -Wrestrict in GCC 12 at -O3.
std::string msg_id_for(long batch_number, long index) {
  std::string msg_id = "b";
  msg_id += std::to_string(batch_number);
  msg_id += '-';
  msg_id += std::to_string(index);
  return msg_id;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s DB full|normal BATCH_SIZE\n", argv[0]);
    return 1;
  }
  auto sync = broker::parse_sync_mode(argv[2]);
  int batch_size = std::stoi(argv[3]);
  if (!sync || batch_size < 1) {
    std::fprintf(stderr, "bad arguments\n");
    return 1;
  }
  try {
    broker::StoreOptions options;
    options.sync = *sync;
    broker::Store store(argv[1], options);
    std::vector<std::string> ids, payloads, topics;
    std::vector<broker::IncomingMessage> batch;
    for (long batch_number = 0;; ++batch_number) {
      ids.clear();
      payloads.clear();
      topics.clear();
      for (int i = 0; i < batch_size; ++i) ids.push_back(msg_id_for(batch_number, i));
      if (batch_number > 0) ids.push_back(msg_id_for(batch_number - 1, 0));
      for (const auto& id : ids) {
        payloads.push_back(payload_for(id));
        topics.push_back("t" + std::to_string(std::hash<std::string>{}(id) % 3));
      }
      batch.clear();
      for (std::size_t i = 0; i < ids.size(); ++i)
        batch.push_back({ids[i], topics[i], "key", "", payloads[i]});
      auto outcomes = store.append(batch);
      for (const auto& outcome : outcomes) {
        if (outcome.status != broker::AppendStatus::stored &&
            outcome.status != broker::AppendStatus::duplicate) {
          std::fprintf(stderr, "unexpected outcome %s\n",
                       std::string(broker::to_string(outcome.status)).c_str());
          return 3;
        }
      }
      // write(2), not stdio: the line must reach the file before a SIGKILL can land.
      std::string line = "acked " + std::to_string(batch_number) + "\n";
      if (::write(1, line.data(), line.size()) != static_cast<ssize_t>(line.size())) return 4;
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 2;
  }
}
