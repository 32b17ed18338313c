// FHIR Bulk Data Access ($export) as a client, the asynchronous request pattern:
//
//   kick-off   GET [base]/Patient/$export or [base]/Group/[id]/$export, with
//              `Prefer: respond-async`  ->  202 Accepted + Content-Location (the status URL)
//   status     GET <status URL>  ->  202 while in progress (Retry-After, X-Progress), then 200 with
//              the manifest (transactionTime, output files), or 4xx/5xx with an OperationOutcome
//   files      GET <output url>  ->  NDJSON, one resource per line (gzip Content-Encoding, or a
//              file that is itself gzip)
//   done       DELETE <status URL> (the server may drop the files)
//
// The parts that decide (the kick-off target, what a status answer means, the manifest) are pure
// functions; BulkExportClient does the requests over a FhirClient (retries, tokens, deadlines).
// Output files are read only from the FHIR server's own origin.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <rapidjson/document.h>

#include "fhir/client.hpp"
#include "rules/facts.hpp"

namespace calcalert::poll {

// A Bulk Data answer calcalert cannot use (a kick-off refused, a malformed manifest, a failed
// job), naming the request or the manifest element.
class ExportError : public std::runtime_error {
public:
    ExportError(const std::string& message, bool job_gone = false) : std::runtime_error(message), job_gone_(job_gone) {}
    // The status URL is unknown to the server (404/410: expired or deleted): start a new export.
    bool job_gone() const { return job_gone_; }

private:
    bool job_gone_;
};

struct ExportRequest {
    std::string group;                      // "" = Patient/$export, else Group/<group>/$export
    std::vector<std::string> types;         // _type
    std::vector<std::string> type_filters;  // _typeFilter, each a query "Observation?code=..." (its values encoded)
    std::string since;                      // _since (a FHIR instant), "" = everything
};

// The kick-off target relative to the base URL, parameters percent-encoded ("Patient/$export?...").
// std::invalid_argument for a group id that is not a FHIR id.
std::string export_kickoff_target(const ExportRequest& request);

struct ExportFile {
    std::string type;   // the resource type the file holds
    std::string url;
    std::optional<std::uint64_t> count;
};

struct ExportManifest {
    std::string transaction_time;          // as the server wrote it
    rules::EpochSeconds transaction_at = 0;
    std::string request;
    bool requires_access_token = false;
    std::vector<ExportFile> output;
    std::vector<ExportFile> error;         // files of OperationOutcomes
};

// The manifest of a complete export. ExportError naming the element ("output[2].url") when it is
// not one; `where` names the answer it came in.
ExportManifest parse_export_manifest(const rapidjson::Value& manifest, const std::string& where);

struct ExportStatus {
    enum class State { in_progress, complete };
    State state = State::in_progress;
    std::chrono::seconds wait{0};  // in_progress: Retry-After (bounded), else the caller's default
    std::string progress;          // in_progress: X-Progress, printable and bounded ("" if none)
    ExportManifest manifest;       // complete
};

// What one answer of the status URL means. ExportError for a failed job (its OperationOutcome's
// text), an unknown job (404/410: job_gone), or an answer that is none of these. A Retry-After is
// honoured between `min_wait` and `max_wait`; without one the wait is `default_wait`.
ExportStatus interpret_export_status(const fhir::Response& answer, std::chrono::seconds default_wait,
                                     std::chrono::seconds min_wait, std::chrono::seconds max_wait,
                                     std::chrono::system_clock::time_point now);

struct ExportWaitOptions {
    std::chrono::seconds default_wait{5};  // between status polls when the server names no wait
    std::chrono::seconds min_wait{1};
    std::chrono::seconds max_wait{300};    // a larger Retry-After is cut to this
    std::chrono::seconds give_up_after{std::chrono::hours(24)};  // the export as a whole
};

class BulkExportClient {
public:
    // `sleep` waits between status polls (tests inject one); `progress` is told each X-Progress.
    BulkExportClient(fhir::FhirClient& client, ExportWaitOptions options,
                     std::function<void(std::chrono::seconds)> sleep = {},
                     std::function<void(const std::string&)> progress = {});

    // Starts an export; returns the status URL. ExportError when the server refuses it.
    std::string kick_off(const ExportRequest& request);
    // Polls the status URL until the export is complete; ExportError when it fails, is gone, or
    // takes longer than give_up_after.
    ExportManifest wait_for(const std::string& status_url);
    // Streams one output file to `sink` (`restart` before each attempt). FhirError / ExportError.
    void download(const ExportFile& file, const fhir::FhirClient::Download& sink);
    // Tells the server the files may go (best effort: false when it refused or failed).
    bool finish(const std::string& status_url);

    std::size_t status_polls() const { return polls_; }
    std::chrono::seconds waited() const { return waited_; }

private:
    fhir::FhirClient& client_;
    ExportWaitOptions opt_;
    std::function<void(std::chrono::seconds)> sleep_;
    std::function<void(const std::string&)> progress_;
    std::size_t polls_ = 0;
    std::chrono::seconds waited_{0};
};

}  // namespace calcalert::poll
