#!/bin/sh
# tests/integration/nostdcxx.sh -- libcalloc.so brings no C++ runtime into C programs.
#
# Checks (issue 17; src/cxxrt.h++ says how the library does it):
#   1. readelf -d: libcalloc.so has no NEEDED libstdc++, libgcc_s or libm;
#   2. a C program under LD_PRELOAD of libcalloc.so, and one linked with it,
#      allocate through libcalloc and map no libstdc++ or libgcc_s
#      (/proc/self/maps, nostdcxx-c.c);
#   3. a C++ program under LD_PRELOAD: operator new throws std::bad_alloc on an
#      impossible request, calls the new-handler, nothrow forms return null
#      (nostdcxx-cxx.c++);
#   4. a C program that loads a C++ plugin with dlopen(RTLD_LOCAL), under
#      LD_PRELOAD: the plugin's operator new still throws std::bad_alloc and
#      calls its new-handler (the runtime is outside the global scope);
#   5. objdump: no function outside the C++ API (namespace custom_alloc) calls
#      __cxa_guard_acquire, the guard of a function-local static: the weak
#      reference is null in a C program, so such a static on a path a C
#      program reaches (malloc, the lca_ API, LIBCALLOC_OPTIONS's reports)
#      jumps to address 0.  The tracker's zlib loader did, in leak reports of
#      programs whose libraries have compressed debug sections.
# Exit 0 pass, 1 fail, 77 skip.
set -u
. "${top_srcdir:-.}/tests/integration/preload-common.sh"
bin=$top_builddir/tests/integration
for tool in readelf; do
  command -v $tool >/dev/null 2>&1 || { echo "SKIP: '$tool' not found (binutils)"; exit 77; }
done
case " ${CALLOC_SANITIZERS:-} " in
  *address* | *thread*)
    echo "SKIP: sanitizer build (the sanitizer runtime is C++ and is linked into every program)"
    exit 77 ;;
esac
fail=0

needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
echo "libcalloc.so NEEDED: $needed"
case " $needed" in
  *libstdc++* | *libgcc_s* | *" libm."*)
    echo "FAIL: libcalloc.so needs a C++ runtime library: $needed"; fail=1 ;;
esac

if LD_PRELOAD=$so "$bin/nostdcxx-c" >nostdcxx.out 2>&1; then
  echo "ok: a C program under LD_PRELOAD maps no libstdc++"
else
  echo "FAIL: C program under LD_PRELOAD:"; cat nostdcxx.out; fail=1
fi
if "$bin/nostdcxx-linked" >nostdcxx.out 2>&1; then
  echo "ok: a C program linked with libcalloc maps no libstdc++"
else
  echo "FAIL: C program linked with libcalloc:"; cat nostdcxx.out; fail=1
fi
if LD_PRELOAD=$so "$bin/nostdcxx-cxx" >nostdcxx.out 2>&1; then
  echo "ok: a C++ program under LD_PRELOAD gets std::bad_alloc, the new-handler and nothrow nulls"
else
  echo "FAIL: C++ program under LD_PRELOAD (exit $?):"; cat nostdcxx.out; fail=1
fi
plugin=$bin/.libs/nostdcxx-plugin.so
if test -f "$plugin"; then
  if LD_PRELOAD=$so "$bin/nostdcxx-c" dlopen "$plugin" >nostdcxx.out 2>&1; then
    echo "ok: a C++ plugin loaded with RTLD_LOCAL by a C program gets std::bad_alloc"
  else
    echo "FAIL: C++ plugin in a C program (exit $?):"; cat nostdcxx.out; fail=1
  fi
else
  echo "FAIL: $plugin was not built"; fail=1
fi
if command -v objdump >/dev/null 2>&1 && command -v c++filt >/dev/null 2>&1; then
  guarded=$(objdump -d --no-show-raw-insn "$so" |
    awk '/^[0-9a-f]+ <.*>:$/ { fn = $2 } /call.*<__cxa_guard_acquire/ { print fn }' |
    c++filt | grep -v '^<custom_alloc::' || true)
  if test -n "$guarded"; then
    echo "FAIL: function-local statics with a C++ runtime guard outside the C++ API (use pthread_once):"
    echo "$guarded"
    fail=1
  else
    echo "ok: only the C++ API has function-local statics guarded by the C++ runtime"
  fi
else
  echo "note: objdump or c++filt missing: the guard check is not made"
fi
rm -f nostdcxx.out
exit $fail
