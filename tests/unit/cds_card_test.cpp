#include <doctest/doctest.h>

#include <rapidjson/document.h>

#include "fhir/resource_reader.hpp"
#include "mappings/cds_card.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/fact_builder.hpp"
#include "test_support.hpp"

using namespace calcalert;

namespace {

std::vector<rules::Finding> cohort_findings(const std::string& patient) {
    mappings::FactBuilder b(test::terminology());
    fhir::read_path(std::string(CALCALERT_TEST_DIR) + "/../examples/cohort/cohort.json", b);
    return rules::evaluate(b.patients().at(patient), test::kNow, test::catalog()).findings;
}

std::size_t utf8_length(const std::string& s) {
    std::size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

}  // namespace

TEST_CASE("a card and the DetectedIssue of the same finding agree on identifier, rule, severity and evidence") {
    for (const char* patient : {"Patient/margaret-okafor", "Patient/harold-kim", "Patient/amara-osei"}) {
        const auto findings = cohort_findings(patient);
        REQUIRE(!findings.empty());
        for (const auto& f : findings) {
            rapidjson::Document card, issue;
            card.Parse(mappings::card_json(f, {}).c_str());
            issue.Parse(mappings::detected_issue_json(f, test::kNow, {}).c_str());
            REQUIRE(card.IsObject());
            REQUIRE(issue.IsObject());
            const std::string id = issue["identifier"][0]["value"].GetString();
            CHECK(std::string(card["uuid"].GetString()) == id);
            const auto& ext = card["extension"][mappings::kCardExtension];
            CHECK(std::string(ext["identifier"]["value"].GetString()) == id);
            CHECK(std::string(ext["identifier"]["system"].GetString()) == issue["identifier"][0]["system"].GetString());
            CHECK(std::string(card["source"]["topic"]["code"].GetString()) == issue["code"]["coding"][0]["code"].GetString());
            CHECK(std::string(card["source"]["topic"]["system"].GetString()) == issue["code"]["coding"][0]["system"].GetString());
            CHECK(std::string(ext["severity"].GetString()) == issue["severity"].GetString());
            const std::string sev = issue["severity"].GetString();
            const std::string indicator = card["indicator"].GetString();
            CHECK(indicator == (sev == "high" ? "critical" : sev == "moderate" ? "warning" : "info"));
            REQUIRE(ext["evidence"].Size() == issue["evidence"].Size());
            for (rapidjson::SizeType i = 0; i < ext["evidence"].Size(); ++i) {
                const std::string card_text =
                    std::string(ext["evidence"][i]["label"].GetString()) + ": " + ext["evidence"][i]["text"].GetString();
                CHECK(card_text == issue["evidence"][i]["code"][0]["text"].GetString());
            }
            CHECK(utf8_length(card["summary"].GetString()) < 140);
            CHECK(std::string(card["source"]["label"].GetString()).size() > 0);
            CHECK(card["overrideReasons"].Size() >= 1);
            // The detail names the exact values (every evidence text appears, markdown-escaped).
            const std::string detail = card["detail"].GetString();
            for (const auto& e : f.evidence) CHECK(detail.find(mappings::markdown_escape(e.text)) != std::string::npos);
            CHECK(detail.find(id) != std::string::npos);
        }
    }
}

TEST_CASE("margaret-okafor's suspected calciphylaxis is a critical card with values and dates") {
    const auto findings = cohort_findings("Patient/margaret-okafor");
    REQUIRE(findings.size() == 1);
    const std::string card = mappings::card_json(findings[0], {});
    CHECK(card.find("\"indicator\":\"critical\"") != std::string::npos);
    CHECK(card.find("78.8") != std::string::npos);
    CHECK(card.find("Nov 2026") != std::string::npos);
    CHECK(mappings::card_uuid(findings[0]) == mappings::alert_identifier("Patient/margaret-okafor", "calciphylaxis-suspected"));
}

TEST_CASE("markdown escaping and indicators") {
    CHECK(mappings::markdown_escape("a*b_c [x] <y> #1 |") == "a\\*b\\_c \\[x\\] \\<y\\> \\#1 \\|");
    CHECK(mappings::card_indicator(rules::RuleSeverity::high) == "critical");
    CHECK(mappings::card_indicator(rules::RuleSeverity::moderate) == "warning");
    CHECK(mappings::card_indicator(rules::RuleSeverity::low) == "info");
}

TEST_CASE("card links: a CDS Hooks Link (label, url, type) per link; none without links") {
    const auto findings = cohort_findings("Patient/harold-kim");
    REQUIRE(!findings.empty());
    rapidjson::Document without, with;
    without.Parse(mappings::card_json(findings[0], {}).c_str());
    CHECK_FALSE(without.HasMember("links"));
    with.Parse(mappings::card_json(findings[0], {}, {{"Explain \"this\"", "https://cds.example.org/explain/abc", "absolute"}}).c_str());
    REQUIRE(with["links"].IsArray());
    REQUIRE(with["links"].Size() == 1);
    CHECK(std::string(with["links"][0]["label"].GetString()) == "Explain \"this\"");
    CHECK(std::string(with["links"][0]["url"].GetString()) == "https://cds.example.org/explain/abc");
    CHECK(std::string(with["links"][0]["type"].GetString()) == "absolute");
    CHECK(with["links"][0].MemberCount() == 3);
}
