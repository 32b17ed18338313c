// jose: private keys from PEM files (the SMART client key) and their RFC 7638 thumbprints.
#include <doctest/doctest.h>

#include "../support/shell.hpp"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "jose/jws.hpp"

using namespace calcalert;

namespace {


std::string pem_of(EVP_PKEY* k) {
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(bio, k, nullptr, nullptr, 0, nullptr, nullptr);
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    std::string out(data, static_cast<std::size_t>(n));
    BIO_free(bio);
    EVP_PKEY_free(k);
    return out;
}

}  // namespace

TEST_CASE("a PEM private key round-trips; its thumbprint is stable and its own") {
    test::TempDir dir("pem");
    for (auto key : {jose::generate_es384_key(""), jose::generate_rs384_key("", 2048)}) {
        CAPTURE(key.alg);
        const auto file = dir.path / ("key-" + key.alg + ".pem");
        std::ofstream(file) << jose::private_key_pem(key);
        const auto loaded = jose::load_private_key_pem(file.string(), "k");
        CHECK(loaded.alg == key.alg);
        CHECK(jose::jwk_thumbprint(loaded) == jose::jwk_thumbprint(key));
        CHECK(jose::jwk_thumbprint(key).size() == 43);  // base64url of 32 bytes
        // A signature by the loaded key verifies with the original's public JWK.
        const std::string jws = jose::sign_compact_jws(R"({"alg":")" + key.alg + R"("})", R"({"a":1})", loaded);
        const auto keys = jose::parse_jwks("{\"keys\":[" + jose::public_jwk_json(jose::PrivateKey{"k", key.alg, key.pkey}) + "]}");
        REQUIRE(keys.size() == 1);
        const auto dot = jws.rfind('.');
        CHECK(jose::verify_signature(keys[0], key.alg, jws.substr(0, dot), *jose::base64url_decode(jws.substr(dot + 1))));
    }
    CHECK(jose::jwk_thumbprint(jose::generate_es384_key("")) != jose::jwk_thumbprint(jose::generate_es384_key("")));
}

TEST_CASE("keys SMART cannot use are refused with the file's name") {
    test::TempDir dir("pem");
    struct Row {
        const char* name;
        std::string text;
        const char* expected;
    };
    const std::vector<Row> rows = {
        {"p256.pem", pem_of(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")), "ES384 needs P-384"},
        {"rsa1024.pem", pem_of(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(1024))), "RS384 needs 2048 or more"},
        {"ed25519.pem", pem_of(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")), "neither an EC P-384 nor an RSA key"},
        {"text.pem", "not a key\n", "not an unencrypted PEM private key"},
    };
    for (const auto& row : rows) {
        CAPTURE(row.name);
        const auto file = (dir.path / row.name).string();
        std::ofstream(file) << row.text;
        CHECK_THROWS_WITH_AS(jose::load_private_key_pem(file, ""), doctest::Contains(row.expected), jose::JwkError);
        CHECK_THROWS_WITH_AS(jose::load_private_key_pem(file, ""), doctest::Contains(file.c_str()), jose::JwkError);
    }
    CHECK_THROWS_WITH_AS(jose::load_private_key_pem((dir.path / "missing.pem").string(), ""), doctest::Contains("cannot open"),
                         jose::JwkError);
}
