// A throwaway PostgreSQL server as an RAII object for integration tests.
//
//   if (auto why = test::PostgresServer::unavailable()) { MESSAGE("skipped: " << *why); return; }
//   test::PostgresServer pg;                          // initdb + postgres on a free loopback port
//   open_state(pg.url());                             // postgresql://calcalert@127.0.0.1:PORT/calcalert_test
//   pg.psql("SELECT count(*) FROM runs");             // psql's unaligned, tuples-only stdout
//   std::string other = pg.fresh_database("case_2");  // another empty database of the same server
//
// The server binaries are the newest /usr/lib/postgresql/*/bin (else `pg_config --bindir`; the
// environment variable CALCALERT_POSTGRES_BINDIR overrides both). Everything lives in one private
// directory made by mkdtemp under $TMPDIR or /tmp: data/ (the cluster, `initdb -A trust -U calcalert
// -E UTF8 --locale=C --no-sync`), postgres.log (initdb's and the server's output, quoted in errors)
// and the server's Unix socket. The server listens on 127.0.0.1 only, with fsync, full_page_writes
// and synchronous_commit off. PostgreSQL refuses to run as root: when the test runs as root, initdb
// and postgres run as the `postgres` system user (privileges dropped in the forked child, no
// intermediate process) and the directory is chowned to it.
//
// The postmaster is our child, in its own process group, and gets SIGQUIT from the kernel should the
// thread that started it end (PR_SET_PDEATHSIG: start it from a thread that lives as long as the
// server is needed, main). Destruction sends SIGQUIT (immediate shutdown) and waits; after 10 s
// SIGKILL to it and to its children; then the directory is removed. The constructor cleans up the
// same way when it throws. stop_server() and start_server() (restart()) make an outage: the same
// server stopped and started again on its port with its data. The port is picked by binding port 0 and read back; should another
// process take it before the postmaster binds it, the start is retried on a new port. Linux only.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shell.hpp"

extern char** environ;

namespace test {

struct PostgresOptions {
    std::string bin_dir;                              // default: PostgresServer::find_bin_dir()
    std::filesystem::path temp_base;                  // default: $TMPDIR, else /tmp
    std::chrono::milliseconds start_timeout{30000};   // until the server accepts connections
    std::string database = "calcalert_test";          // created at start; url() names it
};

class PostgresServer {
public:
    // Why a server cannot be started here, or nullopt when it can.
    static std::optional<std::string> unavailable() {
        const std::string bin = find_bin_dir();
        if (bin.empty()) return "no PostgreSQL server binaries (no /usr/lib/postgresql/*/bin/postgres, no pg_config --bindir)";
        for (const char* tool : {"initdb", "postgres", "pg_isready", "psql"})
            if (::access((bin + "/" + tool).c_str(), X_OK) != 0) return "no executable " + bin + "/" + tool;
        if (::geteuid() == 0 && ::getpwnam("postgres") == nullptr)
            return "running as root and there is no `postgres` user to run the server as";
        return std::nullopt;
    }

    // CALCALERT_POSTGRES_BINDIR when set; else the newest /usr/lib/postgresql/N/bin holding postgres;
    // else `pg_config --bindir` when it holds postgres; else "".
    static std::string find_bin_dir() {
        if (const char* env = std::getenv("CALCALERT_POSTGRES_BINDIR"); env && *env) return env;
        namespace fs = std::filesystem;
        std::error_code ec;
        long best_version = -1;
        std::string best;
        for (fs::directory_iterator it("/usr/lib/postgresql", ec), end; !ec && it != end; it.increment(ec)) {
            const std::string name = it->path().filename().string();
            if (name.empty() || name.find_first_not_of("0123456789.") != std::string::npos) continue;
            const std::string bin = (it->path() / "bin").string();
            if (::access((bin + "/postgres").c_str(), X_OK) != 0) continue;
            const long version = std::strtol(name.c_str(), nullptr, 10);
            if (version > best_version) best_version = version, best = bin;
        }
        if (!best.empty()) return best;
        if (FILE* p = ::popen("pg_config --bindir 2>/dev/null", "r")) {
            char buf[4096];
            std::string out;
            while (std::fgets(buf, sizeof buf, p)) out += buf;
            ::pclose(p);
            while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
            if (!out.empty() && ::access((out + "/postgres").c_str(), X_OK) == 0) return out;
        }
        return "";
    }

    PostgresServer() : PostgresServer(PostgresOptions{}) {}

    explicit PostgresServer(PostgresOptions options) : options_(std::move(options)) {
        if (options_.bin_dir.empty()) options_.bin_dir = find_bin_dir();
        if (options_.bin_dir.empty()) throw std::runtime_error("PostgresServer: " + *unavailable());
        if (!valid_name(options_.database))
            throw std::runtime_error("PostgresServer: database name '" + options_.database + "' is not [a-z_][a-z0-9_]{0,62}");
        if (options_.temp_base.empty()) {
            const char* t = std::getenv("TMPDIR");
            options_.temp_base = (t && *t) ? t : "/tmp";
        }
        std::string templ = (options_.temp_base / "calcalert-pg-XXXXXX").string();
        if (!::mkdtemp(templ.data())) throw std::runtime_error("PostgresServer: " + errno_text(("mkdtemp " + templ).c_str()));
        dir_ = templ;
        try {
            start();
        } catch (...) {
            stop();
            remove_dir();
            throw;
        }
    }

    ~PostgresServer() {
        stop();
        remove_dir();
    }

    PostgresServer(const PostgresServer&) = delete;
    PostgresServer& operator=(const PostgresServer&) = delete;

    // postgresql://calcalert@127.0.0.1:PORT/<options.database>
    const std::string& url() const { return url_; }
    int port() const { return port_; }
    pid_t pid() const { return pid_; }                       // the postmaster's
    const std::filesystem::path& dir() const { return dir_; }  // the private directory, removed at the end
    std::filesystem::path data_dir() const { return dir_ / "data"; }
    std::filesystem::path log_path() const { return dir_ / "postgres.log"; }

    std::string url_of(const std::string& database) const {
        return "postgresql://calcalert@127.0.0.1:" + std::to_string(port_) + "/" + database;
    }

    // Creates the empty database `name` ([a-z_][a-z0-9_]{0,62}) and returns its URL.
    std::string fresh_database(const std::string& name) {
        if (!valid_name(name))
            throw std::runtime_error("PostgresServer::fresh_database: name '" + name + "' is not [a-z_][a-z0-9_]{0,62}");
        psql_on("postgres", "CREATE DATABASE " + name);
        return url_of(name);
    }

    // Runs `sql` (one or more statements) with psql on url()'s database: its stdout, unaligned and
    // tuples only (`psql -X -q -A -t -v ON_ERROR_STOP=1`). Throws with psql's stderr when it fails.
    std::string psql(const std::string& sql) const { return psql_on(options_.database, sql); }

    // The same on another database of this server (a name or a URL of fresh_database()).
    std::string psql_on(const std::string& database, const std::string& sql) const {
        const std::string target = database.rfind("postgresql://", 0) == 0 ? database : url_of(database);
        const std::string err_path = (dir_ / "psql.err").string();
        const std::string command = "PGCONNECT_TIMEOUT=10 " + quote(options_.bin_dir + "/psql") + " -X -q -A -t -v ON_ERROR_STOP=1 -d " +
                                    quote(target) + " -c " + quote(sql) + " </dev/null 2>" + quote(err_path);
        FILE* p = ::popen(command.c_str(), "r");
        if (!p) throw std::runtime_error("PostgresServer::psql: " + errno_text("popen"));
        std::string out;
        char buf[4096];
        while (std::fgets(buf, sizeof buf, p)) out += buf;
        const int status = ::pclose(p);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            std::string err = read_file(err_path);
            throw std::runtime_error("PostgresServer::psql on " + target + " failed (" + describe(status) + ") for: " + sql + "\n" + err);
        }
        return out;
    }

    // The end of the server's log, for failure messages.
    std::string log_tail(std::size_t max_bytes = 4000) const {
        const std::string text = read_file(log_path().string());
        return text.size() > max_bytes ? "..." + text.substr(text.size() - max_bytes) : text;
    }

private:
    static std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

    static bool valid_name(const std::string& name) {
        static const std::regex re("[a-z_][a-z0-9_]{0,62}");
        return std::regex_match(name, re);
    }

    static std::string quote(const std::string& s) {
        std::string q = "'";
        for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
        return q + "'";
    }

    static std::string read_file(const std::string& path) {
        std::ifstream in(path, std::ios::binary);
        return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }

    static std::string describe(int status) {
        if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
        if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
        return "status " + std::to_string(status);
    }

    // A port no one listens on at this moment (bind to 127.0.0.1:0, read it back, close).
    static int free_port() {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) throw std::runtime_error("PostgresServer: " + errno_text("socket"));
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = 0;
        socklen_t len = sizeof addr;
        if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
            const std::string why = errno_text("bind 127.0.0.1:0");
            ::close(fd);
            throw std::runtime_error("PostgresServer: " + why);
        }
        ::close(fd);
        return ntohs(addr.sin_port);
    }

    // Forks `args` with stdout and stderr appended to the log, as the postgres user when we are root,
    // in its own process group, with cwd the private directory and LC_ALL=C. Returns its pid.
    pid_t spawn(std::vector<std::string> args, bool server) {
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        std::vector<std::string> env_strings;
        for (char** e = environ; e && *e; ++e) {
            const std::string kv = *e;
            if (kv.rfind("LC_", 0) == 0 || kv.rfind("LANG=", 0) == 0 || kv.rfind("LANGUAGE=", 0) == 0 || kv.rfind("PG", 0) == 0)
                continue;
            env_strings.push_back(kv);
        }
        env_strings.push_back("LC_ALL=C");
        std::vector<char*> envp;
        for (auto& e : env_strings) envp.push_back(e.data());
        envp.push_back(nullptr);

        const int log = ::open(log_path().c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (log < 0 || null < 0) {
            const std::string why = errno_text(log < 0 ? log_path().c_str() : "/dev/null");
            for (int fd : {log, null})
                if (fd >= 0) ::close(fd);
            throw std::runtime_error("PostgresServer: " + why);
        }
        const pid_t parent = ::getpid();
        const std::string cwd = dir_.string();
        const pid_t pid = ::fork();
        if (pid < 0) {
            const std::string why = errno_text("fork");
            ::close(log);
            ::close(null);
            throw std::runtime_error("PostgresServer: " + why);
        }
        if (pid == 0) {
            ::setpgid(0, 0);
            if (run_as_) {
                if (::setgroups(static_cast<std::size_t>(groups_.size()), groups_.data()) != 0 || ::setgid(gid_) != 0 ||
                    ::setuid(uid_) != 0) {
                    static const char msg[] = "PostgresServer: could not switch to the postgres user\n";
                    [[maybe_unused]] const auto n = ::write(log, msg, sizeof msg - 1);
                    ::_exit(126);
                }
            }
            // After the user switch: a change of credentials clears the parent-death signal.
            if (server) ::prctl(PR_SET_PDEATHSIG, SIGQUIT);
            if (::getppid() != parent) ::_exit(127);  // the parent is already gone
            if (::chdir(cwd.c_str()) != 0) ::_exit(127);
            ::dup2(null, 0);
            ::dup2(log, 1);
            ::dup2(log, 2);
            ::execve(argv[0], argv.data(), envp.data());
            static const char msg[] = "PostgresServer: execve failed\n";
            [[maybe_unused]] const auto n = ::write(2, msg, sizeof msg - 1);
            ::_exit(127);
        }
        ::setpgid(pid, pid);
        ::close(log);
        ::close(null);
        return pid;
    }

    pid_t spawn_postmaster(int port) {
        return spawn({options_.bin_dir + "/postgres", "-D", data_dir().string(), "-k", dir_.string(), "-c", "listen_addresses=127.0.0.1",
                      "-p", std::to_string(port), "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"},
                     true);
    }

    void start() {
        namespace fs = std::filesystem;
        if (::geteuid() == 0) {
            const passwd* pw = ::getpwnam("postgres");
            if (!pw) throw std::runtime_error("PostgresServer: running as root and there is no `postgres` user");
            run_as_ = true;
            uid_ = pw->pw_uid;
            gid_ = pw->pw_gid;
            int n = 64;
            groups_.resize(static_cast<std::size_t>(n));
            if (::getgrouplist(pw->pw_name, gid_, groups_.data(), &n) < 0) {
                groups_.resize(static_cast<std::size_t>(n));
                ::getgrouplist(pw->pw_name, gid_, groups_.data(), &n);
            }
            groups_.resize(static_cast<std::size_t>(n));
            if (::chown(dir_.c_str(), uid_, gid_) != 0) throw std::runtime_error("PostgresServer: " + errno_text(("chown " + dir_.string()).c_str()));
        }
        // The log exists before the children open it, owned by us (and readable by the tests).
        { std::ofstream touch(log_path()); }
        if (run_as_ && ::chown(log_path().c_str(), uid_, gid_) != 0)
            throw std::runtime_error("PostgresServer: " + errno_text(("chown " + log_path().string()).c_str()));

        const pid_t initdb = spawn({options_.bin_dir + "/initdb", "-D", data_dir().string(), "-A", "trust", "-U", "calcalert", "--no-sync",
                                    "-E", "UTF8", "--locale=C"},
                                   false);
        int status = 0;
        while (::waitpid(initdb, &status, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail("initdb (" + options_.bin_dir + "/initdb) failed: " + describe(status) +
                 (run_as_ ? " (as the postgres user: can it reach " + dir_.string() + "?)" : ""));

        const auto deadline = std::chrono::steady_clock::now() + options_.start_timeout;
        for (int attempt = 1;; ++attempt) {
            const int port = free_port();
            const std::size_t log_before = read_file(log_path().string()).size();
            pid_ = spawn_postmaster(port);
            port_ = port;
            const std::string why = wait_ready(deadline);
            if (why.empty()) break;
            const std::string log_now = read_file(log_path().string());
            const bool port_taken = log_now.find("Address already in use", log_before) != std::string::npos;
            if (port_taken && attempt < 5 && std::chrono::steady_clock::now() < deadline) continue;
            fail(why);
        }
        url_ = url_of(options_.database);
        psql_on("postgres", "CREATE DATABASE " + options_.database);
    }

    // "" once the postmaster accepts connections on its socket; else why not (it exited: reaped).
    std::string wait_ready(std::chrono::steady_clock::time_point deadline) {
        const std::string check = quote(options_.bin_dir + "/pg_isready") + " -q -h " + quote(dir_.string()) + " -p " + std::to_string(port_) +
                                  " -U calcalert -d postgres -t 2 >/dev/null 2>&1";
        for (;;) {
            int status = 0;
            const pid_t w = ::waitpid(pid_, &status, WNOHANG);
            if (w == pid_) {
                pid_ = -1;
                return "postgres " + describe(status) + " before accepting connections";
            }
            if (std::system(check.c_str()) == 0) return "";
            if (std::chrono::steady_clock::now() >= deadline)
                return "postgres did not accept connections within " + std::to_string(options_.start_timeout.count()) + " ms";
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error("PostgresServer: " + what + "; the end of its log (" + log_path().string() + "):\n" + log_tail());
    }

    // The pids whose parent is `parent` (from /proc).
    static std::vector<pid_t> children_of(pid_t parent) {
        std::vector<pid_t> kids;
        std::error_code ec;
        for (std::filesystem::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
            const std::string name = it->path().filename().string();
            if (name.find_first_not_of("0123456789") != std::string::npos) continue;
            const std::string stat = read_file("/proc/" + name + "/stat");
            const auto close_paren = stat.rfind(')');
            if (close_paren == std::string::npos) continue;
            std::istringstream rest(stat.substr(close_paren + 1));
            std::string state;
            long ppid = 0;
            if (rest >> state >> ppid && ppid == parent) kids.push_back(static_cast<pid_t>(std::stol(name)));
        }
        return kids;
    }

public:
    // The postmaster's child processes now (backends, checkpointer, ...): for tests that check they end.
    std::vector<pid_t> server_processes() const { return pid_ > 0 ? children_of(pid_) : std::vector<pid_t>{}; }

    // An outage: stops the server as a crash would (immediate shutdown; every client connection is
    // dropped), keeping what was committed (a CHECKPOINT first: this server commits asynchronously).
    // start_server() brings it back on the same port.
    void stop_server() {
        if (pid_ > 0) psql_on("postgres", "CHECKPOINT");
        stop();
    }
    void start_server() {
        if (pid_ > 0) return;
        pid_ = spawn_postmaster(port_);
        const std::string why = wait_ready(std::chrono::steady_clock::now() + options_.start_timeout);
        if (!why.empty()) fail("restarting on port " + std::to_string(port_) + ": " + why);
    }
    // Both: the clients' connections are gone, the data is still there.
    void restart() {
        stop_server();
        start_server();
    }

private:
    void stop() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGQUIT);  // immediate shutdown: the postmaster ends its children, then itself
        const bool reaped = reap_within(pid_, std::chrono::seconds(10));
        if (!reaped) {
            // Its children are session leaders of their own (not in its group): each by pid.
            for (pid_t kid : children_of(pid_)) ::kill(kid, SIGKILL);
            ::kill(-pid_, SIGKILL);
            while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
            }
        }
        pid_ = -1;
    }

    void remove_dir() {
        if (dir_.empty()) return;
        std::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
    }

    PostgresOptions options_;
    std::filesystem::path dir_;
    bool run_as_ = false;
    uid_t uid_ = 0;
    gid_t gid_ = 0;
    std::vector<gid_t> groups_;
    pid_t pid_ = -1;
    int port_ = 0;
    std::string url_;
};

}  // namespace test
