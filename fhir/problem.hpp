// Where a problem in FHIR input sits, and what it is.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace calcalert::fhir {

// A place in the input: a file (or "-" for stdin), an NDJSON line or a Bundle entry, and the resource.
struct Location {
    std::string file;
    std::size_t line = 0;          // 1-based NDJSON line, 0 when not NDJSON
    long entry = -1;               // Bundle.entry index, -1 when not in a Bundle
    std::string resource;          // "Observation/123" once known

    std::string describe() const;  // "obs.ndjson:4 Observation/123", "cohort.json entry[3] Condition/x"
};

enum class Severity { fatal, error, warning, information };
const char* to_string(Severity s);

// One problem with the input. `fatal` means a whole file could not be read; `error` means one
// resource or line was rejected; `warning`/`information` are data-quality notes.
struct Problem {
    Severity severity = Severity::error;
    Location where;
    std::string path;      // FHIR element path, e.g. Observation.valueQuantity.value
    std::string message;

    std::string describe() const;  // one line: "file:4 Observation/1: Observation.valueQuantity.value: expected a number"
};

// Thrown by views when a present element has the wrong JSON type or form.
class ElementError : public std::runtime_error {
public:
    ElementError(std::string path, const std::string& message)
        : std::runtime_error(message), path_(std::move(path)) {}
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

}  // namespace calcalert::fhir
