// Replay protection off the call's path to the disk: a ReplayStore that answers from memory and from
// reads of the database, and writes what it accepted in batches, on a thread of its own, through
// a connection of its own.
//
// remember_jti(issuer, jti):
//   1. a jti this process accepted and has not yet written is a replay, found in memory;
//   2. otherwise the database is read (jti_recorded): a jti any process wrote is a replay;
//   3. otherwise it is accepted, held in memory, and written with the next batch.
// The batch is written every flush_interval (sooner when max_batch records wait) in one transaction
// (ReplayStore::remember_jtis). A record the database already held then means that another process
// accepted the same token within the last flush interval too: on_late_replay reports it (the call has
// been answered; the window is one flush interval). A batch that cannot be written is kept and
// written with the next one (on_error says why); when max_pending records wait unwritten, new tokens
// are refused (a StateError: the caller answers 401) until the database takes them again.
//
// Durability: a record accepted within the last flush interval before the process dies is lost
// (the same token presented again after that is accepted once more); stop() and the destructor
// write what is held.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "adapters/state/state_store.hpp"

namespace calcalert::state {

struct BatchedReplayOptions {
    std::chrono::milliseconds flush_interval{50};
    std::size_t max_batch = 1000;       // records that make the writer start before the interval ends
    std::size_t max_pending = 1000000;  // records held unwritten, at most
};

class BatchedReplayStore final : public ReplayStore {
public:
    // `reads`: the database the call reads (the caller's store); `writer`: where batches are written
    // (a store on its own connection to the same database, or `reads` itself). Both outlive this.
    BatchedReplayStore(ReplayStore& reads, ReplayStore& writer, BatchedReplayOptions options,
                       std::function<void(const JtiRecord&)> on_late_replay, std::function<void(const std::string&)> on_error);
    ~BatchedReplayStore() override;
    BatchedReplayStore(const BatchedReplayStore&) = delete;
    BatchedReplayStore& operator=(const BatchedReplayStore&) = delete;

    bool remember_jti(const std::string& issuer, const std::string& jti, EpochSeconds expires_at, EpochSeconds now) override;
    // In memory, then the database.
    bool jti_recorded(const std::string& issuer, const std::string& jti, EpochSeconds now) override;
    // Written at once through the writer (after the memory is checked).
    std::vector<std::size_t> remember_jtis(const std::vector<JtiRecord>& records, EpochSeconds now) override;

    // Writes what is held now, on the caller's thread (false when the write failed: kept).
    bool flush();
    // Writes what is held and stops the writer thread; remember_jti still works, writing at once.
    void stop();

    std::size_t pending() const;  // records accepted and not yet written
    std::size_t held() const;     // records in memory

private:
    struct Shard {
        mutable std::mutex mutex;
        std::unordered_map<std::string, EpochSeconds> expires;  // key(issuer, jti) -> expires_at
        std::uint64_t written = 0;  // records forgotten once written, so far
    };
    static constexpr std::size_t kShards = 16;
    static std::string key(const std::string& issuer, const std::string& jti);
    Shard& shard_of(const std::string& key);
    bool alive_in_memory(const std::string& key, EpochSeconds now);
    void writer_loop();
    // Writes `batch` (taken from pending_); on failure puts it back in front. The writer thread and
    // flush() take turns (write_mutex_).
    bool write(std::vector<JtiRecord> batch, EpochSeconds now);
    void forget_written(const std::vector<JtiRecord>& batch);

    ReplayStore& reads_;
    ReplayStore& writer_;
    BatchedReplayOptions options_;
    std::function<void(const JtiRecord&)> on_late_replay_;
    std::function<void(const std::string&)> on_error_;
    Shard shards_[kShards];

    mutable std::mutex pending_mutex_;
    std::condition_variable wake_;
    std::vector<JtiRecord> pending_;
    EpochSeconds latest_now_ = 0;  // the latest `now` a caller gave: the time batches are written at
    bool stopping_ = false;
    bool failing_ = false;  // the last write failed (on_error is said once a failure streak)

    std::mutex write_mutex_;
    std::thread thread_;
};

}  // namespace calcalert::state
