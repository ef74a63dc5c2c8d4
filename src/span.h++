// span.h++ -- slabs: runs of 64 KiB holding objects of one size class.
//
// A span's descriptor lives in its chunk's header, so objects carry no header.
// The owner thread pops and pushes the local free list without atomics; other
// threads push onto the atomic remote list, which the owner collects when its local
// list runs dry.  Objects are carved lazily from a bump pointer, up to a carve
// limit (below), so a fresh span touches only the pages it hands out, and the
// object just below the bump pointer can grow in place over the uncarved slots
// after it, below the carve limit (realloc).
// Frees are checked without any per-object metadata: a pointer must be the start
// of a carved object (one multiply against the span's reciprocal, one compare with
// the bump pointer), and a free object carries a guard word -- its address xor a
// per-process random key -- in its second word, which malloc clears: a free that
// finds the guard in place is a double free.
// The pages of a span that hold only free objects can be given back to the OS
// while the span stays in use (span_purge_free_pages): their objects then sit
// on no list, a page mask says which, and a flag sends the span's frees to the
// slow path, where that mask catches a free of such an object; allocation
// brings the pages back (span_recarve) before it carves new ones.
#ifndef LCA_SPAN_HXX
#define LCA_SPAN_HXX

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "chunk.h++"
#include "config.h"
#include "report.h++"
#include "sizeclass.h++"
#include "vg.h++"

namespace lca {

// Every object on a free list (local or remote) has this layout; every allocated
// object has something other than its guard in `guard` (malloc stores 0 there and
// the user cannot guess the key).  Objects are at least 16 bytes.
struct FreeObject {
  FreeObject* next;
  std::uintptr_t guard;
};

// The random key of the guard words: set once, before the first heap exists
// (free_guard_init), never changed after.  Its top bit is set, so no guard is 0.
extern std::uintptr_t g_free_guard_key LCA_HIDDEN;
void free_guard_init();
inline std::uintptr_t free_guard(const void* p) { return reinterpret_cast<std::uintptr_t>(p) ^ g_free_guard_key; }
inline bool is_free_object(const void* p) {
  return static_cast<const FreeObject*>(p)->guard == free_guard(p);
}

constexpr unsigned kMaxObjectsPerSpan = kSpanSize / 16;
constexpr unsigned kMaxMultislot = 4;
// Span::multislot's free entry: no object index (kMaxObjectsPerSpan <= 0xffff).
constexpr std::uint16_t kNoMultislot = 0xffff;
constexpr std::uint64_t kUseLiveMask = 0x1fff;
constexpr std::uint64_t kUseHeadMark = 0x2000;
constexpr unsigned kUseCountShift = 14;
constexpr std::uint64_t kUseAlloc = (std::uint64_t{1} << kUseCountShift) + 1;  // one allocation: live + 1, count + 1
static_assert(kMaxObjectsPerSpan <= kUseLiveMask, "the live count fits its bits");
static_assert(kMaxObjectsPerSpan <= 0xffff, "Span::capacity and multislot indices fit 16 bits");
// The carve limit's unit and least step (span_extend_carve): one page.
constexpr std::size_t kCarvePage = 4096;
// Pages of a span, one bit each in Span::purged.
constexpr unsigned kSpanPages = static_cast<unsigned>(kSpanSize / kCarvePage);
static_assert(kSpanPages <= 16, "Span::purged has a bit per page");

// Span::flags: any bit set sends a free to the slow path (fast_heap is then
// no_fast_heap(), so the fast path tests one field).
constexpr std::uint8_t kSpanInactive = 1;   // the slot holds no span
constexpr std::uint8_t kSpanMultislot = 2;  // an object grew over several slots
constexpr std::uint8_t kSpanExhausted = 4;  // left behind by the allocator when it ran dry
// A pooled span a free took (adopt_orphan_span) while its owner has allocated
// nothing from it: retired when it empties, not kept as the head.
constexpr std::uint8_t kSpanAdopted = 8;
// Some pages of the span were purged (Span::purged): frees check the mask on the
// slow path (span_check), since a purged object's guard word reads zero.
constexpr std::uint8_t kSpanPurged = 16;

// 128 bytes: the first cache line holds everything malloc and free touch; the
// second, what other threads write (the remote list) and rare bookkeeping.
struct alignas(128) Span {
  FreeObject* free;
  // Next uncarved object.  Written by the owner only; a thread freeing one of
  // the span's objects reads it without a lock (span_is_object_start_remote,
  // from span_check and remote_free_checked_span), by design: the owner's
  // stores that may meet that read (span_set_bump: carving, growth at the
  // frontier, trimming) and the read are relaxed atomics -- plain moves on x86-64.
  char* bump;
  // The carve limit: bump stops here (span_extend_carve moves it on, up to
  // span_full_end).  Not the span's end: see "Carve limit" below.
  char* end;
  Heap* heap;
  // heap when flags == 0, else no_fast_heap(): what free's fast path compares
  // with the caller's heap (block_free), in any thread's free, while the owner
  // may rewrite it (span_set_flags): both sides relaxed atomics
  // (span_fast_heap_is).
  Heap* fast_heap;
  // The use word (span_use): bits 0-12 the live objects, including remote
  // frees not yet collected (at most kMaxObjectsPerSpan); bit 13 set while the
  // span heads its class's queue (the current span); bits 14-63 the owner's
  // allocations from the span not yet folded into its heap's statistics
  // (malloc adds kUseAlloc: one add for both counts; tcache.h++, "Statistics").
  // Free's fast path subtracts 1 and tests the low 14 bits for zero to find a
  // span to retire, with no branch taken when the current span empties.
  // Written by the owner only, read by statistics readers: relaxed atomics.
  std::uint64_t use;
  std::uint32_t obj_size;
  std::uint32_t reciprocal;  // ceil(2^32 / obj_size): offset -> index without a division
  std::uint16_t size_class;
  // kSpan* bits.  Written by the span's holder only (span_set_flags, a relaxed
  // atomic store); read plainly by the holder, as a relaxed atomic by a thread
  // that may not hold the span (span_flags_seen_remotely).
  std::uint8_t flags;
  std::uint8_t multislot_count;
  // Objects the slot holds (at most kMaxObjectsPerSpan): span_full_end is
  // base + capacity * obj_size.  Read on slow paths only.
  std::uint16_t capacity;
  // The slot's memory was zero when the span was made (a fresh or purged slot):
  // objects carved from it need no guard clearing, so the page faults of a new
  // span happen in the program's first write, not inside malloc.
  std::uint8_t zeroed;
  std::uint8_t reserved[1];
  // Written by other threads: the remote-free list, as one word (remote_word_*
  // below) naming its head, its tail and its length, so the owner splices the
  // whole list onto its local one in O(1) instead of walking it.
  alignas(64) std::atomic<std::uint64_t> remote_free;
  Span* next;  // in the heap's queue for this class
  Span* prev;
  // Objects that grew over several slots.  Written by the owner, read by any
  // thread's span_check and span_object_slots (a remote free, realloc or
  // malloc_usable_size): each entry is one 4-byte word, stored with release
  // after the guards of a release, loaded with acquire (span_multislot_at); an
  // entry never moves while its object is live -- a release leaves a hole
  // (first == kNoMultislot), reused by the next growth, and multislot_count
  // (a high-water mark) drops only over holes at the end.  A reader thus sees
  // every live grown object that it may touch, whole.
  struct alignas(4) Multislot {
    std::uint16_t first;  // object index (kNoMultislot: a hole)
    std::uint16_t slots;  // object slots it covers (>= 2; 0 in a hole)
  } multislot[kMaxMultislot];
  // Purged pages (span_purge_free_pages): bit k set when the span's page k
  // (kCarvePage bytes) was given back to the OS while every object on it was
  // free; the objects that start on it are then on no list (neither free nor
  // live) until span_recarve brings the page back.  Written by the owner,
  // read by any thread's span_check: relaxed atomics.
  std::uint16_t purged;
  std::uint8_t reserved2[14];
  // Statistics: the live count when the span's counts were last folded into
  // its heap, moved with every change of the live count that is neither an
  // allocation nor a local free (remote frees collected, slots of an object
  // that grew).  The owner's frees not yet folded are then
  // allocations-not-folded + stat_live - live, modulo 2^64 (stat_live goes
  // "below zero" while a current span's remote frees are collected).  Changed
  // under the heap's stats_lock only (tcache.h++).
  std::uint64_t stat_live;
};
static_assert(sizeof(Span) == 128, "span descriptors are 128 bytes");

struct SpanChunk {
  ChunkHeader header;
  std::uint64_t free_slots;   // bit i: span slot i unused
  std::uint64_t dirty_slots;  // unused slots whose pages may be resident
  std::uint32_t active_spans;
  Span spans[kSpansPerChunk];  // spans[0] describes nothing (all zero): slot 0 is the header
};
static_assert(sizeof(SpanChunk) <= kChunkHeaderSize, "span descriptors must fit in slot 0");

// The number of bits set in a mask (of slots, of pages).  Not __builtin_popcount: without
// -mpopcnt that calls libgcc's __popcountdi2, which the link puts at the end of
// libcalloc's text, in a 64 KiB fault-around window of its own that a purge
// then maps (placement.h++).
inline unsigned bit_count(std::uint64_t bits) {
#ifdef __POPCNT__
  return static_cast<unsigned>(__builtin_popcountll(bits));
#else
  bits -= (bits >> 1) & 0x5555555555555555ull;
  bits = (bits & 0x3333333333333333ull) + ((bits >> 2) & 0x3333333333333333ull);
  bits = (bits + (bits >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<unsigned>((bits * 0x0101010101010101ull) >> 56);
#endif
}

inline SpanChunk* span_chunk_of(ChunkHeader* c) { return reinterpret_cast<SpanChunk*>(c); }
inline Span* span_of(SpanChunk* c, const void* p) {
  // &c->spans[slot of p], with the shift and the scaling folded into one shift.
  static_assert(sizeof(Span) == 128);
  auto a = reinterpret_cast<std::uintptr_t>(p);
  return reinterpret_cast<Span*>(reinterpret_cast<char*>(c->spans) +
                                 ((a >> (kSpanShift - 7)) & ((kSpansPerChunk - 1) << 7)));
}

// The use word: the owner's plain moves on x86-64, atomic for the statistics
// reader that reads it meanwhile.  Only the owner writes it.
inline std::uint64_t span_use(const Span* s) { return __atomic_load_n(&s->use, __ATOMIC_RELAXED); }
inline void span_use_store(Span* s, std::uint64_t v) { __atomic_store_n(&s->use, v, __ATOMIC_RELAXED); }
inline void span_use_add(Span* s, std::uint64_t d) { span_use_store(s, span_use(s) + d); }
inline std::uint32_t span_used(const Span* s) { return static_cast<std::uint32_t>(span_use(s) & kUseLiveMask); }
// Allocations from s not yet folded into its heap's counters (tcache.h++).
inline std::uint64_t span_use_allocs(const Span* s) { return span_use(s) >> kUseCountShift; }
// One allocation from s by its owner: live + 1 and the allocation counted, in
// one add to memory (malloc's fast path; as Counter::add, no lock prefix).
inline void span_use_alloc(Span* s) {
#if defined(__x86_64__)
  asm("addq %1, %0" : "+m"(s->use) : "i"(kUseAlloc));
#else
  span_use_add(s, kUseAlloc);
#endif
}

// A local free by the owner: live - 1 (the free is counted from live when
// folded).  True when that leaves no live object and no current-span mark
// (the low 14 bits zero): the span may be retired.  On x86-64 one subtract to
// memory and a test of the stored word, as span_use_alloc's add; the test
// reads the store back (forwarded) instead of keeping the word in a register
// for a 64-bit store and a separate test (two instructions less on free's
// fast path).
inline bool span_use_release(Span* s) {
#if defined(__x86_64__)
  bool idle;
  asm("subq $1, %0\n\ttestl %2, %0" : "+m"(s->use), "=@ccz"(idle) : "i"(kUseLiveMask | kUseHeadMark));
  return idle;
#else
  std::uint64_t left = span_use(s) - 1;
  span_use_store(s, left);
  return (left & (kUseLiveMask | kUseHeadMark)) == 0;
#endif
}

void span_init(Span* s, SpanChunk* chunk, unsigned slot, unsigned size_class, Heap* heap, bool zeroed);

// A pointer no thread heap equals (and not nullptr, which a thread without a heap has).
inline Heap* no_fast_heap() { return reinterpret_cast<Heap*>(std::uintptr_t{1}); }

// Span::heap as a thread that may not own s reads it (a free, a realloc): a
// span changes owner when an exiting thread gives it to a pool of orphaned
// spans and when a refill takes it from there, while other threads free into it
// (tcache.h++, span reclaim).  Relaxed atomics (plain
// moves on x86-64): such a reader only asks "is it mine?", and the answer is no
// whichever value it sees, unless it is the owner, which wrote the value itself.
inline Heap* span_owner(const Span* s) { return __atomic_load_n(&s->heap, __ATOMIC_RELAXED); }
inline void span_set_owner(Span* s, Heap* h) { __atomic_store_n(&s->heap, h, __ATOMIC_RELAXED); }
// Span::flags and Span::fast_heap are written here only, by whoever holds s:
// its heap's thread (a private domain's heap: under the domain lock), or a
// pool lock holder while s is in no heap (pool.c++, the refills,
// adopt_orphan_span).  Both stores are relaxed atomics -- plain moves on
// x86-64, no lock prefix (nobody else writes the words meanwhile) -- because
// other threads read both without a lock, by design: any free reads fast_heap
// (span_fast_heap_is), a free of another heap's block the flags
// (span_flags_seen_remotely); why relaxed is enough is said at those two.
// Every call is on a slow path.  The holder's own reads of the flags stay
// plain: no other thread writes them meanwhile, and reads do not race with
// reads.  (Until 2026-12-07 all these accesses were plain and
// contrib/tsan.supp named span_set_flags and both readers; a report whose
// other stack TSan lost escaped the entries, as the arena tag's and
// Span::bump's had.)
inline void span_set_flags(Span* s, std::uint8_t flags) {
  __atomic_store_n(&s->flags, flags, __ATOMIC_RELAXED);
  if (on_valgrind()) {
    // No fast path in Valgrind mode: fast_heap is no_fast_heap() from the span's
    // first use on and never written again, so that free's unlocked read of it
    // (block_free) is no race for helgrind and DRD (which do not know relaxed
    // atomics from plain accesses).
    if (s->fast_heap != no_fast_heap()) __atomic_store_n(&s->fast_heap, no_fast_heap(), __ATOMIC_RELAXED);
    return;
  }
  __atomic_store_n(&s->fast_heap, flags ? no_fast_heap() : s->heap, __ATOMIC_RELAXED);
}
// Span::fast_heap as free's fast path reads it (block_free), for the span of
// whatever block is freed, while its holder may rewrite it (span_set_flags): a
// relaxed atomic load.  The caller only asks "is it my heap?".  Only a thread
// whose heap holds s stores its heap there; every other value (another heap,
// no_fast_heap(), orphan_span_heap()) fails the comparison, and the free takes
// the slow path.  When the caller's heap holds s, the last store was its own
// (sequenced before) or came before the lock by which it took s: coherence
// gives it that value or a later one of its own, never an older one.  When it
// does not, its heap's value could only be an older one, from before its heap
// let s go; but letting go stores orphan_span_heap() or no_fast_heap()
// (heap_orphan_spans, a retire), in the thread that then had the heap, before
// the caller's thread got it (an abandoned heap is adopted under the domain
// lock), so that store happens before the caller's read as well.  No
// other field is read through the value: when it matches, the caller holds s
// and the fast path's plain accesses are its own.
//   On x86-64 (but in TSan builds, which must see an atomic) the load is cmp's
// memory operand, in asm: GCC does not fold an atomic load into another
// instruction, and the separate mov made free's fast path one instruction
// longer (callgrind: 37 instead of 36 per free of a small block).  An
// aligned 8-byte operand is read in one access, as by __atomic_load_n's mov,
// and the compiler sees the asm read the field.
inline bool span_fast_heap_is(const Span* s, const Heap* h) {
#if defined(__x86_64__) && !LCA_TSAN
  bool same;
  asm("cmpq %1, %2" : "=@ccz"(same) : "m"(s->fast_heap), "r"(h));
  return same;
#else
  return __atomic_load_n(&s->fast_heap, __ATOMIC_RELAXED) == h;
#endif
}

// Span::flags as a thread that does not own s may read it (free_remote_batched,
// through remote_free_checked_span; span_check and span_usable_size, from
// block_lookup in a free, realloc or malloc_usable_size by another thread;
// report_span_free_error, and ASan's find_block):
// the owner may rewrite the byte meanwhile (span_set_flags), so a relaxed
// atomic load.  Such a reader asks about a block p it holds live, whose
// handing over (the user's synchronisation) came after every store that p's
// allocation and growth made; coherence then gives it one of those values or
// a later one.  kSpanInactive is clear in all of them (the span stays active
// while p is live).  kSpanMultislot is set in all of them when p grew over
// several slots (its entry stays while p is live, and the flag is cleared only
// with the last entry); when p did not grow, either value is right (set only
// sends the free the slow way).  kSpanPurged only sends the free the slow way
// (remote_free_checked_span) or the check to the purge mask (span_check),
// where p's page is never marked while p is live.  The other bits
// (kSpanExhausted, kSpanAdopted) these readers do not use.
inline std::uint8_t span_flags_seen_remotely(const Span* s) { return __atomic_load_n(&s->flags, __ATOMIC_RELAXED); }

// The span's first object: the start of its 64 KiB slot, computed from the
// descriptor's place in the chunk header.  (Not stored: under Valgrind a stored
// pointer to the first object would make a leaked first object look reachable.)
inline char* span_base(const Span* s) {
  auto a = reinterpret_cast<std::uintptr_t>(s);
  std::uintptr_t chunk = a & ~(kChunkSize - 1);
  std::uintptr_t slot = (a - reinterpret_cast<std::uintptr_t>(span_chunk_of(reinterpret_cast<ChunkHeader*>(chunk))->spans)) /
                        sizeof(Span);
  return reinterpret_cast<char*>(chunk + (slot << kSpanShift));
}

// End of the span's last whole object (the carve limit `end` may be below it).
inline char* span_full_end(const Span* s) {
  return span_base(s) + static_cast<std::size_t>(s->capacity) * s->obj_size;
}

inline std::uint32_t span_index(const Span* s, const void* p) {
  auto off = static_cast<std::uint64_t>(static_cast<const char*>(p) - span_base(s));
  return static_cast<std::uint32_t>((off * s->reciprocal) >> 32);
}

// Whether p is the start of an object carved from s, given s's bump pointer:
// below it, and its offset in the span a multiple of the object size.  The
// multiple test needs no division: with r = ceil(2^32 / size), the low 32 bits of
// offset * r are below 2^16 exactly when size divides offset, for every offset in
// a 64 KiB span and every class (checked exhaustively in tests/unit/core).  Says
// nothing about inactive spans (bump is then nullptr or stale: callers check
// flags first).
inline bool span_object_start_below(const Span* s, const void* p, const char* bump) {
  auto off = static_cast<std::uint32_t>(reinterpret_cast<std::uintptr_t>(p) & (kSpanSize - 1));
  return static_cast<const char*>(p) < bump && off * s->reciprocal < (std::uint32_t{1} << 16);
}
// The test by s's owner (free's fast path, block_free: the span's fast_heap is
// the caller's heap), or with no other thread about (a forked child): a plain
// read of Span::bump, which only the owner writes.
inline bool span_is_object_start(const Span* s, const void* p) { return span_object_start_below(s, p, s->bump); }
// The test by any thread (span_check, from block_lookup; the remote free's
// remote_free_checked_span), while the owner may be carving: Span::bump is read
// as a relaxed atomic, against the owner's span_set_bump.  A live p was carved
// before it was handed to the caller, and the owner's later stores move bump up,
// or down no lower than the span's last live object (span_trim_tail): every
// value read is above p, the answer the same.  (contrib/tsan.supp named the
// reader, span_is_object_start then, until 2026-12-07: a TSan run lost the
// reader's stack and reported the owner's carve in fast_malloc, which no entry
// could name: tests/unit/threads, test_oversubscribed_threads.)
// Span::bump as a thread that may not own s reads it: a relaxed atomic load
// (also report_span_free_error's and ASan's find_block's test of a pointer
// against the carved part).
inline char* span_bump_seen_remotely(const Span* s) { return __atomic_load_n(&s->bump, __ATOMIC_RELAXED); }
inline bool span_is_object_start_remote(const Span* s, const void* p) {
  return span_object_start_below(s, p, span_bump_seen_remotely(s));
}
// The owner's store of Span::bump where another thread may be reading it
// (span_is_object_start_remote): a relaxed atomic store, not a read-modify-write
// (only the owner writes the word).
inline void span_set_bump(Span* s, char* bump) { __atomic_store_n(&s->bump, bump, __ATOMIC_RELAXED); }
inline std::uint16_t span_purged_pages(const Span* s) { return __atomic_load_n(&s->purged, __ATOMIC_RELAXED); }
// Whether p (an object start below the bump pointer) starts on a purged page.
inline bool span_object_purged(const Span* s, const void* p) {
  auto off = static_cast<unsigned>(reinterpret_cast<std::uintptr_t>(p) & (kSpanSize - 1));
  return (span_purged_pages(s) >> (off / kCarvePage)) & 1;
}
inline std::size_t span_offset(const Span* s, const void* p) {
  return static_cast<std::size_t>(static_cast<const char*>(p) - span_base(s));
}

#if CALLOC_DEBUG
// Aborts unless o is a free object of s (a write after free can corrupt a list).
void span_debug_check_free(const Span* s, const FreeObject* o);
#endif

// Pops an object (owner only); nullptr when the span has nothing local left.
inline void* span_pop(Span* s) {
  FreeObject* o = s->free;
  if (__builtin_expect(o != nullptr, 1)) {
#if CALLOC_DEBUG
    span_debug_check_free(s, o);
#endif
    FreeObject* next = o->next;
    s->free = next;
    // The next malloc reads next's link: fetch its line now (an object a
    // remote free gave back is in the freeing core's cache).
    if (next) __builtin_prefetch(next, 1);
    o->guard = 0;
  } else if (s->bump < s->end) {
    o = reinterpret_cast<FreeObject*>(s->bump);
    span_set_bump(s, s->bump + s->obj_size);
    if (!s->zeroed) o->guard = 0;  // a reused slot may hold an old guard there
  } else {
    return nullptr;
  }
  span_use_alloc(s);
  return o;
}

// Carve limit: on a clean slot the bump pointer carves up to `end`, which
// starts one page into the slot and moves on by a page or by what the span
// carved so far (span_extend_carve, called by the slow path when the span's
// free list is dry); on a resident slot `end` is the span's end.  Before it
// touches a new page the allocator takes a page's worth of free objects that
// the span behind the head holds, resident already (heap_alloc_small_slow): a
// head span carved to its end while the spans behind it held hundreds of free
// objects made calloc-bench small-objects' 80- and 144-byte classes touch
// 1 638 and 1 365 objects' pages for ~1 030 live (docs/design.md, "Small
// heaps' peak RSS").
// True when the span has uncarved objects beyond its carve limit.
inline bool span_can_extend(const Span* s) { return s->end < span_full_end(s); }
// Moves the carve limit on (at least one object).  Owner only.
void span_extend_carve(Span* s);
// Purged pages (span.c++, docs/design.md "Purging the free pages of partly
// used spans"): the owner gives back the pages of s on which every object is
// free (or purged already) and below the bump pointer, as long as that makes
// at least min_pages of them; their objects leave the free list, the span gets
// kSpanPurged (its frees go to the slow path, which checks Span::purged) and
// its carve limit comes down to the bump pointer, so that allocation takes
// the purged pages back (span_recarve) before it carves new ones.  Not for a
// span whose objects grew over several slots, nor in a chunk that transparent
// huge pages may back (whole 2 MiB ranges only), nor when span_purge_bound is
// 0 (no walk of the free list then).  Returns the pages purged.
unsigned span_purge_free_pages(Span* s, unsigned min_pages);
// The candidate test of span_purge_free_pages, O(1), before any list walk: the
// pages wholly carved and not purged yet, less the most the objects counted
// live can keep (each overlaps at most size / 4 KiB + 2 pages; remote frees not
// collected count as live, as in the walk) -- at least as many pages as the
// walk will find -- or 0 when that is below min_pages or s cannot be purged.
// heap_purge_span_pages sums it over a heap's spans.
std::size_t span_purge_bound(const Span* s, unsigned min_pages);
// Brings back s's lowest purged pages, up to the first that holds object
// starts: its objects go onto the free list (their first words written: the
// page is faulted in).  Returns the objects brought back (0: no purged page
// held any).  Owner only.
std::uint32_t span_recarve(Span* s);
// Asks for the line of each carved object's first word (every line when the
// objects are smaller than one) below carved_bytes, on the pages of s not in
// the mask purged (a read of a purged page would fault the zero page in):
// span_purge_free_pages's list walk then finds them in the cache instead of
// waiting for one miss after another.  Returns the lines asked for.
std::size_t span_prefetch_carved(const Span* s, std::size_t carved_bytes, std::uint16_t purged);
// Objects that start on purged pages, about (for refill decisions).
inline std::uint32_t span_purged_objects(const Span* s) {
  return static_cast<std::uint32_t>(bit_count(s->purged) * kCarvePage / s->obj_size);
}

// span_pop, then the purged pages, then moving the carve limit on.
inline void* span_pop_extend(Span* s) {
  void* p = span_pop(s);
  if (!p && (s->flags & kSpanPurged) && span_recarve(s)) p = span_pop(s);
  if (!p && span_can_extend(s)) {
    span_extend_carve(s);
    p = span_pop(s);
  }
  return p;
}

// Span::multislot as other threads read it (see there).
inline unsigned span_multislot_count(const Span* s) { return __atomic_load_n(&s->multislot_count, __ATOMIC_ACQUIRE); }
inline Span::Multislot span_multislot_at(const Span* s, unsigned k) {
  Span::Multislot m;
  __atomic_load(&s->multislot[k], &m, __ATOMIC_ACQUIRE);
  return m;
}

// Why a pointer into a span is not a live object's start.
enum class SpanCheck { ok, not_object_start, not_live };

// Checks that p is the start of a live object of s; `index` receives its index.
SpanCheck span_check(const Span* s, const void* p, std::uint32_t* index);

// Slots covered by object i (1 unless it grew in place).
std::uint32_t span_object_slots(const Span* s, std::uint32_t i);
// Any thread's (block_lookup: a free, realloc or malloc_usable_size of
// another thread's block), hence the flags read as a remote reader does.
inline std::size_t span_usable_size(const Span* s, std::uint32_t i) {
  std::size_t n = s->obj_size;
  if (__builtin_expect(span_flags_seen_remotely(s) & kSpanMultislot, 0)) n *= span_object_slots(s, i);
  return n;
}

// Frees object i at p (owner only; p already checked).  Returns the bytes freed.
std::size_t span_release_multislot(Span* s, std::uint32_t i);
inline std::size_t span_push_local(Span* s, void* p, std::uint32_t i) {
  std::size_t bytes = s->obj_size;
  if (__builtin_expect(s->flags & kSpanMultislot, 0)) bytes = span_release_multislot(s, i);
  auto* o = static_cast<FreeObject*>(p);
  o->next = s->free;
  o->guard = free_guard(o);
  s->free = o;
  span_use_add(s, ~std::uint64_t{0});  // live - 1: a free, counted when folded
  return bytes;
}

// The remote-free word: bits 0-15 the head's object index + 1 (0: empty), bits
// 16-31 the tail's index + 1, bits 32-47 the number of objects on the list.  A
// pusher links its object to the head the word names and derives the new word
// from the old one alone -- it reads nothing on the list -- so the CAS has no ABA
// hazard: whenever it succeeds, the word it replaces describes the list as it is.
constexpr std::uint64_t kRemoteIndexMask = 0xffff;
inline std::uint32_t remote_word_head(std::uint64_t w) { return static_cast<std::uint32_t>(w & kRemoteIndexMask); }
inline std::uint32_t remote_word_tail(std::uint64_t w) {
  return static_cast<std::uint32_t>((w >> 16) & kRemoteIndexMask);
}
inline std::uint32_t remote_word_count(std::uint64_t w) { return static_cast<std::uint32_t>(w >> 32); }
static_assert(kMaxObjectsPerSpan < kRemoteIndexMask, "object index + 1 fits 16 bits");

// Lock-free push of a chain of n objects, linked through next from the object
// of index head_i to `tail` (index tail_i), by a thread that does not own the
// span.  The objects are checked and carry their guards.
inline void span_push_remote_chain(Span* s, std::uint32_t head_i, FreeObject* tail, std::uint32_t tail_i,
                                   std::uint32_t n) {
  char* base = span_base(s);
  std::uint64_t first = std::uint64_t{head_i} + 1;
  std::uint64_t old = s->remote_free.load(std::memory_order_relaxed);
  std::uint64_t w;
  do {
    std::uint32_t old_head = remote_word_head(old);
    tail->next =
        old_head ? reinterpret_cast<FreeObject*>(base + static_cast<std::size_t>(old_head - 1) * s->obj_size) : nullptr;
    std::uint64_t last = old_head ? remote_word_tail(old) : std::uint64_t{tail_i} + 1;
    w = first | last << 16 | std::uint64_t{remote_word_count(old) + n} << 32;
  } while (!s->remote_free.compare_exchange_weak(old, w, std::memory_order_release, std::memory_order_relaxed));
}

// Lock-free push of one object (p already checked; i is its object index).
inline void span_push_remote(Span* s, void* p, std::uint32_t i) {
  auto* o = static_cast<FreeObject*>(p);
  o->guard = free_guard(o);
  span_push_remote_chain(s, i, o, i, 1);
}

inline bool span_has_remote(const Span* s) { return s->remote_free.load(std::memory_order_relaxed) != 0; }

// Moves the remote frees onto the local list (owner only).  The freeing threads
// checked them and set their guards.  Returns the number collected.
std::uint32_t span_collect_remote(Span* s);

// Grows object i (at p, at the carving frontier) in place to cover new_size bytes
// by claiming uncarved slots below the carve limit.  Owner only.  False when it
// cannot.
bool span_grow_at_frontier(Span* s, void* p, std::uint32_t i, std::size_t new_size);

// --- defragmentation support (defrag.c++) -----------------------------------
// Relinks the local free list in address order, so that pops fill the lowest
// slots first.  Owner only.
void span_sort_free_list(Span* s);
// Uncarves the free slots above the last live object (they leave the free list,
// the bump pointer comes down, whole pages above it go back to the OS).  Owner
// only, no remote frees waiting.  Returns the slots uncarved.
std::uint32_t span_trim_tail(Span* s);

}  // namespace lca

#endif
