// The CDS Hooks HTTP server (on http::EventServer: slow clients hold a socket, not a worker; 503 with
// Retry-After when saturated): routing by path, JWT authentication of every CDS call, CORS per
// origin, /healthz, /metrics and preflights answered without a worker, JSON request logs (never
// tokens), a deadline per call (call_deadline_ms, fhirServer reads included), and a graceful stop
// that lets calls in flight finish.
//
//   GET  /cds-services                     discovery (JWT)
//   POST /cds-services/{id}                a service call (JWT)
//   POST /cds-services/{id}/feedback       feedback (JWT)
//   OPTIONS any                            CORS preflight (no JWT; browsers send none)
//   GET  /explain/<token>                  an alert's explanation page (no JWT: a browser opens it; the
//                                          signed, short-lived token is the credential, explain_links.hpp)
//   GET  /healthz, GET /metrics            for the platform (no JWT; keep them off the public network)
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "adapters/cds_hooks/auth.hpp"
#include "adapters/cds_hooks/config.hpp"
#include "adapters/cds_hooks/metrics.hpp"
#include "adapters/cds_hooks/service.hpp"
#include "adapters/state/state_store.hpp"
#include "mappings/terminology.hpp"
#include "rules/catalog.hpp"

namespace calcalert::cds {

using Clock = std::function<std::int64_t()>;
Clock system_clock();

// One JSON object per line on a stream, serialized across threads.
class JsonLog {
public:
    explicit JsonLog(std::ostream& out, Clock clock) : out_(out), clock_(std::move(clock)) {}
    // fields: key/value pairs written as JSON strings after "ts", "level" and "msg".
    void write(const std::string& level, const std::string& msg,
               const std::vector<std::pair<std::string, std::string>>& fields = {});

private:
    std::ostream& out_;
    Clock clock_;
    std::mutex mutex_;
};

struct ServerDeps {
    const mappings::Terminology* terminology = nullptr;
    const rules::RuleCatalog* catalog = nullptr;
    const mappings::Medications* medications = nullptr;  // the order rules' drug data; null: no order rules
    state::StateStore* store = nullptr;
    // Where batches of replay records are written (replay_flush_ms > 0): a store on a connection of
    // its own to the same database; null: `store` itself.
    state::ReplayStore* replay_writer = nullptr;
    std::vector<std::string> lab_tokens;
    Clock clock;                  // defaults to the system clock
    UrlFetcher jku_fetcher;       // defaults to curl_fetcher
    FhirSourceFactory sources;    // defaults to fhir_client_sources(config, credentials)
    ServerCredentials credentials;  // the service's own, for fallback reads (config.fhir_server_auth)
    std::ostream* log = nullptr;  // defaults to std::cerr
    // The explanation pages' guidance; null: read from the catalog's guidance.json (when explain_pages).
    const explain::Guidance* guidance = nullptr;
};

class CdsServer {
public:
    // Validates the configuration and loads the issuers' key files (ConfigError).
    CdsServer(ServeConfig config, ServerDeps deps);
    ~CdsServer();
    CdsServer(const CdsServer&) = delete;
    CdsServer& operator=(const CdsServer&) = delete;

    void start();                          // binds and accepts (throws on bind failure)
    void stop(int grace_ms = 10000);       // stops accepting; waits for calls in flight; then closes
    int port() const;                      // the bound port (after start)
    std::string base_url() const;          // public_base_url, else listen_url()
    std::string listen_url() const;        // http://<bind>:<port>: where it listens (after start)
    Metrics& metrics();
    JwtVerifier& verifier();
    ExplainPages* explain();  // null when explain_pages is off

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace calcalert::cds
