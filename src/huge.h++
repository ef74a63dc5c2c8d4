// huge.h++ -- 2 MiB / 1 GiB pages: hugetlbfs, else transparent huge pages, else
// normal pages, for the blocks of custom_alloc::HugePageAllocator.
//
// A HugeState is one allocator's table of huge blocks: their start, mapped size,
// page size and backing, kept out of band (an open-addressing hash table in memory
// of its own from the OS layer, linear probing with backward-shift deletion) under
// one mutex.  Nothing is written into the blocks, so a block can be handed out
// exactly page-aligned and a pointer that is not one of ours is recognised, never
// followed.  The functions reading /sys tell what the system offers right now.
#ifndef LCA_HUGE_HXX
#define LCA_HUGE_HXX

#include <cstddef>
#include <cstdint>

namespace lca {

struct ModuleOps;

constexpr std::size_t kHugePage2M = std::size_t{1} << 21;
constexpr std::size_t kHugePage1G = std::size_t{1} << 30;
// Larger requests fail with ENOMEM before any rounding can overflow.
constexpr std::size_t kHugeMaxRequest = std::size_t{1} << 46;

enum class HugeBacking : std::uint8_t { none = 0, hugetlb = 1, transparent = 2, normal = 3 };

// Which backings huge_alloc may try (normal pages are always allowed: the last
// resort).  The default is everything the build supports; tests narrow it to
// exercise each fallback on any machine.
enum : unsigned {
  kHugeTryHugetlb = 1u << 0,
  kHugeTryTransparent = 1u << 1,
  kHugeTryAll = kHugeTryHugetlb | kHugeTryTransparent,
};

struct HugeBlock {
  void* base;
  std::size_t size;       // mapped bytes, a multiple of page_size
  std::size_t page_size;  // requested page size
  HugeBacking backing;
};

struct HugeCounters {
  std::size_t live_blocks[3];  // index: backing - 1
  std::size_t live_bytes[3];
  std::size_t allocations;
  std::size_t deallocations;
  std::size_t hugetlb_fallbacks;
};

struct HugeState;

// nullptr when the OS refuses the table's memory.
HugeState* huge_state_create();
// Unmaps every live block, then the table.
void huge_state_destroy(HugeState* s);
// fork() (lifecycle.c++): every table's lock and the list's, taken before the
// fork in the parent (after the domain and large-block locks) and released
// after it, or made new in the child.
void huge_lock_all();
void huge_unlock_all();
void huge_reinit_after_fork();

// A zero-filled block of at least size bytes (0 counts as 1) rounded up to and
// aligned to page_size (kHugePage2M or kHugePage1G).  nullptr with errno = EINVAL
// for another page size, ENOMEM when nothing can be mapped.
void* huge_alloc(HugeState* s, std::size_t size, std::size_t page_size);
// Unmaps a live block of s; false (nothing done) when p is not the start of one.
bool huge_free(HugeState* s, void* p);
// The HugePageAllocators' table for the core's entry points (module.h++), which
// HugePageAllocator registers: a huge block given to free, realloc,
// malloc_usable_size or another heap's calls is freed, resized (within its
// allocator) or measured (its mapped size) there.
const ModuleOps* huge_module();
bool huge_lookup(const HugeState* s, const void* p, HugeBlock* out);
HugeCounters huge_counters(const HugeState* s);
void huge_set_backings(HugeState* s, unsigned try_mask);
unsigned huge_backings(const HugeState* s);
// Bytes of s's live blocks that the kernel backs with huge pages now: hugetlb
// blocks whole, transparent and normal blocks as /proc/self/smaps says
// (AnonHugePages of their mappings).  `of` selects one backing (none: all).
std::size_t huge_resident_huge_bytes(const HugeState* s, HugeBacking of);

// Bytes of the heap's chunks (all heaps) that THP backs now: huge_coverage().thp_heap.
std::size_t huge_heap_anon_huge_bytes();

// --- coverage: how much of libcalloc's memory huge pages back now ---------------
// Read from /proc/self/smaps when asked (a read of the whole file: about a
// millisecond per thousand mappings), never kept up to date.  smaps gives the
// transparent huge pages (AnonHugePages) per mapping (VMA), and the kernel merges
// neighbouring mappings with the same flags into one VMA: a VMA's huge pages are
// shared out among heap chunks (the registry), large blocks (their table), the
// blocks of every HugePageAllocator and foreign memory in proportion to the whole
// 2 MiB ranges each holds in it -- exact for a VMA of one kind, an estimate for a
// mixed one.  hugetlb blocks are counted whole (their pages are reserved at mmap).
struct HugeCoverage {
  std::size_t thp_heap;    // AnonHugePages in heap chunks
  std::size_t thp_large;   // ... in large blocks (own mappings above 1 MiB)
  std::size_t thp_blocks;  // ... in transparent and normal HugePageAllocator blocks
  std::size_t hugetlb;     // live hugetlb blocks of every HugePageAllocator
  bool smaps_read;         // false: /proc/self/smaps unreadable, the thp_* are 0
};
HugeCoverage huge_coverage();

// Process-wide counters (all HugePageAllocators, alive or destroyed).
std::size_t huge_total_hugetlb_fallbacks();

// --- purging memory that huge pages may back ----------------------------------
// Returning part of a transparent huge page to the OS (MADV_DONTNEED, munmap)
// splits it into 4 KiB pages, and the rest of it stays resident anyway.  So where
// memory may be backed by THP, libcalloc purges only the whole 2 MiB ranges that
// are entirely free and leaves a partly used range resident (tcache.c++ span
// purges, large.c++ shrinks).  Elsewhere purges stay 4 KiB-granular.
struct ThpPolicy {
  bool usable;  // mode always or madvise, and the process has not switched THP off
  bool always;  // mode always: unadvised anonymous memory may get huge pages too
};
// Read once, at the first call (the heap asks on every chunk and large mapping;
// a change of the system mode or of PR_SET_THP_DISABLE later is not seen).
ThpPolicy huge_thp_policy();
// Whether a mapping advised MADV_HUGEPAGE (advised) or not advised at all may be
// backed by transparent huge pages under the policy.
inline bool huge_may_back(ThpPolicy p, bool advised) { return p.usable && (advised || p.always); }
// A small heap stays on 4 KiB pages (issue 17): with the THP mode `always` and
// huge_heap unset, the process's first kSmallHeapChunks chunks are advised
// MADV_NOHUGEPAGE, so a program whose heap fits in them never pays 2 MiB per
// touched range (a small program's peak RSS 1.6-3.3 x glibc's, docs/design.md
// "Linkage and a small program's fixed memory"); later chunks follow the mode.
constexpr std::size_t kSmallHeapChunks = 2;
inline bool huge_small_heap_no_thp(ThpPolicy p, int huge_heap_option, std::size_t chunks_before) {
  return huge_heap_option < 0 && p.usable && p.always && chunks_before < kSmallHeapChunks;
}

// Number of whole, 2 MiB-aligned 2 MiB ranges inside [lo, hi).
inline std::size_t huge_whole_ranges(std::uintptr_t lo, std::uintptr_t hi) {
  std::uintptr_t a = (lo + kHugePage2M - 1) & ~(std::uintptr_t{kHugePage2M} - 1);
  std::uintptr_t b = hi & ~(std::uintptr_t{kHugePage2M} - 1);
  return b > a ? (b - a) / kHugePage2M : 0;
}

struct HugePurgeCounters {
  std::size_t purged_ranges;  // whole 2 MiB ranges returned to the OS
  std::size_t kept_ranges;    // partly used 2 MiB ranges whose free part a purge left resident
  std::size_t kept_bytes;     // the free bytes of those ranges (summed over the purges)
};
void huge_count_purge(std::size_t purged_ranges, std::size_t kept_ranges, std::size_t kept_bytes);
HugePurgeCounters huge_purge_counters();

// --- what the system offers --------------------------------------------------
enum class ThpMode { unsupported, always, madvise, never };
// /sys/kernel/mm/transparent_hugepage/enabled, the bracketed word.
ThpMode huge_thp_mode();
// PR_GET_THP_DISABLE: true when THP is switched off for this process.
bool huge_thp_disabled_for_process();
// Mode always or madvise, and not switched off for the process.
bool huge_thp_usable();
// Clears PR_SET_THP_DISABLE; false when that failed.
bool huge_thp_enable_for_process();

struct HugePool {
  bool supported;  // /sys/kernel/mm/hugepages/hugepages-NkB exists
  std::size_t total;  // nr_hugepages
  std::size_t free;   // free_hugepages - resv_hugepages: what a new mapping can get
};
HugePool huge_pool(std::size_t page_size);

// Whether the module was configured in (--enable-huge).
bool huge_built();

// Sums the AnonHugePages of the mappings of /proc/self/smaps that lie in
// [start, start + size) (exposed for tests); 0 when smaps is unreadable.
std::size_t huge_smaps_anon_huge_bytes(const void* start, std::size_t size);

}  // namespace lca

#endif
