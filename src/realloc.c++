// realloc.c++ -- resizing a block: in place when it can, else a move
// (block_realloc, block_realloc_raw), and Valgrind mode's resize (vg_realloc).
//
// A small object grows in place over the uncarved slots after it when it is
// the last one its own span carved (span_grow_at_frontier, span.h++), an arena
// block of the caller's own heap into the free block after it
// (arena_resize_in_place), and a large mapping by mremap (large_resize); a
// block that shrinks stays where it is.  A block that must move to grow goes
// to the arena, placed with room behind it to grow again (kReallocRoom,
// alloc_arena's `room`); the old block is freed with block_free.  In Valgrind
// mode a resize in place is a VALGRIND_RESIZEINPLACE_BLOCK and a move is
// malloc, copy and free, as VALGRIND.md says.
#include "tcache.h++"
#include "heap.h++"
#include "module.h++"
#include "placement.h++"

#include <cerrno>
#include <cstring>

#include "os.h++"
#include "vg.h++"

namespace lca {

namespace {

// A block realloc moves to grow is placed where it could grow to this many
// times its new size in place (alloc_arena's `room`).
constexpr std::size_t kReallocRoom = 8;

// Valgrind mode: a resize in place is a VALGRIND_RESIZEINPLACE_BLOCK; a move is
// malloc, a copy of the requested bytes, free (the order VALGRIND.md gives).
void* vg_realloc(Domain* d, void* p, std::size_t size, bool may_move, ResizeResult* how) {
  (void)d;
  BlockRef r;
  // A module heap's block is resized by its heap, which tells memcheck itself.
  if (!block_lookup(p, &r, "realloc", true)) return resize_unowned(p, size, may_move, how);
  Domain* bd = r.domain;
  if (!bd->per_thread) handle_object_check_unlocked(bd, p, "realloc");  // before anything changes
  std::size_t old_size = vg_block_size(p, r.usable);
  auto count_resize = [&](std::size_t now) {
    if (now > old_size)
      bd->vg.bytes_allocated.fetch_add(now - old_size, std::memory_order_relaxed);
    else
      bd->vg.bytes_freed.fetch_add(old_size - now, std::memory_order_relaxed);
  };
  *how = ResizeResult::failed;
  // During a resize the bytes after the requested ones are libcalloc's (an arena
  // split writes a tag there, mremap moves or drops them, and ASan must not keep
  // their poison at the old address); no-access again if the block stays as it was.
  char* slack = static_cast<char*>(p) + old_size;
  std::size_t slack_bytes = r.usable - old_size;
  if (r.kind == BlockRef::Kind::large && (size + kVgRedzone > kLargeThreshold / 2 || !may_move)) {
    // mremap keeps the pages and memcheck their V bits; MALLOCLIKE would reset
    // them, so they are saved and put back (VALGRIND.md).
    std::size_t keep = size < old_size ? size : old_size;
    void* vbits = os_map(align_up(keep ? keep : 1, os_page_size()));
    if (!vbits) return nullptr;
    vg_save_vbits(p, vbits, keep);
    void* q = nullptr;
    vg_defined(slack, slack_bytes);
    LargeResize lr = large_resize(&bd->large, p, size + kVgRedzone, may_move, &q);
    if (lr == LargeResize::failed) vg_noaccess(slack, slack_bytes);
    if (lr != LargeResize::failed) {
      LargeInfo info;
      large_lookup(q, &info);
      if (lr == LargeResize::in_place) {
        vg_block_resized(q, old_size, size, info.usable, info.usable);
        bd->vg.in_place.fetch_add(1, std::memory_order_relaxed);
        *how = ResizeResult::in_place;
      } else {
        vg_block_forgotten(p);
        vg_block_allocated(q, size, info.usable, false);
        bd->vg.remapped.fetch_add(1, std::memory_order_relaxed);
        *how = ResizeResult::remapped;
      }
      vg_restore_vbits(q, vbits, keep);
      count_resize(size);
    }
    os_unmap(vbits, align_up(keep ? keep : 1, os_page_size()));
    if (lr != LargeResize::failed) return q;
  } else {
    ResizeResult inner;
    vg_defined(slack, slack_bytes);
    if (!block_realloc_raw(d, p, size + kVgRedzone, false, &inner)) {
      vg_noaccess(slack, slack_bytes);
    } else {
      BlockRef now;
      block_lookup(p, &now, "realloc");
      vg_block_resized(p, old_size, size, r.usable, now.usable);
      bd->vg.in_place.fetch_add(1, std::memory_order_relaxed);
      count_resize(size);
      *how = ResizeResult::in_place;
      return p;
    }
  }
  if (!may_move) return nullptr;
  void* q = domain_alloc(bd, size, 16);
  if (!q) return nullptr;
  std::memcpy(q, p, size < old_size ? size : old_size);
  free_slow(p);
  bd->vg.moved.fetch_add(1, std::memory_order_relaxed);
  *how = ResizeResult::moved;
  return q;
}
}  // namespace

LCA_CORE_TEXT void* block_realloc(Domain* d, void* p, std::size_t size, bool may_move, ResizeResult* how) {
  if (p && on_valgrind()) {
    VgSerial serial;
    return vg_realloc(d, p, size, may_move, how);
  }
  return block_realloc_raw(d, p, size, may_move, how);
}

LCA_CORE_TEXT void* block_realloc_raw(Domain* d, void* p, std::size_t size, bool may_move, ResizeResult* how) {
  *how = ResizeResult::failed;
  if (!p) {
    if (!may_move) return nullptr;
    void* q = domain_alloc(d, size, 16);
    if (q) *how = ResizeResult::moved;
    return q;
  }
  BlockRef r;
  // A block of no core heap: a module heap's (resized in that heap), or nobody's.
  if (!block_lookup(p, &r, "realloc", true)) return resize_unowned(p, size, may_move, how);
  Domain* bd = r.domain;
  if (!bd->per_thread) relocating_check(bd);
  DomainLock lock(bd, !bd->per_thread);  // a thread heap needs no lock
  // A handle's object keeps the size its handle was given, and a move would
  // leave the handle naming the freed old place: refused.
  if (!bd->per_thread) handle_object_check(bd, p, "realloc");
  Heap* h = bd->per_thread ? heap_for_thread() : bd->single;
  // A heap for this call only, after the thread's exit handler (tcache.h++).
  struct DoneAfterExit {
    Heap* h;
    ~DoneAfterExit() { heap_done_after_exit(h); }
  } done_after_exit{bd->per_thread ? h : nullptr};
  if (!h) {
    errno = ENOMEM;
    return nullptr;
  }
  std::size_t old_usable = r.usable;
  bool in_place = false;
  switch (r.kind) {
    case BlockRef::Kind::span: {
      Span* s = r.span;
      if (size <= old_usable) {
        in_place = true;
      } else if (span_owner(s) == h) {
        // The slots it covers now are no allocation.
        bool grew = span_live_change_uncounted(h, s, [&] { return span_grow_at_frontier(s, p, r.index, size); });
        if (grew) {
          h->counters.extra_bytes_allocated.add(span_usable_size(s, r.index) - old_usable);
          in_place = true;
        }
      }
      break;
    }
    case BlockRef::Kind::arena: {
      ArenaChunk* c = arena_chunk_of(r.chunk);
      if (r.chunk->heap == h) {
        if (arena_resize_in_place(&h->arena, c, p, size)) {
          std::size_t now = arena_usable_size(p);
          if (now > old_usable)
            h->counters.extra_bytes_allocated.add(now - old_usable);
          else
            h->counters.extra_bytes_freed.add(old_usable - now);
          in_place = true;
        }
      } else if (size <= old_usable) {
        in_place = true;
      }
      break;
    }
    case BlockRef::Kind::large: {
      if (size > kLargeThreshold / 2 || !may_move) {
        void* q = nullptr;
        LargeResize lr = large_resize(&bd->large, p, size, may_move, &q);
        if (lr == LargeResize::in_place) {
          in_place = true;
        } else if (lr == LargeResize::remapped) {
          h->counters.realloc_remapped.add(1);
          *how = ResizeResult::remapped;
          return q;
        }
      }
      break;
    }
  }
  if (in_place) {
    h->counters.realloc_in_place.add(1);
    *how = ResizeResult::in_place;
    return p;
  }
  if (!may_move) return nullptr;
  // A block that grows goes to the arena (where it can grow in place next
  // time), carved from a free block with room behind it to grow to
  // kReallocRoom x this size: a block that grew once tends to grow again
  // (docs/design.md, "Realloc's room").
  bool grown = size > old_usable;
  void* q = grown && size <= kArenaMaxRequest ? alloc_arena(h, size, 16, size * kReallocRoom)
                                              : heap_alloc(h, size, 16, grown);
  if (!q) return nullptr;
  std::memcpy(q, p, size < old_usable ? size : old_usable);
  block_free(p);
  h->counters.realloc_moved.add(1);
  *how = ResizeResult::moved;
  return q;
}

}  // namespace lca
