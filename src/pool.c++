// pool.c++ -- span reclaim: the pools of orphaned spans (tcache.h++,
// OrphanPools; docs/design.md, "Span reclaim").
//
// When a thread of the process domain exits, its heap's span chunks become
// orphan chunks, which no heap owns, and its spans go, class by class, to a
// pool per class (heap_orphan_spans).  A refill takes a pooled span before it
// carves one (take_orphan_span, in tcache.c++), new_span carves in a free slot
// of an orphan chunk before it maps a chunk (tcache.c++ too), and a free of a
// pooled span's block adopts the span (adopt_orphan_span, remote.c++): those
// stay with the paths that inline them.  This file owns the pools and the
// orphan chunks: the pool locks and their fork handlers, the bound on a pool
// (kOrphanKeep), the sweeps that retire pooled spans once empty, and the slot
// bookkeeping of orphan chunks, with the decay of their dirty slots.
//
// A class's pool, and the local state of its pooled spans (collecting their
// remote frees), change only under the pool's lock; its holder takes no other
// lock.  Retiring a pooled span (its slot back to its orphan chunk, under the
// domain lock) therefore happens after the pool lock is released: the span is
// unlinked and marked inactive under it first ("doomed"), so no one else can
// reach it.  docs/design.md, "Span reclaim".
#include "tcache.h++"
#include "heap.h++"
#include "lifecycle.h++"
#include "placement.h++"

#include "os.h++"
#include "sanitizer.h++"

#include <iterator>

namespace lca {

namespace {

// The pool keeps at most kOrphanKeep spans of a class while its oldest is empty,
// and purges a retired span's slot when it carved kOrphanPurgeMin bytes or more.
// server-sim, 3 interleaved runs (peak RSS MiB / CPU ns per op; jemalloc
// 18.7-20.5 / 43-44): no bound 27.9-29.1 / 31.2-32.2; keep 12: 26.2-26.9 /
// 31.8-33.4; keep 8: 22.3-23.8 / 33.7-34.2; keep 6: 21.3-22.7 / 37.0-38.5
// (twice the spans made again, their pages faulted in).  Purging from 8 KiB
// rather than 16: the same server-sim figures (22.2-23.8 MiB, 29-35 ns), and the
// threads suite's burst test ends with 10.5 MiB resident instead of 14.2 (the
// smaller retired spans stayed dirty).  Keep 4 rather than 8 since session 15
// (2026-12-06): at server-sim's peak the pools held 256-440 spans, 7.5-11 MiB
// (5-8 a class), half of them empty once their remote frees were collected;
// 21 interleaved runs, peak RSS / jemalloc's 1.10 x (keep 8), 1.01 (6), 0.94
// (5), 0.92 (4), CPU time 1.0 / 1.05 / 1.10 / 1.19 x keep 8's (the spans made
// again: 2.4 x the page faults).  docs/design.md, "The pool's bound again".
constexpr std::uint32_t kOrphanKeep = 4;
constexpr std::size_t kOrphanPurgeMin = 8 * 1024;

// Appends the chain first..last (n spans linked both ways, last->next
// nullptr) to pool p of domain d (pool lock held).  A pool is linked both ways
// so that a free can take any of its spans (adopt_orphan_span).
void orphan_push_chain(Domain* d, OrphanPool* p, Span* first, Span* last, std::uint32_t n) {
  first->prev = p->tail;
  if (p->tail)
    p->tail->next = first;
  else
    p->head.store(first, std::memory_order_relaxed);
  p->tail = last;
  p->count += n;
  d->orphan_spans.fetch_add(n, std::memory_order_relaxed);
}

// Collects the remote frees of pooled span s (it has no owner: its local state
// changes only under its pool's lock).  True when it is then empty.
bool orphan_collect_empty(Span* s) {
  // (The frees were counted by the freeing heaps, the extra slots of blocks
  // grown in place included: count_foreign_free.)
  if (span_has_remote(s)) span_collect_remote(s);
  return span_used(s) == 0;
}

// Unlinks pooled span s (empty) and marks it inactive, onto *doomed (linked
// through next) for orphan_retire_doomed once the pool lock is released.
void orphan_doom(Domain* d, OrphanPool* p, Span* prev, Span* s, Span** doomed) {
  orphan_unlink(d, p, prev, s);
  span_set_flags(s, kSpanInactive);
  s->next = *doomed;
  *doomed = s;
}

// A retired pooled span whose carved objects reach kOrphanPurgeMin bytes has its
// slot purged: reused dirty by a span of a smaller class, those pages would stay
// resident under it (measured on server-sim: peak RSS 43-46 MiB against 28-30
// without retiring at all).
bool orphan_purges(const Span* s) {
  const SpanChunk* sc = span_chunk_of(chunk_base(s));
  return static_cast<std::size_t>(s->bump - span_base(s)) >= kOrphanPurgeMin &&
         !(sc->header.flags & kChunkMayBeHuge);  // (a huge page is purged whole or not at all)
}

}  // namespace

// Span reclaim: purges the free slots of the orphan chunks (domain lock held).
void purge_orphan_chunks(Domain* d) {
  d->orphan_dirty_slots = 0;
  for (ChunkHeader* ch = d->orphan_chunks.head; ch; ch = ch->next) d->orphan_dirty_slots += purge_chunk_dirty(ch);
}

// Span reclaim: gives the slot of s (inactive, of an orphan chunk) back to its
// chunk -- dirty unless `purged` (its 64 KiB were purged: zero pages) -- and the
// chunk to the domain's free chunks once it holds no span.  The dirty free
// slots of orphan chunks are purged as a heap's are (kMaxDirtySlots, kDecayNs).
LCA_CORE_TEXT void release_orphan_slot(Domain* d, SpanChunk* sc, Span* s, bool purged) {
  std::uint64_t bit = std::uint64_t{1} << static_cast<unsigned>(s - sc->spans);
  DomainLock lock(d);
  // A slot of a running heap's chunk (taken from the shared slots): back to
  // them, whatever their number (no system call off the decay schedule; the
  // slots beyond kMaxSharedSlots are ones taken from there before).
  if (__atomic_load_n(&sc->header.heap, __ATOMIC_RELAXED)) return push_shared_slot(d, s, purged);
  std::size_t dirty_before = static_cast<std::size_t>(bit_count(sc->dirty_slots & sc->free_slots));
  sc->free_slots |= bit;
  if (purged)
    sc->dirty_slots &= ~bit;
  else
    sc->dirty_slots |= bit;
  d->orphan_chunks.remove(&sc->header);
  if (--sc->active_spans == 0) {
    d->orphan_dirty_slots -= dirty_before < d->orphan_dirty_slots ? dirty_before : d->orphan_dirty_slots;
    d->orphan_chunk_count.store(d->orphan_chunks.count, std::memory_order_relaxed);
    release_chunk(d, &sc->header);
    return;
  }
  d->orphan_chunks.push(&sc->header);  // to the front: new_span looks there first
  if (!purged) ++d->orphan_dirty_slots;
  if (d->orphan_dirty_slots > 2 * kMaxDirtySlots && decay_due(&d->orphan_purge_ns)) purge_orphan_chunks(d);
}

// The pool's bound (pool lock held): beyond kOrphanKeep spans, its oldest go
// while they are empty -- the spans a burst of threads alive at once made, once
// their blocks are freed.
LCA_CORE_TEXT void orphan_trim_locked(Domain* d, OrphanPool* p, Span** doomed) {
  while (p->count > kOrphanKeep) {
    Span* s = p->head.load(std::memory_order_relaxed);
    if (!orphan_collect_empty(s)) break;
    orphan_doom(d, p, nullptr, s, doomed);
  }
}

// Retires the doomed spans (no pool lock held): the purges first, outside the
// domain lock, then their slots go back to their orphan chunks under it.
LCA_CORE_TEXT void orphan_retire_doomed(Domain* d, Span* doomed) {
  if (!doomed) return;
  for (Span* s = doomed; s; s = s->next)
    if (orphan_purges(s)) os_purge(span_base(s), kSpanSize);
  DomainLock lock(d);
  while (Span* s = doomed) {
    doomed = s->next;
    s->next = nullptr;
    release_orphan_slot(d, span_chunk_of(chunk_base(s)), s, orphan_purges(s));
  }
}

// Retires the pooled spans that are empty, up to `limit` of them looked at.
void sweep_orphans(Domain* d, std::size_t limit) {
  if (!d->orphan_pools) return;  // a private domain
  Span* doomed = nullptr;
  for (unsigned c = 0; c < kNumClasses && limit; ++c) {
    OrphanPool* p = &d->orphan_pools->pool[c];
    if (!p->head.load(std::memory_order_relaxed)) continue;
    PoolLock lock(d, c);
    Span* prev = nullptr;
    for (Span* s = p->head.load(std::memory_order_relaxed); s && limit; --limit) {
      Span* next = s->next;
      if (orphan_collect_empty(s))
        orphan_doom(d, p, prev, s, &doomed);
      else
        prev = s;
      s = next;
    }
  }
  orphan_retire_doomed(d, doomed);
}

LCA_CORE_TEXT void heap_orphan_spans(Heap* h) {
  Domain* d = h->domain;
  if (!d->orphan_pools || h->node >= 0) return;  // node-local heaps are adopted whole
  {
    // The chunks first: a span taken from the pool must be in an orphan chunk
    // (its taker retires it into the chunk as an orphan chunk's).
    DomainLock lock(d);
    ChunkList* lists[] = {&h->span_chunks_avail, &h->span_chunks_full};
    for (ChunkList* l : lists) {
      while (ChunkHeader* ch = l->pop()) {
        const SpanChunk* sc = span_chunk_of(ch);
        if (sc->active_spans == 0) {
          release_chunk(d, ch);
          continue;
        }
        __atomic_store_n(&ch->heap, nullptr, __ATOMIC_RELAXED);  // read unlocked by retire_span
        d->orphan_dirty_slots += static_cast<std::size_t>(bit_count(sc->dirty_slots & sc->free_slots));
        d->orphan_chunks.push(ch);
      }
    }
    d->orphan_chunk_count.store(d->orphan_chunks.count, std::memory_order_relaxed);
    h->dirty_slots = 0;
    // The shared slots of h's chunks go back to them, now orphan chunks.
    if (d->shared_slots) purge_shared_slots(d, false);
  }
  // Then each class's queue, whole, to its pool (no one else reaches these
  // spans meanwhile: other threads only push remote frees onto them).
  Span* doomed = nullptr;
  for (unsigned c = 0; c < kNumClasses; ++c) {
    if (queue_empty(h, c)) continue;
    Span* first = h->head[c];
    Span* last = h->tail[c];
    {
      StatsLock lock(h);  // the spans leave h with their counts folded into h's
      for (Span* s = first; s; s = s->next) span_stats_fold(h, s);
      set_head(h, c, &g_empty_span);
      h->tail[c] = nullptr;
    }
    OrphanPool* p = &d->orphan_pools->pool[c];
    PoolLock lock(d, c);
    // The owner changes under the pool lock: a span is the pool's exactly
    // while it is in the pool (adopt_orphan_span relies on it).  The queue's
    // links both ways stay the pool's.
    std::uint32_t n = 0;
    for (Span* s = first; s; s = s->next) {
      span_set_owner(s, orphan_span_heap());
      span_set_flags(s, s->flags & static_cast<std::uint8_t>(~(kSpanExhausted | kSpanAdopted)));
      ++n;
    }
    orphan_push_chain(d, p, first, last, n);
    orphan_trim_locked(d, p, &doomed);
  }
  orphan_retire_doomed(d, doomed);
}

namespace {
// fork(): the heaps of d whose thread may be inside a change of its class
// queues -- d's thread heaps that are not abandoned (an abandoned heap's
// stats_lock is taken only under the domain lock, which the prepare handler
// holds; a private domain's heap likewise) -- but the forking thread's own: a
// signal handler may fork from inside one of its queue changes, and waiting
// for that change to end would never end.  `abandoned` changes under the
// domain lock only, and the three handlers run in the forking thread, so they
// see the same heaps.
template <class Fn>
LCA_CORE_TEXT void for_each_running_heap(Domain* d, Fn fn) {
  if (!d->per_thread) return;
  Heap* mine = thread_heap_if_any();
  for (Heap* h = d->heaps; h; h = h->next_in_domain)
    if (!h->abandoned && h != mine) fn(h);
}
}  // namespace

// After d's lock: its pool locks; then no queue change of a running heap may
// be in progress across the fork, or the child could not walk that heap's
// queues for its statistics (before session 16 it counted the heap's folded
// counters only: the allocations of its spans not yet folded were lost, and
// the frees other heaps made of those blocks still counted --
// tests/unit/fork, test_fork_child_counts_every_allocation).  Sessions 16-17
// held every running heap's statistics lock across the fork: as many locks as
// threads, and TSan's deadlock detector, which allows 64 held at once, stopped
// the program at its first fork from 26 running threads (test_fork_with_many_
// running_threads).  Now d->forking says a fork is under way, and each running
// heap's statistics lock is taken and released once: a queue change in
// progress ends first (a leaf lock: its holder takes no other), and one that
// takes the lock later finds the flag (set before this thread's unlock) and
// waits for the domain lock (StatsLock).  The locks held across the fork are
// then the same few whatever the number of threads.
LCA_CORE_TEXT void domain_pools_prefork(Domain* d) {
  if (d->orphan_pools) {
    for (auto& l : d->orphan_pools->lock) pthread_mutex_lock(&l.m);
    fork_hold_range(std::begin(d->orphan_pools->lock), std::end(d->orphan_pools->lock));
  }
  if (!d->per_thread) return;
  d->forking.store(fork_token(), std::memory_order_relaxed);
  for_each_running_heap(d, [](Heap* h) {
    pthread_mutex_lock(&h->stats_lock);
    pthread_mutex_unlock(&h->stats_lock);
  });
}

LCA_CORE_TEXT void domain_pools_postfork_parent(Domain* d) {
  // Before the domain lock goes: a queue change waiting for it tests the flag
  // again.
  d->forking.store(nullptr, std::memory_order_relaxed);
  if (d->orphan_pools)
    for (auto& l : d->orphan_pools->lock) pthread_mutex_unlock(&l.m);
}

LCA_CORE_TEXT void domain_pools_postfork_child(Domain* d) {
  d->forking.store(nullptr, std::memory_order_relaxed);
  // A thread the fork did not copy may have held its heap's statistics lock
  // for the instant between taking it and finding the flag: made again, or a
  // statistics reader in the child would wait for it for ever.  Those heaps
  // are never used again in the child (lifecycle.c++), but a reader walks
  // their queues, whole: no change was in progress at the fork.  (No TSan
  // release here, unlike the locks this thread held: TSan does not follow the
  // child of a multi-threaded fork.)
  for_each_running_heap(d, [](Heap* h) { pthread_mutex_init(&h->stats_lock, nullptr); });
  if (!d->orphan_pools) return;
  for (auto& l : d->orphan_pools->lock) {
    tsan_released_at_fork(&l.m);
    pthread_mutex_init(&l.m, nullptr);
  }
}

// StatsLock found d->forking set, h's stats_lock held.  The forking thread
// itself goes on (a pthread_atfork handler of another library, run between
// libcalloc's, may allocate; its own heap is not in the prepare handler's
// walk).  Another thread waits for the domain lock, which the forking thread
// holds from before it set the flag until after it cleared it, so this thread
// sleeps rather than spins; it holds no lock of libcalloc while it waits (its
// stats_lock is a leaf lock, and a thread holding the domain lock or any lock
// the prepare handler takes before it cannot find the flag set).  A private
// domain's heap goes on: its stats_lock is taken only under its domain lock,
// which this thread holds, and the flag it found is that lock's (set by the
// prepare handler's first pass, which takes no statistics lock), met by a
// thread that holds another private domain's lock too and went on past it
// (domain_lock_wait_fork): its domain lock was the one to wait for.
LCA_CORE_TEXT void stats_lock_wait_fork(Heap* h) {
  if (!h->domain->per_thread) return;
  fork_wait(h->domain->forking, &h->stats_lock, &h->domain->lock);
}

// DomainLock (tcache.h++) found d->forking set, d's lock held: a private
// domain, whose lock the prepare handler of another thread's fork took and
// released once (lifecycle.c++), or any domain whose fork is this thread's own
// (a pthread_atfork handler of another library, run between libcalloc's, may
// allocate).  Another thread's fork: this thread lets go and waits for the
// domain list's fork gate, which the forking thread holds from before it set
// the flag until after it cleared it, so this thread sleeps rather than spins.
// It held the domain lock once only: the flag was stored under that lock, so a
// thread holding it deeper took it before, and the prepare handler waited for
// it.  Nor does it hold a lock the forking thread waits for: the prepare
// handler flags the private domains first, holding only the gate while it
// waits for one's lock (lifecycle.c++), and the locks it takes after them
// (the tracker's, the hardened heaps', the process domain's and its pools',
// the large-block and huge-page tables') are never held while a private
// domain's lock is taken -- but for one case: a thread that holds another
// private domain's lock (a relocation callback of that heap using this one; the
// first such lock it took was not flagged, or it would have waited there)
// holds a lock the handler has not passed yet and will wait for.  That thread
// goes on without waiting: the fork cannot happen before it lets go of that
// lock, by when it has done with this domain too.  The process domain's flag
// is only ever found by the forking thread: its lock is held across the fork.
LCA_CORE_TEXT void domain_lock_wait_fork(Domain* d) {
  if (tls_private_domain_locks) return;
  fork_wait(d->forking, &d->lock, &g_domains_fork_gate);
}

}  // namespace lca
