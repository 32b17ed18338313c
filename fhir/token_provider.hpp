// Where the FHIR client's bearer token comes from: a fixed token, a token file (re-read when the
// server refuses the token it held, so a rotated file is picked up), or SMART Backend Services
// (auth/smart_backend.hpp: a client_credentials grant with a signed assertion, cached until shortly
// before it expires). The client asks for a token before each request and, on a 401, tells the
// provider and retries once with the new token.
#pragma once

#include <memory>
#include <mutex>
#include <string>

namespace calcalert::fhir {

class TokenProvider {
public:
    virtual ~TokenProvider() = default;
    // The token to send now ("" for none). May fetch one; throws FhirError when it cannot (kind
    // transport when the token service could not be reached, auth when it refused).
    virtual std::string token() = 0;
    // The server answered 401 to `token`: forget it. True when the next token() may differ (a new
    // grant, a re-read file), so that one retry makes sense; false for a fixed token.
    virtual bool refused(const std::string& token) = 0;
    // What the token is, for messages and `doctor` ("a bearer token from /run/secrets/fhir-token").
    virtual std::string describe() const = 0;
};

std::shared_ptr<TokenProvider> fixed_token(std::string token);
// The first line of the file, trimmed; read at the first token() and again after a refusal.
// FhirError (kind auth) when it cannot be read or is empty.
std::shared_ptr<TokenProvider> token_file(std::string path);

}  // namespace calcalert::fhir
