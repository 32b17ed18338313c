// The poll configuration file and CALCALERT_POLL_* variables: strict keys with their path, types,
// paths relative to the file, the environment over the file, the command line over both.
#include <doctest/doctest.h>

#include "../support/shell.hpp"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "adapters/cli/commands.hpp"
#include "adapters/cli/options.hpp"
#include "adapters/cli/poll_config.hpp"

using namespace calcalert::cli;

namespace {

struct TempConfig : test::TempDir {
    TempConfig() : test::TempDir("pollcfg") {}
    std::string write(const std::string& name, const std::string& text) const {
        std::ofstream(path / name) << text;
        return (path / name).string();
    }
};

}  // namespace

TEST_CASE("poll config: every key to its option, paths relative to the file") {
    TempConfig t;
    const auto path = t.write("poll.json", R"({"server": "https://fhir.example.org/r4", "interval": "5m", "state_file": "state.sqlite",
        "page_size": 100, "insecure_skip_tls_verify": true,
        "smart": {"client_id": "calcalert", "key_file": "/etc/calcalert/key.pem", "scope": "system/*.rs"}})");
    const PollConfig c = load_poll_config(path, {});
    CHECK(c.values.at("server") == "https://fhir.example.org/r4");
    CHECK(c.values.at("interval") == "5m");
    CHECK(c.values.at("state") == (t.path / "state.sqlite").string());
    CHECK(c.values.at("page-size") == "100");
    CHECK(c.values.at("smart-client-id") == "calcalert");
    CHECK(c.values.at("smart-key") == "/etc/calcalert/key.pem");
    CHECK(c.values.at("smart-scope") == "system/*.rs");
    CHECK(c.flags.count("insecure-skip-tls-verify") == 1);
}

TEST_CASE("poll config: unknown keys and wrong types are errors naming the key") {
    TempConfig t;
    struct Row {
        const char* text;
        const char* expected;
    };
    const std::vector<Row> rows = {
        {R"({"sever": "x"})", "$.sever: unknown key"},
        {R"({"smart": {"client_ide": "x"}})", "$.smart.client_ide: unknown key"},
        {R"({"smart.client_id": "x"})", "$.smart.client_id: unknown key"},
        {R"({"page_size": "100"})", "$.page_size: expected a whole number"},
        {R"({"page_size": -1})", "$.page_size: expected a whole number"},
        {R"({"server": 5})", "$.server: expected a string"},
        {R"({"insecure_skip_tls_verify": "yes"})", "$.insecure_skip_tls_verify: expected true or false"},
        {R"({"smart": "x"})", "$.smart: expected an object"},
        {R"([1])", "expected a JSON object"},
        {R"({"token": "a secret"})", "$.token: unknown key"},
    };
    for (const auto& row : rows) {
        CAPTURE(std::string(row.text));
        const auto path = t.write("bad.json", row.text);
        CHECK_THROWS_WITH_AS(load_poll_config(path, {}), doctest::Contains(row.expected), ConfigError);
    }
    CHECK_THROWS_WITH_AS(load_poll_config((t.path / "missing.json").string(), {}), doctest::Contains("cannot open"), ConfigError);
    const auto deep = t.write("deep.json", std::string(50, '[') + std::string(50, ']'));
    CHECK_THROWS_WITH_AS(load_poll_config(deep, {}), doctest::Contains("nested deeper than 8 levels"), ConfigError);
}

TEST_CASE("poll config: the environment over the file, the command line over both") {
    TempConfig t;
    const auto path = t.write("poll.json", R"({"server": "https://file/fhir", "batch": 10, "retries": 2})");
    const PollConfig c = load_poll_config(path, {{"CALCALERT_POLL_BATCH", "20"}, {"CALCALERT_POLL_SMART_CLIENT_ID", "env-client"},
                                                 {"CALCALERT_POLL_INSECURE_SKIP_TLS_VERIFY", "true"}, {"CALCALERT_SERVE_PORT", "1"}});
    CHECK(c.values.at("batch") == "20");
    CHECK(c.values.at("smart-client-id") == "env-client");
    CHECK(c.flags.count("insecure-skip-tls-verify") == 1);
    Options opts({"--server", "https://cli/fhir"}, {"server", "batch", "retries", "smart-client-id"}, {"insecure-skip-tls-verify"});
    opts.fill_from(c.values, c.flags);
    CHECK(opts.value("server") == "https://cli/fhir");
    CHECK(opts.value("batch") == "20");
    CHECK(opts.value("retries") == "2");
    CHECK(opts.flag("insecure-skip-tls-verify"));
    CHECK_THROWS_WITH_AS(load_poll_config("", {{"CALCALERT_POLL_SERVR", "x"}}), doctest::Contains("CALCALERT_POLL_SERVR: unknown setting"),
                         ConfigError);
    CHECK_THROWS_WITH_AS(load_poll_config("", {{"CALCALERT_POLL_BATCH", "ten"}}), doctest::Contains("expected a whole number"), ConfigError);
}

TEST_CASE("docs/configuration.md lists every poll key") {
    std::ifstream in(std::string(CALCALERT_TEST_DIR) + "/../docs/configuration.md");
    REQUIRE(in);
    std::stringstream ss;
    ss << in.rdbuf();
    for (const auto& k : poll_config_keys()) {
        CAPTURE(std::string(k.key));
        CHECK(ss.str().find(std::string("`") + k.key + "`") != std::string::npos);
    }
}

TEST_CASE("the example poll configuration loads") {
    const PollConfig c = load_poll_config(std::string(CALCALERT_TEST_DIR) + "/../deploy/poll.example.json", {});
    CHECK(c.values.at("smart-client-id") == "calcalert-poller");
    CHECK(c.values.at("state") == "/var/lib/calcalert/state.sqlite");
}
