#!/usr/bin/env bash
# weightgate load test, in two parts over loopback:
#
# 1. A sign-in burst: hundreds of concurrent wrong-password sign-ins, each
#    from an address of its own (through a trusted proxy header) and for an
#    account of its own, so that no per-address or per-account limit helps:
#    only the bound on password checks keeps memory flat. Checks that every
#    answer is 401 or 429 and that the portal's memory stays under 200 MiB.
# 2. The mixed load: thousands of concurrent clients mixing page views,
#    applications, authorised fetches and refused (forged) fetches for
#    minutes; then checks that nothing but the intended 429s failed, that
#    no request timed out and pages were answered within 1 s at the 99th
#    percentile, that memory stayed flat, and that the audit chain is whole.
#    The summary adds what the portal's `/metrics` saw: the wait for the
#    pages lane, the time per request by route, and 503s by cause.
#
#   bash bench/load.sh                    # 500 sign-ins for 20 s, then 2000 clients for 180 s
#   LOAD_CLIENTS=500 LOAD_SECONDS=30 bash bench/load.sh
#   LOAD_ONLY=signin bash bench/load.sh   # the sign-in burst alone
#
# Knobs (environment; defaults in brackets):
#   LOAD_ONLY     []       `signin` or `mixed` to run one part
#   LOAD_SIGNINS  [500]    concurrent sign-ins of the burst (wrk -c)
#   LOAD_SIGNIN_SECONDS [20]  how long the burst lasts
#   LOAD_CLIENTS  [2000]   concurrent connections (wrk -c) of the mixed load
#   LOAD_SECONDS  [180]    duration (wrk -d); the load stops by itself
#   LOAD_THREADS  [2]      wrk threads
#   LOAD_BIN      []       use this weightgate binary instead of building one
#   LOAD_TARGET_DIR [/root/.cache/weightgate-bench-target]  CARGO_TARGET_DIR of the build
#   LOAD_RESULTS  [bench/results/load.md]  where the summary is also written
#   LOAD_KEEP     []       a folder to keep the portal's log, its /metrics and wrk's output in
#
# Only loopback traffic (127.0.0.1). Exits non-zero when a check fails.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ONLY=${LOAD_ONLY:-}
SIGNINS=${LOAD_SIGNINS:-500}
SIGNIN_SECONDS=${LOAD_SIGNIN_SECONDS:-20}
CLIENTS=${LOAD_CLIENTS:-2000}
SECONDS_=${LOAD_SECONDS:-180}
THREADS=${LOAD_THREADS:-2}
TARGET_DIR=${LOAD_TARGET_DIR:-/root/.cache/weightgate-bench-target}
RESULTS=${LOAD_RESULTS:-$HERE/results/load.md}

log() { printf '\033[1m[load %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

for tool in wrk curl python3; do
    command -v "$tool" >/dev/null || {
        log "installing $tool"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    }
done

if [ -n "${LOAD_BIN:-}" ]; then
    WG=$LOAD_BIN
else
    log "building weightgate (release) into $TARGET_DIR"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --locked -q) || die "cargo build failed"
    WG=$TARGET_DIR/release/weightgate
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/weightgate-load.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wg() { WEIGHTGATE_DATA_DIR=$WORK/data WEIGHTGATE_LOG=warn "$WG" "$@"; }
export USER=${USER:-load}
# Thousands of sockets on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log "setting up a portal with a model of 4 files"
REL=$WORK/release
mkdir -p "$REL"
for i in 1 2 3 4; do head -c $((256 * 1024)) /dev/urandom >"$REL/shard-$i.bin"; done
wg migrate >/dev/null
wg model create load --title "Load model" >/dev/null
wg model publish load "$REL" >/dev/null
ADMIN=admin@load.invalid
ADMIN_PW=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s' "$ADMIN_PW" | wg reviewer add "$ADMIN" --admin --password-stdin >/dev/null
PORT=$(free_port)
BASE=http://127.0.0.1:$PORT
# Loopback plays a trusted proxy, so the sign-in burst can come from many
# addresses; the mixed load sends no X-Forwarded-For and is unaffected.
WEIGHTGATE_DATA_DIR=$WORK/data WEIGHTGATE_BIND=127.0.0.1:$PORT WEIGHTGATE_LOG=warn \
    WEIGHTGATE_TRUSTED_PROXIES=127.0.0.1 "$WG" serve >"$WORK/portal.log" 2>&1 &
PORTAL=$!
PIDS+=("$PORTAL")
for _ in $(seq 300); do curl -fsS -o /dev/null "$BASE/healthz" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "$BASE/healthz" || die "the portal did not start"

rss() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$PORTAL/status"; }
mkdir -p "$(dirname "$RESULTS")"
: >"$WORK/signin.md"

if [ "$ONLY" != mixed ]; then
    # A form token and its cookie for the sign-in page.
    curl -fsS -c "$WORK/login-cookies" "$BASE/admin/login" >"$WORK/login.html"
    LOGIN_TOKEN=$(python3 -c 'import re,sys; print(re.search(r"name=\"authenticity_token\"\s+value=\"([^\"]*)\"", open(sys.argv[1]).read()).group(1))' "$WORK/login.html")
    LOGIN_COOKIE=$(awk '(!/^#/ || /^#HttpOnly_/) && NF >= 7 { printf "%s%s=%s", (n++ ? "; " : ""), $6, $7 }' "$WORK/login-cookies")
    python3 - "$WORK" "$LOGIN_TOKEN" "$LOGIN_COOKIE" "$HERE" <<'PY'
import sys, urllib.parse
work, token, cookie, here = sys.argv[1:5]
def lua(s): return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
open(f"{work}/signin.lua", "w").write("""
local token = """ + lua(urllib.parse.quote(token, safe="")) + """
local cookie = """ + lua(cookie) + """
function request()
  n = n + 1
  -- An address and an account of its own for every attempt.
  local k = id * 1000000 + n
  local ip = string.format("10.%d.%d.%d", math.floor(k / 65536) % 256, math.floor(k / 256) % 256, k % 256)
  local body = "authenticity_token=" .. token .. "&email=nobody" .. k .. "%40lab.example.org&password=wrong+password+" .. n
  return wrk.format("POST", "/admin/login", { ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Cookie"] = cookie, ["X-Forwarded-For"] = ip }, body)
end
""" + open(f"{here}/tally.lua").read())
PY
    IDLE=$(rss)
    log "sign-in burst: idle RSS $IDLE KiB; $SIGNINS concurrent sign-ins for ${SIGNIN_SECONDS}s"
    : >"$WORK/signin-rss"
    (while kill -0 "$PORTAL" 2>/dev/null; do echo "$(rss)" >>"$WORK/signin-rss"; sleep 0.5; done) &
    SAMPLER=$!
    wrk -t"$THREADS" -c"$SIGNINS" -d"${SIGNIN_SECONDS}s" --timeout 20s -s "$WORK/signin.lua" "$BASE" >"$WORK/wrk-signin.out" 2>&1 \
        || die "wrk failed: $(cat "$WORK/wrk-signin.out")"
    sleep 2
    kill "$SAMPLER" 2>/dev/null || true
    AFTER=$(rss)
    cat "$WORK/wrk-signin.out" >&2
    python3 - "$WORK" "$SIGNINS" "$SIGNIN_SECONDS" "$IDLE" "$AFTER" >"$WORK/signin.md" <<'PY' || die "the sign-in burst failed its checks: $(cat "$WORK/signin.md")"
import re, sys
work, clients, seconds, idle, after = sys.argv[1:6]
text = open(f"{work}/wrk-signin.out").read()
statuses = {int(s): int(n) for s, n in re.findall(r"^STATUS (\d+) (\d+)$", text, re.M)}
errors = dict(re.findall(r"(\w+)=(\d+)", re.search(r"^ERRORS .*$", text, re.M).group(0)))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
latency = re.search(r"^LATENCY (.*)$", text, re.M).group(1)
samples = [int(l) for l in open(f"{work}/signin-rss") if l.strip().isdigit()]
peak = max(samples + [int(idle)])
unexpected = {s: n for s, n in statuses.items() if s not in (401, 429)}
ok = not unexpected and sum(int(v) for v in errors.values()) == 0 and peak < 200 * 1024
print(f"## Sign-in burst: {clients} concurrent sign-ins for {seconds} s, each from its own address and for its own account\n")
print(f"- answers: {', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))}; {rps:.0f}/s; latency {latency}")
print(f"- socket errors: {', '.join(f'{k} {v}' for k, v in errors.items())}")
print(f"- portal RSS: idle {int(idle) // 1024} MiB, peak {peak // 1024} MiB (sampled every 0.5 s), "
      f"{int(after) // 1024} MiB after")
print(f"\n**{'PASS' if ok else 'FAIL'}**: only 401 and 429, no socket errors, peak RSS under 200 MiB.\n")
sys.exit(0 if ok else 1)
PY
    cat "$WORK/signin.md"
fi
if [ "$ONLY" = signin ]; then
    cp "$WORK/signin.md" "$RESULTS"
    exit 0
fi

python3 "$HERE/grant.py" --base "$BASE" --slug load --outbox "$WORK/data/outbox" \
    --admin-email "$ADMIN" --admin-password "$ADMIN_PW" >"$WORK/manifest.json" || die "could not obtain a grant"

# A form token and its cookie, reused by every application the load sends.
curl -fsS -c "$WORK/cookies" "$BASE/models/load" >"$WORK/model.html"
TOKEN=$(python3 -c 'import re,sys; print(re.search(r"name=\"authenticity_token\"\s+value=\"([^\"]*)\"", open(sys.argv[1]).read()).group(1))' "$WORK/model.html")
# curl marks HttpOnly cookies with a "#HttpOnly_" prefix on the domain.
COOKIE=$(awk '(!/^#/ || /^#HttpOnly_/) && NF >= 7 { printf "%s%s=%s", (n++ ? "; " : ""), $6, $7 }' "$WORK/cookies")

# One wrk per kind of request, run at once, so each counts its own answers:
# 30% of the clients view pages, 40% fetch with valid links (small ranges),
# 20% fetch with forged links (signature altered), 10% send applications.
python3 - "$WORK" "$WORK/manifest.json" "$TOKEN" "$COOKIE" "$HERE" <<'PY'
import json, sys, urllib.parse
work, manifest, token, cookie, here = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4], sys.argv[5]
def lua(s): return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
fetches = ["/" + f["url"].split("/", 3)[3] for r in manifest["releases"] for f in r["files"]]
def forge(path):
    # Alter the last character of the token (its signature) before the file name.
    end = path.index("/", 4)
    return path[:end - 1] + ("B" if path[end - 1] == "A" else "A") + path[end:]
common = open(f"{here}/tally.lua").read()
scripts = {
    "page": 'local pages = {"/", "/models/load", "/static/style.css", "/signin"}\n'
            'function request() n = n + 1; return wrk.format("GET", pages[(n % #pages) + 1]) end\n',
    "fetch": "local fetches = {" + ", ".join(map(lua, fetches)) + "}\n"
             'function request() n = n + 1; return wrk.format("GET", fetches[(n % #fetches) + 1], '
             '{ ["Range"] = "bytes=0-4095" }) end\n',
    "forged": "local fetches = {" + ", ".join(lua(forge(p)) for p in fetches) + "}\n"
              'function request() n = n + 1; return wrk.format("GET", fetches[(n % #fetches) + 1]) end\n',
    "apply": "local token = " + lua(urllib.parse.quote(token, safe="")) + "\nlocal cookie = " + lua(cookie) + "\n"
             'function request()\n  n = n + 1\n'
             '  local body = "authenticity_token=" .. token .. "&name=Load+Test&email=load" .. id .. "x" .. n ..\n'
             '    "%40uni.example.edu&affiliation=Load+Lab&intended_use=Load+testing&accept_terms=on"\n'
             '  return wrk.format("POST", "/models/load/apply", { ["Content-Type"] = '
             '"application/x-www-form-urlencoded", ["Cookie"] = cookie, ["Accept"] = "text/html" }, body)\nend\n',
}
for kind, body in scripts.items():
    open(f"{work}/{kind}.lua", "w").write(body + common)
PY

log "idle RSS $(rss) KiB; starting $CLIENTS clients for ${SECONDS_}s"
# The machine's load average before the load and at its end: what else was
# running shows in the first.
cut -d' ' -f1-3 /proc/loadavg >"$WORK/loadavg"
: >"$WORK/rss"
(while kill -0 "$PORTAL" 2>/dev/null; do echo "$(date +%s) $(rss)" >>"$WORK/rss"; sleep 5; done) &
PIDS+=("$!")
WRKS=()
for spec in page:30 fetch:40 forged:20 apply:10; do
    kind=${spec%%:*}
    conns=$((CLIENTS * ${spec#*:} / 100))
    [ "$conns" -ge "$THREADS" ] || conns=$THREADS
    wrk -t"$THREADS" -c"$conns" -d"${SECONDS_}s" --timeout 20s -s "$WORK/$kind.lua" "$BASE" >"$WORK/wrk-$kind.out" 2>&1 &
    WRKS+=("$!")
done
for pid in "${WRKS[@]}"; do wait "$pid" || die "wrk failed: $(cat "$WORK"/wrk-*.out)"; done
# What the portal saw: time per request by route, the wait for the pages
# lane, and 503s by what was unavailable.
curl -fsS "$BASE/metrics" >"$WORK/metrics" || : >"$WORK/metrics"
cut -d' ' -f1-3 /proc/loadavg >>"$WORK/loadavg"
sleep 3
echo "$(date +%s) $(rss)" >>"$WORK/rss"
for f in "$WORK"/wrk-*.out; do echo "== $f" >&2; cat "$f" >&2; done

log "verifying the audit chain"
VERIFY=$(wg audit verify 2>&1) || { echo "$VERIFY" >&2; die "the audit chain is not whole"; }
EVENTS=$(wg audit list --format jsonl --limit 100000000 | wc -l)
PORTAL_ERRORS=$(grep -ciE 'error' "$WORK/portal.log" || true)
if [ -n "${LOAD_KEEP:-}" ]; then mkdir -p "$LOAD_KEEP" && cp "$WORK/portal.log" "$WORK/metrics" "$WORK"/wrk-*.out "$LOAD_KEEP/"; fi

STATUS=0
python3 - "$WORK" "$CLIENTS" "$SECONDS_" "$EVENTS" "$PORTAL_ERRORS" "$VERIFY" >"$WORK/summary.md" <<'PY' || STATUS=$?
import os, re, sys
work, clients, seconds, events, portal_errors, verify = sys.argv[1:7]
statuses, socket_errors, lines, rps_total = {}, 0, [], 0.0
share = {"page": 30, "fetch": 40, "forged": 20, "apply": 10}
for kind in share:
    text = open(f"{work}/wrk-{kind}.out").read()
    statuses[kind] = {int(s): int(n) for s, n in re.findall(r"^STATUS (\d+) (\d+)$", text, re.M)}
    errors = dict(re.findall(r"(\w+)=(\d+)", re.search(r"^ERRORS .*$", text, re.M).group(0)))
    socket_errors += sum(int(v) for v in errors.values())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    rps_total += rps
    latency = re.search(r"^LATENCY (.*)$", text, re.M).group(1)
    lines.append((kind, statuses[kind], errors, rps, latency))
samples = [int(l.split()[1]) for l in open(f"{work}/rss") if len(l.split()) == 2 and l.split()[1].isdigit()]
allowed = {"page": {200}, "fetch": {206}, "forged": {403, 429}, "apply": {303, 429}}
unexpected = {k: {s: n for s, n in v.items() if s not in allowed[k]} for k, v in statuses.items()}
unexpected = {k: v for k, v in unexpected.items() if v}
third = max(1, len(samples) // 3)
middle, last = samples[third:2 * third] or samples, samples[2 * third:] or samples
growth = (max(last) - max(middle)) / max(middle)
page_p99 = float(re.search(r"p99=([\d.]+)ms", dict((k, l) for k, _, _, _, l in lines)["page"]).group(1))
ok = not unexpected and socket_errors == 0 and growth < 0.25 and "intact" in verify and page_p99 < 1000
print(f"# Load test: {clients} clients for {seconds} s over loopback\n")
print("| requests | clients | answers (status: count) | socket errors | requests/s | latency |")
print("|---|---|---|---|---|---|")
for kind, st, errors, rps, latency in lines:
    answers = ", ".join(f"{s}: {n}" for s, n in sorted(st.items()))
    errs = ", ".join(f"{k} {v}" for k, v in errors.items())
    print(f"| {kind} | {int(clients) * share[kind] // 100} | {answers} | {errs} | {rps:.0f} | {latency} |")
print(f"\n- all requests: {rps_total:.0f}/s")
print(f"- unexpected answers: {unexpected or 'none'}")
print(f"- portal RSS (KiB), sampled every 5 s: start {samples[0]}, peak {max(samples)}, end {samples[-1]}; "
      f"peak of the last third of the run against the middle third: {growth:+.1%}")
print(f"- audit events after the run: {events}; `weightgate audit verify`: {verify.strip().splitlines()[0]}")
print(f"- lines mentioning an error in the portal's log: {portal_errors}")
loads = open(f"{work}/loadavg").read().split("\n")
print(f"- machine load average (1, 5, 15 min) before the load: {loads[0]}; at its end: {loads[1]} "
      f"({os.cpu_count()} cores)")
metrics = open(f"{work}/metrics").read()
def series(name):
    return re.findall(r"^" + name + r"\{(.*)\} (\S+)$", metrics, re.M)
def means(name, key):
    # Over the whole run: the sum of the times over their count.
    sums = {re.search(key + r'="([^"]*)"', l).group(1): float(v) for l, v in series(name + "_sum")}
    counts = {re.search(key + r'="([^"]*)"', l).group(1): float(v) for l, v in series(name + "_count")}
    return {k: (sums[k] / n, n) for k, n in counts.items() if n and k in sums}
lane = means("weightgate_lane_wait_seconds", "lane")
print("- waiting for the pages lane to start a handler (from `/metrics`): "
      + (", ".join(f"{k}: {m * 1000:.1f} ms on average over {n:.0f} requests" for k, (m, n) in lane.items())
         or "not reported"))
print("- time in the portal per request, by route, on average over the run (from `/metrics`): "
      + ", ".join(f"`{route}` {m * 1000:.1f} ms ({n:.0f})"
                  for route, (m, n) in sorted(means("weightgate_http_request_duration_seconds", "route").items())
                  if n >= 100))
unavailable = [(labels, v) for labels, v in series("weightgate_unavailable_total")]
print(f"- 503 answers by what was unavailable: {', '.join(f'{l}: {v}' for l, v in unavailable) or 'none'}")
print(f"\n**{'PASS' if ok else 'FAIL'}**: only intended answers (200 pages, 206 fetches, 403 or 429 forged links, "
      "303 or 429 applications), no socket errors (timeouts included), pages answered in under 1 s "
      "at the 99th percentile, memory flat (< 25% growth late in the run), audit chain whole.")
sys.exit(0 if ok else 1)
PY
cat "$WORK/signin.md" "$WORK/summary.md" >"$RESULTS"
cat "$WORK/summary.md"
exit $STATUS
