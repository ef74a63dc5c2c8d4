// track-unwind.c++ -- stack capture for allocation tracking (configure
// --enable-tracking): the walk from an allocation to the program's outermost
// frame, as a list of return addresses.
//
// This module owns the unwinders and what they keep.  Our own walker (x86-64)
// reads each frame's unwind rule -- CFA = rsp+k or rbp+k, the return address
// at CFA-8, rbp's save slot if the frame saved it -- from a shared frame cache
// keyed by the code address: one 64-bit word a frame, in tables of the
// tracker's OS-backed pool (track_pool_alloc) that start at 4 KiB and double
// at half full.  A miss parses the object's CFI (.eh_frame_hdr's search table,
// found through dl_iterate_phdr's PT_GNU_EH_FRAME; the CIE and FDE
// instructions GCC and Clang emit).  Whatever it does not model -- CFA, rbp or
// return address by expression or register (PLT entries, realigned stacks),
// signal frames, unknown opcodes -- makes the capture fall back to libgcc_s's
// _Unwind_Backtrace, else libunwind's unw_step (both loaded with dlopen when
// first needed, neither linked: see fallback); rules that do not fit a cache
// word are parsed at each use.  Every read of the stack is bounds-checked
// against the thread's stack (from the capturing frame's rsp to the top, read
// once a thread: stack_bounds), and each CFA must lie above the last: a wrong
// or stale rule ends in a fallback, never in a fault.  A rule never outlives
// the code it describes: rules of the objects loaded at startup (never
// unloaded) are used as they are; a walk that needs another rule first reads
// dl_iterate_phdr's counters of loaded and unloaded objects, once, and the
// cache is emptied of every rule but those of the startup objects when they
// changed (walk_frames says why that cannot miss a replaced library).  Why not libunwind's unw_backtrace: its 256 KiB
// frame cache per thread (docs/design.md, "Tracking", has the measurements).
#include "track-unwind.h++"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sys/auxv.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define UNW_LOCAL_ONLY
#include <libunwind.h>
#include <unwind.h>

#include "report.h++"
#include "sanitizer.h++"
#include "vg.h++"

#if defined(__x86_64__) && defined(__linux__)
#define LCA_OWN_UNWINDER 1
#else
#define LCA_OWN_UNWINDER 0
#endif

extern "C" void* __libc_stack_end;  // the dynamic loader's: the main thread's stack at start

namespace lca {

namespace {

// --- fallback unwinders (libgcc_s, libunwind) -------------------------------------
//
// libgcc_s is mapped in every C++ program and in every program that cancels a
// thread or calls backtrace(), so loading it costs nothing or little; its
// _Unwind_Backtrace reads the same tables as our walker and keeps nothing
// between captures (~2 000 instructions a frame).  libunwind is loaded only
// without libgcc_s (or by the test hook unwind_capture_step): ~160 KiB of
// file pages; its unw_backtrace (256 KiB frame cache per thread) is not used.  Not linked: libunwind also defines the _Unwind_* functions of the
// C++ exception ABI, and linked in it came before libgcc_s, so that every
// exception of the program unwound through it.
#define UNWIND_STR2(x) #x
#define UNWIND_STR(x) UNWIND_STR2(x)
using GetContextFn = int (*)(unw_context_t*);
using InitLocalFn = int (*)(unw_cursor_t*, unw_context_t*);
using StepFn = int (*)(unw_cursor_t*);
using GetRegFn = int (*)(unw_cursor_t*, unw_regnum_t, unw_word_t*);
using GccBacktraceFn = _Unwind_Reason_Code (*)(_Unwind_Trace_Fn, void*);
using GccGetIpFn = _Unwind_Ptr (*)(_Unwind_Context*);

struct Unwinder {
  GccBacktraceFn gcc_backtrace = nullptr;  // null: libgcc_s could not be loaded
  GccGetIpFn gcc_get_ip = nullptr;
  GetContextFn getcontext = nullptr;  // libunwind's unw_step loop (null: not loaded)
  InitLocalFn init_local = nullptr;
  StepFn step = nullptr;
  GetRegFn get_reg = nullptr;
};

LCA_SAMPLING_TEXT void load_libgcc(Unwinder& u) {
  void* lib = dlopen("libgcc_s.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return;
  u.gcc_get_ip = reinterpret_cast<GccGetIpFn>(dlsym(lib, "_Unwind_GetIP"));
  u.gcc_backtrace = u.gcc_get_ip ? reinterpret_cast<GccBacktraceFn>(dlsym(lib, "_Unwind_Backtrace")) : nullptr;
}

bool load_libunwind(Unwinder& u) {
  void* lib = dlopen("libunwind.so.8", RTLD_NOW | RTLD_LOCAL);
  if (!lib) lib = dlopen("libunwind.so", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return false;
  u.getcontext = reinterpret_cast<GetContextFn>(dlsym(lib, UNWIND_STR(unw_tdep_getcontext)));
  u.init_local = reinterpret_cast<InitLocalFn>(dlsym(lib, UNWIND_STR(unw_init_local)));
  u.step = reinterpret_cast<StepFn>(dlsym(lib, UNWIND_STR(unw_step)));
  u.get_reg = reinterpret_cast<GetRegFn>(dlsym(lib, UNWIND_STR(unw_get_reg)));
  if (!u.getcontext || !u.init_local || !u.get_reg) u.step = nullptr;
  return u.step != nullptr;
}

int gcc_capture(const Unwinder& u, void** out, int max);

LCA_SAMPLING_TEXT Unwinder load_unwinders() {
  Unwinder u;
  load_libgcc(u);
  // Under Valgrind, one capture now, inside the one-time initialisation:
  // libgcc fills its table of register sizes at its first unwind
  // (pthread_once, which helgrind and DRD do not see), so every later capture
  // happens after that in their eyes as in fact.  Not otherwise: that walk
  // read libc's and libgcc_s's .eh_frame in place and ran libgcc's unwinder,
  // +172 KiB of file pages in every C++ program that samples (track-demo: libc
  // +128, libgcc_s +44), for a table that libgcc's own pthread_once guards.
  if (u.gcc_backtrace && on_valgrind()) {
    void* warm[4];
    (void)gcc_capture(u, warm, 4);
  }
  if (!u.gcc_backtrace && !load_libunwind(u))
    report_warning("allocation tracking: cannot load libgcc_s nor libunwind: ", dlerror());
  return u;
}

// The fallback, loaded when first needed: at unwind_init when our walker
// cannot serve (not x86-64; Valgrind mode) or when libgcc_s is mapped already
// (every C++ program: it costs nothing then), else at the first capture our
// walker cannot finish -- a C program whose stacks it always walks never maps
// libgcc_s (128 KiB of file pages).  Loaded from malloc, so never while the
// thread may be inside the dynamic loader (safe_to_load), and no thread waits
// for it: g_fb_state 0 (not loaded), 1 (a thread is loading it: the others
// keep the frames our walker found), 2 (loaded: g_unwinder set), 3 (neither
// library could be loaded).
Unwinder g_unwinder;
std::atomic<int> g_fb_state{0};

LCA_SAMPLING_TEXT void load_fallback() {
  g_unwinder = load_unwinders();
  bool ok = g_unwinder.gcc_backtrace || g_unwinder.step;
#if CALLOC_VALGRIND
  ANNOTATE_HAPPENS_BEFORE(&g_fb_state);
#endif
  g_fb_state.store(ok ? 2 : 3, std::memory_order_release);
}

// True when no frame of the stack is in the dynamic loader or in a libdl
// function (dlopen, dl_iterate_phdr...): a malloc from there must not dlopen.
// False without frames (our walker could not start: a foreign stack, or a fork
// under way, when no thread may take the loader's lock).
LCA_SAMPLING_TEXT bool safe_to_load(void* const* frames, int n) {
  if (n <= 0) return false;
  for (int i = 0; i < n; ++i) {
    Dl_info dl;
    if (!dladdr(frames[i], &dl) || !dl.dli_fname) return false;
    const char* base = std::strrchr(dl.dli_fname, '/');
    base = base ? base + 1 : dl.dli_fname;
    if (std::strncmp(base, "ld-linux", 8) == 0 || std::strncmp(base, "ld.so", 5) == 0) return false;
    if (!dl.dli_sname) continue;
    if (std::strncmp(dl.dli_sname, "_dl", 3) == 0 || std::strncmp(dl.dli_sname, "__libc_dl", 9) == 0) return false;
    for (const char* f : {"dlopen", "dlmopen", "dlclose", "dlsym", "dlvsym", "dladdr", "dladdr1", "dlinfo", "dlerror",
                          "dl_iterate_phdr"})
      if (std::strcmp(dl.dli_sname, f) == 0) return false;
  }
  return true;
}

// The fallback unwinder, loading it if it is safe now (frames: what our
// walker found of the stack); nullptr when there is none (yet).
LCA_SAMPLING_TEXT const Unwinder* fallback(void* const* frames, int n) {
  int state = g_fb_state.load(std::memory_order_acquire);
  int expected = 0;
  if (state == 0 && safe_to_load(frames, n) &&
      g_fb_state.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
    load_fallback();
    state = g_fb_state.load(std::memory_order_acquire);
  }
  if (state != 2) return nullptr;
#if CALLOC_VALGRIND
  ANNOTATE_HAPPENS_AFTER(&g_fb_state);
#endif
  return &g_unwinder;
}

pthread_once_t g_init_once = PTHREAD_ONCE_INIT;
#if LCA_OWN_UNWINDER
void init_rtld_base();
#endif
LCA_SAMPLING_TEXT void init_once() {
#if LCA_OWN_UNWINDER
  init_rtld_base();
#endif
  bool now = !LCA_OWN_UNWINDER || vg_serialised();
  if (void* gcc = dlopen("libgcc_s.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD)) {
    now = true;
    dlclose(gcc);  // load_libgcc opens it again
  }
  int expected = 0;
  if (now && g_fb_state.compare_exchange_strong(expected, 1, std::memory_order_acquire)) load_fallback();
}

// libunwind for the test hook, loaded on first use.  Its caches are emptied
// before each walk: libunwind keeps a frame's unwind information across
// dlclose and dlopen (version 1.6: after dlclose of one object and dlopen of
// another at the same address, unw_step walked with the old one's rules).
Unwinder g_step_unwinder;
using FlushFn = void (*)(unw_addr_space_t, unw_word_t, unw_word_t);
FlushFn g_step_flush;
unw_addr_space_t* g_step_as;
pthread_once_t g_step_once = PTHREAD_ONCE_INIT;
void load_step_once() {
  if (!load_libunwind(g_step_unwinder)) return;
  void* lib = dlopen("libunwind.so.8", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (!lib) lib = dlopen("libunwind.so", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (!lib) return;
  g_step_flush = reinterpret_cast<FlushFn>(dlsym(lib, UNWIND_STR(unw_flush_cache)));
  g_step_as = static_cast<unw_addr_space_t*>(dlsym(lib, UNWIND_STR(unw_local_addr_space)));
}

// All the walks below have one shape: return addresses from the one into the
// walking function's caller up (the walking function's own frame is not
// listed), into out[0..max).

// The unw_step loop.
__attribute__((noinline)) int step_capture(const Unwinder& u, void** out, int max) {
  unw_context_t uc;
  unw_cursor_t cursor;
  if (!u.step || u.getcontext(&uc) < 0 || u.init_local(&cursor, &uc) < 0) return 0;
  int n = 0;
  while (n < max && u.step(&cursor) > 0) {
    unw_word_t ip = 0;
    if (u.get_reg(&cursor, UNW_REG_IP, &ip) < 0 || ip == 0) break;
    out[n++] = reinterpret_cast<void*>(ip);
  }
  return n;
}

struct GccTrace {
  GccGetIpFn get_ip;
  void** out;
  int n, max;
  int skip;  // gcc_capture's own frame
};

LCA_SAMPLING_TEXT _Unwind_Reason_Code gcc_frame(_Unwind_Context* ctx, void* arg) {
  auto* t = static_cast<GccTrace*>(arg);
  if (t->n >= t->max) return _URC_END_OF_STACK;
  _Unwind_Ptr ip = t->get_ip(ctx);
  if (ip == 0) return _URC_END_OF_STACK;
  if (t->skip > 0) {
    --t->skip;
    return _URC_NO_REASON;
  }
  t->out[t->n++] = reinterpret_cast<void*>(ip);
  return _URC_NO_REASON;
}

// _Unwind_Backtrace's first frame is its caller's, this function's: skipped.
LCA_SAMPLING_TEXT __attribute__((noinline)) int gcc_capture(const Unwinder& u, void** out, int max) {
  GccTrace t{u.gcc_get_ip, out, 0, max, 1};
  u.gcc_backtrace(gcc_frame, &t);
  return t.n;
}

// --- our walker -------------------------------------------------------------------

std::atomic<std::uint64_t> g_captures{0}, g_fallbacks{0}, g_hits{0}, g_misses{0}, g_uncached{0}, g_flushes{0},
    g_checks{0};
// Captures and cache hits, counted per thread and added to the shared counts
// every kCountBatch captures (and by unwind_stats for its own thread), not a
// shared increment a frame: a cache line passed between the threads that walk.
constexpr unsigned kCountBatch = 64;
constinit thread_local std::uint32_t tls_captures __attribute__((tls_model("initial-exec"))) = 0;
constinit thread_local std::uint32_t tls_hits __attribute__((tls_model("initial-exec"))) = 0;
// The counters the thread's last generation check read.
constinit thread_local unsigned long long tls_seen_adds __attribute__((tls_model("initial-exec"))) = 0;
constinit thread_local unsigned long long tls_seen_subs __attribute__((tls_model("initial-exec"))) = 0;
LCA_SAMPLING_TEXT void publish_counts() {
  g_captures.fetch_add(tls_captures, std::memory_order_relaxed);
  g_hits.fetch_add(tls_hits, std::memory_order_relaxed);
  tls_captures = tls_hits = 0;
}

#if LCA_OWN_UNWINDER

// A frame's rule in 17 bits: bit 0 the CFA's register (0 rsp, 1 rbp), bits
// 1-11 the CFA's offset from it in 8-byte units (1-2047: frames up to 16 KiB;
// larger ones are parsed at each use), bits 12-15 where rbp was saved, in
// 8-byte units below the CFA (0: not saved by this frame, so unchanged), bit
// 16 kMayUnload: the rule was read from an object that dlclose could unload
// (or from no object), so it is used only after the walk's generation check
// (see walk_frames).  An offset field of 0 marks the special rules: kEnd (the
// outermost frame: its return address is undefined, or no unwind table covers
// the address) and kFallback (a rule our walker does not model).  The cache
// word is the address << 17 | the rule; 0 is an empty slot.
constexpr unsigned kRuleBits = 17;
constexpr std::uint64_t kRuleMask = (std::uint64_t{1} << kRuleBits) - 1;
constexpr unsigned kRbpShift = 12;
constexpr std::uint64_t kEnd = std::uint64_t{1} << kRbpShift;
constexpr std::uint64_t kFallback = std::uint64_t{2} << kRbpShift;
constexpr std::uint64_t kMayUnload = std::uint64_t{1} << 16;
constexpr std::uintptr_t kMaxCachedPc = std::uintptr_t{1} << (64 - kRuleBits);

struct Rule {
  enum Kind : unsigned char { walk, end, fallback } kind = fallback;
  bool cfa_rbp = false;     // CFA = rbp + cfa_off, else rsp + cfa_off
  std::int64_t cfa_off = 0;
  std::int64_t rbp_off = 0;  // rbp saved at CFA + rbp_off (< 0); 0: unchanged
};

// The rule's cache word bits, or 0 when it does not fit one.
LCA_SAMPLING_TEXT std::uint64_t pack(const Rule& r, bool may_unload) {
  std::uint64_t unload = may_unload ? kMayUnload : 0;
  if (r.kind == Rule::end) return kEnd | unload;
  if (r.kind == Rule::fallback) return kFallback | unload;
  if (r.cfa_off <= 0 || r.cfa_off % 8 || r.cfa_off / 8 > 2047) return 0;
  if (r.rbp_off > 0 || r.rbp_off % 8 || -r.rbp_off / 8 > 15) return 0;
  return (r.cfa_rbp ? 1u : 0u) | static_cast<std::uint64_t>(r.cfa_off / 8) << 1 |
         static_cast<std::uint64_t>(-r.rbp_off / 8) << kRbpShift | unload;
}

LCA_SAMPLING_TEXT Rule unpack(std::uint64_t bits) {
  Rule r;
  std::uint64_t off = (bits >> 1) & 2047;
  if (off == 0) {
    r.kind = (bits & kRuleMask & ~kMayUnload) == kEnd ? Rule::end : Rule::fallback;
    return r;
  }
  r.kind = Rule::walk;
  r.cfa_rbp = bits & 1;
  r.cfa_off = static_cast<std::int64_t>(off * 8);
  r.rbp_off = -static_cast<std::int64_t>(((bits >> kRbpShift) & 15) * 8);
  return r;
}

// The cache: open addressing over a power-of-two table of words whose first
// word holds the mask; lock-free lookups and inserts (compare-and-swap into
// an empty slot), growth and flushes under g_cache_lock.  A grown table
// replaces the old one, which stays mapped (a walker may still be probing
// it): all of them together stay under twice the last.
constexpr std::size_t kInitialSlots = 512;         // 4 KiB
constexpr std::size_t kMaxSlots = std::size_t{1} << 16;  // 512 KiB: then rules are parsed each time
constexpr unsigned kProbe = 16;

std::atomic<std::atomic<std::uint64_t>*> g_table{nullptr};
// Held shared by a walk from its first call of dl_iterate_phdr (a miss, or
// the generation check) to its end (dl_iterate_phdr takes the loader's lock,
// and a miss may take g_cache_lock): fork's prepare handler takes it
// exclusive, so no thread is inside either when the process forks, else the
// child's first dl_iterate_phdr (or dlopen) waited forever for a lock its
// parent's thread held (the track suite's fork test hung so under ASan).  A
// walk served by the cache alone takes no lock and writes no shared line
// (but the statistics, every kCountBatch captures).
// Walks only try it: a walk that meets a waiting fork falls back instead of
// waiting (writers preferred: forks are not starved).
pthread_rwlock_t g_fork_rw = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
std::atomic<std::size_t> g_entries{0};
std::atomic<std::size_t> g_table_bytes{0};
pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;
// dl_iterate_phdr's counters when the cache was last emptied (g_cache_lock).
unsigned long long g_adds, g_subs;

LCA_SAMPLING_TEXT std::size_t slot_of(std::uintptr_t pc, std::size_t mask) {
  std::uint64_t h = pc * 0x9e3779b97f4a7c15ull;
  std::size_t i = static_cast<std::size_t>(h >> 40) & mask;
  return i ? i : 1;
}

LCA_SAMPLING_TEXT std::atomic<std::uint64_t>* new_table(std::size_t slots) {
  auto* t = static_cast<std::atomic<std::uint64_t>*>(track_pool_alloc(slots * sizeof(std::uint64_t)));
  if (!t) return nullptr;
  t[0].store(slots - 1, std::memory_order_relaxed);
  g_table_bytes.fetch_add(slots * sizeof(std::uint64_t), std::memory_order_relaxed);
  return t;
}

// The rule bits of pc, or 0 when not cached.
LCA_SAMPLING_TEXT std::uint64_t cache_find(std::uintptr_t pc) {
  auto* t = g_table.load(std::memory_order_acquire);
  if (!t || pc >= kMaxCachedPc) return 0;
  std::size_t mask = t[0].load(std::memory_order_relaxed);
  std::size_t i = slot_of(pc, mask);
  for (unsigned k = 0; k < kProbe; ++k) {
    std::uint64_t v = t[i].load(std::memory_order_relaxed);
    if (v == 0) return 0;
    if ((v >> kRuleBits) == pc) return v & kRuleMask;
    i = (i + 1) & mask;
    if (i == 0) i = 1;
  }
  return 0;
}

enum class Insert { added, present, full };

LCA_SAMPLING_TEXT Insert insert_into(std::atomic<std::uint64_t>* t, std::uint64_t word) {
  std::size_t mask = t[0].load(std::memory_order_relaxed);
  std::size_t i = slot_of(static_cast<std::uintptr_t>(word >> kRuleBits), mask);
  for (unsigned k = 0; k < kProbe; ++k) {
    std::uint64_t v = t[i].load(std::memory_order_relaxed);
    if (v == 0 && t[i].compare_exchange_strong(v, word, std::memory_order_relaxed)) return Insert::added;
    if ((v >> kRuleBits) == (word >> kRuleBits)) return Insert::present;  // another thread's, or ours
    i = (i + 1) & mask;
    if (i == 0) i = 1;
  }
  return Insert::full;
}

LCA_SAMPLING_TEXT void cache_insert(std::uintptr_t pc, std::uint64_t bits) {
  if (pc == 0 || pc >= kMaxCachedPc || bits == 0) {
    g_uncached.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  std::uint64_t word = static_cast<std::uint64_t>(pc) << kRuleBits | bits;
  auto* t = g_table.load(std::memory_order_acquire);
  if (t) {
    std::size_t mask = t[0].load(std::memory_order_relaxed);
    if (g_entries.load(std::memory_order_relaxed) < mask / 2) {
      Insert r = insert_into(t, word);
      if (r == Insert::added) g_entries.fetch_add(1, std::memory_order_relaxed);
      if (r != Insert::full) return;
    }
  }
  // First table, or half full (or a long probe): grow under the lock.
  pthread_mutex_lock(&g_cache_lock);
  auto* cur = g_table.load(std::memory_order_relaxed);
  bool stored = false;
  if (cur != t && cur) {
    stored = insert_into(cur, word) != Insert::full;  // another thread grew it meanwhile
  } else {
    std::size_t slots = cur ? (cur[0].load(std::memory_order_relaxed) + 1) * 2 : kInitialSlots;
    if (slots <= kMaxSlots) {
      if (auto* n = new_table(slots)) {
        std::size_t moved = 0;
        if (cur)
          for (std::size_t i = 1; i < slots / 2; ++i)
            if (std::uint64_t v = cur[i].load(std::memory_order_relaxed); v && insert_into(n, v) == Insert::added) ++moved;
        if (insert_into(n, word) == Insert::added) ++moved;
        g_entries.store(moved, std::memory_order_relaxed);
        g_table.store(n, std::memory_order_release);
        stored = true;
      }
    }
  }
  pthread_mutex_unlock(&g_cache_lock);
  if (!stored) g_uncached.fetch_add(1, std::memory_order_relaxed);  // at its largest: parsed each time
}

// Empties the cache of every rule that may be stale when objects were loaded
// or unloaded since it was last (called with the loader's lock held, inside
// dl_iterate_phdr, so one thread at a time and the counters cannot change
// meanwhile; g_cache_lock orders it with growth).  Only the rules with
// kMayUnload go: the others belong to objects that are never unloaded, so a
// program that dlopens and dlcloses plugins in a loop keeps its own stacks
// cached (they were all parsed again after each dlclose).  A kept rule probed
// past an emptied slot is found no more: its next capture misses and enters it
// again in that slot, a duplicate of a rule that is right, counted in
// g_entries (the table grows a little sooner), never a stale one.
LCA_SAMPLING_TEXT void check_generation(unsigned long long adds, unsigned long long subs) {
  tls_seen_adds = adds;
  tls_seen_subs = subs;
  static std::atomic<unsigned long long> seen_adds{0}, seen_subs{0};
  if (seen_adds.load(std::memory_order_relaxed) == adds && seen_subs.load(std::memory_order_relaxed) == subs) return;
  pthread_mutex_lock(&g_cache_lock);
  if (g_adds != adds || g_subs != subs) {
    if (auto* t = g_table.load(std::memory_order_relaxed)) {
      std::size_t mask = t[0].load(std::memory_order_relaxed), kept = 0;
      for (std::size_t i = 1; i <= mask; ++i) {
        std::uint64_t v = t[i].load(std::memory_order_relaxed);
        if (v == 0) continue;
        if (v & kMayUnload)
          t[i].store(0, std::memory_order_relaxed);
        else
          ++kept;
      }
      g_entries.store(kept, std::memory_order_relaxed);
      g_flushes.fetch_add(1, std::memory_order_relaxed);
    }
    g_adds = adds;
    g_subs = subs;
    seen_adds.store(adds, std::memory_order_relaxed);
    seen_subs.store(subs, std::memory_order_relaxed);
  }
  pthread_mutex_unlock(&g_cache_lock);
}

// Objects that can never be unloaded.  glibc unloads only objects dlopen
// loaded (dl-close.c: l_type == lt_loaded); the program, its DT_NEEDED
// libraries, LD_PRELOAD's, the vDSO and ld.so itself (lt_executable,
// lt_library) stay until exit.  They are the objects dl_iterate_phdr lists at
// or before ld.so: ld.so is placed among them at startup, in its place in the
// search order, and every object loaded later is appended at the end of the
// list (_dl_add_to_namespace_list), so nothing before ld.so was loaded after
// startup, and those objects are never removed.  ld.so is the object whose
// load address is AT_BASE.  Only in the base namespace (in a dlmopen
// namespace, its first objects were dlmopen'ed), told by the list's first
// object being the program (glibc names it ""), and libcalloc's namespace.
// 0: unknown (static program, ld.so run as a command, another namespace):
// every rule is checked.
std::uintptr_t g_rtld_base;

LCA_SAMPLING_TEXT void init_rtld_base() {
  Dl_info dl;
  link_map* self = nullptr;
  Lmid_t ns = -1;
  if (!dladdr1(reinterpret_cast<const void*>(&init_rtld_base), &dl, reinterpret_cast<void**>(&self),
               RTLD_DL_LINKMAP) ||
      !self || dlinfo(self, RTLD_DI_LMID, &ns) != 0 || ns != LM_ID_BASE)
    return;
  g_rtld_base = static_cast<std::uintptr_t>(getauxval(AT_BASE));
}

// --- CFI (DWARF call frame information, as in .eh_frame) ---------------------------

// Reads from an object's loaded unwind tables, which the loader keeps mapped
// while dl_iterate_phdr runs; `end` bounds each record.
struct Reader {
  const std::uint8_t* p;
  const std::uint8_t* end;
  std::uintptr_t bias = 0;  // the address in the object of the byte at p is p + bias
  bool ok = true;

  bool has(std::size_t n) {
    if (static_cast<std::size_t>(end - p) < n) ok = false;
    return ok;
  }
  std::uint8_t u8() { return has(1) ? *p++ : 0; }
  template <class T>
  T fixed() {
    T v{};
    if (has(sizeof v)) std::memcpy(&v, p, sizeof v), p += sizeof v;
    return v;
  }
  std::uint64_t uleb() {
    std::uint64_t v = 0;
    unsigned shift = 0;
    for (;;) {
      std::uint8_t b = u8();
      if (!ok) return 0;
      if (shift < 64) v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      shift += 7;
      if (!(b & 0x80)) return v;
    }
  }
  std::int64_t sleb() {
    std::int64_t v = 0;
    unsigned shift = 0;
    std::uint8_t b;
    do {
      b = u8();
      if (!ok) return 0;
      if (shift < 64) v |= static_cast<std::int64_t>(static_cast<std::uint64_t>(b & 0x7f) << shift);
      shift += 7;
    } while (b & 0x80);
    if (shift < 64 && (b & 0x40)) v |= static_cast<std::int64_t>(~std::uint64_t{0} << shift);
    return v;
  }
  // A pointer in DW_EH_PE encoding `enc` (pcrel and datarel supported; datarel
  // is relative to `data`, the .eh_frame_hdr).  Indirect pointers are not read
  // (only personality routines use them, and they are skipped).
  LCA_SAMPLING_TEXT std::uintptr_t encoded(std::uint8_t enc, std::uintptr_t data = 0) {
    if (enc == 0xff) return 0;  // DW_EH_PE_omit
    auto here = reinterpret_cast<std::uintptr_t>(p) + bias;
    std::uintptr_t v;
    switch (enc & 0x0f) {
      case 0x00: v = fixed<std::uint64_t>(); break;  // absptr
      case 0x01: v = uleb(); break;
      case 0x02: v = fixed<std::uint16_t>(); break;
      case 0x03: v = fixed<std::uint32_t>(); break;
      case 0x04: v = fixed<std::uint64_t>(); break;
      case 0x09: v = static_cast<std::uintptr_t>(sleb()); break;
      case 0x0a: v = static_cast<std::uintptr_t>(static_cast<std::intptr_t>(fixed<std::int16_t>())); break;
      case 0x0b: v = static_cast<std::uintptr_t>(static_cast<std::intptr_t>(fixed<std::int32_t>())); break;
      case 0x0c: v = fixed<std::uint64_t>(); break;
      default: ok = false; return 0;
    }
    switch (enc & 0x70) {
      case 0x00: break;
      case 0x10: v += here; break;  // pcrel
      case 0x30:                    // datarel
        if (!data) ok = false;
        v += data;
        break;
      default: ok = false; return 0;
    }
    return v;
  }
};

// Where a miss reads an object's tables from: its file, with pread, when it
// is the file mapped (the same GNU build ID in the mapping's notes and the
// file's; the main program through /proc/self/exe), else the mapping itself
// (the vDSO, an object without a build ID, or whose file was replaced).
// Reading the tables in place made the kernel map up to 64 KiB of file pages
// around each page read (fault-around): the binary search of a big object's
// .eh_frame_hdr alone touched several such windows.
struct Tables {
  const dl_phdr_info* info;
  int fd = -1;

  // n bytes at address addr of the object.
  LCA_SAMPLING_TEXT bool read(std::uintptr_t addr, void* buf, std::size_t n) const {
    std::uintptr_t rel = addr - info->dlpi_addr;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
      const ElfW(Phdr)& ph = info->dlpi_phdr[i];
      if (ph.p_type != PT_LOAD || rel < ph.p_vaddr || rel - ph.p_vaddr > ph.p_filesz ||
          n > ph.p_filesz - (rel - ph.p_vaddr))
        continue;
      if (fd < 0) {
        std::memcpy(buf, reinterpret_cast<const void*>(addr), n);
        return true;
      }
      auto off = static_cast<off_t>(rel - ph.p_vaddr + ph.p_offset);
      return pread(fd, buf, n, off) == static_cast<ssize_t>(n);
    }
    return false;
  }
};

// True when the object's notes (with a GNU build ID among them) read the same
// in the mapping and in the file fd.
LCA_SAMPLING_TEXT bool same_build_id(const dl_phdr_info* info, int fd) {
  bool build_id = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_NOTE || ph.p_filesz == 0) continue;
    std::uint8_t file[512];
    if (ph.p_filesz > sizeof file) return false;
    const auto* mem = reinterpret_cast<const std::uint8_t*>(info->dlpi_addr + ph.p_vaddr);
    if (pread(fd, file, ph.p_filesz, static_cast<off_t>(ph.p_offset)) != static_cast<ssize_t>(ph.p_filesz) ||
        std::memcmp(file, mem, ph.p_filesz) != 0)
      return false;
    std::size_t size;
    if (elf_notes_build_id(file, ph.p_filesz, &size)) build_id = true;
  }
  return build_id;
}

// A CFA record (CIE or FDE) at addr, read into buf (cap bytes): its body (after
// the length) in [*body, *end), and the Reader bias of buf.  32-bit lengths
// only (what GCC and Clang write), at most cap bytes: else false (a fallback).
LCA_SAMPLING_TEXT bool read_record(const Tables& t, std::uintptr_t addr, std::uint8_t* buf, std::size_t cap, const std::uint8_t** body,
                 const std::uint8_t** end, std::uintptr_t* bias) {
  std::uint32_t len;
  if (!t.read(addr, &len, 4) || len == 0 || len == 0xffffffffu || len > cap || !t.read(addr + 4, buf, len))
    return false;
  *body = buf;
  *end = buf + len;
  *bias = addr + 4 - reinterpret_cast<std::uintptr_t>(buf);
  return true;
}

// The rules the walker follows, as the CFA program sets them.
constexpr unsigned kRegRbp = 6, kRegRsp = 7, kRegRa = 16;
struct Row {
  unsigned cfa_reg = kRegRsp;
  std::int64_t cfa_off = 8;
  unsigned char rbp_how = 0;  // 0 unchanged, 1 saved at CFA + rbp_off, 2 not modelled
  std::int64_t rbp_off = 0;
  unsigned char ra_how = 1;  // 1 at CFA + ra_off, 2 not modelled, 3 undefined (outermost frame)
  std::int64_t ra_off = -8;
  bool cfa_ok = true;        // false: CFA by expression, or by another register
};

struct Cie {
  std::uint64_t code_align = 1;
  std::int64_t data_align = -8;
  std::uint8_t fde_enc = 0;  // DW_EH_PE_absptr unless 'R'
  bool has_z = false;
  bool signal = false;
  const std::uint8_t* insns = nullptr;
  const std::uint8_t* end = nullptr;
  std::uintptr_t bias = 0;  // of the buffer holding the CIE
};

constexpr std::size_t kMaxCie = 256, kMaxFde = 1024;

LCA_SAMPLING_TEXT bool parse_cie(const Tables& t, std::uintptr_t addr, std::uint8_t (&buf)[kMaxCie], Cie* c) {
  const std::uint8_t *body, *end;
  if (!read_record(t, addr, buf, sizeof buf, &body, &end, &c->bias)) return false;
  Reader r{body, end, c->bias};
  if (r.fixed<std::uint32_t>() != 0) return false;  // not a CIE
  std::uint8_t version = r.u8();
  if (version != 1 && version != 3) return false;
  const char* aug = reinterpret_cast<const char*>(r.p);
  std::size_t aug_len = strnlen(aug, static_cast<std::size_t>(end - r.p));
  if (!r.has(aug_len + 1)) return false;
  r.p += aug_len + 1;
  if (aug[0] == 'e' && aug[1] == 'h') (void)r.fixed<std::uint64_t>();
  c->code_align = r.uleb();
  c->data_align = r.sleb();
  std::uint64_t ra = version == 1 ? r.u8() : r.uleb();
  if (ra != kRegRa) return false;
  if (aug[0] == 'z') {
    c->has_z = true;
    std::uint64_t len = r.uleb();
    const std::uint8_t* aug_end = r.p + len;
    if (!r.ok || len > static_cast<std::size_t>(end - r.p)) return false;
    for (const char* a = aug + 1; *a; ++a) {
      switch (*a) {
        case 'R': c->fde_enc = r.u8(); break;
        case 'L': (void)r.u8(); break;
        case 'P': {
          std::uint8_t enc = r.u8();
          (void)r.encoded(enc & 0x7f);  // the personality routine (indirect: not followed)
          break;
        }
        case 'S': c->signal = true; break;
        default: return false;  // an augmentation we do not know
      }
    }
    r.p = aug_end;
  } else if (aug[0] != 0 && !(aug[0] == 'e' && aug[1] == 'h' && aug[2] == 0)) {
    return false;
  }
  c->insns = r.p;
  c->end = end;
  return r.ok;
}

// Runs a CFA program up to the row for pc (loc: the program's start address;
// pc < 0 -- ~0 -- runs it all, for the CIE's initial instructions).
LCA_SAMPLING_TEXT bool run_cfa(const std::uint8_t* p, const std::uint8_t* end, std::uintptr_t bias, const Cie& c, std::uintptr_t loc,
             std::uintptr_t pc, Row* row, const Row& initial) {
  Reader r{p, end, bias};
  Row stack[8];
  unsigned depth = 0;
  auto set_reg = [&](std::uint64_t reg, unsigned char how, std::int64_t off) {
    if (reg == kRegRbp) row->rbp_how = how, row->rbp_off = off;
    else if (reg == kRegRa) row->ra_how = how, row->ra_off = off;
    else if (reg == kRegRsp && how != 0) row->cfa_ok = false;  // rsp restored from memory: not modelled
  };
  auto restore_reg = [&](std::uint64_t reg) {
    if (reg == kRegRbp) row->rbp_how = initial.rbp_how, row->rbp_off = initial.rbp_off;
    else if (reg == kRegRa) row->ra_how = initial.ra_how, row->ra_off = initial.ra_off;
  };
  while (r.ok && r.p < r.end) {
    std::uint8_t op = r.u8();
    std::uint8_t low = op & 0x3f;
    std::uint64_t delta = 0;
    bool advance = false;
    switch (op & 0xc0) {
      case 0x40: delta = low, advance = true; break;                      // DW_CFA_advance_loc
      case 0x80: set_reg(low, 1, static_cast<std::int64_t>(r.uleb()) * c.data_align); continue;  // offset
      case 0xc0: restore_reg(low); continue;                              // restore
      default: break;
    }
    if (!advance) {
      switch (op) {
        case 0x00: continue;                                           // nop
        case 0x01: {                                                   // set_loc
          std::uintptr_t to = r.encoded(c.fde_enc);
          if (to > pc) return r.ok;
          loc = to;
          continue;
        }
        case 0x02: delta = r.u8(), advance = true; break;              // advance_loc1
        case 0x03: delta = r.fixed<std::uint16_t>(), advance = true; break;
        case 0x04: delta = r.fixed<std::uint32_t>(), advance = true; break;
        case 0x05: {                                                   // offset_extended
          std::uint64_t reg = r.uleb();
          set_reg(reg, 1, static_cast<std::int64_t>(r.uleb()) * c.data_align);
          continue;
        }
        case 0x06: restore_reg(r.uleb()); continue;                    // restore_extended
        case 0x07: {                                                   // undefined
          std::uint64_t reg = r.uleb();
          if (reg == kRegRa) row->ra_how = 3;
          else set_reg(reg, 2, 0);
          continue;
        }
        case 0x08: {                                                   // same_value
          std::uint64_t reg = r.uleb();
          if (reg == kRegRbp) row->rbp_how = 0;
          else set_reg(reg, 2, 0);
          continue;
        }
        case 0x09: {                                                   // register
          std::uint64_t reg = r.uleb();
          (void)r.uleb();
          set_reg(reg, 2, 0);
          continue;
        }
        case 0x0a:                                                     // remember_state
          if (depth == 8) return false;
          stack[depth++] = *row;
          continue;
        case 0x0b:                                                     // restore_state
          if (depth == 0) return false;
          *row = stack[--depth];
          continue;
        case 0x0c: {                                                   // def_cfa
          row->cfa_reg = static_cast<unsigned>(r.uleb());
          row->cfa_off = static_cast<std::int64_t>(r.uleb());
          row->cfa_ok = true;
          continue;
        }
        case 0x0d: row->cfa_reg = static_cast<unsigned>(r.uleb()); continue;  // def_cfa_register
        case 0x0e: row->cfa_off = static_cast<std::int64_t>(r.uleb()); continue;  // def_cfa_offset
        case 0x0f: {                                                   // def_cfa_expression
          std::uint64_t len = r.uleb();
          if (!r.has(len)) return false;
          r.p += len;
          row->cfa_ok = false;
          continue;
        }
        case 0x10:                                                     // expression
        case 0x16: {                                                   // val_expression
          std::uint64_t reg = r.uleb();
          std::uint64_t len = r.uleb();
          if (!r.has(len)) return false;
          r.p += len;
          set_reg(reg, 2, 0);
          continue;
        }
        case 0x11: {                                                   // offset_extended_sf
          std::uint64_t reg = r.uleb();
          set_reg(reg, 1, r.sleb() * c.data_align);
          continue;
        }
        case 0x12: {                                                   // def_cfa_sf
          row->cfa_reg = static_cast<unsigned>(r.uleb());
          row->cfa_off = r.sleb() * c.data_align;
          row->cfa_ok = true;
          continue;
        }
        case 0x13: row->cfa_off = r.sleb() * c.data_align; continue;   // def_cfa_offset_sf
        case 0x14: {                                                   // val_offset
          std::uint64_t reg = r.uleb();
          (void)r.uleb();
          set_reg(reg, 2, 0);
          continue;
        }
        case 0x15: {                                                   // val_offset_sf
          std::uint64_t reg = r.uleb();
          (void)r.sleb();
          set_reg(reg, 2, 0);
          continue;
        }
        case 0x2e: (void)r.uleb(); continue;                           // GNU_args_size
        case 0x2f: {                                                   // GNU_negative_offset_extended
          std::uint64_t reg = r.uleb();
          set_reg(reg, 1, -static_cast<std::int64_t>(r.uleb()) * c.data_align);
          continue;
        }
        default: return false;  // an opcode we do not know
      }
    }
    // An advance: the rows so far cover [loc, loc + delta).
    std::uintptr_t next = loc + delta * c.code_align;
    if (next > pc) return r.ok;
    loc = next;
  }
  return r.ok;
}

// The address of the FDE covering pc in the object whose .eh_frame_hdr is at
// hdr (hdr_size bytes), through its binary search table; 0 when none does.
// *searchable: false when the table is not the sorted datarel|sdata4 one
// every linker writes.
LCA_SAMPLING_TEXT std::uintptr_t find_fde(const Tables& t, std::uintptr_t hdr, std::size_t hdr_size, std::uintptr_t pc,
                        bool* searchable) {
  std::uint8_t head[20];
  std::size_t n = hdr_size < sizeof head ? hdr_size : sizeof head;
  *searchable = n >= 12 && t.read(hdr, head, n) && head[0] == 1 && head[3] == 0x3b;
  if (!*searchable) return 0;
  Reader r{head + 4, head + n, hdr - reinterpret_cast<std::uintptr_t>(head)};
  (void)r.encoded(head[1], hdr);  // eh_frame_ptr
  std::uintptr_t count = r.encoded(head[2], hdr);
  std::uintptr_t table = hdr + static_cast<std::uintptr_t>(r.p - head);
  if (!r.ok || count == 0 || count > (hdr_size - (table - hdr)) / 8) return 0;
  // Entries: (initial location, FDE), both relative to hdr; the last one whose
  // location is <= pc.
  auto loc_of = [&](std::uintptr_t i, std::int32_t* loc) { return t.read(table + 8 * i, loc, 4); };
  std::uintptr_t lo = 0, hi = count;
  while (hi - lo > 1) {
    std::uintptr_t mid = (lo + hi) / 2;
    std::int32_t loc;
    if (!loc_of(mid, &loc)) return 0;
    if (hdr + static_cast<std::intptr_t>(loc) <= pc)
      lo = mid;
    else
      hi = mid;
  }
  std::int32_t entry[2];
  if (!t.read(table + 8 * lo, entry, 8) || hdr + static_cast<std::intptr_t>(entry[0]) > pc) return 0;
  return hdr + static_cast<std::intptr_t>(entry[1]);
}

// The rule of the frame executing at pc, from the FDE at fde.
LCA_SAMPLING_TEXT Rule rule_from_fde(const Tables& t, std::uintptr_t fde, std::uintptr_t pc) {
  Rule out;  // fallback
  std::uint8_t buf[kMaxFde];
  const std::uint8_t *body, *end;
  std::uintptr_t bias;
  if (!read_record(t, fde, buf, sizeof buf, &body, &end, &bias)) return out;
  Reader r{body, end, bias};
  std::uint32_t cie_ptr = r.fixed<std::uint32_t>();
  if (cie_ptr == 0) return out;  // a CIE, not an FDE
  Cie c;
  std::uint8_t cie_buf[kMaxCie];
  if (!parse_cie(t, fde + 4 - cie_ptr, cie_buf, &c) || c.signal) return out;
  std::uintptr_t begin = r.encoded(c.fde_enc);
  std::uintptr_t range = r.encoded(c.fde_enc & 0x0f);
  if (!r.ok) return out;
  if (pc < begin || pc - begin >= range) {
    out.kind = Rule::end;  // no FDE covers pc: an unwinder stops here
    return out;
  }
  if (c.has_z) {
    std::uint64_t len = r.uleb();
    if (!r.has(len)) return out;
    r.p += len;
  }
  Row initial;
  if (!run_cfa(c.insns, c.end, c.bias, c, begin, ~std::uintptr_t{0}, &initial, initial)) return out;
  Row row = initial;
  if (!run_cfa(r.p, end, bias, c, begin, pc, &row, initial)) return out;
  if (row.ra_how == 3) {
    out.kind = Rule::end;
    return out;
  }
  if (!row.cfa_ok || (row.cfa_reg != kRegRsp && row.cfa_reg != kRegRbp) || row.ra_how != 1 || row.ra_off != -8 ||
      row.rbp_how == 2)
    return out;
  out.kind = Rule::walk;
  out.cfa_rbp = row.cfa_reg == kRegRbp;
  out.cfa_off = row.cfa_off;
  out.rbp_off = row.rbp_how == 1 ? row.rbp_off : 0;
  if (out.rbp_off == 0 && row.rbp_how == 1) return Rule{};  // rbp saved at the CFA itself: not modelled
  return out;
}

struct FindQuery {
  std::uintptr_t pc;
  Rule rule;               // kind end unless an FDE says otherwise
  bool may_unload = true;  // false: pc lies in an object that is never unloaded
  bool counters = false;   // the generation check ran (dl_iterate_phdr gave the counters)
  bool first = true;
  bool past_rtld = false;  // ld.so was listed before the object being looked at
  bool base_ns = false;    // the list began with the program: the base namespace
};

LCA_SAMPLING_TEXT int find_cb(dl_phdr_info* info, std::size_t size, void* data) {
  auto* q = static_cast<FindQuery*>(data);
  if (q->first) {
    // A miss is the walk's generation check too (see walk_frames).
    q->first = false;
    q->counters = size >= offsetof(dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs;
    if (!q->counters) return 1;
    check_generation(info->dlpi_adds, info->dlpi_subs);
    q->base_ns = info->dlpi_name && info->dlpi_name[0] == '\0';
  }
  bool inside = false;
  const ElfW(Phdr)* eh = nullptr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    std::uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_type == PT_LOAD && q->pc >= lo && q->pc - lo < ph.p_memsz) inside = true;
    if (ph.p_type == PT_GNU_EH_FRAME) eh = &ph;
  }
  bool rtld = g_rtld_base != 0 && info->dlpi_addr == g_rtld_base;
  if (!inside) {
    q->past_rtld = q->past_rtld || rtld;
    return 0;
  }
  // At or before ld.so in the list: loaded at startup, never unloaded.
  q->may_unload = g_rtld_base == 0 || !q->base_ns || q->past_rtld;
  if (eh) {
    Tables t{info};
    const char* path = info->dlpi_name && info->dlpi_name[0] ? info->dlpi_name : "/proc/self/exe";
    t.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (t.fd >= 0 && !same_build_id(info, t.fd)) {
      close(t.fd);
      t.fd = -1;
    }
    bool searchable;
    if (std::uintptr_t fde = find_fde(t, info->dlpi_addr + eh->p_vaddr, eh->p_memsz, q->pc, &searchable))
      q->rule = rule_from_fde(t, fde, q->pc);
    else if (!searchable)
      q->rule = Rule{};  // a table we cannot search: libgcc can
    if (t.fd >= 0) close(t.fd);
  }
  return 1;
}

// --- the walk ----------------------------------------------------------------------

// The thread's stack, [lo, hi), read at its first capture (0, 0: not yet;
// 1, 1: unknown, every capture falls back).  The main thread's runs from the
// page holding __libc_stack_end (argv, the environment and the auxiliary
// vector lie above it, in the same mapping) down by RLIMIT_STACK (8 MiB when
// unlimited), a range the kernel keeps for it -- without pthread_getattr_np,
// which for the main thread reads /proc/self/maps with stdio (and pulled 192
// KiB of libc's pages in); other threads' from pthread_getattr_np.
constinit thread_local std::uintptr_t tls_stack_lo __attribute__((tls_model("initial-exec"))) = 0;
constinit thread_local std::uintptr_t tls_stack_hi __attribute__((tls_model("initial-exec"))) = 0;
constinit thread_local bool tls_reading_bounds __attribute__((tls_model("initial-exec"))) = false;

LCA_SAMPLING_TEXT bool main_stack(std::uintptr_t sp, std::uintptr_t* lo, std::uintptr_t* hi) {
  if (static_cast<pid_t>(syscall(SYS_gettid)) != getpid() || !__libc_stack_end) return false;
  auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  std::uintptr_t top = (reinterpret_cast<std::uintptr_t>(__libc_stack_end) | (page - 1)) + 1;
  rlimit r{};
  std::uintptr_t size = 8u << 20;
  if (getrlimit(RLIMIT_STACK, &r) == 0 && r.rlim_cur != RLIM_INFINITY && r.rlim_cur < top) size = r.rlim_cur;
  if (sp >= top || sp < top - size) return false;  // the main thread on another stack
  *lo = top - size;
  *hi = top;
  return true;
}

LCA_SAMPLING_TEXT bool stack_bounds(std::uintptr_t sp, std::uintptr_t* lo, std::uintptr_t* hi) {
  if (tls_stack_hi == 0) {
    if (tls_reading_bounds) return false;  // a malloc from pthread_getattr_np sampled
    tls_reading_bounds = true;
    tls_stack_lo = tls_stack_hi = 1;
    pthread_attr_t a;
    if (main_stack(sp, &tls_stack_lo, &tls_stack_hi)) {
    } else if (pthread_getattr_np(pthread_self(), &a) == 0) {
      void* addr = nullptr;
      std::size_t size = 0;
      if (pthread_attr_getstack(&a, &addr, &size) == 0 && addr && size) {
        tls_stack_lo = reinterpret_cast<std::uintptr_t>(addr);
        tls_stack_hi = tls_stack_lo + size;
      }
      pthread_attr_destroy(&a);
    }
    tls_reading_bounds = false;
  }
  *lo = tls_stack_lo;
  *hi = tls_stack_hi;
  return *hi > *lo + 1;
}

struct Walk {
  void** out;
  int max;
  int n;
  bool done;  // finished: the outermost frame, or max frames
  std::uintptr_t pc, sp, bp;  // the frame being unwound: where it executes, its rsp and rbp
  std::uintptr_t lo, hi;      // what may be read
  bool checked = false;       // the generation check ran in this walk
  bool fork_locked = false;   // g_fork_rw held shared (from the walk's first dl_iterate_phdr)
};

// Reads the stack beyond the frames ASan knows of: not instrumented.
LCA_SAMPLING_TEXT __attribute__((no_sanitize("address"))) std::uintptr_t read_word(std::uintptr_t a) {
  std::uintptr_t v;
  __builtin_memcpy(&v, reinterpret_cast<const void*>(a), sizeof v);
  return v;
}

// Before its first call of dl_iterate_phdr, a walk takes g_fork_rw (shared,
// kept to the walk's end); false when a fork is under way.
LCA_SAMPLING_TEXT bool enter_loader(Walk* w) {
  if (!w->fork_locked) {
    if (pthread_rwlock_tryrdlock(&g_fork_rw) != 0) return false;
    w->fork_locked = true;
  }
  return true;
}

LCA_SAMPLING_TEXT int generation_cb(dl_phdr_info* info, std::size_t size, void* data) {
  bool* ok = static_cast<bool*>(data);
  *ok = size >= offsetof(dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs;
  if (*ok) check_generation(info->dlpi_adds, info->dlpi_subs);
  return 1;  // the first object has the counters
}

// Why a cached rule is never stale.  A rule of an object loaded at startup
// (kMayUnload clear) is used as it is: that object is never unloaded (see
// g_rtld_base), so nothing else can ever lie at its addresses.  A rule with
// kMayUnload is used only after this walk's generation check: one
// dl_iterate_phdr, under the loader's lock, comparing its counters of
// objects loaded and unloaded with those at the cache's last flush
// (check_generation), and emptying the cache when they differ.  A miss's
// dl_iterate_phdr is that check too.  It runs once a walk, at the walk's
// first such rule, and holds because:
//  - the object B holding a frame of this thread's stack was loaded before
//    the walk began (s) and stays loaded until it ends (a program does not
//    unload code a thread is running);
//  - a rule R for that pc was read, under the loader's lock, from the object
//    A at pc then, by a walk that had a frame in A, so A was still loaded
//    when R entered the cache (at t);
//  - if t >= s, A and B were both at pc at t: A is B.  If t < s and A is not
//    B, A was unloaded and B loaded between t and s, before the check; the
//    counters (which only grow) then differ from those of every flush before
//    those events, so the flush whose counters the check matched came after
//    them, after t, and emptied R from the cache (every slot of the current
//    table with kMayUnload is zeroed under the loader's lock, and R has it:
//    A was unloaded, so dlopen loaded it; an older table is never read
//    again), or the check itself empties it.  Contradiction: R is B's rule.
// Without the check, a walk served by the cache alone takes no lock: the
// program's own frames and those of its libraries (the usual stack) cost
// no dl_iterate_phdr; a stack through a dlopen'ed library costs one.
LCA_SAMPLING_TEXT void walk_frames(Walk* w) {
  std::uintptr_t pc = w->pc, sp = w->sp, bp = w->bp;
  for (;;) {
    std::uint64_t bits = cache_find(pc);
    if ((bits & kMayUnload) && !w->checked) {
      if (!enter_loader(w)) return;
      bool counters = false;
      dl_iterate_phdr(generation_cb, &counters);
      g_checks.fetch_add(1, std::memory_order_relaxed);
      if (!counters) return;  // cannot tell: the fallback walks
      w->checked = true;
      bits = cache_find(pc);  // gone if the cache was emptied
    }
    Rule rule;
    if (bits) {
      ++tls_hits;
      rule = unpack(bits);
    } else {
      if (!enter_loader(w)) return;
      g_misses.fetch_add(1, std::memory_order_relaxed);
      FindQuery q{pc, Rule{}};
      q.rule.kind = Rule::end;
      dl_iterate_phdr(find_cb, &q);
      if (!q.counters) return;
      w->checked = true;
      rule = q.rule;
      cache_insert(pc, pack(rule, q.may_unload));
    }
    if (rule.kind == Rule::end) {
      w->done = true;
      return;
    }
    if (rule.kind == Rule::fallback) return;
    std::uintptr_t cfa = (rule.cfa_rbp ? bp : sp) + static_cast<std::uintptr_t>(rule.cfa_off);
    // The return address at CFA - 8 and rbp's slot must lie in the part of
    // the stack above the capture, and the CFA above this frame's rsp.
    if (cfa <= sp || cfa < w->lo + 8 || cfa > w->hi) return;
    std::uintptr_t ra = read_word(cfa - 8);
    if (rule.rbp_off) {
      std::uintptr_t slot = cfa + static_cast<std::uintptr_t>(rule.rbp_off);
      if (slot < w->lo || slot > w->hi - 8) return;
      bp = read_word(slot);
    }
    sp = cfa;
    if (ra == 0 || w->n >= w->max) {
      w->done = true;
      return;
    }
    w->out[w->n++] = reinterpret_cast<void*>(ra);
    pc = ra - 1;  // the call instruction, whose row describes the caller's frame
  }
}

// Our walk; -1 - (the frames it found) when it could not finish.  Starts at its own frame (whose rule
// at `here` gives its caller's), so its out[0] is the return address into its
// caller, as with the other walks.
LCA_SAMPLING_TEXT __attribute__((noinline)) int own_capture(void** out, int max) {
  std::uintptr_t here, sp, bp;
  asm volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2" : "=r"(here), "=r"(sp), "=r"(bp));
  if (++tls_captures == kCountBatch) publish_counts();
  Walk w{out, max, 0, false, here, sp, bp, 0, 0, false, false};
  std::uintptr_t lo, hi;
  if (!stack_bounds(sp, &lo, &hi) || sp < lo || sp >= hi) return -1;
  w.lo = sp;
  w.hi = hi;
  walk_frames(&w);
  if (w.fork_locked) pthread_rwlock_unlock(&g_fork_rw);
  // A rule with kMayUnload is used only after the walk's check, and a walk
  // whose rules were all cached without it has frames in objects never
  // unloaded; a checked walk may have had a miss only (told apart by no
  // more than the cost of site_holds' look at the log).
  tls_objects = !w.done ? CaptureObjects::unknown : w.checked ? CaptureObjects::checked : CaptureObjects::permanent;
  return w.done ? w.n : -1 - w.n;
}

#endif  // LCA_OWN_UNWINDER

// Drops raw[0], the return address into the hook that called the walk.
LCA_SAMPLING_TEXT int drop_first(void** out, void* const* raw, int n) {
  if (n <= 0) return n;
  std::memcpy(out, raw + 1, static_cast<std::size_t>(n - 1) * sizeof(void*));
  return n - 1;
}

}  // namespace

LCA_SAMPLING_TEXT const unsigned char* elf_notes_build_id(const unsigned char* notes, std::size_t n, std::size_t* size) {
  for (std::size_t k = 0; n - k >= sizeof(ElfW(Nhdr));) {  // a header, the name, the descriptor
    ElfW(Nhdr) nh;
    std::memcpy(&nh, notes + k, sizeof nh);
    std::size_t name = k + sizeof nh, desc = name + ((std::size_t{nh.n_namesz} + 3) & ~std::size_t{3});
    if (desc > n || nh.n_descsz > n - desc) return nullptr;
    if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 && std::memcmp(notes + name, "GNU", 4) == 0 &&
        nh.n_descsz > 0) {
      *size = nh.n_descsz;
      return notes + desc;
    }
    k = desc + ((std::size_t{nh.n_descsz} + 3) & ~std::size_t{3});
    if (k > n) return nullptr;
  }
  return nullptr;
}

LCA_SAMPLING_TEXT void unwind_init() { pthread_once(&g_init_once, init_once); }

// Each walk called here lists this function's frame first: dropped.
LCA_SAMPLING_TEXT __attribute__((noinline)) int unwind_capture(void** out, int max) {
  // malloc keeps errno: a walk may fail an open (a library deleted since it
  // was loaded), a pread or a dlopen's search, and the program's errno must not
  // change under it (test_capture_keeps_errno).
  const int saved_errno = errno;
  unwind_init();
  void* raw[kUnwindMaxFrames + 1];
  if (max > kUnwindMaxFrames) max = kUnwindMaxFrames;
  int n = -1, partial = 0;
  tls_objects = CaptureObjects::unknown;
#if LCA_OWN_UNWINDER
  // Not in Valgrind mode: there the walk would take the loader's lock while
  // holding VgSerial, and a thread in dlopen that mallocs waits for VgSerial.
  if (!vg_serialised()) {
    n = own_capture(raw, max + 1);
    if (n < 0) {
      partial = -1 - n;
      g_fallbacks.fetch_add(1, std::memory_order_relaxed);
    }
  }
#endif
  if (n < 0) {
    tls_objects = CaptureObjects::unknown;
    if (const Unwinder* u = fallback(raw, partial))
      n = u->gcc_backtrace ? gcc_capture(*u, raw, max + 1) : step_capture(*u, raw, max + 1);
    else
      n = partial;  // the frames our walker found, as far as it could go
  }
  errno = saved_errno;
  return drop_first(out, raw, n);
}

__attribute__((noinline)) int unwind_capture_ours(void** out, int max) {
#if LCA_OWN_UNWINDER
  unwind_init();
  void* raw[kUnwindMaxFrames + 1];
  if (max > kUnwindMaxFrames) max = kUnwindMaxFrames;
  int n = own_capture(raw, max + 1);
  return n < 0 ? -1 : drop_first(out, raw, n);
#else
  (void)out, (void)max;
  return -1;
#endif
}

__attribute__((noinline)) int unwind_capture_step(void** out, int max) {
  pthread_once(&g_step_once, load_step_once);
  if (!g_step_unwinder.step || !g_step_flush || !g_step_as) return -1;
  g_step_flush(*g_step_as, 0, 0);
  void* raw[kUnwindMaxFrames + 1];
  if (max > kUnwindMaxFrames) max = kUnwindMaxFrames;
  return drop_first(out, raw, step_capture(g_step_unwinder, raw, max + 1));
}

constinit thread_local CaptureObjects tls_objects __attribute__((tls_model("initial-exec"))) = CaptureObjects::unknown;

LCA_SAMPLING_TEXT void unwind_last_counters(unsigned long long* adds, unsigned long long* subs) {
  *adds = tls_seen_adds;
  *subs = tls_seen_subs;
}

LCA_SAMPLING_TEXT bool unwind_enter_loader() {
#if LCA_OWN_UNWINDER
  return pthread_rwlock_tryrdlock(&g_fork_rw) == 0;
#else
  return true;
#endif
}

LCA_SAMPLING_TEXT void unwind_leave_loader() {
#if LCA_OWN_UNWINDER
  pthread_rwlock_unlock(&g_fork_rw);
#endif
}

// Set by the forking thread when its prepare handler took g_fork_rw (not when
// the process was single-threaded): the parent unlocks it; the child
// re-initialises it (glibc knows the writer by its thread id, which the
// child's thread does not have).  g_cache_lock is taken only inside walks, so
// no thread holds it at the fork.
bool g_fork_locked;

LCA_SAMPLING_TEXT void unwind_prefork() {
#if LCA_OWN_UNWINDER
  // Not in Valgrind mode, where malloc never walks (see unwind_capture), and
  // DRD cannot follow a rwlock re-initialised in the child.
  if (vg_serialised()) return;
  pthread_rwlock_wrlock(&g_fork_rw);
  g_fork_locked = true;
#endif
}

LCA_SAMPLING_TEXT void unwind_postfork_parent() {
#if LCA_OWN_UNWINDER
  if (!g_fork_locked) return;
  g_fork_locked = false;
  pthread_rwlock_unlock(&g_fork_rw);
#endif
}

LCA_SAMPLING_TEXT void unwind_postfork_child() {
  int loading = 1;  // a thread of the parent was loading the fallback: the child may try again
  g_fb_state.compare_exchange_strong(loading, 0, std::memory_order_relaxed);
#if LCA_OWN_UNWINDER
  if (!g_fork_locked) return;
  g_fork_locked = false;
  // Made again, not unlocked: glibc's unlock of a write lock compares the
  // writer's thread id, which the child's thread does not have.  TSan must be
  // told of the release, or the child's next fork reports a double lock
  // (tests/unit/fork under TSan with --enable-tracking: the scenario's child
  // forks again).
  tsan_released_at_fork(&g_fork_rw);
  pthread_rwlockattr_t a;
  pthread_rwlockattr_init(&a);
  pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&g_fork_rw, &a);
  pthread_rwlockattr_destroy(&a);
#endif
}

UnwindStats unwind_stats() {
  publish_counts();
  UnwindStats s{};
  s.captures = g_captures.load(std::memory_order_relaxed);
  s.fallbacks = g_fallbacks.load(std::memory_order_relaxed);
  s.hits = g_hits.load(std::memory_order_relaxed);
  s.misses = g_misses.load(std::memory_order_relaxed);
  s.uncached = g_uncached.load(std::memory_order_relaxed);
  s.flushes = g_flushes.load(std::memory_order_relaxed);
  s.checks = g_checks.load(std::memory_order_relaxed);
#if LCA_OWN_UNWINDER
  s.entries = g_entries.load(std::memory_order_relaxed);
  s.bytes = g_table_bytes.load(std::memory_order_relaxed);
#endif
  return s;
}

}  // namespace lca
