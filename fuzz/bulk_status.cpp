// The Bulk Data client's reading of a status URL's answer (adapters/poll/bulk_export.hpp): the
// first byte chooses the status (202, 200, 429, 404, 410, 500, 302), the first line of the rest is
// the Retry-After and X-Progress value, and the remainder the body (a manifest for 200, an
// OperationOutcome otherwise); a manifest that parses is then turned into export requests' files.
// ExportError is the expected refusal.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "adapters/poll/bulk_export.hpp"
#include "fuzz_support.hpp"

using namespace calcalert;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static constexpr long kStatuses[] = {202, 200, 429, 404, 410, 500, 302};
    if (size == 0) return 0;
    std::string_view rest = fuzz::as_text(data + 1, size - 1);
    const std::size_t nl = rest.find('\n');
    fhir::Response r;
    r.status = kStatuses[data[0] % (sizeof kStatuses / sizeof kStatuses[0])];
    r.method = "GET";
    r.url = "https://fhir.example.org/r4/$export-status/1";
    const std::string header(rest.substr(0, nl));
    r.headers["retry-after"] = header;
    r.headers["x-progress"] = header;
    r.body = nl == std::string_view::npos ? std::string() : std::string(rest.substr(nl + 1));
    try {
        const auto s = poll::interpret_export_status(r, std::chrono::seconds(5), std::chrono::seconds(1),
                                                     std::chrono::seconds(300),
                                                     std::chrono::system_clock::from_time_t(fuzz::kNow));
        if (s.state == poll::ExportStatus::State::in_progress) {
            if (s.wait.count() < 1 || s.wait.count() > 300) __builtin_trap();  // always within the bounds
            if (s.progress.size() > 100 * 4 + 3) __builtin_trap();  // 100 bytes, each at most \xNN, then "..."
        }
        for (const auto& f : s.manifest.output)
            if (f.url.empty() || f.type.empty()) __builtin_trap();
    } catch (const poll::ExportError&) {
    }
    return 0;
}
