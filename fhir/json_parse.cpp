#include "fhir/json_parse.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <type_traits>

#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>

namespace calcalert::fhir {
namespace {

// Two ways through RapidJSON's reader, both stopping after the value (what follows is checked
// here: whitespace only, or allow_trailing):
//  - recursive (the fast one): the guard refuses to open level max_depth + 1, so the recursion never
//    goes deeper than that, whatever the input;
//  - iterative (a heap stack instead of the call stack): for keep_going when a subtree is too deep,
//    to read past it.
// No kParseNanAndInfFlag (NaN/Infinity stay syntax errors), no kParseValidateEncodingFlag (the
// guard validates every string and key itself, to know the path and to be able to keep going).
constexpr unsigned kRecursiveFlags = rapidjson::kParseStopWhenDoneFlag;
constexpr unsigned kIterativeFlags = rapidjson::kParseIterativeFlag | rapidjson::kParseStopWhenDoneFlag;
// The same, parsing a copy of the text in place (JsonParseOptions::insitu).
constexpr unsigned kInsituRecursiveFlags = kRecursiveFlags | rapidjson::kParseInsituFlag;
constexpr unsigned kInsituIterativeFlags = kIterativeFlags | rapidjson::kParseInsituFlag;

// Above this many numbers out of range, a keep_going parse gives up (each one costs a reparse);
// above this many defects of any kind too (each one is kept with its path).
constexpr std::size_t kMaxOutOfRangeNumbers = 16;
constexpr std::size_t kMaxDefects = 100000;

constexpr std::string_view kBom = "\xEF\xBB\xBF";
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_number_char(char c) { return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'; }

bool is_ascii(const char* s, std::size_t n) {
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        std::uint64_t w;
        std::memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ULL) return false;
    }
    for (; i < n; ++i)
        if (static_cast<unsigned char>(s[i]) & 0x80) return false;
    return true;
}

bool valid_utf8(const char* s, std::size_t n) {
    return is_ascii(s, n) || find_invalid_utf8(std::string_view(s, n)) == std::string_view::npos;
}

std::string hex_byte(unsigned char b) {
    static const char* digits = "0123456789ABCDEF";
    std::string out = "0x";
    out += digits[b >> 4];
    out += digits[b & 0xF];
    return out;
}

// A number's text for a message (ASCII by construction), shortened when long.
std::string number_text(std::string_view text, std::size_t start) {
    std::size_t end = start;
    while (end < text.size() && is_number_char(text[end])) ++end;
    std::string_view n = text.substr(start, end - start);
    if (n.size() > 24) return std::string(n.substr(0, 20)) + "…(" + std::to_string(n.size()) + " characters)";
    return std::string(n);
}

// `s` with every invalid UTF-8 sequence replaced by U+FFFD.
std::string sanitized(std::string_view s) {
    std::string out;
    while (!s.empty()) {
        const std::size_t bad = find_invalid_utf8(s);
        if (bad == std::string_view::npos) {
            out += s;
            break;
        }
        out += s.substr(0, bad);
        out += kReplacement;
        s.remove_prefix(bad + 1);
        while (!s.empty() && (static_cast<unsigned char>(s.front()) & 0xC0) == 0x80) s.remove_prefix(1);
    }
    return out;
}

// The offset of the opening quote of the string whose closing quote is at `close`.
std::size_t string_start(std::string_view text, std::size_t close) {
    for (std::size_t i = close; i-- > 0;) {
        if (text[i] != '"') continue;
        std::size_t backslashes = 0;
        for (std::size_t j = i; j-- > 0 && text[j] == '\\';) ++backslashes;
        if (backslashes % 2 == 0) return i;
    }
    return 0;
}

// The member name whose closing quote ends at `end` (exclusive), decoded, valid UTF-8. Keys are
// kept as offsets while parsing and decoded only for a path in a message.
std::string key_at(std::string_view text, std::size_t end) {
    if (end == 0 || end > text.size()) return {};
    const std::size_t open = string_start(text, end - 1);
    rapidjson::Document k;
    k.Parse<rapidjson::kParseStopWhenDoneFlag>(text.data() + open, end - open);
    if (k.HasParseError() || !k.IsString()) return sanitized(text.substr(open + 1, end - open - 2));
    return sanitized(std::string_view(k.GetString(), k.GetStringLength()));
}

// The text parsed in place (JsonParseOptions::insitu): RapidJSON's InsituStringStream without
// its copy optimisation. With it, the reader works on a local copy of the stream and writes the
// position back only after the handler has run, so the guard, which reads the position in the
// handler (for offsets and paths), would see a stale one.
struct InsituStream {
    using Ch = char;
    explicit InsituStream(char* s) : src_(s), dst_(nullptr), head_(s) {}
    Ch Peek() const { return *src_; }
    Ch Take() { return *src_++; }
    std::size_t Tell() const { return static_cast<std::size_t>(src_ - head_); }
    Ch* PutBegin() { return dst_ = src_; }
    void Put(Ch c) { *dst_++ = c; }
    void Flush() {}
    std::size_t PutEnd(Ch* begin) { return static_cast<std::size_t>(dst_ - begin); }

private:
    Ch* src_;
    Ch* dst_;
    Ch* head_;
};

// Sits between RapidJSON's reader and the Document: counts depth, keeps the path, checks strings
// and numbers. In keep_going mode a bad value becomes null (and a defect); otherwise the first
// problem stops the parse. Sink is the Document, or a handler that drops everything. Stream is
// what the reader reads (the text itself, or a copy parsed in place); `text` is always the
// original bytes, at the same offsets.
template <typename Sink, typename Stream>
class Guard {
public:
    Guard(std::string_view text, Stream& in, const JsonParseOptions& options,
          const std::map<std::size_t, std::string>& patched)
        : text_(text), in_(in), options_(options), patched_(patched) {}

    void attach(Sink& doc) { doc_ = &doc; }
    std::optional<JsonError>& error() { return error_; }
    std::vector<JsonError>& defects() { return defects_; }

    // For the iterative parser (keep_going only): a subtree too deep is skipped rather than a stop.
    void allow_skipping() { can_skip_ = true; }
    // The parse stopped at a subtree too deep so that the iterative parser can read past it.
    bool needs_iterative() const { return needs_iterative_; }

    JsonPath path() const {
        JsonPath p;
        p.reserve(frames_.size());
        for (const auto& f : frames_) {
            if (f.object && f.key_end == 0) break;  // an object before its first member name
            if (f.object)
                p.push_back({key_at(text_, f.key_end), JsonPathStep::npos});
            else
                p.push_back({"", f.count});
        }
        return p;
    }

    bool Null() {
        if (skip_) return true;
        if (!patched_.empty() && in_.Tell() >= 4) {
            auto it = patched_.find(in_.Tell() - 4);
            if (it != patched_.end()) {
                if (!problem(JsonErrorKind::non_finite, it->first, out_of_range(it->second))) return false;
            }
        }
        return value(doc_->Null());
    }
    bool Bool(bool b) { return skip_ || value(doc_->Bool(b)); }
    bool Int(int i) { return skip_ || value(doc_->Int(i)); }
    bool Uint(unsigned i) { return skip_ || value(doc_->Uint(i)); }
    bool Int64(std::int64_t i) { return skip_ || value(doc_->Int64(i)); }
    bool Uint64(std::uint64_t i) { return skip_ || value(doc_->Uint64(i)); }
    bool Double(double d) {
        if (skip_) return true;
        if (!std::isfinite(d)) {
            // The stream stands just after the number: its characters are all number characters.
            std::size_t start = in_.Tell();
            while (start > 0 && is_number_char(text_[start - 1])) --start;
            if (!problem(JsonErrorKind::non_finite, start, out_of_range(number_text(text_, start)))) return false;
            return value(doc_->Null());
        }
        return value(doc_->Double(d));
    }
    bool RawNumber(const char* s, rapidjson::SizeType n, bool copy) { return skip_ || value(doc_->RawNumber(s, n, copy)); }
    bool String(const char* s, rapidjson::SizeType n, bool copy) {
        if (skip_) return true;
        if (!valid_utf8(s, n)) {
            const std::size_t at = invalid_offset();
            if (!problem(JsonErrorKind::invalid_utf8, at, invalid_message("a string"))) return false;
            return value(doc_->Null());
        }
        return value(doc_->String(s, n, copy));
    }
    bool Key(const char* s, rapidjson::SizeType n, bool copy) {
        if (skip_) return true;
        frames_.back().key_end = in_.Tell();
        if (!valid_utf8(s, n)) {
            const std::size_t at = invalid_offset();
            if (!problem(JsonErrorKind::invalid_utf8, at, invalid_message("a member name"))) return false;
            const std::string clean = sanitized(std::string_view(s, n));
            return doc_->Key(clean.data(), static_cast<rapidjson::SizeType>(clean.size()), true);
        }
        return doc_->Key(s, n, copy);
    }
    bool StartObject() { return start(true); }
    bool StartArray() { return start(false); }
    bool EndObject(rapidjson::SizeType n) { return end(true, n); }
    bool EndArray(rapidjson::SizeType n) { return end(false, n); }

private:
    struct Frame {
        bool object = false;
        std::size_t count = 0;    // arrays: the index of the next element
        std::size_t key_end = 0;  // objects: the member being read, as the offset after its name
    };

    bool start(bool object) {
        if (skip_) {
            ++skip_;
            return true;
        }
        if (frames_.size() >= options_.limits.max_depth) {
            if (options_.keep_going && !can_skip_) {
                needs_iterative_ = true;  // stop here; the iterative parser will skip the subtree
                return false;
            }
            // The iterative parser calls this before taking the bracket, the recursive one after.
            const std::size_t at = can_skip_ || in_.Tell() == 0 ? in_.Tell() : in_.Tell() - 1;
            if (!problem(JsonErrorKind::too_deep, at,
                         "nested deeper than " + std::to_string(options_.limits.max_depth) + " levels"))
                return false;
            skip_ = 1;
            return true;
        }
        frames_.push_back({object, 0, 0});
        return object ? doc_->StartObject() : doc_->StartArray();
    }

    bool end(bool object, rapidjson::SizeType n) {
        if (skip_) {
            if (--skip_ == 0) return value(doc_->Null());  // the subtree too deep becomes null
            return true;
        }
        frames_.pop_back();
        return value(object ? doc_->EndObject(n) : doc_->EndArray(n));
    }

    bool value(bool ok) {
        if (!frames_.empty() && !frames_.back().object) ++frames_.back().count;
        return ok;
    }

    bool problem(JsonErrorKind kind, std::size_t offset, std::string message) {
        JsonError e{kind, offset, path(), std::move(message)};
        if (options_.keep_going && defects_.size() >= kMaxDefects) {
            e.kind = JsonErrorKind::syntax;
            e.message = "more than " + std::to_string(kMaxDefects) + " values could not be read; this one: " + e.message;
            error_ = std::move(e);
            return false;
        }
        if (options_.keep_going) {
            defects_.push_back(std::move(e));
            return true;
        }
        error_ = std::move(e);
        return false;
    }

    static std::string out_of_range(const std::string& number) {
        return "the number " + number + " is out of range: JSON numbers must be finite doubles";
    }

    // For a string or key just read (the stream stands after its closing quote): where its first
    // invalid byte is, or its opening quote when the bytes were valid and an escape was not.
    std::size_t invalid_offset() {
        const std::size_t close = in_.Tell() > 0 ? in_.Tell() - 1 : 0;
        const std::size_t open = string_start(text_, close);
        last_raw_ = text_.substr(open + 1, close > open ? close - open - 1 : 0);
        const std::size_t bad = find_invalid_utf8(last_raw_);
        last_bad_byte_ = bad == std::string_view::npos ? -1 : static_cast<unsigned char>(last_raw_[bad]);
        return bad == std::string_view::npos ? open : open + 1 + bad;
    }
    std::string invalid_message(const char* what) const {
        if (last_bad_byte_ < 0)
            return std::string("a \\u escape in ") + what + " encodes a lone UTF-16 surrogate: not valid UTF-8";
        return "invalid UTF-8 (byte " + hex_byte(static_cast<unsigned char>(last_bad_byte_)) + ") in " + what;
    }

    std::string_view text_;
    Stream& in_;
    const JsonParseOptions& options_;
    const std::map<std::size_t, std::string>& patched_;
    Sink* doc_ = nullptr;
    std::vector<Frame> frames_;
    std::size_t skip_ = 0;  // > 0: inside a subtree deeper than max_depth, that many levels in
    bool can_skip_ = false;
    bool needs_iterative_ = false;
    std::optional<JsonError> error_;
    std::vector<JsonError> defects_;
    std::string_view last_raw_;
    int last_bad_byte_ = -1;
};

// The common case, parsed fast: a text in place with nothing wrong in it. RapidJSON's own
// InsituStringStream is read through a local copy the reader keeps in registers (the Guard's stream
// cannot be: the Guard reads its position), and this handler needs no position: it only counts the
// depth, checks the strings' UTF-8 and the doubles, and gives up at the first thing the Guard would
// report. Then the Guard's parse runs instead, and says what and where.
class QuickGuard {
public:
    QuickGuard(rapidjson::Document& doc, std::size_t max_depth) : doc_(doc), max_depth_(max_depth) {}

    bool Null() { return doc_.Null(); }
    bool Bool(bool b) { return doc_.Bool(b); }
    bool Int(int i) { return doc_.Int(i); }
    bool Uint(unsigned i) { return doc_.Uint(i); }
    bool Int64(std::int64_t i) { return doc_.Int64(i); }
    bool Uint64(std::uint64_t i) { return doc_.Uint64(i); }
    bool Double(double d) { return std::isfinite(d) && doc_.Double(d); }
    bool RawNumber(const char* s, rapidjson::SizeType n, bool copy) { return doc_.RawNumber(s, n, copy); }
    bool String(const char* s, rapidjson::SizeType n, bool copy) { return valid_utf8(s, n) && doc_.String(s, n, copy); }
    bool Key(const char* s, rapidjson::SizeType n, bool copy) { return valid_utf8(s, n) && doc_.Key(s, n, copy); }
    bool StartObject() { return depth_++ < max_depth_ && doc_.StartObject(); }
    bool StartArray() { return depth_++ < max_depth_ && doc_.StartArray(); }
    bool EndObject(rapidjson::SizeType n) { return --depth_, doc_.EndObject(n); }
    bool EndArray(rapidjson::SizeType n) { return --depth_, doc_.EndArray(n); }

private:
    rapidjson::Document& doc_;
    std::size_t max_depth_;
    std::size_t depth_ = 0;
};

// What a RapidJSON error means, in words.
JsonError reader_error(std::string_view text, rapidjson::ParseErrorCode code, std::size_t offset, JsonPath path) {
    JsonError e{JsonErrorKind::syntax, offset, std::move(path), rapidjson::GetParseError_En(code)};
    if (code == rapidjson::kParseErrorNumberTooBig) {
        e.kind = JsonErrorKind::non_finite;
        e.message = "the number " + number_text(text, offset) + " is out of range: JSON numbers must be finite doubles";
        return e;
    }
    if (code == rapidjson::kParseErrorValueInvalid && offset < text.size()) {
        // RapidJSON stops at the 'I' of Infinity, but after the 'n' of nan (taken for null).
        const std::size_t at = offset > 0 && (text[offset - 1] == 'n' || text[offset - 1] == 'N') ? offset - 1 : offset;
        const std::string_view rest = text.substr(at);
        for (std::string_view word : {"Infinity", "NaN", "Inf", "inf", "nan"}) {
            if (rest.substr(0, word.size()) != word) continue;
            const bool minus = at > 0 && text[at - 1] == '-';
            e.kind = JsonErrorKind::non_finite;
            e.offset = minus ? at - 1 : at;
            e.message = std::string(minus ? "-" : "") + std::string(word) +
                        " is not a JSON number: non-finite numbers are refused";
            return e;
        }
        const auto b = static_cast<unsigned char>(text[offset]);
        if (b >= 0x80 || b < 0x20) e.message += " (byte " + hex_byte(b) + ")";
    }
    return e;
}

struct Attempt {
    bool number_too_big = false;
    std::size_t offset = 0;
    bool needs_iterative = false;
};

}  // namespace

const char* to_string(JsonErrorKind kind) {
    switch (kind) {
        case JsonErrorKind::too_large: return "too-large";
        case JsonErrorKind::syntax: return "syntax";
        case JsonErrorKind::invalid_utf8: return "invalid-utf8";
        case JsonErrorKind::too_deep: return "too-deep";
        case JsonErrorKind::non_finite: return "non-finite";
    }
    return "syntax";
}

std::string render_json_path(const JsonPath& path, std::string_view prefix, std::size_t from) {
    std::string out(prefix);
    const std::size_t n = from < path.size() ? path.size() - from : 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (n > 16 && i == 8) {
            out += "…(" + std::to_string(n - 12) + " more)…";
            i = n - 4;
        }
        const JsonPathStep& s = path[from + i];
        if (s.is_index()) {
            out += "[" + std::to_string(s.index) + "]";
            continue;
        }
        out += '.';
        for (char c : s.key) {  // keys are valid UTF-8 here; keep control characters off the line
            const auto b = static_cast<unsigned char>(c);
            if (b < 0x20 || b == 0x7F) {
                static const char* digits = "0123456789abcdef";
                out += "\\u00";
                out += digits[b >> 4];
                out += digits[b & 0xF];
            } else {
                out += c;
            }
        }
    }
    return out;
}

std::string JsonError::describe() const {
    return "byte offset " + std::to_string(offset) + " (" + render_json_path(path, "$") + "): " + message;
}

std::string json_line_column(std::string_view text, std::size_t offset) {
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

std::size_t find_invalid_utf8(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::size_t i = 0;
    while (i < n) {
        const unsigned char c = p[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        std::size_t len = 0;
        unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;       // no overlong forms
            else if (c == 0xED) hi = 0x9F;  // no surrogates
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            else if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
        } else {
            return i;
        }
        if (i + len > n) return i;
        if (p[i + 1] < lo || p[i + 1] > hi) return i;
        for (std::size_t k = 2; k < len; ++k)
            if ((p[i + k] & 0xC0) != 0x80) return i;
        i += len;
    }
    return std::string_view::npos;
}

JsonParseResult parse_untrusted_json(rapidjson::Document& doc, std::string_view bytes, const JsonParseOptions& options) {
    JsonParseResult result;
    doc.SetNull();
    if (bytes.size() > options.limits.max_bytes) {
        result.error = JsonError{JsonErrorKind::too_large, options.limits.max_bytes, {},
                                 "the JSON text is " + std::to_string(bytes.size()) + " bytes, more than the limit of " +
                                     std::to_string(options.limits.max_bytes)};
        return result;
    }
    const std::size_t skip = bytes.substr(0, kBom.size()) == kBom ? kBom.size() : 0;

    // A number RapidJSON cannot hold (1e309) stops its parse. In keep_going mode it is replaced by
    // null in a copy (the same length: such a number has at least five characters) and the parse
    // is done again; the guard reports the null at that offset as the defect.
    std::string copy;
    std::map<std::size_t, std::string> patched;
    std::string_view text = bytes;

    // A parse that succeeded: refused after all when something but spaces follows the value.
    auto finish = [&](JsonParseResult& r) {
        if (options.allow_trailing) return;
        std::size_t i = r.end;
        while (i < text.size() && is_json_space(text[i])) ++i;
        if (i < text.size()) {
            doc.SetNull();
            r.defects.clear();
            r.error = reader_error(text, rapidjson::kParseErrorDocumentRootNotSingular, i, {});
        }
    };

    // Parses from `in` (positioned at the start of the text) with the Document built or not.
    auto run_on = [&](auto& in, auto insitu, bool build, bool iterative, Attempt& attempt) -> std::optional<JsonError> {
        using Stream = std::remove_reference_t<decltype(in)>;
        for (std::size_t i = 0; i < skip; ++i) in.Take();
        rapidjson::Reader reader;
        auto parse = [&](auto& guard) {
            if (iterative) {
                guard.allow_skipping();
                if constexpr (decltype(insitu)::value) reader.Parse<kInsituIterativeFlags>(in, guard);
                else reader.Parse<kIterativeFlags>(in, guard);
            } else {
                if constexpr (decltype(insitu)::value) reader.Parse<kInsituRecursiveFlags>(in, guard);
                else reader.Parse<kRecursiveFlags>(in, guard);
            }
            return !reader.HasParseError();
        };
        auto outcome = [&](auto& guard) -> std::optional<JsonError> {
            if (!reader.HasParseError()) {
                result.end = in.Tell();
                result.defects = std::move(guard.defects());
                return std::nullopt;
            }
            doc.SetNull();
            if (reader.GetParseErrorCode() == rapidjson::kParseErrorTermination && guard.needs_iterative()) {
                attempt.needs_iterative = true;
                return JsonError{};
            }
            if (reader.GetParseErrorCode() == rapidjson::kParseErrorTermination && guard.error())
                return std::move(guard.error());
            if (reader.GetParseErrorCode() == rapidjson::kParseErrorNumberTooBig) {
                attempt.number_too_big = true;
                attempt.offset = reader.GetErrorOffset();
            }
            return reader_error(text, reader.GetParseErrorCode(), reader.GetErrorOffset(), guard.path());
        };
        if (!build) {  // only the errors count: the events go nowhere
            rapidjson::BaseReaderHandler<> sink;
            Guard<rapidjson::BaseReaderHandler<>, Stream> guard(text, in, options, patched);
            guard.attach(sink);
            parse(guard);
            return outcome(guard);
        }
        Guard<rapidjson::Document, Stream> guard(text, in, options, patched);
        auto generate = [&](rapidjson::Document& d) {
            guard.attach(d);
            return parse(guard);
        };
        doc.SetNull();
        doc.Populate(generate);
        return outcome(guard);
    };
    // A fresh copy for every attempt in place: a parse in place overwrites what it has read.
    auto fresh_copy = [&] {
        std::memcpy(options.insitu, text.data(), text.size());
        options.insitu[text.size()] = '\0';
        return options.insitu;
    };
    auto run = [&](bool build, bool iterative, Attempt& attempt) -> std::optional<JsonError> {
        if (options.insitu && text.data() == bytes.data()) {
            InsituStream in(fresh_copy());
            return run_on(in, std::true_type{}, build, iterative, attempt);
        }
        rapidjson::MemoryStream in(text.data(), text.size());
        return run_on(in, std::false_type{}, build, iterative, attempt);
    };

    // In place, the quick parse first; anything it gives up on is parsed again by the Guard.
    if (options.insitu) {
        rapidjson::InsituStringStream in(fresh_copy());
        for (std::size_t i = 0; i < skip; ++i) in.Take();
        rapidjson::Reader reader;
        auto generate = [&](rapidjson::Document& d) {
            QuickGuard guard(d, options.limits.max_depth);
            return !reader.Parse<kInsituRecursiveFlags>(in, guard).IsError();
        };
        doc.Populate(generate);
        if (!reader.HasParseError()) {
            result.end = in.Tell();
            finish(result);
            return result;
        }
        doc.SetNull();
    }
    Attempt attempt;
    std::optional<JsonError> error = run(true, false, attempt);
    if (error && attempt.needs_iterative) {
        attempt = Attempt{};
        error = run(true, true, attempt);
    }
    if (error && attempt.number_too_big && options.keep_going) {
        // Find every such number with parses that build nothing, then build once.
        copy.assign(bytes);
        text = copy;
        while (error && attempt.number_too_big && patched.size() < kMaxOutOfRangeNumbers) {
            std::size_t len = 0;
            while (attempt.offset + len < copy.size() && is_number_char(copy[attempt.offset + len])) ++len;
            if (len < 4) break;
            patched.emplace(attempt.offset, number_text(copy, attempt.offset));
            copy.replace(attempt.offset, len, "null" + std::string(len - 4, ' '));
            attempt = Attempt{};
            error = run(false, true, attempt);
        }
        if (error && attempt.number_too_big && patched.size() >= kMaxOutOfRangeNumbers) {
            error->message = "more than " + std::to_string(kMaxOutOfRangeNumbers) +
                             " numbers are out of range; the first one left: " + error->message;
        } else if (!error) {
            attempt = Attempt{};
            error = run(true, true, attempt);
        }
    }
    if (error) {
        result.error = std::move(error);
        result.defects.clear();
        result.end = 0;
        return result;
    }
    finish(result);
    return result;
}

}  // namespace calcalert::fhir
