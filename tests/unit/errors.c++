// tests/unit/errors.c++ -- the "errors" suite: bad frees abort with a message.
//
// Freeing a pointer libcalloc never returned (the middle of a small, medium or large
// block, an unaligned address, a stack address, (void*)1, a page of someone else's
// mapping, a forged copy of one of our chunks) prints a line with "Invalid free" and
// the address (as printf("%p") prints it) and aborts; a double free (small, 4 KiB,
// medium, large, and one whose first free came from another thread) prints "Double
// free" and the address and aborts; so does a second free from another thread.  A
// slot boundary inside a block grown in place and a slot not carved yet are invalid
// frees too, and the free guards never make a valid free look like a double one.  Each case runs through free() (when libcalloc
// is the malloc), lca_free, MemoryAllocator::instance().deallocate and an
// independent heap's deallocate.  Every case runs in a forked child: it must die of
// SIGABRT -- a SIGSEGV inside the allocator, a silent return or a hang fail.
#include <custom_alloc/memory_allocator.h++>
#include <libcalloc.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "span.h++"

#include "../test-util.h++"

using custom_alloc::MemoryAllocator;
using test_util::DeathResult;
using test_util::expect_death;
using test_util::launder;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

#ifdef CALLOC_OVERRIDE
constexpr bool kOverride = true;
#else
constexpr bool kOverride = false;
#endif

enum class Api { plain_free, lca_free, process_heap, own_heap };

const char* api_name(Api a) {
  switch (a) {
    case Api::plain_free: return "free";
    case Api::lca_free: return "lca_free";
    case Api::process_heap: return "MemoryAllocator::instance().deallocate";
    case Api::own_heap: return "MemoryAllocator(independent).deallocate";
  }
  return "?";
}

// The APIs a case runs through: plain free only when libcalloc is the malloc.
std::vector<Api> apis() {
  std::vector<Api> v;
  if (kOverride) v.push_back(Api::plain_free);
  v.push_back(Api::lca_free);
  v.push_back(Api::process_heap);
  v.push_back(Api::own_heap);
  return v;
}

// Allocation and release through one API.
struct Via {
  Api api;
  MemoryAllocator* own;
  void* alloc(std::size_t n) const {
    switch (api) {
      case Api::plain_free: return launder(std::malloc(n));
      case Api::lca_free: return lca_malloc(n);
      case Api::process_heap: return MemoryAllocator::instance().allocate(n);
      case Api::own_heap: return own->allocate(n);
    }
    return nullptr;
  }
  void release(void* p) const {
    switch (api) {
      case Api::plain_free: std::free(launder(p)); return;
      case Api::lca_free: lca_free(p); return;
      case Api::process_heap: MemoryAllocator::instance().deallocate(p); return;
      case Api::own_heap: own->deallocate(p); return;
    }
  }
};

// The line of the child's stderr that contains `what`, or "" if none.
std::string line_with(const std::string& text, const char* what) {
  std::size_t at = text.find(what);
  if (at == std::string::npos) return "";
  std::size_t begin = text.rfind('\n', at);
  begin = begin == std::string::npos ? 0 : begin + 1;
  std::size_t end = text.find('\n', at);
  return text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

// Asserts the child died of SIGABRT with a line naming `what` and the address.
#define ASSERT_DIED(r, api, what, addr)                                                                     \
  do {                                                                                                      \
    const DeathResult& r_ = (r);                                                                            \
    ck_assert_msg(r_.died_of_sigabrt, "%s(%p): %s", api_name(api), (addr), r_.description.c_str());         \
    ck_assert_msg(r_.output_contains(what), "%s(%p): no \"%s\" on stderr: %s", api_name(api), (addr), (what), \
                  r_.description.c_str());                                                                  \
    const std::string line_ = line_with(r_.output, (what));                                                 \
    const std::string addr_ = test_util::address_text(addr);                                                \
    ck_assert_msg(line_.find(addr_) != std::string::npos, "%s(%p): the \"%s\" line does not name %s: \"%s\"", \
                  api_name(api), (addr), (what), addr_.c_str(), line_.c_str());                             \
  } while (0)

#define SKIP_PLAIN_FREE_NOTE()                                                                                 \
  do {                                                                                                         \
    if (!kOverride) TEST_SKIP("built with --disable-override: the free() variant is glibc's and was not run"); \
  } while (0)

// Frees `bad` (a pointer into a live block of `size` at offset `offset`) and expects
// "Invalid free".
void interior_case(std::size_t size, std::size_t offset) {
  for (Api api : apis()) {
    MemoryAllocator own;
    Via via{api, &own};
    char* p = static_cast<char*>(via.alloc(size));
    ck_assert_ptr_nonnull(p);
    std::memset(p, 0x3C, size);
    void* bad = p + offset;
    DeathResult r = expect_death([&] { via.release(bad); }, "Invalid free");
    ASSERT_DIED(r, api, "Invalid free", bad);
    via.release(p);
  }
}

// Frees `bad`, which libcalloc never returned, and expects "Invalid free".
void foreign_case(void* bad) {
  for (Api api : apis()) {
    MemoryAllocator own;
    Via via{api, &own};
    via.release(via.alloc(64));  // the heap is initialised
    DeathResult r = expect_death([&] { via.release(bad); }, "Invalid free");
    ASSERT_DIED(r, api, "Invalid free", bad);
  }
}

// Frees a block of `size` twice and expects "Double free" (or `alternative`).
void double_free_case(std::size_t size, const char* alternative = nullptr) {
  for (Api api : apis()) {
    MemoryAllocator own;
    Via via{api, &own};
    void* p = via.alloc(size);
    ck_assert_ptr_nonnull(p);
    std::memset(p, 0x5A, size);
    DeathResult r = expect_death(
        [&] {
          via.release(p);
          via.release(p);
        },
        "Double free");
    if (alternative != nullptr && !r.matched && r.output_contains(alternative)) {
      ASSERT_DIED(r, api, alternative, p);
    } else {
      ASSERT_DIED(r, api, "Double free", p);
    }
    via.release(p);  // the parent's copy is still live
  }
}

}  // namespace

START_TEST(test_invalid_free_interior_small) {
  interior_case(64, 32);
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

START_TEST(test_invalid_free_interior_medium) {
  interior_case(20 * KiB, 10 * KiB);
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

// 1 MiB and 4 MiB: a dedicated mapping under any large threshold (64 KiB or 1 MiB).
START_TEST(test_invalid_free_interior_large) {
  interior_case(1 * MiB, 512 * KiB);
  interior_case(4 * MiB, 2 * MiB + 4096);
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

START_TEST(test_invalid_free_unaligned) {
  interior_case(64, 1);
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

START_TEST(test_invalid_free_stack) {
  alignas(64) char buf[256];
  std::memset(buf, 0, sizeof buf);
  foreign_case(launder(static_cast<void*>(buf + 64)));
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

START_TEST(test_invalid_free_one) {
  foreign_case(launder(reinterpret_cast<void*>(std::uintptr_t{1})));
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

// Addresses the chunk registry does not cover (2^48 and above): free's fast path
// tests the registry slot's range instead of the address's top bits and has no
// null test of its own (docs/design.md, "Small fast path: instructions per
// call"); 2^48 exactly is the first slot past the table.
START_TEST(test_invalid_free_beyond_registry) {
  foreign_case(launder(reinterpret_cast<void*>(std::uintptr_t{1} << 48)));
  foreign_case(launder(reinterpret_cast<void*>((std::uintptr_t{1} << 48) + 64)));
  foreign_case(launder(reinterpret_cast<void*>(~std::uintptr_t{0} << 47 | 0x1040)));
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

// A page of a mapping made by the test, and a 4 MiB-aligned address inside one (where
// a chunk header would be looked up).
START_TEST(test_invalid_free_foreign_mapping) {
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ck_assert(page != MAP_FAILED);
  foreign_case(page);
  foreign_case(static_cast<char*>(page) + 64);

  const std::size_t chunk = 4 * MiB;
  void* region = mmap(nullptr, 3 * chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ck_assert(region != MAP_FAILED);
  char* aligned = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(region) + chunk - 1) & ~(chunk - 1));
  std::memset(aligned, 0, chunk);
  foreign_case(aligned + 64 * KiB);
  std::memset(aligned, 0xFF, chunk);
  foreign_case(aligned + 64 * KiB + 4096);
  munmap(region, 3 * chunk);
  munmap(page, 4096);
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

// A forged chunk: a copy of the first 256 KiB of the 4 MiB-aligned region holding one
// of our blocks, placed at another 4 MiB-aligned address.  Magic words and page map
// look right; only a registry of our own chunks tells it apart.  Freeing the copy of
// the block must be an invalid free, not a corruption of the real span.
START_TEST(test_invalid_free_forged_chunk) {
  const std::size_t chunk = 4 * MiB, copied = 256 * KiB;
  for (Api api : apis()) {
    MemoryAllocator own;
    Via via{api, &own};
    char* p = static_cast<char*>(via.alloc(64));
    ck_assert_ptr_nonnull(p);
    const std::uintptr_t real = reinterpret_cast<std::uintptr_t>(p) & ~(chunk - 1);
    void* region = mmap(nullptr, 3 * chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert(region != MAP_FAILED);
    char* fake = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(region) + chunk - 1) & ~(chunk - 1));
    // /proc/self/mem reads what is mapped and reports an error for what is not.
    int mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(mem, 0);
    for (std::size_t off = 0; off < copied; off += 4096)
      (void)pread(mem, fake + off, 4096, static_cast<off_t>(real + off));
    close(mem);
    void* bad = fake + (reinterpret_cast<std::uintptr_t>(p) - real);
    DeathResult r = expect_death([&] { via.release(bad); }, "Invalid free");
    ASSERT_DIED(r, api, "Invalid free", bad);
    munmap(region, 3 * chunk);
    via.release(p);
  }
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

START_TEST(test_double_free_small) {
  double_free_case(64);
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

START_TEST(test_double_free_page) {
  double_free_case(4 * KiB);
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

START_TEST(test_double_free_medium) {
  double_free_case(20 * KiB);
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

// A large block's second free may find its mapping gone: "Invalid free" is an
// acceptable diagnosis there, silence or a crash is not.
START_TEST(test_double_free_large) {
  double_free_case(1 * MiB, "Invalid free");
  double_free_case(4 * MiB, "Invalid free");
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

// Every block of the smallest class keeps its free guard in its second word.
START_TEST(test_double_free_tiny) {
  double_free_case(0);
  double_free_case(1);
  double_free_case(16);
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

// The owner frees first, another thread second: the remote free finds the guard.
START_TEST(test_double_free_second_remote) {
  for (std::size_t size : {16ul, 64ul, 20 * KiB}) {
    for (Api api : apis()) {
      MemoryAllocator own;
      Via via{api, &own};
      void* p = via.alloc(size);
      ck_assert_ptr_nonnull(p);
      DeathResult r = expect_death(
          [&] {
            via.release(p);
            std::thread t([&] { via.release(p); });
            t.join();
          },
          "Double free");
      ASSERT_DIED(r, api, "Double free", p);
      via.release(p);
    }
  }
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

// In a fresh independent heap the first 48-byte block is at the start of a new
// span: the slots after it are not carved yet, and freeing one is an invalid free
// although it is an object boundary.
START_TEST(test_invalid_free_uncarved_slot) {
  MemoryAllocator own;
  char* p = static_cast<char*>(own.allocate(48));
  ck_assert_ptr_nonnull(p);
  for (std::size_t k : {1ul, 10ul, 100ul}) {
    void* bad = p + k * 48;
    DeathResult r = expect_death([&] { own.deallocate(bad); }, "Invalid free");
    ASSERT_DIED(r, Api::own_heap, "Invalid free", bad);
  }
  own.deallocate(p);
}
END_TEST

// A block grown in place over the uncarved slots after it (realloc at the carving
// frontier) covers several slots; a slot boundary inside it is not a block.
START_TEST(test_invalid_free_inside_grown_block) {
  MemoryAllocator own;
  char* p = static_cast<char*>(own.allocate(48));
  ck_assert_ptr_nonnull(p);
  ck_assert_ptr_eq(own.try_realloc_inplace(p, 200), p);
  ck_assert_uint_ge(own.get_allocation_size(p), 200);
  std::memset(p, 0x11, 200);
  for (std::size_t k : {1ul, 2ul, 4ul}) {
    void* bad = p + k * 48;
    DeathResult r = expect_death([&] { own.deallocate(bad); }, "Invalid free");
    ASSERT_DIED(r, Api::own_heap, "Invalid free", bad);
    ck_assert_msg(line_with(r.output, "Invalid free").find("middle of a block") != std::string::npos,
                  "message does not say 'middle of a block': %s", r.description.c_str());
  }
  own.deallocate(p);
  // Its slots are ordinary free blocks again: each can be allocated and freed.
  std::vector<void*> again;
  for (int i = 0; i < 8; ++i) again.push_back(own.allocate(48));
  for (void* q : again) own.deallocate(q);
}
END_TEST

// The guard word is the second word of a free block and malloc clears it: blocks
// whose users never write past their first word are freed and reused many times
// over without a false "Double free"; a block whose user stored there what a
// free block's link and guard look like for another address is still live.
START_TEST(test_guard_word_no_false_double_free) {
  for (std::size_t size : {16ul, 48ul, 1024ul, 8192ul}) {
    for (int round = 0; round < 1000; ++round) {
      auto* p = static_cast<std::uintptr_t*>(lca_malloc(size));
      ck_assert_ptr_nonnull(p);
      // The guard of its last free is gone.  (Under Valgrind the new block's bytes
      // are undefined to memcheck, which would report this read of them.)
      if (!test_util::running_on_valgrind()) ck_assert_uint_eq(p[1], 0);
      p[0] = round;
      lca_free(p);
    }
  }
  // A live block holding the guard of another block (its neighbour's) is live.
  auto* a = static_cast<std::uintptr_t*>(lca_malloc(64));
  auto* b = static_cast<std::uintptr_t*>(lca_malloc(64));
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  b[0] = reinterpret_cast<std::uintptr_t>(a);
  b[1] = lca::free_guard(a);
  lca_free(a);
  lca_free(b);
}
END_TEST

// The first free comes from another thread (a remote free onto the owner's list),
// the second from the owner.
START_TEST(test_double_free_remote) {
  for (std::size_t size : {64ul, 20 * KiB}) {
    for (Api api : apis()) {
      MemoryAllocator own;
      Via via{api, &own};
      void* p = via.alloc(size);
      ck_assert_ptr_nonnull(p);
      DeathResult r = expect_death(
          [&] {
            std::thread t([&] { via.release(p); });
            t.join();
            via.release(p);
          },
          "Double free");
      ASSERT_DIED(r, api, "Double free", p);
      via.release(p);
    }
  }
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

// A remote free waits in the freeing thread's foreign list or batch (tcache.h++)
// before it reaches the owner's span: a second free while it waits is still a
// double free, by the same thread or by the owner.
START_TEST(test_double_free_while_remote_batched) {
  for (std::size_t size : {16ul, 64ul, 1000ul}) {
    for (Api api : apis()) {
      MemoryAllocator own;
      Via via{api, &own};
      void* p = via.alloc(size);
      ck_assert_ptr_nonnull(p);
      DeathResult twice = expect_death(
          [&] {
            std::thread t([&] {
              via.release(p);
              via.release(p);
            });
            t.join();
          },
          "Double free");
      ASSERT_DIED(twice, api, "Double free", p);
      DeathResult by_owner = expect_death(
          [&] {
            std::mutex m;
            std::condition_variable cv;
            bool freed = false;
            std::thread t([&] {
              via.release(p);
              std::unique_lock<std::mutex> lock(m);
              freed = true;
              cv.notify_all();
              cv.wait(lock, [] { return false; });  // alive (its batch unflushed) until the process dies
            });
            {
              std::unique_lock<std::mutex> lock(m);
              cv.wait(lock, [&] { return freed; });
            }
            via.release(p);
            t.detach();
          },
          "Double free");
      ASSERT_DIED(by_owner, api, "Double free", p);
      via.release(p);
    }
  }
  SKIP_PLAIN_FREE_NOTE();
}
END_TEST

int main() {
  TCase* tc;
  Suite* s = test_util::make_suite("errors", &tc);
  tcase_add_test(tc, test_invalid_free_interior_small);
  tcase_add_test(tc, test_invalid_free_interior_medium);
  tcase_add_test(tc, test_invalid_free_interior_large);
  tcase_add_test(tc, test_invalid_free_unaligned);
  tcase_add_test(tc, test_invalid_free_stack);
  tcase_add_test(tc, test_invalid_free_one);
  tcase_add_test(tc, test_invalid_free_foreign_mapping);
  tcase_add_test(tc, test_invalid_free_beyond_registry);
  tcase_add_test(tc, test_invalid_free_forged_chunk);
  tcase_add_test(tc, test_double_free_small);
  tcase_add_test(tc, test_double_free_page);
  tcase_add_test(tc, test_double_free_medium);
  tcase_add_test(tc, test_double_free_large);
  tcase_add_test(tc, test_double_free_remote);
  tcase_add_test(tc, test_double_free_tiny);
  tcase_add_test(tc, test_double_free_second_remote);
  tcase_add_test(tc, test_invalid_free_uncarved_slot);
  tcase_add_test(tc, test_invalid_free_inside_grown_block);
  tcase_add_test(tc, test_guard_word_no_false_double_free);
  tcase_add_test(tc, test_double_free_while_remote_batched);
  return test_util::run_suite(s);
}
