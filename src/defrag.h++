// defrag.h++ -- what the relocation engine (defrag.c++) shares with the handle
// heap (handle.c++): the heap lock a pass holds, the plan of where blocks go,
// a pass's budget and the fragmentation report made under the lock.
#ifndef LCA_DEFRAG_HXX
#define LCA_DEFRAG_HXX

#include <custom_alloc/defrag.h++>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "arena.h++"
#include "chunk.h++"
#include "span.h++"
#include "tcache.h++"
#include "vg.h++"

namespace lca {

using Clock = std::chrono::steady_clock;

class HeapLock {
 public:
  explicit HeapLock(Domain* d) : d_(d) {
    domain_lock(d_);
    d_->quarantine_hold.fetch_add(1, std::memory_order_relaxed);
  }
  ~HeapLock() {
    d_->quarantine_hold.fetch_sub(1, std::memory_order_relaxed);
    domain_unlock(d_);
  }
  HeapLock(const HeapLock&) = delete;
  HeapLock& operator=(const HeapLock&) = delete;

 private:
  Domain* d_;
};

inline std::size_t span_capacity(const Span* s) { return s->capacity; }
inline bool span_has_room(const Span* s) { return s->free != nullptr || s->bump < span_full_end(s); }

struct ArenaBlock {
  char* p;
  std::size_t usable;
  bool free;
};

inline std::vector<ArenaBlock> arena_blocks(const ArenaChunk* c) {
  std::vector<ArenaBlock> out;
  arena_walk(
      c,
      [](void* ctx, void* payload, std::size_t usable, bool free) {
        static_cast<std::vector<ArenaBlock>*>(ctx)->push_back(ArenaBlock{static_cast<char*>(payload), usable, free});
      },
      &out);
  return out;
}

// The fragmentation report of d, made under its lock (defrag.c++).
custom_alloc::FragmentationReport analyze_locked(Domain* d, bool walk_objects = true);

// --- the plan -------------------------------------------------------------------

// Where blocks go, made under the domain lock and valid while it is held.  The
// handle heap builds it whole for each batch (sources(), is_source(),
// span_dest()); the raw engine asks for one class at a time (order(c)) and for
// the arena last, so that a budgeted pass plans only what it reaches.
// dest_for() hands out the new place of a block of a source span or of an
// arena block that has a hole before it.
class Plan {
 public:
  enum class Build { whole, lazy };
  Plan(Heap* h, Build how) : h_(h) {
    if (how == Build::lazy) return;
    for (unsigned c = 0; c < kNumClasses; ++c) build_class(c, true);
    source_set_ = sources_;
    std::sort(source_set_.begin(), source_set_.end());
    build_arena();
  }

  // Source spans, sparsest first (whole plans).
  const std::vector<Span*>& sources() const { return sources_; }
  // Every span of class c, in destination order.
  std::vector<Span*> take_order(unsigned c) {
    if (!classes_[c].built) build_class(c, false);
    return std::move(classes_[c].all);
  }
  bool is_source(const Span* s) const { return std::binary_search(source_set_.begin(), source_set_.end(), s); }

  // A new place in a destination span of s's class (s a source); nullptr when
  // the destinations are full.
  void* span_dest(const Span* s) {
    Classes& k = classes_[s->size_class];
    while (k.cursor < k.dests.size() && !span_has_room(k.dests[k.cursor])) ++k.cursor;
    if (k.cursor == k.dests.size()) return nullptr;
    Span* d = k.dests[k.cursor];
    return span_pop_extend(d);  // counted by the span
  }

  // Arena blocks from the last in (rank, address) order.
  const std::vector<ArenaBlock>& arena_sources() {
    if (!arena_built_) build_arena();
    return arena_live_;
  }

  // A new place for the arena block p (usable bytes needed: need) in a hole
  // before it; nullptr when there is none.
  void* arena_dest(const char* p, std::size_t need) {
    if (!arena_built_) build_arena();
    std::uint64_t pos = position(p);
    std::size_t align = std::size_t{1} << __builtin_ctzll(reinterpret_cast<std::uintptr_t>(p));
    align = std::clamp<std::size_t>(align, 16, 4096);
    while (first_hole_ < holes_.size() && holes_[first_hole_].usable < kArenaMinBlock) ++first_hole_;
    for (std::size_t i = first_hole_; i < holes_.size(); ++i) {
      Hole& hole = holes_[i];
      if (position(hole.p) >= pos) break;
      if (hole.usable < need) continue;
      void* q = arena_alloc_in(&h_->arena, hole.p, need, align);
      if (!q) continue;
      // What is left of the hole follows the new block (if anything is left).
      char* after = static_cast<char*>(q) + arena_usable_size(q) + kArenaTag;
      char* hole_end = hole.p + hole.usable + kArenaTag;
      if (after < hole_end) {
        hole.p = after;
        hole.usable = static_cast<std::size_t>(hole_end - after) - kArenaTag;
      } else {
        hole.usable = 0;
      }
      h_->counters.arena_allocs.add(1);
      h_->counters.extra_bytes_allocated.add(arena_usable_size(q));
      return q;
    }
    return nullptr;
  }

 private:
  struct Classes {
    bool built = false;
    std::vector<Span*> all;  // destination order: densest chunk, then densest span
    std::vector<Span*> dests;
    std::size_t cursor = 0;
  };
  struct Hole {
    char* p;
    std::size_t usable;
  };

  // Class c's spans in destination order: the fullest chunks first (the most
  // spans in use: a count in the chunk's header, where adding up the chunk's
  // live bytes reads 63 descriptors -- 4 ms per plan at 1 GiB), then the
  // densest spans, so that the sources empty whole chunks, which go back to
  // the OS.  With `sources`, also its destinations (as many spans as its
  // objects need) and its source spans (the rest, sparsest first).
  void build_class(unsigned c, bool sources) {
    Classes& k = classes_[c];
    k.built = true;
    if (h_->head[c] == &g_empty_span) return;
    struct Ranked {
      Span* s;
      std::size_t chunk;
      std::uint32_t used;
    };
    std::vector<Ranked> spans;
    std::size_t used = 0;
    for (Span* s = h_->head[c]; s; s = s->next) {
      spans.push_back(Ranked{s, 0, span_used(s)});
      used += span_used(s);
    }
    if (spans.size() > 1)
      for (Ranked& r : spans) r.chunk = span_chunk_of(chunk_base(r.s))->active_spans;
    std::sort(spans.begin(), spans.end(), [](const Ranked& a, const Ranked& b) {
      if (a.chunk != b.chunk) return a.chunk > b.chunk;
      return a.used != b.used ? a.used > b.used : a.s < b.s;
    });
    k.all.reserve(spans.size());
    for (const Ranked& r : spans) k.all.push_back(r.s);
    if (!sources || spans.size() < 2) return;
    std::size_t per_span = span_capacity(spans[0].s);
    std::size_t needed = (used + per_span - 1) / per_span;
    if (needed == 0) needed = 1;
    if (needed >= spans.size()) return;
    for (std::size_t i = 0; i < needed; ++i) k.dests.push_back(spans[i].s);
    std::size_t first = sources_.size();
    for (std::size_t i = needed; i < spans.size(); ++i)
      if (spans[i].used) sources_.push_back(spans[i].s);
    std::sort(sources_.begin() + static_cast<std::ptrdiff_t>(first), sources_.end(),
              [](const Span* a, const Span* b) { return span_used(a) < span_used(b); });
  }

  void build_arena() {
    arena_built_ = true;
    struct Ranked {
      ArenaChunk* c;
      std::size_t live;
    };
    std::vector<Ranked> chunks;
    for (ChunkHeader* ch = h_->arena.chunks.head; ch; ch = ch->next) {
      ArenaChunk* c = arena_chunk_of(ch);
      chunks.push_back(Ranked{c, kArenaChunkCapacity - c->free_bytes});
    }
    std::sort(chunks.begin(), chunks.end(), [](const Ranked& a, const Ranked& b) {
      return a.live != b.live ? a.live > b.live : a.c < b.c;
    });
    for (std::size_t r = 0; r < chunks.size(); ++r) {
      rank_of_.push_back(RankEntry{chunks[r].c, static_cast<std::uint32_t>(r)});
      for (const ArenaBlock& b : arena_blocks(chunks[r].c)) {
        if (b.free)
          holes_.push_back(Hole{b.p, b.usable});
        else
          arena_live_.push_back(b);
      }
    }
    std::sort(rank_of_.begin(), rank_of_.end(), [](const RankEntry& a, const RankEntry& b) { return a.c < b.c; });
    // The last block first: it has the most holes before it.
    std::reverse(arena_live_.begin(), arena_live_.end());
  }

  struct RankEntry {
    ArenaChunk* c;
    std::uint32_t rank;
  };
  std::uint64_t position(const char* p) const {
    auto* c = reinterpret_cast<ArenaChunk*>(reinterpret_cast<std::uintptr_t>(p) & ~(kChunkSize - 1));
    auto it = std::lower_bound(rank_of_.begin(), rank_of_.end(), c,
                               [](const RankEntry& e, const ArenaChunk* k) { return e.c < k; });
    std::uint64_t rank = it != rank_of_.end() && it->c == c ? it->rank : ~std::uint32_t{0};
    return rank << kChunkShift | (reinterpret_cast<std::uintptr_t>(p) & (kChunkSize - 1));
  }

  Heap* h_;
  Classes classes_[kNumClasses];
  bool arena_built_ = false;
  std::vector<Span*> sources_, source_set_;
  std::vector<RankEntry> rank_of_;
  std::vector<Hole> holes_;
  std::size_t first_hole_ = 0;
  std::vector<ArenaBlock> arena_live_;
};

// The bytes of the new place a block of user size n needs.
inline std::size_t inner_size(std::size_t n) { return vg_inner_size(n); }

// The new place q (raw) becomes a block of n user bytes.
inline void announce_block(Domain* d, void* q, std::size_t n, std::size_t usable) {
  if (!on_valgrind()) return;
  vg_block_allocated(q, n, usable, false);
  d->vg.allocs.fetch_add(1, std::memory_order_relaxed);
  d->vg.bytes_allocated.fetch_add(n, std::memory_order_relaxed);
}

inline std::size_t raw_usable(const void* q) {
  BlockRef r;
  block_lookup(q, &r, "defragment");
  return r.usable;
}

struct PassState {
  const custom_alloc::DefragBudget* budget;
  Clock::time_point deadline;
  custom_alloc::DefragmentationEngine::DefragStats* stats;
  bool stopped = false;
  bool advanced = false;  // the pass got to a later stage than it began in

  // Every budget lets every pass move one object or finish a stage, so that
  // passes converge however small it is: the time budget (under Valgrind
  // planning alone can take a millisecond), and a max_objects or max_bytes of 0,
  // with which a pass moved nothing and said work_remaining, forever (review
  // 24; any other value stops a pass only after a move, as before).
  bool over_budget() {
    if ((stats->objects_relocated > 0 || advanced) &&
        (stats->objects_relocated >= budget->max_objects || stats->bytes_moved >= budget->max_bytes ||
         Clock::now() >= deadline)) {
      stopped = true;
      return true;
    }
    return false;
  }
  // For the trim, which makes its own progress (a piece per call): stops when
  // a piece as long as the last one would end past the deadline (unmapping a
  // resident chunk costs 130-230 us here).
  Clock::time_point piece_start{};
  // Whether to leave the next size class's plan (up to 0.8 ms for a class of
  // thousands of spans) to the next pass: past the middle of the time budget,
  // once this pass has done something.
  bool no_time_to_plan() {
    if (!(stats->objects_relocated > 0 || advanced) || deadline == Clock::time_point::max()) return false;
    Clock::time_point now = Clock::now();
    if (now < deadline && deadline - now > budget->max_time / 2) return false;
    stopped = true;
    return true;
  }
  static bool out_of_time(void* self) {
    auto* st = static_cast<PassState*>(self);
    Clock::time_point now = Clock::now();
    Clock::duration piece = now - st->piece_start;
    st->piece_start = now;
    if (now < st->deadline && st->deadline - now > piece) return false;
    st->stopped = true;
    return true;
  }
};

inline Clock::time_point deadline_of(Clock::time_point start, std::chrono::microseconds limit) {
  if (limit >= std::chrono::duration_cast<std::chrono::microseconds>(Clock::time_point::max() - start))
    return Clock::time_point::max();
  return start + limit;
}

inline custom_alloc::DefragmentationEngine::DefragStats empty_stats() {
  custom_alloc::DefragmentationEngine::DefragStats s{};
  s.duration = std::chrono::microseconds(0);
  return s;
}

}  // namespace lca

#endif
