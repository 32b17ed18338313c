// One HTTP exchange over libcurl, without FHIR semantics: a reused easy handle (so connections are
// kept alive), the body capped after decoding (gzip, deflate), timeouts, TLS verification, header
// lines, and a failure as a code, a message and how it may be retried. The FHIR client
// (fhir/client.hpp) adds retries, deadlines, tokens, redirects and FHIR checks on top; the SMART
// Backend Services client uses it for its token endpoint.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <curl/curl.h>

namespace calcalert::fhir {

struct Response {
    long status = 0;
    std::string body;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string method;
    std::string url;  // the URL that gave this response (after same-origin redirects)
    int attempts = 1;  // retries included
};

struct TransportOptions {
    std::chrono::milliseconds connect_timeout{5000};
    bool verify_tls = true;
    std::string ca_file;               // extra CA bundle (PEM), optional
    std::string user_agent = "calcalert";
    std::size_t max_response_bytes = 0;  // after decoding; 0 = no limit
};

// Where the body of a 2xx answer goes instead of Response::body (a download): called with each
// decoded piece as it arrives; returning false stops the transfer. A non-2xx answer's body still
// goes to Response::body (capped by max_response_bytes), for its error message.
using BodyStream = std::function<bool(std::string_view)>;

// RAII for a libcurl header list.
class HeaderList {
public:
    HeaderList() = default;
    ~HeaderList() { curl_slist_free_all(list_); }
    HeaderList(const HeaderList&) = delete;
    HeaderList& operator=(const HeaderList&) = delete;
    void add(const std::string& line) {
        curl_slist* next = curl_slist_append(list_, line.c_str());
        if (next == nullptr) throw std::bad_alloc();
        list_ = next;
    }
    curl_slist* get() const { return list_; }
    void clear() {
        curl_slist_free_all(list_);
        list_ = nullptr;
    }

private:
    curl_slist* list_ = nullptr;
};

struct TransportFailure {
    CURLcode code = CURLE_OK;
    std::string message;
    bool too_large = false;     // the body passed max_response_bytes (received or announced)
    bool retryable = false;     // a failure that may be transient (cannot connect, reset, timed out, cut short)
    bool nothing_sent = false;  // the request never left this machine: a retry cannot repeat a write
    bool timed_out() const { return code == CURLE_OPERATION_TIMEDOUT; }
};

class HttpTransport {
public:
    HttpTransport();
    ~HttpTransport();
    HttpTransport(const HttpTransport&) = delete;
    HttpTransport& operator=(const HttpTransport&) = delete;

    // One request (GET without a body; any other method with `body`, which may be null), at most
    // `timeout` long (0: no limit). `out` gets the status, headers and body; `connections` counts
    // the new connections opened. Redirects are not followed. With `stream`, a 2xx body goes there
    // (not capped by max_response_bytes: the stream bounds it) and Response::body stays empty.
    std::optional<TransportFailure> perform(const TransportOptions& o, const std::string& method, const std::string& url,
                                            const std::string* body, const HeaderList& headers,
                                            std::chrono::milliseconds timeout, Response& out, std::uint64_t& connections,
                                            const BodyStream* stream = nullptr);

private:
    CURL* handle_ = nullptr;
    char errbuf_[CURL_ERROR_SIZE] = {};
};

}  // namespace calcalert::fhir
