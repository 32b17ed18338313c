// The rule engine: evaluate(patient facts, now, catalog) -> findings. Pure and deterministic: no I/O,
// no clock, no globals; the same input always gives the same findings, in the same order.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "rules/catalog.hpp"
#include "rules/facts.hpp"

namespace calcalert::rules {

// One line of a finding's evidence: a fact that made the rule fire, in words, with its sources.
struct Evidence {
    std::string fact;     // "ca-x-p-high", "dx.esrd", ...
    std::string label;    // "Calcium-phosphate product above the threshold"
    std::string text;     // in words: exact values, units, dates (in the catalog's time zone) and thresholds
    std::vector<std::string> sources;  // "Observation/1/_history/2", ...
    std::string key;      // the same evidence, canonical (values, UTC times, thresholds, codes): the hash input
};

struct Finding {
    std::string patient;  // "Patient/123"
    const Rule* rule = nullptr;
    std::string summary;  // < 140 characters
    std::vector<Evidence> evidence;
    std::vector<std::string> notes;     // the rule's clinical notes, rendered
    std::vector<std::string> sources;   // every resource used, deduplicated, in evidence order
    std::string detail;                 // the whole explanation as text: explanation_text(*this)
    std::string evidence_hash;          // changes exactly when the rule logic (Rule::logic_version) or the evidence changes
    std::string order;                  // order rules: the draft order it is about ("MedicationRequest/1"); else empty
};

struct Evaluation {
    std::vector<Finding> findings;
    std::vector<DataQualityNote> notes;  // the facts' notes plus what the engine could not count
};

Evaluation evaluate(const PatientFacts& facts, EpochSeconds now, const RuleCatalog& catalog);

// The earliest time after `now` at which evaluate() may answer differently for the same facts only
// because time passes: a result or a dialysis Procedure leaves its window, a future-dated result,
// Procedure or Condition starts to count, a Condition's abatement or a date of death is reached.
// nullopt when no such time exists. Conservative: it may name a time at which nothing changes, never
// one later than the first change. For the poller, which re-evaluates a patient with an open alert
// only from then on.
std::optional<EpochSeconds> next_time_change(const PatientFacts& facts, EpochSeconds now, const RuleCatalog& catalog);

// The order rules (catalog.order_rules()) for the draft orders of a CDS Hooks order-select / order-sign
// call. Each order (the OrderFacts sharing a source) is judged on its own: its order facts plus the
// patient's facts (conditions, labs, derived facts, counted as in evaluate()). One Finding per (rule, order)
// that fires, with Finding::order set and evidence naming the order and the patient facts behind the rule;
// findings sorted by severity, rule id, then the orders' first appearance. Pure, like evaluate().
Evaluation evaluate_orders(const PatientFacts& facts, const std::vector<OrderFact>& orders, EpochSeconds now,
                           const RuleCatalog& catalog);

// The explanation of a finding as plain text (DetectedIssue.detail, the text report): the rule and its
// version; "Why:" with one line per evidence, each ending in the numbers of its resources ("[1, 2]");
// the rule's notes; the reference; then "Evidence: [1] Observation/...; [2] ..." listing the resources.
std::string explanation_text(const Finding& finding);
// "[1, 2]": the numbers, in finding.sources, of the resources one evidence line rests on.
std::string evidence_references(const Evidence& evidence, const std::vector<std::string>& sources);

// One value a lab fact can judge, as the engine sees it: a counted result of an analyte (a status of
// countedObservationStatuses, not dated after now + futureToleranceHours), or a computed value (Ca×P, the
// albumin-corrected calcium) built from counted results exactly as the lab facts build it.
struct SeriesPoint {
    double value = 0;
    std::optional<Comparator> comparator = Comparator::none;  // nullopt: a product bounded both ways
    EpochSeconds time = 0;
    std::optional<double> reference_high;
    std::vector<std::string> sources;  // the results it rests on (one, or two for a computed value)
};
// Every value of `value` (an analyte name such as "phosphate", or the id of a computed value such as
// "ca-x-p"), latest first. Unknown names give nothing. Pure, like evaluate().
std::vector<SeriesPoint> value_series(const PatientFacts& facts, EpochSeconds now, const RuleCatalog& catalog,
                                      const std::string& value);

// The threshold a lab fact applies to a value with this reference-range high: timesReferenceRangeHigh ×
// the high when the fact has a multiple and the result reports a high, else the fact's default.
struct AppliedThreshold {
    double value = 0;
    bool from_reference_range = false;
};
AppliedThreshold lab_fact_threshold(const LabFact& fact, std::optional<double> reference_high);

// Formats a number for people: up to `decimals` decimals, trailing zeros removed ("7.5", "10", "1.45").
std::string format_number(double v, int decimals = 2);

}  // namespace calcalert::rules
