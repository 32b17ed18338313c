#include "mappings/condition_reading.hpp"

#include <algorithm>

namespace calcalert::mappings {
namespace {

bool contains_phrase(const std::string& normalized_text, const std::vector<std::string>& phrases) {
    return std::any_of(phrases.begin(), phrases.end(),
                       [&](const std::string& p) { return normalized_text.find(p) != std::string::npos; });
}

}  // namespace

ConditionReading read_condition_code(const Terminology& term, const fhir::CodeableConcept& cc) {
    ConditionReading out;
    auto has_concept = [&](const std::string& concept_id) {
        return std::any_of(out.matches.begin(), out.matches.end(),
                           [&](const ConditionMatch& m) { return m.code->concept_id == concept_id; });
    };
    for (const auto& c : cc.coding) {
        const ConditionCode* code = term.condition(c.system, c.code);
        if (code && !has_concept(code->concept_id)) out.matches.push_back({code, &c, {}});
    }
    const std::vector<ConditionMatch> by_code = out.matches;
    for (const auto& c : cc.coding) {
        const std::vector<WordReading>* readings = term.word_readings(c.system, c.code);
        if (!readings || readings->empty()) continue;
        const std::string label = term.system_label(c.system) + " " + std::string(c.code);
        // The words: Condition.code.text and this coding's display.
        std::vector<std::string> texts;
        if (!cc.text.empty()) texts.emplace_back(cc.text);
        if (!c.display.empty() && (texts.empty() || texts[0] != c.display)) texts.emplace_back(c.display);
        std::vector<ConditionMatch> reading;
        for (const WordReading& w : *readings) {
            if (texts.empty()) {
                if (w.words.empty()) reading.push_back({&w.code, &c, {}});
                continue;
            }
            if (w.words.empty()) continue;
            for (const auto& t : texts) {
                const std::string n = Terminology::normalize_words(t);
                if (contains_phrase(n, w.words) && !contains_phrase(n, w.unless)) {
                    reading.push_back({&w.code, &c, t});
                    break;
                }
            }
        }
        // A coding of the system the code yields to (SNOMED CT) decides instead of it.
        const std::string& yields_to = readings->front().yields_to;
        const fhir::Coding* decider = nullptr;
        if (!yields_to.empty())
            for (const auto& other : cc.coding)
                if (const auto sys = term.canonical_system(other.system); sys && *sys == yields_to && !other.code.empty()) {
                    decider = &other;
                    break;
                }
        if (decider) {
            const bool adds = std::any_of(reading.begin(), reading.end(), [&](const ConditionMatch& m) {
                return std::none_of(by_code.begin(), by_code.end(),
                                    [&](const ConditionMatch& b) { return b.code->concept_id == m.code->concept_id; });
            });
            if (adds)
                out.notes.push_back(label + " not used: the " + term.system_label(decider->system) + " coding " +
                                    std::string(decider->code) + " of the same Condition decides what it is");
            continue;
        }
        if (reading.empty()) {
            std::string said, names;
            for (const auto& t : texts) said += (said.empty() ? "'" : "', '") + t;
            std::vector<std::string> concepts;
            for (const WordReading& w : *readings)
                if (!w.words.empty() &&
                    std::find(concepts.begin(), concepts.end(), w.code.concept_id) == concepts.end())
                    concepts.push_back(w.code.concept_id);
            for (std::size_t i = 0; i < concepts.size(); ++i) {
                auto it = term.concepts().find(concepts[i]);
                const std::string title = it == term.concepts().end() ? concepts[i] : it->second;
                names += (i == 0 ? "" : " nor ") + title;
            }
            out.notes.push_back(label + " seen and not used: its words (" + said + "') say neither " + names +
                                ", and the code alone is a residual category");
            continue;
        }
        for (auto& m : reading)
            if (!has_concept(m.code->concept_id)) out.matches.push_back(std::move(m));
    }
    return out;
}

bool condition_counts(const Terminology& terminology, const fhir::CodeableConcept& code) {
    const ConditionReading reading = read_condition_code(terminology, code);
    return !reading.matches.empty() || !reading.notes.empty();
}

}  // namespace calcalert::mappings
