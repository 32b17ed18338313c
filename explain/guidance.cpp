#include "explain/guidance.hpp"

#include <fstream>
#include <sstream>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

namespace calcalert::explain {
namespace {

using Value = rapidjson::Value;

struct Reader {
    std::string name;
    [[noreturn]] void fail(const std::string& path, const std::string& what) const {
        throw GuidanceError(name + ": " + path + ": " + what);
    }
    std::string text(const Value& v, const std::string& path, bool allow_empty = false) const {
        if (!v.IsString()) fail(path, "expected a string");
        std::string s(v.GetString(), v.GetStringLength());
        if (!allow_empty && s.find_first_not_of(" \t\r\n") == std::string::npos) fail(path, "must not be empty");
        return s;
    }
    void only(const Value& o, const std::string& path, std::initializer_list<const char*> known) const {
        if (!o.IsObject()) fail(path, "expected an object");
        for (const auto& m : o.GetObject()) {
            const std::string k(m.name.GetString(), m.name.GetStringLength());
            bool ok = false;
            for (const char* n : known) ok = ok || k == n;
            if (!ok) {
                std::string list;
                for (const char* n : known) list += (list.empty() ? "" : ", ") + std::string(n);
                fail(path + "." + k, "unknown key (known: " + list + ")");
            }
        }
    }
    const Value& need(const Value& o, const char* key, const std::string& path) const {
        auto it = o.FindMember(key);
        if (it == o.MemberEnd()) fail(path + "." + key, "required");
        return it->value;
    }
};

}  // namespace

const RuleGuidance* Guidance::find(std::string_view rule_id) const {
    auto it = rules.find(rule_id);
    return it == rules.end() ? nullptr : &it->second;
}

Guidance Guidance::parse(const std::string& text, const std::string& name, const rules::RuleCatalog& catalog) {
    Reader r{name};
    rapidjson::Document d;
    d.Parse(text.c_str(), text.size());
    if (d.HasParseError())
        throw GuidanceError(name + ": not JSON at offset " + std::to_string(d.GetErrorOffset()) + " (" +
                            rapidjson::GetParseError_En(d.GetParseError()) + ")");
    r.only(d, "$", {"version", "source", "chart", "rules"});
    Guidance g;
    g.version = r.text(r.need(d, "version", "$"), "$.version");
    g.source = r.text(r.need(d, "source", "$"), "$.source");
    const Value& chart = r.need(d, "chart", "$");
    if (!chart.IsArray() || chart.Empty()) r.fail("$.chart", "expected a non-empty list");
    for (rapidjson::SizeType i = 0; i < chart.Size(); ++i) {
        const std::string p = "$.chart[" + std::to_string(i) + "]";
        r.only(chart[i], p, {"value", "always"});
        ChartValue c;
        c.value = r.text(r.need(chart[i], "value", p), p + ".value");
        bool known = rules::analyte_from_name(c.value).has_value();
        for (const auto& cv : catalog.computed()) known = known || cv.id == c.value;
        if (!known) r.fail(p + ".value", "'" + c.value + "' is neither an analyte nor a computed value of facts.json");
        if (auto it = chart[i].FindMember("always"); it != chart[i].MemberEnd()) {
            if (!it->value.IsBool()) r.fail(p + ".always", "expected true or false");
            c.always = it->value.GetBool();
        }
        for (const auto& other : g.chart)
            if (other.value == c.value) r.fail(p + ".value", "'" + c.value + "' is charted twice");
        g.chart.push_back(std::move(c));
    }
    const Value& rules = r.need(d, "rules", "$");
    if (!rules.IsObject()) r.fail("$.rules", "expected an object of rule id -> guidance");
    for (const auto& m : rules.GetObject()) {
        const std::string id(m.name.GetString(), m.name.GetStringLength());
        const std::string p = "$.rules." + id;
        if (!catalog.find(id)) r.fail(p, "no rule '" + id + "' in the catalog");
        r.only(m.value, p, {"passages", "citation"});
        RuleGuidance rg;
        const Value& passages = r.need(m.value, "passages", p);
        if (!passages.IsArray() || passages.Empty()) r.fail(p + ".passages", "expected a non-empty list");
        for (rapidjson::SizeType i = 0; i < passages.Size(); ++i) {
            const std::string pp = p + ".passages[" + std::to_string(i) + "]";
            r.only(passages[i], pp, {"section", "text"});
            rg.passages.push_back({r.text(r.need(passages[i], "section", pp), pp + ".section"),
                                   r.text(r.need(passages[i], "text", pp), pp + ".text")});
        }
        const Value& citation = r.need(m.value, "citation", p);
        r.only(citation, p + ".citation", {"pmid", "text"});
        rg.citation_pmid = r.text(r.need(citation, "pmid", p + ".citation"), p + ".citation.pmid");
        if (rg.citation_pmid.find_first_not_of("0123456789") != std::string::npos)
            r.fail(p + ".citation.pmid", "a PubMed id is digits only, not '" + rg.citation_pmid + "'");
        rg.citation_text = r.text(r.need(citation, "text", p + ".citation"), p + ".citation.text");
        g.rules.emplace(id, std::move(rg));
    }
    return g;
}

Guidance Guidance::load(const std::filesystem::path& file, const rules::RuleCatalog& catalog) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw GuidanceError(file.string() + ": cannot be read");
    std::stringstream ss;
    ss << in.rdbuf();
    return parse(ss.str(), file.string(), catalog);
}

}  // namespace calcalert::explain
