// What a clinician reads beside an alert on its explanation page, as data (rules/catalog/guidance.json,
// reviewed by clinicians like the rule files): per rule, the passages of the seed page the rule rests on
// (quoted word for word, with the seed's section) and the citation; and which values the page charts.
// Loaded once and checked strictly: an unknown key, a rule id the catalog does not know, a chart value that
// is neither an analyte nor a computed value, or an empty passage is a GuidanceError naming the file and
// the key's path. A rule without an entry shows "no guidance on file" on its page.
#pragma once

#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "rules/catalog.hpp"

namespace calcalert::explain {

class GuidanceError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct Passage {
    std::string section;  // the seed's section ("Diagnostic Tests")
    std::string text;     // the seed's words
};

struct RuleGuidance {
    std::vector<Passage> passages;
    std::string citation_pmid;
    std::string citation_text;
    std::string citation_url() const { return "https://pubmed.ncbi.nlm.nih.gov/" + citation_pmid + "/"; }
};

// One panel of the page's chart: an analyte ("phosphate") or a computed value ("ca-x-p").
struct ChartValue {
    std::string value;
    bool always = true;  // false: drawn only when the patient has a result of it in the window
};

struct Guidance {
    std::string version;
    std::string source;  // the seed document the passages come from
    std::vector<ChartValue> chart;
    std::map<std::string, RuleGuidance, std::less<>> rules;

    const RuleGuidance* find(std::string_view rule_id) const;

    // The file a catalog directory holds: <catalog>/guidance.json.
    static std::filesystem::path file_of(const rules::RuleCatalog& catalog) { return catalog.directory() / "guidance.json"; }
    static Guidance parse(const std::string& text, const std::string& name, const rules::RuleCatalog& catalog);
    static Guidance load(const std::filesystem::path& file, const rules::RuleCatalog& catalog);
};

}  // namespace calcalert::explain
