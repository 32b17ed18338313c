// What calcalert needs of a FHIR server, judged from what the server says of itself: its
// CapabilityStatement, its SMART configuration, and what a token grant returned. A pure function
// over those documents (`assess`), so `calcalert doctor` only fetches them and prints the checks,
// and every decision has a table test.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <rapidjson/document.h>

namespace calcalert::poll {

struct ServerFacts {
    const rapidjson::Value* capability = nullptr;  // the CapabilityStatement; null when /metadata failed
    std::string capability_error;                  // why it failed
    const rapidjson::Value* smart = nullptr;       // .well-known/smart-configuration; null when absent
    std::string auth;                              // how calcalert authenticates ("" none)
    std::optional<std::string> granted_scope;      // what the token grant returned, when one was made
    std::string auth_error;                        // a token that could not be had
    std::optional<std::string> read_probe;         // a search of Observation made: "" answered, else the error
};

enum class Verdict {
    ok,       // there
    gap,      // not there; calcalert works around it (the check says how)
    missing,  // not there; calcalert cannot poll this server without it
};
const char* to_string(Verdict v);

struct Check {
    std::string what;         // "Observation search by code and patient"
    Verdict verdict = Verdict::ok;
    std::string detail;       // what the server said
    std::string consequence;  // for a gap or missing: what calcalert does about it
};

std::vector<Check> assess(const ServerFacts& facts);
// True when no check is missing.
bool ready(const std::vector<Check>& checks);
// One line per check: "ok       FHIR R4: fhirVersion 4.0.1".
std::string render(const std::vector<Check>& checks);

}  // namespace calcalert::poll
