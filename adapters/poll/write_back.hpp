// The write-back stage: sends the planned DetectedIssue writes to the FHIR server in Bundles that fit
// the server, and records in the alert ledger what landed.
//
// - Bundle type `batch` (each entry on its own; the default) or `transaction` (all or nothing), and
//   the number of entries per Bundle, are options. A Bundle the server refuses as too large (HTTP
//   413, or a 4xx whose OperationOutcome says too many entries / too large) is split in halves and
//   sent again; the smaller size is kept for the rest of the pass.
// - Every Bundle is safe to send twice: creates are conditional on the identifier (ifNoneExist) and
//   updates are guarded by the version read (ifMatch). So a Bundle whose answer was lost is simply
//   sent again (FhirClient retries it), and an update that landed the first time comes back as a
//   version conflict (412/409): the patient is then "stale", and the caller re-reads the server
//   and decides again, rather than retrying blindly.
// - After each Bundle, one state transaction records the landed writes in the ledger and hands
//   every patient whose writes have all landed to `on_patient_done` (which removes it from the work
//   queue), so a pass killed between Bundles resumes with exactly the patients not yet done.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "adapters/poll/reconcile.hpp"
#include "adapters/state/state_store.hpp"
#include "fhir/client.hpp"

namespace calcalert::poll {

enum class BundleType { batch, transaction };
const char* to_string(BundleType t);

struct WriteBackOptions {
    BundleType bundle_type = BundleType::batch;
    std::size_t batch_size = 50;
};

struct WriteBackStats {
    std::size_t bundles = 0;
    std::size_t splits = 0;        // Bundles split because the server refused their size
    std::size_t conflicts = 0;     // writes refused on a version conflict (the patient is re-read)
    std::size_t entries_sent = 0;
    std::size_t effective_batch_size = 0;
};

class WriteBack {
public:
    // Inside the state transaction of a Bundle: a patient whose writes have all landed.
    using PatientDone = std::function<void(const std::string& patient)>;
    // After each Bundle's state transaction (a test kill point): (bundles so far, committed?).
    using BundleHook = std::function<void(std::size_t bundles, bool committed)>;

    WriteBack(fhir::FhirClient& client, state::StateStore& store, WriteBackOptions options, PatientDone on_patient_done,
              BundleHook hook = {});

    // Queues one patient's writes (all of them at once); sends full Bundles.
    void add(const std::string& patient, std::vector<PlannedWrite> writes, state::EpochSeconds now);
    // Sends what is queued.
    void flush(state::EpochSeconds now);

    // Patients one of whose writes met a version conflict since the last call: re-read and decide again.
    std::set<std::string> take_stale();
    // Patients one of whose writes the server refused (other than a conflict), with the reason:
    // they stay queued and are tried again by the next pass.
    std::map<std::string, std::string> take_failed();

    const WriteBackStats& stats() const { return stats_; }

private:
    struct Pending {
        std::string patient;
        PlannedWrite write;
    };
    void send(std::vector<Pending> entries, state::EpochSeconds now);
    void landed(const std::vector<Pending>& entries, const std::vector<std::pair<std::string, std::string>>& id_versions,
                const std::vector<bool>& ok, state::EpochSeconds now);

    fhir::FhirClient& client_;
    state::StateStore& store_;
    WriteBackOptions opt_;
    PatientDone on_patient_done_;
    BundleHook hook_;
    std::vector<Pending> pending_;
    std::map<std::string, std::size_t> remaining_;  // patient -> writes not yet landed
    std::set<std::string> stale_;
    std::map<std::string, std::string> failed_;
    WriteBackStats stats_;
};

// The Bundle for `writes`, of the given type.
std::string write_bundle(const std::vector<PlannedWrite>& writes, BundleType type);

// True when a refused Bundle reads as "too large for this server" (HTTP 413, or a 4xx whose text
// says so: too many, too large, exceeds, more than allowed, strict isolation).
bool refused_as_too_large(long status, const std::string& message);

}  // namespace calcalert::poll
