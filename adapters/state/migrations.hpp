// The state schema as versioned migrations (adapters/state/migrations/NNNN_name.sql, embedded at
// build time), and the little that differs between the SQL of SQLite and of PostgreSQL.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace calcalert::state {

struct Migration {
    int version;       // the schema version the database is at once this migration has run
    const char* name;  // its file name
    const char* sql;   // statements, each ending with ';' at the end of a line; -- comments
};

// In version order (generated from the .sql files by cmake/embed_migrations.cmake).
const std::vector<Migration>& schema_migrations();

// The schema version this program writes: the last migration's.
int latest_schema_version();

enum class SqlBackend { sqlite, postgresql };

// A migration's statements: split at ';' ending a line, -- comments and blank lines dropped, the
// {{auto_id}} column type put in for the backend. Throws std::invalid_argument for an unknown {{token}}.
std::vector<std::string> migration_statements(std::string_view sql, SqlBackend backend);

// The store's SQL is written with '?' parameters; PostgreSQL numbers them ($1, $2, ...). '?' inside a
// quoted literal is left alone.
std::string sql_for(std::string_view portable, SqlBackend backend);

}  // namespace calcalert::state
