#include "adapters/poll/bulk_export.hpp"

#include <algorithm>
#include <thread>

#include "adapters/poll/url.hpp"
#include "fhir/datetime.hpp"
#include "fhir/http_text.hpp"
#include "fhir/json_parse.hpp"
#include "fhir/views.hpp"

namespace calcalert::poll {
namespace {

using fhir::Json;
using std::chrono::seconds;

constexpr std::size_t kMaxManifestFiles = 100000;
constexpr std::size_t kMaxUrlBytes = 4096;

bool is_fhir_id(const std::string& s) {
    return !s.empty() && s.size() <= 64 &&
           std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isalnum(c) || c == '-' || c == '.'; });
}

std::string header(const fhir::Response& r, const std::string& name) {
    const auto it = r.headers.find(name);
    return it == r.headers.end() ? std::string() : std::string(fhir::text::trim(it->second));
}

ExportFile read_file_entry(const Json& item, const std::string& path) {
    if (!item.IsObject()) throw ExportError(path + " is " + fhir::json_type_name(item) + ", not an object");
    ExportFile f;
    const Json* type = fhir::member(item, "type");
    if (!type || !type->IsString() || type->GetStringLength() == 0 || type->GetStringLength() > 64)
        throw ExportError(path + ".type is missing or not a resource type");
    f.type = type->GetString();
    const Json* url = fhir::member(item, "url");
    if (!url || !url->IsString() || url->GetStringLength() == 0)
        throw ExportError(path + ".url is missing or not a string");
    if (url->GetStringLength() > kMaxUrlBytes) throw ExportError(path + ".url is longer than " + std::to_string(kMaxUrlBytes) + " bytes");
    f.url = url->GetString();
    if (const Json* count = fhir::member(item, "count")) {
        if (!count->IsUint64()) throw ExportError(path + ".count is not a non-negative whole number");
        f.count = count->GetUint64();
    }
    return f;
}

}  // namespace

std::string export_kickoff_target(const ExportRequest& r) {
    std::string target;
    if (r.group.empty()) {
        target = "Patient/$export";
    } else {
        if (!is_fhir_id(r.group)) throw std::invalid_argument("the Group id '" + fhir::text::escaped(r.group, 64) + "' is not a FHIR id");
        target = "Group/" + r.group + "/$export";
    }
    target += "?_outputFormat=" + url_encode("application/fhir+ndjson");
    if (!r.types.empty()) {
        std::string types;
        for (const auto& t : r.types) types += (types.empty() ? "" : ",") + url_encode(t);
        target += "&_type=" + types;
    }
    for (const auto& f : r.type_filters) target += "&_typeFilter=" + url_encode(f);
    if (!r.since.empty()) target += "&_since=" + url_encode(r.since);
    return target;
}

ExportManifest parse_export_manifest(const Json& m, const std::string& where) {
    const std::string at = where + ": the export manifest";
    if (!m.IsObject()) throw ExportError(at + " is " + fhir::json_type_name(m) + ", not a JSON object");
    ExportManifest out;
    const Json* tt = fhir::member(m, "transactionTime");
    if (!tt || !tt->IsString()) throw ExportError(at + " has no transactionTime");
    out.transaction_time = tt->GetString();
    const auto parsed = fhir::parse_datetime(out.transaction_time);
    if (!parsed || out.transaction_time.find('T') == std::string::npos)
        throw ExportError(at + ": transactionTime \"" + fhir::text::escaped(out.transaction_time, 64) + "\" is not a FHIR instant");
    out.transaction_at = *parsed;
    out.request = fhir::text::escaped(fhir::string_or_empty(m, "request"), kMaxUrlBytes);
    if (const Json* rat = fhir::member(m, "requiresAccessToken")) {
        if (!rat->IsBool()) throw ExportError(at + ": requiresAccessToken is not a boolean");
        out.requires_access_token = rat->GetBool();
    }
    for (const char* list : {"output", "error"}) {
        const Json* files = fhir::member(m, list);
        if (!files) {
            if (std::string_view(list) == "output") throw ExportError(at + " has no output array");
            continue;
        }
        if (!files->IsArray()) throw ExportError(at + ": " + list + " is not an array");
        if (files->Size() > kMaxManifestFiles)
            throw ExportError(at + ": " + list + " lists more than " + std::to_string(kMaxManifestFiles) + " files");
        auto& into = std::string_view(list) == "output" ? out.output : out.error;
        for (rapidjson::SizeType i = 0; i < files->Size(); ++i)
            into.push_back(read_file_entry((*files)[i], at + ": " + list + "[" + std::to_string(i) + "]"));
    }
    return out;
}

ExportStatus interpret_export_status(const fhir::Response& r, seconds default_wait, seconds min_wait, seconds max_wait,
                                     std::chrono::system_clock::time_point now) {
    const std::string where = "GET " + r.url;
    ExportStatus s;
    if (r.status == 202 || r.status == 429) {
        s.wait = default_wait;
        if (const std::string ra = header(r, "retry-after"); !ra.empty())
            if (const auto w = fhir::text::parse_retry_after(ra, now))
                s.wait = std::chrono::duration_cast<seconds>(*w + std::chrono::milliseconds(999));
        s.wait = std::clamp(s.wait, min_wait, max_wait);
        s.progress = fhir::text::escaped(header(r, "x-progress"), 100);
        return s;
    }
    if (r.status == 200) {
        rapidjson::Document d;
        if (const auto parsed = fhir::parse_untrusted_json(d, r.body, fhir::JsonLimits{32, 64u << 20}); !parsed)
            throw ExportError(where + ": HTTP 200 but the export manifest is not JSON (" + parsed.error->describe() + ")");
        s.state = ExportStatus::State::complete;
        s.manifest = parse_export_manifest(d, where);
        return s;
    }
    if (r.status == 404 || r.status == 410)
        throw ExportError(where + ": HTTP " + std::to_string(r.status) + ": the export job is gone" + fhir::error_body_summary(r), true);
    if (r.status >= 400)
        throw ExportError(where + ": HTTP " + std::to_string(r.status) + ": the export failed" + fhir::error_body_summary(r));
    throw ExportError(where + ": HTTP " + std::to_string(r.status) + " is not an answer of the Bulk Data status URL");
}

BulkExportClient::BulkExportClient(fhir::FhirClient& client, ExportWaitOptions options, std::function<void(seconds)> sleep,
                                   std::function<void(const std::string&)> progress)
    : client_(client), opt_(options), sleep_(std::move(sleep)), progress_(std::move(progress)) {
    if (!sleep_) sleep_ = [](seconds d) { std::this_thread::sleep_for(d); };
}

std::string BulkExportClient::kick_off(const ExportRequest& request) {
    const std::string target = export_kickoff_target(request);
    // handling=lenient: a server that does not support a parameter (_typeFilter is optional) may
    // ignore it rather than refuse the export; calcalert reads only what it needs anyway.
    const fhir::Response r = client_.get(target, {{"Accept", "application/fhir+json"}, {"Prefer", "respond-async, handling=lenient"}});
    const std::string where = "GET " + r.url;
    if (r.status != 202)
        throw ExportError(where + ": HTTP " + std::to_string(r.status) + ": the server did not start the export" +
                          (r.status >= 200 && r.status <= 299 ? std::string(" (a Bulk Data kick-off answers 202 Accepted)")
                                                              : fhir::error_body_summary(r)));
    const std::string location = header(r, "content-location");
    if (location.empty() || location.size() > kMaxUrlBytes)
        throw ExportError(where + ": HTTP 202 without a usable Content-Location (the status URL)");
    return location;
}

ExportManifest BulkExportClient::wait_for(const std::string& status_url) {
    for (;;) {
        const fhir::Response r = client_.get(status_url, {{"Accept", "application/json"}});
        ++polls_;
        const ExportStatus s = interpret_export_status(r, opt_.default_wait, opt_.min_wait, opt_.max_wait, std::chrono::system_clock::now());
        if (s.state == ExportStatus::State::complete) return s.manifest;
        if (progress_) progress_(s.progress.empty() ? "in progress" : s.progress);
        if (waited_ + s.wait > opt_.give_up_after)
            throw ExportError("GET " + r.url + ": the export is still in progress after " + std::to_string(waited_.count()) +
                              " s of waiting; given up (the job is kept: the next run goes on waiting for it)");
        sleep_(s.wait);
        waited_ += s.wait;
    }
}

void BulkExportClient::download(const ExportFile& file, const fhir::FhirClient::Download& sink) {
    const fhir::Response r = client_.download(file.url, sink, {{"Accept", "application/fhir+ndjson, application/ndjson, application/gzip"}});
    if (r.status < 200 || r.status > 299)
        throw ExportError("GET " + r.url + ": HTTP " + std::to_string(r.status) + ": cannot read the export file" +
                              fhir::error_body_summary(r),
                          r.status == 404 || r.status == 410);
}

bool BulkExportClient::finish(const std::string& status_url) {
    try {
        const fhir::Response r = client_.del(status_url);
        return r.status >= 200 && r.status <= 299;
    } catch (const fhir::FhirError&) {
        return false;
    }
}

}  // namespace calcalert::poll
