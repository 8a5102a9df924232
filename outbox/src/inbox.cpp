#include "outbox/inbox.hpp"

#include <cstdint>
#include <optional>

#include "common.hpp"
#include "idgen/uuid.hpp"
#include "schema.hpp"
#include "sqlite/sqlite.hpp"

namespace outbox {

using detail::to_ms;
using sqlite::Statement;

struct Inbox::Impl {
  sqlite::ConnectionPtr connection;
  sqlite3* db = nullptr;
  std::string path;
  InboxOptions options;
  std::shared_ptr<spdlog::logger> logger;

  sqlite::TransactionStatements transaction_statements;
  Statement select;
  Statement insert;
  Statement insert_claim;
  Statement take_over;
  Statement complete;
  Statement complete_claim;
  Statement release_claim;
  Statement extend_claim;
  Statement expired;
  Statement remove;

  void prepare() {
    transaction_statements = sqlite::TransactionStatements(db);
    transaction_statements.protocol_patience = options.busy_timeout;
    select = Statement(
        db, "SELECT state, claimed_until_ms, claim_token FROM outbox_inbox WHERE msg_id = ?1");
    insert = Statement(db,
                       "INSERT INTO outbox_inbox(msg_id, state, claimed_until_ms, completed_at_ms) "
                       "VALUES (?1, ?2, ?3, ?4)");
    insert_claim =
        Statement(db, detail::with_states(
                          "INSERT INTO outbox_inbox(msg_id, state, claimed_until_ms, claim_token) "
                          "VALUES (?1, {processing}, ?2, ?3)"));
    take_over = Statement(
        db, detail::with_states("UPDATE outbox_inbox SET claimed_until_ms = ?2, claim_token = ?3 "
                                "WHERE msg_id = ?1 AND state = {processing}"));
    // process_once taking over a stale claim: the old token no longer owns it.
    complete = Statement(
        db,
        detail::with_states(
            "UPDATE outbox_inbox SET state = {done}, claimed_until_ms = NULL, "
            "completed_at_ms = ?2, claim_token = NULL WHERE msg_id = ?1 AND state = {processing}"));
    // The token stays on the done row so that a repeated complete() is answered ok.
    complete_claim = Statement(
        db, detail::with_states("UPDATE outbox_inbox SET state = {done}, claimed_until_ms = NULL, "
                                "completed_at_ms = ?3 "
                                "WHERE msg_id = ?1 AND state = {processing} AND claim_token = ?2"));
    release_claim =
        Statement(db, detail::with_states("DELETE FROM outbox_inbox WHERE msg_id = ?1 AND state = "
                                          "{processing} AND claim_token = ?2"));
    extend_claim = Statement(
        db, detail::with_states("UPDATE outbox_inbox SET claimed_until_ms = ?3 "
                                "WHERE msg_id = ?1 AND state = {processing} AND claim_token = ?2"));
    expired = Statement(
        db, detail::with_states(
                "SELECT msg_id FROM outbox_inbox WHERE state = {done} AND completed_at_ms < ?1 "
                "ORDER BY completed_at_ms LIMIT ?2"));
    remove = Statement(db, "DELETE FROM outbox_inbox WHERE msg_id = ?1");
  }

  // A write transaction on the prepared BEGIN/COMMIT/ROLLBACK statements.
  sqlite::Transaction write_transaction() {
    if (sqlite3_get_autocommit(db) == 0) {
      throw Error("outbox: the inbox connection is already inside a transaction");
    }
    return sqlite::Transaction(db, transaction_statements);
  }

  struct Entry {
    std::int64_t state = 0;
    std::optional<std::int64_t> claimed_until;
    std::optional<std::string> token;
  };

  std::optional<Entry> find(const std::string& msg_id) {
    auto use = select.use();
    use.bind_text(1, msg_id);
    if (!use.step()) return std::nullopt;
    Entry entry;
    entry.state = use.column_int64(0);
    if (!use.column_is_null(1)) entry.claimed_until = use.column_int64(1);
    if (!use.column_is_null(2)) entry.token = use.column_text(2);
    return entry;
  }
};

namespace {
void check_msg_id(const std::string& msg_id) {
  if (msg_id.empty()) throw Error("outbox: inbox msg_id is empty");
}
void check_lease(std::chrono::milliseconds lease) {
  if (lease.count() <= 0) throw Error("outbox: inbox claim lease must be positive");
}
void check_token(const std::string& token) {
  if (token.empty()) throw Error("outbox: inbox claim token is empty");
}

// Turns every commit on `db` into a rollback while it lives.
class RefuseCommits {
 public:
  explicit RefuseCommits(sqlite3* db) : db_(db) { sqlite3_commit_hook(db_, &refuse, nullptr); }
  ~RefuseCommits() noexcept { sqlite3_commit_hook(db_, nullptr, nullptr); }
  RefuseCommits(const RefuseCommits&) = delete;
  RefuseCommits& operator=(const RefuseCommits&) = delete;

 private:
  static int refuse(void*) { return 1; }  // non-zero: the commit becomes a rollback
  sqlite3* db_;
};
}  // namespace

Inbox::Inbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Inbox::Inbox(Inbox&&) noexcept = default;
Inbox& Inbox::operator=(Inbox&&) noexcept = default;
Inbox::~Inbox() noexcept = default;

Inbox Inbox::open(const std::filesystem::path& path, InboxOptions options) {
  sqlite::OpenOptions open_options;
  open_options.synchronous_full = options.synchronous_full;
  open_options.busy_timeout = options.busy_timeout;
  auto impl = std::make_unique<Impl>();
  impl->connection = sqlite::open_connection(path, open_options);
  impl->db = impl->connection.get();
  impl->options = std::move(options);
  if (!impl->options.clock) impl->options.clock = system_time_source();
  impl->logger = outbox::logger_or_null(impl->options.logger, "outbox");
  impl->path = path.string();
  detail::ensure_schema(impl->db, impl->path, detail::SchemaMode::create_or_migrate);
  impl->prepare();
  return Inbox(std::move(impl));
}

sqlite3* Inbox::db() const {
  return impl_->db;
}

ProcessResult Inbox::process_once(const std::string& msg_id,
                                  const std::function<void(sqlite3*)>& handler) {
  check_msg_id(msg_id);
  auto& impl = *impl_;
  auto transaction = impl.write_transaction();
  const auto now = to_ms(impl.options.clock());
  auto entry = impl.find(msg_id);
  if (entry && entry->state == detail::inbox_done) return ProcessResult::already_done;
  if (entry && entry->claimed_until.value_or(0) > now) return ProcessResult::in_progress;
  if (entry) {
    // A stale begin() claim: its holder is gone; this delivery takes over.
    impl.logger->warn("outbox: inbox claim on {} expired; processing it transactionally", msg_id);
    auto use = impl.complete.use();
    use.bind_text(1, msg_id).bind(2, now).run();
  } else {
    auto use = impl.insert.use();
    use.bind_text(1, msg_id).bind(2, detail::inbox_done).bind_null(3).bind(4, now).run();
  }
  {
    // After some errors (disk full, I/O error, RAISE(ROLLBACK)) SQLite rolls
    // the transaction back by itself. A handler that ignored such an error
    // would run its next statements in autocommit mode, each committed on its
    // own without the msg_id, and the redelivery would repeat them. While the
    // handler runs, every commit on this connection is turned into a rollback.
    RefuseCommits refuse(impl.db);
    handler(impl.db);
  }
  if (sqlite3_get_autocommit(impl.db) != 0 || !impl.find(msg_id)) {
    throw Error("outbox: the transaction of process_once for msg_id '" + msg_id +
                "' ended inside the handler (SQLite rolled it back after an error the handler "
                "did not report, or the handler ran COMMIT or ROLLBACK); nothing was recorded");
  }
  transaction.commit();
  return ProcessResult::processed;
}

ProcessResult Inbox::process_once(
    const std::string& msg_id, const TraceContext& trace,
    const std::function<void(sqlite3*, const TraceContext&)>& handler) {
  return process_once(msg_id, [&](sqlite3* db) { handler(db, trace); });
}

Claim Inbox::begin(const std::string& msg_id, std::chrono::milliseconds lease) {
  check_msg_id(msg_id);
  check_lease(lease);
  auto& impl = *impl_;
  auto transaction = impl.write_transaction();
  const auto now = to_ms(impl.options.clock());
  auto entry = impl.find(msg_id);
  Claim claim{BeginResult::claimed, idgen::to_string(idgen::uuid_v4())};
  if (!entry) {
    auto use = impl.insert_claim.use();
    use.bind_text(1, msg_id).bind(2, now + lease.count()).bind_text(3, claim.token).run();
  } else if (entry->state == detail::inbox_done) {
    return Claim{BeginResult::already_done};
  } else if (entry->claimed_until.value_or(0) > now) {
    return Claim{BeginResult::in_progress_elsewhere};
  } else {
    impl.logger->warn("outbox: inbox claim on {} expired; taking it over", msg_id);
    auto use = impl.take_over.use();
    use.bind_text(1, msg_id).bind(2, now + lease.count()).bind_text(3, claim.token).run();
  }
  transaction.commit();
  return claim;
}

ClaimResult Inbox::complete(const std::string& msg_id, const std::string& token) {
  check_msg_id(msg_id);
  check_token(token);
  auto& impl = *impl_;
  auto transaction = impl.write_transaction();
  {
    auto use = impl.complete_claim.use();
    use.bind_text(1, msg_id).bind_text(2, token).bind(3, to_ms(impl.options.clock())).run();
  }
  if (sqlite3_changes(impl.db) > 0) {
    transaction.commit();
    return ClaimResult::ok;
  }
  auto entry = impl.find(msg_id);
  const bool completed_by_token =
      entry && entry->state == detail::inbox_done && entry->token == token;
  return completed_by_token ? ClaimResult::ok : ClaimResult::claim_lost;
}

ClaimResult Inbox::fail(const std::string& msg_id, const std::string& token) {
  check_msg_id(msg_id);
  check_token(token);
  auto& impl = *impl_;
  auto use = impl.release_claim.use();
  use.bind_text(1, msg_id).bind_text(2, token).run();
  return sqlite3_changes(impl.db) > 0 ? ClaimResult::ok : ClaimResult::claim_lost;
}

ClaimResult Inbox::extend(const std::string& msg_id, const std::string& token,
                          std::chrono::milliseconds lease) {
  check_msg_id(msg_id);
  check_token(token);
  check_lease(lease);
  auto& impl = *impl_;
  auto use = impl.extend_claim.use();
  use.bind_text(1, msg_id)
      .bind_text(2, token)
      .bind(3, to_ms(impl.options.clock()) + lease.count())
      .run();
  return sqlite3_changes(impl.db) > 0 ? ClaimResult::ok : ClaimResult::claim_lost;
}

std::size_t Inbox::expire(std::size_t batch_size, std::size_t max_batches) {
  if (batch_size == 0) throw Error("outbox: inbox expiry batch size must be positive");
  auto& impl = *impl_;
  std::size_t removed = 0;
  for (std::size_t batch = 0; batch < max_batches; ++batch) {
    auto transaction = impl.write_transaction();
    const auto cutoff = to_ms(impl.options.clock() - impl.options.retention);
    std::vector<std::string> ids;
    {
      auto use = impl.expired.use();
      use.bind(1, cutoff).bind(2, static_cast<std::int64_t>(batch_size));
      while (use.step()) ids.push_back(use.column_text(0));
    }
    for (const auto& id : ids) {
      auto use = impl.remove.use();
      use.bind_text(1, id).run();
    }
    transaction.commit();
    removed += ids.size();
    if (ids.size() < batch_size) break;
  }
  return removed;
}

}  // namespace outbox
