#include "mappings/medications.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>

#include "mappings/tsv.hpp"
#include "rules/catalog.hpp"

namespace calcalert::mappings {
namespace {

// Rows of exactly `columns` cells, or one less when the last (a note) is left out; no cell but the
// note may be empty; at least one row.
std::vector<TsvRow> read_rows(const std::filesystem::path& p, std::size_t columns) {
    std::vector<TsvRow> rows = read_tsv(p, 1);
    for (auto& r : rows) {
        if (r.cells.size() == columns - 1) r.cells.emplace_back();
        if (r.cells.size() != columns)
            throw TerminologyError(r.where + ": expected " + std::to_string(columns) + " tab-separated columns, found " +
                                   std::to_string(r.cells.size()));
        for (std::size_t i = 0; i + 1 < columns; ++i)
            if (r.cells[i].empty()) throw TerminologyError(r.where + ": column " + std::to_string(i + 1) + " is empty");
    }
    if (rows.empty()) throw TerminologyError(p.string() + ": no rows");
    return rows;
}

bool is_order_class(const std::string& id) {
    for (const auto& [c, title] : rules::order_classes())
        if (c == id) return true;
    return false;
}

bool digits(const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
}

// A word or phrase of the data: letters, digits, spaces, '-' and '/', optionally ending in '*'.
void check_phrase(const std::string& where, const std::string& phrase) {
    const std::string body = !phrase.empty() && phrase.back() == '*' ? phrase.substr(0, phrase.size() - 1) : phrase;
    if (normalized_words(body) == " ")
        throw TerminologyError(where + ": word '" + phrase + "' has no letters or digits");
    for (unsigned char c : body)
        if (!std::isalnum(c) && c != ' ' && c != '-' && c != '/')
            throw TerminologyError(where + ": word '" + phrase + "' may hold only letters, digits, spaces, '-', '/' "
                                   "and a final '*'");
}

bool phrase_in(const std::string& normalized_text, std::string_view phrase) {
    const bool prefix = !phrase.empty() && phrase.back() == '*';
    if (prefix) phrase.remove_suffix(1);
    std::string p = normalized_words(phrase);  // " calcium gluconate "
    if (prefix) p.pop_back();                  // " sodium phosphate" matches " sodium phosphates "
    return normalized_text.find(p) != std::string::npos;
}

MatchAction action_from(const TsvRow& r, const std::string& s) {
    if (s == "fire") return MatchAction::fire;
    if (s == "route-check") return MatchAction::route_check;
    if (s == "route-required") return MatchAction::route_required;
    if (s == "route-or-injectable") return MatchAction::route_or_injectable;
    if (s == "exclude") return MatchAction::exclude;
    throw TerminologyError(r.where + ": action '" + s +
                           "' is not one of fire, route-check, route-required, route-or-injectable, exclude");
}

void check_verification(const TsvRow& r, bool text, const std::string& v) {
    if (text) {
        if (v != "keyword") throw TerminologyError(r.where + ": a text row's verification must be 'keyword'");
    } else if (v != "VERIFIED" && v != "VERIFIED-2") {
        throw TerminologyError(r.where + ": verification '" + v +
                               "': only VERIFIED or VERIFIED-2 codes may be used (terminology-rxnorm.md legend)");
    }
}

}  // namespace

std::string_view to_string(MatchAction a) {
    switch (a) {
        case MatchAction::fire: return "fire";
        case MatchAction::route_check: return "route-check";
        case MatchAction::route_required: return "route-required";
        case MatchAction::route_or_injectable: return "route-or-injectable";
        case MatchAction::exclude: return "exclude";
    }
    return "exclude";
}

std::string normalized_words(std::string_view text) {
    std::string out = " ";
    for (unsigned char c : text) {
        if (std::isalnum(c) || c >= 0x80) {
            out += static_cast<char>(std::tolower(c));
        } else if (out.back() != ' ') {
            out += ' ';
        }
    }
    if (out.back() != ' ') out += ' ';
    return out;
}

bool contains_words(std::string_view text, std::string_view phrase) { return phrase_in(normalized_words(text), phrase); }

bool RouteCode::counts_for_class(std::string_view order_class) const {
    return std::find(counts_for.begin(), counts_for.end(), order_class) != counts_for.end();
}

Medications Medications::load(const std::filesystem::path& dir) {
    Medications m;

    // class system code tty name ingredient form action source verification note
    std::set<std::string> seen;
    for (const auto& r : read_rows(dir / "medications.tsv", 11)) {
        MedicationCode c;
        c.order_class = r.cells[0];
        if (!is_order_class(c.order_class))
            throw TerminologyError(r.where + ": class '" + c.order_class +
                                   "' is not an order class (iv-calcium, iv-phosphate, systemic-corticosteroid)");
        const std::string& system = r.cells[1];
        if (system == "text") {
            c.text = true;
        } else if (system != kRxNormSystem) {
            throw TerminologyError(r.where + ": system '" + system + "' must be " + std::string(kRxNormSystem) +
                                   " or text");
        }
        c.code = r.cells[2];
        c.tty = r.cells[3];
        c.name = r.cells[4];
        c.ingredient = r.cells[5];
        c.form = r.cells[6];
        c.action = action_from(r, r.cells[7]);
        c.source = r.cells[8];
        c.verification = r.cells[9];
        c.note = r.cells[10];
        check_verification(r, c.text, c.verification);
        static const std::set<std::string> forms{"oral", "injectable", "local", "-"};
        if (!forms.count(c.form)) throw TerminologyError(r.where + ": form '" + c.form + "' is not oral, injectable, local or -");
        if (c.text) {
            check_phrase(r.where, c.code);
            if (c.tty != "-") throw TerminologyError(r.where + ": a text row has tty '-'");
            if (c.action == MatchAction::fire || c.action == MatchAction::route_check)
                throw TerminologyError(r.where + ": a text match never counts alone (terminology-rxnorm.md §1.1 item 4): "
                                       "action must be route-required, route-or-injectable or exclude");
        } else {
            if (!digits(c.code)) throw TerminologyError(r.where + ": RxNorm code '" + c.code + "' is not an RxCUI");
            static const std::set<std::string> ttys{"SCD", "SBD", "GPCK", "BPCK", "IN", "PIN", "BN"};
            if (!ttys.count(c.tty))
                throw TerminologyError(r.where + ": tty '" + c.tty + "' is not SCD, SBD, GPCK, BPCK, IN, PIN or BN");
            if (c.product() && (c.action == MatchAction::route_required || c.action == MatchAction::route_or_injectable))
                throw TerminologyError(r.where + ": a product (" + c.tty + ") counts by fire, route-check or exclude");
        }
        if (!seen.insert(c.order_class + "|" + system + "|" + c.code).second)
            throw TerminologyError(r.where + ": " + c.order_class + " " + c.code + " is listed twice");
        if (c.text)
            m.words_.push_back(std::move(c));
        else
            m.codes_.emplace(c.code, std::move(c));
    }

    // system code display counts_for source verification note
    for (const auto& r : read_rows(dir / "routes.tsv", 7)) {
        RouteCode rc;
        const std::string& system = r.cells[0];
        if (system == "text") {
            rc.text = true;
        } else if (system != kSnomedSystem) {
            throw TerminologyError(r.where + ": system '" + system + "' must be " + std::string(kSnomedSystem) + " or text");
        }
        rc.code = r.cells[1];
        rc.display = r.cells[2];
        if (r.cells[3] != "-") {
            std::size_t s = 0;
            while (s <= r.cells[3].size()) {
                auto comma = r.cells[3].find(',', s);
                if (comma == std::string::npos) comma = r.cells[3].size();
                std::string cls = r.cells[3].substr(s, comma - s);
                if (!is_order_class(cls))
                    throw TerminologyError(r.where + ": counts_for names '" + cls + "', not an order class (or '-')");
                rc.counts_for.push_back(std::move(cls));
                s = comma + 1;
            }
        }
        rc.source = r.cells[4];
        check_verification(r, rc.text, r.cells[5]);
        if (rc.text) {
            check_phrase(r.where, rc.code);
            if (!seen.insert("route|text|" + normalized_words(rc.code)).second)
                throw TerminologyError(r.where + ": route word '" + rc.code + "' is listed twice");
            m.route_words_.push_back(std::move(rc));
        } else {
            if (!digits(rc.code)) throw TerminologyError(r.where + ": SNOMED CT code '" + rc.code + "' is not a number");
            const std::string code = rc.code;
            if (!m.routes_.emplace(code, std::move(rc)).second)
                throw TerminologyError(r.where + ": route " + code + " is listed twice");
        }
    }

    // system code display form source verification note
    for (const auto& r : read_rows(dir / "dose-forms.tsv", 7)) {
        const std::string& system = r.cells[0];
        if (r.cells[3] != "injectable") throw TerminologyError(r.where + ": form must be 'injectable'");
        const bool text = system == "text";
        if (!text && system != kSnomedSystem)
            throw TerminologyError(r.where + ": system '" + system + "' must be " + std::string(kSnomedSystem) + " or text");
        check_verification(r, text, r.cells[5]);
        if (text) {
            check_phrase(r.where, r.cells[1]);
            m.form_words_.push_back(r.cells[1]);
        } else {
            if (!digits(r.cells[1])) throw TerminologyError(r.where + ": SNOMED CT code '" + r.cells[1] + "' is not a number");
            if (!m.forms_.emplace(r.cells[1], r.cells[2]).second)
                throw TerminologyError(r.where + ": dose form " + r.cells[1] + " is listed twice");
        }
    }
    return m;
}

std::vector<const MedicationCode*> Medications::rxnorm(std::string_view code) const {
    std::vector<const MedicationCode*> out;
    auto [b, e] = codes_.equal_range(std::string(code));
    for (auto it = b; it != e; ++it) out.push_back(&it->second);
    return out;
}

std::vector<const MedicationCode*> Medications::text_matches(std::string_view text) const {
    std::vector<const MedicationCode*> out;
    if (text.empty()) return out;
    const std::string norm = normalized_words(text);
    for (const auto& w : words_)
        if (phrase_in(norm, w.code)) out.push_back(&w);
    return out;
}

const RouteCode* Medications::route(std::string_view system, std::string_view code) const {
    if (system != kSnomedSystem) return nullptr;
    auto it = routes_.find(std::string(code));
    return it == routes_.end() ? nullptr : &it->second;
}

std::vector<const RouteCode*> Medications::route_words(std::string_view text) const {
    std::vector<const RouteCode*> out;
    if (text.empty()) return out;
    const std::string norm = normalized_words(text);
    for (const auto& w : route_words_)
        if (phrase_in(norm, w.code)) out.push_back(&w);
    return out;
}

const std::string* Medications::injectable_form(std::string_view system, std::string_view code) const {
    if (system != kSnomedSystem) return nullptr;
    auto it = forms_.find(std::string(code));
    return it == forms_.end() ? nullptr : &it->second;
}

std::string Medications::injectable_form_word(std::string_view text) const {
    if (text.empty()) return {};
    const std::string norm = normalized_words(text);
    for (const auto& w : form_words_)
        if (phrase_in(norm, w)) return w;
    return {};
}

}  // namespace calcalert::mappings
