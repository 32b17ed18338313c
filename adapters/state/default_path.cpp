#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "adapters/state/state_store.hpp"

namespace calcalert::state {

std::string default_state_path() {
    if (const char* env = std::getenv("CALCALERT_STATE"); env && *env) return env;
    std::filesystem::path dir;
    if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg && *xdg && xdg[0] == '/') dir = xdg;
    else if (const char* home = std::getenv("HOME"); home && *home) dir = std::filesystem::path(home) / ".local" / "state";
    else throw StateError("no state file given, and neither $CALCALERT_STATE, $XDG_STATE_HOME nor $HOME is set");
    dir /= "calcalert";
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw StateError("cannot create the state directory " + dir.string() + ": " + ec.message());
    return (dir / "state.sqlite").string();
}

}  // namespace calcalert::state
