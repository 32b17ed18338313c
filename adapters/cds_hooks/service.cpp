#include "adapters/cds_hooks/service.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "fhir/client.hpp"
#include "fhir/datetime.hpp"
#include "fhir/json_parse.hpp"
#include "fhir/resource_reader.hpp"
#include "mappings/cds_card.hpp"
#include "mappings/detected_issue.hpp"
#include "mappings/fact_builder.hpp"
#include "mappings/order_facts.hpp"
#include "rules/engine.hpp"

namespace calcalert::cds {
namespace {

using Json = rapidjson::Value;
using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

// A reply that ends the call early.
struct Refusal {
    HttpReply reply;
};
[[noreturn]] void refuse(int status, const std::string& code, const std::string& diagnostics) {
    throw Refusal{outcome_reply(status, code, diagnostics)};
}

const Json* member(const Json& o, const char* name) {
    auto it = o.FindMember(name);
    return it == o.MemberEnd() ? nullptr : &it->value;
}

std::string string_of(const Json& v) { return std::string(v.GetString(), v.GetStringLength()); }

// A request body: the server already refused larger ones (413); the nesting depth is the default.
// Parsed in place in `text` (a copy of the body, which must outlive the Document): the Document's
// strings point into it instead of being copied.
fhir::JsonParseResult parse_request(rapidjson::Document& doc, std::string_view body, const ServeConfig& config,
                                    std::unique_ptr<char[]>& text) {
    fhir::JsonParseOptions options;
    options.limits.max_bytes = static_cast<std::size_t>(config.max_body_bytes);
    text = std::make_unique_for_overwrite<char[]>(body.size() + 1);
    options.insitu = text.get();
    return fhir::parse_untrusted_json(doc, body, options);
}

std::string resource_type_of(const Json& v) {
    const Json* t = v.IsObject() ? member(v, "resourceType") : nullptr;
    return t && t->IsString() ? string_of(*t) : std::string();
}

class ClientSource : public FhirSource {
public:
    explicit ClientSource(fhir::ClientOptions options) : client_(std::move(options)) {}
    void fetch(const std::string& query, const std::function<void(const rapidjson::Value&)>& on_page) override {
        if (query.find('?') == std::string::npos) {
            const rapidjson::Document d = client_.get_resource(query);
            on_page(d);
            return;
        }
        client_.search(query, [&on_page](const rapidjson::Document& page) { on_page(page); });
    }

private:
    fhir::FhirClient client_;
};

// Hands every resource of a prefetch value (a resource or a Bundle) to the fact builder; an
// ElementError in one resource becomes a problem, as the file reader does.
void feed(mappings::FactBuilder& builder, const Json& value, const std::string& name) {
    if (!value.IsObject()) return;
    const std::string type = resource_type_of(value);
    if (type == "Bundle") {
        const Json* entries = member(value, "entry");
        if (!entries || !entries->IsArray()) return;
        const fhir::BundleContext ctx = fhir::BundleContext::of(value);
        long index = 0;
        for (const auto& e : entries->GetArray()) {
            const long i = index++;
            if (!e.IsObject()) continue;
            const Json* res = member(e, "resource");
            if (!res || !res->IsObject()) continue;
            const std::string t = resource_type_of(*res);
            if (t.empty() || t == "OperationOutcome") continue;  // search warnings
            fhir::Location where;
            where.file = name;
            where.entry = i;
            const Json* id = member(*res, "id");
            where.resource = t + (id && id->IsString() ? "/" + string_of(*id) : std::string());
            try {
                builder.on_resource(*res, t, where, &ctx);
            } catch (const fhir::ElementError& err) {
                builder.on_problem({fhir::Severity::error, where, err.path(), err.what()});
            }
        }
        return;
    }
    if (type.empty()) return;
    fhir::Location where;
    where.file = name;
    const Json* id = member(value, "id");
    where.resource = type + (id && id->IsString() ? "/" + string_of(*id) : std::string());
    try {
        builder.on_resource(value, type, where, nullptr);
    } catch (const fhir::ElementError& err) {
        builder.on_problem({fhir::Severity::error, where, err.path(), err.what()});
    }
}

// The link[relation=next] of a Bundle, or "".
std::string next_link(const Json& bundle) {
    const Json* links = member(bundle, "link");
    if (!links || !links->IsArray()) return {};
    for (const auto& l : links->GetArray()) {
        if (!l.IsObject()) continue;
        const Json* rel = member(l, "relation");
        const Json* url = member(l, "url");
        if (rel && rel->IsString() && url && url->IsString() && std::string_view(rel->GetString()) == "next")
            return string_of(*url);
    }
    return {};
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

}  // namespace

const std::vector<ServiceDef>& service_definitions() {
    static const std::vector<ServiceDef> defs = {
        {"calcalert-patient-view", "patient-view", "Calciphylaxis and calcinosis alerts",
         "Checks the patient's calcium, phosphate, PTH, eGFR and albumin results, dialysis procedures and problem list for "
         "calciphylaxis and calcinosis risk (eight rules: suspected calciphylaxis, calciphylaxis in the "
         "differential of a skin ulcer, calciphylaxis risk, wound sepsis risk, metastatic calcification risk, "
         "dystrophic calcinosis watch, calcinosis infection risk, metastatic pattern).",
         false},
        {"calcalert-order-select", "order-select", "Calcium/phosphate infusion and corticosteroid order checks",
         "Checks selected draft MedicationRequests (RxNorm) for intravenous calcium or phosphate salts "
         "(extravasation risk) and systemic corticosteroids in a patient with calciphylaxis; also shows the "
         "patient's critical calciphylaxis findings.",
         true},
        {"calcalert-order-sign", "order-sign", "Calcium/phosphate infusion and corticosteroid order checks at signing",
         "Checks draft MedicationRequests (RxNorm) about to be signed for intravenous calcium or phosphate "
         "salts (extravasation risk) and systemic corticosteroids in a patient with calciphylaxis; also shows "
         "the patient's critical calciphylaxis findings.",
         true},
    };
    return defs;
}

const ServiceDef* find_service(std::string_view id) {
    for (const auto& d : service_definitions())
        if (d.id == id) return &d;
    return nullptr;
}

std::vector<std::string> lab_code_tokens(const std::filesystem::path& tsv) {
    std::ifstream in(tsv);
    if (!in) throw std::runtime_error(tsv.string() + ": cannot be read");
    std::vector<std::string> out;
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') continue;
        std::stringstream ss(line);
        std::string system, code;
        if (!std::getline(ss, system, '\t') || !std::getline(ss, code, '\t') || system.empty() || code.empty()) continue;
        const std::string token = system + "|" + code;
        if (std::find(out.begin(), out.end(), token) == out.end()) out.push_back(token);
    }
    if (out.empty()) throw std::runtime_error(tsv.string() + ": no lab codes");
    return out;
}

std::map<std::string, std::string> prefetch_templates(const std::vector<std::string>& lab_tokens,
                                                      const std::vector<std::string>& procedure_tokens) {
    auto list = [](const std::vector<std::string>& tokens) {
        std::string out;
        for (const auto& t : tokens) out += (out.empty() ? "" : ",") + t;
        return out;
    };
    std::map<std::string, std::string> templates{
        {"observations", "Observation?patient={{context.patientId}}&code=" + list(lab_tokens) + "&_sort=-date"},
        {"conditions", "Condition?patient={{context.patientId}}"},
        {"patient", "Patient/{{context.patientId}}"},
    };
    if (!procedure_tokens.empty())
        templates["procedures"] = "Procedure?patient={{context.patientId}}&code=" + list(procedure_tokens) + "&_sort=-date";
    return templates;
}

std::string render_template(const std::string& tmpl, const std::string& patient_id) {
    static const std::string token = "{{context.patientId}}";
    std::string out = tmpl;
    for (auto pos = out.find(token); pos != std::string::npos; pos = out.find(token, pos + patient_id.size()))
        out.replace(pos, token.size(), patient_id);
    return out;
}

bool is_fhir_id(std::string_view s) {
    if (s.empty() || s.size() > 64) return false;
    return std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
    });
}

std::string discovery_json(const std::vector<std::string>& lab_tokens, const std::vector<std::string>& procedure_tokens) {
    const auto templates = prefetch_templates(lab_tokens, procedure_tokens);
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    w.Key("services");
    w.StartArray();
    for (const auto& d : service_definitions()) {
        w.StartObject();
        w.Key("hook");
        w.String(d.hook);
        w.Key("id");
        w.String(d.id);
        w.Key("title");
        w.String(d.title);
        w.Key("description");
        w.String(d.description);
        w.Key("prefetch");
        w.StartObject();
        for (const auto& [k, v] : templates) {
            w.Key(k.c_str(), static_cast<rapidjson::SizeType>(k.size()));
            w.String(v);
        }
        w.EndObject();
        w.Key("usageRequirements");
        w.String("Send a JWT signed with ES384 or RS384 by a registered issuer. Observations, Conditions, dialysis "
                 "Procedures and the Patient are read from the prefetch or, when a key is missing, from fhirServer "
                 "(which must be registered with the service) with fhirAuthorization, or with the service's own "
                 "credentials for that server where it has them.");
        w.EndObject();
    }
    w.EndArray();
    w.EndObject();
    return sb.GetString();
}

HttpReply outcome_reply(int status, const std::string& code, const std::string& diagnostics) {
    rapidjson::StringBuffer sb;
    mappings::JsonWriter w(sb);
    mappings::write_operation_outcome(w, {{"error", code, diagnostics, ""}});
    HttpReply r;
    r.status = status;
    r.body = sb.GetString();
    r.content_type = "application/fhir+json";
    return r;
}

FhirSourceFactory fhir_client_sources(const ServeConfig& config, ServerCredentials credentials) {
    const int timeout = config.fhir_timeout_ms;
    const std::string ca = config.fhir_ca_file;
    return [timeout, ca, credentials = std::move(credentials)](const std::string& server, const std::string& token,
                                                              std::chrono::steady_clock::time_point end_by) -> std::unique_ptr<FhirSource> {
        fhir::ClientOptions o;
        o.base_url = server;
        o.bearer_token = token;
        if (token.empty())
            if (const auto own = credentials.find(normalize_base_url(server)); own != credentials.end()) o.token_provider = own->second;
        o.ca_file = ca;
        o.connect_timeout = std::chrono::milliseconds(timeout);
        o.request_timeout = std::chrono::milliseconds(timeout);
        o.max_retries = 1;
        o.initial_backoff = std::chrono::milliseconds(100);
        o.max_backoff = std::chrono::milliseconds(500);
        o.max_pages = 50;
        o.user_agent = "calcalert-cds-hooks";
        o.end_by = end_by;
        return std::make_unique<ClientSource>(std::move(o));
    };
}

CdsService::CdsService(const ServeConfig& config, const mappings::Terminology& terminology,
                       const rules::RuleCatalog& catalog, state::StateStore& store, Metrics& metrics,
                       FhirSourceFactory sources, std::vector<std::string> lab_tokens,
                       const mappings::Medications* medications)
    : config_(config), term_(terminology), catalog_(catalog), medications_(medications), store_(store), metrics_(metrics),
      sources_(std::move(sources)), templates_(prefetch_templates(lab_tokens, terminology.procedure_tokens())),
      discovery_(discovery_json(lab_tokens, terminology.procedure_tokens())) {
    card_options_.identifier_system = config.identifier_system;
    card_options_.rule_system = config.rule_system;
    for (const auto& s : config.fhir_servers) allowed_servers_.push_back(normalize_base_url(s));
    Metrics::LabelSets labels;
    for (const auto& d : service_definitions()) labels.services.push_back(d.id);
    for (const auto& r : catalog.rules()) labels.rules.push_back(r.id);
    for (const auto& r : catalog.order_rules()) labels.rules.push_back(r.id);
    for (const auto& r : card_options_.override_reasons) labels.override_reasons.push_back(r.code);
    for (const auto& [key, tmpl] : templates_) labels.prefetch_keys.push_back(key);
    metrics_.register_labels(labels);
}

HttpReply CdsService::call(const ServiceDef& service, std::string_view body, std::int64_t now,
                           const std::string& issuer, std::chrono::steady_clock::time_point end_by) {
    try {
        std::unique_ptr<char[]> text;  // what `req` points into
        rapidjson::Document req;
        if (const auto parsed = parse_request(req, body, config_, text); !parsed)
            refuse(400, "structure", "the request body is not acceptable JSON: " + parsed.error->describe());
        if (!req.IsObject()) refuse(400, "structure", "the request body is not a JSON object");
        const Json* hook = member(req, "hook");
        if (!hook || !hook->IsString()) refuse(400, "required", "hook: required string");
        if (string_of(*hook) != service.hook)
            refuse(400, "invalid", "hook: this service answers " + service.hook + ", not " + string_of(*hook));
        const Json* instance = member(req, "hookInstance");
        if (!instance || !instance->IsString() || instance->GetStringLength() == 0)
            refuse(400, "required", "hookInstance: required string");
        const Json* context = member(req, "context");
        if (!context || !context->IsObject()) refuse(400, "required", "context: required object");
        const Json* pid = member(*context, "patientId");
        if (!pid || !pid->IsString()) refuse(400, "required", "context.patientId: required string");
        const std::string patient_id = string_of(*pid);
        if (!is_fhir_id(patient_id)) refuse(400, "value", "context.patientId: not a FHIR id");
        const Json* draft = member(*context, "draftOrders");
        if (draft && !draft->IsObject() && !draft->IsNull())
            refuse(400, "structure", "context.draftOrders: expected a Bundle object");
        if (draft && draft->IsObject() && service.order_hook) {
            // A bounded number of orders per call, before anything is read or fetched.
            if (const std::size_t n = mappings::count_draft_orders(*draft); n > mappings::kMaxDraftOrders)
                refuse(400, "too-costly",
                       "context.draftOrders: " + std::to_string(n) + " MedicationRequests; at most " +
                           std::to_string(mappings::kMaxDraftOrders) + " draft orders per call");
        }

        std::string fhir_server;
        if (const Json* fs = member(req, "fhirServer"); fs && !fs->IsNull()) {
            if (!fs->IsString()) refuse(400, "structure", "fhirServer: expected a URL string");
            fhir_server = string_of(*fs);
            if (fhir_server.rfind("https://", 0) != 0 && fhir_server.rfind("http://", 0) != 0)
                refuse(400, "value", "fhirServer: not an http(s) URL");
            const std::string norm = normalize_base_url(fhir_server);
            if (std::find(allowed_servers_.begin(), allowed_servers_.end(), norm) == allowed_servers_.end())
                refuse(403, "forbidden", "fhirServer is not registered with this service: " + fhir_server);
        }
        std::string token;
        if (const Json* fa = member(req, "fhirAuthorization"); fa && !fa->IsNull()) {
            if (!fa->IsObject()) refuse(400, "structure", "fhirAuthorization: expected an object");
            if (fhir_server.empty()) refuse(400, "required", "fhirAuthorization needs fhirServer");
            const Json* at = member(*fa, "access_token");
            const Json* tt = member(*fa, "token_type");
            if (!at || !at->IsString() || at->GetStringLength() == 0)
                refuse(400, "required", "fhirAuthorization.access_token: required string");
            if (!tt || !tt->IsString() || lower(string_of(*tt)) != "bearer")
                refuse(400, "value", "fhirAuthorization.token_type: must be Bearer");
            token = string_of(*at);
        }
        const Json* prefetch = member(req, "prefetch");
        if (prefetch && !prefetch->IsObject() && !prefetch->IsNull())
            refuse(400, "structure", "prefetch: expected an object");

        // The shape of every prefetch key first (400), before anything is fetched.
        if (prefetch && prefetch->IsObject())
            for (const auto& [key, tmpl] : templates_) {
                const Json* value = member(*prefetch, key.c_str());
                if (!value || value->IsNull()) continue;
                if (!value->IsObject()) refuse(400, "structure", "prefetch." + key + ": expected a FHIR resource or null");
                if (resource_type_of(*value).empty()) refuse(400, "structure", "prefetch." + key + ": no resourceType");
            }

        // Prefetch resolution.
        mappings::FactBuilder builder(term_, fhir_server);
        std::unique_ptr<FhirSource> source;
        auto fhir = [&]() -> FhirSource& {
            if (!source) source = sources_(fhir_server, token, end_by);
            return *source;
        };
        for (const auto& [key, tmpl] : templates_) {
            const Json* value = prefetch && prefetch->IsObject() ? member(*prefetch, key.c_str()) : nullptr;
            const std::string name = "prefetch." + key;
            bool fetch = value == nullptr;
            if (value && value->IsNull()) {
                metrics_.prefetch(key, "null");
                continue;
            }
            if (value && !value->IsObject()) refuse(400, "structure", name + ": expected a FHIR resource or null");
            if (value && resource_type_of(*value).empty()) refuse(400, "structure", name + ": no resourceType");
            if (value && resource_type_of(*value) == "OperationOutcome") {
                metrics_.prefetch(key, "outcome");
                if (config_.prefetch_outcome_policy == OutcomePolicy::fail)
                    refuse(412, "incomplete", name + ": the client could not supply it (an OperationOutcome)");
                fetch = true;
            }
            if (!fetch) {
                metrics_.prefetch(key, "hit");
                feed(builder, *value, name);
                // A prefetched first page of a search: the rest comes from fhirServer.
                const std::string next = resource_type_of(*value) == "Bundle" ? next_link(*value) : std::string();
                if (!next.empty()) {
                    if (fhir_server.empty())
                        refuse(412, "incomplete", name + ": a paged Bundle and no fhirServer to read the other pages");
                    metrics_.prefetch(key, "fallback");
                    try {
                        fhir().fetch(next, [&](const Json& page) { feed(builder, page, name); });
                    } catch (const std::exception& e) {
                        refuse(412, "incomplete", name + ": the next pages could not be read from fhirServer: " + e.what());
                    }
                }
                continue;
            }
            if (fhir_server.empty())
                refuse(412, "incomplete", name + ": not in the prefetch and no fhirServer to read it from");
            metrics_.prefetch(key, "fallback");
            std::string query;
            for (char c : render_template(tmpl, patient_id)) query += c == '|' ? std::string("%7C") : std::string(1, c);
            try {
                fhir().fetch(query, [&](const Json& page) {
                    if (resource_type_of(page) == "OperationOutcome")
                        throw std::runtime_error("the server answered with an OperationOutcome");
                    feed(builder, page, name);
                });
            } catch (const Refusal&) {
                throw;
            } catch (const fhir::FhirError& e) {
                // A read (the Patient) of a resource the server does not have: no data, as a null key.
                const bool read = query.find('?') == std::string::npos;
                if (!read || e.kind() != fhir::FhirErrorKind::http_status || (e.status() != 404 && e.status() != 410))
                    refuse(412, "incomplete", name + ": could not be read from fhirServer: " + e.what());
            } catch (const std::exception& e) {
                refuse(412, "incomplete", name + ": could not be read from fhirServer: " + e.what());
            }
        }

        // Facts -> findings -> cards.
        const std::string patient = "Patient/" + patient_id;
        rules::PatientFacts empty;
        empty.patient = patient;
        auto it = builder.patients().find(patient);
        const rules::PatientFacts& facts = it == builder.patients().end() ? empty : it->second;
        const rules::Evaluation eval = rules::evaluate(facts, now, catalog_);

        // The caller's overrides in force for this patient: (rule, order) -> the evidence hash overridden.
        // A card stays hidden only while its finding still has that evidence.
        std::map<std::pair<std::string, std::string>, std::string> overridden;
        for (auto& o : store_.overrides_in_force(issuer, patient, now))
            overridden[{o.rule_id, o.order}] = std::move(o.evidence_hash);
        auto hidden = [&overridden](const rules::Finding& f) {
            const auto o = overridden.find({f.rule->id, f.order});
            return o != overridden.end() && o->second == f.evidence_hash;
        };

        std::vector<const rules::Finding*> shown;
        for (const auto& f : eval.findings) {
            if (service.order_hook && f.rule->severity != rules::RuleSeverity::high) continue;
            if (hidden(f)) continue;
            shown.push_back(&f);
        }
        // Order rules over the draft orders (order-select: only the selected ones, when `selections` names any).
        rules::Evaluation order_eval;
        if (service.order_hook && draft && draft->IsObject() && medications_) {
            const mappings::OrderReading reading = mappings::read_draft_orders(*draft, *medications_);
            std::vector<std::string> selections;
            if (const Json* sel = member(*context, "selections"); sel && sel->IsArray())
                for (const auto& s : sel->GetArray())
                    if (s.IsString()) selections.push_back(string_of(s));
            order_eval = rules::evaluate_orders(facts, reading.facts, now, catalog_);
            for (const auto& f : order_eval.findings) {
                if (!selections.empty() && std::find(selections.begin(), selections.end(), f.order) == selections.end())
                    continue;
                if (hidden(f)) continue;
                shown.push_back(&f);
            }
        }

        // Each card links to its explanation page; what the page needs is held under the link's id.
        std::shared_ptr<const ExplainSnapshot> snapshot;
        if (explain_ && !shown.empty()) {
            auto s = std::make_shared<ExplainSnapshot>();
            s->facts = facts;
            s->notes = eval.notes;
            s->now = now;
            snapshot = std::move(s);
        }
        rapidjson::StringBuffer sb;
        mappings::JsonWriter w(sb);
        w.StartObject();
        w.Key("cards");
        w.StartArray();
        for (const auto* f : shown) {
            std::vector<mappings::CardLink> links;
            if (snapshot)
                links.push_back({"Explain this alert: evidence, lab trend and guidance",
                                 base_url_() + explain_->link_path(snapshot, *f, mappings::card_uuid(*f), issuer, now),
                                 "absolute"});
            mappings::write_card(w, *f, card_options_, links);
            metrics_.card(f->rule->id);
        }
        w.EndArray();
        w.EndObject();

        // Remember which cards this issuer was issued, and what each was about, for feedback.
        std::map<std::string, std::string> issued;  // card uuid -> "evidence hash|severity" already recorded
        for (auto& c : store_.issued_cards_for_patient(issuer, service.id, patient))
            issued[c.card_uuid] = c.evidence_hash + "|" + c.severity;
        std::vector<state::IssuedCard> changed;
        for (const auto* f : shown) {
            state::IssuedCard c;
            c.issuer = issuer;
            c.service_id = service.id;
            c.card_uuid = mappings::card_uuid(*f);
            c.patient = patient;
            c.rule_id = f->rule->id;
            c.order = f->order;
            c.severity = std::string(rules::to_string(f->rule->severity));
            c.evidence_hash = f->evidence_hash;
            c.issued_at = now;
            const auto known = issued.find(c.card_uuid);
            if (known != issued.end() && known->second == c.evidence_hash + "|" + c.severity) continue;
            changed.push_back(std::move(c));
        }
        if (!changed.empty())
            store_.transaction([&] {
                for (const auto& c : changed) store_.put_issued_card(c);
            });
        HttpReply r;
        r.body = sb.GetString();
        return r;
    } catch (const Refusal& refusal) {
        return refusal.reply;
    }
}

HttpReply CdsService::feedback(const ServiceDef& service, std::string_view body, std::int64_t now,
                               const std::string& issuer) {
    try {
        std::unique_ptr<char[]> text;  // what `req` points into
        rapidjson::Document req;
        if (const auto parsed = parse_request(req, body, config_, text); !parsed)
            refuse(400, "structure", "the feedback body is not acceptable JSON: " + parsed.error->describe());
        if (!req.IsObject()) refuse(400, "structure", "the feedback body is not a JSON object");
        const Json* list = member(req, "feedback");
        if (!list || !list->IsArray() || list->Empty()) refuse(400, "required", "feedback: required non-empty list");
        struct Entry {
            state::FeedbackRecord rec;
            std::string reason_system;  // overrideReason.reason.system ("" when absent)
        };
        std::vector<Entry> entries;
        rapidjson::SizeType index = 0;
        for (const auto& item : list->GetArray()) {
            const std::string p = "feedback[" + std::to_string(index++) + "]";
            if (!item.IsObject()) refuse(400, "structure", p + ": expected an object");
            const Json* card = member(item, "card");
            const Json* outcome = member(item, "outcome");
            const Json* when = member(item, "outcomeTimestamp");
            if (!card || !card->IsString() || card->GetStringLength() == 0) refuse(400, "required", p + ".card: required string");
            if (!outcome || !outcome->IsString()) refuse(400, "required", p + ".outcome: required string");
            const std::string oc = string_of(*outcome);
            if (oc != "accepted" && oc != "overridden") refuse(400, "value", p + ".outcome: must be accepted or overridden");
            if (!when || !when->IsString()) refuse(400, "required", p + ".outcomeTimestamp: required string");
            const auto at = fhir::parse_datetime(string_of(*when));
            if (!at) refuse(400, "value", p + ".outcomeTimestamp: not a date-time");
            Entry e;
            e.rec.issuer = issuer;
            e.rec.service_id = service.id;
            e.rec.card_uuid = string_of(*card);
            e.rec.outcome = oc;
            e.rec.outcome_at = *at;
            e.rec.received_at = now;
            if (const Json* reason = member(item, "overrideReason"); reason && !reason->IsNull()) {
                if (!reason->IsObject()) refuse(400, "structure", p + ".overrideReason: expected an object");
                if (const Json* coding = member(*reason, "reason"); coding && !coding->IsNull()) {
                    if (!coding->IsObject()) refuse(400, "structure", p + ".overrideReason.reason: expected a Coding");
                    const Json* code = member(*coding, "code");
                    if (code && !code->IsString()) refuse(400, "structure", p + ".overrideReason.reason.code: expected a string");
                    if (code) e.rec.override_reason = string_of(*code);
                    const Json* system = member(*coding, "system");
                    if (system && system->IsString()) e.reason_system = string_of(*system);
                }
            }
            entries.push_back(std::move(e));
        }

        // Only cards this issuer was issued by this service count; the rest is ignored.
        std::vector<Entry> bound;
        std::vector<state::CardOverride> overrides;
        std::size_t ignored = 0;
        for (auto& e : entries) {
            const auto card = store_.issued_card(issuer, service.id, e.rec.card_uuid);
            if (!card) {
                ++ignored;
                continue;
            }
            e.rec.patient = card->patient;
            e.rec.rule_id = card->rule_id;
            e.rec.order = card->order;
            e.rec.evidence_hash = card->evidence_hash;
            if (e.rec.outcome == "overridden") {
                // A critical card is hidden only by an override with a coded reason, and for less long.
                const bool critical = card->severity == rules::to_string(rules::RuleSeverity::high);
                const std::int64_t hours = critical ? (e.rec.override_reason.empty() ? 0 : config_.critical_override_hours)
                                                    : config_.override_suppression_hours;
                if (hours > 0)
                    overrides.push_back({issuer, card->patient, card->rule_id, card->order, card->card_uuid,
                                         card->evidence_hash, now + hours * 3600});
            }
            bound.push_back(std::move(e));
        }
        if (!bound.empty())
            store_.transaction([&] {
                for (const auto& e : bound) store_.record_feedback(e.rec);
                for (const auto& o : overrides) store_.put_override(o);
            });
        for (std::size_t i = 0; i < ignored; ++i) metrics_.feedback_ignored();
        for (const auto& e : bound) {
            metrics_.feedback(e.rec.outcome);
            if (e.rec.outcome != "overridden") continue;
            // Reasons are counted by code when they are the cards' own (our system or none named).
            const bool ours = e.reason_system.empty() || e.reason_system == card_options_.override_reason_system;
            metrics_.override_reason(e.rec.rule_id, ours || e.rec.override_reason.empty() ? e.rec.override_reason : "other");
        }
        HttpReply r;
        r.body = "{}";
        return r;
    } catch (const Refusal& refusal) {
        return refusal.reply;
    }
}

}  // namespace calcalert::cds
