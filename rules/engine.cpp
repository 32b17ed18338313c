#include "rules/engine.hpp"

#include <algorithm>
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

std::string date_for_people(EpochSeconds t) {
    // Same form as fhir::format_date_for_people, kept here so rules/ depends on nothing of ours.
    std::int64_t days = t >= 0 ? t / 86400 : (t - 86399) / 86400;
    std::int64_t rem = t - days * 86400;
    std::int64_t z = days + 719468;
    const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const auto doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    const unsigned d = doy - (153 * mp + 2) / 5 + 1;
    const unsigned m = mp < 10 ? mp + 3 : mp - 9;
    const auto y = static_cast<int>(static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2));
    char buf[48];
    if (rem == 0)
        std::snprintf(buf, sizeof buf, "%04d-%02u-%02u", y, m, d);
    else
        std::snprintf(buf, sizeof buf, "%04d-%02u-%02u %02d:%02d UTC", y, m, d, static_cast<int>(rem / 3600),
                      static_cast<int>(rem % 3600 / 60));
    return buf;
}

struct FactValue {
    bool present = false;
    std::string text;                  // why it holds (or the value, for value facts)
    std::string brief;                 // short form for summaries
    std::vector<std::string> sources;
    std::vector<std::string> parts;    // for derived facts: the present facts that make it hold
};

using FactMap = std::unordered_map<std::string, FactValue>;

std::string fixed(double v, int decimals) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
}

std::string value_text(const LabResult& r) {
    std::string s = std::string(to_string(r.comparator)) + format_number(r.value) + " " +
                    std::string(canonical_unit(r.analyte));
    if (!r.reported.empty()) s += " (reported " + r.reported + ")";
    return s;
}

std::string lab_text(const LabResult& r) {
    return std::string(analyte_label(r.analyte)) + " " + value_text(r) + " on " + date_for_people(r.effective);
}

struct Threshold {
    double value;
    std::string text;  // "10.5 mg/dL (default threshold)" or "10.2 mg/dL (reference range high)"
};

Threshold threshold_for(const LabResult& r, double fallback, bool use_reference_range) {
    const std::string unit(canonical_unit(r.analyte));
    if (use_reference_range && r.reference_high)
        return {*r.reference_high, format_number(*r.reference_high) + " " + unit + " (reference-range high)"};
    return {fallback, format_number(fallback) + " " + unit + " (default threshold)"};
}

class Evaluator {
public:
    Evaluator(const PatientFacts& facts, EpochSeconds now, const RuleCatalog& catalog)
        : in_(facts), now_(now), cat_(catalog), p_(catalog.parameters()) {}

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
                std::string text = "\"" + o.display + "\" (" + o.source + "): " + o.basis;
                append(f, text, {o.source});
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

private:
    // The patient's facts: counted labs, conditions and procedures, lab facts, derived facts.
    void patient_facts(std::vector<DataQualityNote>& notes) {
        select_labs(notes);
        select_conditions(notes);
        select_procedures(notes);
        lab_facts_();
        derived_facts();
    }

    // clinical-rules.md §5.1.6: a patient deceased at `now` gets no finding (the note says why).
    bool deceased(std::vector<DataQualityNote>& notes) const {
        if (!in_.deceased) return false;
        const Deceased& d = *in_.deceased;
        if (d.at && *d.at > now_) {
            notes.push_back({d.source, "Patient.deceasedDateTime",
                             "deceasedDateTime " + date_for_people(*d.at) +
                                 " lies after the evaluation time: the patient is evaluated"});
            return false;
        }
        notes.push_back({d.source, d.at ? "Patient.deceasedDateTime" : "Patient.deceasedBoolean",
                         "the patient is deceased (" +
                             (d.at ? "deceasedDateTime " + date_for_people(*d.at) : std::string("deceasedBoolean true")) +
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
                                 label + " not counted: performed " + date_for_people(start) + ", more than " +
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
        std::string when = date_for_people(start);
        if (latest->performed_end && *latest->performed_end != start)
            when += " to " + date_for_people(*latest->performed_end);
        else if (!latest->performed_end && latest->status == "in-progress")
            when = "since " + when + ", not ended";
        std::string text = "\"" + (latest->display.empty() ? std::string("dialysis") : latest->display) + "\" " +
                           latest->code_label + ", " + latest->status + ", performed " + when + " (within " +
                           format_number(p_.dialysis_window_days) + " days";
        if (within_window > 1) text += "; the latest of " + std::to_string(within_window);
        text += ")";
        auto& f = facts_["dialysis-procedure"];
        append(f, text, {latest->source});
        f.brief = "dialysis on " + date_for_people(latest_t);
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
                                 std::string(analyte_label(r.analyte)) + " not counted: dated " +
                                     date_for_people(r.effective) + ", more than " +
                                     format_number(p_.future_tolerance_hours) + " h after the evaluation time"});
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

    bool within(const LabResult& r, double days) const {
        return static_cast<double>(now_ - r.effective) <= days * kDay;
    }

    const LabResult* latest_within(Analyte a, double days) const {
        for (const LabResult* r : labs(a))
            if (within(*r, days)) return r;
        return nullptr;
    }

    void select_conditions(std::vector<DataQualityNote>& notes) {
        const auto tolerance = static_cast<EpochSeconds>(p_.future_tolerance_hours * kHour);
        for (const auto& c : in_.conditions) {
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
                                     date_for_people(future_onset ? *c.onset : *c.recorded) + ", more than " +
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
            std::string text = "\"" + (c.display.empty() ? cat_.title_of("dx." + c.concept_id) : c.display) + "\" " +
                               c.code_label + ", " + (s.empty() ? std::string("active (no abatement)") : s);
            if (!v.empty() && v != "confirmed") text += ", verification status " + v + " (counted, not confirmed)";
            if (c.onset) text += ", onset " + date_for_people(*c.onset);
            if (!c.caveat.empty()) text += "; note: " + c.caveat;
            append(f, text, {c.source});
            f.brief = cat_.title_of("dx." + c.concept_id);
        }
    }

    static void append(FactValue& f, const std::string& text, const std::vector<std::string>& sources) {
        f.present = true;
        f.text += f.text.empty() ? text : "; " + text;
        for (const auto& s : sources)
            if (std::find(f.sources.begin(), f.sources.end(), s) == f.sources.end()) f.sources.push_back(s);
    }

    void lab_facts_() {
        corrected_calcium();
        ionized_calcium();
        simple_high("phosphate-high", Analyte::phosphate, p_.phosphate_window_days, p_.phosphate_default_high);
        simple_high("pth-high", Analyte::pth_intact, p_.pth_window_days, p_.pth_default_high);
        egfr_low();
        ca_x_p();
    }

    void corrected_calcium() {
        struct Candidate {
            double value;
            Comparator cmp;
            EpochSeconds t;
            std::optional<double> ref_high;
            std::string text;
            std::vector<std::string> sources;
        };
        std::optional<Candidate> best;
        auto consider = [&](Candidate c) {
            if (!best || c.t > best->t) best = std::move(c);
        };
        if (const LabResult* r = latest_within(Analyte::calcium_corrected, p_.hypercalcemia_window_days))
            consider({r->value, r->comparator, r->effective, r->reference_high,
                      "reported corrected calcium " + value_text(*r) + " on " + date_for_people(r->effective),
                      {r->source}});
        if (const LabResult* r = latest_within(Analyte::calcium_total, p_.hypercalcemia_window_days)) {
            if (!best || r->effective > best->t) {
                const LabResult* alb = nearest(Analyte::albumin, r->effective, p_.albumin_window_hours * kHour);
                if (alb && alb->comparator == Comparator::none && alb->value < p_.normal_albumin_g_dl) {
                    const double corrected = r->value + p_.correction_factor * (p_.normal_albumin_g_dl - alb->value);
                    consider({corrected, r->comparator, r->effective, r->reference_high,
                              "corrected calcium " + std::string(to_string(r->comparator)) + format_number(corrected) +
                                  " mg/dL = total calcium " + value_text(*r) + " on " + date_for_people(r->effective) +
                                  " + " + format_number(p_.correction_factor) + " × (" +
                                  format_number(p_.normal_albumin_g_dl) + " − albumin " + value_text(*alb) + " on " +
                                  date_for_people(alb->effective) + ")",
                              {r->source, alb->source}});
                } else {
                    consider({r->value, r->comparator, r->effective, r->reference_high,
                              "total calcium " + value_text(*r) + " on " + date_for_people(r->effective) +
                                  (alb ? " (albumin " + value_text(*alb) + ": no correction)" : " (no albumin within " +
                                   format_number(p_.albumin_window_hours) + " h: uncorrected)"),
                              alb ? std::vector<std::string>{r->source, alb->source} : std::vector<std::string>{r->source}});
                }
            }
        }
        if (!best) return;
        auto& value = facts_["corrected-calcium"];
        value.text = best->text;
        value.brief = "Ca " + format_number(best->value, 1);
        const std::string unit = "mg/dL";
        const Threshold th = best->ref_high
            ? Threshold{*best->ref_high, format_number(*best->ref_high) + " " + unit + " (reference-range high)"}
            : Threshold{p_.corrected_calcium_default_high,
                        format_number(p_.corrected_calcium_default_high) + " " + unit + " (default threshold)"};
        if (decides_above(best->value, best->cmp, th.value)) {
            auto& f = facts_["corrected-calcium-high"];
            append(f, best->text + " > " + th.text, best->sources);
            f.brief = "corrected Ca " + format_number(best->value, 1) + " mg/dL";
        }
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

    void ionized_calcium() {
        const LabResult* r = latest_within(Analyte::calcium_ionized, p_.hypercalcemia_window_days);
        if (!r) return;
        // clinical-rules.md §1.3: ionized calcium above 1.32 mmol/L (no reference-range override).
        const Threshold th = threshold_for(*r, p_.ionized_calcium_high, false);
        if (decides_above(r->value, r->comparator, th.value)) {
            auto& f = facts_["ionized-calcium-high"];
            append(f, lab_text(*r) + " > " + th.text, {r->source});
            f.brief = "ionized Ca " + format_number(r->value) + " mmol/L";
        }
    }

    void simple_high(const std::string& fact, Analyte a, double window_days, double fallback) {
        const LabResult* r = latest_within(a, window_days);
        if (!r) return;
        const Threshold th = threshold_for(*r, fallback, true);
        if (decides_above(r->value, r->comparator, th.value)) {
            auto& f = facts_[fact];
            append(f, "latest " + lab_text(*r) + " > " + th.text, {r->source});
            f.brief = std::string(analyte_label(a)) + " " + format_number(r->value, 1);
        }
    }

    void egfr_low() {
        const LabResult* r = latest_within(Analyte::egfr, p_.egfr_window_days);
        if (!r) return;
        if (decides_below(r->value, r->comparator, p_.egfr_below)) {
            auto& f = facts_["egfr-low"];
            append(f, "latest " + lab_text(*r) + " < " + format_number(p_.egfr_below) + " mL/min/1.73 m²", {r->source});
            f.brief = "eGFR " + format_number(r->value, 0);
        }
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

    void ca_x_p() {
        for (const LabResult* p : labs(Analyte::phosphate)) {
            if (!within(*p, p_.caxp_window_days)) break;  // sorted latest first
            const LabResult* ca = nearest(Analyte::calcium_total, p->effective, p_.caxp_pairing_hours * kHour);
            if (!ca) continue;
            const double product = ca->value * p->value;
            const auto cmp = product_comparator(ca->comparator, p->comparator);
            auto& v = facts_["ca-x-p"];
            v.brief = "Ca×P " + fixed(product, 1);
            const std::string text = "Ca×P " + std::string(cmp ? to_string(*cmp) : "") + fixed(product, 1) +
                                     " mg²/dL² = total calcium " + value_text(*ca) + " on " +
                                     date_for_people(ca->effective) + " × phosphate " + value_text(*p) + " on " +
                                     date_for_people(p->effective);
            v.text = text;
            v.sources = {ca->source, p->source};
            if (cmp && decides_above(product, *cmp, p_.caxp_threshold)) {
                auto& f = facts_["ca-x-p-high"];
                append(f, text + " > " + format_number(p_.caxp_threshold), {ca->source, p->source});
                f.brief = v.brief;
            }
            return;  // the latest pair decides
        }
    }

    void derived_facts() {
        for (const auto& d : cat_.derived()) {
            FactValue f;
            for (const auto& part : d.any) {
                auto it = facts_.find(part);
                if (it == facts_.end() || !it->second.present) continue;
                f.present = true;
                f.parts.push_back(part);
                for (const auto& s : it->second.sources)
                    if (std::find(f.sources.begin(), f.sources.end(), s) == f.sources.end()) f.sources.push_back(s);
            }
            if (f.present) {
                f.brief = d.title;
                facts_[d.id] = std::move(f);
            }
        }
    }

    bool present(const std::string& id) const {
        auto it = facts_.find(id);
        return it != facts_.end() && it->second.present;
    }

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
                        list += (list.empty() ? "" : "; ") + cat_.title_of(id) + ": " + f.text;
                    }
                    s = comma + 1;
                }
                out += list.empty() ? "none" : list;
            } else if (key == "order" && !order_.empty()) {
                out += order_display_;
            } else if (auto it = facts_.find(key); it != facts_.end() && !it->second.brief.empty()) {
                out += it->second.brief;
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
            fd.evidence.push_back({id, cat_.title_of(id), f.text, f.sources});
            for (const auto& s : f.sources)
                if (std::find(fd.sources.begin(), fd.sources.end(), s) == fd.sources.end()) fd.sources.push_back(s);
        }
        for (const auto& n : r.notes) {
            if (!n.if_any.empty() &&
                std::none_of(n.if_any.begin(), n.if_any.end(), [&](const std::string& f) { return present(f); }))
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
        std::string d = r.title + " (rule " + r.id + " " + r.version + ", severity " + std::string(to_string(r.severity)) +
                        ")\nWhy:\n";
        for (const auto& e : fd.evidence) {
            d += "- " + e.label + ": " + e.text + " [";
            for (std::size_t i = 0; i < e.sources.size(); ++i) d += (i ? ", " : "") + e.sources[i];
            d += "]\n";
        }
        for (const auto& n : fd.notes) d += n + "\n";
        d += "Reference: " + r.citation_text + " PMID " + r.citation_pmid + ".";
        fd.detail = std::move(d);
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
            mix(e.text);
            for (const auto& s : e.sources) mix(s);
        }
        char buf[17];
        std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
        fd.evidence_hash = buf;
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
    std::vector<const LabResult*> labs_[analyte_count];
    FactMap facts_;
    std::string order_;          // evaluate_orders: the order being judged
    std::string order_display_;  // and its drug, for {order}
};

}  // namespace

std::string format_number(double v, int decimals) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    std::string s = buf;
    if (s.find('.') != std::string::npos) {
        while (!s.empty() && s.back() == '0') s.pop_back();
        if (!s.empty() && s.back() == '.') s.pop_back();
    }
    if (s == "-0") s = "0";
    return s;
}

Evaluation evaluate(const PatientFacts& facts, EpochSeconds now, const RuleCatalog& catalog) {
    return Evaluator(facts, now, catalog).run();
}

Evaluation evaluate_orders(const PatientFacts& facts, const std::vector<OrderFact>& orders, EpochSeconds now,
                           const RuleCatalog& catalog) {
    return Evaluator(facts, now, catalog).run_orders(orders);
}

}  // namespace calcalert::rules
