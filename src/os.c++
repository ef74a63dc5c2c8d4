// os.c++ -- every mmap, munmap, madvise, mremap and mprotect of libcalloc, the
// membarrier that the secure heap's chunk release issues, and the coarse clock
// that times the return of cached memory to the OS.
//
// Nothing here allocates; failures are reported to the caller as nullptr with
// errno = ENOMEM, never as an abort, so that malloc can return NULL under memory
// exhaustion (RLIMIT_AS, overcommit limits).
#include "os.h++"
#include "placement.h++"

#include "sanitizer.h++"
#include "vg.h++"

#include <cerrno>
#include <cstdint>
#include <ctime>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace lca {
namespace {
constinit std::atomic<std::size_t> g_mapped{0};
constinit std::atomic<std::size_t> g_page_size{0};
// Calls of each kind, for the test that a warmed-up program makes none.
constinit std::atomic<std::size_t> g_calls[static_cast<unsigned>(OsCall::kinds)]{};
inline void count(OsCall kind) { g_calls[static_cast<unsigned>(kind)].fetch_add(1, std::memory_order_relaxed); }
}  // namespace

std::size_t os_calls(OsCall kind) { return g_calls[static_cast<unsigned>(kind)].load(std::memory_order_relaxed); }

LCA_CORE_TEXT std::size_t os_page_size() {
  std::size_t p = g_page_size.load(std::memory_order_relaxed);
  if (__builtin_expect(p == 0, 0)) {
    // The auxiliary vector, not sysconf: glibc's sysconf reads a jump table in
    // libc's rodata, a 64 KiB fault-around window that a C program does not
    // otherwise map (placement.h++).
    unsigned long v = getauxval(AT_PAGESZ);
    if (v == 0) v = static_cast<unsigned long>(sysconf(_SC_PAGESIZE));
    p = static_cast<long>(v) > 0 ? static_cast<std::size_t>(v) : 4096;
    g_page_size.store(p, std::memory_order_relaxed);
  }
  return p;
}

LCA_CORE_TEXT void* os_map(std::size_t size) {
  count(OsCall::map);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    errno = ENOMEM;
    return nullptr;
  }
  g_mapped.fetch_add(size, std::memory_order_relaxed);
  vg_hide(p, size);  // libcalloc's memory until a block in it is handed out
  return p;
}

LCA_CORE_TEXT void* os_map_aligned(std::size_t size, std::size_t alignment) {
  if (alignment <= os_page_size()) return os_map(size);
  count(OsCall::map);
  if (size + alignment < size) {
    errno = ENOMEM;
    return nullptr;
  }
  // Over-map by the alignment, then trim both ends: the kernel keeps no trace of
  // the trimmed parts, so only `size` bytes stay mapped.
  std::size_t span = size + alignment;
  int saved_errno = errno;  // (a success leaves it as it was)
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    // Near an address-space limit the over-mapping may not fit where the block
    // itself would: try the exact size, which the kernel may place aligned.
    raw = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw != MAP_FAILED && (reinterpret_cast<std::uintptr_t>(raw) & (alignment - 1)) == 0) {
      errno = saved_errno;
      g_mapped.fetch_add(size, std::memory_order_relaxed);
      vg_hide(raw, size);
      return raw;
    }
    if (raw != MAP_FAILED) munmap(raw, size);
    errno = ENOMEM;
    return nullptr;
  }
  auto base = reinterpret_cast<std::uintptr_t>(raw);
  std::uintptr_t aligned = (base + alignment - 1) & ~(alignment - 1);
  std::size_t head = aligned - base;
  std::size_t tail = span - head - size;
  if (head) munmap(raw, head);
  if (tail) munmap(reinterpret_cast<void*>(aligned + size), tail);
  g_mapped.fetch_add(size, std::memory_order_relaxed);
  vg_hide(reinterpret_cast<void*>(aligned), size);
  return reinterpret_cast<void*>(aligned);
}

LCA_CORE_TEXT void os_unmap(void* addr, std::size_t size) {
  if (!addr || !size) return;
  count(OsCall::unmap);
  // ASan builds: the shadow of unmapped memory keeps its poison, which a later
  // mapping at the same address would inherit (sanitizer.h++).
  asan_unpoison(addr, size);
  munmap(addr, size);
  g_mapped.fetch_sub(size, std::memory_order_relaxed);
}

LCA_CORE_TEXT void os_purge(void* addr, std::size_t size) {
  if (!size) return;
  count(OsCall::purge);
  madvise(addr, size, MADV_DONTNEED);
}

LCA_CORE_TEXT void* os_remap(void* addr, std::size_t old_size, std::size_t new_size, bool may_move) {
  count(OsCall::remap);
  // ASan builds: the range the mapping may leave (all of it when it may move,
  // the tail when it shrinks) is unpoisoned before the call, as in os_unmap: the
  // shadow of unmapped memory keeps its poison, and once mremap has unmapped the
  // range another thread's new mapping may start there.  Unpoisoned after the
  // call, that mapping was poisoned in between (a 2 MiB huge-page block mapped
  // where a cached large mapping had grown away from: "use-after-poison" on its
  // first write in tests/stress/full_system).  A mapping that stays where it was
  // keeps no poison then: its callers poison it again (vg_block_allocated) or
  // had unpoisoned it already (vg_realloc).
  if (may_move)
    asan_unpoison(addr, old_size);
  else if (new_size < old_size)
    asan_unpoison(static_cast<char*>(addr) + new_size, old_size - new_size);
  void* p = mremap(addr, old_size, new_size, may_move ? MREMAP_MAYMOVE : 0);
  if (p == MAP_FAILED) {
    errno = ENOMEM;
    return nullptr;
  }
  if (new_size >= old_size)
    g_mapped.fetch_add(new_size - old_size, std::memory_order_relaxed);
  else
    g_mapped.fetch_sub(old_size - new_size, std::memory_order_relaxed);
  return p;
}

void* os_map_hugetlb(std::size_t size, unsigned page_shift) {
  count(OsCall::map);
#if defined(MAP_HUGETLB) && defined(MAP_HUGE_SHIFT)
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB |
              static_cast<int>(page_shift << MAP_HUGE_SHIFT);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) {
    errno = ENOMEM;
    return nullptr;
  }
  g_mapped.fetch_add(size, std::memory_order_relaxed);
  vg_hide(p, size);
  return p;
#else
  (void)size;
  (void)page_shift;
  errno = ENOMEM;
  return nullptr;
#endif
}

bool os_advise_huge(void* addr, std::size_t size, bool want) {
  count(OsCall::advise);
#ifdef MADV_HUGEPAGE
  return madvise(addr, size, want ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) == 0;
#else
  (void)addr;
  (void)size;
  (void)want;
  return false;
#endif
}

bool os_protect(void* addr, std::size_t size, bool accessible) {
  count(OsCall::protect);
  return mprotect(addr, size, accessible ? PROT_READ | PROT_WRITE : PROT_NONE) == 0;
}

void* os_reserve(std::size_t size, std::size_t alignment, std::uintptr_t hint) {
  const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  int saved_errno = errno;  // a refused hint is no failure of the call
  if (hint) {
    // A plain hint, not MAP_FIXED_NOREPLACE: the kernel takes a hint whose range
    // is free, and that is all this needs.  An mmap interposer may move an
    // address it does not accept to 0 and keep the flag: ThreadSanitizer's does
    // (it knows MAP_FIXED only), and the kernel then mapped page 0 for a root
    // process, where TSan died ("mmap at bad address"): a TSan-built program's
    // first SecureAllocator::allocate (tests/integration/tsan-user.sh).
    void* p = mmap(reinterpret_cast<void*>(hint), size, PROT_NONE, flags, -1, 0);
    if (p != MAP_FAILED) {
      if (reinterpret_cast<std::uintptr_t>(p) == hint) {
        g_mapped.fetch_add(size, std::memory_order_relaxed);
        vg_hide(p, size);
        return p;
      }
      munmap(p, size);
    }
    errno = saved_errno;
  }
  if (size + alignment < size) {
    errno = ENOMEM;
    return nullptr;
  }
  std::size_t span = size + alignment;
  void* raw = mmap(nullptr, span, PROT_NONE, flags, -1, 0);
  if (raw == MAP_FAILED) {
    errno = ENOMEM;
    return nullptr;
  }
  auto base = reinterpret_cast<std::uintptr_t>(raw);
  std::uintptr_t aligned = (base + alignment - 1) & ~(alignment - 1);
  std::size_t head = aligned - base;
  std::size_t tail = span - head - size;
  if (head) munmap(raw, head);
  if (tail) munmap(reinterpret_cast<void*>(aligned + size), tail);
  g_mapped.fetch_add(size, std::memory_order_relaxed);
  vg_hide(reinterpret_cast<void*>(aligned), size);
  return reinterpret_cast<void*>(aligned);
}

bool os_random(void* buf, std::size_t n) {
  auto* out = static_cast<unsigned char*>(buf);
  while (n) {
    ssize_t got = getrandom(out, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    out += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}

namespace {
// <linux/membarrier.h>'s values, written here: the header is missing from some
// older C libraries' kernel headers, and these are the kernel's ABI.
constexpr int kMembarrierPrivateExpedited = 1 << 3;
constexpr int kMembarrierRegisterPrivateExpedited = 1 << 4;
}  // namespace

bool os_barrier_all_threads() {
#ifdef SYS_membarrier
  const int saved_errno = errno;
  bool done = syscall(SYS_membarrier, kMembarrierPrivateExpedited, 0, 0) == 0;
  // Not registered (the first call; a fork's child, should the kernel not carry
  // the registration over): register, then again.
  // Registration is idempotent and process-wide.
  if (!done && errno == EPERM && syscall(SYS_membarrier, kMembarrierRegisterPrivateExpedited, 0, 0) == 0)
    done = syscall(SYS_membarrier, kMembarrierPrivateExpedited, 0, 0) == 0;
  errno = saved_errno;
  return done;
#else
  return false;
#endif
}

LCA_CORE_TEXT std::uint64_t os_now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::size_t os_mapped_bytes() { return g_mapped.load(std::memory_order_relaxed); }

}  // namespace lca
