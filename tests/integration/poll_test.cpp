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

namespace {

const std::string kRoot = CALCALERT_SOURCE_ROOT;
using test::kNow;

using test::catalog;
using test::terminology;

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    REQUIRE(in.good());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string to_json(const rapidjson::Value& v) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    v.Accept(w);
    return sb.GetString();
}

// The fixture files polled: every rule fixture and the example cohort. (references.json is left out:
// its absolute subject URLs name another server, so no subject search on this one can find them.)
std::vector<std::pair<std::string, std::string>> fixture_files() {
    std::vector<std::pair<std::string, std::string>> out;  // (dir, file)
    for (const auto& e : fs::directory_iterator(kRoot + "/tests/fixtures/rules")) {
        const auto name = e.path().filename().string();
        if (e.path().extension() == ".json" && name != "expected.json" && name != "references.json")
            out.emplace_back(kRoot + "/tests/fixtures/rules", name);
    }
    out.emplace_back(kRoot + "/examples/cohort", "cohort.json");
    std::sort(out.begin(), out.end());
    return out;
}

// Loads a collection Bundle into the server as a transaction of PUTs (client ids kept).
void load_bundle(fhir::FhirClient& client, const std::string& path) {
    rapidjson::Document d;
    d.Parse(read_file(path).c_str());
    REQUIRE_FALSE(d.HasParseError());
    std::string tx = R"({"resourceType":"Bundle","type":"transaction","entry":[)";
    bool first = true;
    for (const auto& e : d["entry"].GetArray()) {
        const auto& r = e["resource"];
        const std::string url = std::string(r["resourceType"].GetString()) + "/" + r["id"].GetString();
        tx += (first ? "" : ",") + std::string(R"({"fullUrl":")") + e["fullUrl"].GetString() + R"(","resource":)" +
              to_json(r) + R"(,"request":{"method":"PUT","url":")" + url + R"("}})";
        first = false;
    }
    tx += "]}";
    client.transaction(tx);
}

using Truth = std::map<std::string, std::set<std::string>>;  // patient -> rule ids

Truth ground_truth() {
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

struct ServerIssue {
    std::string id, patient, rule, status, identifier;
};

std::vector<ServerIssue> server_issues(fhir::FhirClient& client, const std::string& system) {
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
Truth open_alerts(fhir::FhirClient& client, const std::string& system = "urn:calcalert:detected-issue") {
    Truth t;
    std::set<std::string> identifiers;
    for (const auto& i : server_issues(client, system)) {
        CHECK_MESSAGE(identifiers.insert(i.identifier).second, "duplicate DetectedIssue for " << i.identifier);
        CHECK(i.identifier == mappings::alert_identifier(i.patient, i.rule));
        if (i.status != "cancelled") t[i.patient].insert(i.rule);
    }
    return t;
}

void check_equal(const Truth& expected, const Truth& actual) {
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
    CHECK(compared > 100);
}

std::string temp_state(const char* name) {
    const auto p = fs::temp_directory_path() / ("calcalert-poll-" + std::string(name) + "-" + std::to_string(::getpid()) + ".sqlite");
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(p.string() + suffix);
    return p.string();
}

fhir::ClientOptions client_options(const std::string& base) {
    fhir::ClientOptions o;
    o.base_url = base;
    o.sleep = [](std::chrono::milliseconds) {};
    return o;
}

poll::PollSummary poll_once(const std::string& base, const std::string& state_path, poll::PollOptions opt = {}) {
    fhir::FhirClient client(client_options(base));
    auto store = state::open_sqlite_store(state_path);
    poll::Poller poller(client, *store, terminology(), catalog(), opt);
    return poller.run_once(kNow);
}

// Runs the calcalert program; returns the raw wait status.
int run_program(const std::vector<std::string>& args, const std::string& out_path, const char* env_kill = nullptr) {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (env_kill) setenv("CALCALERT_TEST_KILL_AFTER_BATCHES", env_kill, 1);
        std::vector<char*> argv;
        std::string bin = CALCALERT_BINARY;
        argv.push_back(bin.data());
        std::vector<std::string> copy = args;
        for (auto& a : copy) argv.push_back(a.data());
        argv.push_back(nullptr);
        execv(bin.c_str(), argv.data());
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

}  // namespace

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

    SUBCASE("a second poll writes nothing") {
        auto second = poll_once(sandbox.base_url(), state_path);
        MESSAGE("second poll: " << second.to_json());
        CHECK(second.writes.empty());
        CHECK(second.write_batches == 0);
        CHECK(second.unchanged == first.created);
    }

    SUBCASE("a lab that no longer holds cancels exactly that alert; a new lab amends") {
        // Patient/rajesh-iyer: calciphylaxis-risk from Ca×P 71.1. A corrected phosphate ends it.
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
        const std::string newer = R"({"resourceType":"Observation","status":"final",
          "category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],
          "code":{"coding":[{"system":"http://loinc.org","code":"2777-1"}]},"subject":{"reference":"Patient/harold-kim"},
          "effectiveDateTime":"2026-11-24T08:00:00Z","valueQuantity":{"value":7.9,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}})";
        const std::string newer_ca = R"({"resourceType":"Observation","status":"final",
          "code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},"subject":{"reference":"Patient/harold-kim"},
          "effectiveDateTime":"2026-11-24T08:00:00Z","valueQuantity":{"value":10.1,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}})";
        REQUIRE(client.post("Observation", newer).status == 201);
        REQUIRE(client.post("Observation", newer_ca).status == 201);
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
        auto store = state::open_sqlite_store(state_path);
        CHECK_FALSE(store->watermark(sandbox.base_url(), "Observation"));  // not advanced
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
    Truth truth;
    rapidjson::Document d;
    d.Parse(read_file(expected_path).c_str());
    REQUIRE_FALSE(d.HasParseError());
    std::size_t expected_alerts = 0;
    for (const auto& p : d["patients"].GetArray()) {
        std::set<std::string> rules;
        for (const auto& r : p["expect"].GetArray()) rules.insert(r.GetString());
        expected_alerts += rules.size();
        if (!rules.empty()) truth[p["patient"].GetString()] = rules;
    }
    CHECK(d["patients"].Size() == 262);

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
