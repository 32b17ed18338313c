#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "test_support.hpp"

using namespace calcalert::rules;
using test::dx;
using test::fired;
using test::lab;
using V = std::vector<std::string>;

TEST_CASE("comparators decide a threshold only where they prove it") {
    CHECK(decides_above(80, Comparator::gt, 70));   // >80 is above 70
    CHECK_FALSE(decides_above(5, Comparator::lt, 10));  // <5 is not above 10
    CHECK_FALSE(decides_above(80, Comparator::lt, 70));  // <80 decides nothing about 70
    CHECK(decides_above(70, Comparator::gt, 70));
    CHECK_FALSE(decides_above(70, Comparator::ge, 70));
    CHECK_FALSE(decides_above(70, Comparator::none, 70));
    CHECK(decides_above(70.1, Comparator::none, 70));
    CHECK(decides_below(15, Comparator::lt, 15));
    CHECK_FALSE(decides_below(10, Comparator::gt, 15));
}

TEST_CASE("the catalog holds the seven patient rules, suppressors first, with hashed versions") {
    const auto& cat = test::catalog();
    CHECK(cat.rules().size() == 7);
    auto pos = [&](const char* id) {
        for (std::size_t i = 0; i < cat.rules().size(); ++i)
            if (cat.rules()[i].id == id) return i;
        return std::size_t(99);
    };
    CHECK(pos("calciphylaxis-suspected") < pos("calciphylaxis-risk"));
    CHECK(pos("calciphylaxis-risk") < pos("metastatic-calcification-risk"));
    const Rule* r = cat.find("calciphylaxis-risk");
    REQUIRE(r);
    CHECK(r->version.rfind("1.0.0+", 0) == 0);
    CHECK(r->version.size() == 14);
    CHECK(r->citation_url() == "https://pubmed.ncbi.nlm.nih.gov/2184792/");
    CHECK(cat.parameters().caxp_threshold == 70);
}

namespace {
namespace fs = std::filesystem;
fs::path copy_catalog() {
    const fs::path dir = fs::temp_directory_path() / ("calcalert-catalog-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::copy(std::string(CALCALERT_TEST_DIR) + "/../rules/catalog", dir, fs::copy_options::recursive);
    return dir;
}
void replace_in(const fs::path& file, const std::string& from, const std::string& to) {
    std::ifstream in(file);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto pos = text.find(from);
    REQUIRE(pos != std::string::npos);
    text.replace(pos, from.size(), to);
    std::ofstream(file) << text;
}
}  // namespace

TEST_CASE("a site's threshold change shows in the rule version and changes the outcome") {
    const fs::path dir = copy_catalog();
    replace_in(dir / "facts.json", "\"threshold\": 70", "\"threshold\": 80");
    auto site = RuleCatalog::load(dir, test::terminology().concepts());
    CHECK(site.find("calciphylaxis-risk")->version != test::catalog().find("calciphylaxis-risk")->version);
    CHECK(site.find("calciphylaxis-risk")->declared_version == "1.0.0");
    PatientFacts p{"Patient/1", {lab(Analyte::calcium_total, 10, "2026-11-20"), lab(Analyte::phosphate, 7.5, "2026-11-20")}, {}, {}};
    CHECK(fired(p) == V{"metastatic-calcification-risk"});  // 75 > 70 and phosphate 7.5 > 4.5
    CHECK(evaluate(p, test::kNow, site).findings.empty());  // 75 is not above 80
    fs::remove_all(dir);
}

TEST_CASE("the catalog rejects unknown keys, unknown facts and suppression cycles, naming the file") {
    const fs::path dir = copy_catalog();
    const auto concepts = test::terminology().concepts();
    SUBCASE("unknown key") {
        replace_in(dir / "rules" / "calciphylaxis-risk.json", "\"suppressedBy\"", "\"suppresedBy\"");
        CHECK_THROWS_WITH_AS(RuleCatalog::load(dir, concepts), doctest::Contains("calciphylaxis-risk.json: suppresedBy: unknown key"), CatalogError);
    }
    SUBCASE("unknown fact") {
        replace_in(dir / "rules" / "calciphylaxis-risk.json", "\"ca-x-p-high\"", "\"ca-x-p-hihg\"");
        CHECK_THROWS_WITH_AS(RuleCatalog::load(dir, concepts), doctest::Contains("unknown fact 'ca-x-p-hihg'"), CatalogError);
    }
    SUBCASE("cycle") {
        replace_in(dir / "rules" / "calciphylaxis-suspected.json", "\"suppressedBy\": []",
                   "\"suppressedBy\": [\"calciphylaxis-risk\"]");
        CHECK_THROWS_WITH_AS(RuleCatalog::load(dir, concepts), doctest::Contains("cycle"), CatalogError);
    }
    SUBCASE("a status that may never count") {
        replace_in(dir / "facts.json", "\"corrected\"", "\"entered-in-error\"");
        CHECK_THROWS_AS(RuleCatalog::load(dir, concepts), CatalogError);
    }
    SUBCASE("bad severity") {
        replace_in(dir / "rules" / "calciphylaxis-risk.json", "\"moderate\"", "\"urgent\"");
        CHECK_THROWS_WITH_AS(RuleCatalog::load(dir, concepts), doctest::Contains("severity"), CatalogError);
    }
    fs::remove_all(dir);
}

TEST_CASE("calciphylaxis-risk: ESRD, Ca×P above 70 and high PTH; suppresses metastatic risk") {
    PatientFacts p{"Patient/1",
                   {lab(Analyte::calcium_total, 10.0, "2026-11-20T08:00:00Z", "Observation/ca"),
                    lab(Analyte::phosphate, 7.5, "2026-11-20T09:00:00Z", "Observation/p"),
                    lab(Analyte::pth_intact, 320, "2026-10-01", "Observation/pth")},
                   {dx("esrd", "Condition/esrd")},
                   {}};
    auto ev = evaluate(p, test::kNow, test::catalog());
    REQUIRE(ev.findings.size() == 1);
    const Finding& f = ev.findings[0];
    CHECK(f.rule->id == "calciphylaxis-risk");
    CHECK(f.summary.size() < 140);
    CHECK(f.summary.find("Ca×P 75.0") != std::string::npos);
    CHECK(f.detail.find("Ca×P 75.0 mg²/dL² = total calcium 10 mg/dL on 2026-11-20 08:00 UTC × phosphate 7.5 mg/dL") !=
          std::string::npos);
    CHECK(f.detail.find("Intact PTH 320 pg/mL on 2026-10-01 > 65 pg/mL (default threshold)") != std::string::npos);
    CHECK(f.sources == V{"Condition/esrd", "Observation/ca", "Observation/p", "Observation/pth"});
    CHECK(f.detail.find("PMID 2184792") != std::string::npos);
}

TEST_CASE("Ca×P: exactly 70 does not fire; a calcium 25 h away does not pair; old phosphate is out of window") {
    PatientFacts p{"Patient/1", {lab(Analyte::calcium_total, 10.0, "2026-11-20"), lab(Analyte::phosphate, 7.0, "2026-11-20")}, {}, {}};
    CHECK(fired(p).empty());  // 70.0 is not above 70 (phosphate 7.0 > 4.5 alone fires nothing)
    PatientFacts q{"Patient/2",
                   {lab(Analyte::calcium_total, 10.0, "2026-11-20T00:00:00Z"), lab(Analyte::phosphate, 7.5, "2026-11-21T01:00:00Z")},
                   {}, {}};
    CHECK(fired(q).empty());
    PatientFacts r{"Patient/3",
                   {lab(Analyte::calcium_total, 10.0, "2026-08-26T11:00:00Z"), lab(Analyte::phosphate, 7.5, "2026-08-26T11:00:00Z")},
                   {}, {}};
    CHECK(fired(r).empty());  // 91 days before now
}

TEST_CASE("ionized calcium never enters Ca×P or corrected calcium") {
    PatientFacts p{"Patient/1", {lab(Analyte::calcium_ionized, 1.30, "2026-11-20"), lab(Analyte::phosphate, 60, "2026-11-20")}, {}, {}};
    auto ev = evaluate(p, test::kNow, test::catalog());
    CHECK(ev.findings.empty());
    p.conditions.push_back(dx("calcinosis-cutis"));
    CHECK(fired(p) == V{"calcinosis-metastatic-pattern"});  // via hyperphosphatemia only
    PatientFacts q{"Patient/2", {lab(Analyte::calcium_ionized, 1.40, "2026-11-20")}, {dx("calcinosis-cutis")}, {}};
    CHECK(fired(q) == V{"calcinosis-metastatic-pattern"});  // ionized 1.40 > 1.32 is hypercalcemia
}

TEST_CASE("corrected calcium uses albumin within 48 h and below 4.0") {
    PatientFacts p{"Patient/1",
                   {lab(Analyte::calcium_total, 10.0, "2026-11-20"), lab(Analyte::albumin, 2.5, "2026-11-21")},
                   {dx("calcinosis-cutis")}, {}};
    auto ev = evaluate(p, test::kNow, test::catalog());
    REQUIRE(ev.findings.size() == 1);  // 10.0 + 0.8 × 1.5 = 11.2 > 10.5
    CHECK(ev.findings[0].detail.find("corrected calcium 11.2 mg/dL") != std::string::npos);
    p.labs[1].effective = test::at("2026-11-22T01:00:00Z");  // 49 h away: uncorrected 10.0
    CHECK(fired(p).empty());
    p.labs[1] = lab(Analyte::calcium_corrected, 10.6, "2026-11-21");  // a reported corrected value wins (latest)
    CHECK(fired(p) == V{"calcinosis-metastatic-pattern"});
}

TEST_CASE("reference-range high replaces the default threshold") {
    auto ph = lab(Analyte::phosphate, 4.8, "2026-11-20");
    PatientFacts p{"Patient/1", {ph}, {dx("calcinosis-cutis")}, {}};
    CHECK(fired(p) == V{"calcinosis-metastatic-pattern"});  // 4.8 > 4.5
    p.labs[0].reference_high = 5.0;
    CHECK(fired(p).empty());  // 4.8 is within the lab's own range
}

TEST_CASE("observation status and future dates: only counted results, notes for the rest") {
    auto ph = lab(Analyte::phosphate, 9, "2026-11-20", "Observation/pre");
    ph.status = "preliminary";
    auto fut = lab(Analyte::phosphate, 9, "2026-11-27", "Observation/future");
    PatientFacts p{"Patient/1", {ph, fut}, {dx("calcinosis-cutis")}, {}};
    auto ev = evaluate(p, test::kNow, test::catalog());
    CHECK(ev.findings.empty());
    REQUIRE(ev.notes.size() == 2);
    CHECK(ev.notes[0].message.find("status 'preliminary'") != std::string::npos);
    CHECK(ev.notes[1].message.find("more than 24 h after") != std::string::npos);
    p.labs[1].effective = test::at("2026-11-26T06:00:00Z");  // within a day of now: counts
    CHECK(fired(p) == V{"calcinosis-metastatic-pattern"});
}

TEST_CASE("condition activity follows clinical-rules §1.1") {
    auto cc = dx("calcinosis-cutis");
    auto ulcer = dx("skin-ulcer");
    PatientFacts p{"Patient/1", {}, {cc, ulcer}, {}};
    CHECK(fired(p) == V{"calcinosis-infection-risk"});
    p.conditions[1].verification_status = "refuted";
    CHECK(fired(p).empty());
    p.conditions[1].verification_status = "provisional";
    auto ev = evaluate(p, test::kNow, test::catalog());
    REQUIRE(ev.findings.size() == 1);
    CHECK(ev.findings[0].detail.find("provisional (counted, not confirmed)") != std::string::npos);
    p.conditions[1].clinical_status = "resolved";
    CHECK(fired(p).empty());
    p.conditions[1].clinical_status = "";
    p.conditions[1].has_abatement = true;
    p.conditions[1].abatement = test::at("2026-12-31");  // abatement after now: still active
    CHECK(fired(p) == V{"calcinosis-infection-risk"});
    p.conditions[1].abatement = test::at("2026-01-01");
    CHECK(fired(p).empty());
    p.conditions[1].clinical_status = "recurrence";
    CHECK(fired(p) == V{"calcinosis-infection-risk"});
}

TEST_CASE("calciphylaxis-suspected suppresses risk and metastatic risk; names differentials on record") {
    PatientFacts p{"Patient/1",
                   {lab(Analyte::calcium_total, 10, "2026-11-20"), lab(Analyte::phosphate, 8, "2026-11-20"),
                    lab(Analyte::pth_intact, 400, "2026-11-20")},
                   {dx("esrd"), dx("skin-ulcer"), dx("vasculitis", "Condition/vasc"), dx("protein-s-deficiency")},
                   {}};
    auto ev = evaluate(p, test::kNow, test::catalog());
    REQUIRE(ev.findings.size() == 1);
    CHECK(ev.findings[0].rule->id == "calciphylaxis-suspected");
    CHECK(ev.findings[0].detail.find("On record: Vasculitis: ") != std::string::npos);
    CHECK(ev.findings[0].detail.find("On record: Protein S deficiency: ") != std::string::npos);
    p.conditions.push_back(dx("calciphylaxis"));  // a known calciphylaxis: now wound/sepsis risk instead
    CHECK(fired(p) == V{"calciphylaxis-wound-sepsis-risk", "metastatic-calcification-risk"});
}

TEST_CASE("esrd from eGFR below 15 within 180 days") {
    PatientFacts p{"Patient/1",
                   {lab(Analyte::egfr, 12, "2026-09-01"), lab(Analyte::calcium_total, 9.5, "2026-11-20"),
                    lab(Analyte::phosphate, 8, "2026-11-20"), lab(Analyte::pth_intact, 90, "2026-11-20")},
                   {}, {}};
    CHECK(fired(p) == V{"calciphylaxis-risk"});
    p.labs[0].effective = test::at("2026-05-20");  // 189 days: too old
    CHECK(fired(p) == V{"metastatic-calcification-risk"});
}

TEST_CASE("dystrophic calcinosis watch, and not once calcinosis is on record") {
    PatientFacts p{"Patient/1", {}, {dx("dermatomyositis")}, {}};
    CHECK(fired(p) == V{"dystrophic-calcinosis-watch"});
    p.conditions.push_back(dx("calcinosis-cutis"));
    CHECK(fired(p).empty());
}

TEST_CASE("the evidence hash changes with the evidence and only then") {
    PatientFacts p{"Patient/1", {}, {dx("dermatomyositis", "Condition/dm/_history/1")}, {}};
    const auto h1 = evaluate(p, test::kNow, test::catalog()).findings.at(0).evidence_hash;
    CHECK(evaluate(p, test::kNow + 3600, test::catalog()).findings.at(0).evidence_hash == h1);
    p.conditions[0].source = "Condition/dm/_history/2";
    CHECK(evaluate(p, test::kNow, test::catalog()).findings.at(0).evidence_hash != h1);
}

TEST_CASE("format_number") {
    CHECK(format_number(7.5) == "7.5");
    CHECK(format_number(10.0) == "10");
    CHECK(format_number(1.456) == "1.46");
    CHECK(format_number(-0.001) == "0");
}
