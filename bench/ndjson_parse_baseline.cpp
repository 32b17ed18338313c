// The baseline for the evaluate benchmark: read NDJSON files line by line and parse every line with
// RapidJSON in situ, doing nothing else. calcalert evaluate on the same bytes costs this plus the
// checks of fhir/json_parse.hpp (UTF-8, depth, finite numbers), mapping, grouping by patient, the
// rules and writing the output.
//
//   ndjson_parse_baseline FILE.ndjson...
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <rapidjson/document.h>

int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << "usage: ndjson_parse_baseline FILE.ndjson...\n";
        return 2;
    }
    std::vector<char> first_chunk(1 << 18);
    rapidjson::MemoryPoolAllocator<> pool(first_chunk.data(), first_chunk.size());
    std::size_t lines = 0, bytes = 0, errors = 0;
    std::string line;
    for (int i = 1; i < argc; ++i) {
        std::ifstream in(argv[i], std::ios::binary);
        if (!in) {
            std::cerr << argv[i] << ": cannot open\n";
            return 3;
        }
        while (std::getline(in, line)) {
            if (line.empty()) continue;
            bytes += line.size() + 1;
            rapidjson::Document doc(&pool);
            doc.ParseInsitu(line.data());
            if (doc.HasParseError() || !doc.IsObject()) ++errors;
            ++lines;
            pool.Clear();
        }
    }
    std::printf("%zu lines, %zu bytes, %zu parse errors\n", lines, bytes, errors);
    return errors ? 3 : 0;
}
