// tests/unit/track.c++ -- the "track" suite: allocation tracking (src/track.c++,
// src/allocation_tracker.c++; configure --enable-tracking).
//
// AllocationTracker as the request's TURN 6 uses it: a leak among freed blocks is
// found with its address and size, and the hot site of 1 000 allocations is
// function A's (its symbolised stack says so), not B's (10); the report names the
// leaking function; bad input (a null pointer, an address never tracked) loses
// nothing; many threads (more than cores) tracking at once keep exact totals;
// g_allocation_tracker (ENABLE_ALLOCATION_TRACKING) is the program-wide tracker.
// The process heap's tracker, switched on in a forked child (track_start_for_test):
// full mode sees exactly the bytes a function leaks, among blocks that are freed,
// from threads too; sampling estimates total calls and bytes of a known workload
// within 10 %; fork while other threads allocate leaves the child's tracker usable
// (no lock inherited held), with its own totals; threads interning the same stacks
// while the site index grows and profiles are written intern each once (and give
// ThreadSanitizer the tracker's lock-free paths to watch); a large calloc, sampled or not,
// leaves a fresh mapping's pages untouched.  The profile signal's profile is
// written by the tracker's thread: without an allocation after the signal,
// while a thread in dlopen holds the loader's lock in a constructor
// (tests/track/ctor.c++), in a forked child, and not after the reports at exit.
// The LD_PRELOAD tests (leak report of a real program, python3, pprof) are
// tests/integration/track*.sh.
// The request's global tracker, g_allocation_tracker (test_global_tracker).
#define ENABLE_ALLOCATION_TRACKING 1
#include <custom_alloc/allocation_tracker.h++>
#include <custom_alloc/huge_page_allocator.h++>
#include <custom_alloc/memory_allocator.h++>
#include <custom_alloc/secure_allocator.h++>

#include <libcalloc.h>

#include <atomic>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "huge.h++"
#include "options.h++"
#include "secure.h++"
#include "track.h++"

#if CALLOC_VALGRIND
#include <valgrind/valgrind.h>
#endif

#include "../test-util.h++"

using custom_alloc::AllocationTracker;
using custom_alloc::MemoryAllocator;
using test_util::scaled;

namespace {

// The request's lambdas become functions: inlined lambdas leave no frame of
// their own and have no name a symbol table could give, and the test asserts on
// the name of the hot site's function.
__attribute__((noinline)) void* allocate_from_function_A(MemoryAllocator& alloc, AllocationTracker& tracker) {
  void* ptr = alloc.allocate(64);
  tracker.track_allocation(ptr, 64);
  test_util::escape(ptr);
  return ptr;
}

__attribute__((noinline)) void* allocate_from_function_B(MemoryAllocator& alloc, AllocationTracker& tracker) {
  void* ptr = alloc.allocate(128);
  tracker.track_allocation(ptr, 128);
  test_util::escape(ptr);
  return ptr;
}

__attribute__((noinline)) void* leak_from_here(MemoryAllocator& alloc, AllocationTracker& tracker, std::size_t n) {
  void* ptr = alloc.allocate(n);
  tracker.track_allocation(ptr, n);
  test_util::escape(ptr);
  return ptr;
}

bool stack_names(const std::vector<void*>& stack, const char* function) {
  for (void* f : stack)
    if (AllocationTracker::symbol_name(f).find(function) != std::string::npos) return true;
  return false;
}

// Runs fn in a forked child; fn returns "" on success, else what failed.
template <class Fn>
std::string in_child(Fn&& fn) {
  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    close(fds[0]);
    alarm(test_util::running_on_valgrind() ? 900 : 120);
    std::string err = fn();
    if (!err.empty() && write(fds[1], err.data(), err.size()) < 0) _exit(3);
    _exit(err.empty() ? 0 : 1);
  }
  close(fds[1]);
  std::string out;
  test_util::slurp_fd(fds[0], out);
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) return "child killed by signal " + std::to_string(WTERMSIG(status)) + ": " + out;
  if (WEXITSTATUS(status) != 0) return out.empty() ? "child exited " + std::to_string(WEXITSTATUS(status)) : out;
  return "";
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

START_TEST(test_detects_memory_leak) {
  AllocationTracker tracker;
  MemoryAllocator alloc;

  // Intentionally leak
  void* ptr1 = alloc.allocate(128);
  tracker.track_allocation(ptr1, 128);

  void* ptr2 = alloc.allocate(256);
  tracker.track_allocation(ptr2, 256);
  alloc.deallocate(ptr2);
  tracker.track_deallocation(ptr2);

  // ptr1 not freed - should be detected
  auto leaks = tracker.get_leaks();
  ck_assert_uint_eq(leaks.size(), 1);
  ck_assert_ptr_eq(leaks[0].address, ptr1);
  ck_assert_uint_eq(leaks[0].size, 128);
  ck_assert(leaks[0].thread_id == std::this_thread::get_id());
  ck_assert(!leaks[0].stack_trace.empty());
  ck_assert(stack_names(leaks[0].stack_trace, "test_detects_memory_leak"));

  std::ostringstream report;
  tracker.print_report(report);
  std::cout << "# " << report.str().substr(0, report.str().find('\n')) << '\n';
  ck_assert_msg(report.str().find("128 bytes in 1 block leaked") != std::string::npos, "%s", report.str().c_str());
  alloc.deallocate(ptr1);
}
END_TEST

START_TEST(test_identifies_hot_sites) {
  AllocationTracker tracker;
  MemoryAllocator alloc;

  // Function A called 1000 times
  std::vector<void*> ptrs_a;
  for (int i = 0; i < 1000; i++) ptrs_a.push_back(allocate_from_function_A(alloc, tracker));

  // Function B called 10 times
  std::vector<void*> ptrs_b;
  for (int i = 0; i < 10; i++) ptrs_b.push_back(allocate_from_function_B(alloc, tracker));

  auto profile = tracker.generate_profile();
  ck_assert_uint_eq(profile.total_allocations, 1010);
  ck_assert_uint_eq(profile.total_bytes_allocated, 1000 * 64 + 10 * 128);

  // Top allocation site should be function A: its stack starts in A (the
  // loop calls A from one place, so all 1000 share one stack).
  const std::vector<void*>* top = nullptr;
  std::size_t top_count = 0, b_count = 0;
  for (const auto& [stack, count] : profile.allocation_sites) {
    if (count > top_count) top = &stack, top_count = count;
    if (!stack.empty() && AllocationTracker::symbol_name(stack[0]).find("allocate_from_function_B") != std::string::npos)
      b_count += count;
  }
  ck_assert_ptr_nonnull(top);
  ck_assert_uint_eq(top_count, 1000);
  ck_assert_uint_eq(b_count, 10);
  std::string first = AllocationTracker::symbol_name((*top)[0]);
  ck_assert_msg(first.find("allocate_from_function_A") != std::string::npos, "top site's frame 0 is %s", first.c_str());
  ck_assert(stack_names(*top, "test_identifies_hot_sites"));
  ck_assert_uint_eq(profile.bytes_per_site.at(*top), 64000);
  ck_assert_uint_eq(profile.live_allocations, 1010);

  for (void* p : ptrs_a) alloc.deallocate(p), tracker.track_deallocation(p);
  for (void* p : ptrs_b) alloc.deallocate(p), tracker.track_deallocation(p);
  ck_assert_uint_eq(tracker.get_leaks().size(), 0);
  ck_assert_uint_eq(tracker.generate_profile().untracked_frees, 0);
}
END_TEST

START_TEST(test_report_names_leaking_function) {
  AllocationTracker tracker;
  MemoryAllocator alloc;
  void* big = leak_from_here(alloc, tracker, 5000);
  void* small1 = leak_from_here(alloc, tracker, 24);
  void* freed = allocate_from_function_B(alloc, tracker);
  alloc.deallocate(freed);
  tracker.track_deallocation(freed);
  auto leaks = tracker.get_leaks();
  ck_assert_uint_eq(leaks.size(), 2);
  ck_assert_ptr_eq(leaks[0].address, big);  // largest first
  ck_assert_ptr_eq(leaks[1].address, small1);
  std::ostringstream out;
  tracker.print_report(out);
  std::string r = out.str();
  ck_assert_msg(r.find("leak_from_here") != std::string::npos, "%s", r.c_str());
  ck_assert_msg(r.find("5000 bytes in 1 block leaked") < r.find("24 bytes in 1 block leaked"), "%s", r.c_str());
  ck_assert_msg(r.find("SUMMARY: 5024 bytes leaked in 2 blocks") != std::string::npos, "%s", r.c_str());
  alloc.deallocate(big);
  alloc.deallocate(small1);
}
END_TEST

START_TEST(test_bad_input_loses_nothing) {
  AllocationTracker tracker;
  int on_stack = 0;
  tracker.track_allocation(nullptr, 100);  // ignored
  tracker.track_deallocation(nullptr);     // ignored
  tracker.track_deallocation(&on_stack);   // never tracked: counted, nothing lost
  void* p = lca_malloc(40);
  tracker.track_allocation(p, 40);
  tracker.track_deallocation(&on_stack);
  auto profile = tracker.generate_profile();
  ck_assert_uint_eq(profile.total_allocations, 1);
  ck_assert_uint_eq(profile.untracked_frees, 2);
  ck_assert_uint_eq(profile.live_allocations, 1);
  ck_assert_uint_eq(profile.live_bytes, 40);
  // The same address again without a deallocation: the record is replaced.
  tracker.track_allocation(p, 48);
  auto leaks = tracker.get_leaks();
  ck_assert_uint_eq(leaks.size(), 1);
  ck_assert_uint_eq(leaks[0].size, 48);
  std::ostringstream out;
  AllocationTracker empty;
  empty.print_report(out);
  ck_assert_msg(out.str().find("SUMMARY: no leaks") != std::string::npos, "%s", out.str().c_str());
  lca_free(p);
}
END_TEST

START_TEST(test_threads_keep_exact_totals) {
  AllocationTracker tracker;
  const unsigned threads = 8;  // more than the cores
  const std::size_t per_thread = scaled(2000);
  std::vector<std::thread> pool;
  std::vector<std::vector<void*>> kept(threads);
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      MemoryAllocator& heap = MemoryAllocator::instance();
      for (std::size_t i = 0; i < per_thread; ++i) {
        void* p = heap.allocate(16 + t);
        tracker.track_allocation(p, 16 + t);
        if (i % 4 == 0) {
          kept[t].push_back(p);
        } else {
          tracker.track_deallocation(p);
          heap.deallocate(p);
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  auto profile = tracker.generate_profile();
  ck_assert_uint_eq(profile.total_allocations, threads * per_thread);
  std::size_t expect_live = 0, expect_bytes = 0;
  for (unsigned t = 0; t < threads; ++t) expect_live += kept[t].size(), expect_bytes += kept[t].size() * (16 + t);
  ck_assert_uint_eq(profile.live_allocations, expect_live);
  ck_assert_uint_eq(profile.live_bytes, expect_bytes);
  ck_assert_uint_eq(tracker.get_leaks().size(), expect_live);
  for (auto& v : kept)
    for (void* p : v) MemoryAllocator::instance().deallocate(p);
}
END_TEST

START_TEST(test_options_parse_tracking) {
  lca::Options o{};
  ck_assert_int_eq(lca::options_parse("leak_report=1,profile=/tmp/p-%p.heap,profile_format=pprof,sample=4096,"
                                      "profile_signal=10", &o), 0);
  ck_assert_str_eq(o.leak_report, "-");  // 1: stderr
  ck_assert_str_eq(o.profile, "/tmp/p-%p.heap");
  ck_assert_uint_eq(o.profile_format, 2);
  ck_assert_uint_eq(o.sample, 4096);
  ck_assert_int_eq(o.profile_signal, 10);
  lca::Options p{};
  ck_assert_int_eq(lca::options_parse("leak_report=/tmp/leaks.txt,profile_format=collapsed,leak_report=0", &p), 0);
  ck_assert_str_eq(p.leak_report, "");  // the last one wins: off
  ck_assert_uint_eq(p.profile_format, 1);
  // Bad values are warned about and change nothing.
  lca::Options q{};
  ck_assert_int_eq(lca::options_parse("profile_format=xml,sample=lots,sample=,profile_signal=x", &q), 4);
  ck_assert_uint_eq(q.profile_format, 0);
  ck_assert_uint_eq(q.sample, 0);
  ck_assert_int_eq(q.profile_signal, -1);
  // A mean interval above 1 TiB is refused: a small block's weight (about
  // 2^16 x sample / size) overflowed its 64-bit integer from ~2^48 bytes on
  // (undefined behaviour in sample_weight); the old parser took up to ~10^16.
  lca::Options r{};
  ck_assert_int_eq(lca::options_parse("sample=1099511627776", &r), 0);
  ck_assert_uint_eq(r.sample, 1ull << 40);
  lca::Options big{};
  ck_assert_int_eq(lca::options_parse("sample=1099511627777", &big), 1);
  ck_assert_int_eq(lca::options_parse("sample=1000000000000000", &big), 1);
  ck_assert_uint_eq(big.sample, 0);
  // sample=0 is no rate: warned about (it silently meant "unset", which is
  // neither "every allocation" nor "none") and ignored like any bad value.
  lca::Options zero{};
  ck_assert_int_eq(lca::options_parse("sample=0", &zero), 1);
  ck_assert_uint_eq(zero.sample, 0);
  ck_assert_int_eq(lca::options_parse("sample=4096,sample=0", &zero), 1);
  ck_assert_uint_eq(zero.sample, 4096);  // the earlier value stays
}
END_TEST

// symbol_name reads its address as a return address (a stack_trace entry):
// the function is the one holding addr - 1.  Its header said "the function
// containing addr", which a function's entry address is not named by (the
// lookup lands in the code or padding before it); the header and the guide
// now say to pass an entry address plus one, which this checks.
START_TEST(test_symbol_name_of_function_entry_plus_one) {
  auto* entry = reinterpret_cast<char*>(&leak_from_here);
  std::string name = AllocationTracker::symbol_name(entry + 1);
  ck_assert_msg(name.find("leak_from_here") != std::string::npos && name.find("+0x1") != std::string::npos,
                "symbol_name(entry + 1) is \"%s\"", name.c_str());
}
END_TEST

// leak_report=PATH and profile=PATH naming the same file: the profile, written
// second at exit, truncated the file and the leak report was lost without a
// word.  Now a warning at start-up, and the leak report goes to stderr.
START_TEST(test_options_leak_report_and_profile_in_one_file) {
  lca::Options o{};
  ck_assert_int_eq(lca::options_parse("leak_report=/tmp/same.txt,profile=/tmp/same.txt", &o), 1);
  ck_assert_str_eq(o.leak_report, "-");
  ck_assert_str_eq(o.profile, "/tmp/same.txt");
  // The last item wins before the two are compared.
  lca::Options p{};
  ck_assert_int_eq(lca::options_parse("profile=/tmp/a-%p,leak_report=/tmp/a-%p,leak_report=/tmp/b", &p), 0);
  ck_assert_str_eq(p.leak_report, "/tmp/b");
  // Both on stderr is no conflict.
  lca::Options q{};
  ck_assert_int_eq(lca::options_parse("leak_report=1,profile=-", &q), 0);
  ck_assert_str_eq(q.leak_report, "-");
  ck_assert_str_eq(q.profile, "-");
}
END_TEST

// profile_signal names a signal whose handler only sets a flag.  A signal that
// cannot be caught (SIGKILL, SIGSTOP) or that the C library keeps for itself
// (glibc: 32 and 33, below SIGRTMIN) got no handler and no warning: no profile
// was ever written, silently.  A fault signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE)
// got the handler: it returns to the faulting instruction, which faults again,
// so a crashing program looped for ever instead of dying.  Both are refused.
START_TEST(test_options_refuse_unusable_profile_signals) {
  const int refused[] = {SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGILL, SIGFPE, 32, SIGRTMIN - 1, SIGRTMAX + 1};
  for (int sig : refused) {
    lca::Options o{};
    std::string text = "profile=-,profile_signal=" + std::to_string(sig);
    ck_assert_msg(lca::options_parse(text.c_str(), &o) == 1, "profile_signal=%d was accepted", sig);
    ck_assert_int_eq(o.profile_signal, -1);
  }
  const int accepted[] = {0, SIGUSR1, SIGUSR2, SIGPROF, SIGRTMIN, SIGRTMAX};
  for (int sig : accepted) {
    lca::Options o{};
    std::string text = "profile_signal=" + std::to_string(sig);
    ck_assert_msg(lca::options_parse(text.c_str(), &o) == 0, "profile_signal=%d was refused", sig);
    ck_assert_int_eq(o.profile_signal, sig);
  }
}
END_TEST

START_TEST(test_global_tracker) {
  void* p = lca_malloc(77);
  g_allocation_tracker.track_allocation(p, 77);
  ck_assert_ptr_eq(&g_allocation_tracker, &AllocationTracker::global());
  bool found = false;
  for (const auto& leak : g_allocation_tracker.get_leaks()) found |= leak.address == p && leak.size == 77;
  ck_assert(found);
  g_allocation_tracker.track_deallocation(p);
  lca_free(p);
  for (const auto& leak : AllocationTracker::global().get_leaks()) ck_assert_ptr_ne(leak.address, p);
}
END_TEST

namespace {
__attribute__((noinline)) void* process_leak(std::size_t n) {
  void* p = lca_malloc(n);
  test_util::escape(p);
  return p;
}
}  // namespace

// Full tracking of the process heap: exactly the leaked blocks are live.
START_TEST(test_process_heap_full_tracking) {
  std::string err = in_child([]() -> std::string {
    std::vector<void*> freed;
    freed.reserve(500);  // before tracking starts: only the blocks below count
    lca::track_start_for_test(lca::TrackMode::full, 0);
    for (int i = 0; i < 500; ++i) freed.push_back(lca_malloc(static_cast<std::size_t>(i % 300) + 1));
    void* leaked = process_leak(777);
    void* leaked_big = process_leak(3 << 20);  // a mapping
    void* r = lca_realloc(lca_malloc(10), 5000);  // realloc: 10 freed, 5000 live
    for (void* p : freed) lca_free(p);
    char* c = static_cast<char*>(lca_calloc(10, 10));
    lca_free(c);
    lca::TrackTotals t = lca::track_totals();
    if (t.live_blocks != 3 || t.live_bytes != 777 + (3 << 20) + 5000)
      return "live " + std::to_string(t.live_blocks) + " blocks, " + std::to_string(t.live_bytes) + " bytes";
    if (t.calls != 500 + 2 + 2 + 1) return "calls " + std::to_string(t.calls);
    char path[64];
    std::snprintf(path, sizeof path, "/tmp/calloc-track-test-%d.txt", static_cast<int>(getpid()));
    if (!custom_alloc::dump_process_profile(path, custom_alloc::ProfileFormat::text)) return "dump failed";
    {
      std::string text = read_file(path);  // tracked too, and freed at the end of the scope
      unlink(path);
      if (text.find("process_leak") == std::string::npos) return "profile does not name process_leak: " + text;
      if (text.find("live 1 blocks, 777 bytes") == std::string::npos) return "no 777-byte site: " + text;
    }
    lca_free(leaked);
    lca_free(leaked_big);
    lca_free(r);
    t = lca::track_totals();
    if (t.live_blocks != 0 || t.live_bytes != 0) return "not all freed: " + std::to_string(t.live_bytes);
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// The leak report written now, as the exit handler writes it.
std::string leak_report_text(const char* tag) {
  char path[96];
  std::snprintf(path, sizeof path, "/tmp/calloc-track-%s-%d.txt", tag, static_cast<int>(getpid()));
  if (!lca::track_write_leak_report_for_test(path)) return std::string("cannot write ") + path;
  std::string text = read_file(path);
  unlink(path);
  return text;
}

// The leak report's summary counts allocations in the right words: "1
// allocation tracked" (it said "1 allocations tracked"), and when sampling
// "an estimated N allocations from S samples" (it said "N allocations
// tracked", which read as a count).
START_TEST(test_leak_summary_words) {
  std::string err = in_child([]() -> std::string {
    lca::track_start_for_test(lca::TrackMode::full, 0);
    void* leaked = process_leak(777);  // the only allocation tracked
    std::string text = leak_report_text("one");
    lca_free(leaked);
    if (text.find("libcalloc: leak summary: 777 bytes in 1 block from 1 allocation stack (1 allocation tracked)\n") ==
        std::string::npos)
      return "full mode, one allocation: " + text;
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
  err = in_child([]() -> std::string {
    lca::track_start_for_test(lca::TrackMode::sample, 4096);
    std::vector<void*> blocks;
    blocks.reserve(64);
    for (int i = 0; i < 64; ++i) blocks.push_back(lca_malloc(64 << 10));  // 64 KiB: all but the first sampled
    void* leaked = process_leak(100 << 10);
    for (void* p : blocks) lca_free(p);
    lca::TrackTotals t = lca::track_totals();  // what the report counts (it allocates untracked)
    std::string text = leak_report_text("sampled");
    lca_free(leaked);
    std::string want = "(an estimated " + std::to_string(static_cast<long long>(std::llround(t.calls))) +
                       " allocations from " + std::to_string(t.samples) + " samples)\n";
    if (text.find("libcalloc: leak summary: ") == std::string::npos || text.find(want) == std::string::npos)
      return "sampled: no \"" + want + "\" in: " + text;
    if (text.find("tracked)") != std::string::npos) return "sampled: a count of allocations tracked: " + text;
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
  AllocationTracker tracker;
  void* p = lca_malloc(16);
  tracker.track_allocation(p, 16);
  tracker.track_deallocation(p);
  lca_free(p);
  std::ostringstream out;
  tracker.print_report(out);
  ck_assert_msg(out.str().find("SUMMARY: no leaks (1 allocation tracked)\n") != std::string::npos, "%s",
                out.str().c_str());
  ck_assert_msg(out.str().find("Hot allocation sites (1 allocation, 16 bytes") != std::string::npos, "%s",
                out.str().c_str());
}
END_TEST

// A program that starts and joins threads, and leaks one block of its own,
// has exactly that leak reported: glibc's thread storage (the DTV the loader
// allocates in pthread_create, kept with the cached stack) is counted apart.
// The loader's calloc reaches the tracker only where libcalloc is the
// program's malloc: not under Valgrind (its allocator) nor in a build without
// the override (the sanitizer builds); there the own leak is still the only
// one, and the line about glibc's blocks is not required.
#if CALLOC_OVERRIDE
constexpr bool kOverrideBuilt = true;
#else
constexpr bool kOverrideBuilt = false;
#endif

__attribute__((noipa)) void* thread_churn(void*) {
  for (int i = 0; i < 100; ++i) lca_free(lca_malloc(static_cast<std::size_t>(i) * 8 + 16));
  return nullptr;
}

START_TEST(test_leak_report_sets_glibc_thread_storage_apart) {
  std::string err = in_child([]() -> std::string {
    lca::track_start_for_test(lca::TrackMode::full, 0);
    for (int round = 0; round < 2; ++round) {
      pthread_t t[4];
      for (auto& th : t)
        if (pthread_create(&th, nullptr, thread_churn, nullptr) != 0) return "pthread_create failed";
      for (auto& th : t) pthread_join(th, nullptr);
    }
    void* leaked = process_leak(4242);
    std::string text = leak_report_text("threads");
    lca_free(leaked);
    if (text.find("libcalloc: leak summary: 4242 bytes in 1 block from 1 allocation stack") == std::string::npos)
      return "not exactly the program's leak: " + text;
    bool loader_tracked = kOverrideBuilt && !test_util::running_on_valgrind();
    if (loader_tracked && text.find("libcalloc: not leaks of the program: glibc's thread storage") == std::string::npos)
      return "no line for glibc's thread storage: " + text;
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// The test libraries' paths (tests/track/.libs/NAME), from top_builddir.
std::string test_library(const char* name) {
  const char* top = std::getenv("top_builddir");
  return std::string(top && *top ? top : ".") + "/tests/track/.libs/" + name;
}

// Libraries dlopen'ed and never closed: the loader's records of them (link
// maps, scope and version tables, ...) were reported as the program's leaks;
// now they are counted on a line of their own, and a leak of a library's
// constructor (run by dlopen, its stack through the loader) is still the
// program's.  libcalloc.a is linked into this program: the loader's calloc
// reaches the tracker through the program's calloc frame (and at -O0, the
// frames of its callees), which the rule takes for the allocator's.  Where
// the loader's and the library's allocations do not reach the tracker (under
// Valgrind, or without the override), the program's own leak is checked alone.
START_TEST(test_leak_report_sets_dlopen_records_apart) {
  // (Reports in messages cut at 3000 bytes: a longer one exceeded what
  // Check passes back from the test's process.)
  std::string err = in_child([]() -> std::string {
    lca::track_start_for_test(lca::TrackMode::full, 0);
    for (const char* name : {"libtrackplugin.so", "libtrackctorleak.so"})
      if (!dlopen(test_library(name).c_str(), RTLD_NOW | RTLD_GLOBAL)) return std::string("dlopen: ") + dlerror();
    void* leaked = process_leak(4242);
    std::string text = leak_report_text("dlopen");
    lca_free(leaked);
    if (text.find("4242 bytes in 1 block allocated at:") == std::string::npos)
      return "no own leak: " + text.substr(0, 3000);
    if (!kOverrideBuilt || test_util::running_on_valgrind()) return "";
    if (text.find("libcalloc: leak summary: 9797 bytes in 2 blocks from 2 allocation stacks") == std::string::npos)
      return "not exactly the program's leak and the constructor's: " + text.substr(0, 3000);
    if (text.find("5555 bytes in 1 block allocated at:") == std::string::npos ||
        text.find("ctorleak_constructor") == std::string::npos)
      return "the constructor's leak is not reported: " + text.substr(0, 3000);
    if (text.find("libcalloc: not leaks of the program: the dynamic loader's records of libraries loaded with "
                  "dlopen") == std::string::npos)
      return "no line for the loader's records: " + text.substr(0, 3000);
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// What glibc keeps for dlerror after a failed dlsym and a failed dlopen (the
// message and _dlerror_run's record of it) is counted apart, not reported as
// the program's leak: with libcalloc.a linked in, the allocator's entry is a
// frame of the program's before _dlerror_run's and _dl_exception_create's.
START_TEST(test_leak_report_sets_dlerror_buffers_apart) {
  std::string err = in_child([]() -> std::string {
    lca::track_start_for_test(lca::TrackMode::full, 0);
    void* lib = dlopen(test_library("libtrackplugin.so").c_str(), RTLD_NOW);
    if (!lib) return std::string("dlopen: ") + dlerror();
    if (dlsym(lib, "no_such_symbol_in_this_library")) return "dlsym found a symbol that is not there";
    if (dlopen("/nonexistent/libnothere.so", RTLD_NOW)) return "dlopen of a missing file succeeded";
    void* leaked = process_leak(4242);
    std::string text = leak_report_text("dlerror");
    lca_free(leaked);
    if (text.find("4242 bytes in 1 block allocated at:") == std::string::npos)
      return "no own leak: " + text.substr(0, 3000);
    if (!kOverrideBuilt || test_util::running_on_valgrind()) return "";
    if (text.find("libcalloc: leak summary: 4242 bytes in 1 block from 1 allocation stack") == std::string::npos)
      return "not exactly the program's leak: " + text.substr(0, 3000);
    if (text.find("libcalloc: not leaks of the program: what glibc keeps for dlerror") == std::string::npos)
      return "no line for dlerror's blocks: " + text.substr(0, 3000);
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// A SecureAllocator's or a HugePageAllocator's block given to lca_realloc while
// the process heap's tracker runs is resized in its own heap and never recorded
// (the tracker's blocks are the process heap's).  A sampled realloc took the old
// size, allocated in the process heap and freed the old block (after routing
// made that possible, a secure block would have left its hardened heap); before
// routing every such realloc aborted with "Invalid pointer".  With
// --enable-secure the process heap is a secure heap: a SecureAllocator's block
// is recorded there as before, so only the huge block is checked.
START_TEST(test_module_blocks_realloc_untracked) {
  for (lca::TrackMode mode : {lca::TrackMode::full, lca::TrackMode::sample}) {
    std::string err = in_child([mode]() -> std::string {
      custom_alloc::SecureAllocator secure;
      custom_alloc::HugePageAllocator huge;
      lca::huge_set_backings(huge.huge_state(), 0);
      void* s = secure.allocate(100);
      void* h = huge.allocate_huge(2 << 20);
      if (!s || !h) return "no blocks";
      lca::track_start_for_test(mode, 1);  // sampling: every allocation
      lca::TrackTotals before = lca::track_totals();
#if !CALLOC_SECURE
      s = lca_realloc(s, 5000);
      if (!s || !lca::secure_owns(s)) return "the secure block left its heap";
#endif
      h = lca_realloc(h, 3 << 20);
      if (!h || huge.huge_allocation_size(h) != 4 << 20) return "the huge block left its allocator";
      lca::TrackTotals after = lca::track_totals();
      if (after.live_blocks != before.live_blocks || after.calls != before.calls)
        return "recorded: live " + std::to_string(before.live_blocks) + " -> " + std::to_string(after.live_blocks) +
               ", calls " + std::to_string(before.calls) + " -> " + std::to_string(after.calls);
      secure.deallocate(s);
      huge.deallocate_huge(h);
      return "";
    });
    ck_assert_msg(err.empty(), "%s mode: %s", mode == lca::TrackMode::full ? "full" : "sample", err.c_str());
  }
}
END_TEST

// walk(bits, level) allocates under a stack that spells `bits` in its return
// addresses: one of two callers per level (noipa: not folded into one
// function), bit 0 innermost.  At 16 levels the 32 frames kept are all walk's,
// so the stacks do not depend on the caller's frames (the compiler unrolls
// the test's two passes into two call sites).
__attribute__((noipa)) void* walk(unsigned bits, int level);
__attribute__((noipa)) void* walk_one(unsigned bits, int level) {
  void* p = walk(bits, level);
  test_util::escape(p);
  return p;
}
__attribute__((noipa)) void* walk_zero(unsigned bits, int level) {
  void* p = walk(bits, level);
  test_util::escape(&bits);
  return p;
}
__attribute__((noipa)) void* walk(unsigned bits, int level) {
  if (level == 0) return lca_malloc(16);
  void* p = bits >> (level - 1) & 1 ? walk_one(bits, level - 1) : walk_zero(bits, level - 1);
  test_util::escape(p);
  return p;
}

// The site table starts small (an index of 1 024 slots, grown at half full):
// 2 048 distinct stacks make it grow twice, and each stack seen again after
// the growth is found, not added a second time.
START_TEST(test_many_stacks_grow_the_site_index) {
  std::string err = in_child([]() -> std::string {
    constexpr unsigned kBits = 11, kStacks = 1u << kBits;
    static void* blocks[2 * kStacks];
    lca::track_start_for_test(lca::TrackMode::full, 0);
    std::size_t before = lca::track_totals().stacks;
    for (unsigned pass = 0; pass < 2; ++pass)
      for (unsigned i = 0; i < kStacks; ++i) blocks[pass * kStacks + i] = walk(i, 16);
    lca::TrackTotals t = lca::track_totals();
    for (void* p : blocks) lca_free(p);
    if (t.stacks - before != kStacks) return "stacks added: " + std::to_string(t.stacks - before);
    if (t.calls != 2 * kStacks || t.live_bytes != 2 * kStacks * 16)
      return "calls " + std::to_string(t.calls) + ", live bytes " + std::to_string(t.live_bytes);
    t = lca::track_totals();
    if (t.live_blocks != 0) return "not all freed: " + std::to_string(t.live_blocks);
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// The lock-free paths of the process heap's tracker, on several threads at
// once, for ThreadSanitizer to watch (the TSan build runs this suite, with
// --enable-tracking: scripts/check-sanitizers): threads intern the same 2 048
// stacks at once -- two of them in the same order, so that both meet each new
// stack together; the others half a table away -- while the index grows twice
// under them (intern_site's lock-free probe of g_site_index against
// index_grow), record and forget their blocks in the shards, and another
// thread writes profiles (snapshot_sites, the sites' counters and frames) and
// reads the totals meanwhile.  Natively it checks that no stack was interned
// twice and that the counts come out exact.
START_TEST(test_threads_intern_stacks_at_once) {
  std::string err = in_child([]() -> std::string {
    constexpr unsigned kBits = 11, kStacks = 1u << kBits, kThreads = 4;
    static void* blocks[kThreads][kStacks];
    // Two under Valgrind, which runs one thread at a time and whose thread
    // checkers do not look into the tracker's tables (libcalloc's own memory):
    // the suite under DRD took 12 s more with two, 32 s with four.
    const unsigned threads = test_util::running_on_valgrind() ? 2 : kThreads;
    char path[64];
    std::snprintf(path, sizeof path, "/tmp/calloc-track-intern-%d.heap", static_cast<int>(getpid()));
    // A mutex and a condition variable, not atomics: helgrind and DRD follow them.
    std::mutex m;
    std::condition_variable cv;
    bool go = false;
    unsigned running = threads;
    auto wait_go = [&] {
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return go; });
    };
    // Made before tracking starts (their stacks and states are not the
    // test's); they wait for it on `go`, which orders the switch before them.
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        wait_go();
        unsigned first = t / 2 * (kStacks / 2);
        for (unsigned i = 0; i < kStacks; ++i) blocks[t][i] = walk((first + i) % kStacks, 16);
        for (void* p : blocks[t]) lca_free(p);
        std::lock_guard<std::mutex> lock(m);
        --running;
      });
    unsigned dumps = 0;
    bool dumped = true;
    std::thread dumper([&] {
      wait_go();
      for (;; ++dumps) {
        {
          std::lock_guard<std::mutex> lock(m);
          if (running == 0 && dumps >= 2) break;
        }
        auto format = dumps % 2 ? custom_alloc::ProfileFormat::pprof : custom_alloc::ProfileFormat::collapsed;
        dumped = custom_alloc::dump_process_profile(path, format) && dumped;
        (void)lca::track_totals();
        usleep(1000);
      }
    });
    lca::track_start_for_test(lca::TrackMode::full, 0);
    std::size_t before = lca::track_totals().stacks;
    {
      std::lock_guard<std::mutex> lock(m);
      go = true;
      cv.notify_all();  // under the lock: helgrind and DRD find it dubious otherwise
    }
    for (auto& th : pool) th.join();
    dumper.join();
    unlink(path);
    lca::TrackTotals t = lca::track_totals();
    if (!dumped) return "a profile was not written";
    if (t.stacks - before != kStacks)
      return "stacks added: " + std::to_string(t.stacks - before) + " (" + std::to_string(kStacks) + " distinct)";
    if (t.calls != threads * kStacks || t.bytes != threads * kStacks * 16)
      return "calls " + std::to_string(t.calls) + ", bytes " + std::to_string(t.bytes);
    if (t.live_blocks != 0 || t.live_bytes != 0) return "not all freed: " + std::to_string(t.live_blocks);
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

START_TEST(test_process_heap_threads_and_fork) {
  std::string err = in_child([]() -> std::string {
    const unsigned threads = 6;
    const std::size_t per_thread = scaled(3000);
    std::vector<std::thread> pool;
    std::vector<std::vector<void*>> kept(threads);
    // Before tracking starts: only the blocks of the loop below count.
    pool.reserve(threads);
    for (auto& v : kept) v.reserve(per_thread);
    lca::track_start_for_test(lca::TrackMode::full, 0);
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        for (std::size_t i = 0; i < per_thread; ++i) {
          void* p = lca_malloc(32);
          if (i % 3 == 0) kept[t].push_back(p);
          else lca_free(p);
        }
      });
    // Forks while the threads allocate: the child's tracker must work.  The
    // child answers through a pipe and dies of SIGKILL: under memcheck a normal
    // exit would run a leak check, which finds the blocks that the parent's
    // threads held in registers at the fork "definitely lost".  Under Valgrind
    // the child also says whether the tool found errors in it since the fork:
    // DRD's "Mutex reinitialization" of the tracker's locks, which the child
    // handler re-made while its thread held them (before session 18; the
    // killed child's reports failed nothing).
    std::string failure;
    for (int f = 0; f < 3 && failure.empty(); ++f) {
      int fds[2];
      if (pipe(fds) != 0) {
        failure = "pipe failed";
        break;
      }
      std::fflush(stdout);
#if CALLOC_VALGRIND
      const unsigned errors_before = VALGRIND_COUNT_ERRORS;
#endif
      pid_t pid = fork();
      if (pid == 0) {
#if CALLOC_VALGRIND
        const unsigned errors_at_fork = VALGRIND_COUNT_ERRORS - errors_before;
#else
        const unsigned errors_at_fork = 0;
#endif
        double before = lca::track_totals().live_bytes;
        void* p = process_leak(12345);
        double after = lca::track_totals().live_bytes;
        lca_free(p);
        char answer = errors_at_fork ? 'v' : after - before == 12345 ? 'y' : 'n';
        if (write(fds[1], &answer, 1) != 1) _exit(1);
        raise(SIGKILL);
      }
      close(fds[1]);
      char answer = 0;
      if (read(fds[0], &answer, 1) != 1) answer = 0;
      close(fds[0]);
      waitpid(pid, nullptr, 0);
      if (answer != 'y')
        failure = answer == 'v'   ? "the Valgrind tool reported errors in the forked child's fork handlers"
                  : answer == 'n' ? "the forked child's tracker miscounted"
                                  : "the forked child died";
    }
    for (auto& th : pool) th.join();
    if (!failure.empty()) return failure;
    std::size_t live = 0;
    for (auto& v : kept) live += v.size();
    lca::TrackTotals t = lca::track_totals();
    // glibc keeps a block per thread (its TLS vector, with the cached stack of
    // the thread that exited): at most one more per thread than the loop's.
    if (t.live_blocks < static_cast<double>(live) || t.live_blocks > static_cast<double>(live + threads) ||
        t.live_bytes < static_cast<double>(live * 32))
      return "live " + std::to_string(t.live_blocks) + " blocks, expected " + std::to_string(live);
    for (auto& v : kept)
      for (void* p : v) lca_free(p);
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// Sampling: the estimates of calls and bytes of a known workload are within
// 10 % of the truth.  One sample per 2 KiB: the ~54 000 small blocks give ~3 600
// samples, so the estimate of calls has a relative error of ~1.6 % (10 % is six
// standard deviations) and that of bytes (~36 000 samples) less.
START_TEST(test_sampling_estimates_unbiased) {
  std::string err = in_child([]() -> std::string {
    const std::size_t mean = 2048;
    lca::track_start_for_test(lca::TrackMode::sample, mean);
    double truth_bytes = 0, truth_calls = 0;
    std::uint64_t x = 12345;
    std::vector<void*> live;
    for (int i = 0; i < 60000; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      // Mostly small, some medium and a few large: sizes from 8 B to 64 KiB.
      std::size_t size = (x >> 33) % 100 < 90 ? 8 + (x >> 40) % 256 : (x >> 45) % 100 < 90 ? 1024 + (x >> 20) % 8192 : 65536;
      void* p = lca_malloc(size);
      truth_bytes += static_cast<double>(size);
      truth_calls += 1;
      if (i % 16 == 0) live.push_back(p);
      else lca_free(p);
    }
    lca::TrackTotals t = lca::track_totals();
    char msg[256];
    std::snprintf(msg, sizeof msg, "estimated %.0f calls / %.0f bytes, truth %.0f / %.0f, %zu samples", t.calls,
                  t.bytes, truth_calls, truth_bytes, t.samples);
    std::printf("# %s\n", msg);
    std::fflush(stdout);
    for (void* p : live) lca_free(p);
    std::vector<void*>().swap(live);
    if (std::fabs(t.bytes - truth_bytes) > 0.10 * truth_bytes) return msg;
    if (std::fabs(t.calls - truth_calls) > 0.10 * truth_calls) return msg;
    if (t.samples < 500) return std::string("too few samples: ") + msg;
    lca::TrackTotals after = lca::track_totals();
    if (std::fabs(after.live_bytes) > 0.5) return "live bytes after freeing everything: " + std::to_string(after.live_bytes);
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

namespace {
// A thread whose first allocation is a malloc (or a realloc of `block`) of
// kFirstSize bytes: whether it was a sample (the tracker's count of samples
// grew; no other thread allocates meanwhile).
constexpr std::size_t kFirstSize = 4096;
struct FirstAllocation {
  void* block = nullptr;  // realloc this one, else malloc
  bool sampled = false;
};
__attribute__((noipa)) void* first_allocation(void* arg) {
  auto* a = static_cast<FirstAllocation*>(arg);
  std::size_t before = lca::track_totals().samples;
  void* p = a->block ? lca_realloc(a->block, kFirstSize) : lca_malloc(kFirstSize);
  a->sampled = lca::track_totals().samples > before;
  a->block = p;
  return nullptr;
}
}  // namespace

// Sampling from a thread's first allocation on: with one sample per S bytes
// on average, an allocation of S bytes is a sample with probability
// p = 1 - 1/e = 0.632, the first of a thread too.  It never was (the first
// allocation only set the thread's countdown up: a thread's first block,
// often its __thread storage, was missed), and a first realloc always was.
// 128 threads, one at a time, each starting with a malloc of S bytes, then
// 128 with a realloc: the samples among each 128 are Binomial(128, p), mean
// 80.9, standard deviation 5.5.  Accepted: 30 to 120 -- the old code's 0 (malloc)
// and 128 (realloc) are not.  On correct code, P(X < 30) = 9.5e-21 and
// P(X > 120) = 7.5e-17 (sums of the binomial terms, computed exactly): the
// test fails by chance once in 10^16 runs.
START_TEST(test_sampling_counts_a_threads_first_allocation) {
  std::string err = in_child([]() -> std::string {
    constexpr int kThreads = 128;
    std::vector<void*> old_blocks;
    for (int i = 0; i < kThreads; ++i) old_blocks.push_back(lca_malloc(64));
    lca::track_start_for_test(lca::TrackMode::sample, kFirstSize);
    std::string out;
    for (bool realloc_first : {false, true}) {
      int sampled = 0;
      for (int i = 0; i < kThreads; ++i) {
        FirstAllocation a;
        if (realloc_first) a.block = old_blocks[static_cast<std::size_t>(i)];
        pthread_t th;
        if (pthread_create(&th, nullptr, first_allocation, &a) != 0) return "pthread_create failed";
        pthread_join(th, nullptr);
        sampled += a.sampled;
        lca_free(a.block);
      }
      std::printf("# first %s of %d threads: %d samples\n", realloc_first ? "realloc" : "malloc", kThreads, sampled);
      std::fflush(stdout);
      if (sampled < 30 || sampled > 120)
        out += std::string(out.empty() ? "" : "; ") + "a thread's first " + (realloc_first ? "realloc" : "malloc") +
               " of " + std::to_string(kFirstSize) + " bytes sampled in " + std::to_string(sampled) + " of " +
               std::to_string(kThreads) + " threads (expected 30 to 120, about 81)";
    }
    return out;
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

namespace {
// Writers of path open in this process now: descriptors naming it, less
// `reader`; *last is set to the last one found.
int writers_open(const std::string& path, int reader, int* last = nullptr) {
  int n = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  while (dirent* e = readdir(dir)) {
    char link[PATH_MAX];
    std::string fd_path = std::string("/proc/self/fd/") + e->d_name;
    ssize_t len = readlink(fd_path.c_str(), link, sizeof link - 1);
    if (len <= 0 || std::atoi(e->d_name) == reader) continue;
    link[len] = 0;
    if (path != link) continue;
    ++n;
    if (last) *last = std::atoi(e->d_name);
  }
  closedir(dir);
  return n;
}

// Reads what the writers put into the FIFO `reader` until `done` says they all
// finished and the FIFO has no writer left.
std::string drain_fifo(int reader, std::mutex& m, const int& finished, int writers) {
  std::string out;
  for (;;) {
    char buf[65536];
    ssize_t n = read(reader, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    std::lock_guard<std::mutex> g(m);
    if (finished == writers && n == 0) break;
    usleep(1000);  // (0 between two writers: no writer at that moment)
  }
  return out;
}
}  // namespace

// Two profile dumps at once (the profile signal twice in a row, a signal's dump
// during the one at exit, dump_process_profile meanwhile) each opened the file
// and wrote into it: one file of two interleaved profiles.  A dump now waits
// for the one under way.  Seen through a FIFO that nobody reads: the first
// dump fills it and waits with the file open, and the second must not open it
// too; then both profiles come out whole, one after the other.
START_TEST(test_profile_dumps_do_not_overlap) {
  std::string err = in_child([]() -> std::string {
    static void* blocks[64];
    lca::track_start_for_test(lca::TrackMode::full, 0);
    // 64 stacks of 32 frames: a text profile of ~200 KB, more than a pipe holds.
    for (unsigned i = 0; i < 64; ++i) blocks[i] = walk(i, 16);
    char path[64];
    std::snprintf(path, sizeof path, "/tmp/calloc-track-fifo-%d", static_cast<int>(getpid()));
    unlink(path);
    if (mkfifo(path, 0600) != 0) return "mkfifo failed";
    int reader = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (reader < 0) return "cannot open the FIFO";
    std::mutex m;
    int finished = 0;
    bool ok[2] = {false, false};
    auto dump = [&](int k) {
      bool r = custom_alloc::dump_process_profile(path, custom_alloc::ProfileFormat::text);
      std::lock_guard<std::mutex> g(m);
      ok[k] = r;
      ++finished;
    };
    std::thread first(dump, 0);
    int open_now = 0;
    for (int i = 0; i < 10000 && open_now == 0; ++i) {
      usleep(1000);
      open_now = writers_open(path, reader);
    }
    std::thread second(dump, 1);
    int most = open_now;
    for (int i = 0; i < (test_util::running_on_valgrind() ? 250 : 50); ++i) {
      usleep(20000);
      int n = writers_open(path, reader);
      if (n > most) most = n;
    }
    std::string out = drain_fifo(reader, m, finished, 2);
    first.join();
    second.join();
    close(reader);
    unlink(path);
    for (void* p : blocks) lca_free(p);
    if (open_now != 1) return "the first dump did not open the FIFO";
    if (most != 1) return std::to_string(most) + " dumps had the file open at once";
    if (!ok[0] || !ok[1]) return "a dump failed";
    const std::string head = "libcalloc allocation profile";
    std::size_t second_head = out.find(head, 1);
    if (out.rfind(head, 0) != 0 || second_head == std::string::npos || out[second_head - 1] != '\n' ||
        out.find(head, second_head + 1) != std::string::npos)
      return "not two whole profiles one after the other";
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

namespace {
// Tracking of the process heap as LIBCALLOC_OPTIONS=profile=PATH,sample=N
// sets it up (the profile signal SIGUSR2 included), in a forked child.
void start_profile_signal(const char* path, unsigned long long sample) {
  lca::Options o{};
  std::snprintf(o.profile, sizeof o.profile, "%s", path);
  o.sample = sample;
  o.profile_signal = SIGUSR2;
  lca::track_init(o);
}

double dump_wait_seconds() { return test_util::running_on_valgrind() ? 300 : 20; }

std::string profile_in(const std::string& path) {
  std::string text = read_file(path);
  unlink(path.c_str());
  if (text.rfind("libcalloc allocation profile", 0) != 0) return "no profile in " + path + ": \"" + text.substr(0, 80) + "\"";
  return "";
}

// tests/track/ctor.c++, whose constructor does what CALLOC_TEST_CTOR says.
std::string ctor_path() {
  const char* top = std::getenv("top_builddir");
  return std::string(top && *top ? top : ".") + "/tests/track/.libs/libtrackctor.so";
}

// dlopens the constructor's object in a thread of its own, which writes 'f' to
// `entered` when dlopen fails (the constructor writes 'c' when it starts).
struct Loader {
  std::thread thread;
  void* handle = nullptr;
  std::string error;
  void start(int entered) {
    thread = std::thread([this, entered] {
      handle = dlopen(ctor_path().c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!handle) {
        const char* e = dlerror();
        error = e ? e : "dlopen failed";
        char f = 'f';
        if (write(entered, &f, 1) != 1) std::abort();
      }
    });
  }
  std::string finish() {
    thread.join();
    if (handle) dlclose(handle);
    return error;
  }
};
}  // namespace

// glibc exports stdio's list lock (GLIBC_2.2.5) without declaring it since 2.28.
extern "C" void _IO_list_lock() __attribute__((weak));
extern "C" void _IO_list_unlock() __attribute__((weak));

// The profile the signal asked for was written by the next allocation, which
// stdio may make holding a FILE's lock (a stream's buffer, printf's work
// space).  The writer used fopen and fclose, which take stdio's list lock;
// fflush(NULL) takes that lock, then each FILE's: a thread in fflush(NULL) and
// one whose fprintf allocated waited for each other for ever (a program whose
// threads print and flush hung at the 40th SIGUSR2 or so, every run).  Built
// here step by step: B holds the list lock and waits for f's, A holds f's and
// allocates with a profile requested.  Before session 17, the child hung until
// its alarm (killed by signal 14).  The profile thread (session 19) writes it
// now, without stdio still, while A and B wait for each other's locks.
START_TEST(test_profile_dump_inside_stdio_does_not_deadlock) {
  if (!_IO_list_lock || !_IO_list_unlock) TEST_SKIP("no _IO_list_lock in this C library");
  std::string err = in_child([]() -> std::string {
    std::signal(SIGALRM, SIG_DFL);  // (Check's handler would kill the test's process group)
    alarm(test_util::running_on_valgrind() ? 600 : 8);  // the deadlock: killed by SIGALRM
    char path[64];
    std::snprintf(path, sizeof path, "/tmp/calloc-track-stdio-%d.txt", static_cast<int>(getpid()));
    lca::Options o{};
    std::snprintf(o.profile, sizeof o.profile, "%s", path);
    o.sample = 1;  // every allocation
    o.profile_signal = SIGUSR2;
    lca::track_init(o);
    FILE* f = std::fopen("/dev/null", "w");
    if (!f) return "cannot open /dev/null";
    std::mutex m;
    std::condition_variable cv;
    int stage = 0;
    std::thread b([&] {  // as fflush(NULL) does: the list lock, then each FILE's
      {
        std::unique_lock<std::mutex> g(m);
        cv.wait(g, [&] { return stage == 1; });
      }
      _IO_list_lock();
      {
        std::lock_guard<std::mutex> g(m);
        stage = 2;
        cv.notify_all();  // (under the lock: DRD and helgrind ask for it)
      }
      flockfile(f);  // waits for A
      funlockfile(f);
      _IO_list_unlock();
    });
    flockfile(f);  // A: f's lock, as fprintf holds it
    {
      std::lock_guard<std::mutex> g(m);
      stage = 1;
      cv.notify_all();
    }
    {
      std::unique_lock<std::mutex> g(m);
      cv.wait(g, [&] { return stage == 2; });
    }
    usleep(100000);  // B waits for f's lock by now
    raise(SIGUSR2);
    bool written = lca::track_wait_signal_dumps_for_test(1, dump_wait_seconds());
    void* p = lca_malloc(100);  // (before session 19, this wrote the profile)
    funlockfile(f);
    b.join();
    lca_free(p);
    std::fclose(f);
    std::string bad = profile_in(path);
    if (!written) return "no profile written after the signal";
    return bad;
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// The profile the signal asks for is written by a thread of the tracker's, not
// by the next allocation: a program that makes no allocation after the signal
// gets it too (before, it never did: the request waited for a malloc or free).
START_TEST(test_profile_signal_without_further_allocation) {
  std::string err = in_child([]() -> std::string {
    char path[64];
    std::snprintf(path, sizeof path, "/tmp/calloc-track-noalloc-%d.txt", static_cast<int>(getpid()));
    start_profile_signal(path, 1);
    lca_free(lca_malloc(100));
    raise(SIGUSR2);
    // From here to the check, nothing allocates (the wait takes a mutex and sleeps).
    bool written = lca::track_wait_signal_dumps_for_test(1, dump_wait_seconds());
    std::string bad = profile_in(path);
    if (!written) return "no profile written after the signal";
    return bad;
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// The dump symbolises (dladdr), so it takes the dynamic loader's lock.  Run
// inside the next malloc, it did so under whatever lock that malloc's caller
// held: a thread holding stdout's lock (printf allocating its buffer) waited
// for the loader's lock, held by a thread in dlopen whose library's
// constructor printed, waiting for stdout's lock -- for ever.  Built step by
// step with tests/track/ctor.c++: the loader thread's constructor starts
// (dlopen holds the loader's lock), this thread holds stdout's lock, the
// constructor waits for it, the signal comes and this thread allocates.
// Before, the child hung until its alarm (killed by signal 14).
START_TEST(test_profile_signal_while_a_constructor_waits_for_stdio) {
  std::string err = in_child([]() -> std::string {
    std::signal(SIGALRM, SIG_DFL);  // (Check's handler would kill the test's process group)
    alarm(test_util::running_on_valgrind() ? 600 : 30);  // the deadlock: killed by SIGALRM
    char path[64];
    std::snprintf(path, sizeof path, "/tmp/calloc-track-ctor-stdio-%d.txt", static_cast<int>(getpid()));
    start_profile_signal(path, 1);
    int entered[2];
    if (pipe(entered) != 0) return "pipe failed";
    setenv("CALLOC_TEST_CTOR", "stdio", 1);
    setenv("CALLOC_TEST_CTOR_FD", std::to_string(entered[1]).c_str(), 1);
    flockfile(stdout);
    Loader loader;
    loader.start(entered[1]);
    char c = 0;
    if (read(entered[0], &c, 1) != 1 || c != 'c') {
      funlockfile(stdout);
      return "cannot dlopen " + ctor_path() + ": " + loader.finish();
    }
    usleep(200000);  // the constructor waits for stdout's lock by now, holding the loader's
    raise(SIGUSR2);
    void* p = lca_malloc(100);  // (before: the dump ran here and waited for the loader's lock)
    funlockfile(stdout);
    std::string dl = loader.finish();
    lca_free(p);
    close(entered[0]);
    close(entered[1]);
    bool written = lca::track_wait_signal_dumps_for_test(1, dump_wait_seconds());
    std::string bad = profile_in(path);
    if (!dl.empty()) return "dlopen failed: " + dl;
    if (!written) return "no profile written after the signal";
    return bad;
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

namespace {
struct PhdrStep {
  int go;
  void* block = nullptr;
  bool ran = false;
};
// dl_iterate_phdr's callback, with the loader's list lock held: lets the
// constructor go on, waits for it to wait for that lock, then allocates with
// a profile requested.
int allocate_in_phdr_callback(dl_phdr_info*, std::size_t, void* data) {
  auto* step = static_cast<PhdrStep*>(data);
  if (step->ran) return 1;
  step->ran = true;
  char g = 'g';
  if (write(step->go, &g, 1) != 1) std::abort();
  usleep(200000);  // the constructor waits in dl_iterate_phdr by now
  raise(SIGUSR2);
  step->block = lca_malloc(100);  // (before: the dump ran here and waited for the loader's lock)
  return 1;
}
}  // namespace

// The same with nothing but allocation on the program's side: a malloc inside
// a dl_iterate_phdr callback (which holds the loader's list lock) while another
// thread's dlopen runs a constructor that calls dl_iterate_phdr (libunwind
// does, and libgcc's unwinder did before glibc 2.35).  dlopen holds the
// loader's main lock and waits for the list lock; the dump inside the callback's
// malloc held the list lock and waited for the main lock (dladdr).  Before, the
// child hung until its alarm.
START_TEST(test_profile_signal_inside_dl_iterate_phdr) {
  std::string err = in_child([]() -> std::string {
    std::signal(SIGALRM, SIG_DFL);
    alarm(test_util::running_on_valgrind() ? 600 : 30);
    char path[64];
    std::snprintf(path, sizeof path, "/tmp/calloc-track-ctor-phdr-%d.txt", static_cast<int>(getpid()));
    start_profile_signal(path, 1);
    int entered[2], go[2];
    if (pipe(entered) != 0 || pipe(go) != 0) return "pipe failed";
    setenv("CALLOC_TEST_CTOR", "phdr", 1);
    setenv("CALLOC_TEST_CTOR_FD", std::to_string(entered[1]).c_str(), 1);
    setenv("CALLOC_TEST_CTOR_GO_FD", std::to_string(go[0]).c_str(), 1);
    Loader loader;
    loader.start(entered[1]);
    char c = 0;
    if (read(entered[0], &c, 1) != 1 || c != 'c') return "cannot dlopen " + ctor_path() + ": " + loader.finish();
    PhdrStep step{go[1]};
    dl_iterate_phdr(allocate_in_phdr_callback, &step);
    std::string dl = loader.finish();
    lca_free(step.block);
    for (int fd : {entered[0], entered[1], go[0], go[1]}) close(fd);
    bool written = lca::track_wait_signal_dumps_for_test(1, dump_wait_seconds());
    std::string bad = profile_in(path);
    if (!dl.empty()) return "dlopen failed: " + dl;
    if (!step.block) return "the callback's malloc failed";
    if (!written) return "no profile written after the signal";
    return bad;
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// A forked child has no thread of its parent's: it starts its own at its first
// allocation, and the signal sent to the child writes the child's profile
// (PATH.PID); the parent's signal still writes the parent's.  Sampling, so
// that the child's first allocation reaches the tracker only because the fork
// sent it there.
START_TEST(test_profile_signal_in_forked_child) {
  if (test_util::kTsanBuild)
    TEST_SKIP("TSan build: the child's dump starts the tracker's thread after a multi-threaded fork, which TSan "
              "does not support (it dies with exit status 66)");
  std::string err = in_child([]() -> std::string {
    char path[64];
    std::snprintf(path, sizeof path, "/tmp/calloc-track-forksig-%d.txt", static_cast<int>(getpid()));
    start_profile_signal(path, 1 << 20);
    for (int i = 0; i < 100; ++i) lca_free(lca_malloc(64 << 10));
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return "fork failed";
    if (pid == 0) {
      alarm(test_util::running_on_valgrind() ? 600 : 60);
      lca_free(lca_malloc(16));
      raise(SIGUSR2);
      bool written = lca::track_wait_signal_dumps_for_test(1, dump_wait_seconds());
      std::string bad = profile_in(std::string(path) + "." + std::to_string(getpid()));
      _exit(!written ? 2 : !bad.empty() ? 3 : 0);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    raise(SIGUSR2);
    bool written = lca::track_wait_signal_dumps_for_test(1, dump_wait_seconds());
    std::string bad = profile_in(path);
    unlink((std::string(path) + "." + std::to_string(pid)).c_str());
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      return "the child: " + std::string(WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                          : WEXITSTATUS(status) == 2 ? "no profile written after the signal"
                                                                     : "exit " + std::to_string(WEXITSTATUS(status)));
    if (!written) return "the parent: no profile written after the signal";
    return bad;
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// The reports at exit answer every request made until then: after them, the
// signal writes nothing (the profile thread may still run while the rest of
// the process's destructors do).  Before, a signal after the exit reports had
// the next allocation write the profile again.
START_TEST(test_profile_signal_after_exit_reports_writes_nothing) {
  std::string err = in_child([]() -> std::string {
    char path[64];
    std::snprintf(path, sizeof path, "/tmp/calloc-track-exitsig-%d.txt", static_cast<int>(getpid()));
    start_profile_signal(path, 1);
    lca_free(lca_malloc(100));
    lca::track_at_exit();  // what the library's destructor does
    std::string bad = profile_in(path);
    if (!bad.empty()) return "the exit report: " + bad;
    raise(SIGUSR2);
    lca_free(lca_malloc(100));  // (before: the profile was written here)
    bool written = lca::track_wait_signal_dumps_for_test(1, test_util::running_on_valgrind() ? 5 : 1);
    struct stat st;
    bool exists = stat(path, &st) == 0;
    unlink(path);
    if (written || exists) return "a profile was written after the reports at exit";
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// A report's file is opened close-on-exec, as every other file libcalloc
// opens: a program that runs another (fork and exec, posix_spawn, system) while
// a thread writes a report gave it the report's descriptor.  The dump is held
// in the middle by a FIFO that nobody reads, and its descriptor's flags read.
START_TEST(test_report_file_is_close_on_exec) {
  std::string err = in_child([]() -> std::string {
    static void* blocks[64];
    lca::track_start_for_test(lca::TrackMode::full, 0);
    for (unsigned i = 0; i < 64; ++i) blocks[i] = walk(i, 16);  // a profile larger than a pipe holds
    char path[64];
    std::snprintf(path, sizeof path, "/tmp/calloc-track-cloexec-%d", static_cast<int>(getpid()));
    unlink(path);
    if (mkfifo(path, 0600) != 0) return "mkfifo failed";
    int reader = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (reader < 0) return "cannot open the FIFO";
    std::mutex m;
    int finished = 0;
    std::thread writer([&] {
      custom_alloc::dump_process_profile(path, custom_alloc::ProfileFormat::text);
      std::lock_guard<std::mutex> g(m);
      ++finished;
    });
    int fd = -1;
    for (int i = 0; i < 10000 && fd < 0; ++i) {
      usleep(1000);
      writers_open(path, reader, &fd);
    }
    std::string flags;
    if (fd >= 0) {
      std::ifstream info("/proc/self/fdinfo/" + std::to_string(fd));
      for (std::string line; std::getline(info, line);)
        if (line.rfind("flags:", 0) == 0) flags = line.substr(6);
    }
    drain_fifo(reader, m, finished, 1);
    writer.join();
    close(reader);
    unlink(path);
    for (void* p : blocks) lca_free(p);
    if (fd < 0) return "the dump did not open the FIFO";
    if (flags.empty()) return "no flags in /proc/self/fdinfo";
    if (!(std::stoul(flags, nullptr, 8) & O_CLOEXEC)) return "the report's descriptor is not close-on-exec: flags" + flags;
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST

// Sampling keeps calloc's fresh pages untouched: a large calloc, sampled or
// not, is zero-filled without writing the pages of a fresh mapping (with a
// memset of every large calloc while sampling, 64 MiB of calloc made 64 MiB
// resident).  Sampled: one sample per 4 KiB (a 64 MiB block always is);
// unsampled: one per 2^40 bytes.  The resident size is not checked under
// Valgrind nor in ASan builds (Valgrind mode and ASan mode, which is Valgrind
// mode with ASan's shadow, write a calloc's block) nor TSan's (its own
// allocator state): there only the zeros are.
START_TEST(test_sampling_keeps_calloc_pages_untouched) {
  for (std::size_t mean : {std::size_t{4096}, std::size_t{1} << 40}) {
    std::string err = in_child([mean]() -> std::string {
      lca::track_start_for_test(lca::TrackMode::sample, mean);
      constexpr std::size_t kBytes = std::size_t{64} << 20;
      std::size_t before = test_util::rss_bytes();
      std::size_t samples = lca::track_totals().samples;
      auto* p = static_cast<unsigned char*>(lca_calloc(1, kBytes));
      if (!p) return "calloc failed";
      std::size_t grown = test_util::rss_bytes() - before;
      bool sampled = lca::track_totals().samples > samples;
      for (std::size_t i = 0; i < kBytes; i += 1 << 20)
        if (p[i] != 0 || p[i + 4095] != 0) return "calloc's block is not zero at " + std::to_string(i);
      lca_free(p);
      if (sampled != (mean == 4096))
        return std::string("the 64 MiB calloc was ") + (sampled ? "" : "not ") + "sampled at one sample per " +
               std::to_string(mean) + " bytes";
      bool rss_meaningful = !test_util::running_on_valgrind() && !test_util::kAsanBuild && !test_util::kTsanBuild;
      if (rss_meaningful && grown > (std::size_t{8} << 20))
        return "a " + std::string(sampled ? "sampled" : "unsampled") + " 64 MiB calloc made " +
               std::to_string(grown >> 10) + " KiB resident";
      return "";
    });
    ck_assert_msg(err.empty(), "%s", err.c_str());
  }
}
END_TEST

#if CALLOC_SECURE
// --enable-secure with --enable-tracking: the process heap is the secure heap,
// and the tracker sees it.  Every block -- tracked in full mode, sampled or not,
// aligned, calloc'd, moved by realloc -- is a secure block (secure_owns), and a
// thread's first aligned allocation with tracking off too (its countdown starts
// at 0, so it reaches track_malloc, which once took its block from the core
// heap: no canary, no alignment check on free).  A block freed through
// MemoryAllocator::instance() leaves the tracker too.  A tracked block keeps the
// secure heap's checks: an overflow into its canary and a double free abort.
START_TEST(test_secure_heap_is_tracked) {
  std::string err = in_child([]() -> std::string {
    std::string failure;
    lca::track_start_for_test(lca::TrackMode::off, 0);  // as in a program without LIBCALLOC_OPTIONS
    std::thread([&] {
      void* a = lca_aligned_alloc(64, 100);
      if (!lca::secure_owns(a)) failure = "with tracking off, a thread's first aligned block is not secure";
      lca_free(a);
    }).join();
    if (!failure.empty()) return failure;
    lca::track_start_for_test(lca::TrackMode::full, 0);
    void* p = process_leak(100);
    void* a = lca_aligned_alloc(4096, 200);
    auto* c = static_cast<unsigned char*>(lca_calloc(50, 100));
    void* q = lca_realloc(lca_malloc(10), 30000);
    for (void* b : {p, a, static_cast<void*>(c), q})
      if (!lca::secure_owns(b)) return "full mode: a block is not the secure heap's";
    for (int i = 0; i < 5000; ++i)
      if (c[i] != 0) return "calloc's block is not zero";
    lca::TrackTotals t = lca::track_totals();
    if (t.live_blocks != 4 || t.live_bytes != 100 + 200 + 5000 + 30000 || t.calls != 5)
      return "full mode: live " + std::to_string(t.live_blocks) + " blocks, " + std::to_string(t.live_bytes) +
             " bytes, " + std::to_string(t.calls) + " calls";
    for (void* b : {p, a, static_cast<void*>(c)}) lca_free(b);
    MemoryAllocator::instance().deallocate(q);  // the process heap too: the tracker forgets q
    t = lca::track_totals();
    if (t.live_blocks != 0 || t.live_bytes != 0) return "full mode: not all freed: " + std::to_string(t.live_bytes);
    lca::track_start_for_test(lca::TrackMode::sample, 4096);
    std::size_t samples = lca::track_totals().samples;
    std::vector<void*> blocks;
    for (int i = 0; i < 2000; ++i) blocks.push_back(lca_malloc(64 + static_cast<std::size_t>(i % 7) * 100));
    for (void*& b : blocks) b = lca_realloc(b, 500);
    bool all_secure = true;
    for (void* b : blocks) all_secure = all_secure && lca::secure_owns(b);
    for (void* b : blocks) lca_free(b);
    std::vector<void*>().swap(blocks);  // its buffer may be a sample too
    if (!all_secure) return "sample mode: a block is not the secure heap's";
    t = lca::track_totals();
    if (t.samples - samples < 50) return "sample mode: " + std::to_string(t.samples - samples) + " samples";
    if (std::fabs(t.live_bytes) > 0.5) return "sample mode: live bytes after freeing all: " + std::to_string(t.live_bytes);
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
  test_util::DeathResult r = test_util::expect_death(
      [] {
        lca::track_start_for_test(lca::TrackMode::full, 0);
        auto* p = static_cast<char*>(process_leak(24));
        test_util::launder(p)[24] = 'x';  // the canary right after the block
        lca_free(p);
      },
      "Canary corrupted");
  ck_assert_msg(r.ok(), "overflow of a tracked block: %s", r.description.c_str());
  r = test_util::expect_death(
      [] {
        lca::track_start_for_test(lca::TrackMode::full, 0);
        void* p = process_leak(24);
        lca_free(p);
        lca_free(test_util::launder(p));
      },
      "Double free");
  ck_assert_msg(r.ok(), "double free of a tracked block: %s", r.description.c_str());
}
END_TEST

// With --enable-secure: a free asks the tracker (a lookup in its block table)
// only when the secure heap's slot carries the tracked mark, which the tracker
// sets when it records a block and clears when it forgets a live one (realloc);
// frees of tracked blocks from another thread, after realloc (in place, moved,
// MemoryAllocator's) and of large blocks still leave the totals exact.
START_TEST(test_secure_free_asks_only_for_tracked_blocks) {
  std::string err = in_child([]() -> std::string {
    constexpr int kN = 2000;
    static void* blocks[kN];  // not a vector: its buffer could be a sample too
    auto lookups = [] { return lca::track_lookups_for_test(); };
    // Sampling: the marked blocks are the samples, and only their frees look.
    lca::track_start_for_test(lca::TrackMode::sample, 4096);
    std::size_t samples = lca::track_totals().samples;
    for (int i = 0; i < kN; ++i) blocks[i] = lca_malloc(64 + static_cast<std::size_t>(i % 7) * 100);
    std::size_t marked = 0;
    for (void* b : blocks) {
      int m = lca::secure_tracked(b);
      if (m < 0) return "sampling: a block is not a live secure block";
      marked += static_cast<std::size_t>(m);
    }
    if (marked != lca::track_totals().samples - samples || marked < 50)
      return "sampling: " + std::to_string(marked) + " blocks marked, " +
             std::to_string(lca::track_totals().samples - samples) + " samples";
    std::uint64_t before = lookups();
    for (void* b : blocks) lca_free(b);
    if (lookups() - before != marked)
      return "sampling: " + std::to_string(kN) + " frees made " + std::to_string(lookups() - before) +
             " lookups for " + std::to_string(marked) + " tracked blocks";
    if (std::fabs(lca::track_totals().live_bytes) > 0.5) return "sampling: live bytes left";

    // Full mode: every block marked; freed by another thread, each free looks once.
    lca::track_start_for_test(lca::TrackMode::full, 0);
    constexpr int kT = 200;
    std::atomic<int> phase{0};
    std::uint64_t their_lookups = 0;
    std::thread t([&] {
      while (phase.load() != 1) std::this_thread::yield();
      std::uint64_t l0 = lookups();
      for (int i = 0; i < kT; ++i) lca_free(blocks[i]);
      their_lookups = lookups() - l0;
      phase.store(2);
      while (phase.load() != 3) std::this_thread::yield();
    });
    double bytes = 0;
    for (int i = 0; i < kT; ++i) {
      blocks[i] = lca_malloc(100 + static_cast<std::size_t>(i));
      bytes += 100 + i;
      if (lca::secure_tracked(blocks[i]) != 1) return "full mode: a block is not marked";
    }
    lca::TrackTotals t1 = lca::track_totals();
    phase.store(1);
    while (phase.load() != 2) std::this_thread::yield();
    lca::TrackTotals t2 = lca::track_totals();
    phase.store(3);
    t.join();
    if (their_lookups != kT || t1.live_blocks - t2.live_blocks != kT || t1.live_bytes - t2.live_bytes != bytes)
      return "full mode, freed by another thread: " + std::to_string(their_lookups) + " lookups, " +
             std::to_string(t1.live_blocks - t2.live_blocks) + " blocks and " +
             std::to_string(t1.live_bytes - t2.live_bytes) + " bytes forgotten";

    // realloc in full mode: in place (104 and 100 bytes share a class) and moved,
    // both recorded and marked; a large block too.
    void* p = lca_malloc(100);
    void* q = lca_realloc(p, 104);
    if (q != p || lca::secure_tracked(q) != 1) return "full mode: realloc in place lost the mark";
    void* r = lca_realloc(q, 5000);
    if (r == q || lca::secure_tracked(r) != 1 || lca::secure_tracked(q) != -1) return "full mode: realloc that moves";
    void* big = lca_malloc(200000);
    if (lca::secure_tracked(big) != 1) return "full mode: a large block is not marked";
    t1 = lca::track_totals();
    before = lookups();
    lca_free(big);
    t2 = lca::track_totals();
    if (lookups() - before != 1 || t1.live_bytes - t2.live_bytes != 200000) return "full mode: a large block's free";

    // Then sampling with an interval out of reach: a realloc in place forgets
    // the block (record and mark), whose free then asks nothing; the same for
    // MemoryAllocator::reallocate.
    void* m = lca_malloc(100);
    lca::track_start_for_test(lca::TrackMode::sample, std::size_t{1} << 50);
    t1 = lca::track_totals();
    void* r2 = lca_realloc(r, 5008);
    void* m2 = MemoryAllocator::instance().reallocate(m, 104);
    t2 = lca::track_totals();
    if (r2 != r || m2 != m) return "realloc did not stay in place";
    if (lca::secure_tracked(r2) != 0 || lca::secure_tracked(m2) != 0) return "realloc in place kept the mark";
    if (t1.live_bytes - t2.live_bytes != 5000 + 100) return "realloc in place: the records stay";
    before = lookups();
    lca_free(r2);
    lca_free(m2);
    if (lookups() != before) return "frees of forgotten blocks looked";
    if (std::fabs(lca::track_totals().live_bytes - t2.live_bytes) > 0.5) return "live bytes changed";
    return "";
  });
  ck_assert_msg(err.empty(), "%s", err.c_str());
}
END_TEST
#endif

// The leak report's line tables (parse_line_tables): a DWARF 5 unit whose header
// names an address size over 8 bytes is rejected -- no file or line from it --
// and the units after it still read.  Before, DW_LNE_set_address read the
// address with shifts by 64 and more (undefined; x86-64 masks the count, so the
// 16-byte address below read as its low 8 bytes and the unit was used).  A
// crafted .debug_line: one unit for [0x1000, 0x1010) at line 42 of crafted.c,
// address size `asize` (its set_address operand asize bytes, the value in the
// low 8), then one for [0x2000, 0x2010) at line 7 with 8-byte addresses.
namespace dwarf {

void put_unit(std::vector<unsigned char>& out, unsigned asize, std::uint64_t addr, int line) {
  std::vector<unsigned char> hdr = {
      1,           // minimum_instruction_length
      1,           // maximum_operations_per_instruction
      1,           // default_is_stmt
      0xfb,        // line_base -5
      14,          // line_range
      13,          // opcode_base
      0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1,  // standard_opcode_lengths
      1, 1, 0x08,  // directory entry format: DW_LNCT_path, DW_FORM_string
      1, '/', 's', 'r', 'c', 0,  // one directory
      1, 1, 0x08,  // file entry format: DW_LNCT_path, DW_FORM_string
      2, 'a', '.', 'c', 0, 'c', 'r', 'a', 'f', 't', 'e', 'd', '.', 'c', 0,  // files 0 and 1
  };
  std::vector<unsigned char> prog = {0, static_cast<unsigned char>(1 + asize), 2};  // DW_LNE_set_address
  for (unsigned i = 0; i < asize; ++i) prog.push_back(i < 8 ? static_cast<unsigned char>(addr >> (8 * i)) : 0);
  prog.push_back(3);  // advance_line (sleb, < 64)
  prog.push_back(static_cast<unsigned char>(line - 1));
  prog.push_back(1);  // copy
  prog.push_back(2);  // advance_pc 16
  prog.push_back(16);
  prog.insert(prog.end(), {0, 1, 1});  // DW_LNE_end_sequence
  std::vector<unsigned char> unit = {5, 0, static_cast<unsigned char>(asize), 0};  // version 5, sizes
  auto le32 = [](std::vector<unsigned char>& v, std::size_t n) {
    for (int i = 0; i < 4; ++i) v.push_back(static_cast<unsigned char>(n >> (8 * i)));
  };
  le32(unit, hdr.size());  // header_length
  unit.insert(unit.end(), hdr.begin(), hdr.end());
  unit.insert(unit.end(), prog.begin(), prog.end());
  le32(out, unit.size());  // unit_length
  out.insert(out.end(), unit.begin(), unit.end());
}

}  // namespace dwarf

START_TEST(test_line_table_address_size_over_8) {
  for (unsigned asize : {4u, 8u, 9u, 16u, 255u}) {
    std::vector<unsigned char> sec;
    dwarf::put_unit(sec, asize, 0x1000, 42);
    dwarf::put_unit(sec, 8, 0x2000, 7);
    const char* file = nullptr;
    std::uint32_t line = 0;
    bool found = lca::track_line_for_test(sec.data(), sec.size(), 0x1004, &file, &line);
    if (asize <= 8) {
      ck_assert_msg(found, "address size %u: 0x1004 has no line", asize);
      ck_assert_str_eq(file, "crafted.c");
      ck_assert_uint_eq(line, 42);
    } else {
      ck_assert_msg(!found, "address size %u: the unit was read (0x1004 at %s:%u)", asize, file, line);
    }
    file = nullptr, line = 0;
    ck_assert_msg(lca::track_line_for_test(sec.data(), sec.size(), 0x2008, &file, &line),
                  "address size %u: the next unit was not read", asize);
    ck_assert_str_eq(file, "crafted.c");
    ck_assert_uint_eq(line, 7);
  }
}
END_TEST

int main() {
  TCase* tc;
  Suite* s = test_util::make_suite("track", &tc);
  tcase_add_test(tc, test_detects_memory_leak);
  tcase_add_test(tc, test_identifies_hot_sites);
  tcase_add_test(tc, test_report_names_leaking_function);
  tcase_add_test(tc, test_bad_input_loses_nothing);
  tcase_add_test(tc, test_threads_keep_exact_totals);
  tcase_add_test(tc, test_global_tracker);
  tcase_add_test(tc, test_options_parse_tracking);
  tcase_add_test(tc, test_options_leak_report_and_profile_in_one_file);
  tcase_add_test(tc, test_leak_summary_words);
  tcase_add_test(tc, test_leak_report_sets_glibc_thread_storage_apart);
  tcase_add_test(tc, test_leak_report_sets_dlopen_records_apart);
  tcase_add_test(tc, test_leak_report_sets_dlerror_buffers_apart);
  tcase_add_test(tc, test_symbol_name_of_function_entry_plus_one);
  tcase_add_test(tc, test_options_refuse_unusable_profile_signals);
  tcase_add_test(tc, test_process_heap_full_tracking);
  tcase_add_test(tc, test_module_blocks_realloc_untracked);
  tcase_add_test(tc, test_process_heap_threads_and_fork);
  tcase_add_test(tc, test_sampling_estimates_unbiased);
  tcase_add_test(tc, test_sampling_counts_a_threads_first_allocation);
  tcase_add_test(tc, test_many_stacks_grow_the_site_index);
  tcase_add_test(tc, test_threads_intern_stacks_at_once);
  tcase_add_test(tc, test_profile_dumps_do_not_overlap);
  tcase_add_test(tc, test_report_file_is_close_on_exec);
  tcase_add_test(tc, test_profile_dump_inside_stdio_does_not_deadlock);
  tcase_add_test(tc, test_profile_signal_without_further_allocation);
  tcase_add_test(tc, test_profile_signal_while_a_constructor_waits_for_stdio);
  tcase_add_test(tc, test_profile_signal_inside_dl_iterate_phdr);
  tcase_add_test(tc, test_profile_signal_in_forked_child);
  tcase_add_test(tc, test_profile_signal_after_exit_reports_writes_nothing);
  tcase_add_test(tc, test_sampling_keeps_calloc_pages_untouched);
  tcase_add_test(tc, test_line_table_address_size_over_8);
#if CALLOC_SECURE
  tcase_add_test(tc, test_secure_heap_is_tracked);
  tcase_add_test(tc, test_secure_free_asks_only_for_tracked_blocks);
#endif
  return test_util::run_suite(s);
}
