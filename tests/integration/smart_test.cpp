// SMART Backend Services against a real token endpoint: the sandbox FHIR server started with
// --smart-jwks (deploy/sandbox/smart-auth.mjs), which verifies every client assertion with the
// `jose` library and refuses FHIR requests without a live token. The client here is the real one
// (auth::SmartBackendServices in a fhir::FhirClient), and the `calcalert` program with --smart-*.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <rapidjson/document.h>

#include "../support/sandbox_server.hpp"
#include "../support/shell.hpp"
#include "auth/smart_backend.hpp"
#include "fhir/client.hpp"
#include "jose/jws.hpp"

using namespace calcalert;

namespace {

namespace fs = std::filesystem;
const std::string kClient = "calcalert-backend";

struct Env {
    fs::path dir = fs::temp_directory_path() / ("calcalert-smart-it-" + std::to_string(::getpid()));
    jose::PrivateKey key = [] {
        auto k = jose::generate_es384_key("");
        k.kid = jose::jwk_thumbprint(k);
        return k;
    }();
    jose::PrivateKey rsa = [] {
        auto k = jose::generate_rs384_key("", 2048);
        k.kid = jose::jwk_thumbprint(k);
        return k;
    }();
    std::unique_ptr<test::SandboxServer> fhir;

    Env() {
        fs::create_directories(dir);
        // Both keys are registered for the client (a site rotating keys registers two).
        std::ofstream(dir / "jwks.json") << "{\"keys\":[" << jose::public_jwk_json(key) << "," << jose::public_jwk_json(rsa) << "]}";
        std::ofstream(dir / "key.pem") << jose::private_key_pem(key);
        test::SandboxOptions o;
        o.extra_args = {"--no-validate", "--smart-jwks", (dir / "jwks.json").string(), "--smart-client-id", kClient,
                        "--smart-token-seconds", "600"};
        fhir = std::make_unique<test::SandboxServer>(o);
    }
    ~Env() {
        fhir.reset();
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    std::string origin() const {
        const std::string b = fhir->base_url();
        return b.substr(0, b.size() - std::string("/fhir").size());
    }
};

Env& env() {
    static Env e;
    return e;
}

auth::SmartBackendOptions smart_options(const jose::PrivateKey& key) {
    auth::SmartBackendOptions o;
    o.fhir_base_url = env().fhir->base_url();
    o.client_id = kClient;
    o.key = key;
    return o;
}

fhir::ClientOptions client_with(std::shared_ptr<fhir::TokenProvider> provider) {
    fhir::ClientOptions c;
    c.base_url = env().fhir->base_url();
    c.token_provider = std::move(provider);
    c.max_retries = 0;
    return c;
}

// POST /auth/revoke-all: every token granted so far stops working; the counts of grants and refusals.
std::pair<int, int> revoke_all() {
    fhir::ClientOptions c;
    c.base_url = env().origin() + "/auth";
    fhir::FhirClient control(c);
    const auto r = control.post("revoke-all", "{}");
    rapidjson::Document d;
    d.Parse(r.body.c_str());
    return {d["granted"].GetInt(), d["refused"].GetInt()};
}

fhir::FhirError error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const fhir::FhirError& e) {
        return e;
    }
    FAIL("no FhirError");
    return fhir::FhirError("", 0);
}

}  // namespace

TEST_CASE("without a token the SMART-protected sandbox answers 401") {
    fhir::ClientOptions c;
    c.base_url = env().fhir->base_url();
    c.max_retries = 0;
    fhir::FhirClient client(c);
    const auto e = error_of([&] { client.get_resource("Patient?_count=1"); });
    CHECK(e.status() == 401);
}

TEST_CASE("a grant from the discovered token endpoint, cached across requests, renewed after a 401") {
    const auto before = revoke_all();
    auto smart = std::make_shared<auth::SmartBackendServices>(smart_options(env().key));
    fhir::FhirClient client(client_with(smart));
    for (int i = 0; i < 5; ++i) CHECK(client.get_resource("Patient?_count=1")["resourceType"].GetString() == std::string("Bundle"));
    CHECK(smart->token_url() == env().origin() + "/auth/token");
    REQUIRE(smart->last_grant());
    CHECK(smart->last_grant()->scope == auth::kDefaultScopes);
    const auto after = revoke_all();  // also revokes the token the client holds
    CHECK(after.first - before.first == 1);  // five requests, one grant
    // The server now refuses the cached token: the client gets a new grant and the request succeeds.
    CHECK(client.get_resource("Patient?_count=1").IsObject());
    CHECK(revoke_all().first - after.first == 1);
}

TEST_CASE("an RS384 key registered for the client works too") {
    auto smart = std::make_shared<auth::SmartBackendServices>(smart_options(env().rsa));
    fhir::FhirClient client(client_with(smart));
    CHECK(client.get_resource("Patient?_count=1").IsObject());
}

TEST_CASE("assertions the token endpoint refuses give a clear error of kind auth") {
    struct Row {
        const char* name;
        std::function<void(auth::SmartBackendOptions&)> tweak;
        const char* expected;
    };
    const std::vector<Row> rows = {
        {"a key that is not registered",
         [](auth::SmartBackendOptions& o) {
             o.key = jose::generate_es384_key("");
             o.key.kid = jose::jwk_thumbprint(o.key);
         },
         "invalid_client"},
        {"another client id", [](auth::SmartBackendOptions& o) { o.client_id = "someone-else"; }, "unexpected \"iss\" claim value"},
        {"an assertion that expired (clock 10 minutes behind)",
         [](auth::SmartBackendOptions& o) { o.now = [] { return std::chrono::system_clock::now() - std::chrono::minutes(10); }; },
         "\"exp\" claim timestamp check failed"},
        {"an assertion dated 10 minutes ahead (expires more than five minutes from now)",
         [](auth::SmartBackendOptions& o) { o.now = [] { return std::chrono::system_clock::now() + std::chrono::minutes(10); }; },
         "more than five minutes"},
    };
    for (const auto& row : rows) {
        CAPTURE(row.name);
        auto o = smart_options(env().key);
        row.tweak(o);
        auto smart = std::make_shared<auth::SmartBackendServices>(o);
        fhir::FhirClient client(client_with(smart));
        const auto e = error_of([&] { client.get_resource("Patient?_count=1"); });
        CHECK(e.kind() == fhir::FhirErrorKind::auth);
        CHECK_FALSE(e.transient());
        CHECK_MESSAGE(std::string(e.what()).find("the token endpoint refused the client assertion of") != std::string::npos, e.what());
        CHECK_MESSAGE(std::string(e.what()).find(row.expected) != std::string::npos, e.what());
    }
}

TEST_CASE("a replayed jti is refused") {
    auto o = smart_options(env().key);
    o.new_jti = [] { return std::string("the-same-jti-") + std::to_string(::getpid()); };
    auto first = std::make_shared<auth::SmartBackendServices>(o);
    fhir::FhirClient one(client_with(first));
    CHECK(one.get_resource("Patient?_count=1").IsObject());
    auto second = std::make_shared<auth::SmartBackendServices>(o);
    fhir::FhirClient two(client_with(second));
    const auto e = error_of([&] { two.get_resource("Patient?_count=1"); });
    CHECK(e.kind() == fhir::FhirErrorKind::auth);
    CHECK_MESSAGE(std::string(e.what()).find("was already used") != std::string::npos, e.what());
}

TEST_CASE("the token endpoint's answer is checked: no SMART configuration, an unreachable endpoint") {
    auto o = smart_options(env().key);
    o.fhir_base_url = env().origin() + "/nothing-here";
    auth::SmartBackendServices no_config(o);
    auto e = error_of([&] { no_config.token(); });
    CHECK(e.kind() == fhir::FhirErrorKind::auth);
    CHECK_MESSAGE(std::string(e.what()).find("publishes no SMART configuration") != std::string::npos, e.what());

    o = smart_options(env().key);
    o.token_url = "http://127.0.0.1:1/token";  // nothing listens on port 1
    auth::SmartBackendServices unreachable(o);
    e = error_of([&] { unreachable.token(); });
    CHECK(e.kind() == fhir::FhirErrorKind::transport);
    CHECK(e.transient());
}

TEST_CASE("the client's assertion: header and claims as SMART Backend Services asks") {
    auto o = smart_options(env().key);
    o.jku = "https://calcalert.example.org/jwks.json";
    o.now = [] { return std::chrono::system_clock::time_point(std::chrono::seconds(2000000000)); };
    auth::SmartBackendServices smart(o);
    const std::string jwt = smart.client_assertion("https://auth.example.org/token");
    const auto dot1 = jwt.find('.');
    const auto dot2 = jwt.find('.', dot1 + 1);
    rapidjson::Document header, claims;
    header.Parse(jose::base64url_decode(jwt.substr(0, dot1))->c_str());
    claims.Parse(jose::base64url_decode(jwt.substr(dot1 + 1, dot2 - dot1 - 1))->c_str());
    CHECK(std::string(header["alg"].GetString()) == "ES384");
    CHECK(std::string(header["typ"].GetString()) == "JWT");
    CHECK(std::string(header["kid"].GetString()) == env().key.kid);
    CHECK(std::string(header["jku"].GetString()) == o.jku);
    CHECK(std::string(claims["iss"].GetString()) == kClient);
    CHECK(std::string(claims["sub"].GetString()) == kClient);
    CHECK(std::string(claims["aud"].GetString()) == "https://auth.example.org/token");
    CHECK(claims["exp"].GetInt64() == 2000000300);
    CHECK(std::string(claims["jti"].GetString()).size() == 32);
    CHECK(smart.client_assertion("x").find(claims["jti"].GetString()) == std::string::npos);  // a new jti each time
}

TEST_CASE("calcalert alerts and poll with --smart-client-id and --smart-key") {
    const std::string bin = CALCALERT_BINARY;
    const std::string state = (env().dir / "state.sqlite").string();
    auto run = [&](const std::string& args) { return test::run_shell(bin + " " + args); };
    const std::string smart = " --server " + env().fhir->base_url() + " --smart-client-id " + kClient + " --smart-key " +
                              (env().dir / "key.pem").string();
    auto [code, out] = run("poll --once --state " + state + smart);
    CHECK_MESSAGE(code == 0, out);
    std::tie(code, out) = run("alerts" + smart);
    CHECK_MESSAGE(code == 0, out);
    CHECK(out.find("DetectedIssues written by calcalert") != std::string::npos);
    // Without the key: 401 from the server, exit 3, and the message says so.
    std::tie(code, out) = run("alerts --server " + env().fhir->base_url());
    CHECK(code == 3);
    CHECK(out.find("401") != std::string::npos);
    // doctor: SMART offered, the grant's scopes shown, ready.
    std::tie(code, out) = run("doctor" + smart);
    CHECK_MESSAGE(code == 0, out);
    CHECK_MESSAGE(out.find("ok      SMART Backend Services: token_endpoint " + env().origin() + "/auth/token") != std::string::npos, out);
    CHECK_MESSAGE(out.find("ok      access token scopes: granted system/Observation.rs") != std::string::npos, out);
    CHECK_MESSAGE(out.find("ok      read access") != std::string::npos, out);
    // doctor with a key the server does not know: the grant is refused, not ready (exit 3).
    std::ofstream(env().dir / "other.pem") << jose::private_key_pem(jose::generate_es384_key(""));
    std::tie(code, out) = run("doctor --server " + env().fhir->base_url() + " --smart-client-id " + kClient + " --smart-key " +
                              (env().dir / "other.pem").string());
    CHECK(code == 3);
    CHECK_MESSAGE(out.find("missing access token:") != std::string::npos, out);
    CHECK_MESSAGE(out.find("invalid_client") != std::string::npos, out);
    // Only one of the two options: a usage error.
    std::tie(code, out) = run("alerts --server " + env().fhir->base_url() + " --smart-client-id x");
    CHECK(code == 2);
    CHECK(out.find("--smart-client-id and --smart-key go together") != std::string::npos);
}

TEST_CASE("poll --backfill bulk reads the export with the SMART token (requiresAccessToken)") {
    const std::string bin = CALCALERT_BINARY;
    const std::string state = (env().dir / "backfill.sqlite").string();
    const std::string smart = " --server " + env().fhir->base_url() + " --smart-client-id " + kClient + " --smart-key " +
                              (env().dir / "key.pem").string();
    auto [code, out] = test::run_shell(bin + " poll --once --backfill bulk --state " + state + smart);
    CHECK_MESSAGE(code == 0, out);
    CHECK_MESSAGE(out.find("backfill: Bulk Data export as of ") != std::string::npos, out);
    // Without a token the kick-off is refused: a clear error, exit 3.
    std::tie(code, out) = test::run_shell(bin + " poll --once --backfill bulk --state " + state + " --server " + env().fhir->base_url());
    CHECK(code == 3);
    CHECK_MESSAGE(out.find("HTTP 401") != std::string::npos, out);
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(state + suffix);
}

TEST_CASE("serve reads a missing prefetch with its own SMART credentials for a registered fhirServer") {
    // A patient with a finding, written with a token of the service's client.
    fhir::FhirClient writer(client_with(std::make_shared<auth::SmartBackendServices>(smart_options(env().key))));
    REQUIRE(writer.put("Patient/smart-pv", R"({"resourceType":"Patient","id":"smart-pv"})").status / 100 == 2);
    for (const auto& [code, value] : {std::pair<const char*, double>{"17861-6", 11.2}, {"2777-1", 7.4}})
        REQUIRE(writer.post("Observation", std::string(R"({"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":")") +
                                                code + R"("}]},"subject":{"reference":"Patient/smart-pv"},"effectiveDateTime":"2026-11-30T08:00:00Z",)"
                                                R"("valueQuantity":{"value":)" + std::to_string(value) +
                                                R"(,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}})")
                    .status == 201);

    const std::string base = env().fhir->base_url();
    auto serve_with = [&](const std::string& name, const std::string& auth) {
        const fs::path cfg = env().dir / name;
        std::ofstream(cfg) << R"({"insecure_dev":true,"bind_address":"127.0.0.1","state_file":")" << (env().dir / (name + ".sqlite")).string()
                           << R"(","fhir_servers":[")" << base << "\"]" << auth << "}";
        return cfg;
    };
    const std::string own = R"(,"fhir_server_auth":[{"server":")" + base + R"(","smart":{"client_id":")" + kClient +
                            R"(","key_file":")" + (env().dir / "key.pem").string() + R"("}}])";
    const std::string call = R"({"hook":"patient-view","hookInstance":"i-1","fhirServer":")" + base +
                             R"(","context":{"patientId":"smart-pv","userId":"Practitioner/1"}})";
    const fs::path body = env().dir / "call.json";
    std::ofstream(body) << call;
    auto call_service = [&](const fs::path& cfg) {
        // serve on a free port; its first stdout line names it. The call, then SIGTERM.
        const std::string script = "set -e; " + std::string(CALCALERT_BINARY) + " serve --config " + cfg.string() +
                                   " --port 0 > " + cfg.string() + ".out 2>/dev/null & pid=$!; "
                                   "for i in $(seq 100); do grep -q listening " + cfg.string() + ".out 2>/dev/null && break; sleep 0.1; done; "
                                   "port=$(sed -n 's/^listening http:\\/\\/127.0.0.1:\\([0-9]*\\).*/\\1/p' " + cfg.string() + ".out); "
                                   "curl -s -H 'Content-Type: application/json' --data-binary @" + body.string() +
                                   " http://127.0.0.1:$port/cds-services/calcalert-patient-view; kill $pid; wait $pid || true";
        return test::run_shell(script);
    };
    auto [code, out] = call_service(serve_with("own.json", own));
    CHECK_MESSAGE(code == 0, out);
    CHECK_MESSAGE(out.find("\"cards\"") != std::string::npos, out);
    CHECK_MESSAGE(out.find("metastatic-calcification-risk") != std::string::npos, out);
    // Without credentials of its own (and no fhirAuthorization in the call), the server refuses the
    // service's reads: no card from nothing, an error that says why.
    std::tie(code, out) = call_service(serve_with("none.json", ""));
    CHECK_MESSAGE(out.find("metastatic-calcification-risk") == std::string::npos, out);
    CHECK_MESSAGE(out.find("401") != std::string::npos, out);
    // Credentials for a server that is not registered are a configuration error.
    std::ofstream(env().dir / "bad.json") << R"({"insecure_dev":true,"fhir_servers":[")" << base
                                          << R"("],"fhir_server_auth":[{"server":"https://elsewhere.example.org/fhir","token_file":"t"}]})";
    std::tie(code, out) = test::run_shell(std::string(CALCALERT_BINARY) + " serve --config " + (env().dir / "bad.json").string());
    CHECK(code == 4);
    CHECK_MESSAGE(out.find("$.fhir_server_auth[0].server: https://elsewhere.example.org/fhir is not one of fhir_servers") != std::string::npos, out);
}
