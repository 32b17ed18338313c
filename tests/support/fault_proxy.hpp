// The fault-injecting reverse proxy (tests/support/fault-proxy.mjs) as an RAII object for
// integration tests of the poller's reliability.
//
//   test::SandboxServer server;                                   // the FHIR server
//   test::FaultProxy proxy({.upstream = server.base_url(), .seed = 7, .rates = {"503=0.1", "reset=0.05"}});
//   FhirClient client({.base_url = proxy.base_url()});           // http://127.0.0.1:PORT/fhir
//   proxy.configure(R"({"rates":{"all":0.3}})");                  // change faults between poll runs
//   proxy.arm_kill(poller_pid, "after-write:2");                  // SIGKILL the poller at its 2nd write
//   proxy.set_quirks({"duplicate-entries", "loop-next"});        // make searchset pages look like an odd server's
//   std::string json = proxy.stats();                             // raw JSON of GET /__proxy/stats
//
// The proxy runs as a child process (node) in its own process group, stdout piped to us (only the
// ready line "fault-proxy listening http://127.0.0.1:PORT" comes there), stderr written to a log
// file (stderr_path(), quoted in errors). Destruction sends SIGTERM to the group and waits; SIGKILL
// after 5 s. Should the test process die without running the destructor, the child gets SIGTERM
// from the kernel (PR_SET_PDEATHSIG) when the thread that started it ends: start it from a thread
// that lives as long as the proxy is needed (main). The control calls (stats, configure, reset,
// events) are tiny blocking HTTP/1.1 requests over a loopback socket (no libcurl needed); they
// may be called from any thread. Linux only. Needs the compile definition CALCALERT_SOURCE_ROOT
// and `node` (Node.js >= 18) on PATH, or FaultProxyOptions::node.
//
// Fault kinds, server quirks (duplicate-entries, loop-next, shuffle, drop-version: changes to clean
// GET searchset pages, never faults), the kill specs and the JSON of the control API are described
// at the top of tests/support/fault-proxy.mjs. Mind that libcurl re-sends a request once by itself when a reused
// keep-alive connection dies before any byte of the answer (faults reset and drop-after-write, kills
// request:N and after-write:N): the proxy counts that as a further request, and a dropped write is
// then applied twice.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shell.hpp"

namespace test {

struct FaultProxyOptions {
    std::string upstream{};                            // required: the FHIR server's base URL, e.g. SandboxServer::base_url()
    long long seed = 1;                                // --seed: faults are a function of (seed, request sequence number)
    std::vector<std::string> rates{};                  // --rate KIND=P each, e.g. {"503=0.1", "all=0.2"}; none: no faults
    int retry_after = 0;                               // --retry-after: seconds in the Retry-After of injected 429s
    std::vector<std::string> quirks{};                 // --quirk NAME each: duplicate-entries | loop-next | shuffle | drop-version
    pid_t kill_pid = 0;                                // with kill_at: --kill-pid (negative: a process group)
    std::string kill_at{};                             // --kill-at request:N | mid-body:N | after-write:N
    std::vector<std::string> extra_args{};             // e.g. {"--verbose"} (one JSON line per request on stderr)
    std::chrono::milliseconds start_timeout{30000};
    std::string stderr_path{};                         // default: a new temp file, removed by the destructor
    std::string script = std::string(CALCALERT_SOURCE_ROOT) + "/tests/support/fault-proxy.mjs";
    std::string node{};                                // default: `node` found on PATH
};

class FaultProxy {
public:
    explicit FaultProxy(FaultProxyOptions options) : options_(std::move(options)) {
        if (options_.upstream.rfind("http://", 0) != 0)
            throw std::runtime_error("FaultProxy: upstream must be an http:// URL, got '" + options_.upstream + "'");
        const auto path_start = options_.upstream.find('/', std::string("http://").size());
        upstream_path_ = path_start == std::string::npos ? "" : options_.upstream.substr(path_start);
        while (!upstream_path_.empty() && upstream_path_.back() == '/') upstream_path_.pop_back();
        if (options_.node.empty()) options_.node = find_on_path("node");
        if (options_.stderr_path.empty()) {
            owns_log_ = true;
            static std::atomic<int> counter{0};
            options_.stderr_path = (std::filesystem::temp_directory_path() /
                                    ("calcalert-fault-proxy-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".log"))
                                       .string();
        }
        try {
            start();
        } catch (...) {
            if (owns_log_) {
                std::error_code ignored;
                std::filesystem::remove(options_.stderr_path, ignored);
            }
            throw;
        }
    }

    ~FaultProxy() {
        stop();
        if (owns_log_) {
            std::error_code ignored;
            std::filesystem::remove(options_.stderr_path, ignored);
        }
    }

    FaultProxy(const FaultProxy&) = delete;
    FaultProxy& operator=(const FaultProxy&) = delete;

    const std::string& base_url() const { return base_url_; }  // http://127.0.0.1:PORT + the upstream's path, e.g. /fhir
    const std::string& origin() const { return origin_; }      // http://127.0.0.1:PORT
    int port() const { return port_; }
    pid_t pid() const { return pid_; }
    const std::string& stderr_path() const { return options_.stderr_path; }

    // The raw JSON of GET /__proxy/stats: {"total","reads","writes","forwarded","clean",
    // "faults":{"503":n,"429":n,"reset":n,"truncate":n,"malformed":n,"html":n,"drop-after-write":n},
    // "quirks":{"duplicate-entries":n,"loop-next":n,"shuffle":n,"drop-version":n} (answers each quirk changed),
    // "upstreamErrors","kills":[{"spec","pid","seq","signal","ok"}],"killArmed","config",...}.
    std::string stats() const { return control("GET", "/__proxy/stats"); }

    // The raw JSON of GET /__proxy/events: {"events":[{"seq","method","url","write","fault","status"[,"quirks"]}]}.
    std::string events() const { return control("GET", "/__proxy/events"); }

    // POST /__proxy/config with a JSON object, e.g. {"rates":{"503":0.2}} (replaces all rates),
    // {"seed":3}, {"retryAfter":1}, {"killPid":123,"killAt":"request:5"}, {"killAt":null},
    // {"quirks":["shuffle","drop-version"]} (replaces the quirk list and clears the quirk memory).
    // Returns the new configuration as JSON; throws std::runtime_error if the proxy refuses it.
    std::string configure(const std::string& json) const { return control("POST", "/__proxy/config", json); }

    // Shorthands for configure().
    std::string set_rates(const std::string& rates_json_object) const { return configure("{\"rates\":" + rates_json_object + "}"); }
    std::string arm_kill(pid_t pid, const std::string& spec) const {
        return configure("{\"killPid\":" + std::to_string(pid) + ",\"killAt\":\"" + spec + "\"}");
    }
    std::string disarm_kill() const { return configure("{\"killAt\":null}"); }
    // Replaces the quirk list ({} = none) and clears the quirk memory (re-arms loop-next), e.g.
    // set_quirks({"duplicate-entries", "loop-next"}). Throws if the proxy refuses a name.
    std::string set_quirks(const std::vector<std::string>& quirks) const {
        std::string json = "{\"quirks\":[";
        for (std::size_t i = 0; i < quirks.size(); ++i) {
            if (i) json += ',';
            json += '"';
            for (const char c : quirks[i]) {
                const auto byte = static_cast<unsigned char>(c);
                if (c == '"' || c == '\\') {
                    json += '\\';
                    json += c;
                } else if (byte < 0x20) {
                    static const char hex[] = "0123456789abcdef";
                    json += "\\u00";
                    json += hex[byte >> 4];
                    json += hex[byte & 0xf];
                } else {
                    json += c;
                }
            }
            json += '"';
        }
        return configure(json + "]}");
    }

    // POST /__proxy/reset: zeroes the counters, the request sequence number, the event log and the quirk memory.
    void reset() const { control("POST", "/__proxy/reset"); }

    // The end of the proxy's stderr, for failure messages.
    std::string stderr_tail(std::size_t max_bytes = 4000) const {
        std::ifstream in(options_.stderr_path, std::ios::binary);
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        return text.size() > max_bytes ? "..." + text.substr(text.size() - max_bytes) : text;
    }

private:
    static std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

    static std::string find_on_path(const std::string& name) {
        const char* path = std::getenv("PATH");
        std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
        for (std::size_t begin = 0; begin <= dirs.size();) {
            const std::size_t end = std::min(dirs.find(':', begin), dirs.size());
            const std::string dir = end > begin ? dirs.substr(begin, end - begin) : ".";
            const std::string candidate = dir + "/" + name;
            if (::access(candidate.c_str(), X_OK) == 0) return candidate;
            begin = end + 1;
        }
        throw std::runtime_error("FaultProxy: '" + name + "' not found on PATH (set FaultProxyOptions::node)");
    }

    void start() {
        // Everything the child needs is prepared before fork(): after it, only async-signal-safe calls.
        std::vector<std::string> args = {options_.node,  options_.script, "--upstream",  options_.upstream, "--port",
                                         "0",            "--seed",        std::to_string(options_.seed),   "--retry-after",
                                         std::to_string(options_.retry_after)};
        for (const auto& rate : options_.rates) {
            args.push_back("--rate");
            args.push_back(rate);
        }
        for (const auto& quirk : options_.quirks) {
            args.push_back("--quirk");
            args.push_back(quirk);
        }
        if (!options_.kill_at.empty()) {
            args.insert(args.end(), {"--kill-pid", std::to_string(options_.kill_pid), "--kill-at", options_.kill_at});
        }
        args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);

        int out[2];
        if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("FaultProxy: " + errno_text("pipe2"));
        const int err = ::open(options_.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (err < 0 || null < 0) {
            const std::string why = errno_text(err < 0 ? options_.stderr_path.c_str() : "/dev/null");
            for (int fd : {out[0], out[1], err, null})
                if (fd >= 0) ::close(fd);
            throw std::runtime_error("FaultProxy: " + why);
        }
        const pid_t parent = ::getpid();
        const pid_t pid = ::fork();
        if (pid < 0) {
            const std::string why = errno_text("fork");
            for (int fd : {out[0], out[1], err, null}) ::close(fd);
            throw std::runtime_error("FaultProxy: " + why);
        }
        if (pid == 0) {
            ::setpgid(0, 0);
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != parent) ::_exit(127);  // the parent is already gone
            ::dup2(null, 0);
            ::dup2(out[1], 1);
            ::dup2(err, 2);
            ::execv(argv[0], argv.data());
            static const char msg[] = "FaultProxy: execv of node failed\n";
            [[maybe_unused]] const auto n = ::write(2, msg, sizeof msg - 1);
            ::_exit(127);
        }
        ::setpgid(pid, pid);  // also here, so the group exists whichever process runs first
        ::close(out[1]);
        ::close(err);
        ::close(null);
        pid_ = pid;
        out_fd_ = out[0];
        try {
            wait_ready();
        } catch (...) {
            stop();
            throw;
        }
        drain_ = std::thread([this] { drain(); });
    }

    void wait_ready() {
        const auto deadline = std::chrono::steady_clock::now() + options_.start_timeout;
        std::string buffer;
        for (;;) {
            for (std::size_t nl; (nl = buffer.find('\n')) != std::string::npos; buffer.erase(0, nl + 1)) {
                // "fault-proxy listening http://127.0.0.1:PORT"
                static const std::string prefix = "fault-proxy listening http://127.0.0.1:";
                const std::string line = buffer.substr(0, nl);
                if (line.rfind(prefix, 0) == 0 && line.size() > prefix.size() && line.size() <= prefix.size() + 5 &&
                    line.find_first_not_of("0123456789", prefix.size()) == std::string::npos) {
                    origin_ = line.substr(std::string("fault-proxy listening ").size());
                    port_ = std::stoi(line.substr(prefix.size()));
                    base_url_ = origin_ + upstream_path_;
                    return;
                }
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                fail("did not print its ready line within " + std::to_string(options_.start_timeout.count()) + " ms");
            pollfd p{out_fd_, POLLIN, 0};
            const int rc = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
            if (rc < 0 && errno != EINTR) fail(errno_text("poll"));
            if (rc <= 0) continue;
            char chunk[4096];
            const ssize_t n = ::read(out_fd_, chunk, sizeof chunk);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n < 0) fail(errno_text("read"));
            if (n == 0) {
                int status = 0;
                std::string how = "closed its stdout";
                if (::waitpid(pid_, &status, 0) == pid_) {
                    pid_ = -1;
                    how = WIFEXITED(status)     ? "exited with status " + std::to_string(WEXITSTATUS(status))
                          : WIFSIGNALED(status) ? "was killed by signal " + std::to_string(WTERMSIG(status))
                                                : how;
                }
                fail(how + " before printing its ready line");
            }
            buffer.append(chunk, static_cast<std::size_t>(n));
        }
    }

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error("FaultProxy: " + options_.script + " " + what + "; its stderr (" + options_.stderr_path +
                                 "):\n" + stderr_tail());
    }

    // One HTTP/1.1 request to the control API on a fresh loopback connection (Connection: close).
    // Returns the body of a 2xx answer; throws with the status and body otherwise.
    std::string control(const char* method, const std::string& path, const std::string& body = "") const {
        const std::string what = std::string("FaultProxy: ") + method + " " + origin_ + path;
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) throw std::runtime_error(what + ": " + errno_text("socket"));
        struct Closer {
            int fd;
            ~Closer() { ::close(fd); }
        } closer{fd};
        timeval timeout{10, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<std::uint16_t>(port_));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        while (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
            if (errno != EINTR) throw std::runtime_error(what + ": " + errno_text("connect"));
        }
        const std::string request = std::string(method) + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port_) +
                                    "\r\nConnection: close\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
                                    "Content-Length: " +
                                    std::to_string(body.size()) + "\r\n\r\n" + body;
        for (std::size_t sent = 0; sent < request.size();) {
            const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) throw std::runtime_error(what + ": " + errno_text("send"));
            sent += static_cast<std::size_t>(n);
        }
        std::string reply;
        for (char chunk[8192];;) {
            const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) throw std::runtime_error(what + ": " + errno_text("recv"));
            if (n == 0) break;
            reply.append(chunk, static_cast<std::size_t>(n));
        }
        const auto head_end = reply.find("\r\n\r\n");
        if (reply.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos || reply.size() < 12)
            throw std::runtime_error(what + ": not an HTTP answer: " + reply.substr(0, 200));
        const int status = std::atoi(reply.c_str() + 9);
        std::string head = reply.substr(0, head_end);
        std::transform(head.begin(), head.end(), head.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        std::string payload = reply.substr(head_end + 4);
        if (head.find("\r\ntransfer-encoding: chunked") != std::string::npos) {
            std::string decoded;
            for (std::size_t pos = 0;;) {
                const auto eol = payload.find("\r\n", pos);
                if (eol == std::string::npos) break;
                const std::size_t size = std::strtoul(payload.c_str() + pos, nullptr, 16);
                if (size == 0 || eol + 2 + size > payload.size()) break;
                decoded.append(payload, eol + 2, size);
                pos = eol + 2 + size + 2;
            }
            payload = std::move(decoded);
        } else if (const auto cl = head.find("\r\ncontent-length:"); cl != std::string::npos) {
            const std::size_t length = std::strtoul(head.c_str() + cl + 17, nullptr, 10);
            if (payload.size() > length) payload.resize(length);
        }
        if (status < 200 || status > 299)
            throw std::runtime_error(what + ": HTTP " + std::to_string(status) + ": " + payload);
        return payload;
    }

    // Reads and discards stdout after the ready line, so a write by the proxy never blocks on a full pipe.
    void drain() {
        char chunk[4096];
        while (!stopping_) {
            pollfd p{out_fd_, POLLIN, 0};
            const int rc = ::poll(&p, 1, 100);
            if (rc < 0 && errno != EINTR) return;
            if (rc <= 0) continue;
            const ssize_t n = ::read(out_fd_, chunk, sizeof chunk);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) return;
        }
    }

    void stop() {
        if (pid_ > 0) {
            ::kill(-pid_, SIGTERM);
            const bool reaped = reap_within(pid_, std::chrono::seconds(5));
            if (!reaped) {
                ::kill(-pid_, SIGKILL);
                while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
                }
            }
            pid_ = -1;
        }
        stopping_ = true;
        if (drain_.joinable()) drain_.join();
        if (out_fd_ >= 0) {
            ::close(out_fd_);
            out_fd_ = -1;
        }
    }

    FaultProxyOptions options_;
    bool owns_log_ = false;
    pid_t pid_ = -1;
    int out_fd_ = -1;
    int port_ = 0;
    std::string upstream_path_;
    std::string origin_;
    std::string base_url_;
    std::atomic<bool> stopping_{false};
    std::thread drain_;
};

}  // namespace test
