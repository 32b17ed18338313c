// The archetype file's loader: reads adapters/sandbox/data/archetypes.json strictly (every key known,
// every name defined, every code checked against mappings/data) and compiles it into the items the
// generator runs (archetype_model.hpp). Errors name the file, the archetype and the key path.
#include "adapters/sandbox/cohort_generator.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include "adapters/sandbox/archetype_model.hpp"
#include "mappings/data_root.hpp"
#include "mappings/terminology.hpp"
#include "mappings/tsv.hpp"

namespace calcalert::sandbox {
namespace {

constexpr const char* kLoinc = "http://loinc.org";
constexpr const char* kIcd10 = "http://hl7.org/fhir/sid/icd-10-cm";

using Json = rapidjson::Value;
using Impl = ArchetypeLibrary::Impl;

// ---------------------------------------------------------------------------------------------
// The terminology rows the generator draws from (the TSVs of mappings/data, read as written).

struct TermRows {
    mappings::Terminology term;
    std::map<std::string, std::vector<CondCode>> concept_codes;  // exact rows and word readings, in file order
    struct Prefix {
        std::string concept_id, system, display;
    };
    std::map<std::string, std::vector<Prefix>> prefixes;  // prefix as written -> its rows
    struct Lab {
        std::string analyte, property;
        Coding coding;
    };
    std::vector<Lab> labs;
    std::map<std::string, std::vector<Coding>> procedures;  // procedure concept -> its codes
    std::map<std::string, std::vector<std::string>> aliases;  // canonical system -> the URIs accepted for it
};

std::string capitalized(std::string s) {
    if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
    return s;
}

TermRows read_terminology(const std::filesystem::path& dir) {
    TermRows t{mappings::Terminology::load(dir), {}, {}, {}, {}, {}};
    auto canonical = [&](const std::string& s) { return std::string(t.term.canonical_system(s).value_or(s)); };
    for (const auto& r : mappings::read_tsv(dir / "systems.tsv", 2)) t.aliases[r.cells[1]].push_back(r.cells[0]);
    for (const auto& r : mappings::read_tsv(dir / "condition-codes.tsv", 5)) {
        if (r.cells[3] == "prefix")
            t.prefixes[r.cells[2]].push_back({r.cells[0], canonical(r.cells[1]), r.cells[4]});
        else
            t.concept_codes[r.cells[0]].push_back({{canonical(r.cells[1]), r.cells[2], r.cells[4]}, ""});
    }
    for (const auto& r : mappings::read_tsv(dir / "condition-words.tsv", 5)) {
        if (r.cells[4] == "(none)") continue;
        const std::string first = r.cells[4].substr(0, r.cells[4].find('|'));
        t.concept_codes[r.cells[3]].push_back({{canonical(r.cells[0]), r.cells[1], r.cells[2]}, capitalized(first)});
    }
    for (const auto& r : mappings::read_tsv(dir / "procedure-codes.tsv", 5))
        t.procedures[r.cells[0]].push_back({canonical(r.cells[1]), r.cells[2], r.cells[4]});
    for (const auto& r : mappings::read_tsv(dir / "lab-codes.tsv", 5))
        t.labs.push_back({r.cells[2], r.cells[3], {canonical(r.cells[0]), r.cells[1], r.cells[4]}});
    return t;
}

// ---------------------------------------------------------------------------------------------
// Strict reading: every key known, errors naming the file, the archetype and the key path.

struct Ctx {
    std::string file;
    std::string archetype;  // "" outside the archetypes
    [[noreturn]] void fail(const std::string& path, const std::string& msg) const {
        throw ArchetypeError(file + ": " + (archetype.empty() ? "" : "archetype '" + archetype + "': ") + path + ": " +
                             msg);
    }
};

class Obj {
public:
    Obj(const Ctx& ctx, const Json& v, std::string path) : ctx_(ctx), v_(v), path_(std::move(path)) {
        if (!v.IsObject()) ctx_.fail(path_, "expected an object");
        if (const Json* c = get("comment"); c && !c->IsString()) fail("comment", "expected a string");
    }
    std::string at(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
    [[noreturn]] void fail(const std::string& key, const std::string& msg) const { ctx_.fail(at(key), msg); }
    const Json* get(const std::string& key) {
        seen_.insert(key);
        auto it = v_.FindMember(key.c_str());
        return it == v_.MemberEnd() ? nullptr : &it->value;
    }
    bool has(const std::string& key) const { return v_.HasMember(key.c_str()); }
    const Json& need(const std::string& key) {
        const Json* v = get(key);
        if (!v) fail(key, "missing");
        return *v;
    }
    std::string str(const std::string& key) {
        const Json& v = need(key);
        if (!v.IsString()) fail(key, "expected a string");
        return v.GetString();
    }
    std::optional<std::string> opt_str(const std::string& key) {
        const Json* v = get(key);
        if (!v) return std::nullopt;
        if (!v->IsString()) fail(key, "expected a string");
        return std::string(v->GetString());
    }
    // A string, or an array of strings to pick from.
    std::vector<std::string> strs(const std::string& key) {
        std::vector<std::string> out;
        const Json* v = get(key);
        if (!v) return out;
        if (v->IsString()) return {v->GetString()};
        if (!v->IsArray() || v->Empty()) fail(key, "expected a string or a non-empty array of strings");
        for (const auto& s : v->GetArray()) {
            if (!s.IsString()) fail(key, "expected a string or a non-empty array of strings");
            out.emplace_back(s.GetString());
        }
        return out;
    }
    long whole(const std::string& key, long lo, long hi, std::optional<long> fallback = std::nullopt) {
        const Json* v = get(key);
        if (!v) {
            if (!fallback) fail(key, "missing");
            return *fallback;
        }
        if (!v->IsInt64() || v->GetInt64() < lo || v->GetInt64() > hi)
            fail(key, "expected a whole number from " + std::to_string(lo) + " to " + std::to_string(hi));
        return static_cast<long>(v->GetInt64());
    }
    std::optional<bool> opt_bool(const std::string& key) {
        const Json* v = get(key);
        if (!v) return std::nullopt;
        if (!v->IsBool()) fail(key, "expected true or false");
        return v->GetBool();
    }
    // [lo, hi]: numbers with lo <= hi; null allowed (a reference range without that limit) when `open`.
    Range range(const std::string& key, bool open = false) {
        const Json& v = need(key);
        return range_of(v, at(key), open);
    }
    Range range_of(const Json& v, const std::string& where, bool open) const {
        const std::string want = open ? "expected [low, high] of numbers or null" : "expected [low, high] of numbers";
        if (!v.IsArray() || v.Size() != 2) ctx_.fail(where, want);
        Range r;
        for (rapidjson::SizeType i = 0; i < 2; ++i) {
            const Json& n = v[i];
            if (n.IsNull() && open) continue;
            if (!n.IsNumber() || !std::isfinite(n.GetDouble())) ctx_.fail(where, want);
            (i == 0 ? r.lo : r.hi) = n.GetDouble();
        }
        if (!open && !(r.lo && r.hi)) ctx_.fail(where, want);
        if (r.lo && r.hi && *r.lo > *r.hi) ctx_.fail(where, "low is above high");
        if (!r.lo && !r.hi) ctx_.fail(where, "a range needs a low or a high");
        return r;
    }
    const Json& value() const { return v_; }
    const std::string& path() const { return path_; }
    const Ctx& ctx() const { return ctx_; }
    void finish() const {
        for (auto it = v_.MemberBegin(); it != v_.MemberEnd(); ++it)
            if (!seen_.count(it->name.GetString())) fail(it->name.GetString(), "unknown key");
    }

private:
    const Ctx& ctx_;
    const Json& v_;
    std::string path_;
    std::set<std::string> seen_;
};

std::vector<std::pair<std::string, unsigned>> weights_of(Obj& o, const std::string& key,
                                                         const std::set<std::string>& allowed) {
    Obj w(o.ctx(), o.need(key), o.at(key));
    std::vector<std::pair<std::string, unsigned>> out;
    for (auto it = w.value().MemberBegin(); it != w.value().MemberEnd(); ++it) {
        const std::string name = it->name.GetString();
        if (name == "comment") continue;
        if (!allowed.count(name)) w.fail(name, "not a status that may be drawn");
        out.emplace_back(name, static_cast<unsigned>(w.whole(name, 0, 1000000)));
    }
    unsigned total = 0;
    for (const auto& [n, x] : out) total += x;
    if (total == 0) o.fail(key, "the weights add up to 0");
    w.finish();
    return out;
}

const std::set<std::string> kObservationStatuses{"registered", "preliminary",      "final",  "amended",
                                                 "corrected",  "cancelled",        "unknown", "entered-in-error"};
const std::set<std::string> kClinicalStatuses{"active",   "recurrence", "relapse", "inactive",
                                              "remission", "resolved",  "absent"};
const std::set<std::string> kVerificationStatuses{"unconfirmed", "provisional", "differential",
                                                  "confirmed",   "refuted",     "entered-in-error"};

// ---------------------------------------------------------------------------------------------
// The loader.

class Loader {
public:
    Loader(Impl& lib, const TermRows& rows, const rapidjson::Document& doc, Ctx& ctx)
        : lib_(lib), rows_(rows), doc_(doc), ctx_(ctx) {}

    void load() {
        Obj top(ctx_, doc_, "");
        read_systems(top);
        read_names(top);
        read_defaults(top);
        read_bands(top);
        read_analytes(top);
        read_prefix_examples(top);
        read_others(top);
        read_code_sets(top);
        if (const Json* f = top.get("fragments")) {
            Obj frags(ctx_, *f, "fragments");
            for (auto it = f->MemberBegin(); it != f->MemberEnd(); ++it) {
                const std::string name = it->name.GetString();
                if (name == "comment") continue;
                Obj fr(ctx_, it->value, frags.at(name));
                frags.get(name);
                fr.get("items");
                fr.get("params");
                fr.get("required");
                fr.finish();
                fragments_[name] = &it->value;
            }
            frags.finish();
        }
        {
            Obj bg(ctx_, top.need("background"), "background");
            std::set<std::string> times;
            lib_.background = read_items(bg.need("items"), bg.at("items"), times, 0);
            bg.finish();
        }
        const Json& list = top.need("archetypes");
        if (!list.IsArray() || list.Empty()) top.fail("archetypes", "expected a non-empty array");
        std::set<std::string> names;
        for (rapidjson::SizeType i = 0; i < list.Size(); ++i) {
            const std::string path = "archetypes[" + std::to_string(i) + "]";
            Obj a(ctx_, list[i], path);
            Archetype info;
            info.name = a.str("name");
            if (info.name.empty()) a.fail("name", "must not be empty");
            if (!names.insert(info.name).second) a.fail("name", "a second archetype '" + info.name + "'");
            ctx_.archetype = info.name;
            Obj named(ctx_, list[i], "");  // paths inside the archetype are relative to it
            named.get("name");
            info.group = named.str("group");
            info.description = named.str("description");
            info.weight = static_cast<unsigned>(named.whole("weight", 1, 1000));
            const Json& expect = named.need("expect");
            if (!expect.IsArray()) named.fail("expect", "expected an array of rule ids");
            for (const auto& e : expect.GetArray()) {
                if (!e.IsString() || e.GetStringLength() == 0) named.fail("expect", "expected an array of rule ids");
                info.expected.emplace_back(e.GetString());
            }
            std::sort(info.expected.begin(), info.expected.end());
            if (std::adjacent_find(info.expected.begin(), info.expected.end()) != info.expected.end())
                named.fail("expect", "names a rule twice");
            std::set<std::string> times;
            lib_.items.push_back(read_items(named.need("items"), "items", times, 0));
            named.finish();
            lib_.total += info.weight;
            lib_.list.push_back(std::move(info));
            ctx_.archetype.clear();
        }
        if (lib_.total > 65535) top.fail("archetypes", "the weights add up to more than 65535");
        for (const auto& [name, json] : fragments_)
            if (!used_.count(name)) ctx_.fail("fragments." + name, "not used by any archetype or the background");
        top.finish();
    }

private:
    std::string canonical_system(Obj& o, const std::string& key, const std::string& short_name) {
        auto it = systems_.find(short_name);
        if (it == systems_.end()) o.fail(key, "unknown system '" + short_name + "' (see systems)");
        return it->second;
    }

    void read_systems(Obj& top) {
        Obj s(ctx_, top.need("systems"), "systems");
        for (auto it = s.value().MemberBegin(); it != s.value().MemberEnd(); ++it) {
            const std::string name = it->name.GetString();
            if (name == "comment") continue;
            const std::string uri = s.str(name);
            const auto canonical = rows_.term.canonical_system(uri);
            if (!canonical) s.fail(name, "'" + uri + "' is not a system of mappings/data/systems.tsv");
            systems_[name] = std::string(*canonical);
        }
        s.finish();
    }

    void read_names(Obj& top) {
        Obj n(ctx_, top.need("names"), "names");
        for (const char* gender : {"male", "female"})
            for (const auto& g : n.strs(gender)) lib_.given.emplace_back(g, gender);
        lib_.family = n.strs("family");
        if (lib_.given.empty()) n.fail("male", "no given names");
        if (lib_.family.empty()) n.fail("family", "missing");
        n.finish();
    }

    void read_defaults(Obj& top) {
        Obj d(ctx_, top.need("defaults"), "defaults");
        Defaults& x = lib_.defaults;
        const Range age = d.range("ageYears");
        if (*age.lo < 0 || *age.hi > 120 || *age.lo != std::floor(*age.lo) || *age.hi != std::floor(*age.hi))
            d.fail("ageYears", "expected whole years from 0 to 120");
        x.age_lo = static_cast<int>(*age.lo);
        x.age_hi = static_cast<int>(*age.hi);
        std::set<std::string> clinical = kClinicalStatuses;
        clinical.erase("absent");
        x.observation_status = weights_of(d, "observationStatus", kObservationStatuses);
        x.clinical_status = weights_of(d, "clinicalStatus", clinical);
        x.verification_status = weights_of(d, "verificationStatus", kVerificationStatuses);
        x.encounter_percent = static_cast<unsigned>(d.whole("encounterDiagnosisPercent", 0, 100));
        x.encounter_without_clinical_percent =
            static_cast<unsigned>(d.whole("encounterDiagnosisWithoutClinicalStatusPercent", 0, 100));
        x.onset_years = static_cast<int>(d.whole("onsetYearsMax", 1, 80));
        x.child_onset_years = static_cast<int>(d.whole("childOnsetYearsMax", 1, 17));
        x.snomed_with_icd10_percent = static_cast<unsigned>(d.whole("snomedWithIcd10Percent", 0, 100));
        x.icd10_without_dot_percent = static_cast<unsigned>(d.whole("icd10WithoutDotPercent", 0, 100));
        x.lab_period_percent = static_cast<unsigned>(d.whole("labPeriodPercent", 0, 100));
        x.lab_issued_percent = static_cast<unsigned>(d.whole("labIssuedPercent", 0, 100));
        d.finish();
        // Every URI that systems.tsv accepts for a canonical system is written now and then.
        lib_.system_aliases = rows_.aliases;
    }

    void read_bands(Obj& top) {
        Obj b(ctx_, top.need("bands"), "bands");
        for (auto it = b.value().MemberBegin(); it != b.value().MemberEnd(); ++it) {
            const std::string name = it->name.GetString();
            if (name == "comment") continue;
            Obj band(ctx_, it->value, b.at(name));
            b.get(name);
            Band out{name, {}};
            for (auto u = it->value.MemberBegin(); u != it->value.MemberEnd(); ++u) {
                const std::string unit = u->name.GetString();
                if (unit == "comment") continue;
                band.get(unit);
                out.by_unit[unit] = band.range_of(u->value, band.at(unit), true);
            }
            if (out.by_unit.empty()) b.fail(name, "no unit");
            lib_.bands[name] = std::move(out);
        }
        b.finish();
    }

    const Band* band(Obj& o, const std::string& key, const std::string& name) {
        auto it = lib_.bands.find(name);
        if (it == lib_.bands.end()) o.fail(key, "unknown band '" + name + "'");
        return &it->second;
    }

    void read_analytes(Obj& top) {
        Obj a(ctx_, top.need("analytes"), "analytes");
        for (auto it = a.value().MemberBegin(); it != a.value().MemberEnd(); ++it) {
            const std::string name = it->name.GetString();
            if (name == "comment") continue;
            a.get(name);
            const auto analyte = rules::analyte_from_name(name);
            if (!analyte) a.fail(name, "not an analyte of the rules");
            Obj o(ctx_, it->value, a.at(name));
            AnalyteSpec spec;
            spec.name = name;
            spec.suffix = o.opt_str("suffix").value_or(name);
            spec.text = o.opt_str("text").value_or("");
            if (auto ref = o.opt_str("ref")) spec.ref = band(o, "ref", *ref);
            spec.ref_percent = static_cast<unsigned>(o.whole("refPercent", 0, 100, 35));
            const Json& units = o.need("units");
            if (!units.IsArray() || units.Empty()) o.fail("units", "expected a non-empty array");
            for (rapidjson::SizeType i = 0; i < units.Size(); ++i) {
                Obj u(ctx_, units[i], o.at("units[" + std::to_string(i) + "]"));
                UnitSpec us;
                us.unit = u.str("unit");
                if (!rows_.term.unit(*analyte, us.unit))
                    u.fail("unit", "'" + us.unit + "' is not a unit of " + name + " in mappings/data/units.tsv");
                us.decimals = static_cast<int>(u.whole("decimals", 0, 4));
                us.weight = static_cast<unsigned>(u.whole("weight", 1, 1000000));
                us.values_as = u.opt_str("valuesAs").value_or("");
                us.ref = u.opt_bool("ref").value_or(true);
                const auto property = u.opt_str("property");
                const auto code = u.opt_str("code");
                for (const auto& row : rows_.labs)
                    if (row.analyte == name && (!property || row.property == *property) &&
                        (!code || row.coding.code == *code))
                        us.codes.push_back(row.coding);
                if (us.codes.empty())
                    u.fail(code ? "code" : "property", "no code of " + name + (property ? " (" + *property + ")" : "") +
                                                           (code ? " '" + *code + "'" : "") +
                                                           " in mappings/data/lab-codes.tsv");
                u.finish();
                spec.units.push_back(std::move(us));
            }
            if (spec.ref)
                for (const auto& us : spec.units)
                    if (us.ref && !spec.ref->by_unit.count(us.band_unit()))
                        o.fail("ref", "band '" + spec.ref->name + "' has no " + us.band_unit() + " range");
            o.finish();
            lib_.analytes[name] = std::move(spec);
        }
        a.finish();
    }

    void read_prefix_examples(Obj& top) {
        const Json* v = top.get("prefixExamples");
        if (!v) return;
        Obj p(ctx_, *v, "prefixExamples");
        for (auto it = v->MemberBegin(); it != v->MemberEnd(); ++it) {
            const std::string prefix = it->name.GetString();
            if (prefix == "comment") continue;
            auto rows = rows_.prefixes.find(prefix);
            if (rows == rows_.prefixes.end() || rows->second.size() != 1)
                p.fail(prefix, "not the code of one prefix row of mappings/data/condition-codes.tsv");
            const auto& row = rows->second.front();
            for (const auto& code : p.strs(prefix)) {
                const auto* c = rows_.term.condition(row.system, code);
                if (!c || c->concept_id != row.concept_id)
                    p.fail(prefix, "'" + code + "' is not read as " + row.concept_id + " by mappings/data");
                prefix_codes_[row.concept_id].push_back({{row.system, code, row.display}, ""});
            }
        }
        p.finish();
    }

    // The codes of a concept: its exact rows, its word readings, and the examples of its prefix rows.
    std::vector<CondCode> concept_pool(const std::string& concept_id) const {
        std::vector<CondCode> out;
        if (auto it = rows_.concept_codes.find(concept_id); it != rows_.concept_codes.end()) out = it->second;
        if (auto it = prefix_codes_.find(concept_id); it != prefix_codes_.end())
            out.insert(out.end(), it->second.begin(), it->second.end());
        return out;
    }

    static std::optional<CondCode> first_icd10(const std::vector<CondCode>& codes) {
        for (const auto& c : codes)
            if (c.coding.system == kIcd10) return c;
        return std::nullopt;
    }

    void read_others(Obj& top) {
        const Json* v = top.get("otherCodes");
        if (!v) return;
        Obj p(ctx_, *v, "otherCodes");
        for (auto it = v->MemberBegin(); it != v->MemberEnd(); ++it) {
            const std::string name = it->name.GetString();
            if (name == "comment") continue;
            p.get(name);
            if (rows_.term.concepts().count(name)) p.fail(name, "is a concept of mappings/data/concepts.tsv");
            Obj o(ctx_, it->value, p.at(name));
            OtherCode out;
            out.text = o.opt_str("text").value_or("");
            const Json& codes = o.need("codes");
            if (!codes.IsArray() || codes.Empty()) o.fail("codes", "expected a non-empty array");
            for (rapidjson::SizeType i = 0; i < codes.Size(); ++i) {
                Obj c(ctx_, codes[i], o.at("codes[" + std::to_string(i) + "]"));
                Coding coding{canonical_system(c, "system", c.str("system")), c.str("code"), c.str("display")};
                if (const auto* m = rows_.term.condition(coding.system, coding.code))
                    c.fail("code", "mappings/data reads " + coding.code + " as " + m->concept_id +
                                       ": name that concept instead");
                if (rows_.term.word_readings(coding.system, coding.code))
                    c.fail("code", coding.code + " is read by its words (condition-words.tsv): name the concept");
                if (const auto* l = rows_.term.lab(coding.system, coding.code))
                    c.fail("code", "mappings/data reads " + coding.code + " as the analyte " +
                                       std::string(rules::analyte_name(l->analyte)) + ": use a lab item");
                c.finish();
                out.codes.push_back(std::move(coding));
            }
            o.finish();
            lib_.others[name] = std::move(out);
        }
        p.finish();
    }

    void read_code_sets(Obj& top) {
        const Json* v = top.get("codeSets");
        if (!v) return;
        Obj p(ctx_, *v, "codeSets");
        for (auto it = v->MemberBegin(); it != v->MemberEnd(); ++it) {
            const std::string name = it->name.GetString();
            if (name == "comment") continue;
            p.get(name);
            if (rows_.term.concepts().count(name) || lib_.others.count(name))
                p.fail(name, "is already a concept or an other code");
            Obj o(ctx_, it->value, p.at(name));
            const std::string concept_id = o.str("concept");
            if (!rows_.term.concepts().count(concept_id))
                o.fail("concept", "'" + concept_id + "' is not a concept of mappings/data/concepts.tsv");
            CondPool pool;
            pool.codes = codes_of(o, "codes", concept_id, o.strs("codes"));
            pool.icd10_partner = first_icd10(pool.codes);
            o.finish();
            code_sets_[name] = std::move(pool);
        }
        p.finish();
    }

    // Codes written for a concept: each must be one of its codes (or match one of its prefix rows).
    std::vector<CondCode> codes_of(Obj& o, const std::string& key, const std::string& concept_id,
                                   const std::vector<std::string>& codes) const {
        if (codes.empty()) o.fail(key, "missing");
        const auto pool = concept_pool(concept_id);
        std::vector<CondCode> out;
        for (const auto& code : codes) {
            const CondCode* found = nullptr;
            for (const auto& c : pool)
                if (c.coding.code == code) found = &c;
            if (found) {
                out.push_back(*found);
                continue;
            }
            // A completion of a prefix row not listed in prefixExamples.
            for (const auto& [prefix, rows] : rows_.prefixes)
                for (const auto& row : rows)
                    if (row.concept_id == concept_id && !found) {
                        const auto* c = rows_.term.condition(row.system, code);
                        if (c && c->concept_id == concept_id && code.rfind(prefix, 0) == 0) {
                            out.push_back({{row.system, code, row.display}, ""});
                            found = &out.back();
                        }
                    }
            if (!found) o.fail(key, "'" + code + "' is not a code of " + concept_id + " in mappings/data");
        }
        return out;
    }

    CondPool condition_pool(Obj& o, const std::string& key, const std::string& name) const {
        CondPool pool;
        if (auto it = code_sets_.find(name); it != code_sets_.end()) return it->second;
        if (auto it = lib_.others.find(name); it != lib_.others.end()) {
            for (const auto& c : it->second.codes) pool.codes.push_back({c, it->second.text});
            pool.icd10_partner = first_icd10(pool.codes);
            return pool;
        }
        if (!rows_.term.concepts().count(name))
            o.fail(key, "'" + name + "' is not a concept of mappings/data/concepts.tsv, a code set or an other code");
        pool.codes = concept_pool(name);
        if (pool.codes.empty()) o.fail(key, "mappings/data has no code to draw for " + name);
        pool.icd10_partner = first_icd10(pool.codes);
        return pool;
    }

    // ---- items

    TimeSpec time_spec(Obj& o) {
        static const std::vector<std::pair<const char*, std::pair<std::int64_t, int>>> kinds = {
            {"daysAgo", {1440, -1}},  {"hoursAgo", {60, -1}},  {"minutesAgo", {1, -1}},
            {"daysAfter", {1440, 1}}, {"hoursAfter", {60, 1}}, {"minutesAfter", {1, 1}}};
        TimeSpec t;
        t.from = o.opt_str("from").value_or("");
        if (t.from == "now") t.from.clear();
        int n = 0;
        for (const auto& [key, scale] : kinds)
            if (o.has(key)) {
                ++n;
                const Range r = o.range(key);
                if (*r.lo < 0) o.fail(key, "must not be negative (use the After or Ago form)");
                t.lo_minutes = std::llround(*r.lo * static_cast<double>(scale.first));
                t.hi_minutes = std::llround(*r.hi * static_cast<double>(scale.first));
                t.sign = scale.second;
            }
        if (n != 1) o.fail("", "needs exactly one of daysAgo, hoursAgo, minutesAgo, daysAfter, hoursAfter, minutesAfter");
        return t;
    }

    At at_of(Obj& o, const std::set<std::string>& times) {
        const Json& v = o.need("at");
        At at;
        if (v.IsString()) {
            at.name = v.GetString();
            if (!times.count(at.name)) o.fail("at", "no time '" + at.name + "' is set before this item");
            return at;
        }
        Obj t(ctx_, v, o.at("at"));
        at.spec = time_spec(t);
        if (!at.spec.from.empty() && !times.count(at.spec.from))
            t.fail("from", "no time '" + at.spec.from + "' is set before this item");
        t.finish();
        return at;
    }

    static std::optional<Renal> renal_of(const std::string& s) {
        if (s == "normal") return Renal::normal;
        if (s == "ckd3") return Renal::ckd3;
        if (s == "ckd4") return Renal::ckd4;
        if (s == "esrd") return Renal::esrd;
        return std::nullopt;
    }

    std::vector<Item> read_items(const Json& v, const std::string& path, std::set<std::string>& times, int depth) {
        if (!v.IsArray()) ctx_.fail(path, "expected an array of items");
        std::vector<Item> out;
        for (rapidjson::SizeType i = 0; i < v.Size(); ++i)
            out.push_back(read_item(v[i], path + "[" + std::to_string(i) + "]", times, depth));
        return out;
    }

    Item read_item(const Json& v, const std::string& path, std::set<std::string>& times, int depth) {
        Obj o(ctx_, v, path);
        Item it;
        it.where = ctx_.file + ": " + (ctx_.archetype.empty() ? "" : "archetype '" + ctx_.archetype + "': ") + path;
        static const std::vector<std::string> kinds = {"condition", "lab",   "observation", "procedure", "oneOf",
                                                       "group",     "time",  "renal",       "age",       "use"};
        std::string kind;
        for (const auto& k : kinds)
            if (o.has(k)) {
                if (!kind.empty()) o.fail(k, "an item is one of " + kind + " and " + k + ", not both");
                kind = k;
            }
        if (kind.empty())
            o.fail("", "an item needs one of condition, lab, observation, procedure, oneOf, group, time, renal, age, use");
        static const std::map<std::string, std::set<std::string>> kKeys = {
            {"condition", {"system", "stripDot", "codes", "clinicalStatus", "verificationStatus", "abatedChance"}},
            {"lab", {"band", "value", "unit", "at", "status", "ref", "comparator", "code"}},
            {"observation", {"suffix", "category", "at", "value", "unit", "decimals", "components"}},
            {"procedure", {"at", "status"}},
            {"oneOf", {}},
            {"group", {}},
            {"time", {"from", "daysAgo", "hoursAgo", "minutesAgo", "daysAfter", "hoursAfter", "minutesAfter"}},
            {"renal", {}},
            {"age", {}},
            {"use", {"with"}}};
        const auto& keys = kKeys.at(kind);
        for (auto m = v.MemberBegin(); m != v.MemberEnd(); ++m) {
            const std::string key = m->name.GetString();
            if (key != kind && key != "chance" && key != "when" && key != "comment" && !keys.count(key)) {
                std::string known;
                for (const auto& k : keys) known += (known.empty() ? "" : ", ") + k;
                o.fail(key, "unknown key (a " + kind + " item takes " + (known.empty() ? "no other key" : known) +
                                ", and chance, when, comment)");
            }
        }
        if (o.has("chance")) {
            const Json& c = o.need("chance");
            if (!c.IsInt() || c.GetInt() < 0 || c.GetInt() > 100) o.fail("chance", "expected a percentage 0 to 100");
            it.chance = static_cast<unsigned>(c.GetInt());
        }
        if (const Json* w = o.get("when")) {
            Obj when(ctx_, *w, o.at("when"));
            for (const auto& r : when.strs("renal")) {
                auto renal = renal_of(r);
                if (!renal) when.fail("renal", "expected normal, ckd3, ckd4 or esrd, not '" + r + "'");
                it.when_renal.push_back(*renal);
            }
            it.when_child = when.opt_bool("child");
            when.finish();
        }
        if (kind == "use") {
            read_use(o, it, times, depth);
        } else if (kind == "condition") {
            read_condition(o, it);
        } else if (kind == "lab") {
            read_lab(o, it, times);
        } else if (kind == "observation") {
            read_observation(o, it, times);
        } else if (kind == "procedure") {
            it.kind = Item::Kind::procedure;
            const std::string concept_id = o.str("procedure");
            auto codes = rows_.procedures.find(concept_id);
            if (codes == rows_.procedures.end())
                o.fail("procedure", "'" + concept_id + "' is not a concept of mappings/data/procedure-codes.tsv");
            it.procedure_codes = codes->second;
            it.status = o.strs("status");
            static const std::set<std::string> kEventStatuses{"preparation", "in-progress",      "not-done", "on-hold",
                                                              "stopped",     "completed",        "unknown",
                                                              "entered-in-error"};
            for (const auto& st : it.status)
                if (!kEventStatuses.count(st)) o.fail("status", "'" + st + "' is not a Procedure status");
            if (it.status.empty()) it.status = {"completed"};
            it.at = at_of(o, times);
        } else if (kind == "oneOf") {
            it.kind = Item::Kind::one_of;
            const Json& alts = o.need("oneOf");
            if (!alts.IsArray() || alts.Empty()) o.fail("oneOf", "expected a non-empty array of alternatives");
            for (rapidjson::SizeType i = 0; i < alts.Size(); ++i) {
                Obj a(ctx_, alts[i], o.at("oneOf[" + std::to_string(i) + "]"));
                const auto weight = static_cast<unsigned>(a.whole("weight", 1, 1000000));
                std::set<std::string> inner = times;  // a time set in one alternative is not seen after it
                it.alternatives.emplace_back(weight, read_items(a.need("items"), a.at("items"), inner, depth));
                a.finish();
            }
        } else if (kind == "group") {
            it.kind = Item::Kind::group;
            std::set<std::string> inner = times;
            it.items = read_items(o.need("group"), o.at("group"), inner, depth);
            if (it.chance == 100 && it.when_renal.empty() && !it.when_child) times = inner;
        } else if (kind == "time") {
            it.kind = Item::Kind::time;
            it.time_name = o.str("time");
            if (it.time_name.empty() || it.time_name == "now") o.fail("time", "a time needs a name other than now");
            it.time_spec = time_spec(o);
            if (!it.time_spec.from.empty() && !times.count(it.time_spec.from))
                o.fail("from", "no time '" + it.time_spec.from + "' is set before this item");
            if (it.chance != 100 || !it.when_renal.empty() || it.when_child)
                o.fail("time", "a time is always set (no chance or when)");
            times.insert(it.time_name);
        } else if (kind == "renal") {
            it.kind = Item::Kind::renal;
            const std::string r = o.str("renal");
            auto renal = renal_of(r);
            if (!renal) o.fail("renal", "expected normal, ckd3, ckd4 or esrd, not '" + r + "'");
            it.renal = *renal;
        } else {
            it.kind = Item::Kind::age;
            const Range r = o.range("age");
            if (*r.lo < 0 || *r.hi > 120 || *r.lo != std::floor(*r.lo) || *r.hi != std::floor(*r.hi))
                o.fail("age", "expected whole years from 0 to 120");
            it.age_lo = static_cast<int>(*r.lo);
            it.age_hi = static_cast<int>(*r.hi);
        }
        o.finish();
        return it;
    }

    void read_use(Obj& o, Item& it, std::set<std::string>& times, int depth) {
        const std::string name = o.str("use");
        auto f = fragments_.find(name);
        if (f == fragments_.end()) o.fail("use", "unknown fragment '" + name + "'");
        used_.insert(name);
        if (depth > 16) o.fail("use", "fragments nest more than 16 deep (does '" + name + "' use itself?)");
        const Json& frag = *f->second;
        const std::string fpath = "fragments." + name;
        std::map<std::string, const Json*> args;
        std::set<std::string> required;
        if (frag.HasMember("required")) {
            const Json& r = frag["required"];
            if (!r.IsArray()) ctx_.fail(fpath + ".required", "expected an array of parameter names");
            for (const auto& n : r.GetArray()) {
                if (!n.IsString()) ctx_.fail(fpath + ".required", "expected an array of parameter names");
                required.insert(n.GetString());
            }
        }
        if (frag.HasMember("params")) {
            const Json& p = frag["params"];
            if (!p.IsObject()) ctx_.fail(fpath + ".params", "expected an object of parameter defaults");
            for (auto m = p.MemberBegin(); m != p.MemberEnd(); ++m) args[m->name.GetString()] = &m->value;
        }
        if (const Json* with = o.get("with")) {
            if (!with->IsObject()) o.fail("with", "expected an object of parameters");
            for (auto m = with->MemberBegin(); m != with->MemberEnd(); ++m) {
                const std::string p = m->name.GetString();
                if (!required.count(p) && !args.count(p))
                    o.fail("with." + p, "fragment '" + name + "' has no parameter '" + p + "'");
                args[p] = &m->value;
            }
        }
        for (const auto& r : required)
            if (!args.count(r)) o.fail("with", "fragment '" + name + "' needs '" + r + "'");
        if (!frag.HasMember("items")) ctx_.fail(fpath, "a fragment needs items");
        // The fragment's items with the parameters put in, read where they are used.
        auto copy = std::make_unique<rapidjson::Document>();
        substitute(frag["items"], *copy, copy->GetAllocator(), args, o, name);
        const std::string path = o.at("use(" + name + ")");
        it.kind = Item::Kind::group;
        std::set<std::string> inner = times;
        it.items = read_items(*copy, path, inner, depth + 1);
        if (it.chance == 100 && it.when_renal.empty() && !it.when_child) times = inner;
        scratch_.push_back(std::move(copy));
    }

    void substitute(const Json& from, Json& to, rapidjson::Document::AllocatorType& alloc,
                    const std::map<std::string, const Json*>& args, Obj& o, const std::string& fragment) {
        if (from.IsString() && from.GetStringLength() > 1 && from.GetString()[0] == '$') {
            auto a = args.find(from.GetString() + 1);
            if (a == args.end())
                o.fail("use", "fragment '" + fragment + "' refers to '" + from.GetString() + "', not a parameter");
            to.CopyFrom(*a->second, alloc);
        } else if (from.IsObject()) {
            to.SetObject();
            for (auto m = from.MemberBegin(); m != from.MemberEnd(); ++m) {
                Json v;
                substitute(m->value, v, alloc, args, o, fragment);
                if (v.IsNull()) continue;  // a parameter left out: the key is absent
                to.AddMember(Json(m->name, alloc), v, alloc);
            }
        } else if (from.IsArray()) {
            to.SetArray();
            for (const auto& e : from.GetArray()) {
                Json v;
                substitute(e, v, alloc, args, o, fragment);
                to.PushBack(v, alloc);
            }
        } else {
            to.CopyFrom(from, alloc);
        }
    }

    void read_condition(Obj& o, Item& it) {
        it.kind = Item::Kind::condition;
        const auto names = o.strs("condition");
        if (names.empty()) o.fail("condition", "expected a concept name or an array of them");
        const auto codes = o.strs("codes");
        const auto system = o.opt_str("system");
        for (const auto& n : names) {
            CondPool pool;
            if (!codes.empty()) {
                if (names.size() != 1) o.fail("codes", "codes go with one condition, not a choice");
                if (!rows_.term.concepts().count(n)) o.fail("codes", "codes are written for a concept of concepts.tsv");
                pool.codes = codes_of(o, "codes", n, codes);
                pool.icd10_partner = first_icd10(concept_pool(n));
            } else {
                pool = condition_pool(o, "condition", n);
            }
            if (system) {
                const std::string uri = canonical_system(o, "system", *system);
                std::vector<CondCode> kept;
                for (const auto& c : pool.codes)
                    if (c.coding.system == uri) kept.push_back(c);
                if (kept.empty()) o.fail("system", n + " has no " + *system + " code to draw");
                pool.codes = std::move(kept);
            }
            it.pools.push_back(std::move(pool));
        }
        it.system_given = system.has_value();
        it.strip_dot = o.opt_bool("stripDot");
        auto statuses = [&](const char* key, const std::set<std::string>& allowed) {
            auto v = o.strs(key);
            for (auto& s : v) {
                if (!allowed.count(s)) o.fail(key, "'" + s + "' is not a status here");
                if (s == "absent") s.clear();
            }
            return v;
        };
        it.clinical = statuses("clinicalStatus", kClinicalStatuses);
        std::set<std::string> verification = kVerificationStatuses;
        it.verification = statuses("verificationStatus", verification);
        it.abated_chance = static_cast<unsigned>(o.whole("abatedChance", 0, 100, 0));
        // FHIR R4 con-4: an abated Condition is inactive, resolved or in remission.
        if (it.abated_chance > 0)
            for (const auto& c : it.clinical.empty() ? std::vector<std::string>{"active"} : it.clinical)
                if (c != "inactive" && c != "resolved" && c != "remission")
                    o.fail("abatedChance", "an abated condition needs clinicalStatus inactive, resolved or remission");
    }

    void read_lab(Obj& o, Item& it, const std::set<std::string>& times) {
        it.kind = Item::Kind::lab;
        const std::string name = o.str("lab");
        auto a = lib_.analytes.find(name);
        if (a == lib_.analytes.end()) o.fail("lab", "'" + name + "' is not an analyte of the file's analytes");
        it.analyte = &a->second;
        const auto& units = it.analyte->units;
        const auto fixed = o.strs("unit");
        for (std::size_t i = 0; i < units.size(); ++i)
            if (fixed.empty() || std::find(fixed.begin(), fixed.end(), units[i].unit) != fixed.end())
                it.units.push_back(i);
        for (const auto& u : fixed)
            if (std::none_of(units.begin(), units.end(), [&](const UnitSpec& s) { return s.unit == u; }))
                o.fail("unit", "'" + u + "' is not a unit of analytes." + name);
        for (const auto& b : o.strs("band")) it.bands.push_back(band(o, "band", b));
        if (o.has("value")) {
            if (!it.bands.empty()) o.fail("value", "a lab has a band or a value, not both");
            it.value = o.range("value");
            it.value_unit = fixed.size() == 1 ? fixed.front() : units.front().band_unit();
            for (std::size_t i : it.units)
                if (units[i].band_unit() != it.value_unit)
                    o.fail("value", "the value is in " + it.value_unit + " but " + units[i].unit +
                                        " may be drawn: give its unit");
        } else if (it.bands.empty()) {
            o.fail("band", "a lab needs a band or a value");
        }
        for (const Band* b : it.bands)
            for (std::size_t i : it.units) {
                auto r = b->by_unit.find(units[i].band_unit());
                if (r == b->by_unit.end())
                    o.fail("band", "band '" + b->name + "' has no " + units[i].band_unit() + " range (give 'unit')");
                if (!r->second.lo || !r->second.hi) o.fail("band", "band '" + b->name + "' is open: a value needs both ends");
            }
        if (auto code = o.opt_str("code")) {
            const auto* l = rows_.term.lab(kLoinc, *code);
            if (!l || rules::analyte_name(l->analyte) != name)
                o.fail("code", "'" + *code + "' is not a LOINC code of " + name + " in mappings/data/lab-codes.tsv");
            for (const auto& row : rows_.labs)
                if (row.coding.code == *code) it.code = row.coding;
        }
        it.status = o.strs("status");
        for (const auto& s : it.status)
            if (!kObservationStatuses.count(s)) o.fail("status", "'" + s + "' is not an Observation status");
        if (auto ref = o.opt_str("ref")) {
            if (*ref == "none") {
                it.ref = Item::Ref::none;
            } else if (*ref == "usual") {
                if (!it.analyte->ref) o.fail("ref", name + " has no usual reference range");
                it.ref = Item::Ref::usual;
            } else {
                it.ref = Item::Ref::custom;
                it.ref_band = band(o, "ref", *ref);
                for (std::size_t i : it.units)
                    if (!it.ref_band->by_unit.count(units[i].band_unit()))
                        o.fail("ref", "band '" + *ref + "' has no " + units[i].band_unit() + " range");
            }
        }
        it.comparator = o.opt_str("comparator").value_or("");
        if (!it.comparator.empty() && it.comparator != "<" && it.comparator != "<=" && it.comparator != ">=" &&
            it.comparator != ">")
            o.fail("comparator", "expected <, <=, >= or >");
        it.at = at_of(o, times);
    }

    void read_observation(Obj& o, Item& it, const std::set<std::string>& times) {
        it.kind = Item::Kind::observation;
        const std::string name = o.str("observation");
        auto other = lib_.others.find(name);
        if (other == lib_.others.end()) o.fail("observation", "'" + name + "' is not one of otherCodes");
        it.other = &other->second;
        for (const auto& c : it.other->codes)
            if (c.system != kLoinc) o.fail("observation", "'" + name + "' is not a LOINC code");
        it.suffix = o.opt_str("suffix").value_or(name);
        it.category = o.opt_str("category").value_or("laboratory");
        if (it.category != "laboratory" && it.category != "vital-signs")
            o.fail("category", "expected laboratory or vital-signs");
        if (o.has("value")) {
            it.value = o.range("value");
            it.unit = o.str("unit");
            it.decimals = static_cast<int>(o.whole("decimals", 0, 4));
        }
        if (const Json* comps = o.get("components")) {
            if (!comps->IsArray() || comps->Empty()) o.fail("components", "expected a non-empty array");
            for (rapidjson::SizeType i = 0; i < comps->Size(); ++i) {
                Obj c(ctx_, (*comps)[i], o.at("components[" + std::to_string(i) + "]"));
                Component comp;
                const std::string code = c.str("code");
                auto oc = lib_.others.find(code);
                if (oc == lib_.others.end()) c.fail("code", "'" + code + "' is not one of otherCodes");
                comp.code = &oc->second;
                comp.value = c.range("value");
                comp.unit = c.str("unit");
                comp.decimals = static_cast<int>(c.whole("decimals", 0, 4));
                c.finish();
                it.components.push_back(std::move(comp));
            }
        }
        if (!it.value && it.components.empty()) o.fail("value", "an observation needs a value or components");
        it.at = at_of(o, times);
    }

    Impl& lib_;
    const TermRows& rows_;
    const rapidjson::Document& doc_;
    Ctx& ctx_;
    std::map<std::string, std::string> systems_;  // short name -> canonical URI
    std::map<std::string, std::vector<CondCode>> prefix_codes_;
    std::map<std::string, CondPool> code_sets_;
    std::map<std::string, const Json*> fragments_;
    std::set<std::string> used_;
    std::vector<std::unique_ptr<rapidjson::Document>> scratch_;
};


}  // namespace

ArchetypeLibrary::ArchetypeLibrary() : impl_(std::make_unique<Impl>()) {}
ArchetypeLibrary::~ArchetypeLibrary() = default;

std::shared_ptr<const ArchetypeLibrary> ArchetypeLibrary::load(const std::filesystem::path& file,
                                                               const std::filesystem::path& terminology_dir) {
    const TermRows rows = read_terminology(terminology_dir);
    std::ifstream in(file, std::ios::binary);
    if (!in) throw ArchetypeError(file.string() + ": cannot open");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    rapidjson::Document doc;
    doc.Parse(text.c_str(), text.size());
    if (doc.HasParseError())
        throw ArchetypeError(file.string() + ": JSON parse error at offset " + std::to_string(doc.GetErrorOffset()) +
                             ": " + rapidjson::GetParseError_En(doc.GetParseError()));
    std::shared_ptr<ArchetypeLibrary> lib(new ArchetypeLibrary());
    lib->impl_->file = file;
    Ctx ctx{file.string(), ""};
    Loader(*lib->impl_, rows, doc, ctx).load();
    return lib;
}

const std::vector<Archetype>& ArchetypeLibrary::archetypes() const { return impl_->list; }
unsigned ArchetypeLibrary::total_weight() const { return impl_->total; }

std::filesystem::path default_archetype_file() {
    return mappings::data_root() / "adapters" / "sandbox" / "data" / "archetypes.json";
}
std::filesystem::path default_terminology_dir() { return mappings::data_root() / "mappings" / "data"; }

std::shared_ptr<const ArchetypeLibrary> default_library() {
    static const std::shared_ptr<const ArchetypeLibrary> lib =
        ArchetypeLibrary::load(default_archetype_file(), default_terminology_dir());
    return lib;
}

const std::vector<Archetype>& archetypes() { return default_library()->archetypes(); }
unsigned total_archetype_weight() { return default_library()->total_weight(); }

}  // namespace calcalert::sandbox
