#include "explain/page.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <optional>
#include <set>

namespace calcalert::explain {
namespace {

using rules::EpochSeconds;

constexpr double kDay = 86400.0;

std::string esc(std::string_view s) { return html_escape(s); }

// Decodes one UTF-8 sequence at s[i]; returns its length, or 0 when it is not valid UTF-8.
std::size_t utf8_length(std::string_view s, std::size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07;
    else return 0;
    if (i + n > s.size()) return 0;
    for (std::size_t k = 1; k < n; ++k) {
        const auto cc = static_cast<unsigned char>(s[i + k]);
        if ((cc & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (cc & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

std::string num(double v, int decimals = 2) { return rules::format_number(v, decimals); }

// SVG coordinates: one decimal.
std::string coord(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", v);
    return buf;
}

std::string when(EpochSeconds t, const rules::TimeZone& zone) { return rules::format_time_for_people(t, zone); }

// "14 Nov 2026" of "14 Nov 2026 08:50 CET": the date in the zone.
std::string day_of(EpochSeconds t, const rules::TimeZone& zone) {
    const std::string s = when(t, zone);
    std::size_t spaces = 0, i = 0;
    for (; i < s.size(); ++i)
        if (s[i] == ' ' && ++spaces == 3) break;
    return s.substr(0, i);
}

std::string_view comparator_prefix(std::optional<rules::Comparator> c) {
    if (!c) return "bounded ";
    switch (*c) {
        case rules::Comparator::none: return "";
        case rules::Comparator::lt: return "<";
        case rules::Comparator::le: return "≤";
        case rules::Comparator::ge: return "≥";
        case rules::Comparator::gt: return ">";
    }
    return "";
}

const char* severity_class(rules::RuleSeverity s) {
    switch (s) {
        case rules::RuleSeverity::high: return "sev-high";
        case rules::RuleSeverity::moderate: return "sev-moderate";
        case rules::RuleSeverity::low: return "sev-low";
    }
    return "sev-low";
}

// The page's style: system fonts, contrast of at least 4.5:1 for text (7:1 for body text), a visible
// focus ring on every focusable element, and a print layout.
constexpr const char* kStyle = R"(
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 60rem; padding: 1rem 1.25rem 3rem; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b; background: #fff; }
h1 { font-size: 1.5rem; margin: .5rem 0; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 1px solid #767676; }
h3 { font-size: 1rem; margin: 1rem 0 .25rem; }
a { color: #0b4ea2; }
a:focus-visible, [tabindex]:focus-visible { outline: 3px solid #0b4ea2; outline-offset: 2px; }
.skip { position: absolute; left: -999px; top: 0; background: #fff; padding: .5rem; }
.skip:focus { left: .5rem; }
.sentence { font-size: 1.1rem; padding: .75rem 1rem; border-left: .4rem solid #595959; background: #f3f3f3; }
.sev-high { border-color: #a4001d; } .sev-moderate { border-color: #8a4b00; } .sev-low { border-color: #0b4ea2; }
.badge { display: inline-block; padding: 0 .4rem; border: 1px solid currentColor; border-radius: .25rem; font-size: .85rem; font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; font-size: .95rem; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { border: 1px solid #767676; padding: .3rem .45rem; text-align: left; vertical-align: top; }
th { background: #ececec; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: .9em; word-break: break-all; }
figure { margin: 1rem 0; break-inside: avoid; }
figcaption { font-size: .9rem; color: #333; }
svg.chart { width: 100%; height: auto; max-width: 46rem; display: block; }
svg .axis { stroke: #595959; stroke-width: 1; }
svg .grid { stroke: #d0d0d0; stroke-width: 1; }
svg text { fill: #1b1b1b; font-size: 11px; font-family: system-ui, sans-serif; }
svg .threshold { stroke: #8a4b00; stroke-width: 2; stroke-dasharray: 6 4; }
svg text.threshold-label { fill: #6b3a00; font-weight: 600; }
svg .window { stroke: #595959; stroke-width: 1; stroke-dasharray: 2 3; }
svg .trend { fill: none; stroke: #5a7fb8; stroke-width: 1.5; }
svg .point { fill: #0b4ea2; stroke: #fff; stroke-width: 1; }
svg .point.fired { fill: #a4001d; stroke: #1b1b1b; stroke-width: 1.5; }
svg .point:focus-visible { stroke: #000; stroke-width: 3; outline: 2px solid #000; }
.legend { font-size: .9rem; }
.legend .swatch { display: inline-block; width: .8rem; height: .8rem; vertical-align: middle; margin: 0 .25rem 0 .75rem; }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
blockquote { margin: .5rem 0; padding: .25rem .75rem; border-left: .25rem solid #767676; }
.muted { color: #4a4a4a; }
footer { margin-top: 2rem; font-size: .85rem; color: #333; border-top: 1px solid #767676; padding-top: .5rem; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  .skip, nav { display: none; }
  a { color: #000; text-decoration: none; }
  h2 { break-after: avoid; }
  table, figure, blockquote { break-inside: avoid; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  :focus, :focus-visible, [tabindex]:focus-visible { outline: none !important; }
}
)";

std::string page_head(const std::string& title) {
    std::string h = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
    h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
    h += std::string(kGeneratorMeta) + "\n";
    h += "<meta name=\"referrer\" content=\"no-referrer\">\n";
    h += "<title>" + esc(title) + "</title>\n<style>" + std::string(kStyle) + "</style>\n</head>\n";
    return h;
}

const rules::LabResult* lab_of(const rules::PatientFacts& facts, const std::string& source) {
    for (const auto& r : facts.labs)
        if (r.source == source) return &r;
    return nullptr;
}
const rules::ConditionFact* condition_of(const rules::PatientFacts& facts, const std::string& source) {
    for (const auto& c : facts.conditions)
        if (c.source == source) return &c;
    return nullptr;
}
const rules::ProcedureFact* procedure_of(const rules::PatientFacts& facts, const std::string& source) {
    for (const auto& p : facts.procedures)
        if (p.source == source) return &p;
    return nullptr;
}

// The labels of the evidence lines that rest on a source.
std::string used_for(const rules::Finding& f, const std::string& source) {
    std::string out;
    for (const auto& e : f.evidence)
        if (std::find(e.sources.begin(), e.sources.end(), source) != e.sources.end())
            out += (out.empty() ? "" : "; ") + e.label;
    return out;
}

// One panel of the chart.
struct Panel {
    std::string value;  // analyte name or computed value id
    std::string title;
    std::string unit;
    int decimals = 2;
    std::vector<const rules::LabFact*> facts;  // the lab facts that judge this value
    double window_days = 0;                    // the longest of their windows
};

Panel panel_of(const std::string& value, const rules::RuleCatalog& cat) {
    Panel p;
    p.value = value;
    if (const auto a = rules::analyte_from_name(value)) {
        p.title = std::string(rules::analyte_label(*a));
        p.unit = std::string(rules::display_unit(*a));
    } else {
        for (const auto& c : cat.computed())
            if (c.id == value) {
                p.title = c.title + " (" + c.short_label + ")";
                p.unit = c.unit;
                p.decimals = c.decimals;
            }
    }
    for (const auto& f : cat.lab_facts())
        if (f.value == value) {
            p.facts.push_back(&f);
            p.window_days = std::max(p.window_days, f.window_days);
        }
    if (p.facts.empty()) p.window_days = cat.history_window_days();
    return p;
}

std::string slug(std::string_view s) {
    std::string out;
    for (char c : s) out += (std::isalnum(static_cast<unsigned char>(c)) ? c : '-');
    return out;
}

// One SVG chart: the values within the window, each lab fact's threshold as a line, the window starts,
// and the values that fired marked.
std::string chart_svg(const Panel& p, const std::vector<rules::SeriesPoint>& series, const rules::Finding& finding,
                      EpochSeconds now, const rules::TimeZone& zone, std::size_t& older, std::size_t& over_bound) {
    constexpr double W = 640, H = 220, L = 64, R = 150, T = 14, B = 40;
    const double pw = W - L - R, ph = H - T - B;
    const auto start = static_cast<EpochSeconds>(static_cast<double>(now) - p.window_days * kDay);
    std::vector<const rules::SeriesPoint*> shown;
    EpochSeconds end = now;
    older = 0;
    over_bound = 0;
    for (const auto& s : series) {  // latest first
        if (s.time < start) {
            ++older;
            continue;
        }
        if (shown.size() == kMaxChartPoints) {
            ++over_bound;
            continue;
        }
        shown.push_back(&s);
        end = std::max(end, s.time);
    }
    std::reverse(shown.begin(), shown.end());  // oldest first, for the trend line

    // The judged value of each lab fact: the latest in the fact's window; it sets the threshold when the
    // fact takes a multiple of the reference-range high.
    struct Line {
        const rules::LabFact* fact;
        double value;
        bool from_reference_range;
        bool in_finding;
    };
    std::vector<Line> lines;
    std::set<const rules::SeriesPoint*> fired;
    std::vector<std::string> fired_by(series.size());
    for (const rules::LabFact* f : p.facts) {
        const rules::SeriesPoint* judged = nullptr;
        if (!series.empty() && static_cast<double>(now - series.front().time) <= f->window_days * kDay)
            judged = &series.front();
        const auto applied = rules::lab_fact_threshold(*f, judged ? judged->reference_high : std::nullopt);
        const rules::Evidence* ev = nullptr;
        for (const auto& e : finding.evidence)
            if (e.fact == f->id) ev = &e;
        lines.push_back({f, applied.value, applied.from_reference_range, ev != nullptr});
        if (ev && judged && judged->sources == ev->sources) {
            fired.insert(judged);
            std::string& by = fired_by[static_cast<std::size_t>(judged - series.data())];
            by += (by.empty() ? "" : "; ") + f->title;
        }
    }

    double ymax = 0;
    for (const auto* s : shown) ymax = std::max(ymax, s->value);
    for (const auto& l : lines) ymax = std::max(ymax, l.value);
    if (ymax <= 0) ymax = 1;
    ymax *= 1.15;
    // A round top for the axis: 1, 2 or 5 × a power of ten per step, four steps.
    const double raw_step = ymax / 4;
    const double mag = std::pow(10.0, std::floor(std::log10(raw_step)));
    double step = mag;
    for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
        if (m * mag >= raw_step) {
            step = m * mag;
            break;
        }
    ymax = step * 4;
    const double span = std::max<double>(1.0, static_cast<double>(end - start));
    auto x_of = [&](EpochSeconds t) { return L + pw * static_cast<double>(t - start) / span; };
    auto y_of = [&](double v) { return T + ph * (1.0 - std::clamp(v, 0.0, ymax) / ymax); };

    const std::string id = "chart-" + slug(p.value);
    std::string s;
    s += "<svg class=\"chart\" id=\"" + id + "\" data-value=\"" + esc(p.value) + "\" viewBox=\"0 0 " + coord(W) + " " +
         coord(H) + "\" role=\"group\" aria-labelledby=\"" + id + "-title\" aria-describedby=\"" + id + "-desc\">\n";
    s += "<title id=\"" + id + "-title\">" + esc(p.title + " (" + p.unit + ")") + "</title>\n";
    std::string desc = std::to_string(shown.size()) + " counted result" + (shown.size() == 1 ? "" : "s") + " from " +
                       day_of(start, zone) + " to " + day_of(end, zone) + ".";
    for (const auto& l : lines)
        desc += " Threshold " + l.fact->title + ": " + num(l.value) + " " + p.unit + ".";
    if (!fired.empty()) desc += " " + std::to_string(fired.size()) + " value(s) marked as having fired this alert.";
    s += "<desc id=\"" + id + "-desc\">" + esc(desc) + "</desc>\n";
    // Axes and grid.
    for (int i = 0; i <= 4; ++i) {
        const double v = step * i;
        const double y = y_of(v);
        s += "<line class=\"grid\" x1=\"" + coord(L) + "\" x2=\"" + coord(L + pw) + "\" y1=\"" + coord(y) + "\" y2=\"" +
             coord(y) + "\" aria-hidden=\"true\"/>";
        s += "<text x=\"" + coord(L - 6) + "\" y=\"" + coord(y + 4) + "\" text-anchor=\"end\" aria-hidden=\"true\">" +
             esc(num(v)) + "</text>\n";
    }
    s += "<line class=\"axis\" x1=\"" + coord(L) + "\" x2=\"" + coord(L) + "\" y1=\"" + coord(T) + "\" y2=\"" + coord(T + ph) +
         "\" aria-hidden=\"true\"/>";
    s += "<line class=\"axis\" x1=\"" + coord(L) + "\" x2=\"" + coord(L + pw) + "\" y1=\"" + coord(T + ph) + "\" y2=\"" +
         coord(T + ph) + "\" aria-hidden=\"true\"/>\n";
    s += "<text x=\"12\" y=\"" + coord(T + ph / 2) + "\" text-anchor=\"middle\" transform=\"rotate(-90 12 " +
         coord(T + ph / 2) + ")\" aria-hidden=\"true\">" + esc(p.unit) + "</text>\n";
    for (int i = 0; i <= 3; ++i) {
        const auto t = static_cast<EpochSeconds>(static_cast<double>(start) + span * i / 3);
        const double x = x_of(t);
        s += "<text x=\"" + coord(x) + "\" y=\"" + coord(T + ph + 16) + "\" text-anchor=\"" +
             (i == 0 ? "start" : i == 3 ? "end" : "middle") + "\" aria-hidden=\"true\">" + esc(day_of(t, zone)) + "</text>\n";
    }
    // The start of each distinct window.
    std::set<double> windows;
    for (const auto& l : lines) windows.insert(l.fact->window_days);
    for (double w : windows) {
        const auto ws = static_cast<EpochSeconds>(static_cast<double>(now) - w * kDay);
        const double x = x_of(ws);
        s += "<line class=\"window\" data-window-days=\"" + num(w) + "\" x1=\"" + coord(x) + "\" x2=\"" + coord(x) +
             "\" y1=\"" + coord(T) + "\" y2=\"" + coord(T + ph) + "\" aria-hidden=\"true\"/>";
        s += "<text x=\"" + coord(x + 3) + "\" y=\"" + coord(T + ph + 30) + "\" aria-hidden=\"true\">" + esc(num(w)) +
             "-day window</text>\n";
    }
    // Thresholds: a line each, labelled at the right.
    double last_label_y = -100;
    for (const auto& l : lines) {
        const double y = y_of(l.value);
        s += "<line class=\"threshold\" data-fact=\"" + esc(l.fact->id) + "\" data-threshold=\"" + esc(num(l.value, 4)) +
             "\" x1=\"" + coord(L) + "\" x2=\"" + coord(L + pw) + "\" y1=\"" + coord(y) + "\" y2=\"" + coord(y) + "\">";
        s += "<title>" + esc(l.fact->title + ": " + (l.fact->direction == rules::Direction::above ? "above " : "below ") +
                             num(l.value) + " " + p.unit +
                             (l.from_reference_range ? " (from the lab's reference range)" : " (catalog default)")) +
             "</title></line>\n";
        double ly = y + 4;
        if (std::fabs(ly - last_label_y) < 13) ly = last_label_y + 13;
        last_label_y = ly;
        s += "<text class=\"threshold-label\" x=\"" + coord(L + pw + 6) + "\" y=\"" + coord(ly) + "\" aria-hidden=\"true\">" +
             esc((l.fact->direction == rules::Direction::above ? "> " : "< ") + num(l.value) + " " +
                 (l.fact->times_reference_high && l.from_reference_range
                      ? (*l.fact->times_reference_high == 1 ? std::string("(lab limit)")
                                                            : "(" + num(*l.fact->times_reference_high) + "× lab limit)")
                      : std::string("(default)"))) +
             "</text>\n";
    }
    // The trend and the points.
    if (shown.size() > 1) {
        s += "<polyline class=\"trend\" aria-hidden=\"true\" points=\"";
        for (const auto* pt : shown) s += coord(x_of(pt->time)) + "," + coord(y_of(pt->value)) + " ";
        s += "\"/>\n";
    }
    for (const auto* pt : shown) {
        const bool is_fired = fired.count(pt) > 0;
        const double x = x_of(pt->time), y = y_of(pt->value);
        std::string label = p.title + " " + std::string(comparator_prefix(pt->comparator)) + num(pt->value, p.decimals) + " " +
                            p.unit + " on " + when(pt->time, zone);
        if (is_fired) label += ". Fired this alert: " + fired_by[static_cast<std::size_t>(pt - series.data())];
        std::string src;
        for (const auto& so : pt->sources) src += (src.empty() ? "" : " ") + so;
        const std::string attrs = " tabindex=\"0\" role=\"img\" aria-label=\"" + esc(label) + "\" data-time=\"" +
                                  std::to_string(pt->time) + "\" data-value=\"" + esc(num(pt->value, 4)) +
                                  "\" data-sources=\"" + esc(src) + "\"";
        if (is_fired) {
            s += "<path class=\"point fired\"" + attrs + " d=\"M" + coord(x) + " " + coord(y - 8) + " L" + coord(x + 8) + " " +
                 coord(y) + " L" + coord(x) + " " + coord(y + 8) + " L" + coord(x - 8) + " " + coord(y) + " Z\"><title>" +
                 esc(label) + "</title></path>\n";
        } else {
            s += "<circle class=\"point\"" + attrs + " cx=\"" + coord(x) + "\" cy=\"" + coord(y) + "\" r=\"4.5\"><title>" +
                 esc(label) + "</title></circle>\n";
        }
    }
    if (shown.empty())
        s += "<text x=\"" + coord(L + pw / 2) + "\" y=\"" + coord(T + ph / 2) +
             "\" text-anchor=\"middle\">no counted result in the window</text>\n";
    s += "</svg>\n";
    return s;
}

std::string condition_status(const rules::ConditionFact& c) {
    std::string s = c.clinical_status.empty() ? "no clinical status" + std::string(c.has_abatement ? ", abated" : "")
                                              : c.clinical_status;
    return s;
}

}  // namespace

std::string html_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size() + s.size() / 8);
    for (std::size_t i = 0; i < s.size();) {
        const char c = s[i];
        switch (c) {
            case '&': out += "&amp;"; ++i; continue;
            case '<': out += "&lt;"; ++i; continue;
            case '>': out += "&gt;"; ++i; continue;
            case '"': out += "&quot;"; ++i; continue;
            case '\'': out += "&#39;"; ++i; continue;
            default: break;
        }
        const auto u = static_cast<unsigned char>(c);
        if ((u < 0x20 && c != '\n' && c != '\t') || u == 0x7F) {
            out += "\xEF\xBF\xBD";
            ++i;
            continue;
        }
        const std::size_t n = utf8_length(s, i);
        if (n == 0) {
            out += "\xEF\xBF\xBD";
            ++i;
            continue;
        }
        out.append(s.substr(i, n));
        i += n;
    }
    return out;
}

std::string render_page(const PageInput& in) {
    const rules::Finding& f = *in.finding;
    const rules::Rule& r = *f.rule;
    const rules::RuleCatalog& cat = *in.catalog;
    const rules::TimeZone& zone = cat.time_zone();
    const rules::PatientFacts& facts = *in.facts;
    const std::string sev(rules::to_string(r.severity));

    std::string h = page_head(r.title + " — " + f.patient);
    h += "<body>\n<a class=\"skip\" href=\"#finding\">Skip to the finding</a>\n";
    if (!in.index_href.empty())
        h += "<nav aria-label=\"Batch\"><a href=\"" + esc(in.index_href) + "\">All findings of this batch</a></nav>\n";
    h += "<main id=\"main\">\n<header>\n<h1 id=\"finding\" tabindex=\"-1\">" + esc(r.title) + "</h1>\n";
    h += "<p>Patient <strong>" + esc(f.patient) + "</strong>" +
         (f.order.empty() ? std::string() : ", order <strong>" + esc(f.order) + "</strong>") + " · evaluated " +
         esc(when(in.now, zone)) + " · severity <span class=\"badge\">" + esc(sev) + "</span></p>\n";
    h += "<p class=\"sentence " + std::string(severity_class(r.severity)) + "\" id=\"sentence\">" + esc(f.summary) + "</p>\n";
    h += "</header>\n";

    // Why: each evidence line in words.
    h += "<section aria-labelledby=\"why\">\n<h2 id=\"why\">Why the alert fired</h2>\n<ul>\n";
    for (const auto& e : f.evidence) {
        const std::string refs = rules::evidence_references(e, f.sources);
        h += "<li><strong>" + esc(e.label) + "</strong>: " + esc(e.text) + (refs.empty() ? "" : " " + esc(refs)) + "</li>\n";
    }
    h += "</ul>\n</section>\n";

    // The evidence table: the lab results.
    std::vector<std::pair<std::size_t, const rules::LabResult*>> labs;
    std::vector<std::size_t> others;
    for (std::size_t i = 0; i < f.sources.size(); ++i) {
        if (const auto* lab = lab_of(facts, f.sources[i])) labs.emplace_back(i, lab);
        else others.push_back(i);
    }
    h += "<section aria-labelledby=\"evidence\">\n<h2 id=\"evidence\">Evidence: lab results</h2>\n";
    if (labs.empty()) {
        h += "<p>This finding rests on no lab result.</p>\n";
    } else {
        h += "<table id=\"evidence-table\">\n<caption>The lab results this alert rests on, numbered as in the "
             "explanation</caption>\n<thead><tr><th scope=\"col\">#</th><th scope=\"col\">Result</th><th scope=\"col\">Value</th>"
             "<th scope=\"col\">Unit</th><th scope=\"col\">Date</th><th scope=\"col\">Status</th><th scope=\"col\">Source</th>"
             "<th scope=\"col\">Used for</th></tr></thead>\n<tbody>\n";
        for (const auto& [i, lab] : labs) {
            std::string unit(rules::display_unit(lab->analyte));
            h += "<tr><th scope=\"row\">" + std::to_string(i + 1) + "</th><td>" + esc(rules::analyte_label(lab->analyte)) +
                 (lab->code.empty() ? "" : " <span class=\"muted\">(LOINC " + esc(lab->code) + ")</span>") + "</td><td class=\"num\">" +
                 esc(std::string(comparator_prefix(lab->comparator)) + num(lab->value)) + "</td><td>" + esc(unit) +
                 (lab->reported.empty() ? "" : " <span class=\"muted\">(reported " + esc(lab->reported) + ")</span>") +
                 "</td><td>" + esc(when(lab->effective, zone)) + "</td><td>" + esc(lab->status) + "</td><td><code>" +
                 esc(lab->source) + "</code></td><td>" + esc(used_for(f, lab->source)) + "</td></tr>\n";
        }
        h += "</tbody>\n</table>\n";
    }
    h += "</section>\n";

    // The chart.
    h += "<section aria-labelledby=\"trend\">\n<h2 id=\"trend\">Lab trend over the rule windows</h2>\n";
    h += "<p class=\"legend\" aria-hidden=\"true\"><svg width=\"12\" height=\"12\" viewBox=\"0 0 12 12\"><circle cx=\"6\" "
         "cy=\"6\" r=\"4.5\" fill=\"#0b4ea2\"/></svg> counted result <svg width=\"14\" height=\"14\" viewBox=\"0 0 14 14\">"
         "<path d=\"M7 0 L14 7 L7 14 L0 7 Z\" fill=\"#a4001d\" stroke=\"#1b1b1b\"/></svg> value that fired this alert "
         "<svg width=\"24\" height=\"8\" viewBox=\"0 0 24 8\"><line x1=\"0\" x2=\"24\" y1=\"4\" y2=\"4\" stroke=\"#8a4b00\" "
         "stroke-width=\"2\" stroke-dasharray=\"6 4\"/></svg> threshold of the rule catalog</p>\n";
    h += "<p class=\"muted\">Only results that count are drawn (final, amended or corrected, as the catalog says); "
         "each point can be reached with the Tab key and read out. Thresholds that depend on the lab's reference range "
         "are drawn for the latest result, the one the rule judges.</p>\n";
    const Guidance* g = in.guidance;
    std::vector<ChartValue> chart = g ? g->chart : std::vector<ChartValue>{};
    for (const auto& cv : chart) {
        const Panel p = panel_of(cv.value, cat);
        const auto series = rules::value_series(facts, in.now, cat, cv.value);
        const auto start = static_cast<EpochSeconds>(static_cast<double>(in.now) - p.window_days * kDay);
        const bool any = std::any_of(series.begin(), series.end(), [&](const auto& s) { return s.time >= start; });
        if (!cv.always && !any) continue;
        std::size_t older = 0, over_bound = 0;
        h += "<figure>\n" + chart_svg(p, series, f, in.now, zone, older, over_bound);
        h += "<figcaption>" + esc(p.title) + " in " + esc(p.unit) + " over the last " + esc(num(p.window_days)) + " days";
        if (over_bound)
            h += "; the latest " + std::to_string(kMaxChartPoints) + " drawn, " + std::to_string(over_bound) +
                 " earlier in the window not drawn";
        if (older) h += "; " + std::to_string(older) + " older result" + (older == 1 ? "" : "s") + " not drawn";
        h += ".</figcaption>\n</figure>\n";
    }
    if (chart.empty()) h += "<p>No values are set to be charted (guidance.json chart).</p>\n";
    h += "</section>\n";

    // Conditions, procedures and orders used.
    h += "<section aria-labelledby=\"conditions\">\n<h2 id=\"conditions\">Conditions, procedures and orders used</h2>\n";
    if (others.empty()) {
        h += "<p>This finding rests on no condition, procedure or order.</p>\n";
    } else {
        h += "<table id=\"conditions-table\">\n<caption>What the alert rests on besides lab results</caption>\n<thead><tr>"
             "<th scope=\"col\">#</th><th scope=\"col\">What</th><th scope=\"col\">Code</th><th scope=\"col\">Status</th>"
             "<th scope=\"col\">Date</th><th scope=\"col\">Source</th><th scope=\"col\">Used for</th></tr></thead>\n<tbody>\n";
        for (std::size_t i : others) {
            const std::string& src = f.sources[i];
            std::string what, code, status, date;
            if (const auto* c = condition_of(facts, src)) {
                what = c->display.empty() ? cat.title_of("dx." + c->concept_id) : c->display;
                code = c->code_label;
                status = condition_status(*c);
                if (!c->verification_status.empty()) status += ", verification " + c->verification_status;
                date = c->onset ? "onset " + when(*c->onset, zone) : c->recorded ? "recorded " + when(*c->recorded, zone) : "";
            } else if (const auto* pr = procedure_of(facts, src)) {
                what = pr->display.empty() ? "Dialysis" : pr->display;
                code = pr->code_label;
                status = pr->status;
                if (pr->performed_start) date = "performed " + when(*pr->performed_start, zone);
                if (pr->performed_end && (!pr->performed_start || *pr->performed_end != *pr->performed_start))
                    date += (date.empty() ? "performed until " : " to ") + when(*pr->performed_end, zone);
            } else {
                what = src.rfind("MedicationRequest/", 0) == 0 ? "Draft medication order" : "Resource";
            }
            h += "<tr><th scope=\"row\">" + std::to_string(i + 1) + "</th><td>" + esc(what) + "</td><td>" + esc(code) +
                 "</td><td>" + esc(status) + "</td><td>" + esc(date) + "</td><td><code>" + esc(src) + "</code></td><td>" +
                 esc(used_for(f, src)) + "</td></tr>\n";
        }
        h += "</tbody>\n</table>\n";
    }
    h += "</section>\n";

    // The rule's notes.
    if (!f.notes.empty()) {
        h += "<section aria-labelledby=\"notes\">\n<h2 id=\"notes\">What the rule says</h2>\n";
        for (const auto& n : f.notes) h += "<p>" + esc(n) + "</p>\n";
        h += "</section>\n";
    }

    // The seed's guidance.
    h += "<section aria-labelledby=\"guidance\">\n<h2 id=\"guidance\">Guidance</h2>\n";
    const RuleGuidance* rg = g ? g->find(r.id) : nullptr;
    if (!rg) {
        h += "<p>No guidance is on file for this rule (guidance.json).</p>\n";
    } else {
        for (const auto& p : rg->passages)
            h += "<blockquote><p>" + esc(p.text) + "</p><p class=\"muted\">— " + esc(g->source) + ", section “" +
                 esc(p.section) + "”</p></blockquote>\n";
        h += "<p id=\"citation\">Reference: <a href=\"" + esc(rg->citation_url()) + "\">" + esc(rg->citation_text) +
             " PMID " + esc(rg->citation_pmid) + "</a></p>\n";
    }
    h += "</section>\n";

    // Data-quality notes.
    h += "<section aria-labelledby=\"quality\">\n<h2 id=\"quality\">Data-quality notes</h2>\n";
    const std::vector<rules::DataQualityNote> none;
    const auto& notes = in.notes ? *in.notes : none;
    if (notes.empty()) {
        h += "<p>None: every resource read for this patient could be used.</p>\n";
    } else {
        h += "<p>Data that was read and not used (it did not count for any rule):</p>\n<ul id=\"quality-notes\">\n";
        for (std::size_t i = 0; i < notes.size() && i < kMaxListedNotes; ++i) {
            const auto& n = notes[i];
            h += "<li><code>" + esc(n.source) + "</code>" + (n.path.empty() ? "" : " <code>" + esc(n.path) + "</code>") + ": " +
                 esc(n.message) + "</li>\n";
        }
        h += "</ul>\n";
        if (notes.size() > kMaxListedNotes)
            h += "<p>… and " + std::to_string(notes.size() - kMaxListedNotes) + " more notes (the first " +
                 std::to_string(kMaxListedNotes) + " are listed).</p>\n";
    }
    h += "</section>\n</main>\n";

    h += "<footer>\n<p>Rule <code>" + esc(r.id) + "</code> version <code>" + esc(r.version) + "</code> · alert identifier <code>" +
         esc(in.identifier) + "</code> · evidence hash <code>" + esc(f.evidence_hash) + "</code></p>\n";
    h += "<p>Times in " + esc(zone.name()) + ". Written by calcalert " + esc(CALCALERT_VERSION) +
         " for clinical review; it supports and does not replace clinical judgement.</p>\n";
    if (!in.footer_note.empty()) h += "<p>" + esc(in.footer_note) + "</p>\n";
    h += "</footer>\n</body>\n</html>\n";
    return h;
}

std::string render_index(const std::vector<IndexEntry>& entries, std::size_t patients, std::size_t notes,
                         rules::EpochSeconds now, const rules::TimeZone& zone) {
    std::string h = page_head("calcalert findings — " + when(now, zone));
    h += "<body>\n<a class=\"skip\" href=\"#findings\">Skip to the findings</a>\n<main id=\"main\">\n";
    h += "<h1>calcalert findings</h1>\n<p>Evaluated " + esc(when(now, zone)) + ": " + std::to_string(patients) + " patient" +
         (patients == 1 ? "" : "s") + ", " + std::to_string(entries.size()) + " finding" + (entries.size() == 1 ? "" : "s") +
         ", " + std::to_string(notes) + " data-quality note" + (notes == 1 ? "" : "s") + ".</p>\n";
    if (entries.empty()) {
        h += "<p id=\"findings\">No finding.</p>\n";
    } else {
        h += "<table id=\"findings\">\n<caption>One row per finding; the rule links to its explanation page</caption>\n"
             "<thead><tr><th scope=\"col\">Patient</th><th scope=\"col\">Severity</th><th scope=\"col\">Rule</th>"
             "<th scope=\"col\">Finding</th></tr></thead>\n<tbody>\n";
        for (const auto& e : entries)
            h += "<tr><th scope=\"row\">" + esc(e.patient) + "</th><td>" + esc(rules::to_string(e.finding->rule->severity)) +
                 "</td><td><a href=\"" + esc(e.href) + "\">" + esc(e.finding->rule->title) + "</a></td><td>" +
                 esc(e.finding->summary) + "</td></tr>\n";
        h += "</tbody>\n</table>\n";
    }
    h += "</main>\n<footer><p>Times in " + esc(zone.name()) + ". Written by calcalert " + esc(CALCALERT_VERSION) +
         ".</p></footer>\n</body>\n</html>\n";
    return h;
}

}  // namespace calcalert::explain
