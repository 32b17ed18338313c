#!/usr/bin/env bash
# End-to-end tests of the calcalert program: exit codes, one-line errors naming where, output that a
# real FHIR validator accepts, and the third-party Synthea bundles read cleanly.
# Usage: cli_test.sh PATH/TO/calcalert SOURCE_ROOT
set -u
bin=$1
root=$2
now=2026-11-25T12:00:00Z
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@"; then pass; else fail "$what"; fi; }

# run NAME ARGS...: runs calcalert, keeps stdout/stderr in $tmp/NAME.{out,err}, exit code in $rc
run() {
  local name=$1; shift
  "$bin" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
  rc=$?
}
one_line_naming() {  # FILE PATTERN: stderr has exactly one line and it matches
  [[ $(wc -l <"$1") -eq 1 ]] && grep -qE "$2" "$1"
}

m=$root/tests/fixtures/malformed
run trunc evaluate --now $now "$m/truncated.json"
check "truncated JSON exits 3" test $rc -eq 3
check "truncated JSON: one line naming file and line" one_line_naming "$tmp/trunc.err" 'truncated\.json: JSON parse error at line [0-9]+, column [0-9]+'

run strnum evaluate --now $now --format ndjson "$m/string-number.json"
check "string for a number exits 3" test $rc -eq 3
check "string for a number: one line naming entry, resource and element" one_line_naming "$tmp/strnum.err" \
  'string-number\.json entry\[3\] Observation/mal-string-number-ca: Observation\.valueQuantity\.value: expected a number'
check "string for a number: the good resources still fire" grep -q '"code":"calcinosis-metastatic-pattern"' "$tmp/strnum.out"

run notype evaluate --now $now "$m/no-resource-type.json"
check "missing resourceType exits 3" test $rc -eq 3
check "missing resourceType: one line naming the entry" one_line_naming "$tmp/notype.err" 'entry\[1\]: .*resource has no resourceType'

run html evaluate --now $now "$m/not-json.txt"
check "HTML exits 3" test $rc -eq 3
check "HTML: one line saying it is not FHIR JSON" one_line_naming "$tmp/html.err" "not-json\.txt: not FHIR JSON"

run mixed evaluate --now $now --format ndjson "$m/mixed.ndjson"
check "bad NDJSON line exits 3" test $rc -eq 3
check "bad NDJSON line: reported by line number" one_line_naming "$tmp/mixed.err" 'mixed\.ndjson:4: JSON parse error'
check "bad NDJSON line: the good lines are evaluated" grep -q '"code":"calcinosis-infection-risk"' "$tmp/mixed.out"

run stdin evaluate --now $now --format ndjson - <"$m/mixed.ndjson"
check "NDJSON on stdin: exit 3 and the good lines evaluated" test $rc -eq 3
check "NDJSON on stdin: findings" grep -q '"code":"calcinosis-infection-risk"' "$tmp/stdin.out"

run missing evaluate --now $now "$tmp/does-not-exist.json"
check "missing file exits 3" test $rc -eq 3
run usage evaluate --format yaml x.json
check "bad --format exits 2" test $rc -eq 2
run dir evaluate --now $now "$tmp"
check "a directory is an input error" test $rc -eq 3

# Untrusted JSON (fhir/json_parse.hpp): nesting, a BOM, invalid UTF-8, numbers out of range. One
# line naming where, exit 3, never a crash, and the good lines or entries still evaluated.
brackets() { head -c "$1" /dev/zero | tr '\0' "$2"; }
printf '{"resourceType":"Observation","id":"deep","extension":%s%s}\n' "$(brackets 120000 '[')" "$(brackets 120000 ']')" >"$tmp/deep.json"
run deep evaluate --now $now "$tmp/deep.json"
check "120,000 levels deep: exit 3, not a crash ($rc)" test $rc -eq 3
check "120,000 levels deep: one line naming the resource and the limit" one_line_naming "$tmp/deep.err" \
  '^calcalert: error: .*deep\.json Observation/deep: Observation\.extension\[0\].*: nested deeper than 100 levels \(line 1, column 1'
{ sed -n 1,3p "$m/mixed.ndjson"; cat "$tmp/deep.json"; sed -n '5,$p' "$m/mixed.ndjson"; } >"$tmp/deep.ndjson"
run deepnd evaluate --now $now --format ndjson "$tmp/deep.ndjson"
check "a deep NDJSON line: exit 3" test $rc -eq 3
check "a deep NDJSON line: one line naming the line" one_line_naming "$tmp/deepnd.err" 'deep\.ndjson:4 Observation/deep: .*nested deeper than 100 levels'
check "a deep NDJSON line: the good lines are evaluated" grep -q '"code":"calcinosis-infection-risk"' "$tmp/deepnd.out"
run deepstdin evaluate --now $now --format ndjson - <"$tmp/deep.ndjson"
check "a deep NDJSON line on stdin: exit 3 and the good lines evaluated" test $rc -eq 3
check "a deep NDJSON line on stdin: findings" grep -q '"code":"calcinosis-infection-risk"' "$tmp/deepstdin.out"

nd=$root/tests/fixtures/ndjson
run plain evaluate --now $now --format ndjson "$nd/Patient.ndjson" "$nd/Observation.ndjson" "$nd/Condition.ndjson"
for f in Patient Observation Condition; do { printf '\xef\xbb\xbf'; cat "$nd/$f.ndjson"; } >"$tmp/bom-$f.ndjson"; done
run bom evaluate --now $now --format ndjson "$tmp/bom-Patient.ndjson" "$tmp/bom-Observation.ndjson" "$tmp/bom-Condition.ndjson"
check "BOM before the first NDJSON line: exit 0, no error line" test $rc -eq 0 -a ! -s "$tmp/bom.err"
check "BOM before the first NDJSON line: the first resource is kept (the same output as without)" cmp -s "$tmp/plain.out" "$tmp/bom.out"
check "there are findings to compare" test -s "$tmp/plain.out"
run bomstdin evaluate --now $now --format ndjson - < <(printf '\xef\xbb\xbf'; cat "$nd/Patient.ndjson" "$nd/Observation.ndjson" "$nd/Condition.ndjson")
check "BOM on standard input: the same output" cmp -s "$tmp/plain.out" "$tmp/bomstdin.out"

{ sed -n 1,3p "$m/mixed.ndjson"
  printf '{"resourceType":"Observation","id":"bad-utf8","status":"final","note":[{"text":"M\xffller"}]}\n'
  sed -n '5,$p' "$m/mixed.ndjson"; } >"$tmp/utf8.ndjson"
run utf8 evaluate --now $now --format ndjson "$tmp/utf8.ndjson"
check "invalid UTF-8: exit 3" test $rc -eq 3
check "invalid UTF-8: one line naming the line, resource and element" one_line_naming "$tmp/utf8.err" \
  'utf8\.ndjson:4 Observation/bad-utf8: Observation\.note\[0\]\.text: invalid UTF-8 \(byte 0xFF\) in a string \(column 82\)'
check "invalid UTF-8: the good lines are evaluated" grep -q '"code":"calcinosis-infection-risk"' "$tmp/utf8.out"
check "invalid UTF-8: the byte is never copied to stdout or stderr" bash -c "! LC_ALL=C grep -q \$'\\xff' '$tmp/utf8.out' '$tmp/utf8.err'"
run utf8b evaluate --now $now "$tmp/utf8.ndjson"
check "invalid UTF-8: the bundle output holds no invalid byte" bash -c "! LC_ALL=C grep -q \$'\\xff' '$tmp/utf8b.out'"

for n in 1e309 -1e400 2e308; do
  sed "s/\"value\": \"high\"/\"value\": $n/" "$m/string-number.json" >"$tmp/range.json"
  run range evaluate --now $now --format ndjson "$tmp/range.json"
  check "$n: exit 3" test $rc -eq 3
  check "$n: one line naming entry, resource and element" one_line_naming "$tmp/range.err" \
    "range\.json entry\[3\] Observation/mal-string-number-ca: Observation\.valueQuantity\.value: the number $n is out of range: JSON numbers must be finite doubles \(line 148, column 20\)"
  check "$n: the other entries still fire" grep -q '"code":"calcinosis-metastatic-pattern"' "$tmp/range.out"
done
sed 's/"value": "high"/"value": Infinity/' "$m/string-number.json" >"$tmp/inf.json"
run inf evaluate --now $now "$tmp/inf.json"
check "Infinity: exit 3, one line saying it is not a JSON number" one_line_naming "$tmp/inf.err" \
  'inf\.json: JSON parse error at line 148, column 20: Infinity is not a JSON number: non-finite numbers are refused'

# The rule fixtures and the example cohort: valid FHIR R4 output, one DetectedIssue per finding.
inputs=()
for f in "$root"/tests/fixtures/rules/*.json "$root/examples/cohort/cohort.json"; do
  [[ $(basename "$f") == expected.json ]] || inputs+=("$f")
done
run fixtures evaluate --now $now "${inputs[@]}"
check "fixtures evaluate cleanly" test $rc -eq 0
check "fixtures: no error lines" test ! -s "$tmp/fixtures.err"
run fixtures_nd evaluate --now $now --format ndjson "${inputs[@]}"
issues_in_bundle=$(grep -o '"resourceType":"DetectedIssue"' "$tmp/fixtures.out" | wc -l)
check "ndjson has one line per DetectedIssue of the bundle ($issues_in_bundle)" test "$(wc -l <"$tmp/fixtures_nd.out")" -eq "$issues_in_bundle"
check "there are findings to validate" test "$issues_in_bundle" -gt 20
run again evaluate --now $now "${inputs[@]}"
check "the same input and --now give the same bytes" cmp -s "$tmp/fixtures.out" "$tmp/again.out"

validator=$root/deploy/sandbox/validate.mjs
if [[ -d $root/deploy/sandbox/node_modules/@medplum/core ]]; then
  node "$validator" "$tmp/fixtures.out" >"$tmp/validate.out" 2>"$tmp/validate.err"
  vrc=$?
  check "every DetectedIssue is valid FHIR R4 ($(cat "$tmp/validate.out"))" test $vrc -eq 0
  [[ $vrc -eq 0 ]] || head -20 "$tmp/validate.err"
  node "$validator" "$tmp/fixtures_nd.out" >/dev/null 2>&1
  check "the NDJSON output is valid FHIR R4" test $? -eq 0
  # The validator itself must reject a broken DetectedIssue, or the checks above prove nothing.
  sed 's/"severity":"moderate"/"severity":"bogus"/' "$tmp/fixtures_nd.out" >"$tmp/broken.ndjson"
  node "$validator" "$tmp/broken.ndjson" >/dev/null 2>&1
  check "the validator rejects a DetectedIssue with a bad severity" test $? -ne 0
else
  fail "the FHIR validator is not installed (run scripts/setup): deploy/sandbox/node_modules missing"
fi

# Text report: readable per patient.
run text evaluate --now $now --format text "$root/examples/cohort/cohort.json"
check "text report exits 0" test $rc -eq 0
check "text report closes with a count line" grep -qE '^[0-9]+ patients, [0-9]+ with findings; [0-9]+ findings' "$tmp/text.out"
check "text report shows severities" grep -q '\[HIGH\] calciphylaxis-suspected' "$tmp/text.out"
check "text report: the ulcer differential (moderate)" grep -q '\[MODERATE\] calciphylaxis-ulcer-differential' "$tmp/text.out"
check "text report: references only in the evidence list" bash -c "! grep -E '^    - .*\[(Observation|Condition)/' '$tmp/text.out' && grep -qE '^    Evidence: \[1\] ' '$tmp/text.out'"
run tz evaluate --now $now --format text --time-zone Europe/Berlin "$root/examples/cohort/cohort.json"
check "--time-zone Europe/Berlin: times in CET" grep -q 'on 14 Nov 2026 08:50 CET' "$tmp/tz.out"
run tzbad evaluate --now $now --time-zone Mars/Olympus "$root/examples/cohort/cohort.json"
check "an unknown --time-zone exits 2" test $rc -eq 2
run tznd evaluate --now $now --format ndjson --time-zone America/New_York "$root/tests/fixtures/rules/calciphylaxis-risk.json"
run utcnd evaluate --now $now --format ndjson "$root/tests/fixtures/rules/calciphylaxis-risk.json"
hashes() { grep -o '"valueString":"[0-9a-f]*"' "$1"; }
check "the evidence hashes do not depend on the time zone" cmp -s <(hashes "$tmp/tznd.out") <(hashes "$tmp/utcnd.out")
check "the details do" bash -c "! cmp -s '$tmp/tznd.out' '$tmp/utcnd.out'"

# Another server's patient is named by its last two segments and its URL.
run ident evaluate --now $now --format text "$root/tests/fixtures/rules/identity.json"
check "identity: exit 0, no error line" test $rc -eq 0 -a ! -s "$tmp/ident.err"
check "text report names another server's patient by its last two segments and its URL" \
  grep -qxF 'Patient/idn-local (https://other.example.net/fhir/Patient/idn-local)' "$tmp/ident.out"

# Procedure and Patient are inputs: a hemodialysis 10 days ago is ESRD; a deceased Patient gets no finding.
dia_lines() {  # $1: the Patient resource
  printf '%s\n' "$1" \
    '{"resourceType":"Condition","id":"nd-dia-ulcer","clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"L97.909"}]},"subject":{"reference":"Patient/nd-dia"}}' \
    '{"resourceType":"Observation","id":"nd-dia-pth","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2731-8"}]},"subject":{"reference":"Patient/nd-dia"},"effectiveDateTime":"2026-11-20T08:00:00Z","valueQuantity":{"value":650,"unit":"pg/mL","system":"http://unitsofmeasure.org","code":"pg/mL"}}' \
    '{"resourceType":"Procedure","id":"nd-dia-hd","status":"completed","code":{"coding":[{"system":"http://snomed.info/sct","code":"302497006"}]},"subject":{"reference":"Patient/nd-dia"},"performedDateTime":"2026-11-15T08:00:00Z"}'
}
dia_lines '{"resourceType":"Patient","id":"nd-dia"}' >"$tmp/dia.ndjson"
run dia evaluate --now $now --format ndjson "$tmp/dia.ndjson"
check "a dialysis Procedure in NDJSON: calciphylaxis-suspected" grep -q '"code":"calciphylaxis-suspected"' "$tmp/dia.out"
dia_lines '{"resourceType":"Patient","id":"nd-dia","deceasedBoolean":true}' >"$tmp/dead.ndjson"
run dead evaluate --now $now --format text "$tmp/dead.ndjson"
check "a deceased Patient: no finding, a note saying so" grep -q 'the patient is deceased (deceasedBoolean true): no finding' "$tmp/dead.out"
check "a deceased Patient: no finding" grep -q '^1 patients, 0 with findings' "$tmp/dead.out"

# Every third-party Synthea bundle reads cleanly (third-party data beside the checkout, not in it).
if compgen -G "$root/../shared/thirdparty/synthea/*.json" >/dev/null; then
  run synthea evaluate --now $now --format text "$root"/../shared/thirdparty/synthea/*.json
  check "Synthea bundles: exit 0" test $rc -eq 0
  check "Synthea bundles: no error lines" test ! -s "$tmp/synthea.err"
  check "Synthea bundles: 30 patients" grep -q '^30 patients' "$tmp/synthea.out"
  check "Synthea bundles: no finding (dialysis Procedures and deceased Patients included)" grep -q '^30 patients, 0 with findings' "$tmp/synthea.out"
else
  echo "SKIP: ../shared/thirdparty/synthea not found: the Synthea bundle checks are skipped"
fi

# The synthetic cohort of the sandbox: valid FHIR R4 NDJSON, the same bytes for the same seed, read cleanly.
# 140 patients: the first 137 (the weights) hold every archetype, the dialysis Procedures too.
run gen sandbox generate --out "$tmp/gen" --patients 140 --seed 7 --now $now
check "sandbox generate exits 0" test $rc -eq 0
check "sandbox generate writes the NDJSON files and expected.json" test -s "$tmp/gen/Patient.ndjson" -a \
  -s "$tmp/gen/Observation.ndjson" -a -s "$tmp/gen/Condition.ndjson" -a -s "$tmp/gen/Procedure.ndjson" -a \
  -s "$tmp/gen/expected.json"
check "sandbox generate: 140 patients" test "$(wc -l <"$tmp/gen/Patient.ndjson")" -eq 140
if [[ -d $root/deploy/sandbox/node_modules/@medplum/core ]]; then
  node "$validator" "$tmp/gen/Patient.ndjson" "$tmp/gen/Observation.ndjson" "$tmp/gen/Condition.ndjson" \
    "$tmp/gen/Procedure.ndjson" \
    >"$tmp/gen-validate.out" 2>"$tmp/gen-validate.err"
  vrc=$?
  check "the synthetic cohort is valid FHIR R4 ($(cat "$tmp/gen-validate.out"))" test $vrc -eq 0
  [[ $vrc -eq 0 ]] || head -20 "$tmp/gen-validate.err"
fi
run gen2 sandbox generate --out "$tmp/gen2" --patients 140 --seed 7 --now $now
check "sandbox generate: the same seed gives the same bytes" cmp -s "$tmp/gen/Observation.ndjson" "$tmp/gen2/Observation.ndjson"
run geneval evaluate --now $now --format text "$tmp/gen/Patient.ndjson" "$tmp/gen/Observation.ndjson" "$tmp/gen/Condition.ndjson" "$tmp/gen/Procedure.ndjson"
check "the synthetic cohort evaluates without an error line" test $rc -eq 0 -a ! -s "$tmp/geneval.err"
# --jobs: the same output and the same error lines as --jobs 1, in the same order. Batches of 4 KiB
# (a few lines each) so that the 140 patients' lines, spread over four files, are parsed by other
# threads in many batches; a file with a bad line and a resend of Observations (the latest version
# counts) is read too.
gen=("$tmp/gen/Patient.ndjson" "$tmp/gen/Observation.ndjson" "$tmp/gen/Condition.ndjson" "$tmp/gen/Procedure.ndjson")
{ head -40 "$tmp/gen/Observation.ndjson"; cat "$m/mixed.ndjson"; } >"$tmp/resend.ndjson"
run jobs1 evaluate --now $now --format ndjson --jobs 1 "${gen[@]}" "$tmp/resend.ndjson"
check "--jobs 1: exit 3 (the bad line) and findings" test $rc -eq 3 -a -s "$tmp/jobs1.out"
for j in 2 3; do
  run jobs$j evaluate --now $now --format ndjson --jobs $j --batch-bytes 4096 "${gen[@]}" "$tmp/resend.ndjson"
  check "--jobs $j: exit 3" test $rc -eq 3
  check "--jobs $j: the same DetectedIssues as --jobs 1, in the same order" cmp -s "$tmp/jobs1.out" "$tmp/jobs$j.out"
  check "--jobs $j: the same error lines as --jobs 1" cmp -s "$tmp/jobs1.err" "$tmp/jobs$j.err"
done
run jobstext evaluate --now $now --format text --jobs 2 --batch-bytes 1 "${gen[@]}"
check "--jobs 2, one line a batch: the same report as --jobs 1" cmp -s "$tmp/geneval.out" "$tmp/jobstext.out"
for bad in 0 -1 x 2.5 "" 100000; do
  run jobsbad evaluate --now $now --jobs "$bad" "${gen[@]}"
  check "--jobs '$bad' is refused: exit 2, one line naming --jobs" test $rc -eq 2 -a ! -s "$tmp/jobsbad.out"
  check "--jobs '$bad': the message" one_line_naming "$tmp/jobsbad.err" "usage error: --jobs must be a whole number from 1 to [0-9]+, not '$bad'"
done
run batchbad evaluate --now $now --jobs 2 --batch-bytes 0 "${gen[@]}"
check "--batch-bytes 0 is refused: exit 2" test $rc -eq 2 -a ! -s "$tmp/batchbad.out"
run evalhelp evaluate --help
check "evaluate --help lists --jobs" grep -q -- "--jobs N" "$tmp/evalhelp.out"

run genusage sandbox generate --patients 5
check "sandbox generate without --out exits 2" test $rc -eq 2

# --format html -o DIR: the explanation pages of a batch.
cohort=$root/examples/cohort/cohort.json
run htmlnoout evaluate --now $now --format html "$cohort"
check "--format html without -o exits 2" test $rc -eq 2
check "--format html without -o: one line saying -o is needed" one_line_naming "$tmp/htmlnoout.err" 'needs -o DIR'
run textout evaluate --now $now --format text -o "$tmp/x" "$cohort"
check "-o with --format text exits 2" test $rc -eq 2
check "-o with --format text writes nothing" test ! -e "$tmp/x"
run htmlout evaluate --now $now --format html -o "$tmp/pages/new" "$cohort"
check "--format html exits 0" test $rc -eq 0
check "--format html creates DIR with index.html" test -s "$tmp/pages/new/index.html"
pages=$(find "$tmp/pages/new" -name '*-*-*-*-*.html' | wc -l)
findings=$("$bin" evaluate --now $now --format ndjson "$cohort" | wc -l)
check "--format html: one page per finding ($pages pages, $findings findings)" test "$pages" -eq "$findings" -a "$pages" -gt 0
harold=$("$bin" evaluate --now $now --format ndjson "$cohort" | grep '"reference":"Patient/harold-kim"' | sed 's/.*"identifier":\[{"system":"[^"]*","value":"\([^"]*\)".*/\1/')
check "--format html: the index links harold-kim's page" grep -q "href=\"$harold.html\"" "$tmp/pages/new/index.html"
check "--format html: the page has its chart and the catalog's Ca×P threshold" \
  grep -q 'data-fact="ca-x-p-high" data-threshold="70"' "$tmp/pages/new/$harold.html"
check "--format html: no script, no external resource" bash -c "! grep -qE '<script|<link|src=' '$tmp/pages/new/$harold.html'"
check "--format html: the page links back to the index" grep -q 'href="index.html"' "$tmp/pages/new/$harold.html"
echo "kept" >"$tmp/pages/new/notes.txt"
run htmlagain evaluate --now $now --format html -o "$tmp/pages/new" "$cohort"
check "--format html again into the same DIR replaces its own pages (exit 0)" test $rc -eq 0
check "--format html again leaves other files alone" grep -qx kept "$tmp/pages/new/notes.txt"
mkdir -p "$tmp/pages/theirs"
echo "<html>someone's index</html>" >"$tmp/pages/theirs/index.html"
run htmltheirs evaluate --now $now --format html -o "$tmp/pages/theirs" "$cohort"
check "--format html refuses to replace a file it did not write (exit 2)" test $rc -eq 2
check "--format html: the refusal names the file" one_line_naming "$tmp/htmltheirs.err" 'index\.html exists and was not written by calcalert'
check "--format html: the foreign file is unchanged" grep -q "someone's index" "$tmp/pages/theirs/index.html"
check "--format html: nothing else was written" test "$(ls "$tmp/pages/theirs" | wc -l)" -eq 1
touch "$tmp/pages/afile"
run htmlfile evaluate --now $now --format html -o "$tmp/pages/afile" "$cohort"
check "-o naming a file exits 2" test $rc -eq 2

echo "cli: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
