// malloc.c++ -- the C API (lca_*), the malloc-family override and operator
// new/delete.
//
// These are the only entry points of the process heap.  malloc's fast path is
// inline here: thread heap -> size class -> span pop, with no lock and no atomic
// read-modify-write; everything else goes to the slow paths in tcache.c++
// (and the files split from it: medium.c++, remote.c++, realloc.c++).
// With the override on (configure's default), malloc, free, ... are aliases of
// the lca_* functions, so the two families are one allocator.
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <malloc.h>
#include <new>
#include <pthread.h>
#include <unistd.h>

#include <libcalloc.h>

#include "config.h"
#include "placement.h++"
#include "options.h++"
#include "numa.h++"
#include "os.h++"
#include "secure.h++"
#include "secure_vg.h++"
#include "stats.h++"
#include "lifecycle.h++"
#include "tcache.h++"
#include "vg.h++"
#if CALLOC_TRACKING
#include "track.h++"
#endif

using namespace lca;

namespace {

#if CALLOC_SECURE
// --enable-secure: every block of the malloc family and of operator new comes
// from the process's secure heap (secure.c++).  These hooks are the only trace of
// it here; without the flag they are not compiled and the paths below are as
// they were.  A pointer the secure heap does not own (a block of an independent
// MemoryAllocator, or garbage) goes to the core heap, which frees or reports it.
inline void* secure_malloc(std::size_t size, std::size_t alignment) { return secure_process_alloc(size, alignment); }
// secure_free_if_secure keeps errno itself.  With --enable-tracking too, the
// secure heap's free calls the tracker itself for a block the tracker marked
// (secure.c++'s free_tracked), between its claim and its release: a free of an
// untracked block never asks the tracker (docs/design.md, "Secure and tracking
// together").
inline void secure_free(void* p, std::size_t size, std::size_t alignment, const char* what) {
  if (__builtin_expect(secure_free_if_secure(p, size, alignment, what), 1)) return;
  int saved = errno;
#if CALLOC_TRACKING
  // Not a secure block (the core heap's: realloc may have made one, and the
  // tracker recorded it): forgotten before the core heap frees it, whose fast
  // free does not reach free_cold.
  track_forget(p);
#endif
  block_free(p);
  errno = saved;
}
#endif

LCA_CORE_TEXT __attribute__((noinline)) void* malloc_slow(std::size_t size, std::size_t alignment) {
#if CALLOC_SECURE
#if CALLOC_TRACKING
  if (track_full()) return track_malloc(size, alignment);  // from the secure heap (track.c++)
#endif
  return secure_malloc(size, alignment);
#endif
  if (size > kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
#if CALLOC_TRACKING
  if (track_full()) return track_malloc(size, alignment);
#endif
  // Medium sizes in a thread that has a heap (never in Valgrind or ASan mode,
  // whose tls_heap is &g_no_heap): straight to the heap's medium cache or arena.
  Heap* h = tls_heap;
  if (h != &g_no_heap && h->node < 0 && alignment <= 16) {
    // Small sizes: fast_malloc found the head span dry (no free object, no
    // foreign one, nothing to carve or remote frees waiting), which is where
    // heap_alloc would start too: straight to the span refill, without the
    // domain_alloc -> heap_for_thread -> heap_alloc chain (~120 instructions
    // of a ~550-instruction refill; docs/design.md, "The slow path's tail").
    if (size <= kSlabMax) {
      void* p = heap_alloc_small_slow(h, size_to_class(size), size, 16);
      if (!p) errno = ENOMEM;
      return p;
    }
    if (size <= kLargeThreshold) return heap_alloc_medium(h, size);
  }
  void* p = domain_alloc(&g_process_domain, size, alignment);
  if (!p) errno = ENOMEM;
  return p;
}

inline void* fast_malloc(std::size_t size) {
#if CALLOC_SECURE
#if CALLOC_TRACKING
  // --enable-secure with --enable-tracking: the sampling countdown, and in full
  // mode every call (the secure heap has no slow path to send it to), go to
  // track_malloc, which takes its block from the secure heap.
  if (track_countdown(size) || track_full()) return track_malloc(size, 16);
#endif
  return secure_malloc(size, 16);
#endif
#if CALLOC_TRACKING
  // Sampling: one per-thread byte countdown (track.h++).
  if (track_countdown(size)) return track_malloc(size, 16);
#endif
  Heap* h = tls_heap;  // &g_no_heap when the thread has none: nothing to pop there
  if (__builtin_expect(size <= kSlabMax, 1)) {
    unsigned c = size_to_class(size);
    Span* s = h->head[c];
    FreeObject* o = s->free;
    if (__builtin_expect(o != nullptr, 1)) {
#if CALLOC_DEBUG
      span_debug_check_free(s, o);
#endif
      FreeObject* next = o->next;
      s->free = next;
      if (next) __builtin_prefetch(next, 1);  // as in span_pop
      o->guard = 0;
    } else if (void* f = heap_pop_foreign(h, c)) {
      // An object of another thread's span that this thread freed: its span
      // counts it as used already.
      h->counters.class_allocs[c].add(1);
      return f;
    } else if (s->bump < s->end && !span_has_remote(s)) {
      // Carve only when no remote frees wait: else the slow path collects them
      // first, or a span whose objects other threads free would be carved to its
      // end before any came back (producer-consumer: every class's span fully
      // carved, 15 MiB of heap for 6 MiB live).
      o = reinterpret_cast<FreeObject*>(s->bump);
      span_set_bump(s, s->bump + s->obj_size);
      if (!s->zeroed) o->guard = 0;  // a reused slot may hold an old guard there
    } else {
      return malloc_slow(size, 16);
    }
    span_use_alloc(s);  // counts the allocation (statistics: tcache.h++)
    return o;
  }
  return malloc_slow(size, 16);
}

inline void fast_free(void* p) {
#if CALLOC_SECURE
  if (!p) return;
  return secure_free(p, kAnySize, kAnyAlignment, "free");
#endif
  block_free(p);
}

LCA_CORE_TEXT void* aligned_malloc(std::size_t alignment, std::size_t size) {
  if (!is_power_of_two(alignment)) {
    errno = EINVAL;
    return nullptr;
  }
  if (alignment <= 16) return fast_malloc(size);
#if CALLOC_TRACKING
  if (track_countdown(size)) return track_malloc(size, alignment);
#endif
  return malloc_slow(size, alignment);
}

LCA_CORE_TEXT void* calloc_impl(std::size_t count, std::size_t size) {
  std::size_t total;
  if (__builtin_mul_overflow(count, size, &total) || total > kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
#if CALLOC_SECURE
#if CALLOC_TRACKING
  if (track_countdown(total) || track_full()) return track_calloc(total);  // zero-filled, from the secure heap
#endif
  void* z = secure_malloc(total, 16);  // secure blocks are zero-filled
  if (secure_vg() && z) secure_vg_zeroed(z, total);  // which memcheck learns here
  return z;
#endif
#if CALLOC_TRACKING
  // Large: counted down like any allocation (the path below bypasses
  // fast_malloc); an unsampled one takes that path, whose fresh mappings need
  // no memset (a memset of every large calloc made all its pages resident
  // whenever sampling was on).
  if (track_active() && total > kLargeThreshold && (track_full() || track_countdown(total)))
    return track_calloc(total);
#endif
  if (total > kLargeThreshold && !on_valgrind()) {
    void* p = domain_calloc_large(&g_process_domain, total, 16);  // a fresh mapping is not written
    if (!p) errno = ENOMEM;
    return p;
  }
  void* p = fast_malloc(total);
  if (p) std::memset(p, 0, total);
  return p;
}

}  // namespace

extern "C" {

// Code placement of the two hottest entry points.  Each gets a section of its own,
// aligned to 64 bytes, and starts at a fixed offset in it (the .skip below): where
// malloc and free fall relative to 64-byte lines moved malloc(64)/free pairs by up
// to 15 % on the benchmark machine (AMD EPYC), for identical instructions, and
// the offsets 16 (malloc) and 32 (free) were among the fastest of the 16 tried
// (docs/design.md, "Code placement").  Without this the offsets change with every
// edit anywhere in the library.
#if defined(__x86_64__) && defined(__ELF__)
#define LCA_HOT_SECTION(name, offset)                                                   \
  asm(".section .text.hot." #name ",\"ax\",@progbits\n.p2align 6\n.skip " #offset ", 0xcc\n" \
      ".previous\n")
#define LCA_HOT(name) __attribute__((section(".text.hot." #name), aligned(16)))
LCA_HOT_SECTION(lca_malloc, 16);
LCA_HOT_SECTION(lca_free, 32);
#else
#define LCA_HOT(name) LCA_CORE_TEXT
#endif

LCA_EXPORT LCA_HOT(lca_malloc) void* lca_malloc(std::size_t size) { return fast_malloc(size); }

// No null test: block_free's registry lookup fails for nullptr (free_cold returns).
LCA_EXPORT LCA_HOT(lca_free) void lca_free(void* ptr) { fast_free(ptr); }

LCA_EXPORT LCA_CORE_TEXT void* lca_calloc(std::size_t count, std::size_t size) { return calloc_impl(count, size); }

LCA_EXPORT LCA_CORE_TEXT void* lca_realloc(void* ptr, std::size_t size) {
  if (!ptr) return fast_malloc(size);
  if (size == 0) {
    fast_free(ptr);
    return nullptr;
  }
  if (size > kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
#if CALLOC_SECURE && CALLOC_TRACKING
  // track_realloc moves secure blocks within the secure heap (track.c++).
  if (track_active()) return track_realloc(ptr, size);
#endif
#if CALLOC_SECURE
  if (void* out; secure_realloc_if_secure(secure_process_heap(), ptr, size, &out, true)) {
    if (!out) errno = ENOMEM;
    return out;
  }
#endif
#if CALLOC_TRACKING
  if (track_active()) return track_realloc(ptr, size);
#endif
  ResizeResult how;
  void* p = block_realloc(&g_process_domain, ptr, size, true, &how);
  if (!p) errno = ENOMEM;
  return p;
}

LCA_EXPORT LCA_CORE_TEXT void* lca_reallocarray(void* ptr, std::size_t count, std::size_t size) {
  std::size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  return lca_realloc(ptr, total);
}

LCA_EXPORT LCA_CORE_TEXT void* lca_aligned_alloc(std::size_t alignment, std::size_t size) {
  return aligned_malloc(alignment, size);
}

LCA_EXPORT LCA_CORE_TEXT int lca_posix_memalign(void** result, std::size_t alignment, std::size_t size) {
  if (!is_power_of_two(alignment) || alignment % sizeof(void*) != 0) return EINVAL;
  int saved = errno;
  void* p = aligned_malloc(alignment, size);
  if (!p) {
    errno = saved;
    return ENOMEM;
  }
  *result = p;
  return 0;
}

LCA_EXPORT LCA_CORE_TEXT void* lca_memalign(std::size_t alignment, std::size_t size) {
  // Stricter than glibc, which rounds a bad alignment up: a non-power-of-two
  // alignment is a caller's bug, reported as EINVAL like aligned_alloc's.
  return aligned_malloc(alignment, size);
}

LCA_EXPORT LCA_CORE_TEXT std::size_t lca_usable_size(const void* ptr) {
  if (!ptr) return 0;
#if CALLOC_SECURE
  if (std::size_t n; secure_usable_size_if_secure(ptr, &n, "malloc_usable_size")) return n;
#endif
  return block_usable_size(ptr, "malloc_usable_size");
}

LCA_EXPORT void lca_get_stats(struct lca_stats* out) {
#if CALLOC_SECURE
  if (out && secure_process_heap()) return secure_stats_fill(secure_process_heap(), out);
#endif
  if (out) stats_fill(&g_process_domain, out);
}

LCA_EXPORT void lca_get_huge_stats(struct lca_huge_stats* out) {
  if (out) huge_stats_fill(out);
}

LCA_EXPORT void lca_print_stats(int fd) { stats_print(&g_process_domain, fd); }

LCA_EXPORT void lca_trim(void) {
#if CALLOC_SECURE
  if (secure_process_heap()) secure_trim(secure_process_heap());
#endif
  domain_trim(&g_process_domain);
}

// C23 free_sized and free_aligned_sized: the size (and alignment) the block was
// allocated with.  With --enable-secure they are checked ("Size mismatch",
// "Alignment mismatch"); otherwise they free like lca_free.
LCA_EXPORT LCA_CORE_TEXT void lca_free_sized(void* ptr, std::size_t size) {
  if (!ptr) return;
#if CALLOC_SECURE
  return secure_free(ptr, size, 16, "free_sized");
#endif
  (void)size;
  fast_free(ptr);
}

LCA_EXPORT LCA_CORE_TEXT void lca_free_aligned_sized(void* ptr, std::size_t alignment, std::size_t size) {
  if (!ptr) return;
#if CALLOC_SECURE
  return secure_free(ptr, size, alignment, "free_aligned_sized");
#endif
  (void)size;
  (void)alignment;
  fast_free(ptr);
}

LCA_EXPORT const char* lca_version(void) { return PACKAGE_VERSION; }

}  // extern "C"

namespace {

// Only the override uses these (--disable-override builds with -Werror too).
[[maybe_unused]] LCA_CORE_TEXT void* valloc_impl(std::size_t size) { return aligned_malloc(os_page_size(), size); }

[[maybe_unused]] LCA_CORE_TEXT void* pvalloc_impl(std::size_t size) {
  std::size_t page = os_page_size();
  if (size > kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
  return aligned_malloc(page, size ? align_up(size, page) : page);
}

// mallinfo2's fields as they fit an allocator without sbrk or glibc's bins:
// arena the bytes mapped from the OS for the process heap, uordblks the bytes
// of the blocks in use (usable sizes), fordblks the mapped bytes not in use
// (free objects, cached spans and blocks, metadata), hblks the live dedicated
// mappings of large blocks; ordblks, smblks, hblkhd, usmblks, fsmblks and
// keepcost have no counterpart and read 0.
[[maybe_unused]] struct mallinfo2 mallinfo2_impl() {
  lca_stats s{};
  lca_get_stats(&s);
  struct mallinfo2 m{};
  m.arena = s.os_memory_mapped;
  m.uordblks = s.total_allocated > s.total_freed ? s.total_allocated - s.total_freed : 0;
  m.fordblks = s.fragmentation_bytes;
  m.hblks = s.large_mappings;
  return m;
}

// The old mallinfo has int fields: each figure is capped at INT_MAX (glibc's
// wraps around past 2 GiB).
[[maybe_unused]] struct mallinfo mallinfo_impl() {
  const struct mallinfo2 m2 = mallinfo2_impl();
  auto cap = [](std::size_t v) { return v > static_cast<std::size_t>(INT_MAX) ? INT_MAX : static_cast<int>(v); };
  struct mallinfo m{};
  m.arena = cap(m2.arena);
  m.uordblks = cap(m2.uordblks);
  m.fordblks = cap(m2.fordblks);
  m.hblks = cap(m2.hblks);
  return m;
}

// malloc_info(options, fp): glibc's XML document (<malloc version="1">, as its
// malloc_info writes it) with mallinfo2's figures: one heap, whose "rest" total
// is the mapped bytes not in use (fordblks), "system current" and "aspace
// total" the bytes mapped from the OS (arena), and the "mmap" total's count the
// live dedicated mappings (hblks).  What has no counterpart (glibc's bins and
// fast bins, the peak, mprotect'ed bytes, the mappings' bytes) reads 0.  An
// options other than 0 is EINVAL (-1, as the man page says; glibc itself
// returns EINVAL).  Not on any allocation path: stdio may allocate here.
[[maybe_unused]] int malloc_info_impl(int options, FILE* fp) {
  if (options != 0 || !fp) {
    errno = EINVAL;
    return -1;
  }
  const struct mallinfo2 m = mallinfo2_impl();
  int n = std::fprintf(fp,
                       "<malloc version=\"1\">\n"
                       "<heap nr=\"0\">\n<sizes>\n</sizes>\n"
                       "<total type=\"fast\" count=\"0\" size=\"0\"/>\n"
                       "<total type=\"rest\" count=\"0\" size=\"%zu\"/>\n"
                       "<system type=\"current\" size=\"%zu\"/>\n"
                       "<system type=\"max\" size=\"0\"/>\n"
                       "<aspace type=\"total\" size=\"%zu\"/>\n"
                       "<aspace type=\"mprotect\" size=\"0\"/>\n"
                       "</heap>\n"
                       "<total type=\"fast\" count=\"0\" size=\"0\"/>\n"
                       "<total type=\"rest\" count=\"0\" size=\"%zu\"/>\n"
                       "<total type=\"mmap\" count=\"%zu\" size=\"0\"/>\n"
                       "<system type=\"current\" size=\"%zu\"/>\n"
                       "<system type=\"max\" size=\"0\"/>\n"
                       "<aspace type=\"total\" size=\"%zu\"/>\n"
                       "<aspace type=\"mprotect\" size=\"0\"/>\n"
                       "</malloc>\n",
                       m.fordblks, m.arena, m.arena, m.fordblks, m.hblks, m.arena, m.arena);
  return n < 0 ? -1 : 0;
}

// malloc_trim(pad): lca_trim; 1 when the trim gave memory back to the OS (an
// unmap or a page purge happened meanwhile), else 0, as glibc's.  libcalloc
// keeps no top of heap, so pad has nothing to keep.
[[maybe_unused]] int malloc_trim_impl(std::size_t) {
  const std::size_t before = os_calls(OsCall::unmap) + os_calls(OsCall::purge);
  lca_trim();
  return os_calls(OsCall::unmap) + os_calls(OsCall::purge) != before ? 1 : 0;
}

}  // namespace

// DT_FINI of libcalloc.so (-fini, configure's CALLOC_LAYOUT_LDFLAGS): the loader
// calls it at exit, after the destructors.  Empty, like the _fini it replaces,
// which the link puts after all of .text: its call mapped a 64 KiB window of text
// that nothing else touches (placement.h++).
extern "C" LCA_CORE_TEXT __attribute__((visibility("hidden"), used)) void lca_dt_fini() {}

#if CALLOC_OVERRIDE
// The malloc family.  Aliases, not wrappers: one symbol, no extra call.
#define LCA_ALIAS(target) __attribute__((alias(#target), visibility("default"), used))
extern "C" {
void* malloc(std::size_t) noexcept LCA_ALIAS(lca_malloc);
void free(void*) noexcept LCA_ALIAS(lca_free);
void* calloc(std::size_t, std::size_t) noexcept LCA_ALIAS(lca_calloc);
void* realloc(void*, std::size_t) noexcept LCA_ALIAS(lca_realloc);
void* reallocarray(void*, std::size_t, std::size_t) noexcept LCA_ALIAS(lca_reallocarray);
void* aligned_alloc(std::size_t, std::size_t) noexcept LCA_ALIAS(lca_aligned_alloc);
int posix_memalign(void**, std::size_t, std::size_t) noexcept LCA_ALIAS(lca_posix_memalign);
void* memalign(std::size_t, std::size_t) noexcept LCA_ALIAS(lca_memalign);
std::size_t malloc_usable_size(void*) noexcept LCA_ALIAS(lca_usable_size);
void free_sized(void*, std::size_t) noexcept LCA_ALIAS(lca_free_sized);
void free_aligned_sized(void*, std::size_t, std::size_t) noexcept LCA_ALIAS(lca_free_aligned_sized);

__attribute__((visibility("default"))) LCA_CORE_TEXT void* valloc(std::size_t size) noexcept { return valloc_impl(size); }
__attribute__((visibility("default"))) LCA_CORE_TEXT void* pvalloc(std::size_t size) noexcept { return pvalloc_impl(size); }

// glibc's heap introspection (<malloc.h>).  A program that calls these would
// otherwise get glibc's own, which describe glibc's heap -- unused under
// libcalloc: mallinfo2 read 0 bytes in use and malloc_trim returned nothing.
// Not on any allocation path (plain .text).
__attribute__((visibility("default"))) struct mallinfo2 mallinfo2(void) noexcept { return mallinfo2_impl(); }
__attribute__((visibility("default"))) struct mallinfo mallinfo(void) noexcept { return mallinfo_impl(); }
__attribute__((visibility("default"))) int malloc_trim(std::size_t pad) noexcept { return malloc_trim_impl(pad); }
__attribute__((visibility("default"))) void malloc_stats(void) noexcept { lca_print_stats(STDERR_FILENO); }
__attribute__((visibility("default"))) int malloc_info(int options, FILE* fp) noexcept {
  return malloc_info_impl(options, fp);
}
}

// operator new/delete: the new-handler loop of [new.delete.single], then bad_alloc.
// The new-handler and the throw go through src/cxxrt.c++ (libcalloc.so does not
// link the C++ runtime); the nothrow forms return null without an exception.
namespace {
LCA_CORE_TEXT __attribute__((noinline)) void* new_slow(std::size_t size, std::size_t alignment, bool nothrow) {
  for (;;) {
    void* p = alignment <= 16 ? fast_malloc(size) : aligned_malloc(alignment, size);
    if (p) return p;
    lca::CxxNewHandler handler = lca::cxx_get_new_handler();
    if (!handler) {
      if (nothrow) return nullptr;
      lca::cxx_throw_bad_alloc();
    }
    handler();
  }
}

inline void* new_impl(std::size_t size, bool nothrow = false) {
  void* p = fast_malloc(size);
  return __builtin_expect(p != nullptr, 1) ? p : new_slow(size, 16, nothrow);
}

inline void* new_aligned(std::size_t size, std::align_val_t al, bool nothrow = false) {
  std::size_t a = static_cast<std::size_t>(al);
  void* p = aligned_malloc(a, size);
  return p ? p : new_slow(size, a, nothrow);
}
}  // namespace

// The nothrow forms still catch: a new-handler may throw bad_alloc.
#define LCA_NEW_EXPORT __attribute__((visibility("default"))) LCA_CORE_TEXT
LCA_NEW_EXPORT void* operator new(std::size_t size) { return new_impl(size); }
LCA_NEW_EXPORT void* operator new[](std::size_t size) { return new_impl(size); }
LCA_NEW_EXPORT void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return new_impl(size, true);
  } catch (...) {
    return nullptr;
  }
}
LCA_NEW_EXPORT void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return new_impl(size, true);
  } catch (...) {
    return nullptr;
  }
}
LCA_NEW_EXPORT void* operator new(std::size_t size, std::align_val_t al) { return new_aligned(size, al); }
LCA_NEW_EXPORT void* operator new[](std::size_t size, std::align_val_t al) { return new_aligned(size, al); }
LCA_NEW_EXPORT void* operator new(std::size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  try {
    return new_aligned(size, al, true);
  } catch (...) {
    return nullptr;
  }
}
LCA_NEW_EXPORT void* operator new[](std::size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  try {
    return new_aligned(size, al, true);
  } catch (...) {
    return nullptr;
  }
}

#if CALLOC_SECURE
// Sized and aligned delete check what they are told against the block
// ("Size mismatch", "Alignment mismatch"); a plain new has the default alignment.
#define LCA_DELETE(p, size, al) (p ? secure_free(p, size, al, "operator delete") : void())
#else
#define LCA_DELETE(p, size, al) ((void)(size), (void)(al), lca_free(p))
#endif
LCA_NEW_EXPORT void operator delete(void* p) noexcept { lca_free(p); }
LCA_NEW_EXPORT void operator delete[](void* p) noexcept { lca_free(p); }
LCA_NEW_EXPORT void operator delete(void* p, std::size_t n) noexcept { LCA_DELETE(p, n, 16); }
LCA_NEW_EXPORT void operator delete[](void* p, std::size_t n) noexcept { LCA_DELETE(p, n, 16); }
LCA_NEW_EXPORT void operator delete(void* p, const std::nothrow_t&) noexcept { lca_free(p); }
LCA_NEW_EXPORT void operator delete[](void* p, const std::nothrow_t&) noexcept { lca_free(p); }
LCA_NEW_EXPORT void operator delete(void* p, std::align_val_t al) noexcept {
  LCA_DELETE(p, kAnySize, static_cast<std::size_t>(al));
}
LCA_NEW_EXPORT void operator delete[](void* p, std::align_val_t al) noexcept {
  LCA_DELETE(p, kAnySize, static_cast<std::size_t>(al));
}
LCA_NEW_EXPORT void operator delete(void* p, std::size_t n, std::align_val_t al) noexcept {
  LCA_DELETE(p, n, static_cast<std::size_t>(al));
}
LCA_NEW_EXPORT void operator delete[](void* p, std::size_t n, std::align_val_t al) noexcept {
  LCA_DELETE(p, n, static_cast<std::size_t>(al));
}
LCA_NEW_EXPORT void operator delete(void* p, std::align_val_t al, const std::nothrow_t&) noexcept {
  LCA_DELETE(p, kAnySize, static_cast<std::size_t>(al));
}
LCA_NEW_EXPORT void operator delete[](void* p, std::align_val_t al, const std::nothrow_t&) noexcept {
  LCA_DELETE(p, kAnySize, static_cast<std::size_t>(al));
}
#endif
