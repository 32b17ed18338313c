#include "fhir/resource_reader.hpp"

#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <vector>

#include <rapidjson/error/en.h>

#include "fhir/views.hpp"

namespace calcalert::fhir {
namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "line L, column C" for a byte offset into text.
std::string line_column(std::string_view text, std::size_t offset) {
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < offset && i < text.size(); ++i) {
        if (text[i] == '\n') {
            ++line;
            col = 1;
        } else {
            ++col;
        }
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(col);
}

class Reader {
public:
    Reader(ResourceHandler& h, ReadStats& s) : handler_(h), stats_(s) {}

    void resource(const rapidjson::Value& json, Location where, const BundleContext* bundle, const std::string& path) {
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
            bundle_entries(json, where);
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
    void bundle_entries(const rapidjson::Value& bundle, const Location& where) {
        const Json* entries = member(bundle, "entry");
        if (!entries) return;
        if (!entries->IsArray()) {
            reject(where, "Bundle.entry", "expected an array");
            return;
        }
        BundleContext ctx;
        for (const auto& e : entries->GetArray()) {
            const Json* full = member(e, "fullUrl");
            const Json* res = member(e, "resource");
            if (!full || !full->IsString() || !res || !res->IsObject()) continue;
            const Json* rt = member(*res, "resourceType");
            const Json* id = member(*res, "id");
            if (rt && rt->IsString() && id && id->IsString())
                ctx.full_urls.emplace(full->GetString(), std::string(rt->GetString()) + "/" + id->GetString());
        }
        for (rapidjson::SizeType i = 0; i < entries->Size(); ++i) {
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
            resource(*res, at, &ctx, epath + ".resource");
        }
    }

    ResourceHandler& handler_;
    ReadStats& stats_;
};

void parse_and_dispatch(Reader& reader, std::string& line, const Location& where, ResourceHandler& handler,
                        ReadStats& stats, rapidjson::MemoryPoolAllocator<>& pool) {
    rapidjson::Document doc(&pool);
    doc.ParseInsitu(line.data());
    if (doc.HasParseError()) {
        ++stats.rejected;
        handler.on_problem(Problem{Severity::error, where, "",
                                   std::string("JSON parse error at column ") + std::to_string(doc.GetErrorOffset() + 1) +
                                       ": " + rapidjson::GetParseError_En(doc.GetParseError())});
        return;
    }
    reader.resource(doc, where, nullptr, "");
}

}  // namespace

std::string_view BundleContext::resolve(std::string_view reference) const {
    auto it = full_urls.find(std::string(reference));
    return it == full_urls.end() ? reference : std::string_view(it->second);
}

ReadStats read_ndjson(std::istream& in, const std::string& name, ResourceHandler& handler) {
    ReadStats stats;
    Reader reader(handler, stats);
    static thread_local std::vector<char> first_chunk(1 << 18);
    rapidjson::MemoryPoolAllocator<> pool(first_chunk.data(), first_chunk.size());
    std::string line;
    std::size_t number = 0;
    while (std::getline(in, line)) {
        ++number;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        Location where{name, number, -1, {}};
        parse_and_dispatch(reader, line, where, handler, stats, pool);
        pool.Clear();
    }
    if (in.bad()) {
        stats.fatal = true;
        handler.on_problem(Problem{Severity::fatal, Location{name, number, -1, {}}, "", "read error"});
    }
    return stats;
}

ReadStats read_text(std::string_view text, const std::string& name, ResourceHandler& handler) {
    ReadStats stats;
    const auto start = text.find_first_not_of(" \t\r\n\xEF\xBB\xBF");
    if (start == std::string_view::npos) {
        stats.fatal = true;
        handler.on_problem(Problem{Severity::fatal, Location{name, 0, -1, {}}, "", "empty input: no FHIR resource"});
        return stats;
    }
    if (text[start] != '{') {
        stats.fatal = true;
        handler.on_problem(Problem{Severity::fatal, Location{name, 0, -1, {}}, "",
                                   "not FHIR JSON: " + line_column(text, start) + " starts with '" +
                                       std::string(text.substr(start, 1)) + "' instead of '{'"});
        return stats;
    }
    rapidjson::Document doc;
    rapidjson::MemoryStream ms(text.data(), text.size());
    rapidjson::EncodedInputStream<rapidjson::UTF8<>, rapidjson::MemoryStream> is(ms);
    doc.ParseStream<rapidjson::kParseStopWhenDoneFlag>(is);
    if (!doc.HasParseError()) {
        const std::size_t consumed = is.Tell();
        if (text.find_first_not_of(" \t\r\n", consumed) != std::string_view::npos) {
            // More JSON after the first value: NDJSON.
            std::istringstream in{std::string(text)};
            return read_ndjson(in, name, handler);
        }
        Reader reader(handler, stats);
        reader.resource(doc, Location{name, 0, -1, {}}, nullptr, "");
        return stats;
    }
    stats.fatal = true;
    handler.on_problem(Problem{Severity::fatal, Location{name, 0, -1, {}}, "",
                               "JSON parse error at " + line_column(text, doc.GetErrorOffset()) + ": " +
                                   rapidjson::GetParseError_En(doc.GetParseError())});
    return stats;
}

ReadStats read_value(const rapidjson::Value& json, const std::string& name, ResourceHandler& handler) {
    ReadStats stats;
    Reader reader(handler, stats);
    reader.resource(json, Location{name, 0, -1, {}}, nullptr, "");
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
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return read_text(text, name, handler);
}

}  // namespace calcalert::fhir
