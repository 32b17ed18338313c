// Reading every page of a FHIR search, as the poller needs it from servers that page oddly: a
// link[next] that leads back to a page already read (a loop) ends the search there, with a note,
// instead of failing the pass or reading forever. FhirClient::search does the paging (same-origin
// links only, a page limit); this adds the loop tolerance.
#pragma once

#include <algorithm>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include <rapidjson/document.h>

#include "fhir/client.hpp"
#include "fhir/views.hpp"

namespace calcalert::poll {

// The raw link[relation=next].url of a searchset page, "" when there is none.
inline std::string next_link(const rapidjson::Document& page) {
    const rapidjson::Value* links = fhir::member(page, "link");
    if (!links || !links->IsArray()) return {};
    for (const auto& l : links->GetArray()) {
        if (!l.IsObject()) continue;
        const rapidjson::Value* rel = fhir::member(l, "relation");
        const rapidjson::Value* url = fhir::member(l, "url");
        if (rel && rel->IsString() && std::string_view(rel->GetString()) == "next" && url && url->IsString())
            return std::string(url->GetString(), url->GetStringLength());
    }
    return {};
}

// Calls on_page(page, next) for every page; `next` is the page's next link, "" on the last page and
// when the next link loops (a note is added to `notes`). Returns the number of pages.
inline std::size_t search_pages(fhir::FhirClient& client, const std::string& target,
                                const std::function<void(const rapidjson::Document&, const std::string&)>& on_page,
                                std::vector<std::string>& notes) {
    struct Loop {};
    const std::string& base = client.base_url();
    auto absolute = [&](const std::string& link) {
        if (link.find("://") != std::string::npos) return link;
        std::string rel = link;
        while (!rel.empty() && rel.front() == '/') rel.erase(0, 1);
        return base + "/" + rel;
    };
    std::set<std::string> seen{absolute(target)};
    std::size_t pages = 0;
    try {
        client.search(target, [&](const rapidjson::Document& page) {
            ++pages;
            std::string next = next_link(page);
            const bool loops = !next.empty() && !seen.insert(absolute(next)).second;
            if (loops) {
                std::string note = target.substr(0, target.find('?')) +
                                   " search: the server's link[next] leads back to a page already read; the search ends there";
                if (std::find(notes.begin(), notes.end(), note) == notes.end()) notes.push_back(std::move(note));
                next.clear();
            }
            on_page(page, next);
            if (loops) throw Loop{};
        });
    } catch (const Loop&) {
    }
    return pages;
}

}  // namespace calcalert::poll
