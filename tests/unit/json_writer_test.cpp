// mappings::JsonWriter writes the same bytes as RapidJSON's Writer, whose strings it copies whole
// when nothing in them needs escaping (mappings/json_writer.hpp).
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include <rapidjson/document.h>

#include "mappings/json_writer.hpp"

using namespace calcalert;

namespace {

// The same document written by both writers: an object of keys and values, an array of values.
template <typename Writer>
std::string written(const std::vector<std::string>& strings) {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    for (std::size_t i = 0; i < strings.size(); ++i) {
        w.Key(strings[i].data(), static_cast<rapidjson::SizeType>(strings[i].size()));
        if (i % 2 == 0) w.String(strings[i].data(), static_cast<rapidjson::SizeType>(strings[i].size()));
        else w.Int(static_cast<int>(i));
    }
    w.Key("list");
    w.StartArray();
    for (const auto& s : strings) w.String(s);
    w.EndArray();
    w.EndObject();
    REQUIRE(w.IsComplete());
    return sb.GetString();
}

}  // namespace

TEST_CASE("JsonWriter: what needs escaping, at every position of an 8-byte word and after it") {
    const std::vector<std::pair<char, bool>> bytes = {
        {'a', false}, {' ', false}, {'/', false}, {'\x7f', false}, {'\x80', false}, {'\xff', false}, {'!', false},
        {'#', false}, {'[', false}, {']', false}, {'\x1f', true}, {'\0', true},  {'\n', true},   {'\t', true},
        {'"', true},  {'\\', true}, {'\x01', true}};
    for (std::size_t length = 1; length <= 19; ++length)
        for (std::size_t at = 0; at < length; ++at)
            for (const auto& [c, escaped] : bytes) {
                std::string s(length, 'x');
                s[at] = c;
                CAPTURE(length);
                CAPTURE(at);
                CAPTURE(static_cast<int>(static_cast<unsigned char>(c)));
                CHECK(mappings::needs_json_escape(s.data(), s.size()) == escaped);
            }
    CHECK_FALSE(mappings::needs_json_escape("", 0));
    // UTF-8 (every byte at or above 0x80) needs no escape.
    const std::string utf8 = "Kalziphylaxie – Verdacht, Ca×P 75,3 mg²/dL², 日本語";
    CHECK_FALSE(mappings::needs_json_escape(utf8.data(), utf8.size()));
}

TEST_CASE("JsonWriter: the same bytes as rapidjson::Writer, for chosen and for random strings") {
    std::vector<std::string> strings = {"", "a", "plain text of more than eight bytes", "quote \" inside",
                                        "back\\slash", std::string("nul \0 inside", 12), "tab\tand\nnewline",
                                        "Ca×P 75,3 mg²/dL²", "\x7f\x80\xff", "ends with a quote\"", "\x1f"};
    std::mt19937 rng(20261203);
    for (int i = 0; i < 2000; ++i) {
        std::string s(rng() % 40, '\0');
        // Mostly printable ASCII, sometimes any byte at all.
        for (auto& c : s) c = static_cast<char>(rng() % 8 == 0 ? rng() % 256 : 0x20 + rng() % 95);
        strings.push_back(std::move(s));
    }
    const std::string expected = written<rapidjson::Writer<rapidjson::StringBuffer>>(strings);
    CHECK(written<mappings::JsonWriter>(strings) == expected);
    // A whole Document written through Accept takes the same path.
    rapidjson::Document d;
    d.Parse(expected.c_str(), expected.size());
    REQUIRE_FALSE(d.HasParseError());
    rapidjson::StringBuffer sb;
    mappings::JsonWriter w(sb);
    d.Accept(w);
    CHECK(std::string(sb.GetString(), sb.GetSize()) == expected);
}
