// The rule catalog loader (rules/catalog.*): facts.json, rules/*.json and order-rules/*.json. The
// input is "<path in the catalog>\n<content>" (e.g. "facts.json", "rules/calciphylaxis-risk.json"):
// the content replaces that one file in a per-process copy of rules/catalog (a temporary folder
// removed at exit) and RuleCatalog::load runs. CatalogError is the expected refusal. A catalog that
// loads is then used: the example cohort's patients through evaluate() and, with the draft-order
// fixtures, evaluate_orders(), and every finding into a DetectedIssue.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <rapidjson/document.h>

#include "fhir/json_parse.hpp"
#include "fhir/resource_reader.hpp"
#include "fuzz_support.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/fact_builder.hpp"
#include "mappings/medications.hpp"
#include "mappings/order_facts.hpp"
#include "rules/engine.hpp"

using namespace calcalert;
namespace fs = std::filesystem;

namespace {

rapidjson::Document parse_fixture(const fs::path& p) {
    rapidjson::Document d;
    if (!fhir::parse_untrusted_json(d, fuzz::read_file(p))) throw std::runtime_error(p.string() + ": not JSON");
    return d;
}

struct Setup {
    fuzz::TempDir dir{"calcalert-fuzz-catalog-"};
    std::map<std::string, std::string> originals;  // path in the catalog -> content
    std::map<std::string, rules::PatientFacts> patients;
    std::vector<rules::OrderFact> orders;
    Setup() {
        fs::copy(fuzz::kCatalogDir, dir.path(), fs::copy_options::recursive);
        for (const auto& e : fs::recursive_directory_iterator(fuzz::kCatalogDir))
            if (e.is_regular_file())
                originals[fs::relative(e.path(), fuzz::kCatalogDir).generic_string()] = fuzz::read_file(e.path());

        mappings::FactBuilder builder(fuzz::terminology());
        fhir::read_value(parse_fixture(fuzz::kRoot / "examples/cohort/cohort.json"), "cohort.json", builder);
        patients = builder.patients();
        const auto meds = mappings::Medications::load(fuzz::kDataDir);
        for (const char* f : {"iv-orders.json", "corticosteroid-orders.json"}) {
            const auto reading = mappings::read_draft_orders(parse_fixture(fuzz::kRoot / "tests/fixtures/orders" / f), meds);
            orders.insert(orders.end(), reading.facts.begin(), reading.facts.end());
        }
    }
};

void use(const rules::RuleCatalog& catalog, const Setup& s) {
    static const mappings::IssueOptions options;
    for (const auto& [patient, facts] : s.patients) {
        for (const auto& f : rules::evaluate(facts, fuzz::kNow, catalog).findings)
            (void)mappings::detected_issue_json(f, fuzz::kNow, options);
        for (const auto& f : rules::evaluate_orders(facts, s.orders, fuzz::kNow, catalog).findings)
            (void)mappings::detected_issue_json(f, fuzz::kNow, options);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const Setup setup;
    std::string_view name, content;
    if (!fuzz::split_named(fuzz::as_text(data, size), name, content)) return 0;
    const auto original = setup.originals.find(std::string(name));
    if (original == setup.originals.end()) return 0;

    const fs::path file = setup.dir.path() / name;
    fuzz::write_file(file, content);
    try {
        use(rules::RuleCatalog::load(setup.dir.path(), fuzz::terminology().concepts()), setup);
    } catch (const rules::CatalogError&) {
        // refused, as expected for most inputs
    }
    fuzz::write_file(file, original->second);
    return 0;
}
