#!/usr/bin/env bash
# Install test (suite 'install').
#
# usage: check_install.sh MESON BUILDDIR SOURCEDIR PREFIX LIBDIR INCLUDEDIR
#                         VERSION SANITIZE
# environment: KR_CC  the C compiler command of the build (may hold spaces)
#
# Stages `meson install` into a temporary DESTDIR, then builds
# examples/mux_demo.c out of tree with nothing but the flags from the staged
# kasroute.pc (prefix redefined to the staging area) and runs it. This is
# what a user of the installed library does; it catches a missing header,
# a wrong Cflags/Libs line or a broken SONAME link.
#
# The build must be complete (`meson compile` first): the install runs with
# --no-rebuild because a nested ninja inside `meson test` is not safe.
set -euo pipefail

if (($# != 8)); then
  echo "usage: $0 MESON BUILDDIR SOURCEDIR PREFIX LIBDIR INCLUDEDIR VERSION SANITIZE" >&2
  exit 2
fi
meson=$1 builddir=$2 srcdir=$3 prefix=$4 libdir=$5 includedir=$6 version=$7
sanitize=$8
read -r -a cc <<<"${KR_CC:-cc}"

die() {
  echo "FAIL: $*" >&2
  exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stage=$tmp/stage

# Absolute form of a meson directory option (relative ones are under prefix).
absdir() {
  case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$prefix/$1" ;;
  esac
}
staged_prefix=$stage$prefix
staged_libdir=$stage$(absdir "$libdir")
staged_incdir=$stage$(absdir "$includedir")
pcdir=$staged_libdir/pkgconfig

echo "== meson install --destdir $stage"
"$meson" install -C "$builddir" --destdir "$stage" --no-rebuild --quiet ||
  die "meson install failed (was the build complete? run meson compile first)"

[[ -f $pcdir/kasroute.pc ]] || die "no kasroute.pc in $pcdir"
[[ -f $staged_incdir/kasroute/kasroute.h ]] ||
  die "no kasroute/kasroute.h in $staged_incdir"
# Every header the umbrella header includes must be installed too.
while read -r h; do
  [[ -f $staged_incdir/kasroute/$h ]] || die "kasroute.h includes $h, not installed"
done < <(sed -n 's/^#include <kasroute\/\(.*\)>.*/\1/p' \
  "$staged_incdir/kasroute/kasroute.h")
[[ -e $staged_libdir/libkasroute.so ]] || die "no libkasroute.so in $staged_libdir"
echo "installed: $(cd "$staged_libdir" && ls libkasroute.so*)"

# Prepended to the search path: kasroute.pc may name system packages in
# Requires.private (pkg-config reads them even without --static).
export PKG_CONFIG_PATH=$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
pc() { pkg-config --define-variable=prefix="$staged_prefix" "$@" kasroute; }
pc --exists || die "pkg-config cannot use kasroute.pc"
modversion=$(pc --modversion)
[[ $modversion == "$version" ]] ||
  die "kasroute.pc says version $modversion, the project is $version"
read -r -a cflags <<<"$(pc --cflags)"
read -r -a libs <<<"$(pc --libs)"
echo "pkg-config --cflags: ${cflags[*]}"
echo "pkg-config --libs:   ${libs[*]}"
[[ " ${cflags[*]} " == *" -I$staged_incdir "* ]] ||
  die "Cflags do not point at the staged include directory $staged_incdir"

san=()
[[ $sanitize == none || -z $sanitize ]] || san=("-fsanitize=$sanitize")

echo "== compile examples/mux_demo.c out of tree with ${cc[*]}"
"${cc[@]}" -std=c11 -Wall -Wextra -Werror -pedantic "${san[@]}" "${cflags[@]}" \
  "$srcdir/examples/mux_demo.c" -o "$tmp/mux_demo" "${libs[@]}" \
  "-Wl,-rpath,$staged_libdir" || die "out-of-tree compile failed"

# The program must load the staged library, not one from the build tree or
# the system. meson test points LD_LIBRARY_PATH at the build tree, which
# would win over the RUNPATH: drop it.
unset LD_LIBRARY_PATH
resolved=$(ldd "$tmp/mux_demo" | awk '$1 ~ /^libkasroute\.so/ { print $3 }')
[[ $resolved == "$staged_libdir"/* ]] ||
  die "mux_demo loads libkasroute from '${resolved:-nowhere}', not $staged_libdir"

echo "== run"
"$tmp/mux_demo" || die "mux_demo built against the installed library failed"

# An agent program (HTTP handler, its own libevent loop), the way a user
# builds one: pkg-config for both libraries.
echo "== compile examples/minimal_agent.c out of tree"
read -r -a evflags <<<"$(pkg-config --cflags --libs libevent)"
"${cc[@]}" -std=c11 -Wall -Wextra -Werror -Wno-unused-parameter "${san[@]}" \
  "${cflags[@]}" "$srcdir/examples/minimal_agent.c" -o "$tmp/minimal_agent" \
  "${libs[@]}" "${evflags[@]}" "-Wl,-rpath,$staged_libdir" ||
  die "out-of-tree compile of minimal_agent.c failed"
resolved=$(ldd "$tmp/minimal_agent" | awk '$1 ~ /^libkasroute\.so/ { print $3 }')
[[ $resolved == "$staged_libdir"/* ]] ||
  die "minimal_agent loads libkasroute from '${resolved:-nowhere}'"
# Without arguments it prints its usage and exits 2: it loaded and ran.
rc=0
"$tmp/minimal_agent" >/dev/null 2>"$tmp/usage" || rc=$?
[[ $rc == 2 ]] && grep -q usage "$tmp/usage" ||
  die "minimal_agent built against the installed library: exit $rc, $(cat "$tmp/usage")"
echo "install: OK"
