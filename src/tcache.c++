// tcache.c++ -- thread heaps, span queues and chunk supply (thread exit,
// adoption and fork: lifecycle.c++; the pools of orphaned spans: pool.c++; the
// medium cache: medium.c++; free_cold and the frees of other threads' blocks:
// remote.c++; realloc: realloc.c++; what these files share: heap.h++).
//
// Each heap keeps, per size class, a queue of spans; the head is the current span.
// When the head runs dry the slow path collects its remote frees, then rotates a
// bounded number of spans (kQueueProbe) from the head to the tail looking for free
// objects -- the head after a rotation is the span that has waited longest for
// frees, the best bet -- and only then carves a new span.  A span of few objects
// (classes above 1 KiB) must offer several to become the head (kRefillMin), so a
// class whose spans are nearly full does not refill for every object.  A span whose last object
// is freed (and is not the head) is retired at once: its slot returns to its chunk,
// and a chunk with no span left returns to the domain.  Every path is O(1) apart
// from system calls and the bounded sweeps of abandoned heaps.
// Also here: the heap's arena (alloc_arena), the allocation entry points
// (heap_alloc, domain_alloc), the slow free and block lookup (free_slow,
// block_lookup), the domains, trim and statistics.  The refill's take from the
// pools (take_orphan_span) and new_span's search of orphan chunks stay here
// with the slow path that inlines them (there is no LTO).
#include "tcache.h++"
#include "heap.h++"
#include "placement.h++"

#include <cerrno>
#include <cstring>
#include <new>
#include <sched.h>
#include <sys/mman.h>

#include "huge.h++"
#include "lifecycle.h++"
#include "module.h++"
#include "numa.h++"
#include "os.h++"
#include "sanitizer.h++"
#include "vg.h++"

namespace lca {

LCA_BIG_BSS(orphan_pools) constinit OrphanPools g_orphan_pools{};
constinit Domain g_process_domain{true, &g_orphan_pools};
// Read by every program's first allocation of each class: in .data
// (LCA_CORE_DATA), beside the other variables every program touches, not in
// .bss, where it sat near the end of the page .data ends in and one more PLT
// slot moved it onto the anonymous page past the file (docs/design.md,
// "Tracking", the profile signal's bounds; tests/integration/small-rss.sh).
LCA_CORE_DATA(empty_span) constinit Span g_empty_span{};

constinit Heap g_no_heap{NoHeapTag{}};
constinit thread_local Heap* tls_heap __attribute__((tls_model("initial-exec"))) = &g_no_heap;
constinit thread_local Heap* tls_owned_heap __attribute__((tls_model("initial-exec"))) = nullptr;
constinit thread_local bool tls_heap_gone __attribute__((tls_model("initial-exec"))) = false;

namespace {

constexpr unsigned kQueueProbe = 4;
// Hysteresis of the span queues for spans of few objects (classes above 1 KiB:
// 8-51 objects per 64 KiB span).  A span behind the head becomes the current
// span only with kRefillMin free objects (a quarter of its objects at most),
// else the allocator carves a new span: without it a class whose spans are all
// nearly full took the slow path in malloc and in free for every object
// (the span goes dry, one free brings it back, the next malloc drains it: 27 000
// of each per million ops of calloc-bench heavy-tail capped at 8 KiB).
// Spans of 64 objects or more take any free object (kRefillMin does not apply).
// docs/design.md, "Span refill hysteresis".
constexpr std::uint32_t kRefillMin = 4;
constexpr std::uint32_t kRefillFewObjects = 64;
// Spans from the tail of a class's queue whose remote frees a slow path collects.
constexpr unsigned kQueueSweep = 4;
constexpr std::size_t kDomainCachedChunks = 4;  // free chunks a domain keeps
constexpr unsigned kAbandonedSweep = 4;
// Span reclaim: pooled spans a refill looks at before it carves (those with too
// few free objects stay with the taker, at the back of its queue), orphan
// chunks new_span looks at for a free slot, and pooled spans a sweep collects.
constexpr unsigned kOrphanProbe = 4;
constexpr unsigned kOrphanChunkProbe = 8;
constexpr unsigned kOrphanSweep = 256;
// First spans on clean slots: the classes whose first span takes a clean slot
// (new_first_span), and the heap's chunks it looks at for one before it
// acquires a chunk.  docs/design.md, "Small heaps' peak RSS".
constexpr std::size_t kCleanFirstSpanMax = 1024;
constexpr unsigned kCleanSlotProbe = 8;
// Purged pages of partly used spans (heap_purge_span_pages): a span is looked
// at when it may give back this many pages (16 KiB) at least, when the heap is
// about to take a chunk; trim takes every page.  (Not at the decay of the empty
// slots: a program freeing a large heap in random order had its spans' free
// lists walked and their pages purged half-way, then each emptied slot purged
// again -- calloc-bench peak-rss 1.45 x the time -- for no fragmentation peak.)
// docs/design.md, "Purging the free pages of partly used spans".
constexpr unsigned kSpanPurgeMinPages = 4;
// When the chunk comes from the domain's cache (no mapping), only if the spans
// may give back a chunk's worth at least: a warmed-up program that takes and
// returns cached chunks makes no system call for the few free pages it has.
constexpr std::size_t kSpanPurgeBulkPages = kChunkSize / kCarvePage;
// At most this many chunk requests in a row skip the walk while the heap is
// quiet (purge_span_pages_before_chunk): 32 MiB of span chunks.
constexpr unsigned kSpanPurgeSkipMax = 8;

}  // namespace

constinit pthread_mutex_t g_domains_lock = PTHREAD_MUTEX_INITIALIZER;
constinit pthread_mutex_t g_domains_fork_gate = PTHREAD_MUTEX_INITIALIZER;
constinit thread_local unsigned tls_private_domain_locks __attribute__((tls_model("initial-exec"))) = 0;

LCA_CORE_TEXT void init_recursive(pthread_mutex_t* m) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init(m, &attr);
  pthread_mutexattr_destroy(&attr);
}

namespace {

// --- span queues ------------------------------------------------------------
// Objects s can still hand out (local, remote-collected or uncarved).
std::uint32_t span_free_objects(const Span* s) {
  std::uint32_t capacity = s->capacity;
  return capacity > span_used(s) ? capacity - span_used(s) : 0;
}

std::uint32_t span_refill_min(const Span* s) {
  std::uint32_t capacity = s->capacity;
  if (capacity >= kRefillFewObjects) return 1;
  std::uint32_t quarter = capacity / 4;
  return quarter < kRefillMin ? (quarter ? quarter : 1) : kRefillMin;
}

// Whether s (a span behind the head, or nullptr) holds free objects that are
// resident -- carved, on its local or remote list -- as many as a page of
// them at least (and span_refill_min): the head's carve limit stays where it
// is and s becomes the head.  With fewer, the switch cost more than the page:
// taking a span's last few free objects one slow path each, the spans flagged
// exhausted and their frees slow too (calloc-workloads fragmentation: +13 %
// instructions when any free object sufficed, no RSS gained).
LCA_CORE_TEXT bool span_offers_resident(const Span* s) {
  if (!s || (!s->free && !span_has_remote(s))) return false;
  std::uint32_t carved = span_index(s, s->bump);
  std::uint32_t page = static_cast<std::uint32_t>(kCarvePage / s->obj_size);
  std::uint32_t want = span_refill_min(s);
  if (want < page) want = page;
  std::uint32_t taken = span_used(s) + ((s->flags & kSpanPurged) ? span_purged_objects(s) : 0);
  return carved > taken && carved - taken >= want;
}

}  // namespace

// Every change of a queue's head goes through here, keeping the head mark (kUseHeadMark) true.
LCA_CORE_TEXT void set_head(Heap* h, unsigned c, Span* s) {
  Span* old = h->head[c];
  if (old != &g_empty_span) {
    span_use_store(old, span_use(old) & ~kUseHeadMark);
    // (A head left behind with free objects: its frees take the fast path.)
    if (!(old->flags & kSpanExhausted)) heap_span_purge_unquiet(h);
  }
  if (s != &g_empty_span) span_use_store(s, span_use(s) | kUseHeadMark);
  h->head[c] = s;
}

// Statistics (tcache.h++): moves the counts of s, an active span of h, into
// h's counters (h's stats_lock held, by its owner).
LCA_CORE_TEXT void span_stats_fold(Heap* h, Span* s) {
  std::uint64_t u = span_use(s);
  std::uint64_t allocs = u >> kUseCountShift;
  auto live = static_cast<std::uint32_t>(u & kUseLiveMask);
  if (allocs == 0 && live == s->stat_live) return;
  unsigned c = s->size_class;
  h->counters.class_allocs[c].add(allocs);
  h->counters.class_frees[c].add(allocs + s->stat_live - live);
  span_use_store(s, u & (kUseLiveMask | kUseHeadMark));
  s->stat_live = live;
}

namespace {

// s leaves its queue, its counts folded (h's stats_lock held).
LCA_CORE_TEXT void queue_unlink(Heap* h, unsigned c, Span* s) {
  span_stats_fold(h, s);
  if (s->prev)
    s->prev->next = s->next;
  else
    set_head(h, c, s->next ? s->next : &g_empty_span);
  if (s->next)
    s->next->prev = s->prev;
  else
    h->tail[c] = s->prev;
  s->next = s->prev = nullptr;
}

LCA_CORE_TEXT void queue_remove(Heap* h, unsigned c, Span* s) {
  StatsLock lock(h);
  queue_unlink(h, c, s);
}

// queue_remove then queue_push_back of s under one taking of the stats lock
// instead of two (the refill's rotation of the head: 15 000 per 2 M calls of
// the matrix's producer-consumer, each pthread_mutex_lock and unlock a locked
// instruction, which waits for the core's pending stores).
LCA_CORE_TEXT void queue_rotate(Heap* h, unsigned c, Span* s) {
  if (!(s->flags & kSpanExhausted)) heap_span_purge_unquiet(h);
  StatsLock lock(h);
  queue_unlink(h, c, s);
  queue_link_back(h, c, s);
}

LCA_CORE_TEXT void queue_insert_after_head(Heap* h, unsigned c, Span* s) {
  if (!(s->flags & kSpanExhausted)) heap_span_purge_unquiet(h);
  StatsLock lock(h);
  queue_unlink(h, c, s);
  if (queue_empty(h, c)) return queue_link_front(h, c, s);
  s->stat_live = span_used(s);
  Span* head = h->head[c];
  s->prev = head;
  s->next = head->next;
  if (head->next)
    head->next->prev = s;
  else
    h->tail[c] = s;
  head->next = s;
}

// --- chunks -----------------------------------------------------------------
// Gives a free chunk, off the domain's lists, back to the OS.
void unmap_free_chunk(Domain* d, ChunkHeader* c) {
  d->chunk_bytes.fetch_sub(kChunkSize, std::memory_order_relaxed);
  chunk_unmap(c);
}

// Out of memory or address space: unmap what the domain keeps cached (free chunks,
// large mappings) so that a retry can succeed.
void release_cached(Domain* d) {
  ChunkList doomed;
  {
    DomainLock lock(d);
    while (ChunkHeader* c = d->free_chunks.pop()) doomed.push(c);
  }
  while (ChunkHeader* c = doomed.pop()) unmap_free_chunk(d, c);
  large_trim(&d->large, true);
}

// attempt(), and once more after release_cached when it returns nullptr; a
// retry that succeeds leaves errno as it was before the first attempt.
template <class Attempt>
LCA_CORE_TEXT auto with_retry_after_release(Domain* d, Attempt attempt) {
  int saved_errno = errno;
  auto r = attempt();
  if (!r) {
    release_cached(d);
    r = attempt();
    if (r) errno = saved_errno;
  }
  return r;
}

// Gives the empty spans of abandoned heaps back (domain lock held).
void sweep_abandoned(Domain* d);

// The node a heap's next chunk goes to: its domain's (a NUMAAllocator node heap)
// or, with node-local thread heaps (numa=1), the heap's own.
LCA_CORE_TEXT NodePlacement chunk_placement_for(const Domain* d, const Heap* h) {
  NodePlacement where = d->placement;
  if (where.node < 0 && h && h->node >= 0) where.node = h->node;
  return where;
}

// A cached free chunk on the wanted node (any when no node is wanted).  When
// nothing can be bound in this process (chunk_can_place), an unbound one if
// none is bound to the node: a fresh chunk would be unbound too.
LCA_CORE_TEXT ChunkHeader* pop_free_chunk(Domain* d, int node) {
  if (node < 0) return d->free_chunks.pop();
  ChunkHeader* unbound = nullptr;
  for (ChunkHeader* c = d->free_chunks.head; c; c = c->next) {
    if (c->node == node) {
      d->free_chunks.remove(c);
      return c;
    }
    if (c->node < 0 && !unbound) unbound = c;
  }
  if (!unbound || chunk_can_place()) return nullptr;
  d->free_chunks.remove(unbound);
  return unbound;
}

// Whether the domain's next chunk request would map one (no free chunk cached):
// the moment to give back what the heap holds unused (a peek; rare path).
LCA_CORE_TEXT bool domain_will_map(Domain* d) {
  DomainLock lock(d);
  return !d->free_chunks.head;
}

// Before h gets a chunk: the free pages of its partly used spans go back to
// the OS (all candidates when the chunk is to be mapped; from the domain's
// cache, only a chunk's worth or more: kSpanPurgeBulkPages).
// A heap that only grows (every span behind a class head full: calloc-bench
// peak-rss's build-up) has nothing to give back, and a walk of every span
// before each chunk made the walks quadratic in the heap's size (4 % of
// peak-rss's time): after such a fruitless walk (Heap::span_purge_quiet) the
// next 1, 3, 7, then kSpanPurgeSkipMax chunk requests skip it, until something
// gives a span behind a head free objects (heap_span_purge_unquiet).  Frees
// into a head while it is the head are not seen; its free pages are the next
// ones the class allocates anyway.
LCA_CORE_TEXT void purge_span_pages_before_chunk(Heap* h) {
  if (on_valgrind() || !h->domain->per_thread) return;
  if (h->span_purge_quiet && h->span_purge_skip) {
    --h->span_purge_skip;
    return;
  }
  bool quiet = false;
  h->counters.span_purge_walks.add(1);
  heap_purge_span_pages(h, kSpanPurgeMinPages, domain_will_map(h->domain) ? 0 : kSpanPurgeBulkPages, &quiet);
  unsigned backoff = !quiet ? 0 : !h->span_purge_quiet ? 1 : 2u * h->span_purge_backoff + 1;
  if (backoff > kSpanPurgeSkipMax) backoff = kSpanPurgeSkipMax;
  h->span_purge_quiet = quiet;
  h->span_purge_backoff = static_cast<std::uint8_t>(backoff);
  h->span_purge_skip = static_cast<std::uint8_t>(backoff);
}

LCA_CORE_TEXT ChunkHeader* acquire_chunk(Domain* d, ChunkKind kind, Heap* h) {
  ChunkHeader* c;
  bool fresh = false;
  NodePlacement where = chunk_placement_for(d, h);
  {
    DomainLock lock(d);
    c = pop_free_chunk(d, where.node);
    if (!c && d->abandoned) {
      sweep_abandoned(d);
      c = pop_free_chunk(d, where.node);
    }
    if (!c && d->orphan_spans.load(std::memory_order_relaxed)) {
      sweep_orphans(d, kOrphanSweep);
      c = pop_free_chunk(d, where.node);
    }
  }
  if (c) {
    if (c->kind != kind) {
      // The header of the other kind is meaningless here: let it read as zero.
      constexpr std::size_t used = sizeof(SpanChunk) > sizeof(ArenaChunk) ? sizeof(SpanChunk) : sizeof(ArenaChunk);
      chunk_reset_header(c, kind, d, used);
    }
  } else {
    // Out of memory or address space (RLIMIT_AS): the cached large mappings
    // and free chunks go back, and it tries once more.
    c = with_retry_after_release(d, [&] { return chunk_map(kind, d, where); });
    if (!c) return nullptr;
    if (where.node >= 0 && c->node != where.node) d->bind_fallbacks.fetch_add(1, std::memory_order_relaxed);
    fresh = true;
    d->chunk_bytes.fetch_add(kChunkSize, std::memory_order_relaxed);
  }
  vg_chunk_added(d, c, kChunkSize);
  c->heap = h;
  if (kind == ChunkKind::spans) {
    SpanChunk* sc = span_chunk_of(c);
    sc->free_slots = ~std::uint64_t{1};
    LCA_SPLIT_STORES();  // placement.h++
    sc->dirty_slots = fresh ? 0 : ~std::uint64_t{1};
    sc->active_spans = 0;
    if (!fresh) h->dirty_slots += kSpansPerChunk - 1;
  }
  return c;
}

}  // namespace

LCA_CORE_TEXT void release_chunk(Domain* d, ChunkHeader* c) {
  ChunkList doomed;
  {
    DomainLock lock(d);
    vg_chunk_removed(d, c);
    c->heap = nullptr;
    d->free_chunks.push(c);  // kept resident: the next chunk request costs no page faults
    // Not while a defragmentation pass holds the heap (quarantine_hold): its
    // moves empty chunk after chunk, and unmapping them all at once (130-230 us
    // each) would blow its time budget; its trim unmaps them a piece at a time.
    if (d->free_chunks.count > kDomainCachedChunks && !d->quarantine_held() && decay_due(&d->last_release_ns))
      while (d->free_chunks.count > kDomainCachedChunks) doomed.push(d->free_chunks.pop());
  }
  while (ChunkHeader* victim = doomed.pop()) unmap_free_chunk(d, victim);
}

namespace {

// A chunk that transparent huge pages may back (kChunkMayBeHuge) is purged in
// whole 2 MiB ranges: a range all of whose slots are free goes back to the OS
// in one piece, a range that still holds a span (or the header: the first range
// of every chunk) keeps its free slots resident and dirty -- purging them would
// split the huge page under them while the rest of it stays resident, and
// khugepaged would fill them in again.  Returns the dirty slots left.
LCA_CORE_TEXT std::size_t purge_huge_ranges(SpanChunk* sc) {
  constexpr unsigned kSlotsPerRange = kHugePage2M / kSpanSize;
  static_assert(kSpansPerChunk % kSlotsPerRange == 0);
  std::uint64_t dirty = sc->dirty_slots & sc->free_slots;
  std::size_t purged = 0, kept = 0, kept_slots = 0;
  for (unsigned first = 0; first < kSpansPerChunk; first += kSlotsPerRange) {
    std::uint64_t range = (~std::uint64_t{0} >> (64 - kSlotsPerRange)) << first;
    if (!(dirty & range)) continue;
    if ((sc->free_slots & range) == range) {
      os_purge(reinterpret_cast<char*>(sc) + (std::size_t{first} << kSpanShift), kHugePage2M);
      dirty &= ~range;
      ++purged;
    } else {
      ++kept;
      kept_slots += static_cast<std::size_t>(bit_count(dirty & range));
    }
  }
  sc->dirty_slots = dirty;
  huge_count_purge(purged, kept, kept_slots << kSpanShift);
  return kept_slots;
}

}  // namespace

// Purges one span chunk's dirty free slots; returns how many stay dirty (a
// chunk that may be on huge pages gives back whole free 2 MiB ranges only).
LCA_CORE_TEXT std::size_t purge_chunk_dirty(ChunkHeader* ch) {
  SpanChunk* sc = span_chunk_of(ch);
  if (ch->flags & kChunkMayBeHuge) return purge_huge_ranges(sc);
  std::uint64_t dirty = sc->dirty_slots & sc->free_slots;
  while (dirty) {
    unsigned first = static_cast<unsigned>(__builtin_ctzll(dirty));
    unsigned last = first;
    while (last + 1 < kSpansPerChunk && (dirty >> (last + 1)) & 1) ++last;
    os_purge(reinterpret_cast<char*>(sc) + (std::size_t{first} << kSpanShift),
             std::size_t{last - first + 1} << kSpanShift);
    for (unsigned i = first; i <= last; ++i) dirty &= ~(std::uint64_t{1} << i);
  }
  sc->dirty_slots = 0;
  return 0;
}

// Shared span slots (domain lock held).
LCA_CORE_TEXT void push_shared_slot(Domain* d, Span* s, bool purged) {
  s->zeroed = purged;
  s->next = d->shared_slots;
  d->shared_slots = s;
  d->shared_slot_count.store(d->shared_slot_count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

// Trim, and a heap's chunks made orphan chunks (domain lock held): the slots of
// orphan chunks go back to them (their chunks may be released), the others stay
// for the next new_span, purged first when `purge`.
void purge_shared_slots(Domain* d, bool purge) {
  Span* list = d->shared_slots;
  d->shared_slots = nullptr;
  d->shared_slot_count.store(0, std::memory_order_relaxed);
  while (Span* s = list) {
    list = s->next;
    SpanChunk* sc = span_chunk_of(chunk_base(s));
    bool purged = s->zeroed;
    if (!__atomic_load_n(&sc->header.heap, __ATOMIC_RELAXED)) {
      s->next = nullptr;
      release_orphan_slot(d, sc, s, purged);
      continue;
    }
    if (purge && !purged) {
      os_purge(span_base(s), kSpanSize);
      purged = true;
    }
    push_shared_slot(d, s, purged);
  }
}

namespace {

LCA_CORE_TEXT bool reclaim_shared_slots(Heap* h);

LCA_CORE_TEXT void purge_dirty_slots(Heap* h) {
  // h's shared span slots are among its empty ones (reclaim_shared_slots).
  if (h->domain->shared_slot_count.load(std::memory_order_relaxed)) reclaim_shared_slots(h);
  std::size_t left = 0;
  for (ChunkHeader* ch = h->span_chunks_avail.head; ch; ch = ch->next) left += purge_chunk_dirty(ch);
  h->dirty_slots = left;
}

// A span of class c for h in a free slot of sc, a dirty (resident) one if any;
// taking a dirty slot takes one from *dirty, the count of such slots it was in
// (the heap's, or the domain's for an orphan chunk, whose lock is then held).
LCA_CORE_TEXT Span* carve_slot(SpanChunk* sc, Heap* h, unsigned c, std::size_t* dirty, bool clean_first = false) {
  std::uint64_t reuse = sc->free_slots & (clean_first ? ~sc->dirty_slots : sc->dirty_slots);
  unsigned slot = static_cast<unsigned>(__builtin_ctzll(reuse ? reuse : sc->free_slots));
  std::uint64_t bit = std::uint64_t{1} << slot;
  bool zeroed = !(sc->dirty_slots & bit);  // never used since mapped, or purged
  if (!zeroed && *dirty) --*dirty;
  sc->dirty_slots &= ~bit;
  sc->free_slots &= ~bit;
  ++sc->active_spans;
  Span* s = &sc->spans[slot];
  span_init(s, sc, slot, c, h, zeroed);
  return s;
}

// Shared span slots (Domain::shared_slots): in the process domain's thread
// heaps, not node-local ones (a slot of another node's chunk), nor in Valgrind
// or ASan mode (on_valgrind(): their quarantines own the freed blocks' state).
LCA_CORE_TEXT bool slot_sharing(const Heap* h) { return h->domain->per_thread && h->node < 0 && !on_valgrind(); }

// retire_span of a dirty slot of h's own chunk, when h keeps kPrivateDirtySlots
// already: the slot goes to the domain's stack, still counted active in its
// chunk, unless the stack holds kMaxSharedSlots.
LCA_CORE_TEXT bool share_slot(Heap* h, Span* s) {
  Domain* d = h->domain;
  if (d->shared_slot_count.load(std::memory_order_relaxed) >= kMaxSharedSlots) return false;
  DomainLock lock(d);
  if (d->shared_slot_count.load(std::memory_order_relaxed) >= kMaxSharedSlots) return false;
  push_shared_slot(d, s, false);
  return true;
}

// new_span: a slot from the domain's stack (another heap's chunk, an orphan
// chunk or h's own), or nullptr.
LCA_CORE_TEXT Span* take_shared_slot(Heap* h, unsigned c) {
  Domain* d = h->domain;
  Span* s;
  {
    DomainLock lock(d);
    s = d->shared_slots;
    if (!s) return nullptr;
    d->shared_slots = s->next;
    d->shared_slot_count.store(d->shared_slot_count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  }
  SpanChunk* sc = span_chunk_of(chunk_base(s));
  span_init(s, sc, static_cast<unsigned>(s - sc->spans), c, h, s->zeroed);
  return s;
}

// The shared slots of h's own chunks back to them (free, dirty unless purged);
// returns whether any came back.
LCA_CORE_TEXT bool reclaim_shared_slots(Heap* h) {
  Domain* d = h->domain;
  bool any = false;
  DomainLock lock(d);
  for (Span** link = &d->shared_slots; Span* s = *link;) {
    SpanChunk* sc = span_chunk_of(chunk_base(s));
    if (sc->header.heap != h) {
      link = &s->next;
      continue;
    }
    *link = s->next;
    s->next = nullptr;
    d->shared_slot_count.store(d->shared_slot_count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    std::uint64_t bit = std::uint64_t{1} << static_cast<unsigned>(s - sc->spans);
    if (!sc->free_slots) {
      h->span_chunks_full.remove(&sc->header);
      h->span_chunks_avail.push(&sc->header);
    }
    sc->free_slots |= bit;
    if (!s->zeroed) {
      sc->dirty_slots |= bit;
      ++h->dirty_slots;
    }
    --sc->active_spans;
    any = true;
  }
  return any;
}

// Span reclaim: a span of h in a free slot of an orphan chunk (a dirty one
// only when dirty_only), or nullptr.  The chunk stays the domain's.
Span* new_span_in_orphan_chunk(Heap* h, unsigned c, bool dirty_only) {
  Domain* d = h->domain;
  if (!d->orphan_chunk_count.load(std::memory_order_relaxed)) return nullptr;
  DomainLock lock(d);
  // A chunk that gets a slot back moves to the front (release_orphan_slot):
  // the free slots, dirty ones first, are near the head.
  SpanChunk* clean = nullptr;
  unsigned n = 0;
  for (ChunkHeader* ch = d->orphan_chunks.head; ch && n < kOrphanChunkProbe; ch = ch->next, ++n) {
    SpanChunk* sc = span_chunk_of(ch);
    if (sc->free_slots & sc->dirty_slots) return carve_slot(sc, h, c, &d->orphan_dirty_slots);
    if (!clean && sc->free_slots) clean = sc;
  }
  return clean && !dirty_only ? carve_slot(clean, h, c, &d->orphan_dirty_slots) : nullptr;
}

// A class's first span on a clean slot (never used since mapped, or purged) of
// the heap's chunks; a heap of one span chunk without one acquires a second.
// nullptr (new_span's usual order then) when none is found: a heap of no span
// chunk of its own (a new or adopted one: the free slots of orphan chunks come
// first) or of several (a big heap: its resident slots come first, and adopted
// heaps would each map one more chunk -- ASan mode's short-lived-threads test
// went from 125 to 333 MiB mapped).  (docs/design.md, "Small heaps' peak RSS".)
LCA_CORE_TEXT Span* new_first_span(Heap* h, unsigned c) {
  ChunkHeader* ch = h->span_chunks_avail.head;
  for (unsigned n = 0; ch && n < kCleanSlotProbe; ch = ch->next, ++n)
    if (span_chunk_of(ch)->free_slots & ~span_chunk_of(ch)->dirty_slots) break;
  if (!ch || !(span_chunk_of(ch)->free_slots & ~span_chunk_of(ch)->dirty_slots)) {
    if (h->span_chunks_avail.count + h->span_chunks_full.count != 1) return nullptr;
    ch = acquire_chunk(h->domain, ChunkKind::spans, h);
    if (!ch) return nullptr;
    h->span_chunks_avail.push(ch);
  }
  SpanChunk* sc = span_chunk_of(ch);
  Span* s = carve_slot(sc, h, c, &h->dirty_slots, true);
  if (!sc->free_slots) {
    h->span_chunks_avail.remove(ch);
    h->span_chunks_full.push(ch);
  }
  return s;
}

LCA_CORE_TEXT Span* new_span(Heap* h, unsigned c) {
  // A class of small objects gets its first span -- for most classes its only
  // one -- on a clean slot: on a resident one left by a bigger class it would
  // keep up to 64 KiB resident for the few pages it carves, pages that class
  // needs again at its next peak.
  if (class_to_size(c) <= kCleanFirstSpanMax && queue_empty(h, c))
    if (Span* s = new_first_span(h, c)) return s;
  ChunkHeader* ch = h->span_chunks_avail.head;
  // Resident free slots first: the heap's own, then an orphan chunk's; then
  // untouched ones, the heap's own, an orphan chunk's, a chunk acquired.
  if (!ch || !(span_chunk_of(ch)->free_slots & span_chunk_of(ch)->dirty_slots)) {
    if (h->domain->shared_slot_count.load(std::memory_order_relaxed) && slot_sharing(h))
      if (Span* s = take_shared_slot(h, c)) return s;
    if (Span* s = new_span_in_orphan_chunk(h, c, ch != nullptr)) return s;
  }
  if (!ch) {
    purge_span_pages_before_chunk(h);
    ch = acquire_chunk(h->domain, ChunkKind::spans, h);
    if (!ch) return nullptr;
    h->span_chunks_avail.push(ch);
  }
  SpanChunk* sc = span_chunk_of(ch);
  Span* s = carve_slot(sc, h, c, &h->dirty_slots);
  if (!sc->free_slots) {
    h->span_chunks_avail.remove(ch);
    h->span_chunks_full.push(ch);
  }
  return s;
}

// Releases the span chunks that hold no active span.
LCA_CORE_TEXT void release_empty_span_chunks(Heap* h) {
  for (ChunkHeader* ch = h->span_chunks_avail.head; ch;) {
    ChunkHeader* next = ch->next;
    SpanChunk* sc = span_chunk_of(ch);
    if (sc->active_spans == 0) {
      std::size_t dirty = static_cast<std::size_t>(bit_count(sc->dirty_slots & sc->free_slots));
      h->dirty_slots = h->dirty_slots > dirty ? h->dirty_slots - dirty : 0;
      h->span_chunks_avail.remove(ch);
      release_chunk(h->domain, ch);
    }
    ch = next;
  }
}

LCA_CORE_TEXT void retire_span(Heap* h, Span* s) {
  queue_remove(h, s->size_class, s);
  // A span with purged pages leaves its slot clean, purged whole: as a dirty
  // slot it would be reused with no carve limit over pages not resident.  (Not
  // only the pages not yet purged: an object that starts on a page brought
  // back may reach into a purged one, and its user's bytes are there.)
  bool clean = s->flags & kSpanPurged;
  if (clean) os_purge(span_base(s), kSpanSize);
  span_set_flags(s, kSpanInactive);
  auto* sc = reinterpret_cast<SpanChunk*>(reinterpret_cast<std::uintptr_t>(s) & ~(kChunkSize - 1));
  // A span taken from the pool, carved in an orphan chunk or taken from the
  // shared slots: the chunk is the domain's (its heap is nullptr) or another
  // heap's, whose slot goes back to the shared slots (release_orphan_slot).
  if (__atomic_load_n(&sc->header.heap, __ATOMIC_RELAXED) != h) return release_orphan_slot(h->domain, sc, s, clean);
  // Beyond kPrivateDirtySlots of its own, h gives the slot to the other heaps.
  if (!clean && h->dirty_slots >= kPrivateDirtySlots && slot_sharing(h) && share_slot(h, s)) return;
  unsigned slot = static_cast<unsigned>(s - sc->spans);
  std::uint64_t bit = std::uint64_t{1} << slot;
  if (!sc->free_slots) {
    h->span_chunks_full.remove(&sc->header);
    h->span_chunks_avail.push(&sc->header);
  }
  sc->free_slots |= bit;
  if (!clean) {
    sc->dirty_slots |= bit;
    ++h->dirty_slots;
  }
  --sc->active_spans;
  if (sc->active_spans == 0 && h->span_chunks_avail.count > 1) {
    std::size_t dirty = static_cast<std::size_t>(bit_count(sc->dirty_slots & sc->free_slots));
    h->dirty_slots = h->dirty_slots > dirty ? h->dirty_slots - dirty : 0;
    h->span_chunks_avail.remove(&sc->header);
    release_chunk(h->domain, &sc->header);
  } else if (h->dirty_slots > 2 * kMaxDirtySlots && decay_due(&h->last_purge_ns)) {
    purge_dirty_slots(h);
  }
}

}  // namespace

LCA_CORE_TEXT void collect_span(Heap* h, Span* s) {
  // The remote frees were counted by the freeing heaps, the extra slots of
  // blocks grown in place included (count_foreign_free).
  if (span_live_change_uncounted(h, s, [&] { return span_collect_remote(s); })) heap_span_purge_unquiet(h);
}

namespace {

// --- arena ------------------------------------------------------------------
LCA_CORE_TEXT void drain_arena_remote(Heap* h) {
  FreeObject* list = h->arena.remote_free.exchange(nullptr, std::memory_order_acquire);
  while (list) {
    FreeObject* next = list->next;
    // The freeing thread cleared the allocated bit and caught double frees already.
    arena_free_owned(h, arena_chunk_of(registry_lookup(list)), list);
    list = next;
  }
}

}  // namespace

// `room`: see arena_alloc (a block realloc moved, placed with room to grow).
LCA_CORE_TEXT void* alloc_arena(Heap* h, std::size_t size, std::size_t alignment, std::size_t room) {
  if (h->arena.remote_free.load(std::memory_order_relaxed)) drain_arena_remote(h);
  void* p = arena_alloc(&h->arena, size, alignment, room);
  if (!p && h->medium.bytes) {
    // The blocks the medium cache holds may merge into room enough: a chunk
    // mapped for want of them would hold them for good.
    medium_cache_flush(h);
    p = arena_alloc(&h->arena, size, alignment, room);
  }
  if (!p) {
    // Empty span slots cannot hold arena blocks: growing the arena while more
    // than kMaxDirtySlots of them stay resident would keep both (a program whose
    // sizes move from the slab classes to the arena's; docs/design.md, "Workload
    // matrix").  The decay's once-a-second rule is for memory that may be
    // reused; this memory would not be, by this request.
    // h's shared span slots come back first: a chunk they alone kept may go
    // to the arena (release_empty_span_chunks).
    if (h->domain->shared_slot_count.load(std::memory_order_relaxed) && reclaim_shared_slots(h))
      release_empty_span_chunks(h);
    if (h->dirty_slots > kMaxDirtySlots) purge_dirty_slots(h);
    // Likewise the free pages of partly used spans.
    purge_span_pages_before_chunk(h);
    ChunkHeader* ch = acquire_chunk(h->domain, ChunkKind::arena, h);
    if (!ch) return nullptr;
    arena_add_chunk(&h->arena, arena_chunk_of(ch));
    p = arena_alloc(&h->arena, size, alignment, room);
    if (!p) {
      errno = ENOMEM;
      return nullptr;
    }
  }
  h->counters.arena_allocs.add(1);
  h->counters.extra_bytes_allocated.add(arena_usable_size(p));
  return p;
}

namespace {

// Smallest size class >= the request whose objects are all aligned to alignment.
LCA_CORE_TEXT int aligned_class(std::size_t size, std::size_t alignment) {
  for (unsigned c = size_to_class(size); c < kNumClasses; ++c)
    if ((class_to_size(c) & (alignment - 1)) == 0) return static_cast<int>(c);
  return -1;
}

}  // namespace

// Collects everything a heap can give back: remote frees, empty spans, empty
// chunks.  Used at thread exit, by sweeps and by trim (which also purges).
// heap_collect_all without the purge of dirty span slots.
LCA_CORE_TEXT void heap_collect_empty(Heap* h) {
  for (unsigned c = 0; c < kNumClasses; ++c) {
    Span* s = queue_empty(h, c) ? nullptr : h->head[c];
    while (s) {
      Span* next = s->next;
      collect_span(h, s);
      if (span_used(s) == 0) retire_span(h, s);
      s = next;
    }
  }
  medium_cache_flush(h);
  drain_arena_remote(h);
  for (ChunkHeader* ch = h->arena.chunks.head; ch;) {
    ChunkHeader* next = ch->next;
    ArenaChunk* ac = arena_chunk_of(ch);
    if (arena_chunk_is_empty(ac)) {
      arena_remove_chunk(&h->arena, ac);
      release_chunk(h->domain, ch);
    }
    ch = next;
  }
  release_empty_span_chunks(h);
}

LCA_CORE_TEXT void heap_collect_all(Heap* h, bool purge) {
  heap_collect_empty(h);
  if (purge || h->dirty_slots > kMaxDirtySlots) purge_dirty_slots(h);
}

namespace {

void sweep_abandoned(Domain* d) {
  // Rotate through at most kAbandonedSweep heaps so a sweep stays bounded.
  for (unsigned n = 0; n < kAbandonedSweep && d->abandoned; ++n) {
    Heap* h = d->abandoned;
    heap_collect_all(h, false);
    if (!h->next_abandoned) break;
    d->abandoned = h->next_abandoned;
    Heap* last = d->abandoned;
    while (last->next_abandoned) last = last->next_abandoned;
    last->next_abandoned = h;
    h->next_abandoned = nullptr;
  }
}

LCA_CORE_TEXT void heap_init(Heap* h, Domain* d) {
  for (unsigned c = 0; c < kNumClasses; ++c) {
    h->head[c] = &g_empty_span;
    h->tail[c] = nullptr;
  }
  h->domain = d;
}

}  // namespace

LCA_CORE_TEXT Heap* heap_create_locked(Domain* d) {
  void* mem = os_map(align_up(sizeof(Heap), os_page_size()));
  if (!mem) return nullptr;
  Heap* h = new (mem) Heap{};
  heap_init(h, d);
  h->next_in_domain = d->heaps;
  d->heaps = h;
  return h;
}

namespace {

void link_domain(Domain* d) {
  lca_mutex_lock(&g_domains_lock);
  d->prev = &g_process_domain;
  d->next = g_process_domain.next;
  if (d->next) d->next->prev = d;
  g_process_domain.next = d;
  lca_mutex_unlock(&g_domains_lock);
}

// Off the list, for domain_destroy -- not while a fork's prepare handler waits
// for d's lock with the list's lock released (d->fork_pinned: d would be
// unmapped under it; the wait is short, as no other thread may use a heap that
// is being destroyed), nor while a fork that has set d's `forking` word is under
// way (the parent's handler clears the words of the domains on the list only),
// unless this thread holds another private domain's lock: that fork then waits
// for this thread (domain_lock_wait_fork), which destroys d before it.
void unlink_domain(Domain* d) {
  for (;;) {
    lca_mutex_lock(&g_domains_lock);
    if (!d->fork_pinned) {
      if (!tls_private_domain_locks) fork_wait(d->forking, &g_domains_lock, &g_domains_fork_gate);
      if (!d->fork_pinned) break;
    }
    lca_mutex_unlock(&g_domains_lock);
    sched_yield();
  }
  d->prev->next = d->next;
  if (d->next) d->next->prev = d->prev;
  lca_mutex_unlock(&g_domains_lock);
}

// A free of a block another heap owns, counted by the freeing heap, all of its
// bytes: for a small block, its class's slot and `bytes` beyond it (the slots of
// a block that grew in place, which its span's owner collects later, perhaps
// never: statistics that waited for the collection were off by them meanwhile).
void count_foreign_free(Domain* d, unsigned size_class, bool small, std::size_t bytes, std::size_t slot = 0) {
  Heap* me = thread_heap_if_any();
  if (me && me->domain == d) {
    if (small) {
      me->counters.class_frees[size_class].add(1);
      if (bytes > slot) me->counters.extra_bytes_freed.add(bytes - slot);
    } else {
      me->counters.arena_frees.add(1);
      me->counters.extra_bytes_freed.add(bytes);
    }
  } else {
    d->orphan_frees.fetch_add(1, std::memory_order_relaxed);
    d->orphan_free_bytes.fetch_add(bytes, std::memory_order_relaxed);
  }
}

}  // namespace

// --- public entry points ------------------------------------------------------

Domain* domain_create() {
  free_guard_init();
  vg_init();
  VgSerial serial;
  std::size_t size = align_up(sizeof(Domain) + sizeof(Heap) + 64, os_page_size());
  void* mem = os_map(size);
  if (!mem) return nullptr;
  Domain* d = new (mem) Domain();
  init_recursive(&d->lock);
  auto* h = new (static_cast<char*>(mem) + align_up(sizeof(Domain), 64)) Heap{};
  heap_init(h, d);
  h->next_in_domain = nullptr;
  d->heaps = h;
  d->single = h;
  link_domain(d);
  vg_domain_created(d);
  return d;
}

void domain_set_placement(Domain* d, NodePlacement where) {
  DomainLock lock(d);
  d->placement = where;  // read by domain_alloc_large outside the lock: set before any allocation
}

void domain_for_each_range(Domain* d, void (*fn)(void* ctx, const void* addr, std::size_t len), void* ctx) {
  {
    DomainLock lock(d);
    for (Heap* h = d->heaps; h; h = h->next_in_domain) {
      const ChunkList* lists[] = {&h->span_chunks_avail, &h->span_chunks_full, &h->arena.chunks};
      for (const ChunkList* l : lists)
        for (ChunkHeader* c = l->head; c; c = c->next) fn(ctx, c, kChunkSize);
    }
    for (ChunkHeader* c = d->orphan_chunks.head; c; c = c->next) fn(ctx, c, kChunkSize);
    for (ChunkHeader* c = d->free_chunks.head; c; c = c->next) fn(ctx, c, kChunkSize);
  }
  large_for_each_block(d, fn, ctx);
}

void domain_destroy(Domain* d) {
  VgSerial serial;
  vg_domain_destroying(d);
  unlink_domain(d);
#if CALLOC_DEFRAG
  defrag_domain_destroyed(d);
#endif
  {
    DomainLock lock(d);
    Heap* h = d->single;
    ChunkList* lists[] = {&h->span_chunks_avail, &h->span_chunks_full, &h->arena.chunks};
    for (ChunkList* l : lists) {
      while (ChunkHeader* c = l->pop()) {
        vg_chunk_removed(d, c);  // frees, for memcheck, the blocks still in it
        chunk_unmap(c);
      }
    }
    while (ChunkHeader* c = d->free_chunks.pop()) chunk_unmap(c);
    large_release_domain(d, &d->large);
  }
  vg_domain_destroyed(d);
  pthread_mutex_destroy(&d->lock);
  os_unmap(d, align_up(sizeof(Domain) + sizeof(Heap) + 64, os_page_size()));
}

namespace {
// Span reclaim: a span of class c from the domain's pool for h's refill, with
// span_refill_min objects to offer, or nullptr.  A pooled span with fewer is
// h's from then on too, at the back of its queue, gathering frees (at most
// kOrphanProbe of them per refill).  The oldest first: it has had the longest
// to get its blocks back.  Under the pool's lock only the unlinks (and the
// pool's trim): whether a span has enough is read from its count of remote
// frees (which only grows), and h collects them once the lock is released.
Span* take_orphan_span(Heap* h, unsigned c) {
  Domain* d = h->domain;
  if (!d->orphan_pools || h->node >= 0) return nullptr;
  // The domain's count first: a program whose threads never exited has no pooled
  // span, and the pools (6.8 KiB, two pages of .lbss) stay untouched in it.
  if (!d->orphan_spans.load(std::memory_order_relaxed)) return nullptr;
  OrphanPool* p = &d->orphan_pools->pool[c];
  if (!p->head.load(std::memory_order_relaxed)) return nullptr;  // no lock for an empty pool
  Span* doomed = nullptr;
  Span* taken = nullptr;  // the spans with too few objects, oldest last
  Span* found = nullptr;
  {
    PoolLock lock(d, c);
    orphan_trim_locked(d, p, &doomed);
    for (unsigned n = 0; n < kOrphanProbe; ++n) {
      Span* s = p->head.load(std::memory_order_relaxed);
      if (!s) break;
      orphan_unlink(d, p, nullptr, s);
      span_set_owner(s, h);
      std::uint32_t pending = remote_word_count(s->remote_free.load(std::memory_order_relaxed));
      if (span_free_objects(s) + pending >= span_refill_min(s)) {
        found = s;
        break;
      }
      s->next = taken;
      taken = s;
    }
  }
  orphan_retire_doomed(d, doomed);
  Span* back = nullptr;  // in the order taken
  while (Span* s = taken) {
    taken = s->next;
    s->next = back;
    back = s;
  }
  while (Span* s = back) {
    back = s->next;
    s->next = nullptr;
    collect_span(h, s);
    span_set_flags(s, s->flags);  // fast_heap: h
    queue_push_back(h, c, s);
  }
  if (found) {
    collect_span(h, found);
    span_set_flags(found, found->flags);
  }
  return found;
}

std::uint32_t span_recarve_counted(Heap* h, Span* s) {
  std::uint32_t n = span_recarve(s);
  h->counters.span_objects_recarved.add(n);
  return n;
}

}  // namespace

LCA_CORE_TEXT std::size_t heap_purge_span_pages(Heap* h, unsigned min_pages, std::size_t min_total, bool* quiet) {
  // Not in Valgrind or ASan mode (their quarantines own the freed blocks'
  // state), nor in private domains (the defragmenter tells free objects from
  // live ones by their guard words, which read 0 on a purged page).
  if (on_valgrind() || !h->domain->per_thread) return 0;
  // Whether no span is a candidate and every span behind a head is exhausted
  // (Heap::span_purge_quiet): known only after a pass over every span.
  bool calm = true;
  auto look = [&](unsigned c, const Span* s) {
    if (s != h->head[c] && !(s->flags & kSpanExhausted)) calm = false;
  };
  if (min_total) {
    std::size_t bound = 0;
    for (unsigned c = 0; c < kNumClasses && bound < min_total; ++c)
      for (Span* s = queue_empty(h, c) ? nullptr : h->head[c]; s; s = s->next) {
        bound += span_purge_bound(s, min_pages);
        look(c, s);
      }
    if (bound < min_total) {
      if (quiet) *quiet = calm && bound == 0;
      return 0;
    }
  }
  std::size_t total = 0;
  for (unsigned c = 0; c < kNumClasses; ++c)
    for (Span* s = queue_empty(h, c) ? nullptr : h->head[c]; s; s = s->next) {
      total += span_purge_free_pages(s, min_pages);
      look(c, s);
    }
  h->counters.span_pages_purged.add(total);
  if (quiet) *quiet = calm && total == 0;
  return total;
}

// Collects the remote frees of up to kQueueSweep spans from the tail of class c's
// queue, where the spans the allocator left behind wait.  Other threads free
// into them, but only the owner can take those objects back: without this a
// span left behind while its head kept getting remote frees held every object
// it got back (producer-consumer: 6 207 of 6 247 "used" 16-byte objects sat on
// such lists), and new spans were carved instead.  A span that is then empty
// is retired; one with free objects (span_refill_min) moves behind the head.
LCA_CORE_TEXT void sweep_class_tail(Heap* h, unsigned c) {
  Span* s = h->tail[c];
  for (unsigned n = 0; s && s != h->head[c] && n < kQueueSweep; ++n) {
    Span* prev = s->prev;
    if (span_has_remote(s)) {
      collect_span(h, s);
      if (span_used(s) == 0) {
        retire_span(h, s);
      } else if (s->flags & kSpanExhausted) {
        span_set_flags(s, s->flags & static_cast<std::uint8_t>(~kSpanExhausted));
        if (span_free_objects(s) >= span_refill_min(s)) queue_insert_after_head(h, c, s);
      }
    }
    s = prev;
  }
}

namespace {

// Borrowing (docs/design.md, "Webserver's heap peak"): a class of
// kBorrowMinSize or more about to touch new memory -- the next page of its span
// past the carve limit, or a new span when it has one already (a class with
// no span borrowing each time pushed its neighbours into making spans of their
// own: a mixed 16 B-8 MiB churn peaked 9 % higher and took a third round to
// stop making system calls) -- first takes a free object, resident
// already, from the current span of a bigger class at most kBorrowClasses
// above whose size is at most 1.25 x the request's (the bound on usable sizes
// the classes keep; never for a power of two, which gets exactly its size).
// Per-class spans keep the pages of each class's own busiest moment; borrowing
// lets neighbouring classes share their free objects instead.  The object
// stays its span's: its free is a free into that span, malloc_usable_size
// says the bigger size.  At most kBorrowBudget borrows between two of the
// class's own carvings (each borrow is a slow path), so a class that keeps
// needing more grows as before.  Thread heaps only (private heaps keep exact
// classes), and only for requests aligned to 16 (every object is; a bigger
// alignment chose its class for it).
constexpr std::size_t kBorrowMinSize = 512;
constexpr unsigned kBorrowClasses = 8;
constexpr std::uint8_t kBorrowBudget = 8;

LCA_CORE_TEXT void* borrow_above(Heap* h, unsigned c, std::size_t size, std::size_t alignment) {
  if (class_to_size(c) < kBorrowMinSize || alignment > 16 || (size & (size - 1)) == 0 ||
      h->borrowed[c] >= kBorrowBudget || !h->domain->per_thread)
    return nullptr;
  unsigned last = c + kBorrowClasses < kNumClasses ? c + kBorrowClasses : kNumClasses - 1;
  for (unsigned b = c + 1; b <= last && class_to_size(b) <= size + size / 4; ++b) {
    Span* t = h->head[b];
    if (t->free) {  // (the empty span's is null)
      ++h->borrowed[c];
      h->counters.span_borrows.add(1);
      return span_pop(t);
    }
  }
  return nullptr;
}

}  // namespace

LCA_CORE_TEXT void* heap_alloc_small_slow(Heap* h, unsigned c, std::size_t size, std::size_t alignment) {
  h->counters.small_slow_allocs.add(1);
  Span* s = h->head[c];
  // h allocates the class: a head a free adopted is h's like any other now.
  if (s->flags & kSpanAdopted) span_set_flags(s, s->flags & static_cast<std::uint8_t>(~kSpanAdopted));
  // The head's purged pages come back before any new page is carved.
  if (s != &g_empty_span && !s->free && (s->flags & kSpanPurged) && !span_has_remote(s) && span_recarve_counted(h, s))
    if (void* p = span_pop(s)) return p;
  // The head at its carve limit, the span behind it with no resident free
  // objects: on to the next page at once (the common case of a growing class:
  // no sweep, no rotation).
  if (s != &g_empty_span && !s->free && s->bump == s->end && span_can_extend(s) && !span_has_remote(s) &&
      !span_offers_resident(s->next)) {
    if (void* p = borrow_above(h, c, size, alignment)) return p;
    h->borrowed[c] = 0;
    span_extend_carve(s);
    if (void* p = span_pop(s)) return p;
  }
  if (s != &g_empty_span) {
    // The span behind the head is the likely refill: its first free object's
    // line is read by the pop below, after the sweep and the rotation, and
    // is cold by then (freed long before: 27 % of this function's samples on
    // the workload matrix's gameengine were that load).  Fetch it now.
    if (Span* n = s->next)
      if (FreeObject* f = n->free) __builtin_prefetch(f, 1);
    sweep_class_tail(h, c);
    for (unsigned probe = 0;; ++probe) {
      if (span_has_remote(s)) collect_span(h, s);
      // The head gives what it has; a span behind it becomes the head only with
      // kRefillMin objects to offer (span_refill_min), else it waits at the back.
      if (probe == 0 || span_free_objects(s) >= span_refill_min(s)) {
        void* p = span_pop(s);
        if (!p && (s->flags & kSpanPurged) && span_recarve_counted(h, s)) p = span_pop(s);
        // At its carve limit: a new page is touched only when the span behind
        // has no resident free objects to offer (span.h++, "Carve limit").
        if (!p && span_can_extend(s) && (probe != 0 || !span_offers_resident(s->next))) {
          h->borrowed[c] = 0;
          span_extend_carve(s);
          p = span_pop(s);
        }
        if (p) {
          if (s->flags & kSpanExhausted) span_set_flags(s, s->flags & static_cast<std::uint8_t>(~kSpanExhausted));
          if (probe) h->counters.span_refills.add(1);
          return p;
        }
      }
      // A dry span waits for a local free to bring it back (span_after_local_free);
      // one with too few objects to offer gathers more at the back, its frees fast.
      auto flags = static_cast<std::uint8_t>(span_free_objects(s) ? s->flags & ~kSpanExhausted
                                                                  : s->flags | kSpanExhausted);
      if (flags != s->flags) span_set_flags(s, flags);
      if (probe == kQueueProbe || !s->next) break;
      queue_rotate(h, c, s);
      s = h->head[c];
    }
  }
  s = take_orphan_span(h, c);
  if (!s) {
    if (void* p = queue_empty(h, c) ? nullptr : borrow_above(h, c, size, alignment)) return p;
    h->borrowed[c] = 0;
    s = new_span(h, c);
  }
  if (!s) return nullptr;
  h->counters.span_refills.add(1);
  queue_push_front(h, c, s);
  if (!s->free && (s->flags & kSpanPurged)) span_recarve_counted(h, s);  // (a pooled span)
  return span_pop_extend(s);  // (a pooled span may have room only past its carve limit)
}

LCA_CORE_TEXT void* heap_alloc(Heap* h, std::size_t size, std::size_t alignment, bool grown) {
  if (size <= kSlabMax && !grown) {
    int c = alignment <= 16 ? static_cast<int>(size_to_class(size)) : aligned_class(size, alignment);
    if (c >= 0) {
      // As in fast_malloc: no carving while remote frees wait (the slow path
      // collects them first).
      // A span's allocation is counted by the span (span_pop), a foreign
      // object's here.
      Span* s = h->head[c];
      void* p = s->free ? span_pop(s) : nullptr;
      if (!p && (p = heap_pop_foreign(h, static_cast<unsigned>(c)))) h->counters.class_allocs[c].add(1);
      if (!p && !span_has_remote(s)) p = span_pop(s);
      if (!p) p = heap_alloc_small_slow(h, static_cast<unsigned>(c), size, alignment);
      return p;
    }
  }
  std::size_t arena_limit = grown ? kArenaMaxRequest : kLargeThreshold;
  if (size <= arena_limit && alignment <= kSpanSize) return alloc_arena(h, size, alignment);
  bool zero;
  return domain_alloc_large(h->domain, size, alignment, &zero);
}

namespace {
// The node a large block is bound to: its domain's (a NUMAAllocator node heap),
// or with node-local thread heaps (numa=1) the node of the calling thread, whose
// heap's chunks are bound there too (heap_rehome_if_moved follows the same
// node).  numa=1 off, it costs the load of a flag; --disable-numa, nothing.
LCA_CORE_TEXT NodePlacement large_placement_for(const Domain* d) {
  NodePlacement where = d->placement;
  if (numa_thread_heaps() && where.node < 0 && d->per_thread) where.node = numa_nearest_usable(numa_current_node());
  return where;
}
}  // namespace

LCA_CORE_TEXT void* domain_alloc_large(Domain* d, std::size_t size, std::size_t alignment, bool* fresh_zero) {
  NodePlacement where = large_placement_for(d);
  return with_retry_after_release(d, [&] { return large_alloc(d, &d->large, size, alignment, fresh_zero, where); });
}

LCA_CORE_TEXT void* domain_calloc_large(Domain* d, std::size_t size, std::size_t alignment) {
  bool fresh = false;
  void* p = domain_alloc_large(d, size, alignment, &fresh);
  if (p && !fresh) std::memset(p, 0, size);
  return p;
}

namespace {

LCA_CORE_TEXT void* domain_alloc_raw(Domain* d, std::size_t size, std::size_t alignment) {
  if (d->per_thread) {
    Heap* h = heap_for_thread();
    if (h && h->node >= 0) h = heap_rehome_if_moved(h);
    if (!h) {
      errno = ENOMEM;
      return nullptr;
    }
    void* p = heap_alloc(h, size, alignment, false);
    heap_done_after_exit(h);  // (a heap for one call after the thread's exit handler)
    return p;
  }
  relocating_check(d);
  DomainLock lock(d);
  return heap_alloc(d->single, size, alignment, false);
}
}  // namespace

LCA_CORE_TEXT void* domain_alloc(Domain* d, std::size_t size, std::size_t alignment) {
  vg_init();
  if (!on_valgrind()) return domain_alloc_raw(d, size, alignment);
  VgSerial serial;
  void* p = domain_alloc_raw(d, size + kVgRedzone, alignment);
  if (p) {
    BlockRef r;
    block_lookup(p, &r, "malloc");
    vg_block_allocated(p, size, r.usable, false);
    d->vg.allocs.fetch_add(1, std::memory_order_relaxed);
    d->vg.bytes_allocated.fetch_add(size, std::memory_order_relaxed);
  }
  return p;
}

namespace {
// Valgrind and ASan mode: under the serial lock, the requested size.
__attribute__((noinline)) std::size_t vg_usable_size(const void* p, const char* what) {
  {
    VgSerial serial;
    BlockRef r;
    if (block_lookup(p, &r, what, true)) return vg_block_size(p, r.usable);
  }
  return usable_size_unowned(p, what);  // a module heap's block (which serialises itself), or nobody's
}
}  // namespace

LCA_CORE_TEXT std::size_t block_usable_size(const void* p, const char* what) {
  if (on_valgrind()) return vg_usable_size(p, what);
  BlockRef r;
  if (!block_lookup(p, &r, what, true)) return usable_size_unowned(p, what);  // a module heap's block, or nobody's
  return r.usable;
}

LCA_CORE_TEXT void free_span_local(Heap* h, Span* s, void* p, std::uint32_t i) {
  h->counters.local_slow_frees.add(1);
  std::size_t bytes;
  if (__builtin_expect(s->flags & kSpanMultislot, 0)) {
    // One free (counted from live); the extra slots of an object that grew are not.
    bytes = span_live_change_uncounted(h, s, [&] { return span_push_local(s, p, i); }, 1);
  } else {
    bytes = span_push_local(s, p, i);
  }
  if (__builtin_expect(bytes != s->obj_size, 0)) h->counters.extra_bytes_freed.add(bytes - s->obj_size);
  span_after_local_free(h, s);
}

LCA_CORE_TEXT void span_after_local_free(Heap* h, Span* s) {
  unsigned c = s->size_class;
  if (h->head[c] == s) {
    if (__builtin_expect(s->flags & kSpanAdopted, 0)) {
      // Adopted by a free (adopt_orphan_span): h's own once h allocated from
      // it, else given up as soon as it is empty.
      if (span_use_allocs(s) != 0)
        span_set_flags(s, s->flags & static_cast<std::uint8_t>(~kSpanAdopted));
      else if (span_used(s) == 0)
        return retire_span(h, s);
    }
    if (s->flags & kSpanExhausted) span_set_flags(s, s->flags & static_cast<std::uint8_t>(~kSpanExhausted));
    return;
  }
  heap_span_purge_unquiet(h);  // (a span behind the head got a free object)
  if (span_used(s) == 0) {
    retire_span(h, s);
  } else if (s->flags & kSpanExhausted) {
    // Its frees take the fast path again from now on.  It keeps its place in
    // the queue, gathering more frees until the allocator's rotation reaches it
    // (heap_alloc_small_slow): moved behind the head with its first free, it
    // was the next refill and offered that one object, so a churn of random
    // frees refilled for 3 mallocs in 10 (docs/design.md, "Span queue order").
    span_set_flags(s, s->flags & static_cast<std::uint8_t>(~kSpanExhausted));
  }
}

void report_span_free_error(const Span* s, const void* p, SpanCheck why) {
  if (why == SpanCheck::not_live) report_fatal("Double free", p, "the block is not allocated (freed already)");
  // Any thread's free may land here, while s's owner changes its flags or
  // carves: the unlocked reads of a remote free (span.h++).
  if (!(span_flags_seen_remotely(s) & kSpanInactive) && p < span_bump_seen_remotely(s)) {
    // Inside an object that grew over several slots?
    for (unsigned k = 0, n = span_multislot_count(s); k < n; ++k) {
      Span::Multislot m = span_multislot_at(s, k);
      if (m.first == kNoMultislot) continue;
      const char* first = span_base(s) + static_cast<std::size_t>(m.first) * s->obj_size;
      if (p > first && p < first + static_cast<std::size_t>(m.slots) * s->obj_size)
        report_fatal("Invalid free", p, "pointer into the middle of a block");
    }
  }
  report_fatal("Invalid free", p, "not the start of a block allocated by libcalloc");
}

__attribute__((noinline, cold)) void report_unowned(const void* p, const char* what) {
  bool is_free_op = what[0] == 'f';
  report_fatal(is_free_op ? "Invalid free" : "Invalid pointer", p,
               is_free_op ? "not a block allocated by libcalloc" : what);
}

LCA_CORE_TEXT bool block_lookup(const void* p, BlockRef* out, const char* what, bool route) {
  // what (a literal, in .rodata) is read only to report an error: reading it
  // here maps libcalloc's .rodata in every program (placement.h++).
  auto is_free_op = [what] { return what[0] == 'f'; };
  ChunkHeader* ch = registry_lookup(p);
  if (ch && ch->kind == ChunkKind::spans) {
    Span* s = span_of(span_chunk_of(ch), p);
    std::uint32_t i;
    SpanCheck why = span_check(s, p, &i);
    if (why != SpanCheck::ok) {
      if (is_free_op()) report_span_free_error(s, p, why);
      report_fatal(why == SpanCheck::not_live ? "Use after free" : "Invalid pointer", p, what);
    }
    *out = BlockRef{BlockRef::Kind::span, ch, s, i, span_usable_size(s, i), ch->domain};
    return true;
  }
  if (ch && ch->kind == ChunkKind::arena) {
    ArenaCheck why = arena_check(arena_chunk_of(ch), p);
    if (why == ArenaCheck::already_free)
      report_fatal(is_free_op() ? "Double free" : "Use after free", p,
                   is_free_op() ? "the block is not allocated (freed already)" : what);
    if (why != ArenaCheck::ok)
      report_fatal(is_free_op() ? "Invalid free" : "Invalid pointer", p,
                   is_free_op() ? "not the start of a block allocated by libcalloc" : what);
    *out = BlockRef{BlockRef::Kind::arena, ch, nullptr, 0, arena_usable_size(p), ch->domain};
    return true;
  }
  LargeInfo info;
  if (!ch && large_lookup(p, &info)) {
    *out = BlockRef{BlockRef::Kind::large, nullptr, nullptr, 0, info.usable, info.domain};
    return true;
  }
  // Nobody's, or a module heap's block (module.h++): the caller offers it to
  // the module heaps, which report it as below if none owns it either.
  if (route && !ch) return false;
  report_unowned(p, what);
}

LCA_CORE_TEXT void free_slow(void* p) {
  if (on_valgrind()) {
    VgSerial serial;
    return vg_free(p, free_now);
  }
  free_now(p);
}

LCA_CORE_TEXT void free_now(void* p) {
  BlockRef r;
  if (!block_lookup(p, &r, "free", true)) return free_unowned(p);  // a module heap's block, or nobody's
  Domain* d = r.domain;
  if (!d->per_thread) {
    relocating_check(d);
    DomainLock lock(d);
    handle_object_check(d, p, "free");  // a HandleAllocator's handle's object: refused
    Heap* h = d->single;
    switch (r.kind) {
      case BlockRef::Kind::span:
        free_span_local(h, r.span, p, r.index);
        break;
      case BlockRef::Kind::arena:
        h->counters.arena_frees.add(1);
        h->counters.extra_bytes_freed.add(r.usable);
        arena_free_owned(h, arena_chunk_of(r.chunk), p);
        break;
      case BlockRef::Kind::large:
        large_free(&d->large, p);
        break;
    }
    return;
  }
  Heap* me = thread_heap_if_any();
  switch (r.kind) {
    case BlockRef::Kind::span:
      if (span_owner(r.span) == me) {
        free_span_local(me, r.span, p, r.index);
      } else {
        // block_lookup found no guard: not freed already (two threads freeing one
        // block at the same instant is the one double free this cannot see).
        count_foreign_free(d, r.span->size_class, true, r.usable, r.span->obj_size);
        span_push_remote(r.span, p, r.index);
      }
      break;
    case BlockRef::Kind::arena: {
      Heap* owner = r.chunk->heap;
      if (owner == me) {
        me->counters.arena_frees.add(1);
        me->counters.extra_bytes_freed.add(r.usable);
        arena_free_owned(me, arena_chunk_of(r.chunk), p);
      } else {
        if (!arena_clear_live_remote(arena_chunk_of(r.chunk), p))
          report_fatal("Double free", p, "the block is not allocated (freed already)");
        count_foreign_free(d, 0, false, r.usable);
        arena_push_remote(&owner->arena, p);
      }
      break;
    }
    case BlockRef::Kind::large:
      large_free(&d->large, p);
      break;
  }
}

void domain_trim(Domain* d) {
  // A relocation callback may not trim the heap it is told of: the pass's plan
  // names spans and chunks that a trim releases.
  relocating_check(d);
  VgSerial serial;
  if (d->per_thread) {
    if (Heap* h = thread_heap_if_any()) {
      remote_batch_flush_all(h);
      DomainLock lock(d);
      heap_collect_all(h, true);
      heap_purge_span_pages(h, 1, 0);
    }
  } else {
    DomainLock lock(d);
    heap_collect_all(d->single, true);
  }
  {
    // Heaps of exited threads too, all of them (the allocation path's sweeps are
    // bounded, and see only empty spans): blocks that other threads freed after
    // the owner left pin whole spans and arena chunks until then.  Found by the
    // soak (tests/stress/soak.c++): 200-350 MiB stayed mapped after every phase.
    DomainLock lock(d);
    for (Heap* h = d->abandoned; h; h = h->next_abandoned) heap_collect_all(h, true);
    // The pool of orphaned spans and their chunks, likewise.
    sweep_orphans(d, ~std::size_t{0});
    purge_shared_slots(d, true);
    purge_orphan_chunks(d);
  }
  release_cached(d);
}

bool domain_trim_some(Domain* d, bool (*stop)(void*), void* ctx) {
  VgSerial serial;
  Heap* h = d->single;
  {
    DomainLock lock(d);
    // The chunks emptied here are unmapped below, one at a time: not all at
    // once by release_chunk's decay.
    d->last_release_ns = os_now_ns();
    heap_collect_empty(h);
    std::size_t left = 0;
    for (ChunkHeader* ch = h->span_chunks_avail.head; ch; ch = ch->next) {
      const SpanChunk* sc = span_chunk_of(ch);
      std::uint64_t before = sc->dirty_slots & sc->free_slots;
      left += purge_chunk_dirty(ch);
      // Something purged: time to stop?  (h->dirty_slots keeps its count, an
      // overestimate, until a walk gets to the end.)
      if ((sc->dirty_slots & sc->free_slots) != before && ch->next && stop(ctx)) return false;
    }
    h->dirty_slots = left;
  }
  for (;;) {
    ChunkHeader* c;
    bool more;
    {
      DomainLock lock(d);
      c = d->free_chunks.pop();
      more = d->free_chunks.head != nullptr;
    }
    if (!c) break;
    unmap_free_chunk(d, c);
    if (more && stop(ctx)) return false;
  }
  large_trim(&d->large, true);
  return true;
}

DomainStats domain_stats(Domain* d) {
  VgSerial serial;
  DomainStats st{};
  DomainLock lock(d);
  for (Heap* h = d->heaps; h; h = h->next_in_domain) {
    const HeapCounters& k = h->counters;
    // The queues and the folds hold still (tcache.h++).
    lca_mutex_lock(&h->stats_lock);
    for (unsigned c = 0; c < kNumClasses; ++c) {
      std::size_t a = k.class_allocs[c].get(), f = k.class_frees[c].get();
      for (const Span* s = h->head[c]; s != &g_empty_span && s; s = s->next) {
        std::uint64_t u = span_use(s);
        std::uint64_t allocs = u >> kUseCountShift;
        a += allocs;
        f += allocs + s->stat_live - (u & kUseLiveMask);
      }
      st.allocation_count += a;
      st.free_count += f;
      st.total_allocated += a * class_to_size(c);
      st.total_freed += f * class_to_size(c);
    }
    st.allocation_count += k.arena_allocs.get();
    st.free_count += k.arena_frees.get();
    st.total_allocated += k.extra_bytes_allocated.get();
    st.total_freed += k.extra_bytes_freed.get();
    st.realloc_in_place += k.realloc_in_place.get();
    st.realloc_moved += k.realloc_moved.get();
    st.realloc_remapped += k.realloc_remapped.get();
    lca_mutex_unlock(&h->stats_lock);
  }
  st.free_count += d->orphan_frees.load(std::memory_order_relaxed);
  st.total_freed += d->orphan_free_bytes.load(std::memory_order_relaxed);
  LargeCache large = large_counters(&d->large);
  st.allocation_count += large.alloc_count;
  st.free_count += large.free_count;
  st.total_allocated += large.alloc_bytes;
  st.total_freed += large.free_bytes;
  st.large_mappings = large.live_count;
  if (on_valgrind()) {
    // What the user asked for, not the redzones around it (vg.h++).
    st.allocation_count = d->vg.allocs.load(std::memory_order_relaxed);
    st.free_count = d->vg.frees.load(std::memory_order_relaxed);
    st.total_allocated = d->vg.bytes_allocated.load(std::memory_order_relaxed);
    st.total_freed = d->vg.bytes_freed.load(std::memory_order_relaxed);
    st.realloc_in_place = d->vg.in_place.load(std::memory_order_relaxed);
    st.realloc_moved = d->vg.moved.load(std::memory_order_relaxed);
    st.realloc_remapped = d->vg.remapped.load(std::memory_order_relaxed);
  }
  st.os_memory_mapped = d->chunk_bytes.load(std::memory_order_relaxed) + large.mapped_bytes;
  return st;
}

void* domain_alloc_unpooled(Domain* d, std::size_t size, std::size_t alignment) {
  vg_init();
  if (on_valgrind() || !d->per_thread) return domain_alloc(d, size, alignment);
  Heap* h = heap_for_thread();
  if (!h) return nullptr;
  void* p = heap_alloc(h, size, alignment, true);
  heap_done_after_exit(h);
  return p;
}

// --- defragmentation support (defrag.c++) -----------------------------------

void* span_pop_uncounted(Heap* h, Span* s) {
  return span_live_change_uncounted(h, s, [&] {
    void* p = span_pop(s);
    if (p) span_use_add(s, -(std::uint64_t{1} << kUseCountShift));  // live + 1 only
    return p;
  });
}

void span_push_uncounted(Heap* h, Span* s, void* p, std::uint32_t i) {
  span_live_change_uncounted(h, s, [&] { span_push_local(s, p, i); });
}

void span_count_alloc(Heap* h, Span* s) {
  StatsLock lock(h);
  span_use_add(s, std::uint64_t{1} << kUseCountShift);
  --s->stat_live;
}

void heap_queue_to_front(Heap* h, Span* s) {
  unsigned c = s->size_class;
  if (h->head[c] == s) return;
  queue_remove(h, c, s);
  queue_push_front(h, c, s);
  if (s->flags & kSpanExhausted) span_set_flags(s, s->flags & static_cast<std::uint8_t>(~kSpanExhausted));
}

void heap_queue_rotate(Heap* h, unsigned c) {
  Span* s = h->head[c];
  if (s != &g_empty_span && s->next) queue_rotate(h, c, s);
}

#if CALLOC_DEFRAG
constinit thread_local Domain* tls_relocating __attribute__((tls_model("initial-exec"))) = nullptr;

void relocating_reentered(Domain* d) {
  report_fatal("Heap used during its defragmentation", d,
               "a relocation callback allocated, freed or resized a block of, or trimmed, the heap being defragmented "
               "(DefragmentationEngine::defragment forbids it)");
}
#endif

void domain_lock(Domain* d) { domain_lock_taken(d); }
void domain_unlock(Domain* d) { domain_lock_release(d); }

}  // namespace lca
