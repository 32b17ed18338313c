// Scheduled hospital polling, one pass as a resumable job over four stages:
//
//   1. ChangeFeed (change_feed.hpp): Observations of the lab codes, Conditions and dialysis
//      Procedures changed since the watermark; every page checkpointed (patients queued, versions
//      marked processed, cursor).
//   2. The work: the queued patients, plus every patient with an open alert whose findings time
//      alone may have changed by now (a result left its window: rules::next_time_change, saved as
//      the patient's recheck time when it was last evaluated); each read by HistoryReader
//      (history_reader.hpp) and evaluated.
//   3. reconcile() (reconcile.hpp): the pure decision create / amend / reopen / cancel / unchanged.
//   4. WriteBack (write_back.hpp): Bundles that fit the server; the ledger updated and the patient
//      taken off the queue only once its writes have landed.
//
// A pass that fails (its fault budget spent, the state unwritable) keeps everything it finished;
// the next pass resumes with the rest. A patient some of whose resources cannot be read is
// evaluated on what can be read (no alert is retracted on partial data), reported, and kept queued
// so that every later pass tries it again until it reads cleanly.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <ostream>
#include <string>
#include <vector>

#include "adapters/poll/change_feed.hpp"
#include "adapters/poll/history_reader.hpp"
#include "adapters/poll/reconcile.hpp"
#include "adapters/poll/write_back.hpp"
#include "adapters/state/state_store.hpp"
#include "fhir/client.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/terminology.hpp"
#include "rules/catalog.hpp"

namespace calcalert::poll {

// A named point in a pass where a test can SIGKILL the process (CALCALERT_TEST_KILL_AT=name:n,
// the n-th time the point is reached). Points: feed-page (after a feed page's checkpoint),
// feed-done, patient-read, patient-evaluated, bundle-sent (answer received, ledger not yet
// written), bundle-committed, pass-done (before the run record); a backfill's export-started (the
// status URL saved), export-ready (the manifest read) and export-file (a file read).
struct KillPoint {
    std::string name;
    std::size_t n = 0;  // 0 = never
};
std::optional<KillPoint> parse_kill_point(const std::string& text);  // "bundle-sent:3"

// A poller's name in its claims when none is given: the host name ("calcalert-poll" without one).
std::string default_worker_id();

struct PollOptions {
    bool dry_run = false;
    std::chrono::seconds overlap{300};  // re-read this much before the watermark (clock skew, slow commits)
    std::size_t page_size = 200;
    std::size_t history_batch = 10;     // patients whose histories are read by one set of searches
    WriteBackOptions write;             // Bundle type and size
    mappings::IssueOptions issue;
    // How lab codes are searched; nullopt = from the server's CapabilityStatement.
    std::optional<LabCodeSearch> lab_search;
    KillPoint kill;                     // test hook
    // Called with (done, total) while patients are evaluated (for a progress display).
    std::function<void(std::size_t, std::size_t)> progress;
    // Pollers sharing one state database (state::WorkLeases): each claims the change feed, and each
    // patient, before working on it, under this name ("" = the host name, which a restarted poller
    // keeps, so that it takes its own claims back at once). A claim lasts `lease` by the wall clock
    // (`clock`, epoch seconds; the system clock when empty) and is given up when the work is done;
    // the feed's claim is renewed at every page.
    std::string worker_id;
    std::chrono::seconds lease{600};
    std::function<std::int64_t()> clock;
};

// One DetectedIssue write (or, in a dry run, one that would be made).
struct Write {
    std::string action;  // create | amend | cancel | reopen | retire
    std::string patient;
    std::string rule_id;
    std::string identifier;
    std::string status;  // the status written
    std::string summary;
};

// A resource a pass could not read, and where.
struct Unreadable {
    std::string patient;
    std::string description;  // fhir::Problem::describe()
};

struct PollSummary {
    std::size_t resources_read = 0;     // Observations, Conditions and Procedures returned by the change feed
    std::size_t resources_skipped = 0;  // already processed (same id and versionId) or repeated
    std::size_t resources_not_counted = 0;  // new Condition versions the rules do not read (patients not queued)
    std::size_t feed_pages = 0;
    bool resumed = false;               // the pass continued an unfinished one
    std::size_t patients_changed = 0;   // named by this pass's change feed
    std::size_t patients_queued = 0;    // in the work queue at the start of the work stage
    std::size_t patients_evaluated = 0;
    std::size_t patients_deferred = 0;  // left queued for the next pass (see `deferred`)
    // Patients with an open alert not evaluated: nothing changed, and time alone cannot change their
    // findings before their recheck time (rules::next_time_change).
    std::size_t open_alerts_not_due = 0;
    // Pollers sharing the state: patients left to the poller that holds their claim, and who read the
    // change feed when another poller did ("" when this one did).
    std::size_t patients_claimed_elsewhere = 0;
    std::string feed_read_by;
    std::string worker;                 // the poller that ran the pass (PollOptions::worker_id or the host name)
    std::size_t findings = 0;
    std::size_t created = 0, amended = 0, cancelled = 0, reopened = 0, retired = 0, unchanged = 0;
    std::size_t kept_while_incomplete = 0;
    std::size_t conflicts = 0;          // version conflicts: re-read and decided again
    std::size_t data_quality_notes = 0;
    std::size_t input_problems = 0;
    std::uint64_t requests = 0;
    std::uint64_t retries = 0;
    std::size_t write_batches = 0;
    std::size_t bundle_splits = 0;
    std::string lab_search;             // how lab codes were searched
    std::vector<Write> writes;
    std::vector<Unreadable> unreadable;
    std::vector<std::pair<std::string, std::string>> deferred;  // (patient, why)
    std::vector<std::string> notes;     // server oddities met
    std::string backfill;               // a backfill's report (BackfillReport::to_json), "" for a pass
    // ok: everything done; incomplete: done except `deferred` (kept queued); failed: see the error.
    std::string outcome() const { return deferred.empty() ? "ok" : "incomplete"; }
    std::string to_json() const;
};

class Poller {
public:
    Poller(fhir::FhirClient& client, state::StateStore& store, const mappings::Terminology& terminology,
           const rules::RuleCatalog& catalog, PollOptions options);

    // One polling pass at evaluation time `now`. Throws fhir::FhirError (the fault budget spent, a
    // request the server refuses for good) or state::StateError; what the pass finished is kept.
    PollSummary run_once(rules::EpochSeconds now);

    // The change feeds of a pass (resource type, search filter, watermark key), for this server's
    // lab code search (discovered from its CapabilityStatement when not set).
    std::vector<FeedOptions> feed_plan();
    LabCodeSearch lab_code_search();
    // Whether the rules read this Condition (the Condition feed's filter, FeedOptions::counts).
    bool condition_counts(const rapidjson::Value& condition) const;
    // The work stage on `patients`, read from `source` (a backfill's export): evaluated, decided and
    // written like a pass's queued patients, into `sum`. The caller has queued them.
    void work_stage(PatientSource& source, const std::set<std::string>& patients, PollSummary& sum, rules::EpochSeconds now);
    // A test kill point (see KillPoint).
    void kill_point(const char* name);
    // Claims (state::WorkLeases) on this server under this poller's worker id, for `lease`.
    bool claim(const std::string& subject);
    void release(const std::string& subject);
    // Wall-clock seconds, for leases (PollOptions::clock, else the system clock).
    std::int64_t wall_clock() const;
    const PollOptions& options() const { return opt_; }
    const rules::RuleCatalog& catalog() const { return catalog_; }

private:
    const std::string& server() const { return client_.base_url(); }
    void feed_stage(PollSummary& sum, rules::EpochSeconds now, std::set<std::string>& named);
    // Reads, evaluates and decides one patient; its writes go to `write_back`.
    struct InFlight;
    void work_on(PatientSource& reader, const std::string& patient, PollSummary& sum, WriteBack& write_back,
                 rules::EpochSeconds now);
    void decide_again(PatientSource& reader, const std::set<std::string>& stale, PollSummary& sum, WriteBack& write_back,
                      rules::EpochSeconds now);
    // A patient whose writes have all landed (or who needs none): off the queue when its data was read
    // whole, else kept queued with the reason (and counted as deferred).
    void close_patient(const std::string& patient, const InFlight& job, PollSummary& sum);
    void defer(const std::string& patient, const std::string& why, PollSummary& sum);
    void count(const Reconciliation& r, const std::string& patient, PollSummary& sum);
    // Whether an open alert's patient is due again at `now`: no recheck time, one computed under
    // another catalog, or one that has come.
    bool recheck_due(const state::Recheck* r, rules::EpochSeconds now) const;
    // Of `patients`, those this poller has claimed and that still need the work (another poller may
    // have finished one since the work list was made); the rest are counted and left.
    std::vector<std::string> claim_patients(const std::vector<std::string>& patients, PollSummary& sum,
                                            rules::EpochSeconds now);

    fhir::FhirClient& client_;
    state::StateStore& store_;
    const mappings::Terminology& term_;
    const rules::RuleCatalog& catalog_;
    PollOptions opt_;
    std::optional<LabCodeSearch> lab_search_;
    std::map<std::string, std::size_t> kill_counts_;
    std::string recheck_basis_;  // catalog_.logic_fingerprint()
    std::string worker_;         // opt_.worker_id, or the host name
    // Patients in this pass's work only because their open alert's recheck time has come.
    std::set<std::string> due_by_recheck_;
    // The queue generation of each claimed patient as read when it was claimed (none: not queued).
    std::map<std::string, std::int64_t> claimed_generation_;
    // Per patient with writes in flight: the findings and whether its data was read whole.
    struct InFlight {
        std::vector<DesiredAlert> desired;
        bool complete = true;
        std::string incomplete_reason;
    };
    std::map<std::string, InFlight> in_flight_;
};

}  // namespace calcalert::poll
