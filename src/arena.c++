// arena.c++ -- two-level segregated fit (TLSF) over arena chunks.
//
// Mapping: sizes below 256 B use first level 0 with one list per 16 bytes;
// above, the first level is the power of two and the second splits it in 16.  A
// search rounds the request up to the next list boundary, so any block of the
// list found fits: "good fit" in O(1), as in Masmano et al.'s TLSF.
#include "arena.h++"
#include "placement.h++"

#include <cstring>

#include "config.h"
#include "report.h++"
#include "sanitizer.h++"

namespace lca {
namespace {

constexpr std::size_t kFree = 1;
constexpr std::size_t kPrevFree = 2;
constexpr std::size_t kFlagMask = kArenaTagFlagMask;

struct FreeLinks {
  BlockTag* next;
  BlockTag* prev;
};

inline std::size_t block_size(const BlockTag* b) { return b->size_flags & ~kFlagMask; }
inline bool is_free(const BlockTag* b) { return b->size_flags & kFree; }
inline bool is_prev_free(const BlockTag* b) { return b->size_flags & kPrevFree; }
inline FreeLinks* links(BlockTag* b) { return reinterpret_cast<FreeLinks*>(b + 1); }
// Sets or clears the kPrevFree flag of n, a block that may be live: a thread
// freeing n reads its size in the same word meanwhile (arena_usable_size, from
// block_lookup).  Relaxed atomic load and store, as that read is: plain moves on
// x86-64 (no lock prefix: only the owner writes the word), and no data race for
// TSan, which reported this flip against the read with the reader's stack lost,
// so that contrib/tsan.supp's entry for the reader did not match (session 20).
inline void set_prev_free_flag(BlockTag* n, bool set) {
  std::size_t v = __atomic_load_n(&n->size_flags, __ATOMIC_RELAXED);
  __atomic_store_n(&n->size_flags, set ? v | kPrevFree : v & ~kPrevFree, __ATOMIC_RELAXED);
}
inline BlockTag* next_block(BlockTag* b) {
  return reinterpret_cast<BlockTag*>(reinterpret_cast<char*>(b) + block_size(b));
}
inline BlockTag* tag_of(const void* p) {
  return reinterpret_cast<BlockTag*>(const_cast<char*>(static_cast<const char*>(p)) - kArenaTag);
}
inline void* payload(BlockTag* b) { return reinterpret_cast<char*>(b) + kArenaTag; }

inline ArenaChunk* chunk_of(const void* p) {
  return reinterpret_cast<ArenaChunk*>(reinterpret_cast<std::uintptr_t>(p) & ~(kChunkSize - 1));
}
// The allocated, size-0 tag at the end of a chunk where coalescing stops; the
// free block before it is the chunk's top.
inline BlockTag* end_tag(const void* chunk) {
  return reinterpret_cast<BlockTag*>(const_cast<char*>(static_cast<const char*>(chunk)) + kChunkSize - kArenaTag);
}
// Every write of the bitmap is an atomic read-modify-write: the owner sets and
// clears bits while other threads clear the bits of blocks they free
// (arena_clear_live_remote) in the same words, and a plain load + store by the
// owner could put back a bit a remote free had just cleared, hiding a double
// free of that block.  The cost is on the arena's paths only (a locked
// instruction beside ~170 ns per arena malloc + free pair).
inline void set_live(ArenaChunk* c, const void* p) {
  std::size_t g = arena_granule(p);
  c->live[g >> 6].fetch_or(std::uint64_t{1} << (g & 63), std::memory_order_relaxed);
}
inline void clear_live(ArenaChunk* c, const void* p) {
  std::size_t g = arena_granule(p);
  c->live[g >> 6].fetch_and(~(std::uint64_t{1} << (g & 63)), std::memory_order_relaxed);
}

inline unsigned msb(std::size_t v) { return 63u - static_cast<unsigned>(__builtin_clzll(v)); }

inline void mapping(std::size_t size, unsigned* fl, unsigned* sl) {
  if (size < 256) {
    *fl = 0;
    *sl = static_cast<unsigned>(size >> 4);
  } else {
    unsigned f = msb(size);
    *fl = f - 7;
    *sl = static_cast<unsigned>(size >> (f - 4)) - 16;
  }
}

LCA_CORE_TEXT void insert_free(Arena* a, BlockTag* b) {
  unsigned fl, sl;
  mapping(block_size(b), &fl, &sl);
  FreeLinks* l = links(b);
  l->prev = nullptr;
  l->next = a->lists[fl][sl];
  if (l->next) links(l->next)->prev = b;
  a->lists[fl][sl] = b;
  a->fl_bitmap |= 1u << fl;
  a->sl_bitmap[fl] |= 1u << sl;
}

LCA_CORE_TEXT void remove_free(Arena* a, BlockTag* b) {
  unsigned fl, sl;
  mapping(block_size(b), &fl, &sl);
  FreeLinks* l = links(b);
  if (l->next) links(l->next)->prev = l->prev;
  if (l->prev)
    links(l->prev)->next = l->next;
  else {
    a->lists[fl][sl] = l->next;
    if (!l->next) {
      a->sl_bitmap[fl] &= ~(1u << sl);
      if (!a->sl_bitmap[fl]) a->fl_bitmap &= ~(1u << fl);
    }
  }
}

LCA_CORE_TEXT BlockTag* find_fit(Arena* a, std::size_t size) {
  if (size >= 256) size += (std::size_t{1} << (msb(size) - 4)) - 1;
  unsigned fl, sl;
  mapping(size, &fl, &sl);
  if (fl >= kArenaFlCount) return nullptr;
  std::uint32_t sl_map = a->sl_bitmap[fl] & (~0u << sl);
  if (!sl_map) {
    std::uint32_t fl_map = fl + 1 < 32 ? a->fl_bitmap & (~0u << (fl + 1)) : 0;
    if (!fl_map) return nullptr;
    fl = static_cast<unsigned>(__builtin_ctz(fl_map));
    sl_map = a->sl_bitmap[fl];
  }
  sl = static_cast<unsigned>(__builtin_ctz(sl_map));
  return a->lists[fl][sl];
}

// Marks b (size already set) free and tells its successor.
LCA_CORE_TEXT void mark_free(BlockTag* b) {
  b->size_flags |= kFree;
  BlockTag* n = next_block(b);
  n->prev_size = block_size(b);
  set_prev_free_flag(n, true);
}

// Splits `size` bytes off the front of allocated block b; the rest becomes free.
LCA_CORE_TEXT void split_tail(Arena* a, ArenaChunk* c, BlockTag* b, std::size_t size) {
  std::size_t total = block_size(b);
  if (total - size < kArenaMinBlock) return;
  b->size_flags = size | (b->size_flags & kPrevFree);
  auto* rest = reinterpret_cast<BlockTag*>(reinterpret_cast<char*>(b) + size);
  rest->size_flags = (total - size);
  BlockTag* n = next_block(rest);
  if (is_free(n)) {  // merge the remainder with a free successor
    remove_free(a, n);
    rest->size_flags += block_size(n);
  }
  mark_free(rest);
  insert_free(a, rest);
  c->free_bytes += total - size;
}

inline std::size_t block_size_for(std::size_t request) {
  std::size_t s = (request + kArenaTag + 15) & ~std::size_t{15};
  return s < kArenaMinBlock ? kArenaMinBlock : s;
}

// Debug builds: the tags around a block must agree with each other.
void debug_check_block([[maybe_unused]] BlockTag* b) {
#if CALLOC_DEBUG
  std::size_t size = block_size(b);
  BlockTag* n = next_block(b);
  if (size < kArenaMinBlock || (size & 15) || is_prev_free(n) != is_free(b) ||
      (is_free(b) && n->prev_size != size))
    report_fatal("Internal error", payload(b), "arena boundary tags disagree (heap corrupted by an overflow?)");
#endif
}

}  // namespace

LCA_CORE_TEXT void arena_add_chunk(Arena* a, ArenaChunk* c) {
  char* base = reinterpret_cast<char*>(c);
  auto* first = reinterpret_cast<BlockTag*>(base + kChunkHeaderSize);
  BlockTag* sentinel = end_tag(c);
  first->prev_size = 0;
  sentinel->size_flags = 0;  // size 0, allocated: coalescing stops here
  LCA_SPLIT_STORES();  // no tag gets two constant words in one store (placement.h++)
  first->size_flags = kArenaChunkCapacity;
  mark_free(first);
  insert_free(a, first);
  c->free_bytes = kArenaChunkCapacity;
  a->chunks.push(&c->header);
}

LCA_CORE_TEXT bool arena_chunk_is_empty(const ArenaChunk* c) { return c->free_bytes == kArenaChunkCapacity; }

LCA_CORE_TEXT void arena_remove_chunk(Arena* a, ArenaChunk* c) {
  auto* first = reinterpret_cast<BlockTag*>(reinterpret_cast<char*>(c) + kChunkHeaderSize);
  remove_free(a, first);
  a->chunks.remove(&c->header);
}

LCA_CORE_TEXT void* arena_alloc(Arena* a, std::size_t size, std::size_t alignment, std::size_t room) {
  if (size > kArenaChunkCapacity) return nullptr;
  std::size_t need = block_size_for(size);
  std::size_t search = alignment > 16 ? need + alignment + kArenaMinBlock : need;
  BlockTag* b = nullptr;
  if (room > size && room <= kArenaChunkCapacity) {
    // At least `search`: with an alignment above 16 the block must hold the
    // gap before the aligned payload as well (tests/unit/arena,
    // test_room_with_alignment).
    std::size_t with_room = block_size_for(room);
    b = find_fit(a, with_room > search ? with_room : search);
    // Not the free block that ends its chunk (the arena's top): room taken
    // there pushes later blocks further into the chunk (docs/design.md,
    // "Realloc's room": +7-10 % peak RSS on a loop that grows blocks and
    // keeps them, +3 % without the top).
    if (b && next_block(b) == end_tag(chunk_of(b)))
      b = nullptr;
  }
  if (!b) b = find_fit(a, search);
  if (!b) return nullptr;
  remove_free(a, b);
  ArenaChunk* c = chunk_of(b);
  c->free_bytes -= block_size(b);
  if (alignment > 16) {
    auto p = reinterpret_cast<std::uintptr_t>(payload(b));
    std::uintptr_t aligned = (p + alignment - 1) & ~(alignment - 1);
    if (aligned != p) {
      if (aligned - p < kArenaMinBlock) aligned += alignment;
      // The gap before the aligned payload becomes a free block of its own.
      std::size_t gap = aligned - p;
      std::size_t total = block_size(b);
      b->size_flags = gap | (b->size_flags & kPrevFree);
      mark_free(b);
      insert_free(a, b);
      c->free_bytes += gap;
      b = reinterpret_cast<BlockTag*>(reinterpret_cast<char*>(b) + gap);
      b->size_flags = (total - gap) | kPrevFree;
    }
  }
  b->size_flags &= ~kFree;
  set_prev_free_flag(next_block(b), false);
  split_tail(a, c, b, need);
  set_live(c, payload(b));
  debug_check_block(b);
  return payload(b);
}

LCA_CORE_TEXT ArenaCheck arena_check(const ArenaChunk* c, const void* p) {
  auto off = reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(c);
  if (!arena_offset_may_start_block(off)) return ArenaCheck::not_block_start;
  if (arena_live_bit(c, p)) {
    // A block held by its owner's medium cache is live in the bitmap and
    // carries the held mark (arena.h++).  The cache is off in Valgrind and ASan
    // mode, where the word may be undefined or poisoned: not read there.
    if (!LCA_ASAN && !on_valgrind() && static_cast<const std::uintptr_t*>(p)[1] == arena_held_mark(p))
      return ArenaCheck::already_free;
    return ArenaCheck::ok;
  }
  // Not a live block's start: in Valgrind and ASan mode the words read below may
  // lie in a block's redzone or in a quarantined block, so they are read unchecked.
  const BlockTag* t = tag_of(p);
  const std::uintptr_t* mark = static_cast<const std::uintptr_t*>(p) + 1;
  std::size_t size_flags = on_valgrind() ? vg_peek_word(&t->size_flags) : t->size_flags;
  std::size_t size = size_flags & ~kFlagMask;
  if ((size_flags & kFree) && size >= kArenaMinBlock && off - kArenaTag + size <= kChunkSize - kArenaTag)
    return ArenaCheck::already_free;
  if ((on_valgrind() ? vg_peek_word(mark) : *mark) == (kRemoteFreedMark ^ reinterpret_cast<std::uintptr_t>(p)))
    return ArenaCheck::already_free;  // freed by another thread, not collected yet
  return ArenaCheck::not_block_start;
}

LCA_CORE_TEXT bool arena_clear_live_remote(ArenaChunk* c, const void* p) {
  std::size_t g = arena_granule(p);
  std::uint64_t m = std::uint64_t{1} << (g & 63);
  return c->live[g >> 6].fetch_and(~m, std::memory_order_relaxed) & m;
}

LCA_CORE_TEXT std::size_t arena_free(Arena* a, ArenaChunk* c, void* p) {
  BlockTag* b = tag_of(p);
  std::size_t usable = block_size(b) - kArenaTag;
  clear_live(c, p);
  c->free_bytes += block_size(b);
  BlockTag* n = next_block(b);
  if (is_free(n)) {
    remove_free(a, n);
    b->size_flags += block_size(n);
  }
  if (is_prev_free(b)) {
    auto* prev = reinterpret_cast<BlockTag*>(reinterpret_cast<char*>(b) - b->prev_size);
    // b's tag stays behind inside the merged block: flagged free, so that a
    // second free of p is named a double free (arena_check), not an invalid one.
    b->size_flags |= kFree;
    remove_free(a, prev);
    prev->size_flags = (block_size(prev) + block_size(b)) | (prev->size_flags & kPrevFree);
    b = prev;
  } else {
    b->size_flags &= ~kFree;
  }
  mark_free(b);
  insert_free(a, b);
  debug_check_block(b);
  return usable;
}

LCA_CORE_TEXT bool arena_resize_in_place(Arena* a, ArenaChunk* c, void* p, std::size_t new_size) {
  if (new_size > kArenaChunkCapacity) return false;
  BlockTag* b = tag_of(p);
  std::size_t need = block_size_for(new_size);
  std::size_t have = block_size(b);
  if (need <= have) {
    split_tail(a, c, b, need);
    return true;
  }
  BlockTag* n = next_block(b);
  if (!is_free(n) || have + block_size(n) < need) return false;
  remove_free(a, n);
  c->free_bytes -= block_size(n);
  b->size_flags += block_size(n);
  set_prev_free_flag(next_block(b), false);
  split_tail(a, c, b, need);
  return true;
}

bool arena_verify(const Arena* a, const char** why) {
  // The lists: every listed block is free and in its size's list, the bitmaps
  // say which lists are non-empty, a head has no `prev` and every other block's
  // `prev` names the block before it; the walk below finds as many free blocks.
  // (Links read unchecked: in Valgrind mode a free block's payload may be
  // marked inaccessible.)
  auto link = [](BlockTag* b, bool prev) {
    return reinterpret_cast<BlockTag*>(vg_peek_word(prev ? &links(b)->prev : &links(b)->next));
  };
  std::size_t listed = 0;
  const std::size_t most = kChunkSize / kArenaMinBlock * (a->chunks.count + 1);
  for (unsigned fl = 0; fl < kArenaFlCount; ++fl) {
    if (((a->fl_bitmap >> fl) & 1) != (a->sl_bitmap[fl] != 0)) return *why = "first-level bitmap disagrees", false;
    for (unsigned sl = 0; sl < kArenaSlCount; ++sl) {
      BlockTag* head = a->lists[fl][sl];
      if (((a->sl_bitmap[fl] >> sl) & 1) != (head != nullptr)) return *why = "second-level bitmap disagrees", false;
      for (BlockTag *b = head, *before = nullptr; b; before = b, b = link(b, false)) {
        unsigned f, s;
        mapping(block_size(b), &f, &s);
        if (!is_free(b) || f != fl || s != sl) return *why = "listed block not free or in the wrong list", false;
        if (link(b, true) != before) return *why = "free list prev link disagrees", false;
        if (++listed > most) return *why = "free list loops", false;
      }
    }
  }
  std::size_t free_blocks = 0;
  for (ChunkHeader* h = a->chunks.head; h; h = h->next) {
    auto* c = reinterpret_cast<const ArenaChunk*>(h);
    char* base = reinterpret_cast<char*>(h);
    auto* b = reinterpret_cast<BlockTag*>(base + kChunkHeaderSize);
    BlockTag* end = end_tag(h);
    bool prev_free = false;
    std::size_t free_bytes = 0;
    while (b < end) {
      std::size_t s = block_size(b);
      if (s < kArenaMinBlock || (s & 15)) return *why = "block size corrupt", false;
      if (is_prev_free(b) != prev_free) return *why = "prev-free flag disagrees", false;
      if (is_free(b)) {
        if (prev_free) return *why = "two adjacent free blocks", false;
        if (arena_live_bit(c, payload(b))) return *why = "free block marked live", false;
        free_bytes += s;
        ++free_blocks;
      } else if (!arena_live_bit(c, payload(b)) &&
                 vg_peek_word(static_cast<const std::uintptr_t*>(payload(b)) + 1) !=
                     (kRemoteFreedMark ^ reinterpret_cast<std::uintptr_t>(payload(b)))) {
        // (A block freed by another thread and not yet collected is allocated,
        // not live and marked; one held in the owner's medium cache is live.)
        return *why = "allocated block not marked live", false;
      }
      prev_free = is_free(b);
      b = next_block(b);
    }
    if (b != end) return *why = "blocks overrun the chunk", false;
    if (free_bytes != c->free_bytes) return *why = "free byte count disagrees", false;
  }
  if (free_blocks != listed) return *why = "free block missing from the lists", false;
  return true;
}

// --- defragmentation support (defrag.c++) -----------------------------------

void arena_walk(const ArenaChunk* c, void (*visit)(void* ctx, void* payload, std::size_t usable, bool free),
                void* ctx) {
  char* base = reinterpret_cast<char*>(const_cast<ArenaChunk*>(c));
  auto* b = reinterpret_cast<BlockTag*>(base + kChunkHeaderSize);
  BlockTag* end = end_tag(c);
  while (b < end) {
    BlockTag* next = next_block(b);  // read before visit: it may free or carve b
    visit(ctx, payload(b), block_size(b) - kArenaTag, is_free(b));
    b = next;
  }
}

void* arena_alloc_in(Arena* a, void* hole, std::size_t size, std::size_t alignment) {
  BlockTag* b = tag_of(hole);
  if (!is_free(b) || size > kArenaChunkCapacity) return nullptr;
  std::size_t need = block_size_for(size);
  auto p = reinterpret_cast<std::uintptr_t>(hole);
  std::uintptr_t aligned = (p + alignment - 1) & ~(alignment - 1);
  if (aligned != p && aligned - p < kArenaMinBlock) aligned += alignment;
  std::size_t gap = aligned - p;
  if (gap + need > block_size(b)) return nullptr;
  ArenaChunk* c = chunk_of(b);
  remove_free(a, b);
  c->free_bytes -= block_size(b);
  if (gap) {
    std::size_t total = block_size(b);
    b->size_flags = gap | (b->size_flags & kPrevFree);
    mark_free(b);
    insert_free(a, b);
    c->free_bytes += gap;
    b = reinterpret_cast<BlockTag*>(reinterpret_cast<char*>(b) + gap);
    b->size_flags = (total - gap) | kPrevFree;
  }
  b->size_flags &= ~kFree;
  set_prev_free_flag(next_block(b), false);
  split_tail(a, c, b, need);
  set_live(c, payload(b));
  debug_check_block(b);
  return payload(b);
}

unsigned arena_free_neighbours(const void* p) {
  BlockTag* b = tag_of(p);
  return (is_free(next_block(b)) ? 1u : 0u) + (is_prev_free(b) ? 1u : 0u);
}

}  // namespace lca
