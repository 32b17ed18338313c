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

// Runs work(store) on the process's one in-memory SQLite store inside a transaction that is
// always rolled back: every input starts from the same empty state without opening a database
// per input (about 5 ms under the sanitizers). The work's own transactions are savepoints in it.
template <typename Work>
void with_scratch_state(Work&& work) {
    static const auto db = calcalert::state::open_sqlite_store(":memory:");
    struct Rollback {};
    try {
        db->transaction([&] {
            work(*db);
            throw Rollback{};
        });
    } catch (const Rollback&) {
    }
}

}  // namespace fuzz
