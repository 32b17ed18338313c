#include <doctest/doctest.h>

#include <set>
#include <sstream>

#include <rapidjson/document.h>

#include "adapters/cds_hooks/service.hpp"
#include "cds_test_support.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/order_facts.hpp"
#include "test_support.hpp"

using namespace calcalert;
using namespace calcalert::cds;

namespace {

const std::string kCohort = std::string(CALCALERT_TEST_DIR) + "/../examples/cohort/cohort.json";
const std::string kFhir = "https://ehr.example.org/fhir";

const mappings::Medications& medications() {
    static const auto m = mappings::Medications::load(std::string(CALCALERT_TEST_DIR) + "/../mappings/data");
    return m;
}

std::vector<std::string> lab_tokens() { return lab_code_tokens(std::string(CALCALERT_TEST_DIR) + "/../mappings/data/lab-codes.tsv"); }

// A FHIR server in memory: query prefix -> pages (JSON texts).
struct FakeFhir {
    std::map<std::string, std::vector<std::string>> pages;
    std::vector<std::string> queries;
    std::vector<std::string> tokens;
    std::vector<std::chrono::steady_clock::time_point> end_by;  // the deadline each source was made with
    bool fail = false;
};

class FakeSource : public FhirSource {
public:
    explicit FakeSource(FakeFhir& f) : f_(f) {}
    void fetch(const std::string& query, const std::function<void(const rapidjson::Value&)>& on_page) override {
        f_.queries.push_back(query);
        if (f_.fail) throw std::runtime_error("connection refused");
        for (const auto& [prefix, pages] : f_.pages)
            if (query.rfind(prefix, 0) == 0)
                for (const auto& p : pages) {
                    rapidjson::Document d;
                    d.Parse(p.c_str());
                    on_page(d);
                }
    }

private:
    FakeFhir& f_;
};

struct Fixture {
    ServeConfig config;
    std::unique_ptr<state::StateStore> store = state::open_sqlite_store(":memory:");
    Metrics metrics;
    FakeFhir fhir;
    std::unique_ptr<CdsService> service;
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);

    explicit Fixture(OutcomePolicy policy = OutcomePolicy::fail) {
        config.fhir_servers = {kFhir};
        config.prefetch_outcome_policy = policy;
        service = std::make_unique<CdsService>(config, test::terminology(), test::catalog(), *store, metrics,
                                               [this](const std::string&, const std::string& token,
                                                      std::chrono::steady_clock::time_point end_by) {
                                                   fhir.tokens.push_back(token);
                                                   fhir.end_by.push_back(end_by);
                                                   return std::make_unique<FakeSource>(fhir);
                                               },
                                               lab_tokens(), &medications());
    }
    HttpReply call(const std::string& body, const char* id = "calcalert-patient-view") {
        return service->call(*find_service(id), body, test::kNow, deadline);
    }
};

std::vector<std::string> card_rules(const HttpReply& r) {
    rapidjson::Document d;
    d.Parse(r.body.c_str());
    std::vector<std::string> out;
    if (!d.IsObject() || !d.HasMember("cards")) return out;
    for (const auto& c : d["cards"].GetArray()) out.push_back(c["source"]["topic"]["code"].GetString());
    return out;
}

std::string prefetch(const cdstest::PatientData& p) {
    return "{\"observations\":" + p.observations + ",\"conditions\":" + p.conditions + "}";
}

}  // namespace

TEST_CASE("discovery: three services, R4 prefetch templates within the CDS Hooks restrictions") {
    rapidjson::Document d;
    d.Parse(discovery_json(lab_tokens()).c_str());
    REQUIRE(d.IsObject());
    REQUIRE(d["services"].Size() == 3);
    std::set<std::string> hooks;
    for (const auto& s : d["services"].GetArray()) {
        hooks.insert(s["hook"].GetString());
        CHECK(s.HasMember("id"));
        CHECK(s.HasMember("description"));
        for (const auto& p : s["prefetch"].GetObject()) {
            const std::string t = p.value.GetString();
            CHECK(t.find("sort:desc") == std::string::npos);
            CHECK(t.find("{{context.patientId}}") != std::string::npos);
            // Only patient, token (equality) and _sort parameters on a type-level search.
            const auto q = t.find('?');
            REQUIRE(q != std::string::npos);
            std::stringstream ss(t.substr(q + 1));
            std::string param;
            while (std::getline(ss, param, '&')) {
                const std::string name = param.substr(0, param.find('='));
                CHECK_MESSAGE((name == "patient" || name == "code" || name == "_sort"), name);
                if (name == "_sort") CHECK(param == "_sort=-date");
            }
        }
    }
    CHECK(hooks == std::set<std::string>{"patient-view", "order-select", "order-sign"});
}

TEST_CASE("full prefetch gives the patient's cards; the card is the poller's alert") {
    Fixture fx;
    const auto p = cdstest::cohort_patient(kCohort, "margaret-okafor");
    const HttpReply r = fx.call(cdstest::call_body("patient-view", "margaret-okafor", prefetch(p)));
    REQUIRE(r.status == 200);
    CHECK(card_rules(r) == std::vector<std::string>{"calciphylaxis-suspected"});
    CHECK(fx.fhir.queries.empty());
    CHECK(r.body.find(mappings::alert_identifier("Patient/margaret-okafor", "calciphylaxis-suspected")) != std::string::npos);
    const auto ledger = fx.store->alert(kCardLedger, mappings::alert_identifier("Patient/margaret-okafor", "calciphylaxis-suspected"));
    REQUIRE(ledger.has_value());
    CHECK(ledger->rule_id == "calciphylaxis-suspected");
}

TEST_CASE("null keys mean no data; missing keys are fetched with the token; OperationOutcome keys follow the policy") {
    const auto p = cdstest::cohort_patient(kCohort, "harold-kim");
    SUBCASE("null") {
        Fixture fx;
        const HttpReply r = fx.call(cdstest::call_body("patient-view", "harold-kim", R"({"observations":null,"conditions":null})", kFhir, "tok"));
        CHECK(r.status == 200);
        CHECK(card_rules(r).empty());
        CHECK(fx.fhir.queries.empty());
    }
    SUBCASE("missing -> fallback") {
        Fixture fx;
        fx.fhir.pages["Observation?"] = {p.observations};
        fx.fhir.pages["Condition?"] = {p.conditions};
        const HttpReply r = fx.call(cdstest::call_body("patient-view", "harold-kim", "", kFhir, "secret-token"));
        CHECK(r.status == 200);
        CHECK(card_rules(r) == std::vector<std::string>{"metastatic-calcification-risk"});
        REQUIRE(fx.fhir.queries.size() == 2);
        CHECK(fx.fhir.queries[0].find("Condition?patient=harold-kim") == 0);
        CHECK(fx.fhir.queries[1].find("Observation?patient=harold-kim&code=http://loinc.org%7C") == 0);
        CHECK(fx.fhir.tokens == std::vector<std::string>{"secret-token"});
        // The fallback reads get the call's deadline, not a fresh budget per request.
        CHECK(fx.fhir.end_by == std::vector<std::chrono::steady_clock::time_point>{fx.deadline});
    }
    SUBCASE("missing and no fhirServer -> 412") {
        Fixture fx;
        const HttpReply r = fx.call(cdstest::call_body("patient-view", "harold-kim", "{\"conditions\":null}"));
        CHECK(r.status == 412);
        CHECK(r.body.find("OperationOutcome") != std::string::npos);
        CHECK(r.body.find("prefetch.observations") != std::string::npos);
    }
    SUBCASE("fallback failure -> 412") {
        Fixture fx;
        fx.fhir.fail = true;
        CHECK(fx.call(cdstest::call_body("patient-view", "harold-kim", "", kFhir, "t")).status == 412);
    }
    const std::string outcome = R"({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"forbidden"}]})";
    SUBCASE("OperationOutcome, policy fail -> 412") {
        Fixture fx(OutcomePolicy::fail);
        const HttpReply r = fx.call(cdstest::call_body("patient-view", "harold-kim",
                                                       "{\"observations\":" + outcome + ",\"conditions\":" + p.conditions + "}", kFhir, "t"));
        CHECK(r.status == 412);
        CHECK(fx.fhir.queries.empty());
    }
    SUBCASE("OperationOutcome, policy omit -> fetched like a missing key") {
        Fixture fx(OutcomePolicy::omit);
        fx.fhir.pages["Observation?"] = {p.observations};
        const HttpReply r = fx.call(cdstest::call_body("patient-view", "harold-kim",
                                                       "{\"observations\":" + outcome + ",\"conditions\":" + p.conditions + "}", kFhir, "t"));
        CHECK(r.status == 200);
        CHECK(card_rules(r) == std::vector<std::string>{"metastatic-calcification-risk"});
        CHECK(fx.fhir.queries.size() == 1);
        CHECK(fx.metrics.render().find("calcalert_cds_prefetch_total{key=\"observations\",result=\"outcome\"} 1") != std::string::npos);
    }
}

TEST_CASE("malformed requests are 400 with an OperationOutcome; an unregistered fhirServer is 403") {
    Fixture fx;
    const std::vector<std::string> bad = {
        "",
        "[1]",
        "{\"hook\":\"patient-view\"",
        R"({"hookInstance":"x","context":{"patientId":"a"}})",
        R"({"hook":"order-sign","hookInstance":"x","context":{"patientId":"a"}})",
        R"({"hook":"patient-view","context":{"patientId":"a"}})",
        R"({"hook":"patient-view","hookInstance":"x"})",
        R"({"hook":"patient-view","hookInstance":"x","context":{"patientId":7}})",
        R"({"hook":"patient-view","hookInstance":"x","context":{"patientId":"a/../b"}})",
        R"({"hook":"patient-view","hookInstance":"x","context":{"patientId":"a"},"prefetch":[]})",
        R"({"hook":"patient-view","hookInstance":"x","context":{"patientId":"a"},"prefetch":{"observations":"x"}})",
        R"({"hook":"patient-view","hookInstance":"x","context":{"patientId":"a"},"fhirAuthorization":{"access_token":"t","token_type":"Bearer"}})",
        R"({"hook":"patient-view","hookInstance":"x","fhirServer":"https://ehr.example.org/fhir","context":{"patientId":"a"},"fhirAuthorization":{"token_type":"Bearer"}})",
        R"({"hook":"patient-view","hookInstance":"x","fhirServer":"ftp://x","context":{"patientId":"a"}})",
    };
    for (const auto& b : bad) {
        const HttpReply r = fx.call(b);
        CHECK_MESSAGE(r.status == 400, b);
        CHECK(r.body.find("\"resourceType\":\"OperationOutcome\"") != std::string::npos);
    }
    const HttpReply off = fx.call(cdstest::call_body("patient-view", "a", "", "https://attacker.example.net/fhir", "ehr-token"));
    CHECK(off.status == 403);
    CHECK(fx.fhir.queries.empty());
    CHECK(fx.fhir.tokens.empty());
}

TEST_CASE("request bodies go through the untrusted-JSON policy: too deep, invalid UTF-8, numbers out of range are 400") {
    Fixture fx;
    auto diagnostics = [](const HttpReply& r) {
        rapidjson::Document d;
        d.Parse(r.body.c_str());
        REQUIRE(d.IsObject());
        return std::string(d["issue"][0]["diagnostics"].GetString());
    };
    const std::string deep = std::string(120000, '[') + std::string(120000, ']');
    const std::string deep_prefetch =
        cdstest::call_body("patient-view", "a", R"({"observations":{"resourceType":"Bundle","entry":)" + deep + "}}");
    for (const std::string& body : {deep, deep_prefetch}) {
        const HttpReply r = fx.call(body);
        CHECK(r.status == 400);
        CHECK(diagnostics(r).find("nested deeper than 100 levels") != std::string::npos);
    }
    const HttpReply utf8 = fx.call(cdstest::call_body("patient-view", "a\xFF", ""));
    CHECK(utf8.status == 400);
    const HttpReply raw = fx.call(cdstest::call_body("patient-view", std::string("a\xC3\x28"), ""));
    CHECK(raw.status == 400);
    CHECK(diagnostics(raw).find("invalid UTF-8 (byte 0xC3) in a string") != std::string::npos);
    CHECK(diagnostics(raw).find("$.context.patientId") != std::string::npos);
    CHECK(raw.body.find("\xC3\x28") == std::string::npos);
    const HttpReply big = fx.call(cdstest::call_body(
        "patient-view", "a", R"({"observations":{"resourceType":"Observation","valueQuantity":{"value":1e309}}})"));
    CHECK(big.status == 400);
    CHECK(diagnostics(big).find("the number 1e309 is out of range") != std::string::npos);
    const HttpReply nan = fx.call(R"({"hook":"patient-view","hookInstance":"x","context":{"patientId":"a"},"n":NaN})");
    CHECK(nan.status == 400);
    CHECK(diagnostics(nan).find("non-finite") != std::string::npos);
    // A BOM is accepted; feedback bodies follow the same policy.
    CHECK(fx.call("\xEF\xBB\xBF" + cdstest::call_body("patient-view", "a", R"({"observations":null,"conditions":null})")).status == 200);
    const HttpReply fb = fx.service->feedback(*find_service("calcalert-patient-view"), deep, test::kNow);
    CHECK(fb.status == 400);
    CHECK(diagnostics(fb).find("nested deeper than 100 levels") != std::string::npos);
}

TEST_CASE("order hooks: the order rules over draftOrders (as the sandbox sends them) plus critical patient findings") {
    Fixture fx;
    auto draft = [](const std::string& pid, const std::string& id, const std::string& med) {
        return R"({"resourceType":"MedicationRequest","id":")" + id +
               R"(","status":"draft","intent":"order","category":{"text":"x"},"reasonCode":{"text":"y"},)" + med +
               R"(,"subject":{"reference":"Patient/)" + pid + R"("}})";
    };
    const std::string prednisone =
        R"("medicationCodeableConcept":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"763183"}]})";
    const std::string iv_calcium =
        R"("medicationCodeableConcept":{"text":"calcium gluconate 2 g in NS 100 mL"},"dosageInstruction":[{"route":{"coding":[{"system":"http://snomed.info/sct","code":"47625008"}]}}])";
    auto body = [&](const std::string& hook, const std::string& pid, const std::vector<std::string>& orders,
                    const std::string& selections = "") {
        const auto p = cdstest::cohort_patient(kCohort, pid);
        std::string entries;
        for (const auto& o : orders) entries += (entries.empty() ? "" : ",") + std::string("{\"resource\":") + o + "}";
        std::string b = cdstest::call_body(hook, pid, prefetch(p));
        const std::string ctx = "\"draftOrders\":{\"resourceType\":\"Bundle\",\"entry\":[" + entries + "]}," +
                                (selections.empty() ? "" : "\"selections\":" + selections + ",");
        return b.replace(b.find("\"context\":{") + 11, 0, ctx);
    };
    SUBCASE("corticosteroid for a patient with calciphylaxis, at signing") {
        const HttpReply r = fx.call(body("order-sign", "dolores-haines", {draft("dolores-haines", "request-123", prednisone)}),
                                    "calcalert-order-sign");
        REQUIRE(r.status == 200);
        auto rules = card_rules(r);
        std::sort(rules.begin(), rules.end());
        CHECK(rules == std::vector<std::string>{"calciphylaxis-wound-sepsis-risk", "corticosteroid-in-calciphylaxis"});
        CHECK(r.body.find(mappings::alert_identifier("Patient/dolores-haines",
                                                     "corticosteroid-in-calciphylaxis|MedicationRequest/request-123")) !=
              std::string::npos);
    }
    SUBCASE("IV calcium for any patient; a moderate patient finding is not shown at ordering time") {
        const HttpReply r = fx.call(body("order-select", "harold-kim", {draft("harold-kim", "o1", iv_calcium)}),
                                    "calcalert-order-select");
        REQUIRE(r.status == 200);
        CHECK(card_rules(r) == std::vector<std::string>{"iv-calcium-phosphate-extravasation"});
    }
    SUBCASE("order-select: only the selected orders") {
        const HttpReply r = fx.call(body("order-select", "harold-kim",
                                         {draft("harold-kim", "o1", iv_calcium), draft("harold-kim", "o2", iv_calcium)},
                                         R"(["MedicationRequest/o2"])"),
                                    "calcalert-order-select");
        REQUIRE(card_rules(r).size() == 1);
        CHECK(r.body.find("MedicationRequest/o2") != std::string::npos);
    }
    SUBCASE("more than kMaxDraftOrders draft orders is a 400 naming the limit; exactly the limit is evaluated") {
        auto many = [&](std::size_t n) {
            std::vector<std::string> orders;
            for (std::size_t i = 0; i < n; ++i) orders.push_back(draft("harold-kim", "o" + std::to_string(i), iv_calcium));
            return orders;
        };
        for (const char* hook : {"order-sign", "order-select"}) {
            const std::string id = std::string("calcalert-") + hook;
            const HttpReply over = fx.call(body(hook, "harold-kim", many(mappings::kMaxDraftOrders + 1)), id.c_str());
            CHECK(over.status == 400);
            CHECK(over.body.find("\"OperationOutcome\"") != std::string::npos);
            CHECK(over.body.find("too-costly") != std::string::npos);
            CHECK(over.body.find("at most " + std::to_string(mappings::kMaxDraftOrders) + " draft orders per call") !=
                  std::string::npos);
            CHECK(over.body.find("\"cards\"") == std::string::npos);  // none evaluated
        }
        const HttpReply at = fx.call(body("order-sign", "harold-kim", many(mappings::kMaxDraftOrders)), "calcalert-order-sign");
        REQUIRE(at.status == 200);
        CHECK(card_rules(at).size() == mappings::kMaxDraftOrders);
    }
    SUBCASE("order-select with no orders yet (the sandbox's first call)") {
        const HttpReply r = fx.call(body("order-select", "margaret-okafor", {}), "calcalert-order-select");
        CHECK(r.status == 200);
        CHECK(card_rules(r) == std::vector<std::string>{"calciphylaxis-suspected"});
    }
}

TEST_CASE("feedback: overridden suppresses the card for that patient, counted by rule and reason") {
    Fixture fx;
    const auto p = cdstest::cohort_patient(kCohort, "margaret-okafor");
    const std::string body = cdstest::call_body("patient-view", "margaret-okafor", prefetch(p));
    REQUIRE(card_rules(fx.call(body)).size() == 1);
    const std::string uuid = mappings::alert_identifier("Patient/margaret-okafor", "calciphylaxis-suspected");
    const std::string fb = R"({"feedback":[{"card":")" + uuid +
                           R"(","outcome":"overridden","overrideReason":{"reason":{"system":"urn:calcalert:override-reason","code":"already-addressed"},"userComment":"biopsy booked"},"outcomeTimestamp":"2026-11-25T12:00:00Z"}]})";
    const HttpReply r = fx.service->feedback(*find_service("calcalert-patient-view"), fb, test::kNow);
    CHECK(r.status == 200);
    CHECK(card_rules(fx.call(body)).empty());
    const auto stored = fx.store->feedback("Patient/margaret-okafor", "calciphylaxis-suspected");
    REQUIRE(stored.size() == 1);
    CHECK(stored[0].override_reason == "already-addressed");
    CHECK(fx.metrics.render().find(
              "calcalert_cds_overrides_total{rule=\"calciphylaxis-suspected\",reason=\"already-addressed\"} 1") != std::string::npos);
    // After the suppression period the card is back.
    const auto later = test::kNow + fx.config.override_suppression_hours * 3600 + 1;
    CHECK(card_rules(fx.service->call(*find_service("calcalert-patient-view"), body, later, fx.deadline)).size() == 1);
    // Malformed feedback.
    for (const std::string& bad : std::vector<std::string>{"{}", R"({"feedback":[]})", R"({"feedback":[{"card":"x","outcome":"maybe","outcomeTimestamp":"2026-11-25T12:00:00Z"}]})",
                                  R"({"feedback":[{"card":"x","outcome":"accepted"}]})"})
        CHECK(fx.service->feedback(*find_service("calcalert-patient-view"), bad, test::kNow).status == 400);
}
