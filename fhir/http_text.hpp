// Text and URL helpers of the HTTP layer (the FHIR client and the transport under it): case-
// insensitive compares, printable snippets of untrusted bytes for messages, URL encoding and
// origins (libcurl's URL parser), and Retry-After values. Internal to fhir/ and auth/.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include <curl/curl.h>

namespace calcalert::fhir::text {

std::string lower(std::string s);
bool iequals(std::string_view a, std::string_view b);
bool istarts_with(std::string_view s, std::string_view prefix);
std::string_view trim(std::string_view s);
bool is_control(unsigned char c);
bool is_token_char(unsigned char c);  // an RFC 9110 tchar
// Untrusted bytes made printable for a message: \n, \r, \t, \xNN for other controls and invalid
// UTF-8, at most `max` characters then "...".
std::string escaped(std::string_view s, std::size_t max = std::string_view::npos);
inline constexpr std::size_t kSnippetChars = 80;
std::string quoted_snippet(std::string_view body);  // "\"" + escaped(body, kSnippetChars) + "\""

// "http:" etc. at the start: an absolute URL (or another scheme, refused later).
bool has_scheme(std::string_view s);
// Percent-encodes what a URL cannot carry literally. Returns the position of a control character
// (refused: it would split the request line), or npos.
std::size_t encode_url(std::string_view in, std::string& out);

// RAII for libcurl's URL parser.
class UrlParser {
public:
    UrlParser();
    ~UrlParser();
    UrlParser(const UrlParser&) = delete;
    UrlParser& operator=(const UrlParser&) = delete;
    // Sets the URL; a relative one is resolved against the URL set before (RFC 3986).
    bool set(const std::string& url);
    std::optional<std::string> get(CURLUPart part, unsigned flags = 0) const;

private:
    CURLU* u_;
};

// scheme://host:port of an absolute http(s) URL, lower case with the port explicit; nullopt otherwise.
std::optional<std::string> origin_of(const std::string& url);

// An HTTP-date (IMF-fixdate, RFC 850 or asctime) as a time point; nullopt when malformed.
std::optional<std::chrono::system_clock::time_point> parse_http_date(const std::string& s);
// A Retry-After value (delay-seconds or an HTTP-date, relative to `now`) as a wait; nullopt when malformed.
std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view value, std::chrono::system_clock::time_point now);

}  // namespace calcalert::fhir::text
