// secure.c++ -- the hardened heap: SecureAllocator's in every build, malloc's with
// --enable-secure.
//
// It shares no code path with the core heap (span, arena, tcache), whose free
// links live inside freed objects: here nothing about the heap is stored in the
// memory users can reach.  Small and medium blocks (up to 65528 bytes) live in
// slots of 45 size classes; each 4 MiB chunk serves one class and is reserved
// no-access at a random address (getrandom), then opened one slab at a time (64
// KiB or 8 slots, whichever is larger), every slab between no-access guard
// pages, slabs opened in random order.  The state of each slot is kept in a
// separate mapping (the chunk's ChunkMeta): a `used` bit (live, in a thread's
// cache or in quarantine) and a state byte -- never handed out, live, freed --
// that a free changes with one atomic exchange, so that it claims a block exactly
// once without a lock; plus the requested size and alignment of its last use.  So a
// double free is exact, and a pointer into a guard, the middle of a slot, an
// unopened slab or a never-used slot is an invalid free.  The 8 bytes after the
// requested size hold a canary (per-process secret mixed with the slot's address,
// first byte zero), checked on free and realloc.  Freed blocks are zeroed (with
// their canary) and wait in a per-class quarantine (bounded in slots and bytes,
// eviction at a random position); a slot handed out again is checked to be still
// zero wherever its last block or the new one reaches (the rest of the slot was
// zero and no block reached it since), and trim checks whole slots as they leave
// the quarantine (write after free), so fresh memory is zero.
// Slots are picked at a random position in the slab.  The pointers to ChunkMeta
// (the radix map from chunk address to metadata) and the quarantine entries are
// stored xor-ed with a per-process secret and their own address, and checked
// against a magic word on use: a forged entry is reported, not followed.
// Size 0 gets a slot in a chunk that is never opened (no access at all).
// Large blocks get a mapping of their own between two no-access guard pages, the
// block ending at the trailing guard (rounded to 16 bytes); the slack on either
// side is filled with canary bytes and checked on free.  A freed large block is
// made no-access and its pages returned (MADV_DONTNEED); it stays reserved, in a
// bounded quarantine, so a later use faults and a double free is named; then it
// is unmapped.  Locks: one per size class per heap, one for large blocks.  The
// process heap adds per-thread caches ("thread caches" below): a few taken slots
// and a few freed blocks per class, moved under one lock acquisition per batch.
// A chunk left empty is released (trim, out of memory); its metadata goes to the
// class's next chunk only once no thread can still be reading it from a lookup
// made before the release ("readers of chunk metadata" below: read sections and
// membarrier).
// docs/design.md ("Secure heap") gives the thresholds and their measurements,
// docs/SECURITY.md the threat model.
#include "secure.h++"
#include "placement.h++"
#include "lifecycle.h++"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <new>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <libcalloc.h>

#include "module.h++"
#include "os.h++"
#include "report.h++"
#include "secure_vg.h++"
#include "vg.h++"
#if CALLOC_SECURE && CALLOC_TRACKING
#include "track.h++"
#endif

namespace lca {
namespace {

constexpr std::size_t kSecChunk = std::size_t{4} << 20;
constexpr unsigned kNumClasses = 45;       // class 0: size 0; classes 1..44: 16 B .. 64 KiB
constexpr std::size_t kMaxSlot = 65536;
constexpr std::size_t kCanary = 8;         // canary bytes after each small block
constexpr std::size_t kMaxSmall = kMaxSlot - kCanary;
constexpr std::size_t kMinSlab = 64 * 1024;
constexpr unsigned kMinSlotsPerSlab = 8;
constexpr unsigned kQuarantineMax = 256;                 // slots per class
constexpr std::size_t kQuarantineBytes = 256 * 1024;     // bytes per class
constexpr unsigned kLargeQuarantine = 64;                // large blocks, process-wide

// Slot size of class c: multiples of 16 up to 128, then four per doubling.
constexpr std::size_t class_slot(unsigned c) {
  if (c == 0) return 16;
  if (c <= 8) return std::size_t{16} * c;
  unsigned j = c - 9, k = 7 + j / 4, sub = j % 4;
  return (std::size_t{1} << k) + (sub + 1) * (std::size_t{1} << (k - 2));
}
static_assert(class_slot(44) == kMaxSlot);
static_assert(class_slot(9) == 160 && class_slot(12) == 256 && class_slot(13) == 320);

// The class for n bytes (slot content: request plus canary), 1 <= n <= kMaxSlot.
inline unsigned class_for(std::size_t n) {
  if (n <= 128) return static_cast<unsigned>((n + 15) >> 4);
  unsigned k = 63u - static_cast<unsigned>(__builtin_clzll(n - 1));
  std::size_t step = std::size_t{1} << (k - 2);
  auto sub = static_cast<unsigned>((n - 1 - (std::size_t{1} << k)) / step);
  return 9 + (k - 7) * 4 + sub;
}

// --- secrets and randomness ------------------------------------------------------

struct Secrets {
  std::uint64_t canary;  // mixed with a slot's address into its canary
  std::uint64_t meta;    // encodes metadata pointers
  std::uint64_t seed;    // first rng seed
};
constinit Secrets g_secrets{};
constinit std::atomic<int> g_secrets_state{0};  // 0 none, 1 making, 2 ready

inline std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

__attribute__((noinline)) const Secrets& secrets_slow() {
  int expected = 0;
  if (g_secrets_state.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
    Secrets s{};
    if (!os_random(&s, sizeof s)) {
      // No getrandom (seccomp, very old kernel): weaker, but still per process.
      timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      std::uint64_t x = static_cast<std::uint64_t>(ts.tv_nsec) ^ (static_cast<std::uint64_t>(getpid()) << 32) ^
                        reinterpret_cast<std::uintptr_t>(&ts);
      s.canary = mix64(x);
      s.meta = mix64(x + 1);
      s.seed = mix64(x + 2);
    }
    s.meta |= 1;  // never zero: a zero entry means "no chunk"
    g_secrets = s;
    g_secrets_state.store(2, std::memory_order_release);
  } else {
    while (g_secrets_state.load(std::memory_order_acquire) != 2) sched_yield();
  }
  return g_secrets;
}

inline const Secrets& secrets() {
  if (__builtin_expect(g_secrets_state.load(std::memory_order_acquire) == 2, 1)) return g_secrets;
  return secrets_slow();
}

// The secrets where a heap is known to exist (a slot or chunk of one is at hand):
// secure_heap_create made them before the heap, and whatever published the heap's
// memory (the chunk map's release store, a lock) published them too.
inline const Secrets& heap_secrets() { return g_secrets; }

// The canary after the block in the slot at `slot`: first byte (lowest, on a
// little-endian machine the first in memory) zero, so a string read stops there.
inline std::uint64_t canary_for(std::uintptr_t slot) {
  return mix64(heap_secrets().canary ^ slot) & ~std::uint64_t{0xff};
}

// xorshift64*: per class, under its lock.
inline std::uint64_t next_random(std::uint64_t* state) {
  std::uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545f4914f6cdd1dull;
}

// A random number below n without a division (Lemire's multiply-shift).
inline std::uint32_t random_below(std::uint64_t* state, std::uint32_t n) {
  return static_cast<std::uint32_t>(((next_random(state) >> 32) * n) >> 32);
}

// --- chunk metadata ----------------------------------------------------------------

// Slabs per chunk, at most: a slab is at least kMinSlab bytes.
constexpr std::uint32_t kMaxSlabs = 64;
static_assert(kSecChunk / kMinSlab <= kMaxSlabs);

struct ChunkMeta;
struct SlabMeta {
  ChunkMeta* chunk;
  SlabMeta* next;  // in the class's list of slabs with free slots
  SlabMeta* prev;
  std::uint32_t index;
  std::uint32_t free_slots;  // neither live nor quarantined
  bool active;               // opened (read-write)
  bool in_partial;
  bool purged;  // given back by trim, no slot handed out since: the next trim skips it
};

struct ChunkMeta {
  std::uintptr_t check;  // (uintptr_t)this ^ meta secret ^ base
  char* base;
  SecureHeap* heap;
  unsigned cls;
  std::uint32_t slot_size;
  std::uint32_t slots_per_slab;
  std::uint32_t nslabs;
  std::uint32_t inactive;  // slabs not opened yet
  std::size_t slab_bytes;
  std::size_t stride;      // slab plus its guard page
  std::size_t meta_bytes;
  ChunkMeta* next;         // the class's chunks
  SlabMeta* slabs;
  std::uint32_t total;      // slots in the chunk
  std::uint32_t page;       // the page size: the chunk's first slab starts there
  std::uint64_t stride_inv;  // ceil(2^44 / stride), ceil(2^44 / slot_size): divisions
  std::uint64_t slot_inv;    // by multiplication (div44)
  std::uint64_t spp_inv;     // ceil(2^44 / slots_per_slab)
  std::uint64_t* used;     // live, in a thread's cache or in quarantine: under the class lock
  struct SlotInfo* info;   // per slot
  std::uint32_t slab_used;  // slots_per_slab * slot_size: the bytes of a slab that hold slots
  // open[k]: slab k is opened (a copy of slabs[k].active, so that a lookup reads
  // one byte of this descriptor, not a SlabMeta); 0 past nslabs.
  std::uint8_t open[kMaxSlabs];
};

// Per slot, 4 bytes: the requested size and alignment of its last block, and its
// state: kNever (never handed out), kLiveBlock, kFreed.  The state byte is its own
// atomic: the thread handing a taken slot out stores kLiveBlock (no other thread
// may touch a taken slot), and a free claims the block with one exchange, so of
// two frees of a block, from any threads, exactly one sees kLiveBlock and the
// other is reported; a slot a thread's cache holds is not live.
// kLiveTracked (--enable-secure --enable-tracking): a live block that the
// process heap's tracker has recorded (secure_set_tracked).  The free's exchange
// returns it, so that only the frees of such blocks call the tracker; any other
// free finds kLiveBlock and never looks (docs/design.md, "Secure and tracking
// together").  In other builds no slot is ever kLiveTracked.
enum : std::uint8_t { kNever = 0, kLiveBlock = 1, kFreed = 2, kLiveTracked = kLiveBlock | 4 };
inline bool is_live(std::uint8_t state) { return state & kLiveBlock; }
struct SlotInfo {
  std::uint16_t size;
  std::uint8_t align_log;  // log2 of a requested alignment > 16, else 0
  std::atomic<std::uint8_t> state;
};
static_assert(sizeof(SlotInfo) == 4);

// n / d for n < 2^22 and 16 <= d < 2^22, with inv = ceil(2^44 / d): the error of
// n * inv / 2^44 is below n / 2^44 < 2^-22 < 1/d, so the floor is exact.
constexpr std::uint64_t div44_inv(std::uint64_t d) { return ((std::uint64_t{1} << 44) + d - 1) / d; }
constexpr std::uint32_t div44(std::uint32_t n, std::uint64_t inv) { return static_cast<std::uint32_t>((n * inv) >> 44); }
static_assert(div44((std::uint32_t{1} << 22) - 1, div44_inv(16)) == ((1u << 22) - 1) / 16);
static_assert(div44((std::uint32_t{1} << 22) - 1, div44_inv((1u << 22) - 4096)) == 1);
static_assert(div44(3 * 69632 - 1, div44_inv(69632)) == 2 && div44(3 * 69632, div44_inv(69632)) == 3);

// `used` is written under the class lock only, with atomic loads and stores (no
// read-modify-write), so that a thread cache can check an entry without the lock.
inline bool bit(const std::uint64_t* bm, std::uint32_t i) {
  return (__atomic_load_n(&bm[i >> 6], __ATOMIC_RELAXED) >> (i & 63)) & 1;
}
inline void set_bit(std::uint64_t* bm, std::uint32_t i) {
  __atomic_store_n(&bm[i >> 6], bm[i >> 6] | std::uint64_t{1} << (i & 63), __ATOMIC_RELAXED);
}
inline void clear_bit(std::uint64_t* bm, std::uint32_t i) {
  __atomic_store_n(&bm[i >> 6], bm[i >> 6] & ~(std::uint64_t{1} << (i & 63)), __ATOMIC_RELAXED);
}

inline std::uint8_t state_of(const ChunkMeta* m, std::uint32_t g) {
  return m->info[g].state.load(std::memory_order_acquire);
}

// The first clear bit in [a, b), or b.
std::uint32_t first_clear(const std::uint64_t* bm, std::uint32_t a, std::uint32_t b) {
  while (a < b) {
    std::uint32_t sh = a & 63;
    std::uint64_t inv = ~bm[a >> 6] >> sh;
    if (inv) {
      std::uint32_t pos = a + static_cast<std::uint32_t>(__builtin_ctzll(inv));
      return pos < b ? pos : b;
    }
    a += 64 - sh;
  }
  return b;
}

// --- the radix map: chunk address -> encoded ChunkMeta* -----------------------------
// 47-bit addresses: 14 bits pick a leaf (8 GiB each), 11 bits a 4 MiB chunk in it.
constexpr unsigned kRadixTopBits = 14;
constexpr unsigned kRadixLeafBits = 11;
using RadixLeaf = std::atomic<std::uintptr_t>[std::size_t{1} << kRadixLeafBits];
LCA_BIG_BSS(radix) constinit std::atomic<RadixLeaf*> g_radix[std::size_t{1} << kRadixTopBits]{};
constinit pthread_mutex_t g_radix_lock = PTHREAD_MUTEX_INITIALIZER;

inline std::atomic<std::uintptr_t>* radix_slot(std::uintptr_t addr, bool create) {
  if (addr >> 47) return nullptr;
  std::size_t top = addr >> (22 + kRadixLeafBits);
  RadixLeaf* leaf = g_radix[top].load(std::memory_order_acquire);
  if (!leaf) {
    if (!create) return nullptr;
    lca_mutex_lock(&g_radix_lock);
    leaf = g_radix[top].load(std::memory_order_acquire);
    if (!leaf) {
      leaf = static_cast<RadixLeaf*>(os_map(sizeof(RadixLeaf)));
      if (leaf) g_radix[top].store(leaf, std::memory_order_release);
    }
    lca_mutex_unlock(&g_radix_lock);
    if (!leaf) return nullptr;
  }
  return &(*leaf)[(addr >> 22) & ((std::size_t{1} << kRadixLeafBits) - 1)];
}

inline std::uintptr_t encode_meta(const ChunkMeta* m, std::uintptr_t base) {
  return reinterpret_cast<std::uintptr_t>(m) ^ secrets().meta ^ base;
}

// The metadata of the secure chunk holding p, or nullptr.  A radix entry or a
// ChunkMeta that does not decode to a consistent pair is corruption.
__attribute__((always_inline)) inline ChunkMeta* chunk_lookup(const void* p) {
  auto addr = reinterpret_cast<std::uintptr_t>(p);
  std::atomic<std::uintptr_t>* slot = radix_slot(addr, false);
  if (!slot) return nullptr;
  std::uintptr_t v = slot->load(std::memory_order_acquire);
  if (!v) return nullptr;
  std::uintptr_t base = addr & ~(kSecChunk - 1);
  auto* m = reinterpret_cast<ChunkMeta*>(v ^ heap_secrets().meta ^ base);
  if ((reinterpret_cast<std::uintptr_t>(m) & 7) != 0 || reinterpret_cast<std::uintptr_t>(m) >> 47)
    report_fatal("Corrupted heap metadata", p, "the secure heap's chunk map entry does not decode");
  if (m->check != (reinterpret_cast<std::uintptr_t>(m) ^ heap_secrets().meta ^ base) ||
      reinterpret_cast<std::uintptr_t>(m->base) != base)
    report_fatal("Corrupted heap metadata", p, "the secure heap's chunk descriptor fails its check");
  return m;
}

// --- heaps -----------------------------------------------------------------------------

inline void bump(std::atomic<std::size_t>& c, std::size_t n) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

struct ClassState {
  // fork(): the forking thread's token (fork_token) while another thread forks,
  // stored under the lock by the prepare handler, which then releases the lock
  // (secure_prefork); nullptr otherwise.  Beside the lock: class_lock reads it once
  // it holds the lock.  (Before it, not after: GCC 12 with
  // -fsanitize=address,undefined takes an access just past the mutex for an
  // overflow of it, a bogus -Wstringop-overflow.)
  std::atomic<const void*> forking;
  pthread_mutex_t lock;
  ChunkMeta* chunks;
  SlabMeta* partial;  // active slabs with free slots
  std::uint64_t rng;
  // Counters, written under the lock (plain load and store: no atomic
  // read-modify-write on the hot path), read without it by the statistics.
  std::atomic<std::size_t> allocs, frees, alloc_bytes, free_bytes;
  std::uint32_t q_count;
  std::uint32_t q_cap;
  std::uintptr_t quarantine[kQuarantineMax];  // slot address ^ meta secret ^ &entry
  // The metadata of chunks that release_reserves unmapped (linked by `next`):
  // kept mapped, because a free racing with the release may still read it, and
  // used again by the class's next new chunk (retire_chunk, new_chunk) -- once
  // no such free can be reading it any more (readers_quiesce).  Until then, on
  // `pending`, as it was at the release (purged at once where membarrier is refused).
  ChunkMeta* retired;
  ChunkMeta* pending;
};

}  // namespace

struct SecureHeap {
  ClassState classes[kNumClasses];
  std::atomic<std::size_t> allocated_bytes, freed_bytes, alloc_count, free_count;
  std::atomic<std::size_t> realloc_in_place, realloc_moved;
  std::atomic<std::size_t> mapped_bytes, large_live;
  std::uint64_t placement_rng;  // under placement_lock (new_chunk)
  pthread_mutex_t placement_lock;
  SecureHeap* next;
  SecureHeap* prev;
  std::size_t self_bytes;
};

namespace {

constinit pthread_mutex_t g_heaps_lock = PTHREAD_MUTEX_INITIALIZER;
constinit SecureHeap* g_heaps = nullptr;


// class_lock found cs->forking set, cs's lock held.  Another thread's fork: this
// thread lets go and waits for g_heaps_lock, which the forking thread holds from
// before it set the flag until after it cleared it (so it sleeps rather than
// spins), then takes the lock again.  It held no other class lock (class locks
// are taken one at a time), nor any lock the prepare handler takes before the
// class locks (g_tc_lock, g_heaps_lock: held by the forking thread, which set
// the flag after taking them).  The forking thread itself goes on: a
// pthread_atfork handler of another library, run between libcalloc's, may
// allocate.
__attribute__((noinline, cold)) void class_lock_wait_fork(ClassState* cs) {
  fork_wait(cs->forking, &cs->lock, &g_heaps_lock);
}

// Takes the lock of a class; waits while another thread forks (the prepare
// handler holds no class lock across the fork: secure_prefork).  One load and a
// branch not taken beside the lock.
inline void class_lock(ClassState* cs) {
  lca_mutex_lock(&cs->lock);
  if (__builtin_expect(cs->forking.load(std::memory_order_relaxed) != nullptr, 0)) class_lock_wait_fork(cs);
}
constinit std::atomic<SecureHeap*> g_process_heap{nullptr};

// --- readers of chunk metadata and the release's wait ---------------------------------
// A free (and realloc, usable size, secure_block_info) looks a chunk up in the
// radix map and reads its ChunkMeta without the class lock.  A release (trim, out
// of memory: release_reserves) clears a chunk's radix entry and unmaps it; its
// ChunkMeta is given to the class's next new chunk only once no thread can still
// be reading it from before the clear.  Each such reader runs inside a "read
// section": its thread's ReaderSlot counter is odd meanwhile, made so by a plain
// store before the radix map is read (no locked instruction, no fence: the
// counter is the thread's own).  The releaser, after clearing the entries, issues
// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) (os_barrier_all_threads): every
// running thread executes a full barrier, so that either the releaser sees a
// reader's odd counter, or that reader's radix read comes after the barrier and
// finds the entry cleared.  It then waits until every counter it saw odd has
// moved on (readers_quiesce); a reader entering later cannot find the chunk.
// The same scheme as userspace RCU's QSBR flavour and the asymmetric fences
// of folly and Linux's own sys_membarrier users, reduced to what one release
// needs.  Without membarrier (ENOSYS before Linux 4.14, a seccomp filter), a
// stalled reader that never leaves (a thread stopped inside a free), or a wait
// longer than kReaderWaitNs, the released metadata is not reused (yet): it
// stays on the class's `pending` list, and a later release tries again.  Threads
// without a slot (while one is made, after the thread's key destructor ran, out
// of memory) count themselves in g_counted_readers with locked instructions:
// slow paths only.  docs/design.md ("Secure heap", "Released chunks keep their
// metadata") has the costs.
struct alignas(64) ReaderSlot {
  std::atomic<std::uint64_t> seq;  // odd: its thread is inside a read section
  std::atomic<bool> taken;         // a thread owns it (changed under g_reader_lock)
  ReaderSlot* next;                // in g_readers: pushed once, never removed or unmapped
};
ReaderSlot* const kReaderCounted = reinterpret_cast<ReaderSlot*>(std::uintptr_t{1});  // no slot: count
constinit thread_local ReaderSlot* tls_reader __attribute__((tls_model("initial-exec"))) = nullptr;
// The calling thread's counted sections still open (fork's child keeps its own).
constinit thread_local unsigned tls_counted_reads __attribute__((tls_model("initial-exec"))) = 0;
constinit std::atomic<ReaderSlot*> g_readers{nullptr};
constinit std::atomic<std::size_t> g_counted_readers{0};
constinit pthread_mutex_t g_reader_lock = PTHREAD_MUTEX_INITIALIZER;  // slots taken and given back, carving
constinit ReaderSlot* g_reader_carve = nullptr;  // the rest of the last page mapped for slots
constinit std::size_t g_reader_carve_left = 0;
constinit pthread_key_t g_reader_key;
constinit bool g_reader_key_ok = false;
constinit pthread_once_t g_reader_key_once = PTHREAD_ONCE_INIT;
constexpr std::uint64_t kReaderWaitNs = 20'000'000;  // then the metadata waits for a later release

struct ReadSection {
  ReaderSlot* slot;     // the thread's slot, or nullptr: counted (leave == 1) or nested (leave == 0)
  std::uint64_t leave;  // the slot's counter after the section
};

// A thread's slot goes back at its exit.  Its counter is made even if the thread
// exits inside a section (pthread_exit from a signal handler that interrupted a
// free: the section never resumes); later frees by the thread (other key
// destructors) are counted.
void reader_thread_exit(void* value) {
  auto* r = static_cast<ReaderSlot*>(value);
  tls_reader = kReaderCounted;
  std::uint64_t v = r->seq.load(std::memory_order_relaxed);
  if (v & 1) r->seq.store(v + 1, std::memory_order_release);
  if (tls_counted_reads) {
    g_counted_readers.fetch_sub(tls_counted_reads, std::memory_order_release);
    tls_counted_reads = 0;
  }
  lca_mutex_lock(&g_reader_lock);
  r->taken.store(false, std::memory_order_relaxed);
  lca_mutex_unlock(&g_reader_lock);
}

void reader_make_key() { g_reader_key_ok = pthread_key_create(&g_reader_key, reader_thread_exit) == 0; }

// The calling thread's first read section: a slot (a free one of the list, or a
// new one), or nullptr (the section is counted).
__attribute__((noinline)) ReaderSlot* reader_create() {
  tls_reader = kReaderCounted;  // meanwhile (pthread_setspecific may allocate)
  pthread_once(&g_reader_key_once, reader_make_key);
  if (!g_reader_key_ok) return nullptr;  // counted for good
  lca_mutex_lock(&g_reader_lock);
  ReaderSlot* r = g_readers.load(std::memory_order_relaxed);
  while (r && r->taken.load(std::memory_order_relaxed)) r = r->next;
  if (!r) {
    if (!g_reader_carve_left) {
      const std::size_t page = os_page_size();
      if (void* mem = os_map(page)) {
        g_reader_carve = static_cast<ReaderSlot*>(mem);
        g_reader_carve_left = page / sizeof(ReaderSlot);
      }
    }
    if (g_reader_carve_left) {
      r = new (g_reader_carve++) ReaderSlot();
      --g_reader_carve_left;
      r->next = g_readers.load(std::memory_order_relaxed);
      g_readers.store(r, std::memory_order_release);
    }
  }
  if (r) r->taken.store(true, std::memory_order_relaxed);
  lca_mutex_unlock(&g_reader_lock);
  if (!r) {
    tls_reader = nullptr;  // out of memory: try again next time
    return nullptr;
  }
  if (pthread_setspecific(g_reader_key, r) != 0) {
    lca_mutex_lock(&g_reader_lock);
    r->taken.store(false, std::memory_order_relaxed);
    lca_mutex_unlock(&g_reader_lock);
    return nullptr;  // no exit hook: counted for good
  }
  tls_reader = r;
  return r;
}

__attribute__((noinline)) ReadSection reader_enter_slow() {
  ReaderSlot* r = tls_reader;
  if (!r) r = reader_create();
  if (r && r != kReaderCounted) {
    std::uint64_t v = r->seq.load(std::memory_order_relaxed);
    if (v & 1) return {nullptr, 0};
    r->seq.store(v + 1, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);  // as in reader_enter
    return {r, v + 2};
  }
  ++tls_counted_reads;
  // (Ordered before the chunk map's load by the releaser's membarrier, like a
  // slot's store; the locked add is there because the counter is shared.)
  g_counted_readers.fetch_add(1, std::memory_order_seq_cst);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  return {nullptr, 1};
}

__attribute__((noinline)) void reader_leave_counted() {
  --tls_counted_reads;
  g_counted_readers.fetch_sub(1, std::memory_order_release);
}

// Opens a read section: before the chunk map is read.  A plain load and store of
// the thread's own counter; a section opened inside another (a signal handler
// that frees inside a free) leaves the outer one's mark alone.
__attribute__((always_inline)) inline ReadSection reader_enter() {
  ReaderSlot* r = tls_reader;
  if (__builtin_expect(reinterpret_cast<std::uintptr_t>(r) > 1, 1)) {
    std::uint64_t v = r->seq.load(std::memory_order_relaxed);
    if (__builtin_expect(v & 1, 0)) return {nullptr, 0};
    r->seq.store(v + 1, std::memory_order_relaxed);
    // Only the compiler is kept from moving the chunk map's load above the
    // store: the releaser's membarrier orders the two for the CPU.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return {r, v + 2};
  }
  return reader_enter_slow();
}

// Closes it, once the chunk's metadata is read no more -- or once the section
// claimed a live block of the chunk, which keeps the chunk from being released.
__attribute__((always_inline)) inline void reader_leave(ReadSection rs) {
  if (__builtin_expect(rs.slot != nullptr, 1))
    rs.slot->seq.store(rs.leave, std::memory_order_release);
  else if (rs.leave)
    reader_leave_counted();
}

struct ReadScope {
  ReadSection rs;
  ReadScope() : rs(reader_enter()) {}
  ~ReadScope() { reader_leave(rs); }
  ReadScope(const ReadScope&) = delete;
  ReadScope& operator=(const ReadScope&) = delete;
};


// tests/unit/secure: a function called by a read section of a free or usable-size
// call after its lookup (not on the process heap's lock-free free), to hold it
// there while the test releases and reuses the chunk.
constinit std::atomic<void (*)(const void*)> g_read_stall_for_test{nullptr};
inline void read_stall_for_test(const void* p) {
  if (auto fn = g_read_stall_for_test.load(std::memory_order_relaxed); __builtin_expect(fn != nullptr, 0)) fn(p);
}

// What readers_quiesce found.
enum class Quiesce {
  quiet,      // no thread can still be reading the metadata from before
  waiting,    // one may (a reader stayed inside for kReaderWaitNs, or the caller is inside a section): try later
  no_barrier  // cannot be known: membarrier refused (ENOSYS, a seccomp filter); it will be no better later
};

// With no lock held, after chunks' radix entries were cleared: whether a thread
// can still be reading their metadata from before (above).
Quiesce readers_quiesce() {
  // Valgrind runs one thread at a time: each switch is a full barrier.  (Not
  // ASan mode, which is Valgrind mode's hooks without the serialisation.)
  if (!vg_serialised() && !os_barrier_all_threads()) return Quiesce::no_barrier;
  ReaderSlot* me = tls_reader;
  if (reinterpret_cast<std::uintptr_t>(me) > 1 && (me->seq.load(std::memory_order_relaxed) & 1))
    return Quiesce::waiting;
  if (tls_counted_reads) return Quiesce::waiting;
  const std::uint64_t deadline = os_now_ns() + kReaderWaitNs;
  auto wait = [&](unsigned& round) {
    pause_briefly(round);
    return ++round < 128 || os_now_ns() < deadline;
  };
  for (ReaderSlot* s = g_readers.load(std::memory_order_acquire); s; s = s->next) {
    if (s == me) continue;
    std::uint64_t v = s->seq.load(std::memory_order_acquire);
    if (!(v & 1)) continue;
    for (unsigned round = 0; s->seq.load(std::memory_order_acquire) == v;)
      if (!wait(round)) return Quiesce::waiting;
  }
  for (unsigned round = 0; g_counted_readers.load(std::memory_order_acquire) != 0;)
    if (!wait(round)) return Quiesce::waiting;
  return Quiesce::quiet;
}

// --- large blocks (process-wide table) -----------------------------------------------

enum : std::uint8_t { kEmpty = 0, kLive = 1, kQuarantined = 2, kGone = 3 };

// `key` is the block's address xor-ed with the meta secret: no table holds a plain
// pointer to a live block (a forged entry is useless, and for memcheck's leak
// check a block whose last pointer is lost is "definitely lost").
struct LargeEntry {
  std::uintptr_t key;
  std::uintptr_t base;
  std::size_t map_size;
  std::size_t size;
  SecureHeap* heap;
  std::uint8_t align_log;
  std::uint8_t state;
  bool tracked;  // recorded by the process heap's tracker (kLiveTracked's twin)
};

struct LargeTable {
  LargeEntry* slots;
  std::size_t cap;    // a power of two
  std::size_t count;  // live + quarantined
  std::size_t gone;   // tombstones
  std::uintptr_t ring[kLargeQuarantine];  // quarantined user pointers, oldest at ring_head
  unsigned ring_head, ring_count;
};
constinit pthread_mutex_t g_large_lock = PTHREAD_MUTEX_INITIALIZER;
constinit LargeTable g_large{};

inline std::size_t large_hash(std::uintptr_t u) { return static_cast<std::size_t>(mix64(u >> 4)); }
// The key of the block at u, and the block of a key (a large block exists, so the
// secrets do: large_find returns before calling it while the table is empty).
inline std::uintptr_t large_key(std::uintptr_t u) { return u ^ heap_secrets().meta; }
inline std::uintptr_t large_user(const LargeEntry& e) { return e.key ^ heap_secrets().meta; }

LargeEntry* large_find(std::uintptr_t u) {
  if (!g_large.cap) return nullptr;
  std::size_t mask = g_large.cap - 1;
  const std::uintptr_t key = large_key(u);
  for (std::size_t i = large_hash(u) & mask;; i = (i + 1) & mask) {
    LargeEntry* e = &g_large.slots[i];
    if (e->state == kEmpty) return nullptr;
    if (e->state != kGone && e->key == key) return e;
  }
}

// Makes room for one more entry (under g_large_lock); false when out of memory.
bool large_reserve() {
  if (g_large.cap && (g_large.count + g_large.gone + 1) * 4 < g_large.cap * 3) return true;
  std::size_t cap = g_large.cap ? g_large.cap : 256;
  while ((g_large.count + 1) * 2 > cap) cap *= 2;
  auto* slots = static_cast<LargeEntry*>(os_map(cap * sizeof(LargeEntry)));
  if (!slots) return false;
  for (std::size_t i = 0; i < g_large.cap; ++i) {
    LargeEntry& e = g_large.slots[i];
    if (e.state != kLive && e.state != kQuarantined) continue;
    for (std::size_t j = large_hash(large_user(e)) & (cap - 1);; j = (j + 1) & (cap - 1))
      if (slots[j].state == kEmpty) {
        slots[j] = e;
        break;
      }
  }
  if (g_large.slots) os_unmap(g_large.slots, g_large.cap * sizeof(LargeEntry));
  g_large.slots = slots;
  g_large.cap = cap;
  g_large.gone = 0;
  return true;
}

// Byte i of the pattern in a large block's slack (trailing slack: byte 0 is zero).
inline unsigned char slack_byte(std::uint64_t canary, std::size_t i) {
  return static_cast<unsigned char>(canary >> ((i & 7) * 8));
}

void large_check_slack(const LargeEntry& e) {
  std::size_t page = os_page_size();
  std::uint64_t c = canary_for(e.base);
  auto* data = reinterpret_cast<const unsigned char*>(e.base + page);
  const std::uintptr_t u = large_user(e);
  auto* user = reinterpret_cast<const unsigned char*>(u);
  const unsigned char* end = reinterpret_cast<const unsigned char*>(e.base + e.map_size - page);
  if (secure_vg()) {
    secure_vg_own(data, static_cast<std::size_t>(user - data));
    secure_vg_own(user + e.size, static_cast<std::size_t>(end - (user + e.size)));
  }
  for (const unsigned char* q = data; q < user; ++q)
    if (*q != slack_byte(c, static_cast<std::size_t>(user - q)))
      report_fatal("Canary corrupted", reinterpret_cast<const void*>(u),
                   "a write before the start of a large block (underflow)");
  for (const unsigned char* q = user + e.size; q < end; ++q)
    if (*q != slack_byte(c, static_cast<std::size_t>(q - (user + e.size))))
      report_fatal("Canary corrupted", reinterpret_cast<const void*>(u),
                   "a write past the end of a large block (overflow)");
  if (secure_vg()) {
    secure_vg_disown(data, static_cast<std::size_t>(user - data));
    secure_vg_disown(user + e.size, static_cast<std::size_t>(end - (user + e.size)));
  }
}

void* large_alloc(SecureHeap* h, std::size_t size, std::size_t alignment) {
  std::size_t page = os_page_size();
  std::size_t a = alignment < 16 ? 16 : alignment;
  std::size_t data = align_up(size + (a > page ? a : 0), page);
  std::size_t map_size = data + 2 * page;
  if (data < size || map_size < data) {
    errno = ENOMEM;
    return nullptr;
  }
  char* base = static_cast<char*>(os_reserve(map_size, page, 0));
  if (!base) return nullptr;
  std::uintptr_t end = reinterpret_cast<std::uintptr_t>(base) + page + data;
  std::uintptr_t user = (end - size) & ~(a - 1);
  if (a > page) {
    // The reservation holds `a` bytes more than the block to find an aligned
    // place in: keep the pages the block lies on and one guard page either side,
    // give the rest back, so that the slack on either side stays under a page.
    // (All of it was opened and filled with canary bytes: allocate(1, 1 GiB)
    // made 1 GiB resident, and 1 TiB had the OOM killer end the program.)
    std::uintptr_t lo = reinterpret_cast<std::uintptr_t>(base);
    std::uintptr_t hi = lo + map_size;
    std::uintptr_t keep_lo = (user & ~(page - 1)) - page;
    std::uintptr_t new_end = align_up(user + (size ? size : 1), page);
    if (new_end + page < hi) os_unmap(reinterpret_cast<void*>(new_end + page), hi - (new_end + page));
    if (keep_lo > lo) os_unmap(base, keep_lo - lo);
    base = reinterpret_cast<char*>(keep_lo);
    end = new_end;
    map_size = new_end + page - keep_lo;
    data = map_size - 2 * page;
  }
  if (!os_protect(base + page, data, true)) {
    os_unmap(base, map_size);
    errno = ENOMEM;
    return nullptr;
  }
  LargeEntry e{large_key(user), reinterpret_cast<std::uintptr_t>(base), map_size, size, h,
               static_cast<std::uint8_t>(a > 16 ? __builtin_ctzll(a) : 0), kLive, false};
  std::uint64_t c = canary_for(e.base);
  auto* d = reinterpret_cast<unsigned char*>(base + page);
  auto* u = reinterpret_cast<unsigned char*>(user);
  for (unsigned char* q = d; q < u; ++q) *q = slack_byte(c, static_cast<std::size_t>(u - q));
  for (unsigned char* q = u + size; q < reinterpret_cast<unsigned char*>(end); ++q)
    *q = slack_byte(c, static_cast<std::size_t>(q - (u + size)));
  lca_mutex_lock(&g_large_lock);
  if (!large_reserve()) {
    lca_mutex_unlock(&g_large_lock);
    os_unmap(base, map_size);
    errno = ENOMEM;
    return nullptr;
  }
  std::size_t mask = g_large.cap - 1;
  for (std::size_t i = large_hash(user) & mask;; i = (i + 1) & mask) {
    LargeEntry& s = g_large.slots[i];
    if (s.state == kEmpty || s.state == kGone) {
      if (s.state == kGone) --g_large.gone;
      s = e;
      break;
    }
  }
  ++g_large.count;
  lca_mutex_unlock(&g_large_lock);
  h->mapped_bytes.fetch_add(map_size, std::memory_order_relaxed);
  h->large_live.fetch_add(1, std::memory_order_relaxed);
  h->allocated_bytes.fetch_add(size, std::memory_order_relaxed);
  h->alloc_count.fetch_add(1, std::memory_order_relaxed);
  if (secure_vg()) {
    secure_vg_disown(d, user - reinterpret_cast<std::uintptr_t>(d));  // the leading slack
    secure_vg_allocated(reinterpret_cast<void*>(user), size, end - user);
  }
  return reinterpret_cast<void*>(user);
}

// Removes the oldest quarantined large block from the ring and the table (under
// the lock); its mapping is returned in *base / *size for the caller to unmap.
bool large_evict_oldest(std::uintptr_t* base, std::size_t* size, SecureHeap** heap) {
  if (!g_large.ring_count) return false;
  std::uintptr_t u = g_large.ring[g_large.ring_head];
  g_large.ring_head = (g_large.ring_head + 1) % kLargeQuarantine;
  --g_large.ring_count;
  LargeEntry* e = large_find(u);
  if (!e || e->state != kQuarantined) return true;  // its heap was destroyed meanwhile
  *base = e->base;
  *size = e->map_size;
  *heap = e->heap;
  e->state = kGone;
  --g_large.count;
  ++g_large.gone;
  return true;
}

void check_size_alignment(const void* p, std::size_t requested, unsigned align_log, std::size_t size,
                          std::size_t alignment, const char* what) {
  char detail[160];
  if (size != kAnySize && size != requested) {
    Writer w{detail, sizeof detail};
    w.str(what).str(" was given size ").num(size).str(", the block was allocated with ").num(requested);
    detail[w.len] = '\0';
    report_fatal("Size mismatch", p, detail);
  }
  if (alignment != kAnyAlignment) {
    std::size_t had = align_log ? std::size_t{1} << align_log : 16;
    std::size_t given = alignment < 16 ? 16 : alignment;
    if (had != given) {
      Writer w{detail, sizeof detail};
      w.str(what).str(" was given alignment ").num(alignment).str(", the block was allocated with ");
      if (align_log)
        w.num(had);
      else
        w.str("the default alignment");
      detail[w.len] = '\0';
      report_fatal("Alignment mismatch", p, detail);
    }
  }
}

// Frees a large block: false when p is not one.
bool large_free(void* p, std::size_t size, std::size_t alignment, const char* what) {
  auto u = reinterpret_cast<std::uintptr_t>(p);
  lca_mutex_lock(&g_large_lock);
  LargeEntry* e = large_find(u);
  if (!e) {
    lca_mutex_unlock(&g_large_lock);
    return false;
  }
  if (e->state == kQuarantined) report_fatal("Double free", p, "the large block was freed already");
  check_size_alignment(p, e->size, e->align_log, size, alignment, what);
  large_check_slack(*e);
  e->state = kQuarantined;
  LargeEntry copy = *e;
  lca_mutex_unlock(&g_large_lock);
#if CALLOC_SECURE && CALLOC_TRACKING
  // Quarantined: its address is no one's until it leaves the ring below, 64
  // large frees later at the soonest.
  if (copy.tracked) track_forget(p);
#endif

  std::size_t page = os_page_size();
  void* data = reinterpret_cast<void*>(copy.base + page);
  os_protect(data, copy.map_size - 2 * page, false);
  os_purge(data, copy.map_size - 2 * page);
  copy.heap->freed_bytes.fetch_add(copy.size, std::memory_order_relaxed);
  copy.heap->free_count.fetch_add(1, std::memory_order_relaxed);
  copy.heap->large_live.fetch_sub(1, std::memory_order_relaxed);

  std::uintptr_t old_base = 0;
  std::size_t old_size = 0;
  SecureHeap* old_heap = nullptr;
  lca_mutex_lock(&g_large_lock);
  if (g_large.ring_count == kLargeQuarantine) large_evict_oldest(&old_base, &old_size, &old_heap);
  g_large.ring[(g_large.ring_head + g_large.ring_count) % kLargeQuarantine] = u;
  ++g_large.ring_count;
  lca_mutex_unlock(&g_large_lock);
  if (old_base) {
    os_unmap(reinterpret_cast<void*>(old_base), old_size);
    old_heap->mapped_bytes.fetch_sub(old_size, std::memory_order_relaxed);
  }
  return true;
}

// --- slabs ----------------------------------------------------------------------------

inline void* slot_addr(const ChunkMeta* m, std::uint32_t slab, std::uint32_t i) {
  return m->base + m->page + slab * m->stride + std::size_t{i} * m->slot_size;
}

// Chunks are placed at random in a 64 GiB window of the address space, itself at
// a random 64 GiB-aligned place in [1 TiB, 64 TiB): 16384 places for a chunk in
// ~1000 windows, and the radix map needs at most 8 leaves (16 KiB each) for it.
constexpr std::uintptr_t kWindow = std::uintptr_t{64} << 30;
std::uintptr_t secure_window() {
  constexpr std::uintptr_t lo = std::uintptr_t{1} << 40, hi = std::uintptr_t{1} << 46;
  return lo + (mix64(secrets().seed) % ((hi - lo) / kWindow)) * kWindow;
}

// The bytes at the start of a retired chunk's metadata that its purge keeps: the
// pages up to the first whole page of the `used` and `info` arrays (the
// descriptor, the slabs, the arrays' start).
inline std::size_t retired_keep_bytes(const ChunkMeta* m, std::size_t meta_bytes, std::size_t page) {
  std::size_t keep = align_up(static_cast<std::size_t>(reinterpret_cast<const char*>(m->used) -
                                                       reinterpret_cast<const char*>(m)), page);
  return keep < meta_bytes ? keep : meta_bytes;
}

// A new chunk for class c of h (under the class lock); nullptr when out of memory.
ChunkMeta* new_chunk(SecureHeap* h, unsigned c) {
  const std::size_t page = os_page_size();
  const std::size_t slot = class_slot(c);
  std::size_t slab_bytes, nslabs;
  if (c == 0) {
    slab_bytes = kSecChunk - 2 * page;
    nslabs = 1;
  } else {
    slab_bytes = align_up(slot * kMinSlotsPerSlab > kMinSlab ? slot * kMinSlotsPerSlab : kMinSlab, page);
    nslabs = (kSecChunk - page) / (slab_bytes + page);
  }
  const auto spp = static_cast<std::uint32_t>(slab_bytes / slot);
  const std::size_t total = nslabs * spp;
  const std::size_t words = (total + 63) / 64;
  std::size_t meta_bytes = align_up(sizeof(ChunkMeta), 16) + align_up(nslabs * sizeof(SlabMeta), 16) +
                           words * 8 + total * sizeof(SlotInfo);
  meta_bytes = align_up(meta_bytes, page);
  // The metadata of a released chunk of the class if there is one (retire_chunk:
  // the same layout; its arrays were purged, so read as zero past their first
  // page), else a new mapping.
  ClassState* cs = &h->classes[c];
  ChunkMeta* reused = cs->retired;
  char* meta_mem;
  if (reused) {
    meta_mem = reinterpret_cast<char*>(reused);
  } else {
    meta_mem = static_cast<char*>(os_map(meta_bytes));
    if (!meta_mem) return nullptr;
  }

  // Random placement: a 4 MiB-aligned address in the process's window when the kernel
  // takes it, else where the kernel puts it.  (Not under Valgrind or ASan, whose
  // address-space managers and shadow memory own parts of that range.)
  std::uintptr_t hint = 0;
  if (!on_valgrind()) {
    lca_mutex_lock(&h->placement_lock);
    std::uint64_t r = next_random(&h->placement_rng);
    lca_mutex_unlock(&h->placement_lock);
    hint = (secure_window() + r % kWindow) & ~(kSecChunk - 1);
  }
  char* base = static_cast<char*>(os_reserve(kSecChunk, kSecChunk, hint));
  if (!base) {
    if (!reused) os_unmap(meta_mem, meta_bytes);
    return nullptr;
  }
  std::atomic<std::uintptr_t>* rslot = radix_slot(reinterpret_cast<std::uintptr_t>(base), true);
  if (!rslot) {
    os_unmap(base, kSecChunk);
    if (!reused) os_unmap(meta_mem, meta_bytes);
    return nullptr;
  }
  auto* m = reinterpret_cast<ChunkMeta*>(meta_mem);
  char* q = meta_mem + align_up(sizeof(ChunkMeta), 16);
  // (A reused descriptor gets the same pointers again, as it had them.)
  m->slabs = reinterpret_cast<SlabMeta*>(q);
  q += align_up(nslabs * sizeof(SlabMeta), 16);
  m->used = reinterpret_cast<std::uint64_t*>(q);
  m->info = reinterpret_cast<SlotInfo*>(m->used + words);  // zero (kNever): os_map, or purged
  if (reused) {
    cs->retired = reused->next;
    // The arrays' bytes in the pages the purge kept, and the slabs' state.
    char* arrays = reinterpret_cast<char*>(m->used);
    char* purged = meta_mem + retired_keep_bytes(m, meta_bytes, page);
    if (purged > arrays) std::memset(arrays, 0, static_cast<std::size_t>(purged - arrays));
    std::memset(m->open, 0, sizeof m->open);
    for (std::uint32_t i = 0; i < nslabs; ++i) {
      m->slabs[i].next = m->slabs[i].prev = nullptr;
      m->slabs[i].free_slots = 0;
      m->slabs[i].active = m->slabs[i].in_partial = m->slabs[i].purged = false;
    }
  }
  m->base = base;
  m->heap = h;
  m->cls = c;
  m->slot_size = static_cast<std::uint32_t>(slot);
  m->slots_per_slab = spp;
  m->nslabs = static_cast<std::uint32_t>(nslabs);
  m->inactive = m->nslabs;
  m->slab_bytes = slab_bytes;
  m->stride = slab_bytes + page;
  m->total = static_cast<std::uint32_t>(total);
  m->page = static_cast<std::uint32_t>(page);
  m->stride_inv = div44_inv(m->stride);
  m->slot_inv = div44_inv(slot);
  m->spp_inv = div44_inv(spp);
  m->slab_used = spp * static_cast<std::uint32_t>(slot);
  m->meta_bytes = meta_bytes;
  for (std::uint32_t i = 0; i < nslabs; ++i) {
    m->slabs[i].chunk = m;
    m->slabs[i].index = i;
  }
  m->check = reinterpret_cast<std::uintptr_t>(m) ^ secrets().meta ^ reinterpret_cast<std::uintptr_t>(base);
  rslot->store(encode_meta(m, reinterpret_cast<std::uintptr_t>(base)), std::memory_order_release);
  m->next = h->classes[c].chunks;
  h->classes[c].chunks = m;
  h->mapped_bytes.fetch_add(reused ? kSecChunk : kSecChunk + meta_bytes, std::memory_order_relaxed);
  return m;
}

void partial_push(ClassState* cs, SlabMeta* s) {
  s->prev = nullptr;
  s->next = cs->partial;
  if (cs->partial) cs->partial->prev = s;
  cs->partial = s;
  s->in_partial = true;
}

void partial_remove(ClassState* cs, SlabMeta* s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    cs->partial = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = nullptr;
  s->in_partial = false;
}

// Opens a slab at a random position of a chunk of the class (a new chunk when all
// are open); nullptr when out of memory.
SlabMeta* open_slab(SecureHeap* h, unsigned c) {
  ClassState* cs = &h->classes[c];
  ChunkMeta* m = cs->chunks;
  while (m && !m->inactive) m = m->next;
  if (!m && !(m = new_chunk(h, c))) return nullptr;
  std::uint32_t start = random_below(&cs->rng, m->nslabs);
  std::uint32_t k = start;
  while (m->slabs[k].active) k = (k + 1) % m->nslabs;
  SlabMeta* s = &m->slabs[k];
  if (c != 0 && !os_protect(slot_addr(m, k, 0), m->slab_bytes, true)) {
    errno = ENOMEM;
    return nullptr;
  }
  // Valgrind mode: its slots hold no block yet (a mapping is defined to memcheck).
  if (c != 0 && secure_vg()) secure_vg_disown(slot_addr(m, k, 0), m->slab_bytes);
  s->active = true;
  m->open[k] = 1;
  s->free_slots = m->slots_per_slab;
  --m->inactive;
  partial_push(cs, s);
  return s;
}

[[noreturn]] __attribute__((noinline, cold)) void report_write_after_free(const void* p, const char* detail) {
  report_fatal("Write after free", p, detail);
}

// Reports unless the n bytes at p (16-byte aligned, n a multiple of 16) are all
// zero: an OR-reduction of 16-byte vectors, 64 bytes per step, no early exit.
inline void check_zero(const void* p, std::size_t n, const char* detail) {
  typedef std::uint64_t v2 __attribute__((vector_size(16), may_alias));
  const auto* v = static_cast<const v2*>(p);
  v2 a = {0, 0}, b = a, c = a, d = a;
  std::size_t k = n / 16, i = 0;
  for (; i + 4 <= k; i += 4) {
    a |= v[i];
    b |= v[i + 1];
    c |= v[i + 2];
    d |= v[i + 3];
  }
  for (; i < k; ++i) a |= v[i];
  a |= b | c | d;
  if (__builtin_expect((a[0] | a[1]) != 0, 0)) report_write_after_free(p, detail);
}

// Zeroes the n bytes at p (16-byte aligned) rounded up to 16: within the slot,
// whose size is a multiple of 16.
inline void wipe(void* p, std::size_t n) {
  typedef std::uint64_t v2 __attribute__((vector_size(16), may_alias));
  auto* v = static_cast<v2*>(p);
  const v2 z = {0, 0};
  for (std::size_t i = 0, k = (n + 15) / 16; i < k; ++i) v[i] = z;
}

// The first use of a slot: each page of the n bytes at p is touched by an atomic
// "or 0" (a write that keeps what is there) before check_zero reads it, so that a
// page never touched takes one write fault, not a read fault (mapping the zero
// page) and then a copy-on-write fault at the first store (peak-rss: 71 000 faults
// for 250 000 fresh blocks, against 32 000 in the default build).
inline void touch_for_write(char* p, std::size_t n, std::uintptr_t page) {
  for (auto a = reinterpret_cast<std::uintptr_t>(p), end = a + n; a < end; a = (a | (page - 1)) + 1)
    __atomic_fetch_or(reinterpret_cast<std::uint64_t*>(a & ~std::uintptr_t{7}), 0, __ATOMIC_RELAXED);
}

// Where p is in chunk m: 0 with its slot index in *g when p starts a slot of an
// open slab, 1 when it is no block (a guard page, an unopened slab, the tail of a
// slab), 2 when it points into the middle of a slot.  Divisions by multiplication.
inline int slot_of(const ChunkMeta* m, const void* p, std::uint32_t* g) {
  // p's offset in its 4 MiB-aligned chunk: p - m->base, since chunk_lookup checked
  // m->base, but within the chunk's bounds even for a descriptor reused since
  // (retire_chunk): every index below stays inside the metadata.
  auto off = static_cast<std::uint32_t>(reinterpret_cast<std::uintptr_t>(p) & (kSecChunk - 1));
  if (off < m->page) return 1;
  off -= m->page;
  std::uint32_t slab = div44(off, m->stride_inv);
  std::uint32_t in = off - slab * static_cast<std::uint32_t>(m->stride);
  // slab < kSecChunk / stride <= kMaxSlabs: p is in the chunk.
  if (!m->open[slab] || in >= m->slab_used) return 1;
  std::uint32_t i = div44(in, m->slot_inv);
  if (in != i * m->slot_size) return 2;
  *g = slab * m->slots_per_slab + i;
  return 0;
}

// A slot leaves the quarantine or a thread's cache (under the class lock) and
// becomes free.  With `check`, it must still be zero; otherwise the check waits
// until the slot is handed out again (hand_out always checks): checking a cold
// slot on every eviction as well cost 30 % of the time of a malloc/free pair
// (perf, 2026-12-04).
void release_slot(ClassState* cs, ChunkMeta* m, std::uint32_t g, bool check) {
  std::uint32_t slab = div44(g, m->spp_inv), i = g - slab * m->slots_per_slab;
  if (check && m->cls) {
    void* p = slot_addr(m, slab, i);
    if (secure_vg()) secure_vg_own(p, m->slot_size);
    check_zero(p, m->slot_size, "a freed block was written to while in quarantine");
    if (secure_vg()) secure_vg_disown(p, m->slot_size);
  }
  clear_bit(m->used, g);
  SlabMeta* s = &m->slabs[slab];
  ++s->free_slots;
  if (!s->in_partial) partial_push(cs, s);
}

// Quarantine entries and thread-cache entries: the slot address xor-ed with the
// meta secret and the entry's own address.
inline std::uintptr_t entry_encode(const std::uintptr_t* entry, const void* slot) {
  return reinterpret_cast<std::uintptr_t>(slot) ^ heap_secrets().meta ^ reinterpret_cast<std::uintptr_t>(entry);
}
inline char* entry_decode(const std::uintptr_t* entry) {
  return reinterpret_cast<char*>(*entry ^ heap_secrets().meta ^ reinterpret_cast<std::uintptr_t>(entry));
}

// The slot an entry names, checked: a slot of class c of heap h that is taken
// (used) and not live, in *m and *g; false otherwise (a forged or stale entry).
inline bool entry_slot(SecureHeap* h, unsigned c, const void* slot, ChunkMeta** m, std::uint32_t* g) {
  ChunkMeta* cm = chunk_lookup(slot);
  if (!cm || cm->heap != h || cm->cls != c || slot_of(cm, slot, g) != 0) return false;
  *m = cm;
  return bit(cm->used, *g) && !is_live(state_of(cm, *g));
}

// The slot in quarantine entry i, checked (a forged entry is corruption, never
// followed), leaves the quarantine.
void quarantine_release(SecureHeap* h, ClassState* cs, unsigned c, unsigned i, bool check) {
  char* slot = entry_decode(&cs->quarantine[i]);
  ChunkMeta* m;
  std::uint32_t g;
  if (!entry_slot(h, c, slot, &m, &g))
    report_fatal("Corrupted heap metadata", slot, "a quarantine entry does not name a quarantined slot");
  release_slot(cs, m, g, check);
}

struct TcClass;
inline bool tc_keep_encoded(TcClass* t, unsigned c, const std::uintptr_t* entry);

// Under the class lock: a freed (claimed and wiped) slot enters the quarantine at
// a random position; the one there leaves, checked: back to the free slots, or
// with `keep` (a thread cache moving its frees in) straight into that cache's
// ready slots while it has room -- it stays taken, and is checked for writes
// after free when handed out like any slot.  (The reuse order stays random: the
// slot leaving is a random one of the quarantine's.)
inline void quarantine_put(SecureHeap* h, ClassState* cs, unsigned c, const void* p, TcClass* keep = nullptr) {
  unsigned i;
  if (cs->q_count < cs->q_cap) {
    i = cs->q_count++;
  } else {
    i = random_below(&cs->rng, cs->q_cap);
    // Into the cache as it is: the entry is re-encoded for its new place without
    // being checked here, because tc_alloc checks every ready entry (a slot of this
    // heap and class, taken, not live) before it hands it out -- the same check as
    // entry_slot, made once instead of twice (callgrind, pairs64: 84 instructions
    // per malloc/free pair).
    if (!keep || !tc_keep_encoded(keep, c, &cs->quarantine[i])) {
      char* old = entry_decode(&cs->quarantine[i]);
      ChunkMeta* m;
      std::uint32_t g;
      if (!entry_slot(h, c, old, &m, &g))
        report_fatal("Corrupted heap metadata", old, "a quarantine entry does not name a quarantined slot");
      release_slot(cs, m, g, false);
    }
  }
  cs->quarantine[i] = entry_encode(&cs->quarantine[i], p);
}

// Under the class lock: a free slot of class c, taken (`used`) but not live yet,
// at a random position of a slab with free slots; nullptr when out of memory.
char* take_slot(SecureHeap* h, ClassState* cs, unsigned c, ChunkMeta** mo = nullptr, std::uint32_t* go = nullptr) {
  SlabMeta* s = cs->partial;
  if (!s && !(s = open_slab(h, c))) {
    // Out of memory: what waits in quarantine is better than nothing.
    while (!cs->partial && cs->q_count) quarantine_release(h, cs, c, --cs->q_count, true);
    s = cs->partial;
    if (!s) return nullptr;
  }
  ChunkMeta* m = s->chunk;
  const std::uint32_t spp = m->slots_per_slab, g0 = s->index * spp;
  std::uint32_t r = random_below(&cs->rng, spp);
  std::uint32_t g = first_clear(m->used, g0 + r, g0 + spp);
  if (g == g0 + spp) g = first_clear(m->used, g0, g0 + r);
  set_bit(m->used, g);
  s->purged = false;
  if (--s->free_slots == 0) partial_remove(cs, s);
  if (mo) {
    *mo = m;
    *go = g;
  }
  return static_cast<char*>(slot_addr(m, s->index, g - g0));
}

// A taken slot becomes a live block of `size` bytes (no lock: the live bit is set
// atomically): checked to be still zero wherever its last block (with canary) or
// the new one reaches -- the rest of the slot was zero before and no block
// reached it since -- and its canary written.
__attribute__((always_inline)) inline void* hand_out(ChunkMeta* m, std::uint32_t g, char* p, std::size_t size, unsigned align_log) {
  SlotInfo& si = m->info[g];
  std::uint8_t state = si.state.load(std::memory_order_relaxed);
  if (__builtin_expect(is_live(state), 0))
    report_fatal("Corrupted heap metadata", p, "a slot taken for an allocation is live");
  if (m->cls) {
    std::size_t last = si.size;
    std::size_t n = align_up((last > size ? last : size) + kCanary, 16);
    if (n > m->slot_size) n = m->slot_size;
    if (state == kNever) touch_for_write(p, n, m->page);
    check_zero(p, n, "a free block was written to (use after free)");
  }
  si.size = static_cast<std::uint16_t>(size);
  si.align_log = static_cast<std::uint8_t>(align_log);
  si.state.store(kLiveBlock, std::memory_order_release);
  if (m->cls) {
    std::uint64_t canary = canary_for(reinterpret_cast<std::uintptr_t>(p));
    std::memcpy(p + size, &canary, kCanary);
  }
  return p;
}

void* slab_alloc(SecureHeap* h, unsigned c, std::size_t size, unsigned align_log) {
  ClassState* cs = &h->classes[c];
  class_lock(cs);
  ChunkMeta* m = nullptr;
  std::uint32_t g = 0;
  char* p = take_slot(h, cs, c, &m, &g);
  if (!p) {
    lca_mutex_unlock(&cs->lock);
    errno = ENOMEM;
    return nullptr;
  }
  bump(cs->allocs, 1);
  bump(cs->alloc_bytes, size);
  lca_mutex_unlock(&cs->lock);
  if (!secure_vg()) return hand_out(m, g, p, size, align_log);
  // Valgrind mode (no thread caches there: every allocation comes here).
  if (c) secure_vg_own(p, m->slot_size);
  hand_out(m, g, p, size, align_log);
  secure_vg_allocated(p, size, m->slot_size);
  return p;
}

// Where p is in chunk m: its global slot index; reports a pointer that is not
// the start of a slot.
[[noreturn]] __attribute__((noinline, cold)) void report_not_slot(int where, const void* p, bool is_free,
                                                                 const char* what) {
  const char* problem = is_free ? "Invalid free" : "Invalid pointer";
  char detail[128];
  Writer w{detail, sizeof detail};
  if (where == 1)
    w.str(what).str(": not a block (a guard page or unused part of a secure heap chunk)");
  else
    w.str(what).str(": pointer into the middle of a block");
  detail[w.len] = '\0';
  report_fatal(problem, p, detail);
}

__attribute__((always_inline)) inline std::uint32_t slot_index(const ChunkMeta* m, const void* p, bool is_free,
                                                              const char* what) {
  std::uint32_t g;
  int where = slot_of(m, p, &g);
  if (__builtin_expect(where != 0, 0)) report_not_slot(where, p, is_free, what);
  return g;
}

// Slot g's state bits `before` show no live block: a double free (or use after
// free) when it held one once, an invalid free (or pointer) otherwise.
[[noreturn]] __attribute__((noinline, cold)) void report_not_live(std::uint8_t before, const void* p, bool is_free,
                                                                 const char* what) {
  char detail[128];
  Writer w{detail, sizeof detail};
  if (before != kNever) {
    w.str(what).str(": the block was freed already");
    detail[w.len] = '\0';
    report_fatal(is_free ? "Double free" : "Use after free", p, detail);
  }
  w.str(what).str(": no block was allocated there");
  detail[w.len] = '\0';
  report_fatal(is_free ? "Invalid free" : "Invalid pointer", p, detail);
}

// Reports unless slot g holds a live block.
inline void require_live(const ChunkMeta* m, std::uint32_t g, const void* p, bool is_free, const char* what) {
  std::uint8_t st = state_of(m, g);
  if (!is_live(st)) report_not_live(st, p, is_free, what);
}

inline std::size_t info_size(const ChunkMeta* m, std::uint32_t g) { return m->info[g].size; }
inline unsigned info_align(const ChunkMeta* m, std::uint32_t g) { return m->info[g].align_log; }

[[noreturn]] __attribute__((noinline, cold)) void report_canary(const void* p, std::size_t size) {
  char detail[96];
  Writer w{detail, sizeof detail};
  w.str("a write past the end of a block of ").num(size).str(" bytes (overflow)");
  detail[w.len] = '\0';
  report_fatal("Canary corrupted", p, detail);
}

inline void check_canary(const ChunkMeta* m, const void* p, std::size_t size) {
  if (!m->cls) return;
  std::uint64_t have;
  std::memcpy(&have, static_cast<const char*>(p) + size, kCanary);
  if (__builtin_expect(have != canary_for(reinterpret_cast<std::uintptr_t>(p)), 0)) report_canary(p, size);
}

#if CALLOC_SECURE && CALLOC_TRACKING
// A free whose claim found no plain live block: a block the tracker recorded,
// which the tracker forgets now -- after the claim, before the slot enters a
// cache or the quarantine, so that no other thread can have it again yet, and
// errno kept (track_forget) -- or misuse, reported.  (A large block's tracked
// flag is read by large_free.)
__attribute__((noinline)) void free_tracked(std::uint8_t before, void* p, const char* what) {
  if (before != kLiveTracked) report_not_live(before, p, true, what);
  track_forget(p);
}
#endif

// The checks of a free, without the class lock: the live slot is claimed (its
// live bit cleared atomically, so of two frees of one block, from any threads,
// exactly one succeeds and the other is reported), the size, alignment and canary
// checked, and the block wiped.  Returns the requested size.
__attribute__((always_inline)) inline std::size_t free_claim(ChunkMeta* m, std::uint32_t g, void* p, std::size_t size, std::size_t alignment,
                              const char* what) {
  std::uint8_t before = m->info[g].state.exchange(kFreed, std::memory_order_acq_rel);
#if CALLOC_SECURE && CALLOC_TRACKING
  if (__builtin_expect(before != kLiveBlock, 0)) free_tracked(before, p, what);
#else
  if (__builtin_expect(before != kLiveBlock, 0)) report_not_live(before, p, true, what);
#endif
  std::size_t requested = info_size(m, g);
  if (__builtin_expect(size != kAnySize || alignment != kAnyAlignment, 0))
    check_size_alignment(p, requested, info_align(m, g), size, alignment, what);
  check_canary(m, p, requested);
  // (Valgrind mode hides the slot from helgrind and DRD again: free_small_slow.)
  if (m->cls) wipe(p, requested + kCanary);  // the rest of the slot is zero already
  return requested;
}

void slab_free(ChunkMeta* m, std::uint32_t g, void* p, std::size_t size, std::size_t alignment, const char* what) {
  SecureHeap* h = m->heap;
  const unsigned c = m->cls;
  ClassState* cs = &h->classes[c];
  std::size_t requested = free_claim(m, g, p, size, alignment, what);
  class_lock(cs);
  quarantine_put(h, cs, c, p);
  bump(cs->frees, 1);
  bump(cs->free_bytes, requested);
  lca_mutex_unlock(&cs->lock);
}

// --- thread caches (the process heap) -----------------------------------------------
// A thread that allocates or frees in the process heap gets a cache (ThreadCache):
// per class, up to kTcCap slots taken from the class under one acquisition of its
// lock (`used`, not live: a free of one is reported as a double or invalid free)
// and handed out without the lock, and a buffer of the thread's frees of the class
// (claimed, checked and wiped at the free, so not live either) that enters the
// quarantine under one acquisition of the lock when it is full.  Its entries are
// encoded like the quarantine's and checked when used.  Only the process heap has
// caches: it is never destroyed, so no cache outlives its heap.  The key's
// destructor gives a thread's slots back when it exits; fork's child gives back
// the caches of the threads it does not have (secure_postfork_child).  Not in
// Valgrind mode (nor ASan's): every call there takes the locked path.
constexpr unsigned kTcMax = 32;
constexpr std::size_t kTcBytes = 32 * 1024;  // at most this many bytes of a class per list (or 2 slots); docs/design.md

constexpr std::uint32_t tc_cap(unsigned c) {
  if (c == 0) return kTcMax;
  std::size_t n = kTcBytes / class_slot(c);
  return n < 2 ? 2 : n > kTcMax ? kTcMax : static_cast<std::uint32_t>(n);
}
static_assert(tc_cap(1) == kTcMax && tc_cap(44) == 2);
struct TcCaps {
  std::uint8_t cap[kNumClasses];
};
constexpr TcCaps kTcCaps = [] {
  TcCaps t{};
  for (unsigned c = 0; c < kNumClasses; ++c) t.cap[c] = static_cast<std::uint8_t>(tc_cap(c));
  return t;
}();

// How much of the next ready slot tc_pop prefetches: the whole slot up to 1 KiB
// (the zero check at hand-out reads up to the larger of the last and the new
// block, plus the canary).
struct TcPrefetch {
  std::uint16_t bytes[kNumClasses];
};
constexpr TcPrefetch kTcPrefetch = [] {
  TcPrefetch t{};
  for (unsigned c = 1; c < kNumClasses; ++c) t.bytes[c] = static_cast<std::uint16_t>(class_slot(c) < 1024 ? class_slot(c) : 1024);
  return t;
}();

struct TcClass {
  std::uint32_t n_ready, n_freed;
  std::uintptr_t ready[kTcMax];  // taken slots, encoded (entry_encode)
  std::uintptr_t freed[kTcMax];  // freed slots waiting for the quarantine, encoded
};

struct ThreadCache {
  SecureHeap* heap;   // set by the owning thread
  // A SecureAllocator heap's cache whose heap was destroyed (set under g_tc_lock
  // by secure_heap_destroy): its entries name unmapped memory and are never used.
  std::atomic<bool> orphaned;
  ThreadCache* next;  // in g_tc_list, or g_tc_pool when no thread has it
  ThreadCache* prev;
  // This thread's operations; written by it only (load and store), read by the
  // statistics under g_tc_lock.
  std::atomic<std::size_t> allocs, frees, alloc_bytes, free_bytes;
  TcClass cls[kNumClasses];
};

ThreadCache* const kTcNone = reinterpret_cast<ThreadCache*>(std::uintptr_t{1});  // no cache, do not make one
constinit thread_local ThreadCache* tls_tc __attribute__((tls_model("initial-exec"))) = nullptr;
// The caches of SecureAllocator heaps ("instance caches"): a thread keeps one for
// each of the last kTcInstances heaps it used (the oldest made goes back to its
// heap when a fifth is needed).  A heap instance can be destroyed while threads
// that used it still run: secure_heap_destroy marks their caches orphaned under
// g_tc_lock, and every use of an instance cache that may race with it (thread
// exit, eviction) holds g_tc_lock, taken before any class lock.  Memory: one
// ThreadCache mapping (24 KiB, its pages touched as classes are used) per heap per
// thread, pooled.  docs/design.md ("Secure heap") has the measurement.
constexpr unsigned kTcInstances = 4;
constinit thread_local ThreadCache* tls_tc_inst[kTcInstances] __attribute__((tls_model("initial-exec"))) = {};
constinit thread_local unsigned tls_tc_inst_next __attribute__((tls_model("initial-exec"))) = 0;
// No instance cache is made: one is being made (pthread_setspecific, os_map), or
// the thread is exiting.
constinit thread_local bool tls_tc_inst_off __attribute__((tls_model("initial-exec"))) = false;
constinit thread_local bool tls_tc_inst_keyed __attribute__((tls_model("initial-exec"))) = false;
constinit pthread_key_t g_tc_inst_key;
constinit pthread_mutex_t g_tc_lock = PTHREAD_MUTEX_INITIALIZER;  // g_tc_list, g_tc_pool
constinit ThreadCache* g_tc_list = nullptr;
constinit ThreadCache* g_tc_pool = nullptr;
constinit pthread_key_t g_tc_key;
constinit bool g_tc_key_ok = false;
constinit pthread_once_t g_tc_key_once = PTHREAD_ONCE_INIT;

// Under the class lock: the class's entries of tc go back -- its freed slots to
// the quarantine, and with `ready` its taken slots to the free slots.  With
// `lenient` (fork's child: the cache belonged to a thread that may have been
// half-way through an operation), an entry that does not name a slot in the
// expected state is skipped (the slot stays taken); otherwise it is reported.
void tc_drain_locked(SecureHeap* h, ThreadCache* tc, unsigned c, bool ready, bool lenient, bool keep = false) {
  ClassState* cs = &h->classes[c];
  TcClass& t = tc->cls[c];
  for (std::uint32_t i = 0; i < t.n_freed; ++i) {
    char* p = entry_decode(&t.freed[i]);
    // The quarantine checks the entry when it leaves (quarantine_release): checked
    // here only in fork's child.
    ChunkMeta* m;
    std::uint32_t g;
    if (lenient && !entry_slot(h, c, p, &m, &g)) continue;
    quarantine_put(h, cs, c, p, keep ? &t : nullptr);
  }
  t.n_freed = 0;
  if (!ready) return;
  for (std::uint32_t i = 0; i < t.n_ready; ++i) {
    char* p = entry_decode(&t.ready[i]);
    ChunkMeta* m;
    std::uint32_t g;
    if (!entry_slot(h, c, p, &m, &g)) {
      if (lenient) continue;
      report_fatal("Corrupted heap metadata", p, "a thread cache entry does not name a taken slot");
    }
    release_slot(cs, m, g, false);
  }
  t.n_ready = 0;
}

// A slot leaving the quarantine (its encoded entry at `entry`) joins t's ready
// slots if there is room: re-encoded for its new place, not decoded.
inline bool tc_keep_encoded(TcClass* t, unsigned c, const std::uintptr_t* entry) {
  if (t->n_ready >= kTcCaps.cap[c]) return false;
  std::uintptr_t* to = &t->ready[t->n_ready];
  *to = *entry ^ reinterpret_cast<std::uintptr_t>(entry) ^ reinterpret_cast<std::uintptr_t>(to);
  ++t->n_ready;
  return true;
}

// Every class's entries of the calling thread's cache go back (trim, out of memory,
// thread exit).
void tc_drain_all(SecureHeap* h, ThreadCache* tc) {
  for (unsigned c = 0; c < kNumClasses; ++c) {
    TcClass& t = tc->cls[c];
    if (!t.n_freed && !t.n_ready) continue;
    class_lock(&h->classes[c]);
    tc_drain_locked(h, tc, c, true, false);
    lca_mutex_unlock(&h->classes[c].lock);
  }
}

// Under g_tc_lock: tc leaves g_tc_list.
void tc_unlink_locked(ThreadCache* tc) {
  if (tc->prev)
    tc->prev->next = tc->next;
  else
    g_tc_list = tc->next;
  if (tc->next) tc->next->prev = tc->prev;
  tc->prev = nullptr;
}

// Under g_tc_lock: tc's counts move to its heap, and tc to the pool (an orphaned
// cache's entries are dropped: its heap is gone).
void tc_retire_locked(ThreadCache* tc) {
  if (tc->orphaned.load(std::memory_order_relaxed)) {
    for (TcClass& t : tc->cls) t.n_ready = t.n_freed = 0;
  } else {
    SecureHeap* h = tc->heap;
    h->alloc_count.fetch_add(tc->allocs.load(std::memory_order_relaxed), std::memory_order_relaxed);
    h->free_count.fetch_add(tc->frees.load(std::memory_order_relaxed), std::memory_order_relaxed);
    h->allocated_bytes.fetch_add(tc->alloc_bytes.load(std::memory_order_relaxed), std::memory_order_relaxed);
    h->freed_bytes.fetch_add(tc->free_bytes.load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
  tc_unlink_locked(tc);
  tc->next = g_tc_pool;
  g_tc_pool = tc;
}

void tc_thread_exit(void* value) {
  auto* tc = static_cast<ThreadCache*>(value);
  tls_tc = kTcNone;  // what this thread frees or allocates from now on takes the locks
  tc_drain_all(tc->heap, tc);
  lca_mutex_lock(&g_tc_lock);
  tc_retire_locked(tc);
  lca_mutex_unlock(&g_tc_lock);
}

// Under g_tc_lock: an instance cache goes back to its heap (unless the heap was
// destroyed) and to the pool.
void tc_inst_release_locked(ThreadCache* tc) {
  if (!tc->orphaned.load(std::memory_order_relaxed)) tc_drain_all(tc->heap, tc);
  tc_retire_locked(tc);
}

void tc_inst_thread_exit(void*) {
  tls_tc_inst_off = true;
  lca_mutex_lock(&g_tc_lock);
  for (ThreadCache*& tc : tls_tc_inst)
    if (tc) {
      tc_inst_release_locked(tc);
      tc = nullptr;
    }
  lca_mutex_unlock(&g_tc_lock);
}

void tc_make_key() {
  g_tc_key_ok = pthread_key_create(&g_tc_key, tc_thread_exit) == 0 &&
                pthread_key_create(&g_tc_inst_key, tc_inst_thread_exit) == 0;
}

// A cache for heap h, from the pool or mapped, empty, in no list; nullptr when
// out of memory.  `charge`: its mapping counts in h's statistics (the process
// heap; instance caches outlive their heaps in the pool).
ThreadCache* tc_obtain(SecureHeap* h, bool charge) {
  lca_mutex_lock(&g_tc_lock);
  ThreadCache* tc = g_tc_pool;
  if (tc) g_tc_pool = tc->next;
  lca_mutex_unlock(&g_tc_lock);
  if (tc) {
    tc->allocs.store(0, std::memory_order_relaxed);
    tc->frees.store(0, std::memory_order_relaxed);
    tc->alloc_bytes.store(0, std::memory_order_relaxed);
    tc->free_bytes.store(0, std::memory_order_relaxed);
  } else {
    std::size_t bytes = align_up(sizeof(ThreadCache), os_page_size());
    void* mem = os_map(bytes);
    if (!mem) return nullptr;
    tc = new (mem) ThreadCache();
    if (charge) h->mapped_bytes.fetch_add(bytes, std::memory_order_relaxed);
  }
  tc->heap = h;
  tc->orphaned.store(false, std::memory_order_relaxed);
  return tc;
}

// Under g_tc_lock: tc joins g_tc_list.
void tc_link_locked(ThreadCache* tc) {
  tc->prev = nullptr;
  tc->next = g_tc_list;
  if (g_tc_list) g_tc_list->prev = tc;
  g_tc_list = tc;
}

void tc_pool_put(ThreadCache* tc) {
  lca_mutex_lock(&g_tc_lock);
  tc->next = g_tc_pool;
  g_tc_pool = tc;
  lca_mutex_unlock(&g_tc_lock);
}

// The calling thread's first operation on the process heap: its cache, or
// nullptr (kTcNone stays when there cannot be one).
__attribute__((noinline)) ThreadCache* tc_create(SecureHeap* h) {
  tls_tc = kTcNone;  // while it is made: pthread_setspecific may call malloc
  if (on_valgrind()) return nullptr;
  pthread_once(&g_tc_key_once, tc_make_key);
  if (!g_tc_key_ok) return nullptr;
  ThreadCache* tc = tc_obtain(h, true);
  if (!tc) {
    tls_tc = nullptr;  // try again later
    return nullptr;
  }
  if (pthread_setspecific(g_tc_key, tc) != 0) {
    tc_pool_put(tc);
    return nullptr;
  }
  lca_mutex_lock(&g_tc_lock);
  tc_link_locked(tc);
  lca_mutex_unlock(&g_tc_lock);
  tls_tc = tc;
  return tc;
}

// The calling thread's first operation on heap instance h since it last had a
// cache for it: a new cache (the oldest of the thread's goes back to its heap
// when all kTcInstances are in use), or nullptr.
__attribute__((noinline)) ThreadCache* tc_inst_create(SecureHeap* h) {
  if (on_valgrind() || tls_tc_inst_off) return nullptr;
  pthread_once(&g_tc_key_once, tc_make_key);
  if (!g_tc_key_ok) return nullptr;
  tls_tc_inst_off = true;  // while it is made: os_map, pthread_setspecific
  ThreadCache* tc = nullptr;
  if (!tls_tc_inst_keyed && pthread_setspecific(g_tc_inst_key, &tls_tc_inst) == 0) tls_tc_inst_keyed = true;
  if (tls_tc_inst_keyed) tc = tc_obtain(h, false);
  if (tc) {
    unsigned i = 0;
    while (i < kTcInstances && tls_tc_inst[i]) ++i;
    if (i == kTcInstances) i = tls_tc_inst_next++ % kTcInstances;
    lca_mutex_lock(&g_tc_lock);
    if (tls_tc_inst[i]) tc_inst_release_locked(tls_tc_inst[i]);
    tc_link_locked(tc);
    lca_mutex_unlock(&g_tc_lock);
    tls_tc_inst[i] = tc;
  }
  tls_tc_inst_off = false;
  return tc;
}

__attribute__((noinline)) ThreadCache* tc_for_slow(SecureHeap* h) {
  if (h == g_process_heap.load(std::memory_order_relaxed)) return tls_tc ? nullptr : tc_create(h);
  for (ThreadCache* tc : tls_tc_inst)
    if (tc && tc->heap == h && !tc->orphaned.load(std::memory_order_relaxed)) return tc;
  return tc_inst_create(h);
}

// The calling thread's cache for heap h, or nullptr (none can be made).
inline ThreadCache* tc_for(SecureHeap* h) {
  ThreadCache* tc = tls_tc;
  if (__builtin_expect(reinterpret_cast<std::uintptr_t>(tc) > 1 && tc->heap == h, 1)) return tc;
  return tc_for_slow(h);
}

// Under one lock: the class's waiting frees enter the quarantine and the cache
// takes up to kTcCap slots.  False when none could be taken (out of memory).
__attribute__((noinline)) bool tc_refill(SecureHeap* h, ThreadCache* tc, unsigned c) {
  ClassState* cs = &h->classes[c];
  TcClass& t = tc->cls[c];
  const std::uint32_t cap = kTcCaps.cap[c];
  class_lock(cs);
  tc_drain_locked(h, tc, c, false, false, true);
  while (t.n_ready < cap) {
    char* p = take_slot(h, cs, c);
    if (!p) break;
    t.ready[t.n_ready] = entry_encode(&t.ready[t.n_ready], p);
    ++t.n_ready;
  }
  lca_mutex_unlock(&cs->lock);
  return t.n_ready != 0;
}

__attribute__((noinline)) void tc_flush_freed(SecureHeap* h, ThreadCache* tc, unsigned c) {
  class_lock(&h->classes[c]);
  tc_drain_locked(h, tc, c, false, false, true);
  lca_mutex_unlock(&h->classes[c].lock);
}

inline void tc_count(std::atomic<std::size_t>& counter, std::size_t n) {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// A block of class c from the cache, which holds a ready slot of it.
__attribute__((always_inline)) inline void* tc_pop(SecureHeap* h, ThreadCache* tc, unsigned c, std::size_t size,
                                                   unsigned align_log) {
  TcClass& t = tc->cls[c];
  std::uint32_t i = --t.n_ready;
  char* p = entry_decode(&t.ready[i]);
  ChunkMeta* m = chunk_lookup(p);
  std::uint32_t g;
  if (__builtin_expect(!m || m->heap != h || m->cls != c || slot_of(m, p, &g) != 0 || !bit(m->used, g), 0))
    report_fatal("Corrupted heap metadata", p, "a thread cache entry does not name a taken slot");
  if (i) {
    // The next block this cache hands out left the quarantine a while ago: its
    // lines are cold.  Fetch them now (a prefetch never faults, so the entry is
    // not checked for it), so that the check of the next malloc does not wait.
    char* next = entry_decode(&t.ready[i - 1]);
    for (char *q = next, *end = next + kTcPrefetch.bytes[c]; q < end; q += 64) __builtin_prefetch(q, 1);
  }
  hand_out(m, g, p, size, align_log);
  tc_count(tc->allocs, 1);
  tc_count(tc->alloc_bytes, size);
  return p;
}

// A block of class c from the cache; nullptr when out of memory.
inline void* tc_alloc(SecureHeap* h, ThreadCache* tc, unsigned c, std::size_t size, unsigned align_log) {
  if (__builtin_expect(tc->cls[c].n_ready == 0, 0) && !tc_refill(h, tc, c)) return nullptr;
  return tc_pop(h, tc, c, size, align_log);
}

// A claimed and wiped slot of class c waits in the cache for the quarantine.
inline void tc_free(SecureHeap* h, ThreadCache* tc, unsigned c, void* p, std::size_t requested) {
  TcClass& t = tc->cls[c];
  if (__builtin_expect(t.n_freed == kTcCaps.cap[c], 0)) tc_flush_freed(h, tc, c);
  t.freed[t.n_freed] = entry_encode(&t.freed[t.n_freed], p);
  ++t.n_freed;
  tc_count(tc->frees, 1);
  tc_count(tc->free_bytes, requested);
}

// The class for a request (kNumClasses: a large block).
inline unsigned class_for_request(std::size_t size, std::size_t alignment) {
  if (size == 0 && alignment <= 16) return 0;
  // Slabs start on page boundaries only: a larger alignment takes a mapping.
  if (size > kMaxSmall || (alignment > 16 && alignment > os_page_size())) return kNumClasses;
  unsigned c = class_for(size + kCanary);
  if (alignment > 16)
    while (c < kNumClasses && class_slot(c) % alignment) ++c;
  return c;
}

// Under the class lock: an empty chunk leaves its class (its slabs out of the
// partial list already).  Its radix entry is cleared and its 4 MiB unmapped, but
// its metadata stays mapped, on the class's `pending` list: a free or lookup of
// a pointer into the chunk (a double or invalid free: the chunk has no block)
// that read the radix entry before it was cleared reads the metadata in a read
// section -- without the lock, or waiting for it (usable size, realloc) -- and
// must find it mapped, and no slot live, to report the misuse (it was a
// segfault: test_release_races_invalid_use).  release_reserves moves it on to
// `retired` (purged, for the class's next new chunk) once readers_quiesce says
// no such reader is left (test_stalled_free_across_release_and_reuse).
void retire_chunk(SecureHeap* h, ClassState* cs, ChunkMeta* m) {
  if (auto* slot = radix_slot(reinterpret_cast<std::uintptr_t>(m->base), false))
    slot->store(0, std::memory_order_release);
  h->mapped_bytes.fetch_sub(kSecChunk, std::memory_order_relaxed);
  os_unmap(m->base, kSecChunk);
  m->next = cs->pending;
  cs->pending = m;
}

// A released chunk's metadata, off every list: its arrays are purged (they read
// as zero: never handed out); its first page and the descriptor stay as they
// were.  No lock: no allocation can reach it (a late reader reads zeros).
void purge_retired(ChunkMeta* m) {
  const std::size_t page = os_page_size(), keep = retired_keep_bytes(m, m->meta_bytes, page);
  if (keep < m->meta_bytes) os_purge(reinterpret_cast<char*>(m) + keep, m->meta_bytes - keep);
}

// Out of memory (RLIMIT_AS, overcommit): give back what the heap holds in reserve
// -- every quarantined slot (checked as it leaves), every chunk with no slot in
// use, every quarantined large block -- so that the allocation can be retried.
// Delayed reuse is the price, paid only when memory has run out.
void release_reserves(SecureHeap* h) {
  ChunkMeta* released[kNumClasses];
  ChunkMeta* earlier[kNumClasses];  // the first of released[c] that an earlier release purged
  bool any = false;
  for (unsigned c = 0; c < kNumClasses; ++c) {
    ClassState* cs = &h->classes[c];
    class_lock(cs);
    earlier[c] = cs->pending;
    while (cs->q_count) quarantine_release(h, cs, c, --cs->q_count, true);
    for (ChunkMeta** link = &cs->chunks; *link;) {
      ChunkMeta* m = *link;
      bool empty = true;
      for (std::uint32_t k = 0; k < m->nslabs && empty; ++k)
        if (m->slabs[k].active && m->slabs[k].free_slots != m->slots_per_slab) empty = false;
      if (!empty) {
        link = &m->next;
        continue;
      }
      *link = m->next;
      for (std::uint32_t k = 0; k < m->nslabs; ++k)
        if (m->slabs[k].in_partial) partial_remove(cs, &m->slabs[k]);
      retire_chunk(h, cs, m);
    }
    // This release's chunks, and any an earlier one could not hand on: their
    // radix entries were cleared before this thread's barrier below.
    released[c] = cs->pending;
    cs->pending = nullptr;
    any = any || released[c];
    lca_mutex_unlock(&cs->lock);
  }
  if (any) {
    // No lock held: a reader may be waiting for one inside its section.
    const Quiesce q = readers_quiesce();
    for (unsigned c = 0; c < kNumClasses; ++c) {
      ChunkMeta* list = released[c];
      if (!list) continue;
      // Purged once no reader can be left.  A reader still inside reads the
      // states of the release ("Double free" for a block freed before it);
      // without membarrier the metadata waits on `pending` for good, so this
      // release's own are purged at once: a late reader reads zeros, "no block
      // was allocated there", and still reports, and they hold address space
      // and one page each, not their arrays' memory (unpurged, a program
      // trimming after each phase piled up to ~1 MiB a chunk).  Purging twice
      // costs a madvise: `earlier` marks where those of earlier releases begin.
      ChunkMeta* last = list;
      for (bool fresh = true;; last = last->next) {
        fresh = fresh && last != earlier[c];
        if (q == Quiesce::quiet || (q == Quiesce::no_barrier && fresh)) purge_retired(last);
        if (!last->next) break;
      }
      ClassState* cs = &h->classes[c];
      class_lock(cs);
      ChunkMeta*& to = q == Quiesce::quiet ? cs->retired : cs->pending;
      last->next = to;
      to = list;
      lca_mutex_unlock(&cs->lock);
    }
  }
  for (;;) {
    std::uintptr_t base = 0;
    std::size_t size = 0;
    SecureHeap* owner = nullptr;
    lca_mutex_lock(&g_large_lock);
    bool any = large_evict_oldest(&base, &size, &owner);
    lca_mutex_unlock(&g_large_lock);
    if (!any) break;
    if (base) {
      os_unmap(reinterpret_cast<void*>(base), size);
      owner->mapped_bytes.fetch_sub(size, std::memory_order_relaxed);
    }
  }
}

// fork(): each class lock of h is taken and released once, the flag set under
// it (secure_prefork).  Then the placement lock, taken only under a class lock:
// no thread is inside it any more.
LCA_CORE_TEXT void heap_fork_gate(SecureHeap* h) {
  const void* me = fork_token();
  for (unsigned c = 0; c < kNumClasses; ++c) {
    ClassState* cs = &h->classes[c];
    lca_mutex_lock(&cs->lock);
    cs->forking.store(me, std::memory_order_relaxed);
    lca_mutex_unlock(&cs->lock);
  }
  lca_mutex_lock(&h->placement_lock);
  lca_mutex_unlock(&h->placement_lock);
}

}  // namespace

// --- entry points ------------------------------------------------------------------------

SecureHeap* secure_heap_create() {
  vg_init();
  const Secrets& sec = secrets();
  std::size_t bytes = align_up(sizeof(SecureHeap), os_page_size());
  void* mem = os_map(bytes);
  if (!mem) return nullptr;
  auto* h = new (mem) SecureHeap();
  h->self_bytes = bytes;
  std::uint64_t seed[2] = {0, 0};
  if (!os_random(seed, sizeof seed)) {
    seed[0] = mix64(sec.seed ^ reinterpret_cast<std::uintptr_t>(h));
    seed[1] = mix64(seed[0]);
  }
  h->placement_rng = seed[0] | 1;
  pthread_mutex_init(&h->placement_lock, nullptr);
  for (unsigned c = 0; c < kNumClasses; ++c) {
    ClassState& cs = h->classes[c];
    pthread_mutex_init(&cs.lock, nullptr);
    cs.rng = mix64(seed[1] + c) | 1;
    std::size_t cap = kQuarantineBytes / class_slot(c);
    cs.q_cap = static_cast<std::uint32_t>(cap > kQuarantineMax ? kQuarantineMax : cap < 4 ? 4 : cap);
  }
  h->mapped_bytes.store(bytes, std::memory_order_relaxed);
  lca_mutex_lock(&g_heaps_lock);
  h->next = g_heaps;
  if (g_heaps) g_heaps->prev = h;
  g_heaps = h;
  lca_mutex_unlock(&g_heaps_lock);
  return h;
}

void secure_heap_destroy(SecureHeap* h) {
  if (!h) return;
  VgSerial serial;
  // Threads' caches of this heap are orphaned: the calling thread's are unmapped
  // now, other threads' go to the pool when they exit or need the place.
  lca_mutex_lock(&g_tc_lock);
  for (ThreadCache* tc = g_tc_list; tc; tc = tc->next)
    if (tc->heap == h) tc->orphaned.store(true, std::memory_order_relaxed);
  for (ThreadCache*& tc : tls_tc_inst)
    if (tc && tc->heap == h) {
      tc_unlink_locked(tc);
      tc->~ThreadCache();
      os_unmap(tc, align_up(sizeof(ThreadCache), os_page_size()));
      tc = nullptr;
    }
  lca_mutex_unlock(&g_tc_lock);
  lca_mutex_lock(&g_heaps_lock);
  if (h->prev)
    h->prev->next = h->next;
  else
    g_heaps = h->next;
  if (h->next) h->next->prev = h->prev;
  lca_mutex_unlock(&g_heaps_lock);
  for (auto& cs : h->classes) {
    for (ChunkMeta* m = cs.chunks; m;) {
      ChunkMeta* next = m->next;
      // Valgrind mode: its live blocks go with it, for memcheck too.
      if (secure_vg())
        for (std::uint32_t k = 0; k < m->nslabs; ++k)
          if (m->slabs[k].active)
            for (std::uint32_t i = 0; i < m->slots_per_slab; ++i)
              if (is_live(state_of(m, k * m->slots_per_slab + i))) secure_vg_forgotten(slot_addr(m, k, i));
      if (auto* slot = radix_slot(reinterpret_cast<std::uintptr_t>(m->base), false))
        slot->store(0, std::memory_order_release);
      os_unmap(m->base, kSecChunk);
      os_unmap(m, m->meta_bytes);
      m = next;
    }
    for (ChunkMeta* list : {cs.retired, cs.pending})
      for (ChunkMeta* m = list; m;) {
        ChunkMeta* next = m->next;
        os_unmap(m, m->meta_bytes);
        m = next;
      }
    pthread_mutex_destroy(&cs.lock);
  }
  // Large blocks, live or quarantined: unmapped; their table entries go, and
  // the quarantined ones' places in the ring.  (Left there, such a place named
  // only an address: once the oldest, it evicted -- unmapped -- whatever block
  // was quarantined at that address by then, before its time, or while its
  // free was still protecting its pages.)
  lca_mutex_lock(&g_large_lock);
  unsigned kept = 0;
  for (unsigned k = 0; k < g_large.ring_count; ++k) {
    std::uintptr_t u = g_large.ring[(g_large.ring_head + k) % kLargeQuarantine];
    const LargeEntry* e = large_find(u);
    if (e && e->state == kQuarantined && e->heap == h) continue;
    g_large.ring[(g_large.ring_head + kept++) % kLargeQuarantine] = u;
  }
  g_large.ring_count = kept;
  for (std::size_t i = 0; i < g_large.cap; ++i) {
    LargeEntry& e = g_large.slots[i];
    if ((e.state == kLive || e.state == kQuarantined) && e.heap == h) {
      if (e.state == kLive && secure_vg()) secure_vg_forgotten(reinterpret_cast<void*>(large_user(e)));
      os_unmap(reinterpret_cast<void*>(e.base), e.map_size);
      e.state = kGone;
      --g_large.count;
      ++g_large.gone;
    }
  }
  lca_mutex_unlock(&g_large_lock);
  pthread_mutex_destroy(&h->placement_lock);
  std::size_t bytes = h->self_bytes;
  h->~SecureHeap();
  os_unmap(h, bytes);
}

void* secure_alloc(SecureHeap* h, std::size_t size, std::size_t alignment) {
  vg_init();
  VgSerial serial;
  if (!is_power_of_two(alignment)) {
    errno = EINVAL;
    return nullptr;
  }
  if (size >= (std::size_t{1} << 47)) {
    errno = ENOMEM;
    return nullptr;
  }
  unsigned c = class_for_request(size, alignment);
  unsigned align_log = alignment > 16 ? static_cast<unsigned>(__builtin_ctzll(alignment)) : 0;
  void* p;
  if (c < kNumClasses) {
    ThreadCache* tc = tc_for(h);
    p = tc ? tc_alloc(h, tc, c, size, align_log) : slab_alloc(h, c, size, align_log);
  } else {
    p = large_alloc(h, size, alignment);
  }
  if (__builtin_expect(!p, 0)) {
    if (ThreadCache* tc = tc_for(h)) tc_drain_all(h, tc);
    release_reserves(h);
    p = c < kNumClasses ? slab_alloc(h, c, size, align_log) : large_alloc(h, size, alignment);
    if (!p) errno = ENOMEM;
  }
  return p;
}

bool secure_owns(const void* p) {
  if (chunk_lookup(p)) return true;
  lca_mutex_lock(&g_large_lock);
  bool found = large_find(reinterpret_cast<std::uintptr_t>(p)) != nullptr;
  lca_mutex_unlock(&g_large_lock);
  return found;
}

namespace {
// A free that the calling thread's cache cannot take without a lock: no cache
// yet (made here), a full list of frees, another heap's block; and large blocks
// (false when p is not one).  errno is kept (os calls on these paths).
// Inside the read section rs (secure_free_if_secure), which it closes.
__attribute__((noinline)) void free_small_slow(ChunkMeta* m, void* p, std::size_t size, std::size_t alignment,
                                               const char* what, ReadSection rs) {
  int saved = errno;
  read_stall_for_test(p);
  if (secure_vg()) {
    // Valgrind mode: memcheck's report first, then the heap's checks, which read
    // the canary and wipe the block as the heap's own accesses.
    VgSerial serial;
    secure_vg_freeing(p);
    std::uint32_t g = slot_index(m, p, true, what);
    if (m->cls) secure_vg_own(p, m->slot_size);
    slab_free(m, g, p, size, alignment, what);
    reader_leave(rs);
    secure_vg_freed(p, m->slot_size);
    errno = saved;
    return;
  }
  std::uint32_t g = slot_index(m, p, true, what);
  SecureHeap* h = m->heap;
  const unsigned c = m->cls;
  if (ThreadCache* tc = tc_for(h)) {
    std::size_t requested = free_claim(m, g, p, size, alignment, what);
    reader_leave(rs);
    tc_free(h, tc, c, p, requested);
  } else {
    slab_free(m, g, p, size, alignment, what);
    reader_leave(rs);
  }
  errno = saved;
}
__attribute__((noinline)) bool free_large(void* p, std::size_t size, std::size_t alignment, const char* what) {
  int saved = errno;
  VgSerial serial;
  if (secure_vg()) {
    // memcheck's report first -- of a secure block only: any other pointer goes to
    // the core heap, which tells memcheck itself.
    lca_mutex_lock(&g_large_lock);
    bool ours = large_find(reinterpret_cast<std::uintptr_t>(p)) != nullptr;
    lca_mutex_unlock(&g_large_lock);
    if (ours) secure_vg_freeing(p);
  }
  bool mine = large_free(p, size, alignment, what);
  errno = saved;
  return mine;
}

__attribute__((noinline)) void* process_alloc_slow(std::size_t size, std::size_t alignment) {
  SecureHeap* h = secure_process_heap();
  if (!h) {
    errno = ENOMEM;
    return nullptr;
  }
  return secure_alloc(h, size, alignment);
}
}  // namespace

// The whole of a free of a small block by a thread with a cache: one call (the
// slow cases in noinline functions).
// The chunk's metadata is read inside a read section, closed once the block is
// claimed (its chunk can then not be released).
bool secure_free_if_secure(void* p, std::size_t size, std::size_t alignment, const char* what) {
  ReadSection rs = reader_enter();
  if (ChunkMeta* m = chunk_lookup(p)) {
    ThreadCache* tc = tls_tc;  // never a cache in Valgrind mode
    if (__builtin_expect(reinterpret_cast<std::uintptr_t>(tc) > 1 && tc->heap == m->heap, 1)) {
      const unsigned c = m->cls;
      if (__builtin_expect(tc->cls[c].n_freed < kTcCaps.cap[c], 1)) {
        std::uint32_t g = slot_index(m, p, true, what);
        std::size_t requested = free_claim(m, g, p, size, alignment, what);
        reader_leave(rs);
        tc_free(tc->heap, tc, c, p, requested);
        return true;
      }
    }
    free_small_slow(m, p, size, alignment, what, rs);
    return true;
  }
  reader_leave(rs);
  return free_large(p, size, alignment, what);
}

void* secure_process_alloc(std::size_t size, std::size_t alignment) {
  ThreadCache* tc = tls_tc;
  // Only the process heap has caches: tc->heap is it.
  if (__builtin_expect(reinterpret_cast<std::uintptr_t>(tc) > 1 && alignment == 16 && size <= kMaxSmall, 1)) {
    const unsigned c = size ? class_for(size + kCanary) : 0;
    if (__builtin_expect(tc->cls[c].n_ready != 0, 1)) return tc_pop(tc->heap, tc, c, size, 0);
  }
  return process_alloc_slow(size, alignment);
}

bool secure_usable_size_if_secure(const void* p, std::size_t* out, const char* what) {
  VgSerial serial;
  ReadScope reading;
  if (ChunkMeta* m = chunk_lookup(p)) {
    std::uint32_t g = slot_index(m, p, false, what);
    read_stall_for_test(p);
    ClassState* cs = &m->heap->classes[m->cls];
    class_lock(cs);
    require_live(m, g, p, false, what);
    *out = info_size(m, g);
    lca_mutex_unlock(&cs->lock);
    return true;
  }
  lca_mutex_lock(&g_large_lock);
  LargeEntry* e = large_find(reinterpret_cast<std::uintptr_t>(p));
  if (!e) {
    lca_mutex_unlock(&g_large_lock);
    return false;
  }
  if (e->state != kLive) report_fatal("Use after free", p, "the large block was freed");
  *out = e->size;
  lca_mutex_unlock(&g_large_lock);
  return true;
}

// In place when the new size needs the same class (the canary moves).
bool secure_resize_in_place_if_secure(void* p, std::size_t size, void** out, bool c_realloc) {
  VgSerial serial;
  ReadScope reading;
  if (ChunkMeta* m = chunk_lookup(p)) {
    std::uint32_t g = slot_index(m, p, false, "realloc");
    ClassState* cs = &m->heap->classes[m->cls];
    class_lock(cs);
    require_live(m, g, p, false, "realloc");
    std::size_t old = info_size(m, g);
    // Valgrind mode: the canary and the rest of the slot are the heap's for the
    // resize (the block's own bytes keep what memcheck knows of them).
    const bool vg = secure_vg() && m->cls;
    if (vg) secure_vg_own(static_cast<char*>(p) + old, m->slot_size - old);
    check_canary(m, p, old);
    unsigned align_log = info_align(m, g);
    if (m->cls == 0 || size == 0 || class_for_request(size, align_log ? std::size_t{1} << align_log : 16) != m->cls) {
      if (vg) secure_vg_disown(static_cast<char*>(p) + old, m->slot_size - old);
      lca_mutex_unlock(&cs->lock);
      *out = nullptr;
      return true;
    }
    char* c = static_cast<char*>(p);
    std::size_t lo = old < size ? old : size;
    if (vg && size < old) secure_vg_own(c + size, old - size);
    std::memset(c + lo, 0, old + kCanary - lo);
    std::uint64_t canary = canary_for(reinterpret_cast<std::uintptr_t>(p));
    std::memcpy(c + size, &canary, kCanary);
    m->info[g].size = static_cast<std::uint16_t>(size);
    if (c_realloc) m->info[g].align_log = 0;  // realloc's block now (secure.h++)
    // The statistics count requested sizes, and the free counts the size the
    // block has then: the change is counted here (growth as bytes allocated, a
    // shrink as bytes freed), so that the totals balance once it is freed.
    // Before, a block grown in place counted more bytes freed than allocated
    // (docs/design.md, "Secure heap": statistics across realloc in place).
    if (size > old)
      bump(cs->alloc_bytes, size - old);
    else
      bump(cs->free_bytes, old - size);
    lca_mutex_unlock(&cs->lock);
    m->heap->realloc_in_place.fetch_add(1, std::memory_order_relaxed);
    if (vg) secure_vg_resized(p, old, size, m->slot_size);
    *out = p;
    return true;
  }
  lca_mutex_lock(&g_large_lock);
  LargeEntry* e = large_find(reinterpret_cast<std::uintptr_t>(p));
  if (!e) {
    lca_mutex_unlock(&g_large_lock);
    return false;
  }
  if (e->state != kLive) report_fatal("Use after free", p, "realloc: the large block was freed");
  large_check_slack(*e);
  bool same = size == e->size;
  if (same && c_realloc) e->align_log = 0;
  lca_mutex_unlock(&g_large_lock);
  // Any other size moves: the block ends at its guard page.
  *out = same ? p : nullptr;
  return true;
}

bool secure_realloc_if_secure(SecureHeap* h, void* p, std::size_t size, void** out, bool c_realloc) {
  VgSerial serial;
  void* same;
  if (!secure_resize_in_place_if_secure(p, size, &same, c_realloc)) return false;
  if (same) {
    *out = same;
    return true;
  }
  std::size_t old = 0;
  secure_usable_size_if_secure(p, &old, "realloc");
  // A block moves within its own heap.
  if (SecureHeap* owner = [p] {
        ReadScope reading;
        ChunkMeta* m = chunk_lookup(p);
        return m ? m->heap : nullptr;
      }()) {
    h = owner;
  } else {
    lca_mutex_lock(&g_large_lock);
    LargeEntry* e = large_find(reinterpret_cast<std::uintptr_t>(p));
    h = e ? e->heap : nullptr;
    lca_mutex_unlock(&g_large_lock);
    // Freed by another thread since the in-place attempt found it (a bug of the
    // caller's): the routed realloc (secure_module) has no heap to fall back on.
    if (!h) report_fatal("Use after free", p, "realloc: the large block was freed");
  }
  void* q = secure_alloc(h, size, 16);
  if (!q) {
    *out = nullptr;
    return true;
  }
  std::memcpy(q, p, old < size ? old : size);
  secure_free_if_secure(p, kAnySize, kAnyAlignment, "realloc");
  h->realloc_moved.fetch_add(1, std::memory_order_relaxed);
  *out = q;
  return true;
}

// The secure heaps' functions for their blocks given to the core's entry points
// (module.h++): each call as the owning SecureAllocator's own (its deallocate,
// get_allocation_size, reallocate, try_realloc_inplace) does it, whichever heap
// the block is in.
namespace {
bool module_free(void* p, const char* what) { return secure_free_if_secure(p, kAnySize, kAnyAlignment, what); }
bool module_usable_size(const void* p, std::size_t* out, const char* what) {
  return secure_usable_size_if_secure(p, out, what);
}
bool module_resize(void* p, std::size_t size, bool may_move, void** out) {
  bool mine = may_move ? secure_realloc_if_secure(nullptr, p, size, out) : secure_resize_in_place_if_secure(p, size, out);
  if (mine && !*out && may_move) errno = ENOMEM;
  return mine;
}
constinit const ModuleOps kSecureModule{module_free, module_usable_size, module_resize};
}  // namespace

const ModuleOps* secure_module() { return &kSecureModule; }

void secure_stats_fill(SecureHeap* h, lca_stats* out) {
  *out = lca_stats{};
  // Large blocks count in the heap's atomics, small ones per class, and a live
  // thread's cache in its own until the thread exits, when tc_retire_locked moves
  // them to the heap's under g_tc_lock.  The heap's are read under that lock too:
  // read before the move and the list after it, an exiting thread's counts were
  // in neither, and a reader saw allocation_count go back.
  lca_mutex_lock(&g_tc_lock);
  out->total_allocated = h->allocated_bytes.load(std::memory_order_relaxed);
  out->total_freed = h->freed_bytes.load(std::memory_order_relaxed);
  out->allocation_count = h->alloc_count.load(std::memory_order_relaxed);
  out->free_count = h->free_count.load(std::memory_order_relaxed);
  for (const auto& cs : h->classes) {
    out->total_allocated += cs.alloc_bytes.load(std::memory_order_relaxed);
    out->total_freed += cs.free_bytes.load(std::memory_order_relaxed);
    out->allocation_count += cs.allocs.load(std::memory_order_relaxed);
    out->free_count += cs.frees.load(std::memory_order_relaxed);
  }
  for (ThreadCache* tc = g_tc_list; tc; tc = tc->next) {
    if (tc->heap != h || tc->orphaned.load(std::memory_order_relaxed)) continue;
    out->total_allocated += tc->alloc_bytes.load(std::memory_order_relaxed);
    out->total_freed += tc->free_bytes.load(std::memory_order_relaxed);
    out->allocation_count += tc->allocs.load(std::memory_order_relaxed);
    out->free_count += tc->frees.load(std::memory_order_relaxed);
  }
  lca_mutex_unlock(&g_tc_lock);
  out->active_allocations = out->allocation_count - out->free_count;
  out->os_memory_mapped = h->mapped_bytes.load(std::memory_order_relaxed);
  std::size_t live = out->total_allocated - out->total_freed;
  out->fragmentation_bytes = out->os_memory_mapped > live ? out->os_memory_mapped - live : 0;
  out->realloc_in_place = h->realloc_in_place.load(std::memory_order_relaxed);
  out->realloc_moved = h->realloc_moved.load(std::memory_order_relaxed);
  out->large_mappings = h->large_live.load(std::memory_order_relaxed);
}

void secure_trim(SecureHeap* h) {
  VgSerial serial;
  // The caller's cached slots go back first (other threads' caches are theirs).
  if (ThreadCache* tc = tc_for(h)) tc_drain_all(h, tc);
  // Quarantined slots are checked and freed, empty chunks unmapped.
  release_reserves(h);
  // Slabs with no live and no quarantined slot give their pages back (they read
  // as zero afterwards, which is what a free slot holds), once: a slab no slot
  // has left since its purge has no page to give.
  for (auto& cs : h->classes) {
    class_lock(&cs);
    for (ChunkMeta* m = cs.chunks; m; m = m->next)
      if (m->cls)
        for (std::uint32_t k = 0; k < m->nslabs; ++k) {
          SlabMeta* s = &m->slabs[k];
          if (s->active && !s->purged && s->free_slots == m->slots_per_slab) {
            os_purge(slot_addr(m, k, 0), m->slab_bytes);
            s->purged = true;
          }
        }
    lca_mutex_unlock(&cs.lock);
  }
  // Quarantined large blocks: unmapped now (the ring is process-wide: every
  // heap's go).
  for (;;) {
    std::uintptr_t base = 0;
    std::size_t size = 0;
    SecureHeap* owner = nullptr;
    lca_mutex_lock(&g_large_lock);
    bool any = large_evict_oldest(&base, &size, &owner);
    lca_mutex_unlock(&g_large_lock);
    if (!any) break;
    if (base) {
      os_unmap(reinterpret_cast<void*>(base), size);
      owner->mapped_bytes.fetch_sub(size, std::memory_order_relaxed);
    }
  }
}

SecureHeap* secure_process_heap() {
  SecureHeap* h = g_process_heap.load(std::memory_order_acquire);
  if (__builtin_expect(h != nullptr, 1)) return h;
  SecureHeap* made = secure_heap_create();
  if (!made) return nullptr;
  SecureHeap* expected = nullptr;
  if (g_process_heap.compare_exchange_strong(expected, made, std::memory_order_acq_rel)) return made;
  secure_heap_destroy(made);
  return expected;
}

// fork().  g_tc_lock first: it is held while instance caches go back to their
// heaps' class locks (tc_inst_release_locked).  Held across the fork: g_tc_lock
// (the thread caches' list), g_heaps_lock (the heaps' list, and what the class
// locks' waiters wait for), the large-block table and ring's lock and the chunk
// map's: four locks whatever the number of heaps.  Not the class locks: before
// session 19 every heap's 45 and its placement lock were held, 46 a heap, and
// TSan's deadlock detector, which allows 64 held at once, stopped a program with
// one SecureAllocator at its first fork (tests/unit/fork,
// test_fork_with_secure_allocators_in_use).  Now each is taken and released
// once with its `forking` flag set under it: a change of the class in progress
// (its slabs, chunk list, quarantine, the thread caches' refills and flushes)
// ends first, and one that takes the lock later finds the flag and waits for
// g_heaps_lock (class_lock), so that the child finds every class whole.
LCA_CORE_TEXT void secure_prefork() {
  lca_mutex_lock(&g_tc_lock);
  lca_mutex_lock(&g_heaps_lock);
  for (SecureHeap* h = g_heaps; h; h = h->next) heap_fork_gate(h);
  lca_mutex_lock(&g_large_lock);
  lca_mutex_lock(&g_radix_lock);
  lca_mutex_lock(&g_reader_lock);
  for (const pthread_mutex_t* m : {&g_tc_lock, &g_heaps_lock, &g_large_lock, &g_radix_lock, &g_reader_lock})
    fork_hold(m);
}

namespace {
// The locks secure_prefork holds, released (also in the child: plain mutexes,
// whose unlock checks no owner).  The flags are cleared first, before
// g_heaps_lock goes: a thread waiting for it tests its class's flag again.
LCA_CORE_TEXT void secure_fork_release() {
  lca_mutex_unlock(&g_reader_lock);
  lca_mutex_unlock(&g_radix_lock);
  lca_mutex_unlock(&g_large_lock);
  for (SecureHeap* h = g_heaps; h; h = h->next)
    for (auto& cs : h->classes) cs.forking.store(nullptr, std::memory_order_relaxed);
  lca_mutex_unlock(&g_heaps_lock);
  lca_mutex_unlock(&g_tc_lock);
}
}  // namespace

LCA_CORE_TEXT void secure_postfork_parent() { secure_fork_release(); }

// The child has only the thread that forked.  The class locks are made again: a
// thread the fork did not copy may have held one for the instant between taking
// it and finding the flag (no change of the class was in progress); likewise the
// placement locks.  Then the other threads' caches give their slots back (as
// under their class locks: no other thread can take them) and go to the pool.
LCA_CORE_TEXT void secure_postfork_child() {
  for (SecureHeap* h = g_heaps; h; h = h->next) {
    for (auto& cs : h->classes) pthread_mutex_init(&cs.lock, nullptr);
    pthread_mutex_init(&h->placement_lock, nullptr);
  }
  auto mine = [](const ThreadCache* tc) {
    if (tc == tls_tc) return true;
    for (const ThreadCache* t : tls_tc_inst)
      if (t == tc) return true;
    return false;
  };
  for (ThreadCache* tc = g_tc_list; tc;) {
    ThreadCache* next = tc->next;
    if (!mine(tc)) {
      if (!tc->orphaned.load(std::memory_order_relaxed))
        for (unsigned c = 0; c < kNumClasses; ++c) tc_drain_locked(tc->heap, tc, c, true, true);
      tc_retire_locked(tc);
    }
    tc = next;
  }
  secure_fork_release();
}

std::size_t secure_heap_footprint(const SecureHeap* h) { return h->self_bytes; }

// The other threads' read sections end with them: their slots are free, a
// counter left odd (a thread inside a free at the fork) made even -- a release
// in the child would otherwise wait for it in vain -- and the counted ones are
// this thread's alone.  (The slot list's lock: held across the fork by
// secure_prefork, or Valgrind mode's serialising lock.)
LCA_CORE_TEXT void secure_readers_postfork_child() {
  for (ReaderSlot* r = g_readers.load(std::memory_order_relaxed); r; r = r->next) {
    if (r == tls_reader) continue;
    std::uint64_t v = r->seq.load(std::memory_order_relaxed);
    if (v & 1) r->seq.store(v + 1, std::memory_order_relaxed);
    r->taken.store(false, std::memory_order_relaxed);
  }
  g_counted_readers.store(tls_counted_reads, std::memory_order_relaxed);
}

void secure_set_read_stall_for_test(void (*fn)(const void* p)) {
  g_read_stall_for_test.store(fn, std::memory_order_relaxed);
}

std::size_t secure_cached_ready(std::size_t size, void** out, std::size_t max) {
  ThreadCache* tc = tls_tc;
  unsigned c = class_for_request(size, 16);
  if (reinterpret_cast<std::uintptr_t>(tc) <= 1 || c >= kNumClasses) return 0;
  TcClass& t = tc->cls[c];
  std::size_t n = 0;
  for (std::uint32_t i = 0; i < t.n_ready && n < max; ++i) out[n++] = entry_decode(&t.ready[i]);
  return n;
}

std::size_t secure_cached_elsewhere() {
  std::size_t n = 0;
  lca_mutex_lock(&g_tc_lock);
  SecureHeap* process = g_process_heap.load(std::memory_order_relaxed);
  for (ThreadCache* tc = g_tc_list; tc; tc = tc->next)
    if (tc != tls_tc && tc->heap == process)
      for (const TcClass& t : tc->cls) n += t.n_ready + t.n_freed;
  lca_mutex_unlock(&g_tc_lock);
  return n;
}

#if CALLOC_SECURE && CALLOC_TRACKING
// The tracked mark of a live block: kLiveBlock <-> kLiveTracked with one
// compare-exchange (a block that is not live, or marked already, is left as it
// is), a large block's flag under the large-block lock.  The tracker calls it for
// a block no other thread knows of yet (just allocated), or one the caller is
// reallocating.
// (No read section: the block is live and the caller's, so its chunk cannot be
// released meanwhile.)
bool secure_set_tracked(void* p, bool tracked) {
  VgSerial serial;
  if (ChunkMeta* m = chunk_lookup(p)) {
    std::uint32_t g;
    if (slot_of(m, p, &g) != 0) return false;
    std::uint8_t from = tracked ? kLiveBlock : kLiveTracked;
    return m->info[g].state.compare_exchange_strong(from, tracked ? kLiveTracked : kLiveBlock,
                                                    std::memory_order_acq_rel);
  }
  lca_mutex_lock(&g_large_lock);
  LargeEntry* e = large_find(reinterpret_cast<std::uintptr_t>(p));
  bool done = e && e->state == kLive;
  if (done) e->tracked = tracked;
  lca_mutex_unlock(&g_large_lock);
  return done;
}

int secure_tracked(const void* p) {
  VgSerial serial;
  if (ChunkMeta* m = chunk_lookup(p)) {
    std::uint32_t g;
    if (slot_of(m, p, &g) != 0) return -1;
    std::uint8_t st = state_of(m, g);
    return st == kLiveTracked ? 1 : st == kLiveBlock ? 0 : -1;
  }
  lca_mutex_lock(&g_large_lock);
  LargeEntry* e = large_find(reinterpret_cast<std::uintptr_t>(p));
  int mark = e && e->state == kLive ? e->tracked : -1;
  lca_mutex_unlock(&g_large_lock);
  return mark;
}
#endif

bool secure_block_info(const void* p, SecureBlockInfo* out) {
  ReadScope reading;
  if (ChunkMeta* m = chunk_lookup(p)) {
    std::uint32_t g = slot_index(m, p, false, "secure_block_info");
    ClassState* cs = &m->heap->classes[m->cls];
    class_lock(cs);
    require_live(m, g, p, false, "secure_block_info");
    out->slot_size = m->cls ? m->slot_size : 0;
    out->requested = info_size(m, g);
    out->chunk = m->base;
    out->canary = m->cls ? canary_for(reinterpret_cast<std::uintptr_t>(p)) : 0;
    lca_mutex_unlock(&cs->lock);
    return true;
  }
  std::size_t n;
  if (!secure_usable_size_if_secure(p, &n, "secure_block_info")) return false;
  *out = SecureBlockInfo{0, n, nullptr, 0};
  return true;
}

}  // namespace lca
