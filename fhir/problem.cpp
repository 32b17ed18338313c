#include "fhir/problem.hpp"

namespace calcalert::fhir {

std::string Location::describe() const {
    std::string out = file.empty() ? std::string("<input>") : file;
    if (line > 0) out += ":" + std::to_string(line);
    if (entry >= 0) out += " entry[" + std::to_string(entry) + "]";
    if (!resource.empty()) out += " " + resource;
    return out;
}

const char* to_string(Severity s) {
    switch (s) {
        case Severity::fatal: return "fatal";
        case Severity::error: return "error";
        case Severity::warning: return "warning";
        case Severity::information: return "information";
    }
    return "error";
}

std::string Problem::describe() const {
    std::string out = where.describe() + ": ";
    if (!path.empty()) out += path + ": ";
    out += message;
    return out;
}

}  // namespace calcalert::fhir
