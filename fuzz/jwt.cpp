// CDS Hooks client authentication: the JWT / JWS parser and verifier (adapters/cds_hooks/auth.*,
// jws.*). Keys are generated once per process: an ES384 key in a JWK Set file (a temporary folder
// removed at exit) for issuer https://ehr.example.org, and an RS384 key served from memory as the
// allow-listed jku of issuer https://jku.example.org (no network). The first byte, mod 4 ('0' to '3'
// in the seeds), chooses:
//   '0': the rest is a compact token, verified as it is;
//   '1' / '2': the rest is "<header JSON>\n<payload JSON>", signed with the ES384 / RS384 key and
//             verified, so that the claim checks (alg, kid, iss, aud, exp/iat/nbf, jti) are reached;
//   '3': the rest is a JWK Set, parsed (JwkError is the expected refusal) and each key it yields
//        tried on a signature.
// Each input gets an empty state store (jti replay; fuzz::with_scratch_state) and a fresh verifier.
// A refused token is an AuthResult with a reason, never an exception: any exception but JwkError
// from parse_jwks is a finding.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "adapters/cds_hooks/auth.hpp"
#include "jose/jws.hpp"
#include "adapters/state/state_store.hpp"
#include "fuzz_support.hpp"

using namespace calcalert;

namespace {

const std::string kAudience = "https://cds.example.org/cds-services/calcalert-patient-view";
const std::string kJku = "https://keys.example.org/jwks.json";

struct Keys {
    jose::PrivateKey ec = jose::generate_es384_key("fuzz-ec");
    jose::PrivateKey rsa = jose::generate_rs384_key("fuzz-rsa");
    std::string rsa_jwks = "{\"keys\":[" + jose::public_jwk_json(rsa) + "]}";
    fuzz::TempDir dir{"calcalert-fuzz-jwt-"};
    cds::ServeConfig config;
    Keys() {
        const auto file = dir.path() / "jwks.json";
        fuzz::write_file(file, "{\"keys\":[" + jose::public_jwk_json(ec) + "]}");
        config.issuers.push_back({"https://ehr.example.org", file.string(), {}});
        config.issuers.push_back({"https://jku.example.org", "", {kJku}});
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const Keys keys;
    if (size == 0) return 0;
    const int mode = data[0] % 4;
    const std::string_view rest = fuzz::as_text(data + 1, size - 1);

    if (mode == 3) {
        std::vector<jose::PublicKey> parsed;
        try {
            parsed = jose::parse_jwks(rest);
        } catch (const jose::JwkError&) {
            return 0;
        }
        const std::string token = jose::sign_compact_jws("{\"alg\":\"ES384\"}", "{}", keys.ec);
        const auto dot = token.rfind('.');
        const auto signature = jose::base64url_decode(std::string_view(token).substr(dot + 1));
        for (const auto& k : parsed)
            for (const char* alg : {"ES384", "RS384"})
                if (k.usable_for(alg)) (void)jose::verify_signature(k, alg, std::string_view(token).substr(0, dot), *signature);
        return 0;
    }

    std::string token(rest);
    if (mode == 1 || mode == 2) {
        const auto nl = rest.find('\n');
        if (nl == std::string_view::npos) return 0;
        token = jose::sign_compact_jws(std::string(rest.substr(0, nl)), std::string(rest.substr(nl + 1)),
                                      mode == 1 ? keys.ec : keys.rsa);
    }
    fuzz::with_scratch_state([&](state::StateStore& store) {
        cds::JwtVerifier verifier(keys.config, store, [](const std::string& url) -> std::optional<std::string> {
            if (url == kJku) return keys.rsa_jwks;
            return std::nullopt;
        });
        (void)verifier.verify(token, kAudience, fuzz::kNow);
    });
    return 0;
}
