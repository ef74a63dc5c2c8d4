// tests/unit/huge.c++ -- the "huge" suite: HugePageAllocator (src/huge.c++).
//
// Every backing is exercised on any machine: the tests narrow the backings an
// allocator may try (lca::huge_set_backings) to force the transparent and normal
// fallbacks, and force hugetlb exhaustion by asking for more pages than the pool has
// free.  Blocks must be aligned to their page size, rounded up to it, usable and
// intact over their whole length, counted per backing, and unmapped again by
// deallocate_huge (the process's mapped bytes come back to the baseline).  A bad
// deallocate_huge dies with "Invalid free" and the address.  hugetlbfs tests reserve
// pages themselves when run as root (the pool's nr_hugepages, restored afterwards)
// and skip with a message otherwise; 1 GiB tests skip where the kernel cannot
// provide such pages.  Whether THP really backs a transparent block depends on the
// kernel's memory at that moment: it is printed, never asserted.  What is asserted
// is what the kernel guarantees: a normal block (MADV_NOHUGEPAGE) has no huge page.
// LIBCALLOC_OPTIONS=huge_heap: parsing, the advice a fresh chunk gets (VmFlags hg or
// nh in /proc/self/smaps), and heap_huge_backed_bytes().  The hugetlb tests change a
// system-wide setting for a moment: two runs of this suite at once on one machine
// (as root) can disturb each other's pool counts.
#include <custom_alloc/huge_page_allocator.h++>

#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "chunk.h++"
#include "config.h"
#include "huge.h++"
#include "options.h++"
#include "os.h++"

#include "../test-util.h++"

using custom_alloc::HugePageAllocator;
using Backing = HugePageAllocator::Backing;
using PageSize = HugePageAllocator::HugePageSize;
using test_util::check_pattern;
using test_util::expect_death;
using test_util::fill_pattern;
using test_util::running_on_valgrind;
using test_util::scaled;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;
constexpr std::size_t GiB = 1024 * MiB;

#ifdef CALLOC_HUGE
constexpr bool kBuiltHuge = true;
#else
constexpr bool kBuiltHuge = false;
#endif

const char* backing_name(Backing b) {
  switch (b) {
    case Backing::none: return "none";
    case Backing::hugetlb: return "hugetlb";
    case Backing::transparent: return "transparent";
    case Backing::normal: return "normal";
  }
  return "?";
}

// --- the system, read independently of the library ------------------------------

bool read_file(const std::string& path, std::string* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

long read_long(const std::string& path) {
  std::string s;
  if (!read_file(path, &s) || s.empty()) return -1;
  return std::strtol(s.c_str(), nullptr, 10);
}

std::string pool_dir(std::size_t page_size) {
  return "/sys/kernel/mm/hugepages/hugepages-" + std::to_string(page_size / KiB) + "kB/";
}

// free_hugepages - resv_hugepages: pages a new mapping can still reserve; -1 when
// the kernel has no pool of that size.
long pool_available(std::size_t page_size) {
  long free_pages = read_long(pool_dir(page_size) + "free_hugepages");
  long resv = read_long(pool_dir(page_size) + "resv_hugepages");
  if (free_pages < 0) return -1;
  return free_pages - (resv > 0 ? resv : 0);
}

// The bracketed word of the THP mode file ("" when absent).
std::string thp_mode_word() {
  std::string s;
  if (!read_file("/sys/kernel/mm/transparent_hugepage/enabled", &s)) return "";
  auto open = s.find('['), close = s.find(']');
  if (open == std::string::npos || close == std::string::npos || close < open) return "";
  return s.substr(open + 1, close - open - 1);
}

// THP can back MADV_HUGEPAGE ranges of this process (whatever the build).
bool thp_usable_on_system() {
  std::string mode = thp_mode_word();
  return (mode == "always" || mode == "madvise") && prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 0;
}

// ... and allocate_huge uses it.
bool thp_usable_here() { return kBuiltHuge && thp_usable_on_system(); }

// The backing a block gets when hugetlb is not tried.
Backing expected_fallback() { return thp_usable_here() ? Backing::transparent : Backing::normal; }

bool aligned_to(const void* p, std::size_t a) { return (reinterpret_cast<std::uintptr_t>(p) & (a - 1)) == 0; }

// Makes at least `pages` pages of page_size available in the hugetlb pool by raising
// its nr_hugepages (root only); the destructor puts the old value back.  ok() tells
// whether the pages are there; why() says why not.
class PoolReservation {
 public:
  PoolReservation(std::size_t page_size, long pages) : path_(pool_dir(page_size) + "nr_hugepages") {
    original_ = read_long(path_);
    if (original_ < 0) {
      why_ = "the kernel has no hugetlb pool of " + std::to_string(page_size / KiB) + " KiB pages";
      return;
    }
    if (pool_available(page_size) >= pages) {
      ok_ = true;
      return;
    }
    if (geteuid() != 0) {
      why_ = "not root: cannot reserve hugetlb pages (" + path_ + "), and the pool has fewer than " +
             std::to_string(pages) + " free";
      return;
    }
    if (!write(original_ + pages)) {
      why_ = "writing " + path_ + " failed: " + std::strerror(errno);
      return;
    }
    changed_ = true;
    if (pool_available(page_size) >= pages) {
      ok_ = true;
    } else {
      why_ = "the kernel could not find " + std::to_string(pages) + " free " + std::to_string(page_size / KiB) +
             " KiB pages (memory too fragmented)";
      restore();
    }
  }
  ~PoolReservation() { restore(); }
  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }
  void restore() {
    if (changed_) write(original_);
    changed_ = false;
  }

 private:
  bool write(long value) {
    std::ofstream out(path_);
    out << value << "\n";
    out.flush();
    return static_cast<bool>(out);
  }
  std::string path_;
  long original_ = -1;
  bool changed_ = false;
  bool ok_ = false;
  std::string why_;
};

// Writes and checks the pattern over the whole block (a stride of pages under
// Valgrind for blocks above 8 MiB, where writing every byte would take minutes).
long pattern_round_trip(void* p, std::size_t n, std::uint64_t seed) {
  if (!running_on_valgrind() || n <= 8 * MiB) {
    fill_pattern(p, n, seed);
    return check_pattern(p, n, seed);
  }
  test_util::touch_range(p, n, static_cast<unsigned char>(seed));
  return test_util::touched_range_ok(p, n, static_cast<unsigned char>(seed)) ? -1 : 0;
}

// A block of one forced backing: aligned, rounded, usable over its whole length,
// counted, released.
void check_forced_path(unsigned try_mask, Backing expected, const char* what) {
  HugePageAllocator alloc;
  lca::huge_set_backings(alloc.huge_state(), try_mask);
  const std::size_t request = 5 * MiB + 123;
  void* p = alloc.allocate_huge(request);
  ck_assert_msg(p != nullptr, "%s: allocate_huge(%zu) failed: %s", what, request, std::strerror(errno));
  ck_assert_msg(aligned_to(p, 2 * MiB), "%s: %p is not 2 MiB-aligned", what, p);
  Backing got = alloc.backing_of(p);
  ck_assert_msg(got == expected, "%s: backing %s, expected %s", what, backing_name(got), backing_name(expected));
  ck_assert_uint_eq(alloc.huge_allocation_size(p), 6 * MiB);
  long bad = pattern_round_trip(p, 6 * MiB, 0x5eed);
  ck_assert_msg(bad < 0, "%s: byte %ld of the block does not hold what was written", what, bad);

  HugePageAllocator::HugeStats st = alloc.huge_stats();
  int idx = HugePageAllocator::backing_index(expected);
  ck_assert_uint_eq(st.live_blocks[idx], 1);
  ck_assert_uint_eq(st.live_bytes[idx], 6 * MiB);
  ck_assert_uint_eq(st.allocations, 1);
  ck_assert_uint_eq(st.hugetlb_fallbacks, 0);  // hugetlb was not tried
  std::size_t huge_bytes = alloc.huge_backed_bytes();
  std::size_t smaps = lca::huge_smaps_anon_huge_bytes(p, 6 * MiB);
  std::printf("# %s: block %p, %zu KiB of it backed by transparent huge pages (AnonHugePages)\n", what, p,
              smaps / KiB);
  ck_assert_msg(huge_bytes <= 6 * MiB, "%s: huge_backed_bytes %zu exceeds the block", what, huge_bytes);
  ck_assert_uint_eq(huge_bytes, smaps);
  if (expected == Backing::normal)
    ck_assert_msg(smaps == 0, "%s: a normal block (MADV_NOHUGEPAGE) has %zu bytes of huge pages", what, smaps);

  alloc.deallocate_huge(p);
  ck_assert(alloc.backing_of(p) == Backing::none);
  st = alloc.huge_stats();
  ck_assert_uint_eq(st.live_blocks[idx], 0);
  ck_assert_uint_eq(st.live_bytes[idx], 0);
  ck_assert_uint_eq(st.deallocations, 1);
}

}  // namespace

// --- what the system offers ---------------------------------------------------------

START_TEST(test_huge_pages_available_matches_sys) {
  std::string mode = thp_mode_word();
  HugePageAllocator::ThpMode expected_mode = mode == "always"    ? HugePageAllocator::ThpMode::always
                                             : mode == "madvise" ? HugePageAllocator::ThpMode::madvise
                                             : mode == "never"   ? HugePageAllocator::ThpMode::never
                                                                 : HugePageAllocator::ThpMode::unsupported;
  for (PageSize ps : {PageSize::Size_2MB, PageSize::Size_1GB}) {
    auto bytes = static_cast<std::size_t>(ps);
    long total = read_long(pool_dir(bytes) + "nr_hugepages");
    long avail = pool_available(bytes);
    HugePageAllocator::HugePageInfo info = HugePageAllocator::huge_page_info(ps);
    ck_assert_int_eq(info.hugetlb_supported, total >= 0);
    ck_assert_uint_eq(info.hugetlb_total, total >= 0 ? static_cast<std::size_t>(total) : 0);
    ck_assert_uint_eq(info.hugetlb_free, avail > 0 ? static_cast<std::size_t>(avail) : 0);
    ck_assert_int_eq(static_cast<int>(info.thp_mode), static_cast<int>(expected_mode));
    bool thp = bytes == 2 * MiB && thp_usable_on_system();
    ck_assert_int_eq(info.thp_usable, thp);
    ck_assert_int_eq(info.built_with_huge_pages, kBuiltHuge);
    bool expected = kBuiltHuge && (avail > 0 || thp);
    ck_assert_int_eq(HugePageAllocator::huge_pages_available(ps), expected);
    std::printf("# %zu KiB pages: pool %s (total %ld, available %ld), THP mode [%s], available: %s\n",
                bytes / KiB, total >= 0 ? "present" : "absent", total, avail, mode.c_str(),
                expected ? "yes" : "no");
  }
  ck_assert_int_eq(HugePageAllocator::huge_pages_available(),
                   HugePageAllocator::huge_pages_available(PageSize::Size_2MB));
  ck_assert(!HugePageAllocator::huge_pages_available(static_cast<PageSize>(4096)));
}
END_TEST

// --- each backing, forced ---------------------------------------------------------------

START_TEST(test_transparent_fallback) {
  check_forced_path(lca::kHugeTryTransparent, expected_fallback(), "hugetlb skipped");
}
END_TEST

START_TEST(test_normal_fallback) { check_forced_path(0, Backing::normal, "hugetlb and THP skipped"); }
END_TEST

START_TEST(test_thp_disabled_for_process_gives_normal) {
  if (!kBuiltHuge) TEST_SKIP("built with --disable-huge: THP is never asked for");
  if (!thp_usable_here()) TEST_SKIP("THP is not usable here (mode [%s]): nothing to switch off", thp_mode_word().c_str());
  ck_assert_int_eq(prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0), 0);
  check_forced_path(lca::kHugeTryTransparent, Backing::normal, "THP disabled by prctl");
  HugePageAllocator::enable_transparent_huge_pages();
  ck_assert_int_eq(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0), 0);
  ck_assert(HugePageAllocator::transparent_huge_page_status() == HugePageAllocator::ThpStatus::enabled);
  check_forced_path(lca::kHugeTryTransparent, Backing::transparent, "THP enabled again");
}
END_TEST

START_TEST(test_enable_transparent_huge_pages_status) {
  // Each test runs in a child of its own: nothing has asked yet.
  ck_assert(HugePageAllocator::transparent_huge_page_status() == HugePageAllocator::ThpStatus::not_requested);
  HugePageAllocator::enable_transparent_huge_pages();
  std::string mode = thp_mode_word();
  HugePageAllocator::ThpStatus expected =
      !kBuiltHuge                                   ? HugePageAllocator::ThpStatus::not_built
      : mode != "always" && mode != "madvise"       ? HugePageAllocator::ThpStatus::prevented_by_system
      : prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 0 ? HugePageAllocator::ThpStatus::prevented_by_process
                                                    : HugePageAllocator::ThpStatus::enabled;
  ck_assert_int_eq(static_cast<int>(HugePageAllocator::transparent_huge_page_status()), static_cast<int>(expected));
  std::printf("# THP mode [%s]: status %d\n", mode.c_str(), static_cast<int>(expected));
}
END_TEST

START_TEST(test_hugetlb_exhaustion_falls_back) {
  if (!kBuiltHuge) TEST_SKIP("built with --disable-huge: hugetlb is never tried");
  long avail = pool_available(2 * MiB);
  long overcommit = read_long("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_overcommit_hugepages");
  if (avail < 0) TEST_SKIP("the kernel has no 2 MiB hugetlb pool");
  if (overcommit > 0) TEST_SKIP("nr_overcommit_hugepages is %ld: the pool can grow, exhaustion cannot be forced", overcommit);
  // One page more than the pool has: the kernel refuses the whole mapping at mmap
  // time (nothing is touched), and the block falls back to the next backing.
  HugePageAllocator alloc;
  std::size_t size = static_cast<std::size_t>(avail + 1) * 2 * MiB;
  void* p = alloc.allocate_huge(size);
  ck_assert_msg(p != nullptr, "allocate_huge(%zu) failed instead of falling back", size);
  ck_assert(alloc.backing_of(p) == expected_fallback());
  ck_assert(aligned_to(p, 2 * MiB));
  HugePageAllocator::HugeStats st = alloc.huge_stats();
  ck_assert_uint_eq(st.hugetlb_fallbacks, 1);
  test_util::touch_range(p, size, 0x3c, 64);
  ck_assert(test_util::touched_range_ok(p, size, 0x3c, 64));
  alloc.deallocate_huge(p);
}
END_TEST

START_TEST(test_hugetlb_2mb) {
  if (!kBuiltHuge) TEST_SKIP("built with --disable-huge: hugetlb is never tried");
  // Three pages: a block of two (3 MiB + 1 rounds up to 4 MiB) and one left over,
  // so a second block of two exhausts the pool and falls back.
  PoolReservation pool(2 * MiB, 3);
  if (!pool.ok()) TEST_SKIP("%s", pool.why().c_str());
  test_util::Failure f;
  {
    HugePageAllocator alloc;
    long before = pool_available(2 * MiB);
    void* p = alloc.allocate_huge(3 * MiB + 1);
    long during = pool_available(2 * MiB);
    void* q = nullptr;
    if (!p) {
      f.note("allocate_huge failed: %s", std::strerror(errno));
    } else if (alloc.backing_of(p) != Backing::hugetlb) {
      f.note("backing %s with %ld free hugetlb pages%s", backing_name(alloc.backing_of(p)), before,
             running_on_valgrind() ? " (under Valgrind)" : "");
    } else {
      if (!aligned_to(p, 2 * MiB)) f.note("%p is not 2 MiB-aligned", p);
      if (alloc.huge_allocation_size(p) != 4 * MiB) f.note("size %zu, not 4 MiB", alloc.huge_allocation_size(p));
      if (during != before - 2) f.note("the pool went from %ld to %ld available pages, not down by 2", before, during);
      long bad = pattern_round_trip(p, 4 * MiB, 0x7e57);
      if (bad >= 0) f.note("byte %ld of the hugetlb block does not hold what was written", bad);
      if (alloc.huge_backed_bytes() != 4 * MiB) f.note("huge_backed_bytes %zu, not 4 MiB", alloc.huge_backed_bytes());
      q = alloc.allocate_huge(4 * MiB);  // 2 pages, 1 left: falls back
      if (!q) f.note("the second allocate_huge failed instead of falling back");
      else if (alloc.backing_of(q) != expected_fallback()) f.note("second block: backing %s", backing_name(alloc.backing_of(q)));
      HugePageAllocator::HugeStats st = alloc.huge_stats();
      if (st.hugetlb_fallbacks != 1) f.note("hugetlb_fallbacks %zu, not 1", st.hugetlb_fallbacks);
      if (st.live_blocks[HugePageAllocator::backing_index(Backing::hugetlb)] != 1) f.note("live hugetlb blocks != 1");
    }
    alloc.deallocate_huge(q);
    alloc.deallocate_huge(p);
    if (pool_available(2 * MiB) != before) f.note("the pool did not get its pages back (%ld, was %ld)", pool_available(2 * MiB), before);
  }
  pool.restore();  // before any assertion: a failed one ends this process
  ASSERT_NO_FAILURE(f);
}
END_TEST

START_TEST(test_hugetlb_1gb) {
  if (!kBuiltHuge) TEST_SKIP("built with --disable-huge: hugetlb is never tried");
  if (running_on_valgrind()) TEST_SKIP("a 1 GiB page under Valgrind: skipped for memory and time");
  PoolReservation pool(GiB, 1);
  if (!pool.ok()) TEST_SKIP("no 1 GiB pages: %s", pool.why().c_str());
  test_util::Failure f;
  {
    HugePageAllocator alloc;
    void* p = alloc.allocate_huge(100 * MiB, PageSize::Size_1GB);
    if (!p) {
      f.note("allocate_huge failed: %s", std::strerror(errno));
    } else {
      if (alloc.backing_of(p) != Backing::hugetlb) f.note("backing %s", backing_name(alloc.backing_of(p)));
      if (!aligned_to(p, GiB)) f.note("%p is not 1 GiB-aligned", p);
      if (alloc.huge_allocation_size(p) != GiB) f.note("size %zu, not 1 GiB", alloc.huge_allocation_size(p));
      test_util::touch_range(p, GiB, 0x11);
      if (!test_util::touched_range_ok(p, GiB, 0x11)) f.note("the block does not hold what was written");
    }
    alloc.deallocate_huge(p);
  }
  pool.restore();
  ASSERT_NO_FAILURE(f);
}
END_TEST

START_TEST(test_1gb_request_without_hugetlb) {
  // No 1 GiB pool needed: the block falls back but keeps the 1 GiB alignment and
  // rounding (address space only; a few pages are touched).
  HugePageAllocator alloc;
  lca::huge_set_backings(alloc.huge_state(), lca::kHugeTryTransparent);
  void* p = alloc.allocate_huge(3 * MiB, PageSize::Size_1GB);
  ck_assert_msg(p != nullptr, "allocate_huge(3 MiB, 1 GiB pages) failed: %s", std::strerror(errno));
  ck_assert_msg(aligned_to(p, GiB), "%p is not 1 GiB-aligned", p);
  ck_assert_uint_eq(alloc.huge_allocation_size(p), GiB);
  ck_assert(alloc.backing_of(p) == expected_fallback());
  test_util::touch_range(p, GiB, 0x42, 256);
  ck_assert(test_util::touched_range_ok(p, GiB, 0x42, 256));
  alloc.deallocate_huge(p);
}
END_TEST

// --- sizes, errors, accounting ------------------------------------------------------

START_TEST(test_odd_sizes_round_up) {
  HugePageAllocator alloc;
  const struct {
    std::size_t request, expected;
  } cases[] = {{0, 2 * MiB},           {1, 2 * MiB},           {2 * MiB - 1, 2 * MiB}, {2 * MiB, 2 * MiB},
               {2 * MiB + 1, 4 * MiB}, {7 * MiB + 4095, 8 * MiB}, {4097, 2 * MiB}};
  for (const auto& c : cases) {
    void* p = alloc.allocate_huge(c.request);
    ck_assert_msg(p != nullptr, "allocate_huge(%zu) failed", c.request);
    ck_assert_msg(aligned_to(p, 2 * MiB), "allocate_huge(%zu): %p not 2 MiB-aligned", c.request, p);
    ck_assert_msg(alloc.huge_allocation_size(p) == c.expected, "allocate_huge(%zu): size %zu, expected %zu",
                  c.request, alloc.huge_allocation_size(p), c.expected);
    // The last byte of the rounded block is usable and zero.
    auto* last = static_cast<volatile unsigned char*>(p) + c.expected - 1;
    ck_assert_uint_eq(*last, 0);
    *last = 0xa5;
    ck_assert_uint_eq(*last, 0xa5);
    alloc.deallocate_huge(p);
  }
}
END_TEST

START_TEST(test_bad_arguments) {
  HugePageAllocator alloc;
  errno = 0;
  ck_assert_ptr_null(alloc.allocate_huge(4 * MiB, static_cast<PageSize>(4096)));
  ck_assert_int_eq(errno, EINVAL);
  errno = 0;
  ck_assert_ptr_null(alloc.allocate_huge(SIZE_MAX));
  ck_assert_int_eq(errno, ENOMEM);
  errno = 0;
  ck_assert_ptr_null(alloc.allocate_huge(SIZE_MAX - 2 * MiB + 2));
  ck_assert_int_eq(errno, ENOMEM);
  alloc.deallocate_huge(nullptr);  // ignored
  int local = 0;
  ck_assert(alloc.backing_of(&local) == Backing::none);
  ck_assert(alloc.backing_of(nullptr) == Backing::none);
  ck_assert_uint_eq(alloc.huge_allocation_size(&local), 0);
  HugePageAllocator::HugeStats st = alloc.huge_stats();
  ck_assert_uint_eq(st.allocations, 0);
}
END_TEST

START_TEST(test_deallocate_huge_returns_memory) {
  HugePageAllocator alloc;
  const bool vm = test_util::vm_size_meaningful();
  std::size_t os_before = lca::os_mapped_bytes();
  std::size_t vm_before = test_util::mapped_bytes();
  void* blocks[6];
  std::size_t total = 0;
  // Two blocks per backing (hugetlb is tried by the last two; it may fall back).
  const unsigned masks[6] = {0, 0, lca::kHugeTryTransparent, lca::kHugeTryTransparent, lca::kHugeTryAll,
                             lca::kHugeTryAll};
  for (int i = 0; i < 6; ++i) {
    lca::huge_set_backings(alloc.huge_state(), masks[i]);
    blocks[i] = alloc.allocate_huge((i + 1) * MiB + 17);
    if (blocks[i]) {
      total += alloc.huge_allocation_size(blocks[i]);
      test_util::touch_range(blocks[i], alloc.huge_allocation_size(blocks[i]), 1);
    }
  }
  std::size_t os_during = lca::os_mapped_bytes();
  for (void* p : blocks) alloc.deallocate_huge(p);
  std::size_t os_after = lca::os_mapped_bytes();
  std::size_t vm_after = test_util::mapped_bytes();
  for (void* p : blocks) ck_assert_ptr_nonnull(p);
  ck_assert_uint_eq(total, 2 * MiB + 4 * MiB + 4 * MiB + 6 * MiB + 6 * MiB + 8 * MiB);
  ck_assert_uint_eq(os_during - os_before, total);
  ck_assert_uint_eq(os_after, os_before);
  if (vm) ck_assert_msg(vm_after <= vm_before, "VmSize %zu after, %zu before", vm_after, vm_before);
  HugePageAllocator::HugeStats st = alloc.huge_stats();
  for (int i = 0; i < 3; ++i) {
    ck_assert_uint_eq(st.live_blocks[i], 0);
    ck_assert_uint_eq(st.live_bytes[i], 0);
  }
  ck_assert_uint_eq(st.allocations, 6);
  ck_assert_uint_eq(st.deallocations, 6);
}
END_TEST

START_TEST(test_destructor_unmaps_live_blocks) {
  // No ck_assert between the measurements: Check's own mallocs could map memory.
  std::size_t before = lca::os_mapped_bytes();
  std::size_t during;
  bool all = true;
  {
    HugePageAllocator alloc;
    std::size_t with_heap = lca::os_mapped_bytes();
    for (int i = 0; i < 4; ++i) all = alloc.allocate_huge(3 * MiB) != nullptr && all;
    during = lca::os_mapped_bytes() - with_heap;
  }
  std::size_t after = lca::os_mapped_bytes();
  ck_assert(all);
  ck_assert_uint_eq(during, 4 * 4 * MiB);
  ck_assert_uint_eq(after, before);
}
END_TEST

START_TEST(test_deallocate_routes_huge_blocks) {
  HugePageAllocator alloc;
  void* h = alloc.allocate_huge(2 * MiB);
  void* s = alloc.allocate(100);
  ck_assert_ptr_nonnull(h);
  ck_assert_ptr_nonnull(s);
  ck_assert(alloc.backing_of(s) == Backing::none);
  alloc.deallocate(h);  // a huge block through the heap's deallocate
  alloc.deallocate(s);
  ck_assert(alloc.backing_of(h) == Backing::none);
  ck_assert_uint_eq(alloc.huge_stats().deallocations, 1);
}
END_TEST

START_TEST(test_table_grows) {
  // More blocks than the first table holds (a page of entries): growth, rehash and
  // backward-shift deletion in every order.  Normal pages, nothing touched.
  HugePageAllocator alloc;
  lca::huge_set_backings(alloc.huge_state(), 0);
  const int n = running_on_valgrind() ? 300 : 600;
  std::vector<void*> blocks(n);
  for (int i = 0; i < n; ++i) blocks[i] = alloc.allocate_huge(2 * MiB);
  test_util::Failure f;
  for (int i = 0; i < n; ++i) {
    if (!blocks[i]) f.note("block %d not allocated", i);
    else if (alloc.backing_of(blocks[i]) != Backing::normal) f.note("block %d not found", i);
  }
  for (int i = 0; i < n; i += 2) alloc.deallocate_huge(blocks[i]);
  for (int i = 0; i < n; ++i) {
    Backing b = alloc.backing_of(blocks[i]);
    if ((i % 2 == 0) != (b == Backing::none)) f.note("block %d: backing %s after freeing the even ones", i, backing_name(b));
  }
  for (int i = n - 1; i > 0; i -= 2) alloc.deallocate_huge(blocks[i]);
  ASSERT_NO_FAILURE(f);
  ck_assert_uint_eq(alloc.huge_stats().live_blocks[HugePageAllocator::backing_index(Backing::normal)], 0);
}
END_TEST

START_TEST(test_threads) {
  HugePageAllocator alloc;
  const int threads = 4;
  const std::size_t rounds = scaled(40);
  std::vector<std::thread> pool;
  std::vector<std::string> errors(threads);
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (std::size_t r = 0; r < rounds; ++r) {
        std::size_t size = (1 + (r + t) % 3) * MiB;
        auto* p = static_cast<unsigned char*>(alloc.allocate_huge(size));
        if (!p) {
          errors[t] = "allocation failed";
          return;
        }
        p[0] = static_cast<unsigned char>(t);
        p[size - 1] = static_cast<unsigned char>(r);
        if (alloc.backing_of(p) == Backing::none || p[0] != t || p[size - 1] != static_cast<unsigned char>(r)) {
          errors[t] = "block lost or overwritten";
          return;
        }
        alloc.deallocate_huge(p);
      }
    });
  for (auto& th : pool) th.join();
  for (int t = 0; t < threads; ++t) ck_assert_msg(errors[t].empty(), "thread %d: %s", t, errors[t].c_str());
  HugePageAllocator::HugeStats st = alloc.huge_stats();
  ck_assert_uint_eq(st.allocations, threads * rounds);
  ck_assert_uint_eq(st.deallocations, threads * rounds);
}
END_TEST

// --- bad deallocate_huge -------------------------------------------------------------------

START_TEST(test_deallocate_huge_invalid_dies) {
  struct Case {
    const char* what;
    std::size_t offset;
  };
  const Case cases[] = {{"interior pointer", 4096}, {"one byte in", 1}, {"beyond the block", 2 * MiB}};
  for (const Case& c : cases) {
    HugePageAllocator alloc;
    char* p = static_cast<char*>(alloc.allocate_huge(2 * MiB));
    ck_assert_ptr_nonnull(p);
    void* bad = p + c.offset;
    test_util::DeathResult r = expect_death([&] { alloc.deallocate_huge(bad); }, "Invalid free of ");
    ck_assert_msg(r.ok(), "%s: %s", c.what, r.description.c_str());
    std::string expected = "Invalid free of " + test_util::address_text(bad) + ": not a block of this HugePageAllocator";
    ck_assert_msg(r.output_contains(expected), "%s: expected \"%s\", got \"%s\"", c.what, expected.c_str(),
                  r.output.c_str());
    alloc.deallocate_huge(p);
  }
}
END_TEST

START_TEST(test_deallocate_huge_foreign_and_double_dies) {
  HugePageAllocator a, b;
  void* pa = a.allocate_huge(2 * MiB);
  ck_assert_ptr_nonnull(pa);
  // A block of another HugePageAllocator.
  test_util::DeathResult r = expect_death([&] { b.deallocate_huge(pa); }, "not a block of this HugePageAllocator");
  ck_assert_msg(r.ok(), "other allocator's block: %s", r.description.c_str());
  ck_assert(r.output_contains(test_util::address_text(pa)));
  // A block of the plain heap, and a stack address.
  void* heap_block = a.allocate(64);
  r = expect_death([&] { a.deallocate_huge(heap_block); }, "not a block of this HugePageAllocator");
  ck_assert_msg(r.ok() && r.output_contains(test_util::address_text(heap_block)), "heap block: %s", r.description.c_str());
  int local = 0;
  r = expect_death([&] { a.deallocate_huge(&local); }, "not a block of this HugePageAllocator");
  ck_assert_msg(r.ok() && r.output_contains(test_util::address_text(&local)), "stack address: %s", r.description.c_str());
  // A double free: the second call finds nothing.
  r = expect_death(
      [&] {
        a.deallocate_huge(pa);
        a.deallocate_huge(pa);
      },
      "not a block of this HugePageAllocator");
  ck_assert_msg(r.ok() && r.output_contains(test_util::address_text(pa)), "double free: %s", r.description.c_str());
  a.deallocate(heap_block);
  a.deallocate_huge(pa);
}
END_TEST

// --- the heap's chunks: LIBCALLOC_OPTIONS=huge_heap ---------------------------------------

namespace {

// The VmFlags line of the mapping of /proc/self/smaps that contains p ("" if none).
std::string vm_flags_of(const void* p) {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool inside = false;
  auto a = reinterpret_cast<std::uintptr_t>(p);
  while (std::getline(in, line)) {
    unsigned long lo, hi;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find('-') < 17) {
      inside = lo <= a && a < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line + " ";
    }
  }
  return "";
}

}  // namespace

START_TEST(test_huge_heap_option_parses) {
  lca::Options o;
  ck_assert_int_eq(o.huge_heap, -1);
  ck_assert_int_eq(lca::options_parse("huge_heap=1", &o), 0);
  ck_assert_int_eq(o.huge_heap, 1);
  ck_assert_int_eq(lca::options_parse("stats=1,huge_heap=0", &o), 0);
  ck_assert_int_eq(o.huge_heap, 0);
  ck_assert_int_eq(lca::options_parse("huge_heap", &o), 0);  // a bare key means 1
  ck_assert_int_eq(o.huge_heap, 1);
  lca::Options bad;
  ck_assert_int_eq(lca::options_parse("huge_heap=maybe", &bad), 1);
  ck_assert_int_eq(bad.huge_heap, -1);
}
END_TEST

START_TEST(test_huge_heap_option_advises_chunks) {
  // Each test runs in a child of its own: changing the global options is local.
  const struct {
    signed char value;
    const char* flag;   // what VmFlags must show for the heap's chunk
    const char* other;  // ... and must not
  } cases[] = {{1, " hg", " nh"}, {0, " nh", " hg"}};
  for (const auto& c : cases) {
    if (c.value == 1 && !kBuiltHuge) continue;  // ignored in that build
    lca::g_options.huge_heap = c.value;
    std::string flags;
    {
      custom_alloc::MemoryAllocator heap;  // fresh chunks of its own
      void* p = heap.allocate(100);
      ck_assert_ptr_nonnull(p);
      flags = vm_flags_of(p);
      heap.deallocate(p);
    }
    lca::g_options.huge_heap = -1;
    ck_assert_msg(!flags.empty(), "no smaps entry for the heap's chunk");
    ck_assert_msg(flags.find(c.flag) != std::string::npos && flags.find(c.other) == std::string::npos,
                  "huge_heap=%d: chunk flags \"%s\"", c.value, flags.c_str());
  }
}
END_TEST

START_TEST(test_heap_huge_backed_bytes) {
  std::string mode = thp_mode_word();
  // Without advice, THP in mode madvise (or never) backs none of the heap.
  std::size_t unadvised = HugePageAllocator::heap_huge_backed_bytes();
  if (mode == "madvise" || mode == "never") ck_assert_uint_eq(unadvised, 0);
  if (!kBuiltHuge) TEST_SKIP("built with --disable-huge: huge_heap=1 is ignored");
  lca::g_options.huge_heap = 1;
  std::size_t covered, chunk_bytes;
  {
    custom_alloc::MemoryAllocator heap;
    std::vector<void*> blocks;
    for (int i = 0; i < 3000; ++i) {  // ~3 MiB of 1 KiB blocks, written
      void* p = heap.allocate(1024);
      if (p) std::memset(p, 1, 1024);
      blocks.push_back(p);
    }
    covered = HugePageAllocator::heap_huge_backed_bytes();
    chunk_bytes = lca::registry_chunk_count() * lca::kChunkSize;
    for (void* p : blocks) heap.deallocate(p);
  }
  lca::g_options.huge_heap = -1;
  std::printf("# heap chunks %zu MiB, %zu MiB of them backed by THP (mode [%s], huge_heap=1)\n", chunk_bytes / MiB,
              covered / MiB, mode.c_str());
  ck_assert_msg(covered <= chunk_bytes, "%zu bytes covered, more than the %zu bytes of chunks", covered, chunk_bytes);
  ck_assert_msg(covered % (2 * MiB) == 0, "%zu bytes covered: not whole 2 MiB pages", covered);
}
END_TEST

int main() {
  TCase* tc;
  Suite* s = test_util::make_suite("huge", &tc);
  tcase_add_test(tc, test_huge_pages_available_matches_sys);
  tcase_add_test(tc, test_transparent_fallback);
  tcase_add_test(tc, test_normal_fallback);
  tcase_add_test(tc, test_thp_disabled_for_process_gives_normal);
  tcase_add_test(tc, test_enable_transparent_huge_pages_status);
  tcase_add_test(tc, test_hugetlb_exhaustion_falls_back);
  tcase_add_test(tc, test_hugetlb_2mb);
  tcase_add_test(tc, test_hugetlb_1gb);
  tcase_add_test(tc, test_1gb_request_without_hugetlb);
  tcase_add_test(tc, test_odd_sizes_round_up);
  tcase_add_test(tc, test_bad_arguments);
  tcase_add_test(tc, test_deallocate_huge_returns_memory);
  tcase_add_test(tc, test_destructor_unmaps_live_blocks);
  tcase_add_test(tc, test_deallocate_routes_huge_blocks);
  tcase_add_test(tc, test_table_grows);
  tcase_add_test(tc, test_threads);
  tcase_add_test(tc, test_deallocate_huge_invalid_dies);
  tcase_add_test(tc, test_deallocate_huge_foreign_and_double_dies);
  tcase_add_test(tc, test_huge_heap_option_parses);
  tcase_add_test(tc, test_huge_heap_option_advises_chunks);
  tcase_add_test(tc, test_heap_huge_backed_bytes);
  return test_util::run_suite(s);
}
