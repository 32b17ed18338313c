#include "adapters/cds_hooks/explain_links.hpp"

#include <fstream>
#include <sstream>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "explain/page.hpp"
#include "jose/jws.hpp"

namespace calcalert::cds {
namespace {

constexpr unsigned char kVersion = 1;
constexpr std::size_t kIdBytes = 16, kExpBytes = 8, kBindBytes = 16, kTagBytes = 16;
constexpr std::size_t kSignedBytes = 1 + kIdBytes + kExpBytes + kBindBytes;
constexpr std::size_t kTokenBytes = kSignedBytes + kTagBytes;

struct MacFree {
    void operator()(EVP_MAC* m) const { EVP_MAC_free(m); }
    void operator()(EVP_MAC_CTX* c) const { EVP_MAC_CTX_free(c); }
};

// An HMAC-SHA256 context keyed with `key`, ready for update.
std::shared_ptr<const EVP_MAC_CTX> keyed_hmac(const std::string& key) {
    const std::unique_ptr<EVP_MAC, MacFree> mac(EVP_MAC_fetch(nullptr, "HMAC", nullptr));
    std::shared_ptr<EVP_MAC_CTX> ctx(mac ? EVP_MAC_CTX_new(mac.get()) : nullptr, MacFree{});
    char digest[] = "SHA256";
    const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
    if (!ctx || EVP_MAC_init(ctx.get(), reinterpret_cast<const unsigned char*>(key.data()), key.size(), params) != 1)
        throw std::runtime_error("HMAC-SHA256 is not available from OpenSSL");
    return ctx;
}

void field(std::string& out, const std::string& s) {
    const auto n = static_cast<std::uint32_t>(s.size());
    for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
    out += s;
}

std::string random_bytes(std::size_t n) {
    std::string out(n, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1)
        throw std::runtime_error("no random bytes from OpenSSL");
    return out;
}

std::string page_of(const std::string& title, const std::string& message) {
    return "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + explain::html_escape(title) +
           "</title>\n</head>\n<body>\n<main>\n<h1>" + explain::html_escape(title) + "</h1>\n<p>" +
           explain::html_escape(message) + "</p>\n</main>\n</body>\n</html>\n";
}

std::size_t text_bytes(const std::string& s) { return sizeof(std::string) + (s.size() > 15 ? s.size() : 0); }

}  // namespace

ExplainTokens::ExplainTokens(std::string key) {
    if (key.size() < kExplainKeyMinBytes)
        throw ConfigError("the explanation link key must have at least " + std::to_string(kExplainKeyMinBytes) + " bytes");
    keyed_ = keyed_hmac(key);
    OPENSSL_cleanse(key.data(), key.size());
}

std::string ExplainTokens::hmac(std::string_view label, std::string_view data) const {
    const std::unique_ptr<EVP_MAC_CTX, MacFree> ctx(EVP_MAC_CTX_dup(keyed_.get()));
    const unsigned char zero = 0;
    unsigned char out[EVP_MAX_MD_SIZE];
    std::size_t len = 0;
    if (!ctx || EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(label.data()), label.size()) != 1 ||
        EVP_MAC_update(ctx.get(), &zero, 1) != 1 ||
        EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1 ||
        EVP_MAC_final(ctx.get(), out, &len, sizeof out) != 1)
        throw std::runtime_error("HMAC-SHA256 failed");
    return std::string(reinterpret_cast<const char*>(out), len);
}

std::string ExplainTokens::generate_key() { return random_bytes(32); }

std::string ExplainTokens::new_id() { return random_bytes(kIdBytes); }

std::string ExplainTokens::read_key_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw ConfigError("$.explain_key_file: " + path + ": cannot be read");
    std::string key;
    char buf[4097];
    in.read(buf, sizeof buf);
    key.assign(buf, static_cast<std::size_t>(in.gcount()));
    if (key.size() > 4096) throw ConfigError("$.explain_key_file: " + path + ": more than 4096 bytes (is it a key?)");
    if (key.size() < kExplainKeyMinBytes)
        throw ConfigError("$.explain_key_file: " + path + ": " + std::to_string(key.size()) + " bytes; a key has at least " +
                          std::to_string(kExplainKeyMinBytes) + " (e.g. head -c 32 /dev/urandom > FILE)");
    return key;
}

std::string ExplainTokens::binding_of(const ExplainBinding& b) const {
    std::string data;
    field(data, b.patient);
    field(data, b.rule);
    field(data, b.evidence_hash);
    field(data, b.issuer);
    return hmac("calcalert-explain-binding", data).substr(0, kBindBytes);
}

std::string ExplainTokens::mint(const std::string& id, std::int64_t expires, const ExplainBinding& binding) const {
    if (id.size() != kIdBytes) throw std::invalid_argument("an explanation link id has 16 bytes");
    std::string raw;
    raw.push_back(static_cast<char>(kVersion));
    raw += id;
    const auto e = static_cast<std::uint64_t>(expires);
    for (int i = 7; i >= 0; --i) raw.push_back(static_cast<char>((e >> (8 * i)) & 0xFF));
    raw += binding_of(binding);
    raw += hmac("calcalert-explain-token", raw).substr(0, kTagBytes);
    return jose::base64url_encode(raw);
}

ExplainTokens::Checked ExplainTokens::check(std::string_view token, std::int64_t now) const {
    Checked c;
    if (token.empty() || token.size() > kMaxTokenLength) return c;
    const auto raw = jose::base64url_decode(token);
    if (!raw || raw->size() != kTokenBytes || static_cast<unsigned char>((*raw)[0]) != kVersion) return c;
    const std::string expected = hmac("calcalert-explain-token", std::string_view(*raw).substr(0, kSignedBytes));
    if (CRYPTO_memcmp(expected.data(), raw->data() + kSignedBytes, kTagBytes) != 0) {
        c.result = Result::bad_signature;
        return c;
    }
    c.id = raw->substr(1, kIdBytes);
    std::uint64_t e = 0;
    for (std::size_t i = 0; i < kExpBytes; ++i) e = (e << 8) | static_cast<unsigned char>((*raw)[1 + kIdBytes + i]);
    c.expires = static_cast<std::int64_t>(e);
    c.binding = raw->substr(1 + kIdBytes + kExpBytes, kBindBytes);
    c.result = now > c.expires ? Result::expired : Result::ok;
    return c;
}

ExplainCache::ExplainCache(std::size_t max_entries, std::size_t max_bytes) : max_entries_(max_entries), max_bytes_(max_bytes) {}

std::size_t ExplainCache::estimate(const ExplainSnapshot& s, const rules::Finding& f) {
    std::size_t n = sizeof(ExplainEntry) + sizeof(ExplainSnapshot);
    for (const auto& l : s.facts.labs)
        n += sizeof(l) + text_bytes(l.status) + text_bytes(l.source) + text_bytes(l.code) + text_bytes(l.reported);
    for (const auto& c : s.facts.conditions)
        n += sizeof(c) + text_bytes(c.concept_id) + text_bytes(c.system) + text_bytes(c.code) + text_bytes(c.display) +
             text_bytes(c.code_label) + text_bytes(c.caveat) + text_bytes(c.source);
    for (const auto& p : s.facts.procedures)
        n += sizeof(p) + text_bytes(p.code_label) + text_bytes(p.display) + text_bytes(p.source);
    for (const auto* notes : {&s.facts.notes, &s.notes})
        for (const auto& d : *notes) n += sizeof(d) + text_bytes(d.source) + text_bytes(d.path) + text_bytes(d.message);
    n += text_bytes(f.summary) + text_bytes(f.detail);
    for (const auto& e : f.evidence) n += sizeof(e) + text_bytes(e.text) + text_bytes(e.key) + text_bytes(e.label);
    for (const auto& x : f.notes) n += text_bytes(x);
    for (const auto& x : f.sources) n += text_bytes(x);
    return n;
}

void ExplainCache::evict_locked(std::int64_t now) {
    // Expired entries first. An entry expires only when `now` (whole seconds) moves past it, so the
    // whole list is swept once per second of `now`, not on every put; within the same second only
    // the entry just put can be expired already (get() refuses expired entries in any case).
    if (now != swept_at_) {
        swept_at_ = now;
        for (auto it = lru_.begin(); it != lru_.end();) {
            if (it->second.expires < now) {
                bytes_ -= it->second.bytes;
                index_.erase(it->first);
                it = lru_.erase(it);
            } else {
                ++it;
            }
        }
    } else if (!lru_.empty() && lru_.front().second.expires < now) {
        bytes_ -= lru_.front().second.bytes;
        index_.erase(lru_.front().first);
        lru_.pop_front();
    }
    while (!lru_.empty() && (lru_.size() > max_entries_ || bytes_ > max_bytes_)) {
        bytes_ -= lru_.back().second.bytes;
        index_.erase(lru_.back().first);
        lru_.pop_back();
    }
}

void ExplainCache::put(const std::string& id, ExplainEntry entry, std::int64_t now) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = index_.find(id); it != index_.end()) {
        bytes_ -= it->second->second.bytes;
        lru_.erase(it->second);
        index_.erase(it);
    }
    bytes_ += entry.bytes;
    lru_.emplace_front(id, std::move(entry));
    index_[id] = lru_.begin();
    evict_locked(now);
}

std::optional<ExplainEntry> ExplainCache::get(const std::string& id, std::int64_t now) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = index_.find(id);
    if (it == index_.end()) return std::nullopt;
    if (it->second->second.expires < now) {
        bytes_ -= it->second->second.bytes;
        lru_.erase(it->second);
        index_.erase(it);
        return std::nullopt;
    }
    lru_.splice(lru_.begin(), lru_, it->second);
    return lru_.front().second;
}

std::size_t ExplainCache::size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return lru_.size();
}

std::size_t ExplainCache::bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return bytes_;
}

ExplainPages::ExplainPages(const ServeConfig& config, const rules::RuleCatalog& catalog, explain::Guidance guidance,
                           std::string key)
    : catalog_(catalog), guidance_(std::move(guidance)), tokens_(std::move(key)),
      cache_(static_cast<std::size_t>(config.explain_cache_entries), static_cast<std::size_t>(config.explain_cache_bytes)),
      lifetime_(config.explain_link_lifetime_seconds) {}

std::string ExplainPages::link_path(const std::shared_ptr<const ExplainSnapshot>& snapshot, const rules::Finding& finding,
                                    const std::string& identifier, const std::string& issuer, std::int64_t now) {
    ExplainEntry e;
    e.snapshot = snapshot;
    e.finding = finding;
    e.binding = {finding.patient, finding.rule->id + (finding.order.empty() ? "" : "|" + finding.order),
                 finding.evidence_hash, issuer};
    e.identifier = identifier;
    e.expires = now + lifetime_;
    e.bytes = ExplainCache::estimate(*snapshot, finding);
    const std::string id = ExplainTokens::new_id();
    const std::string token = tokens_.mint(id, e.expires, e.binding);
    cache_.put(id, std::move(e), now);
    return "/explain/" + token;
}

ExplainReply ExplainPages::page(std::string_view token, std::int64_t now) {
    const auto c = tokens_.check(token, now);
    switch (c.result) {
        case ExplainTokens::Result::malformed:
            return {401, page_of("Link not valid", "This link is not an alert explanation link of this service.")};
        case ExplainTokens::Result::bad_signature:
            return {401, page_of("Link not valid",
                                 "This link was altered, or was issued by another instance of the service or before its "
                                 "key changed. Open the alert again from the patient's chart.")};
        case ExplainTokens::Result::expired:
            return {401, page_of("Link expired", "This link has expired. Open the alert again from the patient's chart.")};
        case ExplainTokens::Result::ok: break;
    }
    const auto entry = cache_.get(c.id, now);
    if (!entry)
        return {410, page_of("Page no longer held",
                             "This link is valid, but the service no longer holds its page (it keeps a bounded number "
                             "of pages, and none across a restart). Open the alert again from the patient's chart.")};
    if (CRYPTO_memcmp(tokens_.binding_of(entry->binding).data(), c.binding.data(), c.binding.size()) != 0)
        return {401, page_of("Link not valid", "This link does not belong to the page held under its name.")};
    explain::PageInput in;
    in.finding = &entry->finding;
    in.facts = &entry->snapshot->facts;
    in.notes = &entry->snapshot->notes;
    in.catalog = &catalog_;
    in.guidance = &guidance_;
    in.now = entry->snapshot->now;
    in.identifier = entry->identifier;
    in.footer_note = "This link is valid until " + rules::format_time_for_people(entry->expires, catalog_.time_zone()) + ".";
    return {200, explain::render_page(in)};
}

}  // namespace calcalert::cds
