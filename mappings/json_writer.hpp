// Writing FHIR JSON with RapidJSON's SAX writer: the writer type and the two calls every writer makes.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace calcalert::mappings {

// True when `s` holds a byte that JSON escapes: '"', '\\' or a control character (below 0x20).
// Eight bytes at a time (the classic "has a byte less than n / equal to c" word tests, which are
// exact for the word as a whole).
inline bool needs_json_escape(const char* s, std::size_t n) {
    constexpr std::uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    auto has_zero = [](std::uint64_t w) { return ((w - ones) & ~w & highs) != 0; };
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        std::uint64_t w;
        std::memcpy(&w, s + i, 8);
        if (((w - ones * 0x20) & ~w & highs) != 0 || has_zero(w ^ (ones * '"')) || has_zero(w ^ (ones * '\\')))
            return true;
    }
    for (; i < n; ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c == '"' || c == '\\') return true;
    }
    return false;
}

// RapidJSON's Writer, whose strings are escaped byte by byte; a string or key with nothing to
// escape (most of what calcalert writes) is copied whole. The bytes written are the same.
class JsonWriter : public rapidjson::Writer<rapidjson::StringBuffer> {
public:
    using Base = rapidjson::Writer<rapidjson::StringBuffer>;
    using Base::Base;

    bool String(const char* s, rapidjson::SizeType n, bool copy = false) {
        if (needs_json_escape(s, n)) return Base::String(s, n, copy);
        Prefix(rapidjson::kStringType);
        char* out = os_->Push(std::size_t{n} + 2);
        out[0] = '"';
        if (n != 0) std::memcpy(out + 1, s, n);
        out[n + 1] = '"';
        return EndValue(true);
    }
    bool String(const char* s) { return String(s, static_cast<rapidjson::SizeType>(std::strlen(s))); }
    bool String(const std::string& s) { return String(s.data(), static_cast<rapidjson::SizeType>(s.size())); }
    bool Key(const char* s, rapidjson::SizeType n, bool copy = false) { return String(s, n, copy); }
    bool Key(const char* s) { return String(s); }
    bool Key(const std::string& s) { return String(s); }
};

inline void str(JsonWriter& w, std::string_view s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); }

inline void kv(JsonWriter& w, const char* k, std::string_view v) {
    w.Key(k);
    str(w, v);
}

}  // namespace calcalert::mappings
