#include "fhir/token_provider.hpp"

#include <fstream>

#include "fhir/client.hpp"

namespace calcalert::fhir {
namespace {

class FixedToken : public TokenProvider {
public:
    explicit FixedToken(std::string token) : token_(std::move(token)) {}
    std::string token() override { return token_; }
    bool refused(const std::string&) override { return false; }
    std::string describe() const override { return token_.empty() ? "no token" : "a fixed bearer token"; }

private:
    std::string token_;
};

class TokenFile : public TokenProvider {
public:
    explicit TokenFile(std::string path) : path_(std::move(path)) {}
    std::string token() override {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!cached_.empty()) return cached_;
        std::ifstream in(path_);
        if (!in) throw FhirError("token file " + path_ + ": cannot open", 0, FhirErrorKind::auth);
        std::string line;
        std::getline(in, line);
        const auto first = line.find_first_not_of(" \t\r");
        const auto last = line.find_last_not_of(" \t\r");
        cached_ = first == std::string::npos ? std::string() : line.substr(first, last - first + 1);
        if (cached_.empty()) throw FhirError("token file " + path_ + ": empty", 0, FhirErrorKind::auth);
        return cached_;
    }
    bool refused(const std::string& token) override {
        std::lock_guard<std::mutex> lock(mutex_);
        if (token == cached_) cached_.clear();
        return true;  // the file may have been rotated meanwhile
    }
    std::string describe() const override { return "a bearer token from " + path_; }

private:
    std::string path_;
    std::mutex mutex_;
    std::string cached_;
};

}  // namespace

std::shared_ptr<TokenProvider> fixed_token(std::string token) { return std::make_shared<FixedToken>(std::move(token)); }
std::shared_ptr<TokenProvider> token_file(std::string path) { return std::make_shared<TokenFile>(std::move(path)); }

}  // namespace calcalert::fhir
