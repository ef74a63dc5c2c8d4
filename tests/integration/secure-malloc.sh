#!/bin/sh
# tests/integration/secure-malloc.sh -- the secure build's malloc and new catch
# misuse in a program that knows nothing of libcalloc (issue 13).
#
# tests/integration/secure-victim (built by make check, not linked with libcalloc)
# runs one misuse per case under LD_PRELOAD of this build's libcalloc.so.  A case
# passes when the program dies of SIGABRT with "libcalloc: PROBLEM" on stderr, or
# of SIGSEGV/SIGBUS where a guard page or a no-access page is the design (large
# overflow and underflow, large use after free, malloc(0)).  The ok-* cases must
# exit 0 (fresh memory zero, freed memory wiped, distinct malloc(0), C23
# free_sized/free_aligned_sized with the right values).  Skips when the build is
# not --enable-secure (its malloc is not the hardened heap) or has no override.
. "$(dirname "$0")/preload-common.sh"

if ! grep -q '^#define CALLOC_SECURE 1' "$top_builddir/config.h" 2>/dev/null; then
  echo "SKIP: this build is not configured with --enable-secure: malloc is not the hardened heap"
  exit 77
fi
victim=$top_builddir/tests/integration/secure-victim
test -x "$victim" || { echo "FAIL: $victim was not built"; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

# expect CASE abort TEXT | expect CASE fault | expect CASE ok
expect() {
  name=$1 kind=$2 text=${3:-}
  LD_PRELOAD=$so "$victim" "$name" >"$tmp/out" 2>"$tmp/err"
  status=$?
  case $kind in
    abort)
      if test $status -eq 134 && grep -q "libcalloc: $text" "$tmp/err"; then
        echo "ok: $name: $(head -1 "$tmp/err")"
        return
      fi ;;
    fault)
      if test $status -eq 139 || test $status -eq 135; then
        echo "ok: $name: fault (status $status)"
        return
      fi ;;
    ok)
      if test $status -eq 0; then
        echo "ok: $name"
        return
      fi ;;
  esac
  echo "FAIL: $name: expected $kind${text:+ \"$text\"}, got status $status, stderr: $(head -3 "$tmp/err")"
  failures=$((failures + 1))
}

for size in 24 20000 500000; do expect "double-free-$size" abort "Double free"; done
expect double-free-delayed abort "Double free"
expect double-delete abort "Double free"
for c in middle unaligned one stack global protnone readonly far; do expect "invalid-free-$c" abort "Invalid free"; done
expect invalid-realloc-middle abort "Invalid"
expect invalid-usable-size-middle abort "Invalid"
expect usable-size-freed abort "Use after free"
expect overflow-small abort "Canary corrupted"
expect overflow-medium abort "Canary corrupted"
expect overflow-realloc abort "Canary corrupted"
expect overflow-new abort "Canary corrupted"
expect overflow-large fault
expect underflow-large fault
expect write-after-free abort "Write after free"
expect read-after-free-large fault
expect write-after-free-large fault
expect malloc0-read fault
expect malloc0-write fault
expect delete-size-mismatch abort "Size mismatch"
expect delete-align-mismatch abort "Alignment mismatch"
expect delete-aligned-sized-mismatch abort "Size mismatch"
expect free-sized-mismatch abort "Size mismatch"
expect free-aligned-sized-mismatch abort "Alignment mismatch"
expect ok-free-sized ok
expect ok-memory ok

if test $failures -ne 0; then
  echo "FAIL: $failures case(s)"
  exit 1
fi
echo "PASS: every misuse was caught"
