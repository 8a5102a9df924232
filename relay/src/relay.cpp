#include "relay/relay.hpp"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include <sqlite3.h>

#include <spdlog/logger.h>

#include "deadline.hpp"
#include "metrics/log_fields.hpp"
#include "outbox/null_logger.hpp"
#include "relay/metrics.hpp"
#include "wire/protocol.hpp"

namespace relay {
namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::duration_cast;
using std::chrono::milliseconds;

using detail::until;

// Eight hex digits from the system's entropy source: what tells apart two
// relays that present the same name (two containers, each with pid 1 on a
// shared host name, or one config file copied to several machines).
std::string random_instance_id() {
  std::random_device device;
  char text[9];
  std::snprintf(text, sizeof text, "%08x", static_cast<unsigned>(device()));
  return text;
}

std::string describe_key(const outbox::PendingMessage& message) {
  return message.partition_key ? "key '" + printable_field(*message.partition_key) + "'" : "no key";
}

// A limit of 0 means "none known".
std::size_t lower_of(std::size_t configured, std::size_t announced) {
  return announced == 0 ? configured : std::min(configured, announced);
}

// Failures that clear by themselves (a writer holding the lock past the busy
// timeout, a full disk, an I/O error): the relay waits them out.
bool transient_database_error(int extended_code) {
  switch (extended_code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_PROTOCOL:
      return true;
    default:
      return false;
  }
}

std::string sqlite_code_name(int extended_code) {
  const char* name = "SQLITE_ERROR";
  switch (extended_code & 0xff) {
    case SQLITE_BUSY:
      name = "SQLITE_BUSY";
      break;
    case SQLITE_LOCKED:
      name = "SQLITE_LOCKED";
      break;
    case SQLITE_FULL:
      name = "SQLITE_FULL";
      break;
    case SQLITE_IOERR:
      name = "SQLITE_IOERR";
      break;
    case SQLITE_PROTOCOL:
      name = "SQLITE_PROTOCOL";
      break;
    default:
      break;
  }
  return std::string(name) + " (extended code " + std::to_string(extended_code) + ")";
}

}  // namespace

const char* to_string(DeliveryStatus status) noexcept {
  switch (status) {
    case DeliveryStatus::stored:
      return "stored";
    case DeliveryStatus::duplicate:
      return "duplicate";
    case DeliveryStatus::conflict:
      return "conflict";
    case DeliveryStatus::rejected:
      return "rejected";
    case DeliveryStatus::blocked:
      return "blocked";
  }
  return "unknown";
}

struct Relay::Impl {
  struct InFlight {
    std::uint64_t batch_id = 0;
    std::vector<outbox::PendingMessage> messages;
    SteadyClock::time_point sent_at;
    std::size_t bytes = 0;  // of its messages, as message_bytes() counts them
  };

  Impl(outbox::RelayStore& store_in, Sink& sink_in, RelayConfig config_in)
      : store(store_in),
        sink(sink_in),
        config(std::move(config_in)),
        log(outbox::logger_or_null(config.logger, "relay")),
        lease_holder(config.holder + ":" +
                     (config.instance_id.empty() ? random_instance_id() : config.instance_id)),
        metrics_registry(config.metrics ? nullptr : std::make_unique<metrics::Registry>()),
        metrics(config.metrics ? config.metrics
                               : std::make_shared<RelayMetrics>(*metrics_registry)),
        random(std::random_device{}()) {
    config.batch_size = std::max<std::size_t>(config.batch_size, 1);
    config.max_in_flight_batches = std::max<std::size_t>(config.max_in_flight_batches, 1);
  }

  outbox::RelayStore& store;
  Sink& sink;
  RelayConfig config;
  std::shared_ptr<spdlog::logger> log;
  const std::string lease_holder;  // unique to this instance

  // Updated unconditionally: without RelayConfig::metrics, into a registry
  // nobody reads (a few relaxed atomic adds per batch).
  std::unique_ptr<metrics::Registry> metrics_registry;
  std::shared_ptr<RelayMetrics> metrics;

  std::atomic<bool> stop{false};
  struct AtomicCounters {
    std::atomic<std::uint64_t> sent_messages{0}, stored{0}, duplicates{0}, dead{0}, blocked{0},
        sessions{0}, failures{0}, deleted{0}, undeliverable{0}, database_errors{0};
    std::atomic<bool> active{false};
    std::atomic<bool> session_up{false};
  } counters;

  std::optional<outbox::Lease> lease;
  // Handed over by adopt_lease(), taken by the first ensure_lease().
  std::optional<outbox::Lease> adopted;
  SteadyClock::time_point adopted_claimed_at{};
  // When our lease surely still holds: the clock read before the claim or
  // renewal that set the database's expiry, plus the lease time. A relay
  // paused past it (SIGSTOP, a long GC-like stall, a frozen VM) finds it
  // passed when it wakes up.
  SteadyClock::time_point lease_valid_until{};
  std::string origin;  // this database's origin id, sent to the destination with the epoch
  bool standby_logged = false;
  bool session_open = false;
  // After a session failed with batches unacknowledged, `in_flight` keeps
  // them (in_doubt) until the next session has asked the destination which of
  // them it stored (Sink::resume; resuming until the answer is complete):
  // only the rest is resent (session_window says what that saves).
  bool in_doubt = false;
  bool resuming = false;
  bool session_prepared = false;  // step(): the sink is opening the next session
  // step(): until when the answer to prepare_session() is awaited without
  // calling open_session() (which would wait for it).
  SteadyClock::time_point session_answer_by{};
  std::deque<InFlight> in_flight;
  std::vector<outbox::Outcome> settled;     // handled, not yet recorded
  SteadyClock::time_point settled_since{};  // when `settled` got its first outcome
  // Messages read from the outbox and not sent yet, in seq order: the rows
  // read_pending() returned after read_ahead_after, up to a full batch. The
  // window goes out in batches of a fraction of it (see session_window), and
  // one read per batch was a quarter of the relay's time under repeated cuts;
  // sending a read in several parts is the same as sending it whole. Emptied
  // whenever it may no longer be what a read would return (a dead outcome,
  // a dropped session, a read from the cursor).
  std::deque<outbox::PendingMessage> read_ahead;
  std::int64_t read_ahead_after = 0;
  std::int64_t last_sent_seq = 0;
  std::int64_t unread_swept = 0;  // make_unread_dead(): where the sweep goes on
  // The delivery generation the batches in flight were read under. When an
  // operator replays or drops a message, everything goes on hold until those
  // batches are settled; then reading starts over from the cursor.
  std::int64_t generation = 0;
  bool holding_for_generation = false;
  std::uint64_t next_batch_id = 1;
  // Messages the session may have unacknowledged (slow start, as TCP does):
  // a new session starts with kInitialWindow and every acknowledged message
  // widens it by one, so it doubles each round trip and reaches full batches
  // within a few milliseconds. A connection that breaks early then costs a
  // small resend, and one that breaks every few hundred kilobytes still
  // delivers most of what it carried instead of a fraction of a big batch.
  // Measured behind a proxy cutting every 2 KB-400 KB: starting at 256 or
  // 512 made 15-40 % of the connections break before their first
  // acknowledgement, every byte they carried wasted.
  //
  // What a cut costs is what was in flight and had not reached the broker:
  // resent, it takes the time it took to send. Counted over 50,000 messages
  // (about 100 cuts), the relay sent 105,000: the window went out as one
  // batch as large as everything acknowledged so far on that connection, and
  // a cut lost on average 530 messages of it (about 5 ms of sending). So:
  // - the window goes out in batches of at most 1/8 of it,
  //   and the batches that reached the broker before the cut are resumed
  //   (in_doubt above), not resent: 80,000 sent;
  // - after a cut (as TCP after a loss) the window restarts at half its size
  //   before the cut (window_ceiling), above which it grows by
  //   kInitialWindow per window acknowledged instead of doubling: less in
  //   flight to lose under repeated cuts, 65,000 sent; without cuts it
  //   grows back to its maximum;
  // - but every batch costs each process a round of work (a group commit in
  //   the broker, wakeups in the relay and any proxy), and under cuts the
  //   window stayed near 260 messages: batches of an eighth of it made
  //   1,350 batches for 50,000 messages, and the drain cost 2.5 times the
  //   CPU of one without cuts. So a batch is half the window, at least
  //   kMinBatch, and the window restarts at no less than kMinWindowAfterCut:
  //   550 batches (window near 350) and a quarter less CPU in the broker,
  //   though a cut loses more (260 messages instead of 180, so 75,000 sent
  //   instead of 68,000); the drain under cuts is faster for it (outbox-bench
  //   cuts; batches of the whole window, or of at least 256 messages, were
  //   slower again).
  static constexpr std::size_t kInitialWindow = 64;
  static constexpr std::size_t kBatchesPerWindow = 2;
  static constexpr std::size_t kMinBatch = 3 * kInitialWindow;
  static constexpr std::size_t kMinWindowAfterCut = 4 * kInitialWindow;

  // The window a new session starts with: kInitialWindow, or one batch when
  // configured so (RelayConfig::first_window_one_batch).
  std::size_t initial_window() const {
    return config.first_window_one_batch ? std::max(kInitialWindow, config.batch_size)
                                         : kInitialWindow;
  }
  std::size_t session_window = initial_window();
  std::size_t window_ceiling = std::numeric_limits<std::size_t>::max();

  void grow_window(std::size_t acknowledged, std::size_t acknowledged_bytes) {
    const auto growth =
        session_window < window_ceiling
            ? acknowledged
            : std::max<std::size_t>(1, acknowledged * kInitialWindow / session_window);
    session_window =
        std::min(session_window + growth, config.batch_size * config.max_in_flight_batches);
    if (window_bytes < kUnlimitedWindowBytes) {
      window_bytes +=
          std::max<std::size_t>(1, acknowledged_bytes * kWindowBytesGrowth / window_bytes);
      if (window_bytes >= full_window_bytes()) window_bytes = kUnlimitedWindowBytes;
      metrics->window_bytes.set(static_cast<double>(effective_window_bytes()));
    }
  }

  // The same window in bytes, for messages of any size: the message window
  // above assumes small messages (its floor of kMinWindowAfterCut messages is
  // 77 KB of 256-byte messages but 18 MB of 70 KB ones, and its first window
  // of 64 messages of 16 KB goes out as batches of 1 MiB), so behind a link
  // that breaks every few hundred kilobytes no batch of large messages
  // arrived whole and nothing was ever delivered. After a connection breaks
  // with batches unacknowledged, window_bytes becomes half of what was
  // unacknowledged (at least kMinWindowBytesAfterCut), a batch at most half
  // of it, and it grows by kWindowBytesGrowth per window of bytes
  // acknowledged (TCP's congestion avoidance) until it reaches the full
  // window (batch_bytes x in-flight batches), where it no longer limits
  // anything: on a link that does not break the relay sends as if it were
  // not there. The floor is above what the message window allows of
  // messages of 256 B (outbox-bench cuts, side by side: with a floor of
  // 64 KiB, batches of ~110 such messages resent less, 216 messages per cut
  // instead of 260, but drained slower under cuts, 87,000 against 95,000
  // msg/s), so it only decides for messages of about 500 bytes and more.
  static constexpr std::size_t kMinWindowBytesAfterCut = 128 * 1024;
  static constexpr std::size_t kWindowBytesGrowth = 16 * 1024;
  static constexpr std::size_t kUnlimitedWindowBytes = std::numeric_limits<std::size_t>::max();
  std::size_t window_bytes = kUnlimitedWindowBytes;

  std::size_t full_window_bytes() const {
    return lower_of(config.batch_bytes, limits.max_batch_bytes) * config.max_in_flight_batches;
  }
  // What the outbox_relay_window_bytes gauge shows.
  std::size_t effective_window_bytes() const { return std::min(window_bytes, full_window_bytes()); }
  std::size_t unacknowledged_bytes() const {
    std::size_t bytes = 0;
    for (const auto& batch : in_flight) bytes += batch.bytes;
    return bytes;
  }
  int consecutive_failures = 0;
  std::mt19937_64 random;
  SinkLimits limits;  // of the open session's destination

  // Transient database failures in a row, and what the last one was about.
  int database_failures = 0;
  SteadyClock::time_point database_retry_at{};  // the end of the backoff after one
  const char* database_operation = "";

  // What `outbox-relay status` shows (written to the database on changes).
  outbox::RelayStatus status;
  std::string last_failure;  // the most recent session failure, for stall warnings
  SteadyClock::time_point last_progress = SteadyClock::now();
  SteadyClock::time_point next_stall_check{};
  // Session flaps reach the status row at most this often (publish_status_soon).
  static constexpr milliseconds kStatusInterval{100};
  bool status_dirty = false;
  SteadyClock::time_point next_status_write{};

  SteadyClock::time_point next_session_attempt{};
  SteadyClock::time_point next_renew{};
  SteadyClock::time_point next_retention{};
  SteadyClock::time_point next_unread_sweep{};
  SteadyClock::time_point next_summary{};
  std::uint64_t summary_sent_before = 0;
  SteadyClock::time_point summary_since = SteadyClock::now();

  // The store, naming the operation about to run on it for the one-line
  // report of a transient failure (see run()).
  outbox::RelayStore& database(const char* operation) {
    database_operation = operation;
    return store;
  }

  // Best effort: a status that cannot be written (the disk is full) must not
  // stop forwarding; the next change writes it again.
  void publish_status() {
    status_dirty = false;
    next_status_write = SteadyClock::now() + kStatusInterval;
    if (!lease) return;
    status.holder = lease->holder;
    status.destination = sink.describe();
    status.updated_at = outbox::system_now();
    try {
      store.write_status(status);
    } catch (const outbox::Error& error) {
      log->debug("could not record the relay status in {}: {}", store.path(), error.what());
    }
  }

  // A session change: written at once, unless the status row was written
  // less than kStatusInterval ago. A connection that breaks and opens again
  // every few milliseconds would otherwise cost two writes to app.db on
  // every reconnect; housekeeping() (and going idle) writes what waited.
  void publish_status_soon() {
    if (SteadyClock::now() >= next_status_write) {
      publish_status();
    } else {
      status_dirty = true;
    }
  }

  void set_session_state(bool up) {
    if (status.session_up == up && status.session_changed_at != outbox::TimePoint{}) return;
    status.session_up = up;
    status.session_changed_at = outbox::system_now();
    counters.session_up.store(up);
    metrics->session_up.set(up ? 1 : 0);
  }

  void note_error(const std::string& error) {
    status.last_error = error;
    status.last_error_at = outbox::system_now();
    metrics->last_error_time.set(
        std::chrono::duration<double>(status.last_error_at->time_since_epoch()).count());
  }

  void note_progress() {
    last_progress = SteadyClock::now();
    status.last_progress_at = outbox::system_now();
  }

  void note_lease() {
    metrics->lease_held.set(lease ? 1 : 0);
    metrics->lease_epoch.set(lease ? static_cast<double>(lease->epoch) : 0);
    if (lease) metrics->standby.set(0);
  }

  void observe_commit_to_ack(const outbox::PendingMessage& message, outbox::TimePoint now) {
    metrics->commit_to_ack_seconds.observe(
        std::max(std::chrono::duration<double>(now - message.created_at).count(), 0.0));
  }

  // Conflict and rejected are told apart from the deliveries only when there
  // are dead ones (rare), so the common batch costs two atomic adds.
  void count_acknowledged(std::uint64_t stored, std::uint64_t duplicates, std::uint64_t dead,
                          std::uint64_t blocked, const SinkEvent& event) {
    metrics->acknowledged_stored.add(stored);
    metrics->acknowledged_duplicate.add(duplicates);
    if (blocked > 0) metrics->acknowledged_blocked.add(blocked);
    if (dead == 0) return;
    for (const auto& delivery : event.deliveries) {
      if (delivery.status == DeliveryStatus::conflict) metrics->acknowledged_conflict.add();
      if (delivery.status == DeliveryStatus::rejected) metrics->acknowledged_rejected.add();
    }
  }

  // step() never blocks: where run() would wait, a step notes when it wants
  // to run again (resume_at) and returns.
  bool stepping = false;
  bool started = false;
  SteadyClock::time_point resume_at{};
  bool turn_did_work = false;  // this step sent, handled or recorded something
  bool send_refused = false;   // the sink refused a send (queue full, or its session ended)
  static constexpr milliseconds kRefusedSendRetry{5};
  bool turn_went_idle = false;
  // Batches a step may send: one, so that a program stepping many relays in
  // turn gives each the same share whatever its backlog.
  std::size_t sends_left = SIZE_MAX;

  // run(): sleeps up to `duration`, waking early on request_stop(); step():
  // asks to be called again after `duration`.
  void wait_or_step(milliseconds duration) {
    if (stepping) {
      resume_at = SteadyClock::now() + duration;
    } else {
      pause(duration);
    }
  }

  // Sleeps up to `duration`, waking early on request_stop().
  void pause(milliseconds duration) {
    auto deadline = SteadyClock::now() + duration;
    while (!stop.load(std::memory_order_relaxed) && SteadyClock::now() < deadline) {
      std::this_thread::sleep_for(std::min(until(deadline), milliseconds(20)));
    }
  }

  void drop_session() {
    session_open = false;
    session_prepared = false;
    session_window = initial_window();
    forget_in_flight();
  }

  void forget_in_flight() {
    in_doubt = false;
    resuming = false;
    in_flight.clear();
    read_ahead.clear();
    metrics->batches_in_flight.set(0);
    last_sent_seq = 0;  // the next session resends from the first unacknowledged message
  }

  // A failed session: what it had in flight stays, to be resumed by the next
  // session under the same lease (ensure_session); the next window starts at
  // half of this one's (see session_window).
  void leave_session() {
    if (in_flight.empty() || !lease) return drop_session();
    if (session_open) {  // not again for each session that could not open
      window_ceiling = std::max(kMinWindowAfterCut, session_window / 2);
      session_window = window_ceiling;
      window_bytes = std::max(kMinWindowBytesAfterCut, unacknowledged_bytes() / 2);
      metrics->window_bytes.set(static_cast<double>(effective_window_bytes()));
    }
    session_open = false;
    session_prepared = false;
    resuming = false;
    in_doubt = true;
  }

  // The new session asks which of the batches in doubt were stored; without
  // an answer to wait for, they are all resent.
  void resume_in_doubt() {
    const bool was_in_doubt = in_doubt;
    in_doubt = false;
    if (!was_in_doubt || in_flight.empty() || !sink.resume(in_flight.front().batch_id)) {
      forget_in_flight();
      return;
    }
    resuming = true;
    const auto now = SteadyClock::now();
    for (auto& batch : in_flight) batch.sent_at = now;  // the ack timeout runs from the question
  }

  // The answer to resume() is complete: the acknowledged batches are handled;
  // the rest of what was in doubt is resent, from its first message.
  void finish_resume() {
    resuming = false;
    std::size_t resent = 0;
    for (const auto& batch : in_flight) resent += batch.messages.size();
    if (!in_flight.empty()) {
      // They are resent from memory: the rows they were read from, followed
      // by what was read after them. Not after a dead outcome among the
      // resumed batches: later messages of its key must wait (a read skips them).
      const auto resend_after = in_flight.front().messages.front().seq - 1;
      if (!settled_has_dead() &&
          (read_ahead.empty() || read_ahead_after == in_flight.back().messages.back().seq)) {
        for (auto batch = in_flight.rbegin(); batch != in_flight.rend(); ++batch) {
          read_ahead.insert(read_ahead.begin(), std::make_move_iterator(batch->messages.begin()),
                            std::make_move_iterator(batch->messages.end()));
        }
        read_ahead_after = resend_after;
      } else {
        read_ahead.clear();
      }
      last_sent_seq = resend_after;
    }
    in_flight.clear();
    metrics->batches_in_flight.set(0);
    log->debug("{}: session resumed; {} messages in doubt to resend", sink.describe(), resent);
  }

  void lose_lease(const char* why) {
    metrics::log(*log, spdlog::level::warn,
                 {{"event", "lease_lost"}, {"db", store.path()}, {"reason", why}},
                 "lost the relay lease ({}); going back to standby", why);
    lease.reset();
    counters.active = false;
    note_lease();
    standby_logged = false;
    settled.clear();  // fenced writes would be refused: the next holder resends them
    drop_session();
  }

  // Holds the lease, or waits as a standby for a while and returns false.
  bool ensure_lease() {
    auto now = SteadyClock::now();
    if (lease) {
      if (now >= next_renew) {
        if (!database("renewing the relay lease").renew_lease(*lease, config.lease_ttl)) {
          lose_lease("another relay holds it now");
          return false;
        }
        lease_valid_until = now + config.lease_ttl;
        next_renew = now + config.lease_ttl / 3;
      }
      return true;
    }
    if (adopted) {
      // Claimed for this relay before it was built (adopt_lease()): held
      // from the clock read before that claim, not claimed a second time.
      lease = std::exchange(adopted, std::nullopt);
      now = adopted_claimed_at;
    } else {
      lease = database("claiming the relay lease").claim_lease(lease_holder, config.lease_ttl);
    }
    if (lease) {
      counters.active = true;
      note_lease();
      lease_valid_until = now + config.lease_ttl;
      next_renew = now + config.lease_ttl / 3;
      sink.set_lease(SinkLease{origin, lease->epoch, [this] {
                                 return lease.has_value() && SteadyClock::now() < lease_valid_until;
                               }});
      drop_session();
      last_progress = now;
      set_session_state(false);
      if (stepping) {
        publish_status_soon();  // see start()
      } else {
        publish_status();
      }
      metrics::log(*log, spdlog::level::info,
                   {{"event", "lease_acquired"},
                    {"db", store.path()},
                    {"holder", lease->holder},
                    {"epoch", lease->epoch}},
                   "active: holding the relay lease as '{}' (epoch {})", lease->holder,
                   lease->epoch);
      return true;
    }
    // Standby: look again when the holder's lease runs out (or a quarter ttl).
    auto wait = config.lease_ttl / 4;
    if (auto info = database("reading the relay lease").lease_info()) {
      metrics->standby.set(info->expired ? 0 : 1);
      if (!standby_logged) {
        metrics::log(*log, spdlog::level::info,
                     {{"event", "standby"}, {"db", store.path()}, {"holder", info->holder}},
                     "standby: the relay lease is held by '{}'; taking over when it lapses",
                     info->holder);
        standby_logged = true;
      }
      auto left = duration_cast<milliseconds>(info->expires_at - outbox::system_now());
      wait = std::clamp(left + milliseconds(5), milliseconds(5), wait);
    }
    wait_or_step(wait);
    return false;
  }

  // A session that had opened shows the destination is up: a connection cut
  // under it (noticed from the socket within milliseconds) costs one
  // reconnect, not a backoff, even when the cut came before the first
  // acknowledgement. Behind a proxy cutting every 2 KB-400 KB about one
  // connection in ten breaks before its first acknowledgement; with three
  // such failures going at once, a run of four came every few drains and its
  // backoff (200-400 ms, the third step) was a quarter of a drain. So up to
  // kImmediateRetries failures in a row of sessions that had opened go at
  // once, and past them the backoff starts from its first step. A session
  // that cannot open backs off from its second failure in a row. Progress (a
  // message stored, or found stored by RESUME) ends a run.
  static constexpr int kImmediateRetries = 8;
  milliseconds failure_delay() {
    if (consecutive_failures <= 1) return milliseconds(0);
    if (!session_open) return config.backoff.delay(consecutive_failures - 1, random);
    if (consecutive_failures <= kImmediateRetries) return milliseconds(0);
    return config.backoff.delay(consecutive_failures - kImmediateRetries, random);
  }

  void record_failure(const std::string& reason, metrics::Counter& cause) {
    cause.add();
    ++counters.failures;
    ++consecutive_failures;
    auto delay = failure_delay();
    const bool session_was_open = session_open;
    next_session_attempt = SteadyClock::now() + delay;
    metrics::log(*log, spdlog::level::warn,
                 {{"event", "session_failed"},
                  {"db", store.path()},
                  {"destination", sink.describe()},
                  {"error", reason},
                  {"retry_in_ms", delay.count()},
                  {"attempt", consecutive_failures},
                  {"batches_in_flight", in_flight.size()}},
                 "{}: {}; retrying in {} ms (attempt {}, {} batches were in flight)",
                 sink.describe(), reason, delay.count(), consecutive_failures, in_flight.size());
    leave_session();
    last_failure = reason;
    note_error(sink.describe() + ": " + reason);
    set_session_state(false);
    if (delay > milliseconds(0)) {
      publish_status();
    } else {
      publish_status_soon();
    }
    // Another relay taking over is one cause of a failure (the broker
    // refuses a stale epoch): check the lease before anything else is sent
    // once a session could not open or before a backoff. An immediate
    // reconnect after a broken connection skips the write: should the lease
    // have moved on, the destination refuses the new session's HELLO
    // (stale_epoch), and that failure checks the lease.
    if (!session_was_open || delay > milliseconds(0)) next_renew = SteadyClock::now();
  }

  bool ensure_session() {
    if (session_open) return true;
    auto now = SteadyClock::now();
    if (now < next_session_attempt) {
      wait_or_step(std::min(until(next_session_attempt), config.lease_ttl / 4));
      return false;
    }
    if (stepping && !session_prepared) {
      // Come back when the destination has answered (or the connect
      // timeout passed): other relays stepped meanwhile open theirs too.
      session_prepared = true;
      session_answer_by = SteadyClock::time_point{};
      if (sink.prepare_session()) {
        session_answer_by = now + config.connect_timeout;
        wait_or_step(std::min(config.connect_timeout, config.lease_ttl / 4));
        return false;
      }
    }
    if (stepping && now < session_answer_by && !sink.session_answered()) {
      // Stepped early (a commit, the lease): open_session() would wait for
      // the answer, and every other relay stepped on this thread with it.
      wait_or_step(std::min(until(session_answer_by), config.lease_ttl / 4));
      return false;
    }
    if (auto session = sink.open_session(config.connect_timeout); !session.ok()) {
      record_settled();  // waiting anyway
      record_failure(session.error(), metrics->failure_connect);
      return false;
    }
    resume_in_doubt();
    session_open = true;
    limits = sink.limits();
    metrics->window_bytes.set(static_cast<double>(effective_window_bytes()));
    ++counters.sessions;
    metrics->sessions_opened.add();
    set_session_state(true);
    publish_status_soon();
    if (consecutive_failures > 0) {
      metrics::log(*log, spdlog::level::info,
                   {{"event", "session_up"},
                    {"db", store.path()},
                    {"destination", sink.describe()},
                    {"failed_attempts", consecutive_failures}},
                   "{}: session open again after {} failed attempts", sink.describe(),
                   consecutive_failures);
    } else {
      log->debug("{}: session open", sink.describe());
    }
    return true;
  }

  // The error line for a message that became dead, with its fields
  // (docs/operations.md, Logs: message_dead).
  template <class... Args>
  void log_dead(const outbox::PendingMessage& message, const std::string& reason,
                spdlog::format_string_t<Args...> format, Args&&... args) {
    metrics::log(*log, spdlog::level::err,
                 {{"event", "message_dead"},
                  {"db", store.path()},
                  {"seq", message.seq},
                  {"msg_id", message.msg_id},
                  {"topic", message.topic},
                  {"destination", sink.describe()},
                  {"reason", reason}},
                 format, std::forward<Args>(args)...);
  }

  // Makes every message of `batch` that can never be delivered dead, and
  // returns how many messages from the front form the next batch: those before
  // the first undeliverable one (later messages of its key must wait for the
  // next read, which sees it dead), cut at max_bytes. A first message larger
  // than max_bytes but within the destination's limits goes alone.
  std::size_t take_sendable(const std::vector<outbox::PendingMessage>& batch,
                            std::size_t max_bytes) {
    std::size_t sendable = batch.size();
    std::size_t bytes = wire::kPublishFixedBytes;
    std::uint64_t dead = 0;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const auto& message = batch[i];
      if (auto reason = undeliverable_reason(message, limits)) {
        log_dead(
            message, "UNDELIVERABLE: " + *reason,
            "message {} (seq {}, topic '{}', {}) can never be delivered to {}: {}; it is dead, "
            "later messages of its key wait until it is replayed or dropped (outbox-relay dead / "
            "replay / drop)",
            printable_field(message.msg_id), message.seq, printable_field(message.topic),
            describe_key(message), sink.describe(), *reason);
        settled.push_back(outbox::Outcome::dead(message.seq, "UNDELIVERABLE: " + *reason));
        ++dead;
        sendable = std::min(sendable, i);
        continue;
      }
      if (i >= sendable) continue;
      auto size = message_bytes(message);
      if (i > 0 && bytes + size > max_bytes) {
        sendable = i;
        continue;
      }
      bytes += size;
    }
    if (dead > 0) settle_undeliverable(dead);
    return sendable;
  }

  // Counts `count` messages just made dead as undeliverable and records them
  // (with whatever else was settled) at once: a dead message holds back its
  // key, from the next read on (what was read ahead may hold its later ones).
  void settle_undeliverable(std::uint64_t count) {
    read_ahead.clear();
    counters.dead += count;
    counters.undeliverable += count;
    metrics->undeliverable.add(count);
    note_progress();
    record_settled();
  }

  // Rows another program inserted with a seq of its own that reads never see:
  // reads start above the cursor (0 at first), so a row at 0 or below, or one
  // inserted at or below the cursor after it had passed that seq, would wait
  // unseen for ever. They are made dead, with a reason that says how to send
  // them. Rows at 0 or below are found every step; the positive seqs below
  // the cursor are swept, kUnreadRowsPerStep a step (a full pass over N
  // retained rows takes N / kUnreadRowsPerStep cleanup intervals). A step
  // holds this thread about 5 ms (0.5 us a row, 1 million retained rows),
  // which is why it is no larger.
  static constexpr std::size_t kUnreadRowsPerStep = 10'000;
  void make_unread_dead() {
    auto step = database("looking for rows inserted where reads never see them")
                    .unread(unread_swept, kUnreadRowsPerStep, 100);
    unread_swept = step.next_after;
    if (step.rows.empty()) return;
    for (const auto& message : step.rows) {
      const bool at_or_below_zero = message.seq <= 0;
      auto reason = at_or_below_zero
                        ? "UNDELIVERABLE: seq " + std::to_string(message.seq) +
                              " is not above 0, and the relay reads seqs above 0 only: insert the "
                              "message again without a seq (docs/schema.md)"
                        : "UNDELIVERABLE: seq " + std::to_string(message.seq) +
                              " is at or below the relay's cursor (" + std::to_string(step.cursor) +
                              ") and was never read: replay it to send it now, or insert it again "
                              "without a seq (docs/schema.md)";
      log_dead(message, reason,
               "message {} (seq {}, topic '{}', {}) {}: {}; it is dead, later messages of its "
               "key wait until it is {}",
               printable_field(message.msg_id), message.seq, printable_field(message.topic),
               describe_key(message),
               at_or_below_zero ? "will never be read"
                                : "was inserted below the cursor and will never be read",
               reason,
               at_or_below_zero ? "dropped (outbox-relay dead / drop)"
                                : "replayed or dropped (outbox-relay dead / replay / drop)");
      settled.push_back(outbox::Outcome::dead(message.seq, std::move(reason)));
    }
    settle_undeliverable(step.rows.size());
  }

  // Up to `limit` messages after last_sent_seq and within `max_bytes` (a
  // PUBLISH body) and `budget_bytes` (the byte window's share; at least one
  // message), from the read-ahead; when it has none that follow
  // last_sent_seq, from one read of up to a full batch (`max_messages`,
  // `max_bytes`).
  std::vector<outbox::PendingMessage> next_batch(std::size_t limit, std::size_t max_messages,
                                                 std::size_t max_bytes, std::size_t budget_bytes) {
    if (read_ahead.empty() || read_ahead_after != last_sent_seq) {
      auto read =
          database("reading pending messages")
              .read_pending(
                  max_messages, last_sent_seq,
                  max_bytes > wire::kPublishFixedBytes ? max_bytes - wire::kPublishFixedBytes : 1);
      read_ahead.assign(std::make_move_iterator(read.begin()), std::make_move_iterator(read.end()));
      read_ahead_after = last_sent_seq;
    }
    std::vector<outbox::PendingMessage> batch;
    std::size_t bytes = wire::kPublishFixedBytes;
    while (!read_ahead.empty() && batch.size() < limit) {
      const auto size = message_bytes(read_ahead.front());
      if (!batch.empty() && bytes + size > std::min(max_bytes, budget_bytes)) break;
      bytes += size;
      batch.push_back(std::move(read_ahead.front()));
      read_ahead.pop_front();
    }
    if (!batch.empty()) read_ahead_after = batch.back().seq;
    return batch;
  }

  void fill_pipeline() {
    // With nothing in flight and nothing waiting to be recorded, read from
    // the outbox's cursor rather than past the last message sent: an operator
    // may have replayed an earlier one. Outcomes not yet recorded still count
    // as in flight: their rows are pending in the database until then.
    const bool from_cursor = in_flight.empty() && settled.empty();
    if (from_cursor) {
      last_sent_seq = 0;
      holding_for_generation = false;
      read_ahead.clear();
    }
    send_refused = false;
    if (holding_for_generation || resuming) return;
    // Reading from the cursor again (the session was dropped): what was
    // settled is written down first, else it would be read and sent again;
    // and a dead message, before anything of its key is read.
    if ((last_sent_seq == 0 && !settled.empty()) || settled_has_dead()) {
      record_settled();
      if (!lease) return;
    }
    const auto max_messages = lower_of(config.batch_size, limits.max_batch_messages);
    const auto max_bytes = lower_of(config.batch_bytes, limits.max_batch_bytes);
    const std::size_t batch_share = std::max(
        kMinBatch,
        session_window / std::min<std::size_t>(config.max_in_flight_batches, kBatchesPerWindow));
    while (in_flight.size() < config.max_in_flight_batches && !stop.load() && sends_left > 0) {
      std::size_t unacknowledged = 0;
      for (const auto& batch : in_flight) unacknowledged += batch.messages.size();
      if (unacknowledged >= session_window) return;
      const auto unacknowledged_bytes_now = unacknowledged_bytes();
      if (unacknowledged_bytes_now >= window_bytes) return;
      auto batch = next_batch(
          std::min({max_messages, batch_share, session_window - unacknowledged}), max_messages,
          max_bytes,
          std::min(window_bytes / kBatchesPerWindow, window_bytes - unacknowledged_bytes_now));
      if (from_cursor && in_flight.empty()) {
        generation = database("reading the delivery generation").delivery_generation();
      } else if (database("reading the delivery generation").delivery_generation() != generation) {
        // A replayed message, or one unblocked by a drop, sits behind
        // last_sent_seq: reading on from there would let later messages of its
        // key overtake it. Holding every key (not only the changed ones) costs
        // one round of acknowledgements and needs no per-key bookkeeping.
        log->info(
            "delivery state changed outside the relay (replay or drop); holding new sends until "
            "the {} batches in flight are settled, then resuming in seq order",
            in_flight.size());
        holding_for_generation = true;
        read_ahead.clear();
        return;
      }
      if (batch.empty()) return;
      auto sendable = take_sendable(batch, max_bytes);
      if (sendable < batch.size()) read_ahead.clear();  // read again past the dead ones
      if (!lease || !session_open) return;              // lost while recording the dead ones
      if (sendable == 0) continue;                      // the dead ones are settled: read on
      batch.resize(sendable);
      auto batch_id = next_batch_id;
      if (!sink.send(batch_id, batch)) {  // queue full: send it after acks
        read_ahead.insert(read_ahead.begin(), std::make_move_iterator(batch.begin()),
                          std::make_move_iterator(batch.end()));
        read_ahead_after = last_sent_seq;
        send_refused = true;
        return;
      }
      ++next_batch_id;  // ids stay consecutive within a session
      --sends_left;
      turn_did_work = true;
      last_sent_seq = batch.back().seq;
      counters.sent_messages += batch.size();
      metrics->sent_messages.add(batch.size());
      std::size_t batch_bytes = wire::kPublishFixedBytes;
      for (const auto& message : batch) batch_bytes += message_bytes(message);
      in_flight.push_back(InFlight{batch_id, std::move(batch), SteadyClock::now(), batch_bytes});
      metrics->batches_in_flight.set(static_cast<double>(in_flight.size()));
    }
  }

  void handle(SinkEvent event) {
    turn_did_work = true;
    if (event.kind == SinkEvent::Kind::resumed) {
      if (resuming) finish_resume();
      return;
    }
    auto head = in_flight.empty() ? nullptr : &in_flight.front();
    if (head == nullptr || event.batch_id != head->batch_id) {
      bool known = std::any_of(in_flight.begin(), in_flight.end(),
                               [&](const InFlight& f) { return f.batch_id == event.batch_id; });
      // A failure naming a batch we no longer wait for is a late (or
      // duplicated) answer from a session we already left; batch id 0 means
      // the destination could not tell which batch, so it counts.
      bool about_current = known || (event.kind == SinkEvent::Kind::failed && event.batch_id == 0);
      // Batch ids only grow (from 1, across sessions): an acknowledgement of
      // one not sent yet is no late answer but a destination that mislabels
      // them, and the batch it stands for would wait for the ack timeout.
      if (event.kind == SinkEvent::Kind::acked &&
          (event.batch_id == 0 || event.batch_id >= next_batch_id)) {
        return record_failure(
            "acknowledgement for batch " + std::to_string(event.batch_id) +
                ", which was never sent (the oldest batch in flight is " +
                (head == nullptr ? std::string("none") : std::to_string(head->batch_id)) + ")",
            metrics->failure_protocol);
      }
      if (about_current) {
        record_failure(event.kind == SinkEvent::Kind::failed
                           ? event.error
                           : "acknowledgement for batch " + std::to_string(event.batch_id) +
                                 " arrived out of order",
                       event.kind == SinkEvent::Kind::failed ? metrics->failure_destination
                                                             : metrics->failure_protocol);
      }
      return;  // a late answer from a session we already left
    }
    if (event.kind == SinkEvent::Kind::failed) {
      record_failure(event.error, metrics->failure_destination);
      return;
    }
    if (event.deliveries.size() != head->messages.size()) {
      record_failure("acknowledgement of batch " + std::to_string(event.batch_id) + " has " +
                         std::to_string(event.deliveries.size()) + " entries for " +
                         std::to_string(head->messages.size()) + " messages",
                     metrics->failure_protocol);
      return;
    }

    auto& outcomes = settled;
    bool any_blocked = false;
    std::uint64_t stored = 0, duplicates = 0, dead = 0, blocked = 0;
    const auto acknowledged_at = outbox::system_now();
    metrics->send_to_ack_seconds.observe(
        std::chrono::duration<double>(SteadyClock::now() - head->sent_at).count());
    for (std::size_t i = 0; i < event.deliveries.size(); ++i) {
      const auto& delivery = event.deliveries[i];
      const auto& message = head->messages[i];
      auto offset = static_cast<std::int64_t>(delivery.offset);
      switch (delivery.status) {
        case DeliveryStatus::stored:
          ++stored;
          observe_commit_to_ack(message, acknowledged_at);
          outcomes.push_back(outbox::Outcome::delivered(message.seq, offset));
          break;
        case DeliveryStatus::duplicate:
          ++duplicates;
          observe_commit_to_ack(message, acknowledged_at);
          outcomes.push_back(outbox::Outcome::delivered(message.seq, offset));
          break;
        case DeliveryStatus::conflict:
        case DeliveryStatus::rejected: {
          ++dead;
          std::string reason =
              delivery.status == DeliveryStatus::conflict ? "CONFLICT" : "REJECTED";
          if (!delivery.reason.empty()) reason += ": " + delivery.reason;
          log_dead(
              message, reason,
              "message {} (seq {}, topic '{}', {}) is dead: {}; later messages of its key wait "
              "until it is replayed or dropped (outbox-relay dead / replay / drop)",
              message.msg_id, message.seq, message.topic, describe_key(message), reason);
          outcomes.push_back(outbox::Outcome::dead(message.seq, std::move(reason)));
          break;
        }
        case DeliveryStatus::blocked:
          ++blocked;
          any_blocked = true;
          break;
      }
    }
    if (dead > 0) read_ahead.clear();  // later messages of their keys must wait
    counters.stored += stored;
    counters.duplicates += duplicates;
    counters.dead += dead;
    counters.blocked += blocked;
    count_acknowledged(stored, duplicates, dead, blocked, event);
    if (stored + duplicates > 0) consecutive_failures = 0;
    if (stored + duplicates + dead > 0) note_progress();
    grow_window(head->messages.size(), head->bytes);
    in_flight.pop_front();
    metrics->batches_in_flight.set(static_cast<double>(in_flight.size()));
    if (resuming && in_flight.empty()) finish_resume();  // all of them were stored
    if (any_blocked) {
      // Messages held back behind a dead one: a new session resends whatever
      // is still allowed to go (nothing of that key under the block policy).
      log->debug("{} messages held back behind a refused message; opening a new session", blocked);
      drop_session();
    }
  }

  bool settled_has_dead() const {
    return std::any_of(settled.begin(), settled.end(), [](const outbox::Outcome& outcome) {
      return outcome.kind == outbox::Outcome::Kind::dead;
    });
  }

  // Whether the outcomes handled so far are written down now, or gathered
  // with the next ones: a write transaction per acknowledgement was a third
  // of the relay's time when the window goes out in small batches (after a
  // cut). An outcome not written down yet is only in memory: should the relay
  // stop, its message is resent and answered DUPLICATE. Written at once when
  // nothing else is in flight or a message is dead (reads must see it); else
  // after a full batch's worth or kRecordDelay. Not when the connection broke:
  // the next session opens first (the write took 0.8 ms of every cut), and
  // a session that cannot open, or a read from the cursor, writes them.
  static constexpr milliseconds kRecordDelay{5};
  bool record_due() {
    if (settled.empty()) return false;
    const auto now = SteadyClock::now();
    if (settled_since == SteadyClock::time_point{}) settled_since = now;
    if (settled_has_dead()) return true;
    if (!session_open && in_doubt) return false;
    return !session_open || in_flight.empty() || settled.size() >= config.batch_size ||
           now - settled_since >= kRecordDelay;
  }

  // Records the outcomes of every batch handled since the last call, in one
  // transaction: acknowledgements that arrived together cost one write.
  void record_settled() {
    settled_since = {};
    if (settled.empty()) return;
    if (lease) {
      try {
        database("recording outcomes").record_outcomes(settled, *lease);
      } catch (const outbox::LeaseLost&) {
        lose_lease("another relay took it over");
      }
    }
    settled.clear();
  }

  void await_events() {
    auto deadline = in_flight.front().sent_at + config.ack_timeout;
    bool has_credit = in_flight.size() < config.max_in_flight_batches;
    // With credit left, come back soon to send what producers commit meanwhile.
    auto wait = stepping
                    ? milliseconds(0)
                    : std::min(until(deadline), has_credit ? milliseconds(2) : milliseconds(50));
    if (auto event = sink.poll(wait)) {
      handle(std::move(*event));
      // Whatever else already arrived goes into the same bookkeeping write.
      while (session_open && !in_flight.empty()) {
        auto next = sink.poll(milliseconds(0));
        if (!next) break;
        handle(std::move(*next));
      }
      // The next batches go out before these outcomes are written down, so
      // that the write (a transaction on app.db) overlaps their round trip
      // instead of idling the connection. Not after a dead outcome: the read
      // must see that message dead before it reads on past its key.
      if (session_open && lease && !settled_has_dead()) fill_pipeline();
      if (record_due()) record_settled();
      return;
    }
    if (SteadyClock::now() >= deadline) {
      record_failure("no acknowledgement for batch " + std::to_string(in_flight.front().batch_id) +
                         " within " + std::to_string(config.ack_timeout.count()) + " ms",
                     metrics->failure_ack_timeout);
    }
  }

  void housekeeping() {
    auto now = SteadyClock::now();
    if (status_dirty && now >= next_status_write) publish_status();
    if (now >= next_retention) {
      constexpr std::size_t kRowsPerStep = 500, kStepsPerTurn = 4;
      auto deleted = database("deleting delivered rows")
                         .delete_delivered(config.retention, kRowsPerStep, kStepsPerTurn);
      counters.deleted += deleted;
      // Once an interval, also while retention catches up every 100 ms.
      if (now >= next_unread_sweep) {
        make_unread_dead();
        next_unread_sweep = now + config.retention_interval;
      }
      // A full turn means more is due: come back soon rather than after the interval.
      next_retention = now + (deleted == kRowsPerStep * kStepsPerTurn ? milliseconds(100)
                                                                      : config.retention_interval);
    }
    if (now >= next_summary) {
      auto sent = counters.sent_messages.load();
      auto elapsed = std::chrono::duration<double>(now - summary_since).count();
      publish_status();  // a heartbeat with the last progress
      if (sent != summary_sent_before || !in_flight.empty()) {
        auto stats = database("reading the backlog").backlog();
        double rate = elapsed > 0 ? static_cast<double>(sent - summary_sent_before) / elapsed : 0;
        const auto oldest_ms = stats.oldest_pending_age ? stats.oldest_pending_age->count() : 0;
        metrics::log(
            *log, spdlog::level::info,
            {{"event", "summary"},
             {"db", store.path()},
             {"msgs_per_sec", static_cast<std::int64_t>(rate)},
             {"pending", stats.pending},
             {"oldest_pending_age_ms", oldest_ms},
             {"dead", stats.dead},
             {"batches_in_flight", in_flight.size()},
             {"stored_total", counters.stored.load()},
             {"duplicates_total", counters.duplicates.load()}},
            "forwarding {:.0f} msg/s; backlog {} (oldest {} ms), dead {}, in flight {} batches; "
            "totals stored {} duplicates {}",
            rate, stats.pending, oldest_ms, stats.dead, in_flight.size(), counters.stored.load(),
            counters.duplicates.load());
      }
      summary_sent_before = sent;
      summary_since = now;
      next_summary = now + config.summary_interval;
    }
    watch_for_stall(now);
  }

  // Pending messages but nothing settled for several ack timeouts: say why.
  void watch_for_stall(SteadyClock::time_point now) {
    const auto stall_after = config.ack_timeout * std::max(config.stall_ack_timeouts, 1);
    if (now - last_progress < stall_after || now < next_stall_check) return;
    next_stall_check = now + stall_after;
    auto backlog = database("reading the backlog").backlog();
    if (backlog.pending == 0) {
      last_progress = now;  // idle, not stalled
      return;
    }
    // Nothing has waited longer than the oldest pending message: a database
    // that commits rarely (idle since its last progress) is not stalled.
    const auto waited = backlog.oldest_pending_age.value_or(milliseconds(0));
    if (waited < stall_after) {
      last_progress = std::max(last_progress, now - waited);
      return;
    }
    std::string cause;
    if (!session_open) {
      cause = "no session with " + sink.describe() +
              (last_failure.empty() ? std::string() : " (last failure: " + last_failure + ")");
    } else if (!in_flight.empty()) {
      cause = std::to_string(in_flight.size()) + " batches sent to " + sink.describe() +
              " are not acknowledged" +
              (last_failure.empty() ? std::string() : " (last failure: " + last_failure + ")");
    } else if (backlog.dead > 0) {
      cause = "the pending messages wait behind " + std::to_string(backlog.dead) +
              " dead messages of their keys (outbox-relay dead / replay / drop)";
    } else {
      cause = "the pending messages wait for scheduled retries (" +
              std::to_string(backlog.retrying) + ")";
    }
    using Seconds = std::chrono::duration<double>;
    const auto oldest = waited;
    metrics::log(*log, spdlog::level::warn,
                 {{"event", "stalled"},
                  {"db", store.path()},
                  {"destination", sink.describe()},
                  {"pending", backlog.pending},
                  {"oldest_pending_age_ms", oldest.count()},
                  {"dead", backlog.dead},
                  {"cause", cause}},
                 "no progress for {:.1f} s with {} messages pending (oldest {:.1f} s): {}",
                 Seconds(now - last_progress).count(), backlog.pending, Seconds(oldest).count(),
                 cause);
  }

  // A transient database failure: one line naming the database, the
  // operation and SQLite's code (repeats of the same one at debug level), then
  // a backoff. Outcomes not recorded stay pending: the next session resends
  // them and the destination answers DUPLICATE. The lease is kept; if it
  // lapses meanwhile, the next fenced write finds out and goes to standby.
  void on_database_error(const outbox::Error& error) {
    ++counters.database_errors;
    metrics->failure_database.add();
    ++database_failures;
    settled.clear();
    drop_session();
    auto delay = config.backoff.delay(database_failures, random);
    database_retry_at = SteadyClock::now() + delay;
    auto line =
        fmt::format("database '{}': {} failed with {}: {}", store.path(), database_operation,
                    sqlite_code_name(error.extended_code()), error.what());
    if (database_failures == 1 || status.last_error != line) {
      metrics::log(*log, spdlog::level::err,
                   {{"event", "database_error"},
                    {"db", store.path()},
                    {"operation", database_operation},
                    {"error_code", sqlite_code_name(error.extended_code())},
                    {"error", error.what()},
                    {"retry_in_ms", delay.count()}},
                   "{}; keeping the lease, retrying in {} ms", line, delay.count());
    } else {
      log->debug("{}; retrying in {} ms (attempt {})", line, delay.count(), database_failures);
    }
    last_failure = line;
    note_error(line);
    set_session_state(false);
    const int code = error.extended_code() & 0xff;
    if (stepping && (code == SQLITE_BUSY || code == SQLITE_LOCKED)) {
      // Another process holds the lock: writing the status now would wait
      // out the busy timeout a second time on the shared thread. It is
      // written once a turn works again.
      status_dirty = true;
    } else {
      publish_status();
    }
    wait_or_step(delay);
  }

  void drain_and_release() { drain_and_release(SteadyClock::now() + config.drain_timeout); }
  void drain_and_release(SteadyClock::time_point deadline) {
    if (!in_flight.empty() && session_open) {
      log->info("stopping: waiting up to {} ms for {} batches in flight", until(deadline).count(),
                in_flight.size());
    }
    try {
      while (!in_flight.empty() && session_open && lease && SteadyClock::now() < deadline) {
        if (auto event = sink.poll(std::min(until(deadline), milliseconds(50)))) {
          handle(std::move(*event));
          record_settled();
        }
      }
    } catch (const outbox::Error& error) {
      if (!transient_database_error(error.extended_code())) throw;
      log->warn("stopping: could not record acknowledgements in {} ({}); they are resent",
                store.path(), error.what());
      settled.clear();
    }
    if (!in_flight.empty()) {
      log->warn("stopping with {} batches unacknowledged; they stay pending and are resent",
                in_flight.size());
    }
    if (lease) {
      set_session_state(false);
      publish_status();
      try {
        store.release_lease(*lease);
      } catch (const outbox::Error& error) {
        log->warn("could not release the relay lease in {} ({}); it lapses in {} ms", store.path(),
                  error.what(), config.lease_ttl.count());
      }
      lease.reset();
      counters.active = false;
      note_lease();
    }
    if (adopted) {  // never stepped: given back all the same
      try {
        store.release_lease(*std::exchange(adopted, std::nullopt));
      } catch (const outbox::Error&) {
        // it lapses by itself
      }
    }
  }

  // One pass of the loop: a linear sequence of named steps.
  void turn() {
    if (!ensure_lease()) return;
    housekeeping();
    if (!ensure_session()) return;
    fill_pipeline();
    if (send_refused) {
      // Refused: the sink's queue is full, or its session ended while no
      // reply was awaited (a shared connection broke with nothing of this
      // database in flight). What the sink has to say is handled now: a
      // failure among it ends the session and the next turn opens another,
      // where waiting for the queue would wait for ever.
      while (session_open) {
        auto event = sink.poll(milliseconds(0));
        if (!event) break;
        handle(std::move(*event));
      }
    }
    if (in_flight.empty()) {
      record_settled();  // idle: every outcome is written down
      // and the status row is made current (when stepped, once its interval
      // has passed: see start()).
      if (status_dirty && (!stepping || SteadyClock::now() >= next_status_write)) {
        publish_status();
      }
      if (stepping) {
        // A send the sink refused (a shared connection's queue full of other
        // databases' batches) leaves messages pending: not idle, look again soon.
        turn_went_idle = settled.empty() && !send_refused;
        if (send_refused) wait_or_step(kRefusedSendRetry);
      } else {
        database("waiting for commits").wait_for_work(config.idle_wait);
      }
      return;
    }
    await_events();
  }

  void start() {
    if (started) return;
    started = true;
    // Stepped among many databases, many of which drain a small backlog and
    // close within milliseconds: the lease and the session reach the status
    // row after kStatusInterval (or when the relay finishes), not at once,
    // which saves two writes per database.
    if (stepping) next_status_write = SteadyClock::now() + kStatusInterval;
    next_summary = SteadyClock::now() + config.summary_interval;
    origin = store.origin_id();
  }

  // One turn; a transient database failure is reported and waited out.
  void guarded_turn() {
    // Stepped early within that wait (a commit, the fallback check of a relay
    // carrying many databases): each attempt on a database another process
    // keeps locked costs the thread its busy timeout, so it waits on.
    if (stepping && database_failures > 0 && SteadyClock::now() < database_retry_at) {
      return wait_or_step(until(database_retry_at));
    }
    try {
      turn();
    } catch (const outbox::LeaseLost&) {
      throw;
    } catch (const outbox::Error& error) {
      if (!transient_database_error(error.extended_code())) throw;
      on_database_error(error);
      return;
    }
    if (database_failures > 0) {
      metrics::log(*log, spdlog::level::info,
                   {{"event", "database_recovered"},
                    {"db", store.path()},
                    {"failed_attempts", database_failures}},
                   "database '{}' works again after {} failed attempts", store.path(),
                   database_failures);
      database_failures = 0;
    }
  }

  // The destination refuses the configuration for good: nothing in flight is
  // acknowledged any more; a standby (or the next start, once the destination
  // is fixed) need not wait for the lease.
  void give_up(const SinkRefusal& refusal) {
    metrics::log(*log, spdlog::level::err,
                 {{"event", "destination_refused"},
                  {"db", store.path()},
                  {"destination", sink.describe()},
                  {"error", refusal.what()}},
                 "{}: {}", sink.describe(), refusal.what());
    drop_session();
    if (lease) {
      store.release_lease(*lease);
      lease.reset();
      counters.active = false;
      note_lease();
    }
  }

  StepResult step() {
    stepping = true;
    start();
    turn_did_work = false;
    turn_went_idle = false;
    resume_at = {};
    sends_left = 1;
    try {
      guarded_turn();
    } catch (const SinkRefusal& refusal) {
      give_up(refusal);
      throw;
    }
    StepResult result;
    result.state = turn_did_work    ? StepResult::State::busy
                   : turn_went_idle ? StepResult::State::idle
                   : !lease         ? StepResult::State::standby
                                    : StepResult::State::waiting;
    // Housekeeping, the lease and the oldest batch's acknowledgement are due
    // at fixed times; nothing else needs a step before an event.
    auto next =
        std::min({next_renew, next_retention, next_summary, SteadyClock::now() + config.idle_wait});
    if (resume_at != SteadyClock::time_point{})
      next = lease ? std::min(next, resume_at) : resume_at;
    if (!in_flight.empty()) next = std::min(next, in_flight.front().sent_at + config.ack_timeout);
    if (status_dirty) next = std::min(next, next_status_write);
    // After a database failure nothing is tried before its backoff ends (the
    // lease renewal that failed stays due meanwhile).
    if (database_failures > 0) next = std::max(next, database_retry_at);
    result.call_again_by = next;
    return result;
  }

  void run() {
    stepping = false;
    sends_left = SIZE_MAX;
    start();
    try {
      while (!stop.load()) guarded_turn();
    } catch (const SinkRefusal& refusal) {
      give_up(refusal);
      throw;
    }
    drain_and_release();
  }
};

Relay::Relay(outbox::RelayStore& store, Sink& sink, RelayConfig config)
    : impl_(std::make_unique<Impl>(store, sink, std::move(config))) {}

Relay::~Relay() noexcept = default;

void Relay::run() {
  impl_->run();
}

StepResult Relay::step() {
  return impl_->step();
}

void Relay::finish() {
  impl_->drain_and_release();
}

void Relay::finish(SteadyClock::time_point deadline) {
  impl_->drain_and_release(deadline);
}

void Relay::adopt_lease(outbox::Lease lease, SteadyClock::time_point claimed_at) {
  if (lease.holder != impl_->lease_holder) {
    throw std::invalid_argument("adopt_lease: the lease is held by '" + lease.holder +
                                "', not by this relay ('" + impl_->lease_holder + "')");
  }
  if (impl_->lease) return;  // holds one already
  impl_->adopted = std::move(lease);
  impl_->adopted_claimed_at = claimed_at;
}

bool Relay::holds_lease() const noexcept {
  return impl_->lease.has_value();
}

const std::string& Relay::lease_holder() const noexcept {
  return impl_->lease_holder;
}

void Relay::request_stop() noexcept {
  impl_->stop.store(true);
}

RelayCounters Relay::counters() const {
  const auto& c = impl_->counters;
  return RelayCounters{
      c.sent_messages.load(), c.stored.load(),          c.duplicates.load(), c.dead.load(),
      c.blocked.load(),       c.sessions.load(),        c.failures.load(),   c.deleted.load(),
      c.undeliverable.load(), c.database_errors.load(), c.active.load(),     c.session_up.load()};
}

}  // namespace relay
