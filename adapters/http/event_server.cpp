#include "adapters/http/event_server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>

namespace calcalert::http {

const char* rejection_name(Rejection r) {
    switch (r) {
        case Rejection::saturated: return "saturated";
        case Rejection::connections: return "connections";
        case Rejection::timeout: return "timeout";
        case Rejection::too_large: return "too-large";
        case Rejection::malformed: return "malformed";
    }
    return "malformed";
}

std::string serialize(const Response& response, const Request* request, bool keep_alive) {
    const auto reason = Poco::Net::HTTPResponse::getReasonForStatus(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(response.status));
    std::string out = "HTTP/1.1 " + std::to_string(response.status) + " " + reason + "\r\n";
    bool has_server = false;
    for (const auto& [name, value] : response.headers) {
        if (name == "Content-Length" || name == "Connection") continue;
        has_server = has_server || name == "Server";
        out += name + ": " + value + "\r\n";
    }
    if (!has_server) out += "Server: calcalert\r\n";
    const bool no_body = response.status == 204 || response.status == 304 || (response.status >= 100 && response.status < 200);
    if (!no_body) out += "Content-Length: " + std::to_string(response.body.size()) + "\r\n";
    out += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
    out += "\r\n";
    if (!no_body && !(request != nullptr && request->method == "HEAD")) out += response.body;
    return out;
}

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

void set_nonblocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL, 0);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) throw std::runtime_error(std::string("fcntl: ") + std::strerror(errno));
}

std::string peer_of(const sockaddr_storage& addr, socklen_t len) {
    try {
        return Poco::Net::SocketAddress(reinterpret_cast<const sockaddr*>(&addr), len).toString();
    } catch (const std::exception&) {
        return "?";
    }
}

Response plain(int status, const std::string& why) {
    Response r;
    r.status = status;
    r.set("Content-Type", "text/plain; charset=utf-8");
    r.set("Cache-Control", "no-store");
    r.body = why + "\n";
    r.close = true;
    return r;
}

}  // namespace

struct EventServer::Impl {
    Limits limits;
    Handlers handlers;
    Poco::Net::ServerSocket listener;
    int listen_fd = -1;
    int bound_port = 0;
    int wake_read = -1, wake_write = -1;
    std::thread io;
    std::vector<std::thread> workers;
    std::atomic<bool> stopping{false};
    std::atomic<bool> running{false};
    Clock::time_point stop_deadline;
    std::atomic<std::size_t> connection_count{0};

    enum class Phase { idle, reading, working, writing };
    struct Connection {
        int fd = -1;
        std::string peer;
        std::string in;
        std::string out;
        std::size_t out_sent = 0;
        Phase phase = Phase::idle;
        Clock::time_point deadline;
        int served = 0;
        bool close_after_write = false;
        std::unique_ptr<RequestReader> reader;
    };
    std::map<std::uint64_t, Connection> connections;  // only the I/O thread touches it
    std::uint64_t next_id = 1;
    Clock::time_point accept_paused_until{};

    struct Job {
        std::uint64_t connection;
        Request request;
    };
    struct Done {
        std::uint64_t connection;
        Request request;
        Response response;
    };
    std::mutex mutex;
    std::condition_variable work_ready;
    std::deque<Job> jobs;
    std::deque<Done> done;
    int busy = 0;            // workers running a handler
    bool workers_stop = false;

    Impl(Limits l, Handlers h) : limits(l), handlers(std::move(h)) {}

    void wake() {
        const char b = 1;
        [[maybe_unused]] const auto n = ::write(wake_write, &b, 1);  // a full pipe already wakes the loop
    }
    void error(const std::string& what) {
        if (handlers.on_error) handlers.on_error(what);
    }
    Response refusal(int status, const std::string& why) {
        Response r;
        if (handlers.refusal) {
            try {
                r = handlers.refusal(status, why);
            } catch (const std::exception&) {
                r = plain(status, why);
            }
        } else {
            r = plain(status, why);
        }
        r.status = status;
        r.close = true;
        if (status == 503) r.set("Retry-After", std::to_string(limits.retry_after_seconds));
        return r;
    }
    void reject(Rejection r, const Request* req, int status) {
        if (handlers.on_reject) handlers.on_reject(r, req, status);
    }

    void worker_loop();
    void io_loop();
    void accept_all();
    void on_readable(std::uint64_t id, Connection& c);
    void advance(std::uint64_t id, Connection& c);  // reads what is buffered; dispatches a whole request
    void respond(Connection& c, const Response& r, const Request* req);
    void flush(Connection& c);
    void after_write(std::uint64_t id, Connection& c);
    void close_connection(std::uint64_t id);
    void refuse(Connection& c, Rejection why, int status, const std::string& text);
    bool keep_alive(const Connection& c, const Request& req, const Response& r) const;
};

void EventServer::Impl::worker_loop() {
    for (;;) {
        Job job;
        {
            std::unique_lock<std::mutex> lock(mutex);
            work_ready.wait(lock, [&] { return workers_stop || !jobs.empty(); });
            if (jobs.empty()) return;
            job = std::move(jobs.front());
            jobs.pop_front();
            ++busy;
        }
        Response r;
        if (Clock::now() - job.request.received > limits.max_queue_wait) {
            r = refusal(503, "the service is busy: the call waited for a worker past its deadline; try again");
            reject(Rejection::saturated, &job.request, 503);
        } else {
            try {
                r = handlers.handle(job.request);
            } catch (const std::exception& e) {
                error(std::string("handler failed: ") + e.what());
                r = refusal(500, "internal error");
            } catch (...) {
                error("handler failed");
                r = refusal(500, "internal error");
            }
        }
        {
            std::lock_guard<std::mutex> lock(mutex);
            --busy;
            done.push_back(Done{job.connection, std::move(job.request), std::move(r)});
        }
        wake();
    }
}

bool EventServer::Impl::keep_alive(const Connection& c, const Request& req, const Response& r) const {
    if (r.close || stopping.load()) return false;
    if (c.served + 1 >= limits.max_keep_alive_requests) return false;
    const std::string conn = req.header("Connection");
    if (req.version == "HTTP/1.0") return conn == "keep-alive" || conn == "Keep-Alive";
    return !(conn == "close" || conn == "Close");
}

void EventServer::Impl::respond(Connection& c, const Response& r, const Request* req) {
    const bool keep = req != nullptr && keep_alive(c, *req, r);
    c.out += serialize(r, req, keep);
    c.close_after_write = !keep;
    c.phase = Phase::writing;
    c.deadline = Clock::now() + limits.request_timeout;
    flush(c);
}

void EventServer::Impl::refuse(Connection& c, Rejection why, int status, const std::string& text) {
    reject(why, nullptr, status);
    const Response r = refusal(status, text);
    c.reader.reset();
    c.in.clear();
    respond(c, r, nullptr);
}

void EventServer::Impl::flush(Connection& c) {
    while (c.out_sent < c.out.size()) {
        const ssize_t n = ::send(c.fd, c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
        if (n > 0) {
            c.out_sent += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        c.close_after_write = true;  // the client is gone
        c.out.clear();
        c.out_sent = 0;
        return;
    }
    c.out.clear();
    c.out_sent = 0;
}

void EventServer::Impl::after_write(std::uint64_t id, Connection& c) {
    if (c.close_after_write) {
        close_connection(id);
        return;
    }
    ++c.served;
    c.phase = Phase::idle;
    c.deadline = Clock::now() + limits.keep_alive_timeout;
    if (!c.in.empty()) advance(id, c);  // a pipelined request
}

void EventServer::Impl::close_connection(std::uint64_t id) {
    auto it = connections.find(id);
    if (it == connections.end()) return;
    ::close(it->second.fd);
    connections.erase(it);
    connection_count = connections.size();
}

void EventServer::Impl::advance(std::uint64_t id, Connection& c) {
    if (c.phase != Phase::idle && c.phase != Phase::reading) return;
    if (!c.reader) c.reader = std::make_unique<RequestReader>(limits);
    const bool was_started = c.reader->started();
    const bool had_head = c.reader->head_done();
    const RequestReader::State s = c.reader->read(c.in);
    if (!was_started && c.reader->started()) {
        c.phase = Phase::reading;
        c.deadline = Clock::now() + limits.request_timeout;
    }
    if (s == RequestReader::State::failed) {
        const int status = c.reader->error_status();
        refuse(c, status == 413 || status == 431 ? Rejection::too_large : Rejection::malformed, status, c.reader->error());
        return;
    }
    if (!had_head && c.reader->head_done() && c.reader->wants_continue() && s == RequestReader::State::need_more) {
        c.out += "HTTP/1.1 100 Continue\r\n\r\n";
        flush(c);
    }
    if (s == RequestReader::State::need_more) return;

    Request req = c.reader->take();
    c.reader.reset();
    req.peer = c.peer;
    req.received = Clock::now();
    c.phase = Phase::working;
    if (handlers.quick) {
        std::optional<Response> quick;
        try {
            quick = handlers.quick(req);
        } catch (const std::exception& e) {
            error(std::string("quick handler failed: ") + e.what());
            quick = refusal(500, "internal error");
        }
        if (quick) {
            respond(c, *quick, &req);
            return;
        }
    }
    {
        std::unique_lock<std::mutex> lock(mutex);
        // Capacity: a request per worker and max_queued waiting (counted together, so a worker that
        // has not yet taken its request does not make room for one more).
        const bool saturated = busy + static_cast<int>(jobs.size()) >= limits.max_threads + limits.max_queued;
        if (!saturated) {
            jobs.push_back(Job{id, std::move(req)});
            lock.unlock();
            work_ready.notify_one();
            return;
        }
    }
    reject(Rejection::saturated, &req, 503);
    respond(c, refusal(503, "the service is busy: every worker is taken and the queue is full; try again"), &req);
}

void EventServer::Impl::on_readable(std::uint64_t id, Connection& c) {
    char buf[16384];
    for (int reads = 0; reads < 8; ++reads) {
        const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
        if (n > 0) {
            c.in.append(buf, static_cast<std::size_t>(n));
            if (static_cast<std::size_t>(n) < sizeof buf) break;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        // Closed by the client (or an error): a request half read is dropped.
        close_connection(id);
        return;
    }
    advance(id, c);
}

void EventServer::Impl::accept_all() {
    for (int i = 0; i < 64; ++i) {
        sockaddr_storage addr{};
        socklen_t len = sizeof addr;
        const int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                // Out of descriptors or memory: stop accepting for a moment instead of spinning on a
                // listener that stays readable.
                error(std::string("accept: ") + std::strerror(errno) + "; not accepting for 100 ms");
                accept_paused_until = Clock::now() + milliseconds(100);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
                error(std::string("accept: ") + std::strerror(errno));
            }
            return;
        }
        if (connections.size() >= static_cast<std::size_t>(limits.max_connections)) {
            reject(Rejection::connections, nullptr, 503);
            const std::string bytes =
                serialize(refusal(503, "too many connections (" + std::to_string(limits.max_connections) + "); try again"), nullptr, false);
            [[maybe_unused]] const auto sent = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
            ::close(fd);
            continue;
        }
        const std::uint64_t id = next_id++;
        Connection& c = connections[id];
        c.fd = fd;
        c.peer = peer_of(addr, len);
        c.phase = Phase::idle;
        c.deadline = Clock::now() + limits.request_timeout;  // the first request's first byte
        connection_count = connections.size();
    }
}

void EventServer::Impl::io_loop() {
    std::vector<pollfd> fds;
    std::vector<std::uint64_t> ids;
    bool listening = true;
    for (;;) {
        const auto now = Clock::now();
        if (stopping.load()) {
            if (listening) {
                listener.close();
                listening = false;
            }
            // Idle and half-read connections are closed; responses in flight are finished.
            std::vector<std::uint64_t> idle;
            for (auto& [id, c] : connections)
                if (c.phase == Phase::idle || c.phase == Phase::reading) idle.push_back(id);
            for (auto id : idle) close_connection(id);
            if (connections.empty() || now >= stop_deadline) break;
        }

        // Deadlines.
        std::vector<std::uint64_t> expired;
        auto next = now + milliseconds(1000);
        for (auto& [id, c] : connections) {
            if (c.phase == Phase::working) continue;
            if (c.deadline <= now) expired.push_back(id);
            else if (c.deadline < next) next = c.deadline;
        }
        for (auto id : expired) {
            Connection& c = connections.at(id);
            if (c.phase == Phase::reading) {
                reject(Rejection::timeout, nullptr, 408);
                // One try to say why; the connection is closed either way.
                const std::string bytes = serialize(
                    refusal(408, "the request did not arrive within " + std::to_string(limits.request_timeout.count()) + " ms"),
                    nullptr, false);
                [[maybe_unused]] const auto sent = ::send(c.fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
            }
            close_connection(id);
        }

        fds.clear();
        ids.clear();
        fds.push_back({wake_read, POLLIN, 0});
        ids.push_back(0);
        const bool accepting = listening && now >= accept_paused_until;
        if (accepting) {
            fds.push_back({listen_fd, POLLIN, 0});
            ids.push_back(0);
        } else if (listening && accept_paused_until < next) {
            next = accept_paused_until;
        }
        for (auto& [id, c] : connections) {
            short events = 0;
            if (c.phase == Phase::idle || c.phase == Phase::reading) events |= POLLIN;
            if (!c.out.empty()) events |= POLLOUT;
            fds.push_back({c.fd, events, 0});
            ids.push_back(id);
        }
        const auto wait_ms = std::chrono::duration_cast<milliseconds>(next - now).count();
        const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<long long>(1, std::min<long long>(wait_ms + 1, 1000))));
        if (ready < 0) {
            if (errno == EINTR) continue;
            error(std::string("poll: ") + std::strerror(errno));
            std::this_thread::sleep_for(milliseconds(10));
            continue;
        }

        if (fds[0].revents & POLLIN) {
            char drain[256];
            while (::read(wake_read, drain, sizeof drain) > 0) {
            }
        }
        // Finished handlers.
        std::deque<Done> finished;
        {
            std::lock_guard<std::mutex> lock(mutex);
            finished.swap(done);
        }
        for (auto& d : finished) {
            auto it = connections.find(d.connection);
            if (it == connections.end()) continue;  // the client left meanwhile
            respond(it->second, d.response, &d.request);
        }

        std::size_t first_conn = 1;
        if (accepting) {
            if (fds[1].revents & POLLIN) accept_all();
            first_conn = 2;
        }
        for (std::size_t i = first_conn; i < fds.size(); ++i) {
            const std::uint64_t id = ids[i];
            auto it = connections.find(id);
            if (it == connections.end()) continue;
            Connection& c = it->second;
            const short re = fds[i].revents;
            if (re == 0) continue;
            if (re & (POLLERR | POLLNVAL)) {
                close_connection(id);
                continue;
            }
            if ((re & POLLOUT) && !c.out.empty()) {
                flush(c);
                if (c.out.empty() && c.phase == Phase::writing) {
                    after_write(id, c);
                    if (connections.find(id) == connections.end()) continue;
                }
            }
            if (re & (POLLIN | POLLHUP)) {
                if (c.phase == Phase::idle || c.phase == Phase::reading) on_readable(id, c);
                // Gone while its call runs (or while its answer is written): closed now, so that poll
                // does not report the hang-up again and again; the call's answer is dropped.
                else if (re & POLLHUP) close_connection(id);
            }
        }
        // A response written at once (quick answers, refusals) finishes here.
        std::vector<std::uint64_t> written;
        for (auto& [id, c] : connections)
            if (c.phase == Phase::writing && c.out.empty()) written.push_back(id);
        for (auto id : written) {
            auto it = connections.find(id);
            if (it != connections.end()) after_write(id, it->second);
        }
    }
    for (auto& [id, c] : connections) ::close(c.fd);
    connections.clear();
    connection_count = 0;
}

EventServer::EventServer(Limits limits, Handlers handlers) {
    if (!handlers.handle) throw std::invalid_argument("EventServer needs a handler");
    if (limits.max_threads < 1 || limits.max_queued < 0 || limits.max_connections < 1 || limits.max_keep_alive_requests < 1 ||
        limits.max_header_bytes < 256 || limits.max_body_bytes < 0 || limits.retry_after_seconds < 0)
        throw std::invalid_argument("EventServer limits out of range");
    impl_ = std::make_unique<Impl>(limits, std::move(handlers));
}

EventServer::~EventServer() {
    try {
        stop(milliseconds(0));
    } catch (...) {
        // destructors do not throw
    }
}

void EventServer::start(const std::string& bind_address, int port) {
    Impl& i = *impl_;
    if (i.running) throw std::logic_error("EventServer already started");
    i.listener.bind(Poco::Net::SocketAddress(bind_address, static_cast<Poco::UInt16>(port)), true);
    i.listener.listen(1024);
    i.listen_fd = i.listener.impl()->sockfd();
    set_nonblocking(i.listen_fd);
    i.bound_port = i.listener.address().port();
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
    i.wake_read = pipe_fds[0];
    i.wake_write = pipe_fds[1];
    i.stopping = false;
    i.workers_stop = false;
    i.running = true;
    for (int n = 0; n < i.limits.max_threads; ++n) i.workers.emplace_back([&i] { i.worker_loop(); });
    i.io = std::thread([&i] { i.io_loop(); });
}

void EventServer::stop(std::chrono::milliseconds grace) {
    Impl& i = *impl_;
    if (!i.running) return;
    i.stop_deadline = Clock::now() + grace;
    i.stopping = true;
    i.wake();
    i.io.join();
    {
        std::lock_guard<std::mutex> lock(i.mutex);
        i.workers_stop = true;
        i.jobs.clear();  // nobody waits for them any more
    }
    i.work_ready.notify_all();
    for (auto& t : i.workers) t.join();
    i.workers.clear();
    i.done.clear();
    ::close(i.wake_read);
    ::close(i.wake_write);
    i.running = false;
}

int EventServer::port() const { return impl_->bound_port; }
std::size_t EventServer::open_connections() const { return impl_->connection_count.load(); }

}  // namespace calcalert::http
