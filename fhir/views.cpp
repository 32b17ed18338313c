#include "fhir/views.hpp"

#include <charconv>
#include <cstring>

namespace calcalert::fhir {
const char* json_type_name(const Json& v) {
    if (v.IsNull()) return "null";
    if (v.IsBool()) return "a boolean";
    if (v.IsNumber()) return "a number";
    if (v.IsString()) return "a string";
    if (v.IsArray()) return "an array";
    return "an object";
}

namespace {

std::string child(std::string_view path, std::string_view name) {
    std::string out(path);
    out += '.';
    out += name;
    return out;
}

std::string indexed(const std::string& path, std::size_t i) { return path + "[" + std::to_string(i) + "]"; }

// An element path for messages, built on the stack when short (most are), since most are never
// used: `a` + `b`, or `a` + `b` + "[i]".
class PathText {
public:
    PathText(std::string_view a, std::string_view b) { set(a, b, {}, {}); }
    PathText(std::string_view a, std::string_view b, std::size_t i) {
        char num[24];
        num[0] = '[';
        const auto r = std::to_chars(num + 1, num + sizeof num - 1, i);
        *r.ptr = ']';
        set(a, b, std::string_view(num, static_cast<std::size_t>(r.ptr + 1 - num)), {});
    }
    PathText(const PathText&) = delete;
    PathText& operator=(const PathText&) = delete;
    operator std::string_view() const { return view_; }
    std::string str() const { return std::string(view_); }

private:
    void set(std::string_view a, std::string_view b, std::string_view c, std::string_view d) {
        const std::size_t n = a.size() + b.size() + c.size() + d.size();
        char* out = buf_;
        if (n > sizeof buf_) {
            big_.resize(n);
            out = big_.data();
        }
        char* p = out;
        for (std::string_view part : {a, b, c, d}) {
            if (!part.empty()) std::memcpy(p, part.data(), part.size());
            p += part.size();
        }
        view_ = std::string_view(out, n);
    }
    char buf_[96];
    std::string big_;
    std::string_view view_;
};

}  // namespace

const Json* member(const Json& obj, std::string_view name) {
    if (!obj.IsObject()) return nullptr;
    // RapidJSON's FindMember, with the length and the first byte compared before the bytes: FHIR
    // names seldom share both, so most members are passed over without a call to memcmp.
    const std::size_t n = name.size();
    for (auto m = obj.MemberBegin(); m != obj.MemberEnd(); ++m) {
        if (m->name.GetStringLength() != n) continue;
        const char* text = m->name.GetString();
        if (n == 0 || (text[0] == name[0] && std::memcmp(text + 1, name.data() + 1, n - 1) == 0)) return &m->value;
    }
    return nullptr;
}

std::optional<std::string_view> string_member(const Json& obj, std::string_view name, std::string_view path) {
    const Json* v = member(obj, name);
    if (!v) return std::nullopt;
    if (!v->IsString())
        throw ElementError(child(path, name), std::string("expected a string, found ") + json_type_name(*v));
    return std::string_view(v->GetString(), v->GetStringLength());
}

std::optional<double> number_member(const Json& obj, std::string_view name, std::string_view path) {
    const Json* v = member(obj, name);
    if (!v) return std::nullopt;
    if (!v->IsNumber())
        throw ElementError(child(path, name), std::string("expected a number, found ") + json_type_name(*v));
    return v->GetDouble();
}

const Json* object_member(const Json& obj, std::string_view name, std::string_view path) {
    const Json* v = member(obj, name);
    if (!v) return nullptr;
    if (!v->IsObject())
        throw ElementError(child(path, name), std::string("expected an object, found ") + json_type_name(*v));
    return v;
}

const Json* array_member(const Json& obj, std::string_view name, std::string_view path) {
    const Json* v = member(obj, name);
    if (!v) return nullptr;
    if (!v->IsArray())
        throw ElementError(child(path, name), std::string("expected an array, found ") + json_type_name(*v));
    return v;
}

bool CodeableConcept::has_code(std::string_view c) const {
    for (const auto& cd : coding)
        if (cd.code == c) return true;
    return false;
}

std::string_view CodeableConcept::first_code() const {
    for (const auto& cd : coding)
        if (!cd.code.empty()) return cd.code;
    return {};
}

CodeableConcept codeable_concept(const Json* v, std::string_view path) {
    CodeableConcept cc;
    if (!v) return cc;
    if (!v->IsObject()) throw ElementError(std::string(path), std::string("expected an object, found ") + json_type_name(*v));
    cc.present = true;
    if (auto t = string_member(*v, "text", path)) cc.text = *t;
    if (const Json* arr = array_member(*v, "coding", path)) {
        cc.coding.reserve(arr->Size());
        for (rapidjson::SizeType i = 0; i < arr->Size(); ++i) {
            const Json& c = (*arr)[i];
            const PathText cpath(path, ".coding", i);
            if (!c.IsObject()) throw ElementError(cpath.str(), std::string("expected an object, found ") + json_type_name(c));
            Coding cd;
            if (auto s = string_member(c, "system", cpath)) cd.system = *s;
            if (auto s = string_member(c, "code", cpath)) cd.code = *s;
            if (auto s = string_member(c, "display", cpath)) cd.display = *s;
            cc.coding.push_back(cd);
        }
    }
    return cc;
}

Quantity quantity(const Json& v, std::string_view path) {
    if (!v.IsObject()) throw ElementError(std::string(path), std::string("expected an object, found ") + json_type_name(v));
    Quantity q;
    q.value = number_member(v, "value", path);
    if (auto s = string_member(v, "comparator", path)) {
        q.comparator = *s;
        if (q.comparator != "<" && q.comparator != "<=" && q.comparator != ">" && q.comparator != ">=")
            throw ElementError(child(path, "comparator"), "unknown comparator '" + std::string(*s) + "'");
    }
    if (auto s = string_member(v, "unit", path)) q.unit = *s;
    if (auto s = string_member(v, "system", path)) q.system = *s;
    if (auto s = string_member(v, "code", path)) q.code = *s;
    return q;
}

std::string_view resource_type(const Json& json, const std::string& where_path) {
    if (!json.IsObject()) throw ElementError(where_path, std::string("expected a resource object, found ") + json_type_name(json));
    const Json* rt = member(json, "resourceType");
    if (!rt) throw ElementError(where_path, "resource has no resourceType");
    if (!rt->IsString() || rt->GetStringLength() == 0)
        throw ElementError(where_path + ".resourceType", "expected a non-empty string");
    return {rt->GetString(), rt->GetStringLength()};
}

ResourceView::ResourceView(const Json& json, std::string type) : json_(&json), type_(std::move(type)) {
    if (auto s = string_member(json, "id", type_)) id_ = *s;
    if (const Json* meta = object_member(json, "meta", type_)) {
        const PathText mpath(type_, ".meta");
        if (auto s = string_member(*meta, "versionId", mpath)) version_id_ = *s;
        if (auto s = string_member(*meta, "lastUpdated", mpath)) {
            last_updated_ = parse_datetime(*s);
            if (!last_updated_) throw ElementError(child(mpath, "lastUpdated"), "not a valid instant: '" + std::string(*s) + "'");
        }
    }
}

std::string ResourceView::reference() const { return type_ + "/" + std::string(id_); }

std::string ResourceView::versioned_reference() const {
    std::string out = reference();
    if (!version_id_.empty()) out += "/_history/" + std::string(version_id_);
    return out;
}

namespace {
std::string_view subject_of(const Json& json, const std::string& type) {
    if (const Json* subj = object_member(json, "subject", type))
        if (auto r = string_member(*subj, "reference", PathText(type, ".subject"))) return *r;
    return {};
}

std::optional<EpochSeconds> time_member(const Json& obj, std::string_view name, std::string_view path) {
    auto s = string_member(obj, name, path);
    if (!s) return std::nullopt;
    auto t = parse_datetime(*s);
    if (!t) throw ElementError(child(path, name), "not a valid date/time: '" + std::string(*s) + "'");
    return t;
}
}  // namespace

ObservationView::ObservationView(const Json& json) : ResourceView(json, "Observation") {
    if (auto s = string_member(json, "status", type_)) status_ = *s;
    code_ = codeable_concept(member(json, "code"), "Observation.code");
    subject_ = subject_of(json, type_);
}

EffectiveTime ObservationView::effective() const {
    if (auto t = time_member(*json_, "effectiveDateTime", type_)) return {t, "effectiveDateTime"};
    if (const Json* p = object_member(*json_, "effectivePeriod", type_))
        if (auto t = time_member(*p, "start", "Observation.effectivePeriod")) return {t, "effectivePeriod.start"};
    if (auto t = time_member(*json_, "effectiveInstant", type_)) return {t, "effectiveInstant"};
    if (auto t = time_member(*json_, "issued", type_)) return {t, "issued"};
    return {};
}

const Json* ObservationView::value_quantity() const { return object_member(*json_, "valueQuantity", type_); }

bool ObservationView::has_data_absent_reason() const { return member(*json_, "dataAbsentReason") != nullptr; }

std::string_view ObservationView::other_value_element() const {
    static const char* const others[] = {"valueCodeableConcept", "valueString", "valueBoolean", "valueInteger",
                                         "valueRange", "valueRatio", "valueSampledData", "valueTime",
                                         "valueDateTime", "valuePeriod"};
    for (const char* o : others)
        if (member(*json_, o)) return o;
    return {};
}

namespace {
std::optional<Quantity> range_high(const Json& obj, const std::string& path) {
    const Json* rr = array_member(obj, "referenceRange", path);
    if (!rr || rr->Empty()) return std::nullopt;
    const PathText rpath(path, ".referenceRange[0]");
    const Json& first = (*rr)[0];
    if (!first.IsObject()) throw ElementError(rpath.str(), "expected an object");
    const Json* high = object_member(first, "high", rpath);
    if (!high) return std::nullopt;
    Quantity q = quantity(*high, PathText(rpath, ".high"));
    if (!q.value) return std::nullopt;
    return q;
}
}  // namespace

std::optional<Quantity> ObservationView::reference_range_high() const { return range_high(*json_, type_); }

std::vector<ObservationView::Component> ObservationView::components() const {
    std::vector<Component> out;
    const Json* arr = array_member(*json_, "component", type_);
    if (!arr) return out;
    for (rapidjson::SizeType i = 0; i < arr->Size(); ++i) {
        const std::string cpath = indexed("Observation.component", i);
        const Json& c = (*arr)[i];
        if (!c.IsObject()) throw ElementError(cpath, std::string("expected an object, found ") + json_type_name(c));
        Component comp{i, &c, codeable_concept(member(c, "code"), cpath + ".code"), object_member(c, "valueQuantity", cpath),
                       member(c, "dataAbsentReason") != nullptr, range_high(c, cpath)};
        out.push_back(std::move(comp));
    }
    return out;
}

ConditionView::ConditionView(const Json& json) : ResourceView(json, "Condition") {
    code_ = codeable_concept(member(json, "code"), "Condition.code");
    subject_ = subject_of(json, type_);
}

std::string_view ConditionView::clinical_status() const {
    return codeable_concept(member(*json_, "clinicalStatus"), "Condition.clinicalStatus").first_code();
}

std::string_view ConditionView::verification_status() const {
    return codeable_concept(member(*json_, "verificationStatus"), "Condition.verificationStatus").first_code();
}

std::optional<EpochSeconds> ConditionView::onset() const {
    if (auto t = time_member(*json_, "onsetDateTime", type_)) return t;
    if (const Json* p = object_member(*json_, "onsetPeriod", type_)) return time_member(*p, "start", "Condition.onsetPeriod");
    return std::nullopt;
}

std::optional<EpochSeconds> ConditionView::recorded_date() const { return time_member(*json_, "recordedDate", type_); }

ProcedureView::ProcedureView(const Json& json) : ResourceView(json, "Procedure") {
    if (auto s = string_member(json, "status", type_)) status_ = *s;
    code_ = codeable_concept(member(json, "code"), "Procedure.code");
    subject_ = subject_of(json, type_);
}

ProcedureView::Performed ProcedureView::performed() const {
    Performed p;
    if (auto t = time_member(*json_, "performedDateTime", type_)) {
        p.start = p.end = t;
        return p;
    }
    if (const Json* period = object_member(*json_, "performedPeriod", type_)) {
        p.start = time_member(*period, "start", "Procedure.performedPeriod");
        p.end = time_member(*period, "end", "Procedure.performedPeriod");
        if (p.start && p.end && *p.end < *p.start)
            throw ElementError("Procedure.performedPeriod.end", "the period ends before it starts");
        return p;
    }
    for (const char* o : {"performedString", "performedAge", "performedRange"})
        if (member(*json_, o)) p.other = o;
    return p;
}

PatientView::PatientView(const Json& json) : ResourceView(json, "Patient") {}

std::optional<bool> PatientView::deceased_boolean() const {
    const Json* v = member(*json_, "deceasedBoolean");
    if (!v) return std::nullopt;
    if (!v->IsBool())
        throw ElementError("Patient.deceasedBoolean", std::string("expected a boolean, found ") + json_type_name(*v));
    return v->GetBool();
}

std::optional<EpochSeconds> PatientView::deceased_date_time() const {
    return time_member(*json_, "deceasedDateTime", type_);
}

std::optional<std::string> modifier_extension_url(const Json& obj, const std::string& path) {
    const Json* arr = array_member(obj, "modifierExtension", path);
    if (!arr || arr->Empty()) return std::nullopt;
    const Json& first = (*arr)[0];
    const std::string epath = path + ".modifierExtension[0]";
    if (!first.IsObject()) throw ElementError(epath, std::string("expected an object, found ") + json_type_name(first));
    if (auto url = string_member(first, "url", epath)) return std::string(*url);
    return std::string("(no url)");
}

bool ConditionView::has_abatement() const {
    for (const char* a : {"abatementDateTime", "abatementAge", "abatementPeriod", "abatementRange", "abatementString"})
        if (member(*json_, a)) return true;
    return false;
}

std::optional<EpochSeconds> ConditionView::abatement() const {
    if (auto t = time_member(*json_, "abatementDateTime", type_)) return t;
    if (const Json* p = object_member(*json_, "abatementPeriod", type_))
        return time_member(*p, "start", "Condition.abatementPeriod");
    return std::nullopt;
}

std::vector<std::string> operation_outcome_issues(const Json& json) {
    std::vector<std::string> out;
    const Json* issues = array_member(json, "issue", "OperationOutcome");
    if (!issues) return out;
    for (rapidjson::SizeType i = 0; i < issues->Size(); ++i) {
        const Json& is = (*issues)[i];
        if (!is.IsObject()) continue;
        const std::string ipath = indexed("OperationOutcome.issue", i);
        std::string line(string_member(is, "severity", ipath).value_or("error"));
        if (auto c = string_member(is, "code", ipath)) line += " (" + std::string(*c) + ")";
        if (auto d = string_member(is, "diagnostics", ipath)) line += ": " + std::string(*d);
        auto details = codeable_concept(member(is, "details"), ipath + ".details");
        if (!details.text.empty()) line += ": " + std::string(details.text);
        if (const Json* ex = array_member(is, "expression", ipath))
            for (const auto& e : ex->GetArray())
                if (e.IsString()) line += std::string(" [") + e.GetString() + "]";
        out.push_back(std::move(line));
    }
    return out;
}

std::string string_or_empty(const Json& obj, std::string_view name) {
    const Json* v = member(obj, name);
    return v && v->IsString() ? std::string(v->GetString(), v->GetStringLength()) : std::string();
}

}  // namespace calcalert::fhir
