# Shell functions shared by the benchmark drivers (bench/*/run.sh).
# Source it (bash only) before starting any process:
#
#   . "$here/../lib.sh"
#   TMP=$(mktemp -d ...); KEEP=0
#   trap cleanup EXIT; trap 'log "interrupted"; exit 130' INT TERM
#
# Variables the caller sets: TMP (the run's temporary directory: process
# output goes there, and it is removed on exit unless KEEP=1 or the exit
# status is not 0), KEEP (0 or 1).
#
# Process bookkeeping: every process started with `start` is recorded in
# PIDS (in start order), PNAME[pid] (its name) and ALIVE[pid] (set while it
# may still run). `cleanup` stops them newest first, by pid, and only while
# they are still this shell's children, so a pid that exited and was reused
# by someone else is never signalled. The only other processes ever
# signalled are the descendants of an sshd this script started.

PIDS=()
declare -gA PNAME
declare -gA ALIVE

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ppid of a pid, from /proc (empty when it is gone).
ppid_of() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $2}'; }

# Stop one process: SIGTERM, up to 3 s, then SIGKILL. Only pids this script
# started get here (still our children), or the descendants of our sshd,
# passed with a second argument "desc".
stop_pid() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  if [ "${2:-}" != desc ]; then
    [ -n "${ALIVE[$pid]:-}" ] || return 0
    unset "ALIVE[$pid]"
    [ "$(ppid_of "$pid")" = "$$" ] || return 0
  fi
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

# The stat lines of all processes. Through cat, because processes come and
# go while the files are read, and mawk (Debian's awk) stops at the first
# file it cannot open, which would silently drop every process after it.
proc_stats() { cat /proc/[0-9]*/stat 2>/dev/null; }

# All descendants of a pid, from /proc (children first in the output).
descendants() {
  local root=$1
  proc_stats | awk -v root="$root" '
    { line = $0; sub(/^[0-9]+ \(.*\) /, "", line); split(line, f, " ");
      pid = $1; ppid = f[2]; parent[pid] = ppid; pids[++n] = pid }
    END {
      for (i = 1; i <= n; i++) {
        p = pids[i]; q = parent[p]; d = 0
        while (q != "" && q != 0 && d < 64) {
          if (q == root) { print p; break }
          q = parent[q]; d++
        }
      }
    }'
}

# The EXIT trap: stops every process started with `start` (newest first;
# an sshd's session processes before the sshd), then removes $TMP unless
# KEEP=1 or the script failed.
cleanup() {
  local rc=$? i pid d
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[$i]}
    if [ "${PNAME[$pid]:-}" = sshd ] && [ -n "${ALIVE[$pid]:-}" ]; then
      for d in $(descendants "$pid"); do stop_pid "$d" desc; done
    fi
    stop_pid "$pid"
  done
  if [ -n "${TMP:-}" ] && [ -d "$TMP" ]; then
    if [ "${KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
      log "logs kept in $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit $rc
}

# start NAME CMD... : run in the background, stdout/stderr to $TMP/NAME.out
# and $TMP/NAME.err; sets $LASTPID.
start() {
  local name=$1; shift
  "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  LASTPID=$!
  PIDS+=("$LASTPID")
  ALIVE[$LASTPID]=1
  PNAME[$LASTPID]=$name
}

# track NAME PID: record a background job started by the caller (so that
# cleanup stops it); untrack PID once it has been waited for.
track() { PIDS+=("$2"); ALIVE[$2]=1; PNAME[$2]=$1; }
untrack() { unset "ALIVE[$1]"; }

# wait_until SECONDS PID WHAT CMD... : poll CMD until it succeeds; fail if
# PID dies or the time runs out.
wait_until() {
  local secs=$1 pid=$2 what=$3; shift 3
  local end=$((SECONDS + secs))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$what: process ${PNAME[$pid]:-$pid} exited; its stderr:"
      tail -n 20 "$TMP/${PNAME[$pid]:-x}.err" >&2 2>/dev/null
      return 1
    fi
    [ $SECONDS -lt $end ] || { log "$what: not ready after ${secs}s"; return 1; }
    sleep 0.05
  done
}

# count_ge FILE PATTERN N: FILE has at least N lines matching PATTERN.
count_ge() {
  local n
  n=$(grep -c -- "$2" "$1" 2>/dev/null) || true
  [ "${n:-0}" -ge "$3" ]
}

# start_watchdog SECONDS: SIGTERM this script after SECONDS (its trap then
# cleans up). The watchdog kills its own sleep when stopped, so nothing
# outlives the script.
start_watchdog() {
  start watchdog bash -c 'trap "kill \$sp 2>/dev/null; exit 0" TERM
    sleep "$1" & sp=$!; wait $sp && kill -TERM "$2"' watchdog "$1" "$$"
}

# CPU time (utime+stime, clock ticks of HZ per second) of pids and all their
# descendants.
HZ=$(getconf CLK_TCK)
cpu_ticks() {
  local p v all=() t=0
  for p in "$@"; do all+=("$p"); mapfile -t -O "${#all[@]}" all < <(descendants "$p"); done
  for p in "${all[@]}"; do
    v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
    t=$((t + ${v:-0}))
  done
  echo $t
}

# median [PRINTF_FORMAT] < numbers, one a line ("nan" for none).
median() { sort -g | awk -v fmt="${1:-%.1f}\n" '{ v[NR] = $1 } END {
  if (NR == 0) { print "nan"; exit }
  if (NR % 2) printf fmt, v[(NR + 1) / 2];
  else printf fmt, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ratio A B: A / B with 2 decimals, "-" when either is missing or B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {
  if (a == "nan" || b == "nan" || a == "" || b == "" || b == 0) print "-";
  else printf "%.2f", a / b }'; }

# The build type of a meson build directory (empty when unknown).
meson_buildtype() {
  grep -o '"name": "buildtype", "value": "[a-z]*"' \
    "$1/meson-info/intro-buildoptions.json" 2>/dev/null | sed 's/.*"value": "//; s/"$//'
}

# One line describing the machine, for report headers.
machine_line() {
  echo "$(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC')"
}

# --------------------------------------------------------------- ssh -R
# A throw-away sshd on 127.0.0.1 (own host key, own authorized_keys, no
# PAM) that accepts one client key, for ssh -R reverse tunnels.

# ssh_available: 0 when /usr/sbin/sshd exists, installing openssh-server
# with apt-get first when it is missing and we are root.
ssh_available() {
  if [ ! -x /usr/sbin/sshd ]; then
    if [ "$(id -u)" = 0 ]; then
      log "installing openssh-server"
      export DEBIAN_FRONTEND=noninteractive
      timeout 300 apt-get install -y openssh-server >"$TMP/apt.log" 2>&1 ||
        { timeout 300 apt-get update >>"$TMP/apt.log" 2>&1 &&
          timeout 300 apt-get install -y openssh-server >>"$TMP/apt.log" 2>&1; } ||
        tail -5 "$TMP/apt.log" >&2
    else
      log "openssh-server missing and not root: skipping ssh"
    fi
  fi
  [ -x /usr/sbin/sshd ]
}

# sshd_up PORT: keys and config in $TMP, sshd listening on 127.0.0.1:PORT.
# Sets SSHD_PORT, SSHD_PID, SSH_VERSION. The process is named "sshd" so
# that cleanup stops its sessions first.
sshd_up() {
  SSHD_PORT=$1
  ssh-keygen -q -t ed25519 -N '' -f "$TMP/host_key" -C bench-host
  ssh-keygen -q -t ed25519 -N '' -f "$TMP/client_key" -C bench-client
  cp "$TMP/client_key.pub" "$TMP/authorized_keys"
  cat >"$TMP/sshd_config" <<SSHD
ListenAddress 127.0.0.1
HostKey $TMP/host_key
PidFile $TMP/sshd.pid
AuthorizedKeysFile $TMP/authorized_keys
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
PrintMotd no
UseDNS no
LogLevel VERBOSE
SSHD
  # Debian's sshd wants its privilege separation directory.
  [ "$(id -u)" = 0 ] && mkdir -p /run/sshd
  start sshd /usr/sbin/sshd -D -e -f "$TMP/sshd_config" -p "$SSHD_PORT"
  SSHD_PID=$LASTPID
  SSH_VERSION=$(ssh -V 2>&1)
  wait_until 10 "$SSHD_PID" "sshd" grep -q 'Server listening' "$TMP/sshd.err"
}

# The newest child of the sshd listener: sessions are set up one at a time,
# so right after a client's forwards succeed it is that client's session.
ssh_session_pid() {
  local c newest='' t best=0
  for c in $(proc_stats | awk -v p="$SSHD_PID" '{ line = $0; sub(/^[0-9]+ \(.*\) /, "", line);
      split(line, f, " "); if (f[2] == p) print $1 }'); do
    t=$(sed 's/^.*) //' "/proc/$c/stat" 2>/dev/null | awk '{print $20}')
    if [ -n "$t" ] && [ "$t" -ge "$best" ]; then best=$t; newest=$c; fi
  done
  echo "$newest"
}

# ssh_reverse NAME CIPHER(or "") LISTEN_PORT:TARGET_PORT... : an ssh client
# (process NAME-ssh, log $TMP/NAME-ssh.log) holding one -R forward per
# argument, 127.0.0.1:LISTEN_PORT on the sshd side to 127.0.0.1:TARGET_PORT;
# waits until every forward is up. Sets SSH_PID, SSH_SESSION_PID (the sshd
# session serving it) and SSH_CIPHER_USED (server->client cipher, the
# direction data from the -R listener's clients flows back in).
ssh_reverse() {
  local name=$1 cipher=$2 copt=() fwd=() f; shift 2
  [ -n "$cipher" ] && copt=(-c "$cipher")
  for f in "$@"; do fwd+=(-R "127.0.0.1:${f%%:*}:127.0.0.1:${f#*:}"); done
  start "$name-ssh" ssh -N -F /dev/null -v -E "$TMP/$name-ssh.log" \
    "${fwd[@]}" -p "$SSHD_PORT" -i "$TMP/client_key" "${copt[@]}" \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o IdentitiesOnly=yes -o ExitOnForwardFailure=yes \
    "$(id -un)@127.0.0.1"
  SSH_PID=$LASTPID
  wait_until 15 "$SSH_PID" "$name ssh" \
    count_ge "$TMP/$name-ssh.log" 'remote forward success' $# ||
    { tail -n 15 "$TMP/$name-ssh.log" >&2; return 1; }
  SSH_SESSION_PID=$(ssh_session_pid)
  SSH_CIPHER_USED=$(sed -n 's/.*kex: server->client cipher: \([^ ]*\).*/\1/p' \
    "$TMP/$name-ssh.log" | head -1)
}

# --------------------------------------------------------------- redis
# A throw-away redis-server on 127.0.0.1 (no persistence), for drivers
# that run several kas instances sharing presence.

# redis_up NAME PORT: start redis-server (process NAME) on 127.0.0.1:PORT,
# working directory $TMP, and wait until it accepts connections. Sets
# REDIS_PORT and REDIS_PID. Fails (the process stopped) when it does not
# come up, e.g. because the port was taken meanwhile.
redis_up() {
  local name=$1
  REDIS_PORT=$2
  start "$name" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --save "" --appendonly no --dir "$TMP"
  REDIS_PID=$LASTPID
  wait_until 10 "$REDIS_PID" "$name" \
    grep -q 'Ready to accept connections' "$TMP/$name.out" ||
    { stop_pid "$REDIS_PID"; return 1; }
}

# redis_calls PORT: "TOTAL CMD=N CMD=N ..." from INFO commandstats: the
# calls of every command since the server started, INFO itself left out
# (the probes that read these counters are INFO commands). Empty when the
# server does not answer.
redis_calls() {
  timeout 5 redis-cli -h 127.0.0.1 -p "$1" INFO commandstats 2>/dev/null |
    tr -d '\r' | awk -F'[:=,]' '
      /^cmdstat_/ { c = substr($1, 9); if (c == "info") next
                    n[c] = $3; t += $3; names[++k] = c }
      END { if (k == 0 && NR == 0) exit 1
            printf "%d", t
            for (i = 1; i <= k; i++) printf " %s=%d", names[i], n[names[i]]
            printf "\n" }'
}

# redis_delta BEFORE AFTER: the difference of two redis_calls lines, as
# "TOTAL CMD=N ..." (only the commands whose count changed).
redis_delta() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    na = split(a, x, " "); nb = split(b, y, " ")
    for (i = 2; i <= na; i++) { split(x[i], kv, "="); old[kv[1]] = kv[2] }
    printf "%d", y[1] - x[1]
    for (i = 2; i <= nb; i++) {
      split(y[i], kv, "="); d = kv[2] - old[kv[1]]
      if (d) printf " %s=%d", kv[1], d
    }
    printf "\n" }'
}
