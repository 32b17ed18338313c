// The order rules of clinical-rules.md §3 (CDS Hooks order-select / order-sign): the medication data,
// draft MedicationRequests -> order facts, the order-rule catalog and evaluate_orders().
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include <rapidjson/document.h>
#include <unistd.h>

#include "fhir/views.hpp"
#include "mappings/fact_builder.hpp"
#include "mappings/medications.hpp"
#include "mappings/order_facts.hpp"
#include "test_support.hpp"

using namespace calcalert;
using mappings::MatchAction;
using mappings::Medications;
using mappings::OrderReading;
using S = std::set<std::string>;

namespace {
namespace fs = std::filesystem;

const std::string kData = std::string(CALCALERT_TEST_DIR) + "/../mappings/data";
const std::string kOrders = std::string(CALCALERT_TEST_DIR) + "/fixtures/orders/";
constexpr const char* kRx = "http://www.nlm.nih.gov/research/umls/rxnorm";

const Medications& meds() {
    static const auto m = Medications::load(kData);
    return m;
}

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

rapidjson::Document parse(const std::string& text) {
    rapidjson::Document d;
    d.Parse(text.c_str());
    REQUIRE_FALSE(d.HasParseError());
    return d;
}

rapidjson::Document fixture(const char* name) { return parse(slurp(kOrders + name)); }

const rapidjson::Value& draft_orders_of(const rapidjson::Document& hook_request) {
    return hook_request["context"]["draftOrders"];
}

// A draft MedicationRequest with an RxNorm code and optional dosageInstruction routes (JSON objects).
std::string order(const std::string& id, const std::string& medication, const std::vector<std::string>& routes = {},
                  const std::string& extra = "") {
    std::string s = R"({"resourceType":"MedicationRequest","id":")" + id +
                    R"(","status":"draft","intent":"order","subject":{"reference":"Patient/p1"},"medicationCodeableConcept":)" +
                    medication;
    if (!routes.empty()) {
        s += R"(,"dosageInstruction":[)";
        for (std::size_t i = 0; i < routes.size(); ++i) s += (i ? "," : "") + std::string(R"({"route":)") + routes[i] + "}";
        s += "]";
    }
    return s + extra + "}";
}
std::string rx(const std::string& code, const std::string& display = "") {
    return std::string(R"({"coding":[{"system":")") + kRx + R"(","code":")" + code + R"(","display":")" + display + R"("}]})";
}
std::string text_only(const std::string& text) { return R"({"text":")" + text + R"("})"; }
std::string sct_route(const std::string& code, const std::string& display) {
    return R"({"coding":[{"system":"http://snomed.info/sct","code":")" + code + R"(","display":")" + display + R"("}]})";
}
const std::string kIV = sct_route("47625008", "Intravenous route");
const std::string kIM = sct_route("78421000", "Intramuscular route");
const std::string kOral = sct_route("26643006", "Oral route");
const std::string kIntraArticular = sct_route("12130007", "Intra-articular route");
const std::string kTopical = sct_route("6064005", "Topical route");
const std::string kInhaled = sct_route("446406008", "By inhalation");

OrderReading read(const std::string& json) {
    auto d = parse(json);
    return mappings::read_order(d, meds());
}

// The classes an order matched (one order per call).
S classes(const OrderReading& r) {
    S out;
    for (const auto& f : r.facts) out.insert(f.order_class);
    return out;
}

// The orders (sources) with a fact of `cls`.
S orders_with(const OrderReading& r, const std::string& cls) {
    S out;
    for (const auto& f : r.facts)
        if (f.order_class == cls) out.insert(f.source);
    return out;
}

bool has_note(const OrderReading& r, const std::string& source, const std::string& part) {
    return std::any_of(r.notes.begin(), r.notes.end(), [&](const rules::DataQualityNote& n) {
        return n.source == source && n.message.find(part) != std::string::npos;
    });
}

rules::PatientFacts patient(std::vector<rules::ConditionFact> conditions = {}) {
    rules::PatientFacts p;
    p.patient = "Patient/p1";
    p.conditions = std::move(conditions);
    return p;
}

// (rule id, order) of every finding, in order.
std::vector<std::pair<std::string, std::string>> fired(const rules::PatientFacts& p,
                                                       const std::vector<rules::OrderFact>& facts) {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& f : rules::evaluate_orders(p, facts, test::kNow, test::catalog()).findings)
        out.emplace_back(f.rule->id, f.order);
    return out;
}

fs::path temp_copy(const std::string& from, const char* tag) {
    const fs::path dir = fs::temp_directory_path() / ("calcalert-" + std::string(tag) + "-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::copy(from, dir, fs::copy_options::recursive);
    return dir;
}

void append_line(const fs::path& file, const std::string& line) { std::ofstream(file, std::ios::app) << line << "\n"; }

void replace_in(const fs::path& file, const std::string& from, const std::string& to) {
    std::string text = slurp(file.string());
    const auto pos = text.find(from);
    REQUIRE(pos != std::string::npos);
    text.replace(pos, from.size(), to);
    std::ofstream(file) << text;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// The medication data

TEST_CASE("medication data: the vetted codes of terminology-rxnorm.md with their classes and actions") {
    const auto& m = meds();
    auto only = [&](const char* code) {
        auto rows = m.rxnorm(code);
        REQUIRE(rows.size() == 1);
        return rows[0];
    };
    CHECK(only("312615")->order_class == "systemic-corticosteroid");  // prednisone 20 MG Oral Tablet (R1-R4)
    CHECK(only("312615")->action == MatchAction::fire);
    CHECK(only("1743707")->action == MatchAction::route_check);    // Solu-Medrol 125 MG Injection
    CHECK(only("8640")->action == MatchAction::route_check);       // IN prednisone: also without a route
    CHECK(only("5492")->action == MatchAction::route_required);    // IN hydrocortisone: only with a route
    CHECK(only("1085728")->action == MatchAction::exclude);        // dental paste, a VSAC false positive
    CHECK(only("1085752")->action == MatchAction::exclude);        // Kenalog-10: local only
    CHECK(only("4452")->action == MatchAction::exclude);           // fludrocortisone: off by default
    CHECK(only("1244214")->action == MatchAction::fire);           // oral budesonide: on by default
    CHECK(only("1366556")->verification == "VERIFIED-2");
    CHECK(only("198546")->order_class == "iv-calcium");            // oral calcium gluconate: never IV
    CHECK(only("198546")->action == MatchAction::exclude);
    CHECK(only("603011")->order_class == "iv-phosphate");
    CHECK(only("312615")->source.find("terminology-rxnorm.md §3.2") == 0);
    // UNVERIFIED candidates (§2.2) and gaps are left out: no IV calcium / phosphate RxCUI at all.
    for (const char* unverified : {"1668250", "1668248", "197435", "828527", "828525", "1928567", "1928569", "2667657",
                                   "2688947", "2716829", "1872384", "1872443", "1872447"})
        CHECK(m.rxnorm(unverified).empty());
    // SCDC components are no ingredient matchers (§2.1 note).
    CHECK(m.rxnorm("392925").empty());
    CHECK(m.rxnorm("330758").empty());

    REQUIRE(m.route("http://snomed.info/sct", "47625008"));
    CHECK(m.route("http://snomed.info/sct", "47625008")->counts_for_class("iv-calcium"));
    CHECK(m.route("http://snomed.info/sct", "47625008")->counts_for_class("systemic-corticosteroid"));
    CHECK_FALSE(m.route("http://snomed.info/sct", "26643006")->counts_for_class("iv-phosphate"));
    CHECK(m.route("http://snomed.info/sct", "12130007")->counts_for.empty());  // intra-articular: local
    CHECK_FALSE(m.route("http://loinc.org", "47625008"));
    CHECK(m.injectable_form("http://snomed.info/sct", "385219001"));
    CHECK(m.injectable_form_word("Methylprednisolone 125 MG Injection") == "inject*");
    CHECK(m.injectable_form_word("prednisone 20 MG Oral Tablet").empty());
    CHECK(m.text_matches("Sodium Phosphates 3 mmol/mL").size() == 1);
    CHECK(m.text_matches("calcium carbonate").empty());
    CHECK(mappings::normalized_words("IV-Push/PB") == " iv push pb ");
    CHECK(mappings::contains_words("Intra-articular", "intra-articular"));
    CHECK_FALSE(mappings::contains_words("ivory", "iv"));
}

TEST_CASE("medication data is checked strictly, naming the file and line") {
    const fs::path dir = temp_copy(kData, "meds");
    const fs::path tsv = dir / "medications.tsv";
    const std::string rx = "\thttp://www.nlm.nih.gov/research/umls/rxnorm\t";
    SUBCASE("an UNVERIFIED candidate") {
        append_line(tsv, "iv-calcium" + rx + "1668250\tSCD\tcalcium gluconate inj.\tcalcium gluconate\tinjectable\tfire\t"
                         "terminology-rxnorm.md §2.2: R6\tUNVERIFIED\t");
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("medications.tsv:"), mappings::TerminologyError);
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("verification 'UNVERIFIED'"), mappings::TerminologyError);
    }
    SUBCASE("an unknown class") {
        append_line(tsv, "iv-magnesium" + rx + "1\tSCD\tx\tx\t-\tfire\tsrc\tVERIFIED\t");
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("class 'iv-magnesium'"), mappings::TerminologyError);
    }
    SUBCASE("a text match that would count alone") {
        append_line(tsv, "iv-calcium\ttext\tcalcium lactate\t-\tx\tx\t-\tfire\tsrc\tkeyword\t");
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("never counts alone"), mappings::TerminologyError);
    }
    SUBCASE("a duplicate") {
        append_line(tsv, "systemic-corticosteroid" + rx + "312615\tSCD\tprednisone\tprednisone\toral\tfire\tsrc\tVERIFIED\t");
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("listed twice"), mappings::TerminologyError);
    }
    SUBCASE("a missing column") {
        append_line(tsv, "systemic-corticosteroid" + rx + "7\tSCD\tx\tx\toral\tfire\tsrc");
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("expected 11 tab-separated columns"),
                             mappings::TerminologyError);
    }
    SUBCASE("an unknown action") {
        append_line(tsv, "systemic-corticosteroid" + rx + "7\tSCD\tx\tx\toral\talert\tsrc\tVERIFIED\t");
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("action 'alert'"), mappings::TerminologyError);
    }
    SUBCASE("a product that would need an ingredient's route test") {
        append_line(tsv, "systemic-corticosteroid" + rx + "7\tSCD\tx\tx\toral\troute-required\tsrc\tVERIFIED\t");
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("a product (SCD)"), mappings::TerminologyError);
    }
    SUBCASE("a route for an unknown class") {
        append_line(dir / "routes.tsv", "http://snomed.info/sct\t1\tx\tiv-calcium,iv-magnesium\tsrc\tVERIFIED\t");
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("routes.tsv:"), mappings::TerminologyError);
    }
    SUBCASE("a dose form that is not injectable") {
        append_line(dir / "dose-forms.tsv", "http://snomed.info/sct\t2\tOral tablet\toral\tsrc\tVERIFIED\t");
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("dose-forms.tsv:"), mappings::TerminologyError);
    }
    SUBCASE("a missing file") {
        fs::remove(dir / "routes.tsv");
        CHECK_THROWS_WITH_AS(Medications::load(dir), doctest::Contains("cannot open"), mappings::TerminologyError);
    }
    fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------------
// Draft orders -> order facts

TEST_CASE("IV calcium and phosphate: each salt, by text with an IV route or an injectable form; oral never") {
    auto d = fixture("iv-orders.json");
    const OrderReading r = mappings::read_draft_orders(d, meds());
    CHECK(r.problems.empty());
    CHECK(r.orders == 8);
    CHECK(orders_with(r, "iv-calcium") == S{"MedicationRequest/iv-cagluc-text", "MedicationRequest/iv-cacl-contained"});
    CHECK(orders_with(r, "iv-phosphate") == S{"MedicationRequest/iv-kphos-admixture", "MedicationRequest/iv-naphos-inj"});
    CHECK(orders_with(r, "systemic-corticosteroid").empty());
    for (const auto& f : r.facts) {
        CHECK(f.code.empty());  // no vetted IV calcium/phosphate code exists: text matches only
        CHECK(f.basis.find("text match") != std::string::npos);
    }
    auto fact = [&](const std::string& source) {
        auto it = std::find_if(r.facts.begin(), r.facts.end(), [&](const rules::OrderFact& f) { return f.source == source; });
        REQUIRE(it != r.facts.end());
        return *it;
    };
    const auto gluconate = fact("MedicationRequest/iv-cagluc-text");  // local EHR code + text + SNOMED IV route
    CHECK(gluconate.display == "calcium gluconate 2 g in sodium chloride 0.9% 100 mL IVPB");
    CHECK(gluconate.route == "Intravenous route");
    CHECK(gluconate.basis.find("route Intravenous route") != std::string::npos);
    const auto chloride = fact("MedicationRequest/iv-cacl-contained");  // contained Medication, dose form, no route
    CHECK(chloride.display == "Calcium chloride 10% (100 mg/mL) 10 mL syringe");
    CHECK(chloride.basis.find("route not specified, injectable form: dose form SNOMED CT 385219001") != std::string::npos);
    const auto kphos = fact("MedicationRequest/iv-kphos-admixture");  // Bundle Medication by urn:uuid, route text only
    CHECK(kphos.display == "Potassium phosphates 15 mmol in sodium chloride 0.9% 250 mL");
    CHECK(kphos.basis.find("route IV Piggyback") != std::string::npos);
    const auto naphos = fact("MedicationRequest/iv-naphos-inj");  // "injection" in the name, no route
    CHECK(naphos.basis.find("'inject*' in") != std::string::npos);

    // The near-misses say why.
    CHECK(has_note(r, "MedicationRequest/oral-cagluc-rxnorm", "excluded from iv-calcium"));
    CHECK(has_note(r, "MedicationRequest/oral-kphos", "excluded from iv-phosphate"));
    CHECK(has_note(r, "MedicationRequest/oral-cagluc-text", "route not recognized ('PO'), no injectable form"));
    CHECK_FALSE(has_note(r, "MedicationRequest/oral-cacarb", ""));  // calcium carbonate matches nothing at all
}

TEST_CASE("IV calcium: a calcium gluconate order given by mouth, or with no route and no injectable form, does not count") {
    CHECK(classes(read(order("o", text_only("calcium gluconate 1 g"), {kOral}))).empty());
    CHECK(classes(read(order("o", text_only("calcium gluconate 1 g")))).empty());
    CHECK(classes(read(order("o", text_only("calcium gluconate 1 g"), {kIV}))) == S{"iv-calcium"});
    CHECK(classes(read(order("o", text_only("calcium gluconate 1 g"), {sct_route("417255000", "Intraosseous")}))) ==
          S{"iv-calcium"});
    // The text fallback runs only when the order carries no RxNorm code at all (terminology-rxnorm.md §1.1).
    CHECK(classes(read(order("o", R"({"text":"calcium gluconate 1 g","coding":[{"system":")" + std::string(kRx) +
                                      R"(","code":"1668250"}]})",
                             {kIV})))
              .empty());
}

TEST_CASE("IV calcium: a site that resolves the ingredient RxCUI in RxNav makes coded orders count") {
    const fs::path dir = temp_copy(kData, "site-meds");
    // A locally resolved ingredient code (test value; a site records the RxNorm release it used).
    append_line(dir / "medications.tsv",
                "iv-calcium\thttp://www.nlm.nih.gov/research/umls/rxnorm\t9990001\tIN\tcalcium gluconate\tcalcium gluconate\t-\t"
                "route-or-injectable\tsite: RxNav rxcui lookup (test)\tVERIFIED\t");
    const Medications site = Medications::load(dir);
    auto with_site = [&](const std::string& json) {
        auto d = parse(json);
        return classes(mappings::read_order(d, site));
    };
    CHECK(with_site(order("o", rx("9990001", "calcium gluconate"), {kIV})) == S{"iv-calcium"});
    CHECK(with_site(order("o", rx("9990001", "calcium gluconate"), {kOral})).empty());
    CHECK(with_site(order("o", rx("9990001", "calcium gluconate"))).empty());  // no route, no injectable form
    CHECK(with_site(order("o", rx("9990001", "Calcium Gluconate 100 MG/ML Injectable Solution"))) == S{"iv-calcium"});
    // An ingredient-coded admixture (HL7 med0317 pattern).
    auto admixture = [&](const std::string& code) {
        return std::string(R"({"resourceType":"MedicationRequest","id":"mix","status":"draft","intent":"order",)") +
               R"("medicationReference":{"reference":"#m"},"contained":[{"resourceType":"Medication","id":"m",)" +
               R"("code":)" + code + R"(,"ingredient":[{"itemCodeableConcept":)" + rx("9990001", "calcium gluconate") +
               R"(}]}],"dosageInstruction":[{"route":)" + kIV + "}]}";
    };
    CHECK(with_site(admixture(text_only("calcium gluconate 2 g in NS 100 mL"))) == S{"iv-calcium"});
    // An oral product code beside it (a negative control of §2.3): its exclusion wins for the class.
    CHECK(with_site(admixture(rx("198546", "Calcium Gluconate 500 MG Oral Tablet"))).empty());
    fs::remove_all(dir);
}

TEST_CASE("systemic corticosteroids: products, ingredients with routes, Medication references; the near-misses") {
    auto d = fixture("corticosteroid-orders.json");
    const OrderReading r = mappings::read_draft_orders(d, meds());
    CHECK(r.problems.empty());
    CHECK(orders_with(r, "systemic-corticosteroid") ==
          S{"MedicationRequest/pred-oral", "MedicationRequest/solumedrol-iv", "MedicationRequest/mp-succinate-im",
            "MedicationRequest/dex-inj-noroute", "MedicationRequest/cortef-oral", "MedicationRequest/dex-medication-ref",
            "MedicationRequest/pred-ingredient-only"});
    CHECK(orders_with(r, "iv-calcium").empty());
    auto fact = [&](const std::string& source) {
        auto it = std::find_if(r.facts.begin(), r.facts.end(), [&](const rules::OrderFact& f) { return f.source == source; });
        REQUIRE(it != r.facts.end());
        return *it;
    };
    CHECK(fact("MedicationRequest/pred-oral").code == "312615");
    CHECK(fact("MedicationRequest/pred-oral").display == "prednisone 20 MG Oral Tablet");
    CHECK(fact("MedicationRequest/solumedrol-iv").basis.find("RxNorm 1743707") == 0);
    CHECK(fact("MedicationRequest/solumedrol-iv").route == "Intravenous route");
    CHECK(fact("MedicationRequest/mp-succinate-im").basis.find("ingredient RxNorm 203189") == 0);
    CHECK(fact("MedicationRequest/dex-inj-noroute").basis.find("route not specified") != std::string::npos);
    CHECK(fact("MedicationRequest/dex-medication-ref").code == "197582");
    CHECK(fact("MedicationRequest/pred-ingredient-only").basis.find("in Medication.ingredient[0]") != std::string::npos);
    CHECK(fact("MedicationRequest/pred-ingredient-only").display == "prednisone (compounded oral suspension)");

    CHECK(has_note(r, "MedicationRequest/pred-active", "status 'active': not a draft order"));
    CHECK(has_note(r, "MedicationRequest/depo-medrol-ia", "route Intra-articular route"));
    CHECK(has_note(r, "MedicationRequest/hc-in-noroute", "needs a route of the class (route not specified)"));
    CHECK(has_note(r, "MedicationRequest/oral-paste", "excluded from systemic-corticosteroid"));
    CHECK(has_note(r, "MedicationRequest/hc-butyrate", "topical-only salt"));
    CHECK(has_note(r, "MedicationRequest/kenalog-topical", "route Topical route"));
    CHECK(has_note(r, "MedicationRequest/triam-inhaled", "route By inhalation"));
}

TEST_CASE("corticosteroid routes: systemic counts, local does not, keywords when the route has no code") {
    const std::string dex = rx("3264", "Dexamethasone");  // IN: needs a systemic route
    CHECK(classes(read(order("o", dex, {kIM}))) == S{"systemic-corticosteroid"});
    CHECK(classes(read(order("o", dex, {kOral}))) == S{"systemic-corticosteroid"});
    CHECK(classes(read(order("o", dex, {kIntraArticular}))).empty());
    CHECK(classes(read(order("o", dex, {kInhaled}))).empty());
    CHECK(classes(read(order("o", dex, {text_only("IV push")}))) == S{"systemic-corticosteroid"});
    CHECK(classes(read(order("o", dex, {text_only("intra-articular, left knee")}))).empty());
    CHECK(classes(read(order("o", dex, {text_only("IV or into the joint")}))).empty());  // words disagree
    CHECK(classes(read(order("o", dex, {text_only("per PEG")}))).empty());               // not recognized
    // An injectable product with a route the data does not know still counts, saying so.
    auto r = read(order("o", rx("1743707"), {text_only("per protocol")}));
    REQUIRE(r.facts.size() == 1);
    CHECK(r.facts[0].basis.find("route not recognized ('per protocol')") != std::string::npos);
    // Two dosage lines: one systemic route is enough.
    CHECK(classes(read(order("o", dex, {kIntraArticular, kIM}))) == S{"systemic-corticosteroid"});
    // doNotPerform: an order not to give it.
    auto dnp = read(order("o", rx("312615"), {}, R"(,"doNotPerform":true)"));
    CHECK(dnp.facts.empty());
    CHECK(has_note(dnp, "MedicationRequest/o", "not to give"));
}

TEST_CASE("an order that matches nothing gives no fact and no note") {
    auto r = read(order("o", rx("197361", "amlodipine 5 MG Oral Tablet"), {kOral}));
    CHECK(r.facts.empty());
    CHECK(r.notes.empty());
    CHECK(r.orders == 1);
}

// ---------------------------------------------------------------------------------------------------
// What the public CDS Hooks sandbox sends

TEST_CASE("the public sandbox's order-sign request: Bundle without type, single-object category and reasonCode") {
    auto req = fixture("sandbox-order-sign.json");
    const auto& draft = draft_orders_of(req);
    REQUIRE_FALSE(draft.HasMember("type"));
    REQUIRE(draft["entry"][0]["resource"]["category"].IsObject());
    REQUIRE(draft["entry"][0]["resource"]["reasonCode"].IsObject());
    const OrderReading r = mappings::read_draft_orders(draft, meds());
    CHECK(r.problems.empty());
    REQUIRE(r.facts.size() == 1);
    CHECK(r.facts[0].source == "MedicationRequest/request-123");
    CHECK(r.facts[0].order_class == "systemic-corticosteroid");
    CHECK(r.facts[0].route.empty());

    // The patient's facts from the prefetch, as the service would build them.
    mappings::FactBuilder builder(test::terminology());
    fhir::Location where;
    where.file = "prefetch";
    for (const auto& e : req["prefetch"]["conditions"]["entry"].GetArray())
        builder.on_resource(e["resource"], "Condition", where, nullptr);
    REQUIRE(builder.patients().count("Patient/calciphylaxis-1"));
    const auto& facts = builder.patients().at("Patient/calciphylaxis-1");

    const auto ev = rules::evaluate_orders(facts, r.facts, test::kNow, test::catalog());
    REQUIRE(ev.findings.size() == 1);
    const auto& f = ev.findings[0];
    CHECK(f.rule->id == "corticosteroid-in-calciphylaxis");
    CHECK(f.order == "MedicationRequest/request-123");
    CHECK(f.patient == "Patient/calciphylaxis-1");
    CHECK(f.summary.rfind("prednisone 20 MG Oral Tablet ordered for a patient with calciphylaxis", 0) == 0);
    CHECK(f.summary.size() < 140);
    CHECK(f.sources == std::vector<std::string>{"MedicationRequest/request-123", "Condition/calciphylaxis-1-dx"});
    CHECK(f.detail.find("Corticosteroids are not helpful") != std::string::npos);
    CHECK(f.detail.find("SNOMED CT 237900002") != std::string::npos);
    CHECK(f.detail.find("PMID 2184792") != std::string::npos);
}

TEST_CASE("the sandbox's order-select on an empty screen: no medication, no fact, no problem") {
    auto req = fixture("sandbox-order-select-empty.json");
    const OrderReading r = mappings::read_draft_orders(draft_orders_of(req), meds());
    CHECK(r.orders == 1);
    CHECK(r.facts.empty());
    CHECK(r.notes.empty());
    CHECK(r.problems.empty());
}

TEST_CASE("tolerated shapes: a single dosageInstruction object, a list of routes, entry as one object, no status") {
    auto r = read(R"({"resourceType":"MedicationRequest","id":"o","intent":"plan","medicationCodeableConcept":)" + rx("3264") +
                  R"(,"dosageInstruction":{"route":[)" + kTopical + "," + kIM + "]}}");
    CHECK(classes(r) == S{"systemic-corticosteroid"});
    auto one_entry = parse(R"({"resourceType":"Bundle","entry":{"resource":)" + order("e", rx("312615")) + "}}");
    CHECK(mappings::read_draft_orders(one_entry, meds()).facts.size() == 1);
    auto single = parse(order("s", rx("312615")));
    CHECK(mappings::read_draft_orders(single, meds()).facts.size() == 1);
    auto empty = parse(R"({"resourceType":"Bundle"})");
    CHECK(mappings::read_draft_orders(empty, meds()).orders == 0);
}

// ---------------------------------------------------------------------------------------------------
// Unreadable orders

TEST_CASE("an unreadable order is an ElementError naming the element path; nothing crashes") {
    auto path_of = [](const std::string& json) {
        auto d = parse(json);
        try {
            mappings::read_order(d, meds());
        } catch (const fhir::ElementError& e) {
            return e.path() + ": " + e.what();
        }
        return std::string("no error");
    };
    CHECK(path_of(order("o", "\"312615\"")) ==
          "MedicationRequest.medicationCodeableConcept: expected an object, found a string");
    CHECK(path_of(order("o", rx("1743707"), {"\"IV\""})) ==
          "MedicationRequest.dosageInstruction[0].route: expected an object, found a string");
    CHECK(path_of(order("o", R"({"coding":"312615"})")) ==
          "MedicationRequest.medicationCodeableConcept.coding: expected an array, found a string");
    CHECK(path_of(order("o", rx("312615"), {}, R"(,"dosageInstruction":"daily")")) ==
          "MedicationRequest.dosageInstruction: expected an array of objects, found a string");
    CHECK(path_of(R"({"resourceType":"MedicationRequest","id":"o","status":7})") ==
          "MedicationRequest.status: expected a string, found a number");
    CHECK(path_of(R"({"resourceType":"MedicationRequest","status":"draft","medicationReference":{"reference":"#m"},"contained":["m"]})") ==
          "MedicationRequest.contained[0]: expected an object, found a string");
    CHECK(path_of(R"({"resourceType":"MedicationRequest","status":"draft","medicationReference":{"reference":"#m"},)"
                  R"("contained":[{"resourceType":"Medication","id":"m","ingredient":[{"itemCodeableConcept":5}]}]})") ==
          "MedicationRequest.contained[0].ingredient[0].itemCodeableConcept: expected an object, found a number");
    CHECK(path_of(R"({"resourceType":"MedicationRequest","status":"draft","medicationReference":{"reference":"#p"},)"
                  R"("contained":[{"resourceType":"Patient","id":"p"}]})") ==
          "MedicationRequest.contained[0].resourceType: medicationReference names a Patient, not a Medication");
    CHECK(path_of(R"({"resourceType":"ServiceRequest","id":"x"})") ==
          "MedicationRequest.resourceType: expected MedicationRequest, found 'ServiceRequest'");
    CHECK(path_of(R"({"id":"x"})") == "MedicationRequest: resource has no resourceType");
    CHECK(path_of(order("o", rx("312615"), {}, R"(,"doNotPerform":"yes")")) ==
          "MedicationRequest.doNotPerform: expected a boolean, found a string");
    // An unresolved reference is a note, not an error.
    auto r = read(R"({"resourceType":"MedicationRequest","id":"o","status":"draft","medicationReference":{"reference":"Medication/gone"}})");
    CHECK(r.facts.empty());
    CHECK(has_note(r, "MedicationRequest/o", "names no contained Medication"));
}

TEST_CASE("draftOrders with unreadable orders: each is a problem with entry, resource and path; the rest is read") {
    auto d = fixture("malformed-orders.json");
    const OrderReading r = mappings::read_draft_orders(d, meds());
    CHECK(orders_with(r, "systemic-corticosteroid") == S{"MedicationRequest/good-pred"});
    REQUIRE(r.problems.size() == 3);
    CHECK(r.problems[0].describe() ==
          "draftOrders entry[1] MedicationRequest/bad-medication: MedicationRequest.medicationCodeableConcept: "
          "expected an object, found a string");
    CHECK(r.problems[1].describe() ==
          "draftOrders entry[2] MedicationRequest/bad-route: MedicationRequest.dosageInstruction[0].route: "
          "expected an object, found a string");
    CHECK(r.problems[2].describe() ==
          "draftOrders entry[3]: Bundle.entry[3].resource: expected a resource object, found a string");
    auto not_json_object = parse(R"("draft")");
    CHECK(mappings::read_draft_orders(not_json_object, meds()).problems.size() == 1);
    auto patient_resource = parse(R"({"resourceType":"Patient","id":"p"})");
    CHECK(mappings::read_draft_orders(patient_resource, meds()).problems.at(0).path == "draftOrders.resourceType");
    auto bad_entry = parse(R"({"resourceType":"Bundle","entry":"x"})");
    CHECK(mappings::read_draft_orders(bad_entry, meds()).problems.at(0).path == "Bundle.entry");
}

// ---------------------------------------------------------------------------------------------------
// The order-rule catalog

TEST_CASE("the catalog holds the two order rules apart from the eight patient rules") {
    const auto& cat = test::catalog();
    CHECK(cat.rules().size() == 8);
    REQUIRE(cat.order_rules().size() == 2);
    for (const auto& r : cat.rules()) CHECK_FALSE(r.order_rule);
    const rules::Rule* iv = cat.find("iv-calcium-phosphate-extravasation");
    const rules::Rule* cs = cat.find("corticosteroid-in-calciphylaxis");
    REQUIRE(iv);
    REQUIRE(cs);
    CHECK(iv->order_rule);
    CHECK(cs->order_rule);
    CHECK(iv->severity == rules::RuleSeverity::low);
    CHECK(cs->severity == rules::RuleSeverity::low);
    CHECK(iv->version.rfind("1.0.0+", 0) == 0);
    CHECK(cs->all == std::vector<std::string>{"order.systemic-corticosteroid", "dx.calciphylaxis"});
    CHECK(iv->citation_url() == "https://pubmed.ncbi.nlm.nih.gov/9777759/");
    CHECK(cat.title_of("order.iv-phosphate") == "Draft order for an intravenous phosphate salt");
}

TEST_CASE("order rules are checked strictly, naming the file") {
    const fs::path dir = temp_copy(std::string(CALCALERT_TEST_DIR) + "/../rules/catalog", "order-catalog");
    const auto concepts = test::terminology().concepts();
    const fs::path cs = dir / "order-rules" / "corticosteroid-in-calciphylaxis.json";
    SUBCASE("suppressedBy is not an order-rule key") {
        replace_in(cs, "\"severity\"", "\"suppressedBy\": [], \"severity\"");
        CHECK_THROWS_WITH_AS(rules::RuleCatalog::load(dir, concepts),
                             doctest::Contains("corticosteroid-in-calciphylaxis.json: suppressedBy: unknown key"),
                             rules::CatalogError);
    }
    SUBCASE("unknown order fact") {
        replace_in(cs, "order.systemic-corticosteroid", "order.systemic-steroid");
        CHECK_THROWS_WITH_AS(rules::RuleCatalog::load(dir, concepts), doctest::Contains("unknown fact 'order.systemic-steroid'"),
                             rules::CatalogError);
    }
    SUBCASE("an order rule without an order fact") {
        replace_in(cs, "\"order.systemic-corticosteroid\", ", "");
        CHECK_THROWS_WITH_AS(rules::RuleCatalog::load(dir, concepts), doctest::Contains("needs an order fact"),
                             rules::CatalogError);
    }
    SUBCASE("an unknown placeholder") {
        replace_in(cs, "{order} ordered", "{drug} ordered");
        CHECK_THROWS_WITH_AS(rules::RuleCatalog::load(dir, concepts), doctest::Contains("summary: unknown placeholder {drug}"),
                             rules::CatalogError);
    }
    SUBCASE("a patient rule may not name an order fact") {
        replace_in(dir / "rules" / "calciphylaxis-risk.json", "\"ca-x-p-high\"", "\"order.iv-calcium\"");
        CHECK_THROWS_WITH_AS(rules::RuleCatalog::load(dir, concepts), doctest::Contains("unknown fact 'order.iv-calcium'"),
                             rules::CatalogError);
    }
    SUBCASE("the id must be the file name") {
        replace_in(cs, "\"id\": \"corticosteroid-in-calciphylaxis\"", "\"id\": \"steroids\"");
        CHECK_THROWS_WITH_AS(rules::RuleCatalog::load(dir, concepts), doctest::Contains("must match the file name"),
                             rules::CatalogError);
    }
    SUBCASE("a catalog without order-rules/ has no order rules") {
        fs::remove_all(dir / "order-rules");
        const auto cat = rules::RuleCatalog::load(dir, concepts);
        CHECK(cat.order_rules().empty());
        CHECK(cat.rules().size() == 8);
    }
    fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------------
// evaluate_orders

TEST_CASE("iv-calcium-phosphate-extravasation: one finding per IV calcium or phosphate order, for any patient") {
    auto d = fixture("iv-orders.json");
    const OrderReading r = mappings::read_draft_orders(d, meds());
    const auto ev = rules::evaluate_orders(patient(), r.facts, test::kNow, test::catalog());
    REQUIRE(ev.findings.size() == 4);
    std::vector<std::string> orders;
    for (const auto& f : ev.findings) {
        CHECK(f.rule->id == "iv-calcium-phosphate-extravasation");
        CHECK(f.summary.size() < 140);
        CHECK(f.summary.find("IV calcium or phosphate, extravasation can cause calcinosis cutis") != std::string::npos);
        CHECK(f.detail.find("Iatrogenic calcinosis cutis results from extravasation of intravenous agents containing "
                            "calcium or phosphate.") != std::string::npos);
        CHECK(f.detail.find("PMID 9777759") != std::string::npos);
        CHECK(f.summary.find("...") == std::string::npos);
        REQUIRE(f.sources.size() == 1);
        CHECK(f.sources[0] == f.order);
        orders.push_back(f.order);
    }
    // In the order of draftOrders.
    CHECK(orders == std::vector<std::string>{"MedicationRequest/iv-cagluc-text", "MedicationRequest/iv-cacl-contained",
                                             "MedicationRequest/iv-kphos-admixture", "MedicationRequest/iv-naphos-inj"});
    CHECK(ev.findings[0].summary.rfind("calcium gluconate 2 g in sodium chloride 0.9% 100 mL IVPB: IV calcium", 0) == 0);
    CHECK(ev.findings[0].evidence.at(0).fact == "order.iv-calcium");
    CHECK(ev.findings[2].evidence.at(0).fact == "order.iv-phosphate");
    // A calcinosis already on record is named.
    auto with_calcinosis = rules::evaluate_orders(patient({test::dx("calcinosis-cutis", "Condition/cc")}), r.facts,
                                                  test::kNow, test::catalog());
    CHECK(with_calcinosis.findings.at(0).detail.find("Already on record: Calcinosis cutis") != std::string::npos);
}

TEST_CASE("corticosteroid-in-calciphylaxis: only with an active, not refuted calciphylaxis") {
    auto d = fixture("corticosteroid-orders.json");
    const OrderReading r = mappings::read_draft_orders(d, meds());
    const auto calciphylaxis = test::dx("calciphylaxis", "Condition/calc");

    const auto ev = rules::evaluate_orders(patient({calciphylaxis}), r.facts, test::kNow, test::catalog());
    REQUIRE(ev.findings.size() == 7);
    for (const auto& f : ev.findings) {
        CHECK(f.rule->id == "corticosteroid-in-calciphylaxis");
        REQUIRE(f.evidence.size() == 2);
        CHECK(f.evidence[0].fact == "order.systemic-corticosteroid");
        CHECK(f.evidence[0].sources == std::vector<std::string>{f.order});
        CHECK(f.evidence[1].fact == "dx.calciphylaxis");
        CHECK(f.evidence[1].sources == std::vector<std::string>{"Condition/calc"});
        CHECK(f.detail.find("Corticosteroids are not helpful in calciphylaxis") != std::string::npos);
        CHECK(f.summary.find("...") == std::string::npos);  // the drug's whole name fits
    }
    CHECK(ev.findings[1].summary.rfind("Methylprednisolone 125 MG Injection [Solu-Medrol] ordered for a patient", 0) == 0);
    CHECK(ev.findings[3].detail.find("route not specified") != std::string::npos);

    CHECK(fired(patient(), r.facts).empty());  // no calciphylaxis
    auto refuted = calciphylaxis;
    refuted.verification_status = "refuted";
    const auto ev_refuted = rules::evaluate_orders(patient({refuted}), r.facts, test::kNow, test::catalog());
    CHECK(ev_refuted.findings.empty());
    CHECK(ev_refuted.notes.at(0).message.find("verificationStatus 'refuted'") != std::string::npos);
    auto resolved = calciphylaxis;
    resolved.clinical_status = "resolved";
    CHECK(fired(patient({resolved}), r.facts).empty());
    auto provisional = calciphylaxis;
    provisional.verification_status = "provisional";
    CHECK(fired(patient({provisional}), r.facts).size() == 7);

    // The wound note names the wound on record.
    const auto with_ulcer = rules::evaluate_orders(patient({calciphylaxis, test::dx("skin-ulcer", "Condition/ulcer")}),
                                                   r.facts, test::kNow, test::catalog());
    CHECK(with_ulcer.findings.at(0).detail.find("Wound or sepsis on record") != std::string::npos);
}

TEST_CASE("both order rules on one draftOrders; one finding per (rule, order); deterministic") {
    auto iv = fixture("iv-orders.json");
    auto cs = fixture("corticosteroid-orders.json");
    auto facts = mappings::read_draft_orders(cs, meds()).facts;
    for (auto& f : mappings::read_draft_orders(iv, meds()).facts) facts.push_back(f);
    const auto p = patient({test::dx("calciphylaxis", "Condition/calc")});
    const auto a = rules::evaluate_orders(p, facts, test::kNow, test::catalog());
    REQUIRE(a.findings.size() == 11);
    CHECK(a.findings.front().rule->id == "corticosteroid-in-calciphylaxis");  // same severity: by rule id
    CHECK(a.findings.back().rule->id == "iv-calcium-phosphate-extravasation");
    const auto b = rules::evaluate_orders(p, facts, test::kNow, test::catalog());
    for (std::size_t i = 0; i < a.findings.size(); ++i) {
        CHECK(a.findings[i].order == b.findings[i].order);
        CHECK(a.findings[i].evidence_hash == b.findings[i].evidence_hash);
    }
    // Two orders of the same rule differ in their evidence.
    CHECK(a.findings[0].evidence_hash != a.findings[1].evidence_hash);
    // No orders: nothing.
    CHECK(rules::evaluate_orders(p, {}, test::kNow, test::catalog()).findings.empty());
}

TEST_CASE("evaluate() still runs only the patient rules") {
    const auto p = patient({test::dx("calciphylaxis"), test::dx("skin-ulcer")});
    const auto ev = rules::evaluate(p, test::kNow, test::catalog());
    REQUIRE(ev.findings.size() == 1);
    CHECK(ev.findings[0].rule->id == "calciphylaxis-wound-sepsis-risk");
    CHECK(ev.findings[0].order.empty());
}

// 43,000 draft orders once took 94 s, each medicationReference scanning the whole Bundle. References
// now resolve through an index built once; this checks that 20,000 orders referencing 20,000 Medications
// (by "Type/id", by fullUrl, by an absolute URL, or to nothing) each get their own Medication. No timing
// assertion: a quadratic scan would still pass, only slowly.
TEST_CASE("20,000 draft orders with medicationReferences to as many Medications: each resolves to its own") {
    constexpr int kOrdersN = 20000;
    std::string bundle = R"({"resourceType":"Bundle","entry":[)";
    auto code_of = [](int i) { return i % 4 == 0 ? "197582" : i % 4 == 1 ? "1743707" : "0000000"; };
    // Medications first, in reverse order, so that no reference is resolved by position.
    for (int i = kOrdersN - 1; i >= 0; --i) {
        const std::string id = "m-" + std::to_string(i);
        bundle += R"({"fullUrl":"urn:uuid:med-)" + std::to_string(i) + R"(","resource":{"resourceType":"Medication","id":")" +
                  id + R"(","code":)" + rx(code_of(i)) + "}},";
    }
    for (int i = 0; i < kOrdersN; ++i) {
        const std::string n = std::to_string(i);
        const std::string ref = i % 4 == 0   ? "Medication/m-" + n
                                : i % 4 == 1 ? "urn:uuid:med-" + n
                                : i % 4 == 2 ? "https://ehr.example.org/fhir/Medication/m-" + n
                                             : "Medication/missing-" + n;
        bundle += std::string(i ? "," : "") + R"({"resource":{"resourceType":"MedicationRequest","id":"o-)" + n +
                  R"(","status":"draft","intent":"order","medicationReference":{"reference":")" + ref + R"("}}})";
    }
    bundle += "]}";
    const auto d = parse(bundle);
    CHECK(mappings::count_draft_orders(d) == kOrdersN);
    const OrderReading r = mappings::read_draft_orders(d, meds());
    CHECK(r.problems.empty());
    CHECK(r.orders == kOrdersN);
    REQUIRE(r.facts.size() == kOrdersN / 2);
    int wrong = 0;
    for (const auto& f : r.facts) {
        const int i = std::stoi(f.source.substr(std::string("MedicationRequest/o-").size()));
        if (f.order_class != "systemic-corticosteroid" || i % 4 > 1 || f.code != code_of(i)) ++wrong;
    }
    CHECK(wrong == 0);
    std::size_t unresolved = 0;
    for (const auto& note : r.notes)
        if (note.message.find("names no contained Medication and no Medication of draftOrders") != std::string::npos) {
            ++unresolved;
            CHECK(note.message.find("'Medication/missing-") != std::string::npos);
        }
    CHECK(unresolved == kOrdersN / 4);
}

TEST_CASE("medicationReference into draftOrders: the first entry that fits wins; the path names it") {
    const std::string med197582 = R"({"resourceType":"Medication","id":"dup","code":)" + rx("197582") + "}";
    const std::string med1743707 = R"({"resourceType":"Medication","id":"dup","code":)" + rx("1743707") + "}";
    const auto d = parse(R"({"resourceType":"Bundle","entry":[{"resource":)" + med1743707 + "},{\"resource\":" + med197582 +
                         R"(},{"resource":{"resourceType":"MedicationRequest","id":"o","status":"draft",)"
                         R"("medicationReference":{"reference":"http://x.example/fhir/Medication/dup"}}}]})");
    const OrderReading r = mappings::read_draft_orders(d, meds());
    REQUIRE(r.facts.size() == 1);
    CHECK(r.facts[0].code == "1743707");
    // A reference to a Patient entry is still an error naming that entry.
    const auto p = parse(R"({"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"x"}},)"
                         R"({"resource":{"resourceType":"MedicationRequest","id":"o","status":"draft",)"
                         R"("medicationReference":{"reference":"Patient/x"}}}]})");
    const OrderReading rp = mappings::read_draft_orders(p, meds());
    REQUIRE(rp.problems.size() == 1);
    CHECK(rp.problems[0].path == "Bundle.entry[0].resource.resourceType");
    CHECK(mappings::count_draft_orders(p) == 1);
}
