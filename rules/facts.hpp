// The facts vocabulary: what the engine knows about one patient, in compact form (no JSON).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace calcalert::rules {

using EpochSeconds = std::int64_t;

enum class Analyte : std::uint8_t {
    calcium_total,
    calcium_ionized,
    calcium_corrected,
    phosphate,
    pth_intact,
    alkaline_phosphatase,
    albumin,
    egfr,
};
inline constexpr int analyte_count = 8;

std::string_view analyte_name(Analyte a);  // "calcium-total", ...
std::optional<Analyte> analyte_from_name(std::string_view name);
std::string_view analyte_label(Analyte a);  // "Total calcium", ...
std::string_view canonical_unit(Analyte a);  // "mg/dL", ...
std::string_view display_unit(Analyte a);    // the canonical unit as people write it: "mL/min/1.73 m²" for eGFR

enum class Comparator : std::uint8_t { none, lt, le, ge, gt };
std::optional<Comparator> comparator_from_string(std::string_view s);
std::string_view to_string(Comparator c);

// True only when the value (with its comparator) proves it lies strictly above / below the threshold:
// ">80" is above 70; "<5" is not above 10; "<80" decides nothing about 70.
bool decides_above(double value, Comparator c, double threshold);
bool decides_below(double value, Comparator c, double threshold);

// One numeric lab result, already in the analyte's canonical unit.
struct LabResult {
    Analyte analyte{};
    double value = 0;
    Comparator comparator = Comparator::none;
    EpochSeconds effective = 0;
    std::optional<double> reference_high;  // canonical unit
    std::string status;                    // Observation.status
    std::string source;                    // "Observation/1/_history/2"
    std::string code;                      // LOINC code it came from
    std::string reported;                  // "2.55 mmol/L" when converted, else empty
};

// One condition mapped to a concept_id (dx.<concept_id>).
struct ConditionFact {
    std::string concept_id;
    std::string system;
    std::string code;
    std::string display;
    std::string code_label;           // "ICD-10-CM N18.6", for explanations
    std::string caveat;               // e.g. broad-code note from the terminology data
    std::string clinical_status;      // "" when absent
    std::string verification_status;  // "" when absent
    std::optional<EpochSeconds> onset;
    std::optional<EpochSeconds> recorded;  // Condition.recordedDate
    bool has_abatement = false;
    std::optional<EpochSeconds> abatement;
    std::string source;
};

// The procedure concepts the engine reads (ProcedureFact::concept_id; the terminology data maps
// Procedure codes to them): "dialysis" (fact dialysis-procedure).
const std::vector<std::string_view>& procedure_concepts();

// One Procedure mapped to a procedure concept. The engine decides whether it counts (status, time).
struct ProcedureFact {
    std::string concept_id;                    // "dialysis"
    std::string code_label;                    // "SNOMED CT 302497006", for explanations
    std::string display;
    std::string status;                        // Procedure.status
    std::optional<EpochSeconds> performed_start;  // performedDateTime, or performedPeriod.start
    std::optional<EpochSeconds> performed_end;    // performedDateTime, or performedPeriod.end
    std::string source;
};

// What the Patient resource says about death: deceasedBoolean true, or deceasedDateTime.
struct Deceased {
    std::optional<EpochSeconds> at;  // deceasedDateTime; nullopt for deceasedBoolean true
    std::string source;              // "Patient/1/_history/2"
};

// Data that could not be used, kept so that nothing is dropped silently.
struct DataQualityNote {
    std::string source;   // "Observation/1" or a file location
    std::string path;     // FHIR element path
    std::string message;
};

struct PatientFacts {
    // "Patient/123"; for a patient another server names, its absolute URL
    // ("https://other.example.org/fhir/Patient/123"); for a Patient without an id, its urn:uuid fullUrl.
    std::string patient;
    std::vector<LabResult> labs;
    std::vector<ConditionFact> conditions;
    std::vector<DataQualityNote> notes;
    std::vector<ProcedureFact> procedures{};
    std::optional<Deceased> deceased{};  // from the Patient resource: no finding once it holds at `now`
};

// One draft order (a MedicationRequest of CDS Hooks draftOrders) that matches an order class: the fact
// order.<order_class> for that order. The classes are rules::order_classes() (rules/catalog.hpp); an order
// matching two classes gives two OrderFacts with the same source.
struct OrderFact {
    std::string order_class;  // "iv-calcium", "iv-phosphate", "systemic-corticosteroid"
    std::string code;         // the RxNorm code that matched; empty for a match on the order's text
    std::string display;      // the drug as the order names it
    std::string route;        // the route as the order gives it; empty when it gives none
    std::string basis;        // how the order matched, in words: code, term type, route or dose-form evidence
    std::string source;       // "MedicationRequest/request-123": one source per order
};

}  // namespace calcalert::rules
