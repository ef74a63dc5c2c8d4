// tests/test-util.h++ -- helpers shared by the Check suites in tests/unit/.
//
// Header-only; every suite includes it as "../test-util.h++".  It provides:
//  - scaled(n): heavy loop counts scaled by the CALLOC_TEST_SCALE percentage (the
//    Valgrind run uses 5); assertions never depend on the scale; tsan_scaled(n):
//    a tenth of that in a TSan build, for loops that touch many kilobytes a round;
//  - launder(p), escape(p): hide a pointer from the optimiser, so GCC cannot fold a
//    malloc/free pair away, assume two malloc results differ, or assume calloc
//    memory reads as zero -- the very properties the tests check;
//  - a Failure recorder for hot loops (a passing ck_assert costs a write to Check's
//    message file, too slow for a million iterations);
//  - pattern fill/verify for detecting corruption of live blocks;
//  - expect_death(fn, text): runs fn in a forked child with stderr captured and
//    reports whether it died of SIGABRT with `text` on stderr;
//  - mapped_bytes(), rss_bytes(), running_on_valgrind();
//  - kAsanBuild, kTsanBuild: compiled with -fsanitize=address / thread;
//    expect_report(fn, text): fn in a forked child that must die (any way) with
//    `text` on stderr -- for sanitizer reports;
//  - TEST_SKIP(...): the TAP-visible way to skip (Check has no skip), and
//    run_suite(), the common main() body (TAP on stdout, exit status).
#ifndef CALLOC_TESTS_TEST_UTIL_HXX
#define CALLOC_TESTS_TEST_UTIL_HXX

#include <check.h>

#include <cerrno>
#include <csignal>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

// Helgrind (in `make check-valgrind`) does not see std::atomic as synchronisation:
// where a test hands data from thread to thread through an atomic, it says so with
// these.  They compile to nothing without the Valgrind headers; with them they are a
// few no-op instructions outside Valgrind.
#if defined(__has_include)
#if __has_include(<valgrind/helgrind.h>)
#include <valgrind/helgrind.h>
#define TEST_HAPPENS_BEFORE(addr) ANNOTATE_HAPPENS_BEFORE(addr)
#define TEST_HAPPENS_AFTER(addr) ANNOTATE_HAPPENS_AFTER(addr)
#define TEST_BENIGN_RACE(addr, what) ANNOTATE_BENIGN_RACE_SIZED((addr), sizeof *(addr), what)
#endif
#endif
#ifndef TEST_HAPPENS_BEFORE
#define TEST_HAPPENS_BEFORE(addr) ((void)(addr))
#define TEST_HAPPENS_AFTER(addr) ((void)(addr))
#define TEST_BENIGN_RACE(addr, what) ((void)(addr))
#endif

namespace test_util {

// --- sanitizers ----------------------------------------------------------------

// Compiled with -fsanitize=address (GCC: __SANITIZE_ADDRESS__; Clang: __has_feature).
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsanBuild = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsanBuild = true;
#else
constexpr bool kAsanBuild = false;
#endif
#else
constexpr bool kAsanBuild = false;
#endif

// Compiled with -fsanitize=thread.
#if defined(__SANITIZE_THREAD__)
constexpr bool kTsanBuild = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kTsanBuild = true;
#else
constexpr bool kTsanBuild = false;
#endif
#else
constexpr bool kTsanBuild = false;
#endif

// --- scale ------------------------------------------------------------------

inline long scale_percent() {
  static const long percent = [] {
    const char* env = std::getenv("CALLOC_TEST_SCALE");
    if (env == nullptr || *env == '\0') return 100L;
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end == env || v <= 0) return 100L;
    return v;
  }();
  return percent;
}

// max(1, n * CALLOC_TEST_SCALE / 100)
inline std::size_t scaled(std::size_t n) {
  std::size_t v = static_cast<std::size_t>(
      (static_cast<unsigned long long>(n) * static_cast<unsigned long long>(scale_percent())) / 100);
  return v < 1 ? 1 : v;
}

// scaled(n) for a test whose every round reads or writes many kilobytes (each
// byte of big blocks, or the tables of a heap it makes): a tenth of it in a
// TSan build, where each of those accesses is checked against TSan's shadow
// memory (at full scale, on a loaded machine: secure's test_threads_cross_free
// 100 s of that suite's 140 s, defrag's test_thread_entries_bounded 77 s of
// 137 s).  As with scaled(), assertions never depend on it.
inline std::size_t tsan_scaled(std::size_t n) { return kTsanBuild ? scaled(n / 10) : scaled(n); }

// --- optimiser barriers -------------------------------------------------------

template <class T>
inline T* launder(T* p) {
  asm volatile("" : "+r"(p) : : "memory");
  return p;
}

inline void escape(const void* p) { asm volatile("" : : "r"(p) : "memory"); }

// --- failure recorder for hot loops ---------------------------------------------

// Remembers the first failure (and counts all) without touching Check's machinery;
// assert on it once after the loop: ck_assert_msg(!f.failed(), "%s", f.text()).
class Failure {
 public:
  __attribute__((format(printf, 2, 3))) void note(const char* fmt, ...) {
    if (count_++ == 0) {
      va_list ap;
      va_start(ap, fmt);
      std::vsnprintf(first_, sizeof first_, fmt, ap);
      va_end(ap);
    }
  }
  bool failed() const { return count_ != 0; }
  unsigned long count() const { return count_; }
  const char* text() const {
    if (count_ > 1) {
      // The first message copied, then the count: first_ as an argument of the
      // snprintf into summary_ (one object) is a -Wrestrict error of GCC 12 at
      // -O1 with -fsanitize=undefined (the sanitizer builds' flags).
      std::size_t n = std::strlen(first_);  // < sizeof first_ < sizeof summary_
      std::memcpy(summary_, first_, n);
      std::snprintf(summary_ + n, sizeof summary_ - n, " (and %lu more failures)", count_ - 1);
      return summary_;
    }
    return first_;
  }

 private:
  unsigned long count_ = 0;
  char first_[512] = "";
  mutable char summary_[600] = "";
};

// --- patterns ----------------------------------------------------------------------

inline std::uint64_t pattern_word(std::uint64_t seed, std::size_t index) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + index * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// Fills n bytes at p with a pattern derived from seed.
inline void fill_pattern(void* p, std::size_t n, std::uint64_t seed) {
  unsigned char* b = static_cast<unsigned char*>(p);
  std::size_t words = n / 8;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t w = pattern_word(seed, i);
    std::memcpy(b + i * 8, &w, 8);
  }
  std::uint64_t w = pattern_word(seed, words);
  std::memcpy(b + words * 8, &w, n - words * 8);
}

// Returns the offset of the first byte that differs from fill_pattern(p, n, seed),
// or -1 when all n bytes match.
inline long check_pattern(const void* p, std::size_t n, std::uint64_t seed) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  std::size_t words = n / 8;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t w = pattern_word(seed, i);
    if (std::memcmp(b + i * 8, &w, 8) != 0) {
      for (std::size_t k = 0; k < 8; ++k)
        if (b[i * 8 + k] != reinterpret_cast<const unsigned char*>(&w)[k]) return static_cast<long>(i * 8 + k);
    }
  }
  std::uint64_t w = pattern_word(seed, words);
  for (std::size_t k = 0; k < n - words * 8; ++k)
    if (b[words * 8 + k] != reinterpret_cast<const unsigned char*>(&w)[k]) return static_cast<long>(words * 8 + k);
  return -1;
}

// The stride between the bytes touch_range writes: a page; more with a reduced
// CALLOC_TEST_SCALE, and more when max_touches (0: no limit) caps the count.
inline std::size_t touch_stride(std::size_t n, std::size_t max_touches) {
  std::size_t stride = 4096;
  if (scale_percent() < 100) stride *= static_cast<std::size_t>(100 / scale_percent());
  if (max_touches != 0 && n / max_touches > stride) stride = (n / max_touches + 4095) & ~std::size_t{4095};
  return stride;
}

// Writes one byte in every page of [p, p+n) (or in pages spread evenly over it, see
// touch_stride) and the last byte: proves the range is mapped writable.
inline void touch_range(void* p, std::size_t n, unsigned char value, std::size_t max_touches = 0) {
  if (n == 0) return;
  volatile unsigned char* b = static_cast<volatile unsigned char*>(p);
  const std::size_t stride = touch_stride(n, max_touches);
  for (std::size_t off = 0; off < n; off += stride) b[off] = value;
  b[n - 1] = value;
}

// Reads back what touch_range wrote; true when every touched byte holds value.
inline bool touched_range_ok(const void* p, std::size_t n, unsigned char value, std::size_t max_touches = 0) {
  if (n == 0) return true;
  const volatile unsigned char* b = static_cast<const volatile unsigned char*>(p);
  const std::size_t stride = touch_stride(n, max_touches);
  for (std::size_t off = 0; off < n; off += stride)
    if (b[off] != value) return false;
  return b[n - 1] == value;
}

// --- statistics ------------------------------------------------------------------------

// Whether a later snapshot of cumulative counters (lca_stats, MemoryAllocator::Stats)
// reads lower than an earlier one: allocations, frees and their bytes only grow.
template <class Stats>
inline bool counts_went_back(const Stats& before, const Stats& after) {
  return after.allocation_count < before.allocation_count || after.free_count < before.free_count ||
         after.total_allocated < before.total_allocated || after.total_freed < before.total_freed;
}

// --- /proc ---------------------------------------------------------------------------

inline bool read_statm(unsigned long* size_pages, unsigned long* resident_pages) {
  int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[256];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  return std::sscanf(buf, "%lu %lu", size_pages, resident_pages) == 2;
}

// The process's mapped virtual memory (VmSize), in bytes; 0 if /proc is unreadable.
inline std::size_t mapped_bytes() {
  unsigned long size = 0, resident = 0;
  if (!read_statm(&size, &resident)) return 0;
  return static_cast<std::size_t>(size) * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

// The process's resident set (VmRSS), in bytes; 0 if /proc is unreadable.
inline std::size_t rss_bytes() {
  unsigned long size = 0, resident = 0;
  if (!read_statm(&size, &resident)) return 0;
  return static_cast<std::size_t>(resident) * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

// Pages of [p, p + n) resident now (mincore; p page-aligned, n a multiple of
// the page size); SIZE_MAX when mincore fails.
inline std::size_t resident_pages(const void* p, std::size_t n) {
  std::vector<unsigned char> v(n / static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)));
  if (::mincore(const_cast<void*>(p), n, v.data()) != 0) return SIZE_MAX;
  std::size_t k = 0;
  for (unsigned char c : v) k += c & 1;
  return k;
}

// Reads a whole (small) file with read(2) into s; false on error.
inline bool slurp_fd(int fd, std::string& s) {
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    s.append(buf, static_cast<std::size_t>(n));
  }
}

// Whether /proc/self/maps names an object containing `name`.
inline bool maps_mention(const char* name) {
  int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  std::string maps;
  bool ok = slurp_fd(fd, maps);
  ::close(fd);
  return ok && maps.find(name) != std::string::npos;
}

// True when the process runs under Valgrind (its preload objects are mapped).
inline bool running_on_valgrind() {
  static const bool on = maps_mention("vgpreload");
  return on;
}

// VmSize (mapped_bytes) says something about the allocator only outside Valgrind
// and the ASan and TSan builds: Valgrind's shadow memory grows and never shrinks,
// and the sanitizers reserve terabytes of shadow and map memory of their own
// (their allocator, quarantine, per-thread state) as the program runs.  Compare
// the heap's os_memory_mapped there instead.
inline bool vm_size_meaningful() { return !running_on_valgrind() && !kAsanBuild && !kTsanBuild; }

// Why vm_size_meaningful() is false, for skip messages.
inline const char* vm_size_not_meaningful_why() {
  if (running_on_valgrind()) return "under Valgrind VmSize includes Valgrind's shadow memory, which never shrinks";
  if (kAsanBuild) return "in an ASan build VmSize includes ASan's shadow memory, allocator and quarantine";
  return "in a TSan build VmSize includes TSan's shadow memory and per-thread state";
}

// --- threads ----------------------------------------------------------------------

// glibc keeps the stacks of joined threads in a cache (up to 40 MiB), each with its
// DTV, which it callocs -- with the override on, from libcalloc: a program's first
// threads leave a few blocks live in the process heap for good.  A test comparing
// active_allocations across threads calls this first: n threads alive at once fill
// the cache, after which the count of cached DTVs stays put.
inline void warm_thread_stack_cache(int n = 16) {
  pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
  int arrived = 0;
  struct Arg {
    pthread_mutex_t* m;
    pthread_cond_t* cv;
    int* arrived;
    int n;
  } arg{&m, &cv, &arrived, n};
  auto body = [](void* p) -> void* {
    Arg* a = static_cast<Arg*>(p);
    std::free(launder(std::malloc(64)));
    pthread_mutex_lock(a->m);
    if (++*a->arrived == a->n) pthread_cond_broadcast(a->cv);
    while (*a->arrived < a->n) pthread_cond_wait(a->cv, a->m);
    pthread_mutex_unlock(a->m);
    return nullptr;
  };
  pthread_t ids[64];
  if (n > 64) n = 64;
  arg.n = n;
  int made = 0;
  for (; made < n; made++)
    if (pthread_create(&ids[made], nullptr, body, &arg) != 0) break;
  if (made < n) {  // could not make them all: release the ones waiting
    pthread_mutex_lock(&m);
    arrived = n;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&m);
  }
  for (int i = 0; i < made; i++) pthread_join(ids[i], nullptr);
}

// --- death tests ---------------------------------------------------------------------

struct DeathResult {
  bool died_of_sigabrt = false;  // the child was killed by SIGABRT
  bool matched = false;          // its stderr contains the expected text
  int status = 0;                // waitpid status
  std::string output;            // everything the child wrote on stderr
  std::string description;       // what happened, for failure messages

  bool ok() const { return died_of_sigabrt && matched; }
  bool output_contains(const std::string& s) const { return output.find(s) != std::string::npos; }
};

// Forks; the child redirects stderr into a pipe and runs fn.  The result says whether
// the child died of SIGABRT (a SIGSEGV, a normal exit or a timeout is a failure) and
// whether stderr contains `expected`.
template <class Fn>
DeathResult expect_death(Fn&& fn, const char* expected) {
  DeathResult r;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    r.description = std::string("pipe2 failed: ") + std::strerror(errno);
    return r;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = ::fork();
  if (pid < 0) {
    r.description = std::string("fork failed: ") + std::strerror(errno);
    ::close(fds[0]);
    ::close(fds[1]);
    return r;
  }
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], STDERR_FILENO);
    ::close(fds[1]);
    struct rlimit no_core = {0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    // A hang is a failure too: SIGALRM is not SIGABRT.
    ::alarm(running_on_valgrind() ? 600 : 60);
    // Check's own SIGABRT handling must not interfere: default disposition.
    ::signal(SIGABRT, SIG_DFL);
    fn();
    ::_exit(0);  // fn returned: no death
  }
  ::close(fds[1]);
  slurp_fd(fds[0], r.output);
  ::close(fds[0]);
  while (::waitpid(pid, &r.status, 0) < 0 && errno == EINTR) {
  }
  r.died_of_sigabrt = WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGABRT;
  r.matched = r.output.find(expected) != std::string::npos;
  char what[160];
  if (WIFSIGNALED(r.status))
    std::snprintf(what, sizeof what, "child killed by signal %d (%s)", WTERMSIG(r.status),
                  strsignal(WTERMSIG(r.status)));
  else if (WIFEXITED(r.status))
    std::snprintf(what, sizeof what, "child exited normally with status %d (no abort)", WEXITSTATUS(r.status));
  else
    std::snprintf(what, sizeof what, "child status 0x%x", r.status);
  r.description = std::string(what) + "; expected SIGABRT and \"" + expected + "\" on stderr; stderr was: \"" +
                  r.output + "\"";
  return r;
}

// For sanitizer reports: forks, runs fn in the child (stderr captured), and says
// whether the child died -- killed by a signal or exited nonzero: ASan and UBSan
// exit with status 1 after a report unless abort_on_error=1 -- with every text of
// `expected` on stderr.  died_of_sigabrt is set for a death by any signal.
template <class Fn>
DeathResult expect_report(Fn&& fn, std::initializer_list<std::string> expected) {
  std::string first = expected.size() ? *expected.begin() : std::string();
  DeathResult r = expect_death(std::forward<Fn>(fn), first.c_str());
  const bool died = WIFSIGNALED(r.status) || (WIFEXITED(r.status) && WEXITSTATUS(r.status) != 0);
  r.died_of_sigabrt = died;
  r.matched = true;
  std::string missing;
  for (const std::string& text : expected)
    if (!r.output_contains(text)) {
      r.matched = false;
      missing += (missing.empty() ? "\"" : ", \"") + text + "\"";
    }
  char what[160];
  if (WIFSIGNALED(r.status))
    std::snprintf(what, sizeof what, "child killed by signal %d (%s)", WTERMSIG(r.status), strsignal(WTERMSIG(r.status)));
  else
    std::snprintf(what, sizeof what, "child exited with status %d%s", WEXITSTATUS(r.status),
                  died ? "" : " (no report, no death)");
  r.description = std::string(what) + (missing.empty() ? "" : "; missing on stderr: " + missing) +
                  "; stderr was: \"" + r.output + "\"";
  return r;
}

// printf("%p") of an address, the form the library's messages use.
inline std::string address_text(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

// --- suites ---------------------------------------------------------------------------

// Per-test timeout: generous natively, far more under Valgrind (~30x slower), and
// under TSan, where every load and store is checked and CI's step shares two cores
// with other builds (capi's test_calloc_zeroes took more than 120 s at full scale
// with the load average at 20).  Check multiplies it by CK_TIMEOUT_MULTIPLIER when
// that is set.
inline double test_timeout() { return running_on_valgrind() ? 3600.0 : kTsanBuild ? 600.0 : 120.0; }

// A suite with one test case of the same name and the common timeout.
inline Suite* make_suite(const char* name, TCase** tc) {
  Suite* s = suite_create(name);
  *tc = tcase_create(name);
  tcase_set_timeout(*tc, test_timeout());
  suite_add_tcase(s, *tc);
  return s;
}

// Runs the suite with TAP on stdout (automake's tap-driver.sh reads it); the exit
// status is non-zero when a test failed.
inline int run_suite(Suite* s) {
  SRunner* sr = srunner_create(s);
  srunner_set_tap(sr, "-");
  srunner_run_all(sr, CK_SILENT);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

}  // namespace test_util

// Marks the running test as skipped: a TAP diagnostic line on stdout ("# SKIP
// test_name: reason"), then the test passes.  Check has no skip of its own.
#define TEST_SKIP(...)                                                   \
  do {                                                                   \
    char test_skip_reason_[512];                                         \
    std::snprintf(test_skip_reason_, sizeof test_skip_reason_, __VA_ARGS__); \
    std::string test_skip_name_(__func__);                               \
    if (test_skip_name_.size() > 3 &&                                    \
        test_skip_name_.compare(test_skip_name_.size() - 3, 3, "_fn") == 0) \
      test_skip_name_.resize(test_skip_name_.size() - 3);                \
    std::printf("# SKIP %s: %s\n", test_skip_name_.c_str(), test_skip_reason_); \
    std::fflush(stdout);                                                 \
    std::fprintf(stderr, "SKIP %s: %s\n", test_skip_name_.c_str(), test_skip_reason_); \
    return;                                                              \
  } while (0)

// Asserts that a Failure recorder saw nothing.
#define ASSERT_NO_FAILURE(f) ck_assert_msg(!(f).failed(), "%s", (f).text())

#endif
