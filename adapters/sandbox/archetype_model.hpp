// The compiled form of an archetype file (adapters/sandbox/data/archetypes.json), shared by its loader
// (archetype_library.cpp) and the generator (cohort_generator.cpp). Internal to the sandbox layer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "adapters/sandbox/cohort_generator.hpp"

namespace calcalert::sandbox {

enum class Renal { normal, ckd3, ckd4, esrd };

struct Coding {
    std::string system;  // canonical URI
    std::string code;    // as written in the data
    std::string display;
};

struct CondCode {
    Coding coding;
    std::string text;  // Condition.code.text when it is not the display (codes read by their words)
};

// The codes one condition item may draw: a concept's, a code set's or an other code's.
struct CondPool {
    std::vector<CondCode> codes;
    std::optional<CondCode> icd10_partner;  // the ICD-10-CM code written beside a SNOMED CT one
};

struct Range {
    std::optional<double> lo, hi;
};
struct Band {
    std::string name;
    std::map<std::string, Range> by_unit;
};

struct UnitSpec {
    std::string unit;
    int decimals = 1;
    unsigned weight = 1;
    std::string values_as;  // the band unit its values are drawn in; empty: its own
    std::vector<Coding> codes;
    bool ref = true;
    const std::string& band_unit() const { return values_as.empty() ? unit : values_as; }
};

struct AnalyteSpec {
    std::string name, suffix, text;
    std::vector<UnitSpec> units;
    const Band* ref = nullptr;
    unsigned ref_percent = 35;
};

struct OtherCode {
    std::vector<Coding> codes;
    std::string text;
};

struct TimeSpec {
    std::string from;  // a time of the patient; empty: now
    std::int64_t lo_minutes = 0, hi_minutes = 0;
    int sign = -1;  // -1 before, +1 after
};
struct At {
    std::string name;  // a named time, or
    TimeSpec spec;     // an offset (when name is empty)
};

struct Component {
    const OtherCode* code = nullptr;
    Range value;
    std::string unit;
    int decimals = 0;
};

struct Item {
    enum class Kind { condition, lab, observation, procedure, one_of, group, time, renal, age } kind = Kind::group;
    std::string where;  // for errors while generating
    unsigned chance = 100;
    std::vector<Renal> when_renal;
    std::optional<bool> when_child;
    // condition
    std::vector<CondPool> pools;
    bool system_given = false;
    std::optional<bool> strip_dot;
    std::vector<std::string> clinical, verification;  // empty: drawn; "" : absent
    unsigned abated_chance = 0;
    // lab
    const AnalyteSpec* analyte = nullptr;
    std::vector<std::size_t> units;  // indices into analyte->units
    std::vector<const Band*> bands;
    std::optional<Range> value;
    std::string value_unit;
    std::optional<Coding> code;
    std::vector<std::string> status;  // empty: drawn
    enum class Ref { usual_sometimes, none, usual, custom } ref = Ref::usual_sometimes;
    const Band* ref_band = nullptr;
    std::string comparator;
    At at;
    // observation
    const OtherCode* other = nullptr;
    std::string suffix, category = "laboratory", unit;
    int decimals = 0;
    std::vector<Component> components;
    // procedure (also status, at)
    std::vector<Coding> procedure_codes;
    // one_of, group
    std::vector<std::pair<unsigned, std::vector<Item>>> alternatives;
    std::vector<Item> items;
    // time
    std::string time_name;
    TimeSpec time_spec;
    // renal, age
    Renal renal = Renal::normal;
    int age_lo = 0, age_hi = 0;
};

struct Defaults {
    int age_lo = 35, age_hi = 88;
    std::vector<std::pair<std::string, unsigned>> observation_status, clinical_status, verification_status;
    unsigned encounter_percent = 15, encounter_without_clinical_percent = 30;
    int onset_years = 8, child_onset_years = 3;
    unsigned snomed_with_icd10_percent = 25, icd10_without_dot_percent = 30;
    unsigned lab_period_percent = 6, lab_issued_percent = 60;
};

struct ArchetypeLibrary::Impl {
    std::filesystem::path file;
    std::vector<Archetype> list;
    std::vector<std::vector<Item>> items;  // per archetype
    std::vector<Item> background;
    unsigned total = 0;
    Defaults defaults;
    std::vector<std::pair<std::string, std::string>> given;  // name, gender
    std::vector<std::string> family;
    std::map<std::string, std::vector<std::string>> system_aliases;  // canonical -> URIs written for it
    std::map<std::string, AnalyteSpec> analytes;
    std::map<std::string, Band> bands;
    std::map<std::string, OtherCode> others;
};

}  // namespace calcalert::sandbox
