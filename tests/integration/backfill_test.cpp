// `calcalert poll --backfill bulk` against the sandbox's Bulk Data $export (deploy/sandbox/
// bulk-export.mjs: kick-off, status with Retry-After and X-Progress, manifest, NDJSON files plain,
// gzip-encoded and gzip files), with a real SQLite state file: the ground truth of a seeded cohort,
// the hand-over to incremental polling, a Group export, SIGKILLs while waiting and mid-write-back,
// a job the server no longer knows, and a refused kick-off.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "../unit/test_support.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <rapidjson/document.h>

#include "../support/poll_support.hpp"
#include "../support/sandbox_server.hpp"
#include "adapters/state/state_store.hpp"
#include "fhir/client.hpp"
#include "fhir/views.hpp"

using namespace calcalert;
namespace fs = std::filesystem;
using namespace test::polling;

namespace {

const std::string kCohortNow = "2026-11-25T12:00:00Z";

test::SandboxOptions sandbox_options(std::vector<std::string> args) {
    test::SandboxOptions o;
    o.extra_args = std::move(args);
    return o;
}

// The sandbox with its Bulk Data options, seeded with `patients` synthetic patients; the ground
// truth of the cohort.
struct SeededSandbox {
    test::SandboxServer server;
    Truth truth;
    std::size_t alerts = 0;

    SeededSandbox(std::vector<std::string> bulk_args, int patients, const std::string& scratch)
        : server(sandbox_options(std::move(bulk_args))) {
        const std::string expected = scratch + ".expected.json";
        const std::string log = scratch + ".seed.log";
        const int seeded = run_program({"sandbox", "seed", "--server", server.base_url(), "--patients", std::to_string(patients),
                                        "--seed", "5", "--now", kCohortNow, "--expected", expected},
                                       log);
        REQUIRE(WIFEXITED(seeded));
        REQUIRE_MESSAGE(WEXITSTATUS(seeded) == 0, read_file(log));
        SeededTruth cohort = seeded_truth(expected);
        truth = std::move(cohort.truth);
        alerts = cohort.alerts;
        fs::remove(expected);
        fs::remove(log);
    }
};

std::vector<std::string> backfill_args(const std::string& base, const std::string& state, std::vector<std::string> more = {}) {
    std::vector<std::string> args{"poll", "--server", base, "--once", "--backfill", "bulk", "--state", state, "--now", kCohortNow,
                                  "--overlap", "1s"};
    args.insert(args.end(), more.begin(), more.end());
    return args;
}

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

void remove_state(const std::string& state) {
    for (const char* suffix : {"", "-wal", "-shm", ".log", ".export-part", ".export-part-0", ".export-part-1", ".export-part-2"})
        fs::remove(state + suffix);
}

}  // namespace

TEST_CASE("backfill: a seeded cohort ends with exactly its ground truth; incremental polling takes over at transactionTime") {
    const std::string state = temp_state("backfill");
    const std::string log = state + ".log";
    SeededSandbox sandbox({"--bulk-file-resources", "97", "--bulk-progress-polls", "2"}, 150, state);
    fhir::FhirClient client(client_options(sandbox.server.base_url()));
    // Past the overlap: after the hand-over, the incremental feed has nothing left to read.
    std::this_thread::sleep_for(std::chrono::milliseconds(2200));

    const int first = run_program(backfill_args(sandbox.server.base_url(), state), log);
    const std::string out = read_file(log);
    REQUIRE_MESSAGE(exit_code(first) == 0, out);
    MESSAGE(out.substr(0, out.find('\n')));
    CHECK(out.find("backfill: Bulk Data export as of ") != std::string::npos);
    CHECK(out.find("status polls 3") != std::string::npos);  // two "in progress" answers, then the manifest
    CHECK(out.find("\"event\":\"backfill.waiting\"") != std::string::npos);
    CHECK(out.find("new " + std::to_string(sandbox.alerts) + ",") != std::string::npos);
    check_equal(sandbox.truth, open_alerts(client), 20);

    std::string transaction_time;
    {
        auto store = state::open_sqlite_store(state);
        const auto job = store->watermark(sandbox.server.base_url(), "bulk $export Patient");
        REQUIRE(job);
        transaction_time = *job;
        for (const char* feed : {"Observation", "Condition", "Procedure"}) {
            const auto mark = store->watermark(sandbox.server.base_url(), feed);
            REQUIRE(mark);
            CHECK(*mark == transaction_time);
        }
        // The Condition feed's filter is primed from the export: the Conditions the rules read are known.
        CHECK(store->watermark(sandbox.server.base_url(), "Condition counted") == transaction_time);
        CHECK_FALSE(store->feed_cursor(sandbox.server.base_url(), "bulk $export Patient"));
        CHECK(store->pending_patients(sandbox.server.base_url()).empty());
    }
    CHECK_FALSE(fs::exists(state + ".export-part"));

    // The incremental pass: the feed reads nothing (everything was in the export), and writes nothing.
    const std::vector<std::string> incremental{"poll", "--server", sandbox.server.base_url(), "--once", "--state", state,
                                               "--now", kCohortNow, "--overlap", "1s"};
    REQUIRE(exit_code(run_program(incremental, log)) == 0);
    CHECK(read_file(log).find("new 0, amended 0, cancelled 0, reopened 0") != std::string::npos);
    CHECK(read_file(log).find("resources read 0 ") != std::string::npos);

    // A change after the export is the incremental feed's: a new patient with a calcium of 11.0
    // and a phosphate of 7.5 mg/dL (Ca×P 82.5) gets its alert from the next pass.
    const std::string patient = R"({"resourceType":"Patient","id":"after-export","gender":"female","birthDate":"1950-01-01"})";
    REQUIRE(client.put("Patient/after-export", patient).status == 201);
    const std::string ca = R"({"resourceType":"Observation","status":"final",
      "code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},"subject":{"reference":"Patient/after-export"},
      "effectiveDateTime":"2026-11-24T08:00:00Z","valueQuantity":{"value":11.0,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}})";
    const std::string phos = R"({"resourceType":"Observation","status":"final",
      "code":{"coding":[{"system":"http://loinc.org","code":"2777-1"}]},"subject":{"reference":"Patient/after-export"},
      "effectiveDateTime":"2026-11-24T08:00:00Z","valueQuantity":{"value":7.5,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}})";
    REQUIRE(client.post("Observation", ca).status == 201);
    REQUIRE(client.post("Observation", phos).status == 201);
    REQUIRE(exit_code(run_program(incremental, log)) == 0);
    const std::string third = read_file(log);
    CHECK(third.find("create  Patient/after-export metastatic-calcification-risk") != std::string::npos);
    CHECK(third.find("resources read 2 ") != std::string::npos);

    // The Condition feed's filter holds from the export on: a Condition the rules do not read (an
    // upper respiratory infection, ICD-10-CM J06.9) queues nobody; one of the export's that the rules
    // read, recoded to J06.9, queues its patient.
    auto recoded = [](const rapidjson::Value& condition) {
        rapidjson::Document d;
        d.CopyFrom(condition, d.GetAllocator());
        d.RemoveMember("meta");
        rapidjson::Value code(rapidjson::kObjectType), codings(rapidjson::kArrayType), coding(rapidjson::kObjectType);
        coding.AddMember("system", "http://hl7.org/fhir/sid/icd-10-cm", d.GetAllocator());
        coding.AddMember("code", "J06.9", d.GetAllocator());
        codings.PushBack(coding, d.GetAllocator());
        code.AddMember("coding", codings, d.GetAllocator());
        d.RemoveMember("code");
        d.AddMember("code", code, d.GetAllocator());
        return to_json(d);
    };
    rapidjson::Document page;
    page.Parse(client.get("Condition?_count=200").body.c_str());
    REQUIRE(page.IsObject());
    std::string counted_id;
    {
        auto store = state::open_sqlite_store(state);
        for (const auto& e : page["entry"].GetArray()) {
            const auto& c = e["resource"];
            const std::string id = fhir::string_or_empty(c, "id");
            if (counted_id.empty() && store->counted_resource(sandbox.server.base_url(), "Condition/" + id)) counted_id = id;
        }
    }
    REQUIRE_FALSE(counted_id.empty());
    const std::string unread = R"({"resourceType":"Condition","code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"J06.9"}]},
      "subject":{"reference":"Patient/after-export"},"recordedDate":"2026-11-24"})";
    REQUIRE(client.post("Condition", unread).status == 201);
    REQUIRE(exit_code(run_program(incremental, log)) == 0);
    CHECK(read_file(log).find("(changed 0,") != std::string::npos);
    CHECK(read_file(log).find("Conditions the rules do not read 1") != std::string::npos);
    rapidjson::Document before;
    before.Parse(client.get("Condition/" + counted_id).body.c_str());
    REQUIRE(before.IsObject());
    REQUIRE(client.put("Condition/" + counted_id, recoded(before)).status == 200);
    REQUIRE(exit_code(run_program(incremental, log)) == 0);
    CHECK(read_file(log).find("(changed 1,") != std::string::npos);
    CHECK(read_file(log).find("Conditions the rules do not read") == std::string::npos);

    // A second backfill over the same server writes nothing (its writes are conditional) and never
    // moves a watermark back.
    REQUIRE(exit_code(run_program(backfill_args(sandbox.server.base_url(), state), log)) == 0);
    CHECK(read_file(log).find("new 0, amended 0, cancelled 0, reopened 0") != std::string::npos);
    remove_state(state);
}

TEST_CASE("backfill in 3 shards at once on one state: one export, each shard its own patients, the ground truth, one hand-over") {
    const std::string state = temp_state("backfill-shards");
    SeededSandbox sandbox({"--bulk-file-resources", "97", "--bulk-progress-polls", "2"}, 150, state);
    fhir::FhirClient client(client_options(sandbox.server.base_url()));
    std::this_thread::sleep_for(std::chrono::milliseconds(2200));  // past the overlap, as above

    constexpr int kShards = 3;
    std::vector<int> status(kShards, -1);
    std::vector<std::thread> workers;
    for (int k = 0; k < kShards; ++k)
        workers.emplace_back([&, k] {
            status[static_cast<std::size_t>(k)] = run_program(
                backfill_args(sandbox.server.base_url(), state, {"--shard", std::to_string(k) + "/" + std::to_string(kShards)}),
                state + ".shard" + std::to_string(k) + ".log");
        });
    for (auto& w : workers) w.join();

    int handed_over = 0, resumed = 0;
    std::size_t patients = 0;
    std::vector<std::string> outputs;
    for (int k = 0; k < kShards; ++k) {  // all read and removed before anything is checked
        const std::string log = state + ".shard" + std::to_string(k) + ".log";
        outputs.push_back(read_file(log));
        fs::remove(log);
    }
    for (int k = 0; k < kShards; ++k) {
        const std::string& out = outputs[static_cast<std::size_t>(k)];
        CAPTURE(out);
        REQUIRE(exit_code(status[static_cast<std::size_t>(k)]) == 0);
        const std::string mine = "; shard " + std::to_string(k) + " of 3: ";
        const auto at = out.find(mine);
        REQUIRE(at != std::string::npos);
        patients += std::stoul(out.substr(at + mine.size()));
        handed_over += out.find("(handed over)") != std::string::npos;
        resumed += out.find("(resumed job)") != std::string::npos;
        CHECK(out.find("150 patients") != std::string::npos);  // every shard read the whole export
    }
    CHECK(patients == 150);   // each patient in exactly one shard
    CHECK(handed_over == 1);  // the last to finish
    CHECK(resumed == 2);      // one export job: the others took the first one's status URL
    check_equal(sandbox.truth, open_alerts(client), 20);
    {
        auto store = state::open_sqlite_store(state);
        const auto job = store->watermark(sandbox.server.base_url(), "bulk $export Patient");
        REQUIRE(job);
        for (const char* feed : {"Observation", "Condition", "Procedure"}) CHECK(store->watermark(sandbox.server.base_url(), feed) == *job);
        CHECK_FALSE(store->feed_cursor(sandbox.server.base_url(), "bulk $export Patient"));
        CHECK(store->pending_patients(sandbox.server.base_url()).empty());
    }
    remove_state(state);
}

TEST_CASE("backfill: gzip files, a Group export (only its patients are decided), and no _typeFilter") {
    const std::string state = temp_state("backfill-group");
    const std::string log = state + ".log";
    SeededSandbox sandbox({"--bulk-gzip-files", "--bulk-file-resources", "200"}, 90, state);
    fhir::FhirClient client(client_options(sandbox.server.base_url()));
    // A Group of two patients with findings and one without.
    std::vector<std::string> members;
    for (const auto& [patient, rules] : sandbox.truth) {
        if (members.size() == 2) break;
        members.push_back(patient);
    }
    REQUIRE(members.size() == 2);
    std::string healthy;
    for (int i = 0; i < 90 && healthy.empty(); ++i)
        if (!sandbox.truth.count("Patient/syn-5-" + std::to_string(i))) healthy = "Patient/syn-5-" + std::to_string(i);
    const std::string group = R"({"resourceType":"Group","id":"ward-7","type":"person","actual":true,"member":[)"
                              R"({"entity":{"reference":")" + members[0] + R"("}},{"entity":{"reference":")" + members[1] +
                              R"("}},{"entity":{"reference":")" + healthy + R"("}}]})";
    REQUIRE(client.put("Group/ward-7", group).status == 201);

    REQUIRE(exit_code(run_program(backfill_args(sandbox.server.base_url(), state, {"--bulk-group", "ward-7"}), log)) == 0);
    CHECK(read_file(log).find("3 patients, 2 with a finding or an alert") != std::string::npos);
    Truth group_truth;
    for (const auto& m : members) group_truth[m] = sandbox.truth.at(m);
    check_equal(group_truth, open_alerts(client), 1);

    // The whole population without _typeFilter: every Observation is exported and read; the same
    // ground truth.
    REQUIRE(exit_code(run_program(backfill_args(sandbox.server.base_url(), state, {"--bulk-type-filter", "off"}), log)) == 0);
    const std::string whole = read_file(log);
    CHECK(whole.find("\"typeFilter\":false") != std::string::npos);
    CHECK(whole.find("90 patients") != std::string::npos);
    check_equal(sandbox.truth, open_alerts(client), 20);
    remove_state(state);
}

TEST_CASE("backfill: killed while waiting it resumes the same job; killed mid-write-back it ends with the ground truth") {
    const std::string state = temp_state("backfill-kill");
    const std::string log = state + ".log";
    SeededSandbox sandbox({"--bulk-file-resources", "150"}, 120, state);
    fhir::FhirClient client(client_options(sandbox.server.base_url()));

    ProgramRun kill_started;
    kill_started.env = {{"CALCALERT_TEST_KILL_AT", "export-started:1"}};
    const int killed = run_program(backfill_args(sandbox.server.base_url(), state), log, kill_started);
    CHECK(WIFSIGNALED(killed));
    std::string status_url;
    {
        auto store = state::open_sqlite_store(state);
        const auto job = store->feed_cursor(sandbox.server.base_url(), "bulk $export Patient");
        REQUIRE(job);
        status_url = job->next_url;
        CHECK(status_url.find("/$export-status/") != std::string::npos);
    }

    // Resumed: the same status URL, then a SIGKILL after the second write Bundle.
    ProgramRun kill_writing;
    kill_writing.env = {{"CALCALERT_TEST_KILL_AT", "bundle-sent:2"}};
    const int killed_writing = run_program(backfill_args(sandbox.server.base_url(), state, {"--batch", "6"}), log, kill_writing);
    CHECK(WIFSIGNALED(killed_writing));
    {
        auto store = state::open_sqlite_store(state);
        CHECK(store->pending_patients(sandbox.server.base_url()).size() > 5);  // the rest stay queued
    }
    const int resumed = run_program(backfill_args(sandbox.server.base_url(), state, {"--batch", "6"}), log);
    const std::string out = read_file(log);
    REQUIRE_MESSAGE(exit_code(resumed) == 0, out);
    CHECK(out.find("(resumed job)") != std::string::npos);
    CHECK(out.find(status_url) != std::string::npos);
    check_equal(sandbox.truth, open_alerts(client), 20);
    // Exactly one DetectedIssue per (patient, rule): none duplicated by the killed run.
    std::size_t issues = server_issues(client, "urn:calcalert:detected-issue").size();
    CHECK(issues == sandbox.alerts);

    // A job the server no longer knows (deleted, or expired) is started again.
    REQUIRE(exit_code(run_program(backfill_args(sandbox.server.base_url(), state), log, kill_started)) != 0);
    std::string gone_url;
    {
        auto store = state::open_sqlite_store(state);
        gone_url = store->feed_cursor(sandbox.server.base_url(), "bulk $export Patient")->next_url;
    }
    REQUIRE(client.del(gone_url).status == 202);
    REQUIRE(exit_code(run_program(backfill_args(sandbox.server.base_url(), state), log)) == 0);
    CHECK(read_file(log).find("the saved job was gone: started again") != std::string::npos);
    CHECK(read_file(log).find("new 0, amended 0, cancelled 0, reopened 0") != std::string::npos);
    CHECK(server_issues(client, "urn:calcalert:detected-issue").size() == sandbox.alerts);
    remove_state(state);
}

TEST_CASE("backfill: a kick-off the server refuses is a clear error (exit 3), nothing written") {
    const std::string state = temp_state("backfill-refused");
    const std::string log = state + ".log";
    SeededSandbox sandbox({}, 20, state);
    fhir::FhirClient client(client_options(sandbox.server.base_url()));
    REQUIRE(exit_code(run_program(backfill_args(sandbox.server.base_url(), state, {"--bulk-group", "no-such-group"}), log)) == 3);
    const std::string out = read_file(log);
    CHECK(out.find("Group/no-such-group/$export") != std::string::npos);
    CHECK(out.find("the server did not start the export") != std::string::npos);
    CHECK(out.find("Group/no-such-group is not on this server") != std::string::npos);
    CHECK(open_alerts(client).empty());
    REQUIRE(exit_code(run_program(backfill_args(sandbox.server.base_url(), state, {"--bulk-type-filter", "maybe"}), log)) == 2);
    remove_state(state);
}
