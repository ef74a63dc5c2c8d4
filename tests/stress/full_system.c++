// tests/stress/full_system.c++ -- FullSystem.StressTestAllComponents (TURN 11).
//
// Eight worker threads (more than the cores) run a random workload for a while:
// every size tier (slab sizes, arena sizes, dedicated mappings, and 2 MiB blocks
// of a HugePageAllocator, on huge pages where the system has them), from the
// process heap (lca_malloc) and from an independent heap shared by all workers
// (through the C++ API: MemoryAllocator, make_shared_in, custom_alloc::allocator
// containers), with a share of the blocks handed to other threads through a
// mailbox and freed there.  Every block carries a header (size, seed, origin)
// and a pattern over its whole length, checked before it is freed: a block
// corrupted by the allocator, or handed out twice, fails the test.  At the end:
// nothing leaks (the process heap's live block count is back to its start, the
// shared heap holds nothing, every huge block is unmapped), and a throughput
// phase (small blocks, eight threads) prints allocations per second against
// the request's target of 5 M/s on two cores.
//
// Duration: CALLOC_STRESS_SECONDS (seconds, may be fractional), else 2 s; `make
// check-stress` sets 60.  The optional modules (defragmentation, NUMA, tracking,
// secure) join through the Modules hooks below: SecureAllocator and
// NUMAAllocator blocks (both exist in every build), and, in a block guarded by its
// CALLOC_* define, a handle heap defragmented in the background while the workers
// use it (fragmentation < 10 % after the final pass) and an AllocationTracker
// that follows every module block (no false leak, a profile at the end).
#include <custom_alloc/huge_page_allocator.h++>
#include <custom_alloc/memory.h++>
#include <custom_alloc/numa_allocator.h++>
#include <custom_alloc/secure_allocator.h++>
#include <libcalloc.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#if CALLOC_DEFRAG
#include <custom_alloc/defrag.h++>
#endif
#if CALLOC_TRACKING
#include <custom_alloc/allocation_tracker.h++>
#endif

#include "../test-util.h++"

using custom_alloc::HugePageAllocator;
using custom_alloc::MemoryAllocator;
using test_util::check_pattern;
using test_util::fill_pattern;

namespace {

constexpr int kWorkers = 8;
constexpr std::size_t kSlotsPerWorker = 512;
constexpr std::size_t kMailboxSlots = 1024;
constexpr double kTargetAllocsPerSecond = 5e6;

double stress_seconds() {
  const char* env = std::getenv("CALLOC_STRESS_SECONDS");
  if (env && *env) {
    char* end = nullptr;
    double v = std::strtod(env, &end);
    if (end != env && v > 0) return v;
  }
  return 2.0;
}

// xorshift64*: cheap, per thread.
struct Rng {
  std::uint64_t s;
  std::uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }
};

// Where a block came from, so whoever frees it uses the matching call.
enum class Origin : std::uint32_t { process = 0x50524f43, shared_heap = 0x53484150, huge = 0x48554745 };

// Every block starts with this header; the pattern covers the rest.
struct Header {
  std::uint64_t size;
  std::uint64_t seed;
  Origin origin;
  std::uint32_t check;  // a digest of the three fields above
  static std::uint32_t digest(std::uint64_t size, std::uint64_t seed, Origin o) {
    std::uint64_t x = size * 0x9E3779B97F4A7C15ull ^ seed ^ static_cast<std::uint64_t>(o);
    return static_cast<std::uint32_t>(x ^ (x >> 32));
  }
};
static_assert(sizeof(Header) == 24);

struct Shared {
  MemoryAllocator heap;             // the independent heap every worker uses
  HugePageAllocator huge;           // 2 MiB blocks
  std::atomic<void*> mailbox[kMailboxSlots] = {};
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> corrupt{0};
  std::atomic<std::size_t> alloc_failures{0};
  std::atomic<std::size_t> allocations{0};
  std::atomic<std::size_t> cross_thread_frees{0};
  std::atomic<std::size_t> huge_blocks{0};
  std::atomic<std::size_t> huge_backings[3] = {};
  std::atomic<std::size_t> bytes_checked{0};
  char first_error[256] = {};
  std::atomic<bool> have_error{false};

  void note(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    corrupt.fetch_add(1);
    bool expected = false;
    if (have_error.compare_exchange_strong(expected, true)) {
      va_list ap;
      va_start(ap, fmt);
      std::vsnprintf(first_error, sizeof first_error, fmt, ap);
      va_end(ap);
    }
  }
};

// Size of the next block: mostly small, as real programs allocate.
std::size_t pick_size(Rng& rng, Origin* origin) {
  std::size_t r = rng.below(10000);
  *origin = rng.below(4) == 0 ? Origin::shared_heap : Origin::process;
  if (r < 7000) return 32 + rng.below(256 - 32);                // slab: tiny
  if (r < 9000) return 256 + rng.below(8192 - 256);             // slab: up to the limit
  if (r < 9800) return 8192 + rng.below(256 * 1024 - 8192);     // arena
  if (r < 9990) return 256 * 1024 + rng.below(4u << 20);        // arena top and dedicated mappings
  *origin = Origin::huge;
  return 2u << 20;                                              // a huge-page block
}

// Pattern over the whole block for blocks up to 64 KiB; above, the head and
// tail 16 KiB and one word in every 4 KiB page (a full check of every 4 MiB
// block would make the test measure memcmp, not the allocator).
void fill_block(void* p, std::size_t size, std::uint64_t seed, Origin origin) {
  Header h{size, seed, origin, Header::digest(size, seed, origin)};
  std::memcpy(p, &h, sizeof h);
  unsigned char* body = static_cast<unsigned char*>(p) + sizeof h;
  std::size_t n = size - sizeof h;
  if (n <= 64 * 1024) {
    fill_pattern(body, n, seed);
    return;
  }
  fill_pattern(body, 16 * 1024, seed);
  fill_pattern(body + n - 16 * 1024, 16 * 1024, seed + 1);
  for (std::size_t off = 16 * 1024; off + 8 <= n - 16 * 1024; off += 4096) {
    std::uint64_t w = test_util::pattern_word(seed, off);
    std::memcpy(body + off, &w, 8);
  }
}

// Checks a block and frees it with its origin's call.
void check_and_free(Shared& sh, void* p) {
  Header h;
  std::memcpy(&h, p, sizeof h);
  if (h.check != Header::digest(h.size, h.seed, h.origin)) {
    sh.note("block %p: header corrupted", p);
    return;  // leaked on purpose: freeing it with a wrong origin would crash
  }
  const unsigned char* body = static_cast<const unsigned char*>(p) + sizeof h;
  std::size_t n = h.size - sizeof h;
  long bad = -1;
  if (n <= 64 * 1024) {
    bad = check_pattern(body, n, h.seed);
    sh.bytes_checked.fetch_add(n, std::memory_order_relaxed);
  } else {
    bad = check_pattern(body, 16 * 1024, h.seed);
    if (bad < 0) {
      long tail = check_pattern(body + n - 16 * 1024, 16 * 1024, h.seed + 1);
      if (tail >= 0) bad = static_cast<long>(n - 16 * 1024) + tail;
    }
    for (std::size_t off = 16 * 1024; bad < 0 && off + 8 <= n - 16 * 1024; off += 4096) {
      std::uint64_t w = test_util::pattern_word(h.seed, off);
      if (std::memcmp(body + off, &w, 8) != 0) bad = static_cast<long>(off);
    }
  }
  if (bad >= 0) sh.note("block %p (%" PRIu64 " bytes): pattern differs at offset %ld", p, h.size, bad);
  switch (h.origin) {
    case Origin::process: lca_free(p); break;
    case Origin::shared_heap: sh.heap.deallocate(p); break;
    case Origin::huge:
      sh.huge.deallocate_huge(p);
      sh.huge_blocks.fetch_sub(1, std::memory_order_relaxed);
      break;
  }
}

void* allocate_block(Shared& sh, Rng& rng) {
  Origin origin;
  std::size_t size = pick_size(rng, &origin);
  void* p = nullptr;
  switch (origin) {
    case Origin::process: p = lca_malloc(size); break;
    case Origin::shared_heap: p = sh.heap.allocate(size); break;
    case Origin::huge:
      p = sh.huge.allocate_huge(size);
      if (p) {
        sh.huge_blocks.fetch_add(1, std::memory_order_relaxed);
        int i = HugePageAllocator::backing_index(sh.huge.backing_of(p));
        if (i >= 0 && i < 3) sh.huge_backings[i].fetch_add(1, std::memory_order_relaxed);
      }
      break;
  }
  if (p == nullptr) {
    sh.alloc_failures.fetch_add(1);
    return nullptr;
  }
  sh.allocations.fetch_add(1, std::memory_order_relaxed);
  fill_block(p, size, rng.next(), origin);
  return p;
}

// ---------------------------------------------------------------------------
// Extension points: the optional modules join the test here, each in a block
// of its own guarded by its CALLOC_* define (config.h), so that a build
// without the module runs the rest unchanged.
//  - start():      before the workers (e.g. the background defragmenter thread)
//  - worker_step(): called by each worker every 64 operations, on the worker's
//                   thread (e.g. handle-heap allocations, allocate_on_node)
//  - finish():     after the workers have stopped and their blocks are freed;
//                  asserts the module's own end conditions
// What the request asks of each (TURN 11):
//  CALLOC_DEFRAG   a handle heap used by the workers and defragmented in the
//                  background while they run; final fragmentation < 10 %.
//  CALLOC_NUMA     NUMA-aware allocations (allocate_on_node) in the workers.
//  CALLOC_TRACKING tracking on for the whole run; no false leak at the end; a
//                  profile generated at the end.
//  CALLOC_SECURE   the secure heap's checks active for a share of the blocks.
// ---------------------------------------------------------------------------
// Per-worker state of the module blocks: plain arrays (thread_local, trivially
// destructible), emptied by worker_done() before the worker returns.
constexpr unsigned kModuleSlots = 16;
struct ModuleBlock {
  void* p;
  std::size_t size;
  std::uint64_t seed;
  int node;
};
#if CALLOC_DEFRAG
struct HandleSlot {
  custom_alloc::Handle h;
  std::size_t size;
  std::uint64_t seed;
};
thread_local HandleSlot tls_handles[kModuleSlots];
#endif
thread_local ModuleBlock tls_secure[kModuleSlots];
thread_local ModuleBlock tls_numa[kModuleSlots];

struct Modules {
  // SecureAllocator and NUMAAllocator exist in every build (NUMAAllocator with one
  // node 0 without libnuma); the handle heap and the tracker with their modules.
  custom_alloc::SecureAllocator secure;
  custom_alloc::NUMAAllocator numa;
  std::atomic<std::size_t> module_ops{0};
#if CALLOC_DEFRAG
  custom_alloc::HandleAllocator handles;
  // A long-lived, fragmented population: every other handle of 2 x 20 000 freed
  // at the start, the rest checked by the workers and compacted in the
  // background.  Three size classes, so that the last, partly filled span of
  // each class (up to 64 KiB apiece) weighs little against the live bytes.
  static constexpr std::size_t kLongLived = 20000;
  std::vector<custom_alloc::Handle> long_lived;
  std::thread defragmenter;
  std::atomic<bool> defrag_stop{false};
  std::atomic<std::size_t> defrag_passes{0}, defrag_moves{0};
  float frag_start = 0, frag_end = 1;
#endif
#if CALLOC_TRACKING
  custom_alloc::AllocationTracker tracker;  // every module block is tracked
  std::atomic<std::size_t> tracked{0};
#endif

  // The end conditions of the modules, checked in finish() and asserted by the
  // test after its leak baseline (a passing ck_assert may allocate in Check).
  char failure[256] = {};
  void require(bool ok, const char* fmt, ...) __attribute__((format(printf, 3, 4))) {
    if (ok || failure[0]) return;
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(failure, sizeof failure, fmt, ap);
    va_end(ap);
  }

  static std::size_t long_lived_size(std::size_t i) { return std::size_t{64} << (i % 3); }

  void start(Shared& sh) {
    (void)sh;
    if (std::getenv("NOSTART")) return;
#if CALLOC_DEFRAG
    std::vector<custom_alloc::Handle> all;
    for (std::size_t i = 0; i < 2 * kLongLived; i++) {
      custom_alloc::Handle h = handles.allocate_handle(long_lived_size(i / 2));
      fill_pattern(handles.resolve(h), long_lived_size(i / 2), h);
      all.push_back(h);
    }
    for (std::size_t i = 0; i < all.size(); i++) {
      if (i % 2) handles.deallocate_handle(all[i]);
      else long_lived.push_back(all[i]);
    }
    frag_start = handles.fragmentation();
    handles.offline();  // this thread holds no pointer of the handle heap now
    defragmenter = std::thread([this] {
      custom_alloc::DefragBudget budget;
      budget.max_time = std::chrono::microseconds(1000);
      while (!defrag_stop.load(std::memory_order_relaxed)) {
        auto st = handles.defragment(budget);
        defrag_passes.fetch_add(1, std::memory_order_relaxed);
        defrag_moves.fetch_add(st.objects_relocated, std::memory_order_relaxed);
        handles.offline();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
#endif
  }

  void track_alloc(void* p, std::size_t size) {
#if CALLOC_TRACKING
    tracker.track_allocation(p, size);
    tracked.fetch_add(1, std::memory_order_relaxed);
#else
    (void)p, (void)size;
#endif
  }
  void track_free(void* p) {
#if CALLOC_TRACKING
    tracker.track_deallocation(p);
#else
    (void)p;
#endif
  }

  void check_module_block(Shared& sh, const ModuleBlock& b, const char* what) {
    long bad = check_pattern(b.p, b.size, b.seed);
    if (bad >= 0) sh.note("%s block %p (%zu bytes): pattern differs at offset %ld", what, b.p, b.size, bad);
  }

  void worker_step(Shared& sh, Rng& rng) {
    module_ops.fetch_add(1, std::memory_order_relaxed);
    if (std::getenv("NOSTEP")) return;
    // Hardened heap: canary-checked blocks of 1 B..4 KiB.
    ModuleBlock& sb = tls_secure[rng.below(kModuleSlots)];
    if (sb.p) {
      check_module_block(sh, sb, "secure");
      track_free(sb.p);
      secure.deallocate(sb.p);
      sb.p = nullptr;
    } else {
      sb.size = 1 + rng.below(4096);
      sb.seed = rng.next();
      sb.p = secure.allocate(sb.size);
      if (!sb.p) {
        sh.alloc_failures.fetch_add(1);
      } else {
        fill_pattern(sb.p, sb.size, sb.seed);
        track_alloc(sb.p, sb.size);
      }
    }
    if (std::getenv("NONUMA")) return;
    // NUMA: blocks on a chosen node (every usable node in turn), some migrated.
    ModuleBlock& nb = tls_numa[rng.below(kModuleSlots)];
    const int nodes = custom_alloc::NUMAAllocator::node_count();
    if (nb.p) {
      check_module_block(sh, nb, "numa");
      if (nodes > 1 && rng.below(4) == 0) {
        int to = static_cast<int>(rng.below(static_cast<std::size_t>(nodes)));
        if (custom_alloc::NUMAAllocator::node_usable(to)) {
          numa.migrate_to_node(nb.p, nb.size, to);
          check_module_block(sh, nb, "numa (migrated)");
        }
      }
      track_free(nb.p);
      numa.deallocate(nb.p);
      nb.p = nullptr;
    } else {
      int node = static_cast<int>(rng.below(static_cast<std::size_t>(nodes)));
      if (!custom_alloc::NUMAAllocator::node_usable(node)) node = 0;
      nb.size = rng.below(4) == 0 ? (64u << 10) + rng.below(2u << 20) : 16 + rng.below(8192);
      nb.seed = rng.next();
      nb.node = node;
      nb.p = numa.allocate_on_node(nb.size, node);
      if (!nb.p) {
        sh.alloc_failures.fetch_add(1);
      } else {
        fill_pattern(nb.p, nb.size, nb.seed);
        track_alloc(nb.p, nb.size);
      }
    }
    if (std::getenv("NODEFRAG")) return;
#if CALLOC_DEFRAG
    // Handle heap: the worker's own movable objects, written and checked through
    // resolve (valid until this thread's next call into the heap), some through
    // a pin; and one long-lived object read while the defragmenter moves them.
    HandleSlot& hs = tls_handles[rng.below(kModuleSlots)];
    if (hs.h) {
      if (rng.below(2) == 0) {
        auto pin = handles.pin(hs.h);
        long bad = check_pattern(pin.get(), hs.size, hs.seed);
        if (bad >= 0) sh.note("handle %#" PRIx64 " (pinned): pattern differs at offset %ld", hs.h, bad);
      } else {
        long bad = check_pattern(handles.resolve(hs.h), hs.size, hs.seed);
        if (bad >= 0) sh.note("handle %#" PRIx64 ": pattern differs at offset %ld", hs.h, bad);
      }
      handles.deallocate_handle(hs.h);
      hs.h = 0;
    } else {
      hs.size = 16 + rng.below(2048);
      hs.seed = rng.next();
      hs.h = handles.allocate_handle(hs.size);
      if (!hs.h) {
        sh.alloc_failures.fetch_add(1);
      } else {
        void* p = handles.resolve(hs.h);
        fill_pattern(p, hs.size, hs.seed);
      }
    }
    std::size_t k = rng.below(long_lived.size());
    long bad = check_pattern(handles.resolve(long_lived[k]), long_lived_size(k), long_lived[k]);
    if (bad >= 0) sh.note("long-lived handle %zu: pattern differs at offset %ld", k, bad);
    handles.offline();  // the worker now runs allocator work that holds no handle pointer
#endif
  }

  // On the worker's thread, before it returns: frees what it still holds.
  void worker_done(Shared& sh) {
    for (ModuleBlock& b : tls_secure)
      if (b.p) {
        check_module_block(sh, b, "secure");
        track_free(b.p);
        secure.deallocate(b.p);
        b.p = nullptr;
      }
    for (ModuleBlock& b : tls_numa)
      if (b.p) {
        check_module_block(sh, b, "numa");
        track_free(b.p);
        numa.deallocate(b.p);
        b.p = nullptr;
      }
#if CALLOC_DEFRAG
    for (HandleSlot& hs : tls_handles)
      if (hs.h) {
        long bad = check_pattern(handles.resolve(hs.h), hs.size, hs.seed);
        if (bad >= 0) sh.note("handle %#" PRIx64 ": pattern differs at offset %ld", hs.h, bad);
        handles.deallocate_handle(hs.h);
        hs.h = 0;
      }
    handles.offline();
#endif
  }

  void finish([[maybe_unused]] Shared& sh) {
    require(module_ops.load() > 0, "no module step ran");
    require(secure.get_stats().active_allocations == 0, "SecureAllocator: %zu blocks left", std::size_t{secure.get_stats().active_allocations});
    require(numa.get_stats().active_allocations == 0, "NUMAAllocator: %zu blocks left", std::size_t{numa.get_stats().active_allocations});
#if CALLOC_DEFRAG
    defrag_stop.store(true);
    if (defragmenter.joinable()) defragmenter.join();
    // One full pass with nothing else running: the long-lived half, fragmented
    // to about 50 % at the start, ends below 10 %, every object intact.
    handles.defragment();
    frag_end = handles.fragmentation();
    for (std::size_t k = 0; k < long_lived.size(); k++) {
      long bad = check_pattern(handles.resolve(long_lived[k]), long_lived_size(k), long_lived[k]);
      if (bad >= 0) sh.note("long-lived handle %zu after the final pass: pattern differs at offset %ld", k, bad);
    }
    std::printf("# full_system: handle heap: fragmentation %.1f %% at the start, %.1f %% at the end; %zu background "
                "passes moved %zu objects\n",
                100.0 * frag_start, 100.0 * frag_end, defrag_passes.load(), defrag_moves.load());
    // ASan and Valgrind modes keep freed blocks in a quarantine, where they
    // still count as used: the freed half leaves no hole to measure or close
    // there (the contents are checked all the same).
    if (!test_util::kAsanBuild && !test_util::running_on_valgrind()) {
      require(frag_start > 0.3, "the long-lived population was not fragmented (%.3f)", frag_start);
      require(frag_end < 0.1, "handle heap fragmentation %.3f after the final pass", frag_end);
    }
    for (custom_alloc::Handle h : long_lived) handles.deallocate_handle(h);
    long_lived.clear();
    require(handles.handle_stats().live_handles == 0, "%zu handles left", handles.handle_stats().live_handles);
    handles.offline();
#endif
#if CALLOC_TRACKING
    // Every tracked block was freed: no false leak; the profile counts them all.
    auto leaks = tracker.get_leaks();
    require(leaks.empty(), "tracker reports %zu leaks", leaks.size());
    auto profile = tracker.generate_profile();
    require(profile.total_allocations == tracked.load(), "profile counts %zu allocations, %zu tracked", profile.total_allocations, tracked.load());
    require(profile.live_allocations == 0, "profile: %zu live", profile.live_allocations);
    std::printf("# full_system: tracker: %zu allocations from %zu sites, no leak\n", profile.total_allocations,
                profile.allocation_sites.size());
#endif
  }
};

// One worker: slots of its own, a share of frees through the mailbox.
void worker(Shared& sh, Modules& modules, int id) {
  Rng rng{0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(id + 1)};
  void* slots[kSlotsPerWorker] = {};
  // The worker also keeps a container and shared objects on the shared heap,
  // through the C++ adapters: they change hands with the other workers' blocks.
  std::vector<std::uint64_t, custom_alloc::allocator<std::uint64_t>> log{custom_alloc::allocator<std::uint64_t>(sh.heap)};
  custom_alloc::shared_ptr<std::uint64_t> last_shared;
  std::uint64_t ops = 0;
  while (!sh.stop.load(std::memory_order_relaxed)) {
    std::size_t i = rng.below(kSlotsPerWorker);
    if (slots[i]) {
      if (rng.below(8) == 0) {  // hand it to whichever thread takes this mailbox slot
        void* old = sh.mailbox[rng.below(kMailboxSlots)].exchange(slots[i], std::memory_order_acq_rel);
        if (old) {
          check_and_free(sh, old);
          sh.cross_thread_frees.fetch_add(1, std::memory_order_relaxed);
        }
      } else {
        check_and_free(sh, slots[i]);
      }
      slots[i] = nullptr;
    } else {
      slots[i] = allocate_block(sh, rng);
    }
    if ((++ops & 63) == 0) {
      modules.worker_step(sh, rng);
      std::uint64_t v = rng.next();
      auto s = custom_alloc::make_shared_in<std::uint64_t>(sh.heap, v);
      if (*s != v) sh.note("make_shared_in value lost");
      last_shared = s;
      log.push_back(v);
      if (log.size() > 4096) {
        log.clear();
        log.shrink_to_fit();
      }
    }
  }
  for (void*& p : slots)
    if (p) check_and_free(sh, p);
  modules.worker_done(sh);
}

// Small blocks only, eight threads, each allocating a batch and freeing it:
// allocations per second of the allocator itself (one word written and checked
// per block).
double throughput_phase(double seconds, std::size_t* total_out, std::size_t* errors_out) {
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> total{0}, errors{0};
  std::vector<std::thread> pool;
  auto t0 = std::chrono::steady_clock::now();
  for (int t = 0; t < kWorkers; t++)
    pool.emplace_back([&, t] {
      void* batch[64];
      std::size_t n = 0, bad = 0;
      std::uint64_t tag = static_cast<std::uint64_t>(t) << 56;
      while (!stop.load(std::memory_order_relaxed)) {
        for (std::size_t k = 0; k < 64; k++) {
          batch[k] = lca_malloc(16 + ((k * 24) & 127));
          if (batch[k]) *static_cast<std::uint64_t*>(batch[k]) = tag | k;
        }
        for (std::size_t k = 0; k < 64; k++) {
          if (!batch[k] || *static_cast<std::uint64_t*>(batch[k]) != (tag | k)) bad++;
          lca_free(batch[k]);
        }
        n += 64;
      }
      total.fetch_add(n);
      errors.fetch_add(bad);
    });
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  for (auto& th : pool) th.join();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  *total_out = total.load();
  *errors_out = errors.load();
  return static_cast<double>(total.load()) / elapsed;
}

}  // namespace

START_TEST(test_stress_test_all_components) {
  const double seconds = stress_seconds();
  // Thread stacks glibc caches keep blocks of the process heap (test-util.h++).
  test_util::warm_thread_stack_cache(kWorkers + 8);
  // Outputs of a run (plain values: the measured run's are read after the leak
  // baseline comparison).
  double mixed_elapsed = 0, rate = 0;
  std::size_t fast_total = 0, fast_errors = 0, shared_heap_live = 0, huge_blocks_left = 0, corrupt = 0,
              alloc_failures = 0, allocations = 0, cross = 0, checked = 0;
  std::size_t backings[3] = {};
  HugePageAllocator::HugeStats hs{};
  std::string first_error, module_failure;
  auto run = [&](double seconds) {
    auto sh = custom_alloc::make_unique<Shared>();
    auto modules_owner = std::make_unique<Modules>();  // its own heap instances: not counted by lca_get_stats
    Modules& modules = *modules_owner;
    modules.start(*sh);
    std::vector<std::thread> pool;
    auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < kWorkers; t++) pool.emplace_back(worker, std::ref(*sh), std::ref(modules), t);
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds * 0.8));
    sh->stop.store(true);
    for (auto& th : pool) th.join();
    std::vector<std::thread>().swap(pool);  // its storage is a block of the process heap
    mixed_elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (auto& m : sh->mailbox)
      if (void* p = m.exchange(nullptr)) check_and_free(*sh, p);
    modules.finish(*sh);

    fast_total = 0, fast_errors = 0;
    rate = throughput_phase(seconds * 0.2, &fast_total, &fast_errors);
    shared_heap_live = sh->heap.get_stats().active_allocations;
    hs = sh->huge.huge_stats();
    huge_blocks_left = sh->huge_blocks.load();
    corrupt = sh->corrupt.load();
    alloc_failures = sh->alloc_failures.load();
    allocations = sh->allocations.load();
    cross = sh->cross_thread_frees.load();
    checked = sh->bytes_checked.load();
    for (int i = 0; i < 3; i++) backings[i] = sh->huge_backings[i].load();
    first_error = sh->first_error;
    module_failure = modules.failure;
    sh.reset();
    modules_owner.reset();
  };
  // A short first run sets up what lives as long as the process -- stdout's
  // buffer (the modules print), libnuma loaded by the first NUMAAllocator, the
  // handle heaps' and the hardened heaps' process-wide records -- so that the leak check
  // compares the measured run's end with its start, not with a process that had
  // not yet used the modules.  Its own checks are asserted too.
  run(seconds < 1 ? seconds / 4 : 0.25);
  ck_assert_msg(corrupt == 0, "warm-up run: %zu corrupted blocks; first: %s", corrupt, first_error.c_str());
  ck_assert_msg(module_failure.empty(), "warm-up run: %s", module_failure.c_str());
  lca_stats before;
  lca_get_stats(&before);
  run(seconds);
  lca_stats after;  // before anything else allocates (stdout's buffer, ...)
  lca_get_stats(&after);

  std::printf("# full_system: %.1f s mixed workload, %d threads on %u cores: %zu allocations (%.2f M/s), "
              "%zu freed by another thread, %.1f MB pattern-checked\n",
              mixed_elapsed, kWorkers, std::thread::hardware_concurrency(), allocations,
              static_cast<double>(allocations) / mixed_elapsed / 1e6, cross, static_cast<double>(checked) / 1e6);
  std::printf("# full_system: 2 MiB blocks by backing: hugetlb %zu, transparent %zu, normal %zu\n", backings[0],
              backings[1], backings[2]);
  std::printf("# full_system: throughput phase (small blocks, %d threads): %.2f M alloc/s (target %.0f M/s: %s)\n",
              kWorkers, rate / 1e6, kTargetAllocsPerSecond / 1e6,
              rate >= kTargetAllocsPerSecond ? "met" : "NOT met on this machine now");
  std::fflush(stdout);

  ck_assert_msg(corrupt == 0, "%zu corrupted blocks; first: %s", corrupt, first_error.c_str());
  ck_assert_msg(module_failure.empty(), "%s", module_failure.c_str());
  ck_assert_uint_eq(fast_errors, 0);
  ck_assert_uint_eq(alloc_failures, 0);
  ck_assert_uint_gt(allocations, 0);
  ck_assert_uint_gt(fast_total, 0);
  // No leak: the shared heap holds nothing, the huge blocks are unmapped, the
  // process heap has what it had.
  ck_assert_uint_eq(huge_blocks_left, 0);
  ck_assert_uint_eq(hs.live_blocks[0] + hs.live_blocks[1] + hs.live_blocks[2], 0);
  ck_assert_uint_eq(hs.allocations, hs.deallocations);
  ck_assert_uint_eq(shared_heap_live, 0);
  ck_assert_msg(after.active_allocations == before.active_allocations,
                "process heap: %zu live blocks before, %zu after", before.active_allocations,
                after.active_allocations);
}
END_TEST

int main() {
  TCase* tc;
  Suite* s = test_util::make_suite("full_system", &tc);
  tcase_set_timeout(tc, test_util::test_timeout() + 2 * stress_seconds());
  tcase_add_test(tc, test_stress_test_all_components);
  return test_util::run_suite(s);
}
