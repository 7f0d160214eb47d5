#!/usr/bin/env python3
"""docs/API.md agrees with the code it describes.

Checks:
  1. the first ```c block after the heading "A minimal agent" equals
     examples/minimal_agent.c byte for byte;
  2. examples/minimal_agent.c has fewer than 60 lines;
  3. every identifier kr_xxx( named anywhere in docs/API.md (prose, tables
     and code) is declared in include/kasroute/*.h: as a function
     (KR_API prototype) or as a callback type;
  4. every relative link of docs/API.md to a file of the repository points
     at a file that exists.

usage: check_api_md.py SOURCE_ROOT
"""
import glob
import os
import re
import sys

MAX_LINES = 60  # examples/minimal_agent.c must stay below this


def minimal_agent_block(md):
    """The body of the first ```c block under the "A minimal agent"
    heading, or None."""
    m = re.search(r"^#+[ \t]+A minimal agent[ \t]*$", md, re.M)
    if not m:
        return None
    rest = md[m.end():]
    nxt = re.search(r"^#+[ \t]", rest, re.M)
    section = rest[:nxt.start()] if nxt else rest
    b = re.search(r"^```c[ \t]*\n(.*?)^```[ \t]*$", section, re.M | re.S)
    return b.group(1) if b else None


def declared_names(root):
    """kr_* names declared in the public headers (functions and callback
    types), read from the code with the comments removed."""
    names = set()
    for path in sorted(glob.glob(os.path.join(root, "include", "kasroute",
                                              "*.h"))):
        with open(path, encoding="utf-8") as f:
            code = re.sub(r"/\*.*?\*/", " ", f.read(), flags=re.S)
        # Function prototypes: "kr_name(" outside comments.
        names.update(re.findall(r"\b(kr_[a-z0-9_]+)\s*\(", code))
        # Callback types: "(*kr_name)(".
        names.update(re.findall(r"\(\s*\*\s*(kr_[a-z0-9_]+)\s*\)\s*\(", code))
    return names


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[1]
    api_md = os.path.join(root, "docs", "API.md")
    example = os.path.join(root, "examples", "minimal_agent.c")
    problems = []

    with open(api_md, "rb") as f:
        md_bytes = f.read()
    md = md_bytes.decode("utf-8")

    # 1 and 2: the listing is the example, and the example is short.
    if not os.path.exists(example):
        problems.append("examples/minimal_agent.c does not exist")
    else:
        with open(example, "rb") as f:
            ex = f.read()
        block = minimal_agent_block(md)
        if block is None:
            problems.append('docs/API.md has no ```c block under a heading '
                            '"A minimal agent"')
        elif block.encode("utf-8") != ex:
            got = block.encode("utf-8").splitlines(keepends=True)
            want = ex.splitlines(keepends=True)
            where = next((i for i, (a, b) in enumerate(zip(got, want))
                          if a != b), min(len(got), len(want)))
            problems.append(
                "the listing under \"A minimal agent\" differs from "
                "examples/minimal_agent.c from line %d on (listing: %r, "
                "file: %r)" % (where + 1,
                               got[where] if where < len(got) else b"<end>",
                               want[where] if where < len(want) else b"<end>"))
        lines = ex.count(b"\n") + (0 if ex.endswith(b"\n") or not ex else 1)
        if lines >= MAX_LINES:
            problems.append("examples/minimal_agent.c has %d lines; it must "
                            "have fewer than %d" % (lines, MAX_LINES))

    # 3: every kr_xxx( in the guide is a real declaration.
    declared = declared_names(root)
    if not declared:
        problems.append("no kr_* declarations found in include/kasroute/*.h")
    mentioned = {}
    for no, line in enumerate(md.splitlines(), 1):
        for name in re.findall(r"\b(kr_[a-z0-9_]+)\(", line):
            mentioned.setdefault(name, no)
    for name, no in sorted(mentioned.items(), key=lambda x: x[1]):
        if name not in declared:
            problems.append("docs/API.md:%d: %s() is not declared in "
                            "include/kasroute/*.h" % (no, name))

    # 4: relative links to repository files exist.
    for no, line in enumerate(md.splitlines(), 1):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            path = os.path.normpath(os.path.join(root, "docs", target))
            if not os.path.exists(path):
                problems.append("docs/API.md:%d: link to %s: no such file"
                                % (no, target))

    if problems:
        for p in problems:
            print("FAIL: " + p, file=sys.stderr)
        return 1
    print("ok: minimal agent listing matches (%d lines); %d kr_*() names "
          "checked against the headers" % (lines, len(mentioned)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
