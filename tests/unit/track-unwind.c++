// tests/unit/track-unwind.c++ -- the "track-unwind" suite: stack capture for
// allocation tracking (src/track-unwind.c++; configure --enable-tracking).
//
// Our frame walker (unwind_capture_ours) must list the same return addresses
// as libunwind's unw_step loop (unwind_capture_step), captured from the same
// frame, on every shape of frame: deep recursion; functions built with and
// without frame pointers; alloca and VLA frames; a dlopen'ed library's frames
// (with and without a build ID: tables read from its file, or in place; and
// a library whose file was replaced on disk after dlopen); many distinct call sites (the cache grows); threads (more than cores)
// walking at once through the shared cache.  A frame from a signal handler is
// one our walker does not model: it must say so (-1), and unwind_capture's
// fallback must still give the frames above the handler; so is a stack of its
// own (makecontext), which lies outside the thread's stack bounds.  fork
// while other threads walk leaves the child able to walk.  After dlclose of a
// library and dlopen of another at the same address, whose frame at the same
// return address has another size, the cache must not serve the old rule.
// The shapes live in tests/track/unwind-shapes.c++, built four ways
// (tests/local.mk) and dlopen'ed from $top_builddir/tests/track/.libs.
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <dlfcn.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include <libcalloc.h>

#include "track-unwind.h++"

#include "../test-util.h++"

using test_util::scaled;

namespace {

using ShapeCb = void (*)(void*);

constexpr int kMax = 48;

// Both captures, made from one frame (this one, so their first frames are
// return addresses into it, at two call sites: compared by function, the rest
// exactly).
struct Both {
  void* ours[lca::kUnwindMaxFrames];
  void* step[lca::kUnwindMaxFrames];
  void* full[lca::kUnwindMaxFrames];
  int n_ours = 0, n_step = 0, n_full = 0;
};

__attribute__((noinline)) void capture_both(void* arg) {
  auto* b = static_cast<Both*>(arg);
  b->n_ours = lca::unwind_capture_ours(b->ours, kMax);
  b->n_step = lca::unwind_capture_step(b->step, kMax);
  b->n_full = lca::unwind_capture(b->full, kMax);
  asm volatile("" ::: "memory");
}

bool same_function(void* a, void* b) {
  Dl_info da, db;
  if (!dladdr(a, &da) || !dladdr(b, &db)) return false;
  return da.dli_saddr == db.dli_saddr;
}

// "" when the stacks agree, else what differs.
std::string compare(const Both& b, bool check_full = true) {
  char msg[512];
  if (b.n_step < 0) return "";  // no libunwind: checked by the caller
  if (b.n_ours != b.n_step) {
    std::snprintf(msg, sizeof msg, "ours has %d frames, unw_step %d", b.n_ours, b.n_step);
    return msg;
  }
  if (b.n_ours < 3) return "fewer than 3 frames";
  if (!same_function(b.ours[0], b.step[0])) return "frame 0 not in capture_both";
  for (int i = 1; i < b.n_ours; ++i)
    if (b.ours[i] != b.step[i]) {
      std::snprintf(msg, sizeof msg, "frame %d: ours %p, unw_step %p", i, b.ours[i], b.step[i]);
      return msg;
    }
  if (check_full) {
    if (b.n_full != b.n_ours) return "unwind_capture's frame count differs";
    for (int i = 1; i < b.n_full; ++i)
      if (b.full[i] != b.ours[i]) return "unwind_capture's frames differ";
  }
  return "";
}

std::string shape_path(const char* name) {
  const char* top = std::getenv("top_builddir");
  return std::string(top && *top ? top : ".") + "/tests/track/.libs/libunwindshape-" + name + ".so";
}

struct Shapes {
  void* handle = nullptr;
  int (*recurse)(int, ShapeCb, void*) = nullptr;
  int (*alloca_frame)(std::size_t, ShapeCb, void*) = nullptr;
  int (*vla)(std::size_t, ShapeCb, void*) = nullptr;
  int (*frame)(ShapeCb, void*) = nullptr;
  int (*mixed)(int, ShapeCb, void*) = nullptr;

  bool open(const char* name) {
    handle = dlopen(shape_path(name).c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) return false;
    recurse = reinterpret_cast<int (*)(int, ShapeCb, void*)>(dlsym(handle, "shape_recurse"));
    alloca_frame = reinterpret_cast<int (*)(std::size_t, ShapeCb, void*)>(dlsym(handle, "shape_alloca"));
    vla = reinterpret_cast<int (*)(std::size_t, ShapeCb, void*)>(dlsym(handle, "shape_vla"));
    frame = reinterpret_cast<int (*)(ShapeCb, void*)>(dlsym(handle, "shape_frame"));
    mixed = reinterpret_cast<int (*)(int, ShapeCb, void*)>(dlsym(handle, "shape_mixed"));
    return recurse && alloca_frame && vla && frame && mixed;
  }
  void close() {
    if (handle) dlclose(handle);
    handle = nullptr;
  }
};

bool have_libunwind() {
  void* f[4];
  return lca::unwind_capture_step(f, 4) >= 0;
}

bool running_on_valgrind_() { return test_util::running_on_valgrind(); }

#define REQUIRE_WALKER()                                                         \
  do {                                                                           \
    void* probe_[4];                                                             \
    if (lca::unwind_capture_ours(probe_, 4) < 0 && !running_on_valgrind_())      \
      ck_abort_msg("our walker cannot walk a plain stack");                      \
    if (!have_libunwind()) TEST_SKIP("libunwind (libunwind.so.8) cannot be loaded"); \
  } while (0)

// --- shapes in the program itself ----------------------------------------------

__attribute__((noinline)) int recurse_here(int depth, Both* b) {
  volatile int here = depth;
  if (depth <= 0)
    capture_both(b);
  else
    (void)recurse_here(depth - 1, b);
  return here + 1;
}

START_TEST(test_matches_unw_step_deep_recursion) {
  REQUIRE_WALKER();
  for (int depth : {0, 5, 20, 60}) {  // 60: deeper than kMax, the capture is cut
    Both b;
    recurse_here(depth, &b);
    std::string why = compare(b);
    ck_assert_msg(why.empty(), "depth %d: %s", depth, why.c_str());
    if (depth == 60) ck_assert_int_eq(b.n_ours, kMax);
  }
}
END_TEST

START_TEST(test_matches_unw_step_in_shapes) {
  REQUIRE_WALKER();
  for (const char* lib : {"fp", "nofp", "nobid"}) {
    Shapes s;
    if (!s.open(lib)) TEST_SKIP("cannot dlopen %s: %s", shape_path(lib).c_str(), dlerror());
    struct Case {
      const char* what;
      Both b;
    } cases[5];
    cases[0].what = "recursion";
    s.recurse(12, capture_both, &cases[0].b);
    cases[1].what = "alloca";
    s.alloca_frame(1000, capture_both, &cases[1].b);
    cases[2].what = "VLA";
    s.vla(333, capture_both, &cases[2].b);
    cases[3].what = "fixed frame";
    s.frame(capture_both, &cases[3].b);
    cases[4].what = "alloca and VLA chain";
    s.mixed(9, capture_both, &cases[4].b);
    for (const Case& c : cases) {
      std::string why = compare(c.b);
      ck_assert_msg(why.empty(), "%s build, %s: %s", lib, c.what, why.c_str());
      // The library's frames are in the stack.
      Dl_info d;
      ck_assert(dladdr(c.b.ours[1], &d) && std::strstr(d.dli_fname, "libunwindshape-"));
    }
    s.close();
  }
}
END_TEST

// Many distinct call sites: the cache grows past its first table (512 slots,
// grown at half full), and stays right.
template <int N>
__attribute__((noinline)) void site(Both* b) {
  capture_both(b);
  asm volatile("" ::: "memory");
}
template <int... I>
void all_sites(std::integer_sequence<int, I...>, std::string* why) {
  (
      [&] {
        Both b;
        site<I>(&b);
        if (why->empty()) *why = compare(b);
      }(),
      ...);
}

START_TEST(test_cache_grows_and_stays_right) {
  REQUIRE_WALKER();
  lca::UnwindStats before = lca::unwind_stats();
  std::string why;
  all_sites(std::make_integer_sequence<int, 400>(), &why);
  ck_assert_msg(why.empty(), "%s", why.c_str());
  // Again: now from the cache.
  all_sites(std::make_integer_sequence<int, 400>(), &why);
  ck_assert_msg(why.empty(), "second pass: %s", why.c_str());
  lca::UnwindStats after = lca::unwind_stats();
  ck_assert_uint_ge(after.entries, 400);
  ck_assert_uint_ge(after.bytes, 8192);  // grown at least once
  ck_assert_uint_le(after.bytes, 64 * 1024);
  ck_assert_uint_gt(after.hits - before.hits, 400 * 3);
}
END_TEST

// Threads, more than cores, walk through the shared cache at once, while it
// grows and while another thread dlopens and dlcloses (flushes).
START_TEST(test_threads_walk_at_once) {
  REQUIRE_WALKER();
  Shapes s;
  if (!s.open("nofp")) TEST_SKIP("cannot dlopen the nofp shapes: %s", dlerror());
  std::atomic<int> bad{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < 6; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < static_cast<int>(scaled(300)); ++i) {
        Both b;
        if (i % 3 == 0)
          recurse_here(t + i % 7, &b);
        else if (i % 3 == 1)
          s.mixed(1 + i % 6, capture_both, &b);
        else
          s.recurse(i % 9, capture_both, &b);
        if (!compare(b).empty()) bad.fetch_add(1);
      }
    });
  std::thread churn([&] {
    while (!stop.load()) {
      Shapes other;
      if (other.open("fp")) other.close();
    }
  });
  for (auto& t : ts) t.join();
  stop = true;
  churn.join();
  s.close();
  ck_assert_int_eq(bad.load(), 0);
}
END_TEST

// dlclose of big1, dlopen of big2 (the same code, but shape_frame's frame is
// 1 KiB instead of 256 bytes): at the same address, the same return address
// now needs another rule.  big1's stack is captured until the cache serves it
// whole (no miss: a miss's dl_iterate_phdr would notice the change on its
// own), so big2's capture meets big1's rule at that address as a cache hit,
// which only the walk's generation check may refuse (with the check removed
// from walk_frames, this test fails: big1's rule walks big2's frame wrong).
START_TEST(test_dlclose_dlopen_same_address_not_stale) {
  REQUIRE_WALKER();
  Shapes a;
  if (!a.open("big1")) TEST_SKIP("cannot dlopen big1: %s", dlerror());
  Both b1;
  lca::UnwindStats warm{};
  for (int i = 0; i < 4; ++i) {
    warm = lca::unwind_stats();
    a.frame(capture_both, &b1);
    ck_assert_msg(compare(b1).empty(), "big1, capture %d: %s", i, compare(b1).c_str());
  }
  lca::UnwindStats before = lca::unwind_stats();
  ck_assert_uint_eq(before.misses, warm.misses);  // the last captures were all hits
  void* ra1 = b1.ours[1];  // the return address into big1's shape_frame
  Dl_info d1;
  ck_assert(dladdr(ra1, &d1));
  auto base1 = reinterpret_cast<std::uintptr_t>(d1.dli_fbase);
  a.close();
  Shapes c;
  ck_assert_msg(c.open("big2"), "cannot dlopen big2: %s", dlerror());
  Both b2;
  c.frame(capture_both, &b2);
  std::string why = compare(b2);
  ck_assert_msg(why.empty(), "big2 after big1: %s", why.c_str());
  lca::UnwindStats after = lca::unwind_stats();
  ck_assert_uint_gt(after.flushes, before.flushes);
  Dl_info d2;
  ck_assert(dladdr(b2.ours[1], &d2));
  bool same = reinterpret_cast<std::uintptr_t>(d2.dli_fbase) == base1 && b2.ours[1] == ra1;
  c.close();
  if (!same) TEST_SKIP("big2 was not loaded at big1's address with the same return address (checked only that it walks)");
}
END_TEST

// Captures from one call site (so that its return addresses are cached once).
__attribute__((noinline)) void capture_n(int times) {
  for (int i = 0; i < times; ++i) {
    void* f[kMax];
    ck_assert_int_gt(lca::unwind_capture_ours(f, kMax), 2);
  }
  asm volatile("" ::: "memory");
}

// Which walks pay the generation check (one dl_iterate_phdr, the loader's
// lock): a stack of the program's own frames and its startup libraries' (the
// usual one) is served by the cache with no check and no miss once warm; a
// stack through a dlopen'ed library, however many of its frames, costs one
// check a capture.
START_TEST(test_generation_check_only_for_dlopened_frames) {
  REQUIRE_WALKER();
  const int n = static_cast<int>(scaled(50));
  lca::UnwindStats s0{};
  volatile int rounds = 2;  // not unrolled: one call site
  for (int round = 0; round < rounds; ++round) {  // warm, then counted
    if (round == 1) s0 = lca::unwind_stats();
    capture_n(round == 0 ? 3 : n);
  }
  lca::UnwindStats s1 = lca::unwind_stats();
  ck_assert_uint_eq(s1.checks, s0.checks);
  ck_assert_uint_eq(s1.misses, s0.misses);
  ck_assert_uint_eq(s1.flushes, s0.flushes);

  Shapes s;
  if (!s.open("nofp")) TEST_SKIP("cannot dlopen the nofp shapes: %s", dlerror());
  auto ours_only = [](void* arg) {
    auto* out = static_cast<int*>(arg);
    void* fr[kMax];
    *out = lca::unwind_capture_ours(fr, kMax);
  };
  int got = 0;
  lca::UnwindStats s2{};
  for (int i = 0; i < 3 + n; ++i) {  // warm (misses, then hits), then counted
    if (i == 3) s2 = lca::unwind_stats();
    s.recurse(4, ours_only, &got);  // five frames in the library
    ck_assert_int_gt(got, 6);
  }
  lca::UnwindStats s3 = lca::unwind_stats();
  s.close();
  ck_assert_uint_eq(s3.misses, s2.misses);
  ck_assert_uint_eq(s3.checks - s2.checks, static_cast<std::uint64_t>(n));
}
END_TEST

// A dlopen and a dlclose empty the cache of the rules that may be stale only:
// the program's own stack stays cached (before, every rule went, and each
// stack was parsed again after each dlclose of a plugin).  The flush happens
// at the first walk through the dlopen'ed library (its generation check);
// after it and the dlclose, the warm stack of capture_n still misses nothing.
START_TEST(test_flush_keeps_startup_rules) {
  REQUIRE_WALKER();
  const int n = static_cast<int>(scaled(20));
  volatile int rounds = 3;  // not unrolled: capture_n has one call site
  lca::UnwindStats s0{}, s1{};
  for (int round = 0; round < rounds; ++round) {
    if (round == 1) {
      Shapes s;
      if (!s.open("nofp")) TEST_SKIP("cannot dlopen the nofp shapes: %s", dlerror());
      s0 = lca::unwind_stats();
      int got = 0;
      s.recurse(2, [](void* arg) {
        void* fr[kMax];
        *static_cast<int*>(arg) = lca::unwind_capture_ours(fr, kMax);
      }, &got);
      ck_assert_int_gt(got, 4);
      s.close();
      s1 = lca::unwind_stats();
      continue;
    }
    capture_n(round == 0 ? 3 : n);  // warm, then counted
  }
  lca::UnwindStats s2 = lca::unwind_stats();
  ck_assert_uint_gt(s1.flushes, s0.flushes);  // the dlopen was seen
  // capture_n's rules kept: with every rule emptied, each of this stack's
  // frames misses once (9 here).  Not 0 exactly: a kept rule entered while a
  // rule that may be stale (left by an earlier test when Check does not fork)
  // held its slot lies further along its probe sequence, and misses once
  // after that slot is emptied (check_generation).
  ck_assert_uint_le(s2.misses - s1.misses, 2);
  ck_assert_uint_eq(s2.checks, s1.checks);
}
END_TEST

// The file of a loaded library replaced on disk (rename, as package managers
// do): its tables are read from the mapping, not from the new file, whose
// build ID differs (big2's tables in big1's place would give shape_frame's
// frame 768 bytes too many).
START_TEST(test_replaced_file_not_read) {
  REQUIRE_WALKER();
  char dir[] = "/tmp/calloc-track-unwind.XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  std::string lib = std::string(dir) + "/libshape.so", next = std::string(dir) + "/next.so";
  auto copy = [](const std::string& from, const std::string& to) {
    std::string cmd = "cp '" + from + "' '" + to + "'";
    return std::system(cmd.c_str()) == 0;
  };
  if (!copy(shape_path("big1"), lib) || !copy(shape_path("big2"), next)) TEST_SKIP("cannot copy the shapes");
  Shapes s;
  void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  ck_assert_msg(h, "dlopen %s: %s", lib.c_str(), dlerror());
  auto frame = reinterpret_cast<int (*)(ShapeCb, void*)>(dlsym(h, "shape_frame"));
  ck_assert(frame);
  ck_assert_int_eq(std::rename(next.c_str(), lib.c_str()), 0);
  Both b;
  frame(capture_both, &b);
  std::string why = compare(b);
  dlclose(h);
  std::remove(lib.c_str());
  rmdir(dir);
  ck_assert_msg(why.empty(), "%s", why.c_str());
}
END_TEST

// A library deleted from disk after dlopen: the walker's open of its file
// fails (ENOENT), and its tables are read from the mapping.  The caller's errno
// is what it was: malloc must not change it (a program may allocate between a
// failing call and its use of errno).
int g_errno_after = 0;
void capture_with_errno(void*) {
  void* f[16];
  errno = EXDEV;
  (void)lca::unwind_capture(f, 16);
  g_errno_after = errno;
}

START_TEST(test_capture_keeps_errno) {
  REQUIRE_WALKER();
  char dir[] = "/tmp/calloc-track-unwind.XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  std::string lib = std::string(dir) + "/libgone.so";
  std::string cmd = "cp '" + shape_path("big1") + "' '" + lib + "'";
  if (std::system(cmd.c_str()) != 0) TEST_SKIP("cannot copy the shapes");
  void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  ck_assert_msg(h, "dlopen %s: %s", lib.c_str(), dlerror());
  auto frame = reinterpret_cast<int (*)(ShapeCb, void*)>(dlsym(h, "shape_frame"));
  ck_assert(frame);
  ck_assert_int_eq(std::remove(lib.c_str()), 0);
  rmdir(dir);
  frame(capture_with_errno, nullptr);
  dlclose(h);
  ck_assert_msg(g_errno_after == EXDEV, "errno %d (%s) after a capture, not EXDEV", g_errno_after,
                std::strerror(g_errno_after));
}
END_TEST

// --- a signal handler's frame: not modelled, the capture falls back ------------

Both g_sig;
void on_signal(int) { capture_both(&g_sig); }

__attribute__((noinline)) void raise_here() {
  raise(SIGUSR1);
  asm volatile("" ::: "memory");
}

START_TEST(test_signal_frame_falls_back) {
  REQUIRE_WALKER();
  struct sigaction sa {}, old{};
  sa.sa_handler = on_signal;
  sigaction(SIGUSR1, &sa, &old);
  lca::UnwindStats before = lca::unwind_stats();
  raise_here();
  sigaction(SIGUSR1, &old, nullptr);
  lca::UnwindStats after = lca::unwind_stats();
  if (!test_util::running_on_valgrind()) {
    ck_assert_int_eq(g_sig.n_ours, -1);  // the signal frame stops our walker
    ck_assert_uint_gt(after.fallbacks, before.fallbacks);
  }
  // unwind_capture's fallback (libgcc_s) still walks through the signal
  // frame up to main: raise_here and this test are in its stack.
  bool saw_raise = false;
  for (int i = 0; i < g_sig.n_full; ++i) saw_raise |= same_function(g_sig.full[i], reinterpret_cast<void*>(&raise_here));
  ck_assert_msg(saw_raise, "the fallback's stack (%d frames) does not reach raise_here", g_sig.n_full);
}
END_TEST

// --- a stack of its own (ucontext): outside the thread's stack bounds ----------

Both g_co;
ucontext_t g_main_ctx, g_co_ctx;
__attribute__((noinline)) void on_own_stack() {
  capture_both(&g_co);
  asm volatile("" ::: "memory");
}

START_TEST(test_foreign_stack_falls_back) {
  REQUIRE_WALKER();
  std::vector<char> stack(256 * 1024);  // in the heap: not the thread's stack
  ck_assert_int_eq(getcontext(&g_co_ctx), 0);
  g_co_ctx.uc_stack.ss_sp = stack.data();
  g_co_ctx.uc_stack.ss_size = stack.size();
  g_co_ctx.uc_link = &g_main_ctx;
  makecontext(&g_co_ctx, on_own_stack, 0);
  ck_assert_int_eq(swapcontext(&g_main_ctx, &g_co_ctx), 0);
  // Our walker reads only the thread's stack: it does not walk this one, and
  // the capture falls back (libgcc_s is mapped in this C++ program).
  ck_assert_int_eq(g_co.n_ours, -1);
  bool saw = false;
  for (int i = 0; i < g_co.n_full; ++i) saw |= same_function(g_co.full[i], reinterpret_cast<void*>(&on_own_stack));
  ck_assert_msg(saw, "the fallback's stack (%d frames) does not reach on_own_stack", g_co.n_full);
}
END_TEST

// --- fork while other threads walk ----------------------------------------------

// A walk holds the loader's lock (inside dl_iterate_phdr) and the cache's:
// fork must not happen then, or the child's first walk (or dlopen) waits
// forever.  Threads walk without pause while the test forks; each child must
// walk (a 20 s alarm kills a hung one).
START_TEST(test_fork_while_walking) {
  REQUIRE_WALKER();
  if (test_util::running_on_valgrind())
    TEST_SKIP("Valgrind mode: malloc does not walk, and fork does not wait for walks (DRD cannot follow the lock)");
  // libcalloc's fork handlers come with its constructor, in malloc.c++'s
  // object: --disable-override builds (ASan's) link it only when referenced.
  ck_assert_ptr_nonnull(lca_version());
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&] {
      void* f[16];
      while (!stop.load(std::memory_order_relaxed)) (void)lca::unwind_capture_ours(f, 16);
    });
  std::string failure;
  for (std::size_t i = 0; i < scaled(40) && failure.empty(); ++i) {
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
      alarm(20);
      void* f[16];
      char answer = lca::unwind_capture_ours(f, 16) > 0 ? 'y' : 'n';
      if (write(fds[1], &answer, 1) != 1) _exit(1);
      raise(SIGKILL);  // no exit-time leak check of the parent's threads under memcheck
    }
    close(fds[1]);
    char answer = 0;
    if (read(fds[0], &answer, 1) != 1) answer = 0;
    close(fds[0]);
    waitpid(pid, nullptr, 0);
    if (answer != 'y') failure = answer ? "the child's walk failed" : "the child hung or died";
  }
  stop = true;
  for (auto& t : ts) t.join();
  ck_assert_msg(failure.empty(), "%s", failure.c_str());
}
END_TEST

// unwind_capture returns frames from its caller's up, with or without fallback.
__attribute__((noinline)) int capture_here(void** out) {
  int n = lca::unwind_capture(out, kMax);
  asm volatile("" ::: "memory");
  return n;
}

START_TEST(test_capture_starts_at_caller) {
  lca::unwind_init();
  void* f[kMax];
  int n = capture_here(f);
  ck_assert_int_ge(n, 2);
  ck_assert(same_function(f[0], reinterpret_cast<void*>(&capture_here)));
}
END_TEST

}  // namespace

int main() {
  TCase* tc;
  Suite* s = test_util::make_suite("track-unwind", &tc);
  tcase_add_test(tc, test_capture_starts_at_caller);
  tcase_add_test(tc, test_matches_unw_step_deep_recursion);
  tcase_add_test(tc, test_matches_unw_step_in_shapes);
  tcase_add_test(tc, test_cache_grows_and_stays_right);
  tcase_add_test(tc, test_threads_walk_at_once);
  tcase_add_test(tc, test_dlclose_dlopen_same_address_not_stale);
  tcase_add_test(tc, test_generation_check_only_for_dlopened_frames);
  tcase_add_test(tc, test_flush_keeps_startup_rules);
  tcase_add_test(tc, test_replaced_file_not_read);
  tcase_add_test(tc, test_capture_keeps_errno);
  tcase_add_test(tc, test_signal_frame_falls_back);
  tcase_add_test(tc, test_foreign_stack_falls_back);
  tcase_add_test(tc, test_fork_while_walking);
  return test_util::run_suite(s);
}
