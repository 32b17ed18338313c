#include "adapters/poll/history_reader.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "adapters/poll/change_feed.hpp"
#include "adapters/poll/paging.hpp"
#include "adapters/poll/url.hpp"
#include "fhir/datetime.hpp"
#include "fhir/resource_reader.hpp"
#include "fhir/views.hpp"
#include "mappings/fact_builder.hpp"

namespace calcalert::poll {
namespace {

using Json = rapidjson::Value;

std::string to_json(const Json& v) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    v.Accept(w);
    return sb.GetString();
}

}  // namespace

const char* to_string(LabCodeSearch s) {
    switch (s) {
        case LabCodeSearch::combo_code: return "combo-code";
        case LabCodeSearch::code_and_component_code: return "code + component-code";
        case LabCodeSearch::code_and_panels: return "code + laboratory panels read whole";
    }
    return "?";
}

LabCodeSearch lab_code_search_from_capabilities(const rapidjson::Value& cs) {
    std::set<std::string> params;
    if (const Json* rest = fhir::member(cs, "rest"); rest && rest->IsArray())
        for (const auto& r : rest->GetArray())
            if (const Json* resources = fhir::member(r, "resource"); resources && resources->IsArray())
                for (const auto& res : resources->GetArray())
                    if (res.IsObject() && fhir::string_or_empty(res, "type") == "Observation")
                        if (const Json* sp = fhir::member(res, "searchParam"); sp && sp->IsArray())
                            for (const auto& p : sp->GetArray())
                                if (p.IsObject()) params.insert(fhir::string_or_empty(p, "name"));
    if (params.count("combo-code")) return LabCodeSearch::combo_code;
    if (params.count("component-code")) return LabCodeSearch::code_and_component_code;
    return LabCodeSearch::code_and_panels;
}

std::string lab_code_list(const mappings::Terminology& terminology) {
    std::string codes;
    for (const auto& t : terminology.lab_tokens()) codes += (codes.empty() ? "" : ",") + url_encode(t);
    return codes;
}

std::string procedure_code_list(const mappings::Terminology& terminology) {
    std::string codes;
    for (const auto& t : terminology.procedure_tokens()) codes += (codes.empty() ? "" : ",") + url_encode(t);
    return codes;
}

LabCodeSearch discover_lab_code_search(fhir::FhirClient& client) {
    try {
        const rapidjson::Document cs = client.get_resource("metadata");
        return lab_code_search_from_capabilities(cs);
    } catch (const fhir::FhirError&) {
        return LabCodeSearch::code_and_panels;
    }
}

void for_each_server_alert(const rapidjson::Value& page, const std::string& identifier_system,
                           const std::string& evidence_hash_extension,
                           const std::function<void(ServerAlert&, const rapidjson::Value& resource)>& on_alert) {
    const Json* entries = fhir::member(page, "entry");
    if (!entries || !entries->IsArray()) return;
    for (const auto& e : entries->GetArray()) {
        const Json* res = fhir::member(e, "resource");
        ServerAlert x;
        if (res && read_server_alert(*res, identifier_system, evidence_hash_extension, x)) on_alert(x, *res);
    }
}

bool read_server_alert(const rapidjson::Value& res, const std::string& identifier_system,
                       const std::string& evidence_hash_extension, ServerAlert& x) {
    if (!res.IsObject() || fhir::string_or_empty(res, "resourceType") != "DetectedIssue") return false;
    const Json* ids = fhir::member(res, "identifier");
    if (!ids || !ids->IsArray()) return false;
    x = {};
    for (const auto& idv : ids->GetArray())
        if (idv.IsObject() && fhir::string_or_empty(idv, "system") == identifier_system) x.identifier = fhir::string_or_empty(idv, "value");
    if (x.identifier.empty()) return false;
    x.id = fhir::string_or_empty(res, "id");
    if (const Json* meta = fhir::member(res, "meta"); meta && meta->IsObject()) x.version = fhir::string_or_empty(*meta, "versionId");
    x.status = fhir::string_or_empty(res, "status");
    x.severity = fhir::string_or_empty(res, "severity");
    if (const Json* code = fhir::member(res, "code"); code && code->IsObject())
        if (const Json* coding = fhir::member(*code, "coding"); coding && coding->IsArray() && !coding->Empty() &&
                                                              (*coding)[0].IsObject())
            x.rule_id = fhir::string_or_empty((*coding)[0], "code");
    if (const Json* ext = fhir::member(res, "extension"); ext && ext->IsArray())
        for (const auto& e : ext->GetArray())
            if (e.IsObject() && fhir::string_or_empty(e, "url") == evidence_hash_extension) x.evidence_hash = fhir::string_or_empty(e, "valueString");
    x.resource = to_json(res);
    return true;
}

HistoryReader::HistoryReader(fhir::FhirClient& client, const mappings::Terminology& terminology,
                             const rules::RuleCatalog& catalog, HistoryOptions options)
    : client_(client), term_(terminology), catalog_(catalog), opt_(std::move(options)), codes_(lab_code_list(terminology)),
      procedure_codes_(procedure_code_list(terminology)) {}

std::map<std::string, PatientHistory> HistoryReader::read_together(const std::vector<std::string>& patients,
                                                                   rules::EpochSeconds now, bool& whole) {
    // The catalog says how far back the lab facts look (their longest window, with the albumin and pairing reach).
    const double window_days = catalog_.history_window_days();
    const std::string since =
        url_encode(fhir::format_datetime(now - static_cast<rules::EpochSeconds>(std::ceil(window_days * 86400))));
    const std::string count = "&_count=" + std::to_string(opt_.page_size);
    std::string refs;  // every patient relative and as an absolute URL on this server's base
    std::string ids;
    for (const auto& p : patients) {
        refs += (refs.empty() ? "" : ",") + url_encode(p) + "," + url_encode(client_.base_url() + "/" + p);
        ids += (ids.empty() ? "" : ",") + url_encode(p.substr(p.find('/') + 1));
    }
    const std::string subject = "subject=" + refs;

    std::vector<std::string> queries;
    const std::string code_param = opt_.lab_search == LabCodeSearch::combo_code ? "combo-code=" : "code=";
    for (const std::string& dated : {"&date=ge" + since, std::string("&date:missing=true")}) {
        queries.push_back("Observation?" + subject + "&" + code_param + codes_ + dated + count);
        if (opt_.lab_search == LabCodeSearch::code_and_component_code)
            queries.push_back("Observation?" + subject + "&component-code=" + codes_ + dated + count);
        else if (opt_.lab_search == LabCodeSearch::code_and_panels)
            queries.push_back("Observation?" + subject + "&category=laboratory" + dated + count);
    }
    queries.push_back("Condition?" + subject + count);
    // Dialysis Procedures performed within their window (clinical-rules.md §5.2.2); a period counts
    // by its end, so a search on `date` (performed[x]) from the window's start finds them.
    const std::string procedures_since = url_encode(fhir::format_datetime(
        now - static_cast<rules::EpochSeconds>((catalog_.parameters().dialysis_window_days + 2) * 86400)));
    if (!procedure_codes_.empty())
        queries.push_back("Procedure?" + subject + "&code=" + procedure_codes_ + "&date=ge" + procedures_since + count);

    std::vector<std::string> notes;
    mappings::FactBuilder builder(term_, client_.base_url());
    std::set<std::string> read;  // "Type/id": a resource on two pages or in two searches counts once
    for (const auto& q : queries) {
        search_pages(client_, q, [&](const rapidjson::Document& page, const std::string&) {
            const Json* entries = fhir::member(page, "entry");
            if (!entries || !entries->IsArray()) return;
            for (rapidjson::SizeType i = 0; i < entries->Size(); ++i) {
                const Json* res = fhir::member((*entries)[i], "resource");
                if (!res || !res->IsObject()) continue;
                const std::string type = fhir::string_or_empty(*res, "resourceType");
                if (type != "Observation" && type != "Condition" && type != "Procedure")
                    continue;  // OperationOutcome, _include
                const std::string id = fhir::string_or_empty(*res, "id");
                if (!id.empty() && !read.insert(type + "/" + id).second) continue;
                fhir::read_value(*res, "GET " + q + " entry[" + std::to_string(i) + "]", builder);
            }
        }, notes);
    }
    // The Patient itself: a deceased patient gets no finding (clinical-rules.md §5.1.6). A patient
    // only referenced, never created (404), or deleted (410), has no Patient to read.
    if (patients.size() == 1) {
        try {
            const rapidjson::Document res = client_.get_resource("Patient/" + ids);
            if (fhir::string_or_empty(res, "resourceType") == "Patient") fhir::read_value(res, "GET " + patients[0], builder);
        } catch (const fhir::FhirError& e) {
            if (e.kind() != fhir::FhirErrorKind::http_status || (e.status() != 404 && e.status() != 410)) throw;
        }
    } else {
        const std::set<std::string> wanted(patients.begin(), patients.end());
        search_pages(client_, "Patient?_id=" + ids + count, [&](const rapidjson::Document& page, const std::string&) {
            const Json* entries = fhir::member(page, "entry");
            if (!entries || !entries->IsArray()) return;
            for (const auto& e : entries->GetArray()) {
                const Json* res = fhir::member(e, "resource");
                if (!res || !res->IsObject() || fhir::string_or_empty(*res, "resourceType") != "Patient") continue;
                const std::string ref = "Patient/" + fhir::string_or_empty(*res, "id");
                if (wanted.count(ref) && read.insert(ref).second) fhir::read_value(*res, "GET " + ref, builder);
            }
        }, notes);
    }

    // calcalert's DetectedIssues, by patient.
    std::map<std::string, std::vector<ServerAlert>> alerts;
    std::set<std::string> alert_ids;
    search_pages(client_, "DetectedIssue?patient=" + refs + count, [&](const rapidjson::Document& page, const std::string&) {
        for_each_server_alert(page, opt_.identifier_system, opt_.evidence_hash_extension, [&](ServerAlert& x, const Json& res) {
            const Json* patient = fhir::member(res, "patient");
            const auto local = patient && patient->IsObject()
                                   ? local_patient(fhir::string_or_empty(*patient, "reference"), client_.base_url())
                                   : std::nullopt;
            if (local && alert_ids.insert(x.id).second) alerts[*local].push_back(std::move(x));
        });
    }, notes);

    std::map<std::string, PatientHistory> out;
    std::size_t warnings = 0;
    std::vector<fhir::Problem> errors;
    for (const auto& problem : builder.problems()) {
        if (problem.severity == fhir::Severity::error || problem.severity == fhir::Severity::fatal) errors.push_back(problem);
        else ++warnings;
    }
    whole = errors.empty();
    for (const auto& p : patients) {
        PatientHistory& h = out[p];
        if (const auto it = builder.patients().find(p); it != builder.patients().end()) h.facts = std::move(it->second);
        else h.facts = rules::PatientFacts{p, {}, {}, {}};
        if (const auto it = alerts.find(p); it != alerts.end()) h.alerts = std::move(it->second);
    }
    // Problems and notes go with the first patient: alone, they are exactly that patient's.
    PatientHistory& first = out[patients.front()];
    first.unreadable = std::move(errors);
    first.data_quality_notes = warnings;
    first.notes = std::move(notes);
    return out;
}

void HistoryReader::prepare(const std::vector<std::string>& upcoming, rules::EpochSeconds now) {
    if (batch() < 2) return;
    if (ahead_at_ != now) ahead_.clear();
    std::vector<std::string> group;
    for (const auto& p : upcoming) {
        if (group.size() == batch()) break;
        if (!ahead_.count(p)) group.push_back(p);
    }
    if (group.size() < 2) return;
    try {
        bool whole = true;
        auto read = read_together(group, now, whole);
        if (!whole) return;  // read alone, each patient gets its own problems
        ahead_at_ = now;
        for (auto& [p, h] : read) ahead_[p] = std::move(h);
    } catch (const fhir::FhirError&) {
        // read() asks again for each patient, and reports what fails for that patient.
    }
}

PatientHistory HistoryReader::read(const std::string& patient, rules::EpochSeconds now) {
    if (const auto it = ahead_.find(patient); it != ahead_.end() && ahead_at_ == now) {
        PatientHistory h = std::move(it->second);
        ahead_.erase(it);
        return h;
    }
    bool whole = true;
    auto read = read_together({patient}, now, whole);
    PatientHistory h = std::move(read[patient]);
    h.notes.insert(h.notes.end(), notes_.begin(), notes_.end());
    notes_.clear();
    return h;
}

std::vector<ServerAlert> HistoryReader::read_alerts(const std::string& patient) {
    std::vector<ServerAlert> out;
    std::set<std::string> ids;
    const std::string q = "DetectedIssue?patient=" + url_encode(patient) + "," +
                          url_encode(client_.base_url() + "/" + patient) + "&_count=" + std::to_string(opt_.page_size);
    search_pages(client_, q, [&](const rapidjson::Document& page, const std::string&) {
        for_each_server_alert(page, opt_.identifier_system, opt_.evidence_hash_extension, [&](ServerAlert& x, const Json&) {
            if (ids.insert(x.id).second) out.push_back(std::move(x));
        });
    }, notes_);
    return out;
}

}  // namespace calcalert::poll
