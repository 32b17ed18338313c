// Runs every case of tests/fixtures/rules/expected.json and examples/cohort/expected.json through the
// same pipeline as `calcalert evaluate` (reader -> facts -> engine) and checks the exact set of rules
// that fire per patient, the strings each explanation must contain (`detailContains`) and the strings
// its data-quality notes must contain (`notesContain`).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "../unit/test_support.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>

#include <rapidjson/document.h>

#include "fhir/datetime.hpp"
#include "fhir/resource_reader.hpp"
#include "mappings/fact_builder.hpp"
#include "mappings/terminology.hpp"
#include "rules/catalog.hpp"
#include "rules/engine.hpp"

using namespace calcalert;

namespace {

const std::string kRoot = CALCALERT_SOURCE_ROOT;

using test::catalog;
using test::terminology;

struct PatientOutcome {
    std::set<std::string> rules;
    std::string text;   // summaries and details of all findings
    std::string notes;  // the data-quality notes, one a line: "source path: message"
};

std::map<std::string, PatientOutcome> evaluate_files(const std::vector<std::string>& files, rules::EpochSeconds now,
                                                     std::vector<fhir::Problem>& problems) {
    mappings::FactBuilder b(terminology());
    for (const auto& f : files) fhir::read_path(f, b);
    problems = b.problems();
    std::map<std::string, PatientOutcome> out;
    for (const auto& [ref, facts] : b.patients()) {
        auto& o = out[ref];
        const rules::Evaluation ev = rules::evaluate(facts, now, catalog());
        for (const auto& f : ev.findings) {
            o.rules.insert(f.rule->id);
            o.text += f.summary + "\n" + f.detail + "\n";
        }
        for (const auto& n : ev.notes) o.notes += n.source + " " + n.path + ": " + n.message + "\n";
    }
    return out;
}

void run_expected(const std::string& dir, bool inputs_have_errors = false) {
    std::ifstream in(dir + "/expected.json");
    REQUIRE(in.good());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    rapidjson::Document d;
    d.Parse(text.c_str());
    REQUIRE_FALSE(d.HasParseError());
    const auto now = fhir::parse_datetime(d["now"].GetString());
    REQUIRE(now);
    std::map<std::string, std::map<std::string, PatientOutcome>> by_file;
    std::size_t cases = 0;
    for (const auto& c : d["cases"].GetArray()) {
        const std::string file = c["file"].GetString();
        const std::string patient = c["patient"].GetString();
        if (!by_file.count(file)) {
            std::vector<fhir::Problem> problems;
            by_file[file] = evaluate_files({dir + "/" + file}, *now, problems);
            for (const auto& p : problems)
                if (!inputs_have_errors && (p.severity == fhir::Severity::fatal || p.severity == fhir::Severity::error))
                    FAIL_CHECK("fixture " << file << " has an input error: " << p.describe());
        }
        const auto& outcomes = by_file[file];
        std::set<std::string> expected;
        for (const auto& e : c["expect"].GetArray()) expected.insert(e.GetString());
        auto it = outcomes.find(patient);
        const std::set<std::string> actual = it == outcomes.end() ? std::set<std::string>{} : it->second.rules;
        const std::string why = c.HasMember("why") ? c["why"].GetString() : "";
        INFO(file << " " << patient << ": " << why);
        CHECK_MESSAGE(it != outcomes.end(), "patient not found in " << file);
        std::string exp_s, act_s;
        for (const auto& e : expected) exp_s += e + " ";
        for (const auto& a : actual) act_s += a + " ";
        CHECK_MESSAGE(expected == actual, "expected {" << exp_s << "} got {" << act_s << "}");
        if (c.HasMember("detailContains") && it != outcomes.end())
            for (const auto& s : c["detailContains"].GetArray())
                CHECK_MESSAGE(it->second.text.find(s.GetString()) != std::string::npos,
                              "explanation lacks '" << s.GetString() << "':\n" << it->second.text);
        if (c.HasMember("notesContain") && it != outcomes.end())
            for (const auto& s : c["notesContain"].GetArray())
                CHECK_MESSAGE(it->second.notes.find(s.GetString()) != std::string::npos,
                              "data-quality notes lack '" << s.GetString() << "':\n" << it->second.notes);
        ++cases;
    }
    MESSAGE(dir << ": " << cases << " cases");
    CHECK(cases > 0);
}

}  // namespace

TEST_CASE("rule fixtures: every rule fires where it should and near-misses do not") {
    run_expected(kRoot + "/tests/fixtures/rules");
}

TEST_CASE("the example cohort gives the findings its README lists") { run_expected(kRoot + "/examples/cohort"); }

TEST_CASE("Conditions that FHIR forbids but §1.1 defines (no clinicalStatus, an abatement) follow §1.1") {
    run_expected(kRoot + "/tests/fixtures/nonconformant");
}

TEST_CASE("malformed inputs: what could be read still gives its findings") {
    run_expected(kRoot + "/tests/fixtures/malformed", true);
}

TEST_CASE("Bulk-Data NDJSON files of one cohort give the same findings as its Bundle") {
    std::vector<fhir::Problem> problems;
    const std::string dir = kRoot + "/tests/fixtures/ndjson";
    auto ndjson = evaluate_files({dir + "/Patient.ndjson", dir + "/Observation.ndjson", dir + "/Condition.ndjson"},
                                 *fhir::parse_datetime("2026-11-25T12:00:00Z"), problems);
    CHECK(problems.empty());
    auto bundle = evaluate_files({kRoot + "/tests/fixtures/rules/calciphylaxis-risk.json"},
                                 *fhir::parse_datetime("2026-11-25T12:00:00Z"), problems);
    REQUIRE(ndjson.size() == bundle.size());
    std::size_t with_findings = 0;
    for (const auto& [p, o] : bundle) {
        INFO(p);
        REQUIRE(ndjson.count(p));
        CHECK(ndjson[p].rules == o.rules);
        CHECK(ndjson[p].text == o.text);
        with_findings += o.rules.empty() ? 0 : 1;
    }
    CHECK(with_findings >= 5);
}

TEST_CASE("every third-party Synthea bundle reads without an error and gives no finding") {
    const std::string dir = kRoot + "/../shared/thirdparty/synthea";
    if (!std::filesystem::is_directory(dir)) {  // third-party data beside the checkout, not in it
        std::printf("SKIP: ../shared/thirdparty/synthea not found: the Synthea bundle test is skipped\n");
        return;
    }
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.path().extension() == ".json") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    REQUIRE(files.size() == 30);
    std::vector<fhir::Problem> problems;
    auto out = evaluate_files(files, *fhir::parse_datetime("2026-11-25T12:00:00Z"), problems);
    for (const auto& p : problems) FAIL_CHECK(p.describe());
    CHECK(out.size() == 30);
    // Stock Synthea has no phosphate, PTH or calciphylaxis codes (../shared/thirdparty/SOURCES.md), and
    // its dialysis Procedures and deceased Patients must not change that.
    for (const auto& [patient, o] : out) CHECK_MESSAGE(o.rules.empty(), patient << " has findings:\n" << o.text);
}
