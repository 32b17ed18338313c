// The poller's change feed: which patients have new or changed resources since the last pass.
// For one resource type it searches `?<filter>&_sort=_lastUpdated&_lastUpdated=ge<watermark −
// overlap>` and follows link[next]. Every page is checkpointed as it is read, in one state
// transaction: the patients it names are queued for evaluation, its resource versions are marked
// processed, and the cursor (the next link and the largest meta.lastUpdated so far) is saved. A pass
// killed mid-feed resumes from the cursor; the watermark moves only when the whole feed is read
// (and then only to the largest meta.lastUpdated the server itself returned), so no change is lost.
//
// Servers differ and the feed copes: duplicate entries across pages and versions already processed
// are skipped, out-of-order meta.lastUpdated (or a server that ignores _sort) cannot move the
// watermark backwards or past an unread change, a next link that loops ends the feed with a note,
// and subjects written as absolute URLs on this server's base count as the local patient (an
// absolute URL on another server's base does not).
//
// A feed with a `counts` filter (Conditions) still reads every resource, but queues a patient only
// for a version the rules read, or for the first version that no longer counts after one that did.
#pragma once

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "adapters/state/state_store.hpp"
#include "fhir/client.hpp"

namespace calcalert::poll {

struct FeedResult {
    std::size_t pages = 0;
    std::size_t resources_read = 0;
    std::size_t resources_skipped = 0;   // already processed (same id and versionId), or repeated
    std::size_t resources_not_counted = 0;  // new versions the rules do not read: their patients not queued
    bool resumed = false;                // continued from a saved cursor
    std::vector<std::string> notes;      // what the server did oddly (looping next links ...)
};

struct FeedOptions {
    std::string type;                    // Observation, Condition, Procedure, Patient (which names itself)
    std::string filter;                  // e.g. "code=http://loinc.org|17861-6,..." ("" = every resource)
    std::string watermark_key;           // the key of this feed's watermark and cursor (default: type)
    std::size_t page_size = 200;
    std::chrono::seconds overlap{300};
    bool dry_run = false;                // read, queue in memory, write no state
    // A feed the server may not support (a search it refuses with 400, 403 or 404): the pass goes on
    // without it, with a note.
    bool optional = false;
    // The resources the rules read (the Condition feed: a code that maps to a concept). When set, a new
    // version that does not count queues its patient only if the version before it counted (the
    // store remembers which did), and only once the feed is primed: read from its start with this
    // filter, or primed by a Bulk backfill's hand-over, so that every counting resource is known. A
    // feed whose watermark was set otherwise (a state from before the filter) queues every patient.
    std::function<bool(const rapidjson::Value& resource)> counts;
};

// Reference of the patient a resource is about, when it is one on this server: "Patient/x" for
// "Patient/x", "<base>/Patient/x" and a versioned form; nullopt for another server's URL, a
// contained or urn: reference, or a non-Patient subject.
std::optional<std::string> local_patient(const std::string& reference, const std::string& base_url);

// The key under which a filtered feed records that it is primed (a watermark entry). A Bulk
// backfill's hand-over sets it too, with the counting resources of its export.
std::string counted_mark_key(const std::string& watermark_key);

class ChangeFeed {
public:
    ChangeFeed(fhir::FhirClient& client, state::StateStore& store) : client_(client), store_(store) {}

    // Reads the feed to its end; every patient it names is added to `patients` too (in a dry run,
    // that is the only place they go). `on_page_committed` runs after each page's checkpoint (a
    // test kill point).
    FeedResult sync(const FeedOptions& options, state::EpochSeconds now, std::set<std::string>& patients,
                    const std::function<void()>& on_page_committed = {});

private:
    fhir::FhirClient& client_;
    state::StateStore& store_;
};

}  // namespace calcalert::poll
