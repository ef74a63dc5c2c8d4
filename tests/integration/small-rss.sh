#!/bin/sh
# tests/integration/small-rss.sh -- libcalloc.so's own resident pages in a small
# program (issue 17; src/placement.h++ and docs/design.md, "Linkage and a small
# program's fixed memory", say how and why).
#
# The kernel maps a library's text in 64 KiB fault-around windows (a whole
# page-cache folio at a time on recent kernels), so the text a program pays for
# is 64 KiB per window its code touches.  The code that every program runs is
# in .text.hot.lca_core, which starts the text segment, and the segment starts
# on a 64 KiB boundary of the file and of memory.  Checks, under LD_PRELOAD of
# the built libcalloc.so, with tests/integration/small-rss (a C program):
#   1. the text segment is 64 KiB-aligned (readelf: LOAD R E, offset and
#      address multiples of 0x10000) when configure linked with
#      CALLOC_LAYOUT_LDFLAGS (config.h's CALLOC_TEXT_LAYOUT); the test skips
#      when configure found a linker without the flags;
#   2. `small-rss none` (allocates nothing, like true(1)) and `small-rss all`
#      (small, medium and large blocks, calloc, realloc, the aligned forms,
#      malloc_usable_size, a thread's life and exit, fork with a child that
#      allocates) map at most one window of libcalloc's text, 64 KiB (two, 128
#      KiB, in --enable-tracking builds: the sampler's section, ~23 KiB, does
#      not fit beside the rest), and at most 160 KiB of libcalloc's mappings in
#      all (--enable-tracking: 240).  The largest of 3 runs each.
#   3. neither run maps any of libcalloc's read-only data (.rodata, .eh_frame_hdr,
#      .eh_frame: one 37 KiB mapping, 40 KiB resident on the first read of any
#      constant in it), and libcalloc's mappings hold at most 112 KiB in all:
#      what a common path reads goes in the RELRO page (LCA_CORE_RODATA,
#      src/placement.h++).  Not checked in --enable-tracking builds.
#   4. `small-rss none` (which allocates a little through stdio) has no page of
#      .bss resident past the file-backed part of the writable segment (the
#      small variables every program touches are in .data: LCA_CORE_DATA) and
#      at most one page of .lbss (the chunk registry's entry of its chunks; the
#      orphan pools, two pages, are not read while no span is pooled).  Not
#      checked in --enable-tracking builds, nor where the section headers say
#      nothing (bss_kb or lbss_kb -1: no .lbss off x86-64).  `small-rss all`
#      touches both (a large block's table is in .bss; its thread's exit pools
#      spans): printed, not checked.
#   5. `small-rss all` with tests/integration/small-rss-shim.so preloaded before
#      libcalloc.so: libcalloc calls none of libc's open/openat/prctl to read the
#      THP mode and whether THP is off for the process (its own system calls,
#      src/huge.c++: libc's functions sit in 64 KiB windows of text a small C
#      program does not otherwise map).  x86-64 only (elsewhere libc's).
# Measured 2026-12-05: text 64 KiB, all of libcalloc 140 KiB, in both (with the
# tracker 128 / 224); before this layout 160 KiB of text and 240 in all, in
# every program (the code they ran was spread over the three windows of the
# text and .fini, after all of it, mapped the last at exit) -- that fails 2.
# Later the same day: read-only data 40 -> 0 KiB, all of libcalloc 144 -> 104
# KiB in both (the option variable's name passed to getenv, the size-class
# table, a string block_lookup read, the THP mode's file name and words, and
# two constants GCC made for merged stores were in .rodata) -- that fails 3.
# Later (session 15): .bss past the file 4 -> 0 KiB and .lbss 12 -> 4 KiB in
# `small-rss none` (the heap key's once-flag and key, the Valgrind-mode flags
# and the NUMA flag were on the first anonymous page of .bss; every refill read
# its class's orphan pool) -- that fails 4.
# The same session: the first chunk read the THP mode with libc's open and
# asked libc's prctl -- that fails 5 (one more window of libc's text, 64 KiB,
# at 6 of libc's 16 load offsets mod 64 KiB).
# Exits 77 in sanitizer, --enable-debug (-O0 code, about three times larger)
# and --enable-secure builds (malloc is the hardened heap's, whose code is not
# in the section), and when readelf is missing.
set -u
. "${top_srcdir:-.}/tests/integration/preload-common.sh"
prog=$top_builddir/tests/integration/small-rss
command -v readelf >/dev/null 2>&1 || { echo "SKIP: 'readelf' not found (binutils)"; exit 77; }
case " ${CALLOC_SANITIZERS:-} " in
  *address* | *thread* | *undefined*)
    echo "SKIP: sanitizer build (instrumented code; the layout is for plain builds)"
    exit 77 ;;
esac
config=$top_builddir/config.h
if grep -q '^#define CALLOC_DEBUG 1' "$config" 2>/dev/null; then
  echo "SKIP: --enable-debug build (-O0 code does not fit one window)"
  exit 77
fi
if grep -q '^#define CALLOC_SECURE 1' "$config" 2>/dev/null; then
  echo "SKIP: --enable-secure build (malloc is the hardened heap's)"
  exit 77
fi
text_bound=64
lib_bound=112
rodata_bound=0
bss_bound=0
lbss_bound=4
if grep -q '^#define CALLOC_TRACKING 1' "$config" 2>/dev/null; then
  text_bound=128
  lib_bound=240
  rodata_bound=
  bss_bound=
  lbss_bound=
fi
fail=0

# 1. The text segment: offset and address on 64 KiB boundaries.
load=$(readelf -lW "$so" | awk '$1 == "LOAD" && $8 == "E" {print $2, $3; exit}')
set -- $load
if test $# -ne 2; then
  echo "FAIL: no executable LOAD segment in readelf -l $so"
  exit 1
fi
if test $(($1 % 65536)) -ne 0 || test $(($2 % 65536)) -ne 0; then
  if grep -q '^#define CALLOC_TEXT_LAYOUT 1' "$config" 2>/dev/null; then
    echo "FAIL: the text segment is at offset $1, address $2, not 64 KiB-aligned (CALLOC_LAYOUT_LDFLAGS)"
    exit 1
  fi
  echo "SKIP: the text segment is at offset $1, address $2: configure found a linker without -z max-page-size"
  exit 77
fi
echo "ok: the text segment is at offset $1, address $2"

# 2. Resident pages of libcalloc.so in the two runs of small-rss.
for mode in none all; do
  text=0 lib=0 rodata=0 bss=-1 lbss=-1
  for i in 1 2 3; do
    if ! out=$(LD_PRELOAD=$so "$prog" $mode 2>&1); then
      echo "FAIL: small-rss $mode: $out"
      fail=1
      continue 2
    fi
    t=$(echo "$out" | sed -n 's/.*text_kb=\([0-9]*\).*/\1/p')
    l=$(echo "$out" | sed -n 's/.*lib_kb=\([0-9]*\).*/\1/p')
    r=$(echo "$out" | sed -n 's/.*rodata_kb=\([0-9]*\).*/\1/p')
    b=$(echo "$out" | sed -n 's/.* bss_kb=\(-*[0-9]*\).*/\1/p')
    lb=$(echo "$out" | sed -n 's/.*lbss_kb=\(-*[0-9]*\).*/\1/p')
    test "$t" -gt "$text" && text=$t
    test "$l" -gt "$lib" && lib=$l
    test -n "$r" && test "$r" -gt "$rodata" && rodata=$r
    test -n "$b" && test "$b" -gt "$bss" && bss=$b
    test -n "$lb" && test "$lb" -gt "$lbss" && lbss=$lb
  done
  echo "small-rss $mode: .bss past the file $bss KiB, .lbss $lbss KiB (-1: no such section)"
  if test "$mode" = none && test -n "$bss_bound" && test "$bss" -gt "$bss_bound"; then
    echo "FAIL: small-rss none has $bss KiB of libcalloc's .bss resident past the file: a variable every program touches is in .bss, not .data (LCA_CORE_DATA, src/placement.h++)"
    fail=1
  fi
  if test "$mode" = none && test -n "$lbss_bound" && test "$lbss" -gt "$lbss_bound"; then
    echo "FAIL: small-rss none has $lbss KiB of libcalloc's .lbss resident (the chunk registry's page is expected; the orphan pools are read only when spans are pooled)"
    fail=1
  fi
  echo "small-rss $mode: libcalloc's resident text $text KiB (bound $text_bound), read-only data $rodata KiB (bound ${rodata_bound:-none}), all its mappings $lib KiB (bound $lib_bound)"
  if test "$text" -gt "$text_bound"; then
    echo "FAIL: small-rss $mode maps $text KiB of libcalloc's text: code it runs is outside .text.hot.lca_core (src/placement.h++)"
    fail=1
  fi
  if test -n "$rodata_bound" && test "$rodata" -gt "$rodata_bound"; then
    echo "FAIL: small-rss $mode maps $rodata KiB of libcalloc's read-only data: a common path reads .rodata (a literal, a table, a switch's jump table or a constant of merged stores; src/placement.h++)"
    fail=1
  fi
  if test "$lib" -gt "$lib_bound"; then
    echo "FAIL: small-rss $mode: $lib KiB of libcalloc's mappings resident"
    fail=1
  fi
done
# 5. No libc open/prctl call for the THP mode.
shim=$top_builddir/tests/integration/.libs/small-rss-shim.so
case $(uname -m) in
  x86_64)
    if test -f "$shim"; then
      out=$(LD_PRELOAD="$shim $so" "$prog" all 2>&1)
      if echo "$out" | grep -q 'small-rss-shim:'; then
        echo "$out" | grep 'small-rss-shim:'
        echo "FAIL: libcalloc called libc's open or prctl for the THP mode (src/huge.c++ makes the system calls itself)"
        fail=1
      else
        echo "ok: no libc open/prctl call for the THP mode"
      fi
    else
      echo "FAIL: $shim was not built"
      fail=1
    fi ;;
esac
exit $fail
