# tests/integration/preload-common.sh -- sourced (not run) by the scripts that
# start programs under LD_PRELOAD of libcalloc: preload.sh, real-programs.sh and
# workloads.sh.
#
# Reads top_builddir, CALLOC_TEST_SCALE and CALLOC_OVERRIDE (tests/local.mk sets
# them; CALLOC_OVERRIDE is read from config.h when unset) and sets
#   scale  CALLOC_TEST_SCALE as a positive percentage (default 100),
#   so     the absolute path of the built libcalloc.so.
# Exits 77 (skip) with the reason when libcalloc.so was not built, or was built
# with --disable-override (it then provides no malloc to preload).

top_builddir=${top_builddir:-.}
scale=${CALLOC_TEST_SCALE:-100}
case $scale in '' | *[!0-9]*) scale=100 ;; esac
test "$scale" -gt 0 || scale=100

if test ! -f "$top_builddir/src/.libs/libcalloc.so"; then
  echo "SKIP: $top_builddir/src/.libs/libcalloc.so was not built"
  exit 77
fi
so=$(cd "$top_builddir/src/.libs" && pwd)/libcalloc.so

override=${CALLOC_OVERRIDE:-}
if test -z "$override"; then
  if grep -q '^#define CALLOC_OVERRIDE 1' "$top_builddir/config.h" 2>/dev/null; then override=1; else override=0; fi
fi
if test "$override" != 1; then
  echo "SKIP: built with --disable-override: libcalloc.so provides no malloc to preload"
  exit 77
fi
