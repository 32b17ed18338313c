// For scripts/test-deploy: are the system calls a traced run of calcalert made (strace -f -o FILE)
// all allowed by the SystemCallFilter= lines of a systemd unit? An allow list (the lines without
// "~") minus the deny lists (the lines with "~"), groups expanded by `systemd-analyze syscall-filter`.
//   node tests/deploy/syscalls.mjs UNIT TRACE...
// Prints the number of distinct calls and any outside the filter; exit 0 when none is outside.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

const [unit, ...traces] = process.argv.slice(2);
const cache = new Map();
function expand(name, seen = new Set()) {
  if (!name.startsWith('@')) return new Set([name]);
  if (seen.has(name)) return new Set();
  seen.add(name);
  if (!cache.has(name)) cache.set(name, execFileSync('systemd-analyze', ['syscall-filter', name], { encoding: 'utf8' }));
  const out = new Set();
  for (const line of cache.get(name).split('\n').slice(1)) {
    const word = line.trim();
    if (!word || word.startsWith('#')) continue;
    for (const s of expand(word, seen)) out.add(s);
  }
  return out;
}
const allowed = new Set();
const denied = new Set();
for (const line of fs.readFileSync(unit, 'utf8').split('\n')) {
  const m = line.match(/^SystemCallFilter=(~?)(.*)$/);
  if (!m) continue;
  for (const word of m[2].split(/\s+/).filter(Boolean)) for (const s of expand(word)) (m[1] ? denied : allowed).add(s);
}
if (allowed.size === 0) {
  console.error(`${unit}: no SystemCallFilter= allow list`);
  process.exit(1);
}
const used = new Set();
for (const trace of traces)
  for (const line of fs.readFileSync(trace, 'utf8').split('\n')) {
    const m = line.match(/^\d+\s+([a-z0-9_]+)\(/);
    if (m) used.add(m[1]);
  }
const outside = [...used].filter((s) => !allowed.has(s) || denied.has(s)).sort();
console.log(`${used.size} distinct system calls${outside.length ? `; outside the filter: ${outside.join(' ')}` : ', all within the filter'}`);
process.exit(used.size > 0 && outside.length === 0 ? 0 : 1);
