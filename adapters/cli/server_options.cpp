#include "adapters/cli/server_options.hpp"

#include <cstdlib>
#include <fstream>
#include <memory>

#include "adapters/cli/cli.hpp"
#include "adapters/cli/poll_config.hpp"
#include "auth/smart_backend.hpp"
#include "jose/jws.hpp"

namespace calcalert::cli {

const std::set<std::string>& server_value_options() {
    static const std::set<std::string> names = {"config",    "server",      "token-file",      "ca-file",  "smart-client-id",
                                                "smart-key", "smart-scope", "smart-token-url", "smart-jku"};
    return names;
}

const std::set<std::string>& server_flag_options() {
    static const std::set<std::string> names = {"insecure-skip-tls-verify"};
    return names;
}

void apply_poll_config(Options& opts) {
    const PollConfig c = load_poll_config(opts.value("config").value_or(""), poll_environment());
    opts.fill_from(c.values, c.flags);
}

std::shared_ptr<fhir::TokenProvider> smart_provider(const SmartSettings& settings) {
    auth::SmartBackendOptions so;
    so.fhir_base_url = settings.server;
    so.client_id = settings.client_id;
    try {
        so.key = jose::load_private_key_pem(settings.key_file, "");
    } catch (const jose::JwkError& e) {
        throw std::invalid_argument(e.what());
    }
    so.key.kid = jose::jwk_thumbprint(so.key);
    if (!settings.scope.empty()) so.scope = settings.scope;
    so.token_url = settings.token_url;
    so.jku = settings.jku;
    so.ca_file = settings.ca_file;
    so.verify_tls = settings.verify_tls;
    return std::make_shared<auth::SmartBackendServices>(std::move(so));
}

fhir::ClientOptions client_options(const Options& opts) {
    fhir::ClientOptions c;
    auto server = opts.value("server");
    if (!server || server->empty()) throw UsageError("--server URL is required");
    if (server->rfind("http://", 0) != 0 && server->rfind("https://", 0) != 0)
        throw UsageError("--server must be an http:// or https:// URL, not '" + *server + "'");
    c.base_url = *server;
    while (!c.base_url.empty() && c.base_url.back() == '/') c.base_url.pop_back();
    if (auto f = opts.value("ca-file")) c.ca_file = *f;
    if (opts.flag("insecure-skip-tls-verify")) c.verify_tls = false;
    const auto client_id = opts.value("smart-client-id");
    const auto key_file = opts.value("smart-key");
    if (client_id || key_file) {
        if (!client_id || !key_file) throw UsageError("--smart-client-id and --smart-key go together");
        if (opts.value("token-file")) throw UsageError("--token-file and SMART Backend Services (--smart-*) exclude each other");
        SmartSettings smart;
        smart.server = c.base_url;
        smart.client_id = *client_id;
        smart.key_file = *key_file;
        if (auto v = opts.value("smart-scope")) smart.scope = *v;
        if (auto v = opts.value("smart-token-url")) smart.token_url = *v;
        if (auto v = opts.value("smart-jku")) smart.jku = *v;
        smart.ca_file = c.ca_file;
        smart.verify_tls = c.verify_tls;
        try {
            c.token_provider = smart_provider(smart);
        } catch (const std::invalid_argument& e) {
            throw UsageError(std::string("--smart-key: ") + e.what());
        }
    } else if (auto f = opts.value("token-file")) {
        std::ifstream in(*f);
        if (!in) throw UsageError("--token-file " + *f + ": cannot open");
        c.token_provider = fhir::token_file(*f);
    } else if (const char* env = std::getenv("CALCALERT_FHIR_TOKEN"); env && *env) {
        c.bearer_token = env;
    }
    return c;
}

}  // namespace calcalert::cli
