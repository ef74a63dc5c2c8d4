// custom_alloc/huge_page_allocator.h++ -- blocks backed by 2 MiB or 1 GiB pages.
//
// A HugePageAllocator is an independent heap (everything MemoryAllocator does) that
// also hands out huge-page blocks with allocate_huge().  Each block gets the best
// backing the system offers, in this order:
//   1. hugetlb:      pages of the requested size from the kernel's reserved pool
//                    (/proc/sys/vm/nr_hugepages, or the 1 GiB pool);
//   2. transparent:  a mapping aligned to the page size and advised MADV_HUGEPAGE,
//                    which the kernel backs with 2 MiB transparent huge pages (THP)
//                    when it can (THP has no 1 GiB pages);
//   3. normal:       ordinary 4 KiB pages, still aligned to the requested page size.
// It never fails merely because huge pages are absent: backing_of() tells what a
// block got and huge_stats() counts blocks and bytes per backing.  Sizes are
// rounded up to a multiple of the requested page size.  Built with
// --disable-huge, every block is `normal`.
//
// Blocks are recorded out of band (nothing is written into them).  Destroying the
// allocator unmaps the blocks still live in it.  Every member is thread-safe.
//
// A huge block may also be given to free, realloc, malloc_usable_size (and
// their lca_* names) and to any heap's deallocate, reallocate,
// try_realloc_inplace and get_allocation_size (this allocator's included): each
// goes to the allocator that owns it.  Its size there is its mapped size
// (huge_allocation_size).  A resize rounds the new size up to the block's page
// size: the same size keeps the block; a smaller one unmaps the tail in place
// (same address, same backing); a larger one moves to a new huge block of the
// same allocator and page size (its backing chosen anew, the old bytes copied:
// counted as one allocation and one deallocation).  A block of a destroyed
// allocator, or one freed already, is nobody's: "Invalid free" / "Invalid pointer".
#ifndef CUSTOM_ALLOC_HUGE_PAGE_ALLOCATOR_HXX
#define CUSTOM_ALLOC_HUGE_PAGE_ALLOCATOR_HXX

#include <cstddef>

#include <custom_alloc/memory_allocator.h++>

namespace lca { struct HugeState; }  // the block table (src/huge.h++)

namespace custom_alloc {

class CUSTOM_ALLOC_EXPORT HugePageAllocator : public MemoryAllocator {
 public:
  enum class HugePageSize : std::size_t {
    Size_2MB = std::size_t{1} << 21,
    Size_1GB = std::size_t{1} << 30,
  };

  // What backs a block (see the fallback order above); `none` for a pointer that
  // is not a live huge block of this allocator.
  enum class Backing { none, hugetlb, transparent, normal };

  // The system-wide transparent huge page mode
  // (/sys/kernel/mm/transparent_hugepage/enabled).
  enum class ThpMode {
    unsupported,  // the kernel has no THP (the file is absent)
    always,       // every suitable anonymous mapping may get huge pages
    madvise,      // only ranges advised MADV_HUGEPAGE (allocate_huge advises its blocks)
    never,        // THP is off system-wide: only hugetlb gives huge pages
  };

  // What the system offers for one page size, read from /sys when asked.
  struct HugePageInfo {
    bool hugetlb_supported;      // the kernel has a pool of this page size
    std::size_t hugetlb_total;   // pages reserved in the pool (nr_hugepages)
    std::size_t hugetlb_free;    // ... a new mapping can still get (free_hugepages - resv_hugepages)
    ThpMode thp_mode;
    bool thp_usable;             // the system's THP can back this page size (2 MiB only) in this process
    bool built_with_huge_pages;  // false when configured with --disable-huge
  };

  // The answer of enable_transparent_huge_pages(), kept for transparent_huge_page_status().
  enum class ThpStatus {
    not_requested,         // enable_transparent_huge_pages() was not called
    enabled,               // THP works for this process's huge blocks
    prevented_by_system,   // the system-wide mode is `never` (or THP is unsupported)
    prevented_by_process,  // PR_SET_THP_DISABLE is set and could not be cleared
    not_built,             // configured with --disable-huge
  };

  // Counters of this allocator's huge blocks.
  struct HugeStats {
    std::size_t live_blocks[3];  // indexed by backing_index(): hugetlb, transparent, normal
    std::size_t live_bytes[3];
    std::size_t allocations;      // allocate_huge calls that returned a block
    std::size_t deallocations;
    std::size_t hugetlb_fallbacks;  // blocks for which the hugetlb pool refused
  };
  static constexpr int backing_index(Backing b) noexcept { return static_cast<int>(b) - 1; }

  HugePageAllocator();
  ~HugePageAllocator() override;

  // size bytes (rounded up to a multiple of page_size; 0 counts as 1) aligned to
  // page_size, zero-filled.  nullptr with errno = ENOMEM when no backing at all can
  // be mapped, EINVAL when page_size is not one of the enumerators.
  void* allocate_huge(std::size_t size, HugePageSize page_size = HugePageSize::Size_2MB);
  // Unmaps a block returned by allocate_huge of this allocator; nullptr is ignored.
  // Any other pointer (interior, foreign, already freed) aborts with
  // "libcalloc: Invalid free of ADDR: not a block of this HugePageAllocator".
  void deallocate_huge(void* ptr);
  // Huge blocks may also be released with deallocate(); other pointers go to the heap.
  void deallocate(void* ptr) override;

  // The backing of a live huge block of this allocator (Backing::none otherwise).
  Backing backing_of(const void* ptr) const;
  // The mapped size of a live huge block (a multiple of its page size), 0 otherwise.
  std::size_t huge_allocation_size(const void* ptr) const;
  HugeStats huge_stats() const;
  // Bytes of the live huge blocks that the kernel backs with huge pages now:
  // hugetlb blocks whole, the others as far as /proc/self/smaps reports
  // AnonHugePages for their mappings (THP may back part of a block, or none).
  std::size_t huge_backed_bytes() const;

  // True when this process can get huge pages of some kind now: free pages in the
  // 2 MiB hugetlb pool, or THP in mode always or madvise.
  static bool huge_pages_available();
  // The same for one page size (1 GiB pages come only from the hugetlb pool).
  static bool huge_pages_available(HugePageSize page_size);
  static HugePageInfo huge_page_info(HugePageSize page_size);

  // Does what the process can for transparent huge pages: clears its
  // PR_SET_THP_DISABLE flag (allocate_huge advises its own blocks MADV_HUGEPAGE).
  // What the system-wide mode prevents is in transparent_huge_page_status().
  static void enable_transparent_huge_pages();
  // Bytes of libcalloc's heaps (the chunks of every MemoryAllocator, the process
  // heap included) that transparent huge pages back now, from /proc/self/smaps:
  // the coverage that LIBCALLOC_OPTIONS=huge_heap=1 buys.  The thp_heap_bytes of
  // MemoryAllocator::huge_page_coverage(), which has the rest (large blocks,
  // huge blocks of every allocator, hugetlb, purge counters).
  static std::size_t heap_huge_backed_bytes();
  static ThpStatus transparent_huge_page_status();

  // Internal: the block table.
  ::lca::HugeState* huge_state() const noexcept { return huge_; }

 private:
  void* mmap_huge(std::size_t size, HugePageSize page_size);

  ::lca::HugeState* huge_;
};

}  // namespace custom_alloc

#endif
