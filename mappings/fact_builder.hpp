// FHIR -> facts: turns Observation, Condition, Procedure, Patient and DiagnosticReport resources into
// compact per-patient facts (clinical-rules.md §1.1, §5.1, §5.2), keeping a data-quality note for
// everything it cannot use.
//
// - The same resource (type + id) read more than once (a `_history` Bundle, a resend, a DELETE entry)
//   counts once, in its latest version: the highest numeric meta.versionId when both are numeric, else
//   the latest meta.lastUpdated, else the one read last. What the other versions gave is taken back
//   and a note names them.
// - Observations contained in a DiagnosticReport (its `result` references "#id") are read with the
//   report's subject; an Observation without a subject that a DiagnosticReport of the same Bundle
//   lists belongs to the report's patient.
// - Patients: a local "Patient/<id>", an absolute URL on another server (its own patient), or the
//   urn:uuid fullUrl of a Patient without an id (fhir::patient_identity).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fhir/resource_reader.hpp"
#include "mappings/terminology.hpp"
#include "rules/facts.hpp"

namespace calcalert::mappings {

class FactBuilder : public fhir::ResourceHandler {
public:
    // `server_base`: the FHIR base URL the input was read from (poll, CDS Hooks); a subject written as
    // an absolute URL on it is the local patient. Empty for files.
    explicit FactBuilder(const Terminology& terminology, std::string_view server_base = {});

    void on_resource(const rapidjson::Value& resource, std::string_view type, const fhir::Location& where,
                     const fhir::BundleContext* bundle) override;
    void on_deleted(std::string_view reference, std::string_view version, std::optional<std::int64_t> at,
                    const fhir::Location& where) override;
    void on_problem(const fhir::Problem& problem) override { problems_.push_back(problem); }

    // Every patient seen (as a Patient resource or as a subject), ordered by reference.
    const std::map<std::string, rules::PatientFacts>& patients() const { return patients_; }
    std::map<std::string, rules::PatientFacts>& patients() {
        last_patient_ = nullptr;  // the caller may erase patients
        return patients_;
    }
    // Input problems: rejected files, lines, entries and resources that belong to no patient.
    const std::vector<fhir::Problem>& problems() const { return problems_; }

private:
    // A version of a resource, to tell which of two is the latest.
    struct Version {
        std::string id;                        // meta.versionId, "" when absent
        std::optional<std::uint64_t> number;   // meta.versionId when it is a number
        std::optional<std::int64_t> updated;   // meta.lastUpdated
        std::uint64_t read = 0;                // the order it was read in
    };
    // The version of a resource (type + id) that counts so far, and what it gave.
    struct Held {
        Version version;
        std::uint64_t record = 0;                 // 0: nothing (a deletion)
        rules::PatientFacts* patient = nullptr;  // whose facts hold what it gave
        bool deleted = false;
    };
    // Which record gave each item of a patient's facts (parallel to its vectors).
    struct Owners {
        std::vector<std::uint64_t> labs, conditions, procedures, notes;
        std::vector<std::pair<std::uint64_t, rules::Deceased>> deceased;  // the last one holds
    };

    rules::PatientFacts& patient(const std::string& ref);
    // The patient a resource's subject names, or nullptr (with a problem recorded).
    rules::PatientFacts* subject(std::string_view reference, const std::string& type, const fhir::Location& where,
                                 const fhir::BundleContext* bundle);
    // `root` is the element path of the Observation ("Observation", "DiagnosticReport.contained[0]");
    // `inherited_subject` the subject of the report that contains it; `source` overrides its own.
    void observation(const rapidjson::Value& json, const fhir::Location& where, const fhir::BundleContext* bundle,
                     const std::string& root, std::string_view inherited_subject, const std::string& source);
    void condition(const rapidjson::Value& json, const fhir::Location& where, const fhir::BundleContext* bundle);
    void procedure(const rapidjson::Value& json, const fhir::Location& where, const fhir::BundleContext* bundle);
    void patient_resource(const rapidjson::Value& json, const fhir::Location& where, const fhir::BundleContext* bundle);
    void diagnostic_report(const rapidjson::Value& json, const fhir::Location& where, const fhir::BundleContext* bundle);

    // Items given by the record being read (current_).
    void add_note(rules::PatientFacts& p, rules::DataQualityNote n, std::uint64_t owner);
    void add_note(rules::PatientFacts& p, rules::DataQualityNote n) { add_note(p, std::move(n), current_); }
    // Takes back everything `record` gave to `p`; the number of items taken back.
    std::size_t take_back(std::uint64_t record, rules::PatientFacts* p);
    // The resource `key` in version `v` was read (record, patient): only the latest version counts.
    void settle(std::string_view key, Version v, std::uint64_t record, rules::PatientFacts* p, bool deleted);
    // A copy of `key` that lives as long as the builder (held_'s keys).
    std::string_view keep_key(std::string_view key);

    const Terminology& term_;
    std::string server_base_;
    std::map<std::string, rules::PatientFacts> patients_;
    std::unordered_map<const rules::PatientFacts*, Owners> owners_;
    // The version that counts of each resource: "Type/id" -> Held, an open-addressing table (one
    // probe sequence in a flat array of slots instead of a node per resource).
    struct HeldEntry {
        std::string_view key;  // its bytes in key_chunks_
        std::size_t hash = 0;
        Held held;
    };
    struct HeldSlot {
        std::uint32_t entry = 0;  // 1 + the index in held_; 0: empty
        std::uint32_t tag = 0;    // the hash's high bits
    };
    Held* find_held(std::string_view key, std::size_t hash);
    void add_held(std::string_view key, std::size_t hash, Held held);
    void place_held(std::size_t entry);
    std::vector<HeldEntry> held_;
    std::vector<HeldSlot> held_slots_;                 // a power of two, at most half full
    std::vector<std::unique_ptr<char[]>> key_chunks_;  // the bytes of held_'s keys (never moved)
    char* key_next_ = nullptr;                         // the free part of the last chunk
    std::size_t key_left_ = 0;
    std::string key_;  // the key of the resource being read (reused)
    std::vector<fhir::Problem> problems_;
    std::uint64_t records_ = 0;       // resources read so far (record ids start at 1)
    std::uint64_t reads_ = 0;         // versions settled so far (Version::read)
    std::uint64_t current_ = 0;       // the record being read
    rules::PatientFacts* touched_ = nullptr;  // the patient the record being read names
    rules::PatientFacts* last_patient_ = nullptr;  // the patient looked up last (an export lists a
                                                   // patient's resources together)
};

}  // namespace calcalert::mappings
