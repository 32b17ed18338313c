// The FHIR server options poll, alerts and doctor share: --server, TLS, and the authentication
// (--smart-client-id/--smart-key and friends, --token-file, $CALCALERT_FHIR_TOKEN).
#pragma once

#include <memory>
#include <set>
#include <string>

#include "adapters/cli/options.hpp"
#include "fhir/client.hpp"

namespace calcalert::cli {

// The option names (with a value, and flags) to add to a command's Options.
const std::set<std::string>& server_value_options();
const std::set<std::string>& server_flag_options();
// --config FILE (poll_config.hpp) and the CALCALERT_POLL_* environment, under the command line.
// ConfigError for an unknown key or a wrong type.
void apply_poll_config(Options& opts);
// UsageError for a missing or malformed --server, conflicting or half-given authentication.
fhir::ClientOptions client_options(const Options& opts);

// SMART Backend Services for `server` (poll's --smart-* options, serve's fhir_server_auth).
struct SmartSettings {
    std::string server, client_id, key_file, scope, token_url, jku, ca_file;
    bool verify_tls = true;
};
// std::invalid_argument naming the key file when it cannot be loaded.
std::shared_ptr<fhir::TokenProvider> smart_provider(const SmartSettings& settings);

}  // namespace calcalert::cli
