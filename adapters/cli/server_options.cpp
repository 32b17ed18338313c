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
        auth::SmartBackendOptions so;
        so.fhir_base_url = c.base_url;
        so.client_id = *client_id;
        try {
            so.key = jose::load_private_key_pem(*key_file, "");
        } catch (const jose::JwkError& e) {
            throw UsageError(std::string("--smart-key: ") + e.what());
        }
        so.key.kid = jose::jwk_thumbprint(so.key);
        if (auto v = opts.value("smart-scope")) so.scope = *v;
        if (auto v = opts.value("smart-token-url")) so.token_url = *v;
        if (auto v = opts.value("smart-jku")) so.jku = *v;
        so.ca_file = c.ca_file;
        so.verify_tls = c.verify_tls;
        c.token_provider = std::make_shared<auth::SmartBackendServices>(std::move(so));
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
