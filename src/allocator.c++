// allocator.c++ -- custom_alloc::MemoryAllocator, the C++ face of a domain.
//
// instance() wraps the process domain (the heap behind malloc); a default-
// constructed MemoryAllocator owns a private domain and unmaps it on destruction.
#include <cerrno>
#include <new>

#include <custom_alloc/memory_allocator.h++>

#include "config.h"
#include "os.h++"
#include "secure.h++"
#include "stats.h++"
#include "tcache.h++"
#if CALLOC_SECURE && CALLOC_TRACKING
#include "track.h++"
#endif

namespace custom_alloc {

using lca::kMaxRequest;

MemoryAllocator& MemoryAllocator::instance() noexcept {
  // Placement-constructed and never destroyed: free() may run after static
  // destructors, and the process heap must outlive them all.
  alignas(MemoryAllocator) static unsigned char storage[sizeof(MemoryAllocator)];
  [[maybe_unused]] static const bool constructed = (new (storage) MemoryAllocator(ProcessHeapTag{}), true);
  // (storage is libcalloc's own data, which Valgrind mode hides from helgrind and
  // DRD: they do not see the guard of a function-local static as synchronisation.)
  return *std::launder(reinterpret_cast<MemoryAllocator*>(storage));
}

MemoryAllocator::MemoryAllocator(ProcessHeapTag) noexcept : domain_(&lca::g_process_domain) {}

MemoryAllocator::MemoryAllocator() : domain_(lca::domain_create()) {
  if (!domain_) throw std::bad_alloc();
}

MemoryAllocator::~MemoryAllocator() {
  if (domain_ != &lca::g_process_domain) lca::domain_destroy(domain_);
}

void* MemoryAllocator::allocate(std::size_t size, std::size_t alignment) {
  if (!lca::is_power_of_two(alignment)) {
    errno = EINVAL;
    return nullptr;
  }
  if (size > kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
  if (alignment < ALIGNMENT) alignment = ALIGNMENT;
#if CALLOC_SECURE
  // --enable-secure: the process heap is the hardened heap, as malloc's is.
  if (domain_ == &lca::g_process_domain) {
    lca::SecureHeap* h = lca::secure_process_heap();
    return h ? lca::secure_alloc(h, size, alignment) : (errno = ENOMEM, nullptr);
  }
#endif
  void* p = lca::domain_alloc(domain_, size, alignment);
  if (!p) errno = ENOMEM;
  return p;
}


void MemoryAllocator::deallocate(void* ptr) {
#if CALLOC_SECURE
  // A secure block the tracker recorded (malloc's) leaves it in the secure
  // heap's free (secure_set_tracked), as in malloc.c++'s secure_free.
  if (ptr && lca::secure_free_if_secure(ptr, lca::kAnySize, lca::kAnyAlignment, "deallocate")) return;
#endif
#if CALLOC_SECURE && CALLOC_TRACKING
  // Any other: before the core heap frees it (whose fast free does not reach
  // free_cold, where the core heap's own blocks leave the tracker).
  if (ptr) lca::track_forget(ptr);
#endif
  if (ptr) lca::block_free(ptr);
}

std::size_t MemoryAllocator::get_allocation_size(void* ptr) const {
  if (!ptr) return 0;
#if CALLOC_SECURE
  if (std::size_t n; lca::secure_usable_size_if_secure(ptr, &n, "get_allocation_size")) return n;
#endif
  return lca::block_usable_size(ptr, "get_allocation_size");
}

void* MemoryAllocator::reallocate(void* ptr, std::size_t new_size) {
  if (!ptr) return allocate(new_size);
  if (new_size == 0) {
    deallocate(ptr);
    return nullptr;
  }
  if (new_size > kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
#if CALLOC_SECURE && CALLOC_TRACKING
  lca::track_forget_live(ptr);  // the block untracked from here, as the core heap's when realloc moves it
#endif
#if CALLOC_SECURE
  if (void* out; lca::secure_realloc_if_secure(lca::secure_process_heap(), ptr, new_size, &out)) {
    if (!out) errno = ENOMEM;
    return out;
  }
#endif
  lca::ResizeResult how;
  void* p = lca::block_realloc(domain_, ptr, new_size, true, &how);
  if (!p) errno = ENOMEM;
  return p;
}

void* MemoryAllocator::try_realloc_inplace(void* ptr, std::size_t new_size) {
  if (!ptr || new_size == 0 || new_size > kMaxRequest) return nullptr;
#if CALLOC_SECURE
  if (void* out; lca::secure_resize_in_place_if_secure(ptr, new_size, &out)) return out;
#endif
  lca::ResizeResult how;
  return lca::block_realloc(domain_, ptr, new_size, false, &how);
}

MemoryAllocator::Stats MemoryAllocator::get_stats() const {
  lca_stats s{};
#if CALLOC_SECURE
  if (domain_ == &lca::g_process_domain && lca::secure_process_heap())
    lca::secure_stats_fill(lca::secure_process_heap(), &s);
  else
#endif
    lca::stats_fill(domain_, &s);
  Stats out;
  out.total_allocated = s.total_allocated;
  out.total_freed = s.total_freed;
  out.active_allocations = s.active_allocations;
  out.os_memory_mapped = s.os_memory_mapped;
  out.fragmentation_bytes = s.fragmentation_bytes;
  out.allocation_count = s.allocation_count;
  out.free_count = s.free_count;
  out.realloc_in_place = s.realloc_in_place;
  out.realloc_moved = s.realloc_moved;
  out.realloc_remapped = s.realloc_remapped;
  out.large_mappings = s.large_mappings;
  return out;
}

MemoryAllocator::HugePageCoverage MemoryAllocator::huge_page_coverage() {
  lca_huge_stats s{};
  lca::huge_stats_fill(&s);
  HugePageCoverage out{};
  out.huge_backed_bytes = s.huge_backed_bytes;
  out.thp_backed_bytes = s.thp_backed_bytes;
  out.thp_heap_bytes = s.thp_heap_bytes;
  out.thp_large_bytes = s.thp_large_bytes;
  out.thp_huge_block_bytes = s.thp_huge_block_bytes;
  out.hugetlb_bytes = s.hugetlb_bytes;
  out.mapped_bytes = s.mapped_bytes;
  out.hugetlb_fallbacks = s.hugetlb_fallbacks;
  out.purged_huge_ranges = s.purged_huge_ranges;
  out.purge_kept_ranges = s.purge_kept_ranges;
  out.purge_kept_bytes = s.purge_kept_bytes;
  out.smaps_readable = s.smaps_readable != 0;
  return out;
}

void MemoryAllocator::trim() {
#if CALLOC_SECURE
  if (domain_ == &lca::g_process_domain && lca::secure_process_heap()) lca::secure_trim(lca::secure_process_heap());
#endif
  lca::domain_trim(domain_);
}

}  // namespace custom_alloc
