// large.c++ -- dedicated mappings, their out-of-band table and the mapping cache.
#include "large.h++"
#include "placement.h++"

#include <cerrno>
#include <cstring>
#include <pthread.h>

#include "os.h++"
#include "sanitizer.h++"
#include "vg.h++"
#include "config.h"
#include "options.h++"
#include "huge.h++"

namespace lca {
namespace {

// A pointer kept in a form that no scan of memory takes for one.  The table is
// libcalloc's memory, which Valgrind's leak check scans like any other: with
// plain addresses in it, a large block the program leaked would show as "still
// reachable" instead of "definitely lost".  The top 16 bits of a user-space
// address are zero; flipped, the word is not even a canonical address.
class HiddenPtr {
 public:
  HiddenPtr() = default;
  HiddenPtr(void* p) : v_(p ? reinterpret_cast<std::uintptr_t>(p) ^ kMask : 0) {}  // NOLINT: implicit
  operator void*() const { return v_ ? reinterpret_cast<void*>(v_ ^ kMask) : nullptr; }  // NOLINT
  char* bytes() const { return static_cast<char*>(static_cast<void*>(*this)); }

 private:
  static constexpr std::uintptr_t kMask = std::uintptr_t{0xA5C3} << 48;
  std::uintptr_t v_ = 0;
};

struct Slot {
  HiddenPtr user;  // nullptr: empty
  HiddenPtr base;
  std::size_t map_size;
  Domain* domain;
  bool huge;  // advised MADV_HUGEPAGE (and 2 MiB-aligned)
  std::int16_t node;  // the node the mapping is bound to; -1: not bound
  // large_resize has the table's lock released for an mremap of the block: a
  // move unmaps `user`, and a new mapping made meanwhile may start there, its
  // slot keyed by the same address.  Lookups skip such a slot (find_slot), and
  // the resize finds it again by the flag (find_slot_moving) -- or the marked
  // slot of another resize of a block mapped at that address since: each
  // resize erases one marked slot of its address and inserts its block's own,
  // so which of the two it finds does not matter.
  bool moving;
};

constinit pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
constinit Slot* g_slots = nullptr;
constinit std::size_t g_capacity = 0;  // power of two
constinit std::size_t g_used = 0;
constinit LargeCache* g_caches = nullptr;  // caches that hold or held mappings

LCA_CORE_TEXT void list_cache(LargeCache* c) {
  if (c->listed) return;
  c->listed = true;
  c->prev_listed = nullptr;
  c->next_listed = g_caches;
  if (g_caches) g_caches->prev_listed = c;
  g_caches = c;
}

LCA_CORE_TEXT void unlist_cache(LargeCache* c) {
  if (!c->listed) return;
  if (c->prev_listed)
    c->prev_listed->next_listed = c->next_listed;
  else
    g_caches = c->next_listed;
  if (c->next_listed) c->next_listed->prev_listed = c->prev_listed;
  c->listed = false;
}

LCA_CORE_TEXT std::size_t ranges_of(const void* base, std::size_t size, std::uintptr_t lo, std::uintptr_t hi) {
  auto b = reinterpret_cast<std::uintptr_t>(base);
  std::uintptr_t a = b > lo ? b : lo, z = b + size < hi ? b + size : hi;
  return a < z ? huge_whole_ranges(a, z) : 0;
}

inline std::size_t hash_of(const void* p) {
  return static_cast<std::size_t>((reinterpret_cast<std::uintptr_t>(p) >> 12) *
                                  0x9E3779B97F4A7C15ull >> 17);
}

LCA_CORE_TEXT Slot* find_slot(const void* p, bool moving = false) {
  if (!g_capacity) return nullptr;
  std::size_t mask = g_capacity - 1;
  for (std::size_t i = hash_of(p) & mask;; i = (i + 1) & mask) {
    if (g_slots[i].user == p && g_slots[i].moving == moving) return &g_slots[i];
    if (!g_slots[i].user) return nullptr;
  }
}

// The slot of p that large_resize marked moving (its caller resizes p: one at most).
Slot* find_slot_moving(const void* p) { return find_slot(p, true); }

LCA_CORE_TEXT bool insert_slot(const Slot& s) {
  if ((g_used + 1) * 2 > g_capacity) {
    std::size_t cap = g_capacity ? g_capacity * 2 : 256;
    auto* fresh = static_cast<Slot*>(os_map(cap * sizeof(Slot)));
    if (!fresh) return false;
    Slot* old = g_slots;
    std::size_t old_cap = g_capacity;
    g_slots = fresh;
    g_capacity = cap;
    for (std::size_t i = 0; i < old_cap; ++i)
      if (old[i].user) {
        std::size_t j = hash_of(old[i].user) & (cap - 1);
        while (g_slots[j].user) j = (j + 1) & (cap - 1);
        g_slots[j] = old[i];
      }
    if (old) os_unmap(old, old_cap * sizeof(Slot));
  }
  std::size_t mask = g_capacity - 1;
  std::size_t i = hash_of(s.user) & mask;
  while (g_slots[i].user) i = (i + 1) & mask;
  g_slots[i] = s;
  ++g_used;
  return true;
}

// Linear-probing deletion by backward shift: no tombstones, lookups stay short.
LCA_CORE_TEXT void erase_slot(Slot* s) {
  std::size_t mask = g_capacity - 1;
  std::size_t i = static_cast<std::size_t>(s - g_slots);
  std::size_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (!g_slots[j].user) break;
    std::size_t home = hash_of(g_slots[j].user) & mask;
    bool movable = (j > i) ? (home <= i || home > j) : (home <= i && home > j);
    if (movable) {
      g_slots[i] = g_slots[j];
      i = j;
    }
  }
  g_slots[i].user = nullptr;
  --g_used;
}

// Cached mappings taken out of a cache under the lock, unmapped after it is
// released (unmap_dropped): a munmap under the lock made every thread's large
// malloc and free wait for it (tens of microseconds for a big mapping).  A call
// drops at most the kLargeCacheEntries entries the cache holds.
struct Dropped {
  struct Range {
    void* base;
    std::size_t size;
  } r[kLargeCacheEntries];
  unsigned n = 0;
};

LCA_CORE_TEXT void unmap_dropped(Dropped* d) {
  for (unsigned i = 0; i < d->n; ++i) os_unmap(d->r[i].base, d->r[i].size);
  d->n = 0;
}

// (A fork between the drop and the unmap leaves the range mapped and unused in
// the child, like large_free's unmap of a block it does not cache.)
LCA_CORE_TEXT void cache_drop(LargeCache* c, unsigned i, Dropped* d) {
  d->r[d->n++] = Dropped::Range{c->entries[i].base, c->entries[i].map_size};
  c->bytes -= c->entries[i].map_size;
  c->mapped_bytes -= c->entries[i].map_size;
  c->entries[i] = c->entries[--c->count];
}

LCA_CORE_TEXT unsigned oldest_entry(const LargeCache* c) {
  unsigned oldest = 0;
  for (unsigned i = 1; i < c->count; ++i)
    if (c->entries[i].freed_at_ns < c->entries[oldest].freed_at_ns) oldest = i;
  return oldest;
}

LCA_CORE_TEXT void expire(LargeCache* c, std::uint64_t now, Dropped* d) {
  for (unsigned i = 0; i < c->count;)
    if (now - c->entries[i].freed_at_ns > kLargeCacheDecayNs)
      cache_drop(c, i, d);
    else
      ++i;
}

// The smallest cached mapping that holds map_size bytes aligned to alignment,
// among those bound to node when kByNode (-1 when none) -- or, when nothing can
// be bound in this process (chunk_can_place), among the unbound ones if none is
// bound to node: a fresh mapping would be unbound too (docs/design.md,
// "Binding impossible").  Two loops, so that the search of a cache that no
// request binds (numa=1 off, no NUMAAllocator) reads no node.
template <bool kByNode>
inline int best_fit(const LargeCache* c, std::size_t map_size, std::size_t alignment, int node) {
  int best = -1, unbound = -1;
  for (unsigned i = 0; i < c->count; ++i) {
    const auto& e = c->entries[i];
    if (e.map_size < map_size) continue;
    if (reinterpret_cast<std::uintptr_t>(e.base) & (alignment - 1)) continue;
    if (kByNode && e.node != node) {
      if (e.node < 0 && (unbound < 0 || e.map_size < c->entries[unbound].map_size)) unbound = static_cast<int>(i);
      continue;
    }
    if (best < 0 || e.map_size < c->entries[best].map_size) best = static_cast<int>(i);
  }
  if (kByNode && best < 0 && unbound >= 0 && !chunk_can_place()) best = unbound;
  return best;
}

// A cached mapping for a block of map_size bytes, aligned to alignment: the
// smallest that holds it.  Its pages are resident already, so reusing even a much
// longer one saves faults: the front becomes the block and a tail of an eighth or
// more stays cached as an entry of its own (a page-granular split of the
// mapping's range, which costs no system call).  *got receives the bytes taken,
// *bound_to the node the mapping is bound to (-1: unbound).
// A request for a node (node >= 0) takes only a mapping bound to that node: one
// of another node holds pages there, which the binding would not move
// (docs/design.md, "Large blocks under numa=1"); or, when nothing can be bound
// in this process, an unbound one (best_fit).
LCA_CORE_TEXT void* cache_take(LargeCache* c, std::size_t map_size, std::size_t alignment, int node, std::size_t* got,
                               bool* huge, int* bound_to) {
  int best = node < 0 ? best_fit<false>(c, map_size, alignment, node) : best_fit<true>(c, map_size, alignment, node);
  if (best < 0) return nullptr;
  LargeCache::Entry e = c->entries[best];
  *bound_to = e.node;
  c->entries[best] = c->entries[--c->count];
  std::size_t excess = e.map_size - map_size;
  *got = e.map_size;
  if (excess >= map_size / 8 && c->count < kLargeCacheEntries) {
    c->entries[c->count++] =
        LargeCache::Entry{static_cast<char*>(e.base) + map_size, excess, e.freed_at_ns, e.huge, e.node};
    *got = map_size;
  }
  c->bytes -= *got;
  *huge = e.huge;
  return e.base;
}

// Caches a freed mapping (room for it made already), merged with the cached
// neighbours it touches: the pieces of a mapping that cache_take split come
// together again, so the cache does not crumble into pieces too short to reuse.
// (Address ranges that touch are normally one kernel mapping; when they are not,
// the mremap that would grow one fails and large_alloc maps afresh.)  Mappings
// bound to different nodes stay apart: they are different kernel mappings, and
// one entry has one node.
LCA_CORE_TEXT void cache_put(LargeCache* c, LargeCache::Entry e) {
  c->bytes += e.map_size;
  for (unsigned i = 0; i < c->count;) {
    LargeCache::Entry& n = c->entries[i];
    bool before = static_cast<char*>(n.base) + n.map_size == e.base;
    if ((!before && static_cast<char*>(e.base) + e.map_size != n.base) || n.node != e.node) {
      ++i;
      continue;
    }
    if (before) e.base = n.base;
    e.map_size += n.map_size;
    e.huge = e.huge && n.huge;
    c->entries[i] = c->entries[--c->count];
  }
  c->entries[c->count++] = e;
}

// The longest cached mapping shorter than map_size, taken out of the cache for
// growing with mremap (its resident pages kept, only the new tail faults in);
// nullptr when there is none or the block needs more than page alignment.  For
// a node (node >= 0), only a mapping bound to it: the pages mremap adds are
// bound as the rest of the mapping is -- or, when nothing can be bound in this
// process, an unbound one if none is bound to the node (as best_fit).
LargeCache::Entry* cache_take_to_grow(LargeCache* c, std::size_t map_size, std::size_t alignment, int node,
                                      LargeCache::Entry* out) {
  if (alignment > os_page_size()) return nullptr;
  int best = -1, unbound = -1;
  for (unsigned i = 0; i < c->count; ++i) {
    const auto& e = c->entries[i];
    if (e.map_size >= map_size) continue;
    if (node < 0 || e.node == node) {
      if (best < 0 || e.map_size > c->entries[best].map_size) best = static_cast<int>(i);
    } else if (e.node < 0 && (unbound < 0 || e.map_size > c->entries[unbound].map_size)) {
      unbound = static_cast<int>(i);
    }
  }
  if (best < 0 && unbound >= 0 && !chunk_can_place()) best = unbound;
  if (best < 0) return nullptr;
  *out = c->entries[best];
  c->entries[best] = c->entries[--c->count];
  c->bytes -= out->map_size;
  return out;
}

// How many bytes of freed mappings a heap keeps: kLargeCacheBytes, plus as many
// as its live large blocks hold, so that a program churning big buffers reuses
// resident pages instead of faulting them in again (docs/design.md: large-churn,
// ml-training).  The bound follows the live bytes down: once the program has
// freed its big blocks the cache holds kLargeCacheBytes at most, and entries
// older than kLargeCacheDecayNs go at the heap's next large allocation or free.
LCA_CORE_TEXT std::size_t cache_limit(const LargeCache* c) {
  std::size_t live = c->alloc_bytes - c->free_bytes;
  return kLargeCacheBytes + live;
}

// Eight mapping sizes per doubling, page granular.  A request of a page or less
// maps one page: size 0 (aligned_alloc(alignment > kSpanSize, 0) comes here) made
// __builtin_clzll(0) undefined and the mapping 0 bytes long -- every such block
// had the same address, inside whatever mapping followed.
LCA_CORE_TEXT std::size_t mapping_size_for(std::size_t size, std::size_t page) {
  if (size <= page) return page;
  unsigned top = 63u - static_cast<unsigned>(__builtin_clzll(size));
  std::size_t step = top >= 3 ? std::size_t{1} << (top - 3) : 1;
  return align_up(size, step > page ? step : page);
}

}  // namespace

LCA_CORE_TEXT bool large_lookup(const void* p, LargeInfo* out) {
  lca_mutex_lock(&g_lock);
  Slot* s = find_slot(p);
  if (s) *out = LargeInfo{s->base, s->map_size, s->map_size - (static_cast<const char*>(p) - s->base.bytes()), s->domain};
  lca_mutex_unlock(&g_lock);
  return s != nullptr;
}

namespace {
constexpr std::size_t kHugePage = std::size_t{2} << 20;
// With LIBCALLOC_OPTIONS=huge_heap=1 (and huge-page support built in), blocks of
// 2 MiB and more start on a 2 MiB boundary and are advised for transparent huge
// pages: faulting them in costs one fault per 2 MiB instead of 512.  Not by
// default, as none of the rivals does: whether it pays depends on where the
// kernel finds free 2 MiB pages (docs/design.md: ml-training 3-4x less CPU time
// in one session on this VM, 1.3-2.5x more in another, where 97 % of the time
// went to clearing huge pages the hypervisor had to back again).
LCA_CORE_TEXT bool huge_large_blocks() {
#ifdef CALLOC_HUGE
  return g_options.huge_heap == 1;
#else
  return false;
#endif
}
}  // namespace

LCA_CORE_TEXT void* large_alloc(Domain* d, LargeCache* cache, std::size_t size, std::size_t alignment,
                  bool* fresh_zero, NodePlacement where) {
  std::size_t page = os_page_size();
  if (alignment < page) alignment = page;
  if (size > (std::size_t{1} << 47)) {
    errno = ENOMEM;
    return nullptr;
  }
  std::size_t map_size = mapping_size_for(size, page);
  Dropped dropped;
  lca_mutex_lock(&g_lock);
  std::uint64_t now = os_now_ns();
  expire(cache, now, &dropped);
  if (dropped.n) {
    lca_mutex_unlock(&g_lock);  // no system call under the lock
    unmap_dropped(&dropped);
    lca_mutex_lock(&g_lock);
  }
  std::size_t got = 0;
  bool huge = false;
  // The node the block is bound to: a cached mapping's own (where.node, or -1
  // when nothing can be bound or where.node < 0); a fresh one's where.node when
  // the kernel bound it.
  int node = where.node;
  void* base = cache_take(cache, map_size, alignment, where.node, &got, &huge, &node);
  *fresh_zero = false;
  LargeCache::Entry shorter;
  if (!base && !huge_large_blocks() && cache_take_to_grow(cache, map_size, alignment, where.node, &shorter)) {
    lca_mutex_unlock(&g_lock);  // no system call under the lock
    int saved_errno = errno;  // a failed mremap is no failure of the call: a new mapping follows
    base = os_remap(shorter.base, shorter.map_size, map_size, true);
    if (!base) errno = saved_errno;
    lca_mutex_lock(&g_lock);
    if (base) {
      got = map_size;
      huge = shorter.huge;
      node = shorter.node;
      cache->mapped_bytes += map_size - shorter.map_size;
    } else {
      cache->mapped_bytes -= shorter.map_size;
      lca_mutex_unlock(&g_lock);
      os_unmap(shorter.base, shorter.map_size);
      lca_mutex_lock(&g_lock);
    }
  }
  if (!base) {
    lca_mutex_unlock(&g_lock);  // no system call under the lock
    huge = huge_large_blocks() && map_size >= kHugePage;
    base = os_map_aligned(map_size, huge && alignment < kHugePage ? kHugePage : alignment);
    if (!base) return nullptr;
    if (huge) os_advise_huge(base, map_size, true);
    bool fallback = where.node >= 0 && !chunk_place(base, map_size, where);
    if (fallback) node = -1;
    got = map_size;
    *fresh_zero = true;
    lca_mutex_lock(&g_lock);
    cache->mapped_bytes += got;
    cache->bind_fallbacks += fallback;
  }
  if (!insert_slot(Slot{base, base, got, d, huge, static_cast<std::int16_t>(node), false})) {
    cache->mapped_bytes -= got;
    lca_mutex_unlock(&g_lock);
    os_unmap(base, got);
    errno = ENOMEM;
    return nullptr;
  }
  ++cache->live_count;
  LCA_SPLIT_STORES();  // placement.h++
  ++cache->alloc_count;
  cache->alloc_bytes += got;
  lca_mutex_unlock(&g_lock);
  return base;
}

LCA_CORE_TEXT std::size_t large_free(LargeCache* cache, void* p) {
  lca_mutex_lock(&g_lock);
  Slot* s = find_slot(p);
  if (!s) {
    lca_mutex_unlock(&g_lock);
    return 0;
  }
  void* base = s->base;
  std::size_t map_size = s->map_size;
  bool huge = s->huge;
  std::int16_t node = s->node;
  erase_slot(s);
  --cache->live_count;
  ++cache->free_count;
  cache->free_bytes += map_size;
  std::uint64_t now = os_now_ns();
  Dropped dropped;
  expire(cache, now, &dropped);
  std::size_t limit = cache_limit(cache);
  bool keep = map_size <= limit;
  if (keep) {
    while (cache->count && (cache->count == kLargeCacheEntries || cache->bytes + map_size > limit))
      cache_drop(cache, oldest_entry(cache), &dropped);
    cache_put(cache, LargeCache::Entry{base, map_size, now, huge, node});
    list_cache(cache);
    lca_mutex_unlock(&g_lock);
  } else {
    cache->mapped_bytes -= map_size;
    lca_mutex_unlock(&g_lock);
    os_unmap(base, map_size);
  }
  unmap_dropped(&dropped);  // no system call under the lock
  return map_size;
}

LargeResize large_resize(LargeCache* cache, void* p, std::size_t new_size, bool may_move,
                         void** result) {
  std::size_t page = os_page_size();
  std::size_t want = mapping_size_for(new_size, page);
  ThpPolicy thp = huge_thp_policy();  // (read once from /sys: not under the lock)
  lca_mutex_lock(&g_lock);
  Slot* s = find_slot(p);
  if (!s || s->base != p) {
    lca_mutex_unlock(&g_lock);
    return LargeResize::failed;
  }
  std::size_t have = s->map_size;
  Slot copy = *s;
  *result = p;
  // Within the mapping already, or shrinking by less than a quarter: keep it.
  if (want == have || (want < have && want >= have - have / 4)) {
    lca_mutex_unlock(&g_lock);
    return LargeResize::in_place;
  }
  if (want < have && huge_may_back(thp, copy.huge)) {
    // Transparent huge pages may back it: unmap whole 2 MiB ranges only, keep the
    // rest of the range the block now ends in (it is partly in use).
    auto base = reinterpret_cast<std::uintptr_t>(p);
    std::size_t keep = align_up(base + want, kHugePage) - base;
    if (keep > have) keep = have;
    huge_count_purge(huge_whole_ranges(base + keep, base + have), keep > want ? 1 : 0, keep - want);
    want = keep;
    if (want == have) {
      lca_mutex_unlock(&g_lock);
      return LargeResize::in_place;
    }
  }
  // The slot stays in the table, marked, while the lock is released for the
  // system call (the block is live and its caller's, so no one else resizes or
  // frees it meanwhile): a move unmaps p, and another thread's new mapping may
  // start at p with a slot of the same key.  Found by that key alone, the stale
  // slot was erased or read in place of the new one (realloc and
  // malloc_usable_size of the new block short by half, its free unmapping the
  // wrong length; issue 17 review).
  s->moving = true;
  lca_mutex_unlock(&g_lock);
  // errno is the caller's whatever the outcome: a resize that fails in place
  // may move, here or in the caller (a new block and a copy), and a call that
  // succeeds leaves errno as it was; a caller that fails sets ENOMEM itself.
  int saved_errno = errno;
  void* moved = os_remap(p, have, want, false);
  LargeResize how = LargeResize::in_place;
  if (!moved && may_move) {
    moved = os_remap(p, have, want, true);
    how = LargeResize::remapped;
  }
  errno = saved_errno;
  lca_mutex_lock(&g_lock);
  s = find_slot_moving(p);
  // (Unmarked already: a signal handler of this thread forked meanwhile, and
  // this is the child, whose fork handler unmarked it.)
  if (!s) s = find_slot(p);
  if (!moved) {
    // Not unmarked in place: s may be another resize's slot (see Slot::moving),
    // whose block would then be named by this one's marked slot, left to that
    // resize to erase (test_large_resize_fails_beside_a_move).  (Unmarked: the
    // fork's child, where it is this block's, as it was.)
    if (s && s->moving) {
      erase_slot(s);
      insert_slot(copy);  // cannot fail: one slot was just freed
    }
    lca_mutex_unlock(&g_lock);
    return LargeResize::failed;
  }
  if (s) erase_slot(s);
  copy.user = copy.base = moved;
  copy.map_size = want;
  insert_slot(copy);  // cannot fail: one slot was just freed
  cache->mapped_bytes += want;
  cache->mapped_bytes -= have;
  cache->alloc_bytes += want > have ? want - have : 0;
  cache->free_bytes += want < have ? have - want : 0;
  lca_mutex_unlock(&g_lock);
  *result = moved;
  return how;
}

void large_for_each_block(const Domain* d, void (*fn)(void* ctx, const void* addr, std::size_t len), void* ctx) {
  lca_mutex_lock(&g_lock);
  for (std::size_t i = 0; i < g_capacity; ++i)
    if (g_slots[i].user && g_slots[i].domain == d) fn(ctx, g_slots[i].base, g_slots[i].map_size);
  lca_mutex_unlock(&g_lock);
}

void large_release_domain(Domain* d, LargeCache* cache) {
  lca_mutex_lock(&g_lock);
  for (std::size_t i = 0; i < g_capacity;) {
    if (g_slots[i].user && g_slots[i].domain == d) {
      vg_block_forgotten(g_slots[i].user);
      os_unmap(g_slots[i].base, g_slots[i].map_size);
      erase_slot(&g_slots[i]);  // may shift a later entry into i: look at i again
    } else {
      ++i;
    }
  }
  Dropped dropped;
  while (cache->count) cache_drop(cache, 0, &dropped);
  cache->live_count = 0;
  cache->mapped_bytes = 0;
  unlist_cache(cache);
  lca_mutex_unlock(&g_lock);
  unmap_dropped(&dropped);
}

void large_trim(LargeCache* cache, bool all) {
  Dropped dropped;
  lca_mutex_lock(&g_lock);
  if (all)
    while (cache->count) cache_drop(cache, 0, &dropped);
  else
    expire(cache, os_now_ns(), &dropped);
  lca_mutex_unlock(&g_lock);
  // Unmapped before the return: the OOM retry (release_cached) maps again next.
  unmap_dropped(&dropped);
}

LargeCache large_counters(const LargeCache* cache) {
  lca_mutex_lock(&g_lock);
  LargeCache copy = *cache;
  lca_mutex_unlock(&g_lock);
  return copy;
}

std::size_t large_huge_ranges_in(std::uintptr_t lo, std::uintptr_t hi) {
  std::size_t n = 0;
  lca_mutex_lock(&g_lock);
  for (std::size_t i = 0; i < g_capacity; ++i)
    if (g_slots[i].user) n += ranges_of(g_slots[i].base, g_slots[i].map_size, lo, hi);
  for (const LargeCache* c = g_caches; c; c = c->next_listed)
    for (unsigned i = 0; i < c->count; ++i) n += ranges_of(c->entries[i].base, c->entries[i].map_size, lo, hi);
  lca_mutex_unlock(&g_lock);
  return n;
}

LCA_CORE_TEXT void large_lock_all() {
  lca_mutex_lock(&g_lock);
  fork_hold(&g_lock);
}
LCA_CORE_TEXT void large_unlock_all() { lca_mutex_unlock(&g_lock); }
LCA_CORE_TEXT void large_reinit_after_fork() {
  tsan_released_at_fork(&g_lock);
  pthread_mutex_init(&g_lock, nullptr);
  // A resize the fork caught (its thread is gone): the slot is the block's
  // again, unless a new mapping took its address meanwhile (the block moved).
  for (std::size_t i = 0; i < g_capacity;) {
    Slot* s = &g_slots[i];
    if (!s->user || !s->moving) {
      ++i;
    } else if (find_slot(s->user)) {
      erase_slot(s);  // may shift a later entry into i: look at i again
    } else {
      s->moving = false;
      ++i;
    }
  }
}

}  // namespace lca
