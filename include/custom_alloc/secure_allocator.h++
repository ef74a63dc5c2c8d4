// custom_alloc/secure_allocator.h++ -- a heap hardened against exploitation.
//
// A SecureAllocator is an independent heap whose blocks are checked on every
// operation, in every build of libcalloc (configure --enable-secure puts malloc
// and operator new on the same kind of heap).  What it catches, each with one
// line on stderr naming the problem and the address, then abort():
//   "Canary corrupted"   a write of even one byte past the requested size (or
//                        before a large block), found on deallocate/reallocate;
//   "Double free"        any second deallocate of a block, however late;
//   "Invalid free"       a pointer it never returned (interior, unaligned, a
//                        guard page, another mapping, the stack, ...);
//   "Write after free"   a write into a freed block, found when its memory is
//                        handed out again or trim() empties the quarantine;
//   "Use after free"     get_allocation_size/reallocate of a freed block;
//   "Size mismatch", "Alignment mismatch"   deallocate(p, size, alignment) with
//                        values the block was not allocated with.
// And what faults at once (SIGSEGV): an access past the end or before the start
// of a large block (guard pages; blocks above 65528 bytes end at a guard page),
// any access to a freed large block, and any access through allocate(0)'s
// pointer.  Blocks are zero-filled; freed blocks are wiped.  The layout is
// randomised (chunk addresses, slot order) from getrandom, and the heap's own
// metadata lives apart from the blocks, its pointers encoded.  docs/SECURITY.md
// has the threat model and the costs; docs/guide/secure.md an example.
//
// Destroying the allocator unmaps all its memory.  Every member is thread-safe.
// Its blocks may also be given to free, realloc, malloc_usable_size (and their
// lca_* names) and to any other heap's deallocate, reallocate,
// try_realloc_inplace and get_allocation_size: each goes to this allocator and
// does what its own call does, with the same checks and messages -- a realloc
// that moves takes the new block from this allocator, which keeps it hardened.
// A block of a destroyed SecureAllocator is nobody's: "Invalid free" / "Invalid
// pointer".  get_stats and trim, which MemoryAllocator does not declare virtual,
// are redeclared here: call them through a SecureAllocator, not a
// MemoryAllocator reference (which gives the process heap's).
#ifndef CUSTOM_ALLOC_SECURE_ALLOCATOR_HXX
#define CUSTOM_ALLOC_SECURE_ALLOCATOR_HXX

#include <cstddef>

#include <custom_alloc/memory_allocator.h++>

namespace lca { struct SecureHeap; }  // the hardened heap (src/secure.h++)

namespace custom_alloc {

class CUSTOM_ALLOC_EXPORT SecureAllocator : public MemoryAllocator {
 public:
  SecureAllocator();
  ~SecureAllocator() override;

  // size bytes, zero-filled, aligned to `alignment` (a power of two); nullptr with
  // errno = ENOMEM (EINVAL for a bad alignment).  size 0 gives a distinct pointer
  // that faults on any access.
  void* allocate(std::size_t size, std::size_t alignment = ALIGNMENT) override;
  // Frees a block of this (or another) SecureAllocator after checking it; a
  // block of another libcalloc heap goes to that heap.  nullptr is ignored.
  void deallocate(void* ptr) override;
  // The same, and checks that the block was allocated with this size (the size
  // passed to allocate) and alignment, as sized operator delete does.
  void deallocate(void* ptr, std::size_t size, std::size_t alignment = ALIGNMENT);

  // The size requested for a live block (writing past it is an overflow).
  std::size_t get_allocation_size(void* ptr) const;
  // realloc semantics; a block grows or shrinks in place within its size class,
  // else moves (large blocks always move).
  void* reallocate(void* ptr, std::size_t new_size);
  void* try_realloc_inplace(void* ptr, std::size_t new_size);
  Stats get_stats() const;
  // Empties the quarantine (each block in it is checked for writes after free
  // first), unmaps chunks with no live block and quarantined large blocks, and
  // returns the pages of empty slabs to the OS.
  void trim();

  // Internal: the heap.
  ::lca::SecureHeap* secure_heap() const noexcept { return heap_; }

 private:
  ::lca::SecureHeap* heap_;
};

}  // namespace custom_alloc

#endif
