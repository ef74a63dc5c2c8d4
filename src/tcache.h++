// tcache.h++ -- heaps: per-thread caches over spans and arenas, and the domains
// (MemoryAllocator instances) that own them.
//
// A Domain is one independent heap in the C++ sense: the process domain behind
// malloc, or a `MemoryAllocator alloc;`.  The process domain gives each thread a
// Heap of its own (thread_local, initial-exec TLS), so a thread's allocations and
// frees of its own memory touch no lock and no atomic read-modify-write; a free
// from another thread is one lock-free push onto the span's (or arena's) remote
// list.  A private domain has one Heap guarded by the domain's mutex.
// At thread exit the Heap is abandoned to its domain with whatever it still holds;
// the next new thread adopts it whole, and threads that need memory sweep abandoned
// heaps for empty chunks first, so memory is not lost when threads come and go.
#ifndef LCA_TCACHE_HXX
#define LCA_TCACHE_HXX

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <pthread.h>

#include "arena.h++"
#include "chunk.h++"
#include "large.h++"
#include "report.h++"
#include "sizeclass.h++"
#include "span.h++"
#include "vg.h++"

namespace lca {

struct HandleTable;  // a HandleAllocator's handles (handle.c++)

// Per-thread counters: written only by the owning thread, read by anyone summing
// statistics.  The owner's add is a single plain add to memory (on x86-64 one
// instruction, no lock prefix: a reader sees the old or the new value, never a
// torn one); elsewhere a relaxed load + store.  No read-modify-write is atomic
// because no two threads ever write one counter.
struct Counter {
  std::size_t v = 0;
  void add(std::size_t d) {
#if defined(__x86_64__)
    asm("addq %1, %0" : "+m"(v) : "er"(d));
#else
    __atomic_store_n(&v, __atomic_load_n(&v, __ATOMIC_RELAXED) + d, __ATOMIC_RELAXED);
#endif
  }
  std::size_t get() const { return __atomic_load_n(&v, __ATOMIC_RELAXED); }
};

// Statistics with no counter on the fast paths.  A small allocation from one of
// the heap's spans is counted in the span's use word (span_use_alloc: the same
// add that counts the object live), a local free only by the live count going
// down; the span's counts not yet in its heap's class_allocs/class_frees are
//   allocations: use >> kUseCountShift
//   frees:       allocations + stat_live - live
// The owner folds them into the heap (span_stats_fold) whenever the span
// leaves its class's queue (retired, rotated, given to the orphan pools at
// thread exit), and moves stat_live with every other change of the live count
// (remote frees collected: the freeing heap counted those; the extra slots of
// an object that grew).  Every active span of a heap is in one of its queues,
// so a reader (domain_stats) walks them under the heap's stats_lock, which the
// owner holds for each queue change and each such move: a reader sees each
// span's counts whole, each fast-path operation as one store, and no span out
// of its queue with counts not folded.  The owner's fast paths take no lock.
struct HeapCounters {
  // Small objects: folded span counts, plus what bypasses the spans' counts
  // (objects of other heaps' spans: foreign lists, remote frees).
  Counter class_allocs[kNumClasses];
  Counter class_frees[kNumClasses];
  Counter extra_bytes_allocated;  // multislot growth, arena blocks
  Counter extra_bytes_freed;
  Counter arena_allocs, arena_frees;
  Counter remote_small_frees;     // small frees pushed to another heap (counted here)
  Counter realloc_in_place, realloc_moved, realloc_remapped;
  // Times a class got a new current span (one behind the old, or a new span):
  // the slow-path refills of the span queues.
  Counter span_refills;
  Counter medium_hits;  // medium requests served by the medium cache
  // Purged pages of partly used spans (span_purge_free_pages), and objects
  // brought back from them (span_recarve).
  Counter span_pages_purged;
  Counter span_objects_recarved;
  // Walks of the heap's span queues for such pages before a chunk
  // (purge_span_pages_before_chunk; skipped ones not counted).
  Counter span_purge_walks;
  Counter span_borrows;  // small requests served by a bigger class's span (borrow_above)
  // Slow paths of the heap's own small objects: mallocs that found the head
  // span dry (heap_alloc_small_slow), and frees into its own spans that the
  // fast path sent on (a span flagged or left behind: free_span_local).
  // docs/design.md, "The slow path's tail".
  Counter small_slow_allocs;
  Counter local_slow_frees;
};

// A thread's remote frees of small objects wait in a small table keyed by span
// and go to each span's remote list as one chain: one compare-and-swap per
// chain instead of one per object, and no locked instruction (which waits for
// the freeing core's pending stores) in the common remote free.  A slot holds
// the chain of one span; a free into another span of the same slot, a chain of
// kRemoteBatchMax objects or of kRemoteBatchBytes, thread exit and trim flush
// it.  At most kRemoteBatchSlots chains of under kRemoteBatchBytes (128 KiB) wait
// per thread: their owners cannot reuse them meanwhile and carve new objects
// instead.  kRemoteBatchBytes: calloc-bench producer-consumers (3 consumers
// that only free; 7 interleaved runs) peak RSS 6.5 MiB and 27.9 ns per block
// with chains of 8 objects whatever their size, 5.9 MiB / 31.4 ns at 2 KiB,
// 5.8 MiB / 35.7 ns at 1 KiB; mimalloc 5.7 MiB / 35.1 ns (docs/design.md).
constexpr unsigned kRemoteBatchSlots = 64;
constexpr unsigned kRemoteBatchMax = 8;
constexpr std::size_t kRemoteBatchBytes = 2048;
static_assert(kRemoteBatchMax >= 2, "a chain is flushed when a free makes it this long");
struct RemoteBatch {
  Span* span;
  FreeObject* tail;  // the chain's last object (its first is head_index)
  std::uint16_t head_index;
  std::uint16_t tail_index;
  std::uint32_t count;
};

// A thread keeps the small objects of other threads' spans that it frees, up to
// foreign_class_bytes() per class, and reuses them for its own allocations of
// the class (after its own span's free list): a block handed from one thread to
// another and freed there is allocated again where its cache lines are, instead
// of travelling back to its owner first.  The owner's span still counts the
// object as used all along (it never learns of the round trip), so the
// accounting needs nothing; a free beyond the limit goes to the owner through
// the RemoteBatch table, and thread exit and trim send the whole list there.
// The limit is 4 KiB a class up to 1 KiB and 16 KiB above (8 KiB each before
// session 17): 8 KiB is 2-6 objects of 1.25-4 KiB, so the ring of the matrix's
// producer-consumer sent most of its large blocks home in chains, and their
// owners allocated them again from the other core's cache or carved new ones;
// the small classes' lists seldom fill there, and a smaller list keeps fewer
// blocks away from their owner: heap peak -5 %, server-sim's instructions
// -2 % (docs/design.md, "The matrix's producer-consumer (session 17)").  An
// idle thread holds at most 64 x 4 + 12 x 16 = 448 KiB so (608 KiB before).
constexpr std::size_t kForeignSmallClassBytes = 4 * 1024;
constexpr std::size_t kForeignLargeClassBytes = 16 * 1024;
constexpr std::size_t kForeignSmallClassMax = 1024;  // the classes of kForeignSmallClassBytes
constexpr std::size_t foreign_class_bytes(std::size_t class_size) {
  return class_size <= kForeignSmallClassMax ? kForeignSmallClassBytes : kForeignLargeClassBytes;
}
// The most any class's foreign list holds, in bytes.
constexpr std::size_t kForeignClassBytesMax = kForeignLargeClassBytes;
// The limit in objects, per class, from a table: free's remote path divided
// the byte limit by the object size, a 64-bit division whose result it
// waited for (14-16 % of free_cold's samples on the matrix's
// producer-consumer; docs/design.md, "The matrix's producer-consumer, again").
struct ForeignCaps {
  std::uint32_t cap[kNumClasses];
};
constexpr ForeignCaps make_foreign_caps() {
  ForeignCaps t{};
  for (unsigned c = 0; c < kNumClasses; ++c)
    t.cap[c] = static_cast<std::uint32_t>(foreign_class_bytes(kSizeClasses.size[c]) / kSizeClasses.size[c]);
  return t;
}
LCA_CORE_RODATA(foreign_caps) inline constexpr ForeignCaps kForeignCaps = make_foreign_caps();  // placement.h++
inline std::uint32_t foreign_class_cap(unsigned size_class) { return kForeignCaps.cap[size_class]; }

// A thread keeps the medium blocks of its own arena that it frees -- usable sizes
// kMediumCacheMin..kMediumCacheMax-1, 8 KiB to 64 KiB -- in bins of eight per
// doubling, up to medium_cache_bound() in all (kMediumCacheBytes, more for a
// thread with many live arena bytes), and serves its next medium requests
// from them (its own bin's first block if big enough, else the first block of
// the nearest non-empty bin up to kMediumSearchBins above, found in a bitmap): a
// hit costs a list pop instead of a TLSF search, split and boundary tag updates
// (docs/design.md, "Medium cache").  A held block stays allocated in the arena
// (arena_hold: its live bit stays set and a held mark in its second word says
// it is freed, so a second free is a double free).  The cache goes back to the arena before the arena maps a chunk,
// at thread exit, on trim and whenever the heap is collected.
constexpr std::size_t kMediumCacheMin = 8 * 1024;
constexpr std::size_t kMediumCacheMax = 64 * 1024;
constexpr unsigned kMediumBinsPerDoubling = 8;
constexpr unsigned kMediumBins = 3 * kMediumBinsPerDoubling;  // 8-16, 16-32, 32-64 KiB
constexpr std::size_t kMediumCacheBytes = 256 * 1024;
// A thread whose arena blocks hold more live bytes may hold more: half its live
// arena bytes, up to kMediumCacheBytesMax (docs/design.md, "Medium cache bound").
constexpr std::size_t kMediumCacheBytesMax = 512 * 1024;
static_assert(kMediumCacheMax == kMediumCacheMin << 3, "three doublings of bins");

// A held block's first words (its second is the arena's freed mark).
struct MediumFree {
  MediumFree* next;
  std::uintptr_t mark;
  std::size_t usable;
};

struct MediumCache {
  MediumFree* bin[kMediumBins];
  std::size_t bytes;      // usable bytes held, at most kMediumCacheBytesMax
  std::uint32_t nonempty;  // bit b: bin[b] holds a block
};
static_assert(kMediumBins <= 32, "one bit per bin");
// A request whose own bin has no block big enough takes the first block of the
// nearest non-empty bin at most this many bins above (one doubling: the block
// is less than 2.25 x the request; it goes back to its own bin when freed).
// heavy-tail: 74 % of medium requests hit instead of 34 % (docs/design.md).
constexpr unsigned kMediumSearchBins = kMediumBinsPerDoubling;
static_assert(kMediumBins - 1 + kMediumSearchBins < 64, "the search mask is 64-bit arithmetic");

// The bin of a usable size in [kMediumCacheMin, kMediumCacheMax): its blocks have
// at least medium_bin_floor(bin) usable bytes.
inline unsigned medium_bin(std::size_t usable) {
  unsigned f = 63u - static_cast<unsigned>(__builtin_clzll(usable));
  return (f - 13) * kMediumBinsPerDoubling + static_cast<unsigned>((usable >> (f - 3)) & 7);
}
inline std::size_t medium_bin_floor(unsigned bin) {
  return (kMediumCacheMin + (kMediumCacheMin / kMediumBinsPerDoubling) * (bin % kMediumBinsPerDoubling))
         << (bin / kMediumBinsPerDoubling);
}

struct NoHeapTag {};
extern Span g_empty_span LCA_HIDDEN;

struct Heap {
  Heap() = default;
  // g_no_heap (below): every head is the empty span.
  constexpr explicit Heap(NoHeapTag)
      : head{}, tail{}, domain{}, arena{}, span_chunks_avail{}, span_chunks_full{}, dirty_slots{},
        last_purge_ns{}, next_in_domain{}, next_abandoned{}, abandoned{}, counters{}, remote_batch{}, foreign{},
        foreign_count{}, remote_busy{}, medium{}, borrowed{} {
    for (Span*& s : head) s = &g_empty_span;
  }

  Span* head[kNumClasses];  // current span of each class (a sentinel when none)
  Span* tail[kNumClasses];
  Domain* domain;
  Arena arena;
  ChunkList span_chunks_avail;  // span chunks with unused slots
  ChunkList span_chunks_full;
  std::size_t dirty_slots;      // unused span slots not yet purged
  std::uint64_t last_purge_ns;  // decay of dirty slots
  Heap* next_in_domain;
  Heap* next_abandoned;
  bool abandoned;
  HeapCounters counters;
  RemoteBatch remote_batch[kRemoteBatchSlots];  // this thread's frees into other heaps' spans
  FreeObject* foreign[kNumClasses];  // objects of other heaps' spans this thread freed (guards set)
  std::uint32_t foreign_count[kNumClasses];
  // Nonzero while the owner changes its foreign lists or RemoteBatch table other
  // than by a pop: the child of a fork() leaves alone the lists of a heap whose
  // thread the fork caught in such a change (lifecycle.c++).
  std::uint8_t remote_busy;
  // NUMA (LIBCALLOC_OPTIONS=numa=1, process domain): the node whose chunks this
  // heap carves, -1 when node-local heaps are off.
  std::int32_t node = -1;
  MediumCache medium;  // this thread's freed medium blocks (owner only)
  // Objects each class took from a bigger class's span since it last carved
  // new memory itself (borrow_above, tcache.c++).
  std::uint8_t borrowed[kNumClasses];
  // The walk for free pages of partly used spans before a chunk
  // (purge_span_pages_before_chunk, tcache.c++): set by a walk that found no
  // candidate span while every span but the class heads was exhausted (a heap
  // that only grows); cleared by whatever could give a span behind a head free
  // objects (heap_span_purge_unquiet).  While set, chunk requests skip the
  // walk, span_purge_skip of them (doubling after each fruitless walk, at most
  // kSpanPurgeSkipMax).
  bool span_purge_quiet = false;
  std::uint8_t span_purge_skip = 0;
  std::uint8_t span_purge_backoff = 0;
  // Statistics (above HeapCounters): held by the owner while it changes a class
  // queue or a span's stat_live, and by a statistics reader walking the queues.
  // A leaf lock (its holder takes no other); never on a fast path.  fork()
  // holds none of them across the fork: its prepare handler waits for the
  // changes in progress to end, and the changes that begin later wait for the
  // fork (StatsLock, Domain::forking), so that the child finds no queue half
  // changed.
  pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
};

// Held while the owner changes h's class queues or a span's stat_live (and by
// whoever else takes h's stats_lock for such a change).  Taken while a fork()
// is under way in another thread (Domain::forking), it lets go and waits for
// that fork to end, then takes the lock again: the forking thread holds none
// of the statistics locks across the fork.
class StatsLock {
 public:
  explicit StatsLock(Heap* h);
  ~StatsLock() { lca_mutex_unlock(m_); }
  StatsLock(const StatsLock&) = delete;
  StatsLock& operator=(const StatsLock&) = delete;

 private:
  pthread_mutex_t* m_;
};

// Brackets a change of h's foreign lists or RemoteBatch table (h's thread only).
// A fork snapshots each thread's stores in program order up to some instant;
// the barriers keep the compiler (and, beyond x86, the CPU) from moving the
// list's stores out of the bracket.  Two plain stores on x86-64.
class RemoteBusy {
 public:
  explicit RemoteBusy(Heap* h) : h_(h) {
    __atomic_store_n(&h_->remote_busy, 1, __ATOMIC_RELAXED);
#if defined(__x86_64__) || defined(__i386__) || LCA_TSAN
    asm volatile("" ::: "memory");  // x86 keeps stores in program order (TSan rejects fences)
#else
    __atomic_thread_fence(__ATOMIC_RELEASE);
#endif
  }
  ~RemoteBusy() { __atomic_store_n(&h_->remote_busy, 0, __ATOMIC_RELEASE); }
  RemoteBusy(const RemoteBusy&) = delete;
  RemoteBusy& operator=(const RemoteBusy&) = delete;

 private:
  Heap* h_;
};

// Pops an object of another heap's span from h's foreign list of class c
// (h's thread only); nullptr when the list is empty.
inline void* heap_pop_foreign(Heap* h, unsigned c) {
  FreeObject* o = h->foreign[c];
  if (o) {
    h->foreign[c] = o->next;
    --h->foreign_count[c];
    o->guard = 0;
  }
  return o;
}

// Span reclaim: the pools of orphaned spans, one per size class (FIFO, linked
// through Span::next and prev, their heap orphan_span_heap()), each guarded by one of
// kOrphanPoolLocks locks (class c by lock c % kOrphanPoolLocks), so that refills
// of different classes, and thread exits, seldom wait for each other and never
// for the domain lock (docs/design.md, "Span reclaim").  Not a lock per class:
// fork's prepare handler holds them all, and TSan's deadlock detector gives up
// beyond 64 locks held at once.  Lock order: the domain lock, then one pool
// lock; a pool lock's holder takes no other lock.  One cache line per class and
// per lock.
constexpr unsigned kOrphanPoolLocks = 32;
struct alignas(64) OrphanPool {
  std::atomic<Span*> head{nullptr};  // also read without the lock: the refill's peek
  Span* tail = nullptr;
  std::uint32_t count = 0;
};
struct OrphanPools {
  struct alignas(64) Lock {
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
  };
  OrphanPool pool[kNumClasses];
  Lock lock[kOrphanPoolLocks];
  pthread_mutex_t* lock_of(unsigned c) { return &lock[c % kOrphanPoolLocks].m; }
};

struct Domain {
  constexpr Domain() = default;
  constexpr explicit Domain(bool thread_heaps, OrphanPools* pools = nullptr)
      : per_thread(thread_heaps), orphan_pools(pools) {}
  Domain(const Domain&) = delete;
  Domain& operator=(const Domain&) = delete;

  pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
  // fork(): while a thread forks, its fork_token(); nullptr otherwise.  Set by
  // the prepare handler with the domain lock held (lifecycle.c++):
  // - a thread-heap domain (the process domain) stays locked across the fork,
  //   and the flag is cleared before its lock is released; a thread that finds
  //   it set (another thread's token) once it holds a heap's stats_lock lets go
  //   and waits for the domain lock (StatsLock, pool.c++);
  // - a private domain's lock is released at once: a thread that then takes it
  //   finds the flag (another thread's token), lets go and waits for the domain
  //   list's fork gate, which the forking thread holds until it has cleared
  //   the flag (DomainLock, domain_lock_wait_fork) -- unless it holds another
  //   private domain's lock, which the fork has not passed yet: it goes on.
  //   No other thread can hold the lock deeper when it finds the flag: the
  //   flag was stored under it.
  // Beside the lock: the domain lock's taker reads it at once.
  std::atomic<const void*> forking{nullptr};
  bool per_thread = false;
  // fork(): set while the prepare handler, which found this private domain's
  // lock taken, waits for it with the domain list's lock released
  // (lifecycle.c++): unlink_domain waits until it is clear, so that the domain
  // is not unmapped under the waiter.  Under g_domains_lock.
  bool fork_pinned = false;
  ChunkList free_chunks;
  std::uint64_t last_release_ns = 0;  // decay of free chunks
  Heap* heaps = nullptr;
  Heap* abandoned = nullptr;
  Heap* single = nullptr;  // private domains
  LargeCache large{};
  std::atomic<std::size_t> chunk_bytes{0};
  // Frees by threads that have no heap in this domain any more (thread exit).
  std::atomic<std::size_t> orphan_frees{0};
  std::atomic<std::size_t> orphan_free_bytes{0};
  // Valgrind and ASan mode: nonzero while a defragmentation pass walks this heap
  // (defrag.c++'s HeapLock).  The quarantine (vg.c++, asan.c++) then keeps this
  // heap's blocks: releasing one -- on any free, of any heap, the pass's own
  // vector reallocations included -- would coalesce the free runs the pass has
  // planned into.  Changed with the domain lock held, read with the quarantine's
  // lock held (another thread's release of one of these blocks would wait for
  // the domain lock anyway: only the pass's own thread could change the heap).
  std::atomic<unsigned> quarantine_hold{0};
  bool quarantine_held() const { return quarantine_hold.load(std::memory_order_relaxed) != 0; }
#if CALLOC_DEFRAG
  // The raw defragmentation engine's round of budgeted passes over this
  // (private) heap (defrag.c++, with the heap's lock held): where the next
  // pass starts -- a size class, the arena, or the trim that ends the round --
  // and the plan of the class it is in (freed with the domain).
  unsigned defrag_resume = 0;
  void* defrag_round = nullptr;
  // The handle table of the HandleAllocator that owns this (private) heap, or
  // nullptr: its free and realloc paths then check that the block is not one of
  // the handles' objects (handle_object_check, handle.c++).  Set by the
  // HandleAllocator's constructor and cleared by its destructor, when no other
  // thread uses the heap.
  HandleTable* handles = nullptr;
#endif
  // Valgrind mode (vg.h++): the statistics as the user sees them -- requested
  // sizes, and a free counted when the block enters the quarantine.
  struct VgCounters {
    std::atomic<std::size_t> allocs{0}, frees{0}, bytes_allocated{0}, bytes_freed{0};
    std::atomic<std::size_t> in_place{0}, moved{0}, remapped{0};
  } vg;
  Domain* next = nullptr;
  Domain* prev = nullptr;
  // NUMA: the node a private domain's chunks and large mappings are bound to
  // (NUMAAllocator's per-node heaps), and how many bindings the kernel refused
  // (that memory stays first-touch: the documented fallback).
  NodePlacement placement{};
  std::atomic<std::size_t> bind_fallbacks{0};
  // Span reclaim (process domain, heaps without a NUMA node): at thread exit
  // the heap's spans go to a pool per class (orphan_pools, below) and its span
  // chunks to orphan_chunks, which no heap owns; a running heap's refill takes
  // a pooled span before it carves one, and its new_span carves in a free slot
  // of an orphan chunk before it maps one.  The slot bookkeeping of orphan
  // chunks (free_slots, dirty_slots, active_spans) changes only under the
  // domain lock; a class's pool and the local state of its pooled spans only
  // under that pool's lock; a span taken from the pool is its taker's like any
  // other.  docs/design.md, "Span reclaim".
  OrphanPools* orphan_pools = nullptr;       // the process domain's only
  std::atomic<std::size_t> orphan_spans{0};  // spans in all its pools (changed under their locks)
  ChunkList orphan_chunks;
  std::size_t orphan_dirty_slots = 0;  // free slots of orphan chunks not yet purged
  std::uint64_t orphan_purge_ns = 0;    // decay of those
  std::atomic<std::size_t> orphan_chunk_count{0};  // orphan_chunks.count, for the unlocked peek
  // Shared span slots (tcache.c++ share_slot, take_shared_slot): empty slots of
  // running heaps' chunks that their heap gave up (beyond kPrivateDirtySlots of
  // its own), for any heap's new_span.  A slot here counts as an active span of
  // its chunk (not in free_slots), so its chunk stays mapped and its owner never
  // touches it; the stack, linked through Span::next, changes under the domain
  // lock.  Span::zeroed tells a purged slot.  docs/design.md, "Shared span slots".
  Span* shared_slots = nullptr;
  std::atomic<std::size_t> shared_slot_count{0};  // entries (written under the lock)
};

extern Domain g_process_domain LCA_HIDDEN;
// The heap of a thread that has none: every class's head is g_empty_span and it
// owns no span, so malloc's fast path needs no null test (it finds nothing to pop
// and takes the slow path) and free's never matches it.
extern Heap g_no_heap LCA_HIDDEN;
// What the fast paths use: the calling thread's heap in the process domain;
// &g_no_heap until its first allocation, after its exit handler ran, and always
// in Valgrind mode (vg.h++), which keeps every call on the slow paths.
extern constinit thread_local Heap* tls_heap __attribute__((tls_model("initial-exec"))) LCA_HIDDEN;
// The calling thread's heap in the process domain, or nullptr when it has none.
extern constinit thread_local Heap* tls_owned_heap __attribute__((tls_model("initial-exec"))) LCA_HIDDEN;
inline Heap* thread_heap_if_any() { return tls_owned_heap; }
// Set when the calling thread's exit handler has abandoned its heap: a free that
// comes later (another TLS destructor) must not make the thread a new heap, which
// no exit handler would abandon.
extern constinit thread_local bool tls_heap_gone __attribute__((tls_model("initial-exec"))) LCA_HIDDEN;

// StatsLock, with h's stats_lock held, found a fork under way in h's domain:
// unless the calling thread is the forking one, lets go of the lock, waits for
// the fork to end (the domain lock, which the forking thread holds across it)
// and takes the lock again, until no other thread forks.
void stats_lock_wait_fork(Heap* h);
inline StatsLock::StatsLock(Heap* h) : m_(&h->stats_lock) {
  lca_mutex_lock(m_);
  if (__builtin_expect(h->domain->forking.load(std::memory_order_relaxed) != nullptr, 0)) stats_lock_wait_fork(h);
}

// Requests above this fail with ENOMEM before any system call (no mapping of
// 128 TiB can succeed, and rounding a size near SIZE_MAX would wrap).
constexpr std::size_t kMaxRequest = std::size_t{1} << 47;

// The calling thread's heap in the process domain, created or adopted on first use;
// nullptr when the OS has no memory for it (lifecycle.c++).  After the thread's
// exit handler has run (tls_heap_gone: another pthread key's destructor
// allocates), a heap for the one call, which the caller gives back with
// heap_done_after_exit: a heap taken then would otherwise stay the thread's
// for good when glibc had run the key destructors for the last time.
Heap* heap_for_thread();
// Abandons h (as at thread exit) when it is the calling thread's heap for one
// call after its exit handler (heap_for_thread); errno kept.
void heap_abandon_after_exit(Heap* h);
inline void heap_done_after_exit(Heap* h) {
  if (__builtin_expect(tls_heap_gone, 0) && h) heap_abandon_after_exit(h);
}
// numa=1: when the calling thread now runs on another node than its heap h's,
// abandons h (as at thread exit) and returns a heap of the new node; else h.
Heap* heap_rehome_if_moved(Heap* h);

// Private domains.
Domain* domain_create();
// Binds the domain's future chunks and large mappings to a NUMA node (before its
// first allocation).
void domain_set_placement(Domain* d, NodePlacement where);
// Calls fn for every range of memory the domain holds now (its chunks and large
// blocks), under its lock: NUMA asks the kernel where those pages are.
void domain_for_each_range(Domain* d, void (*fn)(void* ctx, const void* addr, std::size_t len), void* ctx);
void domain_destroy(Domain* d);

// --- allocation ---------------------------------------------------------
// Allocation in a heap the caller owns (its thread heap, or a private heap under
// its domain lock).  `grown` marks a block being made for a realloc that grows.
void* heap_alloc(Heap* h, std::size_t size, std::size_t alignment, bool grown);
// The slow path of a small request of `size` bytes in class size_class
// (chosen for `alignment`).
void* heap_alloc_small_slow(Heap* h, unsigned size_class, std::size_t size, std::size_t alignment);
// malloc of kSlabMax < size <= kLargeThreshold by a thread with a heap (tls_heap,
// not &g_no_heap, node-local heaps off): the medium cache, else the arena.
// nullptr with errno ENOMEM when the OS has no memory.
void* heap_alloc_medium(Heap* h, std::size_t size);

// A dedicated mapping (above the large threshold); on failure the domain's cached
// memory is returned to the OS and the mapping tried again.
void* domain_alloc_large(Domain* d, std::size_t size, std::size_t alignment, bool* fresh_zero);
// domain_alloc_large, zero-filled (calloc): a fresh mapping is zero already and
// is left untouched (its pages stay unmapped until used); a reused one is cleared.
void* domain_calloc_large(Domain* d, std::size_t size, std::size_t alignment);

// The whole allocate path of a domain (locks a private domain).
void* domain_alloc(Domain* d, std::size_t size, std::size_t alignment);

// --- free and lookup ------------------------------------------------------
struct BlockRef {
  enum class Kind { span, arena, large } kind;
  ChunkHeader* chunk;  // span and arena blocks
  Span* span;
  std::uint32_t index;
  std::size_t usable;
  Domain* domain;
};

// Finds the block that starts at p; reports and aborts on an invalid pointer or a
// block already freed.  `what` names the operation in the message.  With
// `route`, a pointer that no core heap owns is not reported: false, for the
// caller to offer it to the module heaps -- SecureAllocator's, HugePageAllocator's
// -- through free_unowned, usable_size_unowned or resize_unowned (module.h++),
// which report it if none of them owns it either.
bool block_lookup(const void* p, BlockRef* out, const char* what, bool route = false);
// block_lookup's report of a pointer that no heap owns: "Invalid free ...: not a
// block allocated by libcalloc" for a free (`what` starting with 'f'), "Invalid
// pointer ...: `what`" otherwise.
[[noreturn]] void report_unowned(const void* p, const char* what);
void free_slow(void* p);
// free_slow without the Valgrind-mode quarantine.
void free_now(void* p);
// The bytes a live block offers its user (the requested size in Valgrind mode);
// aborts like block_lookup on a bad pointer.
std::size_t block_usable_size(const void* p, const char* what);
// free_slow preserving errno: the out-of-line half of every free (nullptr
// included: block_free sends it here, and it returns at once).  A remote
// free of a small object goes to the thread's foreign list of its class, or
// beyond foreign_class_bytes() through its RemoteBatch table.
void free_cold(void* p);
// The part of free_cold for a block of the calling thread's own arena (h is
// tls_heap): into the medium cache or the arena.  False when p is not a live
// block of h's arena (free_slow then frees or reports it).  Keeps errno.
bool heap_free_medium(Heap* h, void* p);
// The most the medium cache of h may hold: kMediumCacheBytes, or half the
// bytes h's arena blocks hold live, up to kMediumCacheBytesMax.
std::size_t medium_cache_bound(const Heap* h);
// Sends h's foreign objects to their owners and pushes every chain waiting in
// h's RemoteBatch table (h's thread only).
void remote_batch_flush_all(Heap* h);
void free_span_local(Heap* h, Span* s, void* p, std::uint32_t i);
// Queue upkeep after a local free made a span empty or un-exhausted it.
void span_after_local_free(Heap* h, Span* s);
// Purges the pages of h's spans that hold only free objects, in spans where
// min_pages of them at least can be, and only when the spans' bound on such
// pages reaches min_total (h's owner, the process domain's heaps only; not in
// Valgrind or ASan mode).  Returns the pages purged; *quiet (when given) says
// whether no span was a candidate while every span behind a class head was
// exhausted (Heap::span_purge_quiet).
std::size_t heap_purge_span_pages(Heap* h, unsigned min_pages, std::size_t min_total, bool* quiet = nullptr);
// Something may have given a span behind a class head free objects (a free
// into an exhausted span, remote frees collected, a span left behind or put
// back with free objects): the next chunk request walks the spans again.
inline void heap_span_purge_unquiet(Heap* h) { h->span_purge_quiet = false; }
[[noreturn]] void report_span_free_error(const Span* s, const void* p, SpanCheck why);

// Frees any libcalloc block, whichever heap or domain it belongs to.  The inline
// part handles the common case -- a small object of the calling thread's own span
// with no flag set -- with no atomic and no call; everything else, errors
// included, goes to free_cold.  The checks: the chunk registry says "spans" (one
// byte load; nullptr fails it, and free_cold returns), the span is the caller's
// (fast_heap), p is the start of a carved object (span_is_object_start) and does
// not carry its free guard (not freed already).
inline void block_free(void* p) {
  if (__builtin_expect(chunk_kind_of(p) == ChunkKind::spans, 1)) {
    Span* s = span_of(span_chunk_of(chunk_base(p)), p);
    Heap* h = tls_heap;
    auto* o = static_cast<FreeObject*>(p);
    if (__builtin_expect(span_fast_heap_is(s, h) && span_is_object_start(s, p) && o->guard != free_guard(p), 1)) {
      o->next = s->free;
      o->guard = free_guard(p);
      s->free = o;
      if (__builtin_expect(span_use_release(s), 0)) span_after_local_free(h, s);
      return;
    }
  }
  free_cold(p);
}

// --- realloc ------------------------------------------------------------
enum class ResizeResult { failed, in_place, moved, remapped };
// Resizes p (a live block).  When may_move is false, only in-place resizing is
// tried.  d is the domain a null p allocates from.
void* block_realloc(Domain* d, void* p, std::size_t size, bool may_move, ResizeResult* how);
// block_realloc without Valgrind-mode handling.
void* block_realloc_raw(Domain* d, void* p, std::size_t size, bool may_move, ResizeResult* how);

// --- maintenance ----------------------------------------------------------
// Returns empty cached memory of the domain to the OS (and the caller's own heap's).
void domain_trim(Domain* d);
// domain_trim of a private domain a piece at a time (defrag.c++'s budgeted
// passes): after each span chunk purged and each chunk unmapped, stop(ctx) says
// whether to return.  True when all of it is done; every call does one piece at
// least, so repeated calls finish.
bool domain_trim_some(Domain* d, bool (*stop)(void*), void* ctx);
#if CALLOC_DEFRAG
// Frees the defragmentation engine's state of a domain being destroyed (defrag.c++).
void defrag_domain_destroyed(Domain* d);
// The calling thread's entries of handle tables (one per HandleAllocator it
// used and has not dropped; for tests).
std::size_t defrag_thread_entries();
#endif

struct DomainStats {
  std::size_t total_allocated, total_freed, allocation_count, free_count;
  std::size_t os_memory_mapped, realloc_in_place, realloc_moved, realloc_remapped;
  std::size_t large_mappings;
};
DomainStats domain_stats(Domain* d);

// --- heap-layer internals shared with lifecycle.c++ ------------------------
// Guards the list of domains (g_process_domain.next ...).
extern pthread_mutex_t g_domains_lock LCA_HIDDEN;
// fork(): held by the forking thread from before it sets the first private
// domain's `forking` word until after it has cleared the last; what a thread
// that finds such a word set waits for (domain_lock_wait_fork, unlink_domain).
// Nothing else takes it.
extern pthread_mutex_t g_domains_fork_gate LCA_HIDDEN;
// How many private domains' locks this thread holds (its first taking of each:
// DomainLock, domain_lock), for domain_lock_wait_fork.
extern constinit thread_local unsigned tls_private_domain_locks __attribute__((tls_model("initial-exec"))) LCA_HIDDEN;
void init_recursive(pthread_mutex_t* m);
// Collects everything a heap can give back: remote frees, empty spans, empty
// chunks (under the domain lock for a heap that is not the caller's own).
void heap_collect_all(Heap* h, bool purge);
// A new heap of d, linked into d->heaps (d's lock held).
Heap* heap_create_locked(Domain* d);
// Span reclaim, at thread exit (no lock held, before heap_collect_all): h's
// span chunks become orphan chunks (those with no span left go to the domain's
// free chunks; under the domain lock), then its spans go to its domain's pools
// (under each class's pool lock).
void heap_orphan_spans(Heap* h);
// fork(): every pool lock of d (after d's lock), released or re-made after.
void domain_pools_prefork(Domain* d);
void domain_pools_postfork_parent(Domain* d);
void domain_pools_postfork_child(Domain* d);
// The heap of a span in the pool: no heap (and not nullptr, which a thread
// without a heap has, nor no_fast_heap()).
inline Heap* orphan_span_heap() { return reinterpret_cast<Heap*>(std::uintptr_t{2}); }

// The lock of d, taken: when a fork is under way in another thread (d->forking,
// set under the lock), lets go of it, waits for the fork to end (the domain
// list's fork gate, which the forking thread holds across it) and takes it
// again (pool.c++) -- unless this thread holds another private domain's lock.
// One load and a branch not taken beside the lock, and for a private domain
// the count of its locks this thread holds.
void domain_lock_wait_fork(Domain* d);
inline void domain_lock_taken(Domain* d) {
  lca_mutex_lock(&d->lock);
  if (__builtin_expect(d->forking.load(std::memory_order_relaxed) != nullptr, 0)) domain_lock_wait_fork(d);
  if (!d->per_thread) ++tls_private_domain_locks;
}
inline void domain_lock_release(Domain* d) {
  if (!d->per_thread) --tls_private_domain_locks;
  lca_mutex_unlock(&d->lock);
}

class DomainLock {
 public:
  explicit DomainLock(Domain* d, bool take = true) : d_(take ? d : nullptr) {
    if (d_) domain_lock_taken(d_);
  }
  ~DomainLock() {
    if (d_) domain_lock_release(d_);
  }
  DomainLock(const DomainLock&) = delete;
  DomainLock& operator=(const DomainLock&) = delete;

 private:
  Domain* d_;
};
// Allocation tracking (track.c++): a block of domain d that is never a span
// object, so that its free always reaches free_cold (an arena block, or a
// mapping above the arena's limit); in Valgrind mode a plain domain_alloc.
void* domain_alloc_unpooled(Domain* d, std::size_t size, std::size_t alignment);
// --- defragmentation support (defrag.c++) -----------------------------------
// Statistics: an object of s, an active span of h, taken (span_pop_uncounted)
// or given back (span_push_uncounted) by the defragmenter without counting an
// allocation or a free, and the allocation of such an object counted once it
// is used (span_count_alloc).  h's owner, or its domain lock held.
void* span_pop_uncounted(Heap* h, Span* s);
void span_push_uncounted(Heap* h, Span* s, void* p, std::uint32_t i);
void span_count_alloc(Heap* h, Span* s);
// Makes s, an active span of h, the current span of its class (h's owner, under
// the domain lock for a private heap): allocations then fill it first.
void heap_queue_to_front(Heap* h, Span* s);
// The refill's rotation (heap_alloc_small_slow): the head of h's class c goes
// to the back of the queue, the span behind it becomes the head, with one
// taking of h's stats lock.  Nothing when the queue has fewer than two spans.
// h's owner.
void heap_queue_rotate(Heap* h, unsigned c);
// The domain lock of a private domain (the serialising lock in Valgrind mode).
void domain_lock(Domain* d);
void domain_unlock(Domain* d);
// The private domain whose defragmentation pass is calling its relocation
// callback on this thread (defrag.c++), or nullptr.  The callback must not
// allocate, free or trim in that heap: its lock is recursive, so such a call
// would change the heap under the pass.  The private heap's allocation, free
// and resize paths (never the process heap's) and domain_trim check it with
// relocating_check; reading the heap (usable size, statistics, analyze) is
// allowed.
#if CALLOC_DEFRAG
extern constinit thread_local Domain* tls_relocating __attribute__((tls_model("initial-exec"))) LCA_HIDDEN;
[[noreturn]] void relocating_reentered(Domain* d);
inline void relocating_check(Domain* d) {
  if (__builtin_expect(tls_relocating == d, 0)) relocating_reentered(d);
}
// A free or resize (what: "free" or "realloc") of p, a live block of the
// private domain d, with d's lock held: when p is the object of one of the
// handles of d's HandleAllocator, which only deallocate_handle frees, aborts
// with "Invalid free" ("Invalid realloc") before anything changes -- unless
// this is deallocate_handle's own free of it, which takes it out of the
// handle objects (handle.c++).  One load and branch for other private heaps.
void handle_object_free_check(Domain* d, const void* p, const char* what);
inline void handle_object_check(Domain* d, const void* p, const char* what) {
  if (__builtin_expect(d->handles != nullptr, 0)) handle_object_free_check(d, p, what);
}
// The same without d's lock held (the Valgrind and ASan modes' frees, before
// the quarantine): takes it.
void handle_object_check_unlocked(Domain* d, const void* p, const char* what);
#else
inline void relocating_check(Domain*) {}  // no defragmentation engine
inline void handle_object_check(Domain*, const void*, const char*) {}
inline void handle_object_check_unlocked(Domain*, const void*, const char*) {}
#endif

// fork() support for every domain.
void domains_prefork();
void domains_postfork_parent();
void domains_postfork_child();

}  // namespace lca

#endif
