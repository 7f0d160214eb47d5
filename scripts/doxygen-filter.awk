#!/usr/bin/awk -f
# Doxygen INPUT_FILTER for the public headers (docs/Doxyfile.in).
#
# The headers use plain C comments with one convention: a comment placed
# directly above a declaration (no blank line between) documents it, and
# documents every declaration of the run that follows it up to the next
# blank line or comment (for example one comment above kr_kas_agent_port()
# and its three sister functions). This filter turns that convention into
# Doxygen syntax without touching the files:
#   - the file's opening comment gets "@file" (the file's description);
#   - a comment directly above a declaration becomes a "/**" comment;
#     a run of two or more declarations under it is wrapped, with the
#     comment, in a member group ("/**@{*/ ... /**@}*/") so that
#     DISTRIBUTE_GROUP_DOC gives all of them that comment;
#   - a comment after code on the same line (enum values, struct members,
#     macro values) becomes a "/**<" comment;
#   - "<", ">" and "&" inside comments are escaped so that Doxygen does not
#     read "<kasroute/mux.h>" as HTML.
# Other comments (section rulers followed by a blank line) stay plain and
# Doxygen ignores them. Line numbers are preserved, so Doxygen's warnings
# point at the real lines.

function is_blank(s) { return s ~ /^[ \t]*$/ }
function starts_comment(s) { return s ~ /^[ \t]*\/\*/ }

# Index of the line that closes the comment opened on line i.
function comment_end(i, rest, j) {
  rest = L[i]
  sub(/^[ \t]*\/\*/, "", rest)
  if (index(rest, "*/"))
    return i
  for (j = i + 1; j <= n; j++)
    if (index(L[j], "*/"))
      return j
  return n
}

# Escapes HTML-significant characters in the text part of a comment line.
function esc(s) {
  gsub(/&/, "\\&amp;", s)
  gsub(/</, "\\&lt;", s)
  gsub(/>/, "\\&gt;", s)
  return s
}

# Code part of a line without a trailing comment (for counting ";").
function code_of(s, p) {
  p = index(s, "/*")
  if (p)
    s = substr(s, 1, p - 1)
  p = index(s, "//")
  if (p)
    s = substr(s, 1, p - 1)
  sub(/[ \t]+$/, "", s)
  return s
}

{ L[++n] = $0 }

END {
  seen_code = 0
  first_comment_done = 0
  i = 1
  while (i <= n) {
    line = L[i]
    if (starts_comment(line)) {
      j = comment_end(i)
      # Escape the text of every line of the block; the delimiters have no
      # HTML-significant characters.
      for (k = i; k <= j; k++)
        L[k] = esc(L[k])
      nx = j + 1
      if (!first_comment_done && !seen_code) {
        # The file's description.
        sub(/\/\*/, "/**", L[i])
        sub(/\*\/[ \t]*$/, "@file */", L[j])
        first_comment_done = 1
      } else if (nx <= n && !is_blank(L[nx]) && !starts_comment(L[nx]) &&
                 (L[nx] !~ /^[ \t]*#/ || L[nx] ~ /^[ \t]*#[ \t]*define/)) {
        sub(/\/\*/, "/**", L[i])
        # The run of declarations this comment documents.
        # Declarations end with ";" outside braces (a struct's members
        # are its own business) or are one #define each.
        decls = 0
        depth = 0
        last = nx
        for (k = nx; k <= n && !is_blank(L[k]) && !starts_comment(L[k]); k++) {
          c = code_of(L[k])
          depth += gsub(/{/, "{", c) - gsub(/}/, "}", c)
          if ((depth == 0 && c ~ /;$/) || L[k] ~ /^[ \t]*#[ \t]*define/)
            decls++
          last = k
        }
        # The group opens before the comment (it documents the group's
        # first member) and closes at the start of the line after the run
        # (blank or a comment), so that no marker shares a line with a
        # #define.
        if (decls >= 2) {
          PRE[i] = PRE[i] "/**@{*/ "
          PRE[last + 1] = "/**@}*/ " PRE[last + 1]
        }
      }
      first_comment_done = 1
      i = j + 1
      continue
    }
    if (!is_blank(line))
      seen_code = 1
    # A comment after code on the same line documents that member.
    p = index(line, "/*")
    if (p && !is_blank(substr(line, 1, p - 1)) && substr(line, p, 3) != "/**") {
      pre = substr(line, 1, p - 1)
      post = substr(line, p + 2)
      if (index(post, "*/")) {
        L[i] = pre "/**<" esc(post)
        i++
        continue
      }
      L[i] = pre "/**<" esc(post)
      for (j = i + 1; j <= n && !index(L[j], "*/"); j++)
        L[j] = esc(L[j])
      if (j <= n)
        L[j] = esc(L[j])
      i = j + 1
      continue
    }
    i++
  }
  for (i = 1; i <= n; i++)
    print PRE[i] L[i] SUF[i]
}
