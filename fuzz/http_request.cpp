// The HTTP/1.1 request framing of the CDS Hooks server (adapters/http: RequestReader): the input
// as the bytes a client sends, fed whole and again in pieces of 1 to 64 bytes (the sizes taken
// from the input itself), with small limits so that every limit is reached. Both ways must reach
// the same outcome, and a complete request must leave exactly the bytes after it. Any exception
// or disagreement is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "adapters/http/event_server.hpp"
#include "fuzz_support.hpp"

using namespace calcalert;

namespace {

struct Outcome {
    http::RequestReader::State state = http::RequestReader::State::need_more;
    int status = 0;
    std::string body, target, left;
};

Outcome read(const std::string& bytes, std::size_t piece, const http::Limits& limits) {
    http::RequestReader reader(limits);
    std::string buffer;
    Outcome o;
    std::size_t at = 0;
    do {
        const std::size_t n = piece == 0 ? bytes.size() : std::min(piece, bytes.size() - at);
        buffer.append(bytes, at, n);
        at += n;
        o.state = reader.read(buffer);
    } while (o.state == http::RequestReader::State::need_more && at < bytes.size());
    if (o.state == http::RequestReader::State::failed) o.status = reader.error_status();
    if (o.state == http::RequestReader::State::complete) {
        const http::Request r = reader.take();
        o.body = r.body;
        o.target = r.target;
        (void)r.path();
        (void)r.header("Content-Type");
    }
    o.left = buffer + bytes.substr(at);
    return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    http::Limits limits;
    limits.max_header_bytes = 512;
    limits.max_body_bytes = 1024;
    const std::size_t piece = 1 + data[0] % 64;
    const std::string bytes(fuzz::as_text(data + 1, size - 1));
    const Outcome whole = read(bytes, 0, limits);
    const Outcome pieces = read(bytes, piece, limits);
    // A request read in pieces stops at its end; the rest of the input is what follows it.
    if (whole.state != pieces.state || whole.status != pieces.status || whole.body != pieces.body ||
        whole.target != pieces.target || (whole.state == http::RequestReader::State::complete && whole.left != pieces.left))
        std::abort();
    if (whole.state == http::RequestReader::State::complete) {
        http::Response r;
        r.body = whole.body;
        (void)http::serialize(r, nullptr, true);
    }
    return 0;
}
