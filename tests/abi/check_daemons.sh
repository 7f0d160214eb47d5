#!/usr/bin/env bash
# The daemons use the public API only (suite 'abi').
#
# usage: check_daemons.sh SYMFILE PROGRAM...
#
# Fails unless each program
#   - needs libkasroute.so (it is linked against the shared library, not
#     the internal static one);
#   - defines no libkasroute function itself (no kr_ or kr__ symbol in its
#     own symbol table: nothing of the library was linked in);
#   - imports only kr_ functions listed in the version script.
set -euo pipefail

if (($# < 2)); then
  echo "usage: $0 SYMFILE PROGRAM..." >&2
  exit 2
fi
symfile=$1
shift

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

listed=$(perl -0777 -ne 's{/\*.*?\*/}{}gs; print "$1\n" while /^\s*(kr_\w+);/mg' "$symfile" | sort -u)

for prog in "$@"; do
  name=$(basename "$prog")
  if ! readelf -d "$prog" | grep -q 'NEEDED.*\[libkasroute\.so'; then
    fail "$name does not link libkasroute.so"
  fi
  own=$(nm --defined-only "$prog" 2>/dev/null | awk '$3 ~ /^kr_/ { print $3 }' || true)
  if [[ -n "$own" ]]; then
    fail "$name defines library symbols itself: $(echo "$own" | head -5 | tr '\n' ' ')"
  fi
  imported=$(nm -D --undefined-only "$prog" | awk '{ sub(/@.*/, "", $2); print $2 }' | grep '^kr_' | sort -u || true)
  if [[ -z "$imported" ]]; then
    fail "$name imports no kr_ function"
  fi
  extra=$(comm -23 <(echo "$imported") <(echo "$listed"))
  if [[ -n "$extra" ]]; then
    fail "$name imports names outside the version script: $extra"
  fi
  echo "$name: $(echo "$imported" | wc -l) public functions, nothing internal"
done

if ((failures)); then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "daemons use the public API only"
