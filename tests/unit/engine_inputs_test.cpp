// The engine's side of clinical-rules.md §5.1.5, §5.1.6 and §5.2.2: conditions that have not
// happened yet, deceased patients, dialysis procedures as ESRD.
#include <doctest/doctest.h>

#include "test_support.hpp"

using namespace calcalert;
using rules::Analyte;

namespace {

// An ESRD-free patient with a skin ulcer and PTH 650 pg/mL (above 9 × 65 = 585: a strong mineral
// abnormality, so the ulcer suffices): calciphylaxis-suspected as soon as esrd holds.
rules::PatientFacts ulcer_and_high_pth() {
    rules::PatientFacts p;
    p.patient = "Patient/1";
    p.labs.push_back(test::lab(Analyte::pth_intact, 650, "2026-11-20T08:00:00Z", "Observation/pth"));
    p.conditions.push_back(test::dx("skin-ulcer", "Condition/ulcer"));
    return p;
}

rules::ProcedureFact dialysis(const char* status, const char* start, const char* end = nullptr) {
    rules::ProcedureFact f;
    f.concept_id = "dialysis";
    f.code_label = "SNOMED CT 302497006";
    f.display = "Hemodialysis";
    f.status = status;
    f.performed_start = test::at(start);
    f.performed_end = end ? std::optional<rules::EpochSeconds>(test::at(end)) : std::nullopt;
    f.source = "Procedure/hd";
    return f;
}

bool has_note(const rules::Evaluation& ev, const std::string& text) {
    for (const auto& n : ev.notes)
        if (n.message.find(text) != std::string::npos) return true;
    return false;
}

}  // namespace

TEST_CASE("a dialysis Procedure of a counted status within 30 days is ESRD") {
    const std::vector<std::string> suspected{"calciphylaxis-suspected"};
    auto with = [](rules::ProcedureFact f) {
        auto p = ulcer_and_high_pth();
        p.procedures.push_back(std::move(f));
        return p;
    };
    CHECK(test::fired(ulcer_and_high_pth()).empty());
    CHECK(test::fired(with(dialysis("completed", "2026-11-15T08:00:00Z", "2026-11-15T12:00:00Z"))) == suspected);
    CHECK(test::fired(with(dialysis("completed", "2026-10-26T12:00:00Z"))) == suspected);  // exactly 30 days
    CHECK(test::fired(with(dialysis("completed", "2026-10-16T08:00:00Z"))).empty());      // 40 days ago
    CHECK(test::fired(with(dialysis("not-done", "2026-11-15T08:00:00Z"))).empty());
    CHECK(test::fired(with(dialysis("entered-in-error", "2026-11-15T08:00:00Z"))).empty());
    // A period counts by its end; an in-progress one without an end is still going on.
    CHECK(test::fired(with(dialysis("completed", "2026-09-01T08:00:00Z", "2026-11-10T08:00:00Z"))) == suspected);
    CHECK(test::fired(with(dialysis("in-progress", "2024-03-01T08:00:00Z"))) == suspected);
    CHECK(test::fired(with(dialysis("completed", "2024-03-01T08:00:00Z"))).empty());
    // More than a day after now: not counted, with a note.
    auto future = with(dialysis("completed", "2026-11-28T08:00:00Z"));
    const auto ev = rules::evaluate(future, test::kNow, test::catalog());
    CHECK(ev.findings.empty());
    CHECK(has_note(ev, "not counted: performed 28 Nov 2026 08:00 UTC"));

    auto p = with(dialysis("completed", "2026-11-15T08:00:00Z", "2026-11-15T12:00:00Z"));
    p.procedures.push_back(dialysis("completed", "2026-11-18T08:00:00Z", "2026-11-18T12:00:00Z"));
    p.procedures.back().source = "Procedure/hd2";
    const auto fired = rules::evaluate(p, test::kNow, test::catalog());
    REQUIRE(fired.findings.size() == 1);
    const auto& detail = fired.findings[0].detail;
    CHECK(detail.find("\"Hemodialysis\" SNOMED CT 302497006, completed, performed 18 Nov 2026 08:00 UTC to 18 Nov 2026 12:00 UTC "
                      "(within 30 days; the latest of 2)") != std::string::npos);
    CHECK(detail.find("Procedure/hd2") != std::string::npos);
    CHECK(has_note(rules::evaluate(with(dialysis("not-done", "2026-11-15T08:00:00Z")), test::kNow, test::catalog()),
                   "not counted: status 'not-done'"));
}

TEST_CASE("a condition whose onset or recordedDate lies more than a day after now does not count") {
    auto p = ulcer_and_high_pth();
    p.conditions.push_back(test::dx("esrd", "Condition/esrd"));
    CHECK(test::fired(p) == std::vector<std::string>{"calciphylaxis-suspected"});
    p.conditions.back().onset = test::at("2026-11-26T06:00:00Z");  // 18 h after now: counts
    CHECK(test::fired(p) == std::vector<std::string>{"calciphylaxis-suspected"});
    p.conditions.back().onset = test::at("2026-12-25");
    auto ev = rules::evaluate(p, test::kNow, test::catalog());
    CHECK(ev.findings.empty());
    CHECK(has_note(ev, "not counted: onset 25 Dec 2026"));
    p.conditions.back().onset = test::at("2026-01-01");
    p.conditions.back().recorded = test::at("2026-12-01");
    ev = rules::evaluate(p, test::kNow, test::catalog());
    CHECK(ev.findings.empty());
    CHECK(has_note(ev, "not counted: recorded 1 Dec 2026"));
}

TEST_CASE("a deceased patient gets no finding; a death after now does not count") {
    auto p = ulcer_and_high_pth();
    p.conditions.push_back(test::dx("esrd", "Condition/esrd"));
    p.deceased = rules::Deceased{std::nullopt, "Patient/1"};
    auto ev = rules::evaluate(p, test::kNow, test::catalog());
    CHECK(ev.findings.empty());
    CHECK(has_note(ev, "the patient is deceased (deceasedBoolean true): no finding"));
    p.deceased = rules::Deceased{test::at("2026-11-25T12:00:00Z"), "Patient/1"};  // at now
    CHECK(rules::evaluate(p, test::kNow, test::catalog()).findings.empty());
    p.deceased = rules::Deceased{test::at("2026-12-02"), "Patient/1"};
    ev = rules::evaluate(p, test::kNow, test::catalog());
    CHECK(ev.findings.size() == 1);
    CHECK(has_note(ev, "lies after the evaluation time: the patient is evaluated"));
    // The order rules too.
    p.deceased = rules::Deceased{std::nullopt, "Patient/1"};
    rules::OrderFact o{"iv-calcium", "", "calcium gluconate", "IV", "code", "MedicationRequest/m1"};
    CHECK(rules::evaluate_orders(p, {o}, test::kNow, test::catalog()).findings.empty());
}

TEST_CASE("the dialysis window and statuses come from the catalog") {
    const auto& params = test::catalog().parameters();
    CHECK(params.dialysis_window_days == 30);
    CHECK(params.dialysis_counted_statuses == std::vector<std::string>{"completed", "in-progress"});
}
