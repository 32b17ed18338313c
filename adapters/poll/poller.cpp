#include "adapters/poll/poller.hpp"

#include <csignal>

#include <algorithm>
#include <map>
#include <optional>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "fhir/datetime.hpp"
#include "fhir/resource_reader.hpp"
#include "fhir/views.hpp"
#include "mappings/fact_builder.hpp"
#include "rules/engine.hpp"

namespace calcalert::poll {
namespace {

using Json = rapidjson::Value;

std::string url_encode(std::string_view s) {
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == ',') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

std::string str(const Json& obj, const char* name) {
    const Json* v = fhir::member(obj, name);
    return v && v->IsString() ? std::string(v->GetString(), v->GetStringLength()) : std::string();
}

std::string to_json(const Json& v) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    v.Accept(w);
    return sb.GetString();
}

// A DetectedIssue of ours found on the server.
struct ExistingIssue {
    std::string id;
    std::string version;
    std::string status;
    std::string severity;
    std::string detail;
    std::string patient;
    std::string rule_id;
    std::string json;  // the resource as the server has it
};

// Feeds search pages into the fact builder; entries that are not matches (outcomes) become problems.
void feed_page(const rapidjson::Document& page, const std::string& name, mappings::FactBuilder& builder) {
    const Json* entries = fhir::member(page, "entry");
    if (!entries || !entries->IsArray()) return;
    for (rapidjson::SizeType i = 0; i < entries->Size(); ++i) {
        const Json& e = (*entries)[i];
        const Json* res = fhir::member(e, "resource");
        if (!res) continue;
        fhir::read_value(*res, name + " entry[" + std::to_string(i) + "]", builder);
    }
}

// One Bundle.entry of a write batch.
struct Entry {
    Write write;
    std::string resource;  // JSON
    std::string method;    // POST | PUT
    std::string url;
    std::string if_none_exist;
    std::string if_match;
    std::string evidence_hash;
};

std::string transaction_bundle(const std::vector<Entry>& entries) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.StartObject();
    w.Key("resourceType");
    w.String("Bundle");
    w.Key("type");
    w.String("transaction");
    w.Key("entry");
    w.StartArray();
    for (const auto& e : entries) {
        w.StartObject();
        w.Key("fullUrl");
        w.String(("urn:uuid:" + e.write.identifier).c_str());
        w.Key("resource");
        w.RawValue(e.resource.c_str(), e.resource.size(), rapidjson::kObjectType);
        w.Key("request");
        w.StartObject();
        w.Key("method");
        w.String(e.method.c_str());
        w.Key("url");
        w.String(e.url.c_str());
        if (!e.if_none_exist.empty()) {
            w.Key("ifNoneExist");
            w.String(e.if_none_exist.c_str());
        }
        if (!e.if_match.empty()) {
            w.Key("ifMatch");
            w.String(e.if_match.c_str());
        }
        w.EndObject();
        w.EndObject();
    }
    w.EndArray();
    w.EndObject();
    return sb.GetString();
}

}  // namespace

std::string PollSummary::to_json() const {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.StartObject();
    auto n = [&](const char* k, std::uint64_t v) {
        w.Key(k);
        w.Uint64(v);
    };
    n("resourcesRead", resources_read);
    n("resourcesSkipped", resources_skipped);
    n("patientsChanged", patients_changed);
    n("patientsEvaluated", patients_evaluated);
    n("findings", findings);
    n("created", created);
    n("amended", amended);
    n("cancelled", cancelled);
    n("reopened", reopened);
    n("unchanged", unchanged);
    n("dataQualityNotes", data_quality_notes);
    n("inputProblems", input_problems);
    n("requests", requests);
    n("writeBatches", write_batches);
    w.EndObject();
    return sb.GetString();
}

Poller::Poller(fhir::FhirClient& client, state::StateStore& store, const mappings::Terminology& terminology,
               const rules::RuleCatalog& catalog, PollOptions options)
    : client_(client), store_(store), term_(terminology), catalog_(catalog), opt_(std::move(options)) {}

std::string Poller::observation_code_filter() const {
    std::string out;
    for (const auto& t : term_.lab_tokens()) out += (out.empty() ? "" : ",") + url_encode(t);
    return out;
}

PollSummary Poller::run_once(rules::EpochSeconds now) {
    PollSummary sum;
    const auto requests_before = client_.stats().requests;
    const std::int64_t run_id = opt_.dry_run ? 0 : store_.begin_run(server(), now);
    try {
        // 1. Incremental sync: which patients changed since the watermark?
        struct Seen {
            std::string reference, version;
            rules::EpochSeconds last_updated;
        };
        std::vector<Seen> seen;
        std::set<std::string> changed;
        std::map<std::string, std::pair<rules::EpochSeconds, std::string>> new_watermark;  // type -> (time, text)
        const std::string codes = observation_code_filter();
        for (const std::string type : {"Observation", "Condition"}) {
            std::string query = type + "?_sort=_lastUpdated&_count=" + std::to_string(opt_.page_size);
            if (type == "Observation") query += "&code=" + codes;
            const auto wm = store_.watermark(server(), type);
            if (wm) {
                const auto t = fhir::parse_datetime(*wm);
                if (!t) throw state::StateError("watermark for " + type + " is not a date-time: '" + *wm + "'");
                query += "&_lastUpdated=ge" + url_encode(fhir::format_datetime(*t - opt_.overlap.count()));
            }
            client_.search(query, [&](const rapidjson::Document& page) {
                const Json* entries = fhir::member(page, "entry");
                if (!entries || !entries->IsArray()) return;
                for (const auto& e : entries->GetArray()) {
                    const Json* res = fhir::member(e, "resource");
                    if (!res || !res->IsObject() || str(*res, "resourceType") != type) continue;
                    ++sum.resources_read;
                    const std::string ref = type + "/" + str(*res, "id");
                    std::string version, updated;
                    if (const Json* meta = fhir::member(*res, "meta")) {
                        version = str(*meta, "versionId");
                        updated = str(*meta, "lastUpdated");
                    }
                    const auto t = fhir::parse_datetime(updated);
                    if (t) {
                        auto& w = new_watermark[type];
                        if (w.second.empty() || *t > w.first) w = {*t, updated};
                    }
                    if (!version.empty() && store_.seen_version(server(), ref, version)) {
                        ++sum.resources_skipped;
                        continue;
                    }
                    if (!version.empty()) seen.push_back({ref, version, t.value_or(now)});
                    if (const Json* subj = fhir::member(*res, "subject"))
                        if (auto p = fhir::normalize_patient_reference(str(*subj, "reference")); p && p->rfind("Patient/", 0) == 0)
                            changed.insert(*p);
                }
            });
        }
        sum.patients_changed = changed.size();

        // 2. Patients to evaluate: the changed ones and those with open alerts (a finding can stop
        //    holding because time passes: a lab leaves its window).
        std::set<std::string> patients = changed;
        for (const auto& a : store_.alerts(server()))
            if (a.status != "cancelled") patients.insert(a.patient);

        const auto& p = catalog_.parameters();
        const double window_days = std::max({p.caxp_window_days, p.hypercalcemia_window_days, p.phosphate_window_days,
                                             p.pth_window_days, p.egfr_window_days}) +
                                   2;  // + pairing and albumin margins
        const std::string since = url_encode(fhir::format_datetime(now - static_cast<rules::EpochSeconds>(window_days * 86400)));

        std::vector<Entry> pending;
        auto flush = [&] {
            if (pending.empty()) return;
            if (opt_.dry_run) {
                pending.clear();
                return;
            }
            const rapidjson::Document response = client_.transaction(transaction_bundle(pending));
            ++sum.write_batches;
            if (opt_.kill_after_batches && sum.write_batches >= opt_.kill_after_batches) std::raise(SIGKILL);
            const Json* entries = fhir::member(response, "entry");
            store_.transaction([&] {
                for (std::size_t i = 0; i < pending.size(); ++i) {
                    std::string id, version;
                    if (entries && entries->IsArray() && i < entries->Size()) {
                        if (const Json* r = fhir::member((*entries)[i], "response")) {
                            // location: DetectedIssue/<id>/_history/<version>
                            const std::string loc = str(*r, "location");
                            const auto slash = loc.find('/');
                            const auto hist = loc.find("/_history/");
                            if (slash != std::string::npos) {
                                id = loc.substr(slash + 1, hist == std::string::npos ? std::string::npos : hist - slash - 1);
                                if (hist != std::string::npos) version = loc.substr(hist + 10);
                            }
                        }
                    }
                    const Write& w = pending[i].write;
                    store_.put_alert({server(), w.identifier, w.patient, w.rule_id, pending[i].evidence_hash, w.status, id,
                                      version, now});
                }
            });
            pending.clear();
        };

        std::size_t done = 0;
        for (const auto& patient : patients) {
            // 3. The patient's relevant history: only codes the rules read, within the rule windows.
            mappings::FactBuilder builder(term_);
            const std::string pq = url_encode(patient);
            const std::string obs_q = "Observation?subject=" + pq + "&code=" + codes + "&date=ge" + since + "&_count=" +
                                      std::to_string(opt_.page_size);
            client_.search(obs_q, [&](const rapidjson::Document& page) { feed_page(page, "GET " + obs_q, builder); });
            // Results dated only by `issued` have no `date` (effective[x]) to search on.
            const std::string undated_q = "Observation?subject=" + pq + "&code=" + codes + "&date:missing=true&_count=" +
                                          std::to_string(opt_.page_size);
            client_.search(undated_q, [&](const rapidjson::Document& page) { feed_page(page, "GET " + undated_q, builder); });
            const std::string cond_q = "Condition?subject=" + pq + "&_count=" + std::to_string(opt_.page_size);
            client_.search(cond_q, [&](const rapidjson::Document& page) { feed_page(page, "GET " + cond_q, builder); });
            sum.input_problems += builder.problems().size();

            rules::PatientFacts empty{patient, {}, {}, {}};
            const auto it = builder.patients().find(patient);
            const rules::Evaluation ev = rules::evaluate(it == builder.patients().end() ? empty : it->second, now, catalog_);
            sum.data_quality_notes += ev.notes.size();
            sum.findings += ev.findings.size();
            ++sum.patients_evaluated;

            // 4. Our DetectedIssues for this patient as the server has them.
            std::map<std::string, ExistingIssue> existing;  // identifier -> issue
            const std::string di_q = "DetectedIssue?patient=" + pq + "&_count=" + std::to_string(opt_.page_size);
            client_.search(di_q, [&](const rapidjson::Document& page) {
                const Json* entries = fhir::member(page, "entry");
                if (!entries || !entries->IsArray()) return;
                for (const auto& e : entries->GetArray()) {
                    const Json* res = fhir::member(e, "resource");
                    if (!res || str(*res, "resourceType") != "DetectedIssue") continue;
                    const Json* ids = fhir::member(*res, "identifier");
                    if (!ids || !ids->IsArray()) continue;
                    for (const auto& idv : ids->GetArray()) {
                        if (str(idv, "system") != opt_.issue.identifier_system) continue;
                        ExistingIssue x;
                        x.id = str(*res, "id");
                        if (const Json* meta = fhir::member(*res, "meta")) x.version = str(*meta, "versionId");
                        x.status = str(*res, "status");
                        x.severity = str(*res, "severity");
                        x.detail = str(*res, "detail");
                        x.patient = patient;
                        if (const Json* code = fhir::member(*res, "code"))
                            if (const Json* coding = fhir::member(*code, "coding"); coding && coding->IsArray() && !coding->Empty())
                                x.rule_id = str((*coding)[0], "code");
                        x.json = to_json(*res);
                        existing[str(idv, "value")] = std::move(x);
                    }
                }
            });

            // 5. The writes that make the server agree with the findings.
            // A new alert: conditional create on the identifier (a re-run after a crash finds it and
            // creates nothing). A known one: an update of that resource by id, guarded by its version
            // (If-Match), so two pollers never overwrite each other's write unseen.
            auto create_entry = [&](const Write& w, const std::string& resource, const std::string& hash) {
                return Entry{w, resource, "POST", "DetectedIssue",
                             "identifier=" + url_encode(opt_.issue.identifier_system + "|" + w.identifier), "", hash};
            };
            auto update_entry = [&](const Write& w, rapidjson::Document& resource, const ExistingIssue& ex,
                                    const std::string& hash) {
                resource.RemoveMember("meta");
                resource.RemoveMember("id");
                resource.AddMember("id", rapidjson::Value(ex.id.c_str(), resource.GetAllocator()), resource.GetAllocator());
                return Entry{w, to_json(resource), "PUT", "DetectedIssue/" + ex.id, "",
                             ex.version.empty() ? "" : "W/\"" + ex.version + "\"", hash};
            };
            std::set<std::string> current;
            for (const auto& f : ev.findings) {
                const std::string identifier = mappings::alert_identifier(f.patient, f.rule->id);
                current.insert(identifier);
                auto ex = existing.find(identifier);
                Write w{"", f.patient, f.rule->id, identifier, "final", f.summary};
                if (ex == existing.end()) {
                    w.action = "create";
                    ++sum.created;
                } else if (ex->second.status == "cancelled" || ex->second.status == "entered-in-error") {
                    w.action = "reopen";
                    ++sum.reopened;
                } else if (ex->second.detail != f.detail || ex->second.severity != rules::to_string(f.rule->severity)) {
                    w.action = "amend";
                    w.status = "amended";
                    ++sum.amended;
                } else {
                    ++sum.unchanged;
                    continue;
                }
                const std::string resource = mappings::detected_issue_json(f, now, opt_.issue, w.status, false);
                if (w.action == "create") {
                    pending.push_back(create_entry(w, resource, f.evidence_hash));
                } else {
                    rapidjson::Document d;
                    d.Parse(resource.c_str());
                    pending.push_back(update_entry(w, d, ex->second, f.evidence_hash));
                }
                sum.writes.push_back(w);
                if (pending.size() >= opt_.write_batch) flush();
            }
            for (const auto& [identifier, ex] : existing) {
                if (current.count(identifier) || ex.status == "cancelled" || ex.status == "entered-in-error") continue;
                // No longer holds: the same resource, status cancelled.
                rapidjson::Document d;
                d.Parse(ex.json.c_str());
                d["status"].SetString("cancelled", d.GetAllocator());
                Write w{"cancel", patient, ex.rule_id, identifier, "cancelled", "no longer holds"};
                pending.push_back(update_entry(w, d, ex, ""));
                sum.writes.push_back(w);
                ++sum.cancelled;
                if (pending.size() >= opt_.write_batch) flush();
            }
            ++done;
            if (opt_.progress) opt_.progress(done, patients.size());
        }
        flush();

        // 6. Only now, with every write landed, advance the state.
        sum.requests = client_.stats().requests - requests_before;
        if (!opt_.dry_run) {
            store_.transaction([&] {
                for (const auto& [type, w] : new_watermark) store_.set_watermark(server(), type, w.second);
                for (const auto& s : seen) store_.mark_seen(server(), s.reference, s.version, s.last_updated);
                for (const auto& [type, w] : new_watermark)
                    store_.forget_seen_before(server(), w.first - opt_.overlap.count() - 86400);
                store_.finish_run(run_id, now, "ok", sum.to_json());
            });
        }
        return sum;
    } catch (...) {
        sum.requests = client_.stats().requests - requests_before;
        if (!opt_.dry_run) {
            try {
                store_.finish_run(run_id, now, "failed", sum.to_json());
            } catch (...) {
            }
        }
        throw;
    }
}

}  // namespace calcalert::poll
