// The configuration file of `calcalert poll` (and `alerts`, `doctor`): one JSON object whose keys are
// the long options with '_' for '-' (server, interval, state_file, page_size, ...) and a "smart"
// object (client_id, key_file, scope, token_url, jku), checked strictly: an unknown key or a wrong
// type is a ConfigError naming its path ("$.smart.client_ide: unknown key"). Every key can also be
// set by the environment variable CALCALERT_POLL_<KEY> (CALCALERT_POLL_SMART_CLIENT_ID for the
// smart keys), which wins over the file; an unknown CALCALERT_POLL_* variable is an error too. The
// command line wins over both. No secrets in the file: the token and the private key are named by
// their files (token_file, smart.key_file); relative paths resolve against the file's folder.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

namespace calcalert::cli {

struct PollConfig {
    std::map<std::string, std::string> values;  // option name (as on the command line) -> value
    std::set<std::string> flags;                // flags set (insecure-skip-tls-verify)
};

// path "" reads only the environment. Throws ConfigError.
PollConfig load_poll_config(const std::string& path, const std::map<std::string, std::string>& env);
// The CALCALERT_POLL_* variables of the process environment.
std::map<std::string, std::string> poll_environment();

// Every key: JSON key, the option it sets, and its type ("string", "integer", "boolean",
// "duration", "path"), for the docs and the tests.
struct PollConfigKey {
    const char* key;     // "page_size" or "smart.client_id"
    const char* option;  // "page-size" or "smart-client-id"
    const char* type;
};
const std::vector<PollConfigKey>& poll_config_keys();

}  // namespace calcalert::cli
