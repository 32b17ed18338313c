// The StateStore on an embedded SQLite file (Poco::Data::SQLite). The SQL sticks to what SQLite
// and PostgreSQL both run (INSERT ... ON CONFLICT ... DO UPDATE, no SQLite-only types), so a
// PostgreSQL implementation can reuse it with its own session.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>

#include <Poco/Data/RecordSet.h>
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/Statement.h>
#include <Poco/Exception.h>

#include "adapters/state/state_store.hpp"

namespace calcalert::state {
namespace {

using namespace Poco::Data::Keywords;
using Poco::Data::RecordSet;
using Poco::Data::Session;
using Poco::Data::Statement;

constexpr int kSchemaVersion = 3;

const char* const kSchema[] = {
    "CREATE TABLE IF NOT EXISTS calcalert_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS watermarks (server TEXT NOT NULL, resource_type TEXT NOT NULL, value TEXT NOT NULL,"
    " PRIMARY KEY (server, resource_type))",
    "CREATE TABLE IF NOT EXISTS seen_versions (server TEXT NOT NULL, reference TEXT NOT NULL, version TEXT NOT NULL,"
    " last_updated BIGINT NOT NULL, PRIMARY KEY (server, reference, version))",
    "CREATE INDEX IF NOT EXISTS seen_versions_time ON seen_versions (server, last_updated)",
    "CREATE TABLE IF NOT EXISTS alerts (server TEXT NOT NULL, identifier TEXT NOT NULL, patient TEXT NOT NULL,"
    " rule_id TEXT NOT NULL, evidence_hash TEXT NOT NULL, status TEXT NOT NULL, server_id TEXT NOT NULL,"
    " server_version TEXT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (server, identifier))",
    "CREATE INDEX IF NOT EXISTS alerts_patient ON alerts (server, patient)",
    "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, server TEXT NOT NULL, started_at BIGINT NOT NULL,"
    " finished_at BIGINT NOT NULL, outcome TEXT NOT NULL, summary TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cds_jti (issuer TEXT NOT NULL, jti TEXT NOT NULL, expires_at BIGINT NOT NULL,"
    " PRIMARY KEY (issuer, jti))",
    "CREATE TABLE IF NOT EXISTS cds_feedback (id INTEGER PRIMARY KEY, service_id TEXT NOT NULL, card_uuid TEXT NOT NULL,"
    " patient TEXT NOT NULL, rule_id TEXT NOT NULL, outcome TEXT NOT NULL, override_reason TEXT NOT NULL,"
    " outcome_at BIGINT NOT NULL, received_at BIGINT NOT NULL, issuer TEXT NOT NULL DEFAULT '',"
    " order_ref TEXT NOT NULL DEFAULT '', evidence_hash TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS cds_feedback_card ON cds_feedback (patient, rule_id)",
    "CREATE TABLE IF NOT EXISTS cds_issued_cards (issuer TEXT NOT NULL, service_id TEXT NOT NULL, card_uuid TEXT NOT NULL,"
    " patient TEXT NOT NULL, rule_id TEXT NOT NULL, order_ref TEXT NOT NULL, severity TEXT NOT NULL,"
    " evidence_hash TEXT NOT NULL, issued_at BIGINT NOT NULL, PRIMARY KEY (issuer, service_id, card_uuid))",
    "CREATE INDEX IF NOT EXISTS cds_issued_cards_patient ON cds_issued_cards (issuer, service_id, patient)",
    "CREATE TABLE IF NOT EXISTS cds_overrides (issuer TEXT NOT NULL, patient TEXT NOT NULL, rule_id TEXT NOT NULL,"
    " order_ref TEXT NOT NULL, card_uuid TEXT NOT NULL, evidence_hash TEXT NOT NULL, until_at BIGINT NOT NULL,"
    " PRIMARY KEY (issuer, patient, rule_id, order_ref))",
    "CREATE TABLE IF NOT EXISTS poll_pending (server TEXT NOT NULL, patient TEXT NOT NULL, attempts INTEGER NOT NULL,"
    " last_error TEXT NOT NULL, queued_at BIGINT NOT NULL, PRIMARY KEY (server, patient))",
    "CREATE TABLE IF NOT EXISTS poll_feed_cursors (server TEXT NOT NULL, resource_type TEXT NOT NULL,"
    " next_url TEXT NOT NULL, max_last_updated TEXT NOT NULL, max_last_updated_at BIGINT NOT NULL,"
    " PRIMARY KEY (server, resource_type))",
    "CREATE TABLE IF NOT EXISTS poll_rechecks (server TEXT NOT NULL, patient TEXT NOT NULL, recheck_at BIGINT NOT NULL,"
    " basis TEXT NOT NULL, PRIMARY KEY (server, patient))",
};

// Schema versions this program opens and upgrades in place:
//   1 lacked the poll work queue and the feed cursors (added by the CREATE TABLE IF NOT EXISTS above);
//   2 (and 1) had CDS Hooks suppressions per (patient, rule) only, bound to no client, card or
//     evidence, in cds_suppressions: version 3 drops that table (those cards show again until they are
//     overridden anew), adds cds_issued_cards and cds_overrides (above), and adds issuer, order_ref and
//     evidence_hash to cds_feedback (upgrade_to_3, run before the CREATE statements, in one
//     transaction with them).
constexpr int kUpgradableFrom[] = {1, 2};

// Added columns of cds_feedback in version 3 (ADD COLUMN with a default: SQLite and PostgreSQL).
const char* const kFeedbackColumnsOf3[] = {
    "ALTER TABLE cds_feedback ADD COLUMN issuer TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE cds_feedback ADD COLUMN order_ref TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE cds_feedback ADD COLUMN evidence_hash TEXT NOT NULL DEFAULT ''",
};

class SqliteStore final : public StateStore {
public:
    explicit SqliteStore(const std::string& path) : path_(path), session_(open(path)) {
        try {
            session_ << "PRAGMA busy_timeout = 5000", now;
            if (path != ":memory:") {
                session_ << "PRAGMA journal_mode = WAL", now;
                session_ << "PRAGMA synchronous = FULL", now;
            }
            session_ << kSchema[0], now;  // calcalert_meta
            std::string version;
            Statement s(session_);
            s << "SELECT value FROM calcalert_meta WHERE key = 'schema_version'", into(version);
            const bool fresh = s.execute() == 0;
            const bool upgrade = !fresh && std::any_of(std::begin(kUpgradableFrom), std::end(kUpgradableFrom),
                                                       [&](int v) { return version == std::to_string(v); });
            if (!fresh && !upgrade && version != std::to_string(kSchemaVersion))
                throw StateError(path_ + ": state schema version " + version + ", this program uses " +
                                 std::to_string(kSchemaVersion));
            session_.begin();
            try {
                if (upgrade) upgrade_to_3();
                for (const char* sql : kSchema) session_ << sql, now;
                if (fresh)
                    session_ << "INSERT INTO calcalert_meta (key, value) VALUES ('schema_version', ?)",
                        bind(std::to_string(kSchemaVersion)), now;
                else if (upgrade)
                    session_ << "UPDATE calcalert_meta SET value = ? WHERE key = 'schema_version'",
                        bind(std::to_string(kSchemaVersion)), now;
                session_.commit();
            } catch (...) {
                try {
                    session_.rollback();
                } catch (...) {
                }
                throw;
            }
        } catch (const Poco::Exception& e) {
            throw StateError(path_ + ": " + e.displayText());
        }
    }

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
            s << "SELECT value FROM watermarks WHERE server = ? AND resource_type = ?", bind(server), bind(type),
                into(value);
            if (s.execute() == 0) return std::nullopt;
            return value;
        });
    }

    void set_watermark(const std::string& server, const std::string& type, const std::string& value) override {
        locked([&] {
            session_ << "INSERT INTO watermarks (server, resource_type, value) VALUES (?, ?, ?)"
                        " ON CONFLICT (server, resource_type) DO UPDATE SET value = excluded.value",
                bind(server), bind(type), bind(value), now;
        });
    }

    bool seen_version(const std::string& server, const std::string& reference, const std::string& version) override {
        return locked([&] {
            int n = 0;
            session_ << "SELECT COUNT(*) FROM seen_versions WHERE server = ? AND reference = ? AND version = ?",
                bind(server), bind(reference), bind(version), into(n), now;
            return n > 0;
        });
    }

    void mark_seen(const std::string& server, const std::string& reference, const std::string& version,
                   EpochSeconds last_updated) override {
        locked([&] {
            session_ << "INSERT INTO seen_versions (server, reference, version, last_updated) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (server, reference, version) DO NOTHING",
                bind(server), bind(reference), bind(version), bind(static_cast<Poco::Int64>(last_updated)), now;
        });
    }

    void forget_seen_before(const std::string& server, EpochSeconds before) override {
        locked([&] {
            session_ << "DELETE FROM seen_versions WHERE server = ? AND last_updated < ?", bind(server),
                bind(static_cast<Poco::Int64>(before)), now;
        });
    }

    void enqueue_patient(const std::string& server, const std::string& patient, EpochSeconds now_s) override {
        locked([&] {
            session_ << "INSERT INTO poll_pending (server, patient, attempts, last_error, queued_at) VALUES (?, ?, 0, '', ?)"
                        " ON CONFLICT (server, patient) DO NOTHING",
                bind(server), bind(patient), bind(static_cast<Poco::Int64>(now_s)), now;
        });
    }

    std::vector<PendingPatient> pending_patients(const std::string& server) override {
        return locked([&] {
            Statement s(session_);
            s << "SELECT patient, attempts, last_error, queued_at FROM poll_pending WHERE server = ? ORDER BY patient",
                bind(server);
            s.execute();
            RecordSet rs(s);
            std::vector<PendingPatient> out;
            for (std::size_t i = 0; i < rs.rowCount(); ++i) {
                PendingPatient p;
                p.patient = rs.value(0, i).convert<std::string>();
                p.attempts = rs.value(1, i).convert<int>();
                p.last_error = rs.value(2, i).convert<std::string>();
                p.queued_at = rs.value(3, i).convert<Poco::Int64>();
                out.push_back(std::move(p));
            }
            return out;
        });
    }

    void finish_patient(const std::string& server, const std::string& patient) override {
        locked([&] {
            session_ << "DELETE FROM poll_pending WHERE server = ? AND patient = ?", bind(server), bind(patient), now;
        });
    }

    void defer_patient(const std::string& server, const std::string& patient, const std::string& error) override {
        locked([&] {
            session_ << "INSERT INTO poll_pending (server, patient, attempts, last_error, queued_at) VALUES (?, ?, 1, ?, 0)"
                        " ON CONFLICT (server, patient) DO UPDATE SET attempts = poll_pending.attempts + 1,"
                        " last_error = excluded.last_error",
                bind(server), bind(patient), bind(error), now;
        });
    }

    std::optional<FeedCursor> feed_cursor(const std::string& server, const std::string& type) override {
        return locked([&]() -> std::optional<FeedCursor> {
            FeedCursor c;
            Poco::Int64 at = 0;
            Statement s(session_);
            s << "SELECT next_url, max_last_updated, max_last_updated_at FROM poll_feed_cursors"
                 " WHERE server = ? AND resource_type = ?",
                bind(server), bind(type), into(c.next_url), into(c.max_last_updated), into(at);
            if (s.execute() == 0) return std::nullopt;
            c.max_last_updated_at = at;
            return c;
        });
    }

    void set_recheck(const std::string& server, const std::string& patient, const Recheck& r) override {
        locked([&] {
            session_ << "INSERT INTO poll_rechecks (server, patient, recheck_at, basis) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (server, patient) DO UPDATE SET recheck_at = excluded.recheck_at, basis = excluded.basis",
                bind(server), bind(patient), bind(static_cast<Poco::Int64>(r.at)), bind(r.basis), now;
        });
    }

    std::map<std::string, Recheck> rechecks(const std::string& server) override {
        return locked([&] {
            Statement s(session_);
            s << "SELECT patient, recheck_at, basis FROM poll_rechecks WHERE server = ?", bind(server);
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
            session_ << "INSERT INTO poll_feed_cursors (server, resource_type, next_url, max_last_updated,"
                        " max_last_updated_at) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (server, resource_type) DO UPDATE SET next_url = excluded.next_url,"
                        " max_last_updated = excluded.max_last_updated, max_last_updated_at = excluded.max_last_updated_at",
                bind(server), bind(type), bind(c.next_url), bind(c.max_last_updated),
                bind(static_cast<Poco::Int64>(c.max_last_updated_at)), now;
        });
    }

    void clear_feed_cursor(const std::string& server, const std::string& type) override {
        locked([&] {
            session_ << "DELETE FROM poll_feed_cursors WHERE server = ? AND resource_type = ?", bind(server), bind(type),
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
            session_ << "INSERT INTO alerts (server, identifier, patient, rule_id, evidence_hash, status, server_id,"
                        " server_version, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (server, identifier) DO UPDATE SET patient = excluded.patient,"
                        " rule_id = excluded.rule_id, evidence_hash = excluded.evidence_hash, status = excluded.status,"
                        " server_id = excluded.server_id, server_version = excluded.server_version,"
                        " updated_at = excluded.updated_at",
                bind(r.server), bind(r.identifier), bind(r.patient), bind(r.rule_id), bind(r.evidence_hash),
                bind(r.status), bind(r.server_id), bind(r.server_version),
                bind(static_cast<Poco::Int64>(r.updated_at)), now;
        });
    }

    std::int64_t begin_run(const std::string& server, EpochSeconds started_at) override {
        return locked([&] {
            // The database assigns the id (another process may share the file): never MAX(id) + 1.
            session_ << "INSERT INTO runs (server, started_at, finished_at, outcome, summary)"
                        " VALUES (?, ?, 0, 'running', '{}')",
                bind(server), bind(static_cast<Poco::Int64>(started_at)), now;
            Poco::Int64 id = 0;
            session_ << "SELECT last_insert_rowid()", into(id), now;
            return static_cast<std::int64_t>(id);
        });
    }

    void finish_run(std::int64_t run_id, EpochSeconds finished_at, const std::string& outcome,
                    const std::string& summary_json) override {
        locked([&] {
            session_ << "UPDATE runs SET finished_at = ?, outcome = ?, summary = ? WHERE id = ?",
                bind(static_cast<Poco::Int64>(finished_at)), bind(outcome), bind(summary_json),
                bind(static_cast<Poco::Int64>(run_id)), now;
        });
    }

    std::vector<RunRecord> runs(const std::string& server, std::size_t limit) override {
        return locked([&] {
            Statement s(session_);
            s << "SELECT id, server, started_at, finished_at, outcome, summary FROM runs WHERE server = ?"
                 " ORDER BY id DESC LIMIT ?",
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
            session_ << "DELETE FROM cds_jti WHERE expires_at < ?", bind(static_cast<Poco::Int64>(now_s)), now;
            int n = 0;
            session_ << "SELECT COUNT(*) FROM cds_jti WHERE issuer = ? AND jti = ?", bind(issuer), bind(jti), into(n),
                now;
            if (n > 0) return false;
            try {
                session_ << "INSERT INTO cds_jti (issuer, jti, expires_at) VALUES (?, ?, ?)", bind(issuer), bind(jti),
                    bind(static_cast<Poco::Int64>(expires_at)), now;
            } catch (const Poco::Data::DataException&) {
                return false;  // another process recorded it first
            }
            return true;
        });
    }

    void record_feedback(const FeedbackRecord& f) override {
        locked([&] {
            session_ << "INSERT INTO cds_feedback (service_id, card_uuid, patient, rule_id, outcome,"
                        " override_reason, outcome_at, received_at, issuer, order_ref, evidence_hash)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                bind(f.service_id), bind(f.card_uuid), bind(f.patient), bind(f.rule_id), bind(f.outcome),
                bind(f.override_reason), bind(static_cast<Poco::Int64>(f.outcome_at)),
                bind(static_cast<Poco::Int64>(f.received_at)), bind(f.issuer), bind(f.order), bind(f.evidence_hash), now;
        });
    }

    std::vector<FeedbackRecord> feedback(const std::string& patient, const std::string& rule_id) override {
        return locked([&] {
            Statement s(session_);
            s << "SELECT service_id, card_uuid, patient, rule_id, outcome, override_reason, outcome_at, received_at,"
                 " issuer, order_ref, evidence_hash FROM cds_feedback WHERE patient = ? AND rule_id = ? ORDER BY id",
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
            session_ << "INSERT INTO cds_issued_cards (issuer, service_id, card_uuid, patient, rule_id, order_ref, severity,"
                        " evidence_hash, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (issuer, service_id, card_uuid) DO UPDATE SET patient = excluded.patient,"
                        " rule_id = excluded.rule_id, order_ref = excluded.order_ref, severity = excluded.severity,"
                        " evidence_hash = excluded.evidence_hash, issued_at = excluded.issued_at",
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
        return select_issued("WHERE issuer = ? AND service_id = ? AND patient = ? ORDER BY card_uuid",
                             {issuer, service_id, patient});
    }

    void put_override(const CardOverride& o) override {
        locked([&] {
            session_ << "INSERT INTO cds_overrides (issuer, patient, rule_id, order_ref, card_uuid, evidence_hash, until_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (issuer, patient, rule_id, order_ref) DO UPDATE SET card_uuid = excluded.card_uuid,"
                        " evidence_hash = excluded.evidence_hash, until_at = excluded.until_at",
                bind(o.issuer), bind(o.patient), bind(o.rule_id), bind(o.order), bind(o.card_uuid), bind(o.evidence_hash),
                bind(static_cast<Poco::Int64>(o.until)), now;
        });
    }

    std::vector<CardOverride> overrides_in_force(const std::string& issuer, const std::string& patient,
                                                 EpochSeconds now_s) override {
        return locked([&] {
            Statement s(session_);
            s << "SELECT issuer, patient, rule_id, order_ref, card_uuid, evidence_hash, until_at FROM cds_overrides"
                 " WHERE issuer = ? AND patient = ? AND until_at > ? ORDER BY rule_id, order_ref",
                bind(issuer), bind(patient), bind(static_cast<Poco::Int64>(now_s));
            s.execute();
            RecordSet rs(s);
            std::vector<CardOverride> out;
            for (std::size_t i = 0; i < rs.rowCount(); ++i) {
                CardOverride o;
                o.issuer = rs.value(0, i).convert<std::string>();
                o.patient = rs.value(1, i).convert<std::string>();
                o.rule_id = rs.value(2, i).convert<std::string>();
                o.order = rs.value(3, i).convert<std::string>();
                o.card_uuid = rs.value(4, i).convert<std::string>();
                o.evidence_hash = rs.value(5, i).convert<std::string>();
                o.until = rs.value(6, i).convert<Poco::Int64>();
                out.push_back(std::move(o));
            }
            return out;
        });
    }

private:
    static Session open(const std::string& path) {
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
            return Session(Poco::Data::SQLite::Connector::KEY, path);
        } catch (const Poco::Exception& e) {
            throw StateError(path + ": cannot open the state file: " + e.displayText());
        }
    }

    template <typename F>
    void run(F&& f) {
        try {
            f();
        } catch (const Poco::Exception& e) {
            throw StateError(path_ + ": " + e.displayText());
        }
    }

    // Serializes calls; inside transaction() the lock is already held by this thread.
    template <typename F>
    auto locked(F&& f) -> decltype(f()) {
        std::lock_guard lock(mutex_);  // recursive: transaction() on this thread may hold it already
        try {
            return f();
        } catch (const Poco::Exception& e) {
            throw StateError(path_ + ": " + e.displayText());
        }
    }

    bool table_exists(const std::string& name) {
        int n = 0;
        session_ << "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", bind(name), into(n), now;
        return n > 0;
    }

    // From version 1 or 2 (see kUpgradableFrom), inside the opening transaction.
    void upgrade_to_3() {
        if (table_exists("cds_feedback"))
            for (const char* sql : kFeedbackColumnsOf3) session_ << sql, now;
        session_ << "DROP TABLE IF EXISTS cds_suppressions", now;
    }

    std::vector<IssuedCard> select_issued(const std::string& where, const std::vector<std::string>& args) {
        return locked([&] {
            Statement s(session_);
            s << "SELECT issuer, service_id, card_uuid, patient, rule_id, order_ref, severity, evidence_hash, issued_at"
                 " FROM cds_issued_cards " + where;
            for (const auto& a : args) s, bind(a);
            s.execute();
            RecordSet rs(s);
            std::vector<IssuedCard> out;
            for (std::size_t i = 0; i < rs.rowCount(); ++i) {
                IssuedCard c;
                c.issuer = rs.value(0, i).convert<std::string>();
                c.service_id = rs.value(1, i).convert<std::string>();
                c.card_uuid = rs.value(2, i).convert<std::string>();
                c.patient = rs.value(3, i).convert<std::string>();
                c.rule_id = rs.value(4, i).convert<std::string>();
                c.order = rs.value(5, i).convert<std::string>();
                c.severity = rs.value(6, i).convert<std::string>();
                c.evidence_hash = rs.value(7, i).convert<std::string>();
                c.issued_at = rs.value(8, i).convert<Poco::Int64>();
                out.push_back(std::move(c));
            }
            return out;
        });
    }

    std::vector<AlertRecord> select_alerts(const std::string& where, const std::vector<std::string>& args) {
        return locked([&] {
            Statement s(session_);
            s << "SELECT server, identifier, patient, rule_id, evidence_hash, status, server_id, server_version,"
                 " updated_at FROM alerts " + where;
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

    std::string path_;
    Session session_;
    std::recursive_mutex mutex_;
    int depth_ = 0;  // transactions open on this store: 1 the outer one, more its savepoints
};

}  // namespace

std::unique_ptr<StateStore> open_sqlite_store(const std::string& path) { return std::make_unique<SqliteStore>(path); }

}  // namespace calcalert::state
