// A FHIR R4 REST client over libcurl: one reused curl handle per client (keep-alive), never shared
// across threads (use one FhirClient per thread). gzip, explicit timeouts, TLS verification on by
// default, bearer token auth, and retry with exponential backoff on 429/502/503/504 and connection
// failures, honouring Retry-After. Every error names the request (method and URL) and what the
// server said (an OperationOutcome's issues, or that the body was HTML / not FHIR JSON).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include <rapidjson/document.h>

namespace calcalert::fhir {

struct ClientOptions {
    std::string base_url;          // e.g. http://127.0.0.1:8080/fhir (no trailing slash needed)
    std::string bearer_token;      // sent as "Authorization: Bearer ..."; never logged
    bool verify_tls = true;        // off only when explicitly asked
    std::string ca_file;           // extra CA bundle (PEM), optional
    std::chrono::milliseconds connect_timeout{5000};
    std::chrono::milliseconds request_timeout{60000};
    int max_retries = 4;           // retries after the first attempt
    std::chrono::milliseconds initial_backoff{500};
    std::chrono::milliseconds max_backoff{30000};
    std::size_t max_pages = 100000;  // a bound on link[next] chains
    std::string user_agent = "calcalert";
    // Injected for tests: how to wait between retries.
    std::function<void(std::chrono::milliseconds)> sleep;
};

struct Response {
    long status = 0;
    std::string body;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string method;
    std::string url;
};

// A request that failed: transport error, non-2xx status, or a body that is not the FHIR JSON asked for.
class FhirError : public std::runtime_error {
public:
    FhirError(const std::string& message, long status) : std::runtime_error(message), status_(status) {}
    long status() const { return status_; }  // 0 for transport errors

private:
    long status_;
};

struct ClientStats {
    std::uint64_t requests = 0;  // attempts, retries included
    std::uint64_t retries = 0;
};

class FhirClient {
public:
    explicit FhirClient(ClientOptions options);
    ~FhirClient();
    FhirClient(const FhirClient&) = delete;
    FhirClient& operator=(const FhirClient&) = delete;

    // `target` is a path relative to the base URL ("Observation?code=...") or an absolute URL on the
    // same origin as the base URL (e.g. a link[next]); other origins are refused.
    // These return the response whatever its status (after retries); they throw FhirError only for
    // transport failures and refused URLs.
    Response get(const std::string& target, const std::map<std::string, std::string>& headers = {});
    Response post(const std::string& target, const std::string& body, const std::map<std::string, std::string>& headers = {});
    Response put(const std::string& target, const std::string& body, const std::map<std::string, std::string>& headers = {});

    // JSON helpers: a 2xx response whose body is a FHIR JSON resource, else FhirError naming the
    // request and what came back.
    rapidjson::Document get_resource(const std::string& target);
    // POSTs a transaction or batch Bundle to the base URL; returns the transaction-response Bundle.
    rapidjson::Document transaction(const std::string& bundle_json);

    // Searches and follows link[relation=next] only, calling on_page for every searchset Bundle.
    // Returns the number of pages.
    std::size_t search(const std::string& target, const std::function<void(const rapidjson::Document&)>& on_page);

    const ClientStats& stats() const { return stats_; }
    const std::string& base_url() const { return base_; }

private:
    Response perform(const std::string& method, const std::string& target, const std::string* body,
                     const std::map<std::string, std::string>& headers);
    struct Curl;
    std::unique_ptr<Curl> curl_;
    ClientOptions options_;
    std::string base_;
    ClientStats stats_;
};

}  // namespace calcalert::fhir
