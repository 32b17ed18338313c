#include "rules/engine.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>

namespace calcalert::rules {
namespace {

constexpr double kHour = 3600.0;
constexpr double kDay = 86400.0;

// What printf's "%.*f" writes into a 64-byte buffer (std::to_chars with a precision writes the same
// digits, without the locale and format-string machinery; at most 63 characters are kept).
std::string fixed(double v, int decimals) {
    char buf[400];
    const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, decimals);
    return std::string(buf, std::min<std::size_t>(r.ec == std::errc() ? static_cast<std::size_t>(r.ptr - buf) : 0, 63));
}

// A number for the evidence hash: exact enough to see any change, independent of how it is written
// (printf's "%.9g").
std::string exact(double v) {
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general, 9);
    return std::string(buf, r.ec == std::errc() ? static_cast<std::size_t>(r.ptr - buf) : 0);
}

std::string_view comparator_words(Comparator c) {
    switch (c) {
        case Comparator::none: return "";
        case Comparator::lt: return "less than ";
        case Comparator::le: return "at most ";
        case Comparator::ge: return "at least ";
        case Comparator::gt: return "more than ";
    }
    return "";
}

std::string value_words(double value, Comparator c, std::string_view unit, int decimals = 2) {
    return std::string(comparator_words(c)) + format_number(value, decimals) + " " + std::string(unit);
}

std::string value_text(const LabResult& r) {
    std::string s = value_words(r.value, r.comparator, display_unit(r.analyte));
    if (!r.reported.empty()) s += " (reported " + r.reported + ")";
    return s;
}

std::string lab_key(const LabResult& r) {
    return std::string(analyte_name(r.analyte)) + "=" + std::string(to_string(r.comparator)) + exact(r.value) + "@" +
           std::to_string(r.effective) + (r.reference_high ? "/ref " + exact(*r.reference_high) : std::string());
}

// One value a lab fact may judge: a result, or a value computed from results. Only the latest one
// within the window is judged, so its words, key and sources are made from the results it points
// to only when it is (Evaluator::text_of, key_of, sources_of).
struct Candidate {
    enum class Kind {
        result,       // `lab` itself
        reported,     // `lab`, a reported corrected calcium
        corrected,    // total calcium `lab` corrected with albumin `other`
        uncorrected,  // total calcium `lab`, with albumin `other` not low, or none near (null)
        product,      // `other` (the partner) × `lab` (the anchor)
    };
    Kind kind = Kind::result;
    double value = 0;
    std::optional<Comparator> comparator = Comparator::none;  // nullopt: bounded both ways, decides nothing
    EpochSeconds time = 0;
    std::optional<double> reference_high;
    const LabResult* lab = nullptr;
    const LabResult* other = nullptr;
    const ComputedValue* computed = nullptr;  // all kinds but result
};

// A lab fact's latest value within its window, judged against its threshold. Its words are made
// only when a finding shows them (most patients have none).
struct Judged {
    const LabFact* fact = nullptr;
    Candidate candidate;
    AppliedThreshold threshold;
    bool holds = false;
};

struct FactValue {
    bool present = false;
    std::string text;                  // why it holds, in words (values, units, dates, thresholds; no references)
    std::string brief;                 // short form for summaries
    std::string key;                   // the evidence, canonical: no wording, times in UTC seconds
    std::vector<std::string> sources;
    std::vector<std::string> parts;    // for derived facts: the present facts that make it hold
    // A lab fact that holds (text, brief and key are made from it when read), or a computed value
    // (its brief is), instead of the strings above.
    const Judged* judged = nullptr;
    bool value_only = false;
};

using FactMap = std::unordered_map<std::string, FactValue>;

class Evaluator {
public:
    Evaluator(const PatientFacts& facts, EpochSeconds now, const RuleCatalog& catalog)
        : in_(facts), now_(now), cat_(catalog), p_(catalog.parameters()), zone_(catalog.time_zone()) {}

    Evaluation run() {
        Evaluation out;
        out.notes = in_.notes;
        patient_facts(out.notes);
        if (deceased(out.notes)) return out;
        fire_rules(out.findings);
        return out;
    }

    Evaluation run_orders(const std::vector<OrderFact>& orders) {
        Evaluation out;
        out.notes = in_.notes;
        patient_facts(out.notes);
        if (deceased(out.notes)) return out;
        std::vector<std::string> sources;  // the orders, in order of first appearance
        for (const auto& o : orders)
            if (std::find(sources.begin(), sources.end(), o.source) == sources.end()) sources.push_back(o.source);
        for (const auto& source : sources) {
            for (const auto& o : orders) {
                if (o.source != source) continue;
                auto& f = facts_["order." + o.order_class];
                append(f, "\"" + o.display + "\": " + o.basis, {o.source},
                       "order " + o.order_class + "|" + o.code + "|" + o.display + "|" + o.route + "|" + o.source);
                if (f.brief.empty()) f.brief = o.display;
                if (order_display_.empty()) order_display_ = o.display;
            }
            order_ = source;
            for (const Rule& r : cat_.order_rules())
                if (raw_fires(r)) out.findings.push_back(make_finding(r));
            for (const auto& o : orders)
                if (o.source == source) facts_.erase("order." + o.order_class);
            order_.clear();
            order_display_.clear();
        }
        std::stable_sort(out.findings.begin(), out.findings.end(), [](const Finding& a, const Finding& b) {
            if (a.rule->severity != b.rule->severity) return a.rule->severity < b.rule->severity;
            return a.rule->id < b.rule->id;
        });
        return out;
    }

    std::vector<SeriesPoint> series(const std::string& value) {
        std::vector<DataQualityNote> ignored;
        select_labs(ignored);
        LabFact probe;
        probe.value = value;
        if (const auto a = analyte_from_name(value)) {
            probe.analyte = *a;
        } else {
            const auto& computed = cat_.computed();
            for (std::size_t i = 0; i < computed.size(); ++i)
                if (computed[i].id == value) probe.computed = static_cast<int>(i);
            if (probe.computed < 0) return {};
        }
        std::vector<SeriesPoint> out;
        for (const Candidate& c : candidates(probe)) out.push_back({c.value, c.comparator, c.time, c.reference_high, sources_of(c)});
        return out;
    }

private:
    std::string when(EpochSeconds t) const { return format_time_for_people(t, zone_); }

    // The patient's facts: counted labs, conditions and procedures, lab facts, derived facts.
    void patient_facts(std::vector<DataQualityNote>& notes) {
        select_labs(notes);
        select_conditions(notes);
        select_procedures(notes);
        for (const LabFact& f : cat_.lab_facts()) lab_fact(f);
        derived_facts();
    }

    // clinical-rules.md §5.1.6: a patient deceased at `now` gets no finding (the note says why).
    bool deceased(std::vector<DataQualityNote>& notes) const {
        if (!in_.deceased) return false;
        const Deceased& d = *in_.deceased;
        if (d.at && *d.at > now_) {
            notes.push_back({d.source, "Patient.deceasedDateTime",
                             "deceasedDateTime " + when(*d.at) +
                                 " lies after the evaluation time: the patient is evaluated"});
            return false;
        }
        notes.push_back({d.source, d.at ? "Patient.deceasedDateTime" : "Patient.deceasedBoolean",
                         "the patient is deceased (" +
                             (d.at ? "deceasedDateTime " + when(*d.at) : std::string("deceasedBoolean true")) +
                             "): no finding"});
        return true;
    }

    // Fact dialysis-procedure: the latest dialysis Procedure of a counted status performed within the
    // window (a period counts by its end; an in-progress one without an end is still going on).
    void select_procedures(std::vector<DataQualityNote>& notes) {
        const auto tolerance = static_cast<EpochSeconds>(p_.future_tolerance_hours * kHour);
        const ProcedureFact* latest = nullptr;
        EpochSeconds latest_t = 0;
        std::size_t within_window = 0;
        for (const auto& pr : in_.procedures) {
            if (pr.concept_id != "dialysis" || (!pr.performed_start && !pr.performed_end)) continue;
            const std::string label = "Dialysis procedure " + pr.code_label;
            const auto& st = p_.dialysis_counted_statuses;
            if (std::find(st.begin(), st.end(), pr.status) == st.end()) {
                notes.push_back({pr.source, "Procedure.status", label + " not counted: status '" + pr.status + "'"});
                continue;
            }
            const EpochSeconds start = pr.performed_start ? *pr.performed_start : *pr.performed_end;
            if (start > now_ + tolerance) {
                notes.push_back({pr.source, "Procedure.performed[x]",
                                 label + " not counted: performed " + when(start) + ", more than " +
                                     format_number(p_.future_tolerance_hours) + " h after the evaluation time"});
                continue;
            }
            const EpochSeconds t = pr.performed_end ? *pr.performed_end : pr.status == "in-progress" ? now_ : start;
            if (static_cast<double>(now_ - t) > p_.dialysis_window_days * kDay) continue;  // older: outside the window
            ++within_window;
            if (!latest || t > latest_t || (t == latest_t && pr.source < latest->source)) {
                latest = &pr;
                latest_t = t;
            }
        }
        if (!latest) return;
        const EpochSeconds start = latest->performed_start ? *latest->performed_start : *latest->performed_end;
        std::string performed = when(start);
        if (latest->performed_end && *latest->performed_end != start)
            performed += " to " + when(*latest->performed_end);
        else if (!latest->performed_end && latest->status == "in-progress")
            performed = "since " + performed + ", not ended";
        std::string text = "\"" + (latest->display.empty() ? std::string("dialysis") : latest->display) + "\" " +
                           latest->code_label + ", " + latest->status + ", performed " + performed + " (within " +
                           format_number(p_.dialysis_window_days) + " days";
        if (within_window > 1) text += "; the latest of " + std::to_string(within_window);
        text += ")";
        auto& f = facts_["dialysis-procedure"];
        // The evidence, canonical: dialysis within the window. Not the session's date: a patient on
        // dialysis has a new session three times a week, and each would amend every open alert.
        append(f, text, {latest->source}, "dialysis-procedure within " + exact(p_.dialysis_window_days) + " days");
        f.brief = "dialysis on " + when(latest_t);
    }

    // Labs that count, per analyte, latest first.
    void select_labs(std::vector<DataQualityNote>& notes) {
        const auto tolerance = static_cast<EpochSeconds>(p_.future_tolerance_hours * kHour);
        for (const auto& r : in_.labs) {
            const auto& st = p_.counted_observation_statuses;
            if (std::find(st.begin(), st.end(), r.status) == st.end()) {
                notes.push_back({r.source, "Observation.status",
                                 std::string(analyte_label(r.analyte)) + " not counted: status '" + r.status + "'"});
                continue;
            }
            if (r.effective > now_ + tolerance) {
                notes.push_back({r.source, "Observation.effective[x]",
                                 std::string(analyte_label(r.analyte)) + " not counted: dated " + when(r.effective) +
                                     ", more than " + format_number(p_.future_tolerance_hours) +
                                     " h after the evaluation time"});
                continue;
            }
            labs_[static_cast<std::size_t>(r.analyte)].push_back(&r);
        }
        for (auto& v : labs_)
            std::stable_sort(v.begin(), v.end(), [](const LabResult* a, const LabResult* b) {
                if (a->effective != b->effective) return a->effective > b->effective;
                return a->source < b->source;
            });
    }

    const std::vector<const LabResult*>& labs(Analyte a) const { return labs_[static_cast<std::size_t>(a)]; }

    void select_conditions(std::vector<DataQualityNote>& notes) {
        const auto tolerance = static_cast<EpochSeconds>(p_.future_tolerance_hours * kHour);
        // In a fixed order (by resource, then code), not the order the input happened to list them in: a
        // server that returns the same Conditions in another order must give the same text and evidence hash.
        std::vector<const ConditionFact*> conditions;
        for (const auto& c : in_.conditions) conditions.push_back(&c);
        std::stable_sort(conditions.begin(), conditions.end(), [](const ConditionFact* a, const ConditionFact* b) {
            if (a->source != b->source) return a->source < b->source;
            if (a->system != b->system) return a->system < b->system;
            return a->code < b->code;
        });
        for (const ConditionFact* cp : conditions) {
            const ConditionFact& c = *cp;
            const std::string& v = c.verification_status;
            if (v == "refuted" || v == "entered-in-error") {
                notes.push_back({c.source, "Condition.verificationStatus",
                                 c.code_label + " not counted: verificationStatus '" + v + "'"});
                continue;
            }
            // clinical-rules.md §5.1.5: a condition that has not happened yet.
            const bool future_onset = c.onset && *c.onset > now_ + tolerance;
            if (future_onset || (c.recorded && *c.recorded > now_ + tolerance)) {
                notes.push_back({c.source, future_onset ? "Condition.onset[x]" : "Condition.recordedDate",
                                 c.code_label + " not counted: " + (future_onset ? "onset " : "recorded ") +
                                     when(future_onset ? *c.onset : *c.recorded) + ", more than " +
                                     format_number(p_.future_tolerance_hours) + " h after the evaluation time"});
                continue;
            }
            const std::string& s = c.clinical_status;
            bool active = false;
            if (s == "active" || s == "recurrence" || s == "relapse") {
                active = true;
            } else if (s.empty()) {
                active = !c.has_abatement || (c.abatement && *c.abatement > now_);
            }
            if (!active) {
                notes.push_back({c.source, "Condition.clinicalStatus",
                                 c.code_label + " not counted: " +
                                     (s.empty() ? std::string("abated") : "clinicalStatus '" + s + "'")});
                continue;
            }
            auto& f = facts_["dx." + c.concept_id];
            std::string text = "\"" + (c.display.empty() ? cat_.title_of("dx." + c.concept_id) : c.display) + "\" (" +
                               c.code_label + "), " + (s.empty() ? std::string("active (no abatement)") : s);
            if (!v.empty() && v != "confirmed") text += ", verification status " + v + " (counted, not confirmed)";
            if (c.onset) text += ", onset " + when(*c.onset);
            if (!c.caveat.empty()) text += "; note: " + c.caveat;
            append(f, text, {c.source},
                   "dx " + c.concept_id + "|" + c.system + "|" + c.code + "|" + s + "|" + v + "|" +
                       (c.onset ? std::to_string(*c.onset) : std::string()) + "|" + c.caveat + "|" + c.source);
            f.brief = cat_.title_of("dx." + c.concept_id);
        }
    }

    static void append(FactValue& f, const std::string& text, const std::vector<std::string>& sources,
                       const std::string& key) {
        f.present = true;
        f.text += f.text.empty() ? text : "; " + text;
        f.key += f.key.empty() ? key : ";" + key;
        for (const auto& s : sources)
            if (std::find(f.sources.begin(), f.sources.end(), s) == f.sources.end()) f.sources.push_back(s);
    }

    const LabResult* nearest(Analyte a, EpochSeconds t, double max_seconds) const {
        const LabResult* best = nullptr;
        double best_d = 0;
        for (const LabResult* r : labs(a)) {
            const double d = std::fabs(static_cast<double>(r->effective - t));
            if (d <= max_seconds && (!best || d < best_d)) {
                best = r;
                best_d = d;
            }
        }
        return best;
    }

    // Every value an analyte or a computed value offers, latest first (computed once per value).
    const std::vector<Candidate>& candidates(const LabFact& f) {
        using Kind = Candidate::Kind;
        const std::string& id = f.value;
        if (auto it = candidates_.find(id); it != candidates_.end()) return it->second;
        std::vector<Candidate>& out = candidates_[id];
        if (f.analyte) {
            for (const LabResult* r : labs(*f.analyte))
                out.push_back({Kind::result, r->value, r->comparator, r->effective, r->reference_high, r});
            return out;
        }
        const ComputedValue& c = cat_.computed()[static_cast<std::size_t>(f.computed)];
        if (c.kind == ComputedValue::Kind::albumin_corrected_calcium) {
            for (const LabResult* r : labs(c.reported))
                out.push_back({Kind::reported, r->value, r->comparator, r->effective, r->reference_high, r, nullptr, &c});
            for (const LabResult* r : labs(c.total)) {
                const LabResult* alb = nearest(c.albumin, r->effective, c.albumin_window_hours * kHour);
                if (alb && alb->comparator == Comparator::none && alb->value < c.normal_albumin) {
                    const double corrected = r->value + c.factor * (c.normal_albumin - alb->value);
                    out.push_back({Kind::corrected, corrected, r->comparator, r->effective, r->reference_high, r, alb, &c});
                } else {
                    out.push_back({Kind::uncorrected, r->value, r->comparator, r->effective, r->reference_high, r, alb, &c});
                }
            }
            // Latest first; at the same time the reported corrected calcium (listed first) wins.
            std::stable_sort(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) { return a.time > b.time; });
            return out;
        }
        for (const LabResult* anchor : labs(c.anchor)) {  // product
            const LabResult* partner = nearest(c.partner, anchor->effective, c.pairing_hours * kHour);
            if (!partner) continue;
            out.push_back({Kind::product, partner->value * anchor->value,
                           product_comparator(partner->comparator, anchor->comparator), anchor->effective, std::nullopt,
                           anchor, partner, &c});
        }
        return out;
    }

    // "Intact PTH 450 pg/mL on 10 Nov 2026"
    std::string text_of(const Candidate& k) const {
        const LabResult& r = *k.lab;
        switch (k.kind) {
            case Candidate::Kind::result:
                return std::string(analyte_label(r.analyte)) + " " + value_text(r) + " on " + when(r.effective);
            case Candidate::Kind::reported:
                return "reported " + lower_first(analyte_label(r.analyte)) + " " + value_text(r) + " on " + when(r.effective);
            case Candidate::Kind::corrected: {
                const ComputedValue& c = *k.computed;
                const LabResult& alb = *k.other;
                return c.title + " " + value_words(k.value, r.comparator, c.unit) + " = total calcium " + value_text(r) +
                       " on " + when(r.effective) + " + " + format_number(c.factor) + " × (" +
                       format_number(c.normal_albumin) + " − albumin " + value_text(alb) + " on " + when(alb.effective) +
                       ")";
            }
            case Candidate::Kind::uncorrected:
                return "Total calcium " + value_text(r) + " on " + when(r.effective) +
                       (k.other ? " (albumin " + value_text(*k.other) + ": no correction)"
                                : " (no albumin within " + format_number(k.computed->albumin_window_hours) +
                                      " h: uncorrected)");
            case Candidate::Kind::product: {
                const ComputedValue& c = *k.computed;
                const LabResult& partner = *k.other;
                const std::string bound = k.comparator ? std::string(comparator_words(*k.comparator)) : "bounded both ways ";
                return c.short_label + " " + bound + fixed(k.value, c.decimals) + " " + c.unit + " = " +
                       lower_first(analyte_label(partner.analyte)) + " " + value_text(partner) + " on " +
                       when(partner.effective) + " × " + lower_first(analyte_label(r.analyte)) + " " + value_text(r) +
                       " on " + when(r.effective);
            }
        }
        return {};
    }

    static std::string key_of(const Candidate& k) {
        switch (k.kind) {
            case Candidate::Kind::result: return lab_key(*k.lab);
            case Candidate::Kind::reported: return "reported " + lab_key(*k.lab);
            case Candidate::Kind::corrected: return "corrected " + lab_key(*k.lab) + " albumin " + lab_key(*k.other);
            case Candidate::Kind::uncorrected:
                return "uncorrected " + lab_key(*k.lab) + (k.other ? " albumin " + lab_key(*k.other) : std::string());
            case Candidate::Kind::product: return "product " + lab_key(*k.other) + " x " + lab_key(*k.lab);
        }
        return {};
    }

    static std::vector<std::string> sources_of(const Candidate& k) {
        switch (k.kind) {
            case Candidate::Kind::result:
            case Candidate::Kind::reported: return {k.lab->source};
            case Candidate::Kind::corrected: return {k.lab->source, k.other->source};
            case Candidate::Kind::uncorrected:
                return k.other ? std::vector<std::string>{k.lab->source, k.other->source} : std::vector<std::string>{k.lab->source};
            case Candidate::Kind::product: return {k.other->source, k.lab->source};
        }
        return {};
    }

    static std::string lower_first(std::string_view s) {
        std::string out(s);
        // "Total calcium" -> "total calcium"; keep "PTH", "eGFR" and other words that start in capitals.
        if (out.size() > 1 && std::isupper(static_cast<unsigned char>(out[0])) &&
            std::islower(static_cast<unsigned char>(out[1])))
            out[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(out[0])));
        return out;
    }

    static std::optional<Comparator> product_comparator(Comparator a, Comparator b) {
        auto up = [](Comparator c) { return c == Comparator::gt || c == Comparator::ge; };
        auto down = [](Comparator c) { return c == Comparator::lt || c == Comparator::le; };
        if (a == Comparator::none) return b;
        if (b == Comparator::none) return a;
        if (up(a) && up(b)) return (a == Comparator::ge && b == Comparator::ge) ? Comparator::ge : Comparator::gt;
        if (down(a) && down(b)) return (a == Comparator::le && b == Comparator::le) ? Comparator::le : Comparator::lt;
        return std::nullopt;  // one bound up, one down: the product is not bounded
    }

    std::string unit_of(const LabFact& f) const {
        if (f.analyte) return std::string(display_unit(*f.analyte));
        return cat_.computed()[static_cast<std::size_t>(f.computed)].unit;
    }

    // The one evaluator of every lab fact of facts.json: the latest value within the window, its threshold
    // (a multiple of the result's reference-range high, else the default) and the comparator rule.
    void lab_fact(const LabFact& f) {
        const auto& all = candidates(f);
        if (all.empty() || static_cast<double>(now_ - all.front().time) > f.window_days * kDay) return;
        const Candidate& c = all.front();
        const AppliedThreshold applied = lab_fact_threshold(f, c.reference_high);
        bool holds = false;
        if (c.comparator && (*c.comparator == Comparator::none || f.bounded == BoundedValues::when_decided))
            holds = f.direction == Direction::above ? decides_above(c.value, *c.comparator, applied.value)
                                                    : decides_below(c.value, *c.comparator, applied.value);
        const Judged& j = judged_[f.id] = Judged{&f, c, applied, holds};
        if (f.computed >= 0) {  // the value itself, for {value} in summaries (the first fact that judges it)
            auto& v = facts_[f.value];
            if (!v.judged) {
                v.judged = &j;
                v.value_only = true;
            }
        }
        if (!holds) return;
        auto& fact = facts_[f.id];
        fact.present = true;
        fact.judged = &j;
        for (const auto& s : sources_of(c))
            if (std::find(fact.sources.begin(), fact.sources.end(), s) == fact.sources.end()) fact.sources.push_back(s);
    }

    // "Intact PTH 450 pg/mL on 10 Nov 2026, above 300 pg/mL": the judged value and its threshold.
    std::string judged_text(const Judged& j) const {
        const LabFact& f = *j.fact;
        const Candidate& c = j.candidate;
        const std::string unit = unit_of(f);
        const double threshold = j.threshold.value;
        std::string threshold_text;
        if (j.threshold.from_reference_range) {
            if (*f.times_reference_high == 1)
                threshold_text = "the upper reference limit " + format_number(threshold) + " " + unit;
            else
                threshold_text = format_number(*f.times_reference_high) + " × the upper reference limit " +
                                 format_number(*c.reference_high) + " = " + format_number(threshold) + " " + unit;
        } else {
            threshold_text = format_number(threshold) + " " + unit;
            if (f.times_reference_high) threshold_text = "the default " + threshold_text + " (no reference range reported)";
        }
        const std::string side = f.direction == Direction::above ? "above " : "below ";
        return text_of(c) + ", " + (j.holds ? side : "not " + side) + threshold_text;
    }

    static std::string judged_key(const Judged& j) {
        const LabFact& f = *j.fact;
        return f.id + "|" + key_of(j.candidate) + "|" + (f.direction == Direction::above ? ">" : "<") +
               exact(j.threshold.value) + " " + (j.threshold.from_reference_range ? "reference range" : "default");
    }

    std::string value_brief(const Judged& j) const {
        const ComputedValue& cv = cat_.computed()[static_cast<std::size_t>(j.fact->computed)];
        return cv.short_label + " " + fixed(j.candidate.value, cv.decimals);
    }

    std::string text(const FactValue& v) const { return v.judged && !v.value_only ? judged_text(*v.judged) : v.text; }
    static std::string key(const FactValue& v) { return v.judged && !v.value_only ? judged_key(*v.judged) : v.key; }
    std::string brief(const FactValue& v) const {
        if (!v.judged) return v.brief;
        if (v.value_only || v.judged->fact->computed >= 0) return value_brief(*v.judged);
        return std::string(analyte_label(*v.judged->fact->analyte)) + " " + format_number(v.judged->candidate.value, 1);
    }

    void derived_facts() {
        for (const auto& d : cat_.derived()) {
            if (!std::all_of(d.all.begin(), d.all.end(), [&](const std::string& p) { return present(p); })) continue;
            if (!d.any.empty() && std::none_of(d.any.begin(), d.any.end(), [&](const std::string& p) { return present(p); }))
                continue;
            if (std::any_of(d.none.begin(), d.none.end(), [&](const std::string& p) { return present(p); })) continue;
            FactValue f;
            f.present = true;
            for (const auto* list : {&d.all, &d.any})
                for (const auto& part : *list) {
                    if (!present(part) || std::find(f.parts.begin(), f.parts.end(), part) != f.parts.end()) continue;
                    f.parts.push_back(part);
                    for (const auto& s : facts_.at(part).sources)
                        if (std::find(f.sources.begin(), f.sources.end(), s) == f.sources.end()) f.sources.push_back(s);
                }
            f.brief = d.title;
            facts_[d.id] = std::move(f);
        }
    }

    bool present(const std::string& id) const {
        auto it = facts_.find(id);
        return it != facts_.end() && it->second.present;
    }

    bool assessed(const std::string& id) const { return judged_.count(id) > 0; }

    // The leaf facts (labs, conditions) behind a fact, in order, without repeats.
    void leaves(const std::string& id, std::vector<std::string>& out) const {
        auto it = facts_.find(id);
        if (it == facts_.end() || !it->second.present) return;
        if (it->second.parts.empty()) {
            if (std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
            return;
        }
        for (const auto& p : it->second.parts) leaves(p, out);
    }

    std::string expand(const std::string& tmpl) const {
        std::string out;
        std::size_t i = 0;
        while (i < tmpl.size()) {
            const auto open = tmpl.find('{', i);
            if (open == std::string::npos) {
                out += tmpl.substr(i);
                break;
            }
            const auto close = tmpl.find('}', open);
            if (close == std::string::npos) {
                out += tmpl.substr(i);
                break;
            }
            out += tmpl.substr(i, open - i);
            const std::string key = tmpl.substr(open + 1, close - open - 1);
            if (key.rfind("present:", 0) == 0) {
                std::string list;
                std::size_t s = 8;
                while (s <= key.size()) {
                    auto comma = key.find(',', s);
                    if (comma == std::string::npos) comma = key.size();
                    const std::string id = key.substr(s, comma - s);
                    if (present(id)) {
                        const auto& f = facts_.at(id);
                        list += (list.empty() ? "" : "; ") + cat_.title_of(id) + ": " + text(f);
                    }
                    s = comma + 1;
                }
                out += list.empty() ? "none" : list;
            } else if (key.rfind("assessed:", 0) == 0) {
                const std::string id = key.substr(9);
                if (assessed(id)) {
                    out += judged_text(judged_.at(id));
                } else {
                    const LabFact* f = cat_.lab_fact(id);
                    out += "no result within " + format_number(f ? f->window_days : 0) + " days";
                }
            } else if (key == "order" && !order_.empty()) {
                out += order_display_;
            } else if (auto it = facts_.find(key); it != facts_.end() && !brief(it->second).empty()) {
                out += brief(it->second);
            } else {
                out += cat_.title_of(key);
            }
            i = close + 1;
        }
        return out;
    }

    bool raw_fires(const Rule& r) const {
        for (const auto& f : r.all)
            if (!present(f)) return false;
        if (!r.any.empty() && std::none_of(r.any.begin(), r.any.end(), [&](const std::string& f) { return present(f); }))
            return false;
        for (const auto& f : r.none)
            if (present(f)) return false;
        return true;
    }

    Finding make_finding(const Rule& r) const {
        Finding fd;
        fd.patient = in_.patient;
        fd.rule = &r;
        fd.order = order_;
        std::vector<std::string> leaf_ids;
        for (const auto& f : r.all) leaves(f, leaf_ids);
        for (const auto& f : r.any) leaves(f, leaf_ids);
        for (const auto& id : leaf_ids) {
            const auto& f = facts_.at(id);
            fd.evidence.push_back({id, cat_.title_of(id), text(f), f.sources, key(f)});
            for (const auto& s : f.sources)
                if (std::find(fd.sources.begin(), fd.sources.end(), s) == fd.sources.end()) fd.sources.push_back(s);
        }
        for (const auto& n : r.notes) {
            if (!n.if_any.empty() &&
                std::none_of(n.if_any.begin(), n.if_any.end(), [&](const std::string& f) { return present(f); }))
                continue;
            if (!n.if_assessed.empty() && std::none_of(n.if_assessed.begin(), n.if_assessed.end(),
                                                       [&](const std::string& f) { return assessed(f); }))
                continue;
            fd.notes.push_back(expand(n.text));
        }
        fd.summary = expand(r.summary);
        if (fd.summary.size() >= 140) {
            fd.summary.resize(136);
            while (!fd.summary.empty() && (static_cast<unsigned char>(fd.summary.back()) & 0xC0) == 0x80)
                fd.summary.pop_back();  // do not cut a UTF-8 sequence
            if (!fd.summary.empty()) fd.summary.pop_back();
            fd.summary += "...";
        }
        fd.detail = explanation_text(fd);
        // The evidence hash rests on the rule logic and on the evidence itself (values, UTC times, thresholds,
        // codes, sources), never on wording or the display time zone.
        std::uint64_t h = 1469598103934665603ULL;
        auto mix = [&h](std::string_view s) {
            for (unsigned char c : s) {
                h ^= c;
                h *= 1099511628211ULL;
            }
            h ^= 0xff;
            h *= 1099511628211ULL;
        };
        mix(r.logic_version);
        for (const auto& e : fd.evidence) {
            mix(e.fact);
            mix(e.key);
            for (const auto& s : e.sources) mix(s);
        }
        fd.evidence_hash.assign(16, '0');  // "%016llx"
        for (int i = 15; i >= 0; --i, h >>= 4) fd.evidence_hash[static_cast<std::size_t>(i)] = "0123456789abcdef"[h & 0xF];
        return fd;
    }

    void fire_rules(std::vector<Finding>& out) const {
        std::set<std::string> fired;
        for (const Rule& r : cat_.rules()) {  // suppressors come first
            if (!raw_fires(r)) continue;
            if (std::any_of(r.suppressed_by.begin(), r.suppressed_by.end(),
                            [&](const std::string& s) { return fired.count(s) > 0; }))
                continue;
            fired.insert(r.id);
            out.push_back(make_finding(r));
        }
        std::stable_sort(out.begin(), out.end(), [](const Finding& a, const Finding& b) {
            if (a.rule->severity != b.rule->severity) return a.rule->severity < b.rule->severity;
            return a.rule->id < b.rule->id;
        });
    }

    const PatientFacts& in_;
    EpochSeconds now_;
    const RuleCatalog& cat_;
    const FactParameters& p_;
    const TimeZone& zone_;
    std::vector<const LabResult*> labs_[analyte_count];
    std::map<std::string, std::vector<Candidate>> candidates_;
    std::map<std::string, Judged> judged_;  // lab fact -> its latest value within the window, judged
    FactMap facts_;
    std::string order_;          // evaluate_orders: the order being judged
    std::string order_display_;  // and its drug, for {order}
};

}  // namespace

std::string format_number(double v, int decimals) {
    std::string s = fixed(v, decimals);
    if (s.find('.') != std::string::npos) {
        while (!s.empty() && s.back() == '0') s.pop_back();
        if (!s.empty() && s.back() == '.') s.pop_back();
    }
    if (s == "-0") s = "0";
    return s;
}

std::string evidence_references(const Evidence& e, const std::vector<std::string>& sources) {
    std::string out;
    for (const auto& s : e.sources) {
        const auto it = std::find(sources.begin(), sources.end(), s);
        if (it == sources.end()) continue;
        out += (out.empty() ? "[" : ", ") + std::to_string(it - sources.begin() + 1);
    }
    return out.empty() ? out : out + "]";
}

std::string explanation_text(const Finding& fd) {
    const Rule& r = *fd.rule;
    std::string d = r.title + " (rule " + r.id + " " + r.version + ", severity " + std::string(to_string(r.severity)) +
                    ")\nWhy:\n";
    for (const auto& e : fd.evidence) {
        const std::string refs = evidence_references(e, fd.sources);
        d += "- " + e.label + ": " + e.text + (refs.empty() ? "" : " " + refs) + "\n";
    }
    for (const auto& n : fd.notes) d += n + "\n";
    d += "Reference: " + r.citation_text + " PMID " + r.citation_pmid + ".";
    if (!fd.sources.empty()) {
        d += "\nEvidence:";
        for (std::size_t i = 0; i < fd.sources.size(); ++i)
            d += (i ? "; [" : " [") + std::to_string(i + 1) + "] " + fd.sources[i];
    }
    return d;
}

AppliedThreshold lab_fact_threshold(const LabFact& f, std::optional<double> reference_high) {
    if (f.times_reference_high && reference_high) return {*f.times_reference_high * *reference_high, true};
    return {f.fallback, false};
}

std::vector<SeriesPoint> value_series(const PatientFacts& facts, EpochSeconds now, const RuleCatalog& catalog,
                                      const std::string& value) {
    return Evaluator(facts, now, catalog).series(value);
}

Evaluation evaluate(const PatientFacts& facts, EpochSeconds now, const RuleCatalog& catalog) {
    return Evaluator(facts, now, catalog).run();
}

std::optional<EpochSeconds> next_time_change(const PatientFacts& facts, EpochSeconds now, const RuleCatalog& catalog) {
    const FactParameters& p = catalog.parameters();
    const auto tolerance = static_cast<EpochSeconds>(p.future_tolerance_hours * kHour);
    std::optional<EpochSeconds> next;
    const auto consider = [&](EpochSeconds t) {
        if (t > now && (!next || t < *next)) next = t;
    };
    // "within N days" holds while now - t <= N days: it ends one second after t + N days.
    const auto leaves = [](EpochSeconds t, double days) { return t + static_cast<EpochSeconds>(std::floor(days * kDay)) + 1; };
    std::vector<double> windows;
    for (const auto& f : catalog.lab_facts()) windows.push_back(f.window_days);
    for (const auto& r : facts.labs) {
        consider(r.effective - tolerance);  // a result dated in the future starts to count
        for (double w : windows) consider(leaves(r.effective, w));
    }
    for (const auto& pr : facts.procedures) {
        for (const auto& t : {pr.performed_start, pr.performed_end}) {
            if (!t) continue;
            consider(*t - tolerance);
            consider(leaves(*t, p.dialysis_window_days));
        }
    }
    for (const auto& c : facts.conditions) {
        for (const auto& t : {c.onset, c.recorded}) {
            if (!t) continue;
            consider(*t - tolerance);
            consider(*t);
        }
        if (c.abatement) consider(*c.abatement);
    }
    if (facts.deceased && facts.deceased->at) consider(*facts.deceased->at);
    return next;
}

Evaluation evaluate_orders(const PatientFacts& facts, const std::vector<OrderFact>& orders, EpochSeconds now,
                           const RuleCatalog& catalog) {
    return Evaluator(facts, now, catalog).run_orders(orders);
}

}  // namespace calcalert::rules
