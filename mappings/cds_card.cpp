#include "mappings/cds_card.hpp"

namespace calcalert::mappings {
namespace {

// The summary must stay under 140 characters; cut at a character boundary (UTF-8) with an ellipsis.
std::string short_summary(const std::string& s) {
    constexpr std::size_t limit = 139;
    std::size_t chars = 0;
    for (unsigned char c : s)
        if ((c & 0xC0) != 0x80) ++chars;
    if (chars <= limit) return s;
    std::string out;
    std::size_t kept = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if ((c & 0xC0) != 0x80) {
            if (kept == limit - 1) break;
            ++kept;
        }
        out.push_back(s[i]);
    }
    return out + "\xE2\x80\xA6";  // …
}

}  // namespace

std::string_view card_indicator(rules::RuleSeverity severity) {
    switch (severity) {
        case rules::RuleSeverity::high: return "critical";
        case rules::RuleSeverity::moderate: return "warning";
        case rules::RuleSeverity::low: return "info";
    }
    return "info";
}

std::string card_uuid(const rules::Finding& f) {
    if (!f.order.empty()) return alert_identifier(f.patient, f.rule->id + "|" + f.order);
    return alert_identifier(f.patient, f.rule->id);
}

std::string markdown_escape(std::string_view text) {
    std::string out;
    out.reserve(text.size() + 8);
    for (char c : text) {
        switch (c) {
            case '\\': case '`': case '*': case '_': case '{': case '}': case '[': case ']':
            case '<': case '>': case '#': case '|': case '!':
                out.push_back('\\');
                [[fallthrough]];
            default:
                out.push_back(c);
        }
    }
    return out;
}

std::string card_detail_markdown(const rules::Finding& f, const CardOptions& o) {
    const rules::Rule& r = *f.rule;
    std::string md;
    md += "**" + markdown_escape(r.title) + "** (severity " + std::string(rules::to_string(r.severity)) + ")\n\n";
    md += "**Why**\n\n";
    for (const auto& e : f.evidence) {
        const std::string refs = rules::evidence_references(e, f.sources);
        md += "- **" + markdown_escape(e.label) + "**: " + markdown_escape(e.text) +
              (refs.empty() ? "" : " " + markdown_escape(refs)) + "\n";
    }
    if (!f.notes.empty()) {
        md += "\n";
        for (const auto& n : f.notes) md += markdown_escape(n) + "\n\n";
    } else {
        md += "\n";
    }
    md += "Rule `" + r.id + "` version `" + r.version + "`; alert identifier `" + card_uuid(f) + "` (" +
          markdown_escape(o.identifier_system) + ").\n\n";
    md += "Reference: [" + markdown_escape(r.citation_text.empty() ? "PMID " + r.citation_pmid : r.citation_text) + "](" +
          r.citation_url() + ")\n";
    if (!f.sources.empty()) {  // the resources behind the evidence lines, by number, out of the main text
        md += "\nEvidence:";
        for (std::size_t i = 0; i < f.sources.size(); ++i)
            md += std::string(i ? "; " : " ") + "\\[" + std::to_string(i + 1) + "\\] `" + f.sources[i] + "`";
        md += "\n";
    }
    return md;
}

void write_card(JsonWriter& w, const rules::Finding& f, const CardOptions& o, const std::vector<CardLink>& links) {
    const rules::Rule& r = *f.rule;
    const std::string uuid = card_uuid(f);
    w.StartObject();
    kv(w, "uuid", uuid);
    kv(w, "summary", short_summary(f.summary));
    kv(w, "indicator", card_indicator(r.severity));
    kv(w, "detail", card_detail_markdown(f, o));
    w.Key("source");
    w.StartObject();
    kv(w, "label", o.source_label);
    kv(w, "url", r.citation_url());
    w.Key("topic");
    w.StartObject();
    kv(w, "system", o.rule_system);
    kv(w, "code", r.id);
    kv(w, "display", r.title);
    w.EndObject();
    w.EndObject();
    w.Key("overrideReasons");
    w.StartArray();
    for (const auto& reason : o.override_reasons) {
        w.StartObject();
        kv(w, "system", o.override_reason_system);
        kv(w, "code", reason.code);
        kv(w, "display", reason.display);
        w.EndObject();
    }
    w.EndArray();
    if (!links.empty()) {
        w.Key("links");
        w.StartArray();
        for (const auto& l : links) {
            w.StartObject();
            kv(w, "label", l.label);
            kv(w, "url", l.url);
            kv(w, "type", l.type);
            w.EndObject();
        }
        w.EndArray();
    }
    w.Key("extension");
    w.StartObject();
    w.Key(kCardExtension);
    w.StartObject();
    w.Key("identifier");
    w.StartObject();
    kv(w, "system", o.identifier_system);
    kv(w, "value", uuid);
    w.EndObject();
    kv(w, "rule", r.id);
    kv(w, "ruleVersion", r.version);
    kv(w, "severity", rules::to_string(r.severity));
    kv(w, "patient", f.patient);
    kv(w, "evidenceHash", f.evidence_hash);
    if (!f.order.empty()) kv(w, "order", f.order);
    w.Key("evidence");
    w.StartArray();
    for (const auto& e : f.evidence) {
        w.StartObject();
        kv(w, "fact", e.fact);
        kv(w, "label", e.label);
        kv(w, "text", e.text);
        w.Key("sources");
        w.StartArray();
        for (const auto& s : e.sources) str(w, s);
        w.EndArray();
        w.EndObject();
    }
    w.EndArray();
    w.EndObject();
    w.EndObject();
    w.EndObject();
}

std::string card_json(const rules::Finding& f, const CardOptions& o, const std::vector<CardLink>& links) {
    rapidjson::StringBuffer sb;
    JsonWriter w(sb);
    write_card(w, f, o, links);
    return sb.GetString();
}

}  // namespace calcalert::mappings
