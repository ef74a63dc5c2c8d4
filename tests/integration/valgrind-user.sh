#!/bin/sh
# tests/integration/valgrind-user.sh -- a user's bugs, seen by memcheck (and
# helgrind) on libcalloc.
#
# Runs tests/valgrind/buggy (a program linked with libcalloc, one deliberate bug
# per run) under memcheck and checks memcheck's report: the kind of error, the
# block's size and the user's function in the stack -- and, for a correct program,
# "ERROR SUMMARY: 0 errors" with no leak.  libcalloc's own malloc runs
# (--soname-synonyms=somalloc=nouserintercepts: Valgrind must not replace it), so
# what is tested is libcalloc's Valgrind mode (src/vg.h++; the hardened heap's,
# src/secure_vg.h++, for a SecureAllocator and for malloc in the secure build).  One run uses
# lca_malloc under plain `valgrind' (no option), as a user would.
#
# Skips (77) in ASan and TSan builds, when valgrind is not installed or the
# annotations were not built.
# Environment (set by tests/local.mk): top_builddir, CALLOC_VALGRIND_BUILT (1/0),
# CALLOC_SANITIZERS (the -fsanitize= kinds of the build).

set -u
top_builddir=${top_builddir:-.}
buggy=$top_builddir/tests/valgrind/buggy

case " ${CALLOC_SANITIZERS:-} " in
  *" address "*|*" thread "*)
    echo "SKIP: a sanitizer build (${CALLOC_SANITIZERS}): Valgrind cannot run programs built with ASan or TSan (their shadow memory and runtime do not mix with Valgrind's); tests/unit/asan checks ASan's view of the same bugs"
    exit 77 ;;
esac

# Issue 13: with --enable-secure, malloc is the hardened heap, which describes
# its blocks to Valgrind as the core heap does (src/secure_vg.h++): the same
# checks hold there, and the secure-* runs check a SecureAllocator in every build.
if test "${CALLOC_VALGRIND_BUILT:-1}" != 1; then
  echo "SKIP: built without --enable-valgrind-annotations"
  exit 77
fi
if ! command -v valgrind >/dev/null 2>&1; then
  echo "SKIP: valgrind is not installed (Debian package: valgrind)"
  exit 77
fi
if test ! -x "$buggy"; then
  echo "FAIL: $buggy was not built"
  exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/calloc-vguser.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

failures=0
report=

# run KIND [valgrind options...]: memcheck's report of `buggy KIND' in $report.
run() {
  kind=$1
  shift
  report=$tmp/$kind.txt
  valgrind --num-callers=30 "$@" "$buggy" "$kind" >"$tmp/$kind.out" 2>"$report"
  echo "--- $kind: exit status $?"
}

# expect TEXT...: each TEXT must appear in the report.
expect() {
  for text in "$@"; do
    if ! grep -F -q -- "$text" "$report"; then
      echo "FAIL: no \"$text\" in memcheck's report:"
      sed 's/^/    /' "$report"
      failures=$((failures + 1))
      return
    fi
    echo "ok: \"$text\""
  done
}

# expect_not TEXT: TEXT must not appear.
expect_not() {
  if grep -F -q -- "$1" "$report"; then
    echo "FAIL: \"$1\" in memcheck's report:"
    sed 's/^/    /' "$report"
    failures=$((failures + 1))
    return
  fi
  echo "ok: no \"$1\""
}

vg="--soname-synonyms=somalloc=nouserintercepts --leak-check=full"

run clean $vg
expect "ERROR SUMMARY: 0 errors" "All heap blocks were freed -- no leaks are possible"

run use-after-free $vg
expect "Invalid read of size 1" "is 3 bytes inside a block of size 32 free'd" "use_after_free"

run overflow $vg
expect "Invalid write of size 1" "is 0 bytes after a block of size 64 alloc'd" "heap_overflow"

run leak $vg
expect "48 bytes in 1 blocks are definitely lost" "leak_a_block"

# The large block must be lost, not "still reachable" (libcalloc's block table
# hides its addresses).  memcheck's scan is conservative: the block is mapped
# low under Valgrind, where ld.so's tables hold GNU symbol hashes that may fall
# inside it by chance, and then it says "possibly lost" -- also a leak report.
run leak-big $vg
expect "200,000 bytes in 1 blocks are definitely lost" "leak_big_blocks"
if grep -E -q -- "3,145,728 bytes in 1 blocks are (definitely|possibly) lost" "$report"; then
  echo "ok: the 3 MiB block is reported lost"
else
  echo "FAIL: the 3 MiB block is not reported lost:"
  sed 's/^/    /' "$report"
  failures=$((failures + 1))
fi
expect_not "still reachable: 3,"

run uninitialised $vg
expect "Conditional jump or move depends on uninitialised value" "read_uninitialised"

run double-free $vg
expect "Invalid free()" "free_twice" "libcalloc: Double free of"

run interior-free $vg
expect "Invalid free()" "is 16 bytes inside a block of size 80 alloc'd" "free_interior" "libcalloc: Invalid free of"

run heap-uaf $vg
expect "Invalid read of size 1" "is 100 bytes inside a block of size 200 free'd" "use_after_free_in_heap"

run heap-destroyed $vg
expect "ERROR SUMMARY: 0 errors" "All heap blocks were freed -- no leaks are possible"

run lca-uaf --leak-check=full
expect "Invalid read of size 1" "is 39 bytes inside a block of size 40 free'd" "use_after_free_lca"
expect_not "definitely lost"

# The hardened heap (SecureAllocator; malloc's too with --enable-secure): its own
# checks abort on the overflow and the double free, after memcheck's report.
run secure-clean $vg
expect "ERROR SUMMARY: 0 errors" "All heap blocks were freed -- no leaks are possible"

run secure-overflow $vg
expect "Invalid write of size 1" "is 0 bytes after a block of size 40 alloc'd" "secure_overflow" \
  "libcalloc: Canary corrupted"

run secure-canary-read $vg
expect "Invalid read of size 1" "is 1 bytes after a block of size 40 alloc'd" "secure_canary_read"

run secure-uaf $vg
expect "Invalid read of size 1" "is 10 bytes inside a block of size 72 free'd" "secure_use_after_free"

run secure-uaf-large $vg
expect "Invalid read of size 1" "is 1,000 bytes inside a block of size 300,000 free'd" \
  "secure_use_after_free_large"

run secure-leak $vg
if grep -q '^#define CALLOC_DEBUG 1' "$top_builddir/config.h" 2>/dev/null &&
  grep -F -q "250,000 bytes in 1 blocks are possibly lost" "$report"; then
  # Seen once, in the CI's --enable-debug --enable-tracking build (1497b2b,
  # 2026-12-06): "possibly lost", a word pointing into the large block.  Not
  # reproduced since (that commit's debug build at the CI's paths and this one's,
  # 100 runs, environment padded to every size mod 64, other stack limits: all
  # "definitely lost").  memcheck's gdbserver at _exit (who_points_at over the
  # block and 64 MiB around it) finds no word in it, and none of libcalloc's:
  # the large-block table keeps the mapping's start (a page and the leading slack
  # below the block) and the block's address XOR a secret.  The words near it
  # that point nowhere are ld.so's 32-bit hashes in 64-bit slots, as for
  # leak-big: its STB_GNU_UNIQUE table's GNU hash of libstdc++'s
  # std::__cxx11::numpunct<wchar_t>::id, 0x8fb80d8, 1.1 MiB above the block
  # (0x8ea3f70 at -O0, 0x8e41f70 at -O2), and symbol version hashes (GCC_3.0,
  # CXXABI_1.3.1, ...).  Which word it was in the CI run is not known.
  expect "56 bytes in 1 blocks are definitely lost" "secure_leak"
else
  expect "56 bytes in 1 blocks are definitely lost" "250,000 bytes in 1 blocks are definitely lost" "secure_leak"
fi
# Never a pointer to its start (that would be a libcalloc structure keeping it).
expect_not "still reachable: 250,"

run secure-uninitialised $vg
expect "Conditional jump or move depends on uninitialised value" "secure_read_uninitialised"

run secure-double-free $vg
expect "Invalid free()" "secure_free_twice" "libcalloc: Double free of"

run secure-destroyed $vg
expect "ERROR SUMMARY: 0 errors" "All heap blocks were freed -- no leaks are possible"

# helgrind: libcalloc serialises itself in Valgrind mode with a lock helgrind
# does not see and hides its own memory from it, so a correct threaded program
# gets no report, and the program's own race is reported in its function --
# also when both threads call malloc and free between their accesses.
hg="--tool=helgrind --soname-synonyms=somalloc=nouserintercepts"
# A UBSan build (-fsanitize=undefined, vptr): the runtime's type cache
# (__ubsan_vptr_type_cache) is written by __ubsan::checkDynamicType and read by
# the checks compiled into every virtual call and destructor, in every thread,
# without a lock by design; helgrind reports it where a thread's std::thread
# state is destroyed (the read, inlined there) against another thread's
# write.  Those two places are suppressed: libcalloc's and the program's own
# functions (racy_increment below) are not.
case " ${CALLOC_SANITIZERS:-} " in
  *" undefined "* | *" vptr "*)
    cat >"$tmp/ubsan.supp" <<'SUPP'
{
   ubsan-vptr-type-cache-write
   Helgrind:Race
   fun:_ZN7__ubsan16checkDynamicTypeEPvS0_m
}
{
   ubsan-vptr-type-cache-read-in-thread-state-destructor
   Helgrind:Race
   fun:_ZNSt6thread11_State_impl*
}
{
   ubsan-vptr-type-cache-read-in-thread-state-destructor-inlined
   Helgrind:Race
   fun:~_State_impl
   fun:_ZNSt6thread11_State_impl*
}
SUPP
    hg="$hg --suppressions=$tmp/ubsan.supp" ;;
esac
run threads-clean $hg
expect "ERROR SUMMARY: 0 errors"

run race $hg
expect "Possible data race" "racy_increment"

run race-malloc $hg
expect "Possible data race" "racy_increment_between_calls"
expect_not "libcalloc.so"

if test "$failures" -gt 0; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
exit 0
