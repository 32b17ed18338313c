#include "mappings/fact_builder.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <set>

#include "fhir/datetime.hpp"
#include "fhir/views.hpp"
#include "mappings/condition_reading.hpp"
#include "rules/engine.hpp"

namespace calcalert::mappings {
namespace {

using fhir::ElementError;
using fhir::Json;

std::string source_of(const fhir::ResourceView& v, const fhir::Location& where) {
    return v.id().empty() ? where.describe() : v.versioned_reference();
}

struct Mapped {
    const LabCode* lab = nullptr;
    std::string code;
    std::string conflict;  // codings of two analytes, in words ("" when none)
};

// The analyte a concept names. Codings of two different analytes (say total and ionized calcium)
// make it unusable (clinical-rules.md §5.1.2): `conflict` names them.
Mapped map_lab(const Terminology& term, const fhir::CodeableConcept& cc) {
    Mapped m;
    for (const auto& c : cc.coding) {
        const LabCode* l = term.lab(c.system, c.code);
        if (!l) continue;
        if (!m.lab) {
            m.lab = l;
            m.code = std::string(c.code);
        } else if (l->analyte != m.lab->analyte && m.conflict.empty()) {
            m.conflict = "LOINC " + m.code + " (" + std::string(rules::analyte_label(m.lab->analyte)) + ") and LOINC " +
                         std::string(c.code) + " (" + std::string(rules::analyte_label(l->analyte)) + ")";
        }
    }
    return m;
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

// meta.versionId as a number, when it is one (digits only, and fits).
std::optional<std::uint64_t> version_number(std::string_view v) {
    if (v.empty() || v.size() > 19) return std::nullopt;
    std::uint64_t n = 0;
    for (char c : v) {
        if (c < '0' || c > '9') return std::nullopt;
        n = n * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return n;
}

// A path of a contained Observation: "Observation.valueQuantity" -> "<root>.valueQuantity".
std::string rooted(const std::string& path, const std::string& root) {
    static const std::string kObservation = "Observation";
    if (root == kObservation || path.compare(0, kObservation.size(), kObservation) != 0) return path;
    return root + path.substr(kObservation.size());
}

template <class T>
std::size_t erase_owned(std::vector<T>& items, std::vector<std::uint64_t>& owners, std::uint64_t record) {
    std::size_t kept = 0;
    for (std::size_t i = 0; i < items.size() && i < owners.size(); ++i) {
        if (owners[i] == record) continue;
        if (kept != i) {
            items[kept] = std::move(items[i]);
            owners[kept] = owners[i];
        }
        ++kept;
    }
    const std::size_t removed = items.size() - kept;
    items.erase(items.begin() + static_cast<std::ptrdiff_t>(kept), items.end());
    owners.resize(kept);
    return removed;
}

}  // namespace

FactBuilder::FactBuilder(const Terminology& terminology, std::string_view server_base)
    : term_(terminology), server_base_(server_base.empty() ? std::string() : fhir::normalize_base(server_base)) {}

rules::PatientFacts& FactBuilder::patient(const std::string& ref) {
    if (last_patient_ && last_patient_->patient == ref) return *(touched_ = last_patient_);
    auto [it, inserted] = patients_.try_emplace(ref);
    if (inserted) it->second.patient = ref;
    touched_ = last_patient_ = &it->second;
    return it->second;
}

rules::PatientFacts* FactBuilder::subject(std::string_view reference, const std::string& type,
                                          const fhir::Location& where, const fhir::BundleContext* bundle) {
    if (reference.empty()) {
        problems_.push_back({fhir::Severity::warning, where, type + ".subject",
                             "no subject reference: the resource belongs to no patient and is not evaluated"});
        return nullptr;
    }
    const fhir::PatientIdentity id = fhir::patient_identity(reference, bundle, server_base_);
    switch (id.kind) {
        case fhir::PatientIdentity::Kind::patient: return &patient(id.id);
        case fhir::PatientIdentity::Kind::unresolved:
            problems_.push_back({fhir::Severity::warning, where, type + ".subject.reference",
                                 "subject '" + std::string(reference) +
                                     (bundle ? "' is not the fullUrl of any entry of the Bundle: not evaluated"
                                             : "' can only be resolved by the fullUrls of a Bundle, and this "
                                               "resource is not in one: not evaluated")});
            return nullptr;
        case fhir::PatientIdentity::Kind::not_a_patient: break;
    }
    problems_.push_back({fhir::Severity::warning, where, type + ".subject.reference",
                         "subject '" + std::string(reference) + "' is not a Patient: not evaluated"});
    return nullptr;
}

void FactBuilder::add_note(rules::PatientFacts& p, rules::DataQualityNote n, std::uint64_t owner) {
    p.notes.push_back(std::move(n));
    owners_[&p].notes.push_back(owner);
}

std::size_t FactBuilder::take_back(std::uint64_t record, rules::PatientFacts* p) {
    if (!p || record == 0) return 0;
    auto it = owners_.find(p);
    if (it == owners_.end()) return 0;
    Owners& o = it->second;
    std::size_t n = erase_owned(p->labs, o.labs, record) + erase_owned(p->conditions, o.conditions, record) +
                    erase_owned(p->procedures, o.procedures, record) + erase_owned(p->notes, o.notes, record);
    const std::size_t before = o.deceased.size();
    std::erase_if(o.deceased, [record](const auto& d) { return d.first == record; });
    n += before - o.deceased.size();
    if (o.deceased.empty())
        p->deceased.reset();
    else
        p->deceased = o.deceased.back().second;
    return n;
}

std::string_view FactBuilder::keep_key(std::string_view key) {
    constexpr std::size_t kChunk = std::size_t{1} << 16;
    if (key.size() > key_left_) {
        const std::size_t n = std::max(kChunk, key.size());
        key_chunks_.push_back(std::make_unique_for_overwrite<char[]>(n));
        key_next_ = key_chunks_.back().get();
        key_left_ = n;
    }
    std::memcpy(key_next_, key.data(), key.size());
    const std::string_view kept(key_next_, key.size());
    key_next_ += key.size();
    key_left_ -= key.size();
    return kept;
}

FactBuilder::Held* FactBuilder::find_held(std::string_view key, std::size_t hash) {
    if (held_slots_.empty()) return nullptr;
    const std::size_t mask = held_slots_.size() - 1;
    const auto tag = static_cast<std::uint32_t>(hash >> 32);
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
        const HeldSlot s = held_slots_[i];
        if (s.entry == 0) return nullptr;
        if (s.tag == tag) {
            HeldEntry& e = held_[s.entry - 1];
            if (e.hash == hash && e.key == key) return &e.held;
        }
    }
}

void FactBuilder::place_held(std::size_t entry) {
    const std::size_t mask = held_slots_.size() - 1;
    const std::size_t hash = held_[entry].hash;
    std::size_t i = hash & mask;
    while (held_slots_[i].entry != 0) i = (i + 1) & mask;
    held_slots_[i] = {static_cast<std::uint32_t>(entry + 1), static_cast<std::uint32_t>(hash >> 32)};
}

void FactBuilder::add_held(std::string_view key, std::size_t hash, Held held) {
    if (held_.size() >= std::numeric_limits<std::uint32_t>::max() - 1)
        throw std::length_error("more than 4 billion resources in one evaluation");
    if ((held_.size() + 1) * 2 > held_slots_.size()) {
        held_slots_.assign(std::max<std::size_t>(1024, held_slots_.size() * 2), HeldSlot{});
        for (std::size_t e = 0; e < held_.size(); ++e) place_held(e);
    }
    held_.push_back({keep_key(key), hash, std::move(held)});
    place_held(held_.size() - 1);
}

void FactBuilder::settle(std::string_view key_text, Version v, std::uint64_t record, rules::PatientFacts* p,
                         bool deleted) {
    Held incoming{std::move(v), record, p, deleted};
    const std::size_t hash = std::hash<std::string_view>{}(key_text);
    Held* found = find_held(key_text, hash);
    if (!found) {
        add_held(key_text, hash, std::move(incoming));
        return;
    }
    Held& held = *found;
    const std::string key(key_text);
    // Which of the two counts, and what decided it.
    const Version& a = incoming.version;
    const Version& b = held.version;
    bool newer = true;  // else: the one read last
    std::string by;
    if (a.number && b.number && *a.number != *b.number) {
        newer = *a.number > *b.number;
        by = "meta.versionId";
    } else if (!(a.number && b.number) && a.updated && b.updated && *a.updated != *b.updated) {
        newer = *a.updated > *b.updated;
        by = "meta.lastUpdated";
    }
    const bool same = !a.id.empty() && a.id == b.id && by.empty();
    Held loser = newer ? std::move(held) : std::move(incoming);
    if (newer) held = std::move(incoming);
    const Held& winner = held;
    if (!loser.patient || take_back(loser.record, loser.patient) == 0) return;  // it gave nothing
    auto describe = [](const Version& x) {
        if (!x.id.empty()) return "version " + x.id;
        if (x.updated) return "lastUpdated " + fhir::format_datetime(*x.updated);
        return std::string("a copy without meta.versionId or meta.lastUpdated");
    };
    std::string msg;
    if (same)
        msg = key + " " + describe(loser.version) + " appears more than once in the input: counted once";
    else if (winner.deleted && winner.version.id.empty() && !winner.version.updated)
        msg = key + " (" + describe(loser.version) + ") is deleted by a later entry of the input: not used";
    else if (winner.deleted)
        msg = key + " (" + describe(loser.version) + ") is deleted by an entry of the input (" +
              describe(winner.version) + "): not used";
    else
        msg = key + " (" + describe(loser.version) + ") is superseded by " + describe(winner.version) + " in the input" +
              (by.empty() ? " (the one read last counts)" : "") + ": not used";
    const std::string source = key + (loser.version.id.empty() ? "" : "/_history/" + loser.version.id);
    add_note(*loser.patient, {source, by, msg}, 0);  // owned by no record: it stays
}

void FactBuilder::on_resource(const rapidjson::Value& json, std::string_view type, const fhir::Location& where,
                              const fhir::BundleContext* bundle) {
    if (type == "OperationOutcome") {
        for (const auto& issue : fhir::operation_outcome_issues(json))
            problems_.push_back({fhir::Severity::warning, where, "OperationOutcome.issue", "the source reports: " + issue});
        return;
    }
    if (type != "Observation" && type != "Condition" && type != "Procedure" && type != "Patient" &&
        type != "DiagnosticReport")
        return;  // other resource types carry nothing the rules read
    const fhir::ResourceView base(json, std::string(type));
    Version v{std::string(base.version_id()), version_number(base.version_id()), base.last_updated(), 0};
    current_ = ++records_;
    touched_ = nullptr;
    try {
        if (type == "Observation")
            observation(json, where, bundle, "Observation", {}, {});
        else if (type == "Condition")
            condition(json, where, bundle);
        else if (type == "Procedure")
            procedure(json, where, bundle);
        else if (type == "Patient")
            patient_resource(json, where, bundle);
        else
            diagnostic_report(json, where, bundle);
    } catch (const ElementError&) {
        take_back(current_, touched_);  // a rejected resource gives nothing
        if (!base.id().empty()) {
            // It still supersedes older versions: the latest version cannot be read, so none counts.
            v.read = ++reads_;
            settle(base.reference(), std::move(v), 0, nullptr, false);
        }
        throw;
    }
    if (base.id().empty()) return;  // no identity: never a version of another
    // A resource that gave nothing and carries no version can lose to no later copy (the one read
    // last counts), so only a copy already held needs it; everything else is held.
    key_.assign(type);
    key_ += '/';
    key_ += base.id();  // base.reference(), without a new string
    if (!touched_ && v.id.empty() && !v.updated && !find_held(key_, std::hash<std::string_view>{}(key_))) return;
    v.read = ++reads_;
    settle(key_, std::move(v), current_, touched_, false);
}

void FactBuilder::on_deleted(std::string_view reference, std::string_view version, std::optional<std::int64_t> at,
                             const fhir::Location&) {
    Version v{std::string(version), version_number(version), at, ++reads_};
    settle(reference, std::move(v), 0, nullptr, true);
}

void FactBuilder::observation(const rapidjson::Value& json, const fhir::Location& where,
                              const fhir::BundleContext* bundle, const std::string& root,
                              std::string_view inherited_subject, const std::string& source_override) {
    fhir::ObservationView obs(json);
    const Mapped main = map_lab(term_, obs.code());
    auto components = obs.components();
    std::vector<std::pair<Mapped, const fhir::ObservationView::Component*>> mapped_components;
    for (const auto& c : components) {
        Mapped m = map_lab(term_, c.code);
        if (m.lab) mapped_components.emplace_back(m, &c);
    }
    if (!main.lab && mapped_components.empty()) return;  // not a lab the rules read

    std::string_view subject_ref = obs.subject_reference();
    if (subject_ref.empty()) subject_ref = inherited_subject;
    if (subject_ref.empty() && bundle && root == "Observation")
        subject_ref = bundle->report_subject(obs.id().empty() ? std::string() : obs.reference(), where.entry);
    rules::PatientFacts* p = subject(subject_ref, "Observation", where, bundle);
    if (!p) return;
    const std::string source = source_override.empty() ? source_of(obs, where) : source_override;
    auto note = [&](const std::string& path, const std::string& msg) { add_note(*p, {source, path, msg}); };

    // clinical-rules.md §5.1.3: a modifier the reader does not understand, on the resource or on the
    // element holding a value it reads, makes the whole resource unusable.
    if (auto url = fhir::modifier_extension_url(json, root)) {
        note(root + ".modifierExtension", "the Observation has a modifierExtension the reader does not understand ('" +
                                              *url + "'): not used");
        return;
    }
    for (const auto& [m, c] : mapped_components) {
        const std::string cpath = root + ".component[" + std::to_string(c->index) + "]";
        if (auto url = fhir::modifier_extension_url(*c->json, cpath)) {
            note(cpath + ".modifierExtension", "an Observation component the rules read has a modifierExtension the reader "
                                               "does not understand ('" + *url + "'): the Observation is not used");
            return;
        }
    }
    if (!main.conflict.empty()) {
        note(root + ".code", "the codes name two analytes, " + main.conflict + ": the Observation is not used");
        return;
    }

    const fhir::EffectiveTime eff = obs.effective();
    auto add = [&](const Mapped& m, const fhir::Json* vq, bool absent, const std::optional<fhir::Quantity>& high,
                   const std::string& path) {
        const std::string label(rules::analyte_label(m.lab->analyte));
        if (!m.conflict.empty()) {
            note(path + ".code", "the codes name two analytes, " + m.conflict + ": not used");
            return;
        }
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
            note(rooted("Observation.effective[x]", root), label + " has no effectiveDateTime, effectivePeriod.start, "
                                                                   "effectiveInstant or issued");
            return;
        }
        if (conv->property != m.lab->property)
            note(path + ".valueQuantity.code", "unit '" + unit_used + "' (" + conv->property + ") under LOINC " +
                                                   m.code + ", a " + m.lab->property + " code; converted by its unit");
        if (!conv->note_on_use.empty()) note(path + ".valueQuantity.code", conv->note_on_use);
        const double value = *q.value * conv->factor;
        const std::string unit(rules::canonical_unit(m.lab->analyte));
        // The value as reported, for a converted value and the notes only (formatting costs).
        auto reported = [&] { return rules::format_number(*q.value, 3) + " " + unit_used; };
        if (!std::isfinite(value)) {
            note(path + ".valueQuantity.value",
                 label + " " + reported() + " is not a finite number in " + unit + ": not used");
            return;
        }
        // clinical-rules.md §5.1.4: outside the plausibility limits of mappings/data/plausibility.tsv.
        if (const PlausibleRange* range = term_.plausible_range(m.lab->analyte);
            range && (value < range->low || value > range->high)) {
            const std::string as_reported = conv->factor != 1.0 ? " (reported " + reported() + ")" : "";
            note(path + ".valueQuantity.value",
                 label + " " + rules::format_number(value) + " " + unit + as_reported + " is implausible, outside " +
                     rules::format_number(range->low) + "-" + rules::format_number(range->high) + " " + unit +
                     " (a value in another unit?): not used");
            return;
        }
        rules::LabResult r;
        r.analyte = m.lab->analyte;
        r.value = value;
        r.comparator = *rules::comparator_from_string(q.comparator);
        r.effective = *eff.time;
        r.status = std::string(obs.status());
        r.source = source;
        r.code = m.code;
        if (conv->factor != 1.0) r.reported = reported();
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
        owners_[p].labs.push_back(current_);
    };
    if (main.lab)
        add(main, obs.value_quantity(), obs.has_data_absent_reason(), obs.reference_range_high(), root);
    for (const auto& [m, c] : mapped_components)
        add(m, c->value_quantity, c->data_absent, c->reference_range_high,
            root + ".component[" + std::to_string(c->index) + "]");
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
    if (auto url = fhir::modifier_extension_url(json, "Condition")) {
        const std::string what = reading.matches.empty()
                                     ? std::string("the Condition")
                                     : term_.system_label(reading.matches[0].coding->system) + " " +
                                           std::string(reading.matches[0].coding->code);
        add_note(*p, {source, "Condition.modifierExtension",
                      what + ": the Condition has a modifierExtension the reader does not understand ('" + *url + "'): not used"});
        return;
    }
    for (const auto& n : reading.notes) add_note(*p, {source, "Condition.code", n});
    const std::string clinical(cond.clinical_status());
    const std::string verification(cond.verification_status());
    const auto onset = cond.onset();
    const auto recorded = cond.recorded_date();
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
        f.recorded = recorded;
        f.has_abatement = abated;
        f.abatement = abatement;
        f.source = source;
        p->conditions.push_back(std::move(f));
        owners_[p].conditions.push_back(current_);
    }
}

void FactBuilder::procedure(const rapidjson::Value& json, const fhir::Location& where,
                            const fhir::BundleContext* bundle) {
    fhir::ProcedureView proc(json);
    const ProcedureCode* code = nullptr;
    const fhir::Coding* coding = nullptr;
    for (const auto& c : proc.code().coding)
        if ((code = term_.procedure(c.system, c.code))) {
            coding = &c;
            break;
        }
    if (!code) return;  // not a procedure the rules read
    rules::PatientFacts* p = subject(proc.subject_reference(), "Procedure", where, bundle);
    if (!p) return;
    const std::string source = source_of(proc, where);
    const std::string label = term_.system_label(coding->system) + " " + std::string(coding->code);
    if (auto url = fhir::modifier_extension_url(json, "Procedure")) {
        add_note(*p, {source, "Procedure.modifierExtension",
                      label + ": the Procedure has a modifierExtension the reader does not understand ('" + *url +
                          "'): not used"});
        return;
    }
    const auto performed = proc.performed();
    if (!performed.start && !performed.end) {
        add_note(*p, {source, "Procedure.performed[x]",
                      label + (performed.other.empty() ? std::string(" has no performedDateTime or performedPeriod")
                                                       : " has " + std::string(performed.other) + ", not a date") +
                          ": not used"});
        return;
    }
    rules::ProcedureFact f;
    f.concept_id = code->concept_id;
    f.code_label = label;
    f.display = coding->display.empty() ? (proc.code().text.empty() ? code->display : std::string(proc.code().text))
                                        : std::string(coding->display);
    f.status = std::string(proc.status());
    f.performed_start = performed.start;
    f.performed_end = performed.end;
    f.source = source;
    p->procedures.push_back(std::move(f));
    owners_[p].procedures.push_back(current_);
}

void FactBuilder::patient_resource(const rapidjson::Value& json, const fhir::Location& where,
                                   const fhir::BundleContext* bundle) {
    fhir::PatientView v(json);
    std::string identity;
    if (!v.id().empty()) {
        identity = "Patient/" + std::string(v.id());
    } else if (bundle) {
        // clinical-rules.md §5.2.4: a Patient without an id is the patient its fullUrl names.
        const std::string_view full = bundle->full_url_of(where.entry);
        if (!full.empty()) {
            const fhir::PatientIdentity id = fhir::patient_identity(full, bundle, server_base_);
            if (id.kind == fhir::PatientIdentity::Kind::patient) identity = id.id;
        }
    }
    if (identity.empty()) {
        problems_.push_back({fhir::Severity::warning, where, "Patient.id",
                             "a Patient without an id, and no Bundle entry fullUrl to name it: nothing refers to it"});
        return;
    }
    rules::PatientFacts& p = patient(identity);
    const std::string source = source_of(v, where);
    if (auto url = fhir::modifier_extension_url(json, "Patient")) {
        add_note(p, {source, "Patient.modifierExtension",
                     "the Patient has a modifierExtension the reader does not understand ('" + *url +
                         "'): not used (its deceased status is not read)"});
        return;
    }
    const auto at = v.deceased_date_time();
    const auto flag = v.deceased_boolean();
    if (at || (flag && *flag)) {
        owners_[&p].deceased.emplace_back(current_, rules::Deceased{at, source});
        p.deceased = owners_[&p].deceased.back().second;
    }
}

void FactBuilder::diagnostic_report(const rapidjson::Value& json, const fhir::Location& where,
                                    const fhir::BundleContext* bundle) {
    const Json* contained = fhir::array_member(json, "contained", "DiagnosticReport");
    const Json* results = fhir::array_member(json, "result", "DiagnosticReport");
    if (!contained || !results) return;  // Observations it lists elsewhere are read on their own
    std::set<std::string> listed;  // the contained ids `result` references ("#id")
    for (rapidjson::SizeType i = 0; i < results->Size(); ++i) {
        const std::string rpath = "DiagnosticReport.result[" + std::to_string(i) + "]";
        const Json& r = (*results)[i];
        if (!r.IsObject()) throw ElementError(rpath, std::string("expected an object, found ") + fhir::json_type_name(r));
        if (auto ref = fhir::string_member(r, "reference", rpath); ref && ref->size() > 1 && (*ref)[0] == '#')
            listed.insert(std::string(ref->substr(1)));
    }
    if (listed.empty()) return;
    const fhir::ResourceView report(json, "DiagnosticReport");
    std::string_view subject_ref;
    if (const Json* subj = fhir::object_member(json, "subject", "DiagnosticReport"))
        if (auto r = fhir::string_member(*subj, "reference", "DiagnosticReport.subject")) subject_ref = *r;
    const std::string status(fhir::string_member(json, "status", "DiagnosticReport").value_or(""));
    const std::string source = source_of(report, where);
    // A report that is retracted, or that carries a modifier the reader does not understand: none of
    // its results is used (one note for the report).
    std::string unusable;
    if (auto url = fhir::modifier_extension_url(json, "DiagnosticReport"))
        unusable = "the DiagnosticReport has a modifierExtension the reader does not understand ('" + *url + "')";
    else if (status == "entered-in-error" || status == "cancelled")
        unusable = "the DiagnosticReport has status '" + status + "'";
    for (rapidjson::SizeType i = 0; i < contained->Size(); ++i) {
        const Json& c = (*contained)[i];
        const std::string root = "DiagnosticReport.contained[" + std::to_string(i) + "]";
        if (!c.IsObject()) throw ElementError(root, std::string("expected an object, found ") + fhir::json_type_name(c));
        if (fhir::string_or_empty(c, "resourceType") != "Observation" || !listed.count(fhir::string_or_empty(c, "id")))
            continue;
        if (!unusable.empty()) {
            if (rules::PatientFacts* p = subject(subject_ref, "DiagnosticReport", where, bundle))
                add_note(*p, {source, "DiagnosticReport", unusable + ": its results are not used"});
            return;
        }
        try {
            observation(c, where, bundle, root, subject_ref, source);
        } catch (const ElementError& e) {
            throw ElementError(rooted(e.path(), root), e.what());
        }
    }
}

}  // namespace calcalert::mappings
