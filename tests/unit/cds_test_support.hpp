// Shared by the CDS Hooks unit and integration tests: signing real ES384/RS384 JWTs as a CDS client
// would, and cutting the example cohort into per-patient prefetch Bundles.
#pragma once

#include <fstream>
#include <sstream>
#include <map>
#include <string>
#include <vector>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "jose/jws.hpp"

namespace cdstest {

inline std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

struct Claims {
    std::string iss = "https://ehr.example.org";
    std::string aud;
    std::int64_t iat = 0;
    std::int64_t exp = 0;
    std::string jti;
    std::string jku;  // header jku ("" = none)
    std::string typ = "JWT";
};

inline std::string header_json(const std::string& alg, const std::string& kid, const Claims& c) {
    std::string h = "{\"alg\":\"" + alg + "\",\"typ\":\"" + c.typ + "\",\"kid\":\"" + kid + "\"";
    if (!c.jku.empty()) h += ",\"jku\":\"" + c.jku + "\"";
    return h + "}";
}

inline std::string payload_json(const Claims& c) {
    return "{\"iss\":\"" + c.iss + "\",\"sub\":\"client-1\",\"aud\":\"" + c.aud + "\",\"exp\":" + std::to_string(c.exp) +
           ",\"iat\":" + std::to_string(c.iat) + ",\"jti\":\"" + c.jti + "\"}";
}

inline std::string sign(const calcalert::jose::PrivateKey& key, const Claims& c) {
    return calcalert::jose::sign_compact_jws(header_json(key.alg, key.kid, c), payload_json(c), key);
}

// alg "none" and HS256 forgeries (the HMAC key being the public JWK text, the classic confusion attack).
inline std::string unsigned_token(const std::string& kid, const Claims& c) {
    return calcalert::jose::base64url_encode(header_json("none", kid, c)) + "." +
           calcalert::jose::base64url_encode(payload_json(c)) + ".";
}

inline std::string jwks_of(const std::vector<const calcalert::jose::PrivateKey*>& keys) {
    std::string s = "{\"keys\":[";
    for (std::size_t i = 0; i < keys.size(); ++i) s += (i ? "," : "") + calcalert::jose::public_jwk_json(*keys[i]);
    return s + "]}";
}

// Flips one bit in the signature part of a compact JWS.
inline std::string tamper_signature(std::string token) {
    const auto dot = token.rfind('.');
    char& c = token[dot + 5];
    c = c == 'A' ? 'B' : 'A';
    return token;
}

// The example cohort's resources of one patient, split into a searchset Bundle of Observations, one
// of Conditions and one of Procedures, and the Patient (as an EHR would prefetch them). `rename`
// replaces the patient id in every id and reference (to keep copies apart on a shared FHIR server).
struct PatientData {
    std::string observations;  // searchset Bundle JSON
    std::string conditions;
    std::string procedures;
    std::string patient = "null";        // the Patient resource JSON, or null
    std::vector<std::string> resources;  // every resource, for seeding a FHIR server
    // The prefetch object with every key.
    std::string prefetch() const {
        return "{\"observations\":" + observations + ",\"conditions\":" + conditions + ",\"procedures\":" + procedures +
               ",\"patient\":" + patient + "}";
    }
};

// A prefetch object with every key: those given (key -> JSON text), the others null.
inline std::string null_prefetch(const std::map<std::string, std::string>& given = {}) {
    std::string out;
    for (const char* key : {"observations", "conditions", "procedures", "patient"}) {
        const auto it = given.find(key);
        out += (out.empty() ? "{" : ",") + std::string("\"") + key + "\":" + (it == given.end() ? "null" : it->second);
    }
    return out + "}";
}

inline std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    for (auto pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size())) s.replace(pos, from.size(), to);
    return s;
}

inline PatientData cohort_patient(const std::string& cohort_path, const std::string& id, const std::string& rename = "") {
    rapidjson::Document d;
    const std::string text = read_file(cohort_path);
    d.Parse(text.c_str());
    PatientData out;
    std::string obs, cond, proc;
    for (const auto& e : d["entry"].GetArray()) {
        rapidjson::StringBuffer sb;
        rapidjson::Writer<rapidjson::StringBuffer> w(sb);
        e["resource"].Accept(w);
        std::string r = sb.GetString();
        if (r.find("\"Patient/" + id + "\"") == std::string::npos && r.find("\"id\":\"" + id + "\"") == std::string::npos)
            continue;
        if (!rename.empty()) r = replace_all(r, id, rename);
        out.resources.push_back(r);
        const std::string type = e["resource"]["resourceType"].GetString();
        if (type == "Observation") obs += (obs.empty() ? "" : ",") + std::string("{\"resource\":") + r + "}";
        if (type == "Condition") cond += (cond.empty() ? "" : ",") + std::string("{\"resource\":") + r + "}";
        if (type == "Procedure") proc += (proc.empty() ? "" : ",") + std::string("{\"resource\":") + r + "}";
        if (type == "Patient") out.patient = r;
    }
    out.observations = "{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"entry\":[" + obs + "]}";
    out.conditions = "{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"entry\":[" + cond + "]}";
    out.procedures = "{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"entry\":[" + proc + "]}";
    return out;
}

inline std::string call_body(const std::string& hook, const std::string& patient_id, const std::string& prefetch_json,
                             const std::string& fhir_server = "", const std::string& access_token = "") {
    std::string b = "{\"hook\":\"" + hook + "\",\"hookInstance\":\"d1577c69-dfbe-44ad-ba6d-3e05e953b2ea\"";
    if (!fhir_server.empty()) b += ",\"fhirServer\":\"" + fhir_server + "\"";
    if (!access_token.empty())
        b += ",\"fhirAuthorization\":{\"access_token\":\"" + access_token +
             "\",\"token_type\":\"Bearer\",\"expires_in\":300,\"scope\":\"patient/Observation.read patient/Condition.read\","
             "\"subject\":\"calcalert\"}";
    b += ",\"context\":{\"userId\":\"Practitioner/123\",\"patientId\":\"" + patient_id + "\"}";
    if (!prefetch_json.empty()) b += ",\"prefetch\":" + prefetch_json;
    return b + "}";
}

}  // namespace cdstest
