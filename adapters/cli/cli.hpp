// The calcalert command line: `calcalert <command> [options]`. main() is a thin shell over run().
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace calcalert::cli {

// Exit codes (docs/cli.md).
enum Exit : int {
    ok = 0,
    internal_error = 1,
    usage_error = 2,
    input_error = 3,   // some input could not be read; findings for what was read are still written
    config_error = 4,  // the rule catalog or terminology data is invalid
    incomplete = 5,    // poll: the pass finished but left patients queued (unreadable resources, refused writes)
};

int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace calcalert::cli
