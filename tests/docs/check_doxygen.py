#!/usr/bin/env python3
"""Every public declaration of include/kasroute/*.h is documented.

Runs Doxygen with the project's configuration (docs/Doxyfile, configured by
meson from docs/Doxyfile.in) plus WARN_IF_UNDOCUMENTED=YES, writing into a
temporary directory, and fails when Doxygen reports any warning: an
undocumented function, type, enum value, struct member or macro, or a
comment Doxygen cannot parse. The warnings are printed as file:line: text.

usage: check_doxygen.py DOXYFILE [DOXYGEN]
Exits 77 (meson: skipped) when Doxygen is not installed.
"""
import os
import shutil
import subprocess
import sys
import tempfile


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    doxyfile = sys.argv[1]
    doxygen = sys.argv[2] if len(sys.argv) == 3 and sys.argv[2] else None
    doxygen = doxygen or shutil.which("doxygen")
    if not doxygen or not os.access(doxygen, os.X_OK):
        print("SKIP: doxygen is not installed (Debian package 'doxygen'); "
              "the public headers' documentation was NOT checked",
              file=sys.stderr)
        return 77
    with tempfile.TemporaryDirectory(prefix="kr-doxygen-") as tmp:
        log = os.path.join(tmp, "warnings.log")
        conf = os.path.join(tmp, "Doxyfile")
        # Later tags override those of the included file.
        with open(conf, "w") as f:
            f.write('@INCLUDE = "%s"\n' % doxyfile)
            f.write('OUTPUT_DIRECTORY = "%s"\n' % tmp)
            f.write('WARN_LOGFILE = "%s"\n' % log)
            f.write("WARN_IF_UNDOCUMENTED = YES\n")
            f.write("WARN_IF_DOC_ERROR = YES\n")
            f.write("WARN_AS_ERROR = NO\n")
            f.write("QUIET = YES\n")
        run = subprocess.run([doxygen, conf], cwd=tmp, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=120)
        out = run.stdout.decode("utf-8", "replace").strip()
        warnings = ""
        if os.path.exists(log):
            with open(log, encoding="utf-8", errors="replace") as f:
                warnings = f.read().strip()
        if run.returncode != 0:
            print("doxygen failed (exit %d):\n%s\n%s" %
                  (run.returncode, out, warnings), file=sys.stderr)
            return 1
        if warnings:
            lines = warnings.splitlines()
            print("%d Doxygen warning(s): every public declaration needs a "
                  "comment directly above it (see docs/API.md, "
                  "\"Generated reference\"):" % len(lines), file=sys.stderr)
            print(warnings, file=sys.stderr)
            return 1
        html = os.path.join(tmp, "html", "index.html")
        if not os.path.exists(html):
            print("doxygen wrote no %s\n%s" % (html, out), file=sys.stderr)
            return 1
    print("ok: Doxygen found every public declaration documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
