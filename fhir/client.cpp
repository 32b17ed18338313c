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

#include "fhir/http_text.hpp"
#include "fhir/json_parse.hpp"
#include "fhir/problem.hpp"
#include "fhir/views.hpp"

namespace calcalert::fhir {

namespace {

using std::chrono::milliseconds;
using text::encode_url;
using text::escaped;
using text::has_scheme;
using text::iequals;
using text::is_control;
using text::is_token_char;
using text::istarts_with;
using text::lower;
using text::origin_of;
using text::parse_retry_after;
using text::quoted_snippet;
using text::trim;
using text::UrlParser;

constexpr int kMaxRedirects = 5;
constexpr std::chrono::milliseconds kTimerSlack{10};
constexpr std::size_t kMaxIssues = 10;
constexpr std::size_t kMaxIssueChars = 500;

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
std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()) + " ms"; }

std::string attempts_text(int n) { return std::to_string(n) + (n == 1 ? " attempt" : " attempts"); }

}  // namespace

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
    if (options_.token_provider && !options_.bearer_token.empty()) bad("both bearer_token and token_provider are set");
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
    transport_options_.connect_timeout = options_.connect_timeout;
    transport_options_.verify_tls = options_.verify_tls;
    transport_options_.ca_file = options_.ca_file;
    transport_options_.user_agent = options_.user_agent;
    transport_options_.max_response_bytes = options_.max_response_bytes;
    transport_ = std::make_unique<HttpTransport>();
}

FhirClient::~FhirClient() = default;

void FhirClient::fail(const std::string& message, long status, FhirErrorKind kind) const {
    std::string m = message;
    // Never let the token into a message, even when a server echoes it back.
    for (const std::string* t : std::initializer_list<const std::string*>{&options_.bearer_token, &last_token_})
        if (const std::string& token = *t; !token.empty())
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
                             const std::map<std::string, std::string>& headers, Retry retry, const BodyCheck& check,
                             const Download* download) {
    std::string url = resolve(method, target);

    // The token of this attempt: the provider's (asked again after a 401) or the fixed one.
    std::string token = options_.bearer_token;
    const auto ask_token = [&] {
        if (!options_.token_provider) return;
        try {
            token = options_.token_provider->token();
        } catch (const FhirError& e) {
            fail(method + " " + url + ": no token: " + e.what(), 0, e.kind());
        } catch (const std::exception& e) {
            fail(method + " " + url + ": no token: " + e.what(), 0, FhirErrorKind::auth);
        }
        if (std::any_of(token.begin(), token.end(), [](char c) { return is_control(static_cast<unsigned char>(c)); }))
            fail(method + " " + url + ": the token provider gave a token with a control character", 0, FhirErrorKind::auth);
        last_token_ = token;
    };
    ask_token();
    HeaderList list;
    const auto build_headers = [&] {
        std::vector<std::pair<std::string, std::string>> fields = {{"Accept", "application/fhir+json"}};
        if (body != nullptr) fields.emplace_back("Content-Type", "application/fhir+json");
        if (!token.empty()) fields.emplace_back("Authorization", "Bearer " + token);
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
        list.clear();
        for (const auto& [name, value] : fields) {
            if (!value.empty()) list.add(name + ": " + value);
            else if (iequals(name, "Expect")) list.add(name + ":");  // removes the header libcurl would add
            else list.add(name + ";");                                // sends the header with an empty value
        }
    };
    build_headers();
    bool reauthenticated = false;

    const bool replayable = retry == Retry::replayable;
    const auto started = monotonic_now();
    const auto elapsed = [&] { return std::chrono::duration_cast<milliseconds>(monotonic_now() - started); };
    // The time this logical request must end by: request_deadline after it started, or the
    // client's end_by, whichever comes first; `until_what` names it in errors.
    std::optional<std::chrono::steady_clock::time_point> until;
    std::string until_what;
    const milliseconds request_deadline = download != nullptr ? download->deadline : options_.request_deadline;
    if (request_deadline.count() > 0) {
        until = started + request_deadline;
        until_what = (download != nullptr ? "the download deadline of " : "the request_deadline of ") + ms(request_deadline);
    }
    if (options_.end_by && (!until || *options_.end_by < *until)) {
        until = *options_.end_by;
        until_what = "the caller's deadline";
    }
    const auto left = [&] { return std::chrono::duration_cast<milliseconds>(*until - monotonic_now()); };
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
        if (until && d >= left())
            fail(method + " " + url + ": " + what + "; not retried: waiting " + ms(d) + " would pass " + until_what + " (" +
                     ms(elapsed()) + " spent in " + attempts_text(retries + 1) + ")",
                 status, FhirErrorKind::deadline);
        wait(d);
        ++retries;
        ++stats_.retries;
        ++faults_used_;
    };

    for (;;) {
        // Each attempt gets request_timeout, or what is left of the deadline when that is less.
        milliseconds timeout = download != nullptr ? download->attempt_timeout : options_.request_timeout;
        bool deadline_bounds = false;
        if (until) {
            const milliseconds remaining = left();
            if (remaining.count() <= 0)
                fail(method + " " + url + ": " + until_what + " passed before attempt " + std::to_string(retries + 1), 0,
                     FhirErrorKind::deadline);
            if (timeout.count() == 0 || remaining < timeout) {
                timeout = remaining;
                deadline_bounds = true;
            }
        }
        Response r;
        r.method = method;
        r.url = url;
        r.attempts = retries + 1;
        if (download != nullptr && download->restart) download->restart();
        const auto failure = transport_->perform(transport_options_, method, url, body, list, timeout, r, stats_.connections,
                                                 download != nullptr ? &download->sink : nullptr);
        ++stats_.requests;
        const bool more = retries < options_.max_retries;
        if (failure) {
            if (failure->too_large) fail(method + " " + url + ": " + failure->message, 0, FhirErrorKind::too_large);
            // Timed out because the deadline cut the attempt short, not by an earlier connect_timeout
            // (libcurl's timer may fire a millisecond before the time it was given: kTimerSlack).
            if (failure->timed_out() && deadline_bounds && left() <= kTimerSlack)
                fail(method + " " + url + ": " + failure->message + "; " + until_what + " passed after " +
                         attempts_text(retries + 1),
                     0, FhirErrorKind::deadline);
            // A replayable request is retried on every transport failure that may be transient. A
            // POST that is not is retried only when it cannot have reached the server (cannot
            // resolve / connect); after a timeout, a broken connection or a lost answer the server
            // may have processed it, and a repeated create would duplicate data.
            const bool may = failure->retryable && (replayable || failure->nothing_sent);
            if (may && more) {
                before_retry(failure->message, nullptr);
                continue;
            }
            fail(method + " " + url + ": " + failure->message +
                     (retries > 0 ? "; gave up after " + attempts_text(retries + 1) : std::string()),
                 0, FhirErrorKind::transport);
        }
        // A refused token: the provider forgets it and this request goes once more with a new one
        // (a 401 means the request was not processed, so a POST may be sent again too).
        if (r.status == 401 && options_.token_provider && !reauthenticated && options_.token_provider->refused(token)) {
            reauthenticated = true;
            ask_token();
            build_headers();
            continue;
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

Response FhirClient::del(const std::string& target, const std::map<std::string, std::string>& headers) {
    return perform("DELETE", target, nullptr, headers, Retry::replayable);
}

Response FhirClient::download(const std::string& target, const Download& download,
                             const std::map<std::string, std::string>& headers) {
    return perform("GET", target, nullptr, headers, Retry::replayable, {}, &download);
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
