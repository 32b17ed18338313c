// Scheduled hospital polling: incremental sync of Observation and Condition by _lastUpdated, per
// changed patient a fetch of the relevant history and an evaluation, and idempotent write-back of
// DetectedIssues (create / amend / cancel) in transaction Bundles. State (watermarks, seen versions,
// the alert ledger, run history) lives in a StateStore; the watermark advances only after every
// write of the run has landed, so a run killed at any point is simply redone by the next one.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "adapters/state/state_store.hpp"
#include "fhir/client.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/terminology.hpp"
#include "rules/catalog.hpp"

namespace calcalert::poll {

struct PollOptions {
    bool dry_run = false;
    std::chrono::seconds overlap{300};  // re-read this much before the watermark (clock skew, slow commits)
    std::size_t page_size = 200;
    std::size_t write_batch = 50;       // DetectedIssue writes per transaction Bundle
    mappings::IssueOptions issue;
    // Test hook: raise SIGKILL right after this many write batches have been sent (0 = never).
    std::size_t kill_after_batches = 0;
    // Called with (done, total) while patients are evaluated (for a progress display).
    std::function<void(std::size_t, std::size_t)> progress;
};

// One DetectedIssue write (or, in a dry run, one that would be made).
struct Write {
    std::string action;  // create | amend | cancel | reopen
    std::string patient;
    std::string rule_id;
    std::string identifier;
    std::string status;  // the status written
    std::string summary;
};

struct PollSummary {
    std::size_t resources_read = 0;     // Observations and Conditions returned by the incremental sync
    std::size_t resources_skipped = 0;  // already processed (same id and versionId)
    std::size_t patients_changed = 0;
    std::size_t patients_evaluated = 0; // changed patients plus patients with open alerts
    std::size_t findings = 0;
    std::size_t created = 0, amended = 0, cancelled = 0, reopened = 0, unchanged = 0;
    std::size_t data_quality_notes = 0;
    std::size_t input_problems = 0;
    std::uint64_t requests = 0;
    std::size_t write_batches = 0;
    std::vector<Write> writes;
    std::string to_json() const;
};

class Poller {
public:
    Poller(fhir::FhirClient& client, state::StateStore& store, const mappings::Terminology& terminology,
           const rules::RuleCatalog& catalog, PollOptions options);

    // One polling pass at evaluation time `now`. Throws fhir::FhirError / state::StateError when the
    // server or the state fails; the state is then not advanced past data that was not processed.
    PollSummary run_once(rules::EpochSeconds now);

    // The LOINC codes whose Observations the rules read, as a token search value list.
    std::string observation_code_filter() const;

private:
    const std::string& server() const { return client_.base_url(); }

    fhir::FhirClient& client_;
    state::StateStore& store_;
    const mappings::Terminology& term_;
    const rules::RuleCatalog& catalog_;
    PollOptions opt_;
};

}  // namespace calcalert::poll
