#include "mappings/order_facts.hpp"

#include <algorithm>
#include <limits>
#include <unordered_map>

#include "fhir/views.hpp"
#include "rules/catalog.hpp"

namespace calcalert::mappings {
namespace {

using fhir::ElementError;
using fhir::Json;

// The objects of an element that FHIR makes a list but senders also write as one object (CDS Hooks
// sandbox: category, reasonCode): each with its path. Anything else present is an ElementError.
std::vector<std::pair<const Json*, std::string>> objects(const Json& obj, const char* name, const std::string& path) {
    std::vector<std::pair<const Json*, std::string>> out;
    const Json* v = fhir::member(obj, name);
    if (!v) return out;
    const std::string at = path + "." + name;
    if (v->IsObject()) {
        out.emplace_back(v, at);
        return out;
    }
    if (!v->IsArray()) throw ElementError(at, std::string("expected an array of objects, found ") + fhir::json_type_name(*v));
    for (rapidjson::SizeType i = 0; i < v->Size(); ++i) {
        const std::string ipath = at + "[" + std::to_string(i) + "]";
        if (!(*v)[i].IsObject()) throw ElementError(ipath, std::string("expected an object, found ") + fhir::json_type_name((*v)[i]));
        out.emplace_back(&(*v)[i], ipath);
    }
    return out;
}

struct Concept {
    fhir::CodeableConcept cc;
    std::string path;   // FHIR path in the input: MedicationRequest.contained[0].code, Bundle.entry[1].resource.code
    std::string label;  // for people: medicationCodeableConcept, Medication.code, Medication.ingredient[0]
    bool ingredient = false;
};

struct Route {
    std::string shown;                    // as the order gives it
    bool recognized = false;
    std::vector<std::string> counts_for;  // when recognized
};

enum class RouteState { in_class, absent, unrecognized, outside };

struct Match {
    const MedicationCode* row;
    const Concept* from;
};

std::string join(const std::vector<std::string>& parts, const char* sep) {
    std::string out;
    for (const auto& p : parts) out += (out.empty() ? "" : sep) + p;
    return out;
}

// The resources of draftOrders by the keys a medicationReference can name, built once per call so that
// resolving every order's reference is linear in the Bundle (a scan per order would be quadratic).
// A reference names an entry by its fullUrl, by "Type/id", or by a URL ending in "/Type/id"; when several
// entries fit, the first one wins (as the former scan did).
class BundleIndex {
public:
    explicit BundleIndex(const Json* bundle) {
        if (!bundle || !bundle->IsObject()) return;
        const Json* entries = fhir::member(*bundle, "entry");
        if (!entries || !(entries->IsArray() || entries->IsObject())) return;
        const rapidjson::SizeType n = entries->IsArray() ? entries->Size() : 1;
        resources_.assign(n, nullptr);
        for (rapidjson::SizeType i = 0; i < n; ++i) {
            const Json& e = entries->IsArray() ? (*entries)[i] : *entries;
            const Json* res = fhir::member(e, "resource");
            if (!res || !res->IsObject()) continue;
            resources_[i] = res;
            const Json* full = fhir::member(e, "fullUrl");
            if (full && full->IsString()) by_full_.emplace(std::string(full->GetString(), full->GetStringLength()), i);
            const Json* rt = fhir::member(*res, "resourceType");
            const Json* id = fhir::member(*res, "id");
            if (rt && rt->IsString() && id && id->IsString()) {
                std::string local = std::string(rt->GetString(), rt->GetStringLength()) + "/" +
                                    std::string(id->GetString(), id->GetStringLength());
                if (std::count(local.begin(), local.end(), '/') == 1) by_local_.emplace(std::move(local), i);
                else odd_.emplace_back(std::move(local), i);  // a '/' in the type or id (not a FHIR id): scanned
            }
        }
    }

    // The resource `reference` names (its path in `path`), or null.
    const Json* find(std::string_view reference, std::string& path) const {
        constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
        std::size_t best = none;
        if (auto it = by_full_.find(std::string(reference)); it != by_full_.end()) best = it->second;
        // "Type/id" is the reference itself (one '/') or the part after its second-to-last '/'.
        if (const auto last = reference.rfind('/'); last != std::string_view::npos) {
            const auto prev = last == 0 ? std::string_view::npos : reference.rfind('/', last - 1);
            const std::string local(prev == std::string_view::npos ? reference : reference.substr(prev + 1));
            if (auto it = by_local_.find(local); it != by_local_.end()) best = std::min(best, it->second);
        }
        for (const auto& [local, i] : odd_)
            if (reference == local || (reference.size() > local.size() &&
                                       reference.substr(reference.size() - local.size() - 1) == "/" + local))
                best = std::min(best, i);
        if (best == none) return nullptr;
        path = "Bundle.entry[" + std::to_string(best) + "].resource";
        return resources_[best];
    }

private:
    std::vector<const Json*> resources_;  // by entry index (null: no resource object)
    std::unordered_map<std::string, std::size_t> by_full_;
    std::unordered_map<std::string, std::size_t> by_local_;
    std::vector<std::pair<std::string, std::size_t>> odd_;
};

class OrderReader {
public:
    OrderReader(const Medications& meds, const BundleIndex& bundle, OrderReading& out) : meds_(meds), bundle_(bundle), out_(out) {}

    void read(const Json& mr, const std::string& source_if_no_id) {
        const std::string_view type = fhir::resource_type(mr, "MedicationRequest");
        if (type != "MedicationRequest")
            throw ElementError("MedicationRequest.resourceType", "expected MedicationRequest, found '" + std::string(type) + "'");
        const fhir::ResourceView view(mr, "MedicationRequest");
        source_ = view.id().empty() ? source_if_no_id : view.reference();
        ++out_.orders;

        const auto status = fhir::string_member(mr, "status", "MedicationRequest");
        if (status && *status != "draft") {
            note("MedicationRequest.status", "status '" + std::string(*status) +
                                                 "': not a draft order, not evaluated (draftOrders holds orders being drafted)");
            return;
        }
        if (const Json* dnp = fhir::member(mr, "doNotPerform")) {
            if (!dnp->IsBool())
                throw ElementError("MedicationRequest.doNotPerform", std::string("expected a boolean, found ") + fhir::json_type_name(*dnp));
            if (dnp->GetBool()) {
                note("MedicationRequest.doNotPerform", "an order not to give the drug: not evaluated");
                return;
            }
        }

        if (const Json* mcc = fhir::member(mr, "medicationCodeableConcept"))
            drug_.push_back({fhir::codeable_concept(mcc, "MedicationRequest.medicationCodeableConcept"),
                             "MedicationRequest.medicationCodeableConcept", "medicationCodeableConcept", false});
        if (const Json* ref = fhir::object_member(mr, "medicationReference", "MedicationRequest"))
            medication_reference(mr, *ref);
        if (drug_.empty() && ingredients_.empty()) return;  // no drug (the sandbox's order-select on an empty screen)

        for (const auto& [di, dpath] : objects(mr, "dosageInstruction", "MedicationRequest"))
            for (const auto& [r, rpath] : route_objects(*di, dpath)) routes_.push_back(route(fhir::codeable_concept(r, rpath)));

        match_all();
    }

private:
    void note(const std::string& path, const std::string& message) { out_.notes.push_back({source_, path, message}); }

    // dosageInstruction.route is one CodeableConcept; a list of them is tolerated.
    static std::vector<std::pair<const Json*, std::string>> route_objects(const Json& di, const std::string& dpath) {
        const Json* r = fhir::member(di, "route");
        if (r && r->IsArray()) return objects(di, "route", dpath);
        if (!r) return {};
        return {{r, dpath + ".route"}};  // codeable_concept() rejects a non-object with this path
    }

    void medication_reference(const Json& mr, const Json& ref) {
        const auto reference = fhir::string_member(ref, "reference", "MedicationRequest.medicationReference");
        if (!reference || reference->empty()) {
            note("MedicationRequest.medicationReference", "medicationReference without a reference: the drug is unknown");
            return;
        }
        std::string path;
        const Json* med = resolve(mr, *reference, path);
        if (!med) {
            note("MedicationRequest.medicationReference.reference",
                 "medicationReference '" + std::string(*reference) +
                     "' names no contained Medication and no Medication of draftOrders: the drug is unknown");
            return;
        }
        const std::string_view type = fhir::resource_type(*med, path);
        if (type != "Medication")
            throw ElementError(path + ".resourceType", "medicationReference names a " + std::string(type) + ", not a Medication");
        drug_.push_back({fhir::codeable_concept(fhir::member(*med, "code"), path + ".code"), path + ".code",
                         "Medication.code", false});
        form_ = fhir::codeable_concept(fhir::member(*med, "form"), path + ".form");
        for (const auto& [ing, ipath] : objects(*med, "ingredient", path))
            if (const Json* item = fhir::member(*ing, "itemCodeableConcept"))
                ingredients_.push_back({fhir::codeable_concept(item, ipath + ".itemCodeableConcept"),
                                        ipath + ".itemCodeableConcept", "Medication." + ipath.substr(path.size() + 1),
                                        true});
    }

    // "#id" -> a contained resource; otherwise a draftOrders entry by fullUrl, "Type/id" or a URL ending in it.
    const Json* resolve(const Json& mr, std::string_view reference, std::string& path) const {
        if (reference[0] == '#') {
            const std::string_view id = reference.substr(1);
            for (const auto& [c, cpath] : objects(mr, "contained", "MedicationRequest")) {
                const auto cid = fhir::string_member(*c, "id", cpath);
                if (cid && *cid == id) {
                    path = cpath;
                    return c;
                }
            }
            return nullptr;
        }
        return bundle_.find(reference, path);
    }

    Route route(const fhir::CodeableConcept& cc) const {
        Route r;
        r.shown = std::string(cc.text);
        for (const auto& c : cc.coding) {
            if (r.shown.empty()) r.shown = std::string(c.display.empty() ? c.code : c.display);
            if (const RouteCode* rc = meds_.route(c.system, c.code); rc && !r.recognized) {
                r.recognized = true;
                r.counts_for = rc->counts_for;
            }
        }
        if (r.recognized) return r;
        std::vector<const RouteCode*> words = meds_.route_words(cc.text);
        for (const auto& c : cc.coding)
            for (const RouteCode* w : meds_.route_words(c.display)) words.push_back(w);
        if (words.empty()) return r;
        for (const RouteCode* w : words)
            if (w->counts_for != words.front()->counts_for) return r;  // words disagree: not recognized
        r.recognized = true;
        r.counts_for = words.front()->counts_for;
        return r;
    }

    RouteState route_state(const std::string& cls) const {
        if (routes_.empty()) return RouteState::absent;
        bool unrecognized = false;
        for (const auto& r : routes_) {
            if (!r.recognized) unrecognized = true;
            else if (std::find(r.counts_for.begin(), r.counts_for.end(), cls) != r.counts_for.end()) return RouteState::in_class;
        }
        return unrecognized ? RouteState::unrecognized : RouteState::outside;
    }

    std::string routes_shown() const {
        std::vector<std::string> shown;
        for (const auto& r : routes_)
            if (!r.shown.empty()) shown.push_back(r.shown);
        return join(shown, "; ");
    }

    std::string route_words(RouteState st) const {
        switch (st) {
            case RouteState::in_class: return "route " + routes_shown();
            case RouteState::absent: return "route not specified";
            case RouteState::unrecognized: return "route not recognized ('" + routes_shown() + "')";
            case RouteState::outside: return "route " + routes_shown();
        }
        return {};
    }

    // The drug as the order names it.
    std::string display(const Match& m) const {
        for (const auto& d : drug_) {
            if (!d.cc.text.empty()) return std::string(d.cc.text);
            for (const auto& c : d.cc.coding)
                if (!c.display.empty()) return std::string(c.display);
        }
        std::vector<std::string> parts;
        for (const auto& i : ingredients_) {
            if (!i.cc.text.empty()) parts.push_back(std::string(i.cc.text));
            else
                for (const auto& c : i.cc.coding)
                    if (!c.display.empty()) {
                        parts.push_back(std::string(c.display));
                        break;
                    }
        }
        return parts.empty() ? m.row->name : join(parts, " + ");
    }

    // Evidence of an injectable product: a dose-form code, a word of dose-forms.tsv in a name, or a
    // product row whose form is injectable. Empty when there is none.
    std::string injectable_evidence(const Match& m) const {
        for (const auto& c : form_.coding)
            if (const std::string* d = meds_.injectable_form(c.system, c.code))
                return "dose form SNOMED CT " + std::string(c.code) + " " + *d;
        if (m.row->form == "injectable") return "an injectable product";
        std::vector<std::string_view> names;
        for (const auto* list : {&drug_, &ingredients_})
            for (const auto& d : *list) {
                names.push_back(d.cc.text);
                for (const auto& c : d.cc.coding) names.push_back(c.display);
            }
        names.push_back(form_.text);
        for (const auto& c : form_.coding) names.push_back(c.display);
        if (!m.row->text) names.push_back(m.row->name);
        for (std::string_view n : names)
            if (const std::string w = meds_.injectable_form_word(n); !w.empty())
                return "'" + w + "' in \"" + std::string(n) + "\"";
        return {};
    }

    std::string what(const Match& m) const {
        const MedicationCode& row = *m.row;
        if (row.text)
            return "no RxNorm code; the order's text names " + row.ingredient + " (text match on '" + row.code +
                   "', not a vetted code)";
        std::string s = std::string(row.product() ? "" : "ingredient ") + "RxNorm " + row.code + " " + row.name + " (" +
                        row.tty + (row.form == "-" ? "" : ", " + row.form) + ")";
        if (m.from->ingredient) s += " in " + m.from->label;
        return s;
    }

    void match_all() {
        bool any_rxnorm = false;
        for (const auto* list : {&drug_, &ingredients_})
            for (const auto& d : *list)
                for (const auto& c : d.cc.coding) any_rxnorm = any_rxnorm || c.system == kRxNormSystem;
        for (const auto& order_class : rules::order_classes()) {
            const std::string& cls = order_class.first;  // not a structured binding: clang before 16 cannot capture one
            std::vector<Match> matches;
            auto add = [&](const MedicationCode* row, const Concept* from) {
                if (row->order_class != cls) return;
                for (const auto& m : matches)
                    if (m.row == row) return;
                matches.push_back({row, from});
            };
            for (const auto* list : {&drug_, &ingredients_})
                for (const auto& d : *list) {
                    if (any_rxnorm) {
                        for (const auto& c : d.cc.coding)
                            if (c.system == kRxNormSystem)
                                for (const MedicationCode* row : meds_.rxnorm(c.code)) add(row, &d);
                    } else {
                        // terminology-rxnorm.md §1.1 item 4: the text fallback, only without any RxNorm code.
                        for (const MedicationCode* row : meds_.text_matches(d.cc.text)) add(row, &d);
                        for (const auto& c : d.cc.coding)
                            for (const MedicationCode* row : meds_.text_matches(c.display)) add(row, &d);
                    }
                }
            if (matches.empty()) continue;
            // Products before ingredient-level codes before text.
            std::stable_sort(matches.begin(), matches.end(), [](const Match& a, const Match& b) {
                auto rank = [](const Match& m) { return m.row->text ? 2 : m.row->product() ? 0 : 1; };
                return rank(a) < rank(b);
            });
            if (auto ex = std::find_if(matches.begin(), matches.end(),
                                       [](const Match& m) { return m.row->action == MatchAction::exclude; });
                ex != matches.end()) {
                note(path_of(*ex), what(*ex) + " is excluded from " + cls +
                                       (ex->row->note.empty() ? "" : " (" + ex->row->note + ")") + ": not counted");
                continue;
            }
            const RouteState st = route_state(cls);
            bool counted = false;
            for (const auto& m : matches) {
                if (std::string basis = judge(m, st); !basis.empty()) {
                    rules::OrderFact f;
                    f.order_class = cls;
                    f.code = m.row->text ? std::string() : m.row->code;
                    f.display = display(m);
                    f.route = routes_shown();
                    f.basis = std::move(basis);
                    f.source = source_;
                    out_.facts.push_back(std::move(f));
                    counted = true;
                    break;
                }
            }
            if (!counted) {
                const Match& m = matches.front();
                std::string why;
                if (m.row->action == MatchAction::route_or_injectable)
                    why = "needs an IV-like route or an injectable dose form (" + route_words(st) +
                          (st == RouteState::outside ? "" : ", no injectable form") + ")";
                else if (m.row->action == MatchAction::route_check)
                    why = "not with a route outside the class (" + route_words(st) + ")";
                else
                    why = "needs a route of the class (" + route_words(st) + ")";
                note("MedicationRequest.dosageInstruction.route", what(m) + " matches " + cls + " but " + why + ": not counted");
            }
        }
    }

    std::string path_of(const Match& m) const { return m.from->path; }

    // The basis of a match that counts, or "" when it does not.
    std::string judge(const Match& m, RouteState st) const {
        const std::string base = what(m);
        switch (m.row->action) {
            case MatchAction::fire:
                return base + (st == RouteState::absent ? "" : "; " + route_words(st));
            case MatchAction::route_check:
                if (st == RouteState::outside) return {};
                return base + "; " + route_words(st);
            case MatchAction::route_required:
                if (st != RouteState::in_class) return {};
                return base + "; " + route_words(st);
            case MatchAction::route_or_injectable: {
                if (st == RouteState::in_class) return base + "; " + route_words(st);
                if (st == RouteState::outside) return {};
                const std::string inj = injectable_evidence(m);
                if (inj.empty()) return {};
                return base + "; " + route_words(st) + ", injectable form: " + inj;
            }
            case MatchAction::exclude: return {};
        }
        return {};
    }

    const Medications& meds_;
    const BundleIndex& bundle_;
    OrderReading& out_;
    std::string source_;
    std::vector<Concept> drug_;         // medicationCodeableConcept, Medication.code
    std::vector<Concept> ingredients_;  // Medication.ingredient[].itemCodeableConcept
    fhir::CodeableConcept form_;        // Medication.form
    std::vector<Route> routes_;
};

}  // namespace

OrderReading read_order(const rapidjson::Value& medication_request, const Medications& medications,
                        const rapidjson::Value* draft_orders) {
    OrderReading out;
    const BundleIndex index(draft_orders);
    OrderReader(medications, index, out).read(medication_request, "MedicationRequest (no id)");
    return out;
}

OrderReading read_draft_orders(const rapidjson::Value& draft_orders, const Medications& medications) {
    OrderReading out;
    const BundleIndex index(&draft_orders);  // once for all orders
    fhir::Location where;
    where.file = "draftOrders";
    auto problem = [&](const fhir::Location& at, const std::string& path, const std::string& message) {
        out.problems.push_back({fhir::Severity::error, at, path, message});
    };
    auto one = [&](const Json& res, const fhir::Location& at, const std::string& fallback) {
        fhir::Location loc = at;
        const Json* id = fhir::member(res, "id");
        loc.resource = "MedicationRequest";
        if (id && id->IsString()) loc.resource += std::string("/") + id->GetString();
        OrderReading single;
        try {
            OrderReader(medications, index, single).read(res, fallback);
        } catch (const ElementError& e) {
            problem(loc, e.path(), e.what());
            return;
        }
        out.orders += single.orders;
        for (auto& f : single.facts) out.facts.push_back(std::move(f));
        for (auto& n : single.notes) out.notes.push_back(std::move(n));
    };

    std::string_view type;
    try {
        type = fhir::resource_type(draft_orders, "draftOrders");
    } catch (const ElementError& e) {
        problem(where, e.path(), e.what());
        return out;
    }
    if (type == "MedicationRequest") {
        one(draft_orders, where, "MedicationRequest (no id)");
        return out;
    }
    if (type != "Bundle") {
        problem(where, "draftOrders.resourceType", "expected a Bundle or a MedicationRequest, found " + std::string(type));
        return out;
    }
    const Json* entries = fhir::member(draft_orders, "entry");
    if (!entries) return out;  // an empty Bundle: nothing is being ordered
    std::vector<const Json*> list;
    if (entries->IsObject()) {
        list.push_back(entries);
    } else if (entries->IsArray()) {
        for (const auto& e : entries->GetArray()) list.push_back(&e);
    } else {
        problem(where, "Bundle.entry", std::string("expected an array of entries, found ") + fhir::json_type_name(*entries));
        return out;
    }
    for (std::size_t i = 0; i < list.size(); ++i) {
        fhir::Location at = where;
        at.entry = static_cast<long>(i);
        const std::string epath = "Bundle.entry[" + std::to_string(i) + "]";
        const Json& e = *list[i];
        if (!e.IsObject()) {
            problem(at, epath, std::string("expected an object, found ") + fhir::json_type_name(e));
            continue;
        }
        const Json* res = fhir::member(e, "resource");
        if (!res) continue;
        std::string_view rtype;
        try {
            rtype = fhir::resource_type(*res, epath + ".resource");
        } catch (const ElementError& err) {
            problem(at, err.path(), err.what());
            continue;
        }
        if (rtype != "MedicationRequest") continue;  // Medication (read through references), ServiceRequest, ...
        one(*res, at, "MedicationRequest (draftOrders entry[" + std::to_string(i) + "])");
    }
    return out;
}

std::size_t count_draft_orders(const rapidjson::Value& draft_orders) {
    if (!draft_orders.IsObject()) return 0;
    auto is_order = [](const Json& res) {
        const Json* rt = fhir::member(res, "resourceType");
        return rt && rt->IsString() && std::string_view(rt->GetString(), rt->GetStringLength()) == "MedicationRequest";
    };
    if (is_order(draft_orders)) return 1;
    const Json* entries = fhir::member(draft_orders, "entry");
    if (!entries) return 0;
    if (entries->IsObject()) {
        const Json* res = fhir::member(*entries, "resource");
        return res && res->IsObject() && is_order(*res) ? 1 : 0;
    }
    if (!entries->IsArray()) return 0;
    std::size_t n = 0;
    for (const auto& e : entries->GetArray()) {
        if (!e.IsObject()) continue;
        const Json* res = fhir::member(e, "resource");
        if (res && res->IsObject() && is_order(*res)) ++n;
    }
    return n;
}

}  // namespace calcalert::mappings
