// tests/unit/defrag.c++ -- the "defrag" suite: DefragmentationEngine and
// HandleAllocator (src/defrag.c++).
//
// The request's three tests (TURN 2 and 3) first, then: one pass takes a heap of
// slab objects and one of arena blocks from >= 90 % fragmentation to < 10 %, every
// moved byte intact and the callback called once per move with the addresses it
// reports; emptied memory goes back to the OS; budgets (objects, bytes, time) are
// respected per pass and repeated passes converge; a throwing callback loses
// nothing; a NUMAAllocator is measured and compacted node heap by node heap;
// the process heap, handle heaps and SecureAllocators are refused by
// the raw engine (and measuring the first and last), each by its name;
// freed, stale, forged and pinned handles are rejected with their messages; a
// handle heap compacts with handles and bytes intact; the failure of TURN 3 shown
// and prevented (a raw pointer kept across moves against the rule loses writes, the
// same access within the rule or pinned loses none); 4 threads allocate, resolve,
// write, verify, pin and free handles while a 5th defragments; in Valgrind mode
// the quarantine releases none of a heap's blocks while a pass plans into it;
// under memcheck a stale pointer into a moved object's old place is reported;
// the typed owners (handle_ptr.h++): unique_handle and shared_handle keep their
// objects intact across moves and destroy them once, `->` pins for the whole
// expression, a throwing constructor leaks nothing, shared counts stay right
// with 6 threads copying while a 7th moves the objects, and a handle freed
// behind its owner's back is reported stale.
#include <custom_alloc/defrag.h++>
#include <custom_alloc/handle_ptr.h++>
#include <custom_alloc/numa_allocator.h++>
#include <custom_alloc/secure_allocator.h++>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <libcalloc.h>

#include "../test-util.h++"
#include "arena.h++"
#include "os.h++"
#include "tcache.h++"
#include "vg.h++"

using custom_alloc::DefragBudget;
using custom_alloc::DefragmentationEngine;
using custom_alloc::Handle;
using custom_alloc::HandleAllocator;
using custom_alloc::MemoryAllocator;
using test_util::check_pattern;
using test_util::expect_death;
using test_util::fill_pattern;
using test_util::running_on_valgrind;
using test_util::scaled;

namespace {

// Valgrind and ASan mode: a freed block waits in libcalloc's quarantine and
// every block carries a redzone, so memory figures differ (the metric does not).
bool checked_mode() { return running_on_valgrind() || test_util::kAsanBuild; }

#ifdef CALLOC_OVERRIDE
constexpr bool kOverride = true;  // free and realloc are libcalloc's
#else
constexpr bool kOverride = false;
#endif

// A set of blocks of one heap that follows the engine's moves.
struct Tracked {
  std::map<void*, std::uint64_t> seed_of;  // current address -> pattern seed
  std::map<void*, std::size_t> size_of;
  std::set<void*> moved_from;
  std::size_t calls = 0;
  test_util::Failure f;

  DefragmentationEngine::RelocationCallback callback() {
    return [this](void* old_addr, void* new_addr, std::size_t size) {
      ++calls;
      auto it = seed_of.find(old_addr);
      if (it == seed_of.end()) {
        f.note("callback for %p, not a live block of the test (or called twice)", old_addr);
        return;
      }
      if (seed_of.count(new_addr)) f.note("moved %p onto the live block %p", old_addr, new_addr);
      if (size != size_of[old_addr]) f.note("size %zu for a block of %zu bytes", size, size_of[old_addr]);
      long bad = check_pattern(new_addr, size, it->second);
      if (bad >= 0) f.note("block moved from %p to %p differs at byte %ld", old_addr, new_addr, bad);
      seed_of[new_addr] = it->second;
      size_of[new_addr] = size;
      seed_of.erase(it);
      size_of.erase(old_addr);
      moved_from.insert(old_addr);
    };
  }

  void verify_all() {
    for (auto& [p, seed] : seed_of) {
      long bad = check_pattern(p, size_of[p], seed);
      if (bad >= 0) f.note("block %p (%zu bytes) differs at byte %ld", p, size_of[p], bad);
    }
  }
};

// Allocates n blocks of `size`, keeps one in `keep_every`, frees the others
// (after all are made, so that the holes stay holes).
void fragment(MemoryAllocator& alloc, Tracked& t, std::size_t n, std::size_t size, unsigned keep_every,
              std::uint64_t seed0) {
  std::vector<void*> all;
  for (std::size_t i = 0; i < n; ++i) {
    void* p = alloc.allocate(size);
    ck_assert_ptr_nonnull(p);
    all.push_back(p);
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (i % keep_every == 0) {
      fill_pattern(all[i], size, seed0 + i);
      t.seed_of[all[i]] = seed0 + i;
      t.size_of[all[i]] = size;
    } else {
      alloc.deallocate(all[i]);
    }
  }
}

}  // namespace

// --- the request's tests ----------------------------------------------------------

// Defragmentation.ReducesFragmentation.  The request frees p2 right after
// allocating it: our span free lists are LIFO, so the next allocate(64) takes the
// same slot back and the heap never fragments.  To keep the test's intent (every
// other block free), the second blocks are freed after the loop; the assertions
// are the request's, and every kept block is freed through the address the
// callback reported.
START_TEST(test_reduces_fragmentation) {
  MemoryAllocator alloc;
  std::vector<void*> keep, drop;
  for (int i = 0; i < 1000; i++) {
    void* p1 = alloc.allocate(64);
    void* p2 = alloc.allocate(64);
    keep.push_back(p1);
    drop.push_back(p2);
  }
  for (void* p2 : drop) alloc.deallocate(p2);  // free every other allocation

  float frag_before = DefragmentationEngine{}.calculate_fragmentation(alloc);
  ck_assert_float_gt(frag_before, 0.4f);

  DefragmentationEngine engine;
  std::map<void*, void*> moved;
  auto stats = engine.defragment(alloc, [&](void* old, void* now, size_t size) {
    ck_assert_uint_eq(size, 64);
    moved[old] = now;
  });
  float frag_after = engine.calculate_fragmentation(alloc);
  ck_assert_float_lt(frag_after, 0.1f);
  ck_assert_uint_eq(stats.objects_relocated, moved.size());
  ck_assert_uint_gt(stats.objects_relocated, 0);
  std::printf("# ReducesFragmentation: %.3f -> %.3f, %zu moved in %lld us\n", frag_before, frag_after,
              stats.objects_relocated, static_cast<long long>(stats.duration.count()));

  for (void*& ptr : keep) {
    auto it = moved.find(ptr);
    if (it != moved.end()) ptr = it->second;
  }
  for (void* ptr : keep) alloc.deallocate(ptr);
  ck_assert_uint_eq(alloc.get_stats().active_allocations, 0);
}
END_TEST

// HandleAllocator.DefragmentationPreservesHandles, as written.
START_TEST(test_defragmentation_preserves_handles) {
  HandleAllocator alloc;
  std::vector<Handle> handles;
  for (int i = 0; i < 1000; i++) handles.push_back(alloc.allocate_handle(128));
  for (Handle h : handles) {
    uint64_t* ptr = static_cast<uint64_t*>(alloc.resolve(h));
    *ptr = h;
  }
  alloc.defragment();
  for (Handle h : handles) {
    uint64_t* ptr = static_cast<uint64_t*>(alloc.resolve(h));
    ck_assert_uint_eq(*ptr, h);
  }
  for (Handle h : handles) alloc.deallocate_handle(h);
}
END_TEST

// DefragmentationRace.UseAfterMove, as written (the validity rule of resolve makes
// it correct: the writer's pointer is valid until its next resolve).  Helgrind and
// DRD do not see std::atomic as synchronisation: `stop` is annotated.
START_TEST(test_use_after_move) {
  HandleAllocator alloc;
  Handle h = alloc.allocate_handle(1024);

  std::atomic<bool> stop{false};
  std::atomic<int> corruption_count{0};
  TEST_BENIGN_RACE(&stop, "the stop flag");

  std::thread writer([&]() {
    uint64_t counter = 0;
    while (!stop) {
      uint64_t* ptr = static_cast<uint64_t*>(alloc.resolve(h));
      for (int i = 0; i < 128; i++) ptr[i] = counter++;
      ptr = static_cast<uint64_t*>(alloc.resolve(h));
      for (int i = 1; i < 128; i++)
        if (ptr[i] != ptr[i - 1] + 1) corruption_count++;
    }
  });
  std::thread defragmenter([&]() {
    for (int i = 0; i < 100; i++) {
      alloc.defragment();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    stop = true;
  });
  writer.join();
  defragmenter.join();
  ck_assert_int_eq(corruption_count.load(), 0);
  alloc.deallocate_handle(h);
}
END_TEST

// --- the relocation engine -----------------------------------------------------------

// Slab classes: 90 % of each of several classes freed at random -> < 10 % in one
// pass, every byte intact, one callback per move, memory back to the OS.  The
// compaction leaves each class's objects at the start of its spans, and the
// free tail of the last one is uncarved, so the result does not depend on the
// (scaled) number of spans.
START_TEST(test_slab_ninety_to_ten) {
  MemoryAllocator alloc;
  Tracked t;
  std::mt19937_64 rng(42);
  const std::size_t sizes[] = {64, 256, 1024, 4096};
  std::vector<void*> all;
  std::vector<std::size_t> size_at;
  for (std::size_t size : sizes) {
    std::size_t n = (scaled(128) + 8) * 65536 / size;
    for (std::size_t i = 0; i < n; ++i) {
      void* p = alloc.allocate(size);
      ck_assert_ptr_nonnull(p);
      all.push_back(p);
      size_at.push_back(size);
    }
  }
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (rng() % 10 == 0) {
      fill_pattern(all[i], size_at[i], i);
      t.seed_of[all[i]] = i;
      t.size_of[all[i]] = size_at[i];
    } else {
      alloc.deallocate(all[i]);
    }
  }
  DefragmentationEngine engine;
  auto before = engine.analyze(alloc);
  ck_assert_msg(before.fragmentation >= 0.85, "fragmentation before %.3f", before.fragmentation);
  auto stats = engine.defragment(alloc, t.callback());
  auto after = engine.analyze(alloc);
  std::printf("# slab: %.3f -> %.3f (held %zu -> %zu KiB, mapped %zu -> %zu KiB), %zu moved, %zu KiB, %lld us\n",
              before.fragmentation, after.fragmentation, before.held_bytes / 1024, after.held_bytes / 1024,
              before.os_memory_mapped / 1024, after.os_memory_mapped / 1024, stats.objects_relocated,
              stats.bytes_moved / 1024, static_cast<long long>(stats.duration.count()));
  ck_assert_msg(after.fragmentation < 0.10, "fragmentation after %.3f", after.fragmentation);
  ck_assert_uint_eq(t.calls, stats.objects_relocated);
  ck_assert_uint_eq(t.moved_from.size(), stats.objects_relocated);
  ck_assert(!stats.work_remaining);
  ck_assert_uint_gt(stats.free_blocks_merged, 0);
  t.verify_all();
  ASSERT_NO_FAILURE(t.f);
  if (!checked_mode()) {
    ck_assert_uint_lt(after.os_memory_mapped, before.os_memory_mapped);
    ck_assert_uint_gt(stats.bytes_released, 0);
  }
  for (auto& [p, seed] : t.seed_of) alloc.deallocate(p);
  ck_assert_uint_eq(alloc.get_stats().active_allocations, 0);
}
END_TEST

// Arena blocks (above the 8 KiB slab limit): 90 % freed -> < 10 % in one pass.
START_TEST(test_arena_ninety_to_ten) {
  MemoryAllocator alloc;
  Tracked t;
  std::mt19937_64 rng(7);
  std::vector<void*> all;
  std::vector<std::size_t> size_at;
  std::size_t n = scaled(3000) + 50;
  for (std::size_t i = 0; i < n; ++i) {
    std::size_t size = 9000 + (rng() % 24) * 1024;
    void* p = alloc.allocate(size);
    ck_assert_ptr_nonnull(p);
    all.push_back(p);
    size_at.push_back(size);
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (i % 10 == 3) {
      fill_pattern(all[i], size_at[i], i);
      t.seed_of[all[i]] = i;
      t.size_of[all[i]] = alloc.get_allocation_size(all[i]);
      fill_pattern(all[i], t.size_of[all[i]], i);
    } else {
      alloc.deallocate(all[i]);
    }
  }
  DefragmentationEngine engine;
  auto before = engine.analyze(alloc);
  ck_assert_msg(before.fragmentation >= 0.85, "fragmentation before %.3f", before.fragmentation);
  auto stats = engine.defragment(alloc, t.callback());
  auto after = engine.analyze(alloc);
  std::printf("# arena: %.3f -> %.3f (held %zu -> %zu KiB, chunks %zu -> %zu), %zu moved, %lld us\n",
              before.fragmentation, after.fragmentation, before.held_bytes / 1024, after.held_bytes / 1024,
              before.arena_chunks_in_use, after.arena_chunks_in_use, stats.objects_relocated,
              static_cast<long long>(stats.duration.count()));
  ck_assert_msg(after.fragmentation < 0.10, "fragmentation after %.3f", after.fragmentation);
  ck_assert_uint_eq(t.calls, stats.objects_relocated);
  t.verify_all();
  ASSERT_NO_FAILURE(t.f);
  if (!checked_mode() && before.arena_chunks_in_use > 1) ck_assert_uint_lt(after.os_memory_mapped, before.os_memory_mapped);
  for (auto& [p, seed] : t.seed_of) alloc.deallocate(p);
}
END_TEST

// Budgets: each pass stays within its object, byte and time budget and says that
// work remains; repeated small passes converge to the full pass's result.
START_TEST(test_budgets_respected_and_converge) {
  MemoryAllocator alloc;
  Tracked t;
  fragment(alloc, t, scaled(100000) + 5000, 96, 10, 1);
  DefragmentationEngine engine;
  DefragBudget objects;
  objects.max_objects = 25;
  auto s1 = engine.defragment(alloc, t.callback(), objects);
  ck_assert_uint_le(s1.objects_relocated, 25);
  ck_assert_uint_gt(s1.objects_relocated, 0);
  ck_assert(s1.work_remaining);

  DefragBudget bytes;
  bytes.max_bytes = 96 * 10;
  auto s2 = engine.defragment(alloc, t.callback(), bytes);
  ck_assert_uint_le(s2.bytes_moved, 96 * 10);
  ck_assert(s2.work_remaining);

  DefragBudget none;
  none.max_time = std::chrono::microseconds(0);
  auto s3 = engine.defragment(alloc, t.callback(), none);
  ck_assert_uint_eq(s3.objects_relocated, 1);  // one move at least: passes converge
  ck_assert(s3.work_remaining);

  DefragBudget slice;
  slice.max_objects = 100;
  slice.max_time = std::chrono::microseconds(1000);
  unsigned passes = 0;
  for (;;) {
    auto s = engine.defragment(alloc, t.callback(), slice);
    ++passes;
    ck_assert_uint_le(s.objects_relocated, 100);
    if (!s.work_remaining) break;
    ck_assert_uint_lt(passes, 100000);
  }
  float frag = engine.calculate_fragmentation(alloc);
  std::printf("# %u passes of <= 100 objects: fragmentation %.3f\n", passes, frag);
  ck_assert_float_lt(frag, 0.10f);
  t.verify_all();
  ASSERT_NO_FAILURE(t.f);
  for (auto& [p, seed] : t.seed_of) alloc.deallocate(p);
}
END_TEST

// A budget of 0 objects or 0 bytes lets each pass move one object (or finish a
// stage), as a time budget of 0 does, so that passes converge: the old code
// moved nothing and said work_remaining, pass after pass, in both engines
// (review 24).
START_TEST(test_zero_budgets_converge) {
  for (int which = 0; which < 2; ++which) {
    MemoryAllocator alloc;
    Tracked t;
    fragment(alloc, t, 3000, 64, 10, 7);
    DefragmentationEngine engine;
    DefragBudget zero;
    zero.measure = false;
    if (which == 0)
      zero.max_objects = 0;
    else
      zero.max_bytes = 0;
    unsigned passes = 0;
    bool remaining = true;
    while (remaining && passes < 5000) {
      auto s = engine.defragment(alloc, t.callback(), zero);
      ck_assert_uint_le(s.objects_relocated, 1);
      remaining = s.work_remaining;
      ++passes;
    }
    float frag = engine.calculate_fragmentation(alloc);
    std::printf("# raw engine, max_%s 0: %u passes, fragmentation %.3f\n", which == 0 ? "objects" : "bytes",
                passes, frag);
    ck_assert_msg(!remaining, "%u passes with max_%s = 0 and still work_remaining", passes,
                  which == 0 ? "objects" : "bytes");
    if (!checked_mode()) ck_assert_float_lt(frag, 0.10f);
    t.verify_all();
    ASSERT_NO_FAILURE(t.f);
    for (auto& [p, seed] : t.seed_of) alloc.deallocate(p);
  }
  HandleAllocator handles;
  std::vector<Handle> all, kept;
  for (int i = 0; i < 3000; ++i) all.push_back(handles.allocate_handle(64));
  for (int i = 0; i < 3000; ++i) {
    if (i % 10 == 0) {
      kept.push_back(all[i]);
      fill_pattern(handles.resolve(all[i]), 64, all[i]);
    } else {
      handles.deallocate_handle(all[i]);
    }
  }
  DefragBudget zero;
  zero.max_objects = 0;
  unsigned passes = 0;
  bool remaining = true;
  while (remaining && passes < 5000) {
    auto s = handles.defragment(zero);
    ck_assert_uint_le(s.objects_relocated, 1);
    remaining = s.work_remaining;
    ++passes;
  }
  std::printf("# handle heap, max_objects 0: %u passes, fragmentation %.3f\n", passes, handles.fragmentation());
  ck_assert_msg(!remaining, "%u passes of the handle heap with max_objects = 0 and still work_remaining", passes);
  test_util::Failure f;
  for (Handle h : kept) {
    long bad = check_pattern(handles.resolve(h), 64, h);
    if (bad >= 0) f.note("handle %llx differs at byte %ld", static_cast<unsigned long long>(h), bad);
    handles.deallocate_handle(h);
  }
  ASSERT_NO_FAILURE(f);
}
END_TEST

// Budgeted passes make a round: each resumes where the last one stopped (the
// size classes in order, the arena, then the trim that returns memory, itself
// a piece per pass), and the round ends with the heap as compact and as small
// as one pass without limits leaves it.  A pass without limits starts over: a
// class fragmented again behind the round's position is compacted too.
START_TEST(test_budgeted_round_resumes_and_trims) {
  const std::size_t n = scaled(60000) + 3000;
  auto build = [&](MemoryAllocator& alloc, Tracked& t) {
    fragment(alloc, t, n, 48, 10, 1);
    fragment(alloc, t, n, 480, 10, 1u << 30);
    fragment(alloc, t, n / 8, 12000, 10, 2u << 30);  // arena blocks
  };
  DefragmentationEngine engine;
  MemoryAllocator whole;
  Tracked tw;
  build(whole, tw);
  auto sw = engine.defragment(whole, tw.callback());
  ck_assert(!sw.work_remaining);

  MemoryAllocator bit;
  Tracked tb;
  build(bit, tb);
  std::size_t mapped_before = bit.get_stats().os_memory_mapped;
  DefragBudget slice;
  slice.max_time = std::chrono::microseconds(50);
  slice.measure = false;
  std::size_t passes = 0, released = 0, moved = 0;
  for (;;) {
    auto s = engine.defragment(bit, tb.callback(), slice);
    ++passes;
    released += s.bytes_released;
    moved += s.objects_relocated;
    if (!s.work_remaining) break;
    ck_assert_uint_lt(passes, 1000000);
  }
  std::size_t mapped_after = bit.get_stats().os_memory_mapped;
  std::printf("# round of %zu passes of 50 us: %zu moves (one pass: %zu), mapped %zu -> %zu KiB (one pass: %zu KiB)\n",
              passes, moved, sw.objects_relocated, mapped_before >> 10, mapped_after >> 10,
              whole.get_stats().os_memory_mapped >> 10);
  ck_assert_uint_gt(passes, 2);
  // No class done twice in the round.  (The two heaps' chunks lie at other
  // addresses, which break ties in the plan's order: the counts may differ a
  // little.)
  ck_assert_uint_gt(moved, 0);
  ck_assert_uint_le(moved, sw.objects_relocated + sw.objects_relocated / 10);
  // The trim ran to its end, a piece per pass: as little mapped as after one
  // pass without limits (give or take a chunk: the layouts differ).
  ck_assert_uint_gt(released, 0);
  ck_assert_uint_lt(mapped_after, mapped_before);
  ck_assert_uint_le(mapped_after, whole.get_stats().os_memory_mapped + (4u << 20));
  ck_assert_float_lt(engine.calculate_fragmentation(bit), 0.10f);
  tb.verify_all();
  ASSERT_NO_FAILURE(tb.f);

  // Stop a round in the 480-byte class, then fragment the 48-byte class, which
  // the round has passed: a pass without limits compacts both.  (Were it to
  // resume the round, the 48-byte class would stay at 90 % free: about 0.25 of
  // the heap.)
  DefragBudget few;
  few.max_objects = 10;
  fragment(bit, tb, n, 480, 10, 3u << 30);
  auto s1 = engine.defragment(bit, tb.callback(), few);
  ck_assert(s1.work_remaining);
  fragment(bit, tb, 2 * n, 48, 10, 4u << 30);
  auto s2 = engine.defragment(bit, tb.callback());
  ck_assert(!s2.work_remaining);
  ck_assert_float_lt(engine.calculate_fragmentation(bit), 0.10f);
  tb.verify_all();
  ASSERT_NO_FAILURE(tb.f);
  for (auto& [p, seed] : tb.seed_of) bit.deallocate(p);
  for (auto& [p, seed] : tw.seed_of) whole.deallocate(p);
}
END_TEST

// The heap changes between the passes of a round -- blocks freed (spans of the
// plan emptied and retired, chunks returned to the OS by trim()) and new ones
// allocated -- and the round goes on from the plan it kept: nothing is lost or
// corrupted, and the round still ends compact.
START_TEST(test_round_survives_changes_between_passes) {
  MemoryAllocator alloc;
  Tracked t;
  const std::size_t n = scaled(80000) + 4000;
  fragment(alloc, t, n, 64, 10, 1);
  fragment(alloc, t, n, 640, 10, 1u << 30);
  DefragmentationEngine engine;
  DefragBudget slice;
  slice.max_objects = 40;
  slice.measure = false;
  std::mt19937_64 rng(7);
  std::uint64_t next_seed = 5u << 30;
  std::size_t passes = 0, freed = 0, made = 0, trims = 0;
  for (;;) {
    auto s = engine.defragment(alloc, t.callback(), slice);
    ++passes;
    if (!s.work_remaining) break;
    ck_assert_uint_lt(passes, 100000);
    // Free 2 % of the blocks at random, make a few new ones of both sizes.
    std::vector<void*> live;
    for (auto& [p, seed] : t.seed_of) live.push_back(p);
    for (std::size_t k = 0; k < live.size() / 50; ++k) {
      void* p = live[rng() % live.size()];
      if (!t.seed_of.count(p)) continue;
      alloc.deallocate(p);
      t.seed_of.erase(p);
      t.size_of.erase(p);
      ++freed;
    }
    for (int k = 0; k < 8; ++k) {
      std::size_t size = k % 2 ? 64 : 640;
      void* p = alloc.allocate(size);
      ck_assert_ptr_nonnull(p);
      fill_pattern(p, size, ++next_seed);
      t.seed_of[p] = next_seed;
      t.size_of[p] = size;
      ++made;
    }
    if (passes % 16 == 0) {
      alloc.trim();  // emptied chunks go back to the OS under the kept plan
      ++trims;
    }
  }
  float frag = engine.calculate_fragmentation(alloc);
  std::printf("# %zu passes, %zu blocks freed and %zu made between them, %zu trims: fragmentation %.3f\n", passes,
              freed, made, trims, frag);
  ck_assert_uint_gt(freed, 0);
  t.verify_all();
  ASSERT_NO_FAILURE(t.f);
  // The last pass compacted what it found: whatever the frees left, a pass
  // without limits finds (almost) nothing more to move.
  auto last = engine.defragment(alloc, t.callback());
  ck_assert_float_lt(engine.calculate_fragmentation(alloc), 0.10f);
  std::printf("# then one pass without limits: %zu moves\n", last.objects_relocated);
  t.verify_all();
  ASSERT_NO_FAILURE(t.f);
  for (auto& [p, seed] : t.seed_of) alloc.deallocate(p);
  ck_assert_uint_eq(alloc.get_stats().active_allocations, 0);
}
END_TEST

// A callback that throws stops the pass: the block it was told of stays where it
// was, the blocks moved before keep their new places, nothing is lost.
START_TEST(test_callback_throws) {
  MemoryAllocator alloc;
  Tracked t;
  fragment(alloc, t, 4000, 64, 10, 99);
  DefragmentationEngine engine;
  auto inner = t.callback();
  std::size_t calls = 0;
  bool thrown = false;
  try {
    engine.defragment(alloc, [&](void* o, void* n, std::size_t size) {
      if (++calls == 5) throw std::runtime_error("owner cannot update");
      inner(o, n, size);
    });
  } catch (const std::runtime_error&) {
    thrown = true;
  }
  ck_assert(thrown);
  ck_assert_uint_eq(t.moved_from.size(), 4);
  t.verify_all();
  ASSERT_NO_FAILURE(t.f);
  ck_assert_uint_eq(alloc.get_stats().active_allocations, t.seed_of.size());
  // The heap is consistent: a full pass now completes (400 live blocks of 64
  // bytes: one span of 1024, fully carved, is what is left).
  auto stats = engine.defragment(alloc, t.callback());
  ck_assert(!stats.work_remaining);
  ck_assert_float_lt(stats.fragmentation_after, stats.fragmentation_before);
  ck_assert_uint_eq(engine.analyze(alloc).spans_in_use, 1);
  t.verify_all();
  ASSERT_NO_FAILURE(t.f);
  for (auto& [p, seed] : t.seed_of) alloc.deallocate(p);
  ck_assert_uint_eq(alloc.get_stats().active_allocations, 0);
}
END_TEST

START_TEST(test_process_heap_refused) {
  auto r = expect_death(
      [] {
        DefragmentationEngine engine;
        engine.defragment(MemoryAllocator::instance(), nullptr);
      },
      "libcalloc: Defragmentation refused of ");
  ck_assert_msg(r.ok(), "%s", r.description.c_str());
  ck_assert(r.output_contains("process heap"));
  auto r2 = expect_death(
      [] {
        HandleAllocator handles;
        DefragmentationEngine engine;
        engine.defragment(handles, nullptr);
      },
      "libcalloc: Defragmentation refused of ");
  ck_assert_msg(r2.ok(), "%s", r2.description.c_str());
}
END_TEST

// What the engine refuses, each by its name: a SecureAllocator (a
// MemoryAllocator over the process domain, its blocks in a hardened heap of its
// own) was refused as "the process heap", and a measurement of the process heap
// (calculate_fragmentation, analyze) as a "Defragmentation" to be done on
// another heap (review 24).
START_TEST(test_refusals_name_the_heap_and_the_call) {
  auto secure_defrag = expect_death(
      [] {
        custom_alloc::SecureAllocator heap;
        void* p = heap.allocate(64);
        DefragmentationEngine engine;
        engine.defragment(heap, nullptr);
        heap.deallocate(p);
      },
      "libcalloc: Defragmentation refused of ");
  ck_assert_msg(secure_defrag.ok(), "%s", secure_defrag.description.c_str());
  ck_assert_msg(secure_defrag.output_contains("a SecureAllocator's blocks never move"), "%s",
                secure_defrag.output.c_str());
  ck_assert(!secure_defrag.output_contains("process heap"));
  auto secure_measure = expect_death(
      [] {
        custom_alloc::SecureAllocator heap;
        DefragmentationEngine engine;
        std::printf("%f\n", engine.calculate_fragmentation(heap));
      },
      "libcalloc: Fragmentation analysis refused of ");
  ck_assert_msg(secure_measure.ok(), "%s", secure_measure.description.c_str());
  ck_assert(secure_measure.output_contains("SecureAllocator"));
  auto process_measure = expect_death(
      [] {
        DefragmentationEngine engine;
        std::printf("%f\n", engine.calculate_fragmentation(MemoryAllocator::instance()));
      },
      "libcalloc: Fragmentation analysis refused of ");
  ck_assert_msg(process_measure.ok(), "%s", process_measure.description.c_str());
  ck_assert(process_measure.output_contains("process heap"));
  ck_assert(process_measure.output_contains("measure an independent MemoryAllocator"));
  auto process_analyze = expect_death(
      [] {
        DefragmentationEngine engine;
        std::printf("%zu\n", engine.analyze(MemoryAllocator::instance()).live_bytes);
      },
      "libcalloc: Fragmentation analysis refused of ");
  ck_assert_msg(process_analyze.ok(), "%s", process_analyze.description.c_str());
}
END_TEST

// A NUMAAllocator keeps its blocks in one heap per node (and a base heap for
// what a node heap could not serve): the engine measures and compacts them
// all, moving each block within its own node heap.  On one node this runs the
// same path as on several (node 0's heap, beside the base heap); the NUMA
// suite's test_defragment_keeps_blocks_on_their_node checks the pages' nodes
// in the multi-node guests.  The old code refused the NUMAAllocator by name
// (and before that measured 0.0 for this heap and moved nothing).
START_TEST(test_numa_allocator_defragments) {
  custom_alloc::NUMAAllocator alloc;
  const int nodes = custom_alloc::NUMAAllocator::node_count();
  Tracked t;
  std::map<void*, int> node_of;  // current address -> the node its block was allocated on
  std::vector<int> used;
  const std::size_t n = scaled(4000) + 1000;
  for (int node = 0; node < nodes; ++node) {
    if (!custom_alloc::NUMAAllocator::node_usable(node)) continue;
    used.push_back(node);
    // 64-byte slab objects and 9-17 KiB arena blocks, 9 in 10 freed.
    for (std::size_t size : {std::size_t{64}, std::size_t{0}}) {
      std::vector<void*> all;
      for (std::size_t i = 0; i < (size ? n : n / 20); ++i) {
        std::size_t sz = size ? size : 9 * 1024 + (i % 9) * 1024;
        void* p = alloc.allocate_on_node(sz, node);
        ck_assert_ptr_nonnull(p);
        all.push_back(p);
      }
      for (std::size_t i = 0; i < all.size(); ++i) {
        std::size_t sz = size ? size : 9 * 1024 + (i % 9) * 1024;
        if (i % 10 == 0) {
          std::uint64_t seed = static_cast<std::uint64_t>(node) << 32 | (size << 20) | i;
          fill_pattern(all[i], sz, seed);
          t.seed_of[all[i]] = seed;
          t.size_of[all[i]] = sz;
          node_of[all[i]] = node;
        } else {
          alloc.deallocate(all[i]);
        }
      }
    }
  }
  DefragmentationEngine engine;
  auto before = engine.analyze(alloc);
  std::size_t live_of_nodes = 0;
  std::map<int, std::size_t> live_before;
  for (int node : used) {
    auto r = engine.analyze_node(alloc, node);
    live_before[node] = r.live_bytes;
    live_of_nodes += r.live_bytes;
    ck_assert_msg(r.fragmentation > 0.8, "node %d's heap measured %.3f, 9 in 10 of its blocks freed", node,
                  r.fragmentation);
  }
  std::printf("# NUMAAllocator on %zu node(s): fragmentation %.3f, live %zu of %zu bytes held\n", used.size(),
              before.fragmentation, before.live_bytes, before.held_bytes);
  ck_assert_msg(before.fragmentation > 0.8, "measured %.3f, 9 in 10 blocks freed", before.fragmentation);
  ck_assert_uint_eq(before.live_bytes, live_of_nodes);  // the base heap holds nothing here

  // The callback sees every move; each new place is on the old one's node
  // (the kernel's answer; one node here, several in the guests).
  auto tracked = t.callback();
  test_util::Failure f;
  std::size_t moves = 0;
  auto callback = [&](void* old_addr, void* new_addr, std::size_t size) {
    ++moves;
    auto it = node_of.find(old_addr);
    if (it == node_of.end()) {
      f.note("callback for %p, not a live block of the test", old_addr);
      return;
    }
    int node = it->second;
    int now = custom_alloc::NUMAAllocator::node_of_address(new_addr);
    if (now != node) f.note("block of node %d moved from %p to %p, on node %d", node, old_addr, new_addr, now);
    node_of.erase(it);
    node_of[new_addr] = node;
    tracked(old_addr, new_addr, size);
    // A callback may measure the heap (all of its node heaps, one locked by the pass).
    if (moves % 100 == 1) {
      auto mid = engine.analyze(alloc);
      // (Both places are live at the callback; a new arena place may take a
      // whole hole, so the live bytes may grow by more than this block.)
      if (mid.live_bytes < before.live_bytes + size || mid.held_bytes < mid.live_bytes)
        f.note("mid-pass analyze: live %zu of %zu held, %zu before", mid.live_bytes, mid.held_bytes,
               before.live_bytes);
      (void)engine.analyze_node(alloc, node);
    }
  };
  DefragBudget slice;
  slice.max_objects = 50;
  auto first = engine.defragment(alloc, callback, slice);
  ck_assert_uint_le(first.objects_relocated, 50);
  ck_assert(first.work_remaining);
  auto stats = engine.defragment(alloc, callback);
  std::printf("# then one pass: %zu moves, %.3f -> %.3f\n", stats.objects_relocated, stats.fragmentation_before,
              stats.fragmentation_after);
  ck_assert(!stats.work_remaining);
  ck_assert_uint_gt(stats.objects_relocated, 0);
  ck_assert_uint_eq(moves, first.objects_relocated + stats.objects_relocated);
  ck_assert_uint_eq(t.calls, moves);
  ck_assert_float_lt(stats.fragmentation_after, 0.10);
  ck_assert_float_lt(engine.calculate_fragmentation(alloc), 0.10f);
  for (int node : used) {
    auto r = engine.analyze_node(alloc, node);
    ck_assert_msg(r.fragmentation < 0.10, "node %d's heap at %.3f after the pass", node, r.fragmentation);
    // Every block stayed in its node's heap.
    ck_assert_uint_eq(r.live_bytes, live_before[node]);
  }
  t.verify_all();
  ASSERT_NO_FAILURE(t.f);
  ASSERT_NO_FAILURE(f);
  for (auto& [p, seed] : t.seed_of) alloc.deallocate(p);
  ck_assert_uint_eq(alloc.get_stats().active_allocations, 0);

  // Budgeted passes over several heaps converge as over one: fragmented again,
  // passes of at most 40 objects until a round ends.
  Tracked t2;
  fragment(alloc, t2, scaled(3000) + 1000, 96, 10, 99);
  unsigned passes = 0;
  for (;;) {
    auto s = engine.defragment(alloc, t2.callback(), DefragBudget{40, 40, std::chrono::microseconds::max(), false});
    ++passes;
    ck_assert_uint_le(s.objects_relocated, 40);
    if (!s.work_remaining) break;
    ck_assert_uint_lt(passes, 100000);
  }
  ck_assert_uint_gt(passes, 1);
  float frag = engine.calculate_fragmentation(alloc);
  std::printf("# %u passes of <= 40 objects: fragmentation %.3f\n", passes, frag);
  ck_assert_float_lt(frag, 0.10f);
  ck_assert_uint_eq(t2.calls, t2.moved_from.size());
  t2.verify_all();
  ASSERT_NO_FAILURE(t2.f);
  for (auto& [p, seed] : t2.seed_of) alloc.deallocate(p);

  auto bad_node = expect_death(
      [] {
        custom_alloc::NUMAAllocator heap;
        DefragmentationEngine engine;
        std::printf("%zu\n", engine.analyze_node(heap, custom_alloc::NUMAAllocator::node_count()).live_bytes);
      },
      "libcalloc: Fragmentation analysis refused of ");
  ck_assert_msg(bad_node.ok(), "%s", bad_node.description.c_str());
  ck_assert_msg(bad_node.output_contains("is not a node of this machine"), "%s", bad_node.output.c_str());
}
END_TEST

// A relocation callback that allocates, frees, resizes or trims in the heap
// being defragmented is caught with one line (the heap's lock is recursive: the
// old code let it change the heap under the pass; trim since session 17).
START_TEST(test_callback_using_heap_dies) {
  struct Case {
    const char* what;
    int op;
  } cases[] = {{"allocate", 0}, {"deallocate", 1}, {"reallocate", 2}, {"trim", 3}};
  std::string failures;
  for (const Case& c : cases) {
    int op = c.op;
    auto r = expect_death(
        [op] {
          MemoryAllocator alloc;
          std::vector<void*> all;
          for (int i = 0; i < 4000; ++i) all.push_back(alloc.allocate(64));
          for (std::size_t i = 0; i < all.size(); ++i)
            if (i % 10 != 0) alloc.deallocate(all[i]);
          void* spare = alloc.allocate(128);
          DefragmentationEngine engine;
          engine.defragment(alloc, [&](void*, void* q, std::size_t) {
            if (op == 0) alloc.deallocate(alloc.allocate(32));
            if (op == 1 && spare) {
              alloc.deallocate(spare);
              spare = nullptr;
            }
            if (op == 2) (void)alloc.reallocate(q, 4096);
            if (op == 3) alloc.trim();
          });
        },
        "libcalloc: Heap used during its defragmentation of ");
    if (!r.ok()) failures += std::string(c.what) + ": " + r.description + "\n";
  }
  ck_assert_msg(failures.empty(), "%s", failures.c_str());
  // Another heap is fine, and the mark ends with the pass.
  MemoryAllocator alloc, other;
  std::vector<void*> all;
  for (int i = 0; i < 4000; ++i) all.push_back(alloc.allocate(64));
  for (std::size_t i = 0; i < all.size(); ++i)
    if (i % 10 != 0) alloc.deallocate(all[i]);
  std::vector<void*> others;
  DefragmentationEngine engine;
  auto stats = engine.defragment(alloc, [&](void*, void*, std::size_t) { others.push_back(other.allocate(32)); });
  ck_assert_uint_gt(stats.objects_relocated, 0);
  ck_assert_uint_eq(others.size(), stats.objects_relocated);
  for (void* p : others) other.deallocate(p);
  alloc.deallocate(alloc.allocate(32));
}
END_TEST

// Reading the heap from a relocation callback is allowed (defrag.h++): the
// usable size of the old and the new place (both live blocks then), the
// statistics, the fragmentation report.  The counts include the new place and
// not yet the free of the old one; the pass goes on as without the reads.
START_TEST(test_callback_reads_heap) {
  MemoryAllocator alloc;
  std::vector<void*> all;
  for (int i = 0; i < 4000; ++i) all.push_back(alloc.allocate(64));
  for (int i = 0; i < 40; ++i) all.push_back(alloc.allocate(3000 + static_cast<std::size_t>(i) * 100));  // arena
  std::set<void*> live;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i % 10 != 0)
      alloc.deallocate(all[i]);
    else
      live.insert(all[i]);
  }
  const std::size_t active = alloc.get_stats().active_allocations;
  std::size_t calls = 0, bad = 0;
  double frag_seen = -1;
  DefragmentationEngine engine;
  auto stats = engine.defragment(alloc, [&](void* p, void* q, std::size_t n) {
    ++calls;
    if (live.erase(p) != 1) ++bad;
    live.insert(q);
    if (alloc.get_allocation_size(p) < n || alloc.get_allocation_size(q) < n) ++bad;
    auto st = alloc.get_stats();
    if (st.active_allocations != active + 1) ++bad;  // the new place, the old not freed yet
    if (calls % 50 == 1) {
      auto r = engine.analyze(alloc);
      frag_seen = r.fragmentation;
      if (r.live_bytes == 0 || r.held_bytes < r.live_bytes) ++bad;
      float f = engine.calculate_fragmentation(alloc);
      if (f < 0 || f > 1) ++bad;
    }
  });
  std::printf("# callback reads: %zu moves, fragmentation %.3f -> %.3f, seen mid-pass %.3f\n", stats.objects_relocated,
              stats.fragmentation_before, stats.fragmentation_after, frag_seen);
  ck_assert_uint_gt(stats.objects_relocated, 0);
  ck_assert_uint_eq(calls, stats.objects_relocated);
  ck_assert_uint_eq(bad, 0);
  ck_assert_uint_eq(alloc.get_stats().active_allocations, active);
  for (void* p : live) alloc.deallocate(p);
}
END_TEST

// --- the handle heap ---------------------------------------------------------------

START_TEST(test_handle_heap_compacts) {
  HandleAllocator alloc;
  std::mt19937_64 rng(3);
  std::vector<Handle> all, kept;
  std::size_t n = scaled(20000) + 1000;
  for (std::size_t i = 0; i < n; ++i) {
    std::size_t size = (i % 3 == 0) ? 200 : (i % 3 == 1 ? 64 : 12000);
    Handle h = alloc.allocate_handle(size);
    ck_assert_uint_ne(h, 0);
    ck_assert_uint_eq(alloc.handle_size(h), size);
    all.push_back(h);
  }
  std::vector<Handle> freed;
  for (Handle h : all) {
    if (rng() % 10 == 0) {
      kept.push_back(h);
      fill_pattern(alloc.resolve(h), alloc.handle_size(h), h);
    } else {
      alloc.deallocate_handle(h);
      freed.push_back(h);
    }
  }
  float before = alloc.fragmentation();
  auto stats = alloc.defragment(DefragBudget{});
  float after = alloc.fragmentation();
  std::printf("# handle heap: %.3f -> %.3f, %zu moved, %zu skipped, %lld us\n", before, after, stats.objects_relocated,
              stats.objects_skipped, static_cast<long long>(stats.duration.count()));
  // (In Valgrind and ASan mode the freed blocks wait in the quarantine, still
  // counted as live.)
  if (!checked_mode()) ck_assert_float_gt(before, 0.8f);
  ck_assert_uint_gt(stats.objects_relocated, 0);
  if (!checked_mode()) ck_assert_float_lt(after, 0.10f);  // old places wait in the quarantine there
  test_util::Failure f;
  for (Handle h : kept) {
    long bad = check_pattern(alloc.resolve(h), alloc.handle_size(h), h);
    if (bad >= 0) f.note("handle %llx differs at byte %ld", static_cast<unsigned long long>(h), bad);
  }
  ASSERT_NO_FAILURE(f);
  for (Handle h : freed) ck_assert_ptr_null(alloc.try_resolve(h));
  ck_assert_uint_eq(alloc.handle_stats().live_handles, kept.size());
  for (Handle h : kept) alloc.deallocate_handle(h);
  ck_assert_uint_eq(alloc.handle_stats().live_handles, 0);
}
END_TEST

// One pass of HandleAllocator::defragment() does the whole heap: every 10th of
// many equal objects kept, in slot (and address) order.  The pass sweeps the
// handles in slot order and re-plans each batch; the moves turn spans whose
// handles were passed as destinations' into sources, and the old code swept
// once: 0.90 -> 0.51 with work_remaining false, and the next passes moved 2 912
// and 1 126 more objects (review 24).
START_TEST(test_handle_defragment_one_pass_whole) {
  HandleAllocator alloc;
  std::size_t n = scaled(100000) < 40000 ? 40000 : scaled(100000);
  std::vector<Handle> all, kept;
  for (std::size_t i = 0; i < n; ++i) {
    Handle h = alloc.allocate_handle(64);
    ck_assert_uint_ne(h, 0);
    all.push_back(h);
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (i % 10 == 0) {
      kept.push_back(all[i]);
      fill_pattern(alloc.resolve(all[i]), 64, all[i]);
    } else {
      alloc.deallocate_handle(all[i]);
    }
  }
  auto first = alloc.defragment(DefragBudget{});
  auto second = alloc.defragment(DefragBudget{});
  std::printf("# one pass: %.3f -> %.3f (%zu moved, work_remaining %d); a second pass moved %zu\n",
              first.fragmentation_before, first.fragmentation_after, first.objects_relocated,
              first.work_remaining, second.objects_relocated);
  ck_assert(!first.work_remaining);
  ck_assert_uint_gt(first.objects_relocated, 0);
  if (!checked_mode()) {  // (there the freed blocks wait in the quarantine, counted as live)
    ck_assert_float_gt(first.fragmentation_before, 0.8);
    ck_assert_float_lt(first.fragmentation_after, 0.10);
    ck_assert_uint_eq(second.objects_relocated, 0);
  }
  test_util::Failure f;
  for (Handle h : kept) {
    long bad = check_pattern(alloc.resolve(h), 64, h);
    if (bad >= 0) f.note("handle %llx differs at byte %ld", static_cast<unsigned long long>(h), bad);
  }
  ASSERT_NO_FAILURE(f);
  for (Handle h : kept) alloc.deallocate_handle(h);
}
END_TEST

START_TEST(test_pins_keep_objects_in_place) {
  HandleAllocator alloc;
  Handle h = alloc.allocate_handle(256);
  fill_pattern(alloc.resolve(h), 256, 5);
  {
    auto g = alloc.pin(h);
    void* p = g.get();
    ck_assert(!alloc.relocate(h));  // pinned: stays
    ck_assert_ptr_eq(alloc.resolve(h), p);
    auto g2 = std::move(g);
    ck_assert(!g);
    ck_assert(g2);
    ck_assert(!alloc.relocate(h));
  }
  void* before = alloc.resolve(h);
  ck_assert(alloc.relocate(h));  // unpinned: moves
  void* after = alloc.resolve(h);
  ck_assert_ptr_ne(before, after);
  ck_assert_int_eq(check_pattern(after, 256, 5), -1);
  alloc.deallocate_handle(h);
}
END_TEST

// A handle names a slot and a generation of its own heap.  Every heap's slots
// started at generation 1, so the first handle of every heap was the same
// number: another heap's handle (or a destroyed heap's) resolved to this heap's
// object of the same slot, and deallocate_handle freed it, without a word.
START_TEST(test_handle_of_another_heap_refused) {
  struct Case {
    const char* what;
    void (*fn)();
  } cases[] = {
      {"resolve another heap's handle",
       [] {
         HandleAllocator a, b;
         Handle ha = a.allocate_handle(32);
         b.allocate_handle(32);
         b.resolve(ha);
       }},
      {"deallocate another heap's handle",
       [] {
         HandleAllocator a, b;
         Handle ha = a.allocate_handle(32);
         b.allocate_handle(32);
         b.deallocate_handle(ha);
       }},
      {"pin a destroyed heap's handle",
       [] {
         Handle old;
         {
           HandleAllocator a;
           old = a.allocate_handle(32);
         }
         HandleAllocator b;
         b.allocate_handle(32);
         b.pin(old);
       }},
  };
  for (const Case& c : cases) {
    auto r = expect_death(c.fn, "libcalloc: Invalid handle of ");
    ck_assert_msg(r.ok(), "%s: %s", c.what, r.description.c_str());
  }
  HandleAllocator a, b;
  Handle ha = a.allocate_handle(32), hb = b.allocate_handle(32);
  ck_assert_uint_ne(ha, hb);
  ck_assert_ptr_null(b.try_resolve(ha));
  ck_assert_ptr_null(a.try_resolve(hb));
  // A slot reused within one heap still tells freed from forged.
  a.deallocate_handle(ha);
  Handle again = a.allocate_handle(32);
  ck_assert_uint_eq(static_cast<std::uint32_t>(again), static_cast<std::uint32_t>(ha));
  ck_assert_uint_eq(again >> 32, (ha >> 32) + 1);
  auto r = expect_death([&] { a.resolve(ha); }, "libcalloc: Stale handle of ");
  ck_assert_msg(r.ok(), "reused slot: %s", r.description.c_str());
  a.deallocate_handle(again);
  b.deallocate_handle(hb);
}
END_TEST

// 0 is no handle (what a failed allocate_handle returns): deallocate_handle(0)
// does nothing, as free(NULL), where it aborted with "Invalid handle of (nil)";
// resolve(0) is still an error (test_bad_handles_die).
START_TEST(test_deallocate_null_handle_does_nothing) {
  HandleAllocator a;
  Handle keep = a.allocate_handle(64);
  errno = 0;
  Handle failed = a.allocate_handle(SIZE_MAX / 2);
  ck_assert_uint_eq(failed, 0);
  ck_assert_int_eq(errno, ENOMEM);
  auto before = a.handle_stats();
  a.deallocate_handle(failed);
  a.deallocate_handle(0);
  auto after = a.handle_stats();
  ck_assert_uint_eq(after.live_handles, before.live_handles);
  ck_assert_uint_eq(a.handle_size(keep), 64);
  a.deallocate_handle(keep);
  ck_assert_uint_eq(a.handle_stats().live_handles, before.live_handles - 1);
}
END_TEST

START_TEST(test_bad_handles_die) {
  struct Case {
    const char* what;
    const char* expected;
    void (*fn)();
  } cases[] = {
      {"resolve freed", "libcalloc: Stale handle of ",
       [] {
         HandleAllocator a;
         Handle h = a.allocate_handle(32);
         a.deallocate_handle(h);
         a.resolve(h);
       }},
      {"resolve reused slot", "libcalloc: Stale handle of ",
       [] {
         HandleAllocator a;
         Handle h = a.allocate_handle(32);
         a.deallocate_handle(h);
         Handle h2 = a.allocate_handle(32);
         if (static_cast<std::uint32_t>(h2) != static_cast<std::uint32_t>(h)) std::abort();
         a.resolve(h);
       }},
      {"resolve forged", "libcalloc: Invalid handle of ",
       [] {
         HandleAllocator a;
         a.allocate_handle(32);
         a.resolve(0x0000000700000000ull);
       }},
      {"resolve out of range", "libcalloc: Invalid handle of ",
       [] {
         HandleAllocator a;
         a.resolve(0x00000001000f0000ull);
       }},
      {"resolve zero", "libcalloc: Invalid handle of ",
       [] {
         HandleAllocator a;
         a.resolve(0);
       }},
      {"pin freed", "libcalloc: Stale handle of ",
       [] {
         HandleAllocator a;
         Handle h = a.allocate_handle(32);
         a.deallocate_handle(h);
         a.pin(h);
       }},
      {"double deallocate", "libcalloc: Stale handle of ",
       [] {
         HandleAllocator a;
         Handle h = a.allocate_handle(32);
         a.deallocate_handle(h);
         a.deallocate_handle(h);
       }},
      {"deallocate forged", "libcalloc: Invalid handle of ",
       [] {
         HandleAllocator a;
         a.deallocate_handle(0x1234);
       }},
      {"deallocate pinned", "libcalloc: Invalid free of ",
       [] {
         HandleAllocator a;
         Handle h = a.allocate_handle(32);
         auto g = a.pin(h);
         a.deallocate_handle(h);
       }},
  };
  for (const Case& c : cases) {
    auto r = expect_death(c.fn, c.expected);
    ck_assert_msg(r.ok(), "%s: %s", c.what, r.description.c_str());
  }
  HandleAllocator a;
  Handle h = a.allocate_handle(32);
  a.deallocate_handle(h);
  ck_assert_ptr_null(a.try_resolve(h));
  ck_assert_ptr_null(a.try_resolve(0));
  ck_assert_ptr_null(a.try_resolve(0xffffffff00001234ull));
}
END_TEST

// TURN 3's failure, shown and prevented.  A writer writes a sequence number into
// words 2..127 of a 1 KiB object (words 0 and 1 hold the free-list link once the
// old place is free: the demonstration must not corrupt the heap it runs on),
// calls into the heap (resolve of another handle, which ends the validity of its
// pointers), and checks the object through a fresh resolve.  Another thread moves
// the object again and again (relocate).  Keeping the first pointer against the
// rule loses writes; resolving each time (the rule) or pinning loses none.
namespace {
enum class Access { against_rule, within_rule, pinned };
struct RaceResult {
  std::size_t lost = 0, iterations = 0, moves = 0;
};
RaceResult race(Access how, std::chrono::milliseconds length) {
  HandleAllocator alloc;
  Handle h = alloc.allocate_handle(1024);
  Handle other = alloc.allocate_handle(16);
  std::memset(alloc.resolve(h), 0, 1024);
  alloc.offline();  // this thread's pointer from resolve would hold the object in place
  std::atomic<bool> stop{false}, ready{false};
  std::atomic<std::size_t> moves{0};
  TEST_BENIGN_RACE(&stop, "the stop flag");
  TEST_BENIGN_RACE(&ready, "the start flag");
  RaceResult r;
  std::thread writer([&] {
    HandleAllocator::PinGuard g;
    std::uint64_t* p = nullptr;
    if (how == Access::pinned) {
      g = alloc.pin(h);
      p = g.as<std::uint64_t>();
    } else {
      p = static_cast<std::uint64_t*>(alloc.resolve(h));
    }
    ready = true;
    for (std::uint64_t n = 1; !stop.load(std::memory_order_relaxed); ++n) {
      if (how == Access::within_rule) p = static_cast<std::uint64_t*>(alloc.resolve(h));
      for (int i = 2; i < 128; i++) p[i] = n;
      alloc.resolve(other);  // a call into the heap: a quiescent point
      auto* q = static_cast<std::uint64_t*>(alloc.resolve(h));
      for (int i = 2; i < 128; i++)
        if (q[i] != n) {
          ++r.lost;
          break;
        }
      ++r.iterations;
    }
    alloc.offline();
  });
  std::thread mover([&] {
    while (!ready) std::this_thread::sleep_for(std::chrono::microseconds(100));
    auto end = std::chrono::steady_clock::now() + length;
    while (std::chrono::steady_clock::now() < end) {
      if (alloc.relocate(h)) moves.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    stop = true;
  });
  writer.join();
  mover.join();
  r.moves = moves.load();
  alloc.deallocate_handle(other);
  alloc.deallocate_handle(h);
  return r;
}
}  // namespace

START_TEST(test_rule_broken_loses_writes) {
  if (running_on_valgrind())
    TEST_SKIP("memcheck reports the writes into the freed old place (test_stale_pointer_reported shows that)");
  if (test_util::kAsanBuild || test_util::kTsanBuild)
    TEST_SKIP("the sanitizer reports the deliberate use after move and stops the program");
  RaceResult r = race(Access::against_rule, std::chrono::milliseconds(300));
  std::printf("# against the rule: %zu lost of %zu iterations, %zu moves\n", r.lost, r.iterations, r.moves);
  ck_assert_uint_gt(r.moves, 0);
  ck_assert_uint_gt(r.lost, 0);
}
END_TEST

START_TEST(test_rule_kept_loses_nothing) {
  RaceResult r = race(Access::within_rule, std::chrono::milliseconds(scaled(300) + 100));
  std::printf("# within the rule: %zu lost of %zu iterations, %zu moves\n", r.lost, r.iterations, r.moves);
  ck_assert_uint_eq(r.lost, 0);
  if (!running_on_valgrind()) ck_assert_uint_gt(r.moves, 0);
  RaceResult p = race(Access::pinned, std::chrono::milliseconds(scaled(200) + 50));
  std::printf("# pinned: %zu lost of %zu iterations, %zu moves\n", p.lost, p.iterations, p.moves);
  ck_assert_uint_eq(p.lost, 0);
  ck_assert_uint_eq(p.moves, 0);
}
END_TEST

// 4 threads allocate, resolve, write, verify, pin and free handles while a 5th
// defragments continuously: no lost object, no corruption, stale handles rejected.
START_TEST(test_concurrent_defragmentation) {
  HandleAllocator alloc;
  std::atomic<bool> stop{false};
  TEST_BENIGN_RACE(&stop, "the stop flag");
  constexpr int kWorkers = 4;
  test_util::Failure failures[kWorkers];
  std::size_t ops[kWorkers] = {};
  std::thread workers[kWorkers];
  for (int w = 0; w < kWorkers; ++w) {
    workers[w] = std::thread([&, w] {
      std::mt19937_64 rng(100 + w);
      struct Obj {
        Handle h;
        std::size_t size;
        std::uint64_t seed;
      };
      std::vector<Obj> mine;
      std::vector<Handle> dead;
      test_util::Failure& f = failures[w];
      std::uint64_t next_seed = static_cast<std::uint64_t>(w) << 40;
      while (!stop.load(std::memory_order_relaxed)) {
        unsigned op = static_cast<unsigned>(rng() % 100);
        if (op < 30 || mine.size() < 50) {
          // A burst, then free most of it: fragmentation for the mover.
          std::size_t sizes[] = {24, 64, 200, 1000, 10000};
          for (int k = 0; k < 8; ++k) {
            std::size_t size = sizes[rng() % 5];
            Handle h = alloc.allocate_handle(size);
            if (!h) {
              f.note("allocate_handle(%zu) failed", size);
              continue;
            }
            std::uint64_t seed = ++next_seed;
            fill_pattern(alloc.resolve(h), size, seed);
            mine.push_back(Obj{h, size, seed});
          }
        } else if (op < 55) {
          Obj& o = mine[rng() % mine.size()];
          long bad = check_pattern(alloc.resolve(o.h), o.size, o.seed);
          if (bad >= 0) f.note("handle %llx differs at byte %ld", static_cast<unsigned long long>(o.h), bad);
        } else if (op < 70) {
          Obj& o = mine[rng() % mine.size()];
          auto g = alloc.pin(o.h);
          long bad = check_pattern(g.get(), o.size, o.seed);
          if (bad >= 0) f.note("pinned handle differs at byte %ld", bad);
          alloc.resolve(mine[0].h);  // other calls: the pinned pointer stays valid
          o.seed = ++next_seed;
          fill_pattern(g.get(), o.size, o.seed);
        } else if (op < 80) {
          Obj& o = mine[rng() % mine.size()];
          o.seed = ++next_seed;
          fill_pattern(alloc.resolve(o.h), o.size, o.seed);
        } else {
          std::size_t i = rng() % mine.size();
          long bad = check_pattern(alloc.resolve(mine[i].h), mine[i].size, mine[i].seed);
          if (bad >= 0) f.note("freed handle differed at byte %ld", bad);
          alloc.deallocate_handle(mine[i].h);
          dead.push_back(mine[i].h);
          mine[i] = mine.back();
          mine.pop_back();
          if (dead.size() > 64) dead.erase(dead.begin());
        }
        if (!dead.empty() && rng() % 8 == 0) {
          // A freed handle stays dead, even when its slot was reused.
          if (alloc.try_resolve(dead[rng() % dead.size()]) != nullptr) f.note("a freed handle resolved");
        }
        ++ops[w];
      }
      for (const Obj& o : mine) {
        long bad = check_pattern(alloc.resolve(o.h), o.size, o.seed);
        if (bad >= 0) f.note("handle differs at byte %ld at the end", bad);
        alloc.deallocate_handle(o.h);
      }
      alloc.offline();
    });
  }
  std::size_t passes = 0, moved = 0;
  std::thread mover([&] {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(scaled(3000) + 100);
    while (std::chrono::steady_clock::now() < end) {
      DefragBudget b;
      b.max_time = std::chrono::microseconds(1000);
      auto s = alloc.defragment(b);
      moved += s.objects_relocated;
      ++passes;
    }
    stop = true;
  });
  mover.join();
  for (auto& t : workers) t.join();
  auto hs = alloc.handle_stats();
  std::size_t total = 0;
  for (std::size_t n : ops) total += n;
  std::printf("# %zu passes, %zu moved (%zu abandoned, %zu reader waits), %zu worker operations\n", passes, moved,
              hs.moves_abandoned, hs.reader_waits, total);
  for (auto& f : failures) ASSERT_NO_FAILURE(f);
  ck_assert_uint_eq(hs.live_handles, 0);
  ck_assert_uint_eq(alloc.get_stats().active_allocations, 0);
  // (In ASan and Valgrind mode freed blocks wait in the quarantine, still used:
  // the spans rarely look sparse enough to move from.)
  if (!checked_mode()) ck_assert_uint_gt(moved, 0);
}
END_TEST

// Movers one after another.  relocate() and defragment() take the heap's mover
// lock; a thread that waits for it holds no pointer of the heap, but it used to
// wait online (announced at its call's start), so the mover in front of it
// waited the whole grace timeout (5 ms) for it and gave its move up: relocate
// returned false for an unpinned object.  6 threads (more than the 2 cores)
// each move their own object again and again, for 200 ms: every relocate must
// succeed.  On the old code 10 runs of 10 failed, 16-46 relocates false in
// each (each one a 5 ms wait: 13 000-31 000 relocates in all, or barely 20).
START_TEST(test_concurrent_relocates_all_succeed) {
  HandleAllocator alloc;
  constexpr int kThreads = 6;
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0}, done{0};
  TEST_BENIGN_RACE(&stop, "the stop flag");
  std::size_t tries[kThreads] = {}, failed[kThreads] = {};
  test_util::Failure failures[kThreads];
  std::thread threads[kThreads];
  for (int i = 0; i < kThreads; ++i)
    threads[i] = std::thread([&, i] {
      Handle h = alloc.allocate_handle(200);
      fill_pattern(alloc.resolve(h), 200, 70 + i);
      alloc.offline();
      // No thread holds a pointer from resolve while any moves (one descheduled
      // then would hold the movers up for the grace timeout, as the rule says).
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();
      while (!stop.load(std::memory_order_relaxed)) {
        ++tries[i];
        if (!alloc.relocate(h)) ++failed[i];
      }
      done.fetch_add(1);
      while (done.load() < kThreads) std::this_thread::yield();
      long bad = check_pattern(alloc.resolve(h), 200, 70 + i);
      if (bad >= 0) failures[i].note("object %d differs at byte %ld", i, bad);
      alloc.deallocate_handle(h);
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(scaled(200) + 20));
  stop = true;
  for (auto& t : threads) t.join();
  std::size_t all = 0, bad = 0;
  for (int i = 0; i < kThreads; ++i) {
    all += tries[i];
    bad += failed[i];
    ASSERT_NO_FAILURE(failures[i]);
  }
  std::printf("# %zu relocates, %zu false, %zu abandoned\n", all, bad, alloc.handle_stats().moves_abandoned);
  std::fflush(stdout);
  ck_assert_uint_gt(all, 0);
  ck_assert_uint_eq(bad, 0);
}
END_TEST

// Valgrind: the old place of a moved object is a freed block to memcheck, so a
// stale pointer into it is reported.  Run in a child; memcheck's report and its
// error exit status (--error-exitcode=1) are what the test looks for.
namespace {
// memcheck (not helgrind or DRD, which do not check accesses to freed blocks).
bool running_on_memcheck() {
  if (!running_on_valgrind()) return false;
  int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  std::string maps;
  bool ok = test_util::slurp_fd(fd, maps);
  ::close(fd);
  return ok && maps.find("vgpreload_memcheck") != std::string::npos;
}
}  // namespace

START_TEST(test_quarantine_holds_during_pass) {
  // Valgrind mode keeps freed blocks in a FIFO quarantine (vg.h++), released
  // oldest first by later frees -- of any heap, the pass's own vector
  // reallocations included.  Here each free run H of the heap has a quarantined
  // block Q just before it, and the Q blocks are the quarantine's oldest: a Q
  // released while a batch is planned coalesces with the run before it and with
  // H, so that H is no block of its own any more.  Before the heap was held
  // during a pass, planning a move into H corrupted the heap: this test failed
  // on that code in 2 runs of 2 under memcheck (14-20 objects lost), and
  // test_concurrent_defragmentation crashed or lost an object in 3 runs of 5.
  if (!test_util::running_on_valgrind() || !lca::on_valgrind())
    TEST_SKIP("needs Valgrind mode: the quarantine this sets up (kVgQuarantine blocks) is Valgrind's (ASan's holds "
              "64 Ki blocks; natively there is none)");
#if CALLOC_SECURE
  TEST_SKIP("built with --enable-secure: std::malloc/free are the hardened heap's, so the frees meant to push the Q "
            "blocks through Valgrind mode's quarantine never reach it (the scenario cannot be set up)");
#endif
  HandleAllocator alloc;
  constexpr std::size_t kSize = 10000;  // arena blocks, one 4 MiB chunk for all
  constexpr std::size_t kPairs = 120, kMoved = 120;
  std::vector<Handle> h, q, c;
  for (std::size_t i = 0; i < kPairs; ++i) {
    h.push_back(alloc.allocate_handle(kSize));
    q.push_back(alloc.allocate_handle(kSize));
  }
  for (std::size_t i = 0; i < kMoved; ++i) {
    Handle x = alloc.allocate_handle(kSize);
    fill_pattern(alloc.resolve(x), kSize, x);
    c.push_back(x);
  }
  // The H blocks, then a quarantine's worth of other frees: the H blocks leave
  // it (free runs).  Then the Q blocks, each followed by three other frees, so
  // that whichever frees the pass makes before it plans take a few Q blocks
  // only; then more other frees, until a Q block is the oldest entry.
  auto other_frees = [](std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) std::free(test_util::launder(std::malloc(16)));
  };
  for (Handle x : h) alloc.deallocate_handle(x);
  other_frees(lca::kVgQuarantine);
  for (Handle x : q) {
    alloc.deallocate_handle(x);
    other_frees(3);
  }
  other_frees(lca::kVgQuarantine - 4 * kPairs);
  auto stats = alloc.defragment(DefragBudget{});
  ck_assert_uint_gt(stats.objects_relocated, 0);
  // New blocks land in the runs the pass left: none may overlap a moved one.
  std::vector<Handle> fresh;
  for (std::size_t i = 0; i < 2 * kPairs; ++i) {
    Handle x = alloc.allocate_handle(kSize);
    fill_pattern(alloc.resolve(x), kSize, x);
    fresh.push_back(x);
  }
  test_util::Failure f;
  for (const std::vector<Handle>* v : {&c, &fresh})
    for (Handle x : *v) {
      long bad = check_pattern(alloc.resolve(x), kSize, x);
      if (bad >= 0) f.note("handle %llx differs at byte %ld", static_cast<unsigned long long>(x), bad);
    }
  ASSERT_NO_FAILURE(f);
  const char* why = "";
  bool ok;
  {
    lca::VgSerial serial;
    lca::DomainLock lock(alloc.domain());
    ok = lca::arena_verify(&alloc.domain()->single->arena, &why);
  }
  ck_assert_msg(ok, "the arena's boundary tags are corrupt after the pass: %s", why);
}
END_TEST

START_TEST(test_stale_pointer_reported) {
  if (running_on_valgrind() && !running_on_memcheck())
    TEST_SKIP("this Valgrind tool does not check accesses to freed blocks (memcheck does)");
  if (!running_on_valgrind() && !test_util::kAsanBuild)
    TEST_SKIP("needs memcheck or ASan to see the stale access (natively it reads freed memory silently)");
  auto stale_read = [] {
    HandleAllocator a;
    Handle h = a.allocate_handle(128);
    auto* p = static_cast<volatile std::uint64_t*>(a.resolve(h));
    p[3] = 42;
    if (!a.relocate(h)) std::_Exit(3);
    std::uint64_t v = p[3];  // against the rule: p is the old place
    test_util::escape(&v);
    std::_Exit(0);
  };
  if (test_util::kAsanBuild) {
    auto r = test_util::expect_report(stale_read, {"ERROR: AddressSanitizer: use-after-poison"});
    ck_assert_msg(r.died_of_sigabrt && r.matched, "%s", r.description.c_str());
    return;
  }
  // memcheck writes its report ("Invalid read of size 8 ... inside a block of
  // size 128 free'd") to its own log descriptor, not to the child's stderr: the
  // child's exit status says it found an error (--error-exitcode=1; the child
  // itself exits 0).
  auto r = test_util::expect_report(stale_read, {});
  ck_assert_msg(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 1, "%s", r.description.c_str());
}
END_TEST

// ---------------------------------------------------------------------------
// Typed owning pointers over the handle heap (custom_alloc/handle_ptr.h++).

namespace {
// A relocatable type with a destructor: the program says that copying its
// bytes moves it (handle_relocatable), and the tests count its lives.
struct Counted {
  static inline std::atomic<int> made{0};
  static inline std::atomic<int> destroyed{0};
  std::uint64_t value;
  std::uint64_t check;  // value's complement: a torn or lost copy shows
  explicit Counted(std::uint64_t v) : value(v), check(~v) { made.fetch_add(1); }
  ~Counted() { destroyed.fetch_add(1); }
  bool intact() const { return check == ~value; }
  static void reset() {
    made = 0;
    destroyed = 0;
  }
};

// Calls into its own heap from inside a member: moving it there would pull the
// object from under `this`.
struct SelfMover {
  std::uint64_t value;
  // True if the heap moved this object while the member ran (`where` gives the
  // object's address now, through its owner).
  template <class Where>
  bool try_to_move(HandleAllocator& heap, Handle self, Where where) {
    bool moved = heap.relocate(self);
    heap.deallocate_handle(heap.allocate_handle(64));  // any other call
    return moved || where() != this;
  }
};

struct ThrowsOnSeven {
  std::uint64_t value;
  explicit ThrowsOnSeven(std::uint64_t v) : value(v) {
    if (v == 7) throw std::runtime_error("seven");
  }
};
}  // namespace

template <>
struct custom_alloc::handle_relocatable<Counted> : std::true_type {};

// A unique_handle owns its object across moves: values intact after relocate
// and defragment, the object destroyed once on reset/destruction, none left.
START_TEST(test_unique_handle_owns_across_moves) {
  using custom_alloc::make_unique_handle;
  using custom_alloc::unique_handle;
  HandleAllocator heap;
  Counted::reset();
  {
    std::vector<unique_handle<Counted>> objs;
    std::vector<Handle> filler;
    for (std::uint64_t i = 0; i < 2000; ++i) {
      objs.push_back(make_unique_handle<Counted>(heap, i));
      // Spans 1/8 full, then 1/2 full: the sparse ones are emptied.
      for (int k = 0; k < (i < 1000 ? 7 : 1); ++k) filler.push_back(heap.allocate_handle(sizeof(Counted)));
    }
    ck_assert_int_eq(Counted::made.load(), 2000);
    for (Handle h : filler) heap.deallocate_handle(h);
    void* before = objs[1000].get();
    ck_assert(heap.relocate(objs[1000].handle()));
    ck_assert_ptr_ne(objs[1000].get(), before);
    heap.defragment();
    // (In ASan and Valgrind mode the freed fillers wait in the quarantine,
    // still used: the spans do not look sparse, and only relocate() moved.)
    ck_assert_uint_ge(heap.handle_stats().moves, 1);
    if (!checked_mode()) ck_assert_uint_gt(heap.handle_stats().moves, 1);
    for (std::uint64_t i = 0; i < objs.size(); ++i) {
      ck_assert_uint_eq(objs[i]->value, i);  // pinned access
      ck_assert(objs[i].get()->intact());    // resolved access
    }
    ck_assert_int_eq(Counted::destroyed.load(), 0);

    unique_handle<Counted> moved = std::move(objs[5]);
    ck_assert(!objs[5]);
    ck_assert(objs[5] == nullptr);
    ck_assert_uint_eq(moved->value, 5);
    moved.reset();
    ck_assert_int_eq(Counted::destroyed.load(), 1);
    ck_assert(!moved);

    Handle raw = objs[6].release();  // the caller owns it now, alive
    ck_assert_int_eq(Counted::destroyed.load(), 1);
    unique_handle<Counted> adopted(heap, raw);
    ck_assert_uint_eq(adopted.pin()->value, 6);
    objs[7] = std::move(adopted);  // destroys the old 7
    ck_assert_int_eq(Counted::destroyed.load(), 2);
    ck_assert_uint_eq(objs[7]->value, 6);
  }
  ck_assert_int_eq(Counted::destroyed.load(), 2000);
  ck_assert_uint_eq(heap.handle_stats().live_handles, 0);
  ck_assert_uint_eq(heap.get_stats().active_allocations, 0);
}
END_TEST

// `p->f()` pins for the whole expression: f may call into the heap and even ask
// it to move the object, which stays put; after the expression it moves again.
// pin() holds it for as long as its guard lives.
START_TEST(test_handle_arrow_pins) {
  HandleAllocator heap;
  auto p = custom_alloc::make_unique_handle<SelfMover>(heap, SelfMover{42});
  ck_assert(!p->try_to_move(heap, p.handle(), [&] { return p.get(); }));
  {
    auto g = p.pin();
    ck_assert(g);
    ck_assert(!heap.relocate(p.handle()));
    ck_assert_uint_eq((*g).value, 42);
    g.release();
    ck_assert(!g);
    ck_assert_ptr_null(g.get());
  }
  void* before = p.get();
  ck_assert(heap.relocate(p.handle()));
  ck_assert_ptr_ne(p.get(), before);
  ck_assert_uint_eq(p->value, 42);

  auto s = custom_alloc::make_shared_handle<SelfMover>(heap, SelfMover{43});
  ck_assert(!s->try_to_move(heap, s.handle(), [&] { return s.get(); }));
  ck_assert(heap.relocate(s.handle()));
  ck_assert_uint_eq(s->value, 43);
}
END_TEST

// A constructor that throws frees its handle and the exception reaches the
// caller: nothing leaks.
START_TEST(test_handle_constructor_throws) {
  HandleAllocator heap;
  auto keep = custom_alloc::make_unique_handle<ThrowsOnSeven>(heap, 1);
  for (int kind = 0; kind < 2; ++kind) {
    bool threw = false;
    try {
      if (kind == 0)
        (void)custom_alloc::make_unique_handle<ThrowsOnSeven>(heap, 7);
      else
        (void)custom_alloc::make_shared_handle<ThrowsOnSeven>(heap, 7);
    } catch (const std::runtime_error& e) {
      threw = std::strcmp(e.what(), "seven") == 0;
    }
    ck_assert(threw);
    ck_assert_uint_eq(heap.handle_stats().live_handles, 1);
    ck_assert_uint_eq(heap.get_stats().active_allocations, 1);
  }
}
END_TEST

// shared_handle: counts by copy and move, the last owner destroys once.
START_TEST(test_shared_handle_counts) {
  using custom_alloc::shared_handle;
  HandleAllocator heap;
  Counted::reset();
  {
    shared_handle<Counted> a = custom_alloc::make_shared_handle<Counted>(heap, 11);
    ck_assert_uint_eq(a.use_count(), 1);
    shared_handle<Counted> b = a;
    ck_assert_uint_eq(a.use_count(), 2);
    ck_assert(a == b);
    shared_handle<Counted> c = std::move(b);
    ck_assert(!b);
    ck_assert_uint_eq(c.use_count(), 2);
    ck_assert(heap.relocate(a.handle()));  // count and object move together
    ck_assert_uint_eq(c.use_count(), 2);
    ck_assert_uint_eq(c->value, 11);
    ck_assert(c.get()->intact());
    a.reset();
    ck_assert_int_eq(Counted::destroyed.load(), 0);
    ck_assert_uint_eq(c.use_count(), 1);
    b = c;
    c = shared_handle<Counted>();
    ck_assert_uint_eq(b.use_count(), 1);
    ck_assert_uint_eq(c.use_count(), 0);
    ck_assert_int_eq(Counted::destroyed.load(), 0);
  }
  ck_assert_int_eq(Counted::made.load(), 1);
  ck_assert_int_eq(Counted::destroyed.load(), 1);
  ck_assert_uint_eq(heap.handle_stats().live_handles, 0);
}
END_TEST

// 6 threads (2 cores) copy and drop shared_handles of a common set and read the
// objects through both doors while a 7th defragments the heap under them: every
// read sees its object intact, each object dies once, after its last owner.
START_TEST(test_shared_handles_under_mover) {
  using custom_alloc::shared_handle;
  HandleAllocator heap;
  Counted::reset();
  constexpr int kThreads = 6;
  const std::size_t kObjects = 512;
  std::vector<shared_handle<Counted>> common;
  std::vector<Handle> holes;
  for (std::uint64_t i = 0; i < kObjects; ++i) {
    common.push_back(custom_alloc::make_shared_handle<Counted>(heap, i));
    // Holes in the objects' class (count + Counted): spans 1/8 full, then 1/2
    // full, work for the mover.
    for (int k = 0; k < (i < kObjects / 2 ? 7 : 1); ++k) holes.push_back(heap.allocate_handle(24));
  }
  for (Handle h : holes) heap.deallocate_handle(h);
  heap.offline();
  std::atomic<int> running{kThreads};
  std::atomic<long> bad{0};
  std::atomic<int> mover_rounds{0};
  std::vector<std::thread> pool;
  const std::size_t rounds = scaled(20000);
  // The mover's rounds (a pass and single moves, each waiting for the workers
  // to pass a quiescent point): fewer under Valgrind, whose threads run one at
  // a time (DRD took minutes for 20 rounds of 32).
  const int mover_goal = running_on_valgrind() ? 3 : 20;
  const int singles = running_on_valgrind() ? 4 : 32;
  for (int t = 0; t < kThreads; ++t)
    pool.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      std::vector<shared_handle<Counted>> mine;
      // At least `rounds` rounds, and until the mover has made its rounds.
      for (std::size_t r = 0; r < rounds || mover_rounds.load() < mover_goal; ++r) {
        std::size_t i = rng() % kObjects;
        if (rng() % 2) {
          if (common[i]->value != i) bad.fetch_add(1);
        } else if (!common[i].get()->intact() || common[i].get()->value != i) {
          bad.fetch_add(1);
        }
        if (mine.size() < 64)
          mine.push_back(common[i]);
        else
          mine[rng() % mine.size()] = common[i];
        if (rng() % 256 == 0) mine.clear();
      }
      mine.clear();
      heap.offline();
      running.fetch_sub(1);
    });
  std::size_t passes = 0, relocated = 0;
  std::thread mover([&] {
    std::mt19937_64 rng(99);
    while (running.load() > 0 || passes == 0) {
      heap.defragment();
      ++passes;
      // Single moves keep objects moving after the pass has compacted them.
      for (int k = 0; k < singles; ++k) relocated += heap.relocate(common[rng() % kObjects].handle());
      mover_rounds.fetch_add(1);
    }
    heap.offline();
  });
  for (auto& th : pool) th.join();
  mover.join();
  std::printf("# %zu passes, %zu single moves, %zu moves in all\n", passes, relocated, heap.handle_stats().moves);
  ck_assert_int_eq(bad.load(), 0);
  ck_assert_int_eq(Counted::destroyed.load(), 0);
  for (std::uint64_t i = 0; i < kObjects; ++i) {
    ck_assert_uint_eq(common[i].use_count(), 1);
    ck_assert(common[i].get()->intact());
  }
  common.clear();
  ck_assert_int_eq(Counted::destroyed.load(), static_cast<int>(kObjects));
  ck_assert_uint_eq(heap.handle_stats().live_handles, 0);
}
END_TEST

// A thread's entries of HandleAllocators (its per-heap records of the grace
// period protocol) go when the heaps do: a long-lived thread that uses many
// heaps in turn keeps a bounded number (the old code kept one per heap ever used).
START_TEST(test_thread_entries_bounded) {
  const int kHeaps = static_cast<int>(test_util::tsan_scaled(3000));
  HandleAllocator keep;
  Handle kept = keep.allocate_handle(16);
  for (int i = 0; i < kHeaps; ++i) {
    HandleAllocator heap;
    Handle h = heap.allocate_handle(32);
    std::memset(heap.resolve(h), i & 0xff, 32);
    heap.deallocate_handle(h);
    ck_assert_ptr_nonnull(keep.resolve(kept));
  }
  std::size_t mine = lca::defrag_thread_entries();
  // A thread that outlives the heaps it used: batches of 8 heaps made and
  // destroyed by this thread, each used by the worker in turn.
  const int kRounds = static_cast<int>(test_util::tsan_scaled(300));
  // The rounds are handed over under a mutex (helgrind sees it; it does not
  // see a hand-over through atomics).
  std::mutex m;
  std::condition_variable cv;
  int round = 0, done = 0;
  std::atomic<int> bad{0};
  std::vector<std::unique_ptr<HandleAllocator>> batch;
  std::vector<Handle> handles;
  std::size_t worker_entries = 0;
  std::thread worker([&] {
    for (int r = 1; r <= kRounds; ++r) {
      {
        std::unique_lock<std::mutex> lock(m);
        cv.wait(lock, [&] { return round == r; });
      }
      for (std::size_t k = 0; k < batch.size(); ++k) std::memset(batch[k]->resolve(handles[k]), r & 0xff, 32);
      if (!keep.resolve(kept)) bad.fetch_add(1);
      {
        std::lock_guard<std::mutex> lock(m);
        done = r;
        cv.notify_all();  // (under the lock: helgrind calls a signal without it dubious)
      }
    }
    worker_entries = lca::defrag_thread_entries();
  });
  for (int r = 1; r <= kRounds; ++r) {
    batch.clear();
    handles.clear();
    for (int k = 0; k < 8; ++k) {
      batch.push_back(std::make_unique<HandleAllocator>());
      handles.push_back(batch.back()->allocate_handle(32));
    }
    {
      std::lock_guard<std::mutex> lock(m);
      round = r;
      cv.notify_all();
    }
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return done == r; });
  }
  worker.join();
  batch.clear();
  std::printf("# entries after %d heaps: this thread %zu, the worker (after %d) %zu\n", kHeaps, mine, kRounds * 8,
              worker_entries);
  // Fewer than twice the live heaps the thread used, plus 4.
  ck_assert_uint_le(mine, 2 * 2 + 4);
  ck_assert_uint_le(worker_entries, 2 * 9 + 4);
  ck_assert_int_eq(bad.load(), 0);
  keep.deallocate_handle(kept);
}
END_TEST

// allocate_handle and deallocate_handle hold no pointer of the heap: a thread
// inside them (here held in the heap's allocate or deallocate, which the
// subclass makes wait) does not hold a move up.  The old code kept such a
// thread online: relocate waited the grace timeout for it and gave up.
START_TEST(test_handle_calls_offline_inside) {
  struct Held : HandleAllocator {
    std::atomic<int> hold{0};  // 1: allocate waits, 2: deallocate waits
    std::atomic<bool> inside{false}, release{false};
    void wait_here() {
      inside.store(true);
      while (!release.load()) std::this_thread::yield();
    }
    void* allocate(std::size_t size, std::size_t alignment) override {
      if (hold.load() == 1) wait_here();
      return HandleAllocator::allocate(size, alignment);
    }
    void deallocate(void* p) override {
      if (hold.load() == 2) wait_here();
      HandleAllocator::deallocate(p);
    }
  };
  for (int which = 1; which <= 2; ++which) {
    Held heap;
    std::vector<Handle> hs;
    for (int i = 0; i < 64; ++i) {
      hs.push_back(heap.allocate_handle(48));
      std::memset(heap.resolve(hs.back()), i, 48);
    }
    heap.offline();
    heap.hold.store(which);
    std::thread t([&] {
      if (which == 1)
        heap.deallocate_handle(heap.allocate_handle(48));
      else
        heap.deallocate_handle(hs[0]);
    });
    while (!heap.inside.load()) std::this_thread::yield();
    heap.hold.store(0);
    int moved = 0;
    auto start = std::chrono::steady_clock::now();
    for (int i = 1; i < 11; ++i) moved += heap.relocate(hs[static_cast<std::size_t>(i)]) ? 1 : 0;
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count();
    heap.release.store(true);
    t.join();
    std::printf("# a thread held in %s: %d of 10 relocates, %lld us, %zu abandoned\n",
                which == 1 ? "allocate_handle" : "deallocate_handle", moved, static_cast<long long>(us),
                heap.handle_stats().moves_abandoned);
    ck_assert_int_eq(moved, 10);
    ck_assert_uint_eq(heap.handle_stats().moves_abandoned, 0);
    for (int i = 1; i < 64; ++i) {
      auto* b = static_cast<unsigned char*>(heap.resolve(hs[static_cast<std::size_t>(i)]));
      for (int k = 0; k < 48; ++k) ck_assert_int_eq(b[k], i);
      heap.deallocate_handle(hs[static_cast<std::size_t>(i)]);
    }
    if (which == 1) heap.deallocate_handle(hs[0]);
  }
}
END_TEST

// handle_size holds no pointer either: a thread stopped inside it (here by a
// signal whose handler waits, delivered while the thread calls handle_size in a
// loop) does not hold a move up.  The old code announced the thread online for
// the call: a relocate made while the thread was stopped between its announce
// and its leave waited the grace timeout and gave up -- most of the 20 tries.
std::atomic<bool> g_size_held{false}, g_size_release{false};
void size_hold_handler(int) {
  g_size_held.store(true);
  while (!g_size_release.load()) {
  }
  g_size_held.store(false);
}

START_TEST(test_handle_size_offline_inside) {
  HandleAllocator heap;
  std::vector<Handle> hs;
  for (int i = 0; i < 32; ++i) {
    hs.push_back(heap.allocate_handle(48));
    std::memset(heap.resolve(hs.back()), i, 48);
  }
  heap.offline();
  struct sigaction sa{}, old{};
  sa.sa_handler = size_hold_handler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, &old);
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> sizes{0};
  std::thread t([&] {
    while (!stop.load(std::memory_order_relaxed)) sizes.fetch_add(heap.handle_size(hs[0]), std::memory_order_relaxed);
  });
  while (sizes.load() == 0) std::this_thread::yield();
  const int tries = running_on_valgrind() ? 4 : 20;
  int moved = 0;
  for (int i = 0; i < tries; ++i) {
    g_size_release.store(false);
    pthread_kill(t.native_handle(), SIGUSR1);
    while (!g_size_held.load()) std::this_thread::yield();
    moved += heap.relocate(hs[1 + static_cast<std::size_t>(i) % 31]) ? 1 : 0;
    g_size_release.store(true);
    while (g_size_held.load()) std::this_thread::yield();
  }
  stop.store(true);
  t.join();
  sigaction(SIGUSR1, &old, nullptr);
  std::printf("# a thread stopped in a handle_size loop: %d of %d relocates, %zu abandoned\n", moved, tries,
              heap.handle_stats().moves_abandoned);
  ck_assert_int_eq(moved, tries);
  ck_assert_uint_eq(heap.handle_stats().moves_abandoned, 0);
  for (int i = 0; i < 32; ++i) {
    auto* b = static_cast<unsigned char*>(heap.resolve(hs[static_cast<std::size_t>(i)]));
    for (int k = 0; k < 48; ++k) ck_assert_int_eq(b[k], i);
    ck_assert_uint_eq(heap.handle_size(hs[static_cast<std::size_t>(i)]), 48);
    heap.deallocate_handle(hs[static_cast<std::size_t>(i)]);
  }
}
END_TEST

// Movers read a slot's size without a lock while other threads free handles
// and allocate new ones into the same slots (HandleSlot::size, a relaxed atomic
// now): under TSan (TSAN_TESTS=tests/unit/defrag scripts/check-sanitizers tsan)
// no report; everywhere, each live handle keeps its size and contents.
START_TEST(test_handle_size_read_while_slot_reused) {
  HandleAllocator heap;
  constexpr int kSlots = 64;
  std::vector<Handle> hs(kSlots);
  for (int i = 0; i < kSlots; ++i) {
    hs[static_cast<std::size_t>(i)] = heap.allocate_handle(16 + static_cast<std::size_t>(i));
    std::memset(heap.resolve(hs[static_cast<std::size_t>(i)]), i, 16 + static_cast<std::size_t>(i));
  }
  heap.offline();
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  const std::size_t rounds = scaled(20000);
  std::thread churn([&] {
    // Frees and reallocates every handle in turn, each time at another size:
    // the freed slot is the next one allocated (the free list's head).
    for (std::size_t r = 0; r < rounds; ++r) {
      auto i = static_cast<std::size_t>(r % kSlots);
      heap.deallocate_handle(hs[i]);
      std::size_t n = 16 + (r * 37 + i) % 400;
      hs[i] = heap.allocate_handle(n);
      auto* p = static_cast<unsigned char*>(heap.resolve(hs[i]));
      std::memset(p, static_cast<int>(n & 0xff), n);
      if (heap.handle_size(hs[i]) != n) bad.fetch_add(1);
      heap.offline();
    }
    stop.store(true);
  });
  // This thread moves objects the whole time: passes over the heap, reading
  // every live slot's size.
  std::size_t passes = 0;
  while (!stop.load()) {
    DefragBudget b;
    b.max_objects = 16;
    heap.defragment(b);
    ++passes;
  }
  churn.join();
  for (int i = 0; i < kSlots; ++i) {
    Handle h = hs[static_cast<std::size_t>(i)];
    std::size_t n = heap.handle_size(h);
    auto* p = static_cast<unsigned char*>(heap.resolve(h));
    for (std::size_t k = 0; k < n; ++k)
      if (p[k] != static_cast<unsigned char>(rounds >= kSlots ? (n & 0xff) : i)) {
        bad.fetch_add(1);
        break;
      }
    heap.deallocate_handle(h);
  }
  std::printf("# %zu handle reallocations beside %zu defragment passes, %zu moves\n", rounds, passes,
              heap.handle_stats().moves);
  ck_assert_int_eq(bad.load(), 0);
}
END_TEST

// A PinGuard released (or destroyed) after its HandleAllocator is gone names
// the problem: the heap's table is kept (no slot, marked destroyed, reused by
// the next heap) instead of unmapped, and the release finds no live slot for a
// handle it pinned.  The old code read the unmapped table: SIGSEGV, no
// message.  A unique_handle destroyed after its heap is caught the same way
// (best effort: it calls into the destroyed object, whose memory is intact
// here).
START_TEST(test_pin_outliving_heap_dies) {
  struct Case {
    const char* what;
    const char* says;
    void (*fn)();
  } cases[] = {
      {"a guard released after its heap was destroyed", "outlived its HandleAllocator",
       [] {
         HandleAllocator::PinGuard g;
         {
           HandleAllocator heap;
           g = heap.pin(heap.allocate_handle(64));
         }
         g.release();
       }},
      {"a guard released after its heap, the table reused by another heap", "has been reused by another heap",
       [] {
         HandleAllocator::PinGuard g;
         {
           HandleAllocator heap;
           for (int i = 0; i < 3; ++i) (void)heap.allocate_handle(64);
           g = heap.pin(heap.allocate_handle(64));
         }
         HandleAllocator next;  // takes the retired table
         for (int i = 0; i < 10; ++i) (void)next.allocate_handle(64);
         g.release();
       }},
  };
  for (const Case& c : cases) {
    auto r = expect_death(c.fn, "libcalloc: Invalid pin release of ");
    ck_assert_msg(r.ok(), "%s: %s", c.what, r.description.c_str());
    ck_assert_msg(r.output_contains(c.says), "%s: %s", c.what, r.output.c_str());
  }
  // A call on the destroyed heap object is undefined behaviour on purpose:
  // UBSan's vptr check, which CI builds together with ASan, reports it first.
  if (test_util::kAsanBuild)
    TEST_SKIP("a unique_handle used after its heap: UBSan (built with ASan here) reports the call on the destroyed "
              "heap object before libcalloc can");
  auto owner = expect_death(
      [] {
        alignas(HandleAllocator) unsigned char storage[sizeof(HandleAllocator)];
        custom_alloc::unique_handle<std::uint64_t> p;
        {
          auto* heap = new (storage) HandleAllocator;
          p = custom_alloc::make_unique_handle<std::uint64_t>(*heap, 1);
          heap->~HandleAllocator();
        }
        p.reset();
      },
      "libcalloc: Invalid handle heap of ");
  ck_assert_msg(owner.ok(), "a unique_handle destroyed after its heap: %s", owner.description.c_str());
  ck_assert_msg(owner.output_contains("its HandleAllocator was destroyed"), "%s", owner.output.c_str());
}
END_TEST

// Bad use is caught by the heap: a handle freed behind its owner's back is
// stale when the owner uses or destroys it.
START_TEST(test_handle_ptr_stale_dies) {
  struct Case {
    const char* what;
    void (*fn)();
  } cases[] = {
      {"get after the handle was freed",
       [] {
         HandleAllocator heap;
         auto p = custom_alloc::make_unique_handle<std::uint64_t>(heap, 1);
         heap.deallocate_handle(p.handle());
         (void)p.get();
       }},
      {"destroying an owner whose handle was freed",
       [] {
         HandleAllocator heap;
         auto p = custom_alloc::make_shared_handle<std::uint64_t>(heap, 1);
         heap.deallocate_handle(p.handle());
       }},
      {"pin through an adopted freed handle",
       [] {
         HandleAllocator heap;
         auto p = custom_alloc::make_unique_handle<std::uint64_t>(heap, 1);
         Handle h = p.release();
         heap.deallocate_handle(h);
         custom_alloc::unique_handle<std::uint64_t> q(heap, h);
         (void)q.pin();
       }},
  };
  for (const Case& c : cases) {
    auto r = expect_death(c.fn, "libcalloc: Stale handle of ");
    ck_assert_msg(r.ok(), "%s: %s", c.what, r.description.c_str());
  }
}
END_TEST

// A handle's object freed or resized as a plain block -- deallocate(resolve(h)),
// free, lca_free, another heap's deallocate (which routes the block to its
// heap), realloc, reallocate, try_realloc_inplace -- was accepted: the handle
// then named whatever block reused the address, and deallocate_handle freed
// that one.  Each now dies with "Invalid free" / "Invalid realloc" before
// anything changes: a SIGABRT handler in the dying child finds the handle
// still resolving to its intact object, still counted live.  Span, arena and
// large objects.
struct AbortProbe {
  HandleAllocator* a;
  Handle h;
  void* p;
  std::size_t n;
  std::size_t live;
};
AbortProbe g_probe;

void probe_on_abort(int) {
  // (A test child about to die: not async-signal-safe, but nothing else runs.)
  const AbortProbe& pr = g_probe;
  bool intact = pr.a->try_resolve(pr.h) == pr.p && pr.a->handle_stats().live_handles == pr.live &&
                check_pattern(pr.p, pr.n, 0x5eed) < 0;
  const char* msg = intact ? "[object intact]\n" : "[object CHANGED]\n";
  ssize_t ignored = ::write(2, msg, std::strlen(msg));
  (void)ignored;
}

START_TEST(test_handle_object_freed_as_block_dies) {
  struct Case {
    const char* what;
    const char* expected;
    void (*op)(HandleAllocator& a, void* p);
  };
  static MemoryAllocator other;
  const Case cases[] = {
      {"deallocate", "libcalloc: Invalid free of ", [](HandleAllocator& a, void* p) { a.deallocate(p); }},
      {"free", "libcalloc: Invalid free of ", [](HandleAllocator&, void* p) { std::free(test_util::launder(p)); }},
      {"lca_free", "libcalloc: Invalid free of ", [](HandleAllocator&, void* p) { lca_free(p); }},
      {"lca_realloc", "libcalloc: Invalid realloc of ",
       [](HandleAllocator&, void* p) { test_util::escape(lca_realloc(p, 64)); }},
      {"lca_realloc to 0", "libcalloc: Invalid free of ", [](HandleAllocator&, void* p) { lca_realloc(p, 0); }},
      {"another heap's deallocate", "libcalloc: Invalid free of ",
       [](HandleAllocator&, void* p) { other.deallocate(p); }},
      {"realloc", "libcalloc: Invalid realloc of ",
       [](HandleAllocator&, void* p) { test_util::escape(std::realloc(test_util::launder(p), 4 << 20)); }},
      {"realloc smaller", "libcalloc: Invalid realloc of ",
       [](HandleAllocator&, void* p) { test_util::escape(std::realloc(test_util::launder(p), 16)); }},
      {"reallocate", "libcalloc: Invalid realloc of ",
       [](HandleAllocator& a, void* p) { test_util::escape(a.reallocate(p, 100)); }},
      {"try_realloc_inplace", "libcalloc: Invalid realloc of ",
       [](HandleAllocator& a, void* p) { test_util::escape(a.try_realloc_inplace(p, 24)); }},
  };
  const std::size_t sizes[] = {48, 3000, 2u << 20};  // span, arena, large
  for (std::size_t n : sizes) {
    HandleAllocator a;
    Handle keep = a.allocate_handle(n);  // a neighbour
    Handle h = a.allocate_handle(n);
    void* p = a.resolve(h);
    fill_pattern(p, n, 0x5eed);
    for (const Case& c : cases) {
      // A build without the override (the sanitizer builds: the sanitizer's
      // own malloc takes free and realloc) leaves them out: lca_free and
      // lca_realloc stand for them there.  (Tested on kAsanBuild alone until
      // session 20: the TSan build handed the block to TSan's free, which died
      // of a CHECK, not libcalloc's abort.)
      if (!kOverride && (c.op == cases[1].op || std::strncmp(c.what, "realloc", 7) == 0)) continue;
      auto r = expect_death(
          [&] {
            g_probe = AbortProbe{&a, h, p, n, a.handle_stats().live_handles};
            ::signal(SIGABRT, probe_on_abort);  // glibc's abort() then dies of SIGABRT anyway
            c.op(a, p);
          },
          c.expected);
      ck_assert_msg(r.ok(), "%s, %zu bytes: %s", c.what, n, r.description.c_str());
      ck_assert_msg(r.output_contains("handle's object"), "%s, %zu bytes: %s", c.what, n, r.output.c_str());
      ck_assert_msg(r.output_contains("[object intact]"), "%s, %zu bytes: %s", c.what, n, r.output.c_str());
    }
    // The parent's handle is as it was, and frees normally.
    ck_assert_ptr_eq(a.resolve(h), p);
    ck_assert_int_lt(check_pattern(p, n, 0x5eed), 0);
    a.deallocate_handle(h);
    a.deallocate_handle(keep);
  }
}
END_TEST

// What still frees normally: deallocate_handle (also of a moved object), plain
// blocks of a HandleAllocator (allocate, then free, deallocate, realloc), a
// plain block that reuses a freed handle's address; and a moved object is
// refused at its new address (its old place is freed: a double or invalid free).
START_TEST(test_handle_heap_plain_blocks_free) {
  HandleAllocator a;
  // Plain blocks.
  void* b1 = a.allocate(64);
  void* b2 = a.allocate(5000);
  ck_assert_ptr_nonnull(b1);
  ck_assert_ptr_nonnull(b2);
  b1 = a.reallocate(b1, 200);
  ck_assert_ptr_nonnull(b1);
  a.deallocate(b1);
  lca_free(b2);  // (free itself in a build that overrides it: test_handle_object_freed_as_block_dies)
  // A freed handle's address, reused by a plain block.
  Handle h = a.allocate_handle(64);
  void* p = a.resolve(h);
  a.deallocate_handle(h);
  void* q = a.allocate(64);
  if (!checked_mode()) ck_assert_ptr_eq(q, p);  // the slot just freed (the heap's LIFO; no quarantine)
  a.deallocate(q);
  // Moved objects: a sparse heap, compacted.
  std::vector<Handle> hs;
  for (int i = 0; i < 2000; ++i) hs.push_back(a.allocate_handle(48));
  for (std::size_t i = 0; i < hs.size(); ++i)
    if (i % 10 != 0) {
      a.deallocate_handle(hs[i]);
      hs[i] = 0;
    }
  std::map<Handle, void*> before;
  for (Handle x : hs)
    if (x) before[x] = a.resolve(x);
  a.defragment();  // (no move in Valgrind and ASan modes: the quarantine keeps the freed blocks)
  Handle moved = 0;
  for (auto& [x, old] : before)
    if (a.resolve(x) != old) {
      moved = x;
      break;
    }
  if (!moved) {
    moved = before.begin()->first;
    a.offline();
    ck_assert(a.relocate(moved));
  }
  ck_assert_ptr_ne(a.resolve(moved), before[moved]);
  void* now = a.resolve(moved);
  auto r = expect_death([&] { a.deallocate(now); }, "libcalloc: Invalid free of ");
  ck_assert_msg(r.ok(), "moved object: %s", r.description.c_str());
  // (A double free, or an invalid free once the emptied span went back to the OS.)
  r = expect_death([&] { a.deallocate(before[moved]); }, "libcalloc: ");
  ck_assert_msg(r.ok() && !r.output_contains("handle's object"), "old place of a moved object: %s",
                r.description.c_str());
  for (Handle x : hs)
    if (x) a.deallocate_handle(x);
  ck_assert_uint_eq(a.handle_stats().live_handles, 0);
  // Every object address is a plain block's again.
  std::vector<void*> plain;
  for (int i = 0; i < 300; ++i) plain.push_back(a.allocate(48));
  for (void* x : plain) a.deallocate(x);
}
END_TEST

// The handles' object set (the addresses free and realloc check against,
// src/handle.c++) shrinks as handles die.  It never did: a heap that once held
// 100 000 handles kept its 2 MiB of keys with no handle left.  What the heap
// maps outside its chunks (the set, the slot segments, the thread records) is
// the whole process's mapping less the heap's own (get_stats); of it, the
// slot segments stay (a freed slot's generation must outlive it, to tell a
// stale handle) and the set must go back to a page.  Nothing else runs here
// between the two readings (the handles' vector exists before the first).
START_TEST(test_handle_object_set_shrinks) {
  custom_alloc::HandleAllocator a;
  const std::size_t n = 100000;  // set capacity 2^18 keys: 2 MiB
  std::vector<custom_alloc::Handle> hs(n);
  for (auto& h : hs) {
    h = a.allocate_handle(16);
    ck_assert(h != 0);
  }
  const std::size_t outside_full = lca::os_mapped_bytes() - a.get_stats().os_memory_mapped;
  for (auto h : hs) a.deallocate_handle(h);
  const std::size_t outside_empty = lca::os_mapped_bytes() - a.get_stats().os_memory_mapped;
  ck_assert_msg(outside_full >= outside_empty + (std::size_t{2} << 20) - 4096,
                "the heap's mapping outside its chunks went from %zu to %zu bytes with every handle freed: "
                "the object set kept its 2 MiB",
                outside_full, outside_empty);
  // And it grows again, and the handles work.
  for (auto& h : hs) h = a.allocate_handle(16);
  for (std::size_t i = 0; i < n; i += 997) std::memset(a.resolve(hs[i]), 0x5a, 16);
  a.defragment();
  for (auto h : hs) a.deallocate_handle(h);
  ck_assert_uint_eq(a.handle_stats().live_handles, 0);
}
END_TEST

int main() {
  TCase* tc;
  Suite* s = test_util::make_suite("defrag", &tc);
  tcase_add_test(tc, test_reduces_fragmentation);
  tcase_add_test(tc, test_defragmentation_preserves_handles);
  tcase_add_test(tc, test_use_after_move);
  tcase_add_test(tc, test_slab_ninety_to_ten);
  tcase_add_test(tc, test_arena_ninety_to_ten);
  tcase_add_test(tc, test_budgets_respected_and_converge);
  tcase_add_test(tc, test_zero_budgets_converge);
  tcase_add_test(tc, test_budgeted_round_resumes_and_trims);
  tcase_add_test(tc, test_round_survives_changes_between_passes);
  tcase_add_test(tc, test_callback_throws);
  tcase_add_test(tc, test_process_heap_refused);
  tcase_add_test(tc, test_refusals_name_the_heap_and_the_call);
  tcase_add_test(tc, test_numa_allocator_defragments);
  tcase_add_test(tc, test_callback_using_heap_dies);
  tcase_add_test(tc, test_callback_reads_heap);
  tcase_add_test(tc, test_handle_heap_compacts);
  tcase_add_test(tc, test_pins_keep_objects_in_place);
  tcase_add_test(tc, test_bad_handles_die);
  tcase_add_test(tc, test_deallocate_null_handle_does_nothing);
  tcase_add_test(tc, test_handle_object_freed_as_block_dies);
  tcase_add_test(tc, test_handle_heap_plain_blocks_free);
  tcase_add_test(tc, test_handle_object_set_shrinks);
  tcase_add_test(tc, test_handle_of_another_heap_refused);
  tcase_add_test(tc, test_handle_defragment_one_pass_whole);
  tcase_add_test(tc, test_rule_broken_loses_writes);
  tcase_add_test(tc, test_rule_kept_loses_nothing);
  tcase_add_test(tc, test_concurrent_defragmentation);
  tcase_add_test(tc, test_concurrent_relocates_all_succeed);
  tcase_add_test(tc, test_quarantine_holds_during_pass);
  tcase_add_test(tc, test_stale_pointer_reported);
  tcase_add_test(tc, test_unique_handle_owns_across_moves);
  tcase_add_test(tc, test_handle_arrow_pins);
  tcase_add_test(tc, test_handle_constructor_throws);
  tcase_add_test(tc, test_shared_handle_counts);
  tcase_add_test(tc, test_shared_handles_under_mover);
  tcase_add_test(tc, test_handle_ptr_stale_dies);
  tcase_add_test(tc, test_pin_outliving_heap_dies);
  tcase_add_test(tc, test_thread_entries_bounded);
  tcase_add_test(tc, test_handle_calls_offline_inside);
  tcase_add_test(tc, test_handle_size_offline_inside);
  tcase_add_test(tc, test_handle_size_read_while_slot_reused);
  return test_util::run_suite(s);
}
