#include "adapters/poll/server_check.hpp"

#include <algorithm>
#include <set>
#include <sstream>

#include "adapters/poll/history_reader.hpp"
#include "fhir/views.hpp"

namespace calcalert::poll {
namespace {

using Json = rapidjson::Value;

std::set<std::string> names_in(const Json* array, const char* key) {
    std::set<std::string> out;
    if (array && array->IsArray())
        for (const auto& v : array->GetArray())
            if (v.IsObject()) out.insert(fhir::string_or_empty(v, key));
    return out;
}

std::set<std::string> strings_in(const Json* array) {
    std::set<std::string> out;
    if (array && array->IsArray())
        for (const auto& v : array->GetArray())
            if (v.IsString()) out.insert(v.GetString());
    return out;
}

// The server part of a CapabilityStatement (rest[mode=server], else the first).
const Json* server_rest(const Json& cs) {
    const Json* rest = fhir::member(cs, "rest");
    if (!rest || !rest->IsArray() || rest->Empty()) return nullptr;
    for (const auto& r : rest->GetArray())
        if (r.IsObject() && fhir::string_or_empty(r, "mode") == "server") return &r;
    return (*rest)[0].IsObject() ? &(*rest)[0] : nullptr;
}

const Json* resource_of(const Json* rest, const std::string& type) {
    if (!rest) return nullptr;
    if (const Json* res = fhir::member(*rest, "resource"); res && res->IsArray())
        for (const auto& r : res->GetArray())
            if (r.IsObject() && fhir::string_or_empty(r, "type") == type) return &r;
    return nullptr;
}

bool flag(const Json* o, const char* key) {
    const Json* v = o ? fhir::member(*o, key) : nullptr;
    return v && v->IsBool() && v->GetBool();
}

std::string join(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
    return out;
}

struct Reader {
    const Json* rest;
    std::set<std::string> common_params;  // rest.searchParam: every resource type

    std::set<std::string> params(const std::string& type) const {
        std::set<std::string> p = common_params;
        if (const Json* r = resource_of(rest, type)) {
            const auto own = names_in(fhir::member(*r, "searchParam"), "name");
            p.insert(own.begin(), own.end());
        }
        return p;
    }
    std::set<std::string> interactions(const std::string& type) const {
        const Json* r = resource_of(rest, type);
        return r ? names_in(fhir::member(*r, "interaction"), "code") : std::set<std::string>{};
    }
};

// A search the change feed and the history reader make: needed, unless the server lists no search
// parameters for the type at all (then it is tried, and a refusal stops the pass with its error).
Check search_check(const Reader& r, const std::string& type, const std::vector<std::vector<std::string>>& needed,
                   const std::string& what) {
    Check c{what, Verdict::ok, "", ""};
    const auto have = r.params(type);
    if (!resource_of(r.rest, type)) {
        c.verdict = Verdict::missing;
        c.detail = type + " is not in the CapabilityStatement";
        c.consequence = "calcalert reads " + type + " resources: it cannot poll this server";
        return c;
    }
    std::vector<std::string> absent;
    for (const auto& alternatives : needed)
        if (std::none_of(alternatives.begin(), alternatives.end(), [&](const std::string& p) { return have.count(p) > 0; }))
            absent.push_back(alternatives.front());
    if (absent.empty()) {
        std::vector<std::string> shown;
        for (const auto& alternatives : needed)
            for (const auto& p : alternatives)
                if (have.count(p)) {
                    shown.push_back(p);
                    break;
                }
        c.detail = "searchParam " + join(shown);
        return c;
    }
    if (r.params(type).size() == r.common_params.size()) {
        c.verdict = Verdict::gap;
        c.detail = type + " lists no search parameters";
        c.consequence = "calcalert tries " + join(absent) + " anyway; a refusal stops the pass with the server's error";
        return c;
    }
    c.verdict = Verdict::missing;
    c.detail = "no searchParam " + join(absent);
    c.consequence = "calcalert cannot read " + type + " this way";
    return c;
}

}  // namespace

const char* to_string(Verdict v) {
    switch (v) {
        case Verdict::ok: return "ok";
        case Verdict::gap: return "gap";
        case Verdict::missing: return "missing";
    }
    return "missing";
}

std::vector<Check> assess(const ServerFacts& f) {
    std::vector<Check> out;
    if (!f.capability || !f.capability->IsObject()) {
        out.push_back({"CapabilityStatement", Verdict::missing, f.capability_error.empty() ? "none" : f.capability_error,
                       "calcalert needs GET [base]/metadata to read the server"});
        return out;
    }
    const Json& cs = *f.capability;
    const std::string version = fhir::string_or_empty(cs, "fhirVersion");
    out.push_back({"FHIR R4", version.rfind("4.0", 0) == 0 ? Verdict::ok : Verdict::missing, "fhirVersion " + (version.empty() ? "(none)" : version),
                   version.rfind("4.0", 0) == 0 ? "" : "calcalert reads and writes FHIR R4 (4.0.x) only"});
    const Json* rest = server_rest(cs);
    Reader r{rest, rest ? names_in(fhir::member(*rest, "searchParam"), "name") : std::set<std::string>{}};

    out.push_back(search_check(r, "Observation", {{"code"}, {"patient", "subject"}, {"date"}}, "Observation search by code, patient and date"));
    out.push_back(search_check(r, "Observation", {{"_lastUpdated"}}, "Observation change feed (_lastUpdated)"));
    out.push_back(search_check(r, "Condition", {{"patient", "subject"}, {"_lastUpdated"}}, "Condition search by patient and _lastUpdated"));
    {
        const LabCodeSearch how = lab_code_search_from_capabilities(cs);
        Check c{"lab codes in panels and components", how == LabCodeSearch::code_and_panels ? Verdict::gap : Verdict::ok,
                std::string("search ") + to_string(how), ""};
        if (how == LabCodeSearch::code_and_panels)
            c.consequence = "no combo-code or component-code: laboratory Observations are also read whole to find codes in components";
        out.push_back(c);
    }
    {
        const auto di = r.interactions("DetectedIssue");
        std::vector<std::string> absent;
        for (const char* i : {"create", "update", "search-type"})
            if (!di.count(i)) absent.push_back(i);
        Check c{"DetectedIssue create, update and search", absent.empty() ? Verdict::ok : Verdict::missing, "", ""};
        if (absent.empty()) c.detail = "interactions create, update, search-type";
        else {
            c.detail = resource_of(rest, "DetectedIssue") ? "no interaction " + join(absent) : "DetectedIssue is not in the CapabilityStatement";
            c.consequence = "calcalert cannot write its alerts back (run `calcalert evaluate` on exports instead)";
        }
        out.push_back(c);
        const Json* res = resource_of(rest, "DetectedIssue");
        out.push_back({"conditional create (If-None-Exist)", flag(res, "conditionalCreate") ? Verdict::ok : Verdict::gap,
                       flag(res, "conditionalCreate") ? "conditionalCreate true" : "conditionalCreate not declared",
                       flag(res, "conditionalCreate") ? ""
                                                      : "a create is not deduplicated by the server: a write whose answer was lost may "
                                                        "create a second DetectedIssue, which the next pass finds and retires"});
        const std::string versioning = res ? fhir::string_or_empty(*res, "versioning") : "";
        out.push_back({"versioned update (If-Match)", versioning == "versioned-update" ? Verdict::ok : Verdict::gap,
                       "versioning " + (versioning.empty() ? std::string("(none)") : versioning),
                       versioning == "versioned-update" ? ""
                                                        : "amendments are sent with If-Match all the same; a server that ignores it may "
                                                          "let an edit made meanwhile be overwritten"});
    }
    {
        const auto system = rest ? names_in(fhir::member(*rest, "interaction"), "code") : std::set<std::string>{};
        const bool tx = system.count("transaction") > 0, batch = system.count("batch") > 0;
        Check c{"batch and transaction Bundles", tx || batch ? Verdict::ok : Verdict::gap, "", ""};
        c.detail = tx && batch ? "transaction, batch" : tx ? "transaction only" : batch ? "batch only" : "neither";
        if (!tx && !batch) c.consequence = "each write goes on its own (slower; give --batch 1)";
        else if (!batch) c.consequence = "give --bundle-type transaction";
        out.push_back(c);
    }
    {
        std::set<std::string> ops = rest ? names_in(fhir::member(*rest, "operation"), "name") : std::set<std::string>{};
        for (const char* type : {"Patient", "Group"})
            if (const Json* res = resource_of(rest, type)) {
                const auto o = names_in(fhir::member(*res, "operation"), "name");
                ops.insert(o.begin(), o.end());
            }
        const auto inst = strings_in(fhir::member(cs, "instantiates"));
        const bool bulk = ops.count("export") || ops.count("patient-export") || ops.count("group-export") ||
                          inst.count("http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data");
        out.push_back({"Bulk Data $export", bulk ? Verdict::ok : Verdict::gap, bulk ? "export operation offered" : "not offered",
                       bulk ? "" : "a first run over a whole population reads by search (`poll --backfill bulk` needs it)"});
    }
    {
        Check c{"SMART Backend Services", Verdict::gap, "", ""};
        if (f.smart && f.smart->IsObject()) {
            const auto methods = strings_in(fhir::member(*f.smart, "token_endpoint_auth_methods_supported"));
            const auto algs = strings_in(fhir::member(*f.smart, "token_endpoint_auth_signing_alg_values_supported"));
            const std::string endpoint = fhir::string_or_empty(*f.smart, "token_endpoint");
            std::vector<std::string> usable;
            for (const char* a : {"ES384", "RS384"})
                if (algs.empty() || algs.count(a)) usable.push_back(a);
            if (!endpoint.empty() && (methods.empty() || methods.count("private_key_jwt")) && !usable.empty()) {
                c.verdict = Verdict::ok;
                c.detail = "token_endpoint " + endpoint + ", private_key_jwt " + join(usable);
            } else {
                c.detail = endpoint.empty() ? "no token_endpoint" : "no private_key_jwt with ES384 or RS384";
                c.consequence = "give a bearer token (--token-file) from the site's identity provider";
            }
        } else {
            c.detail = "no .well-known/smart-configuration";
            c.consequence = "give a bearer token (--token-file), or none for an open server";
        }
        out.push_back(c);
    }
    if (!f.auth_error.empty()) {
        out.push_back({"access token", Verdict::missing, f.auth_error, "calcalert cannot read the server without it"});
    } else if (f.granted_scope) {
        // What the granted scopes allow, per type and operation (c, r, u, d, s): SMART v2
        // (system/Observation.rs, system/*.cruds) or v1 (system/Observation.read: r and s;
        // .write: c, u and d; .*: everything).
        std::istringstream in(*f.granted_scope);
        std::vector<std::string> scopes;
        for (std::string sc; in >> sc;) scopes.push_back(sc);
        auto allows = [&](const std::string& type, char op) {
            for (const auto& sc : scopes) {
                const auto dot = sc.find('.');
                if (sc.rfind("system/", 0) != 0 || dot == std::string::npos) continue;
                const std::string t = sc.substr(7, dot - 7), perms = sc.substr(dot + 1);
                if (t != type && t != "*") continue;
                if (perms == "*" || (perms == "read" && (op == 'r' || op == 's')) ||
                    (perms == "write" && (op == 'c' || op == 'u' || op == 'd')))
                    return true;
                if (perms.find_first_not_of("cruds") == std::string::npos && perms.find(op) != std::string::npos) return true;
            }
            return false;
        };
        std::vector<std::string> absent;
        for (const auto& [type, ops] : std::vector<std::pair<std::string, std::string>>{
                 {"Observation", "rs"}, {"Condition", "rs"}, {"Procedure", "rs"}, {"Patient", "r"}, {"DetectedIssue", "crus"}}) {
            std::string lacking;
            for (char op : ops)
                if (!allows(type, op)) lacking.push_back(op);
            if (!lacking.empty()) absent.push_back("system/" + type + "." + lacking);
        }
        out.push_back({"access token scopes", absent.empty() ? Verdict::ok : Verdict::gap,
                       f.granted_scope->empty() ? "granted (scope not said)" : "granted " + *f.granted_scope,
                       absent.empty() || f.granted_scope->empty() ? "" : "not granted: " + join(absent) + "; those reads or writes will be refused"});
    } else if (!f.auth.empty()) {
        out.push_back({"access token", Verdict::ok, f.auth, ""});
    }
    if (f.read_probe)
        out.push_back({"read access", f.read_probe->empty() ? Verdict::ok : Verdict::missing,
                       f.read_probe->empty() ? "Observation?_count=1 answered" : *f.read_probe,
                       f.read_probe->empty() ? "" : "calcalert cannot read the server with this authentication"});
    return out;
}

bool ready(const std::vector<Check>& checks) {
    return std::none_of(checks.begin(), checks.end(), [](const Check& c) { return c.verdict == Verdict::missing; });
}

std::string render(const std::vector<Check>& checks) {
    std::string out;
    for (const auto& c : checks) {
        std::string v = to_string(c.verdict);
        v.resize(8, ' ');
        out += v + c.what + ": " + c.detail;
        if (!c.consequence.empty()) out += " -- " + c.consequence;
        out += "\n";
    }
    return out;
}

}  // namespace calcalert::poll
