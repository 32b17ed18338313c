// The synthetic cohort of the sandbox: deterministic patients drawn from clinical archetypes (every
// rule of clinical-rules.md firing in several variants, near-misses that must not fire, healthy
// patients), each with the rule ids its archetype says must fire, and its FHIR R4 resources.
//
// The archetypes are data: adapters/sandbox/data/archetypes.json (docs/cli.md describes it) names
// concepts and analytes of the terminology (mappings/data/*.tsv), whose codes the generator draws;
// value bands, units, times, statuses and the expected rule ids are in the file. The file is checked
// strictly when it is loaded (unknown keys, unknown names, codes the terminology reads otherwise), and
// an error names the file, the archetype and the key path.
//
// The ground truth comes from the archetype definitions alone: the generator never runs the engine.
// Values are drawn from bands chosen so that every draw of an archetype gives the same findings.
//
// Determinism: one patient depends only on (seed, index, now), through our own splitmix64 generator
// and integer-to-range mapping (no std:: distributions, whose output is implementation-defined), so
// patients can be generated one at a time, in any order, and a cohort streams in constant memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace calcalert::sandbox {

using EpochSeconds = std::int64_t;

struct SyntheticResource {
    std::string type;  // "Patient", "Observation", "Condition" or "Procedure"
    std::string id;
    std::string json;  // FHIR R4 JSON on one line; subjects written as "Patient/<patient id>"
};

struct SyntheticPatient {
    std::size_t index = 0;
    std::string id;                            // "syn-<seed>-<index>"
    std::string name;                          // "Given Family"
    std::string archetype;                     // an Archetype::name
    std::vector<std::string> expected;         // rule ids that must fire, sorted; empty: no finding
    std::vector<SyntheticResource> resources;  // the Patient, then Observations, Conditions, Procedures

    std::string reference() const { return "Patient/" + id; }
};

struct Archetype {
    std::string name;
    std::string group;  // the rule id it exercises, "near-miss" or "healthy"
    std::string description;
    std::vector<std::string> expected;  // sorted rule ids
    unsigned weight = 0;                // share of the cohort, out of the library's total weight
};

// An archetype file that cannot be read or is invalid: "<file>: archetype '<name>': <key path>: <what>".
class ArchetypeError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The archetypes of one file, compiled against the terminology data of one directory.
class ArchetypeLibrary {
public:
    // Throws ArchetypeError, or mappings::TerminologyError for invalid terminology data.
    static std::shared_ptr<const ArchetypeLibrary> load(const std::filesystem::path& file,
                                                        const std::filesystem::path& terminology_dir);
    ~ArchetypeLibrary();

    const std::vector<Archetype>& archetypes() const;  // in the file's order
    unsigned total_weight() const;

    struct Impl;
    const Impl& impl() const { return *impl_; }

private:
    ArchetypeLibrary();
    std::unique_ptr<Impl> impl_;
};

// <data root>/adapters/sandbox/data/archetypes.json and <data root>/mappings/data (mappings/data_root.hpp).
std::filesystem::path default_archetype_file();
std::filesystem::path default_terminology_dir();
// The library of the default files, loaded on first use; throws as ArchetypeLibrary::load.
std::shared_ptr<const ArchetypeLibrary> default_library();

// The default library's archetypes and their total weight.
const std::vector<Archetype>& archetypes();
unsigned total_archetype_weight();

class CohortGenerator {
public:
    CohortGenerator(std::uint64_t seed, EpochSeconds now);  // the default library
    CohortGenerator(std::uint64_t seed, EpochSeconds now, std::shared_ptr<const ArchetypeLibrary> library);

    // Patient number `index` (0-based). Archetypes are dealt from a shuffled deck of
    // total_weight() cards per block of that many patients, so every block holds each archetype
    // exactly `weight` times.
    SyntheticPatient patient(std::size_t index) const;
    // Patient number `index` drawn from archetype number `archetype` of the library (its own stream:
    // the same as patient(index) when the deck deals that archetype there). For tests of one archetype.
    SyntheticPatient patient_of(std::size_t archetype, std::size_t index) const;

    std::uint64_t seed() const { return seed_; }
    EpochSeconds now() const { return now_; }

    const ArchetypeLibrary& library() const { return *library_; }

private:
    std::uint64_t seed_;
    EpochSeconds now_;
    std::shared_ptr<const ArchetypeLibrary> library_;
};

std::vector<SyntheticPatient> generate_cohort(std::size_t patients, std::uint64_t seed, EpochSeconds now);

// A stable urn:uuid for a resource (a name-based UUID of "Type/id"), used as its Bundle fullUrl.
std::string resource_urn(std::string_view type, std::string_view id);

// Bulk-Data NDJSON: one resource per line into the stream of its type.
void write_ndjson(const SyntheticPatient& patient, std::ostream& patients, std::ostream& observations,
                  std::ostream& conditions, std::ostream& procedures);

// A FHIR transaction Bundle written entry by entry: every resource with a urn:uuid fullUrl and
// request PUT Type/id (client ids, so seeding twice updates instead of duplicating); subjects are
// the urn:uuid of the patient's entry.
class TransactionBundleWriter {
public:
    explicit TransactionBundleWriter(std::ostream& out);
    void add(const SyntheticPatient& patient);
    void finish();  // closes the Bundle; nothing may be added afterwards
    std::size_t entries() const { return entries_; }

private:
    std::ostream& out_;
    std::size_t entries_ = 0;
    bool finished_ = false;
};
std::string transaction_bundle(const std::vector<SyntheticPatient>& batch);

// The ground-truth file:
// {"now": "...", "seed": S, "patients": [{"patient": "Patient/syn-1-0", "name": "...",
//   "archetype": "...", "expect": ["calciphylaxis-risk"]}, ...]}
class ExpectedWriter {
public:
    ExpectedWriter(std::ostream& out, EpochSeconds now, std::uint64_t seed);
    void add(const SyntheticPatient& patient);
    void finish();

private:
    std::ostream& out_;
    std::size_t count_ = 0;
    bool finished_ = false;
};

}  // namespace calcalert::sandbox
