// `calcalert doctor --server URL`: whether a FHIR server offers what calcalert needs, a line per
// check (adapters/poll/server_check: the decisions), before go-live.
#include <iostream>
#include <memory>

#include "adapters/cli/cli.hpp"
#include "adapters/cli/commands.hpp"
#include "adapters/cli/server_options.hpp"
#include "adapters/poll/server_check.hpp"
#include "auth/smart_backend.hpp"
#include "fhir/client.hpp"
#include "fhir/json_parse.hpp"

namespace calcalert::cli {
namespace {

const char* const kDoctorHelp = R"(Usage: calcalert doctor --server URL [authentication and TLS options as for poll]

Reads the server's CapabilityStatement (/metadata) and SMART configuration
(/.well-known/smart-configuration), gets a token when SMART Backend Services options are given,
makes one Observation search, and prints one line per thing calcalert needs:
  ok       it is there
  gap      it is not; calcalert works around it (the line says how)
  missing  it is not, and calcalert cannot poll this server without it

Exit codes: 0 nothing missing, 2 usage error, 3 something missing.
)";

}  // namespace

int doctor_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
    std::set<std::string> values = server_value_options();
    std::set<std::string> flags = server_flag_options();
    flags.insert("help");
    Options opts(args, values, flags);
    if (opts.flag("help")) {
        out << kDoctorHelp;
        return ok;
    }
    if (!opts.positional().empty()) throw UsageError("doctor takes no arguments, only options");
    apply_poll_config(opts);
    fhir::ClientOptions copts = client_options(opts);
    copts.max_retries = 1;
    copts.request_deadline = std::chrono::seconds(30);
    poll::ServerFacts facts;

    // The documents are read without a token: /metadata and the SMART configuration are public.
    fhir::ClientOptions open = copts;
    open.token_provider = nullptr;
    open.bearer_token.clear();
    fhir::FhirClient anonymous(open);
    rapidjson::Document capability, smart;
    try {
        capability = anonymous.get_resource("metadata");
        facts.capability = &capability;
    } catch (const fhir::FhirError& e) {
        facts.capability_error = e.what();
    }
    try {
        const fhir::Response r = anonymous.get(".well-known/smart-configuration", {{"Accept", "application/json"}});
        if (r.status == 200 && fhir::parse_untrusted_json(smart, r.body, fhir::JsonLimits{16, 1024 * 1024}) && smart.IsObject())
            facts.smart = &smart;
    } catch (const fhir::FhirError&) {
        // no SMART configuration
    }

    if (copts.token_provider) {
        facts.auth = copts.token_provider->describe();
        try {
            copts.token_provider->token();
            if (const auto* s = dynamic_cast<auth::SmartBackendServices*>(copts.token_provider.get()))
                if (const auto g = s->last_grant()) facts.granted_scope = g->scope;
        } catch (const std::exception& e) {
            facts.auth_error = e.what();
        }
    } else if (!copts.bearer_token.empty()) {
        facts.auth = "a bearer token from $CALCALERT_FHIR_TOKEN";
    }
    if (facts.auth_error.empty()) {
        try {
            fhir::FhirClient client(copts);
            client.get_resource("Observation?_count=1");
            facts.read_probe = "";
        } catch (const fhir::FhirError& e) {
            facts.read_probe = e.what();
        }
    }

    const auto checks = poll::assess(facts);
    out << "calcalert doctor: " << copts.base_url << "\n" << poll::render(checks);
    const bool ready = poll::ready(checks);
    out << (ready ? "ready: calcalert can poll this server\n" : "not ready: see the lines marked missing\n");
    (void)err;
    return ready ? ok : input_error;
}

}  // namespace calcalert::cli
