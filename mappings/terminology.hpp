// Terminology as data: code system + code -> analyte or condition concept_id (and, for residual codes,
// the words that decide what they count as), and unit conversions to each analyte's canonical unit.
// Loaded from the TSV files in mappings/data/ (a clinician can review them).
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "rules/facts.hpp"

namespace calcalert::mappings {

class TerminologyError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct LabCode {
    rules::Analyte analyte;
    std::string property;  // mass, moles, activity, rate
    std::string display;
};

struct ConditionCode {
    std::string concept_id;
    std::string display;
    std::string caveat;
};

struct ProcedureCode {
    std::string concept_id;  // one of rules::procedure_concepts()
    std::string display;
};

// Plausibility limits of an analyte in its canonical unit (clinical-rules.md §5.1.4).
struct PlausibleRange {
    double low;
    double high;
};

// One reading of a residual code that counts only by its words (condition-words.tsv; ICD-10-CM E83.59).
struct WordReading {
    ConditionCode code;               // the concept it reads as, the code's display and the caveat to quote
    std::vector<std::string> words;   // normalized phrases; empty: the reading of a Condition without words
    std::vector<std::string> unless;  // normalized phrases that, in the same text, stop this reading
    std::string yields_to;            // a canonical system whose coding on the same Condition decides first
};

struct UnitConversion {
    double factor;          // canonical = value × factor
    std::string property;   // mass, moles, ...
    std::string note_on_use;  // a data-quality note to record whenever this conversion is used
};

class Terminology {
public:
    static Terminology load(const std::filesystem::path& data_dir);

    // Canonical system URI for an alias, or nullopt for a system the data does not know.
    std::optional<std::string_view> canonical_system(std::string_view system) const;
    // "LOINC", "SNOMED CT", "ICD-10-CM", "ICD-9-CM" or the URI itself.
    std::string system_label(std::string_view system) const;

    const LabCode* lab(std::string_view system, std::string_view code) const;
    const ConditionCode* condition(std::string_view system, std::string_view code) const;
    // The readings of a code that counts only by its words, or nullptr for any other code.
    const std::vector<WordReading>* word_readings(std::string_view system, std::string_view code) const;
    // Lower case, every run of characters other than letters and digits as one space, with a space at
    // each end: " calciphylaxis of the legs ". Words and phrases are matched on this form.
    static std::string normalize_words(std::string_view text);
    // Looks up `unit` for the analyte (exact, then case-insensitive).
    const UnitConversion* unit(rules::Analyte analyte, std::string_view unit) const;

    // Every lab code the rules read, as FHIR token values "system|code", sorted.
    std::vector<std::string> lab_tokens() const;

    // Procedure codes (procedure-codes.tsv) and their token values "system|code", sorted.
    const ProcedureCode* procedure(std::string_view system, std::string_view code) const;
    std::vector<std::string> procedure_tokens() const;

    // The plausibility limits of the analyte (plausibility.tsv), or nullptr when it has none.
    const PlausibleRange* plausible_range(rules::Analyte analyte) const;

    // concept -> title, for the rule catalog.
    const std::map<std::string, std::string>& concepts() const { return concept_titles_; }

private:
    // Maps looked up by a string_view, without a std::string made for each lookup.
    struct StringHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    template <class V>
    using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

    std::string key(std::string_view canonical, std::string_view code) const;
    // key() into a buffer of this thread's, reused: valid until the next lookup on the thread.
    std::string_view lookup_key(std::string_view canonical, std::string_view code) const;
    StringMap<std::pair<std::string, bool>> systems_;  // alias -> canonical, is_icd
    StringMap<LabCode> labs_;
    StringMap<ConditionCode> conditions_;
    std::vector<std::pair<std::string, ConditionCode>> condition_prefixes_;  // key prefix -> code
    StringMap<UnitConversion> units_;                                        // analyte|unit
    StringMap<ProcedureCode> procedures_;
    std::optional<PlausibleRange> plausible_[rules::analyte_count];
    StringMap<std::vector<WordReading>> word_readings_;  // system|code
    std::map<std::string, std::string> concept_titles_;
};

}  // namespace calcalert::mappings
