// How jetstream_consumer fetches from its pull subscription, in a header of
// its own so that tests/examples/test_jetstream_consumer.cpp can put it under
// the condition that breaks older libnats.
//
// libnats before 3.9.0 (Debian 12 ships 3.4.1) overflows a heap buffer in a
// fetch of more than one message. natsSubscription_Fetch allocates room for
// `batch` messages, takes what is already waiting in the subscription, then
// lowers its own batch count by that number and collects until the count of
// messages equals the lowered one. When more than half a batch was waiting
// (left over from an earlier pull request that outlived its fetch: a fetch that
// timed out while the server was paused, slow or still sending), that equality
// never comes: the fetch collects until it times out, and the messages beyond
// its batch that the earlier request still delivers are written past the end of
// the array. glibc aborts later, at some malloc or free ("malloc(): invalid
// size (unsorted)", "corrupted size vs. prev_size").
// Fixed upstream by nats.c pull request #749, released in 3.9.0. A fetch of one
// message cannot overflow (it stops at one, or never asks the server), so on
// those versions fetch_messages fetches one message at a time.
#pragma once

#include <cstdint>

#include <nats/nats.h>

namespace jetstream_consumer {

// nats_GetVersionNumber() of the first libnats whose fetch keeps to its batch.
constexpr std::uint32_t kFetchFixedVersion = 0x030900;  // 3.9.0

// The batch this program asks natsSubscription_Fetch for: `requested`, or 1 on
// a libnats (the one loaded, not the headers built against) with the overflow.
inline int safe_fetch_batch(int requested) {
  if (requested > 1 && nats_GetVersionNumber() < kFetchFixedVersion) return 1;
  return requested;
}

// Up to `batch` messages (safe_fetch_batch of it), waiting up to `timeout_ms`
// for them; as natsSubscription_Fetch: the caller owns `list` after NATS_OK and
// destroys it with natsMsgList_Destroy.
inline natsStatus fetch_messages(natsMsgList* list, natsSubscription* subscription, int batch,
                                 std::int64_t timeout_ms, jsErrCode* code) {
  return natsSubscription_Fetch(list, subscription, safe_fetch_batch(batch), timeout_ms, code);
}

}  // namespace jetstream_consumer
