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
    // Fact dialysis-procedure: a dialysis Procedure (ProcedureFact concept "dialysis") of a counted
    // status, performed within the window.
    double dialysis_window_days = 30;
    std::vector<std::string> dialysis_counted_statuses{"completed", "in-progress"};
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
    // declared_version + "+" + a hash of what decides firing and severity (the rule file without its
    // wording, and the fact parameters): the evidence hash rests on this, so a wording edit amends nothing.
    std::string logic_version;
    std::string title;
    RuleSeverity severity = RuleSeverity::low;
    std::vector<std::string> all, any, none;
    std::vector<std::string> suppressed_by;
    std::string summary;
    std::vector<NoteLine> notes;
    std::string citation_pmid;
    std::string citation_text;
    std::string citation_url() const { return "https://pubmed.ncbi.nlm.nih.gov/" + citation_pmid + "/"; }
    bool order_rule = false;  // from order-rules/: evaluated once per draft order by evaluate_orders()
};

// The facts computed from labs in code; their thresholds and windows come from FactParameters.
const std::vector<std::pair<std::string, std::string>>& lab_facts();  // id, title

// The facts computed from Procedures in code (dialysis-procedure); their window and statuses come from
// FactParameters.
const std::vector<std::pair<std::string, std::string>>& procedure_facts();  // id, title

// The order classes a draft MedicationRequest can match (fact order.<id>; OrderFact::order_class): id, title.
const std::vector<std::pair<std::string, std::string>>& order_classes();

class RuleCatalog {
public:
    // `dir` holds facts.json, rules/*.json (patient rules) and, optionally, order-rules/*.json (the order
    // rules of CDS Hooks order-select / order-sign; a catalog without that folder has none).
    // `condition_concepts` maps each condition concept_id the terminology knows (fact dx.<concept_id>) to
    // its title.
    static RuleCatalog load(const std::filesystem::path& dir, const std::map<std::string, std::string>& condition_concepts);

    // The patient rules (evaluate()), suppressors before the rules they suppress.
    const std::vector<Rule>& rules() const { return rules_; }
    // The order rules (evaluate_orders()), by id.
    const std::vector<Rule>& order_rules() const { return order_rules_; }
    const FactParameters& parameters() const { return params_; }
    const std::vector<DerivedFact>& derived() const { return derived_; }
    const std::string& title_of(const std::string& fact) const;
    // A patient rule or an order rule by id.
    const Rule* find(std::string_view id) const;
    const std::filesystem::path& directory() const { return dir_; }

private:
    std::filesystem::path dir_;
    FactParameters params_;
    std::vector<DerivedFact> derived_;
    std::vector<Rule> rules_;
    std::vector<Rule> order_rules_;
    std::map<std::string, std::string> titles_;
};

}  // namespace calcalert::rules
