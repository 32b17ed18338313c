// SMART Backend Services (SMART App Launch 2.2, client-confidential-asymmetric) as a
// fhir::TokenProvider: the token endpoint from {base}/.well-known/smart-configuration (or given),
// a client_credentials grant authenticated by a private_key_jwt assertion signed RS384 or ES384
// (header kid, typ JWT, optional jku; iss = sub = client id, aud = the token URL, exp five minutes
// ahead, a unique jti), the access token cached until shortly before expires_in, and a new grant
// after a 401 from the FHIR server.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "fhir/token_provider.hpp"
#include "jose/jws.hpp"

namespace calcalert::auth {

// SMART v2 scopes for what calcalert reads and writes; v1 sites use "system/Observation.read ...".
inline constexpr const char* kDefaultScopes =
    "system/Observation.rs system/Condition.rs system/Procedure.rs system/Patient.r system/DetectedIssue.cruds";

struct SmartBackendOptions {
    std::string fhir_base_url;  // where .well-known/smart-configuration is read from
    std::string token_url;      // "" : the smart-configuration's token_endpoint
    std::string client_id;
    jose::PrivateKey key;       // signs the assertions (load_private_key_pem); its kid goes in the header
    std::string jku;            // optional: the URL of the client's JWK Set, sent in the header
    std::string scope = kDefaultScopes;
    std::string ca_file;        // extra CA bundle (PEM)
    bool verify_tls = true;
    std::chrono::milliseconds timeout{15000};  // per request to the discovery document and the token endpoint
    // Injected for tests: the wall clock (default system_clock) and the jti source (default 128 random bits).
    std::function<std::chrono::system_clock::time_point()> now;
    std::function<std::string()> new_jti;
};

// What the token endpoint granted last.
struct Grant {
    std::string access_token;
    std::string scope;  // as granted ("" when the endpoint did not say)
    std::chrono::system_clock::time_point expires_at;
};

class SmartBackendServices : public fhir::TokenProvider {
public:
    // std::invalid_argument for options it cannot use (no client id, a key that is neither ES384 nor RS384).
    explicit SmartBackendServices(SmartBackendOptions options);
    ~SmartBackendServices() override;

    // A cached token, else a new grant. FhirError: kind transport when the endpoint could not be
    // reached or answered 5xx; kind auth when it refused (the message has its error and
    // error_description, e.g. "invalid_client: ...").
    std::string token() override;
    bool refused(const std::string& token) override;
    std::string describe() const override;

    // The token URL in use (discovered at the first token()).
    std::string token_url() const;
    std::optional<Grant> last_grant() const;
    // The signed client assertion for the token URL (for tests and `doctor`).
    std::string client_assertion(const std::string& token_url);

private:
    std::string discover_token_url();
    Grant request_grant(const std::string& token_url);

    SmartBackendOptions options_;
    mutable std::mutex mutex_;
    std::string token_url_;
    std::optional<Grant> grant_;
};

// {"keys":[<the public JWK of key>]}: what a site registers for the client.
std::string client_jwks(const jose::PrivateKey& key);

}  // namespace calcalert::auth
