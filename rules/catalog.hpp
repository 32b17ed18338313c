// The rule catalog: the facts (facts.json: lab facts, computed values, derived facts) and one data file
// per rule, loaded once and checked strictly (unknown keys, unknown fact names, suppression cycles are
// errors naming the file and the key's path).
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "rules/facts.hpp"
#include "rules/time_zone.hpp"

namespace calcalert::rules {

class CatalogError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The general parameters of facts.json.
struct FactParameters {
    std::vector<std::string> counted_observation_statuses{"final", "amended", "corrected"};
    double future_tolerance_hours = 24;
    // Fact dialysis-procedure: a dialysis Procedure (ProcedureFact concept "dialysis") of a counted
    // status, performed within the window.
    double dialysis_window_days = 30;
    std::vector<std::string> dialysis_counted_statuses{"completed", "in-progress"};
};

// A value computed from several results (facts.json "computed"): the engine knows how to compute each
// kind; the parameters are data.
struct ComputedValue {
    enum class Kind { albumin_corrected_calcium, product };
    std::string id;     // the value's fact name ("ca-x-p"): {ca-x-p} in a summary prints its short form
    std::string title;  // "Calcium-phosphate product"
    std::string short_label;  // "Ca×P"
    std::string unit;   // the unit it is written in ("mg²/dL²")
    int decimals = 2;   // decimals written (fixed), e.g. 1 for "Ca×P 75.0"
    Kind kind = Kind::product;
    // albumin-corrected-calcium: a reported corrected calcium, else total + factor × (normal − albumin)
    // when an albumin below `normal` lies within `albumin_window_hours`, else the total calcium; the latest wins.
    Analyte reported = Analyte::calcium_corrected;
    Analyte total = Analyte::calcium_total;
    Analyte albumin = Analyte::albumin;
    double albumin_window_hours = 48;
    double normal_albumin = 4.0;
    double factor = 0.8;
    // product: each `anchor` result (latest first) times the `partner` result nearest in time within
    // `pairing_hours`; its time is the anchor's.
    Analyte anchor = Analyte::phosphate;
    Analyte partner = Analyte::calcium_total;
    double pairing_hours = 24;
    // The longest a result used may lie before the value's own time (for the poller's history window).
    double reach_hours() const { return kind == Kind::product ? pairing_hours : albumin_window_hours; }
};

enum class Direction { above, below };
// How a value reported with a comparator ("<80", ">2500") counts: only where the comparator decides the
// threshold (clinical-rules.md §1.1), or never.
enum class BoundedValues { when_decided, never };

// A lab fact (facts.json "labFacts"): the latest value of one analyte or computed value within a window,
// strictly above or below a threshold. One generic evaluator in the engine handles them all.
struct LabFact {
    std::string id;
    std::string title;
    std::string value;               // the analyte name ("pth-intact") or a computed value id ("ca-x-p")
    std::optional<Analyte> analyte;  // set when `value` is an analyte
    int computed = -1;               // else the index in RuleCatalog::computed()
    double window_days = 0;          // "within N days": now - time <= N days
    Direction direction = Direction::above;
    double fallback = 0;             // "default": the threshold in the value's unit
    // "timesReferenceRangeHigh": when set and the result reports a reference-range high, the threshold is
    // that many times the high instead of the default (1: the lab's own upper limit).
    std::optional<double> times_reference_high;
    BoundedValues bounded = BoundedValues::when_decided;
};

// A fact defined from other facts (facts.json "derived"), like a rule's "when": it holds when every
// `all` fact holds, at least one `any` fact (if any are given) and no `none` fact.
struct DerivedFact {
    std::string id;
    std::string title;
    std::vector<std::string> all, any, none;
};

enum class RuleSeverity { high, moderate, low };
std::string_view to_string(RuleSeverity s);

struct NoteLine {
    std::string text;
    std::vector<std::string> if_any;       // render only when one of these facts is present
    std::vector<std::string> if_assessed;  // render only when one of these lab facts has a value in its window
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
    const std::vector<ComputedValue>& computed() const { return computed_; }
    const std::vector<LabFact>& lab_facts() const { return lab_facts_; }
    const LabFact* lab_fact(std::string_view id) const;
    const std::vector<DerivedFact>& derived() const { return derived_; }
    // How far back a patient's history must be read for every lab fact: the longest window, plus what a
    // computed value reaches further back (the albumin or the paired calcium), in days.
    double history_window_days() const;
    // The zone explanations write times in (facts.json display.timeZone, default UTC); a command-line
    // option may replace it. Never part of a version or an evidence hash.
    const TimeZone& time_zone() const { return time_zone_; }
    void set_time_zone(TimeZone zone) { time_zone_ = std::move(zone); }
    const std::string& title_of(const std::string& fact) const;
    // Changes exactly when some rule's logic_version does (a hash of every rule id and logic_version).
    std::string logic_fingerprint() const;
    // A patient rule or an order rule by id.
    const Rule* find(std::string_view id) const;
    const std::filesystem::path& directory() const { return dir_; }

private:
    std::filesystem::path dir_;
    FactParameters params_;
    std::vector<ComputedValue> computed_;
    std::vector<LabFact> lab_facts_;
    std::vector<DerivedFact> derived_;
    TimeZone time_zone_;
    std::vector<Rule> rules_;
    std::vector<Rule> order_rules_;
    std::map<std::string, std::string> titles_;
};

}  // namespace calcalert::rules
