// heap.h++ -- the heap layer's internals that its files share: tcache.c++
// (thread heaps, span queues and chunk supply) and the files split from it.
// Not for the other modules, which use tcache.h++.
//
// There is no link-time optimisation: a function defined in one of these files
// and called from another is a call.  So the small primitives that the slow
// paths of several of them inline -- the span queue's links, the decay test,
// an arena free by the owner -- are defined here, with internal linkage and
// not declared inline (each file gets its own copy, which the compiler inlines
// or not by the same rules as when they were tcache.c++'s: the `inline`
// keyword alone changed what GCC inlined into free_cold_rest); the rest are
// declared here and defined, out of line, in the file that owns them.
#ifndef LCA_HEAP_HXX
#define LCA_HEAP_HXX

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "os.h++"
#include "placement.h++"
#include "tcache.h++"

namespace lca {

// --- chunk supply (tcache.c++) ----------------------------------------------
constexpr std::size_t kMaxDirtySlots = 64;  // 4 MiB of empty spans kept per heap (8 MiB before a purge)
constexpr std::uint64_t kDecayNs = 1'000'000'000ull;
// Shared span slots: a heap keeps this many empty dirty slots for itself and
// gives the rest to its domain's stack (Domain::shared_slots) while that holds
// fewer than kMaxSharedSlots (a slot taken from the stack comes back to it
// whatever its size).  docs/design.md, "Shared span slots".
constexpr std::size_t kPrivateDirtySlots = 4;
constexpr std::size_t kMaxSharedSlots = 32;

// Memory goes back to the OS at most once per kDecayNs per heap or domain: a burst
// of frees (a program tearing down a big structure) costs no system calls while
// it lasts, and what it left is returned by the first release after the pause.
// Page faults cost ~10-60 us here, so returning memory that is about to be reused
// is the expensive mistake.
namespace {
[[maybe_unused]] LCA_CORE_TEXT bool decay_due(std::uint64_t* last) {
  std::uint64_t now = os_now_ns();
  if (now - *last < kDecayNs) return false;
  *last = now;
  return true;
}
}  // namespace

// A chunk no heap uses any more to the domain's free chunks (kept resident,
// the surplus unmapped at the decay).
void release_chunk(Domain* d, ChunkHeader* c);
// Purges one span chunk's dirty free slots; returns how many stay dirty.
std::size_t purge_chunk_dirty(ChunkHeader* ch);
// Shared span slots (domain lock held): s, empty and inactive, onto the stack.
void push_shared_slot(Domain* d, Span* s, bool purged);
// Gives the stack's slots of orphan chunks back to them; purges the others
// when `purge`.
void purge_shared_slots(Domain* d, bool purge);

// --- span queues (tcache.c++) ------------------------------------------------
namespace {
[[maybe_unused]] bool queue_empty(const Heap* h, unsigned c) { return h->head[c] == &g_empty_span; }
}  // namespace
// Every change of a queue's head goes through set_head (the head mark).
void set_head(Heap* h, unsigned c, Span* s);
// Statistics (tcache.h++): moves the counts of s, an active span of h, into
// h's counters (h's stats_lock held, by its owner).
void span_stats_fold(Heap* h, Span* s);
// Collects the remote frees of s, an active span of h.
void collect_span(Heap* h, Span* s);

namespace {

// Statistics (tcache.h++): runs change(), which moves s's live count by
// something other than an allocation or a free h counts in the use word --
// remote frees collected (the freeing heaps counted them), the slots an object
// grew over or gave back, defragmentation's moves -- under h's stats_lock,
// with stat_live following, so that s's unfolded counts stay what they were.
// `frees` of the change are frees h does count (from the live count).
template <class Change>
auto span_live_change_uncounted(Heap* h, Span* s, Change change, std::int64_t frees = 0) {
  StatsLock lock(h);
  auto before = static_cast<std::int64_t>(span_used(s));
  auto follow = [&] {
    s->stat_live += static_cast<std::uint64_t>(static_cast<std::int64_t>(span_used(s)) - before + frees);
  };
  if constexpr (std::is_void_v<decltype(change())>) {
    change();
    follow();
  } else {
    auto result = change();
    follow();
    return result;
  }
}

// The queue primitives take h's stats_lock: a span joins a queue with no
// counts (new, from the pool, or folded when it left one), and leaves it folded.
[[maybe_unused]] LCA_CORE_TEXT void queue_link_front(Heap* h, unsigned c, Span* s) {
  s->stat_live = span_used(s);
  s->prev = nullptr;
  if (queue_empty(h, c)) {
    s->next = nullptr;
    h->tail[c] = s;
  } else {
    s->next = h->head[c];
    h->head[c]->prev = s;
  }
  set_head(h, c, s);
}

[[maybe_unused]] LCA_CORE_TEXT void queue_push_front(Heap* h, unsigned c, Span* s) {
  StatsLock lock(h);
  queue_link_front(h, c, s);
}

// s joins the back of its queue (h's stats_lock held).
[[maybe_unused]] LCA_CORE_TEXT void queue_link_back(Heap* h, unsigned c, Span* s) {
  if (queue_empty(h, c)) return queue_link_front(h, c, s);
  s->stat_live = span_used(s);
  s->next = nullptr;
  s->prev = h->tail[c];
  h->tail[c]->next = s;
  h->tail[c] = s;
}

[[maybe_unused]] LCA_CORE_TEXT void queue_push_back(Heap* h, unsigned c, Span* s) {
  if (!(s->flags & kSpanExhausted)) heap_span_purge_unquiet(h);
  StatsLock lock(h);
  queue_link_back(h, c, s);
}

}  // namespace

// --- arena (tcache.c++) -------------------------------------------------------
// Frees p, a block of h's own arena chunk c (h's owner); a chunk that empties
// goes back to the domain unless it is the arena's last.
namespace {
[[maybe_unused]] void arena_free_owned(Heap* h, ArenaChunk* c, void* p) {
  arena_free(&h->arena, c, p);
  if (arena_chunk_is_empty(c) && h->arena.chunks.count > 1) {
    arena_remove_chunk(&h->arena, c);
    release_chunk(h->domain, &c->header);
  }
}
}  // namespace

// The allocation of a block in h's arena (h's owner), after the remote frees
// of its blocks and, when the arena has no room, the medium cache went back to
// it; a new arena chunk last.  `room`: see arena_alloc (a block realloc moved,
// placed with room to grow).  nullptr with errno ENOMEM when the OS has none.
void* alloc_arena(Heap* h, std::size_t size, std::size_t alignment, std::size_t room = 0);

// --- medium cache (medium.c++) ---------------------------------------------------
// Gives every block the medium cache of h holds back to h's arena (h's owner).
void medium_cache_flush(Heap* h);

// --- span reclaim: the pools of orphaned spans (pool.c++) --------------------
namespace {

class PoolLock {  // class c's pool lock of d
 public:
  PoolLock(Domain* d, unsigned c) : m_(d->orphan_pools->lock_of(c)) { lca_mutex_lock(m_); }
  ~PoolLock() { lca_mutex_unlock(m_); }
  PoolLock(const PoolLock&) = delete;
  PoolLock& operator=(const PoolLock&) = delete;

 private:
  pthread_mutex_t* m_;
};

// Unlinks s, which follows prev (nullptr: s is the head), from pool p (its lock held).
[[maybe_unused]] void orphan_unlink(Domain* d, OrphanPool* p, Span* prev, Span* s) {
  if (prev)
    prev->next = s->next;
  else
    p->head.store(s->next, std::memory_order_relaxed);
  if (s->next)
    s->next->prev = prev;
  else
    p->tail = prev;
  s->next = s->prev = nullptr;
  --p->count;
  d->orphan_spans.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace

// The pool's bound (pool lock held): beyond kOrphanKeep spans, its oldest go
// while they are empty; the spans that go are unlinked onto *doomed.
void orphan_trim_locked(Domain* d, OrphanPool* p, Span** doomed);
// Retires the doomed spans (no pool lock held).
void orphan_retire_doomed(Domain* d, Span* doomed);
// Retires the empty spans of the pools of orphaned spans (domain lock held;
// takes each pool's lock in turn), up to `limit` of them looked at.
void sweep_orphans(Domain* d, std::size_t limit);
// Gives the slot of s (inactive, of an orphan chunk) back to its chunk, dirty
// unless `purged`, and the chunk to the domain once it holds no span.
void release_orphan_slot(Domain* d, SpanChunk* sc, Span* s, bool purged);
// Purges the free slots of the orphan chunks (domain lock held).
void purge_orphan_chunks(Domain* d);

}  // namespace lca

#endif
