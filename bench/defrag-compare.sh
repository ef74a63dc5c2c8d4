#!/bin/sh
# bench/defrag-compare.sh [MiB] -- the RSS of a fragmented heap (MiB of 48..4096-byte
# blocks, 90 % freed at random) on glibc, jemalloc, tcmalloc and mimalloc (which
# cannot move objects) and on libcalloc after one defragmentation pass, side by
# side, with each ratio to libcalloc's.  Run from the build directory.  Noisy on a
# shared machine: compare within one invocation only.
mib=${1:-1024}
bench=${DEFRAG_BENCH:-bench/defrag-bench}
lib=/usr/lib/x86_64-linux-gnu
printf '%-10s %14s %14s %8s\n' allocator fragmented_MiB after_MiB ratio
ours=$("$bench" rss-libcalloc "$mib") || exit 1
ours_after=$(echo "$ours" | awk '{print $4}')
printf '%-10s %14s %14s %8s\n' libcalloc "$(echo "$ours" | awk '{print $2}')" "$ours_after" 1.00
for pair in glibc: jemalloc:$lib/libjemalloc.so.2 tcmalloc:$lib/libtcmalloc_minimal.so.4 \
            mimalloc:$lib/libmimalloc.so.2; do
  name=${pair%%:*} so=${pair#*:}
  if [ -n "$so" ] && [ ! -e "$so" ]; then printf '%-10s (not installed)\n' "$name"; continue; fi
  out=$(LD_PRELOAD=$so "$bench" rss-malloc "$mib") || continue
  after=$(echo "$out" | awk '{print $4}')
  printf '%-10s %14s %14s %8.2f\n' "$name" "$(echo "$out" | awk '{print $2}')" "$after" \
    "$(echo "$after $ours_after" | awk '{ if ($2 > 0) print $1 / $2; else print 0 }')"
done
