#include "adapters/cli/poll_config.hpp"

#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <rapidjson/document.h>

#include "adapters/cli/commands.hpp"
#include "fhir/json_parse.hpp"

extern char** environ;

namespace calcalert::cli {
namespace {

namespace fs = std::filesystem;

std::string env_name(const std::string& key) {
    std::string out = "CALCALERT_POLL_";
    for (char c : key) out.push_back(c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
    return out;
}

const PollConfigKey* find_key(const std::string& key) {
    for (const auto& k : poll_config_keys())
        if (key == k.key) return &k;
    return nullptr;
}

// The JSON value as the option's text, checked against the key's type.
std::string option_text(const PollConfigKey& k, const rapidjson::Value& v, const std::string& path) {
    const std::string type = k.type;
    if (type == "integer") {
        if (!v.IsInt64() || v.GetInt64() < 0) throw ConfigError(path + ": expected a whole number of 0 or more");
        return std::to_string(v.GetInt64());
    }
    if (type == "boolean") {
        if (!v.IsBool()) throw ConfigError(path + ": expected true or false");
        return v.GetBool() ? "true" : "false";
    }
    if (!v.IsString()) throw ConfigError(path + ": expected a string");
    return std::string(v.GetString(), v.GetStringLength());
}

void set(PollConfig& c, const PollConfigKey& k, const std::string& text, const fs::path& base, const std::string& where) {
    if (std::string(k.type) == "boolean") {
        if (text == "true") c.flags.insert(k.option);
        else if (text == "false") c.flags.erase(k.option);
        else throw ConfigError(where + ": expected true or false, not '" + text + "'");
        return;
    }
    if (std::string(k.type) == "integer" &&
        (text.empty() || text.find_first_not_of("0123456789") != std::string::npos))
        throw ConfigError(where + ": expected a whole number, not '" + text + "'");
    if (std::string(k.type) == "path" && !text.empty() && fs::path(text).is_relative() && !base.empty() &&
        text.find("://") == std::string::npos && text != ":memory:")
        c.values[k.option] = (base / text).string();
    else
        c.values[k.option] = text;
}

}  // namespace

const std::vector<PollConfigKey>& poll_config_keys() {
    static const std::vector<PollConfigKey> keys = {
        {"server", "server", "string"},
        {"interval", "interval", "duration"},
        {"state_file", "state", "path"},
        {"token_file", "token-file", "path"},
        {"ca_file", "ca-file", "path"},
        {"insecure_skip_tls_verify", "insecure-skip-tls-verify", "boolean"},
        {"page_size", "page-size", "integer"},
        {"history_batch", "history-batch", "integer"},
        {"lease", "lease", "duration"},
        {"worker_id", "worker-id", "string"},
        {"batch", "batch", "integer"},
        {"bundle_type", "bundle-type", "string"},
        {"lab_code_search", "lab-code-search", "string"},
        {"overlap", "overlap", "duration"},
        {"retries", "retries", "integer"},
        {"fault_budget", "fault-budget", "integer"},
        {"request_deadline", "request-deadline", "duration"},
        {"catalog", "catalog", "path"},
        {"terminology", "terminology", "path"},
        {"identifier_system", "identifier-system", "string"},
        {"backfill", "backfill", "string"},
        {"bulk_group", "bulk-group", "string"},
        {"bulk_type_filter", "bulk-type-filter", "string"},
        {"bulk_max_wait", "bulk-max-wait", "duration"},
        {"smart.client_id", "smart-client-id", "string"},
        {"smart.key_file", "smart-key", "path"},
        {"smart.scope", "smart-scope", "string"},
        {"smart.token_url", "smart-token-url", "string"},
        {"smart.jku", "smart-jku", "string"},
    };
    return keys;
}

PollConfig load_poll_config(const std::string& path, const std::map<std::string, std::string>& env) {
    PollConfig c;
    fs::path base;
    if (!path.empty()) {
        std::ifstream in(path, std::ios::binary);
        if (!in) throw ConfigError(path + ": cannot open");
        const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        rapidjson::Document d;
        if (const auto r = fhir::parse_untrusted_json(d, text, fhir::JsonLimits{8, 1024 * 1024}); !r)
            throw ConfigError(path + ": not acceptable JSON: " + r.error->describe());
        if (!d.IsObject()) throw ConfigError(path + ": expected a JSON object");
        base = fs::absolute(path).parent_path();
        for (const auto& m : d.GetObject()) {
            const std::string name(m.name.GetString(), m.name.GetStringLength());
            if (name == "smart") {
                if (!m.value.IsObject()) throw ConfigError(path + ": $.smart: expected an object");
                for (const auto& s : m.value.GetObject()) {
                    const std::string key = "smart." + std::string(s.name.GetString(), s.name.GetStringLength());
                    const PollConfigKey* k = find_key(key);
                    if (!k) throw ConfigError(path + ": $." + key + ": unknown key");
                    set(c, *k, option_text(*k, s.value, path + ": $." + key), base, path + ": $." + key);
                }
                continue;
            }
            const PollConfigKey* k = find_key(name);
            if (!k || name.rfind("smart.", 0) == 0) throw ConfigError(path + ": $." + name + ": unknown key");
            set(c, *k, option_text(*k, m.value, path + ": $." + name), base, path + ": $." + name);
        }
    }
    for (const auto& [var, value] : env) {
        if (var.rfind("CALCALERT_POLL_", 0) != 0) continue;
        const PollConfigKey* match = nullptr;
        for (const auto& k : poll_config_keys())
            if (env_name(k.key) == var) match = &k;
        if (!match) throw ConfigError("environment variable " + var + ": unknown setting");
        set(c, *match, value, fs::path(), "environment variable " + var);
    }
    return c;
}

std::map<std::string, std::string> poll_environment() {
    std::map<std::string, std::string> out;
    for (char** e = environ; e && *e; ++e) {
        const std::string kv = *e;
        const auto eq = kv.find('=');
        if (eq != std::string::npos && kv.rfind("CALCALERT_POLL_", 0) == 0) out[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    return out;
}

}  // namespace calcalert::cli
