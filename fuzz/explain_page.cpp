// The explanation page (explain/page.hpp) and its link tokens (adapters/cds_hooks/explain_links.hpp):
// the input, cut at its newlines, becomes the untrusted strings of a patient's data (patient id, a
// Condition's display and source, a lab's reported value and status, a data-quality note) and, whole,
// a token in a GET /explain/<token> path. The page must render, be valid UTF-8, and hold no element
// but its own (every '<' opens one of the renderer's tags: the data cannot add markup); the token check
// must answer without an exception, and a token past the tag has an id and a binding of 16 bytes. Any exception or broken
// rule is a finding.
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "adapters/cds_hooks/explain_links.hpp"
#include "explain/guidance.hpp"
#include "explain/page.hpp"
#include "fuzz_support.hpp"

using namespace calcalert;

namespace {

const rules::RuleCatalog& catalog() {
    static const auto c = rules::RuleCatalog::load(fuzz::kCatalogDir, mappings::Terminology::load(fuzz::kDataDir).concepts());
    return c;
}

const explain::Guidance& guidance() {
    static const auto g = explain::Guidance::load(explain::Guidance::file_of(catalog()), catalog());
    return g;
}

bool valid_utf8(const std::string& s) {
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        for (std::size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
        i += n;
    }
    return true;
}

void only_own_elements(const std::string& html) {
    static const std::set<std::string> own = {"!DOCTYPE", "html", "head", "meta", "title", "style", "body", "a", "nav", "main",
                                              "header", "h1", "h2", "p", "strong", "span", "section", "ul", "li", "table",
                                              "caption", "thead", "tbody", "tr", "th", "td", "code", "figure", "figcaption",
                                              "svg", "desc", "line", "text", "polyline", "circle", "path", "blockquote",
                                              "footer"};
    for (auto at = html.find('<'); at != std::string::npos; at = html.find('<', at + 1)) {
        std::size_t i = at + 1;
        if (i < html.size() && html[i] == '/') ++i;
        std::string name;
        while (i < html.size() && (std::isalnum(static_cast<unsigned char>(html[i])) || html[i] == '!')) name += html[i++];
        if (!own.count(name)) std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string input(fuzz::as_text(data, size));
    std::vector<std::string> parts;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= input.size() && parts.size() < 8; ++i)
        if (i == input.size() || input[i] == '\n') {
            parts.push_back(input.substr(start, i - start));
            start = i + 1;
        }
    parts.resize(8);

    // A patient for whom calciphylaxis-risk fires, its strings from the input.
    rules::PatientFacts p;
    p.patient = "Patient/" + parts[0];
    auto lab = [&](rules::Analyte a, double v, std::int64_t t, std::string source) {
        rules::LabResult r;
        r.analyte = a;
        r.value = v;
        r.effective = t;
        r.status = "final";
        r.source = std::move(source);
        return r;
    };
    p.labs = {lab(rules::Analyte::calcium_total, 10.6, fuzz::kNow - 5 * 86400, "Observation/ca" + parts[1]),
              lab(rules::Analyte::phosphate, 7.1, fuzz::kNow - 5 * 86400, "Observation/p"),
              lab(rules::Analyte::pth_intact, 450, fuzz::kNow - 15 * 86400, "Observation/" + parts[2])};
    p.labs[1].reported = parts[3];
    rules::ConditionFact esrd;
    esrd.concept_id = "esrd";
    esrd.code_label = "ICD-10-CM N18.6";
    esrd.display = parts[4];
    esrd.clinical_status = "active";
    esrd.verification_status = parts[5];
    esrd.source = "Condition/" + parts[6];
    p.conditions = {esrd};
    p.notes.push_back({parts[6], parts[7], parts[3]});
    const auto eval = rules::evaluate(p, fuzz::kNow, catalog());
    for (const auto& f : eval.findings) {
        explain::PageInput in;
        in.finding = &f;
        in.facts = &p;
        in.notes = &eval.notes;
        in.catalog = &catalog();
        in.guidance = &guidance();
        in.now = fuzz::kNow;
        in.identifier = parts[7];
        in.index_href = parts[5];
        in.footer_note = parts[1];
        const std::string html = explain::render_page(in);
        if (!valid_utf8(html)) std::abort();
        only_own_elements(html);
    }

    // The whole input as a token of GET /explain/<token>.
    static const cds::ExplainTokens tokens(std::string(32, 'k'));
    const auto checked = tokens.check(input, fuzz::kNow);
    if (checked.result == cds::ExplainTokens::Result::ok || checked.result == cds::ExplainTokens::Result::expired) {
        // Past the tag, the token's parts have their sizes.
        if (checked.id.size() != 16 || checked.binding.size() != 16) std::abort();
    }
    return 0;
}
