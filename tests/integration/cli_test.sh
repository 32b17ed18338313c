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

# Every third-party Synthea bundle reads cleanly.
run synthea evaluate --now $now --format text "$root"/../shared/thirdparty/synthea/*.json
check "Synthea bundles: exit 0" test $rc -eq 0
check "Synthea bundles: no error lines" test ! -s "$tmp/synthea.err"
check "Synthea bundles: 30 patients" grep -q '^30 patients' "$tmp/synthea.out"

# The synthetic cohort of the sandbox: valid FHIR R4 NDJSON, the same bytes for the same seed, read cleanly.
run gen sandbox generate --out "$tmp/gen" --patients 50 --seed 7 --now $now
check "sandbox generate exits 0" test $rc -eq 0
check "sandbox generate writes the NDJSON files and expected.json" test -s "$tmp/gen/Patient.ndjson" -a \
  -s "$tmp/gen/Observation.ndjson" -a -s "$tmp/gen/Condition.ndjson" -a -s "$tmp/gen/expected.json"
check "sandbox generate: 50 patients" test "$(wc -l <"$tmp/gen/Patient.ndjson")" -eq 50
if [[ -d $root/deploy/sandbox/node_modules/@medplum/core ]]; then
  node "$validator" "$tmp/gen/Patient.ndjson" "$tmp/gen/Observation.ndjson" "$tmp/gen/Condition.ndjson" \
    >"$tmp/gen-validate.out" 2>"$tmp/gen-validate.err"
  vrc=$?
  check "the synthetic cohort is valid FHIR R4 ($(cat "$tmp/gen-validate.out"))" test $vrc -eq 0
  [[ $vrc -eq 0 ]] || head -20 "$tmp/gen-validate.err"
fi
run gen2 sandbox generate --out "$tmp/gen2" --patients 50 --seed 7 --now $now
check "sandbox generate: the same seed gives the same bytes" cmp -s "$tmp/gen/Observation.ndjson" "$tmp/gen2/Observation.ndjson"
run geneval evaluate --now $now --format text "$tmp/gen/Patient.ndjson" "$tmp/gen/Observation.ndjson" "$tmp/gen/Condition.ndjson"
check "the synthetic cohort evaluates without an error line" test $rc -eq 0 -a ! -s "$tmp/geneval.err"
run genusage sandbox generate --patients 5
check "sandbox generate without --out exits 2" test $rc -eq 2

echo "cli: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
