// The CDS Hooks services as pure-ish functions over request bodies: the discovery document, a
// service call (request -> prefetch resolution -> facts -> findings -> cards) and feedback. The
// HTTP layer (server.hpp) only adds authentication, CORS, metrics and sockets.
//
// Services: calcalert-patient-view (the eight patient rules), calcalert-order-select and
// calcalert-order-sign (the order rules of clinical-rules.md §3 over context.draftOrders, plus the
// patient rules' critical findings). Prefetch keys: `observations` (the patient's Observations with
// the analytes' LOINC codes, newest first), `conditions` (the patient's Conditions), `procedures`
// (the patient's dialysis Procedures) and `patient` (the Patient: deceased). A key that is present
// is used as sent (null = no data); a missing key is fetched from fhirServer with the
// fhirAuthorization token, following link[next] (a Patient the server does not have, 404 or 410, is
// no data); an OperationOutcome in a key fails the call (412) or is dropped and fetched like a
// missing key, by configuration.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <rapidjson/document.h>

#include "adapters/cds_hooks/config.hpp"
#include "adapters/cds_hooks/explain_links.hpp"
#include "adapters/cds_hooks/metrics.hpp"
#include "adapters/state/state_store.hpp"
#include "fhir/token_provider.hpp"
#include "mappings/cds_card.hpp"
#include "mappings/medications.hpp"
#include "mappings/terminology.hpp"
#include "rules/catalog.hpp"

namespace calcalert::cds {

struct ServiceDef {
    std::string id;
    std::string hook;
    std::string title;
    std::string description;
    bool order_hook = false;
};
const std::vector<ServiceDef>& service_definitions();
const ServiceDef* find_service(std::string_view id);

// Feedback is bound to the client that received the card and to the exact card:
//   - every card a call returns is recorded in the state (StateStore::put_issued_card) under the
//     caller's issuer (the verified JWT `iss`), the service id and the card uuid, with its patient,
//     rule, order (order rules), severity and evidence hash, in the shared state, not one replica's
//     memory;
//   - a feedback entry counts only when that issuer was issued that card uuid by that service; any
//     other entry is ignored (the call still answers 200, as the spec's feedback is a report, and
//     calcalert_cds_feedback_ignored_total counts it);
//   - an `overridden` outcome hides the card only for the same issuer, patient, rule and order, and
//     only while the finding's evidence hash is the one the issuer was shown: a later card with other
//     evidence (a new lab, a new condition, a new rule logic version) is shown again. A critical card
//     (HIGH rule) is hidden only by an override with a coded overrideReason, for
//     critical_override_hours (default 72); other cards for override_suppression_hours (default 720).
// The issuer of every call in --insecure-dev mode, where there is no JWT.
inline constexpr const char* kInsecureDevIssuer = "urn:calcalert:insecure-dev";

// "http://loinc.org|17861-6" for every lab code of the terminology data (mappings/data/lab-codes.tsv).
std::vector<std::string> lab_code_tokens(const std::filesystem::path& lab_codes_tsv);
// Prefetch key -> template, within the CDS Hooks 2.0 prefetch restrictions (type-level searches on
// the patient reference and token equality, _sort; the instance read of the patient):
// `observations`, `conditions`, `procedures` (the dialysis procedure codes) and `patient`.
std::map<std::string, std::string> prefetch_templates(const std::vector<std::string>& lab_tokens,
                                                      const std::vector<std::string>& procedure_tokens);
std::string discovery_json(const std::vector<std::string>& lab_tokens, const std::vector<std::string>& procedure_tokens);
// Replaces {{context.patientId}} (the only token the templates use).
std::string render_template(const std::string& tmpl, const std::string& patient_id);
// A FHIR id: [A-Za-z0-9-.]{1,64}.
bool is_fhir_id(std::string_view s);

struct HttpReply {
    int status = 200;
    std::string body;
    std::string content_type = "application/json";
};
// An OperationOutcome reply with one issue.
HttpReply outcome_reply(int status, const std::string& code, const std::string& diagnostics);

// Where missing prefetch data comes from: the request's fhirServer with its token.
class FhirSource {
public:
    virtual ~FhirSource() = default;
    // A search (following link[next]; on_page gets each searchset Bundle) or a read (on_page gets the
    // resource). Throws on failure.
    virtual void fetch(const std::string& query, const std::function<void(const rapidjson::Value&)>& on_page) = 0;
};
// end_by: every read of the source ends by then (the call's deadline).
using FhirSourceFactory = std::function<std::unique_ptr<FhirSource>(
    const std::string& fhir_server, const std::string& access_token, std::chrono::steady_clock::time_point end_by)>;
// The service's own credentials by fhirServer base URL (normalize_base_url), from the config's
// fhir_server_auth: used when a call sends no fhirAuthorization; a call's own token always wins.
using ServerCredentials = std::map<std::string, std::shared_ptr<fhir::TokenProvider>>;
// FhirClient (libcurl) based sources: one client per call, timeouts from the config, every request
// cut to what is left of the call's deadline.
FhirSourceFactory fhir_client_sources(const ServeConfig& config, ServerCredentials credentials = {});

class CdsService {
public:
    CdsService(const ServeConfig& config, const mappings::Terminology& terminology, const rules::RuleCatalog& catalog,
               state::StateStore& store, Metrics& metrics, FhirSourceFactory sources,
               std::vector<std::string> lab_tokens, const mappings::Medications* medications);

    // Explanation pages: every card gets a link base_url() + "/explain/<token>" (null: no links).
    void set_explain(ExplainPages* pages, std::function<std::string()> base_url) {
        explain_ = pages;
        base_url_ = std::move(base_url);
    }

    const std::string& discovery() const { return discovery_; }
    // issuer: the verified JWT `iss` of the caller (kInsecureDevIssuer without authentication).
    // end_by: the call's deadline (fhirServer reads stop there: 412 naming it).
    HttpReply call(const ServiceDef& service, std::string_view body, std::int64_t now, const std::string& issuer,
                   std::chrono::steady_clock::time_point end_by);
    HttpReply feedback(const ServiceDef& service, std::string_view body, std::int64_t now, const std::string& issuer);

private:
    ServeConfig config_;
    const mappings::Terminology& term_;
    const rules::RuleCatalog& catalog_;
    const mappings::Medications* medications_;  // null: no order rules
    state::StateStore& store_;
    Metrics& metrics_;
    FhirSourceFactory sources_;
    std::map<std::string, std::string> templates_;
    std::string discovery_;
    mappings::CardOptions card_options_;
    std::vector<std::string> allowed_servers_;
    ExplainPages* explain_ = nullptr;
    std::function<std::string()> base_url_;
};

}  // namespace calcalert::cds
