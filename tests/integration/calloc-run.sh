#!/bin/sh
# tests/integration/calloc-run.sh -- the calloc-run wrapper (built from
# scripts/calloc-run.in), run from the build tree with CALLOC_RUN_LIBRARY
# pointing at src/.libs/libcalloc.so:
#  - the program runs on libcalloc (its /proc/self/maps shows libcalloc.so) with
#    LD_PRELOAD entries that were already there kept, arguments passed intact,
#    and its exit status returned;
#  - --stats prints the heap statistics at exit, --verbose / --option put their
#    items into LIBCALLOC_OPTIONS after the ones already set;
#  - --leaks, --profile and --secure stop with status 2 and a message naming the
#    configure flag when their module is not built (and, when it is, the option
#    reaches LIBCALLOC_OPTIONS);
#  - usage errors (no program, unknown option, missing argument) exit 2; a
#    program that does not exist exits 127.
# With --disable-override, every run must refuse with a clear message.
# Environment (tests/local.mk): top_builddir, CALLOC_OVERRIDE.
set -u
top_builddir=${top_builddir:-.}
run=$top_builddir/calloc-run
CALLOC_RUN_LIBRARY=$top_builddir/src/.libs/libcalloc.so
export CALLOC_RUN_LIBRARY
unset LIBCALLOC_OPTIONS

test -x "$run" || { echo "FAIL: $run was not built"; exit 1; }
if test ! -f "$CALLOC_RUN_LIBRARY"; then
  echo "SKIP: $CALLOC_RUN_LIBRARY was not built (static-only build?)"
  exit 77
fi

failed=0
fail() {
  echo "FAIL: $*"
  failed=1
}
# expect STATUS TEXT COMMAND...: COMMAND exits with STATUS and prints TEXT (on
# stdout or stderr).
expect() {
  want_status=$1 want_text=$2
  shift 2
  out=$("$@" 2>&1)
  status=$?
  test "$status" -eq "$want_status" || fail "'$*' exited with $status, expected $want_status; output: $out"
  case $out in
    *"$want_text"*) ;;
    *) fail "'$*' did not print '$want_text'; output: $out" ;;
  esac
}
have() {
  grep -q "^have_$1='yes'" "$run"
}

expect 0 "Usage: calloc-run" "$run" --help
expect 0 "calloc-run (libcalloc)" "$run" --version
expect 2 "Usage: calloc-run" "$run"
expect 2 "unknown option '--bogus'" "$run" --bogus true
expect 2 "--option needs KEY=VALUE" "$run" --option

if test "${CALLOC_OVERRIDE:-1}" != 1; then
  expect 2 "built with --disable-override" "$run" true
  echo "calloc-run: --disable-override build, refusals checked"
  exit "$failed"
fi

# On libcalloc, with the old LD_PRELOAD kept (a second copy of the library is a
# harmless entry the loader maps once) and the arguments intact.
expect 0 "libcalloc.so" "$run" sh -c 'cat /proc/self/maps'
out=$(LD_PRELOAD=/nonexistent-but-kept.so "$run" sh -c 'echo "[$LD_PRELOAD]"' 2>/dev/null)
case $out in
  *"libcalloc.so /nonexistent-but-kept.so]"*) ;;
  *) fail "LD_PRELOAD not composed: $out" ;;
esac
out=$("$run" sh -c 'printf "%s|" "$@"' argv0 "a b" "" "--stats")
test "$out" = "a b||--stats|" || fail "arguments changed: '$out'"
expect 3 "" "$run" sh -c 'exit 3'
expect 127 "" "$run" /nonexistent/program

# Options.
# The statistics are printed by libcalloc's destructor: the program must exit
# through exit() with stderr open (dash leaves by _exit, coreutils close stderr
# at exit), as python3 does.
if command -v python3 >/dev/null 2>&1; then
  expect 0 "libcalloc: statistics of the process heap" "$run" --stats python3 -c 'x = [str(i) for i in range(1000)]'
else
  echo "note: python3 not found, --stats output not checked"
fi
expect 0 "options stats=0 verbose=1 huge_heap=1" "$run" --verbose --option huge_heap=1 sh -c ':'
out=$(LIBCALLOC_OPTIONS=huge_heap=0 "$run" --stats sh -c 'echo "$LIBCALLOC_OPTIONS"' 2>/dev/null)
test "$out" = "huge_heap=0,stats=1" || fail "LIBCALLOC_OPTIONS not composed: '$out'"

# Options of modules.
if have tracking; then
  out=$("$run" --leaks --profile /tmp/p sh -c 'echo "$LIBCALLOC_OPTIONS"' 2>/dev/null)
  test "$out" = "leak_report=1,profile=/tmp/p" || fail "--leaks --profile gave '$out'"
else
  expect 2 "--leaks needs libcalloc built with --enable-tracking" "$run" --leaks true
  expect 2 "--profile needs libcalloc built with --enable-tracking" "$run" --profile out.txt true
fi
expect 2 "--profile needs a FILE" "$run" --profile
if have secure || test -f "$top_builddir/src/.libs/libcalloc-secure.so"; then
  echo "note: secure library present; --secure runs are the secure module's tests"
else
  CALLOC_RUN_SECURE_LIBRARY=/nonexistent/libcalloc-secure.so
  export CALLOC_RUN_SECURE_LIBRARY
  expect 2 "--secure needs libcalloc built with --enable-secure" "$run" --secure true
fi

test "$failed" -eq 0 && echo "calloc-run: all checks passed"
exit "$failed"
