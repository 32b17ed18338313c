// The poller's pure pieces and its state: local patient references, the lab code search from a
// CapabilityStatement, reading one of calcalert's DetectedIssues, write Bundles and the "too large"
// refusal, kill points, the work queue and feed cursors in SQLite, and the schema upgrade.
#include <doctest/doctest.h>

#include "old_state_file.hpp"

#include <unistd.h>

#include <filesystem>

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <rapidjson/document.h>

#include "adapters/poll/change_feed.hpp"
#include "adapters/poll/history_reader.hpp"
#include "adapters/poll/poller.hpp"
#include "adapters/poll/write_back.hpp"
#include "adapters/state/state_store.hpp"

using namespace calcalert;
using namespace calcalert::poll;

TEST_CASE("local_patient: relative, versioned and this server's absolute references; not another server's") {
    const std::string base = "https://fhir.example.org/r4";
    struct Case {
        const char* ref;
        const char* expected;  // nullptr: not a local patient
    };
    const Case cases[] = {
        {"Patient/123", "Patient/123"},
        {"Patient/123/_history/4", "Patient/123"},
        {"https://fhir.example.org/r4/Patient/123", "Patient/123"},
        {"https://fhir.example.org/r4/Patient/123/_history/2", "Patient/123"},
        {"https://other.example.org/r4/Patient/123", nullptr},
        {"https://fhir.example.org/r4x/Patient/123", nullptr},  // a base that only starts the same
        {"https://fhir.example.org/Patient/123", nullptr},
        {"Group/7", nullptr},
        {"urn:uuid:3f2b9c44-8e1d-4a6b-9c55-0d1e2f3a4b5c", nullptr},
        {"#contained", nullptr},
        {"", nullptr},
    };
    for (const auto& c : cases) {
        CAPTURE(c.ref);
        const auto got = local_patient(c.ref, base);
        if (c.expected) {
            REQUIRE(got);
            CHECK(*got == c.expected);
        } else {
            CHECK_FALSE(got);
        }
    }
}

TEST_CASE("the lab code search follows the CapabilityStatement's Observation search parameters") {
    auto from = [](const char* params) {
        rapidjson::Document d;
        const std::string cs = std::string(R"({"resourceType":"CapabilityStatement","rest":[{"resource":[)"
                                           R"({"type":"Patient","searchParam":[{"name":"combo-code"}]},)"
                                           R"({"type":"Observation","searchParam":[)") +
                               params + "]}]}]}";
        d.Parse(cs.c_str());
        return lab_code_search_from_capabilities(d);
    };
    CHECK(from(R"({"name":"code"},{"name":"combo-code"},{"name":"component-code"})") == LabCodeSearch::combo_code);
    CHECK(from(R"({"name":"code"},{"name":"component-code"})") == LabCodeSearch::code_and_component_code);
    CHECK(from(R"({"name":"code"})") == LabCodeSearch::code_and_panels);  // Patient's combo-code does not count
    CHECK(from(R"(7,"x",{"name":5})") == LabCodeSearch::code_and_panels);   // junk is ignored, not trusted
    rapidjson::Document empty;
    empty.Parse("{}");
    CHECK(lab_code_search_from_capabilities(empty) == LabCodeSearch::code_and_panels);
}

TEST_CASE("read_server_alert: identifier in calcalert's system, version, rule, evidence hash") {
    rapidjson::Document d;
    d.Parse(R"({"resourceType":"DetectedIssue","id":"di-9","meta":{"versionId":"3"},"status":"amended","severity":"high",
      "extension":[{"url":"urn:other","valueString":"x"},{"url":"urn:calcalert:extension:evidence-hash","valueString":"abc"}],
      "identifier":[{"system":"urn:other","value":"o"},{"system":"urn:calcalert:detected-issue","value":"id-1"}],
      "code":{"coding":[{"system":"urn:calcalert:rule","code":"calciphylaxis-risk"}]}})");
    ServerAlert a;
    REQUIRE(read_server_alert(d, "urn:calcalert:detected-issue", "urn:calcalert:extension:evidence-hash", a));
    CHECK(a.identifier == "id-1");
    CHECK(a.id == "di-9");
    CHECK(a.version == "3");
    CHECK(a.status == "amended");
    CHECK(a.severity == "high");
    CHECK(a.rule_id == "calciphylaxis-risk");
    CHECK(a.evidence_hash == "abc");
    CHECK_FALSE(read_server_alert(d, "urn:someone-else", "urn:calcalert:extension:evidence-hash", a));
    rapidjson::Document obs;
    obs.Parse(R"({"resourceType":"Observation","identifier":[{"system":"urn:calcalert:detected-issue","value":"x"}]})");
    CHECK_FALSE(read_server_alert(obs, "urn:calcalert:detected-issue", "", a));
}

TEST_CASE("write Bundles: type, conditional create and guarded update entries") {
    PlannedWrite create;
    create.identifier = "id-1";
    create.method = "POST";
    create.url = "DetectedIssue";
    create.if_none_exist = "identifier=urn%3Ax%7Cid-1";
    create.resource = R"({"resourceType":"DetectedIssue","status":"final"})";
    PlannedWrite update = create;
    update.method = "PUT";
    update.url = "DetectedIssue/di-1";
    update.if_none_exist.clear();
    update.if_match = "W/\"2\"";
    for (const BundleType type : {BundleType::batch, BundleType::transaction}) {
        rapidjson::Document d;
        d.Parse(write_bundle({create, update}, type).c_str());
        REQUIRE_FALSE(d.HasParseError());
        CHECK(std::string(d["type"].GetString()) == to_string(type));
        REQUIRE(d["entry"].Size() == 2);
        CHECK(std::string(d["entry"][0]["request"]["ifNoneExist"].GetString()) == create.if_none_exist);
        CHECK_FALSE(d["entry"][0]["request"].HasMember("ifMatch"));
        CHECK(std::string(d["entry"][1]["request"]["ifMatch"].GetString()) == "W/\"2\"");
        CHECK(std::string(d["entry"][1]["request"]["url"].GetString()) == "DetectedIssue/di-1");
        CHECK(std::string(d["entry"][1]["fullUrl"].GetString()) == "urn:uuid:id-1");
    }
}

TEST_CASE("refused_as_too_large: 413, or a 4xx whose words say so") {
    CHECK(refused_as_too_large(413, ""));
    CHECK(refused_as_too_large(400, "HTTP 400: OperationOutcome: error (invalid): Transaction requires strict isolation but has too many entries"));
    CHECK(refused_as_too_large(400, "Transaction contains more update operations than allowed"));
    CHECK(refused_as_too_large(422, "Bundle exceeds the maximum of 500 entries"));
    CHECK(refused_as_too_large(400, "request entity Too Large"));
    CHECK_FALSE(refused_as_too_large(500, "too many entries"));  // a server error is retried, not split
    CHECK_FALSE(refused_as_too_large(400, "invalid resource"));
    CHECK_FALSE(refused_as_too_large(412, "precondition failed"));
}

TEST_CASE("kill points: name:n, known names only") {
    const auto k = parse_kill_point("bundle-sent:3");
    REQUIRE(k);
    CHECK(k->name == "bundle-sent");
    CHECK(k->n == 3);
    for (const char* bad : {"bundle-sent", "bundle-sent:0", "bundle-sent:x", "nowhere:1", ":1", "bundle-sent:3x", ""})
        CHECK_FALSE(parse_kill_point(bad));
}

namespace {
struct TempDb {
    std::string path = (std::filesystem::temp_directory_path() /
                        ("calcalert-poll-state-" + std::to_string(::getpid()) + ".sqlite"))
                           .string();
    TempDb() { remove(); }
    ~TempDb() { remove(); }
    void remove() const {
        std::error_code ignored;
        for (const char* suffix : {"", "-wal", "-shm", "-journal"}) std::filesystem::remove(path + suffix, ignored);
    }
};
}  // namespace

TEST_CASE("state: the work queue and feed cursors survive reopening; a deferred patient counts its attempts") {
    TempDb db;
    const std::string s = "http://s/fhir";
    {
        auto store = state::open_sqlite_store(db.path);
        store->enqueue_patient(s, "Patient/b", 10);
        store->enqueue_patient(s, "Patient/a", 11);
        store->enqueue_patient(s, "Patient/a", 12);  // already queued: kept as it was
        store->enqueue_patient("http://other/fhir", "Patient/z", 13);
        store->defer_patient(s, "Patient/b", "cannot read Observation/1");
        store->defer_patient(s, "Patient/b", "cannot read Observation/2");
        store->defer_patient(s, "Patient/c", "HTTP 503");  // not queued before: queued now, attempt 1
        store->set_feed_cursor(s, "Observation", {"http://s/fhir/Observation?page=2", "2026-11-01T00:00:00Z", 1761955200});
    }
    auto store = state::open_sqlite_store(db.path);
    const auto pending = store->pending_patients(s);
    REQUIRE(pending.size() == 3);
    CHECK(pending[0].patient == "Patient/a");
    CHECK(pending[0].attempts == 0);
    CHECK(pending[0].queued_at == 11);
    CHECK(pending[1].patient == "Patient/b");
    CHECK(pending[1].attempts == 2);
    CHECK(pending[1].last_error == "cannot read Observation/2");
    CHECK(pending[2].patient == "Patient/c");
    CHECK(pending[2].attempts == 1);
    store->finish_patient(s, "Patient/b", pending[1].generation);
    CHECK(store->pending_patients(s).size() == 2);
    CHECK(store->pending_patients("http://other/fhir").size() == 1);
    const auto c = store->feed_cursor(s, "Observation");
    REQUIRE(c);
    CHECK(c->next_url == "http://s/fhir/Observation?page=2");
    CHECK(c->max_last_updated == "2026-11-01T00:00:00Z");
    CHECK(c->max_last_updated_at == 1761955200);
    CHECK_FALSE(store->feed_cursor(s, "Condition"));
    store->clear_feed_cursor(s, "Observation");
    CHECK_FALSE(store->feed_cursor(s, "Observation"));
}

TEST_CASE("state: a schema-1 state file is upgraded in place, its ledger kept") {
    TempDb db;
    test::write_old_state_file(
        db.path, 1,
        {"CREATE TABLE alerts (server TEXT NOT NULL, identifier TEXT NOT NULL, patient TEXT NOT NULL,"
         " rule_id TEXT NOT NULL, evidence_hash TEXT NOT NULL, status TEXT NOT NULL, server_id TEXT NOT NULL,"
         " server_version TEXT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (server, identifier))",
         "INSERT INTO alerts VALUES ('http://s/fhir', 'id-1', 'Patient/p', 'r', 'h', 'final', 'di-1', '1', 5)"});
    auto store = state::open_sqlite_store(db.path);
    REQUIRE(store->alert("http://s/fhir", "id-1"));
    store->enqueue_patient("http://s/fhir", "Patient/p", 1);
    CHECK(store->pending_patients("http://s/fhir").size() == 1);
}
