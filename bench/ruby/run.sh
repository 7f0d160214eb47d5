#!/usr/bin/env bash
# Ruby binding benchmark: 10,000 small HTTP requests (GET /hello, a 13-byte
# body from an nginx upstream) through kasd -> tunnel -> agentd -> nginx,
# made by one client shared by 1 and by 16 threads:
#   c     bench/ruby/bclient_load (the blocking client from C threads)
#   ruby  bench/ruby/bench_requests.rb (KasRoute::Client from Ruby threads)
# Both run R times per thread count, alternately; the report gives the
# median requests/s of each and ruby / c, against the goal ruby >= 0.5 x c.
#
#   bench/ruby/run.sh [--build DIR] [--no-build] [--requests N] [--runs R]
#                     [--threads LIST] [--keep]
#
# Needs nginx, ruby with ruby-ffi, and meson/ninja (a release build in
# --build DIR, set up when missing). Every process started is stopped by
# pid on exit; every wait is bounded.
set -u -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BUILD=${KR_BUILD:-$root/build-release}
DO_BUILD=1
REQUESTS=10000
RUNS=${KR_BENCH_RUNS:-3}
THREADS_LIST=1,16
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --no-build) DO_BUILD=0; shift ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --threads) THREADS_LIST=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
bad() { echo "run.sh: $*" >&2; exit 2; }
[[ "$REQUESTS" =~ ^[1-9][0-9]*$ ]] || bad "bad --requests"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || bad "bad --runs"
[[ "$THREADS_LIST" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || bad "bad --threads"
IFS=, read -r -a THREADS <<<"$THREADS_LIST"
command -v ruby >/dev/null || bad "needs ruby (Debian packages ruby ruby-ffi)"
ruby -e 'require "ffi"' 2>/dev/null || bad "needs the ffi gem (Debian package ruby-ffi)"
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || bad "needs nginx (Debian package nginx)"

if [ $DO_BUILD = 1 ]; then
  if [ ! -f "$BUILD/build.ninja" ]; then
    echo "run.sh: setting up $BUILD (-Dbuildtype=release)" >&2
    meson setup "$BUILD" "$root" -Dbuildtype=release >/dev/null || bad "meson setup $BUILD failed"
  fi
  ninja -C "$BUILD" daemons/kasd daemons/agentd daemons/kasctl bench/ruby/bclient_load \
    >/dev/null || bad "building in $BUILD failed (ninja -C $BUILD)"
fi
KASD=$BUILD/daemons/kasd
AGENTD=$BUILD/daemons/agentd
KASCTL=$BUILD/daemons/kasctl
LOAD=$BUILD/bench/ruby/bclient_load
LIB=$BUILD/lib/libkasroute.so
for b in "$KASD" "$AGENTD" "$KASCTL" "$LOAD" "$LIB"; do
  [ -e "$b" ] || bad "missing $b (build it: meson compile -C $BUILD)"
done

. "$here/../lib.sh"
BUILDTYPE=$(meson_buildtype "$BUILD")
[ "$BUILDTYPE" = release ] ||
  echo "run.sh: warning: $BUILD is buildtype '${BUILDTYPE:-unknown}', not release" >&2

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kr-ruby-bench.XXXXXX")
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
start_watchdog $((600 + RUNS * ${#THREADS[@]} * 2 * (REQUESTS / 200 + 30)))

free_port() { ruby -rsocket -e 's = TCPServer.new("127.0.0.1", 0); puts s.addr[1]; s.close'; }
BODY='hello, world'

# ------------------------------------------------------------ upstream
UP_PORT=
for try in 1 2 3; do
  UP_PORT=$(free_port)
  mkdir -p "$TMP/nginx"
  user=''
  [ "$(id -u)" = 0 ] && user="user $(id -un) $(id -gn);"
  cat >"$TMP/nginx/nginx.conf" <<NGINX
daemon off;
master_process on;
worker_processes 1;
$user
pid $TMP/nginx/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/client_body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$UP_PORT;
    location = /hello { default_type text/plain; return 200 "$BODY\n"; }
  }
}
NGINX
  start nginx "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e stderr
  NGINX_PID=$LASTPID
  if wait_until 10 "$NGINX_PID" nginx curl -sf -o /dev/null "http://127.0.0.1:$UP_PORT/hello"; then
    break
  fi
  stop_pid "$NGINX_PID"
  UP_PORT=
done
[ -n "$UP_PORT" ] || die "nginx does not start (see $TMP/nginx.err)"
BODY_LEN=$((${#BODY} + 1))

# ------------------------------------------------------------ kas + agent
head -c 32 /dev/urandom | base64 >"$TMP/api.secret"
echo -n "bench-agent-token-$RANDOM$RANDOM$RANDOM" >"$TMP/agent.tok"
HASH=$("$KASCTL" hash-token <"$TMP/agent.tok") || die "kasctl hash-token failed"
echo "7 $HASH ruby-bench" >"$TMP/tokens"
start kasd "$KASD" --agent-listen tcp://127.0.0.1:0 --api-listen tcp://127.0.0.1:0 \
  --agent-tokens "$TMP/tokens" --api-secret-file "$TMP/api.secret"
KASD_PID=$LASTPID
wait_until 10 "$KASD_PID" kasd grep -q 'kasd ready' "$TMP/kasd.out" || die "kasd not ready"
AGENT_PORT=$(sed -n 's/.*kasd ready agent_port=\([0-9]*\) api_port=\([0-9]*\).*/\1/p' "$TMP/kasd.out")
API_PORT=$(sed -n 's/.*kasd ready agent_port=\([0-9]*\) api_port=\([0-9]*\).*/\2/p' "$TMP/kasd.out")
start agentd "$AGENTD" --kas "tcp://127.0.0.1:$AGENT_PORT" --token-file "$TMP/agent.tok" \
  --service "hello=http://127.0.0.1:$UP_PORT"
AGENTD_PID=$LASTPID
wait_until 10 "$AGENTD_PID" agentd count_ge "$TMP/kasd.err" 'event=agent_connected' 1 ||
  die "agentd did not connect"

COMMON=(--kas "tcp://127.0.0.1:$API_PORT" --secret-file "$TMP/api.secret" --agent 7
  --service hello --path /hello --requests "$REQUESTS" --expect-bytes "$BODY_LEN")
run_c() { "$LOAD" "${COMMON[@]}" --threads "$1"; }
run_ruby() {
  KASROUTE_LIB=$LIB ruby -I "$root/bindings/ruby/lib" "$here/bench_requests.rb" \
    "${COMMON[@]}" --threads "$1"
}

log "warm-up"
run_c 1 >/dev/null && run_ruby 1 >/dev/null || die "warm-up run failed"
mkdir -p "$TMP/res"
for t in "${THREADS[@]}"; do
  for r in $(seq "$RUNS"); do
    for side in c ruby; do
      line=$("run_$side" "$t") || die "$side run with $t threads failed"
      log "$line"
      sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"$line" >>"$TMP/res/$side.$t"
    done
  done
done

{
  echo "Ruby binding vs C blocking client: $REQUESTS requests GET /hello (${BODY_LEN}-byte body, nginx upstream),"
  echo "one client per process, kasd + agentd ($BUILDTYPE build) on loopback; median of $RUNS runs"
  echo "$(machine_line); $(ruby -v | cut -d' ' -f1-2), ffi $(ruby -e 'require "ffi"; print FFI::VERSION')"
  printf '  %-8s %12s %12s %10s  %s\n' threads "c req/s" "ruby req/s" "ruby/c" "goal >= 0.5"
  for t in "${THREADS[@]}"; do
    c=$(median %.0f <"$TMP/res/c.$t")
    rb=$(median %.0f <"$TMP/res/ruby.$t")
    q=$(ratio "$rb" "$c")
    ok=$(awk -v q="$q" 'BEGIN { print (q != "-" && q >= 0.5) ? "met" : "NOT met" }')
    printf '  %-8s %12s %12s %10s  %s\n' "$t" "$c" "$rb" "$q" "$ok"
  done
} | tee "$TMP/report"
exit 0
