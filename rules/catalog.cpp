#include "rules/catalog.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace calcalert::rules {
namespace {

using Json = rapidjson::Value;

std::uint64_t fnv1a(std::string_view s, std::uint64_t h = 1469598103934665603ULL) {
    for (unsigned char c : s) {
        h ^= c;
        h *= 1099511628211ULL;
    }
    return h;
}

std::string canonical(const Json& v) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    v.Accept(w);
    return sb.GetString();
}

// The rule file without its wording (title, summary, notes, citation, seed): what decides whether
// and how severely the rule fires. A wording change leaves it, and so the evidence hash, as it is.
std::string logic_canonical(const Json& rule_doc) {
    rapidjson::Document copy;
    copy.CopyFrom(rule_doc, copy.GetAllocator());
    for (const char* wording : {"title", "summary", "notes", "citation", "seed"}) copy.RemoveMember(wording);
    return canonical(copy);
}

struct JsonFile {
    std::string name;
    rapidjson::Document doc;
};

JsonFile read_json(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) throw CatalogError(p.string() + ": cannot open");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    JsonFile f{p.string(), {}};
    f.doc.Parse(text.c_str());
    if (f.doc.HasParseError())
        throw CatalogError(f.name + ": JSON parse error at offset " + std::to_string(f.doc.GetErrorOffset()) + ": " +
                           rapidjson::GetParseError_En(f.doc.GetParseError()));
    if (!f.doc.IsObject()) throw CatalogError(f.name + ": expected a JSON object");
    return f;
}

// Strict object reader: every key must be read, unknown keys are errors.
class Obj {
public:
    Obj(const Json& v, std::string file, std::string path) : v_(v), file_(std::move(file)), path_(std::move(path)) {
        if (!v.IsObject()) fail(path_, "expected an object");
    }
    [[noreturn]] void fail(const std::string& at, const std::string& msg) const {
        throw CatalogError(file_ + ": " + at + ": " + msg);
    }
    const Json* get(const char* key) {
        seen_.insert(key);
        auto it = v_.FindMember(key);
        return it == v_.MemberEnd() ? nullptr : &it->value;
    }
    std::string str(const char* key, bool required = true) {
        const Json* v = get(key);
        if (!v) {
            if (required) fail(path_ + key, "missing");
            return {};
        }
        if (!v->IsString()) fail(path_ + key, "expected a string");
        return v->GetString();
    }
    double num(const char* key, double fallback) {
        const Json* v = get(key);
        if (!v) return fallback;
        if (!v->IsNumber()) fail(path_ + key, "expected a number");
        return v->GetDouble();
    }
    std::vector<std::string> strings(const char* key) {
        std::vector<std::string> out;
        const Json* v = get(key);
        if (!v) return out;
        if (!v->IsArray()) fail(path_ + key, "expected an array of strings");
        for (const auto& s : v->GetArray()) {
            if (!s.IsString()) fail(path_ + key, "expected an array of strings");
            out.emplace_back(s.GetString());
        }
        return out;
    }
    Obj sub(const char* key) {
        const Json* v = get(key);
        static const Json empty(rapidjson::kObjectType);
        return Obj(v ? *v : empty, file_, path_ + key + ".");
    }
    const std::string& file() const { return file_; }
    const std::string& path() const { return path_; }
    void finish() const {
        for (auto it = v_.MemberBegin(); it != v_.MemberEnd(); ++it)
            if (!seen_.count(it->name.GetString())) fail(path_ + it->name.GetString(), "unknown key");
    }

private:
    const Json& v_;
    std::string file_, path_;
    std::set<std::string> seen_;
};

FactParameters read_parameters(Obj p) {
    FactParameters f;
    if (auto st = p.strings("countedObservationStatuses"); !st.empty()) {
        static const std::set<std::string> allowed{"final", "amended", "corrected", "preliminary"};
        for (const auto& s : st)
            if (!allowed.count(s))
                p.fail(p.path() + "countedObservationStatuses",
                       "'" + s + "' may not count (allowed: final, amended, corrected, preliminary)");
        f.counted_observation_statuses = st;
    }
    f.future_tolerance_hours = p.num("futureToleranceHours", f.future_tolerance_hours);
    if (!(f.future_tolerance_hours >= 0)) p.fail(p.path() + "futureToleranceHours", "must be 0 or more");
    {
        Obj c = p.sub("dialysisProcedure");
        f.dialysis_window_days = c.num("windowDays", f.dialysis_window_days);
        if (auto st = c.strings("countedStatuses"); !st.empty()) {
            // FHIR R4 EventStatus: what a site may count (never not-done, entered-in-error, unknown).
            static const std::set<std::string> allowed{"preparation", "in-progress", "on-hold", "stopped", "completed"};
            for (const auto& s : st)
                if (!allowed.count(s))
                    c.fail(c.path() + "countedStatuses",
                           "'" + s + "' may not count (allowed: preparation, in-progress, on-hold, stopped, completed)");
            f.dialysis_counted_statuses = st;
        }
        if (!(f.dialysis_window_days >= 0)) c.fail(c.path() + "windowDays", "must be a number of days, 0 or more");
        c.finish();
    }
    p.finish();
    return f;
}

Analyte analyte_of(Obj& o, const char* key, Analyte fallback) {
    const std::string name = o.str(key, false);
    if (name.empty()) return fallback;
    const auto a = analyte_from_name(name);
    if (!a) o.fail(o.path() + key, "unknown analyte '" + name + "'");
    return *a;
}

double positive(Obj& o, const char* key, double fallback) {
    const double v = o.num(key, fallback);
    if (!(v > 0)) o.fail(o.path() + key, "must be a positive number");
    return v;
}

ComputedValue read_computed(Obj o) {
    ComputedValue c;
    c.id = o.str("id");
    c.title = o.str("title");
    c.short_label = o.str("short", false);
    if (c.short_label.empty()) c.short_label = c.title;
    c.unit = o.str("unit");
    const double decimals = o.num("decimals", 2);
    if (decimals < 0 || decimals > 6 || decimals != static_cast<int>(decimals))
        o.fail(o.path() + "decimals", "must be a whole number from 0 to 6");
    c.decimals = static_cast<int>(decimals);
    const std::string kind = o.str("kind");
    if (kind == "albumin-corrected-calcium") {
        c.kind = ComputedValue::Kind::albumin_corrected_calcium;
        c.reported = analyte_of(o, "reported", c.reported);
        c.total = analyte_of(o, "total", c.total);
        c.albumin = analyte_of(o, "albumin", c.albumin);
        c.albumin_window_hours = positive(o, "albuminWindowHours", c.albumin_window_hours);
        c.normal_albumin = positive(o, "normalAlbumin_g_dL", c.normal_albumin);
        c.factor = positive(o, "factor", c.factor);
    } else if (kind == "product") {
        c.kind = ComputedValue::Kind::product;
        c.anchor = analyte_of(o, "anchor", c.anchor);
        c.partner = analyte_of(o, "partner", c.partner);
        c.pairing_hours = positive(o, "pairingHours", c.pairing_hours);
    } else {
        o.fail(o.path() + "kind", "expected albumin-corrected-calcium or product, not '" + kind + "'");
    }
    o.finish();
    return c;
}

LabFact read_lab_fact(Obj o, const std::vector<ComputedValue>& computed) {
    LabFact f;
    f.id = o.str("id");
    f.title = o.str("title");
    f.value = o.str("value");
    if (const auto a = analyte_from_name(f.value)) {
        f.analyte = *a;
    } else {
        for (std::size_t i = 0; i < computed.size(); ++i)
            if (computed[i].id == f.value) f.computed = static_cast<int>(i);
        if (f.computed < 0)
            o.fail(o.path() + "value", "'" + f.value + "' is neither an analyte nor a computed value (define it in 'computed')");
    }
    f.window_days = positive(o, "windowDays", 0);
    const bool above = o.get("above") != nullptr, below = o.get("below") != nullptr;
    if (above == below) o.fail(o.path() + "above", "give exactly one of 'above' and 'below'");
    f.direction = above ? Direction::above : Direction::below;
    Obj t = o.sub(above ? "above" : "below");
    if (!t.get("default")) t.fail(t.path() + "default", "missing");
    f.fallback = t.num("default", 0);
    if (t.get("timesReferenceRangeHigh")) {
        if (!above) t.fail(t.path() + "timesReferenceRangeHigh", "a reference-range high sets only an 'above' threshold");
        f.times_reference_high = positive(t, "timesReferenceRangeHigh", 1);
    }
    t.finish();
    const std::string bounded = o.str("boundedValues", false);
    if (bounded.empty() || bounded == "when-decided") f.bounded = BoundedValues::when_decided;
    else if (bounded == "never") f.bounded = BoundedValues::never;
    else o.fail(o.path() + "boundedValues", "expected when-decided or never, not '" + bounded + "'");
    o.finish();
    return f;
}

// facts.json without what is wording or display (its version, display settings, titles and short
// forms): what decides whether a fact holds. Part of every rule's logic version.
std::string facts_logic_canonical(const Json& facts_doc) {
    rapidjson::Document copy;
    copy.CopyFrom(facts_doc, copy.GetAllocator());
    copy.RemoveMember("version");
    copy.RemoveMember("display");
    for (const char* list : {"computed", "labFacts", "derived"}) {
        auto it = copy.FindMember(list);
        if (it == copy.MemberEnd() || !it->value.IsArray()) continue;
        for (auto& item : it->value.GetArray())
            if (item.IsObject()) {
                item.RemoveMember("title");
                item.RemoveMember("short");
            }
    }
    return canonical(copy);
}

// The {placeholders} of a rule's text: {fact}, {present:a,b} and {assessed:lab-fact} with known facts
// only, and in an order rule {order} (the ordered drug).
void check_placeholders(const Obj& o, const std::string& at, const std::string& text,
                        const std::map<std::string, std::string>& titles, const std::set<std::string>& lab_facts,
                        bool order_rule) {
    std::size_t i = 0;
    while ((i = text.find('{', i)) != std::string::npos) {
        const auto close = text.find('}', i);
        if (close == std::string::npos) o.fail(at, "'{' without '}'");
        const std::string key = text.substr(i + 1, close - i - 1);
        if (key.rfind("assessed:", 0) == 0) {
            const std::string fact = key.substr(9);
            if (!lab_facts.count(fact)) o.fail(at, "{" + key + "}: '" + fact + "' is not a lab fact");
        } else if (key.rfind("present:", 0) == 0) {
            std::size_t s = 8;
            while (s <= key.size()) {
                auto comma = key.find(',', s);
                if (comma == std::string::npos) comma = key.size();
                const std::string fact = key.substr(s, comma - s);
                if (!titles.count(fact)) o.fail(at, "unknown fact '" + fact + "' in {" + key + "}");
                s = comma + 1;
            }
        } else if (key == "order") {
            if (!order_rule) o.fail(at, "{order} is only for order rules");
        } else if (!titles.count(key)) {
            o.fail(at, "unknown placeholder {" + key + "} (use a fact, {present:...}, {assessed:<lab fact>} or, in an order rule, {order})");
        }
        i = close + 1;
    }
}

std::string hex8(std::uint64_t h) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(h & 0xffffffffULL));
    return buf;
}

}  // namespace

std::string_view to_string(RuleSeverity s) {
    switch (s) {
        case RuleSeverity::high: return "high";
        case RuleSeverity::moderate: return "moderate";
        case RuleSeverity::low: return "low";
    }
    return "low";
}

const std::vector<std::pair<std::string, std::string>>& procedure_facts() {
    static const std::vector<std::pair<std::string, std::string>> facts{
        {"dialysis-procedure", "Dialysis procedure within the window"},
    };
    return facts;
}

const std::vector<std::pair<std::string, std::string>>& order_classes() {
    static const std::vector<std::pair<std::string, std::string>> classes{
        {"iv-calcium", "Draft order for an intravenous calcium salt"},
        {"iv-phosphate", "Draft order for an intravenous phosphate salt"},
        {"systemic-corticosteroid", "Draft order for a systemic corticosteroid"},
    };
    return classes;
}

const std::string& RuleCatalog::title_of(const std::string& fact) const {
    auto it = titles_.find(fact);
    return it == titles_.end() ? fact : it->second;
}

const Rule* RuleCatalog::find(std::string_view id) const {
    for (const auto& r : rules_)
        if (r.id == id) return &r;
    for (const auto& r : order_rules_)
        if (r.id == id) return &r;
    return nullptr;
}

const LabFact* RuleCatalog::lab_fact(std::string_view id) const {
    for (const auto& f : lab_facts_)
        if (f.id == id) return &f;
    return nullptr;
}

std::string RuleCatalog::logic_fingerprint() const {
    std::uint64_t h = fnv1a("");
    for (const auto* list : {&rules_, &order_rules_})
        for (const auto& r : *list) h = fnv1a(r.id + "=" + r.logic_version + ";", h);
    return hex8(h);
}

double RuleCatalog::history_window_days() const {
    double days = 0;
    for (const auto& f : lab_facts_) {
        double reach = f.window_days;
        if (f.computed >= 0) reach += computed_[static_cast<std::size_t>(f.computed)].reach_hours() / 24.0;
        days = std::max(days, reach);
    }
    return days;
}

RuleCatalog RuleCatalog::load(const std::filesystem::path& dir, const std::map<std::string, std::string>& concepts) {
    RuleCatalog cat;
    cat.dir_ = dir;
    for (const auto& [id, title] : procedure_facts()) cat.titles_[id] = title;
    for (const auto& [concept_id, title] : concepts) cat.titles_["dx." + concept_id] = title;

    JsonFile facts = read_json(dir / "facts.json");
    const std::string params_canonical = canonical(facts.doc);
    const std::string params_logic = facts_logic_canonical(facts.doc);  // without titles and display settings
    std::set<std::string> lab_fact_ids;
    {
        Obj top(facts.doc, facts.name, "");
        top.str("version");
        {
            Obj display = top.sub("display");
            const std::string zone = display.str("timeZone", false);
            if (!zone.empty()) {
                try {
                    cat.time_zone_ = TimeZone::load(zone);
                } catch (const TimeZoneError& e) {
                    display.fail(display.path() + "timeZone", e.what());
                }
            }
            display.finish();
        }
        cat.params_ = read_parameters(top.sub("parameters"));
        auto array = [&](const char* key) -> const Json& {
            const Json* v = top.get(key);
            if (!v || !v->IsArray()) top.fail(key, "expected an array");
            return *v;
        };
        auto define = [&](Obj& o, const std::string& id, const std::string& title) {
            if (id.empty()) o.fail(o.path() + "id", "must not be empty");
            if (cat.titles_.count(id) || analyte_from_name(id)) o.fail(o.path() + "id", "'" + id + "' is defined twice");
            cat.titles_[id] = title;
        };
        const Json& computed = array("computed");
        for (rapidjson::SizeType i = 0; i < computed.Size(); ++i) {
            Obj c(computed[i], facts.name, "computed[" + std::to_string(i) + "].");
            ComputedValue v = read_computed(c);
            define(c, v.id, v.title);
            cat.computed_.push_back(std::move(v));
        }
        const Json& labs = array("labFacts");
        for (rapidjson::SizeType i = 0; i < labs.Size(); ++i) {
            Obj l(labs[i], facts.name, "labFacts[" + std::to_string(i) + "].");
            LabFact f = read_lab_fact(l, cat.computed_);
            define(l, f.id, f.title);
            lab_fact_ids.insert(f.id);
            cat.lab_facts_.push_back(std::move(f));
        }
        const Json& derived = array("derived");
        for (rapidjson::SizeType i = 0; i < derived.Size(); ++i) {
            Obj d(derived[i], facts.name, "derived[" + std::to_string(i) + "].");
            DerivedFact f{d.str("id"), d.str("title"), d.strings("all"), d.strings("any"), d.strings("none")};
            d.finish();
            for (const auto* list : {&f.all, &f.any, &f.none})
                for (const auto& a : *list)
                    if (!cat.titles_.count(a))
                        d.fail(d.path() + (list == &f.all ? "all" : list == &f.any ? "any" : "none"),
                               "unknown fact '" + a + "' (define it earlier)");
            if (f.all.empty() && f.any.empty()) d.fail(d.path() + "any", "needs 'all' or 'any' with at least one fact");
            define(d, f.id, f.title);
            cat.derived_.push_back(std::move(f));
        }
        top.finish();
    }

    const auto rules_dir = dir / "rules";
    if (!std::filesystem::is_directory(rules_dir)) throw CatalogError(rules_dir.string() + ": not a directory");
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(rules_dir))
        if (e.path().extension() == ".json") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    if (files.empty()) throw CatalogError(rules_dir.string() + ": no rule files");

    // One rule file. An order rule (order-rules/) has no suppressedBy, needs an order fact, and its texts
    // may only name known facts and {order}, the ordered drug.
    auto read_rule = [&](const std::filesystem::path& p, bool order_rule) {
        JsonFile f = read_json(p);
        Obj o(f.doc, f.name, "");
        Rule r;
        r.order_rule = order_rule;
        r.id = o.str("id");
        r.declared_version = o.str("version");
        r.title = o.str("title");
        const std::string sev = o.str("severity");
        if (sev == "high") r.severity = RuleSeverity::high;
        else if (sev == "moderate") r.severity = RuleSeverity::moderate;
        else if (sev == "low") r.severity = RuleSeverity::low;
        else o.fail("severity", "expected high, moderate or low");
        {
            Obj w = o.sub("when");
            r.all = w.strings("all");
            r.any = w.strings("any");
            r.none = w.strings("none");
            w.finish();
        }
        if (r.all.empty() && r.any.empty()) o.fail("when", "needs 'all' or 'any'");
        for (const auto* list : {&r.all, &r.any, &r.none})
            for (const auto& fact : *list)
                if (!cat.titles_.count(fact)) o.fail("when", "unknown fact '" + fact + "'");
        if (order_rule) {
            auto is_order = [](const std::string& fact) { return fact.rfind("order.", 0) == 0; };
            if (std::none_of(r.all.begin(), r.all.end(), is_order) &&
                (r.any.empty() || !std::all_of(r.any.begin(), r.any.end(), is_order)))
                o.fail("when", "an order rule needs an order fact (order.<class>) in 'all', or only order facts in 'any'");
        } else {
            r.suppressed_by = o.strings("suppressedBy");
        }
        r.summary = o.str("summary");
        check_placeholders(o, "summary", r.summary, cat.titles_, lab_fact_ids, order_rule);
        const Json* notes = o.get("notes");
        if (notes) {
            if (!notes->IsArray()) o.fail("notes", "expected an array");
            for (rapidjson::SizeType i = 0; i < notes->Size(); ++i) {
                Obj n((*notes)[i], f.name, "notes[" + std::to_string(i) + "].");
                NoteLine line{n.str("text"), n.strings("ifAny"), n.strings("ifAssessed")};
                n.finish();
                for (const auto& fact : line.if_any)
                    if (!cat.titles_.count(fact)) n.fail(n.path() + "ifAny", "unknown fact '" + fact + "'");
                for (const auto& fact : line.if_assessed)
                    if (!lab_fact_ids.count(fact)) n.fail(n.path() + "ifAssessed", "'" + fact + "' is not a lab fact");
                check_placeholders(n, n.path() + "text", line.text, cat.titles_, lab_fact_ids, order_rule);
                r.notes.push_back(std::move(line));
            }
        }
        {
            Obj c = o.sub("citation");
            r.citation_pmid = c.str("pmid");
            r.citation_text = c.str("text");
            c.finish();
        }
        o.str("seed", false);
        o.finish();
        if (r.id + ".json" != p.filename().string()) o.fail("id", "must match the file name");
        r.version = r.declared_version + "+" + hex8(fnv1a(canonical(f.doc), fnv1a(params_canonical)));
        r.logic_version = r.declared_version + "+" + hex8(fnv1a(logic_canonical(f.doc), fnv1a(params_logic)));
        return r;
    };

    std::vector<Rule> loaded;
    for (const auto& p : files) loaded.push_back(read_rule(p, false));

    // Order so that every rule comes after the rules that suppress it; reject unknown ids and cycles.
    std::map<std::string, const Rule*> by_id;
    for (const auto& r : loaded) by_id[r.id] = &r;
    std::set<std::string> done, visiting;
    std::vector<Rule> ordered;
    std::function<void(const Rule&)> visit = [&](const Rule& r) {
        if (done.count(r.id)) return;
        if (visiting.count(r.id)) throw CatalogError(r.id + ".json: suppressedBy forms a cycle");
        visiting.insert(r.id);
        for (const auto& s : r.suppressed_by) {
            auto it = by_id.find(s);
            if (it == by_id.end()) throw CatalogError(r.id + ".json: suppressedBy names unknown rule '" + s + "'");
            visit(*it->second);
        }
        visiting.erase(r.id);
        done.insert(r.id);
        ordered.push_back(r);
    };
    for (const auto& r : loaded) visit(r);
    cat.rules_ = std::move(ordered);

    // The order rules: optional folder; their facts are the order facts and everything above.
    for (const auto& [id, title] : order_classes()) cat.titles_["order." + id] = title;
    const auto order_dir = dir / "order-rules";
    if (std::filesystem::exists(order_dir)) {
        if (!std::filesystem::is_directory(order_dir)) throw CatalogError(order_dir.string() + ": not a directory");
        std::vector<std::filesystem::path> order_files;
        for (const auto& e : std::filesystem::directory_iterator(order_dir))
            if (e.path().extension() == ".json") order_files.push_back(e.path());
        std::sort(order_files.begin(), order_files.end());
        for (const auto& p : order_files) {
            Rule r = read_rule(p, true);
            if (cat.find(r.id)) throw CatalogError(p.string() + ": id: '" + r.id + "' is also a patient rule");
            cat.order_rules_.push_back(std::move(r));
        }
    }
    return cat;
}

}  // namespace calcalert::rules
