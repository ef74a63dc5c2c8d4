// span.c++ -- span initialisation, remote-free collection, in-place growth.
//
// The hot operations (pop, local push, remote push) are inline in span.h++;
// this file holds the rarer ones.
#include "span.h++"
#include "placement.h++"
#include "vg.h++"
#include "os.h++"

#include <algorithm>

#include <pthread.h>
#include <sys/random.h>
#include <time.h>


namespace lca {

// Until free_guard_init runs no object has been freed, so the value does not matter.
constinit std::uintptr_t g_free_guard_key = std::uintptr_t{1} << 63;

namespace {
constinit pthread_once_t g_guard_once = PTHREAD_ONCE_INIT;

LCA_CORE_TEXT void make_guard_key() {
  std::uint64_t key = 0;
  if (getrandom(&key, sizeof key, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof key)) {
    // No entropy yet (early boot): mix the clock and an address; still not a
    // value user data holds by accident.
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    key = (static_cast<std::uint64_t>(ts.tv_nsec) << 32 ^ static_cast<std::uint64_t>(ts.tv_sec)) *
              0x9e3779b97f4a7c15ull ^ reinterpret_cast<std::uintptr_t>(&key);
  }
  g_free_guard_key = static_cast<std::uintptr_t>(key) | std::uintptr_t{1} << 63;
}
}  // namespace

LCA_CORE_TEXT void free_guard_init() { pthread_once(&g_guard_once, make_guard_key); }

LCA_CORE_TEXT void span_init(Span* s, SpanChunk* chunk, unsigned slot, unsigned size_class, Heap* heap, bool zeroed) {
  char* base = reinterpret_cast<char*>(chunk) + (static_cast<std::size_t>(slot) << kSpanShift);
  std::uint32_t size = static_cast<std::uint32_t>(class_to_size(size_class));
  std::uint32_t count = static_cast<std::uint32_t>(kSpanSize / size);
  s->free = nullptr;
  s->bump = base;
  s->capacity = static_cast<std::uint16_t>(count);
  s->end = base;
  span_use_store(s, 0);
  s->stat_live = 0;
  s->zeroed = zeroed;
  s->obj_size = size;
  s->reciprocal = static_cast<std::uint32_t>(((std::uint64_t{1} << 32) + size - 1) / size);
  s->size_class = static_cast<std::uint16_t>(size_class);
  __atomic_store_n(&s->multislot_count, std::uint8_t{0}, __ATOMIC_RELAXED);
  __atomic_store_n(&s->purged, std::uint16_t{0}, __ATOMIC_RELAXED);
  span_set_owner(s, heap);
  s->next = s->prev = nullptr;
  s->remote_free.store(0, std::memory_order_relaxed);
  span_set_flags(s, 0);
  // A resident slot (a bigger class may have left every page resident): no
  // limit, carving there touches no new page.
  if (zeroed)
    span_extend_carve(s);
  else
    s->end = span_full_end(s);
}

LCA_CORE_TEXT void span_extend_carve(Span* s) {
  char* base = span_base(s);
  auto bump_off = static_cast<std::size_t>(s->bump - base);
  // The objects that end by the page boundary at or after the next object's
  // end plus the step: a page, or as much as the span carved so far (a class
  // that keeps growing takes ~5 slow paths per span, not 16).
  std::size_t step = bump_off > kCarvePage ? bump_off : kCarvePage;
  std::size_t target = (bump_off + s->obj_size + step - 1) & ~(kCarvePage - 1);
  std::size_t n = target / s->obj_size;
  if (n > s->capacity) n = s->capacity;
  char* limit = base + n * s->obj_size;
  if (limit > s->end) s->end = limit;
}

LCA_CORE_TEXT SpanCheck span_check(const Span* s, const void* p, std::uint32_t* index) {
  if ((span_flags_seen_remotely(s) & kSpanInactive) || !span_is_object_start_remote(s, p))
    return SpanCheck::not_object_start;
  std::uint32_t i = span_index(s, p);
  // Inside an object that grew over several slots: a slot boundary, not a block.
  for (unsigned k = 0, n = span_multislot_count(s); k < n; ++k) {
    Span::Multislot m = span_multislot_at(s, k);
    if (i > m.first && i < static_cast<std::uint32_t>(m.first) + m.slots) return SpanCheck::not_object_start;
  }
  *index = i;
  // An object of a purged page is on no list: freed already (its guard reads 0).
  if (__builtin_expect(span_flags_seen_remotely(s) & kSpanPurged, 0) && span_object_purged(s, p))
    return SpanCheck::not_live;
  // Valgrind mode: the guard word of a live block is user data, perhaps undefined.
  std::uintptr_t guard = on_valgrind() ? vg_peek_word(&static_cast<const FreeObject*>(p)->guard)
                                       : static_cast<const FreeObject*>(p)->guard;
  return guard == free_guard(p) ? SpanCheck::not_live : SpanCheck::ok;
}

#if CALLOC_DEBUG
void span_debug_check_free(const Span* s, const FreeObject* o) {
  std::size_t off = span_offset(s, o);
  if (off >= static_cast<std::size_t>(span_full_end(s) - span_base(s)) || off % s->obj_size || !is_free_object(o))
    report_fatal("Internal error", o, "span free list holds a bad object (heap corrupted by a write after free?)");
}
#endif

LCA_CORE_TEXT std::uint32_t span_object_slots(const Span* s, std::uint32_t i) {
  for (unsigned k = 0, n = span_multislot_count(s); k < n; ++k) {
    Span::Multislot m = span_multislot_at(s, k);
    if (m.first == i) return m.slots;
  }
  return 1;
}

LCA_CORE_TEXT std::size_t span_release_multislot(Span* s, std::uint32_t i) {
  for (unsigned k = 0; k < s->multislot_count; ++k) {
    if (s->multislot[k].first != i) continue;
    std::uint32_t slots = s->multislot[k].slots;
    // The extra slots go back on the free list as ordinary objects.
    for (std::uint32_t j = 1; j < slots; ++j) {
      auto* o = reinterpret_cast<FreeObject*>(span_base(s) + static_cast<std::size_t>(i + j) * s->obj_size);
      o->next = s->free;
      o->guard = free_guard(o);
      s->free = o;
    }
    span_use_add(s, -std::uint64_t{slots - 1});
    // A hole, after the guards (other threads' span_check: see Span::multislot).
    Span::Multislot hole{kNoMultislot, 0};
    __atomic_store(&s->multislot[k], &hole, __ATOMIC_RELEASE);
    unsigned n = s->multislot_count;
    while (n && s->multislot[n - 1].first == kNoMultislot) --n;
    __atomic_store_n(&s->multislot_count, static_cast<std::uint8_t>(n), __ATOMIC_RELEASE);
    if (!n) span_set_flags(s, s->flags & static_cast<std::uint8_t>(~kSpanMultislot));
    return static_cast<std::size_t>(slots) * s->obj_size;
  }
  return s->obj_size;
}

LCA_CORE_TEXT std::uint32_t span_collect_remote(Span* s) {
  std::uint64_t w = s->remote_free.exchange(0, std::memory_order_acquire);
  std::uint32_t n = remote_word_count(w);
  if (n == 0) return 0;
  char* base = span_base(s);
  auto* head = reinterpret_cast<FreeObject*>(base + static_cast<std::size_t>(remote_word_head(w) - 1) * s->obj_size);
  if (__builtin_expect(!(s->flags & kSpanMultislot), 1)) {
    // The freeing threads checked the objects and set their guards: splice.
    auto* tail = reinterpret_cast<FreeObject*>(base + static_cast<std::size_t>(remote_word_tail(w) - 1) * s->obj_size);
    tail->next = s->free;
    s->free = head;
    span_use_add(s, -std::uint64_t{n});
    return n;
  }
  // Objects that grew over several slots give their extra slots back one by one
  // (their bytes were counted by the freeing heaps: count_foreign_free).
  for (FreeObject* o = head; o;) {
    FreeObject* next = o->next;
    span_push_local(s, o, span_index(s, o));
    o = next;
  }
  return n;
}

LCA_CORE_TEXT bool span_grow_at_frontier(Span* s, void* p, std::uint32_t i, std::size_t new_size) {
  std::uint32_t slots = span_object_slots(s, i);
  char* obj_end = static_cast<char*>(p) + static_cast<std::size_t>(slots) * s->obj_size;
  if (obj_end != s->bump) return false;
  std::size_t need = (new_size + s->obj_size - 1) / s->obj_size;
  if (need <= slots) return true;
  std::size_t extra = (need - slots) * s->obj_size;
  if (static_cast<std::size_t>(span_full_end(s) - s->bump) < extra) return false;
  // Within the carve limit only: a block that grew page after page over a clean
  // slot kept the whole slot resident once it moved on (calloc-workloads
  // webserver's response buffer, 256 B to 32 KiB: 64 KiB of the 256-byte
  // class's slot; docs/design.md, "Webserver's heap peak").
  if (static_cast<std::size_t>(s->end - s->bump) < extra) return false;
  unsigned n = s->multislot_count, k = 0;
  while (k < n && s->multislot[k].first != i) ++k;
  if (k == n) {
    k = 0;
    while (k < n && s->multislot[k].first != kNoMultislot) ++k;  // a hole
    if (k == kMaxMultislot) return false;
  }
  // One word, before the count: see Span::multislot.
  Span::Multislot m{static_cast<std::uint16_t>(i), static_cast<std::uint16_t>(need)};
  __atomic_store(&s->multislot[k], &m, __ATOMIC_RELEASE);
  if (k == n) __atomic_store_n(&s->multislot_count, static_cast<std::uint8_t>(n + 1), __ATOMIC_RELEASE);
  span_set_flags(s, s->flags | kSpanMultislot);
  span_set_bump(s, s->bump + extra);
  span_use_add(s, need - slots);
  return true;
}

// --- purged pages ------------------------------------------------------------
namespace {
using Bits = std::uint64_t[kMaxObjectsPerSpan / 64];
inline void bit_set(Bits& b, std::uint32_t i) { b[i / 64] |= std::uint64_t{1} << (i % 64); }
// Whether bits first..last (inclusive) are all set.
bool bits_all_set(const Bits& b, std::uint32_t first, std::uint32_t last) {
  for (std::uint32_t i = first; i <= last;) {
    std::uint32_t w = i / 64, lo = i % 64;
    std::uint32_t hi = (last / 64 == w) ? last % 64 : 63;
    std::uint64_t want = (~std::uint64_t{0} >> (63 - hi)) & (~std::uint64_t{0} << lo);
    if ((b[w] & want) != want) return false;
    i = w * 64 + hi + 1;
  }
  return true;
}
// The first object that starts at or after byte offset off.
inline std::uint32_t first_start_at(const Span* s, std::size_t off) {
  return static_cast<std::uint32_t>((off + s->obj_size - 1) / s->obj_size);
}
}  // namespace

LCA_CORE_TEXT std::size_t span_purge_bound(const Span* s, unsigned min_pages) {
  if (s->flags & (kSpanInactive | kSpanMultislot)) return 0;
  // (Transparent huge pages: purged in whole 2 MiB ranges only, as for slots.)
  if (chunk_base(s)->flags & kChunkMayBeHuge) return 0;
  auto carved_pages = static_cast<std::size_t>(s->bump - span_base(s)) / kCarvePage;
  // A live object keeps at most size / 4 KiB + 2 pages.
  std::size_t held = std::size_t{span_used(s)} * (s->obj_size / kCarvePage + 2) +
                     static_cast<std::size_t>(bit_count(s->purged));
  return carved_pages >= held + min_pages ? carved_pages - held : 0;
}

std::size_t span_prefetch_carved(const Span* s, std::size_t carved_bytes, std::uint16_t purged) {
  const char* base = span_base(s);
  std::size_t step = s->obj_size < 64 ? 64 : s->obj_size;
  std::size_t n = 0;
  for (std::size_t off = 0; off < carved_bytes; off += step) {
    if ((purged >> (off / kCarvePage)) & 1) continue;
    __builtin_prefetch(base + off);
    // (Without it GCC 12 drops the whole loop: the prefetches are all it does.)
    asm volatile("" : : "r"(base + off));
    ++n;
  }
  return n;
}

unsigned span_purge_free_pages(Span* s, unsigned min_pages) {
  if (!span_purge_bound(s, min_pages)) return 0;
  char* base = span_base(s);
  std::size_t carved_bytes = static_cast<std::size_t>(s->bump - base);
  auto pages = static_cast<unsigned>(carved_bytes / kCarvePage);  // pages wholly below the bump pointer
  std::uint16_t purged = s->purged;
  std::uint32_t carved = static_cast<std::uint32_t>(carved_bytes / s->obj_size);
  // The walk below reads one cold object after another, each load waiting for
  // the one before (96 % of this function's samples, on that load).  The lines
  // of the carved objects on resident pages are asked for first, all at once
  // (not a purged page's: a read there would fault the zero page in).
  span_prefetch_carved(s, carved_bytes, purged);
  // The objects that are not live: on the local free list, or starting on a
  // purged page.  (Objects on the remote list, or on another thread's foreign
  // list or remote batch, count as live: their pages stay.)
  Bits notlive = {};
  std::uint32_t listed = 0;
  for (FreeObject* o = s->free; o && listed <= kMaxObjectsPerSpan; o = o->next, ++listed)
    bit_set(notlive, span_index(s, o));
  for (unsigned k = 0; k < kSpanPages; ++k) {
    if (!((purged >> k) & 1)) continue;
    std::uint32_t end = first_start_at(s, (k + 1) * kCarvePage);
    for (std::uint32_t i = first_start_at(s, k * kCarvePage); i < end && i < carved; ++i) bit_set(notlive, i);
  }
  std::uint16_t fresh = 0;
  for (unsigned k = 0; k < pages; ++k) {
    if ((purged >> k) & 1) continue;
    // Every object overlapping page k (all carved: the page is below bump).
    auto first = static_cast<std::uint32_t>(k * kCarvePage / s->obj_size);
    auto last = static_cast<std::uint32_t>(((k + 1) * kCarvePage - 1) / s->obj_size);
    if (bits_all_set(notlive, first, last)) fresh = static_cast<std::uint16_t>(fresh | (1u << k));
  }
  auto n = bit_count(fresh);
  if (n == 0 || n < min_pages) return 0;
  // The objects that start on those pages leave the free list (read before
  // the purge zeroes their links).
  FreeObject** link = &s->free;
  while (FreeObject* o = *link) {
    if ((fresh >> (span_offset(s, o) / kCarvePage)) & 1)
      *link = o->next;
    else
      link = &o->next;
  }
  __atomic_store_n(&s->purged, static_cast<std::uint16_t>(purged | fresh), __ATOMIC_RELAXED);
  if (!(s->flags & kSpanPurged)) span_set_flags(s, s->flags | kSpanPurged);
  if (s->end > s->bump) s->end = s->bump;  // take the purged pages back before carving new ones
  for (unsigned k = 0; k < kSpanPages;) {
    if (!((fresh >> k) & 1)) {
      ++k;
      continue;
    }
    unsigned run = k;
    while (run < kSpanPages && ((fresh >> run) & 1)) ++run;
    os_purge(base + k * kCarvePage, (run - k) * kCarvePage);
    k = run;
  }
  return n;
}

std::uint32_t span_recarve(Span* s) {
  char* base = span_base(s);
  std::uint32_t carved = span_index(s, s->bump);
  std::uint32_t pushed = 0;
  std::uint16_t purged = s->purged;
  while (purged && !pushed) {
    auto k = static_cast<unsigned>(__builtin_ctz(purged));
    purged = static_cast<std::uint16_t>(purged & ~(1u << k));
    std::uint32_t first = first_start_at(s, k * kCarvePage);
    std::uint32_t end = first_start_at(s, (k + 1) * kCarvePage);
    if (end > carved) end = carved;
    // Highest first, so that pops go up in address order.
    for (std::uint32_t i = end; i-- > first;) {
      auto* o = reinterpret_cast<FreeObject*>(base + static_cast<std::size_t>(i) * s->obj_size);
      o->next = s->free;
      o->guard = free_guard(o);
      s->free = o;
      ++pushed;
    }
  }
  __atomic_store_n(&s->purged, purged, __ATOMIC_RELAXED);
  if (!purged) span_set_flags(s, s->flags & static_cast<std::uint8_t>(~kSpanPurged));
  return pushed;
}

// --- defragmentation support (defrag.c++) -----------------------------------

void span_sort_free_list(Span* s) {
  FreeObject* objs[kMaxObjectsPerSpan];
  std::uint32_t n = 0;
  for (FreeObject* o = s->free; o && n < kMaxObjectsPerSpan; o = o->next) objs[n++] = o;
  if (n < 2) return;
  std::sort(objs, objs + n);
  for (std::uint32_t k = 0; k + 1 < n; ++k) objs[k]->next = objs[k + 1];
  objs[n - 1]->next = nullptr;
  s->free = objs[0];
}

std::uint32_t span_trim_tail(Span* s) {
  // (A purged page's objects read as live here: not below them.)
  if ((s->flags & (kSpanInactive | kSpanMultislot | kSpanPurged)) || span_has_remote(s) || span_used(s) == 0) return 0;
  char* base = span_base(s);
  std::uint32_t carved = static_cast<std::uint32_t>((s->bump - base) / s->obj_size);
  std::uint32_t keep = carved;
  while (keep > 0) {
    const char* p = base + static_cast<std::size_t>(keep - 1) * s->obj_size;
    std::uintptr_t guard =
        on_valgrind() ? vg_peek_word(&reinterpret_cast<const FreeObject*>(p)->guard) : reinterpret_cast<const FreeObject*>(p)->guard;
    if (guard != free_guard(p)) break;  // live
    --keep;
  }
  if (keep == carved) return 0;
  char* new_bump = base + static_cast<std::size_t>(keep) * s->obj_size;
  FreeObject** link = &s->free;
  while (FreeObject* o = *link) {
    if (reinterpret_cast<char*>(o) >= new_bump)
      *link = o->next;
    else
      link = &o->next;
  }
  span_set_bump(s, new_bump);
  s->zeroed = 0;  // the uncarved slots hold old bytes: carving clears guards again
  std::uintptr_t page = os_page_size();
  std::uintptr_t from = (reinterpret_cast<std::uintptr_t>(new_bump) + page - 1) & ~(page - 1);
  std::uintptr_t to = reinterpret_cast<std::uintptr_t>(base) + kSpanSize;
  if (to > from) os_purge(reinterpret_cast<void*>(from), to - from);
  return carved - keep;
}

}  // namespace lca
