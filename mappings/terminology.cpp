#include "mappings/terminology.hpp"

#include "mappings/medications.hpp"  // normalized_words: the same word normalization as the drug text

#include "mappings/tsv.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace calcalert::mappings {
namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

// An ICD code as the data keys it: without dots and spaces, in upper case ("n18.6" -> "N186").
void append_icd_normal(std::string& out, std::string_view code) {
    for (char c : code)
        if (c != '.' && c != ' ') out += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
}

}  // namespace

std::string Terminology::key(std::string_view canonical, std::string_view code) const {
    return std::string(lookup_key(canonical, code));
}

std::string_view Terminology::lookup_key(std::string_view canonical, std::string_view code) const {
    static thread_local std::string k;
    auto it = systems_.find(canonical);
    const bool icd = it != systems_.end() && it->second.second;
    k.assign(canonical);
    k += '|';
    if (icd)
        append_icd_normal(k, code);
    else
        k += code;
    return k;
}

std::optional<std::string_view> Terminology::canonical_system(std::string_view system) const {
    auto it = systems_.find(system);
    if (it == systems_.end()) return std::nullopt;
    return std::string_view(it->second.first);
}

std::string Terminology::system_label(std::string_view system) const {
    auto c = canonical_system(system);
    const std::string_view s = c ? *c : system;
    if (s == "http://loinc.org") return "LOINC";
    if (s == "http://snomed.info/sct") return "SNOMED CT";
    if (s == "http://hl7.org/fhir/sid/icd-10-cm") return "ICD-10-CM";
    if (s == "http://hl7.org/fhir/sid/icd-9-cm") return "ICD-9-CM";
    return std::string(s);
}

Terminology Terminology::load(const std::filesystem::path& dir) {
    Terminology t;
    for (const auto& r : read_tsv(dir / "systems.tsv", 3)) t.systems_[r.cells[0]] = {r.cells[1], r.cells[2] == "icd"};

    for (const auto& r : read_tsv(dir / "concepts.tsv", 2)) t.concept_titles_[r.cells[0]] = r.cells[1];

    const auto labs_file = dir / "lab-codes.tsv";
    for (const auto& r : read_tsv(labs_file, 5)) {
        auto sys = t.canonical_system(r.cells[0]);
        auto analyte = rules::analyte_from_name(r.cells[2]);
        if (!sys || !analyte)
            throw TerminologyError(r.where + ": unknown system or analyte");
        t.labs_[t.key(*sys, r.cells[1])] = LabCode{*analyte, r.cells[3], r.cells[4]};
    }

    const auto cond_file = dir / "condition-codes.tsv";
    for (const auto& r : read_tsv(cond_file, 6)) {
        auto sys = t.canonical_system(r.cells[1]);
        const std::string& where = r.where;
        if (!sys) throw TerminologyError(where + ": unknown system '" + r.cells[1] + "'");
        if (!t.concept_titles_.count(r.cells[0]))
            throw TerminologyError(where + ": concept_id '" + r.cells[0] + "' is not in concepts.tsv");
        ConditionCode c{r.cells[0], r.cells[4], r.cells.size() > 6 ? r.cells[6] : std::string()};
        if (r.cells[3] == "exact")
            t.conditions_[t.key(*sys, r.cells[2])] = std::move(c);
        else if (r.cells[3] == "prefix")
            t.condition_prefixes_.emplace_back(t.key(*sys, r.cells[2]), std::move(c));
        else
            throw TerminologyError(where + ": match must be exact or prefix");
    }

    for (const auto& r : read_tsv(dir / "condition-words.tsv", 9)) {
        const std::string& where = r.where;
        auto sys = t.canonical_system(r.cells[0]);
        if (!sys) throw TerminologyError(where + ": unknown system '" + r.cells[0] + "'");
        if (!t.concept_titles_.count(r.cells[3]))
            throw TerminologyError(where + ": concept_id '" + r.cells[3] + "' is not in concepts.tsv");
        if (r.cells[7] == "UNVERIFIED" || r.cells[7] == "WRONG")
            throw TerminologyError(where + ": a " + r.cells[7] + " row may not be used");
        WordReading w;
        w.code = ConditionCode{r.cells[3], r.cells[2], r.cells[8]};
        auto phrases = [&](const std::string& cell) {
            std::vector<std::string> out;
            std::size_t start = 0;
            while (start <= cell.size()) {
                auto bar = cell.find('|', start);
                if (bar == std::string::npos) bar = cell.size();
                const std::string p = normalize_words(cell.substr(start, bar - start));
                if (p != " ") out.push_back(p);
                start = bar + 1;
            }
            return out;
        };
        if (r.cells[4] != "(none)") {
            w.words = phrases(r.cells[4]);
            if (w.words.empty()) throw TerminologyError(where + ": words must name a phrase, or be (none)");
        }
        w.unless = phrases(r.cells[5]);
        if (!r.cells[6].empty()) {
            auto y = t.canonical_system(r.cells[6]);
            if (!y) throw TerminologyError(where + ": unknown yields_to system '" + r.cells[6] + "'");
            w.yields_to = std::string(*y);
        }
        const std::string k = t.key(*sys, r.cells[1]);
        if (t.conditions_.count(k))
            throw TerminologyError(where + ": " + r.cells[1] + " is also in condition-codes.tsv (a code is read one way)");
        t.word_readings_[k].push_back(std::move(w));
    }

    const auto units_file = dir / "units.tsv";
    for (const auto& r : read_tsv(units_file, 4)) {
        auto analyte = rules::analyte_from_name(r.cells[0]);
        const std::string& where = r.where;
        if (!analyte) throw TerminologyError(where + ": unknown analyte '" + r.cells[0] + "'");
        char* end = nullptr;
        const double factor = std::strtod(r.cells[2].c_str(), &end);
        if (end == r.cells[2].c_str() || *end != '\0' || !(factor > 0))
            throw TerminologyError(where + ": factor must be a positive number");
        t.units_[r.cells[0] + "|" + r.cells[1]] = UnitConversion{factor, r.cells[3], r.cells.size() > 4 ? r.cells[4] : ""};
    }

    for (const auto& r : read_tsv(dir / "procedure-codes.tsv", 5)) {
        const auto& concepts = rules::procedure_concepts();
        auto sys = t.canonical_system(r.cells[1]);
        if (std::find(concepts.begin(), concepts.end(), r.cells[0]) == concepts.end())
            throw TerminologyError(r.where + ": unknown procedure concept '" + r.cells[0] + "' (known: dialysis)");
        if (!sys) throw TerminologyError(r.where + ": unknown system '" + r.cells[1] + "'");
        if (r.cells[3] != "exact") throw TerminologyError(r.where + ": match must be exact");
        if (r.cells[2].empty()) throw TerminologyError(r.where + ": empty code");
        t.procedures_[t.key(*sys, r.cells[2])] = ProcedureCode{r.cells[0], r.cells[4]};
    }

    for (const auto& r : read_tsv(dir / "plausibility.tsv", 4)) {
        auto analyte = rules::analyte_from_name(r.cells[0]);
        if (!analyte) throw TerminologyError(r.where + ": unknown analyte '" + r.cells[0] + "'");
        auto number = [&](const std::string& cell, const char* what) {
            char* end = nullptr;
            const double v = std::strtod(cell.c_str(), &end);
            if (cell.empty() || *end != '\0' || !std::isfinite(v))
                throw TerminologyError(r.where + ": " + what + " must be a finite number");
            return v;
        };
        const double low = number(r.cells[1], "low");
        const double high = number(r.cells[2], "high");
        if (low > high) throw TerminologyError(r.where + ": low is above high");
        if (r.cells[3] != rules::canonical_unit(*analyte))
            throw TerminologyError(r.where + ": the limits must be in " + std::string(rules::canonical_unit(*analyte)));
        auto& slot = t.plausible_[static_cast<std::size_t>(*analyte)];
        if (slot) throw TerminologyError(r.where + ": a second row for " + r.cells[0]);
        slot = PlausibleRange{low, high};
    }
    return t;
}

const ProcedureCode* Terminology::procedure(std::string_view system, std::string_view code) const {
    auto sys = canonical_system(system);
    if (!sys || code.empty()) return nullptr;
    auto it = procedures_.find(lookup_key(*sys, code));
    return it == procedures_.end() ? nullptr : &it->second;
}

std::vector<std::string> Terminology::procedure_tokens() const {
    std::vector<std::string> out;
    for (const auto& [k, v] : procedures_) out.push_back(k);
    std::sort(out.begin(), out.end());
    return out;
}

const PlausibleRange* Terminology::plausible_range(rules::Analyte a) const {
    const auto& slot = plausible_[static_cast<std::size_t>(a)];
    return slot ? &*slot : nullptr;
}

const LabCode* Terminology::lab(std::string_view system, std::string_view code) const {
    auto sys = canonical_system(system);
    if (!sys) return nullptr;
    auto it = labs_.find(lookup_key(*sys, code));
    return it == labs_.end() ? nullptr : &it->second;
}

std::vector<std::string> Terminology::lab_tokens() const {
    std::vector<std::string> out;
    out.reserve(labs_.size());
    for (const auto& [k, v] : labs_) out.push_back(k);
    std::sort(out.begin(), out.end());
    return out;
}

const ConditionCode* Terminology::condition(std::string_view system, std::string_view code) const {
    auto sys = canonical_system(system);
    if (!sys || code.empty()) return nullptr;
    const std::string_view k = lookup_key(*sys, code);
    if (auto it = conditions_.find(k); it != conditions_.end()) return &it->second;
    for (const auto& [prefix, c] : condition_prefixes_)
        if (k.compare(0, prefix.size(), prefix) == 0) return &c;
    return nullptr;
}

const std::vector<WordReading>* Terminology::word_readings(std::string_view system, std::string_view code) const {
    auto sys = canonical_system(system);
    if (!sys || code.empty()) return nullptr;
    auto it = word_readings_.find(lookup_key(*sys, code));
    return it == word_readings_.end() ? nullptr : &it->second;
}

std::string Terminology::normalize_words(std::string_view text) { return normalized_words(text); }

const UnitConversion* Terminology::unit(rules::Analyte analyte, std::string_view u) const {
    static thread_local std::string exact;
    const std::string_view name = rules::analyte_name(analyte);
    exact.assign(name);
    exact += '|';
    exact += u;
    if (auto it = units_.find(std::string_view(exact)); it != units_.end()) return &it->second;
    const std::string want = std::string(name) + "|" + lower(u);
    for (const auto& [k, conv] : units_)
        if (lower(k) == want) return &conv;
    return nullptr;
}

}  // namespace calcalert::mappings
