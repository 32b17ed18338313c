// Thin read-only views over FHIR R4 resources held as RapidJSON values. A view checks the JSON type
// of every element it reads and throws ElementError with the element's FHIR path when it is wrong.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <rapidjson/document.h>

#include "fhir/datetime.hpp"
#include "fhir/problem.hpp"

namespace calcalert::fhir {

using Json = rapidjson::Value;

// "a string", "an object", ...: for error messages.
const char* json_type_name(const Json& v);

// Typed member access; `path` is the FHIR path of `obj`, used in errors.
const Json* member(const Json& obj, std::string_view name);
std::optional<std::string_view> string_member(const Json& obj, std::string_view name, std::string_view path);
// Lenient: the member's string, or "" when it is absent or not a string (for reading what a server
// answered, where a wrong type is simply "not there").
std::string string_or_empty(const Json& obj, std::string_view name);
std::optional<double> number_member(const Json& obj, std::string_view name, std::string_view path);
const Json* object_member(const Json& obj, std::string_view name, std::string_view path);
const Json* array_member(const Json& obj, std::string_view name, std::string_view path);

struct Coding {
    std::string_view system;
    std::string_view code;
    std::string_view display;
};

// CodeableConcept.coding (an absent concept_id gives an empty list). `text` is CodeableConcept.text.
struct CodeableConcept {
    std::vector<Coding> coding;
    std::string_view text;
    bool present = false;
    bool has_code(std::string_view code) const;
    std::string_view first_code() const;
};
CodeableConcept codeable_concept(const Json* v, std::string_view path);

struct Quantity {
    std::optional<double> value;
    std::string_view comparator;  // "", "<", "<=", ">=", ">"
    std::string_view unit;
    std::string_view system;
    std::string_view code;
};
Quantity quantity(const Json& v, std::string_view path);

// The parts of a resource every view shares.
class ResourceView {
public:
    ResourceView(const Json& json, std::string type);
    const Json& json() const { return *json_; }
    const std::string& type() const { return type_; }
    std::string_view id() const { return id_; }
    std::string_view version_id() const { return version_id_; }
    std::optional<EpochSeconds> last_updated() const { return last_updated_; }
    // "Observation/1" or "Observation/1/_history/3" when the version is known.
    std::string versioned_reference() const;
    std::string reference() const;

protected:
    const Json* json_;
    std::string type_;
    std::string_view id_;
    std::string_view version_id_;
    std::optional<EpochSeconds> last_updated_;
};

// Reads the resourceType (throws ElementError when absent or not a string).
std::string_view resource_type(const Json& json, const std::string& where_path);

struct EffectiveTime {
    std::optional<EpochSeconds> time;
    std::string element;  // which element gave it: effectiveDateTime, effectivePeriod.start, ...
};

class ObservationView : public ResourceView {
public:
    explicit ObservationView(const Json& json);
    std::string_view status() const { return status_; }
    const CodeableConcept& code() const { return code_; }
    std::string_view subject_reference() const { return subject_; }
    // effectiveDateTime, else effectivePeriod.start, else effectiveInstant, else issued.
    EffectiveTime effective() const;
    const Json* value_quantity() const;  // nullptr when absent
    bool has_data_absent_reason() const;
    // value[x] present with a type other than Quantity (valueString, valueCodeableConcept, ...)
    std::string_view other_value_element() const;
    // referenceRange[0].high, when present.
    std::optional<Quantity> reference_range_high() const;

    struct Component {
        std::size_t index;
        const Json* json;
        CodeableConcept code;
        const Json* value_quantity;
        bool data_absent;
        std::optional<Quantity> reference_range_high;
    };
    std::vector<Component> components() const;

private:
    std::string_view status_;
    CodeableConcept code_;
    std::string_view subject_;
};

class ConditionView : public ResourceView {
public:
    explicit ConditionView(const Json& json);
    const CodeableConcept& code() const { return code_; }
    std::string_view subject_reference() const { return subject_; }
    std::string_view clinical_status() const;      // first code of clinicalStatus, "" if absent
    std::string_view verification_status() const;  // first code of verificationStatus, "" if absent
    std::optional<EpochSeconds> onset() const;     // onsetDateTime or onsetPeriod.start
    std::optional<EpochSeconds> recorded_date() const;
    bool has_abatement() const;
    std::optional<EpochSeconds> abatement() const;  // abatementDateTime or abatementPeriod.start

private:
    CodeableConcept code_;
    std::string_view subject_;
};

class ProcedureView : public ResourceView {
public:
    explicit ProcedureView(const Json& json);
    std::string_view status() const { return status_; }
    const CodeableConcept& code() const { return code_; }
    std::string_view subject_reference() const { return subject_; }
    struct Performed {
        std::optional<EpochSeconds> start;  // performedDateTime, or performedPeriod.start
        std::optional<EpochSeconds> end;    // performedDateTime, or performedPeriod.end
        std::string_view other;             // "performedString", "performedAge", ...: present but not a time
    };
    Performed performed() const;

private:
    std::string_view status_;
    CodeableConcept code_;
    std::string_view subject_;
};

class PatientView : public ResourceView {
public:
    explicit PatientView(const Json& json);
    std::optional<bool> deceased_boolean() const;
    std::optional<EpochSeconds> deceased_date_time() const;
};

// The url of the first entry of `obj.modifierExtension` ("(no url)" when it has none), or nullopt when
// there is none. No modifier extension is understood by the reader: FHIR R4 says a modifier the
// reader does not know changes the meaning of the element holding it. `path` is obj's FHIR path.
std::optional<std::string> modifier_extension_url(const Json& obj, const std::string& path);

// OperationOutcome.issue as readable lines: "error (processing): diagnostics [expression]".
std::vector<std::string> operation_outcome_issues(const Json& json);


}  // namespace calcalert::fhir
