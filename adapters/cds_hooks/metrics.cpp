#include "adapters/cds_hooks/metrics.hpp"

#include <sstream>

#include "adapters/http/event_server.hpp"

namespace calcalert::cds {
namespace {

std::string escape_label(const std::string& v) {
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') out.push_back('\\');
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out.push_back(c);
    }
    return out;
}

template <class L>
std::string labels(const L& l) {
    std::string out = "{";
    for (std::size_t i = 0; i < l.size(); ++i) out += (i ? "," : "") + l[i].first + "=\"" + escape_label(l[i].second) + "\"";
    return out + "}";
}

std::string number(double v) {
    std::ostringstream ss;
    ss.precision(9);
    ss << v;
    return ss.str();
}

}  // namespace

Metrics::Metrics() : bounds_{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10} {
    for (const auto r : http::kRejections) rejected_[http::rejection_name(r)] = 0;
}

void Metrics::request(const std::string& service, int status, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++requests_[{{"service", service}, {"status", std::to_string(status)}}];
    Histogram& h = latency_[service];
    if (h.buckets.empty()) h.buckets.assign(bounds_.size(), 0);
    for (std::size_t i = 0; i < bounds_.size(); ++i)
        if (seconds <= bounds_[i]) ++h.buckets[i];
    ++h.count;
    h.sum += seconds;
}

void Metrics::card(const std::string& rule) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++cards_[{{"rule", rule}}];
}

void Metrics::prefetch(const std::string& key, const std::string& result) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++prefetch_[{{"key", key}, {"result", result}}];
}

void Metrics::feedback(const std::string& outcome) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++feedback_[{{"outcome", outcome}}];
}

void Metrics::override_reason(const std::string& rule, const std::string& reason) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++overrides_[{{"rule", rule}, {"reason", reason}}];
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

std::string Metrics::render() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string out;
    auto counter = [&out](const char* name, const char* help, const std::map<Labels, std::uint64_t>& values) {
        out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n";
        for (const auto& [l, v] : values) out += name + labels(l) + " " + std::to_string(v) + "\n";
    };
    counter("calcalert_cds_requests_total", "HTTP requests by service (or endpoint) and status.", requests_);
    out += "# HELP calcalert_cds_request_duration_seconds Request latency by service (or endpoint).\n"
           "# TYPE calcalert_cds_request_duration_seconds histogram\n";
    for (const auto& [service, h] : latency_) {
        for (std::size_t i = 0; i < bounds_.size(); ++i)
            out += "calcalert_cds_request_duration_seconds_bucket{service=\"" + escape_label(service) + "\",le=\"" +
                   number(bounds_[i]) + "\"} " + std::to_string(h.buckets[i]) + "\n";
        out += "calcalert_cds_request_duration_seconds_bucket{service=\"" + escape_label(service) + "\",le=\"+Inf\"} " +
               std::to_string(h.count) + "\n";
        out += "calcalert_cds_request_duration_seconds_sum{service=\"" + escape_label(service) + "\"} " + number(h.sum) + "\n";
        out += "calcalert_cds_request_duration_seconds_count{service=\"" + escape_label(service) + "\"} " +
               std::to_string(h.count) + "\n";
    }
    counter("calcalert_cds_cards_total", "Cards returned by rule.", cards_);
    counter("calcalert_cds_prefetch_total",
            "Prefetch keys by result: hit (sent by the client), null (no data), fallback (fetched from fhirServer), "
            "outcome (an OperationOutcome in the key).",
            prefetch_);
    counter("calcalert_cds_feedback_total", "Feedback entries by outcome.", feedback_);
    counter("calcalert_cds_overrides_total", "Overridden cards by rule and override reason.", overrides_);
    out += "# HELP calcalert_cds_auth_failures_total Calls refused with 401.\n# TYPE calcalert_cds_auth_failures_total counter\n";
    out += "calcalert_cds_auth_failures_total " + std::to_string(auth_failures_) + "\n";
    out += "# HELP calcalert_http_rejected_total Requests and connections the server refused itself: saturated (503, "
           "every worker busy and the queue full, or a call that waited past its deadline), connections (503, over "
           "max_connections), timeout (408, the request did not arrive within request_timeout_ms), too-large (413, "
           "431), malformed (400, 417, 501, 505).\n# TYPE calcalert_http_rejected_total counter\n";
    for (const auto& [reason, n] : rejected_)
        out += "calcalert_http_rejected_total{reason=\"" + reason + "\"} " + std::to_string(n) + "\n";
    return out;
}

}  // namespace calcalert::cds
