#!/usr/bin/env bash
# The main job on one machine: kasd + agentd + an upstream on loopback, and
# requests routed through them. Called by `scripts/run demo` after the
# build; BUILD names the build directory.
set -euo pipefail
BUILD=${1:-build}
KASD=$BUILD/daemons/kasd
AGENTD=$BUILD/daemons/agentd
KASCTL=$BUILD/daemons/kasctl
UPSTREAM=$BUILD/tests/system/echo_server
for p in "$KASD" "$AGENTD" "$KASCTL" "$UPSTREAM"; do
  [[ -x $p ]] || { echo "demo: $p is not built" >&2; exit 1; }
done

DIR=$(mktemp -d "${TMPDIR:-/tmp}/kasroute-demo.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

# Waits until FILE has a line matching RE (up to 10 s).
wait_for() {
  local file=$1 re=$2
  for _ in $(seq 100); do
    grep -qE "$re" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: timed out waiting for /$re/ in $file" >&2
  cat "$file" >&2
  exit 1
}

say() { printf '\n--- %s\n' "$*"; }

say "credentials"
head -c 48 /dev/urandom | base64 | tr -d '\n' > "$DIR/api-secret"
head -c 24 /dev/urandom | base64 | tr -d '\n' > "$DIR/agent-token"
echo "7 $("$KASCTL" hash-token < "$DIR/agent-token") demo cluster" > "$DIR/agent-tokens"
echo "agent 7's token is stored hashed in the token file:"
sed 's/^/    /' "$DIR/agent-tokens"

say "an upstream service inside the 'cluster' (a TCP echo server)"
"$UPSTREAM" > "$DIR/upstream.out" & PIDS+=($!)
wait_for "$DIR/upstream.out" '^port '
UP=$(sed -n 's/^port //p' "$DIR/upstream.out")
echo "echo upstream on 127.0.0.1:$UP"

say "an HTTP service inside the 'cluster' (python3 -m http.server)"
mkdir -p "$DIR/www"
echo "hello over HTTP, through kas and the agent" > "$DIR/www/hello.txt"
python3 -u -m http.server --bind 127.0.0.1 --directory "$DIR/www" 0 \
  > "$DIR/www.out" 2> "$DIR/www.log" & PIDS+=($!)
wait_for "$DIR/www.out" 'port [0-9]+'
WWW=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$DIR/www.out" | head -n 1)
echo "http upstream on 127.0.0.1:$WWW"

say "kasd: agents connect to one port, API clients to another, HTTP to a third"
"$KASD" --agent-listen tcp://127.0.0.1:0 --api-listen tcp://127.0.0.1:0 \
  --http-listen http://127.0.0.1:0 \
  --agent-tokens "$DIR/agent-tokens" --api-secret-file "$DIR/api-secret" \
  --route-timeout 5 > "$DIR/kasd.out" 2> "$DIR/kasd.log" & PIDS+=($!)
wait_for "$DIR/kasd.out" 'kasd ready'
AP=$(sed -n 's/.*agent_port=\([0-9]*\).*/\1/p' "$DIR/kasd.out")
PP=$(sed -n 's/.*api_port=\([0-9]*\).*/\1/p' "$DIR/kasd.out")
HP=$(sed -n 's/.*http_port=\([0-9]*\).*/\1/p' "$DIR/kasd.out")
echo "kasd: agents -> 127.0.0.1:$AP, API -> 127.0.0.1:$PP, HTTP -> 127.0.0.1:$HP"

say "agentd dials out to kas (2 tunnel connections) and serves 'echo' and 'web'"
"$AGENTD" --kas "tcp://127.0.0.1:$AP" --token-file "$DIR/agent-token" \
  --service "echo=tcp://127.0.0.1:$UP" --service "web=http://127.0.0.1:$WWW" \
  --name demo-replica 2> "$DIR/agentd.log" & PIDS+=($!)
wait_for "$DIR/kasd.log" 'event=agent_connected'
grep -h 'event=agent_connected' "$DIR/kasd.log" | sed 's/^/    /'

say "a routed request: kasctl -> kas -> tunnel -> agentd -> upstream and back"
reply=$(echo "hello from the platform" | "$KASCTL" pipe --kas "tcp://127.0.0.1:$PP" \
  --secret-file "$DIR/api-secret" --agent 7 --service echo)
echo "sent:     hello from the platform"
echo "received: $reply"
[[ $reply == "hello from the platform" ]] || { echo "demo: echo mismatch" >&2; exit 1; }

say "an HTTP request through the gateway: curl -> kas -> tunnel -> agentd -> upstream"
"$KASCTL" token --secret-file "$DIR/api-secret" > "$DIR/jwt"
echo "GET http://127.0.0.1:$HP/api/v1/agents/7/services/web/hello.txt"
body=$(curl -sS -H "Authorization: Bearer $(cat "$DIR/jwt")" \
  "http://127.0.0.1:$HP/api/v1/agents/7/services/web/hello.txt")
echo "body:     $body"
[[ $body == "hello over HTTP, through kas and the agent" ]] ||
  { echo "demo: HTTP body mismatch" >&2; exit 1; }
echo "GET http://127.0.0.1:$HP/api/v1/agents (the connected agents)"
curl -sS -H "Authorization: Bearer $(cat "$DIR/jwt")" \
  "http://127.0.0.1:$HP/api/v1/agents" | sed 's/^/    /'

say "64 MiB through the tunnel and back, checked"
head -c $((64 << 20)) /dev/urandom > "$DIR/payload"
start=$(date +%s.%N)
"$KASCTL" pipe --kas "tcp://127.0.0.1:$PP" --secret-file "$DIR/api-secret" \
  --agent 7 --service echo < "$DIR/payload" > "$DIR/payload.back"
end=$(date +%s.%N)
cmp -s "$DIR/payload" "$DIR/payload.back" || { echo "demo: payload mismatch" >&2; exit 1; }
awk -v s="$start" -v e="$end" 'BEGIN { printf "byte-exact; %.0f MiB/s each way\n", 64 / (e - s) }'

say "errors a caller can act on"
echo x | "$KASCTL" pipe --kas "tcp://127.0.0.1:$PP" --secret-file "$DIR/api-secret" \
  --agent 7 --service no-such-service || true
echo x | "$KASCTL" pipe --kas "tcp://127.0.0.1:$PP" --secret-file "$DIR/agent-token" \
  --agent 7 --service echo 2>&1 | sed 's/^/    /' || true

say "shutting down (SIGTERM drains)"
kill "${PIDS[3]}"; wait "${PIDS[3]}" 2>/dev/null || true
kill "${PIDS[2]}"; wait "${PIDS[2]}" 2>/dev/null || true
echo "kasd log (last lines):"
tail -n 5 "$DIR/kasd.log" | sed 's/^/    /'
echo
echo "demo: OK"
