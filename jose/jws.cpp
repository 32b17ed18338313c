#include "jose/jws.hpp"

#include <array>
#include <cstdio>
#include <cstring>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/rsa.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "fhir/json_parse.hpp"

namespace calcalert::jose {
namespace {

constexpr std::size_t kP384Bytes = 48;

struct BnFree {
    void operator()(BIGNUM* b) const { BN_free(b); }
};
using BnPtr = std::unique_ptr<BIGNUM, BnFree>;
struct CtxFree {
    void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, CtxFree>;
struct MdCtxFree {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;
struct SigFree {
    void operator()(ECDSA_SIG* s) const { ECDSA_SIG_free(s); }
};
using SigPtr = std::unique_ptr<ECDSA_SIG, SigFree>;
struct ParamBldFree {
    void operator()(OSSL_PARAM_BLD* b) const { OSSL_PARAM_BLD_free(b); }
};
struct ParamFree {
    void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};

PkeyPtr wrap(EVP_PKEY* p) { return PkeyPtr(p, EVP_PKEY_free); }

BnPtr bn_from(std::string_view bytes) {
    return BnPtr(BN_bin2bn(reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()), nullptr));
}

std::string bn_bytes(const BIGNUM* bn, int pad) {
    const int n = pad > 0 ? pad : BN_num_bytes(bn);
    std::string out(static_cast<std::size_t>(n), '\0');
    if (pad > 0)
        BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), n);
    else
        BN_bn2bin(bn, reinterpret_cast<unsigned char*>(out.data()));
    return out;
}

PkeyPtr pkey_fromdata(const char* type, OSSL_PARAM* params) {
    PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
    EVP_PKEY* key = nullptr;
    if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
        EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        return nullptr;
    return wrap(key);
}

PkeyPtr ec_p384_key(std::string_view x, std::string_view y) {
    if (x.size() != kP384Bytes || y.size() != kP384Bytes) return nullptr;
    std::string point;
    point.reserve(1 + 2 * kP384Bytes);
    point.push_back('\x04');
    point.append(x);
    point.append(y);
    std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
    if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "P-384", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()))
        return nullptr;
    std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld.get()));
    if (!params) return nullptr;
    PkeyPtr key = pkey_fromdata("EC", params.get());
    if (!key) return nullptr;
    // The point must lie on the curve.
    PkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
    if (!check || EVP_PKEY_public_check(check.get()) != 1) return nullptr;
    return key;
}

PkeyPtr rsa_key(std::string_view n, std::string_view e) {
    BnPtr bn_n = bn_from(n), bn_e = bn_from(e);
    if (!bn_n || !bn_e) return nullptr;
    std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
    if (!bld || !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) ||
        !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()))
        return nullptr;
    std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld.get()));
    if (!params) return nullptr;
    return pkey_fromdata("RSA", params.get());
}

std::string string_field(const rapidjson::Value& o, const char* name) {
    auto it = o.FindMember(name);
    if (it == o.MemberEnd() || !it->value.IsString()) return {};
    return std::string(it->value.GetString(), it->value.GetStringLength());
}

bool digest_verify(EVP_PKEY* key, std::string_view input, const unsigned char* sig, std::size_t sig_len) {
    MdCtxPtr ctx(EVP_MD_CTX_new());
    if (!ctx) return false;
    EVP_PKEY_CTX* pctx = nullptr;
    if (EVP_DigestVerifyInit(ctx.get(), &pctx, EVP_sha384(), nullptr, key) != 1) return false;
    if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)
        return false;
    return EVP_DigestVerify(ctx.get(), sig, sig_len, reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1;
}

}  // namespace

std::string base64url_encode(std::string_view bytes) {
    static const char* const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                           static_cast<unsigned char>(bytes[i + 2]);
        out.push_back(alphabet[(v >> 18) & 63]);
        out.push_back(alphabet[(v >> 12) & 63]);
        out.push_back(alphabet[(v >> 6) & 63]);
        out.push_back(alphabet[v & 63]);
    }
    const std::size_t rest = bytes.size() - i;
    if (rest == 1) {
        const unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
        out.push_back(alphabet[(v >> 18) & 63]);
        out.push_back(alphabet[(v >> 12) & 63]);
    } else if (rest == 2) {
        const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8);
        out.push_back(alphabet[(v >> 18) & 63]);
        out.push_back(alphabet[(v >> 12) & 63]);
        out.push_back(alphabet[(v >> 6) & 63]);
    }
    return out;
}

std::optional<std::string> base64url_decode(std::string_view text) {
    auto value = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '-') return 62;
        if (c == '_') return 63;
        return -1;
    };
    if (text.size() % 4 == 1) return std::nullopt;
    std::string out;
    out.reserve(text.size() * 3 / 4);
    unsigned acc = 0;
    int bits = 0;
    for (char c : text) {
        const int v = value(c);
        if (v < 0) return std::nullopt;
        acc = (acc << 6) | static_cast<unsigned>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((acc >> bits) & 0xFF));
        }
    }
    // Leftover bits must be zero (canonical encoding).
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return std::nullopt;
    return out;
}

bool PublicKey::usable_for(std::string_view a) const {
    if (!pkey) return false;
    if (!alg.empty() && alg != a) return false;
    if (a == "ES384") return kty == "EC";  // parse_jwks only builds P-384 EC keys
    if (a == "RS384") return kty == "RSA" && EVP_PKEY_get_bits(pkey.get()) >= 2048;
    return false;
}

std::vector<PublicKey> parse_jwks(std::string_view json) {
    rapidjson::Document doc;
    fhir::JsonLimits limits;
    limits.max_bytes = 256 * 1024;  // as much as a jku fetch may bring
    if (const auto parsed = fhir::parse_untrusted_json(doc, json, limits); !parsed)
        throw JwkError("the JWK Set is not acceptable JSON: " + parsed.error->describe());
    if (!doc.IsObject()) throw JwkError("the JWK Set is not a JSON object");
    auto keys = doc.FindMember("keys");
    if (keys == doc.MemberEnd() || !keys->value.IsArray()) throw JwkError("the JWK Set has no \"keys\" array");
    std::vector<PublicKey> out;
    rapidjson::SizeType index = 0;
    for (const auto& k : keys->value.GetArray()) {
        const std::string where = "keys[" + std::to_string(index++) + "]";
        if (!k.IsObject()) throw JwkError(where + " is not an object");
        PublicKey key;
        key.kid = string_field(k, "kid");
        key.kty = string_field(k, "kty");
        key.alg = string_field(k, "alg");
        const std::string use = string_field(k, "use");
        if (key.kid.empty() || (!use.empty() && use != "sig")) continue;
        if (key.kty == "EC") {
            if (string_field(k, "crv") != "P-384") continue;
            auto x = base64url_decode(string_field(k, "x"));
            auto y = base64url_decode(string_field(k, "y"));
            if (!x || !y) throw JwkError(where + " (kid " + key.kid + "): x or y is not base64url");
            key.pkey = ec_p384_key(*x, *y);
            if (!key.pkey) throw JwkError(where + " (kid " + key.kid + "): not a point on P-384");
        } else if (key.kty == "RSA") {
            auto n = base64url_decode(string_field(k, "n"));
            auto e = base64url_decode(string_field(k, "e"));
            if (!n || !e || n->empty() || e->empty()) throw JwkError(where + " (kid " + key.kid + "): n or e is not base64url");
            key.pkey = rsa_key(*n, *e);
            if (!key.pkey) throw JwkError(where + " (kid " + key.kid + "): not a valid RSA public key");
        } else {
            continue;
        }
        out.push_back(std::move(key));
    }
    return out;
}

bool verify_signature(const PublicKey& key, std::string_view alg, std::string_view input, std::string_view sig) {
    if (!key.usable_for(alg)) return false;
    if (alg == "RS384")
        return digest_verify(key.pkey.get(), input, reinterpret_cast<const unsigned char*>(sig.data()), sig.size());
    if (alg != "ES384" || sig.size() != 2 * kP384Bytes) return false;
    SigPtr ecsig(ECDSA_SIG_new());
    BnPtr r = bn_from(sig.substr(0, kP384Bytes)), s = bn_from(sig.substr(kP384Bytes));
    if (!ecsig || !r || !s || ECDSA_SIG_set0(ecsig.get(), r.get(), s.get()) != 1) return false;
    r.release();  // owned by ecsig now
    s.release();
    unsigned char* der = nullptr;
    const int der_len = i2d_ECDSA_SIG(ecsig.get(), &der);
    if (der_len <= 0) return false;
    const bool ok = digest_verify(key.pkey.get(), input, der, static_cast<std::size_t>(der_len));
    OPENSSL_free(der);
    return ok;
}

PrivateKey generate_es384_key(std::string kid) {
    EVP_PKEY* k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
    if (!k) throw JwkError("could not generate a P-384 key");
    return PrivateKey{std::move(kid), "ES384", wrap(k)};
}

PrivateKey generate_rs384_key(std::string kid, int bits) {
    EVP_PKEY* k = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(bits));
    if (!k) throw JwkError("could not generate an RSA key");
    return PrivateKey{std::move(kid), "RS384", wrap(k)};
}

PrivateKey load_private_key_pem(const std::string& path, std::string kid) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!f) throw JwkError(path + ": cannot open the private key file");
    EVP_PKEY* k = PEM_read_PrivateKey(f.get(), nullptr, nullptr, nullptr);
    if (!k) throw JwkError(path + ": not an unencrypted PEM private key");
    PrivateKey key{std::move(kid), "", wrap(k)};
    if (EVP_PKEY_is_a(k, "EC")) {
        char group[64] = {};
        std::size_t len = 0;
        if (EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &len) != 1 ||
            (std::string(group) != "secp384r1" && std::string(group) != "P-384"))
            throw JwkError(path + ": an EC key on " + std::string(group) + "; ES384 needs P-384");
        key.alg = "ES384";
    } else if (EVP_PKEY_is_a(k, "RSA")) {
        if (EVP_PKEY_get_bits(k) < 2048)
            throw JwkError(path + ": an RSA key of " + std::to_string(EVP_PKEY_get_bits(k)) + " bits; RS384 needs 2048 or more");
        key.alg = "RS384";
    } else {
        throw JwkError(path + ": neither an EC P-384 nor an RSA key");
    }
    return key;
}

std::string private_key_pem(const PrivateKey& key) {
    std::unique_ptr<BIO, int (*)(BIO*)> bio(BIO_new(BIO_s_mem()), &BIO_free);
    if (!bio || PEM_write_bio_PrivateKey(bio.get(), key.pkey.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1)
        throw JwkError("cannot write the private key as PEM");
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(n));
}

std::string jwk_thumbprint(const PrivateKey& key) {
    // RFC 7638: the required members only, in lexicographic order, no whitespace.
    rapidjson::Document d;
    const std::string jwk = public_jwk_json(key);
    d.Parse(jwk.c_str(), jwk.size());
    std::string canonical;
    auto member = [&](const char* name) { return std::string("\"") + name + "\":\"" + d[name].GetString() + "\""; };
    if (key.alg == "ES384") canonical = "{" + member("crv") + "," + member("kty") + "," + member("x") + "," + member("y") + "}";
    else canonical = "{" + member("e") + "," + member("kty") + "," + member("n") + "}";
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(canonical.data()), canonical.size(), digest);
    return base64url_encode(std::string_view(reinterpret_cast<const char*>(digest), sizeof digest));
}

std::string public_jwk_json(const PrivateKey& key) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    auto bn_param = [&](const char* name) {
        BIGNUM* bn = nullptr;
        if (EVP_PKEY_get_bn_param(key.pkey.get(), name, &bn) != 1) throw JwkError("cannot export the public key");
        BnPtr owned(bn);
        return owned;
    };
    w.StartObject();
    w.Key("kid");
    w.String(key.kid);
    w.Key("alg");
    w.String(key.alg);
    w.Key("use");
    w.String("sig");
    if (key.alg == "ES384") {
        w.Key("kty");
        w.String("EC");
        w.Key("crv");
        w.String("P-384");
        w.Key("x");
        w.String(base64url_encode(bn_bytes(bn_param(OSSL_PKEY_PARAM_EC_PUB_X).get(), kP384Bytes)));
        w.Key("y");
        w.String(base64url_encode(bn_bytes(bn_param(OSSL_PKEY_PARAM_EC_PUB_Y).get(), kP384Bytes)));
    } else {
        w.Key("kty");
        w.String("RSA");
        w.Key("n");
        w.String(base64url_encode(bn_bytes(bn_param(OSSL_PKEY_PARAM_RSA_N).get(), 0)));
        w.Key("e");
        w.String(base64url_encode(bn_bytes(bn_param(OSSL_PKEY_PARAM_RSA_E).get(), 0)));
    }
    w.EndObject();
    return sb.GetString();
}

std::string sign_compact_jws(const std::string& header_json, const std::string& payload_json, const PrivateKey& key) {
    const std::string input = base64url_encode(header_json) + "." + base64url_encode(payload_json);
    MdCtxPtr ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;
    if (!ctx || EVP_DigestSignInit(ctx.get(), &pctx, EVP_sha384(), nullptr, key.pkey.get()) != 1)
        throw JwkError("cannot start signing");
    std::size_t len = 0;
    const auto* in = reinterpret_cast<const unsigned char*>(input.data());
    if (EVP_DigestSign(ctx.get(), nullptr, &len, in, input.size()) != 1) throw JwkError("cannot sign");
    std::string sig(len, '\0');
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, in, input.size()) != 1)
        throw JwkError("cannot sign");
    sig.resize(len);
    if (key.alg == "ES384") {
        const unsigned char* p = reinterpret_cast<const unsigned char*>(sig.data());
        SigPtr ecsig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size())));
        if (!ecsig) throw JwkError("cannot decode the ECDSA signature");
        sig = bn_bytes(ECDSA_SIG_get0_r(ecsig.get()), kP384Bytes) + bn_bytes(ECDSA_SIG_get0_s(ecsig.get()), kP384Bytes);
    }
    return input + "." + base64url_encode(sig);
}

}  // namespace calcalert::jose
