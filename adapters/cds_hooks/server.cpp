#include "adapters/cds_hooks/server.hpp"

#include <atomic>
#include <chrono>
#include <iostream>
#include <thread>

#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/ThreadPool.h>
#include <Poco/URI.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

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
    std::lock_guard<std::mutex> lock(mutex_);
    out_ << sb.GetString() << "\n";
    out_.flush();
}

struct CdsServer::Impl {
    ServeConfig config;
    ServerDeps deps;
    Metrics metrics;
    JsonLog log;
    JwtVerifier verifier;
    CdsService service;
    std::unique_ptr<Poco::ThreadPool> pool;
    std::unique_ptr<Poco::Net::HTTPServer> http;
    int bound_port = 0;
    std::atomic<int> in_flight{0};

    Impl(ServeConfig c, ServerDeps d)
        : config(std::move(c)), deps(std::move(d)), log(*deps.log, deps.clock),
          verifier(config, *deps.store, deps.jku_fetcher),
          service(config, *deps.terminology, *deps.catalog, *deps.store, metrics, deps.sources, deps.lab_tokens,
                  deps.medications) {}

    std::string base_url() const {
        if (!config.public_base_url.empty()) return normalize_base_url(config.public_base_url);
        const std::string host = config.bind_address.find(':') != std::string::npos ? "[" + config.bind_address + "]"
                                                                                      : config.bind_address;
        return "http://" + host + ":" + std::to_string(bound_port);
    }

    bool origin_allowed(const std::string& origin) const {
        if (origin.empty()) return false;
        for (const auto& o : config.cors_origins)
            if (o == "*" || o == origin) return true;
        return false;
    }

    void handle(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp);
};

namespace {

using Poco::Net::HTTPResponse;

class Handler : public Poco::Net::HTTPRequestHandler {
public:
    explicit Handler(CdsServer::Impl& impl) : impl_(impl) {}
    void handleRequest(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp) override {
        impl_.handle(req, resp);
    }

private:
    CdsServer::Impl& impl_;
};

class Factory : public Poco::Net::HTTPRequestHandlerFactory {
public:
    explicit Factory(CdsServer::Impl& impl) : impl_(impl) {}
    Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
        return new Handler(impl_);
    }

private:
    CdsServer::Impl& impl_;
};

void send(Poco::Net::HTTPServerResponse& resp, int status, const std::string& content_type, const std::string& body) {
    resp.setStatusAndReason(static_cast<HTTPResponse::HTTPStatus>(status));
    if (!content_type.empty()) resp.setContentType(content_type);
    resp.setContentLength(static_cast<std::streamsize>(body.size()));
    resp.set("Cache-Control", "no-store");
    resp.set("X-Content-Type-Options", "nosniff");
    std::ostream& out = resp.send();
    out << body;
}

// The bearer token of an Authorization header, or "".
std::string bearer(const Poco::Net::HTTPServerRequest& req) {
    const std::string h = req.get("Authorization", "");
    if (h.size() < 7) return {};
    std::string scheme = h.substr(0, 7);
    for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme != "bearer ") return {};
    auto start = h.find_first_not_of(' ', 7);
    return start == std::string::npos ? std::string() : h.substr(start);
}

}  // namespace

void CdsServer::Impl::handle(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp) {
    const auto started = std::chrono::steady_clock::now();
    ++in_flight;
    std::string label = "unknown";
    int status = 500;
    std::string path;
    try {
        path = Poco::URI(req.getURI()).getPath();
    } catch (const std::exception&) {
        path = "";
    }
    const std::string method = req.getMethod();
    std::string auth_reason;
    try {
        const std::string origin = req.get("Origin", "");
        if (origin_allowed(origin)) {
            resp.set("Access-Control-Allow-Origin", origin);
            resp.set("Vary", "Origin");
            resp.set("Access-Control-Allow-Headers", "Authorization, Content-Type");
            resp.set("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
            resp.set("Access-Control-Max-Age", "600");
        }
        if (config.insecure_dev) resp.set("X-Calcalert-Insecure-Dev", "no authentication - local development only");

        bool body_read = false;
        const bool has_body = (req.hasContentLength() && req.getContentLength64() > 0) || req.getChunkedTransferEncoding();
        auto reply = [&](const HttpReply& r) {
            status = r.status;
            // A body left unread would be taken for the next request on this connection: close it.
            if (has_body && !body_read) resp.setKeepAlive(false);
            send(resp, r.status, r.content_type, r.body);
        };
        // The caller's verified issuer, or nullopt (401 sent).
        auto authenticated = [&](const std::string& audience) -> std::optional<std::string> {
            if (config.insecure_dev) return kInsecureDevIssuer;
            const std::string token = bearer(req);
            AuthResult a;
            if (token.empty()) a.reason = "no bearer token";
            else a = verifier.verify(token, audience, deps.clock());
            if (a.ok) return a.iss;
            auth_reason = a.reason;
            metrics.auth_failure();
            status = 401;
            resp.set("WWW-Authenticate", "Bearer");
            if (has_body) resp.setKeepAlive(false);
            send(resp, 401, "", "");
            return std::nullopt;
        };
        auto read_body = [&](std::string& body) {
            const std::int64_t limit = config.max_body_bytes;
            if (req.hasContentLength() && req.getContentLength64() > limit) {
                reply(outcome_reply(413, "too-long", "the request body is larger than " + std::to_string(limit) + " bytes"));
                return false;
            }
            std::istream& in = req.stream();
            char buf[16384];
            while (in) {
                in.read(buf, sizeof buf);
                body.append(buf, static_cast<std::size_t>(in.gcount()));
                if (static_cast<std::int64_t>(body.size()) > limit) {
                    reply(outcome_reply(413, "too-long", "the request body is larger than " + std::to_string(limit) + " bytes"));
                    return false;
                }
            }
            body_read = true;
            return true;
        };

        if (method == "OPTIONS") {
            label = "preflight";
            status = 204;
            send(resp, 204, "", "");
        } else if (path == "/healthz") {
            label = "healthz";
            if (method != "GET" && method != "HEAD") reply(outcome_reply(405, "not-supported", "use GET"));
            else reply({200, "{\"status\":\"ok\"}", "application/json"});
        } else if (path == "/metrics") {
            label = "metrics";
            if (method != "GET") reply(outcome_reply(405, "not-supported", "use GET"));
            else reply({200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8"});
        } else if (path == "/cds-services" || path == "/cds-services/") {
            label = "discovery";
            if (method != "GET") reply(outcome_reply(405, "not-supported", "use GET"));
            else if (authenticated(base_url() + path)) reply({200, service.discovery(), "application/json"});
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
                reply(outcome_reply(404, "not-found", "no such CDS service"));
            } else {
                label = def->id + (is_feedback ? "/feedback" : "");
                std::string body;
                if (method != "POST") reply(outcome_reply(405, "not-supported", "use POST"));
                else if (const auto issuer = authenticated(base_url() + path); issuer && read_body(body))
                    reply(is_feedback ? service.feedback(*def, body, deps.clock(), *issuer)
                                      : service.call(*def, body, deps.clock(), *issuer));
            }
        } else {
            label = "not-found";
            reply(outcome_reply(404, "not-found", "no such path"));
        }
    } catch (const std::exception& e) {
        log.write("error", "request failed", {{"path", path}, {"error", e.what()}});
        if (!resp.sent()) {
            status = 500;
            const HttpReply r = outcome_reply(500, "exception", "internal error");
            try {
                send(resp, r.status, r.content_type, r.body);
            } catch (const std::exception&) {
                // the connection is gone; nothing more to do
            }
        }
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    metrics.request(label, status, seconds);
    std::vector<std::pair<std::string, std::string>> fields = {
        {"method", method}, {"path", path}, {"service", label}, {"status", std::to_string(status)},
        {"ms", std::to_string(static_cast<long long>(seconds * 1000.0 + 0.5))}};
    if (!auth_reason.empty()) fields.emplace_back("auth", auth_reason);
    log.write(status >= 500 ? "error" : (status >= 400 ? "warning" : "info"), "request", fields);
    --in_flight;
}

CdsServer::CdsServer(ServeConfig config, ServerDeps deps) {
    validate(config);
    if (!deps.terminology || !deps.catalog || !deps.store) throw std::invalid_argument("CdsServer needs an engine and a store");
    if (!deps.clock) deps.clock = system_clock();
    if (!deps.jku_fetcher) deps.jku_fetcher = curl_fetcher(config.fhir_timeout_ms, config.fhir_ca_file);
    if (!deps.sources) deps.sources = fhir_client_sources(config);
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
    Poco::Net::ServerSocket socket;
    socket.bind(Poco::Net::SocketAddress(i.config.bind_address, static_cast<Poco::UInt16>(i.config.port)), true);
    socket.listen(128);
    i.bound_port = socket.address().port();
    auto* params = new Poco::Net::HTTPServerParams;
    params->setTimeout(Poco::Timespan(static_cast<long>(i.config.request_timeout_ms) * 1000));
    params->setKeepAlive(true);
    params->setKeepAliveTimeout(Poco::Timespan(static_cast<long>(i.config.keep_alive_timeout_ms) * 1000));
    params->setMaxKeepAliveRequests(i.config.max_keep_alive_requests);
    params->setMaxThreads(i.config.max_threads);
    params->setMaxQueued(i.config.max_queued);
    params->setServerName("calcalert");
    i.pool = std::make_unique<Poco::ThreadPool>(2, i.config.max_threads + 1);
    i.http = std::make_unique<Poco::Net::HTTPServer>(new Factory(i), *i.pool, socket, params);
    i.http->start();
    if (i.config.insecure_dev)
        i.log.write("warning", "INSECURE DEVELOPMENT MODE: no JWT is checked; every caller on this machine is trusted",
                    {{"bind", i.config.bind_address}});
    i.log.write("info", "listening", {{"url", base_url()}});
}

void CdsServer::stop(int grace_ms) {
    Impl& i = *impl_;
    if (!i.http) return;
    i.http->stop();  // no new connections
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(grace_ms);
    while (i.in_flight.load() > 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    i.http->stopAll(true);
    i.pool->joinAll();
    i.http.reset();
    i.pool.reset();
    i.log.write("info", "stopped");
}

int CdsServer::port() const { return impl_->bound_port; }
std::string CdsServer::base_url() const { return impl_->base_url(); }
Metrics& CdsServer::metrics() { return impl_->metrics; }
JwtVerifier& CdsServer::verifier() { return impl_->verifier; }

}  // namespace calcalert::cds
