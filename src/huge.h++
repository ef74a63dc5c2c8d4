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

// A zero-filled block of at least size bytes (0 counts as 1) rounded up to and
// aligned to page_size (kHugePage2M or kHugePage1G).  nullptr with errno = EINVAL
// for another page size, ENOMEM when nothing can be mapped.
void* huge_alloc(HugeState* s, std::size_t size, std::size_t page_size);
// Unmaps a live block of s; false (nothing done) when p is not the start of one.
bool huge_free(HugeState* s, void* p);
bool huge_lookup(const HugeState* s, const void* p, HugeBlock* out);
HugeCounters huge_counters(const HugeState* s);
void huge_set_backings(HugeState* s, unsigned try_mask);
unsigned huge_backings(const HugeState* s);
// Bytes of s's live blocks that the kernel backs with huge pages now: hugetlb
// blocks whole, transparent and normal blocks as /proc/self/smaps says
// (AnonHugePages of their mappings).  `of` selects one backing (none: all).
std::size_t huge_resident_huge_bytes(const HugeState* s, HugeBacking of);

// Bytes of the heap's chunks (all heaps) that THP backs now: AnonHugePages of the
// mappings of /proc/self/smaps that start at a registered chunk.  Neighbouring
// chunks with the same advice merge into one mapping, counted once; a mapping
// that merged with a foreign neighbour is counted whole (an upper bound).
std::size_t huge_heap_anon_huge_bytes();

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
