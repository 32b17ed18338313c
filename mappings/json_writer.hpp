// Writing FHIR JSON with RapidJSON's SAX writer: the writer type and the two calls every writer makes.
#pragma once

#include <string_view>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace calcalert::mappings {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

inline void str(JsonWriter& w, std::string_view s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); }

inline void kv(JsonWriter& w, const char* k, std::string_view v) {
    w.Key(k);
    str(w, v);
}

}  // namespace calcalert::mappings
