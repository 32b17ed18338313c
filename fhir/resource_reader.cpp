#include "fhir/resource_reader.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

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
        BundleContext ctx;
        for (rapidjson::SizeType i = 0; i < entries->Size(); ++i) {
            if (i < bad_entry.size() && bad_entry[i]) continue;
            const Json& e = (*entries)[i];
            const Json* full = member(e, "fullUrl");
            const Json* res = member(e, "resource");
            if (!full || !full->IsString() || !res || !res->IsObject()) continue;
            const Json* rt = member(*res, "resourceType");
            const Json* id = member(*res, "id");
            if (rt && rt->IsString() && id && id->IsString())
                ctx.full_urls.emplace(full->GetString(), std::string(rt->GetString()) + "/" + id->GetString());
        }
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
            if (!res) continue;  // e.g. a DELETE request or a response entry: nothing to read
            if (jpath) child[child.size() - 2].index = i;
            resource(*res, at, &ctx, epath + ".resource", jpath ? &child : nullptr);
        }
    }

    ResourceHandler& handler_;
    ReadStats& stats_;
    const std::vector<JsonError>* defects_ = nullptr;
    TextPosition pos_;
};

// Parses NDJSON lines one by one, each into a pool that is cleared after it.
class LineReader {
public:
    LineReader(const std::string& name, ResourceHandler& handler, ReadStats& stats)
        : name_(name), handler_(handler), stats_(stats), reader_(handler, stats),
          pool_(first_chunk().data(), first_chunk().size()) {}

    void line(std::string_view text, std::size_t number) {
        if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
        const std::string_view body = text.substr(0, kBom.size()) == kBom ? text.substr(kBom.size()) : text;
        if (body.find_first_not_of(" \t") == std::string_view::npos) return;
        const Location where{name_, number, -1, {}};
        {
            rapidjson::Document doc(&pool_);
            JsonParseOptions options;
            options.keep_going = true;
            const JsonParseResult parsed = parse_untrusted_json(doc, text, options);
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
        pool_.Clear();
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
};

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

std::string_view BundleContext::resolve(std::string_view reference) const {
    auto it = full_urls.find(std::string(reference));
    return it == full_urls.end() ? reference : std::string_view(it->second);
}

ReadStats read_ndjson(std::istream& in, const std::string& name, ResourceHandler& handler) {
    ReadStats stats;
    LineReader lines(name, handler, stats);
    std::string line;
    std::size_t number = 0;
    while (std::getline(in, line)) lines.line(line, ++number);
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

ReadStats read_path(const std::string& path, ResourceHandler& handler) {
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
    if (ends_with(path, ".ndjson") || ends_with(path, ".jsonl")) return read_ndjson(in, name, handler);
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
