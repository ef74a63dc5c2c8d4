#!/bin/sh
# tests/integration/bench-scripts.sh -- scripts/bench-compare and
# scripts/bench-workloads, the two drivers behind `make bench' and
# `make bench-workloads', run once each on a tiny workload.
#
# No figure is judged here (speed is measured by the benchmarks, not by tests):
# this checks that each driver runs to its end on glibc and libcalloc, prints
# its time table with a figure for both, writes its CSV, and takes the option
# of a secure build (a path that does not exist shows as `missing' in the
# table, not as a crash).  The drivers share their option parsing and allocator
# discovery, so a change to one can break the other: bench-workloads died with
# an AttributeError on every run from the day bench-compare gained
# --libcalloc-secure until this test was written.
#
# Environment (set by tests/local.mk): top_builddir, top_srcdir, CALLOC_OVERRIDE.
# Exit 77 (skip) when the override or the benchmarks are not built, or when
# python3 is missing.

set -u
. "$(dirname "$0")/preload-common.sh"
top_srcdir=${top_srcdir:-.}
if ! command -v python3 >/dev/null 2>&1; then
  echo "SKIP: python3 is not installed (the drivers are Python scripts)"
  exit 77
fi
bench=$top_builddir/bench/calloc-bench
workloads=$top_builddir/bench/calloc-workloads
for prog in "$bench" "$workloads"; do
  if test ! -x "$prog"; then
    echo "SKIP: $prog was not built"
    exit 77
  fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-scripts.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
status=0

# check NAME OUTPUT-FILE ROW-PREFIX: the driver's table has a row for the
# workload whose glibc and libcalloc cells are figures, and a row naming the
# secure build as missing.
check() {
  name=$1 out=$2 row=$3
  line=$(grep "^$row" "$out" | head -n 1)
  # | workload | glibc | libcalloc | ...: both cells numeric.
  cells=$(echo "$line" | awk -F'|' '{ gsub(/ /, "", $3); gsub(/ /, "", $4); print $3, $4 }')
  case $cells in
    [0-9]*" "[0-9]*) ;;
    *)
      echo "FAIL: $name: no figures for glibc and libcalloc in its table (row: '$line')"
      status=1 ;;
  esac
  if ! grep -q "libcalloc-secure.*missing" "$out"; then
    echo "FAIL: $name: the secure build that does not exist is not reported as missing"
    status=1
  fi
}

# drive SCRIPT ROW-PREFIX CSV ARGS...: runs scripts/SCRIPT on glibc, libcalloc
# and a secure build that does not exist, then checks its table (check) and
# that it wrote CSV.
drive() {
  script=$1 row=$2 csv=$3
  shift 3
  if python3 "$top_srcdir/scripts/$script" --libcalloc "$so" \
       --libcalloc-secure "$tmp/no-such-libcalloc.so" --allocators glibc,libcalloc,libcalloc-secure \
       "$@" > "$tmp/$script.out" 2>&1; then
    check "$script" "$tmp/$script.out" "$row"
    test -s "$csv" || { echo "FAIL: $script wrote no $(basename "$csv")"; status=1; }
  else
    echo "FAIL: scripts/$script exited with $?:"
    tail -n 20 "$tmp/$script.out"
    status=1
  fi
}

drive bench-compare "| pairs64" "$tmp/compare.csv" \
  --bench "$bench" --workloads pairs64 --quick --reps 1 --csv "$tmp/compare.csv"
drive bench-workloads "| database" "$tmp/workloads/runs.csv" \
  --bench "$workloads" --workloads database --scale 0.01 --reps 1 --no-charts --out "$tmp/workloads"

test "$status" = 0 && echo "PASS: bench-compare and bench-workloads run to their end"
exit "$status"
