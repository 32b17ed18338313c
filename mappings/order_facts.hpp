// Draft orders -> order facts: the MedicationRequests of a CDS Hooks order-select / order-sign call
// (context.draftOrders) matched to the order classes of the order rules (iv-calcium, iv-phosphate,
// systemic-corticosteroid) with the data of mappings/data/{medications,routes,dose-forms}.tsv, following the
// matching design of terminology-rxnorm.md §1 (docs/rules.md, "Order rules").
//
// Read as real EHRs and the public CDS Hooks sandbox send them: a draftOrders Bundle with or without
// `type`; category / reasonCode as single objects or lists (never read); any intent; the drug as an RxNorm
// medicationCodeableConcept and/or a medicationReference to a contained Medication or to a Medication of
// draftOrders (its code, form and ingredient[].itemCodeableConcept); routes in dosageInstruction[].route.
// Only drafts count (status `draft`, or no status): CDS Hooks draftOrders holds the orders being drafted.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <rapidjson/document.h>

#include "fhir/problem.hpp"
#include "mappings/medications.hpp"
#include "rules/facts.hpp"

namespace calcalert::mappings {

struct OrderReading {
    // One per (order, class) matched; an order that matches nothing gives none. OrderFact::source is
    // "MedicationRequest/<id>" (no version: the id CDS Hooks `selections` name).
    std::vector<rules::OrderFact> facts;
    // Why an order or a code did not count: not a draft, doNotPerform, an unresolved medicationReference,
    // a code that needs a route the order does not give, an excluded (local-only, oral) product.
    std::vector<rules::DataQualityNote> notes;
    // read_draft_orders only: orders (and Bundle parts) that could not be read, with the entry index, the
    // resource and the element path. The other orders are still read.
    std::vector<fhir::Problem> problems;
    std::size_t orders = 0;  // MedicationRequests read
};

// One MedicationRequest. `draft_orders` is the Bundle it came in, to resolve a medicationReference to one
// of its Medications (may be null). Throws fhir::ElementError naming the element path (e.g.
// "MedicationRequest.dosageInstruction[0].route: expected an object, found a string") when the order
// cannot be read, or when it is not a MedicationRequest.
OrderReading read_order(const rapidjson::Value& medication_request, const Medications& medications,
                        const rapidjson::Value* draft_orders = nullptr);

// The most MedicationRequests one CDS Hooks call may carry in context.draftOrders: above it the service
// answers 400 (OperationOutcome code `too-costly`, naming the limit) and evaluates none.
inline constexpr std::size_t kMaxDraftOrders = 500;

// The MedicationRequests of context.draftOrders (Bundle entries, or 1 for a single MedicationRequest),
// counted without reading them; 0 for anything else.
std::size_t count_draft_orders(const rapidjson::Value& draft_orders);

// CDS Hooks context.draftOrders: a Bundle (any type or none; entry as a list or a single object) or a
// single MedicationRequest. Resources other than MedicationRequest (Medication, ServiceRequest,
// NutritionOrder, ...) give no facts. Never throws for bad input: problems are returned. Linear in the
// Bundle: medicationReferences resolve through an index of its entries built once. No cap here (the
// service applies kMaxDraftOrders).
OrderReading read_draft_orders(const rapidjson::Value& draft_orders, const Medications& medications);

}  // namespace calcalert::mappings
