#!/usr/bin/env bash
# Tunnel throughput benchmark: bulk bytes through libkasroute tunnels
# (kasctl forward -> kasd -> agentd -> upstream) over tcp://, tls:// and
# ws:// (when available), compared with a direct connection and with an
# OpenSSH reverse tunnel (ssh -R), all on 127.0.0.1.
#
#   bench/tunnel/run.sh --build BUILD_DIR [--quick] [--runs R] [--out FILE]
#
# Two measurements per path, each repeated R times (median reported):
#   single  one connection pushing --single-bytes (1 GiB; 256 MiB --quick)
#   multi   --conns connections at once (100), --multi-bytes each (10 MiB;
#           2.5 MiB --quick)
# The load generator (tunnel_load) half-closes after its last byte and stops
# the clock when it reads EOF, which the upstream (tunnel_sink) only sends
# after reading everything; the sink's own per-connection byte counts are
# checked after every run, so a tunnel that loses bytes fails the run.
# The paths run in rounds (every path once per round) so that changes in the
# machine's background load hit them alike. After the timed runs a content
# check (echo upstream, every byte compared, both directions busy) runs once
# per path.
#
# Every process the script starts is stopped by pid on exit; every wait is
# bounded; --deadline bounds the whole run. Needs: a release build
# (meson setup BUILD -Dbuildtype=release) with daemons/ and bench/tunnel/
# built, the openssl CLI, and openssh-server (installed with apt-get when
# missing and running as root).
set -u -o pipefail

usage() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
  cat <<'EOF'

Options:
  --build DIR          meson build directory (default: $KR_BUILD, or ./build)
  --quick              256 MiB single stream, 100 x 2.5 MiB, same runs
  --runs R             repetitions per measurement (5)
  --conns N            connections in the multi measurement (100)
  --single-bytes B     bytes for the single stream (1G; suffix K/M/G)
  --multi-bytes B      bytes per connection in the multi measurement (10M)
  --ssh-extra-cipher C also run ssh -R with -c C (aes128-gcm@openssh.com;
                       "none" to skip)
  --only LIST          comma list of paths to run, from: direct, kas-tcp,
                       kas-tls, kas-ws, ssh, ssh-extra (default: all)
  --agent-conns N      tunnel connections agentd keeps (agentd default: 2)
  --perf DIR           record `perf record -g` profiles of kasctl, kasd and
                       agentd of the kas paths during the timed runs into DIR
  --out FILE           also write the final report to FILE
  --deadline S         hard limit for the whole run in seconds (2400)
  --keep               keep the temporary directory (logs, keys)
  --no-echo-check      skip the content check through each path
EOF
}

COMMAND_LINE="$0 $*"
START_SECONDS=$SECONDS
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BUILD=${KR_BUILD:-$root/build}
QUICK=0
RUNS=5
CONNS=100
SINGLE_BYTES=
MULTI_BYTES=
SSH_EXTRA=aes128-gcm@openssh.com
ONLY=direct,kas-tcp,kas-tls,kas-ws,ssh,ssh-extra
AGENT_CONNS=
PERF_DIR=
OUT=
DEADLINE=2400
KEEP=0
ECHO_CHECK=1
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --runs) RUNS=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --single-bytes) SINGLE_BYTES=$2; shift 2 ;;
    --multi-bytes) MULTI_BYTES=$2; shift 2 ;;
    --ssh-extra-cipher) SSH_EXTRA=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --agent-conns) AGENT_CONNS=$2; shift 2 ;;
    --perf) PERF_DIR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --deadline) DEADLINE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --no-echo-check) ECHO_CHECK=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -z "$SINGLE_BYTES" ]; then
  if [ $QUICK = 1 ]; then SINGLE_BYTES=256M; else SINGLE_BYTES=1G; fi
fi
if [ -z "$MULTI_BYTES" ]; then
  if [ $QUICK = 1 ]; then MULTI_BYTES=2560K; else MULTI_BYTES=10M; fi
fi
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: bad --runs" >&2; exit 2; }

to_bytes() {
  local v=$1 n=${1%[KkMmGg]}
  case "$v" in
    *[Kk]) echo $((n * 1024)) ;;
    *[Mm]) echo $((n * 1024 * 1024)) ;;
    *[Gg]) echo $((n * 1024 * 1024 * 1024)) ;;
    *) echo "$v" ;;
  esac
}
SINGLE_N=$(to_bytes "$SINGLE_BYTES")
MULTI_N=$(to_bytes "$MULTI_BYTES")

want() { [[ ",$ONLY," == *",$1,"* ]]; }

KASD=$BUILD/daemons/kasd
AGENTD=$BUILD/daemons/agentd
KASCTL=$BUILD/daemons/kasctl
LOAD=$BUILD/bench/tunnel/tunnel_load
SINK=$BUILD/bench/tunnel/tunnel_sink
ECHO=$BUILD/bench/tunnel/tunnel_upstream
for b in "$KASD" "$AGENTD" "$KASCTL" "$LOAD" "$SINK" "$ECHO"; do
  [ -x "$b" ] || { echo "run.sh: missing $b (build it: meson compile -C $BUILD)" >&2; exit 2; }
done
. "$here/../lib.sh"
BUILDTYPE=$(meson_buildtype "$BUILD")
[ "$BUILDTYPE" = release ] ||
  echo "run.sh: warning: $BUILD is buildtype '${BUILDTYPE:-unknown}', not release" >&2

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kr-tunnel-bench.XXXXXX")
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# The whole run is bounded by --deadline.
start_watchdog "$DEADLINE"

mkdir -p "$TMP/res"

# ------------------------------------------------------------------ setup
log "temp dir $TMP; single $SINGLE_BYTES x1, multi $MULTI_BYTES x$CONNS, runs $RUNS"

start sink "$SINK" --verbose
SINK_PID=$LASTPID
wait_until 5 $SINK_PID "sink" grep -q '^port ' "$TMP/sink.out" || die "sink"
SINK_PORT=$(awk '/^port /{print $2}' "$TMP/sink.out")
start echo "$ECHO"
ECHO_PID=$LASTPID
wait_until 5 $ECHO_PID "echo" grep -q '^port ' "$TMP/echo.out" || die "echo"
ECHO_PORT=$(awk '/^port /{print $2}' "$TMP/echo.out")

# Paths under test: PATHS (in order) with, per path, the port the load
# generator connects to, the echo port for the content check, and the
# processes whose CPU time is charged to the path ("name=pid ...").
PATHS=()
declare -A PORT EPORT PROCS
FAILED=()
NOTES=()
add_path() { PATHS+=("$1"); PORT[$1]=$2; EPORT[$1]=$3; PROCS[$1]=$4; }
drop_path() {
  local p keep=()
  for p in "${PATHS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PATHS=("${keep[@]}")
  FAILED+=("$1")
}

# One timed run: NAME KIND PORT CONNS BYTES. Checks that the sink saw
# exactly BYTES on each of CONNS connections, ending with EOF.
run_one() {
  local name=$1 kind=$2 port=$3 conns=$4 bytes=$5 nbytes before got line
  local pair t0=() i=0
  nbytes=$(to_bytes "$bytes")
  before=$(wc -l <"$TMP/sink.err")
  for pair in ${PROCS[$name]}; do t0+=("$(cpu_ticks "${pair#*=}")"); done
  # In the background so that a signal (the watchdog) is handled at once.
  "$LOAD" --port "$port" --conns "$conns" --bytes "$bytes" --timeout 300 \
    >"$TMP/load.line" 2>>"$TMP/load.err" &
  local lp=$!
  track load "$lp"
  if ! wait "$lp"; then
    untrack "$lp"
    log "$name $kind: tunnel_load failed:"
    grep -v '^tunnel_load: seed' "$TMP/load.err" | tail -n 6 >&2
    return 1
  fi
  untrack "$lp"
  line=$(cat "$TMP/load.line")
  for pair in ${PROCS[$name]}; do
    echo "${pair%%=*} $(($(cpu_ticks "${pair#*=}") - t0[i]))" \
      >>"$TMP/res/$name.$kind.ticks"
    i=$((i + 1))
  done
  # The sink prints its line before it closes, and the load generator's EOF
  # comes after that close, so the lines are complete now.
  got=$(tail -n +"$((before + 1))" "$TMP/sink.err" |
    grep -c "EOF after $nbytes bytes$" || true)
  if [ "$got" != "$conns" ]; then
    log "$name $kind: the sink saw $got of $conns connections deliver $nbytes bytes:"
    tail -n +"$((before + 1))" "$TMP/sink.err" | head -5 >&2
    return 1
  fi
  echo "$line" >>"$TMP/res/$name.$kind.lines"
  sed -n 's/.*MBps=\([0-9.]*\).*/\1/p' <<<"$line" >>"$TMP/res/$name.$kind"
  printf '  %-10s %-6s %s MB/s\n' "$name" "$kind" \
    "$(sed -n 's/.*MBps=\([0-9.]*\).*/\1/p' <<<"$line")" >&2
}

# Content check through a path: echo upstream, every byte compared, both
# directions busy at once. Runs after all timed runs; a failure is reported
# (and makes the exit status 1) without discarding the throughput numbers.
CHECK_FAILED=()
echo_check() {
  local name=$1 port=$2 spec conns bytes lp
  for spec in 1x64M 20x4M; do
    conns=${spec%%x*} bytes=${spec#*x}
    "$LOAD" --port "$port" --mode echo --conns "$conns" --bytes "$bytes" \
      --timeout 30 >/dev/null 2>"$TMP/$name-echo-$spec.err" &
    lp=$!
    track load "$lp"
    if ! wait "$lp"; then
      untrack "$lp"
      log "$name: echo content check $spec FAILED:"
      grep -v '^tunnel_load: seed' "$TMP/$name-echo-$spec.err" | head -4 >&2
      CHECK_FAILED+=("$name")
      NOTES+=("$name: echo content check ($conns x $bytes, both directions at once) FAILED: $(grep -v '^tunnel_load: seed' "$TMP/$name-echo-$spec.err" | head -2 | tr '\n' ' ')")
      return 1
    fi
    untrack "$lp"
  done
  log "$name: echo content check passed (1 x 64 MiB, 20 x 4 MiB)"
  NOTES+=("$name: echo content check passed (1 x 64 MiB, 20 x 4 MiB, every byte compared)")
}

# --------------------------------------------------------- kas machinery
echo -n "bench-agent-token-$(date +%s)-$RANDOM" >"$TMP/agent.tok"
echo "7 $("$KASCTL" hash-token <"$TMP/agent.tok") bench agent" >"$TMP/tokens"
head -c 48 /dev/urandom | base64 >"$TMP/api.secret"

# kas_up NAME SCHEME [kasd args] -- [agentd args]: kasd (agent listener
# SCHEME://, API listener tcp://), agentd serving "sink" and "echo", and a
# kasctl forward for each; adds the path NAME.
kas_up() {
  local name=$1 scheme=$2; shift 2
  local kargs=() aargs=() n kasd agentd kasctl fport eport
  while [ $# -gt 0 ] && [ "$1" != -- ]; do kargs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  aargs=("$@")
  start "$name-kasd" "$KASD" --agent-listen "$scheme://127.0.0.1:0" \
    --api-listen tcp://127.0.0.1:0 --agent-tokens "$TMP/tokens" \
    --api-secret-file "$TMP/api.secret" --drain-grace 1 --name "bench-$name" \
    "${kargs[@]}"
  kasd=$LASTPID
  wait_until 10 $kasd "$name kasd" grep -q '^kasd ready' "$TMP/$name-kasd.out" || return 1
  KAS_AGENT_PORT=$(sed -n 's/.*agent_port=\([0-9]*\).*/\1/p' "$TMP/$name-kasd.out")
  KAS_API_PORT=$(sed -n 's/.*api_port=\([0-9]*\).*/\1/p' "$TMP/$name-kasd.out")
  local conns_arg=()
  [ -n "$AGENT_CONNS" ] && conns_arg=(--connections "$AGENT_CONNS")
  start "$name-agentd" "$AGENTD" --kas "$scheme://127.0.0.1:$KAS_AGENT_PORT" \
    --token-file "$TMP/agent.tok" --name "bench-$name" \
    --service "sink=tcp://127.0.0.1:$SINK_PORT" \
    --service "echo=tcp://127.0.0.1:$ECHO_PORT" --drain-grace 1 \
    "${conns_arg[@]}" "${aargs[@]}"
  agentd=$LASTPID
  n=${AGENT_CONNS:-2}
  wait_until 15 $agentd "$name agentd" \
    count_ge "$TMP/$name-kasd.err" 'event=agent_connected' "$n" || return 1
  fport=$("$LOAD" --free-port)
  start "$name-kasctl" "$KASCTL" forward "tcp://127.0.0.1:$fport" \
    --kas "tcp://127.0.0.1:$KAS_API_PORT" --secret-file "$TMP/api.secret" \
    --agent 7 --service sink
  kasctl=$LASTPID
  wait_until 10 $kasctl "$name kasctl" grep -q 'event=forwarding' "$TMP/$name-kasctl.err" || return 1
  eport=$("$LOAD" --free-port)
  start "$name-kasctl-echo" "$KASCTL" forward "tcp://127.0.0.1:$eport" \
    --kas "tcp://127.0.0.1:$KAS_API_PORT" --secret-file "$TMP/api.secret" \
    --agent 7 --service echo
  wait_until 10 $LASTPID "$name kasctl" grep -q 'event=forwarding' "$TMP/$name-kasctl-echo.err" || return 1
  add_path "$name" "$fport" "$eport" "kasctl=$kasctl kasd=$kasd agentd=$agentd"
}

PERF_PIDS=()
perf_attach() { # NAME: profile the path's processes until the timed runs end
  local name=$1 pair
  mkdir -p "$PERF_DIR"
  for pair in ${PROCS[$name]}; do
    start "perf-$name-${pair%%=*}" perf record -g -F 999 \
      -o "$PERF_DIR/$name-${pair%%=*}.data" -p "${pair#*=}"
    PERF_PIDS+=("$LASTPID")
  done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before: $LOAD_BEFORE"

# ------------------------------------------------------------- set-up
want direct && add_path direct "$SINK_PORT" "$ECHO_PORT" ""

if want kas-tcp; then
  log "setting up kas-tcp"
  kas_up kas-tcp tcp || FAILED+=(kas-tcp)
fi

if want kas-tls; then
  log "setting up kas-tls: self-signed P-256 certificate for CN=127.0.0.1"
  if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj /CN=127.0.0.1 -days 2 -keyout "$TMP/kas.key" -out "$TMP/kas.crt" \
      >"$TMP/openssl.log" 2>&1; then
    cat "$TMP/openssl.log" >&2
    FAILED+=(kas-tls)
  elif kas_up kas-tls tls --tls-cert "$TMP/kas.crt" --tls-key "$TMP/kas.key" \
      -- --ca-file "$TMP/kas.crt"; then
    # The suite kasd picks (server preference) for a client offering all.
    TLS_SUITE=$(timeout 10 openssl s_client -connect "127.0.0.1:$KAS_AGENT_PORT" \
      -tls1_2 </dev/null 2>/dev/null | sed -n 's/^ *Cipher *: *//p' | head -1)
    NOTES+=("kas-tls: agent leg TLS 1.2 (mbedTLS), suite ${TLS_SUITE:-unknown} (kasd's choice); the kasctl->kasd leg is plain tcp, like the client->sshd leg of ssh -R")
  else
    FAILED+=(kas-tls)
  fi
fi

WS_AVAILABLE=0
if want kas-ws; then
  log "setting up kas-ws (probing for ws:// support)"
  if kas_up kas-ws ws 2>>"$TMP/ws-probe.log"; then
    WS_AVAILABLE=1
  else
    log "ws: not available (kasd/agentd do not accept ws:// here)"
    NOTES+=("ws: not available (kasd --agent-listen ws:// or agentd --kas ws:// did not work in this build)")
  fi
fi

SSH_CIPHER=
SSH_EXTRA_CIPHER=
[ "$SSH_EXTRA" = none ] && ONLY=${ONLY//ssh-extra/}

# ssh_up NAME CIPHER(or ""): an ssh client with -R for sink and echo; adds
# the path NAME, charged with the ssh client and its sshd session tree.
ssh_up() {
  local name=$1 fport eport
  fport=$("$LOAD" --free-port)
  eport=$("$LOAD" --free-port)
  while [ "$eport" = "$fport" ]; do eport=$("$LOAD" --free-port); done
  ssh_reverse "$name" "$2" "$fport:$SINK_PORT" "$eport:$ECHO_PORT" || return 1
  add_path "$name" "$fport" "$eport" "sshd=${SSH_SESSION_PID:-$SSHD_PID} ssh=$SSH_PID"
}

if { want ssh || want ssh-extra; } && ssh_available; then
  if sshd_up "$("$LOAD" --free-port)"; then
    if want ssh; then
      log "setting up ssh -R (default ciphers)"
      if ssh_up ssh ""; then
        SSH_CIPHER=$SSH_CIPHER_USED
        NOTES+=("ssh: $SSH_VERSION; default ciphers negotiated ${SSH_CIPHER:-unknown} (server->client: the direction bulk data flows with -R)")
      else
        FAILED+=(ssh)
      fi
    fi
    if want ssh-extra; then
      log "setting up ssh -R -c $SSH_EXTRA"
      if ssh_up ssh-extra "$SSH_EXTRA"; then
        SSH_EXTRA_CIPHER=$SSH_CIPHER_USED
      else
        FAILED+=(ssh-extra)
      fi
    fi
  else
    FAILED+=(ssh)
  fi
fi

if [ -n "$PERF_DIR" ]; then
  for p in kas-tcp kas-tls kas-ws; do
    [ -n "${PROCS[$p]:-}" ] && perf_attach "$p"
  done
fi

# ------------------------------------------------------------- measure
# Rounds: every path once per round, in turn, so that drifts in the
# machine's background load hit every path alike.
for r in $(seq "$RUNS"); do
  for kind in single multi; do
    log "round $r/$RUNS, $kind"
    for p in "${PATHS[@]}"; do
      if [ $kind = single ]; then
        run_one "$p" single "${PORT[$p]}" 1 "$SINGLE_BYTES" || drop_path "$p"
      else
        run_one "$p" multi "${PORT[$p]}" "$CONNS" "$MULTI_BYTES" || drop_path "$p"
      fi
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
NOTES+=("load average (1/5/15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER; $(nproc) CPUs")

if [ ${#PERF_PIDS[@]} -gt 0 ]; then
  # perf record writes its file and exits on SIGTERM.
  for p in "${PERF_PIDS[@]}"; do stop_pid "$p"; done
  log "perf data in $PERF_DIR (perf report -i FILE --no-children)"
fi

if [ $ECHO_CHECK = 1 ]; then
  for p in "${PATHS[@]}"; do echo_check "$p" "${EPORT[$p]}"; done
fi

# CPU seconds per GB for one path and kind, from the per-run ticks.
cpu_line() {
  local f="$TMP/res/$1.$2.ticks" total
  [ -s "$f" ] || return 0
  if [ "$2" = single ]; then total=$((SINGLE_N * $(wc -l <"$TMP/res/$1.$2")));
  else total=$((MULTI_N * CONNS * $(wc -l <"$TMP/res/$1.$2"))); fi
  awk -v hz="$HZ" -v b="$total" '
    { if (!($1 in t)) k[++n] = $1; t[$1] += $2 }
    END { for (i = 1; i <= n; i++) { printf "%s=%.2f ", k[i], t[k[i]] / hz / (b / 1e9); s += t[k[i]] }
          printf "(sum %.2f)", s / hz / (b / 1e9) }' "$f"
}

# ----------------------------------------------------------------- report
med() { [ -s "$TMP/res/$1.$2" ] && median <"$TMP/res/$1.$2" || echo nan; }
label() {
  case $1 in
    direct) echo "direct (no tunnel)" ;;
    kas-tcp) echo "kas tcp://" ;;
    kas-tls) echo "kas tls://" ;;
    kas-ws) echo "kas ws://" ;;
    ssh) echo "ssh -R ${SSH_CIPHER:-(default)}" ;;
    ssh-extra) echo "ssh -R ${SSH_EXTRA_CIPHER:-$SSH_EXTRA}" ;;
  esac
}

report() {
  local d1 dm n s m
  d1=$(med direct single); dm=$(med direct multi)
  echo "Tunnel throughput, MB/s = 1e6 bytes/s, median of $RUNS runs"
  echo "command: $COMMAND_LINE"
  echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC'); run took $((SECONDS - START_SECONDS)) s"
  echo "single: 1 connection x $SINGLE_BYTES; multi: $CONNS connections x $MULTI_BYTES each, concurrently"
  echo
  printf '| %-38s | %10s | %8s | %10s | %8s |\n' path "single" "x direct" "multi" "x direct"
  printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "$(printf -- '-%.0s' {1..12})" \
    "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..10})"
  for n in direct kas-tcp kas-tls kas-ws ssh ssh-extra; do
    want "$n" || continue
    if [ $n = kas-ws ] && [ $WS_AVAILABLE = 0 ]; then
      printf '| %-38s | %10s | %8s | %10s | %8s |\n' "kas ws:// (ws: not available)" - - - -
      continue
    fi
    [ $n = ssh-extra ] && [ "$SSH_EXTRA" = none ] && continue
    s=$(med $n single); m=$(med $n multi)
    printf '| %-38s | %10s | %8s | %10s | %8s |\n' "$(label $n)" "$s" "$(ratio "$s" "$d1")" \
      "$m" "$(ratio "$m" "$dm")"
  done
  echo
  local s1 sm goal n2
  s1=$(med ssh single); sm=$(med ssh multi)
  echo "Ratios against ssh -R with default ciphers (${SSH_CIPHER:-n/a}):"
  printf '| %-22s | %8s | %8s | %6s |\n' ratio single multi goal
  printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..24})" "$(printf -- '-%.0s' {1..10})" \
    "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..8})"
  for n2 in kas-tcp kas-ws kas-tls; do
    want "$n2" || continue
    case $n2 in kas-tcp) goal=">= 2" ;; kas-ws) goal=">= 1" ;; *) goal="-" ;; esac
    if [ $n2 = kas-ws ] && [ $WS_AVAILABLE = 0 ]; then
      printf '| %-22s | %8s | %8s | %6s |\n' "kas ws:// / ssh -R" "n/a" "n/a" "$goal"
      continue
    fi
    printf '| %-22s | %8s | %8s | %6s |\n' "kas ${n2#kas-}:// / ssh -R" \
      "$(ratio "$(med $n2 single)" "$s1")" "$(ratio "$(med $n2 multi)" "$sm")" "$goal"
  done
  echo
  echo "CPU seconds per GB delivered (utime+stime from /proc/PID/stat, over all runs):"
  for n in kas-tcp kas-tls kas-ws ssh ssh-extra; do
    for k in single multi; do
      [ -s "$TMP/res/$n.$k.ticks" ] || continue
      printf '  %-10s %-6s %s\n' "$n" "$k" "$(cpu_line "$n" "$k")"
    done
  done
  echo
  echo "All runs (MB/s):"
  for n in direct kas-tcp kas-tls kas-ws ssh ssh-extra; do
    for k in single multi; do
      [ -s "$TMP/res/$n.$k" ] || continue
      printf '  %-10s %-6s %s\n' "$n" "$k" "$(tr '\n' ' ' <"$TMP/res/$n.$k")"
    done
  done
  if [ ${#NOTES[@]} -gt 0 ]; then
    echo
    echo "Notes:"
    for s in "${NOTES[@]}"; do echo "  - $s"; done
  fi
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo
    echo "FAILED paths: ${FAILED[*]} (logs in $TMP)"
  fi
}

report | tee ${OUT:+"$OUT"}
[ ${#FAILED[@]} -eq 0 ] && [ ${#CHECK_FAILED[@]} -eq 0 ] || { KEEP=1; exit 1; }
exit 0
