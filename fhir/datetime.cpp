#include "fhir/datetime.hpp"

#include <cctype>
#include <cstdio>

namespace calcalert::fhir {
namespace {

// Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's algorithm).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

void civil_from_days(std::int64_t z, int& y, unsigned& m, unsigned& d) {
    z += 719468;
    const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const auto doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const std::int64_t yy = static_cast<std::int64_t>(yoe) + era * 400;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    d = doy - (153 * mp + 2) / 5 + 1;
    m = mp < 10 ? mp + 3 : mp - 9;
    y = static_cast<int>(yy + (m <= 2));
}

bool digits(std::string_view s, std::size_t pos, std::size_t n, int& out) {
    if (pos + n > s.size()) return false;
    int v = 0;
    for (std::size_t i = pos; i < pos + n; ++i) {
        if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
        v = v * 10 + (s[i] - '0');
    }
    out = v;
    return true;
}

unsigned days_in_month(int y, int m) {
    static const unsigned dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

}  // namespace

std::optional<EpochSeconds> parse_datetime(std::string_view s) {
    int y = 0, mo = 1, d = 1, h = 0, mi = 0, sec = 0;
    if (!digits(s, 0, 4, y)) return std::nullopt;
    std::size_t p = 4;
    if (p < s.size()) {
        if (s[p] != '-' || !digits(s, p + 1, 2, mo)) return std::nullopt;
        p += 3;
    }
    if (p < s.size()) {
        if (s[p] != '-' || !digits(s, p + 1, 2, d)) return std::nullopt;
        p += 3;
    }
    if (mo < 1 || mo > 12 || d < 1 || static_cast<unsigned>(d) > days_in_month(y, mo)) return std::nullopt;
    std::int64_t offset = 0;
    if (p < s.size()) {
        if (s[p] != 'T' || !digits(s, p + 1, 2, h) || p + 3 >= s.size() || s[p + 3] != ':' ||
            !digits(s, p + 4, 2, mi))
            return std::nullopt;
        p += 6;
        if (p < s.size() && s[p] == ':') {
            if (!digits(s, p + 1, 2, sec)) return std::nullopt;
            p += 3;
            if (p < s.size() && s[p] == '.') {
                ++p;
                const std::size_t start = p;
                while (p < s.size() && std::isdigit(static_cast<unsigned char>(s[p]))) ++p;
                if (p == start) return std::nullopt;
            }
        }
        if (h > 24 || mi > 59 || sec > 60) return std::nullopt;
        if (p < s.size()) {
            if (s[p] == 'Z') {
                ++p;
            } else if (s[p] == '+' || s[p] == '-') {
                int oh = 0, om = 0;
                if (!digits(s, p + 1, 2, oh) || p + 3 >= s.size() || s[p + 3] != ':' || !digits(s, p + 4, 2, om))
                    return std::nullopt;
                offset = (s[p] == '+' ? 1 : -1) * (oh * 3600 + om * 60);
                p += 6;
            } else {
                return std::nullopt;
            }
        }
    }
    if (p != s.size()) return std::nullopt;
    return days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) * 86400 + h * 3600 + mi * 60 +
           sec - offset;
}

std::string format_datetime(EpochSeconds t) {
    std::int64_t days = t >= 0 ? t / 86400 : (t - 86399) / 86400;
    std::int64_t rem = t - days * 86400;
    int y = 0;
    unsigned m = 0, d = 0;
    civil_from_days(days, y, m, d);
    const int hh = static_cast<int>(rem / 3600), mi = static_cast<int>(rem % 3600 / 60), ss = static_cast<int>(rem % 60);
    if (y < 0 || y > 9999) {
        char buf[40];
        std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02dZ", y, m, d, hh, mi, ss);
        return buf;
    }
    // The same characters as the snprintf above, without its format-string machinery.
    std::string out = "0000-00-00T00:00:00Z";
    auto two = [&out](std::size_t at, unsigned v) {
        out[at] = static_cast<char>('0' + v / 10);
        out[at + 1] = static_cast<char>('0' + v % 10);
    };
    two(0, static_cast<unsigned>(y) / 100);
    two(2, static_cast<unsigned>(y) % 100);
    two(5, m);
    two(8, d);
    two(11, static_cast<unsigned>(hh));
    two(14, static_cast<unsigned>(mi));
    two(17, static_cast<unsigned>(ss));
    return out;
}

std::string format_date_for_people(EpochSeconds t) {
    const std::string full = format_datetime(t);
    if (full.compare(10, 10, "T00:00:00Z") == 0) return full.substr(0, 10);
    return full.substr(0, 10) + " " + full.substr(11, 5) + " UTC";
}

}  // namespace calcalert::fhir
