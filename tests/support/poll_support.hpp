// Helpers shared by the polling integration tests (poll_test.cpp, poll_reliability_test.cpp,
// poll_shared_state_test.cpp): the fixture files and their ground truth, a seeded cohort's ground
// truth, loading Bundles into a server, reading calcalert's DetectedIssues back, temporary state
// files, and running the calcalert program (one at a time or several at once).
// Needs CALCALERT_SOURCE_ROOT, CALCALERT_TEST_DIR and CALCALERT_BINARY.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "../unit/test_support.hpp"
#include "adapters/poll/poller.hpp"
#include "adapters/state/state_store.hpp"
#include "fhir/client.hpp"
#include "mappings/detected_issue.hpp"

namespace test::polling {

using namespace calcalert;
namespace fs = std::filesystem;

inline const std::string kRoot = CALCALERT_SOURCE_ROOT;


inline std::string read_file(const std::string& path) {
    std::ifstream in(path);
    REQUIRE(in.good());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline std::string to_json(const rapidjson::Value& v) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    v.Accept(w);
    return sb.GetString();
}

// The fixture files polled: every rule fixture and the example cohort. Left out: references.json and
// identity.json (absolute subject URLs that name another server, urn:uuid subjects and a Patient
// without an id: no subject search on this server can find them), versions.json (a _history Bundle:
// the server keeps only what is written last, with its own version ids) and diagnostic-reports.json
// (Observations inside or listed by a DiagnosticReport: the poller reads Observations only).
inline std::vector<std::pair<std::string, std::string>> fixture_files() {
    static const std::set<std::string> not_polled{"expected.json", "references.json", "identity.json", "versions.json",
                                                  "diagnostic-reports.json"};
    std::vector<std::pair<std::string, std::string>> out;  // (dir, file)
    for (const auto& e : fs::directory_iterator(kRoot + "/tests/fixtures/rules")) {
        const auto name = e.path().filename().string();
        if (e.path().extension() == ".json" && !not_polled.count(name)) out.emplace_back(kRoot + "/tests/fixtures/rules", name);
    }
    out.emplace_back(kRoot + "/examples/cohort", "cohort.json");
    std::sort(out.begin(), out.end());
    return out;
}

// Loads a collection Bundle into the server as a batch of PUTs (client ids kept); every entry must land.
// (A batch, not a transaction: Medplum 5 refuses transactions of more than 50 updates.)
inline void load_bundle_text(fhir::FhirClient& client, const std::string& text) {
    rapidjson::Document d;
    d.Parse(text.c_str());
    REQUIRE_FALSE(d.HasParseError());
    std::string tx = R"({"resourceType":"Bundle","type":"batch","entry":[)";
    bool first = true;
    for (const auto& e : d["entry"].GetArray()) {
        const auto& r = e["resource"];
        const std::string url = std::string(r["resourceType"].GetString()) + "/" + r["id"].GetString();
        tx += (first ? "" : ",") + std::string(R"({"fullUrl":")") + e["fullUrl"].GetString() + R"(","resource":)" +
              to_json(r) + R"(,"request":{"method":"PUT","url":")" + url + R"("}})";
        first = false;
    }
    tx += "]}";
    const rapidjson::Document response = client.transaction(tx);
    for (const auto& e : response["entry"].GetArray()) {
        const std::string status = e["response"]["status"].GetString();
        CHECK_MESSAGE(status.rfind('2', 0) == 0, "loading a fixture entry: " << status << " " << to_json(e));
    }
}

inline void load_bundle(fhir::FhirClient& client, const std::string& path) { load_bundle_text(client, read_file(path)); }

inline std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    for (auto p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
    return s;
}

using Truth = std::map<std::string, std::set<std::string>>;  // patient -> rule ids

inline Truth ground_truth() {
    Truth t;
    std::set<std::string> polled;
    for (const auto& [dir, file] : fixture_files()) polled.insert(dir + "/" + file);
    for (const std::string& dir : {kRoot + "/tests/fixtures/rules", kRoot + "/examples/cohort"}) {
        rapidjson::Document d;
        d.Parse(read_file(dir + "/expected.json").c_str());
        for (const auto& c : d["cases"].GetArray()) {
            if (!polled.count(dir + "/" + c["file"].GetString())) continue;
            auto& rules = t[c["patient"].GetString()];
            for (const auto& r : c["expect"].GetArray()) rules.insert(r.GetString());
        }
    }
    return t;
}

// The ground truth written by `calcalert sandbox seed --expected FILE`: the patients with a finding
// (patient -> rules), how many patients it names (`patients`) and how many alerts it expects.
struct SeededTruth {
    Truth truth;
    std::size_t patients = 0;
    std::size_t alerts = 0;
};

inline SeededTruth seeded_truth(const std::string& expected_path) {
    SeededTruth out;
    rapidjson::Document d;
    d.Parse(read_file(expected_path).c_str());
    REQUIRE_FALSE(d.HasParseError());
    for (const auto& p : d["patients"].GetArray()) {
        std::set<std::string> rules;
        for (const auto& r : p["expect"].GetArray()) rules.insert(r.GetString());
        out.alerts += rules.size();
        if (!rules.empty()) out.truth[p["patient"].GetString()] = rules;
    }
    out.patients = d["patients"].Size();
    return out;
}

struct ServerIssue {
    std::string id, patient, rule, status, identifier;
};

inline std::vector<ServerIssue> server_issues(fhir::FhirClient& client, const std::string& system) {
    std::vector<ServerIssue> out;
    client.search("DetectedIssue?_count=500", [&](const rapidjson::Document& page) {
        if (!page.HasMember("entry")) return;
        for (const auto& e : page["entry"].GetArray()) {
            const auto& r = e["resource"];
            ServerIssue i;
            i.id = r["id"].GetString();
            i.patient = r["patient"]["reference"].GetString();
            i.rule = r["code"]["coding"][0]["code"].GetString();
            i.status = r["status"].GetString();
            for (const auto& idv : r["identifier"].GetArray())
                if (system == idv["system"].GetString()) i.identifier = idv["value"].GetString();
            if (!i.identifier.empty()) out.push_back(i);
        }
    });
    return out;
}

// The open alerts on the server as patient -> rules; fails on a duplicate identifier.
inline Truth open_alerts(fhir::FhirClient& client, const std::string& system = "urn:calcalert:detected-issue") {
    Truth t;
    std::set<std::string> identifiers;
    for (const auto& i : server_issues(client, system)) {
        CHECK_MESSAGE(identifiers.insert(i.identifier).second, "duplicate DetectedIssue for " << i.identifier);
        CHECK(i.identifier == mappings::alert_identifier(i.patient, i.rule));
        if (i.status != "cancelled") t[i.patient].insert(i.rule);
    }
    return t;
}

// `min_patients`: the ground truth must name more patients than this (a fixture that lost its
// patients would otherwise compare equal to an empty server).
inline void check_equal(const Truth& expected, const Truth& actual, std::size_t min_patients = 100) {
    std::size_t compared = 0;
    for (const auto& [patient, rules] : expected) {
        auto it = actual.find(patient);
        const std::set<std::string> got = it == actual.end() ? std::set<std::string>{} : it->second;
        std::string e, g;
        for (const auto& r : rules) e += r + " ";
        for (const auto& r : got) g += r + " ";
        CHECK_MESSAGE(rules == got, patient << ": expected {" << e << "} on the server, found {" << g << "}");
        ++compared;
    }
    for (const auto& [patient, rules] : actual)
        CHECK_MESSAGE(expected.count(patient), "alert for a patient outside the ground truth: " << patient);
    CHECK(compared > min_patients);
}

// Removes the state files handed out by temp_state() (with their -wal, -shm, .log and
// .expected.json companions) when the test program ends, also when a test failed half way.
struct TempStateFiles {
    std::vector<std::string> paths;
    ~TempStateFiles() {
        for (const auto& p : paths)
            for (const char* suffix : {"", "-wal", "-shm", ".log", ".expected.json"}) {
                std::error_code ignored;
                fs::remove(p + suffix, ignored);
            }
    }
};
inline TempStateFiles& temp_state_files() {
    static TempStateFiles files;
    return files;
}

// A fresh state file path in the temp directory (removed at the end of the test program).
inline std::string temp_state(const char* name) {
    const auto p = fs::temp_directory_path() / ("calcalert-poll-" + std::string(name) + "-" + std::to_string(::getpid()) + ".sqlite");
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(p.string() + suffix);
    temp_state_files().paths.push_back(p.string());
    return p.string();
}

inline fhir::ClientOptions client_options(const std::string& base) {
    fhir::ClientOptions o;
    o.base_url = base;
    o.sleep = [](std::chrono::milliseconds) {};
    return o;
}

inline poll::PollSummary poll_once(const std::string& base, const std::string& state_path, poll::PollOptions opt = {},
                                   rules::EpochSeconds now = kNow) {
    fhir::FhirClient client(client_options(base));
    auto store = state::open_sqlite_store(state_path);
    poll::Poller poller(client, *store, terminology(), catalog(), opt);
    return poller.run_once(now);
}

// The fixture changes the polling tests make, as a lab system would:
// Patient/rajesh-iyer's two phosphates corrected to a normal 1.0 mmol/L (his calciphylaxis-risk
// from Ca×P 71.1 no longer holds) ...
inline void correct_rajesh_iyer_phosphates(fhir::FhirClient& client) {
    std::vector<std::string> phosphate_ids;
    client.search("Observation?subject=Patient/rajesh-iyer&code=http://loinc.org%7C2777-1,http://loinc.org%7C14879-1",
                  [&](const rapidjson::Document& page) {
                      for (const auto& e : page["entry"].GetArray()) phosphate_ids.push_back(e["resource"]["id"].GetString());
                  });
    REQUIRE(phosphate_ids.size() == 2);
    for (const auto& id : phosphate_ids) {  // both in mmol/L: 1.0 mmol/L = 3.1 mg/dL, a normal phosphate
        rapidjson::Document obs;
        obs.Parse(client.get("Observation/" + id).body.c_str());
        obs["valueQuantity"]["value"].SetDouble(1.0);
        obs["status"].SetString("corrected");
        obs.RemoveMember("meta");
        REQUIRE(client.put("Observation/" + id, to_json(obs)).status == 200);
    }
}

// ... and a newer, higher phosphate and calcium for Patient/harold-kim (his
// metastatic-calcification-risk evidence changes: amended).
inline void add_harold_kim_labs(fhir::FhirClient& client) {
    const std::string newer = R"({"resourceType":"Observation","status":"final",
      "category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],
      "code":{"coding":[{"system":"http://loinc.org","code":"2777-1"}]},"subject":{"reference":"Patient/harold-kim"},
      "effectiveDateTime":"2026-11-24T08:00:00Z","valueQuantity":{"value":7.9,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}})";
    const std::string newer_ca = R"({"resourceType":"Observation","status":"final",
      "code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},"subject":{"reference":"Patient/harold-kim"},
      "effectiveDateTime":"2026-11-24T08:00:00Z","valueQuantity":{"value":10.1,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}})";
    REQUIRE(client.post("Observation", newer).status == 201);
    REQUIRE(client.post("Observation", newer_ca).status == 201);
}

// How to run the calcalert program: extra environment, and a call made with the child's pid before
// it runs (the child waits for it), e.g. to arm a proxy's kill hook.
struct ProgramRun {
    std::vector<std::pair<std::string, std::string>> env;
    std::function<void(pid_t)> before_start;
};

// Starts the calcalert program with stdout and stderr to `out_path` and returns its pid (wait for it
// with waitpid); it runs several at once.
inline pid_t start_program(const std::vector<std::string>& args, const std::string& out_path, const ProgramRun& how) {
    int go[2];
    REQUIRE(::pipe(go) == 0);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(go[1]);
        char byte = 0;
        if (::read(go[0], &byte, 1) != 1) _exit(126);  // the parent went away
        ::close(go[0]);
        const int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        for (const auto& [name, value] : how.env) setenv(name.c_str(), value.c_str(), 1);
        std::vector<char*> argv;
        std::string bin = CALCALERT_BINARY;
        argv.push_back(bin.data());
        std::vector<std::string> copy = args;
        for (auto& a : copy) argv.push_back(a.data());
        argv.push_back(nullptr);
        execv(bin.c_str(), argv.data());
        _exit(127);
    }
    ::close(go[0]);
    if (how.before_start) how.before_start(pid);
    const char byte = 1;
    const bool started = ::write(go[1], &byte, 1) == 1;
    ::close(go[1]);
    if (!started) {
        ::kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
    }
    REQUIRE(started);
    return pid;
}

// Runs the calcalert program with stdout and stderr to `out_path`; returns the raw wait status.
inline int run_program(const std::vector<std::string>& args, const std::string& out_path, const ProgramRun& how) {
    const pid_t pid = start_program(args, out_path, how);
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

// The same with the test hook that SIGKILLs the poller after `env_kill` write Bundles.
inline int run_program(const std::vector<std::string>& args, const std::string& out_path, const char* env_kill = nullptr) {
    ProgramRun how;
    if (env_kill) how.env.emplace_back("CALCALERT_TEST_KILL_AFTER_BATCHES", env_kill);
    return run_program(args, out_path, how);
}

}  // namespace test::polling
