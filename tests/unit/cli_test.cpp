#include <doctest/doctest.h>

#include <sstream>

#include "adapters/cli/cli.hpp"
#include "adapters/cli/options.hpp"

using namespace calcalert::cli;

namespace {
struct Run {
    int code;
    std::string out, err;
};
Run cli(std::vector<std::string> args) {
    std::ostringstream out, err;
    int code = run(args, out, err);
    return {code, out.str(), err.str()};
}
}  // namespace

TEST_CASE("options: values, flags, unknown options") {
    Options o({"--now", "2026-01-01T00:00:00Z", "--format=text", "a.json", "-", "--help"}, {"now", "format"}, {"help"});
    CHECK(o.value("now") == "2026-01-01T00:00:00Z");
    CHECK(o.value("format") == "text");
    CHECK(o.flag("help"));
    CHECK(o.positional() == std::vector<std::string>{"a.json", "-"});
    CHECK_THROWS_AS(Options({"--bogus"}, {}, {}), UsageError);
    CHECK_THROWS_AS(Options({"--now"}, {"now"}, {}), UsageError);
    CHECK_THROWS_AS(Options({"-x"}, {}, {}), UsageError);
    CHECK_THROWS_AS(Options({"--help=yes"}, {}, {"help"}), UsageError);
}

TEST_CASE("help on the program and on each command; usage errors exit 2") {
    CHECK(cli({"--help"}).code == ok);
    CHECK(cli({"--help"}).out.find("Exit codes") != std::string::npos);
    CHECK(cli({"evaluate", "--help"}).out.find("--format") != std::string::npos);
    CHECK(cli({"evaluate", "-h"}).code == ok);
    CHECK(cli({}).code == usage_error);
    CHECK(cli({"frobnicate"}).code == usage_error);
    CHECK(cli({"evaluate"}).code == usage_error);
    CHECK(cli({"evaluate", "--format", "xml", "x.json"}).code == usage_error);
    auto bad_now = cli({"evaluate", "--now", "yesterday", "x.json"});
    CHECK(bad_now.code == usage_error);
    CHECK(bad_now.err.find("--now") != std::string::npos);
}

TEST_CASE("a missing file is an input error naming it") {
    auto r = cli({"evaluate", "--now", "2026-11-25T12:00:00Z", "/nonexistent/file.json"});
    CHECK(r.code == input_error);
    CHECK(r.err.find("/nonexistent/file.json: cannot open file") != std::string::npos);
}

TEST_CASE("an invalid catalog directory is a configuration error") {
    auto r = cli({"evaluate", "--catalog", "/nonexistent", "--now", "2026-11-25T12:00:00Z", "x.json"});
    CHECK(r.code == config_error);
    CHECK(r.err.find("configuration error") != std::string::npos);
}
