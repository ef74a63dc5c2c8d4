#!/bin/sh
# tests/integration/tsan-user.sh -- a program built with ThreadSanitizer
# (-fsanitize=thread) uses libcalloc's own heaps: SecureAllocator, an
# independent MemoryAllocator, from two threads.
#
# TSan brings its own malloc and intercepts mmap in the whole process, the
# (uninstrumented) libcalloc.so included.  Its interceptor moved the secure
# heap's address hint, which it does not accept, to 0 while keeping
# MAP_FIXED_NOREPLACE: the kernel then mapped page 0 (root) and TSan died with
# "mmap at bad address" at the first SecureAllocator::allocate (session 18;
# src/os.c++, os_reserve, now passes a plain hint).
# Exit 0 pass, 1 fail, 77 skip (no shared library, a sanitizer build of
# libcalloc, or no working -fsanitize=thread here).
#
# Environment (tests/local.mk): top_builddir, top_srcdir.

set -u
top_builddir=${top_builddir:-.}
top_srcdir=${top_srcdir:-$top_builddir}
libdir=$top_builddir/src/.libs

if test ! -f "$libdir/libcalloc.so"; then
  echo "SKIP: $libdir/libcalloc.so was not built (static-only build?)"
  exit 77
fi
make_var() {
  sed -n "s/^$1 = //p" "$top_builddir/Makefile" | head -n 1
}
cxx=$(make_var CXX)
test -n "$cxx" || cxx=c++
case " $(make_var CXXFLAGS) " in
  *-fsanitize=*)
    echo "SKIP: libcalloc is built with a sanitizer itself ($(make_var CXXFLAGS)): a TSan program cannot load it"
    exit 77 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/tsan-user.XXXXXX") || exit 99
trap 'rm -rf "$work"' EXIT INT TERM

# Can this machine build and run a TSan program at all?
cat >"$work/probe.c++" <<'PROBE'
#include <thread>
int main() { int x = 0; std::thread t([&] { x = 1; }); t.join(); return x == 1 ? 0 : 1; }
PROBE
if ! $cxx -std=c++20 -fsanitize=thread -g -O1 "$work/probe.c++" -o "$work/probe" >"$work/probe.log" 2>&1; then
  echo "SKIP: $cxx cannot build with -fsanitize=thread (libtsan missing?):"
  cat "$work/probe.log"
  exit 77
fi
if ! "$work/probe" >"$work/probe.out" 2>&1; then
  echo "SKIP: a TSan program does not run on this machine (kernel address layout?):"
  cat "$work/probe.out"
  exit 77
fi

cat >"$work/user.c++" <<'USER'
#include <custom_alloc.h++>
#include <custom_alloc/secure_allocator.h++>

#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

// Enough blocks of enough sizes that each secure heap makes several chunks
// (each a 4 MiB reservation at a random hint).
static int churn(const char* who) {
  custom_alloc::SecureAllocator secure;
  custom_alloc::MemoryAllocator heap;
  std::vector<void*> blocks;
  for (int i = 0; i < 3000; i++) {
    std::size_t size = 16 + static_cast<std::size_t>(i % 97) * 40;
    void* s = secure.allocate(size);
    void* h = heap.allocate(size);
    if (!s || !h) {
      std::printf("%s: allocation %d of %zu bytes failed\n", who, i, size);
      return 1;
    }
    std::memset(s, 0x5a, size);
    std::memset(h, 0xa5, size);
    blocks.push_back(s);
    heap.deallocate(h);
  }
  for (void* p : blocks) secure.deallocate(p);
  return 0;
}

int main() {
  int other = 1;
  std::thread t([&] { other = churn("thread"); });
  int mine = churn("main");
  t.join();
  std::printf("main %d, thread %d\n", mine, other);
  return mine | other;
}
USER
if ! $cxx -std=c++20 -fsanitize=thread -g -O1 -I"$top_srcdir/include" -I"$top_builddir" "$work/user.c++" \
    -o "$work/user" -L"$libdir" -lcalloc -Wl,-rpath,"$(cd "$libdir" && pwd)" >"$work/build.log" 2>&1; then
  echo "FAIL: the TSan program does not build:"
  cat "$work/build.log"
  exit 1
fi
if ! TSAN_OPTIONS=halt_on_error=1 timeout 120 "$work/user" >"$work/run.log" 2>&1; then
  echo "FAIL: the TSan program using SecureAllocator and MemoryAllocator failed:"
  cat "$work/run.log"
  exit 1
fi
cat "$work/run.log"
echo "PASS: a TSan-built program used SecureAllocator and MemoryAllocator from two threads"
exit 0
