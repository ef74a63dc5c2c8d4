// tests/fuzz/fuzz-ops.c++ -- a libFuzzer harness over libcalloc's public API.
//
// The input is read as a sequence of operations (FuzzedDataProvider): the lca_*
// C functions on the process heap, independent MemoryAllocator heaps (made,
// used, destroyed with blocks still live), DefragmentationEngine passes over
// them, a HandleAllocator (handles, pins, passes, single moves) and a
// SecureAllocator.  A model keeps every live block: its address, requested size,
// alignment and the seed of the byte pattern written into all of it.  Checked
// after every operation: the blocks of the raw heaps do not overlap (one
// interval map over all of them); at every allocation: the alignment, the usable
// size (>= the request), calloc's and SecureAllocator's zero fill; at every
// free, realloc, move and check operation: the block's whole pattern.  The
// operations follow the documented API only (no double free, no write past the
// request, no use of a raw pointer across a defragmentation pass except through
// the callback), so any report -- ASan, UBSan, libcalloc's own abort or a model
// mismatch -- is a bug of libcalloc's.
//
// Built by scripts/fuzz against libcalloc configured with --disable-override
// and -fsanitize=address,undefined (so the fuzzer's own malloc stays glibc's,
// and libcalloc runs in ASan mode), or -fsanitize=undefined alone (libcalloc's
// fast paths).  FUZZ_THREADS=1 in the environment adds a
// second thread that allocates and frees in the same heaps, and frees blocks
// the main thread hands it (cross-thread frees); see Worker.
#include <fuzzer/FuzzedDataProvider.h>

#ifdef FUZZ_HAVE_CONFIG_H
#include "config.h"  // the build's CALLOC_SECURE, CALLOC_TRACKING (scripts/fuzz passes -I BUILD)
#endif
#include <libcalloc.h>
#include <custom_alloc/defrag.h++>
#include <custom_alloc/huge_page_allocator.h++>
#include <custom_alloc/memory_allocator.h++>
#include <custom_alloc/numa_allocator.h++>
#include <custom_alloc/secure_allocator.h++>
#if CALLOC_TRACKING
#include <custom_alloc/allocation_tracker.h++>
#endif

#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include <fcntl.h>

using custom_alloc::DefragBudget;
using custom_alloc::DefragmentationEngine;
using custom_alloc::Handle;
using custom_alloc::HandleAllocator;
using custom_alloc::HugePageAllocator;
using custom_alloc::MemoryAllocator;
using custom_alloc::NUMAAllocator;
using custom_alloc::SecureAllocator;

namespace {

[[noreturn]] void fail(const char* what, const void* p, std::size_t a, std::size_t b) {
  std::fprintf(stderr, "fuzz-ops: %s (ptr %p, %zu, %zu)\n", what, p, a, b);
  std::abort();
}
#define CHECK(cond, what, p, a, b) \
  do {                             \
    if (!(cond)) fail(what, p, a, b); \
  } while (0)

// The pattern: block bytes are a window of a table of random bytes, at an
// offset the block's seed picks, so that fill and check are memcpy and memcmp
// (the byte loops were most of the run time, with the fuzzer's comparison
// tracing on them) and a copy shifted by any amount is caught.
constexpr std::size_t kMaxBlock = 7u << 20;  // above any size pick_size returns
constexpr std::size_t kWindows = 4096;
std::uint8_t* pattern_table() {
  static std::uint8_t* table = [] {
    auto* t = static_cast<std::uint8_t*>(std::malloc(kMaxBlock + kWindows));
    std::uint64_t x = 0x9E3779B97F4A7C15u;
    for (std::size_t i = 0; i < kMaxBlock + kWindows; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      t[i] = static_cast<std::uint8_t>(x >> 24);
    }
    return t;
  }();
  return table;
}
const std::uint8_t* window(std::uint32_t seed) { return pattern_table() + seed % kWindows; }
std::uint8_t kZeros[kMaxBlock];  // zero BSS (never written; const would put 7 MiB in .rodata)

void fill(void* p, std::size_t from, std::size_t to, std::uint32_t seed) {
  if (to > from) std::memcpy(static_cast<std::uint8_t*>(p) + from, window(seed) + from, to - from);
}
[[noreturn]] void mismatch(const void* p, const std::uint8_t* want, std::size_t n, const char* what) {
  auto* b = static_cast<const std::uint8_t*>(p);
  std::size_t i = 0;
  while (i < n && b[i] == want[i]) i++;
  fail(what, p, i, n);
}
void verify(const void* p, std::size_t n, std::uint32_t seed, const char* what) {
  if (n && std::memcmp(p, window(seed), n) != 0) mismatch(p, window(seed), n, what);
}
void verify_zero(const void* p, std::size_t n, const char* what) {
  if (n && std::memcmp(p, kZeros, n) != 0) mismatch(p, kZeros, n, what);
}

// numa: a NUMAAllocator's block; huge_heap: a HugePageAllocator's ordinary
// (MemoryAllocator) block; huge_block: its allocate_huge block.
enum class Owner : std::uint8_t { capi, heap0, heap1, handle_raw, secure, numa, huge_heap, huge_block };

struct Block {
  void* p;
  std::size_t size;   // bytes the pattern covers (requested, or the usable size once extended)
  std::size_t align;  // the alignment the address must keep
  std::uint32_t seed;
  Owner owner;
  bool aligned = false;   // C API: from aligned_alloc, posix_memalign or memalign
  bool extended = false;  // C API: size is the usable size (free_sized needs the request)
};

constexpr std::size_t kMaxLive = 32u << 20;  // bytes of live blocks at most
constexpr std::size_t kMaxBlocks = 512;

std::size_t pick_size(FuzzedDataProvider& in) {
  static constexpr std::size_t kEdges[] = {0,      1,       8,        15,       16,        17,        64,
                                           1008,   1024,    1025,     7168,     8192,      8193,      16384,
                                           65528,  65536,   65537,    262144,   1u << 19,  (1u << 20) - 4096,
                                           1u << 20, (1u << 20) + 1, 2u << 20, 4u << 20, (4u << 20) - 65536};
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0:
      return in.ConsumeIntegralInRange<std::size_t>(0, 256);
    case 1:
      return in.ConsumeIntegralInRange<std::size_t>(0, 8192);
    case 2:
      return in.ConsumeIntegralInRange<std::size_t>(8192, 1u << 20);
    case 3:
      return in.ConsumeIntegralInRange<std::size_t>((1u << 20) - 64, 3u << 20);
    default: {
      std::size_t e = kEdges[in.ConsumeIntegralInRange<std::size_t>(0, std::size(kEdges) - 1)];
      long delta = in.ConsumeIntegralInRange<long>(-33, 33);
      return (delta < 0 && static_cast<std::size_t>(-delta) > e) ? 0 : e + delta;
    }
  }
}
std::size_t pick_align(FuzzedDataProvider& in, unsigned min_shift) {
  return std::size_t{1} << in.ConsumeIntegralInRange<unsigned>(min_shift, 22);  // up to 4 MiB
}

// Debugging a report: FUZZ_TRACE=1 prints each operation's number and the
// model's block count; FUZZ_CHECK_EVERY=1 checks the counters after every one.
const bool kTrace = std::getenv("FUZZ_TRACE");
const bool kCheckEvery = std::getenv("FUZZ_CHECK_EVERY");

struct State {
  std::vector<Block> blocks;
  std::map<std::uintptr_t, std::size_t> intervals;  // start -> length (at least 1) of each raw block
  std::size_t live_bytes = 0;
  std::unique_ptr<MemoryAllocator> heaps[2];
  std::unique_ptr<HandleAllocator> handles;
  struct H {
    Handle h;
    std::size_t size;
    std::uint32_t seed;
  };
  std::vector<H> live_handles;
  std::vector<Handle> dead_handles;
  std::deque<HandleAllocator::PinGuard> pins;
  std::vector<void*> pinned_at;  // the address of each pin's object, in pins' order
  std::vector<Handle> pinned_handle;
  std::unique_ptr<SecureAllocator> secure;
  std::unique_ptr<NUMAAllocator> numa;
  std::unique_ptr<HugePageAllocator> huge;
  std::uint32_t next_seed = 1;
#if CALLOC_TRACKING
  std::unique_ptr<custom_alloc::AllocationTracker> tracker;
  std::map<void*, std::size_t> tracked;  // what the tracker was told is live
#endif

  MemoryAllocator* heap_of(Owner o) {
    switch (o) {
      case Owner::heap0:
        return heaps[0].get();
      case Owner::heap1:
        return heaps[1].get();
      case Owner::handle_raw:
        return handles.get();
      case Owner::numa:
        return numa.get();
      case Owner::huge_heap:
        return huge.get();
      default:
        return nullptr;
    }
  }

  void add_interval(const Block& b) {
    auto start = reinterpret_cast<std::uintptr_t>(b.p);
    std::size_t len = b.size ? b.size : 1;
    auto next = intervals.lower_bound(start);
    if (next != intervals.end() && next->first < start + len) fail("overlap with the next block", b.p, b.size, next->second);
    if (next != intervals.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second > start) fail("overlap with the previous block", b.p, b.size, prev->second);
    }
    intervals.emplace(start, len);
  }
  void remove_interval(const Block& b) {
    auto it = intervals.find(reinterpret_cast<std::uintptr_t>(b.p));
    if (it == intervals.end()) fail("model: no interval", b.p, b.size, 0);
    intervals.erase(it);
  }
  void add(void* p, std::size_t size, std::size_t align, Owner owner, bool fill_it = true, std::uint32_t seed = 0) {
    Block b{p, size, align, seed ? seed : next_seed++, owner};
    if (kTrace) std::fprintf(stderr, "fuzz-ops:   + %p size %zu align %zu owner %d\n", p, size, align, static_cast<int>(owner));
    CHECK(reinterpret_cast<std::uintptr_t>(p) % align == 0, "misaligned block", p, size, align);
    add_interval(b);
    if (fill_it) fill(p, 0, size, b.seed);
    blocks.push_back(b);
    live_bytes += size;
  }
  Block take(std::size_t i) {
    Block b = blocks[i];
    blocks[i] = blocks.back();
    if (kTrace) std::fprintf(stderr, "fuzz-ops:   - %p size %zu owner %d\n", b.p, b.size, static_cast<int>(b.owner));
    blocks.pop_back();
    remove_interval(b);
    live_bytes -= b.size;
    return b;
  }
  bool room(std::size_t size) const { return blocks.size() < kMaxBlocks && live_bytes + size <= kMaxLive; }
};

int open_null() { return ::open("/dev/null", O_WRONLY | O_CLOEXEC); }

void drain();  // FUZZ_THREADS: waits until the worker freed every block handed to it
void destroy_numa(State& s);
void destroy_huge(State& s);

// --- the lca_* C functions ------------------------------------------------

void capi_usable(State& s, std::size_t i) {
  Block& b = s.blocks[i];
  std::size_t usable = lca_usable_size(b.p);
  CHECK(usable >= b.size, "lca_usable_size below the request", b.p, usable, b.size);
}

void op_capi_alloc(State& s, FuzzedDataProvider& in) {
  std::size_t size = pick_size(in);
  if (!s.room(size)) return;
  int kind = in.ConsumeIntegralInRange<int>(0, 5);
  void* p = nullptr;
  std::size_t align = 16;
  bool zero = false;
  switch (kind) {
    case 0:
      p = lca_malloc(size);
      break;
    case 1: {
      std::size_t count = in.ConsumeIntegralInRange<std::size_t>(1, 16);
      size = size / count;
      p = lca_calloc(count, size);
      size *= count;
      zero = true;
      break;
    }
    case 2:
      align = pick_align(in, 0);
      p = lca_aligned_alloc(align, size);
      break;
    case 3: {
      align = pick_align(in, 3);
      int rc = lca_posix_memalign(&p, align, size);
      CHECK((rc == 0) == (p != nullptr), "posix_memalign result and pointer disagree", p, rc, size);
      break;
    }
    case 4:
      align = pick_align(in, 0);
      p = lca_memalign(align, size);
      break;
    case 5: {
      // A bad alignment: EINVAL and nothing allocated.
      std::size_t bad = in.ConsumeIntegralInRange<std::size_t>(3, 1u << 20);
      if ((bad & (bad - 1)) == 0) bad += 1;
      errno = 0;
      void* q = lca_aligned_alloc(bad, size);
      CHECK(!q && errno == EINVAL, "aligned_alloc accepted a bad alignment", q, bad, size);
      void* r = nullptr;
      int rc = lca_posix_memalign(&r, bad, size);
      CHECK(rc == EINVAL && !r, "posix_memalign accepted a bad alignment", r, bad, rc);
      return;
    }
  }
  CHECK(p, "C allocation failed", p, size, align);
  if (zero) verify_zero(p, size, "calloc block not zeroed");
  s.add(p, size, align, Owner::capi);
  s.blocks.back().aligned = kind >= 2;
  capi_usable(s, s.blocks.size() - 1);
}

void op_capi_free(State& s, std::size_t i, FuzzedDataProvider& in) {
  Block b = s.take(i);
  verify(b.p, b.size, b.seed, "C block corrupted before free");
  errno = 1234;
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
    case 1:
      lca_free(b.p);
      CHECK(errno == 1234, "lca_free changed errno", b.p, static_cast<std::size_t>(errno), 0);
      break;
    case 2:
    case 3:
      // C23: free_aligned_sized for aligned_alloc's blocks, free_sized for the others.
      if (b.extended)
        lca_free(b.p);
      else if (b.aligned)
        lca_free_aligned_sized(b.p, b.align, b.size);
      else
        lca_free_sized(b.p, b.size);
      break;
  }
}

void op_capi_realloc(State& s, std::size_t i, FuzzedDataProvider& in) {
  std::size_t size = in.ConsumeBool() ? pick_size(in) : 0;
  if (in.ConsumeBool()) {  // near the current size: the in-place paths
    std::size_t cur = s.blocks[i].size;
    long d = in.ConsumeIntegralInRange<long>(-4096, 4096);
    size = (d < 0 && static_cast<std::size_t>(-d) > cur) ? 1 : cur + d;
    if (size > kMaxBlock / 2) size = kMaxBlock / 2;
  }
  if (size > s.blocks[i].size && !s.room(size - s.blocks[i].size)) return;
  Block b = s.take(i);
  verify(b.p, b.size, b.seed, "C block corrupted before realloc");
  bool array = in.ConsumeBool() && size;
  void* q;
  if (array) {
    std::size_t n = in.ConsumeIntegralInRange<std::size_t>(1, 8);
    size = size / n * n;
    if (!size) size = n;
    q = lca_reallocarray(b.p, n, size / n);
  } else {
    q = lca_realloc(b.p, size);
  }
  if (size == 0 && !array) {
    CHECK(!q, "realloc(p, 0) returned a block", q, 0, 0);
    return;
  }
  CHECK(q, "realloc failed", b.p, b.size, size);
  std::size_t keep = b.size < size ? b.size : size;
  verify(q, keep, b.seed, "realloc lost the contents");
  // The block's alignment after realloc: malloc's, whatever it was allocated with.
  // A block realloc kept in place keeps its alignment; a moved one has malloc's.
  // Either is realloc's block now (C23: freed by free_sized, not free_aligned_sized).
  Block nb{q, size, q == b.p ? b.align : 16, b.seed, Owner::capi};
  CHECK(reinterpret_cast<std::uintptr_t>(q) % 16 == 0, "realloc result misaligned", q, size, 16);
  s.add_interval(nb);
  fill(q, keep, size, b.seed);
  s.blocks.push_back(nb);
  s.live_bytes += size;
  capi_usable(s, s.blocks.size() - 1);
}

// Uses the whole usable size: the bytes past the request belong to the caller.
void op_capi_extend(State& s, std::size_t i) {
  Block& b = s.blocks[i];
  std::size_t usable = lca_usable_size(b.p);
  CHECK(usable >= b.size, "lca_usable_size below the request", b.p, usable, b.size);
  if (usable == b.size || usable > kMaxBlock || !s.room(usable - b.size)) return;
  Block old = s.take(i);
  verify(old.p, old.size, old.seed, "C block corrupted before extend");
  Block nb = old;
  nb.size = usable;
  nb.extended = true;
  s.add_interval(nb);
  fill(nb.p, old.size, usable, nb.seed);
  s.blocks.push_back(nb);
  s.live_bytes += usable;
}

// --- MemoryAllocator heaps ----------------------------------------------------

void drop_owner(State& s, Owner o) {
  for (std::size_t i = s.blocks.size(); i-- > 0;)
    if (s.blocks[i].owner == o) s.take(i);
}

void op_heap_alloc(State& s, FuzzedDataProvider& in, Owner o) {
  MemoryAllocator* h = s.heap_of(o);
  if (!h) {
    if (o == Owner::handle_raw) return;
    if (o == Owner::numa)
      s.numa = std::make_unique<NUMAAllocator>();
    else if (o == Owner::huge_heap)
      s.huge = std::make_unique<HugePageAllocator>();
    else
      s.heaps[o == Owner::heap0 ? 0 : 1] = std::make_unique<MemoryAllocator>();
    h = s.heap_of(o);
  }
  std::size_t size = pick_size(in);
  if (!s.room(size)) return;
  std::size_t align = in.ConsumeBool() ? 16 : pick_align(in, 4);
  void* p = h->allocate(size, align);
  CHECK(p, "MemoryAllocator::allocate failed", p, size, align);
  std::size_t usable = h->get_allocation_size(p);
  CHECK(usable >= size, "get_allocation_size below the request", p, usable, size);
  s.add(p, size, align, o);
}

void op_heap_free(State& s, std::size_t i, FuzzedDataProvider& in) {
  Owner o = s.blocks[i].owner;
  Block b = s.take(i);
  verify(b.p, b.size, b.seed, "heap block corrupted before free");
  // Any heap's deallocate routes a block to its own heap.
  MemoryAllocator* via = s.heap_of(o);
  if (in.ConsumeBool()) {
    Owner other[] = {Owner::heap0, Owner::heap1, Owner::handle_raw, Owner::numa, Owner::huge_heap};
    if (MemoryAllocator* x = s.heap_of(other[in.ConsumeIntegralInRange<int>(0, 4)])) via = x;
  }
  via->deallocate(b.p);
}

void op_heap_realloc(State& s, std::size_t i, FuzzedDataProvider& in) {
  MemoryAllocator* h = s.heap_of(s.blocks[i].owner);
  std::size_t size = pick_size(in);
  if (in.ConsumeBool()) {
    std::size_t cur = s.blocks[i].size;
    long d = in.ConsumeIntegralInRange<long>(-4096, 4096);
    size = (d < 0 && static_cast<std::size_t>(-d) > cur) ? 1 : cur + d;
    if (size > kMaxBlock / 2) size = kMaxBlock / 2;
  }
  if (size > s.blocks[i].size && !s.room(size - s.blocks[i].size)) return;
  bool inplace = in.ConsumeBool();
  Block b = s.take(i);
  verify(b.p, b.size, b.seed, "heap block corrupted before reallocate");
  void* q = inplace ? h->try_realloc_inplace(b.p, size) : h->reallocate(b.p, size);
  if (!inplace && size == 0) {
    CHECK(!q, "reallocate(p, 0) returned a block", q, 0, 0);
    return;
  }
  std::size_t align = q == b.p ? b.align : 16;
  if (!q) {
    CHECK(inplace, "reallocate failed", b.p, b.size, size);
    q = b.p;  // not resized: the block is as it was
    size = b.size;
    align = b.align;
  } else if (inplace) {
    CHECK(q == b.p, "try_realloc_inplace moved the block", q, b.size, size);
    align = b.align;
  }
  std::size_t keep = b.size < size ? b.size : size;
  verify(q, keep, b.seed, "reallocate lost the contents");
  std::size_t usable = h->get_allocation_size(q);
  CHECK(usable >= size, "get_allocation_size below the request after reallocate", q, usable, size);
  Block nb{q, size, align, b.seed, b.owner};
  CHECK(reinterpret_cast<std::uintptr_t>(q) % align == 0, "reallocate result misaligned", q, size, align);
  s.add_interval(nb);
  fill(q, keep, size, b.seed);
  s.blocks.push_back(nb);
  s.live_bytes += size;
}

struct CallbackStop {};

void op_defrag_raw(State& s, FuzzedDataProvider& in) {
  drain();
  int which = in.ConsumeIntegralInRange<int>(0, 1);
  MemoryAllocator* h = s.heaps[which].get();
  if (!h) return;
  Owner o = which ? Owner::heap1 : Owner::heap0;
  DefragmentationEngine engine;
  float before = engine.calculate_fragmentation(*h);
  CHECK(before >= 0.0f && before <= 1.0f, "fragmentation out of [0, 1]", h, static_cast<std::size_t>(before * 1000), 0);
  std::map<void*, std::size_t> where;  // address -> index in blocks
  for (std::size_t i = 0; i < s.blocks.size(); i++)
    if (s.blocks[i].owner == o) where.emplace(s.blocks[i].p, i);
  DefragBudget budget;
  int mode = in.ConsumeIntegralInRange<int>(0, 3);
  if (mode == 1) budget.max_objects = in.ConsumeIntegralInRange<std::size_t>(0, 64);
  if (mode == 2) budget.max_bytes = in.ConsumeIntegralInRange<std::size_t>(0, 1u << 20);
  if (mode == 3) budget.max_time = std::chrono::microseconds(in.ConsumeIntegralInRange<int>(0, 200));
  budget.measure = in.ConsumeBool();
  long throw_after = in.ConsumeBool() ? in.ConsumeIntegralInRange<long>(0, 50) : -1;
  long moves = 0;
  std::vector<std::pair<std::size_t, void*>> moved;
  auto cb = [&](void* old, void* now, std::size_t size) {
    auto it = where.find(old);
    if (it == where.end()) fail("defragment moved a block the model does not know", old, size, 0);
    Block& b = s.blocks[it->second];
    CHECK(size >= b.size, "defragment callback size below the block's", old, size, b.size);
    verify(now, b.size, b.seed, "defragment copied the block wrong");
    if (moves++ == throw_after) throw CallbackStop{};
    moved.emplace_back(it->second, now);
  };
  DefragmentationEngine::DefragStats st{};
  bool threw = false;
  try {
    st = mode ? engine.defragment(*h, cb, budget) : engine.defragment(*h, cb);
  } catch (CallbackStop&) {
    threw = true;
  }
  // Apply the moves to the model.  Arena blocks keep the alignment their address
  // had, up to a page (defrag.h++).
  for (auto& [i, now] : moved) s.remove_interval(s.blocks[i]);
  for (auto& [i, now] : moved) {
    Block& b = s.blocks[i];
    b.p = now;
    if (b.align > 4096) b.align = 4096;
    CHECK(reinterpret_cast<std::uintptr_t>(now) % b.align == 0, "defragment broke the alignment", now, b.size, b.align);
    s.add_interval(b);
  }
  if (!threw) CHECK(st.objects_relocated == moved.size(), "objects_relocated differs from the callbacks", h, st.objects_relocated, moved.size());
  for (std::size_t i = 0; i < s.blocks.size(); i++)
    if (s.blocks[i].owner == o) verify(s.blocks[i].p, s.blocks[i].size, s.blocks[i].seed, "block corrupted by a pass");
  auto r = engine.analyze(*h);
  CHECK(r.live_bytes <= r.held_bytes || r.held_bytes == 0, "analyze: live above held", h, r.live_bytes, r.held_bytes);
}

void op_heap_destroy(State& s, FuzzedDataProvider& in) {
  drain();
  int which = in.ConsumeIntegralInRange<int>(0, 1);
  if (!s.heaps[which]) return;
  Owner o = which ? Owner::heap1 : Owner::heap0;
  if (in.ConsumeBool()) {
    // Free every block first, then check the counters say the heap is empty.
    for (std::size_t i = s.blocks.size(); i-- > 0;)
      if (s.blocks[i].owner == o) {
        Block b = s.take(i);
        verify(b.p, b.size, b.seed, "heap block corrupted before free");
        s.heaps[which]->deallocate(b.p);
      }
    auto st = s.heaps[which]->get_stats();
    CHECK(st.active_allocations == 0, "an emptied heap counts live blocks", s.heaps[which].get(), st.active_allocations, 0);
  }
  drop_owner(s, o);
  s.heaps[which].reset();
}

// --- HandleAllocator --------------------------------------------------------------

void op_handle(State& s, FuzzedDataProvider& in) {
  if (!s.handles) s.handles = std::make_unique<HandleAllocator>();
  HandleAllocator& ha = *s.handles;
  switch (in.ConsumeIntegralInRange<int>(0, 8)) {
    case 0:
    case 1: {
      std::size_t size = pick_size(in);
      if (size > (2u << 20) || !s.room(size) || s.live_handles.size() >= kMaxBlocks) return;
      Handle h = ha.allocate_handle(size);
      CHECK(h, "allocate_handle failed", nullptr, size, 0);
      void* p = ha.resolve(h);
      CHECK(reinterpret_cast<std::uintptr_t>(p) % 16 == 0, "handle object misaligned", p, size, 16);
      std::uint32_t seed = s.next_seed++;
      fill(p, 0, size, seed);
      s.live_handles.push_back({h, size, seed});
      s.live_bytes += size;
      break;
    }
    case 2: {  // free one (not a pinned one)
      if (s.live_handles.empty()) return;
      std::size_t i = in.ConsumeIntegralInRange<std::size_t>(0, s.live_handles.size() - 1);
      auto hd = s.live_handles[i];
      for (Handle p : s.pinned_handle)
        if (p == hd.h) return;
      verify(ha.resolve(hd.h), hd.size, hd.seed, "handle object corrupted before free");
      CHECK(ha.handle_size(hd.h) == hd.size, "handle_size differs", nullptr, ha.handle_size(hd.h), hd.size);
      ha.deallocate_handle(hd.h);
      s.live_handles[i] = s.live_handles.back();
      s.live_handles.pop_back();
      s.live_bytes -= hd.size;
      s.dead_handles.push_back(hd.h);
      break;
    }
    case 3: {  // pin one
      if (s.live_handles.empty() || s.pins.size() >= 8) return;
      auto hd = s.live_handles[in.ConsumeIntegralInRange<std::size_t>(0, s.live_handles.size() - 1)];
      auto g = ha.pin(hd.h);
      verify(g.get(), hd.size, hd.seed, "pinned handle object corrupted");
      s.pinned_at.push_back(g.get());
      s.pinned_handle.push_back(hd.h);
      s.pins.push_back(std::move(g));
      break;
    }
    case 4: {  // unpin the oldest
      if (s.pins.empty()) return;
      CHECK(ha.resolve(s.pinned_handle.front()) == s.pinned_at.front(), "a pinned object moved", s.pinned_at.front(), 0, 0);
      s.pins.pop_front();
      s.pinned_at.erase(s.pinned_at.begin());
      s.pinned_handle.erase(s.pinned_handle.begin());
      break;
    }
    case 5:
      if (in.ConsumeBool()) {
        ha.defragment();
      } else {
        DefragBudget b;
        b.max_objects = in.ConsumeIntegralInRange<std::size_t>(0, 32);
        b.measure = in.ConsumeBool();
        ha.defragment(b);
      }
      break;
    case 6: {
      if (s.live_handles.empty()) return;
      auto hd = s.live_handles[in.ConsumeIntegralInRange<std::size_t>(0, s.live_handles.size() - 1)];
      ha.relocate(hd.h);
      verify(ha.resolve(hd.h), hd.size, hd.seed, "relocate lost the contents");
      break;
    }
    case 7: {  // a freed handle stays dead
      if (s.dead_handles.empty()) return;
      Handle h = s.dead_handles[in.ConsumeIntegralInRange<std::size_t>(0, s.dead_handles.size() - 1)];
      CHECK(!ha.try_resolve(h), "try_resolve accepted a freed handle", nullptr, h, 0);
      break;
    }
    case 8:  // raw blocks of the handle heap: they never move
      op_heap_alloc(s, in, Owner::handle_raw);
      break;
  }
  // Every pin still holds its object in place.
  for (std::size_t i = 0; i < s.pins.size(); i++)
    CHECK(s.pins[i].get() == s.pinned_at[i], "a pin's address changed", s.pinned_at[i], i, 0);
}

void check_handles(State& s) {
  if (!s.handles) return;
  for (auto& hd : s.live_handles) verify(s.handles->resolve(hd.h), hd.size, hd.seed, "handle object corrupted");
  auto st = s.handles->handle_stats();
  CHECK(st.live_handles == s.live_handles.size(), "live_handles differs from the model", nullptr, st.live_handles, s.live_handles.size());
  float f = s.handles->fragmentation();
  CHECK(f >= 0.0f && f <= 1.0f, "handle heap fragmentation out of [0, 1]", nullptr, static_cast<std::size_t>(f * 1000), 0);
}

void destroy_handles(State& s) {
  drain();
  s.pins.clear();
  s.pinned_at.clear();
  s.pinned_handle.clear();
  for (auto& hd : s.live_handles) s.live_bytes -= hd.size;
  s.live_handles.clear();
  s.dead_handles.clear();
  drop_owner(s, Owner::handle_raw);
  s.handles.reset();
}

// --- SecureAllocator ----------------------------------------------------------------

void op_secure(State& s, FuzzedDataProvider& in) {
  if (!s.secure) s.secure = std::make_unique<SecureAllocator>();
  SecureAllocator& sa = *s.secure;
  std::vector<std::size_t> mine;
  for (std::size_t i = 0; i < s.blocks.size(); i++)
    if (s.blocks[i].owner == Owner::secure) mine.push_back(i);
  switch (in.ConsumeIntegralInRange<int>(0, 4)) {
    case 0:
    case 1: {
      std::size_t size = pick_size(in);
      if (!s.room(size)) return;
      std::size_t align = in.ConsumeBool() ? 16 : pick_align(in, 4);
      void* p = sa.allocate(size, align);
      CHECK(p, "SecureAllocator::allocate failed", p, size, align);
      CHECK(sa.get_allocation_size(p) == size, "secure get_allocation_size is not the request", p, sa.get_allocation_size(p), size);
      if (size) verify_zero(p, size, "secure block not zero-filled");
      s.add(p, size, align, Owner::secure);
      break;
    }
    case 2: {
      if (mine.empty()) return;
      Block b = s.take(mine[in.ConsumeIntegralInRange<std::size_t>(0, mine.size() - 1)]);
      verify(b.p, b.size, b.seed, "secure block corrupted before free");
      if (in.ConsumeBool())
        sa.deallocate(b.p, b.size, b.align);
      else
        sa.deallocate(b.p);
      break;
    }
    case 3: {
      if (mine.empty()) return;
      std::size_t i = mine[in.ConsumeIntegralInRange<std::size_t>(0, mine.size() - 1)];
      std::size_t size = in.ConsumeBool() ? pick_size(in) : s.blocks[i].size + in.ConsumeIntegralInRange<int>(0, 64);
      if (size > kMaxBlock / 2) size = kMaxBlock / 2;
      if (size > s.blocks[i].size && !s.room(size - s.blocks[i].size)) return;
      bool inplace = in.ConsumeBool();
      Block b = s.take(i);
      verify(b.p, b.size, b.seed, "secure block corrupted before reallocate");
      void* q = inplace ? sa.try_realloc_inplace(b.p, size) : sa.reallocate(b.p, size);
      if (!inplace && size == 0) {
        CHECK(!q, "secure reallocate(p, 0) returned a block", q, 0, 0);
        return;
      }
      std::size_t align = q == b.p ? b.align : 16;  // a moved block has the default alignment
      if (!q) {
        CHECK(inplace, "secure reallocate failed", b.p, b.size, size);
        q = b.p;
        size = b.size;
        align = b.align;
      } else if (inplace) {
        CHECK(q == b.p, "secure try_realloc_inplace moved the block", q, b.size, size);
        align = b.align;
      }
      std::size_t keep = b.size < size ? b.size : size;
      verify(q, keep, b.seed, "secure reallocate lost the contents");
      if (size > keep) verify_zero(static_cast<char*>(q) + keep, size - keep, "secure grown tail not zero");
      CHECK(sa.get_allocation_size(q) == size, "secure get_allocation_size after reallocate", q, sa.get_allocation_size(q), size);
      Block nb{q, size, align, b.seed, Owner::secure};
      s.add_interval(nb);
      fill(q, keep, size, b.seed);
      s.blocks.push_back(nb);
      s.live_bytes += size;
      break;
    }
    case 4:
      sa.trim();
      break;
  }
}

void destroy_secure(State& s) {
  drain();
  drop_owner(s, Owner::secure);
  s.secure.reset();
}

void teardown(State& s) {
  drain();
  for (std::size_t i = s.blocks.size(); i-- > 0;) {
    Block& b = s.blocks[i];
    verify(b.p, b.size, b.seed, "block corrupted at teardown");
    if (b.owner == Owner::capi) {
      lca_free(s.take(i).p);
    }
  }
  check_handles(s);
  destroy_handles(s);
  destroy_secure(s);
  destroy_numa(s);
  destroy_huge(s);
  drop_owner(s, Owner::heap0);
  drop_owner(s, Owner::heap1);
  s.heaps[0].reset();
  s.heaps[1].reset();
  CHECK(s.blocks.empty() && s.intervals.empty(), "model not empty at teardown", nullptr, s.blocks.size(), s.intervals.size());
}

// --- FUZZ_THREADS=1: a second thread -------------------------------------------------
//
// The main thread hands blocks to the worker through a queue (any raw heap's: the
// C API's, a MemoryAllocator's, the handle heap's raw blocks, the secure heap's);
// the worker checks each one's pattern and frees it -- a cross-thread (remote)
// free -- and between items allocates, fills, checks and frees blocks of its own
// in the process heap and in the heap the item came from.  The main thread drains
// the queue before anything that must see every block of a heap: a raw
// defragmentation pass, destroying a heap, the counters' checks, the end of the
// input.

struct Handoff {
  Block b;
  MemoryAllocator* heap;    // heap0, heap1, handle_raw, numa, huge_heap, huge_block (nullptr for capi, secure)
  SecureAllocator* secure;  // secure
};

struct Worker {
  std::mutex m;
  std::condition_variable work, idle;
  std::deque<Handoff> q;
  bool busy = false;
  std::thread t;
  std::uint32_t x = 12345;

  Worker() : t([this] { loop(); }) { t.detach(); }

  std::uint32_t rnd() {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    return x;
  }
  void churn(MemoryAllocator* heap) {
    void* own[8];
    std::size_t sizes[8];
    int n = static_cast<int>(rnd() % 8);
    for (int i = 0; i < n; i++) {
      std::uint32_t r = rnd();
      sizes[i] = (r & 3) == 0 ? (r >> 4) % (256u << 10) : (r >> 4) % 2048;
      own[i] = heap ? heap->allocate(sizes[i]) : lca_malloc(sizes[i]);
      CHECK(own[i], "worker allocation failed", nullptr, sizes[i], 0);
      fill(own[i], 0, sizes[i], i + 7);
    }
    for (int i = 0; i < n; i++) {
      verify(own[i], sizes[i], i + 7, "worker block corrupted");
      if (heap)
        heap->deallocate(own[i]);
      else
        lca_free(own[i]);
    }
  }
  void loop() {
    for (;;) {
      Handoff h;
      {
        std::unique_lock<std::mutex> l(m);
        work.wait(l, [this] { return !q.empty(); });
        h = q.front();
        q.pop_front();
        busy = true;
      }
      verify(h.b.p, h.b.size, h.b.seed, "block corrupted on its way to the worker");
      churn(h.heap);
      if (h.secure)
        h.secure->deallocate(h.b.p);
      else if (h.heap)
        h.heap->deallocate(h.b.p);
      else
        lca_free(h.b.p);
      churn(nullptr);
      {
        std::lock_guard<std::mutex> l(m);
        busy = false;
        if (q.empty()) idle.notify_all();
      }
    }
  }
  void push(const Handoff& h) {
    std::lock_guard<std::mutex> l(m);
    q.push_back(h);
    work.notify_one();
  }
  void drain() {
    std::unique_lock<std::mutex> l(m);
    idle.wait(l, [this] { return q.empty() && !busy; });
  }
};

Worker* worker() {
  static Worker* w = std::getenv("FUZZ_THREADS") ? new Worker : nullptr;
  return w;
}
void drain() {
  if (Worker* w = worker()) w->drain();
}

void op_handoff(State& s, std::size_t i) {
  Worker* w = worker();
  if (!w) return;
  Owner o = s.blocks[i].owner;
  Block b = s.take(i);
  w->push({b, o == Owner::huge_block ? s.huge.get() : s.heap_of(o), o == Owner::secure ? s.secure.get() : nullptr});
}

std::size_t pick_block(State& s, FuzzedDataProvider& in) {
  return in.ConsumeIntegralInRange<std::size_t>(0, s.blocks.size() - 1);
}

// --- NUMAAllocator (one node here) and HugePageAllocator ----------------------------

void destroy_numa(State& s) {
  drain();
  drop_owner(s, Owner::numa);
  s.numa.reset();
}

void op_numa(State& s, FuzzedDataProvider& in) {
  if (!s.numa) s.numa = std::make_unique<NUMAAllocator>();
  NUMAAllocator& na = *s.numa;
  int nodes = NUMAAllocator::node_count();
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0:
    case 1: {  // on a node: one that exists and is allowed, or a bad one (EINVAL)
      std::size_t size = pick_size(in);
      if (!s.room(size)) return;
      int node = in.ConsumeIntegralInRange<int>(-2, nodes + 1);
      errno = 0;
      void* p = na.allocate_on_node(size, node);
      if (node < 0 || node >= nodes || !NUMAAllocator::node_usable(node)) {
        CHECK(!p && errno == EINVAL, "allocate_on_node accepted a bad node", p, static_cast<std::size_t>(node), size);
        return;
      }
      CHECK(p, "allocate_on_node failed", p, size, static_cast<std::size_t>(node));
      CHECK(na.get_allocation_size(p) >= size, "NUMA get_allocation_size below the request", p, na.get_allocation_size(p), size);
      s.add(p, size, 16, Owner::numa);
      break;
    }
    case 2: {  // migrate a block's pages (to the one node, or a bad node: nothing moves)
      std::vector<std::size_t> mine;
      for (std::size_t i = 0; i < s.blocks.size(); i++)
        if (s.blocks[i].owner == Owner::numa) mine.push_back(i);
      if (mine.empty()) return;
      Block& b = s.blocks[mine[in.ConsumeIntegralInRange<std::size_t>(0, mine.size() - 1)]];
      int node = in.ConsumeIntegralInRange<int>(-1, nodes);
      na.migrate_to_node(b.p, b.size, node);
      verify(b.p, b.size, b.seed, "migrate_to_node changed the contents");
      break;
    }
    case 3: {
      drain();
      std::size_t n = 0, bytes = 0;
      for (auto& b : s.blocks)
        if (b.owner == Owner::numa) n++, bytes += na.get_allocation_size(b.p);
      auto st = na.get_stats();
      CHECK(st.active_allocations == n, "NUMAAllocator active_allocations differs from the model", &na, st.active_allocations, n);
      CHECK(st.total_allocated - st.total_freed == bytes, "NUMAAllocator live bytes differ from the model", &na,
            st.total_allocated - st.total_freed, bytes);
      auto ns = na.get_numa_stats();
      CHECK(ns.migration_failures <= ns.migrated_pages + ns.migration_failures, "numa stats", &na, 0, 0);
      break;
    }
    case 4:
      na.trim();
      break;
    case 5:
      destroy_numa(s);
      break;
  }
}

void destroy_huge(State& s) {
  drain();
  drop_owner(s, Owner::huge_heap);
  drop_owner(s, Owner::huge_block);
  s.huge.reset();
}

void op_huge(State& s, FuzzedDataProvider& in) {
  if (!s.huge) s.huge = std::make_unique<HugePageAllocator>();
  HugePageAllocator& ha = *s.huge;
  std::vector<std::size_t> mine;
  for (std::size_t i = 0; i < s.blocks.size(); i++)
    if (s.blocks[i].owner == Owner::huge_block) mine.push_back(i);
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0:
    case 1: {  // a huge block: hugetlb, else THP, else normal pages (this machine: the fallbacks)
      std::size_t size = pick_size(in);
      if (!s.room(size) || mine.size() >= 16) return;
      int kind = in.ConsumeIntegralInRange<int>(0, 7);
      auto page = kind == 7 ? static_cast<HugePageAllocator::HugePageSize>(in.ConsumeIntegralInRange<std::size_t>(1, 1u << 22))
                  : kind == 6 ? HugePageAllocator::HugePageSize::Size_1GB
                              : HugePageAllocator::HugePageSize::Size_2MB;
      std::size_t page_bytes = static_cast<std::size_t>(page);
      bool valid = page == HugePageAllocator::HugePageSize::Size_2MB || page == HugePageAllocator::HugePageSize::Size_1GB;
      errno = 0;
      void* p = ha.allocate_huge(size, page);
      if (!valid) {
        CHECK(!p && errno == EINVAL, "allocate_huge accepted a bad page size", p, page_bytes, size);
        return;
      }
      if (!p && page == HugePageAllocator::HugePageSize::Size_1GB) return;  // 1 GiB of address space refused
      CHECK(p, "allocate_huge failed", p, size, page_bytes);
      std::size_t mapped = ha.huge_allocation_size(p);
      CHECK(mapped >= (size ? size : 1) && mapped % page_bytes == 0, "huge_allocation_size", p, mapped, size);
      CHECK(ha.backing_of(p) != HugePageAllocator::Backing::none, "backing_of a live huge block is none", p, mapped, 0);
      verify_zero(p, size, "huge block not zero-filled");
      s.add(p, size, page_bytes, Owner::huge_block);
      break;
    }
    case 2: {
      if (mine.empty()) return;
      Block b = s.take(mine[in.ConsumeIntegralInRange<std::size_t>(0, mine.size() - 1)]);
      verify(b.p, b.size, b.seed, "huge block corrupted before free");
      if (in.ConsumeBool())
        ha.deallocate_huge(b.p);
      else
        ha.deallocate(b.p);
      CHECK(ha.backing_of(b.p) == HugePageAllocator::Backing::none || ha.huge_allocation_size(b.p) != 0,
            "a freed huge block still has a backing", b.p, 0, 0);
      break;
    }
    case 3: {
      drain();  // (mine was counted before: the worker may hold a huge block still)
      mine.clear();
      for (std::size_t i = 0; i < s.blocks.size(); i++)
        if (s.blocks[i].owner == Owner::huge_block) mine.push_back(i);
      auto hs = ha.huge_stats();
      std::size_t live = hs.live_blocks[0] + hs.live_blocks[1] + hs.live_blocks[2];
      CHECK(live == mine.size(), "huge_stats live blocks differ from the model", &ha, live, mine.size());
      CHECK(hs.allocations - hs.deallocations == live, "huge_stats allocations - deallocations", &ha, hs.allocations - hs.deallocations, live);
      break;
    }
    case 4:
      ha.trim();
      break;
    case 5:
      destroy_huge(s);
      break;
  }
}

// --- error paths: NULL with errno, and nothing lost -------------------------------------

std::size_t pick_huge(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      return SIZE_MAX - in.ConsumeIntegralInRange<std::size_t>(0, 1u << 16);
    case 1:
      return (SIZE_MAX >> 1) + in.ConsumeIntegralInRange<std::size_t>(0, 1u << 16);  // above PTRDIFF_MAX
    case 2:
      return (std::size_t{1} << 47) + 1 + in.ConsumeIntegralInRange<std::size_t>(0, 1u << 16);  // above kMaxRequest
    default:
      return std::size_t{1} << in.ConsumeIntegralInRange<int>(48, 63);
  }
}

struct Counts {
  lca_stats c;
  MemoryAllocator::Stats h;
};

// Every call here must fail: NULL (or an error number) with errno ENOMEM or
// EINVAL, and the heaps' counters and every live block as they were.
void op_errors(State& s, FuzzedDataProvider& in) {
  drain();
  MemoryAllocator* heap = s.heaps[in.ConsumeBool()].get();
  lca_stats before;
  lca_get_stats(&before);
  MemoryAllocator::Stats hbefore{};
  if (heap) hbefore = heap->get_stats();
  std::size_t huge = pick_huge(in);
  std::size_t i = s.blocks.empty() ? 0 : pick_block(s, in);
  int op = in.ConsumeIntegralInRange<int>(0, 11);
  void* q = reinterpret_cast<void*>(std::uintptr_t{0x5a5a5a50});
  int want = ENOMEM;
  errno = 0;
  void* r = nullptr;
  switch (op) {
    case 0:
      r = lca_malloc(huge);
      break;
    case 1: {  // a product that overflows, or one too large
      std::size_t a = in.ConsumeIntegralInRange<std::size_t>(2, 1u << 20);
      r = in.ConsumeBool() ? lca_calloc(a, SIZE_MAX / a + 1) : lca_calloc(huge, 1);
      break;
    }
    case 2:
    case 3: {
      if (s.blocks.empty() || s.blocks[i].owner != Owner::capi) return;
      Block& b = s.blocks[i];
      if (op == 2) {
        r = lca_realloc(b.p, huge);
      } else {
        std::size_t a = in.ConsumeIntegralInRange<std::size_t>(2, 1u << 20);
        r = lca_reallocarray(b.p, a, SIZE_MAX / a + 1);
      }
      CHECK(lca_usable_size(b.p) >= b.size, "a failed realloc shrank the block", b.p, lca_usable_size(b.p), b.size);
      break;
    }
    case 4:
      r = lca_aligned_alloc(pick_align(in, 0), huge);
      break;
    case 5: {
      int rc = lca_posix_memalign(&q, pick_align(in, 3), huge);
      CHECK(rc == ENOMEM && errno == 0, "posix_memalign of a huge size: not ENOMEM, or errno set", q, rc, huge);
      CHECK(q == reinterpret_cast<void*>(std::uintptr_t{0x5a5a5a50}), "failed posix_memalign wrote *result", q, rc, huge);
      want = 0;
      break;
    }
    case 6: {  // bad alignments: not a power of two (0 too), or one of sizeof(void*)'s divisors for posix_memalign
      std::size_t bad = in.ConsumeBool() ? 0 : in.ConsumeIntegralInRange<std::size_t>(3, SIZE_MAX);
      if (bad && (bad & (bad - 1)) == 0) bad += 1;
      std::size_t size = in.ConsumeBool() ? huge : in.ConsumeIntegralInRange<std::size_t>(0, 4096);
      want = EINVAL;
      if (in.ConsumeBool()) {
        r = lca_memalign(bad, size);
      } else {
        std::size_t small = std::size_t{1} << in.ConsumeIntegralInRange<int>(0, 2);  // 1, 2, 4
        int rc = lca_posix_memalign(&q, in.ConsumeBool() ? bad : small, size);
        CHECK(rc == EINVAL && errno == 0, "posix_memalign of a bad alignment: not EINVAL, or errno set", q, rc, size);
        CHECK(q == reinterpret_cast<void*>(std::uintptr_t{0x5a5a5a50}), "failed posix_memalign wrote *result", q, rc, size);
        want = 0;
      }
      break;
    }
    case 7:  // a huge alignment
      r = lca_aligned_alloc(std::size_t{1} << in.ConsumeIntegralInRange<int>(48, 63), in.ConsumeIntegralInRange<std::size_t>(0, 64));
      break;
    case 8:
    case 9: {  // a MemoryAllocator: a huge size, a bad alignment, a huge reallocate
      if (!heap) return;
      int what = in.ConsumeIntegralInRange<int>(0, 2);
      if (what == 0) {
        r = heap->allocate(huge, pick_align(in, 4));
      } else if (what == 1) {
        std::size_t bad = in.ConsumeIntegralInRange<std::size_t>(0, SIZE_MAX);
        if (bad && (bad & (bad - 1)) == 0) bad += 1;
        r = heap->allocate(in.ConsumeIntegralInRange<std::size_t>(0, 4096), bad);
        want = EINVAL;
      } else {
        std::size_t j = SIZE_MAX;
        for (std::size_t k = 0; k < s.blocks.size(); k++)
          if (s.heap_of(s.blocks[k].owner) == heap) j = k;
        if (j == SIZE_MAX) return;
        r = in.ConsumeBool() ? heap->reallocate(s.blocks[j].p, huge) : heap->try_realloc_inplace(s.blocks[j].p, huge);
        if (!r && errno == 0) want = 0;  // try_realloc_inplace need not set errno
        i = j;
      }
      break;
    }
    case 10: {  // the SecureAllocator
      if (!s.secure) return;
      r = s.secure->allocate(huge, 16);
      break;
    }
    case 11: {  // huge count times size for reallocarray(NULL, ...): malloc's failure
      std::size_t a = in.ConsumeIntegralInRange<std::size_t>(2, 1u << 20);
      r = lca_reallocarray(nullptr, a, SIZE_MAX / a + 1);
      break;
    }
  }
  CHECK(!r, "an impossible request returned a block", r, huge, static_cast<std::size_t>(op));
  if (want) CHECK(errno == want, "an impossible request: wrong errno", nullptr, static_cast<std::size_t>(errno), static_cast<std::size_t>(op));
  if (!s.blocks.empty()) verify(s.blocks[i].p, s.blocks[i].size, s.blocks[i].seed, "a failed call changed a live block");
  lca_stats after;
  lca_get_stats(&after);
  CHECK(after.allocation_count == before.allocation_count && after.free_count == before.free_count &&
            after.total_allocated == before.total_allocated && after.total_freed == before.total_freed,
        "a failed call changed the process heap's counters", nullptr, after.allocation_count - before.allocation_count,
        after.free_count - before.free_count);
  if (heap) {
    auto h = heap->get_stats();
    CHECK(h.allocation_count == hbefore.allocation_count && h.free_count == hbefore.free_count &&
              h.total_allocated == hbefore.total_allocated && h.total_freed == hbefore.total_freed,
          "a failed call changed a heap's counters", heap, h.allocation_count - hbefore.allocation_count,
          h.free_count - hbefore.free_count);
  }
}

// --- tracking (--enable-tracking): the user-level AllocationTracker ---------------------
//
// The process heap's own tracker runs when LIBCALLOC_OPTIONS asks for it (e.g.
// sample=4096 or leak_report in scripts/fuzz's environment): every op above then
// goes through it.  Here: AllocationTracker told about live C API blocks, its
// leaks and profile against the model's record of what it was told.

void op_tracking(State& s, FuzzedDataProvider& in) {
  int what = in.ConsumeIntegralInRange<int>(0, 3);
  if (what == 3) {  // the statistics report, written to /dev/null
    static int null_fd = open_null();
    if (null_fd >= 0) lca_print_stats(null_fd);
    return;
  }
#if CALLOC_TRACKING
  if (!s.tracker) s.tracker = std::make_unique<custom_alloc::AllocationTracker>();
  auto& t = *s.tracker;
  switch (what) {
    case 0: {
      if (s.blocks.empty()) return;
      Block& b = s.blocks[pick_block(s, in)];
      t.track_allocation(b.p, b.size);
      s.tracked[b.p] = b.size;
      break;
    }
    case 1: {
      if (s.tracked.empty()) return;
      auto it = s.tracked.begin();
      std::advance(it, in.ConsumeIntegralInRange<std::size_t>(0, s.tracked.size() - 1));
      t.track_deallocation(it->first);
      s.tracked.erase(it);
      break;
    }
    case 2: {
      auto leaks = t.get_leaks();
      CHECK(leaks.size() == s.tracked.size(), "AllocationTracker leaks differ from the model", nullptr, leaks.size(), s.tracked.size());
      std::size_t bytes = 0;
      for (auto& [p, n] : s.tracked) bytes += n;
      auto prof = t.generate_profile();
      CHECK(prof.live_allocations == s.tracked.size() && prof.live_bytes == bytes, "AllocationTracker profile differs from the model",
            nullptr, prof.live_bytes, bytes);
      break;
    }
  }
#else
  (void)s;
#endif
}

// --- statistics against the model ----------------------------------------------------

// After drain(): the process heap's and each MemoryAllocator's counters agree with
// the model: live blocks, and live bytes = the usable sizes of the live blocks.
void check_counters(State& s) {
  drain();
  std::size_t n = 0, bytes = 0;
  for (auto& b : s.blocks)
    if (b.owner == Owner::capi) n++, bytes += lca_usable_size(b.p);
  lca_stats st;
  lca_get_stats(&st);
  CHECK(st.active_allocations == n, "lca_get_stats: active_allocations differs from the model", nullptr, st.active_allocations, n);
  CHECK(st.allocation_count - st.free_count == n, "lca_get_stats: allocations - frees differs from the model", nullptr,
        st.allocation_count - st.free_count, n);
  CHECK(st.total_allocated - st.total_freed == bytes, "lca_get_stats: live bytes differ from the model", nullptr,
        st.total_allocated - st.total_freed, bytes);
  for (Owner o : {Owner::heap0, Owner::heap1}) {
    MemoryAllocator* h = s.heap_of(o);
    if (!h) continue;
    n = bytes = 0;
    for (auto& b : s.blocks)
      if (b.owner == o) n++, bytes += h->get_allocation_size(b.p);
    auto hs = h->get_stats();
    CHECK(hs.active_allocations == n, "MemoryAllocator active_allocations differs from the model", h, hs.active_allocations, n);
    CHECK(hs.total_allocated - hs.total_freed == bytes, "MemoryAllocator live bytes differ from the model", h,
          hs.total_allocated - hs.total_freed, bytes);
  }
}

// --- threads that exit holding blocks ------------------------------------------------------
//
// A thread allocates blocks (the C API's, heap0's, heap1's), writes them, churns
// small blocks of its own, frees some of the model's blocks (remote frees from a
// thread about to exit), and exits; its heaps go to the pool.  The main thread
// takes its blocks into the model: later ops free, realloc and check them.

void op_thread_exit(State& s, FuzzedDataProvider& in) {
  struct Plan {
    Owner owner;
    std::size_t size, align;
    int kind;  // capi: 0 malloc, 1 calloc, 2 aligned_alloc
    std::uint32_t seed;
    void* p = nullptr;
  };
  std::vector<Plan> plan;
  std::size_t total = 0;
  int n = in.ConsumeIntegralInRange<int>(0, 12);
  for (int k = 0; k < n; k++) {
    Plan pl{};
    int who = in.ConsumeIntegralInRange<int>(0, 3);
    pl.owner = who <= 1 ? Owner::capi : who == 2 ? Owner::heap0 : Owner::heap1;
    pl.size = pick_size(in);
    pl.kind = in.ConsumeIntegralInRange<int>(0, 2);
    pl.align = pl.kind == 2 ? pick_align(in, 4) : 16;
    pl.seed = s.next_seed++;
    if (!s.room(total + pl.size) || s.blocks.size() + plan.size() >= kMaxBlocks) break;
    if (pl.owner != Owner::capi && !s.heap_of(pl.owner)) s.heaps[pl.owner == Owner::heap0 ? 0 : 1] = std::make_unique<MemoryAllocator>();
    total += pl.size;
    plan.push_back(pl);
  }
  // Blocks it frees: the model's (raw heaps and the C API's), checked first.
  std::vector<Block> frees;
  int nf = s.blocks.empty() ? 0 : in.ConsumeIntegralInRange<int>(0, 6);
  for (int k = 0; k < nf && !s.blocks.empty(); k++) {
    std::size_t i = pick_block(s, in);
    Owner o = s.blocks[i].owner;
    if (o == Owner::secure || o == Owner::huge_block) continue;
    frees.push_back(s.take(i));
  }
  int churn = in.ConsumeIntegralInRange<int>(0, 3) ? in.ConsumeIntegralInRange<int>(0, 300) : 0;
  std::size_t churn_max = in.ConsumeBool() ? 256 : 8192;
  bool trim = in.ConsumeIntegralInRange<int>(0, 7) == 0;
  std::uint32_t x = static_cast<std::uint32_t>(churn * 2654435761u + 1);
  if (kTrace) {
    for (auto& pl : plan)
      std::fprintf(stderr, "fuzz-ops:   thread allocates owner %d size %zu align %zu kind %d\n", static_cast<int>(pl.owner), pl.size, pl.align, pl.kind);
    for (auto& b : frees) std::fprintf(stderr, "fuzz-ops:   thread frees owner %d size %zu %p\n", static_cast<int>(b.owner), b.size, b.p);
    std::fprintf(stderr, "fuzz-ops:   churn %d max %zu trim %d\n", churn, churn_max, trim);
  }
  std::thread t([&] {
    for (auto& b : frees) {
      verify(b.p, b.size, b.seed, "block corrupted before an exiting thread's free");
      if (MemoryAllocator* h = s.heap_of(b.owner))
        h->deallocate(b.p);
      else
        lca_free(b.p);
    }
    // Churn: keep every other block until the end, so spans are partly used at exit.
    std::vector<void*> keep;
    for (int k = 0; k < churn; k++) {
      x ^= x << 13, x ^= x >> 17, x ^= x << 5;
      void* p = lca_malloc(x % churn_max);
      CHECK(p, "exiting thread: malloc failed", nullptr, x % churn_max, 0);
      if (k & 1)
        keep.push_back(p);
      else
        lca_free(p);
    }
    for (auto& pl : plan) {
      MemoryAllocator* h = s.heap_of(pl.owner);
      if (h)
        pl.p = h->allocate(pl.size, pl.align);
      else if (pl.kind == 1)
        pl.p = lca_calloc(1, pl.size);
      else if (pl.kind == 2)
        pl.p = lca_aligned_alloc(pl.align, pl.size);
      else
        pl.p = lca_malloc(pl.size);
      CHECK(pl.p, "exiting thread: allocation failed", nullptr, pl.size, pl.align);
      if (pl.kind == 1 && !h) verify_zero(pl.p, pl.size, "exiting thread: calloc block not zeroed");
      fill(pl.p, 0, pl.size, pl.seed);
    }
    for (std::size_t k = 0; k < keep.size(); k += 2) lca_free(keep[k]);  // half of them stay live past the exit
    for (std::size_t k = 1; k < keep.size(); k += 2) keep[k / 2] = keep[k];
    keep.resize(keep.size() / 2);
    if (trim) lca_trim();
    // Those the main thread frees after the exit: handed over as C API blocks.
    for (void* p : keep) plan.push_back({Owner::capi, 0, 16, 0, 0, p});
  });
  t.join();
  for (auto& pl : plan) {
    s.add(pl.p, pl.size, pl.align, pl.owner, false, pl.seed ? pl.seed : s.next_seed++);
    s.blocks.back().aligned = pl.owner == Owner::capi && pl.kind == 2;
    s.blocks.back().extended = !pl.seed;  // a churn block: its request is not the model's size (free, not free_sized)
  }
}


void run(State& s, FuzzedDataProvider& in) {
  int steps = 0;
  while (in.remaining_bytes() && steps++ < 2000) {
    if (kCheckEvery) check_counters(s);
    int op = in.ConsumeIntegralInRange<int>(0, 25);
    if (kTrace) std::fprintf(stderr, "fuzz-ops: step %d op %d, %zu blocks\n", steps, op, s.blocks.size());
    switch (op) {
      case 0:
      case 1:
      case 2:
        op_capi_alloc(s, in);
        break;
      case 3:
      case 4:
      case 5:
        if (s.blocks.empty()) break;
        {
          std::size_t i = pick_block(s, in);
          switch (s.blocks[i].owner) {
            case Owner::capi:
              op_capi_free(s, i, in);
              break;
            case Owner::secure:
              break;
            case Owner::huge_block: {
              Block b = s.take(i);
              verify(b.p, b.size, b.seed, "huge block corrupted before free");
              s.huge->deallocate_huge(b.p);
              break;
            }
            default:
              op_heap_free(s, i, in);
          }
        }
        break;
      case 6:
      case 7:
        if (s.blocks.empty()) break;
        {
          std::size_t i = pick_block(s, in);
          if (s.blocks[i].owner == Owner::capi)
            op_capi_realloc(s, i, in);
          else if (s.blocks[i].owner != Owner::secure && s.blocks[i].owner != Owner::huge_block)
            op_heap_realloc(s, i, in);
        }
        break;
      case 8:
        if (s.blocks.empty()) break;
        {
          std::size_t i = pick_block(s, in);
          if (s.blocks[i].owner == Owner::capi) op_capi_extend(s, i);
        }
        break;
      case 9:
      case 10:
        op_heap_alloc(s, in, in.ConsumeBool() ? Owner::heap1 : Owner::heap0);
        break;
      case 11:
        op_defrag_raw(s, in);
        break;
      case 12:
        op_heap_destroy(s, in);
        break;
      case 13:
      case 14:
        op_handle(s, in);
        break;
      case 15:
        op_secure(s, in);
        break;
      case 16:
        switch (in.ConsumeIntegralInRange<int>(0, 3)) {
          case 0:
            lca_trim();
            break;
          case 1: {  // trim one heap, or all of them
            int which = in.ConsumeIntegralInRange<int>(0, 5);
            if ((which == 0 || which == 5) && s.heaps[0]) s.heaps[0]->trim();
            if ((which == 1 || which == 5) && s.heaps[1]) s.heaps[1]->trim();
            if ((which == 2 || which == 5) && s.handles) s.handles->trim();
            if ((which == 3 || which == 5) && s.secure) s.secure->trim();
            if (which == 4 || which == 5) MemoryAllocator::instance().trim();
            break;
          }
          case 2:
          case 3:
            check_counters(s);
            break;
        }
        break;
      case 17:  // check every block
        for (auto& b : s.blocks) verify(b.p, b.size, b.seed, "block corrupted");
        check_handles(s);
        break;
      case 18:
        if (in.ConsumeBool())
          destroy_handles(s);
        else
          destroy_secure(s);
        break;
      case 19:  // FUZZ_THREADS: a block to the worker
        if (!s.blocks.empty()) op_handoff(s, pick_block(s, in));
        break;
      case 20:
        op_thread_exit(s, in);
        break;
      case 21:
        op_errors(s, in);
        break;
      case 22:
        if (in.ConsumeBool())
          op_numa(s, in);
        else
          op_heap_alloc(s, in, Owner::numa);
        break;
      case 23:
        if (in.ConsumeBool())
          op_huge(s, in);
        else
          op_heap_alloc(s, in, Owner::huge_heap);
        break;
      case 24:
        op_tracking(s, in);
        break;
      case 25:  // trim everything between ops, then check the counters
        lca_trim();
        for (auto& h : s.heaps)
          if (h) h->trim();
        if (s.numa) s.numa->trim();
        if (s.huge) s.huge->trim();
        check_counters(s);
        break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  State s;
  run(s, in);
  teardown(s);
  return 0;
}
