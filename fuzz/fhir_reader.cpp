// The FHIR resource reader as `calcalert evaluate` reads a file: the input read whole (a single
// resource, a Bundle of any type, or NDJSON detected) and read as a .ndjson file (line by line),
// then every patient's facts through the rule engine and every finding into a DetectedIssue.
// Bad input is reported through ResourceHandler::on_problem, never thrown: any exception is a finding.
// The input is also parsed as JSON in place (the quick parse, and the guarded one where it gives up)
// and from its bytes: the two must agree on the Document, the end, the error and the defects.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "fhir/json_parse.hpp"
#include "fhir/resource_reader.hpp"
#include "fuzz_support.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/fact_builder.hpp"
#include "rules/engine.hpp"

using namespace calcalert;

namespace {

// A Document as text: two Documents compare equal by it also when an object repeats a member name
// (RapidJSON's operator== matches each member by the first of its name).
std::string written(const rapidjson::Document& d) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    d.Accept(w);
    return std::string(sb.GetString(), sb.GetSize());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const mappings::Terminology& term = fuzz::terminology();
    static const rules::RuleCatalog& catalog = fuzz::catalog();
    static const mappings::IssueOptions issue_options;
    const std::string_view text = fuzz::as_text(data, size);

    for (bool keep_going : {false, true}) {
        fhir::JsonParseOptions plain;
        plain.keep_going = keep_going;
        fhir::JsonParseOptions in_place = plain;
        std::vector<char> scratch(text.size() + 1);
        in_place.insitu = scratch.data();
        rapidjson::Document a, b;
        const fhir::JsonParseResult ra = fhir::parse_untrusted_json(a, text, plain);
        const fhir::JsonParseResult rb = fhir::parse_untrusted_json(b, text, in_place);
        if (ra.ok() != rb.ok() || ra.end != rb.end || ra.defects.size() != rb.defects.size() || written(a) != written(b))
            __builtin_trap();
        if (ra.error && ra.error->describe() != rb.error->describe()) __builtin_trap();
        for (std::size_t i = 0; i < ra.defects.size(); ++i)
            if (ra.defects[i].describe() != rb.defects[i].describe()) __builtin_trap();
    }

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
