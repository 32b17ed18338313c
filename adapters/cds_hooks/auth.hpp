// Authentication of CDS Hooks clients (CDS Hooks 2.0 "Trusting CDS Clients"): every call carries a
// JWT in "Authorization: Bearer". Accepted only when: alg is ES384 or RS384 (never none, never
// HMAC); the header has kid and typ JWT; iss is a configured issuer; the key with that kid comes from
// the issuer's JWK Set file, or from a jku URL on that issuer's allow-list (fetched, cached); the
// signature verifies; aud is exactly the endpoint URL; iat, exp (and nbf when present) are not
// negative, within 10 years of now, exp after iat, hold with a small skew and a bounded lifetime
// (checked without overflow on the untrusted values); jti was not seen before within the token's lifetime (the state store, shared
// by replicas). A failure gives a reason for the server's log; it never contains the token.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "adapters/cds_hooks/config.hpp"
#include "jose/jws.hpp"
#include "adapters/state/state_store.hpp"

namespace calcalert::cds {

struct AuthResult {
    bool ok = false;
    std::string reason;  // why not (for logs); never the token
    std::string iss;
    std::string sub;
};

// Fetches a URL's body (nullopt on any failure). Injected so that tests can count fetches.
using UrlFetcher = std::function<std::optional<std::string>(const std::string& url)>;
// The default fetcher: libcurl, http(s) only, no redirects, short timeouts, at most 256 KiB.
UrlFetcher curl_fetcher(int timeout_ms, std::string ca_file);

class JwtVerifier {
public:
    // Loads every issuer's jwks_file now (ConfigError naming the file when unreadable or invalid).
    // `store` checks and records each token's jti (a replay is refused).
    JwtVerifier(const ServeConfig& config, state::ReplayStore& store, UrlFetcher fetch);

    AuthResult verify(std::string_view token, const std::string& audience, std::int64_t now);

    std::size_t jku_fetches() const;

private:
    struct Issuer {
        IssuerConfig config;
        std::vector<jose::PublicKey> file_keys;
    };
    struct CachedSet {
        std::vector<jose::PublicKey> keys;
        std::int64_t fetched_at = 0;
        bool ok = false;
    };
    // Keys with `kid` from the jku URL (cached; refetched when stale, or once a minute when kid is unknown).
    std::vector<jose::PublicKey> jku_keys(const std::string& url, const std::string& kid, std::int64_t now);

    ServeConfig config_;
    state::ReplayStore& store_;
    UrlFetcher fetch_;
    std::map<std::string, Issuer> issuers_;
    mutable std::mutex mutex_;
    std::map<std::string, CachedSet> cache_;
    std::size_t fetches_ = 0;
};

}  // namespace calcalert::cds
