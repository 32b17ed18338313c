// Reads FHIR R4 JSON resources out of a file or text: a single resource, a Bundle of any type
// (collection, searchset, transaction, batch, nested Bundles), or NDJSON (one resource per line, as
// Bulk Data writes it; streamed line by line). Each resource is handed to a ResourceHandler and then
// dropped: the reader keeps no JSON trees.
#pragma once

#include <cstddef>
#include <istream>
#include <string>
#include <string_view>
#include <unordered_map>

#include <rapidjson/document.h>

#include "fhir/problem.hpp"

namespace calcalert::fhir {

// What a Bundle says about its own entries: fullUrl -> "Type/id", to resolve urn:uuid references.
struct BundleContext {
    std::unordered_map<std::string, std::string> full_urls;
    // Resolves a reference through the fullUrls; returns the reference unchanged when unknown.
    std::string_view resolve(std::string_view reference) const;
};

class ResourceHandler {
public:
    virtual ~ResourceHandler() = default;
    // One resource; `bundle` is non-null when it came from a Bundle entry. May throw ElementError:
    // the reader turns that into an error Problem naming the resource and element path.
    virtual void on_resource(const rapidjson::Value& resource, std::string_view type, const Location& where,
                             const BundleContext* bundle) = 0;
    virtual void on_problem(const Problem& problem) = 0;
};

struct ReadStats {
    std::size_t resources = 0;  // handed to the handler
    std::size_t rejected = 0;   // resources or lines that could not be read
    bool fatal = false;         // the whole input could not be read
};

// "-" reads standard input. Files ending in .ndjson or .jsonl are read as NDJSON; others are read
// whole and detected (a text with several JSON objects, one per line, is NDJSON).
ReadStats read_path(const std::string& path, ResourceHandler& handler);
ReadStats read_text(std::string_view text, const std::string& name, ResourceHandler& handler);
ReadStats read_ndjson(std::istream& in, const std::string& name, ResourceHandler& handler);
// An already parsed resource or Bundle (e.g. a search page); `name` says where it came from.
ReadStats read_value(const rapidjson::Value& json, const std::string& name, ResourceHandler& handler);

}  // namespace calcalert::fhir
