// large.h++ -- blocks above 1 MiB: one dedicated mapping each.
//
// Their metadata lives out of band in a process-wide hash table keyed by the user
// pointer (never in the mapping), so a large block can be page- or 2 MiB-aligned
// and moved by mremap without copying.  Freed mappings wait in a small per-heap
// cache (bounded in count and bytes, decaying after a few seconds) so that
// allocate/free cycles of large blocks do not cost a system call each.
// NUMA: a mapping is bound (chunk_place) to the node its caller asks for -- a
// NUMAAllocator node heap's, or with LIBCALLOC_OPTIONS=numa=1 the calling
// thread's -- and remembers that node through the cache: a request for a node
// reuses only mappings bound to it (docs/design.md, "Large blocks under
// numa=1").  mremap keeps a mapping's policy, so a block realloc grows or
// moves, and a cached mapping grown for a request, stay bound.
// All of this is the slow path: one global mutex guards it.  No system call is
// made under it, but for the table's growth (a doubling: os_map of the new
// table, os_unmap of the old), large_release_domain (a heap's destruction) and
// what large_for_each_block's callback makes (get_numa_stats: move_pages for
// every 256 pages of every large block of the heap):
// mremap and the munmap of a block or of dropped cached mappings wait until the
// lock is released.
#ifndef LCA_LARGE_HXX
#define LCA_LARGE_HXX

#include <cstddef>
#include <cstdint>

#include "chunk.h++"

namespace lca {

struct Domain;

// Requests above this are large.  It was 64 KiB at first; on these machines a page
// fault costs ~60 us, and serving 64 KiB..1 MiB from the arena's resident chunks
// instead of fresh mappings cut a realloc-heavy test from 19.5 s to 2.5 s (page
// faults 256 k -> 17 k).  docs/design.md has the figures.
constexpr std::size_t kLargeThreshold = std::size_t{1} << 20;
constexpr unsigned kLargeCacheEntries = 64;
constexpr std::size_t kLargeCacheBytes = std::size_t{64} << 20;
constexpr std::uint64_t kLargeCacheDecayNs = 2'000'000'000ull;

struct LargeCache {
  struct Entry {
    void* base;
    std::size_t map_size;
    std::uint64_t freed_at_ns;
    bool huge;  // advised MADV_HUGEPAGE (and 2 MiB-aligned)
    std::int16_t node;  // the node the mapping is bound to; -1: not bound
  } entries[kLargeCacheEntries];
  unsigned count;
  std::size_t bytes;
  // Every cache that ever held a mapping is on one list (large_huge_ranges_in).
  bool listed;
  LargeCache* next_listed;
  LargeCache* prev_listed;
  // Counters of this heap's large blocks (guarded by the large lock).
  std::size_t live_count, alloc_count, free_count;
  std::size_t alloc_bytes, free_bytes, mapped_bytes;
  // NUMA: the bindings of fresh mappings the kernel refused (those mappings
  // stay first-touch).
  std::size_t bind_fallbacks;
};

struct LargeInfo {
  void* base;
  std::size_t map_size;
  std::size_t usable;
  Domain* domain;
};

// Looks up a live large block by its exact start; false when p is not one.
bool large_lookup(const void* p, LargeInfo* out);

// A block of at least size bytes aligned to alignment.  *fresh_zero tells whether
// its memory is known to be zero (a new mapping).  With where.node >= 0 the block
// is bound there: a cached mapping bound to that node, else a fresh mapping
// bound by chunk_place (a refusal counts in bind_fallbacks).  With where.node < 0
// any cached mapping serves (nothing is bound then: all of them are unbound).
void* large_alloc(Domain* d, LargeCache* cache, std::size_t size, std::size_t alignment,
                  bool* fresh_zero, NodePlacement where);
// Frees a live large block (p must be one: check with large_lookup first).
// Returns its usable size.
std::size_t large_free(LargeCache* cache, void* p);

enum class LargeResize { failed, in_place, remapped };
// Resizes without copying: in place, or (may_move) by mremap.  *result receives the
// new address.  A shrink of a mapping that transparent huge pages may back keeps
// the rest of the 2 MiB range the block now ends in (huge.h++: no huge page that
// is still partly in use is split).
LargeResize large_resize(LargeCache* cache, void* p, std::size_t new_size, bool may_move,
                         void** result);

// Calls fn for every live block of the domain (under the large lock).
void large_for_each_block(const Domain* d, void (*fn)(void* ctx, const void* addr, std::size_t len), void* ctx);
// Unmaps every block and cached mapping of the domain (heap destruction).
void large_release_domain(Domain* d, LargeCache* cache);
// Unmaps the cached mappings (all, or only the expired ones).
void large_trim(LargeCache* cache, bool all);
// Snapshot of the counters under the lock.
LargeCache large_counters(const LargeCache* cache);
// Whole 2 MiB ranges of large mappings (live blocks and cached mappings of every
// heap) inside [lo, hi): huge_coverage() attributes smaps' huge pages with it.
std::size_t large_huge_ranges_in(std::uintptr_t lo, std::uintptr_t hi);

void large_lock_all();
void large_unlock_all();
void large_reinit_after_fork();

}  // namespace lca

#endif
