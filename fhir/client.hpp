// A FHIR R4 REST client over libcurl: one reused curl handle per client (keep-alive), never shared
// across threads (use one FhirClient per thread). gzip, explicit timeouts, TLS verification on by
// default, bearer token auth, response size caps, and request-level resilience:
//
// - Retries. A request is replayable when sending it twice leaves the server as sending it once:
//   GET, PUT, and transaction(..., Replay::safe). A replayable request is retried, up to max_retries
//   times, on transport errors (cannot resolve or connect, connection reset, timed out, no answer,
//   a body cut short: CURLE_PARTIAL_FILE, HTTP/2 stream errors), on every 5xx, 429 and 408, and, in
//   get_resource, search and transaction(..., Replay::safe), on a 2xx whose body is not the FHIR
//   JSON asked for (truncated or malformed JSON, an HTML page with status 200, not a resource, not a
//   Bundle of the expected type). Other 4xx are never retried. A POST that is not replayable (post(),
//   transaction(..., Replay::unsafe)) is retried only when it cannot have been processed: when it
//   never left this machine (cannot resolve / connect) or on 429 and 503. (libcurl itself resends a
//   request, a POST too, on a new connection when a reused kept-alive connection turns out closed
//   before any byte of the answer arrived, the usual race with a server's keep-alive timeout; that
//   resend is not counted as a retry.)
// - Waits. Retry-After (seconds or an HTTP-date, measured with `now`) is honoured as sent, capped at
//   max_backoff. Otherwise the wait is initial_backoff doubled per retry, capped at max_backoff, with
//   jitter: Jitter::equal (default) waits in [d/2, d), Jitter::full in [0, d), Jitter::none exactly d,
//   where d is that capped doubling and the randomness comes from `random`.
// - Deadline. request_timeout bounds one attempt; request_deadline bounds one logical request (a
//   get_resource, one search page, one transaction, one get/post/put: all its attempts, redirects and
//   waits). Each attempt's timeout is cut to what is left of the deadline (an attempt cut short that
//   way fails with kind deadline); a retry whose wait would reach the deadline is not made: FhirError
//   of kind deadline at once.
// - Fault budget. fault_budget bounds the retries (of every reason above) of all requests together,
//   e.g. per polling pass: reset_fault_budget() at the start of a pass. When it is spent, the next
//   retry is not made: FhirError of kind budget_spent ("fault budget of N retries spent") at once;
//   requests that need no retry still go through.
// - Size cap. A body larger than max_response_bytes, counted after gzip/deflate decoding (so a gzip
//   bomb is stopped after max_response_bytes, not after inflating it), or announced larger by its
//   Content-Length, aborts the transfer: FhirError of kind too_large, never retried.
//
// Every error names the request (method and URL) and what the server said (an OperationOutcome's
// issues, or that the body was HTML / not FHIR JSON). The bearer token never appears in an error
// message (it is redacted should a server echo it).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <stdexcept>
#include <string>

#include <rapidjson/document.h>

#include "fhir/http_transport.hpp"
#include "fhir/token_provider.hpp"

namespace calcalert::fhir {

// How a backoff wait is spread (see the header comment). d is initial_backoff doubled per retry,
// capped at max_backoff; r is a value of ClientOptions::random in [0, 1).
enum class Jitter {
    none,   // d
    full,   // r * d: in [0, d)
    equal,  // d/2 + r * (d - d/2): in [d/2, d)
};

// The constructor throws std::invalid_argument for options it cannot use (a base URL that is not
// http(s)://host[:port][/path], user:password@ in it, a token with a line break, negative numbers).
struct ClientOptions {
    std::string base_url;          // e.g. http://127.0.0.1:8080/fhir (no trailing slash needed)
    std::string bearer_token;      // sent as "Authorization: Bearer ..."; never logged
    // Instead of bearer_token (not both): asked before each request; on a 401 told so, and the
    // request is sent once more with its new token (fhir/token_provider.hpp).
    std::shared_ptr<TokenProvider> token_provider;
    bool verify_tls = true;        // off only when explicitly asked
    std::string ca_file;           // extra CA bundle (PEM), optional
    std::chrono::milliseconds connect_timeout{5000};
    std::chrono::milliseconds request_timeout{60000};   // one attempt; 0 = no limit
    std::chrono::milliseconds request_deadline{0};      // one logical request, retries and waits included; 0 = none
    // Every request of this client ends by this time (on monotonic_now's clock), retries and waits
    // included, e.g. the deadline of the CDS Hooks call the client reads for. Unset: none.
    std::optional<std::chrono::steady_clock::time_point> end_by;
    int max_retries = 4;           // retries after the first attempt of one request (see the header comment)
    std::uint64_t fault_budget = 0;  // retries of all requests together until reset_fault_budget(); 0 = unlimited
    std::chrono::milliseconds initial_backoff{500};
    std::chrono::milliseconds max_backoff{30000};
    Jitter jitter = Jitter::equal;
    std::size_t max_pages = 100000;  // a bound on link[next] chains
    // A bound on one response body after decoding (gzip, deflate); 0 = no limit.
    std::size_t max_response_bytes = std::size_t{64} * 1024 * 1024;
    std::string user_agent = "calcalert";
    // Injected for tests: how to wait between retries (default std::this_thread::sleep_for) ...
    std::function<void(std::chrono::milliseconds)> sleep;
    // ... the wall clock, used to turn a `Retry-After: <HTTP-date>` into a wait (default system_clock) ...
    std::function<std::chrono::system_clock::time_point()> now;
    // ... the monotonic clock that measures request_deadline (default steady_clock) ...
    std::function<std::chrono::steady_clock::time_point()> monotonic_now;
    // ... and the jitter's randomness: a value in [0, 1) (others are clamped into it). Default: a
    // std::mt19937_64 per client, seeded from std::random_device.
    std::function<double()> random;
};

// What went wrong, for callers that decide what to do next (retry the pass later, re-read the
// server before writing again, give up).
enum class FhirErrorKind {
    transport,     // no complete answer: cannot connect, reset, timed out, cut short (status 0)
    http_status,   // a non-2xx answer (status() says which)
    bad_body,      // a 2xx answer whose body is not the FHIR JSON asked for, or a malformed link in it
    refused,       // not sent: a URL or header the client refuses, another origin, a paging loop, max_pages
    budget_spent,  // a retry was due but ClientOptions::fault_budget is spent
    deadline,      // ClientOptions::request_deadline passed, or a retry's wait would pass it
    too_large,     // the body passed ClientOptions::max_response_bytes
    auth,          // no token: the token provider's service refused (or its file is missing)
};

// A request that failed: transport error, refused URL, non-2xx status, or a body that is not the FHIR
// JSON asked for. The message starts with the request ("GET http://host/fhir/Observation?...: ").
class FhirError : public std::runtime_error {
public:
    // The kind follows from the status: 0 transport, 2xx bad_body, anything else http_status.
    FhirError(const std::string& message, long status)
        : FhirError(message, status, status == 0 ? FhirErrorKind::transport
                                     : status >= 200 && status <= 299 ? FhirErrorKind::bad_body
                                                                      : FhirErrorKind::http_status) {}
    FhirError(const std::string& message, long status, FhirErrorKind kind)
        : std::runtime_error(message), status_(status), kind_(kind) {}
    // The HTTP status of the response the error is about; 0 when there was none (transport error,
    // refused URL, request not sent, body too large, deadline or budget before an answer).
    long status() const { return status_; }
    FhirErrorKind kind() const { return kind_; }
    // Whether the same request may succeed later: transport, bad_body, deadline, budget_spent, and
    // http_status 5xx, 429 and 408. Not: refused, too_large, other statuses.
    bool transient() const {
        switch (kind_) {
            case FhirErrorKind::transport:
            case FhirErrorKind::bad_body:
            case FhirErrorKind::deadline:
            case FhirErrorKind::budget_spent: return true;
            case FhirErrorKind::http_status: return status_ >= 500 || status_ == 429 || status_ == 408;
            case FhirErrorKind::refused:
            case FhirErrorKind::too_large:
            case FhirErrorKind::auth: return false;
        }
        return false;
    }

private:
    long status_;
    FhirErrorKind kind_;
};

// What an answer's body says, for an error message: "" for an empty body, else ": " and an
// OperationOutcome's issues (bounded), or that it is HTML, another resource or not FHIR JSON, with a
// printable snippet.
std::string error_body_summary(const Response& response);

// Whether a transaction or batch Bundle may be sent twice (see FhirClient::transaction).
enum class Replay {
    unsafe,  // it may not: retried only when it cannot have been processed
    safe,    // applying it twice gives the result of applying it once: retried like a read
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
    // These return the response whatever its status once the retries are used up (a retried status
    // on the last attempt comes back as it is); they throw FhirError for transport failures, refused
    // URLs, a body over max_response_bytes, and a retry stopped by request_deadline or fault_budget.
    // GET follows redirects on the same origin (at most 5); a redirect to another origin is refused
    // with FhirError. get and put are replayable; post is not (see the header comment).
    Response get(const std::string& target, const std::map<std::string, std::string>& headers = {});
    Response post(const std::string& target, const std::string& body, const std::map<std::string, std::string>& headers = {});
    Response put(const std::string& target, const std::string& body, const std::map<std::string, std::string>& headers = {});
    // DELETE, replayable (deleting twice leaves the server as deleting once).
    Response del(const std::string& target, const std::map<std::string, std::string>& headers = {});

    // A GET whose 2xx body is streamed to `Download::sink` (e.g. a Bulk Data file, too large for
    // max_response_bytes): retried like get(), with `restart` called before every attempt so that
    // the sink can start over. The returned Response has an empty body when the status is 2xx.
    struct Download {
        BodyStream sink;
        std::function<void()> restart;
        std::chrono::milliseconds attempt_timeout{0};  // one attempt; 0 = no limit
        std::chrono::milliseconds deadline{0};         // all attempts and waits; 0 = none (end_by still holds)
    };
    Response download(const std::string& target, const Download& download,
                      const std::map<std::string, std::string>& headers = {});

    // JSON helpers: a 2xx response whose body is a FHIR JSON resource, else FhirError naming the
    // request and what came back. A 2xx whose body is not one is retried like a 503.
    rapidjson::Document get_resource(const std::string& target);
    // The same check for a response from get/post/put (e.g. a conditional create): the resource of a
    // 2xx response, else FhirError naming the request and summarising what came back.
    rapidjson::Document parse_resource(const Response& response) const;
    // POSTs a transaction or batch Bundle to the base URL; returns the transaction-response (or
    // batch-response) Bundle.
    // Replay::unsafe (the default) retries only when the POST cannot have been processed; when the
    // answer is lost (reset, timed out, cut short, not a parseable Bundle) the FhirError has kind
    // transport or bad_body and the server may or may not have applied the Bundle: re-read it before
    // sending again.
    // Replay::safe is the caller's promise that applying the Bundle twice gives the result of applying
    // it once (conditional creates with ifNoneExist, PUTs with ifMatch whose 412 the caller handles,
    // reads): it is then retried like a read, also after a lost answer. A POST entry without
    // ifNoneExist or a PATCH entry breaks that promise: FhirError of kind refused before sending.
    rapidjson::Document transaction(const std::string& bundle_json, Replay replay = Replay::unsafe);

    // Searches and follows link[relation=next] only, calling on_page for every searchset Bundle.
    // Returns the number of pages. Every page is one logical request (retried, request_deadline).
    // A next link may be absolute (same origin only), origin-relative
    // ("/fhir/...") or relative to the base URL. FhirError on anything but a searchset Bundle, a next
    // link to another origin, a next link already visited (a loop), or more than max_pages pages.
    std::size_t search(const std::string& target, const std::function<void(const rapidjson::Document&)>& on_page);

    // The fault budget: retries left before the next one fails with kind budget_spent
    // (std::numeric_limits<std::uint64_t>::max() when fault_budget is 0, unlimited) ...
    std::uint64_t faults_left() const;
    // ... and a new one, e.g. at the start of a polling pass.
    void reset_fault_budget() { faults_used_ = 0; }

    const ClientStats& stats() const { return stats_; }
    const std::string& base_url() const { return base_; }

private:
    // Whether a request may be sent twice (see the header comment).
    enum class Retry { replayable, unsafe };
    // Checks a 2xx response; a FhirError of kind bad_body from it makes a replayable request retry.
    using BodyCheck = std::function<void(const Response&)>;
    Response perform(const std::string& method, const std::string& target, const std::string* body,
                     const std::map<std::string, std::string>& headers, Retry retry, const BodyCheck& check = {},
                     const Download* download = nullptr);
    // The absolute URL of a target, or FhirError when it is refused.
    std::string resolve(const std::string& method, const std::string& target) const;
    // A link found in `page` (a next link or a redirect) as an absolute URL on the base URL's origin.
    std::string resolve_link(const Response& page, const std::string& what, const std::string& link) const;
    std::chrono::milliseconds retry_wait(int retry, const Response* response) const;
    void wait(std::chrono::milliseconds d) const;
    std::chrono::steady_clock::time_point monotonic_now() const;
    [[noreturn]] void fail(const std::string& message, long status, FhirErrorKind kind) const;
    // parse_resource, then FhirError unless it is a Bundle of this type.
    rapidjson::Document expect_bundle(const Response& response, const std::string& type) const;
    TransportOptions transport_options_;
    std::unique_ptr<HttpTransport> transport_;
    ClientOptions options_;
    std::string base_;
    std::string origin_;  // scheme://host:port of base_, lower case, port explicit
    ClientStats stats_;
    std::uint64_t faults_used_ = 0;  // retries since the fault budget was reset
    mutable std::string last_token_;  // the token_provider's latest token, redacted from messages
};

}  // namespace calcalert::fhir
