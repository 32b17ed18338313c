// `calcalert sandbox generate|seed`: the synthetic cohort (adapters/sandbox/cohort_generator.hpp) as
// files, or POSTed to a FHIR server as transaction Bundles.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <ostream>

#include <rapidjson/document.h>

#include "adapters/cli/cli.hpp"
#include "adapters/cli/commands.hpp"
#include "adapters/sandbox/cohort_generator.hpp"
#include "fhir/client.hpp"

namespace calcalert::cli {
namespace {

namespace fs = std::filesystem;

const char* const kSandboxHelp = R"(Usage: calcalert sandbox <subcommand> [options]

A deterministic synthetic cohort for tests and demos. Every patient comes from an archetype of
adapters/sandbox/data/archetypes.json: each rule of the clinical specification firing (several
variants each), near-misses that must not fire (thresholds, windows, statuses, refuted or resolved
diagnoses, suppression, excluded codes) and healthy patients (about a third). Each patient carries
the rule ids its archetype expects.

Subcommands:
  generate   write the cohort as Bulk-Data NDJSON or one transaction Bundle, and expected.json
  seed       POST the cohort to a FHIR server as transaction Bundles

Run 'calcalert sandbox <subcommand> --help' for its options.
)";

const char* const kGenerateHelp = R"(Usage: calcalert sandbox generate --out DIR [options]

Writes the synthetic cohort to DIR (created if missing), one patient at a time:
  --format ndjson (default): Patient.ndjson, Observation.ndjson, Condition.ndjson,
                             Procedure.ndjson (Bulk Data; subjects written Patient/<id>)
  --format bundle:           cohort.json, one FHIR transaction Bundle (PUT Type/id, urn:uuid
                             fullUrls, subjects as urn:uuid references)
and expected.json, the ground truth:
  {"now": "...", "seed": S, "patients": [{"patient": "Patient/syn-S-0", "name": "...",
    "archetype": "...", "expect": ["calciphylaxis-risk"]}, ...]}

Options:
  --out DIR              output directory (required)
  --patients N           number of patients, 1..10000000 (default 60)
  --seed S               seed, 0..18446744073709551615 (default 1). Patient ids are syn-<S>-<index>;
                         the same seed, N and --now give the same bytes
  --now RFC3339          the time every date is relative to (default: the current time)
  --format FORMAT        ndjson (default) or bundle
  --archetypes FILE      the archetype file (default: adapters/sandbox/data/archetypes.json of the
                         data directory)
  --terminology DIR      the terminology whose codes the archetypes name (default: mappings/data)
  --help                 this help

Exit codes: 0 written, 2 usage error, 3 a directory or file could not be created or written,
4 the archetype file or the terminology is invalid (the message names the archetype and key).
)";

const char* const kSeedHelp = R"(Usage: calcalert sandbox seed --server URL [options]

POSTs the synthetic cohort to a FHIR R4 server as transaction Bundles of --batch patients each and
prints one summary line. Every resource is written with PUT Type/id (client ids), so seeding again
with the same seed updates the same resources instead of duplicating them.

Options:
  --server URL           FHIR base URL, e.g. http://127.0.0.1:8090/fhir (required)
  --patients N           number of patients, 1..10000000 (default 60)
  --seed S               seed, 0..18446744073709551615 (default 1); patient ids are syn-<S>-<index>
  --now RFC3339          the time every date is relative to (default: the current time)
  --batch K              patients per transaction Bundle, 1..1000 (default 25)
  --expected FILE        write the expected findings (the ground truth, as generate's expected.json)
                         to FILE once every Bundle is accepted
  --archetypes FILE      the archetype file (default: adapters/sandbox/data/archetypes.json of the
                         data directory)
  --terminology DIR      the terminology whose codes the archetypes name (default: mappings/data)
  --help                 this help

Exit codes: 0 seeded, 2 usage error (including a --server URL the client cannot use), 3 a request
failed (the message names the request and what the server said) or FILE could not be written,
4 the archetype file or the terminology is invalid.
)";

constexpr std::uint64_t kMaxPatients = 10'000'000;

std::uint64_t number_option(const Options& opts, const std::string& name, std::uint64_t fallback, std::uint64_t min,
                            std::uint64_t max) {
    const auto v = opts.value(name);
    if (!v) return fallback;
    std::uint64_t n = 0;
    const char* end = v->data() + v->size();
    const auto [ptr, ec] = std::from_chars(v->data(), end, n);
    if (v->empty() || ec != std::errc() || ptr != end || n < min || n > max)
        throw UsageError("--" + name + " must be a whole number from " + std::to_string(min) + " to " +
                         std::to_string(max) + ", not '" + *v + "'");
    return n;
}

void no_arguments(const Options& opts, const std::string& what) {
    if (!opts.positional().empty())
        throw UsageError(what + " takes no arguments, not '" + opts.positional().front() + "'");
}

// The archetypes of --archetypes FILE (or the data directory's) with the codes of --terminology DIR.
std::shared_ptr<const sandbox::ArchetypeLibrary> archetype_library(const Options& opts) {
    const fs::path file = opts.value("archetypes").value_or(sandbox::default_archetype_file().string());
    const fs::path terminology = opts.value("terminology").value_or(sandbox::default_terminology_dir().string());
    try {
        return sandbox::ArchetypeLibrary::load(file, terminology);
    } catch (const std::exception& e) {
        throw ConfigError(e.what());
    }
}

std::string seconds_since(std::chrono::steady_clock::time_point start) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", s);
    return buf;
}

// An output file with a large buffer, opened for writing; reports its own failures by name.
class OutFile {
public:
    explicit OutFile(fs::path path) : path_(std::move(path)), buffer_(1 << 20) {
        stream_.rdbuf()->pubsetbuf(buffer_.data(), static_cast<std::streamsize>(buffer_.size()));
        stream_.open(path_, std::ios::binary | std::ios::trunc);
    }
    bool opened() const { return stream_.is_open(); }
    std::ostream& stream() { return stream_; }
    // Flushes and closes; false when anything failed.
    bool close() {
        stream_.flush();
        const bool good = stream_.good();
        stream_.close();
        return good && !stream_.fail();
    }
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
    std::vector<char> buffer_;
    std::ofstream stream_;
};

int generate_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
    Options opts(args, {"out", "patients", "seed", "now", "format", "archetypes", "terminology"}, {"help"});
    if (opts.flag("help")) {
        out << kGenerateHelp;
        return ok;
    }
    no_arguments(opts, "sandbox generate");
    const auto dir_opt = opts.value("out");
    if (!dir_opt || dir_opt->empty()) throw UsageError("sandbox generate needs --out DIR");
    const std::string format = opts.value("format").value_or("ndjson");
    if (format != "ndjson" && format != "bundle")
        throw UsageError("--format must be ndjson or bundle, not '" + format + "'");
    const std::uint64_t patients = number_option(opts, "patients", 60, 1, kMaxPatients);
    const std::uint64_t seed = number_option(opts, "seed", 1, 0, UINT64_MAX);
    const rules::EpochSeconds now = now_option(opts);
    const auto library = archetype_library(opts);

    const fs::path dir = *dir_opt;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec || !fs::is_directory(dir)) {
        err << "calcalert: error: " << dir.string() << ": cannot create the output directory"
            << (ec ? ": " + ec.message() : std::string(": a file of that name exists")) << "\n";
        return input_error;
    }

    std::vector<std::unique_ptr<OutFile>> files;
    auto open = [&](const char* name) -> OutFile* {
        files.push_back(std::make_unique<OutFile>(dir / name));
        return files.back().get();
    };
    OutFile* patients_file = nullptr;
    OutFile* observations_file = nullptr;
    OutFile* conditions_file = nullptr;
    OutFile* procedures_file = nullptr;
    OutFile* bundle_file = nullptr;
    if (format == "ndjson") {
        patients_file = open("Patient.ndjson");
        observations_file = open("Observation.ndjson");
        conditions_file = open("Condition.ndjson");
        procedures_file = open("Procedure.ndjson");
    } else {
        bundle_file = open("cohort.json");
    }
    OutFile* expected_file = open("expected.json");
    for (const auto& f : files)
        if (!f->opened()) {
            err << "calcalert: error: " << f->path().string() << ": cannot open for writing\n";
            return input_error;
        }

    const auto start = std::chrono::steady_clock::now();
    const sandbox::CohortGenerator generator(seed, now, library);
    sandbox::ExpectedWriter expected(expected_file->stream(), now, seed);
    std::optional<sandbox::TransactionBundleWriter> bundle;
    if (bundle_file) bundle.emplace(bundle_file->stream());
    std::uint64_t observations = 0, conditions = 0, procedures = 0, with_findings = 0;
    for (std::uint64_t i = 0; i < patients; ++i) {
        const sandbox::SyntheticPatient p = generator.patient(static_cast<std::size_t>(i));
        if (bundle)
            bundle->add(p);
        else
            sandbox::write_ndjson(p, patients_file->stream(), observations_file->stream(), conditions_file->stream(),
                                  procedures_file->stream());
        expected.add(p);
        for (const auto& r : p.resources) {
            observations += r.type == "Observation" ? 1 : 0;
            conditions += r.type == "Condition" ? 1 : 0;
            procedures += r.type == "Procedure" ? 1 : 0;
        }
        with_findings += p.expected.empty() ? 0 : 1;
        if ((i & 0xFFF) == 0 && !expected_file->stream().good()) break;  // e.g. disk full: stop early
    }
    if (bundle) bundle->finish();
    expected.finish();
    bool failed = false;
    for (const auto& f : files)
        if (!f->close()) {
            err << "calcalert: error: " << f->path().string() << ": write failed\n";
            failed = true;
        }
    if (failed) return input_error;
    out << "generated " << patients << " patients (" << (patients + observations + conditions + procedures)
        << " resources: " << observations << " Observations, " << conditions << " Conditions, " << procedures
        << " Procedures; " << with_findings
        << " patients with expected findings) as " << format << " in " << dir.string() << " in " << seconds_since(start)
        << " s\n";
    return ok;
}

// The transaction-response must answer every entry with a 2xx status; else the first entry that did not.
std::optional<std::string> refused_entry(const rapidjson::Document& reply, const std::vector<std::string>& sent) {
    if (!reply.IsObject() || !reply.HasMember("type") || !reply["type"].IsString() ||
        std::string_view(reply["type"].GetString()) != "transaction-response")
        return "the reply is not a transaction-response Bundle";
    if (!reply.HasMember("entry") || !reply["entry"].IsArray() || reply["entry"].Size() != sent.size())
        return "the transaction-response does not answer each of the " + std::to_string(sent.size()) + " entries";
    for (rapidjson::SizeType i = 0; i < reply["entry"].Size(); ++i) {
        const auto& e = reply["entry"][i];
        std::string status;
        if (e.IsObject() && e.HasMember("response") && e["response"].IsObject() && e["response"].HasMember("status") &&
            e["response"]["status"].IsString())
            status = e["response"]["status"].GetString();
        if (status.empty() || status[0] != '2')
            return "entry[" + std::to_string(i) + "] (PUT " + sent[i] + ") answered '" +
                   (status.empty() ? std::string("no status") : status) + "'";
    }
    return std::nullopt;
}

int seed_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
    Options opts(args, {"server", "patients", "seed", "now", "expected", "batch", "archetypes", "terminology"},
                 {"help"});
    if (opts.flag("help")) {
        out << kSeedHelp;
        return ok;
    }
    no_arguments(opts, "sandbox seed");
    const auto server = opts.value("server");
    if (!server || server->empty()) throw UsageError("sandbox seed needs --server URL");
    const std::uint64_t patients = number_option(opts, "patients", 60, 1, kMaxPatients);
    const std::uint64_t seed = number_option(opts, "seed", 1, 0, UINT64_MAX);
    const std::uint64_t batch = number_option(opts, "batch", 25, 1, 1000);
    const rules::EpochSeconds now = now_option(opts);

    fhir::ClientOptions client_options;
    client_options.base_url = *server;
    std::optional<fhir::FhirClient> client;
    try {
        client.emplace(client_options);
    } catch (const std::invalid_argument& e) {
        throw UsageError(std::string("--server: ") + e.what());
    }
    const auto library = archetype_library(opts);

    // The ground truth goes to FILE.part while seeding and becomes FILE once every Bundle is accepted.
    std::unique_ptr<OutFile> expected_file;
    std::optional<sandbox::ExpectedWriter> expected;
    fs::path expected_path;
    if (auto e = opts.value("expected")) {
        if (e->empty()) throw UsageError("--expected needs a FILE");
        expected_path = *e;
        expected_file = std::make_unique<OutFile>(fs::path(*e + ".part"));
        if (!expected_file->opened()) {
            err << "calcalert: error: " << *e << ": cannot open " << expected_file->path().string() << " for writing\n";
            return input_error;
        }
        expected.emplace(expected_file->stream(), now, seed);
    }
    auto discard_expected = [&] {
        if (!expected_file) return;
        expected_file->close();
        std::error_code ignored;
        fs::remove(expected_file->path(), ignored);
    };

    const auto start = std::chrono::steady_clock::now();
    const sandbox::CohortGenerator generator(seed, now, library);
    const std::uint64_t bundles = (patients + batch - 1) / batch;
    std::uint64_t resources = 0;
    for (std::uint64_t b = 0; b < bundles; ++b) {
        const std::uint64_t first = b * batch;
        const std::uint64_t last = std::min(patients, first + batch);  // exclusive
        std::vector<sandbox::SyntheticPatient> group;
        group.reserve(static_cast<std::size_t>(last - first));
        std::vector<std::string> sent;
        for (std::uint64_t i = first; i < last; ++i) {
            group.push_back(generator.patient(static_cast<std::size_t>(i)));
            for (const auto& r : group.back().resources) sent.push_back(r.type + "/" + r.id);
        }
        const std::string what = "transaction Bundle " + std::to_string(b + 1) + " of " + std::to_string(bundles) +
                                 " (patients " + group.front().id + " to " + group.back().id + ")";
        try {
            const rapidjson::Document reply = client->transaction(sandbox::transaction_bundle(group));
            if (auto refused = refused_entry(reply, sent)) {
                err << "calcalert: error: " << what << ": POST " << client->base_url() << ": " << *refused << "\n";
                discard_expected();
                return input_error;
            }
        } catch (const fhir::FhirError& e) {
            err << "calcalert: error: " << what << ": " << e.what() << "\n";
            discard_expected();
            return input_error;
        }
        resources += sent.size();
        if (expected)
            for (const auto& p : group) expected->add(p);
    }
    if (expected) {
        expected->finish();
        if (!expected_file->close()) {
            err << "calcalert: error: " << expected_file->path().string() << ": write failed\n";
            discard_expected();
            return input_error;
        }
        std::error_code ec;
        fs::rename(expected_file->path(), expected_path, ec);
        if (ec) {
            err << "calcalert: error: " << expected_path.string() << ": cannot write: " << ec.message() << "\n";
            discard_expected();
            return input_error;
        }
    }
    out << "seeded " << patients << " patients (" << resources << " resources) into " << client->base_url() << ": "
        << client->stats().requests << " requests in " << seconds_since(start) << " s\n";
    return ok;
}

}  // namespace

int sandbox_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
    if (args.empty()) throw UsageError("sandbox needs a subcommand: generate or seed (see 'calcalert sandbox --help')");
    const std::string& sub = args[0];
    if (sub == "--help" || sub == "help") {
        out << kSandboxHelp;
        return ok;
    }
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    if (sub == "generate") return generate_command(rest, out, err);
    if (sub == "seed") return seed_command(rest, out, err);
    throw UsageError("unknown sandbox subcommand '" + sub + "' (generate or seed; see 'calcalert sandbox --help')");
}

}  // namespace calcalert::cli
