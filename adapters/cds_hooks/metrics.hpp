// The service's Prometheus metrics (text exposition format 0.0.4): requests by service and status,
// a latency histogram, cards by rule, prefetch hits and fallbacks by key, feedback outcomes,
// overrides by rule and reason, feedback for cards the caller was never issued, and authentication
// failures. Thread-safe.
//
// Every label value comes from a closed set, never from request bytes: a value outside its set is
// counted as "other" (services: the endpoint names below plus the registered service ids and
// "<id>/feedback"; rules: the registered catalog rule ids; override reasons: the registered reason
// codes, "none" when there is no reason; feedback outcomes: accepted | overridden; prefetch keys: the
// registered keys, results hit | null | fallback | outcome; status: an HTTP status 100..599). Each
// metric also holds at most kMaxSeries series (further ones fold into the all-"other" series), and
// the output is valid UTF-8 with every label value escaped as the text format requires.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace calcalert::cds {

class Metrics {
public:
    // The closed sets of label values that depend on the deployment (CdsService registers them).
    struct LabelSets {
        std::vector<std::string> services;          // CDS service ids
        std::vector<std::string> rules;             // rule ids of the catalog (patient and order rules)
        std::vector<std::string> override_reasons;  // override reason codes the cards offer
        std::vector<std::string> prefetch_keys;     // the discovery document's prefetch keys
    };
    // The server's own endpoint labels, always known.
    static constexpr const char* kEndpointLabels[] = {"discovery", "healthz", "metrics", "preflight", "not-found", "explain",
                                                      "unknown"};
    static constexpr std::size_t kMaxSeries = 512;  // per metric

    Metrics();
    void register_labels(const LabelSets& sets);

    void request(const std::string& service, int status, double seconds);
    void card(const std::string& rule);
    void prefetch(const std::string& key, const std::string& result);  // hit | null | fallback | outcome
    void feedback(const std::string& outcome);                          // accepted | overridden
    // A feedback entry for a card that was never issued to the caller by that service (ignored).
    void feedback_ignored();
    // reason: the override reason code ("" = none given).
    void override_reason(const std::string& rule, const std::string& reason);
    void auth_failure();
    // A token accepted by this process and by another one on the same state database within one
    // replay batch (state::BatchedReplayStore), found when the batch was written.
    void late_replay();
    // A request or connection the HTTP server refused itself (http::rejection_name: saturated,
    // connections, timeout, too-large, malformed); any other name counts as malformed.
    void rejected(const std::string& reason);
    std::string render() const;

    // Escapes a label value for the text format (\\, \", \n) after replacing every invalid UTF-8
    // sequence with U+FFFD.
    static std::string escape_label(const std::string& value);

private:
    using Labels = std::vector<std::pair<std::string, std::string>>;
    using Counters = std::map<Labels, std::uint64_t>;
    static void bump(Counters& counters, Labels labels);
    std::string service_label(const std::string& service) const;
    std::string rule_label(const std::string& rule) const;

    mutable std::mutex mutex_;
    std::vector<double> bounds_;
    std::set<std::string> services_, rules_, reasons_, prefetch_keys_;
    Counters requests_;
    struct Histogram {
        std::vector<std::uint64_t> buckets;
        std::uint64_t count = 0;
        double sum = 0;
    };
    std::map<std::string, Histogram> latency_;  // by service label (a closed set)
    Counters cards_, prefetch_, feedback_, overrides_;
    std::uint64_t feedback_ignored_ = 0;
    std::uint64_t auth_failures_ = 0;
    std::uint64_t late_replays_ = 0;
    std::map<std::string, std::uint64_t> rejected_;  // every reason of the closed set, from 0
};

}  // namespace calcalert::cds
