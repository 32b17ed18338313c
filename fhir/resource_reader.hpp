// Reads FHIR R4 JSON resources out of a file or text: a single resource, a Bundle of any type
// (collection, searchset, transaction, batch, nested Bundles), or NDJSON (one resource per line, as
// Bulk Data writes it; streamed line by line). Each resource is handed to a ResourceHandler and then
// dropped: the reader keeps no JSON trees.
#pragma once

#include <cstddef>
#include <cstdint>
#include <istream>
#include <string>
#include <string_view>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <rapidjson/document.h>

#include "fhir/problem.hpp"

namespace calcalert::fhir {

// What a Bundle says about its own entries, to resolve references between them.
struct BundleContext {
    // fullUrl -> "Type/id" of the entry's resource; for a Patient without an id, its fullUrl itself
    // (the patient's identity: such a Patient is that fullUrl).
    std::unordered_map<std::string, std::string> full_urls;
    // The server bases of the entries' absolute fullUrls ("https://host/fhir" for
    // "https://host/fhir/Observation/1"): a reference to one of them names this Bundle's resources.
    std::unordered_set<std::string> bases;
    // Each entry's fullUrl, by entry index ("" when it has none).
    std::vector<std::string> entry_full_urls;
    // DiagnosticReport.result -> the report's subject reference: the Observation ("Type/id", or its
    // fullUrl when that resolves to nothing) a report of this Bundle lists, and whose patient the
    // report names.
    std::unordered_map<std::string, std::string> report_subjects;

    // The entries of `bundle` (a Bundle resource); entries marked in `skip` are left out.
    static BundleContext of(const rapidjson::Value& bundle, const std::vector<bool>* skip = nullptr);
    // Resolves a reference through the fullUrls; returns the reference unchanged when unknown.
    std::string_view resolve(std::string_view reference) const;
    // The entry's fullUrl ("" when unknown).
    std::string_view full_url_of(long entry) const;
    // The subject reference of a DiagnosticReport of this Bundle that lists the Observation (by
    // "Observation/<id>" or its entry's fullUrl), or "".
    std::string_view report_subject(std::string_view observation_ref, long entry) const;
};

// Whose a subject reference is (clinical-rules.md §1.1 and §5.2.3-4).
//   - "Patient/1", "Patient/1/_history/2": the local patient "Patient/1";
//   - a Bundle entry's fullUrl: that entry's patient ("Patient/<id>"; for a Patient without an id,
//     its fullUrl, e.g. "urn:uuid:...");
//   - an absolute URL "<base>/Patient/1" on the server's own base or on a base of the Bundle's
//     fullUrls: the local "Patient/1"; on any other base: a patient of its own, named by the URL
//     ("https://other.example.org/fhir/Patient/1"), never merged with the local Patient/1;
//   - a urn:uuid / urn:oid no fullUrl resolves: unresolved;
//   - anything else (Group/1, a search URL): not a patient.
struct PatientIdentity {
    enum class Kind { patient, unresolved, not_a_patient };
    Kind kind = Kind::not_a_patient;
    std::string id;  // the identity, for Kind::patient
};
PatientIdentity patient_identity(std::string_view reference, const BundleContext* bundle, std::string_view server_base);

// A base URL for comparisons: scheme and host in lower case, no trailing '/'.
std::string normalize_base(std::string_view url);

class ResourceHandler {
public:
    virtual ~ResourceHandler() = default;
    // One resource; `bundle` is non-null when it came from a Bundle entry. May throw ElementError:
    // the reader turns that into an error Problem naming the resource and element path.
    virtual void on_resource(const rapidjson::Value& resource, std::string_view type, const Location& where,
                             const BundleContext* bundle) = 0;
    virtual void on_problem(const Problem& problem) = 0;
    // A Bundle entry without a resource that deletes one (request.method DELETE, as in a `_history`
    // Bundle or a transaction): `reference` is "Type/id"; `version` (from response.etag or a
    // "/_history/<v>" url) and `at` (response.lastModified) when the entry gives them.
    virtual void on_deleted(std::string_view /*reference*/, std::string_view /*version*/,
                            std::optional<std::int64_t> /*at*/, const Location& /*where*/) {}
};

struct ReadStats {
    std::size_t resources = 0;  // handed to the handler
    std::size_t rejected = 0;   // resources or lines that could not be read
    bool fatal = false;         // the whole input could not be read
};

// How NDJSON is streamed. The file is read through a bounded buffer (never whole); lines are parsed
// in batches of about batch_bytes. With jobs > 1, jobs - 1 threads parse the next batches while the
// caller's thread hands the parsed resources of the current one to the handler, in input order: the
// handler sees exactly what jobs = 1 gives it, in the same order. At most jobs batches are held.
struct NdjsonOptions {
    std::size_t max_line_bytes = std::size_t{1} << 30;
    unsigned jobs = 1;
    // 512 KiB: a batch's Documents are still in the shared cache when the caller's thread maps them
    // (with 4 MiB batches, --jobs 2 took 14 % longer; docs/benchmarks.md).
    std::size_t batch_bytes = std::size_t{512} << 10;
};

// "-" reads standard input. Files ending in .ndjson or .jsonl are read as NDJSON; others are read
// whole and detected (a text with several JSON objects, one per line, is NDJSON).
ReadStats read_path(const std::string& path, ResourceHandler& handler);
ReadStats read_path(const std::string& path, ResourceHandler& handler, const NdjsonOptions& ndjson);
ReadStats read_text(std::string_view text, const std::string& name, ResourceHandler& handler);
// A line longer than max_line_bytes is refused (an error Problem) without being held in memory.
ReadStats read_ndjson(std::istream& in, const std::string& name, ResourceHandler& handler,
                      std::size_t max_line_bytes = std::size_t{1} << 30);
ReadStats read_ndjson(std::istream& in, const std::string& name, ResourceHandler& handler,
                      const NdjsonOptions& options);
// An already parsed resource or Bundle (e.g. a search page); `name` says where it came from.
ReadStats read_value(const rapidjson::Value& json, const std::string& name, ResourceHandler& handler);

}  // namespace calcalert::fhir
