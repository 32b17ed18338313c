// The explanation page end to end in headless Chromium: a real `calcalert serve` on a free loopback port,
// a patient-view call with prefetch for synthetic patients (`calcalert sandbox generate`), the card's link
// followed in the browser; the chart (points, threshold lines, fired values), the evidence table, keyboard
// navigation, a screenshot; the page of each of the eight patient rules; expired and altered tokens (401)
// and a valid token whose page the service does not hold (410).
//
//   node explain-page.test.mjs CALCALERT_BINARY SOURCE_DIR OUTPUT_DIR
//
// Chromium: /usr/bin/chromium (Debian's package), or $CALCALERT_CHROMIUM. Prints one line per check and
// "N passed, N failed" last; exit 0 when all passed, 1 otherwise.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [binary, sourceDir, outputDir] = process.argv.slice(2);
if (!binary || !sourceDir || !outputDir) {
  console.error("usage: node explain-page.test.mjs CALCALERT_BINARY SOURCE_DIR OUTPUT_DIR");
  process.exit(2);
}
const chromiumPath = process.env.CALCALERT_CHROMIUM || "/usr/bin/chromium";
const PATIENT_RULES = [
  "calciphylaxis-suspected", "calciphylaxis-ulcer-differential", "calciphylaxis-risk",
  "calciphylaxis-wound-sepsis-risk", "metastatic-calcification-risk", "dystrophic-calcinosis-watch",
  "calcinosis-infection-risk", "calcinosis-metastatic-pattern",
];

let passed = 0, failed = 0;
function check(ok, what, detail = "") {
  if (ok) {
    passed++;
    console.log(`ok: ${what}`);
  } else {
    failed++;
    console.log(`FAILED: ${what}${detail ? ` (${detail})` : ""}`);
  }
}

const work = mkdtempSync(join(tmpdir(), "calcalert-browser-"));
let serve = null, context = null;

function run(args) {
  return new Promise((resolve, reject) => {
    const p = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (err += d));
    p.on("error", reject);
    p.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`${args.join(" ")}: exit ${code}: ${err}`))));
  });
}

// `calcalert serve` on a free loopback port: the URL from its first line.
function startServe(configPath) {
  return new Promise((resolve, reject) => {
    const p = spawn(binary, ["serve", "--config", configPath, "--port", "0", "--insecure-dev",
      "--catalog", join(sourceDir, "rules/catalog"), "--terminology", join(sourceDir, "mappings/data")],
    { stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${err}`)), 20000);
    p.stderr.on("data", (d) => (err += d));
    p.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/^listening (http:\/\/127\.0\.0\.1:\d+)\n/);
      if (m) {
        clearTimeout(timer);
        resolve({ process: p, url: m[1] });
      }
    });
    p.on("close", (code) => reject(new Error(`serve exited ${code}: ${err}`)));
  });
}

function ndjson(file) {
  return readFileSync(file, "utf8").split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

function subjectOf(r) {
  return r.subject && r.subject.reference;
}

function searchset(resources) {
  return { resourceType: "Bundle", type: "searchset", total: resources.length,
    entry: resources.map((r) => ({ fullUrl: `urn:uuid:${r.id}`, resource: r })) };
}

// The token format of adapters/cds_hooks/explain_links.hpp, minted here with the service's key file: an
// independent reading of the format.
function mint(key, idBytes, expires, bindingBytes) {
  const raw = Buffer.alloc(41);
  raw[0] = 1;
  idBytes.copy(raw, 1);
  raw.writeBigUInt64BE(BigInt(expires), 17);
  bindingBytes.copy(raw, 25);
  const tag = createHmac("sha256", key).update(Buffer.concat([Buffer.from("calcalert-explain-token\0"), raw])).digest();
  return Buffer.concat([raw, tag.subarray(0, 16)]).toString("base64url");
}

try {
  // The synthetic cohort, through the program's own CLI and its ground truth.
  const cohortDir = join(work, "cohort");
  await run(["sandbox", "generate", "--out", cohortDir, "--patients", "120", "--seed", "7"]);
  const expected = JSON.parse(readFileSync(join(cohortDir, "expected.json"), "utf8"));
  const patients = ndjson(join(cohortDir, "Patient.ndjson"));
  const observations = ndjson(join(cohortDir, "Observation.ndjson"));
  const conditions = ndjson(join(cohortDir, "Condition.ndjson"));
  // Dialysis Procedures, when the generator writes them.
  const procedures = existsSync(join(cohortDir, "Procedure.ndjson")) ? ndjson(join(cohortDir, "Procedure.ndjson")) : null;

  const keyFile = join(work, "explain.key");
  const key = randomBytes(32);
  writeFileSync(keyFile, key);
  const configPath = join(work, "serve.json");
  writeFileSync(configPath, JSON.stringify({
    bind_address: "127.0.0.1", state_file: join(work, "state.sqlite"), explain_key_file: keyFile,
    explain_link_lifetime_seconds: 600,
  }));
  serve = await startServe(configPath);
  const base = serve.url;

  async function patientView(patientId) {
    const ref = `Patient/${patientId}`;
    const body = {
      hook: "patient-view", hookInstance: randomBytes(8).toString("hex"),
      context: { userId: "Practitioner/1", patientId },
      prefetch: {
        observations: searchset(observations.filter((o) => subjectOf(o) === ref)),
        conditions: searchset(conditions.filter((c) => subjectOf(c) === ref)),
        procedures: procedures ? searchset(procedures.filter((p) => subjectOf(p) === ref)) : null,
        patient: patients.find((p) => p.id === patientId) || null,
      },
    };
    const r = await fetch(`${base}/cds-services/calcalert-patient-view`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (r.status !== 200) throw new Error(`patient-view for ${patientId}: ${r.status} ${await r.text()}`);
    return (await r.json()).cards;
  }

  const userDataDir = mkdtempSync(join(tmpdir(), "calcalert-chromium-"));
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: chromiumPath, headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      viewport: { width: 1100, height: 900 },
    });
    const page = context.pages()[0] || await context.newPage();
    const external = [];
    page.on("request", (req) => { if (!req.url().startsWith(base)) external.push(req.url()); });

    // Each of the eight patient rules: a patient of the cohort whose archetype expects it.
    let screenshotTaken = false;
    for (const rule of PATIENT_RULES) {
      const who = expected.patients.find((p) => p.expect.includes(rule));
      if (!who) {
        check(false, `${rule}: a synthetic patient expects it`);
        continue;
      }
      const patientId = who.patient.replace(/^Patient\//, "");
      const cards = await patientView(patientId);
      const card = cards.find((c) => c.source && c.source.topic && c.source.topic.code === rule);
      check(!!card, `${rule}: patient-view for ${who.patient} (${who.archetype}) returns its card`);
      if (!card) continue;
      const link = (card.links || [])[0];
      check(!!link && link.type === "absolute" && typeof link.label === "string" && link.label.length > 0 &&
        link.url.startsWith(`${base}/explain/`), `${rule}: the card has an absolute link to ${base}/explain/…`, JSON.stringify(card.links));
      if (!link) continue;
      check(!link.url.includes(patientId) && !link.url.includes("syn-"), `${rule}: the link carries no patient id`);
      const resp = await page.goto(link.url);
      check(resp.status() === 200, `${rule}: the page opens (200)`, String(resp.status()));
      check((await page.locator("h1").innerText()).length > 0 && (await page.title()).includes(who.patient),
        `${rule}: the page names the rule and the patient`);
      const sentence = await page.locator("#sentence").innerText();
      check(sentence === card.summary, `${rule}: the finding in one sentence is the card's summary`, sentence);
      check(await page.locator("svg.chart").count() >= 4, `${rule}: four charts or more (calcium, phosphate, Ca×P, PTH)`);
      check(await page.locator("svg.chart line.threshold").count() >= 4, `${rule}: threshold lines drawn`);
      check(await page.locator("#guidance ~ blockquote, section[aria-labelledby=guidance] blockquote").count() >= 1,
        `${rule}: the seed's guidance is quoted`);
      check(await page.locator("#citation a[href^='https://pubmed.ncbi.nlm.nih.gov/']").count() === 1, `${rule}: its citation`);

      if (rule === "calciphylaxis-risk") {
        // The chart in detail: points, thresholds of the catalog, fired values marked and labelled.
        const points = await page.locator("svg.chart .point").count();
        check(points >= 3, "chart: SVG points present", String(points));
        const capxp = page.locator("#chart-ca-x-p");
        check(await capxp.locator("line.threshold[data-fact='ca-x-p-high'][data-threshold='70']").count() === 1,
          "chart: the Ca×P threshold 70 of the catalog is a line");
        check(await page.locator("#chart-pth-intact line.threshold").count() === 2, "chart: PTH has its two thresholds");
        const fired = page.locator("svg.chart .point.fired");
        check(await fired.count() >= 2, "chart: the values that fired are marked (Ca×P and PTH)", String(await fired.count()));
        const label = await capxp.locator(".point.fired").first().getAttribute("aria-label");
        check(/Fired this alert/.test(label || ""), "chart: a fired value says so to screen readers", label);
        const plain = await page.locator("svg.chart .point:not(.fired)").first().getAttribute("aria-label");
        check(plain && !/Fired/.test(plain), "chart: other values are not labelled fired", plain);
        const box = await capxp.locator(".point.fired").first().boundingBox();
        check(box && box.width > 8, "chart: the fired mark is drawn larger than a plain point", JSON.stringify(box));
        // The evidence table.
        const headers = await page.locator("#evidence-table thead th").allInnerTexts();
        check(["Value", "Unit", "Date", "Status", "Source"].every((h) => headers.includes(h)), "evidence table: its headers", headers.join("|"));
        const rows = await page.locator("#evidence-table tbody tr").count();
        check(rows >= 3, "evidence table: one row per lab result used", String(rows));
        const firstRow = await page.locator("#evidence-table tbody tr").first().innerText();
        check(/Observation\//.test(firstRow) && /UTC/.test(firstRow) && /final|amended|corrected/.test(firstRow),
          "evidence table: source, date in the zone, status", firstRow);
        // Keyboard: Tab moves focus through the focusable elements, the chart's points among them, each with
        // a visible focus ring.
        // Accessibility: the page's language, every chart named and described, every point labelled, every
        // table with a caption and scoped headers, and text contrast of at least 4.5:1 everywhere.
        const a11y = await page.evaluate(() => {
          const rgb = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null; const v = m[1].split(/[ ,/]+/).filter(Boolean).map(Number); return { r: v[0], g: v[1], b: v[2], a: v.length > 3 ? v[3] : 1 }; };
          const lum = ({ r, g, b }) => { const f = (x) => { x /= 255; return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; }; return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
          const background = (el) => { for (let e = el; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor); if (c && c.a > 0) return c; } return { r: 255, g: 255, b: 255, a: 1 }; };
          let worst = 99, worstText = "";
          for (const el of document.querySelectorAll("body *")) {
            const text = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
            if (!text || el.closest("title, desc, style") || el.closest(".sr-only")) continue;
            const style = getComputedStyle(el);
            if (style.visibility === "hidden" || style.display === "none") continue;
            const box = el.getBoundingClientRect();
            if (box.width === 0 || box.height === 0 || box.right < 0) continue;
            const fg = rgb(el instanceof SVGElement ? style.fill : style.color);
            if (!fg) continue;
            const L1 = lum(fg), L2 = lum(background(el));
            const ratio = (Math.max(L1, L2) + 0.05) / (Math.min(L1, L2) + 0.05);
            if (ratio < worst) { worst = ratio; worstText = text.slice(0, 40); }
          }
          return {
            lang: document.documentElement.lang,
            charts: [...document.querySelectorAll("svg.chart")].every((s) => s.querySelector(":scope > title") && s.querySelector(":scope > desc") && s.getAttribute("aria-labelledby")),
            points: [...document.querySelectorAll("svg.chart .point")].every((p) => (p.getAttribute("aria-label") || "").length > 10 && p.getAttribute("role") === "img"),
            tables: [...document.querySelectorAll("table")].every((t) => t.querySelector("caption") && [...t.querySelectorAll("thead th")].every((th) => th.getAttribute("scope") === "col")),
            worst, worstText,
          };
        });
        check(a11y.lang === "en", "accessibility: the page declares its language");
        check(a11y.charts && a11y.points, "accessibility: every chart is named and described, every point labelled");
        check(a11y.tables, "accessibility: every table has a caption and scoped column headers");
        check(a11y.worst >= 4.5, `accessibility: text contrast at least 4.5:1 (lowest ${a11y.worst.toFixed(1)}:1)`, `${a11y.worst.toFixed(2)} for "${a11y.worstText}"`);

        // Tab from the top of the page visits every focusable element once, in document order.
        const focusables = await page.evaluate(() => document.querySelectorAll("a[href], [tabindex]:not([tabindex='-1'])").length);
        await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
        const order = [];
        let pointsFocused = 0, ringless = 0;
        for (let i = 0; i < focusables; i++) {
          await page.keyboard.press("Tab");
          const info = await page.evaluate(() => {
            const all = [...document.querySelectorAll("a[href], [tabindex]:not([tabindex='-1'])")];
            const el = document.activeElement;
            const style = el ? getComputedStyle(el) : null;
            return { index: all.indexOf(el), cls: (el && el.getAttribute("class")) || "",
              ring: !!style && style.outlineStyle !== "none" && style.outlineWidth !== "0px" };
          });
          order.push(info.index);
          if (info.cls.includes("point")) pointsFocused++;
          if (!info.ring) ringless++;
        }
        check(focusables >= 5, "keyboard: the page has focusable elements", String(focusables));
        check(order.every((v, i) => v === i), "keyboard: Tab moves focus through every focusable element in order",
          order.join(","));
        check(pointsFocused === await page.locator("svg.chart .point").count(), "keyboard: every chart point takes focus",
          String(pointsFocused));
        check(ringless === 0, "keyboard: every focused element shows a focus ring", String(ringless));
        mkdirSync(outputDir, { recursive: true });
        await page.screenshot({ path: join(outputDir, "explain-page.png"), fullPage: true });
        await page.emulateMedia({ media: "print" });
        await page.screenshot({ path: join(outputDir, "explain-page-print.png"), fullPage: true });
        await page.emulateMedia({ media: "screen" });
        screenshotTaken = true;
        check(true, `screenshot saved: ${join(outputDir, "explain-page.png")}`);

        // Tokens: altered, expired, unknown.
        const token = link.url.slice(`${base}/explain/`.length);
        const raw = Buffer.from(token, "base64url");
        const altered = Buffer.from(raw);
        altered[5] ^= 0x01;
        let r = await page.goto(`${base}/explain/${altered.toString("base64url")}`);
        check(r.status() === 401, "an altered token: 401", String(r.status()));
        check(/not valid/i.test(await page.locator("body").innerText()), "an altered token: the page says the link is not valid");
        const expiredToken = mint(key, raw.subarray(1, 17), Math.floor(Date.now() / 1000) - 5, raw.subarray(25, 41));
        r = await page.goto(`${base}/explain/${expiredToken}`);
        check(r.status() === 401, "an expired token (signed with the service's key): 401", String(r.status()));
        check(/expired/i.test(await page.locator("body").innerText()), "an expired token: the page says it expired");
        const wrongKey = mint(randomBytes(32), raw.subarray(1, 17), Math.floor(Date.now() / 1000) + 300, raw.subarray(25, 41));
        r = await page.goto(`${base}/explain/${wrongKey}`);
        check(r.status() === 401, "a token signed with another key: 401", String(r.status()));
        const unknown = mint(key, randomBytes(16), Math.floor(Date.now() / 1000) + 300, raw.subarray(25, 41));
        r = await page.goto(`${base}/explain/${unknown}`);
        check(r.status() === 410, "a valid token whose page is not held: 410", String(r.status()));
        r = await page.goto(`${base}/explain/${"A".repeat(200)}`);
        check(r.status() === 401, "a token longer than the bound: 401", String(r.status()));
      }
    }
    check(screenshotTaken, "the calciphylaxis-risk page was checked in detail");
    check(external.length === 0, "the pages requested nothing but themselves", external.join(" "));
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
} catch (e) {
  check(false, "the test ran to its end", e && e.stack ? e.stack : String(e));
} finally {
  if (serve) {
    serve.process.removeAllListeners("close");
    serve.process.kill("SIGTERM");
    await new Promise((r) => serve.process.once("close", r));
  }
  rmSync(work, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
