#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <vector>
#include <stdexcept>
#include <set>
#include <thread>

#include <unistd.h>

#include <sqlite3.h>

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>

#include "adapters/state/batched_replay.hpp"
#include "adapters/state/migrations.hpp"
#include "adapters/state/state_store.hpp"
#include "old_state_file.hpp"

using namespace calcalert::state;

namespace {
// A SQLite file in the temp directory, removed with its -wal and -shm when it goes out of scope
// (declare it before the store that uses it, so that the store is closed first).
struct TempFile {
    std::string path;
    explicit TempFile(const char* name)
        : path((std::filesystem::temp_directory_path() /
                (std::string("calcalert-") + name + "-" + std::to_string(::getpid()) + ".sqlite"))
                   .string()) {
        remove();
    }
    ~TempFile() { remove(); }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
    void remove() const {
        std::error_code ignored;
        for (const char* suffix : {"", "-wal", "-shm", "-journal"}) std::filesystem::remove(path + suffix, ignored);
    }
    operator const std::string&() const { return path; }
    const char* c_str() const { return path.c_str(); }
};
AlertRecord record(const char* id, const char* patient, const char* status, const char* hash) {
    return AlertRecord{"http://s/fhir", id, patient, "rule-x", hash, status, "srv-" + std::string(id), "1", 100};
}

// The backends the contract tests below run on: SQLite always, and PostgreSQL when
// CALCALERT_TEST_POSTGRES_URL names a database (tests/support/with-postgres starts a throwaway
// server and sets it); each test starts from an empty database.
struct Backend {
    std::string name;
    std::string url;  // "" : SQLite
    std::unique_ptr<TempFile> file;
    // A store on an emptied database.
    std::unique_ptr<StateStore> open_fresh() const {
        if (url.empty()) {
            file->remove();
            return open_state_store(file->path);
        }
        const std::string reset = "psql -q -v ON_ERROR_STOP=1 '" + url +
                                  "' -c 'DROP SCHEMA public CASCADE' -c 'CREATE SCHEMA public' >/dev/null 2>&1";
        INFO("emptying the test database " << url);
        REQUIRE(std::system(reset.c_str()) == 0);
        return open_state_store(url);
    }
    // Another connection to the same database, as another process would have.
    std::unique_ptr<StateStore> open_again() const { return open_state_store(url.empty() ? file->path : url); }
};
const std::vector<Backend>& contract_backends() {
    static const std::vector<Backend> backends = [] {
        std::vector<Backend> b;
        b.push_back({"sqlite", "", std::make_unique<TempFile>("contract")});
        if (const char* pg = std::getenv("CALCALERT_TEST_POSTGRES_URL"); pg && *pg) b.push_back({"postgresql", pg, nullptr});
        else MESSAGE("state contract tests: PostgreSQL skipped (no CALCALERT_TEST_POSTGRES_URL)");
        return b;
    }();
    return backends;
}
}  // namespace

TEST_CASE("state survives reopening the file: watermarks, ledger, runs") {
    const TempFile path("reopen");
    {
        auto s = open_sqlite_store(path);
        CHECK_FALSE(s->watermark("http://s/fhir", "Observation"));
        s->set_watermark("http://s/fhir", "Observation", "2026-11-25T10:00:00.000Z");
        s->set_watermark("http://s/fhir", "Observation", "2026-11-25T11:00:00.000Z");
        s->put_alert(record("a1", "Patient/1", "final", "h1"));
        s->put_alert(record("a2", "Patient/1", "final", "h2"));
        s->put_alert(record("a1", "Patient/1", "amended", "h3"));
        auto run = s->begin_run("http://s/fhir", 10);
        s->finish_run(run, 20, "ok", "{\"patients\":2}");
    }
    auto s = open_sqlite_store(path);
    CHECK(s->watermark("http://s/fhir", "Observation") == "2026-11-25T11:00:00.000Z");
    CHECK_FALSE(s->watermark("http://other/fhir", "Observation"));
    auto a1 = s->alert("http://s/fhir", "a1");
    REQUIRE(a1);
    CHECK(a1->status == "amended");
    CHECK(a1->evidence_hash == "h3");
    CHECK(s->alerts_for_patient("http://s/fhir", "Patient/1").size() == 2);
    CHECK(s->alerts_for_patient("http://s/fhir", "Patient/2").empty());
    auto runs = s->runs("http://s/fhir", 5);
    REQUIRE(runs.size() == 1);
    CHECK(runs[0].outcome == "ok");
    CHECK(runs[0].summary_json == "{\"patients\":2}");
}

TEST_CASE("a transaction lands whole or not at all") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        CHECK_THROWS_AS(s->transaction([&] {
            s->put_alert(record("a1", "Patient/1", "final", "h1"));
            s->set_watermark("x", "Condition", "w1");
            throw std::runtime_error("killed mid-way");
        }),
                        std::runtime_error);
        CHECK_FALSE(s->alert("http://s/fhir", "a1"));
        CHECK_FALSE(s->watermark("x", "Condition"));
        s->transaction([&] {
            s->put_alert(record("a1", "Patient/1", "final", "h1"));
            s->set_watermark("x", "Condition", "w1");
        });
        CHECK(s->alert("http://s/fhir", "a1"));
        CHECK(s->watermark("x", "Condition") == "w1");
        // (A transaction inside one is a savepoint: see the test below.)
    }
}

TEST_CASE("seen versions dedupe the overlap window and are forgotten after it") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        CHECK_FALSE(s->seen_version("srv", "Observation/1", "2"));
        s->mark_seen("srv", "Observation/1", "2", 1000);
        s->mark_seen("srv", "Observation/1", "2", 1000);
        CHECK(s->seen_version("srv", "Observation/1", "2"));
        CHECK_FALSE(s->seen_version("srv", "Observation/1", "3"));
        s->forget_seen_before("srv", 1001);
        CHECK_FALSE(s->seen_version("srv", "Observation/1", "2"));
    }
}

TEST_CASE("counted resources: set, cleared, per server, and kept past the overlap window") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        CHECK_FALSE(s->counted_resource("srv", "Condition/1"));
        s->set_counted_resource("srv", "Condition/1", true);
        s->set_counted_resource("srv", "Condition/1", true);  // again: no error
        CHECK(s->counted_resource("srv", "Condition/1"));
        CHECK_FALSE(s->counted_resource("other", "Condition/1"));
        CHECK_FALSE(s->counted_resource("srv", "Condition/2"));
        s->forget_seen_before("srv", 1 << 30);  // not a seen version: stays
        CHECK(s->counted_resource("srv", "Condition/1"));
        s->set_counted_resource("srv", "Condition/1", false);
        s->set_counted_resource("srv", "Condition/1", false);
        CHECK_FALSE(s->counted_resource("srv", "Condition/1"));
    }
}

TEST_CASE("jti replay protection until expiry") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        CHECK(s->remember_jti("iss", "j1", 200, 100));
        CHECK_FALSE(s->remember_jti("iss", "j1", 200, 150));   // replay
        CHECK(s->remember_jti("other-iss", "j1", 200, 150));   // per issuer
        CHECK(s->remember_jti("iss", "j1", 400, 250));         // expired record purged
        // Within a minute of the last purge an expired record is still there, and is taken over.
        CHECK(s->remember_jti("iss", "j3", 260, 255));
        CHECK_FALSE(s->remember_jti("iss", "j3", 260, 258));
        CHECK(s->remember_jti("iss", "j3", 400, 270));         // j3's record expired at 260
        CHECK_FALSE(s->remember_jti("iss", "j3", 400, 280));   // and the new one holds
    }
}

TEST_CASE("jti batches: one transaction, each replay named by its index") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        REQUIRE(s->remember_jti("iss", "a", 200, 100));
        const std::vector<JtiRecord> batch{{"iss", "a", 300},  {"iss", "b", 300}, {"iss2", "a", 300},
                                           {"iss", "b", 300},  {"iss", "c", 300}};
        CHECK(s->remember_jtis(batch, 150) == std::vector<std::size_t>{0, 3});  // recorded before; twice in the batch
        CHECK(s->jti_recorded("iss", "b", 150));
        CHECK(s->jti_recorded("iss2", "a", 300));   // alive up to its expiry
        CHECK_FALSE(s->jti_recorded("iss2", "a", 301));
        CHECK_FALSE(s->jti_recorded("iss", "z", 150));
        CHECK(s->remember_jtis({{"iss", "a", 500}}, 250).empty());  // a expired at 200: taken over
        CHECK_FALSE(s->remember_jti("iss", "a", 500, 260));
        CHECK(s->remember_jtis({}, 260).empty());
        // More than one statement's worth of rows; every 97th repeats an earlier one, and the
        // separator-like bytes of an issuer and a jti do not run into each other.
        std::vector<JtiRecord> many;
        std::vector<std::size_t> repeats;
        for (std::size_t i = 0; i < 1200; ++i) {
            if (i % 97 == 96) {
                many.push_back(many[i / 2]);
                repeats.push_back(i);
            } else {
                many.push_back({"iss", "m" + std::to_string(i), 900});
            }
        }
        many.push_back({"is", "sm1", 900});
        CHECK(s->remember_jtis(many, 300) == repeats);
        CHECK(s->jti_recorded("iss", "m1199", 900));
        CHECK(s->jti_recorded("is", "sm1", 900));
    }
}

namespace {
// A store whose database can be made unreachable: the replay store's writes fail while `down` (as
// they do when the database server goes away), and go through to the real store otherwise.
class Interruptible final : public ReplayStore {
public:
    explicit Interruptible(ReplayStore& store) : store_(store) {}
    std::atomic<bool> down{false};
    bool remember_jti(const std::string& i, const std::string& j, EpochSeconds e, EpochSeconds n) override {
        reachable();
        return store_.remember_jti(i, j, e, n);
    }
    bool jti_recorded(const std::string& i, const std::string& j, EpochSeconds n) override { return store_.jti_recorded(i, j, n); }
    std::vector<std::size_t> remember_jtis(const std::vector<JtiRecord>& r, EpochSeconds n) override {
        reachable();
        return store_.remember_jtis(r, n);
    }

private:
    void reachable() const {
        if (down) throw StateError("the database is unreachable");
    }
    ReplayStore& store_;
};

BatchedReplayOptions every(std::chrono::milliseconds interval, std::size_t max_batch = 1000) {
    BatchedReplayOptions o;
    o.flush_interval = interval;
    o.max_batch = max_batch;
    return o;
}
// Batches written only by flush() and stop().
BatchedReplayOptions manual_flush() { return every(std::chrono::hours(1)); }

// An SQLite file and two connections to it: the call's reads and the batches' writes.
struct TwoConnections {
    TempFile file;
    std::unique_ptr<StateStore> db, writer;
    explicit TwoConnections(const char* name)
        : file(name), db(open_state_store(file.path)), writer(open_state_store(file.path)) {}
};

template <class F>
bool within_two_seconds(F&& done) {
    for (int i = 0; i < 200; ++i) {
        if (done()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return done();
}
}  // namespace

TEST_CASE("batched replay records: refused from memory at once, from the database once written, across processes") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto db = backend.open_fresh();
        auto writer = backend.open_again();
        auto other_db = backend.open_again();
        std::vector<JtiRecord> late_a, late_b;
        std::vector<std::string> errors;
        BatchedReplayStore a(*db, *writer, manual_flush(), [&](const JtiRecord& r) { late_a.push_back(r); },
                             [&](const std::string& e) { errors.push_back(e); });
        BatchedReplayStore b(*other_db, *other_db, manual_flush(), [&](const JtiRecord& r) { late_b.push_back(r); },
                             [&](const std::string& e) { errors.push_back(e); });
        CHECK(a.remember_jti("iss", "j1", 200, 100));
        CHECK_FALSE(a.remember_jti("iss", "j1", 200, 101));  // in memory, not yet written
        CHECK(a.pending() == 1);
        CHECK_FALSE(db->jti_recorded("iss", "j1", 101));  // nothing written by the call
        CHECK(a.jti_recorded("iss", "j1", 101));
        // Another process on the same database, within a's batch: it cannot know yet.
        CHECK(b.remember_jti("iss", "j1", 200, 102));
        CHECK(a.flush());
        CHECK(a.pending() == 0);
        CHECK(a.held() == 0);  // the database answers for it now
        CHECK(db->jti_recorded("iss", "j1", 103));
        CHECK_FALSE(a.remember_jti("iss", "j1", 200, 104));
        CHECK(b.flush());  // b's record of j1 was a replay: said when its batch is written
        REQUIRE(late_b.size() == 1);
        CHECK(late_b[0].issuer == "iss");
        CHECK(late_b[0].jti == "j1");
        CHECK(late_a.empty());
        // Once the database holds it, every process refuses it.
        CHECK_FALSE(b.remember_jti("iss", "j1", 200, 105));
        CHECK(a.remember_jti("iss", "j1", 400, 250));  // expired at 200: a new token's
        CHECK(a.flush());
        CHECK_FALSE(b.remember_jti("iss", "j1", 400, 251));
        CHECK(a.remember_jti("other-iss", "j1", 400, 251));  // per issuer
        CHECK(a.remember_jtis({{"iss", "j1", 400}, {"iss", "j2", 400}}, 252) == std::vector<std::size_t>{0});
        CHECK(db->jti_recorded("iss", "j2", 252));
        CHECK(errors.empty());
    }
}

TEST_CASE("batched replay records: written by their thread within the interval, or sooner when a batch is full") {
    TwoConnections c("replay-batches");
    {
        BatchedReplayStore r(*c.db, *c.writer, every(std::chrono::milliseconds(20)), nullptr, nullptr);
        CHECK(r.remember_jti("iss", "t1", 2000, 100));
        CHECK(within_two_seconds([&] { return c.db->jti_recorded("iss", "t1", 100); }));
    }
    {
        BatchedReplayStore r(*c.db, *c.writer, every(std::chrono::hours(1), 3), nullptr, nullptr);
        CHECK(r.remember_jti("iss", "f1", 2000, 100));
        CHECK(r.remember_jti("iss", "f2", 2000, 100));
        CHECK(r.pending() == 2);  // the interval is an hour: nothing written yet
        CHECK(r.remember_jti("iss", "f3", 2000, 100));
        CHECK(within_two_seconds([&] { return c.db->jti_recorded("iss", "f3", 100); }));
        CHECK(r.remember_jti("iss", "s1", 2000, 100));
    }  // the destructor writes what is held
    CHECK(c.db->jti_recorded("iss", "s1", 100));
}

TEST_CASE("batched replay records: a database that cannot be written keeps them, refuses new tokens when full, catches up") {
    TempFile file("replay-down");
    auto db = open_state_store(file.path);
    Interruptible writer(*db);
    std::vector<std::string> errors;
    BatchedReplayOptions o = manual_flush();
    o.max_pending = 2;
    BatchedReplayStore r(*db, writer, o, nullptr, [&](const std::string& e) { errors.push_back(e); });
    writer.down = true;
    CHECK(r.remember_jti("iss", "d1", 2000, 100));
    CHECK_FALSE(r.flush());
    CHECK_FALSE(r.flush());
    REQUIRE(errors.size() == 1);  // once a failure streak
    CHECK(errors[0].find("the database is unreachable") != std::string::npos);
    CHECK(r.pending() == 1);
    CHECK_FALSE(r.remember_jti("iss", "d1", 2000, 101));  // still refused from memory
    CHECK(r.remember_jti("iss", "d2", 2000, 101));
    CHECK_THROWS_AS(r.remember_jti("iss", "d3", 2000, 102), StateError);  // full: fail closed
    writer.down = false;
    CHECK(r.flush());
    REQUIRE(errors.size() == 2);
    CHECK(errors[1] == "replay records written again");
    CHECK(db->jti_recorded("iss", "d1", 102));
    CHECK(db->jti_recorded("iss", "d2", 102));
    CHECK(r.remember_jti("iss", "d3", 2000, 103));
}

TEST_CASE("batched replay records: of many threads presenting the same tokens at once, one each is accepted") {
    TwoConnections c("replay-threads");
    std::vector<int> accepted(4, 0);
    std::vector<std::string> failures(4);
    {
        BatchedReplayStore r(*c.db, *c.writer, every(std::chrono::milliseconds(5), 16), nullptr, nullptr);
        std::vector<std::thread> threads;
        for (std::size_t t = 0; t < accepted.size(); ++t)
            threads.emplace_back([&, t] {
                try {
                    for (int i = 0; i < 300; ++i) accepted[t] += r.remember_jti("iss", "c" + std::to_string(i), 2000, 100);
                } catch (const std::exception& e) {
                    failures[t] = e.what();
                }
            });
        for (auto& th : threads) th.join();
    }
    for (const auto& f : failures) CHECK_MESSAGE(f.empty(), f);
    CHECK(accepted[0] + accepted[1] + accepted[2] + accepted[3] == 300);
    for (int i = 0; i < 300; i += 37) CHECK(c.db->jti_recorded("iss", "c" + std::to_string(i), 100));
    CHECK(c.db->remember_jtis({{"iss", "c299", 2000}}, 100) == std::vector<std::size_t>{0});
}

TEST_CASE("an SQLite file's log is copied into the database in the background, not by a commit") {
    TempFile file("checkpoint");
    auto s = open_state_store(file.path);
    for (int i = 0; i < 50; ++i) REQUIRE(s->remember_jti("iss", "j" + std::to_string(i), 2000, 100));
    // The database file alone (immutable: its log not read): the records appear there only once a
    // checkpoint has copied them, which no commit does (the log holds a few pages, far below
    // SQLite's own 1,000-page checkpoint) and the store's checkpointer does within a second or so.
    auto rows_in_database_file = [&] {
        sqlite3* db = nullptr;
        const std::string uri = "file:" + file.path + "?immutable=1";
        REQUIRE(sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, nullptr) == SQLITE_OK);
        sqlite3_stmt* st = nullptr;
        long long n = -1;
        if (sqlite3_prepare_v2(db, "SELECT count(*) FROM cds_jti", -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(db);
        return n;
    };
    long long rows = rows_in_database_file();
    for (int waited = 0; rows != 50 && waited < 100; ++waited) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        rows = rows_in_database_file();
    }
    CHECK(rows == 50);
    CHECK_FALSE(s->remember_jti("iss", "j7", 2000, 150));  // the store still reads them
}

TEST_CASE("feedback records keep the issuer and the card they are about") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        FeedbackRecord f;
        f.issuer = "https://ehr-a.example.org";
        f.service_id = "calcalert-order-sign";
        f.card_uuid = "uuid-1";
        f.patient = "Patient/1";
        f.rule_id = "rule-x";
        f.order = "MedicationRequest/7";
        f.evidence_hash = "h1";
        f.outcome = "overridden";
        f.override_reason = "not-relevant";
        f.outcome_at = 90;
        f.received_at = 91;
        s->record_feedback(f);
        auto fb = s->feedback("Patient/1", "rule-x");
        REQUIRE(fb.size() == 1);
        CHECK(fb[0].override_reason == "not-relevant");
        CHECK(fb[0].issuer == "https://ehr-a.example.org");
        CHECK(fb[0].order == "MedicationRequest/7");
        CHECK(fb[0].evidence_hash == "h1");
        CHECK(fb[0].received_at == 91);
        CHECK(s->feedback("Patient/1", "rule-y").empty());
    }
}

TEST_CASE("issued cards are per (issuer, service, card uuid); overrides per (issuer, patient, rule, order)") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        const IssuedCard a{"iss-a", "svc", "u1", "Patient/1", "rule-x", "", "high", "h1", 10};
        s->put_issued_card(a);
        s->put_issued_card({"iss-a", "svc", "u2", "Patient/1", "rule-o", "MedicationRequest/1", "low", "h2", 10});
        s->put_issued_card({"iss-a", "svc", "u3", "Patient/2", "rule-x", "", "high", "h3", 10});
        CHECK_FALSE(s->issued_card("iss-b", "svc", "u1"));
        CHECK_FALSE(s->issued_card("iss-a", "other-svc", "u1"));
        auto got = s->issued_card("iss-a", "svc", "u1");
        REQUIRE(got);
        CHECK(got->severity == "high");
        CHECK(got->evidence_hash == "h1");
        IssuedCard changed = a;
        changed.evidence_hash = "h9";
        changed.issued_at = 20;
        s->put_issued_card(changed);
        CHECK(s->issued_card("iss-a", "svc", "u1")->evidence_hash == "h9");
        const auto cards = s->issued_cards_for_patient("iss-a", "svc", "Patient/1");
        REQUIRE(cards.size() == 2);
        CHECK(cards[1].order == "MedicationRequest/1");
        CHECK(s->issued_cards_for_patient("iss-b", "svc", "Patient/1").empty());

        s->put_override({"iss-a", "Patient/1", "rule-x", "", "u1", "h9", 1000});
        s->put_override({"iss-a", "Patient/1", "rule-o", "MedicationRequest/1", "u2", "h2", 500});
        s->put_override({"iss-b", "Patient/1", "rule-x", "", "u1", "h9", 2000});
        auto in_force = s->overrides_in_force("iss-a", "Patient/1", 100);
        REQUIRE(in_force.size() == 2);
        CHECK(in_force[0].rule_id == "rule-o");
        CHECK(in_force[0].order == "MedicationRequest/1");
        CHECK(in_force[1].evidence_hash == "h9");
        CHECK(in_force[1].until == 1000);
        CHECK(s->overrides_in_force("iss-a", "Patient/1", 500).size() == 1);  // until is exclusive
        CHECK(s->overrides_in_force("iss-a", "Patient/1", 1000).empty());
        CHECK(s->overrides_in_force("iss-a", "Patient/2", 100).empty());
        CHECK(s->overrides_in_force("iss-c", "Patient/1", 100).empty());
        // The latest override of the same (issuer, patient, rule, order) replaces the earlier one.
        s->put_override({"iss-a", "Patient/1", "rule-x", "", "u1", "h10", 300});
        in_force = s->overrides_in_force("iss-a", "Patient/1", 100);
        REQUIRE(in_force.size() == 2);
        CHECK(in_force[1].evidence_hash == "h10");
        CHECK(in_force[1].until == 300);
    }
}

TEST_CASE("a schema-2 state file is upgraded in place: feedback kept, unbound suppressions dropped") {
    const TempFile path("schema2");
    test::write_old_state_file(
        path.path, 2,
        {"CREATE TABLE cds_feedback (id INTEGER PRIMARY KEY, service_id TEXT NOT NULL, card_uuid TEXT NOT NULL,"
         " patient TEXT NOT NULL, rule_id TEXT NOT NULL, outcome TEXT NOT NULL, override_reason TEXT NOT NULL,"
         " outcome_at BIGINT NOT NULL, received_at BIGINT NOT NULL)",
         "INSERT INTO cds_feedback VALUES (1, 'svc', 'u1', 'Patient/1', 'rule-x', 'overridden', 'r', 5, 6)",
         "CREATE TABLE cds_suppressions (patient TEXT NOT NULL, rule_id TEXT NOT NULL, until_at BIGINT NOT NULL,"
         " PRIMARY KEY (patient, rule_id))",
         "INSERT INTO cds_suppressions VALUES ('Patient/1', 'rule-x', 99999999999)"});
    {
        auto s = open_sqlite_store(path);
        const auto fb = s->feedback("Patient/1", "rule-x");
        REQUIRE(fb.size() == 1);
        CHECK(fb[0].issuer.empty());
        CHECK(fb[0].override_reason == "r");
        CHECK(s->overrides_in_force("", "Patient/1", 0).empty());
        s->put_issued_card({"iss", "svc", "u1", "Patient/1", "rule-x", "", "high", "h", 1});
        FeedbackRecord f;
        f.issuer = "iss";
        f.patient = "Patient/1";
        f.rule_id = "rule-x";
        s->record_feedback(f);
    }
    // Reopened as version 3: nothing is upgraded twice.
    auto s = open_sqlite_store(path);
    CHECK(s->feedback("Patient/1", "rule-x").size() == 2);
    CHECK(s->issued_card("iss", "svc", "u1"));
    Poco::Data::Session session(Poco::Data::SQLite::Connector::KEY, path.path);
    using namespace Poco::Data::Keywords;
    std::string version;
    int suppressions = -1;
    session << "SELECT value FROM calcalert_meta WHERE key = 'schema_version'", into(version), now;
    session << "SELECT COUNT(*) FROM sqlite_master WHERE name = 'cds_suppressions'", into(suppressions), now;
    CHECK(version == std::to_string(latest_schema_version()));
    CHECK(suppressions == 0);
}

TEST_CASE("a state file of a newer schema is refused") {
    const TempFile path("schema9");
    test::write_old_state_file(path.path, 9, {});
    CHECK_THROWS_AS(open_sqlite_store(path), StateError);
}

TEST_CASE("calls from several threads are serialized") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        std::vector<std::thread> threads;
        for (int t = 0; t < 4; ++t)
            threads.emplace_back([&, t] {
                for (int i = 0; i < 50; ++i) s->remember_jti("iss", std::to_string(t) + "-" + std::to_string(i), 10, 1);
            });
        for (auto& th : threads) th.join();
        CHECK_FALSE(s->remember_jti("iss", "3-49", 10, 1));
    }
}

TEST_CASE("two processes' stores on one database: run and feedback ids never collide") {
  for (const auto& backend : contract_backends()) {
    CAPTURE(backend.name);
    auto a = backend.open_fresh();
    auto b = backend.open_again();  // another connection, as another process would have
    std::vector<std::int64_t> ids_a, ids_b;
    // A failure inside a thread is kept and reported after the join (not a crash of the test program).
    auto writer = [](StateStore& store, std::vector<std::int64_t>& ids, std::string& error) {
        try {
            for (int i = 0; i < 300; ++i) {
                ids.push_back(store.begin_run("http://s/fhir", i));
                store.record_feedback({"iss", "svc", "card", "Patient/1", "rule-x", "", "", "accepted", "", i, i});
            }
        } catch (const std::exception& e) {
            error = e.what();
        }
    };
    std::string error_a, error_b;
    std::thread ta(writer, std::ref(*a), std::ref(ids_a), std::ref(error_a));
    std::thread tb(writer, std::ref(*b), std::ref(ids_b), std::ref(error_b));
    ta.join();
    tb.join();
    CHECK_MESSAGE(error_a.empty(), error_a);
    CHECK_MESSAGE(error_b.empty(), error_b);
    std::set<std::int64_t> all(ids_a.begin(), ids_a.end());
    all.insert(ids_b.begin(), ids_b.end());
    CHECK(all.size() == 600);
    CHECK(a->runs("http://s/fhir", 1000).size() == 600);
    CHECK(a->feedback("Patient/1", "rule-x").size() == 600);
  }
}

TEST_CASE("a file that is not a state file is a clear error") {
    const TempFile path("garbage");
    {
        std::FILE* f = std::fopen(path.c_str(), "w");
        std::fputs("this is not sqlite at all, just text that is long enough to be read as a header......", f);
        std::fclose(f);
    }
    CHECK_THROWS_AS(open_sqlite_store(path), StateError);
    CHECK_THROWS_AS(open_sqlite_store("/nonexistent-dir/x/state.sqlite"), StateError);
}

namespace {
// Sets (or unsets) environment variables for one scope and restores what was there.
struct ScopedEnv {
    std::vector<std::pair<std::string, std::optional<std::string>>> saved;
    void set(const std::string& name, const char* value) {
        const char* old = std::getenv(name.c_str());
        saved.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
        if (value) ::setenv(name.c_str(), value, 1);
        else ::unsetenv(name.c_str());
    }
    ~ScopedEnv() {
        for (auto it = saved.rbegin(); it != saved.rend(); ++it) {
            if (it->second) ::setenv(it->first.c_str(), it->second->c_str(), 1);
            else ::unsetenv(it->first.c_str());
        }
    }
};
}  // namespace

TEST_CASE("the default state file is under the user's state directory, never the current directory") {
    const auto root = std::filesystem::temp_directory_path() / ("calcalert-statedir-" + std::to_string(::getpid()));
    struct Cleanup {
        std::filesystem::path p;
        ~Cleanup() {
            std::error_code ignored;
            std::filesystem::remove_all(p, ignored);
        }
    } cleanup{root};
    ScopedEnv env;
    env.set("CALCALERT_STATE", nullptr);
    env.set("XDG_STATE_HOME", (root / "xdg").c_str());
    env.set("HOME", (root / "home").c_str());
    CHECK(default_state_path() == (root / "xdg" / "calcalert" / "state.sqlite").string());
    CHECK(std::filesystem::is_directory(root / "xdg" / "calcalert"));

    env.set("XDG_STATE_HOME", "relative/dir");  // not absolute: ignored, as the XDG spec says
    CHECK(default_state_path() == (root / "home" / ".local" / "state" / "calcalert" / "state.sqlite").string());

    env.set("CALCALERT_STATE", "/srv/calcalert/state.sqlite");
    CHECK(default_state_path() == "/srv/calcalert/state.sqlite");

    env.set("CALCALERT_STATE", nullptr);
    env.set("XDG_STATE_HOME", nullptr);
    env.set("HOME", nullptr);
    CHECK_THROWS_AS(default_state_path(), StateError);
}

TEST_CASE("a transaction inside a transaction is a savepoint: its failure undoes only its own writes") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        auto alert = [](const std::string& id) {
            AlertRecord a;
            a.server = "http://s/fhir";
            a.identifier = id;
            a.patient = "Patient/p";
            a.rule_id = "r";
            a.status = "final";
            return a;
        };
        s->transaction([&] {
            s->put_alert(alert("outer"));
            CHECK_THROWS_AS(s->transaction([&] {
                s->put_alert(alert("inner"));
                throw std::runtime_error("inner fails");
            }), std::runtime_error);
            s->transaction([&] { s->put_alert(alert("inner-ok")); });
        });
        CHECK(s->alert("http://s/fhir", "outer"));
        CHECK_FALSE(s->alert("http://s/fhir", "inner"));
        CHECK(s->alert("http://s/fhir", "inner-ok"));
        // An outer failure undoes its savepoints' writes too.
        CHECK_THROWS_AS(s->transaction([&] {
            s->transaction([&] { s->put_alert(alert("nested-then-outer-fails")); });
            throw std::runtime_error("outer fails");
        }), std::runtime_error);
        CHECK_FALSE(s->alert("http://s/fhir", "nested-then-outer-fails"));
    }
}

TEST_CASE("leases: one holder at a time, taken over once expired, extended and given up by the holder") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        CHECK(s->claim("srv", "feed", "poller-a", 160, 100));
        CHECK(s->lease_holder("srv", "feed", 100) == "poller-a");
        CHECK_FALSE(s->claim("srv", "feed", "poller-b", 170, 110));  // held
        CHECK(s->claim("srv", "feed", "poller-a", 200, 150));        // the holder extends it
        CHECK_FALSE(s->claim("srv", "feed", "poller-b", 260, 199));
        CHECK(s->claim("srv", "Patient/1", "poller-b", 260, 199));   // another subject
        CHECK(s->claim("other-srv", "feed", "poller-b", 260, 199));  // another server
        CHECK(s->claim("srv", "feed", "poller-b", 300, 200));        // expired at 200: taken over
        CHECK(s->lease_holder("srv", "feed", 250) == "poller-b");
        CHECK(s->lease_holder("srv", "feed", 300).empty());          // expired
        s->release("srv", "feed", "poller-a");                       // not the holder: nothing
        CHECK(s->lease_holder("srv", "feed", 250) == "poller-b");
        s->release("srv", "feed", "poller-b");
        CHECK(s->lease_holder("srv", "feed", 250).empty());
        CHECK(s->claim("srv", "feed", "poller-a", 400, 250));
    }
}

TEST_CASE("the CDS call's reads see another connection's writes after their first use") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto reader = backend.open_fresh();
        auto writer = backend.open_again();
        CHECK(reader->issued_cards_for_patient("iss", "svc", "Patient/1").empty());
        CHECK(reader->overrides_in_force("iss", "Patient/1", 100).empty());
        IssuedCard c;
        c.issuer = "iss";
        c.service_id = "svc";
        c.card_uuid = "u1";
        c.patient = "Patient/1";
        c.rule_id = "r1";
        c.severity = "high";
        c.evidence_hash = "h1";
        c.issued_at = 10;
        writer->put_issued_card(c);
        writer->put_override({"iss", "Patient/1", "r1", "", "u1", "h1", 500});
        auto cards = reader->issued_cards_for_patient("iss", "svc", "Patient/1");
        REQUIRE(cards.size() == 1);
        CHECK(cards[0].evidence_hash == "h1");
        CHECK(cards[0].issued_at == 10);
        c.evidence_hash = "h2";
        writer->put_issued_card(c);
        cards = reader->issued_cards_for_patient("iss", "svc", "Patient/1");
        REQUIRE(cards.size() == 1);
        CHECK(cards[0].evidence_hash == "h2");
        CHECK(reader->issued_cards_for_patient("iss", "svc", "Patient/2").empty());
        auto in_force = reader->overrides_in_force("iss", "Patient/1", 100);
        REQUIRE(in_force.size() == 1);
        CHECK(in_force[0].until == 500);
        CHECK(reader->overrides_in_force("iss", "Patient/1", 600).empty());
    }
}

TEST_CASE("leases and jti across connections: of many claiming at once, exactly one wins") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto first = backend.open_fresh();
        std::vector<std::unique_ptr<StateStore>> stores;
        for (int i = 0; i < 4; ++i) stores.push_back(backend.open_again());
        std::vector<int> leases(stores.size(), 0), jtis(stores.size(), 0);
        std::vector<std::string> errors(stores.size());
        std::vector<std::thread> threads;
        for (std::size_t t = 0; t < stores.size(); ++t)
            threads.emplace_back([&, t] {
                try {
                    for (int i = 0; i < 40; ++i) {
                        leases[t] += stores[t]->claim("srv", "Patient/" + std::to_string(i), "poller-" + std::to_string(t),
                                                      1000, 100);
                        jtis[t] += stores[t]->remember_jti("iss", "jti-" + std::to_string(i), 1000, 100);
                    }
                } catch (const std::exception& e) {
                    errors[t] = e.what();
                }
            });
        for (auto& th : threads) th.join();
        for (const auto& e : errors) CHECK_MESSAGE(e.empty(), e);
        int lease_total = 0, jti_total = 0;
        for (std::size_t t = 0; t < stores.size(); ++t) {
            lease_total += leases[t];
            jti_total += jtis[t];
        }
        CHECK(lease_total == 40);
        CHECK(jti_total == 40);
        CHECK_FALSE(first->remember_jti("iss", "jti-7", 1000, 100));  // a replay to another connection
    }
}

TEST_CASE("the work queue: pending patients, deferral, rechecks one by one") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        s->enqueue_patient("srv", "Patient/2", 10);
        s->enqueue_patient("srv", "Patient/1", 11);
        s->enqueue_patient("srv", "Patient/1", 12);
        REQUIRE(s->pending_patient("srv", "Patient/1"));
        CHECK(s->pending_patient("srv", "Patient/1")->generation == 1);  // queued twice
        CHECK_FALSE(s->pending_patient("other", "Patient/1"));
        s->defer_patient("srv", "Patient/2", "HTTP 503");
        const auto pending = s->pending_patients("srv");
        REQUIRE(pending.size() == 2);
        CHECK(pending[0].patient == "Patient/1");
        CHECK(pending[1].attempts == 1);
        CHECK(pending[1].last_error == "HTTP 503");
        // A poller that read generation 1 finishes, but the feed queued the patient again meanwhile:
        // it stays queued; finished at the generation it is at, it goes.
        s->enqueue_patient("srv", "Patient/1", 13);
        s->finish_patient("srv", "Patient/1", 1);
        REQUIRE(s->pending_patient("srv", "Patient/1"));
        CHECK(s->pending_patient("srv", "Patient/1")->generation == 2);
        s->finish_patient("srv", "Patient/1", 2);
        CHECK_FALSE(s->pending_patient("srv", "Patient/1"));
        CHECK_FALSE(s->recheck("srv", "Patient/1"));
        s->set_recheck("srv", "Patient/1", {500, "basis-1"});
        s->set_recheck("srv", "Patient/1", {kNoRecheck, "basis-2"});
        const auto r = s->recheck("srv", "Patient/1");
        REQUIRE(r);
        CHECK(r->at == kNoRecheck);
        CHECK(r->basis == "basis-2");
        CHECK(s->rechecks("srv").size() == 1);
    }
}

TEST_CASE("a new database gets every migration; opening it again changes nothing") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        { auto s = backend.open_fresh(); s->set_watermark("srv", "Observation", "w"); }
        auto again = backend.open_again();
        CHECK(again->watermark("srv", "Observation") == "w");
        CHECK(again->backend() == backend.name);
    }
}

TEST_CASE("migration files: statements split at ';' ending a line, comments dropped, tokens per backend") {
    const char* sql = "-- a comment\nCREATE TABLE t (id {{auto_id}},\n  v TEXT NOT NULL);\n\nCREATE INDEX i ON t (v);\n";
    const auto lite = migration_statements(sql, SqlBackend::sqlite);
    REQUIRE(lite.size() == 2);
    CHECK(lite[0] == "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)");
    CHECK(lite[1] == "CREATE INDEX i ON t (v)");
    const auto pg = migration_statements(sql, SqlBackend::postgresql);
    CHECK(pg[0] == "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v TEXT NOT NULL)");
    CHECK_THROWS_AS(migration_statements("CREATE TABLE t (x {{nope}});\n", SqlBackend::sqlite), std::invalid_argument);
    CHECK_THROWS_AS(migration_statements("CREATE TABLE t (x TEXT)\n", SqlBackend::sqlite), std::invalid_argument);
    // The embedded migrations are in order, and the latest is the schema version written.
    int last = 0;
    for (const auto& m : schema_migrations()) {
        CHECK(m.version > last);
        last = m.version;
        CHECK_NOTHROW(migration_statements(m.sql, SqlBackend::postgresql));
    }
    CHECK(latest_schema_version() == last);
    CHECK(last >= 4);
}

TEST_CASE("parameters are numbered for PostgreSQL, outside quoted literals") {
    CHECK(sql_for("SELECT a FROM t WHERE b = ? AND c = '?' AND d = ?", SqlBackend::postgresql) ==
          "SELECT a FROM t WHERE b = $1 AND c = '?' AND d = $2");
    CHECK(sql_for("SELECT ? ", SqlBackend::sqlite) == "SELECT ? ");
}

TEST_CASE("state URLs: SQLite paths and URLs, PostgreSQL URLs refused clearly when wrong") {
    const TempFile file("url");
    CHECK(open_state_store("sqlite://" + file.path)->backend() == "sqlite");
    CHECK(open_state_store(":memory:")->location() == ":memory:");
    auto msg = [](const std::string& url) {
        try {
            open_state_store(url);
        } catch (const StateError& e) {
            return std::string(e.what());
        }
        return std::string("(opened)");
    };
    CHECK(msg("sqlite://relative/state.sqlite").find("absolute path") != std::string::npos);
    CHECK(msg("mysql://db/x").find("unknown state backend") != std::string::npos);
    const std::string with_password = msg("postgresql://u:s3cret@127.0.0.1:1/db");
    CHECK(with_password.find("password") != std::string::npos);
    CHECK(with_password.find("s3cret") == std::string::npos);
    CHECK(msg("postgresql://u@127.0.0.1:1/db?password=s3cret").find("s3cret") == std::string::npos);
    CHECK(msg("postgresql://u@127.0.0.1:1/db?password_file=/nonexistent/pw").find("cannot read the password file") !=
          std::string::npos);
    CHECK(msg("postgresql://u@127.0.0.1:1/db?bad-key=1").find("not a libpq connection parameter") != std::string::npos);
    // Nothing listens on port 1: a clear error naming the database, promptly.
    const std::string refused = msg("postgresql://u@127.0.0.1:1/db?connect_timeout=2");
    CHECK(refused.find("postgresql://u@127.0.0.1:1/db: cannot connect") == 0);
}

TEST_CASE("backfill shards: finished once each, per job") {
    for (const auto& backend : contract_backends()) {
        CAPTURE(backend.name);
        auto s = backend.open_fresh();
        CHECK(s->finished_shards("srv", "https://s/status/1").empty());
        s->finish_shard("srv", "https://s/status/1", 1, 3, 100);
        s->finish_shard("srv", "https://s/status/1", 1, 3, 101);
        s->finish_shard("srv", "https://s/status/1", 0, 3, 102);
        s->finish_shard("srv", "https://s/status/2", 2, 3, 103);
        CHECK(s->finished_shards("srv", "https://s/status/1") == std::set<int>{0, 1});
        CHECK(s->finished_shards("other", "https://s/status/1").empty());
    }
}
