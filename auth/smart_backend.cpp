#include "auth/smart_backend.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "fhir/client.hpp"
#include "fhir/http_transport.hpp"
#include "fhir/json_parse.hpp"

namespace calcalert::auth {
namespace {

using fhir::FhirError;
using fhir::FhirErrorKind;

constexpr std::size_t kMaxAnswerBytes = 1024 * 1024;
constexpr int kAssertionSeconds = 300;
const fhir::JsonLimits kAnswerLimits{16, kMaxAnswerBytes};

// GET (form null) or POST a form; FhirError kind transport when there is no complete answer.
fhir::Response request(const SmartBackendOptions& o, const std::string& url, const std::string* form) {
    fhir::TransportOptions t;
    t.connect_timeout = o.timeout;
    t.verify_tls = o.verify_tls;
    t.ca_file = o.ca_file;
    t.max_response_bytes = kMaxAnswerBytes;
    fhir::HeaderList headers;
    headers.add("Accept: application/json");
    if (form) headers.add("Content-Type: application/x-www-form-urlencoded");
    headers.add("Expect:");
    fhir::HttpTransport transport;
    fhir::Response r;
    std::uint64_t connections = 0;
    const std::string method = form ? "POST" : "GET";
    if (const auto failure = transport.perform(t, method, url, form, headers, o.timeout, r, connections))
        throw FhirError(method + " " + url + ": " + failure->message, 0, FhirErrorKind::transport);
    return r;
}

std::string form_encode(const std::string& s) {
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') out.push_back(static_cast<char>(c));
        else if (c == ' ') out.push_back('+');
        else {
            out.push_back('%');
            out.push_back(hex[c >> 4]);
            out.push_back(hex[c & 15]);
        }
    }
    return out;
}

// The answer as a JSON object, or nullopt (not JSON, not an object, too deep or large).
std::optional<rapidjson::Document> json_object(const std::string& body) {
    rapidjson::Document d;
    if (!fhir::parse_untrusted_json(d, body, kAnswerLimits) || !d.IsObject()) return std::nullopt;
    return d;
}

std::string string_member(const rapidjson::Value& o, const char* name) {
    const auto it = o.FindMember(name);
    return it != o.MemberEnd() && it->value.IsString() ? std::string(it->value.GetString(), it->value.GetStringLength())
                                                       : std::string();
}

bool array_has(const rapidjson::Value& o, const char* name, const std::string& value) {
    const auto it = o.FindMember(name);
    if (it == o.MemberEnd() || !it->value.IsArray()) return true;  // not said: assume it is supported
    for (const auto& v : it->value.GetArray())
        if (v.IsString() && value == v.GetString()) return true;
    return false;
}

std::string random_jti() {
    unsigned char bytes[16];
    if (RAND_bytes(bytes, sizeof bytes) != 1) throw std::runtime_error("no random bytes for a jti");
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned char b : bytes) {
        out.push_back(hex[b >> 4]);
        out.push_back(hex[b & 15]);
    }
    return out;
}

std::string json_text(const std::function<void(rapidjson::Writer<rapidjson::StringBuffer>&)>& write) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    write(w);
    return sb.GetString();
}

}  // namespace

SmartBackendServices::SmartBackendServices(SmartBackendOptions options) : options_(std::move(options)) {
    if (options_.client_id.empty()) throw std::invalid_argument("SMART Backend Services needs a client id");
    if (!options_.key.pkey || (options_.key.alg != "ES384" && options_.key.alg != "RS384"))
        throw std::invalid_argument("SMART Backend Services needs an ES384 or RS384 private key");
    if (options_.key.kid.empty()) options_.key.kid = jose::jwk_thumbprint(options_.key);
    if (options_.token_url.empty() && options_.fhir_base_url.empty())
        throw std::invalid_argument("SMART Backend Services needs the FHIR base URL or the token URL");
    if (!options_.now) options_.now = [] { return std::chrono::system_clock::now(); };
    if (!options_.new_jti) options_.new_jti = random_jti;
    token_url_ = options_.token_url;
}

SmartBackendServices::~SmartBackendServices() = default;

std::string SmartBackendServices::discover_token_url() {
    std::string base = options_.fhir_base_url;
    while (!base.empty() && base.back() == '/') base.pop_back();
    const std::string url = base + "/.well-known/smart-configuration";
    const fhir::Response a = request(options_, url, nullptr);
    if (a.status >= 500) throw FhirError("GET " + url + ": HTTP " + std::to_string(a.status), a.status, FhirErrorKind::transport);
    if (a.status != 200)
        throw FhirError("GET " + url + ": HTTP " + std::to_string(a.status) +
                            ": the server publishes no SMART configuration (give the token URL instead)",
                        a.status, FhirErrorKind::auth);
    const auto d = json_object(a.body);
    if (!d) throw FhirError("GET " + url + ": the SMART configuration is not a JSON object", a.status, FhirErrorKind::auth);
    const std::string endpoint = string_member(*d, "token_endpoint");
    if (endpoint.rfind("https://", 0) != 0 && endpoint.rfind("http://", 0) != 0)
        throw FhirError("GET " + url + ": the SMART configuration has no http(s) token_endpoint", a.status, FhirErrorKind::auth);
    if (!array_has(*d, "token_endpoint_auth_methods_supported", "private_key_jwt"))
        throw FhirError("GET " + url + ": the token endpoint does not offer private_key_jwt (SMART Backend Services)", a.status,
                        FhirErrorKind::auth);
    if (!array_has(*d, "token_endpoint_auth_signing_alg_values_supported", options_.key.alg))
        throw FhirError("GET " + url + ": the token endpoint does not accept " + options_.key.alg + " assertions", a.status,
                        FhirErrorKind::auth);
    return endpoint;
}

std::string SmartBackendServices::client_assertion(const std::string& token_url) {
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(options_.now().time_since_epoch()).count();
    const std::string header = json_text([&](auto& w) {
        w.StartObject();
        w.Key("alg");
        w.String(options_.key.alg);
        w.Key("kid");
        w.String(options_.key.kid);
        w.Key("typ");
        w.String("JWT");
        if (!options_.jku.empty()) {
            w.Key("jku");
            w.String(options_.jku);
        }
        w.EndObject();
    });
    const std::string payload = json_text([&](auto& w) {
        w.StartObject();
        w.Key("iss");
        w.String(options_.client_id);
        w.Key("sub");
        w.String(options_.client_id);
        w.Key("aud");
        w.String(token_url);
        w.Key("exp");
        w.Int64(now + kAssertionSeconds);
        w.Key("iat");
        w.Int64(now);
        w.Key("jti");
        w.String(options_.new_jti());
        w.EndObject();
    });
    return jose::sign_compact_jws(header, payload, options_.key);
}

Grant SmartBackendServices::request_grant(const std::string& token_url) {
    const std::string form = "grant_type=client_credentials&scope=" + form_encode(options_.scope) +
                             "&client_assertion_type=" + form_encode("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") +
                             "&client_assertion=" + form_encode(client_assertion(token_url));
    const auto sent = options_.now();
    const fhir::Response a = request(options_, token_url, &form);
    const auto d = json_object(a.body);
    if (a.status != 200) {
        std::string why = "HTTP " + std::to_string(a.status);
        if (d) {
            if (const std::string e = string_member(*d, "error"); !e.empty()) why += " " + e.substr(0, 100);
            if (const std::string e = string_member(*d, "error_description"); !e.empty()) why += ": " + e.substr(0, 300);
        }
        throw FhirError("POST " + token_url + ": the token endpoint refused the client assertion of " + options_.client_id + ": " + why,
                        a.status, a.status >= 500 || a.status == 429 ? FhirErrorKind::transport : FhirErrorKind::auth);
    }
    if (!d) throw FhirError("POST " + token_url + ": the token answer is not a JSON object", a.status, FhirErrorKind::auth);
    Grant g;
    g.access_token = string_member(*d, "access_token");
    g.scope = string_member(*d, "scope");
    std::string type = string_member(*d, "token_type");
    for (auto& c : type) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (g.access_token.empty() || type != "bearer")
        throw FhirError("POST " + token_url + ": the token answer has no bearer access_token", a.status, FhirErrorKind::auth);
    // expires_in: a whole number of seconds, at most a day (absurd values are not trusted); absent: 5 min.
    std::int64_t lifetime = 300;
    if (const auto it = d->FindMember("expires_in"); it != d->MemberEnd()) {
        if (!it->value.IsNumber() || it->value.GetDouble() < 1 || it->value.GetDouble() > 86400)
            throw FhirError("POST " + token_url + ": expires_in is not a number of seconds from 1 to 86400", a.status,
                            FhirErrorKind::auth);
        lifetime = static_cast<std::int64_t>(it->value.GetDouble());
    }
    // Used until shortly before it expires: a tenth of its life (at least 5 s, at most a minute) early.
    const std::int64_t margin = std::clamp<std::int64_t>(lifetime / 10, 5, 60);
    g.expires_at = sent + std::chrono::seconds(std::max<std::int64_t>(lifetime - margin, 1));
    return g;
}

std::string SmartBackendServices::token() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (grant_ && options_.now() < grant_->expires_at) return grant_->access_token;
    if (token_url_.empty()) token_url_ = discover_token_url();
    grant_ = request_grant(token_url_);
    return grant_->access_token;
}

bool SmartBackendServices::refused(const std::string& token) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (grant_ && grant_->access_token == token) grant_.reset();
    return true;
}

std::string SmartBackendServices::describe() const {
    return "SMART Backend Services as client " + options_.client_id + " (" + options_.key.alg + ", kid " + options_.key.kid + ")";
}

std::string SmartBackendServices::token_url() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return token_url_;
}

std::optional<Grant> SmartBackendServices::last_grant() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return grant_;
}

std::string client_jwks(const jose::PrivateKey& key) { return "{\"keys\":[" + jose::public_jwk_json(key) + "]}"; }

}  // namespace calcalert::auth
