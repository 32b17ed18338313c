// reconcile(): every create / amend / reopen / cancel / unchanged / retire case, as a table.
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <vector>

#include <rapidjson/document.h>

#include "adapters/poll/reconcile.hpp"

using namespace calcalert::poll;

namespace {

constexpr const char* kSystem = "urn:calcalert:detected-issue";

DesiredAlert finding(const std::string& hash, const std::string& severity = "high") {
    return {"id-1", "Patient/p", "calciphylaxis-risk", severity, hash, "Ca×P 80",
            R"({"resourceType":"DetectedIssue","status":"final","severity":")" + severity + R"(","detail":"new text"})"};
}

ServerAlert on_server(const std::string& status, const std::string& hash, const std::string& id = "di-1",
                      const std::string& severity = "high") {
    return {"id-1", id, "3", status, severity, "calciphylaxis-risk", hash,
            R"({"resourceType":"DetectedIssue","id":")" + id + R"(","meta":{"versionId":"3"},"status":")" + status +
                R"(","severity":")" + severity + R"(","detail":"old text"})"};
}

struct Case {
    const char* name;
    std::optional<DesiredAlert> finding;
    std::vector<ServerAlert> server;
    bool complete;
    std::vector<WriteAction> expected;  // in order
    std::vector<std::string> statuses;  // the status each write sets
    std::size_t unchanged;
};

std::string json_member(const std::string& json, const char* name) {
    rapidjson::Document d;
    d.Parse(json.c_str());
    REQUIRE_FALSE(d.HasParseError());
    const auto it = d.FindMember(name);
    return it == d.MemberEnd() || !it->value.IsString() ? std::string() : it->value.GetString();
}

}  // namespace

TEST_CASE("reconcile: the decision table") {
    const std::vector<Case> cases = {
        {"new finding, nothing on the server: create", finding("h1"), {}, true, {WriteAction::create}, {"final"}, 0},
        {"same evidence hash and severity: unchanged", finding("h1"), {on_server("final", "h1")}, true, {}, {}, 1},
        {"same hash, amended before: unchanged", finding("h1"), {on_server("amended", "h1")}, true, {}, {}, 1},
        {"other evidence hash: amend", finding("h2"), {on_server("final", "h1")}, true, {WriteAction::amend}, {"amended"}, 0},
        {"same hash, other severity: amend", finding("h1", "moderate"), {on_server("final", "h1")}, true,
         {WriteAction::amend}, {"amended"}, 0},
        {"no hash on the server (an older writer): amend", finding("h1"), {on_server("final", "")}, true,
         {WriteAction::amend}, {"amended"}, 0},
        {"holds again after a cancel: reopen", finding("h1"), {on_server("cancelled", "h1")}, true, {WriteAction::reopen},
         {"final"}, 0},
        {"entered-in-error by a person, same evidence: respected", finding("h1"), {on_server("entered-in-error", "h1")},
         true, {}, {}, 1},
        {"entered-in-error, new evidence: reopen", finding("h2"), {on_server("entered-in-error", "h1")}, true,
         {WriteAction::reopen}, {"final"}, 0},
        {"no longer holds: cancel", std::nullopt, {on_server("final", "h1")}, true, {WriteAction::cancel}, {"cancelled"}, 0},
        {"no longer holds, amended: cancel", std::nullopt, {on_server("amended", "h1")}, true, {WriteAction::cancel},
         {"cancelled"}, 0},
        {"no longer holds but data unreadable: kept", std::nullopt, {on_server("final", "h1")}, false, {}, {}, 0},
        {"already cancelled: nothing", std::nullopt, {on_server("cancelled", "h1")}, true, {}, {}, 0},
        {"entered-in-error, no finding: nothing", std::nullopt, {on_server("entered-in-error", "h1")}, true, {}, {}, 0},
        {"nothing either side: nothing", std::nullopt, {}, true, {}, {}, 0},
        {"unreadable data still creates what it finds", finding("h1"), {}, false, {WriteAction::create}, {"final"}, 0},
        {"a duplicate on the server: the lowest id kept, the other retired", finding("h1"),
         {on_server("final", "h1", "di-2"), on_server("final", "h1", "di-1")}, true, {WriteAction::retire_duplicate},
         {"entered-in-error"}, 1},
        {"a duplicate already retired: nothing", finding("h1"),
         {on_server("final", "h1", "di-1"), on_server("entered-in-error", "h1", "di-2")}, true, {}, {}, 1},
    };
    for (const auto& c : cases) {
        CAPTURE(c.name);
        std::vector<DesiredAlert> findings;
        if (c.finding) findings.push_back(*c.finding);
        const Reconciliation r = reconcile(findings, c.server, {"Patient/p", kSystem, c.complete});
        REQUIRE(r.writes.size() == c.expected.size());
        CHECK(r.unchanged == c.unchanged);
        for (std::size_t i = 0; i < r.writes.size(); ++i) {
            const PlannedWrite& w = r.writes[i];
            CHECK(w.action == c.expected[i]);
            CHECK(w.status == c.statuses[i]);
            CHECK(w.patient == "Patient/p");
            CHECK(w.identifier == "id-1");
            CHECK(json_member(w.resource, "status") == w.status);
            if (w.action == WriteAction::create) {
                CHECK(w.method == "POST");
                CHECK(w.url == "DetectedIssue");
                CHECK(w.if_none_exist == "identifier=urn%3Acalcalert%3Adetected-issue%7Cid-1");
                CHECK(w.if_match.empty());
            } else {
                CHECK(w.method == "PUT");
                CHECK(w.if_match == "W/\"3\"");
                CHECK(w.url == "DetectedIssue/" + json_member(w.resource, "id"));
            }
            // Amend and reopen write the new finding; cancel and retire keep the server's text.
            const bool new_text = w.action == WriteAction::amend || w.action == WriteAction::reopen ||
                                  w.action == WriteAction::create;
            CHECK(json_member(w.resource, "detail") == (new_text ? "new text" : "old text"));
        }
    }
    CHECK(std::string(to_string(WriteAction::retire_duplicate)) == "retire");
}

TEST_CASE("reconcile: the rendered text never decides an amend") {
    // Same hash and severity, the server's detail differs from what would be written now (a rule's
    // wording changed): unchanged.
    const Reconciliation r = reconcile({finding("h1")}, {on_server("final", "h1")}, {"Patient/p", kSystem, true});
    CHECK(r.writes.empty());
    CHECK(r.unchanged == 1);
}

TEST_CASE("reconcile: the server's meta is dropped and the id kept in an update") {
    const Reconciliation r = reconcile({}, {on_server("final", "h1", "abc")}, {"Patient/p", kSystem, true});
    REQUIRE(r.writes.size() == 1);
    rapidjson::Document d;
    d.Parse(r.writes[0].resource.c_str());
    CHECK_FALSE(d.HasMember("meta"));
    CHECK(std::string(d["id"].GetString()) == "abc");
    CHECK(r.writes[0].url == "DetectedIssue/abc");
}
