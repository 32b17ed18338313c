// Findings -> CDS Hooks 2.0 cards. A card carries the same identity as the DetectedIssue the poller
// writes for the same (patient, rule):
//   - card.uuid is alert_identifier(patient, rule id), the DetectedIssue's identifier value (order
//     rules, which the poller never evaluates: alert_identifier(patient, rule id + "|" + order));
//   - card.source.topic is a Coding {system: rule system, code: rule id, display: rule title};
//   - card.extension["calcalert-alert"] holds {identifier {system, value}, rule, ruleVersion,
//     severity, patient, evidenceHash, evidence [{fact, label, text, sources}]}: the same evidence
//     lines as DetectedIssue.evidence, so one alert has one identity and one explanation everywhere.
// Indicator: high -> critical, moderate -> warning, low -> info (clinical-rules.md §2).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mappings/detected_issue.hpp"
#include "rules/engine.hpp"

namespace calcalert::mappings {

struct OverrideReason {
    std::string code;
    std::string display;
};

struct CardOptions {
    std::string identifier_system = "urn:calcalert:detected-issue";
    std::string rule_system = "urn:calcalert:rule";
    std::string source_label = "calcalert calciphylaxis and calcinosis rules";
    std::string override_reason_system = "urn:calcalert:override-reason";
    std::vector<OverrideReason> override_reasons = {
        {"not-clinically-relevant", "Not clinically relevant for this patient"},
        {"already-addressed", "Already addressed"},
        {"data-incorrect", "The data behind the alert is incorrect"},
        {"patient-declined", "Patient declined"},
    };
};

// The name of the card extension that carries the alert's identity and evidence.
inline constexpr const char* kCardExtension = "calcalert-alert";

std::string_view card_indicator(rules::RuleSeverity severity);  // critical | warning | info
// The card's uuid: the alert identifier of (patient, rule); for an order rule's finding, of
// (patient, rule + "|" + order), one card per draft order ("MedicationRequest/<id>").
std::string card_uuid(const rules::Finding& finding);
// GitHub-flavoured markdown: why (each evidence line with its exact values, units, dates and thresholds
// in words, and the numbers of the resources it rests on), the rule's notes, the rule and its version,
// the identifier, the citation, and last the compact evidence list of those resources.
std::string card_detail_markdown(const rules::Finding& finding, const CardOptions& options);
// Escapes the characters markdown would interpret (\ ` * _ { } [ ] < > # | !).
std::string markdown_escape(std::string_view text);

// A CDS Hooks 2.0 Link (card.links[]): label, url, type "absolute" or "smart".
struct CardLink {
    std::string label;
    std::string url;
    std::string type = "absolute";
};

// `links`: card.links (left out when empty).
void write_card(JsonWriter& w, const rules::Finding& finding, const CardOptions& options,
                const std::vector<CardLink>& links = {});
std::string card_json(const rules::Finding& finding, const CardOptions& options, const std::vector<CardLink>& links = {});

}  // namespace calcalert::mappings
