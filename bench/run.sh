#!/usr/bin/env bash
# weightgate benchmarks: one command, every figure a ratio against a baseline
# measured in the same run on the same machine (see BENCHMARKS.md).
#
#   bash bench/run.sh                 # full run (~20-30 min on 2 cores, 10-16 of them publishing)
#   BENCH_QUICK=1 bash bench/run.sh   # smaller sizes, ~6 min
#   BENCH_ONLY=hash,audit bash bench/run.sh
#
# Knobs (environment; defaults in brackets, quick-run defaults after the slash):
#   BENCH_HASH_FILES [4]            files for the hashing test
#   BENCH_HASH_MIB   [512/128]      size of each, MiB
#   BENCH_DL_MIB     [1024/256]     size of the file downloaded through the portal
#   BENCH_RUNS       [3]            repetitions of each timed command (median reported)
#   BENCH_PROXY_RUNS [5]            interleaved downloads of the proxy throughput test (median)
#   BENCH_CLIENTS    [32]           concurrent downloads for the memory test
#   BENCH_CLIENT_RATE [20M]         curl --limit-rate of each of those clients
#   BENCH_CLIENT_SECONDS [15/8]     curl --max-time of each of those clients
#   BENCH_WRK_SECONDS [10/5]        wrk -d
#   BENCH_WRK_CONNS  [32]           wrk -c
#   BENCH_WRK_THREADS [2]           wrk -t
#   BENCH_AUDIT_EVENTS [1000000/100000]  events in the audit-at-scale log
#   BENCH_PUB_BIG_MIB [5632/1024]   size of the one large file of the published tree, MiB
#   BENCH_PUB_SHARDS [3/2]          further files of the published tree...
#   BENCH_PUB_SHARD_MIB [256/128]   ...each this large, MiB
#   BENCH_PG_URL     [postgres://postgres@127.0.0.1:5432/postgres]  a PostgreSQL server; the pg section
#                    creates a database of its own there and drops it after
#   BENCH_PG_ROUNDS  [3]            interleaved rounds of the pg section (median reported)
#   BENCH_PG_PIN     [0]            1: pin replica a to CPU 0 and replica b to CPU 1 (taskset)
#   BENCH_SCALE_CLIENTS [1000]      concurrent ranged downloads of the scale section
#   BENCH_SCALE_SECONDS [20/10]     how long they run, s
#   BENCH_SCALE_RANGE_MIB [1]       size of each ranged request, MiB
#   BENCH_SCALE_IDLE [10000]        idle keep-alive connections of the scale section
#   BENCH_SCALE_HOLD [10]           how long they are held idle, s (under the portal's
#                                   WEIGHTGATE_HEADER_TIMEOUT, 30 s, which closes idle connections)
#   BENCH_TOOLS      [/root/.cache/weightgate-bench-tools]  cargo install root of s3s-fs (the S3 server)
#   BENCH_ONLY       [hash,proxy,client,fetch,pg,scale,audit,auditpg,publish]  sections to run (proxy = throughput + memory;
#                    client = weightgate download against aria2c; pg = fetches on one and two
#                    PostgreSQL replicas beside SQLite and nginx; scale = bench/scale.py: many
#                    concurrent ranged downloads, then many idle keep-alive connections;
#                    auditpg = (with audit) its log copied into PostgreSQL, and its reports there;
#                    publish = model publish to an S3 server against rclone copy)
#   BENCH_SOURCE     [worktree]     what to build: the checkout as it is, or a git revision (e.g. HEAD)
#   BENCH_BIN        []             use this weightgate binary instead of building one
#   BENCH_NO_BUILD   [0]            1: reuse the binary in the target dir as it is
#   BENCH_TARGET_DIR [/root/.cache/weightgate-bench-target]  CARGO_TARGET_DIR of the build
#   BENCH_TMPDIR     [$TMPDIR or /tmp]  where the scratch directory goes (needs ~4x the data sizes;
#                    publish ~3x its tree: 20 GiB at the full size)
#   BENCH_KEEP       [0]            1: keep the scratch directory
#   BENCH_RESULTS    [bench/results/latest.md]  where the results table is also written
#
# Only loopback traffic (127.0.0.1); every load is bounded in time and stops by itself.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

QUICK=${BENCH_QUICK:-0}
q() { if [ "$QUICK" = 1 ]; then echo "$2"; else echo "$1"; fi; }
HASH_FILES=${BENCH_HASH_FILES:-4}
HASH_MIB=${BENCH_HASH_MIB:-$(q 512 128)}
DL_MIB=${BENCH_DL_MIB:-$(q 1024 256)}
RUNS=${BENCH_RUNS:-3}
PROXY_RUNS=${BENCH_PROXY_RUNS:-5}
CLIENTS=${BENCH_CLIENTS:-32}
CLIENT_RATE=${BENCH_CLIENT_RATE:-20M}
CLIENT_SECONDS=${BENCH_CLIENT_SECONDS:-$(q 15 8)}
WRK_SECONDS=${BENCH_WRK_SECONDS:-$(q 10 5)}
WRK_CONNS=${BENCH_WRK_CONNS:-32}
WRK_THREADS=${BENCH_WRK_THREADS:-2}
AUDIT_EVENTS=${BENCH_AUDIT_EVENTS:-$(q 1000000 100000)}
PUB_BIG_MIB=${BENCH_PUB_BIG_MIB:-$(q 5632 1024)}
PUB_SHARDS=${BENCH_PUB_SHARDS:-$(q 3 2)}
PUB_SHARD_MIB=${BENCH_PUB_SHARD_MIB:-$(q 256 128)}
TOOLS=${BENCH_TOOLS:-/root/.cache/weightgate-bench-tools}
ONLY=${BENCH_ONLY:-hash,proxy,client,fetch,pg,scale,audit,auditpg,publish}
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_ROUNDS=${BENCH_PG_ROUNDS:-3}
PG_PIN=${BENCH_PG_PIN:-0}
SCALE_CLIENTS=${BENCH_SCALE_CLIENTS:-1000}
SCALE_SECONDS=${BENCH_SCALE_SECONDS:-$(q 20 10)}
SCALE_RANGE_MIB=${BENCH_SCALE_RANGE_MIB:-1}
SCALE_IDLE=${BENCH_SCALE_IDLE:-10000}
SCALE_HOLD=${BENCH_SCALE_HOLD:-10}
TARGET_DIR=${BENCH_TARGET_DIR:-/root/.cache/weightgate-bench-target}
RESULTS=${BENCH_RESULTS:-$HERE/results/latest.md}

log() { printf '\033[1m[bench %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }

# ---------------------------------------------------------------- tools
need() { # need COMMAND DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 (for $1)"
    if ! apt-get install -y -q "$2" >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        apt-get install -y -q "$2" >/dev/null || die "cannot install $2"
    fi
}
need curl curl
need openssl openssl
need sha256sum coreutils
need python3 python3
if want scale && [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt $((SCALE_IDLE + SCALE_CLIENTS + 1024)) ]; then
    die "the scale section needs $((SCALE_IDLE + SCALE_CLIENTS + 1024)) open files per process; the hard limit (ulimit -Hn) is $(ulimit -Hn)"
fi
if want proxy || want fetch || want pg; then need nginx nginx; fi
if want fetch || want pg; then need wrk wrk; fi
if want pg || want auditpg; then
    need psql postgresql-client
    if ! pg_isready -q -d "$PG_URL" && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        log "starting the local PostgreSQL cluster"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
        for _ in $(seq 30); do pg_isready -q -d "$PG_URL" && break; sleep 1; done
    fi
    pg_isready -q -d "$PG_URL" || die "no PostgreSQL at $PG_URL (BENCH_PG_URL)"
fi
if want client; then need aria2c aria2; need /usr/bin/time time; fi
if want fetch || want audit; then need sqlite3 sqlite3; fi
if want publish; then need rclone rclone; need /usr/bin/time time; fi
# The S3 server of the publish section: s3s-fs, built once into a cache
# outside the repository (the portal's tests use the same crate as a library).
S3S_FS=$TOOLS/bin/s3s-fs
if want publish && ! [ -x "$S3S_FS" ]; then
    log "installing s3s-fs 0.14.1 into $TOOLS (cargo install, a few minutes)"
    cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$TOOLS" -q ||
        die "cannot install s3s-fs"
fi
if { want fetch || want pg; } && ! nginx -V 2>&1 | grep -q secure_link; then
    log "nginx lacks the secure_link module; trying nginx-extras"
    apt-get install -y -q nginx-extras >/dev/null 2>&1 || true
    nginx -V 2>&1 | grep -q secure_link || die "no nginx with secure_link here (tried nginx-extras)"
fi

# ---------------------------------------------------------------- scratch space and cleanup
WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/weightgate-bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    # The pg section's database, once its replicas are gone.
    [ -n "${PGDB:-}" ] && psql -q -d "$PG_URL" -c "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)" >/dev/null 2>&1
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # wait_http URL PID
    for _ in $(seq 300); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- timing helpers
# elapsed CMD...: runs CMD (output discarded) and prints its wall time in seconds.
elapsed() {
    local t0=$EPOCHREALTIME
    "$@" >/dev/null
    local t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
fmt_runs() { local IFS=,; echo "$*"; }

# ---------------------------------------------------------------- results
mkdir -p "$(dirname "$RESULTS")"
ROWS=()
# row MEASUREMENT FIGURE BASELINE RATIO TARGET MET
row() {
    ROWS+=("| $1 | $2 | $3 | $4 | $5 | $6 |")
    log "RESULT: $1: $2 (baseline $3; ratio $4; target $5: $6)"
}
NOTES=()
note() { NOTES+=("$*"); log "note: $*"; }
met() { if awk "BEGIN { exit !($1) }"; then echo yes; else echo "**NO**"; fi; }

# ---------------------------------------------------------------- build
# BENCH_SOURCE=worktree builds the checkout as it is; a git revision (HEAD,
# a commit, a branch) builds that commit, exported with `git archive` into a
# cache directory, so a half-edited work tree does not get in the way.
SOURCE=${BENCH_SOURCE:-worktree}
if [ "$SOURCE" = worktree ]; then
    SRC=$REPO
    COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
    DIRTY=$(git -C "$REPO" --no-optional-locks status --porcelain -- src migrations templates static Cargo.toml Cargo.lock 2>/dev/null | wc -l)
else
    REV=$(git -C "$REPO" rev-parse --verify "$SOURCE^{commit}") || die "no git revision $SOURCE"
    COMMIT=$(git -C "$REPO" rev-parse --short "$REV")
    DIRTY=0
    SRC=${BENCH_SRC_CACHE:-$HOME/.cache/weightgate-bench-src}/$REV
    if [ ! -f "$SRC/Cargo.toml" ]; then
        log "exporting $COMMIT to $SRC (git archive)"
        rm -rf "$SRC.partial"
        mkdir -p "$SRC.partial"
        git -C "$REPO" archive "$REV" | tar -x -C "$SRC.partial"
        mv "$SRC.partial" "$SRC"
    fi
fi
if [ -n "${BENCH_BIN:-}" ]; then
    BUILT=$BENCH_BIN
    COMMIT="$COMMIT (binary $BENCH_BIN)"
else
    BUILT=$TARGET_DIR/release/weightgate
    if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
        # Cargo decides what to rebuild by the sources' mtimes and paths relative
        # to the package, so a binary built from another checkout into the same
        # target dir can look up to date (git archive gives files the commit's
        # time). A stamp names the source of the last build and the binary it
        # made; when either differs (another source, or someone else's build
        # since), weightgate's own artifacts are cleaned first (the
        # dependencies stay), so the build really compiles $SRC.
        STAMP=$TARGET_DIR/release/.bench-source
        WANT=$([ "$SOURCE" = worktree ] && echo "worktree:$SRC" || echo "$REV")
        binary_id() { stat -c '%i.%Y' "$TARGET_DIR/release/weightgate" 2>/dev/null || echo none; }
        if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT $(binary_id)" ]; then
            (cd "$SRC" && CARGO_TARGET_DIR=$TARGET_DIR cargo clean --release -p weightgate -q) || die "cargo clean failed"
        fi
        log "building weightgate $COMMIT from $SRC (release, CARGO_TARGET_DIR=$TARGET_DIR)"
        (cd "$SRC" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --locked -q) || die "cargo build failed"
        mkdir -p "$(dirname "$STAMP")"
        echo "$WANT $(binary_id)" >"$STAMP"
    fi
fi
[ -x "$BUILT" ] || die "no weightgate binary at $BUILT"
# A private copy: another build into the same target dir cannot swap it mid-run.
WG=$WORK/weightgate
cp "$BUILT" "$WG"

CPU=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
MEM=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "weightgate $COMMIT (${DIRTY} locally changed source files), $(nproc) cores, $CPU, $MEM, load $LOAD_START; scratch $WORK"

# Every weightgate command of a data dir: wg DATA_DIR ARGS...
wg() {
    local dir=$1
    shift
    WEIGHTGATE_DATA_DIR=$dir WEIGHTGATE_LOG=warn "$WG" "$@"
}
export USER=${USER:-bench}

mib() { echo $(( $1 * 1024 * 1024 )); }
make_random() { # make_random FILE MIB
    head -c "$(mib "$2")" /dev/urandom >"$1"
}
warm() { cat "$@" >/dev/null; }

# ================================================================ 1. hashing
if want hash; then
    log "== 1. hashing: $HASH_FILES x $HASH_MIB MiB of random data"
    H=$WORK/hash
    mkdir -p "$H/files"
    FILES=()
    for i in $(seq "$HASH_FILES"); do
        f=$H/files/shard-$(printf %05d "$i").bin
        make_random "$f" "$HASH_MIB"
        FILES+=("$f")
    done
    ONE=${FILES[0]}
    warm "${FILES[@]}"
    # Correctness first: all three tools agree on the digest.
    a=$(openssl dgst -sha256 -r "$ONE" | cut -d' ' -f1)
    b=$(sha256sum "$ONE" | cut -d' ' -f1)
    c=$("$WG" hash "$ONE" | cut -d' ' -f1)
    [ "$a" = "$b" ] && [ "$b" = "$c" ] || die "digests differ: openssl $a, sha256sum $b, weightgate $c"

    # One file, one core; runs interleaved so drift hits every tool alike.
    T_OSSL=() T_SUM=() T_WG=()
    for r in $(seq "$RUNS"); do
        warm "$ONE"
        T_OSSL+=("$(elapsed openssl dgst -sha256 "$ONE")")
        T_SUM+=("$(elapsed sha256sum "$ONE")")
        T_WG+=("$(elapsed "$WG" hash "$ONE")")
    done
    t_ossl=$(median "${T_OSSL[@]}") t_sum=$(median "${T_SUM[@]}") t_wg=$(median "${T_WG[@]}")
    log "one file: openssl $(fmt_runs "${T_OSSL[@]}") s; sha256sum $(fmt_runs "${T_SUM[@]}") s; weightgate $(fmt_runs "${T_WG[@]}") s"
    mbs() { calc "$HASH_MIB * $2 / $1" 0; } # mbs SECONDS [FILES] -> MiB/s
    r=$(calc "$t_ossl / $t_wg")
    row "1a. \`weightgate hash\`, 1 file of $HASH_MIB MiB (1 core)" "$(mbs "$t_wg" 1) MiB/s ($t_wg s)" "openssl dgst -sha256: $(mbs "$t_ossl" 1) MiB/s ($t_ossl s)" "${r}x" "≥ 0.9x openssl" "$(met "$r >= 0.9")"
    r2=$(calc "$t_sum / $t_wg")
    row "1a'. same, against sha256sum" "$(mbs "$t_wg" 1) MiB/s" "sha256sum: $(mbs "$t_sum" 1) MiB/s ($t_sum s)" "${r2}x" "(info)" "-"

    # All files: weightgate's parallel hashing vs sequential and parallel openssl.
    NPROC=$(nproc)
    GROUPS_=()
    for ((g = 0; g < NPROC; g++)); do GROUPS_+=(""); done
    for i in "${!FILES[@]}"; do GROUPS_[$((i % NPROC))]+="${FILES[$i]} "; done
    par_openssl() {
        local pids=() g
        for g in "${GROUPS_[@]}"; do
            [ -n "$g" ] || continue
            # shellcheck disable=SC2086
            openssl dgst -sha256 $g >/dev/null &
            pids+=($!)
        done
        for g in "${pids[@]}"; do wait "$g"; done
    }
    T_SEQ=() T_PAR=() T_WGA=()
    for r in $(seq "$RUNS"); do
        warm "${FILES[@]}"
        T_SEQ+=("$(elapsed openssl dgst -sha256 "${FILES[@]}")")
        T_PAR+=("$(elapsed par_openssl)")
        T_WGA+=("$(elapsed "$WG" hash "${FILES[@]}")")
    done
    t_seq=$(median "${T_SEQ[@]}") t_par=$(median "${T_PAR[@]}") t_wga=$(median "${T_WGA[@]}")
    log "all files: openssl sequential $(fmt_runs "${T_SEQ[@]}") s; $NPROC x openssl $(fmt_runs "${T_PAR[@]}") s; weightgate $(fmt_runs "${T_WGA[@]}") s"
    row "1b. \`weightgate hash\`, $HASH_FILES files (parallel)" "$(mbs "$t_wga" "$HASH_FILES") MiB/s ($t_wga s)" "openssl sequential: $(mbs "$t_seq" "$HASH_FILES") MiB/s ($t_seq s)" "$(calc "$t_seq / $t_wga")x" "(info: $NPROC cores, so ideally ${NPROC}x)" "-"
    r=$(calc "$t_par / $t_wga")
    row "1b'. same, against $NPROC parallel openssl processes" "$(mbs "$t_wga" "$HASH_FILES") MiB/s" "$NPROC x openssl: $(mbs "$t_par" "$HASH_FILES") MiB/s ($t_par s)" "${r}x" "≥ 0.9x (info)" "$(met "$r >= 0.9")"

    # model publish: whole hash + 64 MiB chunk hashes + copy into the object store.
    T_PUB=()
    for r in $(seq "$RUNS"); do
        D=$WORK/publish-$r
        wg "$D" migrate >/dev/null
        wg "$D" model create bench --title Bench >/dev/null
        sync
        warm "${FILES[@]}"
        T_PUB+=("$(elapsed wg "$D" model publish bench "$H/files")")
        [ "$(find "$D/objects" -type f | wc -l)" = "$HASH_FILES" ] || die "publish stored $(find "$D/objects" -type f | wc -l) objects, expected $HASH_FILES"
        rm -rf "$D"
        sync
    done
    # What copying alone costs on this filesystem, to split publish's time:
    # publish copies each file into the store and fsyncs it before renaming.
    copy_and_fsync() { cp -r "$H/files" "$1" && sync "$1"/*; }
    T_CP=()
    for r in $(seq "$RUNS"); do
        warm "${FILES[@]}"
        T_CP+=("$(elapsed copy_and_fsync "$WORK/copy-$r")")
        rm -rf "$WORK/copy-$r"
        sync
    done
    t_pub=$(median "${T_PUB[@]}") t_cp=$(median "${T_CP[@]}")
    log "publish: $(fmt_runs "${T_PUB[@]}") s; cp -r + fsync: $(fmt_runs "${T_CP[@]}") s"
    row "1c. \`weightgate model publish\`, $HASH_FILES files (hash + 64 MiB chunk hashes + copy into store)" "$(mbs "$t_pub" "$HASH_FILES") MiB/s ($t_pub s)" "$NPROC x openssl (hash only): $(mbs "$t_par" "$HASH_FILES") MiB/s ($t_par s)" "$(calc "$t_par / $t_pub")x" "(info: does more than hash)" "-"
    row "1c'. (context) \`cp -r\` + fsync of the same files on the same filesystem" "-" "$(mbs "$t_cp" "$HASH_FILES") MiB/s ($t_cp s)" "publish takes $(calc "$t_pub / (2 * $t_par + $t_cp)")x the equal-work estimate 2 x ($NPROC x openssl) + cp/fsync = $(calc "2 * $t_par + $t_cp") s" "(info)" "-"
    rm -rf "$H"
fi

# ================================================================ 2-4. the portal
PORTAL_PID=""
if want proxy || want client || want fetch || want pg || want scale; then
    log "== setting up a portal with a $DL_MIB MiB file and a 1 KiB file"
    P=$WORK/portal
    REL=$WORK/release
    mkdir -p "$REL"
    make_random "$REL/model-00001-of-00001.safetensors" "$DL_MIB"
    head -c 1024 /dev/urandom >"$REL/tiny.json"
    chmod 755 "$REL"
    chmod 644 "$REL"/*
    wg "$P" migrate >/dev/null
    wg "$P" model create bench --title "Bench model" >/dev/null
    wg "$P" model publish bench "$REL" >/dev/null
    ADMIN=admin@bench.invalid
    ADMIN_PW=$(openssl rand -hex 16)
    printf '%s' "$ADMIN_PW" | wg "$P" reviewer add "$ADMIN" --admin --password-stdin >/dev/null

    PORT=$(free_port)
    BASE=http://127.0.0.1:$PORT
    # The portal runs with its defaults (log filter info,sqlx=warn), logs to a file.
    WEIGHTGATE_DATA_DIR=$P WEIGHTGATE_BIND=127.0.0.1:$PORT "$WG" serve >"$WORK/portal.log" 2>&1 &
    PORTAL_PID=$!
    PIDS+=("$PORTAL_PID")
    wait_http "$BASE/healthz" "$PORTAL_PID" || { tail -20 "$WORK/portal.log" >&2; die "the portal did not start"; }
    sleep 1
    rss() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; } # rss PID VmRSS|VmHWM -> KiB
    IDLE_RSS=$(rss "$PORTAL_PID" VmRSS)

    log "obtaining a grant over HTTP (apply, confirm, sign in, approve)"
    python3 "$HERE/grant.py" --base "$BASE" --slug bench --outbox "$P/outbox" \
        --admin-email "$ADMIN" --admin-password "$ADMIN_PW" >"$WORK/manifest.json" ||
        { tail -20 "$WORK/portal.log" >&2; die "could not obtain a grant"; }
    url_of() {
        python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))
print(next(f["url"] for r in m["releases"] for f in r["files"] if f["name"] == sys.argv[2]))' "$WORK/manifest.json" "$1"
    }
    BIG_URL=$(url_of model-00001-of-00001.safetensors)
    TINY_URL=$(url_of tiny.json)
    [ "$(curl -fsS "$TINY_URL" | sha256sum | cut -d' ' -f1)" = "$(sha256sum <"$REL/tiny.json" | cut -d' ' -f1)" ] ||
        die "the tiny file did not come back intact from $TINY_URL"
    SETUP_RSS=$(rss "$PORTAL_PID" VmRSS)

    # nginx: the same files from disk (sendfile on, and off), and behind secure_link.
    NPORT=$(free_port)
    N=$WORK/nginx
    mkdir -p "$N"
    SECRET=$(openssl rand -hex 16)
    cat >"$N/nginx.conf" <<EOF
$( [ "$(id -u)" = 0 ] && echo "user root;" )
worker_processes auto;
pid $N/nginx.pid;
error_log $N/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path $N/body;
    proxy_temp_path $N/proxy;
    fastcgi_temp_path $N/fastcgi;
    uwsgi_temp_path $N/uwsgi;
    scgi_temp_path $N/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$NPORT;
        location /files/ { alias $REL/; sendfile on; tcp_nopush on; }
        location /files-rw/ { alias $REL/; sendfile off; }
        location /sl/ {
            secure_link \$arg_md5,\$arg_expires;
            secure_link_md5 "\$secure_link_expires\$uri $SECRET";
            if (\$secure_link = "") { return 403; }
            if (\$secure_link = "0") { return 410; }
            alias $REL/;
        }
    }
}
EOF
    nginx -t -q -e "$N/error.log" -p "$N" -c "$N/nginx.conf" || die "nginx rejects its configuration"
    nginx -e "$N/error.log" -p "$N" -c "$N/nginx.conf" &
    PIDS+=($!)
    NBASE=http://127.0.0.1:$NPORT
    wait_http "$NBASE/files/tiny.json" "${PIDS[-1]}" || die "nginx did not start"
    EXPIRES=$(( $(date +%s) + 86400 ))
    MD5=$(printf '%s' "$EXPIRES/sl/tiny.json $SECRET" | openssl md5 -binary | openssl base64 | tr +/ -_ | tr -d =)
    NGINX_SL_URL="$NBASE/sl/tiny.json?md5=$MD5&expires=$EXPIRES"
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$NGINX_SL_URL")" = 200 ] || die "nginx refuses its own secure link"
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$NBASE/sl/tiny.json?md5=AAAA$MD5&expires=$EXPIRES")" = 403 ] ||
        die "nginx accepts a bad secure link"
fi

# ================================================================ 2. proxy throughput, 3. memory
if want proxy; then
    log "== 3. memory: $CLIENTS concurrent downloads of the $DL_MIB MiB file (--limit-rate $CLIENT_RATE, --max-time $CLIENT_SECONDS s)"
    HWM_RESET=yes
    echo 5 >"/proc/$PORTAL_PID/clear_refs" 2>/dev/null || HWM_RESET=no
    HWM_BEFORE=$(rss "$PORTAL_PID" VmHWM)
    CPIDS=()
    for i in $(seq "$CLIENTS"); do
        curl -s -o /dev/null --limit-rate "$CLIENT_RATE" --max-time "$CLIENT_SECONDS" \
            -w '%{http_code} %{size_download}\n' "$BIG_URL" >"$WORK/client-$i.out" 2>&1 &
        CPIDS+=($!)
    done
    MAX_RSS=0 MAX_CONN=0 SAMPLES=0
    while :; do
        alive=0
        for pid in "${CPIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
        [ "$alive" -gt 0 ] || break
        [ "$alive" -gt "$MAX_CONN" ] && MAX_CONN=$alive
        cur=$(rss "$PORTAL_PID" VmRSS)
        [ "$cur" -gt "$MAX_RSS" ] && MAX_RSS=$cur
        SAMPLES=$((SAMPLES + 1))
        sleep 0.25
    done
    for pid in "${CPIDS[@]}"; do wait "$pid" || true; done
    PEAK=$(rss "$PORTAL_PID" VmHWM)
    OK_CLIENTS=$(awk '$1 == 200 && $2 > 0 { n++ } END { print n + 0 }' "$WORK"/client-*.out)
    BYTES=$(awk '{ s += $2 } END { printf "%.0f", s }' "$WORK"/client-*.out)
    log "memory: idle ${IDLE_RSS} KiB, after setup ${SETUP_RSS} KiB, HWM before load ${HWM_BEFORE} KiB (reset: $HWM_RESET), peak ${PEAK} KiB, max sampled ${MAX_RSS} KiB over $SAMPLES samples; $OK_CLIENTS/$CLIENTS clients got 200, $((BYTES / 1048576)) MiB in all; at most $MAX_CONN at once"
    row "3. peak RSS of \`weightgate serve\` (VmHWM), $CLIENTS concurrent downloads for ${CLIENT_SECONDS} s" "$(calc "$PEAK / 1024" 1) MiB" "idle: $(calc "$IDLE_RSS / 1024" 1) MiB (after grant setup $(calc "$SETUP_RSS / 1024" 1) MiB)" "$(calc "$PEAK / $IDLE_RSS")x idle" "< 100 MiB" "$(met "$PEAK / 1024 < 100")"
    note "memory test: $OK_CLIENTS of $CLIENTS clients answered 200 and overlapped (at most $MAX_CONN running at once), $((BYTES / 1048576)) MiB delivered in total; VmHWM reset before the load: $HWM_RESET"

    log "== 2. download throughput: $DL_MIB MiB over loopback, portal vs nginx"
    dl() { # dl URL -> seconds (checks status and size)
        local out
        out=$(curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$1")
        set -- $out
        [ "$1" = 200 ] && [ "$2" = "$(mib "$DL_MIB")" ] || die "download gave HTTP $1 with $2 bytes"
        echo "$3"
    }
    warm "$REL/model-00001-of-00001.safetensors" "$P"/objects/sha256/*/*
    T_P=() T_N=() T_NRW=()
    for r in $(seq "$PROXY_RUNS"); do
        T_P+=("$(dl "$BIG_URL")")
        T_N+=("$(dl "$NBASE/files/model-00001-of-00001.safetensors")")
        T_NRW+=("$(dl "$NBASE/files-rw/model-00001-of-00001.safetensors")")
    done
    t_p=$(median "${T_P[@]}") t_n=$(median "${T_N[@]}") t_nrw=$(median "${T_NRW[@]}")
    log "download: portal $(fmt_runs "${T_P[@]}") s; nginx sendfile $(fmt_runs "${T_N[@]}") s; nginx read/write $(fmt_runs "${T_NRW[@]}") s"
    r=$(calc "$t_n / $t_p")
    row "2. download of $DL_MIB MiB through the portal (curl, loopback)" "$(calc "$DL_MIB / $t_p" 0) MiB/s ($t_p s)" "nginx static, sendfile on: $(calc "$DL_MIB / $t_n" 0) MiB/s ($t_n s)" "${r}x" "≥ 0.8x nginx" "$(met "$r >= 0.8")"
    r=$(calc "$t_nrw / $t_p")
    row "2'. same, against nginx with sendfile off (read/write copies, as the portal does)" "$(calc "$DL_MIB / $t_p" 0) MiB/s" "nginx static, sendfile off: $(calc "$DL_MIB / $t_nrw" 0) MiB/s ($t_nrw s)" "${r}x" "(info)" "-"
fi

# ================================================================ 2''. the download client
if want client; then
    log "== 2''. weightgate download (every chunk verified) against aria2c -x8 -s8 (nothing verified), same release"
    python3 - "$WORK/manifest.json" >"$WORK/aria2.txt" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for r in m["releases"]:
    for f in r["files"]:
        print(f["url"])
        print(f"  out={r['name']}/{f['name']}")
PY
    CLIENT_URL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifest_url"])' "$WORK/manifest.json")
    warm "$P"/objects/sha256/*/*
    T_C=() T_A=() M_C=() M_A=()
    for r in $(seq "$RUNS"); do
        rm -rf "$WORK/dl-client" "$WORK/dl-aria2"
        /usr/bin/time -f '%e %M' -o "$WORK/time-client" \
            "$WG" download "$CLIENT_URL" --dir "$WORK/dl-client" >/dev/null 2>"$WORK/client.err" ||
            { tail -5 "$WORK/client.err" >&2; die "weightgate download failed"; }
        read -r t m <"$WORK/time-client"
        T_C+=("$t") M_C+=("$m")
        /usr/bin/time -f '%e %M' -o "$WORK/time-aria2" \
            aria2c -q -x8 -s8 -j4 --file-allocation=none --allow-overwrite=true \
            -d "$WORK/dl-aria2" -i "$WORK/aria2.txt" || die "aria2c failed"
        read -r t m <"$WORK/time-aria2"
        T_A+=("$t") M_A+=("$m")
    done
    for f in "$REL"/*; do
        name=$(basename "$f")
        for got in "$WORK"/dl-client/*/"$name" "$WORK"/dl-aria2/*/"$name"; do
            cmp -s "$f" "$got" || die "$got is not the file published"
        done
    done
    t_c=$(median "${T_C[@]}") t_a=$(median "${T_A[@]}")
    log "client: weightgate download $(fmt_runs "${T_C[@]}") s (peak RSS $(fmt_runs "${M_C[@]}") KiB); aria2c $(fmt_runs "${T_A[@]}") s (peak RSS $(fmt_runs "${M_A[@]}") KiB)"
    r=$(calc "$t_a / $t_c")
    row "2''. \`weightgate download\` of the release ($DL_MIB MiB + 1 KiB, every chunk verified)" "$(calc "$DL_MIB / $t_c" 0) MiB/s ($t_c s), peak RSS $(calc "$(median "${M_C[@]}") / 1024" 1) MiB" "aria2c -x8 -s8, nothing verified: $(calc "$DL_MIB / $t_a" 0) MiB/s ($t_a s), peak RSS $(calc "$(median "${M_A[@]}") / 1024" 1) MiB" "${r}x" "≥ 1.0x aria2c" "$(met "$r >= 1.0")"
fi

# ================================================================ 4. authorised fetch rate
if want fetch; then
    log "== 4. authorised fetch rate: wrk -t$WRK_THREADS -c$WRK_CONNS -d${WRK_SECONDS}s on a 1 KiB file"
    DB=$P/weightgate.db
    count_events() { sqlite3 -readonly "$DB" "SELECT count(*) FROM audit_log WHERE action = '$1'"; }
    run_wrk() { # run_wrk URL NAME -> prints requests/s; keeps the full output in $WORK/wrk-NAME.txt
        wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${WRK_SECONDS}s" --timeout 5s --latency "$1" >"$WORK/wrk-$2.txt" 2>&1 ||
            die "wrk failed: $(cat "$WORK/wrk-$2.txt")"
        if grep -q 'Non-2xx' "$WORK/wrk-$2.txt"; then
            note "wrk $2: $(grep 'Non-2xx' "$WORK/wrk-$2.txt" | xargs)"
        fi
        awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk-$2.txt"
    }
    wrk_requests() { awk '/requests in/ { print $1 }' "$WORK/wrk-$1.txt"; }
    wrk_p99() { awk '$1 == "99%" { print $2 }' "$WORK/wrk-$1.txt"; }
    wrk_p50() { awk '$1 == "50%" { print $2 }' "$WORK/wrk-$1.txt"; }
    # CPU time (clock ticks) and context switches of every thread of a process.
    cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
    ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'; }
    TICK=$(getconf CLK_TCK)
    FETCH_BEFORE=$(count_events file.fetch)
    DELIV_BEFORE=$(count_events file.delivered)
    echo 5 >"/proc/$PORTAL_PID/clear_refs" 2>/dev/null || true
    CPU0=$(cpu_ticks "$PORTAL_PID") CS0=$(ctx_switches "$PORTAL_PID")
    RPS_P=$(run_wrk "$TINY_URL" portal)
    CPU1=$(cpu_ticks "$PORTAL_PID") CS1=$(ctx_switches "$PORTAL_PID")
    HWM_WRK=$(rss "$PORTAL_PID" VmHWM)
    sleep 2 # the delivery records of the last responses
    FETCH_AFTER=$(count_events file.fetch)
    DELIV_AFTER=$(count_events file.delivered)
    RPS_N=$(run_wrk "$NGINX_SL_URL" nginx-secure-link)
    RPS_H=$(run_wrk "$BASE/healthz" portal-healthz)
    REQ_P=$(wrk_requests portal)
    FETCHES=$((FETCH_AFTER - FETCH_BEFORE))
    DELIVS=$((DELIV_AFTER - DELIV_BEFORE))
    log "fetch: portal $RPS_P req/s ($REQ_P requests, p99 $(wrk_p99 portal)); nginx secure_link $RPS_N req/s (p99 $(wrk_p99 nginx-secure-link)); portal /healthz $RPS_H req/s"
    log "audit events written during the portal run: $FETCHES file.fetch, $DELIVS file.delivered (wrk counted $REQ_P completed requests)"
    r=$(calc "$RPS_P / $RPS_N" 3)
    row "4. authorised fetches/s (signed link + durable audit event + 1 KiB body), SQLite" "$(calc "$RPS_P" 0) req/s (p99 $(wrk_p99 portal))" "nginx secure_link, no audit: $(calc "$RPS_N" 0) req/s (p99 $(wrk_p99 nginx-secure-link))" "${r}x" "≥ 10,000 req/s" "$(met "$RPS_P >= 10000")"
    row "4a. portal \`GET /healthz\` (same stack, no DB, no audit)" "$(calc "$RPS_H" 0) req/s" "nginx secure_link: $(calc "$RPS_N" 0) req/s" "$(calc "$RPS_H / $RPS_N" 3)x" "(info: framework ceiling)" "-"
    note "fetch test, where the time goes: the portal used $(calc "($CPU1 - $CPU0) / $TICK / $WRK_SECONDS") cores during the wrk run, $(calc "($CPU1 - $CPU0) / $TICK * 1000000 / $REQ_P" 0) µs of CPU and $(calc "($CS1 - $CS0) / $REQ_P" 1) context switches per fetch (its threads: $(ls /proc/"$PORTAL_PID"/task | wc -l))"
    note "fetch test: wrk completed $REQ_P requests to the portal; the log gained $FETCHES file.fetch and $DELIVS file.delivered events (wrk does not count requests still in flight when it stops, so the log may hold up to $WRK_CONNS more); peak RSS during the wrk run $(calc "$HWM_WRK / 1024" 1) MiB"

    # One connection: the latency of a single fetch, with nothing queued.
    RPS_P1=$(WRK_CONNS=1 WRK_THREADS=1 run_wrk "$TINY_URL" portal-c1)
    log "one connection: $RPS_P1 req/s, p50 $(wrk_p50 portal-c1)"
    row "4b. one connection (\`wrk -t1 -c1\`): a single fetch with nothing queued" "$(calc "$RPS_P1" 0) req/s, p50 latency $(wrk_p50 portal-c1)" "-" "-" "(info)" "-"

    stop_portal() {
        kill -TERM "$PORTAL_PID"
        for _ in $(seq 100); do kill -0 "$PORTAL_PID" 2>/dev/null || break; sleep 0.1; done
    }
    stop_portal

    # Diagnostic: the same portal with TCP_NODELAY forced on its accepted
    # sockets (bench/nodelay.c, LD_PRELOAD), to show how much of the fetch
    # latency is Nagle's algorithm waiting for the client's delayed ACK.
    if command -v cc >/dev/null 2>&1 && cc -shared -fPIC -O2 -o "$WORK/nodelay.so" "$HERE/nodelay.c" -ldl 2>/dev/null; then
        WEIGHTGATE_DATA_DIR=$P WEIGHTGATE_BIND=127.0.0.1:$PORT LD_PRELOAD=$WORK/nodelay.so "$WG" serve >>"$WORK/portal.log" 2>&1 &
        PORTAL_PID=$!
        PIDS+=("$PORTAL_PID")
        wait_http "$BASE/healthz" "$PORTAL_PID" || die "the portal did not start with the TCP_NODELAY shim"
        CPU0=$(cpu_ticks "$PORTAL_PID") CS0=$(ctx_switches "$PORTAL_PID")
        RPS_ND=$(run_wrk "$TINY_URL" portal-nodelay)
        CPU1=$(cpu_ticks "$PORTAL_PID") CS1=$(ctx_switches "$PORTAL_PID")
        REQ_ND=$(wrk_requests portal-nodelay)
        RPS_ND1=$(WRK_CONNS=1 WRK_THREADS=1 run_wrk "$TINY_URL" portal-nodelay-c1)
        log "with TCP_NODELAY: $RPS_ND req/s (p99 $(wrk_p99 portal-nodelay)); one connection $RPS_ND1 req/s, p50 $(wrk_p50 portal-nodelay-c1)"
        row "4c. (diagnostic) row 4 with TCP_NODELAY forced on the portal's sockets (LD_PRELOAD bench/nodelay.c)" "$(calc "$RPS_ND" 0) req/s (p99 $(wrk_p99 portal-nodelay)); one connection: $(calc "$RPS_ND1" 0) req/s, p50 $(wrk_p50 portal-nodelay-c1)" "nginx secure_link: $(calc "$RPS_N" 0) req/s" "$(calc "$RPS_ND / $RPS_N" 3)x ($(calc "$RPS_ND / $RPS_P")x row 4)" "≥ 10,000 req/s" "$(met "$RPS_ND >= 10000")"
        note "with TCP_NODELAY forced: the portal used $(calc "($CPU1 - $CPU0) / $TICK / $WRK_SECONDS") cores, $(calc "($CPU1 - $CPU0) / $TICK * 1000000 / $REQ_ND" 0) µs of CPU and $(calc "($CS1 - $CS0) / $REQ_ND" 1) context switches per fetch"
        stop_portal
    else
        note "no C compiler: the TCP_NODELAY diagnostic (bench/nodelay.c) was skipped"
    fi

    log "verifying the portal's audit log"
    VERIFY_OUT=$(wg "$P" audit verify 2>&1) && VERIFY_OK=yes || VERIFY_OK=no
    log "audit verify: $VERIFY_OK: $(echo "$VERIFY_OUT" | head -1)"
    TOTAL_FETCH=$(count_events file.fetch)
    row "4d. \`audit verify\` after the fetch load (and the diagnostic)" "$(echo "$VERIFY_OUT" | head -1)" "-" "-" "log intact" "$( [ "$VERIFY_OK" = yes ] && echo yes || echo '**NO**')"
    note "file.fetch events in the log after the fetch test: $TOTAL_FETCH in all, the one-connection and diagnostic runs included ($FETCHES during the wrk run, against $REQ_P requests counted by wrk)"
fi
# ================================================================ 4'. fetch rate on PostgreSQL replicas
# The same audited fetch (a signed link, a durable event, one byte) on one and
# on two `serve` replicas sharing one PostgreSQL database, beside the SQLite
# portal and nginx secure_link, interleaved round by round, each at wrk -t1
# and -t2. The chain lock's wait and hold come from each replica's /metrics.
if want pg; then
    log "== 4'. fetch rate on PostgreSQL: one and two replicas, SQLite and nginx beside them ($PG_ROUNDS rounds of wrk -c$WRK_CONNS -d${WRK_SECONDS}s)"
    PGDB=weightgate_bench_$$
    psql -q -d "$PG_URL" -c "CREATE DATABASE $PGDB" >/dev/null || die "cannot create database $PGDB at $PG_URL"
    PG_DB_URL=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$PG_URL" "$PGDB")
    Q=$WORK/pg
    mkdir -p "$Q"
    wgq() { WEIGHTGATE_DATA_DIR=$Q WEIGHTGATE_DATABASE_URL=$PG_DB_URL WEIGHTGATE_LOG=warn "$WG" "$@"; }
    wgq migrate >/dev/null
    wgq model create bench --title "Bench model" >/dev/null
    wgq model publish bench "$REL" >/dev/null
    printf '%s' "$ADMIN_PW" | wgq reviewer add "$ADMIN" --admin --password-stdin >/dev/null
    # start_replica NAME PORT CPU: a `serve` on the PostgreSQL database (pinned
    # to CPU with taskset when BENCH_PG_PIN=1); prints its pid.
    start_replica() {
        local pin=()
        [ "$PG_PIN" = 1 ] && pin=(taskset -c "$3")
        WEIGHTGATE_DATA_DIR=$Q WEIGHTGATE_DATABASE_URL=$PG_DB_URL WEIGHTGATE_BIND=127.0.0.1:$2 \
            "${pin[@]}" "$WG" serve >"$WORK/replica-$1.log" 2>&1 &
        echo $!
    }
    QA_PORT=$(free_port) QB_PORT=$(free_port)
    QA=$(start_replica a "$QA_PORT" 0)
    PIDS+=("$QA")
    QB=$(start_replica b "$QB_PORT" 1)
    PIDS+=("$QB")
    wait_http "http://127.0.0.1:$QA_PORT/healthz" "$QA" || { tail -20 "$WORK/replica-a.log" >&2; die "replica a did not start"; }
    wait_http "http://127.0.0.1:$QB_PORT/healthz" "$QB" || { tail -20 "$WORK/replica-b.log" >&2; die "replica b did not start"; }
    python3 "$HERE/grant.py" --base "http://127.0.0.1:$QA_PORT" --slug bench --outbox "$Q/outbox" \
        --admin-email "$ADMIN" --admin-password "$ADMIN_PW" >"$WORK/pg-manifest.json" ||
        { tail -20 "$WORK/replica-a.log" >&2; die "could not obtain a grant on PostgreSQL"; }
    QA_URL=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))
print(next(f["url"] for r in m["releases"] for f in r["files"] if f["name"] == "tiny.json"))' "$WORK/pg-manifest.json")
    QB_URL=${QA_URL/:$QA_PORT\//:$QB_PORT/}
    for u in "$QA_URL" "$QB_URL"; do
        [ "$(curl -fsS "$u" | sha256sum | cut -d' ' -f1)" = "$(sha256sum <"$REL/tiny.json" | cut -d' ' -f1)" ] ||
            die "the tiny file did not come back intact from $u"
    done

    # The SQLite portal of the setup, started again if the fetch section stopped it.
    if ! kill -0 "$PORTAL_PID" 2>/dev/null; then
        WEIGHTGATE_DATA_DIR=$P WEIGHTGATE_BIND=127.0.0.1:$PORT "$WG" serve >>"$WORK/portal.log" 2>&1 &
        PORTAL_PID=$!
        PIDS+=("$PORTAL_PID")
        wait_http "$BASE/healthz" "$PORTAL_PID" || die "the SQLite portal did not start again"
    fi

    # wrk1 THREADS CONNS URL NAME -> req/s; every run asks for one byte, as a
    # client probing a file would, and every answer must be a 206.
    wrk1() {
        local out=$WORK/wrk-$4.txt
        wrk -t"$1" -c"$2" -d"${WRK_SECONDS}s" --timeout 5s --latency -H 'Range: bytes=0-0' "$3" >"$out" 2>&1 ||
            die "wrk failed: $(cat "$out")"
        grep -q 'Non-2xx' "$out" && note "wrk $4: $(grep 'Non-2xx' "$out" | xargs)"
        awk '/^Requests\/sec:/ { print $2 }' "$out"
    }
    # chain_lock PORT -> "batches wait_sum held_sum events_sum" from the replica's /metrics.
    chain_lock() {
        curl -fsS "http://127.0.0.1:$1/metrics" | awk '
            /^weightgate_audit_chain_lock_wait_seconds_count\{backend="postgres"\}/ { n = $2 }
            /^weightgate_audit_chain_lock_wait_seconds_sum\{backend="postgres"\}/ { w = $2 }
            /^weightgate_audit_chain_lock_held_seconds_sum\{backend="postgres"\}/ { h = $2 }
            /^weightgate_audit_batch_events_sum\{backend="postgres"\}/ { e = $2 }
            END { printf "%d %.6f %.6f %d\n", n, w, h, e }'
    }
    # lock_delta BEFORE_A BEFORE_B AFTER_A AFTER_B -> "batches events wait_ms_per_batch held_fraction"
    lock_delta() {
        awk -v a0="$1" -v b0="$2" -v a1="$3" -v b1="$4" -v secs="$WRK_SECONDS" 'BEGIN {
            split(a0, x); split(b0, y); split(a1, u); split(b1, v)
            n = u[1] - x[1] + v[1] - y[1]; w = u[2] - x[2] + v[2] - y[2]
            h = u[3] - x[3] + v[3] - y[3]; e = u[4] - x[4] + v[4] - y[4]
            printf "%d %d %.2f %.2f\n", n, e, n ? 1000 * w / n : 0, h / secs }'
    }
    # ticks PID... -> CPU clock ticks (user + system) of these processes so far.
    ticks() { for pid in "$@"; do awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null; done | awk '{ s += $1 } END { print s + 0 }'; }
    pg_pids() { pgrep -x postgres | xargs; }
    TICK=$(getconf CLK_TCK)
    # per_fetch TICKS REQUESTS -> µs of CPU per request
    per_fetch() { calc "$1 / $TICK * 1000000 / ($2 + ($2 == 0))" 0; }
    requests_of() { awk '/requests in/ { s += $1 } END { print s + 0 }' "$@"; }
    R_N1=() R_S1=() R_A1=() R_N2=() R_S2=() R_A2=() R_AB=() L_A2=() L_AB=() C_S2=() C_A2=() C_AB=()
    for r in $(seq "$PG_ROUNDS"); do
        R_N1+=("$(wrk1 1 "$WRK_CONNS" "$NGINX_SL_URL" "pg-nginx-t1-$r")")
        R_S1+=("$(wrk1 1 "$WRK_CONNS" "$TINY_URL" "pg-sqlite-t1-$r")")
        R_A1+=("$(wrk1 1 "$WRK_CONNS" "$QA_URL" "pg-one-t1-$r")")
        R_N2+=("$(wrk1 2 "$WRK_CONNS" "$NGINX_SL_URL" "pg-nginx-t2-$r")")
        t0=$(ticks "$PORTAL_PID")
        R_S2+=("$(wrk1 2 "$WRK_CONNS" "$TINY_URL" "pg-sqlite-t2-$r")")
        C_S2+=("$(per_fetch "$(($(ticks "$PORTAL_PID") - t0))" "$(requests_of "$WORK/wrk-pg-sqlite-t2-$r.txt")")")
        a0=$(chain_lock "$QA_PORT") b0=$(chain_lock "$QB_PORT")
        pgp=$(pg_pids) t0=$(ticks "$QA") u0=$(ticks $pgp)
        R_A2+=("$(wrk1 2 "$WRK_CONNS" "$QA_URL" "pg-one-t2-$r")")
        n=$(requests_of "$WORK/wrk-pg-one-t2-$r.txt")
        C_A2+=("$(per_fetch "$(($(ticks "$QA") - t0))" "$n")+$(per_fetch "$(($(ticks $pgp) - u0))" "$n")")
        a1=$(chain_lock "$QA_PORT") b1=$(chain_lock "$QB_PORT")
        L_A2+=("$(lock_delta "$a0" "$b0" "$a1" "$b1")")
        # Two replicas: half the connections and one wrk thread on each, at once.
        a0=$a1 b0=$b1
        pgp=$(pg_pids) t0=$(ticks "$QA" "$QB") u0=$(ticks $pgp)
        wrk1 1 $((WRK_CONNS / 2)) "$QB_URL" "pg-two-b-$r" >"$WORK/rps-two-b" &
        wpid=$!
        ra=$(wrk1 1 $((WRK_CONNS / 2)) "$QA_URL" "pg-two-a-$r")
        wait "$wpid" || die "wrk on replica b failed"
        R_AB+=("$(calc "$ra + $(cat "$WORK/rps-two-b")" 1)")
        n=$(requests_of "$WORK/wrk-pg-two-a-$r.txt" "$WORK/wrk-pg-two-b-$r.txt")
        C_AB+=("$(per_fetch "$(($(ticks "$QA" "$QB") - t0))" "$n")+$(per_fetch "$(($(ticks $pgp) - u0))" "$n")")
        a1=$(chain_lock "$QA_PORT") b1=$(chain_lock "$QB_PORT")
        L_AB+=("$(lock_delta "$a0" "$b0" "$a1" "$b1")")
        log "round $r: nginx t1 ${R_N1[-1]}, t2 ${R_N2[-1]}; SQLite t1 ${R_S1[-1]}, t2 ${R_S2[-1]} (CPU µs/fetch ${C_S2[-1]}); PostgreSQL one replica t1 ${R_A1[-1]}, t2 ${R_A2[-1]} (lock: ${L_A2[-1]}; CPU µs/fetch portal+postgres ${C_A2[-1]}); two replicas ${R_AB[-1]} (lock: ${L_AB[-1]}; CPU ${C_AB[-1]})"
    done
    n1=$(median "${R_N1[@]}") s1=$(median "${R_S1[@]}") a1=$(median "${R_A1[@]}")
    n2=$(median "${R_N2[@]}") s2=$(median "${R_S2[@]}") a2=$(median "${R_A2[@]}") ab=$(median "${R_AB[@]}")
    # The lock figures of the round whose rate was the median.
    lock_of() { # lock_of MEDIAN RATES... -- LOCKS...
        local want=$1; shift
        local -a rates=() locks=()
        while [ "$1" != -- ]; do rates+=("$1"); shift; done; shift
        locks=("$@")
        for i in "${!rates[@]}"; do [ "${rates[$i]}" = "$want" ] && { echo "${locks[$i]}"; return; }; done
    }
    read -r lb1 le1 lw1 lh1 <<<"$(lock_of "$a2" "${R_A2[@]}" -- "${L_A2[@]}")"
    read -r lb2 le2 lw2 lh2 <<<"$(lock_of "$ab" "${R_AB[@]}" -- "${L_AB[@]}")"
    # median_pair "P+Q"... -> "P + Q" of the round whose sum is the median
    median_pair() {
        local m
        m=$(median "$(for x in "$@"; do echo $((${x%+*} + ${x#*+})); done)")
        for x in "$@"; do [ $((${x%+*} + ${x#*+})) = "$m" ] && { echo "${x%+*} + ${x#*+}"; return; }; done
    }
    pin_note=$([ "$PG_PIN" = 1 ] && echo "replica a pinned to CPU 0, b to CPU 1" || echo "replicas not pinned")
    row "4'a. SQLite audited fetches, \`Range: bytes=0-0\`, wrk -t1 -c$WRK_CONNS (the figure to quote: one wrk thread leaves the portal the most of the machine)" "$(calc "$s1" 0) req/s" "nginx secure_link, -t1: $(calc "$n1" 0) req/s" "$(calc "$s1 / $n1" 3)x" "≥ 0.2x nginx" "$(met "$s1 / $n1 >= 0.2")"
    row "4'b. same at wrk -t2 -c$WRK_CONNS" "$(calc "$s2" 0) req/s" "nginx secure_link, -t2: $(calc "$n2" 0) req/s" "$(calc "$s2 / $n2" 3)x" "(info)" "-"
    row "4'c. one PostgreSQL replica, wrk -t1 -c$WRK_CONNS" "$(calc "$a1" 0) req/s" "SQLite portal, -t1: $(calc "$s1" 0) req/s" "$(calc "$a1 / $s1")x" "≥ 0.6x SQLite" "$(met "$a1 / $s1 >= 0.6")"
    row "4'd. one PostgreSQL replica, wrk -t2 -c$WRK_CONNS" "$(calc "$a2" 0) req/s; chain lock held $(calc "$lh1 * 100" 0) % of the time, $lb1 batches of $(calc "$le1 / ($lb1 + ($lb1 == 0))" 1) events, wait $lw1 ms each" "SQLite portal, -t2: $(calc "$s2" 0) req/s" "$(calc "$a2 / $s2")x" "≥ 0.6x SQLite" "$(met "$a2 / $s2 >= 0.6")"
    row "4'e. two PostgreSQL replicas at once (wrk -t1 -c$((WRK_CONNS / 2)) on each; $pin_note)" "$(calc "$ab" 0) req/s in all; chain lock held $(calc "$lh2 * 100" 0) % of the time, $lb2 batches of $(calc "$le2 / ($lb2 + ($lb2 == 0))" 1) events, wait $lw2 ms each" "one replica, -t2: $(calc "$a2" 0) req/s" "$(calc "$ab / $a2")x" "≥ 1.5x one replica, each on its own core; here: the lock not the limit" "$(met "$ab / $a2 >= 1.5") ($( awk -v h="$lh2" 'BEGIN { print (h < 0.5) ? "lock held under half the time" : "**lock held over half the time**" }'))"
    note "PostgreSQL section, rates per round (req/s): nginx -t1 $(fmt_runs "${R_N1[@]}"), -t2 $(fmt_runs "${R_N2[@]}"); SQLite -t1 $(fmt_runs "${R_S1[@]}"), -t2 $(fmt_runs "${R_S2[@]}"); one replica -t1 $(fmt_runs "${R_A1[@]}"), -t2 $(fmt_runs "${R_A2[@]}"); two replicas $(fmt_runs "${R_AB[@]}"); chain lock per round as \"batches events wait-ms held-fraction\": one replica $(fmt_runs "${L_A2[@]// /:}"), two $(fmt_runs "${L_AB[@]// /:}"); PostgreSQL $(psql -At -d "$PG_URL" -c 'SHOW server_version'), $pin_note, all on $(nproc) cores with wrk and the database"
    for pid in "$QA" "$QB"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$QA" "$QB"; do for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; done
    VERIFY_PG=$(wgq audit verify 2>&1) && VERIFY_PG_OK=yes || VERIFY_PG_OK=no
    row "4'g. (context) CPU per fetch, median of the rounds (µs; \`-t2\` runs)" "one replica: $(median_pair "${C_A2[@]}"); two replicas: $(median_pair "${C_AB[@]}") (portal + PostgreSQL)" "SQLite portal: $(median "${C_S2[@]}") µs" "-" "(info)" "-"
    row "4'f. \`audit verify\` of the PostgreSQL log after both replicas' load" "$(echo "$VERIFY_PG" | head -1)" "-" "-" "log intact" "$( [ "$VERIFY_PG_OK" = yes ] && echo yes || echo '**NO**')"
    psql -q -d "$PG_URL" -c "DROP DATABASE $PGDB" >/dev/null && PGDB=""
fi
# ================================================================ 7. many clients at once
if want scale; then
    log "== 7. scale: $SCALE_CLIENTS concurrent ranged downloads ($SCALE_RANGE_MIB MiB each) for ${SCALE_SECONDS}s, then $SCALE_IDLE idle keep-alive connections held ${SCALE_HOLD}s"
    # Every client here comes from 127.0.0.1, and the portal lets one address
    # hold 256 connections (WEIGHTGATE_MAX_CONNECTIONS_PER_ADDRESS): this
    # section runs a portal of its own on the same data dir, with that cap and
    # the total cap raised, every other setting (the rate limits, the header
    # timeout) at its default as in the setup.
    # (start_scale_portal: stops the running portal and starts that one, on the
    # same port, so the signed links stay good; its idle RSS in SCALE_IDLE_RSS.)
    start_scale_portal() {
        if [ -n "$PORTAL_PID" ] && kill -0 "$PORTAL_PID" 2>/dev/null; then
            kill -TERM "$PORTAL_PID"
            for _ in $(seq 100); do kill -0 "$PORTAL_PID" 2>/dev/null || break; sleep 0.1; done
        fi
        WEIGHTGATE_MAX_CONNECTIONS_PER_ADDRESS=20000 WEIGHTGATE_MAX_CONNECTIONS=20000 \
            WEIGHTGATE_DATA_DIR=$P WEIGHTGATE_BIND=127.0.0.1:$PORT "$WG" serve >>"$WORK/portal.log" 2>&1 &
        PORTAL_PID=$!
        PIDS+=("$PORTAL_PID")
        wait_http "$BASE/healthz" "$PORTAL_PID" ||
            { tail -20 "$WORK/portal.log" >&2; die "the portal did not start with the connection caps raised"; }
        sleep 1
        SCALE_IDLE_RSS=$(rss "$PORTAL_PID" VmRSS)
    }
    start_scale_portal
    D_IDLE_RSS=$SCALE_IDLE_RSS
    SCALE_NOFILE=$(awk '/^Max open files/ { print $4 }' "/proc/$PORTAL_PID/limits")
    note "scale section: a portal of its own on the same data dir (started afresh for each of its two tests), with WEIGHTGATE_MAX_CONNECTIONS_PER_ADDRESS=20000 and WEIGHTGATE_MAX_CONNECTIONS=20000 (the portal lowers the latter to its open-files limit, $SCALE_NOFILE, less 256), since every client comes from 127.0.0.1 and one address may hold 256 connections by default; every other setting at its default"
    warm "$P"/objects/sha256/*/*

    # sample_rss PID_OF_CLIENT [READY_FILE]: the portal's largest VmRSS, every
    # 0.25 s while the client runs (and, with READY_FILE, while it exists),
    # in MAX_RSS; its open descriptors at that time in MAX_FDS.
    sample_rss() {
        local cur fds
        MAX_RSS=0 MAX_FDS=0 SAMPLES=0
        while kill -0 "$1" 2>/dev/null; do
            if [ -z "${2:-}" ] || [ -e "$2" ]; then
                cur=$(rss "$PORTAL_PID" VmRSS 2>/dev/null || echo 0)
                fds=$(find "/proc/$PORTAL_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
                [ "${cur:-0}" -gt "$MAX_RSS" ] && MAX_RSS=$cur
                [ "$fds" -gt "$MAX_FDS" ] && MAX_FDS=$fds
                SAMPLES=$((SAMPLES + 1))
            fi
            sleep 0.25
        done
    }
    # field FILE EXPR: a value of bench/scale.py's JSON, as a Python expression on r.
    field() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

    HWM_RESET=yes
    echo 5 >"/proc/$PORTAL_PID/clear_refs" 2>/dev/null || HWM_RESET=no
    python3 "$HERE/scale.py" downloads --url "$BIG_URL" --clients "$SCALE_CLIENTS" \
        --range-mib "$SCALE_RANGE_MIB" --seconds "$SCALE_SECONDS" >"$WORK/scale-downloads.json" 2>"$WORK/scale-downloads.err" &
    SPID=$!
    sample_rss "$SPID"
    wait "$SPID" || { tail -5 "$WORK/scale-downloads.err" >&2; die "bench/scale.py downloads failed"; }
    kill -0 "$PORTAL_PID" 2>/dev/null || { tail -20 "$WORK/portal.log" >&2; die "the portal died under $SCALE_CLIENTS downloads"; }
    PEAK=$(rss "$PORTAL_PID" VmHWM)
    J=$WORK/scale-downloads.json
    D_MIBS=$(field "$J" 'r["mib_per_s"]') D_ERR=$(field "$J" 'r["error_count"]') D_JAIN=$(field "$J" 'r["jain_fairness"]')
    D_REQ=$(field "$J" 'r["requests_completed"]') D_NONE=$(field "$J" 'r["clients_with_no_completed_request"]')
    D_KINDS=$(field "$J" '", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"')
    D_PC=$(field "$J" '"min {min} / p10 {p10} / median {median} / max {max}".format(**r["per_client_mib_per_s"])')
    D_TTFB=$(field "$J" '"p50 {p50} ms, p99 {p99} ms".format(**r["ttfb_ms"])')
    log "scale downloads: $(cat "$J")"
    log "scale downloads: portal peak RSS ${PEAK} KiB (reset: $HWM_RESET), max sampled ${MAX_RSS} KiB over $SAMPLES samples, at most $MAX_FDS descriptors open"
    row "7. $SCALE_CLIENTS concurrent ranged downloads (\`Range\` of $SCALE_RANGE_MIB MiB each, one after another on each keep-alive connection, ${SCALE_SECONDS} s; bench/scale.py)" "$(calc "$D_MIBS" 0) MiB/s in all, $D_ERR errors, fairness $D_JAIN; peak RSS $(calc "$PEAK / 1024" 1) MiB" "idle: $(calc "$D_IDLE_RSS / 1024" 1) MiB" "$(calc "$PEAK / $D_IDLE_RSS")x idle" "no errors, peak RSS < 256 MiB" "$(met "$D_ERR == 0 && $PEAK / 1024 < 256")"
    note "scale downloads: $D_REQ ranges of $SCALE_RANGE_MIB MiB completed, $D_NONE clients without one; errors: $D_KINDS; per client MiB/s $D_PC (fairness: Jain's index over the clients' bytes); time to first byte $D_TTFB; at most $MAX_FDS descriptors open in the portal; VmHWM reset before the load: $HWM_RESET; the client is one Python process on the same cores"

    # A fresh portal, so what the downloads left in its allocator does not
    # hide what each idle connection costs.
    start_scale_portal
    PRE_RSS=$SCALE_IDLE_RSS
    READY=$WORK/scale-idle.ready
    rm -f "$READY"
    python3 "$HERE/scale.py" idle --url "$BASE/healthz" --connections "$SCALE_IDLE" --hold "$SCALE_HOLD" \
        --ready-file "$READY" >"$WORK/scale-idle.json" 2>"$WORK/scale-idle.err" &
    SPID=$!
    sample_rss "$SPID" "$READY"
    wait "$SPID" || { tail -5 "$WORK/scale-idle.err" >&2; die "bench/scale.py idle failed"; }
    kill -0 "$PORTAL_PID" 2>/dev/null || { tail -20 "$WORK/portal.log" >&2; die "the portal died holding $SCALE_IDLE connections"; }
    J=$WORK/scale-idle.json
    I_OPEN=$(field "$J" 'r["opened"]') I_FIRST=$(field "$J" 'r["answered_first"]') I_AFTER=$(field "$J" 'r["answered_after_hold"]')
    I_CLOSED=$(field "$J" 'r["closed_by_server_during_hold"]') I_SECS=$(field "$J" 'r["time_to_open_all_s"]')
    I_KINDS=$(field "$J" '", ".join(f"{k} {v}" for k, v in r["failed"].items()) or "none"')
    log "scale idle: $(cat "$J")"
    log "scale idle: portal RSS while holding at most ${MAX_RSS} KiB over $SAMPLES samples (idle, restarted: ${SCALE_IDLE_RSS} KiB), at most $MAX_FDS descriptors open"
    [ "$SAMPLES" -gt 0 ] || die "bench/scale.py idle never held its connections (see $WORK/scale-idle.err)"
    row "7'. $SCALE_IDLE idle keep-alive connections (one \`GET /healthz\` each, then ${SCALE_HOLD} s idle, then another)" "RSS while holding $(calc "$MAX_RSS / 1024" 1) MiB; $I_AFTER of $SCALE_IDLE answer after the hold" "idle (restarted): $(calc "$SCALE_IDLE_RSS / 1024" 1) MiB" "$(calc "$MAX_RSS / $SCALE_IDLE_RSS")x idle; $(calc "($MAX_RSS - $PRE_RSS) / $SCALE_IDLE" 1) KiB per connection" "all answer, RSS < 256 MiB" "$(met "$I_AFTER == $SCALE_IDLE && $MAX_RSS / 1024 < 256")"
    note "scale idle: $I_OPEN of $SCALE_IDLE connections opened and $I_FIRST answered in $I_SECS s (500 connecting at once), $I_CLOSED closed by the portal during the ${SCALE_HOLD} s hold, $I_AFTER answered after it; failures: $I_KINDS; at most $MAX_FDS descriptors open in the portal while holding; the portal closes a kept-alive connection idle for WEIGHTGATE_HEADER_TIMEOUT (30 s)"
fi
if [ -n "$PORTAL_PID" ] && kill -0 "$PORTAL_PID" 2>/dev/null; then
    kill -TERM "$PORTAL_PID" || true
fi

# ================================================================ 5. audit at scale
if want audit; then
    log "== 5. audit at scale: $AUDIT_EVENTS events"
    A=$WORK/audit
    wg "$A" migrate >/dev/null
    # The checkpoint key `audit verify` trusts and `audit checkpoint` signs with.
    python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode())' >"$A/audit-checkpoint.key"
    chmod 600 "$A/audit-checkpoint.key"
    # A few events written by weightgate itself first: the generator continues
    # their chain and checks it reproduces their hashes.
    wg "$A" model create llama-bench --title "Llama bench" >/dev/null
    printf 'x%.0s' {1..16} | wg "$A" reviewer add reviewer@bench.invalid --password-stdin >/dev/null
    t0=$EPOCHREALTIME
    python3 "$HERE/fill_audit.py" --db "$A/weightgate.db" --events "$AUDIT_EVENTS" --store-world \
        --canonical-out "$A/canonical.bin" --summary "$A/summary.json" >&2
    log "generated in $(calc "$EPOCHREALTIME - $t0" 1) s"
    read -r GRANT GRANT_EVENTS CANON_BYTES TOTAL_EVENTS < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))
print(s["busiest_grant"], s["busiest_grant_events"], s["canonical_bytes"], s["total_events"])' "$A/summary.json")
    VERIFY_OUT=$(wg "$A" audit verify --full 2>&1) || die "audit verify rejects the generated log: $VERIFY_OUT"
    echo "$VERIFY_OUT" | grep -q "audit log intact: $TOTAL_EVENTS events" || die "unexpected verify output: $VERIFY_OUT"
    log "generated log verifies: $(echo "$VERIFY_OUT" | head -1)"
    DBF=$A/weightgate.db
    warm "$DBF" "$A/canonical.bin"

    T_V=() T_SHA=() T_SCAN=()
    for r in $(seq "$RUNS"); do
        T_V+=("$(elapsed wg "$A" audit verify --full)")
        T_SHA+=("$(elapsed sha256sum "$A/canonical.bin")")
        T_SCAN+=("$(elapsed sqlite3 -readonly "$DBF" "SELECT * FROM audit_events ORDER BY seq")")
    done
    t_v=$(median "${T_V[@]}") t_sha=$(median "${T_SHA[@]}") t_scan=$(median "${T_SCAN[@]}")
    log "verify: $(fmt_runs "${T_V[@]}") s; sha256sum $(fmt_runs "${T_SHA[@]}") s; sqlite3 scan $(fmt_runs "${T_SCAN[@]}") s"
    row "5a. \`audit verify\`, $TOTAL_EVENTS events" "$t_v s" "sha256sum of the $(calc "$CANON_BYTES / 1048576" 0) MiB of canonical encodings: $t_sha s" "$(calc "$t_v / $t_sha" 1)x slower" "< 5 s" "$(met "$t_v < 5")"
    row "5a'. (context) sqlite3 reading every row, \`SELECT * … ORDER BY seq\`" "-" "$t_scan s" "verify / scan: $(calc "$t_v / $t_scan" 1)x" "(info)" "-"

    COLS="seq, at, action, outcome, reason, actor, subject, model_id, application_id, grant_id, researcher_id, file_id, range_start, range_end, bytes, client_ip, user_agent, request_id, prev_hash, hash"
    SINCE_MS=$(( ($(date +%s) - 86400) * 1000 ))
    term() { echo "(SELECT id FROM audit_terms WHERE term = '$1')"; }
    Q_GRANT="SELECT $COLS FROM audit_log WHERE seq IN (SELECT seq FROM audit_events
        WHERE grant_term = $(term "$GRANT") ORDER BY seq DESC LIMIT 100) ORDER BY seq DESC"
    Q_SINCE="SELECT $COLS FROM audit_log WHERE seq IN (SELECT seq FROM audit_events
        WHERE action_term = $(term file.fetch) AND at >= $SINCE_MS ORDER BY seq DESC LIMIT 100) ORDER BY seq DESC"
    n1=$(wg "$A" audit list --grant "$GRANT" --limit 100 --format jsonl 2>/dev/null | wc -l)
    n2=$(wg "$A" audit list --since 1d --action file.fetch --limit 100 --format jsonl 2>/dev/null | wc -l)
    n3=$(sqlite3 -readonly -json "$DBF" "$Q_GRANT" | grep -o '"seq":' | wc -l)
    n4=$(sqlite3 -readonly -json "$DBF" "$Q_SINCE" | grep -o '"seq":' | wc -l)
    [ "$n1" = 100 ] && [ "$n2" = 100 ] || die "audit list returned $n1 and $n2 lines, expected 100 each"
    [ "$n3" = 100 ] && [ "$n4" = 100 ] || die "the sqlite3 baselines returned $n3 and $n4 rows, expected 100 each"
    T_L1=() T_S1=() T_L2=() T_S2=()
    for r in $(seq "$RUNS"); do
        T_L1+=("$(elapsed wg "$A" audit list --grant "$GRANT" --limit 100 --format jsonl)")
        T_S1+=("$(elapsed sqlite3 -readonly -json "$DBF" "$Q_GRANT")")
        T_L2+=("$(elapsed wg "$A" audit list --since 1d --action file.fetch --limit 100 --format jsonl)")
        T_S2+=("$(elapsed sqlite3 -readonly -json "$DBF" "$Q_SINCE")")
    done
    ms() { calc "$1 * 1000" 0; }
    t_l1=$(median "${T_L1[@]}") t_s1=$(median "${T_S1[@]}") t_l2=$(median "${T_L2[@]}") t_s2=$(median "${T_S2[@]}")
    log "list --grant: $(fmt_runs "${T_L1[@]}") s vs sqlite3 $(fmt_runs "${T_S1[@]}") s; list --since: $(fmt_runs "${T_L2[@]}") s vs sqlite3 $(fmt_runs "${T_S2[@]}") s"
    row "5b. \`audit list --grant G --limit 100 --format jsonl\` (G has $GRANT_EVENTS events)" "$(ms "$t_l1") ms" "sqlite3 -json, same SELECT: $(ms "$t_s1") ms" "$(calc "$t_l1 / $t_s1" 1)x slower" "< 200 ms" "$(met "$t_l1 < 0.2")"
    row "5c. \`audit list --since 1d --action file.fetch --limit 100 --format jsonl\`" "$(ms "$t_l2") ms" "sqlite3 -json, same SELECT: $(ms "$t_s2") ms" "$(calc "$t_l2 / $t_s2" 1)x slower" "< 200 ms" "$(met "$t_l2 < 0.2")"

    # The operator's reports read totals the log is folded into (docs/ARCHITECTURE.md,
    # "Reports from a fold of the log"): first the fold of the whole log, then
    # each report, the fold caught up. Baseline: sqlite3 reading every row.
    BUSY_MODEL=$(sqlite3 -readonly "$DBF" "SELECT m.slug FROM audit_events e JOIN audit_terms t ON t.id = e.model_term
        JOIN models m ON m.id = t.term WHERE e.action_term = $(term file.delivered)
        GROUP BY m.slug ORDER BY COUNT(*) DESC LIMIT 1")
    T_FOLD=()
    for r in $(seq "$RUNS"); do T_FOLD+=("$(elapsed wg "$A" audit rebuild-reports)"); done
    t_fold=$(median "${T_FOLD[@]}")
    log "rebuild-reports: $(fmt_runs "${T_FOLD[@]}") s"
    row "5d. \`audit rebuild-reports\`: fold all $TOTAL_EVENTS events into the report totals" "$t_fold s ($(calc "$TOTAL_EVENTS / $t_fold" 0) events/s)" "sqlite3 scan: $t_scan s" "$(calc "$t_fold / $t_scan" 1)x" "(info: a one-off; the portal folds as it goes)" "-"
    holders=$(wg "$A" audit who-has "$BUSY_MODEL" --format jsonl | wc -l)
    for report in "who-has $BUSY_MODEL" "downloads --model $BUSY_MODEL" "downloads" "anomalies"; do
        T_R=()
        # shellcheck disable=SC2086 # the report's words are its arguments
        for r in $(seq "$RUNS"); do T_R+=("$(elapsed wg "$A" audit $report --format jsonl)"); done
        t_r=$(median "${T_R[@]}")
        log "$report: $(fmt_runs "${T_R[@]}") s"
        row "5e. \`audit $report --format jsonl\`" "$(ms "$t_r") ms" "sqlite3 scan: $(ms "$t_scan") ms" "$(calc "$t_r / $t_scan" 3)x" "< 1 s" "$(met "$t_r < 1")"
    done
    note "who-has $BUSY_MODEL (the model with the most deliveries) lists $holders holders"

    # Verify from the newest witnessed checkpoint: sign one at the head, add
    # 1% more events, then verify (only those re-hashed) against --full.
    wg "$A" audit checkpoint >/dev/null
    MORE=$((TOTAL_EVENTS / 100))
    python3 "$HERE/fill_audit.py" --db "$A/weightgate.db" --events "$MORE" >&2
    T_I=() T_F=()
    for r in $(seq "$RUNS"); do
        T_I+=("$(elapsed wg "$A" audit verify)")
        T_F+=("$(elapsed wg "$A" audit verify --full)")
    done
    t_i=$(median "${T_I[@]}") t_f=$(median "${T_F[@]}")
    VERIFY_OUT=$(wg "$A" audit verify)
    grep -q "the $MORE after it re-hashed" <<<"$VERIFY_OUT" || die "verify did not start from the checkpoint: $VERIFY_OUT"
    log "verify: $(fmt_runs "${T_I[@]}") s; --full $(fmt_runs "${T_F[@]}") s"
    row "5f. \`audit verify\` after a checkpoint and $MORE more events" "$(ms "$t_i") ms" "\`audit verify --full\`: $(ms "$t_f") ms" "$(calc "$t_i / $t_f" 3)x" "(info: proportional to the new events)" "-"
    note "audit at scale: $TOTAL_EVENTS events, $(calc "$(stat -c %s "$DBF") / 1048576" 0) MiB database, canonical encodings $CANON_BYTES bytes; generated by bench/fill_audit.py and accepted by \`audit verify\`"

    # The same log and the rows it names, copied into PostgreSQL: the fold
    # there, and each report, whose output must equal SQLite's.
    if want auditpg; then
        log "== 5'. the same reports on PostgreSQL"
        PGDB=weightgate_bench_audit_$$
        psql -q -d "$PG_URL" -c "CREATE DATABASE $PGDB" >/dev/null || die "cannot create database $PGDB at $PG_URL"
        PG_DB_URL=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$PG_URL" "$PGDB")
        R=$WORK/auditpg
        mkdir -p "$R"
        wgr() { WEIGHTGATE_DATA_DIR=$R WEIGHTGATE_DATABASE_URL=$PG_DB_URL WEIGHTGATE_LOG=warn "$WG" "$@"; }
        wgr migrate >/dev/null
        for spec in "models:id,slug,title,terms,terms_version,created_at" \
            "releases:id,model_id,name,created_at,published_at" \
            "files:id,release_id,name,object_key,size,sha256,chunk_size,chunks" \
            "researchers:id,email,created_at" \
            "audit_terms:id,term"; do
            table=${spec%%:*} columns=${spec#*:}
            sqlite3 -csv "$DBF" "SELECT $columns FROM $table" |
                psql -q -d "$PG_DB_URL" -c "\\copy $table ($columns) FROM pstdin WITH (FORMAT csv)" ||
                die "cannot copy $table into PostgreSQL"
        done
        # The stored events, their bytes as PostgreSQL's hexadecimal bytea.
        STORED="seq, at, action_term, outcome_term, reason_term, actor_term, subject_term, model_term, application_term, grant_term, researcher_term, file_term, range_start, range_end, bytes, client_ip_term, user_agent_term, request_uuid, request_text, prev_hash, hash, occurrences"
        sqlite3 -csv "$DBF" "SELECT $(sed -E "s/(request_uuid|prev_hash|hash)(,|$)/CASE WHEN \1 IS NOT NULL THEN '\\\\x' || hex(\1) END\2/g" <<<"$STORED") FROM audit_events" |
            psql -q -d "$PG_DB_URL" -c "\\copy audit_events ($STORED) FROM pstdin WITH (FORMAT csv)" ||
            die "cannot copy audit_events into PostgreSQL"
        psql -q -d "$PG_DB_URL" -c "SELECT setval(pg_get_serial_sequence('audit_terms', 'id'), (SELECT max(id) FROM audit_terms))" >/dev/null
        T_PF=()
        for r in $(seq "$RUNS"); do T_PF+=("$(elapsed wgr audit rebuild-reports)"); done
        t_pf=$(median "${T_PF[@]}")
        log "PostgreSQL rebuild-reports: $(fmt_runs "${T_PF[@]}") s"
        row "5'd. \`audit rebuild-reports\` on PostgreSQL, the same $(calc "$TOTAL_EVENTS + $MORE" 0) events" "$t_pf s" "on SQLite: $t_fold s" "$(calc "$t_pf / $t_fold" 1)x" "(info)" "-"
        for report in "who-has $BUSY_MODEL" "downloads --model $BUSY_MODEL" "downloads" "anomalies"; do
            # The same lines in the same order (the bench's database sorts
            # text by code point, as SQLite does).
            # shellcheck disable=SC2086 # the report's words are its arguments
            cmp -s <(wg "$A" audit $report --format jsonl) <(wgr audit $report --format jsonl) ||
                die "audit $report says something else on PostgreSQL than on SQLite"
            T_R=()
            # shellcheck disable=SC2086
            for r in $(seq "$RUNS"); do T_R+=("$(elapsed wgr audit $report --format jsonl)"); done
            t_r=$(median "${T_R[@]}")
            log "PostgreSQL $report: $(fmt_runs "${T_R[@]}") s"
            row "5'e. \`audit $report --format jsonl\` on PostgreSQL (output equal to SQLite's)" "$(ms "$t_r") ms" "sqlite3 scan: $(ms "$t_scan") ms" "$(calc "$t_r / $t_scan" 3)x" "< 1 s" "$(met "$t_r < 1")"
        done
        # The same events' size in each database: table, indexes and terms.
        psql -q -d "$PG_DB_URL" -c "VACUUM ANALYZE audit_events" -c "VACUUM ANALYZE audit_terms"
        pg_bytes=$(psql -At -d "$PG_DB_URL" -c "SELECT pg_total_relation_size('audit_events') + pg_total_relation_size('audit_terms')")
        pg_events=$(psql -At -d "$PG_DB_URL" -c "SELECT count(*) FROM audit_events")
        sqlite_bytes=$(sqlite3 -readonly "$DBF" "SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'audit_events%' OR name LIKE '%audit_terms%'")
        log "bytes per event: PostgreSQL $(calc "$pg_bytes / $pg_events" 1), SQLite $(calc "$sqlite_bytes / $pg_events" 1)"
        row "5'h. bytes per event in PostgreSQL (table, indexes, terms)" "$(calc "$pg_bytes / $pg_events" 0) B" "SQLite, the same events: $(calc "$sqlite_bytes / $pg_events" 0) B" "$(calc "$pg_bytes / $sqlite_bytes" 2)x" "≤ 250 B per event" "$(met "$pg_bytes / $pg_events <= 250")"
        psql -q -d "$PG_URL" -c "DROP DATABASE $PGDB WITH (FORCE)" >/dev/null && PGDB=""
    fi

    # Archive the whole log up to a checkpoint of its head: the time against
    # dumping and compressing the same rows with sqlite3 and gzip; the bytes
    # per event in the segments and in the database before and after; verify
    # reading the segments back against --full before; and the reports, and
    # a rebuild of them from the segments, saying what they said before.
    log "== 5g. archive the log"
    wg "$A" audit checkpoint >/dev/null
    ALL_EVENTS=$(sqlite3 -readonly "$DBF" "SELECT count(*) FROM audit_events")
    used_bytes() { sqlite3 -readonly "$DBF" "SELECT (SELECT page_count FROM pragma_page_count) * (SELECT page_size FROM pragma_page_size) - (SELECT freelist_count FROM pragma_freelist_count) * (SELECT page_size FROM pragma_page_size)"; }
    used_events_before=$(sqlite3 -readonly "$DBF" "SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'audit_events%' OR name LIKE '%audit_terms%'")
    for report in "who-has $BUSY_MODEL" "downloads" "anomalies"; do
        # shellcheck disable=SC2086 # the report's words are its arguments
        wg "$A" audit $report --format jsonl >"$A/before-${report%% *}.jsonl"
    done
    t_dump=$(elapsed sh -c "sqlite3 -readonly -json '$DBF' 'SELECT * FROM audit_log ORDER BY seq' | gzip -6 >'$A/dump.json.gz'")
    t_archive=$(elapsed wg "$A" audit archive --before 2999-01-01)
    ARCHIVED=$(sqlite3 -readonly "$DBF" "SELECT COALESCE(SUM(events), 0) || ' ' || COALESCE(SUM(size), 0) || ' ' || count(*) FROM audit_archives")
    read -r A_EVENTS A_BYTES A_SEGMENTS <<<"$ARCHIVED"
    [ "$A_EVENTS" = "$ALL_EVENTS" ] || die "archived $A_EVENTS events of $ALL_EVENTS"
    left=$(sqlite3 -readonly "$DBF" "SELECT count(*) FROM audit_events")
    used_events_after=$(sqlite3 -readonly "$DBF" "SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'audit_events%' OR name LIKE '%audit_terms%'")
    log "archive: $t_archive s for $A_EVENTS events in $A_SEGMENTS segments, $A_BYTES bytes; $left events left"
    row "5g. \`audit archive\`: $A_EVENTS events (re-hashed, to $A_SEGMENTS gzip segments, removed from the database)" "$t_archive s ($(calc "$A_EVENTS / $t_archive" 0) events/s)" "sqlite3 -json piped to gzip -6, the same rows: $t_dump s" "$(calc "$t_archive / $t_dump" 1)x" "(info: a one-off per period)" "-"
    row "5h. bytes per event: archived segment / the log's table and indexes in SQLite" "$(calc "$A_BYTES / $A_EVENTS" 0) B" "$(calc "$used_events_before / $ALL_EVENTS" 0) B before; $(calc "$used_events_after / 1048576" 1) MiB of the log left for $left event(s)" "$(calc "$A_BYTES / $used_events_before" 3)x" "≤ 250 B per event in the database (the live row: the baseline)" "$(met "$used_events_before / $ALL_EVENTS <= 250")"
    T_VA=()
    for r in $(seq "$RUNS"); do T_VA+=("$(elapsed wg "$A" audit verify --archive)"); done
    t_va=$(median "${T_VA[@]}")
    VERIFY_OUT=$(wg "$A" audit verify --archive) || die "verify --archive failed: $VERIFY_OUT"
    grep -q "read back and re-hashed" <<<"$VERIFY_OUT" || die "verify did not read the archive: $VERIFY_OUT"
    log "verify --archive: $(fmt_runs "${T_VA[@]}") s"
    row "5i. \`audit verify --archive\`: every segment read back and re-hashed" "$t_va s ($(calc "$A_EVENTS / $t_va" 0) events/s)" "\`audit verify --full\` before archiving: $t_f s" "$(calc "$t_va / $t_f" 2)x" "(info)" "-"
    for report in "who-has $BUSY_MODEL" "downloads" "anomalies"; do
        # shellcheck disable=SC2086
        cmp -s "$A/before-${report%% *}.jsonl" <(wg "$A" audit $report --format jsonl) ||
            die "audit $report says something else after archiving"
    done
    t_rebuild=$(elapsed wg "$A" audit rebuild-reports)
    for report in "who-has $BUSY_MODEL" "downloads" "anomalies"; do
        # shellcheck disable=SC2086
        cmp -s "$A/before-${report%% *}.jsonl" <(wg "$A" audit $report --format jsonl) ||
            die "audit $report says something else after a rebuild from the archive"
    done
    row "5j. \`audit rebuild-reports\` from the archived segments (reports equal before and after)" "$t_rebuild s ($(calc "$A_EVENTS / $t_rebuild" 0) events/s)" "from the database: $t_fold s" "$(calc "$t_rebuild / $t_fold" 2)x" "(info)" "-"
    note "5g–5j: the database file keeps its size after archiving (SQLite reuses the freed pages); $(calc "$(used_bytes) / 1048576" 0) MiB of it in use afterwards, mostly the report totals"
fi

# ================================================================ 6. publish to S3
if want publish; then
    PUB_MIB=$((PUB_BIG_MIB + PUB_SHARDS * PUB_SHARD_MIB))
    log "== 6. publish to S3: weightgate model publish against rclone copy, $PUB_MIB MiB ($PUB_BIG_MIB MiB + $PUB_SHARDS x $PUB_SHARD_MIB MiB + config.json) to s3s-fs"
    # The tree, what the server stores (its multipart parts too, until it
    # joins them) and some room: about 3x the tree.
    FREE_MIB=$(df -Pm "$WORK" | awk 'NR == 2 { print $4 }')
    [ "$FREE_MIB" -ge $((PUB_MIB * 3 + 1024)) ] ||
        die "publish needs about $((PUB_MIB * 3 + 1024)) MiB free under $WORK; there are $FREE_MIB"
    TREE=$WORK/pub-tree
    mkdir -p "$TREE/original"
    # Incompressible bytes, faster than /dev/urandom: AES-CTR of zeros under a random key.
    make_cipher() { # make_cipher FILE MIB
        head -c "$(mib "$2")" /dev/zero |
            openssl enc -aes-128-ctr -nosalt -K "$(openssl rand -hex 16)" -iv "$(openssl rand -hex 16)" >"$1"
    }
    make_cipher "$TREE/original/consolidated.00.pth" "$PUB_BIG_MIB"
    for i in $(seq "$PUB_SHARDS"); do
        make_cipher "$TREE/model-$(printf %05d "$i")-of-$(printf %05d "$PUB_SHARDS").safetensors" "$PUB_SHARD_MIB"
    done
    printf '{"architectures": ["BenchForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32}\n' >"$TREE/config.json"
    mapfile -t PUB_FILES < <(cd "$TREE" && find . -type f | sed 's|^\./||' | sort)

    # The server: buckets are the folders of its root.
    S3ROOT=$WORK/s3
    mkdir -p "$S3ROOT/bench"
    S3URL=http://127.0.0.1:$(free_port)
    S3KEY=bench$(openssl rand -hex 8)
    S3SECRET=$(openssl rand -hex 20)
    "$S3S_FS" --host 127.0.0.1 --port "${S3URL##*:}" --access-key "$S3KEY" --secret-key "$S3SECRET" "$S3ROOT" \
        >"$WORK/s3s-fs.log" 2>&1 &
    S3PID=$!
    PIDS+=("$S3PID")
    for _ in $(seq 100); do
        curl -s -o /dev/null "$S3URL/" && break # any answer, 403 included
        kill -0 "$S3PID" 2>/dev/null || { cat "$WORK/s3s-fs.log" >&2; die "s3s-fs did not start"; }
        sleep 0.1
    done

    # weightgate run N: a data dir of its own, publishing to the prefix wg-N.
    wg_s3() { # wg_s3 N -> the command in WGS3
        WGS3=(env WEIGHTGATE_DATA_DIR="$WORK/pub-data-$1" WEIGHTGATE_LOG=warn
            WEIGHTGATE_STORAGE_URL="s3://bench/wg-$1" WEIGHTGATE_S3_ENDPOINT="$S3URL" WEIGHTGATE_S3_PATH_STYLE=true
            WEIGHTGATE_S3_ACCESS_KEY_ID="$S3KEY" WEIGHTGATE_S3_SECRET_ACCESS_KEY="$S3SECRET" "$WG")
    }
    # rclone: a remote named bench defined by the environment alone (and an
    # empty config file in the scratch dir); its defaults otherwise. rclone
    # 1.60 will not start with AWS_CA_BUNDLE set (it cannot hand the bundle
    # to its own HTTP transport); the server is plain HTTP, so it is unset.
    : >"$WORK/rclone.conf"
    RCLONE=(env -u AWS_CA_BUNDLE RCLONE_CONFIG="$WORK/rclone.conf"
        RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other RCLONE_CONFIG_BENCH_ENDPOINT="$S3URL"
        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="$S3KEY" RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="$S3SECRET"
        RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true RCLONE_CONFIG_BENCH_REGION=us-east-1 rclone)

    TICKS=$(getconf CLK_TCK)
    server_ticks() { awk '{ print $14 + $15 }' "/proc/$S3PID/stat"; }
    # measured NAME CMD...: runs CMD under GNU time, its output in
    # $WORK/NAME.out and .err, and sets SECS, RSS_KIB (peak), CPU_SECS
    # (user + system) and READ_BYTES: the bytes CMD read (rchar: read(2) and
    # its kin, the few socket reads included), taken from the shell that
    # waited for it. SERVER_CPU: the CPU seconds s3s-fs used meanwhile.
    measured() {
        local name=$1
        shift
        local cpu0
        cpu0=$(server_ticks)
        /usr/bin/time -f '%e %M %U %S' -o "$WORK/$name.time" \
            bash -c '"$@" >"$0.out" 2>"$0.err" || exit; awk "\$1 == \"rchar:\" { print \$2 }" /proc/$$/io >"$0.io"' \
            "$WORK/$name" "$@" || { tail -5 "$WORK/$name.err" >&2; die "$name failed"; }
        SERVER_CPU=$(calc "($(server_ticks) - $cpu0) / $TICKS")
        local user sys
        read -r SECS RSS_KIB user sys <<<"$(tail -1 "$WORK/$name.time")"
        CPU_SECS=$(calc "$user + $sys")
        READ_BYTES=$(cat "$WORK/$name.io")
    }
    # check_stored TOOL PREFIX RUN: the server holds every file of the tree
    # under PREFIX (under its content key for weightgate, which prints the
    # SHA-256 of each file it stores; under its path for rclone) at its
    # size, and in the first run byte for byte.
    check_stored() {
        local f got sha
        for f in "${PUB_FILES[@]}"; do
            if [ "$1" = weightgate ]; then
                sha=$(awk -v name="$f" '$1 == "stored" && $3 == name { print $2 }' "$WORK/publish-$1-$3.out")
                [ -n "$sha" ] || die "weightgate run $3 did not say it stored $f"
                got=$S3ROOT/bench/$2/sha256/${sha:0:2}/$sha
            else
                got=$S3ROOT/bench/$2/$f
            fi
            [ "$(stat -c %s "$got" 2>/dev/null)" = "$(stat -c %s "$TREE/$f")" ] ||
                die "$1 run $3: $got is missing or not the size of $f"
            if [ "$3" = 1 ]; then cmp -s "$TREE/$f" "$got" || die "$1 run 1: $got is not $f"; fi
        done
    }
    # Before each timed run the tree is in the page cache and the disk has
    # nothing left to write; after it what the run stored is removed.
    settle() { find "$TREE" -type f -exec cat {} + >/dev/null; sync; }
    wipe() { rm -rf "${S3ROOT:?}/bench/$1"; find "$S3ROOT" -mindepth 1 -maxdepth 1 ! -name bench -exec rm -rf {} +; sync; }

    T_W=() T_R=() M_W=() M_R=() B_W=() B_R=() C_W=() C_R=() S_W=() S_R=()
    for r in $(seq "$RUNS"); do
        wg_s3 "$r"
        "${WGS3[@]}" migrate >/dev/null
        "${WGS3[@]}" model create bench --title "Bench model" >/dev/null
        settle
        measured "publish-weightgate-$r" "${WGS3[@]}" model publish bench "$TREE" --release "r$r"
        T_W+=("$SECS") M_W+=("$RSS_KIB") B_W+=("$READ_BYTES") C_W+=("$CPU_SECS") S_W+=("$SERVER_CPU")
        check_stored weightgate "wg-$r" "$r"
        wipe "wg-$r"
        rm -rf "$WORK/pub-data-$r"
        settle
        measured "publish-rclone-$r" "${RCLONE[@]}" copy "$TREE" "bench:bench/rclone-$r"
        T_R+=("$SECS") M_R+=("$RSS_KIB") B_R+=("$READ_BYTES") C_R+=("$CPU_SECS") S_R+=("$SERVER_CPU")
        check_stored rclone "rclone-$r" "$r"
        wipe "rclone-$r"
        log "publish run $r: weightgate ${T_W[-1]} s, rclone ${T_R[-1]} s"
    done

    # What each tool's first pass over the files costs alone: weightgate's
    # hashing (SHA-256 of each file and of each 64 MiB chunk, files in
    # parallel, as publish does before it stores anything) and rclone's MD5
    # of the local files (which rclone computes before a multipart upload, to
    # keep it in the object's metadata).
    T_H=() T_M=() C_H=() C_M=()
    for r in $(seq "$RUNS"); do
        settle
        measured "hash-$r" "$WG" hash --chunk-size 64MiB "${PUB_FILES[@]/#/$TREE/}"
        T_H+=("$SECS") C_H+=("$CPU_SECS")
        settle
        measured "md5sum-$r" "${RCLONE[@]}" md5sum "$TREE"
        T_M+=("$SECS") C_M+=("$CPU_SECS")
    done
    kill "$S3PID" 2>/dev/null || true

    t_w=$(median "${T_W[@]}") t_r=$(median "${T_R[@]}") t_h=$(median "${T_H[@]}") t_m=$(median "${T_M[@]}")
    m_w=$(median "${M_W[@]}") m_r=$(median "${M_R[@]}") b_w=$(median "${B_W[@]}") b_r=$(median "${B_R[@]}")
    PUB_BYTES=$(cd "$TREE" && stat -c %s "${PUB_FILES[@]}" | awk '{ s += $1 } END { printf "%.0f", s }')
    log "publish: weightgate $(fmt_runs "${T_W[@]}") s (peak RSS $(fmt_runs "${M_W[@]}") KiB, read $(fmt_runs "${B_W[@]}") bytes); rclone copy $(fmt_runs "${T_R[@]}") s (peak RSS $(fmt_runs "${M_R[@]}") KiB, read $(fmt_runs "${B_R[@]}") bytes)"
    log "CPU (user + system): weightgate $(fmt_runs "${C_W[@]}") s, s3s-fs meanwhile $(fmt_runs "${S_W[@]}") s; rclone $(fmt_runs "${C_R[@]}") s, s3s-fs meanwhile $(fmt_runs "${S_R[@]}") s"
    log "first passes alone: weightgate hash --chunk-size 64MiB $(fmt_runs "${T_H[@]}") s (CPU $(fmt_runs "${C_H[@]}") s); rclone md5sum $(fmt_runs "${T_M[@]}") s (CPU $(fmt_runs "${C_M[@]}") s)"
    r=$(calc "$t_r / $t_w")
    row "6. \`weightgate model publish\` of $PUB_MIB MiB in ${#PUB_FILES[@]} files ($PUB_BIG_MIB MiB the largest) to S3 (s3s-fs, loopback)" "$(calc "$PUB_MIB / $t_w" 0) MiB/s ($t_w s), peak RSS $(calc "$m_w / 1024" 1) MiB" "rclone copy, defaults: $(calc "$PUB_MIB / $t_r" 0) MiB/s ($t_r s), peak RSS $(calc "$m_r / 1024" 1) MiB" "${r}x" "≥ 0.9x rclone" "$(met "$r >= 0.9")"
    row "6'. (context) bytes each read from the files, in tree sizes" "$(calc "$b_w / $PUB_BYTES") x the tree" "rclone copy: $(calc "$b_r / $PUB_BYTES") x the tree" "-" "(info)" "-"
    row "6''. (context) CPU seconds (user + system) of the tool, and of the server during its run" "weightgate $(median "${C_W[@]}") s; s3s-fs $(median "${S_W[@]}") s" "rclone $(median "${C_R[@]}") s; s3s-fs $(median "${S_R[@]}") s" "-" "(info)" "-"
    row "6'''. (context) the first pass alone: \`weightgate hash --chunk-size 64MiB\` of the files; \`rclone md5sum\` of the tree" "hash: $t_h s (CPU $(median "${C_H[@]}") s), so publish spends $(calc "$t_w - $t_h") s after it" "md5sum: $t_m s (CPU $(median "${C_M[@]}") s), so copy spends $(calc "$t_r - $t_m") s after it" "-" "(info)" "-"
    note "publish: each run into an empty prefix of the bucket, a fresh data dir for weightgate; runs (s): weightgate $(fmt_runs "${T_W[@]}"), rclone $(fmt_runs "${T_R[@]}"); server s3s-fs 0.14.1, rclone $(rclone version 2>/dev/null | awk 'NR == 1 { print $2 }') with --transfers 4, --s3-upload-concurrency 4, --s3-chunk-size 5Mi, --s3-upload-cutoff 200Mi (its defaults)"
    rm -rf "$TREE" "$S3ROOT"
fi

# ---------------------------------------------------------------- report
{
    echo "weightgate benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT$( [ "$DIRTY" != 0 ] && echo " (+$DIRTY locally changed source files)")"
    echo "machine: $(nproc) cores, $CPU, $MEM, $(uname -r); load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg); quick=$QUICK"
    echo "sizes: hash ${HASH_FILES}x${HASH_MIB} MiB, download $DL_MIB MiB, $CLIENTS clients at $CLIENT_RATE/s for ${CLIENT_SECONDS}s, wrk -t$WRK_THREADS -c$WRK_CONNS -d${WRK_SECONDS}s, audit $AUDIT_EVENTS events, publish $PUB_BIG_MIB MiB + ${PUB_SHARDS}x$PUB_SHARD_MIB MiB, $RUNS runs each (median)"
    echo
    echo "| measurement | weightgate | baseline (same run) | ratio | target | met |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    if [ "${#NOTES[@]}" -gt 0 ]; then
        echo
        printf -- '- %s\n' "${NOTES[@]}"
    fi
} | tee "$RESULTS"
log "results also written to $RESULTS"
