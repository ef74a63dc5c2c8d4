#!/bin/sh
# tests/integration/track-pprof.sh -- the process heap's profile in gperftools'
# heap-profile format (LIBCALLOC_OPTIONS=profile=PATH,profile_format=pprof) is
# read by google-pprof (Debian package google-perftools), which names
# hot_allocator as the function with the most allocated objects and bytes.
# Exits 77 (skip) without google-pprof, libcalloc.so, the override or tracking.

set -u
name=pprof
. "$(dirname "$0")/track-common.sh"
pprof=$(command -v google-pprof || command -v pprof) || {
  echo "SKIP: google-pprof is not installed (Debian package google-perftools)"
  exit 77
}

env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="profile=$tmp/demo.heap,profile_format=pprof,sample=1" "$demo" hot || {
  echo "FAIL: track-demo hot exited $?"
  exit 1
}
head -n 1 "$tmp/demo.heap"
status=0
for what in --alloc_objects --alloc_space; do
  "$pprof" --text $what "$demo" "$tmp/demo.heap" >"$tmp/out" 2>"$tmp/err"
  top=$(grep -E '^ +[0-9.]+ +[0-9.]+%' "$tmp/out" | head -n 1)
  echo "pprof $what: $top"
  case $top in
    *hot_allocator*) ;;
    *)
      echo "FAIL: google-pprof --text $what does not name hot_allocator first:"
      cat "$tmp/out" "$tmp/err"
      status=1
      ;;
  esac
done
exit $status
