// Percent-encoding of search parameter values for the poller's FHIR queries.
#pragma once

#include <cctype>
#include <string>
#include <string_view>

namespace calcalert::poll {

// Unreserved characters stay; everything else is %XX. `keep_commas`: ',' stays literal, as the
// separator of a FHIR search value list ("code=a,b" means a OR b).
inline std::string url_encode(std::string_view s, bool keep_commas = false) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size());
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_commas && c == ',')) {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += kHex[c >> 4];
            out += kHex[c & 15];
        }
    }
    return out;
}

}  // namespace calcalert::poll
