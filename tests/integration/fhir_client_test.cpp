// The FHIR REST client (fhir/client.hpp) against real servers:
// - the local sandbox FHIR server (deploy/sandbox, Medplum): transactions, paging through next links,
//   _lastUpdated, conditional create and update, errors as OperationOutcome;
// - a small scripted HTTP server in this process (Poco, 127.0.0.1, port 0) for what a real FHIR
//   server does not do on demand: 429/503 with Retry-After, HTML instead of JSON, next links to
//   another origin or in a loop, gzip, timeouts, redirects, and the bearer token on the wire; and
//   the faults of request-level resilience: a connection reset mid-body, a body shorter than its
//   Content-Length, an answer that never comes, a gzip bomb, a body over the size cap;
// - an HTTPS server of Node.js (tests/support/https-server.mjs, a certificate made for the test):
//   HTTP/2 where offered, HTTP/1.1 where not, one connection, an untrusted certificate refused.
// Only 127.0.0.1 is contacted; 127.0.0.2 appears in URLs the client must refuse before connecting.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <Poco/DeflatingStream.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerRequestImpl.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/StreamCopier.h>
#include <rapidjson/document.h>
#include <unistd.h>
#include <zlib.h>

#include "fhir/client.hpp"
#include "fhir/views.hpp"
#include "tests/support/sandbox_server.hpp"
#include "tests/support/shell.hpp"

using calcalert::fhir::ClientOptions;
using calcalert::fhir::FhirClient;
using calcalert::fhir::FhirError;
using calcalert::fhir::FhirErrorKind;
using calcalert::fhir::Jitter;
using calcalert::fhir::Replay;
using calcalert::fhir::Response;
using std::chrono::milliseconds;

namespace {

// ---- a scripted HTTP server ------------------------------------------------------------------

struct Seen {
    std::string method;
    std::string uri;  // path and query as sent
    std::string body;
    std::map<std::string, std::string> headers;  // lower-case names
};

using HeaderPairs = std::vector<std::pair<std::string, std::string>>;

// Writing to a connection the client has closed (a body cut off by the size cap) must not kill
// the test process.
const bool kSigpipeIgnored = [] {
    std::signal(SIGPIPE, SIG_IGN);
    return true;
}();

// What a scripted reply does instead of answering normally: it gets the request and the response
// and may write anything, or nothing, and close the connection.
using RawReply = std::function<void(Poco::Net::HTTPServerRequest&, Poco::Net::HTTPServerResponse&)>;

// The connection of a request, to close it or reset it after the handler returns.
Poco::Net::StreamSocket& socket_of(Poco::Net::HTTPServerRequest& request) {
    return static_cast<Poco::Net::HTTPServerRequestImpl&>(request).socket();
}

struct Reply {
    Reply() = default;
    Reply(int s, std::string b = "", HeaderPairs h = {}, std::string type = "application/fhir+json")
        : status(s), body(std::move(b)), headers(std::move(h)), content_type(std::move(type)) {}
    Reply gzipped() const {
        Reply r = *this;
        r.gzip = true;
        return r;
    }
    Reply delayed(milliseconds d) const {
        Reply r = *this;
        r.delay = d;
        return r;
    }

    // Announces the whole body in Content-Length, sends its first `sent` bytes, closes the
    // connection: the client sees the body cut short (CURLE_PARTIAL_FILE).
    static Reply cut_short(int s, std::string b, std::size_t sent) {
        Reply r(s, std::move(b));
        r.raw = [r, sent](Poco::Net::HTTPServerRequest&, Poco::Net::HTTPServerResponse& response) {
            response.setStatusAndReason(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(r.status));
            response.setContentType(r.content_type);
            response.setContentLength(static_cast<std::streamsize>(r.body.size()));
            response.setKeepAlive(false);
            response.send().write(r.body.data(), static_cast<std::streamsize>(std::min(sent, r.body.size()))).flush();
        };
        return r;
    }
    // The same, but the connection is reset (RST) after the first `sent` bytes of the body.
    static Reply reset_after(int s, std::string b, std::size_t sent) {
        Reply r(s, std::move(b));
        r.raw = [r, sent](Poco::Net::HTTPServerRequest& request, Poco::Net::HTTPServerResponse& response) {
            response.setStatusAndReason(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(r.status));
            response.setContentType(r.content_type);
            response.setContentLength(static_cast<std::streamsize>(r.body.size()));
            response.setKeepAlive(false);
            response.send().write(r.body.data(), static_cast<std::streamsize>(std::min(sent, r.body.size()))).flush();
            // The part sent reaches the client before the reset: loopback delivers on send.
            socket_of(request).setLinger(true, 0);  // close() then sends RST instead of FIN
        };
        return r;
    }
    // Reads the request, then closes the connection without answering: a lost answer.
    static Reply no_answer() {
        Reply r;
        r.raw = [](Poco::Net::HTTPServerRequest&, Poco::Net::HTTPServerResponse& response) { response.setKeepAlive(false); };
        return r;
    }

    int status = 200;
    std::string body;
    HeaderPairs headers;
    std::string content_type = "application/fhir+json";
    bool gzip = false;
    milliseconds delay{0};
    RawReply raw;  // when set, does everything itself
};

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

class ScriptServer {
public:
    // `handler` answers the n-th request (0-based).
    using Handler = std::function<Reply(const Seen&, std::size_t)>;

    explicit ScriptServer(Handler handler) : state_(std::make_shared<State>()) {
        state_->handler = std::move(handler);
        Poco::Net::ServerSocket socket(Poco::Net::SocketAddress("127.0.0.1", 0));
        port_ = socket.address().port();
        auto* params = new Poco::Net::HTTPServerParams;
        params->setKeepAlive(true);
        params->setMaxThreads(4);
        server_ = std::make_unique<Poco::Net::HTTPServer>(new Factory(state_), socket, params);
        server_->start();
    }

    // Answers requests with `replies` in order; any further request gets a 500.
    static std::unique_ptr<ScriptServer> sequence(std::vector<Reply> replies) {
        return std::make_unique<ScriptServer>([replies](const Seen&, std::size_t n) {
            if (n < replies.size()) return replies[n];
            return Reply{500, R"({"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception","diagnostics":"unexpected request"}]})"};
        });
    }

    ~ScriptServer() {
        {
            std::lock_guard lock(state_->mutex);
            state_->stopping = true;
        }
        state_->cv.notify_all();
        server_->stopAll(true);
    }

    ScriptServer(const ScriptServer&) = delete;
    ScriptServer& operator=(const ScriptServer&) = delete;

    int port() const { return port_; }
    std::string origin() const { return "http://127.0.0.1:" + std::to_string(port_); }
    std::string base_url() const { return origin() + "/fhir"; }
    std::vector<Seen> seen() const {
        std::lock_guard lock(state_->mutex);
        return state_->seen;
    }

private:
    struct State {
        mutable std::mutex mutex;
        std::condition_variable cv;
        bool stopping = false;
        std::vector<Seen> seen;
        Handler handler;
    };

    class RequestHandler : public Poco::Net::HTTPRequestHandler {
    public:
        explicit RequestHandler(std::shared_ptr<State> s) : state_(std::move(s)) {}
        void handleRequest(Poco::Net::HTTPServerRequest& request, Poco::Net::HTTPServerResponse& response) override {
            Seen seen;
            seen.method = request.getMethod();
            seen.uri = request.getURI();
            for (const auto& [name, value] : request) seen.headers[lower(name)] = value;
            Poco::StreamCopier::copyToString(request.stream(), seen.body);
            Reply reply;
            {
                std::unique_lock lock(state_->mutex);
                const std::size_t n = state_->seen.size();
                state_->seen.push_back(seen);
                lock.unlock();
                reply = state_->handler(seen, n);
                lock.lock();
                if (reply.delay.count() > 0) state_->cv.wait_for(lock, reply.delay, [&] { return state_->stopping; });
                if (state_->stopping) return;
            }
            if (reply.raw) {
                try {
                    reply.raw(request, response);
                } catch (...) {
                    response.setKeepAlive(false);  // the client went away: nothing more to do
                }
                return;
            }
            std::string body = reply.body;
            if (reply.gzip) {
                std::ostringstream compressed;
                Poco::DeflatingOutputStream z(compressed, Poco::DeflatingStreamBuf::STREAM_GZIP);
                z << reply.body;
                z.close();
                body = compressed.str();
                response.set("Content-Encoding", "gzip");
            }
            response.setStatusAndReason(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(reply.status));
            for (const auto& [name, value] : reply.headers) response.set(name, value);
            if (!reply.content_type.empty()) response.setContentType(reply.content_type);
            response.setContentLength(static_cast<std::streamsize>(body.size()));
            response.sendBuffer(body.data(), body.size());
        }

    private:
        std::shared_ptr<State> state_;
    };

    class Factory : public Poco::Net::HTTPRequestHandlerFactory {
    public:
        explicit Factory(std::shared_ptr<State> s) : state_(std::move(s)) {}
        Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
            return new RequestHandler(state_);
        }

    private:
        std::shared_ptr<State> state_;
    };

    std::shared_ptr<State> state_;
    int port_ = 0;
    std::unique_ptr<Poco::Net::HTTPServer> server_;
};

const std::string kPatient = R"({"resourceType":"Patient","id":"p1"})";

std::string outcome(const std::string& code, const std::string& diagnostics) {
    return R"({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":")" + code + R"(","diagnostics":")" +
           diagnostics + R"("}]})";
}

std::string searchset(const std::string& next, const std::vector<std::string>& ids = {"o1"}) {
    std::string s = R"({"resourceType":"Bundle","type":"searchset","entry":[)";
    for (std::size_t i = 0; i < ids.size(); ++i)
        s += std::string(i ? "," : "") + R"({"resource":{"resourceType":"Observation","id":")" + ids[i] + R"("}})";
    s += "]";
    if (!next.empty()) s += R"(,"link":[{"relation":"self","url":"ignored"},{"relation":"next","url":")" + next + R"("}])";
    return s + "}";
}

struct Sleeps {
    std::vector<milliseconds> waits;
    std::function<void(milliseconds)> fn() {
        return [this](milliseconds d) { waits.push_back(d); };
    }
};

ClientOptions options_for(const std::string& base, Sleeps& sleeps) {
    ClientOptions o;
    o.base_url = base;
    o.sleep = sleeps.fn();
    o.connect_timeout = milliseconds(2000);
    o.request_timeout = milliseconds(10000);
    return o;
}

// The message of the FhirError `f` throws; fails the test when it throws nothing or something else.
template <class F>
FhirError error_of(F&& f) {
    try {
        f();
    } catch (const FhirError& e) {
        return e;
    }
    FAIL("expected a FhirError");
    return FhirError("", -1);
}

int closed_port() {
    Poco::Net::ServerSocket s(Poco::Net::SocketAddress("127.0.0.1", 0));
    const int port = s.address().port();
    s.close();
    return port;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

// ---- retries ---------------------------------------------------------------------------------------

TEST_CASE("503 with Retry-After: 2, then 200: one retry after the 2 s the server asked for") {
    auto server = ScriptServer::sequence({{503, outcome("transient", "busy"), {{"Retry-After", "2"}}}, {200, kPatient}});
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));
    const auto d = client.get_resource("Patient/p1");
    CHECK(std::string(d["id"].GetString()) == "p1");
    CHECK(sleeps.waits == std::vector<milliseconds>{milliseconds(2000)});
    CHECK(client.stats().requests == 2);
    CHECK(client.stats().retries == 1);
    const auto seen = server->seen();
    REQUIRE(seen.size() == 2);
    CHECK(seen[1].uri == "/fhir/Patient/p1");
}

TEST_CASE("Retry-After as an HTTP-date is measured with the injected clock and capped at max_backoff") {
    auto server = ScriptServer::sequence({
        {503, "", {{"Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"}}},
        {429, "", {{"Retry-After", "Wednesday, 21-Oct-15 07:28:01 GMT"}}},
        {503, "", {{"Retry-After", "Wed Oct 21 07:27:00 2015"}}},  // in the past: no wait
        {503, "", {{"Retry-After", "86400"}}},                      // a day: capped
        {200, kPatient},
    });
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.max_backoff = milliseconds(10000);
    o.now = [] {
        using namespace std::chrono;
        return sys_days(year(2015) / October / 21) + hours(7) + minutes(27) + seconds(57);
    };
    FhirClient client(o);
    CHECK(client.get("Patient/p1").status == 200);
    CHECK(sleeps.waits ==
          std::vector<milliseconds>{milliseconds(3000), milliseconds(4000), milliseconds(0), milliseconds(10000)});
}

TEST_CASE("without Retry-After the wait doubles from initial_backoff up to max_backoff") {
    auto server = ScriptServer::sequence({{502}, {504}, {503}, {429, "", {{"Retry-After", "soon"}}}, {200, kPatient}});
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.jitter = Jitter::none;  // the jitter has its own test
    o.initial_backoff = milliseconds(100);
    o.max_backoff = milliseconds(250);
    FhirClient client(o);
    CHECK(client.get("Patient/p1").status == 200);
    CHECK(sleeps.waits == std::vector<milliseconds>{milliseconds(100), milliseconds(200), milliseconds(250), milliseconds(250)});
}

TEST_CASE("429 three times then 200 with max_retries=2: gives up with status 429 after 3 attempts") {
    auto server = ScriptServer::sequence({{429, outcome("throttled", "slow down")},
                                          {429, outcome("throttled", "slow down")},
                                          {429, outcome("throttled", "slow down")},
                                          {200, kPatient}});
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.max_retries = 2;
    FhirClient client(o);
    const auto e = error_of([&] { client.get_resource("Patient/p1"); });
    CHECK(e.status() == 429);
    CHECK(std::string(e.what()) ==
          "GET " + server->base_url() + "/Patient/p1: HTTP 429 after 3 attempts: OperationOutcome: error (throttled): slow down");
    CHECK(server->seen().size() == 3);
    CHECK(client.stats().requests == 3);
    CHECK(client.stats().retries == 2);
    CHECK(sleeps.waits.size() == 2);
}

TEST_CASE("a POST is retried on 429 and 503 (not processed) but not on 502 or 504") {
    auto server = ScriptServer::sequence({{502}, {504}, {503}, {429}, {201, kPatient}});
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));
    CHECK(client.post("Patient", kPatient).status == 502);
    CHECK(client.post("Patient", kPatient).status == 504);
    CHECK(client.post("Patient", kPatient).status == 201);
    CHECK(server->seen().size() == 5);
    CHECK(client.stats().retries == 2);
}

TEST_CASE("PUT is retried on 502") {
    auto server = ScriptServer::sequence({{502}, {200, kPatient}});
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));
    CHECK(client.put("Patient/p1", kPatient).status == 200);
    const auto seen = server->seen();
    REQUIRE(seen.size() == 2);
    CHECK(seen[1].method == "PUT");
    CHECK(seen[1].body == kPatient);
}

TEST_CASE("connection refused: FhirError with status 0 after the retries") {
    const int port = closed_port();
    Sleeps sleeps;
    auto o = options_for("http://127.0.0.1:" + std::to_string(port) + "/fhir/", sleeps);
    o.max_retries = 2;
    o.initial_backoff = milliseconds(10);
    o.jitter = Jitter::none;
    FhirClient client(o);
    CHECK(client.base_url() == "http://127.0.0.1:" + std::to_string(port) + "/fhir");
    const auto e = error_of([&] { client.get("metadata"); });
    CHECK(e.status() == 0);
    const std::string prefix = "GET http://127.0.0.1:" + std::to_string(port) + "/fhir/metadata: cannot connect: Couldn't connect to server";
    CHECK_MESSAGE(std::string(e.what()).rfind(prefix, 0) == 0, std::string(e.what()));
    CHECK_MESSAGE(contains(e.what(), "; gave up after 3 attempts"), std::string(e.what()));
    CHECK(client.stats().requests == 3);
    CHECK(sleeps.waits == std::vector<milliseconds>{milliseconds(10), milliseconds(20)});

    // Nothing was sent, so retrying a POST cannot duplicate a write.
    const auto p = error_of([&] { client.post("Patient", kPatient); });
    CHECK(p.status() == 0);
    CHECK(client.stats().requests == 6);
}

TEST_CASE("a timeout is retried for GET but not for POST (the server may have processed it)") {
    auto server = std::make_unique<ScriptServer>([](const Seen&, std::size_t) { return Reply(200, kPatient).delayed(milliseconds(3000)); });
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.request_timeout = milliseconds(200);
    o.max_retries = 1;
    FhirClient client(o);
    const auto g = error_of([&] { client.get("Patient/p1"); });
    CHECK(g.status() == 0);
    CHECK_MESSAGE(contains(g.what(), "GET " + server->base_url() + "/Patient/p1: timed out: "), std::string(g.what()));
    CHECK(client.stats().requests == 2);
    const auto p = error_of([&] { client.post("Patient", kPatient); });
    CHECK_MESSAGE(contains(p.what(), "POST " + server->base_url() + "/Patient: timed out: "), std::string(p.what()));
    CHECK(client.stats().requests == 3);
}

// ---- request-level resilience ----------------------------------------------------------------------

namespace {

// A clock that moves only when the client waits: request_deadline without real waiting.
struct FakeTime {
    std::chrono::steady_clock::time_point t{};
    std::vector<milliseconds> waits;
    void install(ClientOptions& o) {
        o.sleep = [this](milliseconds d) {
            waits.push_back(d);
            t += d;
        };
        o.monotonic_now = [this] { return t; };
    }
};

// Random values for the jitter, in this order, then 0.
std::function<double()> random_values(std::vector<double> values) {
    auto next = std::make_shared<std::size_t>(0);
    return [values = std::move(values), next] { return *next < values.size() ? values[(*next)++] : 0.0; };
}

// The resident set size of this process now, and its peak so far, in bytes.
std::uint64_t rss_bytes() {
    std::ifstream statm("/proc/self/statm");
    std::uint64_t size = 0, resident = 0;
    statm >> size >> resident;
    return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

std::uint64_t peak_rss_bytes() {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;  // "VmHWM:   123456 kB"
    return 0;
}

// A gzip body that inflates to `mib` MiB of zeros, made without compressing all of it: 1 MiB of
// zeros deflated and then fully flushed (which resets the compressor) comes out as the same bytes
// every time, so that block is repeated; the trailer's CRC-32 is combined, not computed.
std::string gzip_of_zeros(std::size_t mib) {
    const std::string zeros(std::size_t{1} << 20, '\0');
    z_stream z{};
    REQUIRE(deflateInit2(&z, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    auto deflate_all = [&z](const std::string& in, int flush) {
        std::string out;
        char buf[1 << 16];
        z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
        z.avail_in = static_cast<uInt>(in.size());
        int rc = Z_OK;
        do {
            z.next_out = reinterpret_cast<Bytef*>(buf);
            z.avail_out = sizeof buf;
            rc = deflate(&z, flush);
            REQUIRE(rc != Z_STREAM_ERROR);
            out.append(buf, sizeof buf - z.avail_out);
        } while (z.avail_out == 0 || (flush == Z_FINISH && rc != Z_STREAM_END));
        return out;
    };
    const std::string block = deflate_all(zeros, Z_FULL_FLUSH);
    const std::string again = deflate_all(zeros, Z_FULL_FLUSH);
    REQUIRE(block == again);
    const std::string end = deflate_all("", Z_FINISH);
    deflateEnd(&z);
    const uLong one = crc32(0L, reinterpret_cast<const Bytef*>(zeros.data()), static_cast<uInt>(zeros.size()));
    uLong crc = one;
    for (std::size_t i = 1; i < mib; ++i) crc = crc32_combine(crc, one, static_cast<z_off_t>(zeros.size()));
    std::string gz = {'\x1f', '\x8b', '\x08', '\0', '\0', '\0', '\0', '\0', '\x02', '\x03'};  // gzip, deflate, no name, OS Unix
    gz.reserve(gz.size() + block.size() * mib + end.size() + 8);
    for (std::size_t i = 0; i < mib; ++i) gz += block;
    gz += end;
    const std::uint64_t isize = (std::uint64_t{mib} << 20) & 0xffffffffu;
    for (const std::uint64_t v : {static_cast<std::uint64_t>(crc), isize})
        for (int b = 0; b < 4; ++b) gz += static_cast<char>((v >> (8 * b)) & 0xff);
    return gz;
}

// Sends `body` with Transfer-Encoding: chunked, so that no Content-Length announces its size.
Reply chunked(std::string body) {
    Reply r(200, std::move(body));
    r.raw = [r](Poco::Net::HTTPServerRequest&, Poco::Net::HTTPServerResponse& response) {
        response.setContentType(r.content_type);
        response.setChunkedTransferEncoding(true);
        response.setKeepAlive(false);
        std::ostream& out = response.send();
        for (std::size_t i = 0; i < r.body.size() && out; i += 1 << 16)
            out.write(r.body.data() + i, static_cast<std::streamsize>(std::min<std::size_t>(1 << 16, r.body.size() - i)));
        out.flush();
    };
    return r;
}

const std::string kSafeTransaction =
    R"({"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"DetectedIssue","status":"final"},)"
    R"("request":{"method":"POST","url":"DetectedIssue","ifNoneExist":"identifier=urn:test|di-1"}},)"
    R"({"resource":{"resourceType":"DetectedIssue","id":"d2","status":"cancelled"},)"
    R"("request":{"method":"PUT","url":"DetectedIssue/d2","ifMatch":"W/\"3\""}}]})";
const std::string kTransactionResponse =
    R"({"resourceType":"Bundle","type":"transaction-response","entry":[{"response":{"status":"201 Created"}},{"response":{"status":"200 OK"}}]})";

// A server that answers 503 to everything.
std::unique_ptr<ScriptServer> always_503() {
    return std::make_unique<ScriptServer>([](const Seen&, std::size_t) { return Reply{503}; });
}

}  // namespace

TEST_CASE("every transient fault of a read is retried, then the read succeeds; with no retries left each has its kind") {
    using namespace std::chrono;
    const auto now = sys_days(year(2026) / March / 2) + hours(10);
    const std::string patient = R"({"resourceType":"Patient","id":"p1","name":[{"family":")" + std::string(200, 'x') + R"("}]})";
    struct Fault {
        std::string name;
        Reply reply;
        milliseconds wait;  // before the retry
        FhirErrorKind kind;  // of the error when it is not retried
        long status;
    };
    const milliseconds backoff(100);
    const std::vector<Fault> faults = {
        {"503", {503, outcome("transient", "busy")}, backoff, FhirErrorKind::http_status, 503},
        {"500", {500, outcome("exception", "boom")}, backoff, FhirErrorKind::http_status, 500},
        {"502 with HTML", {502, "<html><body>bad gateway</body></html>", {}, "text/html"}, backoff, FhirErrorKind::http_status, 502},
        {"504", {504}, backoff, FhirErrorKind::http_status, 504},
        {"408", {408}, backoff, FhirErrorKind::http_status, 408},
        {"429 with Retry-After seconds", {429, "", {{"Retry-After", "7"}}}, milliseconds(7000), FhirErrorKind::http_status, 429},
        {"429 with Retry-After HTTP-date", {429, "", {{"Retry-After", "Mon, 02 Mar 2026 10:00:03 GMT"}}}, milliseconds(3000),
         FhirErrorKind::http_status, 429},
        {"503 with Retry-After over max_backoff", {503, "", {{"Retry-After", "120"}}}, milliseconds(60000), FhirErrorKind::http_status, 503},
        {"connection reset mid-body", Reply::reset_after(200, patient, 40), backoff, FhirErrorKind::transport, 0},
        {"Content-Length longer than the body sent", Reply::cut_short(200, patient, 40), backoff, FhirErrorKind::transport, 0},
        {"no answer at all", Reply::no_answer(), backoff, FhirErrorKind::transport, 0},
        {"truncated JSON with 200", {200, patient.substr(0, 40)}, backoff, FhirErrorKind::bad_body, 200},
        {"malformed JSON with 200", {200, R"({"resourceType":"Patient",,"id":"p1"})"}, backoff, FhirErrorKind::bad_body, 200},
        {"HTML with 200", {200, "<html><body>Service Unavailable</body></html>", {}, "text/html"}, backoff, FhirErrorKind::bad_body, 200},
        {"HTML with 200 labelled FHIR JSON", {200, "<!DOCTYPE html><html></html>"}, backoff, FhirErrorKind::bad_body, 200},
        {"JSON that is not a resource with 200", {200, R"({"error":"busy"})"}, backoff, FhirErrorKind::bad_body, 200},
        {"empty body with 200", {200, ""}, backoff, FhirErrorKind::bad_body, 200},
    };
    // One server for all: Patient/f<i> gets fault i first and then the patient; Patient/once<i> gets
    // fault i always. Each client is new, so each starts on a new connection.
    auto counts = std::make_shared<std::map<std::string, int>>();
    auto server = std::make_unique<ScriptServer>([&faults, counts, patient](const Seen& s, std::size_t) {
        for (std::size_t i = 0; i < faults.size(); ++i) {
            if (s.uri == "/fhir/Patient/once" + std::to_string(i)) return faults[i].reply;
            if (s.uri == "/fhir/Patient/f" + std::to_string(i)) return (*counts)[s.uri]++ == 0 ? faults[i].reply : Reply{200, patient};
        }
        return Reply{404, outcome("not-found", s.uri)};
    });
    for (std::size_t i = 0; i < faults.size(); ++i) {
        const Fault& f = faults[i];
        CAPTURE(f.name);
        Sleeps sleeps;
        auto o = options_for(server->base_url(), sleeps);
        o.jitter = Jitter::none;
        o.initial_backoff = backoff;
        o.max_backoff = milliseconds(60000);
        o.now = [now] { return now; };
        FhirClient client(o);
        const std::string target = "Patient/f" + std::to_string(i);
        const auto d = client.get_resource(target);
        CHECK(std::string(d["id"].GetString()) == "p1");
        CHECK(client.stats().requests == 2);
        CHECK(client.stats().retries == 1);
        CHECK(sleeps.waits == std::vector<milliseconds>{f.wait});
        CHECK((*counts)["/fhir/" + target] == 2);

        // The same fault with max_retries = 0: an error of the fault's kind, transient.
        o.max_retries = 0;
        FhirClient no_retry(o);
        const std::string once = "Patient/once" + std::to_string(i);
        const auto e = error_of([&] { no_retry.get_resource(once); });
        CHECK(e.kind() == f.kind);
        CHECK(e.status() == f.status);
        CHECK(e.transient());
        CHECK_MESSAGE(std::string(e.what()).rfind("GET " + server->base_url() + "/" + once + ": ", 0) == 0, std::string(e.what()));
        CHECK(no_retry.stats().requests == 1);
        if (f.name == "connection reset mid-body") CHECK_MESSAGE(contains(e.what(), ": connection broken: "), std::string(e.what()));
    }
    const auto seen = server->seen();
    CHECK(seen.size() == 3 * faults.size());
    CHECK(std::all_of(seen.begin(), seen.end(), [](const Seen& s) { return s.method == "GET"; }));
}

TEST_CASE("a bad body is retried until max_retries, then fails with the message naming the request") {
    auto server = ScriptServer::sequence({{200, "<html><body>maintenance</body></html>", {}, "text/html"},
                                          {200, R"({"resourceType":"Patient")"},
                                          {200, "<html><body>maintenance</body></html>", {}, "text/html"},
                                          {200, kPatient}});
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.max_retries = 2;
    FhirClient client(o);
    const auto e = error_of([&] { client.get_resource("Patient/p1"); });
    CHECK(std::string(e.what()) == "GET " + server->base_url() +
                                       "/Patient/p1: HTTP 200 after 3 attempts but the body is HTML, not FHIR JSON: "
                                       "\"<html><body>maintenance</body></html>\"");
    CHECK(e.kind() == FhirErrorKind::bad_body);
    CHECK(e.status() == 200);
    CHECK(server->seen().size() == 3);
    CHECK(client.stats().retries == 2);
    // get() itself does not look at the body: a 200 is a 200.
    CHECK(client.get("Patient/p1").status == 200);
}

TEST_CASE("search retries a page that is cut short or not a searchset; on_page sees only good pages") {
    auto server = ScriptServer::sequence({
        {200, searchset("Observation?page=2", {"a"})},
        Reply::cut_short(200, searchset("", {"b"}), 30),
        {200, R"({"resourceType":"Bundle","type":"searchset","entry":[{"resource":)"},
        {200, kPatient},
        {200, R"({"resourceType":"Bundle","type":"collection"})"},
        {200, searchset("", {"b"})},
    });
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.jitter = Jitter::none;
    o.initial_backoff = milliseconds(100);
    FhirClient client(o);
    std::vector<std::string> ids;
    const auto pages = client.search("Observation", [&](const rapidjson::Document& page) {
        for (const auto& entry : page["entry"].GetArray()) ids.emplace_back(entry["resource"]["id"].GetString());
    });
    CHECK(pages == 2);
    CHECK(ids == std::vector<std::string>{"a", "b"});
    CHECK(sleeps.waits == std::vector<milliseconds>{milliseconds(100), milliseconds(200), milliseconds(400), milliseconds(800)});
    const auto seen = server->seen();
    REQUIRE(seen.size() == 6);
    CHECK(seen[0].uri == "/fhir/Observation");
    for (std::size_t i = 1; i < seen.size(); ++i) CHECK(seen[i].uri == "/fhir/Observation?page=2");
}

TEST_CASE("a 4xx other than 429 and 408 is not retried") {
    auto four = std::make_unique<ScriptServer>([](const Seen& s, std::size_t) {
        if (s.method == "GET") return Reply{std::stoi(s.uri.substr(s.uri.rfind('/') + 1)), outcome("invalid", "no")};
        return Reply{200, kPatient};
    });
    for (const int status : {400, 401, 403, 404, 405, 409, 410, 412, 422}) {
        CAPTURE(status);
        Sleeps sleeps;
        FhirClient client(options_for(four->base_url(), sleeps));
        const std::size_t before = four->seen().size();
        const std::string target = "Patient/" + std::to_string(status);
        const auto e = error_of([&] { client.get_resource(target); });
        CHECK(e.status() == status);
        CHECK(e.kind() == FhirErrorKind::http_status);
        CHECK_FALSE(e.transient());
        CHECK(contains(e.what(), "GET " + four->base_url() + "/" + target + ": HTTP " + std::to_string(status) + ": OperationOutcome"));
        CHECK(client.get(target).status == status);  // get() returns it as it is, also without a retry
        CHECK(client.put("Patient/p1", kPatient).status == 200);
        CHECK(four->seen().size() == before + 3);
        CHECK(client.stats().retries == 0);
        CHECK(sleeps.waits.empty());
    }
    // Nor for a transaction sent as Replay::safe.
    auto server = ScriptServer::sequence({{412, outcome("conflict", "version mismatch")}, {200, kTransactionResponse}});
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));
    const auto e = error_of([&] { client.transaction(kSafeTransaction, Replay::safe); });
    CHECK(e.status() == 412);
    CHECK(e.kind() == FhirErrorKind::http_status);
    CHECK(server->seen().size() == 1);
}

TEST_CASE("jitter: full in [0, d), equal in [d/2, d), none exactly d, from the injected random; Retry-After is not jittered") {
    // d: 1000, 2000, 4000, 8000, 8000 (initial 1000, max 8000); r: 0, 0.5, 0.999999, 0.25, and 7 clamped below 1.
    const std::vector<double> r = {0.0, 0.5, 0.999999, 0.25, 7.0};
    struct Case {
        Jitter jitter;
        std::vector<milliseconds> waits;
    };
    const std::vector<Case> cases = {
        {Jitter::full, {milliseconds(0), milliseconds(1000), milliseconds(3999), milliseconds(2000), milliseconds(7999)}},
        {Jitter::equal, {milliseconds(500), milliseconds(1500), milliseconds(3999), milliseconds(5000), milliseconds(7999)}},
        {Jitter::none, {milliseconds(1000), milliseconds(2000), milliseconds(4000), milliseconds(8000), milliseconds(8000)}},
    };
    for (const auto& c : cases) {
        CAPTURE(static_cast<int>(c.jitter));
        auto server = always_503();
        Sleeps sleeps;
        auto o = options_for(server->base_url(), sleeps);
        o.max_retries = 5;
        o.initial_backoff = milliseconds(1000);
        o.max_backoff = milliseconds(8000);
        o.jitter = c.jitter;
        o.random = random_values(r);
        FhirClient client(o);
        const Response resp = client.get("Patient/p1");
        CHECK(resp.status == 503);
        CHECK(resp.attempts == 6);
        CHECK(sleeps.waits == c.waits);
    }

    // The default randomness (a seeded generator per client) stays in the bounds too.
    auto server = always_503();
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.max_retries = 6;
    o.initial_backoff = milliseconds(1000);
    o.max_backoff = milliseconds(16000);
    FhirClient client(o);  // Jitter::equal by default
    CHECK(client.get("Patient/p1").status == 503);
    REQUIRE(sleeps.waits.size() == 6);
    for (std::size_t i = 0; i < sleeps.waits.size(); ++i) {
        const long long d = std::min<long long>(1000LL << i, 16000);
        CAPTURE(i);
        CHECK(sleeps.waits[i].count() >= d / 2);
        CHECK(sleeps.waits[i].count() < d);
    }

    // What the server asked for is waited as asked.
    auto asked = ScriptServer::sequence({{503, "", {{"Retry-After", "3"}}}, {200, kPatient}});
    Sleeps exact;
    auto a = options_for(asked->base_url(), exact);
    a.jitter = Jitter::full;
    a.random = [] { return 0.0; };
    FhirClient honest(a);
    CHECK(honest.get("Patient/p1").status == 200);
    CHECK(exact.waits == std::vector<milliseconds>{milliseconds(3000)});
}

TEST_CASE("fault budget: the retries of all requests together; when spent, kind budget_spent at once; reset_fault_budget") {
    auto counts = std::make_shared<std::map<std::string, int>>();
    auto server = std::make_unique<ScriptServer>([counts](const Seen& s, std::size_t) {
        const int n = (*counts)[s.uri]++;
        if (s.uri == "/fhir/Patient/down" || (contains(s.uri, "flaky") && n == 0)) return Reply{503, outcome("transient", "busy")};
        return Reply{200, kPatient};
    });
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.fault_budget = 3;
    FhirClient client(o);
    CHECK(client.faults_left() == 3);

    client.get_resource("Patient/flaky-1");  // one retry
    CHECK(client.faults_left() == 2);

    // Two more retries spend the budget; the third would-be retry is refused at once.
    auto e = error_of([&] { client.get_resource("Patient/down"); });
    CHECK(e.kind() == FhirErrorKind::budget_spent);
    CHECK(e.transient());
    CHECK(e.status() == 503);
    CHECK(std::string(e.what()) == "GET " + server->base_url() +
                                       "/Patient/down: HTTP 503: OperationOutcome: error (transient): busy; not retried: fault budget of "
                                       "3 retries spent");
    CHECK((*counts)["/fhir/Patient/down"] == 3);
    CHECK(client.faults_left() == 0);
    CHECK(sleeps.waits.size() == 3);

    // Spent: a request that needs no retry still works, one that does fails at its first fault.
    CHECK(std::string(client.get_resource("Patient/ok")["id"].GetString()) == "p1");
    e = error_of([&] { client.get_resource("Patient/flaky-2"); });
    CHECK(e.kind() == FhirErrorKind::budget_spent);
    CHECK(contains(e.what(), "/Patient/flaky-2: HTTP 503"));
    CHECK(contains(e.what(), "fault budget of 3 retries spent"));
    CHECK((*counts)["/fhir/Patient/flaky-2"] == 1);
    // get() too: the retry it would make is refused rather than the 503 returned.
    CHECK(error_of([&] { client.get("Patient/down"); }).kind() == FhirErrorKind::budget_spent);
    CHECK(sleeps.waits.size() == 3);

    // A new pass.
    client.reset_fault_budget();
    CHECK(client.faults_left() == 3);
    CHECK(std::string(client.get_resource("Patient/flaky-3")["id"].GetString()) == "p1");
    CHECK(client.faults_left() == 2);
    CHECK(client.stats().retries == 4);

    // 0: unlimited.
    auto u = options_for(server->base_url(), sleeps);
    FhirClient unlimited(u);
    CHECK(unlimited.faults_left() == std::numeric_limits<std::uint64_t>::max());
    unlimited.get_resource("Patient/flaky-4");
    CHECK(unlimited.faults_left() == std::numeric_limits<std::uint64_t>::max());
}

TEST_CASE("request_deadline bounds one request with its retries and waits") {
    auto server = always_503();
    FakeTime time;
    Sleeps unused;
    auto o = options_for(server->base_url(), unused);
    time.install(o);
    o.jitter = Jitter::none;
    o.initial_backoff = milliseconds(1000);
    o.max_backoff = milliseconds(60000);
    o.max_retries = 10;
    o.request_deadline = milliseconds(5000);
    FhirClient client(o);
    auto e = error_of([&] { client.get_resource("Patient/p1"); });
    CHECK(e.kind() == FhirErrorKind::deadline);
    CHECK(e.transient());
    CHECK(e.status() == 503);
    // 1000 + 2000 waited; 4000 more would end after 5000.
    CHECK(time.waits == std::vector<milliseconds>{milliseconds(1000), milliseconds(2000)});
    CHECK(std::string(e.what()) == "GET " + server->base_url() +
                                       "/Patient/p1: HTTP 503; not retried: waiting 4000 ms would pass the request_deadline of 5000 ms "
                                       "(3000 ms spent in 3 attempts)");
    CHECK(server->seen().size() == 3);

    // Each request has its own deadline.
    e = error_of([&] { client.get("Patient/p2"); });
    CHECK(e.kind() == FhirErrorKind::deadline);
    CHECK(time.waits.size() == 4);
    CHECK(server->seen().size() == 6);

    // A Retry-After that would pass the deadline is not waited for.
    auto later = ScriptServer::sequence({{429, "", {{"Retry-After", "30"}}}, {200, kPatient}});
    o.base_url = later->base_url();
    FhirClient patient(o);
    e = error_of([&] { patient.get_resource("Patient/p1"); });
    CHECK(e.kind() == FhirErrorKind::deadline);
    CHECK(contains(e.what(), "HTTP 429; not retried: waiting 30000 ms would pass the request_deadline of 5000 ms (0 ms spent in 1 attempt)"));
    CHECK(later->seen().size() == 1);
}

TEST_CASE("request_deadline cuts the attempt's timeout (real time: the server waits)") {
    auto server = std::make_unique<ScriptServer>([](const Seen&, std::size_t) { return Reply(200, kPatient).delayed(milliseconds(5000)); });
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.request_timeout = milliseconds(10000);
    o.request_deadline = milliseconds(300);
    FhirClient client(o);
    const auto started = std::chrono::steady_clock::now();
    const auto e = error_of([&] { client.get_resource("Patient/p1"); });
    const auto took = std::chrono::steady_clock::now() - started;
    CHECK(e.kind() == FhirErrorKind::deadline);
    CHECK(e.status() == 0);
    CHECK_MESSAGE(contains(e.what(), "GET " + server->base_url() + "/Patient/p1: timed out: "), std::string(e.what()));
    CHECK_MESSAGE(contains(e.what(), "; the request_deadline of 300 ms passed after 1 attempt"), std::string(e.what()));
    CHECK(took < std::chrono::milliseconds(3000));
    CHECK(server->seen().size() == 1);
    CHECK(sleeps.waits.empty());
}

TEST_CASE("end_by bounds every request of the client together (the CDS call's deadline)") {
    auto server = always_503();
    FakeTime time;
    Sleeps unused;
    auto o = options_for(server->base_url(), unused);
    time.install(o);
    o.jitter = Jitter::none;
    o.initial_backoff = milliseconds(1000);
    o.max_backoff = milliseconds(1000);
    o.max_retries = 10;
    o.request_deadline = milliseconds(60000);  // longer: end_by decides
    o.end_by = time.t + milliseconds(2500);
    FhirClient client(o);
    auto e = error_of([&] { client.get_resource("Patient/p1"); });
    CHECK(e.kind() == FhirErrorKind::deadline);
    CHECK(time.waits == std::vector<milliseconds>{milliseconds(1000), milliseconds(1000)});
    CHECK_MESSAGE(contains(e.what(), "not retried: waiting 1000 ms would pass the caller's deadline (2000 ms spent in 3 attempts)"),
                  std::string(e.what()));
    // The next request of the same client has nothing left: refused before any attempt.
    time.t += milliseconds(600);
    const auto before = server->seen().size();
    e = error_of([&] { client.get_resource("Patient/p2"); });
    CHECK(e.kind() == FhirErrorKind::deadline);
    CHECK_MESSAGE(contains(e.what(), "the caller's deadline passed before attempt 1"), std::string(e.what()));
    CHECK(server->seen().size() == before);
}

TEST_CASE("transaction: Replay::safe is retried after a lost answer; Replay::unsafe is not, with kind transport or bad_body") {
    {
        auto server = ScriptServer::sequence({
            Reply::no_answer(),                                      // sent, no answer
            {502},                                                   // a gateway that may have forwarded it
            Reply::cut_short(200, kTransactionResponse, 20),         // the answer cut short
            {200, kTransactionResponse.substr(0, 40)},               // truncated JSON
            {500, outcome("exception", "deadlock")},
            {200, kTransactionResponse},
        });
        Sleeps sleeps;
        auto o = options_for(server->base_url(), sleeps);
        o.max_retries = 5;
        FhirClient client(o);
        const auto result = client.transaction(kSafeTransaction, Replay::safe);
        CHECK(std::string(result["type"].GetString()) == "transaction-response");
        CHECK(result["entry"].Size() == 2);
        CHECK(client.stats().retries == 5);
        const auto seen = server->seen();
        REQUIRE(seen.size() == 6);
        for (const auto& s : seen) {
            CHECK(s.method == "POST");
            CHECK(s.uri == "/fhir");
            CHECK(s.body == kSafeTransaction);
        }
    }
    {
        auto server = ScriptServer::sequence({
            Reply::no_answer(),
            Reply::cut_short(200, kTransactionResponse, 20),
            {200, "<html><body>proxy error</body></html>", {}, "text/html"},
            {502},
            {503},  // not processed: retried even so
            {200, kTransactionResponse},
        });
        Sleeps sleeps;
        FhirClient client(options_for(server->base_url(), sleeps));
        const std::string request = "POST " + server->base_url() + ": ";
        auto e = error_of([&] { client.transaction(kSafeTransaction); });  // Replay::unsafe by default
        CHECK(e.kind() == FhirErrorKind::transport);
        CHECK(e.status() == 0);
        CHECK(std::string(e.what()) == request + "no answer: Server returned nothing (no headers, no data) (Empty reply from server)");
        CHECK(server->seen().size() == 1);

        e = error_of([&] { client.transaction(kSafeTransaction, Replay::unsafe); });
        CHECK(e.kind() == FhirErrorKind::transport);
        CHECK_MESSAGE(std::string(e.what()).rfind(request + "the body was cut short: Transferred a partial file", 0) == 0, std::string(e.what()));
        CHECK(server->seen().size() == 2);

        e = error_of([&] { client.transaction(kSafeTransaction, Replay::unsafe); });
        CHECK(e.kind() == FhirErrorKind::bad_body);
        CHECK(e.status() == 200);
        CHECK(contains(e.what(), request + "HTTP 200 but the body is HTML"));
        CHECK(server->seen().size() == 3);

        e = error_of([&] { client.transaction(kSafeTransaction, Replay::unsafe); });
        CHECK(e.kind() == FhirErrorKind::http_status);
        CHECK(e.status() == 502);
        CHECK(e.transient());
        CHECK(server->seen().size() == 4);

        CHECK(std::string(client.transaction(kSafeTransaction, Replay::unsafe)["type"].GetString()) == "transaction-response");
        CHECK(server->seen().size() == 6);
        CHECK(client.stats().retries == 1);
    }
    {
        // A batch may be safe too; a Bundle that cannot be replayed is refused as Replay::safe before sending.
        auto server = ScriptServer::sequence({Reply::no_answer(), {200, R"({"resourceType":"Bundle","type":"batch-response"})"}});
        Sleeps sleeps;
        FhirClient client(options_for(server->base_url(), sleeps));
        std::string batch = kSafeTransaction;
        batch.replace(batch.find("\"transaction\""), 13, "\"batch\"");
        CHECK(std::string(client.transaction(batch, Replay::safe)["type"].GetString()) == "batch-response");
        CHECK(server->seen().size() == 2);

        auto e = error_of([&] {
            client.transaction(R"({"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient"},)"
                               R"("request":{"method":"POST","url":"Patient"}}]})",
                               Replay::safe);
        });
        CHECK(e.kind() == FhirErrorKind::refused);
        CHECK_FALSE(e.transient());
        CHECK(std::string(e.what()) == "POST " + server->base_url() +
                                           ": Bundle.entry[0] is a POST without ifNoneExist: sent twice it would create twice, so the "
                                           "Bundle is not Replay::safe");
        e = error_of([&] {
            client.transaction(R"({"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"PATCH","url":"Patient/1"}}]})",
                               Replay::safe);
        });
        CHECK(e.kind() == FhirErrorKind::refused);
        CHECK(contains(e.what(), "Bundle.entry[0] is a PATCH"));
        CHECK(server->seen().size() == 2);
    }
}

TEST_CASE("a gzip bomb is stopped at max_response_bytes counted after decoding: kind too_large, memory bounded") {
    const auto bomb = std::make_shared<const std::string>(gzip_of_zeros(1024));  // inflates to 1 GiB
    CHECK(bomb->size() < 2 * 1024 * 1024);
    Reply reply(200);
    reply.raw = [bomb](Poco::Net::HTTPServerRequest&, Poco::Net::HTTPServerResponse& response) {
        response.setContentType("application/fhir+json");
        response.set("Content-Encoding", "gzip");
        response.setContentLength(static_cast<std::streamsize>(bomb->size()));  // well under the cap: only decoding tells
        response.setKeepAlive(false);
        std::ostream& out = response.send();
        for (std::size_t i = 0; i < bomb->size() && out; i += 1 << 16)
            out.write(bomb->data() + i, static_cast<std::streamsize>(std::min<std::size_t>(1 << 16, bomb->size() - i)));
        out.flush();
    };
    auto server = ScriptServer::sequence({reply, {200, kPatient}});
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));  // default max_response_bytes: 64 MiB
    const std::uint64_t before = rss_bytes();
    const auto e = error_of([&] { client.get_resource("Patient/p1"); });
    const std::uint64_t peak = peak_rss_bytes();
    CHECK(e.kind() == FhirErrorKind::too_large);
    CHECK_FALSE(e.transient());
    CHECK(std::string(e.what()) == "GET " + server->base_url() +
                                       "/Patient/p1: the response body is larger than max_response_bytes (67108864 bytes, counted after "
                                       "decoding); transfer aborted");
    CHECK(server->seen().size() == 1);  // not retried
    CHECK(client.stats().retries == 0);
    MESSAGE("RSS before " << before / (1024 * 1024) << " MiB, peak " << peak / (1024 * 1024) << " MiB");
    CHECK(peak > 0);
    CHECK(peak < before + std::uint64_t{300} * 1024 * 1024);
    // The client goes on.
    CHECK(std::string(client.get_resource("Patient/p1")["id"].GetString()) == "p1");
}

TEST_CASE("a body over max_response_bytes is refused: announced by Content-Length, or counted as it arrives") {
    const std::size_t cap = std::size_t{1} << 20;
    auto server = ScriptServer::sequence({
        {200, std::string(cap + 1, 'x')},      // Content-Length says too much
        chunked(std::string(cap + 1, 'x')),    // no Content-Length
        Reply(200, std::string(cap + 1, ' ') + kPatient).gzipped(),  // small compressed, too large decoded
        {200, std::string(cap, 'y')},          // exactly the cap
    });
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.max_response_bytes = cap;
    FhirClient client(o);
    const std::string base = server->base_url();

    auto e = error_of([&] { client.get("Patient/announced"); });
    CHECK(e.kind() == FhirErrorKind::too_large);
    CHECK(std::string(e.what()) == "GET " + base +
                                       "/Patient/announced: the server announced a body of 1048577 bytes, more than max_response_bytes "
                                       "(1048576 bytes); not read");
    e = error_of([&] { client.get("Patient/chunked"); });
    CHECK(e.kind() == FhirErrorKind::too_large);
    CHECK(std::string(e.what()) == "GET " + base +
                                       "/Patient/chunked: the response body is larger than max_response_bytes (1048576 bytes, counted "
                                       "after decoding); transfer aborted");
    e = error_of([&] { client.get_resource("Patient/gzip"); });
    CHECK(e.kind() == FhirErrorKind::too_large);
    CHECK(contains(e.what(), "/Patient/gzip: the response body is larger than max_response_bytes (1048576 bytes"));

    const Response exact = client.get("Patient/exact");
    CHECK(exact.status == 200);
    CHECK(exact.body.size() == cap);
    CHECK(server->seen().size() == 4);
    CHECK(client.stats().retries == 0);
}

TEST_CASE("FhirError: the kind follows from the status unless given; transient()") {
    CHECK(FhirError("m", 0).kind() == FhirErrorKind::transport);
    CHECK(FhirError("m", 200).kind() == FhirErrorKind::bad_body);
    CHECK(FhirError("m", 404).kind() == FhirErrorKind::http_status);
    CHECK(FhirError("m", 503).transient());
    CHECK(FhirError("m", 500).transient());
    CHECK(FhirError("m", 429).transient());
    CHECK(FhirError("m", 408).transient());
    CHECK_FALSE(FhirError("m", 404).transient());
    CHECK_FALSE(FhirError("m", 412).transient());
    CHECK(FhirError("m", 0).transient());
    CHECK(FhirError("m", 200).transient());
    CHECK(FhirError("m", 0, FhirErrorKind::deadline).transient());
    CHECK(FhirError("m", 503, FhirErrorKind::budget_spent).transient());
    CHECK_FALSE(FhirError("m", 0, FhirErrorKind::refused).transient());
    CHECK_FALSE(FhirError("m", 0, FhirErrorKind::too_large).transient());
    CHECK(FhirError("m", 0, FhirErrorKind::too_large).status() == 0);
}

// ---- what came back ----------------------------------------------------------------------------

TEST_CASE("errors name the request and say what came back") {
    const std::string long_html = "<html>\n<body>" + std::string(100, 'x') + "</body></html>";
    auto server = ScriptServer::sequence({
        {500, outcome("exception", "boom")},
        {200, "<html><body>502 Bad Gateway</body></html>", {}, "text/html"},
        {200, long_html, {}, "text/html"},
        {200, R"({"resourceType": "Patient", oops})"},
        {200, "[1, 2]"},
        {200, R"({"id": "x"})"},
        {404, ""},
        {502, "<html><body>bad gateway</body></html>", {}, "text/html"},
        {200, ""},
    });
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.max_retries = 0;
    FhirClient client(o);
    const std::string base = server->base_url();

    auto e = error_of([&] { client.get_resource("Observation?_count=2"); });
    CHECK(std::string(e.what()) == "GET " + base + "/Observation?_count=2: HTTP 500: OperationOutcome: error (exception): boom");
    CHECK(e.status() == 500);

    e = error_of([&] { client.get_resource("Patient/1"); });
    CHECK(std::string(e.what()) ==
          "GET " + base + "/Patient/1: HTTP 200 but the body is HTML, not FHIR JSON: \"<html><body>502 Bad Gateway</body></html>\"");
    CHECK(e.status() == 200);

    e = error_of([&] { client.get_resource("Patient/2"); });
    CHECK(std::string(e.what()) == "GET " + base + "/Patient/2: HTTP 200 but the body is HTML, not FHIR JSON: \"<html>\\n<body>" +
                                       std::string(67, 'x') + "...\"");

    e = error_of([&] { client.get_resource("Patient/3"); });
    CHECK_MESSAGE(contains(e.what(), "GET " + base + "/Patient/3: HTTP 200 but the body is not JSON (JSON parse error at byte offset 28 "),
                  e.what());

    e = error_of([&] { client.get_resource("Patient/4"); });
    CHECK(std::string(e.what()) == "GET " + base + "/Patient/4: HTTP 200 but the body is a JSON array, not a FHIR resource");

    e = error_of([&] { client.get_resource("Patient/5"); });
    CHECK(contains(e.what(), "HTTP 200 but the body is not a FHIR resource (no resourceType)"));

    e = error_of([&] { client.get_resource("Patient/6"); });
    CHECK(std::string(e.what()) == "GET " + base + "/Patient/6: HTTP 404");
    CHECK(e.status() == 404);

    e = error_of([&] { client.get_resource("Patient/7"); });
    CHECK(std::string(e.what()) == "GET " + base + "/Patient/7: HTTP 502: the body is HTML: \"<html><body>bad gateway</body></html>\"");

    e = error_of([&] { client.get_resource("Patient/8"); });
    CHECK(std::string(e.what()) == "GET " + base + "/Patient/8: HTTP 200 but the body is empty, not a FHIR resource");
}

TEST_CASE("a hostile answer is a clear error, not a crash: deep nesting, invalid UTF-8, a number out of range") {
    const std::string deep = R"({"resourceType":"Patient","x":)" + std::string(120000, '[') + std::string(120000, ']') + "}";
    auto server = ScriptServer::sequence({
        {200, deep},
        {200, "{\"resourceType\":\"Patient\",\"name\":\"\xff\xfe\"}"},
        {200, R"({"resourceType":"Observation","valueQuantity":{"value":2e308}})"},
        {200, "\xef\xbb\xbf{\"resourceType\":\"Patient\",\"id\":\"bom\"}"},
    });
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.max_retries = 0;
    FhirClient client(o);
    for (const char* expect : {"nested deeper than 100 levels", "UTF-8", "out of range"}) {
        CAPTURE(expect);
        const auto e = error_of([&] { client.get_resource("Patient/1"); });
        CHECK_MESSAGE(contains(e.what(), "HTTP 200 but the body is not JSON (JSON parse error at byte offset "), e.what());
        CHECK_MESSAGE(contains(e.what(), expect), e.what());
        CHECK(e.kind() == FhirErrorKind::bad_body);
        CHECK_FALSE(contains(e.what(), "\xff\xfe"));  // invalid bytes are never copied into a message
    }
    CHECK(std::string(client.get_resource("Patient/bom")["id"].GetString()) == "bom");  // a BOM is accepted
}

TEST_CASE("search and transaction insist on the Bundle type") {
    auto server = ScriptServer::sequence({
        {200, kPatient},
        {200, R"({"resourceType":"Bundle","type":"collection"})"},
        {200, R"({"resourceType":"Bundle","type":"searchset"})"},
    });
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.max_retries = 0;  // a wrong Bundle is retried (see "a bad body is retried ..."): here only the message
    FhirClient client(o);
    int pages = 0;
    auto e = error_of([&] { client.search("Patient?_id=p1", [&](const rapidjson::Document&) { ++pages; }); });
    CHECK(std::string(e.what()) == "GET " + server->base_url() + "/Patient?_id=p1: expected a Bundle, got Patient");
    e = error_of([&] { client.search("Patient", [&](const rapidjson::Document&) { ++pages; }); });
    CHECK(contains(e.what(), ": expected a searchset Bundle, got a Bundle with type collection"));
    e = error_of([&] {
        client.transaction(R"({"resourceType":"Bundle","type":"transaction","entry":[]})");
    });
    CHECK(std::string(e.what()) ==
          "POST " + server->base_url() + ": expected a transaction-response Bundle, got a Bundle with type searchset");
    CHECK(pages == 0);

    // The Bundle to send is checked before anything is sent.
    e = error_of([&] { client.transaction("not json"); });
    CHECK(e.status() == 0);
    CHECK_MESSAGE(contains(e.what(), "POST " + server->base_url() + ": the Bundle to send is not JSON (JSON parse error at offset "), std::string(e.what()));
    e = error_of([&] { client.transaction(R"({"resourceType":"Bundle","type":"collection"})"); });
    CHECK(contains(e.what(), "must be a Bundle of type transaction or batch"));
    CHECK(server->seen().size() == 3);
}

TEST_CASE("a gzip body is decoded") {
    auto server = ScriptServer::sequence({Reply(200, kPatient).gzipped()});
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));
    const Response r = client.get("Patient/p1");
    CHECK(r.status == 200);
    CHECK(r.headers.at("content-encoding") == "gzip");
    CHECK(r.body == kPatient);
    const auto seen = server->seen();
    REQUIRE(seen.size() == 1);
    CHECK(contains(seen[0].headers.at("accept-encoding"), "gzip"));
}

// ---- the request on the wire ---------------------------------------------------------------------

TEST_CASE("request headers; the bearer token reaches the server and never an error message") {
    const std::string token = "s3cret-token-4711";
    auto server = ScriptServer::sequence({
        {200, kPatient, {{"X-Custom", "one"}, {"x-custom", "two"}}},
        {201, kPatient},
        {401, outcome("login", "token " + token + " expired")},
        {200, "<html><body>Authorization: Bearer " + token + "</body></html>", {}, "text/html"},
    });
    Sleeps sleeps;
    auto o = options_for(server->base_url(), sleeps);
    o.bearer_token = token;
    o.user_agent = "calcalert-test/1";
    o.max_retries = 0;  // the HTML page with status 200 would be retried
    FhirClient client(o);

    const Response r = client.get("/Patient/p1");
    CHECK(r.headers.at("x-custom") == "two");
    CHECK(r.headers.at("content-type") == "application/fhir+json");
    CHECK(r.method == "GET");
    CHECK(r.url == server->base_url() + "/Patient/p1");
    CHECK(client.post("Patient", kPatient, {{"If-None-Exist", "identifier=urn:test|1"}, {"Prefer", "return=minimal"}}).status == 201);

    auto seen = server->seen();
    REQUIRE(seen.size() == 2);
    CHECK(seen[0].uri == "/fhir/Patient/p1");
    CHECK(seen[0].headers["authorization"] == "Bearer " + token);
    CHECK(seen[0].headers["accept"] == "application/fhir+json");
    CHECK(seen[0].headers["user-agent"] == "calcalert-test/1");
    CHECK(seen[0].headers.count("content-type") == 0);
    CHECK(seen[1].method == "POST");
    CHECK(seen[1].body == kPatient);
    CHECK(seen[1].headers["content-type"] == "application/fhir+json");
    CHECK(seen[1].headers["if-none-exist"] == "identifier=urn:test|1");
    CHECK(seen[1].headers["prefer"] == "return=minimal");
    CHECK(seen[1].headers["authorization"] == "Bearer " + token);
    CHECK(seen[1].headers.count("expect") == 0);

    auto e = error_of([&] { client.get_resource("Patient/p1"); });
    CHECK(e.status() == 401);
    CHECK(std::string(e.what()) == "GET " + server->base_url() + "/Patient/p1: HTTP 401: OperationOutcome: error (login): token [redacted] expired");
    e = error_of([&] { client.get_resource("Patient/p1"); });
    CHECK_FALSE(contains(e.what(), token));
    CHECK(contains(e.what(), "HTML"));

    // A transport error, a refused URL and a bad header do not carry it either.
    ClientOptions closed = o;
    closed.base_url = "http://127.0.0.1:" + std::to_string(closed_port()) + "/fhir";
    closed.max_retries = 0;
    FhirClient down(closed);
    e = error_of([&] { down.get("metadata"); });
    CHECK_FALSE(contains(e.what(), token));
    e = error_of([&] { client.get("http://127.0.0.2:1/fhir/metadata"); });
    CHECK_FALSE(contains(e.what(), token));
    e = error_of([&] { client.get("metadata", {{"Bad Name", "x"}}); });
    CHECK(contains(e.what(), "is not a valid HTTP field name"));
    e = error_of([&] { client.get("metadata", {{"X-Injected", "a\r\nAuthorization: other"}}); });
    CHECK(contains(e.what(), "the request header X-Injected has a line break"));
    CHECK(server->seen().size() == 4);
}

TEST_CASE("targets: relative paths, encoding, and absolute URLs on another origin are refused before connecting") {
    auto server = ScriptServer::sequence({{200, kPatient}, {200, kPatient}, {200, kPatient}});
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url() + "/", sleeps));
    CHECK(client.get("Patient?identifier=urn:test|1&name=Anna Maria").status == 200);
    CHECK(client.get(server->base_url() + "/metadata").status == 200);
    CHECK(client.get("").status == 200);

    auto e = error_of([&] { client.get("http://127.0.0.2:1/fhir/Patient"); });
    CHECK(e.status() == 0);
    CHECK(std::string(e.what()) == "GET http://127.0.0.2:1/fhir/Patient: refused: not on the FHIR server's origin " +
                                       server->origin() + " (the request would carry the bearer token to another server)");
    e = error_of([&] { client.get("https://127.0.0.1:" + std::to_string(server->port()) + "/fhir/Patient"); });
    CHECK(contains(e.what(), "refused"));
    e = error_of([&] { client.get("file:///etc/passwd"); });
    CHECK(contains(e.what(), "refused: not an http(s) URL"));
    e = error_of([&] { client.get("Patient\r\nX-Evil: 1"); });
    CHECK(std::string(e.what()) == "GET Patient\\r\\nX-Evil: 1: the URL has a control character at offset 7");

    const auto seen = server->seen();
    REQUIRE(seen.size() == 3);
    CHECK(seen[0].uri == "/fhir/Patient?identifier=urn:test%7C1&name=Anna%20Maria");
    CHECK(seen[1].uri == "/fhir/metadata");
    CHECK(seen[2].uri == "/fhir");
}

TEST_CASE("redirects: followed on the same origin, refused to another") {
    auto server = std::make_unique<ScriptServer>([](const Seen& s, std::size_t) {
        if (s.uri == "/fhir/Patient/old") return Reply{301, "", {{"Location", "/fhir/Patient/new"}}};
        if (s.uri == "/fhir/Patient/new") return Reply{200, kPatient};
        if (s.uri == "/fhir/Patient/away") return Reply{302, "", {{"Location", "http://127.0.0.2:1/fhir/Patient/p1"}}};
        return Reply{307, "", {{"Location", "/fhir/Patient/loop"}}};
    });
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));
    CHECK(std::string(client.get_resource("Patient/old")["id"].GetString()) == "p1");
    auto e = error_of([&] { client.get("Patient/away"); });
    CHECK(e.status() == 0);
    CHECK(contains(e.what(), "GET " + server->base_url() + "/Patient/away: redirect to http://127.0.0.2:1/fhir/Patient/p1 refused"));
    e = error_of([&] { client.get("Patient/loop"); });
    CHECK(contains(e.what(), "more than 5 redirects"));
    // A POST is never redirected: the response comes back as it is.
    CHECK(client.post("Patient/old", kPatient).status == 301);
    CHECK(server->seen().size() == 2 + 1 + 6 + 1);
}

TEST_CASE("one kept-alive connection for many requests") {
    auto server = std::make_unique<ScriptServer>([](const Seen&, std::size_t) { return Reply{200, kPatient}; });
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));
    for (int i = 0; i < 5; ++i) client.get_resource("Patient/p1");
    CHECK(client.post("Patient", kPatient).status == 200);
    CHECK(client.put("Patient/p1", kPatient).status == 200);
    CHECK(client.get("Patient/p1").status == 200);
    CHECK(client.stats().requests == 8);
    CHECK(client.stats().connections == 1);
}

// ---- paging ----------------------------------------------------------------------------------------

TEST_CASE("search follows relative, origin-relative and absolute next links") {
    std::string base;
    auto server = std::make_unique<ScriptServer>([&base](const Seen& s, std::size_t) {
        if (s.uri == "/fhir/Observation?code=x") return Reply{200, searchset("Observation?code=x&page=2", {"a", "b"})};
        if (s.uri == "/fhir/Observation?code=x&page=2") return Reply{200, searchset("/fhir/Observation?code=x&page=3", {"c"})};
        if (s.uri == "/fhir/Observation?code=x&page=3") return Reply{200, searchset(base + "/Observation?code=x&page=4", {"d"})};
        if (s.uri == "/fhir/Observation?code=x&page=4") return Reply{200, searchset("", {"e"})};
        return Reply{404, outcome("not-found", s.uri)};
    });
    base = server->base_url();
    Sleeps sleeps;
    FhirClient client(options_for(base, sleeps));
    std::vector<std::string> ids;
    const auto pages = client.search("Observation?code=x", [&](const rapidjson::Document& page) {
        for (const auto& entry : page["entry"].GetArray()) ids.emplace_back(entry["resource"]["id"].GetString());
    });
    CHECK(pages == 4);
    CHECK(ids == std::vector<std::string>{"a", "b", "c", "d", "e"});

    auto o = options_for(base, sleeps);
    o.max_pages = 2;
    FhirClient bounded(o);
    std::size_t seen_pages = 0;
    const auto e = error_of([&] { bounded.search("Observation?code=x", [&](const rapidjson::Document&) { ++seen_pages; }); });
    CHECK(seen_pages == 2);
    CHECK(std::string(e.what()) == "GET " + base + "/Observation?code=x&page=2: stopped after 2 pages (max_pages); the server still sends link[next]");
}

TEST_CASE("search refuses a next link to another origin without connecting to it") {
    auto server = ScriptServer::sequence({{200, searchset("http://127.0.0.2:1/fhir/Observation?page=2")}});
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));
    std::size_t pages = 0;
    const auto e = error_of([&] { client.search("Observation", [&](const rapidjson::Document&) { ++pages; }); });
    CHECK(pages == 1);
    CHECK(e.status() == 0);
    CHECK(std::string(e.what()) == "GET " + server->base_url() +
                                       "/Observation: link[next] http://127.0.0.2:1/fhir/Observation?page=2 refused: not on the FHIR "
                                       "server's origin " +
                                       server->origin() + " (following it would carry the bearer token to another server)");
    CHECK(client.stats().requests == 1);
    CHECK(server->seen().size() == 1);
}

TEST_CASE("search stops a next-link loop") {
    auto server = std::make_unique<ScriptServer>([](const Seen& s, std::size_t) {
        if (s.uri == "/fhir/Observation?a=1") return Reply{200, searchset("Observation?a=2")};
        return Reply{200, searchset("Observation?a=1")};
    });
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));
    std::size_t pages = 0;
    const auto e = error_of([&] { client.search("Observation?a=1", [&](const rapidjson::Document&) { ++pages; }); });
    CHECK(pages == 2);
    CHECK(std::string(e.what()) == "GET " + server->base_url() + "/Observation?a=2: link[next] " + server->base_url() +
                                       "/Observation?a=1 was already visited; the server's paging loops");
    CHECK(server->seen().size() == 2);
}

TEST_CASE("search rejects malformed links") {
    auto server = ScriptServer::sequence({
        {200, R"({"resourceType":"Bundle","type":"searchset","link":{"relation":"next"}})"},
        {200, R"({"resourceType":"Bundle","type":"searchset","link":[{"relation":"next","url":7}]})"},
    });
    Sleeps sleeps;
    FhirClient client(options_for(server->base_url(), sleeps));
    auto e = error_of([&] { client.search("Observation", [](const rapidjson::Document&) {}); });
    CHECK(contains(e.what(), "/Observation: Bundle.link is a JSON object, not an array"));
    e = error_of([&] { client.search("Observation", [](const rapidjson::Document&) {}); });
    CHECK(contains(e.what(), "/Observation: Bundle.link[0].url of the next link is missing or not a string"));
}

TEST_CASE("options are checked") {
    auto make = [](ClientOptions o) { FhirClient c(std::move(o)); };
    auto message = [&](ClientOptions o) -> std::string {
        try {
            make(std::move(o));
        } catch (const std::invalid_argument& e) {
            return e.what();
        }
        return "";
    };
    ClientOptions o;
    CHECK(contains(message(o), "the FHIR base URL is empty"));
    o.base_url = "127.0.0.1:8080/fhir";
    CHECK(contains(message(o), "is not an http:// or https:// URL"));
    o.base_url = "ftp://127.0.0.1/fhir";
    CHECK(contains(message(o), "is not an http:// or https:// URL"));
    o.base_url = "http://user:hunter2@127.0.0.1/fhir";
    const std::string m = message(o);
    CHECK(contains(m, "must not carry user:password@"));
    CHECK_FALSE(contains(m, "hunter2"));
    o.base_url = "ftp://user:hunter2@127.0.0.1/fhir";
    CHECK_FALSE(contains(message(o), "hunter2"));
    o.base_url = "http://127.0.0.1/fhir?x=1";
    CHECK(contains(message(o), "must not have a query"));
    o.base_url = "http://127.0.0.1/fhir";
    o.bearer_token = "abc\r\nX: y";
    CHECK(contains(message(o), "the bearer token contains a line break"));
    o.bearer_token = "";
    o.max_retries = -1;
    CHECK(contains(message(o), "max_retries is negative"));
    o.max_retries = 0;
    o.ca_file = "/nonexistent/ca.pem";
    CHECK(contains(message(o), "the CA file /nonexistent/ca.pem cannot be read"));
    o.ca_file = "";
    o.request_deadline = milliseconds(-1);
    CHECK(contains(message(o), "request_deadline is negative"));
    o.request_deadline = milliseconds(0);
    CHECK(message(o).empty());
}

// ---- against the sandbox FHIR server ----------------------------------------------------------------

namespace {

test::SandboxServer& sandbox() {
    static test::SandboxServer server;
    return server;
}

ClientOptions sandbox_options() {
    ClientOptions o;
    o.base_url = sandbox().base_url();
    o.max_retries = 2;
    o.initial_backoff = milliseconds(50);
    return o;
}

std::string str(const rapidjson::Value& v, const char* name) {
    const auto m = v.FindMember(name);
    REQUIRE(m != v.MemberEnd());
    REQUIRE(m->value.IsString());
    return m->value.GetString();
}

std::string observation(const std::string& subject, int day) {
    char date[32];
    std::snprintf(date, sizeof date, "2024-01-%02dT08:00:00Z", day);
    return R"({"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2777-1"}]},)"
           R"("subject":{"reference":")" +
           subject + R"("},"effectiveDateTime":")" + date +
           R"(","valueQuantity":{"value":)" + std::to_string(4 + day % 5) +
           R"(,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}})";
}

std::string detected_issue(const std::string& patient, const std::string& severity) {
    return R"({"resourceType":"DetectedIssue","identifier":[{"system":"urn:test","value":"di-1"}],"status":"final",)"
           R"("code":{"text":"Calciphylaxis risk"},"severity":")" +
           severity + R"(","patient":{"reference":")" + patient + R"("},"identifiedDateTime":"2024-01-04T00:00:00Z"})";
}

// All resource ids of a search, over every page.
std::vector<std::string> search_ids(FhirClient& client, const std::string& target, std::size_t* pages = nullptr) {
    std::vector<std::string> ids;
    const auto n = client.search(target, [&](const rapidjson::Document& page) {
        if (const auto e = page.FindMember("entry"); e != page.MemberEnd())
            for (const auto& entry : e->value.GetArray()) ids.push_back(str(entry["resource"], "id"));
    });
    if (pages) *pages = n;
    return ids;
}

}  // namespace

TEST_CASE("sandbox: transaction, paging through next links, _lastUpdated, keep-alive") {
    FhirClient client(sandbox_options());
    const std::string patient_urn = "urn:uuid:5b0c1a8e-4a6f-4a53-9d7e-000000000001";
    std::string tx = R"({"resourceType":"Bundle","type":"transaction","entry":[)";
    tx += R"({"fullUrl":")" + patient_urn +
          R"(","resource":{"resourceType":"Patient","identifier":[{"system":"urn:calcalert:test:mrn","value":"CLIENT-TX"}]},)"
          R"("request":{"method":"POST","url":"Patient"}})";
    for (int i = 1; i <= 12; ++i) {
        char urn[64];
        std::snprintf(urn, sizeof urn, "urn:uuid:5b0c1a8e-4a6f-4a53-9d7e-0000000001%02d", i);
        tx += std::string(R"(,{"fullUrl":")") + urn + R"(","resource":)" + observation(patient_urn, i) +
              R"(,"request":{"method":"POST","url":"Observation"}})";
    }
    tx += "]}";

    const auto result = client.transaction(tx);
    CHECK(str(result, "type") == "transaction-response");
    REQUIRE(result["entry"].Size() == 13);
    std::set<std::string> created;
    for (const auto& entry : result["entry"].GetArray()) {
        CHECK(str(entry["response"], "status").rfind("201", 0) == 0);
        if (str(entry["resource"], "resourceType") == "Observation") created.insert(str(entry["resource"], "id"));
    }
    REQUIRE(created.size() == 12);
    const std::string patient = "Patient/" + str(result["entry"][0]["resource"], "id");
    const std::string t0 = str(result["entry"][0]["resource"]["meta"], "lastUpdated");
    CHECK(str(result["entry"][1]["resource"]["subject"], "reference") == patient);

    std::size_t pages = 0;
    std::vector<std::size_t> page_sizes;
    const auto n = client.search("Observation?subject=" + patient + "&_count=5", [&](const rapidjson::Document& page) {
        page_sizes.push_back(page["entry"].Size());
        CHECK(page["total"].GetInt() == 12);
    });
    CHECK(n == 3);
    CHECK(page_sizes == std::vector<std::size_t>{5, 5, 2});
    const auto ids = search_ids(client, "Observation?subject=" + patient + "&_count=5", &pages);
    CHECK(pages == 3);
    CHECK(std::set<std::string>(ids.begin(), ids.end()) == created);
    CHECK(ids.size() == 12);

    // _lastUpdated: everything of the transaction is at or after t0; a later write is after t1.
    const auto since_t0 = search_ids(client, "Observation?subject=" + patient + "&_lastUpdated=ge" + t0);
    CHECK(std::set<std::string>(since_t0.begin(), since_t0.end()) == created);
    std::this_thread::sleep_for(milliseconds(20));
    const Response r = client.post("Observation", observation(patient, 13));
    CHECK(r.status == 201);
    const auto later = client.parse_resource(r);
    const std::string t1 = str(later["meta"], "lastUpdated");
    CHECK(t1 > t0);
    CHECK(search_ids(client, "Observation?subject=" + patient + "&_lastUpdated=ge" + t1) ==
          std::vector<std::string>{str(later, "id")});
    CHECK(search_ids(client, "Observation?subject=" + patient + "&_lastUpdated=lt" + t1 + "&_count=100").size() == 12);

    CHECK(client.stats().retries == 0);
    CHECK(client.stats().connections == 1);
}

TEST_CASE("sandbox: conditional create twice leaves one resource") {
    FhirClient client(sandbox_options());
    const std::string body = R"({"resourceType":"Patient","identifier":[{"system":"urn:test","value":"1"}],"name":[{"family":"Once"}]})";
    const Response first = client.post("Patient", body, {{"If-None-Exist", "identifier=urn:test|1"}});
    CHECK(first.status == 201);
    const Response second = client.post("Patient", body, {{"If-None-Exist", "identifier=urn:test|1"}});
    CHECK(second.status == 200);
    CHECK(str(client.parse_resource(first), "id") == str(client.parse_resource(second), "id"));
    CHECK(search_ids(client, "Patient?identifier=urn:test|1").size() == 1);
}

TEST_CASE("sandbox: conditional update creates, then updates with a new versionId") {
    FhirClient client(sandbox_options());
    const Response p = client.post("Patient", R"({"resourceType":"Patient","name":[{"family":"Issue"}]})");
    const std::string patient = "Patient/" + str(client.parse_resource(p), "id");

    const Response created = client.put("DetectedIssue?identifier=urn:test|di-1", detected_issue(patient, "high"));
    CHECK(created.status == 201);
    const auto v1 = client.parse_resource(created);
    const Response updated = client.put("DetectedIssue?identifier=urn:test|di-1", detected_issue(patient, "moderate"));
    CHECK(updated.status == 200);
    const auto v2 = client.parse_resource(updated);
    CHECK(str(v1, "id") == str(v2, "id"));
    CHECK(str(v1["meta"], "versionId") != str(v2["meta"], "versionId"));

    const auto read = client.get_resource("DetectedIssue/" + str(v1, "id"));
    CHECK(str(read, "severity") == "moderate");
    CHECK(str(read["meta"], "versionId") == str(v2["meta"], "versionId"));
    CHECK(search_ids(client, "DetectedIssue?identifier=urn:test|di-1").size() == 1);
}

TEST_CASE("sandbox: an invalid resource, an unknown one and a bad search give FhirError with the OperationOutcome") {
    FhirClient client(sandbox_options());
    const std::string base = sandbox().base_url();

    const Response bad = client.post("Observation", R"({"resourceType":"Observation","status":"not-a-status","code":{"text":"x"}})");
    CHECK(bad.status == 400);
    rapidjson::Document oo;
    oo.Parse(bad.body.c_str());
    REQUIRE(oo.IsObject());
    const auto issues = calcalert::fhir::operation_outcome_issues(oo);
    REQUIRE_FALSE(issues.empty());
    auto e = error_of([&] { client.parse_resource(bad); });
    CHECK(e.status() == 400);
    CHECK_MESSAGE(std::string(e.what()).rfind("POST " + base + "/Observation: HTTP 400: OperationOutcome: " + issues[0], 0) == 0, std::string(e.what()));
    MESSAGE(std::string(e.what()));

    // The same resource in a transaction: all or nothing, and the error names the transaction POST.
    e = error_of([&] {
        client.transaction(R"({"resourceType":"Bundle","type":"transaction","entry":[{"resource":)"
                           R"({"resourceType":"Observation","status":"not-a-status","code":{"text":"x"}},)"
                           R"("request":{"method":"POST","url":"Observation"}}]})");
    });
    CHECK(e.status() >= 400);
    CHECK(e.status() < 500);
    CHECK_MESSAGE(std::string(e.what()).rfind("POST " + base + ": HTTP 4", 0) == 0, std::string(e.what()));
    CHECK(contains(e.what(), "OperationOutcome: error"));

    e = error_of([&] { client.get_resource("Patient/does-not-exist"); });
    CHECK(e.status() == 404);
    CHECK_MESSAGE(std::string(e.what()).rfind("GET " + base + "/Patient/does-not-exist: HTTP 404: OperationOutcome: error (not-found)", 0) == 0,
                  e.what());

    e = error_of([&] { client.search("Observation?value-quantity=5", [](const rapidjson::Document&) {}); });
    CHECK(e.status() == 400);
    CHECK(contains(e.what(), "GET " + base + "/Observation?value-quantity=5: HTTP 400: OperationOutcome: "));
}

namespace {

// tests/support/https-server.mjs in a process of its own, with a certificate made for 127.0.0.1 in
// a temporary directory; stopped (and the directory removed) at the end of its scope. `ok` is false,
// with `why`, when node or openssl is missing.
struct HttpsServer {
    test::TempDir dir;
    pid_t pid = -1;
    int port = 0;
    bool ok = false;
    std::string why;

    explicit HttpsServer(bool http1_only) : dir(http1_only ? "https1" : "https2") {
        const std::string cert = (dir.path / "cert.pem").string(), key = (dir.path / "key.pem").string();
        const std::string port_file = (dir.path / "port").string();
        const auto made = test::run_shell("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "
                                          "/CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout '" + key + "' -out '" +
                                          cert + "'");
        if (made.first != 0) {
            why = "openssl cannot make a certificate: " + made.second.substr(0, 200);
            return;
        }
        auto [found, node] = test::run_shell("command -v node");
        while (!node.empty() && (node.back() == '\n' || node.back() == '\r')) node.pop_back();
        if (found != 0 || node.empty()) {
            why = "node is not on PATH";
            return;
        }
        // Everything the child needs is prepared before fork(): after it, only execv.
        std::vector<std::string> args = {node, std::string(CALCALERT_TEST_DIR) + "/support/https-server.mjs", cert, key,
                                         port_file};
        if (http1_only) args.emplace_back("--http1");
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        pid = ::fork();
        if (pid == 0) {
            ::setpgid(0, 0);
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
        for (int i = 0; i < 200 && port == 0; ++i) {
            std::ifstream in(port_file);
            if (!(in >> port)) port = 0;
            if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        ok = port != 0;
        if (!ok) why = "the HTTPS server did not start";
    }
    ~HttpsServer() {
        if (pid > 0) {
            ::kill(pid, SIGTERM);
            if (!test::reap_within(pid, std::chrono::seconds(5))) {
                ::kill(pid, SIGKILL);
                test::reap_within(pid, std::chrono::seconds(5));
            }
        }
    }
    HttpsServer(const HttpsServer&) = delete;
    HttpsServer& operator=(const HttpsServer&) = delete;

    std::string base() const { return "https://127.0.0.1:" + std::to_string(port) + "/fhir"; }
    std::string cert() const { return (dir.path / "cert.pem").string(); }
};

// The server's answer: (HTTP version, connection number).
std::pair<std::string, int> version_and_connection(const calcalert::fhir::Response& r) {
    rapidjson::Document d;
    d.Parse(r.body.data(), r.body.size());
    REQUIRE(d.IsObject());
    return {d["parameter"][0]["valueString"].GetString(), d["parameter"][1]["valueInteger"].GetInt()};
}

}  // namespace

TEST_CASE("HTTPS: HTTP/2 where the server offers it, one connection for many requests; HTTP/1.1 where it does not") {
    for (bool http1_only : {false, true}) {
        CAPTURE(http1_only);
        HttpsServer server(http1_only);
        if (!server.ok) {
            MESSAGE("skipped: " << server.why);
            return;
        }
        ClientOptions o;
        o.base_url = server.base();
        o.ca_file = server.cert();
        FhirClient client(o);
        const std::string want = http1_only ? "1.1" : "2.0";
        for (const std::string target : {"metadata", "Patient/1", "Observation?code=2777-1"}) {
            CAPTURE(target);
            const auto [version, connection] = version_and_connection(client.get(target));
            CHECK(version == want);
            CHECK(connection == 1);
        }
        CHECK(client.stats().connections == 1);
        // Without the certificate's CA the server is not trusted: refused, never read.
        ClientOptions untrusted;
        untrusted.base_url = server.base();
        FhirClient stranger(untrusted);
        CHECK_THROWS_AS(stranger.get("metadata"), FhirError);
    }
}
