// The PostgreSQL test harness itself: tests/support/postgres_server.hpp (a real server from the
// Debian package, as the postgres user under root) and its shell counterpart tests/support/with-postgres.
// Skips in one line (and passes) when PostgreSQL cannot run here.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/types.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "../support/postgres_server.hpp"
#include "../support/shell.hpp"

namespace fs = std::filesystem;

namespace {

const std::string with_postgres = std::string(CALCALERT_SOURCE_ROOT) + "/tests/support/with-postgres";

bool alive(pid_t pid) { return ::kill(pid, 0) == 0 || errno != ESRCH; }

bool empty_dir(const fs::path& dir) { return fs::exists(dir) && fs::is_empty(dir); }

std::string listing(const fs::path& dir) {
    std::string out;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) out += it->path().filename().string() + " ";
    return out;
}

}  // namespace

TEST_CASE("PostgresServer: psql round trip, a fresh database, a second server at once, nothing left after") {
    std::optional<test::PostgresServer> a;
    a.emplace();
    REQUIRE(a->port() > 0);
    CHECK(a->url() == "postgresql://calcalert@127.0.0.1:" + std::to_string(a->port()) + "/calcalert_test");
    CHECK(a->psql("CREATE TABLE t (x bigint); INSERT INTO t VALUES (1), (20), (9000000000); SELECT x FROM t ORDER BY x") ==
          "1\n20\n9000000000\n");
    CHECK(a->psql("SELECT current_user, current_database(), pg_encoding_to_char(encoding) FROM pg_database WHERE datname = "
                  "current_database()") == "calcalert|calcalert_test|UTF8\n");
    CHECK(a->psql("SELECT setting FROM pg_settings WHERE name IN ('fsync', 'listen_addresses') ORDER BY name") == "off\n127.0.0.1\n");

    // A fresh database of the same server is empty: the table of the first is not there.
    const std::string other = a->fresh_database("isolated_case");
    CHECK(other == "postgresql://calcalert@127.0.0.1:" + std::to_string(a->port()) + "/isolated_case");
    CHECK(a->psql_on(other, "SELECT count(*) FROM pg_tables WHERE tablename = 't'") == "0\n");
    CHECK(a->psql_on(other, "CREATE TABLE t (x bigint); INSERT INTO t VALUES (5); SELECT sum(x) FROM t") == "5\n");
    CHECK(a->psql("SELECT sum(x) FROM t") == "9000000021\n");
    CHECK_THROWS_WITH(a->fresh_database("Bad-Name; DROP"), doctest::Contains("is not [a-z_][a-z0-9_]{0,62}"));
    CHECK_THROWS_WITH(a->fresh_database("isolated_case"), doctest::Contains("already exists"));
    CHECK_THROWS_WITH(a->psql("SELECT * FROM no_such_table"), doctest::Contains("relation \"no_such_table\" does not exist"));

    // A second server at the same time: its own port, directory and data.
    std::optional<test::PostgresServer> b;
    b.emplace();
    CHECK(b->port() != a->port());
    CHECK(b->dir() != a->dir());
    CHECK(b->psql("SELECT count(*) FROM pg_tables WHERE tablename = 't'") == "0\n");
    CHECK(a->psql("SELECT count(*) FROM t") == "3\n");

    // Its processes and its socket are in the private directory, owned by the postgres user under root.
    const fs::path dir_a = a->dir(), dir_b = b->dir();
    CHECK(fs::exists(dir_a / "data" / "PG_VERSION"));
    CHECK(fs::exists(dir_a / (".s.PGSQL." + std::to_string(a->port()))));
    const pid_t pm_a = a->pid(), pm_b = b->pid();
    std::vector<pid_t> procs_a = a->server_processes(), procs_b = b->server_processes();
    CHECK(!procs_a.empty());
    CHECK(!procs_b.empty());
    if (::geteuid() == 0) {
        const auto [rc, owner] = test::run_shell("stat -c %U " + a->data_dir().string());
        CHECK(rc == 0);
        CHECK(owner == "postgres\n");
    }

    a.reset();
    CHECK(!fs::exists(dir_a));
    CHECK(!alive(pm_a));
    for (pid_t p : procs_a) CHECK_MESSAGE(!alive(p), "server process " << p << " of the first server outlived it");
    CHECK(b->psql("SELECT 42") == "42\n");  // the other one is untouched
    const int port_b = b->port();
    b.reset();
    CHECK(!fs::exists(dir_b));
    CHECK(!alive(pm_b));
    for (pid_t p : procs_b) CHECK_MESSAGE(!alive(p), "server process " << p << " of the second server outlived it");
    const auto [rc, out] = test::run_shell(test::PostgresServer::find_bin_dir() + "/pg_isready -h 127.0.0.1 -p " + std::to_string(port_b));
    CHECK_MESSAGE(rc != 0, out);
}

TEST_CASE("PostgresServer: a failed start throws with the log and leaves nothing behind") {
    test::TempDir base("pg-harness");
    const std::string real_bin = test::PostgresServer::find_bin_dir();

    SUBCASE("no initdb there") {
        test::PostgresOptions options;
        options.bin_dir = (base.path / "no-such-bin").string();
        options.temp_base = base.path;
        CHECK_THROWS_WITH(test::PostgresServer{options}, doctest::Contains("initdb"));
        CHECK_MESSAGE(empty_dir(base.path), listing(base.path));
    }
    SUBCASE("a postgres that never accepts connections: bounded wait, the log's tail, the process ended") {
        // A bin dir with the real tools except postgres, which says something and sleeps.
        const fs::path bin = base.path / "bin";
        fs::create_directories(bin);
        for (const char* tool : {"initdb", "pg_isready", "psql"}) fs::create_symlink(fs::path(real_bin) / tool, bin / tool);
        {
            std::ofstream script(bin / "postgres");
            script << "#!/bin/sh\necho \"fake postgres $$ never ready\" >&2\nexec sleep 120\n";
        }
        fs::permissions(bin / "postgres", fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                              fs::perms::others_read | fs::perms::others_exec);
        fs::permissions(base.path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read |
                                       fs::perms::others_exec);
        test::PostgresOptions options;
        options.bin_dir = bin.string();
        options.temp_base = base.path;
        options.start_timeout = std::chrono::milliseconds(1500);
        std::string message;
        try {
            test::PostgresServer server(options);
        } catch (const std::runtime_error& e) {
            message = e.what();
        }
        CHECK(message.find("did not accept connections within 1500 ms") != std::string::npos);
        CHECK(message.find("never ready") != std::string::npos);
        // The fake postmaster's pid, from its own line in the log quoted in the message.
        const auto at = message.find("fake postgres ");
        REQUIRE(at != std::string::npos);
        const pid_t fake = static_cast<pid_t>(std::stol(message.substr(at + 14)));
        CHECK(!alive(fake));
        fs::remove_all(bin);
        CHECK_MESSAGE(empty_dir(base.path), listing(base.path));
    }
}

TEST_CASE("PostgresServer::unavailable names why (CALCALERT_POSTGRES_BINDIR without the binaries)") {
    ::setenv("CALCALERT_POSTGRES_BINDIR", "/nonexistent/pg/bin", 1);
    const auto why = test::PostgresServer::unavailable();
    ::unsetenv("CALCALERT_POSTGRES_BINDIR");
    REQUIRE(why.has_value());
    CHECK(*why == "no executable /nonexistent/pg/bin/initdb");
}

TEST_CASE("with-postgres: a working URL, the command's exit status, nothing left behind") {
    test::TempDir base("with-pg");
    const std::string env = "TMPDIR=" + base.path.string() + " ";
    const std::string port_file = (base.path / "port").string();
    {
        // The command records the port (from the URL) so we can check afterwards that nothing answers there.
        const auto [rc, out] = test::run_shell(
            env + with_postgres + " bash -c 'echo \"url=$CALCALERT_TEST_POSTGRES_URL\"; p=${CALCALERT_TEST_POSTGRES_URL#*127.0.0.1:}; "
                                  "echo ${p%%/*} > " +
            port_file + "; psql \"$CALCALERT_TEST_POSTGRES_URL\" -X -Atc \"select 40 + 2, current_database()\" && exit 7'");
        CHECK_MESSAGE(rc == 7, out);
        CHECK(out.find("url=postgresql://calcalert@127.0.0.1:") != std::string::npos);
        CHECK(out.find("/calcalert_test\n42|calcalert_test\n") != std::string::npos);
        std::ifstream in(port_file);
        int port = 0;
        in >> port;
        REQUIRE(port > 0);
        fs::remove(port_file);
        CHECK_MESSAGE(empty_dir(base.path), listing(base.path));
        const auto [down, why] = test::run_shell(test::PostgresServer::find_bin_dir() + "/pg_isready -h 127.0.0.1 -p " + std::to_string(port));
        CHECK_MESSAGE(down != 0, why);
    }
    {
        const auto [rc, out] = test::run_shell(env + with_postgres + " true");
        CHECK_MESSAGE(rc == 0, out);
        const auto [rc3, out3] = test::run_shell(env + with_postgres + " bash -c 'exit 3'");
        CHECK_MESSAGE(rc3 == 3, out3);
        CHECK_MESSAGE(empty_dir(base.path), listing(base.path));
    }
    {
        // SIGTERM while the command runs: passed on to it, the server stopped, the directory removed.
        const std::string url_file = (base.path / "url").string();
        const auto [rc, out] = test::run_shell(
            env + with_postgres + " bash -c 'echo \"$CALCALERT_TEST_POSTGRES_URL\" > " + url_file + ".tmp; mv " + url_file + ".tmp " +
            url_file + "; exec sleep 60' & p=$!; for i in $(seq 300); do [ -s " + url_file +
            " ] && break; sleep 0.1; done; kill -TERM $p; wait $p; echo status=$?");
        CHECK_MESSAGE(out.find("status=143") != std::string::npos, out);
        fs::remove(url_file);
        CHECK_MESSAGE(empty_dir(base.path), listing(base.path));
    }
    {
        // Where PostgreSQL cannot run: one line on stderr, the command without the variable.
        const auto [rc, out] = test::run_shell("CALCALERT_TEST_POSTGRES_URL=stale CALCALERT_POSTGRES_BINDIR=/nonexistent " + with_postgres +
                                               " bash -c 'echo \"[${CALCALERT_TEST_POSTGRES_URL-unset}]\"; exit 5'");
        CHECK(rc == 5);
        CHECK(out == "with-postgres: skipped: no executable /nonexistent/initdb\n[unset]\n");
    }
}

int main(int argc, char** argv) {
    if (auto why = test::PostgresServer::unavailable()) {
        std::printf("postgres_harness: skipped: %s\n", why->c_str());
        return 0;
    }
    doctest::Context context(argc, argv);
    return context.run();
}
