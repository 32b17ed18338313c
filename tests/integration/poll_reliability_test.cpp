// The poller under a flaky network, odd servers and crashes, against the real sandbox FHIR server
// behind the project's fault-injecting proxy (tests/support/fault-proxy.mjs):
//
// - faults: every fault kind at a combined 30 %; repeated passes converge to exactly the DetectedIssues
//   of a clean run (same identifiers, same statuses, none duplicated), through creates, a cancel, an
//   amend and the cancellations that time brings;
// - quirks: duplicate entries across pages, a looping next link, pages out of `_sort` order, no
//   versionId: one pass gives the clean run's set, a second writes nothing;
// - crashes: the calcalert program SIGKILLed at 50+ distinct points (each feed page, patients read
//   and evaluated, each write Bundle sent and committed, the run record; and by the proxy at
//   requests, mid-body and at writes after the server applied them), each followed by a clean pass:
//   exactly the clean run's set and statuses, and later the same cancellations as a clean run.
//
// Sizes (environment): CALCALERT_FAULT_CYCLES (poll cycles under faults after convergence, default
// 10; docs/reliability.md reports a run of 1,000), CALCALERT_CRASH_STRIDE (run every n-th kill
// point, default 1 = all). The figures of each run are printed as MESSAGE lines.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <signal.h>

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "../support/fault_proxy.hpp"
#include "../support/poll_support.hpp"
#include "../support/sandbox_server.hpp"

using namespace test::polling;

namespace {

const rules::EpochSeconds kT1 = test::at("2026-11-25T12:00:00Z");
const rules::EpochSeconds kT2 = test::at("2027-06-25T12:00:00Z");  // every lab window has passed

std::size_t env_size(const char* name, std::size_t fallback) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    const long long n = std::atoll(v);
    return n > 0 ? static_cast<std::size_t>(n) : fallback;
}

// identifier -> status of calcalert's DetectedIssues in `system`; a duplicate identifier fails.
std::map<std::string, std::string> snapshot(fhir::FhirClient& client, const std::string& system) {
    std::map<std::string, std::string> out;
    for (const auto& i : server_issues(client, system)) {
        CHECK_MESSAGE(out.emplace(i.identifier, i.status).second, "duplicate DetectedIssue " << i.identifier << " in " << system);
        CHECK(i.identifier == mappings::alert_identifier(i.patient, i.rule));
    }
    return out;
}

void check_same(const std::map<std::string, std::string>& clean, const std::map<std::string, std::string>& got) {
    CHECK(clean.size() == got.size());
    std::size_t differ = 0;
    for (const auto& [id, status] : clean) {
        const auto it = got.find(id);
        if (it == got.end() || it->second != status) {
            ++differ;
            MESSAGE(id << ": clean " << status << ", got " << (it == got.end() ? std::string("nothing") : it->second));
        }
    }
    for (const auto& [id, status] : got)
        if (!clean.count(id)) {
            ++differ;
            MESSAGE(id << ": clean nothing, got " << status);
        }
    CHECK(differ == 0);
}

fhir::ClientOptions flaky_client(const std::string& base) {
    fhir::ClientOptions o = client_options(base);
    o.fault_budget = 500;
    return o;
}

struct PassResult {
    bool ok = false;
    poll::PollSummary summary;
    std::string error;
    std::uint64_t retries = 0;
};

PassResult pass(const std::string& base, state::StateStore& store, const std::string& system, rules::EpochSeconds now,
               std::size_t batch = 50) {
    fhir::FhirClient client(flaky_client(base));
    poll::PollOptions opt;
    opt.issue.identifier_system = system;
    opt.write.batch_size = batch;
    poll::Poller poller(client, store, test::terminology(), test::catalog(), opt);
    PassResult r;
    try {
        r.summary = poller.run_once(now);
        r.ok = r.summary.outcome() == "ok";
    } catch (const std::exception& e) {
        r.error = e.what();
    }
    r.retries = client.stats().retries;
    return r;
}

// Passes through the proxy until one finishes cleanly (at most `limit`); returns how many it took.
int converge(const std::string& base, state::StateStore& store, const std::string& system, rules::EpochSeconds now,
             std::uint64_t& retries, int limit = 40) {
    for (int n = 1; n <= limit; ++n) {
        // One write per Bundle: many writes, so that writes meet every fault kind too (a lost answer
        // after the server applied the write among them).
        const PassResult r = pass(base, store, system, now, 1);
        retries += r.retries;
        if (r.ok) return n;
    }
    FAIL("no pass finished cleanly in " << limit << " passes");
    return limit;
}

// The sandbox loaded with the rule fixtures and the example cohort, a client straight to it, and the
// fault-injecting proxy in front of it (`upstream` is filled in).
struct ProxiedSandbox {
    test::SandboxServer sandbox;
    fhir::FhirClient direct{client_options(sandbox.base_url())};
    test::FaultProxy proxy;

    explicit ProxiedSandbox(test::FaultProxyOptions options) : proxy(with_upstream(std::move(options), sandbox.base_url())) {
        for (const auto& [dir, file] : fixture_files()) load_bundle(direct, dir + "/" + file);
    }
    static test::FaultProxyOptions with_upstream(test::FaultProxyOptions o, const std::string& upstream) {
        o.upstream = upstream;
        return o;
    }
};

}  // namespace

TEST_CASE("under every fault kind at a combined 30 %, repeated passes converge to exactly the clean run's DetectedIssues") {
    test::FaultProxyOptions po;
    po.seed = 20261201;
    po.rates = {"all=0.3"};
    ProxiedSandbox world(po);
    auto& sandbox = world.sandbox;
    auto& direct = world.direct;
    auto& proxy = world.proxy;

    const std::string clean_system = "urn:calcalert:test-clean";
    const std::string flaky_system = "urn:calcalert:test-flaky";
    const std::string clean_state = temp_state("faults-clean"), flaky_state = temp_state("faults-flaky");
    auto clean_store = state::open_sqlite_store(clean_state);
    auto flaky_store = state::open_sqlite_store(flaky_state);
    std::uint64_t retries = 0;
    std::vector<std::string> report;

    auto stage = [&](const char* name, rules::EpochSeconds now) {
        const PassResult clean = pass(sandbox.base_url(), *clean_store, clean_system, now);
        REQUIRE_MESSAGE(clean.ok, clean.error);
        const std::uint64_t before = retries;
        const int passes = converge(proxy.base_url(), *flaky_store, flaky_system, now, retries);
        check_same(snapshot(direct, clean_system), snapshot(direct, flaky_system));
        report.push_back(std::string(name) + ": " + std::to_string(passes) + " passes, " + std::to_string(retries - before) +
                         " retries");
    };

    stage("first poll (the fixtures' ground truth created)", kT1);
    correct_rajesh_iyer_phosphates(direct);  // his calciphylaxis-risk no longer holds: cancelled
    add_harold_kim_labs(direct);             // his metastatic-calcification-risk: amended
    stage("a cancel and an amend", kT1);
    stage("seven months later (cancellations)", kT2);

    // Cycles after convergence: every pass that finishes must leave exactly the clean set.
    const std::size_t cycles = env_size("CALCALERT_FAULT_CYCLES", 10);
    std::size_t finished = 0, failed = 0;
    const auto reference = snapshot(direct, clean_system);
    for (std::size_t i = 0; i < cycles; ++i) {
        const PassResult r = pass(proxy.base_url(), *flaky_store, flaky_system, kT2);
        retries += r.retries;
        if (!r.ok) {
            ++failed;
            continue;
        }
        ++finished;
        CHECK(r.summary.writes.empty());
    }
    check_same(reference, snapshot(direct, flaky_system));
    report.push_back(std::to_string(cycles) + " further cycles: " + std::to_string(finished) + " finished, " +
                     std::to_string(failed) + " stopped by their fault budget");
    for (const auto& line : report) MESSAGE(line);
    const std::string stats = proxy.stats();
    MESSAGE("proxy: " << stats);
    MESSAGE("retries in all: " << retries);
    rapidjson::Document st;
    st.Parse(stats.c_str());
    REQUIRE(st.IsObject());
    for (const char* kind : {"503", "429", "reset", "truncate", "malformed", "html", "drop-after-write"}) {
        CAPTURE(kind);
        CHECK(st["faults"][kind].GetInt() > 0);  // every kind was met
    }
    for (const auto& p : {clean_state, flaky_state})
        for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(p + suffix);
}

TEST_CASE("servers that page oddly: duplicate entries, a looping next link, pages out of order, no versionId") {
    test::FaultProxyOptions po;
    po.quirks = {"duplicate-entries", "loop-next", "shuffle", "drop-version"};
    ProxiedSandbox world(po);
    auto& direct = world.direct;
    auto& proxy = world.proxy;
    const std::string state_path = temp_state("quirks");
    auto store = state::open_sqlite_store(state_path);

    poll::PollOptions opt;
    opt.page_size = 50;  // several pages per search
    fhir::FhirClient client(client_options(proxy.base_url()));
    poll::Poller poller(client, *store, test::terminology(), test::catalog(), opt);
    const auto first = poller.run_once(kT1);
    MESSAGE("odd server, first pass: " << first.to_json());
    check_equal(ground_truth(), open_alerts(direct));
    bool loop_noted = false;
    for (const auto& n : first.notes) loop_noted = loop_noted || n.find("leads back to a page already read") != std::string::npos;
    CHECK(loop_noted);
    CHECK(first.resources_skipped > 0);  // the repeated entries
    const auto second = poller.run_once(kT1);
    CHECK(second.writes.empty());
    MESSAGE("proxy: " << proxy.stats());
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(state_path + suffix);
}

namespace {

// One kill point: how the poller is killed, and where.
struct KillPoint {
    std::string how;   // "env" (CALCALERT_TEST_KILL_AT) or "proxy" (the proxy's kill hook)
    std::string spec;  // e.g. "bundle-sent:3" or "after-write:2"
};

std::vector<KillPoint> kill_points() {
    std::vector<KillPoint> out;
    for (int i = 1; i <= 4; ++i) out.push_back({"env", "feed-page:" + std::to_string(i)});
    out.push_back({"env", "feed-done:1"});
    for (int i : {1, 2, 30, 90, 150}) out.push_back({"env", "patient-read:" + std::to_string(i)});
    for (int i : {1, 45, 120}) out.push_back({"env", "patient-evaluated:" + std::to_string(i)});
    for (int i = 1; i <= 12; ++i) out.push_back({"env", "bundle-sent:" + std::to_string(i)});
    for (int i : {1, 4, 8, 12}) out.push_back({"env", "bundle-committed:" + std::to_string(i)});
    out.push_back({"env", "pass-done:1"});
    for (int i = 1; i <= 12; ++i) out.push_back({"proxy", "after-write:" + std::to_string(i)});
    // A pass over the fixtures makes about 150 requests (histories ten patients at a time).
    for (int i : {1, 2, 3, 6, 40, 90, 140}) out.push_back({"proxy", "request:" + std::to_string(i)});
    for (int i : {2, 4, 5, 50, 100, 130}) out.push_back({"proxy", "mid-body:" + std::to_string(i)});
    return out;
}

}  // namespace

TEST_CASE("SIGKILL at 50+ distinct points of a pass, then a clean pass: exactly the clean run's set and statuses") {
    const auto points = kill_points();
    REQUIRE(points.size() >= 50);
    const std::size_t stride = env_size("CALCALERT_CRASH_STRIDE", 1);
    const std::size_t per_server = 12;  // a fresh server now and then keeps its DetectedIssue searches small

    std::size_t tried = 0;
    for (std::size_t group = 0; group * per_server < points.size(); ++group) {
        ProxiedSandbox world{test::FaultProxyOptions{}};  // no faults: the proxy is there for its kill hook
        auto& direct = world.direct;
        auto& proxy = world.proxy;

        // The clean run, through the same proxy (no faults): at T1, then at T2.
        const std::string clean_system = "urn:calcalert:test-kill-clean";
        const std::string clean_state = temp_state("kill-clean");
        const std::string log = clean_state + ".log";
        auto args = [&](const std::string& state_path, const std::string& system, const char* now) {
            return std::vector<std::string>{"poll",  "--server", proxy.base_url(), "--once", "--state", state_path,
                                            "--now", now,        "--batch",        "7",      "--identifier-system", system};
        };
        REQUIRE(WEXITSTATUS(run_program(args(clean_state, clean_system, "2026-11-25T12:00:00Z"), log)) == 0);
        const auto clean_t1 = snapshot(direct, clean_system);
        std::size_t expected_alerts = 0;  // the polled fixtures' ground truth
        for (const auto& [patient, rules] : ground_truth()) expected_alerts += rules.size();
        REQUIRE(clean_t1.size() == expected_alerts);
        REQUIRE(WEXITSTATUS(run_program(args(clean_state, clean_system, "2027-06-25T12:00:00Z"), log)) == 0);
        const auto clean_t2 = snapshot(direct, clean_system);

        for (std::size_t i = group * per_server; i < points.size() && i < (group + 1) * per_server; ++i) {
            if (i % stride != 0) continue;
            const KillPoint& k = points[i];
            CAPTURE(k.how);
            CAPTURE(k.spec);
            const std::string system = "urn:calcalert:test-kill-" + std::to_string(i);
            const std::string state_path = temp_state(("kill-" + std::to_string(i)).c_str());
            ProgramRun how;
            if (k.how == "env") how.env.emplace_back("CALCALERT_TEST_KILL_AT", k.spec);
            else how.before_start = [&](pid_t pid) { proxy.arm_kill(pid, k.spec); };
            const int killed = run_program(args(state_path, system, "2026-11-25T12:00:00Z"), log, how);
            CHECK_MESSAGE(WIFSIGNALED(killed), "the kill point was not reached: " << read_file(log).substr(0, 2000));
            if (WIFSIGNALED(killed)) CHECK(WTERMSIG(killed) == SIGKILL);
            proxy.disarm_kill();

            const int resumed = run_program(args(state_path, system, "2026-11-25T12:00:00Z"), log);
            REQUIRE(WIFEXITED(resumed));
            CHECK_MESSAGE(WEXITSTATUS(resumed) == 0, read_file(log).substr(0, 2000));
            check_same(clean_t1, snapshot(direct, system));
            const int later = run_program(args(state_path, system, "2027-06-25T12:00:00Z"), log);
            CHECK(WEXITSTATUS(later) == 0);
            check_same(clean_t2, snapshot(direct, system));
            ++tried;
            for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(state_path + suffix);
        }
        for (const char* suffix : {"", "-wal", "-shm", ".log"}) fs::remove(clean_state + suffix);
    }
    MESSAGE("kill points tried: " << tried << " of " << points.size());
}
