#include "mappings/data_root.hpp"

#include <cstdlib>
#include <system_error>

#ifndef CALCALERT_SOURCE_DIR
#define CALCALERT_SOURCE_DIR "."
#endif

namespace calcalert::mappings {

namespace fs = std::filesystem;

fs::path data_root() {
    if (const char* env = std::getenv("CALCALERT_DATA_DIR"); env && *env) return env;
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        const fs::path installed = exe.parent_path().parent_path() / "share" / "calcalert";
        if (fs::exists(installed / "rules" / "catalog" / "facts.json", ec)) return installed;
    }
    return CALCALERT_SOURCE_DIR;
}

}  // namespace calcalert::mappings
