// os.h++ -- the only module that talks to the kernel about memory.
#ifndef LCA_OS_HXX
#define LCA_OS_HXX

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace lca {

std::size_t os_page_size();

// Fresh read-write anonymous memory, zero-filled; nullptr (errno ENOMEM) on failure.
void* os_map(std::size_t size);
// As os_map, with the start aligned to `alignment` (a power of two >= page size).
void* os_map_aligned(std::size_t size, std::size_t alignment);
void os_unmap(void* addr, std::size_t size);
// Gives the pages back to the kernel; the range stays mapped and reads as zero.
void os_purge(void* addr, std::size_t size);
// Resizes a mapping: in place only, or allowed to move (the data moves with the
// pages, nothing is copied).  nullptr on failure, the old mapping intact.  ASan
// builds: the range it may leave loses its poison first (all of it when it may
// move), whatever the outcome.
void* os_remap(void* addr, std::size_t old_size, std::size_t new_size, bool may_move);
// Huge pages (used by huge.c++).  os_map_hugetlb maps size bytes (a multiple of
// the page size 1 << page_shift) from the hugetlbfs pool of that page size; the
// kernel reserves the pages at mmap time, so nullptr (errno ENOMEM) means the pool
// cannot provide them and a later fault cannot fail.  os_unmap releases it.
void* os_map_hugetlb(std::size_t size, unsigned page_shift);
// MADV_HUGEPAGE (want) or MADV_NOHUGEPAGE on a range: asks for transparent huge
// pages.  False when the kernel refuses (no THP support).
bool os_advise_huge(void* addr, std::size_t size, bool want);
// Makes a range inaccessible (guard pages) or accessible again.
bool os_protect(void* addr, std::size_t size, bool accessible);

// Secure heap (secure.c++): reserves size bytes of no-access address space (no
// memory is committed until os_protect opens parts of it), aligned to `alignment`.
// A nonzero `hint` (a multiple of the alignment) is tried first and taken only if
// the kernel places the reservation exactly there (a plain hint: nothing already
// mapped is replaced); otherwise the kernel chooses.  nullptr on failure.
void* os_reserve(std::size_t size, std::size_t alignment, std::uintptr_t hint);
// Fills buf with n bytes from the kernel's random source (getrandom); false when
// it cannot (the caller falls back to weaker entropy).
bool os_random(void* buf, std::size_t n);

// A full memory barrier on every thread of the process that is running at the
// time (membarrier(2), MEMBARRIER_CMD_PRIVATE_EXPEDITED; the process is
// registered for it whenever the command answers EPERM, "not registered": on
// the first call, and in a fork's child should the kernel not carry the
// registration over).  The secure heap's release of a chunk
// (secure.c++, "readers") pairs it with plain stores of the threads that read
// chunk metadata, which thus need no fence of their own.  False when the kernel
// refuses (ENOSYS before Linux 4.14, EPERM or ENOSYS from a seccomp filter):
// the caller must then do without it.
bool os_barrier_all_threads();

// A cheap monotonic clock (CLOCK_MONOTONIC_COARSE, vDSO) in nanoseconds, for the
// decay of cached memory.
std::uint64_t os_now_ns();

// How many calls of each kind this process made through this module (every
// os_map* is one map, however many mmap/munmap it takes to align it).
enum class OsCall : unsigned { map, unmap, purge, remap, advise, protect, kinds };
std::size_t os_calls(OsCall kind);

// Bytes this process holds from os_map*/os_remap, all heaps together.
std::size_t os_mapped_bytes();

inline std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) & ~(a - 1); }
inline bool is_power_of_two(std::size_t n) { return n && !(n & (n - 1)); }

}  // namespace lca

#endif
