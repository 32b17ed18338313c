#include <chrono>
#include <cstdlib>

#include "adapters/cli/commands.hpp"
#include "fhir/datetime.hpp"
#include "mappings/data_root.hpp"

namespace calcalert::cli {

namespace fs = std::filesystem;

std::filesystem::path data_root() { return mappings::data_root(); }

Engine load_engine(const Options& opts) {
    const fs::path root = data_root();
    const fs::path term_dir = opts.value("terminology").value_or((root / "mappings" / "data").string());
    const fs::path cat_dir = opts.value("catalog").value_or((root / "rules" / "catalog").string());
    try {
        auto term = mappings::Terminology::load(term_dir);
        auto cat = rules::RuleCatalog::load(cat_dir, term.concepts());
        if (auto zone = opts.value("time-zone")) {  // replaces the catalog's display.timeZone
            try {
                cat.set_time_zone(rules::TimeZone::load(*zone));
            } catch (const rules::TimeZoneError& e) {
                throw UsageError(std::string("--time-zone: ") + e.what());
            }
        }
        return Engine{std::move(term), std::move(cat)};
    } catch (const ConfigError&) {
        throw;
    } catch (const UsageError&) {
        throw;
    } catch (const std::exception& e) {
        throw ConfigError(e.what());
    }
}

mappings::IssueOptions issue_options(const Options& opts) {
    mappings::IssueOptions o;
    o.author_display = std::string("calcalert ") + CALCALERT_VERSION;
    if (auto s = opts.value("identifier-system")) o.identifier_system = *s;
    return o;
}

rules::EpochSeconds now_option(const Options& opts) {
    if (auto n = opts.value("now")) {
        auto t = fhir::parse_datetime(*n);
        if (!t || n->size() < 20)
            throw UsageError("--now must be an RFC 3339 date-time like 2026-11-25T12:00:00Z, not '" + *n + "'");
        return *t;
    }
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace calcalert::cli
