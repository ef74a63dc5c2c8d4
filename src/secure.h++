// secure.h++ -- the hardened heap (secure.c++): SecureAllocator's heap in every
// build, and with --enable-secure (CALLOC_SECURE) the heap behind malloc and new.
//
// The entry points below validate every pointer they are given and report misuse
// through report.c++ ("Double free", "Invalid free", "Canary corrupted", "Write
// after free", "Use after free", "Invalid pointer", "Size mismatch",
// "Alignment mismatch"), then abort.  A pointer that is not a secure block is
// not judged here: the *_if_secure functions return false for it, so the caller
// hands it to the core heap (which reports it if it is nobody's).
#ifndef LCA_SECURE_HXX
#define LCA_SECURE_HXX

#include <cstddef>
#include <cstdint>

#include "config.h"

struct lca_stats;

namespace lca {

struct ModuleOps;

struct SecureHeap;

// A heap of its own (SecureAllocator); nullptr with errno = ENOMEM.
SecureHeap* secure_heap_create();
// Unmaps every chunk, slab table and large block of the heap.
void secure_heap_destroy(SecureHeap* h);

// size bytes aligned to `alignment` (a power of two), zero-filled; nullptr with
// errno = ENOMEM.  Size 0 gives a distinct pointer into no-access memory.
void* secure_alloc(SecureHeap* h, std::size_t size, std::size_t alignment);

// What a free checks besides the pointer: the size and alignment the caller says
// the block was allocated with (sized/aligned operator delete, free_sized,
// free_aligned_sized); kAnySize / kAnyAlignment check nothing.
constexpr std::size_t kAnySize = ~std::size_t{0};
constexpr std::size_t kAnyAlignment = 0;

// Frees p if it lies in a secure heap (any of them): true.  False when p is not
// a secure heap's, for the caller to route elsewhere.  `what` names the call in
// messages ("free", "operator delete", ...).  errno is kept.
bool secure_free_if_secure(void* p, std::size_t size, std::size_t alignment, const char* what);
// The requested size of a live secure block, in *out: true; false when p is not
// a secure heap's.
bool secure_usable_size_if_secure(const void* p, std::size_t* out, const char* what);
// realloc of a secure block (h allocates the new block when it moves); false when
// p is not a secure heap's.  *out is nullptr (errno ENOMEM, p intact) on failure.
// c_realloc: the C function's, whose result is realloc's block wherever it is
// (C23: freed with free_sized, never free_aligned_sized), so a block resized in
// place loses the alignment it was allocated with; SecureAllocator's and
// MemoryAllocator's keep it (deallocate(p, size, alignment)).
// A block moves within its own heap: h is not used (nullptr is fine).
bool secure_realloc_if_secure(SecureHeap* h, void* p, std::size_t size, void** out, bool c_realloc = false);
// Resize without moving: *out is p or nullptr.  False when p is not secure.
bool secure_resize_in_place_if_secure(void* p, std::size_t size, void** out, bool c_realloc = false);
// The secure heaps' table for the core's entry points (module.h++), which
// SecureAllocator registers: a secure block given to free, realloc,
// malloc_usable_size or another heap's calls is freed, resized (within its own
// heap) or measured as its SecureAllocator's own calls do it.
const ModuleOps* secure_module();
// Whether p lies in any secure heap's memory (a slab chunk, or a large block,
// live or quarantined).
bool secure_owns(const void* p);

// Counters in lca_stats form.
void secure_stats_fill(SecureHeap* h, lca_stats* out);
// Returns the heap's empty slabs' pages and quarantined large blocks to the OS.
void secure_trim(SecureHeap* h);

// The process's secure heap (created on first use): the heap behind malloc with
// --enable-secure.
SecureHeap* secure_process_heap();
// secure_alloc(secure_process_heap(), size, alignment), its common case (a thread
// whose cache holds a slot of the class) in one call; nullptr with errno set.
void* secure_process_alloc(std::size_t size, std::size_t alignment);

// fork(): a few process-wide locks are held across it; each class lock of each
// heap is taken and released once, and a change that takes one later waits for
// the fork (secure.c++, class_lock).
void secure_prefork();
void secure_postfork_parent();
void secure_postfork_child();
// The child of a fork from a process with other threads, in every mode (also in
// Valgrind mode, which skips the three above): the other threads' read sections
// of chunk metadata end with them (secure.c++, "readers of chunk metadata"), so
// that a release in the child does not wait for them.
void secure_readers_postfork_child();

#if CALLOC_SECURE && CALLOC_TRACKING
// The mark a live secure block carries while the process heap's tracker holds
// a record of it (track.c++ sets it when it records the block and clears it
// when it forgets a block that stays live, as realloc's): a free of a marked
// block calls track_forget after claiming it, a free of any other never calls
// the tracker.  False when p is not a live secure block or the mark was so
// already.  secure_tracked reads it: 1 marked, 0 a live secure block without
// the mark, -1 anything else (not a secure block, or not live).
bool secure_set_tracked(void* p, bool tracked);
int secure_tracked(const void* p);
#endif

// For the tests: the slot size and chunk of a live small block, the canary that
// follows it, and whether free slots are handed out in random order.
struct SecureBlockInfo {
  std::size_t slot_size;      // 0 for a large block
  std::size_t requested;
  const void* chunk;          // the 4 MiB chunk of a small block
  std::uint64_t canary;       // the 8 bytes expected after the requested size
};
bool secure_block_info(const void* p, SecureBlockInfo* out);
// The bytes of the heap's own descriptor (its quarantines), which start at h.
std::size_t secure_heap_footprint(const SecureHeap* h);
// Test hook (tests/unit/secure): fn(p) is called inside the read section of a
// free that takes the slow path (every SecureAllocator instance's free) or of a
// usable-size call, after p's chunk was looked up and before its slot is
// claimed or read; nullptr turns it off.  One relaxed load and a branch on
// those paths, none on the process heap's lock-free free.
void secure_set_read_stall_for_test(void (*fn)(const void* p));
// The process heap's thread caches (none in Valgrind mode): the slots the calling
// thread's cache holds ready for requests of `size` bytes (taken from the class,
// not handed out yet), up to max of them in out; and how many slots (ready or
// freed) the caches of all other threads hold.
std::size_t secure_cached_ready(std::size_t size, void** out, std::size_t max);
std::size_t secure_cached_elsewhere();

}  // namespace lca

#endif
