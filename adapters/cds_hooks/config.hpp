// The configuration of `calcalert serve`: one JSON file with flat keys, checked strictly (an
// unknown key, a wrong type or an out-of-range value is a ConfigError naming the key's path, e.g.
// "$.issuers[1].jwks_url"). Every key can also be set by an environment variable
// CALCALERT_SERVE_<KEY IN UPPER CASE> (CALCALERT_SERVE_PORT, CALCALERT_SERVE_FHIR_SERVERS, ...), which
// wins over the file: lists as comma-separated text, `issuers` and `fhir_server_auth` as JSON text,
// booleans as true/false.
// An unknown CALCALERT_SERVE_* variable is an error too. There are no secrets in this file: keys are
// public JWK Sets (files or allow-listed jku URLs), the service's own credentials are named by their
// files; relative paths resolve against the file's folder.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace calcalert::cds {

class ConfigError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

enum class OutcomePolicy { fail, omit };

// The service's own credentials for one registered fhirServer, used for its fallback reads when a
// call carries no fhirAuthorization: a token file, or SMART Backend Services (a client id and the
// private key's file). Never sent to any other server.
struct FhirServerAuth {
    std::string server;           // one of fhir_servers
    std::string token_file;       // a bearer token (first line), re-read after a 401
    std::string smart_client_id;  // SMART Backend Services (with smart_key_file)
    std::string smart_key_file;   // PEM, EC P-384 (ES384) or RSA (RS384)
    std::string smart_scope;      // "" : system/Observation.rs system/Condition.rs ... (the poller's default)
    std::string smart_token_url;  // "" : from {server}/.well-known/smart-configuration
    std::string smart_jku;
};

struct IssuerConfig {
    std::string iss;                     // exact `iss` value
    std::string jwks_file;               // a JWK Set file ("" when none)
    std::vector<std::string> jku_allow;  // jku URLs this issuer may name (exact match)
};

struct ServeConfig {
    std::string bind_address = "127.0.0.1";
    int port = 8080;                    // 0: any free port
    std::string public_base_url;        // e.g. https://cds.example.org; "" -> http://<bind_address>:<port>
    int request_timeout_ms = 10000;     // a request must arrive whole (first to last byte) and its answer be taken within this
    int keep_alive_timeout_ms = 15000;  // idle time of a connection before its (next) request
    int max_keep_alive_requests = 100;
    int max_threads = 16;               // workers running calls; reading and writing take none
    int max_queued = 64;                // whole requests waiting for a worker; beyond: 503 + Retry-After
    int max_connections = 512;          // open connections; beyond: 503 + Retry-After and close
    int call_deadline_ms = 10000;       // one call from its arrival, queue wait and fhirServer reads included
    std::int64_t max_body_bytes = 8 * 1024 * 1024;
    std::string state_file;  // "" : state::default_state_path(), never the current directory
    std::vector<IssuerConfig> issuers;
    std::vector<std::string> fhir_servers;  // allowed fhirServer base URLs (exact, trailing '/' ignored)
    std::vector<FhirServerAuth> fhir_server_auth;  // the service's own credentials for some of them
    std::vector<std::string> cors_origins;  // allowed browser origins ("*" allows any)
    OutcomePolicy prefetch_outcome_policy = OutcomePolicy::fail;
    // How long an `overridden` card stays hidden for the issuer that received it (while the evidence is
    // unchanged): other cards, and critical cards (HIGH rules) when the override carries a coded reason.
    std::int64_t override_suppression_hours = 24 * 30;
    std::int64_t critical_override_hours = 72;
    std::int64_t clock_skew_seconds = 60;
    std::int64_t max_token_lifetime_seconds = 300;  // exp - iat at most this (plus the skew)
    // Replay records (jti) are checked in memory and by a read of the state database, and written in
    // batches every this many ms by a thread of their own (state::BatchedReplayStore); 0: each one
    // is written by its call, before the answer.
    int replay_flush_ms = 50;
    std::int64_t jwks_cache_seconds = 3600;
    int fhir_timeout_ms = 5000;             // per fallback request to fhirServer
    std::string fhir_ca_file;               // extra CA bundle for fhirServer and jku (PEM)
    std::string identifier_system = "urn:calcalert:detected-issue";
    std::string rule_system = "urn:calcalert:rule";
    bool insecure_dev = false;              // no JWT checks; only on a loopback bind address
    // Explanation pages (explain_links.hpp): each card links to GET /explain/<token> under public_base_url.
    bool explain_pages = true;
    std::string explain_key_file;           // HMAC key of the links (>= 32 bytes); "" : drawn at start
    std::int64_t explain_link_lifetime_seconds = 3600;
    int explain_cache_entries = 1000;       // pages held (LRU)
    std::int64_t explain_cache_bytes = 64 * 1024 * 1024;
};

// Reads `path` (optional: "" uses only defaults and environment) and then `env`.
ServeConfig load_serve_config(const std::string& path, const std::map<std::string, std::string>& env);
// The CALCALERT_SERVE_* variables of the process environment.
std::map<std::string, std::string> serve_environment();

// Checks the combination (issuers unless insecure_dev, loopback for insecure_dev, URLs). Throws ConfigError.
void validate(const ServeConfig& config);

bool is_loopback_address(const std::string& address);
// "https://Host:443/fhir/" -> "https://host:443/fhir" (scheme and host lower-cased, trailing '/' removed).
std::string normalize_base_url(const std::string& url);

}  // namespace calcalert::cds
