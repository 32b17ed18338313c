// The site's time zone for explanations: times in DetectedIssue details, CDS cards and the text report
// are written in it ("14 Nov 2026 08:50 CET"). Loaded once (catalog setting display.timeZone, or a
// command-line option) and then used read-only, so the engine stays pure. Evidence hashes never use it.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace calcalert::rules {

class TimeZoneError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class TimeZone {
public:
    // UTC.
    TimeZone();
    // "UTC"; a fixed offset "+01:00", "-05:00", "UTC+05:30"; or an IANA zone name ("Europe/Berlin")
    // read from the system's compiled zone files ($TZDIR, else /usr/share/zoneinfo). Throws
    // TimeZoneError naming the zone when it is unknown or its file cannot be read.
    static TimeZone load(const std::string& name);

    const std::string& name() const { return name_; }
    bool is_utc() const { return types_.size() == 1 && types_[0].offset == 0 && transitions_.empty() && !rule_; }

    struct Local {
        std::int64_t offset = 0;   // seconds east of UTC
        std::string abbreviation;  // "CET", "EDT", "UTC", "UTC+05:30"
    };
    Local at(std::int64_t utc) const;

private:
    struct Type {
        std::int64_t offset = 0;
        std::string abbreviation;
    };
    // A POSIX TZ rule ("CET-1CEST,M3.5.0,M10.5.0/3") for the times after the last transition.
    struct Rule {
        Type standard, daylight;
        bool has_daylight = false;
        int start_month = 0, start_week = 0, start_day = 0;
        std::int64_t start_time = 7200;
        int end_month = 0, end_week = 0, end_day = 0;
        std::int64_t end_time = 7200;
    };
    static bool parse_rule(std::string_view s, Rule& out);
    Local from_rule(std::int64_t utc) const;

    std::string name_ = "UTC";
    std::vector<std::int64_t> transitions_;  // UTC seconds, ascending
    std::vector<std::uint8_t> transition_types_;
    std::vector<Type> types_{Type{0, "UTC"}};
    std::size_t initial_type_ = 0;  // the type before the first transition
    bool rule_ = false;
    Rule posix_;
};

// A time for people in the zone: "14 Nov 2026 08:50 CET". A time at exactly midnight UTC is taken for
// a date without a time (FHIR dates such as "2026-11-20" read as midnight UTC) and written "20 Nov 2026"
// in every zone.
std::string format_time_for_people(std::int64_t utc, const TimeZone& zone);

}  // namespace calcalert::rules
