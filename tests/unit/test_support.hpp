// Shared helpers for the unit tests: the real terminology and catalog, and a few fact builders.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "fhir/datetime.hpp"
#include "mappings/terminology.hpp"
#include "rules/catalog.hpp"
#include "rules/engine.hpp"

namespace test {

inline const calcalert::mappings::Terminology& terminology() {
    static const auto t = calcalert::mappings::Terminology::load(std::string(CALCALERT_TEST_DIR) + "/../mappings/data");
    return t;
}

inline const calcalert::rules::RuleCatalog& catalog() {
    static const auto c =
        calcalert::rules::RuleCatalog::load(std::string(CALCALERT_TEST_DIR) + "/../rules/catalog", terminology().concepts());
    return c;
}

inline calcalert::rules::EpochSeconds at(const char* when) { return *calcalert::fhir::parse_datetime(when); }
inline const calcalert::rules::EpochSeconds kNow = at("2026-11-25T12:00:00Z");

inline calcalert::rules::LabResult lab(calcalert::rules::Analyte a, double v, const char* when,
                                       const char* source = "Observation/x") {
    calcalert::rules::LabResult r;
    r.analyte = a;
    r.value = v;
    r.effective = at(when);
    r.status = "final";
    r.source = source;
    return r;
}

inline calcalert::rules::ConditionFact dx(const char* concept_id, const char* source = "Condition/x") {
    calcalert::rules::ConditionFact c;
    c.concept_id = concept_id;
    c.code_label = std::string("TEST ") + concept_id;
    c.clinical_status = "active";
    c.verification_status = "confirmed";
    c.source = source;
    return c;
}

inline std::vector<std::string> fired(const calcalert::rules::PatientFacts& p,
                                      calcalert::rules::EpochSeconds now = kNow) {
    std::vector<std::string> ids;
    for (const auto& f : calcalert::rules::evaluate(p, now, catalog()).findings) ids.push_back(f.rule->id);
    std::sort(ids.begin(), ids.end());
    return ids;
}

}  // namespace test
