// lifecycle.c++ -- a thread heap's life: creation or adoption at a thread's first
// allocation, abandonment at thread exit, and fork().
//
// A thread's first allocation in the process domain adopts an abandoned heap
// whole or creates one; a pthread key's destructor abandons it to the domain at
// thread exit with whatever it still holds (after sending its pending remote
// frees to their owners).  fork() is handled here too, so that the rules for
// which lock is held across it, and what the child inherits, read in one place.
#include "lifecycle.h++"
#include "placement.h++"

#include <cerrno>
#include <pthread.h>

#include <libcalloc.h>

#include "config.h"
#if CALLOC_TRACKING
#include "track.h++"
#include "track-unwind.h++"
#endif
#include "huge.h++"
#include "large.h++"
#include "numa.h++"
#include "options.h++"
#include "report.h++"
#include "secure.h++"
#include "sanitizer.h++"
#include "tcache.h++"
#include "vg.h++"

namespace lca {

namespace {

LCA_CORE_DATA(heap_key) constinit pthread_key_t g_heap_key{};
LCA_CORE_DATA(heap_key_once) constinit pthread_once_t g_heap_key_once = PTHREAD_ONCE_INIT;

LCA_CORE_TEXT void heap_abandon(Heap* h) {
  Domain* d = h->domain;
  // Its spans go to the domain's pools, for the running heaps' refills (span
  // reclaim, tcache.h++): the heap is adopted empty of spans.  Not under the
  // domain lock (each class's pool has its own, and a refill takes no other):
  // the heap is not on the abandoned list yet, so no other thread reaches it.
  heap_orphan_spans(h);
  DomainLock lock(d);
  heap_collect_all(h, false);
  h->abandoned = true;
  h->next_abandoned = d->abandoned;
  d->abandoned = h;
}

LCA_CORE_TEXT void on_thread_exit(void* value) {
  VgSerial serial;
  auto* h = static_cast<Heap*>(value);
  remote_batch_flush_all(h);
  if (tls_owned_heap == h) {
    tls_owned_heap = nullptr;
    tls_heap = &g_no_heap;
    tls_heap_gone = true;
  }
  heap_abandon(h);
}

LCA_CORE_TEXT void make_heap_key() { pthread_key_create(&g_heap_key, on_thread_exit); }

}  // namespace

LCA_CORE_TEXT Heap* heap_for_thread() {
  Heap* h = thread_heap_if_any();
  if (h) return h;
  pthread_once(&g_heap_key_once, make_heap_key);
  free_guard_init();  // before the first object of any heap can be freed
  vg_init();
  VgSerial serial;
  Domain* d = &g_process_domain;
  // numa=1 on a machine with several nodes: a heap of the node the thread runs on.
  int node = numa_thread_heaps() ? numa_nearest_usable(numa_current_node()) : -1;
  {
    DomainLock lock(d);
    Heap** link = &d->abandoned;
    while (*link && (*link)->node != node) link = &(*link)->next_abandoned;
    h = *link;
    if (h) {
      *link = h->next_abandoned;
      h->next_abandoned = nullptr;
      h->abandoned = false;
    } else {
      h = heap_create_locked(d);
      if (h) h->node = node;
    }
  }
  if (!h) return nullptr;
  tls_owned_heap = h;
  // After the exit handler: for this call only (heap_abandon_after_exit), not
  // on the fast paths and not under the key, whose destructor glibc may not
  // call again (at most PTHREAD_DESTRUCTOR_ITERATIONS rounds).
  if (tls_heap_gone) return h;
#if CALLOC_TRACKING
  // Full tracking keeps every call on the slow paths, as Valgrind mode does.
  if (!on_valgrind() && !track_full()) tls_heap = h;
#else
  if (!on_valgrind()) tls_heap = h;
#endif
  pthread_setspecific(g_heap_key, h);
  return h;
}

// A thread whose exit handler has run allocated (another pthread key's
// destructor, made after libcalloc's key): the heap it took for that call goes
// back to the domain at once, as at thread exit.  Before, the heap was set
// under the key again, and one taken in glibc's last round of key destructors
// was never abandoned: a heap and its chunk lost per thread
// (tests/unit/threads, test_allocation_after_exit_handler).
LCA_CORE_TEXT void heap_abandon_after_exit(Heap* h) {
  if (h != tls_owned_heap) return;
  VgSerial serial;
  int saved = errno;
  remote_batch_flush_all(h);
  tls_owned_heap = nullptr;
  tls_heap = &g_no_heap;
  heap_abandon(h);
  errno = saved;
}

// numa=1: a thread that now runs on another node than its heap's leaves that
// heap to its domain (like a thread exit: its blocks stay valid, other threads
// adopt it) and takes one of its new node.  Asked on the process heap's slow path
// only: the fast path never sees NUMA.
Heap* heap_rehome_if_moved(Heap* h) {
  int node = numa_nearest_usable(numa_current_node());
  if (node == h->node) return h;
  remote_batch_flush_all(h);
  tls_owned_heap = nullptr;
  tls_heap = &g_no_heap;
  pthread_setspecific(g_heap_key, nullptr);
  heap_abandon(h);
  return heap_for_thread();
}

// --- fork() ---------------------------------------------------------------
//
// Which locks are held across fork(), and in which order:
//
// - A single-threaded process (__libc_single_threaded) takes none.  No other
//   thread can hold one, and the one thread may be inside libcalloc itself when
//   a signal handler forks (POSIX lists fork as async-signal-safe): taking a lock
//   the interrupted code holds would wait forever.  The child goes on from the
//   same state as the parent, as with glibc's malloc.
// - Otherwise stdio's list lock comes first (glibc: _IO_list_lock, detected by
//   configure), then the Valgrind-mode serialising lock, then libcalloc's own.
//   First the private heaps: with the domain list's fork gate held, each
//   private domain's lock is taken and released once, its `forking` flag set
//   under it -- a later taker waits for the fork (DomainLock) -- holding
//   nothing else of libcalloc's while it waits for one (the domain list's lock
//   is let go meanwhile).  A private heap's lock is held while its holder uses
//   other heaps: a relocation callback runs under it and may allocate from the
//   process heap (the pass's own vectors do too), another private heap, a new
//   one (the domain list's lock), a hardened heap or a HugePageAllocator, and
//   its thread must not wait for a lock the forking thread holds while that
//   thread waits for the private heap (tests/unit/fork,
//   test_fork_during_relocation_callback).  Then, with the domain list's lock
//   held: the tracker's, the hardened heaps' (their class locks taken and
//   released with a flag), the process domain's (followed by its span pools';
//   the statistics locks of its running heaps are taken and released at once,
//   with Domain::forking set: the queue changes wait for the fork instead,
//   pool.c++), the large-block table's, the huge-page table list's (each
//   table's lock taken and released with a flag, huge.c++'s state_lock), the
//   ASan quarantine's; last the handle heaps' (handle.c++: the table list's
//   lock held, each table's lock taken and released with a flag -- leaf locks,
//   plain mutexes in Valgrind mode too, so taken there as well).  None of these
//   is held while a private domain's lock is taken.  glibc's fork() takes the list
//   lock itself only after the pthread_atfork prepare handlers ran; taken
//   there, it closes a cycle: a thread in getline() holds a FILE lock and waits
//   in realloc for a libcalloc lock, fflush(NULL) holds the list lock and waits
//   for that FILE lock.  Taken first (it is recursive: fork takes it again),
//   the forking thread waits for stdio holding nothing of libcalloc's, as
//   glibc's fork does for its own malloc's locks.  (So a relocation callback
//   that takes the list lock itself -- fopen, fclose, fflush(NULL) -- while
//   another thread forks still deadlocks: docs/design.md, fork().)
//
// In Valgrind mode the serialising lock alone is held of libcalloc's: every
// other lock of libcalloc is that lock there (vg.h++), and the child, whose one
// thread took it, releases it as the parent does (a futex word: no owner to
// forget) -- re-initialising held pthread mutexes, as outside Valgrind mode,
// would leave helgrind and DRD believing the parent's threads still hold them.

#if HAVE_DECL___LIBC_SINGLE_THREADED
}  // namespace lca
#include <sys/single_threaded.h>
namespace lca {
namespace {
LCA_CORE_TEXT bool process_single_threaded() { return __libc_single_threaded != 0; }
}  // namespace
#else
namespace {
// No way to tell: every fork takes the locks (a fork from a signal handler can
// then wait for a lock the interrupted code holds).
LCA_CORE_TEXT bool process_single_threaded() { return false; }
}  // namespace
#endif

#if CALLOC_STDIO_LIST_LOCK
}  // namespace lca
// glibc exports them (GLIBC_2.2.5) without declaring them in any header since
// 2.28; weak, so that a C library without them leaves them null at run time.
extern "C" void _IO_list_lock() __attribute__((weak));
extern "C" void _IO_list_unlock() __attribute__((weak));
extern "C" void _IO_list_resetlock() __attribute__((weak));
namespace lca {
namespace {
LCA_CORE_TEXT bool stdio_list_lock_available() { return _IO_list_lock && _IO_list_unlock && _IO_list_resetlock; }
LCA_CORE_TEXT void stdio_list_lock() { _IO_list_lock(); }
LCA_CORE_TEXT void stdio_list_unlock() { _IO_list_unlock(); }
// glibc has reset it in the child already, before the child handlers run, when
// its fork took it; resetting again is harmless and covers a fork that did not.
LCA_CORE_TEXT void stdio_list_reset() { _IO_list_resetlock(); }
}  // namespace
#else
namespace {
LCA_CORE_TEXT bool stdio_list_lock_available() { return false; }
LCA_CORE_TEXT void stdio_list_lock() {}
LCA_CORE_TEXT void stdio_list_unlock() {}
LCA_CORE_TEXT void stdio_list_reset() {}
}  // namespace
#endif

namespace {

// What the prepare handler of this thread's fork did, for the two others.  A
// thread: a signal handler may fork while its thread is between the handlers
// of another fork (single-threaded only: glibc's own fork lock forbids it
// otherwise).
struct ForkState {
  bool locked;  // libcalloc's locks were taken
  bool stdio;   // and stdio's list lock before them
  bool tracker;  // and the tracker's (track_prefork)
};
constinit thread_local ForkState tls_fork __attribute__((tls_model("initial-exec"))) = {};

// Whether o, found on a list of heap h of class c in the child, is a free object
// of another heap's span of the process domain, of that class: what
// free_remote_batched checked before it put o there.
LCA_CORE_TEXT bool orphan_object_valid(const Heap* h, const void* o, unsigned c, Span** span) {
  if (!o || chunk_kind_of(o) != ChunkKind::spans) return false;
  ChunkHeader* ch = chunk_base(o);
  if (ch->domain != &g_process_domain) return false;
  Span* s = span_of(span_chunk_of(ch), o);
  if ((s->flags & kSpanInactive) || span_owner(s) == h || s->size_class != c || !span_is_object_start(s, o) ||
      !is_free_object(o))
    return false;
  *span = s;
  return true;
}

// In the child: sends the objects that h's thread (gone in the child) had freed
// into other heaps' spans -- its foreign lists and the chains waiting in its
// RemoteBatch table -- to their spans' remote lists, where the owner (the child's
// thread, for the blocks it allocated) collects them.  Without this they stay
// counted as used for ever.  Every object is checked first; a list the fork
// caught in a change (remote_busy) is left alone, and a walk stops at the first
// object that fails a check: an object lost is better than one freed twice.
LCA_CORE_TEXT void send_orphaned_frees(Heap* h) {
  if (__atomic_load_n(&h->remote_busy, __ATOMIC_RELAXED)) return;
  for (unsigned c = 0; c < kNumClasses; ++c) {
    FreeObject* o = h->foreign[c];
    // A pop the fork caught may leave one object more on the list than counted.
    for (std::uint32_t n = 0; o && n <= h->foreign_count[c]; ++n) {
      Span* s;
      if (!orphan_object_valid(h, o, c, &s)) break;
      FreeObject* next = o->next;
      std::uint32_t i = span_index(s, o);
      span_push_remote_chain(s, i, o, i, 1);
      o = next;
    }
    h->foreign[c] = nullptr;
    h->foreign_count[c] = 0;
  }
  for (RemoteBatch& b : h->remote_batch) {
    Span* s = b.span;
    b.span = nullptr;
    if (!s || chunk_kind_of(s) != ChunkKind::spans || b.count == 0 || b.count >= kRemoteBatchMax) continue;
    // s must be a span descriptor of its chunk's header.
    auto* sc = span_chunk_of(chunk_base(s));
    auto off = reinterpret_cast<std::uintptr_t>(s) - reinterpret_cast<std::uintptr_t>(sc->spans);
    if (reinterpret_cast<std::uintptr_t>(s) < reinterpret_cast<std::uintptr_t>(sc->spans) || off % sizeof(Span) ||
        off / sizeof(Span) >= kSpansPerChunk || (s->flags & kSpanInactive) || s->obj_size == 0)
      continue;
    auto* o = reinterpret_cast<FreeObject*>(span_base(s) + static_cast<std::size_t>(b.head_index) * s->obj_size);
    // The chain must hold exactly count checked objects of s and end at tail.
    FreeObject* p = o;
    std::uint32_t n = 0;
    Span* ps;
    while (n < b.count && orphan_object_valid(h, p, s->size_class, &ps) && ps == s) {
      ++n;
      if (p == b.tail) break;
      p = p->next;
    }
    if (n != b.count || p != b.tail || span_index(s, p) != b.tail_index) continue;
    span_push_remote_chain(s, b.head_index, b.tail, b.tail_index, b.count);
  }
}

}  // namespace

constinit ForkHeldLocks g_fork_held = {};
constinit thread_local bool tls_fork_window __attribute__((tls_model("initial-exec"))) = false;

LCA_CORE_TEXT void fork_hold_range(const void* begin, const void* end) {
  ForkHeldLocks& f = g_fork_held;
  // More ranges than this are a change of the prepare handler's that forgot
  // to raise the bound: an error at the first fork of every test.
  if (f.count == kForkHeldRanges)
    report_fatal("Internal error", begin, "more lock ranges held across fork() than kForkHeldRanges");
  f.ranges[f.count].begin = begin;
  f.ranges[f.count].end = end;
  ++f.count;
}

LCA_CORE_TEXT bool fork_held(const void* m) {
  const ForkHeldLocks& f = g_fork_held;
  for (unsigned i = 0; i < f.count; ++i)
    if (m >= f.ranges[i].begin && m < f.ranges[i].end) return true;
  return false;
}

// Cold (plain .text): reached in the fork window only.
void fork_window_lock(pthread_mutex_t* m) {
  if (!fork_held(m)) pthread_mutex_lock(m);
}
void fork_window_unlock(pthread_mutex_t* m) {
  if (!fork_held(m)) pthread_mutex_unlock(m);
}

LCA_CORE_TEXT const void* fork_token() { return &tls_heap; }

LCA_CORE_TEXT void fork_wait(const std::atomic<const void*>& forking, pthread_mutex_t* held, pthread_mutex_t* gate) {
  for (;;) {
    const void* f = forking.load(std::memory_order_relaxed);
    if (!f || f == fork_token()) return;
    lca_mutex_unlock(held);
    lca_mutex_lock(gate);
    lca_mutex_unlock(gate);
    lca_mutex_lock(held);
  }
}

namespace {

// The prepare handler's first pass: every private domain's lock taken and
// released once, its `forking` word set under it, with g_domains_fork_gate
// held (what a later taker waits for: domain_lock_wait_fork); then the domain
// list's lock stays held, until the parent handler has cleared the words.  A
// lock found taken is waited for with the list's lock released (a callback
// under it may make or destroy a heap), d pinned (unlink_domain waits), and
// the walk starts again from the list's head: the list may have changed
// meanwhile.  Each wait ends with one more domain flagged, and the flagged
// ones are skipped, so the walk ends.  (A recursive lock that this thread
// holds itself -- it forks from a relocation callback -- is taken all the
// same.)
LCA_CORE_TEXT void private_domains_prefork() {
  pthread_mutex_lock(&g_domains_fork_gate);
  pthread_mutex_lock(&g_domains_lock);
  const void* me = fork_token();
  for (Domain* d = &g_process_domain; d;) {
    if (d->per_thread || d->forking.load(std::memory_order_relaxed) == me) {
      d = d->next;
      continue;
    }
    bool busy = pthread_mutex_trylock(&d->lock) != 0;
    if (busy) {
      d->fork_pinned = true;
      pthread_mutex_unlock(&g_domains_lock);
      pthread_mutex_lock(&d->lock);
    }
    // An operation in progress has ended; the next waits for the fork.
    d->forking.store(me, std::memory_order_relaxed);
    pthread_mutex_unlock(&d->lock);
    if (busy) {
      pthread_mutex_lock(&g_domains_lock);
      d->fork_pinned = false;
      d = &g_process_domain;
    } else {
      d = d->next;
    }
  }
  fork_hold(&g_domains_fork_gate);
  fork_hold(&g_domains_lock);
}

LCA_CORE_TEXT void private_domains_postfork_parent() {
  // Before the gate goes: a thread waiting for it tests the flag again.
  for (Domain* d = &g_process_domain; d; d = d->next)
    if (!d->per_thread) d->forking.store(nullptr, std::memory_order_relaxed);
  pthread_mutex_unlock(&g_domains_lock);
  pthread_mutex_unlock(&g_domains_fork_gate);
}

// Not held by this thread; made again all the same: a thread the fork did not
// copy may have held one for the instant between taking it and finding the
// flag (no change of the heap was in progress -- nor by a thread that holds
// another private domain's lock and went on: the fork waited for that lock).
LCA_CORE_TEXT void private_domains_postfork_child() {
  for (Domain* d = &g_process_domain; d; d = d->next) {
    if (d->per_thread) continue;
    d->forking.store(nullptr, std::memory_order_relaxed);
    d->fork_pinned = false;
    init_recursive(&d->lock);
  }
  tsan_released_at_fork(&g_domains_lock);
  pthread_mutex_init(&g_domains_lock, nullptr);
  tsan_released_at_fork(&g_domains_fork_gate);
  pthread_mutex_init(&g_domains_fork_gate, nullptr);
}

}  // namespace

// The one set of fork handlers of libcalloc (malloc.c++ registers them; the
// modules register none of their own, so that their locks too are taken after
// stdio's and never when the process is single-threaded).  Lock order: stdio's
// list lock, Valgrind mode's serialising lock, the private domains (the fork
// gate and the domain list's lock held, each private domain's lock taken and
// released), the tracker's (track.c++), the hardened heaps' (secure.c++), the
// process domain (held, with its span pools; its running heaps' queue changes
// waiting), the large-block table, the huge-page tables, the handle heaps'
// tables (handles_prefork).  The private domains
// come first (2026-12-07): their locks are held while a relocation
// callback, or the defragmentation pass's own vectors, allocate from the
// process heap, and the old handler, which took them after the process
// domain's lock, then waited for the pass while the pass waited for it
// (docs/design.md, fork()).  The locks held across the fork are the same few
// whatever the number of threads (session 18) and of private heaps, hardened
// heaps and HugePageAllocators (session 19): TSan's deadlock detector allows
// 64 held at once, and before, some 25 MemoryAllocators, or one
// SecureAllocator, passed it (tests/unit/fork,
// test_fork_with_many_private_heaps,
// test_fork_with_secure_allocators_in_use).  Such a heap's lock is taken once:
// the change of the heap in progress ends first, and `forking`, stored under
// the lock, makes the next taker let go and wait for a lock that this thread
// holds across the fork (the domains' fork gate, g_heaps_lock, the huge-page
// table list's); so the child finds each heap whole.  docs/design.md, fork().
LCA_CORE_TEXT void domains_prefork() {
  ForkState st{};
  if (!process_single_threaded()) {
    st.locked = true;
    // g_fork_held is empty here: the parent and child handlers empty it
    // (fork_window_end) while they still hold the locks that serialise forks.
    // Not emptied here: glibc lets go of its atfork lock around each prepare
    // handler, so two threads' forks run this function at once until one waits
    // for the locks the other holds (TSan saw the reset race with a fork
    // under way).
    st.stdio = stdio_list_lock_available();
    if (st.stdio) stdio_list_lock();
    vg_prefork_first();
    if (!vg_serialised()) private_domains_prefork();
#if CALLOC_TRACKING
    unwind_prefork();  // stack captures out of the loader's lock (AllocationTracker's too)
    st.tracker = track_active();
    if (st.tracker) track_prefork();
#endif
    if (!vg_serialised()) {
      secure_prefork();  // the hardened heaps (SecureAllocator in every build)
      for (Domain* d = &g_process_domain; d; d = d->next) {
        if (!d->per_thread) continue;
        pthread_mutex_lock(&d->lock);
        fork_hold(&d->lock);
        domain_pools_prefork(d);  // held across the fork
      }
      large_lock_all();
      huge_lock_all();
    }
    vg_prefork();
#if CALLOC_DEFRAG
    handles_prefork();  // leaf locks, plain mutexes in Valgrind mode too
#endif
  }
  tls_fork = st;
  // From here to the parent or child handler this thread passes through the
  // locks recorded (vg.h++, ForkHeldLocks): the fork handlers of libraries
  // that registered before libcalloc run meanwhile, and may allocate.
  tls_fork_window = st.locked;
}

// The window ends: this thread takes and lets go of those locks again (first
// thing in the parent and child handlers, before they let go of them).
LCA_CORE_TEXT void fork_window_end() {
  tls_fork_window = false;
  g_fork_held.count = 0;
}

LCA_CORE_TEXT void domains_postfork_parent() {
  fork_window_end();
  ForkState st = tls_fork;
  tls_fork = ForkState{};
  if (!st.locked) return;
#if CALLOC_DEFRAG
  handles_postfork_parent();
#endif
  vg_postfork_parent();
  if (!vg_serialised()) {
    huge_unlock_all();
    large_unlock_all();
    for (Domain* d = &g_process_domain; d; d = d->next) {
      if (!d->per_thread) continue;
      domain_pools_postfork_parent(d);
      pthread_mutex_unlock(&d->lock);
    }
    secure_postfork_parent();
  }
#if CALLOC_TRACKING
  if (st.tracker) track_postfork_parent();
  unwind_postfork_parent();
#endif
  if (!vg_serialised()) private_domains_postfork_parent();
  if (st.stdio) stdio_list_unlock();
}

LCA_CORE_TEXT void domains_postfork_child() {
  fork_window_end();
  ForkState st = tls_fork;
  tls_fork = ForkState{};
#if CALLOC_DEFRAG
  if (st.locked) handles_postfork_child_unlock();  // first: no lock is taken under it in the child
#endif
#if CALLOC_TRACKING
  unwind_postfork_child();
  if (track_active()) track_postfork_child(st.tracker);  // also when nothing was locked: reseeds sampling
#endif
  if (!st.locked) return;  // the same state as the parent, one thread
  if (st.stdio) stdio_list_reset();
  secure_readers_postfork_child();  // (before any secure heap call: also in Valgrind mode)
  if (!vg_serialised()) {
    huge_reinit_after_fork();
    large_reinit_after_fork();
    for (Domain* d = &g_process_domain; d; d = d->next) {
      if (!d->per_thread) continue;
      tsan_released_at_fork(&d->lock);
      init_recursive(&d->lock);
      domain_pools_postfork_child(d);
    }
    secure_postfork_child();
    private_domains_postfork_child();
  }
  // The other threads are gone in the child, but their heaps are not adopted: a
  // thread heap changes without a lock, so the fork may have caught one in the
  // middle of an operation (a span or arena list half updated), and a thread of
  // the child working on it would corrupt memory.  Their memory stays mapped and
  // unused in the child (frees of their blocks go to their remote lists); heaps
  // that were abandoned before the fork were consistent (the domain lock was
  // held, and their frees were sent) and stay adoptable (a thread exit caught
  // moving its spans to the pools, heap_orphan_spans, leaves the classes not
  // yet reached with its heap, mapped and unused likewise, and the class in
  // flight, off the heap's queue and not in the pool, leaked).  What the gone threads
  // had freed into other heaps' spans goes back to those spans.
  Heap* mine = thread_heap_if_any();
  for (Heap* h = g_process_domain.heaps; h; h = h->next_in_domain)
    if (h != mine && !h->abandoned) send_orphaned_frees(h);
  vg_postfork_child();
#if CALLOC_DEFRAG
  handles_postfork_child();  // last: it frees a gone mover's places in its heap
#endif
}

// --- the process: start, exit and the fork handlers' registration -----------
//
// Here, not in malloc.c++: this object is linked into every program that
// allocates, also from the static library with --disable-override, where a
// program using only the C++ API (SecureAllocator, MemoryAllocator) or the unit
// suites leave malloc.c++'s object out; its constructor never ran there, and
// such a program forked without libcalloc's handlers (tests/unit/secure,
// test_fork_child_takes_back_other_threads_caches, failed in the UBSan build).
namespace {

#if defined(__GLIBC__)
// pthread_atfork, as glibc's own does it: glibc links pthread_atfork from
// libc_nonshared.a into each caller, a stub that calls __register_atfork with the
// caller's __dso_handle (so that dlclose drops the handlers); the link puts that
// stub at the end of libcalloc's text, in a 64 KiB fault-around window that
// nothing else at start-up touches (placement.h++).
extern "C" int __register_atfork(void (*prepare)(), void (*parent)(), void (*child)(), void* dso);
extern "C" void* __dso_handle __attribute__((visibility("hidden")));
LCA_CORE_TEXT void register_fork_handlers(void (*prepare)(), void (*parent)(), void (*child)()) {
  __register_atfork(prepare, parent, child, __dso_handle);
}
#else
void register_fork_handlers(void (*prepare)(), void (*parent)(), void (*child)()) {
  pthread_atfork(prepare, parent, child);
}
#endif

__attribute__((constructor)) LCA_CORE_TEXT void libcalloc_init() {
  options_init();
  if (g_options.verbose) options_print(g_options, PACKAGE_VERSION, 2);
  if (g_options.numa) numa_enable_thread_heaps();  // reads the topology: libnuma allocates
  register_fork_handlers(domains_prefork, domains_postfork_parent, domains_postfork_child);
#if CALLOC_TRACKING
  track_note_constructor_caller(__builtin_return_address(0));
  track_init(g_options);
#endif
}

__attribute__((destructor)) LCA_CORE_TEXT void libcalloc_fini() {
  if (g_options.stats) lca_print_stats(2);
#if CALLOC_TRACKING
  track_at_exit();
#endif
}

}  // namespace

}  // namespace lca
