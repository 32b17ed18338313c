#include "mappings/fact_builder.hpp"

#include <cmath>

#include "fhir/views.hpp"
#include "mappings/condition_reading.hpp"
#include "rules/engine.hpp"

namespace calcalert::mappings {
namespace {

using fhir::ElementError;

std::string source_of(const fhir::ResourceView& v, const fhir::Location& where) {
    return v.id().empty() ? where.describe() : v.versioned_reference();
}

struct Mapped {
    const LabCode* lab = nullptr;
    std::string code;
};

Mapped map_lab(const Terminology& term, const fhir::CodeableConcept& cc) {
    for (const auto& c : cc.coding)
        if (const LabCode* l = term.lab(c.system, c.code)) return {l, std::string(c.code)};
    return {};
}

// The conversion for a quantity: UCUM code first, then the human unit.
const UnitConversion* conversion(const Terminology& term, rules::Analyte a, const fhir::Quantity& q,
                                 std::string& unit_used) {
    if (!q.code.empty())
        if (const UnitConversion* c = term.unit(a, q.code)) {
            unit_used = std::string(q.code);
            return c;
        }
    if (!q.unit.empty())
        if (const UnitConversion* c = term.unit(a, q.unit)) {
            unit_used = std::string(q.unit);
            return c;
        }
    return nullptr;
}

}  // namespace

rules::PatientFacts& FactBuilder::patient(const std::string& ref) {
    auto [it, inserted] = patients_.try_emplace(ref);
    if (inserted) it->second.patient = ref;
    return it->second;
}

rules::PatientFacts* FactBuilder::subject(std::string_view reference, const std::string& type,
                                          const fhir::Location& where, const fhir::BundleContext* bundle) {
    if (reference.empty()) {
        problems_.push_back({fhir::Severity::warning, where, type + ".subject",
                             "no subject reference: the resource belongs to no patient and is not evaluated"});
        return nullptr;
    }
    std::string_view resolved = bundle ? bundle->resolve(reference) : reference;
    auto ref = fhir::normalize_patient_reference(resolved);
    if (!ref) {
        problems_.push_back({fhir::Severity::warning, where, type + ".subject.reference",
                             "subject '" + std::string(reference) + "' is not a Patient: not evaluated"});
        return nullptr;
    }
    if (ref->rfind("urn:", 0) == 0) {
        problems_.push_back({fhir::Severity::warning, where, type + ".subject.reference",
                             "subject '" + std::string(reference) +
                                 "' is not resolved by any Bundle entry's fullUrl: not evaluated"});
        return nullptr;
    }
    return &patient(*ref);
}

void FactBuilder::on_resource(const rapidjson::Value& json, std::string_view type, const fhir::Location& where,
                              const fhir::BundleContext* bundle) {
    if (type == "Observation") {
        observation(json, where, bundle);
    } else if (type == "Condition") {
        condition(json, where, bundle);
    } else if (type == "Patient") {
        fhir::ResourceView v(json, "Patient");
        if (!v.id().empty()) patient("Patient/" + std::string(v.id()));
    } else if (type == "OperationOutcome") {
        for (const auto& issue : fhir::operation_outcome_issues(json))
            problems_.push_back({fhir::Severity::warning, where, "OperationOutcome.issue", "the source reports: " + issue});
    }
    // Other resource types carry nothing the rules read.
}

void FactBuilder::observation(const rapidjson::Value& json, const fhir::Location& where,
                              const fhir::BundleContext* bundle) {
    fhir::ObservationView obs(json);
    const Mapped main = map_lab(term_, obs.code());
    auto components = obs.components();
    std::vector<std::pair<Mapped, const fhir::ObservationView::Component*>> mapped_components;
    for (const auto& c : components) {
        Mapped m = map_lab(term_, c.code);
        if (m.lab) mapped_components.emplace_back(m, &c);
    }
    if (!main.lab && mapped_components.empty()) return;  // not a lab the rules read

    rules::PatientFacts* p = subject(obs.subject_reference(), "Observation", where, bundle);
    if (!p) return;
    const std::string source = source_of(obs, where);
    auto note = [&](const std::string& path, const std::string& msg) { p->notes.push_back({source, path, msg}); };

    const fhir::EffectiveTime eff = obs.effective();
    auto add = [&](const Mapped& m, const fhir::Json* vq, bool absent, const std::optional<fhir::Quantity>& high,
                   const std::string& path) {
        const std::string label(rules::analyte_label(m.lab->analyte));
        if (absent) {
            note(path + ".dataAbsentReason", label + " (LOINC " + m.code + ") has a dataAbsentReason: no value");
            return;
        }
        if (!vq) {
            note(path + ".value[x]", label + " (LOINC " + m.code + ") has no valueQuantity");
            return;
        }
        const fhir::Quantity q = fhir::quantity(*vq, path + ".valueQuantity");
        if (!q.value) {
            note(path + ".valueQuantity.value", label + " (LOINC " + m.code + ") has no numeric value");
            return;
        }
        if (!std::isfinite(*q.value)) {
            note(path + ".valueQuantity.value", label + " value is not a finite number");
            return;
        }
        if (q.code.empty() && q.unit.empty()) {
            note(path + ".valueQuantity.unit", label + " " + rules::format_number(*q.value) + " has no unit");
            return;
        }
        std::string unit_used;
        const UnitConversion* conv = conversion(term_, m.lab->analyte, q, unit_used);
        if (!conv) {
            note(path + ".valueQuantity.code",
                 label + " unit '" + std::string(q.code.empty() ? q.unit : q.code) + "' cannot be converted to " +
                     std::string(rules::canonical_unit(m.lab->analyte)));
            return;
        }
        if (!eff.time) {
            note("Observation.effective[x]", label + " has no effectiveDateTime, effectivePeriod.start, "
                                                     "effectiveInstant or issued");
            return;
        }
        if (conv->property != m.lab->property)
            note(path + ".valueQuantity.code", "unit '" + unit_used + "' (" + conv->property + ") under LOINC " +
                                                   m.code + ", a " + m.lab->property + " code; converted by its unit");
        if (!conv->note_on_use.empty()) note(path + ".valueQuantity.code", conv->note_on_use);
        rules::LabResult r;
        r.analyte = m.lab->analyte;
        r.value = *q.value * conv->factor;
        r.comparator = *rules::comparator_from_string(q.comparator);
        r.effective = *eff.time;
        r.status = std::string(obs.status());
        r.source = source;
        r.code = m.code;
        if (conv->factor != 1.0) r.reported = rules::format_number(*q.value, 3) + " " + unit_used;
        if (high) {
            std::string high_unit;
            if (const UnitConversion* hc = conversion(term_, m.lab->analyte, *high, high_unit))
                r.reference_high = *high->value * hc->factor;
            else if (high->code.empty() && high->unit.empty())
                r.reference_high = *high->value * conv->factor;  // a bare number: read in the value's unit
            else
                note(path + ".referenceRange[0].high", "reference-range unit '" +
                                                           std::string(high->code.empty() ? high->unit : high->code) +
                                                           "' cannot be converted: default threshold used");
        }
        p->labs.push_back(std::move(r));
    };
    if (main.lab)
        add(main, obs.value_quantity(), obs.has_data_absent_reason(), obs.reference_range_high(), "Observation");
    for (const auto& [m, c] : mapped_components)
        add(m, c->value_quantity, c->data_absent, c->reference_range_high,
            "Observation.component[" + std::to_string(c->index) + "]");
}

void FactBuilder::condition(const rapidjson::Value& json, const fhir::Location& where,
                            const fhir::BundleContext* bundle) {
    fhir::ConditionView cond(json);
    const fhir::CodeableConcept code = cond.code();
    const ConditionReading reading = read_condition_code(term_, code);
    if (reading.matches.empty() && reading.notes.empty()) return;
    rules::PatientFacts* p = subject(cond.subject_reference(), "Condition", where, bundle);
    if (!p) return;
    const std::string source = source_of(cond, where);
    for (const auto& n : reading.notes) p->notes.push_back({source, "Condition.code", n});
    const std::string clinical(cond.clinical_status());
    const std::string verification(cond.verification_status());
    const auto onset = cond.onset();
    const bool abated = cond.has_abatement();
    const auto abatement = cond.abatement();
    for (const auto& [cc, coding, words] : reading.matches) {
        rules::ConditionFact f;
        f.concept_id = cc->concept_id;
        f.system = std::string(coding->system);
        f.code = std::string(coding->code);
        f.display = !words.empty()               ? words
                    : !coding->display.empty() ? std::string(coding->display)
                    : !code.text.empty()       ? std::string(code.text)
                                               : cc->display;
        f.code_label = term_.system_label(coding->system) + " " + f.code;
        f.caveat = cc->caveat;
        f.clinical_status = clinical;
        f.verification_status = verification;
        f.onset = onset;
        f.has_abatement = abated;
        f.abatement = abatement;
        f.source = source;
        p->conditions.push_back(std::move(f));
    }
}

}  // namespace calcalert::mappings
