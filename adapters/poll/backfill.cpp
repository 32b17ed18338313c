#include "adapters/poll/backfill.hpp"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <Poco/InflatingStream.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "adapters/poll/change_feed.hpp"
#include "adapters/poll/paging.hpp"
#include "adapters/poll/url.hpp"
#include "fhir/datetime.hpp"
#include "fhir/http_text.hpp"
#include "fhir/views.hpp"
#include "mappings/fact_builder.hpp"
#include "rules/engine.hpp"

namespace calcalert::poll {
namespace {

using fhir::Json;

// Hands every resource of the export on to the facts, and keeps the references of the Conditions the
// rules read (of every shard's patients: every shard reads every file), so that the hand-over primes
// the Condition feed's filter as a feed read from its start would have.
class CountedConditions final : public fhir::ResourceHandler {
public:
    CountedConditions(fhir::ResourceHandler& facts, const Poller& poller) : facts_(facts), poller_(poller) {}
    void on_resource(const rapidjson::Value& resource, std::string_view type, const fhir::Location& where,
                     const fhir::BundleContext* bundle) override {
        facts_.on_resource(resource, type, where, bundle);
        if (type != "Condition") return;
        const std::string id = fhir::string_or_empty(resource, "id");
        if (!id.empty() && poller_.condition_counts(resource)) references_.insert("Condition/" + id);
    }
    void on_problem(const fhir::Problem& problem) override { facts_.on_problem(problem); }
    void on_deleted(std::string_view reference, std::string_view version, std::optional<std::int64_t> at,
                    const fhir::Location& where) override {
        facts_.on_deleted(reference, version, at, where);
    }
    const std::set<std::string>& references() const { return references_; }

private:
    fhir::ResourceHandler& facts_;
    const Poller& poller_;
    std::set<std::string> references_;
};

// A claim (state::WorkLeases) this shard holds for a scope: given up when the scope ends, also by
// an exception.
class HeldClaim {
public:
    HeldClaim(Poller& poller, std::string subject) : poller_(poller), subject_(std::move(subject)) {}
    ~HeldClaim() {
        try {
            poller_.release(subject_);
        } catch (...) {
        }
    }
    HeldClaim(const HeldClaim&) = delete;
    HeldClaim& operator=(const HeldClaim&) = delete;

private:
    Poller& poller_;
    std::string subject_;
};

// The spool file a download goes to: truncated before every attempt, removed when done.
class SpoolFile {
public:
    explicit SpoolFile(std::string path) : path_(std::move(path)) {
        if (path_.empty()) {
            std::string pattern = (std::filesystem::temp_directory_path() / "calcalert-export-XXXXXX").string();
            const int fd = ::mkstemp(pattern.data());
            if (fd < 0) throw ExportError("cannot create a spool file for the export in " + std::filesystem::temp_directory_path().string());
            ::close(fd);
            path_ = pattern;
        }
    }
    ~SpoolFile() {
        out_.close();
        std::error_code ec;
        std::filesystem::remove(path_, ec);
    }
    SpoolFile(const SpoolFile&) = delete;
    SpoolFile& operator=(const SpoolFile&) = delete;

    void restart() {
        out_.close();
        out_.clear();
        out_.open(path_, std::ios::binary | std::ios::trunc);
        if (!out_) throw ExportError("cannot write the spool file " + path_);
        bytes_ = 0;
    }
    bool write(std::string_view data) {
        out_.write(data.data(), static_cast<std::streamsize>(data.size()));
        bytes_ += data.size();
        return static_cast<bool>(out_);
    }
    void close() { out_.close(); }
    std::uint64_t bytes() const { return bytes_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    std::ofstream out_;
    std::uint64_t bytes_ = 0;
};

// Whether a file starts with the gzip magic bytes.
bool is_gzip(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    char magic[2] = {};
    return in.read(magic, 2) && static_cast<unsigned char>(magic[0]) == 0x1f && static_cast<unsigned char>(magic[1]) == 0x8b;
}

// A Bulk Data export read into memory: the facts of every patient it names, and calcalert's
// DetectedIssues on the server, by patient. read_alerts() asks the server again (after a conflict
// the snapshot's copy is stale).
class ExportSnapshot : public PatientSource {
public:
    ExportSnapshot(std::map<std::string, rules::PatientFacts> facts, std::map<std::string, std::vector<ServerAlert>> alerts,
                   std::vector<fhir::Problem> unreadable, HistoryReader& live)
        : facts_(std::move(facts)), alerts_(std::move(alerts)), unreadable_(std::move(unreadable)), live_(live) {}

    PatientHistory read(const std::string& patient, rules::EpochSeconds) override {
        PatientHistory h;
        if (auto it = facts_.find(patient); it != facts_.end()) {
            h.facts = std::move(it->second);
            facts_.erase(it);
        } else {
            h.facts = rules::PatientFacts{patient, {}, {}, {}};
        }
        // A line no one can attribute to a patient could have been anyone's: no retraction on it.
        if (!unreadable_.empty()) h.unreadable.push_back(unreadable_.front());
        if (auto it = alerts_.find(patient); it != alerts_.end()) h.alerts = it->second;
        return h;
    }
    std::vector<ServerAlert> read_alerts(const std::string& patient) override { return live_.read_alerts(patient); }

private:
    std::map<std::string, rules::PatientFacts> facts_;
    std::map<std::string, std::vector<ServerAlert>> alerts_;
    std::vector<fhir::Problem> unreadable_;
    HistoryReader& live_;
};

// Compares two FHIR instants as the server wrote them; nullopt when one does not parse.
std::optional<bool> earlier(const std::string& a, const std::string& b) {
    const auto x = fhir::parse_datetime(a), y = fhir::parse_datetime(b);
    if (!x || !y) return std::nullopt;
    return *x < *y;
}

}  // namespace

std::string BackfillReport::to_json() const {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    auto s = [&](const char* k, const std::string& v) {
        w.Key(k);
        w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
    };
    auto n = [&](const char* k, std::uint64_t v) {
        w.Key(k);
        w.Uint64(v);
    };
    w.StartObject();
    s("statusUrl", status_url);
    w.Key("resumedJob");
    w.Bool(resumed_job);
    w.Key("restartedJob");
    w.Bool(restarted_job);
    s("transactionTime", transaction_time);
    n("files", files);
    n("errorFiles", error_files);
    n("bytes", bytes);
    n("resources", resources);
    n("linesRejected", lines_rejected);
    n("patientsInExport", patients_in_export);
    n("patientsQueued", patients_queued);
    n("shard", static_cast<std::uint64_t>(shard));
    n("shards", static_cast<std::uint64_t>(shards));
    n("patientsInShard", patients_in_shard);
    n("shardsFinished", shards_finished);
    w.Key("handedOver");
    w.Bool(handed_over);
    n("statusPolls", status_polls);
    w.Key("waitedSeconds");
    w.Int64(waited_seconds);
    w.Key("typeFilter");
    w.Bool(type_filter_sent);
    w.Key("watermarksMoved");
    w.StartArray();
    for (const auto& k : watermarks_moved) w.String(k.c_str(), static_cast<rapidjson::SizeType>(k.size()));
    w.EndArray();
    w.EndObject();
    return sb.GetString();
}

Backfill::Backfill(Poller& poller, fhir::FhirClient& client, state::StateStore& store, const mappings::Terminology& terminology,
                   BackfillOptions options)
    : poller_(poller), client_(client), store_(store), term_(terminology), opt_(std::move(options)) {}

ExportRequest Backfill::request() const {
    ExportRequest r;
    r.group = opt_.group;
    r.types = {"Observation", "Condition", "Procedure", "Patient"};
    if (opt_.type_filter)
        // The change feed's own selection of what the rules read (Poller::feed_plan): its filters
        // are already queries with encoded values. The Condition feed reads every Condition, and
        // the Patient feed (deceased) names changes, not what is read: neither filters the export.
        for (const auto& feed : poller_.feed_plan())
            if ((feed.type == "Observation" || feed.type == "Procedure") && !feed.filter.empty())
                r.type_filters.push_back(feed.type + "?" + feed.filter);
    return r;
}

int shard_of(const std::string& patient, int shards) {
    if (shards <= 1) return 0;
    std::uint64_t h = 1469598103934665603ULL;
    for (const unsigned char c : patient) {
        h ^= c;
        h *= 1099511628211ULL;
    }
    return static_cast<int>(h % static_cast<std::uint64_t>(shards));
}

std::string Backfill::saved_job() {
    const auto c = store_.feed_cursor(server(), job_key());
    return c ? c->next_url : std::string();
}

void Backfill::pause(std::chrono::seconds s) {
    if (opt_.sleep) opt_.sleep(s);
    else std::this_thread::sleep_for(s);
}

std::string Backfill::start_job(BulkExportClient& bulk, const ExportRequest& req, const std::string& gone) {
    const std::string key = job_key();
    const bool shared = opt_.shards > 1 && !poller_.options().dry_run;
    if (!shared) {
        const std::string url = bulk.kick_off(req);
        if (!poller_.options().dry_run) store_.set_feed_cursor(server(), key, {url, "", 0});
        poller_.kill_point("export-started");
        return url;
    }
    // Shards: whoever claims the job starts it; the others take the status URL it saves.
    const auto give_up = std::chrono::steady_clock::now() + opt_.wait.give_up_after;
    for (;;) {
        if (poller_.claim(key)) {
            const HeldClaim held(poller_, key);
            std::string url = saved_job();
            if (url.empty() || url == gone) {
                url = bulk.kick_off(req);
                store_.set_feed_cursor(server(), key, {url, "", 0});
                poller_.kill_point("export-started");
            } else {
                report_.resumed_job = true;
            }
            return url;
        }
        if (std::string url = saved_job(); !url.empty() && url != gone) {
            report_.resumed_job = true;
            return url;
        }
        if (std::chrono::steady_clock::now() > give_up)
            throw ExportError("shard " + std::to_string(opt_.shard) + " of " + std::to_string(opt_.shards) + ": " +
                              store_.lease_holder(server(), key, poller_.wall_clock()) +
                              " has been starting the export for longer than --bulk-max-wait");
        pause(std::chrono::seconds(2));
    }
}

std::string Backfill::job_key() const { return "bulk $export " + (opt_.group.empty() ? std::string("Patient") : "Group/" + opt_.group); }

PollSummary Backfill::run(rules::EpochSeconds now) {
    const PollOptions& popt = poller_.options();
    PollSummary sum;
    report_ = {};
    BackfillReport& report = report_;
    const auto before = client_.stats();
    client_.reset_fault_budget();
    const std::int64_t run_id = popt.dry_run ? 0 : store_.begin_run(server(), now);
    auto finish = [&](const std::string& outcome) {
        sum.backfill = report.to_json();
        sum.requests = client_.stats().requests - before.requests;
        sum.retries = client_.stats().retries - before.retries;
        if (!popt.dry_run) store_.finish_run(run_id, now, outcome, sum.to_json());
    };
    try {
        const LabCodeSearch search = poller_.lab_code_search();
        sum.lab_search = to_string(search);
        const ExportRequest req = request();
        report.type_filter_sent = !req.type_filters.empty();
        BulkExportClient bulk(client_, opt_.wait, opt_.sleep, opt_.on_progress);

        // 1. The export: the saved job, or a new one (also when the saved one is gone).
        const std::string key = job_key();
        ExportManifest manifest;
        report.shard = opt_.shard;
        report.shards = opt_.shards;
        for (int attempt = 0;; ++attempt) {
            // The saved job; after one the server no longer knew, the one another shard started since.
            const std::string saved = saved_job();
            if (!saved.empty() && (attempt == 0 || saved != report.status_url)) {
                report.status_url = saved;
                report.resumed_job = true;
            } else {
                report.status_url = start_job(bulk, req, attempt == 0 ? std::string() : report.status_url);
            }
            try {
                manifest = bulk.wait_for(report.status_url);
                break;
            } catch (const ExportError& e) {
                if (!e.job_gone() || attempt > 0 || !report.resumed_job) throw;
                report.restarted_job = true;  // expired or deleted while we were away: start again
                report.resumed_job = false;
            }
        }
        report.status_polls = bulk.status_polls();
        report.waited_seconds = bulk.waited().count();
        report.transaction_time = manifest.transaction_time;
        report.files = manifest.output.size();
        report.error_files = manifest.error.size();
        poller_.kill_point("export-ready");

        // 2. Read every output file into the facts.
        mappings::FactBuilder builder(term_, server());
        CountedConditions counted(builder, poller_);
        SpoolFile spool(opt_.spool_path);
        std::size_t resources = 0, rejected = 0;
        for (std::size_t i = 0; i < manifest.output.size(); ++i) {
            const ExportFile& file = manifest.output[i];
            const std::string name = "export file " + std::to_string(i + 1) + " of " + std::to_string(manifest.output.size()) +
                                     " (" + fhir::text::escaped(file.type, 64) + ", " + fhir::text::escaped(file.url, 200) + ")";
            bool over = false;
            fhir::FhirClient::Download sink;
            sink.restart = [&] {
                spool.restart();
                over = false;
            };
            sink.sink = [&](std::string_view data) {
                if (spool.bytes() + data.size() > opt_.max_file_bytes) {
                    over = true;
                    return false;
                }
                return spool.write(data);
            };
            sink.deadline = opt_.file_deadline;
            try {
                bulk.download(file, sink);
            } catch (const fhir::FhirError& e) {
                if (over)
                    throw ExportError(name + ": larger than " + std::to_string(opt_.max_file_bytes) +
                                      " bytes after decoding (max_file_bytes); not read");
                throw;
            }
            spool.close();
            report.bytes += spool.bytes();
            fhir::ReadStats stats;
            try {
                std::ifstream raw(spool.path(), std::ios::binary);
                if (is_gzip(spool.path())) {
                    Poco::InflatingInputStream in(raw, Poco::InflatingStreamBuf::STREAM_GZIP);
                    stats = fhir::read_ndjson(in, name, counted, opt_.max_line_bytes);
                } else {
                    stats = fhir::read_ndjson(raw, name, counted, opt_.max_line_bytes);
                }
            } catch (const std::exception& e) {
                throw ExportError(name + ": cannot read it as NDJSON (" + e.what() + ")");
            }
            resources += stats.resources;
            rejected += stats.rejected;
            poller_.kill_point("export-file");
        }
        report.resources = resources;
        report.lines_rejected = rejected;
        sum.resources_read = resources;

        // calcalert's own DetectedIssues on the server, by patient.
        std::map<std::string, std::vector<ServerAlert>> alerts;
        const std::string q = "DetectedIssue?identifier=" + url_encode(popt.issue.identifier_system + "|") +
                              "&_count=" + std::to_string(popt.page_size);
        search_pages(client_, q, [&](const rapidjson::Document& page, const std::string&) {
            for_each_server_alert(page, popt.issue.identifier_system, popt.issue.evidence_hash_extension,
                                  [&](ServerAlert& x, const Json& res) {
                                      const Json* patient = fhir::member(res, "patient");
                                      const auto local = patient && patient->IsObject()
                                                             ? local_patient(fhir::string_or_empty(*patient, "reference"), server())
                                                             : std::nullopt;
                                      if (!local) return;
                                      auto& list = alerts[*local];
                                      if (std::none_of(list.begin(), list.end(), [&](const ServerAlert& a) { return a.id == x.id; }))
                                          list.push_back(std::move(x));
                                  });
        }, sum.notes);

        // 3. The work: patients of the export with a finding or one of our alerts.
        std::vector<fhir::Problem> unreadable;
        for (const auto& p : builder.problems())
            if (p.severity == fhir::Severity::error || p.severity == fhir::Severity::fatal) {
                sum.unreadable.push_back({"", p.describe()});
                if (unreadable.empty()) unreadable.push_back(p);
            }
        sum.input_problems += builder.problems().size();
        std::set<std::string> patients;
        const rules::RuleCatalog& catalog = poller_.catalog();
        report.patients_in_export = builder.patients().size();
        if (opt_.shards > 1) {
            // This shard's patients only: the others' facts and alerts are dropped before the work.
            for (auto it = builder.patients().begin(); it != builder.patients().end();)
                it = shard_of(it->first, opt_.shards) == opt_.shard ? std::next(it) : builder.patients().erase(it);
            for (auto it = alerts.begin(); it != alerts.end();)
                it = shard_of(it->first, opt_.shards) == opt_.shard ? std::next(it) : alerts.erase(it);
        }
        report.patients_in_shard = builder.patients().size();
        for (const auto& [patient, facts] : builder.patients()) {
            if (patient.rfind("Patient/", 0) != 0) continue;  // another server's patient, or a urn: one
            if (alerts.count(patient) || !rules::evaluate(facts, now, catalog).findings.empty()) patients.insert(patient);
        }
        report.patients_queued = patients.size();
        sum.patients_changed = patients.size();
        sum.patients_queued = patients.size();
        if (!popt.dry_run)
            store_.transaction([&] {
                for (const auto& p : patients) store_.enqueue_patient(server(), p, now);
            });
        HistoryReader live(client_, term_, catalog,
                           {popt.issue.identifier_system, popt.issue.evidence_hash_extension, popt.page_size, search, 1});
        ExportSnapshot snapshot(std::move(builder.patients()), std::move(alerts), std::move(unreadable), live);
        poller_.work_stage(snapshot, patients, sum, now);

        // 4. Hand over to incremental polling at transactionTime (never moving a watermark back):
        //    with shards, once every shard has finished, by the last one (finishing is serialized
        //    by a claim, so that the last one sees every other's record).
        std::optional<HeldClaim> hand_over;  // with shards, held until the hand-over is done
        if (!popt.dry_run && opt_.shards > 1) {
            const std::string subject = key + " hand-over";
            const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(10);
            while (!poller_.claim(subject)) {
                if (std::chrono::steady_clock::now() > give_up)
                    throw ExportError("another shard has held the hand-over claim for 10 minutes");
                pause(std::chrono::seconds(1));
            }
            hand_over.emplace(poller_, subject);
            store_.finish_shard(server(), report.status_url, opt_.shard, opt_.shards, poller_.wall_clock());
            report.shards_finished = store_.finished_shards(server(), report.status_url).size();
            report.handed_over = report.shards_finished >= static_cast<std::size_t>(opt_.shards);
            if (!report.handed_over) hand_over.reset();
        } else {
            report.shards_finished = 1;
            report.handed_over = !popt.dry_run;
        }
        if (report.handed_over) {
            store_.transaction([&] {
                for (const auto& feed : poller_.feed_plan()) {
                    const auto mark = store_.watermark(server(), feed.watermark_key);
                    if (!mark || earlier(*mark, manifest.transaction_time).value_or(false)) {
                        store_.set_watermark(server(), feed.watermark_key, manifest.transaction_time);
                        store_.clear_feed_cursor(server(), feed.watermark_key);
                        // The feed's filter is primed from the export's Conditions: those the
                        // rules read are remembered, as the feed itself would have.
                        if (feed.counts) {
                            for (const auto& ref : counted.references())
                                store_.set_counted_resource(server(), ref, true);
                            store_.set_watermark(server(), counted_mark_key(feed.watermark_key), manifest.transaction_time);
                        }
                        report.watermarks_moved.push_back(feed.watermark_key);
                    }
                }
                store_.set_watermark(server(), key, manifest.transaction_time);
                store_.clear_feed_cursor(server(), key);
            });
            hand_over.reset();
            if (!bulk.finish(report.status_url)) sum.notes.push_back("the server did not accept DELETE on the export's status URL");
        }
        poller_.kill_point("pass-done");
        finish(sum.outcome());
        return sum;
    } catch (...) {
        try {
            finish("failed");
        } catch (...) {
        }
        throw;
    }
}

}  // namespace calcalert::poll
