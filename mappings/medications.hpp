// Medication terminology for the order rules, as data: RxNorm codes (and text-fallback words) -> order
// classes with how each code counts (medications.tsv), administration routes (routes.tsv) and injectable
// dose forms (dose-forms.tsv), from terminology-rxnorm.md. Loaded once and checked strictly: a wrong column
// count, an unknown class, action, term type or verification, an UNVERIFIED row or a duplicate is an error
// naming the file and line.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "mappings/terminology.hpp"

namespace calcalert::mappings {

inline constexpr std::string_view kRxNormSystem = "http://www.nlm.nih.gov/research/umls/rxnorm";
inline constexpr std::string_view kSnomedSystem = "http://snomed.info/sct";

// How a matching code counts for its class (medications.tsv, column action).
enum class MatchAction {
    fire,                 // the code alone counts
    route_check,          // counts unless every route given is a recognized route outside the class
    route_required,       // counts only with a route of the class
    route_or_injectable,  // counts with a route of the class, or with no recognized route and an injectable form
    exclude,              // never counts; no other code of the order counts for this class either
};
std::string_view to_string(MatchAction a);

// One row of medications.tsv.
struct MedicationCode {
    std::string order_class;   // rules::order_classes() id
    bool text = false;         // a text-fallback word (system "text") rather than an RxNorm code
    std::string code;          // RxCUI, or the word / phrase ('*' suffix = word prefix)
    std::string tty;           // SCD, SBD, GPCK, BPCK, IN, PIN, BN; "-" for text rows
    std::string name;          // the name seen in the source
    std::string ingredient;
    std::string form;          // oral, injectable, local, or "-"
    MatchAction action = MatchAction::exclude;
    std::string source;        // where the doc says it was seen
    std::string verification;  // VERIFIED, VERIFIED-2, keyword
    std::string note;
    bool product() const { return tty == "SCD" || tty == "SBD" || tty == "GPCK" || tty == "BPCK"; }
};

// One row of routes.tsv.
struct RouteCode {
    bool text = false;
    std::string code;  // SNOMED CT code, or the word / phrase
    std::string display;
    std::vector<std::string> counts_for;  // order classes for which this is a route of the class; empty = local
    std::string source;
    bool counts_for_class(std::string_view order_class) const;
};

class Medications {
public:
    // Reads medications.tsv, routes.tsv and dose-forms.tsv of `data_dir`. Throws TerminologyError.
    static Medications load(const std::filesystem::path& data_dir);

    // Every row (one per class) for an RxNorm code.
    std::vector<const MedicationCode*> rxnorm(std::string_view code) const;
    // The text-fallback rows whose word or phrase occurs in `text` (whole words, case-insensitive).
    std::vector<const MedicationCode*> text_matches(std::string_view text) const;

    // A route by SNOMED CT code, or nullptr.
    const RouteCode* route(std::string_view system, std::string_view code) const;
    // The route keyword rows found in `text`.
    std::vector<const RouteCode*> route_words(std::string_view text) const;

    // An injectable dose form: a SNOMED CT code of dose-forms.tsv, or one of its words in `text`.
    const std::string* injectable_form(std::string_view system, std::string_view code) const;  // display
    std::string injectable_form_word(std::string_view text) const;  // the word found, or ""

    std::size_t size() const { return codes_.size(); }

private:
    std::multimap<std::string, MedicationCode> codes_;  // RxCUI -> rows
    std::vector<MedicationCode> words_;
    std::map<std::string, RouteCode> routes_;  // SNOMED code -> route
    std::vector<RouteCode> route_words_;
    std::map<std::string, std::string> forms_;  // SNOMED code -> display
    std::vector<std::string> form_words_;
};

// Lower case, every run of characters other than letters and digits made one space, padded with a space
// at both ends: "IV-Push/PB" -> " iv push pb ". Words and phrases match on this form.
std::string normalized_words(std::string_view text);
// Whether `phrase` (as written in the data: words, '*' suffix = prefix of a word) occurs in `text`.
bool contains_words(std::string_view text, std::string_view phrase);

}  // namespace calcalert::mappings
