// The first run over a whole population, or a Group, from a Bulk Data export instead of a search
// per patient (`calcalert poll --backfill bulk`):
//
//   1. Export (bulk_export.hpp): `Patient/$export` or `Group/<id>/$export` with
//      _type=Observation,Condition,Procedure,Patient and, unless turned off, _typeFilter for the lab
//      and dialysis procedure codes (the same searches as the change feed). The status URL is kept
//      in the state at once, so a run killed while the server prepares the export goes on waiting
//      for the same job (a job the server no longer knows is started again).
//   2. Read: every output file is downloaded to one spool file (so a download cut short starts
//      over cleanly; gzip files and gzip Content-Encoding are read too) and streamed line by line
//      into the facts (FactBuilder): memory follows the facts, not the size of the files.
//      calcalert's own DetectedIssues are read with one paged search by identifier system.
//   3. Work: every patient of the export with a finding or with one of calcalert's alerts is
//      queued, then evaluated, decided and written exactly as a pass does (Poller::work_stage):
//      conditional creates, version-guarded amends, checkpoints per Bundle. A run killed here
//      leaves the rest queued: the next pass (incremental or backfill) finishes them.
//   4. Hand-over: each change feed's watermark moves up to the manifest's transactionTime (never
//      back), so incremental polling reads exactly what changed after the export's snapshot; the
//      job is forgotten and the server told that its files may go (DELETE on the status URL).
//
// Patients the export does not name (another Group's, or deleted ones) are not touched: a backfill
// never cancels an alert of a patient it did not read. A line of an export file that cannot be
// read makes the whole run "incomplete" for retraction: no alert is cancelled on its data.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "adapters/poll/bulk_export.hpp"
#include "adapters/poll/poller.hpp"

namespace calcalert::poll {

struct BackfillOptions {
    std::string group;                 // "" = Patient/$export, else Group/<group>/$export
    bool type_filter = true;           // send _typeFilter for the codes the rules read
    ExportWaitOptions wait;
    std::string spool_path;            // where a file is downloaded before it is read ("" = a temp file)
    std::uint64_t max_file_bytes = std::uint64_t{64} << 30;  // one output file, after decoding
    std::size_t max_line_bytes = std::size_t{64} << 20;      // one NDJSON line (one resource)
    std::chrono::milliseconds file_deadline{std::chrono::hours(2)};  // one file with its retries
    // Injected for tests: how to wait between status polls, and what to tell about progress.
    std::function<void(std::chrono::seconds)> sleep;
    std::function<void(const std::string&)> on_progress;
    // One of `shards` workers sharing the state (a Kubernetes Indexed Job): one export job for all
    // (started by whichever claims it first), every worker reading every file, each evaluating and
    // writing the patients of its own shard (shard_of); the last one to finish hands over.
    int shard = 0;
    int shards = 1;
};

// The shard (0 .. shards-1) a patient's work belongs to: FNV-1a of "Patient/123", the same in every
// worker and release.
int shard_of(const std::string& patient, int shards);

// What a backfill read and did, besides the pass summary it shares with incremental polling.
struct BackfillReport {
    std::string status_url;
    bool resumed_job = false;          // waited for a job an earlier run started
    bool restarted_job = false;        // the saved job was gone: a new export was started
    std::string transaction_time;
    std::size_t files = 0, error_files = 0;
    std::uint64_t bytes = 0;           // of the files, after decoding
    std::size_t resources = 0, lines_rejected = 0;
    std::size_t patients_in_export = 0, patients_queued = 0;
    std::size_t status_polls = 0;
    std::int64_t waited_seconds = 0;
    bool type_filter_sent = false;
    std::vector<std::string> watermarks_moved;  // feed keys handed over at transactionTime
    int shard = 0, shards = 1;
    std::size_t patients_in_shard = 0;
    std::size_t shards_finished = 0;   // of the job, this one included, when it finished
    bool handed_over = false;          // this run moved the watermarks (the last shard to finish)
    std::string to_json() const;
};

class Backfill {
public:
    Backfill(Poller& poller, fhir::FhirClient& client, state::StateStore& store, const mappings::Terminology& terminology,
             BackfillOptions options);

    // Runs the backfill at evaluation time `now`; the summary's `backfill` tells about the export.
    // Throws ExportError (the server refused or failed the export), fhir::FhirError or
    // state::StateError; what was finished is kept, and the job is kept for the next run.
    PollSummary run(rules::EpochSeconds now);

    // The export request for these options and this server's lab code search.
    ExportRequest request() const;
    // What the last run() read and did (also when it failed).
    const BackfillReport& report() const { return report_; }

private:
    const std::string& server() const { return client_.base_url(); }
    std::string job_key() const;
    std::string saved_job();
    // A new export job (or, with shards, the one another shard started meanwhile), `gone` the saved
    // one the server no longer knows ("" when there was none).
    std::string start_job(BulkExportClient& bulk, const ExportRequest& req, const std::string& gone);
    void pause(std::chrono::seconds s);

    Poller& poller_;
    fhir::FhirClient& client_;
    state::StateStore& store_;
    const mappings::Terminology& term_;
    BackfillOptions opt_;
    BackfillReport report_;
};

}  // namespace calcalert::poll
