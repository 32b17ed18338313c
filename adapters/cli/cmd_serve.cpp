#include <csignal>
#include <filesystem>
#include <optional>
#include <ostream>

#include <pthread.h>

#include "adapters/cds_hooks/config.hpp"
#include "adapters/cds_hooks/server.hpp"
#include "adapters/cds_hooks/service.hpp"
#include "adapters/cli/cli.hpp"
#include "adapters/cli/commands.hpp"
#include "adapters/cli/server_options.hpp"
#include "adapters/state/state_store.hpp"
#include "mappings/medications.hpp"

namespace calcalert::cli {
namespace {

const char* const kServeHelp = R"(Usage: calcalert serve [options]

Runs the CDS Hooks 2.0 service: discovery at /cds-services, the services calcalert-patient-view,
calcalert-order-select and calcalert-order-sign, feedback at /cds-services/{id}/feedback, plus
/healthz and /metrics (Prometheus). Every CDS call must carry a JWT (ES384 or RS384) from a
configured issuer. Stops gracefully on SIGTERM or SIGINT (calls in flight finish).
Prints one line "listening URL" on stdout once it accepts calls: the address it is bound to, and the
public_base_url in parentheses when one is set. Logs JSON lines on stderr.

Options:
  --config FILE       the JSON configuration (see docs/cds-hooks.md and deploy/serve.example.json);
                      every key can also be set by CALCALERT_SERVE_<KEY> environment variables
  --port N            the port to listen on (0: any free port); overrides the config
  --bind ADDRESS      the address to bind; overrides the config
  --insecure-dev      no JWT checks, for trying the service locally; refused unless the bind
                      address is loopback (127.0.0.1 or ::1)
  --catalog DIR       rule catalog directory
  --terminology DIR   terminology data directory
  --time-zone ZONE    the zone card details write times in (default: the catalog's display.timeZone)
  --help              this help

Exit codes: 0 stopped by a signal, 2 usage error, 4 configuration error, 1 internal error.
)";

}  // namespace

int serve_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
    Options opts(args, {"config", "port", "bind", "catalog", "terminology", "time-zone"}, {"help", "insecure-dev"});
    if (opts.flag("help")) {
        out << kServeHelp;
        return ok;
    }
    if (!opts.positional().empty()) throw UsageError("serve takes no arguments, only options (see --help)");
    cds::ServeConfig config;
    std::optional<Engine> engine;
    std::unique_ptr<state::StateStore> store;
    std::unique_ptr<state::StateStore> replay_writer;  // the batched replay records' own connection
    std::vector<std::string> lab_tokens;
    std::optional<mappings::Medications> medications;
    try {
        config = cds::load_serve_config(opts.value("config").value_or(""), cds::serve_environment());
        if (auto p = opts.value("port")) {
            std::size_t used = 0;
            int port = -1;
            try {
                port = std::stoi(*p, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != p->size() || port < 0 || port > 65535) throw UsageError("--port must be 0..65535, not '" + *p + "'");
            config.port = port;
        }
        if (auto b = opts.value("bind")) config.bind_address = *b;
        if (opts.flag("insecure-dev")) config.insecure_dev = true;
        cds::validate(config);
        engine.emplace(load_engine(opts));
        const std::filesystem::path term_dir =
            opts.value("terminology").value_or((data_root() / "mappings" / "data").string());
        lab_tokens = cds::lab_code_tokens(term_dir / "lab-codes.tsv");
        medications.emplace(mappings::Medications::load(term_dir));
        if (config.state_file.empty()) config.state_file = state::default_state_path();
        store = state::open_state_store(config.state_file);
        // A database in memory is this connection's alone: the batches go through it too.
        if (config.replay_flush_ms > 0 && !config.insecure_dev && store->location() != ":memory:")
            replay_writer = state::open_state_store(config.state_file);
    } catch (const UsageError&) {
        throw;
    } catch (const std::exception& e) {
        err << "calcalert: configuration error: " << e.what() << "\n";
        return config_error;
    }
    if (config.insecure_dev)
        err << "calcalert: WARNING: --insecure-dev: NO AUTHENTICATION. Any program on this machine can call the "
               "service. For local tries only; never in production.\n";

    // Block the stop signals in every thread (the server's threads inherit the mask), then wait for one.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    cds::ServerDeps deps;
    deps.terminology = &engine->terminology;
    deps.catalog = &engine->catalog;
    deps.medications = &*medications;
    deps.store = store.get();
    deps.replay_writer = replay_writer.get();
    deps.lab_tokens = lab_tokens;
    deps.log = &err;
    try {
        for (const auto& a : config.fhir_server_auth) {
            const std::string base = cds::normalize_base_url(a.server);
            if (!a.token_file.empty()) {
                deps.credentials[base] = fhir::token_file(a.token_file);
            } else {
                SmartSettings smart{a.server, a.smart_client_id, a.smart_key_file, a.smart_scope, a.smart_token_url, a.smart_jku,
                                    config.fhir_ca_file, true};
                deps.credentials[base] = smart_provider(smart);
            }
        }
    } catch (const std::exception& e) {
        err << "calcalert: configuration error: fhir_server_auth: " << e.what() << "\n";
        return config_error;
    }
    std::optional<cds::CdsServer> server;
    try {
        server.emplace(config, std::move(deps));
        server->start();
    } catch (const cds::ConfigError& e) {
        err << "calcalert: configuration error: " << e.what() << "\n";
        return config_error;
    } catch (const std::exception& e) {
        err << "calcalert: cannot start the server: " << e.what() << "\n";
        return internal_error;
    }
    out << "listening " << server->listen_url()
        << (server->base_url() != server->listen_url() ? " (public " + server->base_url() + ")" : std::string()) << std::endl;
    int received = 0;
    sigwait(&signals, &received);
    err << "{\"level\":\"info\",\"msg\":\"stopping\",\"signal\":\"" << (received == SIGTERM ? "SIGTERM" : "SIGINT")
        << "\"}\n";
    server->stop(static_cast<int>(config.request_timeout_ms));
    return ok;
}

}  // namespace calcalert::cli
