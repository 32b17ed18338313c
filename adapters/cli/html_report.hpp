// `calcalert evaluate --format html -o DIR`: the explanation page of every finding (explain/page.hpp) for
// offline review of a batch, and an index.html listing them.
//
//   DIR/index.html          the findings (patient, severity, rule, the finding in one sentence), linked
//   DIR/<identifier>.html   one page per finding, named by its alert identifier (no PHI in a file name)
//
// DIR is created when absent. A file of those names that calcalert did not write (it lacks the pages'
// generator marker) is never replaced: the command refuses before writing anything (UsageError naming the
// file). Pages an earlier run wrote are replaced; other files of DIR are left alone. Each file is written
// to a temporary name first and renamed, so a reader never sees half a page.
#pragma once

#include <filesystem>
#include <vector>

#include "adapters/cli/text_report.hpp"
#include "explain/guidance.hpp"
#include "rules/catalog.hpp"

namespace calcalert::cli {

struct HtmlReportInput {
    const std::vector<PatientResult>* results = nullptr;
    const std::vector<const rules::PatientFacts*>* facts = nullptr;  // per result, in the same order
    const rules::RuleCatalog* catalog = nullptr;
    const explain::Guidance* guidance = nullptr;
    rules::EpochSeconds now = 0;
};

// Writes the pages; returns how many files it wrote (index included).
std::size_t write_html_report(const std::filesystem::path& dir, const HtmlReportInput& input);

}  // namespace calcalert::cli
