#include <algorithm>
#include <atomic>
#include <exception>
#include <filesystem>
#include <functional>
#include <optional>
#include <ostream>
#include <thread>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "adapters/cli/cli.hpp"
#include "adapters/cli/commands.hpp"
#include "adapters/cli/html_report.hpp"
#include "adapters/cli/text_report.hpp"
#include "fhir/datetime.hpp"
#include "fhir/resource_reader.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/fact_builder.hpp"
#include "rules/engine.hpp"

namespace calcalert::cli {
namespace {

namespace fs = std::filesystem;

const char* const kEvaluateHelp = R"(Usage: calcalert evaluate [options] FILE...

Reads FHIR R4 JSON: Bundles of any type, NDJSON files (one resource per line, as Bulk Data writes
them; files ending in .ndjson or .jsonl are streamed) or single resources. '-' reads standard input.
Maps Observations (also those contained in a DiagnosticReport), Conditions, dialysis Procedures and
Patients (deceased) to facts, runs the rule catalog for every patient and prints the findings. When
a resource appears more than once (a _history Bundle, a resend), only its latest version counts. Unusable data (unknown units, entered-in-error results, ...) is reported as data-quality
notes; a rejected file, line or resource is reported on stderr, one line each, naming where.

Options:
  --now RFC3339          evaluation time (default: the current time), e.g. 2026-11-25T12:00:00Z
  --format FORMAT        bundle (default): a FHIR Bundle of type collection with one DetectedIssue
                         per finding, plus one OperationOutcome with the data-quality notes;
                         ndjson: one DetectedIssue per line;
                         text: a readable report per patient;
                         html: an explanation page per finding (evidence, lab trend chart,
                         conditions, guidance, data-quality notes) and an index.html, written
                         into the directory of -o
  -o, --output DIR       (html only, required) the directory of the pages; created when absent.
                         Files of the same names that calcalert did not write are never replaced
  --catalog DIR          rule catalog directory (facts.json, rules/*.json)
  --terminology DIR      terminology data directory (*.tsv)
  --identifier-system URI  DetectedIssue.identifier system (default urn:calcalert:detected-issue)
  --time-zone ZONE       the zone explanations write times in: UTC, an offset like +01:00 or an IANA
                         name like Europe/Berlin (default: the catalog's display.timeZone, UTC)
  --jobs N               threads (default 1; at most 4 per hardware thread): for NDJSON files, N - 1
                         threads parse the next batches of lines while one maps them in input order;
                         then N threads run the rules, patient by patient (and write the ndjson
                         lines); the output is the same for every N
  --batch-bytes N        bytes of NDJSON lines parsed as one batch with --jobs above 1 (default
                         524288; from 1)
  --help                 this help

Data directories default to $CALCALERT_DATA_DIR/{rules/catalog,mappings/data}, then the installed
share/calcalert, then the source tree the program was built from.
)";

// Calls work(i) for every i below n on `jobs` threads (this one among them), taking blocks of
// consecutive indexes in turn; work(i) writes only to slot i of what it fills. The first exception
// thrown by any call is rethrown here, after every thread has stopped.
void for_each_index(std::size_t n, unsigned jobs, const std::function<void(std::size_t)>& work) {
    constexpr std::size_t kBlock = 64;
    std::atomic<std::size_t> next{0};
    std::exception_ptr failure;
    std::atomic<bool> failed{false};
    auto run = [&](std::exception_ptr& mine) {
        try {
            for (std::size_t begin; !failed.load(std::memory_order_relaxed) && (begin = next.fetch_add(kBlock)) < n;)
                for (std::size_t i = begin; i < std::min(n, begin + kBlock); ++i) work(i);
        } catch (...) {
            mine = std::current_exception();
            failed = true;
        }
    };
    const unsigned helpers = n > kBlock ? std::min<unsigned>(jobs, static_cast<unsigned>((n + kBlock - 1) / kBlock)) - 1 : 0;
    std::vector<std::exception_ptr> errors(helpers + 1);
    std::vector<std::thread> threads;
    threads.reserve(helpers);
    for (unsigned t = 0; t < helpers; ++t) threads.emplace_back(run, std::ref(errors[t + 1]));
    run(errors[0]);
    for (auto& t : threads) t.join();
    for (auto& e : errors)
        if (e && !failure) failure = e;
    if (failure) std::rethrow_exception(failure);
}

std::string issue_code(const fhir::Problem& p) {
    return p.severity == fhir::Severity::fatal || p.severity == fhir::Severity::error ? "structure" : "processing";
}

}  // namespace

int evaluate_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
    std::vector<std::string> spelled = args;  // -o DIR is --output DIR
    for (auto& a : spelled)
        if (a == "-o") a = "--output";
    Options opts(spelled, {"now", "format", "catalog", "terminology", "identifier-system", "time-zone", "output", "jobs", "batch-bytes"}, {"help"});
    if (opts.flag("help")) {
        out << kEvaluateHelp;
        return ok;
    }
    if (opts.positional().empty()) throw UsageError("evaluate needs at least one FILE ('-' for standard input)");
    const std::string format = opts.value("format").value_or("bundle");
    if (format != "bundle" && format != "ndjson" && format != "text" && format != "html")
        throw UsageError("--format must be bundle, ndjson, text or html, not '" + format + "'");
    const auto output = opts.value("output");
    if (format == "html" && (!output || output->empty()))
        throw UsageError("--format html needs -o DIR, the directory the pages are written to");
    if (format != "html" && output) throw UsageError("-o DIR is for --format html only (the other formats go to standard output)");
    fhir::NdjsonOptions ndjson;
    const long long max_jobs = 4LL * std::max(1U, std::thread::hardware_concurrency());
    if (auto v = opts.value("jobs")) ndjson.jobs = static_cast<unsigned>(whole_number(*v, "jobs", 1, max_jobs));
    if (auto v = opts.value("batch-bytes"))
        ndjson.batch_bytes = static_cast<std::size_t>(whole_number(*v, "batch-bytes", 1, 1LL << 30));
    const rules::EpochSeconds now = now_option(opts);
    const mappings::IssueOptions di_options = issue_options(opts);
    const Engine engine = load_engine(opts);
    std::optional<explain::Guidance> guidance;
    if (format == "html") {
        try {
            guidance.emplace(explain::Guidance::load(explain::Guidance::file_of(engine.catalog), engine.catalog));
        } catch (const explain::GuidanceError& e) {
            throw ConfigError(e.what());
        }
    }

    mappings::FactBuilder builder(engine.terminology);
    bool input_failed = false;
    for (const auto& path : opts.positional()) {
        if (path != "-" && fs::is_directory(path)) {
            err << "calcalert: error: " << path << ": is a directory\n";
            input_failed = true;
            continue;
        }
        const auto stats = fhir::read_path(path, builder, ndjson);
        input_failed = input_failed || stats.fatal || stats.rejected > 0;
    }
    for (const auto& p : builder.problems())
        err << "calcalert: " << fhir::to_string(p.severity) << ": " << p.describe() << "\n";

    // The rules, patient by patient, on --jobs threads, each patient's result in its own slot.
    std::vector<const std::string*> refs;
    std::vector<const rules::PatientFacts*> patient_facts;
    refs.reserve(builder.patients().size());
    patient_facts.reserve(builder.patients().size());
    for (const auto& [ref, facts] : builder.patients()) {
        refs.push_back(&ref);
        patient_facts.push_back(&facts);
    }
    if (format == "ndjson") {
        // A window of patients at a time: their lines are written, in patient order, before the
        // next window is evaluated, so the output is never held whole.
        constexpr std::size_t kWindow = 2048;
        std::vector<std::string> lines;
        for (std::size_t from = 0; from < refs.size(); from += kWindow) {
            lines.assign(std::min(kWindow, refs.size() - from), std::string());
            for_each_index(lines.size(), ndjson.jobs, [&](std::size_t i) {
                const rules::Evaluation e = rules::evaluate(*patient_facts[from + i], now, engine.catalog);
                for (const auto& f : e.findings) {
                    lines[i] += mappings::detected_issue_json(f, now, di_options);
                    lines[i] += '\n';
                }
            });
            for (const auto& l : lines) out << l;
        }
        out.flush();
        return input_failed ? input_error : ok;
    }
    std::vector<PatientResult> results(refs.size());
    for_each_index(refs.size(), ndjson.jobs, [&](std::size_t i) {
        results[i] = {*refs[i], rules::evaluate(*patient_facts[i], now, engine.catalog)};
    });

    if (format == "html") {
        HtmlReportInput in{&results, &patient_facts, &engine.catalog, &*guidance, now};
        const std::size_t written = write_html_report(*output, in);
        out << "wrote " << written << " files to " << *output << " (" << written - 1 << " finding pages and index.html)\n";
    } else if (format == "text") {
        write_text_report(out, results, now, engine.catalog.time_zone());
    } else {
        rapidjson::StringBuffer sb;
        mappings::JsonWriter w(sb);
        w.StartObject();
        w.Key("resourceType");
        w.String("Bundle");
        w.Key("type");
        w.String("collection");
        w.Key("timestamp");
        w.String(fhir::format_datetime(now).c_str());
        w.Key("entry");
        w.StartArray();
        std::vector<mappings::OutcomeIssue> issues;
        for (const auto& r : results) {
            for (const auto& f : r.evaluation.findings) {
                w.StartObject();
                w.Key("fullUrl");
                w.String(("urn:uuid:" + mappings::alert_identifier(f.patient, f.rule->id)).c_str());
                w.Key("resource");
                mappings::write_detected_issue(w, f, now, di_options);
                w.EndObject();
            }
            for (const auto& n : r.evaluation.notes)
                issues.push_back({"warning", "processing", r.patient + ": " + n.source + ": " + n.message, n.path});
        }
        for (const auto& p : builder.problems())
            issues.push_back({p.severity == fhir::Severity::information ? "information" : std::string(fhir::to_string(p.severity)),
                              issue_code(p), p.where.describe() + ": " + p.message, p.path});
        if (!issues.empty()) {
            w.StartObject();
            w.Key("fullUrl");
            w.String(("urn:uuid:" + mappings::alert_identifier("OperationOutcome", fhir::format_datetime(now))).c_str());
            w.Key("resource");
            mappings::write_operation_outcome(w, issues);
            w.EndObject();
        }
        w.EndArray();
        w.EndObject();
        out << sb.GetString() << "\n";
    }
    out.flush();
    return input_failed ? input_error : ok;
}


}  // namespace calcalert::cli
