// Reads what the rules need about one patient from the FHIR server: the lab Observations of the
// codes the rules read within the rule windows (also those dated only by `issued`, and labs that sit
// only in a `component` of a panel), the Conditions, the dialysis Procedures of the procedure window,
// the Patient (deceased), and calcalert's own DetectedIssues. Subjects may be written relative or as
// absolute URLs on this server's base.
//
// How lab codes are searched follows the server's CapabilityStatement (`LabCodeSearch`):
// `combo-code` (code or component code) where offered; else `code` plus a second search on
// `component-code`; else `code` plus the patient's laboratory Observations read whole ("the panels").
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "adapters/poll/reconcile.hpp"
#include "fhir/client.hpp"
#include "fhir/problem.hpp"
#include "mappings/terminology.hpp"
#include "rules/catalog.hpp"
#include "rules/facts.hpp"

namespace calcalert::poll {

enum class LabCodeSearch { combo_code, code_and_component_code, code_and_panels };
const char* to_string(LabCodeSearch s);

// The lab code search a server offers, from its CapabilityStatement's Observation searchParams.
// A server whose /metadata cannot be read or does not list them gets code_and_panels (correct
// everywhere, only slower).
LabCodeSearch lab_code_search_from_capabilities(const rapidjson::Value& capability_statement);

// The codes the rules read, as a token search value list (comma-separated, each system|code,
// percent-encoded), for the change feed and the history searches alike.
std::string lab_code_list(const mappings::Terminology& terminology);
// The dialysis procedure codes (mappings/data/procedure-codes.tsv), in the same form.
std::string procedure_code_list(const mappings::Terminology& terminology);
LabCodeSearch discover_lab_code_search(fhir::FhirClient& client);

struct PatientHistory {
    rules::PatientFacts facts;
    std::vector<fhir::Problem> unreadable;   // resources that could not be read (severity error)
    std::size_t data_quality_notes = 0;      // other input problems (warnings), for the summary
    std::vector<ServerAlert> alerts;         // calcalert's DetectedIssues for the patient
    std::vector<std::string> notes;          // server oddities met (a looping next link)
};

struct HistoryOptions {
    std::string identifier_system;           // calcalert's DetectedIssue.identifier system
    std::string evidence_hash_extension;     // the extension carrying the evidence hash
    std::size_t page_size = 200;
    LabCodeSearch lab_search = LabCodeSearch::combo_code;
    // Patients read together by one set of searches (subject=a,b,...; 1: each alone).
    std::size_t batch = 10;
};

// Where the poller's work stage gets what it decides on: the server's searches (HistoryReader), or
// a Bulk Data export read into memory (ExportSnapshot, backfill.hpp).
class PatientSource {
public:
    virtual ~PatientSource() = default;
    virtual PatientHistory read(const std::string& patient, rules::EpochSeconds now) = 0;
    // calcalert's DetectedIssues for the patient as the server holds them now (also after a write
    // whose answer was lost, to decide again).
    virtual std::vector<ServerAlert> read_alerts(const std::string& patient) = 0;
    // The patients about to be read, in order: a source may read them ahead, together.
    virtual void prepare(const std::vector<std::string>& /*upcoming*/, rules::EpochSeconds /*now*/) {}
    // How many patients prepare() reads together (1: it reads nothing ahead).
    virtual std::size_t batch() const { return 1; }
};

class HistoryReader : public PatientSource {
public:
    HistoryReader(fhir::FhirClient& client, const mappings::Terminology& terminology, const rules::RuleCatalog& catalog,
                  HistoryOptions options);

    PatientHistory read(const std::string& patient, rules::EpochSeconds now) override;
    // Notes on odd paging are kept for the next read().
    std::vector<ServerAlert> read_alerts(const std::string& patient) override;
    // Reads up to `batch` of them with one set of searches; read() then hands each out. A group with
    // a resource that cannot be read is not kept: its patients are read alone, where the problem is
    // theirs. Failed requests are left to read(), which reports them per patient.
    void prepare(const std::vector<std::string>& upcoming, rules::EpochSeconds now) override;
    std::size_t batch() const override { return opt_.batch == 0 ? 1 : opt_.batch; }

private:
    // The histories of `patients` from one set of searches; `whole` is false when a resource of the
    // answers could not be read (its owner is then unknown).
    std::map<std::string, PatientHistory> read_together(const std::vector<std::string>& patients, rules::EpochSeconds now,
                                                        bool& whole);

    fhir::FhirClient& client_;
    const mappings::Terminology& term_;
    const rules::RuleCatalog& catalog_;
    HistoryOptions opt_;
    std::string codes_;
    std::string procedure_codes_;
    std::vector<std::string> notes_;  // of read_alerts(), until handed out
    std::map<std::string, PatientHistory> ahead_;  // read by prepare(), not yet handed out
    rules::EpochSeconds ahead_at_ = 0;              // the `now` they were read for
};

// Reads one of calcalert's DetectedIssues (its identifier in `identifier_system`); false when the
// resource is not one.
bool read_server_alert(const rapidjson::Value& resource, const std::string& identifier_system,
                       const std::string& evidence_hash_extension, ServerAlert& out);
// calcalert's DetectedIssues among a searchset page's entries, each with its resource.
void for_each_server_alert(const rapidjson::Value& page, const std::string& identifier_system,
                           const std::string& evidence_hash_extension,
                           const std::function<void(ServerAlert&, const rapidjson::Value& resource)>& on_alert);

}  // namespace calcalert::poll
