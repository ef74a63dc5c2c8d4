// handle.c++ -- the handle heap: custom_alloc::HandleAllocator (configure
// --enable-defrag; include/custom_alloc/defrag.h++ is the contract).
//
// The handle heap (HandleAllocator) moves objects while other threads use them,
// with userspace RCU's quiescent-state rule: each thread has a record per heap
// holding the heap's epoch at its last call into the heap (a quiescent point:
// the thread holds no pointer from before it).  The mover marks a batch of
// objects, advances the epoch and waits -- holding no lock -- until every online
// thread has announced the new epoch; then it commits each object (marked ->
// copying), copies it, publishes the new address and frees the old place.  A
// reader that finds an object marked waits a little, then takes it back (the
// move is abandoned); one that finds it copying waits for that one copy.  So
// resolve is a few loads and a store, no reader blocks for longer than one
// object's copy, and the mover gives up (never waits forever) when a thread does
// not pass a quiescent point in time.
//
// The module owns each heap's HandleTable (slots in segments mapped from the OS, the
// free-slot list, the threads' records), the set of the handles' objects that the
// free paths of the heap check (handle_object_free_check) and the list of live
// tables that thread exit walks; the relocation engine's Plan (defrag.h++)
// chooses where a batch of objects goes.
#include "config.h"

#include <custom_alloc/defrag.h++>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include "arena.h++"
#include "defrag.h++"
#include "large.h++"
#include "lifecycle.h++"
#include "os.h++"
#include "placement.h++"
#include "report.h++"
#include "span.h++"
#include "tcache.h++"
#include "vg.h++"

#if CALLOC_VALGRIND
#define LCA_HB_BEFORE(a)                          \
  do {                                            \
    if (::lca::on_valgrind()) ANNOTATE_HAPPENS_BEFORE(a); \
  } while (0)
#define LCA_HB_AFTER(a)                          \
  do {                                           \
    if (::lca::on_valgrind()) ANNOTATE_HAPPENS_AFTER(a); \
  } while (0)
#else
#define LCA_HB_BEFORE(a) ((void)(a))
#define LCA_HB_AFTER(a) ((void)(a))
#endif

namespace lca {
namespace {

// --- the handle heap ------------------------------------------------------------

constexpr std::uint64_t kLive = 1;
constexpr std::uint64_t kMarked = 2;
constexpr std::uint64_t kCopying = 4;
constexpr std::uint64_t kPinUnit = 1 << 8;
constexpr std::uint64_t kPinMask = 0xffffff00ull;
constexpr std::uint64_t kOffline = ~std::uint64_t{0};
constexpr unsigned kSegmentShift = 12;
constexpr std::uint32_t kSegmentSlots = 1u << kSegmentShift;
constexpr std::uint32_t kMaxSegments = 1u << 16;
// A batch of marked objects shares one grace period.
constexpr std::size_t kBatchObjects = 64;
constexpr std::size_t kBatchBytes = 256 * 1024;
// Sweeps of the handles one pass makes at most (each after one that moved
// something; 3 take every 10th of 100 000 objects from 90 % to 2 %).
constexpr unsigned kMaxSweeps = 8;

inline std::uint32_t gen_of(std::uint64_t w) { return static_cast<std::uint32_t>(w >> 32); }

}  // namespace

struct HandleSlot {
  std::atomic<std::uint64_t> word;  // generation << 32 | pins | flags
  std::atomic<void*> ptr;
  // The size asked for: written by allocate_handle (table lock) before the word
  // goes live, read by movers and handle_size without a lock.  A mover that read
  // a live word can read it while the slot, freed and reused meanwhile, is
  // rewritten (its mark then fails, so the value is never used): relaxed atomic
  // accesses make that well defined -- plain moves on x86-64 -- and keep TSan
  // quiet (test_handle_size_read_while_slot_reused).
  std::atomic<std::size_t> size;
  std::uint32_t next_free;  // index + 1 of the next free slot (table lock)
  std::uint32_t reserved;
};
static_assert(sizeof(HandleSlot) == 32);

// The addresses of a handle heap's handle objects, and of the new places a
// mover is about to fill: the free and realloc paths of the heap ask it whether
// a block is a handle's object (handle_object_of), which only deallocate_handle
// may free.  There is no way from a block to its slot otherwise (no header, no
// bit: a span object or arena block carries only the user's bytes), and a walk
// of the slots is O(handles) per free.  Open addressing, linear probing,
// deletion by backward shift, at most half full; the keys array is mapped
// (4 KiB at first) and doubles as the heap's handles do, and halves when an
// erase leaves it less than 1/16 full (then under 1/8: after a shrink, the
// next resize needs four times the handles or half of them, so a count that
// swings between N and 2N resizes once, and a steady one makes no system
// call).  It never shrank: a heap that once held a million handles kept
// 16 MiB of keys with none left.  The heap's domain lock guards it.
struct ObjectSet {
  std::uintptr_t* keys = nullptr;  // 0: empty entry
  std::size_t mask = 0;            // capacity - 1
  unsigned bits = 0;               // log2(capacity)
  std::size_t count = 0;

  std::size_t home(std::uintptr_t k) const {
    return static_cast<std::size_t>((k * 0x9E3779B97F4A7C15ull) >> (64 - bits));
  }
  static constexpr std::size_t npos = ~std::size_t{0};
  // p's entry, or npos.
  std::size_t find(const void* p) const {
    if (!keys) return npos;
    auto k = reinterpret_cast<std::uintptr_t>(p);
    for (std::size_t i = home(k);; i = (i + 1) & mask) {
      if (keys[i] == k) return i;
      if (keys[i] == 0) return npos;
    }
  }
  static constexpr unsigned kMinBits = 9;  // 512 entries: one page
  bool grow() { return resize(keys ? bits + 1 : kMinBits); }
  // Moves the keys to a new array of 2^nbits entries (which holds them all);
  // false when it cannot be mapped (the old one stays).
  bool resize(unsigned nbits) {
    std::size_t cap = std::size_t{1} << nbits;
    auto* nk = static_cast<std::uintptr_t*>(os_map(cap * sizeof(std::uintptr_t)));
    if (!nk) return false;
    std::uintptr_t* old = keys;
    std::size_t old_cap = keys ? mask + 1 : 0;
    keys = nk;
    bits = nbits;
    mask = cap - 1;
    for (std::size_t i = 0; i < old_cap; ++i)
      if (old[i]) {
        std::size_t j = home(old[i]);
        while (keys[j]) j = (j + 1) & mask;
        keys[j] = old[i];
      }
    if (old) os_unmap(old, old_cap * sizeof(std::uintptr_t));
    return true;
  }
  // False when the set cannot grow (no memory).
  bool insert(const void* p) {
    if (!keys || (count + 1) * 2 > mask + 1) {
      if (!grow()) return false;
    }
    auto k = reinterpret_cast<std::uintptr_t>(p);
    std::size_t i = home(k);
    while (keys[i] && keys[i] != k) i = (i + 1) & mask;
    if (keys[i] == 0) ++count;
    keys[i] = k;
    return true;
  }
  void erase(const void* p) {
    if (std::size_t i = find(p); i != npos) erase_at(i);
  }
  void erase_at(std::size_t i) {
    // Backward shift: an entry after the hole moves into it unless its home
    // lies cyclically in (hole, entry].
    for (std::size_t j = (i + 1) & mask; keys[j]; j = (j + 1) & mask) {
      std::size_t h = home(keys[j]);
      if (((j - h) & mask) >= ((j - i) & mask)) {
        keys[i] = keys[j];
        i = j;
      }
    }
    keys[i] = 0;
    --count;
    if (bits > kMinBits && count * 16 < mask + 1) resize(bits - 1);
  }
  void release() {
    if (keys) os_unmap(keys, (mask + 1) * sizeof(std::uintptr_t));
    keys = nullptr;
  }
};

struct alignas(64) ThreadRecord {
  std::atomic<std::uint64_t> seen;  // the epoch at the thread's last quiescent point, or kOffline
  std::atomic<std::uint32_t> in_use;
  ThreadRecord* next;  // every record of the table
};

// One object of a mover's batch.
struct Move {
  HandleSlot* slot;
  std::uint64_t word;  // live, unpinned, unmarked: what the mark expects
  void* from;
  void* to;
  std::size_t size;
  bool marked;
  // The copy is whole: stored (release) after it and before the new address
  // is published, so the child of a fork can tell a move to finish from one
  // to undo (handles_postfork_child).
  bool copied;
};

struct HandleTable {
  std::uint64_t id;  // unique, never reused: threads' caches key on it
  // The generation of a new slot: ((id - 1) % 0x7fff + 1) << 16 | 1, different
  // for 32 767 heaps made one after the other, so that a handle of another heap
  // (or of a destroyed one) names a generation this heap's slot never had and
  // is reported as not a handle of this heap.  (Every heap started at 1: the
  // first handle of every heap was 0x100000000, and another heap's handle
  // resolved to, or freed, this heap's object of the same slot.)  A slot still
  // has 2^31 generations or more before it wears out.
  std::uint32_t first_gen;
  Domain* domain;
  std::atomic<std::uint64_t> epoch;
  std::atomic<std::uint32_t> slot_count;
  pthread_mutex_t table_lock;  // free slots, growth, records, live handles (table_lock())
  pthread_mutex_t mover_lock;  // one mover at a time (mover_lock())
  // fork(): the forking thread's fork_token() from the prepare handler's pass
  // on (stored under table_lock) until its parent or child handler: a later
  // taker of table_lock lets go and waits for the fork (table_lock()).
  std::atomic<const void*> forking;
  // The fork_token() of the thread holding mover_lock, or nullptr: the child
  // of a fork makes the lock again unless the forking thread is the mover.
  std::atomic<const void*> mover;
  // The batch the mover is moving, from the section that allocated its new
  // places to the one that frees what it left (both under the domain lock):
  // the child of a fork finishes or undoes each move of it (handles_postfork_child).
  Move* batch;
  std::size_t batch_size;
  std::uint32_t free_head;     // index + 1
  std::atomic<ThreadRecord*> records;
  std::atomic<std::size_t> live, moves, abandoned, reader_waits;
  ObjectSet objects;  // the handles' objects (domain lock)
  HandleTable* next_live;  // (a retired table: the next spare one)
  HandleTable* prev_live;
  // Set when its HandleAllocator is destroyed: the table is kept, with no slot,
  // for a PinGuard released late to find (retire_table).
  std::atomic<bool> destroyed;
  std::atomic<HandleSlot*> segments[kMaxSegments];
};

// The free paths' question (tcache.h++): is p a handle's object?  Under the
// domain lock, which every change of the set holds too: allocate_handle adds
// its object before the handle exists, deallocate_handle takes it out after
// the handle died and before the block is freed, and a mover adds a new place
// before it copies into it and takes the old place out as it frees it -- so a
// handle's live object, wherever a move has got to, is in the set whenever its
// holder can free it.
//
// deallocate_handle's own free names its block in tls_freeing_handle_object:
// the check takes it out of the set then, under the lock it holds anyway (a
// separate take-out under its own lock cost 60 more instructions a free).
constinit thread_local const void* tls_freeing_handle_object __attribute__((tls_model("initial-exec"))) = nullptr;

void handle_object_free_check(Domain* d, const void* p, const char* what) {
  ObjectSet& set = d->handles->objects;
  std::size_t i = set.find(p);
  if (i == ObjectSet::npos) return;
  if (p == tls_freeing_handle_object && what[0] == 'f') {
    set.erase_at(i);
    tls_freeing_handle_object = nullptr;
    return;
  }
  if (what[0] == 'r')
    report_fatal("Invalid realloc", p,
                 "the block is a handle's object (HandleAllocator): its size is fixed and it moves only with "
                 "defragment; allocate a new handle and copy");
  report_fatal("Invalid free", p, "the block is a handle's object (HandleAllocator): free it with deallocate_handle");
}

void handle_object_check_unlocked(Domain* d, const void* p, const char* what) {
  if (!d->handles) return;
  VgSerial serial;
  DomainLock lock(d);
  handle_object_free_check(d, p, what);  // (a report keeps the lock: it aborts)
}

namespace {

// Adds p, a live block of t's heap, to t's objects; false when the set cannot
// grow.
bool objects_add(HandleTable* t, const void* p) {
  VgSerial serial;
  DomainLock lock(t->domain);
  return t->objects.insert(p);
}

// Takes p out of t's objects: it may be freed as a plain block now.
void objects_forget(HandleTable* t, const void* p) {
  VgSerial serial;
  DomainLock lock(t->domain);
  t->objects.erase(p);
}

// Every live table, for thread exit (a thread's records die with their table)
// and fork().  The fork's prepare handler holds the lock across the fork.
constinit pthread_mutex_t g_tables_lock = PTHREAD_MUTEX_INITIALIZER;
constinit HandleTable* g_tables = nullptr;
// The tables of destroyed HandleAllocators, kept mapped for the next one
// (g_tables_lock): a PinGuard that outlives its heap reads its table at its
// release, so the table stays readable -- no slot, `destroyed` set -- and the
// release reports the misuse instead of faulting on an unmapped page.  Reused
// (new id, new generations), a table holds at most as many as there were heaps
// alive at once.
constinit HandleTable* g_spare_tables = nullptr;

// t's table lock, taken.  Found flagged by a fork under way in another thread
// (t->forking, stored under the lock by handles_prefork), it lets go and waits
// for the table list's lock, which the forking thread holds from before it set
// the flag until after it cleared it, then takes it again: so no change of the
// slots or records is in progress at the fork.  (Not lifecycle's fork_wait: in
// Valgrind mode that waits with the serialising lock, and this is a plain
// mutex there too.)  One load and a branch not taken when no fork is under way.
__attribute__((noinline)) void table_lock_wait_fork(HandleTable* t) {
  for (;;) {
    const void* f = t->forking.load(std::memory_order_relaxed);
    if (f == nullptr || f == fork_token()) return;
    pthread_mutex_unlock(&t->table_lock);
    pthread_mutex_lock(&g_tables_lock);
    pthread_mutex_unlock(&g_tables_lock);
    pthread_mutex_lock(&t->table_lock);
  }
}
inline void table_lock(HandleTable* t) {
  pthread_mutex_lock(&t->table_lock);
  if (__builtin_expect(t->forking.load(std::memory_order_relaxed) != nullptr, 0)) table_lock_wait_fork(t);
}
inline void table_unlock(HandleTable* t) { pthread_mutex_unlock(&t->table_lock); }

// The mover lock, with its holder named for the child of a fork.
void mover_lock(HandleTable* t) {
  pthread_mutex_lock(&t->mover_lock);
  t->mover.store(fork_token(), std::memory_order_relaxed);
}
void mover_unlock(HandleTable* t) {
  t->mover.store(nullptr, std::memory_order_relaxed);
  pthread_mutex_unlock(&t->mover_lock);
}
constinit std::atomic<std::uint64_t> g_next_table_id{1};
// Tables destroyed so far: a thread prunes its entries only after one was.
constinit std::atomic<std::uint64_t> g_tables_destroyed{0};

// A thread's records, one per table it used.
struct TlsEntry {
  std::uint64_t id;
  ThreadRecord* rec;
};
struct TlsRecords {
  std::size_t count, cap;
  TlsEntry* entries;
  std::uint64_t destroyed_seen;  // g_tables_destroyed at the last pruning
};
constinit thread_local std::uint64_t tls_last_id __attribute__((tls_model("initial-exec"))) = 0;
constinit thread_local ThreadRecord* tls_last_rec __attribute__((tls_model("initial-exec"))) = nullptr;
constinit thread_local TlsRecords* tls_records __attribute__((tls_model("initial-exec"))) = nullptr;
constinit pthread_key_t g_records_key;
constinit pthread_once_t g_records_once = PTHREAD_ONCE_INIT;

void records_thread_exit(void* value) {
  auto* tr = static_cast<TlsRecords*>(value);
  pthread_mutex_lock(&g_tables_lock);
  for (std::size_t i = 0; i < tr->count; ++i) {
    for (HandleTable* t = g_tables; t; t = t->next_live) {
      if (t->id != tr->entries[i].id) continue;
      ThreadRecord* r = tr->entries[i].rec;
      LCA_HB_BEFORE(r);
      r->seen.store(kOffline, std::memory_order_release);
      r->in_use.store(0, std::memory_order_release);
      break;
    }
  }
  pthread_mutex_unlock(&g_tables_lock);
  tls_records = nullptr;
  tls_last_id = 0;
  tls_last_rec = nullptr;
  std::free(tr->entries);
  std::free(tr);
}

}  // namespace

std::size_t defrag_thread_entries() { return tls_records ? tls_records->count : 0; }

namespace {

void make_records_key() { pthread_key_create(&g_records_key, records_thread_exit); }

// Drops the thread's entries of destroyed tables (their records died with
// them) when its array is full and a table was destroyed since the last time.
// The array doubles only when more than half of it is still in use, so the
// entries stay fewer than twice (plus 4) the live tables the thread used, and
// a pruning (O(n log n) for n entries, plus a walk of the live tables under
// their lock) comes once per n/2 registrations at most.  No allocation: the
// entries are sorted by id and the live ones tagged in their record pointer's
// low bit (records are 64-byte aligned).  (Before, a long-lived thread kept one
// entry per table it ever used.)
void prune_records(TlsRecords* tr) {
  std::uint64_t destroyed = g_tables_destroyed.load(std::memory_order_relaxed);
  if (destroyed == tr->destroyed_seen) return;
  tr->destroyed_seen = destroyed;
  TlsEntry* e = tr->entries;
  std::sort(e, e + tr->count, [](const TlsEntry& a, const TlsEntry& b) { return a.id < b.id; });
  auto tag = [](ThreadRecord* r, std::uintptr_t bit) {
    return reinterpret_cast<ThreadRecord*>((reinterpret_cast<std::uintptr_t>(r) & ~std::uintptr_t{1}) | bit);
  };
  pthread_mutex_lock(&g_tables_lock);
  for (HandleTable* t = g_tables; t; t = t->next_live) {
    TlsEntry* it = std::lower_bound(e, e + tr->count, t->id, [](const TlsEntry& a, std::uint64_t id) { return a.id < id; });
    if (it != e + tr->count && it->id == t->id) it->rec = tag(it->rec, 1);
  }
  pthread_mutex_unlock(&g_tables_lock);
  // A table destroyed meanwhile is dropped at a later pruning; ids are never
  // reused, so a kept entry of a dead table is never found again.
  std::size_t kept = 0;
  for (std::size_t i = 0; i < tr->count; ++i)
    if (reinterpret_cast<std::uintptr_t>(e[i].rec) & 1) e[kept++] = TlsEntry{e[i].id, tag(e[i].rec, 0)};
  tr->count = kept;
}

ThreadRecord* register_thread(HandleTable* t) {
  if (__builtin_expect(t->destroyed.load(std::memory_order_acquire), 0))
    report_fatal("Invalid handle heap", t,
                 "its HandleAllocator was destroyed (a unique_handle, shared_handle or PinGuard outlived it?)");
  pthread_once(&g_records_once, make_records_key);
  if (!tls_records) {
    auto* tr = static_cast<TlsRecords*>(std::calloc(1, sizeof(TlsRecords)));
    if (!tr) report_fatal("Out of memory", t, "cannot register the thread with the handle heap");
    tls_records = tr;
    pthread_setspecific(g_records_key, tr);
  }
  TlsRecords* tr = tls_records;
  for (std::size_t i = 0; i < tr->count; ++i)
    if (tr->entries[i].id == t->id) return tr->entries[i].rec;
  ThreadRecord* rec = nullptr;
  table_lock(t);
  for (ThreadRecord* r = t->records.load(std::memory_order_relaxed); r; r = r->next)
    if (r->in_use.load(std::memory_order_relaxed) == 0) {
      rec = r;
      break;
    }
  if (!rec) {
    void* mem = os_map(os_page_size());
    if (!mem) {
      table_unlock(t);
      report_fatal("Out of memory", t, "cannot register the thread with the handle heap");
    }
    rec = new (mem) ThreadRecord{};
    rec->seen.store(kOffline, std::memory_order_relaxed);
    rec->next = t->records.load(std::memory_order_relaxed);
    t->records.store(rec, std::memory_order_release);
  }
  rec->seen.store(kOffline, std::memory_order_relaxed);
  rec->in_use.store(1, std::memory_order_release);
  table_unlock(t);
  if (tr->count == tr->cap) {
    prune_records(tr);
    if (tr->cap == 0 || tr->count > tr->cap / 2) {
      std::size_t cap = tr->cap ? tr->cap * 2 : 4;
      auto* e = static_cast<TlsEntry*>(std::realloc(tr->entries, cap * sizeof(TlsEntry)));
      if (!e) report_fatal("Out of memory", t, "cannot register the thread with the handle heap");
      tr->entries = e;
      tr->cap = cap;
    }
  }
  tr->entries[tr->count++] = TlsEntry{t->id, rec};
  return rec;
}

inline ThreadRecord* thread_record(HandleTable* t) {
  if (__builtin_expect(tls_last_id == t->id, 1)) return tls_last_rec;
  ThreadRecord* rec = register_thread(t);
  tls_last_id = t->id;
  tls_last_rec = rec;
  return rec;
}

// A quiescent point of the calling thread: it holds no pointer from before.
inline void announce(HandleTable* t, ThreadRecord* rec) {
  std::uint64_t e = t->epoch.load(std::memory_order_acquire);
  LCA_HB_BEFORE(rec);
  if (__builtin_expect(rec->seen.load(std::memory_order_relaxed) == kOffline, 0)) {
    // Coming online: the mover may have read kOffline and skipped us, so what
    // we read next must see the marks it made before.  Store and reload are
    // sequentially consistent, as are the mover's epoch bump and its reads of
    // the records: if it read kOffline, the reload sees its bump (and so its
    // marks).  (No fence: ThreadSanitizer does not model fences.)
    rec->seen.store(e, std::memory_order_seq_cst);
    e = t->epoch.load(std::memory_order_seq_cst);
  }
  rec->seen.store(e, std::memory_order_release);
}

// The end of a call that returns no pointer: the thread holds nothing of the
// heap now, so the mover need not wait for it until its next call.
inline void leave(ThreadRecord* rec) {
  LCA_HB_BEFORE(rec);
  rec->seen.store(kOffline, std::memory_order_release);
}

inline ThreadRecord* enter(HandleTable* t) {
  ThreadRecord* rec = thread_record(t);
  announce(t, rec);
  return rec;
}

// The record of a thread about to move objects (relocate, defragment), left
// offline: a mover holds no pointer of the heap, and it may wait for the mover
// lock behind another mover, or trim and measure the heap after its moves; an
// online record with an old epoch made the other mover wait the whole grace
// timeout for it and give its batch up (test_concurrent_relocates_all_succeed).
// allocate_handle and deallocate_handle take it too: they hold no pointer.
inline ThreadRecord* mover_record(HandleTable* t) {
  ThreadRecord* rec = thread_record(t);
  leave(rec);
  return rec;
}

inline HandleSlot* slot_at(HandleTable* t, std::uint32_t i) {
  HandleSlot* seg = t->segments[i >> kSegmentShift].load(std::memory_order_acquire);
  return &seg[i & (kSegmentSlots - 1)];
}

[[noreturn]] void bad_handle(custom_alloc::Handle h, bool stale, const char* what) {
  report_fatal(stale ? "Stale handle" : "Invalid handle", reinterpret_cast<const void*>(h), what);
}

// The slot of h, or nullptr (with *stale set) when h is not a live handle.
HandleSlot* find_slot(HandleTable* t, custom_alloc::Handle h, bool* stale) {
  auto i = static_cast<std::uint32_t>(h);
  std::uint32_t gen = static_cast<std::uint32_t>(h >> 32);
  *stale = false;
  if (gen == 0 || i >= t->slot_count.load(std::memory_order_acquire)) return nullptr;
  HandleSlot* s = slot_at(t, i);
  std::uint64_t w = s->word.load(std::memory_order_acquire);
  if (gen_of(w) == gen && (w & kLive)) return s;
  // A generation this slot has had (or, retired, reached): freed; a later one,
  // or one before this heap's first: forged or another heap's.
  *stale = gen >= t->first_gen && gen < gen_of(w);
  return nullptr;
}

std::size_t table_bytes() { return align_up(sizeof(HandleTable), os_page_size()); }

// A destroyed heap's table: no slot any more (find_slot finds none), marked,
// its segments' pointers purged, kept on the spare list.
void retire_table(HandleTable* t) {
  t->slot_count.store(0, std::memory_order_release);
  t->destroyed.store(true, std::memory_order_release);
  // An id no thread has cached: a call on the destroyed object (a typed owner
  // that outlived its heap: its pin, resolve or deallocate_handle) misses
  // thread_record's cache and reaches register_thread, which reports it.
  // (Counted apart from the live tables' ids, whose count sets first_gen.)
  static constinit std::atomic<std::uint64_t> retired_ids{std::uint64_t{1} << 63};
  t->id = retired_ids.fetch_add(1, std::memory_order_relaxed);
  std::size_t page = os_page_size();
  os_purge(reinterpret_cast<char*>(t) + page, table_bytes() - page);
  pthread_mutex_lock(&g_tables_lock);
  t->next_live = g_spare_tables;
  g_spare_tables = t;
  pthread_mutex_unlock(&g_tables_lock);
}

HandleTable* take_spare_table() {
  pthread_mutex_lock(&g_tables_lock);
  HandleTable* t = g_spare_tables;
  if (t) g_spare_tables = t->next_live;
  pthread_mutex_unlock(&g_tables_lock);
  return t;
}

// A PinGuard's release found no live slot for its handle: a pin keeps its
// handle live (deallocate_handle of a pinned handle aborts), so the heap the
// guard was pinned in is gone -- its table retired, or since reused by another
// HandleAllocator, whose generations the handle's is not.
[[noreturn]] void pin_outlived_heap(HandleTable* t, custom_alloc::Handle h) {
  report_fatal("Invalid pin release", reinterpret_cast<const void*>(h),
               t->destroyed.load(std::memory_order_acquire)
                   ? "the PinGuard outlived its HandleAllocator (destroyed while the guard held the pin)"
                   : "the handle is not live in the PinGuard's heap: its HandleAllocator was destroyed while the "
                     "guard held the pin (the table has been reused by another heap since)");
}

HandleSlot* checked_slot(HandleTable* t, custom_alloc::Handle h, const char* what) {
  bool stale;
  HandleSlot* s = find_slot(t, h, &stale);
  if (!s) bad_handle(h, stale, stale ? "the handle was freed (its slot has moved on)" : what);
  return s;
}

// How long a reader lets a mover hold an object it wants before taking it back.
std::chrono::microseconds reader_patience() {
  return on_valgrind() ? std::chrono::microseconds(20'000) : std::chrono::microseconds(50);
}
// How long a mover waits for the other threads' quiescent points.
std::chrono::microseconds grace_timeout() {
  return on_valgrind() ? std::chrono::microseconds(500'000) : std::chrono::microseconds(5'000);
}

// Waits until the object of s is neither being copied nor (after a little
// patience) marked, taking a mark back if need be.  Returns its word, which is
// live with generation gen; aborts when the handle died meanwhile.
std::uint64_t stable_word(HandleTable* t, ThreadRecord* rec, HandleSlot* s, custom_alloc::Handle h) {
  std::uint32_t gen = static_cast<std::uint32_t>(h >> 32);
  std::uint64_t w = s->word.load(std::memory_order_acquire);
  if (__builtin_expect(!(w & (kMarked | kCopying)), 1)) {
    if (gen_of(w) != gen || !(w & kLive)) bad_handle(h, true, "the handle was freed");
    return w;
  }
  t->reader_waits.fetch_add(1, std::memory_order_relaxed);
  Clock::time_point give_up = Clock::now() + reader_patience();
  for (unsigned round = 0;; ++round) {
    if (gen_of(w) != gen || !(w & kLive)) bad_handle(h, true, "the handle was freed");
    if (!(w & (kMarked | kCopying))) break;
    // Waiting, the thread holds nothing: the mover need not wait for it.
    announce(t, rec);
    if ((w & kMarked) && !(w & kCopying) && Clock::now() >= give_up) {
      if (s->word.compare_exchange_strong(w, w & ~kMarked, std::memory_order_acq_rel, std::memory_order_acquire)) {
        w &= ~kMarked;
        break;
      }
      continue;
    }
    pause_briefly(round);
    w = s->word.load(std::memory_order_acquire);
  }
  LCA_HB_AFTER(s);
  return w;
}

// Waits until every online thread but the caller has passed a quiescent point
// after the epoch became `target`; false when one did not in time.
bool wait_for_readers(HandleTable* t, std::uint64_t target, const ThreadRecord* self) {
  Clock::time_point give_up = Clock::now() + grace_timeout();
  for (ThreadRecord* r = t->records.load(std::memory_order_acquire); r; r = r->next) {
    if (r == self) continue;
    for (unsigned round = 0;; ++round) {
      std::uint64_t seen = r->seen.load(std::memory_order_seq_cst);
      if (seen == kOffline || seen >= target || r->in_use.load(std::memory_order_acquire) == 0) break;
      if (Clock::now() >= give_up) return false;
      pause_briefly(round);
    }
    LCA_HB_AFTER(r);
  }
  return true;
}

// The mover's batch, from the section under the domain lock that allocated its
// new places (held now) to finish_batch: a fork in between finds it there.
// In Valgrind mode each new place becomes a block here (memcheck sees it
// allocated, the heap's counts too), in the same section: so a fork never
// leaves the child unsure whether a place was announced.
void record_batch(HandleTable* t, std::vector<Move>& batch) {
  if (on_valgrind())
    for (Move& m : batch) announce_block(t->domain, m.to, m.size, raw_usable(m.to));
  t->batch = batch.data();
  t->batch_size = batch.size();
}

// The end of a batch, with the domain lock held: frees the old place of each
// object moved and the new place of each move that did not happen (taking them
// out of the handles' objects first), counts them, and forgets the batch.
void finish_batch(HandleTable* t, Move* batch, std::size_t n, custom_alloc::DefragmentationEngine::DefragStats* st) {
  std::size_t moved = 0, abandoned = 0;
  for (std::size_t i = 0; i < n; ++i) {
    Move& m = batch[i];
    bool copied = std::atomic_ref<bool>(m.copied).load(std::memory_order_acquire);
    // The old place of a moved object, or an unused new place: no handle's
    // object any more (under the lock, as the free).
    void* unused = copied ? m.from : m.to;
    t->objects.erase(unused);
    if (!copied) {
      if (m.marked) ++abandoned;
      free_slow(unused);  // an unused new place (a block since record_batch)
      continue;
    }
    ++moved;
    if (st) {
      BlockRef r;
      block_lookup(unused, &r, "defragment");
      if (r.kind == BlockRef::Kind::arena) st->free_blocks_merged += arena_free_neighbours(unused);
    }
    free_slow(unused);
  }
  t->moves.fetch_add(moved, std::memory_order_relaxed);
  t->abandoned.fetch_add(abandoned, std::memory_order_relaxed);
  t->batch = nullptr;
  t->batch_size = 0;
}

// Moves a batch (recorded: record_batch): mark, one grace period, then each
// object: commit, copy, publish; frees the old places (and the new places of
// abandoned moves).  Returns false when the grace period timed out.
bool move_batch(HandleTable* t, std::vector<Move>& batch, const ThreadRecord* self,
                custom_alloc::DefragmentationEngine::DefragStats* st) {
  // The new places are handle objects from before their copy on (a holder
  // of the new address may free it wrongly as soon as it is published); one
  // the set cannot take is not moved to.
  std::vector<bool> tracked(batch.size());
  {
    VgSerial serial;
    HeapLock lock(t->domain);
    for (std::size_t i = 0; i < batch.size(); ++i) tracked[i] = t->objects.insert(batch[i].to);
  }
  std::size_t marked = 0;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    Move& m = batch[i];
    std::uint64_t w = m.word;
    m.marked = tracked[i] && m.slot->word.compare_exchange_strong(w, w | kMarked, std::memory_order_acq_rel);
    if (m.marked) ++marked;
  }
  bool in_time = true;
  if (marked) {
    std::uint64_t target = t->epoch.fetch_add(1, std::memory_order_seq_cst) + 1;
    in_time = wait_for_readers(t, target, self);
  }
  for (Move& m : batch) {
    if (m.marked) {
      std::uint64_t w = m.word | kMarked;
      if (in_time && m.slot->word.compare_exchange_strong(w, m.word | kCopying, std::memory_order_acq_rel)) {
        std::memcpy(m.to, m.from, m.size);
        std::atomic_ref<bool>(m.copied).store(true, std::memory_order_release);
        m.slot->ptr.store(m.to, std::memory_order_release);
        LCA_HB_BEFORE(m.slot);
        m.slot->word.store(m.word, std::memory_order_release);
        if (st) {
          ++st->objects_relocated;
          st->bytes_moved += m.size;
        }
        continue;
      }
      if (!in_time) {
        // Nobody else clears the mark: take it back (a reader may have already).
        w = m.word | kMarked;
        m.slot->word.compare_exchange_strong(w, m.word, std::memory_order_acq_rel);
      }
    }
    if (st) ++st->objects_skipped;
  }
  HeapLock lock(t->domain);
  finish_batch(t, batch.data(), batch.size(), st);
  return in_time;
}

// --- fork() ---------------------------------------------------------------------
//
// The handle heaps' part of libcalloc's fork handlers (lifecycle.c++ calls
// these last in its prepare handler, first in its parent handler and last in
// its child handler; not in a single-threaded process).  docs/design.md, fork(),
// "The handle heap".
//
// - The table list's lock is held across the fork; each table's lock is taken
//   and released once, its `forking` word set under it (table_lock() then
//   waits for the fork): the child finds no slot, free list, record list or
//   live count half changed.  Both locks are leaves (their holders take no
//   other lock and wait for nothing but mmap), so taking them last is
//   consistent with every other lock's order; a thread that holds a private
//   heap's lock and takes a table's cannot be running by then (the private
//   heaps' pass waited for every such lock).
// - The mover lock is not taken: a pass holds it across its grace periods
//   (up to 5 ms a batch) and all its batches, and fork must not wait for that.
//   The child makes it again when another thread held it, and finishes or
//   undoes each move of that thread's batch: a move whose copy was whole is
//   published, any other is taken back (its object never left its old place,
//   which the mover frees only after publishing), and the places no longer
//   needed are freed.  The batch changes only under the domain lock, which
//   lifecycle's private-heap pass makes whole at the fork.
// - The records of the threads the fork did not copy are made offline and free
//   in the child: a mover of the child would otherwise wait for each of them
//   the whole grace timeout and give every batch up.

bool record_is_forking_threads(const HandleTable* t, const ThreadRecord* r) {
  if (tls_last_id == t->id && tls_last_rec == r) return true;
  if (!tls_records) return false;
  for (std::size_t i = 0; i < tls_records->count; ++i)
    if (tls_records->entries[i].id == t->id && tls_records->entries[i].rec == r) return true;
  return false;
}

// A lock a thread the fork did not copy may hold: made again if it is held
// (a free one is left alone).  Helgrind and DRD would go on believing that the
// gone thread holds a re-made lock (and report the child's next lock of it):
// under Valgrind it is destroyed first, which makes them forget it -- each
// reports the destruction of a held mutex, which contrib/libcalloc.supp
// suppresses for this function alone.  (Natively not destroyed: glibc's
// destroy of a held mutex fails with EBUSY and changes nothing anyway.)
__attribute__((noinline)) void remake_if_held(pthread_mutex_t* m) {
  if (pthread_mutex_trylock(m) == 0) {
    pthread_mutex_unlock(m);
    return;
  }
  // (Not tsan_released_at_fork, which speaks for the forking thread's own
  // locks: TSan reports an unlock by the wrong thread.  Its pthread_mutex_init
  // makes the lock anew.)
  if (on_valgrind()) pthread_mutex_destroy(m);
  pthread_mutex_init(m, nullptr);
}

// The child's end of another thread's batch (the domain lock held).
void undo_batch_after_fork(HandleTable* t) {
  // A gone thread's vector (nobody frees it in the child): helgrind and DRD do
  // not see that the fork orders its writes before these reads.
  vg_hide(t->batch, t->batch_size * sizeof(Move));
  for (std::size_t i = 0; i < t->batch_size; ++i) {
    Move& m = t->batch[i];
    std::uint64_t w = m.slot->word.load(std::memory_order_relaxed);
    bool copied = std::atomic_ref<bool>(m.copied).load(std::memory_order_acquire);
    if (w == (m.word | kCopying)) {
      // Committed: published if the copy was whole; else the object is still
      // at its old place, the slot's address (stored after `copied`).
      if (copied) m.slot->ptr.store(m.to, std::memory_order_relaxed);
      m.slot->word.store(m.word, std::memory_order_release);
      m.marked = true;
    } else if (w == (m.word | kMarked)) {
      m.slot->word.store(m.word, std::memory_order_release);
      m.marked = true;
    }
  }
  finish_batch(t, t->batch, t->batch_size, nullptr);
}

}  // namespace

// In the core text (placement.h++): every fork of a multithreaded program runs
// them, with or without a HandleAllocator (then they walk an empty list).
LCA_CORE_TEXT void handles_prefork() {
  pthread_mutex_lock(&g_tables_lock);
  const void* me = fork_token();
  for (HandleTable* t = g_tables; t; t = t->next_live) {
    pthread_mutex_lock(&t->table_lock);  // a change in progress ends first
    t->forking.store(me, std::memory_order_relaxed);
    pthread_mutex_unlock(&t->table_lock);
  }
}

LCA_CORE_TEXT void handles_postfork_parent() {
  // Before the list's lock goes: a thread waiting for it tests the flag again.
  for (HandleTable* t = g_tables; t; t = t->next_live) t->forking.store(nullptr, std::memory_order_relaxed);
  pthread_mutex_unlock(&g_tables_lock);
}

// First in the child handler: the table list's lock, held across the fork,
// goes before the other modules' child handlers take or try any lock, so that
// no lock is taken under it there.  (Held through them, it ordered the
// tracker's report lock after it, and through it after the tracker's symbol
// lock that the prepare handler takes first: helgrind then reported the
// child's profile thread, which takes the report lock and then the symbol
// lock, as a lock-order violation -- tests/unit/track,
// test_profile_signal_in_forked_child.)  The child is one thread: the list
// cannot change before handles_postfork_child takes the lock again.
LCA_CORE_TEXT void handles_postfork_child_unlock() { pthread_mutex_unlock(&g_tables_lock); }

LCA_CORE_TEXT void handles_postfork_child() {
  const void* me = fork_token();
  pthread_mutex_lock(&g_tables_lock);
  for (HandleTable* t = g_tables; t; t = t->next_live) {
    t->forking.store(nullptr, std::memory_order_relaxed);
    // Held by a gone thread at most for the instant between taking it and
    // finding the flag: no change was in progress.
    remake_if_held(&t->table_lock);
    for (ThreadRecord* r = t->records.load(std::memory_order_relaxed); r; r = r->next) {
      if (record_is_forking_threads(t, r)) continue;
      r->seen.store(kOffline, std::memory_order_relaxed);
      r->in_use.store(0, std::memory_order_relaxed);
    }
    // A mover of this thread's own (a signal handler forked inside it) goes on.
    if (t->mover.load(std::memory_order_relaxed) == me) continue;
    if (t->batch) {
      VgSerial serial;
      HeapLock lock(t->domain);
      undo_batch_after_fork(t);
    }
    t->mover.store(nullptr, std::memory_order_relaxed);
    remake_if_held(&t->mover_lock);
  }
  pthread_mutex_unlock(&g_tables_lock);
}

}  // namespace lca

namespace custom_alloc {

using lca::Clock;

// --- HandleAllocator -------------------------------------------------------------

HandleAllocator::PinGuard& HandleAllocator::PinGuard::operator=(PinGuard&& o) noexcept {
  if (this != &o) {
    release();
    table_ = o.table_;
    handle_ = o.handle_;
    ptr_ = o.ptr_;
    o.table_ = nullptr;
  }
  return *this;
}

void HandleAllocator::PinGuard::release() noexcept {
  if (!table_) return;
  bool stale;
  lca::HandleSlot* s = lca::find_slot(table_, handle_, &stale);
  if (__builtin_expect(!s, 0)) lca::pin_outlived_heap(table_, handle_);
  s->word.fetch_sub(lca::kPinUnit, std::memory_order_release);
  table_ = nullptr;
  ptr_ = nullptr;
}

HandleAllocator::HandleAllocator() : MemoryAllocator() {
  void* mem = lca::take_spare_table();
  if (!mem) mem = lca::os_map(lca::table_bytes());
  if (!mem) throw std::bad_alloc();
  auto* t = new (mem) lca::HandleTable{};
  t->id = lca::g_next_table_id.fetch_add(1, std::memory_order_relaxed);
  t->first_gen = static_cast<std::uint32_t>((t->id - 1) % 0x7fff + 1) << 16 | 1;
  t->domain = domain();
  t->domain->handles = t;  // its free paths check for handle objects from now on
  t->epoch.store(1, std::memory_order_relaxed);
  pthread_mutex_init(&t->table_lock, nullptr);
  pthread_mutex_init(&t->mover_lock, nullptr);
  pthread_mutex_lock(&lca::g_tables_lock);
  t->next_live = lca::g_tables;
  if (lca::g_tables) lca::g_tables->prev_live = t;
  lca::g_tables = t;
  pthread_mutex_unlock(&lca::g_tables_lock);
  table_ = t;
}

HandleAllocator::~HandleAllocator() {
  lca::HandleTable* t = table_;
  pthread_mutex_lock(&lca::g_tables_lock);
  if (t->prev_live)
    t->prev_live->next_live = t->next_live;
  else
    lca::g_tables = t->next_live;
  if (t->next_live) t->next_live->prev_live = t->prev_live;
  lca::g_tables_destroyed.fetch_add(1, std::memory_order_relaxed);
  pthread_mutex_unlock(&lca::g_tables_lock);
  // The objects go with the heap (~MemoryAllocator); the table and records here.
  {
    lca::VgSerial serial;
    lca::DomainLock lock(t->domain);
    t->domain->handles = nullptr;
    t->objects.release();
  }
  for (lca::ThreadRecord* r = t->records.load(std::memory_order_relaxed); r;) {
    lca::ThreadRecord* next = r->next;
    lca::os_unmap(r, lca::os_page_size());
    r = next;
  }
  std::uint32_t segs = (t->slot_count.load(std::memory_order_relaxed) + lca::kSegmentSlots - 1) >> lca::kSegmentShift;
  for (std::uint32_t i = 0; i < segs; ++i)
    lca::os_unmap(t->segments[i].load(std::memory_order_relaxed), lca::kSegmentSlots * sizeof(lca::HandleSlot));
  pthread_mutex_destroy(&t->table_lock);
  pthread_mutex_destroy(&t->mover_lock);
  lca::retire_table(t);
}

Handle HandleAllocator::allocate_handle(std::size_t size) {
  lca::HandleTable* t = table_;
  // Offline from the start: the call is a quiescent point and touches no
  // object of the heap (the new slot is not live until its last store), so a
  // mover need not wait for it while allocate() takes the heap's lock or maps
  // memory.
  lca::mover_record(t);
  void* p = allocate(size);
  if (!p) return 0;
  // A handle's object from before its handle exists: only deallocate_handle
  // frees it (the failures below take it out again).  (Not under the lock
  // of the allocation: allocate is virtual, and a subclass's may wait --
  // test_handle_calls_offline_inside.)
  if (!lca::objects_add(t, p)) {
    deallocate(p);
    errno = ENOMEM;
    return 0;
  }
  lca::table_lock(t);
  std::uint32_t i;
  if (t->free_head) {
    i = t->free_head - 1;
    t->free_head = lca::slot_at(t, i)->next_free;
  } else {
    i = t->slot_count.load(std::memory_order_relaxed);
    if (i == lca::kMaxSegments * lca::kSegmentSlots) {
      lca::table_unlock(t);
      lca::objects_forget(t, p);
      deallocate(p);
      errno = ENOMEM;
      return 0;
    }
    if ((i & (lca::kSegmentSlots - 1)) == 0) {
      void* seg = lca::os_map(lca::kSegmentSlots * sizeof(lca::HandleSlot));
      if (!seg) {
        lca::table_unlock(t);
        lca::objects_forget(t, p);
        deallocate(p);
        errno = ENOMEM;
        return 0;
      }
      t->segments[i >> lca::kSegmentShift].store(static_cast<lca::HandleSlot*>(seg), std::memory_order_release);
    }
    lca::HandleSlot* s = lca::slot_at(t, i);
    s->word.store(std::uint64_t{t->first_gen} << 32, std::memory_order_relaxed);
    t->slot_count.store(i + 1, std::memory_order_release);
  }
  lca::HandleSlot* s = lca::slot_at(t, i);
  std::uint64_t gen = s->word.load(std::memory_order_relaxed) >> 32;
  s->size.store(size, std::memory_order_relaxed);
  s->next_free = 0;
  s->ptr.store(p, std::memory_order_relaxed);
  s->word.store(gen << 32 | lca::kLive, std::memory_order_release);
  // Counted with the slot's change, under the lock: a fork never separates them.
  t->live.fetch_add(1, std::memory_order_relaxed);
  lca::table_unlock(t);
  return gen << 32 | i;
}

void HandleAllocator::deallocate_handle(Handle h) {
  // 0, what allocate_handle returns when it fails, is no handle: nothing to
  // free, as free(NULL).
  if (h == 0) return;
  lca::HandleTable* t = table_;
  // Offline from the start too: the thread reads no object, the CAS that ends
  // the handle excludes a move (a mover marks and commits with CASes on the
  // same word) and the address is read after it, so the free needs no grace
  // period; waiting for a marked or copied object (stable_word) announces the
  // thread as before.
  lca::ThreadRecord* rec = lca::mover_record(t);
  struct Leave {
    lca::ThreadRecord* rec;
    ~Leave() { lca::leave(rec); }
  } leave{rec};
  lca::HandleSlot* s = lca::checked_slot(t, h, "not a handle of this heap");
  std::uint64_t next_gen;
  for (;;) {
    std::uint64_t w = lca::stable_word(t, rec, s, h);
    if (w & lca::kPinMask) lca::report_fatal("Invalid free", reinterpret_cast<const void*>(h), "the handle is pinned");
    next_gen = (w >> 32) + 1;
    if (next_gen > 0xffffffffull) next_gen = 0xffffffffull;  // retired below
    // The handle dies, is counted and its slot freed in one section under the
    // table lock (a fork never separates them: the child's live count is its
    // live slots); the wait above is outside it.
    lca::table_lock(t);
    if (s->word.compare_exchange_strong(w, next_gen << 32, std::memory_order_acq_rel)) break;
    lca::table_unlock(t);
  }
  // The address after the CAS: a move that ended between a load before it and
  // the CAS would leave the word as it was (ABA) and the loaded address old.
  // Once the CAS succeeded no move can begin (a mark expects the live word),
  // and any that ended published its address before its word.  Read before
  // the slot goes back to the free list, where another allocate_handle may
  // take it; the block cannot be handed out again before the free below.
  void* p = s->ptr.load(std::memory_order_acquire);
  t->live.fetch_sub(1, std::memory_order_relaxed);
  if (next_gen != 0xffffffffull) {  // else worn out: never reused
    s->next_free = t->free_head;
    t->free_head = static_cast<std::uint32_t>(h) + 1;
  }
  lca::table_unlock(t);
  // The free takes it out of the handle objects (handle_object_free_check).
  lca::tls_freeing_handle_object = p;
  deallocate(p);
  lca::tls_freeing_handle_object = nullptr;
}

void* HandleAllocator::resolve(Handle h) {
  lca::HandleTable* t = table_;
  lca::ThreadRecord* rec = lca::enter(t);
  lca::HandleSlot* s = lca::checked_slot(t, h, "not a handle of this heap");
  lca::stable_word(t, rec, s, h);
  void* p = s->ptr.load(std::memory_order_acquire);
  LCA_HB_AFTER(s);
  return p;
}

void* HandleAllocator::try_resolve(Handle h) noexcept {
  lca::HandleTable* t = table_;
  lca::ThreadRecord* rec = lca::enter(t);
  bool stale;
  lca::HandleSlot* s = lca::find_slot(t, h, &stale);
  if (!s) return nullptr;
  std::uint32_t gen = static_cast<std::uint32_t>(h >> 32);
  // As stable_word, but a handle freed meanwhile gives nullptr.
  std::uint64_t w = s->word.load(std::memory_order_acquire);
  Clock::time_point give_up = Clock::now() + lca::reader_patience();
  for (unsigned round = 0; w & (lca::kMarked | lca::kCopying); ++round) {
    if (lca::gen_of(w) != gen || !(w & lca::kLive)) return nullptr;
    lca::announce(t, rec);
    if (!(w & lca::kCopying) && Clock::now() >= give_up) {
      if (s->word.compare_exchange_strong(w, w & ~lca::kMarked, std::memory_order_acq_rel)) break;
      continue;
    }
    lca::pause_briefly(round);
    w = s->word.load(std::memory_order_acquire);
  }
  if (lca::gen_of(w) != gen || !(w & lca::kLive)) return nullptr;
  void* p = s->ptr.load(std::memory_order_acquire);
  LCA_HB_AFTER(s);
  return p;
}

std::size_t HandleAllocator::handle_size(Handle h) {
  lca::HandleTable* t = table_;
  // Offline from the start, as allocate_handle: the size is the slot's, not the
  // object's (a move does not change it), so the call holds no pointer and a
  // mover need not wait for a thread inside it -- one descheduled there held
  // every move up to the grace timeout (test_handle_size_offline_inside).
  lca::mover_record(t);
  return lca::checked_slot(t, h, "not a handle of this heap")->size.load(std::memory_order_relaxed);
}

HandleAllocator::PinGuard HandleAllocator::pin(Handle h) {
  lca::HandleTable* t = table_;
  lca::ThreadRecord* rec = lca::enter(t);
  lca::HandleSlot* s = lca::checked_slot(t, h, "not a handle of this heap");
  for (;;) {
    std::uint64_t w = lca::stable_word(t, rec, s, h);
    if ((w & lca::kPinMask) == lca::kPinMask)
      lca::report_fatal("Invalid pin", reinterpret_cast<const void*>(h), "too many pins of one handle");
    if (s->word.compare_exchange_strong(w, w + lca::kPinUnit, std::memory_order_acq_rel)) break;
  }
  void* p = s->ptr.load(std::memory_order_acquire);
  LCA_HB_AFTER(s);
  return PinGuard(t, h, p);
}

void HandleAllocator::offline() noexcept {
  lca::HandleTable* t = table_;
  if (lca::tls_last_id != t->id) {
    // Not the cached table: a thread that never used it holds nothing.
    if (!lca::tls_records) return;
    for (std::size_t i = 0; i < lca::tls_records->count; ++i)
      if (lca::tls_records->entries[i].id == t->id) {
        LCA_HB_BEFORE(lca::tls_records->entries[i].rec);
        lca::tls_records->entries[i].rec->seen.store(lca::kOffline, std::memory_order_release);
      }
    return;
  }
  LCA_HB_BEFORE(lca::tls_last_rec);
  lca::tls_last_rec->seen.store(lca::kOffline, std::memory_order_release);
}

bool HandleAllocator::relocate(Handle h) {
  lca::HandleTable* t = table_;
  lca::ThreadRecord* rec = lca::mover_record(t);
  lca::HandleSlot* s = lca::checked_slot(t, h, "not a handle of this heap");
  std::vector<lca::Move> batch(1);
  lca::mover_lock(t);
  std::uint64_t w = s->word.load(std::memory_order_acquire);
  bool moved = false;
  if (lca::gen_of(w) == static_cast<std::uint32_t>(h >> 32) && (w & lca::kLive) &&
      !(w & (lca::kPinMask | lca::kMarked | lca::kCopying))) {
    std::size_t size = s->size.load(std::memory_order_relaxed);
    void* q;
    {
      // A raw new place for the block, anywhere in the heap, and the batch
      // recorded in the same section: a fork finds the place in the batch.
      lca::HeapLock lock(t->domain);
      q = lca::heap_alloc(t->domain->single, lca::inner_size(size), 16, false);
      if (q) {
        batch[0] = lca::Move{s, w, s->ptr.load(std::memory_order_acquire), q, size, false, false};
        lca::record_batch(t, batch);
      }
    }
    if (q) {
      std::size_t before = t->moves.load(std::memory_order_relaxed);
      lca::move_batch(t, batch, rec, nullptr);
      moved = t->moves.load(std::memory_order_relaxed) != before;
    }
  }
  lca::mover_unlock(t);
  lca::leave(rec);
  return moved;
}

void HandleAllocator::defragment() { defragment(DefragBudget{}); }

DefragmentationEngine::DefragStats HandleAllocator::defragment(const DefragBudget& budget) {
  lca::HandleTable* t = table_;
  lca::ThreadRecord* rec = lca::mover_record(t);
  lca::Domain* d = t->domain;
  Clock::time_point start = Clock::now();
  DefragmentationEngine::DefragStats stats = lca::empty_stats();
  lca::PassState st{&budget, lca::deadline_of(start, budget.max_time), &stats};
  lca::mover_lock(t);
  FragmentationReport before;
  {
    lca::VgSerial serial;
    lca::HeapLock lock(d);
    before = lca::analyze_locked(d, false);
  }
  stats.fragmentation_before = before.fragmentation;
  // Candidates: live, unpinned handles, in slot order; each batch re-plans under
  // the lock and takes those whose block lies in a source span or has an arena
  // hole before it.  The moves change the plan: a span that was a destination
  // when the sweep passed its handles can be a source a few batches later (its
  // chunk lost spans), so one sweep can leave half the work (90 % fragmentation
  // went to 51 % with every 10th of 100 000 objects kept).  The pass sweeps again
  // while the last sweep moved something, up to kMaxSweeps.
  std::uint32_t n = t->slot_count.load(std::memory_order_acquire);
  std::uint32_t next = 0;
  unsigned sweeps = 1;
  std::size_t moved_before_sweep = 0;
  bool sweeps_capped = false;
  bool in_time = true;
  for (;;) {
    if (next >= n) {
      if (stats.objects_relocated == moved_before_sweep) break;  // nothing left to gain
      if (sweeps == lca::kMaxSweeps) {
        sweeps_capped = true;
        break;
      }
      ++sweeps;
      moved_before_sweep = stats.objects_relocated;
      next = 0;
      n = t->slot_count.load(std::memory_order_acquire);
    }
    if (!in_time || st.over_budget()) break;
    std::vector<lca::Move> batch;
    std::size_t batch_bytes = 0;
    {
      lca::VgSerial serial;
      lca::HeapLock lock(d);
      lca::Plan plan(d->single, lca::Plan::Build::whole);
      for (; next < n && batch.size() < lca::kBatchObjects && batch_bytes < lca::kBatchBytes; ++next) {
        // (A limit of 0 lets the pass move one object, as PassState's do.)
        if (stats.objects_relocated + batch.size() >= std::max<std::size_t>(budget.max_objects, 1) ||
            stats.bytes_moved + batch_bytes >= std::max<std::size_t>(budget.max_bytes, 1))
          break;
        lca::HandleSlot* s = lca::slot_at(t, next);
        std::uint64_t w = s->word.load(std::memory_order_acquire);
        if (!(w & lca::kLive) || (w & (lca::kPinMask | lca::kMarked | lca::kCopying))) continue;
        void* p = s->ptr.load(std::memory_order_acquire);
        std::size_t size = s->size.load(std::memory_order_relaxed);
        lca::ChunkHeader* ch = lca::registry_lookup(p);
        if (!ch) continue;  // a large block: never moves
        void* q = nullptr;
        if (ch->kind == lca::ChunkKind::spans) {
          lca::Span* sp = lca::span_of(lca::span_chunk_of(ch), p);
          if (!plan.is_source(sp)) continue;
          q = plan.span_dest(sp);
        } else {
          q = plan.arena_dest(static_cast<char*>(p), lca::inner_size(size));
        }
        if (!q) continue;
        batch.push_back(lca::Move{s, w, p, q, size, false, false});
        batch_bytes += size;
      }
      // With the new places just allocated: a fork finds them in the batch.
      if (!batch.empty()) lca::record_batch(t, batch);
    }
    if (batch.empty()) {
      if (next >= n) continue;  // the sweep is done: another one?
      break;                    // the budget
    }
    in_time = lca::move_batch(t, batch, rec, &stats);
  }
  lca::mover_unlock(t);
  if (!in_time || next < n || sweeps_capped) stats.work_remaining = true;
  lca::domain_trim(d);
  {
    lca::VgSerial serial;
    lca::HeapLock lock(d);
    FragmentationReport after = lca::analyze_locked(d, false);
    stats.fragmentation_after = after.fragmentation;
    stats.bytes_released =
        before.os_memory_mapped > after.os_memory_mapped ? before.os_memory_mapped - after.os_memory_mapped : 0;
    if (before.spans_in_use > after.spans_in_use) stats.free_blocks_merged += before.spans_in_use - after.spans_in_use;
  }
  stats.duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
  lca::leave(rec);
  return stats;
}

HandleAllocator::HandleStats HandleAllocator::handle_stats() const {
  lca::HandleTable* t = table_;
  HandleStats s{};
  s.live_handles = t->live.load(std::memory_order_relaxed);
  s.moves = t->moves.load(std::memory_order_relaxed);
  s.moves_abandoned = t->abandoned.load(std::memory_order_relaxed);
  s.reader_waits = t->reader_waits.load(std::memory_order_relaxed);
  return s;
}

float HandleAllocator::fragmentation() const {
  lca::VgSerial serial;
  lca::HeapLock lock(table_->domain);
  return static_cast<float>(lca::analyze_locked(table_->domain, false).fragmentation);
}

}  // namespace custom_alloc
