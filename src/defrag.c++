// defrag.c++ -- the fragmentation metric and the relocation engine (configure
// --enable-defrag; include/custom_alloc/defrag.h++ is the contract).
//
// This module owns no memory of the heaps it works on: it plans and performs
// moves inside an independent heap through small hooks of the layers below
// (span pops, arena_alloc_in, heap_queue_to_front, free_slow), under the heap's
// domain lock.  A plan, made afresh for each pass or batch, is:
//   - per size class: the spans sorted densest first; the first ceil(used /
//     objects per span) of them are destinations, the rest sources.  (Redis asks
//     jemalloc to move an object only when its slab is emptier than the class's
//     average; that rule leaves a heap of uniformly sparse spans as it is, which
//     is exactly the 90 %-fragmented heap we must compact, so the rule here is
//     "not among the spans the live objects need".)  Objects go from the sparsest
//     source to the densest destination with room; an emptied span is retired.
//   - arena: chunks ranked densest first, blocks in (rank, address) order; a block
//     moves into the first free hole that comes before it in that order and fits
//     (two-finger compaction), keeping the alignment its address has (up to a
//     page).  Emptied chunks are released, the tails of the others shrink.
// After a pass domain_trim() returns the emptied spans and chunks to the OS.
//
// The handle heap (HandleAllocator, handle.c++) plans its batches with the same
// Plan and budget; defrag.h++ holds what the two share.
#include "config.h"

#include <custom_alloc/defrag.h++>
#include <custom_alloc/numa_allocator.h++>
#include <custom_alloc/secure_allocator.h++>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include "arena.h++"
#include "defrag.h++"
#include "large.h++"
#include "numa.h++"
#include "os.h++"
#include "report.h++"
#include "span.h++"
#include "tcache.h++"
#include "vg.h++"

namespace lca {
namespace {

// --- walking a heap -----------------------------------------------------------

std::size_t span_carved(const Span* s) { return static_cast<std::size_t>(s->bump - span_base(s)) / s->obj_size; }

// Whether object i of s is a live block's start; *slots receives the slots it covers.
bool span_object_live(const Span* s, std::uint32_t i, std::uint32_t* slots) {
  *slots = 1;
  for (unsigned k = 0; k < s->multislot_count; ++k) {
    if (i > s->multislot[k].first && i < s->multislot[k].first + s->multislot[k].slots) {
      *slots = 0;  // inside a grown object
      return false;
    }
    if (i == s->multislot[k].first) *slots = s->multislot[k].slots;
  }
  const char* p = span_base(s) + static_cast<std::size_t>(i) * s->obj_size;
  const auto* o = reinterpret_cast<const FreeObject*>(p);
  std::uintptr_t guard = on_valgrind() ? vg_peek_word(&o->guard) : o->guard;
  return guard != free_guard(p);
}

template <class F>
void for_each_span(Heap* h, F&& f) {
  for (unsigned c = 0; c < kNumClasses; ++c) {
    if (h->head[c] == &g_empty_span) continue;
    for (Span* s = h->head[c]; s;) {
      Span* next = s->next;
      f(c, s);
      s = next;
    }
  }
}


}  // namespace

// walk_objects: also find the largest free run inside spans, which reads every
// object's guard word -- never while other threads may be writing the objects
// (the handle heap's pass), where the run is taken from the arena alone.
custom_alloc::FragmentationReport analyze_locked(Domain* d, bool walk_objects) {
  custom_alloc::FragmentationReport r{};
  Heap* h = d->single;
  for_each_span(h, [&](unsigned, Span* s) {
    std::size_t carved = span_carved(s);
    std::size_t live = static_cast<std::size_t>(span_used(s)) * s->obj_size;
    if (span_used(s) == 0) return;  // an empty head span holds nothing live: not held
    ++r.spans_in_use;
    r.held_bytes += carved * s->obj_size;
    r.live_bytes += live;
    r.trapped_bytes += carved * s->obj_size - live;
    if (!walk_objects) return;
    std::size_t run = 0;
    for (std::uint32_t i = 0; i < carved; ++i) {
      std::uint32_t slots;
      if (span_object_live(s, i, &slots) || slots == 0) {
        run = 0;
      } else {
        run += s->obj_size;
        r.largest_free_run = std::max(r.largest_free_run, run);
      }
    }
  });
  for (ChunkHeader* ch = h->arena.chunks.head; ch; ch = ch->next) {
    std::vector<ArenaBlock> blocks = arena_blocks(arena_chunk_of(ch));
    std::size_t last_live = blocks.size();
    for (std::size_t i = blocks.size(); i-- > 0;)
      if (!blocks[i].free) {
        last_live = i;
        break;
      }
    if (last_live == blocks.size()) continue;  // an empty chunk
    ++r.arena_chunks_in_use;
    for (std::size_t i = 0; i <= last_live; ++i) {
      std::size_t bytes = blocks[i].usable + kArenaTag;
      r.held_bytes += bytes;
      if (blocks[i].free) {
        r.trapped_bytes += bytes;
        r.largest_free_run = std::max(r.largest_free_run, bytes);
      } else {
        r.live_bytes += bytes;
      }
    }
  }
  LargeCache large = large_counters(&d->large);
  std::size_t large_live = large.alloc_bytes - large.free_bytes;
  r.held_bytes += large_live;
  r.live_bytes += large_live;
  r.os_memory_mapped = domain_stats(d).os_memory_mapped;
  r.fragmentation = r.held_bytes ? 1.0 - static_cast<double>(r.live_bytes) / static_cast<double>(r.held_bytes) : 0.0;
  return r;
}

// What a pass reports without walking the objects: the heap's mapping only

namespace {

// (fragmentation -1).
custom_alloc::FragmentationReport cheap_report(Domain* d) {
  custom_alloc::FragmentationReport r{};
  r.os_memory_mapped = domain_stats(d).os_memory_mapped;
  r.fragmentation = -1;
  return r;
}

// The user's size of a live block of `usable` bytes (the requested size in
// Valgrind and ASan mode, where the rest is a redzone).
std::size_t user_size(const void* p, std::size_t usable) { return on_valgrind() ? vg_block_size(p, usable) : usable; }

// Frees a moved block's old place at once.  In Valgrind and ASan mode a free
// waits in the quarantine, whose oldest blocks are released by later frees: a
// release in the middle of a pass could retire a span the pass is walking.
// memcheck is still told the block is freed.
void release_now(Domain* d, void* p) {
  if (on_valgrind()) {
    std::size_t usable = raw_usable(p);
    d->vg.frees.fetch_add(1, std::memory_order_relaxed);
    d->vg.bytes_freed.fetch_add(vg_block_size(p, usable), std::memory_order_relaxed);
    vg_block_forgotten(p);  // VALGRIND_FREELIKE_BLOCK
    vg_defined(p, usable);  // libcalloc's memory again (ASan: unpoisoned)
  }
  free_now(p);
}

// --- the relocation engine (raw pointers) ---------------------------------------

// Copies the block at p into q, tells the callback, frees p.  If the callback
// throws, q is freed and p stays (the exception goes on).
void move_raw(Domain* d, void* p, void* q, std::size_t n, const custom_alloc::DefragmentationEngine::RelocationCallback& cb,
              PassState* st, bool arena) {
  announce_block(d, q, n, raw_usable(q));
  std::memcpy(q, p, n);
  if (cb) {
    try {
      // The callback may not use the heap (its lock is held, and recursive):
      // the heap's allocation and free paths check this mark.
      struct Mark {
        Domain* prev;
        explicit Mark(Domain* d) : prev(tls_relocating) { tls_relocating = d; }
        ~Mark() { tls_relocating = prev; }
      } mark{d};
      cb(p, q, n);
    } catch (...) {
      free_slow(q);
      throw;
    }
  }
  if (arena) st->stats->free_blocks_merged += arena_free_neighbours(p);
  release_now(d, p);
  st->stats->objects_relocated += 1;
  st->stats->bytes_moved += n;
}

// Whether s, from a plan made in an earlier pass of the round, is still a
// span of class c of heap h: its chunk may have been emptied and unmapped or
// reused since (the registry says which chunks are span chunks; a released
// chunk's descriptors are all inactive), the span retired or remade.
bool span_still(const Span* s, const Heap* h, unsigned c) {
  if (chunk_kind_of(s) != ChunkKind::spans || chunk_base(s)->heap != h) return false;
  return !(s->flags & kSpanInactive) && s->heap == h && s->size_class == c;
}

// Compacts class c: two fingers over its spans in destination order, the free
// one rising through the first spans' lowest free slots, the live one falling
// from the last span's highest object; they meet in the span that stays partly
// full, whose live objects end up at its start (its free tail is uncarved after
// the pass).  Objects grown over several slots stay where they are.  The plan
// may come from an earlier pass of the round: [*lo, *hi) is the part the
// fingers have not passed, and says on return what is left of it; spans that
// are not the class's any more are skipped.
void compact_class(Domain* d, Heap* h, unsigned c, const std::vector<Span*>& spans, std::size_t* lo,
                   std::size_t* hi, const custom_alloc::DefragmentationEngine::RelocationCallback& cb,
                   PassState* st) {
  if (*lo >= *hi) return;
  auto still = [&](std::size_t k) { return span_still(spans[k], h, c); };
  std::size_t di = *lo, si = *hi - 1;
  while (di < si && !still(di)) ++di;
  while (si > di && !still(si)) --si;
  if (!still(si)) {
    *lo = *hi = si;  // nothing left
    return;
  }
  span_sort_free_list(spans[di]);  // each destination when the free finger reaches it
  std::uint32_t top = static_cast<std::uint32_t>(span_carved(spans[si]));
  // Where the fingers meet, the free slots below the live finger are taken off
  // the list at once (lowest first): the old places freed meanwhile go to the
  // list's head, above them.
  std::vector<void*> lows;
  std::size_t next_low = 0;
  while (!st->stopped) {
    Span* src = spans[si];
    std::uint32_t slots = 1;
    while (top > 0) {
      if (span_object_live(src, top - 1, &slots) && slots == 1) break;
      if (slots != 1 && si == di) {
        top = 0;  // an immovable object where the fingers meet: done
        break;
      }
      --top;
    }
    if (top == 0) {
      if (si == di) break;
      do --si;
      while (si > di && !still(si));
      top = static_cast<std::uint32_t>(span_carved(spans[si]));
      continue;
    }
    if (di < si && !span_has_room(spans[di])) {
      do ++di;
      while (di < si && !still(di));
      span_sort_free_list(spans[di]);
      continue;
    }
    if (st->over_budget()) break;
    std::uint32_t i = top - 1;
    void* p = span_base(src) + static_cast<std::size_t>(i) * src->obj_size;
    Span* dst = spans[di];
    void* q;
    if (dst != src) {
      q = span_pop_extend(dst);
      if (!q) break;
    } else {
      if (lows.empty()) {
        while (void* low = span_pop_uncounted(h, src)) {
          if (span_index(src, low) >= i) {
            span_push_uncounted(h, src, low, span_index(src, low));
            break;
          }
          // Reads as free to the live finger until it is used.
          static_cast<FreeObject*>(low)->guard = free_guard(low);
          lows.push_back(low);
        }
        if (lows.empty()) break;
      }
      if (next_low == lows.size() || span_index(src, lows[next_low]) >= i) break;
      q = lows[next_low++];
      static_cast<FreeObject*>(q)->guard = 0;
      span_count_alloc(h, src);  // (span_pop counted dst's)
    }
    bool emptied = src != dst && span_used(src) == 1;
    try {
      move_raw(d, p, q, user_size(p, src->obj_size), cb, st, false);
    } catch (...) {
      for (std::size_t k = lows.size(); k-- > next_low;)
        span_push_uncounted(h, spans[di], lows[k], span_index(spans[di], lows[k]));
      throw;
    }
    top = i;
    if (emptied) {
      st->stats->free_blocks_merged += 1;
      // Retired (its chunk perhaps released): do not touch it again.
      if (si == di) {
        *lo = *hi = si;
        return;  // (no low slots taken: they are taken where the fingers meet)
      }
      do --si;
      while (si > di && !still(si));
      top = static_cast<std::uint32_t>(span_carved(spans[si]));
    }
  }
  // Unused low slots go back, the lowest ending at the list's head.
  for (std::size_t k = lows.size(); k-- > next_low;) span_push_uncounted(h, spans[di], lows[k], span_index(spans[di], lows[k]));
  *lo = di;
  *hi = si + 1;
}

// A round of budgeted passes goes through these stages (Domain::defrag_resume):
// the size classes in order, then the arena, then the trim; a pass starts where
// the last one stopped, so that no pass plans the classes compacted before it.
constexpr unsigned kStageArena = kNumClasses;
constexpr unsigned kStageTrim = kNumClasses + 1;

// The plan of the size class a round is in, kept from pass to pass
// (Domain::defrag_round): making it walks and sorts the class's spans, 0.1-0.8
// ms of CPU for the 1 300-8 700 spans of a class of a 1 GiB heap, which a
// 100 us pass would otherwise pay every time.  What the fingers passed is cut
// off ([lo, hi)); what changed between passes is checked span by span
// (span_still) as the fingers reach it.
constexpr unsigned kNoClass = ~0u;
struct RoundPlan {
  unsigned cls = kNoClass;
  std::vector<Span*> order;
  std::size_t lo = 0, hi = 0;
  // In a NUMAAllocator's base heap: the heap of the allocator that its round
  // of budgeted passes is in (0 this one, n + 1 node n's); read and written
  // with the base heap's lock held, which the engine holds for the whole pass
  // over the allocator (custom_alloc::pass_set).
  unsigned heap_key = 0;
};

RoundPlan& round_of(Domain* d) {
  if (!d->defrag_round) d->defrag_round = new RoundPlan;
  return *static_cast<RoundPlan*>(d->defrag_round);
}

// The moving stages, from d->defrag_resume (0 with `from_start`) on.
void engine_pass(Domain* d, const custom_alloc::DefragmentationEngine::RelocationCallback& cb, PassState* st,
                 bool from_start) {
  HeapLock lock(d);
  Heap* h = d->single;
  // Blocks freed by the user wait in the quarantine in Valgrind and ASan mode:
  // free them for good, so that every block the walk finds is live.
  vg_quarantine_release_domain(d);
  RoundPlan& round = round_of(d);
  if (from_start || d->defrag_resume > kStageTrim) {
    d->defrag_resume = 0;
    round.cls = kNoClass;
  }
  unsigned& stage = d->defrag_resume;  // kept current: a callback may throw
  Plan plan(h, Plan::Build::lazy);
  while (stage < kStageArena) {
    if (st->over_budget()) return;
    if (round.cls != stage) {
      if (st->no_time_to_plan()) return;
      round.order = plan.take_order(stage);
      round.cls = stage;
      round.lo = 0;
      round.hi = round.order.size();
    }
    compact_class(d, h, stage, round.order, &round.lo, &round.hi, cb, st);
    if (st->stopped) return;
    round.cls = kNoClass;
    ++stage;
    st->advanced = true;
  }
  if (stage == kStageArena) {
    for (const ArenaBlock& b : plan.arena_sources()) {
      if (st->over_budget()) return;
      std::size_t n = user_size(b.p, b.usable);
      void* q = plan.arena_dest(b.p, on_valgrind() ? inner_size(n) : b.usable);
      if (!q) continue;
      move_raw(d, b.p, q, n, cb, st, true);
    }
    stage = kStageTrim;
    st->advanced = true;
    // The moves are done: uncarve the free tails of the spans (their last
    // objects now at their starts), once per round.
    vg_quarantine_release_domain(d);
    for_each_span(h, [](unsigned, Span* s) { span_trim_tail(s); });
  }
}

// The trim stage: returns the emptied spans and chunks to the OS, a piece at a
// time within the pass's budget; the round ends when all of it is done.
void engine_trim(Domain* d, PassState* st) {
  {
    HeapLock lock(d);
    if (d->defrag_resume != kStageTrim) return;
  }
  st->piece_start = Clock::now();
  bool done = domain_trim_some(d, &PassState::out_of_time, st);
  HeapLock lock(d);
  if (done) {
    d->defrag_resume = 0;
    st->stopped = false;  // a budget that ran out on the last piece stopped nothing
  } else {
    st->stopped = true;
  }
}

}  // namespace

void defrag_domain_destroyed(Domain* d) {
  delete static_cast<RoundPlan*>(d->defrag_round);
  d->defrag_round = nullptr;
}

}  // namespace lca

namespace custom_alloc {

using lca::Clock;

namespace {

// The heaps the engine works on for one allocator: its own, and for a
// NUMAAllocator also each node's heap that exists (key: 0 the allocator's own
// heap, n + 1 node n's), in key order.
struct HeapSet {
  lca::Domain* heap[1 + lca::kNumaMaxNodes];
  unsigned key[1 + lca::kNumaMaxNodes];
  unsigned count = 0;
  bool numa = false;
  void add(lca::Domain* d, unsigned k) {
    heap[count] = d;
    key[count++] = k;
  }
};

[[noreturn]] void refuse_numa_node(const NUMAAllocator& a, int node) {
  char why[160];
  lca::Writer w{why, sizeof why};
  w.str("node ");
  if (node < 0) w.str("-").num(static_cast<unsigned long long>(-static_cast<long long>(node)));
  else w.num(static_cast<unsigned>(node));
  w.str(" is not a node of this machine (nodes: 0-").num(static_cast<unsigned>(NUMAAllocator::node_count() - 1));
  w.str(")");
  why[w.len < sizeof why ? w.len : sizeof why - 1] = 0;
  lca::report_fatal("Fragmentation analysis refused", &a, why);
}

// The heaps the engine works on, or an abort naming what `a` is instead.  A
// SecureAllocator is a MemoryAllocator over the process domain (its blocks are
// in its own hardened heap), so it is told apart first: it was reported as "the
// process heap" (review 24).  `measuring`: analyze or calculate_fragmentation,
// which were refused as a "Defragmentation" although they move nothing.
HeapSet heaps_of(const MemoryAllocator& a, bool measuring) {
  const char* problem = measuring ? "Fragmentation analysis refused" : "Defragmentation refused";
  if (dynamic_cast<const SecureAllocator*>(&a))
    lca::report_fatal(problem, &a,
                      measuring ? "a SecureAllocator keeps its blocks in a hardened heap of its own, which the "
                                  "engine does not walk (its get_stats has the counters)"
                                : "a SecureAllocator's blocks never move (its hardened heap keeps each block in "
                                  "its slot)");
  lca::Domain* d = a.domain();
  if (d == &lca::g_process_domain)
    lca::report_fatal(problem, &a,
                      measuring ? "this is the process heap (the one behind malloc), whose blocks live in its "
                                  "threads' heaps, which the engine does not walk; measure an independent "
                                  "MemoryAllocator (lca_get_stats has the process heap's counters)"
                                : "this is the process heap (the one behind malloc), whose pointers libcalloc "
                                  "cannot update; defragment an independent MemoryAllocator");
  HeapSet set;
  set.add(d, 0);
  // A NUMAAllocator's blocks are in its node heaps; its own (the base heap)
  // serves only what they could not.  Walking the base heap alone measured
  // 0.0 for a heap 90 % fragmented, and a pass moved nothing (review 24).
  if (auto* numa = dynamic_cast<const NUMAAllocator*>(&a)) {
    set.numa = true;
    lca::Domain* nodes[lca::kNumaMaxNodes];
    // Not under the allocator's creation lock from a relocation callback (an
    // analyze there): the pass holds heap locks, and a lock taken inside them
    // would add a lock order nothing else has (the allocator's statistics
    // take the creation lock after the base heap's, outside any node's).
    lca::NumaNodeHeaps::get(*numa, nodes, lca::tls_relocating == nullptr);
    for (int n = 0; n < lca::kNumaMaxNodes; ++n)
      if (nodes[n]) set.add(nodes[n], static_cast<unsigned>(n) + 1);
  }
  return set;
}

FragmentationReport analyze_domain(lca::Domain* d) {
  lca::VgSerial serial;
  lca::HeapLock lock(d);
  // (Not from a relocation callback of this heap: the pass released the heap's
  // quarantined blocks before it began, and frees none into it meanwhile.)
  if (lca::tls_relocating != d) lca::vg_quarantine_release_domain(d);
  return lca::analyze_locked(d);
}

// The report of several heaps: the sums, the largest free run of any, and
// the fragmentation of the whole.
void add_report(FragmentationReport* sum, const FragmentationReport& r) {
  sum->live_bytes += r.live_bytes;
  sum->held_bytes += r.held_bytes;
  sum->trapped_bytes += r.trapped_bytes;
  sum->largest_free_run = std::max(sum->largest_free_run, r.largest_free_run);
  sum->spans_in_use += r.spans_in_use;
  sum->arena_chunks_in_use += r.arena_chunks_in_use;
  sum->os_memory_mapped += r.os_memory_mapped;
  sum->fragmentation = sum->held_bytes
                           ? 1.0 - static_cast<double>(sum->live_bytes) / static_cast<double>(sum->held_bytes)
                           : 0.0;
}

// Holds the first heap of a set (a NUMAAllocator's base heap) for the whole of
// a measurement or a pass over several heaps: passes over one allocator do not
// interleave (as over a plain heap, whose lock a pass holds), a measurement
// sees the node heaps between two passes, and the round's cursor
// (RoundPlan::heap_key of the base heap) is read and written under it.  Node heaps are locked
// one at a time inside it, so the order is always base, then a node.
class SetLock {
 public:
  explicit SetLock(const HeapSet& set) : d_(set.count > 1 ? set.heap[0] : nullptr) {
    if (d_) lca::domain_lock(d_);
  }
  ~SetLock() {
    if (d_) lca::domain_unlock(d_);
  }
  SetLock(const SetLock&) = delete;
  SetLock& operator=(const SetLock&) = delete;

 private:
  lca::Domain* d_;
};

FragmentationReport analyze_set(const HeapSet& set) {
  if (set.count == 1) return analyze_domain(set.heap[0]);
  lca::VgSerial serial;
  SetLock lock(set);
  FragmentationReport sum{};
  for (unsigned i = 0; i < set.count; ++i) add_report(&sum, analyze_domain(set.heap[i]));
  return sum;
}

FragmentationReport cheap_set_report(const HeapSet& set) {
  FragmentationReport r{};
  for (unsigned i = 0; i < set.count; ++i) r.os_memory_mapped += lca::cheap_report(set.heap[i]).os_memory_mapped;
  r.fragmentation = -1;
  return r;
}

// One pass over the heaps of `set`: each heap's stages (engine_pass) and trim
// (engine_trim) in turn, within one budget.  A budgeted pass starts at the
// heap where the last one stopped; the round ends when the last heap's does.
void pass_set(const HeapSet& set, const DefragmentationEngine::RelocationCallback& callback, lca::PassState* st,
              bool unlimited) {
  SetLock lock(set);
  unsigned& cursor = lca::round_of(set.heap[0]).heap_key;
  if (unlimited || set.count == 1) cursor = 0;
  for (unsigned i = 0; i < set.count; ++i) {
    if (set.key[i] < cursor) continue;
    lca::Domain* d = set.heap[i];
    cursor = set.key[i];  // kept current: a callback may throw
    {
      lca::VgSerial serial;
      struct Finish {
        lca::Domain* d;
        ~Finish() { lca::vg_quarantine_release_domain(d); }  // also when the callback threw
      } finish{d};
      lca::engine_pass(d, callback, st, unlimited);  // may throw (the callback's exception)
    }
    // Purging and unmapping cost system calls: the trim ends a heap's round,
    // a piece per pass within the budget.
    if (!st->stopped) lca::engine_trim(d, st);
    if (st->stopped) return;
  }
  cursor = 0;
}

}  // namespace

FragmentationReport DefragmentationEngine::analyze(const MemoryAllocator& allocator) {
  return analyze_set(heaps_of(allocator, true));
}

FragmentationReport DefragmentationEngine::analyze_node(const NUMAAllocator& allocator, int node) {
  if (node < 0 || node >= NUMAAllocator::node_count() || node >= lca::kNumaMaxNodes) refuse_numa_node(allocator, node);
  HeapSet set = heaps_of(allocator, true);
  for (unsigned i = 1; i < set.count; ++i)
    if (set.key[i] == static_cast<unsigned>(node) + 1) return analyze_domain(set.heap[i]);
  return FragmentationReport{};  // no heap on that node: nothing held
}

float DefragmentationEngine::calculate_fragmentation(const MemoryAllocator& allocator) {
  return static_cast<float>(analyze(allocator).fragmentation);
}

DefragmentationEngine::DefragStats DefragmentationEngine::defragment(MemoryAllocator& allocator,
                                                                     RelocationCallback callback) {
  return defragment(allocator, std::move(callback), DefragBudget{});
}

DefragmentationEngine::DefragStats DefragmentationEngine::defragment(MemoryAllocator& allocator,
                                                                     RelocationCallback callback,
                                                                     const DefragBudget& budget) {
  HeapSet set = heaps_of(allocator, false);
  if (dynamic_cast<HandleAllocator*>(&allocator))
    lca::report_fatal("Defragmentation refused", &allocator,
                      "a HandleAllocator moves its objects itself: call its defragment()");
  Clock::time_point start = Clock::now();
  DefragStats stats = lca::empty_stats();
  FragmentationReport before = budget.measure ? analyze_set(set) : cheap_set_report(set);
  stats.fragmentation_before = before.fragmentation;
  // The time budget bounds the pass itself (planning and moving, under the
  // heap's lock), not the two measurements around it.
  lca::PassState st{&budget, lca::deadline_of(Clock::now(), budget.max_time), &stats};
  // A pass without limits does the whole heap; a budgeted one resumes the
  // round where the last one stopped.
  bool unlimited = budget.max_bytes == SIZE_MAX && budget.max_objects == SIZE_MAX &&
                   budget.max_time == std::chrono::microseconds::max();
  pass_set(set, callback, &st, unlimited);
  FragmentationReport after = budget.measure ? analyze_set(set) : cheap_set_report(set);
  stats.fragmentation_after = after.fragmentation;
  stats.bytes_released =
      before.os_memory_mapped > after.os_memory_mapped ? before.os_memory_mapped - after.os_memory_mapped : 0;
  stats.work_remaining = st.stopped;
  stats.duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
  return stats;
}

}  // namespace custom_alloc
