#include "adapters/cds_hooks/metrics.hpp"

#include <sstream>
#include <string_view>

#include "fhir/json_parse.hpp"

#include "adapters/http/event_server.hpp"

namespace calcalert::cds {
namespace {

constexpr const char* kOther = "other";

template <class L>
std::string labels(const L& l) {
    std::string out = "{";
    for (std::size_t i = 0; i < l.size(); ++i)
        out += (i ? "," : "") + l[i].first + "=\"" + Metrics::escape_label(l[i].second) + "\"";
    return out + "}";
}

std::string number(double v) {
    std::ostringstream ss;
    ss.precision(9);
    ss << v;
    return ss.str();
}

std::string in_set(const std::set<std::string>& set, const std::string& value) {
    return set.count(value) ? value : std::string(kOther);
}

}  // namespace

std::string Metrics::escape_label(const std::string& value) {
    // Valid UTF-8 first (label values are UTF-8 in the text format) ...
    std::string utf8;
    std::string_view s = value;
    while (!s.empty()) {
        const std::size_t bad = fhir::find_invalid_utf8(s);
        if (bad == std::string_view::npos) {
            utf8 += s;
            break;
        }
        utf8 += s.substr(0, bad);
        utf8 += "\xEF\xBF\xBD";  // U+FFFD
        s.remove_prefix(bad + 1);
        while (!s.empty() && (static_cast<unsigned char>(s.front()) & 0xC0) == 0x80) s.remove_prefix(1);
    }
    // ... then the text format's three escapes.
    std::string out;
    out.reserve(utf8.size());
    for (char c : utf8) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out.push_back(c);
    }
    return out;
}

Metrics::Metrics() : bounds_{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10} {
    for (const char* e : kEndpointLabels) services_.insert(e);
    for (const auto r : http::kRejections) rejected_[http::rejection_name(r)] = 0;
}

void Metrics::register_labels(const LabelSets& sets) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& s : sets.services) {
        services_.insert(s);
        services_.insert(s + "/feedback");
    }
    rules_.insert(sets.rules.begin(), sets.rules.end());
    reasons_.insert(sets.override_reasons.begin(), sets.override_reasons.end());
    prefetch_keys_.insert(sets.prefetch_keys.begin(), sets.prefetch_keys.end());
}

void Metrics::bump(Counters& counters, Labels l) {
    if (counters.size() >= kMaxSeries && !counters.count(l))
        for (auto& [name, value] : l) value = kOther;
    ++counters[l];
}

std::string Metrics::service_label(const std::string& service) const { return in_set(services_, service); }
std::string Metrics::rule_label(const std::string& rule) const { return in_set(rules_, rule); }

void Metrics::request(const std::string& service, int status, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string label = service_label(service);
    bump(requests_, {{"service", label}, {"status", status >= 100 && status <= 599 ? std::to_string(status) : kOther}});
    Histogram& h = latency_[latency_.size() >= kMaxSeries && !latency_.count(label) ? std::string(kOther) : label];
    if (h.buckets.empty()) h.buckets.assign(bounds_.size(), 0);
    for (std::size_t i = 0; i < bounds_.size(); ++i)
        if (seconds <= bounds_[i]) ++h.buckets[i];
    ++h.count;
    h.sum += seconds;
}

void Metrics::card(const std::string& rule) {
    std::lock_guard<std::mutex> lock(mutex_);
    bump(cards_, {{"rule", rule_label(rule)}});
}

void Metrics::prefetch(const std::string& key, const std::string& result) {
    static const std::set<std::string> results = {"hit", "null", "fallback", "outcome"};
    std::lock_guard<std::mutex> lock(mutex_);
    bump(prefetch_, {{"key", in_set(prefetch_keys_, key)}, {"result", in_set(results, result)}});
}

void Metrics::feedback(const std::string& outcome) {
    static const std::set<std::string> outcomes = {"accepted", "overridden"};
    std::lock_guard<std::mutex> lock(mutex_);
    bump(feedback_, {{"outcome", in_set(outcomes, outcome)}});
}

void Metrics::feedback_ignored() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++feedback_ignored_;
}

void Metrics::override_reason(const std::string& rule, const std::string& reason) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string reason_label = reason.empty() ? std::string("none") : in_set(reasons_, reason);
    bump(overrides_, {{"rule", rule_label(rule)}, {"reason", reason_label}});
}

void Metrics::rejected(const std::string& reason) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = rejected_.find(reason);
    if (it == rejected_.end()) it = rejected_.find(http::rejection_name(http::Rejection::malformed));
    ++it->second;
}

void Metrics::auth_failure() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++auth_failures_;
}

void Metrics::late_replay() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++late_replays_;
}

std::string Metrics::render() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string out;
    auto counter = [&out](const char* name, const char* help, const Counters& values) {
        out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n";
        for (const auto& [l, v] : values) out += name + labels(l) + " " + std::to_string(v) + "\n";
    };
    counter("calcalert_cds_requests_total", "HTTP requests by service (or endpoint) and status.", requests_);
    out += "# HELP calcalert_cds_request_duration_seconds Request latency by service (or endpoint).\n"
           "# TYPE calcalert_cds_request_duration_seconds histogram\n";
    for (const auto& [service, h] : latency_) {
        const std::string s = escape_label(service);
        for (std::size_t i = 0; i < bounds_.size(); ++i)
            out += "calcalert_cds_request_duration_seconds_bucket{service=\"" + s + "\",le=\"" + number(bounds_[i]) +
                   "\"} " + std::to_string(h.buckets[i]) + "\n";
        out += "calcalert_cds_request_duration_seconds_bucket{service=\"" + s + "\",le=\"+Inf\"} " +
               std::to_string(h.count) + "\n";
        out += "calcalert_cds_request_duration_seconds_sum{service=\"" + s + "\"} " + number(h.sum) + "\n";
        out += "calcalert_cds_request_duration_seconds_count{service=\"" + s + "\"} " + std::to_string(h.count) + "\n";
    }
    counter("calcalert_cds_cards_total", "Cards returned by rule.", cards_);
    counter("calcalert_cds_prefetch_total",
            "Prefetch keys by result: hit (sent by the client), null (no data), fallback (fetched from fhirServer), "
            "outcome (an OperationOutcome in the key).",
            prefetch_);
    counter("calcalert_cds_feedback_total", "Feedback entries by outcome, for cards issued to the caller.", feedback_);
    out += "# HELP calcalert_cds_feedback_ignored_total Feedback entries for a card never issued to the caller by that "
           "service (ignored).\n# TYPE calcalert_cds_feedback_ignored_total counter\n";
    out += "calcalert_cds_feedback_ignored_total " + std::to_string(feedback_ignored_) + "\n";
    counter("calcalert_cds_overrides_total",
            "Overridden cards by rule and override reason (other: a code the cards do not offer).", overrides_);
    out += "# HELP calcalert_cds_auth_failures_total Calls refused with 401.\n# TYPE calcalert_cds_auth_failures_total counter\n";
    out += "calcalert_cds_auth_failures_total " + std::to_string(auth_failures_) + "\n";
    out += "# HELP calcalert_cds_late_replays_total Tokens this process accepted that another process on the same state "
           "database had accepted within one replay batch (found when the batch was written).\n"
           "# TYPE calcalert_cds_late_replays_total counter\n";
    out += "calcalert_cds_late_replays_total " + std::to_string(late_replays_) + "\n";
    out += "# HELP calcalert_http_rejected_total Requests and connections the server refused itself: saturated (503, "
           "every worker busy and the queue full, or a call that waited past its deadline), connections (503, over "
           "max_connections), timeout (408, the request did not arrive within request_timeout_ms), too-large (413, "
           "431), malformed (400, 417, 501, 505).\n# TYPE calcalert_http_rejected_total counter\n";
    for (const auto& [reason, n] : rejected_)
        out += "calcalert_http_rejected_total{reason=\"" + reason + "\"} " + std::to_string(n) + "\n";
    return out;
}

}  // namespace calcalert::cds
