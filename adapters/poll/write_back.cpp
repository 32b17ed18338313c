#include "adapters/poll/write_back.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "fhir/views.hpp"

namespace calcalert::poll {
namespace {

using Json = rapidjson::Value;

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// "DetectedIssue/<id>/_history/<version>" (possibly absolute) -> (id, version).
std::pair<std::string, std::string> id_and_version(const std::string& location) {
    std::string loc = location;
    const auto type = loc.rfind("DetectedIssue/");
    if (type == std::string::npos) return {};
    loc = loc.substr(type + 14);
    const auto hist = loc.find("/_history/");
    if (hist == std::string::npos) return {loc.substr(0, loc.find('/')), ""};
    return {loc.substr(0, hist), loc.substr(hist + 10)};
}

// The first issue's diagnostics (or details.text) of an entry response's OperationOutcome, shortened.
std::string outcome_text(const Json& response) {
    const Json* outcome = fhir::member(response, "outcome");
    if (!outcome || !outcome->IsObject()) return {};
    const Json* issues = fhir::member(*outcome, "issue");
    if (!issues || !issues->IsArray() || issues->Empty() || !(*issues)[0].IsObject()) return {};
    std::string text = fhir::string_or_empty((*issues)[0], "diagnostics");
    if (text.empty())
        if (const Json* details = fhir::member((*issues)[0], "details"); details && details->IsObject()) text = fhir::string_or_empty(*details, "text");
    return text.substr(0, 300);
}

}  // namespace

const char* to_string(BundleType t) { return t == BundleType::batch ? "batch" : "transaction"; }

bool refused_as_too_large(long status, const std::string& message) {
    if (status == 413) return true;
    if (status < 400 || status >= 500) return false;
    const std::string m = lower(message);
    for (const char* phrase : {"too many entries", "too large", "exceeds", "strict isolation", "too many", "than allowed"})
        if (m.find(phrase) != std::string::npos) return true;
    return false;
}

std::string write_bundle(const std::vector<PlannedWrite>& writes, BundleType type) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.StartObject();
    w.Key("resourceType");
    w.String("Bundle");
    w.Key("type");
    w.String(to_string(type));
    w.Key("entry");
    w.StartArray();
    for (const auto& e : writes) {
        w.StartObject();
        w.Key("fullUrl");
        w.String(("urn:uuid:" + e.identifier).c_str());
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

WriteBack::WriteBack(fhir::FhirClient& client, state::StateStore& store, WriteBackOptions options,
                     PatientDone on_patient_done, BundleHook hook)
    : client_(client), store_(store), opt_(options), on_patient_done_(std::move(on_patient_done)), hook_(std::move(hook)) {
    if (opt_.batch_size == 0) opt_.batch_size = 1;
    stats_.effective_batch_size = opt_.batch_size;
}

void WriteBack::add(const std::string& patient, std::vector<PlannedWrite> writes, state::EpochSeconds now) {
    if (writes.empty()) return;
    remaining_[patient] += writes.size();
    for (auto& w : writes) pending_.push_back({patient, std::move(w)});
    while (pending_.size() >= stats_.effective_batch_size) {
        std::vector<Pending> chunk(std::make_move_iterator(pending_.begin()),
                                   std::make_move_iterator(pending_.begin() + static_cast<long>(stats_.effective_batch_size)));
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<long>(stats_.effective_batch_size));
        send(std::move(chunk), now);
    }
}

void WriteBack::flush(state::EpochSeconds now) {
    while (!pending_.empty()) {
        const std::size_t n = std::min(pending_.size(), stats_.effective_batch_size);
        std::vector<Pending> chunk(std::make_move_iterator(pending_.begin()), std::make_move_iterator(pending_.begin() + static_cast<long>(n)));
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<long>(n));
        send(std::move(chunk), now);
    }
}

std::map<std::string, std::string> WriteBack::take_failed() {
    std::map<std::string, std::string> out;
    out.swap(failed_);
    return out;
}

std::set<std::string> WriteBack::take_stale() {
    std::set<std::string> out;
    out.swap(stale_);
    return out;
}

void WriteBack::send(std::vector<Pending> entries, state::EpochSeconds now) {
    // Writes of a patient that went stale meanwhile are decided again by the caller: not sent.
    entries.erase(std::remove_if(entries.begin(), entries.end(), [&](const Pending& p) { return stale_.count(p.patient) > 0; }),
                  entries.end());
    if (entries.empty()) return;
    std::vector<PlannedWrite> writes;
    for (const auto& e : entries) writes.push_back(e.write);

    auto mark_stale = [&](const std::string& patient) {
        if (!stale_.insert(patient).second) return;
        remaining_.erase(patient);
        pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [&](const Pending& p) { return p.patient == patient; }),
                       pending_.end());
    };

    rapidjson::Document response;
    try {
        response = client_.transaction(write_bundle(writes, opt_.bundle_type), fhir::Replay::safe);
    } catch (const fhir::FhirError& e) {
        if (entries.size() > 1 && refused_as_too_large(e.status(), e.what())) {
            ++stats_.splits;
            const std::size_t half = entries.size() / 2;
            stats_.effective_batch_size = std::max<std::size_t>(1, std::min(stats_.effective_batch_size, half));
            std::vector<Pending> second(std::make_move_iterator(entries.begin() + static_cast<long>(half)),
                                        std::make_move_iterator(entries.end()));
            entries.resize(half);
            send(std::move(entries), now);
            send(std::move(second), now);
            return;
        }
        if (opt_.bundle_type == BundleType::transaction && (e.status() == 412 || e.status() == 409)) {
            // All or nothing, and one entry's version no longer matches: nothing landed.
            stats_.conflicts += entries.size();
            for (const auto& p : entries) mark_stale(p.patient);
            return;
        }
        throw;
    }
    ++stats_.bundles;
    stats_.entries_sent += entries.size();

    const Json* rentries = fhir::member(response, "entry");
    std::vector<std::pair<std::string, std::string>> ids(entries.size());
    std::vector<bool> ok(entries.size(), false);
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const Json* r = nullptr;
        if (rentries && rentries->IsArray() && i < rentries->Size()) r = fhir::member((*rentries)[static_cast<rapidjson::SizeType>(i)], "response");
        const std::string status = r ? fhir::string_or_empty(*r, "status") : std::string();
        const long code = std::strtol(status.c_str(), nullptr, 10);
        if (code >= 200 && code < 300) {
            ok[i] = true;
            ids[i] = id_and_version(fhir::string_or_empty(*r, "location"));
        } else if (code == 412 || code == 409) {
            ++stats_.conflicts;
            mark_stale(entries[i].patient);
        } else {
            // Refused for good (invalid) or for now (5xx in a batch): the patient stays queued
            // with the reason and is tried again by the next pass.
            std::string why = std::string(to_string(entries[i].write.action)) + " " + entries[i].write.url + ": " +
                              (status.empty() ? std::string("no status in the server's answer") : "HTTP " + status);
            if (const std::string text = r ? outcome_text(*r) : std::string(); !text.empty()) why += ": " + text;
            failed_.emplace(entries[i].patient, why);
            remaining_.erase(entries[i].patient);
        }
    }
    if (hook_) hook_(stats_.bundles, false);
    landed(entries, ids, ok, now);
    if (hook_) hook_(stats_.bundles, true);
}

void WriteBack::landed(const std::vector<Pending>& entries, const std::vector<std::pair<std::string, std::string>>& ids,
                       const std::vector<bool>& ok, state::EpochSeconds now) {
    store_.transaction([&] {
        for (std::size_t i = 0; i < entries.size(); ++i) {
            if (!ok[i]) continue;
            const Pending& p = entries[i];
            const PlannedWrite& w = p.write;
            store_.put_alert({client_.base_url(), w.identifier, p.patient, w.rule_id, w.evidence_hash, w.status, ids[i].first,
                              ids[i].second, now});
            const auto it = remaining_.find(p.patient);
            if (it == remaining_.end() || failed_.count(p.patient)) continue;
            if (--it->second == 0) {
                remaining_.erase(it);
                if (!stale_.count(p.patient) && on_patient_done_) on_patient_done_(p.patient);
            }
        }
    });
}

}  // namespace calcalert::poll
