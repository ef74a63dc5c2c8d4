#!/bin/sh
# tests/integration/track-rss.sh -- what sampling (LIBCALLOC_OPTIONS=profile=PATH,
# the default rate) costs in memory (issue 14: <= 1 % RSS), on small programs,
# where a fixed cost shows most.  Side by side, the same program under
# LD_PRELOAD of libcalloc.so without and with profile=PATH (figures: the
# smallest of 7 runs, memory not time: stable on a busy machine, but the
# kernel's fault-around maps a varying number of file pages, so single runs
# of one build differ by up to ~230 KiB; docs/design.md, "Tracking", has the
# measurements):
#   - tests/track/track-demo rss (5 000 small blocks, 4 threads in turn), at
#     the default rate and at sample=4096 (~5 000 samples, over 1 000 a
#     thread): the growth of RssAnon at the end of main is at most 56 KiB
#     and the growth of the peak RSS (file pages and the exit-time report
#     included) at most 736 KiB.  Measured 2026-12-05, 20 repetitions of this
#     test's smallest-of-7 at both rates: RssAnon +0..+32 KiB, peak
#     +120..+440 KiB, most +250..+290 (bound 544).  Session 18
#     (2026-12-06), the default rate, builds interleaved with one track-demo,
#     kB of peak without / with a profile / growth, min/median/max: that
#     build (c3cfab0, 38 reps) 7 788/7 822/7 960, 8 168/8 214/8 272,
#     +220/+376/+452; main at 1358e5d (46) 7 664/7 728/7 880,
#     8 132/8 184/8 232, +268/+426/+568; sample=4096 (8 each) +260..+424 and
#     +268..+464; `make -j2 check` read +564 once.  Not more memory for
#     tracking -- the run with a profile peaks 30 kB lower -- but less
#     without it (-94 kB): the small programs' page work since (f1496c6,
#     the common code in one 64 KiB text window: 7 780; d61a01d, read-only
#     data in RELRO, big tables in .lbss: 7 728) spares a program without
#     tracking pages that the sampler and its exit-time report still map.
#     The peak comes from the kernel's per-CPU RSS counters and moves by 64
#     KiB fault-around windows: each side's smallest of 7 lands on one of two
#     or three levels, and the growth spreads over ~300 kB.  The bound keeps
#     104 KiB above the largest growth measured, as 544 did.  The build of
#     the session before 2026-12-05's (whose fallback set-up walked libc's
#     and libgcc_s's .eh_frame in place and whose reports read libc's
#     .dynsym from its file), 10 repetitions:
#     RssAnon +28..+52, peak +416..+656, most +420..+480.  Twice today's
#     cost would fail the RssAnon bound and about half the peak checks (the
#     peak's noise is as large as the cost); with libunwind's 256 KiB frame cache
#     per thread, +112..+132 and +790..+830 KiB at sample=4096;
#   - the same program's exact RSS at the end of main (smaps_rollup: the
#     median of the 7 runs; status's and the peak's figures are per-CPU
#     counters, off by up to ~100 KiB) grows by at most 144 KiB, and
#     libcalloc's resident text (its executable mapping's Rss, smallest of 7)
#     by at most 32 KiB (half a window: the windows fall elsewhere where the
#     library is not loaded 2 MiB-aligned), at both rates.  Measured
#     2026-12-05 (5 runs each): RSS +24..+44 KiB, text +0; with the
#     tracker's code where the link put it (the unwinder in a 64 KiB
#     fault-around window of its own) and the sampler seeded by clock_gettime
#     (a window of libc's text): RSS +150..+180, text +64 -- both fail
#     (docs/design.md, "Sampling's text").  Since the big zero tables moved
#     to .lbss (e2321d6, 2026-12-05) the run without a profile is ~56 KiB
#     smaller (7 924 -> 7 864-7 868 KiB: the tracker's tables no longer share
#     pages with globals every run touches) and the run with one the same
#     (7 932-7 952), so the growth reads +64..+100 (2026-12-06, 8 runs; the
#     build before e2321d6 +12..+28): the bound went from 96 to 128 KiB;
#     the layout before Sampling's text would still fail it;
#   - python3 -c pass (when installed; the interpreter itself, not a
#     pyenv-style wrapper script): peak growth at most 512 KiB (measured
#     48-204 KiB; 2026-12-05 later, this test's smallest-of-7 over 14
#     repetitions: +12..+384, most under +120, the session's first build
#     +16..+372 -- the noise of file pages dominates here; our
#     walker reading the unwind tables with pread; 400-480 KiB
#     when it read them in place; with libgcc_s and libunwind as the sampling
#     unwinders 620-670 KiB);
#   - libunwind is never mapped, at either rate, and on x86-64 no capture
#     falls back to libgcc_s (the profile's "capture:" line); every sampled
#     stack still starts in the demo's own code.
# Exits 77 when libcalloc.so, the override or tracking is missing.

set -u
name=track-rss
. "$(dirname "$0")/track-common.sh"
status=0
if grep -q '^#define CALLOC_DEBUG 1' "$top_builddir/config.h" 2>/dev/null; then
  echo "SKIP: the bounds are an optimised build's (this is --enable-debug: -O0 code, about twice the text)"
  exit 77
fi
# 56 KiB since session 19's profile thread (its stack's touched pages and
# the DTV its creation allocates: 8 KiB of the thread's stack mapping in
# smaps; 4 interleaved runs of this test, smallest of 7, RssAnon at both
# rates: main's build +12..+28 KiB, with the thread +32..+40, once +44).
anon_bound=56
# The hardened heap (--enable-secure): the tracker's tables are the same, but
# the core heap's offset is gone (there sampled blocks leave the spans for the
# arena: in one smaps comparison at sample=4096 the heap's chunks held 48 KiB
# less and the tracker's mapping 68 KiB), and the randomised slots make the
# smallest of 7 vary more.  Measured
# 2026-12-06 (secure + tracking, 10 and 5 repetitions of the smallest of 7):
# default rate -4..+44 KiB, sample=4096 +24..+96 KiB (the core heap: +20).
if grep -q '^#define CALLOC_SECURE 1' "$top_builddir/config.h" 2>/dev/null; then
  anon_bound=128
fi
# 736 since the profile thread (session 19): 10 runs of this test here
# +256..+568 at both rates, but a CI run under `make -j2 check` read +524 and
# +692 (the thread is one more CPU's per-CPU RSS counter); libunwind's frame
# cache (+790..+830) still fails it.
peak_bound=736
rss_bound=144  # 128 before the profile thread: same runs, exact RSS +68..+84 -> +80..+112
text_bound=32
py_peak_bound=512

fail() {
  echo "FAIL: $*"
  status=1
}

# field NAME: the value of NAME=N in $tmp/out
field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" "$tmp/out" | head -n 1; }
min() { if test -z "$1" || test "$2" -lt "$1"; then echo "$2"; else echo "$1"; fi; }

# measure OPTIONS CMD...: sets anon, peak and text, the smallest of 7 runs of
# CMD under LD_PRELOAD with LIBCALLOC_OPTIONS=OPTIONS, and rss, their median
# (anon, text and rss empty when CMD does not print them).
measure() {
  opts=$1
  shift
  anon= peak= text= rss=
  : >"$tmp/rss"
  for i in 1 2 3 4 5 6 7; do
    if ! "$demo" probe env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="$opts" "$@" >"$tmp/out" 2>"$tmp/err"; then
      fail "$* with '$opts' failed:"
      cat "$tmp/err"
      return
    fi
    a=$(field anon_kb)
    p=$(field maxrss_kb)
    test -n "$a" && anon=$(min "$anon" "$a")
    test -n "$p" && peak=$(min "$peak" "$p")
    t=$(field text_kb)
    test -n "$t" && text=$(min "$text" "$t")
    r=$(field rss_kb)
    test -n "$r" && echo "$r" >>"$tmp/rss"
  done
  test -s "$tmp/rss" && rss=$(sort -n "$tmp/rss" | sed -n 4p)
}

# check WHAT OFF ON BOUND: ON - OFF <= BOUND (kB)
check() {
  if test -z "$2" || test -z "$3"; then
    fail "$1: no figure"
    return
  fi
  echo "$1: without $2 kB, with profile $3 kB: +$(($3 - $2)) kB (bound $4)"
  test $(($3 - $2)) -le "$4" || fail "$1 grew by $(($3 - $2)) kB with sampling on (bound $4 kB)"
}

measure "" "$demo" rss
anon_off=$anon peak_off=$peak rss_off=$rss text_off=$text
measure "profile=$tmp/demo.prof" "$demo" rss
anon_on=$anon peak_on=$peak
check "track-demo rss: RssAnon at the end of main" "$anon_off" "$anon_on" $anon_bound
check "track-demo rss: peak RSS" "$peak_off" "$peak_on" $peak_bound
check "track-demo rss: exact RSS at the end of main" "$rss_off" "$rss" $rss_bound
check "track-demo rss: libcalloc's resident text" "$text_off" "$text" $text_bound
# Sampling did run: the profile has sites (~20 MB allocated: ~40 samples).
grep -q '^site 1:' "$tmp/demo.prof" 2>/dev/null || fail "track-demo rss: the profile has no site"
# libunwind was never loaded (our walker, libgcc_s as its fallback).
test "$(field libunwind)" = 0 || fail "track-demo rss: libunwind mapped at the default rate"
# sample=4096 (~5 000 samples, over 1 000 per thread): no per-thread cost
# either, and every stack still starts above the allocator: no unwinder or
# libcalloc frame on top, and the demo's code in it.  (Its top frame may be
# the dynamic loader's: pthread_create allocates the new thread's TLS vector
# with malloc from ld.so, called by rss_mode, and such a call is sampled now
# and then.)
measure "profile=$tmp/busy.prof,sample=4096" "$demo" rss
check "track-demo rss, sample=4096: RssAnon at the end of main" "$anon_off" "$anon" $anon_bound
check "track-demo rss, sample=4096: peak RSS" "$peak_off" "$peak" $peak_bound
check "track-demo rss, sample=4096: exact RSS at the end of main" "$rss_off" "$rss" $rss_bound
check "track-demo rss, sample=4096: libcalloc's resident text" "$text_off" "$text" $text_bound
if env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="profile=$tmp/busy.prof,sample=4096" "$demo" rss >"$tmp/out" 2>"$tmp/err"; then
  test "$(field libunwind)" = 0 || fail "track-demo rss, sample=4096: libunwind mapped"
  if test "$(uname -m)" = x86_64; then
    grep -q '^capture: [1-9][0-9]* stacks walked by libcalloc.s unwinder, 0 of them again' "$tmp/busy.prof" ||
      fail "track-demo rss, sample=4096: captures fell back: $(grep '^capture:' "$tmp/busy.prof")"
  fi
  grep -A1 '^site ' "$tmp/busy.prof" | grep '#0 ' >"$tmp/tops"
  test -s "$tmp/tops" || fail "track-demo rss, sample=4096: no stacks"
  # The module is the frame's last "(PATH+0xOFFSET)": matched by its file name,
  # not anywhere in the line (a build directory may be /tmp/libcalloc-NAME).
  if grep -E '[(/](libcalloc|libunwind|libgcc_s)[^/()]*\+0x[0-9a-f]+\)$' "$tmp/tops"; then
    fail "track-demo rss, sample=4096: stacks above start in the allocator or the unwinder"
  fi
  # Each site's frames (the lines up to the next site) name churn() or rss_mode().
  awk '/^site / { if (n && !demo) print site; site = $0; n = 1; demo = 0; next }
       /churn\(\)|rss_mode\(\)/ { demo = 1 }
       END { if (n && !demo) print site }' "$tmp/busy.prof" >"$tmp/foreign"
  if test -s "$tmp/foreign"; then
    cat "$tmp/foreign"
    fail "track-demo rss, sample=4096: stacks without the demo's code"
  fi
else
  fail "track-demo rss with sample=4096 failed:"
  cat "$tmp/err"
fi

py=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null)
if test -n "$py" && test -x "$py"; then
  measure "" "$py" -c pass
  peak_off=$peak
  measure "profile=$tmp/py.prof" "$py" -c pass
  check "python3 -c pass: peak RSS" "$peak_off" "$peak" $py_peak_bound
  grep -q '^site 1:' "$tmp/py.prof" 2>/dev/null || fail "python3: the profile has no site"
else
  echo "python3 not installed: its part skipped"
fi
exit $status
