// Where the data files live: the rule catalog (rules/catalog/), the terminology (mappings/data/) and the
// sandbox's archetypes (adapters/sandbox/data/), at the same relative paths in a checkout and in an
// installation (<prefix>/share/calcalert/).
#pragma once

#include <filesystem>

namespace calcalert::mappings {

// $CALCALERT_DATA_DIR, else <prefix>/share/calcalert of an installed program (when it holds
// rules/catalog/facts.json), else the source tree the program was built from.
std::filesystem::path data_root();

}  // namespace calcalert::mappings
