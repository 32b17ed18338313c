// The readable report of `calcalert evaluate --format text`: per patient, each finding with its
// explanation, then the data-quality notes.
#pragma once

#include <ostream>
#include <vector>

#include "rules/engine.hpp"

namespace calcalert::cli {

struct PatientResult {
    std::string patient;
    rules::Evaluation evaluation;
};

// Times are written in `zone` (the catalog's display time zone), as in the explanations.
void write_text_report(std::ostream& out, const std::vector<PatientResult>& results, rules::EpochSeconds now,
                       const rules::TimeZone& zone);

}  // namespace calcalert::cli
