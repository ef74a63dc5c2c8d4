#!/bin/sh
# tests/integration/workloads.sh -- the real-world workloads of bench/calloc-workloads
# run on libcalloc (LD_PRELOAD=$top_builddir/src/.libs/libcalloc.so), small.
#
# Every workload runs once at --scale 0.1 (the driver's --quick scale; about two
# seconds in all) under libcalloc and once on glibc's malloc.  Each run must exit 0
# with verify=ok (every block's pattern intact), its malloc must come from
# libcalloc.so (resp. libc), and both runs must make the same number of allocator
# calls: the workloads are deterministic for a seed, whatever the allocator.  Each
# run's count of calls of 50 ns or more must agree with its p99.9.
#
# Environment (set by tests/local.mk): top_builddir, CALLOC_OVERRIDE (1/0; read
# from config.h when unset).  Exit 77 (skip) when the override is not built.

set -u
. "$(dirname "$0")/preload-common.sh"
bench=$top_builddir/bench/calloc-workloads
if test ! -x "$bench"; then
  echo "SKIP: $bench was not built"
  exit 77
fi

# field LINE KEY: the value of KEY=... in a key=value line.
field() {
  echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

status=0
for workload in $("$bench" --list); do
  lib=$(env LD_PRELOAD="$so" BENCH_ALLOCATOR=libcalloc "$bench" "$workload" --quick --seed 7 2>&1)
  rc_lib=$?
  sys=$(env -u LD_PRELOAD "$bench" "$workload" --quick --seed 7 2>&1)
  rc_sys=$?
  line_lib=$(echo "$lib" | grep '^workload=' | tail -n 1)
  line_sys=$(echo "$sys" | grep '^workload=' | tail -n 1)
  ok=1
  if test "$rc_lib" != 0 || test "$(field "$line_lib" verify)" != ok; then
    echo "FAIL: $workload under libcalloc: exit $rc_lib:"
    echo "$lib" | tail -n 5
    ok=0
  elif test "$(field "$line_lib" malloc_from)" != libcalloc.so; then
    echo "FAIL: $workload: malloc came from $(field "$line_lib" malloc_from), not libcalloc.so"
    ok=0
  fi
  if test "$rc_sys" != 0 || test "$(field "$line_sys" verify)" != ok; then
    echo "FAIL: $workload on the system malloc: exit $rc_sys (test environment problem?):"
    echo "$sys" | tail -n 5
    ok=0
  fi
  if test "$ok" = 1 && test "$(field "$line_lib" ops)" != "$(field "$line_sys" ops)"; then
    echo "FAIL: $workload is not deterministic: $(field "$line_lib" ops) allocator calls under libcalloc," \
      "$(field "$line_sys" ops) on glibc (same seed)"
    ok=0
  fi
  # The tail count agrees with the p99.9: 0.1 % of the samples is 1 000 per million,
  # so a p99.9 of 50 ns or more means at least about that many calls of 50 ns or more,
  # and one below it at most about that many.
  for line in "$line_lib" "$line_sys"; do
    test "$ok" = 1 || break
    p999=$(field "$line" lat_p999_ns)
    ppm=$(field "$line" lat_over50_ppm)
    if ! awk -v p="$p999" -v c="$ppm" 'BEGIN { exit !(c != "" && c >= 0 && c <= 1000000 &&
                                                    (p < 50 || c >= 900) && (p > 48 || c <= 1100)) }'; then
      echo "FAIL: $workload: lat_over50_ppm=$ppm disagrees with lat_p999_ns=$p999 ($(field "$line" malloc_from))"
      ok=0
    fi
  done
  if test "$ok" = 1; then
    echo "ok: $workload: libcalloc $(field "$line_lib" wall_s) s, peak heap $(field "$line_lib" heap_peak_kb) KiB," \
      "p99.9 $(field "$line_lib" lat_p999_ns) ns ($(field "$line_lib" lat_over50_ppm) per million over 50 ns); glibc $(field "$line_sys" wall_s) s," \
      "$(field "$line_sys" heap_peak_kb) KiB, $(field "$line_sys" lat_p999_ns) ns"
  else
    status=1
  fi
done
exit $status
