#include "adapters/state/batched_replay.hpp"

#include <algorithm>
#include <exception>
#include <iterator>
#include <stdexcept>
#include <utility>

namespace calcalert::state {

BatchedReplayStore::BatchedReplayStore(ReplayStore& reads, ReplayStore& writer, BatchedReplayOptions options,
                                       std::function<void(const JtiRecord&)> on_late_replay,
                                       std::function<void(const std::string&)> on_error)
    : reads_(reads), writer_(writer), options_(options), on_late_replay_(std::move(on_late_replay)),
      on_error_(std::move(on_error)) {
    if (options_.flush_interval.count() <= 0 || options_.max_batch == 0 || options_.max_pending == 0)
        throw std::invalid_argument("BatchedReplayStore: flush_interval, max_batch and max_pending must be positive");
    thread_ = std::thread([this] { writer_loop(); });
}

BatchedReplayStore::~BatchedReplayStore() { stop(); }

std::string BatchedReplayStore::key(const std::string& issuer, const std::string& jti) { return jti_key(issuer, jti); }

BatchedReplayStore::Shard& BatchedReplayStore::shard_of(const std::string& key) {
    return shards_[std::hash<std::string>{}(key) % kShards];
}

bool BatchedReplayStore::alive_in_memory(const std::string& key, EpochSeconds now) {
    Shard& s = shard_of(key);
    std::lock_guard lock(s.mutex);
    const auto it = s.expires.find(key);
    return it != s.expires.end() && it->second >= now;
}

bool BatchedReplayStore::remember_jti(const std::string& issuer, const std::string& jti, EpochSeconds expires_at,
                                      EpochSeconds now) {
    const std::string k = key(issuer, jti);
    Shard& s = shard_of(k);
    for (;;) {
        std::uint64_t written = 0;  // s.written when the memory was looked at
        {
            std::lock_guard lock(s.mutex);
            if (const auto it = s.expires.find(k); it != s.expires.end() && it->second >= now) return false;
            written = s.written;
        }
        if (reads_.jti_recorded(issuer, jti, now)) return false;
        bool writer_running = false;
        {
            std::lock_guard lock(pending_mutex_);
            if (pending_.size() >= options_.max_pending)
                throw StateError("replay records are not being written (" + std::to_string(pending_.size()) +
                                 " wait): new tokens are refused until the database takes them");
            writer_running = !stopping_;
        }
        if (!writer_running) return writer_.remember_jti(issuer, jti, expires_at, now);  // stopped: at once
        {
            // Two calls with the same token at once: both missed above, one takes it here.
            std::lock_guard lock(s.mutex);
            // Records of this shard were written (and forgotten) since the look: the token may be
            // one of them, accepted by another call after this one looked. Look again.
            if (s.written != written) continue;
            auto [it, inserted] = s.expires.try_emplace(k, expires_at);
            if (!inserted) {
                if (it->second >= now) return false;
                it->second = expires_at;  // an expired record of the same jti, taken over
            }
        }
        break;
    }
    bool wake = false;
    bool stopped = false;
    {
        std::lock_guard lock(pending_mutex_);
        pending_.push_back(JtiRecord{issuer, jti, expires_at});
        latest_now_ = std::max(latest_now_, now);
        wake = pending_.size() >= options_.max_batch;
        stopped = stopping_;  // stop() came in meanwhile: nobody else writes it
    }
    if (stopped) flush();
    else if (wake) wake_.notify_one();
    return true;
}

bool BatchedReplayStore::jti_recorded(const std::string& issuer, const std::string& jti, EpochSeconds now) {
    return alive_in_memory(key(issuer, jti), now) || reads_.jti_recorded(issuer, jti, now);
}

std::vector<std::size_t> BatchedReplayStore::remember_jtis(const std::vector<JtiRecord>& records, EpochSeconds now) {
    std::vector<std::size_t> replays;
    std::vector<JtiRecord> fresh;
    std::vector<std::size_t> index;  // fresh[i] is records[index[i]]
    for (std::size_t i = 0; i < records.size(); ++i) {
        if (alive_in_memory(key(records[i].issuer, records[i].jti), now)) {
            replays.push_back(i);
        } else {
            fresh.push_back(records[i]);
            index.push_back(i);
        }
    }
    std::vector<std::size_t> written_replays;
    {
        std::lock_guard lock(write_mutex_);
        written_replays = writer_.remember_jtis(fresh, now);
    }
    for (const std::size_t i : written_replays) replays.push_back(index[i]);
    std::sort(replays.begin(), replays.end());
    return replays;
}

// Once written, a record is the database's to answer for.
void BatchedReplayStore::forget_written(const std::vector<JtiRecord>& batch) {
    for (const auto& r : batch) {
        const std::string k = key(r.issuer, r.jti);
        Shard& s = shard_of(k);
        std::lock_guard lock(s.mutex);
        // Only the record this batch wrote: a later one of the same jti (after it expired) stays.
        if (auto it = s.expires.find(k); it != s.expires.end() && it->second == r.expires_at) {
            s.expires.erase(it);
            ++s.written;
        }
    }
}

bool BatchedReplayStore::write(std::vector<JtiRecord> batch, EpochSeconds now) {
    if (batch.empty()) return true;
    std::vector<std::size_t> replays;
    try {
        replays = writer_.remember_jtis(batch, now);
    } catch (const std::exception& e) {
        bool first = false;
        {
            std::lock_guard lock(pending_mutex_);
            // Back in front, in the order they were accepted; the memory still holds them.
            pending_.insert(pending_.begin(), std::make_move_iterator(batch.begin()), std::make_move_iterator(batch.end()));
            first = !failing_;
            failing_ = true;
        }
        if (first && on_error_) on_error_(std::string("replay records not written (kept, tried again): ") + e.what());
        return false;
    }
    bool recovered = false;
    {
        std::lock_guard lock(pending_mutex_);
        recovered = failing_;
        failing_ = false;
    }
    if (recovered && on_error_) on_error_("replay records written again");
    for (const std::size_t i : replays)
        if (on_late_replay_) on_late_replay_(batch[i]);
    forget_written(batch);
    return true;
}

bool BatchedReplayStore::flush() {
    std::lock_guard write_lock(write_mutex_);
    std::vector<JtiRecord> batch;
    EpochSeconds now = 0;
    {
        std::lock_guard lock(pending_mutex_);
        batch.swap(pending_);
        now = latest_now_;
    }
    return write(std::move(batch), now);
}

void BatchedReplayStore::writer_loop() {
    std::unique_lock lock(pending_mutex_);
    while (!stopping_) {
        wake_.wait_for(lock, options_.flush_interval,
                       [this] { return stopping_ || pending_.size() >= options_.max_batch; });
        if (stopping_) break;
        const bool retrying = failing_;
        lock.unlock();
        flush();
        // After a failure, wait a whole interval before trying again (no spin on a full batch).
        if (retrying) std::this_thread::sleep_for(options_.flush_interval);
        lock.lock();
    }
}

void BatchedReplayStore::stop() {
    {
        std::lock_guard lock(pending_mutex_);
        if (stopping_ && !thread_.joinable()) return;
        stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
    flush();
}

std::size_t BatchedReplayStore::pending() const {
    std::lock_guard lock(pending_mutex_);
    return pending_.size();
}

std::size_t BatchedReplayStore::held() const {
    std::size_t n = 0;
    for (auto& s : shards_) {
        std::lock_guard lock(s.mutex);
        n += s.expires.size();
    }
    return n;
}

}  // namespace calcalert::state
