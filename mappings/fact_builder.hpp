// FHIR -> facts: turns Observation, Condition and Patient resources into compact per-patient facts
// (clinical-rules.md §1.1), keeping a data-quality note for everything it cannot use.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "fhir/resource_reader.hpp"
#include "mappings/terminology.hpp"
#include "rules/facts.hpp"

namespace calcalert::mappings {

class FactBuilder : public fhir::ResourceHandler {
public:
    explicit FactBuilder(const Terminology& terminology) : term_(terminology) {}

    void on_resource(const rapidjson::Value& resource, std::string_view type, const fhir::Location& where,
                     const fhir::BundleContext* bundle) override;
    void on_problem(const fhir::Problem& problem) override { problems_.push_back(problem); }

    // Every patient seen (as a Patient resource or as a subject), ordered by reference.
    const std::map<std::string, rules::PatientFacts>& patients() const { return patients_; }
    std::map<std::string, rules::PatientFacts>& patients() { return patients_; }
    // Input problems: rejected files, lines, entries and resources that belong to no patient.
    const std::vector<fhir::Problem>& problems() const { return problems_; }

private:
    rules::PatientFacts& patient(const std::string& ref);
    // The patient a resource's subject names, or nullptr (with a problem recorded).
    rules::PatientFacts* subject(std::string_view reference, const std::string& type, const fhir::Location& where,
                                 const fhir::BundleContext* bundle);
    void observation(const rapidjson::Value& json, const fhir::Location& where, const fhir::BundleContext* bundle);
    void condition(const rapidjson::Value& json, const fhir::Location& where, const fhir::BundleContext* bundle);

    const Terminology& term_;
    std::map<std::string, rules::PatientFacts> patients_;
    std::vector<fhir::Problem> problems_;
};

}  // namespace calcalert::mappings
