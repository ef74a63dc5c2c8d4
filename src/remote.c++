// remote.c++ -- free's out-of-line half (free_cold) and the frees of other
// threads' blocks.
//
// block_free (tcache.h++) frees inline a small object of the caller's own span;
// every other free comes to free_cold: a block of the caller's own arena goes
// to the medium cache (heap_free_medium, medium.c++), and a small object of
// another live heap's span is kept on the freeing thread's foreign list of its
// class, for reuse (foreign_class_bytes), or beyond that joins its span's chain
// in the thread's RemoteBatch table, pushed to the span's remote list one
// chain at a time (tcache.h++).  A free of a pooled span's block adopts the
// span (adopt_orphan_span, under the pool's lock taken with trylock: pool.c++
// owns the pools).  A free of the caller's own span whose flags sent it here
// goes straight to free_span_local; everything else, errors included, to
// free_slow (tcache.c++), which looks the block up and reports bad pointers.
#include "tcache.h++"
#include "heap.h++"
#include "placement.h++"

#include <cerrno>

#include "vg.h++"
#if CALLOC_TRACKING
#include "track.h++"
#endif

namespace lca {

namespace {
inline void remote_batch_flush(RemoteBatch* b) {
  span_push_remote_chain(b->span, b->head_index, b->tail, b->tail_index, b->count);
  b->span = nullptr;
}

void remote_batch_add(Heap* me, Span* s, FreeObject* o);

// A thread that frees blocks of other threads without having allocated any (a
// consumer) gets a heap of its own at its first such free, as at a first malloc:
// its frees are then batched per span like everyone's, instead of each taking
// the slow path -- registry lookup, two shared atomic counters, one
// compare-and-swap per block.  Measured on calloc-bench producer-consumers (one
// producer, three consumers that never allocate): free_now was 23 % of the
// profile.  nullptr (the slow path) in Valgrind and full-tracking modes, which
// keep every call on the slow paths, and after the thread's exit handler ran.
Heap* heap_for_remote_free() {
  if (tls_owned_heap || tls_heap_gone || on_valgrind()) return nullptr;
  heap_for_thread();
  Heap* h = tls_heap;
  return h == &g_no_heap ? nullptr : h;
}

// The checks every free by a thread of an object of another thread's span
// makes before it touches the object: p's span, active, single-slot and not
// purged (the owner may change the flags meanwhile, but not these bits for p:
// the span stays active while p is live, and p grew over several slots, if it
// did, before the user handed it to this thread; free_slow checks a purged
// span's mask, whose objects' guards read 0), p an object start and not
// freed already.  nullptr when any fails: free_slow then reports p or frees it.
inline Span* remote_free_checked_span(ChunkHeader* ch, void* p) {
  Span* s = span_of(span_chunk_of(ch), p);
  if ((span_flags_seen_remotely(s) & (kSpanInactive | kSpanMultislot | kSpanPurged)) ||
      !span_is_object_start_remote(s, p))
    return nullptr;
  if (static_cast<FreeObject*>(p)->guard == free_guard(p)) return nullptr;
  return s;
}

// o, a checked object of s (another heap's span), onto me's foreign list of
// its class, kept for reuse only in a class me allocates (it has a span of it:
// a thread that only frees the class would hold the objects for nothing) and
// up to the class's cap.  False, nothing done, when it must go to its chain.
inline bool foreign_list_push(Heap* me, Span* s, FreeObject* o) {
  unsigned c = s->size_class;
  if (me->head[c] == &g_empty_span || me->foreign_count[c] >= foreign_class_cap(c)) return false;
  RemoteBusy busy(me);
  o->guard = free_guard(o);
  me->counters.class_frees[c].add(1);
  o->next = me->foreign[c];
  me->foreign[c] = o;
  ++me->foreign_count[c];
  return true;
}

// o (checked, of s, another heap's span) joins its span's chain in me's
// RemoteBatch table.
__attribute__((noinline)) LCA_CORE_TEXT void free_to_chain(Heap* me, Span* s, FreeObject* o) {
  RemoteBusy busy(me);
  o->guard = free_guard(o);
  me->counters.class_frees[s->size_class].add(1);
  remote_batch_add(me, s, o);
}

// Span reclaim, on a free: s, a span of the pool (span_owner(s) was
// orphan_span_heap()), becomes h's, as if a refill had taken it -- the head of
// its class's queue when h has none there, else at the back -- and the free,
// and every later free of its blocks by h, is local.  A thread that frees the
// blocks an exited thread left (server-sim's successors, larson) so takes that
// thread's spans instead of making them remote frees and foreign-list entries
// flushed at its own exit (docs/design.md, "Span reclaim").  False when s left
// the pool meanwhile (another taker; the pool lock decides) or h does not take
// pooled spans.
bool adopt_orphan_span(Heap* h, Span* s) {
  Domain* d = h->domain;
  if (!d->orphan_pools || h->node >= 0) return false;
  // s holds the caller's live object: it cannot be retired, so its class stays.
  unsigned c = s->size_class;
  // Only when the pool lock is free: a free that would wait takes the remote
  // path instead (never in Valgrind or ASan mode: their frees have no heap here).
  pthread_mutex_t* m = d->orphan_pools->lock_of(c);
  if (pthread_mutex_trylock(m) != 0) return false;
  bool pooled = span_owner(s) == orphan_span_heap();
  if (pooled) {
    orphan_unlink(d, &d->orphan_pools->pool[c], s->prev, s);
    span_set_owner(s, h);
  }
  pthread_mutex_unlock(m);
  if (!pooled) return false;
  collect_span(h, s);
  if (queue_empty(h, c)) {
    // The head of a class h may never allocate: until h does (span_use_allocs),
    // its frees take the slow path, which retires it once empty
    // (span_after_local_free) -- a thread that only frees keeps no span.
    span_set_flags(s, s->flags | kSpanAdopted);
    h->counters.span_refills.add(1);
    queue_push_front(h, c, s);
  } else {
    span_set_flags(s, s->flags);  // fast_heap: h
    queue_push_back(h, c, s);
  }
  return true;
}

// The remote free of a small object of the process domain by a thread with a
// heap, with the checks block_lookup makes: false sends p to free_slow, which
// handles (or reports) everything else.
inline bool free_remote_batched(void* p) {
  if (chunk_kind_of(p) != ChunkKind::spans) return false;
  ChunkHeader* ch = chunk_base(p);
  if (ch->domain != &g_process_domain) return false;
  Heap* me = tls_heap;  // g_no_heap in Valgrind mode and in threads without a heap
  if (__builtin_expect(me == &g_no_heap, 0)) {
    int saved = errno;  // (making a heap may map memory)
    me = heap_for_remote_free();
    errno = saved;
    if (!me) return false;
  }
  Span* s = remote_free_checked_span(ch, p);
  if (!s) return false;
  // The caller's own span, whose other flags (left behind exhausted, adopted)
  // sent the free here, or a pooled span it adopts: block_free's checks hold,
  // as above, so straight to the local free, not through free_slow's
  // block_lookup (~100 of a ~250-instruction free that retires a span;
  // docs/design.md, "The slow path's tail").
  if (span_owner(s) == me ||
      (span_owner(s) == orphan_span_heap() && queue_empty(me, s->size_class) && adopt_orphan_span(me, s))) {
    int saved = errno;  // (a span that empties may be retired, its chunk released)
    free_span_local(me, s, p, span_index(s, p));
    errno = saved;
    return true;
  }
  auto* o = static_cast<FreeObject*>(p);
  if (!foreign_list_push(me, s, o)) free_to_chain(me, s, o);
  return true;
}

// The common remote free, inline in free_cold with no call (no registers
// saved, no errno): a small object of another live heap's span freed by a
// thread with a heap, onto its foreign list (`done`) or, past the list's
// cap, to its chain (`chain`, *span set: free_to_chain, a tail call).
// `other` sends p on to free_remote_batched, which handles everything else
// (the first free of a thread without a heap, the caller's own or a pooled
// span, bad pointers).  Such a free was ~100 instructions in free_cold;
// docs/design.md, "The matrix's producer-consumer: the remote free".
enum class QuickFree { done, chain, other };
inline QuickFree free_remote_quick(void* p, Span** span) {
  // First: in Valgrind mode (tls_heap is g_no_heap there) p's guard word may
  // lie in a redzone, which only the slow path may read.
  Heap* me = tls_heap;
  if (me == &g_no_heap) return QuickFree::other;
  ChunkHeader* ch = chunk_base(p);
  if (ch->domain != &g_process_domain) return QuickFree::other;
  Span* s = remote_free_checked_span(ch, p);
  if (!s) return QuickFree::other;
  Heap* owner = span_owner(s);
  if (owner == me || owner == orphan_span_heap()) return QuickFree::other;
  if (foreign_list_push(me, s, static_cast<FreeObject*>(p))) return QuickFree::done;
  *span = s;
  return QuickFree::chain;
}

// Adds o (a checked object of s, another heap's span, its guard set) to its
// span's chain in h's RemoteBatch table.
LCA_CORE_TEXT void remote_batch_add(Heap* me, Span* s, FreeObject* o) {
  std::uint32_t i = span_index(s, o);
  RemoteBatch* b = &me->remote_batch[(reinterpret_cast<std::uintptr_t>(s) >> 7) % kRemoteBatchSlots];
  if (b->span == s) {
    o->next = reinterpret_cast<FreeObject*>(span_base(s) + static_cast<std::size_t>(b->head_index) * s->obj_size);
    b->head_index = static_cast<std::uint16_t>(i);
    if (++b->count == kRemoteBatchMax || b->count * s->obj_size >= kRemoteBatchBytes) remote_batch_flush(b);
    return;
  }
  if (s->obj_size >= kRemoteBatchBytes) {
    // A chain of one would be kRemoteBatchBytes already: straight to the span.
    span_push_remote_chain(s, i, o, i, 1);
    return;
  }
  if (b->span) remote_batch_flush(b);
  o->next = nullptr;
  *b = RemoteBatch{s, o, static_cast<std::uint16_t>(i), static_cast<std::uint16_t>(i), 1};
}
}  // namespace

LCA_CORE_TEXT void remote_batch_flush_all(Heap* h) {
  RemoteBusy busy(h);
  for (unsigned c = 0; c < kNumClasses; ++c) {
    while (FreeObject* o = h->foreign[c]) {
      h->foreign[c] = o->next;
      remote_batch_add(h, span_of(span_chunk_of(chunk_base(o)), o), o);
    }
    h->foreign_count[c] = 0;
  }
  for (RemoteBatch& b : h->remote_batch)
    if (b.span) remote_batch_flush(&b);
}

namespace {
// free_cold past the medium cache and the foreign list: a function of its own,
// so that free_cold's common cases save no registers and no errno (its tail
// call).  free_remote_batched keeps errno itself (its rare branches alone can
// make a system call).
LCA_CORE_TEXT __attribute__((noinline)) void free_cold_rest(void* p, bool arena) {
  if (!arena && free_remote_batched(p)) return;
  int saved = errno;
  free_slow(p);
  errno = saved;
}
}  // namespace

LCA_CORE_TEXT void free_cold(void* p) {
  if (!p) return;  // free(nullptr): block_free has no null test of its own
#if CALLOC_TRACKING
  track_forget(p);
#endif
  // A block of the caller's own arena (tls_heap is &g_no_heap in Valgrind and
  // ASan mode, and in a thread without a heap: no chunk names it as its heap).
  // heap_free_medium keeps errno itself, so that a block its medium cache holds
  // costs no errno save (a call through the PLT and a TLS access).  Then the
  // common remote free (docs/design.md, "The matrix's producer-consumer: the
  // remote free").
  ChunkKind kind = chunk_kind_of(p);
  if (kind == ChunkKind::arena) {
    if (heap_free_medium(tls_heap, p)) return;
  } else if (kind == ChunkKind::spans) {
    Span* s = nullptr;
    QuickFree q = free_remote_quick(p, &s);
    if (q == QuickFree::done) return;
    if (q == QuickFree::chain) return free_to_chain(tls_heap, s, static_cast<FreeObject*>(p));
  }
  free_cold_rest(p, kind == ChunkKind::arena);
}

}  // namespace lca
