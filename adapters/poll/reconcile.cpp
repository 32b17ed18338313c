#include "adapters/poll/reconcile.hpp"

#include "adapters/poll/url.hpp"

#include <algorithm>
#include <cctype>
#include <map>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace calcalert::poll {
namespace {

bool is_open(const std::string& status) { return status != "cancelled" && status != "entered-in-error"; }

// `resource` with DetectedIssue.id = id, the status set, and the server's meta dropped.
std::string with_id_and_status(const std::string& resource, const std::string& id, const std::string& status) {
    rapidjson::Document d;
    d.Parse(resource.data(), resource.size());
    if (d.HasParseError() || !d.IsObject()) return resource;  // written by us or read from the server as an object
    auto& a = d.GetAllocator();
    d.RemoveMember("meta");
    d.RemoveMember("id");
    d.RemoveMember("status");
    d.AddMember("id", rapidjson::Value(id.c_str(), a), a);
    d.AddMember("status", rapidjson::Value(status.c_str(), a), a);
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    d.Accept(w);
    return sb.GetString();
}

PlannedWrite update(WriteAction action, const std::string& patient, const ServerAlert& on_server,
                    const std::string& resource, const std::string& status, const std::string& hash,
                    const std::string& summary) {
    PlannedWrite w;
    w.action = action;
    w.patient = patient;
    w.rule_id = on_server.rule_id;
    w.identifier = on_server.identifier;
    w.status = status;
    w.evidence_hash = hash;
    w.summary = summary;
    w.method = "PUT";
    w.url = "DetectedIssue/" + on_server.id;
    if (!on_server.version.empty()) w.if_match = "W/\"" + on_server.version + "\"";
    w.resource = with_id_and_status(resource, on_server.id, status);
    return w;
}

}  // namespace

const char* to_string(WriteAction a) {
    switch (a) {
        case WriteAction::create: return "create";
        case WriteAction::amend: return "amend";
        case WriteAction::reopen: return "reopen";
        case WriteAction::cancel: return "cancel";
        case WriteAction::retire_duplicate: return "retire";
    }
    return "?";
}

Reconciliation reconcile(const std::vector<DesiredAlert>& findings, const std::vector<ServerAlert>& on_server,
                         const ReconcileOptions& options) {
    Reconciliation out;

    // One resource per identifier: the lowest id is the alert, any other is a duplicate to retire.
    std::map<std::string, std::vector<const ServerAlert*>> by_identifier;
    for (const auto& s : on_server) by_identifier[s.identifier].push_back(&s);
    std::map<std::string, const ServerAlert*> kept;
    for (auto& [identifier, list] : by_identifier) {
        std::sort(list.begin(), list.end(), [](const ServerAlert* a, const ServerAlert* b) { return a->id < b->id; });
        kept[identifier] = list.front();
    }

    std::map<std::string, std::string> patient_of;  // identifier -> patient (from the findings)
    for (const auto& f : findings) {
        patient_of[f.identifier] = f.patient;
        const auto it = kept.find(f.identifier);
        if (it == kept.end()) {
            PlannedWrite w;
            w.action = WriteAction::create;
            w.patient = f.patient;
            w.rule_id = f.rule_id;
            w.identifier = f.identifier;
            w.status = "final";
            w.evidence_hash = f.evidence_hash;
            w.summary = f.summary;
            w.method = "POST";
            w.url = "DetectedIssue";
            w.if_none_exist = "identifier=" + url_encode(options.identifier_system + "|" + f.identifier);
            w.resource = f.resource;
            out.writes.push_back(std::move(w));
            continue;
        }
        const ServerAlert& s = *it->second;
        const bool same = !s.evidence_hash.empty() && s.evidence_hash == f.evidence_hash && s.severity == f.severity;
        if (s.status == "cancelled" || (s.status == "entered-in-error" && !same)) {
            PlannedWrite w = update(WriteAction::reopen, f.patient, s, f.resource, "final", f.evidence_hash, f.summary);
            w.rule_id = f.rule_id;
            out.writes.push_back(std::move(w));
        } else if (same) {
            ++out.unchanged;
        } else {
            PlannedWrite w = update(WriteAction::amend, f.patient, s, f.resource, "amended", f.evidence_hash, f.summary);
            w.rule_id = f.rule_id;
            out.writes.push_back(std::move(w));
        }
    }

    for (const auto& [identifier, s] : kept) {
        if (patient_of.count(identifier) || !is_open(s->status)) continue;
        if (!options.complete) {
            ++out.kept_while_incomplete;
            continue;
        }
        out.writes.push_back(update(WriteAction::cancel, options.patient, *s, s->resource, "cancelled", s->evidence_hash, "no longer holds"));
    }

    for (const auto& [identifier, list] : by_identifier)
        for (std::size_t i = 1; i < list.size(); ++i)
            if (list[i]->status != "entered-in-error")
                out.writes.push_back(update(WriteAction::retire_duplicate, options.patient, *list[i], list[i]->resource, "entered-in-error",
                                            list[i]->evidence_hash, "duplicate of DetectedIssue/" + list.front()->id));
    return out;
}

}  // namespace calcalert::poll
