// Which concepts a Condition's code counts as (condition-codes.tsv), including the residual codes that
// count only by the Condition's words (condition-words.tsv, clinical-rules.md §5.3.2: ICD-10-CM E83.59 is
// calciphylaxis only when its words say calciphylaxis, tumoral calcinosis only when they say so, neither
// otherwise; a bare E83.59 is calciphylaxis; a SNOMED CT coding on the same Condition decides first).
#pragma once

#include <string>
#include <vector>

#include "fhir/views.hpp"
#include "mappings/terminology.hpp"

namespace calcalert::mappings {

struct ConditionMatch {
    const ConditionCode* code = nullptr;  // concept, display, caveat
    const fhir::Coding* coding = nullptr;
    std::string words;  // for a code read by its words: the text that decided (shown instead of the display)
};

struct ConditionReading {
    std::vector<ConditionMatch> matches;  // one per concept, in coding order
    std::vector<std::string> notes;       // codes seen and not used, in words (element Condition.code)
};

ConditionReading read_condition_code(const Terminology& terminology, const fhir::CodeableConcept& code);

// Whether the facts take anything from a Condition with this code: a concept, or a note on a code
// read and not used. A Condition that gives neither cannot change a finding (the change feed's
// filter).
bool condition_counts(const Terminology& terminology, const fhir::CodeableConcept& code);

}  // namespace calcalert::mappings
