#!/bin/sh
# tests/integration/fork-deadlock.sh -- issue 11's two fork() scenarios run as
# the issue ran them: tests/integration/fork-repro (a program linked with
# nothing of libcalloc's) under LD_PRELOAD of libcalloc.so, each under
# `timeout`, so that a deadlock fails the test instead of hanging it.  Each
# scenario runs 3 times, 3 s each at CALLOC_TEST_SCALE=100; a run on glibc's
# malloc is printed next to the first for comparison (not asserted: glibc is
# not under test).  Exit 77 when libcalloc.so provides no malloc.

set -u
. "$(dirname "$0")/preload-common.sh"

repro=$top_builddir/tests/integration/fork-repro
test -x "$repro" || { echo "FAIL: $repro was not built"; exit 1; }
seconds=$(awk "BEGIN { s = 3 * $scale / 100; if (s < 0.5) s = 0.5; print s }")
limit=$(awk "BEGIN { print int($seconds + 60) }")

status=0
for scenario in stdio signal; do
  for run in 1 2 3; do
    if test $run = 1; then
      if out=$(timeout -s KILL "$limit" "$repro" "$scenario" "$seconds" 2>&1); then
        echo "glibc     run $run: $out"
      else
        echo "glibc     run $run: $scenario failed or hung (status $?): $out"
      fi
    fi
    if out=$(LD_PRELOAD=$so timeout -s KILL "$limit" "$repro" "$scenario" "$seconds" 2>&1); then
      echo "libcalloc run $run: $out"
    else
      echo "FAIL: libcalloc run $run: $scenario failed or hung (status $?, killed after $limit s): $out"
      status=1
    fi
  done
done
exit $status
