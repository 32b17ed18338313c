#include "fhir/http_transport.hpp"

#include <algorithm>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string_view>

#include "fhir/http_text.hpp"

namespace calcalert::fhir {
namespace {

// libcurl's global state is set up once per process, whichever thread gets there first.
void curl_global_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        const CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
        if (rc != CURLE_OK) throw std::runtime_error(std::string("libcurl: curl_global_init failed: ") + curl_easy_strerror(rc));
    });
}


// Where the body goes, counted as it arrives: libcurl calls the write callback with the decoded
// bytes (after gzip / deflate), so a small compressed body that inflates to gigabytes is stopped
// here after `max` bytes.
struct BodySink {
    std::string* body = nullptr;
    std::size_t max = 0;  // 0: no limit
    bool over = false;    // the transfer was aborted because the body passed `max`
    const BodyStream* stream = nullptr;  // a 2xx body goes here instead
    CURL* handle = nullptr;
    bool stopped = false;  // the stream stopped the transfer
};

std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
    auto& sink = *static_cast<BodySink*>(user);
    const std::size_t n = size * count;
    if (sink.stream != nullptr) {
        long status = 0;
        curl_easy_getinfo(sink.handle, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && status <= 299) {
            try {
                if ((*sink.stream)(std::string_view(data, n))) return n;
            } catch (...) {
            }
            sink.stopped = true;
            return 0;
        }
    }
    if (sink.max != 0 && n > sink.max - sink.body->size()) {  // body->size() <= max always
        sink.over = true;
        return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    }
    try {
        sink.body->append(data, n);
        return n;
    } catch (...) {
        return 0;
    }
}

// Collects header lines; lower-case names, the last value wins; a new status line (an interim
// 1xx response) starts over.
std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
    try {
        auto& headers = *static_cast<std::map<std::string, std::string>*>(user);
        const std::string_view line(data, size * count);
        if (line.substr(0, 5) == "HTTP/") {
            headers.clear();
        } else if (const auto colon = line.find(':'); colon != std::string_view::npos && colon > 0) {
            headers[text::lower(std::string(text::trim(line.substr(0, colon))))] = std::string(text::trim(line.substr(colon + 1)));
        }
        return size * count;
    } catch (...) {
        return 0;
    }
}

bool retryable_transport_error(CURLcode rc) {
    switch (rc) {
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_COULDNT_CONNECT:
        case CURLE_OPERATION_TIMEDOUT:
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM: return true;
        default: return false;
    }
}

// The request never left this machine: retrying cannot repeat a write.
bool nothing_sent(CURLcode rc) {
    return rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY || rc == CURLE_COULDNT_CONNECT;
}


std::string transport_message(CURLcode rc, const char* errbuf) {
    std::string what;
    switch (rc) {
        case CURLE_COULDNT_CONNECT: what = "cannot connect"; break;
        case CURLE_COULDNT_RESOLVE_HOST: what = "cannot resolve the host"; break;
        case CURLE_COULDNT_RESOLVE_PROXY: what = "cannot resolve the proxy"; break;
        case CURLE_OPERATION_TIMEDOUT: what = "timed out"; break;
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CIPHER:
        case CURLE_SSL_CACERT_BADFILE: what = "TLS error"; break;
        case CURLE_BAD_CONTENT_ENCODING: what = "cannot decode the response"; break;
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR: what = "connection broken"; break;
        case CURLE_PARTIAL_FILE: what = "the body was cut short"; break;
        case CURLE_GOT_NOTHING: what = "no answer"; break;
        default: what = "transport error"; break;
    }
    const std::string_view reason = curl_easy_strerror(rc);
    std::string msg = what + ": " + std::string(reason);
    // libcurl's detail ("Failed to connect to 127.0.0.1 port 5 after 0 ms: Couldn't connect to
    // server") without the reason repeated.
    std::string_view detail = errbuf != nullptr ? text::trim(errbuf) : std::string_view();
    if (detail.size() > reason.size() + 2 && detail.substr(detail.size() - reason.size()) == reason &&
        detail.substr(detail.size() - reason.size() - 2, 2) == ": ")
        detail.remove_suffix(reason.size() + 2);
    if (!detail.empty() && detail != reason) msg += " (" + std::string(detail) + ")";
    return msg;
}

TransportFailure failure(CURLcode rc, std::string message, bool too_large) {
    return TransportFailure{rc, std::move(message), too_large, !too_large && retryable_transport_error(rc), nothing_sent(rc)};
}

}  // namespace

HttpTransport::HttpTransport() {
    curl_global_once();
    handle_ = curl_easy_init();
    if (handle_ == nullptr) throw std::runtime_error("libcurl: cannot create an easy handle");
}

HttpTransport::~HttpTransport() { curl_easy_cleanup(handle_); }

// curl_easy_reset keeps the connection cache, so every request sets all of its options again
// without losing keep-alive connections.
std::optional<TransportFailure> HttpTransport::perform(const TransportOptions& o, const std::string& method,
                                                  const std::string& url, const std::string* body, const HeaderList& headers,
                                                  std::chrono::milliseconds timeout, Response& out, std::uint64_t& connections,
                                                  const BodyStream* stream) {
    BodySink sink{&out.body, o.max_response_bytes, false, stream, handle_, false};
    curl_easy_reset(handle_);
    errbuf_[0] = '\0';
    CURLcode rc = CURLE_OK;
    auto set = [&](CURLoption option, auto value) {
        if (rc == CURLE_OK) rc = curl_easy_setopt(handle_, option, value);
    };
    set(CURLOPT_ERRORBUFFER, errbuf_);
    set(CURLOPT_URL, url.c_str());
    set(CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
    set(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    set(CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    // Redirects are followed by FhirClient::perform itself, same origin only.
    set(CURLOPT_FOLLOWLOCATION, 0L);
    set(CURLOPT_ACCEPT_ENCODING, "");  // every encoding libcurl decodes (gzip, deflate, ...)
    set(CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o.connect_timeout.count()));
    set(CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
    set(CURLOPT_SSL_VERIFYPEER, o.verify_tls ? 1L : 0L);
    set(CURLOPT_SSL_VERIFYHOST, o.verify_tls ? 2L : 0L);
    set(CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
    if (!o.ca_file.empty()) set(CURLOPT_CAINFO, o.ca_file.c_str());
    set(CURLOPT_USERAGENT, o.user_agent.c_str());
    set(CURLOPT_TCP_KEEPALIVE, 1L);
    set(CURLOPT_HTTPHEADER, headers.get());
    set(CURLOPT_WRITEFUNCTION, &on_body);
    set(CURLOPT_WRITEDATA, static_cast<void*>(&sink));
    // A Content-Length above the cap fails before the body is read (CURLE_FILESIZE_EXCEEDED);
    // for a compressed body that is the compressed size, hence also the count in on_body.
    if (o.max_response_bytes != 0 && stream == nullptr)
        set(CURLOPT_MAXFILESIZE_LARGE,
            static_cast<curl_off_t>(std::min<std::uint64_t>(o.max_response_bytes, std::numeric_limits<curl_off_t>::max())));
    set(CURLOPT_HEADERFUNCTION, &on_header);
    set(CURLOPT_HEADERDATA, static_cast<void*>(&out.headers));
    if (method == "GET") {
        set(CURLOPT_HTTPGET, 1L);
    } else {
        // The body outlives the transfer: libcurl reads it in place.
        set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body ? body->size() : 0));
        set(CURLOPT_POSTFIELDS, body ? body->data() : "");
        if (method != "POST") set(CURLOPT_CUSTOMREQUEST, method.c_str());
    }
    if (rc != CURLE_OK) return failure(rc, std::string("libcurl rejected an option: ") + curl_easy_strerror(rc), false);

    rc = curl_easy_perform(handle_);
    long n = 0;
    if (curl_easy_getinfo(handle_, CURLINFO_NUM_CONNECTS, &n) == CURLE_OK && n > 0) connections += static_cast<std::uint64_t>(n);
    const std::string cap = std::to_string(o.max_response_bytes) + " bytes";
    if (rc == CURLE_WRITE_ERROR && sink.stopped)
        return TransportFailure{rc, "the reader of the response body stopped the transfer", false, false, false};
    if (rc == CURLE_WRITE_ERROR && sink.over)
        return failure(rc, "the response body is larger than max_response_bytes (" + cap + ", counted after decoding); transfer aborted",
                   true);
    if (rc == CURLE_FILESIZE_EXCEEDED) {
        const auto length = out.headers.find("content-length");
        const std::string announced = length != out.headers.end() ? text::escaped(length->second, 32) + " bytes" : "unknown size";
        return failure(rc, "the server announced a body of " + announced + ", more than max_response_bytes (" + cap + "); not read", true);
    }
    if (rc != CURLE_OK) return failure(rc, transport_message(rc, errbuf_), false);
    long status = 0;
    curl_easy_getinfo(handle_, CURLINFO_RESPONSE_CODE, &status);
    out.status = status;
    return std::nullopt;
}

}  // namespace calcalert::fhir
