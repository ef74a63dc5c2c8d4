// secure_allocator.c++ -- custom_alloc::SecureAllocator, the C++ face of a secure
// heap (secure.c++).
//
// The MemoryAllocator base is constructed on the process heap's domain (it owns
// nothing and destroys nothing): every block of a SecureAllocator comes from its
// own SecureHeap.  A pointer that no secure heap owns is handed to the core heap,
// which frees it if it is one of its blocks and reports it otherwise.
#include <cerrno>
#include <new>

#include <custom_alloc/secure_allocator.h++>

#include <libcalloc.h>

#include "secure.h++"
#include "module.h++"
#include "tcache.h++"

namespace custom_alloc {

SecureAllocator::SecureAllocator() : MemoryAllocator(ProcessHeapTag{}), heap_(lca::secure_heap_create()) {
  if (!heap_) throw std::bad_alloc();
  // free, realloc, malloc_usable_size and every heap's deallocate, reallocate,
  // try_realloc_inplace and get_allocation_size route this heap's blocks here
  // (module.h++).
  lca::register_module(lca::ModuleHeap::secure, lca::secure_module());
}

SecureAllocator::~SecureAllocator() { lca::secure_heap_destroy(heap_); }

void* SecureAllocator::allocate(std::size_t size, std::size_t alignment) {
  // A bad alignment (0, not a power of two) is refused before the smaller ones
  // are raised to 16, as MemoryAllocator::allocate does (alignment 3 gave a block).
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    errno = EINVAL;
    return nullptr;
  }
  return lca::secure_alloc(heap_, size, alignment < ALIGNMENT ? ALIGNMENT : alignment);
}

void SecureAllocator::deallocate(void* ptr) {
  if (ptr && !lca::secure_free_if_secure(ptr, lca::kAnySize, lca::kAnyAlignment, "deallocate")) lca::block_free(ptr);
}

void SecureAllocator::deallocate(void* ptr, std::size_t size, std::size_t alignment) {
  if (ptr && !lca::secure_free_if_secure(ptr, size, alignment, "deallocate")) lca::block_free(ptr);
}

std::size_t SecureAllocator::get_allocation_size(void* ptr) const {
  if (!ptr) return 0;
  std::size_t n;
  if (lca::secure_usable_size_if_secure(ptr, &n, "get_allocation_size")) return n;
  return lca::block_usable_size(ptr, "get_allocation_size");
}

void* SecureAllocator::reallocate(void* ptr, std::size_t new_size) {
  if (!ptr) return allocate(new_size);
  if (new_size == 0) {
    deallocate(ptr);
    return nullptr;
  }
  void* out;
  if (lca::secure_realloc_if_secure(heap_, ptr, new_size, &out)) {
    if (!out) errno = ENOMEM;
    return out;
  }
  return MemoryAllocator::reallocate(ptr, new_size);
}

void* SecureAllocator::try_realloc_inplace(void* ptr, std::size_t new_size) {
  if (!ptr || new_size == 0) return nullptr;
  void* out;
  if (lca::secure_resize_in_place_if_secure(ptr, new_size, &out)) return out;
  return MemoryAllocator::try_realloc_inplace(ptr, new_size);
}

MemoryAllocator::Stats SecureAllocator::get_stats() const {
  lca_stats s{};
  lca::secure_stats_fill(heap_, &s);
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

void SecureAllocator::trim() { lca::secure_trim(heap_); }

}  // namespace custom_alloc
