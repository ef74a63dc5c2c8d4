// tests/unit/asan.c++ -- the "asan" suite: libcalloc's blocks as AddressSanitizer
// sees them (ASan mode, src/sanitizer.h++ and src/asan.c++).
//
// In an ASan build (configure CXXFLAGS='-g -O1 -fsanitize=address'
// --disable-override, or scripts/check-sanitizers asan) every lca_malloc and
// MemoryAllocator block is addressable for exactly the requested bytes and poisoned
// after them, and a freed block is poisoned until it leaves libcalloc's
// quarantine.  These tests check the poisoning directly (ASan's interface), then
// make the user's bugs in forked children and check ASan's report on stderr:
// a use after free and a one-byte overflow, in every tier.
//
// ASan names an access to memory poisoned by the program (as libcalloc's blocks
// are) "use-after-poison", not "heap-use-after-free" or "heap-buffer-overflow",
// which it keeps for its own heap; libcalloc's line after the report says what the
// address is ("... is 3 bytes inside a block of size 32 free'd").  In other builds
// every test is skipped.
#include <custom_alloc/memory_allocator.h++>
#include <libcalloc.h>

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../test-util.h++"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#endif
#endif

using custom_alloc::MemoryAllocator;
using test_util::address_text;
using test_util::Failure;
using test_util::kAsanBuild;
using test_util::launder;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

#define SKIP_UNLESS_ASAN()                                                                                    \
  do {                                                                                                        \
    if (!kAsanBuild)                                                                                          \
      TEST_SKIP("not an AddressSanitizer build (scripts/check-sanitizers asan builds one): libcalloc's blocks " \
                "are poisoned only when it is compiled with -fsanitize=address");                            \
  } while (0)

#if defined(ASAN_POISON_MEMORY_REGION)
bool poisoned(const void* p) { return __asan_address_is_poisoned(p) != 0; }
// The first poisoned byte of [p, p+n), or nullptr.
const void* first_poisoned(const void* p, std::size_t n) {
  return n ? __asan_region_is_poisoned(const_cast<void*>(p), n) : nullptr;
}
#else
bool poisoned(const void*) { return false; }
const void* first_poisoned(const void*, std::size_t) { return nullptr; }
#endif

// A block of `size` bytes must be addressable exactly: every byte of it, not the
// byte after it.
void check_exact(Failure& f, const char* how, const void* p, std::size_t size) {
  if (p == nullptr) {
    f.note("%s(%zu) failed", how, size);
    return;
  }
  if (const void* bad = first_poisoned(p, size))
    f.note("%s(%zu) = %p: byte %td of the block is poisoned", how, size, p,
           static_cast<const char*>(bad) - static_cast<const char*>(p));
  if (!poisoned(static_cast<const char*>(p) + size))
    f.note("%s(%zu) = %p: the byte after the block is addressable (no redzone)", how, size, p);
}

// A freed block must be poisoned from its first byte (a block of 0 bytes has none).
void check_freed(Failure& f, const char* how, const void* p, std::size_t size) {
  if (size && !poisoned(p)) f.note("%s(%zu) = %p: addressable after free", how, size, p);
}

// Where the children put what the buggy functions read (so that the read stays).
volatile int g_sink;

// The bugs, each in a function of its own so that the report names it.
__attribute__((noinline)) int read_after_free(std::size_t size, std::size_t offset) {
  auto* p = launder(static_cast<volatile char*>(lca_malloc(size)));
  std::memset(const_cast<char*>(p), 7, size);
  std::fprintf(stderr, "block %s\n", address_text(const_cast<char*>(p)).c_str());
  lca_free(const_cast<char*>(p));
  return p[offset];  // BUG: read after free
}

__attribute__((noinline)) void write_past_end(std::size_t size) {
  auto* p = launder(static_cast<volatile char*>(lca_malloc(size)));
  std::fprintf(stderr, "block %s\n", address_text(const_cast<char*>(p)).c_str());
  p[size] = 1;  // BUG: one byte past the end
  lca_free(const_cast<char*>(p));
}

__attribute__((noinline)) int read_after_free_in_heap(MemoryAllocator& heap) {
  auto* p = launder(static_cast<volatile char*>(heap.allocate(200)));
  std::memset(const_cast<char*>(p), 5, 200);
  std::fprintf(stderr, "block %s\n", address_text(const_cast<char*>(p)).c_str());
  heap.deallocate(const_cast<char*>(p));
  return p[100];  // BUG: read after free, in an independent heap
}

__attribute__((noinline)) int read_after_realloc_moved() {
  auto* p = static_cast<char*>(lca_malloc(100));
  std::memset(p, 3, 100);
  std::fprintf(stderr, "block %s\n", address_text(p).c_str());
  void* q = lca_realloc(p, 200 * KiB);  // moves: from a span to the arena
  auto* old = launder(static_cast<volatile char*>(static_cast<void*>(p)));
  int r = old[10];  // BUG: the block moved, p was freed
  lca_free(q);
  return r;
}

// The address ASan reports ("use-after-poison on address 0x...") for offset bytes
// into the block the child printed ("block 0x...").
std::string reported_address(const std::string& output, std::size_t offset) {
  std::size_t at = output.find("block 0x");
  if (at == std::string::npos) return "(no block address printed)";
  unsigned long long v = std::strtoull(output.c_str() + at + 6, nullptr, 16);
  return address_text(reinterpret_cast<void*>(static_cast<std::uintptr_t>(v + offset)));
}

// Runs fn in a child: it must die of ASan's use-after-poison report at the block's
// address + offset, with libcalloc's description (`where`, e.g. "3 bytes inside a
// block of size 32 free'd") when given, and name `function` in the stack.
template <class Fn>
void expect_asan_report(Fn&& fn, std::size_t offset, const char* where, const char* function, const char* access) {
  test_util::DeathResult r = test_util::expect_report(fn, {"ERROR: AddressSanitizer: use-after-poison on address",
                                                           access, function});
  ck_assert_msg(r.ok(), "%s", r.description.c_str());
  const std::string addr = reported_address(r.output, offset);
  ck_assert_msg(r.output_contains("use-after-poison on address " + addr),
                "ASan's report is not about %s (the block + %zu): %s", addr.c_str(), offset, r.output.c_str());
  if (where) {
    const std::string line = "libcalloc: " + addr + " is " + where;
    ck_assert_msg(r.output_contains(line), "no \"%s\" after ASan's report: %s", line.c_str(), r.output.c_str());
  }
}

#if defined(ASAN_POISON_MEMORY_REGION)
// mremap, as libcalloc calls it (os_remap), seen from here: once the kernel has
// unmapped a range (the old range of a move, the tail of a shrink), another
// thread's mmap may start there, and any ASan poison still on it is reported
// against that thread's writes.  The range must be clean when mremap returns.
std::atomic<unsigned> g_remap_moves{0};
std::atomic<unsigned> g_remap_left_poisoned{0};

void note_left_range(const void* p, std::size_t n) {
  if (n && __asan_region_is_poisoned(const_cast<void*>(p), n)) g_remap_left_poisoned.fetch_add(1);
}
#endif

}  // namespace

#if defined(ASAN_POISON_MEMORY_REGION)
// Interposes glibc's mremap for the whole program, libcalloc included.
extern "C" void* mremap(void* addr, std::size_t old_size, std::size_t new_size, int flags, ...) noexcept {
  void* fixed = nullptr;
  if (flags & MREMAP_FIXED) {
    va_list ap;
    va_start(ap, flags);
    fixed = va_arg(ap, void*);
    va_end(ap);
  }
  long r = syscall(SYS_mremap, addr, old_size, new_size, flags, fixed);
  if (r == -1) return MAP_FAILED;
  void* q = reinterpret_cast<void*>(r);
  if (q != addr) {
    g_remap_moves.fetch_add(1);
    note_left_range(addr, old_size);
  } else if (new_size < old_size) {
    note_left_range(static_cast<char*>(addr) + new_size, old_size - new_size);
  }
  return q;
}
#endif

// Every tier, every entry point: the requested bytes addressable, the byte after
// them poisoned, the whole block poisoned once freed; realloc keeps the rule.
START_TEST(test_poisoning_is_exact) {
  SKIP_UNLESS_ASAN();
  Failure f;
  std::vector<std::size_t> sizes;
  for (std::size_t n = 0; n <= 300; n++) sizes.push_back(n);
  for (std::size_t n : {1000ul, 4095ul, 4096ul, 5000ul, 40 * KiB + 3, 70000ul, 1 * MiB - 5, 2 * MiB + 3})
    sizes.push_back(n);
  MemoryAllocator heap;
  for (std::size_t n : sizes) {
    void* p = lca_malloc(n);
    check_exact(f, "lca_malloc", p, n);
    if (p && lca_usable_size(p) != n)
      f.note("lca_usable_size of an lca_malloc(%zu) block is %zu", n, lca_usable_size(p));
    lca_free(p);
    check_freed(f, "lca_malloc", p, n);

    void* z = lca_calloc(1, n);
    check_exact(f, "lca_calloc", z, n);
    lca_free(z);

    void* h = heap.allocate(n);
    check_exact(f, "MemoryAllocator::allocate", h, n);
    heap.deallocate(h);
    check_freed(f, "MemoryAllocator::allocate", h, n);

    void* a = lca_aligned_alloc(4096, n);
    check_exact(f, "lca_aligned_alloc(4096)", a, n);
    lca_free(a);
  }
  // realloc: shrink and grow in place and by moving; the old block of a move is freed.
  // (A large block moved by mremap leaves no memory behind to poison.)
  for (std::size_t n : {24ul, 200ul, 3000ul, 50000ul, 3 * MiB}) {
    char* p = static_cast<char*>(lca_malloc(n));
    std::size_t cur = n;
    for (std::size_t m : {n / 2, n - 1, n + 1, n * 3, n * 40}) {
      char* q = static_cast<char*>(lca_realloc(p, m));
      check_exact(f, "lca_realloc", q, m);
      if (q != nullptr && q != p && cur < 1 * MiB) check_freed(f, "lca_realloc (moved away)", p, 1);
      if (q != nullptr) {
        p = q;
        cur = m;
      }
    }
    lca_free(p);
  }
  ASSERT_NO_FAILURE(f);
}
END_TEST

// Memory.UseAfterFree: reading an lca_malloc block after lca_free is an ASan report
// -- for a small (span), a medium (arena) block and one of an independent heap.
START_TEST(test_use_after_free_reported) {
  SKIP_UNLESS_ASAN();
  expect_asan_report([] { g_sink = read_after_free(32, 3); }, 3, "3 bytes inside a block of size 32 free'd",
                     "read_after_free", "READ of size 1");
  expect_asan_report([] { g_sink = read_after_free(5000, 4999); }, 4999,
                     "4999 bytes inside a block of size 5000 free'd", "read_after_free", "READ of size 1");
  expect_asan_report(
      [] {
        MemoryAllocator heap;
        g_sink = read_after_free_in_heap(heap);
      },
      100, "100 bytes inside a block of size 200 free'd", "read_after_free_in_heap", "READ of size 1");
  expect_asan_report([] { g_sink = read_after_realloc_moved(); }, 10, "10 bytes inside a block of size 100 free'd",
                     "read_after_realloc_moved", "READ of size 1");
}
END_TEST

// A freed large block (a mapping of its own, kept in libcalloc's mapping cache) is
// poisoned too.  libcalloc does not describe large blocks.
START_TEST(test_use_after_free_large_reported) {
  SKIP_UNLESS_ASAN();
  expect_asan_report([] { g_sink = read_after_free(2 * MiB, 12345); }, 12345, nullptr, "read_after_free",
                     "READ of size 1");
}
END_TEST

// The quarantine: a block freed before thousands of other frees is still poisoned
// (its memory was not handed out again).
START_TEST(test_quarantine_delays_reuse) {
  SKIP_UNLESS_ASAN();
  Failure f;
  char* victim = static_cast<char*>(lca_malloc(48));
  lca_free(victim);
  for (int i = 0; i < 10000; i++) {
    void* p = lca_malloc(48);
    if (p == victim) f.note("lca_malloc(48) returned the freed block again after %d allocations", i);
    lca_free(p);
  }
  if (!poisoned(victim))
    f.note("the freed block %p is addressable after 10000 other frees", static_cast<void*>(victim));
  ASSERT_NO_FAILURE(f);
}
END_TEST

// Memory.Overflow: writing one byte past the requested size is an ASan report, also
// where the block's slot has slack (64 bytes, 13 bytes: inside the 8-byte granule)
// -- small, medium and large blocks.
START_TEST(test_overflow_reported) {
  SKIP_UNLESS_ASAN();
  expect_asan_report([] { write_past_end(64); }, 64, "0 bytes after a block of size 64 alloc'd", "write_past_end",
                     "WRITE of size 1");
  expect_asan_report([] { write_past_end(13); }, 13, "0 bytes after a block of size 13 alloc'd", "write_past_end",
                     "WRITE of size 1");
  expect_asan_report([] { write_past_end(3000); }, 3000, "0 bytes after a block of size 3000 alloc'd",
                     "write_past_end", "WRITE of size 1");
  expect_asan_report([] { write_past_end(2 * MiB + 3); }, 2 * MiB + 3, nullptr, "write_past_end", "WRITE of size 1");
}
END_TEST

// libcalloc's own checks still come first where they apply: a double free and an
// invalid free (also of a pointer into a block's poisoned redzone) abort with
// libcalloc's message in ASan mode too.
START_TEST(test_double_free_still_caught) {
  SKIP_UNLESS_ASAN();
  test_util::DeathResult r = test_util::expect_death(
      [] {
        void* p = launder(lca_malloc(24));
        lca_free(p);
        lca_free(launder(p));
      },
      "libcalloc: Double free of");
  ck_assert_msg(r.ok(), "%s", r.description.c_str());
  r = test_util::expect_death(
      [] {
        char* p = launder(static_cast<char*>(lca_malloc(80)));
        lca_free(launder(p + 16));
      },
      "libcalloc: Invalid free of");
  ck_assert_msg(r.ok(), "%s", r.description.c_str());
  // A pointer into an arena block's redzone: libcalloc's check reads around it
  // (a tag, a mark) without tripping over the poison.
  for (std::size_t off : {20000ul, 20016ul}) {
    r = test_util::expect_death(
        [off] {
          char* p = launder(static_cast<char*>(lca_malloc(20000)));
          lca_free(launder(p + off));
        },
        "libcalloc: Invalid free of");
    ck_assert_msg(r.ok() && !r.output_contains("AddressSanitizer"), "free(p + %zu): %s", off, r.description.c_str());
  }
}
END_TEST

// A freed large block stays poisoned in libcalloc's mapping cache; a larger
// request grows the cached mapping with mremap, which may move it.  The range it
// moved from must lose its poison before mremap unmaps it, not after: in between,
// another thread's new mapping there (a 2 MiB huge-page block in
// tests/stress/full_system) was reported as "use-after-poison" on its first write.
// A realloc that grows a large block by moving it, and one that shrinks it in
// place, leave clean ranges too.
START_TEST(test_remap_leaves_no_poison) {
  SKIP_UNLESS_ASAN();
#if defined(ASAN_POISON_MEMORY_REGION)
  unsigned moves0 = g_remap_moves.load();
  for (int round = 0; round < 8; ++round) {
    // Keeps the cache's mapping from growing in place (top-down placement puts
    // the next mapping below the older ones).
    void* below = lca_malloc(64 * KiB);
    void* p = lca_malloc(1 * MiB + round * 4096);
    void* guard = lca_malloc(3 * MiB);
    lca_free(launder(p));
    void* q = lca_malloc(2 * MiB + round * 4096);  // grows the cached 1 MiB mapping
    if (q) memset(q, 2, 2 * MiB + round * 4096);
    char* r = static_cast<char*>(lca_realloc(q, 8 * MiB));  // grows by moving
    if (r) memset(r, 1, 8 * MiB);
    r = static_cast<char*>(lca_realloc(r, 3 * MiB));  // shrinks in place
    lca_free(r);
    lca_free(guard);
    lca_free(below);
  }
  ck_assert_msg(g_remap_moves.load() > moves0, "no mremap moved a mapping: the test checks nothing");
  ck_assert_msg(g_remap_left_poisoned.load() == 0,
                "%u mremap calls left ASan poison on a range the mapping left (another thread's next mapping "
                "there would start poisoned)",
                g_remap_left_poisoned.load());
#endif
}
END_TEST

int main() {
  TCase* tc;
  Suite* s = test_util::make_suite("asan", &tc);
  tcase_add_test(tc, test_poisoning_is_exact);
  tcase_add_test(tc, test_use_after_free_reported);
  tcase_add_test(tc, test_use_after_free_large_reported);
  tcase_add_test(tc, test_quarantine_delays_reuse);
  tcase_add_test(tc, test_overflow_reported);
  tcase_add_test(tc, test_double_free_still_caught);
  tcase_add_test(tc, test_remap_leaves_no_poison);
  return test_util::run_suite(s);
}
