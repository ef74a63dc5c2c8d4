// tests/track/track-demo.c++ -- a plain program (not linked with libcalloc) that
// tests/integration/track*.sh run under LD_PRELOAD of libcalloc.so with
// LIBCALLOC_OPTIONS=leak_report=...,profile=..., to check what the process heap's
// tracker reports.  argv[1] picks the behaviour:
//   leak     leaks 4242 bytes from demo::leak_some_memory, frees everything else
//   noleak   frees everything it allocates
//   hot      hot_allocator: 20 000 blocks of 1 000 bytes, cold_allocator: 100 of 100
//   fork     the parent leaks 2222 bytes (demo::parent_leak), its child 1111 (demo::child_leak)
//   signal   allocates, raises SIGUSR2 (profile dump request), then waits
//            without allocating until the profile file named in argv[2] exists
//   threads  8 threads each leak 100 bytes from demo::thread_leak, free the rest
//   threads-own  starts and joins 8 threads that free all they allocate, 8
//            times over, and leaks 4242 bytes from demo::leak_some_memory in
//            main: its only leak (glibc keeps the threads' TLS: not a leak)
//   dlclose  as dlopen, then closes the library before exit (its frames are in
//            no module when the report is written)
//   dlclose-reload  as dlclose with argv[2], then dlopens argv[3] (tests/track/
//            other.c++), which must land where argv[2] lay (exit 3 when it does
//            not), and keeps it until exit: the leak's frame in argv[2] lies in
//            argv[3]'s other_function now; with argv[4] "remove", argv[2] is
//            deleted after its dlclose
//   dlclose-same-site  dlopens argv[2] (tests/track/plugin.c++) and leaks
//            3333 bytes through its plugin_leak, dlcloses it, then dlopens
//            argv[3] (a copy of it under another name), which must land where
//            argv[2] lay (exit 3 when it does not), and leaks 4444 bytes the
//            same way, from the same call: two stacks of the same addresses
//            in two libraries
//   dlsym-fail  dlopens argv[2] and keeps it, looks up a symbol it lacks
//            (dlsym fails; dlerror is not called, so glibc keeps the message
//            until exit), argv[3] "open" also dlopens a file that is not
//            there (dlopen fails likewise), and leaks 4242 bytes from
//            demo::leak_some_memory: the program's only leak
//   dlopen-loop  dlopens argv[2] (tests/track/plugin.c++), frees what its
//            plugin_leak(100) returns and dlcloses it, argv[3] times (default
//            1000): a workload for the cost of following loaded objects
//   dlopen-keep  dlopens each of argv[2..] (RTLD_LAZY | RTLD_GLOBAL) and never
//            closes them, frees what their plugin_leak (if any) returns, and
//            leaks 4242 bytes from demo::leak_some_memory in main: the program's
//            leaks are that block and what the libraries' constructors leak
//            (tests/track/ctor-leak.c++); the loader's records of the libraries,
//            alive until exit, are not
//   chdir    leaks 4242 bytes like leak, then changes directory to argv[2]
//   dlopen   dlopens argv[2] (tests/track/plugin.c++) and leaks 3333 bytes
//            through its plugin_leak
//   rss      a small program's allocations (5 000 blocks of 16..1 608 bytes, half
//            freed, and churn() in 4 threads in turn), then prints its RssAnon and
//            RssFile (kB, from /proc/self/status) and whether libunwind is mapped
//            as "anon_kb=N file_kb=M libunwind=0|1", then "rss_kb=N text_kb=M":
//            the exact RSS (/proc/self/smaps_rollup, a walk of the page tables;
//            status's figures are per-CPU counters, off by up to ~100 kB) and
//            the resident text of the object defining malloc (libcalloc when
//            preloaded; its executable mapping's Rss in /proc/self/smaps)
//   probe    runs argv[2..] as a child and prints "maxrss_kb=N", the child's
//            peak RSS (wait4), its exit-time reports included
// It writes nothing with stdio (stdout's buffer would be a live block at exit).
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace demo {
__attribute__((noinline)) void* leak_some_memory(std::size_t n) {
  void* p = std::malloc(n);
  std::memset(p, 1, n);
  return p;
}
// Not tail calls (the asm runs after the call), so each keeps a frame of its own.
#define DEMO_WRAPPER(name)                                   \
  __attribute__((noinline)) void* name(std::size_t n) {      \
    void* p = leak_some_memory(n);                           \
    asm volatile("" : : "r"(p) : "memory");                  \
    return p;                                                \
  }
DEMO_WRAPPER(parent_leak)
DEMO_WRAPPER(child_leak)
DEMO_WRAPPER(thread_leak)
}  // namespace demo

__attribute__((noinline)) void* hot_allocator(std::size_t n) {
  void* p = std::malloc(n);
  std::memset(p, 0, 1);
  return p;
}
__attribute__((noinline)) void* cold_allocator(std::size_t n) {
  void* p = std::malloc(n);
  std::memset(p, 0, 1);
  return p;
}

namespace {
void* volatile g_sink;
void* volatile g_sinks[2];  // dlclose-same-site's two leaks

int fail(const char* why);

// dlclose-same-site's step i: dlopens path, leaks 3333 (i = 0) or 4444 bytes
// through its plugin_leak, dlcloses it (i = 0); 3 when the second library is
// not where the first was, 1 on another failure.
void* g_first_base;
__attribute__((noinline)) int load_and_leak(const char* path, int i) {
  void* lib = dlopen(path, RTLD_NOW);  // the second kept until exit
  if (!lib) return fail("dlopen failed\n");
  auto leak = reinterpret_cast<void* (*)(std::size_t)>(dlsym(lib, "plugin_leak"));
  Dl_info dl{};
  if (!leak || !dladdr(reinterpret_cast<void*>(leak), &dl)) return fail("no plugin_leak\n");
  if (i == 0) g_first_base = dl.dli_fbase;
  if (i == 1 && dl.dli_fbase != g_first_base) {
    fail("the second copy was not loaded where the first was\n");
    return 3;
  }
  // i laundered: the compiler must not copy the call into paths it knows i
  // on (one call: the same return address for both libraries).
  asm volatile("" : "+r"(i));
  g_sinks[i] = leak(i ? 4444 : 3333);
  asm volatile("" : "+r"(i));
  if (i == 0 && dlclose(lib) != 0) return fail("dlclose failed\n");
  return 0;
}

__attribute__((noinline)) void churn() {
  for (int i = 0; i < 1000; ++i) {
    std::vector<int> v(static_cast<std::size_t>(i) + 1);
    std::string s(static_cast<std::size_t>(i % 64) + 20, 'x');
    g_sink = v.data();
    g_sink = s.data();
    std::free(std::realloc(std::malloc(16), static_cast<std::size_t>(i) * 8 + 32));
  }
}

void* thread_main(void*) {
  churn();
  g_sink = demo::thread_leak(100);
  return nullptr;
}

void* churn_main(void*) {
  churn();
  return nullptr;
}

int fail(const char* why) {
  if (write(2, why, std::strlen(why)) < 0) return 2;
  return 1;
}

// The value (kB) of a "Name:   N kB" line of /proc/self/status; -1 if absent.
long status_kb(const char* text, const char* name) {
  const char* p = std::strstr(text, name);
  return p ? std::strtol(p + std::strlen(name), nullptr, 10) : -1;
}

// The "Rss:" (kB) of `path` (/proc/self/smaps_rollup: the whole process), or,
// when `in` is not 0, of the mapping of /proc/self/smaps that contains `in`;
// -1 if not found.
long smaps_kb(const char* path, std::uintptr_t in) {
  static char buf[1 << 18];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  std::size_t used = 0;
  while (used < sizeof buf - 1) {
    ssize_t r = read(fd, buf + used, sizeof buf - 1 - used);
    if (r <= 0) break;
    used += static_cast<std::size_t>(r);
  }
  close(fd);
  buf[used] = 0;
  const char* p = buf;
  if (in) {
    // Each mapping starts with a "lo-hi perms ..." line; the fields follow.
    for (p = buf; *p; p = std::strchr(p, '\n') ? std::strchr(p, '\n') + 1 : p + std::strlen(p)) {
      char* end;
      std::uintptr_t lo = std::strtoull(p, &end, 16);
      if (*end != '-') continue;
      std::uintptr_t hi = std::strtoull(end + 1, nullptr, 16);
      if (lo <= in && in < hi) break;
    }
    if (!*p) return -1;
  }
  const char* rss = std::strstr(p, "\nRss:");
  return rss ? std::strtol(rss + 5, nullptr, 10) : -1;
}

void* churn_thread(void*) {
  churn();
  return nullptr;
}

int rss_mode() {
  constexpr int kBlocks = 5000;
  static void* blocks[kBlocks];
  for (int i = 0; i < kBlocks; ++i) {
    blocks[i] = std::malloc(16 + static_cast<std::size_t>(i % 200) * 8);
    std::memset(blocks[i], 1, 16);
  }
  for (int i = 0; i < kBlocks; i += 2) std::free(blocks[i]);
  // One thread at a time: RSS then depends on what the threads do, not on how
  // their runs overlap (4 concurrent threads moved RssAnon by ~600 kB between
  // identical runs).
  for (int i = 0; i < 4; ++i) {
    pthread_t th;
    if (pthread_create(&th, nullptr, churn_thread, nullptr) != 0) return fail("pthread_create\n");
    pthread_join(th, nullptr);
  }
  char text[4096];
  int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("cannot open /proc/self/status\n");
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return fail("cannot read /proc/self/status\n");
  text[n] = 0;
  // Whether libunwind is mapped (the sampler loads it only for a thread that
  // has sampled 64 times): a line of /proc/self/maps naming it.
  int unwind_mapped = 0;
  fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("cannot open /proc/self/maps\n");
  static char maps[1 << 16];
  std::size_t used = 0;
  while (used < sizeof maps - 1) {
    ssize_t r = read(fd, maps + used, sizeof maps - 1 - used);
    if (r <= 0) break;
    used += static_cast<std::size_t>(r);
  }
  close(fd);
  maps[used] = 0;
  unwind_mapped = std::strstr(maps, "/libunwind.so") != nullptr;
  char line[128];
  int len = std::snprintf(line, sizeof line, "anon_kb=%ld file_kb=%ld libunwind=%d\n", status_kb(text, "RssAnon:"),
                          status_kb(text, "RssFile:"), unwind_mapped);
  if (write(1, line, static_cast<std::size_t>(len)) != len) return 1;
  // smaps after status and maps: reading them faults nothing of ours in.
  len = std::snprintf(line, sizeof line, "rss_kb=%ld text_kb=%ld\n", smaps_kb("/proc/self/smaps_rollup", 0),
                      smaps_kb("/proc/self/smaps", reinterpret_cast<std::uintptr_t>(dlsym(RTLD_DEFAULT, "malloc"))));
  if (write(1, line, static_cast<std::size_t>(len)) != len) return 1;
  for (int i = 1; i < kBlocks; i += 2) std::free(blocks[i]);
  return 0;
}

int probe_mode(char** argv) {
  pid_t pid = fork();
  if (pid < 0) return fail("fork\n");
  if (pid == 0) {
    execvp(argv[0], argv);
    _exit(127);
  }
  int status = 0;
  struct rusage ru{};
  if (wait4(pid, &status, 0, &ru) != pid) return fail("wait4\n");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return fail("probe: the child failed\n");
  char line[64];
  int len = std::snprintf(line, sizeof line, "maxrss_kb=%ld\n", ru.ru_maxrss);
  return write(1, line, static_cast<std::size_t>(len)) == len ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "leak";
  if (mode == "probe") return argc > 2 ? probe_mode(argv + 2) : fail("probe: give a command\n");
  if (mode == "rss") return rss_mode();
  churn();
  if (mode == "leak") {
    g_sink = demo::leak_some_memory(4242);
  } else if (mode == "chdir") {
    if (argc < 3) return fail("chdir: give a directory\n");
    g_sink = demo::leak_some_memory(4242);
    if (chdir(argv[2]) != 0) return fail("chdir failed\n");
  } else if (mode == "noleak") {
  } else if (mode == "hot") {
    std::vector<void*> keep;
    keep.reserve(2000);
    for (int i = 0; i < 20000; ++i) {
      void* p = hot_allocator(1000);
      if (i % 10 == 0) keep.push_back(p);
      else std::free(p);
    }
    for (int i = 0; i < 100; ++i) std::free(cold_allocator(100));
    for (void* p : keep) std::free(p);
  } else if (mode == "fork") {
    pid_t pid = fork();
    if (pid == 0) {
      g_sink = demo::child_leak(1111);
      std::exit(0);  // exit, not _exit: the child writes its report
    }
    int status = 0;
    waitpid(pid, &status, 0);
    g_sink = demo::parent_leak(2222);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return fail("child failed\n");
  } else if (mode == "signal") {
    if (argc < 3) return fail("signal: give the profile path\n");
    for (int i = 0; i < 2000; ++i) std::free(hot_allocator(4096));
    std::raise(SIGUSR2);
    // libcalloc's profile thread writes it: no allocation is needed after the
    // signal, and none is made while waiting (stat and nanosleep).
    struct stat st;
    bool written = false;
    for (int i = 0; i < 3000 && !written; ++i) {
      written = stat(argv[2], &st) == 0 && st.st_size > 0;
      if (!written) usleep(10000);
    }
    if (!written) return fail("no profile written on SIGUSR2\n");
  } else if (mode == "threads") {
    pthread_t t[8];
    for (auto& th : t)
      if (pthread_create(&th, nullptr, thread_main, nullptr) != 0) return fail("pthread_create\n");
    for (auto& th : t) pthread_join(th, nullptr);
  } else if (mode == "dlclose") {
    if (argc < 3) return fail("dlclose: give the plugin's path\n");
    void* lib = dlopen(argv[2], RTLD_NOW);
    if (!lib) return fail("dlopen failed\n");
    auto leak = reinterpret_cast<void* (*)(std::size_t)>(dlsym(lib, "plugin_leak"));
    if (!leak) return fail("no plugin_leak\n");
    g_sink = leak(3333);
    if (dlclose(lib) != 0) return fail("dlclose failed\n");  // unloaded before the report
  } else if (mode == "dlclose-reload") {
    if (argc < 4) return fail("dlclose-reload: give the plugin's and the other library's paths\n");
    void* lib = dlopen(argv[2], RTLD_NOW);
    if (!lib) return fail("dlopen failed\n");
    auto leak = reinterpret_cast<void* (*)(std::size_t)>(dlsym(lib, "plugin_leak"));
    if (!leak) return fail("no plugin_leak\n");
    Dl_info a{}, b{};
    if (!dladdr(reinterpret_cast<void*>(leak), &a)) return fail("dladdr failed\n");
    g_sink = leak(3333);
    if (dlclose(lib) != 0) return fail("dlclose failed\n");
    if (argc > 4 && std::strcmp(argv[4], "remove") == 0 && unlink(argv[2]) != 0) return fail("unlink failed\n");
    void* other = dlopen(argv[3], RTLD_NOW);  // kept until exit
    if (!other) return fail("dlopen of the other library failed\n");
    auto fn = reinterpret_cast<int (*)(int)>(dlsym(other, "other_function"));
    if (!fn || !dladdr(reinterpret_cast<void*>(fn), &b)) return fail("no other_function\n");
    if (a.dli_fbase != b.dli_fbase) {
      fail("the other library was not loaded where the plugin was\n");
      return 3;
    }
    if (fn(1) != 2) return fail("other_function\n");
  } else if (mode == "dlclose-same-site") {
    if (argc < 4) return fail("dlclose-same-site: give two copies of the plugin\n");
    static volatile int two = 2;  // not unrolled: one call of load_and_leak, the same stack twice
    for (int i = 0; i < two; ++i)
      if (int rc = load_and_leak(argv[2 + i], i)) return rc;
  } else if (mode == "dlsym-fail") {
    if (argc < 3) return fail("dlsym-fail: give a library's path\n");
    void* lib = dlopen(argv[2], RTLD_NOW);  // kept until exit
    if (!lib) return fail("dlopen failed\n");
    if (dlsym(lib, "no_such_symbol_in_this_library")) return fail("dlsym found a symbol that is not there\n");
    if (argc > 3 && std::strcmp(argv[3], "open") == 0 && dlopen("/nonexistent/libnothere.so", RTLD_NOW))
      return fail("dlopen of a missing file succeeded\n");
    g_sink = demo::leak_some_memory(4242);
  } else if (mode == "dlopen-loop") {
    if (argc < 3) return fail("dlopen-loop: give the plugin's path\n");
    int rounds = argc > 3 ? std::atoi(argv[3]) : 1000;
    for (int i = 0; i < rounds; ++i) {
      void* lib = dlopen(argv[2], RTLD_NOW);
      if (!lib) return fail("dlopen failed\n");
      auto leak = reinterpret_cast<void* (*)(std::size_t)>(dlsym(lib, "plugin_leak"));
      if (!leak) return fail("no plugin_leak\n");
      std::free(leak(100));
      if (dlclose(lib) != 0) return fail("dlclose failed\n");
    }
  } else if (mode == "dlopen-keep") {
    if (argc < 3) return fail("dlopen-keep: give the libraries' paths\n");
    for (int i = 2; i < argc; ++i) {
      void* lib = dlopen(argv[i], RTLD_LAZY | RTLD_GLOBAL);
      if (!lib) return fail("dlopen failed\n");
      // (dlsym only where the symbol is: a failed one leaves its message for
      // dlerror, glibc's blocks of another kind: mode dlsym-fail.)
      if (std::strstr(argv[i], "plugin"))
        if (auto leak = reinterpret_cast<void* (*)(std::size_t)>(dlsym(lib, "plugin_leak"))) std::free(leak(3333));
    }
    g_sink = demo::leak_some_memory(4242);  // the libraries stay loaded until exit
  } else if (mode == "threads-own") {
    for (int round = 0; round < 8; ++round) {
      pthread_t t[8];
      for (auto& th : t)
        if (pthread_create(&th, nullptr, churn_main, nullptr) != 0) return fail("pthread_create\n");
      for (auto& th : t) pthread_join(th, nullptr);
    }
    g_sink = demo::leak_some_memory(4242);
  } else if (mode == "dlopen") {
    if (argc < 3) return fail("dlopen: give the plugin's path\n");
    void* lib = dlopen(argv[2], RTLD_NOW);
    if (!lib) return fail("dlopen failed\n");
    auto leak = reinterpret_cast<void* (*)(std::size_t)>(dlsym(lib, "plugin_leak"));
    if (!leak) return fail("no plugin_leak\n");
    g_sink = leak(3333);  // the library stays loaded: its symbols are there at exit
  } else {
    return fail("unknown mode\n");
  }
  return 0;
}
