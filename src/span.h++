// span.h++ -- slabs: runs of 64 KiB holding objects of one size class.
//
// A span's descriptor lives in its chunk's header, so objects carry no header.
// The owner thread pops and pushes the local free list without atomics; other
// threads push onto the atomic remote list, which the owner collects when its local
// list runs dry.  Objects are carved lazily from a bump pointer, so a fresh span
// touches only the pages it hands out, and the object just below the bump pointer
// can grow in place over the uncarved slots after it (realloc).
// A bitmap of live objects, also out of band, catches double and invalid frees.
#ifndef LCA_SPAN_HXX
#define LCA_SPAN_HXX

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "chunk.h++"
#include "config.h"
#include "report.h++"
#include "sizeclass.h++"

namespace lca {

struct FreeObject {
  FreeObject* next;
};

constexpr unsigned kMaxObjectsPerSpan = kSpanSize / 16;
constexpr unsigned kMaxMultislot = 4;

// Span::flags: any bit set sends a free to the slow path.
constexpr std::uint8_t kSpanInactive = 1;   // the slot holds no span
constexpr std::uint8_t kSpanMultislot = 2;  // an object grew over several slots
constexpr std::uint8_t kSpanExhausted = 4;  // left behind by the allocator when it ran dry

// 128 bytes: the first cache line holds everything malloc and free touch; the
// second, what other threads write (the remote list) and rare bookkeeping.
struct alignas(128) Span {
  FreeObject* free;
  char* bump;  // next uncarved object
  char* end;   // end of the last whole object
  char* base;
  Heap* heap;
  std::uint32_t used;  // live objects, including remote frees not yet collected
  std::uint32_t obj_size;
  std::uint32_t reciprocal;  // ceil(2^32 / obj_size): offset -> index without a division
  std::uint16_t size_class;
  std::uint8_t flags;
  std::uint8_t multislot_count;
  // Written by other threads.
  alignas(64) std::atomic<FreeObject*> remote_free;
  Span* next;  // in the heap's queue for this class
  Span* prev;
  struct Multislot {
    std::uint32_t first;  // object index
    std::uint32_t slots;  // object slots it covers (>= 2)
  } multislot[kMaxMultislot];
};
static_assert(sizeof(Span) == 128, "span descriptors are 128 bytes");

struct SpanChunk {
  ChunkHeader header;
  std::uint64_t free_slots;   // bit i: span slot i unused
  std::uint64_t dirty_slots;  // unused slots whose pages may be resident
  std::uint32_t active_spans;
  Span spans[kSpansPerChunk];  // spans[0] describes nothing: slot 0 is the header
  // One bit per 16-byte granule of the chunk: set where an allocated object
  // starts.  Indexed straight from the address (see live_word), so a free checks
  // "start of a live object" with one load and no division.
  std::atomic<std::uint64_t> live[kChunkSize / 16 / 64];
};
static_assert(sizeof(SpanChunk) <= kChunkHeaderSize, "span descriptors must fit in slot 0");

inline SpanChunk* span_chunk_of(ChunkHeader* c) { return reinterpret_cast<SpanChunk*>(c); }
inline Span* span_of(SpanChunk* c, const void* p) {
  return &c->spans[(reinterpret_cast<std::uintptr_t>(p) >> kSpanShift) & (kSpansPerChunk - 1)];
}

void span_init(Span* s, SpanChunk* chunk, unsigned slot, unsigned size_class, Heap* heap);

inline std::uint32_t span_index(const Span* s, const void* p) {
  auto off = static_cast<std::uint64_t>(static_cast<const char*>(p) - s->base);
  return static_cast<std::uint32_t>((off * s->reciprocal) >> 32);
}

inline std::atomic<std::uint64_t>& live_word(const void* p) {
  auto a = reinterpret_cast<std::uintptr_t>(p);
  return reinterpret_cast<SpanChunk*>(a & ~(kChunkSize - 1))->live[(a & (kChunkSize - 1)) >> 10];
}
inline std::uint64_t live_mask(const void* p) {
  return std::uint64_t{1} << ((reinterpret_cast<std::uintptr_t>(p) >> 4) & 63);
}
inline bool live_test(const void* p) {
  return live_word(p).load(std::memory_order_relaxed) & live_mask(p);
}
// The owner writes with load + store, no read-modify-write.
inline void live_set(const void* p) {
  auto& w = live_word(p);
  w.store(w.load(std::memory_order_relaxed) | live_mask(p), std::memory_order_relaxed);
}
inline void live_clear(const void* p) {
  auto& w = live_word(p);
  w.store(w.load(std::memory_order_relaxed) & ~live_mask(p), std::memory_order_relaxed);
}
// Clears the bit from a thread that does not own the span, atomically, so that of
// two racing frees of one object exactly one finds the bit set.  Returns whether
// it was set (false: a double free).
inline bool live_clear_remote(const void* p) {
  std::uint64_t m = live_mask(p);
  return live_word(p).fetch_and(~m, std::memory_order_relaxed) & m;
}
inline std::size_t span_offset(const Span* s, const void* p) {
  return static_cast<std::size_t>(static_cast<const char*>(p) - s->base);
}

// Pops an object (owner only); nullptr when the span has nothing local left.
inline void* span_pop(Span* s) {
  FreeObject* o = s->free;
  if (__builtin_expect(o != nullptr, 1)) {
    s->free = o->next;
  } else if (s->bump < s->end) {
    o = reinterpret_cast<FreeObject*>(s->bump);
    s->bump += s->obj_size;
  } else {
    return nullptr;
  }
#if CALLOC_DEBUG
  // A corrupted free list (a write after free) would hand out foreign memory.
  std::size_t off = static_cast<std::size_t>(reinterpret_cast<char*>(o) - s->base);
  if (off >= static_cast<std::size_t>(s->end - s->base) || off % s->obj_size || live_test(o))
    report_fatal("Internal error", o, "span free list holds a bad object (heap corrupted by a write after free?)");
#endif
  ++s->used;
  live_set(o);
  return o;
}

// Why a pointer into a span is not a live object's start.
enum class SpanCheck { ok, not_object_start, not_live };

// Checks that p is the start of a live object of s; `index` receives its index.
inline SpanCheck span_check(const Span* s, const void* p, std::uint32_t* index) {
  std::size_t off = span_offset(s, p);  // wraps to huge below base
  if ((s->flags & kSpanInactive) || off >= static_cast<std::size_t>(s->end - s->base))
    return SpanCheck::not_object_start;
  std::uint32_t i = span_index(s, p);
  if (static_cast<std::size_t>(i) * s->obj_size != off) return SpanCheck::not_object_start;
  *index = i;
  return live_test(p) ? SpanCheck::ok : SpanCheck::not_live;
}

// Slots covered by object i (1 unless it grew in place).
std::uint32_t span_object_slots(const Span* s, std::uint32_t i);
inline std::size_t span_usable_size(const Span* s, std::uint32_t i) {
  std::size_t n = s->obj_size;
  if (__builtin_expect(s->flags & kSpanMultislot, 0)) n *= span_object_slots(s, i);
  return n;
}

// Frees object i at p (owner only; p already checked).  Returns the bytes freed.
std::size_t span_release_multislot(Span* s, std::uint32_t i);
inline std::size_t span_push_local(Span* s, void* p, std::uint32_t i) {
  live_clear(p);
  std::size_t bytes = s->obj_size;
  if (__builtin_expect(s->flags & kSpanMultislot, 0)) bytes = span_release_multislot(s, i);
  auto* o = static_cast<FreeObject*>(p);
  o->next = s->free;
  s->free = o;
  --s->used;
  return bytes;
}

// Lock-free push by a thread that does not own the span.
inline void span_push_remote(Span* s, void* p) {
  auto* o = static_cast<FreeObject*>(p);
  FreeObject* head = s->remote_free.load(std::memory_order_relaxed);
  do {
    o->next = head;
  } while (!s->remote_free.compare_exchange_weak(head, o, std::memory_order_release,
                                                 std::memory_order_relaxed));
}

// Moves the remote frees onto the local list (owner only).  Their live bits were
// cleared (and double frees caught) by the freeing threads.  Returns the number collected; *extra_bytes receives the
// bytes freed beyond one slot per object (objects that grew in place).
std::uint32_t span_collect_remote(Span* s, std::size_t* extra_bytes);

// Grows object i (at p, at the carving frontier) in place to cover new_size bytes
// by claiming uncarved slots.  Owner only.  False when it cannot.
bool span_grow_at_frontier(Span* s, void* p, std::uint32_t i, std::size_t new_size);

}  // namespace lca

#endif
