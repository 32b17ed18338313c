#include "adapters/poll/poller.hpp"

#include <unistd.h>

#include <csignal>
#include <ctime>

#include <algorithm>
#include <set>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "adapters/poll/change_feed.hpp"
#include "mappings/condition_reading.hpp"
#include "rules/engine.hpp"

namespace calcalert::poll {

std::optional<KillPoint> parse_kill_point(const std::string& text) {
    static const std::set<std::string> names = {"feed-page",        "feed-done",   "patient-read", "patient-evaluated",
                                                "bundle-sent",      "bundle-committed", "pass-done",
                                                "export-started",   "export-ready", "export-file"};
    const auto colon = text.rfind(':');
    if (colon == std::string::npos || !names.count(text.substr(0, colon))) return std::nullopt;
    char* end = nullptr;
    const unsigned long long n = std::strtoull(text.c_str() + colon + 1, &end, 10);
    if (end == text.c_str() + colon + 1 || *end != '\0' || n == 0 || n > 1000000) return std::nullopt;
    return KillPoint{text.substr(0, colon), static_cast<std::size_t>(n)};
}

std::string PollSummary::to_json() const {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.StartObject();
    auto n = [&](const char* k, std::uint64_t v) {
        w.Key(k);
        w.Uint64(v);
    };
    auto s = [&](const char* k, const std::string& v) {
        w.Key(k);
        w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
    };
    s("outcome", outcome());
    n("resourcesRead", resources_read);
    n("resourcesSkipped", resources_skipped);
    n("resourcesNotCounted", resources_not_counted);
    n("feedPages", feed_pages);
    w.Key("resumed");
    w.Bool(resumed);
    n("patientsChanged", patients_changed);
    n("patientsQueued", patients_queued);
    n("patientsEvaluated", patients_evaluated);
    n("patientsDeferred", patients_deferred);
    n("openAlertsNotDue", open_alerts_not_due);
    n("patientsClaimedElsewhere", patients_claimed_elsewhere);
    if (!feed_read_by.empty()) s("feedReadBy", feed_read_by);
    if (!worker.empty()) s("worker", worker);
    n("findings", findings);
    n("created", created);
    n("amended", amended);
    n("cancelled", cancelled);
    n("reopened", reopened);
    n("retired", retired);
    n("unchanged", unchanged);
    n("keptWhileIncomplete", kept_while_incomplete);
    n("conflicts", conflicts);
    n("dataQualityNotes", data_quality_notes);
    n("inputProblems", input_problems);
    n("unreadableResources", unreadable.size());
    n("requests", requests);
    n("retries", retries);
    n("writeBatches", write_batches);
    n("bundleSplits", bundle_splits);
    s("labCodeSearch", lab_search);
    // At most 50 of each list: the run record stays small; the counts above are complete.
    w.Key("unreadable");
    w.StartArray();
    for (std::size_t i = 0; i < unreadable.size() && i < 50; ++i) {
        w.StartObject();
        s("patient", unreadable[i].patient);
        s("problem", unreadable[i].description);
        w.EndObject();
    }
    w.EndArray();
    w.Key("deferred");
    w.StartArray();
    for (std::size_t i = 0; i < deferred.size() && i < 50; ++i) {
        w.StartObject();
        s("patient", deferred[i].first);
        s("reason", deferred[i].second);
        w.EndObject();
    }
    w.EndArray();
    w.Key("notes");
    w.StartArray();
    for (const auto& note : notes) w.String(note.c_str(), static_cast<rapidjson::SizeType>(note.size()));
    w.EndArray();
    if (!backfill.empty()) {
        w.Key("backfill");
        w.RawValue(backfill.c_str(), backfill.size(), rapidjson::kObjectType);
    }
    w.EndObject();
    return sb.GetString();
}

Poller::Poller(fhir::FhirClient& client, state::StateStore& store, const mappings::Terminology& terminology,
               const rules::RuleCatalog& catalog, PollOptions options)
    : client_(client), store_(store), term_(terminology), catalog_(catalog), opt_(std::move(options)),
      lab_search_(opt_.lab_search), recheck_basis_(catalog.logic_fingerprint()),
      worker_(opt_.worker_id.empty() ? default_worker_id() : opt_.worker_id) {}

std::string default_worker_id() {
    char host[256] = {};
    return gethostname(host, sizeof host - 1) == 0 && host[0] ? host : "calcalert-poll";
}

bool Poller::recheck_due(const state::Recheck* r, rules::EpochSeconds now) const {
    return r == nullptr || r->basis != recheck_basis_ || r->at <= now;
}

std::int64_t Poller::wall_clock() const { return opt_.clock ? opt_.clock() : static_cast<std::int64_t>(std::time(nullptr)); }

bool Poller::claim(const std::string& subject) {
    const std::int64_t t = wall_clock();
    return store_.claim(server(), subject, worker_, t + opt_.lease.count(), t);
}

void Poller::release(const std::string& subject) { store_.release(server(), subject, worker_); }

std::vector<std::string> Poller::claim_patients(const std::vector<std::string>& patients, PollSummary& sum,
                                                rules::EpochSeconds now) {
    std::vector<std::string> mine;
    for (const auto& p : patients) {
        if (!claim(p)) {
            ++sum.patients_claimed_elsewhere;
            continue;
        }
        const auto queued = store_.pending_patient(server(), p);
        bool needed = queued.has_value();
        if (queued) claimed_generation_[p] = queued->generation;
        else claimed_generation_.erase(p);
        if (!needed && due_by_recheck_.count(p)) {
            const auto r = store_.recheck(server(), p);
            needed = recheck_due(r ? &*r : nullptr, now);
        }
        if (needed) mine.push_back(p);
        else release(p);  // finished by another poller since this pass listed it
    }
    return mine;
}

void Poller::kill_point(const char* name) {
    if (opt_.kill.n == 0 || opt_.kill.name != name) return;
    if (++kill_counts_[name] == opt_.kill.n) std::raise(SIGKILL);
}

LabCodeSearch Poller::lab_code_search() {
    if (!lab_search_) lab_search_ = discover_lab_code_search(client_);
    return *lab_search_;
}

bool Poller::condition_counts(const rapidjson::Value& condition) const {
    return mappings::condition_counts(term_, fhir::ConditionView(condition).code());
}

std::vector<FeedOptions> Poller::feed_plan() {
    const std::string codes = lab_code_list(term_);
    std::vector<FeedOptions> feeds;
    auto add = [&](const std::string& type, const std::string& filter, const std::string& key) {
        FeedOptions f;
        f.type = type;
        f.filter = filter;
        f.watermark_key = key;
        f.page_size = opt_.page_size;
        f.overlap = opt_.overlap;
        f.dry_run = opt_.dry_run;
        feeds.push_back(std::move(f));
    };
    switch (lab_code_search()) {
        case LabCodeSearch::combo_code: add("Observation", "combo-code=" + codes, "Observation"); break;
        case LabCodeSearch::code_and_component_code:
            add("Observation", "code=" + codes, "Observation");
            add("Observation", "component-code=" + codes, "Observation component-code");
            break;
        case LabCodeSearch::code_and_panels:
            add("Observation", "code=" + codes, "Observation");
            add("Observation", "category=laboratory", "Observation category=laboratory");
            break;
    }
    // Every Condition is read (a code filter on the server could not express the ICD prefixes and the
    // Conditions named only by their words), but only those the rules read queue their patient.
    add("Condition", "", "Condition");
    feeds.back().counts = [this](const rapidjson::Value& resource) { return condition_counts(resource); };
    // Dialysis Procedures (clinical-rules.md §5.2.2), by their codes.
    if (const std::string procedures = procedure_code_list(term_); !procedures.empty())
        add("Procedure", "code=" + procedures, "Procedure");
    // Patients recorded as deceased (clinical-rules.md §5.1.6): a death is often the only change, and
    // it ends the patient's open alerts.
    add("Patient", "deceased=true", "Patient deceased=true");
    feeds.back().optional = true;
    return feeds;
}

void Poller::feed_stage(PollSummary& sum, rules::EpochSeconds now, std::set<std::string>& named) {
    // One poller at a time reads the change feed; the others work on the queue it fills.
    if (!opt_.dry_run && !claim("feed")) {
        sum.feed_read_by = store_.lease_holder(server(), "feed", wall_clock());
        if (sum.feed_read_by.empty()) sum.feed_read_by = "another poller";
        return;
    }
    ChangeFeed feed(client_, store_);
    const auto renew = [this] {
        if (!opt_.dry_run && !claim("feed"))
            throw state::StateError("the change feed's claim expired and " + store_.lease_holder(server(), "feed", wall_clock()) +
                                    " took it; this pass stops (a longer --lease avoids it)");
        kill_point("feed-page");
    };
    for (const auto& f : feed_plan()) {
        FeedResult r;
        try {
            r = feed.sync(f, now, named, renew);
        } catch (const fhir::FhirError& e) {
            if (!f.optional || !(e.status() == 400 || e.status() == 403 || e.status() == 404)) throw;
            sum.notes.push_back("the server refuses the search " + f.type + "?" + f.filter + " (HTTP " + std::to_string(e.status()) +
                                "): a change of that kind alone is noticed only at the patient's recheck time");
            continue;
        }
        sum.feed_pages += r.pages;
        sum.resources_read += r.resources_read;
        sum.resources_skipped += r.resources_skipped;
        sum.resources_not_counted += r.resources_not_counted;
        sum.resumed = sum.resumed || r.resumed;
        sum.notes.insert(sum.notes.end(), r.notes.begin(), r.notes.end());
    }
    sum.patients_changed = named.size();
    if (!opt_.dry_run) release("feed");
    kill_point("feed-done");
}

void Poller::defer(const std::string& patient, const std::string& why, PollSummary& sum) {
    sum.deferred.emplace_back(patient, why);
    ++sum.patients_deferred;
    if (opt_.dry_run) return;
    store_.transaction([&] {
        store_.defer_patient(server(), patient, why);
        release(patient);
    });
}

void Poller::count(const Reconciliation& r, const std::string& patient, PollSummary& sum) {
    sum.unchanged += r.unchanged;
    sum.kept_while_incomplete += r.kept_while_incomplete;
    for (const auto& w : r.writes) {
        switch (w.action) {
            case WriteAction::create: ++sum.created; break;
            case WriteAction::amend: ++sum.amended; break;
            case WriteAction::reopen: ++sum.reopened; break;
            case WriteAction::cancel: ++sum.cancelled; break;
            case WriteAction::retire_duplicate: ++sum.retired; break;
        }
        sum.writes.push_back({to_string(w.action), patient, w.rule_id, w.identifier, w.status, w.summary});
    }
}

void Poller::close_patient(const std::string& patient, const InFlight& job, PollSummary& sum) {
    if (job.complete) {
        if (!opt_.dry_run) {
            // Off the queue only as it was read: queued again meanwhile (the feed saw a newer change
            // while this poller worked), or queued only since (it was due by its recheck time), it
            // stays for the next pass.
            store_.transaction([&] {
                if (const auto g = claimed_generation_.find(patient); g != claimed_generation_.end())
                    store_.finish_patient(server(), patient, g->second);
                release(patient);
            });
        }
    } else {
        defer(patient, job.incomplete_reason, sum);
    }
}

void Poller::work_on(PatientSource& reader, const std::string& patient, PollSummary& sum, WriteBack& write_back,
                     rules::EpochSeconds now) {
    PatientHistory h;
    try {
        h = reader.read(patient, now);
    } catch (const fhir::FhirError& e) {
        // A request that still fails after its retries: this patient waits for the next pass; the
        // others go on. A spent fault budget or a refusal that no retry can mend ends the pass.
        if (e.kind() == fhir::FhirErrorKind::budget_spent || !e.transient()) throw;
        defer(patient, e.what(), sum);
        return;
    }
    kill_point("patient-read");
    for (auto& n : h.notes)
        if (sum.notes.size() < 20 && std::find(sum.notes.begin(), sum.notes.end(), n) == sum.notes.end()) sum.notes.push_back(n);
    sum.data_quality_notes += h.data_quality_notes;
    sum.input_problems += h.unreadable.size() + h.data_quality_notes;
    std::string incomplete;
    for (const auto& p : h.unreadable) {
        sum.unreadable.push_back({patient, p.describe()});
        incomplete += (incomplete.empty() ? "cannot read " : "; ") + p.describe();
    }

    const rules::Evaluation ev = rules::evaluate(h.facts, now, catalog_);
    sum.data_quality_notes += ev.notes.size();
    sum.findings += ev.findings.size();
    ++sum.patients_evaluated;
    kill_point("patient-evaluated");

    InFlight job;
    job.complete = h.unreadable.empty();
    job.incomplete_reason = incomplete;
    for (const auto& f : ev.findings)
        job.desired.push_back({mappings::alert_identifier(f.patient, f.rule->id), f.patient, f.rule->id,
                               std::string(rules::to_string(f.rule->severity)), f.evidence_hash, f.summary,
                               mappings::detected_issue_json(f, now, opt_.issue, "final", false)});
    Reconciliation r = reconcile(job.desired, h.alerts, {patient, opt_.issue.identifier_system, job.complete});
    count(r, patient, sum);
    if (opt_.dry_run) return;

    const bool no_writes = r.writes.empty();
    // When time alone may change this patient's findings (0: at every pass, while its data is incomplete).
    const state::Recheck recheck{job.complete ? rules::next_time_change(h.facts, now, catalog_).value_or(state::kNoRecheck) : 0,
                                 recheck_basis_};
    store_.transaction([&] {
        // The ledger learns every DetectedIssue of ours the server holds, also those a killed pass wrote.
        for (const auto& a : h.alerts)
            store_.put_alert({server(), a.identifier, patient, a.rule_id, a.evidence_hash, a.status, a.id, a.version, now});
        store_.set_recheck(server(), patient, recheck);
        if (no_writes) close_patient(patient, job, sum);
    });
    if (no_writes) return;
    in_flight_[patient] = std::move(job);
    write_back.add(patient, std::move(r.writes), now);
}

void Poller::decide_again(PatientSource& reader, const std::set<std::string>& stale, PollSummary& sum,
                          WriteBack& write_back, rules::EpochSeconds now) {
    for (const auto& patient : stale) {
        const auto it = in_flight_.find(patient);
        if (it == in_flight_.end()) continue;
        ++sum.conflicts;
        const auto alerts = reader.read_alerts(patient);
        Reconciliation r = reconcile(it->second.desired, alerts, {patient, opt_.issue.identifier_system, it->second.complete});
        count(r, patient, sum);
        if (r.writes.empty()) {
            const InFlight job = it->second;
            in_flight_.erase(it);
            close_patient(patient, job, sum);
            continue;
        }
        write_back.add(patient, std::move(r.writes), now);
    }
}

void Poller::work_stage(PatientSource& reader, const std::set<std::string>& patients, PollSummary& sum, rules::EpochSeconds now) {
    in_flight_.clear();
    claimed_generation_.clear();
    WriteBack write_back(
        client_, store_, opt_.write,
        [&](const std::string& patient) {  // inside the Bundle's state transaction
            const auto it = in_flight_.find(patient);
            if (it == in_flight_.end()) return;
            close_patient(patient, it->second, sum);
            in_flight_.erase(it);
        },
        [&](std::size_t, bool committed) { kill_point(committed ? "bundle-committed" : "bundle-sent"); });

    auto settle = [&] {
        // Conflicts: re-read and decide again (a few rounds; then the next pass).
        for (int round = 0; round < 3; ++round) {
            auto stale = write_back.take_stale();
            if (stale.empty()) break;
            decide_again(reader, stale, sum, write_back, now);
        }
        for (auto& p : write_back.take_stale()) {
            in_flight_.erase(p);
            defer(p, "its DetectedIssues kept changing on the server while being written", sum);
        }
        for (auto& [p, why] : write_back.take_failed()) {
            in_flight_.erase(p);
            defer(p, why, sum);
        }
    };

    const std::vector<std::string> order(patients.begin(), patients.end());
    const std::size_t batch = std::max<std::size_t>(1, reader.batch());
    for (std::size_t i = 0; i < order.size(); i += batch) {
        std::vector<std::string> chunk(order.begin() + static_cast<std::ptrdiff_t>(i),
                                       order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), i + batch)));
        if (!opt_.dry_run) chunk = claim_patients(chunk, sum, now);
        if (batch > 1 && !chunk.empty()) reader.prepare(chunk, now);
        for (const auto& patient : chunk) {
            work_on(reader, patient, sum, write_back, now);
            settle();
        }
        if (opt_.progress) opt_.progress(std::min(order.size(), i + batch), patients.size());
    }
    if (!opt_.dry_run) {
        write_back.flush(now);
        settle();
        write_back.flush(now);
    }
    const auto& ws = write_back.stats();
    sum.write_batches = ws.bundles;
    sum.bundle_splits = ws.splits;
}

PollSummary Poller::run_once(rules::EpochSeconds now) {
    PollSummary sum;
    sum.worker = worker_;
    const auto before = client_.stats();
    client_.reset_fault_budget();
    in_flight_.clear();
    const std::int64_t run_id = opt_.dry_run ? 0 : store_.begin_run(server(), now);
    try {
        sum.lab_search = to_string(lab_code_search());

        // 1. The change feed queues the patients whose resources changed.
        std::set<std::string> named;
        feed_stage(sum, now, named);

        // 2. The work: queued patients (this pass's and any an earlier pass left) and those with an
        //    open alert (a finding can stop holding because time passes: a lab leaves its window).
        std::set<std::string> patients;
        if (opt_.dry_run) patients = named;  // a dry run queues nothing
        for (const auto& p : store_.pending_patients(server())) patients.insert(p.patient);
        sum.patients_queued = patients.size();
        // Patients with an open alert, when their recheck time has come (or is unknown, or was
        // computed under another rule catalog).
        const auto rechecks = store_.rechecks(server());
        std::set<std::string> not_due;
        due_by_recheck_.clear();
        for (const auto& a : store_.alerts(server())) {
            if (a.status == "cancelled" || a.status == "entered-in-error") continue;
            const auto r = rechecks.find(a.patient);
            if (recheck_due(r == rechecks.end() ? nullptr : &r->second, now)) {
                if (patients.insert(a.patient).second) due_by_recheck_.insert(a.patient);
            } else {
                not_due.insert(a.patient);
            }
        }
        for (const auto& p : not_due) sum.open_alerts_not_due += patients.count(p) ? 0 : 1;

        HistoryReader reader(client_, term_, catalog_,
                             {opt_.issue.identifier_system, opt_.issue.evidence_hash_extension, opt_.page_size, *lab_search_,
                              opt_.history_batch});
        work_stage(reader, patients, sum, now);
        sum.requests = client_.stats().requests - before.requests;
        sum.retries = client_.stats().retries - before.retries;
        kill_point("pass-done");
        if (!opt_.dry_run) store_.finish_run(run_id, now, sum.outcome(), sum.to_json());
        return sum;
    } catch (...) {
        sum.requests = client_.stats().requests - before.requests;
        sum.retries = client_.stats().retries - before.retries;
        if (!opt_.dry_run) {
            try {
                store_.finish_run(run_id, now, "failed", sum.to_json());
            } catch (...) {
            }
        }
        throw;
    }
}

}  // namespace calcalert::poll
