// tests/unit/arena.c++ -- the "arena" suite: medium blocks (8 KiB - 1 MiB) of the
// process heap, served by the thread's TLSF arena (src/arena.c++) behind the
// medium cache of its heap (src/medium.c++, tcache.h++).
//
// What is checked: a freed medium block is held by the thread's cache and the
// next request of its size gets it back (a request a doubling or less below a
// held block's size takes it, and counts a hit); the cache never holds more than
// kMediumCacheBytes; a held block is still a freed block for every check -- a
// second free (by the owner or by another thread), a realloc and
// malloc_usable_size of it are reported as in the arena -- and the arena's
// consistency check (arena_verify) accepts held blocks; thread exit and trim
// hand every held block back to the arena; a request that does not fit in the
// arena beside the held blocks takes them back before a chunk is mapped.  Blocks
// are checked for overlap with a pattern.  On private arenas: arena_verify
// checks the free lists (links, bitmaps, every free block listed), and a block
// that merged into the free block before it is still named freed (a second
// free of it is a double free).  The cache is off in Valgrind and ASan
// mode (every call takes the slow paths there, whose quarantine keeps freed
// blocks): its tests skip there, the reuse and error tests run everywhere.
#include <libcalloc.h>
#include <malloc.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "../test-util.h++"
#include "config.h"
#include "arena.h++"
#include "chunk.h++"
#include "tcache.h++"
#include "vg.h++"

using test_util::scaled;

namespace {

constexpr std::size_t KiB = 1024;

// The medium cache is in use: not in Valgrind or ASan mode (tls_heap is the
// empty heap there) nor behind --enable-secure's heap.
const char* cache_off_why() {
  if (test_util::running_on_valgrind()) return "under Valgrind every call takes the slow paths (no medium cache)";
  if (test_util::kAsanBuild) return "ASan mode takes the slow paths (no medium cache)";
#if CALLOC_SECURE
  return "--enable-secure: malloc's blocks come from the hardened heap";
#else
  return nullptr;
#endif
}

lca::Heap* my_heap() { return lca::thread_heap_if_any(); }

// Blocks held by h's medium cache, and their usable bytes.
std::size_t held_blocks(const lca::Heap* h, std::size_t* bytes) {
  std::size_t n = 0, b = 0;
  for (const lca::MediumFree* m : h->medium.bin)
    for (; m; m = m->next) {
      ++n;
      b += m->usable;
    }
  *bytes = b;
  return n;
}

}  // namespace

// The bin arithmetic: every usable size of a bin is at least its floor, and the
// next bin's floor is above every size of the bin.
START_TEST(test_medium_bins) {
  for (std::size_t u = lca::kMediumCacheMin; u < lca::kMediumCacheMax; u += 16) {
    unsigned b = lca::medium_bin(u);
    ck_assert_uint_lt(b, lca::kMediumBins);
    ck_assert_uint_ge(u, lca::medium_bin_floor(b));
    if (b + 1 < lca::kMediumBins) ck_assert_uint_lt(u, lca::medium_bin_floor(b + 1));
  }
  ck_assert_uint_eq(lca::medium_bin_floor(0), 8 * KiB);
  ck_assert_uint_eq(lca::medium_bin_floor(lca::kMediumBins - 1), 60 * KiB);
}
END_TEST

// A medium block freed and asked for again: the same block, held in between.
START_TEST(test_freed_block_reused) {
  const std::size_t sizes[] = {8 * KiB + 1, 10000, 20000, 33 * KiB, 64 * KiB - 100};
  for (std::size_t size : sizes) {
    auto* p = static_cast<unsigned char*>(lca_malloc(size));
    ck_assert_ptr_nonnull(p);
    test_util::fill_pattern(p, size, size);
    ck_assert_int_eq(test_util::check_pattern(p, size, size), -1);
    lca_free(p);
    if (const char* why = cache_off_why()) {
      (void)why;
    } else {
      std::size_t bytes;
      ck_assert_uint_ge(held_blocks(my_heap(), &bytes), 1);
      ck_assert_uint_eq(bytes, my_heap()->medium.bytes);
      ck_assert_uint_ge(bytes, size);
    }
    void* q = lca_malloc(size);
    ck_assert_ptr_nonnull(q);
    if (!cache_off_why()) ck_assert_ptr_eq(q, p);
    ck_assert_uint_ge(lca_usable_size(q), size);
    std::memset(q, 0x5a, size);
    lca_free(q);
  }
  if (const char* why = cache_off_why()) TEST_SKIP("%s: reuse of the same block not asserted", why);
}
END_TEST

// However many medium blocks a thread frees, its cache holds at most its bound
// (kMediumCacheBytes, or half the live arena bytes up to kMediumCacheBytesMax);
// the rest goes to the arena at once.  Every held block is a freed block for
// arena_check, and the arena stays consistent.
START_TEST(test_cache_bounded) {
  if (const char* why = cache_off_why()) TEST_SKIP("%s", why);
  constexpr std::size_t n = 96;
  std::vector<void*> blocks;
  blocks.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::size_t size = 8 * KiB + (i * 7919) % (56 * KiB);
    void* p = lca_malloc(size);
    ck_assert_ptr_nonnull(p);
    test_util::fill_pattern(p, size, i);
    blocks.push_back(p);
  }
  for (std::size_t i = 0; i < n; ++i) {
    std::size_t size = 8 * KiB + (i * 7919) % (56 * KiB);
    ck_assert_int_eq(test_util::check_pattern(blocks[i], size, i), -1);
    lca_free(blocks[i]);
    ck_assert_uint_le(my_heap()->medium.bytes, lca::medium_cache_bound(my_heap()));
    ck_assert_uint_le(my_heap()->medium.bytes, lca::kMediumCacheBytesMax);
  }
  lca::Heap* h = my_heap();
  std::size_t bytes;
  std::size_t held = held_blocks(h, &bytes);
  ck_assert_uint_eq(bytes, h->medium.bytes);
  // ~3 MiB freed, nothing live: the cache is full to kMediumCacheBytes up to
  // less than one block.
  ck_assert_uint_le(bytes, lca::kMediumCacheBytes);
  ck_assert_uint_gt(bytes, lca::kMediumCacheBytes - lca::kMediumCacheMax);
  ck_assert_uint_lt(held, n);
  for (const lca::MediumFree* m : h->medium.bin)
    for (; m; m = m->next) {
      lca::ChunkHeader* ch = lca::registry_lookup(m);
      ck_assert_ptr_nonnull(ch);
      ck_assert_ptr_eq(ch->heap, h);
      ck_assert(lca::arena_check(lca::arena_chunk_of(ch), m) == lca::ArenaCheck::already_free);
    }
  const char* why = "";
  ck_assert_msg(lca::arena_verify(&h->arena, &why), "arena_verify: %s", why);
}
END_TEST

// A second free of a held block is a double free, whoever makes it.
START_TEST(test_double_free_of_held_block) {
  auto r = test_util::expect_death(
      [] {
        void* p = lca_malloc(20000);
        lca_free(p);
        lca_free(p);
      },
      "Double free");
  ck_assert_msg(r.died_of_sigabrt && r.matched, "%s", r.description.c_str());
}
END_TEST

START_TEST(test_remote_double_free_of_held_block) {
  if (test_util::kAsanBuild) TEST_SKIP("a thread started in a forked child of an ASan build may hang in libasan");
  auto r = test_util::expect_death(
      [] {
        void* p = lca_malloc(40000);
        lca_free(p);
        std::thread([p] { lca_free(p); }).join();
      },
      "Double free");
  ck_assert_msg(r.died_of_sigabrt && r.matched, "%s", r.description.c_str());
}
END_TEST

START_TEST(test_realloc_of_held_block) {
  if (test_util::running_on_valgrind())
    TEST_SKIP("in Valgrind mode a freed block waits in the quarantine, and memcheck reports its realloc itself");
  auto r = test_util::expect_death(
      [] {
        void* p = lca_malloc(30000);
        lca_free(p);
        test_util::escape(lca_realloc(p, 40000));
      },
      "Use after free");
  ck_assert_msg(r.died_of_sigabrt && r.matched, "%s", r.description.c_str());
  r = test_util::expect_death(
      [] {
        void* p = lca_malloc(30000);
        lca_free(p);
        test_util::escape(reinterpret_cast<void*>(lca_usable_size(p)));
      },
      "Use after free");
  ck_assert_msg(r.died_of_sigabrt && r.matched, "%s", r.description.c_str());
}
END_TEST

// Thread exit hands the held blocks back to the arena: the heap the next thread
// adopts holds none, and its empty arena chunks went back to the domain.
START_TEST(test_thread_exit_returns_cache) {
  if (const char* why = cache_off_why()) TEST_SKIP("%s", why);
  lca::Heap* seen = nullptr;
  std::size_t held_before_exit = 0;
  std::thread([&] {
    std::vector<void*> blocks;
    for (unsigned i = 0; i < 6; ++i) blocks.push_back(lca_malloc(9 * KiB + i * 5 * KiB));
    for (void* p : blocks) lca_free(p);
    seen = my_heap();
    held_before_exit = seen->medium.bytes;
  }).join();
  ck_assert_uint_gt(held_before_exit, 0);
  ck_assert_ptr_nonnull(seen);
  // Abandoned now (no thread runs on it until another thread adopts it).
  ck_assert_uint_eq(seen->medium.bytes, 0);
  std::size_t bytes;
  ck_assert_uint_eq(held_blocks(seen, &bytes), 0);
  const char* why = "";
  ck_assert_msg(lca::arena_verify(&seen->arena, &why), "arena_verify: %s", why);
}
END_TEST

// lca_trim (malloc_trim) returns the held blocks, and so the arena chunks they
// kept from being empty.
START_TEST(test_trim_returns_cache) {
  if (const char* why = cache_off_why()) TEST_SKIP("%s", why);
  void* p = lca_malloc(50000);
  void* q = lca_malloc(12000);
  lca_free(p);
  lca_free(q);
  ck_assert_uint_gt(my_heap()->medium.bytes, 0);
  lca_trim();
  ck_assert_uint_eq(my_heap()->medium.bytes, 0);
  std::size_t bytes;
  ck_assert_uint_eq(held_blocks(my_heap(), &bytes), 0);
  const char* why = "";
  ck_assert_msg(lca::arena_verify(&my_heap()->arena, &why), "arena_verify: %s", why);
}
END_TEST

// A held block keeps its live bit (holding it and taking it back write only its
// second word: no locked update of the bitmap) and is told from a live block by
// its held mark; giving it back to the arena clears the mark, so none is left
// inside a free block that merged it (where a later block could start).
START_TEST(test_held_block_keeps_live_bit) {
  if (const char* why = cache_off_why()) TEST_SKIP("%s", why);
  std::thread([] {
    lca_free(lca_malloc(64));  // the thread's heap
    lca_trim();
    auto live_bit = [](const void* p) { return lca::arena_live_bit(lca::arena_chunk_of(lca::chunk_base(p)), p); };
    void* a = lca_malloc(100000);  // above the cache's sizes: freed to the arena
    void* b = lca_malloc(20000);
    void* keep = lca_malloc(20000);
    ck_assert_ptr_eq(lca::chunk_base(a), lca::chunk_base(b));
    lca::ArenaChunk* c = lca::arena_chunk_of(lca::chunk_base(b));
    errno = EILSEQ;
    lca_free(b);
    ck_assert_int_eq(errno, EILSEQ);
    std::size_t bytes;
    ck_assert_uint_eq(held_blocks(my_heap(), &bytes), 1);
    ck_assert(live_bit(b));
    ck_assert(lca::arena_check(c, b) == lca::ArenaCheck::already_free);
    ck_assert(!lca::arena_is_live_block(c, b));  // the owner's inline check agrees
    ck_assert_ptr_eq(lca_malloc(20000), b);  // taken back: live, unmarked
    ck_assert(live_bit(b));
    ck_assert(lca::arena_check(c, b) == lca::ArenaCheck::ok);
    ck_assert(lca::arena_is_live_block(c, b));
    ck_assert(!lca::arena_is_live_block(c, static_cast<char*>(b) + 16));
    ck_assert(!lca::arena_is_live_block(c, static_cast<char*>(b) + 8));
    ck_assert(lca::arena_usable_size(b) >= 20000 && lca::arena_usable_size(b) < 20000 + 64);
    lca_free(b);
    errno = EILSEQ;
    lca_free(a);
    ck_assert_int_eq(errno, EILSEQ);
    lca_trim();  // b goes back to the arena, merged into a
    ck_assert_uint_eq(held_blocks(my_heap(), &bytes), 0);
    ck_assert(!live_bit(b));
    ck_assert(static_cast<std::uintptr_t*>(b)[1] != lca::arena_held_mark(b));
    const char* why = "";
    ck_assert_msg(lca::arena_verify(&my_heap()->arena, &why), "arena_verify: %s", why);
    lca_free(keep);
  }).join();
}
END_TEST

// A request that fits in the arena only once the held blocks are merged back
// takes them back before a chunk is mapped.  The thread fills its arena chunk
// with blocks of 1 MiB and less until what is free beside the held blocks is
// smaller than the request.
START_TEST(test_cache_yields_before_new_chunk) {
  if (const char* why = cache_off_why()) TEST_SKIP("%s", why);
  std::thread([] {
    lca_free(lca_malloc(64));  // the thread's heap
    lca_trim();
    lca::Heap* h = my_heap();
    // Four neighbours of 60 000 bytes, held once freed: ~240 KiB.
    void* held[4];
    for (void*& p : held) p = lca_malloc(60000);
    lca::ArenaChunk* c = lca::arena_chunk_of(lca::chunk_base(held[0]));
    std::vector<void*> fill;
    // Fill the rest of every arena chunk of the heap (blocks up to 1 MiB).
    for (;;) {
      std::size_t largest_free = 0;
      for (lca::ChunkHeader* ch = h->arena.chunks.head; ch; ch = ch->next) {
        auto* ac = lca::arena_chunk_of(ch);
        largest_free = ac->free_bytes > largest_free ? ac->free_bytes : largest_free;
      }
      if (largest_free < 64 * KiB) break;
      std::size_t size = largest_free > 1024 * KiB ? 1024 * KiB : largest_free - 32 * KiB;
      void* f = lca_malloc(size);
      ck_assert_ptr_nonnull(f);
      fill.push_back(f);
      if (fill.size() > 64) break;  // (cannot happen: a chunk is 4 MiB)
    }
    for (void* p : held) lca_free(p);
    ck_assert_uint_ge(h->medium.bytes, 4 * 60000);
    std::size_t chunks = lca::registry_chunk_count();
    // 200 KiB: room enough only where the four held blocks merge.
    void* big = lca_malloc(200 * KiB);
    ck_assert_ptr_nonnull(big);
    ck_assert_uint_eq(h->medium.bytes, 0);
    ck_assert_uint_eq(lca::registry_chunk_count(), chunks);
    ck_assert_ptr_eq(lca::arena_chunk_of(lca::chunk_base(big)), c);
    lca_free(big);
    for (void* p : fill) lca_free(p);
    const char* why = "";
    ck_assert_msg(lca::arena_verify(&h->arena, &why), "arena_verify: %s", why);
  }).join();
}
END_TEST

// Medium churn in more threads than cores, each on its own blocks (the cache's
// owner-only lists), and blocks freed by other threads: contents stay intact.
START_TEST(test_threads_churn) {
  constexpr unsigned kThreads = 4;
  const std::size_t ops = scaled(20000);
  std::vector<std::thread> pool;
  std::atomic<unsigned> bad{0};
  void* handoff[kThreads] = {};
  for (unsigned t = 0; t < kThreads; ++t)
    pool.emplace_back([&, t] {
      constexpr unsigned kSlots = 32;
      void* slot[kSlots] = {};
      std::size_t size[kSlots] = {};
      std::uint64_t x = 0x9E3779B97F4A7C15ull * (t + 1);
      for (std::size_t i = 0; i < ops; ++i) {
        x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
        unsigned k = static_cast<unsigned>(x % kSlots);
        if (slot[k] && test_util::check_pattern(slot[k], size[k], k + 100 * t) != -1) bad++;
        lca_free(slot[k]);
        size[k] = 8 * KiB + (x >> 20) % (60 * KiB);
        slot[k] = lca_malloc(size[k]);
        test_util::fill_pattern(slot[k], size[k], k + 100 * t);
      }
      // One block for the next thread to free (a remote free of a medium block).
      handoff[t] = slot[0];
      slot[0] = nullptr;
      for (void* p : slot) lca_free(p);
    });
  for (auto& th : pool) th.join();
  for (void* p : handoff) lca_free(p);
  ck_assert_uint_eq(bad.load(), 0);
}
END_TEST

// A request whose own bin (and the next) holds nothing takes a held block of a
// bin up to one doubling above it -- found in the bins' bitmap -- and counts a
// hit; the block keeps its whole usable size and goes back to its own bin when
// freed.  A held block more than a doubling above the request is left alone.
START_TEST(test_larger_held_block_serves) {
  if (const char* why = cache_off_why()) TEST_SKIP("%s", why);
  void* warm = lca_malloc(100);  // the thread's heap exists
  lca_free(warm);
  lca_trim();  // nothing held
  lca::Heap* h = my_heap();
  ck_assert_uint_eq(h->medium.nonempty, 0);
  auto* big = static_cast<unsigned char*>(lca_malloc(14 * KiB));
  ck_assert_ptr_nonnull(big);
  std::size_t big_usable = lca_usable_size(big);
  unsigned big_bin = lca::medium_bin(big_usable);
  lca_free(big);
  ck_assert_uint_eq(h->medium.nonempty, 1u << big_bin);
  // 9 KiB: bin 1; 14 KiB: bin 6, beyond the old "own bin or the next" rule.
  ck_assert_uint_gt(big_bin, lca::medium_bin(9 * KiB) + 1);
  ck_assert_uint_le(big_bin, lca::medium_bin(9 * KiB) + lca::kMediumSearchBins);
  std::size_t hits = h->counters.medium_hits.get();
  auto* q = static_cast<unsigned char*>(lca_malloc(9 * KiB));
  ck_assert_ptr_eq(q, big);
  ck_assert_uint_eq(h->counters.medium_hits.get(), hits + 1);
  ck_assert_uint_eq(h->medium.nonempty, 0);
  ck_assert_uint_eq(h->medium.bytes, 0);
  ck_assert_uint_eq(lca_usable_size(q), big_usable);
  test_util::fill_pattern(q, big_usable, 7);
  ck_assert_int_eq(test_util::check_pattern(q, big_usable, 7), -1);
  lca_free(q);
  ck_assert_uint_eq(h->medium.nonempty, 1u << big_bin);
  ck_assert_uint_eq(h->medium.bytes, big_usable);
  lca_trim();
  // 40 KiB is more than a doubling above 9 KiB: the arena serves the request.
  void* far = lca_malloc(40 * KiB);
  ck_assert_ptr_nonnull(far);
  unsigned far_bin = lca::medium_bin(lca_usable_size(far));
  ck_assert_uint_gt(far_bin, lca::medium_bin(9 * KiB) + lca::kMediumSearchBins);
  lca_free(far);
  hits = h->counters.medium_hits.get();
  void* small = lca_malloc(9 * KiB);
  ck_assert_ptr_ne(small, far);
  ck_assert_uint_eq(h->counters.medium_hits.get(), hits);
  ck_assert_uint_eq(h->medium.nonempty, 1u << far_bin);
  // The held block is still a freed block: a second free of it is reported.
  auto r = test_util::expect_death([far] { lca_free(far); }, "Double free");
  ck_assert_msg(r.died_of_sigabrt && r.matched, "%s", r.description.c_str());
  lca_free(small);
  const char* why = "";
  ck_assert_msg(lca::arena_verify(&h->arena, &why), "arena_verify: %s", why);
}
END_TEST

// Which held block a request takes, case by case (heap_alloc_medium chooses the
// bin without branches on the bins' contents since 2026-12-06): the own bin's
// first block when it fits, even with a block above; else the first block of
// the nearest bin above within kMediumSearchBins, whether the own bin is empty
// or its first block is too short (which then stays held); else the arena.  A
// bin's bit in `nonempty` goes when its last block is taken, not before.
START_TEST(test_bin_choice_cases) {
  if (const char* why = cache_off_why()) TEST_SKIP("%s", why);
  void* warm = lca_malloc(100);
  lca_free(warm);
  lca_trim();
  lca::Heap* h = my_heap();
  ck_assert_uint_eq(h->medium.nonempty, 0);
  const std::size_t request = 21 * KiB + 512;  // bin 10: 20 KiB .. 22 KiB
  const unsigned own = lca::medium_bin(request);
  auto take = [&](std::size_t size) {
    void* p = lca_malloc(size);
    ck_assert_ptr_nonnull(p);
    return p;
  };
  // short: in the own bin, too small for the request; fit1, fit2: in the own
  // bin, big enough; up: five bins above.
  void* short_block = take(20 * KiB + 16);
  void* fit1 = take(22 * KiB - 16);
  void* fit2 = take(22 * KiB - 16);
  void* up = take(30 * KiB);
  void* keep = take(8 * KiB + 16);  // keeps the four apart from the arena's top
  const std::size_t short_usable = lca_usable_size(short_block);
  ck_assert_uint_eq(lca::medium_bin(short_usable), own);
  ck_assert_uint_lt(short_usable, request);
  ck_assert_uint_eq(lca::medium_bin(lca_usable_size(fit1)), own);
  ck_assert_uint_ge(lca_usable_size(fit1), request);
  ck_assert_uint_eq(lca::medium_bin(lca_usable_size(fit2)), own);
  unsigned up_bin = lca::medium_bin(lca_usable_size(up));
  ck_assert_uint_gt(up_bin, own);
  ck_assert_uint_le(up_bin, own + lca::kMediumSearchBins);
  std::size_t hits = h->counters.medium_hits.get();

  // The own bin empty, a block above: the block above.
  lca_free(up);
  ck_assert_ptr_eq(lca_malloc(request), up);
  ck_assert_uint_eq(h->medium.nonempty, 0);
  ck_assert_uint_eq(h->counters.medium_hits.get(), ++hits);

  // The own bin's first block too short, a block above: the block above; the
  // short one stays held, its bit with it.
  lca_free(short_block);
  lca_free(up);
  ck_assert_uint_eq(h->medium.nonempty, (1u << own) | (1u << up_bin));
  ck_assert_ptr_eq(lca_malloc(request), up);
  ck_assert_uint_eq(h->medium.nonempty, 1u << own);
  ck_assert_uint_eq(h->counters.medium_hits.get(), ++hits);

  // The own bin's first block too short and nothing above: the arena.
  void* from_arena = lca_malloc(request);
  ck_assert_ptr_nonnull(from_arena);
  ck_assert_ptr_ne(from_arena, short_block);
  ck_assert_uint_eq(h->counters.medium_hits.get(), hits);
  ck_assert_uint_eq(h->medium.nonempty, 1u << own);
  ck_assert_uint_eq(h->medium.bytes, short_usable);
  short_block = take(20 * KiB + 16);  // the held short block, taken back by its own size
  ck_assert_uint_eq(h->medium.nonempty, 0);
  ck_assert_uint_eq(h->counters.medium_hits.get(), ++hits);

  // Two fitting blocks in the own bin and one above: the own bin's, last freed
  // first; its bit goes with the second; then the block above.
  lca_free(up);
  lca_free(fit1);
  lca_free(fit2);
  ck_assert_ptr_eq(lca_malloc(request), fit2);
  ck_assert_uint_eq(h->medium.nonempty, (1u << own) | (1u << up_bin));
  ck_assert_ptr_eq(lca_malloc(request), fit1);
  ck_assert_uint_eq(h->medium.nonempty, 1u << up_bin);
  ck_assert_ptr_eq(lca_malloc(request), up);
  ck_assert_uint_eq(h->medium.nonempty, 0);
  ck_assert_uint_eq(h->medium.bytes, 0);
  ck_assert_uint_eq(h->counters.medium_hits.get(), hits + 3);

  for (void* p : {short_block, fit1, fit2, up, keep, from_arena}) lca_free(p);
  const char* why = "";
  ck_assert_msg(lca::arena_verify(&h->arena, &why), "arena_verify: %s", why);
}
END_TEST

// The bound follows the thread's live arena bytes: with 1.6 MiB live a thread
// holds 12 freed 40 KiB blocks (480 KiB; a fixed 256 KiB bound held 6), and as
// its live bytes fall the cache gives blocks back until it holds no more than
// kMediumCacheBytes.  A thread with little live holds kMediumCacheBytes at most.
START_TEST(test_cache_bound_follows_live) {
  if (const char* why = cache_off_why()) TEST_SKIP("%s", why);
  void* warm = lca_malloc(100);  // the thread's heap exists
  lca_free(warm);
  lca_trim();  // nothing held
  lca::Heap* h = my_heap();
  constexpr std::size_t n = 40, size = 40 * KiB;
  std::vector<void*> blocks;
  blocks.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    blocks.push_back(lca_malloc(size));
    ck_assert_ptr_nonnull(blocks.back());
  }
  std::size_t usable = lca_usable_size(blocks[0]);
  for (std::size_t i = 0; i < 12; ++i) lca_free(blocks[i]);
  std::size_t bytes;
  ck_assert_uint_eq(held_blocks(h, &bytes), 12);
  ck_assert_uint_eq(bytes, 12 * usable);
  ck_assert_uint_gt(h->medium.bytes, lca::kMediumCacheBytes);
  ck_assert_uint_le(h->medium.bytes, lca::kMediumCacheBytesMax);
  for (std::size_t i = 12; i < n; ++i) {
    lca_free(blocks[i]);
    ck_assert_uint_le(h->medium.bytes, lca::kMediumCacheBytesMax);
  }
  ck_assert_uint_le(h->medium.bytes, lca::kMediumCacheBytes);
  ck_assert_uint_eq(held_blocks(h, &bytes), h->medium.bytes / usable);
  const char* why = "";
  ck_assert_msg(lca::arena_verify(&h->arena, &why), "arena_verify: %s", why);
  // Little live (10 blocks, 400 KiB): the fixed bound.
  lca_trim();
  for (std::size_t i = 0; i < 10; ++i) blocks[i] = lca_malloc(size);
  for (std::size_t i = 0; i < 10; ++i) {
    lca_free(blocks[i]);
    ck_assert_uint_le(h->medium.bytes, lca::kMediumCacheBytes);
  }
  ck_assert_uint_eq(held_blocks(h, &bytes), lca::kMediumCacheBytes / usable);
  lca_trim();
}
END_TEST

// arena_verify checks the free lists as well as the blocks: a listed block's
// links, the bitmaps, and that every free block is listed.  A private arena in
// a chunk of our own: A and C free in one list (C at its head, A next); each
// corruption is named, and undone.
START_TEST(test_verify_checks_free_lists) {
  const std::size_t chunk = lca::kChunkSize;
  void* raw = mmap(nullptr, 2 * chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(raw, MAP_FAILED);
  auto base = (reinterpret_cast<std::uintptr_t>(raw) + chunk - 1) & ~(chunk - 1);
  auto* c = reinterpret_cast<lca::ArenaChunk*>(base);
  lca::Arena a{};
  lca::arena_add_chunk(&a, c);
  void* g0 = lca::arena_alloc(&a, 9000, 16);
  void* blk_a = lca::arena_alloc(&a, 9000, 16);
  void* x = lca::arena_alloc(&a, 9000, 16);
  void* blk_c = lca::arena_alloc(&a, 9000, 16);
  void* d = lca::arena_alloc(&a, 9000, 16);
  ck_assert(g0 && blk_a && x && blk_c && d);
  const char* why = nullptr;
  lca::arena_free(&a, c, blk_a);
  lca::arena_free(&a, c, blk_c);  // the list: C, then A
  ck_assert_msg(lca::arena_verify(&a, &why), "%s", why);
  // The links of a free block are its first two payload words {next, prev}.
  auto* links_a = static_cast<lca::BlockTag**>(blk_a);
  auto* links_c = static_cast<lca::BlockTag**>(blk_c);
  lca::BlockTag* saved = links_a[1];
  links_a[1] = static_cast<lca::BlockTag*>(blk_a);  // A's prev no longer names C
  ck_assert(!lca::arena_verify(&a, &why));
  ck_assert_str_eq(why, "free list prev link disagrees");
  links_a[1] = saved;
  saved = links_c[0];
  links_c[0] = nullptr;  // A dropped from the list
  ck_assert(!lca::arena_verify(&a, &why));
  ck_assert_str_eq(why, "free block missing from the lists");
  links_c[0] = saved;
  std::uint32_t fl_bitmap = a.fl_bitmap;
  a.fl_bitmap = 0;
  ck_assert(!lca::arena_verify(&a, &why));
  ck_assert_str_eq(why, "first-level bitmap disagrees");
  a.fl_bitmap = fl_bitmap;
  ck_assert_msg(lca::arena_verify(&a, &why), "%s", why);
  for (void* b : {g0, x, d}) lca::arena_free(&a, c, b);
  ck_assert_msg(lca::arena_verify(&a, &why), "%s", why);
  munmap(raw, 2 * chunk);
}
END_TEST

// A block that merged into a free block before it is still named freed: a
// second free of it is a double free, as for one that merged with a free block
// after it (its tag, left inside the merged block, is flagged free).  Under the
// old code arena_check called it "not a block start" (an invalid free).
START_TEST(test_double_free_after_backward_merge) {
  const std::size_t chunk = lca::kChunkSize;
  void* raw = mmap(nullptr, 2 * chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(raw, MAP_FAILED);
  auto base = (reinterpret_cast<std::uintptr_t>(raw) + chunk - 1) & ~(chunk - 1);
  auto* c = reinterpret_cast<lca::ArenaChunk*>(base);
  lca::Arena a{};
  lca::arena_add_chunk(&a, c);
  void* g0 = lca::arena_alloc(&a, 9000, 16);
  void* blk_a = lca::arena_alloc(&a, 9000, 16);
  void* blk_b = lca::arena_alloc(&a, 9000, 16);
  void* g1 = lca::arena_alloc(&a, 9000, 16);
  ck_assert(g0 && blk_a && blk_b && g1);
  lca::arena_free(&a, c, blk_a);
  ck_assert_int_eq(lca::arena_free_neighbours(blk_b), 1);  // A, before it
  lca::arena_free(&a, c, blk_b);                            // merges into A
  ck_assert(lca::arena_check(c, blk_b) == lca::ArenaCheck::already_free);
  ck_assert(lca::arena_check(c, blk_a) == lca::ArenaCheck::already_free);
  ck_assert(lca::arena_check(c, static_cast<char*>(blk_b) + 16) == lca::ArenaCheck::not_block_start);
  const char* why = nullptr;
  ck_assert_msg(lca::arena_verify(&a, &why), "%s", why);
  // The merged block is carved again: the new block's start is live, as before.
  void* p = lca::arena_alloc(&a, 16000, 16);
  ck_assert_ptr_eq(p, blk_a);
  ck_assert(lca::arena_check(c, p) == lca::ArenaCheck::ok);
  for (void* b : {p, g0, g1}) lca::arena_free(&a, c, b);
  ck_assert_msg(lca::arena_verify(&a, &why), "%s", why);
  ck_assert(lca::arena_chunk_is_empty(c));
  munmap(raw, 2 * chunk);
}
END_TEST

// arena_alloc's room with an alignment above 16: the free block taken for the
// room must also hold the aligned block (its gap before the aligned payload).
// A hole of 12 000 bytes between two live blocks has room for 9 000, but not
// for 8 800 bytes aligned to 4 KiB once the gap is cut: under the old code the
// block ran past the hole into the live block after it (arena_verify failed).
START_TEST(test_room_with_alignment) {
  const std::size_t chunk = lca::kChunkSize;
  void* raw = mmap(nullptr, 2 * chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(raw, MAP_FAILED);
  auto base = (reinterpret_cast<std::uintptr_t>(raw) + chunk - 1) & ~(chunk - 1);
  auto* c = reinterpret_cast<lca::ArenaChunk*>(base);
  const char* why = nullptr;
  // Each shift of the hole puts its payload at another offset from a 4 KiB
  // boundary: at least one needs a gap (all but an aligned payload do).
  for (std::size_t shift = 0; shift < 4096; shift += 1024) {
    lca::Arena a{};
    lca::arena_add_chunk(&a, c);
    void* g0 = lca::arena_alloc(&a, 9000 + shift, 16);
    void* hole = lca::arena_alloc(&a, 12000, 16);
    void* g1 = lca::arena_alloc(&a, 9000, 16);
    ck_assert(g0 && hole && g1);
    std::memset(g1, 0x5a, 9000);
    lca::arena_free(&a, c, hole);
    void* p = lca::arena_alloc(&a, 8800, 4096, 9000);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(reinterpret_cast<std::uintptr_t>(p) % 4096, 0);
    ck_assert_msg(lca::arena_verify(&a, &why), "shift %zu: %s", shift, why);
    auto pb = reinterpret_cast<std::uintptr_t>(p), gb = reinterpret_cast<std::uintptr_t>(g1);
    ck_assert_msg(pb + 8800 <= gb || pb >= gb + 9000, "shift %zu: the aligned block overlaps the live block", shift);
    std::memset(p, 0xa5, 8800);
    for (std::size_t i = 0; i < 9000; ++i) ck_assert_uint_eq(static_cast<unsigned char*>(g1)[i], 0x5a);
    for (void* b : {p, g0, g1}) lca::arena_free(&a, c, b);
    ck_assert_msg(lca::arena_verify(&a, &why), "%s", why);
    ck_assert(lca::arena_chunk_is_empty(c));
  }
  munmap(raw, 2 * chunk);
}
END_TEST

int main() {
  TCase* tc;
  Suite* s = test_util::make_suite("arena", &tc);
  tcase_add_test(tc, test_medium_bins);
  tcase_add_test(tc, test_freed_block_reused);
  tcase_add_test(tc, test_cache_bounded);
  tcase_add_test(tc, test_double_free_of_held_block);
  tcase_add_test(tc, test_remote_double_free_of_held_block);
  tcase_add_test(tc, test_realloc_of_held_block);
  tcase_add_test(tc, test_thread_exit_returns_cache);
  tcase_add_test(tc, test_trim_returns_cache);
  tcase_add_test(tc, test_held_block_keeps_live_bit);
  tcase_add_test(tc, test_cache_yields_before_new_chunk);
  tcase_add_test(tc, test_threads_churn);
  tcase_add_test(tc, test_larger_held_block_serves);
  tcase_add_test(tc, test_bin_choice_cases);
  tcase_add_test(tc, test_cache_bound_follows_live);
  tcase_add_test(tc, test_verify_checks_free_lists);
  tcase_add_test(tc, test_double_free_after_backward_merge);
  tcase_add_test(tc, test_room_with_alignment);
  return test_util::run_suite(s);
}
