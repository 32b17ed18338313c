#include "fhir/http_text.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <new>

namespace calcalert::fhir::text {
namespace {

using std::chrono::milliseconds;

// Length of the valid UTF-8 sequence starting at s[i], 0 when it is not one.
std::size_t utf8_length(std::string_view s, std::size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c >= 0xe0 && c <= 0xef) n = 3;
    else if (c >= 0xf0 && c <= 0xf4) n = 4;
    else return 0;
    if (i + n > s.size()) return 0;
    for (std::size_t k = 1; k < n; ++k)
        if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return 0;
    return n;
}

void append_hex_escape(std::string& out, unsigned char c) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    out += buf;
}

int month_number(std::string_view m) {
    static constexpr std::string_view kMonths[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                                   "jul", "aug", "sep", "oct", "nov", "dec"};
    for (int i = 0; i < 12; ++i)
        if (iequals(m, kMonths[i])) return i + 1;
    return 0;
}

}  // namespace

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
    return true;
}

bool istarts_with(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) s.remove_suffix(1);
    return s;
}

bool is_control(unsigned char c) { return c < 0x20 || c == 0x7f; }



// The text with control characters and invalid UTF-8 escaped, cut after `max` characters ("..." then).
std::string escaped(std::string_view s, std::size_t max) {
    std::string out;
    std::size_t i = 0, chars = 0;
    while (i < s.size() && chars < max) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == '\n') out += "\\n", ++i;
        else if (c == '\r') out += "\\r", ++i;
        else if (c == '\t') out += "\\t", ++i;
        else if (is_control(c)) append_hex_escape(out, c), ++i;
        else if (c < 0x80) out += static_cast<char>(c), ++i;
        else if (const std::size_t n = utf8_length(s, i)) out.append(s.substr(i, n)), i += n;
        else append_hex_escape(out, c), ++i;
        ++chars;
    }
    if (i < s.size()) out += "...";
    return out;
}

// "http:" etc. at the start: an absolute URL (or another scheme, refused later).
bool has_scheme(std::string_view s) {
    if (s.empty() || !std::isalpha(static_cast<unsigned char>(s[0]))) return false;
    for (std::size_t i = 1; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == ':') return true;
        if (!std::isalnum(c) && c != '+' && c != '-' && c != '.') return false;
    }
    return false;
}

// Percent-encodes what a URL cannot carry literally. Returns the position of a control character
// (refused: it would split the request line), or npos.
std::size_t encode_url(std::string_view in, std::string& out) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    out.clear();
    for (std::size_t i = 0; i < in.size(); ++i) {
        const auto c = static_cast<unsigned char>(in[i]);
        if (is_control(c)) return i;
        if (c == ' ' || c >= 0x80 || c == '"' || c == '<' || c == '>' || c == '\\' || c == '^' || c == '`' || c == '{' ||
            c == '|' || c == '}') {
            out += '%';
            out += kHex[c >> 4];
            out += kHex[c & 0xf];
        } else {
            out += static_cast<char>(c);
        }
    }
    return std::string_view::npos;
}

UrlParser::UrlParser() : u_(curl_url()) {
    if (!u_) throw std::bad_alloc();
}
UrlParser::~UrlParser() { curl_url_cleanup(u_); }
bool UrlParser::set(const std::string& url) { return curl_url_set(u_, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK; }
std::optional<std::string> UrlParser::get(CURLUPart part, unsigned flags) const {
    char* p = nullptr;
    if (curl_url_get(u_, part, &p, flags) != CURLUE_OK || p == nullptr) return std::nullopt;
    std::string s(p);
    curl_free(p);
    return s;
}

// scheme://host:port of an absolute http(s) URL, lower case with the port explicit; nullopt otherwise.
std::optional<std::string> origin_of(const std::string& url) {
    UrlParser u;
    if (!u.set(url)) return std::nullopt;
    const auto scheme = u.get(CURLUPART_SCHEME);
    const auto host = u.get(CURLUPART_HOST);
    const auto port = u.get(CURLUPART_PORT, CURLU_DEFAULT_PORT);
    if (!scheme || !host || !port || host->empty()) return std::nullopt;
    const std::string s = lower(*scheme);
    if (s != "http" && s != "https") return std::nullopt;
    return s + "://" + lower(*host) + ":" + *port;
}

// ---- Retry-After --------------------------------------------------------------------------------


// An HTTP-date in any of the three forms RFC 9110 asks recipients to accept:
//   IMF-fixdate  "Sun, 06 Nov 1994 08:49:37 GMT"
//   RFC 850      "Sunday, 06-Nov-94 08:49:37 GMT"
//   asctime      "Sun Nov  6 08:49:37 1994"
std::optional<std::chrono::system_clock::time_point> parse_http_date(const std::string& s) {
    char weekday[10] = {}, mon[4] = {};
    int year = 0, day = 0, hh = 0, mm = 0, ss = 0, used = 0;
    int month = 0;
    auto whole = [&](int n, int expected) { return n == expected && used > 0 && static_cast<std::size_t>(used) == s.size(); };
    if (whole(std::sscanf(s.c_str(), "%3[A-Za-z], %2d %3[A-Za-z] %4d %2d:%2d:%2d GMT%n", weekday, &day, mon, &year, &hh,
                          &mm, &ss, &used),
              7)) {
        month = month_number(mon);
    } else if (used = 0; whole(std::sscanf(s.c_str(), "%9[A-Za-z], %2d-%3[A-Za-z]-%2d %2d:%2d:%2d GMT%n", weekday, &day,
                                           mon, &year, &hh, &mm, &ss, &used),
                               7)) {
        month = month_number(mon);
        year += year < 70 ? 2000 : 1900;
    } else if (used = 0; whole(std::sscanf(s.c_str(), "%3[A-Za-z] %3[A-Za-z] %2d %2d:%2d:%2d %4d%n", weekday, mon, &day,
                                           &hh, &mm, &ss, &year, &used),
                               7)) {
        month = month_number(mon);
    } else {
        return std::nullopt;
    }
    // A year the clock's nanoseconds can hold (about 1678 to 2262), and no negative field ("-1").
    if (month == 0 || year < 1900 || year > 2200 || hh < 0 || mm < 0 || ss < 0) return std::nullopt;
    const std::chrono::year_month_day ymd{std::chrono::year(year), std::chrono::month(static_cast<unsigned>(month)),
                                          std::chrono::day(static_cast<unsigned>(day))};
    if (!ymd.ok() || hh > 23 || mm > 59 || ss > 60) return std::nullopt;
    return std::chrono::sys_days(ymd) + std::chrono::hours(hh) + std::chrono::minutes(mm) + std::chrono::seconds(ss);
}

// Retry-After as a wait: delta-seconds or an HTTP-date (in the past: no wait). nullopt when unreadable.
std::optional<milliseconds> parse_retry_after(std::string_view value, std::chrono::system_clock::time_point now) {
    const std::string v(trim(value));
    if (v.empty()) return std::nullopt;
    if (std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        if (v.size() > 9) return milliseconds(std::chrono::hours(24 * 365));  // absurdly long; capped by the caller
        return milliseconds(std::chrono::seconds(std::stol(v)));
    }
    const auto when = parse_http_date(v);
    if (!when) return std::nullopt;
    if (*when <= now) return milliseconds(0);
    return std::chrono::duration_cast<milliseconds>(*when - now);
}

bool is_token_char(unsigned char c) {
    return std::isalnum(c) || std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

std::string quoted_snippet(std::string_view body) { return "\"" + escaped(body, kSnippetChars) + "\""; }

}  // namespace calcalert::fhir::text
