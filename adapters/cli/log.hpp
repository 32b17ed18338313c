// JSON log lines on stderr: {"ts":"...","level":"info","event":"poll.finished",...}. Never pass a
// secret (token, JWT) as a field.
#pragma once

#include <chrono>
#include <initializer_list>
#include <ostream>
#include <string>
#include <utility>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "fhir/datetime.hpp"

namespace calcalert::cli {

inline void log_json(std::ostream& err, const char* level, const char* event,
                     std::initializer_list<std::pair<const char*, std::string>> fields = {},
                     const std::string& raw_json_field_name = "", const std::string& raw_json = "") {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.StartObject();
    w.Key("ts");
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    w.String(fhir::format_datetime(now).c_str());
    w.Key("level");
    w.String(level);
    w.Key("event");
    w.String(event);
    for (const auto& [k, v] : fields) {
        w.Key(k);
        w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
    }
    if (!raw_json_field_name.empty()) {
        w.Key(raw_json_field_name.c_str());
        w.RawValue(raw_json.c_str(), raw_json.size(), rapidjson::kObjectType);
    }
    w.EndObject();
    err << sb.GetString() << "\n";
    err.flush();
}

}  // namespace calcalert::cli
