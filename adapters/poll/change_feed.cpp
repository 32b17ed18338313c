#include "adapters/poll/change_feed.hpp"

#include <map>

#include "adapters/poll/paging.hpp"
#include "adapters/poll/url.hpp"
#include "fhir/datetime.hpp"
#include "fhir/resource_reader.hpp"
#include "fhir/views.hpp"

namespace calcalert::poll {
namespace {

using Json = rapidjson::Value;

}  // namespace

std::optional<std::string> local_patient(const std::string& reference, const std::string& base_url) {
    const fhir::PatientIdentity id = fhir::patient_identity(reference, nullptr, fhir::normalize_base(base_url));
    // Another server's patient is named by its absolute URL, never "Patient/<id>".
    if (id.kind != fhir::PatientIdentity::Kind::patient || id.id.rfind("Patient/", 0) != 0) return std::nullopt;
    return id.id;
}

std::string counted_mark_key(const std::string& watermark_key) { return watermark_key + " counted"; }

FeedResult ChangeFeed::sync(const FeedOptions& o, state::EpochSeconds now, std::set<std::string>& named,
                            const std::function<void()>& on_page_committed) {
    const std::string& server = client_.base_url();
    const std::string key = o.watermark_key.empty() ? o.type : o.watermark_key;
    FeedResult result;

    std::string first = o.type + "?" + (o.filter.empty() ? "" : o.filter + "&") +
                        "_sort=_lastUpdated&_count=" + std::to_string(o.page_size);
    const auto watermark = store_.watermark(server, key);
    if (watermark) {
        const auto t = fhir::parse_datetime(*watermark);
        if (!t) throw state::StateError("watermark for " + key + " is not a date-time: '" + *watermark + "'");
        first += "&_lastUpdated=ge" + url_encode(fhir::format_datetime(*t - o.overlap.count()));
    }

    // The filter applies once every counting resource is known: from a feed read from its start with
    // it (no watermark yet), marked primed when its watermark is first set, or from a backfill's
    // hand-over (which marks it too).
    const std::string primed_key = counted_mark_key(key);
    const bool primed = o.counts && store_.watermark(server, primed_key).has_value();
    const bool filtering = o.counts && (!watermark || primed);

    state::FeedCursor cursor;
    std::string start = first;
    if (!o.dry_run) {
        if (auto saved = store_.feed_cursor(server, key)) {
            cursor = *saved;
            start = saved->next_url;
            result.resumed = true;
        }
    }

    std::set<std::string> seen_in_pass;   // "Type/id|version": duplicates across pages
    auto on_page = [&](const rapidjson::Document& page, const std::string& next) {
        ++result.pages;
        std::set<std::string> patients;
        std::vector<std::pair<std::string, std::string>> versions;  // (reference, version)
        std::vector<state::EpochSeconds> version_times;
        std::map<std::string, bool> counted;  // reference -> counts, as this page changes it
        if (const Json* entries = fhir::member(page, "entry"); entries && entries->IsArray()) {
            for (const auto& e : entries->GetArray()) {
                const Json* res = fhir::member(e, "resource");
                if (!res || !res->IsObject() || fhir::string_or_empty(*res, "resourceType") != o.type) continue;  // outcomes, includes
                ++result.resources_read;
                const std::string ref = o.type + "/" + fhir::string_or_empty(*res, "id");
                std::string version, updated;
                if (const Json* meta = fhir::member(*res, "meta"); meta && meta->IsObject()) {
                    version = fhir::string_or_empty(*meta, "versionId");
                    updated = fhir::string_or_empty(*meta, "lastUpdated");
                }
                const auto t = fhir::parse_datetime(updated);
                if (t && (cursor.max_last_updated.empty() || *t > cursor.max_last_updated_at)) {
                    cursor.max_last_updated = updated;
                    cursor.max_last_updated_at = *t;
                }
                // A server without versionId: the lastUpdated instant stands for the version.
                if (version.empty()) version = updated.empty() ? std::string("?") : "@" + updated;
                if (!seen_in_pass.insert(ref + "|" + version).second ||
                    (!o.dry_run && store_.seen_version(server, ref, version))) {
                    ++result.resources_skipped;
                    continue;
                }
                versions.emplace_back(ref, version);
                version_times.push_back(t.value_or(now));
                if (o.counts) {
                    const bool counts = o.counts(*res);
                    const auto known = counted.find(ref);
                    const bool before = known != counted.end() ? known->second : store_.counted_resource(server, ref);
                    if (counts != before) counted[ref] = counts;
                    if (filtering && !counts && !before) {
                        ++result.resources_not_counted;
                        continue;
                    }
                }
                if (o.type == "Patient") {
                    if (auto p = local_patient(ref, server)) patients.insert(*p);  // the Patient itself
                } else if (const Json* subj = fhir::member(*res, "subject"); subj && subj->IsObject()) {
                    if (auto p = local_patient(fhir::string_or_empty(*subj, "reference"), server)) patients.insert(*p);
                }
            }
        }
        named.insert(patients.begin(), patients.end());
        if (!o.dry_run) {
            store_.transaction([&] {
                for (const auto& p : patients) store_.enqueue_patient(server, p, now);
                for (std::size_t i = 0; i < versions.size(); ++i)
                    store_.mark_seen(server, versions[i].first, versions[i].second, version_times[i]);
                for (const auto& [ref, counts] : counted) store_.set_counted_resource(server, ref, counts);
                if (!next.empty()) {
                    cursor.next_url = next;
                    store_.set_feed_cursor(server, key, cursor);
                }
            });
        }
        if (on_page_committed) on_page_committed();
    };

    try {
        search_pages(client_, start, on_page, result.notes);
    } catch (const fhir::FhirError& e) {
        // A saved next link the server no longer honours (paging cursors expire): read the feed
        // again from the watermark; the versions already processed are skipped.
        const long s = e.status();
        if (!result.resumed || result.pages > 0 || s < 400 || s >= 500 || s == 408 || s == 429) throw;
        result.notes.push_back(o.type + " feed: the saved page link was refused (HTTP " + std::to_string(s) +
                               "); the feed is read again from the watermark");
        result.resumed = false;
        cursor = {};
        search_pages(client_, first, on_page, result.notes);
    }

    if (!o.dry_run) {
        store_.transaction([&] {
            if (!cursor.max_last_updated.empty()) {
                // Never backwards: a resumed feed's cursor started from the saved maximum.
                const auto wm = store_.watermark(server, key);
                const auto wm_t = wm ? fhir::parse_datetime(*wm) : std::nullopt;
                if (!wm_t || cursor.max_last_updated_at > *wm_t) store_.set_watermark(server, key, cursor.max_last_updated);
                if (filtering && !primed) store_.set_watermark(server, primed_key, cursor.max_last_updated);
                store_.forget_seen_before(server, cursor.max_last_updated_at - o.overlap.count() - 86400);
            }
            store_.clear_feed_cursor(server, key);
        });
    }
    return result;
}

}  // namespace calcalert::poll
