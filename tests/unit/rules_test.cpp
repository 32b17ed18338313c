#include <doctest/doctest.h>

#include "rules/time_zone.hpp"

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

TEST_CASE("the catalog holds the eight patient rules, suppressors first, with hashed versions") {
    const auto& cat = test::catalog();
    CHECK(cat.rules().size() == 8);
    auto pos = [&](const char* id) {
        for (std::size_t i = 0; i < cat.rules().size(); ++i)
            if (cat.rules()[i].id == id) return i;
        return std::size_t(99);
    };
    CHECK(pos("calciphylaxis-suspected") < pos("calciphylaxis-risk"));
    CHECK(pos("calciphylaxis-risk") < pos("metastatic-calcification-risk"));
    CHECK(pos("calciphylaxis-suspected") < pos("calciphylaxis-ulcer-differential"));
    const Rule* r = cat.find("calciphylaxis-risk");
    REQUIRE(r);
    CHECK(r->version.rfind("1.0.0+", 0) == 0);
    CHECK(r->version.size() == 14);
    CHECK(r->citation_url() == "https://pubmed.ncbi.nlm.nih.gov/2184792/");
    CHECK(cat.lab_fact("ca-x-p-high")->fallback == 70);
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
    replace_in(dir / "facts.json", "{ \"default\": 70 }", "{ \"default\": 80 }");
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
    CHECK(f.detail.find("Ca×P 75.0 mg²/dL² = total calcium 10 mg/dL on 20 Nov 2026 08:00 UTC × phosphate 7.5 mg/dL on "
                        "20 Nov 2026 09:00 UTC, above 70 mg²/dL² [2, 3]") != std::string::npos);
    CHECK(f.detail.find("Intact PTH 320 pg/mL on 1 Oct 2026, above the default 65 pg/mL (no reference range reported) [4]") !=
          std::string::npos);
    // References are out of the main text: numbered, in one evidence list at the end.
    CHECK(f.detail.find("\nEvidence: [1] Condition/esrd; [2] Observation/ca; [3] Observation/p; [4] Observation/pth") !=
          std::string::npos);
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
    CHECK(ev.findings[0].detail.find("Corrected calcium 11.2 mg/dL = total calcium 10 mg/dL on 20 Nov 2026 + 0.8 × (4 − "
                                     "albumin 2.5 g/dL on 21 Nov 2026), above the default 10.5 mg/dL") != std::string::npos);
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

TEST_CASE("§5.3.1: an ulcer needs a strong mineral abnormality for calciphylaxis-suspected; else the differential") {
    auto ulcer_patient = [](double pth) {
        return PatientFacts{"Patient/1",
                            {lab(Analyte::pth_intact, pth, "2026-11-10T08:00:00Z", "Observation/pth"),
                             lab(Analyte::calcium_total, 9.4, "2026-11-10T08:00:00Z"),
                             lab(Analyte::phosphate, 4.0, "2026-11-10T08:00:00Z")},
                            {dx("esrd", "Condition/esrd"), dx("skin-ulcer", "Condition/ulcer")},
                            {}};
    };
    SUBCASE("PTH 300: above 65 but within 9 × 65 = 585: the differential, moderate") {
        const auto ev = evaluate(ulcer_patient(300), test::kNow, test::catalog());
        REQUIRE(ev.findings.size() == 1);
        const Finding& f = ev.findings[0];
        CHECK(f.rule->id == "calciphylaxis-ulcer-differential");
        CHECK(f.rule->severity == RuleSeverity::moderate);
        CHECK(f.summary == "ESRD with a chronic skin ulcer: consider calciphylaxis in the differential");
        CHECK(f.detail.find("Intact PTH 300 pg/mL on 10 Nov 2026 08:00 UTC, above the default 65 pg/mL") != std::string::npos);
        CHECK(f.detail.find("PTH against the dialysis target range: Intact PTH 300 pg/mL on 10 Nov 2026 08:00 UTC, not above "
                            "the default 585 pg/mL (no reference range reported).") != std::string::npos);
        CHECK(f.detail.find("Diabetic, venous and arterial ulcers are much commoner") != std::string::npos);
        CHECK(f.detail.find("deep incisional biopsy is preferred over a punch biopsy") != std::string::npos);
        CHECK(f.detail.find("livedo reticularis, skin necrosis or painful nodules") != std::string::npos);
    }
    SUBCASE("PTH 600: above 585: suspected (HIGH), which suppresses the differential") {
        const auto ev = evaluate(ulcer_patient(600), test::kNow, test::catalog());
        REQUIRE(ev.findings.size() == 1);
        CHECK(ev.findings[0].rule->id == "calciphylaxis-suspected");
        CHECK(ev.findings[0].detail.find("Intact PTH 600 pg/mL on 10 Nov 2026 08:00 UTC, above the default 585 pg/mL (no "
                                         "reference range reported)") != std::string::npos);
    }
    SUBCASE("the lab's reference range replaces 65 and 585: 9 × 30 = 270") {
        auto p = ulcer_patient(300);
        p.labs[0].reference_high = 30;
        const auto ev = evaluate(p, test::kNow, test::catalog());
        REQUIRE(ev.findings.size() == 1);
        CHECK(ev.findings[0].rule->id == "calciphylaxis-suspected");
        CHECK(ev.findings[0].detail.find("Intact PTH 300 pg/mL on 10 Nov 2026 08:00 UTC, above 9 × the upper reference limit "
                                         "30 = 270 pg/mL") != std::string::npos);
        p.labs[0].reference_high = 65;  // 9 × 65 = 585: 300 is within the target range
        CHECK(fired(p) == V{"calciphylaxis-ulcer-differential"});
    }
    SUBCASE("PTH '>2500' decides above 585; '<800' decides nothing") {
        auto p = ulcer_patient(2500);
        p.labs[0].comparator = Comparator::gt;
        CHECK(fired(p) == V{"calciphylaxis-suspected"});
        CHECK(evaluate(p, test::kNow, test::catalog()).findings[0].detail.find("Intact PTH more than 2500 pg/mL") !=
              std::string::npos);
        p.labs[0].value = 800;
        p.labs[0].comparator = Comparator::lt;
        CHECK(fired(p).empty());  // '<800' proves neither above 65 nor above 585
    }
    SUBCASE("a hyperparathyroidism diagnosis is a mineral abnormality, never a strong one") {
        auto p = ulcer_patient(50);
        CHECK(fired(p).empty());
        p.conditions.push_back(dx("hyperparathyroidism"));
        CHECK(fired(p) == V{"calciphylaxis-ulcer-differential"});
    }
    SUBCASE("a characteristic lesion (livedo) with a mild PTH rise stays suspected") {
        auto p = ulcer_patient(100);
        p.conditions[1] = dx("livedo-reticularis");
        CHECK(fired(p) == V{"calciphylaxis-suspected"});
    }
    SUBCASE("Ca×P above 70 with an ulcer is strong") {
        auto p = ulcer_patient(100);
        p.labs[1].value = 10;
        p.labs[2].value = 7.5;
        CHECK(fired(p) == V{"calciphylaxis-suspected"});
    }
    SUBCASE("known calciphylaxis: neither (the wound rule instead)") {
        auto p = ulcer_patient(300);
        p.conditions.push_back(dx("calciphylaxis"));
        CHECK(fired(p) == V{"calciphylaxis-wound-sepsis-risk"});
    }
    SUBCASE("no ESRD: nothing") {
        auto p = ulcer_patient(900);
        p.conditions.erase(p.conditions.begin());
        CHECK(fired(p).empty());
    }
}

TEST_CASE("a lab fact is data only: a new one in facts.json is evaluated by the same engine") {
    const fs::path dir = copy_catalog();
    replace_in(dir / "facts.json", "\"labFacts\": [",
               "\"labFacts\": [\n    { \"id\": \"alp-high\", \"title\": \"Alkaline phosphatase above the upper limit\", "
               "\"value\": \"alkaline-phosphatase\", \"windowDays\": 30, \"above\": { \"timesReferenceRangeHigh\": 1, "
               "\"default\": 120 } },");
    replace_in(dir / "rules" / "calcinosis-metastatic-pattern.json", "\"any\": [\"hypercalcemia\", \"hyperphosphatemia\"]",
               "\"any\": [\"hypercalcemia\", \"hyperphosphatemia\", \"alp-high\"]");
    const auto site = RuleCatalog::load(dir, test::terminology().concepts());
    PatientFacts p{"Patient/1", {lab(Analyte::alkaline_phosphatase, 150, "2026-11-20")}, {dx("calcinosis-cutis")}, {}};
    CHECK(fired(p).empty());
    auto ev = evaluate(p, test::kNow, site);
    REQUIRE(ev.findings.size() == 1);
    CHECK(ev.findings[0].detail.find("Alkaline phosphatase 150 U/L on 20 Nov 2026, above the default 120 U/L") !=
          std::string::npos);
    p.labs[0].effective = test::at("2026-10-20");  // 36 days: outside its 30-day window
    CHECK(evaluate(p, test::kNow, site).findings.empty());
    fs::remove_all(dir);
}

TEST_CASE("the history window the poller reads comes from the lab facts of the catalog") {
    CHECK(test::catalog().history_window_days() == doctest::Approx(180));  // PTH and eGFR
    const fs::path dir = copy_catalog();
    replace_in(dir / "facts.json", "\"value\": \"egfr\",\n      \"windowDays\": 180",
               "\"value\": \"egfr\",\n      \"windowDays\": 365");
    CHECK(RuleCatalog::load(dir, test::terminology().concepts()).history_window_days() == doctest::Approx(365));
    fs::remove_all(dir);
    const fs::path dir2 = copy_catalog();
    replace_in(dir2 / "facts.json", "\"value\": \"pth-intact\",\n      \"windowDays\": 180",
               "\"value\": \"pth-intact\",\n      \"windowDays\": 60");
    replace_in(dir2 / "facts.json", "\"value\": \"pth-intact\",\n      \"windowDays\": 180",
               "\"value\": \"pth-intact\",\n      \"windowDays\": 60");
    replace_in(dir2 / "facts.json", "\"value\": \"egfr\",\n      \"windowDays\": 180",
               "\"value\": \"egfr\",\n      \"windowDays\": 60");
    // Corrected calcium (90 days) reaches 48 h further back for its albumin.
    CHECK(RuleCatalog::load(dir2, test::terminology().concepts()).history_window_days() == doctest::Approx(92));
    fs::remove_all(dir2);
}

TEST_CASE("the lab-fact loader is strict: unknown keys and values name their path") {
    const fs::path dir = copy_catalog();
    const auto concepts = test::terminology().concepts();
    SUBCASE("unknown key in a threshold") {
        replace_in(dir / "facts.json", "{ \"timesReferenceRangeHigh\": 9,", "{ \"timesReferenceRangeHihg\": 9,");
        CHECK_THROWS_WITH_AS(RuleCatalog::load(dir, concepts),
                             doctest::Contains("facts.json: labFacts[4].above.timesReferenceRangeHihg: unknown key"), CatalogError);
    }
    SUBCASE("unknown analyte") {
        replace_in(dir / "facts.json", "\"value\": \"pth-intact\"", "\"value\": \"pth-total\"");
        CHECK_THROWS_WITH_AS(RuleCatalog::load(dir, concepts), doctest::Contains("labFacts[3].value: 'pth-total' is neither"),
                             CatalogError);
    }
    SUBCASE("both above and below") {
        replace_in(dir / "facts.json", "\"below\": { \"default\": 15 }", "\"below\": { \"default\": 15 }, \"above\": { \"default\": 1 }");
        CHECK_THROWS_WITH_AS(RuleCatalog::load(dir, concepts), doctest::Contains("exactly one of 'above' and 'below'"), CatalogError);
    }
    SUBCASE("a derived fact naming a later or unknown fact") {
        replace_in(dir / "facts.json", "\"all\": [\"esrd\", \"pth-above-9x-upper-limit\"]", "\"all\": [\"esrd\", \"pth-above-10x\"]");
        CHECK_THROWS_WITH_AS(RuleCatalog::load(dir, concepts), doctest::Contains("derived[8].all: unknown fact 'pth-above-10x'"),
                             CatalogError);
    }
    SUBCASE("an unknown placeholder in a patient rule") {
        replace_in(dir / "rules" / "calciphylaxis-ulcer-differential.json", "{assessed:pth-above-9x-upper-limit}",
                   "{assessed:pth-above-9x}");
        CHECK_THROWS_WITH_AS(RuleCatalog::load(dir, concepts), doctest::Contains("'pth-above-9x' is not a lab fact"), CatalogError);
    }
    SUBCASE("an unknown time zone") {
        replace_in(dir / "facts.json", "\"timeZone\": \"UTC\"", "\"timeZone\": \"Mars/Olympus_Mons\"");
        CHECK_THROWS_WITH_AS(RuleCatalog::load(dir, concepts), doctest::Contains("display.timeZone: time zone 'Mars/Olympus_Mons'"),
                             CatalogError);
    }
    fs::remove_all(dir);
}

TEST_CASE("times in the site's time zone; the evidence hash depends on neither the zone nor the wording") {
    PatientFacts p{"Patient/1",
                   {lab(Analyte::calcium_total, 10.0, "2026-10-20T08:00:00Z", "Observation/ca"),
                    lab(Analyte::phosphate, 7.5, "2026-10-20T09:00:00Z", "Observation/p"),
                    lab(Analyte::pth_intact, 320, "2026-11-20T23:30:00Z", "Observation/pth")},
                   {dx("esrd", "Condition/esrd")},
                   {}};
    const auto utc = evaluate(p, test::kNow, test::catalog()).findings.at(0);
    auto berlin_catalog = test::catalog();
    berlin_catalog.set_time_zone(TimeZone::load("Europe/Berlin"));
    const auto berlin = evaluate(p, test::kNow, berlin_catalog).findings.at(0);
    CHECK(utc.detail.find("on 20 Oct 2026 08:00 UTC") != std::string::npos);
    CHECK(berlin.detail.find("on 20 Oct 2026 10:00 CEST") != std::string::npos);  // summer time
    CHECK(berlin.detail.find("on 21 Nov 2026 00:30 CET") != std::string::npos);   // winter time, the next day
    CHECK(utc.detail != berlin.detail);
    CHECK(utc.evidence_hash == berlin.evidence_hash);
    CHECK(utc.rule->logic_version == berlin.rule->logic_version);

    // A wording edit (title, summary, notes) changes the text, never the hash; a threshold edit changes both.
    const fs::path dir = copy_catalog();
    replace_in(dir / "rules" / "calciphylaxis-risk.json", "Watch for painful nodular or necrotic skin lesions.",
               "Look for painful nodules or necrosis.");
    replace_in(dir / "facts.json", "\"title\": \"Intact PTH above the upper limit\"", "\"title\": \"PTH high\"");
    const auto reworded = evaluate(p, test::kNow, RuleCatalog::load(dir, test::terminology().concepts())).findings.at(0);
    CHECK(reworded.detail != utc.detail);
    CHECK(reworded.evidence_hash == utc.evidence_hash);
    replace_in(dir / "facts.json", "{ \"timesReferenceRangeHigh\": 1, \"default\": 65 }",
               "{ \"timesReferenceRangeHigh\": 1, \"default\": 60 }");
    const auto rethresholded = evaluate(p, test::kNow, RuleCatalog::load(dir, test::terminology().concepts())).findings.at(0);
    CHECK(rethresholded.evidence_hash != utc.evidence_hash);
    fs::remove_all(dir);
}

TEST_CASE("time zones: UTC, fixed offsets, IANA zones with their rules; dates stay dates") {
    CHECK(format_time_for_people(test::at("2026-11-25T12:00:00Z"), TimeZone()) == "25 Nov 2026 12:00 UTC");
    CHECK(format_time_for_people(test::at("2026-11-20"), TimeZone::load("Europe/Berlin")) == "20 Nov 2026");
    CHECK(format_time_for_people(test::at("2026-11-25T12:00:00Z"), TimeZone::load("+05:30")) == "25 Nov 2026 17:30 UTC+05:30");
    CHECK(format_time_for_people(test::at("2026-01-05T09:07:00Z"), TimeZone()) == "5 Jan 2026 09:07 UTC");
    CHECK(format_time_for_people(test::at("2026-12-31T23:59:00Z"), TimeZone()) == "31 Dec 2026 23:59 UTC");
    CHECK(format_time_for_people(test::at("2026-11-25T02:00:00Z"), TimeZone::load("UTC-05:00")) == "24 Nov 2026 21:00 UTC-05:00");
    const auto ny = TimeZone::load("America/New_York");
    CHECK(format_time_for_people(test::at("2026-03-08T06:59:00Z"), ny) == "8 Mar 2026 01:59 EST");
    CHECK(format_time_for_people(test::at("2026-03-08T07:00:00Z"), ny) == "8 Mar 2026 03:00 EDT");
    // Beyond the zone file's explicit transitions its POSIX rule applies.
    CHECK(format_time_for_people(test::at("2071-07-01T12:00:00Z"), ny) == "1 Jul 2071 08:00 EDT");
    CHECK(format_time_for_people(test::at("2071-12-01T12:00:00Z"), TimeZone::load("Europe/Berlin")) == "1 Dec 2071 13:00 CET");
    CHECK(format_time_for_people(test::at("2026-07-01T12:00:00Z"), TimeZone::load("Australia/Sydney")) == "1 Jul 2026 22:00 AEST");
    CHECK(format_time_for_people(test::at("2071-01-15T12:00:00Z"), TimeZone::load("Australia/Sydney")) == "15 Jan 2071 23:00 AEDT");
    CHECK_THROWS_AS(TimeZone::load("Nowhere/Special"), TimeZoneError);
    CHECK_THROWS_AS(TimeZone::load("../../etc/passwd"), TimeZoneError);
    CHECK_THROWS_AS(TimeZone::load("+25:00"), TimeZoneError);
}

TEST_CASE("the order the input lists conditions in changes neither the explanation nor the evidence hash") {
    PatientFacts p{"Patient/1",
                   {lab(Analyte::pth_intact, 300, "2026-11-10")},
                   {dx("esrd", "Condition/n186"), dx("esrd", "Condition/z992"), dx("skin-ulcer", "Condition/ulcer")},
                   {}};
    const auto a = evaluate(p, test::kNow, test::catalog()).findings.at(0);
    std::reverse(p.conditions.begin(), p.conditions.end());
    const auto b = evaluate(p, test::kNow, test::catalog()).findings.at(0);
    CHECK(a.detail == b.detail);
    CHECK(a.evidence_hash == b.evidence_hash);
}

namespace {
// The findings (rule and evidence hash) evaluate() gives at `t`.
std::vector<std::string> findings_at(const PatientFacts& p, EpochSeconds t) {
    std::vector<std::string> out;
    for (const auto& f : evaluate(p, t, test::catalog()).findings) out.push_back(f.rule->id + " " + f.evidence_hash);
    return out;
}
}  // namespace

TEST_CASE("next_time_change: the first time time alone may change the findings, and nothing changes before it") {
    const EpochSeconds now = test::kNow;  // 2026-11-25T12:00:00Z
    ConditionFact abating = dx("ctd", "Condition/ctd");
    abating.has_abatement = true;
    abating.abatement = test::at("2026-12-10T00:00:00Z");
    PatientFacts deceased_later{"Patient/d", {lab(Analyte::calcium_total, 11.5, "2026-11-24", "Observation/ca")}, {}, {}};
    deceased_later.deceased = Deceased{test::at("2027-01-05T00:00:00Z"), "Patient/d"};
    struct Row {
        const char* what;
        PatientFacts facts;
        std::optional<EpochSeconds> expected;
        bool exact = true;  // false: only "after now", with the property below
    };
    const std::vector<Row> rows = {
        {"calciphylaxis risk: the Ca×P pair leaves the 30-day window first",
         {"Patient/1",
          {lab(Analyte::calcium_total, 10.0, "2026-11-20T08:00:00Z", "Observation/ca"),
           lab(Analyte::phosphate, 7.5, "2026-11-20T09:00:00Z", "Observation/p"),
           lab(Analyte::pth_intact, 320, "2026-10-01", "Observation/pth")},
          {dx("esrd", "Condition/esrd")},
          {}},
         std::nullopt,
         false},
        {"conditions only: time changes nothing", {"Patient/2", {}, {dx("ctd", "Condition/ctd")}, {}}, std::nullopt},
        {"a result dated three days ahead counts from 24 h before its date",
         {"Patient/3", {lab(Analyte::calcium_total, 11.5, "2026-11-28T12:00:00Z", "Observation/f")}, {}, {}},
         test::at("2026-11-27T12:00:00Z")},
        {"a condition abating next month", {"Patient/4", {}, {abating}, {}}, test::at("2026-12-10T00:00:00Z")},
        {"a date of death ahead (before the calcium leaves its window)", deceased_later, test::at("2027-01-05T00:00:00Z")},
    };
    for (const auto& row : rows) {
        CAPTURE(row.what);
        const auto next = next_time_change(row.facts, now, test::catalog());
        if (!row.exact) {
            // The earliest window end of any result after now, whatever the window lengths: checked
            // by the property below rather than by arithmetic on the catalog.
            REQUIRE(next.has_value());
            CHECK(*next > now);
        } else {
            CHECK(next == row.expected);
        }
        // Nothing changes before it: the same findings at every hour up to a second before.
        const auto base = findings_at(row.facts, now);
        const EpochSeconds until = next ? *next - 1 : now + 400 * 86400;
        for (EpochSeconds t = now; t < until; t += 6 * 3600) CHECK(findings_at(row.facts, t) == base);
        CHECK(findings_at(row.facts, until) == base);
    }
}
