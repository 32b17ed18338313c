// A CDS Hooks request body as the service takes it: CdsService::call for each of the three services
// (patient-view, order-select, order-sign: the hook must match, so one of them goes the whole way)
// and then CdsService::feedback, with the repository's real terminology, medications and rule catalog.
// Every input starts from an empty state store (fuzz::with_scratch_state). Missing prefetch is never
// fetched: the FhirSource fails (the service answers 412), so nothing touches the network. Bad input
// is an OperationOutcome reply, never an exception: any exception is a finding.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "adapters/cds_hooks/service.hpp"
#include "fuzz_support.hpp"

using namespace calcalert;

namespace {

// The issuer of every call and feedback, so that feedback can be about the cards the calls issued.
const std::string kIssuer = "https://ehr.example.org";

class NoFhirServer : public cds::FhirSource {
public:
    void fetch(const std::string&, const std::function<void(const rapidjson::Value&)>&) override {
        throw std::runtime_error("no FHIR server in the fuzz target");
    }
};

struct Setup {
    cds::ServeConfig config;
    mappings::Medications medications = mappings::Medications::load(fuzz::kDataDir);
    std::vector<std::string> lab_tokens = cds::lab_code_tokens(fuzz::kDataDir / "lab-codes.tsv");
    Setup() { config.fhir_servers = {"https://ehr.example.org/fhir"}; }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const Setup setup;
    const std::string_view body = fuzz::as_text(data, size);

    fuzz::with_scratch_state([&](state::StateStore& store) {
        cds::Metrics metrics;
        cds::CdsService service(
            setup.config, fuzz::terminology(), fuzz::catalog(), store, metrics,
            [](const std::string&, const std::string&, std::chrono::steady_clock::time_point) {
                return std::make_unique<NoFhirServer>();
            },
            setup.lab_tokens,
            &setup.medications);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        for (const auto& def : cds::service_definitions()) (void)service.call(def, body, fuzz::kNow, kIssuer, deadline);
        (void)service.feedback(cds::service_definitions().front(), body, fuzz::kNow, kIssuer);
        (void)metrics.render();
    });
    return 0;
}
