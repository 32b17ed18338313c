// The FHIR resource reader as `calcalert evaluate` reads a file: the input read whole (a single
// resource, a Bundle of any type, or NDJSON detected) and read as a .ndjson file (line by line),
// then every patient's facts through the rule engine and every finding into a DetectedIssue.
// Bad input is reported through ResourceHandler::on_problem, never thrown: any exception is a finding.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "fhir/resource_reader.hpp"
#include "fuzz_support.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/fact_builder.hpp"
#include "rules/engine.hpp"

using namespace calcalert;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const mappings::Terminology& term = fuzz::terminology();
    static const rules::RuleCatalog& catalog = fuzz::catalog();
    static const mappings::IssueOptions issue_options;
    const std::string_view text = fuzz::as_text(data, size);

    mappings::FactBuilder builder(term);
    fhir::read_text(text, "fuzz.json", builder);
    std::istringstream lines{std::string(text)};
    fhir::read_ndjson(lines, "fuzz.ndjson", builder);

    for (const auto& [patient, facts] : builder.patients()) {
        const rules::Evaluation eval = rules::evaluate(facts, fuzz::kNow, catalog);
        for (const auto& f : eval.findings) (void)mappings::detected_issue_json(f, fuzz::kNow, issue_options);
    }
    for (const auto& p : builder.problems()) (void)p.describe();
    return 0;
}
