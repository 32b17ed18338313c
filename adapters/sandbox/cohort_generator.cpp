// The generator: one patient from the compiled archetypes (archetype_model.hpp) and the writers of
// NDJSON, transaction Bundles and the ground truth.
#include "adapters/sandbox/cohort_generator.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include <Poco/SHA1Engine.h>
#include <Poco/UUID.h>
#include <Poco/UUIDGenerator.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "adapters/sandbox/archetype_model.hpp"
#include "fhir/datetime.hpp"
#include "mappings/json_writer.hpp"

namespace calcalert::sandbox {
namespace {

// ---------------------------------------------------------------------------------------------
// Random numbers: splitmix64 and our own mapping to ranges, identical on every platform.

std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

class Rng {
public:
    explicit Rng(std::uint64_t state) : state_(state) {}
    std::uint64_t next() {
        state_ += 0x9E3779B97F4A7C15ULL;
        return mix64(state_);
    }
    // Uniform in [0, n) for n > 0: draws below 2^64 mod n are rejected, so there is no modulo bias.
    std::uint64_t below(std::uint64_t n) {
        const std::uint64_t reject_below = (0 - n) % n;
        for (;;) {
            const std::uint64_t r = next();
            if (r >= reject_below) return r % n;
        }
    }
    // Uniform integer in [lo, hi].
    std::int64_t between(std::int64_t lo, std::int64_t hi) {
        return lo + static_cast<std::int64_t>(below(static_cast<std::uint64_t>(hi - lo) + 1));
    }
    bool chance(unsigned percent) { return below(100) < percent; }
    template <class T>
    const T& pick(const std::vector<T>& v) {
        return v[v.size() == 1 ? 0 : static_cast<std::size_t>(below(v.size()))];
    }

private:
    std::uint64_t state_;
};

// The generator of one patient: a function of (seed, index) only.
std::uint64_t patient_stream(std::uint64_t seed, std::size_t index) {
    return mix64(mix64(seed ^ 0x5A17C0DE5EEDULL) + mix64(static_cast<std::uint64_t>(index) + 0x51ED270B27ULL));
}
std::uint64_t deck_stream(std::uint64_t seed, std::size_t block) {
    return mix64(mix64(seed ^ 0xDECCA11ULL) ^ mix64(static_cast<std::uint64_t>(block) * 0x2545F4914F6CDD1DULL + 1));
}

constexpr EpochSeconds kMinute = 60;
constexpr EpochSeconds kHour = 3600;
constexpr EpochSeconds kDay = 86400;
constexpr const char* kSct = "http://snomed.info/sct";
constexpr const char* kIcd10 = "http://hl7.org/fhir/sid/icd-10-cm";
constexpr const char* kUcum = "http://unitsofmeasure.org";

using Impl = ArchetypeLibrary::Impl;

// ---------------------------------------------------------------------------------------------
// JSON helpers.

using Writer = mappings::JsonWriter;
using mappings::kv;
using mappings::str;

void coding(Writer& w, std::string_view system, std::string_view code, std::string_view display) {
    w.StartObject();
    kv(w, "system", system);
    kv(w, "code", code);
    if (!display.empty()) kv(w, "display", display);
    w.EndObject();
}
void codeable(Writer& w, const char* key, std::string_view system, std::string_view code) {
    w.Key(key);
    w.StartObject();
    w.Key("coding");
    w.StartArray();
    coding(w, system, code, "");
    w.EndArray();
    w.EndObject();
}

std::string date_only(EpochSeconds t) { return fhir::format_datetime(t).substr(0, 10); }

struct Quantity {
    double value = 0;
    int decimals = 1;
    std::string unit;
    std::string comparator;
};

void quantity(Writer& w, const char* key, const Quantity& q) {
    w.Key(key);
    w.StartObject();
    w.Key("value");
    if (q.decimals <= 0)
        w.Int64(std::llround(q.value));
    else
        w.Double(q.value);
    if (!q.comparator.empty()) kv(w, "comparator", q.comparator);
    kv(w, "unit", q.unit);
    kv(w, "system", kUcum);
    kv(w, "code", q.unit);
    w.EndObject();
}

const char* category_display(std::string_view c) {
    if (c == "laboratory") return "Laboratory";
    if (c == "vital-signs") return "Vital Signs";
    if (c == "encounter-diagnosis") return "Encounter Diagnosis";
    return "Problem List Item";
}

void category(Writer& w, const char* system, const std::string& c) {
    w.Key("category");
    w.StartArray();
    w.StartObject();
    w.Key("coding");
    w.StartArray();
    coding(w, system, c, category_display(c));
    w.EndArray();
    w.EndObject();
    w.EndArray();
}

void code_element(Writer& w, const char* key, const std::vector<Coding>& codings, const std::string& text) {
    w.Key(key);
    w.StartObject();
    w.Key("coding");
    w.StartArray();
    for (const auto& c : codings) coding(w, c.system, c.code, c.display);
    w.EndArray();
    kv(w, "text", text);
    w.EndObject();
}

// ---------------------------------------------------------------------------------------------
// The resources of one patient, as plain data until they are rendered.

struct Observation {
    std::string suffix;
    std::string category = "laboratory";
    Coding code;
    std::string text;
    std::optional<Quantity> value;
    std::vector<std::tuple<Coding, std::string, Quantity>> components;
    EpochSeconds effective = 0;
    bool as_period = false;
    std::string status = "final";
    std::optional<double> ref_low, ref_high;
    std::string ref_unit;
    int ref_decimals = 1;
    std::optional<EpochSeconds> issued;
};

struct Procedure {
    Coding code;
    std::string status;
    EpochSeconds performed = 0;
};

struct Condition {
    std::vector<Coding> codings;
    std::string text;
    std::string clinical;      // "" = absent
    std::string verification;  // "" = absent
    std::string category = "problem-list-item";
    EpochSeconds onset = 0;
    std::optional<EpochSeconds> abatement;
    EpochSeconds recorded = 0;
};

std::string render_observation(const Observation& o, const std::string& id, const std::string& subject) {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    kv(w, "resourceType", "Observation");
    kv(w, "id", id);
    kv(w, "status", o.status);
    category(w, "http://terminology.hl7.org/CodeSystem/observation-category", o.category);
    code_element(w, "code", {o.code}, o.text);
    w.Key("subject");
    w.StartObject();
    kv(w, "reference", subject);
    w.EndObject();
    if (o.as_period) {
        w.Key("effectivePeriod");
        w.StartObject();
        kv(w, "start", fhir::format_datetime(o.effective));
        kv(w, "end", fhir::format_datetime(o.effective + 10 * kMinute));
        w.EndObject();
    } else {
        kv(w, "effectiveDateTime", fhir::format_datetime(o.effective));
    }
    if (o.issued) kv(w, "issued", fhir::format_datetime(*o.issued));
    if (o.value) quantity(w, "valueQuantity", *o.value);
    if (o.ref_low || o.ref_high) {
        w.Key("referenceRange");
        w.StartArray();
        w.StartObject();
        if (o.ref_low) quantity(w, "low", Quantity{*o.ref_low, o.ref_decimals, o.ref_unit, ""});
        if (o.ref_high) quantity(w, "high", Quantity{*o.ref_high, o.ref_decimals, o.ref_unit, ""});
        w.EndObject();
        w.EndArray();
    }
    if (!o.components.empty()) {
        w.Key("component");
        w.StartArray();
        for (const auto& [code, text, q] : o.components) {
            w.StartObject();
            code_element(w, "code", {code}, text);
            quantity(w, "valueQuantity", q);
            w.EndObject();
        }
        w.EndArray();
    }
    w.EndObject();
    return sb.GetString();
}

std::string render_condition(const Condition& c, const std::string& id, const std::string& subject) {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    kv(w, "resourceType", "Condition");
    kv(w, "id", id);
    if (!c.clinical.empty()) codeable(w, "clinicalStatus", "http://terminology.hl7.org/CodeSystem/condition-clinical", c.clinical);
    if (!c.verification.empty())
        codeable(w, "verificationStatus", "http://terminology.hl7.org/CodeSystem/condition-ver-status", c.verification);
    category(w, "http://terminology.hl7.org/CodeSystem/condition-category", c.category);
    code_element(w, "code", c.codings, c.text);
    w.Key("subject");
    w.StartObject();
    kv(w, "reference", subject);
    w.EndObject();
    kv(w, "onsetDateTime", date_only(c.onset));
    if (c.abatement) kv(w, "abatementDateTime", date_only(*c.abatement));
    kv(w, "recordedDate", fhir::format_datetime(c.recorded));
    w.EndObject();
    return sb.GetString();
}

std::string render_procedure(const Procedure& p, const std::string& id, const std::string& subject) {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    kv(w, "resourceType", "Procedure");
    kv(w, "id", id);
    kv(w, "status", p.status);
    code_element(w, "code", {p.code}, p.code.display);
    w.Key("subject");
    w.StartObject();
    kv(w, "reference", subject);
    w.EndObject();
    kv(w, "performedDateTime", fhir::format_datetime(p.performed));
    w.EndObject();
    return sb.GetString();
}

// ---------------------------------------------------------------------------------------------
// Building one patient from the compiled items.

class Builder {
public:
    Builder(const Impl& lib, std::uint64_t stream, EpochSeconds now_time, std::string pid)
        : lib_(lib), rng_(stream), now_(now_time), pid_(std::move(pid)) {
        const auto& g = rng_.pick(lib.given);
        given_ = g.first;
        gender_ = g.second;
        family_ = rng_.pick(lib.family);
        min_age_ = lib.defaults.age_lo;
        max_age_ = lib.defaults.age_hi;
    }

    void run(const std::vector<Item>& items) {
        for (const auto& it : items) run(it);
    }

    SyntheticPatient finish(std::size_t index, const Archetype& a) {
        SyntheticPatient p;
        p.index = index;
        p.id = pid_;
        p.name = given_ + " " + family_;
        p.archetype = a.name;
        p.expected = a.expected;
        const std::string subject = "Patient/" + pid_;
        p.resources.push_back({"Patient", pid_, render_patient()});
        int n = 0;
        for (const auto& o : observations_) {
            const std::string id = pid_ + "-" + o.suffix + "-" + std::to_string(++n);
            p.resources.push_back({"Observation", id, render_observation(o, id, subject)});
        }
        for (const auto& c : conditions_) {
            const std::string id = pid_ + "-cond-" + std::to_string(++n);
            p.resources.push_back({"Condition", id, render_condition(c, id, subject)});
        }
        for (const auto& pr : procedures_) {
            const std::string id = pid_ + "-proc-" + std::to_string(++n);
            p.resources.push_back({"Procedure", id, render_procedure(pr, id, subject)});
        }
        return p;
    }

private:
    bool is_child() const { return max_age_ < 18; }

    static std::int64_t scaled(double v, int decimals) {
        double scale = 1;
        for (int i = 0; i < decimals; ++i) scale *= 10;
        return std::llround(v * scale);
    }
    Quantity draw(const Range& r, int decimals, const std::string& unit) {
        double scale = 1;
        for (int i = 0; i < decimals; ++i) scale *= 10;
        const auto v = rng_.between(scaled(*r.lo, decimals), scaled(*r.hi, decimals));
        return Quantity{static_cast<double>(v) / scale, decimals, unit, ""};
    }

    std::string weighted(const std::vector<std::pair<std::string, unsigned>>& w) {
        unsigned total = 0;
        for (const auto& [n, x] : w) total += x;
        auto r = static_cast<unsigned>(rng_.below(total));
        for (const auto& [n, x] : w) {
            if (r < x) return n;
            r -= x;
        }
        return w.back().first;
    }

    EpochSeconds time_of(const TimeSpec& t, const std::string& where) {
        EpochSeconds base = now_;
        if (!t.from.empty()) {
            auto it = times_.find(t.from);
            if (it == times_.end()) throw std::logic_error(where + ": the time '" + t.from + "' was not set");
            base = it->second;
        }
        return base + t.sign * rng_.between(t.lo_minutes, t.hi_minutes) * kMinute;
    }
    EpochSeconds at(const At& a, const std::string& where) {
        if (a.name.empty()) return time_of(a.spec, where);
        auto it = times_.find(a.name);
        if (it == times_.end()) throw std::logic_error(where + ": the time '" + a.name + "' was not set");
        return it->second;
    }

    void run(const Item& it) {
        if (!it.when_renal.empty() && std::find(it.when_renal.begin(), it.when_renal.end(), renal_) == it.when_renal.end())
            return;
        if (it.when_child && *it.when_child != is_child()) return;
        if (it.chance < 100 && !rng_.chance(it.chance)) return;
        switch (it.kind) {
            case Item::Kind::group: run(it.items); break;
            case Item::Kind::one_of: {
                unsigned total = 0;
                for (const auto& [w, items] : it.alternatives) total += w;
                auto r = static_cast<unsigned>(rng_.below(total));
                for (const auto& [w, items] : it.alternatives) {
                    if (r < w) {
                        run(items);
                        break;
                    }
                    r -= w;
                }
                break;
            }
            case Item::Kind::time: times_[it.time_name] = time_of(it.time_spec, it.where); break;
            case Item::Kind::renal: renal_ = it.renal; break;
            case Item::Kind::age:
                min_age_ = it.age_lo;
                max_age_ = it.age_hi;
                break;
            case Item::Kind::condition: condition(it); break;
            case Item::Kind::lab: lab(it); break;
            case Item::Kind::observation: observation(it); break;
            case Item::Kind::procedure:
                procedures_.push_back({rng_.pick(it.procedure_codes), rng_.pick(it.status), at(it.at, it.where)});
                break;
        }
    }

    std::string system_uri(const std::string& canonical) {
        auto it = lib_.system_aliases.find(canonical);
        if (it == lib_.system_aliases.end() || it->second.size() < 2) return canonical;
        return rng_.pick(it->second);
    }

    Observation& add_observation(std::string suffix, const std::string& cat, Coding code, std::string text,
                                 EpochSeconds t, const std::vector<std::string>& status) {
        Observation o;
        o.suffix = std::move(suffix);
        o.category = cat;
        o.text = text.empty() ? code.display : std::move(text);
        o.code = std::move(code);
        o.effective = t;
        o.status = status.empty() ? weighted(lib_.defaults.observation_status) : rng_.pick(status);
        if (cat == "laboratory") {
            o.as_period = rng_.chance(lib_.defaults.lab_period_percent);
            if (rng_.chance(lib_.defaults.lab_issued_percent)) {
                const EpochSeconds issued = t + rng_.between(30, 360) * kMinute;
                if (issued <= now_ || t > now_) o.issued = issued;
            }
        }
        observations_.push_back(std::move(o));
        return observations_.back();
    }

    void lab(const Item& it) {
        const AnalyteSpec& a = *it.analyte;
        const UnitSpec* unit = &a.units[it.units.front()];
        if (it.units.size() > 1) {
            unsigned total = 0;
            for (std::size_t i : it.units) total += a.units[i].weight;
            auto r = static_cast<unsigned>(rng_.below(total));
            for (std::size_t i : it.units) {
                if (r < a.units[i].weight) {
                    unit = &a.units[i];
                    break;
                }
                r -= a.units[i].weight;
            }
        }
        const Coding code = it.code ? *it.code : rng_.pick(unit->codes);
        Range range;
        if (it.value) {
            range = *it.value;
        } else {
            const Band* b = it.bands.size() == 1 ? it.bands.front() : rng_.pick(it.bands);
            range = b->by_unit.at(unit->band_unit());
        }
        Quantity q = draw(range, unit->decimals, unit->unit);
        q.comparator = it.comparator;
        const EpochSeconds t = at(it.at, it.where);
        const Band* ref = nullptr;
        switch (it.ref) {
            case Item::Ref::none: break;
            case Item::Ref::custom: ref = it.ref_band; break;
            case Item::Ref::usual: ref = a.ref; break;
            case Item::Ref::usual_sometimes:
                if (a.ref && unit->ref && rng_.chance(a.ref_percent)) ref = a.ref;
                break;
        }
        Observation& obs = add_observation(a.suffix, "laboratory", code, a.text, t, it.status);
        obs.value = q;
        if (ref) {
            const Range& r = ref->by_unit.at(unit->band_unit());
            obs.ref_low = r.lo;
            obs.ref_high = r.hi;
            obs.ref_unit = unit->unit;
            obs.ref_decimals = unit->decimals;
        }
    }

    void observation(const Item& it) {
        const EpochSeconds t = at(it.at, it.where);
        const OtherCode& oc = *it.other;
        Observation& obs = add_observation(it.suffix, it.category, rng_.pick(oc.codes), oc.text, t, {"final"});
        if (it.value) obs.value = draw(*it.value, it.decimals, it.unit);
        for (const auto& c : it.components) {
            const Coding& code = c.code->codes.front();
            obs.components.emplace_back(code, c.code->text.empty() ? code.display : c.code->text,
                                        draw(c.value, c.decimals, c.unit));
        }
    }

    void condition(const Item& it) {
        const Defaults& d = lib_.defaults;
        const CondPool& pool = rng_.pick(it.pools);
        const CondCode& first = rng_.pick(pool.codes);
        Condition c;
        c.codings.push_back(first.coding);
        c.text = first.text.empty() ? first.coding.display : first.text;
        // Many records carry SNOMED CT and ICD-10-CM side by side.
        if (first.coding.system == kSct && !it.system_given && pool.icd10_partner &&
            rng_.chance(d.snomed_with_icd10_percent))
            c.codings.push_back(pool.icd10_partner->coding);
        const bool strip = it.strip_dot ? *it.strip_dot : rng_.chance(d.icd10_without_dot_percent);
        for (auto& coding : c.codings) {
            if (coding.system == kIcd10 && strip)
                coding.code.erase(std::remove(coding.code.begin(), coding.code.end(), '.'), coding.code.end());
            coding.system = system_uri(coding.system);
        }
        c.category = rng_.chance(d.encounter_percent) ? "encounter-diagnosis" : "problem-list-item";
        const bool abated = it.abated_chance > 0 && rng_.chance(it.abated_chance);
        if (!it.clinical.empty())
            c.clinical = rng_.pick(it.clinical);
        else if (c.category == "encounter-diagnosis" && !abated && rng_.chance(d.encounter_without_clinical_percent))
            c.clinical = "";  // counts: no clinicalStatus and no abatement (clinical-rules.md §1.1)
        else
            c.clinical = weighted(d.clinical_status);
        c.verification = it.verification.empty() ? weighted(d.verification_status) : rng_.pick(it.verification);
        const int years = is_child() ? d.child_onset_years : d.onset_years;
        const std::int64_t max_minutes = std::max<std::int64_t>(60, years * 365) * 1440;
        c.onset = now_ - rng_.between(40 * 1440, max_minutes) * kMinute;
        c.onset -= c.onset % kDay;  // a date
        if (abated) c.abatement = now_ - rng_.between(2, std::max<std::int64_t>(3, (now_ - c.onset) / kDay - 1)) * kDay;
        const EpochSeconds recorded_day = c.onset + rng_.between(0, 30) * kDay;
        c.recorded = std::min(now_ - kHour, recorded_day + rng_.between(8 * 60, 17 * 60) * kMinute);
        conditions_.push_back(std::move(c));
    }

    std::string render_patient() {
        const auto age_days =
            rng_.between(static_cast<std::int64_t>(min_age_) * 365, static_cast<std::int64_t>(max_age_) * 365 + 364);
        rapidjson::StringBuffer sb;
        Writer w(sb);
        w.StartObject();
        kv(w, "resourceType", "Patient");
        kv(w, "id", pid_);
        w.Key("meta");
        w.StartObject();
        w.Key("tag");
        w.StartArray();
        coding(w, "urn:calcalert:sandbox", "synthetic", "calcalert synthetic cohort");
        w.EndArray();
        w.EndObject();
        w.Key("identifier");
        w.StartArray();
        w.StartObject();
        kv(w, "system", "urn:calcalert:sandbox:patient");
        kv(w, "value", pid_);
        w.EndObject();
        w.EndArray();
        w.Key("active");
        w.Bool(true);
        w.Key("name");
        w.StartArray();
        w.StartObject();
        kv(w, "use", "official");
        kv(w, "family", family_);
        w.Key("given");
        w.StartArray();
        str(w, given_);
        w.EndArray();
        w.EndObject();
        w.EndArray();
        kv(w, "gender", gender_);
        kv(w, "birthDate", date_only(now_ - age_days * kDay));
        w.EndObject();
        return sb.GetString();
    }

    const Impl& lib_;
    Rng rng_;
    const EpochSeconds now_;
    std::string pid_;
    std::string given_, family_, gender_;
    int min_age_ = 35, max_age_ = 88;
    Renal renal_ = Renal::normal;
    std::map<std::string, EpochSeconds> times_;
    std::vector<Observation> observations_;
    std::vector<Condition> conditions_;
    std::vector<Procedure> procedures_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

CohortGenerator::CohortGenerator(std::uint64_t seed, EpochSeconds now) : CohortGenerator(seed, now, default_library()) {}

CohortGenerator::CohortGenerator(std::uint64_t seed, EpochSeconds now, std::shared_ptr<const ArchetypeLibrary> library)
    : seed_(seed), now_(now), library_(std::move(library)) {
    if (!library_) throw std::invalid_argument("CohortGenerator: no archetype library");
}

SyntheticPatient CohortGenerator::patient(std::size_t index) const {
    const Impl& lib = library_->impl();
    const unsigned total = lib.total;
    // The deck of this block: each archetype `weight` times, shuffled (Fisher-Yates) by the block's stream.
    std::vector<std::uint16_t> deck;
    deck.reserve(total);
    for (std::size_t i = 0; i < lib.list.size(); ++i)
        for (unsigned k = 0; k < lib.list[i].weight; ++k) deck.push_back(static_cast<std::uint16_t>(i));
    Rng shuffle(deck_stream(seed_, index / total));
    for (std::size_t i = deck.size() - 1; i > 0; --i)
        std::swap(deck[i], deck[static_cast<std::size_t>(shuffle.below(i + 1))]);
    return patient_of(deck[index % total], index);
}

SyntheticPatient CohortGenerator::patient_of(std::size_t a, std::size_t index) const {
    const Impl& lib = library_->impl();
    if (a >= lib.list.size()) throw std::out_of_range("CohortGenerator: no archetype number " + std::to_string(a));
    Builder b(lib, patient_stream(seed_, index), now_, "syn-" + std::to_string(seed_) + "-" + std::to_string(index));
    b.run(lib.items[a]);
    b.run(lib.background);
    return b.finish(index, lib.list[a]);
}

std::vector<SyntheticPatient> generate_cohort(std::size_t patients, std::uint64_t seed, EpochSeconds now) {
    CohortGenerator g(seed, now);
    std::vector<SyntheticPatient> out;
    out.reserve(patients);
    for (std::size_t i = 0; i < patients; ++i) out.push_back(g.patient(i));
    return out;
}

std::string resource_urn(std::string_view type, std::string_view id) {
    Poco::SHA1Engine sha1;
    static const Poco::UUID ns =
        Poco::UUIDGenerator::defaultGenerator().createFromName(Poco::UUID::uri(), "urn:calcalert:sandbox", sha1);
    const std::string name = std::string(type) + "/" + std::string(id);
    return "urn:uuid:" + Poco::UUIDGenerator::defaultGenerator()
                             .createFromName(ns, name, sha1, Poco::UUID::UUID_NAME_BASED_SHA1)
                             .toString();
}

void write_ndjson(const SyntheticPatient& patient, std::ostream& patients, std::ostream& observations,
                  std::ostream& conditions, std::ostream& procedures) {
    for (const auto& r : patient.resources) {
        std::ostream& out = r.type == "Patient"       ? patients
                            : r.type == "Observation" ? observations
                            : r.type == "Condition"   ? conditions
                                                      : procedures;
        out << r.json << '\n';
    }
}

TransactionBundleWriter::TransactionBundleWriter(std::ostream& out) : out_(out) {
    out_ << R"({"resourceType":"Bundle","type":"transaction","entry":[)";
}

void TransactionBundleWriter::add(const SyntheticPatient& patient) {
    if (finished_) throw std::logic_error("TransactionBundleWriter: add() after finish()");
    const std::string patient_urn = resource_urn("Patient", patient.id);
    // Every Observation and Condition was rendered by render_observation / render_condition with this
    // exact subject element; it is swapped for the patient's urn:uuid. Ids and urns need no escaping.
    const std::string subject = R"("subject":{"reference":"Patient/)" + patient.id + R"("})";
    const std::string urn_subject = R"("subject":{"reference":")" + patient_urn + R"("})";
    std::string entry;
    for (const auto& r : patient.resources) {
        entry.clear();
        entry += entries_ == 0 ? "\n" : ",\n";
        entry += R"({"fullUrl":")";
        entry += r.type == "Patient" ? patient_urn : resource_urn(r.type, r.id);
        entry += R"(","resource":)";
        if (r.type == "Patient") {
            entry += r.json;
        } else {
            const auto at = r.json.find(subject);
            if (at == std::string::npos)
                throw std::logic_error("synthetic " + r.type + "/" + r.id + " has no subject Patient/" + patient.id);
            entry.append(r.json, 0, at);
            entry += urn_subject;
            entry.append(r.json, at + subject.size(), std::string::npos);
        }
        entry += R"(,"request":{"method":"PUT","url":")";
        entry += r.type;
        entry += '/';
        entry += r.id;
        entry += R"("}})";
        out_ << entry;
        ++entries_;
    }
}

void TransactionBundleWriter::finish() {
    if (finished_) return;
    out_ << "\n]}\n";
    finished_ = true;
}

std::string transaction_bundle(const std::vector<SyntheticPatient>& batch) {
    std::ostringstream out;
    TransactionBundleWriter w(out);
    for (const auto& p : batch) w.add(p);
    w.finish();
    return out.str();
}

ExpectedWriter::ExpectedWriter(std::ostream& out, EpochSeconds now, std::uint64_t seed) : out_(out) {
    out_ << R"({"now":")" << fhir::format_datetime(now) << R"(","seed":)" << seed << R"(,"patients":[)";
}

void ExpectedWriter::add(const SyntheticPatient& patient) {
    if (finished_) throw std::logic_error("ExpectedWriter: add() after finish()");
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    kv(w, "patient", patient.reference());
    kv(w, "name", patient.name);
    kv(w, "archetype", patient.archetype);
    w.Key("expect");
    w.StartArray();
    for (const auto& e : patient.expected) str(w, e);
    w.EndArray();
    w.EndObject();
    out_ << (count_ == 0 ? "\n" : ",\n") << sb.GetString();
    ++count_;
}

void ExpectedWriter::finish() {
    if (finished_) return;
    out_ << "\n]}\n";
    finished_ = true;
}

}  // namespace calcalert::sandbox
