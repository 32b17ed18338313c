// The eight patient rules of calcalert written the way a Node.js developer would write them without
// calcalert: the `fhirpath` package pulls codes, values and dates out of each resource of a Bulk-Data
// NDJSON export, the resources are grouped by patient, and plain JavaScript applies the rules. Codes,
// units, thresholds, windows and suppressions are read from the project's data files
// (mappings/data/*.tsv, rules/catalog/facts.json, rules/catalog/rules/*.json), so both agree.
// Prints one finding per line, sorted: "<patient reference> <rule id>". Used by
// bench/evaluate-vs-fhirpath.
//
//   node bench/fhirpath/rules.mjs --now RFC3339 FILE.ndjson...
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import fhirpath from "fhirpath";
import r4 from "fhirpath/fhir-context/r4/index.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const HOUR = 3600e3;
const DAY = 24 * HOUR;

// ----------------------------------------------------------------------------------------------
// The project's data files.

function tsv(name) {
  return fs.readFileSync(path.join(root, "mappings/data", name), "utf8").split("\n")
    .filter((l) => l && !l.startsWith("#")).map((l) => l.split("\t"));
}
const systems = new Map(tsv("systems.tsv").map(([alias, canonical, kind]) => [alias, { canonical, kind }]));
const canon = (system, code) => {
  const s = systems.get(system);
  if (!s) return null;
  return { system: s.canonical, code: s.kind === "icd" ? code.replace(/\./g, "").toUpperCase() : code };
};
const labCodes = new Map(tsv("lab-codes.tsv").map(([system, code, analyte]) => [system + "|" + code, analyte]));
const units = new Map();
for (const [analyte, unit, factor] of tsv("units.tsv")) units.set(analyte + "|" + unit, Number(factor));
const plausible = new Map(tsv("plausibility.tsv").map(([a, lo, hi]) => [a, [Number(lo), Number(hi)]]));
const conditionCodes = tsv("condition-codes.tsv").map(([concept, system, code, match]) => ({
  concept, ...canon(system, code), prefix: match === "prefix",
}));
const words = (t) => " " + t.toLowerCase().replace(/[^a-z0-9]+/g, " ").trim() + " ";
const phrases = (cell) => (cell ? cell.split("|").map(words).filter((p) => p !== "  ") : []);
const wordCodes = tsv("condition-words.tsv").map(([system, code, , concept, w, unless, yieldsTo]) => ({
  ...canon(system, code), concept, words: w === "(none)" ? null : phrases(w), unless: phrases(unless),
  yieldsTo: systems.get(yieldsTo)?.canonical,
}));
const dialysisCodes = new Set(tsv("procedure-codes.tsv").filter((r) => r[0] === "dialysis").map((r) => r[1] + "|" + r[2]));
const facts = JSON.parse(fs.readFileSync(path.join(root, "rules/catalog/facts.json"), "utf8"));
const P = facts.parameters;
const labFact = Object.fromEntries(facts.labFacts.map((f) => [f.id, f]));
const computed = Object.fromEntries(facts.computed.map((c) => [c.id, c]));
const ruleDir = path.join(root, "rules/catalog/rules");
const suppressedBy = Object.fromEntries(fs.readdirSync(ruleDir).filter((f) => f.endsWith(".json"))
  .map((f) => JSON.parse(fs.readFileSync(path.join(ruleDir, f), "utf8"))).map((r) => [r.id, r.suppressedBy ?? []]));

// ----------------------------------------------------------------------------------------------
// The fhirpath expressions, compiled once against the FHIR R4 model.

const fp = (expr) => fhirpath.compile(expr, r4);
const X = {
  subject: fp("subject.reference"),
  status: fp("status"),
  codings: fp("code.coding"),
  codeText: fp("code.text"),
  modifier: fp("modifierExtension.exists()"),
  // Observation
  effective: fp("iif(effectiveDateTime.exists(), effectiveDateTime, iif(effectivePeriod.start.exists(), " +
    "effectivePeriod.start, iif(effectiveInstant.exists(), effectiveInstant, issued)))"),
  value: fp("valueQuantity"),
  absent: fp("dataAbsentReason.exists()"),
  refHigh: fp("referenceRange.first().high"),
  components: fp("component"),
  // Condition
  clinical: fp("clinicalStatus.coding.code"),
  verification: fp("verificationStatus.coding.code"),
  abated: fp("abatement.exists()"),
  abatement: fp("iif(abatementDateTime.exists(), abatementDateTime, abatementPeriod.start)"),
  onset: fp("iif(onsetDateTime.exists(), onsetDateTime, onsetPeriod.start)"),
  recorded: fp("recordedDate"),
  // Procedure
  performedStart: fp("iif(performedDateTime.exists(), performedDateTime, performedPeriod.start)"),
  performedEnd: fp("iif(performedDateTime.exists(), performedDateTime, performedPeriod.end)"),
  // Patient
  deceased: fp("deceased"),
};
const one = (f, r) => f(r)[0];
const time = (s) => (s === undefined ? undefined : Date.parse(String(s)));

// ----------------------------------------------------------------------------------------------
// Reading: each resource into the facts of its patient.

const args = process.argv.slice(2);
let now = Date.now();
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--now") now = Date.parse(args[++i]);
  else files.push(args[i]);
}
if (Number.isNaN(now) || files.length === 0) {
  console.error("usage: rules.mjs --now RFC3339 FILE.ndjson...");
  process.exit(2);
}

const latest = new Map(); // "Type/id" -> resource: a resource read twice counts once, the last read
for (const file of files) {
  const lines = readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const r = JSON.parse(line);
    latest.set(r.resourceType + "/" + r.id, r);
  }
}

const patients = new Map();
const patientOf = (ref) => {
  let p = patients.get(ref);
  if (!p) patients.set(ref, (p = { labs: {}, dx: new Set(), dialysis: false, deceased: false }));
  return p;
};

function convert(analyte, q) {
  if (!q || typeof q.value !== "number" || !Number.isFinite(q.value)) return undefined;
  for (const u of [q.code, q.unit]) if (u && units.has(analyte + "|" + u)) return q.value * units.get(analyte + "|" + u);
  if (q.unit) for (const [k, f] of units) if (k.toLowerCase() === (analyte + "|" + q.unit).toLowerCase()) return q.value * f;
  return undefined;
}

function analyteOf(codings) {
  const found = new Set();
  for (const c of codings) {
    const k = canon(c.system, c.code);
    const a = k && labCodes.get(k.system + "|" + k.code);
    if (a) found.add(a);
  }
  return found.size === 1 ? [...found][0] : null; // none, or two analytes (conflicting: not used)
}

function addLab(p, analyte, q, absent, high, at, source) {
  if (absent || !q) return;
  const value = convert(analyte, q);
  if (value === undefined || !Number.isFinite(value)) return;
  const range = plausible.get(analyte);
  if (range && (value < range[0] || value > range[1])) return;
  let refHigh;
  if (high && typeof high.value === "number")
    refHigh = high.code || high.unit ? convert(analyte, high) : value / q.value * high.value;
  (p.labs[analyte] ??= []).push({ value, comparator: q.comparator ?? "", at, refHigh, source });
}

function observation(r) {
  const ref = one(X.subject, r);
  if (!ref || one(X.modifier, r)) return;
  if (!P.countedObservationStatuses.includes(one(X.status, r))) return;
  const at = time(one(X.effective, r));
  if (at === undefined || at > now + P.futureToleranceHours * HOUR) return;
  const source = "Observation/" + r.id;
  const main = analyteOf(X.codings(r));
  const labs = [];
  if (main) labs.push([main, one(X.value, r), one(X.absent, r), one(X.refHigh, r)]);
  for (const c of X.components(r)) {
    const a = analyteOf(X.codings(c));
    if (!a) continue;
    if (one(X.modifier, c)) return;
    labs.push([a, one(X.value, c), one(X.absent, c), one(X.refHigh, c)]);
  }
  if (labs.length === 0) return;
  const p = patientOf(ref);
  for (const [a, q, absent, high] of labs) addLab(p, a, q, absent, high, at, source);
}

function conceptsOf(codings, text) {
  const out = new Set();
  const keyed = codings.map((c) => ({ ...c, k: canon(c.system, c.code ?? "") }));
  for (const { k } of keyed) {
    if (!k) continue;
    for (const cc of conditionCodes)
      if (cc.system === k.system && (cc.prefix ? k.code.startsWith(cc.code) : k.code === cc.code)) out.add(cc.concept);
  }
  for (const c of keyed) {
    if (!c.k) continue;
    const readings = wordCodes.filter((w) => w.system === c.k.system && w.code === c.k.code);
    if (readings.length === 0) continue;
    if (keyed.some((o) => o.k && o.k.system === readings[0].yieldsTo && o.code)) continue; // SNOMED CT decides
    const texts = [text, c.display].filter(Boolean).map(words);
    for (const w of readings) {
      if (texts.length === 0) {
        if (!w.words) out.add(w.concept);
      } else if (w.words && texts.some((t) => w.words.some((x) => t.includes(x)) && !w.unless.some((x) => t.includes(x)))) {
        out.add(w.concept);
      }
    }
  }
  return out;
}

function condition(r) {
  const ref = one(X.subject, r);
  if (!ref || one(X.modifier, r)) return;
  const concepts = conceptsOf(X.codings(r), one(X.codeText, r));
  if (concepts.size === 0) return;
  const verification = one(X.verification, r);
  if (verification === "refuted" || verification === "entered-in-error") return;
  const limit = now + P.futureToleranceHours * HOUR;
  const onset = time(one(X.onset, r));
  const recorded = time(one(X.recorded, r));
  if ((onset !== undefined && onset > limit) || (recorded !== undefined && recorded > limit)) return;
  const clinical = one(X.clinical, r);
  let active = ["active", "recurrence", "relapse"].includes(clinical);
  if (clinical === undefined) {
    const abatement = time(one(X.abatement, r));
    active = !one(X.abated, r) || (abatement !== undefined && abatement > now);
  }
  if (!active) return;
  const p = patientOf(ref);
  for (const c of concepts) p.dx.add(c);
}

function procedure(r) {
  const ref = one(X.subject, r);
  if (!ref || one(X.modifier, r)) return;
  if (!X.codings(r).some((c) => { const k = canon(c.system, c.code); return k && dialysisCodes.has(k.system + "|" + k.code); }))
    return;
  const status = one(X.status, r);
  if (!P.dialysisProcedure.countedStatuses.includes(status)) return;
  const start = time(one(X.performedStart, r));
  const end = time(one(X.performedEnd, r));
  if (start === undefined && end === undefined) return;
  if ((start ?? end) > now + P.futureToleranceHours * HOUR) return;
  const t = end ?? (status === "in-progress" ? now : start);
  if (now - t > P.dialysisProcedure.windowDays * DAY) return;
  patientOf(ref).dialysis = true;
}

function patient(r) {
  const d = one(X.deceased, r);
  if (d === true || (typeof d === "string" && time(d) <= now)) patientOf("Patient/" + r.id).deceased = true;
}

for (const r of latest.values()) {
  switch (r.resourceType) {
    case "Observation": observation(r); break;
    case "Condition": condition(r); break;
    case "Procedure": procedure(r); break;
    case "Patient": patient(r); break;
  }
}

// ----------------------------------------------------------------------------------------------
// The rules, per patient.

const byLatest = (a, b) => b.at - a.at || (a.source < b.source ? -1 : a.source > b.source ? 1 : 0);
const above = (v, cmp, t) => (cmp === "" || cmp === ">=" ? v > t : cmp === ">" ? v >= t : false);
const below = (v, cmp, t) => (cmp === "" || cmp === "<=" ? v < t : cmp === "<" ? v <= t : false);

function nearest(list, t, maxMs) {
  let best;
  for (const r of list) {
    const d = Math.abs(r.at - t);
    if (d <= maxMs && (!best || d < Math.abs(best.at - t))) best = r;
  }
  return best;
}

function productComparator(a, b) {
  const up = (c) => c === ">" || c === ">=";
  const down = (c) => c === "<" || c === "<=";
  if (a === "") return b;
  if (b === "") return a;
  if (up(a) && up(b)) return a === ">=" && b === ">=" ? ">=" : ">";
  if (down(a) && down(b)) return a === "<=" && b === "<=" ? "<=" : "<";
  return null; // bounded both ways: decides nothing
}

// The values a lab fact judges, latest first.
function candidates(labs, id) {
  if (!computed[id]) return labs[id] ?? [];
  const c = computed[id];
  if (c.kind === "albumin-corrected-calcium") {
    const out = (labs[c.reported] ?? []).map((r) => ({ ...r }));
    for (const r of labs[c.total] ?? []) {
      const alb = nearest(labs[c.albumin] ?? [], r.at, c.albuminWindowHours * HOUR);
      const value = alb && alb.comparator === "" && alb.value < c.normalAlbumin_g_dL
        ? r.value + c.factor * (c.normalAlbumin_g_dL - alb.value) : r.value;
      out.push({ ...r, value });
    }
    return out.sort((a, b) => b.at - a.at);
  }
  const out = []; // the product: each anchor with the partner nearest in time
  for (const a of labs[c.anchor] ?? []) {
    const partner = nearest(labs[c.partner] ?? [], a.at, c.pairingHours * HOUR);
    if (partner)
      out.push({ value: a.value * partner.value, comparator: productComparator(partner.comparator, a.comparator), at: a.at });
  }
  return out;
}

function holds(labs, id) {
  const f = labFact[id];
  const c = candidates(labs, f.value)[0];
  if (!c || now - c.at > f.windowDays * DAY || c.comparator === null) return false;
  if (f.above) {
    const t = f.above.timesReferenceRangeHigh && c.refHigh !== undefined ? f.above.timesReferenceRangeHigh * c.refHigh : f.above.default;
    return above(c.value, c.comparator, t);
  }
  const t = f.below.timesReferenceRangeHigh && c.refHigh !== undefined ? f.below.timesReferenceRangeHigh * c.refHigh : f.below.default;
  return below(c.value, c.comparator, t);
}

function evaluate(p) {
  if (p.deceased) return [];
  for (const list of Object.values(p.labs)) list.sort(byLatest);
  const dx = (c) => p.dx.has(c);
  const lab = (id) => holds(p.labs, id);
  const esrd = dx("esrd") || lab("egfr-low") || p.dialysis;
  const caxpHigh = lab("ca-x-p-high");
  const hypercalcemia = lab("corrected-calcium-high") || lab("ionized-calcium-high") || dx("hypercalcemia");
  const hyperphosphatemia = lab("phosphate-high") || dx("hyperphosphatemia");
  const pthHigh = lab("pth-high");
  const hyperparathyroidism = pthHigh || dx("hyperparathyroidism");
  const mineral = caxpHigh || hyperparathyroidism || hypercalcemia || hyperphosphatemia;
  const strongMineral = caxpHigh || hypercalcemia || hyperphosphatemia ||
    (esrd && lab("pth-above-9x-upper-limit")) || (pthHigh && !esrd);
  const characteristicLesion = dx("skin-nodule") || dx("livedo-reticularis") || dx("skin-necrosis") || dx("gangrene");
  const ulcer = dx("skin-ulcer");
  const openLesion = ulcer || dx("skin-necrosis");
  const calciphylaxis = dx("calciphylaxis");
  const ctd = dx("dermatomyositis") || dx("systemic-sclerosis") || dx("mctd");

  const raw = {
    "calciphylaxis-suspected": esrd && ((characteristicLesion && mineral) || (ulcer && strongMineral)) && !calciphylaxis,
    "calciphylaxis-risk": esrd && caxpHigh && hyperparathyroidism && !calciphylaxis,
    "calciphylaxis-ulcer-differential": esrd && ulcer && mineral && !calciphylaxis,
    "calciphylaxis-wound-sepsis-risk": calciphylaxis && (ulcer || dx("skin-necrosis") || dx("gangrene") || dx("sepsis")),
    "metastatic-calcification-risk": caxpHigh && (hypercalcemia || hyperphosphatemia),
    "dystrophic-calcinosis-watch": ctd && !dx("calcinosis-cutis"),
    "calcinosis-infection-risk": (dx("calcinosis-cutis") || dx("tumoral-calcinosis")) && openLesion,
    "calcinosis-metastatic-pattern": dx("calcinosis-cutis") && (hypercalcemia || hyperphosphatemia),
  };
  // A rule does not fire where a rule that suppresses it fires (a suppressed rule suppresses nothing).
  const fired = new Map();
  const fires = (id) => {
    if (!fired.has(id)) fired.set(id, raw[id] && !(suppressedBy[id] ?? []).some(fires));
    return fired.get(id);
  };
  return Object.keys(raw).filter(fires);
}

const out = [];
for (const [ref, p] of patients) for (const rule of evaluate(p)) out.push(ref + " " + rule);
out.sort();
process.stdout.write(out.length ? out.join("\n") + "\n" : "");
