// The links of CDS cards to their explanation page (explain/page.hpp), GET /explain/<token>.
//
// The URL carries no PHI: the token is opaque, short-lived and signed. Its 57 bytes, base64url without
// padding (76 characters), are
//   version (1) | id (16 random bytes) | expiry (8, big-endian Unix seconds) | binding (16) | tag (16)
// where binding = HMAC-SHA256(key, "calcalert-explain-binding" | patient | rule | evidence hash | issuer)
// (length-prefixed fields, truncated to 16 bytes: it names the alert without revealing it) and
// tag = HMAC-SHA256(key, "calcalert-explain-token" | the first 41 bytes), truncated to 16 bytes. The key
// is read from a file (explain_key_file, at least 32 bytes) or drawn at start (then links do not outlive
// the process).
//
// What a page needs (the patient's facts as the call read them, the finding, the data-quality notes) is
// kept in this process, keyed by the token's id, in a bounded LRU cache (explain_cache_entries,
// explain_cache_bytes; an entry also leaves when its link expires). The link of one replica does not
// open on another, and a restart empties the cache; the page then says so (410).
//
// Answers of GET /explain/<token>: 200 the page; 401 a token that is malformed, longer than
// kMaxTokenLength, signed with another key, altered, or expired; 410 a valid token whose page is no
// longer held (evicted, or issued before a restart); each with a short HTML body that says which.
#pragma once

#include <cstdint>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <openssl/types.h>

#include "adapters/cds_hooks/config.hpp"
#include "explain/guidance.hpp"
#include "rules/engine.hpp"

namespace calcalert::cds {

inline constexpr std::size_t kMaxTokenLength = 128;  // longer tokens are refused unread
inline constexpr std::size_t kExplainKeyMinBytes = 32;

// What a link is bound to.
struct ExplainBinding {
    std::string patient;
    std::string rule;
    std::string evidence_hash;
    std::string issuer;
};

class ExplainTokens {
public:
    explicit ExplainTokens(std::string key);  // at least kExplainKeyMinBytes (ConfigError)
    // 32 random bytes.
    static std::string generate_key();
    // The whole file, at least kExplainKeyMinBytes and at most 4096 bytes (ConfigError naming the file).
    static std::string read_key_file(const std::string& path);

    std::string mint(const std::string& id, std::int64_t expires, const ExplainBinding& binding) const;

    enum class Result { ok, malformed, bad_signature, expired };
    struct Checked {
        Result result = Result::malformed;
        std::string id;  // 16 bytes
        std::int64_t expires = 0;
        std::string binding;  // 16 bytes
    };
    // Checks the form, then the tag, then the expiry (`now` past it: expired).
    Checked check(std::string_view token, std::int64_t now) const;
    std::string binding_of(const ExplainBinding& binding) const;  // 16 bytes

    static std::string new_id();  // 16 random bytes

private:
    // HMAC-SHA256 of label | '\0' | data, from a copy of the keyed context.
    std::string hmac(std::string_view label, std::string_view data) const;
    // HMAC-SHA256 keyed once (fetching the algorithm and keying it for every HMAC cost more than
    // the HMAC); each use works on a copy, so the tokens are safe to use from several threads.
    std::shared_ptr<const EVP_MAC_CTX> keyed_;
};

// What one call read for its patient, shared by the pages of that call's cards.
struct ExplainSnapshot {
    rules::PatientFacts facts;
    std::vector<rules::DataQualityNote> notes;
    std::int64_t now = 0;
};

struct ExplainEntry {
    std::shared_ptr<const ExplainSnapshot> snapshot;
    rules::Finding finding;
    ExplainBinding binding;
    std::string identifier;  // the card uuid
    std::int64_t expires = 0;
    std::size_t bytes = 0;   // an estimate of what it holds (the snapshot counted in full for each entry)
};

// A bounded LRU map id -> entry; thread-safe.
class ExplainCache {
public:
    ExplainCache(std::size_t max_entries, std::size_t max_bytes);
    void put(const std::string& id, ExplainEntry entry, std::int64_t now);
    // The entry, made the most recently used; nullopt when absent or expired.
    std::optional<ExplainEntry> get(const std::string& id, std::int64_t now);
    std::size_t size() const;
    std::size_t bytes() const;

    static std::size_t estimate(const ExplainSnapshot& snapshot, const rules::Finding& finding);

private:
    using List = std::list<std::pair<std::string, ExplainEntry>>;
    void evict_locked(std::int64_t now);
    std::size_t max_entries_, max_bytes_;
    mutable std::mutex mutex_;
    List lru_;  // most recently used first
    std::unordered_map<std::string, List::iterator> index_;
    std::size_t bytes_ = 0;
    std::int64_t swept_at_ = std::numeric_limits<std::int64_t>::min();  // the `now` of the last full sweep
};

struct ExplainReply {
    int status = 200;
    std::string body;  // HTML
};

// Links and pages: minted by the service for each card, opened by GET /explain/<token>.
class ExplainPages {
public:
    ExplainPages(const ServeConfig& config, const rules::RuleCatalog& catalog, explain::Guidance guidance,
                 std::string key);
    // The link's path ("/explain/<token>") for a card of this finding; the entry is cached.
    std::string link_path(const std::shared_ptr<const ExplainSnapshot>& snapshot, const rules::Finding& finding,
                          const std::string& identifier, const std::string& issuer, std::int64_t now);
    // The answer to GET /explain/<token>.
    ExplainReply page(std::string_view token, std::int64_t now);
    ExplainCache& cache() { return cache_; }
    const ExplainTokens& tokens() const { return tokens_; }

private:
    const rules::RuleCatalog& catalog_;
    explain::Guidance guidance_;
    ExplainTokens tokens_;
    ExplainCache cache_;
    std::int64_t lifetime_;
};

}  // namespace calcalert::cds
