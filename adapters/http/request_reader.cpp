// RequestReader: one HTTP/1.1 request out of buffered bytes, incrementally (a byte at a time costs
// no rescan), with the head parsed by Poco's HTTPRequest and the body by Content-Length or chunked.
#include <algorithm>
#include <cctype>
#include <sstream>

#include <Poco/Exception.h>
#include <Poco/Net/HTTPRequest.h>

#include "adapters/http/event_server.hpp"

namespace calcalert::http {
namespace {

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

std::string trim(std::string_view s) {
    const auto first = s.find_first_not_of(" \t");
    if (first == std::string_view::npos) return {};
    const auto last = s.find_last_not_of(" \t");
    return std::string(s.substr(first, last - first + 1));
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

bool is_token(std::string_view s) {
    static constexpr std::string_view extra = "!#$%&'*+-.^_`|~";
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || extra.find(c) != std::string_view::npos;
    });
}

constexpr std::size_t kMaxChunkLine = 1024;   // a chunk-size line with its extensions
constexpr std::size_t kMaxTrailerBytes = 4096;

}  // namespace

std::string Request::header(std::string_view name) const {
    for (const auto& [n, v] : headers)
        if (iequals(n, name)) return v;
    return {};
}

std::string Request::path() const {
    const auto q = target.find_first_of("?#");
    return q == std::string::npos ? target : target.substr(0, q);
}

void Response::set(std::string name, std::string value) {
    for (auto& [n, v] : headers)
        if (iequals(n, name)) {
            v = std::move(value);
            return;
        }
    headers.emplace_back(std::move(name), std::move(value));
}

RequestReader::State RequestReader::fail(int status, std::string why) {
    error_status_ = status;
    error_ = std::move(why);
    return State::failed;
}

RequestReader::State RequestReader::read(std::string& buffer) {
    if (error_status_ != 0) return State::failed;
    if (!head_done_) {
        const State s = read_head(buffer);
        if (s != State::complete) return s;
    }
    if (chunked_) return read_chunked(buffer);
    const auto n = static_cast<std::size_t>(std::min<std::int64_t>(body_left_, static_cast<std::int64_t>(buffer.size())));
    request_.body.append(buffer, 0, n);
    buffer.erase(0, n);
    body_left_ -= static_cast<std::int64_t>(n);
    return body_left_ == 0 ? State::complete : State::need_more;
}

RequestReader::State RequestReader::read_head(std::string& buffer) {
    if (!started_) {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        std::size_t skip = 0;
        while (skip + 1 < buffer.size() && buffer[skip] == '\r' && buffer[skip + 1] == '\n') skip += 2;
        buffer.erase(0, skip);
        if (buffer.empty() || buffer == "\r") return State::need_more;
        started_ = true;
    }
    const std::size_t from = scanned_ >= 3 ? scanned_ - 3 : 0;
    const std::size_t end = buffer.find("\r\n\r\n", from);
    if (end == std::string::npos) {
        scanned_ = buffer.size();
        if (buffer.size() > limits_.max_header_bytes)
            return fail(431, "the request head is larger than " + std::to_string(limits_.max_header_bytes) + " bytes");
        return State::need_more;
    }
    if (end + 4 > limits_.max_header_bytes)
        return fail(431, "the request head is larger than " + std::to_string(limits_.max_header_bytes) + " bytes");
    const std::string head = buffer.substr(0, end + 4);
    buffer.erase(0, end + 4);
    head_done_ = true;

    Poco::Net::HTTPRequest parsed;
    try {
        std::istringstream in(head);
        parsed.read(in);
    } catch (const Poco::Exception& e) {
        return fail(400, "malformed request head: " + e.displayText());
    } catch (const std::exception& e) {
        return fail(400, std::string("malformed request head: ") + e.what());
    }
    request_.method = parsed.getMethod();
    request_.target = parsed.getURI();
    request_.version = parsed.getVersion();
    if (!is_token(request_.method)) return fail(400, "malformed request line: the method is not a token");
    if (request_.version.rfind("HTTP/", 0) != 0) return fail(400, "malformed request line: no HTTP version");
    if (request_.version != "HTTP/1.1" && request_.version != "HTTP/1.0")
        return fail(505, "HTTP version not supported: " + request_.version.substr(0, 16));
    // The absolute form (RFC 9112 §3.2.2: a server must accept it) is read as its path and query.
    for (const char* scheme : {"http://", "https://"})
        if (request_.target.rfind(scheme, 0) == 0) {
            const auto slash = request_.target.find_first_of("/?", std::string_view(scheme).size());
            request_.target = slash == std::string::npos ? "/" : (request_.target[slash] == '?' ? "/" : "") + request_.target.substr(slash);
        }
    if (request_.target.empty() || (request_.target[0] != '/' && !(request_.target == "*" && request_.method == "OPTIONS")))
        return fail(400, "the request target is not a path");
    std::string content_length;
    int lengths = 0;
    for (const auto& [name, value] : parsed) {
        if (!is_token(name)) return fail(400, "a header name is not a token");
        request_.headers.emplace_back(name, value);
        if (iequals(name, "Content-Length")) {
            if (lengths++ > 0 && trim(value) != content_length) return fail(400, "two different Content-Length headers");
            content_length = trim(value);
        }
    }

    const std::string te = request_.header("Transfer-Encoding");
    if (!te.empty()) {
        if (lengths > 0) return fail(400, "both Transfer-Encoding and Content-Length");
        if (lower(trim(te)) != "chunked") return fail(501, "only the chunked transfer coding is supported");
        chunked_ = true;
    } else if (lengths > 0) {
        if (content_length.empty() || content_length.size() > 18 ||
            !std::all_of(content_length.begin(), content_length.end(), [](char c) { return c >= '0' && c <= '9'; }))
            return fail(400, "Content-Length is not a number");
        body_left_ = std::stoll(content_length);
        if (body_left_ > limits_.max_body_bytes)
            return fail(413, "the request body is larger than " + std::to_string(limits_.max_body_bytes) + " bytes");
    }
    const std::string expect = request_.header("Expect");
    if (!expect.empty()) {
        if (lower(trim(expect)) != "100-continue") return fail(417, "unsupported Expect: " + expect.substr(0, 64));
        wants_continue_ = chunked_ || body_left_ > 0;
    }
    return State::complete;
}

RequestReader::State RequestReader::read_chunked(std::string& b) {
    std::size_t pos = 0;
    const auto wait = [&] {
        b.erase(0, pos);
        return State::need_more;
    };
    for (;;) {
        switch (chunk_) {
            case Chunk::size_line: {
                const std::size_t eol = b.find("\r\n", pos);
                if (eol == std::string::npos) {
                    if (b.size() - pos > kMaxChunkLine) return fail(400, "a chunk-size line is too long");
                    return wait();
                }
                if (eol - pos > kMaxChunkLine) return fail(400, "a chunk-size line is too long");
                const std::string line = b.substr(pos, eol - pos);
                pos = eol + 2;
                const std::string hex = trim(line.substr(0, line.find(';')));
                if (hex.empty() || hex.size() > 15 ||
                    !std::all_of(hex.begin(), hex.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); }))
                    return fail(400, "a chunk size is not a hexadecimal number");
                const std::int64_t size = std::stoll(hex, nullptr, 16);
                if (size == 0) {
                    chunk_ = Chunk::trailers;
                    break;
                }
                if (size > limits_.max_body_bytes - static_cast<std::int64_t>(request_.body.size()))
                    return fail(413, "the request body is larger than " + std::to_string(limits_.max_body_bytes) + " bytes");
                chunk_left_ = size;
                chunk_ = Chunk::data;
                break;
            }
            case Chunk::data: {
                const auto n = static_cast<std::size_t>(std::min<std::int64_t>(chunk_left_, static_cast<std::int64_t>(b.size() - pos)));
                request_.body.append(b, pos, n);
                pos += n;
                chunk_left_ -= static_cast<std::int64_t>(n);
                if (chunk_left_ > 0) return wait();
                chunk_ = Chunk::data_end;
                break;
            }
            case Chunk::data_end:
                if (b.size() - pos < 2) return wait();
                if (b.compare(pos, 2, "\r\n") != 0) return fail(400, "a chunk does not end with CRLF");
                pos += 2;
                chunk_ = Chunk::size_line;
                break;
            case Chunk::trailers: {
                const std::size_t eol = b.find("\r\n", pos);
                if (eol == std::string::npos) {
                    if (trailer_bytes_ + (b.size() - pos) > kMaxTrailerBytes) return fail(431, "the trailers are too large");
                    return wait();
                }
                if (eol == pos) {
                    b.erase(0, pos + 2);
                    chunk_ = Chunk::done;
                    return State::complete;
                }
                trailer_bytes_ += eol - pos + 2;
                if (trailer_bytes_ > kMaxTrailerBytes) return fail(431, "the trailers are too large");
                pos = eol + 2;  // trailer fields are read and dropped
                break;
            }
            case Chunk::done:
                return State::complete;
        }
    }
}

Request RequestReader::take() { return std::move(request_); }

}  // namespace calcalert::http
