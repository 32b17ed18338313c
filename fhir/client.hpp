// A FHIR R4 REST client over libcurl: one reused curl handle per client (keep-alive), never shared
// across threads (use one FhirClient per thread). gzip, explicit timeouts, TLS verification on by
// default, bearer token auth, and retry with exponential backoff on 429/502/503/504 and connection
// failures, honouring Retry-After. Every error names the request (method and URL) and what the
// server said (an OperationOutcome's issues, or that the body was HTML / not FHIR JSON).
// The bearer token never appears in an error message (it is redacted should a server echo it).
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

// The constructor throws std::invalid_argument for options it cannot use (a base URL that is not
// http(s)://host[:port][/path], user:password@ in it, a token with a line break, negative numbers).
struct ClientOptions {
    std::string base_url;          // e.g. http://127.0.0.1:8080/fhir (no trailing slash needed)
    std::string bearer_token;      // sent as "Authorization: Bearer ..."; never logged
    bool verify_tls = true;        // off only when explicitly asked
    std::string ca_file;           // extra CA bundle (PEM), optional
    std::chrono::milliseconds connect_timeout{5000};
    std::chrono::milliseconds request_timeout{60000};  // whole request; 0 = no limit
    int max_retries = 4;           // retries after the first attempt (429/502/503/504, connection failures)
    std::chrono::milliseconds initial_backoff{500};
    std::chrono::milliseconds max_backoff{30000};
    std::size_t max_pages = 100000;  // a bound on link[next] chains
    std::string user_agent = "calcalert";
    // Injected for tests: how to wait between retries (default std::this_thread::sleep_for) ...
    std::function<void(std::chrono::milliseconds)> sleep;
    // ... and the wall clock, used to turn a `Retry-After: <HTTP-date>` into a wait (default system_clock).
    std::function<std::chrono::system_clock::time_point()> now;
};

struct Response {
    long status = 0;
    std::string body;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string method;
    std::string url;  // the URL that gave this response (after same-origin redirects)
    int attempts = 1;  // retries included
};

// A request that failed: transport error, refused URL, non-2xx status, or a body that is not the FHIR
// JSON asked for. The message starts with the request ("GET http://host/fhir/Observation?...: ").
class FhirError : public std::runtime_error {
public:
    FhirError(const std::string& message, long status) : std::runtime_error(message), status_(status) {}
    // The HTTP status of the response the error is about; 0 when there was none (transport error,
    // refused URL, request not sent).
    long status() const { return status_; }

private:
    long status_;
};

struct ClientStats {
    std::uint64_t requests = 0;  // attempts, retries included
    std::uint64_t retries = 0;
    std::uint64_t connections = 0;  // new connections opened; the other requests reused a kept-alive one
};

class FhirClient {
public:
    explicit FhirClient(ClientOptions options);
    ~FhirClient();
    FhirClient(const FhirClient&) = delete;
    FhirClient& operator=(const FhirClient&) = delete;

    // `target` is a path relative to the base URL ("Observation?code=...") or an absolute URL on the
    // same origin as the base URL (e.g. a link[next]); other origins are refused.
    // A relative target may start with '/' (still relative to the base URL). Characters a URL cannot
    // carry literally (space, '|', '"', '<', '>', '{', '}', non-ASCII ...) are percent-encoded; control
    // characters are refused. `headers` add to or replace the defaults (Accept, Content-Type).
    // These return the response whatever its status (after retries); they throw FhirError only for
    // transport failures and refused URLs. GET follows redirects on the same origin (at most 5);
    // a redirect to another origin is refused with FhirError.
    Response get(const std::string& target, const std::map<std::string, std::string>& headers = {});
    Response post(const std::string& target, const std::string& body, const std::map<std::string, std::string>& headers = {});
    Response put(const std::string& target, const std::string& body, const std::map<std::string, std::string>& headers = {});

    // JSON helpers: a 2xx response whose body is a FHIR JSON resource, else FhirError naming the
    // request and what came back.
    rapidjson::Document get_resource(const std::string& target);
    // The same check for a response from get/post/put (e.g. a conditional create): the resource of a
    // 2xx response, else FhirError naming the request and summarising what came back.
    rapidjson::Document parse_resource(const Response& response) const;
    // POSTs a transaction or batch Bundle to the base URL; returns the transaction-response Bundle.
    rapidjson::Document transaction(const std::string& bundle_json);

    // Searches and follows link[relation=next] only, calling on_page for every searchset Bundle.
    // Returns the number of pages. A next link may be absolute (same origin only), origin-relative
    // ("/fhir/...") or relative to the base URL. FhirError on anything but a searchset Bundle, a next
    // link to another origin, a next link already visited (a loop), or more than max_pages pages.
    std::size_t search(const std::string& target, const std::function<void(const rapidjson::Document&)>& on_page);

    const ClientStats& stats() const { return stats_; }
    const std::string& base_url() const { return base_; }

private:
    Response perform(const std::string& method, const std::string& target, const std::string* body,
                     const std::map<std::string, std::string>& headers);
    // The absolute URL of a target, or FhirError when it is refused.
    std::string resolve(const std::string& method, const std::string& target) const;
    // A link found in `page` (a next link or a redirect) as an absolute URL on the base URL's origin.
    std::string resolve_link(const Response& page, const std::string& what, const std::string& link) const;
    std::chrono::milliseconds retry_wait(int retry, const Response* response) const;
    void wait(std::chrono::milliseconds d) const;
    [[noreturn]] void fail(const std::string& message, long status) const;
    // parse_resource, then FhirError unless it is a Bundle of this type.
    rapidjson::Document expect_bundle(const Response& response, const std::string& type) const;
    struct Curl;
    std::unique_ptr<Curl> curl_;
    ClientOptions options_;
    std::string base_;
    std::string origin_;  // scheme://host:port of base_, lower case, port explicit
    ClientStats stats_;
};

}  // namespace calcalert::fhir
