#!/bin/sh
# tests/integration/headers.sh -- every public header compiles on its own, as a
# user's first #include, with strict warnings as errors: libcalloc.h as C (C99,
# C11: -Wall -Wextra -pedantic -Wstrict-prototypes) and as C++, each C++ header
# with -std=c++20 -Wall -Wextra -Wpedantic -Wshadow -Wconversion
# -Wsign-conversion -Wold-style-cast, by g++ and by clang++ when installed.  And
# below C++20, <custom_alloc.h++> stops with one error that names C++20 (it gave
# dozens about operator<=> and concepts).  Exit 0 pass, 1 fail.
#
# Environment (tests/local.mk): top_srcdir.
set -u
top_srcdir=${top_srcdir:-.}
inc=$top_srcdir/include
tmp=$(mktemp -d "${TMPDIR:-/tmp}/calloc-headers.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() {
  echo "FAIL: $*"
  sed 's/^/    /' "$tmp/out" | head -20
  failed=1
}

cc=${CC_FOR_HEADERS:-gcc}
if command -v "$cc" >/dev/null 2>&1; then
  printf '#include <libcalloc.h>\nint main(void) { return lca_version() ? 0 : 1; }\n' > "$tmp/c.c"
  for std in c99 c11; do
    if "$cc" -std=$std -Wall -Wextra -pedantic -Wstrict-prototypes -Werror -I"$inc" \
         -fsyntax-only "$tmp/c.c" >"$tmp/out" 2>&1; then
      echo "ok: libcalloc.h, $cc -std=$std"
    else
      fail "libcalloc.h with $cc -std=$std"
    fi
  done
fi

headers="libcalloc.h custom_alloc.h++"
for h in "$inc"/custom_alloc/*.h++; do headers="$headers custom_alloc/${h##*/}"; done
for cxx in g++ clang++; do
  command -v $cxx >/dev/null 2>&1 || { echo "note: $cxx not found"; continue; }
  for h in $headers; do
    printf '#include <%s>\nint main() { return 0; }\n' "$h" > "$tmp/t.c++"
    if $cxx -std=c++20 -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Wold-style-cast \
         -Werror -I"$inc" -fsyntax-only "$tmp/t.c++" >"$tmp/out" 2>&1; then
      echo "ok: $h, $cxx -std=c++20"
    else
      fail "$h with $cxx -std=c++20"
    fi
  done
  printf '#include <custom_alloc.h++>\n' > "$tmp/t.c++"
  $cxx -std=c++17 -I"$inc" -fsyntax-only "$tmp/t.c++" >"$tmp/out" 2>&1
  errors=$(grep -c 'error:' "$tmp/out")
  if test "$errors" -eq 1 && grep -q 'need C++20' "$tmp/out"; then
    echo "ok: custom_alloc.h++ under $cxx -std=c++17: one error naming C++20"
  else
    fail "custom_alloc.h++ under $cxx -std=c++17: $errors error lines, not one naming C++20"
  fi
done
exit $failed
