// Small helpers of the integration and unit tests: a shell command's exit code and output, and a
// temporary directory removed at the end of its scope.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

namespace test {

// Waits up to `timeout` for the child `pid` to end, and reaps it; false when it is still running.
inline bool reap_within(pid_t pid, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        const pid_t w = ::waitpid(pid, nullptr, WNOHANG);
        if (w == pid || (w < 0 && errno == ECHILD)) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
}

// Runs `command` with sh -c, stderr into stdout: (exit code, output); (-1, "") when it cannot run.
inline std::pair<int, std::string> run_shell(const std::string& command) {
    FILE* p = ::popen((command + " 2>&1").c_str(), "r");
    if (!p) return {-1, ""};
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    const int status = ::pclose(p);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// A fresh directory under the system temp directory, named after `name` and the process id (one a
// killed run left behind is emptied first); removed with what is in it when it goes out of scope,
// also when a check fails half way.
struct TempDir {
    std::filesystem::path path;
    explicit TempDir(const std::string& name)
        : path(std::filesystem::temp_directory_path() / ("calcalert-" + name + "-" + std::to_string(::getpid()))) {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

}  // namespace test
