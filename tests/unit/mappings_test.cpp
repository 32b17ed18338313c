#include <doctest/doctest.h>

#include <sstream>

#include <rapidjson/document.h>

#include "fhir/resource_reader.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/fact_builder.hpp"
#include "test_support.hpp"

using namespace calcalert;
using rules::Analyte;

namespace {

const rules::PatientFacts& only_patient(const mappings::FactBuilder& b) {
    REQUIRE(b.patients().size() == 1);
    return b.patients().begin()->second;
}

std::string observation(const std::string& loinc, const std::string& quantity, const std::string& extra = "") {
    return R"({"resourceType":"Observation","id":"o1","meta":{"versionId":"3"},"status":"final","code":{"coding":[{"system":"http://loinc.org","code":")" +
           loinc + R"("}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2026-11-20T08:00:00Z","valueQuantity":)" +
           quantity + extra + "}";
}

mappings::FactBuilder build(const std::string& text) {
    mappings::FactBuilder b(test::terminology());
    fhir::read_text(text, "t.json", b);
    return b;
}

}  // namespace

TEST_CASE("terminology: codes by system, ICD with or without the dot, prefixes, both ICD-9 URIs") {
    const auto& t = test::terminology();
    REQUIRE(t.lab("http://loinc.org", "17861-6"));
    CHECK(t.lab("http://loinc.org", "17861-6")->analyte == Analyte::calcium_total);
    CHECK(t.lab("http://loinc.org", "1995-0")->analyte == Analyte::calcium_ionized);
    CHECK_FALSE(t.lab("http://snomed.info/sct", "17861-6"));
    CHECK_FALSE(t.lab("http://loinc.org", "46099-8"));  // unverified: left out
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "N18.6")->concept_id == "esrd");
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "N186")->concept_id == "esrd");
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "L97.909")->concept_id == "skin-ulcer");
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "L98.499")->concept_id == "skin-ulcer");
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "E72.530")->concept_id == "primary-hyperoxaluria");
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "M33.02")->concept_id == "dermatomyositis");
    CHECK_FALSE(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "M33.20"));  // polymyositis is not dermatomyositis
    CHECK_FALSE(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "E83.39"));  // too broad for hyperphosphatemia
    CHECK_FALSE(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "R23.1"));   // Pallor, not livedo
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-9-cm", "585.6")->concept_id == "esrd");
    CHECK(t.condition("http://terminology.hl7.org/CodeSystem/icd9cm", "5856")->concept_id == "esrd");
    // The seed's error: 440.23 is an ulcer, never calciphylaxis.
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-9-cm", "440.23")->concept_id == "skin-ulcer");
    CHECK_FALSE(t.condition("http://snomed.info/sct", "236436003"));  // ESRD with transplant: not on dialysis
    // E83.59 is read by its words (condition-words.tsv), never as a plain code.
    CHECK_FALSE(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "E83.59"));
    REQUIRE(t.word_readings("http://hl7.org/fhir/sid/icd-10-cm", "E8359"));
    CHECK(t.word_readings("http://hl7.org/fhir/sid/icd-10-cm", "E83.59")->size() == 3);
    // §15 additions: prefixes and new codes; 714153000 (CKD 5 with a transplant) and Z51.A stay out.
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "A41.54")->concept_id == "sepsis");
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "A40.1")->concept_id == "sepsis");
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "A419")->concept_id == "sepsis");
    CHECK_FALSE(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "Z51.A"));
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "I70.262")->concept_id == "gangrene");
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "I70.769")->concept_id == "gangrene");
    CHECK_FALSE(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "I70.25"));  // with ulceration, not gangrene
    CHECK(t.condition("http://hl7.org/fhir/sid/icd-10-cm", "R22.31")->concept_id == "skin-nodule");
    CHECK(t.condition("http://snomed.info/sct", "105502003")->concept_id == "esrd");
    CHECK_FALSE(t.condition("http://snomed.info/sct", "714153000"));
}

namespace {
std::string condition_json(const std::string& codings, const std::string& text = "") {
    return R"({"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},
      "clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},
      "code":{"coding":[)" + codings + "]" + (text.empty() ? "" : R"(,"text":")" + text + "\"") + "}}";
}
const char* const kE8359 = R"({"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"E83.59"})";
const char* const kE8359Display =
    R"({"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"E83.59","display":"Other disorders of calcium metabolism"})";
}  // namespace

TEST_CASE("E83.59: the words decide; a bare code is calciphylaxis; a SNOMED CT coding decides first") {
    auto concepts = [](const mappings::FactBuilder& b) {
        std::vector<std::string> out;
        for (const auto& c : only_patient(b).conditions) out.push_back(c.concept_id);
        return out;
    };
    using V = std::vector<std::string>;
    SUBCASE("bare: calciphylaxis, and the explanation says how it was read") {
        auto b = build(condition_json(kE8359));
        REQUIRE(concepts(b) == V{"calciphylaxis"});
        CHECK(only_patient(b).conditions[0].caveat.find("coded E83.59, read as calciphylaxis") == 0);
        CHECK(only_patient(b).notes.empty());
    }
    SUBCASE("words that say calciphylaxis, in code.text (the display is the code's title)") {
        auto b = build(condition_json(kE8359Display, "Calciphylaxis of both thighs"));
        REQUIRE(concepts(b) == V{"calciphylaxis"});
        CHECK(only_patient(b).conditions[0].display == "Calciphylaxis of both thighs");
    }
    SUBCASE("words that say tumoral calcinosis") {
        auto b = build(condition_json(R"({"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"E8359","display":"Tumoral calcinosis"})"));
        CHECK(concepts(b) == V{"tumoral-calcinosis"});
    }
    SUBCASE("other words: neither, and a note that the code was seen and not used") {
        auto b = build(condition_json(kE8359Display));
        const auto& p = only_patient(b);
        CHECK(p.conditions.empty());
        REQUIRE(p.notes.size() == 1);
        CHECK(p.notes[0].path == "Condition.code");
        CHECK(p.notes[0].message.find("ICD-10-CM E83.59 seen and not used") == 0);
        CHECK(p.notes[0].message.find("neither Calciphylaxis nor Tumoral calcinosis") != std::string::npos);
    }
    SUBCASE("words that deny it do not say calciphylaxis") {
        auto b = build(condition_json(kE8359, "Calciphylaxis ruled out"));
        CHECK(only_patient(b).conditions.empty());
        CHECK(only_patient(b).notes.size() == 1);
        auto c = build(condition_json(kE8359, "calcinosis, not calciphylaxis"));
        CHECK(only_patient(c).conditions.empty());
    }
    SUBCASE("a SNOMED CT coding decides before E83.59") {
        // SNOMED CT says hypercalcemia: the words of E83.59 are not read, and a note says why.
        auto b = build(condition_json(std::string(R"({"system":"http://snomed.info/sct","code":"66931009"},)") + kE8359,
                                      "Calciphylaxis"));
        CHECK(concepts(b) == V{"hypercalcemia"});
        REQUIRE(only_patient(b).notes.size() == 1);
        CHECK(only_patient(b).notes[0].message.find("the SNOMED CT coding 66931009 of the same Condition decides") !=
              std::string::npos);
        // SNOMED CT calciphylaxis with E83.59 beside it: one calciphylaxis, no note.
        auto c = build(condition_json(std::string(kE8359Display) + R"(,{"system":"http://snomed.info/sct","code":"237900002"})"));
        CHECK(concepts(c) == V{"calciphylaxis"});
        CHECK(only_patient(c).conditions[0].code == "237900002");
        CHECK(only_patient(c).notes.empty());
    }
}

TEST_CASE("unit conversions to canonical units") {
    SUBCASE("calcium mmol/L") {
        auto b = build(observation("2000-8", R"({"value":2.5,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"})"));
        const auto& p = only_patient(b);
        REQUIRE(p.labs.size() == 1);
        CHECK(p.labs[0].value == doctest::Approx(10.02));
        CHECK(p.labs[0].reported == "2.5 mmol/L");
        CHECK(p.labs[0].source == "Observation/o1/_history/3");
        CHECK(p.notes.empty());
    }
    SUBCASE("phosphate mmol/L") {
        auto b = build(observation("14879-1", R"({"value":2.0,"code":"mmol/L"})"));
        CHECK(only_patient(b).labs[0].value == doctest::Approx(6.194));
    }
    SUBCASE("PTH pmol/L and ng/L") {
        auto b = build(observation("14866-8", R"({"value":10,"code":"pmol/L"})"));
        CHECK(only_patient(b).labs[0].value == doctest::Approx(94.3));
        auto c = build(observation("2731-8", R"({"value":80,"code":"ng/L"})"));
        CHECK(only_patient(c).labs[0].value == doctest::Approx(80));
    }
    SUBCASE("albumin g/L") {
        auto b = build(observation("1751-7", R"({"value":32,"unit":"g/L"})"));
        CHECK(only_patient(b).labs[0].value == doctest::Approx(3.2));
    }
    SUBCASE("human unit spelled in another case") {
        auto b = build(observation("17861-6", R"({"value":9.8,"unit":"mg/dl"})"));
        CHECK(only_patient(b).labs[0].value == doctest::Approx(9.8));
    }
    SUBCASE("a moles code with a mass unit is converted by its unit, with a note") {
        auto b = build(observation("29265-6", R"({"value":10.8,"code":"mg/dL"})"));
        const auto& p = only_patient(b);
        CHECK(p.labs[0].analyte == Analyte::calcium_corrected);
        CHECK(p.labs[0].value == doctest::Approx(10.8));
        REQUIRE(p.notes.size() == 1);
        CHECK(p.notes[0].message.find("a moles code") != std::string::npos);
    }
    SUBCASE("eGFR in mL/min is accepted with a note") {
        auto b = build(observation("33914-3", R"({"value":12,"unit":"mL/min","code":"mL/min"})"));
        const auto& p = only_patient(b);
        CHECK(p.labs.size() == 1);
        CHECK(p.notes.size() == 1);
    }
    SUBCASE("reference-range high is converted too") {
        auto b = build(observation("14879-1", R"({"value":2.0,"code":"mmol/L"})",
                                   R"(,"referenceRange":[{"high":{"value":1.45,"code":"mmol/L"}}])"));
        CHECK(only_patient(b).labs[0].reference_high.value() == doctest::Approx(4.49065));
    }
}

TEST_CASE("unusable values become data-quality notes, never silent drops") {
    auto notes_for = [](const std::string& text) {
        auto b = build(text);
        const auto& p = only_patient(b);
        CHECK(p.labs.empty());
        REQUIRE(p.notes.size() == 1);
        return p.notes[0];
    };
    CHECK(notes_for(observation("17861-6", R"({"value":9.8,"code":"mg"})")).message.find("cannot be converted") != std::string::npos);
    CHECK(notes_for(observation("17861-6", R"({"value":9.8})")).path == "Observation.valueQuantity.unit");
    CHECK(notes_for(observation("17861-6", R"({"unit":"mg/dL"})")).path == "Observation.valueQuantity.value");
    auto absent = R"({"resourceType":"Observation","id":"o2","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2777-1"}]},
        "subject":{"reference":"Patient/p1"},"effectiveDateTime":"2026-11-20","dataAbsentReason":{"text":"hemolysed"}})";
    CHECK(notes_for(absent).path == "Observation.dataAbsentReason");
    auto no_time = R"({"resourceType":"Observation","id":"o3","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2777-1"}]},
        "subject":{"reference":"Patient/p1"},"valueQuantity":{"value":5,"code":"mg/dL"}})";
    CHECK(notes_for(no_time).path == "Observation.effective[x]");
}

TEST_CASE("components whose code maps to an analyte are read") {
    auto b = build(R"({"resourceType":"Observation","id":"panel","status":"final","code":{"text":"Renal panel"},
      "subject":{"reference":"Patient/p1"},"effectiveDateTime":"2026-11-20",
      "component":[{"code":{"coding":[{"system":"http://loinc.org","code":"2777-1"}]},"valueQuantity":{"value":6.1,"code":"mg/dL"}},
                   {"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":120,"code":"mm[Hg]"}},
                   {"code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},"valueQuantity":{"value":"x","code":"mg/dL"}}]})");
    // The third component has a string value: the whole resource is rejected, naming the component.
    REQUIRE(b.problems().size() == 1);
    CHECK(b.problems()[0].path == "Observation.component[2].valueQuantity.value");
    auto c = build(R"({"resourceType":"Observation","id":"panel","status":"final","code":{"text":"Renal panel"},
      "subject":{"reference":"Patient/p1"},"effectiveDateTime":"2026-11-20",
      "component":[{"code":{"coding":[{"system":"http://loinc.org","code":"2777-1"}]},"valueQuantity":{"value":6.1,"code":"mg/dL"}}]})");
    REQUIRE(only_patient(c).labs.size() == 1);
    CHECK(only_patient(c).labs[0].analyte == Analyte::phosphate);
}

TEST_CASE("subjects: absolute URLs, urn:uuid through the Bundle, and non-patients") {
    auto b = build(R"({"resourceType":"Bundle","type":"collection","entry":[
      {"fullUrl":"urn:uuid:aaaa","resource":{"resourceType":"Patient","id":"p7"}},
      {"fullUrl":"urn:uuid:c1","resource":{"resourceType":"Condition","id":"c1","code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"L94.2"}]},"subject":{"reference":"urn:uuid:aaaa"}}},
      {"fullUrl":"urn:uuid:c2","resource":{"resourceType":"Condition","id":"c2","code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"L94.2"}]},"subject":{"reference":"https://ehr.example.org/fhir/Patient/p7"}}},
      {"fullUrl":"urn:uuid:c3","resource":{"resourceType":"Condition","id":"c3","code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"L94.2"}]},"subject":{"reference":"Group/g1"}}},
      {"fullUrl":"urn:uuid:c4","resource":{"resourceType":"Condition","id":"c4","code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"L94.2"}]},"subject":{"reference":"urn:uuid:nobody"}}}
    ]})");
    // The absolute URL names another server's patient (no fullUrl of this Bundle is on its base):
    // not merged with the local Patient/p7 (clinical-rules.md §5.2.3).
    REQUIRE(b.patients().size() == 2);
    CHECK(b.patients().at("Patient/p7").conditions.size() == 1);
    CHECK(b.patients().at("https://ehr.example.org/fhir/Patient/p7").conditions.size() == 1);
    REQUIRE(b.problems().size() == 2);
    CHECK(b.problems()[0].message.find("is not a Patient") != std::string::npos);
    CHECK(b.problems()[1].message.find("is not the fullUrl of any entry") != std::string::npos);
}

namespace {
std::string condition_of(const std::string& id, const std::string& subject) {
    return R"({"resourceType":"Condition","id":")" + id +
           R"(","code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"L94.2"}]},"subject":{"reference":")" +
           subject + R"("}})";
}
}  // namespace

TEST_CASE("patient identity: a server's own base, a Bundle's base, another server, a Patient without an id") {
    SUBCASE("the server's own base is the local patient") {
        mappings::FactBuilder b(test::terminology(), "HTTPS://EHR.example.org/fhir/");
        fhir::read_text(condition_of("c1", "https://ehr.example.org/fhir/Patient/p7"), "t.json", b);
        fhir::read_text(condition_of("c2", "Patient/p7/_history/3"), "t.json", b);
        fhir::read_text(condition_of("c3", "https://other.example.net/fhir/Patient/p7"), "t.json", b);
        REQUIRE(b.patients().size() == 2);
        CHECK(b.patients().at("Patient/p7").conditions.size() == 2);
        CHECK(b.patients().at("https://other.example.net/fhir/Patient/p7").conditions.size() == 1);
    }
    SUBCASE("a base of the Bundle's fullUrls names its resources") {
        auto b = build(R"({"resourceType":"Bundle","type":"collection","entry":[
          {"fullUrl":"https://ehr.example.org/fhir/Condition/c1","resource":)" + condition_of("c1", "Patient/p7") + R"(},
          {"fullUrl":"https://ehr.example.org/fhir/Condition/c2","resource":)" + condition_of("c2", "https://ehr.example.org/fhir/Patient/p7") + R"(}]})");
        CHECK(only_patient(b).patient == "Patient/p7");
        CHECK(only_patient(b).conditions.size() == 2);
    }
    SUBCASE("a Patient without an id behind a urn:uuid fullUrl is that patient") {
        auto b = build(R"({"resourceType":"Bundle","type":"collection","entry":[
          {"fullUrl":"urn:uuid:6a3c6e0e-1111-4a44-9a55-000000000001","resource":{"resourceType":"Patient","deceasedBoolean":false}},
          {"fullUrl":"urn:uuid:6a3c6e0e-1111-4a44-9a55-000000000002","resource":)" +
                       condition_of("c1", "urn:uuid:6a3c6e0e-1111-4a44-9a55-000000000001") + R"(}]})");
        CHECK(b.problems().empty());
        CHECK(only_patient(b).patient == "urn:uuid:6a3c6e0e-1111-4a44-9a55-000000000001");
        CHECK(only_patient(b).conditions.size() == 1);
    }
    SUBCASE("a urn:uuid outside a Bundle names nobody") {
        auto b = build(condition_of("c1", "urn:uuid:6a3c6e0e-1111-4a44-9a55-000000000001"));
        CHECK(b.patients().empty());
        REQUIRE(b.problems().size() == 1);
        CHECK(b.problems()[0].message.find("can only be resolved by the fullUrls of a Bundle") != std::string::npos);
    }
}

TEST_CASE("versions: only the latest of a resource read twice counts; a deletion counts too") {
    auto lab_version = [](const std::string& version, const std::string& updated, double value) {
        std::string meta = "{";
        if (!version.empty()) meta += R"("versionId":")" + version + "\"";
        if (!updated.empty()) meta += std::string(version.empty() ? "" : ",") + R"("lastUpdated":")" + updated + "\"";
        meta += "}";
        return R"({"resourceType":"Observation","id":"o1","meta":)" + meta +
               R"(,"status":"final","code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2026-11-20T08:00:00Z","valueQuantity":{"value":)" +
               rules::format_number(value) + R"(,"code":"mg/dL"}})";
    };
    auto bundle = [](const std::vector<std::string>& entries) {
        std::string out = R"({"resourceType":"Bundle","type":"history","entry":[)";
        for (std::size_t i = 0; i < entries.size(); ++i) out += (i ? "," : "") + entries[i];
        return out + "]}";
    };
    auto entry = [](const std::string& r) { return R"({"resource":)" + r + "}"; };
    auto value_of = [](const mappings::FactBuilder& b) {
        const auto& p = only_patient(b);
        REQUIRE(p.labs.size() == 1);
        return p.labs[0].value;
    };
    SUBCASE("numeric versionId: 10 beats 9, in either order") {
        for (bool newest_first : {true, false}) {
            auto e9 = entry(lab_version("9", "2026-11-21T00:00:00Z", 12.5));
            auto e10 = entry(lab_version("10", "2026-11-20T00:00:00Z", 9.1));
            auto b = build(bundle(newest_first ? std::vector<std::string>{e10, e9} : std::vector<std::string>{e9, e10}));
            CHECK(value_of(b) == doctest::Approx(9.1));
            REQUIRE(only_patient(b).notes.size() == 1);
            CHECK(only_patient(b).notes[0].source == "Observation/o1/_history/9");
            CHECK(only_patient(b).notes[0].message.find("superseded by version 10") != std::string::npos);
        }
    }
    SUBCASE("no numeric versions: the latest lastUpdated; no meta: the last one read") {
        auto b = build(bundle({entry(lab_version("b", "2026-11-22T00:00:00Z", 9.1)), entry(lab_version("a", "2026-11-21T00:00:00Z", 12.5))}));
        CHECK(value_of(b) == doctest::Approx(9.1));
        auto c = build(bundle({entry(lab_version("", "", 12.5)), entry(lab_version("", "", 9.1))}));
        CHECK(value_of(c) == doctest::Approx(9.1));
        CHECK(only_patient(c).notes[0].message.find("the one read last counts") != std::string::npos);
    }
    SUBCASE("the same resource in two files counts once") {
        mappings::FactBuilder b(test::terminology());
        fhir::read_text(lab_version("3", "", 12.5), "a.json", b);
        fhir::read_text(lab_version("3", "", 12.5), "b.json", b);
        CHECK(value_of(b) == doctest::Approx(12.5));
        CHECK(only_patient(b).notes[0].message.find("appears more than once") != std::string::npos);
    }
    SUBCASE("a DELETE entry of a history Bundle takes the resource back") {
        auto b = build(bundle({R"({"request":{"method":"DELETE","url":"Observation/o1"},"response":{"status":"204","etag":"W/\"4\""}})",
                               entry(lab_version("3", "", 12.5))}));
        const auto& p = only_patient(b);
        CHECK(p.labs.empty());
        REQUIRE(p.notes.size() == 1);
        CHECK(p.notes[0].message.find("is deleted by an entry of the input (version 4)") != std::string::npos);
    }
    SUBCASE("a later version that cannot be read leaves no earlier one counting") {
        auto bad = lab_version("4", "", 9.1);
        bad.replace(bad.find("\"value\":9.1"), 11, "\"value\":\"x\"");
        auto b = build(bundle({entry(lab_version("3", "", 12.5)), entry(bad)}));
        CHECK(only_patient(b).labs.empty());
        REQUIRE(b.problems().size() == 1);
    }
}

TEST_CASE("a resource rejected half-way gives nothing") {
    // The first component is read, the second is not a number: neither counts.
    auto b = build(R"({"resourceType":"Observation","id":"panel","status":"final","code":{"text":"Renal panel"},
      "subject":{"reference":"Patient/p1"},"effectiveDateTime":"2026-11-20",
      "component":[{"code":{"coding":[{"system":"http://loinc.org","code":"2777-1"}]},"valueQuantity":{"value":6.1,"code":"mg/dL"}},
                   {"code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},"valueQuantity":{"value":"x","code":"mg/dL"}}]})");
    REQUIRE(b.problems().size() == 1);
    CHECK(only_patient(b).labs.empty());
}

TEST_CASE("procedures, deceased patients, DiagnosticReports and plausibility limits") {
    SUBCASE("a dialysis Procedure") {
        auto b = build(R"({"resourceType":"Procedure","id":"hd1","status":"completed","subject":{"reference":"Patient/p1"},
          "code":{"coding":[{"system":"http://snomed.info/sct","code":"302497006","display":"Hemodialysis"}]},
          "performedPeriod":{"start":"2026-11-20T08:00:00Z","end":"2026-11-20T12:00:00Z"}})");
        const auto& p = only_patient(b);
        REQUIRE(p.procedures.size() == 1);
        CHECK(p.procedures[0].concept_id == "dialysis");
        CHECK(p.procedures[0].code_label == "SNOMED CT 302497006");
        CHECK(p.procedures[0].performed_end == test::at("2026-11-20T12:00:00Z"));
        auto c = build(R"({"resourceType":"Procedure","id":"x","status":"completed","subject":{"reference":"Patient/p1"},
          "code":{"coding":[{"system":"http://snomed.info/sct","code":"80146002"}]},"performedDateTime":"2026-11-20"})");
        CHECK(c.patients().empty());  // not a procedure the rules read
    }
    SUBCASE("deceased") {
        auto b = build(R"({"resourceType":"Patient","id":"p1","deceasedDateTime":"2026-10-01"})");
        REQUIRE(only_patient(b).deceased.has_value());
        CHECK(only_patient(b).deceased->at == test::at("2026-10-01"));
        auto c = build(R"({"resourceType":"Patient","id":"p1","deceasedBoolean":false})");
        CHECK_FALSE(only_patient(c).deceased.has_value());
        auto d = build(R"({"resourceType":"Patient","id":"p1","deceasedBoolean":"yes"})");
        REQUIRE(d.problems().size() == 1);
        CHECK(d.problems()[0].path == "Patient.deceasedBoolean");
    }
    SUBCASE("Observations contained in a DiagnosticReport take its subject and its reference") {
        auto b = build(R"({"resourceType":"DiagnosticReport","id":"dr1","meta":{"versionId":"2"},"status":"final","code":{"text":"Renal panel"},
          "subject":{"reference":"Patient/p1"},"result":[{"reference":"#ca"}],
          "contained":[{"resourceType":"Observation","id":"ca","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},
                        "effectiveDateTime":"2026-11-20T08:00:00Z","valueQuantity":{"value":"9.5","code":"mg/dL"}}]})");
        REQUIRE(b.problems().size() == 1);
        CHECK(b.problems()[0].path == "DiagnosticReport.contained[0].valueQuantity.value");
        auto c = build(R"({"resourceType":"DiagnosticReport","id":"dr1","meta":{"versionId":"2"},"status":"final","code":{"text":"Renal panel"},
          "subject":{"reference":"Patient/p1"},"result":[{"reference":"#ca"}],
          "contained":[{"resourceType":"Observation","id":"ca","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},
                        "effectiveDateTime":"2026-11-20T08:00:00Z","valueQuantity":{"value":9.5,"code":"mg/dL"}},
                       {"resourceType":"Observation","id":"unlisted","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2777-1"}]},
                        "effectiveDateTime":"2026-11-20T08:00:00Z","valueQuantity":{"value":9.5,"code":"mg/dL"}}]})");
        const auto& p = only_patient(c);
        REQUIRE(p.labs.size() == 1);
        CHECK(p.labs[0].source == "DiagnosticReport/dr1/_history/2");
    }
    SUBCASE("an implausible value after conversion is a note") {
        auto b = build(observation("2000-8", R"({"value":7.5,"code":"mmol/L"})"));  // 30.06 mg/dL
        const auto& p = only_patient(b);
        CHECK(p.labs.empty());
        REQUIRE(p.notes.size() == 1);
        CHECK(p.notes[0].message.find("implausible, outside 2-25 mg/dL") != std::string::npos);
        CHECK(p.notes[0].message.find("reported 7.5 mmol/L") != std::string::npos);
        CHECK(only_patient(build(observation("2731-8", R"({"value":0,"code":"pg/mL"})"))).labs.size() == 1);  // limits included
    }
}

TEST_CASE("a condition coded in two systems for one concept counts once") {
    auto b = build(R"({"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},
      "clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},
      "code":{"coding":[{"system":"http://snomed.info/sct","code":"46177005","display":"End-stage renal disease"},
                        {"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"N18.6"}]}})");
    const auto& p = only_patient(b);
    REQUIRE(p.conditions.size() == 1);
    CHECK(p.conditions[0].code_label == "SNOMED CT 46177005");
    CHECK(p.conditions[0].clinical_status == "active");
}

TEST_CASE("alert identity is deterministic per (patient, rule)") {
    const auto a = mappings::alert_identifier("Patient/1", "calciphylaxis-risk");
    CHECK(a == mappings::alert_identifier("Patient/1", "calciphylaxis-risk"));
    CHECK(a != mappings::alert_identifier("Patient/2", "calciphylaxis-risk"));
    CHECK(a != mappings::alert_identifier("Patient/1", "calciphylaxis-suspected"));
    CHECK(a.size() == 36);
    CHECK(a[14] == '5');  // a version 5 UUID
}

TEST_CASE("DetectedIssue carries §4 of clinical-rules.md") {
    rules::PatientFacts p{"Patient/p1", {}, {test::dx("dermatomyositis", "Condition/dm/_history/2")}, {}};
    auto ev = rules::evaluate(p, test::kNow, test::catalog());
    REQUIRE(ev.findings.size() == 1);
    mappings::IssueOptions o;
    rapidjson::Document d;
    d.Parse(mappings::detected_issue_json(ev.findings[0], test::kNow, o).c_str());
    REQUIRE_FALSE(d.HasParseError());
    CHECK(std::string(d["resourceType"].GetString()) == "DetectedIssue");
    CHECK(std::string(d["status"].GetString()) == "final");
    CHECK(std::string(d["severity"].GetString()) == "low");
    CHECK(std::string(d["code"]["coding"][0]["system"].GetString()) == "urn:calcalert:rule");
    CHECK(std::string(d["code"]["coding"][0]["code"].GetString()) == "dystrophic-calcinosis-watch");
    CHECK(std::string(d["patient"]["reference"].GetString()) == "Patient/p1");
    CHECK(std::string(d["identifiedDateTime"].GetString()) == "2026-11-25T12:00:00Z");
    CHECK(std::string(d["author"]["display"].GetString()) == "calcalert");
    CHECK(std::string(d["implicated"][0]["reference"].GetString()) == "Condition/dm/_history/2");
    CHECK(std::string(d["evidence"][0]["detail"][0]["reference"].GetString()) == "Condition/dm/_history/2");
    CHECK(std::string(d["reference"].GetString()) == "https://pubmed.ncbi.nlm.nih.gov/9777759/");
    CHECK(std::string(d["identifier"][0]["system"].GetString()) == "urn:calcalert:detected-issue");
    CHECK(std::string(d["identifier"][0]["value"].GetString()) ==
          mappings::alert_identifier("Patient/p1", "dystrophic-calcinosis-watch"));
    CHECK(std::string(d["detail"].GetString()).find("soft-tissue radiography confirms") != std::string::npos);
}

namespace {

// Everything a builder holds, in words, in its order.
std::string dump(const mappings::FactBuilder& b) {
    std::string out;
    for (const auto& [ref, p] : b.patients()) {
        out += ref + "\n";
        for (const auto& l : p.labs)
            out += "  lab " + std::to_string(static_cast<int>(l.analyte)) + " " + rules::format_number(l.value) + " " +
                   std::to_string(l.effective) + " " + l.source + " " + l.status + " " + l.code + "\n";
        for (const auto& c : p.conditions) out += "  condition " + c.concept_id + " " + c.code + " " + c.source + "\n";
        for (const auto& c : p.procedures) out += "  procedure " + c.concept_id + " " + c.source + "\n";
        for (const auto& n : p.notes) out += "  note " + n.source + " | " + n.path + " | " + n.message + "\n";
        if (p.deceased) out += "  deceased " + p.deceased->source + "\n";
    }
    for (const auto& pr : b.problems()) out += "problem " + pr.describe() + "\n";
    return out;
}

}  // namespace

TEST_CASE("NDJSON read on several threads: the same facts, notes and problems, in the same order, as on one") {
    auto lab = [](const std::string& id, const std::string& patient, const std::string& meta, const std::string& value) {
        return R"({"resourceType":"Observation","id":")" + id + R"(")" + meta +
               R"(,"status":"final","code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},"subject":{"reference":"Patient/)" +
               patient + R"("},"effectiveDateTime":"2026-11-20T08:00:00Z","valueQuantity":{"value":)" + value +
               R"(,"code":"mg/dL"}})";
    };
    auto contained = [](const std::string& id, const std::string& patient, const std::string& value) {
        return R"({"resourceType":"Observation","id":")" + id +
               R"(","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},)" +
               (patient.empty() ? std::string() : R"("subject":{"reference":"Patient/)" + patient + R"("},)") +
               R"("effectiveDateTime":"2026-11-20T08:00:00Z","valueQuantity":{"value":)" + value + R"(,"code":"mg/dL"}})";
    };
    auto report = [](const std::string& id, const std::string& patient, const std::vector<std::string>& results) {
        std::string refs, list;
        for (std::size_t i = 0; i < results.size(); ++i) {
            refs += std::string(i ? "," : "") + R"({"reference":"#)" + std::string(1, static_cast<char>('a' + i)) + R"("})";
            list += (i ? "," : "") + results[i];
        }
        return R"({"resourceType":"DiagnosticReport","id":")" + id + R"(","meta":{"versionId":"1"},"status":"final","code":{"text":"panel"},"subject":{"reference":"Patient/)" +
               patient + R"("},"result":[)" + refs + R"(],"contained":[)" + list + "]}";
    };
    const std::vector<std::string> lines = {
        lab("o1", "p1", R"(,"meta":{"versionId":"9"})", "12.5"),
        lab("o2", "p2", "", "10.1"),
        R"({"resourceType":"Patient","id":"p1","deceasedDateTime":"2026-10-01"})",
        lab("o1", "p1", R"(,"meta":{"versionId":"10"})", "9.1"),         // supersedes version 9
        lab("o3", "p1", R"(,"meta":{"versionId":"2"})", "11.0"),
        lab("o3", "p1", R"(,"meta":{"versionId":"1"})", "13.0"),         // older: not used
        lab("o2", "p2", "", "10.1"),                                       // a resend: counted once
        lab("o4", "p3", R"(,"meta":{"versionId":"1"})", "\"x\""),        // rejected
        lab("o5", "p3", R"(,"meta":{"versionId":"1"})", "9.9"),
        lab("o5", "p3", R"(,"meta":{"versionId":"2"})", "\"y\""),        // rejected: version 1 no longer counts
        R"({"resourceType":"Observation","id":"o6","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"17861-6"}]},"effectiveDateTime":"2026-11-20"})",
        R"({"resourceType":"Patient","id":"p1","meta":{"versionId":"7"},"deceasedBoolean":false})",  // no version before: read last counts
        R"({"resourceType":"Bundle","type":"history","entry":[{"request":{"method":"DELETE","url":"Observation/o3"},"response":{"etag":"W/\"3\""}}]})",
        R"({"resourceType":"Condition","id":"c1","code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"N18.6"}]},"subject":{"reference":"Patient/p4"}})",
        R"({"resourceType":"Procedure","id":"hd1","status":"completed","subject":{"reference":"Patient/p4"},"code":{"coding":[{"system":"http://snomed.info/sct","code":"302497006"}]},"performedDateTime":"2026-11-20"})",
        R"({"resourceType":"Procedure","id":"hd2","status":"completed","subject":{"reference":"Patient/p4"},"code":{"coding":[{"system":"http://snomed.info/sct","code":"302497006"}]}})",
        "{not json",
        R"({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"export incomplete"}]})",
        R"({"resourceType":"Patient","id":"p5"})",
        lab("o1", "p1", R"(,"meta":{"versionId":"8"})", "14.0"),         // older than 10: not used
        R"({"resourceType":"Condition","id":"c1","meta":{"versionId":"2"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"N18.6"}]},"subject":{"reference":"Patient/p4"}})",
        // A report whose results name two patients: each result goes to its own.
        report("dr2", "p6", {contained("a", "p7", "10.5"), contained("b", "p6", "9.0"), contained("c", "", "9.2")}),
        // Rejected at its last result: the patient it named last gets nothing from it, the other keeps its result.
        report("dr3", "p8", {contained("a", "p8", "10.5"), contained("b", "p9", "9.0"), contained("c", "p8", "\"z\"")}),
        R"({"resourceType":"Patient","id":"p10","meta":{"versionId":"1"},"deceasedBoolean":true})",
        R"({"resourceType":"Patient","id":"p10","meta":{"versionId":"2"}})",  // no longer deceased
        R"({"resourceType":"Patient","id":"p11","meta":{"versionId":"3"},"deceasedDateTime":"2026-09-01"})",
    };
    std::string text;
    for (const auto& l : lines) text += l + "\n";
    auto read = [&](unsigned jobs, std::size_t batch_bytes) {
        mappings::FactBuilder b(test::terminology());
        std::istringstream in(text);
        fhir::NdjsonOptions o;
        o.jobs = jobs;
        o.batch_bytes = batch_bytes;
        const auto stats = fhir::read_ndjson(in, "t.ndjson", b, o);
        return std::to_string(stats.resources) + " resources, " + std::to_string(stats.rejected) + " rejected\n" + dump(b);
    };
    const std::string one = read(1, std::size_t{4} << 20);
    // What the single thread gives, checked in part, so that the comparison is of something.
    CHECK(one.find("lab 0 9.1 ") != std::string::npos);
    CHECK(one.find("Observation/o1/_history/9 | meta.versionId | Observation/o1 (version 9) is superseded by version 10") != std::string::npos);
    CHECK(one.find("Observation/o1/_history/8 |") != std::string::npos);
    CHECK(one.find("Observation/o2 (a copy without meta.versionId or meta.lastUpdated) is superseded") != std::string::npos);
    CHECK(one.find("is deleted by an entry of the input (version 3)") != std::string::npos);
    CHECK(one.find("Observation/o5/_history/1") != std::string::npos);
    auto facts_of = [&](const std::string& patient) {  // a patient's lines of the dump
        const auto at = one.find(patient + "\n");
        return at == std::string::npos ? std::string() : one.substr(at, one.find("\nPatient/", at + 1) - at);
    };
    CHECK(facts_of("Patient/p1").find("lab 0 9.1 ") != std::string::npos);
    CHECK(facts_of("Patient/p1").find("deceased") == std::string::npos);  // the later Patient version is not deceased
    CHECK(one.find("Patient/p5\n") != std::string::npos);
    CHECK(one.find("problem t.ndjson:17") != std::string::npos);
    // The reports: p7, p6 (twice) and p9 have their results; p8 has none, as its report was rejected.
    CHECK(one.find("Patient/p7\n  lab 0 10.5 ") != std::string::npos);
    CHECK(one.find("Patient/p6\n  lab 0 9 ") != std::string::npos);
    CHECK(one.find("DiagnosticReport/dr2/_history/1 final 17861-6\n  lab 0 9.2 ") != std::string::npos);
    CHECK(one.find("Patient/p8\nPatient/p9\n  lab 0 9 ") != std::string::npos);
    CHECK(facts_of("Patient/p11").find("deceased Patient/p11/_history/3") != std::string::npos);
    CHECK(facts_of("Patient/p10").find("(version 1) is superseded by version 2") != std::string::npos);
    CHECK(facts_of("Patient/p10").find("  deceased") == std::string::npos);  // its later version is not deceased
    for (unsigned jobs : {2U, 3U})
        for (std::size_t batch_bytes : {std::size_t{1}, std::size_t{300}, std::size_t{1000}}) {
            CAPTURE(jobs);
            CAPTURE(batch_bytes);
            CHECK(read(jobs, batch_bytes) == one);
        }
}
