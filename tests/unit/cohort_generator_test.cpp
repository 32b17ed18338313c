// The synthetic cohort of the sandbox: determinism, coverage of every rule, and the key cross-check:
// the generated resources, read through the real pipeline (reader -> FactBuilder -> engine with the
// catalog of the source tree), fire exactly the rules each patient's archetype expects.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>

#include <rapidjson/document.h>

#include "adapters/cli/cli.hpp"
#include "adapters/sandbox/cohort_generator.hpp"
#include "fhir/resource_reader.hpp"
#include "mappings/fact_builder.hpp"
#include "test_support.hpp"

using namespace calcalert;

namespace {

struct Files {
    std::string patients, observations, conditions, expected;
};

Files files_of(const std::vector<sandbox::SyntheticPatient>& cohort, std::uint64_t seed, sandbox::EpochSeconds now) {
    std::ostringstream p, o, c, e;
    sandbox::ExpectedWriter ew(e, now, seed);
    for (const auto& patient : cohort) {
        sandbox::write_ndjson(patient, p, o, c);
        ew.add(patient);
    }
    ew.finish();
    return {p.str(), o.str(), c.str(), e.str()};
}

std::string join(const std::set<std::string>& s) {
    std::string out;
    for (const auto& x : s) out += (out.empty() ? "" : " ") + x;
    return "{" + out + "}";
}

// Reads the texts through the real reader into facts, evaluates every patient with the real catalog
// and compares the fired rule ids with the archetype's. Returns the number of patients with a finding.
std::size_t check_against_engine(const std::vector<sandbox::SyntheticPatient>& cohort,
                                 const std::vector<std::pair<std::string, std::string>>& texts,
                                 sandbox::EpochSeconds now) {
    mappings::FactBuilder builder(test::terminology());
    for (const auto& [name, text] : texts) {
        const auto stats = fhir::read_text(text, name, builder);
        CHECK_FALSE(stats.fatal);
        CHECK(stats.rejected == 0);
    }
    for (const auto& p : builder.problems()) FAIL_CHECK("input problem: " << p.describe());
    std::size_t with_findings = 0;
    for (const auto& patient : cohort) {
        auto it = builder.patients().find(patient.reference());
        REQUIRE_MESSAGE(it != builder.patients().end(), patient.reference() << " was not read");
        std::set<std::string> fired;
        for (const auto& f : rules::evaluate(it->second, now, test::catalog()).findings) fired.insert(f.rule->id);
        const std::set<std::string> expected(patient.expected.begin(), patient.expected.end());
        CHECK_MESSAGE(fired == expected, patient.reference() << " (archetype " << patient.archetype << "): expected "
                                                             << join(expected) << ", the engine fired " << join(fired));
        with_findings += fired.empty() ? 0 : 1;
    }
    return with_findings;
}

}  // namespace

TEST_CASE("cohort generator: the same seed gives the same bytes; another seed another cohort") {
    const auto a = sandbox::generate_cohort(200, 1, test::kNow);
    const auto b = sandbox::generate_cohort(200, 1, test::kNow);
    const Files fa = files_of(a, 1, test::kNow);
    const Files fb = files_of(b, 1, test::kNow);
    CHECK(fa.patients == fb.patients);
    CHECK(fa.observations == fb.observations);
    CHECK(fa.conditions == fb.conditions);
    CHECK(fa.expected == fb.expected);
    CHECK(sandbox::transaction_bundle(a) == sandbox::transaction_bundle(b));

    const auto c = sandbox::generate_cohort(200, 2, test::kNow);
    const Files fc = files_of(c, 2, test::kNow);
    CHECK(fa.observations != fc.observations);
    std::vector<std::string> arch_a, arch_c;
    for (const auto& p : a) arch_a.push_back(p.archetype);
    for (const auto& p : c) arch_c.push_back(p.archetype);
    CHECK(arch_a != arch_c);
    CHECK(a[0].id == "syn-1-0");
    CHECK(c[199].id == "syn-2-199");

    // One patient does not depend on the others: generated alone it is the same.
    const sandbox::CohortGenerator g(1, test::kNow);
    const auto alone = g.patient(137);
    REQUIRE(alone.resources.size() == a[137].resources.size());
    for (std::size_t i = 0; i < alone.resources.size(); ++i) CHECK(alone.resources[i].json == a[137].resources[i].json);
    // A larger cohort starts with the smaller one.
    const auto more = sandbox::generate_cohort(260, 1, test::kNow);
    CHECK(more[199].resources.back().json == a[199].resources.back().json);
}

TEST_CASE("cohort generator: every rule is expected somewhere at N=200; healthy patients and near-misses too") {
    const auto cohort = sandbox::generate_cohort(200, 1, test::kNow);
    std::set<std::string> expected_rules;
    std::size_t none = 0, healthy = 0;
    std::set<std::string> archetypes_seen;
    for (const auto& p : cohort) {
        expected_rules.insert(p.expected.begin(), p.expected.end());
        none += p.expected.empty() ? 1 : 0;
        healthy += p.archetype.rfind("healthy-", 0) == 0 ? 1 : 0;
        archetypes_seen.insert(p.archetype);
        REQUIRE(!p.resources.empty());
        CHECK(p.resources.front().type == "Patient");
        CHECK(p.resources.front().id == p.id);
    }
    for (const auto& r : test::catalog().rules()) CHECK_MESSAGE(expected_rules.count(r.id), r.id << " never expected");
    CHECK(expected_rules.size() == 8);
    CHECK(none > 0);
    // About a third healthy (the weights give 44 of 134).
    CHECK(healthy >= 50);
    CHECK(healthy <= 84);
    // The first block of total_archetype_weight() patients deals every archetype.
    CHECK(archetypes_seen.size() == sandbox::archetypes().size());

    unsigned total = 0;
    std::set<std::string_view> names;
    for (const auto& a : sandbox::archetypes()) {
        total += a.weight;
        CHECK_MESSAGE(names.insert(a.name).second, "duplicate archetype " << a.name);
        CHECK(std::is_sorted(a.expected.begin(), a.expected.end()));
    }
    CHECK(total == sandbox::total_archetype_weight());
}

TEST_CASE("cohort generator: the real pipeline fires exactly the expected rules (seeds 1, 2, 3; N=300)") {
    for (std::uint64_t seed : {1ULL, 2ULL, 3ULL}) {
        CAPTURE(seed);
        const auto cohort = sandbox::generate_cohort(300, seed, test::kNow);
        const Files f = files_of(cohort, seed, test::kNow);
        const std::size_t with_findings = check_against_engine(cohort,
                                                               {{"Patient.ndjson", f.patients},
                                                                {"Observation.ndjson", f.observations},
                                                                {"Condition.ndjson", f.conditions}},
                                                               test::kNow);
        CHECK(with_findings > 100);
    }
}

TEST_CASE("cohort generator: another evaluation time shifts every date with it") {
    const auto now = test::at("2031-02-28T06:30:00Z");
    const auto cohort = sandbox::generate_cohort(150, 9, now);
    const Files f = files_of(cohort, 9, now);
    check_against_engine(
        cohort,
        {{"Patient.ndjson", f.patients}, {"Observation.ndjson", f.observations}, {"Condition.ndjson", f.conditions}},
        now);
}

TEST_CASE("transaction Bundle: PUT with client ids, urn:uuid fullUrls and subjects; evaluates like the NDJSON") {
    const auto cohort = sandbox::generate_cohort(40, 5, test::kNow);
    const std::string bundle = sandbox::transaction_bundle(cohort);
    rapidjson::Document d;
    d.Parse(bundle.c_str());
    REQUIRE_FALSE(d.HasParseError());
    CHECK(std::string(d["resourceType"].GetString()) == "Bundle");
    CHECK(std::string(d["type"].GetString()) == "transaction");
    std::size_t resources = 0;
    for (const auto& p : cohort) resources += p.resources.size();
    REQUIRE(d["entry"].Size() == resources);
    std::map<std::string, std::string> patient_urn;  // Patient id -> fullUrl
    std::set<std::string> full_urls;
    for (const auto& e : d["entry"].GetArray()) {
        const std::string full_url = e["fullUrl"].GetString();
        CHECK(full_url.rfind("urn:uuid:", 0) == 0);
        CHECK(full_url.size() == 45);
        CHECK(full_urls.insert(full_url).second);
        const auto& r = e["resource"];
        const std::string type = r["resourceType"].GetString();
        const std::string id = r["id"].GetString();
        CHECK(std::string(e["request"]["method"].GetString()) == "PUT");
        CHECK(std::string(e["request"]["url"].GetString()) == type + "/" + id);
        if (type == "Patient") {
            patient_urn[id] = full_url;
        } else {
            const std::string subject = r["subject"]["reference"].GetString();
            CHECK(subject.rfind("urn:uuid:", 0) == 0);
            const std::string owner = id.substr(0, id.find('-', id.find('-', 4) + 1));
            CHECK_MESSAGE(patient_urn.count(owner), id << " comes before its patient");
            if (patient_urn.count(owner)) CHECK(subject == patient_urn[owner]);
        }
    }
    CHECK(patient_urn.size() == cohort.size());
    CHECK(sandbox::resource_urn("Patient", "syn-5-0") == patient_urn["syn-5-0"]);
    check_against_engine(cohort, {{"cohort.json", bundle}}, test::kNow);
}

TEST_CASE("expected findings file: now, seed and one entry per patient") {
    const auto cohort = sandbox::generate_cohort(30, 11, test::kNow);
    const Files f = files_of(cohort, 11, test::kNow);
    rapidjson::Document d;
    d.Parse(f.expected.c_str());
    REQUIRE_FALSE(d.HasParseError());
    CHECK(std::string(d["now"].GetString()) == "2026-11-25T12:00:00Z");
    CHECK(d["seed"].GetUint64() == 11);
    REQUIRE(d["patients"].Size() == 30);
    for (rapidjson::SizeType i = 0; i < 30; ++i) {
        const auto& e = d["patients"][i];
        CHECK(std::string(e["patient"].GetString()) == "Patient/syn-11-" + std::to_string(i));
        CHECK(std::string(e["archetype"].GetString()) == cohort[i].archetype);
        CHECK(std::string(e["name"].GetString()) == cohort[i].name);
        std::vector<std::string> expect;
        for (const auto& x : e["expect"].GetArray()) expect.emplace_back(x.GetString());
        CHECK(expect == cohort[i].expected);
    }
    std::ostringstream empty;
    sandbox::ExpectedWriter ew(empty, test::kNow, 0);
    ew.finish();
    rapidjson::Document e;
    e.Parse(empty.str().c_str());
    REQUIRE_FALSE(e.HasParseError());
    CHECK(e["patients"].Size() == 0);
}

TEST_CASE("calcalert sandbox: help, usage errors, and generate writes what generate_cohort gives") {
    auto run = [](std::vector<std::string> args, std::string* out_text = nullptr, std::string* err_text = nullptr) {
        std::ostringstream out, err;
        const int code = calcalert::cli::run(args, out, err);
        if (out_text) *out_text = out.str();
        if (err_text) *err_text = err.str();
        return code;
    };
    std::string out, err;
    CHECK(run({"sandbox", "--help"}, &out) == calcalert::cli::ok);
    CHECK(out.find("generate") != std::string::npos);
    CHECK(run({"sandbox", "generate", "--help"}, &out) == calcalert::cli::ok);
    CHECK(out.find("--patients") != std::string::npos);
    CHECK(run({"sandbox", "seed", "-h"}, &out) == calcalert::cli::ok);
    CHECK(out.find("--batch") != std::string::npos);
    CHECK(run({"--help"}, &out) == calcalert::cli::ok);
    CHECK(out.find("sandbox") != std::string::npos);
    CHECK(run({"sandbox"}) == calcalert::cli::usage_error);
    CHECK(run({"sandbox", "frobnicate"}) == calcalert::cli::usage_error);
    CHECK(run({"sandbox", "generate"}, nullptr, &err) == calcalert::cli::usage_error);
    CHECK(err.find("--out") != std::string::npos);
    CHECK(run({"sandbox", "generate", "--out", "x", "--bogus"}) == calcalert::cli::usage_error);
    CHECK(run({"sandbox", "generate", "--out", "x", "--patients", "-3"}) == calcalert::cli::usage_error);
    CHECK(run({"sandbox", "generate", "--out", "x", "--patients", "12abc"}) == calcalert::cli::usage_error);
    CHECK(run({"sandbox", "generate", "--out", "x", "--seed", "99999999999999999999999"}) ==
          calcalert::cli::usage_error);
    CHECK(run({"sandbox", "generate", "--out", "x", "--format", "xml"}) == calcalert::cli::usage_error);
    CHECK(run({"sandbox", "generate", "--out", "x", "--now", "yesterday"}) == calcalert::cli::usage_error);
    CHECK(run({"sandbox", "generate", "--out", "x", "stray"}) == calcalert::cli::usage_error);
    CHECK(run({"sandbox", "seed"}, nullptr, &err) == calcalert::cli::usage_error);
    CHECK(err.find("--server") != std::string::npos);
    CHECK(run({"sandbox", "seed", "--server", "http://127.0.0.1:9/fhir", "--batch", "0"}) ==
          calcalert::cli::usage_error);
    CHECK(run({"sandbox", "seed", "--server", "not a url"}) == calcalert::cli::usage_error);

    const auto dir = std::filesystem::temp_directory_path() /
                     ("calcalert-sandbox-test-" + std::to_string(static_cast<long long>(::getpid())));
    std::filesystem::remove_all(dir);
    REQUIRE(run({"sandbox", "generate", "--out", (dir / "nd").string(), "--patients", "12", "--seed", "4", "--now",
                 "2026-11-25T12:00:00Z"},
                &out, &err) == calcalert::cli::ok);
    CHECK(err.empty());
    CHECK(out.find("generated 12 patients") != std::string::npos);
    const auto cohort = sandbox::generate_cohort(12, 4, test::kNow);
    const Files f = files_of(cohort, 4, test::kNow);
    auto slurp = [](const std::filesystem::path& p) {
        std::ifstream in(p, std::ios::binary);
        return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    };
    CHECK(slurp(dir / "nd" / "Patient.ndjson") == f.patients);
    CHECK(slurp(dir / "nd" / "Observation.ndjson") == f.observations);
    CHECK(slurp(dir / "nd" / "Condition.ndjson") == f.conditions);
    CHECK(slurp(dir / "nd" / "expected.json") == f.expected);
    REQUIRE(run({"sandbox", "generate", "--out", (dir / "b").string(), "--patients", "12", "--seed", "4", "--now",
                 "2026-11-25T12:00:00Z", "--format", "bundle"}) == calcalert::cli::ok);
    CHECK(slurp(dir / "b" / "cohort.json") == sandbox::transaction_bundle(cohort));
    CHECK(slurp(dir / "b" / "expected.json") == f.expected);
    CHECK_FALSE(std::filesystem::exists(dir / "b" / "Patient.ndjson"));
    // An output path that is a file: exit 3 naming it.
    std::ofstream(dir / "a-file") << "x";
    CHECK(run({"sandbox", "generate", "--out", (dir / "a-file").string()}, nullptr, &err) ==
          calcalert::cli::input_error);
    CHECK(err.find("a-file") != std::string::npos);
    std::filesystem::remove_all(dir);
}
