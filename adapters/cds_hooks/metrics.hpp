// The service's Prometheus metrics (text exposition format 0.0.4): requests by service and status,
// a latency histogram, cards by rule, prefetch hits and fallbacks by key, feedback outcomes and
// overrides by rule and reason, and authentication failures. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace calcalert::cds {

class Metrics {
public:
    Metrics();
    void request(const std::string& service, int status, double seconds);
    void card(const std::string& rule);
    void prefetch(const std::string& key, const std::string& result);  // hit | null | fallback | outcome
    void feedback(const std::string& outcome);
    void override_reason(const std::string& rule, const std::string& reason);
    void auth_failure();
    // A request or connection the HTTP server refused itself (http::rejection_name: saturated,
    // connections, timeout, too-large, malformed); any other name counts as malformed.
    void rejected(const std::string& reason);
    std::string render() const;

private:
    using Labels = std::vector<std::pair<std::string, std::string>>;
    mutable std::mutex mutex_;
    std::vector<double> bounds_;
    std::map<Labels, std::uint64_t> requests_;
    struct Histogram {
        std::vector<std::uint64_t> buckets;
        std::uint64_t count = 0;
        double sum = 0;
    };
    std::map<std::string, Histogram> latency_;  // by service
    std::map<Labels, std::uint64_t> cards_, prefetch_, feedback_, overrides_;
    std::uint64_t auth_failures_ = 0;
    std::map<std::string, std::uint64_t> rejected_;  // every reason of the closed set, from 0
};

}  // namespace calcalert::cds
