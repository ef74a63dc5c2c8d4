// custom_alloc/memory_allocator.h++ -- the C++ heap class of libcalloc.
//
// MemoryAllocator::instance() is the process heap, the one behind malloc and
// operator new.  `MemoryAllocator alloc;` builds an independent heap with chunks of
// its own; its destructor returns all of them to the OS (blocks still live in it are
// gone with it).  Every member is thread-safe.
#ifndef CUSTOM_ALLOC_MEMORY_ALLOCATOR_HXX
#define CUSTOM_ALLOC_MEMORY_ALLOCATOR_HXX

#include <cstddef>
#include <cstdint>

#define CUSTOM_ALLOC_EXPORT __attribute__((visibility("default")))

namespace lca { struct Domain; }  // the heap's internals (src/tcache.h++)

namespace custom_alloc {

// Size classes: every multiple of 16 up to 1 KiB, then four per doubling up to
// the 8 KiB slab limit (docs/design.md explains the choice).
constexpr std::size_t NUM_SIZE_CLASSES = 76;
// The request's bound of "medium" blocks: above it, requests leave the slab and
// arena tiers' fast sizes.  (Dedicated mappings start above LARGE_THRESHOLD.)
constexpr std::size_t MAX_SMALL_SIZE = 65536;
// Requests above this size get a dedicated mapping (moved by mremap on realloc).
constexpr std::size_t LARGE_THRESHOLD = std::size_t{1} << 20;
constexpr std::size_t ALIGNMENT = 16;
constexpr std::size_t CACHE_LINE_SIZE = 64;

class CUSTOM_ALLOC_EXPORT MemoryAllocator {
 public:
  // A counter in a Stats snapshot: reads like the request's std::atomic<size_t>
  // (load()), but is a plain copyable value.
  class Counter {
   public:
    constexpr Counter(std::size_t v = 0) noexcept : value_(v) {}
    constexpr std::size_t load() const noexcept { return value_; }
    constexpr operator std::size_t() const noexcept { return value_; }

   private:
    std::size_t value_;
  };

  // A snapshot of the heap's counters, summed over its threads.
  struct Stats {
    Counter total_allocated;      // bytes handed out since the heap was made
    Counter total_freed;          // bytes returned
    Counter active_allocations;   // blocks live now
    Counter os_memory_mapped;     // bytes mapped from the OS now
    Counter fragmentation_bytes;  // mapped bytes that hold no live data
    Counter allocation_count;
    Counter free_count;
    Counter realloc_in_place;     // reallocate() calls that kept the address
    Counter realloc_moved;        // ... that copied to a new block
    Counter realloc_remapped;     // ... that moved a large block with mremap
    Counter large_mappings;       // live dedicated mappings
  };

  // How much of libcalloc's memory huge pages back, for the whole process (every
  // heap, the large blocks, every HugePageAllocator), and what purging did about
  // huge pages.  Computed when asked from /proc/self/smaps (AnonHugePages of each
  // mapping): a read of the whole file, about a millisecond per thousand mappings.
  // A mapping the kernel merged with a foreign neighbour has its huge pages shared
  // out in proportion to the 2 MiB ranges each part holds.  (lca_get_huge_stats in C.)
  struct HugePageCoverage {
    std::size_t huge_backed_bytes;     // thp_backed_bytes + hugetlb_bytes
    std::size_t thp_backed_bytes;      // transparent huge pages in libcalloc's mappings:
    std::size_t thp_heap_bytes;        //   in the heaps' 4 MiB chunks
    std::size_t thp_large_bytes;       //   in large blocks (own mappings above 1 MiB, cached ones too)
    std::size_t thp_huge_block_bytes;  //   in HugePageAllocator blocks that are not hugetlb
    std::size_t hugetlb_bytes;         // live HugePageAllocator blocks on hugetlb pages
    std::size_t mapped_bytes;          // everything libcalloc maps now, for comparison
    std::size_t hugetlb_fallbacks;     // allocate_huge calls the hugetlb pool refused (since start)
    std::size_t purged_huge_ranges;    // whole free 2 MiB ranges returned to the OS (since start)
    std::size_t purge_kept_ranges;     // partly used 2 MiB ranges a purge left resident (since start)
    std::size_t purge_kept_bytes;      // the free bytes those ranges kept resident (summed)
    bool smaps_readable;               // false: /proc/self/smaps unreadable, the thp_* are 0
  };
  static HugePageCoverage huge_page_coverage();

  static MemoryAllocator& instance() noexcept;

  MemoryAllocator();
  virtual ~MemoryAllocator();
  MemoryAllocator(const MemoryAllocator&) = delete;
  MemoryAllocator& operator=(const MemoryAllocator&) = delete;

  // Returns size bytes aligned to `alignment` (a power of two; 16 at least), or
  // nullptr with errno = ENOMEM (EINVAL for a bad alignment).  size 0 gives a
  // unique minimal block.
  virtual void* allocate(std::size_t size, std::size_t alignment = ALIGNMENT);
  // Releases a block of this heap (blocks of another libcalloc heap are routed to
  // it).  nullptr is ignored; an invalid or double free aborts with a message.
  //
  // Routing: deallocate, get_allocation_size, reallocate and try_realloc_inplace
  // (and free, realloc, malloc_usable_size) accept a block of any libcalloc heap
  // and act on it in the heap that owns it, as that heap's own call does:
  // another MemoryAllocator's block, a SecureAllocator's (checked as its own
  // calls check it: canary, double free, ...) or a HugePageAllocator's huge block
  // (allocate_huge).  A block never changes heaps: a reallocate that moves it
  // takes the new block from the owner (a secure block stays hardened, a huge
  // block stays huge-page backed).  A pointer that no live heap owns -- a block
  // of a destroyed allocator included -- aborts with "Invalid free" /
  // "Invalid pointer".
  virtual void deallocate(void* ptr);
  // The usable size of a live block (>= the size requested; for a SecureAllocator's
  // block the size requested, for a huge block its mapped size).
  std::size_t get_allocation_size(void* ptr) const;

  // realloc semantics: nullptr -> allocate, size 0 -> deallocate and nullptr.
  // Grows in place into free space when it can, shrinks in place, moves large
  // blocks with mremap.  On failure returns nullptr and ptr stays valid.
  // Another heap's block is resized in that heap (routing, above).
  void* reallocate(void* ptr, std::size_t new_size);
  // Resizes without moving; nullptr (ptr untouched) when that is impossible.
  void* try_realloc_inplace(void* ptr, std::size_t new_size);

  Stats get_stats() const;

  // Returns cached empty memory of this heap to the OS.
  void trim();

  // Internal: the heap's state.
  ::lca::Domain* domain() const noexcept { return domain_; }

 protected:
  struct ProcessHeapTag {};
  explicit MemoryAllocator(ProcessHeapTag) noexcept;

 private:
  ::lca::Domain* domain_;
};

}  // namespace custom_alloc

#endif
