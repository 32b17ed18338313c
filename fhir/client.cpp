#include "fhir/client.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <curl/curl.h>

#include <rapidjson/error/en.h>

#include "fhir/json_parse.hpp"
#include "fhir/problem.hpp"
#include "fhir/views.hpp"

namespace calcalert::fhir {

namespace {

using std::chrono::milliseconds;

constexpr int kMaxRedirects = 5;
constexpr std::chrono::milliseconds kTimerSlack{10};
constexpr std::size_t kSnippetChars = 80;
constexpr std::size_t kMaxIssues = 10;
constexpr std::size_t kMaxIssueChars = 500;

// libcurl's global state is set up once per process, whichever thread gets there first.
void curl_global_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        const CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
        if (rc != CURLE_OK) throw std::runtime_error(std::string("libcurl: curl_global_init failed: ") + curl_easy_strerror(rc));
    });
}

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
    return true;
}

bool istarts_with(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) s.remove_suffix(1);
    return s;
}

bool is_control(unsigned char c) { return c < 0x20 || c == 0x7f; }

// Length of the valid UTF-8 sequence starting at s[i], 0 when it is not one.
std::size_t utf8_length(std::string_view s, std::size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c >= 0xe0 && c <= 0xef) n = 3;
    else if (c >= 0xf0 && c <= 0xf4) n = 4;
    else return 0;
    if (i + n > s.size()) return 0;
    for (std::size_t k = 1; k < n; ++k)
        if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return 0;
    return n;
}

void append_hex_escape(std::string& out, unsigned char c) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    out += buf;
}

// The text with control characters and invalid UTF-8 escaped, cut after `max` characters ("..." then).
std::string escaped(std::string_view s, std::size_t max = std::string_view::npos) {
    std::string out;
    std::size_t i = 0, chars = 0;
    while (i < s.size() && chars < max) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == '\n') out += "\\n", ++i;
        else if (c == '\r') out += "\\r", ++i;
        else if (c == '\t') out += "\\t", ++i;
        else if (is_control(c)) append_hex_escape(out, c), ++i;
        else if (c < 0x80) out += static_cast<char>(c), ++i;
        else if (const std::size_t n = utf8_length(s, i)) out.append(s.substr(i, n)), i += n;
        else append_hex_escape(out, c), ++i;
        ++chars;
    }
    if (i < s.size()) out += "...";
    return out;
}

std::string quoted_snippet(std::string_view body) { return "\"" + escaped(body, kSnippetChars) + "\""; }

// "http:" etc. at the start: an absolute URL (or another scheme, refused later).
bool has_scheme(std::string_view s) {
    if (s.empty() || !std::isalpha(static_cast<unsigned char>(s[0]))) return false;
    for (std::size_t i = 1; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == ':') return true;
        if (!std::isalnum(c) && c != '+' && c != '-' && c != '.') return false;
    }
    return false;
}

// Percent-encodes what a URL cannot carry literally. Returns the position of a control character
// (refused: it would split the request line), or npos.
std::size_t encode_url(std::string_view in, std::string& out) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    out.clear();
    for (std::size_t i = 0; i < in.size(); ++i) {
        const auto c = static_cast<unsigned char>(in[i]);
        if (is_control(c)) return i;
        if (c == ' ' || c >= 0x80 || c == '"' || c == '<' || c == '>' || c == '\\' || c == '^' || c == '`' || c == '{' ||
            c == '|' || c == '}') {
            out += '%';
            out += kHex[c >> 4];
            out += kHex[c & 0xf];
        } else {
            out += static_cast<char>(c);
        }
    }
    return std::string_view::npos;
}

// RAII for libcurl's URL parser.
class UrlParser {
public:
    UrlParser() : u_(curl_url()) {
        if (!u_) throw std::bad_alloc();
    }
    ~UrlParser() { curl_url_cleanup(u_); }
    UrlParser(const UrlParser&) = delete;
    UrlParser& operator=(const UrlParser&) = delete;

    // Sets the URL; a relative one is resolved against the URL set before (RFC 3986).
    bool set(const std::string& url) { return curl_url_set(u_, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK; }
    std::optional<std::string> get(CURLUPart part, unsigned flags = 0) const {
        char* p = nullptr;
        if (curl_url_get(u_, part, &p, flags) != CURLUE_OK || p == nullptr) return std::nullopt;
        std::string s(p);
        curl_free(p);
        return s;
    }

private:
    CURLU* u_;
};

// scheme://host:port of an absolute http(s) URL, lower case with the port explicit; nullopt otherwise.
std::optional<std::string> origin_of(const std::string& url) {
    UrlParser u;
    if (!u.set(url)) return std::nullopt;
    const auto scheme = u.get(CURLUPART_SCHEME);
    const auto host = u.get(CURLUPART_HOST);
    const auto port = u.get(CURLUPART_PORT, CURLU_DEFAULT_PORT);
    if (!scheme || !host || !port || host->empty()) return std::nullopt;
    const std::string s = lower(*scheme);
    if (s != "http" && s != "https") return std::nullopt;
    return s + "://" + lower(*host) + ":" + *port;
}

// ---- Retry-After --------------------------------------------------------------------------------

int month_number(std::string_view m) {
    static constexpr std::string_view kMonths[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                                   "jul", "aug", "sep", "oct", "nov", "dec"};
    for (int i = 0; i < 12; ++i)
        if (iequals(m, kMonths[i])) return i + 1;
    return 0;
}

// An HTTP-date in any of the three forms RFC 9110 asks recipients to accept:
//   IMF-fixdate  "Sun, 06 Nov 1994 08:49:37 GMT"
//   RFC 850      "Sunday, 06-Nov-94 08:49:37 GMT"
//   asctime      "Sun Nov  6 08:49:37 1994"
std::optional<std::chrono::system_clock::time_point> parse_http_date(const std::string& s) {
    char weekday[10] = {}, mon[4] = {};
    int year = 0, day = 0, hh = 0, mm = 0, ss = 0, used = 0;
    int month = 0;
    auto whole = [&](int n, int expected) { return n == expected && used > 0 && static_cast<std::size_t>(used) == s.size(); };
    if (whole(std::sscanf(s.c_str(), "%3[A-Za-z], %2d %3[A-Za-z] %4d %2d:%2d:%2d GMT%n", weekday, &day, mon, &year, &hh,
                          &mm, &ss, &used),
              7)) {
        month = month_number(mon);
    } else if (used = 0; whole(std::sscanf(s.c_str(), "%9[A-Za-z], %2d-%3[A-Za-z]-%2d %2d:%2d:%2d GMT%n", weekday, &day,
                                           mon, &year, &hh, &mm, &ss, &used),
                               7)) {
        month = month_number(mon);
        year += year < 70 ? 2000 : 1900;
    } else if (used = 0; whole(std::sscanf(s.c_str(), "%3[A-Za-z] %3[A-Za-z] %2d %2d:%2d:%2d %4d%n", weekday, mon, &day,
                                           &hh, &mm, &ss, &year, &used),
                               7)) {
        month = month_number(mon);
    } else {
        return std::nullopt;
    }
    if (month == 0) return std::nullopt;
    const std::chrono::year_month_day ymd{std::chrono::year(year), std::chrono::month(static_cast<unsigned>(month)),
                                          std::chrono::day(static_cast<unsigned>(day))};
    if (!ymd.ok() || hh > 23 || mm > 59 || ss > 60) return std::nullopt;
    return std::chrono::sys_days(ymd) + std::chrono::hours(hh) + std::chrono::minutes(mm) + std::chrono::seconds(ss);
}

// Retry-After as a wait: delta-seconds or an HTTP-date (in the past: no wait). nullopt when unreadable.
std::optional<milliseconds> parse_retry_after(std::string_view value, std::chrono::system_clock::time_point now) {
    const std::string v(trim(value));
    if (v.empty()) return std::nullopt;
    if (std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        if (v.size() > 9) return milliseconds(std::chrono::hours(24 * 365));  // absurdly long; capped by the caller
        return milliseconds(std::chrono::seconds(std::stol(v)));
    }
    const auto when = parse_http_date(v);
    if (!when) return std::nullopt;
    if (*when <= now) return milliseconds(0);
    return std::chrono::duration_cast<milliseconds>(*when - now);
}

// ---- responses ---------------------------------------------------------------------------------

const char* json_kind(const rapidjson::Value& v) {
    switch (v.GetType()) {
        case rapidjson::kNullType: return "null";
        case rapidjson::kFalseType:
        case rapidjson::kTrueType: return "boolean";
        case rapidjson::kObjectType: return "object";
        case rapidjson::kArrayType: return "array";
        case rapidjson::kStringType: return "string";
        case rapidjson::kNumberType: return "number";
    }
    return "value";
}

std::string describe(const Response& r) { return r.method + " " + r.url; }

// "HTML" or "XML" when the body is markup rather than JSON, nullptr otherwise.
const char* markup_kind(const Response& r) {
    const auto ct = r.headers.find("content-type");
    if (ct != r.headers.end() && lower(ct->second).find("html") != std::string::npos) return "HTML";
    std::string_view b = r.body;
    if (b.substr(0, 3) == "\xEF\xBB\xBF") b.remove_prefix(3);
    b = trim(b);
    if (b.empty() || b.front() != '<') return nullptr;
    if (istarts_with(b, "<!doctype html") || istarts_with(b, "<html") || istarts_with(b, "<head") || istarts_with(b, "<body") ||
        lower(std::string(b.substr(0, 1024))).find("<html") != std::string::npos)
        return "HTML";
    return "XML";
}

// What a non-2xx body says, as ": ..." (empty when there is no body).
std::string error_body_summary(const Response& r) {
    if (trim(r.body).empty()) return "";
    if (const char* kind = markup_kind(r)) return std::string(": the body is ") + kind + ": " + quoted_snippet(r.body);
    rapidjson::Document d;
    if (!parse_untrusted_json(d, r.body) || !d.IsObject()) return ": " + quoted_snippet(r.body);
    const auto rt = d.FindMember("resourceType");
    if (rt == d.MemberEnd() || !rt->value.IsString()) return ": " + quoted_snippet(r.body);
    const std::string type = rt->value.GetString();
    if (type != "OperationOutcome") return ": a " + escaped(type, 64) + " resource: " + quoted_snippet(r.body);
    std::vector<std::string> issues;
    try {
        issues = operation_outcome_issues(d);
    } catch (const ElementError& e) {
        return ": OperationOutcome (unreadable: " + e.path() + ": " + e.what() + "): " + quoted_snippet(r.body);
    }
    if (issues.empty()) return ": OperationOutcome without issues";
    std::string out = ": OperationOutcome: ";
    for (std::size_t i = 0; i < issues.size() && i < kMaxIssues; ++i) {
        if (i) out += "; ";
        out += escaped(issues[i], kMaxIssueChars);
    }
    if (issues.size() > kMaxIssues) out += "; and " + std::to_string(issues.size() - kMaxIssues) + " more issues";
    return out;
}

// ---- libcurl ------------------------------------------------------------------------------------

// Where the body goes, counted as it arrives: libcurl calls the write callback with the decoded
// bytes (after gzip / deflate), so a small compressed body that inflates to gigabytes is stopped
// here after `max` bytes.
struct BodySink {
    std::string* body = nullptr;
    std::size_t max = 0;  // 0: no limit
    bool over = false;    // the transfer was aborted because the body passed `max`
};

std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
    auto& sink = *static_cast<BodySink*>(user);
    const std::size_t n = size * count;
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
            headers[lower(std::string(trim(line.substr(0, colon))))] = std::string(trim(line.substr(colon + 1)));
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

std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()) + " ms"; }

std::string attempts_text(int n) { return std::to_string(n) + (n == 1 ? " attempt" : " attempts"); }

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
    std::string_view detail = errbuf != nullptr ? trim(errbuf) : std::string_view();
    if (detail.size() > reason.size() + 2 && detail.substr(detail.size() - reason.size()) == reason &&
        detail.substr(detail.size() - reason.size() - 2, 2) == ": ")
        detail.remove_suffix(reason.size() + 2);
    if (!detail.empty() && detail != reason) msg += " (" + std::string(detail) + ")";
    return msg;
}

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

private:
    curl_slist* list_ = nullptr;
};

bool is_token_char(unsigned char c) {
    return std::isalnum(c) || std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

}  // namespace

// One easy handle per client, reused for every request so that libcurl keeps connections alive.
struct FhirClient::Curl {
    CURL* handle = nullptr;
    char errbuf[CURL_ERROR_SIZE] = {};

    Curl() {
        curl_global_once();
        handle = curl_easy_init();
        if (handle == nullptr) throw std::runtime_error("libcurl: cannot create an easy handle");
    }
    ~Curl() { curl_easy_cleanup(handle); }
    Curl(const Curl&) = delete;
    Curl& operator=(const Curl&) = delete;

    struct Failure {
        CURLcode code = CURLE_OK;
        std::string message;
        bool too_large = false;  // the body passed max_response_bytes (received or announced)
    };

    // One request on the reused handle, at most `timeout` long (0: no limit). curl_easy_reset keeps
    // the connection cache, so every request sets all of its options again without losing
    // keep-alive connections.
    std::optional<Failure> perform(const ClientOptions& o, const std::string& method, const std::string& url,
                                   const std::string* body, const HeaderList& headers, std::chrono::milliseconds timeout,
                                   Response& out, std::uint64_t& connections) {
        BodySink sink{&out.body, o.max_response_bytes, false};
        curl_easy_reset(handle);
        errbuf[0] = '\0';
        CURLcode rc = CURLE_OK;
        auto set = [&](CURLoption option, auto value) {
            if (rc == CURLE_OK) rc = curl_easy_setopt(handle, option, value);
        };
        set(CURLOPT_ERRORBUFFER, errbuf);
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
        if (o.max_response_bytes != 0)
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
        if (rc != CURLE_OK) return Failure{rc, std::string("libcurl rejected an option: ") + curl_easy_strerror(rc), false};

        rc = curl_easy_perform(handle);
        long n = 0;
        if (curl_easy_getinfo(handle, CURLINFO_NUM_CONNECTS, &n) == CURLE_OK && n > 0) connections += static_cast<std::uint64_t>(n);
        const std::string cap = std::to_string(o.max_response_bytes) + " bytes";
        if (rc == CURLE_WRITE_ERROR && sink.over)
            return Failure{rc, "the response body is larger than max_response_bytes (" + cap + ", counted after decoding); transfer aborted",
                           true};
        if (rc == CURLE_FILESIZE_EXCEEDED) {
            const auto length = out.headers.find("content-length");
            const std::string announced = length != out.headers.end() ? escaped(length->second, 32) + " bytes" : "unknown size";
            return Failure{rc, "the server announced a body of " + announced + ", more than max_response_bytes (" + cap + "); not read", true};
        }
        if (rc != CURLE_OK) return Failure{rc, transport_message(rc, errbuf), false};
        long status = 0;
        curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &status);
        out.status = status;
        return std::nullopt;
    }
};

FhirClient::FhirClient(ClientOptions options) : options_(std::move(options)) {
    auto bad = [](const std::string& what) { throw std::invalid_argument("FhirClient: " + what); };
    std::string base = options_.base_url;
    while (!base.empty() && base.back() == '/') base.pop_back();
    if (base.empty()) bad("the FHIR base URL is empty");
    // Shown in messages unless it may hold credentials.
    const std::string shown = base.find('@') == std::string::npos ? "\"" + escaped(base, 200) + "\"" : "(not shown: it has an '@')";
    if (std::any_of(base.begin(), base.end(), [](char c) { return c == ' ' || is_control(static_cast<unsigned char>(c)); }))
        bad("the FHIR base URL " + shown + " contains a space or control character");
    {
        UrlParser u;
        if (!has_scheme(base) || !u.set(base) || !origin_of(base))
            bad("the FHIR base URL " + shown + " is not an http:// or https:// URL with a host");
        if (u.get(CURLUPART_USER) || u.get(CURLUPART_PASSWORD))
            bad("the FHIR base URL must not carry user:password@ (credentials would appear in messages); use bearer_token");
        if (u.get(CURLUPART_QUERY) || u.get(CURLUPART_FRAGMENT))
            bad("the FHIR base URL " + shown + " must not have a query or fragment");
    }
    base_ = base;
    origin_ = *origin_of(base_);
    if (std::any_of(options_.bearer_token.begin(), options_.bearer_token.end(),
                    [](char c) { return is_control(static_cast<unsigned char>(c)); }))
        bad("the bearer token contains a line break or control character");
    if (std::any_of(options_.user_agent.begin(), options_.user_agent.end(),
                    [](char c) { return is_control(static_cast<unsigned char>(c)); }))
        bad("the user agent contains a line break or control character");
    if (options_.max_retries < 0) bad("max_retries is negative");
    if (options_.connect_timeout.count() < 0 || options_.request_timeout.count() < 0) bad("a timeout is negative");
    if (options_.request_deadline.count() < 0) bad("request_deadline is negative");
    if (options_.initial_backoff.count() < 0 || options_.max_backoff.count() < 0) bad("a backoff is negative");
    if (options_.max_pages == 0) bad("max_pages is 0");
    if (!options_.ca_file.empty() && !std::ifstream(options_.ca_file).good())
        bad("the CA file " + options_.ca_file + " cannot be read");
    if (!options_.random) {
        std::random_device device;
        std::seed_seq seed{device(), device(), device(), device()};
        auto engine = std::make_shared<std::mt19937_64>(seed);
        options_.random = [engine] { return std::uniform_real_distribution<double>(0.0, 1.0)(*engine); };
    }
    curl_ = std::make_unique<Curl>();
}

FhirClient::~FhirClient() = default;

void FhirClient::fail(const std::string& message, long status, FhirErrorKind kind) const {
    std::string m = message;
    // Never let the token into a message, even when a server echoes it back.
    if (const std::string& token = options_.bearer_token; !token.empty())
        for (std::size_t p = m.find(token); p != std::string::npos; p = m.find(token, p + 10)) m.replace(p, token.size(), "[redacted]");
    throw FhirError(m, status, kind);
}

std::string FhirClient::resolve(const std::string& method, const std::string& target) const {
    std::string url;
    if (const auto bad = encode_url(target, url); bad != std::string_view::npos)
        fail(method + " " + escaped(target, 200) + ": the URL has a control character at offset " + std::to_string(bad), 0,
             FhirErrorKind::refused);
    if (has_scheme(url)) {
        const auto origin = origin_of(url);
        if (!origin) fail(method + " " + url + ": refused: not an http(s) URL", 0, FhirErrorKind::refused);
        if (*origin != origin_)
            fail(method + " " + url + ": refused: not on the FHIR server's origin " + origin_ +
                     " (the request would carry the bearer token to another server)",
                 0, FhirErrorKind::refused);
        return url;
    }
    std::string_view rel = url;
    while (!rel.empty() && rel.front() == '/') rel.remove_prefix(1);
    if (rel.empty()) return base_;
    if (rel.front() == '?') return base_ + std::string(rel);
    return base_ + "/" + std::string(rel);
}

std::string FhirClient::resolve_link(const Response& page, const std::string& what, const std::string& link) const {
    std::string encoded;
    if (const auto bad = encode_url(link, encoded); bad != std::string_view::npos)
        fail(describe(page) + ": " + what + " " + quoted_snippet(link) + " has a control character", 0, FhirErrorKind::bad_body);
    if (trim(encoded).empty()) fail(describe(page) + ": " + what + " is empty", 0, FhirErrorKind::bad_body);
    std::string absolute;
    if (has_scheme(encoded) || encoded.front() == '/' || encoded.front() == '?') {
        // Absolute, scheme-relative, origin-relative or query-only: RFC 3986 against the page's URL.
        UrlParser u;
        if (!u.set(page.url) || !u.set(encoded))
            fail(describe(page) + ": " + what + " " + quoted_snippet(link) + " is not a URL", 0, FhirErrorKind::bad_body);
        absolute = u.get(CURLUPART_URL).value_or(encoded);
    } else {
        // A bare relative path ("Observation?..."): relative to the FHIR base URL, as FHIR defines.
        absolute = base_ + "/" + encoded;
    }
    const auto origin = origin_of(absolute);
    if (!origin || *origin != origin_)
        fail(describe(page) + ": " + what + " " + absolute + " refused: not on the FHIR server's origin " + origin_ +
                 " (following it would carry the bearer token to another server)",
             0, FhirErrorKind::refused);
    return absolute;
}

std::chrono::milliseconds FhirClient::retry_wait(int retry, const Response* response) const {
    if (response != nullptr) {
        if (const auto it = response->headers.find("retry-after"); it != response->headers.end()) {
            const auto now = options_.now ? options_.now() : std::chrono::system_clock::now();
            if (const auto d = parse_retry_after(it->second, now)) return std::min(*d, options_.max_backoff);
        }
    }
    milliseconds d = options_.initial_backoff;
    for (int i = 0; i < retry && d < options_.max_backoff; ++i) d *= 2;
    d = std::min(d, options_.max_backoff);
    if (options_.jitter == Jitter::none || d.count() == 0) return d;
    double r = options_.random();
    if (!(r >= 0.0)) r = 0.0;  // NaN too
    if (r >= 1.0) r = std::nextafter(1.0, 0.0);
    const auto part = [r](milliseconds x) { return milliseconds(static_cast<milliseconds::rep>(r * static_cast<double>(x.count()))); };
    if (options_.jitter == Jitter::full) return part(d);
    const milliseconds half = d / 2;
    return half + part(d - half);
}

void FhirClient::wait(std::chrono::milliseconds d) const {
    if (options_.sleep) options_.sleep(d);
    else std::this_thread::sleep_for(d);
}

std::chrono::steady_clock::time_point FhirClient::monotonic_now() const {
    return options_.monotonic_now ? options_.monotonic_now() : std::chrono::steady_clock::now();
}

std::uint64_t FhirClient::faults_left() const {
    if (options_.fault_budget == 0) return std::numeric_limits<std::uint64_t>::max();
    return faults_used_ >= options_.fault_budget ? 0 : options_.fault_budget - faults_used_;
}

Response FhirClient::perform(const std::string& method, const std::string& target, const std::string* body,
                             const std::map<std::string, std::string>& headers, Retry retry, const BodyCheck& check) {
    std::string url = resolve(method, target);

    std::vector<std::pair<std::string, std::string>> fields = {{"Accept", "application/fhir+json"}};
    if (body != nullptr) fields.emplace_back("Content-Type", "application/fhir+json");
    if (!options_.bearer_token.empty()) fields.emplace_back("Authorization", "Bearer " + options_.bearer_token);
    fields.emplace_back("Expect", "");  // no "Expect: 100-continue" round trip before large bodies
    for (const auto& header : headers) {
        const std::string& name = header.first;  // not a structured binding: clang before 16 cannot capture one
        const std::string& value = header.second;
        if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) { return is_token_char(static_cast<unsigned char>(c)); }))
            fail(method + " " + url + ": the request header name \"" + escaped(name, 64) + "\" is not a valid HTTP field name", 0,
                 FhirErrorKind::refused);
        if (std::any_of(value.begin(), value.end(), [](char c) { return c == '\r' || c == '\n' || c == '\0'; }))
            fail(method + " " + url + ": the request header " + name + " has a line break in its value", 0, FhirErrorKind::refused);
        const auto same = std::find_if(fields.begin(), fields.end(), [&](const auto& f) { return iequals(f.first, name); });
        if (same != fields.end()) same->second = value;
        else fields.emplace_back(name, value);
    }
    HeaderList list;
    for (const auto& [name, value] : fields) {
        if (!value.empty()) list.add(name + ": " + value);
        else if (iequals(name, "Expect")) list.add(name + ":");  // removes the header libcurl would add
        else list.add(name + ";");                                // sends the header with an empty value
    }

    const bool replayable = retry == Retry::replayable;
    const milliseconds deadline = options_.request_deadline;
    const auto started = monotonic_now();
    const auto elapsed = [&] { return std::chrono::duration_cast<milliseconds>(monotonic_now() - started); };
    int retries = 0;
    int redirects = 0;

    // Called when an attempt failed in a way that is retried: waits, or throws FhirError when the
    // fault budget is spent or the wait would pass the deadline. `what` is the attempt's failure
    // without the request, `answer` the response (for Retry-After) or nullptr.
    const auto before_retry = [&](const std::string& what, const Response* answer) {
        const long status = answer != nullptr ? answer->status : 0;
        if (options_.fault_budget != 0 && faults_used_ >= options_.fault_budget)
            fail(method + " " + url + ": " + what + "; not retried: fault budget of " + std::to_string(options_.fault_budget) +
                     " retries spent",
                 status, FhirErrorKind::budget_spent);
        const milliseconds d = retry_wait(retries, answer);
        if (deadline.count() > 0) {
            const milliseconds spent = elapsed();
            if (spent + d >= deadline)
                fail(method + " " + url + ": " + what + "; not retried: waiting " + ms(d) + " would pass the request_deadline of " +
                         ms(deadline) + " (" + ms(spent) + " spent in " + attempts_text(retries + 1) + ")",
                     status, FhirErrorKind::deadline);
        }
        wait(d);
        ++retries;
        ++stats_.retries;
        ++faults_used_;
    };

    for (;;) {
        // Each attempt gets request_timeout, or what is left of the deadline when that is less.
        milliseconds timeout = options_.request_timeout;
        bool deadline_bounds = false;
        if (deadline.count() > 0) {
            const milliseconds left = deadline - elapsed();
            if (left.count() <= 0)
                fail(method + " " + url + ": the request_deadline of " + ms(deadline) + " passed before attempt " +
                         std::to_string(retries + 1),
                     0, FhirErrorKind::deadline);
            if (timeout.count() == 0 || left < timeout) {
                timeout = left;
                deadline_bounds = true;
            }
        }
        Response r;
        r.method = method;
        r.url = url;
        r.attempts = retries + 1;
        const auto failure = curl_->perform(options_, method, url, body, list, timeout, r, stats_.connections);
        ++stats_.requests;
        const bool more = retries < options_.max_retries;
        if (failure) {
            if (failure->too_large) fail(method + " " + url + ": " + failure->message, 0, FhirErrorKind::too_large);
            // Timed out because the deadline cut the attempt short, not by an earlier connect_timeout
            // (libcurl's timer may fire a millisecond before the time it was given: kTimerSlack).
            if (failure->code == CURLE_OPERATION_TIMEDOUT && deadline_bounds && elapsed() + kTimerSlack >= deadline)
                fail(method + " " + url + ": " + failure->message + "; the request_deadline of " + ms(deadline) + " passed after " +
                         attempts_text(retries + 1),
                     0, FhirErrorKind::deadline);
            // A replayable request is retried on every transport failure that may be transient. A
            // POST that is not is retried only when it cannot have reached the server (cannot
            // resolve / connect); after a timeout, a broken connection or a lost answer the server
            // may have processed it, and a repeated create would duplicate data.
            const bool may = retryable_transport_error(failure->code) && (replayable || nothing_sent(failure->code));
            if (may && more) {
                before_retry(failure->message, nullptr);
                continue;
            }
            fail(method + " " + url + ": " + failure->message +
                     (retries > 0 ? "; gave up after " + attempts_text(retries + 1) : std::string()),
                 0, FhirErrorKind::transport);
        }
        // Retried statuses: a replayable request on every 5xx, 429 and 408. A POST that is not
        // replayable only on 429 and 503, which mean the server did not process it; a 502 or 504
        // comes from a gateway that may have forwarded it, a 500 from a server that may have
        // applied part of it.
        const bool retry_status = replayable ? (r.status >= 500 && r.status <= 599) || r.status == 429 || r.status == 408
                                             : r.status == 429 || r.status == 503;
        if (retry_status && more) {
            before_retry("HTTP " + std::to_string(r.status) + error_body_summary(r), &r);
            continue;
        }
        const bool redirect = r.status == 301 || r.status == 302 || r.status == 303 || r.status == 307 || r.status == 308;
        if (method == "GET" && redirect) {
            if (const auto loc = r.headers.find("location"); loc != r.headers.end() && !trim(loc->second).empty()) {
                if (++redirects > kMaxRedirects)
                    fail(describe(r) + ": HTTP " + std::to_string(r.status) + ": more than " + std::to_string(kMaxRedirects) +
                             " redirects",
                         r.status, FhirErrorKind::http_status);
                url = resolve_link(r, "redirect to", std::string(trim(loc->second)));
                continue;
            }
        }
        if (check && r.status >= 200 && r.status <= 299) {
            try {
                check(r);
            } catch (const FhirError& e) {
                if (e.kind() != FhirErrorKind::bad_body || !replayable || !more) throw;
                std::string_view what = e.what();  // without the request, which before_retry puts first
                if (const std::string prefix = describe(r) + ": "; what.substr(0, prefix.size()) == prefix)
                    what.remove_prefix(prefix.size());
                before_retry(std::string(what), &r);
                continue;
            }
        }
        return r;
    }
}

Response FhirClient::get(const std::string& target, const std::map<std::string, std::string>& headers) {
    return perform("GET", target, nullptr, headers, Retry::replayable);
}

Response FhirClient::post(const std::string& target, const std::string& body, const std::map<std::string, std::string>& headers) {
    return perform("POST", target, &body, headers, Retry::unsafe);
}

Response FhirClient::put(const std::string& target, const std::string& body, const std::map<std::string, std::string>& headers) {
    return perform("PUT", target, &body, headers, Retry::replayable);
}

rapidjson::Document FhirClient::parse_resource(const Response& r) const {
    const std::string status =
        "HTTP " + std::to_string(r.status) + (r.attempts > 1 ? " after " + std::to_string(r.attempts) + " attempts" : "");
    if (r.status < 200 || r.status > 299) fail(describe(r) + ": " + status + error_body_summary(r), r.status, FhirErrorKind::http_status);
    if (const char* kind = markup_kind(r))
        fail(describe(r) + ": " + status + " but the body is " + kind + ", not FHIR JSON: " + quoted_snippet(r.body), r.status,
             FhirErrorKind::bad_body);
    if (trim(r.body).empty())
        fail(describe(r) + ": " + status + " but the body is empty, not a FHIR resource", r.status, FhirErrorKind::bad_body);
    // The project's policy for untrusted JSON: depth and size limits, strict UTF-8, finite numbers.
    rapidjson::Document d;
    if (const auto parsed = parse_untrusted_json(d, r.body); !parsed)
        fail(describe(r) + ": " + status + " but the body is not JSON (JSON parse error at " + parsed.error->describe() +
                 "): " + quoted_snippet(r.body),
             r.status, FhirErrorKind::bad_body);
    if (!d.IsObject())
        fail(describe(r) + ": " + status + " but the body is a JSON " + json_kind(d) + ", not a FHIR resource", r.status,
             FhirErrorKind::bad_body);
    const auto rt = d.FindMember("resourceType");
    if (rt == d.MemberEnd() || !rt->value.IsString() || rt->value.GetStringLength() == 0)
        fail(describe(r) + ": " + status + " but the body is not a FHIR resource (no resourceType): " + quoted_snippet(r.body),
             r.status, FhirErrorKind::bad_body);
    return d;
}

rapidjson::Document FhirClient::expect_bundle(const Response& r, const std::string& type) const {
    rapidjson::Document d = parse_resource(r);
    const std::string rt = d["resourceType"].GetString();
    if (rt != "Bundle") fail(describe(r) + ": expected a Bundle, got " + escaped(rt, 64), r.status, FhirErrorKind::bad_body);
    const auto t = d.FindMember("type");
    const std::string got = t == d.MemberEnd() ? "no type"
                            : t->value.IsString() ? "type " + escaped(t->value.GetString(), 64)
                                                  : std::string("a ") + json_kind(t->value) + " as Bundle.type";
    if (t == d.MemberEnd() || !t->value.IsString() || t->value.GetString() != type)
        fail(describe(r) + ": expected a " + type + " Bundle, got a Bundle with " + got, r.status, FhirErrorKind::bad_body);
    return d;
}

rapidjson::Document FhirClient::get_resource(const std::string& target) {
    rapidjson::Document d;
    bool parsed = false;
    const Response r = perform("GET", target, nullptr, {}, Retry::replayable, [&](const Response& answer) {
        d = parse_resource(answer);
        parsed = true;
    });
    if (!parsed) parse_resource(r);  // not a 2xx: throws
    return d;
}

rapidjson::Document FhirClient::transaction(const std::string& bundle_json, Replay replay) {
    // Checked here first, so that a caller's mistake reads as such rather than as a server's 400.
    rapidjson::Document in;
    in.Parse(bundle_json.data(), bundle_json.size());
    if (in.HasParseError())
        fail("POST " + base_ + ": the Bundle to send is not JSON (JSON parse error at offset " +
                 std::to_string(in.GetErrorOffset()) + ": " + rapidjson::GetParseError_En(in.GetParseError()) + ")",
             0, FhirErrorKind::refused);
    std::string type;
    if (in.IsObject()) {
        const auto rt = in.FindMember("resourceType");
        const auto t = in.FindMember("type");
        if (rt != in.MemberEnd() && rt->value.IsString() && std::string_view(rt->value.GetString()) == "Bundle" &&
            t != in.MemberEnd() && t->value.IsString())
            type = t->value.GetString();
    }
    if (type != "transaction" && type != "batch")
        fail("POST " + base_ + ": the Bundle to send must be a Bundle of type transaction or batch", 0, FhirErrorKind::refused);
    if (replay == Replay::safe) {
        // The entries that certainly break the caller's promise; the rest is the caller's word.
        if (const auto entries = in.FindMember("entry"); entries != in.MemberEnd() && entries->value.IsArray()) {
            for (rapidjson::SizeType i = 0; i < entries->value.Size(); ++i) {
                const auto& e = entries->value[i];
                if (!e.IsObject()) continue;
                const auto req = e.FindMember("request");
                if (req == e.MemberEnd() || !req->value.IsObject()) continue;
                const auto m = req->value.FindMember("method");
                if (m == req->value.MemberEnd() || !m->value.IsString()) continue;
                const std::string_view method = m->value.GetString();
                const auto ine = req->value.FindMember("ifNoneExist");
                const bool conditional = ine != req->value.MemberEnd() && ine->value.IsString() && ine->value.GetStringLength() > 0;
                const std::string where = "POST " + base_ + ": Bundle.entry[" + std::to_string(i) + "]";
                if (method == "POST" && !conditional)
                    fail(where + " is a POST without ifNoneExist: sent twice it would create twice, so the Bundle is not Replay::safe", 0,
                         FhirErrorKind::refused);
                if (method == "PATCH")
                    fail(where + " is a PATCH: sent twice it may apply twice, so the Bundle is not Replay::safe", 0,
                         FhirErrorKind::refused);
            }
        }
    }
    const std::string expected = type + "-response";
    rapidjson::Document d;
    bool parsed = false;
    const Response r = perform("POST", "", &bundle_json, {}, replay == Replay::safe ? Retry::replayable : Retry::unsafe,
                               [&](const Response& answer) {
                                   d = expect_bundle(answer, expected);
                                   parsed = true;
                               });
    if (!parsed) expect_bundle(r, expected);  // not a 2xx: throws
    return d;
}

std::size_t FhirClient::search(const std::string& target, const std::function<void(const rapidjson::Document&)>& on_page) {
    std::string url = resolve("GET", target);
    std::set<std::string> visited{url};
    std::size_t pages = 0;
    for (;;) {
        rapidjson::Document page;
        bool parsed = false;
        const Response r = perform("GET", url, nullptr, {}, Retry::replayable, [&](const Response& answer) {
            page = expect_bundle(answer, "searchset");
            parsed = true;
        });
        if (!parsed) expect_bundle(r, "searchset");  // not a 2xx: throws
        ++pages;
        on_page(page);

        std::optional<std::string> next;
        if (const auto links = page.FindMember("link"); links != page.MemberEnd()) {
            if (!links->value.IsArray())
                fail(describe(r) + ": Bundle.link is a JSON " + json_kind(links->value) + ", not an array", r.status,
                     FhirErrorKind::bad_body);
            for (rapidjson::SizeType i = 0; i < links->value.Size(); ++i) {
                const auto& l = links->value[i];
                const std::string where = "Bundle.link[" + std::to_string(i) + "]";
                if (!l.IsObject())
                    fail(describe(r) + ": " + where + " is a JSON " + json_kind(l) + ", not an object", r.status, FhirErrorKind::bad_body);
                const auto rel = l.FindMember("relation");
                if (rel == l.MemberEnd() || !rel->value.IsString() || std::string_view(rel->value.GetString()) != "next") continue;
                const auto u = l.FindMember("url");
                if (u == l.MemberEnd() || !u->value.IsString())
                    fail(describe(r) + ": " + where + ".url of the next link is missing or not a string", r.status,
                         FhirErrorKind::bad_body);
                if (next)
                    fail(describe(r) + ": the Bundle has more than one link with relation next", r.status, FhirErrorKind::bad_body);
                next = std::string(u->value.GetString(), u->value.GetStringLength());
            }
        }
        if (!next) return pages;
        std::string next_url = resolve_link(r, "link[next]", *next);
        if (!visited.insert(next_url).second)
            fail(describe(r) + ": link[next] " + next_url + " was already visited; the server's paging loops", r.status,
                 FhirErrorKind::refused);
        if (pages >= options_.max_pages)
            fail(describe(r) + ": stopped after " + std::to_string(pages) + " pages (max_pages); the server still sends link[next]",
                 r.status, FhirErrorKind::refused);
        url = std::move(next_url);
    }
}

}  // namespace calcalert::fhir
