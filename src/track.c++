// track.c++ -- allocation tracking of the process heap: leak reports at exit,
// hot-site profiles, sampling (configure --enable-tracking; LIBCALLOC_OPTIONS).
//
// This module owns what the tracker knows: a table of allocation stacks
// ("sites", interned, never removed; per site: calls, bytes, live blocks, live
// bytes) and a table of the live tracked blocks (address -> site, size,
// weight), both in memory from the OS layer, so the tracker never calls malloc
// while malloc runs.  Stacks are captured by track-unwind.c++ (our frame
// walker and its small shared cache; libgcc_s or libunwind as fallbacks) and
// symbolised only when a report is written, in one batch (dladdr for the module, the module's ELF
// symbol table for the function (or its separate debug file's)
// -- static functions too --, its .debug_line, __cxa_demangle).  The
// report writers allocate (stdio, demangling) with the thread marked busy, so
// their own allocations are not tracked.
//
// Sampling follows the Poisson-process scheme of tcmalloc and jemalloc: each
// thread counts allocated bytes down from an exponentially distributed interval
// of mean `sample` bytes; the allocation that crosses zero is recorded with the
// weight 1 / (1 - exp(-size / sample)), the inverse of its probability of being
// sampled, so calls and bytes are unbiased estimates whatever the sizes.
//
// Locks: the block table is split into kShards shards, each with a mutex; site
// insertion takes one mutex (lookups are lock-free).  fork() takes them all
// before and re-initialises them in the child, which goes on tracking its own
// blocks and writes its own report (to PATH.PID when PATH has no %p).
#include "track.h++"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#if __has_include(<zlib.h>)
#include <zlib.h>  // types only: libz.so.1 is loaded with dlopen (see Zlib)
#define CALLOC_TRACK_ZLIB 1
#else
#define CALLOC_TRACK_ZLIB 0
#endif
#if CALLOC_TRACK_ZSTD
#include <zstd.h>  // types only: libzstd.so.1 is loaded with dlopen (see Zstd)
#endif
#ifndef ELFCOMPRESS_ZSTD
#define ELFCOMPRESS_ZSTD 2  // the gABI's value; glibc's elf.h has it from 2.37
#endif

#include <custom_alloc/allocation_tracker.h++>

#include "os.h++"
#include "report.h++"
#include "secure.h++"
#include "secure_vg.h++"
#include "tcache.h++"
#include "track-modules.h++"
#include "track-unwind.h++"
#include "vg.h++"

namespace lca {

TrackMode g_track_mode = TrackMode::off;
constinit thread_local std::int64_t tls_track_countdown __attribute__((tls_model("initial-exec"))) = 0;

namespace {

// Frames kept per stack, and captured (the allocator's own are dropped).
constexpr unsigned kMaxFrames = 32;
constexpr unsigned kCaptureFrames = kMaxFrames + 16;
// Distinct stacks kept: a dense array (20 MiB of address space, touched in
// order: 304 bytes a stack) found through an open-addressing index of 4-byte
// slots that starts at kInitialIndex slots (4 KiB) and doubles at half full.
// Stacks beyond kSites, or after kMaxProbe collisions, are counted under the
// overflow site 0, printed as "[stack table full]".
constexpr std::size_t kSites = std::size_t{1} << 16;
constexpr unsigned kMaxProbe = 64;
constexpr std::size_t kInitialIndex = 1024;
// Block table shards: threads freeing and allocating at once rarely meet.
// Their buckets (kInitialBuckets at first) and nodes (kNodeBatch at a time)
// come from one pool of small pieces (kPoolChunk mappings, touched as carved),
// so that a shard holding one sampled block costs ~200 bytes, not pages
// (4 buckets and 4 nodes at first: with 32 and 8, the 64 shards of a program
// whose samples had reached all of them held ~37 KiB of the pool; now ~12).
constexpr unsigned kShards = 64;
constexpr std::size_t kInitialBuckets = 4;
constexpr unsigned kNodeBatch = 4;
constexpr std::size_t kPoolChunk = 64 * 1024;
// Weights are fixed-point (1 << kWeightShift is one block), so that live
// counts add and subtract exactly.
constexpr unsigned kWeightShift = 16;
constexpr double kWeightOne = static_cast<double>(1u << kWeightShift);
// A human report lists at most this many stacks (the summary counts them all).
constexpr std::size_t kReportStacks = 200;
// profile=PATH without sample=: one sample per 512 KiB on average, the rate of
// gperftools and jemalloc's default: at under one sample per 100 000 small
// allocations its cost is far below noise, and a site that allocates 10 MiB
// is seen about 20 times (docs/design.md, "Tracking").
constexpr std::uint64_t kDefaultSampleBytes = 512 * 1024;

struct Site {
  std::atomic<std::uint64_t> key;  // 0: empty; else the stack's hash | 1, set once the frames are written
  std::uint32_t depth : 8;
  // The generation of the loaded-object log the stack was interned in
  // (track-modules.c++; 0: unknown, its frames named by what is loaded at the
  // report), and the last generation the site was found right in (its
  // frames' objects the same: see intern_site).  In what was the padding
  // before frames: a site is 304 bytes still.
  std::uint32_t generation : 24;
  std::atomic<std::uint32_t> checked;
  void* frames[kMaxFrames];
  std::atomic<std::uint64_t> calls_fx;  // estimated allocations, fixed-point
  std::atomic<std::uint64_t> bytes;     // estimated bytes allocated
  std::atomic<std::int64_t> live_fx;    // estimated live blocks, fixed-point
  std::atomic<std::int64_t> live_bytes;
};

static_assert(sizeof(Site) == 304, "a site's size is documented (kSites; docs/design.md)");

struct BlockNode {
  std::uintptr_t addr;
  BlockNode* next;
  std::uint32_t site;
  std::uint64_t weight_fx;  // this block's share of its site's counts
  std::uint64_t bytes;      // its estimated bytes (size * weight)
};

// A shard's lock: a spin lock, held for a few dozen instructions (a bucket
// walk) by the thread recording or forgetting a sampled block.  64 shards
// make waits rare; pthread_mutex_lock and unlock, taken twice a sample (its
// record, its free), cost ~270 of the ~2 400 instructions of a sample
// (callgrind, calloc-bench random-window).  Under Valgrind every caller holds
// the serialising lock already (the shards are libcalloc's own memory, which
// the thread checkers do not check), so it is never contended there.
struct SpinLock {
  std::atomic<bool> held{false};
};
LCA_SAMPLING_TEXT void spin_lock(SpinLock& l) {
  if (fork_passes(&l)) return;
  for (unsigned round = 0; l.held.exchange(true, std::memory_order_acquire); ++round) {
    while (l.held.load(std::memory_order_relaxed)) {
      if (round < 64) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        sched_yield();
      }
    }
  }
}
LCA_SAMPLING_TEXT void spin_unlock(SpinLock& l) {
  if (fork_passes(&l)) return;
  l.held.store(false, std::memory_order_release);
}
// The tracker's mutexes (plain ones, in Valgrind mode too), passed through by the
// forking thread while it holds them across a fork (vg.h++, ForkHeldLocks): a
// fork handler of another library, run between libcalloc's, may allocate, and
// its allocation may be sampled.
LCA_SAMPLING_TEXT void track_lock(pthread_mutex_t* m) {
  if (!fork_passes(m)) pthread_mutex_lock(m);
}
LCA_SAMPLING_TEXT void track_unlock(pthread_mutex_t* m) {
  if (!fork_passes(m)) pthread_mutex_unlock(m);
}

struct Shard {
  SpinLock lock;
  BlockNode** buckets;
  std::size_t nbuckets;
  // Blocks recorded; written under lock, read without it by block_take, so
  // that a free in a shard without samples (most frees that reach free_cold
  // while sampling) takes no lock: a block's insert happens before its free.
  std::atomic<std::size_t> count;
  BlockNode* free_nodes;
  char pad[64];
};

// The site index: slots hold dense site numbers (0: empty).  Replaced by a
// table twice its size at half full; old tables are kept (readers may still
// be probing them; a reader that misses there retries under g_site_lock in the
// current one), so all of them together stay under twice the last one.
struct SiteIndex {
  std::size_t mask;
  std::atomic<std::uint32_t>* slots;  // mask + 1 of them, right after this header
};

Site* g_sites;  // kSites entries, os_map'ed at track_init; 0 is the overflow site
std::atomic<SiteIndex*> g_site_index{nullptr};
std::atomic<std::uint32_t> g_nsites{1};  // sites in use, the overflow site included
pthread_mutex_t g_site_lock = PTHREAD_MUTEX_INITIALIZER;
// The pool of small pieces (buckets, nodes); g_pool_lock is taken under a
// shard's lock, never the other way round.
pthread_mutex_t g_pool_lock = PTHREAD_MUTEX_INITIALIZER;
char* g_pool_cur;
char* g_pool_end;
void* g_pool_free[11];  // freed bucket arrays by log2(bytes / 32) (kBucketClasses)
Shard g_shards[kShards];
std::uint64_t g_sample_bytes;
std::atomic<std::uint64_t> g_samples{0};
pid_t g_start_pid;
Options g_opts;  // a copy of the tracking options
// Where the reports at exit and the signal's profiles go: leak_report= and
// profile= made absolute against the working directory at start-up (in a
// mapping of their own, see resolve_paths), else g_opts's own strings.
const char* g_leak_path = g_opts.leak_report;
const char* g_profile_path = g_opts.profile;
// The profile signal (see "the profile thread" below): the handler sets
// g_dump_pending and posts g_dump_sem; the profile thread waits on it.
std::atomic<int> g_dump_pending{0};
static_assert(std::atomic<int>::is_always_lock_free, "set from a signal handler");
sem_t g_dump_sem;
// The profile thread: kDumpThreadNone (no profile signal, or it could not be
// started), kDumpThreadWanted (to start at the next allocation that reaches
// the tracker: a forked child's), kDumpThreadStarted.
enum : int { kDumpThreadNone, kDumpThreadWanted, kDumpThreadStarted };
std::atomic<int> g_dump_thread{kDumpThreadNone};
// One report at a time: each opened its file and wrote it, so two at once (the
// profile signal twice in a row, a signal's dump during the report at exit,
// dump_process_profile meanwhile) wrote one file of two interleaved profiles
// (tests/unit/track, test_profile_dumps_do_not_overlap).  Held for a whole
// report, outside any other lock of the tracker's; not taken before fork (the
// writer takes stdio's list lock, which the fork handler holds first), but
// re-initialised in the child when a parent's thread held it
// (track_postfork_child).
pthread_mutex_t g_report_lock = PTHREAD_MUTEX_INITIALIZER;
// Under g_report_lock: the profiles written for the signal (a test's view), and
// whether the reports at exit were written (the profile thread writes no more).
std::uint64_t g_signal_dumps;
bool g_exit_reported;
struct ReportLock {
  ReportLock() { pthread_mutex_lock(&g_report_lock); }
  ~ReportLock() { pthread_mutex_unlock(&g_report_lock); }
  ReportLock(const ReportLock&) = delete;
  ReportLock& operator=(const ReportLock&) = delete;
};

// Text ranges to drop from the top of captured stacks: libcalloc's own when
// it is a shared object of its own (else the caller's
// return address marks where the user's frames start).
struct TextRange {
  std::uintptr_t lo = 0, hi = 0;
};
TextRange g_skip_ranges[8];
unsigned g_nskip;
bool g_lib_is_main;

constinit thread_local bool tls_track_busy __attribute__((tls_model("initial-exec"))) = false;
// The calling thread's lookups in the block table (block_take): the tests' view
// of which frees ask the tracker (track_lookups_for_test).
constinit thread_local std::uint64_t tls_track_lookups __attribute__((tls_model("initial-exec"))) = 0;
constinit thread_local std::uint64_t tls_rng __attribute__((tls_model("initial-exec"))) = 0;

// Marks the thread busy in the tracker for a scope: allocations made meanwhile
// (by libunwind, stdio, the demangler) are not tracked, and cannot recurse.
struct Busy {
  bool was;
  Busy() : was(tls_track_busy) { tls_track_busy = true; }
  ~Busy() { tls_track_busy = was; }
};

// --- text ranges -------------------------------------------------------------

struct RangeQuery {
  std::uintptr_t base;
  TextRange* out;
  unsigned* n;
  unsigned cap;
};

LCA_SAMPLING_TEXT int collect_text(dl_phdr_info* info, std::size_t, void* data) {
  auto* q = static_cast<RangeQuery*>(data);
  if (info->dlpi_addr != q->base) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X) || *q->n >= q->cap) continue;
    TextRange& r = q->out[(*q->n)++];
    r.lo = info->dlpi_addr + ph.p_vaddr;
    r.hi = r.lo + ph.p_memsz;
  }
  return 1;
}

// Adds the executable segments of the object containing fn.
LCA_SAMPLING_TEXT void skip_object_of(const void* fn) {
  Dl_info dl;
  link_map* lm = nullptr;
  if (!dladdr1(fn, &dl, reinterpret_cast<void**>(&lm), RTLD_DL_LINKMAP) || !lm) return;
  RangeQuery q{lm->l_addr, g_skip_ranges, &g_nskip, sizeof g_skip_ranges / sizeof g_skip_ranges[0]};
  dl_iterate_phdr(collect_text, &q);
}

LCA_SAMPLING_TEXT bool in_skipped_text(const void* ip) {
  auto a = reinterpret_cast<std::uintptr_t>(ip);
  for (unsigned i = 0; i < g_nskip; ++i)
    if (a >= g_skip_ranges[i].lo && a < g_skip_ranges[i].hi) return true;
  return false;
}

LCA_SAMPLING_TEXT void init_skip_ranges() {
  Busy busy;
  unwind_init();
  Dl_info self;
  link_map* lm_self = nullptr;
  dladdr1(reinterpret_cast<const void*>(&track_init), &self, reinterpret_cast<void**>(&lm_self), RTLD_DL_LINKMAP);
  void* main_handle = dlopen(nullptr, RTLD_LAZY | RTLD_NOLOAD);
  auto* lm_main = static_cast<link_map*>(main_handle);
  g_lib_is_main = !lm_self || lm_self == lm_main;
  if (main_handle) dlclose(main_handle);
  if (!g_lib_is_main) skip_object_of(reinterpret_cast<const void*>(&track_init));
}

// --- sites --------------------------------------------------------------------

LCA_SAMPLING_TEXT std::uint64_t hash_stack(void* const* frames, unsigned n) {
  std::uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
  for (unsigned i = 0; i < n; ++i) {
    h ^= reinterpret_cast<std::uintptr_t>(frames[i]);
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
  }
  return h | 1;
}

LCA_SAMPLING_TEXT bool same_stack(const Site& s, void* const* frames, unsigned n) {
  return s.depth == n && std::memcmp(s.frames, frames, n * sizeof(void*)) == 0;
}

// An empty index of nslots (a power of two) slots.
LCA_SAMPLING_TEXT SiteIndex* index_create(std::size_t nslots) {
  auto* t = static_cast<SiteIndex*>(os_map(sizeof(SiteIndex) + nslots * sizeof(std::atomic<std::uint32_t>)));
  if (!t) return nullptr;
  t->mask = nslots - 1;
  t->slots = reinterpret_cast<std::atomic<std::uint32_t>*>(t + 1);
  return t;
}

// The slot of a stack with hash h in t: its site, or 0 with *free_slot set to
// the empty slot where it would go (kMaxProbe collisions: 0 and no slot).
LCA_SAMPLING_TEXT std::uint32_t index_probe(const SiteIndex* t, std::uint64_t h, void* const* frames, unsigned n, std::size_t* free_slot) {
  std::size_t i = (h >> 1) & t->mask;
  *free_slot = ~std::size_t{0};
  for (unsigned probe = 0; probe < kMaxProbe; ++probe, i = (i + 1) & t->mask) {
    std::uint32_t k = t->slots[i].load(std::memory_order_acquire);
    if (k == 0) {
      *free_slot = i;
      return 0;
    }
    const Site& s = g_sites[k];
    if (s.key.load(std::memory_order_relaxed) == h && same_stack(s, frames, n)) return k;
  }
  return 0;
}

// Doubles the index (under g_site_lock); false when out of memory.
LCA_SAMPLING_TEXT bool index_grow() {
  SiteIndex* old = g_site_index.load(std::memory_order_relaxed);
  std::size_t nslots = (old->mask + 1) * 2;
  SiteIndex* t = index_create(nslots);
  if (!t) return false;
  std::uint32_t used = g_nsites.load(std::memory_order_relaxed);
  for (std::uint32_t k = 1; k < used; ++k) {
    std::size_t i = (g_sites[k].key.load(std::memory_order_relaxed) >> 1) & t->mask;
    while (t->slots[i].load(std::memory_order_relaxed) != 0) i = (i + 1) & t->mask;
    t->slots[i].store(k, std::memory_order_relaxed);
  }
  g_site_index.store(t, std::memory_order_release);
  return true;
}

// Whether site k, found by the addresses of a stack just captured, holds
// that stack: the objects at its addresses are those the site was interned
// with.  They are when the capture's frames all lie in objects never
// unloaded, or the capture cannot tell (a fallback unwinder: as before the
// log), or the site's generation (or the last one it was checked in) is the
// one now; else (a library was unloaded and loaded since) the log answers,
// once a generation (`checked`).  A stack through a dlopen'ed library costs
// its walk a dl_iterate_phdr already (the generation check, whose counters
// give the generation now): this adds the log's lock, and a pass over the
// frames when the generation changed.
LCA_SAMPLING_TEXT bool site_holds(std::uint32_t k) {
  Site& s = g_sites[k];
  if (tls_objects != CaptureObjects::checked || s.generation == 0) return true;  // (see intern_site)
  unsigned long long adds, subs;
  unwind_last_counters(&adds, &subs);
  std::uint32_t now = modules_generation_if(adds, subs);
  if (now == 0) now = modules_generation();  // the log is behind: log the objects now (rare)
  if (now == 0 || now == s.generation || now == s.checked.load(std::memory_order_relaxed)) return true;
  if (!modules_same_objects(s.generation, now, s.frames, s.depth)) return false;
  s.checked.store(now, std::memory_order_relaxed);
  return true;
}

// A stack's incarnations: sites of the same addresses in other objects (a
// library unloaded, another loaded at its addresses) are interned under the
// hashes h ^ i * kIncarnation | 1, i = 1 .. kIncarnations - 1, the first
// free one taken; past them the last one found is used.
constexpr unsigned kIncarnations = 8;
constexpr std::uint64_t kIncarnation = 0xc2b2ae3d27d4eb4full;

// The site of a stack, created on first sight; 0 (the overflow site) when the
// table has no room for it.  Lookups take no lock.
LCA_SAMPLING_TEXT std::uint32_t intern_site(void* const* frames, unsigned n) {
  std::uint64_t h0 = hash_stack(frames, n), h = h0;
  std::size_t slot;
  std::uint32_t last = index_probe(g_site_index.load(std::memory_order_acquire), h0, frames, n, &slot);
  // The usual case: found, and the stack in objects never unloaded.
  if (last && (tls_objects != CaptureObjects::checked || site_holds(last))) return last;
  if (last) {
    unsigned i = 1;
    for (; i < kIncarnations; ++i) {
      h = (h0 ^ i * kIncarnation) | 1;
      std::uint32_t k = index_probe(g_site_index.load(std::memory_order_acquire), h, frames, n, &slot);
      if (k == 0) break;  // h: the first incarnation not interned
      if (site_holds(k)) return k;
      last = k;
    }
    if (i == kIncarnations) return last;  // every incarnation taken, none holds: the last
  }
  // A new stack (or one interned meanwhile): the objects loaded now, before
  // g_site_lock (dl_iterate_phdr takes the loader's lock, which a thread may
  // hold while it allocates: inside a dl_iterate_phdr callback of its own).
  std::uint32_t generation = modules_generation();
  track_lock(&g_site_lock);
  SiteIndex* t = g_site_index.load(std::memory_order_relaxed);
  std::uint32_t k = index_probe(t, h, frames, n, &slot);
  std::uint32_t used = g_nsites.load(std::memory_order_relaxed);
  if (k == 0 && used < kSites) {
    if ((used + 1) * 2 > t->mask + 1 && t->mask + 1 < 2 * kSites && index_grow()) {
      t = g_site_index.load(std::memory_order_relaxed);
      index_probe(t, h, frames, n, &slot);
    }
    if (slot != ~std::size_t{0}) {
      Site& s = g_sites[used];
      s.depth = n;
      s.generation = generation;
      std::memcpy(s.frames, frames, n * sizeof(void*));
      s.key.store(h, std::memory_order_relaxed);
      g_nsites.store(used + 1, std::memory_order_release);
      t->slots[slot].store(used, std::memory_order_release);
      k = used;
    }
  }
  track_unlock(&g_site_lock);
  return k;
}

// --- blocks ---------------------------------------------------------------------

LCA_SAMPLING_TEXT Shard& shard_of(std::uintptr_t a) { return g_shards[(a >> 4 ^ a >> 12) % kShards]; }
LCA_SAMPLING_TEXT std::size_t bucket_of(std::uintptr_t a, std::size_t n) { return ((a >> 4) * 0x9e3779b97f4a7c15ull >> 20) & (n - 1); }

// A piece of `bytes` (a multiple of 16) from the pool, zero-filled; nullptr
// when out of memory.  Bucket arrays of 32 bytes to 32 KiB are reused when a
// shard outgrows them; larger ones are mappings of their own.
constexpr unsigned kBucketClasses = 11;  // 32 << 10 = 32 KiB
LCA_SAMPLING_TEXT std::size_t bucket_class(std::size_t bytes) {
  unsigned c = 0;
  while ((std::size_t{32} << c) < bytes) ++c;
  return c;
}

LCA_SAMPLING_TEXT void* pool_alloc(std::size_t bytes) {
  if (bytes > kPoolChunk / 2) return os_map(bytes);
  track_lock(&g_pool_lock);
  void* p = nullptr;
  std::size_t c = bucket_class(bytes);
  if (bytes == (std::size_t{32} << c) && c < kBucketClasses && g_pool_free[c]) {
    p = g_pool_free[c];
    g_pool_free[c] = *static_cast<void**>(p);
    std::memset(p, 0, bytes);
  } else {
    if (static_cast<std::size_t>(g_pool_end - g_pool_cur) < bytes) {
      auto* chunk = static_cast<char*>(os_map(kPoolChunk));
      if (chunk) g_pool_cur = chunk, g_pool_end = chunk + kPoolChunk;
    }
    if (static_cast<std::size_t>(g_pool_end - g_pool_cur) >= bytes) {
      p = g_pool_cur;
      g_pool_cur += bytes;
    }
  }
  track_unlock(&g_pool_lock);
  return p;
}

LCA_SAMPLING_TEXT void pool_free_buckets(void* p, std::size_t bytes) {
  if (bytes > kPoolChunk / 2) {
    os_unmap(p, bytes);
    return;
  }
  std::size_t c = bucket_class(bytes);
  track_lock(&g_pool_lock);
  *static_cast<void**>(p) = g_pool_free[c];
  g_pool_free[c] = p;
  track_unlock(&g_pool_lock);
}

LCA_SAMPLING_TEXT bool shard_grow(Shard& s) {
  std::size_t n = s.nbuckets ? s.nbuckets * 2 : kInitialBuckets;
  auto** b = static_cast<BlockNode**>(pool_alloc(n * sizeof(BlockNode*)));
  if (!b) return false;
  for (std::size_t i = 0; i < s.nbuckets; ++i) {
    BlockNode* node = s.buckets[i];
    while (node) {
      BlockNode* next = node->next;
      std::size_t j = bucket_of(node->addr, n);
      node->next = b[j];
      b[j] = node;
      node = next;
    }
  }
  if (s.buckets) pool_free_buckets(s.buckets, s.nbuckets * sizeof(BlockNode*));
  s.buckets = b;
  s.nbuckets = n;
  return true;
}

LCA_SAMPLING_TEXT BlockNode* node_alloc(Shard& s) {
  if (!s.free_nodes) {
    static_assert(sizeof(BlockNode) % 8 == 0);
    auto* batch = static_cast<BlockNode*>(pool_alloc(align_up(kNodeBatch * sizeof(BlockNode), 16)));
    if (!batch) return nullptr;
    for (unsigned i = 0; i < kNodeBatch; ++i) {
      batch[i].next = s.free_nodes;
      s.free_nodes = &batch[i];
    }
  }
  BlockNode* n = s.free_nodes;
  s.free_nodes = n->next;
  return n;
}

LCA_SAMPLING_TEXT void site_add(std::uint32_t site, std::uint64_t weight_fx, std::uint64_t bytes) {
  Site& s = g_sites[site];
  s.calls_fx.fetch_add(weight_fx, std::memory_order_relaxed);
  s.bytes.fetch_add(bytes, std::memory_order_relaxed);
  s.live_fx.fetch_add(static_cast<std::int64_t>(weight_fx), std::memory_order_relaxed);
  s.live_bytes.fetch_add(static_cast<std::int64_t>(bytes), std::memory_order_relaxed);
}

LCA_SAMPLING_TEXT void site_release(std::uint32_t site, std::uint64_t weight_fx, std::uint64_t bytes) {
  Site& s = g_sites[site];
  s.live_fx.fetch_sub(static_cast<std::int64_t>(weight_fx), std::memory_order_relaxed);
  s.live_bytes.fetch_sub(static_cast<std::int64_t>(bytes), std::memory_order_relaxed);
}

LCA_SAMPLING_TEXT void block_insert(void* p, std::uint32_t site, std::uint64_t weight_fx, std::uint64_t bytes) {
  auto a = reinterpret_cast<std::uintptr_t>(p);
  Shard& s = shard_of(a);
  spin_lock(s.lock);
  if (s.count.load(std::memory_order_relaxed) >= s.nbuckets && !shard_grow(s) && s.nbuckets == 0) {
    spin_unlock(s.lock);
    return;  // no memory for the table: the block goes untracked
  }
  BlockNode* n = node_alloc(s);
  if (!n) {
    spin_unlock(s.lock);
    return;
  }
  *n = BlockNode{a, nullptr, site, weight_fx, bytes};
  std::size_t b = bucket_of(a, s.nbuckets);
  n->next = s.buckets[b];
  s.buckets[b] = n;
  s.count.store(s.count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  spin_unlock(s.lock);
  site_add(site, weight_fx, bytes);
#if CALLOC_SECURE
  // The secure heap's mark: the block's free calls track_free, no other does.
  // (A block that is not a secure one -- the core heap's, reached by realloc --
  // has none: its free reaches track_forget in secure_free or free_cold.)
  secure_set_tracked(p, true);
#endif
}

// Removes p's record; false when p is not tracked.
LCA_SAMPLING_TEXT bool block_take(void* p, BlockNode* out) {
  ++tls_track_lookups;
  auto a = reinterpret_cast<std::uintptr_t>(p);
  Shard& s = shard_of(a);
  if (s.count.load(std::memory_order_relaxed) == 0) return false;
  spin_lock(s.lock);
  if (s.count.load(std::memory_order_relaxed) == 0) {
    spin_unlock(s.lock);
    return false;
  }
  BlockNode** link = &s.buckets[bucket_of(a, s.nbuckets)];
  while (BlockNode* n = *link) {
    if (n->addr == a) {
      *link = n->next;
      *out = *n;
      n->next = s.free_nodes;
      s.free_nodes = n;
      s.count.store(s.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
      spin_unlock(s.lock);
      site_release(out->site, out->weight_fx, out->bytes);
      return true;
    }
    link = &n->next;
  }
  spin_unlock(s.lock);
  return false;
}

// Removes the record of p, a live block that stays live for now (realloc); false
// when p is not tracked.  A secure block without the mark has no record: the
// table is not read.
LCA_SAMPLING_TEXT bool block_take_live(void* p, BlockNode* out) {
#if CALLOC_SECURE
  int mark = secure_tracked(p);
  if (mark == 0) return false;
  bool was = block_take(p, out);
  if (mark > 0) secure_set_tracked(p, false);
  return was;
#else
  return block_take(p, out);
#endif
}

// --- sampling ---------------------------------------------------------------------

LCA_SAMPLING_TEXT std::uint64_t rng_next() {
  std::uint64_t x = tls_rng;
  if (x == 0) {
#if defined(__x86_64__)
    // The time-stamp counter, not clock_gettime: libc's wrapper sits in a
    // 64 KiB fault-around window of libc's text that programs seldom touch
    // otherwise (+64 KiB of file pages in each sampled C program measured).
    std::uint64_t t = __builtin_ia32_rdtsc();
#else
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    std::uint64_t t = static_cast<std::uint64_t>(ts.tv_nsec);
#endif
    x = t ^ (reinterpret_cast<std::uintptr_t>(&tls_rng) << 16) ^
        static_cast<std::uint64_t>(gettid()) * 0x9e3779b97f4a7c15ull;
    if (x == 0) x = 1;
  }
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  tls_rng = x;
  return x * 0x2545f4914f6cdd1dull;
}

// log and 1 - exp(-x) of our own, without tables: libm's log and expm1 read
// their lookup tables from libm's .rodata, which faulted ~150 KiB of file
// pages into every sampled process (the kernel maps 64 KiB around a fault).
// Polynomials in Horner form with constant coefficients (no division in a
// loop: the series with a division a term cost each sample ~360 instructions
// of the ~2 600 it costs in all); both exact to ~1e-12 relative, far below
// what sampling needs (its estimates move by percents).
double split_exponent(double x, int* e) {  // x = m * 2^e, m in [sqrt(1/2), sqrt(2)); x normal, > 0
  std::uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  *e = static_cast<int>((bits >> 52) & 0x7ff) - 1023;
  bits = (bits & ((std::uint64_t{1} << 52) - 1)) | (std::uint64_t{1023} << 52);  // [1, 2)
  double m;
  std::memcpy(&m, &bits, sizeof m);
  if (m > 1.4142135623730951) m *= 0.5, ++*e;
  return m;
}

// Natural logarithm of x in (0, 1] (interval draws: x >= 2^-53): 2 atanh(t),
// t = (m - 1) / (m + 1), |t| <= 0.1716, by its series to t^15 (the next term
// is under 3e-13 of the sum).
LCA_SAMPLING_TEXT double ln(double x) {
  int e;
  double m = split_exponent(x, &e);
  double t = (m - 1) / (m + 1), t2 = t * t;
  constexpr double kCoef[] = {1.0 / 13, 1.0 / 11, 1.0 / 9, 1.0 / 7, 1.0 / 5, 1.0 / 3, 1.0};
  double sum = 1.0 / 15;
  for (double c : kCoef) sum = sum * t2 + c;
  return 2 * t * sum + e * 0.6931471805599453;
}

// exp(-r) for r in [0, ln 2): its Taylor series to r^14 (next term < 4e-15).
LCA_SAMPLING_TEXT double exp_neg_reduced(double r) {
  constexpr double kInvFact[] = {1.0 / 87178291200.0, 1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0,
                                 1.0 / 3628800.0,     1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,
                                 1.0 / 720.0,         1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,
                                 1.0 / 2.0,           1.0,                1.0};  // 1/14! .. 1/0!
  double y = -r, sum = 0;
  for (double c : kInvFact) sum = sum * y + c;
  return sum;
}

// 1 - exp(-x) for x >= 0.
LCA_SAMPLING_TEXT double one_minus_exp_neg(double x) {
  if (x < 0.5) {  // -(expm1(-x)) = x - x^2/2! + x^3/3! ...: no cancellation; to x^14 (next < 2e-14 relative)
    constexpr double kCoef[] = {-1.0 / 87178291200.0, 1.0 / 6227020800.0, -1.0 / 479001600.0, 1.0 / 39916800.0,
                                -1.0 / 3628800.0,     1.0 / 362880.0,     -1.0 / 40320.0,    1.0 / 5040.0,
                                -1.0 / 720.0,         1.0 / 120.0,        -1.0 / 24.0,       1.0 / 6.0,
                                -1.0 / 2.0,           1.0};  // (-1)^(k+1) / k!, k = 14 .. 1
    double sum = 0;
    for (double c : kCoef) sum = sum * x + c;
    return sum * x;
  }
  if (x > 745) return 1.0;
  // exp(-x) = 2^-k * exp(-r), x = k ln 2 + r, 0 <= r < ln 2.
  int k = static_cast<int>(x / 0.6931471805599453);
  double r = x - k * 0.6931471805599453;
  double e = exp_neg_reduced(r);
  std::uint64_t bits = static_cast<std::uint64_t>(1023 - k) << 52;  // 2^-k, k <= 1075: normal for k < 1023
  double scale;
  if (k >= 1022) return 1.0;
  std::memcpy(&scale, &bits, sizeof scale);
  return 1.0 - e * scale;
}

// The next interval: exponential with mean g_sample_bytes.
LCA_SAMPLING_TEXT std::int64_t next_interval() {
  double u = (static_cast<double>(rng_next() >> 11) + 1.0) / 9007199254740993.0;  // (0, 1]
  double v = -ln(u) * static_cast<double>(g_sample_bytes);
  if (v > 4e18) v = 4e18;
  return static_cast<std::int64_t>(v);
}

LCA_SAMPLING_TEXT void reset_countdown() {
  tls_track_countdown = g_track_mode == TrackMode::sample ? next_interval() : INT64_MAX;
}

// The countdown of a thread whose generator is not seeded yet -- its first
// allocation while sampling, or a forked child's first (track_postfork_child)
// --, which has just counted down `size` bytes from 0: an interval drawn now,
// less those bytes.  The allocation is then a sample with the probability
// 1 - exp(-size / sample) that the weights assume.  It was never one (the
// countdown was set up and the allocation passed over): a thread's first
// block, often its own thread-local storage, was never in a profile.
LCA_SAMPLING_TEXT void first_countdown(std::size_t size) {
  tls_track_countdown = next_interval() - static_cast<std::int64_t>(size);
}

// --- capture ---------------------------------------------------------------------

// The stack above the allocator: frames in skipped text are dropped from the
// top.  Without such text (libcalloc linked into the program) the frames above
// the one whose address is `marker` -- track_malloc's return address -- are
// dropped: that frame is the libcalloc entry point (malloc, operator new) that
// called track_malloc, or the user's when the entry point tail-called it, so
// such a stack may begin with one libcalloc frame but never loses a user's.
// Inlined with record() into track_malloc, so that the walk starts there.
__attribute__((always_inline)) inline unsigned capture_user_stack(void** out, const void* marker) {
  void* raw[kCaptureFrames];
  int n = unwind_capture(raw, static_cast<int>(kCaptureFrames));
  int i = 0;
  if (!g_lib_is_main) {
    // Should the first frames be outside libcalloc (none today), they go first.
    while (i < n && !in_skipped_text(raw[i])) ++i;
    if (i == n) i = 0;
    while (i < n && in_skipped_text(raw[i])) ++i;
  } else {
    int m = 0;
    while (m < n && raw[m] != marker) ++m;
    i = m < n ? m : (n < 3 ? n : 3);
  }
  unsigned k = 0;
  for (; i < n && k < kMaxFrames; ++i) out[k++] = raw[i];
  return k;
}

__attribute__((always_inline)) inline void record(void* p, std::size_t size, std::uint64_t weight_fx, std::uint64_t bytes,
                                                  const void* marker) {
  void* frames[kMaxFrames];
  unsigned n = capture_user_stack(frames, marker);
  block_insert(p, intern_site(frames, n), weight_fx, bytes);
  (void)size;
  g_samples.fetch_add(1, std::memory_order_relaxed);
}

// Weight of a sampled allocation of `size` bytes: 1 / P(sampled).
LCA_SAMPLING_TEXT void sample_weight(std::size_t size, std::uint64_t* weight_fx, std::uint64_t* bytes) {
  if (g_track_mode == TrackMode::full) {
    *weight_fx = 1u << kWeightShift;
    *bytes = size;
    return;
  }
  double s = static_cast<double>(size ? size : 1);
  double p = one_minus_exp_neg(s / static_cast<double>(g_sample_bytes));
  *weight_fx = static_cast<std::uint64_t>(kWeightOne / p + 0.5);
  *bytes = static_cast<std::uint64_t>(s / p + 0.5);
}

void start_dump_thread();

// --- symbolisation --------------------------------------------------------------

// Symbolisation works in batches: a report first lists every return address
// it will print (prepare_symbols), and each module's ELF file is read once
// for all of them -- its symbol table and its .debug_line streamed through,
// with no table of all symbols or all line rows kept (a library with debug
// information has millions of rows: python3's libpython made 34 MB of them)
// -- then unmapped.  What each address resolved to is kept in g_syms, sorted
// by address, with its strings copied into g_strs; symbolize() reads it.
struct SymResult {
  std::uintptr_t addr;       // the return address
  std::uintptr_t fbase;      // its module's load address (0: no module)
  std::uintptr_t start;      // its function's address (0: unknown)
  const char* raw_name;      // mangled, in g_strs; nullptr when unknown
  const char* file;          // source file, in g_strs; nullptr when unknown
  const char* module;        // the module's path, in g_strs
  std::uint32_t line;
};

// A target of one module's pass: its module-relative address and what the
// pass found (pointers into the module's mapping until copied).
struct Target {
  std::uintptr_t rel;
  std::size_t result;        // index into the batch's results
  std::uintptr_t sym_value;  // best containing symbol so far
  const char* sym_name;
  bool has_sym;
  bool sym_global;  // the symbol is global or weak (preferred among aliases)
  const char* file;
  std::uint32_t line;
};

// --- DWARF line tables (.debug_line, versions 2 to 5) ---------------------------

struct Reader {
  const unsigned char* p;
  const unsigned char* end;
  bool ok = true;
  bool has(std::size_t n) {
    if (static_cast<std::size_t>(end - p) < n) ok = false;
    return ok;
  }
  // n at most 8 (more would shift by 64 or more: a malformed header's size).
  std::uint64_t fixed(unsigned n) {
    if (n > 8) ok = false;
    if (!has(n)) return 0;
    std::uint64_t v = 0;
    for (unsigned i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
    p += n;
    return v;
  }
  std::uint64_t uleb() {
    std::uint64_t v = 0;
    for (unsigned shift = 0; has(1); shift += 7) {
      unsigned char b = *p++;
      if (shift < 64) v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) break;
    }
    return v;
  }
  std::int64_t sleb() {
    std::int64_t v = 0;
    unsigned shift = 0;
    unsigned char b = 0;
    while (has(1)) {
      b = *p++;
      if (shift < 64) v |= static_cast<std::int64_t>(b & 0x7f) << shift;
      shift += 7;
      if (!(b & 0x80)) break;
    }
    if (shift < 64 && (b & 0x40)) v |= -(std::int64_t{1} << shift);
    return v;
  }
  const char* cstr() {
    auto* s = reinterpret_cast<const char*>(p);
    while (has(1) && *p) ++p;
    if (has(1)) ++p;
    return s;
  }
};

struct Inflater;
bool inflate_upto(Inflater* z, std::size_t upto);

struct Sections {
  const unsigned char *line = nullptr, *line_str = nullptr, *str = nullptr;
  std::size_t line_len = 0, line_str_len = 0, str_len = 0;
  Inflater* line_feed = nullptr;  // .debug_line compressed: bytes appear as inflated
};

// One attribute value of a DWARF 5 directory or file entry; a string where the
// form is one, else nullptr (numbers are read and dropped).
const char* read_form(Reader& r, std::uint64_t form, bool dwarf64, const Sections& sec) {
  switch (form) {
    case 0x08: return r.cstr();  // DW_FORM_string
    case 0x1f:                   // DW_FORM_line_strp
    case 0x0e: {                 // DW_FORM_strp
      std::uint64_t off = r.fixed(dwarf64 ? 8 : 4);
      const unsigned char* base = form == 0x1f ? sec.line_str : sec.str;
      std::size_t len = form == 0x1f ? sec.line_str_len : sec.str_len;
      return base && off < len ? reinterpret_cast<const char*>(base + off) : nullptr;
    }
    case 0x0f: r.uleb(); return nullptr;      // udata
    case 0x0b: r.fixed(1); return nullptr;    // data1
    case 0x05: r.fixed(2); return nullptr;    // data2
    case 0x06: r.fixed(4); return nullptr;    // data4
    case 0x07: r.fixed(8); return nullptr;    // data8
    case 0x1e: r.has(16) ? (void)(r.p += 16) : void(); return nullptr;  // data16 (MD5)
    case 0x09: {                               // block
      std::uint64_t n = r.uleb();
      if (r.has(n)) r.p += n;
      return nullptr;
    }
    default: r.ok = false; return nullptr;
  }
}

// Gives the pages of a read-only file mapping in [from, to) back (whole pages
// only): they leave the process's RSS and are read again if touched.
void release_file_pages(const void* from, const void* to) {
  std::uintptr_t pg = os_page_size();
  std::uintptr_t lo = align_up(reinterpret_cast<std::uintptr_t>(from), pg);
  std::uintptr_t hi = reinterpret_cast<std::uintptr_t>(to) & ~(pg - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

// Bytes of .debug_line (and of a symbol table) read between two releases of
// the pages behind.
// 64 KiB, the kernel's fault-around: reading libc6-dbg's compressed line table
// (1.3 MB inflated) for a report of `git status` raised the peak RSS by 1.3 MB
// with 256 KiB windows, by 0.34 MB with 64 KiB ones.
constexpr std::size_t kLineWindow = 64 * 1024;

// Runs every unit of .debug_line and gives each target (sorted by rel) the
// file and line of the row covering it: a row covers the addresses from its
// own up to the next row of its sequence.
void parse_line_tables(const Sections& sec, Target* targets, std::size_t ntargets) {
  Reader all{sec.line, sec.line + sec.line_len};
  const unsigned char* released = sec.line;
  std::vector<const char*> files;
  auto covers = [](const Target& t, std::uintptr_t v) { return t.rel < v; };
  while (all.ok && all.p < all.end) {
    if (static_cast<std::size_t>(all.p - released) > kLineWindow) {
      release_file_pages(released, all.p);
      released = all.p;
    }
    auto ready = [&](std::size_t more) {  // a compressed section: inflate that far
      return !sec.line_feed || inflate_upto(sec.line_feed, static_cast<std::size_t>(all.p - sec.line) + more);
    };
    if (!ready(12)) return;
    std::uint64_t unit_len = all.fixed(4);
    bool dwarf64 = unit_len == 0xffffffffu;
    if (dwarf64) unit_len = all.fixed(8);
    if (unit_len > sec.line_len || !ready(unit_len) || !all.has(unit_len) || unit_len < 2) return;
    Reader r{all.p, all.p + unit_len};
    all.p += unit_len;
    unsigned version = static_cast<unsigned>(r.fixed(2));
    if (version < 2 || version > 5) continue;
    unsigned address_size = 8;
    if (version >= 5) {
      address_size = static_cast<unsigned>(r.fixed(1));
      r.fixed(1);  // segment selector size
      // 1 to 8 bytes: DW_LNE_set_address of a bigger one would read past a
      // 64-bit address (tests/unit/track, test_line_table_address_size_over_8).
      if (address_size == 0 || address_size > 8) continue;
    }
    std::uint64_t header_len = r.fixed(dwarf64 ? 8 : 4);
    if (!r.has(header_len)) continue;
    const unsigned char* program = r.p + header_len;
    unsigned min_inst = static_cast<unsigned>(r.fixed(1));
    if (version >= 4) r.fixed(1);  // maximum operations per instruction (VLIW only)
    bool default_is_stmt = r.fixed(1) != 0;
    (void)default_is_stmt;
    auto line_base = static_cast<std::int8_t>(r.fixed(1));
    unsigned line_range = static_cast<unsigned>(r.fixed(1));
    unsigned opcode_base = static_cast<unsigned>(r.fixed(1));
    if (line_range == 0 || opcode_base == 0) continue;
    unsigned char std_lengths[256] = {};
    for (unsigned i = 1; i < opcode_base; ++i) std_lengths[i] = static_cast<unsigned char>(r.fixed(1));
    files.clear();
    if (version >= 5) {
      for (int table = 0; table < 2 && r.ok; ++table) {  // directories, then files
        unsigned nformats = static_cast<unsigned>(r.fixed(1));
        std::uint64_t formats[16][2];
        if (nformats > 16) {
          r.ok = false;
          break;
        }
        for (unsigned i = 0; i < nformats; ++i) formats[i][0] = r.uleb(), formats[i][1] = r.uleb();
        std::uint64_t count = r.uleb();
        for (std::uint64_t e = 0; e < count && r.ok; ++e) {
          const char* path = nullptr;
          for (unsigned i = 0; i < nformats; ++i) {
            const char* v = read_form(r, formats[i][1], dwarf64, sec);
            if (formats[i][0] == 1) path = v;  // DW_LNCT_path
          }
          if (table == 1) files.push_back(path ? path : "?");
        }
      }
    } else {
      while (r.ok && r.has(1) && *r.p) r.cstr();  // include directories
      if (r.has(1)) ++r.p;
      files.push_back("?");  // file numbers start at 1
      while (r.ok && r.has(1) && *r.p) {
        files.push_back(r.cstr());
        r.uleb(), r.uleb(), r.uleb();
      }
    }
    if (!r.ok) continue;
    r.p = program;
    std::uintptr_t addr = 0;
    std::uint64_t file = 1;
    std::int64_t line = 1;
    bool have_prev = false;  // a row of this sequence was emitted
    std::uintptr_t prev_addr = 0;
    const char* prev_file = nullptr;
    std::uint32_t prev_line = 0;
    // The first target at or above prev_addr: rows rise within a sequence, so
    // it only moves forward there (a binary search a row was most of the
    // report's time); searched again when the address goes back.
    std::size_t cursor = 0;
    auto emit = [&](bool end) __attribute__((always_inline)) {
      if (have_prev && addr > prev_addr) {
        if (cursor > 0 && targets[cursor - 1].rel >= prev_addr)
          cursor = static_cast<std::size_t>(std::lower_bound(targets, targets + ntargets, prev_addr, covers) - targets);
        while (cursor < ntargets && targets[cursor].rel < prev_addr) ++cursor;
        for (std::size_t j = cursor; j < ntargets && targets[j].rel < addr; ++j)
          targets[j].file = prev_file, targets[j].line = prev_line;
      }
      have_prev = !end;
      prev_addr = addr;
      prev_file = file < files.size() ? files[file] : "?";
      prev_line = static_cast<std::uint32_t>(line > 0 ? line : 0);
    };
    while (r.ok && r.p < r.end) {
      unsigned op = *r.p++;
      if (op >= opcode_base) {
        unsigned adj = op - opcode_base;
        addr += (adj / line_range) * min_inst;
        line += line_base + static_cast<int>(adj % line_range);
        emit(false);
        continue;
      }
      switch (op) {
        case 0: {  // extended
          std::uint64_t len = r.uleb();
          if (!r.has(len) || len == 0) {
            r.ok = false;
            break;
          }
          const unsigned char* next = r.p + len;
          unsigned sub = *r.p++;
          if (sub == 1) {  // end_sequence
            emit(true);
            addr = 0, file = 1, line = 1;
          } else if (sub == 2) {  // set_address
            addr = static_cast<std::uintptr_t>(r.fixed(address_size));
          }
          r.p = next;
          break;
        }
        case 1: emit(false); break;                                     // copy
        case 2: addr += r.uleb() * min_inst; break;                     // advance_pc
        case 3: line += r.sleb(); break;                                // advance_line
        case 4: file = r.uleb(); break;                                 // set_file
        case 8: addr += ((255 - opcode_base) / line_range) * min_inst; break;  // const_add_pc
        case 9: addr += r.fixed(2); break;                              // fixed_advance_pc
        default:
          for (unsigned i = 0; i < std_lengths[op]; ++i) r.uleb();  // set_column, isa, flags...
          break;
      }
    }
  }
}

// An ELF file of our class, mapped piece by piece: its whole length is
// reserved (PROT_NONE) and only what a pass reads -- the headers, then each
// section it asks for with need() -- is mapped from the file, each piece a
// mapping of its own.  The kernel maps up to 64 KiB of file pages around each
// page fault, but never beyond the mapping: with the whole file mapped, the
// exit-time report of `git status` faulted in ~200 KB for headers and tables
// (docs/design.md, "Tracking").
struct ElfFile {
  const unsigned char* base = nullptr;
  std::size_t len = 0;
  int fd = -1;
  const ElfW(Ehdr)* eh() const { return reinterpret_cast<const ElfW(Ehdr)*>(base); }
  const ElfW(Shdr)* sh() const { return reinterpret_cast<const ElfW(Shdr)*>(base + eh()->e_shoff); }
  // Maps bytes [off, off + size) of the file at base + off; false when they
  // are not all in the file or cannot be mapped.
  bool need(std::uint64_t off, std::uint64_t size) const {
    if (off > len || size > len - off) return false;
    if (size == 0) return true;
    std::uintptr_t pg = os_page_size();
    std::uint64_t lo = off & ~static_cast<std::uint64_t>(pg - 1), hi = align_up(off + size, pg);
    return mmap(const_cast<unsigned char*>(base) + lo, hi - lo, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd,
                static_cast<off_t>(lo)) != MAP_FAILED;
  }
  bool need(const ElfW(Shdr)& s) const { return need(s.sh_offset, s.sh_size); }
};

void unmap_elf(ElfFile* f) {
  if (f->base) munmap(const_cast<unsigned char*>(f->base), f->len);
  if (f->fd >= 0) close(f->fd);
  f->base = nullptr, f->fd = -1;
}

bool map_elf(const char* path, ElfFile* f) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < static_cast<off_t>(sizeof(ElfW(Ehdr)))) {
    close(fd);
    return false;
  }
  std::size_t len = static_cast<std::size_t>(st.st_size);
  void* map = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map == MAP_FAILED) {
    close(fd);
    return false;
  }
  f->base = static_cast<const unsigned char*>(map), f->len = len, f->fd = fd;
  auto* eh = f->eh();
  bool ok = f->need(0, sizeof(ElfW(Ehdr))) && std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 &&
            eh->e_ident[EI_CLASS] == (sizeof(void*) == 8 ? ELFCLASS64 : ELFCLASS32) && eh->e_shoff != 0 &&
            eh->e_shstrndx < eh->e_shnum && f->need(eh->e_shoff, eh->e_shnum * sizeof(ElfW(Shdr))) &&
            f->need(f->sh()[eh->e_shstrndx]);
  if (!ok) unmap_elf(f);
  return ok;
}

const char* keep_string(const char* s);

// --- compressed debug sections (SHF_COMPRESSED with zlib or zstd, or GNU .zdebug_*)
//
// Neither library is linked: libz.so.1 (on every Debian system: dpkg needs
// it) and libzstd.so.1 (apt, systemd) are loaded with dlopen by the first
// report that meets a section compressed their way, and only when libcalloc
// was built with their header at hand (zlib.h; zstd.h, configure's
// CALLOC_TRACK_ZSTD): a program that never writes a report, or whose debug
// sections are not compressed, maps neither.  A compressed .debug_line is
// decompressed as the line-table reader asks for it, into a mapping whose
// pages are released behind the reader (libc6-dbg's is 1.3 MB inflated); the
// string sections it refers to are decompressed whole.  A line table this
// build cannot read (a method without its header or library) is left out,
// and the leak report says so (notes, below); symbols still come from the
// symbol table.
#if CALLOC_TRACK_ZLIB
struct Zlib {
  decltype(&inflateInit_) init = nullptr;
  decltype(&inflate) run = nullptr;
  decltype(&inflateEnd) end = nullptr;
};

// Loaded once, by pthread_once: a function-local static's guard is in the C++
// runtime, which a C program does not have (src/cxxrt.h++).
Zlib g_zlib;
pthread_once_t g_zlib_once = PTHREAD_ONCE_INIT;
void load_zlib() {
  void* lib = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return;
  g_zlib.init = reinterpret_cast<decltype(&inflateInit_)>(dlsym(lib, "inflateInit_"));
  g_zlib.run = reinterpret_cast<decltype(&inflate)>(dlsym(lib, "inflate"));
  g_zlib.end = reinterpret_cast<decltype(&inflateEnd)>(dlsym(lib, "inflateEnd"));
  if (!g_zlib.run || !g_zlib.end) g_zlib.init = nullptr;
}

const Zlib* zlib() {
  pthread_once(&g_zlib_once, load_zlib);
  return g_zlib.init ? &g_zlib : nullptr;
}
#endif

#if CALLOC_TRACK_ZSTD
struct Zstd {
  decltype(&ZSTD_createDStream) create = nullptr;
  decltype(&ZSTD_initDStream) init = nullptr;
  decltype(&ZSTD_decompressStream) run = nullptr;
  decltype(&ZSTD_freeDStream) free = nullptr;
  decltype(&ZSTD_isError) is_error = nullptr;
};

Zstd g_zstd;
pthread_once_t g_zstd_once = PTHREAD_ONCE_INIT;
void load_zstd() {
  void* lib = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return;
  g_zstd.init = reinterpret_cast<decltype(&ZSTD_initDStream)>(dlsym(lib, "ZSTD_initDStream"));
  g_zstd.run = reinterpret_cast<decltype(&ZSTD_decompressStream)>(dlsym(lib, "ZSTD_decompressStream"));
  g_zstd.free = reinterpret_cast<decltype(&ZSTD_freeDStream)>(dlsym(lib, "ZSTD_freeDStream"));
  g_zstd.is_error = reinterpret_cast<decltype(&ZSTD_isError)>(dlsym(lib, "ZSTD_isError"));
  if (g_zstd.init && g_zstd.run && g_zstd.free && g_zstd.is_error)
    g_zstd.create = reinterpret_cast<decltype(&ZSTD_createDStream)>(dlsym(lib, "ZSTD_createDStream"));
}

const Zstd* zstd() {
  pthread_once(&g_zstd_once, load_zstd);
  return g_zstd.create ? &g_zstd : nullptr;
}
#endif

// Why a compressed section cannot be read, for the report's note; nullptr
// when it can (method: ELFCOMPRESS_*).
const char* method_unreadable(std::uint32_t method) {
  switch (method) {
    case ELFCOMPRESS_ZLIB:
#if CALLOC_TRACK_ZLIB
      return zlib() ? nullptr : "compressed with zlib, and libz.so.1 cannot be loaded";
#else
      return "compressed with zlib, which this build cannot read (built without zlib.h)";
#endif
    case ELFCOMPRESS_ZSTD:
#if CALLOC_TRACK_ZSTD
      return zstd() ? nullptr : "compressed with zstd, and libzstd.so.1 cannot be loaded";
#else
      return "compressed with zstd, which this build cannot read (built without zstd.h: libzstd-dev)";
#endif
    default:
      return "compressed with an unknown method";
  }
}

// One compressed section being decompressed into `out` (size bytes,
// os_map'ed), as far as `done`.
struct Inflater {
  std::uint32_t method = 0;  // ELFCOMPRESS_ZLIB or ELFCOMPRESS_ZSTD
#if CALLOC_TRACK_ZLIB
  z_stream zs{};
#endif
#if CALLOC_TRACK_ZSTD
  ZSTD_DStream* zds = nullptr;
#endif
  const unsigned char* in = nullptr;  // the compressed bytes, in_len of them, read up to in_pos
  std::size_t in_len = 0, in_pos = 0;
  unsigned char* out = nullptr;
  std::size_t size = 0, done = 0;
  const unsigned char* in_released = nullptr;  // compressed input before this is released
  bool ok = false;
  bool ended = false;  // the compressed stream ended
};

// Starts decompressing a compressed section's data (method's stream at in,
// in_len bytes) whose decompressed size is size.
bool inflater_open(Inflater* z, std::uint32_t method, const unsigned char* in, std::size_t in_len, std::size_t size) {
  if (method_unreadable(method) || size == 0 || size > (std::size_t{1} << 32)) return false;
  z->out = static_cast<unsigned char*>(os_map(align_up(size, os_page_size())));
  if (!z->out) return false;
  z->method = method;
  z->size = size;
  z->in = z->in_released = in;
  z->in_len = in_len;
#if CALLOC_TRACK_ZLIB
  if (method == ELFCOMPRESS_ZLIB) {
    z->zs.next_in = const_cast<unsigned char*>(in);
    z->zs.avail_in = static_cast<uInt>(in_len);
    z->ok = in_len <= UINT32_MAX && zlib()->init(&z->zs, ZLIB_VERSION, static_cast<int>(sizeof(z_stream))) == Z_OK;
  }
#endif
#if CALLOC_TRACK_ZSTD
  if (method == ELFCOMPRESS_ZSTD) {
    z->zds = zstd()->create();
    z->ok = z->zds && !zstd()->is_error(zstd()->init(z->zds));
    if (!z->ok && z->zds) {
      zstd()->free(z->zds);
      z->zds = nullptr;
    }
  }
#endif
  if (!z->ok) {
    os_unmap(z->out, align_up(size, os_page_size()));
    z->out = nullptr;
  }
  return z->ok;
}

// One step: up to `step` more bytes into out + done; false on an error.
bool inflate_step(Inflater* z, std::size_t step) {
#if CALLOC_TRACK_ZLIB
  if (z->method == ELFCOMPRESS_ZLIB) {
    z->zs.next_out = z->out + z->done;
    z->zs.avail_out = static_cast<uInt>(step);
    int rc = zlib()->run(&z->zs, Z_NO_FLUSH);
    z->done += step - z->zs.avail_out;
    z->in_pos = static_cast<std::size_t>(z->zs.next_in - z->in);
    z->ended = rc == Z_STREAM_END;
    return rc == Z_OK || rc == Z_STREAM_END;
  }
#endif
#if CALLOC_TRACK_ZSTD
  if (z->method == ELFCOMPRESS_ZSTD) {
    ZSTD_outBuffer o{z->out + z->done, step, 0};
    ZSTD_inBuffer i{z->in, z->in_len, z->in_pos};
    std::size_t rc = zstd()->run(z->zds, &o, &i);
    bool progress = o.pos > 0 || i.pos > z->in_pos;
    z->done += o.pos;
    z->in_pos = i.pos;
    if (zstd()->is_error(rc)) return false;
    // 0: a frame ended and was flushed; the section may hold more frames.
    z->ended = rc == 0 && i.pos == i.size;
    return progress || z->ended;  // else stuck: the data is truncated
  }
#endif
  (void)step;
  return false;
}

bool inflate_upto(Inflater* z, std::size_t upto) {
  if (upto > z->size) upto = z->size;
  while (z->ok && z->done < upto) {
    std::size_t step = z->size - z->done < kLineWindow ? z->size - z->done : kLineWindow;
    std::size_t before = z->in_pos;
    if (!inflate_step(z, step)) z->ok = false;
    // The compressed bytes read are not read again: their file pages go.
    if (z->in_pos - static_cast<std::size_t>(z->in_released - z->in) > kLineWindow) {
      release_file_pages(z->in_released, z->in + before);
      z->in_released = z->in + before;
    }
    if (z->ended) {
      if (z->done < upto) z->ok = false;
      break;
    }
  }
  return z->done >= upto;
}

void inflater_close(Inflater* z) {
  if (!z->out) return;
#if CALLOC_TRACK_ZLIB
  if (z->method == ELFCOMPRESS_ZLIB) zlib()->end(&z->zs);
#endif
#if CALLOC_TRACK_ZSTD
  if (z->method == ELFCOMPRESS_ZSTD) zstd()->free(z->zds);
#endif
  os_unmap(z->out, align_up(z->size, os_page_size()));
  z->out = nullptr;
}

// A compressed section's data, decompressed size and method: the ELF
// compression header (ch_type), or the GNU .zdebug header ("ZLIB", 8-byte
// big-endian size).
bool compressed_data(const unsigned char* p, std::size_t len, bool gnu, const unsigned char** data,
                     std::size_t* data_len, std::size_t* size, std::uint32_t* method) {
  if (gnu) {
    if (len < 12 || std::memcmp(p, "ZLIB", 4) != 0) return false;
    std::uint64_t v = 0;
    for (int i = 4; i < 12; ++i) v = v << 8 | p[i];
    *data = p + 12, *data_len = len - 12, *size = static_cast<std::size_t>(v), *method = ELFCOMPRESS_ZLIB;
    return true;
  }
  ElfW(Chdr) ch;
  if (len < sizeof ch) return false;
  std::memcpy(&ch, p, sizeof ch);
  *data = p + sizeof ch, *data_len = len - sizeof ch, *size = static_cast<std::size_t>(ch.ch_size);
  *method = ch.ch_type;
  return true;
}

// Notes for the leak report: modules whose line table could not be read
// because of how it is compressed (g_sym_lock).  At most kNotes, each module
// once.
constexpr unsigned kNotes = 8;
struct Note {
  char module[256];
  const char* why;  // a static string
};
Note g_notes[kNotes];
unsigned g_nnotes;

void add_note(const char* module, const char* why) {
  for (unsigned i = 0; i < g_nnotes; ++i)
    if (std::strcmp(g_notes[i].module, module) == 0) return;
  if (g_nnotes == kNotes) return;
  std::snprintf(g_notes[g_nnotes].module, sizeof g_notes[0].module, "%s", module);
  g_notes[g_nnotes++].why = why;
}

// The .debug_line pass of one module (its mapping at base, len bytes); false
// when the file has no line table it can read (none, or compressed with a
// method it does not know).
bool module_lines(const ElfFile& f, Target* targets, std::size_t n, const char** unreadable) {
  const unsigned char* base = f.base;
  std::size_t len = f.len;
  auto* eh = f.eh();
  auto* sh = f.sh();
  if (eh->e_shstrndx >= eh->e_shnum) return false;
  const ElfW(Shdr)& names = sh[eh->e_shstrndx];
  if (names.sh_offset + names.sh_size > len) return false;
  Sections sec;
  Inflater zline, zstrs[2];
  unsigned nz = 0;
  bool elf_has_line_str = false;
  for (unsigned i = 0; i < eh->e_shnum; ++i)
    if (sh[i].sh_name < names.sh_size && sh[i].sh_type != SHT_NOBITS) {
      const char* name = reinterpret_cast<const char*>(base + names.sh_offset + sh[i].sh_name);
      if (std::strcmp(name, ".debug_line_str") == 0 || std::strcmp(name, ".zdebug_line_str") == 0) elf_has_line_str = true;
    }
  for (unsigned i = 0; i < eh->e_shnum; ++i) {
    if (sh[i].sh_name >= names.sh_size || sh[i].sh_type == SHT_NOBITS || sh[i].sh_offset + sh[i].sh_size > len)
      continue;
    const char* name = reinterpret_cast<const char*>(base + names.sh_offset + sh[i].sh_name);
    bool gnu = std::strncmp(name, ".zdebug_", 8) == 0;
    if (gnu) name += 2;  // ".zdebug_line" -> "debug_line", compared below without the dot
    else if (name[0] == '.') name += 1;
    else continue;
    const unsigned char* data = base + sh[i].sh_offset;
    std::size_t size = sh[i].sh_size;
    bool compressed = gnu || (sh[i].sh_flags & SHF_COMPRESSED);
    const unsigned char* zdata = nullptr;
    std::size_t zlen = 0;
    bool is_line = std::strcmp(name, "debug_line") == 0;
    bool is_line_str = std::strcmp(name, "debug_line_str") == 0, is_str = std::strcmp(name, "debug_str") == 0;
    if (!is_line && !is_line_str && !is_str) continue;
    if (!f.need(sh[i])) continue;
    // A compressed .debug_str (megabytes inflated) only for line tables that
    // name files through it: not when .debug_line_str exists (DWARF 5 line
    // tables use that one; DWARF 2-4 ones have the names inline).
    if (compressed && is_str && elf_has_line_str) continue;
    if (compressed) {
      std::uint32_t method = 0;
      if (!compressed_data(data, size, gnu, &zdata, &zlen, &size, &method)) continue;
      if (const char* why = method_unreadable(method)) {
        if (is_line) *unreadable = why;
        continue;
      }
      Inflater* z = is_line ? &zline : nz < 2 ? &zstrs[nz++] : nullptr;
      if (!z || !inflater_open(z, method, zdata, zlen, size)) continue;
      // String sections are read at random: inflated whole.
      if (!is_line && !inflate_upto(z, size)) continue;
      data = z->out;
      if (is_line) sec.line_feed = &zline;
    }
    if (is_line) sec.line = data, sec.line_len = size;
    if (is_line_str) sec.line_str = data, sec.line_str_len = size;
    if (is_str) sec.str = data, sec.str_len = size;
  }
  if (sec.line) parse_line_tables(sec, targets, n);
  // File names point into the sections: copied before they are unmapped.
  for (std::size_t i = 0; i < n; ++i) targets[i].file = keep_string(targets[i].file);
  inflater_close(&zline);
  for (unsigned i = 0; i < nz; ++i) inflater_close(&zstrs[i]);
  return sec.line != nullptr;
}

// The symbol pass of one module: each target gets the function symbol with
// the highest address among those containing it (.symtab, else .dynsym), so
// static functions are named too.  The table's pages are released after.
void module_symbols(const ElfFile& f, Target* targets, std::size_t n) {
  const unsigned char* base = f.base;
  std::size_t len = f.len;
  auto* eh = f.eh();
  auto* sh = f.sh();
  const ElfW(Shdr)* table = nullptr;
  for (unsigned want : {static_cast<unsigned>(SHT_SYMTAB), static_cast<unsigned>(SHT_DYNSYM)}) {
    for (unsigned i = 0; i < eh->e_shnum && !table; ++i)
      if (sh[i].sh_type == want && sh[i].sh_link < eh->e_shnum) table = &sh[i];
    if (table) break;
  }
  if (!table || table->sh_offset + table->sh_size > len) return;
  const ElfW(Shdr)& strs = sh[table->sh_link];
  if (strs.sh_offset + strs.sh_size > len || !f.need(*table) || !f.need(strs)) return;
  auto* syms = reinterpret_cast<const ElfW(Sym)*>(base + table->sh_offset);
  std::size_t count = table->sh_size / sizeof(ElfW(Sym));
  auto below = [](const Target& t, std::uintptr_t v) { return t.rel < v; };
  constexpr std::size_t kWindowSyms = kLineWindow / sizeof(ElfW(Sym));
  for (std::size_t i = 0; i < count; ++i) {
    if (i % kWindowSyms == 0 && i) release_file_pages(syms + (i - kWindowSyms), syms + i);
    unsigned type = ELF64_ST_TYPE(syms[i].st_info);
    if ((type != STT_FUNC && type != STT_GNU_IFUNC) || syms[i].st_shndx == SHN_UNDEF ||
        syms[i].st_name >= strs.sh_size)
      continue;
    std::uintptr_t lo = syms[i].st_value, hi = lo + (syms[i].st_size ? syms[i].st_size : 1);
    for (Target* t = std::lower_bound(targets, targets + n, lo, below); t < targets + n && t->rel < hi; ++t) {
      // The innermost symbol; among aliases (same address), a global one
      // (__libc_start_main rather than a local __libc_start_main_alias_2).
      bool global = ELF64_ST_BIND(syms[i].st_info) != STB_LOCAL;
      if (t->has_sym && (t->sym_value > lo || (t->sym_value == lo && (t->sym_global || !global)))) continue;
      t->has_sym = true;
      t->sym_global = global;
      t->sym_value = lo;
      t->sym_name = reinterpret_cast<const char*>(base + strs.sh_offset + syms[i].st_name);
    }
  }
  release_file_pages(syms, syms + count);
}

// --- the symbol cache ---------------------------------------------------------------

pthread_mutex_t g_sym_lock = PTHREAD_MUTEX_INITIALIZER;
constexpr unsigned kSymModules = 64;  // modules per batch (more: left unnamed)
SymResult* g_syms;  // sorted by addr
std::size_t g_nsyms, g_syms_bytes;
char* g_strs;  // the current string chunk
std::size_t g_strs_left;
constexpr std::size_t kStrChunk = 64 * 1024;

// A copy of s (at most 511 bytes kept) in the string chunks; nullptr for nullptr.
const char* keep_string(const char* s) {
  if (!s) return nullptr;
  std::size_t n = strnlen(s, 511);
  if (g_strs_left < n + 1) {
    auto* chunk = static_cast<char*>(os_map(kStrChunk));
    if (!chunk) return nullptr;
    g_strs = chunk, g_strs_left = kStrChunk;
  }
  char* out = g_strs;
  std::memcpy(out, s, n);
  out[n] = 0;
  g_strs += n + 1, g_strs_left -= n + 1;
  return out;
}

const SymResult* find_result(std::uintptr_t a) {
  const SymResult* it = std::lower_bound(g_syms, g_syms + g_nsyms, a,
                                         [](const SymResult& r, std::uintptr_t v) { return r.addr < v; });
  return it < g_syms + g_nsyms && it->addr == a ? it : nullptr;
}

// --- module files and their separate debug files ---------------------------------

// The section called name (with data in the file), or nullptr.
const ElfW(Shdr)* elf_section(const ElfFile& f, const char* name) {
  const ElfW(Shdr)* sh = f.sh();
  const ElfW(Shdr)& names = sh[f.eh()->e_shstrndx];
  for (unsigned i = 0; i < f.eh()->e_shnum; ++i) {
    if (sh[i].sh_type == SHT_NOBITS || sh[i].sh_name >= names.sh_size || sh[i].sh_offset + sh[i].sh_size > f.len ||
        names.sh_offset + names.sh_size > f.len)
      continue;
    if (strncmp(reinterpret_cast<const char*>(f.base + names.sh_offset + sh[i].sh_name), name, names.sh_size - sh[i].sh_name) == 0)
      return &sh[i];
  }
  return nullptr;
}

bool has_symtab(const ElfFile& f) {
  for (unsigned i = 0; i < f.eh()->e_shnum; ++i)
    if (f.sh()[i].sh_type == SHT_SYMTAB) return true;
  return false;
}

bool has_line_table(const ElfFile& f) {
  return elf_section(f, ".debug_line") != nullptr || elf_section(f, ".zdebug_line") != nullptr;
}

// The GNU build ID, as hex, into hex (2 * 64 + 1 bytes); its length in bytes, 0 when none.
std::size_t build_id(const ElfFile& f, char* hex) {
  for (unsigned i = 0; i < f.eh()->e_shnum; ++i) {
    const ElfW(Shdr)& s = f.sh()[i];
    if (s.sh_type != SHT_NOTE || !f.need(s)) continue;
    std::size_t n;
    const unsigned char* id = elf_notes_build_id(f.base + s.sh_offset, s.sh_size, &n);
    if (id && n > 1 && n <= 64) {
      for (unsigned k = 0; k < n; ++k) std::snprintf(hex + 2 * k, 3, "%02x", id[k]);
      return n;
    }
  }
  return 0;
}

// The CRC-32 of a file (the one .gnu_debuglink records), read in pieces (not
// mapped: a debug file is megabytes).  False when it cannot be read.
bool file_crc32(const char* path, std::uint32_t* out) {
  std::uint32_t table[256];
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  constexpr std::size_t kBuf = 64 * 1024;
  auto* buf = static_cast<unsigned char*>(os_map(kBuf));
  if (!buf) {
    close(fd);
    return false;
  }
  std::uint32_t crc = 0xffffffffu;
  ssize_t r;
  while ((r = read(fd, buf, kBuf)) > 0)
    for (ssize_t i = 0; i < r; ++i) crc = table[(crc ^ buf[i]) & 0xff] ^ (crc >> 8);
  os_unmap(buf, kBuf);
  close(fd);
  *out = ~crc;
  return r == 0;
}

// Where distributions put a module's debug information when they strip it
// (gdb's rules): /usr/lib/debug/.build-id/xx/yyyy.debug named by the build ID,
// checked to carry the same ID; else the file .gnu_debuglink names, next to the
// module, in its .debug directory, or under /usr/lib/debug, checked by its CRC.
bool open_debug_file(const char* path, const ElfFile& module, ElfFile* out) {
  char id[2 * 64 + 1], candidate[768];
  if (std::size_t n = build_id(module, id)) {
    std::snprintf(candidate, sizeof candidate, "/usr/lib/debug/.build-id/%.2s/%s.debug", id, id + 2);
    if (map_elf(candidate, out)) {
      char other[2 * 64 + 1];
      if (build_id(*out, other) == n && std::strcmp(id, other) == 0) return true;
      unmap_elf(out);
    }
  }
  const ElfW(Shdr)* link = elf_section(module, ".gnu_debuglink");
  if (!link || link->sh_size < 8 || !module.need(*link)) return false;
  const char* name = reinterpret_cast<const char*>(module.base + link->sh_offset);
  std::size_t name_len = strnlen(name, link->sh_size);
  if (name_len == 0 || align_up(name_len + 1, 4) + 4 > link->sh_size || std::strchr(name, '/')) return false;
  std::uint32_t want;
  std::memcpy(&want, module.base + link->sh_offset + align_up(name_len + 1, 4), 4);
  const char* slash = std::strrchr(path, '/');
  int dir_len = slash ? static_cast<int>(slash - path) : 0;
  const char* forms[] = {"%.*s/%s", "%.*s/.debug/%s", "/usr/lib/debug%.*s/%s"};
  for (const char* form : forms) {
    if (std::snprintf(candidate, sizeof candidate, form, dir_len, path, name) >= static_cast<int>(sizeof candidate) ||
        std::strcmp(candidate, path) == 0)
      continue;
    std::uint32_t crc = 0;  // (GCC 12 at -O1 with -fsanitize=thread: "may be used uninitialized")
    if (file_crc32(candidate, &crc) && crc == want && map_elf(candidate, out)) return true;
  }
  return false;
}

// Resolves one module's targets: maps its file (and its separate debug file
// when the module has no symbol table or no line table of its own), runs the
// two passes, copies what they found, unmaps them.
// `loaded`: the module is loaded now, and dladdr has named its addresses from
// its dynamic symbols already (a module unloaded since has only its file).
void resolve_module(const char* path, bool* relative, Target* targets, std::size_t n, SymResult* results,
                    bool loaded = true) {
  ElfFile mod, dbg;
  if (!map_elf(path, &mod)) return;
  *relative = mod.eh()->e_type == ET_DYN;
  if (!*relative)  // ET_EXEC: symbol values and line rows are absolute addresses
    for (std::size_t i = 0; i < n; ++i) targets[i].rel += results[targets[i].result].fbase;
  // Not for sampled profiles: reading libc6-dbg's file (symbol table, 1.3 MB
  // of compressed line tables) raised the exit-time peak RSS of `git status`
  // by ~0.6 MB, against sampling's budget of 1 % (docs/design.md, "Tracking").
  bool mod_symtab = has_symtab(mod);
  if ((!mod_symtab || !has_line_table(mod)) && g_track_mode != TrackMode::sample) open_debug_file(path, mod, &dbg);
  // A module with only .dynsym (libc, stripped programs): prepare_symbols
  // named each address with dladdr already, which reads the same table in
  // the loaded image; reading it again from the file mapped ~110 KiB of
  // libc's file pages (.dynsym, .dynstr) at every report's peak.
  if (mod_symtab) {
    module_symbols(mod, targets, n);
  } else if (dbg.base && has_symtab(dbg)) {
    module_symbols(dbg, targets, n);
  } else if (!loaded) {
    module_symbols(mod, targets, n);  // its .dynsym
  }
  const char* unreadable = nullptr;
  bool lines = module_lines(mod, targets, n, &unreadable);
  if (!lines && dbg.base) lines = module_lines(dbg, targets, n, &unreadable);
  if (!lines && unreadable) add_note(path, unreadable);
  for (std::size_t i = 0; i < n; ++i) {
    SymResult& r = results[targets[i].result];
    if (targets[i].has_sym) {
      // Without a symbol version ("__libc_start_main@@GLIBC_2.34" in .symtab).
      char name[512];
      std::snprintf(name, sizeof name, "%.*s", static_cast<int>(std::strcspn(targets[i].sym_name, "@")),
                    targets[i].sym_name);
      r.raw_name = keep_string(name);
      r.start = (*relative ? r.fbase : 0) + targets[i].sym_value;
    }
    if (targets[i].file) {
      r.file = targets[i].file;  // copied by module_lines
      r.line = targets[i].line;
    }
  }
  unmap_elf(&dbg);
  unmap_elf(&mod);
}

// Symbolises every address of addrs[0..n) not yet in g_syms (they may repeat).
// Allocates (the module files' names vector; demangling happens later), so
// never from malloc: report writers and AllocationTracker only.
void prepare_symbols(void* const* addrs, std::size_t n) {
  if (n == 0) return;
  track_lock(&g_sym_lock);
  std::size_t bytes = align_up(n * (sizeof(SymResult) + sizeof(Target)), os_page_size());
  auto* results = static_cast<SymResult*>(os_map(bytes));
  if (!results) {
    track_unlock(&g_sym_lock);
    return;
  }
  auto* targets = reinterpret_cast<Target*>(results + n);
  std::size_t k = 0;
  for (std::size_t i = 0; i < n; ++i) {
    auto a = reinterpret_cast<std::uintptr_t>(addrs[i]);
    if (!find_result(a)) results[k++].addr = a;
  }
  std::sort(results, results + k, [](const SymResult& x, const SymResult& y) { return x.addr < y.addr; });
  k = static_cast<std::size_t>(std::unique(results, results + k, [](const SymResult& x, const SymResult& y) {
                                 return x.addr == y.addr;
                               }) - results);
  // A return address: the call is the byte before it (a noreturn call may be
  // the last instruction of its function).
  char paths[kSymModules][256];
  std::uintptr_t bases[kSymModules];
  unsigned nmodules = 0;
  for (std::size_t i = 0; i < k; ++i) {
    SymResult& r = results[i];
    std::uintptr_t look = r.addr ? r.addr - 1 : 0;
    Dl_info dl;
    if (!dladdr(reinterpret_cast<void*>(look), &dl) || !dl.dli_fbase) continue;
    r.fbase = reinterpret_cast<std::uintptr_t>(dl.dli_fbase);
    r.module = keep_string(dl.dli_fname && *dl.dli_fname ? dl.dli_fname : "[main]");
    if (dl.dli_sname) {  // the dynamic symbol, until the module's own tables say better
      r.raw_name = keep_string(dl.dli_sname);
      r.start = reinterpret_cast<std::uintptr_t>(dl.dli_saddr);
    }
    unsigned m = 0;
    while (m < nmodules && bases[m] != r.fbase) ++m;
    if (m == nmodules && nmodules < kSymModules) {
      bases[m] = r.fbase;
      std::snprintf(paths[m], sizeof paths[m], "%s", dl.dli_fname && *dl.dli_fname ? dl.dli_fname : "/proc/self/exe");
      ++nmodules;
    }
  }
  for (unsigned m = 0; m < nmodules; ++m) {
    std::size_t nt = 0;
    for (std::size_t i = 0; i < k; ++i)
      if (results[i].fbase == bases[m]) targets[nt++] = Target{results[i].addr - 1 - bases[m], i, 0, nullptr, false, false, nullptr, 0};
    bool relative = true;
    resolve_module(paths[m], &relative, targets, nt, results);  // targets stay sorted: results are
  }
  // Merge into the cache.
  std::size_t total = g_nsyms + k;
  std::size_t merged_bytes = align_up(total * sizeof(SymResult), os_page_size());
  auto* merged = static_cast<SymResult*>(os_map(merged_bytes));
  if (merged) {
    std::merge(g_syms, g_syms + g_nsyms, results, results + k, merged,
               [](const SymResult& x, const SymResult& y) { return x.addr < y.addr; });
    if (g_syms) os_unmap(g_syms, g_syms_bytes);
    g_syms = merged, g_nsyms = total, g_syms_bytes = merged_bytes;
  }
  os_unmap(results, bytes);
  track_unlock(&g_sym_lock);
}

struct Symbol {
  char function[512];  // demangled, "" when unknown
  const char* file;    // source file, nullptr when unknown
  unsigned line;
  std::uintptr_t offset;
  char module[256];
  std::uintptr_t module_offset;
  bool unloaded = false;  // the module was unloaded before the report (named from its file)
  bool gone = false;      // ... and its file could not be read
};

// --- frames of objects unloaded before the report -----------------------------------
//
// A site's frames are named through the objects of its generation
// (track-modules.c++): one that is not loaded now (a library closed with
// dlclose; another may lie at its addresses) is named from its file, by path
// and offset, and kept apart from g_syms (whose keys are addresses, which the
// object loaded there now owns).  Under g_sym_lock, sorted by (object, addr).
struct StaleResult {
  const LoadedObject* obj;
  SymResult r;
  bool gone;  // the file could not be read
};
StaleResult* g_stale;
std::size_t g_nstale, g_stale_bytes;
// The log's generation when the report began (modules_generation, under
// g_report_lock): an object whose last generation is older is not loaded now.
// 0: unknown (Valgrind mode, the log empty): every frame is named by what is
// loaded now.
std::uint32_t g_report_generation;

bool stale_less(const StaleResult& x, const StaleResult& y) {
  return x.obj != y.obj ? std::less<const LoadedObject*>()(x.obj, y.obj) : x.r.addr < y.r.addr;
}

// The object that held a frame of a site of generation gen, when it is not
// loaded now (nullptr: the frame is named by what is loaded at its address).
const LoadedObject* unloaded_object(std::uint32_t gen, const void* ip) {
  if (g_report_generation == 0 || gen == 0 || gen >= g_report_generation) return nullptr;
  const LoadedObject* o = modules_object_at(gen, reinterpret_cast<std::uintptr_t>(ip));
  if (!o || o->path[0] == 0 || o->last.load(std::memory_order_relaxed) >= g_report_generation) return nullptr;
  return o;
}

const StaleResult* find_stale(const LoadedObject* o, std::uintptr_t a) {
  StaleResult key{};
  key.obj = o;
  key.r.addr = a;
  const StaleResult* it = std::lower_bound(g_stale, g_stale + g_nstale, key, stale_less);
  return it < g_stale + g_nstale && it->obj == o && it->r.addr == a ? it : nullptr;
}

// Names the frames fr[0..n) of unloaded objects that g_stale lacks, each
// object's from its file (a copy of prepare_symbols' merge).
void prepare_stale(StaleResult* fr, std::size_t n) {
  if (n == 0) return;
  track_lock(&g_sym_lock);
  std::sort(fr, fr + n, stale_less);
  std::size_t k = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (find_stale(fr[i].obj, fr[i].r.addr)) continue;
    if (k && fr[k - 1].obj == fr[i].obj && fr[k - 1].r.addr == fr[i].r.addr) continue;
    fr[k++] = fr[i];
  }
  std::size_t tbytes = align_up(k * sizeof(Target) + k * sizeof(SymResult), os_page_size());
  auto* results = static_cast<SymResult*>(os_map(tbytes));
  if (!results) {
    track_unlock(&g_sym_lock);
    return;
  }
  auto* targets = reinterpret_cast<Target*>(results + k);
  for (std::size_t i = 0; i < k;) {
    const LoadedObject* o = fr[i].obj;
    std::size_t j = i;
    const char* module = keep_string(o->path);
    for (; j < k && fr[j].obj == o; ++j) {
      results[j] = SymResult{};
      results[j].addr = fr[j].r.addr;
      results[j].fbase = o->base;
      results[j].module = module;
      targets[j - i] = Target{fr[j].r.addr - 1 - o->base, j, 0, nullptr, false, false, nullptr, 0};
    }
    int fd = open(o->path, O_RDONLY | O_CLOEXEC);
    bool gone = fd < 0;
    if (fd >= 0) close(fd);
    bool relative = true;
    if (!gone) resolve_module(o->path, &relative, targets, j - i, results, false);
    for (std::size_t m = i; m < j; ++m) {
      fr[m].r = results[m];
      fr[m].gone = gone;
    }
    i = j;
  }
  os_unmap(results, tbytes);
  std::size_t total = g_nstale + k;
  std::size_t merged_bytes = align_up(total * sizeof(StaleResult), os_page_size());
  auto* merged = static_cast<StaleResult*>(os_map(merged_bytes));
  if (merged) {
    std::merge(g_stale, g_stale + g_nstale, fr, fr + k, merged, stale_less);
    if (g_stale) os_unmap(g_stale, g_stale_bytes);
    g_stale = merged, g_nstale = total, g_stale_bytes = merged_bytes;
  }
  track_unlock(&g_sym_lock);
}

// What prepare_symbols found for addr (which it must have been given).
void symbolize(const void* addr, Symbol* out) {
  out->function[0] = 0;
  out->file = nullptr;
  out->line = 0;
  out->module[0] = 0;
  out->offset = out->module_offset = 0;
  auto a = reinterpret_cast<std::uintptr_t>(addr);
  track_lock(&g_sym_lock);
  const SymResult* r = find_result(a);
  SymResult copy{};
  if (r) copy = *r;
  track_unlock(&g_sym_lock);
  if (!r || !copy.fbase) return;
  std::snprintf(out->module, sizeof out->module, "%s", copy.module ? copy.module : "?");
  out->module_offset = a - copy.fbase;
  out->file = copy.file;  // the string chunks are never unmapped
  out->line = copy.line;
  if (!copy.raw_name) return;
  char* demangled = cxx_demangle(copy.raw_name);  // null in a C program
  std::snprintf(out->function, sizeof out->function, "%s", demangled ? demangled : copy.raw_name);
  std::free(demangled);
  out->offset = a - copy.start;
}

// A frame of a site of generation gen: through its unloaded object's file
// when prepare_stale named it, else symbolize.
void symbolize_frame(std::uint32_t gen, const void* addr, Symbol* out) {
  const LoadedObject* o = unloaded_object(gen, addr);
  if (!o) return symbolize(addr, out);
  auto a = reinterpret_cast<std::uintptr_t>(addr);
  track_lock(&g_sym_lock);
  const StaleResult* r = find_stale(o, a);
  StaleResult copy{};
  if (r) copy = *r;
  track_unlock(&g_sym_lock);
  out->function[0] = 0;
  out->file = nullptr;
  out->line = 0;
  out->offset = 0;
  std::snprintf(out->module, sizeof out->module, "%s", o->path);
  out->module_offset = a - o->base;
  out->unloaded = true;
  out->gone = r && copy.gone;
  if (!r) return;
  out->file = copy.r.file;
  out->line = copy.r.line;
  if (!copy.r.raw_name) return;
  char* demangled = cxx_demangle(copy.r.raw_name);
  std::snprintf(out->function, sizeof out->function, "%s", demangled ? demangled : copy.r.raw_name);
  std::free(demangled);
  out->offset = a - copy.r.start;
}

// --- report writing ---------------------------------------------------------------

struct SiteView {
  std::uint32_t index;
  double calls, bytes, live_blocks, live_bytes;
  unsigned char owner = 0;  // a leak report's: 0 the program, 1 glibc's thread storage, 2 dlopen's records
};

// Symbolises the frames of the sites v[0..n) in one batch (see prepare_symbols).
void prepare_sites(const SiteView* v, std::size_t n) {
  std::size_t nframes = 0;
  for (std::size_t i = 0; i < n; ++i) nframes += g_sites[v[i].index].depth;
  if (nframes == 0) return;
  std::size_t bytes = align_up(nframes * sizeof(void*), os_page_size());
  auto* frames = static_cast<void**>(os_map(bytes));
  if (!frames) return;
  std::size_t k = 0, nstale = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const Site& s = g_sites[v[i].index];
    for (unsigned j = 0; j < s.depth; ++j)
      if (unloaded_object(s.generation, s.frames[j]))
        ++nstale;
      else
        frames[k++] = s.frames[j];
  }
  // Stacks share most frames: the batch is sized by the distinct ones.
  std::sort(frames, frames + k);
  k = static_cast<std::size_t>(std::unique(frames, frames + k) - frames);
  prepare_symbols(frames, k);
  os_unmap(frames, bytes);
  if (nstale == 0) return;
  std::size_t sbytes = align_up(nstale * sizeof(StaleResult), os_page_size());
  auto* stale = static_cast<StaleResult*>(os_map(sbytes));
  if (!stale) return;
  std::size_t m = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const Site& s = g_sites[v[i].index];
    for (unsigned j = 0; j < s.depth; ++j)
      if (const LoadedObject* o = unloaded_object(s.generation, s.frames[j])) {
        stale[m] = StaleResult{};
        stale[m].obj = o;
        stale[m++].r.addr = reinterpret_cast<std::uintptr_t>(s.frames[j]);
      }
  }
  prepare_stale(stale, m);
  os_unmap(stale, sbytes);
}

// A snapshot of every site with something to report, in memory of its own
// (from the OS layer); `n` entries.
SiteView* snapshot_sites(std::size_t* n, std::size_t* map_bytes) {
  std::size_t used = g_nsites.load(std::memory_order_acquire);
  *map_bytes = align_up(used * sizeof(SiteView), os_page_size());
  auto* v = static_cast<SiteView*>(os_map(*map_bytes));
  *n = 0;
  if (!v) return nullptr;
  for (std::size_t i = 0; i < used; ++i) {
    const Site& s = g_sites[i];
    std::uint64_t calls = s.calls_fx.load(std::memory_order_relaxed);
    if (calls == 0) continue;
    v[(*n)++] = SiteView{static_cast<std::uint32_t>(i), static_cast<double>(calls) / kWeightOne,
                         static_cast<double>(s.bytes.load(std::memory_order_relaxed)),
                         static_cast<double>(s.live_fx.load(std::memory_order_relaxed)) / kWeightOne,
                         static_cast<double>(s.live_bytes.load(std::memory_order_relaxed))};
  }
  return v;
}

// The path for writing: "%p" replaced by the pid; in a forked child, ".PID"
// appended when the path has no %p (the child's report is its own).
void expand_path(const char* pattern, char* out, std::size_t cap) {
  std::size_t k = 0;
  bool had_pid = false;
  for (const char* p = pattern; *p && k + 24 < cap; ++p) {
    if (p[0] == '%' && p[1] == 'p') {
      k += static_cast<std::size_t>(std::snprintf(out + k, cap - k, "%d", static_cast<int>(getpid())));
      ++p;
      had_pid = true;
    } else {
      out[k++] = *p;
    }
  }
  out[k] = 0;
  if (!had_pid && getpid() != g_start_pid)
    std::snprintf(out + k, cap - k, ".%d", static_cast<int>(getpid()));
}

// A report's output: a descriptor written through a buffer of our own, not a
// stdio FILE.  The profile the signal asks for is written from inside malloc
// or free, which a thread may call holding a FILE's lock (stdio allocates a
// stream's buffer, printf its work space); fopen and fclose take stdio's list
// lock, and fflush(NULL) takes that lock, then each FILE's: a thread in
// fflush(NULL) and one in fprintf whose buffer allocation wrote the profile
// waited for each other for ever (tests/unit/track,
// test_profile_dump_inside_stdio_does_not_deadlock).  vsnprintf takes no lock.
// The file is close-on-exec, as every other file libcalloc opens (a program
// that runs another while a report is written gave it the descriptor).
struct Out {
  int fd = -1;
  bool own = false;  // opened here: closed by out_close
  bool ok = true;    // every write so far succeeded (errno: the first failure's)
  int error = 0;
  std::size_t len = 0;
  char buf[4096];
};

void out_flush(Out* o) {
  for (std::size_t done = 0; done < o->len && o->ok;) {
    ssize_t n = write(o->fd, o->buf + done, o->len - done);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      o->ok = false;
      o->error = n < 0 ? errno : EIO;
    }
  }
  o->len = 0;
}

void out_write(Out* o, const char* p, std::size_t n) {
  while (n > 0) {
    if (o->len == sizeof o->buf) out_flush(o);
    std::size_t k = n < sizeof o->buf - o->len ? n : sizeof o->buf - o->len;
    std::memcpy(o->buf + o->len, p, k);
    o->len += k, p += k, n -= k;
  }
}

// A line (of at most sizeof buf bytes: longer is cut) into the buffer.
__attribute__((format(printf, 2, 3))) void out_printf(Out* o, const char* format, ...) {
  for (int pass = 0; pass < 2; ++pass) {
    std::va_list args;
    va_start(args, format);
    std::size_t room = sizeof o->buf - o->len;
    int n = std::vsnprintf(o->buf + o->len, room, format, args);
    va_end(args);
    if (n < 0) return;
    if (static_cast<std::size_t>(n) < room) {
      o->len += static_cast<std::size_t>(n);
      return;
    }
    if (pass == 1 || o->len == 0) {  // longer than the buffer: cut
      o->len = sizeof o->buf - 1;
      return;
    }
    out_flush(o);  // (the partial line written is overwritten)
  }
}

// Opens the output of pattern ("", "-": stderr); false (errno set) when the
// file cannot be opened.
bool out_open(Out* o, const char* pattern) {
  if (!pattern || !*pattern || std::strcmp(pattern, "-") == 0) {
    o->fd = 2;
    return true;
  }
  char path[4096 + 512];  // g_leak_path and g_profile_path may be absolute, and %p expanded
  expand_path(pattern, path, sizeof path);
  int fd;
  do fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return false;
  o->fd = fd;
  o->own = true;
  return true;
}

// Writes what is buffered and closes a file opened here; false (errno set)
// when a write or the close failed.
bool out_close(Out* o) {
  out_flush(o);
  if (o->own && close(o->fd) != 0 && o->ok && errno != EINTR) o->ok = false, o->error = errno;
  o->fd = -1;
  if (!o->ok) errno = o->error;
  return o->ok;
}

// A frame in no module mapped when the report is written: a library closed
// with dlclose since (or code outside any module).  It printed "unknown
// module+0x0", an offset that is none.
constexpr const char* kNoModule = "in no module loaded now: a library unloaded with dlclose?";

// After the module of a frame whose object was unloaded before the report
// (named from its file), or whose file could not be read then.
const char* unloaded_note(const Symbol& s) {
  return s.gone ? "; unloaded, and its file is gone" : s.unloaded ? "; unloaded" : "";
}

void print_frame(Out* f, unsigned i, const void* ip, std::uint32_t gen) {
  Symbol s;
  symbolize_frame(gen, ip, &s);
  char where[320] = "";
  if (s.file) std::snprintf(where, sizeof where, " at %s:%u", s.file, s.line);
  if (s.function[0])
    out_printf(f, "    #%u %p in %s+0x%lx%s (%s+0x%lx%s)\n", i, ip, s.function, static_cast<unsigned long>(s.offset),
                 where, s.module[0] ? s.module : "?", static_cast<unsigned long>(s.module_offset), unloaded_note(s));
  else if (s.module[0])
    out_printf(f, "    #%u %p (%s+0x%lx%s)\n", i, ip, s.module, static_cast<unsigned long>(s.module_offset),
               unloaded_note(s));
  else  // names are looked up now: the module of an unloaded library is not known (docs/design.md)
    out_printf(f, "    #%u %p (%s)\n", i, ip, kNoModule);
}

void print_stack(Out* f, std::uint32_t site) {
  if (site == 0) {
    out_printf(f, "    [stack table full: stacks not kept]\n");
    return;
  }
  const Site& s = g_sites[site];
  if (s.depth == 0) out_printf(f, "    [no stack]\n");
  for (unsigned i = 0; i < s.depth; ++i) print_frame(f, i, s.frames[i], s.generation);
}

const char* mode_text(char* buf, std::size_t cap) {
  if (g_track_mode == TrackMode::full)
    std::snprintf(buf, cap, "every allocation tracked");
  else
    std::snprintf(buf, cap, "sampled, one per %llu bytes on average: figures are estimates",
                  static_cast<unsigned long long>(g_sample_bytes));
  return buf;
}

// glibc's thread storage: blocks the dynamic loader allocates for threads'
// TLS -- a thread's DTV (allocate_dtv, called by _dl_allocate_tls from
// pthread_create), the blocks of dlopen'ed modules' TLS (__tls_get_addr's
// tls_get_addr_tail, allocate_and_init, allocate_dtv_entry) and a DTV grown
// for them (_dl_update_slotinfo, _dl_resize_dtv).  glibc frees a thread's DTV
// only when its stack leaves glibc's stack cache (up to 40 MiB of stacks are
// kept for reuse), and the main thread's never: a program that joined all its
// threads still holds them at exit.  Valgrind's default suppressions name the
// same functions.  With glibc's separate debug file (libc6-dbg) the static
// ones are named; without it, the exported _dl_allocate_tls and
// __tls_get_addr are among the frames (the stack holds the loader's frames
// from the allocation up to them: glibc 2.36's ld.so, checked by
// tests/integration/track.sh's "threads-own").  Names are compared up to a
// '.' (GCC's .isra, .constprop clones).
bool loader_tls_function(const char* name) {
  static const char* const kNames[] = {"_dl_allocate_tls", "_dl_allocate_tls_init", "allocate_dtv",
                                       "allocate_dtv_entry", "__tls_get_addr", "__tls_get_addr_slow",
                                       "tls_get_addr_tail", "allocate_and_init", "update_get_addr",
                                       "_dl_update_slotinfo", "_dl_resize_dtv"};
  std::size_t n = std::strcspn(name, ".");
  for (const char* k : kNames)
    if (std::strlen(k) == n && std::strncmp(name, k, n) == 0) return true;
  return false;
}

bool in_loader(const void* ip, std::uintptr_t rtld) {
  Dl_info dl;
  auto a = reinterpret_cast<std::uintptr_t>(ip);
  return a && dladdr(reinterpret_cast<void*>(a - 1), &dl) && reinterpret_cast<std::uintptr_t>(dl.dli_fbase) == rtld;
}

// The allocator's own frames that may come before the loader's: none when the
// stack starts in the loader, the entry (malloc, calloc) when libcalloc.a is
// linked into the program (its frames are the program's), four at -O0
// (--enable-debug: malloc_slow, fast_malloc, calloc_impl, calloc; CI's debug
// build, where a rule of "frame 0 or 1" found none of glibc's blocks).
constexpr unsigned kAllocatorFramesMax = 6;

// The first frame of s in the loader (the object at AT_BASE) among its first
// kAllocatorFramesMax + 1; s.depth when there is none.
unsigned first_loader_frame(const Site& s, std::uintptr_t rtld) {
  unsigned limit = s.depth < kAllocatorFramesMax + 1 ? s.depth : kAllocatorFramesMax + 1;
  for (unsigned j = 0; j < limit; ++j)
    if (in_loader(s.frames[j], rtld)) return j;
  return s.depth;
}

// Whether frame ip lies in the object loaded at base (a Symbol of it, from
// symbolize: its module offset is ip less the object's load address).
bool frame_in(const void* ip, const Symbol& sym, std::uintptr_t base) {
  return sym.module[0] && reinterpret_cast<std::uintptr_t>(ip) - sym.module_offset == base;
}

// Whether the frames of site run, from its first frame in the loader on,
// through the loader into one of its TLS functions.  (A frame of the program's
// before them -- a constructor that dlopen's _dl_init runs -- leads through
// loader frames that are no TLS function, and out of the loader: not set
// apart.)  Symbolises them: prepare_sites must have seen the site.
bool glibc_thread_storage(std::uint32_t site, std::uintptr_t rtld) {
  if (site == 0 || rtld == 0) return false;
  const Site& s = g_sites[site];
  for (unsigned j = first_loader_frame(s, rtld); j < s.depth; ++j) {
    Symbol sym;
    symbolize(s.frames[j], &sym);
    if (!frame_in(s.frames[j], sym, rtld)) return false;
    if (loader_tls_function(sym.function)) return true;
  }
  return false;
}

// Names compared up to a '.' (GCC's clones) or '@' (a symbol version).
bool same_function(const char* name, const char* want) {
  std::size_t n = std::strcspn(name, ".@");
  return std::strlen(want) == n && std::strncmp(name, want, n) == 0;
}

// The load address of the object libcalloc's code is in (the program itself
// when libcalloc.a is linked into it).
std::uintptr_t own_base() {
  Dl_info dl;
  if (!dladdr(reinterpret_cast<const void*>(&track_init), &dl)) return 0;
  return reinterpret_cast<std::uintptr_t>(dl.dli_fbase);
}

// Whether the frames of s before its first loader frame j can be the
// allocator's alone: none (libcalloc.so's frames are dropped at capture), or
// -- libcalloc linked into the program -- frames of the object libcalloc is
// in (the entry the loader called through __rtld_malloc and friends, and at
// -O0 its callees: lca_calloc, fast_malloc, malloc_slow, names that vary with
// the build, so not compared).  A constructor that dlopen runs (the loader's
// call_init calls it) is in the library dlopen loaded, and is frame j - 1 of
// its allocations: its leaks are the program's.
bool loader_called_allocator(const Site& s, unsigned j) {
  std::uintptr_t own = j ? own_base() : 0;
  for (unsigned i = 0; i < j; ++i) {
    Symbol sym;
    symbolize(s.frames[i], &sym);
    if (!frame_in(s.frames[i], sym, own)) return false;
  }
  return true;
}

// Where the loader calls a library's constructors (call_init, in ld.so's
// _dl_init): libcalloc's constructor's return address (libcalloc.so's
// constructor is called there like any library's: the init_array call site);
// nullptr before libcalloc_init ran.
const void* g_constructor_caller;

// Whether return address ip is where the loader called a constructor (the
// frame above an allocation of a constructor that tail-calls malloc, which
// leaves no frame of its own): the init_array call site libcalloc's own
// constructor returned to, or -- with names (full mode with glibc's debug
// file; libcalloc.a linked into a program, whose constructors libc runs) --
// a frame of call_init or _dl_init, which allocate nothing themselves.
// Symbolises ip: prepare_sites must have seen its site.
bool constructor_call(const void* ip) {
  if (ip == g_constructor_caller) return true;
  Symbol sym;
  symbolize(ip, &sym);
  return same_function(sym.function, "call_init") || same_function(sym.function, "_dl_init");
}

// The C library's entry points that load objects: dlopen, dlmopen, and the
// one glibc itself loads NSS modules, gconv modules and libgcc_s with.  All
// exported, so named without libc6-dbg's file too (sampled reports).
bool dlopen_function(const char* name) {
  return same_function(name, "dlopen") || same_function(name, "dlmopen") ||
         same_function(name, "__libc_dlopen_mode");
}

// Whether a module's path names the C library or libdl (glibc before 2.34
// had dlopen there), whose frames lie between dlopen and the loader's:
// _dlerror_run, dlopen_doit, _dl_catch_error, _dl_catch_exception.
bool dl_module(const char* path) {
  const char* base = std::strrchr(path, '/');
  base = base ? base + 1 : path;
  return std::strncmp(base, "libc.so.", 8) == 0 || std::strncmp(base, "libdl.so.", 9) == 0;
}

// The dynamic loader's records of objects loaded with dlopen: blocks whose
// stack runs from the allocator (loader_called_allocator) into the loader,
// and from there through frames of the loader and of the C library's dl
// functions only, up to dlopen (dlopen_function).  glibc 2.36 allocates them
// in _dl_new_object (the link map, its names and scope array),
// _dl_map_object (the name), _dl_map_object_deps (the search list and
// init order), _dl_check_map_versions (the version table),
// _dl_find_object_update (the lookup table of _dl_find_object),
// add_to_global_resize (the global scope, RTLD_GLOBAL) and more; the loader
// frees them in dlclose, and never when the object stays loaded until exit
// (checked by tests/integration/track.sh's "dlopen-keep").  Their stacks are
// recognised by their shape, not by those names: without libc6-dbg's file the
// loader's static functions have no name (sampled reports).  A frame of any
// other object on the way -- a constructor dlopen runs, and what it calls,
// an IFUNC resolver, an audit module -- makes it the program's.
bool dlopen_records(std::uint32_t site, std::uintptr_t rtld) {
  if (site == 0 || rtld == 0) return false;
  const Site& s = g_sites[site];
  unsigned j = first_loader_frame(s, rtld);
  if (j == s.depth || !loader_called_allocator(s, j) || constructor_call(s.frames[j])) return false;
  for (; j < s.depth; ++j) {
    Symbol sym;
    symbolize(s.frames[j], &sym);
    if (frame_in(s.frames[j], sym, rtld)) continue;
    if (!sym.module[0] || !dl_module(sym.module)) return false;
    if (dlopen_function(sym.function)) return true;
  }
  return false;  // (no dlopen among the frames kept)
}

// The C library's dl functions that keep their failure's message for dlerror
// (through _dlerror_run): all exported, named without libc6-dbg's file too;
// __libc_dlopen_mode and its kin (NSS, gconv, libgcc_s) catch the error
// themselves and keep nothing, but their frames may lead there.
bool dlerror_function(const char* name) {
  for (const char* f : {"dlopen", "dlmopen", "dlsym", "dlvsym", "dlclose", "dlinfo"})
    if (same_function(name, f)) return true;
  return false;
}

// The object of frame ip is the C library or libdl (by dladdr's path).
bool in_dl_module(const void* ip) {
  Dl_info dl;
  auto a = reinterpret_cast<std::uintptr_t>(ip);
  return a && dladdr(reinterpret_cast<void*>(a - 1), &dl) && dl.dli_fname && dl_module(dl.dli_fname);
}

// The first frame of s among its first kAllocatorFramesMax + 1 in the C
// library or libdl (in_dl_module); s.depth when there is none.
unsigned first_dl_module_frame(const Site& s) {
  unsigned limit = s.depth < kAllocatorFramesMax + 1 ? s.depth : kAllocatorFramesMax + 1;
  for (unsigned j = 0; j < limit; ++j)
    if (in_dl_module(s.frames[j])) return j;
  return s.depth;
}

// What glibc keeps for dlerror after a dl function failed (dlsym of a symbol
// that is not there, dlopen of a file that cannot be loaded), until the next
// dl call of the thread, or its exit: the message, and the thread's record
// of it.  glibc 2.36 (with libc6-dbg):
//  - the message: _dl_exception_create_format (or _dl_exception_create),
//    ld.so, the allocator's caller, under the loader's or the C library's dl
//    frames only (_dl_lookup_symbol_x, do_sym, dlsym_doit,
//    _dl_catch_exception, _dl_catch_error, _dlerror_run) up to a dl function
//    (dlerror_function); dlerror() frees it;
//  - the record (struct dl_action_result, 24 bytes): _dlerror_run, in the C
//    library, the allocator's caller, called by the dl function itself;
//    kept in a thread-specific slot until the thread exits (the main
//    thread's until exit: dlerror() frees the message only).
// Without the debug file _dlerror_run has no name (it is not exported): a
// frame of the C library without a name is taken for it there.  The frames
// before must be the allocator's (loader_called_allocator), as for dlopen's
// records.  Symbolises them: prepare_sites must have seen the site.
bool dlerror_buffers(std::uint32_t site, std::uintptr_t rtld) {
  if (site == 0) return false;
  const Site& s = g_sites[site];
  unsigned j = rtld ? first_loader_frame(s, rtld) : s.depth;
  unsigned k = first_dl_module_frame(s);
  if (j < k) {  // the allocator called from the loader: the message?
    if (!loader_called_allocator(s, j) || constructor_call(s.frames[j])) return false;
    Symbol sym;
    symbolize(s.frames[j], &sym);
    if (!same_function(sym.function, "_dl_exception_create") &&
        !same_function(sym.function, "_dl_exception_create_format"))
      return false;
    for (++j; j < s.depth; ++j) {
      symbolize(s.frames[j], &sym);
      if (frame_in(s.frames[j], sym, rtld)) continue;
      if (!sym.module[0] || !dl_module(sym.module)) return false;
      if (dlerror_function(sym.function)) return true;
    }
    return false;
  }
  if (k + 1 >= s.depth || !loader_called_allocator(s, k)) return false;  // the record?
  Symbol sym;
  symbolize(s.frames[k], &sym);
  if (sym.function[0] && !same_function(sym.function, "_dlerror_run")) return false;
  symbolize(s.frames[k + 1], &sym);
  return sym.module[0] && dl_module(sym.module) && dlerror_function(sym.function);
}

// Blocks that are not the program's leaks: the C library's own, alive until
// exit by its design.
struct NotLeaks {
  std::size_t thread_storage = 0;  // stacks of glibc's thread storage
  std::size_t dlopen = 0;          // stacks of the loader's records of dlopen'ed objects
  std::size_t dlerror = 0;         // stacks of what glibc keeps for dlerror
};

// Moves the sites of v[0..n) that are not the program's leaks to its end:
// glibc's thread storage first, then the loader's records of dlopen'ed
// objects (counts in *apart); returns the count of the others (the
// program's).  Only stacks with a frame in the loader among their first few
// (first_loader_frame) are symbolised for it.
std::size_t set_apart_glibc_blocks(SiteView* v, std::size_t n, NotLeaks* apart) {
  *apart = NotLeaks{};
  auto rtld = static_cast<std::uintptr_t>(getauxval(AT_BASE));
  if (rtld == 0) return n;  // a static program: no loader of its own
  SiteView* cand = std::partition(v, v + n, [rtld](const SiteView& x) {
    if (x.index == 0 || g_sites[x.index].depth == 0) return true;
    const Site& s = g_sites[x.index];
    return first_loader_frame(s, rtld) == s.depth && first_dl_module_frame(s) == s.depth;
  });
  std::size_t ncand = static_cast<std::size_t>(v + n - cand);
  if (ncand == 0) return n;
  prepare_sites(cand, ncand);
  // Each candidate's owner, once (the partitions must not symbolise again).
  // dlerror's first: a failed dlopen's message lies under dlopen too.
  for (SiteView* x = cand; x < v + n; ++x)
    x->owner = glibc_thread_storage(x->index, rtld) ? 1
               : dlerror_buffers(x->index, rtld)    ? 3
               : dlopen_records(x->index, rtld)     ? 2
                                                    : 0;
  SiteView* at = cand;  // by owner (std::stable_sort's buffer comes from operator new: not in libcalloc)
  for (unsigned char o = 0; o < 3; ++o)
    at = std::partition(at, v + n, [o](const SiteView& x) { return x.owner == o; });
  std::size_t counts[4] = {};
  for (SiteView* x = cand; x < v + n; ++x) ++counts[x->owner];
  apart->thread_storage = counts[1];
  apart->dlopen = counts[2];
  apart->dlerror = counts[3];
  return static_cast<std::size_t>(cand - v) + counts[0];
}

bool write_leak_report(const char* pattern) {
  Busy busy;
  g_report_generation = modules_generation();  // objects loaded now (sites name the rest)
  Out out;
  Out* f = &out;
  if (!out_open(f, pattern)) return false;
  std::size_t n, map_bytes;
  SiteView* v = snapshot_sites(&n, &map_bytes);
  if (!v) {
    out_close(f);
    errno = ENOMEM;
    return false;
  }
  std::size_t k = 0;
  double blocks = 0, bytes = 0, calls = 0;
  for (std::size_t i = 0; i < n; ++i) {
    calls += v[i].calls;
    if (v[i].live_bytes <= 0 && v[i].live_blocks < 0.5) continue;
    blocks += v[i].live_blocks;
    bytes += v[i].live_bytes;
    v[k++] = v[i];
  }
  // Not the program's leaks: glibc's thread storage and the loader's records
  // of dlopen'ed objects, counted apart.
  std::size_t live = k;
  NotLeaks apart;
  k = set_apart_glibc_blocks(v, live, &apart);
  // After the program's: thread storage, dlopen's records, dlerror's (by owner).
  double glibc_blocks = 0, glibc_bytes = 0, dl_blocks = 0, dl_bytes = 0, err_blocks = 0, err_bytes = 0;
  std::size_t dl_from = k + apart.thread_storage, err_from = dl_from + apart.dlopen;
  for (std::size_t i = k; i < dl_from; ++i) glibc_blocks += v[i].live_blocks, glibc_bytes += v[i].live_bytes;
  for (std::size_t i = dl_from; i < err_from; ++i) dl_blocks += v[i].live_blocks, dl_bytes += v[i].live_bytes;
  for (std::size_t i = err_from; i < live; ++i) err_blocks += v[i].live_blocks, err_bytes += v[i].live_bytes;
  blocks -= glibc_blocks + dl_blocks + err_blocks, bytes -= glibc_bytes + dl_bytes + err_bytes;
  std::sort(v, v + k, [](const SiteView& a, const SiteView& b) {
    return a.live_bytes != b.live_bytes ? a.live_bytes > b.live_bytes : a.index < b.index;
  });
  prepare_sites(v, k < kReportStacks ? k : kReportStacks);
  char mode[128];
  out_printf(f, "libcalloc leak report (pid %d; %s)\n", static_cast<int>(getpid()), mode_text(mode, sizeof mode));
  for (std::size_t i = 0; i < k && i < kReportStacks; ++i) {
    out_printf(f, "%.0f bytes in %.0f block%s allocated at:\n", v[i].live_bytes, v[i].live_blocks,
                 v[i].live_blocks >= 0.5 && v[i].live_blocks < 1.5 ? "" : "s");
    print_stack(f, v[i].index);
  }
  if (k > kReportStacks) {
    double rest = 0;
    for (std::size_t i = kReportStacks; i < k; ++i) rest += v[i].live_bytes;
    out_printf(f, "... and %zu more stacks (%.0f bytes)\n", k - kReportStacks, rest);
  }
  if (apart.thread_storage)
    out_printf(f, "libcalloc: not leaks of the program: glibc's thread storage (thread TLS the dynamic loader "
                  "allocated, freed when glibc drops a cached thread stack, or never): %.0f bytes in %.0f block%s "
                  "from %zu stack%s\n",
               glibc_bytes, glibc_blocks, glibc_blocks >= 0.5 && glibc_blocks < 1.5 ? "" : "s",
               apart.thread_storage, apart.thread_storage == 1 ? "" : "s");
  if (apart.dlopen)
    out_printf(f, "libcalloc: not leaks of the program: the dynamic loader's records of libraries loaded with "
                  "dlopen and still loaded at exit (freed by dlclose): %.0f bytes in %.0f block%s from %zu stack%s\n",
               dl_bytes, dl_blocks, dl_blocks >= 0.5 && dl_blocks < 1.5 ? "" : "s", apart.dlopen,
               apart.dlopen == 1 ? "" : "s");
  if (apart.dlerror)
    out_printf(f, "libcalloc: not leaks of the program: what glibc keeps for dlerror after a failed dlopen or dlsym "
                  "(the message, freed by dlerror, and the thread's record of it): %.0f bytes in %.0f block%s from "
                  "%zu stack%s\n",
               err_bytes, err_blocks, err_blocks >= 0.5 && err_blocks < 1.5 ? "" : "s", apart.dlerror,
               apart.dlerror == 1 ? "" : "s");
  track_lock(&g_sym_lock);
  for (unsigned i = 0; i < g_nnotes; ++i)
    out_printf(f, "libcalloc: note: %s: its line table is %s: no file:line from it\n", g_notes[i].module,
                 g_notes[i].why);
  track_unlock(&g_sym_lock);
  // The count of allocations: exact in full mode; sampled, an estimate (the
  // sum of the samples' weights), with the number of samples it rests on.
  // It said "(1 allocations tracked)", and the same in sampled mode, where
  // it reads as a count.
  char counted[160];
  bool one = calls >= 0.5 && calls < 1.5;
  if (g_track_mode == TrackMode::full)
    std::snprintf(counted, sizeof counted, "%.0f allocation%s tracked", calls, one ? "" : "s");
  else
    std::snprintf(counted, sizeof counted, "an estimated %.0f allocation%s from %llu sample%s", calls, one ? "" : "s",
                  static_cast<unsigned long long>(g_samples.load(std::memory_order_relaxed)),
                  g_samples.load(std::memory_order_relaxed) == 1 ? "" : "s");
  // ", A, B and C aside" of the kinds set apart.
  char aside[200] = "";
  const char* kinds[3];
  unsigned nkinds = 0;
  if (apart.thread_storage) kinds[nkinds++] = "glibc's thread storage";
  if (apart.dlopen) kinds[nkinds++] = "the loader's records of dlopen'ed libraries";
  if (apart.dlerror) kinds[nkinds++] = "what glibc keeps for dlerror";
  for (unsigned i = 0; i < nkinds; ++i)
    std::snprintf(aside + std::strlen(aside), sizeof aside - std::strlen(aside), "%s%s%s",
                  i == 0 ? ", " : i + 1 == nkinds ? " and " : ", ", kinds[i], i + 1 == nkinds ? " aside" : "");
  if (k == 0)
    out_printf(f, "libcalloc: no leaks: every %s block was freed%s (%s)\n",
               g_track_mode == TrackMode::full ? "tracked" : "sampled",
               aside,
               counted);
  else
    out_printf(f, "libcalloc: leak summary: %.0f bytes in %.0f block%s from %zu allocation stack%s (%s)\n",
                 bytes, blocks, blocks >= 0.5 && blocks < 1.5 ? "" : "s", k, k == 1 ? "" : "s", counted);
  os_unmap(v, map_bytes);
  return out_close(f);
}

// The name of a frame for collapsed stacks: the function, or module+offset.
void frame_name(const void* ip, std::uint32_t gen, char* buf, std::size_t cap) {
  Symbol s;
  symbolize_frame(gen, ip, &s);
  if (s.function[0]) {
    std::snprintf(buf, cap, "%s", s.function);
  } else {
    const char* base = std::strrchr(s.module, '/');
    if (s.module[0])
      std::snprintf(buf, cap, "%s+0x%lx", base ? base + 1 : s.module, static_cast<unsigned long>(s.module_offset));
    else  // in no module now (see kNoModule): the address itself
      std::snprintf(buf, cap, "[no module] %p", ip);
  }
  for (char* c = buf; *c; ++c)
    if (*c == ';' || *c == '\n') *c = ',';
}

bool write_profile(const char* pattern, int format) {
  Busy busy;
  g_report_generation = modules_generation();  // objects loaded now (sites name the rest)
  Out out;
  Out* f = &out;
  if (!out_open(f, pattern)) return false;
  std::size_t n, map_bytes;
  SiteView* v = snapshot_sites(&n, &map_bytes);
  if (!v) {
    out_close(f);
    errno = ENOMEM;
    return false;
  }
  std::sort(v, v + n, [](const SiteView& a, const SiteView& b) {
    return a.bytes != b.bytes ? a.bytes > b.bytes : a.index < b.index;
  });
  double calls = 0, bytes = 0, live_blocks = 0, live_bytes = 0;
  for (std::size_t i = 0; i < n; ++i) {
    calls += v[i].calls;
    bytes += v[i].bytes;
    live_blocks += v[i].live_blocks;
    live_bytes += v[i].live_bytes;
  }
  if (format == 1) {  // collapsed: root first, bytes allocated
    prepare_sites(v, n);
    char name[512];
    for (std::size_t i = 0; i < n; ++i) {
      const Site& s = g_sites[v[i].index];
      if (v[i].index == 0) {
        out_printf(f, "[stack table full]");
      } else {
        for (unsigned j = s.depth; j-- > 0;) {
          frame_name(s.frames[j], s.generation, name, sizeof name);
          out_printf(f, "%s%s", name, j ? ";" : "");
        }
        if (s.depth == 0) out_printf(f, "[no stack]");
      }
      out_printf(f, " %.0f\n", v[i].bytes);
    }
  } else if (format == 2) {  // gperftools heap profile (legacy text format)
    out_printf(f, "heap profile: %6.0f: %8.0f [%6.0f: %8.0f] @ heapprofile\n", live_blocks, live_bytes, calls, bytes);
    // pprof names the addresses itself, through the mappings listed after
    // them: a frame of an object unloaded before now is given an address in
    // a range of its own past user space (kGoneBase, 4 GiB an object), listed
    // as that object's file mapped there (at an object's address now there
    // may be another's, or nothing).
    constexpr std::uintptr_t kGoneBase = std::uintptr_t{1} << 56;
    constexpr unsigned kGoneObjects = 256;  // more: their frames keep their addresses
    const LoadedObject* gone[kGoneObjects];
    unsigned ngone = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const Site& s = g_sites[v[i].index];
      out_printf(f, "%6.0f: %8.0f [%6.0f: %8.0f] @", v[i].live_blocks > 0 ? v[i].live_blocks : 0,
                   v[i].live_bytes > 0 ? v[i].live_bytes : 0, v[i].calls, v[i].bytes);
      for (unsigned j = 0; j < s.depth; ++j) {
        auto a = reinterpret_cast<std::uintptr_t>(s.frames[j]);
        if (const LoadedObject* o = unloaded_object(s.generation, s.frames[j])) {
          unsigned g = 0;
          while (g < ngone && gone[g] != o) ++g;
          if (g == ngone && ngone < kGoneObjects) gone[ngone++] = o;
          if (g < ngone) a = kGoneBase + (std::uintptr_t{g} << 32) + (a - o->base);
        }
        out_printf(f, " 0x%lx", static_cast<unsigned long>(a));
      }
      out_printf(f, "\n");
    }
    out_printf(f, "\nMAPPED_LIBRARIES:\n");
    int maps = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (maps >= 0) {
      char buf[4096];
      ssize_t r;
      while ((r = read(maps, buf, sizeof buf)) > 0) out_write(f, buf, static_cast<std::size_t>(r));
      close(maps);
    }
    for (unsigned g = 0; g < ngone; ++g) {  // as /proc/self/maps would list them (offset = segment's address)
      std::uintptr_t at = kGoneBase + (std::uintptr_t{g} << 32);
      out_printf(f, "%lx-%lx r-xp %08lx 00:00 0 %s\n", static_cast<unsigned long>(at + gone[g]->lo - gone[g]->base),
                 static_cast<unsigned long>(at + gone[g]->hi - gone[g]->base),
                 static_cast<unsigned long>(gone[g]->lo - gone[g]->base), gone[g]->path);
    }
  } else {
    prepare_sites(v, n < kReportStacks ? n : kReportStacks);
    char mode[128];
    out_printf(f, "libcalloc allocation profile (pid %d; %s)\n", static_cast<int>(getpid()),
                 mode_text(mode, sizeof mode));
    out_printf(f, "total: %.0f allocations, %.0f bytes; live: %.0f blocks, %.0f bytes; %zu stacks\n", calls, bytes,
                 live_blocks, live_bytes, n);
    UnwindStats u = unwind_stats();
    out_printf(f, "capture: %llu stacks walked by libcalloc's unwinder, %llu of them again by a fallback; frame cache %zu rules, %zu bytes\n",
                 static_cast<unsigned long long>(u.captures), static_cast<unsigned long long>(u.fallbacks), u.entries,
                 u.bytes);
    ModulesStats m = modules_stats();
    out_printf(f, "loaded objects: %zu records over %u generations, %zu bytes\n", m.objects,
               static_cast<unsigned>(m.generations), m.bytes);
    for (std::size_t i = 0; i < n && i < kReportStacks; ++i) {
      out_printf(f, "site %zu: %.0f calls, %.0f bytes (%.1f%%), live %.0f blocks, %.0f bytes\n", i + 1, v[i].calls,
                   v[i].bytes, bytes > 0 ? 100.0 * v[i].bytes / bytes : 0.0, v[i].live_blocks, v[i].live_bytes);
      print_stack(f, v[i].index);
    }
    if (n > kReportStacks) out_printf(f, "... and %zu more stacks\n", n - kReportStacks);
  }
  os_unmap(v, map_bytes);
  return out_close(f);
}

// "libcalloc: warning: cannot write WHAT to PATH: REASON (ENAME)" on stderr,
// REASON for err from glibc's table (strerrordesc_np: no locale, no
// allocation, no lock -- strerror may load a message catalogue, and the
// profile thread must take no lock another thread may hold), else "error N".
// PATH is the file tried: pattern with %p expanded and, in a forked child,
// ".PID" appended (out_open's expand_path).  The line is as long as the path
// needs (report_warning's 256 bytes cut a long path and then the reason).
void warn_cannot_write(const char* what, const char* pattern, int err) {
  char path[4096 + 512];
  if (!pattern || !*pattern || std::strcmp(pattern, "-") == 0)
    std::snprintf(path, sizeof path, "standard error");
  else
    expand_path(pattern, path, sizeof path);
  char line[sizeof path + 256];
  Writer w{line, sizeof line};
  w.str("libcalloc: warning: cannot write ").str(what).str(" to ").str(path).str(": ");
  const char* desc = nullptr;
  const char* name = nullptr;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  desc = strerrordesc_np(err);
  name = strerrorname_np(err);
#endif
  if (desc) w.str(desc);
  else w.str("error ").num(static_cast<unsigned long long>(err));
  if (name) w.str(" (").str(name).str(")");
  w.str("\n");
  w.flush_to(2);
}

// --- the profile thread ---------------------------------------------------------
//
// The profile the signal asks for is written by a thread of the tracker's, which
// waits on g_dump_sem.  It was written inside the next malloc or free of
// whichever thread made it, under whatever locks that call's caller held; the
// writer symbolises (dladdr) and so takes the dynamic loader's lock: a thread
// holding stdout's lock (printf allocating its buffer) or inside a
// dl_iterate_phdr callback (the loader's list lock) waited there for a thread
// in dlopen, whose library's constructor waited for stdout's lock, or dlopen
// itself for the list lock -- for ever (tests/unit/track,
// test_profile_signal_while_a_constructor_waits_for_stdio,
// test_profile_signal_inside_dl_iterate_phdr).  And a program that made no
// allocation after the signal never had its profile
// (test_profile_signal_without_further_allocation).  The thread holds no lock
// of anyone else's when it writes; its own allocations (demangling) are not
// tracked (tls_track_busy for its life).  It is started by track_init (the
// library's constructor), not in a signal handler, which cannot; a forked child
// starts its own at its first allocation that reaches the tracker (see
// track_postfork_child), not in the fork handler, so that a child that execs
// at once never makes one.  Every signal is blocked in it.  Its two functions
// are in the sampler's section: in .text they mapped a 64 KiB window of
// libcalloc's text of their own (tests/integration/track-rss.sh failed).

LCA_SAMPLING_TEXT void* dump_thread_main(void*) {
  tls_track_busy = true;
  pthread_setname_np(pthread_self(), "libcalloc-prof");
  for (;;) {
    while (sem_wait(&g_dump_sem) != 0) {  // EINTR
    }
    if (!g_dump_pending.load(std::memory_order_acquire)) continue;  // a request already answered
    ReportLock lock;
    // After the reports at exit, which answer any request made until then,
    // nothing more is written.
    if (g_exit_reported || !g_dump_pending.exchange(0, std::memory_order_acq_rel)) continue;
    if (!write_profile(g_profile_path, g_opts.profile_format)) warn_cannot_write("the profile", g_profile_path, errno);
    ++g_signal_dumps;
  }
  return nullptr;
}

// Starts the profile thread when it is wanted and not started yet.
LCA_SAMPLING_TEXT __attribute__((noinline)) void start_dump_thread() {
  int expected = kDumpThreadWanted;
  if (!g_dump_thread.compare_exchange_strong(expected, kDumpThreadStarted, std::memory_order_acq_rel)) return;
  Busy busy;  // pthread_create allocates (the thread's TLS)
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);  // the thread inherits it
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  // 1 MiB, not the default (RLIMIT_STACK, 8 MiB): under transparent huge pages
  // "always", the kernel may back a thread stack of 2 MiB or more with a huge
  // page at its first touch (2 MiB resident for the few KiB this thread
  // uses).  The writer's frames take ~25 KiB; __cxa_demangle keeps its work
  // arrays on the stack, ~64 bytes a character of the mangled name.
  pthread_attr_setstacksize(&attr, std::size_t{1} << 20);
  pthread_t thread;
  int err = pthread_create(&thread, &attr, dump_thread_main, nullptr);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (err != 0) {
    g_dump_thread.store(kDumpThreadNone, std::memory_order_relaxed);
    report_warning("cannot start the profile thread: the profile signal writes no profile");
  }
}

// Async-signal-safe: an atomic store and sem_post.
LCA_SAMPLING_TEXT void on_profile_signal(int) {
  int saved = errno;
  g_dump_pending.store(1, std::memory_order_release);
  sem_post(&g_dump_sem);
  errno = saved;
}

LCA_SAMPLING_TEXT bool tables_ready() {
  if (g_sites) return true;
  g_sites = static_cast<Site*>(os_map(kSites * sizeof(Site)));
  if (!g_sites) return false;
  // Touched in order as stacks appear: with transparent huge pages the first
  // stack would fault in 2 MiB instead of 4 KiB.
  os_advise_huge(g_sites, kSites * sizeof(Site), false);
  SiteIndex* index = index_create(kInitialIndex);
  if (!index) {
    os_unmap(g_sites, kSites * sizeof(Site));
    g_sites = nullptr;
    return false;
  }
  g_site_index.store(index, std::memory_order_release);
  for (Shard& s : g_shards) s.lock.held.store(false, std::memory_order_relaxed);
  return true;
}

LCA_SAMPLING_TEXT void start(TrackMode mode, std::uint64_t sample_bytes) {
  if (!tables_ready()) {
    report_warning("allocation tracking is off: no memory for its tables");
    return;
  }
  init_skip_ranges();
  g_start_pid = getpid();
  g_sample_bytes = sample_bytes ? sample_bytes : kDefaultSampleBytes;
  g_track_mode = mode;
  reset_countdown();
  // Full mode keeps every call on the slow paths, as Valgrind mode does: the
  // calling thread gives up its fast paths now (threads made later never get
  // them: heap_for_thread).
  if (mode == TrackMode::full) tls_heap = &g_no_heap;
}

}  // namespace

// --- fork (called by lifecycle.c++'s handlers) ------------------------------------

LCA_SAMPLING_TEXT void track_prefork() {
  pthread_mutex_lock(&g_sym_lock);
  pthread_mutex_lock(&g_site_lock);
  for (Shard& s : g_shards) spin_lock(s.lock);
  pthread_mutex_lock(&g_pool_lock);
  fork_hold(&g_sym_lock);
  fork_hold(&g_site_lock);
  fork_hold_range(std::begin(g_shards), std::end(g_shards));
  fork_hold(&g_pool_lock);
}
LCA_SAMPLING_TEXT void track_postfork_parent() {
  pthread_mutex_unlock(&g_pool_lock);
  for (Shard& s : g_shards) spin_unlock(s.lock);
  pthread_mutex_unlock(&g_site_lock);
  pthread_mutex_unlock(&g_sym_lock);
}
// The locks track_prefork took, this thread's in the child too, are released as
// the parent releases them (plain mutexes: glibc checks no owner).  Before
// session 18 the child re-initialised them while held, which DRD reports as
// "Mutex reinitialization" (and helgrind and DRD then still took them for the
// parent's: tests/unit/track, test_process_heap_threads_and_fork, under DRD).
// The report lock is not taken before fork: a parent's thread may have been
// writing a report; its lock is re-made only then.
LCA_SAMPLING_TEXT void track_postfork_child(bool locked) {
  tls_rng = 0;  // the child samples other allocations than its parent
  // The parent's profile thread is not in the child: the child starts its own
  // at its next allocation, which the zero countdown sends to the tracker.  A
  // request the parent had not answered yet was the parent's.  g_dump_sem is
  // left as it is (the parent's thread counted as a waiter costs a futex wake
  // a post; its count, at most a wake-up that finds no request).
  g_dump_pending.store(0, std::memory_order_relaxed);
  if (g_dump_thread.load(std::memory_order_relaxed) == kDumpThreadStarted)
    g_dump_thread.store(kDumpThreadWanted, std::memory_order_relaxed);
  // The child's first allocation draws its countdown afresh (first_countdown)
  // and is judged by it: had the parent's count been left, the allocation
  // where it ran out would have been drawn for again, and sampled with the
  // square of its probability.
  tls_track_countdown = 0;
  if (!locked) return;
  pthread_mutex_unlock(&g_pool_lock);
  for (Shard& s : g_shards) s.lock.held.store(false, std::memory_order_relaxed);
  pthread_mutex_unlock(&g_site_lock);
  pthread_mutex_unlock(&g_sym_lock);
  if (pthread_mutex_trylock(&g_report_lock) == 0)
    pthread_mutex_unlock(&g_report_lock);
  else
    pthread_mutex_init(&g_report_lock, nullptr);
}


// --- entry points ----------------------------------------------------------------------

LCA_SAMPLING_TEXT void* track_pool_alloc(std::size_t bytes) { return pool_alloc(bytes); }

namespace {
// Relative report paths are taken from the working directory at start-up, not
// at exit: a program that changed directory (git -C DIR, make -C DIR, a
// daemon's chdir("/")) wrote its reports into that directory, or nowhere
// (tests/integration/track.sh, "chdir").  The absolute paths live in a
// mapping of their own, made only when a path is relative.
LCA_SAMPLING_TEXT void resolve_paths() {
  const char* in[2] = {g_opts.leak_report, g_opts.profile};
  const char** out[2] = {&g_leak_path, &g_profile_path};
  char cwd[4096];
  bool have_cwd = false;
  char* room = nullptr;
  constexpr std::size_t kCap = sizeof cwd + sizeof g_opts.profile + 1;
  for (int i = 0; i < 2; ++i) {
    if (!in[i][0] || in[i][0] == '/' || std::strcmp(in[i], "-") == 0) continue;
    if (!have_cwd && !(have_cwd = getcwd(cwd, sizeof cwd) != nullptr)) return;  // relative it stays
    if (!room && !(room = static_cast<char*>(os_map(align_up(2 * kCap, os_page_size()))))) return;
    char* dst = room + i * kCap;
    std::snprintf(dst, kCap, "%s%s%s", cwd, cwd[1] ? "/" : "", in[i]);
    *out[i] = dst;
  }
}
}  // namespace

namespace {
// path (absolute) without "." and empty components, each ".." taking the one
// before it back, into out; false when it does not fit (out is then path).
bool normalize_path(const char* path, char* out, std::size_t cap) {
  std::size_t len = std::strlen(path);
  if (len >= cap) return false;
  std::memcpy(out, path, len + 1);
  if (path[0] != '/') return false;
  std::size_t k = 1;  // out[0, k): "/" or "/a/b"
  for (const char* p = path; *p;) {
    while (*p == '/') ++p;
    const char* e = p;
    while (*e && *e != '/') ++e;
    std::size_t n = static_cast<std::size_t>(e - p);
    if (n == 0 || (n == 1 && p[0] == '.')) {
      // nothing
    } else if (n == 2 && p[0] == '.' && p[1] == '.') {
      while (k > 1 && out[k - 1] != '/') --k;
      if (k > 1) --k;
    } else {
      if (k > 1) out[k++] = '/';
      std::memmove(out + k, p, n);
      k += n;
    }
    p = e;
  }
  out[k] = 0;
  return true;
}

// Whether the reports' paths (resolve_paths' absolute ones, %p in them
// expanded) name one file: the same path once normalised; or two paths of a
// file that exists (device and inode: a symbolic or hard link); or the same
// name in a directory reached by two paths (a link to a directory), for a
// file not made yet.  Compared as strings before (options_parse), "x" and
// "./x" passed as two files: the profile, written second at exit, truncated
// the leak report.  (".." is taken lexically: through a linked directory it
// may name another, which the checks by inode catch where the files exist.)
bool same_report_file(const char* a, const char* b) {
  char ea[4096 + 512], eb[4096 + 512], na[sizeof ea], nb[sizeof eb];
  expand_path(a, ea, sizeof ea);
  expand_path(b, eb, sizeof eb);
  normalize_path(ea, na, sizeof na);
  normalize_path(eb, nb, sizeof nb);
  if (std::strcmp(na, nb) == 0) return true;
  struct stat sa, sb;
  if (stat(na, &sa) == 0 && stat(nb, &sb) == 0) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  char* ba = std::strrchr(na, '/');
  char* bb = std::strrchr(nb, '/');
  if (!ba || !bb || std::strcmp(ba, bb) != 0) return false;
  ba[ba == na ? 1 : 0] = 0, bb[bb == nb ? 1 : 0] = 0;  // their directories ("/" for the root)
  return stat(na, &sa) == 0 && stat(nb, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}
}  // namespace

LCA_SAMPLING_TEXT void track_note_constructor_caller(const void* ra) { g_constructor_caller = ra; }

LCA_SAMPLING_TEXT void track_init(const Options& o) {
  g_opts = o;
  bool leaks = o.leak_report[0] != 0;
  bool profile = o.profile[0] != 0;
  if (!leaks && !profile && o.sample == 0) return;
  resolve_paths();
  // leak_report needs every block; so does sample=1.  profile alone samples.
  TrackMode mode = (leaks && o.sample == 0) || o.sample == 1 ? TrackMode::full : TrackMode::sample;
  start(mode, o.sample);
  if (g_track_mode == TrackMode::off) return;
  // leak_report and profile naming one file (options_parse compares the
  // strings only): as there, a warning, and the leak report on stderr.  (After
  // start: expand_path reads g_start_pid.)
  if (leaks && profile && std::strcmp(o.leak_report, "-") != 0 && std::strcmp(o.profile, "-") != 0 &&
      same_report_file(g_leak_path, g_profile_path)) {
    report_warning("LIBCALLOC_OPTIONS: leak_report and profile name the same file, the leak report goes to stderr: ",
                   g_profile_path);
    g_leak_path = "-";
  }
  int sig = o.profile_signal < 0 ? SIGUSR2 : o.profile_signal;
  int none = kDumpThreadNone;
  if (profile && sig > 0 && g_dump_thread.compare_exchange_strong(none, kDumpThreadWanted)) {
    sem_init(&g_dump_sem, 0, 0);
    start_dump_thread();
    struct sigaction sa{};
    sa.sa_handler = on_profile_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, nullptr);
  }
}

namespace {
// The reports at exit: in .text, away from the code every program runs.
__attribute__((noinline)) void write_exit_reports() {
  ReportLock lock;
  g_exit_reported = true;  // the profile thread writes no more: this profile answers its requests
  if (g_opts.leak_report[0] && !write_leak_report(g_leak_path))
    warn_cannot_write("the leak report", g_leak_path, errno);
  if (g_opts.profile[0] && !write_profile(g_profile_path, g_opts.profile_format))
    warn_cannot_write("the profile", g_profile_path, errno);
}
}  // namespace

LCA_SAMPLING_TEXT void track_at_exit() {
  if (g_track_mode != TrackMode::off) write_exit_reports();
}

namespace {
// The block of a tracked allocation: from domain_alloc, or when unpooled from
// the arena or a mapping (never a span, so that its free reaches free_cold).
// Zero-filled when `zero` (calloc): a large one straight from the large-block
// layer, whose fresh mappings are zero already and are left untouched (a
// memset there made every page of a large calloc resident while sampling).
LCA_SAMPLING_TEXT void* tracked_block(std::size_t size, std::size_t alignment, bool unpooled, bool zero) {
#if CALLOC_SECURE
  // --enable-secure: the process heap is the secure heap, whose every free
  // reaches malloc.c++'s secure_free (and track_free); its blocks are zero-filled.
  (void)unpooled;
  void* z = secure_process_alloc(size, alignment);
  if (zero && z && secure_vg()) secure_vg_zeroed(z, size);  // as calloc_impl tells memcheck
  return z;
#endif
  if (zero && size > kLargeThreshold && !on_valgrind()) return domain_calloc_large(&g_process_domain, size, alignment);
  void* p = unpooled ? domain_alloc_unpooled(&g_process_domain, size, alignment)
                     : domain_alloc(&g_process_domain, size, alignment);
  if (p && zero) std::memset(p, 0, size);
  return p;
}

__attribute__((always_inline)) inline void* track_alloc(std::size_t size, std::size_t alignment, bool zero,
                                                        const void* marker) {
  if (size > kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
  if (__builtin_expect(g_dump_thread.load(std::memory_order_relaxed) == kDumpThreadWanted, 0) && !tls_track_busy)
    start_dump_thread();  // a forked child's first allocation
  TrackMode mode = g_track_mode;
  bool sampled = mode == TrackMode::full;
  if (mode == TrackMode::sample && !tls_track_busy) {
    // A thread's first allocation (its countdown starts at 0 and its
    // generator is not seeded: first_countdown) is counted down from an
    // interval drawn now, like any other.
    if (tls_rng == 0) first_countdown(size);
    sampled = tls_track_countdown < 0;
  }
  if (tls_track_busy || !sampled) {
    // Busy: the countdown stays as it is, so the next allocation is the
    // sample.  Sampling, it is the count left after the first draw.
    if (!tls_track_busy && mode != TrackMode::sample) reset_countdown();
    void* p = tracked_block(size, alignment, false, zero);
    if (!p) errno = ENOMEM;
    return p;
  }
  Busy busy;
  void* p = tracked_block(size, alignment, mode != TrackMode::full, zero);
  if (!p) {
    errno = ENOMEM;
    return nullptr;
  }
  std::uint64_t w, bytes;
  sample_weight(size, &w, &bytes);
  record(p, size, w, bytes, marker);
  if (mode == TrackMode::sample) tls_track_countdown = next_interval();
  return p;
}
}  // namespace

LCA_SAMPLING_TEXT __attribute__((noinline)) void* track_malloc(std::size_t size, std::size_t alignment) {
  return track_alloc(size, alignment, false, __builtin_return_address(0));
}

LCA_SAMPLING_TEXT __attribute__((noinline)) void* track_calloc(std::size_t size) {
  return track_alloc(size, 16, true, __builtin_return_address(0));
}

LCA_SAMPLING_TEXT void track_free(void* p) {
  if (tls_track_busy || g_track_mode == TrackMode::off) return;
  BlockNode old;
  block_take(p, &old);
}

LCA_SAMPLING_TEXT void track_forget_live(void* p) {
  if (tls_track_busy || g_track_mode == TrackMode::off) return;
  int saved = errno;
  BlockNode old;
  block_take_live(p, &old);
  errno = saved;
}

std::uint64_t track_lookups_for_test() { return tls_track_lookups; }

bool track_line_for_test(const unsigned char* line, std::size_t len, std::uintptr_t rel, const char** file,
                         std::uint32_t* line_no) {
  Sections sec;
  sec.line = line;
  sec.line_len = len;
  Target t{};
  t.rel = rel;
  parse_line_tables(sec, &t, 1);
  if (!t.file) return false;
  *file = t.file, *line_no = t.line;
  return true;
}

namespace {
// realloc in the process heap, untracked: with --enable-secure a secure block
// moves within the secure heap (as lca_realloc does), any other goes to the core.
LCA_SAMPLING_TEXT void* heap_realloc(void* p, std::size_t size) {
#if CALLOC_SECURE
  if (void* out; secure_realloc_if_secure(secure_process_heap(), p, size, &out, true)) return out;
#endif
  ResizeResult how;
  return block_realloc(&g_process_domain, p, size, true, &how);
}

// A block of a module heap (a SecureAllocator's -- in a build without
// --enable-secure --, a HugePageAllocator's), or nobody's: not the process
// heap's, so never recorded; heap_realloc resizes it in its own heap (or reports
// it).  The sampled realloc below moved it to the process heap otherwise.
bool module_block(const void* p) {
  LargeInfo info;
  if (registry_lookup(p) || large_lookup(p, &info)) return false;
#if CALLOC_SECURE
  if (secure_owns(p)) return false;  // the process heap's (a SecureAllocator's is recorded, as before)
#endif
  return true;
}
}  // namespace

LCA_SAMPLING_TEXT __attribute__((noinline)) void* track_realloc(void* p, std::size_t size) {
  if (tls_track_busy) {
    void* q = heap_realloc(p, size);
    if (!q) errno = ENOMEM;
    return q;
  }
  if (size > kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
  const void* marker = __builtin_return_address(0);
  BlockNode old;
  bool was_tracked = block_take_live(p, &old);
  // A thread's first allocation a realloc: drawn as in track_alloc (it was
  // always a sample, the countdown's 0 less size being negative).
  if (g_track_mode == TrackMode::sample && tls_rng == 0) first_countdown(0);
  bool sample_now = g_track_mode == TrackMode::full || track_countdown(size);
  if (!sample_now) {
    void* q = heap_realloc(p, size);
    if (!q) {
      if (was_tracked) block_insert(p, old.site, old.weight_fx, old.bytes);
      errno = ENOMEM;
    }
    return q;
  }
  if (module_block(p)) {
    void* q = heap_realloc(p, size);
    if (!q) errno = ENOMEM;
    return q;
  }
  Busy busy;
  void* q;
  if (g_track_mode == TrackMode::full) {
    q = heap_realloc(p, size);
  } else {
#if CALLOC_SECURE
    q = heap_realloc(p, size);  // every free of a secure block reaches track_free
#else
    std::size_t old_size = block_usable_size(p, "realloc");
    q = domain_alloc_unpooled(&g_process_domain, size, 16);
    if (q) {
      std::memcpy(q, p, old_size < size ? old_size : size);
      block_free(p);
    }
#endif
    tls_track_countdown = next_interval();
  }
  if (!q) {
    if (was_tracked) block_insert(p, old.site, old.weight_fx, old.bytes);
    errno = ENOMEM;
    return nullptr;
  }
  std::uint64_t w, bytes;
  sample_weight(size, &w, &bytes);
  record(q, size, w, bytes, marker);
  return q;
}

void track_start_for_test(TrackMode mode, std::size_t sample_bytes) {
  if (mode == TrackMode::off) {
    g_track_mode = TrackMode::off;
    tls_track_countdown = INT64_MAX;
    return;
  }
  start(mode, sample_bytes);
}

bool track_wait_signal_dumps_for_test(std::uint64_t n, double seconds) {
  for (double waited = 0;; waited += 0.001) {
    pthread_mutex_lock(&g_report_lock);
    bool done = g_signal_dumps >= n;
    pthread_mutex_unlock(&g_report_lock);
    if (done) return true;
    if (waited >= seconds) return false;
    usleep(1000);
  }
}

bool track_write_leak_report_for_test(const char* path) {
  ReportLock lock;
  return write_leak_report(path);
}

TrackTotals track_totals() {
  TrackTotals t{};
  if (!g_sites) return t;
  std::size_t used = g_nsites.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < used; ++i) {
    const Site& s = g_sites[i];
    t.calls += static_cast<double>(s.calls_fx.load(std::memory_order_relaxed)) / kWeightOne;
    t.bytes += static_cast<double>(s.bytes.load(std::memory_order_relaxed));
    t.live_blocks += static_cast<double>(s.live_fx.load(std::memory_order_relaxed)) / kWeightOne;
    t.live_bytes += static_cast<double>(s.live_bytes.load(std::memory_order_relaxed));
  }
  t.samples = g_samples.load(std::memory_order_relaxed);
  t.stacks = used > 0 ? used - 1 : 0;
  return t;
}

__attribute__((noinline)) unsigned track_capture(void** frames, unsigned max, unsigned skip) {
  Busy busy;  // a thread's first capture may allocate (its stack bounds)
  void* raw[kUnwindMaxFrames];
  unsigned want = max + skip + 2;
  int n = unwind_capture(raw, static_cast<int>(want < kUnwindMaxFrames ? want : kUnwindMaxFrames));
  // raw[0] lies in this function; its caller's frame is the one returning to `mine`.
  const void* mine = __builtin_return_address(0);
  int i = 0;
  while (i < n && raw[i] != mine) ++i;
  i = i < n ? i + static_cast<int>(skip) : static_cast<int>(skip) + 1;
  unsigned k = 0;
  for (; i < n && k < max; ++i) frames[k++] = raw[i];
  return k;
}

void track_prepare_symbols(void* const* addrs, std::size_t n) { prepare_symbols(addrs, n); }

void track_symbolize(const void* addr, char* buf, std::size_t cap) {
  void* one = const_cast<void*>(addr);
  prepare_symbols(&one, 1);  // nothing to do when a batch had it
  Symbol s;
  symbolize(addr, &s);
  char where[320] = "";
  if (s.file) std::snprintf(where, sizeof where, " at %s:%u", s.file, s.line);
  if (s.function[0])
    std::snprintf(buf, cap, "%s+0x%lx%s (%s)", s.function, static_cast<unsigned long>(s.offset), where, s.module);
  else if (s.module[0])
    std::snprintf(buf, cap, "%p (%s+0x%lx)", addr, s.module, static_cast<unsigned long>(s.module_offset));
  else
    std::snprintf(buf, cap, "%p (%s)", addr, kNoModule);
}

}  // namespace lca

namespace custom_alloc {

bool dump_process_profile(const char* path, ProfileFormat format) {
  if (lca::g_track_mode == lca::TrackMode::off) {
    errno = ENOTSUP;
    return false;
  }
  lca::ReportLock lock;
  return lca::write_profile(path ? path : "-", static_cast<int>(format));
}

}  // namespace custom_alloc
