#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <set>
#include <sstream>

#include <rapidjson/document.h>

#include "adapters/cds_hooks/service.hpp"
#include "cds_test_support.hpp"
#include "fhir/client.hpp"
#include "fhir/json_parse.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/order_facts.hpp"
#include "test_support.hpp"

using namespace calcalert;
using namespace calcalert::cds;

namespace {

const std::string kCohort = std::string(CALCALERT_TEST_DIR) + "/../examples/cohort/cohort.json";
const std::string kFhir = "https://ehr.example.org/fhir";
const std::string kIssA = "https://ehr-a.example.org";
const std::string kIssB = "https://ehr-b.example.org";

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
    std::set<std::string> not_found;  // queries answered with HTTP 404
};

class FakeSource : public FhirSource {
public:
    explicit FakeSource(FakeFhir& f) : f_(f) {}
    void fetch(const std::string& query, const std::function<void(const rapidjson::Value&)>& on_page) override {
        f_.queries.push_back(query);
        if (f_.fail) throw std::runtime_error("connection refused");
        if (f_.not_found.count(query)) throw fhir::FhirError("GET " + query + ": HTTP 404", 404);
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

    explicit Fixture(OutcomePolicy policy = OutcomePolicy::fail) : Fixture([policy](ServeConfig& c) {
        c.prefetch_outcome_policy = policy;
    }) {}
    explicit Fixture(const std::function<void(ServeConfig&)>& tweak) {
        config.fhir_servers = {kFhir};
        tweak(config);
        service = std::make_unique<CdsService>(config, test::terminology(), test::catalog(), *store, metrics,
                                               [this](const std::string&, const std::string& token,
                                                      std::chrono::steady_clock::time_point end_by) {
                                                   fhir.tokens.push_back(token);
                                                   fhir.end_by.push_back(end_by);
                                                   return std::make_unique<FakeSource>(fhir);
                                               },
                                               lab_tokens(), &medications());
    }
    HttpReply call(const std::string& body, const char* id = "calcalert-patient-view", const std::string& issuer = kIssA,
                   std::int64_t now = test::kNow) {
        return service->call(*find_service(id), body, now, issuer, deadline);
    }
    HttpReply feedback(const std::string& body, const std::string& issuer = kIssA,
                       const char* id = "calcalert-patient-view", std::int64_t now = test::kNow) {
        return service->feedback(*find_service(id), body, now, issuer);
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

std::string prefetch(const cdstest::PatientData& p) { return p.prefetch(); }

}  // namespace

TEST_CASE("discovery: three services, R4 prefetch templates within the CDS Hooks restrictions") {
    rapidjson::Document d;
    d.Parse(discovery_json(lab_tokens(), test::terminology().procedure_tokens()).c_str());
    REQUIRE(d.IsObject());
    REQUIRE(d["services"].Size() == 3);
    std::set<std::string> hooks;
    for (const auto& s : d["services"].GetArray()) {
        hooks.insert(s["hook"].GetString());
        CHECK(s.HasMember("id"));
        CHECK(s.HasMember("description"));
        std::set<std::string> keys;
        for (const auto& p : s["prefetch"].GetObject()) {
            keys.insert(p.name.GetString());
            const std::string t = p.value.GetString();
            CHECK(t.find("sort:desc") == std::string::npos);
            CHECK(t.find("{{context.patientId}}") != std::string::npos);
            // The instance read of the patient; else only patient, token (equality) and _sort parameters
            // on a type-level search.
            if (t == "Patient/{{context.patientId}}") continue;
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
        CHECK(keys == std::set<std::string>{"conditions", "observations", "patient", "procedures"});
        CHECK(std::string(s["prefetch"]["procedures"].GetString()) ==
              "Procedure?patient={{context.patientId}}&code=http://snomed.info/sct|108241001,http://snomed.info/sct|238318009,"
              "http://snomed.info/sct|265764009,http://snomed.info/sct|302497006,http://snomed.info/sct|71192002&_sort=-date");
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
    const auto issued = fx.store->issued_card(kIssA, "calcalert-patient-view",
                                              mappings::alert_identifier("Patient/margaret-okafor", "calciphylaxis-suspected"));
    REQUIRE(issued.has_value());
    CHECK(issued->rule_id == "calciphylaxis-suspected");
    CHECK(issued->patient == "Patient/margaret-okafor");
    CHECK(issued->severity == "high");
    CHECK_FALSE(issued->evidence_hash.empty());
    CHECK_FALSE(fx.store->issued_card(kIssB, "calcalert-patient-view", issued->card_uuid));
}

TEST_CASE("null keys mean no data; missing keys are fetched with the token; OperationOutcome keys follow the policy") {
    const auto p = cdstest::cohort_patient(kCohort, "harold-kim");
    SUBCASE("null") {
        Fixture fx;
        const HttpReply r = fx.call(cdstest::call_body("patient-view", "harold-kim", cdstest::null_prefetch(), kFhir, "tok"));
        CHECK(r.status == 200);
        CHECK(card_rules(r).empty());
        CHECK(fx.fhir.queries.empty());
    }
    SUBCASE("missing -> fallback") {
        Fixture fx;
        fx.fhir.pages["Observation?"] = {p.observations};
        fx.fhir.pages["Condition?"] = {p.conditions};
        fx.fhir.pages["Procedure?"] = {p.procedures};
        fx.fhir.pages["Patient/"] = {p.patient};
        const HttpReply r = fx.call(cdstest::call_body("patient-view", "harold-kim", "", kFhir, "secret-token"));
        CHECK(r.status == 200);
        CHECK(card_rules(r) == std::vector<std::string>{"metastatic-calcification-risk"});
        REQUIRE(fx.fhir.queries.size() == 4);
        CHECK(fx.fhir.queries[0].find("Condition?patient=harold-kim") == 0);
        CHECK(fx.fhir.queries[1].find("Observation?patient=harold-kim&code=http://loinc.org%7C") == 0);
        CHECK(fx.fhir.queries[2] == "Patient/harold-kim");
        CHECK(fx.fhir.queries[3].find("Procedure?patient=harold-kim&code=http://snomed.info/sct%7C") == 0);
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
        const HttpReply r = fx.call(cdstest::call_body(
            "patient-view", "harold-kim", cdstest::null_prefetch({{"observations", outcome}, {"conditions", p.conditions}}), kFhir, "t"));
        CHECK(r.status == 412);
        CHECK(fx.fhir.queries.empty());
    }
    SUBCASE("OperationOutcome, policy omit -> fetched like a missing key") {
        Fixture fx(OutcomePolicy::omit);
        fx.fhir.pages["Observation?"] = {p.observations};
        const HttpReply r = fx.call(cdstest::call_body(
            "patient-view", "harold-kim", cdstest::null_prefetch({{"observations", outcome}, {"conditions", p.conditions}}), kFhir, "t"));
        CHECK(r.status == 200);
        CHECK(card_rules(r) == std::vector<std::string>{"metastatic-calcification-risk"});
        CHECK(fx.fhir.queries.size() == 1);
        CHECK(fx.metrics.render().find("calcalert_cds_prefetch_total{key=\"observations\",result=\"outcome\"} 1") != std::string::npos);
    }
}

TEST_CASE("procedures and patient: a dialysis Procedure makes ESRD, a deceased Patient gets no card, both read when missing") {
    // ESRD only by a hemodialysis session 5 days ago; a skin ulcer and PTH 650 pg/mL (above 9 × 65 = 585).
    const std::string pid = "dialysis-only";
    const std::string obs = R"({"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Observation","id":"d-pth",
        "status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2731-8"}]},"subject":{"reference":"Patient/dialysis-only"},
        "effectiveDateTime":"2026-11-20T08:00:00Z","valueQuantity":{"value":650,"unit":"pg/mL","system":"http://unitsofmeasure.org","code":"pg/mL"}}}]})";
    const std::string cond = R"({"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Condition","id":"d-ulcer",
        "clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},
        "code":{"coding":[{"system":"http://snomed.info/sct","code":"46742003"}]},"subject":{"reference":"Patient/dialysis-only"}}}]})";
    const std::string proc = R"({"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Procedure","id":"d-hd",
        "status":"completed","code":{"coding":[{"system":"http://snomed.info/sct","code":"302497006","display":"Hemodialysis"}]},
        "subject":{"reference":"Patient/dialysis-only"},"performedPeriod":{"start":"2026-11-20T08:00:00Z","end":"2026-11-20T12:00:00Z"}}}]})";
    const std::string alive = R"({"resourceType":"Patient","id":"dialysis-only"})";
    const std::string deceased = R"({"resourceType":"Patient","id":"dialysis-only","deceasedDateTime":"2026-11-22T03:00:00Z"})";
    auto all = [&](const std::string& procedures, const std::string& patient) {
        return cdstest::null_prefetch({{"observations", obs}, {"conditions", cond}, {"procedures", procedures}, {"patient", patient}});
    };
    SUBCASE("prefetched") {
        Fixture fx;
        CHECK(card_rules(fx.call(cdstest::call_body("patient-view", pid, all(proc, alive)))) ==
              std::vector<std::string>{"calciphylaxis-suspected"});
        CHECK(card_rules(fx.call(cdstest::call_body("patient-view", pid, all("null", alive)))).empty());
        CHECK(card_rules(fx.call(cdstest::call_body("patient-view", pid, all(proc, deceased)))).empty());
        CHECK(fx.fhir.queries.empty());
    }
    SUBCASE("missing keys are read from fhirServer") {
        Fixture fx;
        fx.fhir.pages["Procedure?patient=dialysis-only&code="] = {proc};
        fx.fhir.pages["Patient/dialysis-only"] = {alive};
        const std::string partial = "{\"observations\":" + obs + ",\"conditions\":" + cond + "}";
        const HttpReply r = fx.call(cdstest::call_body("patient-view", pid, partial, kFhir, "t"));
        CHECK(card_rules(r) == std::vector<std::string>{"calciphylaxis-suspected"});
        REQUIRE(fx.fhir.queries.size() == 2);
        CHECK(fx.fhir.queries[0] == "Patient/dialysis-only");
        CHECK(fx.fhir.queries[1].find("Procedure?patient=dialysis-only&code=http://snomed.info/sct%7C108241001,") == 0);
        CHECK(fx.metrics.render().find("calcalert_cds_prefetch_total{key=\"procedures\",result=\"fallback\"} 1") != std::string::npos);
        CHECK(fx.metrics.render().find("calcalert_cds_prefetch_total{key=\"patient\",result=\"fallback\"} 1") != std::string::npos);
        fx.fhir.pages["Patient/dialysis-only"] = {deceased};
        CHECK(card_rules(fx.call(cdstest::call_body("patient-view", pid, partial, kFhir, "t"))).empty());
    }
    SUBCASE("a Patient the server does not have (404) is no data; other failures are 412") {
        Fixture fx;
        fx.fhir.pages["Procedure?"] = {proc};
        fx.fhir.not_found = {"Patient/dialysis-only"};
        const std::string partial = "{\"observations\":" + obs + ",\"conditions\":" + cond + "}";
        CHECK(card_rules(fx.call(cdstest::call_body("patient-view", pid, partial, kFhir, "t"))) ==
              std::vector<std::string>{"calciphylaxis-suspected"});
        fx.fhir.not_found = {fx.fhir.queries.back()};  // the Procedure search
        CHECK(fx.call(cdstest::call_body("patient-view", pid, partial, kFhir, "t")).status == 412);
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
    CHECK(fx.call("\xEF\xBB\xBF" + cdstest::call_body("patient-view", "a", cdstest::null_prefetch())).status == 200);
    const HttpReply fb = fx.feedback(deep);
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

// --- feedback: bound to the issuer and the exact card; critical cards; closed metric labels ---

namespace {

const char* const kPV = "calcalert-patient-view";
const std::string kMargaret = "margaret-okafor";  // calciphylaxis-suspected: HIGH, a critical card
const std::string kHarold = "harold-kim";         // metastatic-calcification-risk: MODERATE

std::string patient_body(const std::string& pid, const std::function<std::string(std::string)>& edit = {}) {
    const auto p = cdstest::cohort_patient(kCohort, pid);
    const std::string b = cdstest::call_body("patient-view", pid, prefetch(p));
    return edit ? edit(b) : b;
}

std::string uuid_of(const std::string& pid, const std::string& rule) { return mappings::alert_identifier("Patient/" + pid, rule); }

// One feedback entry; reason_json is the overrideReason member's value ("" = no overrideReason).
std::string entry(const std::string& card, const std::string& outcome, const std::string& reason_json = "") {
    std::string e = R"({"card":")" + card + R"(","outcome":")" + outcome + "\"";
    if (!reason_json.empty()) e += ",\"overrideReason\":" + reason_json;
    return e + R"(,"outcomeTimestamp":"2026-11-25T12:00:00Z"})";
}
std::string reason(const std::string& code) {
    return R"({"reason":{"system":"urn:calcalert:override-reason","code":")" + code + R"("},"userComment":"seen"})";
}
std::string feedback_of(const std::vector<std::string>& entries) {
    std::string s;
    for (const auto& e : entries) s += (s.empty() ? "" : ",") + e;
    return "{\"feedback\":[" + s + "]}";
}

std::string med_order(const std::string& pid, const std::string& id) {
    return R"({"resourceType":"MedicationRequest","id":")" + id +
           R"(","status":"draft","intent":"order","medicationCodeableConcept":{"text":"calcium gluconate 2 g in NS 100 mL"},"dosageInstruction":[{"route":{"coding":[{"system":"http://snomed.info/sct","code":"47625008"}]}}],"subject":{"reference":"Patient/)" +
           pid + R"("}})";
}
std::string order_sign_body(const std::string& pid, const std::vector<std::string>& order_ids) {
    std::string entries;
    for (const auto& id : order_ids) entries += (entries.empty() ? "" : ",") + std::string("{\"resource\":") + med_order(pid, id) + "}";
    std::string b = cdstest::call_body("order-sign", pid, prefetch(cdstest::cohort_patient(kCohort, pid)));
    return b.replace(b.find("\"context\":{") + 11, 0, "\"draftOrders\":{\"resourceType\":\"Bundle\",\"entry\":[" + entries + "]},");
}
std::vector<std::string> card_orders(const HttpReply& r) {
    rapidjson::Document d;
    d.Parse(r.body.c_str());
    std::vector<std::string> out;
    for (const auto& c : d["cards"].GetArray()) {
        const auto& ext = c["extension"][mappings::kCardExtension];
        if (ext.HasMember("order")) out.push_back(ext["order"].IsString() ? ext["order"].GetString() : "?");
    }
    std::sort(out.begin(), out.end());
    return out;
}

// The /metrics lines of one metric (its samples, not HELP/TYPE).
std::vector<std::string> samples(const std::string& text, const std::string& metric) {
    std::vector<std::string> out;
    std::stringstream ss(text);
    std::string line;
    while (std::getline(ss, line))
        if (line.rfind(metric + "{", 0) == 0 || line.rfind(metric + " ", 0) == 0) out.push_back(line);
    return out;
}

}  // namespace

TEST_CASE("feedback: an override hides the card for the same issuer and patient; counted by rule and reason") {
    Fixture fx;
    const std::string body = patient_body(kMargaret);
    REQUIRE(card_rules(fx.call(body)) == std::vector<std::string>{"calciphylaxis-suspected"});
    const std::string uuid = uuid_of(kMargaret, "calciphylaxis-suspected");
    CHECK(fx.feedback(feedback_of({entry(uuid, "overridden", reason("already-addressed"))})).status == 200);
    CHECK(card_rules(fx.call(body)).empty());
    const auto stored = fx.store->feedback("Patient/margaret-okafor", "calciphylaxis-suspected");
    REQUIRE(stored.size() == 1);
    CHECK(stored[0].override_reason == "already-addressed");
    CHECK(stored[0].issuer == kIssA);
    CHECK(stored[0].evidence_hash == fx.store->issued_card(kIssA, kPV, uuid)->evidence_hash);
    CHECK(fx.metrics.render().find(
              "calcalert_cds_overrides_total{rule=\"calciphylaxis-suspected\",reason=\"already-addressed\"} 1") != std::string::npos);
    // Another patient is not affected.
    CHECK(card_rules(fx.call(patient_body(kHarold))) == std::vector<std::string>{"metastatic-calcification-risk"});
    // Malformed feedback.
    for (const std::string& bad : std::vector<std::string>{"{}", R"({"feedback":[]})", R"({"feedback":[{"card":"x","outcome":"maybe","outcomeTimestamp":"2026-11-25T12:00:00Z"}]})",
                                  R"({"feedback":[{"card":"x","outcome":"accepted"}]})"})
        CHECK(fx.feedback(bad).status == 400);
}

TEST_CASE("feedback is bound to the issuer that received the card: issuer B cannot hide issuer A's card") {
    struct Case {
        const char* name;
        std::string patient, rule;
        std::string reason_json;
    };
    const std::vector<Case> cases = {
        {"critical card, coded reason", kMargaret, "calciphylaxis-suspected", reason("already-addressed")},
        {"non-critical card, coded reason", kHarold, "metastatic-calcification-risk", reason("not-clinically-relevant")},
        {"non-critical card, no reason", kHarold, "metastatic-calcification-risk", ""},
    };
    for (const auto& c : cases) {
        CAPTURE(c.name);
        const std::string body = patient_body(c.patient);
        const std::string fb = feedback_of({entry(uuid_of(c.patient, c.rule), "overridden", c.reason_json)});
        {
            // B overrides a card only A was issued: ignored (200), nothing stored, A's card stays.
            Fixture fx;
            REQUIRE(card_rules(fx.call(body, kPV, kIssA)) == std::vector<std::string>{c.rule});
            CHECK(fx.feedback(fb, kIssB).status == 200);
            CHECK(fx.store->feedback("Patient/" + c.patient, c.rule).empty());
            CHECK(card_rules(fx.call(body, kPV, kIssA)) == std::vector<std::string>{c.rule});
            CHECK(card_rules(fx.call(body, kPV, kIssB)) == std::vector<std::string>{c.rule});
            CHECK(samples(fx.metrics.render(), "calcalert_cds_feedback_ignored_total") ==
                  std::vector<std::string>{"calcalert_cds_feedback_ignored_total 1"});
            CHECK(samples(fx.metrics.render(), "calcalert_cds_overrides_total").empty());
        }
        {
            // Both were issued the card; B's override hides it for B only.
            Fixture fx;
            REQUIRE(card_rules(fx.call(body, kPV, kIssA)).size() == 1);
            REQUIRE(card_rules(fx.call(body, kPV, kIssB)).size() == 1);
            CHECK(fx.feedback(fb, kIssB).status == 200);
            CHECK(card_rules(fx.call(body, kPV, kIssB)).empty());
            CHECK(card_rules(fx.call(body, kPV, kIssA)) == std::vector<std::string>{c.rule});
            // A's own override then hides it for A too.
            CHECK(fx.feedback(fb, kIssA).status == 200);
            CHECK(card_rules(fx.call(body, kPV, kIssA)).empty());
        }
    }
    SUBCASE("feedback sent to another service's endpoint than the one that returned the card is ignored") {
        Fixture fx;
        const std::string body = patient_body(kHarold);
        REQUIRE(card_rules(fx.call(body)).size() == 1);
        const std::string fb = feedback_of({entry(uuid_of(kHarold, "metastatic-calcification-risk"), "overridden")});
        CHECK(fx.feedback(fb, kIssA, "calcalert-order-sign").status == 200);
        CHECK(card_rules(fx.call(body)).size() == 1);
    }
    SUBCASE("a card uuid never issued at all is ignored") {
        Fixture fx;
        CHECK(fx.feedback(feedback_of({entry("0c3f1e6a-0000-5000-8000-000000000000", "overridden", reason("data-incorrect"))})).status ==
              200);
        CHECK(card_rules(fx.call(patient_body(kHarold))).size() == 1);
    }
}

TEST_CASE("an override of one order's card does not hide another order's card") {
    Fixture fx;
    const char* sign = "calcalert-order-sign";
    REQUIRE(card_orders(fx.call(order_sign_body(kHarold, {"o1"}), sign)) == std::vector<std::string>{"MedicationRequest/o1"});
    const std::string card_o1 = uuid_of(kHarold, "iv-calcium-phosphate-extravasation|MedicationRequest/o1");
    CHECK(fx.feedback(feedback_of({entry(card_o1, "overridden", reason("already-addressed"))}), kIssA, sign).status == 200);
    CHECK(card_orders(fx.call(order_sign_body(kHarold, {"o1"}), sign)).empty());
    CHECK(card_orders(fx.call(order_sign_body(kHarold, {"o1", "o2"}), sign)) == std::vector<std::string>{"MedicationRequest/o2"});
    CHECK(card_orders(fx.call(order_sign_body(kHarold, {"o2"}), sign)) == std::vector<std::string>{"MedicationRequest/o2"});
    CHECK(card_orders(fx.call(order_sign_body(kHarold, {"o3", "o1"}), sign)) == std::vector<std::string>{"MedicationRequest/o3"});
    // The patient-rule cards of the same patient are not affected either (patient-view).
    CHECK(card_rules(fx.call(patient_body(kHarold))) == std::vector<std::string>{"metastatic-calcification-risk"});
}

TEST_CASE("an override stops hiding the card as soon as the evidence behind the finding changes") {
    struct Case {
        const char* name;
        std::string patient, rule;
        std::function<std::string(std::string)> new_evidence;
    };
    const std::vector<Case> cases = {
        // A corrected phosphate result: Ca×P 10.2 × 7.3 still fires, with other evidence.
        {"non-critical: a changed lab value", kHarold, "metastatic-calcification-risk",
         [](std::string b) { return cdstest::replace_all(b, "\"value\":7.1", "\"value\":7.3"); }},
        // A new lab resource in place of the latest phosphate.
        {"critical: a new lab", kMargaret, "calciphylaxis-suspected",
         [](std::string b) { return cdstest::replace_all(b, "margaret-okafor-p2", "margaret-okafor-p3"); }},
    };
    for (const auto& c : cases) {
        CAPTURE(c.name);
        Fixture fx;
        const std::string before = patient_body(c.patient);
        const std::string after = patient_body(c.patient, c.new_evidence);
        REQUIRE(before != after);
        REQUIRE(card_rules(fx.call(before)) == std::vector<std::string>{c.rule});
        const std::string hash_before = fx.store->issued_card(kIssA, kPV, uuid_of(c.patient, c.rule))->evidence_hash;
        CHECK(fx.feedback(feedback_of({entry(uuid_of(c.patient, c.rule), "overridden", reason("already-addressed"))})).status == 200);
        CHECK(card_rules(fx.call(before)).empty());
        // One hour later, the evidence differs: the card is back, with the same uuid and a new hash.
        const HttpReply r = fx.call(after, kPV, kIssA, test::kNow + 3600);
        CHECK(card_rules(r) == std::vector<std::string>{c.rule});
        CHECK(r.body.find(uuid_of(c.patient, c.rule)) != std::string::npos);
        CHECK(fx.store->issued_card(kIssA, kPV, uuid_of(c.patient, c.rule))->evidence_hash != hash_before);
    }
}

TEST_CASE("a critical card is hidden only by an override with a coded reason, and only for critical_override_hours") {
    const std::string uuid = uuid_of(kMargaret, "calciphylaxis-suspected");
    SUBCASE("no reason, an empty overrideReason or only a comment: the critical card stays") {
        for (const std::string& r : {std::string(), std::string("{}"), std::string(R"({"userComment":"no"})"),
                                     std::string(R"({"reason":{"system":"urn:calcalert:override-reason","code":""}})")}) {
            CAPTURE(r);
            Fixture fx;
            const std::string body = patient_body(kMargaret);
            REQUIRE(card_rules(fx.call(body)).size() == 1);
            CHECK(fx.feedback(feedback_of({entry(uuid, "overridden", r)})).status == 200);
            CHECK(card_rules(fx.call(body)) == std::vector<std::string>{"calciphylaxis-suspected"});
            CHECK(fx.store->feedback("Patient/margaret-okafor", "calciphylaxis-suspected").size() == 1);  // still recorded
        }
    }
    SUBCASE("a non-critical card is hidden by an override without a reason") {
        Fixture fx;
        const std::string body = patient_body(kHarold);
        REQUIRE(card_rules(fx.call(body)).size() == 1);
        CHECK(fx.feedback(feedback_of({entry(uuid_of(kHarold, "metastatic-calcification-risk"), "overridden")})).status == 200);
        CHECK(card_rules(fx.call(body)).empty());
    }
    SUBCASE("periods: critical 72 h by default (and as configured), others override_suppression_hours") {
        struct Case {
            const char* name;
            std::string patient, rule;
            std::function<void(ServeConfig&)> tweak;
            std::int64_t hidden_at_h, shown_at_h;
        };
        const std::vector<Case> cases = {
            {"critical, default", kMargaret, "calciphylaxis-suspected", {}, 71, 73},
            {"critical, default, at 72 h", kMargaret, "calciphylaxis-suspected", {}, 1, 72},
            {"critical, 24 h", kMargaret, "calciphylaxis-suspected", [](ServeConfig& c) { c.critical_override_hours = 24; }, 23, 25},
            {"critical ignores override_suppression_hours", kMargaret, "calciphylaxis-suspected",
             [](ServeConfig& c) { c.override_suppression_hours = 24 * 365; }, 71, 73},
            {"non-critical, 48 h", kHarold, "metastatic-calcification-risk",
             [](ServeConfig& c) { c.override_suppression_hours = 48; }, 47, 49},
            {"non-critical ignores critical_override_hours", kHarold, "metastatic-calcification-risk",
             [](ServeConfig& c) {
                 c.override_suppression_hours = 96;
                 c.critical_override_hours = 1;
             },
             95, 97},
        };
        for (const auto& c : cases) {
            CAPTURE(c.name);
            Fixture fx([&c](ServeConfig& cfg) {
                if (c.tweak) c.tweak(cfg);
            });
            const std::string body = patient_body(c.patient);
            REQUIRE(card_rules(fx.call(body)).size() == 1);
            CHECK(fx.feedback(feedback_of({entry(uuid_of(c.patient, c.rule), "overridden", reason("patient-declined"))})).status == 200);
            CHECK(card_rules(fx.call(body, kPV, kIssA, test::kNow + c.hidden_at_h * 3600)).empty());
            CHECK(card_rules(fx.call(body, kPV, kIssA, test::kNow + c.shown_at_h * 3600)) == std::vector<std::string>{c.rule});
        }
    }
    CHECK(ServeConfig{}.critical_override_hours == 72);
    CHECK(ServeConfig{}.override_suppression_hours == 720);
}

TEST_CASE("/metrics: 5,000 distinct override reasons add no series beyond other") {
    Fixture fx;
    REQUIRE(card_rules(fx.call(patient_body(kHarold))).size() == 1);
    const std::string uuid = uuid_of(kHarold, "metastatic-calcification-risk");
    std::vector<std::string> entries;
    for (int i = 0; i < 5000; ++i) entries.push_back(entry(uuid, "overridden", reason("reason-" + std::to_string(i))));
    // And as many for cards never issued, with their own reasons and outcomes.
    for (int i = 0; i < 5000; ++i)
        entries.push_back(entry("card-" + std::to_string(i), i % 2 ? "accepted" : "overridden", reason("x-" + std::to_string(i))));
    const std::string before = fx.metrics.render();
    CHECK(fx.feedback(feedback_of(entries)).status == 200);
    const std::string text = fx.metrics.render();
    CHECK(samples(text, "calcalert_cds_overrides_total") ==
          std::vector<std::string>{"calcalert_cds_overrides_total{rule=\"metastatic-calcification-risk\",reason=\"other\"} 5000"});
    CHECK(samples(text, "calcalert_cds_feedback_total") ==
          std::vector<std::string>{"calcalert_cds_feedback_total{outcome=\"overridden\"} 5000"});
    CHECK(samples(text, "calcalert_cds_feedback_ignored_total") ==
          std::vector<std::string>{"calcalert_cds_feedback_ignored_total 5000"});
    CHECK(text.find("reason-") == std::string::npos);
    CHECK(text.find("card-") == std::string::npos);
    // A reason from another system is "other" even with one of our codes; our codes are counted.
    CHECK(fx.feedback(feedback_of({entry(uuid, "overridden", R"({"reason":{"system":"urn:x","code":"already-addressed"}})"),
                                   entry(uuid, "overridden", reason("data-incorrect")), entry(uuid, "overridden")}))
              .status == 200);
    const auto lines = samples(fx.metrics.render(), "calcalert_cds_overrides_total");
    CHECK(lines == std::vector<std::string>{
                       "calcalert_cds_overrides_total{rule=\"metastatic-calcification-risk\",reason=\"data-incorrect\"} 1",
                       "calcalert_cds_overrides_total{rule=\"metastatic-calcification-risk\",reason=\"none\"} 1",
                       "calcalert_cds_overrides_total{rule=\"metastatic-calcification-risk\",reason=\"other\"} 5001"});
}

TEST_CASE("/metrics: labels come from closed sets, the series are bounded, the text is valid UTF-8 and escaped") {
    SUBCASE("a reason with raw 0xFF bytes: the feedback is refused and /metrics stays valid UTF-8") {
        Fixture fx;
        REQUIRE(card_rules(fx.call(patient_body(kHarold))).size() == 1);
        const std::string fb = feedback_of({entry(uuid_of(kHarold, "metastatic-calcification-risk"), "overridden", reason("bad\xFF\xFE"))});
        CHECK(fx.feedback(fb).status == 400);
        const std::string text = fx.metrics.render();
        CHECK(fhir::find_invalid_utf8(text) == std::string::npos);
        CHECK(text.find('\xFF') == std::string::npos);
    }
    SUBCASE("values outside the sets are other, whatever the bytes") {
        Metrics m;
        m.register_labels({{"calcalert-patient-view"}, {"calciphylaxis-suspected"}, {"already-addressed"}, {"observations"}});
        m.override_reason("calciphylaxis-suspected", "bad\xFF\xFE\"}\n# x");
        m.override_reason("no-such-rule\xC3\x28", "already-addressed");
        m.card("rule\"\\\n\xFF");
        m.prefetch("observations\xFF", "hit\n");
        m.feedback("maybe\xFF");
        m.request("calcalert-patient-view/feedback", 200, 0.01);
        m.request("/cds-services/\xFF\"x", 999, 0.01);
        const std::string text = m.render();
        CHECK(fhir::find_invalid_utf8(text) == std::string::npos);
        CHECK(text.find("bad") == std::string::npos);
        CHECK(text.find("no-such-rule") == std::string::npos);
        CHECK(text.find("calcalert_cds_overrides_total{rule=\"calciphylaxis-suspected\",reason=\"other\"} 1") != std::string::npos);
        CHECK(text.find("calcalert_cds_overrides_total{rule=\"other\",reason=\"already-addressed\"} 1") != std::string::npos);
        CHECK(text.find("calcalert_cds_cards_total{rule=\"other\"} 1") != std::string::npos);
        CHECK(text.find("calcalert_cds_prefetch_total{key=\"other\",result=\"other\"} 1") != std::string::npos);
        CHECK(text.find("calcalert_cds_feedback_total{outcome=\"other\"} 1") != std::string::npos);
        CHECK(text.find("calcalert_cds_requests_total{service=\"calcalert-patient-view/feedback\",status=\"200\"} 1") !=
              std::string::npos);
        CHECK(text.find("calcalert_cds_requests_total{service=\"other\",status=\"other\"} 1") != std::string::npos);
        // Every sample line is `name{label="value",...} number` or `name number`.
        std::stringstream ss(text);
        std::string line;
        while (std::getline(ss, line)) {
            if (line.rfind("#", 0) == 0) continue;
            CHECK_MESSAGE(line.find('\r') == std::string::npos, line);
            const auto space = line.rfind(' ');
            REQUIRE(space != std::string::npos);
            CHECK_MESSAGE(line.find_first_not_of("0123456789.e+-", space + 1) == std::string::npos, line);
        }
    }
    SUBCASE("escaping per the text format, after replacing invalid UTF-8") {
        CHECK(Metrics::escape_label("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
        CHECK(Metrics::escape_label("x\xFFy") == "x\xEF\xBF\xBDy");
        CHECK(Metrics::escape_label("\xC3\x28") == "\xEF\xBF\xBD(");
        CHECK(Metrics::escape_label("Ca\xC3\x97P") == "Ca\xC3\x97P");
    }
    SUBCASE("at most kMaxSeries series per metric") {
        Metrics m;
        std::vector<std::string> services;
        for (int i = 0; i < 2000; ++i) services.push_back("svc-" + std::to_string(i));
        m.register_labels({services, {}, {}, {}});
        for (int i = 0; i < 2000; ++i) m.request("svc-" + std::to_string(i), 200, 0.001);
        CHECK(samples(m.render(), "calcalert_cds_requests_total").size() <= Metrics::kMaxSeries + 1);
    }
}
