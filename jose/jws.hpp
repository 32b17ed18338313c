// JSON Web Signatures, shared by the CDS Hooks JWT verifier and the SMART Backend Services client
// assertion signer: base64url, JWK Set parsing (EC P-384 and RSA public keys from their JWK x/y and
// n/e into OpenSSL keys), ES384 / RS384 signature verification and signing with OpenSSL directly,
// private keys from PEM files, public JWK export. JWS ES384 signatures are the raw r||s (96 bytes),
// not DER; they are converted here.
#pragma once

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/evp.h>

namespace calcalert::jose {

class JwkError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

std::string base64url_encode(std::string_view bytes);
// Strict: the URL-safe alphabet, no padding, no whitespace; nullopt otherwise.
std::optional<std::string> base64url_decode(std::string_view text);

using PkeyPtr = std::shared_ptr<EVP_PKEY>;

struct PublicKey {
    std::string kid;
    std::string kty;  // "EC" (P-384 only) or "RSA"
    std::string alg;  // the JWK's "alg" when given ("" when absent)
    PkeyPtr pkey;
    // True when this key may verify `alg` (ES384: an EC P-384 key; RS384: an RSA key of 2048 bits or
    // more), and the JWK's own alg, when given, is the same.
    bool usable_for(std::string_view alg) const;
};

// Parses a JWK Set ({"keys": [...]}). Keys of other types or curves, keys with "use" other than
// "sig", and keys without "kid" are skipped; a malformed document or a malformed EC/RSA key is a
// JwkError naming the key.
std::vector<PublicKey> parse_jwks(std::string_view json);

// Verifies a JWS signature (already base64url-decoded) over `signing_input` ("header.payload").
// `alg` must be ES384 or RS384; anything else is false.
bool verify_signature(const PublicKey& key, std::string_view alg, std::string_view signing_input,
                      std::string_view signature);

// --- signing (the SMART client assertion; tests and development clients) ---
struct PrivateKey {
    std::string kid;
    std::string alg;  // ES384 or RS384
    PkeyPtr pkey;
};
PrivateKey generate_es384_key(std::string kid);
PrivateKey generate_rs384_key(std::string kid, int bits = 2048);
// A private key from a PEM file (PKCS#8 "PRIVATE KEY", "EC PRIVATE KEY" or "RSA PRIVATE KEY"; not
// encrypted): an EC P-384 key signs ES384, an RSA key of 2048 bits or more RS384. JwkError naming
// the file for anything else (another curve, a short RSA key, a public key, not PEM).
PrivateKey load_private_key_pem(const std::string& path, std::string kid);
// The key as unencrypted PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----").
std::string private_key_pem(const PrivateKey& key);
// The RFC 7638 thumbprint of the public key (base64url SHA-256), a stable kid.
std::string jwk_thumbprint(const PrivateKey& key);
// The public half as one JWK object (kty, kid, alg, use, and crv/x/y or n/e).
std::string public_jwk_json(const PrivateKey& key);
// header_json and payload_json are JSON object texts; returns header.payload.signature.
std::string sign_compact_jws(const std::string& header_json, const std::string& payload_json, const PrivateKey& key);

}  // namespace calcalert::jose
