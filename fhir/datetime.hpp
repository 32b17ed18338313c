// FHIR date, dateTime and instant values as seconds since the Unix epoch (UTC).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace calcalert::fhir {

using EpochSeconds = std::int64_t;

// Parses YYYY, YYYY-MM, YYYY-MM-DD, YYYY-MM-DDThh:mm(:ss(.fff)) with Z or ±hh:mm (a time without a
// zone is read as UTC). Partial dates give their first instant. Returns nullopt on any other form.
std::optional<EpochSeconds> parse_datetime(std::string_view text);

// RFC 3339 in UTC, e.g. 2026-11-25T12:00:00Z.
std::string format_datetime(EpochSeconds t);
// 2026-11-25 when the time is midnight UTC, else 2026-11-25 08:30 UTC.
std::string format_date_for_people(EpochSeconds t);

}  // namespace calcalert::fhir
