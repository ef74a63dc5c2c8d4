#!/bin/sh
# tests/integration/track.sh -- the process heap's tracker (issue 14) on real
# programs under LD_PRELOAD of libcalloc.so (an --enable-tracking build):
#   - tests/track/track-demo leak: leak_report=1 prints, on stderr at exit, the
#     leaked 4242 bytes with the leaking function's name (demo::leak_some_memory,
#     demangled), the file:line of its malloc and a summary line with the exact bytes;
#   - noleak: "no leaks"; leak_report=PATH writes the report to PATH instead;
#   - a report that cannot be written: the warning names the file tried and why;
#   - threads: the 8 x 100 bytes leaked by demo::thread_leak in 8 threads;
#   - threads-own: threads started and joined, one leak of the program's: that
#     leak alone is reported, glibc's thread storage (DTVs) counted apart;
#   - dlopen: a leak in a dlopen'ed library names its function and module;
#   - dlclose, dlclose-reload: a library's leak, the library closed (and
#     another loaded at its address): its frame names its own function and
#     file, in leak reports and collapsed and pprof profiles;
#   - dlopen-keep: libraries dlopen'ed and never closed: the loader's records
#     of them are counted apart, a leak of a library's constructor is reported;
#   - dlsym-fail: what glibc keeps for dlerror after a failed dlsym or dlopen
#     is counted apart, not reported as a leak;
#   - fork: the parent's report (PATH) has its own 2222-byte leak, the child's
#     (PATH.PID) its 1111 bytes and not the parent's;
#   - hot: profile=PATH (text) names hot_allocator first; profile_format=collapsed
#     gives "...;main;hot_allocator BYTES" lines; sample=4096 estimates within 10 %;
#   - signal: SIGUSR2 writes the profile while the program runs;
#   - python3 (when installed) runs a small workload with leak_report and with
#     profile on, its output identical to a run on glibc.
# Exits 77 when libcalloc.so, the override or tracking is missing.

set -u
name=track
. "$(dirname "$0")/track-common.sh"
status=0

fail() {
  echo "FAIL: $*"
  status=1
}
# expect FILE TEXT WHAT: FILE contains TEXT (fixed string)
expect() {
  if ! grep -qF -- "$2" "$1"; then
    fail "$3: \"$2\" not in the output:"
    head -n 40 "$1"
  fi
}
run() { # run OPTIONS ARGS...: the demo under LD_PRELOAD, stderr into $tmp/err
  opts=$1
  shift
  env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="$opts" "$demo" "$@" 2>"$tmp/err"
  rc=$?
  if test $rc != 0; then
    fail "track-demo $* with $opts exited $rc:"
    cat "$tmp/err"
  fi
}

# 1. A leak, on stderr.
run leak_report=1 leak
expect "$tmp/err" "4242 bytes in 1 block allocated at:" "leak"
expect "$tmp/err" "demo::leak_some_memory(unsigned long)" "leak: function name"
expect "$tmp/err" "libcalloc: leak summary: 4242 bytes in 1 block from 1 allocation stack" "leak: summary"
# file:line from the demo's DWARF line table (it is built with -g): the malloc
# in leak_some_memory.
line=$(grep -n 'void\* p = std::malloc(n);' "$top_srcdir/tests/track/track-demo.c++" | head -n 1 | cut -d: -f1)
# (The offset is the call's return address in the function: +0x9 at -O2, more
# at -O0 in an --enable-debug build; any offset is taken.)
if ! grep -qE "demo::leak_some_memory\(unsigned long\)\+0x[0-9a-f]+ at track-demo\.c\+\+:$line\b" "$tmp/err"; then
  fail "leak: file:line: \"demo::leak_some_memory(unsigned long)+0x... at track-demo.c++:$line\" not in the output:"
  head -n 40 "$tmp/err"
fi
cp "$tmp/err" "$tmp/leak.report"

# 2. No leak; the report in a file.
run leak_report="$tmp/noleak.txt" noleak
test -s "$tmp/err" && fail "noleak: unexpected stderr: $(cat "$tmp/err")"
if test -f "$tmp/noleak.txt"; then
  expect "$tmp/noleak.txt" "libcalloc: no leaks: every tracked block was freed" "noleak"
else
  fail "noleak: leak_report=PATH wrote no file"
fi

# 2b. leak_report with sample=: a sampled report, which says so (the
# documents said leak_report tracks every allocation, whatever sample= says).
# (One per 64 bytes: the 4242-byte leak is then sampled but once in e^66 runs;
# at 4096 it went unsampled in a third of them, and the summary said "no leaks".)
run leak_report=1,sample=64 leak
expect "$tmp/err" "libcalloc leak report (pid" "sampled leak report"
expect "$tmp/err" "sampled, one per 64 bytes on average: figures are estimates" "sampled leak report: its mode"
# Its summary says the count of allocations is an estimate, and from how many
# samples (it said "(N allocations tracked)", as in full mode).
if ! grep -qE "^libcalloc: leak summary: .* \(an estimated [0-9]+ allocations from [0-9]+ samples\)$" "$tmp/err"; then
  fail "sampled leak report: the summary does not say its count is an estimate: $(tail -n 1 "$tmp/err")"
fi

# 2b'. sample=0 is no rate: warned about and ignored (it silently meant
# "unset"): the report tracks every allocation, as leak_report alone does.
env LD_PRELOAD="$so" LIBCALLOC_OPTIONS=leak_report=1,sample=0 "$demo" leak 2>"$tmp/err"
expect "$tmp/err" "libcalloc: warning: LIBCALLOC_OPTIONS: 0 is no rate, ignored (sample=1 records every allocation" "sample=0: warning"
expect "$tmp/err" "every allocation tracked" "sample=0: full mode"

# 2c. Relative paths are the start-up directory's: a program that changed
# directory before exit wrote its reports into the new one.
mkdir "$tmp/start" "$tmp/elsewhere"
demo_abs=$(cd "$(dirname "$demo")" && pwd)/$(basename "$demo")
(cd "$tmp/start" && env LD_PRELOAD="$so" LIBCALLOC_OPTIONS=leak_report=leaks.txt,profile=prof.txt \
  "$demo_abs" chdir "$tmp/elsewhere") 2>"$tmp/err" || fail "chdir: the demo failed: $(cat "$tmp/err")"
for f in leaks.txt prof.txt; do
  test -s "$tmp/start/$f" || fail "chdir: no $f where the program started (elsewhere: $(ls "$tmp/elsewhere"))"
done
test -s "$tmp/start/leaks.txt" && expect "$tmp/start/leaks.txt" "4242 bytes in 1 block allocated at:" "chdir: leak report"

# 2c'. leak_report and profile naming one file by two paths: "x" and "./x",
# a symbolic link to an existing file, the same name through a linked
# directory.  The strings were compared: the profile, written second at exit,
# truncated the leak report.  Now, as for the same string, a warning at
# start-up and the leak report on stderr; the file holds the profile.
mkdir "$tmp/same" "$tmp/same/dir"
ln -s dir "$tmp/same/dirlink"
: >"$tmp/same/target.txt"
ln -s target.txt "$tmp/same/link.txt"
for pair in "x.txt ./x.txt" "link.txt target.txt" "dirlink/r.txt dir/./r.txt" "dir/../y.txt y.txt"; do
  set -- $pair
  (cd "$tmp/same" && env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="leak_report=$1,profile=$2" "$demo_abs" leak) \
    2>"$tmp/err" || fail "same file ($pair): the demo failed: $(cat "$tmp/err")"
  expect "$tmp/err" "libcalloc: warning: LIBCALLOC_OPTIONS: leak_report and profile name the same file, the leak report goes to stderr" \
    "same file ($pair): warning"
  expect "$tmp/err" "4242 bytes in 1 block allocated at:" "same file ($pair): the leak report on stderr"
  expect "$tmp/same/$2" "libcalloc allocation profile" "same file ($pair): the profile"
done
# Two files are two files: both written.
(cd "$tmp/same" && env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="leak_report=dir/a.txt,profile=dirlink/b.txt" "$demo_abs" leak) \
  2>"$tmp/err" || fail "two files: the demo failed: $(cat "$tmp/err")"
if grep -q "same file" "$tmp/err"; then fail "two files taken for one: $(cat "$tmp/err")"; fi
expect "$tmp/same/dir/a.txt" "4242 bytes in 1 block allocated at:" "two files: the leak report"
expect "$tmp/same/dir/b.txt" "libcalloc allocation profile" "two files: the profile"

# 2d. A report that cannot be written says why: the file tried and the
# reason (before: "cannot write the leak report to PATH" and nothing more).
# An unwritable directory: mode 555 for a user; root writes there anyway, so
# for root sysfs, which refuses new files to root too (EACCES).
if test "$(id -u)" = 0; then
  ro=/sys
else
  mkdir "$tmp/ro" && chmod 555 "$tmp/ro"
  ro=$tmp/ro
fi
if ( : >"$ro/calloc-leaks.txt" ) 2>/dev/null; then
  rm -f "$ro/calloc-leaks.txt"
  fail "write failure: $ro/calloc-leaks.txt could be created: no unwritable directory to test with"
else
  env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="leak_report=$ro/calloc-leaks.txt,profile=$tmp/none/prof-%p.txt" \
    "$demo" leak 2>"$tmp/err"
  expect "$tmp/err" "libcalloc: warning: cannot write the leak report to $ro/calloc-leaks.txt: Permission denied (EACCES)" \
    "write failure: leak report"
  # The path as tried: %p expanded.
  expect "$tmp/err" "libcalloc: warning: cannot write the profile to $tmp/none/prof-" "write failure: profile"
  if ! grep -qE "cannot write the profile to .*/none/prof-[0-9]+\.txt: No such file or directory \(ENOENT\)$" "$tmp/err"; then
    fail "write failure: the profile's line has no expanded path or no reason: $(cat "$tmp/err")"
  fi
fi

# 3. Threads.
run leak_report=1 threads
expect "$tmp/err" "800 bytes in 8 blocks allocated at:" "threads"
expect "$tmp/err" "demo::thread_leak(unsigned long)" "threads: function name"

# 3a. glibc's thread storage is not the program's leak: threads started and
# joined leave their DTVs (allocate_dtv from _dl_allocate_tls, in ld.so) live
# in glibc's stack cache; the report names exactly the program's one leak and
# counts glibc's blocks apart -- full mode (names from libc6-dbg's file when
# installed) and sampled (the loader's exported names only).
for opts in leak_report=1 leak_report=1,sample=16; do
  run "$opts" threads-own
  expect "$tmp/err" "4242 bytes in 1 block allocated at:" "threads-own ($opts)"
  expect "$tmp/err" "libcalloc: leak summary: 4242 bytes in 1 block from 1 allocation stack" "threads-own ($opts): summary"
  expect "$tmp/err" "libcalloc: not leaks of the program: glibc's thread storage" "threads-own ($opts): glibc's blocks"
  n=$(grep -c "allocated at:" "$tmp/err")
  test "$n" = 1 || fail "threads-own ($opts): $n stacks reported as leaks, not 1: $(cat "$tmp/err")"
  if grep -q "ld-linux" "$tmp/err"; then fail "threads-own ($opts): a loader frame in a leak: $(cat "$tmp/err")"; fi
done

# 3b. dlopen'ed code: its function and module are named.
plugin=$top_builddir/tests/track/.libs/libtrackplugin.so
if test -f "$plugin"; then
  run leak_report=1 dlopen "$plugin"
  expect "$tmp/err" "3333 bytes in 1 block allocated at:" "dlopen"
  expect "$tmp/err" "in plugin_leak+" "dlopen: function name"
  expect "$tmp/err" "libtrackplugin.so+" "dlopen: module"
else
  fail "dlopen: $plugin was not built"
fi

# 3c. A library closed before the report: its frames are in no module then;
# they are named from its file, and say it was unloaded (they printed
# "unknown module+0x0", an offset that was none, then "in no module loaded
# now", which frames of stacks with no recorded objects still print).
if test -f "$plugin"; then
  run leak_report=1 dlclose "$plugin"
  expect "$tmp/err" "3333 bytes in 1 block allocated at:" "dlclose"
  expect "$tmp/err" "in plugin_leak+" "dlclose: the unloaded frame's function"
  expect "$tmp/err" "libtrackplugin.so+0x1" "dlclose: the unloaded frame's file"
  expect "$tmp/err" "; unloaded)" "dlclose: the unloaded frame says so"
  if grep -q "unknown module" "$tmp/err"; then fail "dlclose: \"unknown module\" in the report: $(cat "$tmp/err")"; fi
  # The caller, in the program, is still named.
  expect "$tmp/err" "in main+" "dlclose: the program's frames"
fi

# 3c'. A library closed, and another loaded where it lay: the leak's frame in
# the first still names the first's function and file (it named the other's:
# a report looked a frame up by its address when written).  Frames are named
# through the objects loaded when their stack was first seen (src/track-
# modules.c++), from the file when the object is unloaded; full and sampled,
# the leak report, collapsed and pprof profiles, and the file deleted.
other=$top_builddir/tests/track/.libs/libtrackother.so
if test -f "$plugin" && test -f "$other"; then
  reload() { # reload OPTIONS PLUGIN [remove]: track-demo dlclose-reload; 1 when B landed elsewhere
    env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="$1" "$demo" dlclose-reload "$2" "$other" ${3:-} 2>"$tmp/err"
    rc=$?
    if test $rc = 3; then
      echo "note: dlclose-reload: the other library did not land where the plugin lay: not checked ($1)"
      return 1
    fi
    if test $rc != 0; then
      fail "track-demo dlclose-reload with $1 exited $rc:"
      cat "$tmp/err"
      return 1
    fi
    return 0
  }
  for opts in leak_report=1 leak_report=1,sample=16; do
    if reload "$opts" "$plugin"; then
      expect "$tmp/err" "3333 bytes in 1 block allocated at:" "dlclose-reload ($opts)"
      expect "$tmp/err" "in plugin_leak+" "dlclose-reload ($opts): the unloaded library's function"
      expect "$tmp/err" "libtrackplugin.so+0x" "dlclose-reload ($opts): the unloaded library's file"
      expect "$tmp/err" "; unloaded)" "dlclose-reload ($opts): the frame says its library was unloaded"
      if grep -q "other_function\|libtrackother" "$tmp/err"; then
        fail "dlclose-reload ($opts): the leak named by the library loaded later: $(cat "$tmp/err")"
      fi
    fi
  done
  # The file deleted after dlclose: the frame says so.
  cp "$plugin" "$tmp/libtrackgone.so"
  if reload leak_report=1 "$tmp/libtrackgone.so" remove; then
    expect "$tmp/err" "libtrackgone.so+0x" "dlclose-reload, file removed: the file"
    expect "$tmp/err" "unloaded, and its file is gone" "dlclose-reload, file removed: said so"
    if grep -q "other_function" "$tmp/err"; then fail "dlclose-reload, file removed: named other_function"; fi
  fi
  if reload profile="$tmp/reload.folded",profile_format=collapsed,sample=1 "$plugin"; then
    if ! grep -q ";main;plugin_leak 3333\$" "$tmp/reload.folded"; then
      fail "dlclose-reload, collapsed: no '...;main;plugin_leak 3333' line:"
      grep -v "^_start;__libc_start_main;__libc_start_call_main;main;[a-z_]*dl" "$tmp/reload.folded" | head -n 20
    fi
    if grep -q other_function "$tmp/reload.folded"; then fail "dlclose-reload, collapsed: named other_function"; fi
  fi
  # Two stacks of the same addresses: the plugin leaks, is closed, and a copy
  # of it (another file) is loaded at its address and leaks from the same
  # call.  Two sites, each naming its file (the second was counted on the
  # first's stack, named by the first's file: one stack of 7777 bytes).
  cp "$plugin" "$tmp/libtrackcopy.so"
  for opts in leak_report=1 leak_report=1,sample=16; do
    env LD_PRELOAD="$so" LIBCALLOC_OPTIONS=$opts "$demo" dlclose-same-site "$plugin" "$tmp/libtrackcopy.so" 2>"$tmp/err"
    rc=$?
    if test $rc = 3; then
      echo "note: dlclose-same-site: the copy did not land where the plugin lay: not checked ($opts)"
    elif test $rc != 0; then
      fail "track-demo dlclose-same-site ($opts) exited $rc: $(cat "$tmp/err")"
    else
      for want in "3333 bytes in 1 block allocated at:" "4444 bytes in 1 block allocated at:" \
        "libtrackplugin.so+0x" "libtrackcopy.so+0x" "libcalloc: leak summary: 7777 bytes in 2 blocks from 2 allocation stacks"; do
        expect "$tmp/err" "$want" "dlclose-same-site ($opts)"
      done
      # Each leak's first frame names its own file.
      if ! grep -A1 "^3333 bytes" "$tmp/err" | grep -q "libtrackplugin.so+0x.*; unloaded)" ||
        ! grep -A1 "^4444 bytes" "$tmp/err" | grep -q "libtrackcopy.so+0x"; then
        fail "dlclose-same-site ($opts): a leak named by the other file: $(cat "$tmp/err")"
      fi
    fi
  done
  pprof=$(command -v google-pprof || command -v pprof || true)
  if test -n "$pprof" && reload profile="$tmp/reload.heap",profile_format=pprof,sample=1 "$plugin"; then
    "$pprof" --text "$demo" "$tmp/reload.heap" >"$tmp/pprof.out" 2>&1
    if ! grep -qE '^ +[0-9.]+ +[0-9.]+% +[0-9.]+% +[0-9.]+ +[0-9.]+% plugin_leak$' "$tmp/pprof.out" ||
      grep -q other_function "$tmp/pprof.out"; then
      fail "dlclose-reload, pprof: google-pprof does not name plugin_leak (alone):"
      cat "$tmp/pprof.out"
    fi
  fi
else
  fail "dlclose-reload: $plugin or $other was not built"
fi

# 3d. The dynamic loader's records of libraries loaded with dlopen and never
# closed (link maps, names, scope and version tables, _dl_find_object's
# table: 7 stacks here) are not the program's leaks: counted on a line of
# their own.  A leak of a library's constructor, which dlopen runs, is the
# program's all the same (its stack runs through the loader too).  Full mode
# (loader functions named from libc6-dbg's file when installed) and sampled
# (unnamed: the rule goes by the stack's shape).
ctorleak=$top_builddir/tests/track/.libs/libtrackctorleak.so
ctortail=$top_builddir/tests/track/.libs/libtrackctortail.so
if test -f "$plugin" && test -f "$ctorleak"; then
  for opts in leak_report=1 leak_report=1,sample=16; do
    run "$opts" dlopen-keep "$plugin"
    expect "$tmp/err" "libcalloc: leak summary: 4242 bytes in 1 block from 1 allocation stack" "dlopen-keep ($opts): summary"
    expect "$tmp/err" "libcalloc: not leaks of the program: the dynamic loader's records of libraries loaded with dlopen" \
      "dlopen-keep ($opts): the loader's blocks"
    n=$(grep -c "allocated at:" "$tmp/err")
    test "$n" = 1 || fail "dlopen-keep ($opts): $n stacks reported as leaks, not 1: $(cat "$tmp/err")"
    if grep -q "ld-linux" "$tmp/err"; then fail "dlopen-keep ($opts): a loader frame in a leak: $(cat "$tmp/err")"; fi
    run "$opts" dlopen-keep "$plugin" "$ctorleak"
    expect "$tmp/err" "5555 bytes in 1 block allocated at:" "dlopen-keep, constructor's leak ($opts)"
    expect "$tmp/err" "in ctorleak_constructor+" "dlopen-keep, constructor's leak ($opts): its function"
    expect "$tmp/err" "libcalloc: leak summary: 9797 bytes in 2 blocks from 2 allocation stacks" \
      "dlopen-keep, constructor's leak ($opts): summary"
    expect "$tmp/err" "libcalloc: not leaks of the program: the dynamic loader's records of libraries loaded with dlopen" \
      "dlopen-keep, constructor's leak ($opts): the loader's blocks"
    # A constructor that tail-calls malloc (tests/track/ctor-tail.c++): no
    # frame of its own, the first is the loader's call_init, where the loader
    # calls constructors (libcalloc.so's own constructor returns there too);
    # it was taken for the loader's record.  x86-64 only (assembly).
    if test -f "$ctortail" && test "$(uname -m)" = x86_64; then
      run "$opts" dlopen-keep "$plugin" "$ctortail"
      expect "$tmp/err" "6666 bytes in 1 block allocated at:" "dlopen-keep, constructor's tail call ($opts)"
      expect "$tmp/err" "libcalloc: leak summary: 10908 bytes in 2 blocks from 2 allocation stacks" \
        "dlopen-keep, constructor's tail call ($opts): summary"
      expect "$tmp/err" "libcalloc: not leaks of the program: the dynamic loader's records of libraries loaded with dlopen" \
        "dlopen-keep, constructor's tail call ($opts): the loader's blocks"
    fi
  done
else
  fail "dlopen-keep: $plugin or $ctorleak was not built"
fi

# 3e. What glibc keeps for dlerror after a failed dlsym (the message, from
# _dl_exception_create_format under dlsym, and _dlerror_run's record of it)
# and a failed dlopen (its message) is not the program's leak either (both
# were: 107 and 24 bytes): counted on a line of its own; the program's 4242
# bytes alone are reported.  Sampled at 16 bytes, the 24-byte record may go
# unsampled: the summary is checked, the line only in full mode.
if test -f "$plugin"; then
  for opts in leak_report=1 leak_report=1,sample=16; do
    for also in "" open; do
      run "$opts" dlsym-fail "$plugin" $also
      expect "$tmp/err" "libcalloc: leak summary: 4242 bytes in 1 block from 1 allocation stack" \
        "dlsym-fail $also ($opts): the program's leak alone"
      if test "$opts" = leak_report=1; then
        expect "$tmp/err" "libcalloc: not leaks of the program: what glibc keeps for dlerror after a failed dlopen or dlsym" \
          "dlsym-fail $also ($opts): dlerror's line"
        expect "$tmp/err" "bytes in 2 blocks from 2 stacks" "dlsym-fail $also ($opts): dlerror's two blocks"
      fi
      if grep -q "_dlerror_run\|_dl_exception_create" "$tmp/err"; then
        fail "dlsym-fail $also ($opts): dlerror's blocks reported as leaks: $(cat "$tmp/err")"
      fi
    done
  done
fi

# 4. fork: each process reports its own blocks.
run leak_report="$tmp/fork.txt" fork
expect "$tmp/fork.txt" "2222 bytes in 1 block" "fork: parent"
child_report=$(ls "$tmp"/fork.txt.* 2>/dev/null | head -n 1)
if test -z "$child_report"; then
  fail "fork: the child wrote no report (fork.txt.PID)"
else
  expect "$child_report" "1111 bytes in 1 block" "fork: child"
  expect "$child_report" "demo::child_leak" "fork: child's function"
  if grep -q "2222 bytes" "$child_report"; then fail "fork: the child's report has the parent's leak"; fi
fi

# 5. Profiles: text, collapsed, sampled.
run profile="$tmp/hot.txt",sample=1 hot
expect "$tmp/hot.txt" "every allocation tracked" "profile"
first_site=$(grep -A1 '^site 1:' "$tmp/hot.txt" | tail -n 1)
case $first_site in
  *hot_allocator*) ;;
  *) fail "profile: the top site is not hot_allocator: $first_site" ;;
esac
expect "$tmp/hot.txt" "site 1: 20000 calls, 20000000 bytes" "profile: exact counts"
run profile="$tmp/hot.folded",profile_format=collapsed,sample=1 hot
if ! grep -qE '(^|;)main;hot_allocator\(unsigned long\) 20000000$' "$tmp/hot.folded"; then
  fail "collapsed: no 'main;hot_allocator(unsigned long) 20000000' line:"
  head -n 5 "$tmp/hot.folded"
fi
run profile="$tmp/sampled.txt",sample=4096 hot
est=$(sed -n 's/^total: \([0-9]*\) allocations, \([0-9]*\) bytes.*/\2/p' "$tmp/sampled.txt")
# The truth: the hot and cold loops (20 010 000 bytes) plus churn()'s and the
# vector's, which the exact profile counts.
run profile="$tmp/exact.txt",sample=1 hot
truth=$(sed -n 's/^total: \([0-9]*\) allocations, \([0-9]*\) bytes.*/\2/p' "$tmp/exact.txt")
if test -z "$est" || test -z "$truth"; then
  fail "sampled profile: no total line"
else
  echo "sampled estimate: $est bytes, exact: $truth bytes"
  diff=$((est > truth ? est - truth : truth - est))
  test $((diff * 10)) -le "$truth" || fail "sampled estimate $est is not within 10 % of $truth"
fi

# 6. SIGUSR2 writes the profile while the program runs.
run profile="$tmp/sig.txt" signal "$tmp/sig.txt"

# 7. python3 with tracking on.
if command -v python3 >/dev/null 2>&1; then
  py='import json, threading
d = [json.dumps({"k": list(range(i % 50))}) for i in range(20000)]
def work(n):
    return sum(len(str(x)) for x in range(n))
ts = [threading.Thread(target=work, args=(50000,)) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
print(len(d), sum(map(len, d)), work(1000))'
  python3 -c "$py" >"$tmp/py.glibc" 2>&1
  for opts in leak_report="$tmp/py.leaks" profile="$tmp/py.prof" profile="$tmp/py.prof2",sample=1; do
    env LD_PRELOAD="$so" LIBCALLOC_OPTIONS="$opts" python3 -c "$py" >"$tmp/py.lib" 2>"$tmp/py.err"
    rc=$?
    if test $rc != 0 || ! cmp -s "$tmp/py.glibc" "$tmp/py.lib"; then
      fail "python3 with $opts: exit $rc, output differs from glibc's:"
      cat "$tmp/py.lib" "$tmp/py.err"
    fi
  done
  expect "$tmp/py.leaks" "libcalloc: leak summary:" "python3 leak report"
  expect "$tmp/py.prof" "libcalloc allocation profile" "python3 profile"
  expect "$tmp/py.prof2" "every allocation tracked" "python3 full profile"
  echo "python3: $(tail -n 1 "$tmp/py.leaks")"
else
  echo "python3 not installed: its checks are skipped"
fi

test $status = 0 && echo "PASS: leak reports, profiles, fork, threads, signal and python3 under tracking"
exit $status
