#include "adapters/cli/html_report.hpp"

#include <fstream>
#include <system_error>

#include "adapters/cli/options.hpp"
#include "explain/page.hpp"
#include "mappings/detected_issue.hpp"

namespace calcalert::cli {
namespace {

namespace fs = std::filesystem;

// True when the file at `p` is one calcalert wrote (its head holds the generator marker).
bool ours(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) return false;
    std::string head(4096, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<std::size_t>(in.gcount()));
    return head.find(explain::kGeneratorMeta) != std::string::npos;
}

void write_file(const fs::path& p, const std::string& text) {
    const fs::path tmp = p.string() + ".calcalert-tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw std::runtime_error(tmp.string() + ": cannot be written");
        out << text;
        out.flush();
        if (!out) throw std::runtime_error(tmp.string() + ": cannot be written");
    }
    std::error_code ec;
    fs::rename(tmp, p, ec);
    if (ec) {
        fs::remove(tmp, ec);
        throw std::runtime_error(p.string() + ": cannot be written");
    }
}

}  // namespace

std::size_t write_html_report(const fs::path& dir, const HtmlReportInput& in) {
    std::error_code ec;
    if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
        throw UsageError("-o " + dir.string() + ": exists and is not a directory");
    const auto& results = *in.results;
    // Every file's name and text first; then the check that none would replace a file of someone else.
    std::vector<std::pair<fs::path, std::string>> files;
    std::vector<explain::IndexEntry> entries;
    std::size_t notes = 0;
    for (std::size_t i = 0; i < results.size(); ++i) {
        const auto& r = results[i];
        notes += r.evaluation.notes.size();
        for (const auto& f : r.evaluation.findings) {
            const std::string id = mappings::alert_identifier(f.patient, f.rule->id);
            explain::PageInput page;
            page.finding = &f;
            page.facts = (*in.facts)[i];
            page.notes = &r.evaluation.notes;
            page.catalog = in.catalog;
            page.guidance = in.guidance;
            page.now = in.now;
            page.identifier = id;
            page.index_href = "index.html";
            files.emplace_back(dir / (id + ".html"), explain::render_page(page));
            entries.push_back({r.patient, &f, id + ".html"});
        }
    }
    files.emplace(files.begin(), dir / "index.html",
                  explain::render_index(entries, results.size(), notes, in.now, in.catalog->time_zone()));
    for (const auto& [p, text] : files)
        if (fs::exists(p, ec) && (!fs::is_regular_file(p, ec) || !ours(p)))
            throw UsageError("-o " + dir.string() + ": " + p.filename().string() +
                             " exists and was not written by calcalert; it is not replaced (choose another directory)");
    fs::create_directories(dir, ec);
    if (ec) throw std::runtime_error(dir.string() + ": cannot be created: " + ec.message());
    for (const auto& [p, text] : files) write_file(p, text);
    return files.size();
}

}  // namespace calcalert::cli
