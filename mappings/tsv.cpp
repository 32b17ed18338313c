#include "mappings/tsv.hpp"

#include <fstream>

namespace calcalert::mappings {

std::vector<TsvRow> read_tsv(const std::filesystem::path& p, std::size_t min_cells) {
    std::ifstream in(p);
    if (!in) throw TerminologyError(p.string() + ": cannot open");
    std::vector<TsvRow> rows;
    std::string line;
    std::size_t n = 0;
    while (std::getline(in, line)) {
        ++n;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty() || line[0] == '#') continue;
        TsvRow r{p.string() + ":" + std::to_string(n), {}};
        std::size_t start = 0;
        while (true) {
            const auto tab = line.find('\t', start);
            r.cells.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
            if (tab == std::string::npos) break;
            start = tab + 1;
        }
        if (r.cells.size() < min_cells)
            throw TerminologyError(r.where + ": expected at least " + std::to_string(min_cells) +
                                   " tab-separated columns, found " + std::to_string(r.cells.size()));
        rows.push_back(std::move(r));
    }
    return rows;
}

}  // namespace calcalert::mappings
