#include <doctest/doctest.h>

#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "fhir/json_parse.hpp"
#include "fhir/resource_reader.hpp"

using namespace calcalert::fhir;

namespace {

JsonParseResult strict(rapidjson::Document& d, std::string_view text, JsonLimits limits = {}) {
    return parse_untrusted_json(d, text, limits);
}

JsonParseResult lenient(rapidjson::Document& d, std::string_view text, JsonLimits limits = {}) {
    JsonParseOptions o;
    o.limits = limits;
    o.keep_going = true;
    return parse_untrusted_json(d, text, o);
}

std::string nested(std::size_t depth, std::string_view inside = "1") {
    return std::string(depth, '[') + std::string(inside) + std::string(depth, ']');
}

}  // namespace

TEST_CASE("well-formed JSON parses as RapidJSON would, with the end offset") {
    rapidjson::Document d;
    const auto r = strict(d, R"( {"a":[1,-2,3.5,4294967296,true,null,"x\u00e9"],"b":{}} )");
    REQUIRE(r.ok());
    CHECK(r.defects.empty());
    CHECK(d["a"][0].IsInt());
    CHECK(d["a"][3].IsInt64());
    CHECK(d["a"][2].GetDouble() == 3.5);
    CHECK(std::string(d["a"][6].GetString()) == "x\xC3\xA9");
    CHECK(r.end == 55);
}

TEST_CASE("a leading UTF-8 BOM is skipped; offsets still count it") {
    rapidjson::Document d;
    REQUIRE(strict(d, "\xEF\xBB\xBF{\"resourceType\":\"Patient\"}").ok());
    CHECK(std::string(d["resourceType"].GetString()) == "Patient");
    const auto r = strict(d, "\xEF\xBB\xBF{\"a\":}");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error->kind == JsonErrorKind::syntax);
    CHECK(r.error->offset == 8);
    CHECK(d.IsNull());
    // Only one, and only at the start.
    CHECK_FALSE(strict(d, "\xEF\xBB\xBF\xEF\xBB\xBF{}").ok());
    CHECK_FALSE(strict(d, "{} \xEF\xBB\xBF").ok());
    CHECK_FALSE(strict(d, "\xEF\xBB\xBF").ok());
}

TEST_CASE("nesting beyond the limit is an error at the bracket, without recursion") {
    rapidjson::Document d;
    CHECK(strict(d, nested(100)).ok());
    const auto r = strict(d, nested(101));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error->kind == JsonErrorKind::too_deep);
    CHECK(r.error->offset == 100);
    CHECK(r.error->message == "nested deeper than 100 levels");
    CHECK(r.error->path.size() == 100);
    CHECK(r.error->describe().rfind("byte offset 100 ($[0][0][0][0][0][0][0][0]…(88 more)…[0][0][0][0]): nested", 0) == 0);
    JsonLimits three;
    three.max_depth = 3;
    const auto obj = strict(d, R"({"a":{"b":{"c":{}}}})", three);
    REQUIRE_FALSE(obj.ok());
    CHECK(obj.error->offset == 15);
    CHECK(render_json_path(obj.error->path, "$") == "$.a.b.c");
    // 120,000 levels: a clear error, in strict and in keep-going mode, objects and arrays.
    std::string deep_objects;
    for (int i = 0; i < 120000; ++i) deep_objects += "{\"a\":";
    deep_objects += "1";
    deep_objects += std::string(120000, '}');
    for (const std::string& text : {nested(120000), deep_objects}) {
        const auto s = strict(d, text);
        REQUIRE_FALSE(s.ok());
        CHECK(s.error->kind == JsonErrorKind::too_deep);
        CHECK(s.error->path.size() == 100);
        const auto k = lenient(d, text);
        REQUIRE(k.ok());
        REQUIRE(k.defects.size() == 1);
        CHECK(k.defects[0].kind == JsonErrorKind::too_deep);
        CHECK(k.defects[0].offset == s.error->offset);
        CHECK(k.defects[0].path == s.error->path);
    }
    CHECK(strict(d, nested(120000)).error->offset == 100);
    CHECK(strict(d, deep_objects).error->offset == 500);
    CHECK(render_json_path(strict(d, deep_objects).error->path, "$").rfind("$.a.a.a.a.a.a.a.a…(88 more)….a.a.a.a", 0) == 0);
    // Unclosed: still no crash, a syntax error.
    CHECK(strict(d, std::string(200000, '[')).error->kind == JsonErrorKind::too_deep);
    CHECK(lenient(d, std::string(200000, '[')).error->kind == JsonErrorKind::syntax);
}

TEST_CASE("keep-going: a subtree too deep becomes null and the rest is read") {
    rapidjson::Document d;
    JsonLimits three;
    three.max_depth = 3;
    const auto r = lenient(d, R"({"entry":[{"x":[[1]]},{"ok":true}],"after":2})", three);
    REQUIRE(r.ok());
    REQUIRE(r.defects.size() == 1);
    CHECK(render_json_path(r.defects[0].path, "$") == "$.entry[0].x");
    CHECK(d["entry"][0]["x"].IsNull());
    CHECK(d["entry"][1]["ok"].GetBool());
    CHECK(d["after"].GetInt() == 2);
    // After a skipped subtree (the iterative parser), strings and numbers are still checked, at
    // the same offsets as without one.
    const std::string tail = "{\"ok\":true,\"s\":\"\xFF\",\"n\":2e308,\"k\xFF\":1}";
    const auto after = lenient(d, R"({"entry":[{"x":[[1]]},)" + tail + "]}", three);
    const auto alone = lenient(d, R"({"entry":[{"x":12345},)" + tail + "]}", three);
    REQUIRE(after.ok());
    REQUIRE(alone.ok());
    REQUIRE(after.defects.size() == 4);
    REQUIRE(alone.defects.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) {
        CHECK(after.defects[i + 1].offset == alone.defects[i].offset);
        CHECK(after.defects[i + 1].path == alone.defects[i].path);
        CHECK(after.defects[i + 1].message == alone.defects[i].message);
    }
    CHECK(render_json_path(alone.defects[0].path, "$") == "$.entry[1].s");
    CHECK(alone.defects[0].offset == 38);
    CHECK(render_json_path(alone.defects[1].path, "$") == "$.entry[1].n");
    CHECK(alone.defects[1].offset == 45);
    CHECK(alone.defects[1].message.find("2e308") != std::string::npos);
    CHECK(alone.defects[2].message == "invalid UTF-8 (byte 0xFF) in a member name");
    CHECK(render_json_path(alone.defects[2].path, "$") == "$.entry[1].k\xEF\xBF\xBD");
}

TEST_CASE("invalid UTF-8 is refused with its offset; keep-going nulls the string") {
    rapidjson::Document d;
    const auto r = strict(d, "{\"name\":\"ab\xFF\"}");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error->kind == JsonErrorKind::invalid_utf8);
    CHECK(r.error->offset == 11);
    CHECK(r.error->message == "invalid UTF-8 (byte 0xFF) in a string");
    CHECK(render_json_path(r.error->path, "$") == "$.name");
    for (const char* bad : {"[\"\xC0\xAF\"]", "[\"\xED\xA0\x80\"]", "[\"\xF4\x90\x80\x80\"]", "[\"\xE2\x82\"]", "[\"\x80\"]"}) {
        INFO(bad);
        CHECK(strict(d, bad).error->kind == JsonErrorKind::invalid_utf8);
    }
    CHECK(strict(d, "[\"\xF0\x9F\x98\x80 \xE2\x82\xAC\"]").ok());
    // A lone surrogate escape decodes to invalid UTF-8: refused at the string.
    const auto esc = strict(d, R"(["\udc00"])");
    REQUIRE_FALSE(esc.ok());
    CHECK(esc.error->offset == 1);
    CHECK(esc.error->message == "a \\u escape in a string encodes a lone UTF-16 surrogate: not valid UTF-8");
    CHECK(strict(d, R"(["\ud83d\ude00"])").ok());
    // A key: the path shows it with U+FFFD, never the bad byte.
    const auto key = lenient(d, "{\"a\xFF\":1,\"b\":2}");
    REQUIRE(key.ok());
    REQUIRE(key.defects.size() == 1);
    CHECK(render_json_path(key.defects[0].path, "$") == "$.a\xEF\xBF\xBD");
    CHECK(d["b"].GetInt() == 2);
    const auto val = lenient(d, "[\"ok\",\"b\xFF\",3]");
    REQUIRE(val.ok());
    CHECK(val.defects.at(0).offset == 8);
    CHECK(render_json_path(val.defects[0].path, "$") == "$[1]");
    CHECK(d[1].IsNull());
    CHECK(d[2].GetInt() == 3);
    // Outside a string an invalid byte is a syntax error naming the byte.
    const auto outside = strict(d, "[1,\xFF]");
    REQUIRE_FALSE(outside.ok());
    CHECK(outside.error->offset == 3);
    CHECK(outside.error->message.find("(byte 0xFF)") != std::string::npos);
}

TEST_CASE("numbers out of double's range and NaN/Infinity are refused") {
    rapidjson::Document d;
    for (const char* text : {"[1e309]", "[-1e400]", "[10e308]", "[2e308]", "[-2e308]", "[0e400]"}) {
        INFO(text);
        const auto r = strict(d, text);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error->kind == JsonErrorKind::non_finite);
        CHECK(r.error->offset == 1);
        CHECK(r.error->message.find(std::string(text + 1, std::strlen(text) - 2)) != std::string::npos);
        CHECK(render_json_path(r.error->path, "$") == "$[0]");
    }
    CHECK(strict(d, "[1.7976931348623157e308, -1e-400, 0.1e309]").ok());
    for (const char* text : {"[NaN]", "[Infinity]", "[-Infinity]", "{\"v\": nan}", "[inf]"}) {
        INFO(text);
        const auto r = strict(d, text);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error->kind == JsonErrorKind::non_finite);
        CHECK(r.error->message.find("non-finite numbers are refused") != std::string::npos);
    }
    CHECK(strict(d, "[-Infinity]").error->offset == 1);
    CHECK(strict(d, "{\"v\": nan}").error->offset == 6);
}

TEST_CASE("keep-going: each number out of range becomes null, with its own path") {
    rapidjson::Document d;
    const auto r = lenient(d, R"({"entry":[{"v":1e309},{"v":5},{"v":-2e308},{"v":[0e999]}]})");
    REQUIRE(r.ok());
    REQUIRE(r.defects.size() == 3);
    CHECK(render_json_path(r.defects[0].path, "$") == "$.entry[0].v");
    CHECK(r.defects[0].offset == 15);
    CHECK(r.defects[0].message.find("1e309") != std::string::npos);
    CHECK(render_json_path(r.defects[1].path, "$") == "$.entry[2].v");
    CHECK(r.defects[1].message.find("-2e308") != std::string::npos);
    CHECK(render_json_path(r.defects[2].path, "$") == "$.entry[3].v[0]");
    CHECK(d["entry"][0]["v"].IsNull());
    CHECK(d["entry"][1]["v"].GetInt() == 5);
    // Too many of them: the whole text is refused.
    std::string many = "[";
    for (int i = 0; i < 20; ++i) many += std::string(i ? "," : "") + "1e999";
    many += "]";
    const auto m = lenient(d, many);
    REQUIRE_FALSE(m.ok());
    CHECK(m.error->message.rfind("more than 16 numbers are out of range", 0) == 0);
}

TEST_CASE("size limit, trailing content and the end offset") {
    rapidjson::Document d;
    JsonLimits small;
    small.max_bytes = 8;
    const auto big = strict(d, "[1,2,3,4,5]", small);
    REQUIRE_FALSE(big.ok());
    CHECK(big.error->kind == JsonErrorKind::too_large);
    CHECK(big.error->message == "the JSON text is 11 bytes, more than the limit of 8");
    CHECK(strict(d, "[1,2,3]", small).ok());

    const auto trailing = strict(d, "{} {}");
    REQUIRE_FALSE(trailing.ok());
    CHECK(trailing.error->offset == 3);
    CHECK(strict(d, std::string_view("{}\0{}", 5)).error->offset == 2);  // an embedded NUL ends nothing
    CHECK(strict(d, "{}\r\n\t ").ok());
    JsonParseOptions o;
    o.allow_trailing = true;
    const auto first = parse_untrusted_json(d, "{\"a\":1}\n{\"a\":2}\n", o);
    REQUIRE(first.ok());
    CHECK(first.end == 7);
    CHECK(d["a"].GetInt() == 1);
    CHECK(strict(d, "").error->message == "The document is empty.");
}

TEST_CASE("errors are described with offset and path; control characters in keys are escaped") {
    rapidjson::Document d;
    const auto r = strict(d, "{\"a\\nb\":{\"c\":[1,}}");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error->kind == JsonErrorKind::syntax);
    CHECK(r.error->describe() == "byte offset 16 ($.a\\u000ab.c[1]): Invalid value.");
    CHECK(json_line_column("ab\ncd", 4) == "line 2, column 2");
    CHECK(to_string(JsonErrorKind::too_deep) == std::string("too-deep"));
}

TEST_CASE("the Document keeps the caller's allocator") {
    std::vector<char> chunk(4096);
    rapidjson::MemoryPoolAllocator<> pool(chunk.data(), chunk.size());
    rapidjson::Document d(&pool);
    REQUIRE(lenient(d, R"({"resourceType":"Observation","valueQuantity":{"value":1e309}})").ok());
    CHECK(&d.GetAllocator() == &pool);
    CHECK(d["valueQuantity"]["value"].IsNull());
}

// The file reader (fhir/resource_reader) applies the policy: one bad line or entry is rejected,
// naming where, and the others are read.

namespace {

struct Seen : ResourceHandler {
    std::vector<std::string> resources;  // "Type/id@location"
    std::vector<Problem> problems;
    void on_resource(const rapidjson::Value& r, std::string_view, const Location& where, const BundleContext*) override {
        resources.push_back(where.describe());
        (void)r;
    }
    void on_problem(const Problem& p) override { problems.push_back(p); }
    std::string lines() const {
        std::string out;
        for (const auto& p : problems) out += p.describe() + "\n";
        return out;
    }
};

std::string patient(const char* id) { return std::string(R"({"resourceType":"Patient","id":")") + id + "\"}"; }

}  // namespace

TEST_CASE("reader: a BOM before the first NDJSON line keeps the first resource") {
    const std::string text = "\xEF\xBB\xBF" + patient("a") + "\n" + patient("b") + "\n";
    Seen file;
    std::istringstream in(text);
    auto stats = read_ndjson(in, "p.ndjson", file);
    CHECK(stats.resources == 2);
    CHECK(file.problems.empty());
    CHECK(file.resources.front() == "p.ndjson:1 Patient/a");
    Seen piped;  // detected as NDJSON in text without a name
    stats = read_text(text, "<stdin>", piped);
    CHECK(stats.resources == 2);
    CHECK(piped.problems.empty());
    Seen single;
    CHECK(read_text("\xEF\xBB\xBF" + patient("c"), "c.json", single).resources == 1);
}

TEST_CASE("reader: invalid UTF-8 rejects that line or entry, naming it, and never copies the bytes") {
    Seen ndjson;
    std::istringstream in(patient("a") + "\n" + R"({"resourceType":"Patient","id":"b","name":[{"text":"M)" + "\xFF" +
                          "\"}]}\n" + patient("c") + "\n");
    auto stats = read_ndjson(in, "p.ndjson", ndjson);
    CHECK(stats.resources == 2);
    CHECK(stats.rejected == 1);
    CHECK(ndjson.lines() == "p.ndjson:2 Patient/b: Patient.name[0].text: invalid UTF-8 (byte 0xFF) in a string (column 54)\n");
    Seen bundle;
    stats = read_text(std::string(R"({"resourceType":"Bundle","type":"collection","entry":[)") + "{\"resource\":" + patient("a") +
                          "},{\"resource\":{\"resourceType\":\"Patient\",\"id\":\"b\xC3\x28\"}},{\"resource\":" + patient("c") +
                          "}]}",
                      "b.json", bundle);
    CHECK(stats.resources == 2);
    CHECK(stats.rejected == 1);
    CHECK(bundle.lines() == "b.json entry[1] Patient: Patient.id: invalid UTF-8 (byte 0xC3) in a string (line 1, column 149)\n");
    CHECK(bundle.lines().find('\xC3') == std::string::npos);
    // Not even the first byte of a file.
    Seen first;
    CHECK(read_text("\xFF{}", "x.json", first).fatal);
    CHECK(first.lines() == "x.json: not FHIR JSON: line 1, column 1 starts with byte 0xFF instead of '{'\n");
}

TEST_CASE("reader: a number out of range rejects its resource; the rest of the Bundle is read") {
    Seen c;
    const auto stats = read_text(std::string(R"({"resourceType":"Bundle","type":"collection","entry":[)") +
                                     R"({"resource":{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1e309}}},)" +
                                     R"({"resource":{"resourceType":"Observation","id":"o2","valueQuantity":{"value":-1e400}}},)" +
                                     "{\"resource\":" + patient("p") + "}]}",
                                 "labs.json", c);
    CHECK(stats.resources == 1);
    CHECK(stats.rejected == 2);
    REQUIRE(c.problems.size() == 2);
    CHECK(c.problems[0].describe() ==
          "labs.json entry[0] Observation/o1: Observation.valueQuantity.value: the number 1e309 is out of range: JSON numbers "
          "must be finite doubles (line 1, column 132)");
    CHECK(c.problems[1].path == "Observation.valueQuantity.value");
    CHECK(c.problems[1].message.find("-1e400") != std::string::npos);
    CHECK(c.resources == std::vector<std::string>{"labs.json entry[2] Patient/p"});
}

TEST_CASE("reader: nesting 120,000 levels deep is an error for that resource, not a crash") {
    std::string deep = R"({"resourceType":"Observation","id":"deep","extension":)" + std::string(120000, '[') +
                       std::string(120000, ']') + "}";
    Seen line;
    std::istringstream in(patient("a") + "\n" + deep + "\n" + patient("b") + "\n");
    auto stats = read_ndjson(in, "o.ndjson", line);
    CHECK(stats.resources == 2);
    CHECK(stats.rejected == 1);
    REQUIRE(line.problems.size() == 1);
    CHECK(line.problems[0].where.describe() == "o.ndjson:2 Observation/deep");
    CHECK(line.problems[0].message.rfind("nested deeper than 100 levels (column ", 0) == 0);
    CHECK(line.problems[0].path.rfind("Observation.extension[0][0]", 0) == 0);
    Seen whole;  // a whole file: the same error, the resource rejected, no crash
    stats = read_text(deep, "deep.json", whole);
    CHECK_FALSE(stats.fatal);
    CHECK(stats.rejected == 1);
}

TEST_CASE("reader: a defect outside any resource is reported and the entries are still read") {
    Seen c;
    const auto stats = read_text(std::string(R"({"resourceType":"Bundle","type":"searchset","total":1e999,"entry":[)") +
                                     R"({"fullUrl":"urn:uuid:)" + "\xFF" + R"(","resource":{"resourceType":"Patient","id":"x"}},)" +
                                     "{\"resource\":" + patient("p") + "}]}",
                                 "s.json", c);
    CHECK(stats.resources == 1);
    CHECK(stats.rejected == 2);
    REQUIRE(c.problems.size() == 2);
    CHECK(c.problems[0].describe().rfind("s.json entry[0]: Bundle.entry[0].fullUrl: invalid UTF-8", 0) == 0);
    CHECK(c.problems[1].describe().rfind("s.json Bundle: Bundle.total: the number 1e999 is out of range", 0) == 0);
    CHECK(c.resources == std::vector<std::string>{"s.json entry[1] Patient/p"});
}

TEST_CASE("reader: NDJSON whose first line is broken, in a file without an .ndjson name, keeps the good lines") {
    Seen c;
    const auto stats = read_text("{\"resourceType\":\"Patient\",\"id\":\n" + patient("b") + "\n" + patient("c") + "\n", "<stdin>", c);
    CHECK_FALSE(stats.fatal);
    CHECK(stats.resources == 2);
    CHECK(stats.rejected == 1);
    REQUIRE(c.problems.size() == 1);
    CHECK(c.problems[0].describe().rfind("<stdin>:1: JSON parse error at column ", 0) == 0);
}

// A parse in place is tried first without a position-keeping guard, and falls back to the guarded
// parse at the first problem: every text here takes one of the two ways.
TEST_CASE("parse in place: the same Document, end, errors and defects as a parse of the bytes, which stay unchanged") {
    const std::vector<std::string> texts = {
        R"({"resourceType":"Patient","id":"a","name":[{"text":"Zo\u00EB \"Z\" \\ \/"}],"n":[1,-2.5e3,true,null]})",
        "\xEF\xBB\xBF{\"a\":\"b\"}",
        R"({"a":{"b":[1,2,{"c":"x)" "\xFF" R"("}]},"k":"v"})",
        R"({"a":1e309,"b":"\ud800","c":[{"d":-1e400}]})",
        "{\"" "\xC3\x28" "\":1}",
        R"({"a":1} {"b":2})",
        R"({"a":[1,2,)",
        std::string("{\"a\":\"x\0y\"}", 11),
        "{\"e\":" + std::string(150, '[') + std::string(150, ']') + ",\"f\":\"g\"}",
        // At the depth limit and one level past it (the root is level 1).
        "{\"e\":" + std::string(kDefaultJsonMaxDepth - 1, '[') + std::string(kDefaultJsonMaxDepth - 1, ']') + "}",
        "{\"e\":" + std::string(kDefaultJsonMaxDepth, '[') + std::string(kDefaultJsonMaxDepth, ']') + "}",
        R"({"a":"b"}   )",
    };
    for (bool keep_going : {false, true}) {
        for (const std::string& text : texts) {
            CAPTURE(text);
            CAPTURE(keep_going);
            JsonParseOptions plain;
            plain.keep_going = keep_going;
            JsonParseOptions in_place = plain;
            std::vector<char> scratch(text.size() + 1, 'x');
            in_place.insitu = scratch.data();
            const std::string before = text;
            rapidjson::Document a, b;
            const JsonParseResult ra = parse_untrusted_json(a, text, plain);
            const JsonParseResult rb = parse_untrusted_json(b, text, in_place);
            CHECK(text == before);
            CHECK(ra.ok() == rb.ok());
            if (ra.error && rb.error) CHECK(ra.error->describe() == rb.error->describe());
            CHECK(ra.end == rb.end);
            REQUIRE(ra.defects.size() == rb.defects.size());
            for (std::size_t i = 0; i < ra.defects.size(); ++i) CHECK(ra.defects[i].describe() == rb.defects[i].describe());
            CHECK(a == b);
        }
    }
}
