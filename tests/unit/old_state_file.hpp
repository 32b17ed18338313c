// A state file as an older calcalert left it: the meta table at `schema_version`, then the given
// statements (its tables and rows), for the in-place upgrade tests.
#pragma once

#include <string>
#include <vector>

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>

namespace test {

inline void write_old_state_file(const std::string& path, int schema_version, const std::vector<std::string>& statements) {
    Poco::Data::SQLite::Connector::registerConnector();
    Poco::Data::Session session(Poco::Data::SQLite::Connector::KEY, path);
    using namespace Poco::Data::Keywords;
    session << "CREATE TABLE calcalert_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", now;
    session << "INSERT INTO calcalert_meta (key, value) VALUES ('schema_version', '" + std::to_string(schema_version) + "')", now;
    for (const auto& sql : statements) session << sql, now;
}

}  // namespace test
