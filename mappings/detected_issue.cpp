#include "mappings/detected_issue.hpp"

#include <Poco/SHA1Engine.h>
#include <Poco/UUID.h>
#include <Poco/UUIDGenerator.h>

#include "fhir/datetime.hpp"

namespace calcalert::mappings {
namespace {

void key(JsonWriter& w, const char* k) { w.Key(k); }
void reference(JsonWriter& w, std::string_view ref) {
    w.StartObject();
    kv(w, "reference", ref);
    w.EndObject();
}

}  // namespace

std::string alert_identifier(std::string_view patient, std::string_view rule_id) {
    Poco::SHA1Engine sha1;
    // A fixed namespace for calcalert alert identities (itself a v5 UUID of "urn:calcalert" in the URL namespace).
    static const Poco::UUID ns = Poco::UUIDGenerator::defaultGenerator().createFromName(Poco::UUID::uri(), "urn:calcalert", sha1);
    const std::string name = std::string(patient) + "|" + std::string(rule_id);
    return Poco::UUIDGenerator::defaultGenerator().createFromName(ns, name, sha1, Poco::UUID::UUID_NAME_BASED_SHA1).toString();
}

void write_detected_issue(JsonWriter& w, const rules::Finding& f, rules::EpochSeconds identified,
                          const IssueOptions& o, std::string_view status, bool with_id) {
    const rules::Rule& r = *f.rule;
    const std::string id = alert_identifier(f.patient, r.id);
    w.StartObject();
    kv(w, "resourceType", "DetectedIssue");
    if (with_id) kv(w, "id", id);
    key(w, "extension");
    w.StartArray();
    w.StartObject();
    kv(w, "url", o.evidence_hash_extension);
    kv(w, "valueString", f.evidence_hash);
    w.EndObject();
    w.EndArray();
    key(w, "identifier");
    w.StartArray();
    w.StartObject();
    kv(w, "system", o.identifier_system);
    kv(w, "value", id);
    w.EndObject();
    w.EndArray();
    kv(w, "status", status);
    key(w, "code");
    w.StartObject();
    key(w, "coding");
    w.StartArray();
    w.StartObject();
    kv(w, "system", o.rule_system);
    kv(w, "version", r.version);
    kv(w, "code", r.id);
    kv(w, "display", r.title);
    w.EndObject();
    w.EndArray();
    kv(w, "text", f.summary);
    w.EndObject();
    kv(w, "severity", rules::to_string(r.severity));
    key(w, "patient");
    reference(w, f.patient);
    kv(w, "identifiedDateTime", fhir::format_datetime(identified));
    key(w, "author");
    w.StartObject();
    kv(w, "type", "Device");
    kv(w, "display", o.author_display);
    w.EndObject();
    if (!f.sources.empty()) {
        key(w, "implicated");
        w.StartArray();
        for (const auto& s : f.sources) reference(w, s);
        w.EndArray();
    }
    if (!f.evidence.empty()) {
        key(w, "evidence");
        w.StartArray();
        for (const auto& e : f.evidence) {
            w.StartObject();
            key(w, "code");
            w.StartArray();
            w.StartObject();
            kv(w, "text", e.label + ": " + e.text);
            w.EndObject();
            w.EndArray();
            if (!e.sources.empty()) {
                key(w, "detail");
                w.StartArray();
                for (const auto& s : e.sources) reference(w, s);
                w.EndArray();
            }
            w.EndObject();
        }
        w.EndArray();
    }
    kv(w, "detail", f.detail);
    kv(w, "reference", r.citation_url());
    w.EndObject();
}

std::string detected_issue_json(const rules::Finding& f, rules::EpochSeconds identified, const IssueOptions& o,
                                std::string_view status, bool with_id) {
    static thread_local rapidjson::StringBuffer sb;  // its capacity kept from one resource to the next
    sb.Clear();
    JsonWriter w(sb);
    write_detected_issue(w, f, identified, o, status, with_id);
    return std::string(sb.GetString(), sb.GetSize());
}

void write_operation_outcome(JsonWriter& w, const std::vector<OutcomeIssue>& issues) {
    w.StartObject();
    kv(w, "resourceType", "OperationOutcome");
    key(w, "issue");
    w.StartArray();
    for (const auto& i : issues) {
        w.StartObject();
        kv(w, "severity", i.severity);
        kv(w, "code", i.code);
        kv(w, "diagnostics", i.diagnostics);
        if (!i.expression.empty()) {
            key(w, "expression");
            w.StartArray();
            str(w, i.expression);
            w.EndArray();
        }
        w.EndObject();
    }
    w.EndArray();
    w.EndObject();
}

}  // namespace calcalert::mappings
