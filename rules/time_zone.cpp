#include "rules/time_zone.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>

namespace calcalert::rules {
namespace {

constexpr std::int64_t kDay = 86400;

// Days since 1970-01-01 of a civil date, and back (H. Hinnant's algorithms).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

struct Civil {
    std::int64_t year;
    unsigned month, day;
};

Civil civil_from_days(std::int64_t z) {
    z += 719468;
    const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const auto doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    const unsigned d = doy - (153 * mp + 2) / 5 + 1;
    const unsigned m = mp < 10 ? mp + 3 : mp - 9;
    return {static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2), m, d};
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

std::string offset_text(std::int64_t offset) {
    if (offset == 0) return "UTC";
    const std::int64_t a = offset < 0 ? -offset : offset;
    char buf[32];
    std::snprintf(buf, sizeof buf, "UTC%c%02d:%02d", offset < 0 ? '-' : '+', static_cast<int>(a / 3600),
                  static_cast<int>(a % 3600 / 60));
    return buf;
}

// "+01:00", "-0500", "+5", "UTC+05:30": seconds east of UTC.
bool parse_fixed_offset(std::string_view s, std::int64_t& out) {
    if (s.rfind("UTC", 0) == 0 || s.rfind("GMT", 0) == 0) s.remove_prefix(3);
    if (s.empty() || (s[0] != '+' && s[0] != '-')) return false;
    const int sign = s[0] == '-' ? -1 : 1;
    s.remove_prefix(1);
    std::string digits;
    for (char c : s)
        if (c != ':') digits += c;
    if (digits.empty() || digits.size() > 4 || !std::all_of(digits.begin(), digits.end(), [](char c) {
            return std::isdigit(static_cast<unsigned char>(c));
        }))
        return false;
    int h = 0, m = 0;
    if (digits.size() <= 2) {
        h = std::atoi(digits.c_str());
    } else {
        h = std::atoi(digits.substr(0, digits.size() - 2).c_str());
        m = std::atoi(digits.substr(digits.size() - 2).c_str());
    }
    if (h > 14 || m > 59) return false;
    out = sign * (h * 3600 + m * 60);
    return true;
}

std::int64_t read_be(const unsigned char* p, int bytes) {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | p[i];
    if (bytes == 4) return static_cast<std::int32_t>(static_cast<std::uint32_t>(v));
    return static_cast<std::int64_t>(v);
}

// The day of month of "week w (1-5, 5 = last) weekday d (0 = Sunday) of month m" in year y.
std::int64_t rule_day(std::int64_t y, int m, int w, int d) {
    const std::int64_t first = days_from_civil(y, static_cast<unsigned>(m), 1);
    const std::int64_t first_weekday = ((first % 7) + 11) % 7;  // 1970-01-01 was a Thursday (4)
    std::int64_t day = 1 + ((d - first_weekday) % 7 + 7) % 7 + 7 * (w - 1);
    static const int lengths[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int length = lengths[m - 1];
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) length = 29;
    while (day > length) day -= 7;
    return first + day - 1;
}

}  // namespace

TimeZone::TimeZone() = default;

bool TimeZone::parse_rule(std::string_view s, Rule& out) {
    std::size_t i = 0;
    auto name = [&](std::string& n) {
        n.clear();
        if (i < s.size() && s[i] == '<') {
            const auto close = s.find('>', i);
            if (close == std::string_view::npos) return false;
            n = std::string(s.substr(i + 1, close - i - 1));
            i = close + 1;
            return !n.empty();
        }
        while (i < s.size() && std::isalpha(static_cast<unsigned char>(s[i]))) n += s[i++];
        return n.size() >= 3;
    };
    auto hms = [&](std::int64_t& v) {  // [+-]hh[:mm[:ss]]
        int sign = 1;
        if (i < s.size() && (s[i] == '+' || s[i] == '-')) sign = s[i++] == '-' ? -1 : 1;
        std::int64_t parts[3] = {0, 0, 0};
        for (int k = 0; k < 3; ++k) {
            if (k > 0) {
                if (i >= s.size() || s[i] != ':') break;
                ++i;
            }
            if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
            std::int64_t n = 0;
            while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) n = n * 10 + (s[i++] - '0');
            parts[k] = n;
        }
        v = sign * (parts[0] * 3600 + parts[1] * 60 + parts[2]);
        return true;
    };
    auto date = [&](int& m, int& w, int& d, std::int64_t& t) {
        if (i >= s.size() || s[i] != 'M') return false;  // only the Mm.w.d form (the one zic writes)
        ++i;
        auto num = [&](int& n) {
            if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
            n = 0;
            while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) n = n * 10 + (s[i++] - '0');
            return true;
        };
        if (!num(m) || i >= s.size() || s[i++] != '.' || !num(w) || i >= s.size() || s[i++] != '.' || !num(d)) return false;
        if (m < 1 || m > 12 || w < 1 || w > 5 || d < 0 || d > 6) return false;
        t = 7200;
        if (i < s.size() && s[i] == '/') {
            ++i;
            if (!hms(t)) return false;
        }
        return true;
    };
    std::int64_t posix_offset = 0;
    if (!name(out.standard.abbreviation) || !hms(posix_offset)) return false;
    out.standard.offset = -posix_offset;  // POSIX counts west of UTC
    if (i == s.size()) return true;
    if (!name(out.daylight.abbreviation)) return false;
    out.has_daylight = true;
    out.daylight.offset = out.standard.offset + 3600;
    if (i < s.size() && s[i] != ',') {
        if (!hms(posix_offset)) return false;
        out.daylight.offset = -posix_offset;
    }
    if (i >= s.size() || s[i++] != ',') return false;
    if (!date(out.start_month, out.start_week, out.start_day, out.start_time)) return false;
    if (i >= s.size() || s[i++] != ',') return false;
    if (!date(out.end_month, out.end_week, out.end_day, out.end_time)) return false;
    return i == s.size();
}

TimeZone TimeZone::load(const std::string& name) {
    TimeZone z;
    z.name_ = name;
    if (name.empty() || name == "UTC" || name == "Etc/UTC" || name == "Z") {
        z.name_ = "UTC";
        return z;
    }
    if (std::int64_t offset = 0; parse_fixed_offset(name, offset)) {
        z.types_ = {Type{offset, offset_text(offset)}};
        z.name_ = offset_text(offset);
        return z;
    }
    // An IANA name: letters, digits, '/', '_', '-', '+'; never a path that climbs out of the zone folder.
    const bool plausible = std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '/' || c == '_' || c == '-' || c == '+';
    });
    if (!plausible || name.find("..") != std::string::npos || name.front() == '/')
        throw TimeZoneError("time zone '" + name + "': not UTC, an offset like +01:00 or an IANA zone name");
    const char* dir_env = std::getenv("TZDIR");
    const std::string dir = dir_env && *dir_env ? dir_env : "/usr/share/zoneinfo";
    const std::string path = dir + "/" + name;
    std::ifstream in(path, std::ios::binary);
    if (!in) throw TimeZoneError("time zone '" + name + "': unknown (no zone file " + path + ")");
    const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto* p = reinterpret_cast<const unsigned char*>(data.data());
    const std::size_t n = data.size();
    auto bad = [&]() -> TimeZoneError { return TimeZoneError("time zone '" + name + "': " + path + " is not a TZif file"); };
    if (n < 44 || data.compare(0, 4, "TZif") != 0) throw bad();
    struct Counts {
        std::int64_t isut, isstd, leap, time, type, chars;
    };
    auto counts = [&](std::size_t at) {
        if (at + 44 > n) throw bad();
        return Counts{read_be(p + at + 20, 4), read_be(p + at + 24, 4), read_be(p + at + 28, 4),
                      read_be(p + at + 32, 4), read_be(p + at + 36, 4), read_be(p + at + 40, 4)};
    };
    auto block_size = [](const Counts& c, int time_bytes) {
        return static_cast<std::size_t>(c.time * time_bytes + c.time + c.type * 6 + c.chars +
                                        c.leap * (time_bytes + 4) + c.isstd + c.isut);
    };
    Counts c = counts(0);
    std::size_t at = 44;
    int time_bytes = 4;
    if (data[4] >= '2') {  // skip the 32-bit block: read the 64-bit one that follows
        at += block_size(c, 4);
        c = counts(at);
        at += 44;
        time_bytes = 8;
    }
    if (c.type < 1 || c.time < 0 || c.chars < 0 || at + block_size(c, time_bytes) > n) throw bad();
    for (std::int64_t k = 0; k < c.time; ++k) z.transitions_.push_back(read_be(p + at + k * time_bytes, time_bytes));
    at += static_cast<std::size_t>(c.time * time_bytes);
    for (std::int64_t k = 0; k < c.time; ++k) z.transition_types_.push_back(p[at + k]);
    at += static_cast<std::size_t>(c.time);
    const std::size_t types_at = at;
    const std::size_t chars_at = types_at + static_cast<std::size_t>(c.type * 6);
    z.types_.clear();
    for (std::int64_t k = 0; k < c.type; ++k) {
        const unsigned char* t = p + types_at + k * 6;
        const std::size_t abbr = t[5];
        std::string a;
        for (std::size_t q = chars_at + abbr; q < chars_at + static_cast<std::size_t>(c.chars) && p[q]; ++q)
            a += static_cast<char>(p[q]);
        z.types_.push_back(Type{read_be(t, 4), a});
    }
    for (auto t : z.transition_types_)
        if (t >= z.types_.size()) throw bad();
    at = chars_at + static_cast<std::size_t>(c.chars) + static_cast<std::size_t>(c.leap * (time_bytes + 4) + c.isstd + c.isut);
    // The footer (version 2+): a POSIX TZ string for the times after the last transition.
    if (time_bytes == 8 && at < n && data[at] == '\n') {
        const auto end = data.find('\n', at + 1);
        if (end != std::string::npos && end > at + 1)
            z.rule_ = parse_rule(std::string_view(data).substr(at + 1, end - at - 1), z.posix_);
    }
    return z;
}

TimeZone::Local TimeZone::from_rule(std::int64_t utc) const {
    const Rule& r = posix_;
    if (!r.has_daylight) return {r.standard.offset, r.standard.abbreviation};
    const std::int64_t year = civil_from_days(floor_div(utc + r.standard.offset, kDay)).year;
    auto start_of = [&](std::int64_t y) {
        return rule_day(y, r.start_month, r.start_week, r.start_day) * kDay + r.start_time - r.standard.offset;
    };
    auto end_of = [&](std::int64_t y) {
        return rule_day(y, r.end_month, r.end_week, r.end_day) * kDay + r.end_time - r.daylight.offset;
    };
    const std::int64_t start = start_of(year), end = end_of(year);
    const bool dst = start < end ? (utc >= start && utc < end) : (utc < end || utc >= start);
    return dst ? Local{r.daylight.offset, r.daylight.abbreviation} : Local{r.standard.offset, r.standard.abbreviation};
}

TimeZone::Local TimeZone::at(std::int64_t utc) const {
    if (transitions_.empty()) {
        if (rule_) return from_rule(utc);
        return {types_[initial_type_].offset, types_[initial_type_].abbreviation.empty()
                                                  ? offset_text(types_[initial_type_].offset)
                                                  : types_[initial_type_].abbreviation};
    }
    if (utc >= transitions_.back() && rule_) return from_rule(utc);
    const auto it = std::upper_bound(transitions_.begin(), transitions_.end(), utc);
    const std::size_t type = it == transitions_.begin()
                                 ? initial_type_
                                 : transition_types_[static_cast<std::size_t>(it - transitions_.begin()) - 1];
    const Type& t = types_[type];
    return {t.offset, t.abbreviation.empty() ? offset_text(t.offset) : t.abbreviation};
}

std::string format_time_for_people(std::int64_t utc, const TimeZone& zone) {
    static const char* const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    const bool date_only = floor_div(utc, kDay) * kDay == utc;
    const TimeZone::Local local = date_only ? TimeZone::Local{0, "UTC"} : zone.at(utc);
    const std::int64_t t = utc + local.offset;
    const std::int64_t days = floor_div(t, kDay);
    const std::int64_t rem = t - days * kDay;
    const Civil c = civil_from_days(days);
    // "%u %s %lld", then " %02d:%02d %s" unless date_only (what snprintf wrote into 64 bytes).
    char buf[24];
    std::string out(buf, static_cast<std::size_t>(std::to_chars(buf, buf + sizeof buf, c.day).ptr - buf));
    out += ' ';
    out += months[c.month - 1];
    out += ' ';
    out.append(buf, static_cast<std::size_t>(std::to_chars(buf, buf + sizeof buf, static_cast<long long>(c.year)).ptr - buf));
    if (!date_only) {
        const int hh = static_cast<int>(rem / 3600), mm = static_cast<int>(rem % 3600 / 60);
        out += ' ';
        out += static_cast<char>('0' + hh / 10);
        out += static_cast<char>('0' + hh % 10);
        out += ':';
        out += static_cast<char>('0' + mm / 10);
        out += static_cast<char>('0' + mm % 10);
        out += ' ';
        out += local.abbreviation;
    }
    if (out.size() > 63) out.resize(63);
    return out;
}

}  // namespace calcalert::rules
