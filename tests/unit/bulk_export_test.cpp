// The decisions of the Bulk Data client (adapters/poll/bulk_export.hpp): the kick-off target, what
// each answer of the status URL means, and the manifest, including the answers a server that lies
// or breaks would give.
#include <doctest/doctest.h>

#include <sstream>
#include <string>
#include <vector>

#include "adapters/poll/backfill.hpp"
#include "adapters/poll/bulk_export.hpp"
#include "fhir/resource_reader.hpp"

using namespace calcalert;
using namespace calcalert::poll;
using std::chrono::seconds;

namespace {

fhir::Response answer(long status, std::string body = "", std::map<std::string, std::string> headers = {}) {
    fhir::Response r;
    r.status = status;
    r.body = std::move(body);
    r.headers = std::move(headers);
    r.method = "GET";
    r.url = "https://fhir.example.org/r4/$export-status/1";
    return r;
}

const auto kNow = std::chrono::system_clock::from_time_t(1764590400);  // 2025-12-01T12:00:00Z

ExportStatus status_of(const fhir::Response& r) { return interpret_export_status(r, seconds(5), seconds(1), seconds(300), kNow); }

std::string error_of(const fhir::Response& r) {
    try {
        status_of(r);
    } catch (const ExportError& e) {
        return e.what();
    }
    return "";
}

const char* const kManifest = R"({"transactionTime":"2026-12-01T10:00:00.123Z","request":"https://fhir.example.org/r4/Patient/$export",
  "requiresAccessToken":true,"output":[{"type":"Patient","url":"https://fhir.example.org/r4/files/1.ndjson","count":3},
  {"type":"Observation","url":"https://fhir.example.org/r4/files/2.ndjson"}],"error":[{"type":"OperationOutcome","url":"https://fhir.example.org/r4/files/e.ndjson"}]})";

}  // namespace

TEST_CASE("export_kickoff_target: Patient or Group, _type, each _typeFilter encoded once, _since") {
    ExportRequest r;
    CHECK(export_kickoff_target(r) == "Patient/$export?_outputFormat=application%2Ffhir%2Bndjson");
    r.group = "ward-7";
    r.types = {"Observation", "Patient"};
    r.type_filters = {"Observation?code=http://loinc.org|17861-6,http://loinc.org|2777-1", "Procedure?code=x|y"};
    r.since = "2026-01-01T00:00:00Z";
    CHECK(export_kickoff_target(r) ==
          "Group/ward-7/$export?_outputFormat=application%2Ffhir%2Bndjson&_type=Observation,Patient"
          "&_typeFilter=Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C17861-6%2Chttp%3A%2F%2Floinc.org%7C2777-1"
          "&_typeFilter=Procedure%3Fcode%3Dx%7Cy&_since=2026-01-01T00%3A00%3A00Z");
    for (const char* bad : {"a/b", "../x", "x?y", "sp ace", "&_type=Group"}) {
        r.group = bad;
        CHECK_THROWS_AS(export_kickoff_target(r), std::invalid_argument);
    }
}

TEST_CASE("the status URL's answers: in progress with its wait, complete, failed, gone") {
    struct Row {
        const char* what;
        fhir::Response r;
        long wait;  // expected wait in seconds for in-progress answers
        const char* progress;
    };
    const std::vector<Row> in_progress = {
        {"202 with Retry-After seconds and X-Progress", answer(202, "", {{"retry-after", "7"}, {"x-progress", "50% done"}}), 7,
         "50% done"},
        {"202 without Retry-After: the default", answer(202), 5, ""},
        {"202 with a huge Retry-After: cut to the maximum", answer(202, "", {{"retry-after", "99999999"}}), 300, ""},
        {"202 with Retry-After 0: at least the minimum", answer(202, "", {{"retry-after", "0"}}), 1, ""},
        {"202 with an HTTP-date 20 s ahead", answer(202, "", {{"retry-after", "Mon, 01 Dec 2025 12:00:20 GMT"}}), 20, ""},
        {"202 with a malformed Retry-After: the default", answer(202, "", {{"retry-after", "soon"}}), 5, ""},
        // Dates the clock cannot hold, or negative fields, are malformed (not an overflow).
        {"an HTTP-date in the year 9999", answer(202, "", {{"retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"}}), 5, ""},
        {"an HTTP-date in the year -999", answer(202, "", {{"retry-after", "Mon, 01 Jan -999 00:00:00 GMT"}}), 5, ""},
        {"an asctime date with a negative hour", answer(202, "", {{"retry-after", "Sun Nov  6 -1:49:37 2026"}}), 5, ""},
        {"429 (polled too often) with Retry-After", answer(429, "", {{"retry-after", "30"}}), 30, ""},
        {"X-Progress with control bytes and 1 kB is made printable and short",
         answer(202, "", {{"x-progress", std::string("a\x01") + std::string(1000, 'b')}}), 5, nullptr},
    };
    for (const auto& row : in_progress) {
        CAPTURE(row.what);
        const ExportStatus s = status_of(row.r);
        CHECK(s.state == ExportStatus::State::in_progress);
        CHECK(s.wait.count() == row.wait);
        if (row.progress) CHECK(s.progress == row.progress);
        else CHECK((s.progress.size() <= 110 && s.progress.find('\x01') == std::string::npos));
    }

    const ExportStatus done = status_of(answer(200, kManifest));
    REQUIRE(done.state == ExportStatus::State::complete);
    CHECK(done.manifest.transaction_time == "2026-12-01T10:00:00.123Z");
    CHECK(done.manifest.requires_access_token);
    REQUIRE(done.manifest.output.size() == 2);
    CHECK(done.manifest.output[0].type == "Patient");
    CHECK(done.manifest.output[0].count == 3u);
    CHECK_FALSE(done.manifest.output[1].count.has_value());
    CHECK(done.manifest.error.size() == 1);

    struct Failure {
        const char* what;
        fhir::Response r;
        const char* message;
        bool gone;
    };
    const std::vector<Failure> failures = {
        {"500 with an OperationOutcome", answer(500, R"({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"export worker crashed"}]})"),
         "HTTP 500: the export failed: OperationOutcome: error (exception): export worker crashed", false},
        {"404: the job is gone", answer(404), "the export job is gone", true},
        {"410: the job is gone", answer(410, "expired"), "the export job is gone", true},
        {"200 that is not JSON", answer(200, "<html>ok</html>"), "the export manifest is not JSON", false},
        {"200 that is a JSON array", answer(200, "[]"), "the export manifest is an array, not a JSON object", false},
        {"no transactionTime", answer(200, R"({"output":[]})"), "has no transactionTime", false},
        {"a transactionTime that is a date only", answer(200, R"({"transactionTime":"2026-12-01","output":[]})"),
         "is not a FHIR instant", false},
        {"no output", answer(200, R"({"transactionTime":"2026-12-01T10:00:00Z"})"), "has no output array", false},
        {"a file without url", answer(200, R"({"transactionTime":"2026-12-01T10:00:00Z","output":[{"type":"Patient","url":"u"},{"type":"Patient"}]})"),
         "output[1].url is missing", false},
        {"a negative count", answer(200, R"({"transactionTime":"2026-12-01T10:00:00Z","output":[{"type":"Patient","url":"u","count":-1}]})"),
         "output[0].count is not a non-negative whole number", false},
        {"requiresAccessToken as a string", answer(200, R"({"transactionTime":"2026-12-01T10:00:00Z","requiresAccessToken":"yes","output":[]})"),
         "requiresAccessToken is not a boolean", false},
        {"deeply nested manifest", answer(200, std::string(100, '[') + std::string(100, ']')), "the export manifest is not JSON", false},
        {"a 3xx", answer(302), "is not an answer of the Bulk Data status URL", false},
    };
    for (const auto& f : failures) {
        CAPTURE(f.what);
        try {
            status_of(f.r);
            FAIL("no ExportError");
        } catch (const ExportError& e) {
            CHECK(std::string(e.what()).find(f.message) != std::string::npos);
            CHECK(std::string(e.what()).find("GET https://fhir.example.org/r4/$export-status/1") == 0);
            CHECK(e.job_gone() == f.gone);
        }
    }
    CHECK(error_of(answer(200, kManifest)).empty());
}

namespace {
struct CountingHandler : fhir::ResourceHandler {
    int resources = 0;
    std::vector<std::string> problems;
    void on_resource(const rapidjson::Value&, std::string_view, const fhir::Location&, const fhir::BundleContext*) override {
        ++resources;
    }
    void on_problem(const fhir::Problem& p) override { problems.push_back(p.describe()); }
};
}  // namespace

TEST_CASE("read_ndjson: a line longer than the limit is refused without being held; the next lines are read") {
    std::istringstream in(R"({"resourceType":"Patient","id":"a"})" "\n" + std::string(5000, 'x') + "\n" +
                          R"({"resourceType":"Patient","id":"b"})");
    CountingHandler h;
    const auto stats = fhir::read_ndjson(in, "export file 1", h, 1024);
    CHECK(h.resources == 2);
    CHECK(stats.rejected == 1);
    REQUIRE(h.problems.size() == 1);
    CAPTURE(h.problems[0]);
    CHECK(h.problems[0].find("export file 1:2: ") == 0);
    CHECK(h.problems[0].find("longer than 1024 bytes") != std::string::npos);
}

TEST_CASE("backfill shards: every patient in exactly one shard, the same in every worker, spread evenly") {
    CHECK(poll::shard_of("Patient/1", 1) == 0);
    CHECK(poll::shard_of("Patient/1", 0) == 0);
    // Fixed values: a worker of another build must put a patient in the same shard.
    CHECK(poll::shard_of("Patient/1", 4) == poll::shard_of(std::string("Patient/") + "1", 4));
    CHECK(poll::shard_of("", 7) == static_cast<int>(1469598103934665603ULL % 7));
    std::vector<int> counts(4, 0);
    for (int i = 0; i < 4000; ++i) {
        const int s = poll::shard_of("Patient/p" + std::to_string(i), 4);
        REQUIRE(s >= 0);
        REQUIRE(s < 4);
        ++counts[static_cast<std::size_t>(s)];
    }
    for (const int c : counts) CHECK(c > 850);  // 1,000 each, give or take
}
