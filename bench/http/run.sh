#!/usr/bin/env bash
# HTTP request benchmark: small GET requests to an nginx upstream, measured
# with wrk on six paths, all on 127.0.0.1:
#   direct  wrk -> upstream nginx
#   nginx   wrk -> nginx reverse proxy (upstream keepalive 64, HTTP/1.1)
#           -> upstream nginx
#   ssh     wrk -> ssh -R listener (sshd) -> ssh client -> upstream nginx
#   kas     wrk -> kasd --http-listen -> tunnel -> agentd --service
#           hello=http://... -> upstream nginx
#           (GET /api/v1/agents/7/services/hello/hello with an API JWT)
#   peer    wrk -> kasd B's HTTP gateway -> peer link -> kasd A -> tunnel
#           -> agentd (connected to A only) -> upstream nginx: routing
#           across kas instances that share presence in a redis-server
#           started on a free loopback port (same request and JWT as kas)
#   handler wrk -> kasd --http-listen (its own) -> tunnel -> handler_agent
#           (bench/http/handler_agent.c: an HTTP handler of the library
#           answering the upstream's body itself, no upstream; same
#           request and JWT as kas)
#
#   bench/http/run.sh [--build DIR] [--seconds S] [--runs R] [--out FILE]
#
# The upstream answers GET /hello with a fixed 13-byte body. Every path is
# measured at 32 connections (wrk -t 2) and at 1 connection (wrk -t 1) for
# --seconds each, R times; the paths run in rounds (every path once per
# round) so that drifts in the machine's background load hit them alike.
# The report gives medians of requests/s, p50 and p99 latency (wrk
# --latency), ratios to the direct path, kas against the nginx proxy and
# ssh -R, pass/fail against the gateway's goals, and the CPU time of each
# path's own processes (utime+stime from /proc/PID/stat, descendants
# included) per run and per request. For peer it also gives peer / kas
# (the cost of the extra hop) and the Redis commands executed during each
# run (INFO commandstats) with the requests served per Redis command. For
# handler it gives handler / direct and handler / kas (an agent answering
# in-process against agentd proxying to the upstream), and the CPU per
# request of kasd and of the agent on both paths.
#
# Before the timed runs each path must answer GET with status 200 and
# exactly the upstream's body (checked with curl); a run in which wrk saw
# any non-2xx/3xx response fails the path. Every process the script starts
# is stopped by pid on exit; every wait is bounded; --deadline bounds the
# whole run. Needs: nginx, wrk, curl, openssl (for --agent-transport tls),
# openssh-server (installed with apt-get when missing and running as root),
# redis-server and redis-cli for peer (skipped with a note when missing),
# and meson/ninja to build the daemons (release build in --build DIR).
set -u -o pipefail

usage() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
  cat <<'EOF'

Options:
  --build DIR          meson build directory; set up with -Dbuildtype=release
                       when it does not exist (default: $KR_BUILD, or
                       ./build-release); kasd, agentd, kasctl,
                       bench/tunnel/tunnel_load and bench/handler_agent are
                       built in it
  --no-build           use DIR as it is
  --seconds S          wrk duration per run (default: $KR_BENCH_SECONDS or 10)
  --runs R             runs per path and connection count (default:
                       $KR_BENCH_RUNS or 3)
  --conns LIST         connection counts (32,1); wrk uses 2 threads, or 1
                       for one connection
  --warmup S           untimed wrk run per path before the first round (2;
                       0 to skip)
  --only LIST          comma list of paths, from: direct, nginx, ssh, kas,
                       peer, handler (default: all)
  --agent-transport T  tcp (default) or tls: the agentd -> kasd tunnel
  --agent-conns N      tunnel connections agentd keeps (agentd default: 2)
  --perf DIR           record `perf record -g` profiles of kasd and agentd
                       (and of the handler path's kasd and handler_agent)
                       during the timed runs into DIR, and print their top
                       functions
  --out FILE           also write the final report to FILE
  --deadline S         hard limit for the whole run in seconds (default:
                       enough for the runs asked for, plus 300)
  --keep               keep the temporary directory (logs, configs)
EOF
}

COMMAND_LINE="$0 $*"
START_SECONDS=$SECONDS
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BUILD=${KR_BUILD:-$root/build-release}
DO_BUILD=1
DURATION=${KR_BENCH_SECONDS:-10}
RUNS=${KR_BENCH_RUNS:-3}
CONNS_LIST=32,1
WARMUP=2
ONLY=direct,nginx,ssh,kas,peer,handler
AGENT_TRANSPORT=tcp
AGENT_CONNS=
PERF_DIR=
OUT=
DEADLINE=
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --no-build) DO_BUILD=0; shift ;;
    --seconds) DURATION=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --conns) CONNS_LIST=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --agent-transport) AGENT_TRANSPORT=$2; shift 2 ;;
    --agent-conns) AGENT_CONNS=$2; shift 2 ;;
    --perf) PERF_DIR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --deadline) DEADLINE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
bad() { echo "run.sh: $*" >&2; exit 2; }
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || bad "bad --runs / KR_BENCH_RUNS: $RUNS"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || bad "bad --seconds / KR_BENCH_SECONDS: $DURATION"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || bad "bad --warmup: $WARMUP"
[[ "$CONNS_LIST" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || bad "bad --conns: $CONNS_LIST"
[ -z "$AGENT_CONNS" ] || [[ "$AGENT_CONNS" =~ ^[1-9][0-9]*$ ]] || bad "bad --agent-conns"
case "$AGENT_TRANSPORT" in tcp|tls) ;; *) bad "--agent-transport is tcp or tls" ;; esac
IFS=, read -r -a CONNS <<<"$CONNS_LIST"
IFS=, read -r -a ONLY_LIST <<<"$ONLY"
for p in "${ONLY_LIST[@]}"; do
  case "$p" in direct|nginx|ssh|kas|peer|handler) ;; *) bad "unknown path in --only: $p" ;; esac
done
# The connection counts the summary compares (when measured).
CMAX=$(printf '%s\n' "${CONNS[@]}" | sort -n | tail -1)
CMIN=$(printf '%s\n' "${CONNS[@]}" | sort -n | head -1)
if [ -z "$DEADLINE" ]; then
  DEADLINE=$((300 + RUNS * ${#CONNS[@]} * ${#ONLY_LIST[@]} * (DURATION + 15) + 4 * (WARMUP + 10)))
fi

want() { [[ ",$ONLY," == *",$1,"* ]]; }

for t in nginx wrk curl; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] ||
    bad "needs $t (Debian package $t)"
done
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
# peer needs a redis-server, and redis-cli to count the commands it runs.
PEER_SKIPPED=
if want peer; then
  for t in redis-server redis-cli; do
    command -v "$t" >/dev/null 2>&1 && continue
    PEER_SKIPPED="peer: not measured: needs $t (Debian package redis-server / redis-tools)"
    echo "run.sh: $PEER_SKIPPED" >&2
    ONLY=$(echo ",$ONLY," | sed 's/,peer,/,/g; s/^,//; s/,$//')
    break
  done
fi

# ------------------------------------------------------------------ build
if [ $DO_BUILD = 1 ]; then
  blog=$(mktemp "${TMPDIR:-/tmp}/kr-http-bench-build.XXXXXX")
  if [ ! -f "$BUILD/build.ninja" ]; then
    echo "run.sh: setting up $BUILD (-Dbuildtype=release)" >&2
    meson setup "$BUILD" "$root" -Dbuildtype=release >"$blog" 2>&1 ||
      { tail -20 "$blog" >&2; rm -f "$blog"; bad "meson setup $BUILD failed"; }
  fi
  handler_target=
  want handler && handler_target=bench/handler_agent
  if ! ninja -C "$BUILD" daemons/kasd daemons/agentd daemons/kasctl \
      bench/tunnel/tunnel_load $handler_target >"$blog" 2>&1; then
    grep -m 20 -E 'error|FAILED' "$blog" >&2
    rm -f "$blog"
    bad "building in $BUILD failed (ninja -C $BUILD)"
  fi
  rm -f "$blog"
fi
KASD=$BUILD/daemons/kasd
AGENTD=$BUILD/daemons/agentd
KASCTL=$BUILD/daemons/kasctl
LOAD=$BUILD/bench/tunnel/tunnel_load
HANDLER_AGENT=$BUILD/bench/handler_agent
for b in "$KASD" "$AGENTD" "$KASCTL" "$LOAD"; do
  [ -x "$b" ] || bad "missing $b (build it: meson compile -C $BUILD)"
done

. "$here/../lib.sh"
BUILDTYPE=$(meson_buildtype "$BUILD")
[ "$BUILDTYPE" = release ] ||
  echo "run.sh: warning: $BUILD is buildtype '${BUILDTYPE:-unknown}', not release" >&2

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kr-http-bench.XXXXXX")
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
start_watchdog "$DEADLINE"
mkdir -p "$TMP/res"

free_port() { "$LOAD" --free-port; }

# The upstream's answer; every path must deliver exactly this.
BODY='hello, world'
printf '%s\n' "$BODY" >"$TMP/expected.body"
BODY_LEN=$(wc -c <"$TMP/expected.body")

# http_ok URL [CURL_ARGS...]: status 200 and exactly the expected body.
http_ok() {
  local url=$1 code; shift
  code=$(curl -sS --max-time 5 -o "$TMP/check.body" -w '%{http_code}' "$@" "$url" \
    2>"$TMP/check.err") || return 1
  [ "$code" = 200 ] && cmp -s "$TMP/check.body" "$TMP/expected.body"
}

# Say why a path's check failed (status line and body of one more try).
http_why() {
  local url=$1; shift
  curl -sS --max-time 5 -o "$TMP/why.body" -w 'HTTP status %{http_code}\n' "$@" "$url" >&2 2>&1
  head -c 300 "$TMP/why.body" >&2 2>/dev/null
  echo >&2
}

# Paths under test: PATHS (in order) with, per path, the URL wrk requests,
# the processes whose CPU time is charged to the path ("name=pid ..."), and
# extra wrk arguments.
PATHS=()
declare -A URL WRK_ARGS PROCS
FAILED=()
NOTES=()
[ -n "$PEER_SKIPPED" ] && NOTES+=("$PEER_SKIPPED")
add_path() { PATHS+=("$1"); URL[$1]=$2; PROCS[$1]=$3; WRK_ARGS[$1]=${4:-}; }
drop_path() {
  local p keep=()
  for p in "${PATHS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PATHS=("${keep[@]}")
  FAILED+=("$1")
}

# --------------------------------------------------------------- nginx
# nginx_conf DIR KIND PORT [UPSTREAM_PORT]: a config for one master and one
# worker running as the current user, everything (pid, temp dirs) under DIR,
# errors to stderr, no access log. Keep-alive requests per connection are
# not limited (nginx's default closes a client connection after 1000), so
# wrk's connections stay up for the whole run as they do through kas.
nginx_conf() {
  local dir=$1 kind=$2 port=$3 up=${4:-} user=''
  [ "$(id -u)" = 0 ] && user="user $(id -un) $(id -gn);"
  mkdir -p "$dir"
  {
    cat <<EOF
daemon off;
master_process on;
worker_processes 1;
$user
pid $dir/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
EOF
    if [ "$kind" = upstream ]; then
      cat <<EOF
  server {
    listen 127.0.0.1:$port;
    location = /hello {
      default_type text/plain;
      return 200 "$BODY\n";
    }
    # Connections accepted, read before and after every run: tells whether
    # a path keeps its upstream connections alive.
    location = /nginx-status {
      stub_status;
    }
  }
}
EOF
    else
      cat <<EOF
  upstream hello_upstream {
    server 127.0.0.1:$up;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://hello_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
    fi
  } >"$dir/nginx.conf"
}

# nginx_up NAME KIND [UPSTREAM_PORT]: start nginx (process NAME), retrying
# with another port when the picked one was taken meanwhile. Sets
# NGINX_PORT and NGINX_PID.
nginx_up() {
  local name=$1 kind=$2 up=${3:-} try dir=$TMP/$1
  for try in 1 2 3; do
    NGINX_PORT=$(free_port)
    nginx_conf "$dir" "$kind" "$NGINX_PORT" "$up"
    start "$name" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e stderr
    NGINX_PID=$LASTPID
    if wait_until 10 "$NGINX_PID" "$name" http_ok "http://127.0.0.1:$NGINX_PORT/hello"; then
      return 0
    fi
    stop_pid "$NGINX_PID"
    log "$name: not answering on port $NGINX_PORT (try $try)"
  done
  return 1
}

# ---------------------------------------------------------- kas machinery
KAS_AGENT_ID=7
KAS_CREDS=0
KAS_TLS_K=()
KAS_TLS_A=()
# kas_creds: once per run, for kas and peer alike: the agent token and the
# token file, the API secret, the TLS certificate for --agent-transport tls
# (KAS_TLS_K: kasd's options, KAS_TLS_A: agentd's), and an API JWT for wrk
# and curl that stays out of command lines (wrk reads it from a Lua script,
# $TMP/auth.lua; curl from a header file, $TMP/auth.header).
kas_creds() {
  local ttl jwt
  [ $KAS_CREDS = 1 ] && return 0
  if ! "$KASD" --help 2>&1 | grep -q -- '--http-listen'; then
    log "kas: $KASD has no --http-listen (the HTTP gateway is not in this build)"
    NOTES+=("kas: not measured: kasd in $BUILD has no --http-listen")
    return 1
  fi
  echo -n "bench-agent-token-$(date +%s)-$RANDOM$RANDOM" >"$TMP/agent.tok"
  echo "$KAS_AGENT_ID $("$KASCTL" hash-token <"$TMP/agent.tok") bench agent" >"$TMP/tokens"
  head -c 48 /dev/urandom | base64 >"$TMP/api.secret"
  chmod 600 "$TMP/agent.tok" "$TMP/api.secret"
  if [ "$AGENT_TRANSPORT" = tls ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj /CN=127.0.0.1 -days 2 -keyout "$TMP/kas.key" -out "$TMP/kas.crt" \
      >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; return 1; }
    KAS_TLS_K=(--tls-cert "$TMP/kas.crt" --tls-key "$TMP/kas.key")
    KAS_TLS_A=(--ca-file "$TMP/kas.crt")
  fi
  # Long enough for the whole run: the token is minted once.
  ttl=$((DEADLINE + 600))
  [ $ttl -le 86400 ] || ttl=86400
  jwt=$("$KASCTL" token --secret-file "$TMP/api.secret" --ttl "$ttl") ||
    { log "kasctl token failed"; return 1; }
  (umask 077
    printf 'Authorization: Bearer %s\n' "$jwt" >"$TMP/auth.header"
    printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$jwt" >"$TMP/auth.lua")
  jwt=
  KAS_CREDS=1
}

# agentd_up NAME KAS_AGENT_PORT UPSTREAM_PORT KASD_NAME: agentd (process
# NAME) serving "hello" from the upstream through the kasd (process
# KASD_NAME) on KAS_AGENT_PORT; waits until kasd has all its tunnel
# connections. Sets AGENTD_PID.
agentd_up() {
  local name=$1 port=$2 up=$3 kname=$4 conns_arg=()
  [ -n "$AGENT_CONNS" ] && conns_arg=(--connections "$AGENT_CONNS")
  start "$name" "$AGENTD" --kas "$AGENT_TRANSPORT://127.0.0.1:$port" \
    --token-file "$TMP/agent.tok" --name bench-http \
    --service "hello=http://127.0.0.1:$up" --drain-grace 1 \
    "${conns_arg[@]}" "${KAS_TLS_A[@]}"
  AGENTD_PID=$LASTPID
  wait_until 15 "$AGENTD_PID" "$name" \
    count_ge "$TMP/$kname.err" 'event=agent_connected' "${AGENT_CONNS:-2}"
}

# kasd_up NAME: a kasd (process NAME) with an agent listener over
# --agent-transport, an API listener and an HTTP gateway, all on free
# ports; waits until it is ready. Sets KASD_PID, KASD_AGENT_PORT and
# KASD_HTTP_PORT.
kasd_up() {
  local name=$1
  start "$name" "$KASD" --agent-listen "$AGENT_TRANSPORT://127.0.0.1:0" \
    --api-listen tcp://127.0.0.1:0 --http-listen http://127.0.0.1:0 \
    --agent-tokens "$TMP/tokens" --api-secret-file "$TMP/api.secret" \
    --drain-grace 1 --name bench-http "${KAS_TLS_K[@]}"
  KASD_PID=$LASTPID
  wait_until 10 "$KASD_PID" "$name" grep -q '^kasd ready.*http_port=' "$TMP/$name.out" || return 1
  KASD_AGENT_PORT=$(sed -n 's/.*agent_port=\([0-9]*\).*/\1/p' "$TMP/$name.out")
  KASD_HTTP_PORT=$(sed -n 's/.*http_port=\([0-9]*\).*/\1/p' "$TMP/$name.out")
}

# kas_up UPSTREAM_PORT: kasd (agent listener over --agent-transport, API
# listener, HTTP gateway) and agentd serving "hello" from the upstream.
# Adds the path "kas".
kas_up() {
  local up=$1 kasd agentd http_port
  kas_creds || return 1
  kasd_up kasd || return 1
  kasd=$KASD_PID
  http_port=$KASD_HTTP_PORT
  agentd_up agentd "$KASD_AGENT_PORT" "$up" kasd || return 1
  agentd=$AGENTD_PID
  local url="http://127.0.0.1:$http_port/api/v1/agents/$KAS_AGENT_ID/services/hello/hello"
  if ! wait_until 10 $kasd "kas gateway" http_ok "$url" -H "@$TMP/auth.header"; then
    http_why "$url" -H "@$TMP/auth.header"
    return 1
  fi
  add_path kas "$url" "kasd=$kasd agentd=$agentd" "-s $TMP/auth.lua"
}

# handler_up: a kasd of its own (as kas_up's) and handler_agent, with the
# agent token of the kas path, serving "hello" from an HTTP handler that
# answers every request with exactly the upstream's body
# ($TMP/expected.body): the same request, response body and tunnel as the
# kas path, with the agent answering in-process instead of proxying to the
# upstream. Adds the path "handler" (CPU: kasd + handler_agent).
handler_up() {
  local kasd agent url conns_arg=() ca_arg=()
  if [ ! -x "$HANDLER_AGENT" ]; then
    log "handler: missing $HANDLER_AGENT (build it: ninja -C $BUILD bench/handler_agent)"
    NOTES+=("handler: not measured: no $HANDLER_AGENT")
    return 1
  fi
  kas_creds || return 1
  kasd_up kasd-handler || return 1
  kasd=$KASD_PID
  [ -n "$AGENT_CONNS" ] && conns_arg=(--connections "$AGENT_CONNS")
  [ "$AGENT_TRANSPORT" = tls ] && ca_arg=(--ca-file "$TMP/kas.crt")
  start handler_agent "$HANDLER_AGENT" \
    --kas "$AGENT_TRANSPORT://127.0.0.1:$KASD_AGENT_PORT" \
    --token-file "$TMP/agent.tok" --name bench-http-handler --service hello \
    --body-file "$TMP/expected.body" --content-type text/plain --drain-grace 1 \
    "${conns_arg[@]}" "${ca_arg[@]}"
  agent=$LASTPID
  wait_until 15 "$agent" handler_agent \
    count_ge "$TMP/kasd-handler.err" 'event=agent_connected' "${AGENT_CONNS:-2}" || return 1
  url="http://127.0.0.1:$KASD_HTTP_PORT/api/v1/agents/$KAS_AGENT_ID/services/hello/hello"
  if ! wait_until 10 "$kasd" "handler gateway" http_ok "$url" -H "@$TMP/auth.header"; then
    http_why "$url" -H "@$TMP/auth.header"
    return 1
  fi
  add_path handler "$url" "kasd=$kasd handler_agent=$agent" "-s $TMP/auth.lua"
}

# peer_kasd NAME INSTANCE AGENT_LISTEN(0/1): one kasd of the peer pair
# (process NAME, --name INSTANCE) on the Redis at REDIS_PORT, with its
# private (peer) listener on a free port that it also advertises, and an
# HTTP gateway; with AGENT_LISTEN=1 also an agent listener. Retries with
# another private port when the picked one was taken meanwhile; waits until
# its Redis command link and subscription are up. Sets PEER_KASD_PID.
peer_kasd() {
  local name=$1 inst=$2 agents=$3 try pport purl al=()
  [ "$agents" = 1 ] && al=(--agent-listen "$AGENT_TRANSPORT://127.0.0.1:0" "${KAS_TLS_K[@]}")
  for try in 1 2 3; do
    pport=$(free_port)
    purl=tcp://127.0.0.1:$pport
    start "$name" "$KASD" "${al[@]}" --http-listen http://127.0.0.1:0 \
      --agent-tokens "$TMP/tokens" --api-secret-file "$TMP/api.secret" \
      --redis "redis://127.0.0.1:$REDIS_PORT" --private-listen "$purl" \
      --private-url "$purl" --private-secret-file "$TMP/private.secret" \
      --drain-grace 1 --name "$inst"
    PEER_KASD_PID=$LASTPID
    if wait_until 10 "$PEER_KASD_PID" "$name" \
        grep -q "^kasd ready.*private_port=$pport" "$TMP/$name.out"; then
      wait_until 10 "$PEER_KASD_PID" "$name redis" \
        grep -q 'event=redis_subscribed' "$TMP/$name.err" &&
        wait_until 10 "$PEER_KASD_PID" "$name redis" \
          grep -q 'event=redis_connected.*link=command' "$TMP/$name.err"
      return
    fi
    stop_pid "$PEER_KASD_PID"
    log "$name: did not start with private port $pport (try $try)"
  done
  return 1
}

# peer_up UPSTREAM_PORT: a redis-server, kasd A (agent listener) and kasd B
# sharing it, agentd connected to A only; wrk asks B's gateway, which
# routes over the peer link to A. Adds the path "peer" (CPU: kasd A +
# kasd B + agentd; the redis-server is not counted) and sets
# PEER_REDIS_PORT.
peer_up() {
  local up=$1 try a b agentd http_port
  kas_creds || return 1
  for try in 1 2 3; do
    redis_up redis "$(free_port)" && break
    log "redis-server: did not start on port $REDIS_PORT (try $try)"
    [ $try = 3 ] && return 1
  done
  PEER_REDIS_PORT=$REDIS_PORT
  PEER_REDIS_VERSION=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
  log "redis-server $PEER_REDIS_VERSION on port $REDIS_PORT"
  head -c 48 /dev/urandom | base64 >"$TMP/private.secret"
  chmod 600 "$TMP/private.secret"
  peer_kasd kasd-a bench-peer-a 1 || return 1
  a=$PEER_KASD_PID
  peer_kasd kasd-b bench-peer-b 0 || return 1
  b=$PEER_KASD_PID
  local aport
  aport=$(sed -n 's/.*agent_port=\([0-9]*\).*/\1/p' "$TMP/kasd-a.out")
  http_port=$(sed -n 's/.*http_port=\([0-9]*\).*/\1/p' "$TMP/kasd-b.out")
  agentd_up agentd-peer "$aport" "$up" kasd-a || return 1
  agentd=$AGENTD_PID
  local url="http://127.0.0.1:$http_port/api/v1/agents/$KAS_AGENT_ID/services/hello/hello"
  # B waits up to its route timeout for the agent's presence, and curl
  # gives up after 5 s: a few tries.
  if ! wait_until 30 "$b" "peer gateway (kasd B)" http_ok "$url" -H "@$TMP/auth.header"; then
    http_why "$url" -H "@$TMP/auth.header"
    return 1
  fi
  # The request must really have crossed the peer link.
  if ! grep -q 'event=peer_connected' "$TMP/kasd-b.err"; then
    log "peer: kasd B answered but logged no peer_connected"
    return 1
  fi
  add_path peer "$url" "kasd_a=$a kasd_b=$b agentd=$agentd" "-s $TMP/auth.lua"
}

PERF_PIDS=()
PERF_FILES=()
perf_attach() { # NAME: profile the path's processes until the timed runs end
  local name=$1 pair
  mkdir -p "$PERF_DIR"
  for pair in ${PROCS[$name]}; do
    start "perf-$name-${pair%%=*}" perf record -g -F 999 \
      -o "$PERF_DIR/$name-${pair%%=*}.data" -p "${pair#*=}"
    PERF_PIDS+=("$LASTPID")
    PERF_FILES+=("$PERF_DIR/$name-${pair%%=*}.data")
  done
}

# ------------------------------------------------------------- set-up
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "temp dir $TMP; ${DURATION}s per run, runs $RUNS, connections $CONNS_LIST; paths $ONLY"
log "load average before: $LOAD_BEFORE"

nginx_up upstream upstream || die "upstream nginx does not start (see $TMP/upstream.err)"
UP_PORT=$NGINX_PORT
UP_PID=$NGINX_PID
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
log "upstream nginx on port $UP_PORT"

want direct && add_path direct "http://127.0.0.1:$UP_PORT/hello" ""

if want nginx; then
  log "setting up the nginx proxy"
  if nginx_up proxy proxy "$UP_PORT"; then
    add_path nginx "http://127.0.0.1:$NGINX_PORT/hello" "nginx=$NGINX_PID"
  else
    FAILED+=(nginx)
  fi
fi

SSH_CIPHER=
if want ssh; then
  if ssh_available && sshd_up "$(free_port)"; then
    log "setting up ssh -R (default ciphers)"
    fport=$(free_port)
    if ssh_reverse ssh "" "$fport:$UP_PORT" &&
        wait_until 10 "$SSH_PID" "ssh -R" http_ok "http://127.0.0.1:$fport/hello"; then
      SSH_CIPHER=$SSH_CIPHER_USED
      add_path ssh "http://127.0.0.1:$fport/hello" \
        "sshd=${SSH_SESSION_PID:-$SSHD_PID} ssh=$SSH_PID"
      NOTES+=("ssh: $SSH_VERSION; default ciphers, negotiated ${SSH_CIPHER:-unknown}; each wrk connection is one channel of the one ssh connection")
    else
      FAILED+=(ssh)
    fi
  else
    FAILED+=(ssh)
  fi
fi

if want kas; then
  log "setting up kas (agent transport $AGENT_TRANSPORT://)"
  kas_up "$UP_PORT" || FAILED+=(kas)
fi

PEER_REDIS_PORT=
if want peer; then
  log "setting up peer: redis-server, kasd A and B, agentd on A (agent transport $AGENT_TRANSPORT://)"
  peer_up "$UP_PORT" || FAILED+=(peer)
fi

if want handler; then
  log "setting up handler: kasd and handler_agent (agent transport $AGENT_TRANSPORT://)"
  handler_up || FAILED+=(handler)
fi

[ ${#PATHS[@]} -gt 0 ] || die "no path could be set up"

if [ -n "$PERF_DIR" ]; then
  [ -n "${PROCS[kas]:-}" ] && perf_attach kas
  [ -n "${PROCS[handler]:-}" ] && perf_attach handler
fi

# ------------------------------------------------------------- measure
# wrk_parse FILE: "req_per_s p50_ms p99_ms requests non2xx socket_errors".
wrk_parse() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000
      if (v ~ /ms$/) return v + 0
      if (v ~ /m$/) return v * 60000
      if (v ~ /s$/) return v * 1000
      return v + 0
    }
    /^Requests\/sec:/ { rps = $2 }
    /^ *50% / { p50 = ms($2) }
    /^ *99% / { p99 = ms($2) }
    / requests in / { reqs = $1 }
    /Non-2xx or 3xx responses:/ { bad = $NF }
    /Socket errors:/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
    END {
      if (rps == "" || p99 == "") exit 1
      printf "%s %.4f %.4f %d %d %d\n", rps, p50, p99, reqs, bad + 0, err + 0
    }' "$1"
}

# run_wrk PATH CONNS SECONDS OUTFILE: one wrk run, bounded in time.
run_wrk() {
  local p=$1 c=$2 s=$3 out=$4 t=2 lp
  [ "$c" -lt 2 ] && t=1
  # shellcheck disable=SC2086 # WRK_ARGS holds separate words
  timeout $((s + 30)) wrk -t "$t" -c "$c" -d "${s}s" --latency ${WRK_ARGS[$p]} \
    "${URL[$p]}" >"$out" 2>&1 &
  lp=$!
  track wrk "$lp"
  wait "$lp"
  local rc=$?
  untrack "$lp"
  return $rc
}

# upstream_accepts: connections the upstream nginx accepted so far.
upstream_accepts() {
  curl -sS --max-time 5 "http://127.0.0.1:$UP_PORT/nginx-status" 2>/dev/null |
    awk 'NR == 3 { print $1 }'
}

# One timed run: PATH CONNS. Records requests/s, p50, p99 (ms), and the CPU
# seconds of the path's processes and of the upstream.
measure() {
  local p=$1 c=$2 pair t0=() u0 a0 i=0 line rps p50 p99 reqs bad err cpu=0 parts=''
  local f="$TMP/res/$p.c$c" out="$TMP/wrk-$p-c$c.txt"
  for pair in ${PROCS[$p]}; do t0+=("$(cpu_ticks "${pair#*=}")"); done
  u0=$(cpu_ticks "$UP_PID")
  a0=$(upstream_accepts)
  local r0='' r1=''
  [ "$p" = peer ] && r0=$(redis_calls "$PEER_REDIS_PORT")
  if ! run_wrk "$p" "$c" "$DURATION" "$out"; then
    log "$p c=$c: wrk failed:"; tail -n 5 "$out" >&2
    return 1
  fi
  for pair in ${PROCS[$p]}; do
    local d=$(($(cpu_ticks "${pair#*=}") - t0[i]))
    cpu=$((cpu + d)); parts+="${pair%%=*}=$(awk -v d="$d" -v hz="$HZ" 'BEGIN { printf "%.2f", d / hz }') "
    i=$((i + 1))
  done
  local up=$(($(cpu_ticks "$UP_PID") - u0)) a1
  a1=$(upstream_accepts)
  [ "$p" = peer ] && r1=$(redis_calls "$PEER_REDIS_PORT")
  line=$(wrk_parse "$out") || { log "$p c=$c: cannot read wrk's output:"; cat "$out" >&2; return 1; }
  read -r rps p50 p99 reqs bad err <<<"$line"
  cat "$out" >>"$TMP/res/$p.c$c.wrk"
  if [ "$bad" != 0 ]; then
    log "$p c=$c: $bad of $reqs responses were not 2xx/3xx"
    return 1
  fi
  [ "$err" = 0 ] || NOTES+=("$p c=$c: wrk counted $err socket errors in one run ($reqs requests)")
  echo "$rps" >>"$f.rps"
  echo "$reqs" >>"$f.reqs"
  echo "$p50" >>"$f.p50"
  echo "$p99" >>"$f.p99"
  awk -v t="$cpu" -v hz="$HZ" 'BEGIN { printf "%.2f\n", t / hz }' >>"$f.cpu"
  awk -v t="$cpu" -v hz="$HZ" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.2f\n", t / hz / n * 1e6 }' >>"$f.cpureq"
  awk -v t="$up" -v hz="$HZ" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.2f\n", t / hz / n * 1e6 }' >>"$f.upreq"
  echo "$parts" >>"$f.cpuparts"
  # The status request itself is one connection.
  [ -n "$a0" ] && [ -n "$a1" ] && echo $((a1 - a0 - 1)) >>"$f.upconns"
  printf '  %-7s c=%-3s %10.1f req/s  p50 %.3f ms  p99 %.3f ms  cpu %s\n' \
    "$p" "$c" "$rps" "$p50" "$p99" "${parts:-(none)}" >&2
  if [ "$p" = peer ]; then
    # Redis commands (all clients: both kasd) during this run, and the
    # requests it served.
    if [ -n "$r0" ] && [ -n "$r1" ]; then
      local rd rparts='(none)'
      rd=$(redis_delta "$r0" "$r1")
      [[ "$rd" == *" "* ]] && rparts=${rd#* }
      echo "$reqs ${rd%% *}" >>"$f.redis"
      echo "$rparts" >>"$f.redisparts"
      printf '  %-7s c=%-3s Redis commands %s: %s\n' "$p" "$c" "${rd%% *}" "$rparts" >&2
    else
      NOTES+=("peer c=$c: redis-cli INFO commandstats failed around one run")
    fi
  fi
}

if [ "$WARMUP" -gt 0 ]; then
  for p in "${PATHS[@]}"; do
    log "warm-up $p (${WARMUP}s, $CMAX connections)"
    run_wrk "$p" "$CMAX" "$WARMUP" "$TMP/wrk-warmup-$p.txt" ||
      { tail -n 5 "$TMP/wrk-warmup-$p.txt" >&2; drop_path "$p"; }
  done
fi

for r in $(seq "$RUNS"); do
  for c in "${CONNS[@]}"; do
    log "round $r/$RUNS, $c connection(s)"
    for p in "${PATHS[@]}"; do
      measure "$p" "$c" || drop_path "$p"
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -s "$TMP/res/ssh.c$CMIN.p99" ] &&
    awk '{ if ($1 >= 20) f = 1 } END { exit !f }' "$TMP/res/ssh.c$CMIN.p99"; then
  NOTES+=("ssh: p99 of 20 ms or more at $CMIN connection(s): sshd sets TCP_NODELAY only on interactive (tty) sessions, so on an ssh -N -R session a small packet can wait for the peer's delayed ACK (about 40 ms)")
fi
NOTES+=("load average (1/5/15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER; $(nproc) CPUs shared by wrk, the upstream and the path's processes")

if [ ${#PERF_PIDS[@]} -gt 0 ]; then
  # perf record writes its file and exits on SIGTERM.
  for p in "${PERF_PIDS[@]}"; do stop_pid "$p"; done
  log "perf data in $PERF_DIR (perf report -i FILE --no-children)"
fi

# ----------------------------------------------------------------- report
med() { # PATH CONNS KIND [FMT]
  local f="$TMP/res/$1.c$2.$3"
  [ -s "$f" ] && median "${4:-%.1f}" <"$f" || echo nan
}
label() {
  case $1 in
    direct) echo "direct (wrk -> nginx)" ;;
    nginx) echo "nginx proxy hop" ;;
    ssh) echo "ssh -R (${SSH_CIPHER:-default cipher})" ;;
    kas) echo "kas gateway -> agentd ($AGENT_TRANSPORT)" ;;
    peer) echo "peer: kas B -> kas A -> agentd ($AGENT_TRANSPORT)" ;;
    handler) echo "kas gateway -> handler agent ($AGENT_TRANSPORT)" ;;
  esac
}
# ratio_table SUBJECT LABEL OTHER...: a table of SUBJECT / OTHER (req/s and
# p99, every connection count) for each OTHER path that ran, then, when
# kas ran, SUBJECT's p50 and p99 minus kas's ("LABEL c=N: ...").
ratio_table() {
  local subj=$1 label=$2 p k c hdr sep="|------------------------|" row
  shift 2
  hdr="| $(printf '%-22s' ratio) |"
  for k in rps p99; do
    for c in "${CONNS[@]}"; do
      hdr+=" $(printf '%11s' "${k/rps/req\/s} c=$c") |"
      sep+="-------------|"
    done
  done
  echo "$hdr"
  echo "$sep"
  for p in "$@"; do
    want "$p" || continue
    row="| $(printf '%-22s' "$subj / $(short "$p")") |"
    for k in rps p99; do
      for c in "${CONNS[@]}"; do
        row+=" $(printf '%11s' "$(ratio "$(med "$subj" "$c" $k %.4f)" "$(med "$p" "$c" $k %.4f)")") |"
      done
    done
    echo "$row"
  done
  want kas || return 0
  local d='BEGIN { if (a == "nan" || b == "nan") print "-"; else printf "%+.3f ms", a - b }'
  for c in "${CONNS[@]}"; do
    echo "  $label c=$c: p50 $(awk -v a="$(med "$subj" "$c" p50 %.4f)" -v b="$(med kas "$c" p50 %.4f)" "$d"), p99 $(awk \
      -v a="$(med "$subj" "$c" p99 %.4f)" -v b="$(med kas "$c" p99 %.4f)" "$d") ($subj - kas, medians)"
  done
}

short() { case $1 in direct) echo direct ;; nginx) echo "nginx proxy" ;; ssh) echo "ssh -R" ;; kas) echo kas ;; esac; }
# part_us PATH CONNS PROCESS: median over the runs of one process's CPU
# microseconds per request ("-" when not measured).
part_us() {
  local f="$TMP/res/$1.c$2"
  [ -s "$f.reqs" ] && [ -s "$f.cpuparts" ] || { echo -; return; }
  paste -d ' ' "$f.reqs" "$f.cpuparts" | awk -v name="$3" '
    { for (i = 2; i <= NF; i++) { split($i, kv, "=")
        if (kv[1] == name && $1 > 0) printf "%.2f\n", kv[2] / $1 * 1e6 } }' |
    median %.1f
}
# goal NAME VALUE OP LIMIT: "PASS"/"FAIL" line for a ratio.
goal() {
  local verdict
  verdict=$(awk -v v="$2" -v op="$3" -v l="$4" 'BEGIN {
    if (v == "-" || v == "") { print "n/a"; exit }
    if (op == ">=") print (v >= l ? "PASS" : "FAIL"); else print (v <= l ? "PASS" : "FAIL") }')
  printf '  %-52s %6s  (goal %s %s)  %s\n' "$1" "$2" "$3" "$4" "$verdict"
}

report() {
  local p c rps p50 p99 drps dp99
  echo "HTTP requests: wrk GET, ${BODY_LEN}-byte body from nginx $NGINX_VERSION; median of $RUNS runs of ${DURATION}s"
  echo "command: $COMMAND_LINE"
  echo "machine: $(machine_line); run took $((SECONDS - START_SECONDS)) s"
  echo "build: $BUILD (buildtype ${BUILDTYPE:-unknown}); wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'); 2 wrk threads (1 for 1 connection)"
  echo
  printf '| %-40s | %5s | %10s | %8s | %8s | %8s | %8s | %9s | %10s | %8s |\n' \
    path conns "req/s" "x direct" "p50 ms" "p99 ms" "p99 x d" "CPU s/run" "CPU us/req" "up conns"
  printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" "-------" \
    "------------" "----------" "----------" "----------" "----------" "-----------" "------------" "----------"
  for c in "${CONNS[@]}"; do
    drps=$(med direct "$c" rps); dp99=$(med direct "$c" p99 %.3f)
    for p in direct nginx ssh kas peer handler; do
      want "$p" || continue
      rps=$(med "$p" "$c" rps); p50=$(med "$p" "$c" p50 %.3f); p99=$(med "$p" "$c" p99 %.3f)
      printf '| %-40s | %5s | %10s | %8s | %8s | %8s | %8s | %9s | %10s | %8s |\n' "$(label "$p")" "$c" \
        "$rps" "$(ratio "$rps" "$drps")" "$p50" "$p99" "$(ratio "$p99" "$dp99")" \
        "$( [ "$p" = direct ] && echo - || med "$p" "$c" cpu %.2f)" \
        "$( [ "$p" = direct ] && echo - || med "$p" "$c" cpureq %.1f)" \
        "$(med "$p" "$c" upconns %.0f)"
    done
  done
  echo "(CPU: utime+stime of the path's own processes during a run, median: nginx proxy = its"
  echo " master and worker; ssh = sshd session + ssh client; kas = kasd + agentd; the upstream"
  echo " and wrk are not counted. CPU us/req = CPU seconds / requests completed in that run."
  echo " up conns: connections the upstream nginx accepted during a run (stub_status): wrk's own"
  echo " connections (plus its one probe) for direct and ssh, pool refills for nginx and kas.)"
  want peer &&
    echo "(peer: CPU = kasd A + kasd B + agentd; the redis-server is not counted; up conns as for kas.)"
  want handler &&
    echo "(handler: CPU = its kasd + handler_agent; it has no upstream, so up conns stays 0.)"
  echo
  if want kas; then
    echo "kas against the alternatives (kas / other; req/s: higher is better for kas; p99: lower):"
    ratio_table peer "extra hop at" kas nginx ssh direct
    echo
    echo "Redis during the peer path's runs (redis-server ${PEER_REDIS_VERSION:-?}; INFO commandstats, calls of"
    echo "all commands by both kasd between the start and the end of each run, INFO itself left out):"
    printf '| %5s | %14s | %15s | %14s | %13s |\n' conns "requests/run" "Redis cmds/run" "Redis cmds/s" "requests/cmd"
    printf '|-------|----------------|-----------------|----------------|---------------|\n'
    for c in "${CONNS[@]}"; do
      local rf="$TMP/res/peer.c$c.redis"
      [ -s "$rf" ] || continue
      printf '| %5s | %14s | %15s | %14s | %13s |\n' "$c" \
        "$(awk '{ print $1 }' "$rf" | median %.0f)" "$(awk '{ print $2 }' "$rf" | median %.0f)" \
        "$(awk -v d="$DURATION" '{ print $2 / d }' "$rf" | median %.2f)" \
        "$(awk '{ r += $1; n += $2 } END { if (n > 0) printf "%.0f", r / n; else print "no command" }' "$rf")"
    done
    echo "(medians over the runs; requests/cmd = all requests of the runs / all Redis commands of the"
    echo " runs; the commands of each run are listed under \"All runs\")"
    echo
  fi
  if want handler; then
    echo "handler (kas gateway -> an agent answering with an HTTP handler, same body, no upstream)"
    echo "against the other paths (handler / other); handler / kas is the agent answering"
    echo "in-process against agentd proxying to the upstream nginx:"
    ratio_table handler at direct kas
    if want kas; then
      echo
      echo "CPU us per request (medians over the runs): kasd, the agent (agentd or handler_agent),"
      echo "their sum, and with the upstream nginx's CPU added (kas only; handler has no upstream):"
      printf '| %-8s | %5s | %8s | %8s | %10s | %15s |\n' path conns kasd agent "kasd+agent" "+ upstream"
      printf '|----------|-------|----------|----------|------------|-----------------|\n'
      for c in "${CONNS[@]}"; do
        printf '| %-8s | %5s | %8s | %8s | %10s | %15s |\n' kas "$c" "$(part_us kas "$c" kasd)" \
          "$(part_us kas "$c" agentd)" "$(med kas "$c" cpureq %.1f)" \
          "$(awk -v a="$(med kas "$c" cpureq %.2f)" -v b="$(med kas "$c" upreq %.2f)" \
            'BEGIN { if (a == "nan" || b == "nan") print "-"; else printf "%.1f", a + b }')"
        printf '| %-8s | %5s | %8s | %8s | %10s | %15s |\n' handler "$c" "$(part_us handler "$c" kasd)" \
          "$(part_us handler "$c" handler_agent)" "$(med handler "$c" cpureq %.1f)" \
          "$(med handler "$c" cpureq %.1f)"
      done
    fi
    echo
  fi
  echo "All runs (req/s; p99 ms; CPU s of the path's processes per process):"
  for p in direct nginx ssh kas peer handler; do
    for c in "${CONNS[@]}"; do
      [ -s "$TMP/res/$p.c$c.rps" ] || continue
      printf '  %-7s c=%-3s req/s %s\n' "$p" "$c" "$(tr '\n' ' ' <"$TMP/res/$p.c$c.rps")"
      printf '  %-7s c=%-3s p99   %s\n' "$p" "$c" "$(tr '\n' ' ' <"$TMP/res/$p.c$c.p99")"
      [ "$p" = direct ] ||
        printf '  %-7s c=%-3s cpu   %s\n' "$p" "$c" "$(paste -sd '|' "$TMP/res/$p.c$c.cpuparts" | sed 's/ |/ | /g')"
      printf '  %-7s c=%-3s upstream nginx CPU us/req %s\n' "$p" "$c" "$(tr '\n' ' ' <"$TMP/res/$p.c$c.upreq")"
      [ -s "$TMP/res/$p.c$c.upconns" ] &&
        printf '  %-7s c=%-3s upstream connections opened %s\n' "$p" "$c" "$(tr '\n' ' ' <"$TMP/res/$p.c$c.upconns")"
      [ -s "$TMP/res/$p.c$c.redisparts" ] &&
        printf '  %-7s c=%-3s Redis commands %s\n' "$p" "$c" "$(paste -sd '|' "$TMP/res/$p.c$c.redisparts" | sed 's/|/ | /g')"
    done
  done
  if [ -n "$PERF_DIR" ]; then
    local f
    for f in "${PERF_FILES[@]}"; do
      [ -s "$f" ] || continue
      echo
      echo "perf: top functions by self time in $(basename "$f" .data) (perf report -i $f --no-children):"
      perf report -i "$f" --no-children --stdio -g none --percent-limit 1 \
        --sort dso,symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25 | sed 's/^/  /'
    done
  fi
  if [ ${#NOTES[@]} -gt 0 ]; then
    echo
    echo "Notes:"
    local s
    for s in "${NOTES[@]}"; do echo "  - $s"; done
  fi
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo
    echo "FAILED paths: ${FAILED[*]} (logs in $TMP)"
  fi
}

report | tee ${OUT:+"$OUT"}
[ ${#FAILED[@]} -eq 0 ] || { KEEP=1; exit 1; }
exit 0
