// arena.h++ -- the coalescing arena for medium blocks: two-level segregated fit.
//
// Blocks live in arena chunks and carry a 16-byte boundary tag {previous block's
// size, own size | flags}.  Free blocks are kept in 16 x 16 segregated lists found
// with two bitmaps and count-trailing-zeros, so allocation and free are O(1) worst
// case; a freed block merges at once with free neighbours.  A bitmap of allocated
// block starts in the chunk header (out of band, so an overflow cannot forge it)
// validates every free.  An arena belongs to one heap; other threads free into it
// through its lock-free remote list.
#ifndef LCA_ARENA_HXX
#define LCA_ARENA_HXX

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "chunk.h++"
#include "span.h++"
#include "vg.h++"

namespace lca {

constexpr std::size_t kArenaTag = 16;
constexpr std::size_t kArenaMinBlock = 32;
constexpr unsigned kArenaFlCount = 16;
constexpr unsigned kArenaSlCount = 16;
// The largest block an arena chunk can hold.
constexpr std::size_t kArenaChunkCapacity = kChunkSize - kChunkHeaderSize - kArenaTag;
// Requests up to this size may be served by the arena (realloc-grown blocks);
// fresh requests go to the arena up to the large threshold (kLargeThreshold).
constexpr std::size_t kArenaMaxRequest = 1u << 20;

struct BlockTag {
  std::size_t prev_size;   // valid when this block's kPrevFree flag is set
  std::size_t size_flags;  // block size including the tag | flags
};
// The low bits of BlockTag::size_flags that hold flags, not size.
constexpr std::size_t kArenaTagFlagMask = 15;

struct ArenaChunk {
  ChunkHeader header;
  std::size_t free_bytes;
  // Bit g: an allocated block's payload starts at granule g (16 bytes each).
  std::atomic<std::uint64_t> live[kChunkSize / 16 / 64];
};
static_assert(sizeof(ArenaChunk) <= kChunkHeaderSize, "arena bitmap must fit in slot 0");

struct Arena {
  std::uint32_t fl_bitmap;
  std::uint32_t sl_bitmap[kArenaFlCount];
  BlockTag* lists[kArenaFlCount][kArenaSlCount];
  ChunkList chunks;
  alignas(64) std::atomic<FreeObject*> remote_free;
};

inline ArenaChunk* arena_chunk_of(ChunkHeader* c) { return reinterpret_cast<ArenaChunk*>(c); }
// Whether an offset into an arena chunk can be a block's payload start: 16-byte
// aligned, past the header and a tag, with room for a tag before the end.
inline bool arena_offset_may_start_block(std::uintptr_t off) {
  return !(off & 15) && off >= kChunkHeaderSize + kArenaTag && off < kChunkSize - kArenaTag;
}
// The live bitmap's granule (16 bytes) of p, and its bit: set while an
// allocated block's payload starts there.
inline std::size_t arena_granule(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & (kChunkSize - 1)) >> 4; }
inline bool arena_live_bit(const ArenaChunk* c, const void* p) {
  std::size_t g = arena_granule(p);
  return (c->live[g >> 6].load(std::memory_order_relaxed) >> (g & 63)) & 1;
}

void arena_add_chunk(Arena* a, ArenaChunk* c);
// Detaches an entirely free chunk from the arena.
void arena_remove_chunk(Arena* a, ArenaChunk* c);
bool arena_chunk_is_empty(const ArenaChunk* c);

// A block of at least `size` usable bytes aligned to `alignment`; nullptr when no
// chunk of the arena has room (the caller adds a chunk and retries).  With
// `room` > size, the block is carved from the front of a free block of at least
// `room` usable bytes (and of what the alignment needs) when the arena has one
// (not the one that ends its chunk), so that the rest stays free behind it for
// a later realloc to grow into; else as without it.
void* arena_alloc(Arena* a, std::size_t size, std::size_t alignment, std::size_t room = 0);

enum class ArenaCheck { ok, not_block_start, already_free };
ArenaCheck arena_check(const ArenaChunk* c, const void* p);

// Frees a checked block; returns its usable size.
std::size_t arena_free(Arena* a, ArenaChunk* c, void* p);
// The size bits of a live block's tag do not change; its owner may flip the
// kPrevFree flag in the same word while another thread frees the block, so the
// word is read with a relaxed atomic load (a plain move), as the owner writes
// the flag (arena.c++, set_prev_free_flag).
inline std::size_t arena_usable_size(const void* p) {
  const auto* t = reinterpret_cast<const BlockTag*>(static_cast<const char*>(p) - kArenaTag);
  return (__atomic_load_n(&t->size_flags, __ATOMIC_RELAXED) & ~kArenaTagFlagMask) - kArenaTag;
}

// Resizes in place: shrinks by splitting, grows into a free successor.
bool arena_resize_in_place(Arena* a, ArenaChunk* c, void* p, std::size_t new_size);

// Clears p's live bit from a thread that does not own the arena (atomically);
// false when it was clear already: a double free.
bool arena_clear_live_remote(ArenaChunk* c, const void* p);

// A block freed by another thread and not yet taken back by the owner keeps its
// allocated tag; this mark in its second word (freed memory: ours to write) lets a
// second free of it be named a double free.
constexpr std::uintptr_t kRemoteFreedMark = 0x5fee4d0b10c4ed11ull;

inline void arena_push_remote(Arena* a, void* p) {
  static_cast<std::uintptr_t*>(p)[1] = kRemoteFreedMark ^ reinterpret_cast<std::uintptr_t>(p);
  auto* o = static_cast<FreeObject*>(p);
  FreeObject* head = a->remote_free.load(std::memory_order_relaxed);
  do {
    o->next = head;
  } while (!a->remote_free.compare_exchange_weak(head, o, std::memory_order_release,
                                                 std::memory_order_relaxed));
}

// The heap's medium cache (tcache.h++) keeps freed blocks of its own arena aside,
// still allocated in the arena's tags and still set in the live bitmap: a held
// block is told from a live one by the held mark in its second word (freed
// memory: ours to write), derived from the per-process random key as the slab
// guards are, so a program cannot forge it without reading freed memory.
// arena_check reports a block with the mark as freed already (a second free, a
// realloc or malloc_usable_size of it).  Holding and taking back are plain
// stores to the block's line: no atomic read-modify-write of the bitmap, whose
// locked instructions were about a quarter of a cache hit pair's time
// (docs/design.md, "Held blocks keep their live bit").  arena_hold marks a
// checked live block p; arena_unhold clears the mark, before the block goes to
// its next owner or back to the arena with arena_free (a stale mark left inside
// a merged free block could later sit at the start of a new live block).
// Owner only.
inline std::uintptr_t arena_held_mark(const void* p) { return free_guard(p) ^ 0x4e1d0b10c4ed11ull; }
inline void arena_hold(void* p) { static_cast<std::uintptr_t*>(p)[1] = arena_held_mark(p); }
inline void arena_unhold(void* p) { static_cast<std::uintptr_t*>(p)[1] = 0; }
// arena_check's `ok`, inline, for the owner's free (heap_free_medium): p is
// the start of a live block of c that is not held.  False: arena_check says
// why.  Reads the held mark unconditionally: not for Valgrind or ASan mode
// (no thread heap owns an arena chunk there).
inline bool arena_is_live_block(const ArenaChunk* c, const void* p) {
  auto off = reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(c);
  return arena_offset_may_start_block(off) && arena_live_bit(c, p) &&
         static_cast<const std::uintptr_t*>(p)[1] != arena_held_mark(p);
}

// Walks every block of a chunk (for statistics and consistency checks).
template <class F>
void arena_for_each_block(const ArenaChunk* c, F&& f);

// Consistency check of the whole arena (debug builds and tests): returns false and
// names the problem in *why when a tag, list or bitmap disagrees.
bool arena_verify(const Arena* a, const char** why);

// --- defragmentation support (defrag.c++) -----------------------------------
// Calls visit(ctx, payload, usable, free) for every block of c in address order.
void arena_walk(const ArenaChunk* c, void (*visit)(void* ctx, void* payload, std::size_t usable, bool free),
                void* ctx);
// Carves a block of `size` usable bytes aligned to `alignment` from the front of
// the free block whose payload is hole (the lowest fitting address in it); the
// rest stays free.  nullptr when it does not fit.  Owner only.
void* arena_alloc_in(Arena* a, void* hole, std::size_t size, std::size_t alignment);
// How many free neighbours the block at p has (0..2): a free of it merges them.
unsigned arena_free_neighbours(const void* p);

}  // namespace lca

#endif
