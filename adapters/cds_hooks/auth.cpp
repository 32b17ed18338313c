#include "adapters/cds_hooks/auth.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include <curl/curl.h>
#include <rapidjson/document.h>

#include "fhir/json_parse.hpp"

namespace calcalert::cds {
namespace {

constexpr std::size_t kMaxJwksBytes = 256 * 1024;
constexpr std::size_t kMaxJwtPartBytes = 64 * 1024;  // a decoded JWT header or payload
constexpr std::int64_t kUnknownKidRefetchSeconds = 60;
// A time claim further than this from now (either way) is not a time a client means.
constexpr std::int64_t kMaxClaimDistanceSeconds = std::int64_t{10} * 366 * 86400;

std::size_t write_body(char* data, std::size_t size, std::size_t n, void* user) {
    auto* out = static_cast<std::string*>(user);
    if (out->size() + size * n > kMaxJwksBytes) return 0;  // aborts the transfer
    out->append(data, size * n);
    return size * n;
}

std::optional<std::string> string_claim(const rapidjson::Value& o, const char* name) {
    auto it = o.FindMember(name);
    if (it == o.MemberEnd() || !it->value.IsString()) return std::nullopt;
    return std::string(it->value.GetString(), it->value.GetStringLength());
}

std::optional<std::int64_t> time_claim(const rapidjson::Value& o, const char* name) {
    auto it = o.FindMember(name);
    if (it == o.MemberEnd()) return std::nullopt;
    if (it->value.IsInt64()) return it->value.GetInt64();
    // A double beyond int64 would be undefined behaviour to convert: not a time.
    if (it->value.IsDouble() && std::fabs(it->value.GetDouble()) < 9.0e18)
        return static_cast<std::int64_t>(it->value.GetDouble());
    return std::nullopt;
}

// |a - b| without overflow: nullopt when it does not fit an int64.
std::optional<std::int64_t> distance(std::int64_t a, std::int64_t b) {
    std::int64_t d = 0;
    if (__builtin_sub_overflow(a, b, &d)) return std::nullopt;
    if (d == std::numeric_limits<std::int64_t>::min()) return std::nullopt;
    return d < 0 ? -d : d;
}

// Why a time claim (seconds since the epoch, from an untrusted token) is not plausible, or "".
std::string implausible_time(const char* name, std::int64_t value, std::int64_t now) {
    if (value < 0) return std::string(name) + " is negative";
    const auto d = distance(value, now);
    if (!d || *d > kMaxClaimDistanceSeconds) return std::string(name) + " is more than 10 years from now";
    return {};
}

AuthResult fail(std::string reason) {
    AuthResult r;
    r.reason = std::move(reason);
    return r;
}

}  // namespace

UrlFetcher curl_fetcher(int timeout_ms, std::string ca_file) {
    return [timeout_ms, ca_file](const std::string& url) -> std::optional<std::string> {
        CURL* curl = curl_easy_init();
        if (!curl) return std::nullopt;
        std::string body;
        curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
        curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms));
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout_ms));
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_body);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
        if (!ca_file.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, ca_file.c_str());
        const CURLcode rc = curl_easy_perform(curl);
        long status = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(curl);
        if (rc != CURLE_OK || status != 200) return std::nullopt;
        return body;
    };
}

JwtVerifier::JwtVerifier(const ServeConfig& config, state::ReplayStore& store, UrlFetcher fetch)
    : config_(config), store_(store), fetch_(std::move(fetch)) {
    for (const auto& ic : config.issuers) {
        Issuer is{ic, {}};
        if (!ic.jwks_file.empty()) {
            std::ifstream in(ic.jwks_file, std::ios::binary);
            if (!in) throw ConfigError("issuer " + ic.iss + ": jwks_file " + ic.jwks_file + " cannot be read");
            std::stringstream ss;
            ss << in.rdbuf();
            try {
                is.file_keys = jose::parse_jwks(ss.str());
            } catch (const jose::JwkError& e) {
                throw ConfigError("issuer " + ic.iss + ": jwks_file " + ic.jwks_file + ": " + e.what());
            }
            if (is.file_keys.empty())
                throw ConfigError("issuer " + ic.iss + ": jwks_file " + ic.jwks_file + " holds no ES384/RS384 signing key");
        }
        issuers_[ic.iss] = std::move(is);
    }
}

std::size_t JwtVerifier::jku_fetches() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return fetches_;
}

std::vector<jose::PublicKey> JwtVerifier::jku_keys(const std::string& url, const std::string& kid, std::int64_t now) {
    std::lock_guard<std::mutex> lock(mutex_);
    CachedSet& c = cache_[url];
    auto with_kid = [&kid](const std::vector<jose::PublicKey>& keys) {
        std::vector<jose::PublicKey> out;
        for (const auto& k : keys)
            if (k.kid == kid) out.push_back(k);
        return out;
    };
    const bool fresh = c.ok && now - c.fetched_at < config_.jwks_cache_seconds;
    if (fresh) {
        auto found = with_kid(c.keys);
        if (!found.empty() || now - c.fetched_at < kUnknownKidRefetchSeconds) return found;
    } else if (c.fetched_at != 0 && !c.ok && now - c.fetched_at < kUnknownKidRefetchSeconds) {
        return {};  // a failed fetch is not retried more than once a minute
    }
    ++fetches_;
    c.fetched_at = now;
    c.ok = false;
    auto body = fetch_(url);
    if (!body) return {};
    try {
        c.keys = jose::parse_jwks(*body);
        c.ok = true;
    } catch (const jose::JwkError&) {
        c.keys.clear();
        return {};
    }
    return with_kid(c.keys);
}

AuthResult JwtVerifier::verify(std::string_view token, const std::string& audience, std::int64_t now) {
    const auto dot1 = token.find('.');
    const auto dot2 = dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
    if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos)
        return fail("not a compact JWS (three parts)");
    const auto header_text = jose::base64url_decode(token.substr(0, dot1));
    const auto payload_text = jose::base64url_decode(token.substr(dot1 + 1, dot2 - dot1 - 1));
    const auto signature = jose::base64url_decode(token.substr(dot2 + 1));
    if (!header_text || !payload_text || !signature) return fail("a part is not base64url");
    if (signature->empty()) return fail("unsigned token");

    rapidjson::Document header, payload;
    fhir::JsonLimits limits;
    limits.max_bytes = kMaxJwtPartBytes;
    if (const auto parsed = fhir::parse_untrusted_json(header, *header_text, limits); !parsed)
        return fail("header is not acceptable JSON: " + parsed.error->describe());
    if (!header.IsObject()) return fail("header is not a JSON object");
    if (const auto parsed = fhir::parse_untrusted_json(payload, *payload_text, limits); !parsed)
        return fail("payload is not acceptable JSON: " + parsed.error->describe());
    if (!payload.IsObject()) return fail("payload is not a JSON object");

    const auto alg = string_claim(header, "alg");
    if (!alg || (*alg != "ES384" && *alg != "RS384")) return fail("alg not allowed: " + alg.value_or("(none)"));
    const auto kid = string_claim(header, "kid");
    if (!kid || kid->empty()) return fail("no kid");
    const auto typ = string_claim(header, "typ");
    if (!typ || (*typ != "JWT" && *typ != "jwt")) return fail("typ is not JWT");
    if (header.HasMember("crit")) return fail("crit header not supported");
    const auto jku = string_claim(header, "jku");
    if (header.HasMember("jku") && !jku) return fail("jku is not a string");

    const auto iss = string_claim(payload, "iss");
    if (!iss) return fail("no iss");
    auto issuer = issuers_.find(*iss);
    if (issuer == issuers_.end()) return fail("issuer not allowed: " + *iss);

    // The key: the issuer's file first, then an allow-listed jku.
    std::vector<jose::PublicKey> candidates;
    for (const auto& k : issuer->second.file_keys)
        if (k.kid == *kid) candidates.push_back(k);
    if (candidates.empty()) {
        const auto& allow = issuer->second.config.jku_allow;
        if (jku) {
            if (std::find(allow.begin(), allow.end(), *jku) == allow.end()) return fail("jku not on the issuer's allow-list: " + *jku);
            candidates = jku_keys(*jku, *kid, now);
        } else {
            for (const auto& url : allow) {
                candidates = jku_keys(url, *kid, now);
                if (!candidates.empty()) break;
            }
        }
    }
    if (candidates.empty()) return fail("unknown kid " + *kid + " for issuer " + *iss);
    const std::string_view signing_input = token.substr(0, dot2);
    bool verified = false;
    for (const auto& k : candidates)
        if (jose::verify_signature(k, *alg, signing_input, *signature)) {
            verified = true;
            break;
        }
    if (!verified) return fail("signature does not verify (kid " + *kid + ")");

    // Claims.
    bool aud_ok = false;
    if (auto it = payload.FindMember("aud"); it != payload.MemberEnd()) {
        if (it->value.IsString()) aud_ok = audience == it->value.GetString();
        else if (it->value.IsArray())
            for (const auto& a : it->value.GetArray())
                if (a.IsString() && audience == a.GetString()) aud_ok = true;
    }
    if (!aud_ok) return fail("aud is not " + audience);
    // Time claims, untrusted int64 values: each is first bounded to within 10 years of now (so that no
    // difference below can overflow), then compared. No `now - iat` on an unchecked value.
    const auto exp = time_claim(payload, "exp");
    const auto iat = time_claim(payload, "iat");
    if (!exp || !iat) return fail("exp and iat are required");
    const auto nbf = time_claim(payload, "nbf");
    if (payload.HasMember("nbf") && !nbf) return fail("nbf is not a number of seconds");
    if (auto why = implausible_time("iat", *iat, now); !why.empty()) return fail(why);
    if (auto why = implausible_time("exp", *exp, now); !why.empty()) return fail(why);
    if (nbf)
        if (auto why = implausible_time("nbf", *nbf, now); !why.empty()) return fail(why);
    if (*exp <= *iat) return fail("exp is not after iat");
    // From here every value is in [now - 10 years, now + 10 years] and skew <= 600 (config): no overflow.
    const std::int64_t skew = config_.clock_skew_seconds;
    if (*exp <= now - skew) return fail("expired");
    if (*iat > now + skew) return fail("issued in the future");
    if (nbf && *nbf > now + skew) return fail("not yet valid (nbf)");
    if (*exp - *iat > config_.max_token_lifetime_seconds + skew) return fail("lifetime too long");
    const auto jti = string_claim(payload, "jti");
    if (!jti || jti->empty()) return fail("no jti");
    try {
        if (!store_.remember_jti(*iss, *jti, *exp + skew, now)) return fail("replayed jti");
    } catch (const std::exception& e) {
        return fail(std::string("replay check failed: ") + e.what());
    }
    AuthResult ok;
    ok.ok = true;
    ok.iss = *iss;
    ok.sub = string_claim(payload, "sub").value_or("");
    return ok;
}

}  // namespace calcalert::cds
