// http::RequestReader: one request out of buffered bytes, fed whole or a byte at a time.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "adapters/http/event_server.hpp"

using calcalert::http::Limits;
using calcalert::http::RequestReader;
using State = RequestReader::State;

namespace {

struct Outcome {
    State state = State::need_more;
    int status = 0;
    std::string body;
    std::string left;  // bytes of a next request, not consumed
    std::string method, target;
};

Outcome read_all(const std::string& bytes, bool byte_at_a_time, const Limits& limits) {
    RequestReader reader(limits);
    std::string buffer;
    Outcome o;
    if (byte_at_a_time) {
        for (char c : bytes) {
            buffer.push_back(c);
            o.state = reader.read(buffer);
            if (o.state != State::need_more) break;
        }
    } else {
        buffer = bytes;
        o.state = reader.read(buffer);
    }
    if (o.state == State::failed) o.status = reader.error_status();
    if (o.state == State::complete) {
        auto r = reader.take();
        o.body = r.body;
        o.method = r.method;
        o.target = r.target;
    }
    o.left = buffer;
    return o;
}

}  // namespace

TEST_CASE("RequestReader: whole or a byte at a time, the same outcome") {
    Limits limits;
    limits.max_body_bytes = 100;
    limits.max_header_bytes = 512;
    struct Row {
        const char* name;
        std::string bytes;
        State state;
        int status;
        std::string body;
        std::string left;
    };
    const std::vector<Row> rows = {
        {"GET, no body", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", State::complete, 0, "", ""},
        {"empty lines before the request line", "\r\n\r\nGET / HTTP/1.1\r\n\r\n", State::complete, 0, "", ""},
        {"Content-Length body", "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", State::complete, 0, "hello", ""},
        {"pipelined: the next request stays", "POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\n\r\n",
         State::complete, 0, "hi", "GET / HTTP/1.1\r\n\r\n"},
        {"chunked, with an extension and a trailer",
         "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nT: v\r\n\r\nNEXT", State::complete, 0,
         "hello!", "NEXT"},
        {"incomplete head", "GET / HTTP/1.1\r\nHost: x\r\n", State::need_more, 0, "", ""},
        {"incomplete body", "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel", State::need_more, 0, "", ""},
        {"head over the limit", "GET / HTTP/1.1\r\nX: " + std::string(600, 'a') + "\r\n\r\n", State::failed, 431, "", ""},
        {"Content-Length over the limit", "POST /a HTTP/1.1\r\nContent-Length: 101\r\n\r\n", State::failed, 413, "", ""},
        {"chunks over the limit", "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + std::string(64, 'a') + "\r\n40\r\n",
         State::failed, 413, "", ""},
        {"a chunk size of 2^63", "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8000000000000000\r\n", State::failed, 400, "", ""},
        {"a chunk size that is not hex", "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", State::failed, 400, "", ""},
        {"a chunk without its CRLF", "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXY", State::failed, 400, "", ""},
        {"Content-Length and Transfer-Encoding", "POST /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
         State::failed, 400, "", ""},
        {"two different Content-Lengths", "POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", State::failed, 400, "", ""},
        {"a negative Content-Length", "POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n", State::failed, 400, "", ""},
        {"a Content-Length of 20 digits", "POST /a HTTP/1.1\r\nContent-Length: 18446744073709551617\r\n\r\n", State::failed, 400, "", ""},
        {"gzip transfer coding", "POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", State::failed, 501, "", ""},
        {"Expect other than 100-continue", "POST /a HTTP/1.1\r\nExpect: later\r\n\r\n", State::failed, 417, "", ""},
        {"HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", State::failed, 505, "", ""},
        {"no version", "GET /\r\n\r\n", State::failed, 400, "", ""},
        {"an absolute-form target: its path", "GET http://x/healthz?a=1 HTTP/1.1\r\n\r\n", State::complete, 0, "", ""},
        {"an authority-form target", "CONNECT x:443 HTTP/1.1\r\n\r\n", State::failed, 400, "", ""},
        {"OPTIONS *", "OPTIONS * HTTP/1.1\r\n\r\n", State::complete, 0, "", ""},
    };
    for (const auto& row : rows)
        for (const bool slow : {false, true}) {
            CAPTURE(row.name);
            CAPTURE(slow);
            const Outcome o = read_all(row.bytes, slow, limits);
            CHECK(o.state == row.state);
            CHECK(o.status == row.status);
            if (row.state == State::complete) {
                CHECK(o.body == row.body);
                // A byte at a time, the reader stops at the end of its request: nothing is left.
                CHECK(o.left == (slow ? std::string() : row.left));
            }
        }
}

TEST_CASE("RequestReader: asks for 100 Continue only when a body is expected") {
    Limits limits;
    for (const auto& [head, wants] : std::vector<std::pair<std::string, bool>>{
             {"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", true},
             {"POST /a HTTP/1.1\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n", true},
             {"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n", false},
             {"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n", false}}) {
        RequestReader reader(limits);
        std::string buffer = head;
        const State s = reader.read(buffer);
        CAPTURE(head);
        CHECK(s != State::failed);
        CHECK(reader.head_done());
        CHECK(reader.wants_continue() == wants);
    }
}

TEST_CASE("serialize: Content-Length and Connection are the server's; HEAD has no body; 204 no length") {
    calcalert::http::Response r;
    r.status = 200;
    r.set("Content-Type", "text/plain");
    r.set("Content-Length", "999");  // ignored
    r.body = "ok";
    const std::string s = calcalert::http::serialize(r, nullptr, true);
    CHECK(s == "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: calcalert\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok");
    calcalert::http::Request head;
    head.method = "HEAD";
    CHECK(calcalert::http::serialize(r, &head, false).find("\r\n\r\n") + 4 == calcalert::http::serialize(r, &head, false).size());
    r.status = 204;
    CHECK(calcalert::http::serialize(r, nullptr, false).find("Content-Length") == std::string::npos);
}
