// Shared by the fuzz targets: the repository's real data files, a fixed clock, and a temporary
// folder that is removed at exit (scripts/fuzz also points TMPDIR into build-fuzz/ and removes it,
// for the runs that end in a crash).
#pragma once

#include <stdlib.h>  // mkdtemp

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "adapters/state/state_store.hpp"
#include "mappings/terminology.hpp"
#include "rules/catalog.hpp"

namespace fuzz {

inline const std::filesystem::path kRoot = CALCALERT_FUZZ_ROOT;
inline const std::filesystem::path kDataDir = kRoot / "mappings" / "data";
inline const std::filesystem::path kCatalogDir = kRoot / "rules" / "catalog";

// 2026-11-25T12:00:00Z, the fixtures' "now".
inline constexpr std::int64_t kNow = 1795608000;

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

inline std::string read_file(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) throw std::runtime_error(p.string() + ": cannot be read");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline void write_file(const std::filesystem::path& p, std::string_view text) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    if (!out) throw std::runtime_error(p.string() + ": cannot be written");
}

inline const calcalert::mappings::Terminology& terminology() {
    static const auto t = calcalert::mappings::Terminology::load(kDataDir);
    return t;
}

inline const calcalert::rules::RuleCatalog& catalog() {
    static const auto c = calcalert::rules::RuleCatalog::load(kCatalogDir, terminology().concepts());
    return c;
}

// A fresh folder under $TMPDIR (or /tmp), removed with everything in it when the object dies.
class TempDir {
public:
    explicit TempDir(const std::string& prefix) {
        std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
        if (!mkdtemp(pattern.data())) throw std::runtime_error(pattern + ": cannot create a temporary folder");
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

// "<file name>\n<content>": the first line of a loader target's input names the data file the rest
// replaces. Returns false when there is no first line.
inline bool split_named(std::string_view input, std::string_view& name, std::string_view& content) {
    const auto nl = input.find('\n');
    if (nl == std::string_view::npos) return false;
    name = input.substr(0, nl);
    content = input.substr(nl + 1);
    return true;
}

// A state store for one input: the process's one in-memory SQLite store, seen through an open
// transaction that with_scratch_state() always rolls back. Every input starts from the same empty
// state without opening a database per input (about 5 ms under the sanitizers). transaction() runs
// the work directly: it is already inside the outer transaction.
class ScratchStore : public calcalert::state::StateStore {
public:
    using EpochSeconds = calcalert::state::EpochSeconds;
    explicit ScratchStore(StateStore& db) : db_(db) {}
    void transaction(const std::function<void()>& work) override { work(); }
    std::optional<std::string> watermark(const std::string& server, const std::string& type) override {
        return db_.watermark(server, type);
    }
    void set_watermark(const std::string& server, const std::string& type, const std::string& value) override {
        db_.set_watermark(server, type, value);
    }
    bool seen_version(const std::string& server, const std::string& ref, const std::string& version) override {
        return db_.seen_version(server, ref, version);
    }
    void mark_seen(const std::string& server, const std::string& ref, const std::string& version,
                   EpochSeconds last_updated) override {
        db_.mark_seen(server, ref, version, last_updated);
    }
    void forget_seen_before(const std::string& server, EpochSeconds before) override { db_.forget_seen_before(server, before); }
    void enqueue_patient(const std::string& server, const std::string& patient, EpochSeconds now) override {
        db_.enqueue_patient(server, patient, now);
    }
    std::vector<calcalert::state::PendingPatient> pending_patients(const std::string& server) override {
        return db_.pending_patients(server);
    }
    void finish_patient(const std::string& server, const std::string& patient) override { db_.finish_patient(server, patient); }
    void defer_patient(const std::string& server, const std::string& patient, const std::string& error) override {
        db_.defer_patient(server, patient, error);
    }
    std::optional<calcalert::state::FeedCursor> feed_cursor(const std::string& server, const std::string& type) override {
        return db_.feed_cursor(server, type);
    }
    void set_feed_cursor(const std::string& server, const std::string& type,
                         const calcalert::state::FeedCursor& cursor) override {
        db_.set_feed_cursor(server, type, cursor);
    }
    void clear_feed_cursor(const std::string& server, const std::string& type) override { db_.clear_feed_cursor(server, type); }
    std::optional<calcalert::state::AlertRecord> alert(const std::string& server, const std::string& identifier) override {
        return db_.alert(server, identifier);
    }
    std::vector<calcalert::state::AlertRecord> alerts_for_patient(const std::string& server,
                                                                  const std::string& patient) override {
        return db_.alerts_for_patient(server, patient);
    }
    std::vector<calcalert::state::AlertRecord> alerts(const std::string& server) override { return db_.alerts(server); }
    void put_alert(const calcalert::state::AlertRecord& record) override { db_.put_alert(record); }
    std::int64_t begin_run(const std::string& server, EpochSeconds started_at) override {
        return db_.begin_run(server, started_at);
    }
    void finish_run(std::int64_t run_id, EpochSeconds finished_at, const std::string& outcome,
                    const std::string& summary_json) override {
        db_.finish_run(run_id, finished_at, outcome, summary_json);
    }
    std::vector<calcalert::state::RunRecord> runs(const std::string& server, std::size_t limit) override {
        return db_.runs(server, limit);
    }
    bool remember_jti(const std::string& issuer, const std::string& jti, EpochSeconds expires_at, EpochSeconds now) override {
        return db_.remember_jti(issuer, jti, expires_at, now);
    }
    void record_feedback(const calcalert::state::FeedbackRecord& feedback) override { db_.record_feedback(feedback); }
    std::vector<calcalert::state::FeedbackRecord> feedback(const std::string& patient, const std::string& rule_id) override {
        return db_.feedback(patient, rule_id);
    }
    void suppress(const std::string& patient, const std::string& rule_id, EpochSeconds until) override {
        db_.suppress(patient, rule_id, until);
    }
    std::optional<EpochSeconds> suppressed_until(const std::string& patient, const std::string& rule_id,
                                                 EpochSeconds now) override {
        return db_.suppressed_until(patient, rule_id, now);
    }

private:
    StateStore& db_;
};

// Runs work(store) on a ScratchStore; whatever it writes is rolled back afterwards.
template <typename Work>
void with_scratch_state(Work&& work) {
    static const auto db = calcalert::state::open_sqlite_store(":memory:");
    struct Rollback {};
    try {
        db->transaction([&] {
            ScratchStore store(*db);
            work(static_cast<calcalert::state::StateStore&>(store));
            throw Rollback{};
        });
    } catch (const Rollback&) {
    }
}

}  // namespace fuzz
