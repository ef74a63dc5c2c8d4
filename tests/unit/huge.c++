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
// nh in /proc/self/smaps), and heap_huge_backed_bytes().  Purging: with huge pages
// possible (huge_heap=1 and THP usable) a span purge returns whole free 2 MiB ranges
// only and leaves the free slots of a partly used range resident (mincore); with
// huge_heap=0 it stays 4 KiB-granular; a large block that shrinks keeps the rest
// of its last 2 MiB range.  Coverage: MemoryAllocator::huge_page_coverage() /
// lca_get_huge_stats() see the THP of a touched huge-advised large block (skipped
// with a message where the kernel gave none) and count hugetlb blocks and
// fallbacks process-wide; lca_print_stats prints them.  The hugetlb tests change a
// system-wide setting for a moment: two runs of this suite at once on one machine
// (as root) can disturb each other's pool counts.
#include <custom_alloc/huge_page_allocator.h++>
#include <custom_alloc/memory.h++>

#include <libcalloc.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "chunk.h++"
#include "config.h"
#include "huge.h++"
#include "options.h++"
#include "os.h++"
#include "span.h++"

#include "../test-util.h++"

using custom_alloc::HugePageAllocator;
using Backing = HugePageAllocator::Backing;
using PageSize = HugePageAllocator::HugePageSize;
using test_util::check_pattern;
using test_util::expect_death;
using test_util::fill_pattern;
using test_util::resident_pages;
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

// The hugetlb pools are the machine's, not the process's: two test processes
// that size or count one at the same time (two builds checked side by side, as
// a developer or a CI job may run them) see each other's pages -- a CI run
// read "the pool did not get its pages back (2, was 3)" while another build's
// huge suite held a page.  Every test that sizes or counts a pool holds this
// lock (flock on a file in /tmp, shared by every build) while it does; it is
// released when the test's process exits.  Without the file (read-only /tmp)
// the test runs unlocked, as before.
class PoolLock {
 public:
  PoolLock() : fd_(open("/tmp/libcalloc-test-hugetlb.lock", O_RDONLY | O_CREAT | O_CLOEXEC, 0666)) {
    if (fd_ >= 0)
      while (flock(fd_, LOCK_EX) != 0 && errno == EINTR) {
      }
  }
  ~PoolLock() {
    if (fd_ >= 0) close(fd_);
  }
  PoolLock(const PoolLock&) = delete;
  PoolLock& operator=(const PoolLock&) = delete;

 private:
  int fd_;
};

// Makes at least `pages` pages of page_size available in the hugetlb pool by raising
// its nr_hugepages (root only); the destructor puts the old value back.  ok() tells
// whether the pages are there; why() says why not.
class PoolReservation {
 public:
  PoolReservation(std::size_t page_size, long pages) : path_(pool_dir(page_size) + "nr_hugepages") {
    // (lock_, the first member, is held from here to the destructor's end.)
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
  PoolLock lock_;
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
  PoolLock lock;  // the pool's counts must not move between the two readings
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
  PoolLock lock;  // avail + 1 pages must still be one more than the pool has
  long avail = pool_available(2 * MiB);
  long overcommit = read_long("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_overcommit_hugepages");
  if (avail < 0) TEST_SKIP("the kernel has no 2 MiB hugetlb pool");
  if (overcommit > 0) TEST_SKIP("nr_overcommit_hugepages is %ld: the pool can grow, exhaustion cannot be forced", overcommit);
  // One page more than the pool has: the kernel refuses the whole mapping at mmap
  // time (nothing is touched), and the block falls back to the next backing.
  HugePageAllocator alloc;
  std::size_t size = static_cast<std::size_t>(avail + 1) * 2 * MiB;
  std::size_t process_fallbacks = custom_alloc::MemoryAllocator::huge_page_coverage().hugetlb_fallbacks;
  errno = 0;
  void* p = alloc.allocate_huge(size);
  ck_assert_msg(p != nullptr, "allocate_huge(%zu) failed instead of falling back", size);
  // A success leaves errno alone (the refused hugetlb mapping's ENOMEM was left
  // in it before session 17).
  ck_assert_msg(errno == 0, "errno %d (%s) after a successful fallback", errno, std::strerror(errno));
  ck_assert(alloc.backing_of(p) == expected_fallback());
  ck_assert(aligned_to(p, 2 * MiB));
  HugePageAllocator::HugeStats st = alloc.huge_stats();
  ck_assert_uint_eq(st.hugetlb_fallbacks, 1);
  // ... and so does the process-wide count (lca_get_huge_stats).
  ck_assert_uint_eq(custom_alloc::MemoryAllocator::huge_page_coverage().hugetlb_fallbacks, process_fallbacks + 1);
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
    lca_huge_stats process_before{};
    lca_get_huge_stats(&process_before);
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
      // The process-wide view says the same (this is the only allocator).
      lca_huge_stats process{};
      lca_get_huge_stats(&process);
      if (process.hugetlb_bytes != 4 * MiB) f.note("lca_get_huge_stats: hugetlb_bytes %zu, not 4 MiB", process.hugetlb_bytes);
      if (process.hugetlb_fallbacks != process_before.hugetlb_fallbacks + 1)
        f.note("lca_get_huge_stats: hugetlb_fallbacks %zu, was %zu: not one more", process.hugetlb_fallbacks,
               process_before.hugetlb_fallbacks);
      if (process.huge_backed_bytes != process.thp_backed_bytes + process.hugetlb_bytes)
        f.note("huge_backed_bytes %zu != thp %zu + hugetlb %zu", process.huge_backed_bytes, process.thp_backed_bytes,
               process.hugetlb_bytes);
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

// A huge block given to lca_free (free with the override), to another heap's
// deallocate (the process heap's, a plain one's, another HugePageAllocator's)
// or to a smart pointer that adopted it goes to its HugePageAllocator.  They
// aborted with "Invalid free ...: not a block allocated by libcalloc", against
// MemoryAllocator::deallocate's and the smart pointers' word that a block goes
// back to the heap that owns it.
START_TEST(test_huge_blocks_routed_from_other_frees) {
  HugePageAllocator a, other;
  custom_alloc::MemoryAllocator plain;
  lca_free(a.allocate_huge(2 * MiB));
  custom_alloc::MemoryAllocator::instance().deallocate(a.allocate_huge(100));
  plain.deallocate(a.allocate_huge(3 * MiB));
  other.deallocate(a.allocate_huge(2 * MiB));
  { custom_alloc::unique_ptr<std::uint64_t> u(::new (a.allocate_huge(8)) std::uint64_t(7)); }
  HugePageAllocator::HugeStats st = a.huge_stats();
  ck_assert_uint_eq(st.deallocations, 5);
  ck_assert_uint_eq(st.live_blocks[0] + st.live_blocks[1] + st.live_blocks[2], 0);
  ck_assert_uint_eq(other.huge_stats().deallocations, 0);
  // Freed twice: nobody's block the second time.
  test_util::DeathResult r = expect_death(
      [&] {
        void* p = a.allocate_huge(2 * MiB);
        lca_free(p);
        lca_free(p);
      },
      "Invalid free of ");
  ck_assert_msg(r.ok(), "double free: %s", r.description.c_str());
}
END_TEST

// realloc, lca_usable_size (malloc_usable_size with the override) and any
// heap's reallocate, try_realloc_inplace and get_allocation_size of a huge block
// go to its HugePageAllocator, as its frees do: they aborted with "Invalid
// pointer ...".  The size is the block's mapped size (huge_allocation_size); a
// resize rounds up to the block's page size: the same size keeps the block, a
// smaller one unmaps its tail in place, a larger one moves to a new block of
// the same allocator; the bytes are kept.
START_TEST(test_huge_blocks_routed_realloc_and_size) {
  HugePageAllocator a, other;
  custom_alloc::MemoryAllocator plain;
  custom_alloc::MemoryAllocator& proc = custom_alloc::MemoryAllocator::instance();
  lca::huge_set_backings(a.huge_state(), 0);  // normal pages: any machine
  void* p = a.allocate_huge(3 * MiB);
  ck_assert_ptr_nonnull(p);
  ck_assert_uint_eq(lca_usable_size(p), 4 * MiB);
  ck_assert_uint_eq(proc.get_allocation_size(p), 4 * MiB);
  ck_assert_uint_eq(plain.get_allocation_size(p), 4 * MiB);
  ck_assert_uint_eq(other.get_allocation_size(p), 4 * MiB);
  ck_assert_uint_eq(a.get_allocation_size(p), 4 * MiB);
  // A few bytes of every page (the whole block costs too much under Valgrind).
  auto mark = [](void* b, std::size_t n, unsigned char seed) {
    for (std::size_t i = 0; i < n; i += 4096) static_cast<unsigned char*>(b)[i + (i / 4096) % 4000] = static_cast<unsigned char>(seed + i / 4096);
  };
  auto marked = [](const void* b, std::size_t n, unsigned char seed) {
    for (std::size_t i = 0; i < n; i += 4096)
      if (static_cast<const unsigned char*>(b)[i + (i / 4096) % 4000] != static_cast<unsigned char>(seed + i / 4096)) return false;
    return true;
  };
  mark(p, 4 * MiB, 1);
  // The same rounded size: the same block.
  ck_assert_ptr_eq(lca_realloc(p, 4 * MiB - 100), p);
  ck_assert_ptr_eq(plain.try_realloc_inplace(p, 4 * MiB), p);
  ck_assert_ptr_null(proc.try_realloc_inplace(p, 5 * MiB));  // would move: p as it was
  ck_assert_uint_eq(a.huge_allocation_size(p), 4 * MiB);
  // Growth: a new block of a's, the bytes copied, p freed.
  void* q = lca_realloc(p, 5 * MiB);
  ck_assert_ptr_nonnull(q);
  ck_assert(marked(q, 4 * MiB, 1));
  ck_assert_uint_eq(a.huge_allocation_size(q), 6 * MiB);
  ck_assert(a.backing_of(p) == Backing::none);
  HugePageAllocator::HugeStats st = a.huge_stats();
  ck_assert_uint_eq(st.allocations, 2);
  ck_assert_uint_eq(st.deallocations, 1);
  // Another HugePageAllocator's reallocate: still a's block.
  mark(q, 6 * MiB, 2);
  void* r = other.reallocate(q, 7 * MiB);
  ck_assert_ptr_nonnull(r);
  ck_assert(marked(r, 6 * MiB, 2));
  ck_assert_uint_eq(a.huge_allocation_size(r), 8 * MiB);
  ck_assert_uint_eq(other.huge_stats().allocations, 0);
  // Shrink: in place, the tail unmapped.
  std::size_t mapped = lca::os_mapped_bytes();
  ck_assert_ptr_eq(proc.reallocate(r, 2 * MiB + 1), r);
  std::size_t unmapped = mapped - lca::os_mapped_bytes();
  ck_assert_uint_eq(unmapped, 4 * MiB);
  ck_assert_uint_eq(a.huge_allocation_size(r), 4 * MiB);
  ck_assert(marked(r, 4 * MiB, 2));
  st = a.huge_stats();
  ck_assert_uint_eq(st.live_bytes[HugePageAllocator::backing_index(Backing::normal)], 4 * MiB);
  ck_assert_uint_eq(st.live_blocks[HugePageAllocator::backing_index(Backing::normal)], 1);
  // a's own deallocate_huge takes the result.
  a.deallocate_huge(r);
  st = a.huge_stats();
  ck_assert_uint_eq(st.live_blocks[0] + st.live_blocks[1] + st.live_blocks[2], 0);
  ck_assert_uint_eq(st.live_bytes[0] + st.live_bytes[1] + st.live_bytes[2], 0);
}
END_TEST

// The errors on those routes: a block freed already, or a destroyed allocator's,
// is nobody's ("Invalid pointer", never followed).
START_TEST(test_huge_blocks_routed_realloc_errors) {
  auto dies = [](auto fn, const char* text) {
    test_util::DeathResult r = expect_death(fn, text);
    ck_assert_msg(r.ok(), "expected \"%s\": %s", text, r.description.c_str());
  };
  dies([] {
    HugePageAllocator a;
    void* p = a.allocate_huge(2 * MiB);
    if (!lca_realloc(p, 3 * MiB)) std::_Exit(3);
    if (lca_realloc(p, 100)) std::_Exit(4);  // moved: p is gone
  }, "Invalid pointer");
  dies([] {
    HugePageAllocator a;
    void* p = a.allocate_huge(2 * MiB);
    void* q = lca_realloc(p, 3 * MiB);
    (void)q;
    lca_free(p);
  }, "Invalid free");
  dies([] {
    HugePageAllocator a;
    void* p = a.allocate_huge(2 * MiB);
    a.deallocate_huge(p);
    std::printf("%zu\n", lca_usable_size(p));
  }, "Invalid pointer");
  dies([] {
    void* p;
    {
      HugePageAllocator gone;
      p = gone.allocate_huge(2 * MiB);
    }
    if (custom_alloc::MemoryAllocator::instance().reallocate(p, 100)) std::_Exit(4);
  }, "Invalid pointer");
  dies([] {
    void* p;
    {
      HugePageAllocator gone;
      p = gone.allocate_huge(2 * MiB);
    }
    std::printf("%zu\n", custom_alloc::MemoryAllocator::instance().get_allocation_size(p));
  }, "Invalid pointer");
}
END_TEST

// Threads resize and measure huge blocks of one allocator through the C API
// while others allocate and free in it through its own calls.
START_TEST(test_huge_blocks_routed_realloc_threads) {
  HugePageAllocator a;
  lca::huge_set_backings(a.huge_state(), 0);
  const int rounds = scaled(40);
  std::atomic<int> bad{0};
  auto worker = [&](int id) {
    for (int i = 0; i < rounds; ++i) {
      void* p = a.allocate_huge(2 * MiB);
      if (!p) {
        bad.fetch_add(1);
        continue;
      }
      static_cast<unsigned char*>(p)[4096] = static_cast<unsigned char>(id + i);
      void* q = (id % 2) ? lca_realloc(p, (i % 2) ? 3 * MiB : 1) : custom_alloc::MemoryAllocator::instance().reallocate(p, 3 * MiB);
      std::size_t want = ((id % 2) && !(i % 2)) ? 2 * MiB : 4 * MiB;
      if (!q || lca_usable_size(q) != want || static_cast<unsigned char*>(q)[4096] != static_cast<unsigned char>(id + i))
        bad.fetch_add(1);
      if (i % 2)
        lca_free(q);
      else
        a.deallocate_huge(q);
    }
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) ts.emplace_back(worker, t);
  for (auto& t : ts) t.join();
  ck_assert_int_eq(bad.load(), 0);
  HugePageAllocator::HugeStats st = a.huge_stats();
  ck_assert_uint_eq(st.live_blocks[0] + st.live_blocks[1] + st.live_blocks[2], 0);
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

// --- purging where huge pages may back the memory ---------------------------------------

namespace {

std::size_t page_bytes() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }

constexpr std::size_t kSlot = 64 * KiB;  // a span slot (lca::kSpanSize)

struct Resident {
  std::size_t resident, pages;
};

Resident resident_slots(std::uintptr_t chunk, unsigned first, unsigned count) {
  const void* p = reinterpret_cast<const void*>(chunk + first * kSlot);
  return Resident{resident_pages(p, count * kSlot), count * kSlot / page_bytes()};
}

// Two chunks of an independent heap filled with 4 KiB blocks (written, so every
// page is resident), then freed but for one block: chunk A keeps one in slot 1 (its
// second 2 MiB range is then entirely free), chunk B one in slot 40 (both ranges
// partly used: the first holds the chunk header).  Then trim() purges.
struct PurgeOutcome {
  std::string problem;  // non-empty: the pattern could not be laid out
  bool may_be_huge[2];  // kChunkMayBeHuge of A and B
  Resident a_low_free;  // A, slots 2..31: free, in the range of the live slot 1
  Resident a_high;      // A, slots 32..63: the whole second range, free
  Resident b_low_free;  // B, slots 1..31: free, in the range of the header
  Resident b_high_free; // B, slots 32..63 but 40: free, in the range of the live slot 40
  lca::HugePurgeCounters before, after;
  std::size_t thp_before, thp_after;  // THP in heap chunks around the trim (printed, not asserted)
  bool live_intact;
};

PurgeOutcome run_purge_pattern(signed char huge_heap) {
  PurgeOutcome out{};
  lca::g_options.huge_heap = huge_heap;
  {
    custom_alloc::MemoryAllocator heap;
    constexpr std::size_t obj = 4096;
    const std::size_t per_chunk = (lca::kSpansPerChunk - 1) * (lca::kSpanSize / obj);
    std::vector<char*> blocks;
    for (std::size_t i = 0; i < 2 * per_chunk + 100; ++i) {
      auto* p = static_cast<char*>(heap.allocate(obj));
      if (!p) {
        out.problem = "allocation failed";
        break;
      }
      std::memset(p, 0x5a, obj);
      blocks.push_back(p);
    }
    std::map<std::uintptr_t, std::vector<char*>> by_chunk;
    for (char* p : blocks) by_chunk[reinterpret_cast<std::uintptr_t>(p) & ~(lca::kChunkSize - 1)].push_back(p);
    std::vector<std::uintptr_t> full;
    for (auto& [c, v] : by_chunk)
      if (v.size() == per_chunk) full.push_back(c);
    if (out.problem.empty() && full.size() < 2)
      out.problem = "only " + std::to_string(full.size()) + " chunk(s) filled with the test's blocks";
    std::vector<char*> rest;
    if (out.problem.empty()) {
      const std::uintptr_t a = full[0], b = full[1];
      auto slot_of = [](const char* p) { return (reinterpret_cast<std::uintptr_t>(p) >> 16) & 63; };
      char* keep_a = nullptr;
      char* keep_b = nullptr;
      out.before = lca::huge_purge_counters();
      for (char* p : by_chunk[a]) {
        if (!keep_a && slot_of(p) == 1) keep_a = p;
        else heap.deallocate(p);
      }
      for (char* p : by_chunk[b]) {
        if (!keep_b && slot_of(p) == 40) keep_b = p;
        else heap.deallocate(p);
      }
      out.thp_before = lca::huge_coverage().thp_heap;
      heap.trim();
      out.after = lca::huge_purge_counters();
      out.thp_after = lca::huge_coverage().thp_heap;
      out.may_be_huge[0] = lca::registry_lookup(keep_a)->flags & lca::kChunkMayBeHuge;
      out.may_be_huge[1] = lca::registry_lookup(keep_b)->flags & lca::kChunkMayBeHuge;
      out.a_low_free = resident_slots(a, 2, 30);
      out.a_high = resident_slots(a, 32, 32);
      out.b_low_free = resident_slots(b, 1, 31);
      Resident b1 = resident_slots(b, 32, 8), b2 = resident_slots(b, 41, 23);
      out.b_high_free = Resident{b1.resident + b2.resident, b1.pages + b2.pages};
      out.live_intact = true;
      for (char* k : {keep_a, keep_b})
        for (std::size_t i = 0; i < obj; ++i)
          if (static_cast<unsigned char>(k[i]) != 0x5a) out.live_intact = false;
      heap.deallocate(keep_a);
      heap.deallocate(keep_b);
      for (auto& [c, v] : by_chunk)
        if (c != a && c != b) rest.insert(rest.end(), v.begin(), v.end());
    } else {
      rest = blocks;
    }
    for (char* p : rest) heap.deallocate(p);
  }
  lca::g_options.huge_heap = -1;
  return out;
}

// Nothing of the free slots in partly used ranges was purged; the free range was.
void check_whole_range_purge(const PurgeOutcome& o, const char* what) {
  ck_assert_msg(o.problem.empty(), "%s: %s", what, o.problem.c_str());
  std::printf("# %s: resident pages after trim: A free range %zu/%zu, A partly used %zu/%zu, B %zu/%zu and %zu/%zu;"
              " 2 MiB ranges purged +%zu, kept +%zu (%zu KiB free); THP in heap chunks %zu -> %zu MiB\n",
              what, o.a_high.resident, o.a_high.pages, o.a_low_free.resident, o.a_low_free.pages, o.b_low_free.resident,
              o.b_low_free.pages, o.b_high_free.resident, o.b_high_free.pages,
              o.after.purged_ranges - o.before.purged_ranges, o.after.kept_ranges - o.before.kept_ranges,
              (o.after.kept_bytes - o.before.kept_bytes) / KiB, o.thp_before / MiB, o.thp_after / MiB);
  std::fflush(stdout);  // before an assertion can end the process
  ck_assert_msg(o.may_be_huge[0] && o.may_be_huge[1], "%s: the chunks are not marked kChunkMayBeHuge", what);
  ck_assert_msg(o.live_intact, "%s: a live block lost its contents", what);
  ck_assert_msg(o.a_high.resident == 0, "%s: the entirely free 2 MiB range keeps %zu pages resident", what,
                o.a_high.resident);
  ck_assert_msg(o.a_low_free.resident == o.a_low_free.pages && o.b_low_free.resident == o.b_low_free.pages &&
                    o.b_high_free.resident == o.b_high_free.pages,
                "%s: a partly used 2 MiB range was purged in part (split)", what);
  ck_assert_uint_ge(o.after.purged_ranges - o.before.purged_ranges, 1);
  ck_assert_uint_ge(o.after.kept_ranges - o.before.kept_ranges, 3);
  ck_assert_uint_ge(o.after.kept_bytes - o.before.kept_bytes,
                    (o.a_low_free.pages + o.b_low_free.pages + o.b_high_free.pages) * page_bytes());
}

// Every free slot was purged, 64 KiB at a time; no huge-range accounting.
void check_small_page_purge(const PurgeOutcome& o, const char* what) {
  ck_assert_msg(o.problem.empty(), "%s: %s", what, o.problem.c_str());
  std::printf("# %s: resident pages after trim: A %zu/%zu and %zu/%zu, B %zu/%zu and %zu/%zu\n", what,
              o.a_high.resident, o.a_high.pages, o.a_low_free.resident, o.a_low_free.pages, o.b_low_free.resident,
              o.b_low_free.pages, o.b_high_free.resident, o.b_high_free.pages);
  std::fflush(stdout);
  ck_assert_msg(!o.may_be_huge[0] && !o.may_be_huge[1], "%s: the chunks are marked kChunkMayBeHuge", what);
  ck_assert_msg(o.live_intact, "%s: a live block lost its contents", what);
  ck_assert_msg(o.a_high.resident == 0 && o.a_low_free.resident == 0 && o.b_low_free.resident == 0 &&
                    o.b_high_free.resident == 0,
                "%s: free slots still resident after the purge", what);
  ck_assert_uint_eq(o.after.purged_ranges, o.before.purged_ranges);
  ck_assert_uint_eq(o.after.kept_ranges, o.before.kept_ranges);
}

// The VMA of /proc/self/smaps that contains p: its range and AnonHugePages.
struct Vma {
  std::uintptr_t start = 0, end = 0;
  std::size_t anon_huge = 0;
  bool found = false;
};

Vma vma_of(const void* p) {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  Vma v;
  bool inside = false;
  auto a = reinterpret_cast<std::uintptr_t>(p);
  while (std::getline(in, line)) {
    unsigned long lo, hi;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find('-') < 17) {
      if (inside) break;
      inside = lo <= a && a < hi;
      if (inside) {
        v.start = lo;
        v.end = hi;
        v.found = true;
      }
    } else if (inside && line.rfind("AnonHugePages:", 0) == 0) {
      v.anon_huge = std::strtoul(line.c_str() + 14, nullptr, 10) * KiB;
    }
  }
  return v;
}

}  // namespace

START_TEST(test_huge_policy_helpers) {
  ck_assert_uint_eq(lca::huge_whole_ranges(0, 2 * MiB), 1);
  ck_assert_uint_eq(lca::huge_whole_ranges(4096, 4 * MiB), 1);
  ck_assert_uint_eq(lca::huge_whole_ranges(4096, 4 * MiB - 4096), 0);
  ck_assert_uint_eq(lca::huge_whole_ranges(2 * MiB, 9 * MiB), 3);
  ck_assert_uint_eq(lca::huge_whole_ranges(6 * MiB, 2 * MiB), 0);
  ck_assert(lca::huge_may_back({true, false}, true));
  ck_assert(!lca::huge_may_back({true, false}, false));
  ck_assert(lca::huge_may_back({true, true}, false));
  ck_assert(!lca::huge_may_back({false, true}, true));
  // The policy follows the system (read once per process).
  lca::ThpPolicy p = lca::huge_thp_policy();
  ck_assert_int_eq(p.usable, thp_usable_on_system());
  ck_assert_int_eq(p.always, thp_mode_word() == "always");
}
END_TEST

// Issue 17: under THP `always`, the process's first chunks stay on 4 KiB pages
// (a small program's heap would otherwise cost 2 MiB per touched range), unless
// huge_heap says otherwise; later chunks follow the mode.
START_TEST(test_small_heap_stays_on_small_pages) {
  const lca::ThpPolicy always{true, true}, madvise{true, false}, off{false, true};
  for (std::size_t before = 0; before < lca::kSmallHeapChunks; ++before) {
    ck_assert(lca::huge_small_heap_no_thp(always, -1, before));
    ck_assert(!lca::huge_small_heap_no_thp(always, 1, before));   // huge_heap=1 asked for THP
    ck_assert(!lca::huge_small_heap_no_thp(always, 0, before));   // huge_heap=0 advises NOHUGEPAGE anyway
    ck_assert(!lca::huge_small_heap_no_thp(madvise, -1, before));  // unadvised memory gets no THP there
    ck_assert(!lca::huge_small_heap_no_thp(off, -1, before));
  }
  ck_assert(!lca::huge_small_heap_no_thp(always, -1, lca::kSmallHeapChunks));
  ck_assert(!lca::huge_small_heap_no_thp(always, -1, lca::kSmallHeapChunks + 10));
  // The rule's effect is only visible on a system in mode always (a fresh heap's
  // chunk shows "nh" in VmFlags when it is among the process's first two).
  if (thp_mode_word() != "always") TEST_SKIP("THP mode is [%s], not [always]: no chunk is advised", thp_mode_word().c_str());
  if (!kBuiltHuge) TEST_SKIP("built with --disable-huge");
  if (lca::registry_chunk_count() >= lca::kSmallHeapChunks)
    TEST_SKIP("the test process already has %zu chunks", lca::registry_chunk_count());
  custom_alloc::MemoryAllocator heap;
  void* p = heap.allocate(100);
  ck_assert_ptr_nonnull(p);
  std::string flags = vm_flags_of(p);
  heap.deallocate(p);
  ck_assert_msg(flags.find(" nh") != std::string::npos, "first chunk under THP always: flags \"%s\"", flags.c_str());
}
END_TEST

START_TEST(test_purge_keeps_partly_used_huge_ranges) {
  if (running_on_valgrind()) TEST_SKIP("Valgrind mode: freed blocks wait in a quarantine, the spans do not empty");
  if (test_util::kAsanBuild) TEST_SKIP("ASan mode: freed blocks wait in a quarantine, the spans do not empty");
  if (!thp_usable_here())
    TEST_SKIP("THP cannot back the heap here (mode [%s]%s): purges stay 4 KiB-granular", thp_mode_word().c_str(),
              kBuiltHuge ? "" : ", built with --disable-huge");
  PurgeOutcome o = run_purge_pattern(1);
  check_whole_range_purge(o, "huge_heap=1");
}
END_TEST

START_TEST(test_purge_small_pages_without_huge_heap) {
  if (running_on_valgrind()) TEST_SKIP("Valgrind mode: freed blocks wait in a quarantine, the spans do not empty");
  if (test_util::kAsanBuild) TEST_SKIP("ASan mode: freed blocks wait in a quarantine, the spans do not empty");
  check_small_page_purge(run_purge_pattern(0), "huge_heap=0");
  // Unset, the system's mode decides: huge pages for unadvised memory only under [always].
  std::string mode = thp_mode_word();
  if (mode == "always" && thp_usable_on_system())
    check_whole_range_purge(run_purge_pattern(-1), "huge_heap unset, THP [always]");
  else
    check_small_page_purge(run_purge_pattern(-1), "huge_heap unset");
}
END_TEST

START_TEST(test_large_shrink_keeps_partly_used_huge_range) {
  if (running_on_valgrind()) TEST_SKIP("Valgrind mode: blocks carry a redzone, the mapping sizes differ");
  if (test_util::kAsanBuild) TEST_SKIP("ASan mode: blocks carry a redzone, the mapping sizes differ");
  for (int value : {1, -1, 0}) {
    const auto option = static_cast<signed char>(value);
    lca::g_options.huge_heap = option;
    bool advised = kBuiltHuge && option == 1;  // only huge_heap=1 advises large blocks
    bool huge = lca::huge_may_back(lca::huge_thp_policy(), advised);
    {
      custom_alloc::MemoryAllocator heap;
      auto* p = static_cast<char*>(heap.allocate(9 * MiB));
      ck_assert_ptr_nonnull(p);
      if (advised) ck_assert(aligned_to(p, 2 * MiB));
      std::memset(p, 0x77, 9 * MiB);
      const std::size_t have = heap.get_allocation_size(p), small = 3 * MiB + 256 * KiB;
      ck_assert_uint_eq(have, 9 * MiB);
      lca::HugePurgeCounters before = lca::huge_purge_counters();
      auto* q = static_cast<char*>(heap.reallocate(p, 3 * MiB + 100 * KiB));
      lca::HugePurgeCounters after = lca::huge_purge_counters();
      ck_assert_ptr_eq(q, p);  // a shrink stays in place
      auto base = reinterpret_cast<std::uintptr_t>(p);
      std::size_t expected = huge ? ((base + small + 2 * MiB - 1) & ~(2 * MiB - 1)) - base : small;
      if (expected > have) expected = have;
      std::printf("# huge_heap=%d: 9 MiB block shrunk to 3.1 MiB keeps a %zu KiB mapping (THP may back it: %s)\n",
                  value, heap.get_allocation_size(q) / KiB, huge ? "yes" : "no");
      ck_assert_uint_eq(heap.get_allocation_size(q), expected);
      if (huge) {
        ck_assert_uint_eq(after.kept_ranges - before.kept_ranges, expected > small ? 1 : 0);
        ck_assert_uint_eq(after.kept_bytes - before.kept_bytes, expected - small);
        ck_assert_uint_eq(after.purged_ranges - before.purged_ranges, lca::huge_whole_ranges(base + expected, base + have));
      } else {
        ck_assert_uint_eq(after.kept_ranges, before.kept_ranges);
      }
      ck_assert_msg(test_util::touched_range_ok(q, 3 * MiB + 100 * KiB, 0x77), "the block lost its contents");
      heap.deallocate(q);
    }
    lca::g_options.huge_heap = -1;
  }
}
END_TEST

// --- coverage: huge_page_coverage / lca_get_huge_stats -------------------------------------

namespace {

void check_coverage_sums(const custom_alloc::MemoryAllocator::HugePageCoverage& c) {
  ck_assert_uint_eq(c.thp_backed_bytes, c.thp_heap_bytes + c.thp_large_bytes + c.thp_huge_block_bytes);
  ck_assert_uint_eq(c.huge_backed_bytes, c.thp_backed_bytes + c.hugetlb_bytes);
  ck_assert_uint_eq(c.thp_backed_bytes % (2 * MiB), 0);
  ck_assert_uint_le(c.huge_backed_bytes, c.mapped_bytes);
  lca_huge_stats s{};
  lca_get_huge_stats(&s);
  ck_assert_int_eq(s.smaps_readable, c.smaps_readable);
}

}  // namespace

START_TEST(test_huge_coverage_sees_large_block) {
#if CALLOC_SECURE
  TEST_SKIP("built with --enable-secure: malloc's large blocks are the hardened heap's, between guard pages and not 2 MiB-aligned");
#endif
  using custom_alloc::MemoryAllocator;
  MemoryAllocator::HugePageCoverage c0 = MemoryAllocator::huge_page_coverage();
  ck_assert_msg(c0.smaps_readable, "/proc/self/smaps unreadable");
  check_coverage_sums(c0);
  if (!kBuiltHuge) TEST_SKIP("built with --disable-huge: large blocks are not advised for huge pages");
  if (!thp_usable_on_system()) TEST_SKIP("THP mode [%s]: no transparent huge pages to see", thp_mode_word().c_str());
  const std::size_t size = 8 * MiB;
  lca::g_options.huge_heap = 1;  // large blocks are advised only with huge_heap=1
  auto* p = static_cast<char*>(lca_malloc(size));
  lca::g_options.huge_heap = -1;
  ck_assert_ptr_nonnull(p);
  ck_assert(aligned_to(p, 2 * MiB));
  std::memset(p, 7, size);
  MemoryAllocator::HugePageCoverage c1 = MemoryAllocator::huge_page_coverage();
  Vma v = vma_of(p);
  std::printf("# 8 MiB block %p: its mapping %#lx-%#lx has %zu KiB AnonHugePages; coverage: large %zu KiB, heap %zu"
              " KiB, all %zu KiB of %zu KiB mapped\n",
              static_cast<void*>(p), static_cast<unsigned long>(v.start), static_cast<unsigned long>(v.end),
              v.anon_huge / KiB, c1.thp_large_bytes / KiB, c1.thp_heap_bytes / KiB, c1.huge_backed_bytes / KiB,
              c1.mapped_bytes / KiB);
  ck_assert(v.found);
  check_coverage_sums(c1);
  if (v.anon_huge == 0) {
    lca_free(p);
    TEST_SKIP("the kernel backed the touched block with no huge page (fragmented memory?): nothing to count");
  }
  ck_assert_msg(c1.thp_large_bytes > 0, "THP backs %zu bytes of the block, the coverage says 0", v.anon_huge);
  auto base = reinterpret_cast<std::uintptr_t>(p);
  if (v.start >= base && v.end <= base + size)  // a mapping of the block alone
    ck_assert_uint_ge(c1.thp_large_bytes, v.anon_huge);
  lca_free(p);  // cached: still mapped, still counted
  lca_trim();   // unmapped
  MemoryAllocator::HugePageCoverage c2 = MemoryAllocator::huge_page_coverage();
  check_coverage_sums(c2);
  ck_assert_msg(c2.thp_large_bytes < c1.thp_large_bytes, "large THP bytes %zu after the block went, %zu before",
                c2.thp_large_bytes, c1.thp_large_bytes);

  // A transparent block of a HugePageAllocator is counted apart.
  HugePageAllocator alloc;
  lca::huge_set_backings(alloc.huge_state(), lca::kHugeTryTransparent);
  void* q = alloc.allocate_huge(4 * MiB);
  ck_assert_ptr_nonnull(q);
  std::memset(q, 3, 4 * MiB);
  MemoryAllocator::HugePageCoverage c3 = MemoryAllocator::huge_page_coverage();
  check_coverage_sums(c3);
  std::size_t own = alloc.huge_backed_bytes();
  std::printf("# 4 MiB transparent block: %zu KiB huge by the allocator, coverage of huge blocks %zu KiB\n", own / KiB,
              c3.thp_huge_block_bytes / KiB);
  if (own > 0) ck_assert_uint_gt(c3.thp_huge_block_bytes, 0);
  alloc.deallocate_huge(q);
}
END_TEST

START_TEST(test_print_stats_shows_huge_pages) {
  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  lca_print_stats(fds[1]);  // about 1.5 KB: fits in the pipe
  close(fds[1]);
  std::string report;
  test_util::slurp_fd(fds[0], report);
  close(fds[0]);
  for (const char* want : {"huge pages, whole process", "huge-page backed", "THP, large blocks", "hugetlb fallbacks",
                           "2 MiB ranges purged", "partly used, kept"})
    ck_assert_msg(report.find(want) != std::string::npos, "no \"%s\" in the report:\n%s", want, report.c_str());
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
  tcase_add_test(tc, test_huge_blocks_routed_from_other_frees);
  tcase_add_test(tc, test_huge_blocks_routed_realloc_and_size);
  tcase_add_test(tc, test_huge_blocks_routed_realloc_errors);
  tcase_add_test(tc, test_huge_blocks_routed_realloc_threads);
  tcase_add_test(tc, test_table_grows);
  tcase_add_test(tc, test_threads);
  tcase_add_test(tc, test_deallocate_huge_invalid_dies);
  tcase_add_test(tc, test_deallocate_huge_foreign_and_double_dies);
  tcase_add_test(tc, test_huge_heap_option_parses);
  tcase_add_test(tc, test_huge_heap_option_advises_chunks);
  tcase_add_test(tc, test_heap_huge_backed_bytes);
  tcase_add_test(tc, test_huge_policy_helpers);
  tcase_add_test(tc, test_small_heap_stays_on_small_pages);
  tcase_add_test(tc, test_purge_keeps_partly_used_huge_ranges);
  tcase_add_test(tc, test_purge_small_pages_without_huge_heap);
  tcase_add_test(tc, test_large_shrink_keeps_partly_used_huge_range);
  tcase_add_test(tc, test_huge_coverage_sees_large_block);
  tcase_add_test(tc, test_print_stats_shows_huge_pages);
  return test_util::run_suite(s);
}
