#include "adapters/cds_hooks/server.hpp"

#include <atomic>
#include <chrono>
#include <iostream>
#include <map>
#include <optional>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "adapters/http/event_server.hpp"
#include "adapters/state/batched_replay.hpp"
#include "fhir/datetime.hpp"

namespace calcalert::cds {

Clock system_clock() {
    return [] {
        return static_cast<std::int64_t>(
            std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
    };
}

void JsonLog::write(const std::string& level, const std::string& msg,
                    const std::vector<std::pair<std::string, std::string>>& fields) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.StartObject();
    w.Key("ts");
    w.String(fhir::format_datetime(clock_()));
    w.Key("level");
    w.String(level);
    w.Key("msg");
    w.String(msg);
    for (const auto& [k, v] : fields) {
        w.Key(k.c_str(), static_cast<rapidjson::SizeType>(k.size()));
        w.String(v);
    }
    w.EndObject();
    sb.Put('\n');  // the line and its end in one write (std::cerr writes each insertion at once)
    std::lock_guard<std::mutex> lock(mutex_);
    out_.write(sb.GetString(), static_cast<std::streamsize>(sb.GetSize()));
    out_.flush();
}

// The replay store of replay_flush_ms > 0: a token that two processes accepted within one batch
// is logged when the later batch is written, and so is a batch that could not be written.
std::unique_ptr<state::BatchedReplayStore> batched_replay(const ServeConfig& config, const ServerDeps& deps, JsonLog& log,
                                                          Metrics& metrics) {
    if (config.replay_flush_ms <= 0 || config.insecure_dev) return nullptr;
    state::BatchedReplayOptions options;
    options.flush_interval = std::chrono::milliseconds(config.replay_flush_ms);
    return std::make_unique<state::BatchedReplayStore>(
        *deps.store, deps.replay_writer ? *deps.replay_writer : *deps.store, options,
        [&log, &metrics](const state::JtiRecord& r) {
            metrics.late_replay();
            log.write("error", "a token was accepted twice: by this process and by another one on the same state database, within one replay batch",
                      {{"iss", r.issuer}, {"jti", r.jti}});
        },
        [&log](const std::string& why) { log.write("error", why); });
}

struct CdsServer::Impl {
    ServeConfig config;
    ServerDeps deps;
    Metrics metrics;
    JsonLog log;
    std::unique_ptr<state::BatchedReplayStore> replay;  // null: replay_flush_ms 0
    JwtVerifier verifier;
    CdsService service;
    std::unique_ptr<ExplainPages> explain;
    std::unique_ptr<http::EventServer> http;

    Impl(ServeConfig c, ServerDeps d)
        : config(std::move(c)), deps(std::move(d)), log(*deps.log, deps.clock),
          replay(batched_replay(config, deps, log, metrics)),
          verifier(config, replay ? static_cast<state::ReplayStore&>(*replay) : *deps.store, deps.jku_fetcher),
          service(config, *deps.terminology, *deps.catalog, *deps.store, metrics, deps.sources, deps.lab_tokens,
                  deps.medications) {
        if (config.explain_pages) {
            explain::Guidance guidance;
            if (deps.guidance) {
                guidance = *deps.guidance;
            } else {
                try {
                    guidance = explain::Guidance::load(explain::Guidance::file_of(*deps.catalog), *deps.catalog);
                } catch (const explain::GuidanceError& e) {
                    throw ConfigError(std::string("explain_pages: ") + e.what());
                }
            }
            std::string key = config.explain_key_file.empty() ? ExplainTokens::generate_key()
                                                               : ExplainTokens::read_key_file(config.explain_key_file);
            explain = std::make_unique<ExplainPages>(config, *deps.catalog, std::move(guidance), std::move(key));
            service.set_explain(explain.get(), [this] { return base_url(); });
        }
    }

    std::string base_url() const {
        if (!config.public_base_url.empty()) return normalize_base_url(config.public_base_url);
        return listen_url();
    }

    std::string listen_url() const {
        const std::string host = config.bind_address.find(':') != std::string::npos ? "[" + config.bind_address + "]"
                                                                                      : config.bind_address;
        return "http://" + host + ":" + std::to_string(http ? http->port() : 0);
    }

    bool origin_allowed(const std::string& origin) const {
        if (origin.empty()) return false;
        for (const auto& o : config.cors_origins)
            if (o == "*" || o == origin) return true;
        return false;
    }

    // The headers every answer carries (CORS for an allowed origin, the insecure-dev marker).
    void common_headers(const http::Request& req, http::Response& resp) const {
        resp.set("Cache-Control", "no-store");
        resp.set("X-Content-Type-Options", "nosniff");
        const std::string origin = req.header("Origin");
        if (origin_allowed(origin)) {
            resp.set("Access-Control-Allow-Origin", origin);
            resp.set("Vary", "Origin");
            resp.set("Access-Control-Allow-Headers", "Authorization, Content-Type");
            resp.set("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
            resp.set("Access-Control-Max-Age", "600");
        }
        if (config.insecure_dev) resp.set("X-Calcalert-Insecure-Dev", "no authentication - local development only");
    }

    // /healthz, /metrics and preflights, answered on the I/O thread (no worker, no JWT).
    std::optional<http::Response> quick(const http::Request& req);
    // Discovery, service calls and feedback, on a worker.
    http::Response handle(const http::Request& req);
    void finish(const http::Request& req, const std::string& label, int status, const std::string& auth_reason);
    void rejected(http::Rejection why, const http::Request* req, int status);
};

namespace {

http::Response reply_of(const HttpReply& r) {
    http::Response resp;
    resp.status = r.status;
    if (!r.content_type.empty()) resp.set("Content-Type", r.content_type);
    resp.body = r.body;
    return resp;
}

// The bearer token of an Authorization header, or "".
std::string bearer(const http::Request& req) {
    const std::string h = req.header("Authorization");
    if (h.size() < 7) return {};
    std::string scheme = h.substr(0, 7);
    for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme != "bearer ") return {};
    auto start = h.find_first_not_of(' ', 7);
    return start == std::string::npos ? std::string() : h.substr(start);
}

// The path as the log writes it: an explanation link's token is a credential, never logged.
std::string loggable_path(const std::string& path) {
    return path.rfind("/explain/", 0) == 0 ? std::string("/explain/<token>") : path;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

void CdsServer::Impl::finish(const http::Request& req, const std::string& label, int status, const std::string& auth_reason) {
    const double seconds = seconds_since(req.received);
    metrics.request(label, status, seconds);
    std::vector<std::pair<std::string, std::string>> fields = {
        {"method", req.method}, {"path", loggable_path(req.path())}, {"service", label}, {"status", std::to_string(status)},
        {"ms", std::to_string(static_cast<long long>(seconds * 1000.0 + 0.5))}};
    if (!auth_reason.empty()) fields.emplace_back("auth", auth_reason);
    log.write(status >= 500 ? "error" : (status >= 400 ? "warning" : "info"), "request", fields);
}

void CdsServer::Impl::rejected(http::Rejection why, const http::Request* req, int status) {
    metrics.rejected(http::rejection_name(why));
    std::vector<std::pair<std::string, std::string>> fields = {{"reason", http::rejection_name(why)},
                                                               {"status", std::to_string(status)}};
    if (req != nullptr) {
        fields.emplace_back("method", req->method);
        fields.emplace_back("path", loggable_path(req->path()));
        fields.emplace_back("peer", req->peer);
    }
    log.write("warning", "request refused", fields);
}

std::optional<http::Response> CdsServer::Impl::quick(const http::Request& req) {
    const std::string path = req.path();
    std::string label;
    http::Response resp;
    if (req.method == "OPTIONS") {
        label = "preflight";
        resp.status = 204;
    } else if (path == "/healthz") {
        label = "healthz";
        if (req.method != "GET" && req.method != "HEAD") resp = reply_of(outcome_reply(405, "not-supported", "use GET"));
        else resp = reply_of({200, "{\"status\":\"ok\"}", "application/json"});
    } else if (path == "/metrics") {
        label = "metrics";
        if (req.method != "GET") resp = reply_of(outcome_reply(405, "not-supported", "use GET"));
        else resp = reply_of({200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8"});
    } else {
        return std::nullopt;
    }
    common_headers(req, resp);
    finish(req, label, resp.status, "");
    return resp;
}

http::Response CdsServer::Impl::handle(const http::Request& req) {
    const std::string path = req.path();
    std::string label = "unknown";
    std::string auth_reason;
    http::Response resp;
    const auto end_by = req.received + std::chrono::milliseconds(config.call_deadline_ms);
    // The caller's verified issuer, or nullopt (the answer is then the 401).
    auto authenticated = [&](const std::string& audience) -> std::optional<std::string> {
        if (config.insecure_dev) return kInsecureDevIssuer;
        const std::string token = bearer(req);
        AuthResult a;
        if (token.empty()) a.reason = "no bearer token";
        else a = verifier.verify(token, audience, deps.clock());
        if (a.ok) return a.iss;
        auth_reason = a.reason;
        metrics.auth_failure();
        resp = http::Response{};
        resp.status = 401;
        resp.set("WWW-Authenticate", "Bearer");
        return std::nullopt;
    };
    try {
        if (path == "/cds-services" || path == "/cds-services/") {
            label = "discovery";
            if (req.method != "GET") resp = reply_of(outcome_reply(405, "not-supported", "use GET"));
            else if (authenticated(base_url() + path)) resp = reply_of({200, service.discovery(), "application/json"});
        } else if (path.rfind("/explain/", 0) == 0 && explain) {
            label = "explain";
            if (req.method != "GET" && req.method != "HEAD") {
                resp = reply_of({405, "use GET\n", "text/plain; charset=utf-8"});
            } else {
                const ExplainReply page = explain->page(std::string_view(path).substr(9), deps.clock());
                resp.status = page.status;
                resp.set("Content-Type", "text/html; charset=utf-8");
                // No script, no external resource: the page needs nothing but its own inline style.
                resp.set("Content-Security-Policy",
                         "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'");
                resp.set("Referrer-Policy", "no-referrer");
                resp.body = page.body;
            }
        } else if (path.rfind("/cds-services/", 0) == 0) {
            std::string rest = path.substr(std::string("/cds-services/").size());
            bool is_feedback = false;
            if (const auto slash = rest.find('/'); slash != std::string::npos) {
                is_feedback = rest.substr(slash) == "/feedback";
                if (!is_feedback) rest = "";
                else rest = rest.substr(0, slash);
            }
            const ServiceDef* def = find_service(rest);
            if (!def) {
                label = "not-found";
                resp = reply_of(outcome_reply(404, "not-found", "no such CDS service"));
            } else {
                label = def->id + (is_feedback ? "/feedback" : "");
                if (req.method != "POST") resp = reply_of(outcome_reply(405, "not-supported", "use POST"));
                else if (const auto issuer = authenticated(base_url() + path))
                    resp = reply_of(is_feedback ? service.feedback(*def, req.body, deps.clock(), *issuer)
                                                : service.call(*def, req.body, deps.clock(), *issuer, end_by));
            }
        } else {
            label = "not-found";
            resp = reply_of(outcome_reply(404, "not-found", "no such path"));
        }
    } catch (const std::exception& e) {
        log.write("error", "request failed", {{"path", loggable_path(path)}, {"error", e.what()}});
        resp = reply_of(outcome_reply(500, "exception", "internal error"));
    }
    common_headers(req, resp);
    finish(req, label, resp.status, auth_reason);
    return resp;
}

CdsServer::CdsServer(ServeConfig config, ServerDeps deps) {
    validate(config);
    if (!deps.terminology || !deps.catalog || !deps.store) throw std::invalid_argument("CdsServer needs an engine and a store");
    if (!deps.clock) deps.clock = system_clock();
    if (!deps.jku_fetcher) deps.jku_fetcher = curl_fetcher(config.fhir_timeout_ms, config.fhir_ca_file);
    if (!deps.sources) deps.sources = fhir_client_sources(config, deps.credentials);
    if (!deps.log) deps.log = &std::cerr;
    impl_ = std::make_unique<Impl>(std::move(config), std::move(deps));
}

CdsServer::~CdsServer() {
    try {
        stop(0);
    } catch (...) {
        // destructors do not throw
    }
}

void CdsServer::start() {
    Impl& i = *impl_;
    http::Limits limits;
    limits.max_threads = i.config.max_threads;
    limits.max_queued = i.config.max_queued;
    limits.max_connections = i.config.max_connections;
    limits.max_body_bytes = i.config.max_body_bytes;
    limits.request_timeout = std::chrono::milliseconds(i.config.request_timeout_ms);
    limits.keep_alive_timeout = std::chrono::milliseconds(i.config.keep_alive_timeout_ms);
    limits.max_queue_wait = std::chrono::milliseconds(i.config.call_deadline_ms);
    limits.max_keep_alive_requests = i.config.max_keep_alive_requests;
    http::Handlers handlers;
    handlers.handle = [&i](const http::Request& r) { return i.handle(r); };
    handlers.quick = [&i](const http::Request& r) { return i.quick(r); };
    handlers.on_reject = [&i](http::Rejection why, const http::Request* r, int status) { i.rejected(why, r, status); };
    handlers.refusal = [](int status, const std::string& why) {
        static const std::map<int, const char*> codes = {{400, "structure"}, {408, "timeout"}, {413, "too-long"}, {417, "not-supported"},
                                                         {431, "too-long"}, {500, "exception"}, {501, "not-supported"},
                                                         {503, "transient"}, {505, "not-supported"}};
        const auto code = codes.find(status);
        return reply_of(outcome_reply(status, code == codes.end() ? "processing" : code->second, why));
    };
    handlers.on_error = [&i](const std::string& what) { i.log.write("error", "server error", {{"error", what}}); };
    i.http = std::make_unique<http::EventServer>(limits, std::move(handlers));
    i.http->start(i.config.bind_address, i.config.port);
    if (i.config.insecure_dev)
        i.log.write("warning", "INSECURE DEVELOPMENT MODE: no JWT is checked; every caller on this machine is trusted",
                    {{"bind", i.config.bind_address}});
    i.log.write("info", "listening", {{"url", base_url()}, {"listen", i.listen_url()}});
}

void CdsServer::stop(int grace_ms) {
    Impl& i = *impl_;
    if (!i.http) return;
    i.http->stop(std::chrono::milliseconds(grace_ms));
    i.http.reset();
    if (i.replay) i.replay->flush();  // what the last calls accepted
    i.log.write("info", "stopped");
}

int CdsServer::port() const { return impl_->http ? impl_->http->port() : 0; }
std::string CdsServer::base_url() const { return impl_->base_url(); }
std::string CdsServer::listen_url() const { return impl_->listen_url(); }
Metrics& CdsServer::metrics() { return impl_->metrics; }
JwtVerifier& CdsServer::verifier() { return impl_->verifier; }
ExplainPages* CdsServer::explain() { return impl_->explain.get(); }

}  // namespace calcalert::cds
