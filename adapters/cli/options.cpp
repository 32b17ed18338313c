#include "adapters/cli/options.hpp"

#include <cerrno>
#include <cstdlib>

namespace calcalert::cli {

Options::Options(const std::vector<std::string>& args, const std::set<std::string>& with_value,
                 const std::set<std::string>& flags) {
    bool only_positional = false;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (only_positional || a == "-" || a.rfind("--", 0) != 0) {
            if (!only_positional && a.size() > 1 && a[0] == '-' && a != "-")
                throw UsageError("unknown option '" + a + "'");
            positional_.push_back(a);
            continue;
        }
        if (a == "--") {
            only_positional = true;
            continue;
        }
        std::string name = a.substr(2), val;
        bool has_inline = false;
        if (auto eq = name.find('='); eq != std::string::npos) {
            val = name.substr(eq + 1);
            name = name.substr(0, eq);
            has_inline = true;
        }
        if (with_value.count(name)) {
            if (!has_inline) {
                if (i + 1 >= args.size()) throw UsageError("option --" + name + " needs a value");
                val = args[++i];
            }
            if (values_.count(name)) throw UsageError("option --" + name + " given twice");
            values_[name] = val;
        } else if (flags.count(name)) {
            if (has_inline) throw UsageError("option --" + name + " takes no value");
            flags_.insert(name);
        } else {
            throw UsageError("unknown option '--" + name + "'");
        }
    }
}

void Options::fill_from(const std::map<std::string, std::string>& values, const std::set<std::string>& flags) {
    for (const auto& [name, v] : values) values_.emplace(name, v);  // emplace keeps what is there
    flags_.insert(flags.begin(), flags.end());
}

std::optional<std::string> Options::value(const std::string& name) const {
    auto it = values_.find(name);
    if (it == values_.end()) return std::nullopt;
    return it->second;
}

long long whole_number(const std::string& text, const std::string& option, long long min, long long max) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (end == text.c_str() || *end != '\0' || errno == ERANGE || v < min || v > max)
        throw UsageError("--" + option + " must be a whole number from " + std::to_string(min) + " to " +
                         std::to_string(max) + ", not '" + text + "'");
    return v;
}

}  // namespace calcalert::cli
