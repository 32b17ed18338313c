// Scheduled polling against the real sandbox FHIR server (deploy/sandbox) with a real SQLite state
// file: ground truth, idempotence, cancel, amend, a SIGKILL mid-write-back, dry run, and servers
// that answer with something other than FHIR.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "../unit/test_support.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "../support/poll_support.hpp"
#include "../support/sandbox_server.hpp"
#include "adapters/poll/poller.hpp"
#include "adapters/state/state_store.hpp"
#include "fhir/client.hpp"
#include "fhir/datetime.hpp"
#include "fhir/views.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/terminology.hpp"
#include "rules/catalog.hpp"

using namespace calcalert;
namespace fs = std::filesystem;

using namespace test::polling;
using test::kNow;

TEST_CASE("poll: ground truth, idempotent second poll, cancel, amend") {
    test::SandboxServer sandbox;
    fhir::FhirClient client(client_options(sandbox.base_url()));
    for (const auto& [dir, file] : fixture_files()) load_bundle(client, dir + "/" + file);
    const Truth truth = ground_truth();
    const std::string state_path = temp_state("main");

    auto first = poll_once(sandbox.base_url(), state_path);
    MESSAGE("first poll: " << first.to_json());
    CHECK(first.created > 50);
    CHECK(first.amended + first.cancelled + first.reopened == 0);
    check_equal(truth, open_alerts(client));

    SUBCASE("a second poll writes nothing and evaluates no one; once time has moved the windows, the open alerts are decided again") {
        auto second = poll_once(sandbox.base_url(), state_path);
        MESSAGE("second poll: " << second.to_json());
        CHECK(second.writes.empty());
        CHECK(second.write_batches == 0);
        // Nothing changed, and no finding can end before its recheck time: nobody is read again.
        std::size_t with_alerts = 0;
        for (const auto& [patient, rules] : truth) with_alerts += rules.empty() ? 0 : 1;
        CHECK(second.patients_evaluated == 0);
        CHECK(second.open_alerts_not_due == with_alerts);
        CHECK(second.requests < 20);

        // A day later, only the patients whose recheck time has come by then are evaluated.
        std::size_t due_next_day = 0;
        {
            auto store = state::open_sqlite_store(state_path);
            for (const auto& [patient, r] : store->rechecks(sandbox.base_url()))
                if (truth.count(patient) && !truth.at(patient).empty() && r.at <= kNow + 86400) ++due_next_day;
        }
        auto next_day = poll_once(sandbox.base_url(), state_path, {}, kNow + 86400);
        CHECK(next_day.patients_evaluated == due_next_day);
        CHECK(next_day.open_alerts_not_due == with_alerts - due_next_day);

        // Three years later every lab has left its window: the patients with labs are decided again,
        // and the alerts that rested on labs are cancelled (those resting on conditions alone stay,
        // and are not read: time cannot change them).
        auto later = poll_once(sandbox.base_url(), state_path, {}, kNow + 3 * 365 * 86400);
        MESSAGE("three years later: " << later.to_json());
        CHECK(later.patients_evaluated > due_next_day);
        CHECK(later.cancelled > 0);
        CHECK(later.patients_evaluated + later.open_alerts_not_due <= with_alerts);  // some ended a day later
    }

    SUBCASE("a lab that no longer holds cancels exactly that alert; a new lab amends") {
        // Patient/rajesh-iyer: calciphylaxis-risk from Ca×P 71.1. A corrected phosphate ends it.
        correct_rajesh_iyer_phosphates(client);

        auto third = poll_once(sandbox.base_url(), state_path);
        MESSAGE("after the corrected phosphate: " << third.to_json());
        CHECK(third.cancelled == 1);
        CHECK(third.created + third.amended + third.reopened == 0);
        REQUIRE(third.writes.size() == 1);
        CHECK(third.writes[0].patient == "Patient/rajesh-iyer");
        CHECK(third.writes[0].rule_id == "calciphylaxis-risk");
        Truth expected = truth;
        expected["Patient/rajesh-iyer"].erase("calciphylaxis-risk");
        if (expected["Patient/rajesh-iyer"].empty()) expected.erase("Patient/rajesh-iyer");
        check_equal(expected, open_alerts(client));

        // Patient/harold-kim: metastatic-calcification-risk; a newer, higher phosphate changes the evidence.
        add_harold_kim_labs(client);
        auto fourth = poll_once(sandbox.base_url(), state_path);
        MESSAGE("after a new lab: " << fourth.to_json());
        CHECK(fourth.amended == 1);
        CHECK(fourth.created + fourth.cancelled + fourth.reopened == 0);
        bool amended = false;
        for (const auto& i : server_issues(client, "urn:calcalert:detected-issue"))
            if (i.patient == "Patient/harold-kim" && i.rule == "metastatic-calcification-risk") amended = i.status == "amended";
        CHECK(amended);
        check_equal(expected, open_alerts(client));
    }
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(state_path + suffix);
}

TEST_CASE("poll: a patient queued again while its writes are in flight stays queued for the next pass") {
    // Another poller's feed (a second connection to the same state) queues every patient with a
    // finding again right after this pass has read its first ten patients, whose writes have not
    // landed yet: those ten must not be taken off the queue by this pass.
    test::SandboxServer sandbox;
    fhir::FhirClient client(client_options(sandbox.base_url()));
    for (const auto& [dir, file] : fixture_files()) load_bundle(client, dir + "/" + file);
    const Truth truth = ground_truth();
    const std::string state_path = temp_state("requeued");
    poll::PollOptions opt;
    bool requeued = false;
    opt.progress = [&](std::size_t, std::size_t) {
        if (requeued) return;
        requeued = true;
        auto other = state::open_sqlite_store(state_path);
        for (const auto& [patient, rules] : truth)
            if (!rules.empty()) other->enqueue_patient(sandbox.base_url(), patient, kNow);
    };
    const auto first = poll_once(sandbox.base_url(), state_path, opt);
    REQUIRE(requeued);
    check_equal(truth, open_alerts(client));
    const auto pending = state::open_sqlite_store(state_path)->pending_patients(sandbox.base_url());
    CHECK_FALSE(pending.empty());
    CHECK(pending.size() <= 10);
    for (const auto& p : pending) CHECK_MESSAGE(truth.count(p.patient), p.patient);
    // The next pass evaluates them again (nothing to write) and empties the queue.
    const auto second = poll_once(sandbox.base_url(), state_path);
    CHECK(second.patients_evaluated >= pending.size());
    CHECK(second.writes.empty());
    CHECK(state::open_sqlite_store(state_path)->pending_patients(sandbox.base_url()).empty());
    MESSAGE("queued again and kept: " << pending.size() << " of the first pass's " << first.patients_evaluated);
}

TEST_CASE("poll: a dialysis Procedure makes ESRD; a deceased Patient cancels that patient's open alert") {
    test::SandboxServer sandbox;
    fhir::FhirClient client(client_options(sandbox.base_url()));
    for (const auto& [dir, file] : fixture_files()) load_bundle(client, dir + "/" + file);
    const Truth truth = ground_truth();
    const std::string state_path = temp_state("inputs");
    auto first = poll_once(sandbox.base_url(), state_path);
    MESSAGE("first poll: " << first.to_json());
    check_equal(truth, open_alerts(client));
    // The fixtures' ESRD by dialysis alone (tests/fixtures/rules/dialysis.json) holds on the server too.
    // (A leg ulcer with PTH 450, below 9 × 65 = 585: the ulcer differential of clinical-rules.md §5.3.1.)
    CHECK(truth.at("Patient/dia-hd-10-days") == std::set<std::string>{"calciphylaxis-ulcer-differential"});
    CHECK(truth.at("Patient/dia-renal-dialysis-ckd4") == std::set<std::string>{"calciphylaxis-risk"});
    CHECK(truth.at("Patient/dia-hd-40-days").empty());

    // Patient/dia-hd-40-days (a leg ulcer, PTH 450, a hemodialysis 40 days ago: no alert) has a new
    // hemodialysis session, its only change, written with an absolute subject on the server's base.
    const std::string hd = R"({"resourceType":"Procedure","status":"completed",
      "code":{"coding":[{"system":"http://snomed.info/sct","code":"302497006","display":"Hemodialysis"}]},
      "subject":{"reference":")" + sandbox.base_url() + R"(/Patient/dia-hd-40-days"},
      "performedPeriod":{"start":"2026-11-23T08:00:00Z","end":"2026-11-23T12:00:00Z"}})";
    REQUIRE(client.post("Procedure", hd).status == 201);
    // Patient/dia-hd-10-days (calciphylaxis-ulcer-differential open) has died; nothing else of it changes.
    rapidjson::Document patient;
    patient.Parse(client.get("Patient/dia-hd-10-days").body.c_str());
    REQUIRE(patient.IsObject());
    patient.RemoveMember("meta");
    patient.AddMember("deceasedDateTime", "2026-11-24T03:10:00Z", patient.GetAllocator());
    REQUIRE(client.put("Patient/dia-hd-10-days", to_json(patient)).status == 200);

    auto second = poll_once(sandbox.base_url(), state_path);
    MESSAGE("after the Procedure and the death: " << second.to_json());
    CHECK(second.created == 1);
    CHECK(second.cancelled == 1);
    CHECK(second.amended + second.reopened == 0);
    Truth expected = truth;
    expected["Patient/dia-hd-40-days"] = {"calciphylaxis-ulcer-differential"};
    expected.erase("Patient/dia-hd-10-days");
    check_equal(expected, open_alerts(client));
    bool cancelled = false;
    for (const auto& i : server_issues(client, "urn:calcalert:detected-issue"))
        if (i.patient == "Patient/dia-hd-10-days" && i.rule == "calciphylaxis-ulcer-differential")
            cancelled = i.status == "cancelled";
    CHECK(cancelled);

    auto third = poll_once(sandbox.base_url(), state_path);
    CHECK(third.writes.empty());
}

TEST_CASE("poll: a Condition the rules do not read queues nobody; one recoded away from a rule's concept does") {
    test::SandboxServer sandbox;
    fhir::FhirClient client(client_options(sandbox.base_url()));
    for (const auto& [dir, file] : fixture_files()) load_bundle(client, dir + "/" + file);
    const Truth truth = ground_truth();
    const std::string patient = "Patient/dia-hd-10-days";  // ESRD by dialysis, a leg ulcer: the ulcer differential
    REQUIRE(truth.at(patient) == std::set<std::string>{"calciphylaxis-ulcer-differential"});
    const std::string state_path = temp_state("counted");
    poll_once(sandbox.base_url(), state_path);
    check_equal(truth, open_alerts(client));

    auto condition = [&](const std::string& system, const std::string& code, const std::string& id = "") {
        return R"({"resourceType":"Condition",)" + (id.empty() ? std::string() : R"("id":")" + id + R"(",)") +
               R"("clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},
                  "code":{"coding":[{"system":")" + system + R"(","code":")" + code + R"("}]},
                  "subject":{"reference":")" + patient + R"("},"recordedDate":"2026-11-24"})";
    };
    const std::string icd10 = "http://hl7.org/fhir/sid/icd-10-cm", sct = "http://snomed.info/sct";

    // An upper respiratory infection (ICD-10-CM J06.9) is no concept of the rules: nobody is read.
    REQUIRE(client.post("Condition", condition(icd10, "J06.9")).status == 201);
    auto second = poll_once(sandbox.base_url(), state_path);
    MESSAGE("after a Condition the rules do not read: " << second.to_json());
    CHECK(second.resources_not_counted == 1);
    CHECK(second.patients_changed == 0);
    CHECK(second.patients_evaluated == 0);
    CHECK(second.writes.empty());

    // Calciphylaxis diagnosed (SNOMED CT 237900002): the differential gives way.
    const auto posted = client.post("Condition", condition(sct, "237900002"));
    REQUIRE(posted.status == 201);
    rapidjson::Document created;
    created.Parse(posted.body.c_str());
    REQUIRE(created.IsObject());
    const std::string id = fhir::string_or_empty(created, "id");
    auto third = poll_once(sandbox.base_url(), state_path);
    MESSAGE("after a diagnosis of calciphylaxis: " << third.to_json());
    CHECK(third.patients_changed == 1);
    CHECK(third.resources_not_counted == 0);
    CHECK(open_alerts(client)[patient].count("calciphylaxis-ulcer-differential") == 0);

    // The diagnosis recoded to J06.9 (no concept any more): the patient must be read again, and the
    // differential is open again.
    REQUIRE(client.put("Condition/" + id, condition(icd10, "J06.9", id)).status == 200);
    auto fourth = poll_once(sandbox.base_url(), state_path);
    MESSAGE("after the diagnosis was recoded away: " << fourth.to_json());
    CHECK(fourth.patients_changed == 1);
    CHECK(fourth.resources_not_counted == 0);
    CHECK(open_alerts(client)[patient].count("calciphylaxis-ulcer-differential") == 1);

    // Changed again, still no concept: nobody is read.
    REQUIRE(client.put("Condition/" + id, condition(icd10, "J06.0", id)).status == 200);
    auto fifth = poll_once(sandbox.base_url(), state_path);
    CHECK(fifth.resources_not_counted == 1);
    CHECK(fifth.patients_changed == 0);
    CHECK(fifth.writes.empty());
    check_equal(truth, open_alerts(client));
}

TEST_CASE("poll: SIGKILL mid-write-back, then a clean run, ends with the clean run's set and no duplicates") {
    test::SandboxServer sandbox;
    fhir::FhirClient client(client_options(sandbox.base_url()));
    for (const auto& [dir, file] : fixture_files()) load_bundle(client, dir + "/" + file);
    const std::string state_path = temp_state("kill");
    const std::string log = state_path + ".log";
    const std::vector<std::string> args{"poll", "--server", sandbox.base_url(), "--once", "--state", state_path,
                                        "--now", "2026-11-25T12:00:00Z", "--batch", "7"};

    const int killed = run_program(args, log, "2");
    CHECK(WIFSIGNALED(killed));
    CHECK(WTERMSIG(killed) == SIGKILL);
    const auto partial = open_alerts(client);
    std::size_t partial_count = 0;
    for (const auto& [p, r] : partial) partial_count += r.size();
    CHECK(partial_count == 14);  // two batches of 7 landed before the kill
    {
        // The feed was read whole (watermark set), and the patients whose writes had not landed are
        // still queued: the next pass resumes with exactly them.
        auto store = state::open_sqlite_store(state_path);
        CHECK(store->watermark(sandbox.base_url(), "Observation"));
        CHECK(store->pending_patients(sandbox.base_url()).size() > 10);
    }

    const int clean = run_program(args, log);
    REQUIRE(WIFEXITED(clean));
    CHECK(WEXITSTATUS(clean) == 0);
    check_equal(ground_truth(), open_alerts(client));
    const int again = run_program(args, log);
    CHECK(WEXITSTATUS(again) == 0);
    CHECK(read_file(log).find("new 0, amended 0, cancelled 0, reopened 0") != std::string::npos);
    for (const char* suffix : {"", "-wal", "-shm", ".log"}) fs::remove(state_path + suffix);
}

TEST_CASE("poll: a cohort seeded by `calcalert sandbox seed` ends with exactly its ground truth on the server") {
    test::SandboxServer sandbox;
    const std::string state_path = temp_state("seeded");
    const std::string expected_path = state_path + ".expected.json";
    const std::string log = state_path + ".log";
    const int seeded = run_program({"sandbox", "seed", "--server", sandbox.base_url(), "--patients", "262", "--seed", "3",
                                    "--now", "2026-11-25T12:00:00Z", "--expected", expected_path},
                                   log);
    REQUIRE(WIFEXITED(seeded));
    REQUIRE_MESSAGE(WEXITSTATUS(seeded) == 0, read_file(log));
    const SeededTruth seeded_cohort = seeded_truth(expected_path);
    const Truth& truth = seeded_cohort.truth;
    const std::size_t expected_alerts = seeded_cohort.alerts;
    CHECK(seeded_cohort.patients == 262);

    auto first = poll_once(sandbox.base_url(), state_path);
    MESSAGE("seeded cohort, first poll: " << first.to_json());
    CHECK(first.created == expected_alerts);
    fhir::FhirClient client(client_options(sandbox.base_url()));
    Truth on_server = open_alerts(client);
    for (const auto& [patient, rules] : truth) {
        auto it = on_server.find(patient);
        CHECK_MESSAGE((it != on_server.end() && it->second == rules), patient << " differs from the ground truth");
    }
    CHECK(on_server.size() == truth.size());
    auto second = poll_once(sandbox.base_url(), state_path);
    CHECK(second.writes.empty());
    for (const char* suffix : {"", "-wal", "-shm", ".log", ".expected.json"}) fs::remove(state_path + suffix);
}

TEST_CASE("poll --dry-run writes nothing and prints what it would write") {
    test::SandboxServer sandbox;
    fhir::FhirClient client(client_options(sandbox.base_url()));
    load_bundle(client, kRoot + "/examples/cohort/cohort.json");
    const std::string state_path = temp_state("dry");
    const std::string log = state_path + ".log";
    const int status = run_program({"poll", "--server", sandbox.base_url(), "--once", "--dry-run", "--state", state_path,
                                    "--now", "2026-11-25T12:00:00Z"},
                                   log);
    CHECK(WEXITSTATUS(status) == 0);
    const std::string out = read_file(log);
    CHECK(out.find("would create  Patient/harold-kim metastatic-calcification-risk") != std::string::npos);
    CHECK(out.find("dry run: patients evaluated 13") != std::string::npos);
    CHECK(server_issues(client, "urn:calcalert:detected-issue").empty());
    auto store = state::open_sqlite_store(state_path);
    CHECK_FALSE(store->watermark(sandbox.base_url(), "Observation"));
    CHECK(store->runs(sandbox.base_url(), 10).empty());
    for (const char* suffix : {"", "-wal", "-shm", ".log"}) fs::remove(state_path + suffix);
}

namespace {
// A server that answers every request with one scripted reply.
class Scripted : public Poco::Net::HTTPRequestHandlerFactory {
public:
    Scripted(int status, std::string type, std::string body) : status_(status), type_(std::move(type)), body_(std::move(body)) {}
    Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
        struct H : Poco::Net::HTTPRequestHandler {
            const Scripted& s;
            explicit H(const Scripted& sc) : s(sc) {}
            void handleRequest(Poco::Net::HTTPServerRequest&, Poco::Net::HTTPServerResponse& resp) override {
                resp.setStatus(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(s.status_));
                resp.setContentType(s.type_);
                resp.sendBuffer(s.body_.data(), s.body_.size());
            }
        };
        return new H(*this);
    }
    int status_;
    std::string type_, body_;
};
}  // namespace

TEST_CASE("a server answering with an OperationOutcome, HTML or non-FHIR JSON: a clear error, state not advanced") {
    struct Case {
        int status;
        const char* type;
        const char* body;
        const char* expect;
    };
    const Case cases[] = {
        {500, "application/fhir+json",
         R"({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"database is down"}]})",
         "database is down"},
        {200, "text/html", "<html><body>Login required</body></html>", "HTML"},
        {200, "application/json", R"({"hello":"world"})", "Observation?"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.expect);
        Poco::Net::ServerSocket socket(Poco::Net::SocketAddress("127.0.0.1", 0));
        Poco::Net::HTTPServer server(new Scripted(c.status, c.type, c.body), socket, new Poco::Net::HTTPServerParams);
        server.start();
        const std::string base = "http://127.0.0.1:" + std::to_string(socket.address().port()) + "/fhir";
        const std::string state_path = temp_state("bad");
        try {
            poll_once(base, state_path);
            FAIL("the poll should fail");
        } catch (const fhir::FhirError& e) {
            const std::string msg = e.what();
            CHECK(msg.find("GET " + base + "/Observation?") != std::string::npos);  // names the request
            CHECK(msg.find(c.expect) != std::string::npos);
        }
        auto store = state::open_sqlite_store(state_path);
        CHECK_FALSE(store->watermark(base, "Observation"));
        CHECK_FALSE(store->watermark(base, "Condition"));
        auto runs = store->runs(base, 5);
        REQUIRE(runs.size() == 1);
        CHECK(runs[0].outcome == "failed");
        server.stop();
        for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(state_path + suffix);
    }
}

TEST_CASE("poll: absolute subjects on this server and labs only in panel components are found, in every lab code search") {
    test::SandboxServer sandbox;
    fhir::FhirClient client(client_options(sandbox.base_url()));
    load_bundle_text(client, replace_all(read_file(kRoot + "/tests/fixtures/poll/server-shapes.json"), "{{BASE}}",
                                         sandbox.base_url()));
    // srv-absolute: ulcer + PTH 450 (not above 9 × 65): the differential since clinical-rules.md §5.3.1.
    const Truth expected = {{"Patient/srv-absolute", {"calciphylaxis-ulcer-differential"}},
                            {"Patient/srv-mixed", {"calciphylaxis-risk"}},
                            {"Patient/srv-panel", {"calciphylaxis-risk"}}};
    struct Mode {
        std::optional<poll::LabCodeSearch> search;
        const char* reported;
    };
    const Mode modes[] = {{std::nullopt, "combo-code"},  // the sandbox's CapabilityStatement offers combo-code
                          {poll::LabCodeSearch::code_and_component_code, "code + component-code"},
                          {poll::LabCodeSearch::code_and_panels, "code + laboratory panels read whole"}};
    int n = 0;
    for (const auto& mode : modes) {
        CAPTURE(mode.reported);
        // Each mode writes under its own identifier system, so the three runs do not see each other.
        poll::PollOptions opt;
        opt.issue.identifier_system = "urn:calcalert:test-shapes-" + std::to_string(n++);
        opt.lab_search = mode.search;
        const std::string state_path = temp_state("shapes");
        const auto sum = poll_once(sandbox.base_url(), state_path, opt);
        CHECK(sum.lab_search == mode.reported);
        CHECK(sum.deferred.empty());
        Truth got;
        for (const auto& i : server_issues(client, opt.issue.identifier_system))
            if (i.status != "cancelled") got[i.patient].insert(i.rule);
        CHECK(got == expected);
        // A second pass on the same state reads no one (nothing changed, nothing is due); one from a
        // fresh state reads everyone again and finds every one of them unchanged.
        const auto again = poll_once(sandbox.base_url(), state_path, opt);
        CHECK(again.writes.empty());
        CHECK(again.patients_evaluated == 0);
        const std::string fresh_path = temp_state("shapes-fresh");
        const auto fresh = poll_once(sandbox.base_url(), fresh_path, opt);
        CHECK(fresh.writes.empty());
        CHECK(fresh.unchanged == 3);
        for (const char* suffix : {"", "-wal", "-shm"}) {
            fs::remove(state_path + suffix);
            fs::remove(fresh_path + suffix);
        }
    }
}

TEST_CASE("poll: a resource that cannot be read is reported, its patient stays queued and is tried again until it reads") {
    test::SandboxOptions no_validation;
    no_validation.extra_args = {"--no-validate"};
    test::SandboxServer sandbox(no_validation);
    fhir::FhirClient client(client_options(sandbox.base_url()));
    const std::string base = sandbox.base_url();
    // Patient/srv-mixed of the shapes fixture, its phosphate's value written as a string.
    std::string bundle = replace_all(read_file(kRoot + "/tests/fixtures/poll/server-shapes.json"), "{{BASE}}", base);
    const std::string good_p = R"("valueQuantity": {
     "value": 7.5,)";
    REQUIRE(bundle.find(good_p) != std::string::npos);
    bundle.replace(bundle.find(good_p), good_p.size(), R"("valueQuantity": {
     "value": "7.5",)");
    load_bundle_text(client, bundle);

    const std::string state_path = temp_state("unreadable");
    const std::string log = state_path + ".log";
    const std::vector<std::string> args{"poll", "--server", base, "--once", "--state", state_path, "--now",
                                        "2026-11-25T12:00:00Z"};
    for (int pass = 1; pass <= 2; ++pass) {
        CAPTURE(pass);
        const int status = run_program(args, log);
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 5);  // finished, a patient left queued
        const std::string out = read_file(log);
        CHECK(out.find("calcalert: warning: cannot read") != std::string::npos);
        CHECK(out.find("Observation/srv-mixed-p") != std::string::npos);
        CHECK(out.find("Observation.valueQuantity.value") != std::string::npos);
        CHECK(out.find("unreadable resources 1") != std::string::npos);
        auto store = state::open_sqlite_store(state_path);
        const auto pending = store->pending_patients(base);
        REQUIRE(pending.size() == 1);
        CHECK(pending[0].patient == "Patient/srv-mixed");
        CHECK(pending[0].attempts == pass);
        CHECK(pending[0].last_error.find("Observation/srv-mixed-p") != std::string::npos);
        const auto runs = store->runs(base, 1);
        REQUIRE(runs.size() == 1);
        CHECK(runs[0].outcome == "incomplete");
        CHECK(runs[0].summary_json.find("\"unreadableResources\":1") != std::string::npos);
    }
    CHECK(open_alerts(client).count("Patient/srv-mixed") == 0);  // Ca without P: nothing yet

    // The lab system corrects the resource: the next pass reads it and writes the alert.
    rapidjson::Document d;
    d.Parse(client.get("Observation/srv-mixed-p").body.c_str());
    d["valueQuantity"]["value"].SetDouble(7.5);
    d.RemoveMember("meta");
    const auto put = client.put("Observation/srv-mixed-p", to_json(d));
    REQUIRE(put.status == 200);
    const int fixed = run_program(args, log);
    REQUIRE(WIFEXITED(fixed));
    CHECK(WEXITSTATUS(fixed) == 0);
    const Truth alerts = open_alerts(client);
    REQUIRE(alerts.count("Patient/srv-mixed"));
    CHECK(alerts.at("Patient/srv-mixed") == std::set<std::string>{"calciphylaxis-risk"});
    CHECK(state::open_sqlite_store(state_path)->pending_patients(base).empty());
    for (const char* suffix : {"", "-wal", "-shm", ".log"}) fs::remove(state_path + suffix);
}

TEST_CASE("poll on a current Medplum (5.x, its transaction caps kept): the same ground truth; transactions split to fit") {
    test::SandboxOptions medplum5;
    medplum5.script = kRoot + "/deploy/medplum5/run-sandbox";
    test::SandboxServer server(medplum5);
    fhir::FhirClient client(client_options(server.base_url()));
    for (const auto& [dir, file] : fixture_files()) load_bundle(client, dir + "/" + file);

    SUBCASE("batch Bundles of 50 (the default)") {
        const std::string state_path = temp_state("medplum5-batch");
        const auto first = poll_once(server.base_url(), state_path);
        MESSAGE("Medplum 5, batch: " << first.to_json());
        CHECK(first.bundle_splits == 0);
        check_equal(ground_truth(), open_alerts(client));
        CHECK(poll_once(server.base_url(), state_path).writes.empty());
        for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(state_path + suffix);
    }
    SUBCASE("transaction Bundles of 50: refused as too large, split until they fit (8 conditional entries)") {
        poll::PollOptions opt;
        opt.write.bundle_type = poll::BundleType::transaction;
        opt.issue.identifier_system = "urn:calcalert:test-medplum5-transaction";
        const std::string state_path = temp_state("medplum5-tx");
        const auto first = poll_once(server.base_url(), state_path, opt);
        MESSAGE("Medplum 5, transaction: " << first.to_json());
        CHECK(first.bundle_splits >= 3);  // 50 -> 25 -> 12 -> 6
        check_equal(ground_truth(), open_alerts(client, opt.issue.identifier_system));
        CHECK(poll_once(server.base_url(), state_path, opt).writes.empty());
        for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(state_path + suffix);
    }
}
