// The explanation page (explain/page.hpp), its guidance data (rules/catalog/guidance.json) and the served
// links' tokens and page cache (adapters/cds_hooks/explain_links.hpp).
#include <doctest/doctest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <Poco/SHA2Engine.h>

#include "../support/shell.hpp"
#include "adapters/cds_hooks/explain_links.hpp"
#include "explain/guidance.hpp"
#include "explain/page.hpp"
#include "jose/jws.hpp"
#include "test_support.hpp"

using namespace calcalert;
using rules::Analyte;

namespace {

const explain::Guidance& guidance() {
    static const auto g = explain::Guidance::load(explain::Guidance::file_of(test::catalog()), test::catalog());
    return g;
}

// ESRD, PTH 450 (above 65), phosphate 7.1 and calcium 10.6 (Ca×P 75.3, above 70): calciphylaxis-risk; an older
// phosphate of 5.0 that did not fire.
rules::PatientFacts risk_patient() {
    rules::PatientFacts p;
    p.patient = "Patient/p1";
    p.labs = {test::lab(Analyte::calcium_total, 10.6, "2026-11-20T08:00:00Z", "Observation/ca"),
              test::lab(Analyte::phosphate, 7.1, "2026-11-20T08:00:00Z", "Observation/p"),
              test::lab(Analyte::phosphate, 5.0, "2026-10-01T08:00:00Z", "Observation/p-old"),
              test::lab(Analyte::pth_intact, 450, "2026-11-10T08:00:00Z", "Observation/pth")};
    p.conditions = {test::dx("esrd", "Condition/esrd")};
    return p;
}

struct Rendered {
    rules::Evaluation eval;
    std::string html;
};

Rendered render(const rules::PatientFacts& p, const std::string& rule) {
    Rendered r;
    r.eval = rules::evaluate(p, test::kNow, test::catalog());
    const rules::Finding* f = nullptr;
    for (const auto& x : r.eval.findings)
        if (x.rule->id == rule) f = &x;
    REQUIRE_MESSAGE(f, "the rule " << rule << " fires");
    explain::PageInput in;
    in.finding = f;
    in.facts = &p;
    in.notes = &r.eval.notes;
    in.catalog = &test::catalog();
    in.guidance = &guidance();
    in.now = test::kNow;
    in.identifier = "id-1";
    r.html = explain::render_page(in);
    return r;
}

std::size_t count(const std::string& s, const std::string& what) {
    std::size_t n = 0;
    for (auto pos = s.find(what); pos != std::string::npos; pos = s.find(what, pos + what.size())) ++n;
    return n;
}

// The <svg> element of the chart of one value.
std::string chart_of(const std::string& html, const std::string& value) {
    const auto start = html.find("<svg class=\"chart\" id=\"chart-" + value + "\"");
    REQUIRE_MESSAGE(start != std::string::npos, "a chart of " << value);
    return html.substr(start, html.find("</svg>", start) - start);
}

std::string collapse_spaces(const std::string& s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const bool nbsp = i + 1 < s.size() && static_cast<unsigned char>(s[i]) == 0xC2 &&
                          static_cast<unsigned char>(s[i + 1]) == 0xA0;
        if (nbsp || std::isspace(static_cast<unsigned char>(s[i]))) {
            if (out.empty() || out.back() != ' ') out.push_back(' ');
            if (nbsp) ++i;
        } else {
            out.push_back(s[i]);
        }
    }
    return out;
}

// HMAC-SHA256 (RFC 2104) written out over Poco's SHA-256, apart from the OpenSSL calls of the code
// under test; keys of at most one block (64 bytes).
std::string hmac_sha256(const std::string& key, const std::string& message) {
    REQUIRE(key.size() <= 64);
    auto sha256 = [](const std::string& data) {
        Poco::SHA2Engine e(Poco::SHA2Engine::SHA_256);
        e.update(data);
        const auto& d = e.digest();
        return std::string(d.begin(), d.end());
    };
    std::string inner(64, '\x36'), outer(64, '\x5c');
    for (std::size_t i = 0; i < key.size(); ++i) {
        inner[i] = static_cast<char>(inner[i] ^ key[i]);
        outer[i] = static_cast<char>(outer[i] ^ key[i]);
    }
    return sha256(outer + sha256(inner + message));
}

// A field of the binding: its length (4 bytes, big-endian), then its bytes.
std::string field(const std::string& s) {
    std::string out;
    for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((s.size() >> (8 * i)) & 0xFF));
    return out + s;
}

}  // namespace

TEST_CASE("html_escape: markup, quotes, invalid UTF-8 and control characters") {
    CHECK(explain::html_escape("<script>alert('x')</script> & \"q\"") ==
          "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;");
    CHECK(explain::html_escape("Ca×P 75 mg²/dL²") == "Ca×P 75 mg²/dL²");  // valid UTF-8 kept
    CHECK(explain::html_escape(std::string("a\xFF" "b\xC0\xAF" "c")) == "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD" "c");
    CHECK(explain::html_escape(std::string("x\x01y\x7Fz\n")) == "x\xEF\xBF\xBDy\xEF\xBF\xBDz\n");
    CHECK(explain::html_escape(std::string("\xED\xA0\x80")) == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate
}

TEST_CASE("explanation page: hostile patient data is escaped everywhere it appears") {
    const std::string hostile = "<img src=x onerror=alert(1)>\"'&";
    rules::PatientFacts p = risk_patient();
    p.patient = "Patient/" + hostile;
    p.labs[1].source = "Observation/" + hostile;
    p.labs[1].reported = hostile;
    p.labs[1].status = "final";
    p.conditions[0].display = hostile;
    p.conditions[0].source = "Condition/</td><script>x()</script>";
    p.notes.push_back({"Observation/<b>n</b>", "Observation.<i>", hostile});
    const auto r = render(p, "calciphylaxis-risk");
    CHECK(r.html.find("<img") == std::string::npos);
    CHECK(r.html.find("<script") == std::string::npos);
    CHECK(r.html.find("<b>n</b>") == std::string::npos);
    CHECK(r.html.find("onerror=alert(1)&gt;&quot;&#39;&amp;") != std::string::npos);
    CHECK(r.html.find("&lt;/td&gt;&lt;script&gt;x()&lt;/script&gt;") != std::string::npos);
    // Attributes too: the point's sources and label.
    CHECK(r.html.find("data-sources=\"Observation/ca Observation/&lt;img") != std::string::npos);
    // Nothing but our own tags: every '<' starts one of the page's elements.
    static const std::regex tag("<(/?)([a-zA-Z!][a-zA-Z0-9]*)");
    const std::set<std::string> allowed = {"!DOCTYPE", "html", "head", "meta", "title", "style", "body", "a", "nav", "main",
                                           "header", "h1", "h2", "p", "strong", "span", "section", "ul", "li", "table",
                                           "caption", "thead", "tbody", "tr", "th", "td", "code", "figure", "figcaption",
                                           "svg", "desc", "line", "text", "polyline", "circle", "path", "blockquote",
                                           "footer"};
    for (auto it = std::sregex_iterator(r.html.begin(), r.html.end(), tag); it != std::sregex_iterator(); ++it)
        CHECK_MESSAGE(allowed.count((*it)[2].str()), "unexpected element <" << (*it)[2].str() << ">");
}

TEST_CASE("explanation page: self-contained, accessible, printable") {
    const auto r = render(risk_patient(), "calciphylaxis-risk");
    const std::string& h = r.html;
    CHECK(h.rfind("<!DOCTYPE html>\n<html lang=\"en\">", 0) == 0);
    CHECK(h.find(std::string(explain::kGeneratorMeta)) != std::string::npos);
    CHECK(h.find("<script") == std::string::npos);
    CHECK(h.find("src=") == std::string::npos);  // no image, script or frame loaded
    CHECK(h.find("@import") == std::string::npos);
    CHECK(h.find("url(") == std::string::npos);
    CHECK(h.find("<link") == std::string::npos);
    CHECK(h.find("@media print") != std::string::npos);
    CHECK(h.find(":focus-visible") != std::string::npos);
    CHECK(h.find("<th scope=\"col\">Value</th>") != std::string::npos);
    CHECK(h.find("<th scope=\"col\">Source</th>") != std::string::npos);
    CHECK(h.find("role=\"group\" aria-labelledby=\"chart-phosphate-title\"") != std::string::npos);
    // The finding in one sentence, the evidence table with the values, units, dates, statuses, sources.
    CHECK(h.find("id=\"sentence\">Calciphylaxis risk: ESRD with Ca×P 75.3") != std::string::npos);
    CHECK(h.find("<td class=\"num\">7.1</td><td>mg/dL</td><td>20 Nov 2026 08:00 UTC</td><td>final</td><td><code>Observation/p</code>") !=
          std::string::npos);
    CHECK(h.find("<code>Condition/esrd</code>") != std::string::npos);
    // The guidance from the data file, with its citation.
    CHECK(h.find("With calciphylaxis, parathyroid hormone levels are elevated in 90% of patients.") != std::string::npos);
    CHECK(h.find("https://pubmed.ncbi.nlm.nih.gov/2184792/") != std::string::npos);
}

TEST_CASE("explanation page: the thresholds of the catalog are drawn, not numbers of the code") {
    const auto r = render(risk_patient(), "calciphylaxis-risk");
    const std::string capxp = chart_of(r.html, "ca-x-p");
    CHECK(capxp.find("class=\"threshold\" data-fact=\"ca-x-p-high\" data-threshold=\"70\"") != std::string::npos);
    const std::string pth = chart_of(r.html, "pth-intact");
    CHECK(pth.find("data-fact=\"pth-high\" data-threshold=\"65\"") != std::string::npos);
    CHECK(pth.find("data-fact=\"pth-above-9x-upper-limit\" data-threshold=\"585\"") != std::string::npos);
    CHECK(chart_of(r.html, "phosphate").find("data-fact=\"phosphate-high\" data-threshold=\"4.5\"") != std::string::npos);
    CHECK(chart_of(r.html, "corrected-calcium").find("data-fact=\"corrected-calcium-high\" data-threshold=\"10.5\"") !=
          std::string::npos);
    // The window of each lab fact.
    CHECK(chart_of(r.html, "phosphate").find("data-window-days=\"90\"") != std::string::npos);
    CHECK(pth.find("data-window-days=\"180\"") != std::string::npos);

    // A site's threshold: a catalog with Ca×P above 60 draws 60.
    const test::TempDir tmp("explain-catalog");
    const auto dir = tmp.path / "catalog";
    std::filesystem::copy(std::string(CALCALERT_TEST_DIR) + "/../rules/catalog", dir, std::filesystem::copy_options::recursive);
    {
        std::ifstream in(dir / "facts.json");
        std::stringstream ss;
        ss << in.rdbuf();
        std::string text = ss.str();
        const auto at = text.find("\"above\": { \"default\": 70 }");
        REQUIRE(at != std::string::npos);
        text.replace(at, std::string("\"above\": { \"default\": 70 }").size(), "\"above\": { \"default\": 60 }");
        std::ofstream(dir / "facts.json") << text;
    }
    const auto site = rules::RuleCatalog::load(dir, test::terminology().concepts());
    const auto site_guidance = explain::Guidance::load(explain::Guidance::file_of(site), site);
    const rules::PatientFacts p = risk_patient();
    const auto eval = rules::evaluate(p, test::kNow, site);
    explain::PageInput in;
    in.finding = &eval.findings.front();
    in.facts = &p;
    in.notes = &eval.notes;
    in.catalog = &site;
    in.guidance = &site_guidance;
    in.now = test::kNow;
    const std::string html = explain::render_page(in);
    CHECK(chart_of(html, "ca-x-p").find("data-fact=\"ca-x-p-high\" data-threshold=\"60\"") != std::string::npos);

    // A threshold from the lab's reference range: PTH with a high of 50 draws 50 and 9 × 50 = 450.
    rules::PatientFacts q = risk_patient();
    q.labs[3].reference_high = 50;
    q.labs[3].value = 460;
    const auto rq = render(q, "calciphylaxis-risk");
    const std::string pth_ref = chart_of(rq.html, "pth-intact");
    CHECK(pth_ref.find("data-fact=\"pth-high\" data-threshold=\"50\"") != std::string::npos);
    CHECK(pth_ref.find("data-fact=\"pth-above-9x-upper-limit\" data-threshold=\"450\"") != std::string::npos);
}

TEST_CASE("explanation page: the values that fired are marked and labelled; the others are not") {
    const auto r = render(risk_patient(), "calciphylaxis-risk");
    const std::string phosphate = chart_of(r.html, "phosphate");
    // calciphylaxis-risk rests on Ca×P (not on phosphate-high): the phosphate chart has two plain points.
    CHECK(count(phosphate, "class=\"point\"") == 2);
    CHECK(count(phosphate, "class=\"point fired\"") == 0);
    const std::string capxp = chart_of(r.html, "ca-x-p");
    CHECK(count(capxp, "class=\"point fired\"") == 1);
    CHECK(capxp.find("aria-label=\"Calcium-phosphate product (Ca×P) 75.3 mg²/dL² on 20 Nov 2026 08:00 UTC. Fired this "
                     "alert: Calcium-phosphate product above the threshold\"") != std::string::npos);
    const std::string pth = chart_of(r.html, "pth-intact");
    CHECK(count(pth, "class=\"point fired\"") == 1);
    CHECK(pth.find("Fired this alert: Intact PTH above the upper limit") != std::string::npos);
    CHECK(pth.find("data-sources=\"Observation/pth\"") != std::string::npos);
    // Every point is focusable.
    CHECK(count(r.html, "tabindex=\"0\" role=\"img\"") == count(r.html, "class=\"point"));

    // metastatic-calcification-risk rests on phosphate-high too: its latest phosphate is marked, the older not.
    rules::PatientFacts m = risk_patient();
    m.conditions.clear();
    const auto rm = render(m, "metastatic-calcification-risk");
    const std::string mp = chart_of(rm.html, "phosphate");
    CHECK(count(mp, "class=\"point fired\"") == 1);
    CHECK(count(mp, "class=\"point\"") == 1);
    CHECK(mp.find("class=\"point fired\" tabindex=\"0\" role=\"img\" aria-label=\"Phosphate 7.1 mg/dL on 20 Nov 2026 08:00 "
                  "UTC. Fired this alert: Phosphate above the upper limit\"") != std::string::npos);
}

TEST_CASE("explanation page: times in the catalog's time zone; data-quality notes listed") {
    rules::RuleCatalog berlin = test::catalog();
    berlin.set_time_zone(rules::TimeZone::load("Europe/Berlin"));
    rules::PatientFacts p = risk_patient();
    p.notes.push_back({"Observation/bad", "Observation.valueQuantity.unit", "unknown unit 'mmol/dL'"});
    const auto eval = rules::evaluate(p, test::kNow, berlin);
    explain::PageInput in;
    in.finding = &eval.findings.front();
    in.facts = &p;
    in.notes = &eval.notes;
    in.catalog = &berlin;
    in.guidance = &guidance();
    in.now = test::kNow;
    const std::string h = explain::render_page(in);
    CHECK(h.find("20 Nov 2026 09:00 CET") != std::string::npos);
    CHECK(h.find("20 Nov 2026 08:00 UTC") == std::string::npos);
    CHECK(h.find("unknown unit &#39;mmol/dL&#39;") != std::string::npos);
}

TEST_CASE("guidance.json: every patient rule has guidance; each passage is the seed's own words") {
    for (const auto& r : test::catalog().rules()) CHECK_MESSAGE(guidance().find(r.id), r.id << " has guidance");
    for (const auto& r : test::catalog().order_rules()) CHECK_MESSAGE(guidance().find(r.id), r.id << " has guidance");
    const std::filesystem::path seed = std::string(CALCALERT_TEST_DIR) + "/../../shared/seed/calcinosis-calciphylaxis.txt";
    if (!std::filesystem::exists(seed)) {
        MESSAGE("skipped: the seed page is not there (" << seed.string() << ")");
        return;
    }
    std::ifstream in(seed);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = collapse_spaces(ss.str());
    for (const auto& [id, g] : guidance().rules) {
        for (const auto& p : g.passages) {
            CHECK_MESSAGE(text.find(collapse_spaces(p.text)) != std::string::npos, id << ": not in the seed: " << p.text);
            CHECK_MESSAGE(text.find(p.section + ":") != std::string::npos, id << ": no seed section " << p.section);
        }
        CHECK_MESSAGE(text.find("PMID:" + g.citation_pmid) != std::string::npos, id << ": PMID " << g.citation_pmid);
    }
}

TEST_CASE("guidance.json is read strictly") {
    const auto& cat = test::catalog();
    auto error_of = [&](const std::string& json) {
        try {
            explain::Guidance::parse(json, "g.json", cat);
        } catch (const explain::GuidanceError& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    const std::string chart = R"("chart": [{"value": "phosphate"}])";
    CHECK(error_of(R"({"version": "1", "source": "s", )" + chart + R"(, "rules": {}, "extra": 1})") ==
          "g.json: $.extra: unknown key (known: version, source, chart, rules)");
    CHECK(error_of(R"({"version": "1", "source": "s", "chart": [{"value": "sodium"}], "rules": {}})") ==
          "g.json: $.chart[0].value: 'sodium' is neither an analyte nor a computed value of facts.json");
    CHECK(error_of(R"({"version": "1", "source": "s", )" + chart +
                   R"(, "rules": {"no-such-rule": {"passages": [{"section": "a", "text": "b"}], "citation": {"pmid": "1", "text": "t"}}}})") ==
          "g.json: $.rules.no-such-rule: no rule 'no-such-rule' in the catalog");
    CHECK(error_of(R"({"version": "1", "source": "s", )" + chart +
                   R"(, "rules": {"calciphylaxis-risk": {"passages": [{"section": "a", "text": " "}], "citation": {"pmid": "1", "text": "t"}}}})") ==
          "g.json: $.rules.calciphylaxis-risk.passages[0].text: must not be empty");
    CHECK(error_of(R"({"version": "1", "source": "s", )" + chart +
                   R"(, "rules": {"calciphylaxis-risk": {"passages": [{"section": "a", "text": "b"}], "citation": {"pmid": "x1", "text": "t"}}}})") ==
          "g.json: $.rules.calciphylaxis-risk.citation.pmid: a PubMed id is digits only, not 'x1'");
}

TEST_CASE("explanation links: tokens are bound, signed, expiring and bounded") {
    const cds::ExplainTokens tokens(std::string(32, 'k'));
    // A patient id too long to turn up in the random base64url text by chance ("p1" did, about one
    // run in fifty).
    const cds::ExplainBinding b{"Patient/mrn-4417-2093", "calciphylaxis-risk", "0123456789abcdef", "https://ehr.example.org"};
    const std::string id = cds::ExplainTokens::new_id();
    const std::string t = tokens.mint(id, 1000, b);
    CHECK(t.size() == 76);
    CHECK(t.find("mrn-4417-2093") == std::string::npos);
    CHECK(t.find("4417") == std::string::npos);
    CHECK(t.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == std::string::npos);
    auto ok = tokens.check(t, 999);
    CHECK(ok.result == cds::ExplainTokens::Result::ok);
    CHECK(ok.id == id);
    CHECK(ok.expires == 1000);
    CHECK(ok.binding == tokens.binding_of(b));
    CHECK(tokens.check(t, 1000).result == cds::ExplainTokens::Result::ok);
    CHECK(tokens.check(t, 1001).result == cds::ExplainTokens::Result::expired);
    // Every character changed gives a token that does not verify.
    for (std::size_t i = 0; i < t.size(); ++i) {
        std::string bad = t;
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        const auto r = tokens.check(bad, 999).result;
        CHECK_MESSAGE((r == cds::ExplainTokens::Result::bad_signature || r == cds::ExplainTokens::Result::malformed),
                      "changed at " << i);
    }
    CHECK(cds::ExplainTokens(std::string(32, 'j')).check(t, 999).result == cds::ExplainTokens::Result::bad_signature);
    CHECK(tokens.check(std::string(cds::kMaxTokenLength + 1, 'A'), 999).result == cds::ExplainTokens::Result::malformed);
    CHECK(tokens.check("", 999).result == cds::ExplainTokens::Result::malformed);
    CHECK(tokens.check("../../etc/passwd", 999).result == cds::ExplainTokens::Result::malformed);
    // Another binding, another tag: the binding names the alert.
    cds::ExplainBinding other = b;
    other.issuer = "https://other.example.org";
    CHECK(tokens.binding_of(other) != tokens.binding_of(b));
    CHECK_THROWS_AS(cds::ExplainTokens(std::string(31, 'k')), cds::ConfigError);
}

TEST_CASE("explanation links: the token is the documented layout, its binding and tag HMAC-SHA256 of the key") {
    // The helper first, on RFC 4231's test case 2.
    const std::string rfc = hmac_sha256("Jefe", "what do ya want for nothing?");
    REQUIRE(Poco::DigestEngine::digestToHex(Poco::DigestEngine::Digest(rfc.begin(), rfc.end())) ==
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

    const std::string key = "0123456789abcdef0123456789abcdef-a-key-of-40-bytes";
    const cds::ExplainTokens tokens(key);
    const cds::ExplainBinding b{"Patient/p1", "calciphylaxis-risk", "0123456789abcdef", "https://ehr.example.org"};
    const std::string binding = hmac_sha256(key, std::string("calcalert-explain-binding") + '\0' + field(b.patient) +
                                                     field(b.rule) + field(b.evidence_hash) + field(b.issuer))
                                    .substr(0, 16);
    CHECK(tokens.binding_of(b) == binding);
    // From several threads at once, each HMAC from its own copy of the keyed context.
    std::vector<std::thread> threads;
    std::atomic<int> wrong{0};
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 200; ++i)
                if (tokens.binding_of(b) != binding) ++wrong;
        });
    for (auto& t : threads) t.join();
    CHECK(wrong == 0);

    const std::string id(16, '\x07');
    const auto raw = jose::base64url_decode(tokens.mint(id, 0x0102030405060708, b));
    REQUIRE(raw);
    REQUIRE(raw->size() == 57);
    const std::string expiry("\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    const std::string signed_part = std::string(1, '\x01') + id + expiry + binding;
    CHECK(raw->substr(0, 41) == signed_part);
    CHECK(raw->substr(41) == hmac_sha256(key, std::string("calcalert-explain-token") + '\0' + signed_part).substr(0, 16));
}

TEST_CASE("explanation pages: served from the bounded cache; 401 for bad tokens, 410 when evicted") {
    cds::ServeConfig config;
    config.explain_cache_entries = 2;
    config.explain_link_lifetime_seconds = 600;
    cds::ExplainPages pages(config, test::catalog(), guidance(), std::string(32, 'k'));
    const rules::PatientFacts p = risk_patient();
    const auto eval = rules::evaluate(p, test::kNow, test::catalog());
    auto snapshot = std::make_shared<cds::ExplainSnapshot>();
    snapshot->facts = p;
    snapshot->notes = eval.notes;
    snapshot->now = test::kNow;
    const auto& f = eval.findings.front();
    auto token_of = [](const std::string& path) { return path.substr(std::string("/explain/").size()); };
    const std::string first = token_of(pages.link_path(snapshot, f, "uuid-1", "iss", test::kNow));
    auto page = pages.page(first, test::kNow + 10);
    CHECK(page.status == 200);
    CHECK(page.body.find("Calciphylaxis risk") != std::string::npos);
    CHECK(page.body.find("This link is valid until 25 Nov 2026 12:10 UTC.") != std::string::npos);
    CHECK(pages.page(first, test::kNow + 601).status == 401);
    CHECK(pages.page(first, test::kNow + 601).body.find("expired") != std::string::npos);
    std::string tampered = first;
    tampered[10] = tampered[10] == 'A' ? 'B' : 'A';
    CHECK(pages.page(tampered, test::kNow).status == 401);
    CHECK(pages.page("not-a-token", test::kNow).status == 401);
    // Two more links: the first (least recently used) is evicted; its valid token then gets 410.
    pages.link_path(snapshot, f, "uuid-1", "iss", test::kNow);
    pages.link_path(snapshot, f, "uuid-1", "iss", test::kNow);
    CHECK(pages.cache().size() == 2);
    const auto gone = pages.page(first, test::kNow);
    CHECK(gone.status == 410);
    CHECK(gone.body.find("no longer holds its page") != std::string::npos);
    // A byte bound evicts too.
    cds::ExplainCache small(100, 1);
    cds::ExplainEntry e;
    e.bytes = 10;
    e.expires = test::kNow + 10;
    small.put("a", e, test::kNow);
    CHECK(small.size() == 0);
    cds::ExplainCache lru(2, 1 << 20);
    lru.put("a", e, test::kNow);
    lru.put("b", e, test::kNow);
    CHECK(lru.get("a", test::kNow));  // a is now the most recent
    lru.put("c", e, test::kNow);
    CHECK(lru.get("a", test::kNow));
    CHECK(!lru.get("b", test::kNow));
    CHECK(!lru.get("c", test::kNow + 11));  // expired
    // Expired entries are swept by the first put of a later second, and an entry put already
    // expired does not stay.
    cds::ExplainCache sweep(10, 1 << 20);
    sweep.put("a", e, test::kNow);
    sweep.put("b", e, test::kNow);
    sweep.put("c", e, test::kNow + 5);
    CHECK(sweep.size() == 3);
    cds::ExplainEntry later = e;
    later.expires = test::kNow + 100;
    sweep.put("d", later, test::kNow + 11);  // a, b and c expired at kNow + 10
    CHECK(sweep.size() == 1);
    CHECK(sweep.bytes() == 10);
    sweep.put("e", e, test::kNow + 11);  // expired when put, in a second already swept
    CHECK(sweep.size() == 1);
    CHECK(sweep.get("d", test::kNow + 11));
}

TEST_CASE("explanation page: bounded whatever the data (chart points, notes)") {
    rules::PatientFacts p = risk_patient();
    for (int i = 0; i < 1000; ++i) {  // 1,000 phosphates within 90 days, one an hour
        auto r = test::lab(Analyte::phosphate, 4.0, "2026-09-01T00:00:00Z", "Observation/many");
        r.effective += i * 3600;
        r.source = "Observation/many-" + std::to_string(i);
        p.labs.push_back(r);
    }
    for (int i = 0; i < 500; ++i) p.notes.push_back({"Observation/n" + std::to_string(i), "", "a note"});
    const auto r = render(p, "calciphylaxis-risk");
    const std::string phosphate = chart_of(r.html, "phosphate");
    CHECK(count(phosphate, "class=\"point") == explain::kMaxChartPoints);
    CHECK(r.html.find("the latest 400 drawn, 602 earlier in the window not drawn") != std::string::npos);
    CHECK(count(r.html, ": a note</li>") == explain::kMaxListedNotes);
    CHECK(r.html.find("… and 300 more notes") != std::string::npos);
}

TEST_CASE("explanation link key file: at least 32 bytes") {
    const test::TempDir tmp("explain-key");
    const auto& dir = tmp.path;
    std::ofstream(dir / "short") << std::string(31, 'k');
    std::ofstream(dir / "good") << std::string(32, 'k');
    CHECK_THROWS_WITH_AS(cds::ExplainTokens::read_key_file((dir / "short").string()),
                         doctest::Contains("31 bytes; a key has at least 32"), cds::ConfigError);
    CHECK(cds::ExplainTokens::read_key_file((dir / "good").string()) == std::string(32, 'k'));
    CHECK_THROWS_WITH_AS(cds::ExplainTokens::read_key_file((dir / "none").string()), doctest::Contains("cannot be read"),
                         cds::ConfigError);
    CHECK(cds::ExplainTokens::generate_key().size() == 32);
    CHECK(cds::ExplainTokens::generate_key() != cds::ExplainTokens::generate_key());
}

TEST_CASE("explanation page of an order rule: the draft order and the calciphylaxis condition are listed") {
    rules::PatientFacts p;
    p.patient = "Patient/p2";
    p.conditions = {test::dx("calciphylaxis", "Condition/calci")};
    rules::OrderFact o;
    o.order_class = "systemic-corticosteroid";
    o.code = "312615";
    o.display = "prednisone <20 MG> Oral Tablet";
    o.basis = "RxNorm 312615";
    o.source = "MedicationRequest/rx-1";
    const auto eval = rules::evaluate_orders(p, {o}, test::kNow, test::catalog());
    REQUIRE(eval.findings.size() == 1);
    explain::PageInput in;
    in.finding = &eval.findings[0];
    in.facts = &p;
    in.notes = &eval.notes;
    in.catalog = &test::catalog();
    in.guidance = &guidance();
    in.now = test::kNow;
    const std::string h = explain::render_page(in);
    CHECK(h.find("order <strong>MedicationRequest/rx-1</strong>") != std::string::npos);
    CHECK(h.find("<td>Draft medication order</td>") != std::string::npos);
    CHECK(h.find("<code>Condition/calci</code>") != std::string::npos);
    CHECK(h.find("prednisone &lt;20 MG&gt; Oral Tablet") != std::string::npos);
    CHECK(h.find("Corticosteroids are not helpful.") != std::string::npos);
    CHECK(h.find("This finding rests on no lab result.") != std::string::npos);
}
