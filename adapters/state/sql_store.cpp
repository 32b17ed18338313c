// The StateStore in SQL, on SQLite (an embedded file, Poco::Data::SQLite) or PostgreSQL
// (Poco::Data::PostgreSQL over libpq). The statements are the same on both (INSERT ... ON CONFLICT
// ... DO UPDATE, no backend-only types); sql_for numbers the parameters for PostgreSQL, and the
// schema comes from the versioned migrations (migrations.hpp). The rest is opening: the SQLite file
// checks and pragmas, the PostgreSQL URL.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_set>

#include <libpq-fe.h>
#include <sqlite3.h>

#include <Poco/Data/PostgreSQL/Connector.h>
#include <Poco/Data/PostgreSQL/SessionImpl.h>
#include <Poco/Data/RecordSet.h>
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/SQLite/Utility.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/Statement.h>
#include <Poco/Exception.h>
#include <Poco/URI.h>

#include "adapters/state/migrations.hpp"
#include "adapters/state/state_store.hpp"

namespace calcalert::state {
namespace {

using namespace Poco::Data::Keywords;
using Poco::Data::RecordSet;
using Poco::Data::Session;
using Poco::Data::Statement;

// SQLite files of versions 1 and 2 predate the migration files:
//   1 lacked the poll work queue and the feed cursors (0003_baseline.sql creates them);
//   2 (and 1) had CDS Hooks suppressions per (patient, rule) only, bound to no client, card or
//     evidence, in cds_suppressions: upgrade_sqlite_to_3 drops that table (those cards show again until
//     they are overridden anew) and adds issuer, order_ref and evidence_hash to cds_feedback, before
//     0003_baseline.sql, in the same transaction.
constexpr int kSqliteUpgradableFrom[] = {1, 2};

const char* const kFeedbackColumnsOf3[] = {
    "ALTER TABLE cds_feedback ADD COLUMN issuer TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE cds_feedback ADD COLUMN order_ref TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE cds_feedback ADD COLUMN evidence_hash TEXT NOT NULL DEFAULT ''",
};

// Key of the PostgreSQL advisory lock that serializes migrations between processes starting at once.
constexpr long long kMigrationLock = 7274000301LL;

struct Connection {
    SqlBackend backend;
    std::string location;  // for messages; never a password
    Session session;
    std::string conninfo;  // PostgreSQL: libpq's connection string, to connect again (may hold the password)
    std::string password;  // PostgreSQL: from password_file ("" if none), kept out of every message
};

// A session on PostgreSQL; StateError naming `shown`, with libpq's reason (never the password).
Session postgresql_session(const std::string& shown, const std::string& conninfo, const std::string& password) {
    auto hide_password = [&](std::string why) {
        for (auto at = why.find(password); !password.empty() && at != std::string::npos; at = why.find(password))
            why.replace(at, password.size(), "***");
        return why;
    };
    // First a connection of libpq's own, closed at once: a server that cannot be reached is reported
    // with libpq's message, and without Poco's session (whose failed connect does not free the
    // connection it made).
    {
        PGconn* probe = PQconnectdb(conninfo.c_str());
        if (probe == nullptr) throw StateError(shown + ": cannot connect: out of memory");
        if (PQstatus(probe) != CONNECTION_OK) {
            std::string why = PQerrorMessage(probe);
            PQfinish(probe);
            while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
            throw StateError(shown + ": cannot connect: " + hide_password(why));
        }
        PQfinish(probe);
    }
    static std::once_flag registered;
    std::call_once(registered, [] { Poco::Data::PostgreSQL::Connector::registerConnector(); });
    try {
        Session session(Poco::Data::PostgreSQL::Connector::KEY, conninfo);
        // Nothing of the server's goes to stderr through libpq: notices ("relation already exists,
        // skipping") are turned off, and warnings sent outside an answer ("terminating connection due
        // to immediate shutdown command" as it goes down) are dropped, between the JSON log lines;
        // a failed statement reports the error itself.
        session << "SET client_min_messages TO WARNING", now;
        if (auto* impl = dynamic_cast<Poco::Data::PostgreSQL::SessionImpl*>(session.impl()))
            PQsetNoticeProcessor(impl->handle(), [](void*, const char*) {}, nullptr);
        return session;
    } catch (const Poco::Exception& e) {
        // libpq's message may repeat the connection string; never show a password.
        throw StateError(shown + ": cannot connect: " + hide_password(e.displayText()));
    }
}

// An SQLite statement compiled once for the life of its connection and run again with new values
// (sqlite3_reset, rebind): the per-call reads of the CDS service would otherwise spend most of
// their time in sqlite3_prepare. Only for statements whose text never changes.
class SqlitePrepared {
public:
    SqlitePrepared(sqlite3* db, std::string where, const char* sql) : db_(db), where_(std::move(where)) {
        if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr) != SQLITE_OK)
            throw StateError(where_ + ": cannot prepare a statement: " + sqlite3_errmsg(db));
    }
    SqlitePrepared(const SqlitePrepared&) = delete;
    SqlitePrepared& operator=(const SqlitePrepared&) = delete;
    ~SqlitePrepared() { sqlite3_finalize(stmt_); }

    // Binds `text` then `integers` to the parameters in order and calls row(stmt) for each row.
    template <class Row>
    void run(const std::vector<const std::string*>& text, const std::vector<std::int64_t>& integers, Row&& row) {
        struct Reset {
            sqlite3_stmt* s;
            ~Reset() {
                sqlite3_reset(s);
                sqlite3_clear_bindings(s);
            }
        } reset{stmt_};
        int i = 1;
        for (const auto* t : text)
            check(sqlite3_bind_text(stmt_, i++, t->data(), static_cast<int>(t->size()), SQLITE_STATIC));
        for (const auto n : integers) check(sqlite3_bind_int64(stmt_, i++, n));
        for (;;) {
            const int rc = sqlite3_step(stmt_);
            if (rc == SQLITE_DONE) return;
            if (rc != SQLITE_ROW) throw StateError(where_ + ": a statement failed: " + sqlite3_errmsg(db_));
            row(stmt_);
        }
    }

    // Binds as run() does and runs a statement that returns no rows: the number of rows it changed.
    int execute(const std::vector<const std::string*>& text, const std::vector<std::int64_t>& integers) {
        run(text, integers, [](sqlite3_stmt*) {});
        return sqlite3_changes(db_);
    }

    static std::string text(sqlite3_stmt* s, int column) {
        const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, column));
        return p == nullptr ? std::string() : std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s, column)));
    }

private:
    void check(int rc) const {
        if (rc != SQLITE_OK) throw StateError(where_ + ": cannot bind a value: " + sqlite3_errmsg(db_));
    }
    sqlite3* db_;
    std::string where_;  // the database, for messages
    sqlite3_stmt* stmt_ = nullptr;
};

struct PostgresClear {
    void operator()(PGresult* r) const { PQclear(r); }
};
using PostgresResult = std::unique_ptr<PGresult, PostgresClear>;

[[noreturn]] void postgres_failure(PGconn* conn, const std::string& where, const char* what, PGresult* r) {
    const char* why = r != nullptr ? PQresultErrorMessage(r) : nullptr;
    std::string line = why != nullptr && *why != '\0' ? why : PQerrorMessage(conn);
    line = line.substr(0, line.find('\n'));
    throw StateError(where + ": " + what + ": " + (line.empty() ? "no answer" : line));
}

// Runs a statement on `conn` with text parameters: the statement prepared as `name`
// (PQexecPrepared), or `sql` itself when `name` is null (PQexecParams). Calls row(result, i) for
// each row; returns the number of rows it changed.
template <class Row>
int postgres_exec(PGconn* conn, const std::string& where, const char* name, const char* sql,
                  const std::vector<const char*>& values, const std::vector<int>& lengths, Row&& row) {
    const int n = static_cast<int>(values.size());
    PostgresResult r(name != nullptr ? PQexecPrepared(conn, name, n, values.data(), lengths.data(), nullptr, 0)
                                     : PQexecParams(conn, sql, n, nullptr, values.data(), lengths.data(), nullptr, 0));
    const ExecStatusType status = PQresultStatus(r.get());
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) postgres_failure(conn, where, "a statement failed", r.get());
    for (int i = 0; i < PQntuples(r.get()); ++i) row(r.get(), i);
    const char* changed = PQcmdTuples(r.get());
    return changed == nullptr || *changed == '\0' ? 0 : std::atoi(changed);
}

// A PostgreSQL statement prepared once on a connection (PQprepare) and run with libpq directly
// (PQexecPrepared), instead of a new Poco Statement on every call. Parameters go as text; `sql` uses
// $1, $2, ... The connection is the store's own (its transaction, if one is open).
class PostgresPrepared {
public:
    PostgresPrepared(PGconn* conn, std::string where, std::string name, const std::string& sql)
        : conn_(conn), where_(std::move(where)), name_(std::move(name)) {
        PostgresResult r(PQprepare(conn_, name_.c_str(), sql.c_str(), 0, nullptr));
        if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) postgres_failure(conn_, where_, "cannot prepare a statement", r.get());
    }
    PostgresPrepared(const PostgresPrepared&) = delete;
    PostgresPrepared& operator=(const PostgresPrepared&) = delete;
    ~PostgresPrepared() = default;  // the statement ends with its connection

    // Binds `text` then `integers` to the parameters in order and calls row(result, i) for each row.
    template <class Row>
    int run(const std::vector<const std::string*>& text, const std::vector<std::int64_t>& integers, Row&& row) {
        std::vector<std::string> numbers;
        numbers.reserve(integers.size());
        for (const auto n : integers) numbers.push_back(std::to_string(n));
        std::vector<const char*> values;
        std::vector<int> lengths;
        for (const auto* t : text) {
            values.push_back(t->c_str());
            lengths.push_back(static_cast<int>(t->size()));
        }
        for (const auto& n : numbers) {
            values.push_back(n.c_str());
            lengths.push_back(static_cast<int>(n.size()));
        }
        return postgres_exec(conn_, where_, name_.c_str(), nullptr, values, lengths, row);
    }
    // A statement that returns no rows: the number of rows it changed.
    int execute(const std::vector<const std::string*>& text, const std::vector<std::int64_t>& integers) {
        return run(text, integers, [](PGresult*, int) {});
    }

private:
    PGconn* conn_;
    std::string where_;
    std::string name_;
};

// The CDS call's two reads, the same text on both backends (each runs them prepared once per
// connection, through SqlitePrepared or PostgresPrepared), and their rows, built by one function
// whatever reads the columns: `text(i)` and `integer(i)` give column i.
const char* const kIssuedCardColumns =
    "SELECT issuer, service_id, card_uuid, patient, rule_id, order_ref, severity, evidence_hash, issued_at"
    " FROM cds_issued_cards ";
const char* const kIssuedForPatient = "WHERE issuer = ? AND service_id = ? AND patient = ? ORDER BY card_uuid";
const char* const kOverridesInForce =
    "SELECT issuer, patient, rule_id, order_ref, card_uuid, evidence_hash, until_at FROM cds_overrides"
    " WHERE issuer = ? AND patient = ? AND until_at > ? ORDER BY rule_id, order_ref";

template <class Text, class Integer>
IssuedCard issued_card_row(Text&& text, Integer&& integer) {
    IssuedCard c;
    c.issuer = text(0);
    c.service_id = text(1);
    c.card_uuid = text(2);
    c.patient = text(3);
    c.rule_id = text(4);
    c.order = text(5);
    c.severity = text(6);
    c.evidence_hash = text(7);
    c.issued_at = integer(8);
    return c;
}

template <class Text, class Integer>
CardOverride override_row(Text&& text, Integer&& integer) {
    CardOverride o;
    o.issuer = text(0);
    o.patient = text(1);
    o.rule_id = text(2);
    o.order = text(3);
    o.card_uuid = text(4);
    o.evidence_hash = text(5);
    o.until = integer(6);
    return o;
}

// Copies an SQLite file's write-ahead log into the database every `interval`, on a thread and a
// connection of its own, so that no caller's commit does it. SQLite's own checkpoint (the store
// turns it off) runs inside the commit that fills the log past 1,000 pages and waits for the disk
// twice: at 1,000 CDS calls a second it stalled about one call in a hundred by milliseconds. The
// checkpoint is PASSIVE: it never blocks a reader or a writer, and copies only what no reader
// still needs (the next pass copies the rest). Durability is unchanged: a commit is durable in the
// log (synchronous=FULL), which survives until it has been copied.
class WalCheckpointer {
public:
    WalCheckpointer(const std::string& path, std::chrono::milliseconds interval) : interval_(interval) {
        if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
            const std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
            sqlite3_close(db_);
            throw StateError(path + ": cannot open a connection for the checkpoints: " + why);
        }
        sqlite3_busy_timeout(db_, 0);  // a busy checkpoint is tried again at the next pass
        thread_ = std::thread([this] { run(); });
    }
    WalCheckpointer(const WalCheckpointer&) = delete;
    WalCheckpointer& operator=(const WalCheckpointer&) = delete;
    ~WalCheckpointer() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_one();
        thread_.join();
        sqlite3_close(db_);
    }

private:
    void run() {
        std::unique_lock lock(mutex_);
        while (!wake_.wait_for(lock, interval_, [this] { return stopping_; })) {
            // A connection that has read nothing yet does not know the file is in WAL mode (the
            // checkpoint would do nothing): a read of the schema's version first.
            sqlite3_exec(db_, "PRAGMA schema_version", nullptr, nullptr, nullptr);
            sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
        }
    }

    sqlite3* db_ = nullptr;
    std::chrono::milliseconds interval_;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;
    std::thread thread_;
};

constexpr std::chrono::milliseconds kCheckpointInterval{1000};

// Column readers of one row, for the row builders above.
struct SqliteText {
    sqlite3_stmt* st;
    std::string operator()(int i) const { return SqlitePrepared::text(st, i); }
};
struct SqliteInteger {
    sqlite3_stmt* st;
    std::int64_t operator()(int i) const { return sqlite3_column_int64(st, i); }
};
struct PostgresText {
    PGresult* r;
    int row;
    std::string operator()(int i) const {
        return std::string(PQgetvalue(r, row, i), static_cast<std::size_t>(PQgetlength(r, row, i)));
    }
};
struct PostgresInteger {
    PGresult* r;
    int row;
    std::int64_t operator()(int i) const { return std::strtoll(PQgetvalue(r, row, i), nullptr, 10); }
};
struct RecordText {
    RecordSet& rs;
    std::size_t row;
    std::string operator()(int i) const { return rs.value(static_cast<std::size_t>(i), row).convert<std::string>(); }
};
struct RecordInteger {
    RecordSet& rs;
    std::size_t row;
    std::int64_t operator()(int i) const { return rs.value(static_cast<std::size_t>(i), row).convert<Poco::Int64>(); }
};

class SqlStore final : public StateStore {
public:
    explicit SqlStore(Connection c)
        : backend_(c.backend), location_(std::move(c.location)), session_(std::move(c.session)), conninfo_(std::move(c.conninfo)),
          password_(std::move(c.password)) {
        try {
            if (backend_ == SqlBackend::sqlite) {
                session_ << "PRAGMA busy_timeout = 5000", now;
                if (location_ != ":memory:") {
                    session_ << "PRAGMA journal_mode = WAL", now;
                    session_ << "PRAGMA synchronous = FULL", now;
                    session_ << "PRAGMA wal_autocheckpoint = 0", now;  // WalCheckpointer does it
                }
            }
            migrate();
        } catch (const Poco::Exception& e) {
            throw StateError(location_ + ": " + e.displayText());
        }
        if (backend_ == SqlBackend::sqlite && location_ != ":memory:")
            checkpointer_ = std::make_unique<WalCheckpointer>(location_, kCheckpointInterval);
    }

    std::string backend() const override { return backend_ == SqlBackend::sqlite ? "sqlite" : "postgresql"; }
    std::string location() const override { return location_; }

    void transaction(const std::function<void()>& work) override {
        std::lock_guard lock(mutex_);
        if (depth_ > 0) {
            // Nested: a savepoint inside the open transaction; an exception undoes only its writes.
            const std::string name = "nested_" + std::to_string(depth_);
            run([&] { session_ << "SAVEPOINT " + name, now; });
            ++depth_;
            try {
                work();
            } catch (...) {
                --depth_;
                try {
                    session_ << "ROLLBACK TO SAVEPOINT " + name, now;
                    session_ << "RELEASE SAVEPOINT " + name, now;
                } catch (...) {
                }
                throw;
            }
            --depth_;
            run([&] { session_ << "RELEASE SAVEPOINT " + name, now; });
            return;
        }
        reconnect_if_dropped();
        run([&] { session_.begin(); });
        depth_ = 1;
        try {
            work();
            run([&] { session_.commit(); });
        } catch (...) {
            depth_ = 0;
            try {
                session_.rollback();
            } catch (...) {
            }
            throw;
        }
        depth_ = 0;
    }

    std::optional<std::string> watermark(const std::string& server, const std::string& type) override {
        return locked([&]() -> std::optional<std::string> {
            std::string value;
            Statement s(session_);
            s << q("SELECT value FROM watermarks WHERE server = ? AND resource_type = ?"), bind(server), bind(type),
                into(value);
            if (s.execute() == 0) return std::nullopt;
            return value;
        });
    }

    void set_watermark(const std::string& server, const std::string& type, const std::string& value) override {
        locked([&] {
            session_ << q("INSERT INTO watermarks (server, resource_type, value) VALUES (?, ?, ?)"
                        " ON CONFLICT (server, resource_type) DO UPDATE SET value = excluded.value"),
                bind(server), bind(type), bind(value), now;
        });
    }

    bool seen_version(const std::string& server, const std::string& reference, const std::string& version) override {
        return locked([&] {
            Poco::Int64 n = 0;
            session_ << q("SELECT COUNT(*) FROM seen_versions WHERE server = ? AND reference = ? AND version = ?"),
                bind(server), bind(reference), bind(version), into(n), now;
            return n > 0;
        });
    }

    void mark_seen(const std::string& server, const std::string& reference, const std::string& version,
                   EpochSeconds last_updated) override {
        locked([&] {
            session_ << q("INSERT INTO seen_versions (server, reference, version, last_updated) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (server, reference, version) DO NOTHING"),
                bind(server), bind(reference), bind(version), bind(static_cast<Poco::Int64>(last_updated)), now;
        });
    }

    void forget_seen_before(const std::string& server, EpochSeconds before) override {
        locked([&] {
            session_ << q("DELETE FROM seen_versions WHERE server = ? AND last_updated < ?"), bind(server),
                bind(static_cast<Poco::Int64>(before)), now;
        });
    }

    bool counted_resource(const std::string& server, const std::string& reference) override {
        return locked([&] {
            Poco::Int64 n = 0;
            session_ << q("SELECT COUNT(*) FROM counted_resources WHERE server = ? AND reference = ?"), bind(server),
                bind(reference), into(n), now;
            return n > 0;
        });
    }

    void set_counted_resource(const std::string& server, const std::string& reference, bool counts) override {
        locked([&] {
            if (counts)
                session_ << q("INSERT INTO counted_resources (server, reference) VALUES (?, ?)"
                              " ON CONFLICT (server, reference) DO NOTHING"),
                    bind(server), bind(reference), now;
            else
                session_ << q("DELETE FROM counted_resources WHERE server = ? AND reference = ?"), bind(server),
                    bind(reference), now;
        });
    }

    void enqueue_patient(const std::string& server, const std::string& patient, EpochSeconds now_s) override {
        locked([&] {
            session_ << q("INSERT INTO poll_pending (server, patient, attempts, last_error, queued_at, generation)"
                          " VALUES (?, ?, 0, '', ?, 0)"
                          " ON CONFLICT (server, patient) DO UPDATE SET generation = poll_pending.generation + 1"),
                bind(server), bind(patient), bind(static_cast<Poco::Int64>(now_s)), now;
        });
    }

    std::vector<PendingPatient> pending_patients(const std::string& server) override {
        return select_pending("WHERE server = ? ORDER BY patient", {server});
    }

    std::optional<PendingPatient> pending_patient(const std::string& server, const std::string& patient) override {
        auto rows = select_pending("WHERE server = ? AND patient = ?", {server, patient});
        if (rows.empty()) return std::nullopt;
        return rows.front();
    }

    void finish_patient(const std::string& server, const std::string& patient, std::int64_t generation) override {
        locked([&] {
            session_ << q("DELETE FROM poll_pending WHERE server = ? AND patient = ? AND generation = ?"), bind(server),
                bind(patient), bind(static_cast<Poco::Int64>(generation)), now;
        });
    }

    void defer_patient(const std::string& server, const std::string& patient, const std::string& error) override {
        locked([&] {
            session_ << q("INSERT INTO poll_pending (server, patient, attempts, last_error, queued_at) VALUES (?, ?, 1, ?, 0)"
                        " ON CONFLICT (server, patient) DO UPDATE SET attempts = poll_pending.attempts + 1,"
                        " last_error = excluded.last_error"),
                bind(server), bind(patient), bind(error), now;
        });
    }

    std::optional<FeedCursor> feed_cursor(const std::string& server, const std::string& type) override {
        return locked([&]() -> std::optional<FeedCursor> {
            FeedCursor c;
            Poco::Int64 at = 0;
            Statement s(session_);
            s << q("SELECT next_url, max_last_updated, max_last_updated_at FROM poll_feed_cursors"
                 " WHERE server = ? AND resource_type = ?"),
                bind(server), bind(type), into(c.next_url), into(c.max_last_updated), into(at);
            if (s.execute() == 0) return std::nullopt;
            c.max_last_updated_at = at;
            return c;
        });
    }

    void set_recheck(const std::string& server, const std::string& patient, const Recheck& r) override {
        locked([&] {
            session_ << q("INSERT INTO poll_rechecks (server, patient, recheck_at, basis) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (server, patient) DO UPDATE SET recheck_at = excluded.recheck_at, basis = excluded.basis"),
                bind(server), bind(patient), bind(static_cast<Poco::Int64>(r.at)), bind(r.basis), now;
        });
    }

    std::map<std::string, Recheck> rechecks(const std::string& server) override {
        return locked([&] {
            Statement s(session_);
            s << q("SELECT patient, recheck_at, basis FROM poll_rechecks WHERE server = ?"), bind(server);
            s.execute();
            RecordSet rs(s);
            std::map<std::string, Recheck> out;
            for (std::size_t i = 0; i < rs.rowCount(); ++i)
                out[rs.value(0, i).convert<std::string>()] =
                    Recheck{rs.value(1, i).convert<Poco::Int64>(), rs.value(2, i).convert<std::string>()};
            return out;
        });
    }

    void set_feed_cursor(const std::string& server, const std::string& type, const FeedCursor& c) override {
        locked([&] {
            session_ << q("INSERT INTO poll_feed_cursors (server, resource_type, next_url, max_last_updated,"
                        " max_last_updated_at) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (server, resource_type) DO UPDATE SET next_url = excluded.next_url,"
                        " max_last_updated = excluded.max_last_updated, max_last_updated_at = excluded.max_last_updated_at"),
                bind(server), bind(type), bind(c.next_url), bind(c.max_last_updated),
                bind(static_cast<Poco::Int64>(c.max_last_updated_at)), now;
        });
    }

    void clear_feed_cursor(const std::string& server, const std::string& type) override {
        locked([&] {
            session_ << q("DELETE FROM poll_feed_cursors WHERE server = ? AND resource_type = ?"), bind(server), bind(type),
                now;
        });
    }

    std::optional<AlertRecord> alert(const std::string& server, const std::string& identifier) override {
        auto rows = select_alerts("WHERE server = ? AND identifier = ?", {server, identifier});
        if (rows.empty()) return std::nullopt;
        return rows.front();
    }

    std::vector<AlertRecord> alerts_for_patient(const std::string& server, const std::string& patient) override {
        return select_alerts("WHERE server = ? AND patient = ? ORDER BY rule_id", {server, patient});
    }

    std::vector<AlertRecord> alerts(const std::string& server) override {
        return select_alerts("WHERE server = ? ORDER BY patient, rule_id", {server});
    }

    void put_alert(const AlertRecord& r) override {
        locked([&] {
            session_ << q("INSERT INTO alerts (server, identifier, patient, rule_id, evidence_hash, status, server_id,"
                        " server_version, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (server, identifier) DO UPDATE SET patient = excluded.patient,"
                        " rule_id = excluded.rule_id, evidence_hash = excluded.evidence_hash, status = excluded.status,"
                        " server_id = excluded.server_id, server_version = excluded.server_version,"
                        " updated_at = excluded.updated_at"),
                bind(r.server), bind(r.identifier), bind(r.patient), bind(r.rule_id), bind(r.evidence_hash),
                bind(r.status), bind(r.server_id), bind(r.server_version),
                bind(static_cast<Poco::Int64>(r.updated_at)), now;
        });
    }

    std::int64_t begin_run(const std::string& server, EpochSeconds started_at) override {
        return locked([&] {
            // The database assigns the id (another process may share the file): never MAX(id) + 1.
            const std::string insert =
                "INSERT INTO runs (server, started_at, finished_at, outcome, summary) VALUES (?, ?, 0, 'running', '{}')";
            Poco::Int64 id = 0;
            if (backend_ == SqlBackend::postgresql) {
                session_ << q(insert + " RETURNING id"), bind(server), bind(static_cast<Poco::Int64>(started_at)), into(id), now;
            } else {
                session_ << q(insert), bind(server), bind(static_cast<Poco::Int64>(started_at)), now;
                session_ << "SELECT last_insert_rowid()", into(id), now;
            }
            return static_cast<std::int64_t>(id);
        });
    }

    void finish_run(std::int64_t run_id, EpochSeconds finished_at, const std::string& outcome,
                    const std::string& summary_json) override {
        locked([&] {
            session_ << q("UPDATE runs SET finished_at = ?, outcome = ?, summary = ? WHERE id = ?"),
                bind(static_cast<Poco::Int64>(finished_at)), bind(outcome), bind(summary_json),
                bind(static_cast<Poco::Int64>(run_id)), now;
        });
    }

    std::vector<RunRecord> runs(const std::string& server, std::size_t limit) override {
        return locked([&] {
            Statement s(session_);
            s << q("SELECT id, server, started_at, finished_at, outcome, summary FROM runs WHERE server = ?"
                 " ORDER BY id DESC LIMIT ?"),
                bind(server), bind(static_cast<Poco::Int64>(limit));
            s.execute();
            RecordSet rs(s);
            std::vector<RunRecord> out;
            for (std::size_t i = 0; i < rs.rowCount(); ++i) {
                RunRecord r;
                r.id = rs.value(0, i).convert<Poco::Int64>();
                r.server = rs.value(1, i).convert<std::string>();
                r.started_at = rs.value(2, i).convert<Poco::Int64>();
                r.finished_at = rs.value(3, i).convert<Poco::Int64>();
                r.outcome = rs.value(4, i).convert<std::string>();
                r.summary_json = rs.value(5, i).convert<std::string>();
                out.push_back(std::move(r));
            }
            return out;
        });
    }

    bool remember_jti(const std::string& issuer, const std::string& jti, EpochSeconds expires_at,
                      EpochSeconds now_s) override {
        return locked([&] {
            // A replay record is needed only until its token expires (minutes), and is checked on
            // every call: its commit does not wait for the disk, unless it is part of a caller's
            // transaction. On SQLite (WAL) synchronous=NORMAL for this one commit: it survives a
            // crash of the process, and is lost only with the machine's power within the last
            // moments (a token presented again after that is accepted once more). On PostgreSQL
            // synchronous_commit is off for this one transaction (set_config(..., true) inside the
            // INSERT itself, one round trip): the record is visible to every replica as soon as it
            // commits; only its flush to disk is deferred.
            const bool relaxed = depth_ == 0;
            purge_expired_jtis(now_s);
            if (backend_ == SqlBackend::sqlite) {
                const RelaxedCommits restore(this, relaxed);
                return compiled_once(jti_insert_, kJtiInsert.c_str()).execute({&issuer, &jti}, {expires_at, now_s}) == 1;
            }
            static const std::string relaxed_insert =
                std::string("INSERT INTO cds_jti (issuer, jti, expires_at) SELECT CAST(? AS TEXT), CAST(? AS TEXT),"
                            " CAST(? AS BIGINT) FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed") +
                kJtiTakeOver;
            auto& statement = relaxed ? prepared_once(pg_jti_relaxed_, "calcalert_jti_relaxed", relaxed_insert)
                                      : prepared_once(pg_jti_, "calcalert_jti", kJtiInsert);
            return statement.execute({&issuer, &jti}, {expires_at, now_s}) == 1;
        });
    }

    bool jti_recorded(const std::string& issuer, const std::string& jti, EpochSeconds now_s) override {
        return locked([&] {
            static const std::string select = "SELECT 1 FROM cds_jti WHERE issuer = ? AND jti = ? AND expires_at >= ?";
            bool found = false;
            if (backend_ == SqlBackend::sqlite)
                compiled_once(jti_select_, select.c_str()).run({&issuer, &jti}, {now_s}, [&](sqlite3_stmt*) { found = true; });
            else
                prepared_once(pg_jti_select_, "calcalert_jti_select", select).run({&issuer, &jti}, {now_s},
                                                                                  [&](PGresult*, int) { found = true; });
            return found;
        });
    }

    std::vector<std::size_t> remember_jtis(const std::vector<JtiRecord>& records, EpochSeconds now_s) override {
        std::vector<std::size_t> replays;
        if (records.empty()) return replays;
        locked([&] {
            // The same durability as remember_jti's, for the batch's one commit.
            const bool relaxed = depth_ == 0;
            if (backend_ == SqlBackend::sqlite) {
                const RelaxedCommits restore(this, relaxed);
                transaction([&] {
                    purge_expired_jtis(now_s);
                    auto& insert = compiled_once(jti_insert_, kJtiInsert.c_str());
                    for (std::size_t i = 0; i < records.size(); ++i)
                        if (insert.execute({&records[i].issuer, &records[i].jti}, {records[i].expires_at, now_s}) != 1)
                            replays.push_back(i);
                });
                return;
            }
            transaction([&] {
                if (relaxed) session_ << "SET LOCAL synchronous_commit = off", now;
                purge_expired_jtis(now_s);
                postgres_remember_jtis(records, now_s, replays);
            });
        });
        return replays;
    }

    bool claim(const std::string& server, const std::string& subject, const std::string& owner, EpochSeconds until,
               EpochSeconds now_s) override {
        return locked([&] {
            Statement s(session_);
            s << q("INSERT INTO poll_leases (server, subject, owner, expires_at) VALUES (?, ?, ?, ?)"
                   " ON CONFLICT (server, subject) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
                   " WHERE poll_leases.owner = excluded.owner OR poll_leases.expires_at <= ?"),
                bind(server), bind(subject), bind(owner), bind(static_cast<Poco::Int64>(until)),
                bind(static_cast<Poco::Int64>(now_s));
            return s.execute() == 1;
        });
    }

    void release(const std::string& server, const std::string& subject, const std::string& owner) override {
        locked([&] {
            session_ << q("DELETE FROM poll_leases WHERE server = ? AND subject = ? AND owner = ?"), bind(server),
                bind(subject), bind(owner), now;
        });
    }

    std::string lease_holder(const std::string& server, const std::string& subject, EpochSeconds now_s) override {
        return locked([&] {
            std::string owner;
            Statement s(session_);
            s << q("SELECT owner FROM poll_leases WHERE server = ? AND subject = ? AND expires_at > ?"), bind(server),
                bind(subject), bind(static_cast<Poco::Int64>(now_s)), into(owner);
            s.execute();
            return owner;
        });
    }

    void finish_shard(const std::string& server, const std::string& job, int shard, int shards, EpochSeconds at) override {
        locked([&] {
            session_ << q("INSERT INTO backfill_shards (server, job, shard, shards, finished_at) VALUES (?, ?, ?, ?, ?)"
                          " ON CONFLICT (server, job, shard) DO NOTHING"),
                bind(server), bind(job), bind(shard), bind(shards), bind(static_cast<Poco::Int64>(at)), now;
        });
    }

    std::set<int> finished_shards(const std::string& server, const std::string& job) override {
        return locked([&] {
            Statement s(session_);
            s << q("SELECT shard FROM backfill_shards WHERE server = ? AND job = ?"), bind(server), bind(job);
            s.execute();
            RecordSet rs(s);
            std::set<int> out;
            for (std::size_t i = 0; i < rs.rowCount(); ++i) out.insert(rs.value(0, i).convert<int>());
            return out;
        });
    }

    std::optional<Recheck> recheck(const std::string& server, const std::string& patient) override {
        return locked([&]() -> std::optional<Recheck> {
            Poco::Int64 at = 0;
            std::string basis;
            Statement s(session_);
            s << q("SELECT recheck_at, basis FROM poll_rechecks WHERE server = ? AND patient = ?"), bind(server),
                bind(patient), into(at), into(basis);
            if (s.execute() == 0) return std::nullopt;
            return Recheck{at, basis};
        });
    }

    void record_feedback(const FeedbackRecord& f) override {
        locked([&] {
            session_ << q("INSERT INTO cds_feedback (service_id, card_uuid, patient, rule_id, outcome,"
                        " override_reason, outcome_at, received_at, issuer, order_ref, evidence_hash)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                bind(f.service_id), bind(f.card_uuid), bind(f.patient), bind(f.rule_id), bind(f.outcome),
                bind(f.override_reason), bind(static_cast<Poco::Int64>(f.outcome_at)),
                bind(static_cast<Poco::Int64>(f.received_at)), bind(f.issuer), bind(f.order), bind(f.evidence_hash), now;
        });
    }

    std::vector<FeedbackRecord> feedback(const std::string& patient, const std::string& rule_id) override {
        return locked([&] {
            Statement s(session_);
            s << q("SELECT service_id, card_uuid, patient, rule_id, outcome, override_reason, outcome_at, received_at,"
                 " issuer, order_ref, evidence_hash FROM cds_feedback WHERE patient = ? AND rule_id = ? ORDER BY id"),
                bind(patient), bind(rule_id);
            s.execute();
            RecordSet rs(s);
            std::vector<FeedbackRecord> out;
            for (std::size_t i = 0; i < rs.rowCount(); ++i) {
                FeedbackRecord f;
                f.service_id = rs.value(0, i).convert<std::string>();
                f.card_uuid = rs.value(1, i).convert<std::string>();
                f.patient = rs.value(2, i).convert<std::string>();
                f.rule_id = rs.value(3, i).convert<std::string>();
                f.outcome = rs.value(4, i).convert<std::string>();
                f.override_reason = rs.value(5, i).convert<std::string>();
                f.outcome_at = rs.value(6, i).convert<Poco::Int64>();
                f.received_at = rs.value(7, i).convert<Poco::Int64>();
                f.issuer = rs.value(8, i).convert<std::string>();
                f.order = rs.value(9, i).convert<std::string>();
                f.evidence_hash = rs.value(10, i).convert<std::string>();
                out.push_back(std::move(f));
            }
            return out;
        });
    }

    void put_issued_card(const IssuedCard& c) override {
        locked([&] {
            session_ << q("INSERT INTO cds_issued_cards (issuer, service_id, card_uuid, patient, rule_id, order_ref, severity,"
                        " evidence_hash, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (issuer, service_id, card_uuid) DO UPDATE SET patient = excluded.patient,"
                        " rule_id = excluded.rule_id, order_ref = excluded.order_ref, severity = excluded.severity,"
                        " evidence_hash = excluded.evidence_hash, issued_at = excluded.issued_at"),
                bind(c.issuer), bind(c.service_id), bind(c.card_uuid), bind(c.patient), bind(c.rule_id), bind(c.order),
                bind(c.severity), bind(c.evidence_hash), bind(static_cast<Poco::Int64>(c.issued_at)), now;
        });
    }

    std::optional<IssuedCard> issued_card(const std::string& issuer, const std::string& service_id,
                                          const std::string& card_uuid) override {
        auto rows = select_issued("WHERE issuer = ? AND service_id = ? AND card_uuid = ?", {issuer, service_id, card_uuid});
        if (rows.empty()) return std::nullopt;
        return rows.front();
    }

    std::vector<IssuedCard> issued_cards_for_patient(const std::string& issuer, const std::string& service_id,
                                                     const std::string& patient) override {
        static const std::string sql = std::string(kIssuedCardColumns) + kIssuedForPatient;
        if (backend_ == SqlBackend::sqlite)
            return locked([&] {
                std::vector<IssuedCard> out;
                compiled_once(issued_for_patient_, sql.c_str()).run({&issuer, &service_id, &patient}, {}, [&](sqlite3_stmt* st) {
                    out.push_back(issued_card_row(SqliteText{st}, SqliteInteger{st}));
                });
                return out;
            });
        return locked([&] {
            std::vector<IssuedCard> out;
            prepared_once(pg_issued_for_patient_, "calcalert_issued_for_patient", sql)
                .run({&issuer, &service_id, &patient}, {}, [&](PGresult* r, int row) {
                    out.push_back(issued_card_row(PostgresText{r, row}, PostgresInteger{r, row}));
                });
            return out;
        });
    }

    void put_override(const CardOverride& o) override {
        locked([&] {
            session_ << q("INSERT INTO cds_overrides (issuer, patient, rule_id, order_ref, card_uuid, evidence_hash, until_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (issuer, patient, rule_id, order_ref) DO UPDATE SET card_uuid = excluded.card_uuid,"
                        " evidence_hash = excluded.evidence_hash, until_at = excluded.until_at"),
                bind(o.issuer), bind(o.patient), bind(o.rule_id), bind(o.order), bind(o.card_uuid), bind(o.evidence_hash),
                bind(static_cast<Poco::Int64>(o.until)), now;
        });
    }

    std::vector<CardOverride> overrides_in_force(const std::string& issuer, const std::string& patient,
                                                 EpochSeconds now_s) override {
        if (backend_ == SqlBackend::sqlite)
            return locked([&] {
                std::vector<CardOverride> out;
                compiled_once(overrides_in_force_, kOverridesInForce).run({&issuer, &patient}, {now_s}, [&](sqlite3_stmt* st) {
                    out.push_back(override_row(SqliteText{st}, SqliteInteger{st}));
                });
                return out;
            });
        return locked([&] {
            std::vector<CardOverride> out;
            prepared_once(pg_overrides_in_force_, "calcalert_overrides_in_force", kOverridesInForce)
                .run({&issuer, &patient}, {now_s}, [&](PGresult* r, int row) {
                    out.push_back(override_row(PostgresText{r, row}, PostgresInteger{r, row}));
                });
            return out;
        });
    }

private:
    static constexpr EpochSeconds kJtiPurgeSeconds = 60;
    EpochSeconds jti_purged_at_ = 0;  // now_s of the last purge of expired replay records

    std::string q(const std::string& portable) const { return sql_for(portable, backend_); }

    // One statement, atomic on both databases: another process that recorded the same jti first
    // makes this one change nothing; a record of that jti that has expired (not yet purged) is taken
    // over.
    static constexpr const char* kJtiTakeOver =
        " ON CONFLICT (issuer, jti) DO UPDATE SET expires_at = excluded.expires_at WHERE cds_jti.expires_at < ?";
    static inline const std::string kJtiInsert =
        std::string("INSERT INTO cds_jti (issuer, jti, expires_at) VALUES (?, ?, ?)") + kJtiTakeOver;

    // Expired replay records are purged at most once a minute (of now_s), not on every call: the
    // table stays bounded, and no check depends on the purge.
    void purge_expired_jtis(EpochSeconds now_s) {
        if (now_s >= jti_purged_at_ && now_s - jti_purged_at_ < kJtiPurgeSeconds) return;
        session_ << q("DELETE FROM cds_jti WHERE expires_at < ?"), bind(static_cast<Poco::Int64>(now_s)), now;
        jti_purged_at_ = now_s;
    }

    // PostgreSQL: remember_jtis' records, up to kJtiRows in a statement (one round trip each); a
    // record not among the rows the INSERT returns was a replay, and so is a repeat inside the batch.
    void postgres_remember_jtis(const std::vector<JtiRecord>& records, EpochSeconds now_s, std::vector<std::size_t>& replays) {
        constexpr std::size_t kJtiRows = 500;
        auto* impl = dynamic_cast<Poco::Data::PostgreSQL::SessionImpl*>(session_.impl());
        if (impl == nullptr) throw StateError(location_ + ": not a PostgreSQL session");
        const std::string now_text = std::to_string(now_s);
        const auto key = jti_key;
        std::unordered_set<std::string> seen;
        for (std::size_t from = 0; from < records.size(); from += kJtiRows) {
            std::vector<std::size_t> rows;  // indexes of records in this statement
            std::vector<std::string> expiries;
            for (std::size_t i = from; i < std::min(records.size(), from + kJtiRows); ++i) {
                if (!seen.insert(key(records[i].issuer, records[i].jti)).second) {
                    replays.push_back(i);
                    continue;
                }
                rows.push_back(i);
            }
            if (rows.empty()) continue;
            std::string sql = "INSERT INTO cds_jti (issuer, jti, expires_at) VALUES ";
            std::vector<const char*> values;
            std::vector<int> lengths;
            expiries.reserve(rows.size());
            for (std::size_t r = 0; r < rows.size(); ++r) {
                const JtiRecord& rec = records[rows[r]];
                const std::string n = std::to_string(3 * r + 1);
                sql += (r ? ", ($" : "($") + n + "::text, $" + std::to_string(3 * r + 2) + "::text, $" + std::to_string(3 * r + 3) + "::bigint)";
                expiries.push_back(std::to_string(rec.expires_at));
                values.insert(values.end(), {rec.issuer.c_str(), rec.jti.c_str(), expiries.back().c_str()});
                lengths.insert(lengths.end(), {static_cast<int>(rec.issuer.size()), static_cast<int>(rec.jti.size()),
                                               static_cast<int>(expiries.back().size())});
            }
            sql += " ON CONFLICT (issuer, jti) DO UPDATE SET expires_at = excluded.expires_at WHERE cds_jti.expires_at < $" +
                   std::to_string(3 * rows.size() + 1) + "::bigint RETURNING issuer, jti";
            values.push_back(now_text.c_str());
            lengths.push_back(static_cast<int>(now_text.size()));
            std::unordered_set<std::string> recorded;
            postgres_exec(impl->handle(), location_, nullptr, sql.c_str(), values, lengths, [&](PGresult* res, int i) {
                recorded.insert(key(std::string(PQgetvalue(res, i, 0), static_cast<std::size_t>(PQgetlength(res, i, 0))),
                                    std::string(PQgetvalue(res, i, 1), static_cast<std::size_t>(PQgetlength(res, i, 1)))));
            });
            for (const std::size_t i : rows)
                if (!recorded.count(key(records[i].issuer, records[i].jti))) replays.push_back(i);
        }
        std::sort(replays.begin(), replays.end());
    }

    // SQLite: commits that do not wait for the disk while it lives (when `on`), then the usual ones.
    struct RelaxedCommits {
        SqlStore* self;
        bool on;
        RelaxedCommits(SqlStore* s, bool relaxed) : self(s), on(relaxed) {
            if (on) self->relax_durability(true);
        }
        RelaxedCommits(const RelaxedCommits&) = delete;
        RelaxedCommits& operator=(const RelaxedCommits&) = delete;
        ~RelaxedCommits() {
            if (!on) return;
            try {
                self->relax_durability(false);
            } catch (...) {
            }
        }
    };

    // SQLite: commits that do not wait for the disk (true), or the store's usual durable commits
    // (false). A database in memory has no disk to wait for.
    void relax_durability(bool relaxed) {
        if (location_ == ":memory:") return;
        compiled_once(relaxed ? sync_normal_ : sync_full_, relaxed ? "PRAGMA synchronous = NORMAL" : "PRAGMA synchronous = FULL")
            .execute({}, {});
    }

    // PostgreSQL: the statement kept in `slot`, prepared from `portable` (with ? parameters) as
    // `name` on its first use on this connection (reconnect_if_dropped() empties the slots when it
    // replaces the session).
    PostgresPrepared& prepared_once(std::unique_ptr<PostgresPrepared>& slot, const char* name, const std::string& portable) {
        if (!slot) {
            auto* impl = dynamic_cast<Poco::Data::PostgreSQL::SessionImpl*>(session_.impl());
            if (impl == nullptr) throw StateError(location_ + ": not a PostgreSQL session");
            slot = std::make_unique<PostgresPrepared>(impl->handle(), location_, name, q(portable));
        }
        return *slot;
    }

    // SQLite: the statement kept in `slot`, compiled from `sql` on its first use on this connection
    // (Poco's Statement would compile its text again on every execute).
    SqlitePrepared& compiled_once(std::unique_ptr<SqlitePrepared>& slot, const char* sql) {
        if (!slot) slot = std::make_unique<SqlitePrepared>(Poco::Data::SQLite::Utility::dbHandle(session_), location_, sql);
        return *slot;
    }

    // Brings the schema to latest_schema_version(), in one transaction that holds off other processes
    // opening the same database at the same time.
    void migrate() {
        if (backend_ == SqlBackend::sqlite) {
            session_ << "BEGIN IMMEDIATE", now;
        } else {
            session_ << "BEGIN", now;
            session_ << "SELECT pg_advisory_xact_lock(" + std::to_string(kMigrationLock) + ")", now;
        }
        try {
            session_ << "CREATE TABLE IF NOT EXISTS calcalert_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", now;
            std::string text;
            Statement s(session_);
            s << "SELECT value FROM calcalert_meta WHERE key = 'schema_version'", into(text);
            const bool fresh = s.execute() == 0;
            int version = 0;
            if (!fresh) {
                try {
                    std::size_t used = 0;
                    version = std::stoi(text, &used);
                    if (used != text.size()) version = -1;
                } catch (const std::exception&) {
                    version = -1;
                }
            }
            const int latest = latest_schema_version();
            if (version < 0 || version > latest)
                throw StateError(location_ + ": state schema version " + text + ", this program knows up to " +
                                 std::to_string(latest));
            if (backend_ == SqlBackend::sqlite &&
                std::any_of(std::begin(kSqliteUpgradableFrom), std::end(kSqliteUpgradableFrom),
                            [&](int v) { return v == version; }))
                upgrade_sqlite_to_3();
            for (const auto& m : schema_migrations()) {
                if (m.version <= version) continue;
                for (const auto& statement : migration_statements(m.sql, backend_)) session_ << statement, now;
            }
            if (fresh)
                session_ << q("INSERT INTO calcalert_meta (key, value) VALUES ('schema_version', ?)"),
                    bind(std::to_string(latest)), now;
            else if (version != latest)
                session_ << q("UPDATE calcalert_meta SET value = ? WHERE key = 'schema_version'"),
                    bind(std::to_string(latest)), now;
            session_ << "COMMIT", now;
        } catch (...) {
            try {
                session_ << "ROLLBACK", now;
            } catch (...) {
            }
            throw;
        }
    }

    template <typename F>
    void run(F&& f) {
        try {
            f();
        } catch (const Poco::Exception& e) {
            throw StateError(location_ + ": " + e.displayText());
        }
    }

    // A PostgreSQL connection the server dropped (a restart, a failover, a terminated backend) is
    // opened again before the next call outside a transaction; the call that met the dropped
    // connection has failed with a StateError. While the server is away each call fails at once
    // (connect_timeout when it does not answer) and the next one tries again. libpq reopens the
    // dropped connection in place (PQreset: nothing is left behind by an attempt that fails); once
    // it is up, a new session replaces it, because Poco's state of the old one (a transaction it
    // still believes open, prepared statements of the old server process) is stale. The old session
    // closes its connection as it goes.
    void reconnect_if_dropped() {
        if (backend_ != SqlBackend::postgresql || depth_ > 0 || session_.isConnected()) return;
        auto* impl = dynamic_cast<Poco::Data::PostgreSQL::SessionImpl*>(session_.impl());
        if (impl == nullptr) throw StateError(location_ + ": the connection was lost");
        if (!impl->handle().reset())
            throw StateError(location_ + ": the connection was lost and cannot be opened again: " +
                             first_line(PQerrorMessage(impl->handle())));
        pg_jti_relaxed_.reset();
        pg_jti_.reset();
        pg_jti_select_.reset();
        pg_issued_for_patient_.reset();
        pg_overrides_in_force_.reset();
        session_ = postgresql_session(location_, conninfo_, password_);
    }

    static std::string first_line(const char* text) {
        const std::string all = text == nullptr ? "" : text;
        std::string line = all.substr(0, all.find('\n'));
        return line.empty() ? "no answer" : line;
    }

    // Serializes calls; inside transaction() the lock is already held by this thread.
    template <typename F>
    auto locked(F&& f) -> decltype(f()) {
        std::lock_guard lock(mutex_);  // recursive: transaction() on this thread may hold it already
        reconnect_if_dropped();
        try {
            return f();
        } catch (const Poco::Exception& e) {
            throw StateError(location_ + ": " + e.displayText());
        }
    }

    // An SQLite file of version 1 or 2 (kSqliteUpgradableFrom), inside the migration transaction.
    void upgrade_sqlite_to_3() {
        Poco::Int64 n = 0;
        session_ << "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'cds_feedback'", into(n), now;
        if (n > 0)
            for (const char* sql : kFeedbackColumnsOf3) session_ << sql, now;
        session_ << "DROP TABLE IF EXISTS cds_suppressions", now;
    }

    std::vector<PendingPatient> select_pending(const std::string& where, const std::vector<std::string>& args) {
        return locked([&] {
            Statement s(session_);
            s << q("SELECT patient, attempts, last_error, queued_at, generation FROM poll_pending " + where);
            for (const auto& a : args) s, bind(a);
            s.execute();
            RecordSet rs(s);
            std::vector<PendingPatient> out;
            for (std::size_t i = 0; i < rs.rowCount(); ++i) {
                PendingPatient p;
                p.patient = rs.value(0, i).convert<std::string>();
                p.attempts = rs.value(1, i).convert<int>();
                p.last_error = rs.value(2, i).convert<std::string>();
                p.queued_at = rs.value(3, i).convert<Poco::Int64>();
                p.generation = rs.value(4, i).convert<Poco::Int64>();
                out.push_back(std::move(p));
            }
            return out;
        });
    }

    std::vector<IssuedCard> select_issued(const std::string& where, const std::vector<std::string>& args) {
        return locked([&] {
            Statement s(session_);
            s << q(kIssuedCardColumns + where);
            for (const auto& a : args) s, bind(a);
            s.execute();
            RecordSet rs(s);
            std::vector<IssuedCard> out;
            for (std::size_t i = 0; i < rs.rowCount(); ++i) out.push_back(issued_card_row(RecordText{rs, i}, RecordInteger{rs, i}));
            return out;
        });
    }

    std::vector<AlertRecord> select_alerts(const std::string& where, const std::vector<std::string>& args) {
        return locked([&] {
            Statement s(session_);
            s << q("SELECT server, identifier, patient, rule_id, evidence_hash, status, server_id, server_version,"
                   " updated_at FROM alerts " + where);
            for (const auto& a : args) s, bind(a);
            s.execute();
            RecordSet rs(s);
            std::vector<AlertRecord> out;
            for (std::size_t i = 0; i < rs.rowCount(); ++i) {
                AlertRecord r;
                r.server = rs.value(0, i).convert<std::string>();
                r.identifier = rs.value(1, i).convert<std::string>();
                r.patient = rs.value(2, i).convert<std::string>();
                r.rule_id = rs.value(3, i).convert<std::string>();
                r.evidence_hash = rs.value(4, i).convert<std::string>();
                r.status = rs.value(5, i).convert<std::string>();
                r.server_id = rs.value(6, i).convert<std::string>();
                r.server_version = rs.value(7, i).convert<std::string>();
                r.updated_at = rs.value(8, i).convert<Poco::Int64>();
                out.push_back(std::move(r));
            }
            return out;
        });
    }

    SqlBackend backend_;
    std::string location_;
    Session session_;
    std::string conninfo_, password_;  // PostgreSQL: to connect again
    std::recursive_mutex mutex_;
    int depth_ = 0;  // transactions open on this store: 1 the outer one, more its savepoints
    // SQLite: the replay check's statements, compiled once, destroyed before the session.
    std::unique_ptr<SqlitePrepared> jti_insert_, jti_select_, sync_normal_, sync_full_;
    // SQLite: the CDS call's two reads, compiled once (destroyed before the session too).
    std::unique_ptr<SqlitePrepared> issued_for_patient_, overrides_in_force_;
    // PostgreSQL: the replay check's INSERT (relaxed and not) and the CDS call's two reads, prepared
    // once per connection (dropped when the session is replaced).
    std::unique_ptr<PostgresPrepared> pg_jti_relaxed_, pg_jti_, pg_jti_select_, pg_issued_for_patient_, pg_overrides_in_force_;
    // SQLite files: the log's checkpoints, off every caller's commit (stopped first, before the session).
    std::unique_ptr<WalCheckpointer> checkpointer_;
};

Connection open_sqlite(const std::string& path) {
    // A file that is there but is not SQLite: say so at once (SQLite itself only notices at the
    // first statement, after Poco's busy retries).
    if (path != ":memory:") {
        const auto dir = std::filesystem::absolute(path).parent_path();
        std::error_code ec;
        if (!std::filesystem::is_directory(dir, ec))
            throw StateError(path + ": cannot open the state file: directory " + dir.string() + " does not exist");
        std::ifstream in(path, std::ios::binary);
        char header[16] = {};
        if (in && in.read(header, sizeof header).gcount() > 0 &&
            std::string(header, static_cast<std::size_t>(in.gcount())) != std::string("SQLite format 3\0", 16))
            throw StateError(path + ": not a calcalert state file (not an SQLite database)");
    }
    static std::once_flag registered;
    std::call_once(registered, [] { Poco::Data::SQLite::Connector::registerConnector(); });
    try {
        return {SqlBackend::sqlite, path, Session(Poco::Data::SQLite::Connector::KEY, path), "", ""};
    } catch (const Poco::Exception& e) {
        throw StateError(path + ": cannot open the state file: " + e.displayText());
    }
}

// A libpq keyword=value value. Poco's connector splits its connection string at spaces and does not
// unquote, so a value cannot hold a space, a quote or a backslash.
std::string conninfo_value(const std::string& where, const std::string& key, const std::string& value) {
    if (value.empty() || value.find_first_of(" \t\r\n'\\") != std::string::npos)
        throw StateError(where + ": the " + key + " " + (value.empty() ? "is empty" : "holds a space, a quote or a backslash") +
                         (key == "password" ? " (give it in a password file of ~/.pgpass or $PGPASSFILE instead)" : ""));
    return value;
}

Connection open_postgresql(const std::string& url) {
    Poco::URI uri;
    try {
        uri = Poco::URI(url);
    } catch (const Poco::Exception& e) {
        throw StateError("the state URL is not a URL: " + e.displayText());
    }
    const std::string user = uri.getUserInfo().substr(0, uri.getUserInfo().find(':'));
    std::string shown = uri.getScheme() + "://" + (user.empty() ? "" : user + "@") + uri.getHost() +
                        (uri.getPort() && uri.getPort() != 5432 ? ":" + std::to_string(uri.getPort()) : "") + uri.getPath();
    if (uri.getUserInfo().find(':') != std::string::npos)
        throw StateError(shown + ": a password in the state URL would show in process lists and logs; give password_file, "
                                 "$PGPASSWORD or ~/.pgpass");
    std::vector<std::pair<std::string, std::string>> params;
    if (!uri.getHost().empty()) params.emplace_back("host", uri.getHost());
    if (uri.getPort()) params.emplace_back("port", std::to_string(uri.getPort()));
    const std::string db = uri.getPath().empty() ? "" : uri.getPath().substr(1);
    if (!db.empty()) params.emplace_back("dbname", db);
    if (!user.empty()) params.emplace_back("user", user);
    for (const auto& [k, v] : uri.getQueryParameters()) {
        if (k == "password_file") {
            std::ifstream in(v, std::ios::binary);
            if (!in) throw StateError(shown + ": cannot read the password file " + v);
            std::string password;
            std::getline(in, password);
            if (!password.empty() && password.back() == '\r') password.pop_back();
            if (password.size() > 1024) throw StateError(shown + ": the password file " + v + " is not one short line");
            params.emplace_back("password", password);
        } else if (k == "password") {
            throw StateError(shown + ": a password in the state URL would show in process lists and logs; give password_file, "
                                     "$PGPASSWORD or ~/.pgpass");
        } else {
            if (k.empty() || k.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") != std::string::npos)
                throw StateError(shown + ": '" + k + "' is not a libpq connection parameter");
            params.emplace_back(k, v);
        }
    }
    bool timeout = false;
    std::string conninfo;
    for (const auto& [k, v] : params) {
        timeout = timeout || k == "connect_timeout";
        conninfo += (conninfo.empty() ? "" : " ") + k + "=" + conninfo_value(shown, k, v);
    }
    if (!timeout) conninfo += " connect_timeout=10";
    std::string password;
    for (const auto& [k, v] : params)
        if (k == "password") password = v;
    return {SqlBackend::postgresql, shown, postgresql_session(shown, conninfo, password), conninfo, password};
}

}  // namespace

std::unique_ptr<StateStore> open_sqlite_store(const std::string& path) { return std::make_unique<SqlStore>(open_sqlite(path)); }

std::unique_ptr<StateStore> open_state_store(const std::string& url) {
    if (url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0)
        return std::make_unique<SqlStore>(open_postgresql(url));
    if (url.rfind("sqlite://", 0) == 0) {
        const std::string path = url.substr(9);
        if (path.empty() || (path[0] != '/' && path != ":memory:"))
            throw StateError(url + ": a sqlite URL names an absolute path (sqlite:///var/lib/calcalert/state.sqlite)");
        return open_sqlite_store(path);
    }
    if (const auto colon = url.find("://"); colon != std::string::npos)
        throw StateError(url.substr(0, colon) + "://...: unknown state backend (sqlite:// or postgresql://)");
    return open_sqlite_store(url);
}

}  // namespace calcalert::state
