// The TSV loaders of mappings/data/: Terminology::load (systems, concepts, lab-codes,
// condition-codes, units) and Medications::load (medications, routes, dose-forms). The input is
// "<file name>\n<content>": the content replaces that one file in a per-process copy of
// mappings/data (a temporary folder removed at exit) and the loader that reads it runs.
// TerminologyError is the expected refusal. What loads is then used: the example cohort through the
// fact builder and the rule engine, the draft-order fixtures through the order reader.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <rapidjson/document.h>

#include "fhir/json_parse.hpp"
#include "fhir/resource_reader.hpp"
#include "fuzz_support.hpp"
#include "mappings/fact_builder.hpp"
#include "mappings/medications.hpp"
#include "mappings/order_facts.hpp"
#include "rules/engine.hpp"

using namespace calcalert;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kTerminologyFiles{"systems.tsv", "concepts.tsv", "lab-codes.tsv",
                                                 "condition-codes.tsv", "units.tsv"};
const std::vector<std::string> kMedicationFiles{"medications.tsv", "routes.tsv", "dose-forms.tsv"};

rapidjson::Document parse_fixture(const fs::path& p) {
    rapidjson::Document d;
    if (!fhir::parse_untrusted_json(d, fuzz::read_file(p))) throw std::runtime_error(p.string() + ": not JSON");
    return d;
}

struct Setup {
    fuzz::TempDir dir{"calcalert-fuzz-tsv-"};
    std::map<std::string, std::string> originals;  // file name -> content
    rapidjson::Document cohort = parse_fixture(fuzz::kRoot / "examples/cohort/cohort.json");
    rapidjson::Document iv_orders = parse_fixture(fuzz::kRoot / "tests/fixtures/orders/iv-orders.json");
    rapidjson::Document steroid_orders = parse_fixture(fuzz::kRoot / "tests/fixtures/orders/corticosteroid-orders.json");
    Setup() {
        for (const auto& e : fs::directory_iterator(fuzz::kDataDir)) {
            originals[e.path().filename().string()] = fuzz::read_file(e.path());
            fs::copy_file(e.path(), dir.path() / e.path().filename());
        }
    }
};

bool is_one_of(std::string_view name, const std::vector<std::string>& files) {
    for (const auto& f : files)
        if (name == f) return true;
    return false;
}

void use(const mappings::Terminology& term, const Setup& s) {
    mappings::FactBuilder builder(term);
    fhir::read_value(s.cohort, "cohort.json", builder);
    for (const auto& [patient, facts] : builder.patients()) (void)rules::evaluate(facts, fuzz::kNow, fuzz::catalog());
}

void use(const mappings::Medications& meds, const Setup& s) {
    (void)mappings::read_draft_orders(s.iv_orders, meds);
    (void)mappings::read_draft_orders(s.steroid_orders, meds);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const Setup setup;
    std::string_view name, content;
    if (!fuzz::split_named(fuzz::as_text(data, size), name, content)) return 0;
    const bool terminology = is_one_of(name, kTerminologyFiles);
    if (!terminology && !is_one_of(name, kMedicationFiles)) return 0;

    const fs::path file = setup.dir.path() / name;
    fuzz::write_file(file, content);
    try {
        if (terminology)
            use(mappings::Terminology::load(setup.dir.path()), setup);
        else
            use(mappings::Medications::load(setup.dir.path()), setup);
    } catch (const mappings::TerminologyError&) {
        // refused, as expected for most inputs
    }
    fuzz::write_file(file, setup.originals.at(std::string(name)));
    return 0;
}
