// sanitizer.h++ -- sanitizer builds: which sanitizer the code is compiled with,
// and what libcalloc tells it.
//
// AddressSanitizer (-fsanitize=address: __SANITIZE_ADDRESS__ with GCC,
// __has_feature(address_sanitizer) with Clang): libcalloc works in "ASan mode",
// which is Valgrind mode (vg.h++) with ASan's shadow memory instead of memcheck's
// (asan.c++): every call takes the slow path, a block is unpoisoned for exactly the
// requested bytes and followed by a poisoned redzone, freed blocks stay poisoned in
// a quarantine, and memory libcalloc gives back to the OS is unpoisoned first (ASan
// keeps the shadow of unmapped memory as it was).
// ThreadSanitizer (-fsanitize=thread): libcalloc runs as in a normal build; only
// the fork handlers say what TSan cannot see (tsan_released_at_fork).
// Without a sanitizer every function here is an empty inline, and LCA_ASAN and
// LCA_TSAN are 0.
#ifndef LCA_SANITIZER_HXX
#define LCA_SANITIZER_HXX

#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#define LCA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LCA_ASAN 1
#endif
#endif
#ifndef LCA_ASAN
#define LCA_ASAN 0
#endif

#if defined(__SANITIZE_THREAD__)
#define LCA_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LCA_TSAN 1
#endif
#endif
#ifndef LCA_TSAN
#define LCA_TSAN 0
#endif

#if LCA_ASAN
#include <sanitizer/asan_interface.h>
#endif
#if LCA_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace lca {

#if LCA_ASAN
// The user may not touch n bytes at p (ASan reports "use-after-poison").
inline void asan_poison(const void* p, std::size_t n) { ASAN_POISON_MEMORY_REGION(p, n); }
// n bytes at p are addressable again.
inline void asan_unpoison(const void* p, std::size_t n) { ASAN_UNPOISON_MEMORY_REGION(p, n); }
// Frees every block waiting in the quarantine now (for tests that measure how
// freed memory is reused).
void asan_flush_quarantine();
#else
inline void asan_poison(const void*, std::size_t) {}
inline void asan_unpoison(const void*, std::size_t) {}
inline void asan_flush_quarantine() {}
#endif

// fork(): in the child, the locks the prefork handler took are initialised again
// (glibc refuses to unlock a recursive mutex there: its owner is the parent's
// thread id).  TSan does not take that for a release and would report the next
// lock by another thread as a double lock: the forking thread releases m for it.
#if LCA_TSAN
inline void tsan_released_at_fork(void* m) {
  __tsan_mutex_pre_unlock(m, 0);
  __tsan_mutex_post_unlock(m, 0);
}
#else
inline void tsan_released_at_fork(void*) {}
#endif

}  // namespace lca

#endif
