#!/bin/sh
# tests/integration/guide-examples.sh -- every example of the user guide compiles
# against the built library and runs with exit status 0.
#
# An example is a fenced block of docs/guide/*.md whose info string is exactly
# "c++ example" (three backticks, then `c++ example`): a complete program.  If its
# first line is "// needs: CALLOC_X", it runs only when the build's config.h
# defines CALLOC_X, and is skipped with a message otherwise.  Each example is
# compiled with the build's compiler and flags (CXX, CXXFLAGS from the top
# Makefile, so a sanitizer build compiles them with its sanitizer), -std=c++20,
# the source tree's include/ and config.h, linked with the shared libcalloc
# (rpath to src/.libs) and run with a 60 s limit.  Failing programs' output is
# printed.  Exit 0 pass, 1 fail, 77 skip (no example, or no shared library).
#
# Environment (tests/local.mk): top_builddir, top_srcdir.

set -u
top_builddir=${top_builddir:-.}
top_srcdir=${top_srcdir:-$top_builddir}
libdir=$top_builddir/src/.libs
guide=$top_srcdir/docs/guide

if test ! -f "$libdir/libcalloc.so"; then
  echo "SKIP: $libdir/libcalloc.so was not built (static-only build?)"
  exit 77
fi
if test ! -d "$guide"; then
  echo "SKIP: no $guide"
  exit 77
fi

# The compiler and flags the library was built with.
make_var() {
  sed -n "s/^$1 = //p" "$top_builddir/Makefile" | head -n 1
}
cxx=$(make_var CXX)
cxxflags=$(make_var CXXFLAGS)
pthread=$(make_var PTHREAD_CFLAGS)
test -n "$cxx" || cxx=c++

work=$(mktemp -d "${TMPDIR:-/tmp}/guide-examples.XXXXXX") || exit 99
trap 'rm -rf "$work"' EXIT INT TERM

# Extract: one file per example, named after its guide file and position.
for md in "$guide"/*.md; do
  base=$(basename "$md" .md)
  awk -v dir="$work" -v base="$base" '
    /^```c\+\+ example[ \t]*$/ { n++; file = sprintf("%s/%s-%d.c++", dir, base, n); inside = 1; next }
    inside && /^```[ \t]*$/ { inside = 0; close(file); next }
    inside { print > file }
    END { if (inside) { print base ".md: example " n " is not closed" > "/dev/stderr"; exit 1 } }
  ' "$md" || exit 1
done

total=0 passed=0 failed=0 skipped=0
for src in "$work"/*.c++; do
  test -f "$src" || continue
  total=$((total + 1))
  name=$(basename "$src" .c++)
  need=$(sed -n '1s|^// needs: *\([A-Z_0-9]*\).*|\1|p' "$src")
  if test -n "$need" && ! grep -q "^#define $need 1" "$top_builddir/config.h"; then
    echo "SKIP: $name needs $need, which this build does not define"
    skipped=$((skipped + 1))
    continue
  fi
  # shellcheck disable=SC2086  # the flags are word lists
  if ! $cxx -std=c++20 $cxxflags $pthread -Wall -Wextra -Werror \
      -I"$top_srcdir/include" -I"$top_builddir" \
      "$src" -o "$work/$name" -L"$libdir" -lcalloc -Wl,-rpath,"$(cd "$libdir" && pwd)" \
      >"$work/$name.cc.log" 2>&1; then
    echo "FAIL: $name does not compile:"
    cat "$work/$name.cc.log"
    failed=$((failed + 1))
    continue
  fi
  if timeout 60 "$work/$name" >"$work/$name.out" 2>&1; then
    echo "ok: $name: $(head -n 1 "$work/$name.out")"
    passed=$((passed + 1))
  else
    echo "FAIL: $name exited with status $?; its output:"
    cat "$work/$name.out"
    failed=$((failed + 1))
  fi
done

echo "guide examples: $total found, $passed passed, $failed failed, $skipped skipped"
if test "$total" -eq 0; then
  echo "SKIP: no 'c++ example' block in $guide"
  exit 77
fi
test "$failed" -eq 0
