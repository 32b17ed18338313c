#include "adapters/cds_hooks/config.hpp"

#include <algorithm>
#include <cctype>
#include <climits>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <type_traits>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

extern char** environ;

namespace calcalert::cds {
namespace {

namespace fs = std::filesystem;
using Value = rapidjson::Value;

enum class Kind { string, integer, boolean, list, json };

struct Key {
    const char* name;
    Kind kind;
    std::int64_t min = 0;
    std::int64_t max = 0;
    std::function<void(ServeConfig&, const Value&, const std::string&)> set;
};

std::string need_string(const Value& v, const std::string& path) {
    if (!v.IsString()) throw ConfigError(path + ": expected a string");
    return std::string(v.GetString(), v.GetStringLength());
}

std::vector<std::string> need_list(const Value& v, const std::string& path) {
    if (!v.IsArray()) throw ConfigError(path + ": expected a list of strings");
    std::vector<std::string> out;
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
        std::string s = need_string(v[i], path + "[" + std::to_string(i) + "]");
        if (s.empty()) throw ConfigError(path + "[" + std::to_string(i) + "]: must not be empty");
        out.push_back(std::move(s));
    }
    return out;
}

std::vector<IssuerConfig> need_issuers(const Value& v, const std::string& path) {
    if (!v.IsArray()) throw ConfigError(path + ": expected a list of issuer objects");
    std::vector<IssuerConfig> out;
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
        const std::string p = path + "[" + std::to_string(i) + "]";
        if (!v[i].IsObject()) throw ConfigError(p + ": expected an object");
        IssuerConfig is;
        for (const auto& m : v[i].GetObject()) {
            const std::string k(m.name.GetString(), m.name.GetStringLength());
            if (k == "iss") is.iss = need_string(m.value, p + ".iss");
            else if (k == "jwks_file") is.jwks_file = need_string(m.value, p + ".jwks_file");
            else if (k == "jku_allow") is.jku_allow = need_list(m.value, p + ".jku_allow");
            else throw ConfigError(p + "." + k + ": unknown key (known: iss, jwks_file, jku_allow)");
        }
        if (is.iss.empty()) throw ConfigError(p + ".iss: required");
        if (is.jwks_file.empty() && is.jku_allow.empty())
            throw ConfigError(p + ": needs jwks_file or jku_allow (where the issuer's public keys come from)");
        out.push_back(std::move(is));
    }
    return out;
}

std::vector<FhirServerAuth> need_server_auth(const Value& v, const std::string& path) {
    if (!v.IsArray()) throw ConfigError(path + ": expected a list of {server, token_file | smart} objects");
    std::vector<FhirServerAuth> out;
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
        const std::string p = path + "[" + std::to_string(i) + "]";
        if (!v[i].IsObject()) throw ConfigError(p + ": expected an object");
        FhirServerAuth a;
        bool smart = false;
        for (const auto& m : v[i].GetObject()) {
            const std::string k(m.name.GetString(), m.name.GetStringLength());
            if (k == "server") a.server = need_string(m.value, p + ".server");
            else if (k == "token_file") a.token_file = need_string(m.value, p + ".token_file");
            else if (k == "smart") {
                smart = true;
                if (!m.value.IsObject()) throw ConfigError(p + ".smart: expected an object");
                for (const auto& s : m.value.GetObject()) {
                    const std::string sk(s.name.GetString(), s.name.GetStringLength());
                    const std::string sp = p + ".smart." + sk;
                    if (sk == "client_id") a.smart_client_id = need_string(s.value, sp);
                    else if (sk == "key_file") a.smart_key_file = need_string(s.value, sp);
                    else if (sk == "scope") a.smart_scope = need_string(s.value, sp);
                    else if (sk == "token_url") a.smart_token_url = need_string(s.value, sp);
                    else if (sk == "jku") a.smart_jku = need_string(s.value, sp);
                    else throw ConfigError(sp + ": unknown key (known: client_id, key_file, scope, token_url, jku)");
                }
                if (a.smart_client_id.empty() || a.smart_key_file.empty())
                    throw ConfigError(p + ".smart: needs client_id and key_file");
            } else {
                throw ConfigError(p + "." + k + ": unknown key (known: server, token_file, smart)");
            }
        }
        if (a.server.empty()) throw ConfigError(p + ".server: required");
        if (smart == !a.token_file.empty()) throw ConfigError(p + ": needs exactly one of token_file and smart");
        out.push_back(std::move(a));
    }
    return out;
}

std::int64_t need_int(const Value& v, const std::string& path, std::int64_t lo, std::int64_t hi) {
    if (!v.IsInt64()) throw ConfigError(path + ": expected an integer");
    const std::int64_t n = v.GetInt64();
    if (n < lo || n > hi)
        throw ConfigError(path + ": " + std::to_string(n) + " is out of range [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "]");
    return n;
}

const std::vector<Key>& keys() {
    static const std::vector<Key> table = [] {
        std::vector<Key> k;
        auto str = [&k](const char* name, std::string ServeConfig::*field) {
            k.push_back({name, Kind::string, 0, 0,
                         [field](ServeConfig& c, const Value& v, const std::string& p) { c.*field = need_string(v, p); }});
        };
        auto integer = [&k](const char* name, auto field, std::int64_t lo, std::int64_t hi) {
            k.push_back({name, Kind::integer, lo, hi, [field, lo, hi](ServeConfig& c, const Value& v, const std::string& p) {
                             c.*field = static_cast<std::remove_reference_t<decltype(c.*field)>>(need_int(v, p, lo, hi));
                         }});
        };
        auto list = [&k](const char* name, std::vector<std::string> ServeConfig::*field) {
            k.push_back({name, Kind::list, 0, 0,
                         [field](ServeConfig& c, const Value& v, const std::string& p) { c.*field = need_list(v, p); }});
        };
        str("bind_address", &ServeConfig::bind_address);
        integer("port", &ServeConfig::port, 0, 65535);
        str("public_base_url", &ServeConfig::public_base_url);
        integer("request_timeout_ms", &ServeConfig::request_timeout_ms, 100, 600000);
        integer("keep_alive_timeout_ms", &ServeConfig::keep_alive_timeout_ms, 100, 600000);
        integer("max_keep_alive_requests", &ServeConfig::max_keep_alive_requests, 1, 100000);
        integer("max_threads", &ServeConfig::max_threads, 1, 1024);
        integer("max_queued", &ServeConfig::max_queued, 1, 100000);
        integer("max_connections", &ServeConfig::max_connections, 1, 65536);
        integer("call_deadline_ms", &ServeConfig::call_deadline_ms, 100, 600000);
        integer("replay_flush_ms", &ServeConfig::replay_flush_ms, 0, 1000);
        integer("max_body_bytes", &ServeConfig::max_body_bytes, 1024, std::int64_t{1} << 30);
        str("state_file", &ServeConfig::state_file);
        k.push_back({"issuers", Kind::json, 0, 0,
                     [](ServeConfig& c, const Value& v, const std::string& p) { c.issuers = need_issuers(v, p); }});
        list("fhir_servers", &ServeConfig::fhir_servers);
        k.push_back({"fhir_server_auth", Kind::json, 0, 0, [](ServeConfig& c, const Value& v, const std::string& p) {
                         c.fhir_server_auth = need_server_auth(v, p);
                     }});
        list("cors_origins", &ServeConfig::cors_origins);
        k.push_back({"prefetch_outcome_policy", Kind::string, 0, 0, [](ServeConfig& c, const Value& v, const std::string& p) {
                         const std::string s = need_string(v, p);
                         if (s == "fail") c.prefetch_outcome_policy = OutcomePolicy::fail;
                         else if (s == "omit") c.prefetch_outcome_policy = OutcomePolicy::omit;
                         else throw ConfigError(p + ": must be \"fail\" or \"omit\", not \"" + s + "\"");
                     }});
        integer("override_suppression_hours", &ServeConfig::override_suppression_hours, 0, 24 * 3650);
        integer("critical_override_hours", &ServeConfig::critical_override_hours, 0, 24 * 3650);
        integer("clock_skew_seconds", &ServeConfig::clock_skew_seconds, 0, 600);
        integer("max_token_lifetime_seconds", &ServeConfig::max_token_lifetime_seconds, 10, 3600);
        integer("jwks_cache_seconds", &ServeConfig::jwks_cache_seconds, 0, 86400 * 7);
        integer("fhir_timeout_ms", &ServeConfig::fhir_timeout_ms, 100, 600000);
        str("fhir_ca_file", &ServeConfig::fhir_ca_file);
        str("identifier_system", &ServeConfig::identifier_system);
        str("rule_system", &ServeConfig::rule_system);
        k.push_back({"insecure_dev", Kind::boolean, 0, 0, [](ServeConfig& c, const Value& v, const std::string& p) {
                         if (!v.IsBool()) throw ConfigError(p + ": expected true or false");
                         c.insecure_dev = v.GetBool();
                     }});
        k.push_back({"explain_pages", Kind::boolean, 0, 0, [](ServeConfig& c, const Value& v, const std::string& p) {
                         if (!v.IsBool()) throw ConfigError(p + ": expected true or false");
                         c.explain_pages = v.GetBool();
                     }});
        str("explain_key_file", &ServeConfig::explain_key_file);
        integer("explain_link_lifetime_seconds", &ServeConfig::explain_link_lifetime_seconds, 60, 7 * 86400);
        integer("explain_cache_entries", &ServeConfig::explain_cache_entries, 1, 1000000);
        integer("explain_cache_bytes", &ServeConfig::explain_cache_bytes, std::int64_t{1} << 20, std::int64_t{16} << 30);
        return k;
    }();
    return table;
}

const Key* find_key(const std::string& name) {
    for (const auto& k : keys())
        if (name == k.name) return &k;
    return nullptr;
}

std::string upper(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t");
    if (b == std::string::npos) return {};
    return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

// Environment text -> the JSON value the key expects.
void apply_env(ServeConfig& c, const Key& k, const std::string& var, const std::string& text) {
    rapidjson::Document d;
    const std::string path = "$" + var;
    switch (k.kind) {
        case Kind::string: d.SetString(text.c_str(), static_cast<rapidjson::SizeType>(text.size()), d.GetAllocator()); break;
        case Kind::integer: {
            std::int64_t n = 0;
            std::size_t used = 0;
            try {
                n = std::stoll(text, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used == 0 || used != text.size()) throw ConfigError(path + ": expected an integer, not \"" + text + "\"");
            d.SetInt64(n);
            break;
        }
        case Kind::boolean:
            if (text == "true" || text == "1") d.SetBool(true);
            else if (text == "false" || text == "0") d.SetBool(false);
            else throw ConfigError(path + ": expected true or false, not \"" + text + "\"");
            break;
        case Kind::list: {
            d.SetArray();
            std::stringstream ss(text);
            std::string item;
            while (std::getline(ss, item, ',')) {
                item = trim(item);
                if (item.empty()) continue;
                d.PushBack(Value(item.c_str(), static_cast<rapidjson::SizeType>(item.size()), d.GetAllocator()), d.GetAllocator());
            }
            break;
        }
        case Kind::json:
            d.Parse(text.c_str(), text.size());
            if (d.HasParseError()) throw ConfigError(path + ": not JSON (" + rapidjson::GetParseError_En(d.GetParseError()) + ")");
            break;
    }
    k.set(c, d, path);
}

fs::path resolve(const fs::path& base, const std::string& p) {
    if (p.empty() || p == ":memory:" || fs::path(p).is_absolute() || p.find("://") != std::string::npos) return p;
    return base / p;
}

}  // namespace

ServeConfig load_serve_config(const std::string& path, const std::map<std::string, std::string>& env) {
    ServeConfig c;
    fs::path base = fs::current_path();
    if (!path.empty()) {
        std::ifstream in(path, std::ios::binary);
        if (!in) throw ConfigError(path + ": cannot be read");
        std::stringstream ss;
        ss << in.rdbuf();
        const std::string text = ss.str();
        rapidjson::Document d;
        d.Parse(text.c_str(), text.size());
        if (d.HasParseError())
            throw ConfigError(path + ": not JSON at offset " + std::to_string(d.GetErrorOffset()) + " (" +
                              rapidjson::GetParseError_En(d.GetParseError()) + ")");
        if (!d.IsObject()) throw ConfigError(path + ": $: expected a JSON object");
        for (const auto& m : d.GetObject()) {
            const std::string name(m.name.GetString(), m.name.GetStringLength());
            const Key* k = find_key(name);
            if (!k) throw ConfigError(path + ": $." + name + ": unknown key");
            try {
                k->set(c, m.value, "$." + name);
            } catch (const ConfigError& e) {
                throw ConfigError(path + ": " + e.what());
            }
        }
        base = fs::absolute(fs::path(path)).parent_path();
    }
    for (const auto& [var, value] : env) {
        static const std::string prefix = "CALCALERT_SERVE_";
        if (var.rfind(prefix, 0) != 0) continue;
        const Key* match = nullptr;
        for (const auto& k : keys())
            if (upper(k.name) == var.substr(prefix.size())) match = &k;
        if (!match) throw ConfigError("environment variable " + var + ": unknown setting");
        apply_env(c, *match, var, value);
    }
    c.state_file = resolve(base, c.state_file).string();
    for (auto& is : c.issuers) is.jwks_file = resolve(base, is.jwks_file).string();
    for (auto& a : c.fhir_server_auth) {
        a.token_file = resolve(base, a.token_file).string();
        a.smart_key_file = resolve(base, a.smart_key_file).string();
    }
    c.fhir_ca_file = resolve(base, c.fhir_ca_file).string();
    c.explain_key_file = resolve(base, c.explain_key_file).string();
    return c;
}

std::map<std::string, std::string> serve_environment() {
    std::map<std::string, std::string> out;
    for (char** e = environ; e && *e; ++e) {
        const std::string entry(*e);
        if (entry.rfind("CALCALERT_SERVE_", 0) != 0) continue;
        const auto eq = entry.find('=');
        if (eq == std::string::npos) continue;
        out[entry.substr(0, eq)] = entry.substr(eq + 1);
    }
    return out;
}

bool is_loopback_address(const std::string& a) {
    return a == "::1" || a == "localhost" || a.rfind("127.", 0) == 0;
}

std::string normalize_base_url(const std::string& url) {
    std::string u = url;
    while (!u.empty() && u.back() == '/') u.pop_back();
    const auto scheme_end = u.find("://");
    if (scheme_end == std::string::npos) return u;
    const auto host_end = u.find('/', scheme_end + 3);
    const std::size_t stop = host_end == std::string::npos ? u.size() : host_end;
    for (std::size_t i = 0; i < stop; ++i) u[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(u[i])));
    return u;
}

void validate(const ServeConfig& c) {
    if (c.insecure_dev && !is_loopback_address(c.bind_address))
        throw ConfigError("insecure_dev is allowed only with a loopback bind_address (127.0.0.1 or ::1), not " +
                          c.bind_address);
    if (!c.insecure_dev && c.issuers.empty())
        throw ConfigError("$.issuers: at least one issuer is needed (every call must carry a JWT from a known issuer)");
    auto is_url = [](const std::string& u) { return u.rfind("https://", 0) == 0 || u.rfind("http://", 0) == 0; };
    for (std::size_t i = 0; i < c.fhir_servers.size(); ++i)
        if (!is_url(c.fhir_servers[i]))
            throw ConfigError("$.fhir_servers[" + std::to_string(i) + "]: not an http(s) URL: " + c.fhir_servers[i]);
    std::vector<std::string> with_auth;
    for (std::size_t i = 0; i < c.fhir_server_auth.size(); ++i) {
        const std::string p = "$.fhir_server_auth[" + std::to_string(i) + "].server";
        const std::string norm = normalize_base_url(c.fhir_server_auth[i].server);
        if (std::none_of(c.fhir_servers.begin(), c.fhir_servers.end(), [&](const std::string& s) { return normalize_base_url(s) == norm; }))
            throw ConfigError(p + ": " + c.fhir_server_auth[i].server + " is not one of fhir_servers");
        if (std::find(with_auth.begin(), with_auth.end(), norm) != with_auth.end())
            throw ConfigError(p + ": " + c.fhir_server_auth[i].server + " has credentials twice");
        with_auth.push_back(norm);
    }
    if (!c.public_base_url.empty() && !is_url(c.public_base_url))
        throw ConfigError("$.public_base_url: not an http(s) URL: " + c.public_base_url);
    for (std::size_t i = 0; i < c.issuers.size(); ++i)
        for (std::size_t j = 0; j < c.issuers[i].jku_allow.size(); ++j)
            if (!is_url(c.issuers[i].jku_allow[j]))
                throw ConfigError("$.issuers[" + std::to_string(i) + "].jku_allow[" + std::to_string(j) +
                                  "]: not an http(s) URL");
}

}  // namespace calcalert::cds
