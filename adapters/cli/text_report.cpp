#include "adapters/cli/text_report.hpp"

#include <sstream>

#include "fhir/datetime.hpp"
#include "mappings/detected_issue.hpp"

namespace calcalert::cli {
namespace {

std::string upper(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return out;
}

void indented(std::ostream& out, const std::string& text, const std::string& pad) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) out << pad << line << "\n";
}

// How a patient is named: "Patient/1"; a patient another server names by its last two segments and
// its URL ("Patient/1 (https://other.example.org/fhir/Patient/1)"); a urn:uuid as it is.
std::string patient_name(const std::string& patient) {
    if (patient.find("://") == std::string::npos) return patient;
    const auto p = patient.rfind("/Patient/");
    if (p == std::string::npos) return patient;
    return patient.substr(p + 1) + " (" + patient + ")";
}

}  // namespace

void write_text_report(std::ostream& out, const std::vector<PatientResult>& results, rules::EpochSeconds now,
                       const rules::TimeZone& zone) {
    std::size_t findings = 0, notes = 0, with_findings = 0;
    std::size_t by_severity[3] = {0, 0, 0};
    out << "calcalert evaluation at " << rules::format_time_for_people(now, zone) << " (" << fhir::format_datetime(now)
        << ")\n";
    for (const auto& r : results) {
        out << "\n" << patient_name(r.patient) << "\n";
        if (r.evaluation.findings.empty()) out << "  no findings\n";
        if (!r.evaluation.findings.empty()) ++with_findings;
        for (const auto& f : r.evaluation.findings) {
            ++findings;
            ++by_severity[static_cast<int>(f.rule->severity)];
            out << "  [" << upper(rules::to_string(f.rule->severity)) << "] " << f.rule->id << ": " << f.summary << "\n";
            out << "    identifier " << mappings::alert_identifier(f.patient, f.rule->id) << "\n";
            indented(out, f.detail, "    ");
        }
        if (!r.evaluation.notes.empty()) {
            out << "  data-quality notes:\n";
            for (const auto& n : r.evaluation.notes) {
                ++notes;
                out << "    - " << n.source << (n.path.empty() ? "" : " " + n.path) << ": " << n.message << "\n";
            }
        }
    }
    out << "\n" << results.size() << " patients, " << with_findings << " with findings; " << findings
        << " findings (high " << by_severity[0] << ", moderate " << by_severity[1] << ", low " << by_severity[2]
        << "); " << notes << " data-quality notes\n";
}

}  // namespace calcalert::cli
