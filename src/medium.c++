// medium.c++ -- the medium cache: a thread's freed medium blocks of its own
// arena, 8 KiB to 64 KiB, kept for its next medium requests (tcache.h++,
// MediumCache; docs/design.md, "Medium cache").
//
// malloc of kSlabMax < size <= kLargeThreshold by a thread with a heap comes
// here (heap_alloc_medium), and free_cold sends here a block of the caller's
// own arena (heap_free_medium).  A hit is a list pop from one of the cache's
// bins, chosen without a branch on what the bins hold; a miss, and a block
// the cache does not keep, go to the heap's arena (alloc_arena and
// arena_free_owned, tcache.c++ and heap.h++).  The cache holds at most
// medium_cache_bound() bytes, and goes back to the arena whole
// (medium_cache_flush) before the arena maps a chunk, at thread exit, on trim
// and whenever the heap is collected.
#include "tcache.h++"
#include "heap.h++"
#include "placement.h++"

#include <cerrno>

namespace lca {

// (No RemoteBusy bracket: the child of a fork never reads the medium cache of
// another thread's heap -- those heaps are left alone there, lifecycle.c++.)
LCA_CORE_TEXT void medium_cache_flush(Heap* h) {
  for (MediumFree*& head : h->medium.bin) {
    while (MediumFree* m = head) {
      head = m->next;
      arena_unhold(m);
      arena_free_owned(h, arena_chunk_of(chunk_base(m)), m);
    }
  }
  h->medium.bytes = 0;
  h->medium.nonempty = 0;
}

namespace {

// heap_alloc_medium's stand-in for an empty bin's first block: fits no request.
// In the RELRO page with the other constants of the common paths (placement.h++).
LCA_CORE_RODATA(medium_no_block) constexpr MediumFree kNoMediumBlock{};
}  // namespace

LCA_CORE_TEXT void* heap_alloc_medium(Heap* h, std::size_t size) {
  if (size < kMediumCacheMax) {
    // The bin of size may hold blocks just short of it: its first fits or not;
    // every block of the bins above fits (tcache.h++, kMediumSearchBins).  The
    // bin is chosen without a branch on what the bins hold: whether the own bin
    // is empty, whether its first block fits, whether a pop empties it are each
    // a coin toss on heavy-tail, and mispredicted about once per request
    // (docs/design.md, "the bin chosen without branches").
    unsigned b = medium_bin(size);
    const MediumFree* own = &kNoMediumBlock;
#if defined(__x86_64__)
    asm("test %1, %1\n\tcmovne %1, %0" : "+r"(own) : "r"(h->medium.bin[b]) : "cc");  // GCC branches on it
#else
    if (h->medium.bin[b]) own = h->medium.bin[b];
#endif
    unsigned top = b + kMediumSearchBins;  // at most 31: the bins b+1..top
    std::uint32_t fit = (static_cast<std::uint32_t>(own->usable >= size) << b) |
                        (h->medium.nonempty & ((~std::uint32_t{0} << b) << 1) &
                         static_cast<std::uint32_t>((std::uint64_t{2} << top) - 1));
    if (__builtin_expect(fit != 0, 1)) {
      b = static_cast<unsigned>(__builtin_ctz(fit));  // the own bin if its first block fits
      MediumFree* m = h->medium.bin[b];
      MediumFree* next = m->next;
      h->medium.bin[b] = next;
      h->medium.nonempty &= ~(static_cast<std::uint32_t>(next == nullptr) << b);
      std::size_t usable = m->usable;
      h->medium.bytes -= usable;
      arena_unhold(m);
      h->counters.arena_allocs.add(1);
      h->counters.medium_hits.add(1);
      h->counters.extra_bytes_allocated.add(usable);
      return m;
    }
  }
  void* p = alloc_arena(h, size, 16);
  if (!p) errno = ENOMEM;
  return p;
}

namespace {
// The live bytes fell and the bound with them: the cache gives blocks back to
// the arena, the largest first, until it holds no more than the bound.
LCA_CORE_TEXT void medium_cache_shrink(Heap* h) {
  std::size_t bound = medium_cache_bound(h);
  while (h->medium.bytes > bound) {
    unsigned b = 31u - static_cast<unsigned>(__builtin_clz(h->medium.nonempty));
    MediumFree* m = h->medium.bin[b];
    h->medium.bin[b] = m->next;
    if (!m->next) h->medium.nonempty &= ~(std::uint32_t{1} << b);
    h->medium.bytes -= m->usable;
    arena_unhold(m);
    arena_free_owned(h, arena_chunk_of(chunk_base(m)), m);
  }
}
// heap_free_medium's way to the arena, out of line: its registers and errno
// save would otherwise cost the cache's hits a prologue and epilogue of their own.
LCA_CORE_TEXT __attribute__((noinline)) void heap_free_medium_arena(Heap* h, ArenaChunk* c, void* p) {
  // A chunk that empties goes back to the domain, maybe to the OS: errno kept.
  int saved = errno;
  arena_free_owned(h, c, p);
  if (h->medium.bytes > kMediumCacheBytes) medium_cache_shrink(h);
  errno = saved;
}
}  // namespace

LCA_CORE_TEXT std::size_t medium_cache_bound(const Heap* h) {
  // The bytes of h's arena blocks live now, as h's counters see them (held
  // blocks count as freed).  Approximate, and the bound keeps within its two
  // limits whatever the error: multislot growth counts with them, and a remote
  // free is counted by the freeing heap (a producer's blocks freed by others
  // stay "live" for it; a consumer's difference may go below zero).
  auto live = static_cast<std::ptrdiff_t>(h->counters.extra_bytes_allocated.get() -
                                          h->counters.extra_bytes_freed.get());
  std::size_t bound = live > 0 ? static_cast<std::size_t>(live) / 2 : 0;
  return bound < kMediumCacheBytes ? kMediumCacheBytes : bound > kMediumCacheBytesMax ? kMediumCacheBytesMax : bound;
}

LCA_CORE_TEXT bool heap_free_medium(Heap* h, void* p) {
  ChunkHeader* ch = chunk_base(p);
  if (ch->heap != h) return false;
  ArenaChunk* c = arena_chunk_of(ch);
  if (!arena_is_live_block(c, p)) return false;  // free_slow reports it
  std::size_t usable = arena_usable_size(p);
  h->counters.arena_frees.add(1);
  h->counters.extra_bytes_freed.add(usable);
  // (Node-local heaps allocate through domain_alloc, which does not look here.)
  if (usable >= kMediumCacheMin && usable < kMediumCacheMax && h->medium.bytes + usable <= medium_cache_bound(h) &&
      h->node < 0) {
    arena_hold(p);
    auto* m = static_cast<MediumFree*>(p);
    unsigned b = medium_bin(usable);
    m->usable = usable;
    m->next = h->medium.bin[b];
    h->medium.bin[b] = m;
    h->medium.nonempty |= std::uint32_t{1} << b;
    h->medium.bytes += usable;
    return true;
  }
  heap_free_medium_arena(h, c, p);
  return true;
}

}  // namespace lca
