// A small, strict option parser: --name value, --name=value, --flag, and positional arguments.
// Unknown options are errors.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace calcalert::cli {

class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class Options {
public:
    // `with_value`: options that take a value; `flags`: options that do not.
    Options(const std::vector<std::string>& args, const std::set<std::string>& with_value,
            const std::set<std::string>& flags);
    std::optional<std::string> value(const std::string& name) const;
    bool flag(const std::string& name) const { return flags_.count(name) > 0; }
    const std::vector<std::string>& positional() const { return positional_; }
    // Values and flags from elsewhere (a config file, the environment) for the options the command
    // line did not give: the command line wins.
    void fill_from(const std::map<std::string, std::string>& values, const std::set<std::string>& flags);

private:
    std::map<std::string, std::string> values_;
    std::set<std::string> flags_;
    std::vector<std::string> positional_;
};

// `text`, the value of --`option`, as a whole number from `min` to `max`; UsageError otherwise
// ("--page-size must be a whole number from 1 to 1000, not 'x'").
long long whole_number(const std::string& text, const std::string& option, long long min, long long max);

}  // namespace calcalert::cli
