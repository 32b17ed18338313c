// Everything calcalert remembers between runs and across replicas, in role interfaces: poll
// watermarks and seen resource versions, the work queue and its leases, the alert ledger, run
// history, CDS Hooks replay protection (jti), the cards issued to each CDS client, feedback and
// overrides. On SQLite (one machine) or PostgreSQL (shared by several pollers and serve replicas),
// opened by URL (open_state_store); there is no in-process cache that must be the only copy.
// Implementations are safe to call from several threads (calls are serialized).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace calcalert::state {

using EpochSeconds = std::int64_t;

class StateError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// One alert as written to a FHIR server: identity (server, identifier), what was written, and the
// server's id and version of the DetectedIssue.
struct AlertRecord {
    std::string server;         // FHIR base URL
    std::string identifier;     // DetectedIssue.identifier value (alert_identifier(patient, rule))
    std::string patient;        // "Patient/123"
    std::string rule_id;
    std::string evidence_hash;  // Finding::evidence_hash of what was written
    std::string status;         // final | amended | cancelled
    std::string server_id;      // DetectedIssue.id on the server ("" until known)
    std::string server_version; // meta.versionId on the server ("" until known)
    EpochSeconds updated_at = 0;
};

// A patient whose evaluation a pass has to do (or redo): queued by the change feed as its pages
// are read, removed once the patient's writes have all landed. A patient that could not be
// finished (a resource that cannot be read, a server error) stays queued with the reason and is
// retried by the next pass.
struct PendingPatient {
    std::string patient;      // "Patient/123"
    int attempts = 0;         // passes that tried and could not finish it
    std::string last_error;   // why the last attempt did not finish ("" before the first)
    EpochSeconds queued_at = 0;
    std::int64_t generation = 0;  // counted up each time it is queued again while queued
};

// Where an unfinished change-feed read stands: the next page to read and the largest
// meta.lastUpdated seen so far (text as the server wrote it, and as epoch seconds).
struct FeedCursor {
    std::string next_url;
    std::string max_last_updated;       // "" when no resource had one yet
    EpochSeconds max_last_updated_at = 0;
};

// When a patient with an open alert must be evaluated again although none of its data changed (a
// result leaves its window, ...: rules::next_time_change), and the rule catalog that was computed
// with: a recheck computed under another catalog is due at once.
struct Recheck {
    EpochSeconds at = 0;  // kNoRecheck: nothing changes with time alone
    std::string basis;    // the catalog's fingerprint
};
inline constexpr EpochSeconds kNoRecheck = std::numeric_limits<EpochSeconds>::max();

struct RunRecord {
    std::int64_t id = 0;
    std::string server;
    EpochSeconds started_at = 0;
    EpochSeconds finished_at = 0;  // 0 while running (or if the run died)
    std::string outcome;           // "running", "ok", "failed"
    std::string summary_json;      // the run's summary
};

// One CDS Hooks card as issued to one client: the JWT `iss` of the caller that received it, the
// service that returned it, and exactly what it was about. Feedback is accepted only for a card
// issued to the same issuer by the same service; an override binds to this record.
struct IssuedCard {
    std::string issuer;         // the caller's verified JWT iss ("urn:calcalert:insecure-dev" without JWTs)
    std::string service_id;     // the CDS service that returned the card
    std::string card_uuid;      // card.uuid (the alert identifier, also the DetectedIssue identifier)
    std::string patient;        // "Patient/123"
    std::string rule_id;
    std::string order;          // order rules: "MedicationRequest/1"; "" for patient rules
    std::string severity;       // the rule's severity when issued: high | moderate | low
    std::string evidence_hash;  // Finding::evidence_hash of the card as issued
    EpochSeconds issued_at = 0; // when this evidence was first issued to the issuer
};

// An override in force: hides the card of (issuer, patient, rule, order) while the finding's
// evidence hash is still `evidence_hash` and until `until`.
struct CardOverride {
    std::string issuer;
    std::string patient;
    std::string rule_id;
    std::string order;          // "" for patient rules
    std::string card_uuid;
    std::string evidence_hash;  // the evidence the clinician overrode
    EpochSeconds until = 0;
};

struct FeedbackRecord {
    std::string issuer;      // the caller's verified JWT iss
    std::string service_id;
    std::string card_uuid;
    std::string patient;     // "Patient/123", from the issued card
    std::string rule_id;     // from the issued card
    std::string order;       // from the issued card ("" for patient rules)
    std::string evidence_hash;    // of the issued card the feedback is about
    std::string outcome;     // accepted | overridden
    std::string override_reason;  // code of the override reason, "" if none
    EpochSeconds outcome_at = 0;
    EpochSeconds received_at = 0;
};

// The state is split by role, so that each part of the program depends only on what it uses; one
// store (StateStore) implements them all on one database.

// Runs work atomically. Every role below that is implemented on the same database shares it.
class Transactional {
public:
    virtual ~Transactional() = default;
    // Runs `work` in one database transaction: all of its writes land, or none (on an exception,
    // which is rethrown). A call inside another is a savepoint: its exception undoes only its own
    // writes, and they land only when the outer transaction commits.
    virtual void transaction(const std::function<void()>& work) = 0;
};

// poll: where each change feed stands, and the resource versions already processed.
class FeedCheckpoints {
public:
    virtual ~FeedCheckpoints() = default;
    // Watermarks per (server, resource type), as the server's own lastUpdated text.
    virtual std::optional<std::string> watermark(const std::string& server, const std::string& type) = 0;
    virtual void set_watermark(const std::string& server, const std::string& type, const std::string& value) = 0;
    // Resource versions already processed, to dedupe the overlap window.
    virtual bool seen_version(const std::string& server, const std::string& reference, const std::string& version) = 0;
    virtual void mark_seen(const std::string& server, const std::string& reference, const std::string& version,
                           EpochSeconds last_updated) = 0;
    // Forgets versions last updated before `before` (outside any future overlap window).
    virtual void forget_seen_before(const std::string& server, EpochSeconds before) = 0;
    // Resources whose latest version read counts for the rules (a Condition the feed's filter kept):
    // the next version of one that counts queues its patient even when it no longer counts itself.
    virtual bool counted_resource(const std::string& server, const std::string& reference) = 0;
    virtual void set_counted_resource(const std::string& server, const std::string& reference, bool counts) = 0;
    // An unfinished feed read (a killed pass resumes from it).
    virtual std::optional<FeedCursor> feed_cursor(const std::string& server, const std::string& type) = 0;
    virtual void set_feed_cursor(const std::string& server, const std::string& type, const FeedCursor& cursor) = 0;
    virtual void clear_feed_cursor(const std::string& server, const std::string& type) = 0;
};

// poll: the patients a pass has to evaluate, checkpointed as they complete, and when patients with an
// open alert are due again.
class WorkQueue {
public:
    virtual ~WorkQueue() = default;
    // Queues the patient; one already queued gets a new generation (its work must be done again).
    virtual void enqueue_patient(const std::string& server, const std::string& patient, EpochSeconds now) = 0;
    virtual std::vector<PendingPatient> pending_patients(const std::string& server) = 0;  // by patient
    virtual std::optional<PendingPatient> pending_patient(const std::string& server, const std::string& patient) = 0;
    // Takes the patient off the queue if it is still at `generation` (the one read before the work):
    // one queued again meanwhile stays queued.
    virtual void finish_patient(const std::string& server, const std::string& patient, std::int64_t generation) = 0;
    // Keeps the patient queued, one attempt more, with the reason.
    virtual void defer_patient(const std::string& server, const std::string& patient, const std::string& error) = 0;
    // Insert or replace by (server, patient).
    virtual void set_recheck(const std::string& server, const std::string& patient, const Recheck& recheck) = 0;
    virtual std::map<std::string, Recheck> rechecks(const std::string& server) = 0;  // by patient
    virtual std::optional<Recheck> recheck(const std::string& server, const std::string& patient) = 0;
};

// poll: leases with expiry, so that pollers sharing a database never work on the same thing at once
// ("feed" for reading the change feed, "Patient/123" for a patient). A poller that dies loses its
// leases when they expire. Times are wall-clock seconds, whatever time a pass evaluates at.
class WorkLeases {
public:
    virtual ~WorkLeases() = default;
    // Takes (server, subject) for `owner` until `until` when nobody holds it, its lease has expired
    // (expires_at <= now), or `owner` holds it already (then the lease is extended). Returns whether
    // `owner` holds it now.
    virtual bool claim(const std::string& server, const std::string& subject, const std::string& owner,
                       EpochSeconds until, EpochSeconds now) = 0;
    // Gives the lease up, if `owner` holds it.
    virtual void release(const std::string& server, const std::string& subject, const std::string& owner) = 0;
    // Who holds the subject's lease at `now` ("" when nobody).
    virtual std::string lease_holder(const std::string& server, const std::string& subject, EpochSeconds now) = 0;
};

// poll: the shards of a whole-population backfill (one export job, its patients split among N
// workers) that have finished.
class BackfillShards {
public:
    virtual ~BackfillShards() = default;
    // Records that `shard` of `shards` finished the export job `job` (its status URL); again is harmless.
    virtual void finish_shard(const std::string& server, const std::string& job, int shard, int shards,
                              EpochSeconds at) = 0;
    // The shards of the job that have finished.
    virtual std::set<int> finished_shards(const std::string& server, const std::string& job) = 0;
};

// The alert ledger: what calcalert wrote to each server.
class AlertLedger {
public:
    virtual ~AlertLedger() = default;
    virtual std::optional<AlertRecord> alert(const std::string& server, const std::string& identifier) = 0;
    virtual std::vector<AlertRecord> alerts_for_patient(const std::string& server, const std::string& patient) = 0;
    virtual std::vector<AlertRecord> alerts(const std::string& server) = 0;
    virtual void put_alert(const AlertRecord& record) = 0;  // insert or replace by (server, identifier)
};

class RunHistory {
public:
    virtual ~RunHistory() = default;
    virtual std::int64_t begin_run(const std::string& server, EpochSeconds started_at) = 0;
    virtual void finish_run(std::int64_t run_id, EpochSeconds finished_at, const std::string& outcome,
                            const std::string& summary_json) = 0;
    virtual std::vector<RunRecord> runs(const std::string& server, std::size_t limit) = 0;  // newest first
};

// A JWT's identity for replay protection, recorded until it expires.
struct JtiRecord {
    std::string issuer;
    std::string jti;
    EpochSeconds expires_at = 0;
};
// One string per (issuer, jti), for sets and maps: the issuer's length first, so that no two pairs
// share a key whatever their bytes.
inline std::string jti_key(const std::string& issuer, const std::string& jti) {
    return std::to_string(issuer.size()) + ":" + issuer + jti;
}

// CDS Hooks: replay protection, shared by every serve process on the database. A record is alive
// while expires_at >= now.
class ReplayStore {
public:
    virtual ~ReplayStore() = default;
    // Records (issuer, jti) until `expires_at`. Returns false when it was already recorded and has
    // not expired (a replay). Expired records are purged as a side effect.
    virtual bool remember_jti(const std::string& issuer, const std::string& jti, EpochSeconds expires_at,
                              EpochSeconds now) = 0;
    // Whether (issuer, jti) is recorded and alive at `now`: a read, nothing is recorded.
    virtual bool jti_recorded(const std::string& issuer, const std::string& jti, EpochSeconds now) = 0;
    // remember_jti for every record, in one transaction: the indexes (ascending) of the records that
    // were already recorded and alive (replays), which change nothing. Records of one (issuer, jti)
    // twice in `records` are the caller's mistake: the second is reported as a replay.
    virtual std::vector<std::size_t> remember_jtis(const std::vector<JtiRecord>& records, EpochSeconds now) = 0;
};

// CDS Hooks: issued cards, feedback and overrides.
class CardFeedback {
public:
    virtual ~CardFeedback() = default;
    // Insert or replace by (issuer, service_id, card_uuid).
    virtual void put_issued_card(const IssuedCard& card) = 0;
    virtual std::optional<IssuedCard> issued_card(const std::string& issuer, const std::string& service_id,
                                                  const std::string& card_uuid) = 0;
    virtual std::vector<IssuedCard> issued_cards_for_patient(const std::string& issuer, const std::string& service_id,
                                                             const std::string& patient) = 0;
    virtual void record_feedback(const FeedbackRecord& feedback) = 0;
    virtual std::vector<FeedbackRecord> feedback(const std::string& patient, const std::string& rule_id) = 0;  // oldest first
    // Insert or replace by (issuer, patient, rule_id, order): the latest override of a card wins.
    virtual void put_override(const CardOverride& override_record) = 0;
    // The issuer's overrides for the patient whose period has not ended at `now` (until > now). Whether
    // one still hides a card depends on the evidence hash, which the caller compares.
    virtual std::vector<CardOverride> overrides_in_force(const std::string& issuer, const std::string& patient,
                                                         EpochSeconds now) = 0;
};

// Every role on one database.
class StateStore : public Transactional,
                   public FeedCheckpoints,
                   public WorkQueue,
                   public WorkLeases,
                   public BackfillShards,
                   public AlertLedger,
                   public RunHistory,
                   public ReplayStore,
                   public CardFeedback {
public:
    // "sqlite" or "postgresql".
    virtual std::string backend() const = 0;
    // Where the state is, for messages (a PostgreSQL URL without its password).
    virtual std::string location() const = 0;
};

// Opens the state at `url`, applying the schema migrations it lacks (state/migrations/*.sql):
//   /path/to/state.sqlite, sqlite:///path/to/state.sqlite, :memory:   an SQLite file (created when
//       missing; ":memory:" a private in-memory store)
//   postgresql://user@host:port/database?sslmode=...&password_file=/run/secrets/pg-password
//       (also postgres://) a PostgreSQL database that several pollers and serve processes may share;
//       password_file names a file holding the password (one line), else libpq's own ways apply
//       ($PGPASSWORD, ~/.pgpass); every other parameter goes to libpq unchanged.
// Throws StateError naming the location (never a password) when it cannot be opened, is not
// calcalert's, or was written by a newer program.
std::unique_ptr<StateStore> open_state_store(const std::string& url);

// An SQLite file (open_state_store of a path).
std::unique_ptr<StateStore> open_sqlite_store(const std::string& path);

// Where poll and serve keep their state when no file is given: $CALCALERT_STATE, else
// $XDG_STATE_HOME/calcalert/state.sqlite, else ~/.local/state/calcalert/state.sqlite (the directory
// is created). Never the current directory, where a scheduler's working directory would scatter
// state files. StateError when none of these is usable.
std::string default_state_path();

}  // namespace calcalert::state
