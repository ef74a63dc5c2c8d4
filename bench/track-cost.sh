#!/bin/sh
# bench/track-cost.sh -- what allocation tracking costs (issue 14), side by side
# in one invocation on calloc-bench's workloads:
#   out       libcalloc built without --enable-tracking   (NOTRACK_SO)
#   in-off    built with it, LIBCALLOC_OPTIONS unset      (LIBCALLOC_SO)
#   sample    profile=/dev/null: sampling at the default rate (512 KiB)
#   full      leak_report=/dev/null: every allocation tracked
#   heaptrack heaptrack (Debian package) recording the "out" run
# For each: wall and CPU ns per op, peak RSS, the size of the data written, and
# the ratio of time to "out".  With --callgrind, the instructions per op of
# out, in-off and sample under callgrind as well (exact, unlike times on a
# shared machine): the measurement behind --enable-tracking's default.
#
# With BEFORE_SO set (another build's libcalloc.so with tracking, e.g. the
# main branch's), its sample and full rows follow ours, as sample@before and
# full@before: a change to the tracker measured before and after in one run.
#
# usage: bench/track-cost.sh [--ops N] [--callgrind] [WORKLOAD...]
# env:   CALLOC_BENCH (bench/calloc-bench), LIBCALLOC_SO, NOTRACK_SO, BEFORE_SO
set -u
ops=1000000
callgrind=no
workloads=
while test $# -gt 0; do
  case $1 in
    --ops) ops=$2; shift ;;
    --callgrind) callgrind=yes ;;
    *) workloads="$workloads $1" ;;
  esac
  shift
done
test -n "$workloads" || workloads="pairs64 random-window threads-own"
bench=${CALLOC_BENCH:-bench/calloc-bench}
so=${LIBCALLOC_SO:-src/.libs/libcalloc.so}
out_so=${NOTRACK_SO:?set NOTRACK_SO to a libcalloc.so built without --enable-tracking}
before_so=${BEFORE_SO:-}
before_cfgs=
test -z "$before_so" || before_cfgs="sample@before full@before"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/track-cost.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" "$2"; }

printf '%-14s %-13s %10s %10s %8s %12s %11s\n' workload config ns/op cpu-ns/op ratio peak-rss-kb data-bytes
for w in $workloads; do
  base=
  for cfg in out in-off sample full $before_cfgs heaptrack; do
    rm -f "$tmp"/data*
    case $cfg in
      out) env LD_PRELOAD="$out_so" "$bench" "$w" --ops "$ops" >"$tmp/line" ;;
      in-off) env LD_PRELOAD="$so" "$bench" "$w" --ops "$ops" >"$tmp/line" ;;
      sample) env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="profile=$tmp/data" "$bench" "$w" --ops "$ops" >"$tmp/line" ;;
      full) env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="leak_report=$tmp/data.leaks,profile=$tmp/data,sample=1" \
              "$bench" "$w" --ops "$ops" >"$tmp/line" ;;
      sample@before) env LD_PRELOAD="$before_so" LIBCALLOC_OPTIONS="profile=$tmp/data" "$bench" "$w" --ops "$ops" >"$tmp/line" ;;
      full@before) env LD_PRELOAD="$before_so" LIBCALLOC_OPTIONS="leak_report=$tmp/data.leaks,profile=$tmp/data,sample=1" \
              "$bench" "$w" --ops "$ops" >"$tmp/line" ;;
      heaptrack)
        command -v heaptrack >/dev/null 2>&1 || { echo "heaptrack not installed"; continue; }
        # heaptrack preloads its own library and runs the program with it.
        env LD_PRELOAD="$out_so" heaptrack -o "$tmp/data" "$bench" "$w" --ops "$ops" 2>/dev/null |
          grep "^workload=" >"$tmp/line" ;;
    esac
    ns=$(field ns_per_op "$tmp/line")
    cpu=$(field cpu_ns_per_op "$tmp/line")
    rss=$(field peak_rss_kb "$tmp/line")
    data=$(cat "$tmp"/data* 2>/dev/null | wc -c)
    test -n "$base" || base=$cpu
    ratio=$(awk -v a="$cpu" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    printf '%-14s %-13s %10s %10s %8s %12s %11s\n' "$w" "$cfg" "$ns" "$cpu" "$ratio" "$rss" "$data"
  done
done

if test $callgrind = yes; then
  command -v valgrind >/dev/null 2>&1 || { echo "valgrind not installed: no instruction counts"; exit 0; }
  cg_ops=$((ops / 10))
  echo
  printf '%-14s %-13s %14s %10s\n' workload config instructions ins/op
  for w in $workloads; do
    for cfg in out in-off sample ${before_so:+sample@before}; do
      case $cfg in
        out) lib=$out_so; opts= ;;
        in-off) lib=$so; opts= ;;
        sample) lib=$so; opts="profile=$tmp/data" ;;
        sample@before) lib=$before_so; opts="profile=$tmp/data" ;;
      esac
      env LD_PRELOAD="$lib" LIBCALLOC_OPTIONS="$opts" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$bench" "$w" --ops "$cg_ops" --no-pin >/dev/null 2>"$tmp/cg"
      ins=$(sed -n 's/.*Collected : *\([0-9]*\).*/\1/p' "$tmp/cg")
      printf '%-14s %-13s %14s %10s\n' "$w" "$cfg" "$ins" "$(awk -v i="$ins" -v o="$cg_ops" 'BEGIN { printf "%.1f", i / o }')"
    done
  done
fi
