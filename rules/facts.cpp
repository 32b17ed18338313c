#include "rules/facts.hpp"

#include <array>

namespace calcalert::rules {
namespace {
struct AnalyteInfo {
    std::string_view name, label, unit, display;
};
constexpr std::array<AnalyteInfo, analyte_count> analytes{{
    {"calcium-total", "Total calcium", "mg/dL", "mg/dL"},
    {"calcium-ionized", "Ionized calcium", "mmol/L", "mmol/L"},
    {"calcium-corrected", "Albumin-corrected calcium", "mg/dL", "mg/dL"},
    {"phosphate", "Phosphate", "mg/dL", "mg/dL"},
    {"pth-intact", "Intact PTH", "pg/mL", "pg/mL"},
    {"alkaline-phosphatase", "Alkaline phosphatase", "U/L", "U/L"},
    {"albumin", "Albumin", "g/dL", "g/dL"},
    {"egfr", "eGFR", "mL/min/{1.73_m2}", "mL/min/1.73 m²"},
}};
}  // namespace

const std::vector<std::string_view>& procedure_concepts() {
    static const std::vector<std::string_view> concepts{"dialysis"};
    return concepts;
}

std::string_view analyte_name(Analyte a) { return analytes[static_cast<std::size_t>(a)].name; }
std::string_view analyte_label(Analyte a) { return analytes[static_cast<std::size_t>(a)].label; }
std::string_view canonical_unit(Analyte a) { return analytes[static_cast<std::size_t>(a)].unit; }
std::string_view display_unit(Analyte a) { return analytes[static_cast<std::size_t>(a)].display; }

std::optional<Analyte> analyte_from_name(std::string_view name) {
    for (std::size_t i = 0; i < analytes.size(); ++i)
        if (analytes[i].name == name) return static_cast<Analyte>(i);
    return std::nullopt;
}

std::optional<Comparator> comparator_from_string(std::string_view s) {
    if (s.empty()) return Comparator::none;
    if (s == "<") return Comparator::lt;
    if (s == "<=") return Comparator::le;
    if (s == ">=") return Comparator::ge;
    if (s == ">") return Comparator::gt;
    return std::nullopt;
}

std::string_view to_string(Comparator c) {
    switch (c) {
        case Comparator::none: return "";
        case Comparator::lt: return "<";
        case Comparator::le: return "<=";
        case Comparator::ge: return ">=";
        case Comparator::gt: return ">";
    }
    return "";
}

bool decides_above(double v, Comparator c, double t) {
    switch (c) {
        case Comparator::none: return v > t;
        case Comparator::gt: return v >= t;  // actual > v >= t
        case Comparator::ge: return v > t;   // actual >= v > t
        case Comparator::lt:
        case Comparator::le: return false;   // an upper bound never proves "above"
    }
    return false;
}

bool decides_below(double v, Comparator c, double t) {
    switch (c) {
        case Comparator::none: return v < t;
        case Comparator::lt: return v <= t;
        case Comparator::le: return v < t;
        case Comparator::gt:
        case Comparator::ge: return false;
    }
    return false;
}

}  // namespace calcalert::rules
