// Several `calcalert poll` processes sharing one PostgreSQL state database (state::WorkLeases): the
// real program, the real sandbox FHIR server with a seeded synthetic cohort, a real throwaway
// PostgreSQL server; one poller SIGKILLed in the middle of its write-back. The survivors take its
// claims over when they expire, and together they end with exactly the ground truth on the server.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <rapidjson/document.h>

#include "../support/poll_support.hpp"
#include "../support/postgres_server.hpp"
#include "../support/sandbox_server.hpp"
#include "adapters/state/state_store.hpp"
#include "fhir/client.hpp"

using namespace calcalert;
using namespace test::polling;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// A private directory for the logs and the seed's ground truth, removed at the end.
struct TempDir {
    fs::path path;
    TempDir() {
        std::string templ = (fs::temp_directory_path() / "calcalert-shared-XXXXXX").string();
        REQUIRE(::mkdtemp(templ.data()));
        path = templ;
    }
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
};

// The pollers started; those still running at the end (a failed check) are SIGKILLed and reaped.
struct Pollers {
    std::map<std::string, pid_t> running;  // worker id -> pid
    std::map<std::string, int> status;     // worker id -> wait status, once it ended

    bool reap(const std::string& worker, bool block) {
        const auto it = running.find(worker);
        if (it == running.end()) return true;
        int st = 0;
        const pid_t w = waitpid(it->second, &st, block ? 0 : WNOHANG);
        if (w != it->second) return false;
        status[worker] = st;
        running.erase(it);
        return true;
    }
    // Waits at most `limit` for `worker` to end.
    bool wait_for(const std::string& worker, std::chrono::seconds limit) {
        for (const auto until = Clock::now() + limit; Clock::now() < until;) {
            if (reap(worker, false)) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        return reap(worker, false);
    }
    ~Pollers() {
        for (const auto& [worker, pid] : running) {
            ::kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
    }
};

std::size_t count_of(const test::PostgresServer& pg, const std::string& sql) {
    const std::string out = pg.psql(sql);
    return static_cast<std::size_t>(std::stoull(out.empty() ? "0" : out));
}

struct RunSummary {
    std::string worker, feed_read_by;
    std::uint64_t evaluated = 0, resources_read = 0 /* not seen before */, feed_pages = 0, writes = 0;
    std::string json;
};

std::vector<std::pair<std::int64_t, RunSummary>> finished_runs(state::StateStore& store, const std::string& server) {
    std::vector<std::pair<std::int64_t, RunSummary>> out;
    for (const auto& r : store.runs(server, 100000)) {
        if (r.outcome == "running") continue;
        rapidjson::Document d;
        d.Parse(r.summary_json.c_str());
        REQUIRE_FALSE(d.HasParseError());
        RunSummary s;
        s.worker = d.HasMember("worker") ? d["worker"].GetString() : "";
        s.feed_read_by = d.HasMember("feedReadBy") ? d["feedReadBy"].GetString() : "";
        s.evaluated = d["patientsEvaluated"].GetUint64();
        s.resources_read = d["resourcesRead"].GetUint64() - d["resourcesSkipped"].GetUint64();  // new ones
        s.feed_pages = d["feedPages"].GetUint64();
        for (const char* k : {"created", "amended", "cancelled", "reopened", "retired"}) s.writes += d[k].GetUint64();
        s.json = r.summary_json.substr(0, 600);
        out.emplace_back(r.id, s);
    }
    return out;
}

}  // namespace

TEST_CASE("three pollers on one PostgreSQL database, one SIGKILLed mid-write-back: exactly the ground truth, queue empty, work shared") {
    if (auto why = test::PostgresServer::unavailable()) {
        MESSAGE("skipped: " << *why);
        return;
    }
    test::PostgresServer pg;
    test::SandboxServer sandbox;
    TempDir dir;
    const std::string base = sandbox.base_url();
    const std::string expected_path = (dir.path / "expected.json").string();
    const int seeded = run_program({"sandbox", "seed", "--server", base, "--patients", "300", "--seed", "5", "--now",
                                    "2026-11-25T12:00:00Z", "--expected", expected_path},
                                   (dir.path / "seed.log").string(), ProgramRun{});
    REQUIRE(WIFEXITED(seeded));
    REQUIRE_MESSAGE(WEXITSTATUS(seeded) == 0, read_file((dir.path / "seed.log").string()));
    const SeededTruth seeded_cohort = seeded_truth(expected_path);
    REQUIRE(seeded_cohort.patients == 300);
    REQUIRE(seeded_cohort.alerts > 50);

    const std::string url = pg.url();
    const std::vector<std::string> workers{"p1", "p2", "p3"};
    const std::string victim = "p1";  // SIGKILLed after its second write Bundle
    Pollers pollers;
    std::map<std::string, std::string> logs;
    for (const auto& w : workers) {
        logs[w] = (dir.path / (w + ".log")).string();
        ProgramRun how;
        if (w == victim) how.env.emplace_back("CALCALERT_TEST_KILL_AT", "bundle-sent:2");
        pollers.running[w] = start_program({"poll", "--server", base, "--interval", "1s", "--state", url, "--lease", "4s",
                                            "--worker-id", w, "--now", "2026-11-25T12:00:00Z", "--batch", "7"},
                                           logs[w], how);
    }

    // The victim dies in its write-back, holding claims on patients whose writes had not all landed.
    REQUIRE_MESSAGE(pollers.wait_for(victim, std::chrono::seconds(180)), "p1 was not killed within 180 s:\n" << read_file(logs[victim]));
    const int victim_status = pollers.status[victim];
    REQUIRE_MESSAGE(WIFSIGNALED(victim_status), "p1 ended without the kill: " << read_file(logs[victim]));
    CHECK(WTERMSIG(victim_status) == SIGKILL);
    const std::size_t orphaned = count_of(pg, "SELECT count(*) FROM poll_leases WHERE owner = 'p1' AND subject LIKE 'Patient/%'");
    MESSAGE("claims p1 held when it was killed: " << orphaned);

    // Quiet: nothing queued, no patient claimed, and each survivor finished a pass that began after that.
    std::int64_t quiet_mark = -1;  // the last run id when the queue was seen empty
    std::set<std::string> quiet_after;
    auto store = state::open_state_store(url);
    const auto quiet_deadline = Clock::now() + std::chrono::seconds(240);
    while (Clock::now() < quiet_deadline && quiet_after.size() < 2) {
        for (const auto& w : workers) {
            if (w == victim) continue;
            REQUIRE_MESSAGE(!pollers.reap(w, false), w << " ended on its own:\n" << read_file(logs[w]));
        }
        const std::size_t pending = count_of(pg, "SELECT count(*) FROM poll_pending");
        // (The feed's claim comes and goes with every pass.)
        const std::size_t claims = count_of(pg, "SELECT count(*) FROM poll_leases WHERE subject LIKE 'Patient/%'");
        const auto runs = finished_runs(*store, base);
        if (pending || claims) {
            quiet_mark = -1;
            quiet_after.clear();
        } else if (quiet_mark < 0) {
            const std::string last = pg.psql("SELECT coalesce(max(id), 0) FROM runs");
            quiet_mark = std::stoll(last);
        } else {
            for (const auto& [id, s] : runs)
                if (id > quiet_mark && s.writes == 0) quiet_after.insert(s.worker);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
    REQUIRE_MESSAGE(quiet_after.size() == 2, "the survivors' passes did not become quiet within 240 s; queued "
                                                 << pg.psql("SELECT count(*) FROM poll_pending") << ", claims "
                                                 << pg.psql("SELECT subject, owner, expires_at FROM poll_leases"));

    for (const auto& w : workers)
        if (w != victim) ::kill(pollers.running.at(w), SIGTERM);
    for (const auto& w : workers) {
        if (w == victim) continue;
        REQUIRE_MESSAGE(pollers.wait_for(w, std::chrono::seconds(60)), w << " did not stop within 60 s of SIGTERM");
        const int st = pollers.status[w];
        CHECK_MESSAGE((WIFEXITED(st) && WEXITSTATUS(st) == 0), w << " ended with " << st << ":\n" << read_file(logs[w]).substr(0, 4000));
    }

    // The server: exactly the ground truth, each identifier once.
    fhir::FhirClient client(client_options(base));
    const auto issues = server_issues(client, "urn:calcalert:detected-issue");
    std::map<std::string, std::size_t> per_identifier;
    for (const auto& i : issues) ++per_identifier[i.identifier];
    for (const auto& [identifier, n] : per_identifier) CHECK_MESSAGE(n == 1, n << " DetectedIssues for " << identifier);
    CHECK(issues.size() == seeded_cohort.alerts);
    const Truth on_server = open_alerts(client);
    check_equal(seeded_cohort.truth, on_server, 20);

    // The ledger agrees with the server, the queue is empty.
    const auto ledger = store->alerts(base);
    CHECK(ledger.size() == issues.size());
    std::map<std::string, std::string> ledger_status;
    for (const auto& a : ledger) ledger_status[a.identifier] = a.status;
    for (const auto& i : issues) CHECK_MESSAGE(ledger_status[i.identifier] == i.status, i.identifier << " in the ledger: '" << ledger_status[i.identifier] << "', on the server: " << i.status);
    CHECK(store->pending_patients(base).empty());
    CHECK(count_of(pg, "SELECT count(*) FROM poll_leases") == 0);

    // The work was shared, and the change feed read by one poller at a time: a pass that did not read
    // it names the one that did; no resource was counted as new by two passes.
    const auto runs = finished_runs(*store, base);
    std::map<std::string, std::uint64_t> evaluated;
    std::uint64_t resources_read = 0;
    std::size_t feed_left_to_another = 0;
    for (const auto& [id, s] : runs) {
        CHECK(std::find(workers.begin(), workers.end(), s.worker) != workers.end());
        evaluated[s.worker] += s.evaluated;
        resources_read += s.resources_read;
        if (!s.feed_read_by.empty()) {
            ++feed_left_to_another;
            CHECK(s.feed_read_by != s.worker);
            CHECK(s.feed_pages == 0);
        }
    }
    std::size_t workers_with_work = 0;
    for (const auto& [w, n] : evaluated) workers_with_work += n > 0 ? 1 : 0;
    std::string per_worker;
    for (const auto& [w, n] : evaluated) per_worker += w + "=" + std::to_string(n) + " ";
    MESSAGE("finished passes " << runs.size() << "; patients evaluated by finished passes: " << per_worker
                               << "; passes that left the feed to another poller " << feed_left_to_another);
    CHECK(workers_with_work >= 2);
    CHECK(feed_left_to_another > 0);
    std::string all_runs;
    for (const auto& [id, s] : runs) all_runs += "\n" + std::to_string(id) + ": " + s.json;
    CHECK_MESSAGE(resources_read <= count_of(pg, "SELECT count(*) FROM seen_versions"), "the passes:" << all_runs);
}
