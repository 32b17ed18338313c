#include "adapters/cli/cli.hpp"

#include <ostream>

#include "adapters/cli/commands.hpp"
#include "adapters/cli/options.hpp"

namespace calcalert::cli {
namespace {

const char* const kMainHelp = R"(calcalert - calciphylaxis and calcinosis alerts from FHIR R4 data

Usage: calcalert <command> [options]

Commands:
  evaluate   evaluate FHIR files (Bundle, NDJSON, single resource) and print the findings
  sandbox    generate a synthetic cohort with its expected findings, or seed it into a FHIR server
  poll       poll a FHIR server and write the findings back as DetectedIssues
  alerts     list the DetectedIssues calcalert wrote on a FHIR server
  serve      run the CDS Hooks 2.0 service (patient-view, order-select, order-sign)
  doctor     check whether a FHIR server offers what calcalert needs, before go-live
  smart      make a SMART Backend Services client key and print its JWK Set
  version    print the version

Run 'calcalert <command> --help' for a command's options.
Exit codes: 0 success, 1 internal error, 2 usage error, 3 input error (some input could not be
read; the findings for what was read are still written), 4 invalid rule catalog or terminology data.
)";

}  // namespace

int run(const std::vector<std::string>& raw, std::ostream& out, std::ostream& err) {
    std::vector<std::string> args = raw;
    for (auto& a : args)
        if (a == "-h") a = "--help";
    if (args.empty() || args[0] == "--help" || args[0] == "help") {
        out << kMainHelp;
        return args.empty() ? usage_error : ok;
    }
    const std::string command = args[0];
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    try {
        if (command == "evaluate") return evaluate_command(rest, out, err);
        if (command == "sandbox") return sandbox_command(rest, out, err);
        if (command == "serve") return serve_command(rest, out, err);
        if (command == "poll") return poll_command(rest, out, err);
        if (command == "alerts") return alerts_command(rest, out, err);
        if (command == "smart") return smart_command(rest, out, err);
        if (command == "doctor") return doctor_command(rest, out, err);
        if (command == "version" || command == "--version") {
            out << "calcalert " << CALCALERT_VERSION << "\n";
            return ok;
        }
        throw UsageError("unknown command '" + command + "' (see 'calcalert --help')");
    } catch (const UsageError& e) {
        err << "calcalert: usage error: " << e.what() << "\n";
        return usage_error;
    } catch (const ConfigError& e) {
        err << "calcalert: configuration error: " << e.what() << "\n";
        return config_error;
    }
}

}  // namespace calcalert::cli
