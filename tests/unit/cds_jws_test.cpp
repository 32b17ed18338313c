#include <doctest/doctest.h>

#include "../support/shell.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include "adapters/cds_hooks/auth.hpp"
#include "jose/jws.hpp"
#include "adapters/state/state_store.hpp"
#include "cds_test_support.hpp"

using namespace calcalert;
using namespace calcalert::cds;

namespace {

const std::string kSandboxDir = std::string(CALCALERT_TEST_DIR) + "/../../shared/thirdparty/cds-hooks-sandbox";
const std::string kSandboxAud = "http://127.0.0.1:46501/cds-services/stub-patient-view";
constexpr std::int64_t kSandboxIat = 1795630950;
constexpr std::int64_t kSandboxExp = 1795631250;

std::string trimmed(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    return s;
}

ServeConfig sandbox_config() {
    ServeConfig c;
    c.issuers.push_back({"https://sandbox.cds-hooks.org", kSandboxDir + "/jwks.json", {}});
    return c;
}

}  // namespace

TEST_CASE("base64url is strict and round-trips") {
    for (const std::string& s : std::vector<std::string>{"", "f", "fo", "foo", "foob", "fooba", "foobar", std::string("\xff\xfe\x00\x01", 4)})
        CHECK(jose::base64url_decode(jose::base64url_encode(s)) == s);
    CHECK(jose::base64url_encode("\xfb\xff") == "-_8");
    CHECK_FALSE(jose::base64url_decode("ab+c").has_value());  // standard alphabet
    CHECK_FALSE(jose::base64url_decode("abc=").has_value());  // padding
    CHECK_FALSE(jose::base64url_decode("a").has_value());
    CHECK_FALSE(jose::base64url_decode("-_9").has_value());   // non-zero leftover bits
}

TEST_CASE("ES384 and RS384 signatures made here verify; a changed byte or the other algorithm does not") {
    const jose::PrivateKey ec = jose::generate_es384_key("ec-1");
    const jose::PrivateKey rsa = jose::generate_rs384_key("rsa-1");
    const auto keys = jose::parse_jwks(cdstest::jwks_of({&ec, &rsa}));
    REQUIRE(keys.size() == 2);
    CHECK(keys[0].kty == "EC");
    CHECK(keys[1].kty == "RSA");
    for (const auto* k : {&ec, &rsa}) {
        const std::string token = jose::sign_compact_jws("{\"alg\":\"" + k->alg + "\"}", "{\"a\":1}", *k);
        const auto dot = token.rfind('.');
        const auto sig = jose::base64url_decode(token.substr(dot + 1));
        REQUIRE(sig.has_value());
        if (k->alg == "ES384") CHECK(sig->size() == 96);
        const jose::PublicKey& pub = k == &ec ? keys[0] : keys[1];
        const jose::PublicKey& other = k == &ec ? keys[1] : keys[0];
        CHECK(jose::verify_signature(pub, k->alg, token.substr(0, dot), *sig));
        CHECK_FALSE(jose::verify_signature(other, k->alg, token.substr(0, dot), *sig));
        CHECK_FALSE(jose::verify_signature(pub, k->alg == "ES384" ? "RS384" : "ES384", token.substr(0, dot), *sig));
        CHECK_FALSE(jose::verify_signature(pub, "HS384", token.substr(0, dot), *sig));
        std::string bad = *sig;
        bad[10] = static_cast<char>(bad[10] ^ 1);
        CHECK_FALSE(jose::verify_signature(pub, k->alg, token.substr(0, dot), bad));
        CHECK_FALSE(jose::verify_signature(pub, k->alg, token.substr(0, dot) + "x", *sig));
    }
}

TEST_CASE("JWK Sets: malformed keys are errors naming the key; foreign key types are skipped") {
    CHECK_THROWS_AS(jose::parse_jwks("[]"), jose::JwkError);
    CHECK_THROWS_AS(jose::parse_jwks("{\"keys\":{}}"), jose::JwkError);
    CHECK_THROWS_WITH_AS(jose::parse_jwks(R"({"keys":[{"kty":"EC","crv":"P-384","kid":"k","x":"AAAA","y":"AAAA"}]})"),
                         doctest::Contains("kid k"), jose::JwkError);
    CHECK_THROWS_AS(jose::parse_jwks(R"({"keys":[{"kty":"RSA","kid":"r","n":"!!","e":"AQAB"}]})"), jose::JwkError);
    CHECK(jose::parse_jwks(R"({"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"},{"kty":"EC","crv":"P-256","kid":"p"}]})").empty());
    const jose::PrivateKey small = jose::generate_rs384_key("small", 1024);
    const auto keys = jose::parse_jwks(cdstest::jwks_of({&small}));
    REQUIRE(keys.size() == 1);
    CHECK_FALSE(keys[0].usable_for("RS384"));  // under 2048 bits
}

TEST_CASE("the public CDS Hooks sandbox token verifies inside its window only") {
    if (!std::filesystem::is_directory(kSandboxDir)) {  // third-party data beside the checkout, not in it
        std::printf("SKIP: ../shared/thirdparty/cds-hooks-sandbox not found: the CDS Hooks sandbox token test is skipped\n");
        return;
    }
    const std::string token = trimmed(cdstest::read_file(kSandboxDir + "/patient-view-token.jwt"));
    auto store = state::open_sqlite_store(":memory:");
    ServeConfig config = sandbox_config();
    config.clock_skew_seconds = 30;
    int fetches = 0;
    JwtVerifier v(config, *store, [&fetches](const std::string&) -> std::optional<std::string> {
        ++fetches;
        return std::nullopt;
    });

    SUBCASE("valid, once") {
        const AuthResult r = v.verify(token, kSandboxAud, kSandboxIat + 10);
        CHECK_MESSAGE(r.ok, r.reason);
        CHECK(r.iss == "https://sandbox.cds-hooks.org");
        const AuthResult again = v.verify(token, kSandboxAud, kSandboxIat + 20);
        CHECK_FALSE(again.ok);
        CHECK(again.reason == "replayed jti");
        CHECK(fetches == 0);  // the key comes from the file; the jku is not fetched
    }
    SUBCASE("one signature byte changed") {
        const AuthResult r = v.verify(cdstest::tamper_signature(token), kSandboxAud, kSandboxIat + 10);
        CHECK_FALSE(r.ok);
        CHECK(r.reason.find("signature") != std::string::npos);
    }
    SUBCASE("another aud") {
        const AuthResult r = v.verify(token, "http://127.0.0.1:46501/cds-services/other", kSandboxIat + 10);
        CHECK_FALSE(r.ok);
        CHECK(r.reason.find("aud") != std::string::npos);
    }
    SUBCASE("after exp (beyond the skew)") {
        const AuthResult r = v.verify(token, kSandboxAud, kSandboxExp + 31);
        CHECK_FALSE(r.ok);
        CHECK(r.reason == "expired");
    }
    SUBCASE("before iat (beyond the skew)") {
        CHECK_FALSE(v.verify(token, kSandboxAud, kSandboxIat - 31).ok);
    }
    SUBCASE("an issuer that is not configured") {
        ServeConfig other;
        other.issuers.push_back({"https://ehr.example.org", kSandboxDir + "/jwks.json", {}});
        JwtVerifier v2(other, *store, nullptr);
        CHECK(v2.verify(token, kSandboxAud, kSandboxIat + 10).reason.find("issuer not allowed") == 0);
    }
}

TEST_CASE("JWT checks: alg, typ, kid, lifetime, jku allow-list and cache") {
    const jose::PrivateKey ec = jose::generate_es384_key("ec-1");
    const jose::PrivateKey rsa = jose::generate_rs384_key("rsa-1");
    const test::TempDir tmp("cds-jws-test");
    const auto& dir = tmp.path;
    {
        std::ofstream(dir / "jwks.json") << cdstest::jwks_of({&ec});
    }
    const std::string jku = "https://keys.example.org/jwks.json";
    ServeConfig config;
    config.issuers.push_back({"https://ehr.example.org", (dir / "jwks.json").string(), {jku}});
    config.clock_skew_seconds = 30;
    auto store = state::open_sqlite_store(":memory:");
    int fetches = 0;
    const std::string served = cdstest::jwks_of({&rsa});
    JwtVerifier v(config, *store, [&](const std::string& url) -> std::optional<std::string> {
        ++fetches;
        if (url == jku) return served;
        return std::nullopt;
    });
    const std::int64_t now = 2000000000;
    const std::string aud = "https://cds.example.org/cds-services/calcalert-patient-view";
    int n = 0;
    auto claims = [&] {
        cdstest::Claims c;
        c.aud = aud;
        c.iat = now;
        c.exp = now + 300;
        c.jti = "jti-" + std::to_string(++n);
        return c;
    };

    CHECK(v.verify(cdstest::sign(ec, claims()), aud, now).ok);
    {
        auto c = claims();
        c.jku = jku;
        CHECK(v.verify(cdstest::sign(rsa, c), aud, now).ok);  // RS384 key from the allow-listed jku
        c.jti = "again-" + c.jti;
        CHECK(v.verify(cdstest::sign(rsa, c), aud, now + 5).ok);
        CHECK(fetches == 1);  // cached
    }
    {
        auto c = claims();
        c.jku = "https://evil.example.org/jwks.json";
        CHECK(v.verify(cdstest::sign(rsa, c), aud, now).reason.find("jku not on") == 0);
    }
    CHECK(v.verify(cdstest::unsigned_token("ec-1", claims()), aud, now).reason.find("unsigned") == 0);
    {
        auto c = claims();
        const std::string hs = jose::base64url_encode(cdstest::header_json("HS256", "ec-1", c)) + "." +
                               jose::base64url_encode(cdstest::payload_json(c)) + "." + jose::base64url_encode("0123456789abcdef0123456789abcdef");
        CHECK(v.verify(hs, aud, now).reason.find("alg not allowed") == 0);
    }
    {
        auto c = claims();
        c.typ = "at+jwt";
        CHECK_FALSE(v.verify(cdstest::sign(ec, c), aud, now).ok);
    }
    {
        auto c = claims();
        c.exp = now + 3600;  // longer than max_token_lifetime_seconds
        CHECK(v.verify(cdstest::sign(ec, c), aud, now).reason == "lifetime too long");
    }
    {
        const jose::PrivateKey stranger = jose::generate_es384_key("stranger");
        CHECK(v.verify(cdstest::sign(stranger, claims()), aud, now).reason.find("unknown kid") == 0);
        const jose::PrivateKey impostor = jose::generate_es384_key("ec-1");  // a known kid, another key
        CHECK(v.verify(cdstest::sign(impostor, claims()), aud, now).reason.find("signature") == 0);
    }
    {
        auto c = claims();
        c.jti = "";
        CHECK(v.verify(cdstest::sign(ec, c), aud, now).reason == "no jti");
    }
    CHECK_FALSE(v.verify("not-a-jwt", aud, now).ok);
    CHECK_FALSE(v.verify("a.b", aud, now).ok);
    CHECK_FALSE(v.verify("%%%.%%%.%%%", aud, now).ok);
}

// Time claims are untrusted int64 values. iat = INT64_MIN with a far exp once passed the
// lifetime check through signed overflow (exp - iat) and could be replayed; every such token is now a
// 401 with a reason, checked without overflow (this test also runs under UBSan).
TEST_CASE("JWT time claims: negative, extreme, reversed and nbf values are refused without overflow") {
    const jose::PrivateKey ec = jose::generate_es384_key("ec-t");
    const test::TempDir tmp("cds-jws-time-test");
    const auto& dir = tmp.path;
    {
        std::ofstream(dir / "jwks.json") << cdstest::jwks_of({&ec});
    }
    ServeConfig config;
    config.issuers.push_back({"https://ehr.example.org", (dir / "jwks.json").string(), {}});
    config.clock_skew_seconds = 30;
    auto store = state::open_sqlite_store(":memory:");
    JwtVerifier v(config, *store, nullptr);
    const std::int64_t now = 2000000000;
    const std::string aud = "https://cds.example.org/cds-services/calcalert-order-sign";
    constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
    constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
    constexpr std::int64_t kYear = 366 * 86400;
    int n = 0;
    // The time members are written as given (numbers or any JSON text), so that each can be odd.
    auto token = [&](const std::string& times) {
        const std::string payload = "{\"iss\":\"https://ehr.example.org\",\"sub\":\"client-1\",\"aud\":\"" + aud +
                                    "\"," + times + ",\"jti\":\"t-" + std::to_string(++n) + "\"}";
        return jose::sign_compact_jws("{\"alg\":\"ES384\",\"typ\":\"JWT\",\"kid\":\"ec-t\"}", payload, ec);
    };
    auto times = [](std::int64_t iat, std::int64_t exp) {
        return "\"iat\":" + std::to_string(iat) + ",\"exp\":" + std::to_string(exp);
    };
    auto reason = [&](const std::string& t) {
        const AuthResult r = v.verify(token(t), aud, now);
        CHECK_FALSE(r.ok);
        return r.reason;
    };

    // The control: a plain token passes, and so does one with a past nbf.
    CHECK(v.verify(token(times(now, now + 300)), aud, now).ok);
    CHECK(v.verify(token(times(now, now + 300) + ",\"nbf\":" + std::to_string(now - 10)), aud, now).ok);

    CHECK(reason(times(kMin, now + 300)) == "iat is negative");
    CHECK(reason(times(kMin, kMax)) == "iat is negative");
    CHECK(reason(times(kMin, kMin)) == "iat is negative");
    CHECK(reason(times(-1, now + 300)) == "iat is negative");
    CHECK(reason(times(now, kMax)) == "exp is more than 10 years from now");
    CHECK(reason(times(now, kMin)) == "exp is negative");
    CHECK(reason(times(now, -1)) == "exp is negative");
    CHECK(reason(times(kMax, kMax)) == "iat is more than 10 years from now");
    CHECK(reason(times(kMax - 100, kMax)) == "iat is more than 10 years from now");
    CHECK(reason(times(now - 11 * kYear, now + 300)) == "iat is more than 10 years from now");
    CHECK(reason(times(now, now + 11 * kYear)) == "exp is more than 10 years from now");
    CHECK(reason(times(0, now + 300)) == "iat is more than 10 years from now");
    CHECK(reason(times(now, now - 10)) == "exp is not after iat");
    CHECK(reason(times(now, now)) == "exp is not after iat");
    CHECK(reason(times(now - 5 * kYear, now + 5 * kYear)) == "lifetime too long");
    CHECK(reason(times(now - 1000, now - 700)) == "expired");
    CHECK(reason(times(now + 100, now + 200)) == "issued in the future");
    // Numbers that are not int64 values.
    CHECK(reason("\"iat\":-1.5e18,\"exp\":" + std::to_string(now + 300)) == "iat is negative");
    CHECK(reason("\"iat\":1e300,\"exp\":" + std::to_string(now + 300)) == "exp and iat are required");
    CHECK(reason("\"iat\":18446744073709551615,\"exp\":" + std::to_string(now + 300)) == "exp and iat are required");
    CHECK(reason("\"iat\":\"" + std::to_string(now) + "\",\"exp\":" + std::to_string(now + 300)) ==
          "exp and iat are required");
    // nbf, optional, checked as strictly as iat and exp.
    CHECK(reason(times(now, now + 300) + ",\"nbf\":" + std::to_string(kMin)) == "nbf is negative");
    CHECK(reason(times(now, now + 300) + ",\"nbf\":" + std::to_string(kMax)) == "nbf is more than 10 years from now");
    CHECK(reason(times(now, now + 300) + ",\"nbf\":\"soon\"") == "nbf is not a number of seconds");
    CHECK(reason(times(now, now + 300) + ",\"nbf\":" + std::to_string(now + 120)) == "not yet valid (nbf)");

    // iat INT64_MIN with a far exp (once accepted through signed overflow): refused every time, and never remembered.
    const std::string replay = token(times(kMin, now + 9 * kYear));
    for (int i = 0; i < 3; ++i) CHECK(v.verify(replay, aud, now + i).reason == "iat is negative");
}
