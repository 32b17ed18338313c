// poll::assess: what `calcalert doctor` says of a server, from its CapabilityStatement, SMART
// configuration and token grant. One row per decision.
#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <vector>

#include <rapidjson/document.h>

#include "adapters/poll/server_check.hpp"

using namespace calcalert::poll;

namespace {

// A CapabilityStatement that offers everything calcalert needs; `edit` takes things away.
std::string capability(const std::function<void(std::string&)>& edit = {}) {
    std::string s = R"({"resourceType":"CapabilityStatement","fhirVersion":"4.0.1","rest":[{"mode":"server",
      "resource":[
        {"type":"Observation","searchParam":[{"name":"code"},{"name":"patient"},{"name":"date"},{"name":"_lastUpdated"},{"name":"combo-code"}]},
        {"type":"Condition","searchParam":[{"name":"patient"},{"name":"_lastUpdated"}]},
        {"type":"DetectedIssue","interaction":[{"code":"create"},{"code":"update"},{"code":"search-type"}],
         "conditionalCreate":true,"versioning":"versioned-update"},
        {"type":"Patient","operation":[{"name":"export"}]}],
      "interaction":[{"code":"transaction"},{"code":"batch"}]}]})";
    if (edit) edit(s);
    return s;
}

void replace(std::string& s, const std::string& from, const std::string& to) {
    const auto at = s.find(from);
    REQUIRE_MESSAGE(at != std::string::npos, from);
    s.replace(at, from.size(), to);
}

Verdict verdict_of(const std::vector<Check>& checks, const std::string& what) {
    for (const auto& c : checks)
        if (c.what == what) return c.verdict;
    FAIL("no check " << what);
    return Verdict::missing;
}

}  // namespace

TEST_CASE("assess: one row per thing calcalert needs of a server") {
    struct Row {
        const char* name;
        std::function<void(std::string&)> edit;
        const char* check;
        Verdict verdict;
    };
    const std::vector<Row> rows = {
        {"everything offered", {}, "FHIR R4", Verdict::ok},
        {"STU3", [](std::string& s) { replace(s, "4.0.1", "3.0.2"); }, "FHIR R4", Verdict::missing},
        {"no _lastUpdated on Observation", [](std::string& s) { replace(s, R"({"name":"_lastUpdated"},{"name":"combo-code"})", R"({"name":"combo-code"})"); },
         "Observation change feed (_lastUpdated)", Verdict::missing},
        {"_lastUpdated declared for every type (rest.searchParam)",
         [](std::string& s) {
             replace(s, R"({"name":"_lastUpdated"},{"name":"combo-code"})", R"({"name":"combo-code"})");
             replace(s, R"("interaction":[{"code":"transaction"})", R"("searchParam":[{"name":"_lastUpdated"}],"interaction":[{"code":"transaction"})");
         },
         "Observation change feed (_lastUpdated)", Verdict::ok},
        {"subject instead of patient", [](std::string& s) { replace(s, R"({"name":"code"},{"name":"patient"})", R"({"name":"code"},{"name":"subject"})"); },
         "Observation search by code, patient and date", Verdict::ok},
        {"Observation lists no search parameters at all",
         [](std::string& s) { replace(s, R"(,"searchParam":[{"name":"code"},{"name":"patient"},{"name":"date"},{"name":"_lastUpdated"},{"name":"combo-code"}])", ""); },
         "Observation search by code, patient and date", Verdict::gap},
        {"no Condition resource", [](std::string& s) { replace(s, R"({"type":"Condition",)", R"({"type":"Encounter",)"); },
         "Condition search by patient and _lastUpdated", Verdict::missing},
        {"no combo-code: panels read whole", [](std::string& s) { replace(s, R"(,{"name":"combo-code"})", ""); },
         "lab codes in panels and components", Verdict::gap},
        {"DetectedIssue without update", [](std::string& s) { replace(s, R"({"code":"update"},)", ""); },
         "DetectedIssue create, update and search", Verdict::missing},
        {"no conditional create", [](std::string& s) { replace(s, R"("conditionalCreate":true,)", ""); },
         "conditional create (If-None-Exist)", Verdict::gap},
        {"versioning without If-Match", [](std::string& s) { replace(s, "versioned-update", "versioned"); },
         "versioned update (If-Match)", Verdict::gap},
        {"no transaction nor batch", [](std::string& s) { replace(s, R"("interaction":[{"code":"transaction"},{"code":"batch"}])", R"("interaction":[])"); },
         "batch and transaction Bundles", Verdict::gap},
        {"Bulk Data on Patient", {}, "Bulk Data $export", Verdict::ok},
        {"no Bulk Data", [](std::string& s) { replace(s, R"(,"operation":[{"name":"export"}])", ""); }, "Bulk Data $export", Verdict::gap},
    };
    for (const auto& row : rows) {
        CAPTURE(std::string(row.name));
        rapidjson::Document cs;
        cs.Parse(capability(row.edit).c_str());
        REQUIRE_FALSE(cs.HasParseError());
        ServerFacts f;
        f.capability = &cs;
        const auto checks = assess(f);
        CHECK(verdict_of(checks, row.check) == row.verdict);
        CHECK(ready(checks) == std::none_of(checks.begin(), checks.end(), [](const Check& c) { return c.verdict == Verdict::missing; }));
    }
}

TEST_CASE("assess: no CapabilityStatement is not ready; everything offered is") {
    ServerFacts none;
    none.capability_error = "GET http://x/fhir/metadata: HTTP 404";
    CHECK_FALSE(ready(assess(none)));
    CHECK(render(assess(none)).find("missing CapabilityStatement: GET http://x/fhir/metadata: HTTP 404") == 0);

    rapidjson::Document cs;
    cs.Parse(capability().c_str());
    ServerFacts all;
    all.capability = &cs;
    CHECK(ready(assess(all)));
}

TEST_CASE("assess: SMART configuration and the scopes a grant returned") {
    rapidjson::Document cs, smart;
    cs.Parse(capability().c_str());
    struct Row {
        const char* name;
        const char* smart;  // nullptr: none
        const char* scope;  // nullptr: no grant
        const char* auth_error;
        Verdict smart_verdict;
        Verdict token_verdict;
        const char* token_detail;
    };
    const std::vector<Row> rows = {
        {"v2 scopes, everything", R"({"token_endpoint":"https://a/token","token_endpoint_auth_methods_supported":["private_key_jwt"],"token_endpoint_auth_signing_alg_values_supported":["RS384"]})",
         "system/Observation.rs system/Condition.rs system/Procedure.rs system/Patient.r system/DetectedIssue.cruds", "", Verdict::ok, Verdict::ok, ""},
        {"v1 wildcard", R"({"token_endpoint":"https://a/token"})", "system/*.read system/DetectedIssue.write", "", Verdict::ok, Verdict::ok, ""},
        {"v2 without DetectedIssue update", R"({"token_endpoint":"https://a/token"})",
         "system/*.rs system/DetectedIssue.cs", "", Verdict::ok, Verdict::gap, "not granted: system/DetectedIssue.u"},
        {"only client_secret_basic", R"({"token_endpoint":"https://a/token","token_endpoint_auth_methods_supported":["client_secret_basic"]})",
         nullptr, "", Verdict::gap, Verdict::ok, ""},
        {"only ES256", R"({"token_endpoint":"https://a/token","token_endpoint_auth_signing_alg_values_supported":["ES256"]})", nullptr, "",
         Verdict::gap, Verdict::ok, ""},
        {"no SMART; the grant failed", nullptr, nullptr, "invalid_client: unknown key", Verdict::gap, Verdict::missing, "invalid_client"},
    };
    for (const auto& row : rows) {
        CAPTURE(std::string(row.name));
        ServerFacts f;
        f.capability = &cs;
        if (row.smart) {
            smart.Parse(row.smart);
            f.smart = &smart;
        }
        if (row.scope) f.granted_scope = row.scope;
        f.auth = "SMART Backend Services as client c";
        f.auth_error = row.auth_error;
        const auto checks = assess(f);
        CHECK(verdict_of(checks, "SMART Backend Services") == row.smart_verdict);
        const std::string token_check = row.scope ? "access token scopes" : "access token";
        CHECK(verdict_of(checks, token_check) == row.token_verdict);
        if (*row.token_detail) CHECK(render(checks).find(row.token_detail) != std::string::npos);
    }
}
