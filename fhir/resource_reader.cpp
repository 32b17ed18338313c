#include "fhir/resource_reader.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <iterator>
#include <memory>
#include <vector>

#include "fhir/datetime.hpp"
#include "fhir/json_parse.hpp"
#include "fhir/views.hpp"

namespace calcalert::fhir {
namespace {

constexpr std::string_view kBom = "\xEF\xBB\xBF";

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool starts_with(const JsonPath& path, const JsonPath& prefix) {
    return path.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), path.begin());
}

// Where an offset of the parsed text is, in words: "line L, column C" in a whole text, "column C"
// in an NDJSON line.
struct TextPosition {
    std::string_view text;
    bool ndjson_line = false;
    std::string at(std::size_t offset) const {
        if (ndjson_line) return "column " + std::to_string(offset + 1);
        return json_line_column(text, offset);
    }
};

// One line for a text the JSON parser refused.
std::string refusal(const JsonError& e, const TextPosition& pos) {
    if (e.kind == JsonErrorKind::too_large) return e.message;
    return "JSON parse error at " + pos.at(e.offset) + ": " + e.message;
}

// A byte for a message: 'x' when printable ASCII, else its value (input bytes are never copied).
std::string quoted_byte(char c) {
    const auto b = static_cast<unsigned char>(c);
    if (b >= 0x20 && b < 0x7F) return "'" + std::string(1, c) + "'";
    static const char* digits = "0123456789ABCDEF";
    return std::string("byte 0x") + digits[b >> 4] + digits[b & 0xF];
}

class Reader {
public:
    Reader(ResourceHandler& h, ReadStats& s) : handler_(h), stats_(s) {}

    // The values the parser replaced by null (invalid UTF-8, numbers out of range, too deep): the
    // resource holding one is rejected, naming it; the others are read.
    void set_defects(const std::vector<JsonError>& defects, TextPosition pos) {
        defects_ = defects.empty() ? nullptr : &defects;
        pos_ = pos;
    }

    // `jpath` is where `json` sits in the parsed text; only kept (non-null) when there are defects.
    void resource(const rapidjson::Value& json, Location where, const BundleContext* bundle, const std::string& path,
                  const JsonPath* jpath) {
        if (jpath && !defects_within(*jpath).empty()) {
            const Json* rt = member(json, "resourceType");
            if (!rt || !rt->IsString() || std::string_view(rt->GetString()) != "Bundle") {
                const auto inside = defects_within(*jpath);
                std::string type = rt && rt->IsString() ? std::string(rt->GetString()) : std::string();
                if (const Json* id = member(json, "id"); !type.empty() && id && id->IsString())
                    where.resource = type + "/" + id->GetString();
                else
                    where.resource = type;
                reject_defects(where, type.empty() ? path : type, jpath->size(), inside);
                return;
            }
        }
        std::string_view type;
        try {
            type = resource_type(json, path);
        } catch (const ElementError& e) {
            reject(where, e.path(), e.what());
            return;
        }
        if (const Json* id = member(json, "id"); id && id->IsString())
            where.resource = std::string(type) + "/" + id->GetString();
        else
            where.resource = std::string(type);
        if (type == "Bundle") {
            bundle_entries(json, where, jpath);
            return;
        }
        try {
            ++stats_.resources;
            handler_.on_resource(json, type, where, bundle);
        } catch (const ElementError& e) {
            --stats_.resources;
            reject(where, e.path(), e.what());
        }
    }

    void reject(const Location& where, const std::string& path, const std::string& message) {
        ++stats_.rejected;
        handler_.on_problem(Problem{Severity::error, where, path, message});
    }

private:
    std::vector<const JsonError*> defects_within(const JsonPath& prefix) const {
        std::vector<const JsonError*> out;
        if (defects_)
            for (const auto& d : *defects_)
                if (starts_with(d.path, prefix)) out.push_back(&d);
        return out;
    }

    // One error for the first defect (the element path from `fhir_prefix`), counting the others.
    void reject_defects(const Location& where, const std::string& fhir_prefix, std::size_t skip,
                        const std::vector<const JsonError*>& defects) {
        const JsonError& first = *defects.front();
        std::string message = first.message + " (" + pos_.at(first.offset) + ")";
        if (defects.size() > 1) message += " and " + std::to_string(defects.size() - 1) + " more";
        reject(where, render_json_path(first.path, fhir_prefix, skip), message);
    }

    void bundle_entries(const rapidjson::Value& bundle, const Location& where, const JsonPath* jpath) {
        // Defects of the Bundle itself (outside its entries): reported; the entries are still read.
        std::vector<bool> bad_entry;
        if (jpath) {
            std::vector<const JsonError*> own;
            for (const JsonError* d : defects_within(*jpath)) {
                const std::size_t n = jpath->size();
                const bool in_entry = d->path.size() > n + 1 && d->path[n].key == "entry" && !d->path[n].is_index() &&
                                      d->path[n + 1].is_index();
                const bool in_resource = in_entry && d->path.size() > n + 2 && d->path[n + 2].key == "resource" &&
                                         !d->path[n + 2].is_index();
                if (in_resource) continue;  // reported with its resource
                if (in_entry) {
                    const std::size_t i = d->path[n + 1].index;
                    if (bad_entry.size() <= i) bad_entry.resize(i + 1, false);
                    if (bad_entry[i]) continue;
                    bad_entry[i] = true;
                    Location at = where;
                    at.entry = static_cast<long>(i);
                    at.resource.clear();
                    std::vector<const JsonError*> one{d};
                    reject_defects(at, "Bundle", n, one);
                    continue;
                }
                own.push_back(d);
            }
            if (!own.empty()) reject_defects(where, "Bundle", jpath->size(), own);
        }
        const Json* entries = member(bundle, "entry");
        if (!entries) return;
        if (!entries->IsArray()) {
            reject(where, "Bundle.entry", "expected an array");
            return;
        }
        const BundleContext ctx = BundleContext::of(bundle, &bad_entry);
        JsonPath child;
        if (jpath) {
            child = *jpath;
            child.push_back({"entry", JsonPathStep::npos});
            child.push_back({"", 0});
            child.push_back({"resource", JsonPathStep::npos});
        }
        for (rapidjson::SizeType i = 0; i < entries->Size(); ++i) {
            if (i < bad_entry.size() && bad_entry[i]) continue;
            const Json& e = (*entries)[i];
            Location at = where;
            at.entry = static_cast<long>(i);
            at.resource.clear();
            const std::string epath = "Bundle.entry[" + std::to_string(i) + "]";
            if (!e.IsObject()) {
                reject(at, epath, "expected an object");
                continue;
            }
            const Json* res = member(e, "resource");
            if (!res) {  // a DELETE request, or a response entry: nothing to read
                deleted_entry(e, at);
                continue;
            }
            if (jpath) child[child.size() - 2].index = i;
            resource(*res, at, &ctx, epath + ".resource", jpath ? &child : nullptr);
        }
    }

    // An entry that deletes a resource: request.method DELETE with a url "Type/id" (or
    // "Type/id/_history/v"; absolute or relative). A conditional delete (a url with '?') names no
    // resource and is left alone.
    void deleted_entry(const Json& entry, Location where) {
        const Json* req = member(entry, "request");
        if (!req || !req->IsObject() || string_or_empty(*req, "method") != "DELETE") return;
        std::string url = string_or_empty(*req, "url");
        if (url.empty() || url.find('?') != std::string::npos) return;
        std::string version;
        if (const auto h = url.find("/_history/"); h != std::string::npos) {
            version = url.substr(h + 10);
            url.resize(h);
        }
        const auto slash = url.rfind('/');
        if (slash == std::string::npos || slash == 0 || slash + 1 == url.size()) return;
        const auto type_start = url.rfind('/', slash - 1);
        const std::string type = url.substr(type_start == std::string::npos ? 0 : type_start + 1,
                                            slash - (type_start == std::string::npos ? 0 : type_start + 1));
        const std::string id = url.substr(slash + 1);
        if (type.empty() || !std::isupper(static_cast<unsigned char>(type[0]))) return;
        std::optional<std::int64_t> at;
        if (const Json* resp = member(entry, "response"); resp && resp->IsObject()) {
            const std::string etag = string_or_empty(*resp, "etag");  // W/"3"
            if (version.empty() && etag.size() > 4 && etag.rfind("W/\"", 0) == 0 && etag.back() == '"')
                version = etag.substr(3, etag.size() - 4);
            at = parse_datetime(string_or_empty(*resp, "lastModified"));
        }
        where.resource = type + "/" + id;
        handler_.on_deleted(where.resource, version, at, where);
    }

    ResourceHandler& handler_;
    ReadStats& stats_;
    const std::vector<JsonError>* defects_ = nullptr;
    TextPosition pos_;
};

// The text of an NDJSON line to parse: without its '\r' and a leading BOM; empty when blank.
std::string_view line_body(std::string_view& text) {
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    const std::string_view body = text.substr(0, kBom.size()) == kBom ? text.substr(kBom.size()) : text;
    if (body.find_first_not_of(" \t") == std::string_view::npos) return {};
    return body;
}

// `scratch`: text.size() + 1 writable chars; the line is parsed in place in a copy there, so the
// Document's strings point into it (see JsonParseOptions::insitu).
JsonParseResult parse_line(rapidjson::Document& doc, std::string_view text, char* scratch) {
    JsonParseOptions options;
    options.keep_going = true;
    options.insitu = scratch;
    return parse_untrusted_json(doc, text, options);
}

// Parses NDJSON lines one by one, each into a pool that is cleared after it, or hands over lines
// parsed elsewhere (parsed()).
class LineReader {
public:
    LineReader(const std::string& name, ResourceHandler& handler, ReadStats& stats)
        : name_(name), handler_(handler), stats_(stats), reader_(handler, stats),
          pool_(first_chunk().data(), first_chunk().size()) {}

    void line(std::string_view text, std::size_t number) {
        if (line_body(text).empty()) return;
        {
            if (scratch_.size() < text.size() + 1) scratch_.resize(text.size() + 1);
            rapidjson::Document doc(&pool_);
            const JsonParseResult parsed = parse_line(doc, text, scratch_.data());
            parsed_line(text, number, doc, parsed);
        }
        pool_.Clear();
    }

    // A line (its text as line_body left it) parsed into `doc`.
    void parsed_line(std::string_view text, std::size_t number, const rapidjson::Document& doc,
                     const JsonParseResult& parsed) {
        const Location where{name_, number, -1, {}};
        const TextPosition pos{text, true};
        if (!parsed) {
            ++stats_.rejected;
            handler_.on_problem(Problem{Severity::error, where, "", refusal(*parsed.error, pos)});
        } else {
            reader_.set_defects(parsed.defects, pos);
            const JsonPath root;
            reader_.resource(doc, where, nullptr, "", parsed.defects.empty() ? nullptr : &root);
            reader_.set_defects({}, {});
        }
    }

private:
    static std::vector<char>& first_chunk() {
        static thread_local std::vector<char> chunk(1 << 18);
        return chunk;
    }

    const std::string& name_;
    ResourceHandler& handler_;
    ReadStats& stats_;
    Reader reader_;
    rapidjson::MemoryPoolAllocator<> pool_;
    std::vector<char> scratch_;  // the line being parsed in place (its strings are the Document's)
};

// Lines of a stream through a buffer that holds at most the longest line kept (max_line_bytes) plus
// one read's worth: a longer line is skipped as it streams by, and reported as too long.
class LineSource {
public:
    LineSource(std::istream& in, std::size_t max_line_bytes) : buf_(in.rdbuf()), max_(max_line_bytes) {
        data_.resize(kRead);
    }

    // The next line (without its '\n'), valid until the next call; false at the end of the input.
    bool next(std::string_view& line, bool& too_long) {
        too_long = false;
        bool skipping = false;  // inside a line that is too long
        for (;;) {
            const char* nl = begin_ < end_ ? static_cast<const char*>(std::memchr(data_.data() + begin_, '\n', end_ - begin_))
                                           : nullptr;
            if (nl) {
                const std::size_t len = static_cast<std::size_t>(nl - (data_.data() + begin_));
                line = std::string_view(data_.data() + begin_, len);
                begin_ += len + 1;
                if (skipping || len > max_) {
                    too_long = true;
                    line = {};
                }
                return true;
            }
            if (end_ - begin_ > max_) {  // too long: drop what is held of it
                skipping = true;
                begin_ = end_ = 0;
            }
            if (eof_) {
                if (begin_ == end_ && !skipping) return false;
                line = std::string_view(data_.data() + begin_, end_ - begin_);
                begin_ = end_;
                too_long = skipping;
                if (too_long) line = {};
                return true;
            }
            fill();
        }
    }

private:
    static constexpr std::size_t kRead = std::size_t{1} << 20;

    void fill() {
        if (begin_ > 0) {  // keep the partial line at the start
            std::memmove(data_.data(), data_.data() + begin_, end_ - begin_);
            end_ -= begin_;
            begin_ = 0;
        }
        if (data_.size() - end_ < kRead) data_.resize(end_ + kRead);
        const std::streamsize got = buf_ ? buf_->sgetn(data_.data() + end_, static_cast<std::streamsize>(kRead)) : 0;
        if (got <= 0) eof_ = true;
        else end_ += static_cast<std::size_t>(got);
    }

    std::streambuf* buf_;
    std::size_t max_;
    std::vector<char> data_;
    std::size_t begin_ = 0, end_ = 0;
    bool eof_ = false;
};

// A batch of lines parsed together (by a worker thread when jobs > 1).
struct Batch {
    struct Line {
        std::size_t number = 0;
        std::size_t offset = 0, size = 0;  // in text
        bool too_long = false;
        JsonParseResult parsed;
    };
    std::string text;  // the lines' bytes (their bodies, as line_body left them)
    std::vector<Line> lines;
    std::vector<char> scratch;  // each line copied, with a '\0' after it, and parsed in place
    std::unique_ptr<rapidjson::MemoryPoolAllocator<>> pool;
    std::deque<rapidjson::Document> docs;  // one per line that is not too long

    std::string_view line_text(const Line& l) const { return std::string_view(text).substr(l.offset, l.size); }
    void parse() {
        pool = std::make_unique<rapidjson::MemoryPoolAllocator<>>(std::size_t{1} << 20);
        scratch.resize(text.size() + lines.size());
        std::size_t at = 0;
        for (auto& l : lines) {
            if (l.too_long) continue;
            docs.emplace_back(pool.get());
            l.parsed = parse_line(docs.back(), line_text(l), scratch.data() + at);
            at += l.size + 1;
        }
    }
};

void report_too_long(ResourceHandler& handler, ReadStats& stats, const std::string& name, std::size_t number,
                     std::size_t max_line_bytes) {
    ++stats.rejected;
    handler.on_problem(Problem{Severity::error, Location{name, number, -1, {}}, "",
                               "the line is longer than " + std::to_string(max_line_bytes) + " bytes: not read"});
}

ReadStats read_ndjson_text(std::string_view text, const std::string& name, ResourceHandler& handler) {
    ReadStats stats;
    LineReader lines(name, handler, stats);
    std::size_t number = 0;
    while (!text.empty()) {
        const std::size_t nl = text.find('\n');
        lines.line(text.substr(0, nl), ++number);
        if (nl == std::string_view::npos) break;
        text.remove_prefix(nl + 1);
    }
    return stats;
}

// Two non-blank lines that both start with '{': NDJSON, even when its first line is broken.
bool looks_like_ndjson(std::string_view text) {
    int objects = 0;
    while (!text.empty() && objects < 2) {
        const std::size_t nl = text.find('\n');
        const std::string_view line = text.substr(0, nl);
        const std::size_t first = line.find_first_not_of(" \t\r");
        if (first != std::string_view::npos) {
            if (line[first] != '{') return false;
            ++objects;
        }
        if (nl == std::string_view::npos) break;
        text.remove_prefix(nl + 1);
    }
    return objects == 2;
}

}  // namespace

std::string normalize_base(std::string_view url) {
    std::string out(url);
    while (!out.empty() && out.back() == '/') out.pop_back();
    const auto scheme = out.find("://");
    if (scheme == std::string::npos) return out;
    const auto host_end = out.find('/', scheme + 3);
    for (std::size_t i = 0; i < std::min(out.size(), host_end); ++i)
        out[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(out[i])));
    return out;
}

namespace {

// A FHIR id: [A-Za-z0-9-.]{1,64}.
bool valid_id(std::string_view id) {
    if (id.empty() || id.size() > 64) return false;
    return std::all_of(id.begin(), id.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
    });
}

// "https://host/fhir" of "https://host/fhir/Observation/1" (a version suffix ignored); "" when the URL
// is not absolute or does not end in Type/id.
std::string server_base_of(std::string_view url) {
    if (url.find("://") == std::string_view::npos) return {};
    if (const auto h = url.find("/_history/"); h != std::string_view::npos) url = url.substr(0, h);
    const auto id_slash = url.rfind('/');
    if (id_slash == std::string_view::npos || id_slash == 0) return {};
    const auto type_slash = url.rfind('/', id_slash - 1);
    if (type_slash == std::string_view::npos) return {};
    const std::string_view type = url.substr(type_slash + 1, id_slash - type_slash - 1);
    if (type.empty() || !std::isupper(static_cast<unsigned char>(type[0])) || !valid_id(url.substr(id_slash + 1)))
        return {};
    const std::string_view base = url.substr(0, type_slash);
    if (base.find("://") == std::string_view::npos || base.size() <= base.find("://") + 3) return {};
    return normalize_base(base);
}

std::string_view strip_history(std::string_view ref) {
    if (const auto h = ref.find("/_history/"); h != std::string_view::npos) return ref.substr(0, h);
    return ref;
}

}  // namespace

BundleContext BundleContext::of(const rapidjson::Value& bundle, const std::vector<bool>* skip) {
    BundleContext ctx;
    const Json* entries = member(bundle, "entry");
    if (!entries || !entries->IsArray()) return ctx;
    ctx.entry_full_urls.resize(entries->Size());
    auto skipped = [skip](rapidjson::SizeType i) { return skip && i < skip->size() && (*skip)[i]; };
    for (rapidjson::SizeType i = 0; i < entries->Size(); ++i) {
        if (skipped(i)) continue;
        const Json& e = (*entries)[i];
        const Json* full = member(e, "fullUrl");
        if (!full || !full->IsString()) continue;
        const std::string url(full->GetString(), full->GetStringLength());
        ctx.entry_full_urls[i] = url;
        if (auto base = server_base_of(url); !base.empty()) ctx.bases.insert(std::move(base));
        const Json* res = member(e, "resource");
        if (!res || !res->IsObject()) continue;
        const std::string type = string_or_empty(*res, "resourceType");
        const std::string id = string_or_empty(*res, "id");
        if (!type.empty() && !id.empty())
            ctx.full_urls.emplace(url, type + "/" + id);
        else if (type == "Patient" && !member(*res, "id"))
            ctx.full_urls.emplace(url, url);  // a Patient without an id is its fullUrl
    }
    // The Observations a DiagnosticReport of this Bundle lists, and the report's subject.
    for (rapidjson::SizeType i = 0; i < entries->Size(); ++i) {
        if (skipped(i)) continue;
        const Json* res = member((*entries)[i], "resource");
        if (!res || !res->IsObject() || string_or_empty(*res, "resourceType") != "DiagnosticReport") continue;
        const Json* subject = member(*res, "subject");
        const std::string subject_ref = subject && subject->IsObject() ? string_or_empty(*subject, "reference") : "";
        const Json* results = member(*res, "result");
        if (subject_ref.empty() || !results || !results->IsArray()) continue;
        for (const auto& r : results->GetArray()) {
            if (!r.IsObject()) continue;
            const std::string ref = string_or_empty(r, "reference");
            if (ref.empty() || ref[0] == '#') continue;  // contained: read with the report
            ctx.report_subjects.emplace(std::string(strip_history(ctx.resolve(ref))), subject_ref);
        }
    }
    return ctx;
}

std::string_view BundleContext::resolve(std::string_view reference) const {
    auto it = full_urls.find(std::string(reference));
    return it == full_urls.end() ? reference : std::string_view(it->second);
}

std::string_view BundleContext::full_url_of(long entry) const {
    if (entry < 0 || static_cast<std::size_t>(entry) >= entry_full_urls.size()) return {};
    return entry_full_urls[static_cast<std::size_t>(entry)];
}

std::string_view BundleContext::report_subject(std::string_view observation_ref, long entry) const {
    if (report_subjects.empty()) return {};
    if (auto it = report_subjects.find(std::string(observation_ref)); it != report_subjects.end()) return it->second;
    const std::string_view full = full_url_of(entry);
    if (full.empty()) return {};
    if (auto it = report_subjects.find(std::string(full)); it != report_subjects.end()) return it->second;
    return {};
}

PatientIdentity patient_identity(std::string_view reference, const BundleContext* bundle, std::string_view server_base) {
    using Kind = PatientIdentity::Kind;
    std::string_view ref = reference;
    if (bundle) {
        if (auto it = bundle->full_urls.find(std::string(reference)); it != bundle->full_urls.end()) {
            ref = it->second;
            if (ref.rfind("urn:", 0) == 0) return {Kind::patient, std::string(ref)};  // a Patient without an id
        }
    }
    if (ref.rfind("urn:uuid:", 0) == 0 || ref.rfind("urn:oid:", 0) == 0) return {Kind::unresolved, {}};
    ref = strip_history(ref);
    if (ref.find("://") == std::string_view::npos) {
        if (ref.rfind("Patient/", 0) != 0 || !valid_id(ref.substr(8))) return {};
        return {Kind::patient, std::string(ref)};
    }
    const auto p = ref.rfind("/Patient/");
    if (p == std::string_view::npos || !valid_id(ref.substr(p + 9))) return {};
    const std::string id(ref.substr(p + 9));
    const std::string base = normalize_base(ref.substr(0, p));
    if ((!server_base.empty() && base == server_base) || (bundle && bundle->bases.count(base)))
        return {Kind::patient, "Patient/" + id};
    return {Kind::patient, base + "/Patient/" + id};
}

ReadStats read_ndjson(std::istream& in, const std::string& name, ResourceHandler& handler, std::size_t max_line_bytes) {
    NdjsonOptions options;
    options.max_line_bytes = max_line_bytes;
    return read_ndjson(in, name, handler, options);
}

ReadStats read_ndjson(std::istream& in, const std::string& name, ResourceHandler& handler, const NdjsonOptions& options) {
    ReadStats stats;
    LineReader lines(name, handler, stats);
    LineSource source(in, options.max_line_bytes);
    std::size_t number = 0;
    std::string_view line;
    bool too_long = false;
    if (options.jobs <= 1) {
        while (source.next(line, too_long)) {
            ++number;
            if (too_long)
                report_too_long(handler, stats, name, number, options.max_line_bytes);
            else
                lines.line(line, number);
        }
    } else {
        // Batches parsed ahead by other threads, handed over in input order.
        std::deque<std::future<std::unique_ptr<Batch>>> pending;
        bool more = true;
        auto read_batch = [&]() {
            auto b = std::make_unique<Batch>();
            while (b->text.size() < options.batch_bytes && (more = source.next(line, too_long))) {
                ++number;
                if (!too_long && line_body(line).empty()) continue;
                Batch::Line l;
                l.number = number;
                l.too_long = too_long;
                l.offset = b->text.size();
                l.size = too_long ? 0 : line.size();
                b->text.append(line);
                b->lines.push_back(std::move(l));
            }
            return b;
        };
        auto hand_over = [&](Batch& b) {
            std::size_t d = 0;
            for (const auto& l : b.lines) {
                if (l.too_long) {
                    report_too_long(handler, stats, name, l.number, options.max_line_bytes);
                    continue;
                }
                lines.parsed_line(b.line_text(l), l.number, b.docs[d++], l.parsed);
            }
        };
        while (more || !pending.empty()) {
            while (more && pending.size() < options.jobs) {
                pending.push_back(std::async(std::launch::async, [b = read_batch()]() mutable {
                    b->parse();
                    return std::move(b);
                }));
            }
            if (pending.empty()) break;
            std::unique_ptr<Batch> b = pending.front().get();
            pending.pop_front();
            hand_over(*b);
        }
    }
    if (in.bad()) {
        stats.fatal = true;
        handler.on_problem(Problem{Severity::fatal, Location{name, number, -1, {}}, "", "read error"});
    }
    return stats;
}

ReadStats read_text(std::string_view text, const std::string& name, ResourceHandler& handler) {
    ReadStats stats;
    const std::size_t bom = text.substr(0, kBom.size()) == kBom ? kBom.size() : 0;
    const auto start = text.find_first_not_of(" \t\r\n", bom);
    if (start == std::string_view::npos) {
        stats.fatal = true;
        handler.on_problem(Problem{Severity::fatal, Location{name, 0, -1, {}}, "", "empty input: no FHIR resource"});
        return stats;
    }
    if (text[start] != '{') {
        stats.fatal = true;
        handler.on_problem(Problem{Severity::fatal, Location{name, 0, -1, {}}, "",
                                   "not FHIR JSON: " + json_line_column(text, start) + " starts with " +
                                       quoted_byte(text[start]) + " instead of '{'"});
        return stats;
    }
    rapidjson::Document doc;
    JsonParseOptions options;
    options.keep_going = true;
    options.allow_trailing = true;
    const JsonParseResult parsed = parse_untrusted_json(doc, text, options);
    if (parsed) {
        if (text.find_first_not_of(" \t\r\n", parsed.end) != std::string_view::npos) {
            // More JSON after the first value: NDJSON.
            return read_ndjson_text(text, name, handler);
        }
        Reader reader(handler, stats);
        reader.set_defects(parsed.defects, TextPosition{text, false});
        const JsonPath root;
        reader.resource(doc, Location{name, 0, -1, {}}, nullptr, "", parsed.defects.empty() ? nullptr : &root);
        return stats;
    }
    // NDJSON whose first line is broken: the other lines are still read.
    if (parsed.error->kind != JsonErrorKind::too_large && looks_like_ndjson(text.substr(bom)))
        return read_ndjson_text(text, name, handler);
    stats.fatal = true;
    handler.on_problem(
        Problem{Severity::fatal, Location{name, 0, -1, {}}, "", refusal(*parsed.error, TextPosition{text, false})});
    return stats;
}

ReadStats read_value(const rapidjson::Value& json, const std::string& name, ResourceHandler& handler) {
    ReadStats stats;
    Reader reader(handler, stats);
    reader.resource(json, Location{name, 0, -1, {}}, nullptr, "", nullptr);
    return stats;
}

ReadStats read_path(const std::string& path, ResourceHandler& handler) { return read_path(path, handler, NdjsonOptions{}); }

ReadStats read_path(const std::string& path, ResourceHandler& handler, const NdjsonOptions& ndjson) {
    const std::string name = path == "-" ? std::string("<stdin>") : path;
    if (path == "-") {
        std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
        return read_text(text, name, handler);
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        ReadStats stats;
        stats.fatal = true;
        handler.on_problem(Problem{Severity::fatal, Location{name, 0, -1, {}}, "", "cannot open file"});
        return stats;
    }
    if (ends_with(path, ".ndjson") || ends_with(path, ".jsonl")) return read_ndjson(in, name, handler, ndjson);
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (!ec && size > kDefaultJsonMaxBytes) {
        ReadStats stats;
        stats.fatal = true;
        handler.on_problem(Problem{Severity::fatal, Location{name, 0, -1, {}}, "",
                                   "the file is " + std::to_string(size) + " bytes, more than the limit of " +
                                       std::to_string(kDefaultJsonMaxBytes) +
                                       " for a file read whole (.ndjson and .jsonl files are read line by line)"});
        return stats;
    }
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return read_text(text, name, handler);
}

}  // namespace calcalert::fhir
