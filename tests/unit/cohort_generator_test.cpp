// The synthetic cohort of the sandbox: determinism, coverage of every rule, and the key cross-check:
// the generated resources, read through the real pipeline (reader -> FactBuilder -> engine with the
// catalog of the source tree), fire exactly the rules each patient's archetype expects. Also the
// archetype file itself (adapters/sandbox/data/archetypes.json): every archetype on its own, and
// malformed files refused with an error naming the archetype and the key path.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>

#include <rapidjson/document.h>

#include "../support/shell.hpp"
#include "adapters/cli/cli.hpp"
#include "adapters/sandbox/cohort_generator.hpp"
#include "fhir/resource_reader.hpp"
#include "mappings/fact_builder.hpp"
#include "test_support.hpp"

using namespace calcalert;

namespace {

struct Files {
    std::string patients, observations, conditions, procedures, expected;
};

Files files_of(const std::vector<sandbox::SyntheticPatient>& cohort, std::uint64_t seed, sandbox::EpochSeconds now) {
    std::ostringstream p, o, c, pr, e;
    sandbox::ExpectedWriter ew(e, now, seed);
    for (const auto& patient : cohort) {
        sandbox::write_ndjson(patient, p, o, c, pr);
        ew.add(patient);
    }
    ew.finish();
    return {p.str(), o.str(), c.str(), pr.str(), e.str()};
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
    // About a third healthy (the weights give 44 of 137).
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
                                                                {"Condition.ndjson", f.conditions},
                                                                {"Procedure.ndjson", f.procedures}},
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
        {{"Patient.ndjson", f.patients},
         {"Observation.ndjson", f.observations},
         {"Condition.ndjson", f.conditions},
         {"Procedure.ndjson", f.procedures}},
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
    CHECK(slurp(dir / "nd" / "Procedure.ndjson") == f.procedures);
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

namespace {

const std::string kArchetypeFile = std::string(CALCALERT_TEST_DIR) + "/../adapters/sandbox/data/archetypes.json";
const std::string kTerminologyDir = std::string(CALCALERT_TEST_DIR) + "/../mappings/data";

std::string slurp_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The archetype file with `from` (which must occur) replaced by `to`, loaded: the error message.
std::string load_error(const test::TempDir& dir, const std::string& from, const std::string& to) {
    std::string text = slurp_file(kArchetypeFile);
    const auto at = text.find(from);
    REQUIRE_MESSAGE(at != std::string::npos, "the archetype file no longer holds " << from);
    text.replace(at, from.size(), to);
    const auto file = dir.path / "archetypes.json";
    std::ofstream(file, std::ios::binary | std::ios::trunc) << text;
    try {
        sandbox::ArchetypeLibrary::load(file, kTerminologyDir);
    } catch (const sandbox::ArchetypeError& e) {
        return e.what();
    }
    return "(loaded)";
}

}  // namespace

TEST_CASE("archetype file: the default file is the checkout's; groups and expected ids are rule ids") {
    CHECK(sandbox::default_archetype_file() == std::filesystem::path(CALCALERT_SOURCE_DIR) / "adapters" / "sandbox" /
                                                   "data" / "archetypes.json");
    std::set<std::string> rule_ids;
    for (const auto& r : test::catalog().rules()) rule_ids.insert(r.id);
    for (const auto& a : sandbox::archetypes()) {
        CAPTURE(a.name);
        CHECK((rule_ids.count(a.group) || a.group == "near-miss" || a.group == "healthy"));
        CHECK(!a.description.empty());
        for (const auto& e : a.expected) CHECK_MESSAGE(rule_ids.count(e), e << " is not a rule of the catalog");
        if (rule_ids.count(a.group)) CHECK(std::count(a.expected.begin(), a.expected.end(), a.group) == 1);
        if (!rule_ids.count(a.group)) CHECK(a.expected.empty());
    }
}

TEST_CASE("archetype file: every archetype, drawn 30 times on its own, fires exactly its expected rules") {
    const sandbox::CohortGenerator g(21, test::kNow);
    const auto& list = sandbox::archetypes();
    std::vector<sandbox::SyntheticPatient> cohort;
    for (std::size_t a = 0; a < list.size(); ++a)
        for (std::size_t k = 0; k < 30; ++k) {
            cohort.push_back(g.patient_of(a, a * 1000 + k));
            REQUIRE(cohort.back().archetype == list[a].name);
        }
    const Files f = files_of(cohort, 21, test::kNow);
    check_against_engine(
        cohort,
        {{"Patient.ndjson", f.patients},
         {"Observation.ndjson", f.observations},
         {"Condition.ndjson", f.conditions},
         {"Procedure.ndjson", f.procedures}},
        test::kNow);
    CHECK_THROWS_AS(g.patient_of(list.size(), 0), std::out_of_range);
}

TEST_CASE("archetype file: a malformed file is refused naming the file, the archetype and the key path") {
    const test::TempDir dir("archetypes");
    const std::string name = (dir.path / "archetypes.json").string();
    // An unknown key in an item of an archetype.
    std::string e = load_error(dir, R"({"lab": "pth-intact", "band": "pth-above-dialysis-range", "at": "t"})",
                               R"({"lab": "pth-intact", "bnad": "pth-above-dialysis-range", "at": "t"})");
    CHECK_MESSAGE(e.find(name + ": archetype 'cs-esrd-ulcer-high-pth': items[3].bnad: unknown key") == 0, e);
    // A concept the terminology does not have.
    e = load_error(dir, R"({"condition": "skin-necrosis"},)", R"({"condition": "skin-necorsis"},)");
    CHECK_MESSAGE(e.find("archetype 'cs-esrd-necrosis-caxp-suppresses-risk': items[1].condition: 'skin-necorsis' is "
                         "not a concept") != std::string::npos,
                  e);
    // Inside a fragment: the path says where it was used.
    e = load_error(dir, R"({"use": "esrd", "with": {"system": "icd9"}})", R"({"use": "esrd", "with": {"system": "icd11"}})");
    CHECK_MESSAGE(e.find("archetype 'cs-esrd-gangrene-ionized-hypercalcemia': items[0].use(esrd)[1].system: unknown "
                         "system 'icd11'") != std::string::npos,
                  e);
    e = load_error(dir, R"({"use": "mineral-panel", "with": {"ca": "ca-normal", "p": "p-normal", "at": "t"}}]},)",
                   R"({"use": "mineral-panel", "with": {"ca": "ca-normal", "at": "t"}}]},)");
    CHECK_MESSAGE(e.find("items[4].with: fragment 'mineral-panel' needs 'p'") != std::string::npos, e);
    // A band without the unit that may be drawn; a time used before it is set.
    e = load_error(dir, R"("band": "pth-above-dialysis-range", "at": "t"})", R"("band": "egfr-ref", "at": "t"})");
    CHECK_MESSAGE(e.find("items[3].band: band 'egfr-ref' has no pg/mL range") != std::string::npos, e);
    e = load_error(dir, R"({"time": "t", "daysAgo": [1, 45]},)", R"({"time": "t0", "daysAgo": [1, 45]},)");
    CHECK_MESSAGE(e.find("items[3].at: no time 't' is set before this item") != std::string::npos, e);
    // An "other" code that the terminology reads as a concept; a code not of its concept.
    e = load_error(dir, R"("code": "I10", "display": "Essential (primary) hypertension")",
                   R"("code": "N18.6", "display": "Essential (primary) hypertension")");
    CHECK_MESSAGE(e.find(name + ": otherCodes.hypertension.codes[0].code: mappings/data reads N18.6 as esrd") == 0, e);
    e = load_error(dir, R"("codes": ["440.23"])", R"("codes": ["440.24"])");
    CHECK_MESSAGE(e.find("archetype 'nm-codes-outside-value-sets': items[0].oneOf[1].items[0].codes: '440.24' is not a "
                         "code of skin-ulcer") != std::string::npos,
                  e);
    // Top level, wrong types, bad JSON, a missing file.
    e = load_error(dir, R"("systems": {)", R"("sytems": {}, "systems": {)");
    CHECK_MESSAGE(e == name + ": sytems: unknown key", e);
    e = load_error(dir, R"("weight": 4, "expect")", R"("weight": "four", "expect")");
    CHECK_MESSAGE(e.find("archetype 'cs-esrd-ulcer-high-pth': weight: expected a whole number") != std::string::npos, e);
    e = load_error(dir, R"("expect": ["calciphylaxis-suspected"],)", R"("expect": ["calciphylaxis-suspected",],)");
    CHECK_MESSAGE(e.find(name + ": JSON parse error at offset") == 0, e);
    CHECK_THROWS_WITH_AS(sandbox::ArchetypeLibrary::load(dir.path / "none.json", kTerminologyDir),
                         doctest::Contains("none.json: cannot open"), sandbox::ArchetypeError);

    // The program: exit code 4 and the message.
    load_error(dir, R"({"condition": "skin-necrosis"},)", R"({"condition": "skin-necorsis"},)");
    std::ostringstream out, err;
    CHECK(cli::run({"sandbox", "generate", "--out", (dir.path / "out").string(), "--archetypes", name}, out, err) ==
          cli::config_error);
    CHECK_MESSAGE(err.str().find("calcalert: configuration error: " + name + ": archetype "
                                 "'cs-esrd-necrosis-caxp-suppresses-risk'") == 0,
                  err.str());
    CHECK_FALSE(std::filesystem::exists(dir.path / "out"));
    // The unchanged file through --archetypes gives the default cohort.
    std::ofstream(name, std::ios::binary | std::ios::trunc) << slurp_file(kArchetypeFile);
    REQUIRE(cli::run({"sandbox", "generate", "--out", (dir.path / "out").string(), "--archetypes", name, "--patients",
                      "5", "--now", "2026-11-25T12:00:00Z"},
                     out, err) == cli::ok);
    CHECK(slurp_file((dir.path / "out" / "expected.json").string()) == files_of(sandbox::generate_cohort(5, 1, test::kNow), 1, test::kNow).expected);
}

TEST_CASE("archetype file: docs/cli.md lists every archetype with its expected rules and weight") {
    const std::string docs = slurp_file(std::string(CALCALERT_TEST_DIR) + "/../docs/cli.md");
    for (const auto& a : sandbox::archetypes()) {
        CAPTURE(a.name);
        const auto at = docs.find("\n| `" + a.name + "` | ");
        REQUIRE_MESSAGE(at != std::string::npos, "docs/cli.md has no row for " << a.name);
        const std::string row = docs.substr(at + 1, docs.find('\n', at + 1) - at - 1);
        std::string expect;
        for (const auto& e : a.expected) expect += (expect.empty() ? "`" : ", `") + e + "`";
        if (expect.empty()) expect = "none";
        CHECK_MESSAGE(row.find("` | " + expect + " | " + std::to_string(a.weight) + " | ") != std::string::npos, row);
    }
}
