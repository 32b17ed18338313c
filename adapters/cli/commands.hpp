// What the calcalert commands share: where the data lives, loading the engine, --now.
#pragma once

#include <filesystem>
#include <iosfwd>
#include <stdexcept>
#include <string>
#include <vector>

#include "adapters/cli/options.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/terminology.hpp"
#include "rules/catalog.hpp"

#ifndef CALCALERT_VERSION
#define CALCALERT_VERSION "0.0.0"
#endif

namespace calcalert::cli {

// $CALCALERT_DATA_DIR, else <prefix>/share/calcalert of an installed program, else the source tree.
std::filesystem::path data_root();

// Invalid rule catalog or terminology data: run() reports it and exits with config_error.
class ConfigError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct Engine {
    mappings::Terminology terminology;
    rules::RuleCatalog catalog;
};
// Loads the terminology (--terminology DIR) and the rule catalog (--catalog DIR); throws ConfigError
// naming the file and key on invalid data. --time-zone ZONE (for the commands that take it) replaces the
// catalog's display time zone; an unknown zone is a UsageError.
Engine load_engine(const Options& opts);

// The DetectedIssue options of the command line: author "calcalert <version>", --identifier-system.
mappings::IssueOptions issue_options(const Options& opts);

// --now RFC3339, else the current time. Throws UsageError for a malformed value.
rules::EpochSeconds now_option(const Options& opts);

// The commands: each takes the arguments after its name.
int evaluate_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
// The synthetic cohort (adapters/cli/cmd_sandbox.cpp): `sandbox generate` and `sandbox seed`.
int sandbox_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
// The CDS Hooks service (adapters/cli/cmd_serve.cpp): runs until SIGTERM/SIGINT.
int serve_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int poll_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int alerts_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int doctor_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int smart_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace calcalert::cli
