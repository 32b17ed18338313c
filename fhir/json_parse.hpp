// One parsing policy for every JSON text that comes from outside the program: files and standard
// input, NDJSON lines, CDS Hooks request bodies (and their prefetch), JWTs, JWK Sets, FHIR server
// replies. RapidJSON's iterative parser (no recursion proportional to the input's depth) with:
//   - a size limit and a nesting-depth limit;
//   - strict UTF-8: every string and key is validated (a lone UTF-16 surrogate escape counts as
//     invalid), so invalid bytes never reach a Document and never leave the program;
//   - finite numbers only: a number out of double's range (1e309, -1e400, 2e308) is refused;
//     the literals NaN and Infinity are not JSON and are refused too;
//   - a leading UTF-8 byte order mark is accepted and skipped;
//   - nothing but whitespace after the value (unless allow_trailing).
// Every error says what went wrong, at which byte offset of the input, and where in the JSON value.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <rapidjson/document.h>

namespace calcalert::fhir {

inline constexpr std::size_t kDefaultJsonMaxDepth = 100;
inline constexpr std::size_t kDefaultJsonMaxBytes = std::size_t{1} << 30;  // 1 GiB

struct JsonLimits {
    std::size_t max_depth = kDefaultJsonMaxDepth;  // objects and arrays nested; the root is level 1
    std::size_t max_bytes = kDefaultJsonMaxBytes;  // the whole text, BOM included
};

enum class JsonErrorKind {
    too_large,     // more bytes than JsonLimits::max_bytes
    syntax,        // not JSON (RapidJSON's message), trailing content, too many out-of-range numbers
    invalid_utf8,  // a string or key that is not valid UTF-8
    too_deep,      // objects/arrays nested deeper than JsonLimits::max_depth
    non_finite,    // a number out of double's range, or NaN/Infinity
};
const char* to_string(JsonErrorKind kind);

// One step of a path into a JSON value: a member name or an array index.
struct JsonPathStep {
    std::string key;          // the member name when index is npos
    std::size_t index = npos;  // the array index
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
    bool is_index() const { return index != npos; }
    bool operator==(const JsonPathStep&) const = default;
};
using JsonPath = std::vector<JsonPathStep>;

// `prefix` followed by ".key" / "[i]" for each step: render_json_path(p, "$") is "$.entry[3].resource".
// Paths longer than 16 steps show their first 8 and last 4 steps around "…".
std::string render_json_path(const JsonPath& path, std::string_view prefix, std::size_t from = 0);

struct JsonError {
    JsonErrorKind kind = JsonErrorKind::syntax;
    std::size_t offset = 0;  // byte offset into the bytes given (a BOM counts)
    JsonPath path;           // the value (or, for a syntax error, the container) where it happened
    std::string message;     // what went wrong, without the position: "nested deeper than 100 levels"

    // "byte offset 17 ($.a[0]): nested deeper than 100 levels"
    std::string describe() const;
};

struct JsonParseOptions {
    JsonLimits limits;
    // false: the first problem of any kind is the result's error and the Document is null.
    // true: a string that is not UTF-8, a number out of range or a subtree nested too deep is
    // replaced by null in the Document and listed in `defects` (with its path), so that a reader
    // of many resources can reject only the resource holding it. Syntax errors and the size limit
    // are still errors. For readers that check `defects`; everyone else keeps it false.
    bool keep_going = false;
    // Stop after the first JSON value: `end` says where it ended (for telling NDJSON apart).
    bool allow_trailing = false;
    // When set: a writable buffer of at least bytes.size() + 1 chars. The text is copied there
    // (with a '\0' after it) and parsed in place, so the Document's strings point into it instead
    // of being copied into the allocator: the buffer must outlive the Document and stay unchanged
    // while the Document is read. Offsets, limits and messages are those of a parse of `bytes`
    // (which is only read). A parse that has to patch numbers out of range does not use it.
    char* insitu = nullptr;
};

struct JsonParseResult {
    std::optional<JsonError> error;  // the text was refused; the Document is null
    std::vector<JsonError> defects;  // keep_going only: values replaced by null
    std::size_t end = 0;             // byte offset just after the value (after a BOM-only text: 3)
    bool ok() const { return !error; }
    explicit operator bool() const { return ok(); }
};

// Parses `bytes` into `doc` (which keeps its allocator). Never throws for bad input.
JsonParseResult parse_untrusted_json(rapidjson::Document& doc, std::string_view bytes,
                                     const JsonParseOptions& options = {});
inline JsonParseResult parse_untrusted_json(rapidjson::Document& doc, std::string_view bytes, const JsonLimits& limits) {
    JsonParseOptions o;
    o.limits = limits;
    return parse_untrusted_json(doc, bytes, o);
}

// "line 3, column 17" (1-based; columns count bytes) of a byte offset into `text`.
std::string json_line_column(std::string_view text, std::size_t offset);

// The first invalid UTF-8 sequence in `s` (its byte offset), or npos when `s` is valid UTF-8
// (no overlong forms, no surrogates, nothing above U+10FFFF).
std::size_t find_invalid_utf8(std::string_view s);

}  // namespace calcalert::fhir
