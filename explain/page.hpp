// The explanation page of one alert: a pure renderer from (finding, the patient's facts, the evaluation's
// data-quality notes, the catalog, the guidance) to one self-contained HTML page with inline SVG. No I/O,
// no clock, no external resource (no script, no font, no image, no stylesheet: it works offline and
// prints). Every text that comes from data (patient data is untrusted, the catalog and guidance too) is
// HTML-escaped; invalid UTF-8 is written as U+FFFD.
//
// The page holds, in order: the finding in one sentence; why (each evidence line in words); the evidence
// table of the lab results it rests on (value, unit, date, status, source reference); a chart per charted
// value (guidance.json "chart": calcium, phosphate, Ca×P, PTH) over the longest window of the lab facts
// that judge it, with each lab fact's threshold drawn as a line (taken from the catalog: its default, or
// its multiple of the reference-range high the judged result reports) and the values that made a lab fact
// of this finding hold marked distinctly (shape, colour and, for screen readers, their label); the
// conditions, procedures and orders used, with their status; the rule's notes; the seed's guidance for
// the rule with its citation; the data-quality notes; the rule, version, identifier and evidence hash.
// Times are written in the catalog's time zone.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "explain/guidance.hpp"
#include "rules/engine.hpp"

namespace calcalert::explain {

// &, <, >, " and ' as entities; invalid UTF-8 and control characters (other than tab and newline) as U+FFFD.
std::string html_escape(std::string_view text);

struct PageInput {
    const rules::Finding* finding = nullptr;
    const rules::PatientFacts* facts = nullptr;
    const std::vector<rules::DataQualityNote>* notes = nullptr;  // the evaluation's notes for the patient
    const rules::RuleCatalog* catalog = nullptr;
    const Guidance* guidance = nullptr;
    rules::EpochSeconds now = 0;  // the evaluation time
    std::string identifier;       // the alert identifier (the DetectedIssue identifier, the card uuid)
    std::string index_href;       // a link back to an index page; "" for none
    std::string footer_note;      // one more line for the footer (e.g. until when a served link is valid)
};

// The marker of every page calcalert writes (a <meta name="generator">): `evaluate --format html` replaces
// only files that carry it.
inline constexpr std::string_view kGeneratorMeta = "<meta name=\"generator\" content=\"calcalert explanation page\">";

// Bounds of one page, whatever the data: the latest kMaxChartPoints values of a chart are drawn (the
// others are counted under it), the first kMaxListedNotes data-quality notes are listed (the others counted).
inline constexpr std::size_t kMaxChartPoints = 400;
inline constexpr std::size_t kMaxListedNotes = 200;

std::string render_page(const PageInput& input);

struct IndexEntry {
    std::string patient;
    const rules::Finding* finding = nullptr;
    std::string href;  // the finding's page, relative to the index
};
// The index of a batch: one row per finding (patient, severity, rule, the finding in one sentence, linked
// to its page), then the count of patients evaluated and of data-quality notes.
std::string render_index(const std::vector<IndexEntry>& entries, std::size_t patients, std::size_t notes,
                         rules::EpochSeconds now, const rules::TimeZone& zone);

}  // namespace calcalert::explain
