#!/usr/bin/env bash
# shellcheck disable=SC2015  # every `A && B || C` here means: B may fail, C anyway
# tls-bench.sh — TLS termination and HTTP/2: the example gateway against nginx, on one machine
# (loopback only). See README.md beside this file for what it measures, why, and how to read it.
# Modelled on ../../shared/bench/proxy-bench.sh (same pinning, upstream, checks and reporting).
#
# Rows, measured in ONE run, alternating round by round (nginx-tls gw-tls nginx-tls gw-tls ...):
#   nginx-tls  client -> nginx, 1 worker, TLS + HTTP/2, proxy_pass (upstream keepalive) -> upstream
#   gw-tls     client -> example gateway with [server.tls], one route, no auth/policies  -> upstream
# Both serve the same self-signed EC P-256 certificate (made here with openssl), TLS 1.2/1.3,
# ALPN h2 + http/1.1. Proxied requests go to /api/a/ping and must reach the upstream as /ping.
#
# Measurements (each: a discarded warm-up per row, then ROUNDS rounds, rows alternating):
#   ka    keep-alive HTTPS:   wrk -c$CONNS --latency                    -> requests/s, p50, p99
#   hs    new connections:    wrk -c$HS_CONNS -H 'Connection: close'    -> handshakes/s (one TLS
#                             connection per request; wrk offers the previous session, so these
#                             are RESUMED handshakes: counted in every run, see README)
#   full  full handshakes:    the same, with the counter library told to drop the session wrk
#                             would offer: every connection makes a FULL handshake
#   h2    HTTP/2 over TLS:    h2load -c$H2_CONNS -m$H2_STREAMS -D DURATION -> requests/s
#                             (skipped with a message when h2load is missing: bench/tls-setup.sh)
#
# CPU layout (PIN=1, default): both proxies on CPU 0 alone (only the one under load is busy);
# the load generators and the upstream nginx share CPU 1.
#
# Env knobs (defaults in brackets); README.md explains each one:
#   GATEWAY_BIN          prebuilt example gateway (default: build it in the project root with
#                        `cargo build --release --example gateway`)
#   GW_WAIT [30]         seconds to wait for the gateway to listen
#   ROUNDS [5]  DURATION [8] (s per measured run)  WARMUP [2] (s, discarded, per row and kind)
#   CONNS [64]           wrk -c, keep-alive HTTPS
#   HS_CONNS [$CONNS]    wrk -c, one connection per request
#   FULL [auto]          the full-handshake measurement: auto: when the counter library builds
#                        (needs cc); 1: require it; 0: skip
#   H2 [auto]  H2_CONNS [16]  H2_STREAMS [10]   auto: run when h2load exists; 1: require; 0: skip
#   WRK_THREADS [1]  PIN [1]  PROXY_CPUS [0]  LOAD_CPUS [1]  NGINX_WORKERS [1]
#   BASE_PORT [18280]    upstream=+1 nginx-tls=+2 gw-tls=+3
#   OUT_DIR              if set: results.txt (RESULT lines), raw TSV, tool outputs, configs, logs
#   KEEP_TMP [0]         keep the temp dir (it is always kept when the run fails)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
START_DIR="$PWD"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
HS_CONNS=${HS_CONNS:-$CONNS}
FULL=${FULL:-auto}
H2=${H2:-auto}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-10}
WRK_THREADS=${WRK_THREADS:-1}
PIN=${PIN:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
NGINX_WORKERS=${NGINX_WORKERS:-1}
BASE_PORT=${BASE_PORT:-18280}
UP_PORT=$((BASE_PORT + 1))
NGX_PORT=$((BASE_PORT + 2))
GW_PORT=$((BASE_PORT + 3))
GATEWAY_BIN=${GATEWAY_BIN:-}
GW_WAIT=${GW_WAIT:-30}
KEEP_TMP=${KEEP_TMP:-0}
OUT_DIR=${OUT_DIR:-}
ROWS=(nginx-tls gw-tls)
# The issue's targets for gw-tls/nginx-tls.
TARGET_KA=0.90
GOAL_KA=1.00
TARGET_HS=0.70

die() { echo "tls-bench: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }

for tool in nginx wrk curl openssl taskset ss setsid timeout awk ps nproc; do
  command -v "$tool" >/dev/null || die "missing '$tool' (run $HERE/tls-setup.sh)"
done
for v in ROUNDS DURATION WARMUP CONNS HS_CONNS H2_CONNS H2_STREAMS WRK_THREADS NGINX_WORKERS; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -ge 1 ]] || die "$v must be a number >= 1 (got '${!v}')"
done
[[ $H2 =~ ^(auto|0|1)$ ]] || die "H2 must be auto, 0 or 1"
[[ $FULL =~ ^(auto|0|1)$ ]] || die "FULL must be auto, 0 or 1"
[[ $HS_CONNS -ge 2 ]] || die "HS_CONNS must be >= 2"

HAVE_H2=0
if [[ $H2 != 0 ]]; then
  if command -v h2load >/dev/null; then
    HAVE_H2=1
  elif [[ $H2 == 1 ]]; then
    die "H2=1 but h2load is not installed (apt package nghttp2-client; run $HERE/tls-setup.sh)"
  else
    log "h2load not found: the HTTP/2 measurement is SKIPPED (install nghttp2-client: bash $HERE/tls-setup.sh)"
  fi
fi

if [[ -n $GATEWAY_BIN ]]; then
  [[ $GATEWAY_BIN == /* ]] || GATEWAY_BIN="$START_DIR/$GATEWAY_BIN"
  [[ -x $GATEWAY_BIN && -f $GATEWAY_BIN ]] || die "GATEWAY_BIN=$GATEWAY_BIN is not an executable file"
else
  command -v cargo >/dev/null || die "cargo not found (needed to build the example gateway; or set GATEWAY_BIN)"
  [[ -f $ROOT/Cargo.toml ]] && awk '
    /^[[:space:]]*\[/ { inpkg = ($0 ~ /^[[:space:]]*\[package\][[:space:]]*(#.*)?$/); next }
    inpkg && /^[[:space:]]*name[[:space:]]*=[[:space:]]*"tower-gateway"/ { found = 1 }
    END { exit !found }' "$ROOT/Cargo.toml" \
    || die "$ROOT is not the tower-gateway project root (set GATEWAY_BIN)"
fi

TMP="$(mktemp -d /tmp/tls-bench.XXXXXX)"
chmod 755 "$TMP"
RESULTS="$TMP/results.tsv"
RESULT_LINES="$TMP/results.txt"
: >"$RESULTS"
: >"$RESULT_LINES"

# ---------------------------------------------------------------- process bookkeeping
# KILL_LIST entries: "pid:PID" (one process) or "grp:PGID" (a whole process group).
KILL_LIST=()
CUR_PIDS=()    # the load-generator processes running now, if any
EXTRA_PIDS=()  # nginx workers: SIGKILLed at the end only if still alive

alive() {  # alive PID -> 0 when the process exists and is not a zombie
  local st
  [[ -r /proc/$1/stat ]] || return 1
  st=$(awk '{sub(/^.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

group_alive() { kill -0 -- "-$1" 2>/dev/null; }

stop_entry() {  # stop_entry ENTRY: TERM, bounded wait (5 s), then KILL
  local kind=${1%%:*} id=${1#*:} i
  if [[ $kind == grp ]]; then
    kill -TERM -- "-$id" 2>/dev/null || true
    for i in $(seq 50); do group_alive "$id" || break; sleep 0.1; done
    group_alive "$id" && kill -KILL -- "-$id" 2>/dev/null || true
  else
    kill -TERM "$id" 2>/dev/null || true
    for i in $(seq 50); do alive "$id" || break; sleep 0.1; done
    alive "$id" && kill -KILL "$id" 2>/dev/null || true
  fi
  wait "$id" 2>/dev/null || true
}

cleanup() {
  local rc=$? i p
  trap - EXIT INT TERM
  for p in "${CUR_PIDS[@]}"; do stop_entry "pid:$p"; done
  for ((i = ${#KILL_LIST[@]} - 1; i >= 0; i--)); do stop_entry "${KILL_LIST[$i]}"; done
  for p in "${EXTRA_PIDS[@]}"; do alive "$p" && kill -KILL "$p" 2>/dev/null || true; done
  if [[ -n $OUT_DIR ]]; then
    mkdir -p "$OUT_DIR" && cp -r "$RESULTS" "$TMP"/*.log "$TMP"/out "$TMP"/*.conf "$TMP"/*.toml \
      "$TMP/server.crt" "$OUT_DIR"/ 2>/dev/null || true
    [[ -s $RESULT_LINES ]] && cp "$RESULT_LINES" "$OUT_DIR/results.txt"
  fi
  if [[ $rc -eq 0 && $KEEP_TMP != 1 ]]; then
    rm -rf "$TMP"
  else
    echo "tls-bench: temp dir kept: $TMP (exit $rc)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Command prefixes (arrays, not functions: a function run with `&` would leave $! pointing at a
# subshell instead of the process we need to watch and kill).
PROXY_PIN=()
LOAD_PIN=()
if [[ $PIN == 1 ]]; then
  PROXY_PIN=(taskset -c "$PROXY_CPUS")
  LOAD_PIN=(taskset -c "$LOAD_CPUS")
fi

port_free() { [[ -z $(ss -ltnH "sport = :$1" 2>/dev/null) ]]; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # wait_port PORT SECONDS WATCHED_PID NAME [LOG_LINE]
  local port=$1 secs=$2 pid=$3 name=$4 line=${5:-} deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    if [[ -z $line ]] || grep -q -- "$line" "$TMP/$name.log" 2>/dev/null; then
      port_open "$port" && return 0
    fi
    alive "$pid" || die "$name (pid $pid) exited before listening on :$port; see $TMP/$name.log: $(tail -3 "$TMP/$name.log" 2>/dev/null)"
    sleep 0.1
  done
  die "$name did not listen on :$port within ${secs}s; see $TMP/$name.log"
}

children() { ps -o pid= --ppid "$1" 2>/dev/null | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'; }

for p in "$UP_PORT" "$NGX_PORT" "$GW_PORT"; do port_free "$p" || die "port $p busy (set BASE_PORT)"; done

# ---------------------------------------------------------------- build
if [[ -z $GATEWAY_BIN ]]; then
  log "building the example gateway: cargo build --release --example gateway (in $ROOT)"
  (cd "$ROOT" && cargo build --release --example gateway) >"$TMP/gateway-build.log" 2>&1 \
    || { tail -40 "$TMP/gateway-build.log" >&2; die "gateway build failed"; }
  tdir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | grep -o '"target_directory":"[^"]*"' | head -1 | cut -d'"' -f4 || true)
  GATEWAY_BIN="${tdir:-$ROOT/target}/release/examples/gateway"
  [[ -x $GATEWAY_BIN ]] || die "built the example gateway but found no binary at $GATEWAY_BIN"
  ver=$(awk -F'"' '/^[[:space:]]*\[/ {p = ($0 ~ /\[package\]/)} p && /^[[:space:]]*version[[:space:]]*=/ {print $2; exit}' "$ROOT/Cargo.toml")
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no-git")
  [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && rev="$rev+dirty"
  GW_DESC="tower-gateway ${ver:-?} @ $rev, example gateway built with --release"
else
  GW_DESC="GATEWAY_BIN=$GATEWAY_BIN"
fi
cd "$ROOT"  # the gateway runs from the project root (its config paths are absolute anyway)

# The handshake counter: a tiny LD_PRELOAD library that wraps OpenSSL's SSL_connect in wrk and,
# when wrk exits, appends "FULL RESUMED VERSION" to $HS_COUNT_FILE (SSL_session_reused() of
# every completed handshake). With HS_NO_RESUME=1 it also drops the session wrk would offer
# (wrk keeps it across reconnects with SSL_clear) before each new handshake starts, so every
# connection makes a full handshake. Without a C compiler the counts are n/a and the
# full-handshake measurement is skipped; the rest of the run is unchanged.
HS_SO=""
if command -v cc >/dev/null; then
  cat >"$TMP/hs-count.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
typedef struct ssl_st SSL;
static unsigned long n_full, n_resumed;
static int (*real_connect)(SSL *);
static int (*reused)(const SSL *);
static int (*in_before)(const SSL *);
static int (*set_session)(SSL *, void *);
static const char *(*version)(const SSL *);
static char first_version[32];
static int no_resume = -1;
int SSL_connect(SSL *s) {
  if (!real_connect) {
    reused = (int (*)(const SSL *))dlsym(RTLD_NEXT, "SSL_session_reused");
    in_before = (int (*)(const SSL *))dlsym(RTLD_NEXT, "SSL_in_before");
    set_session = (int (*)(SSL *, void *))dlsym(RTLD_NEXT, "SSL_set_session");
    version = (const char *(*)(const SSL *))dlsym(RTLD_NEXT, "SSL_get_version");
    const char *e = getenv("HS_NO_RESUME");
    no_resume = e && e[0] == '1';
    real_connect = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
  }
  /* a new connection (the handshake has not started): forget the previous session */
  if (no_resume && in_before(s)) set_session(s, NULL);
  int r = real_connect(s);
  if (r == 1) {
    if (reused(s)) __atomic_add_fetch(&n_resumed, 1, __ATOMIC_RELAXED);
    else __atomic_add_fetch(&n_full, 1, __ATOMIC_RELAXED);
    if (!first_version[0]) snprintf(first_version, sizeof first_version, "%s", version(s));
  }
  return r;
}
__attribute__((destructor)) static void report(void) {
  const char *path = getenv("HS_COUNT_FILE");
  FILE *f = path ? fopen(path, "a") : NULL;
  if (!f) return;
  fprintf(f, "%lu %lu %s\n", n_full, n_resumed, first_version[0] ? first_version : "-");
  fclose(f);
}
EOF
  if cc -shared -fPIC -O2 -o "$TMP/hs-count.so" "$TMP/hs-count.c" -ldl >"$TMP/hs-count-build.log" 2>&1; then
    HS_SO="$TMP/hs-count.so"
  else
    log "could not build the handshake counter (see $TMP/hs-count-build.log): full/resumed counts will be n/a"
  fi
else
  log "no C compiler (cc): the handshake counter is left out, full/resumed counts will be n/a"
fi
if [[ $FULL != 0 && -z $HS_SO ]]; then
  [[ $FULL == 1 ]] && die "FULL=1 but the handshake counter library could not be built (needs cc)"
  log "the full-handshake measurement is SKIPPED (it needs the handshake counter library, built with cc)"
  FULL=0
fi
[[ $FULL == auto ]] && FULL=1

# ---------------------------------------------------------------- certificate and configs
mkdir -p "$TMP/up-tmp" "$TMP/ngx-tmp" "$TMP/out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
  -keyout "$TMP/server.key" -out "$TMP/server.crt" -subj "/CN=127.0.0.1" \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$TMP/openssl-req.log" 2>&1 \
  || { cat "$TMP/openssl-req.log" >&2; die "could not make the certificate"; }
CERT_FP=$(openssl x509 -in "$TMP/server.crt" -noout -fingerprint -sha256 | cut -d= -f2)
CERT_DER_BYTES=$(openssl x509 -in "$TMP/server.crt" -outform DER | wc -c)

USER_LINE=""
[[ $EUID -eq 0 ]] && USER_LINE="user root root;"

temp_paths() {
  local d=$1
  cat <<EOF
  client_body_temp_path $d/client_body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
EOF
}

cat >"$TMP/upstream.conf" <<EOF
# upstream: the origin every row ends at (plain HTTP). One worker (it shares CPU $LOAD_CPUS with the load).
$USER_LINE
worker_processes 1;
worker_rlimit_nofile 65535;
daemon off;
pid $TMP/upstream.pid;
error_log $TMP/upstream-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type text/plain;
  tcp_nodelay on;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
$(temp_paths "$TMP/up-tmp")
  server {
    listen 127.0.0.1:$UP_PORT backlog=4096;
    location /ping { return 200 "pong\n"; }
  }
}
EOF

# nginx >= 1.25.1 switches HTTP/2 on with `http2 on;`, older ones with `listen ... http2`.
NGX_VER=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
ver_ge() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1) == "$2" ]]; }
if ver_ge "${NGX_VER:-0}" 1.25.1; then
  NGX_LISTEN_H2=""
  NGX_H2_ON="http2 on;"
else
  NGX_LISTEN_H2=" http2"
  NGX_H2_ON=""
fi

cat >"$TMP/nginx-tls.conf" <<EOF
# nginx-tls: nginx terminating TLS (HTTP/1.1 and HTTP/2 by ALPN) in front of the upstream.
$USER_LINE
worker_processes $NGINX_WORKERS;
worker_rlimit_nofile 65535;
daemon off;
pid $TMP/nginx-tls.pid;
error_log $TMP/nginx-tls-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
$(temp_paths "$TMP/ngx-tmp")
  ssl_certificate $TMP/server.crt;
  ssl_certificate_key $TMP/server.key;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  upstream up {
    server 127.0.0.1:$UP_PORT;
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGX_PORT ssl$NGX_LISTEN_H2 backlog=4096;
    $NGX_H2_ON
    location /api/a/ {
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF

# The gateway config follows the example gateway's TOML format; [server.tls] turns on TLS.
cat >"$TMP/gw-tls.toml" <<EOF
# gw-tls: one route, no auth, no policies; TLS with the same certificate as nginx-tls
[server]
listen = "127.0.0.1:$GW_PORT"
shutdown_grace = "5s"

[server.tls]
cert = "$TMP/server.crt"
key = "$TMP/server.key"

[[routes]]
prefix = "/api/a"
upstreams = ["http://127.0.0.1:$UP_PORT"]
strip_prefix = true
EOF

ulimit -n 65535 2>/dev/null || true

# ---------------------------------------------------------------- start processes
start_nginx() {  # start_nginx NAME CONF proxy|load -> sets STARTED_PID
  local name=$1 conf=$2 pin=()
  if [[ $3 == proxy ]]; then pin=("${PROXY_PIN[@]}"); else pin=("${LOAD_PIN[@]}"); fi
  nginx -t -p "$TMP" -c "$conf" -e "$TMP/$name-error.log" >"$TMP/$name-t.log" 2>&1 \
    || { cat "$TMP/$name-t.log" >&2; die "nginx config $conf invalid"; }
  "${pin[@]}" nginx -p "$TMP" -c "$conf" -e "$TMP/$name-error.log" >"$TMP/$name.log" 2>&1 &
  STARTED_PID=$!
  KILL_LIST+=("pid:$STARTED_PID")
}

start_nginx upstream "$TMP/upstream.conf" load
UP_PID=$STARTED_PID
wait_port "$UP_PORT" 10 "$UP_PID" upstream
start_nginx nginx-tls "$TMP/nginx-tls.conf" proxy
NGX_PID=$STARTED_PID
wait_port "$NGX_PORT" 10 "$NGX_PID" nginx-tls
sleep 0.3
UP_WORKERS=$(children "$UP_PID")
NGX_WORKER_PIDS=$(children "$NGX_PID")
# shellcheck disable=SC2206
EXTRA_PIDS+=($UP_WORKERS $NGX_WORKER_PIDS)

# The example gateway in its own session, pinned; quiet logging unless RUST_LOG is set.
RUST_LOG=${RUST_LOG:-warn} "${PROXY_PIN[@]}" setsid "$GATEWAY_BIN" --config "$TMP/gw-tls.toml" \
  --listen "127.0.0.1:$GW_PORT" >"$TMP/gw-tls.log" 2>&1 </dev/null &
GW_LEADER=$!
pgid=""
for _ in $(seq 20); do  # setsid execs right after the fork; give it a moment
  pgid=$(awk '{sub(/^.*\) /, ""); print $3}' "/proc/$GW_LEADER/stat" 2>/dev/null || echo "")
  [[ $pgid == "$GW_LEADER" ]] && break
  sleep 0.05
done
if [[ $pgid == "$GW_LEADER" ]]; then KILL_LIST+=("grp:$GW_LEADER"); else KILL_LIST+=("pid:$GW_LEADER"); fi
wait_port "$GW_PORT" "$GW_WAIT" "$GW_LEADER" gw-tls "listening on"
sleep 0.2
GW_PIDS=$(ps -o pid= -s "$GW_LEADER" 2>/dev/null | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')
[[ -n $GW_PIDS ]] || GW_PIDS=$GW_LEADER
log "gw-tls listening on :$GW_PORT (pids $GW_PIDS)"

row_port() {
  case $1 in
    nginx-tls) echo "$NGX_PORT" ;;
    gw-tls) echo "$GW_PORT" ;;
    *) die "unknown row $1" ;;
  esac
}
row_url() { echo "https://127.0.0.1:$(row_port "$1")/api/a/$2"; }
row_pids() {  # processes whose CPU is charged to the row
  case $1 in
    nginx-tls) echo "$NGX_WORKER_PIDS" ;;
    gw-tls) echo "$GW_PIDS" ;;
  esac
}

# ---------------------------------------------------------------- setup checks (fail loudly)
# openssl s_client: the certificate served, the protocol, cipher and key exchange, and whether
# the server resumes a session (the second connection offers the first one's session; a request
# is sent so that the TLS 1.3 tickets, which come after the handshake, are read).
S_REQ=$'GET /api/a/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'
declare -A TLS_DESC RESUMES
CURL_VERSIONS=(1.1)
if curl -V | grep -qw HTTP2; then CURL_VERSIONS+=(2); else log "curl has no HTTP/2: the h2 check is left to h2load"; fi
for t in "${ROWS[@]}"; do
  port=$(row_port "$t")
  for v in "${CURL_VERSIONS[@]}"; do
    out=$(curl -sSk --max-time 5 "--http$v" -o "$TMP/probe.body" -w '%{http_code} %{http_version}' \
      "$(row_url "$t" ping)" 2>&1) || die "$t: HTTPS request to $(row_url "$t" ping) failed: $out"
    got="$out $(head -c 200 "$TMP/probe.body" | tr -d '\r\n')"
    [[ $got == "200 $v pong" ]] \
      || die "$t: GET /api/a/ping over HTTP/$v (ALPN) should answer 200 'pong' from the upstream /ping; got (status version body): $got"
  done
  printf '%s' "$S_REQ" | timeout 10 openssl s_client -connect "127.0.0.1:$port" -ign_eof \
    -sess_out "$TMP/$t.sess" >"$TMP/$t-sclient1.out" 2>&1 || true
  printf '%s' "$S_REQ" | timeout 10 openssl s_client -connect "127.0.0.1:$port" -ign_eof \
    -sess_in "$TMP/$t.sess" >"$TMP/$t-sclient2.out" 2>&1 || true
  grep -q '^pong' "$TMP/$t-sclient1.out" || die "$t: openssl s_client got no 'pong'; see $TMP/$t-sclient1.out"
  fp=$(openssl x509 -in "$TMP/$t-sclient1.out" -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2)
  [[ $fp == "$CERT_FP" ]] || die "$t: serves certificate '$fp', not the one this run made ($CERT_FP)"
  proto=$(awk '/^New, |^Reused, / {print $2; exit}' "$TMP/$t-sclient1.out" | tr -d ,)
  cipher=$(awk '/Cipher is/ {print $NF; exit}' "$TMP/$t-sclient1.out")
  kx=$(awk -F': ' '/Server Temp Key/ {print $2; exit}' "$TMP/$t-sclient1.out")
  if grep -q '^Reused, ' "$TMP/$t-sclient2.out"; then RESUMES[$t]=yes; else RESUMES[$t]=no; fi
  TLS_DESC[$t]="${proto:-?} ${cipher:-?} kx=${kx:-?} resumes_sessions=${RESUMES[$t]}"
  log "$t: 200 pong over HTTP/1.1 and h2 (ALPN), our certificate; openssl s_client: ${TLS_DESC[$t]}"
done
log "all rows answer 200 pong: ${ROWS[*]}"

# ---------------------------------------------------------------- measurement helpers
cpu_ticks() {  # sum utime+stime (clock ticks) over the given PIDs
  local total=0 p v
  for p in "$@"; do
    v=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + v))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

expand_cpus() {  # taskset CPU list ("1", "1,3", "2-3") -> "1 3 ..."
  local part i out=() parts=()
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then
      for ((i = ${part%-*}; i <= ${part#*-}; i++)); do out+=("$i"); done
    else
      out+=("$part")
    fi
  done
  echo "${out[*]}"
}
if [[ $PIN == 1 ]]; then LOAD_CPU_LIST=$(expand_cpus "$LOAD_CPUS"); else LOAD_CPU_LIST=$(seq -s ' ' 0 $(($(nproc) - 1))); fi

load_stat() {  # "busy total" jiffies of the load side's CPUs (user..steal of /proc/stat)
  awk -v list=" $LOAD_CPU_LIST " '$1 ~ /^cpu[0-9]+$/ && index(list, " " substr($1, 4) " ") {
      t = 0; for (i = 2; i <= 9; i++) t += $i; b += t - $5 - $6; tot += t }
    END {print b + 0, tot + 0}' /proc/stat
}

load_pct() {  # load_pct "BUSY0 TOTAL0" "BUSY1 TOTAL1" -> busy % of the load CPUs
  awk -v a="$1" -v b="$2" 'BEGIN {split(a, x); split(b, y); t = y[2] - x[2]
    printf "%.0f", (t > 0 ? (y[1] - x[1]) / t * 100 : 0)}'
}

passive_opens() {  # TCP connections accepted so far in this network namespace (kernel counter)
  awk '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "PassiveOpens") c = i; h = 1 } else print $c }' /proc/net/snmp
}

to_ms() {  # wrk/h2load time with unit -> milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

hs_counts() {  # hs_counts FILE -> "FULL RESUMED VERSION" summed over the lines, or "n/a n/a -"
  if [[ -z $HS_SO || ! -s $1 ]]; then echo "n/a n/a -"; return; fi
  awk '{f += $1; r += $2; if ($3 != "-") v = $3} END {print f + 0, r + 0, (v == "" ? "-" : v)}' "$1"
}

# results.tsv columns: 1 kind, 2 row, 3 round, 4 rate (rps or hs/s), 5 p50 ms (h2: mean ms),
# 6 p99 ms, 7 socket errors, 8 proxy cpu us per request, 9 proxy cpu %, 10 load-side cpu %,
# 11 accepted connections per request, 12 full handshakes, 13 resumed handshakes
record() { local IFS=$'\t'; echo "$*" >>"$RESULTS"; }

cpu_of() {  # cpu_of TICKS SECONDS UNITS -> "cpu_us_per_unit pct"
  awk -v t="$1" -v hz="$CLK_TCK" -v d="$2" -v n="$3" 'BEGIN {
    printf "%.2f %.0f", (n > 0 ? t / hz * 1e6 / n : 0), t / hz / d * 100 }'
}

run_wrk() {  # run_wrk ka|hs|full ROW SECONDS ROUND(0 = warm-up, not recorded)
  local kind=$1 t=$2 d=$3 r=$4 out cnt pids c0 c1 o0 o1 l0 l1 rps p50 p99 reqs non2xx sock
  local opens cpr full resumed hver c cpu_us pct lpct what=rps env=() hdr=()
  out="$TMP/out/$kind-$t-r$r.txt"
  cnt="$TMP/out/$kind-$t-r$r.hs"
  c=$CONNS
  if [[ $kind != ka ]]; then
    c=$HS_CONNS
    what="hs/s"
    hdr=(-H "Connection: close")
    [[ -n $HS_SO ]] && env=(env "LD_PRELOAD=$HS_SO" "HS_COUNT_FILE=$cnt")
    [[ $kind == full ]] && env+=("HS_NO_RESUME=1")
  fi
  pids=$(row_pids "$t")
  # shellcheck disable=SC2086
  c0=$(cpu_ticks $pids)
  o0=$(passive_opens)
  l0=$(load_stat)
  # in the background + wait, so that a signal reaches the trap at once and cleanup can stop wrk
  "${LOAD_PIN[@]}" timeout --kill-after=5 $((d + 30)) "${env[@]}" \
    wrk -t"$WRK_THREADS" -c"$c" -d"${d}s" --timeout 5s --latency "${hdr[@]}" "$(row_url "$t" ping)" \
    >"$out" 2>&1 &
  CUR_PIDS=($!)
  wait "${CUR_PIDS[0]}" || die "wrk failed for $t ($kind): $(tail -3 "$out")"
  CUR_PIDS=()
  l1=$(load_stat)
  o1=$(passive_opens)
  # shellcheck disable=SC2086
  c1=$(cpu_ticks $pids)
  # A non-2xx answer means a wrong setup or a misbehaving proxy: stop rather than report it.
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
  [[ ${non2xx:-0} -eq 0 ]] || die "$t ($kind): $non2xx non-2xx responses under load; see $out and $TMP/$t.log"
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  reqs=$(awk '/requests in/ {print $1}' "$out")
  [[ -n $rps && -n $reqs && $reqs -gt 0 ]] || die "could not parse wrk output $out"
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
  sock=$(awk -F'[ ,]+' '/Socket errors:/ {print $4 + $6 + $8 + $10}' "$out")
  opens=$((o1 - o0))
  cpr=$(awk -v o="$opens" -v n="$reqs" 'BEGIN {printf "%.3f", o / n}')
  read -r full resumed hver <<<"$(hs_counts "$cnt")"
  if [[ $kind != ka ]]; then
    # Every request must have come on a connection of its own: the kernel counted at least
    # (about) one accepted connection per request, and wrk as many TLS handshakes.
    awk -v x="$cpr" 'BEGIN {exit !(x >= 0.95)}' \
      || die "$t ($kind): only $opens TCP connections accepted for $reqs requests ($cpr per request): not one connection per request; see $out"
    if [[ $full != n/a ]] && ((full + resumed < reqs)); then
      die "$t ($kind): wrk made $((full + resumed)) TLS handshakes for $reqs requests; see $out"
    fi
    if [[ $kind == full && $resumed != 0 ]]; then
      die "$t (full): $resumed handshakes were resumed although the session was dropped; see $out"
    fi
  fi
  read -r cpu_us pct <<<"$(cpu_of $((c1 - c0)) "$d" "$reqs")"
  lpct=$(load_pct "$l0" "$l1")
  log "$kind round $r $t: $what=$rps p50=${p50}ms p99=${p99}ms socket_errors=${sock:-0} proxy_cpu=${cpu_us}us/req (${pct}%) load_cpu=${lpct}% conns/req=$cpr tls_full=$full tls_resumed=$resumed ($hver)"
  ((r == 0)) && return 0
  record "$kind" "$t" "$r" "$rps" "$p50" "$p99" "${sock:-0}" "$cpu_us" "$pct" "$lpct" "$cpr" "$full" "$resumed"
}

run_h2() {  # run_h2 ROW SECONDS ROUND: h2load over TLS with ALPN h2
  local t=$1 d=$2 r=$3 out pids c0 c1 l0 l1 rps ok failed errored tmo non2xx mean cpu_us pct lpct proto
  out="$TMP/out/h2-$t-r$r.txt"
  pids=$(row_pids "$t")
  # shellcheck disable=SC2086
  c0=$(cpu_ticks $pids)
  l0=$(load_stat)
  "${LOAD_PIN[@]}" timeout --kill-after=5 $((d + 30)) \
    h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$d" "$(row_url "$t" ping)" >"$out" 2>&1 &
  CUR_PIDS=($!)
  wait "${CUR_PIDS[0]}" || die "h2load failed for $t: $(tail -3 "$out")"
  CUR_PIDS=()
  l1=$(load_stat)
  # shellcheck disable=SC2086
  c1=$(cpu_ticks $pids)
  proto=$(awk -F': ' '/^Application protocol:/ {print $2; exit}' "$out")
  [[ $proto == h2 ]] || die "$t (h2): h2load negotiated '${proto:-nothing}', not h2; see $out"
  rps=$(awk '/^finished in/ {for (i = 1; i <= NF; i++) if ($(i + 1) == "req/s,") print $i}' "$out")
  # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
  read -r ok failed errored tmo <<<"$(awk '/^requests:/ {print $8, $10, $12, $14}' "$out")"
  # "status codes: N 2xx, N 3xx, N 4xx, N 5xx"
  non2xx=$(awk '/^status codes:/ {print $5 + $7 + $9}' "$out")
  [[ -n $rps && -n $ok && $ok -gt 0 ]] || die "could not parse h2load output $out"
  ((failed + errored + tmo == 0 && non2xx == 0)) \
    || die "$t (h2): $failed failed, $errored errored, $tmo timed out, $non2xx non-2xx under load; see $out and $TMP/$t.log"
  mean=$(to_ms "$(awk '/^time for request:/ {print $6}' "$out")")
  read -r cpu_us pct <<<"$(cpu_of $((c1 - c0)) "$d" "$ok")"
  lpct=$(load_pct "$l0" "$l1")
  log "h2 round $r $t: rps=$rps mean=${mean}ms proxy_cpu=${cpu_us}us/req (${pct}%) load_cpu=${lpct}%"
  ((r == 0)) && return 0
  record h2 "$t" "$r" "$rps" "$mean" "" 0 "$cpu_us" "$pct" "$lpct" "" "" ""
}

median() {  # median of the numbers on stdin
  sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

col() {  # col KIND ROW FIELD -> values of FIELD (1-based TSV column) for that cell
  awk -F'\t' -v k="$1" -v t="$2" -v f="$3" '$1 == k && $2 == t && $f != "" {print $f}' "$RESULTS"
}

ratio() {  # ratio A B [DECIMALS]
  awk -v a="$1" -v b="$2" -v d="${3:-3}" 'BEGIN {
    if (a == "" || b == "" || a == "nan" || b == "nan" || b + 0 == 0) print "n/a"; else printf "%.*f", d, a / b }'
}

KINDS=(ka hs)
[[ $FULL == 1 ]] && KINDS+=(full)
[[ $HAVE_H2 == 1 ]] && KINDS+=(h2)

measure() {  # measure KIND ROW SECONDS ROUND
  case $1 in
    ka | hs | full) run_wrk "$1" "$2" "$3" "$4" ;;
    h2) run_h2 "$2" "$3" "$4" ;;
  esac
}

# ---------------------------------------------------------------- info header
echo "tls-bench $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: nproc=$(nproc) cpu='$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)' kernel=$(uname -r)"
h2v="h2load=none"
[[ $HAVE_H2 == 1 ]] && h2v="h2load=$(h2load --version 2>&1 | awk '{print $2; exit}')"
echo "tools: nginx=$NGX_VER wrk=$(wrk -v 2>&1 | awk 'NR==1 {print $2}') $h2v openssl=$(openssl version | awk '{print $2}') $(curl -V | awk 'NR==1 {print $1 "=" $2}')"
if [[ $PIN == 1 ]]; then
  echo "cpu pinning: proxies on CPU $PROXY_CPUS (one under load at a time); load generators + upstream on CPU $LOAD_CPUS"
else
  echo "cpu pinning: none (all processes float on $(nproc) CPUs)"
fi
echo "certificate: self-signed EC P-256 (prime256v1), CN/SAN 127.0.0.1 + localhost, $CERT_DER_BYTES bytes DER, same files for both rows"
echo "nginx-tls: nginx $NGX_VER, $NGINX_WORKERS worker(s), TLSv1.2+1.3, http2, ssl_session_cache shared + tickets, access_log off"
echo "gw-tls: $GW_DESC; [server.tls], one route, no auth/policies, RUST_LOG=${RUST_LOG:-warn}"
for t in "${ROWS[@]}"; do echo "tls ($t, openssl s_client): ${TLS_DESC[$t]}"; done
echo "load: ka: wrk -t$WRK_THREADS -c$CONNS --latency (keep-alive, HTTP/1.1, no ALPN)"
echo "      hs: wrk -t$WRK_THREADS -c$HS_CONNS -H 'Connection: close' (a new TLS connection per request; wrk resumes)"
if [[ $FULL == 1 ]]; then
  echo "      full: the same, with wrk's session dropped before each connection (a full handshake each)"
else
  echo "      full: SKIPPED (FULL=0 or no C compiler for the handshake counter)"
fi
if [[ $HAVE_H2 == 1 ]]; then
  echo "      h2: h2load -t1 -c$H2_CONNS -m$H2_STREAMS (ALPN h2)"
else
  echo "      h2: SKIPPED (h2load not installed or H2=0)"
fi
echo "rounds=$ROUNDS (rows alternating) x ${DURATION}s, warm-up ${WARMUP}s per row and measurement"
echo

# ---------------------------------------------------------------- rounds
for k in "${KINDS[@]}"; do
  for t in "${ROWS[@]}"; do measure "$k" "$t" "$WARMUP" 0; done
  for r in $(seq "$ROUNDS"); do
    for t in "${ROWS[@]}"; do measure "$k" "$t" "$DURATION" "$r"; done
  done
done

# ---------------------------------------------------------------- report
declare -A MED
for k in "${KINDS[@]}"; do
  for t in "${ROWS[@]}"; do
    for f in rate:4 p50:5 p99:6 cpu:8 pct:9 lpct:10 cpr:11; do MED[$k,$t,${f%:*}]=$(col "$k" "$t" "${f#*:}" | median); done
    MED[$k,$t,errs]=$(col "$k" "$t" 7 | awk '{s += $1} END {print s + 0}')
    MED[$k,$t,range]=$(col "$k" "$t" 4 | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f..%.0f", lo, hi}')
    fr=$(col "$k" "$t" 12 | awk '$1 != "n/a" {s += $1} END {print s + 0}')
    rs=$(col "$k" "$t" 13 | awk '$1 != "n/a" {s += $1} END {print s + 0}')
    MED[$k,$t,resumed]=$(awk -v f="$fr" -v r="$rs" 'BEGIN {if (f + r) printf "%.1f%%", r / (f + r) * 100; else print "n/a"}')
    # What limited the row: the proxy's CPU, the load side's CPU, or neither (latency).
    MED[$k,$t,limit]=$(awk -v p="${MED[$k,$t,pct]}" -v l="${MED[$k,$t,lpct]}" 'BEGIN {
      if (p >= 90) print "proxy"; else if (l >= 90) print "load"; else print "neither" }')
  done
done

table_head() {  # table_head RATE_NAME [EXTRA_HEADERS...]
  printf '%-10s %9s %15s %8s %8s %5s %10s %5s %5s %-7s' row "$1" "$1-min..max" "$2" "$3" errs cpu_us/req cpu% load% limit
  shift 3
  (($#)) && printf ' %9s' "$@"
  echo
}
ms() { awk -v v="$1" 'BEGIN {if (v == "nan" || v == "") print "-"; else printf "%.3f", v}'; }
table_row() {  # table_row KIND ROW [EXTRA_FIELDS...]
  local k=$1 t=$2
  shift 2
  printf '%-10s %9.0f %15s %8s %8s %5s %10s %5s %5s %-7s' "$t" "${MED[$k,$t,rate]}" "${MED[$k,$t,range]}" \
    "$(ms "${MED[$k,$t,p50]}")" "$(ms "${MED[$k,$t,p99]}")" "${MED[$k,$t,errs]}" "${MED[$k,$t,cpu]}" "${MED[$k,$t,pct]}" \
    "${MED[$k,$t,lpct]}" "${MED[$k,$t,limit]}"
  local f
  for f in "$@"; do printf ' %9s' "${MED[$k,$t,$f]}"; done
  echo
}

echo "== keep-alive HTTPS (HTTP/1.1 over TLS): wrk -c$CONNS, ${DURATION}s x $ROUNDS rounds, medians"
table_head rps p50_ms p99_ms
for t in "${ROWS[@]}"; do table_row ka "$t"; done
echo
echo "== new TLS connection per request, as wrk makes it (resumed): wrk -c$HS_CONNS -H 'Connection: close', ${DURATION}s x $ROUNDS rounds, medians"
table_head hs/s p50_ms p99_ms conns/req resumed
for t in "${ROWS[@]}"; do table_row hs "$t" cpr resumed; done
echo
if [[ $FULL == 1 ]]; then
  echo "== new TLS connection per request, full handshakes (session dropped): wrk -c$HS_CONNS -H 'Connection: close', ${DURATION}s x $ROUNDS rounds, medians"
  table_head hs/s p50_ms p99_ms conns/req resumed
  for t in "${ROWS[@]}"; do table_row full "$t" cpr resumed; done
  echo
fi
if [[ $HAVE_H2 == 1 ]]; then
  echo "== HTTP/2 over TLS: h2load -c$H2_CONNS -m$H2_STREAMS, ${DURATION}s x $ROUNDS rounds, medians (h2load gives no percentiles: mean request time)"
  table_head rps mean_ms "-"
  for t in "${ROWS[@]}"; do table_row h2 "$t"; done
  echo
else
  echo "== HTTP/2 over TLS: SKIPPED (h2load not installed or H2=0; bash $HERE/tls-setup.sh installs it)"
  echo
fi
echo "   (cpu_us/req: the proxy's CPU time per request or handshake; cpu%: the proxy's share of its CPU;"
echo "    load%: busy share of the load side's CPU(s); limit: proxy = proxy CPU >= 90%, load = load CPU >= 90%)"
echo

hs_kind() {  # hs_kind KIND ROW -> resumed/full/mixed/unknown, from wrk's own handshake counts
  local v=${MED[$1,$2,resumed]%\%}
  [[ $v == n/a ]] && { echo "unknown"; return; }
  awk -v v="$v" 'BEGIN {if (v >= 90) print "resumed"; else if (v <= 10) print "full"; else print "mixed"}'
}
verdict() {  # verdict RATIO TARGET -> meets/BELOW
  awk -v r="$1" -v t="$2" 'BEGIN {if (r == "n/a") print "n/a"; else if (r + 0 >= t + 0) print "meets"; else print "BELOW"}'
}
A=gw-tls
B=nginx-tls
line() { printf '  %-36s %7s   %s\n' "$@"; }
R_KA=$(ratio "${MED[ka,$A,rate]}" "${MED[ka,$B,rate]}" 2)
R_P99=$(ratio "${MED[ka,$A,p99]}" "${MED[ka,$B,p99]}" 2)
R_HS=$(ratio "${MED[hs,$A,rate]}" "${MED[hs,$B,rate]}" 2)
KIND_HS=$(hs_kind hs "$A")
[[ $KIND_HS == "$(hs_kind hs "$B")" ]] || KIND_HS="$KIND_HS/$(hs_kind hs "$B")"
echo "== ratios gw-tls/nginx-tls (of medians; rates: higher is better; p99, cpu/req: lower is better)"
line measure ratio "issue target"
line "keep-alive HTTPS rps" "$R_KA" ">= $TARGET_KA (goal $GOAL_KA): $(verdict "$R_KA" "$TARGET_KA") (goal: $(verdict "$R_KA" "$GOAL_KA"))"
line "keep-alive HTTPS p99" "$R_P99" ""
line "keep-alive HTTPS cpu/req" "$(ratio "${MED[ka,$A,cpu]}" "${MED[ka,$B,cpu]}" 2)" ""
line "new handshakes/s ($KIND_HS)" "$R_HS" ">= $TARGET_HS: $(verdict "$R_HS" "$TARGET_HS")"
line "new handshakes cpu/hs ($KIND_HS)" "$(ratio "${MED[hs,$A,cpu]}" "${MED[hs,$B,cpu]}" 2)" ""
R_FULL=n/a
R_H2=n/a
if [[ $FULL == 1 ]]; then
  R_FULL=$(ratio "${MED[full,$A,rate]}" "${MED[full,$B,rate]}" 2)
  line "full handshakes/s" "$R_FULL" ">= $TARGET_HS if the target means full ones: $(verdict "$R_FULL" "$TARGET_HS")"
  line "full handshakes cpu/hs" "$(ratio "${MED[full,$A,cpu]}" "${MED[full,$B,cpu]}" 2)" ""
else
  line "full handshakes/s" "skipped" ""
fi
if [[ $HAVE_H2 == 1 ]]; then
  R_H2=$(ratio "${MED[h2,$A,rate]}" "${MED[h2,$B,rate]}" 2)
  line "HTTP/2 rps (h2load)" "$R_H2" ""
  line "HTTP/2 cpu/req" "$(ratio "${MED[h2,$A,cpu]}" "${MED[h2,$B,cpu]}" 2)" ""
else
  line "HTTP/2 rps (h2load)" "skipped" "h2load not installed or H2=0"
fi
limited=()
for k in "${KINDS[@]}"; do
  for t in "${ROWS[@]}"; do [[ ${MED[$k,$t,limit]} == proxy ]] || limited+=("$k:$t"); done
done
if ((${#limited[@]})); then
  echo "  note: not limited by the proxy's CPU: ${limited[*]}"
  echo "        there, requests/s is set by the load side (or latency), and cpu/req, the proxy's own"
  echo "        cost per request or handshake, is the figure to compare (see README.md)"
fi
echo

{
  echo "RESULT tls-keepalive gw-tls/nginx-tls rps=$R_KA p99=$R_P99 cpu_per_req=$(ratio "${MED[ka,$A,cpu]}" "${MED[ka,$B,cpu]}" 2) target=$TARGET_KA goal=$GOAL_KA"
  echo "RESULT tls-handshake gw-tls/nginx-tls hs=$R_HS cpu_per_hs=$(ratio "${MED[hs,$A,cpu]}" "${MED[hs,$B,cpu]}" 2) kind=$KIND_HS target=$TARGET_HS"
  if [[ $FULL == 1 ]]; then
    echo "RESULT tls-full-handshake gw-tls/nginx-tls hs=$R_FULL cpu_per_hs=$(ratio "${MED[full,$A,cpu]}" "${MED[full,$B,cpu]}" 2) kind=$(hs_kind full "$A")"
  else
    echo "RESULT tls-full-handshake skipped"
  fi
  if [[ $HAVE_H2 == 1 ]]; then
    echo "RESULT h2 gw-tls/nginx-tls rps=$R_H2 cpu_per_req=$(ratio "${MED[h2,$A,cpu]}" "${MED[h2,$B,cpu]}" 2)"
  else
    echo "RESULT h2 skipped"
  fi
} >"$RESULT_LINES"
echo "== RESULT lines (ratios of medians; rps/hs: higher is better; p99, cpu: lower is better)"
cat "$RESULT_LINES"
