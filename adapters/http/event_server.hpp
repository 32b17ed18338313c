// An HTTP/1.1 server on which a connection costs no thread while it is read or written. One I/O
// thread polls every socket and reads each request whole (request line, headers and body; bounded
// in size and in time) before a worker sees it; the workers (a fixed pool) only run handlers. So a
// client that sends a byte a second holds a socket, not a worker, and is cut off when its request
// has not arrived within request_timeout.
//
//   - Limits: connections, header bytes, body bytes (Content-Length or chunked), requests per
//     connection; a request must arrive within request_timeout of its first byte, an idle
//     connection is closed after keep_alive_timeout, a response must be taken within request_timeout.
//   - Saturation: when every worker is busy and max_queued requests wait, the next request is
//     answered 503 with Retry-After at once, on the I/O thread; so is a request that waited in the
//     queue longer than max_queue_wait, and a connection over max_connections.
//   - Handlers::quick answers cheap requests (health, metrics, preflight) on the I/O thread, so they
//     are answered while every worker is busy.
//   - Every refusal is reported to Handlers::on_reject with a reason from a closed set (Rejection).
//   - stop() stops accepting, lets requests in flight finish (up to a grace period) and closes.
// No TLS: terminate TLS in front of it (a reverse proxy or the platform's ingress).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace calcalert::http {

using SteadyTime = std::chrono::steady_clock::time_point;

struct Request {
    std::string method;
    std::string target;   // as sent: origin-form path and query
    std::string version;  // HTTP/1.0 or HTTP/1.1
    std::vector<std::pair<std::string, std::string>> headers;  // in the order sent
    std::string body;     // de-chunked
    std::string peer;     // address:port of the client
    SteadyTime received;  // when the last byte of the request arrived
    // The first header of that name (case-insensitive), or "".
    std::string header(std::string_view name) const;
    std::string path() const;  // target without the query
};

struct Response {
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers;  // Content-Length and Connection are added
    std::string body;
    bool close = false;  // close the connection once this is sent
    void set(std::string name, std::string value);  // adds or replaces a header
};

struct Limits {
    int max_threads = 16;         // workers
    int max_queued = 64;          // complete requests waiting for a worker
    int max_connections = 512;    // open connections (a 503 and a close beyond)
    std::size_t max_header_bytes = 32 * 1024;  // request line and headers (431 beyond)
    std::int64_t max_body_bytes = 8 * 1024 * 1024;  // 413 beyond
    std::chrono::milliseconds request_timeout{10000};     // first to last byte of a request; writing a response
    std::chrono::milliseconds keep_alive_timeout{15000};  // an idle connection, before its (next) request
    std::chrono::milliseconds max_queue_wait{10000};      // a request that waited longer for a worker gets 503
    int max_keep_alive_requests = 100;
    int retry_after_seconds = 1;  // the Retry-After of a 503
};

// Why a request or connection was refused: a closed set (metrics labels).
enum class Rejection { saturated, connections, timeout, too_large, malformed };
const char* rejection_name(Rejection r);
inline constexpr Rejection kRejections[] = {Rejection::saturated, Rejection::connections, Rejection::timeout,
                                            Rejection::too_large, Rejection::malformed};

struct Handlers {
    // On a worker thread. An exception becomes a 500 (reported to on_error).
    std::function<Response(const Request&)> handle;
    // On the I/O thread, before a worker is involved; must be fast and must not block. nullopt: the
    // request goes to a worker. Optional.
    std::function<std::optional<Response>(const Request&)> quick;
    // A refusal made by the server itself (the request is null when it was not read whole). Optional.
    std::function<void(Rejection, const Request*, int status)> on_reject;
    // The body of a refusal the server makes itself (status and why); Retry-After and the close are
    // added. Optional: text/plain.
    std::function<Response(int status, const std::string& why)> refusal;
    // A handler's exception or an I/O thread error, for the log. Optional.
    std::function<void(const std::string&)> on_error;
};

class EventServer {
public:
    EventServer(Limits limits, Handlers handlers);  // std::invalid_argument for limits it cannot use
    ~EventServer();                                 // stop(0)
    EventServer(const EventServer&) = delete;
    EventServer& operator=(const EventServer&) = delete;

    // Binds (port 0: any free port) and starts the I/O thread and the workers. Throws on failure.
    void start(const std::string& bind_address, int port);
    // Stops accepting, lets requests read or in flight finish for up to `grace`, then closes all.
    void stop(std::chrono::milliseconds grace);
    int port() const;
    std::size_t open_connections() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

// The parts of a request the I/O thread reads, as a pure step over buffered bytes (for tests and
// fuzzing): feed bytes with `read`, then ask for the state.
class RequestReader {
public:
    explicit RequestReader(const Limits& limits) : limits_(limits) {}
    enum class State { need_more, complete, failed };
    // Consumes from `buffer` what belongs to this request (bytes of a next, pipelined request stay).
    State read(std::string& buffer);
    // After `complete`: the request (peer and received are left to the caller).
    Request take();
    // After the head is read: whether the client waits for "100 Continue" before the body.
    bool wants_continue() const { return wants_continue_; }
    bool head_done() const { return head_done_; }
    // After `failed`: the status to answer (400, 413, 417, 431, 501, 505) and why.
    int error_status() const { return error_status_; }
    const std::string& error() const { return error_; }
    bool started() const { return started_; }  // a byte of this request has arrived

private:
    State fail(int status, std::string why);
    State read_head(std::string& buffer);
    State read_chunked(std::string& buffer);

    Limits limits_;
    Request request_;
    bool started_ = false;
    bool head_done_ = false;
    bool wants_continue_ = false;
    bool chunked_ = false;
    std::int64_t body_left_ = 0;  // Content-Length bytes still to come
    std::size_t scanned_ = 0;     // head bytes already searched for the blank line
    enum class Chunk { size_line, data, data_end, trailers, done } chunk_ = Chunk::size_line;
    std::int64_t chunk_left_ = 0;
    std::size_t trailer_bytes_ = 0;
    int error_status_ = 0;
    std::string error_;
};

// "HTTP/1.1 200 OK\r\n...\r\n\r\n<body>", with Content-Length, Connection and Server added (no body
// for HEAD).
std::string serialize(const Response& response, const Request* request, bool keep_alive);

}  // namespace calcalert::http
