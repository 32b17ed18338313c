// Findings -> FHIR R4 DetectedIssue (clinical-rules.md §4), and data-quality notes -> OperationOutcome.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "fhir/problem.hpp"
#include "mappings/json_writer.hpp"
#include "rules/engine.hpp"

namespace calcalert::mappings {

struct IssueOptions {
    std::string identifier_system = "urn:calcalert:detected-issue";
    std::string rule_system = "urn:calcalert:rule";
    std::string author_display = "calcalert";
    // An extension (valueString) carrying Finding::evidence_hash, so that the poller decides an
    // amend from what the server holds (the hash changes with the evidence or the rule logic, never
    // with a rule's wording), not from rendered text.
    std::string evidence_hash_extension = "urn:calcalert:extension:evidence-hash";
};

// The alert's identity: a name-based (version 5) UUID of (patient, rule id), the same in every run,
// in the poller and in CDS Hooks cards.
std::string alert_identifier(std::string_view patient, std::string_view rule_id);

// status: final (new), amended (evidence changed) or cancelled (no longer holds).
// `with_id`: set DetectedIssue.id to the identifier (for files); a FHIR server write omits it.
void write_detected_issue(JsonWriter& w, const rules::Finding& f, rules::EpochSeconds identified,
                          const IssueOptions& options, std::string_view status = "final", bool with_id = true);
std::string detected_issue_json(const rules::Finding& f, rules::EpochSeconds identified, const IssueOptions& options,
                                std::string_view status = "final", bool with_id = true);

// One OperationOutcome holding the data-quality notes (severity information/warning) and input
// problems; each issue names the resource in `diagnostics` and the element in `expression`.
struct OutcomeIssue {
    std::string severity;  // fatal, error, warning, information
    std::string code;      // FHIR issue-type code: processing, invalid, structure, value, ...
    std::string diagnostics;
    std::string expression;
};
void write_operation_outcome(JsonWriter& w, const std::vector<OutcomeIssue>& issues);

}  // namespace calcalert::mappings
