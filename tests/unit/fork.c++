// tests/unit/fork.c++ -- the "fork" suite: fork() with libcalloc (src/lifecycle.c++).
//
// Issue 11's two deadlocks as reproducers: (1) threads reading with getline (stdio
// holds the FILE lock while getline reallocs), a thread in fflush(NULL) (stdio's
// list lock, then each FILE lock) and forking threads -- once as the issue ran
// it, once with the cycle built step by step so that it closes on every run;
// (2) a single-threaded program whose 1 ms interval-timer handler forks while the
// main loop forks, mallocs and frees.  Then fork while other threads are in every
// slow path (chunk supply and trim, large blocks, huge-page blocks, private heaps,
// thread exit), a fork storm from 8 threads, and the parent's other threads'
// pending remote frees (foreign lists, RemoteBatch chains), which the child must
// get back.  Every child allocates and frees at once and reports through its exit
// status.  Each scenario runs in a process of its own that the test waits for
// with a deadline (run_with_deadline): a deadlock fails the test with the
// scenario's name instead of hanging the suite.  Loop counts and durations scale
// with CALLOC_TEST_SCALE (Valgrind runs at 5 %); the assertions do not.
//
// Without the malloc override (sanitizer builds) stdio's realloc is not
// libcalloc's: there the readers hold the FILE lock themselves (flockfile) around
// lca_realloc, which is what getline does inside, and the children use the lca_*
// entry points only (ASan's own malloc is not fork-safe in GCC 12's libasan).
#include <custom_alloc/huge_page_allocator.h++>
#include <custom_alloc/memory_allocator.h++>

#include <libcalloc.h>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/single_threaded.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "huge.h++"

#if CALLOC_VALGRIND
#include <valgrind/valgrind.h>
#endif

#include "../test-util.h++"

using custom_alloc::HugePageAllocator;
using custom_alloc::MemoryAllocator;
using test_util::running_on_valgrind;
using test_util::scaled;

#if defined(__SANITIZE_THREAD__)
// A child forked while a thread of the parent has finished but is not joined yet
// (a short-lived thread of test_fork_during_slow_paths, a storm thread done
// early) would report that thread as leaked at its exit and fail with TSan's
// exit code: not a leak of anything, the parent joins it.
extern "C" const char* __tsan_default_options() { return "report_thread_leaks=0"; }
#endif

namespace {

#ifdef CALLOC_OVERRIDE
constexpr bool kOverride = true;
#else
constexpr bool kOverride = false;
#endif

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Seconds a scenario runs: `seconds` at scale 100, scaled, at least 0.2 s.
double scaled_seconds(double seconds) {
  double s = seconds * static_cast<double>(scaled(1000)) / 1000.0;
  return s < 0.2 ? 0.2 : s;
}

// What a child of a fork does first: allocate and free through every size path,
// then leave.  Exit status 0 when all went well.
[[noreturn]] void child_allocates_and_exits(HugePageAllocator* huge = nullptr) {
  void* small = lca_malloc(48);
  void* medium = lca_malloc(20000);
  void* large = lca_malloc(600000);
  if (!small || !medium || !large) _exit(10);
  std::memset(small, 1, 48);
  std::memset(medium, 2, 20000);
  std::memset(large, 3, 600000);
  large = lca_realloc(large, 2000000);
  if (!large) _exit(11);
  lca_free(large);
  lca_free(medium);
  lca_free(small);
  if (kOverride) {
    void* p = std::malloc(100);
    if (!p) _exit(12);
    std::free(p);
  }
  if (huge) {
    void* h = huge->allocate_huge(2 << 20);
    if (!h) _exit(13);
    static_cast<char*>(h)[0] = 1;
    huge->deallocate_huge(h);
  }
  // Valgrind would report the child's view of the parent's blocks at its exit.
  if (running_on_valgrind()) kill(getpid(), SIGKILL);
  _exit(0);
}

bool child_ok(int status) {
  return (WIFEXITED(status) && WEXITSTATUS(status) == 0) ||
         (running_on_valgrind() && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

// Forks, reaps the child; false when it failed (its status in *status).
bool fork_and_reap(int* status, HugePageAllocator* huge = nullptr) {
  pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) child_allocates_and_exits(huge);
  while (waitpid(pid, status, 0) < 0)
    if (errno != EINTR) return false;
  return child_ok(*status);
}

// Runs fn in a process of its own and waits for it at most `seconds` (much
// longer under Valgrind).  Fails the test when it does not end in time (a
// deadlock: the process is killed) or ends with a nonzero status.
template <class Fn>
void run_with_deadline(const char* what, double seconds, Fn&& fn) {
  std::fflush(stdout);
  std::fflush(stderr);
  int result[2];
  ck_assert_msg(pipe(result) == 0, "%s: pipe failed", what);
  pid_t pid = fork();
  ck_assert_msg(pid >= 0, "%s: fork failed", what);
  if (pid == 0) {
    close(result[0]);
#if CALLOC_VALGRIND
    const unsigned errors_before = VALGRIND_COUNT_ERRORS;
#endif
    int rc = fn();
#if CALLOC_VALGRIND
    // The process ends by SIGKILL under Valgrind, so --error-exitcode cannot
    // speak for it: the tool's errors in it fail the scenario here.
    if (rc == 0 && VALGRIND_COUNT_ERRORS != errors_before) {
      std::fprintf(stderr, "%s: %u Valgrind errors in the scenario's process\n", what,
                   VALGRIND_COUNT_ERRORS - errors_before);
      rc = 98;
    }
#endif
    std::fflush(stdout);
    std::fflush(stderr);
    if (write(result[1], &rc, sizeof rc) != sizeof rc) _exit(99);
    // Under Valgrind the exit would add a leak check of the scenario's process
    // (glibc's cached thread stacks look "possibly lost"): the pipe says it all.
    if (running_on_valgrind()) kill(getpid(), SIGKILL);
    _exit(rc);
  }
  close(result[1]);
  double limit = running_on_valgrind() ? seconds * 20 + 120 : seconds;
  double start = now_s();
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (now_s() - start > limit) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      close(result[0]);
      ck_abort_msg("%s: no end after %.0f s: a deadlock (the process was killed)", what, limit);
    }
    usleep(20000);
  }
  int rc = -1;
  if (read(result[0], &rc, sizeof rc) != sizeof rc) rc = -1;
  close(result[0]);
  ck_assert_msg(rc == 0 && child_ok(status), "%s: the scenario failed (code %d, status 0x%x)", what, rc, status);
}

// --- scenario 1: stdio --------------------------------------------------------

// Reads lines of 2 MiB: with getline when stdio's realloc is libcalloc's, else
// as getline does, lca_realloc under the FILE lock.
void read_lines(FILE* f, std::size_t line_bytes, const std::atomic<bool>& stop) {
  char* line = nullptr;
  std::size_t cap = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    if (kOverride) {
      std::free(line);
      line = nullptr;
      cap = 0;
      if (getline(&line, &cap, f) < 0) std::rewind(f);
    } else {
      flockfile(f);
      for (std::size_t n = 120; n <= line_bytes; n *= 2) {
        void* q = lca_realloc(line, n);
        if (!q) break;
        line = static_cast<char*>(q);
        line[n - 1] = 'x';
      }
      funlockfile(f);
      lca_free(line);
      line = nullptr;
    }
  }
  if (kOverride)
    std::free(line);
  else
    lca_free(line);
}

// 4 reader threads on a file of 2 MiB lines, 1 fflush(NULL) thread, 2 forking
// threads, for `seconds`.  Returns the process's exit status.
int stdio_scenario(double seconds, std::size_t line_bytes, long* forks_out) {
  char path[] = "/tmp/lca-fork-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return 20;
  std::vector<char> line(line_bytes, 'x');
  line.back() = '\n';
  for (int i = 0; i < 4; ++i)
    if (write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) return 21;
  close(fd);
  std::atomic<bool> stop{false};
  std::atomic<long> forks{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  std::vector<FILE*> files;
  for (int i = 0; i < 4; ++i) {
    FILE* f = std::fopen(path, "r");
    if (!f) return 22;
    files.push_back(f);
    threads.emplace_back([f, line_bytes, &stop] { read_lines(f, line_bytes, stop); });
  }
  threads.emplace_back([&stop] {
    while (!stop.load(std::memory_order_relaxed)) std::fflush(nullptr);
  });
  for (int i = 0; i < 2; ++i)
    threads.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        int status;
        if (!fork_and_reap(&status)) failed++;
        forks++;
      }
    });
  double start = now_s();
  while (now_s() - start < seconds) usleep(10000);
  stop = true;
  for (auto& t : threads) t.join();
  for (FILE* f : files) std::fclose(f);
  unlink(path);
  *forks_out = forks.load();
  return failed.load() ? 23 : 0;
}

}  // namespace

// The issue's reproducer: hung 3 runs of 3 before the fix.
START_TEST(test_stdio_getline_fflush_fork) {
  double seconds = scaled_seconds(3.0);
  run_with_deadline("getline + fflush(NULL) + fork", seconds + 60, [seconds] {
    long forks = 0;
    // Under Valgrind, 64 KiB lines: getline still reallocates under the FILE
    // lock, which is what closes the cycle, but helgrind copying 2 MiB lines
    // kept one CI run's scenario busy for 17 minutes (15 s in another).
    std::size_t line_bytes = running_on_valgrind() ? std::size_t{64} << 10 : std::size_t{2} << 20;
    int rc = stdio_scenario(seconds, line_bytes, &forks);
    std::printf("# stdio scenario: %.1f s, %ld forks\n", seconds, forks);
    return rc;
  });
}
END_TEST

// The same cycle, built step by step: R holds a FILE lock, F sits in
// fflush(NULL) holding the list lock and waiting for R's FILE, the main thread
// forks, and then R allocates.  Before the fix the fork's prepare handler held
// libcalloc's locks while glibc's fork waited for the list lock: R waited for
// them, F for R, the fork for F.  (Sleeps order the steps; if one is late the
// test passes without closing the cycle, it never fails for that.)
START_TEST(test_stdio_lock_cycle) {
  run_with_deadline("FILE lock + fflush(NULL) + fork + malloc", 30, [] {
    FILE* f = std::tmpfile();
    if (!f) return 30;
    std::fputc('x', f);  // pending output: fflush(NULL) must lock it
    std::atomic<int> step{0};
    std::thread reader([&] {
      flockfile(f);
      step = 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(running_on_valgrind() ? 1500 : 150));
      void* p = lca_malloc(1 << 20);  // a large block: the large-block table's lock
      void* q = lca_malloc(64);
      lca_free(q);
      lca_free(p);
      funlockfile(f);
    });
    while (step.load() < 1) usleep(1000);
    std::atomic<bool> forked{false};
    std::thread flusher([&forked] {
      std::fflush(nullptr);
      while (!forked.load()) usleep(1000);  // alive at the fork (TSan: no finished, unjoined thread)
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(running_on_valgrind() ? 500 : 50));
    int status = 0;
    bool ok = fork_and_reap(&status);
    forked = true;
    reader.join();
    flusher.join();
    std::fclose(f);
    return ok ? 0 : 31;
  });
}
END_TEST

// --- scenario 2: fork in a signal handler -----------------------------------------

namespace {
volatile sig_atomic_t g_handler_forks = 0;
volatile sig_atomic_t g_handler_failures = 0;
bool g_on_valgrind = false;  // read before the timer starts (the handler may only read it)

int g_handler_fork_limit = 0;  // likewise
// The main loop's progress (one step a malloc/free pair): the handler forks only
// when the main loop moved since its last fork.  A fork and its child's reaping
// may take longer than the timer's interval (ASan's process, a loaded machine:
// the CI run of 2026-12-05 took more than 60 s), and then the next signal is due
// as the handler returns, before the main loop runs an instruction: a livelock
// of handlers, not the deadlock this test looks for.  Signals still land at any
// point of the main loop, inside malloc and fork included.
volatile sig_atomic_t g_main_steps = 0;
volatile sig_atomic_t g_steps_at_handler_fork = -1;

void fork_in_handler(int) {
  if (g_handler_forks >= g_handler_fork_limit) return;
  if (g_main_steps == g_steps_at_handler_fork) return;
  g_steps_at_handler_fork = g_main_steps;
  int saved = errno;
  pid_t pid = fork();
  if (pid == 0) {  // the interrupted code may hold a lock: no malloc here
    if (g_on_valgrind) kill(getpid(), SIGKILL);  // no leak check of the parent's blocks
    _exit(0);
  }
  if (pid > 0) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!child_ok(status)) g_handler_failures = g_handler_failures + 1;
    g_handler_forks = g_handler_forks + 1;
  }
  errno = saved;
}
}  // namespace

START_TEST(test_fork_in_signal_handler) {
  // The test's process is a fresh fork of Check's single-threaded runner.
  if (test_util::kTsanBuild)
    TEST_SKIP("TSan's runtime runs a thread of its own: the process is never single-threaded, and a fork from a "
              "signal handler takes the locks then, with glibc's malloc too");
  if (!__libc_single_threaded)
    TEST_SKIP("the process has had threads (CK_FORK=no?): a fork from a signal handler takes the locks then, "
              "with glibc's malloc too");
  double seconds = scaled_seconds(3.0);
  g_on_valgrind = running_on_valgrind();
  // Under Valgrind a fork takes 0.1 s to seconds: a few handler forks, or the main
  // loop starves between two handlers.
  g_handler_fork_limit = g_on_valgrind ? 10 : INT_MAX;
  run_with_deadline("fork in a SIGALRM handler + fork/malloc/free", seconds + 60, [seconds] {
    struct sigaction sa {};
    sa.sa_handler = fork_in_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, nullptr);
    // 1 ms; under Valgrind a fork takes ~100 ms, and a 1 ms timer would leave the
    // main loop a few instructions between two handlers.
    const long interval_us = g_on_valgrind ? 100000 : 1000;
    itimerval it{{0, interval_us}, {0, interval_us}};
    setitimer(ITIMER_REAL, &it, nullptr);
    static const std::size_t kSizes[] = {24, 200, 5000, 70000, 300000, 3 << 20};
    void* keep[16] = {};
    long forks = 0, failures = 0;
    double start = now_s();
    for (unsigned i = 0; now_s() - start < seconds; ++i) {
      for (unsigned k = 0; k < 16; ++k) {
        lca_free(keep[k]);
        keep[k] = lca_malloc(kSizes[(i + k) % 6]);
        if (!keep[k]) return 40;
        static_cast<char*>(keep[k])[0] = 1;
        if (kOverride) std::free(std::malloc(kSizes[(i + k + 1) % 6]));
        g_main_steps = g_main_steps + 1;
      }
      if (i % 4 == 0) {
        int status = 0;
        if (!fork_and_reap(&status)) failures++;
        forks++;
      }
    }
    itimerval off{};
    setitimer(ITIMER_REAL, &off, nullptr);
    for (void* p : keep) lca_free(p);
    std::printf("# signal scenario: %.1f s, %ld forks (%ld in the main loop, %ld in the handler)\n", seconds,
                forks + g_handler_forks, forks, static_cast<long>(g_handler_forks));
    return failures || g_handler_failures ? 41 : 0;
  });
}
END_TEST

// --- fork while other threads are in the slow paths ----------------------------

START_TEST(test_fork_during_slow_paths) {
  run_with_deadline("fork while threads are in the slow paths", 90, [] {
    HugePageAllocator huge;
    lca::huge_set_backings(huge.huge_state(), 0);  // normal pages: quick everywhere
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    // Under Valgrind every thread runs inside libcalloc's one serialising lock
    // (Valgrind mode), which is not fair: five threads that take it back at
    // once starved the forking main thread for 20 minutes under helgrind in
    // CI (10-20 s in other runs).  A pause per round lets the forks in; the
    // workers still spend their time in the slow paths.
    auto breathe = [] {
      if (running_on_valgrind()) usleep(200);
    };
    // Chunk supply: many spans of many classes made and emptied, then trimmed.
    threads.emplace_back([&] {
      std::vector<void*> v;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 3000; ++i) v.push_back(lca_malloc(16 + static_cast<std::size_t>(i % 64) * 48));
        for (void* p : v) lca_free(p);
        v.clear();
        lca_trim();
        breathe();
      }
    });
    // Large blocks: made, grown, freed.
    threads.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        void* p = lca_malloc(300000);
        p = lca_realloc(p, 5000000);
        lca_free(p);
        breathe();
      }
    });
    // Huge-page blocks of a shared HugePageAllocator.
    threads.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        void* p = huge.allocate_huge(4 << 20);
        if (p) huge.deallocate_huge(p);
        breathe();
      }
    });
    // Private heaps made and destroyed (the list of domains).
    threads.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        MemoryAllocator heap;
        heap.deallocate(heap.allocate(100));
        breathe();
      }
    });
    // Threads that allocate and exit (heap abandonment and adoption).
    threads.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        std::thread t([] { lca_free(lca_malloc(200)); });
        t.join();
        breathe();
      }
    });
    int bad = 0, first_status = 0;
    const int forks = static_cast<int>(scaled(300));
    for (int i = 0; i < forks; ++i) {
      usleep(1000);
      int status = 0;
      if (!fork_and_reap(&status, &huge) && bad++ == 0) first_status = status;
    }
    stop = true;
    for (auto& t : threads) t.join();
    if (bad) std::fprintf(stderr, "%d of %d children failed, first status 0x%x\n", bad, forks, first_status);
    return bad ? 50 : 0;
  });
}
END_TEST

START_TEST(test_fork_storm_8_threads) {
  run_with_deadline("fork storm from 8 threads", 90, [] {
    std::atomic<int> bad{0};
    std::vector<std::thread> threads;
    const int per_thread = static_cast<int>(scaled(60));
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&, t] {
        void* keep[8] = {};
        for (int i = 0; i < per_thread; ++i) {
          for (int k = 0; k < 8; ++k) {
            lca_free(keep[k]);
            keep[k] = lca_malloc(static_cast<std::size_t>(16 << ((i + k + t) % 16)));
          }
          int status = 0;
          if (!fork_and_reap(&status)) bad++;
        }
        for (void* p : keep) lca_free(p);
      });
    for (auto& t : threads) t.join();
    return bad.load() ? 60 : 0;
  });
}
END_TEST

// --- the parent's other threads' pending frees ------------------------------------

// The main thread allocates N objects; another thread frees them all and waits:
// kForeignClassBytes / 64 = 128 of them wait on its foreign list, the rest in its
// RemoteBatch table (fewer than kRemoteBatchMax: not flushed).  The child must
// get every one back (before the fix they stayed counted as used, and the child
// carved new objects instead).
START_TEST(test_pending_remote_frees_reach_child) {
  if (running_on_valgrind())
    TEST_SKIP("in Valgrind mode frees wait in a quarantine and no thread keeps foreign lists");
  if (test_util::kAsanBuild) TEST_SKIP("in ASan mode frees wait in a quarantine before reuse");
#if CALLOC_SECURE
  TEST_SKIP("--enable-secure: malloc is the hardened heap, which keeps no thread-local foreign lists or remote batches");
#endif
  run_with_deadline("pending remote frees in the child", 60, [] {
    constexpr int kObjects = 128 + 5;
    std::vector<void*> objs(kObjects);
    for (void*& p : objs) p = lca_malloc(64);
    std::mutex m;
    std::condition_variable cv;
    bool freed = false, done = false;
    std::thread other([&] {
      lca_free(lca_malloc(64));  // a heap of its own first
      for (void* p : objs) lca_free(p);
      std::unique_lock<std::mutex> lock(m);
      freed = true;
      cv.notify_all();
      cv.wait(lock, [&] { return done; });
    });
    {
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return freed; });
    }
    int pipefd[2];
    if (pipe(pipefd) != 0) return 70;
    pid_t pid = fork();
    if (pid == 0) {
      std::set<void*> wanted(objs.begin(), objs.end());
      int found = 0;
      for (int i = 0; i < 4 * kObjects; ++i) found += wanted.count(lca_malloc(64)) ? 1 : 0;
      if (write(pipefd[1], &found, sizeof found) != sizeof found) _exit(71);
      _exit(0);
    }
    close(pipefd[1]);
    int found = -1;
    if (read(pipefd[0], &found, sizeof found) != sizeof found) found = -1;
    int status = 0;
    waitpid(pid, &status, 0);
    {
      std::lock_guard<std::mutex> lock(m);
      done = true;
      cv.notify_all();
    }
    other.join();
    std::printf("# the child got back %d of the %d objects the other thread had freed\n", found, kObjects);
    return found == kObjects && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 72;
  });
}
END_TEST

int main() {
  TCase* tc;
  Suite* s = test_util::make_suite("fork", &tc);
  tcase_add_test(tc, test_stdio_getline_fflush_fork);
  tcase_add_test(tc, test_stdio_lock_cycle);
  tcase_add_test(tc, test_fork_in_signal_handler);
  tcase_add_test(tc, test_fork_during_slow_paths);
  tcase_add_test(tc, test_fork_storm_8_threads);
  tcase_add_test(tc, test_pending_remote_frees_reach_child);
  return test_util::run_suite(s);
}
