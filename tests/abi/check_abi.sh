#!/usr/bin/env bash
# ABI check for the shared library (suite 'abi').
#
# usage: check_abi.sh LIBRARY SYMFILE SOVERSION HEADER...
#
# Fails unless
#   - every symbol the library defines in its dynamic table starts with kr_
#     (not kr__, the internal prefix) and is listed in the version script;
#   - every name the version script lists is exported, as a function;
#   - every KR_API function declared in the public headers is listed, and
#     every listed name is declared KR_API in a public header;
#   - the SONAME is libkasroute.so.SOVERSION.
set -euo pipefail

if (($# < 3)); then
  echo "usage: $0 LIBRARY SYMFILE SOVERSION HEADER..." >&2
  exit 2
fi
lib=$1 symfile=$2 soversion=$3
shift 3

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Dynamic symbols the library defines: "TYPE NAME" with the @@VERSION suffix
# removed. Type A entries are the version nodes themselves.
nm -D --defined-only "$lib" |
  awk 'NF >= 3 && $2 != "A" { sub(/@.*/, "", $3); print $2, $3 }' |
  sort -u -k2 >"$tmp/defined"
awk '{ print $2 }' "$tmp/defined" | sort -u >"$tmp/exported"
awk '$1 ~ /^[TWi]$/ { print $2 }' "$tmp/defined" | sort -u >"$tmp/functions"

# Names in the global: parts of the version script (comments removed).
perl -0777 -ne '
  s{/\*.*?\*/}{}gs; s{//[^\n]*}{}g;
  while (/\{(.*?)\}/gs) {
    my $mode = "global";
    for my $t (split /;/, $1) {
      $t =~ s/^\s+|\s+$//g;
      $mode = $1 if $t =~ s/^(global|local)\s*:\s*//;
      print "$t\n" if length $t && $mode eq "global";
    }
  }' "$symfile" | sort -u >"$tmp/listed"

# Functions declared KR_API in the public headers (comments and
# preprocessor lines removed first, so the KR_API definition is skipped).
perl -0777 -ne '
  s{/\*.*?\*/}{}gs; s{//[^\n]*}{}g; s{^\s*#.*$}{}mg;
  while (/\bKR_API\b[^;{}]*?\b(\w+)\s*\(/gs) { print "$1\n" }' "$@" |
  sort -u >"$tmp/declared"

echo "library:  $lib"
echo "exported: $(wc -l <"$tmp/exported") symbols ($(wc -l <"$tmp/functions") functions)"
echo "listed:   $(wc -l <"$tmp/listed") names in $(basename "$symfile")"
echo "declared: $(wc -l <"$tmp/declared") KR_API functions in $# headers"

[[ -s $tmp/exported ]] || fail "no symbols exported at all"

while read -r s; do
  case $s in
    kr__*) fail "internal symbol exported: $s" ;;
    kr_*) ;;
    *) fail "exported symbol without the kr_ prefix: $s" ;;
  esac
done <"$tmp/exported"

comm -23 "$tmp/exported" "$tmp/listed" | while read -r s; do
  echo "FAIL: exported but not listed in $(basename "$symfile"): $s" >&2
  echo x
done >"$tmp/unlisted"
failures=$((failures + $(wc -l <"$tmp/unlisted")))

while read -r s; do
  if ! grep -qxF "$s" "$tmp/exported"; then
    fail "listed in $(basename "$symfile") but not exported: $s"
  elif ! grep -qxF "$s" "$tmp/functions"; then
    fail "listed and exported, but not as a function: $s"
  fi
  grep -qxF "$s" "$tmp/declared" ||
    fail "listed in $(basename "$symfile") but declared KR_API in no public header: $s"
done <"$tmp/listed"

while read -r s; do
  grep -qxF "$s" "$tmp/listed" ||
    fail "declared KR_API but missing from $(basename "$symfile"): $s"
done <"$tmp/declared"

soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
want="libkasroute.so.$soversion"
if [[ $soname != "$want" ]]; then
  fail "SONAME is '${soname:-<none>}', expected '$want'"
else
  echo "soname:   $soname"
fi

if ((failures)); then
  echo "abi: $failures problem(s)" >&2
  exit 1
fi
echo "abi: OK"
