// The rule catalog: derived-fact parameters and one data file per rule, loaded once and checked
// strictly (unknown keys, unknown fact names, suppression cycles are errors naming the file).
#pragma once

#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace calcalert::rules {

class CatalogError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct FactParameters {
    std::vector<std::string> counted_observation_statuses{"final", "amended", "corrected"};
    double future_tolerance_hours = 24;
    double albumin_window_hours = 48;
    double normal_albumin_g_dl = 4.0;
    double correction_factor = 0.8;
    double caxp_window_days = 90;
    double caxp_pairing_hours = 24;
    double caxp_threshold = 70;
    double hypercalcemia_window_days = 90;
    double corrected_calcium_default_high = 10.5;
    double ionized_calcium_high = 1.32;
    double phosphate_window_days = 90;
    double phosphate_default_high = 4.5;
    double pth_window_days = 180;
    double pth_default_high = 65;
    double egfr_window_days = 180;
    double egfr_below = 15;
};

struct DerivedFact {
    std::string id;
    std::string title;
    std::vector<std::string> any;
};

enum class RuleSeverity { high, moderate, low };
std::string_view to_string(RuleSeverity s);

struct NoteLine {
    std::string text;
    std::vector<std::string> if_any;  // render only when one of these facts is present
};

struct Rule {
    std::string id;
    std::string declared_version;
    std::string version;  // declared_version + "+" + a hash of the rule file and the fact parameters
    std::string title;
    RuleSeverity severity = RuleSeverity::low;
    std::vector<std::string> all, any, none;
    std::vector<std::string> suppressed_by;
    std::string summary;
    std::vector<NoteLine> notes;
    std::string citation_pmid;
    std::string citation_text;
    std::string citation_url() const { return "https://pubmed.ncbi.nlm.nih.gov/" + citation_pmid + "/"; }
};

// The facts computed from labs in code; their thresholds and windows come from FactParameters.
const std::vector<std::pair<std::string, std::string>>& lab_facts();  // id, title

class RuleCatalog {
public:
    // `dir` holds facts.json and rules/*.json. `condition_concepts` maps each condition concept_id the
    // terminology knows (fact dx.<concept_id>) to its title.
    static RuleCatalog load(const std::filesystem::path& dir, const std::map<std::string, std::string>& condition_concepts);

    const std::vector<Rule>& rules() const { return rules_; }  // suppressors before the rules they suppress
    const FactParameters& parameters() const { return params_; }
    const std::vector<DerivedFact>& derived() const { return derived_; }
    const std::string& title_of(const std::string& fact) const;
    const Rule* find(std::string_view id) const;
    const std::filesystem::path& directory() const { return dir_; }

private:
    std::filesystem::path dir_;
    FactParameters params_;
    std::vector<DerivedFact> derived_;
    std::vector<Rule> rules_;
    std::map<std::string, std::string> titles_;
};

}  // namespace calcalert::rules
