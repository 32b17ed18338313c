#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "adapters/cds_hooks/config.hpp"

using namespace calcalert::cds;

namespace {

// The files of these tests, in one directory removed when the test program ends.
struct TempDir {
    std::filesystem::path dir = std::filesystem::temp_directory_path() / ("cds-config-test-" + std::to_string(::getpid()));
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(dir, ignored);
    }
};

std::string write_temp(const std::string& name, const std::string& text) {
    static const TempDir temp;
    std::filesystem::create_directories(temp.dir);
    const auto p = temp.dir / name;
    std::ofstream(p) << text;
    return p.string();
}

}  // namespace

TEST_CASE("the example configuration loads and validates") {
    const auto c = load_serve_config(std::string(CALCALERT_TEST_DIR) + "/../deploy/serve.example.json", {});
    CHECK_NOTHROW(validate(c));
    CHECK(c.port == 8080);
    CHECK(!c.issuers.empty());
    CHECK(std::filesystem::path(c.state_file).is_absolute());
}

TEST_CASE("the explanation page keys: defaults, file, environment, ranges") {
    const ServeConfig d;
    CHECK(d.explain_pages);
    CHECK(d.explain_link_lifetime_seconds == 3600);
    CHECK(d.explain_cache_entries == 1000);
    const auto c = load_serve_config(
        write_temp("explain.json", R"({"explain_key_file": "keys/explain.key", "explain_link_lifetime_seconds": 600,
                                       "explain_cache_entries": 5, "explain_cache_bytes": 2097152, "explain_pages": false})"),
        {{"CALCALERT_SERVE_EXPLAIN_LINK_LIFETIME_SECONDS", "900"}});
    CHECK_FALSE(c.explain_pages);
    CHECK(c.explain_link_lifetime_seconds == 900);
    CHECK(c.explain_cache_entries == 5);
    CHECK(c.explain_cache_bytes == 2097152);
    CHECK(std::filesystem::path(c.explain_key_file).is_absolute());
    CHECK(std::filesystem::path(c.explain_key_file).filename() == "explain.key");
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("e.json", R"({"explain_link_lifetime_seconds": 10})"), {}),
                         doctest::Contains("$.explain_link_lifetime_seconds: 10 is out of range [60, 604800]"), ConfigError);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("f.json", R"({"explain_cache_entries": 0})"), {}),
                         doctest::Contains("$.explain_cache_entries: 0 is out of range"), ConfigError);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("g.json", R"({"explain_pages": "yes"})"), {}),
                         doctest::Contains("$.explain_pages: expected true or false"), ConfigError);
}

TEST_CASE("unknown keys and wrong types are rejected with their path") {
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("a.json", R"({"prot": 80})"), {}), doctest::Contains("$.prot: unknown key"),
                         ConfigError);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("b.json", R"({"port": "80"})"), {}), doctest::Contains("$.port: expected an integer"),
                         ConfigError);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("c.json", R"({"port": 70000})"), {}), doctest::Contains("out of range"),
                         ConfigError);
    CHECK_THROWS_WITH_AS(
        load_serve_config(write_temp("d.json", R"({"issuers": [{"iss": "x", "jwks_file": "k.json", "jwks_url": "u"}]})"), {}),
        doctest::Contains("$.issuers[0].jwks_url: unknown key"), ConfigError);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("e.json", R"({"issuers": [{"iss": "x"}]})"), {}),
                         doctest::Contains("jwks_file or jku_allow"), ConfigError);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("f.json", R"({"prefetch_outcome_policy": "ignore"})"), {}),
                         doctest::Contains("fail"), ConfigError);
    CHECK_THROWS_AS(load_serve_config(write_temp("g.json", "{"), {}), ConfigError);
}

TEST_CASE("environment variables override the file, and unknown ones are errors") {
    const std::string file = write_temp("h.json", R"({"port": 9000, "issuers": [{"iss": "https://ehr", "jwks_file": "/k.json"}]})");
    const auto c = load_serve_config(file, {{"CALCALERT_SERVE_PORT", "9100"},
                                            {"CALCALERT_SERVE_FHIR_SERVERS", "https://a.example/fhir, https://b.example/fhir"},
                                            {"CALCALERT_SERVE_PREFETCH_OUTCOME_POLICY", "omit"},
                                            {"CALCALERT_SERVE_INSECURE_DEV", "false"},
                                            {"OTHER", "x"}});
    CHECK(c.port == 9100);
    CHECK(c.fhir_servers == std::vector<std::string>{"https://a.example/fhir", "https://b.example/fhir"});
    CHECK(c.prefetch_outcome_policy == OutcomePolicy::omit);
    CHECK_THROWS_WITH_AS(load_serve_config(file, {{"CALCALERT_SERVE_PROT", "1"}}), doctest::Contains("CALCALERT_SERVE_PROT"),
                         ConfigError);
    CHECK_THROWS_AS(load_serve_config(file, {{"CALCALERT_SERVE_PORT", "80x"}}), ConfigError);
    const auto env_issuers =
        load_serve_config("", {{"CALCALERT_SERVE_ISSUERS", R"([{"iss":"https://e","jku_allow":["https://e/jwks.json"]}])"}});
    REQUIRE(env_issuers.issuers.size() == 1);
    CHECK(env_issuers.issuers[0].jku_allow.size() == 1);
}

TEST_CASE("override periods: critical_override_hours (default 72) and override_suppression_hours (default 720)") {
    const ServeConfig defaults = load_serve_config("", {});
    CHECK(defaults.critical_override_hours == 72);
    CHECK(defaults.override_suppression_hours == 720);
    CHECK(load_serve_config(std::string(CALCALERT_TEST_DIR) + "/../deploy/serve.example.json", {}).critical_override_hours == 72);
    CHECK(load_serve_config(write_temp("o1.json", R"({"critical_override_hours": 24})"), {}).critical_override_hours == 24);
    CHECK(load_serve_config("", {{"CALCALERT_SERVE_CRITICAL_OVERRIDE_HOURS", "0"}}).critical_override_hours == 0);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("o2.json", R"({"critical_override_hours": -1})"), {}),
                         doctest::Contains("$.critical_override_hours: -1 is out of range"), ConfigError);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("o3.json", R"({"critical_override_hours": "72"})"), {}),
                         doctest::Contains("$.critical_override_hours: expected an integer"), ConfigError);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("o4.json", R"({"critical_override_hour": 72})"), {}),
                         doctest::Contains("$.critical_override_hour: unknown key"), ConfigError);
}

TEST_CASE("replay_flush_ms: batches every 50 ms by default, 0 writes each jti in its call, at most a second") {
    CHECK(load_serve_config("", {}).replay_flush_ms == 50);
    CHECK(load_serve_config(write_temp("r1.json", R"({"replay_flush_ms": 0})"), {}).replay_flush_ms == 0);
    CHECK(load_serve_config("", {{"CALCALERT_SERVE_REPLAY_FLUSH_MS", "1000"}}).replay_flush_ms == 1000);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("r2.json", R"({"replay_flush_ms": 1001})"), {}),
                         doctest::Contains("$.replay_flush_ms: 1001 is out of range [0, 1000]"), ConfigError);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("r3.json", R"({"replay_flush_ms": -1})"), {}),
                         doctest::Contains("$.replay_flush_ms: -1 is out of range"), ConfigError);
    CHECK_THROWS_WITH_AS(load_serve_config(write_temp("r4.json", R"({"replay_flush_ms": 2.5})"), {}),
                         doctest::Contains("$.replay_flush_ms: expected an integer"), ConfigError);
}

TEST_CASE("validation: insecure_dev only on loopback, issuers needed otherwise") {
    ServeConfig c;
    CHECK_THROWS_WITH_AS(validate(c), doctest::Contains("issuers"), ConfigError);
    c.insecure_dev = true;
    CHECK_NOTHROW(validate(c));
    c.bind_address = "0.0.0.0";
    CHECK_THROWS_WITH_AS(validate(c), doctest::Contains("loopback"), ConfigError);
    CHECK(is_loopback_address("127.0.0.1"));
    CHECK(is_loopback_address("::1"));
    CHECK_FALSE(is_loopback_address("10.0.0.1"));
    CHECK(normalize_base_url("HTTPS://EHR.example.org/FHIR/") == "https://ehr.example.org/FHIR");
}

TEST_CASE("serve has no state file default in the current directory") {
    const auto c = load_serve_config("", {});
    CHECK(c.state_file.empty());  // serve then opens state::default_state_path()
    const auto d = load_serve_config(write_temp("state.json", R"({"state_file": "s.sqlite"})"), {});
    CHECK(std::filesystem::path(d.state_file).is_absolute());  // relative to the config file
}

TEST_CASE("fhir_server_auth: the service's own credentials, strict, only for registered servers") {
    const std::string servers = R"("insecure_dev": true, "fhir_servers": ["https://ehr.example.org/fhir"], )";
    const auto c = load_serve_config(
        write_temp("auth-ok.json", "{" + servers + R"("fhir_server_auth": [{"server": "https://EHR.example.org/fhir/",
          "smart": {"client_id": "calcalert", "key_file": "keys/smart.pem", "scope": "system/Observation.rs"}}]})"),
        {});
    REQUIRE(c.fhir_server_auth.size() == 1);
    CHECK(c.fhir_server_auth[0].smart_client_id == "calcalert");
    CHECK(std::filesystem::path(c.fhir_server_auth[0].smart_key_file).is_absolute());  // relative to the file's folder
    CHECK(c.fhir_server_auth[0].smart_scope == "system/Observation.rs");
    CHECK_NOTHROW(validate(c));

    struct Row {
        const char* what;
        const char* json;
        const char* error;
    };
    const Row rows[] = {
        {"unknown key", R"([{"server": "https://ehr.example.org/fhir", "token_file": "t", "tokenfile": "u"}])",
         "$.fhir_server_auth[0].tokenfile: unknown key"},
        {"unknown smart key", R"([{"server": "https://ehr.example.org/fhir", "smart": {"client_id": "c", "key_file": "k", "secret": "s"}}])",
         "$.fhir_server_auth[0].smart.secret: unknown key"},
        {"both", R"([{"server": "https://ehr.example.org/fhir", "token_file": "t", "smart": {"client_id": "c", "key_file": "k"}}])",
         "needs exactly one of token_file and smart"},
        {"neither", R"([{"server": "https://ehr.example.org/fhir"}])", "needs exactly one of token_file and smart"},
        {"no key file", R"([{"server": "https://ehr.example.org/fhir", "smart": {"client_id": "c"}}])", "needs client_id and key_file"},
        {"no server", R"([{"token_file": "t"}])", "$.fhir_server_auth[0].server: required"},
        {"not a list", R"({"server": "x"})", "expected a list"},
    };
    for (const auto& row : rows) {
        CAPTURE(row.what);
        CHECK_THROWS_WITH_AS(load_serve_config(write_temp("auth-bad.json", "{" + servers + R"("fhir_server_auth": )" + row.json + "}"), {}),
                             doctest::Contains(row.error), ConfigError);
    }
    const auto unregistered = load_serve_config(
        write_temp("auth-other.json", "{" + servers + R"("fhir_server_auth": [{"server": "https://other.example.org/fhir", "token_file": "t"}]})"),
        {});
    CHECK_THROWS_WITH_AS(validate(unregistered), doctest::Contains("$.fhir_server_auth[0].server: https://other.example.org/fhir is not one of fhir_servers"),
                         ConfigError);
    const auto twice = load_serve_config(
        write_temp("auth-twice.json", "{" + servers + R"("fhir_server_auth": [{"server": "https://ehr.example.org/fhir", "token_file": "t"},
          {"server": "https://ehr.example.org/fhir/", "token_file": "u"}]})"),
        {});
    CHECK_THROWS_WITH_AS(validate(twice), doctest::Contains("has credentials twice"), ConfigError);
    // From the environment, as JSON text.
    const auto env = load_serve_config("", {{"CALCALERT_SERVE_INSECURE_DEV", "true"},
                                            {"CALCALERT_SERVE_FHIR_SERVERS", "https://ehr.example.org/fhir"},
                                            {"CALCALERT_SERVE_FHIR_SERVER_AUTH", R"([{"server":"https://ehr.example.org/fhir","token_file":"/run/secrets/t"}])"}});
    REQUIRE(env.fhir_server_auth.size() == 1);
    CHECK(env.fhir_server_auth[0].token_file == "/run/secrets/t");
}
