// The decision at the heart of write-back, as a pure function: given what the rules found for one
// patient and calcalert's DetectedIssues for that patient as the FHIR server holds them, which
// writes make the server agree? No I/O, no clock, no state: a table-driven unit test covers every
// case (tests/unit/reconcile_test.cpp).
//
//   finding   on the server                      write
//   yes       none                               create (conditional on the identifier)
//   yes       open (final/amended/preliminary),  nothing (unchanged)
//             same evidence hash and severity
//   yes       open, other evidence hash or       amend  (status amended)
//             severity, or no hash recorded
//   yes       cancelled                          reopen (status final)
//   yes       entered-in-error, same evidence    nothing: a person retracted it; respected until the
//                                                evidence changes
//   yes       entered-in-error, other evidence   reopen
//   no        open                               cancel (the server's resource, status cancelled),
//                                                unless the patient's data could not all be read
//                                                (`complete` false): no retraction on partial data
//   no        cancelled / entered-in-error       nothing
//   any       a second resource with the same    the extra one marked entered-in-error (lowest id
//             identifier                         kept), so there is never a duplicate alert
//
// Amend decisions rest on the evidence hash (Finding::evidence_hash: the rule's logic version and
// the evidence values, dates and sources) and the severity, never on rendered text.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace calcalert::poll {

// A finding as the write-back needs it.
struct DesiredAlert {
    std::string identifier;  // mappings::alert_identifier(patient, rule)
    std::string patient;
    std::string rule_id;
    std::string severity;
    std::string evidence_hash;
    std::string summary;
    std::string resource;    // the DetectedIssue to write (status final, no id), JSON
};

// One of calcalert's DetectedIssues on the server.
struct ServerAlert {
    std::string identifier;
    std::string id;             // DetectedIssue.id
    std::string version;        // meta.versionId ("" when the server gives none)
    std::string status;
    std::string severity;
    std::string rule_id;
    std::string evidence_hash;  // from the evidence-hash extension; "" when absent
    std::string resource;       // the resource as the server has it, JSON
};

enum class WriteAction { create, amend, reopen, cancel, retire_duplicate };
const char* to_string(WriteAction a);

// One DetectedIssue write.
struct PlannedWrite {
    WriteAction action = WriteAction::create;
    std::string patient;
    std::string rule_id;
    std::string identifier;
    std::string status;         // the status written
    std::string evidence_hash;  // of what is written (the server's for cancel / retire)
    std::string summary;
    // The Bundle entry: POST DetectedIssue + ifNoneExist, or PUT DetectedIssue/<id> + ifMatch.
    std::string method;
    std::string url;
    std::string if_none_exist;
    std::string if_match;
    std::string resource;       // JSON, with id for a PUT
};

struct Reconciliation {
    std::vector<PlannedWrite> writes;
    std::size_t unchanged = 0;
    std::size_t kept_while_incomplete = 0;  // open alerts not cancelled because data could not be read
};

struct ReconcileOptions {
    std::string patient;            // "Patient/123", for the writes that have no finding
    std::string identifier_system;  // for the ifNoneExist search
    bool complete = true;           // false: some of the patient's resources could not be read
};

Reconciliation reconcile(const std::vector<DesiredAlert>& findings, const std::vector<ServerAlert>& on_server,
                         const ReconcileOptions& options);

}  // namespace calcalert::poll
