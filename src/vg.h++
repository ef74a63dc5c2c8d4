// vg.h++ -- what Valgrind sees of libcalloc (configure --enable-valgrind-annotations).
//
// Under a Valgrind tool that tracks heap blocks -- memcheck, helgrind, DRD, massif,
// DHAT: RUNNING_ON_VALGRIND, and the tool's preload library in LD_PRELOAD, checked
// once, on the first allocation -- libcalloc works in "Valgrind mode" (callgrind
// and cachegrind profile the allocator as it runs natively):
//  - the fast paths are never taken: tls_heap stays the empty g_no_heap, so every
//    malloc and free goes through the slow paths, where the client requests are
//    (the fast paths carry no annotation and no extra test);
//  - every block is a VALGRIND_MALLOCLIKE_BLOCK of exactly the requested size,
//    followed by at least kVgRedzone bytes that stay no-access (a one-byte
//    overflow is reported as "0 bytes after a block of size N"); the requested
//    size is kept in the last word of the slot, inside that slack;
//  - free is a VALGRIND_FREELIKE_BLOCK, and the block waits in a FIFO quarantine
//    (kVgQuarantine blocks) before its memory is reused, so a use after free is
//    reported as "inside a block of size N free'd" rather than hitting a new block;
//  - free memory is no-access, and libcalloc brackets its own accesses to the
//    links kept in free memory (make defined, access, make no-access again);
//  - each independent heap (MemoryAllocator) is a METAPOOL|AUTO_FREE mempool whose
//    chunks are its spans' and arena's chunks and its large mappings, so
//    destroying the heap frees, for memcheck too, every block still in it;
//  - libcalloc serialises itself with a lock helgrind and DRD do not see, and
//    keeps its own memory out of their race checking (VgSerial, vg_hide below).
// Without the annotations compiled in, every function here is an empty inline --
// except in an AddressSanitizer build, where Valgrind mode is "ASan mode", always
// on: the same hooks, implemented in asan.c++ with ASan's poisoning (sanitizer.h++).
#ifndef LCA_VG_HXX
#define LCA_VG_HXX

#include <cstddef>
#include <cstdint>

#include "sanitizer.h++"
#include "chunk.h++"
#include "config.h"

#if CALLOC_VALGRIND && LCA_ASAN
#error "Valgrind annotations and AddressSanitizer do not mix: put -fsanitize=address in CXXFLAGS when running configure (it then leaves the annotations out)"
#endif

#include <pthread.h>

#if CALLOC_VALGRIND
#include <valgrind/helgrind.h>
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>
#endif

namespace lca {

// Bytes after each block that the user may not touch (and where the requested size
// is kept).  A multiple of 16, so that alignment is unaffected.
constexpr std::size_t kVgRedzone = 16;
constexpr std::size_t kVgQuarantine = 512;

#if CALLOC_VALGRIND
extern bool g_on_valgrind LCA_HIDDEN;
extern bool g_vg_decided LCA_HIDDEN;
inline bool on_valgrind() { return __builtin_expect(g_on_valgrind, false); }
// Decides Valgrind mode: called on the allocation slow path, so that the very
// first block (allocated before any constructor of ours ran) is annotated.
// Every thread reaches the same answer: racing is harmless.
void vg_decide();
inline void vg_init() {
  if (__builtin_expect(!g_vg_decided, false)) vg_decide();
}
#else
// ASan mode (sanitizer.h++) takes every path Valgrind mode takes.
constexpr bool on_valgrind() { return LCA_ASAN; }
inline void vg_init() {}
#endif

// One round of a wait for another thread: spins, then yields, then 20 us
// sleeps (Valgrind runs one thread at a time and hands the CPU straight back
// to a thread that yields: it sleeps there from the first round).  Slow paths
// only: the handle heap's movers and readers, the secure heap's release.
void pause_briefly(unsigned round);

#if CALLOC_VALGRIND
inline void vg_noaccess(const void* p, std::size_t n) {
  if (on_valgrind()) (void)VALGRIND_MAKE_MEM_NOACCESS(p, n);
}
inline void vg_undefined(const void* p, std::size_t n) {
  if (on_valgrind()) (void)VALGRIND_MAKE_MEM_UNDEFINED(p, n);
}
inline void vg_defined(const void* p, std::size_t n) {
  if (on_valgrind()) (void)VALGRIND_MAKE_MEM_DEFINED(p, n);
}
#else
// ASan has no "undefined": both make the bytes addressable.
inline void vg_noaccess(const void* p, std::size_t n) { asan_poison(p, n); }
inline void vg_undefined(const void* p, std::size_t n) { asan_unpoison(p, n); }
inline void vg_defined(const void* p, std::size_t n) { asan_unpoison(p, n); }
#endif

// fork(): the locks that the forking thread holds across the fork, from the end
// of libcalloc's prepare handler to the start of its parent or child handler
// (lifecycle.c++).  pthread_atfork runs the prepare handlers last-registered
// first and the others first-registered first, so the handlers of a library
// that registered before libcalloc -- its constructor ran first: under
// LD_PRELOAD every other library's does -- run inside that window, and glibc's
// fork lets them allocate ("fork handlers may use malloc", posix/fork.c: its own
// malloc's locks are taken after them and let go before them).  In the window
// the forking thread passes through the locks it holds (it alone may touch what
// they guard: every other thread waits for them), in the parent and in the
// child, where the copied locks' owner is a thread of the parent.  Recorded by
// the prefork functions (fork_hold), each lock or array of locks a range.  The
// list is global: only the forking thread writes or reads it, holding
// libcalloc's locks, and glibc runs one fork's handlers at a time (its atfork
// lock); the thread-local flag is all a thread carries (set only in the
// forking thread, in the window).
constexpr unsigned kForkHeldRanges = 32;
struct ForkHeldLocks {
  unsigned count;
  struct {
    const void* begin;
    const void* end;
  } ranges[kForkHeldRanges];
};
extern ForkHeldLocks g_fork_held LCA_HIDDEN;
extern constinit thread_local bool tls_fork_window __attribute__((tls_model("initial-exec"))) LCA_HIDDEN;
// Records the locks in [begin, end) (an array of them, or of structures that
// hold one each), held now by this thread until after the fork; fork_hold(m):
// m alone.
void fork_hold_range(const void* begin, const void* end);
inline void fork_hold(const pthread_mutex_t* m) { fork_hold_range(m, m + 1); }
// Whether the lock at m is one of the recorded ones (out of line: the window is
// rare).  Any kind of lock: the tracker's spin locks too.
bool fork_held(const void* m);
inline bool fork_passes(const void* m) { return __builtin_expect(tls_fork_window, false) && fork_held(m); }
// pthread_mutex_lock/unlock(m) unless fork_held(m): lca_mutex_lock's way in the
// window, out of line so that each lock site adds one test of the flag only.
void fork_window_lock(pthread_mutex_t* m);
void fork_window_unlock(pthread_mutex_t* m);

// Valgrind mode serialises libcalloc: every entry point that reaches shared state
// (allocation, free, realloc, usable size, trim, statistics, heap creation and
// destruction, thread exit, fork) holds one recursive lock, outermost, for its
// whole run (a per-thread depth, so that nested entries -- a realloc that
// allocates and frees -- take it once), and libcalloc's inner mutexes (the
// domain locks, the large-block table's, the huge-page tables', the
// quarantine's: lca_mutex_lock) are that same lock.  The lock is a futex word
// the tools do not see (not a spinlock: Valgrind's scheduler hands the CPU
// straight back to a thread that yields, so spinning livelocks), so it gives
// helgrind and DRD no happens-before edge between two threads' allocator calls:
// a user's race stays visible when both threads call malloc or free between
// their accesses.  libcalloc's own memory is kept out of their race checking
// instead (vg_hide: its writable segments, every mapping it makes, each freed
// block; vg_show_clean on a block handed out), so that its lock-free design is
// not reported either.  Valgrind runs one thread at a time anyway, so the lock
// costs next to nothing there.  Outside Valgrind mode it is one predictable
// branch on the slow paths only.
#if CALLOC_VALGRIND
inline bool vg_serialised() { return on_valgrind(); }
extern constinit thread_local unsigned tls_vg_serial_depth __attribute__((tls_model("initial-exec"))) LCA_HIDDEN;
// The futex word itself (0 free, 1 held, 2 held with waiters).
void vg_serial_lock();
void vg_serial_unlock();
inline void vg_serial_enter() {
  if (tls_vg_serial_depth++ == 0) vg_serial_lock();
}
inline void vg_serial_leave() {
  if (--tls_vg_serial_depth == 0) vg_serial_unlock();
}
class VgSerial {
 public:
  VgSerial() : held_(on_valgrind()) {
    if (held_) vg_serial_enter();
  }
  ~VgSerial() {
    if (held_) vg_serial_leave();
  }
  VgSerial(const VgSerial&) = delete;
  VgSerial& operator=(const VgSerial&) = delete;

 private:
  bool held_;
};
// libcalloc's inner mutexes.  Valgrind mode is decided on the first allocation,
// before any of them is taken, and never changes.
inline void lca_mutex_lock(pthread_mutex_t* m) {
  if (vg_serialised())
    vg_serial_enter();
  else if (__builtin_expect(tls_fork_window, false))
    fork_window_lock(m);
  else
    pthread_mutex_lock(m);
}
inline void lca_mutex_unlock(pthread_mutex_t* m) {
  if (vg_serialised())
    vg_serial_leave();
  else if (__builtin_expect(tls_fork_window, false))
    fork_window_unlock(m);
  else
    pthread_mutex_unlock(m);
}
// libcalloc's own memory, n bytes at p: no race checking by helgrind and DRD.
void vg_hide(const void* p, std::size_t n);
// A user's block (or the part of it that grew), n bytes at p: checked, from a
// clean state (a block reused by another thread is no race).
void vg_show_clean(const void* p, std::size_t n);
#else
constexpr bool vg_serialised() { return false; }  // ASan mode is not serialised
class VgSerial {
 public:
  VgSerial() {}
  VgSerial(const VgSerial&) = delete;
  VgSerial& operator=(const VgSerial&) = delete;
};
inline void lca_mutex_lock(pthread_mutex_t* m) {
  if (__builtin_expect(tls_fork_window, false))
    fork_window_lock(m);
  else
    pthread_mutex_lock(m);
}
inline void lca_mutex_unlock(pthread_mutex_t* m) {
  if (__builtin_expect(tls_fork_window, false))
    fork_window_unlock(m);
  else
    pthread_mutex_unlock(m);
}
inline void vg_hide(const void*, std::size_t) {}
inline void vg_show_clean(const void*, std::size_t) {}
#endif

// Reads or writes n bytes of libcalloc's own data inside free (no-access) memory.
// The bytes are no-access again afterwards.
template <typename F>
inline auto vg_in_free_memory(const void* p, std::size_t n, F&& access) -> decltype(access()) {
  if (!on_valgrind()) return access();
  vg_defined(p, n);
  struct Restore {
    const void* p;
    std::size_t n;
    ~Restore() { vg_noaccess(p, n); }
  } restore{p, n};
  return access();
}

// Reads a word of a block that may be live (user data, perhaps undefined) or free
// (no-access), without changing what memcheck knows of it.
std::uintptr_t vg_peek_word(const void* p);

// --- Valgrind mode: the API-level events (no-ops outside it) ----------------
struct Domain;
// The request a block is made with in Valgrind mode (size plus the redzone).
inline std::size_t vg_inner_size(std::size_t size) { return on_valgrind() ? size + kVgRedzone : size; }
// A block of `usable` bytes at p was just made for a request of `size`.
void vg_block_allocated(void* p, std::size_t size, std::size_t usable, bool zeroed);
// The requested size of a live block (Valgrind mode only).
std::size_t vg_block_size(const void* p, std::size_t usable);
// A block was resized in place from old_size to size bytes (its usable bytes from
// old_usable to usable; what it gave up is libcalloc's memory again).
void vg_block_resized(void* p, std::size_t old_size, std::size_t size, std::size_t old_usable,
                      std::size_t usable);
// Free in Valgrind mode: reports double frees of quarantined blocks, validates,
// tells memcheck, and quarantines p; the block whose turn has come is returned to
// the heap through `release` (a full free without Valgrind-mode handling).
void vg_free(void* p, void (*release)(void*));

// Copies the V bits of n bytes at p to buf, and back (n may be 0).
void vg_save_vbits(const void* p, void* buf, std::size_t n);
void vg_restore_vbits(const void* p, const void* buf, std::size_t n);
// A block that goes away without a free (its heap is destroyed).
void vg_block_forgotten(const void* p);

// fork(): in Valgrind mode the serialising lock alone is held across it (the
// quarantine lock is the same lock there; in ASan mode it is a mutex of its own,
// taken after libcalloc's other locks).  The child's one thread is the thread
// that took it, so it releases it as the parent does.
void vg_prefork_first();
void vg_prefork();
void vg_postfork_parent();
void vg_postfork_child();

// Independent heaps as mempools.
void vg_domain_created(Domain* d);
// Before the heap's memory goes: its blocks leave the quarantine.
void vg_domain_destroying(Domain* d);
// After: the mempool goes.
void vg_domain_destroyed(Domain* d);
void vg_chunk_added(Domain* d, const void* chunk, std::size_t size);
void vg_chunk_removed(Domain* d, const void* chunk);

// Defragmentation (defrag.c++): the heap's blocks waiting in the quarantine
// are freed for good now, so that every block its spans and arena chunks hold is
// live.  No-op outside Valgrind and ASan mode.
void vg_quarantine_release_domain(Domain* d);

}  // namespace lca

#endif
