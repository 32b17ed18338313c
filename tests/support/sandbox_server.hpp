// The local sandbox FHIR server (deploy/sandbox/run-sandbox) as an RAII object for integration tests.
//
//   test::SandboxServer server;            // starts `run-sandbox --port 0`, waits for its ready line
//   FhirClient client({.base_url = server.base_url()});
//
// The server runs as a child process in its own process group, stdout piped to us (only the ready
// line comes there), stderr written to a log file (stderr_path(), quoted in errors). Destruction
// sends SIGTERM to the group and waits; SIGKILL after 5 s. Should the test process die without
// running the destructor, the child gets SIGTERM from the kernel (PR_SET_PDEATHSIG) when the thread
// that started it ends: start it from a thread that lives as long as the server is needed (main).
// Linux only. Needs the compile definition CALCALERT_SOURCE_ROOT.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "shell.hpp"

namespace test {

struct SandboxOptions {
    std::vector<std::string> extra_args;               // e.g. {"--no-validate"} or {"--verbose"}
    std::chrono::milliseconds start_timeout{120000};   // includes an `npm ci` when node_modules is stale
    std::string stderr_path;                           // default: a new temp file, removed by the destructor
    std::string script = std::string(CALCALERT_SOURCE_ROOT) + "/deploy/sandbox/run-sandbox";
};

class SandboxServer {
public:
    SandboxServer() : SandboxServer(SandboxOptions{}) {}

    explicit SandboxServer(SandboxOptions options) : options_(std::move(options)) {
        if (options_.stderr_path.empty()) {
            owns_log_ = true;
            static std::atomic<int> counter{0};
            options_.stderr_path = (std::filesystem::temp_directory_path() /
                                    ("calcalert-sandbox-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".log"))
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

    ~SandboxServer() {
        stop();
        if (owns_log_) {
            std::error_code ignored;
            std::filesystem::remove(options_.stderr_path, ignored);
        }
    }

    SandboxServer(const SandboxServer&) = delete;
    SandboxServer& operator=(const SandboxServer&) = delete;

    const std::string& base_url() const { return base_url_; }  // http://127.0.0.1:PORT/fhir
    int port() const { return port_; }
    pid_t pid() const { return pid_; }
    const std::string& stderr_path() const { return options_.stderr_path; }

    // The end of the server's stderr, for failure messages.
    std::string stderr_tail(std::size_t max_bytes = 4000) const {
        std::ifstream in(options_.stderr_path, std::ios::binary);
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        return text.size() > max_bytes ? "..." + text.substr(text.size() - max_bytes) : text;
    }

private:
    static std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

    void start() {
        // Everything the child needs is prepared before fork(): after it, only async-signal-safe calls.
        std::vector<std::string> args = {options_.script, "--port", "0"};
        args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);

        int out[2];
        if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("SandboxServer: " + errno_text("pipe2"));
        const int err = ::open(options_.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (err < 0 || null < 0) {
            const std::string why = errno_text(err < 0 ? options_.stderr_path.c_str() : "/dev/null");
            for (int fd : {out[0], out[1], err, null})
                if (fd >= 0) ::close(fd);
            throw std::runtime_error("SandboxServer: " + why);
        }
        const pid_t parent = ::getpid();
        const pid_t pid = ::fork();
        if (pid < 0) {
            const std::string why = errno_text("fork");
            for (int fd : {out[0], out[1], err, null}) ::close(fd);
            throw std::runtime_error("SandboxServer: " + why);
        }
        if (pid == 0) {
            ::setpgid(0, 0);
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != parent) ::_exit(127);  // the parent is already gone
            ::dup2(null, 0);
            ::dup2(out[1], 1);
            ::dup2(err, 2);
            ::execv(argv[0], argv.data());
            static const char msg[] = "SandboxServer: execv of run-sandbox failed\n";
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
                // "sandbox listening http://127.0.0.1:PORT/fhir"
                static const std::string prefix = "sandbox listening http://127.0.0.1:";
                const std::string line = buffer.substr(0, nl);
                const auto digits_end = line.find("/fhir", prefix.size());
                if (line.rfind(prefix, 0) == 0 && digits_end != std::string::npos && digits_end + 5 == line.size() &&
                    digits_end > prefix.size() &&
                    line.find_first_not_of("0123456789", prefix.size()) == digits_end) {
                    base_url_ = line.substr(std::string("sandbox listening ").size());
                    port_ = std::stoi(line.substr(prefix.size(), digits_end - prefix.size()));
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
        throw std::runtime_error("SandboxServer: " + options_.script + " " + what + "; its stderr (" + options_.stderr_path +
                                 "):\n" + stderr_tail());
    }

    // Reads and discards stdout after the ready line, so a write by the server never blocks on a full pipe.
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

    SandboxOptions options_;
    bool owns_log_ = false;
    pid_t pid_ = -1;
    int out_fd_ = -1;
    int port_ = 0;
    std::string base_url_;
    std::atomic<bool> stopping_{false};
    std::thread drain_;
};

}  // namespace test
