// The CDS Hooks service end to end: the real server (CdsServer, Poco HTTP) on a free loopback port,
// called over HTTP by a client that signs real ES384 and RS384 JWTs; missing prefetch read from the
// local sandbox FHIR server (deploy/sandbox); a jku JWK Set served on loopback; the poller writing
// DetectedIssues to the sandbox for comparison with the cards; `calcalert serve` stopped by SIGTERM.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <csignal>
#include <sstream>
#include <thread>

#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/StreamCopier.h>
#include <rapidjson/document.h>

#include "../support/postgres_server.hpp"
#include "../support/sandbox_server.hpp"
#include "../support/shell.hpp"
#include "../unit/cds_test_support.hpp"
#include "adapters/cds_hooks/server.hpp"
#include "adapters/poll/poller.hpp"
#include "adapters/state/migrations.hpp"
#include "fhir/client.hpp"
#include "fhir/datetime.hpp"
#include "mappings/medications.hpp"

using namespace calcalert;
using namespace calcalert::cds;

namespace {

namespace fs = std::filesystem;
const std::string kSrc = CALCALERT_SOURCE_ROOT;
const std::string kCohort = kSrc + "/examples/cohort/cohort.json";
const std::int64_t kNow = *fhir::parse_datetime("2026-11-25T12:00:00Z");
const std::string kIss = "https://ehr.example.org";
const std::string kVendorIss = "https://vendor.example.org";
const std::string kEhrToken = "ehr-access-token-5f2b9c";
std::atomic<std::int64_t> g_now{kNow};
std::atomic<int> g_jwks_hits{0};

// Serves one JWK Set at /jwks.json on loopback (the jku of the vendor issuer).
class JwksHandler : public Poco::Net::HTTPRequestHandler {
public:
    explicit JwksHandler(std::string body) : body_(std::move(body)) {}
    void handleRequest(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp) override {
        if (req.getURI() != "/jwks.json") {
            resp.setStatusAndReason(Poco::Net::HTTPResponse::HTTP_NOT_FOUND);
            resp.send();
            return;
        }
        ++g_jwks_hits;
        resp.setContentType("application/json");
        resp.setContentLength(static_cast<std::streamsize>(body_.size()));
        resp.send() << body_;
    }

private:
    std::string body_;
};
class JwksFactory : public Poco::Net::HTTPRequestHandlerFactory {
public:
    explicit JwksFactory(std::string body) : body_(std::move(body)) {}
    Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
        return new JwksHandler(body_);
    }

private:
    std::string body_;
};

struct Env {
    mappings::Terminology term = mappings::Terminology::load(kSrc + "/mappings/data");
    rules::RuleCatalog catalog = rules::RuleCatalog::load(kSrc + "/rules/catalog", term.concepts());
    mappings::Medications meds = mappings::Medications::load(kSrc + "/mappings/data");
    std::vector<std::string> lab_tokens = lab_code_tokens(kSrc + "/mappings/data/lab-codes.tsv");
    jose::PrivateKey ec = jose::generate_es384_key("ehr-ec-1");
    jose::PrivateKey rsa = jose::generate_rs384_key("ehr-rsa-1");
    jose::PrivateKey vendor = jose::generate_es384_key("vendor-ec-1");
    fs::path dir = fs::temp_directory_path() / ("calcalert-cds-it-" + std::to_string(::getpid()));
    std::unique_ptr<Poco::Net::HTTPServer> jwks_http;
    std::string jku;
    test::SandboxServer fhir{[] {
        test::SandboxOptions o;
        o.extra_args = {"--no-validate"};
        return o;
    }()};

    Env() {
        fs::create_directories(dir);
        std::ofstream(dir / "ehr-jwks.json") << cdstest::jwks_of({&ec, &rsa});
        Poco::Net::ServerSocket socket(Poco::Net::SocketAddress("127.0.0.1", 0));
        jku = "http://127.0.0.1:" + std::to_string(socket.address().port()) + "/jwks.json";
        jwks_http = std::make_unique<Poco::Net::HTTPServer>(new JwksFactory(cdstest::jwks_of({&vendor})), socket,
                                                            new Poco::Net::HTTPServerParams);
        jwks_http->start();
        // The cohort on the sandbox FHIR server, plus copies for the pagination and poller cases.
        fhir::ClientOptions copts;
        copts.base_url = fhir.base_url();
        fhir::FhirClient client(copts);
        seed(client, cdstest::cohort_patient(kCohort, "harold-kim").resources);
        seed(client, cdstest::cohort_patient(kCohort, "margaret-okafor").resources);
        auto paged = cdstest::cohort_patient(kCohort, "harold-kim", "paged-harold");
        // 25 newer albumin results (normal, so they change nothing) push calcium and phosphate to page 2.
        for (int i = 0; i < 25; ++i)
            paged.resources.push_back(
                R"({"resourceType":"Observation","id":"paged-harold-alb-)" + std::to_string(i) +
                R"(","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1751-7"}]},"subject":{"reference":"Patient/paged-harold"},"effectiveDateTime":"2026-11-2)" +
                std::to_string(i % 4) + "T" + (i < 10 ? "0" : "") + std::to_string(i) +
                R"(:00:00Z","valueQuantity":{"value":4.2,"unit":"g/dL","system":"http://unitsofmeasure.org","code":"g/dL"}})");
        seed(client, paged.resources);
    }
    ~Env() {
        jwks_http->stopAll(true);
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    static void seed(fhir::FhirClient& client, const std::vector<std::string>& resources) {
        std::string entries;
        for (const auto& r : resources) {
            rapidjson::Document d;
            d.Parse(r.c_str());
            const std::string url = std::string(d["resourceType"].GetString()) + "/" + d["id"].GetString();
            entries += (entries.empty() ? "" : ",") + std::string("{\"resource\":") + r +
                       ",\"request\":{\"method\":\"PUT\",\"url\":\"" + url + "\"}}";
        }
        client.transaction("{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[" + entries + "]}");
    }
};

Env& env() {
    static Env e;
    return e;
}

struct Running {
    std::ostringstream log;
    std::unique_ptr<state::StateStore> store;
    std::unique_ptr<CdsServer> server;
    ServeConfig config;
    ~Running() {
        if (server) server->stop(1000);
    }
};

std::unique_ptr<Running> start(const std::function<void(ServeConfig&)>& tweak = {}) {
    Env& e = env();
    auto r = std::make_unique<Running>();
    ServeConfig& c = r->config;
    c.port = 0;
    c.request_timeout_ms = 5000;
    c.keep_alive_timeout_ms = 2000;
    c.state_file = ":memory:";
    c.issuers = {{kIss, (e.dir / "ehr-jwks.json").string(), {}}, {kVendorIss, "", {e.jku}}};
    c.fhir_servers = {e.fhir.base_url()};
    c.cors_origins = {"https://sandbox.cds-hooks.org"};
    c.clock_skew_seconds = 30;
    if (tweak) tweak(c);
    r->store = state::open_sqlite_store(c.state_file);
    ServerDeps deps;
    deps.terminology = &e.term;
    deps.catalog = &e.catalog;
    deps.medications = &e.meds;
    deps.store = r->store.get();
    deps.lab_tokens = e.lab_tokens;
    deps.clock = [] { return g_now.load(); };
    deps.log = &r->log;
    r->server = std::make_unique<CdsServer>(c, std::move(deps));
    r->server->start();
    return r;
}

struct Resp {
    int status = 0;
    std::string body;
    Poco::Net::HTTPResponse meta;
};

Resp http(const Running& r, const std::string& method, const std::string& path, const std::string& body = "",
          const std::string& token = "", const std::map<std::string, std::string>& headers = {}) {
    Poco::Net::HTTPClientSession s("127.0.0.1", static_cast<Poco::UInt16>(r.server->port()));
    s.setTimeout(Poco::Timespan(20, 0));
    Poco::Net::HTTPRequest req(method, path, Poco::Net::HTTPMessage::HTTP_1_1);
    if (!token.empty()) req.set("Authorization", "Bearer " + token);
    for (const auto& [k, v] : headers) req.set(k, v);
    if (!body.empty() || method == "POST") {
        req.setContentType("application/json");
        req.setContentLength(static_cast<std::streamsize>(body.size()));
    }
    s.sendRequest(req) << body;
    Resp out;
    std::istream& in = s.receiveResponse(out.meta);
    Poco::StreamCopier::copyToString(in, out.body);
    out.status = static_cast<int>(out.meta.getStatus());
    return out;
}

int g_jti = 0;
std::string token(const Running& r, const std::string& path, const jose::PrivateKey* key = nullptr,
                  const std::function<void(cdstest::Claims&)>& tweak = {}) {
    cdstest::Claims c;
    c.iss = kIss;
    c.aud = r.server->base_url() + path;
    c.iat = g_now.load();
    c.exp = c.iat + 300;
    c.jti = "jti-" + std::to_string(::getpid()) + "-" + std::to_string(++g_jti);
    if (tweak) tweak(c);
    return cdstest::sign(key ? *key : env().ec, c);
}

const std::string kPV = "/cds-services/calcalert-patient-view";

std::string prefetch_of(const cdstest::PatientData& p) { return p.prefetch(); }

rapidjson::Document json(const std::string& s) {
    rapidjson::Document d;
    d.Parse(s.c_str());
    return d;
}

std::vector<std::string> rules_of(const Resp& r) {
    std::vector<std::string> out;
    auto d = json(r.body);
    if (!d.IsObject() || !d.HasMember("cards")) return out;
    for (const auto& c : d["cards"].GetArray()) out.push_back(c["source"]["topic"]["code"].GetString());
    return out;
}

bool is_outcome(const Resp& r) {
    auto d = json(r.body);
    return d.IsObject() && d.HasMember("resourceType") && std::string(d["resourceType"].GetString()) == "OperationOutcome";
}

}  // namespace

TEST_CASE("discovery, health and metrics; CORS per origin") {
    auto r = start();
    const Resp d = http(*r, "GET", "/cds-services", "", token(*r, "/cds-services"));
    REQUIRE(d.status == 200);
    auto doc = json(d.body);
    REQUIRE(doc["services"].Size() == 3);
    CHECK(d.body.find("_sort=-date") != std::string::npos);
    CHECK(d.body.find("sort:desc") == std::string::npos);
    CHECK(http(*r, "GET", "/healthz").status == 200);
    const Resp pre = http(*r, "OPTIONS", kPV, "", "",
                          {{"Origin", "https://sandbox.cds-hooks.org"}, {"Access-Control-Request-Method", "POST"}});
    CHECK(pre.status == 204);
    CHECK(pre.meta.get("Access-Control-Allow-Origin", "") == "https://sandbox.cds-hooks.org");
    const Resp other = http(*r, "OPTIONS", kPV, "", "", {{"Origin", "https://evil.example.net"}});
    CHECK_FALSE(other.meta.has("Access-Control-Allow-Origin"));
    CHECK(http(*r, "GET", "/nope").status == 404);
    const Resp m = http(*r, "GET", "/metrics");
    CHECK(m.status == 200);
    CHECK(m.body.find("calcalert_cds_requests_total{service=\"discovery\",status=\"200\"} 1") != std::string::npos);
    CHECK(m.body.find("calcalert_cds_request_duration_seconds_bucket{service=\"discovery\",le=\"+Inf\"} 1") != std::string::npos);
}

TEST_CASE("service calls: full prefetch, null keys, fallback to the sandbox FHIR server, paging, OperationOutcome, 412, 400, 403") {
    auto r = start();
    const std::string fhir = env().fhir.base_url();
    const auto harold = cdstest::cohort_patient(kCohort, "harold-kim");

    SUBCASE("full prefetch (ES384 and RS384 clients)") {
        for (const jose::PrivateKey* key : {&env().ec, &env().rsa}) {
            const Resp c = http(*r, "POST", kPV, cdstest::call_body("patient-view", "harold-kim", prefetch_of(harold)),
                                token(*r, kPV, key));
            REQUIRE_MESSAGE(c.status == 200, c.body);
            CHECK(rules_of(c) == std::vector<std::string>{"metastatic-calcification-risk"});
            auto d = json(c.body);
            const auto& card = d["cards"][0];
            CHECK(std::string(card["indicator"].GetString()) == "warning");
            CHECK(std::string(card["uuid"].GetString()) == mappings::alert_identifier("Patient/harold-kim", "metastatic-calcification-risk"));
            CHECK(std::string(card["detail"].GetString()).find("72.4") != std::string::npos);
            CHECK(std::string(card["detail"].GetString()).find("14 Nov 2026") != std::string::npos);
        }
    }
    SUBCASE("null keys: no data, nothing fetched") {
        const Resp c = http(*r, "POST", kPV,
                            cdstest::call_body("patient-view", "harold-kim", cdstest::null_prefetch(), fhir, kEhrToken),
                            token(*r, kPV));
        CHECK(c.status == 200);
        CHECK(rules_of(c).empty());
        CHECK(r->server->metrics().render().find("result=\"fallback\"") == std::string::npos);
    }
    SUBCASE("missing keys are read from fhirServer with the fhirAuthorization token") {
        const Resp c = http(*r, "POST", kPV, cdstest::call_body("patient-view", "harold-kim", "", fhir, kEhrToken), token(*r, kPV));
        REQUIRE_MESSAGE(c.status == 200, c.body);
        CHECK(rules_of(c) == std::vector<std::string>{"metastatic-calcification-risk"});
        const std::string m = r->server->metrics().render();
        CHECK(m.find("calcalert_cds_prefetch_total{key=\"observations\",result=\"fallback\"} 1") != std::string::npos);
        CHECK(m.find("calcalert_cds_prefetch_total{key=\"conditions\",result=\"fallback\"} 1") != std::string::npos);
    }
    SUBCASE("paginated fallback: calcium and phosphate are on the second page") {
        const Resp c = http(*r, "POST", kPV, cdstest::call_body("patient-view", "paged-harold", "{\"conditions\":null}", fhir, kEhrToken),
                            token(*r, kPV));
        REQUIRE_MESSAGE(c.status == 200, c.body);
        CHECK(rules_of(c) == std::vector<std::string>{"metastatic-calcification-risk"});
    }
    SUBCASE("an OperationOutcome in a key: policy fail is 412") {
        const std::string p = R"({"observations":{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"timeout"}]},"conditions":null})";
        const Resp c = http(*r, "POST", kPV, cdstest::call_body("patient-view", "harold-kim", p, fhir, kEhrToken), token(*r, kPV));
        CHECK(c.status == 412);
        CHECK(is_outcome(c));
    }
    SUBCASE("missing data and no fhirServer: 412") {
        const Resp c = http(*r, "POST", kPV, cdstest::call_body("patient-view", "harold-kim", "{}"), token(*r, kPV));
        CHECK(c.status == 412);
        CHECK(is_outcome(c));
    }
    SUBCASE("malformed: 400 with an OperationOutcome") {
        for (const std::string& body : std::vector<std::string>{std::string("{not json"), std::string(R"({"hook":"patient-view"})"),
                                       cdstest::call_body("order-sign", "harold-kim", "{}"),
                                       cdstest::call_body("patient-view", "../../etc", "{}")}) {
            const Resp c = http(*r, "POST", kPV, body, token(*r, kPV));
            CHECK_MESSAGE(c.status == 400, body);
            CHECK(is_outcome(c));
        }
    }
    SUBCASE("fhirServer off the allow-list is refused and never called") {
        const Resp c = http(*r, "POST", kPV, cdstest::call_body("patient-view", "harold-kim", "", "http://127.0.0.1:9/fhir", kEhrToken),
                            token(*r, kPV));
        CHECK(c.status == 403);
        CHECK(is_outcome(c));
    }
    r->server->stop(1000);
    CHECK(r->log.str().find(kEhrToken) == std::string::npos);
    CHECK(r->log.str().find("eyJ") == std::string::npos);  // no JWT in the logs
}

TEST_CASE("explanation links: each card links to its page under public_base_url; the page opens over HTTP") {
    auto r = start([](ServeConfig& c) { c.explain_link_lifetime_seconds = 600; });
    const auto harold = cdstest::cohort_patient(kCohort, "harold-kim");
    const Resp c = http(*r, "POST", kPV, cdstest::call_body("patient-view", "harold-kim", prefetch_of(harold)), token(*r, kPV));
    REQUIRE_MESSAGE(c.status == 200, c.body);
    auto d = json(c.body);
    const auto& links = d["cards"][0]["links"];
    REQUIRE(links.IsArray());
    REQUIRE(links.Size() == 1);
    CHECK(std::string(links[0]["type"].GetString()) == "absolute");
    CHECK(std::string(links[0]["label"].GetString()).rfind("Explain this alert", 0) == 0);
    const std::string url = links[0]["url"].GetString();
    const std::string prefix = r->server->base_url() + "/explain/";
    REQUIRE(url.rfind(prefix, 0) == 0);
    CHECK(url.find("harold") == std::string::npos);
    const std::string path = url.substr(r->server->base_url().size());
    const Resp page = http(*r, "GET", path);
    CHECK(page.status == 200);
    CHECK(page.meta.get("Content-Type", "") == "text/html; charset=utf-8");
    CHECK(page.meta.get("Content-Security-Policy", "").rfind("default-src 'none'", 0) == 0);
    CHECK(page.meta.get("Referrer-Policy", "") == "no-referrer");
    CHECK(page.body.find("Metastatic calcification risk") != std::string::npos);
    CHECK(page.body.find("Patient/harold-kim") != std::string::npos);
    CHECK(page.body.find("data-fact=\"ca-x-p-high\" data-threshold=\"70\"") != std::string::npos);
    std::string tampered = path;
    tampered.back() = tampered.back() == 'A' ? 'B' : 'A';
    CHECK(http(*r, "GET", tampered).status == 401);
    CHECK(http(*r, "POST", path).status == 405);
    g_now = kNow + 601;
    const Resp expired = http(*r, "GET", path);
    g_now = kNow;
    CHECK(expired.status == 401);
    CHECK(expired.body.find("expired") != std::string::npos);
    CHECK(r->server->metrics().render().find("service=\"explain\",status=\"200\"") != std::string::npos);
    // The token is a credential: the request log names the path without it.
    CHECK(r->log.str().find(path.substr(std::string("/explain/").size())) == std::string::npos);
    CHECK(r->log.str().find("\"path\":\"/explain/<token>\"") != std::string::npos);

    // public_base_url is the links' base; explain_pages false: no links, no page.
    auto pub = start([](ServeConfig& cfg) { cfg.public_base_url = "https://cds.hospital.example.org/"; });
    const Resp pc = http(*pub, "POST", kPV, cdstest::call_body("patient-view", "harold-kim", prefetch_of(harold)), token(*pub, kPV));
    REQUIRE(pc.status == 200);
    CHECK(std::string(json(pc.body)["cards"][0]["links"][0]["url"].GetString())
              .rfind("https://cds.hospital.example.org/explain/", 0) == 0);
    auto off = start([](ServeConfig& cfg) { cfg.explain_pages = false; });
    const Resp oc = http(*off, "POST", kPV, cdstest::call_body("patient-view", "harold-kim", prefetch_of(harold)), token(*off, kPV));
    REQUIRE(oc.status == 200);
    CHECK_FALSE(json(oc.body)["cards"][0].HasMember("links"));
    CHECK(http(*off, "GET", path).status == 404);
}

TEST_CASE("the procedures and patient keys: used as sent, read from fhirServer when missing") {
    auto r = start();
    const std::string fhir = env().fhir.base_url();
    // On the sandbox FHIR server: a patient whose ESRD rests only on a hemodialysis session 5 days ago,
    // with a leg ulcer and PTH 650 pg/mL, above 9 × 65 = 585 (calciphylaxis-suspected).
    const std::string pid = "cds-dialysis";
    const std::string obs = R"({"resourceType":"Observation","id":"cds-dialysis-pth","status":"final",
        "code":{"coding":[{"system":"http://loinc.org","code":"2731-8"}]},"subject":{"reference":"Patient/cds-dialysis"},
        "effectiveDateTime":"2026-11-20T08:00:00Z","valueQuantity":{"value":650,"unit":"pg/mL","system":"http://unitsofmeasure.org","code":"pg/mL"}})";
    const std::string cond = R"({"resourceType":"Condition","id":"cds-dialysis-ulcer",
        "clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},
        "code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"L97.909"}]},"subject":{"reference":"Patient/cds-dialysis"}})";
    const std::string proc = R"({"resourceType":"Procedure","id":"cds-dialysis-hd","status":"completed",
        "code":{"coding":[{"system":"http://snomed.info/sct","code":"302497006","display":"Hemodialysis"}]},
        "subject":{"reference":"Patient/cds-dialysis"},"performedPeriod":{"start":"2026-11-20T08:00:00Z","end":"2026-11-20T12:00:00Z"}})";
    const std::string alive = R"({"resourceType":"Patient","id":"cds-dialysis","birthDate":"1957-03-02"})";
    {
        fhir::ClientOptions copts;
        copts.base_url = fhir;
        fhir::FhirClient client(copts);
        Env::seed(client, {alive, obs, cond, proc});
    }
    auto searchset = [](const std::string& resource) {
        return R"({"resourceType":"Bundle","type":"searchset","entry":[{"resource":)" + resource + "}]}";
    };
    const std::string labs_and_problems = "{\"observations\":" + searchset(obs) + ",\"conditions\":" + searchset(cond) + "}";

    SUBCASE("missing: read from fhirServer (the Procedure search and the Patient read)") {
        const Resp c = http(*r, "POST", kPV, cdstest::call_body("patient-view", pid, labs_and_problems, fhir, kEhrToken), token(*r, kPV));
        REQUIRE_MESSAGE(c.status == 200, c.body);
        CHECK(rules_of(c) == std::vector<std::string>{"calciphylaxis-suspected"});
        CHECK(c.body.find("Hemodialysis") != std::string::npos);
        const std::string m = r->server->metrics().render();
        CHECK(m.find("calcalert_cds_prefetch_total{key=\"procedures\",result=\"fallback\"} 1") != std::string::npos);
        CHECK(m.find("calcalert_cds_prefetch_total{key=\"patient\",result=\"fallback\"} 1") != std::string::npos);
    }
    SUBCASE("present: used as sent") {
        const std::string deceased = cdstest::replace_all(alive, R"("birthDate")", R"("deceasedBoolean":true,"birthDate")");
        auto all = [&](const std::string& procedures, const std::string& patient) {
            return cdstest::null_prefetch({{"observations", searchset(obs)}, {"conditions", searchset(cond)},
                                           {"procedures", procedures}, {"patient", patient}});
        };
        const Resp fires = http(*r, "POST", kPV, cdstest::call_body("patient-view", pid, all(searchset(proc), alive)), token(*r, kPV));
        CHECK(rules_of(fires) == std::vector<std::string>{"calciphylaxis-suspected"});
        const Resp no_procedures = http(*r, "POST", kPV, cdstest::call_body("patient-view", pid, all("null", alive)), token(*r, kPV));
        CHECK(rules_of(no_procedures).empty());
        const Resp dead = http(*r, "POST", kPV, cdstest::call_body("patient-view", pid, all(searchset(proc), deceased)), token(*r, kPV));
        CHECK(dead.status == 200);
        CHECK(rules_of(dead).empty());
        CHECK(r->server->metrics().render().find("result=\"fallback\"") == std::string::npos);
    }
    SUBCASE("a patient the server does not have: the Patient read (404) is no data") {
        const std::string other = cdstest::replace_all(labs_and_problems, "Patient/cds-dialysis", "Patient/cds-nobody");
        const std::string procedures = "{\"procedures\":" + searchset(cdstest::replace_all(proc, "Patient/cds-dialysis", "Patient/cds-nobody"));
        const Resp c = http(*r, "POST", kPV,
                            cdstest::call_body("patient-view", "cds-nobody", procedures + "," + other.substr(1), fhir, kEhrToken),
                            token(*r, kPV));
        REQUIRE_MESSAGE(c.status == 200, c.body);
        CHECK(rules_of(c) == std::vector<std::string>{"calciphylaxis-suspected"});
    }
}

TEST_CASE("an OperationOutcome key with policy omit is read from fhirServer") {
    auto r = start([](ServeConfig& c) { c.prefetch_outcome_policy = OutcomePolicy::omit; });
    const std::string p = R"({"observations":{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"timeout"}]}})";
    const Resp c = http(*r, "POST", kPV, cdstest::call_body("patient-view", "harold-kim", p, env().fhir.base_url(), kEhrToken),
                        token(*r, kPV));
    REQUIRE_MESSAGE(c.status == 200, c.body);
    CHECK(rules_of(c) == std::vector<std::string>{"metastatic-calcification-risk"});
}

TEST_CASE("JWT negative cases are all 401 with no details") {
    auto r = start();
    const auto harold = cdstest::cohort_patient(kCohort, "harold-kim");
    const std::string body = cdstest::call_body("patient-view", "harold-kim", prefetch_of(harold));
    auto expect_401 = [&](const std::string& tok, const char* what) {
        const Resp c = http(*r, "POST", kPV, body, tok);
        CHECK_MESSAGE(c.status == 401, what);
        CHECK_MESSAGE(c.body.empty(), what);
    };
    expect_401("", "no token");
    {
        cdstest::Claims c;
        c.iss = kIss;
        c.aud = r->server->base_url() + kPV;
        c.iat = g_now.load();
        c.exp = c.iat + 300;
        c.jti = "none-1";
        expect_401(cdstest::unsigned_token("ehr-ec-1", c), "alg none");
        const std::string hs = jose::base64url_encode(cdstest::header_json("HS256", "ehr-ec-1", c)) + "." +
                               jose::base64url_encode(cdstest::payload_json(c)) + "." + jose::base64url_encode(std::string(32, 'k'));
        expect_401(hs, "HS256");
    }
    expect_401(token(*r, kPV, nullptr, [](cdstest::Claims& c) { c.iat -= 1000; c.exp = c.iat + 300; }), "expired");
    expect_401(token(*r, kPV, nullptr, [](cdstest::Claims& c) { c.aud += "-other"; }), "wrong aud");
    expect_401(token(*r, "/cds-services"), "aud of another endpoint");
    {
        const jose::PrivateKey stranger = jose::generate_es384_key("stranger-kid");
        expect_401(token(*r, kPV, &stranger), "unknown kid");
    }
    {
        const std::string once = token(*r, kPV);
        CHECK(http(*r, "POST", kPV, body, once).status == 200);
        expect_401(once, "replayed jti");
    }
    expect_401(token(*r, kPV, &env().vendor,
                     [](cdstest::Claims& c) {
                         c.iss = kVendorIss;
                         c.jku = "http://127.0.0.1:9/jwks.json";
                     }),
               "jku not allowed");
    expect_401(cdstest::tamper_signature(token(*r, kPV)), "tampered signature");
    expect_401(token(*r, kPV, nullptr, [](cdstest::Claims& c) { c.iss = "https://unknown.example.org"; }), "unknown issuer");

    // The allow-listed jku works and is fetched once (cached).
    const int hits = g_jwks_hits.load();
    for (int i = 0; i < 2; ++i) {
        const Resp ok = http(*r, "POST", kPV, body, token(*r, kPV, &env().vendor, [](cdstest::Claims& cl) {
                                 cl.iss = kVendorIss;
                                 cl.jku = env().jku;
                             }));
        CHECK(ok.status == 200);
    }
    CHECK(g_jwks_hits.load() - hits == 1);
    // Feedback needs a JWT too.
    CHECK(http(*r, "POST", kPV + "/feedback", R"({"feedback":[]})").status == 401);
    CHECK(r->server->metrics().render().find("calcalert_cds_auth_failures_total 0") == std::string::npos);
}

TEST_CASE("feedback: overridden hides the card for that issuer and patient; /metrics counts overrides by rule and reason") {
    auto r = start([](ServeConfig& c) { c.override_suppression_hours = 24; });
    const auto m = cdstest::cohort_patient(kCohort, "margaret-okafor");
    const std::string body = cdstest::call_body("patient-view", "margaret-okafor", prefetch_of(m));
    const Resp first = http(*r, "POST", kPV, body, token(*r, kPV));
    REQUIRE(rules_of(first) == std::vector<std::string>{"calciphylaxis-suspected"});
    CHECK(std::string(json(first.body)["cards"][0]["indicator"].GetString()) == "critical");
    const std::string uuid = json(first.body)["cards"][0]["uuid"].GetString();
    const std::string fb = R"({"feedback":[{"card":")" + uuid +
                           R"(","outcome":"overridden","overrideReason":{"reason":{"system":"urn:calcalert:override-reason","code":"already-addressed"}},"outcomeTimestamp":"2026-11-25T12:00:00Z"}]})";
    CHECK(http(*r, "POST", kPV + "/feedback", fb, token(*r, kPV + "/feedback")).status == 200);
    CHECK(rules_of(http(*r, "POST", kPV, body, token(*r, kPV))).empty());
    CHECK(r->server->metrics().render().find(
              "calcalert_cds_overrides_total{rule=\"calciphylaxis-suspected\",reason=\"already-addressed\"} 1") != std::string::npos);
    // Another patient is not affected.
    const auto h = cdstest::cohort_patient(kCohort, "harold-kim");
    CHECK(rules_of(http(*r, "POST", kPV, cdstest::call_body("patient-view", "harold-kim", prefetch_of(h)), token(*r, kPV))).size() == 1);
    // A critical card is hidden for critical_override_hours (72 by default), not override_suppression_hours.
    g_now += 25 * 3600;
    CHECK(rules_of(http(*r, "POST", kPV, body, token(*r, kPV))).empty());
    g_now = kNow + 73 * 3600;
    CHECK(rules_of(http(*r, "POST", kPV, body, token(*r, kPV))) == std::vector<std::string>{"calciphylaxis-suspected"});
    g_now = kNow;
}

// `calcalert serve --config FILE --port 0` as a child process (stderr to NAME.err beside the config,
// in the test's directory); the port from the first line it prints. Stopped with SIGTERM when it goes
// out of scope. With Start::later the constructor only starts it, and listening() waits for that line:
// several can then start at once.
struct ServeProcess {
    enum class Start { now, later };
    pid_t pid = -1;
    Poco::UInt16 port = 0;
    std::string first_line;
    fs::path err_path;
    int out_fd = -1;

    ServeProcess(const std::string& name, const std::string& config_json, Start start = Start::now) {
        const fs::path bin = fs::path(CALCALERT_BINARY);
        const fs::path cfg = env().dir / name;
        err_path = env().dir / (name + ".err");
        std::ofstream(cfg) << config_json;
        int out_pipe[2];
        REQUIRE(::pipe(out_pipe) == 0);
        pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::dup2(out_pipe[1], 1);
            ::close(out_pipe[0]);
            const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
            ::dup2(err, 2);
            ::execl(bin.c_str(), bin.c_str(), "serve", "--config", cfg.c_str(), "--port", "0", static_cast<char*>(nullptr));
            ::_exit(127);
        }
        ::close(out_pipe[1]);
        out_fd = out_pipe[0];
        if (start == Start::now) listening();
    }
    // Waits for the first line ("listening http://127.0.0.1:PORT") and reads the port from it.
    void listening() {
        if (out_fd < 0) return;
        char ch = 0;
        while (::read(out_fd, &ch, 1) == 1 && ch != '\n') first_line += ch;
        ::close(out_fd);
        out_fd = -1;
        REQUIRE_MESSAGE(first_line.rfind("listening http://127.0.0.1:", 0) == 0, first_line, "\n", stderr_text());
        port = static_cast<Poco::UInt16>(std::stoi(first_line.substr(std::string("listening http://127.0.0.1:").size())));
    }
    std::string stderr_text() const {
        std::ifstream in(err_path);
        return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    // Still running (not exited, not killed)?
    bool running() {
        if (pid <= 0) return false;
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == 0) return true;
        pid = -1;
        exit_status = status;
        return false;
    }
    int exit_status = -1;  // waitpid's, once it has ended
    ~ServeProcess() {
        if (out_fd >= 0) ::close(out_fd);
        stop();
    }
    ServeProcess(const ServeProcess&) = delete;
    ServeProcess& operator=(const ServeProcess&) = delete;
    // SIGTERM and wait: the exit status (waitpid's); when it had already ended, how it ended (-1: stopped before).
    int stop() {
        if (pid <= 0) return exit_status;
        ::kill(pid, SIGTERM);
        int status = 0;
        ::waitpid(pid, &status, 0);
        pid = -1;
        return status;
    }
    Resp request(const std::string& method, const std::string& path, const std::string& body = "",
                 const std::string& bearer_token = "") const {
        Poco::Net::HTTPClientSession s("127.0.0.1", port);
        s.setTimeout(Poco::Timespan(30, 0));
        Poco::Net::HTTPRequest req(method, path, Poco::Net::HTTPMessage::HTTP_1_1);
        if (!bearer_token.empty()) req.set("Authorization", "Bearer " + bearer_token);
        if (!body.empty() || method == "POST") {
            req.setContentType("application/json");
            req.setContentLength(static_cast<std::streamsize>(body.size()));
        }
        s.sendRequest(req) << body;
        Resp out;
        Poco::StreamCopier::copyToString(s.receiveResponse(out.meta), out.body);
        out.status = static_cast<int>(out.meta.getStatus());
        return out;
    }
};

// A loopback socket that connects (the kernel completes the handshake) and never answers: a
// fhirServer that hangs.
struct SilentServer {
    Poco::Net::ServerSocket socket{Poco::Net::SocketAddress("127.0.0.1", 0), 64};
    std::string base_url() const { return "http://127.0.0.1:" + std::to_string(socket.address().port()) + "/fhir"; }
};

// A raw TCP connection to the service, for clients that misbehave.
struct RawClient {
    int fd = -1;
    explicit RawClient(Poco::UInt16 port) {
        fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
            ::close(fd);
            fd = -1;
        }
        timeval tv{10, 0};
        if (fd >= 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    ~RawClient() {
        if (fd >= 0) ::close(fd);
    }
    RawClient(const RawClient&) = delete;
    RawClient& operator=(const RawClient&) = delete;
    bool send(const std::string& bytes) const { return fd >= 0 && ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()); }
    // What the server sent until it closed (or 10 s of silence).
    std::string read_all() const {
        std::string out;
        char buf[4096];
        ssize_t n = 0;
        while (fd >= 0 && (n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<std::size_t>(n));
        return out;
    }
};

std::string hex(std::size_t n) {
    std::ostringstream s;
    s << std::hex << n;
    return s.str();
}

// The value of one series in a /metrics text, or -1.
long long metric(const std::string& text, const std::string& series) {
    const auto at = text.find("\n" + series + " ");
    if (at == std::string::npos) return -1;
    return std::stoll(text.substr(at + series.size() + 2));
}

// A call's answer in the replica test (status, and the cards' rules when 200), as doctest prints it.
using Answer = std::pair<int, std::vector<std::string>>;
namespace doctest {
template <>
struct StringMaker<Answer> {
    static String convert(const Answer& a) {
        std::string text = std::to_string(a.first) + " [";
        for (const auto& r : a.second) text += (text.back() == '[' ? "" : ", ") + r;
        return (text + "]").c_str();
    }
};
}  // namespace doctest

// A JWT for `calcalert serve` as a child process, which runs on the system clock: iat now, a fresh jti.
std::string system_clock_token(const std::string& iss, const jose::PrivateKey& key, const std::string& aud) {
    static int jti = 0;
    cdstest::Claims c;
    c.iss = iss;
    c.aud = aud;
    c.iat = static_cast<std::int64_t>(::time(nullptr));
    c.exp = c.iat + 300;
    c.jti = "serve-" + std::to_string(::getpid()) + "-" + std::to_string(++jti);
    return cdstest::sign(key, c);
}

// A patient-view call for harold-kim (one card: metastatic-calcification-risk) with his calcium and
// phosphate taken at `labs_at` (for the system clock: recent enough; another time is other evidence).
std::string harold_call_with_labs_at(const std::string& labs_at) {
    const auto harold = cdstest::cohort_patient(kCohort, "harold-kim");
    return cdstest::replace_all(cdstest::call_body("patient-view", "harold-kim", prefetch_of(harold)), "2026-11-14T07:50:00Z",
                                labs_at);
}

// CDS Hooks feedback: `uuid` overridden with a coded reason at `at`.
std::string override_feedback(const std::string& uuid, const std::string& at) {
    return R"({"feedback":[{"card":")" + uuid +
           R"(","outcome":"overridden","overrideReason":{"reason":{"system":"urn:calcalert:override-reason","code":"not-clinically-relevant"}},"outcomeTimestamp":")" +
           at + R"("}]})";
}

TEST_CASE("calcalert serve: issuer B's override does not hide issuer A's card") {
    // The real program with two JWT issuers, each with its own key file; it runs on the system clock,
    // so the patient's labs are dated yesterday.
    Env& e = env();
    const std::string iss_b = "https://other-ehr.example.org";
    std::ofstream(e.dir / "other-jwks.json") << cdstest::jwks_of({&e.vendor});
    std::ostringstream cfg;
    cfg << R"({"state_file": ":memory:", "issuers": [{"iss": ")" << kIss << R"(", "jwks_file": ")"
        << (e.dir / "ehr-jwks.json").string() << R"("}, {"iss": ")" << iss_b << R"(", "jwks_file": ")"
        << (e.dir / "other-jwks.json").string() << R"("}]})";
    ServeProcess serve("serve-issuers.json", cfg.str());
    const std::string base = serve.first_line.substr(std::string("listening ").size());
    auto signed_by = [&](const std::string& iss, const jose::PrivateKey& key, const std::string& path) {
        return system_clock_token(iss, key, base + path);
    };
    auto post = [&](const std::string& path, const std::string& body, const std::string& tok) {
        return serve.request("POST", path, body, tok);
    };
    const std::string yesterday = fhir::format_datetime(static_cast<std::int64_t>(::time(nullptr)) - 86400);
    const std::string body = harold_call_with_labs_at(yesterday);
    auto call_as = [&](const std::string& iss, const jose::PrivateKey& key) {
        const Resp c = post(kPV, body, signed_by(iss, key, kPV));
        CHECK_MESSAGE(c.status == 200, c.body);
        return rules_of(c);
    };
    auto override_as = [&](const std::string& iss, const jose::PrivateKey& key, const std::string& uuid) {
        return post(kPV + "/feedback", override_feedback(uuid, yesterday), signed_by(iss, key, kPV + "/feedback")).status;
    };
    const std::vector<std::string> card = {"metastatic-calcification-risk"};
    const std::string uuid = mappings::alert_identifier("Patient/harold-kim", "metastatic-calcification-risk");

    REQUIRE(call_as(kIss, e.ec) == card);                 // A is issued the card
    CHECK(override_as(iss_b, e.vendor, uuid) == 200);     // B overrides a card it never received: ignored
    CHECK(call_as(kIss, e.ec) == card);
    CHECK(call_as(iss_b, e.vendor) == card);              // B is issued the card ...
    CHECK(override_as(iss_b, e.vendor, uuid) == 200);     // ... and overrides it
    CHECK(call_as(iss_b, e.vendor).empty());              // hidden for B
    CHECK(call_as(kIss, e.ec) == card);                   // still shown to A
    CHECK(call_as(kIss, e.rsa) == card);                  // (A with its other key)

    const std::string metrics = serve.request("GET", "/metrics").body;
    CHECK(metrics.find("calcalert_cds_feedback_ignored_total 1\n") != std::string::npos);
    CHECK(metrics.find("calcalert_cds_overrides_total{rule=\"metastatic-calcification-risk\",reason=\"not-clinically-relevant\"} 1") !=
          std::string::npos);
    const int status = serve.stop();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("calcalert serve: two replicas on one PostgreSQL state share jtis and overrides; a database outage fails closed and passes") {
    if (auto why = test::PostgresServer::unavailable()) {
        std::printf("cds_hooks: serve replicas on PostgreSQL skipped: %s\n", why->c_str());
        return;
    }
    Env& e = env();
    test::PostgresServer pg;
    // Two processes behind one load balancer: the JWTs' aud is its URL, whichever replica answers.
    const std::string lb = "https://cds.hospital.example.org";
    std::ostringstream cfg;
    cfg << R"({"state_file": ")" << pg.url() << R"(", "public_base_url": ")" << lb << R"(", "issuers": [{"iss": ")" << kIss
        << R"(", "jwks_file": ")" << (e.dir / "ehr-jwks.json").string() << R"("}]})";
    // Both at once on an empty database: one applies the migrations, the other waits for it.
    ServeProcess a("replica-a.json", cfg.str(), ServeProcess::Start::later);
    ServeProcess b("replica-b.json", cfg.str(), ServeProcess::Start::later);
    a.listening();
    b.listening();
    REQUIRE(a.port != b.port);
    CHECK(a.request("GET", "/healthz").status == 200);
    CHECK(b.request("GET", "/healthz").status == 200);
    CHECK(pg.psql("SELECT value FROM calcalert_meta WHERE key = 'schema_version'") ==
          std::to_string(state::latest_schema_version()) + "\n");

    auto tok = [&](const std::string& path) { return system_clock_token(kIss, e.ec, lb + path); };
    const std::int64_t t = static_cast<std::int64_t>(::time(nullptr));
    const std::string body = harold_call_with_labs_at(fhir::format_datetime(t - 86400));
    const std::vector<std::string> card = {"metastatic-calcification-risk"};
    auto call = [&](ServeProcess& replica, const std::string& call_body, const std::string& token) {
        const Resp r = replica.request("POST", kPV, call_body, token);
        return Answer{r.status, r.status == 200 ? rules_of(r) : std::vector<std::string>{}};
    };

    // A jti is accepted once across the replicas: each replica writes the jtis it accepted in batches
    // (replay_flush_ms, 50 by default), and refuses a jti any replica wrote.
    auto jtis_written = [&](int n) {
        for (int i = 0; i < 200 && pg.psql("SELECT count(*) FROM cds_jti") != std::to_string(n) + "\n"; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return pg.psql("SELECT count(*) FROM cds_jti") == std::to_string(n) + "\n";
    };
    const std::string once = tok(kPV);
    const Resp first = a.request("POST", kPV, body, once);
    REQUIRE_MESSAGE(first.status == 200, first.body);
    REQUIRE(rules_of(first) == card);
    CHECK(a.request("POST", kPV, body, once).status == 401);  // the replica that took it: at once
    REQUIRE(jtis_written(1));
    const Resp replay = b.request("POST", kPV, body, once);
    CHECK(replay.status == 401);
    CHECK(replay.body.empty());
    CHECK(metric(b.request("GET", "/metrics").body, "calcalert_cds_auth_failures_total") == 1);
    const std::string other = tok(kPV);
    CHECK(call(b, body, other) == Answer{200, card});
    REQUIRE(jtis_written(2));
    CHECK(call(a, body, other).first == 401);
    // Presented to both within one batch, a token may be accepted by both: the replica whose batch
    // finds it written already says so in its log.
    const std::string twice = tok(kPV);
    CHECK(call(a, body, twice).first == 200);
    if (call(b, body, twice).first == 200) {
        bool said = false;
        for (int i = 0; i < 200 && !said; ++i) {
            said = (a.stderr_text() + b.stderr_text()).find("a token was accepted twice") != std::string::npos;
            if (!said) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        CHECK_MESSAGE(said, b.stderr_text().substr(0, 2000));
        CHECK(metric(a.request("GET", "/metrics").body, "calcalert_cds_late_replays_total") +
                  metric(b.request("GET", "/metrics").body, "calcalert_cds_late_replays_total") ==
              1);
    } else {
        MESSAGE("the replay came after the first replica's batch was written: refused");
    }
    REQUIRE(jtis_written(3));

    // A card returned by A and overridden through A is hidden from B (same issuer, same patient) ...
    const std::string uuid = json(first.body)["cards"][0]["uuid"].GetString();
    const Resp fb = a.request("POST", kPV + "/feedback", override_feedback(uuid, fhir::format_datetime(t)), tok(kPV + "/feedback"));
    CHECK_MESSAGE(fb.status == 200, fb.body);
    CHECK(call(b, body, tok(kPV)) == Answer{200, {}});
    CHECK(call(a, body, tok(kPV)) == Answer{200, {}});
    // ... until the evidence changes (newer labs): then B shows it again; overridden through B, A hides it.
    const std::string newer = harold_call_with_labs_at(fhir::format_datetime(t - 3600));
    CHECK(call(b, newer, tok(kPV)) == Answer{200, card});
    CHECK(b.request("POST", kPV + "/feedback", override_feedback(uuid, fhir::format_datetime(t)), tok(kPV + "/feedback")).status == 200);
    CHECK(call(a, newer, tok(kPV)) == Answer{200, {}});
    CHECK(pg.psql("SELECT count(*) FROM cds_feedback WHERE outcome = 'overridden'") == "2\n");

    // The database away: calls that need it are refused (401: no replay check, no acceptance), the
    // replicas stay up and answer /healthz; once it is back, the next call is answered.
    pg.stop_server();
    for (ServeProcess* replica : {&a, &b}) {
        CHECK(call(*replica, newer, tok(kPV)).first == 401);
        CHECK(replica->request("POST", kPV + "/feedback", override_feedback(uuid, fhir::format_datetime(t)), tok(kPV + "/feedback"))
                  .status == 401);
        CHECK(replica->request("GET", "/healthz").status == 200);
    }
    pg.start_server();
    CHECK(call(a, newer, tok(kPV)) == Answer{200, {}});  // the override is still there
    CHECK(call(b, newer, tok(kPV)) == Answer{200, {}});
    CHECK(call(a, body, once).first == 401);  // and so are the jtis
    // A restart between two calls: the call that meets the dropped connection is refused (libpq
    // learns of it only then), the next one is answered.
    pg.restart();
    for (ServeProcess* replica : {&a, &b}) {
        CHECK(call(*replica, newer, tok(kPV)).first == 401);
        CHECK(call(*replica, newer, tok(kPV)) == Answer{200, {}});
        CHECK(call(*replica, body, tok(kPV)) == Answer{200, card});  // the evidence overridden before
    }
    CHECK(a.running());
    CHECK(b.running());
    for (ServeProcess* replica : {&a, &b}) {
        const std::string err = replica->stderr_text();
        CHECK_MESSAGE(err.find("replay check failed") != std::string::npos, err.substr(0, 2000));
        std::istringstream lines(err);
        for (std::string line; std::getline(lines, line);)
            CHECK_MESSAGE(line.rfind("{\"", 0) == 0, line);  // JSON lines only (no libpq notice among them)
        const int status = replica->stop();
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 0);
    }
}

TEST_CASE("a card and the DetectedIssue the poller writes for the same patient agree") {
    Env& e = env();
    // A FHIR server of its own, holding only this patient, for the poller.
    test::SandboxOptions so;
    so.extra_args = {"--no-validate"};
    test::SandboxServer own(so);
    fhir::ClientOptions copts;
    copts.base_url = own.base_url();
    fhir::FhirClient client(copts);
    Env::seed(client, cdstest::cohort_patient(kCohort, "margaret-okafor").resources);
    auto poll_store = state::open_sqlite_store(":memory:");
    poll::Poller poller(client, *poll_store, e.term, e.catalog, poll::PollOptions{});
    poller.run_once(kNow);

    auto r = start([&own](ServeConfig& c) { c.fhir_servers = {own.base_url()}; });
    const Resp c = http(*r, "POST", kPV, cdstest::call_body("patient-view", "margaret-okafor", "", own.base_url(), kEhrToken),
                        token(*r, kPV));
    REQUIRE_MESSAGE(c.status == 200, c.body);
    auto cards = json(c.body);
    REQUIRE(cards["cards"].Size() == 1);
    const auto& card = cards["cards"][0];
    const std::string uuid = card["uuid"].GetString();
    const auto page = client.get_resource("DetectedIssue?identifier=urn:calcalert:detected-issue%7C" + uuid);
    REQUIRE(page["entry"].Size() == 1);
    const auto& issue = page["entry"][0]["resource"];
    const auto& ext = card["extension"][mappings::kCardExtension];
    CHECK(std::string(issue["identifier"][0]["value"].GetString()) == uuid);
    CHECK(std::string(ext["identifier"]["value"].GetString()) == uuid);
    CHECK(std::string(issue["code"]["coding"][0]["code"].GetString()) == card["source"]["topic"]["code"].GetString());
    CHECK(std::string(issue["severity"].GetString()) == ext["severity"].GetString());
    CHECK(std::string(card["indicator"].GetString()) == "critical");
    REQUIRE(issue["evidence"].Size() == ext["evidence"].Size());
    for (rapidjson::SizeType i = 0; i < ext["evidence"].Size(); ++i)
        CHECK(std::string(ext["evidence"][i]["label"].GetString()) + ": " + ext["evidence"][i]["text"].GetString() ==
              issue["evidence"][i]["code"][0]["text"].GetString());
}

TEST_CASE("calcalert serve: stops gracefully on SIGTERM; --insecure-dev only on loopback") {
    const fs::path bin = fs::path(CALCALERT_BINARY);
    const fs::path cfg = env().dir / "serve.json";
    std::ofstream(cfg) << R"({"state_file": ":memory:", "insecure_dev": true})";
    {
        const auto [code, out] = test::run_shell(bin.string() + " serve --config " + cfg.string() + " --bind 0.0.0.0 --port 0");
        CHECK(code == 4);
        CHECK(out.find("loopback") != std::string::npos);
    }
    ServeProcess serve("serve.json", R"({"state_file": ":memory:", "insecure_dev": true})");
    const Resp health = serve.request("GET", "/healthz");
    CHECK(health.status == 200);
    CHECK(health.meta.get("X-Calcalert-Insecure-Dev", "").size() > 0);
    const int status = serve.stop();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("calcalert serve: a body nested 120,000 levels deep is a 400 and the server keeps answering /healthz") {
    ServeProcess serve("serve-deep.json", R"({"state_file": ":memory:", "insecure_dev": true})");
    const std::string deep = std::string(120000, '[') + std::string(120000, ']');
    const std::string deep_objects = [] {
        std::string s;
        for (int i = 0; i < 120000; ++i) s += "{\"a\":";
        return s + "1" + std::string(120000, '}');
    }();
    for (const std::string& body : {deep, deep_objects, cdstest::call_body("patient-view", "a", "{\"observations\":" + deep + "}")}) {
        const Resp r = serve.request("POST", kPV, body);
        CHECK(r.status == 400);
        CHECK_MESSAGE(r.body.find("nested deeper than 100 levels") != std::string::npos, r.body.substr(0, 300));
        CHECK(serve.request("GET", "/healthz").status == 200);
    }
    CHECK(serve.request("POST", kPV + "/feedback", deep).status == 400);
    CHECK(serve.request("GET", "/healthz").status == 200);
    const int status = serve.stop();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("calcalert serve: 200 slow clients (a byte at a time) hold no worker; /healthz and calls are answered; "
          "each slow client is cut off with 408") {
    // One worker only: with a thread per connection, one slow client would already take it.
    ServeProcess serve("serve-slowloris.json",
                       R"({"state_file": ":memory:", "insecure_dev": true, "max_threads": 1, "request_timeout_ms": 3000})");
    std::vector<std::unique_ptr<RawClient>> slow;
    for (int i = 0; i < 200; ++i) {
        slow.push_back(std::make_unique<RawClient>(serve.port));
        REQUIRE(slow.back()->fd >= 0);
        // Half stall in the headers, half in the body.
        REQUIRE(slow.back()->send(i % 2 == 0 ? std::string("POST ") + kPV + " HTTP/1.1\r\nHost: x\r\n"
                                             : std::string("POST ") + kPV + " HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"));
    }
    const std::string call = cdstest::call_body("patient-view", "a", cdstest::null_prefetch());
    for (int round = 0; round < 5; ++round) {
        for (auto& c : slow) c->send("a");  // a byte each, well inside the timeout
        CHECK(serve.request("GET", "/healthz").status == 200);
        CHECK(serve.request("POST", kPV, call).status == 200);  // the one worker is free
    }
    // Past request_timeout_ms from their first byte, every slow client got a 408 and was closed.
    int timed_out = 0;
    for (auto& c : slow) timed_out += c->read_all().rfind("HTTP/1.1 408 ", 0) == 0 ? 1 : 0;
    CHECK(timed_out == 200);
    const std::string metrics = serve.request("GET", "/metrics").body;
    CHECK(metric(metrics, "calcalert_http_rejected_total{reason=\"timeout\"}") == 200);
    CHECK(serve.request("GET", "/healthz").status == 200);
}

TEST_CASE("calcalert serve: saturated, a call gets 503 with Retry-After at once (counted in /metrics); a call's "
          "fhirServer reads end at its deadline") {
    SilentServer fhir;  // every fallback read hangs
    ServeProcess serve("serve-saturated.json",
                       R"({"state_file": ":memory:", "insecure_dev": true, "max_threads": 1, "max_queued": 1,
                           "call_deadline_ms": 2000, "fhir_timeout_ms": 60000, "fhir_servers": [")" +
                           fhir.base_url() + R"("]})");
    // Missing prefetch: the service reads it from the silent fhirServer.
    const std::string call = cdstest::call_body("patient-view", "a", "", fhir.base_url(), "ehr-token-0123456789");
    std::vector<Resp> answers(4);
    std::vector<std::thread> callers;
    for (std::size_t i = 0; i < answers.size(); ++i) {
        callers.emplace_back([&, i] { answers[i] = serve.request("POST", kPV, call); });
        std::this_thread::sleep_for(std::chrono::milliseconds(100));  // in order: running, queued, refused, refused
    }
    CHECK(serve.request("GET", "/healthz").status == 200);  // answered without a worker
    for (auto& t : callers) t.join();
    int refused = 0, deadline = 0;
    for (const auto& a : answers) {
        if (a.status == 503) {
            ++refused;
            CHECK(a.meta.get("Retry-After", "") == "1");
            CHECK(a.body.find("OperationOutcome") != std::string::npos);
        } else {
            CHECK_MESSAGE(a.status == 412, a.body);
            CHECK_MESSAGE(a.body.find("the caller's deadline") != std::string::npos, a.body);
            ++deadline;
        }
    }
    CHECK(deadline >= 1);  // the running call: its reads stopped at call_deadline_ms
    CHECK(refused >= 2);   // the calls beyond one running and one queued (the queued one may also be refused)
    const std::string metrics = serve.request("GET", "/metrics").body;
    CHECK(metric(metrics, "calcalert_http_rejected_total{reason=\"saturated\"}") == refused);
}

TEST_CASE("calcalert serve: a caller that hangs up while its call runs: the answer goes nowhere else, the server goes on") {
    SilentServer fhir;  // every fallback read hangs: the call runs until call_deadline_ms
    ServeProcess serve("serve-hangup.json",
                       R"({"state_file": ":memory:", "insecure_dev": true, "call_deadline_ms": 1500, "fhir_timeout_ms": 60000,
                           "fhir_servers": [")" + fhir.base_url() + R"("]})");
    const std::string call = cdstest::call_body("patient-view", "a", "", fhir.base_url(), "ehr-token-0123456789");
    const std::string request = "POST " + kPV + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                                std::to_string(call.size()) + "\r\n\r\n" + call;
    {
        RawClient leaving(serve.port);
        REQUIRE(leaving.send(request));
        std::this_thread::sleep_for(std::chrono::milliseconds(200));  // its call runs
        const linger abort{1, 0};  // the close resets the connection (as a killed client's does)
        ::setsockopt(leaving.fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
    }  // hangs up
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the server has seen it
    // Connections opened meanwhile (they could be given the descriptor the call's worker still
    // writes to, were it closed at the hang-up) get their own answers only.
    std::vector<std::unique_ptr<RawClient>> others;
    for (int i = 0; i < 4; ++i) others.push_back(std::make_unique<RawClient>(serve.port));
    std::this_thread::sleep_for(std::chrono::milliseconds(1700));  // the call has ended and answered
    for (auto& o : others) {
        REQUIRE(o->send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        const std::string got = o->read_all();
        CHECK_MESSAGE(got.rfind("HTTP/1.1 200 ", 0) == 0, got.substr(0, 300));
        CHECK_MESSAGE(got.find("HTTP/1.1", 1) == std::string::npos, got.substr(0, 600));  // one answer, its own
    }
    CHECK(serve.request("GET", "/healthz").status == 200);
}

TEST_CASE("calcalert serve: malformed and oversized requests are refused by status, and the server stays up") {
    ServeProcess serve("serve-malformed.json", R"({"state_file": ":memory:", "insecure_dev": true, "max_body_bytes": 4096})");
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1 400 "},
        {"POST " + kPV + " HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", "HTTP/1.1 400 "},
        {"POST " + kPV + " HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", "HTTP/1.1 413 "},
        {"POST " + kPV + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n", "HTTP/1.1 413 "},
        {"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(40000, 'a') + "\r\n\r\n", "HTTP/1.1 431 "},
        {"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", "HTTP/1.1 505 "},
        {"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", "HTTP/1.1 501 "},
        {"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n", "HTTP/1.1 417 "},
        {"NOT A REQUEST\r\n\r\n", "HTTP/1.1 400 "},
        // Chunked and pipelined requests are read whole.
        {"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 "},
    };
    for (const auto& [bytes, expected] : cases) {
        RawClient c(serve.port);
        REQUIRE(c.send(bytes));
        const std::string got = c.read_all();
        CHECK_MESSAGE(got.rfind(expected, 0) == 0, bytes.substr(0, 80), " -> ", got.substr(0, 200));
    }
    {
        RawClient c(serve.port);
        const std::string body = R"({"hook":"patient-view","hookInstance":"x","context":{"patientId":"a"},"prefetch":{"observations":null,"conditions":null,"procedures":null,"patient":null}})";
        REQUIRE(c.send("POST " + kPV + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"));
        char buf[64] = {};
        REQUIRE(::recv(c.fd, buf, 25, MSG_WAITALL) == 25);
        CHECK(std::string(buf, 25) == "HTTP/1.1 100 Continue\r\n\r\n");
        const auto half = body.size() / 2;
        REQUIRE(c.send(hex(half) + "\r\n" + body.substr(0, half) + "\r\n"));
        REQUIRE(c.send(hex(body.size() - half) + "\r\n" + body.substr(half) + "\r\n0\r\n\r\n"));
        const std::string got = c.read_all();
        CHECK_MESSAGE(got.rfind("HTTP/1.1 200 ", 0) == 0, got.substr(0, 300));
        CHECK(got.find("\"cards\"") != std::string::npos);
    }
    {
        RawClient c(serve.port);
        REQUIRE(c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        const std::string got = c.read_all();
        CHECK(got.find("HTTP/1.1 200 ") == 0);
        CHECK(got.find("HTTP/1.1 200 ", 10) != std::string::npos);  // both pipelined requests answered
    }
    const std::string metrics = serve.request("GET", "/metrics").body;
    CHECK(metric(metrics, "calcalert_http_rejected_total{reason=\"too-large\"}") == 3);
    CHECK(metric(metrics, "calcalert_http_rejected_total{reason=\"malformed\"}") == 6);
    CHECK(serve.request("GET", "/healthz").status == 200);
}

TEST_CASE("calcalert serve: a connection over max_connections gets 503 with Retry-After and is closed") {
    ServeProcess serve("serve-connections.json", R"({"state_file": ":memory:", "insecure_dev": true, "max_connections": 4})");
    std::vector<std::unique_ptr<RawClient>> held;
    for (int i = 0; i < 4; ++i) {
        held.push_back(std::make_unique<RawClient>(serve.port));
        REQUIRE(held.back()->send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));  // kept alive after its answer
        char buf[512];
        REQUIRE(::recv(held.back()->fd, buf, sizeof buf, 0) > 0);
    }
    RawClient over(serve.port);
    const std::string got = over.read_all();
    CHECK_MESSAGE(got.rfind("HTTP/1.1 503 ", 0) == 0, got.substr(0, 200));
    CHECK(got.find("Retry-After: 1\r\n") != std::string::npos);
    held.pop_back();  // one leaves: room for the next
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const Resp metrics = serve.request("GET", "/metrics");
    CHECK(metrics.status == 200);
    CHECK(metric(metrics.body, "calcalert_http_rejected_total{reason=\"connections\"}") == 1);
}
