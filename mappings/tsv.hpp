// The reviewable data files of mappings/data/: tab-separated rows, '#' comment lines.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "mappings/terminology.hpp"

namespace calcalert::mappings {

struct TsvRow {
    std::string where;  // "file:line", for errors
    std::vector<std::string> cells;
};

// The rows of a data file; blank and '#' lines are skipped. Throws TerminologyError naming the file
// (and line) when it cannot be read or a row has fewer than `min_cells` cells.
std::vector<TsvRow> read_tsv(const std::filesystem::path& path, std::size_t min_cells);

}  // namespace calcalert::mappings
