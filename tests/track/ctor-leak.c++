// tests/track/ctor-leak.c++ -- a shared object whose constructor, run by
// dlopen (the dynamic loader's call_init), leaks 5555 bytes with a malloc of
// its own: a leak of the program's, however many loader frames lie above it
// (tests/integration/track.sh, "dlopen-keep"; tests/unit/track.c++).  The
// dynamic loader's own records of this library (its link map, scope arrays)
// are not leaks of the program and are counted apart; this block must not be.
#include <cstdlib>
#include <cstring>

namespace {
void* volatile g_kept;
}

// malloc is called from the constructor itself, whose caller is the loader:
// the stack's first frame above the allocator is this function, the next
// ones are ld.so's and libc's, up to dlopen.
extern "C" __attribute__((visibility("default"), constructor, noinline)) void ctorleak_constructor() {
  void* p = std::malloc(5555);
  std::memset(p, 3, 5555);
  g_kept = p;
  g_kept = nullptr;  // not even reachable: a plain leak
}
