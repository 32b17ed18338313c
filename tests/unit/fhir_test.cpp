#include <doctest/doctest.h>

#include <sstream>
#include <vector>

#include "fhir/datetime.hpp"
#include "fhir/resource_reader.hpp"
#include "fhir/views.hpp"

using namespace calcalert::fhir;

namespace {

struct Collector : ResourceHandler {
    std::vector<std::string> seen;  // "Type@location"
    std::vector<Problem> problems;
    std::vector<std::string> resolved;
    void on_resource(const rapidjson::Value& r, std::string_view type, const Location& where,
                     const BundleContext* bundle) override {
        seen.push_back(std::string(type) + "@" + where.describe());
        if (bundle) {
            if (const Json* subj = member(r, "subject"))
                if (const Json* ref = member(*subj, "reference")) resolved.emplace_back(bundle->resolve(ref->GetString()));
        }
        if (type == "Observation") {  // type checks throw ElementError
            ObservationView v(r);
            if (const Json* q = v.value_quantity()) quantity(*q, "Observation.valueQuantity");
        }
    }
    void on_problem(const Problem& p) override { problems.push_back(p); }
};

rapidjson::Document parse(const char* text) {
    rapidjson::Document d;
    d.Parse(text);
    REQUIRE_FALSE(d.HasParseError());
    return d;
}

}  // namespace

TEST_CASE("FHIR dateTime forms parse to UTC epoch seconds") {
    CHECK(parse_datetime("1970-01-01T00:00:00Z") == 0);
    CHECK(parse_datetime("2026-11-25T12:00:00Z") == 1795608000);
    CHECK(parse_datetime("2026-11-25T13:00:00+01:00") == 1795608000);
    CHECK(parse_datetime("2026-11-25T07:00:00-05:00") == 1795608000);
    CHECK(parse_datetime("2026-11-25T12:00:00.123Z") == 1795608000);
    CHECK(parse_datetime("2026-11-25") == 1795564800);
    CHECK(parse_datetime("2026-11") == parse_datetime("2026-11-01"));
    CHECK(parse_datetime("2026") == parse_datetime("2026-01-01"));
    CHECK(parse_datetime("2024-02-29") == parse_datetime("2024-03-01").value() - 86400);
    CHECK_FALSE(parse_datetime("2023-02-29"));
    CHECK_FALSE(parse_datetime("2026-13-01"));
    CHECK_FALSE(parse_datetime("2026-11-25T12"));
    CHECK_FALSE(parse_datetime("25/11/2026"));
    CHECK_FALSE(parse_datetime(""));
    CHECK_FALSE(parse_datetime("2026-11-25T12:00:00Zjunk"));
    CHECK(format_datetime(1795608000) == "2026-11-25T12:00:00Z");
    CHECK(format_datetime(0) == "1970-01-01T00:00:00Z");
    CHECK(format_datetime(-1) == "1969-12-31T23:59:59Z");
    CHECK(format_datetime(-62135596800) == "0001-01-01T00:00:00Z");
    CHECK(format_datetime(253402300799) == "9999-12-31T23:59:59Z");
    CHECK(format_datetime(253402300800) == "10000-01-01T00:00:00Z");  // past four digits: as printf writes it
    CHECK(format_date_for_people(1795564800) == "2026-11-25");
    CHECK(format_date_for_people(1795608000) == "2026-11-25 12:00 UTC");
}

TEST_CASE("patient references in every form FHIR allows") {
    using Kind = PatientIdentity::Kind;
    auto id = [](std::string_view ref, const BundleContext* b = nullptr, std::string_view base = {}) {
        const PatientIdentity p = patient_identity(ref, b, base);
        return p.kind == Kind::patient ? p.id : p.kind == Kind::unresolved ? std::string("unresolved") : std::string("-");
    };
    CHECK(id("Patient/123") == "Patient/123");
    CHECK(id("Patient/123/_history/4") == "Patient/123");
    // Absolute: the local patient only on the server's own base (or a base of the Bundle's fullUrls).
    CHECK(id("https://ehr.example.org/fhir/Patient/abc") == "https://ehr.example.org/fhir/Patient/abc");
    CHECK(id("HTTPS://EHR.example.org/fhir/Patient/abc/_history/2") == "https://ehr.example.org/fhir/Patient/abc");
    CHECK(id("https://ehr.example.org/fhir/Patient/abc", nullptr, "https://ehr.example.org/fhir") == "Patient/abc");
    CHECK(id("https://ehr.example.org/fhirx/Patient/abc", nullptr, "https://ehr.example.org/fhir") ==
          "https://ehr.example.org/fhirx/Patient/abc");
    CHECK(id("urn:uuid:6d23a95e-7e18-4201-90ec-9501fa89fbd2") == "unresolved");
    CHECK(id("Group/1") == "-");
    CHECK(id("Patient/") == "-");
    CHECK(id("Patient?identifier=x") == "-");
    CHECK(id("https://ehr.example.org/fhir/Patient?identifier=x") == "-");
    CHECK(id("") == "-");

    rapidjson::Document d;
    d.Parse(R"({"resourceType":"Bundle","entry":[
      {"fullUrl":"urn:uuid:aaaa","resource":{"resourceType":"Patient","id":"p7"}},
      {"fullUrl":"urn:uuid:bbbb","resource":{"resourceType":"Patient"}},
      {"fullUrl":"https://ehr.example.org/fhir/Observation/o1","resource":{"resourceType":"Observation","id":"o1"}},
      {"fullUrl":"urn:uuid:cccc","resource":{"resourceType":"Group","id":"g1"}}]})");
    const BundleContext ctx = BundleContext::of(d);
    CHECK(id("urn:uuid:aaaa", &ctx) == "Patient/p7");
    CHECK(id("urn:uuid:bbbb", &ctx) == "urn:uuid:bbbb");  // a Patient without an id is its fullUrl
    CHECK(id("urn:uuid:dddd", &ctx) == "unresolved");
    CHECK(id("urn:uuid:cccc", &ctx) == "-");
    CHECK(id("https://ehr.example.org/fhir/Patient/p7", &ctx) == "Patient/p7");  // a base of the Bundle
    CHECK(id("https://other.example.net/fhir/Patient/p7", &ctx) == "https://other.example.net/fhir/Patient/p7");
}

TEST_CASE("a Bundle's entries are read with their index, and urn:uuid references resolve") {
    const char* text = R"({"resourceType":"Bundle","type":"transaction","entry":[
      {"fullUrl":"urn:uuid:p1","resource":{"resourceType":"Patient","id":"pat-1"}},
      {"fullUrl":"urn:uuid:o1","resource":{"resourceType":"Observation","id":"o1","subject":{"reference":"urn:uuid:p1"}}},
      {"request":{"method":"DELETE","url":"Observation/x"}}
    ]})";
    Collector c;
    auto stats = read_text(text, "b.json", c);
    CHECK(stats.resources == 2);
    CHECK(stats.rejected == 0);
    REQUIRE(c.seen.size() == 2);
    CHECK(c.seen[1] == "Observation@b.json entry[1] Observation/o1");
    REQUIRE(c.resolved.size() == 1);
    CHECK(c.resolved[0] == "Patient/pat-1");
}

TEST_CASE("a resource without resourceType is rejected by entry index; the others are read") {
    Collector c;
    auto stats = read_text(R"({"resourceType":"Bundle","type":"collection","entry":[
        {"resource":{"resourceType":"Patient","id":"a"}},
        {"resource":{"id":"nothing"}},
        {"resource":{"resourceType":"Patient","id":"b"}}]})",
                           "x.json", c);
    CHECK(stats.resources == 2);
    CHECK(stats.rejected == 1);
    REQUIRE(c.problems.size() == 1);
    CHECK(c.problems[0].describe() == "x.json entry[1]: Bundle.entry[1].resource: resource has no resourceType");
}

TEST_CASE("a string where a number belongs names the element path") {
    Collector c;
    auto stats = read_text(R"({"resourceType":"Observation","id":"o9","status":"final",
        "valueQuantity":{"value":"high","unit":"mg/dL"}})",
                           "o.json", c);
    CHECK(stats.rejected == 1);
    REQUIRE(c.problems.size() == 1);
    CHECK(c.problems[0].path == "Observation.valueQuantity.value");
    CHECK(c.problems[0].describe() ==
          "o.json Observation/o9: Observation.valueQuantity.value: expected a number, found a string");
}

TEST_CASE("truncated JSON is a fatal problem naming line and column") {
    Collector c;
    auto stats = read_text("{\"resourceType\":\"Bundle\",\n\"entry\":[{\"resource\":", "t.json", c);
    CHECK(stats.fatal);
    REQUIRE(c.problems.size() == 1);
    CHECK(c.problems[0].severity == Severity::fatal);
    CHECK(c.problems[0].message.find("line 2") != std::string::npos);
}

TEST_CASE("text that is not JSON is rejected without a crash") {
    Collector c;
    CHECK(read_text("<html><body>502 Bad Gateway</body></html>", "h.txt", c).fatal);
    CHECK(read_text("", "e.json", c).fatal);
    CHECK(read_text("   \n  ", "e.json", c).fatal);
    CHECK(read_text("[1,2,3]", "a.json", c).fatal);
    CHECK(read_text("{\"resourceType\": 5}", "n.json", c).rejected == 1);
}

TEST_CASE("NDJSON: one bad line is reported by number and the good lines are read") {
    std::istringstream in(
        "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n"
        "\n"
        "{\"resourceType\":\"Patient\",\"id\":\"b\"}\r\n"
        "{\"resourceType\":\"Patient\",\"id\":\n"
        "{\"resourceType\":\"Patient\",\"id\":\"c\"}\n");
    Collector c;
    auto stats = read_ndjson(in, "p.ndjson", c);
    CHECK(stats.resources == 3);
    CHECK(stats.rejected == 1);
    REQUIRE(c.problems.size() == 1);
    CHECK(c.problems[0].where.line == 4);
    CHECK(c.problems[0].describe().rfind("p.ndjson:4: JSON parse error", 0) == 0);
    CHECK(c.seen.back() == "Patient@p.ndjson:5 Patient/c");
}

TEST_CASE("NDJSON is detected in text without an .ndjson name") {
    Collector c;
    auto stats = read_text("{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n",
                           "<stdin>", c);
    CHECK(stats.resources == 2);
    CHECK_FALSE(stats.fatal);
}

TEST_CASE("ObservationView reads effective time in the order of clinical-rules §1.1") {
    auto d = parse(R"({"resourceType":"Observation","effectivePeriod":{"start":"2026-11-01"},"issued":"2026-11-03T00:00:00Z"})");
    ObservationView v(d);
    CHECK(v.effective().time == parse_datetime("2026-11-01"));
    CHECK(v.effective().element == "effectivePeriod.start");
    auto d2 = parse(R"({"resourceType":"Observation","issued":"2026-11-03T00:00:00Z"})");
    CHECK(ObservationView(d2).effective().element == "issued");
    auto d3 = parse(R"({"resourceType":"Observation","effectiveDateTime":"yesterday"})");
    CHECK_THROWS_AS(ObservationView(d3).effective(), ElementError);
}

TEST_CASE("views report wrong types with the FHIR path") {
    auto d = parse(R"({"resourceType":"Observation","code":{"coding":[{"system":"http://loinc.org","code":17861}]}})");
    try {
        ObservationView v(d);
        FAIL("expected an ElementError");
    } catch (const ElementError& e) {
        CHECK(e.path() == "Observation.code.coding[0].code");
    }
    auto q = parse(R"({"value":1,"comparator":"~"})");
    CHECK_THROWS_AS(quantity(q, "Observation.valueQuantity"), ElementError);
}

TEST_CASE("ConditionView statuses, onset and abatement") {
    auto d = parse(R"({"resourceType":"Condition","clinicalStatus":{"coding":[{"code":"relapse"}]},
        "verificationStatus":{"coding":[{"code":"provisional"}]},"onsetDateTime":"2025-01-02","abatementString":"later"})");
    ConditionView v(d);
    CHECK(v.clinical_status() == "relapse");
    CHECK(v.verification_status() == "provisional");
    CHECK(v.onset() == parse_datetime("2025-01-02"));
    CHECK(v.has_abatement());
    CHECK_FALSE(v.abatement());
}

TEST_CASE("OperationOutcome issues read as lines") {
    auto d = parse(R"({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found",
        "diagnostics":"Resource not found","expression":["Patient.id"]}]})");
    auto lines = operation_outcome_issues(d);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0] == "error (not-found): Resource not found [Patient.id]");
}
