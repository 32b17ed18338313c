// `calcalert poll` (scheduled polling with write-back) and `calcalert alerts` (what is on the server).
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <thread>

#include "adapters/cli/cli.hpp"
#include "adapters/cli/commands.hpp"
#include "adapters/cli/log.hpp"
#include "adapters/cli/server_options.hpp"
#include "adapters/poll/backfill.hpp"
#include "adapters/poll/poller.hpp"
#include "adapters/state/state_store.hpp"
#include "fhir/client.hpp"
#include "fhir/views.hpp"

namespace calcalert::cli {
namespace {

const char* const kPollHelp = R"(Usage: calcalert poll --server URL (--once | --interval DURATION) [options]

Polls a FHIR R4 server: syncs Observations (of the codes the rules read, also inside panel
components) and Conditions changed since the last pass (by _lastUpdated; the first pass reads
everything), evaluates every changed patient (and every patient with an open alert) on its
relevant history, and writes the findings back as DetectedIssues: created (conditional on the
identifier), amended when the evidence changes, cancelled when a finding no longer holds.
A pass is a resumable job: the change feed's pages and each patient's writes are checkpointed in
the state file as they complete, so a pass that fails or is killed resumes where it stopped, and
never loses or duplicates an alert. Resources that cannot be read are reported and tried again
by every later pass. A first run over a whole population can read it by one Bulk Data export
instead (--backfill bulk).

Options:
  --config FILE          a poll configuration file (docs/configuration.md): every option below as a
                         key, also as CALCALERT_POLL_<KEY>; the command line wins
  --server URL           FHIR base URL, e.g. https://fhir.example.org/r4
  --once                 one pass, then exit
  --interval DURATION    a pass every DURATION (30s, 5m, 1h) until SIGTERM or SIGINT
  --state FILE|URL       where the state is: an SQLite file (default $CALCALERT_STATE, else
                         $XDG_STATE_HOME/calcalert/state.sqlite, else ~/.local/state/calcalert/state.sqlite),
                         or postgresql://USER@HOST:PORT/DB?password_file=FILE, shared by several pollers
  --lease DURATION       with a shared state: how long a poller's claim on the change feed or on a
                         patient lasts if it dies (default 10m; renewed while it works)
  --worker-id ID         this poller's name in its claims and run records (default: the host name;
                         pollers on one machine need distinct ids)
  --dry-run              write nothing (neither server nor state); print what would be written
  --now RFC3339          evaluation time (default: the current time of each pass)
  --token-file FILE      bearer token for the server (else $CALCALERT_FHIR_TOKEN, else none); re-read
                         after a 401, so a rotated file is picked up
  --smart-client-id ID   SMART Backend Services: the client id registered with the server ...
  --smart-key FILE       ... the client's private key (PEM, EC P-384 for ES384 or RSA for RS384;
                         `calcalert smart keygen` makes one, `calcalert smart jwks` prints its JWKS)
  --smart-scope SCOPES   ... the scopes asked for (default: v2 system/Observation.rs system/Condition.rs
                         system/Procedure.rs system/Patient.r system/DetectedIssue.cruds)
  --smart-token-url URL  ... the token endpoint (default: from {server}/.well-known/smart-configuration)
  --smart-jku URL        ... the URL of the client's JWK Set, sent in the assertion header (optional)
  --ca-file FILE         extra CA certificates (PEM) for TLS
  --insecure-skip-tls-verify   do not verify the server's certificate (testing only)
  --page-size N          search page size (default 200)
  --history-batch N      patients whose histories are read by one set of searches (default 10;
                         1 reads each alone)
  --batch N              DetectedIssue writes per Bundle (default 50; a Bundle the server refuses
                         as too large is split and the smaller size kept)
  --bundle-type TYPE     batch (default: each write on its own) or transaction (all or nothing)
  --lab-code-search HOW  auto (default: from the server's CapabilityStatement), combo-code,
                         component-code (code + component-code) or panels (code + laboratory
                         Observations read whole)
  --backfill bulk        first read the whole population by Bulk Data $export instead of searches
                         (Patient/$export, or Group/<id>/$export with --bulk-group): wait for the
                         export, read its NDJSON files, write the alerts, then hand over to
                         incremental polling at the export's transactionTime; with --once, exit
                         after the backfill. Resumable: a killed run goes on with the same job
  --bulk-group ID        export only this Group's patients (their alerts only are decided)
  --bulk-type-filter on|off   send _typeFilter for the lab and dialysis codes (default on)
  --shard K/N            with a shared state: this worker's share (K from 0) of the backfill's
                         patients; one export for all, the last shard to finish hands over
  --bulk-max-wait DURATION    give up waiting for the export after this long (default 24h; the
                         job is kept, and the next run goes on waiting for it)
  --overlap DURATION     re-read this much before the watermark (default 5m)
  --retries N            retries of one request (default 4)
  --fault-budget N       retries allowed in one pass before it stops (default 500; 0 = no limit)
  --request-deadline DURATION   one request with all its retries (default 2m)
  --catalog DIR, --terminology DIR, --identifier-system URI, --time-zone ZONE   as for evaluate
  --help                 this help

Output: a summary on stdout; JSON log lines on stderr (and one line per resource that cannot be
read); a progress line when stderr is a terminal.
Exit codes: 0 success; 2 usage error; 3 the server or the state failed (what the pass finished is
kept; the next pass resumes); 4 invalid configuration file, rule catalog or terminology; 5 the pass
finished but left patients queued (resources that cannot be read, writes the server refused): they
are listed on stderr and tried again by the next pass.
)";

const char* const kAlertsHelp = R"(Usage: calcalert alerts --server URL [--token-file FILE] [--identifier-system URI]
                        [--insecure-skip-tls-verify] [--ca-file FILE]
                        [--smart-client-id ID --smart-key FILE [--smart-scope ...] [--smart-token-url URL]]

Lists the DetectedIssues calcalert wrote on a FHIR server: patient, rule, severity, status, summary.
)";

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

std::chrono::seconds parse_duration(const std::string& s, const char* option) {
    std::size_t pos = 0;
    long long n = 0;
    try {
        n = std::stoll(s, &pos);
    } catch (const std::exception&) {
        pos = 0;
    }
    const std::string unit = s.substr(pos);
    long long mult = 0;
    if (unit == "s") mult = 1;
    else if (unit == "m") mult = 60;
    else if (unit == "h") mult = 3600;
    else if (unit == "d") mult = 86400;
    if (pos == 0 || mult == 0 || n <= 0)
        throw UsageError(std::string("--") + option + " must be a duration like 30s, 5m, 1h or 1d, not '" + s + "'");
    return std::chrono::seconds(n * mult);
}

std::size_t parse_count(const std::string& s, const char* option, long long min = 1, long long max = 1000) {
    return static_cast<std::size_t>(whole_number(s, option, min, max));
}

// --state, else the user's state file (state::default_state_path).
std::string state_path(const Options& opts) {
    if (auto v = opts.value("state")) return *v;
    try {
        return state::default_state_path();
    } catch (const state::StateError& e) {
        throw UsageError(std::string(e.what()) + " (give --state FILE)");
    }
}

void print_summary(std::ostream& out, const poll::PollSummary& s, bool dry_run) {
    for (const auto& w : s.writes)
        out << (dry_run ? "would " : "") << std::left << std::setw(7) << w.action << " " << w.patient << " "
            << w.rule_id << " (" << w.status << ") " << w.identifier << ": " << w.summary << "\n";
    out << (dry_run ? "dry run: " : "") << (s.resumed ? "resumed an unfinished pass; " : "") << "patients evaluated "
        << s.patients_evaluated << " (changed " << s.patients_changed << ", queued " << s.patients_queued
        << "); findings " << s.findings << ": new " << s.created << ", amended " << s.amended << ", cancelled "
        << s.cancelled << ", reopened " << s.reopened << ", unchanged " << s.unchanged;
    if (s.retired) out << ", duplicates retired " << s.retired;
    out << "; resources read " << s.resources_read << " (already seen " << s.resources_skipped << "); requests "
        << s.requests << " (retries " << s.retries << "); data-quality notes " << s.data_quality_notes;
    if (s.resources_not_counted) out << "; Conditions the rules do not read " << s.resources_not_counted;
    if (!s.unreadable.empty()) out << "; unreadable resources " << s.unreadable.size();
    if (s.patients_deferred) out << "; patients left queued " << s.patients_deferred;
    if (s.open_alerts_not_due) out << "; open alerts not due for re-evaluation " << s.open_alerts_not_due;
    if (!s.feed_read_by.empty()) out << "; change feed read by " << s.feed_read_by;
    if (s.patients_claimed_elsewhere) out << "; patients being worked on by another poller " << s.patients_claimed_elsewhere;
    out << "\n";
    out.flush();
}

// The backfill's own line: what the export gave.
void print_backfill(std::ostream& out, const poll::BackfillReport& r) {
    out << "backfill: Bulk Data export" << (r.resumed_job ? " (resumed job)" : "")
        << (r.restarted_job ? " (the saved job was gone: started again)" : "") << " as of " << r.transaction_time << ": "
        << r.files << " files, " << r.resources << " resources (" << r.bytes << " bytes), " << r.patients_in_export
        << " patients, " << r.patients_queued << " with a finding or an alert; status polls " << r.status_polls << ", waited "
        << r.waited_seconds << " s";
    if (r.lines_rejected) out << "; lines that cannot be read " << r.lines_rejected;
    if (r.shards > 1)
        out << "; shard " << r.shard << " of " << r.shards << ": " << r.patients_in_shard << " patients, shards finished "
            << r.shards_finished << (r.handed_over ? " (handed over)" : " (the last shard to finish hands over)");
    out << "\n";
}

}  // namespace

int poll_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
    std::set<std::string> values = {"interval",  "state",          "now",        "page-size",
                                    "batch",     "overlap",        "bundle-type", "lab-code-search",
                                    "retries",   "fault-budget",   "request-deadline", "catalog",
                                    "terminology", "identifier-system", "time-zone", "backfill",
                                    "bulk-group", "bulk-type-filter", "bulk-max-wait", "history-batch",
                                    "lease",     "worker-id",      "shard"};
    std::set<std::string> flags = {"help", "once", "dry-run"};
    values.insert(server_value_options().begin(), server_value_options().end());
    flags.insert(server_flag_options().begin(), server_flag_options().end());
    Options opts(args, values, flags);
    if (opts.flag("help")) {
        out << kPollHelp;
        return ok;
    }
    const bool once = opts.flag("once");
    const auto cli_interval = opts.value("interval");
    apply_poll_config(opts);
    if (!opts.positional().empty()) throw UsageError("poll takes no FILE arguments");
    // --once on the command line wins over an interval from the configuration.
    const auto interval = once ? cli_interval : opts.value("interval");
    if (once == interval.has_value()) throw UsageError("give exactly one of --once and --interval DURATION");
    const auto every = interval ? parse_duration(*interval, "interval") : std::chrono::seconds(0);
    fhir::ClientOptions copts = client_options(opts);
    poll::PollOptions popts;
    popts.dry_run = opts.flag("dry-run");
    if (auto v = opts.value("page-size")) popts.page_size = parse_count(*v, "page-size");
    if (auto v = opts.value("history-batch")) popts.history_batch = parse_count(*v, "history-batch", 1, 100);
    if (auto v = opts.value("batch")) popts.write.batch_size = parse_count(*v, "batch");
    if (auto v = opts.value("bundle-type")) {
        if (*v == "batch") popts.write.bundle_type = poll::BundleType::batch;
        else if (*v == "transaction") popts.write.bundle_type = poll::BundleType::transaction;
        else throw UsageError("--bundle-type must be batch or transaction, not '" + *v + "'");
    }
    if (auto v = opts.value("lab-code-search")) {
        if (*v == "combo-code") popts.lab_search = poll::LabCodeSearch::combo_code;
        else if (*v == "component-code") popts.lab_search = poll::LabCodeSearch::code_and_component_code;
        else if (*v == "panels") popts.lab_search = poll::LabCodeSearch::code_and_panels;
        else if (*v != "auto")
            throw UsageError("--lab-code-search must be auto, combo-code, component-code or panels, not '" + *v + "'");
    }
    if (auto v = opts.value("overlap")) popts.overlap = parse_duration(*v, "overlap");
    if (auto v = opts.value("lease")) popts.lease = parse_duration(*v, "lease");
    if (auto v = opts.value("worker-id")) {
        if (v->empty() || v->size() > 200 || v->find_first_of(" \t\r\n") != std::string::npos)
            throw UsageError("--worker-id must be 1 to 200 characters without spaces");
        popts.worker_id = *v;
    }
    if (auto v = opts.value("retries")) copts.max_retries = static_cast<int>(parse_count(*v, "retries", 0, 20));
    copts.fault_budget = 500;
    if (auto v = opts.value("fault-budget")) copts.fault_budget = parse_count(*v, "fault-budget", 0, 10000000);
    copts.request_deadline = std::chrono::seconds(120);
    if (auto v = opts.value("request-deadline")) copts.request_deadline = parse_duration(*v, "request-deadline");
    popts.issue = issue_options(opts);
    // Test hooks: SIGKILL at a named point of the pass (see poll::KillPoint).
    if (const char* k = std::getenv("CALCALERT_TEST_KILL_AT"); k && *k) {
        auto point = poll::parse_kill_point(k);
        if (!point) throw UsageError(std::string("CALCALERT_TEST_KILL_AT must be name:n (e.g. bundle-sent:2), not '") + k + "'");
        popts.kill = *point;
    } else if (const char* b = std::getenv("CALCALERT_TEST_KILL_AFTER_BATCHES"); b && *b) {
        popts.kill = {"bundle-sent", static_cast<std::size_t>(std::strtoul(b, nullptr, 10))};
    }
    std::optional<poll::BackfillOptions> backfill_options;
    if (auto v = opts.value("backfill")) {
        if (*v != "bulk") throw UsageError("--backfill must be bulk, not '" + *v + "'");
        backfill_options.emplace();
        if (auto g = opts.value("bulk-group")) backfill_options->group = *g;
        if (auto f = opts.value("bulk-type-filter")) {
            if (*f != "on" && *f != "off") throw UsageError("--bulk-type-filter must be on or off, not '" + *f + "'");
            backfill_options->type_filter = *f == "on";
        }
        if (auto w = opts.value("bulk-max-wait")) backfill_options->wait.give_up_after = parse_duration(*w, "bulk-max-wait");
        backfill_options->on_progress = [&err](const std::string& progress) {
            log_json(err, "info", "backfill.waiting", {{"progress", progress}});
        };
        if (auto shard = opts.value("shard")) {
            const auto slash = shard->find('/');
            if (slash == std::string::npos) throw UsageError("--shard must be K/N (this worker's index K of N, from 0), not '" + *shard + "'");
            const long long n = static_cast<long long>(parse_count(shard->substr(slash + 1), "shard's N", 1, 1000));
            const long long k = static_cast<long long>(parse_count(shard->substr(0, slash), "shard's K", 0, 999));
            if (k >= n) throw UsageError("--shard K/N needs K below N (K counts from 0), not '" + *shard + "'");
            backfill_options->shard = static_cast<int>(k);
            backfill_options->shards = static_cast<int>(n);
        }
    } else if (opts.value("bulk-group") || opts.value("bulk-type-filter") || opts.value("bulk-max-wait") || opts.value("shard")) {
        throw UsageError("--bulk-group, --bulk-type-filter, --bulk-max-wait and --shard go with --backfill bulk");
    }
    const bool fixed_now = opts.value("now").has_value();
    rules::EpochSeconds now = now_option(opts);
    if (isatty(STDERR_FILENO))
        popts.progress = [&err](std::size_t done, std::size_t total) {
            err << "\rpatients evaluated " << done << "/" << total << (done == total ? "\n" : "") << std::flush;
        };

    const Engine engine = load_engine(opts);
    const std::string state_file = state_path(opts);
    std::unique_ptr<state::StateStore> store;
    try {
        store = state::open_state_store(state_file);
    } catch (const std::exception& e) {
        err << "calcalert: error: " << e.what() << "\n";
        return input_error;
    }
    fhir::FhirClient client(copts);
    if (backfill_options && backfill_options->shards > 1 && popts.worker_id.empty()) {
        // Shards on one machine must not share a name (on Kubernetes, each pod has its own host name).
        popts.worker_id = poll::default_worker_id() + "/shard-" + std::to_string(backfill_options->shard);
    }
    poll::Poller poller(client, *store, engine.terminology, engine.catalog, popts);
    std::optional<poll::Backfill> backfill;
    if (backfill_options) {
        // Beside an SQLite state file; with a database server, a temporary file.
        if (backfill_options->spool_path.empty() && store->backend() == "sqlite" && store->location() != ":memory:")
            backfill_options->spool_path = store->location() + ".export-part" +
                                           (backfill_options->shards > 1 ? "-" + std::to_string(backfill_options->shard) : "");
        backfill.emplace(poller, client, *store, engine.terminology, *backfill_options);
    }

    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    int code = ok;
    while (true) {
        if (!fixed_now && !once) now = now_option(opts);
        log_json(err, "info", "poll.started", {{"server", copts.base_url}, {"now", fhir::format_datetime(now)},
                                               {"dryRun", popts.dry_run ? "true" : "false"}});
        try {
            const bool backfilling = backfill.has_value();
            const auto summary = backfilling ? backfill->run(now) : poller.run_once(now);
            if (backfilling) print_backfill(out, backfill->report());
            backfill.reset();  // once: later passes are incremental
            print_summary(out, summary, popts.dry_run);
            for (const auto& u : summary.unreadable)
                err << "calcalert: warning: cannot read " << u.description << " (" << u.patient
                    << "'s alerts are decided on the rest; tried again next pass)\n";
            for (const auto& [patient, why] : summary.deferred)
                if (why.rfind("cannot read ", 0) != 0) err << "calcalert: warning: " << patient << " left queued: " << why << "\n";
            for (const auto& note : summary.notes) err << "calcalert: note: " << note << "\n";
            log_json(err, summary.deferred.empty() ? "info" : "warning", "poll.finished", {{"server", copts.base_url}},
                     "summary", summary.to_json());
            code = summary.deferred.empty() ? ok : incomplete;
        } catch (const std::exception& e) {
            log_json(err, "error", "poll.failed", {{"server", copts.base_url}, {"error", e.what()}});
            err << "calcalert: error: " << e.what() << "\n";
            code = input_error;
        }
        if (once) break;
        for (auto waited = std::chrono::seconds(0); waited < every && !g_stop; waited += std::chrono::seconds(1))
            std::this_thread::sleep_for(std::chrono::seconds(1));
        if (g_stop) {
            log_json(err, "info", "poll.stopped", {{"server", copts.base_url}});
            break;
        }
    }
    std::signal(SIGTERM, SIG_DFL);
    std::signal(SIGINT, SIG_DFL);
    return code;
}

int alerts_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
    std::set<std::string> values = {"identifier-system"};
    std::set<std::string> flags = {"help"};
    values.insert(server_value_options().begin(), server_value_options().end());
    flags.insert(server_flag_options().begin(), server_flag_options().end());
    Options opts(args, values, flags);
    if (opts.flag("help")) {
        out << kAlertsHelp;
        return ok;
    }
    apply_poll_config(opts);
    fhir::ClientOptions copts = client_options(opts);
    const std::string system = opts.value("identifier-system").value_or("urn:calcalert:detected-issue");
    fhir::FhirClient client(copts);
    struct Row {
        std::string patient, rule, severity, status, summary;
    };
    std::vector<Row> rows;
    try {
        client.search("DetectedIssue?_count=200&_sort=patient", [&](const rapidjson::Document& page) {
            const auto* entries = fhir::member(page, "entry");
            if (!entries || !entries->IsArray()) return;
            for (const auto& e : entries->GetArray()) {
                const auto* r = fhir::member(e, "resource");
                if (!r || !r->IsObject()) continue;
                bool ours = false;
                if (const auto* ids = fhir::member(*r, "identifier"); ids && ids->IsArray())
                    for (const auto& i : ids->GetArray())
                        if (const auto* s = fhir::member(i, "system"); s && s->IsString() && system == s->GetString()) ours = true;
                if (!ours) continue;
                auto s = [](const rapidjson::Value* v) { return v && v->IsString() ? std::string(v->GetString()) : std::string(); };
                Row row;
                if (const auto* p = fhir::member(*r, "patient")) row.patient = s(fhir::member(*p, "reference"));
                if (const auto* c = fhir::member(*r, "code")) {
                    row.summary = s(fhir::member(*c, "text"));
                    if (const auto* cd = fhir::member(*c, "coding"); cd && cd->IsArray() && !cd->Empty())
                        row.rule = s(fhir::member((*cd)[0], "code"));
                }
                row.severity = s(fhir::member(*r, "severity"));
                row.status = s(fhir::member(*r, "status"));
                rows.push_back(std::move(row));
            }
        });
    } catch (const std::exception& e) {
        err << "calcalert: error: " << e.what() << "\n";
        return input_error;
    }
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
        return std::tie(a.patient, a.rule) < std::tie(b.patient, b.rule);
    });
    for (const auto& r : rows)
        out << std::left << std::setw(26) << r.patient << " " << std::setw(31) << r.rule << " " << std::setw(8)
            << r.severity << " " << std::setw(9) << r.status << " " << r.summary << "\n";
    out << rows.size() << " DetectedIssues written by calcalert on " << copts.base_url << "\n";
    return ok;
}

}  // namespace calcalert::cli
